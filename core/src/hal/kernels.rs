//! The op kernels of an eager backend. Implement these and
//! `hal::interpreter::compile` turns any graph into an executable for you.
//! Shapes and semantics of each op are in `graph.rs`; every tensor is
//! contiguous row-major; outputs are preallocated by the interpreter.

use super::graph::{AttentionParams, RopeParams};
use super::tensor::{Buffer, Tensor};
use crate::{Error, Result};

/// Ragged-batch metadata for `paged_attention`, all i32 on the device.
pub struct AttentionBatch<'a> {
    pub query_start_loc: &'a Tensor,
    pub seq_lens: &'a Tensor,
    pub block_tables: &'a Tensor,
}

pub trait Kernels: Send + Sync {
    /// Backend name, for error messages.
    fn backend(&self) -> &str;
    /// Scratch memory for the interpreter's intermediates.
    fn alloc(&self, bytes: usize) -> Result<Buffer>;

    fn embedding(&self, table: &Tensor, ids: &Tensor, out: &Tensor) -> Result<()>;
    fn linear(&self, x: &Tensor, w: &Tensor, bias: Option<&Tensor>, out: &Tensor) -> Result<()>;
    fn rms_norm(&self, x: &Tensor, w: &Tensor, eps: f32, out: &Tensor) -> Result<()>;
    fn rope(&self, x: &Tensor, positions: &Tensor, p: &RopeParams, out: &Tensor) -> Result<()>;
    fn silu_mul(&self, gate: &Tensor, up: &Tensor, out: &Tensor) -> Result<()>;
    fn add(&self, a: &Tensor, b: &Tensor, out: &Tensor) -> Result<()>;
    /// Writes `new` into `cache` at `slots` in place.
    fn kv_write(&self, cache: &Tensor, new: &Tensor, slots: &Tensor) -> Result<()>;
    fn paged_attention(
        &self,
        q: &Tensor,
        k_cache: &Tensor,
        v_cache: &Tensor,
        batch: &AttentionBatch,
        p: &AttentionParams,
        out: &Tensor,
    ) -> Result<()>;
    fn gather_last(&self, x: &Tensor, query_start_loc: &Tensor, out: &Tensor) -> Result<()>;
    fn argmax(&self, logits: &Tensor, out: &Tensor) -> Result<()>;

    // Optional: defaults compose the required ops or say the op is missing.

    /// The optional ops below that this backend implements itself (names as in
    /// `Op::name`); `tessera conformance --mode support` reports the rest as
    /// composed or missing.
    fn native_optional_ops(&self) -> &'static [&'static str] {
        &[]
    }

    /// `residual_out = x + residual; out = rms_norm(residual_out)`.
    fn add_rms_norm(
        &self,
        x: &Tensor,
        residual: &Tensor,
        w: &Tensor,
        eps: f32,
        out: &Tensor,
        residual_out: &Tensor,
    ) -> Result<()> {
        self.add(x, residual, residual_out)?;
        self.rms_norm(residual_out, w, eps, out)
    }

    fn sample(
        &self,
        _logits: &Tensor,
        _temperature: &Tensor,
        _noise: &Tensor,
        _out: &Tensor,
    ) -> Result<()> {
        Err(Error::Unsupported {
            backend: self.backend().into(),
            what: "op sample".into(),
        })
    }

    /// `out[t] = a[idx[t]] · x[t]` (`x [T,K]`, `a [L,R,K]`, `out [T,R]`), zeros
    /// where `idx[t]` is negative or not a slot.
    fn lora_shrink(&self, _x: &Tensor, _a: &Tensor, _idx: &Tensor, _out: &Tensor) -> Result<()> {
        Err(Error::Unsupported {
            backend: self.backend().into(),
            what: "op lora_shrink".into(),
        })
    }

    /// `out[t] = y[t] + b[idx[t]] · u[t]` (`y, out [T,N]`, `u [T,R]`,
    /// `b [L,N,R]`), `y[t]` where `idx[t]` is negative or not a slot.
    fn lora_expand(
        &self,
        _y: &Tensor,
        _u: &Tensor,
        _b: &Tensor,
        _idx: &Tensor,
        _out: &Tensor,
    ) -> Result<()> {
        Err(Error::Unsupported {
            backend: self.backend().into(),
            what: "op lora_expand".into(),
        })
    }
}
