//! Where a model's weights come from. Tensors are produced one at a time, in
//! Hugging Face naming and layout, so loading never holds two copies of a model.

use crate::{DType, HostTensor, Result};

pub trait WeightSource: Send + Sync {
    /// One line naming the source, for logs and errors.
    fn describe(&self) -> String;
    /// Whether tensor `name` (HF naming, e.g. `model.layers.0.self_attn.q_proj.weight`) exists.
    fn contains(&self, name: &str) -> bool;
    /// Loads tensor `name` converted to the float `dtype`, in HF layout (`[out, in]` for linears).
    fn load(&self, name: &str, dtype: DType) -> Result<HostTensor>;
}

/// HF names of the tensors of a Llama-family model.
pub mod names {
    pub const EMBED: &str = "model.embed_tokens.weight";
    pub const FINAL_NORM: &str = "model.norm.weight";
    pub const LM_HEAD: &str = "lm_head.weight";

    pub fn layer(i: usize, suffix: &str) -> String {
        format!("model.layers.{i}.{suffix}")
    }
}
