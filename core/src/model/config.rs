//! The shape of a Llama-family model, read from a Hugging Face `config.json`
//! (transformers 4 and 5 spellings), built from GGUF metadata, or taken from a preset.

use crate::{DType, Error, Result};
use serde_json::Value;
use std::path::Path;

#[derive(Clone, Debug, PartialEq)]
pub enum RopeScaling {
    None,
    /// Positions divided by `factor`.
    Linear {
        factor: f32,
    },
    /// Llama 3.1's frequency-dependent scaling.
    Llama3 {
        factor: f32,
        low_freq_factor: f32,
        high_freq_factor: f32,
        original_max_position_embeddings: usize,
    },
}

#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    /// `llama`, `mistral`, `qwen2` (the families share one forward pass).
    pub architecture: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f32,
    pub rope_theta: f32,
    pub rope_scaling: RopeScaling,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    /// Bias on the q/k/v projections (Qwen2).
    pub qkv_bias: bool,
    pub sliding_window: Option<usize>,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
    /// The dtype the weights are stored in, when the file says.
    pub stored_dtype: Option<DType>,
}

impl ModelConfig {
    pub fn from_hf_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let v: Value = serde_json::from_str(&text).map_err(|e| {
            Error::model(
                path.display(),
                format!("config.json is not valid JSON: {e}"),
            )
        })?;
        Self::from_hf_json(&v).map_err(|e| match e {
            Error::Model { message, .. } => Error::model(path.display(), message),
            other => other,
        })
    }

    pub fn from_hf_json(v: &Value) -> Result<Self> {
        let bad = |m: String| Error::model("config.json", m);
        let arch_list: Vec<String> = v
            .get("architectures")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        let model_type = v.get("model_type").and_then(Value::as_str).unwrap_or("");
        let architecture = match (model_type, arch_list.first().map(String::as_str)) {
            ("llama", _) | (_, Some("LlamaForCausalLM")) => "llama",
            ("mistral", _) | (_, Some("MistralForCausalLM")) => "mistral",
            ("qwen2", _) | (_, Some("Qwen2ForCausalLM")) => "qwen2",
            (mt, arch) => {
                return Err(bad(format!(
                    "unsupported architecture (model_type {mt:?}, architectures {arch:?}); \
                     tessera runs Llama, Mistral, Qwen2/2.5 and SmolLM models"
                )))
            }
        }
        .to_string();

        let usize_key = |k: &str| -> Result<usize> {
            v.get(k)
                .and_then(Value::as_u64)
                .map(|x| x as usize)
                .ok_or_else(|| bad(format!("missing or non-integer `{k}`")))
        };
        let hidden_size = usize_key("hidden_size")?;
        let num_heads = usize_key("num_attention_heads")?;
        let num_kv_heads = v
            .get("num_key_value_heads")
            .and_then(Value::as_u64)
            .map(|x| x as usize)
            .unwrap_or(num_heads);
        let head_dim = match v.get("head_dim").and_then(Value::as_u64) {
            Some(d) => d as usize,
            None if num_heads > 0 && hidden_size % num_heads == 0 => hidden_size / num_heads,
            None => {
                return Err(bad(format!(
                "hidden_size {hidden_size} is not a multiple of num_attention_heads {num_heads}"
            )))
            }
        };

        // transformers 5 moved rope_theta and rope_scaling into `rope_parameters`.
        let rope_params = v.get("rope_parameters").filter(|x| x.is_object());
        let rope_theta = rope_params
            .and_then(|p| p.get("rope_theta"))
            .or_else(|| v.get("rope_theta"))
            .and_then(Value::as_f64)
            .unwrap_or(10000.0) as f32;
        let scaling_obj = v
            .get("rope_scaling")
            .filter(|x| x.is_object())
            .or(rope_params);
        let rope_scaling = match scaling_obj {
            None => RopeScaling::None,
            Some(s) => parse_rope_scaling(s).map_err(bad)?,
        };

        let eos_token_ids = token_ids(v.get("eos_token_id"));
        let stored_dtype = v
            .get("dtype")
            .or_else(|| v.get("torch_dtype"))
            .and_then(Value::as_str)
            .and_then(DType::parse);
        let use_sliding = v
            .get("use_sliding_window")
            .and_then(Value::as_bool)
            .unwrap_or(architecture == "mistral");
        let sliding_window = if use_sliding {
            v.get("sliding_window")
                .and_then(Value::as_u64)
                .map(|x| x as usize)
        } else {
            None
        };

        let cfg = ModelConfig {
            qkv_bias: v
                .get("attention_bias")
                .and_then(Value::as_bool)
                .unwrap_or(architecture == "qwen2"),
            architecture,
            vocab_size: usize_key("vocab_size")?,
            hidden_size,
            intermediate_size: usize_key("intermediate_size")?,
            num_layers: usize_key("num_hidden_layers")?,
            num_heads,
            num_kv_heads,
            head_dim,
            rms_norm_eps: v
                .get("rms_norm_eps")
                .and_then(Value::as_f64)
                .unwrap_or(1e-6) as f32,
            rope_theta,
            rope_scaling,
            max_position_embeddings: v
                .get("max_position_embeddings")
                .and_then(Value::as_u64)
                .unwrap_or(4096) as usize,
            tie_word_embeddings: v
                .get("tie_word_embeddings")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            sliding_window,
            bos_token_id: v
                .get("bos_token_id")
                .and_then(Value::as_u64)
                .map(|x| x as u32),
            eos_token_ids,
            stored_dtype,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks the invariants the forward pass relies on.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::model("config", m));
        if self.vocab_size == 0
            || self.hidden_size == 0
            || self.num_layers == 0
            || self.num_heads == 0
            || self.head_dim == 0
        {
            return bad(format!("sizes must be positive: {self:?}"));
        }
        // Bounds far above any real model keep every size product well inside usize.
        let dims = [
            ("vocab_size", self.vocab_size, 1 << 24),
            ("hidden_size", self.hidden_size, 1 << 20),
            ("intermediate_size", self.intermediate_size, 1 << 20),
            ("num_hidden_layers", self.num_layers, 1 << 12),
            ("num_attention_heads", self.num_heads, 1 << 12),
            ("head_dim", self.head_dim, 1 << 12),
            (
                "max_position_embeddings",
                self.max_position_embeddings,
                1 << 24,
            ),
        ];
        for (name, v, max) in dims {
            if v > max {
                return bad(format!("{name} {v} is implausibly large (at most {max})"));
            }
        }
        if self.num_kv_heads == 0 || !self.num_heads.is_multiple_of(self.num_kv_heads) {
            return bad(format!(
                "num_attention_heads {} is not a multiple of num_key_value_heads {}",
                self.num_heads, self.num_kv_heads
            ));
        }
        if !self.head_dim.is_multiple_of(2) {
            return bad(format!(
                "head_dim {} must be even for rotary embeddings",
                self.head_dim
            ));
        }
        let positive = |x: f32| x.is_finite() && x > 0.0;
        if !positive(self.rms_norm_eps) || !positive(self.rope_theta) {
            return bad("rms_norm_eps and rope_theta must be positive".into());
        }
        Ok(())
    }

    pub fn q_dim(&self) -> usize {
        self.num_heads * self.head_dim
    }

    pub fn kv_dim(&self) -> usize {
        self.num_kv_heads * self.head_dim
    }

    /// Number of parameters (weights only), to report sizes and bandwidth bounds.
    pub fn num_params(&self) -> usize {
        let (h, i, v) = (self.hidden_size, self.intermediate_size, self.vocab_size);
        let attn = h * self.q_dim() + 2 * h * self.kv_dim() + self.q_dim() * h;
        let bias = if self.qkv_bias {
            self.q_dim() + 2 * self.kv_dim()
        } else {
            0
        };
        let per_layer = attn + bias + 3 * h * i + 2 * h;
        let head = if self.tie_word_embeddings { 0 } else { v * h };
        v * h + self.num_layers * per_layer + h + head
    }
}

/// A token id or a list of them (`eos_token_id` takes both forms).
pub fn token_ids(v: Option<&Value>) -> Vec<u32> {
    match v {
        Some(Value::Number(n)) => n.as_u64().map(|x| vec![x as u32]).unwrap_or_default(),
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|x| x.as_u64().map(|x| x as u32))
            .collect(),
        _ => vec![],
    }
}

fn parse_rope_scaling(s: &Value) -> Result<RopeScaling, String> {
    let kind = s
        .get("rope_type")
        .or_else(|| s.get("type"))
        .and_then(Value::as_str)
        .unwrap_or("default");
    let f = |k: &str| s.get(k).and_then(Value::as_f64).map(|x| x as f32);
    match kind {
        "default" | "none" => Ok(RopeScaling::None),
        "linear" => Ok(RopeScaling::Linear {
            factor: f("factor").ok_or("linear rope scaling without `factor`")?,
        }),
        "llama3" => Ok(RopeScaling::Llama3 {
            factor: f("factor").ok_or("llama3 rope scaling without `factor`")?,
            low_freq_factor: f("low_freq_factor").unwrap_or(1.0),
            high_freq_factor: f("high_freq_factor").unwrap_or(4.0),
            original_max_position_embeddings: s
                .get("original_max_position_embeddings")
                .and_then(Value::as_u64)
                .ok_or("llama3 rope scaling without `original_max_position_embeddings`")?
                as usize,
        }),
        other => Err(format!(
            "rope scaling type {other:?} is not supported (supported: default, linear, llama3)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_transformers5_rope_parameters() {
        let v: Value = serde_json::from_str(
            r#"{"architectures":["LlamaForCausalLM"],"model_type":"llama","vocab_size":10,"hidden_size":8,
            "intermediate_size":16,"num_hidden_layers":1,"num_attention_heads":2,"num_key_value_heads":1,
            "dtype":"bfloat16","rope_parameters":{"rope_theta":500000.0,"rope_type":"llama3","factor":8.0,
            "low_freq_factor":1.0,"high_freq_factor":4.0,"original_max_position_embeddings":8192}}"#,
        )
        .unwrap();
        let c = ModelConfig::from_hf_json(&v).unwrap();
        assert_eq!(c.rope_theta, 500000.0);
        assert_eq!(c.stored_dtype, Some(DType::BF16));
        assert_eq!(c.head_dim, 4);
        assert!(matches!(
            c.rope_scaling,
            RopeScaling::Llama3 {
                original_max_position_embeddings: 8192,
                ..
            }
        ));
    }

    #[test]
    fn refuses_unknown_architecture_by_name() {
        let v: Value = serde_json::from_str(r#"{"model_type":"gpt2","vocab_size":10}"#).unwrap();
        let e = ModelConfig::from_hf_json(&v).unwrap_err().to_string();
        assert!(e.contains("gpt2"), "{e}");
    }
}
