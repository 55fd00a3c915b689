//! Seeded random weights of a real model's shape (`random:llama-3.2-1b`), for
//! speed checks without weight files. Values are a pure function of (seed,
//! tensor name, index), so every backend and every run sees the same model.

use super::config::{ModelConfig, RopeScaling};
use super::weights::WeightSource;
use crate::{DType, Error, HostTensor, Result};
use std::path::Path;

pub const PRESETS: &[&str] = &[
    "smollm2-135m",
    "llama-3.2-1b",
    "llama-3.1-8b",
    "qwen2.5-0.5b",
    "mistral-7b",
];

pub fn preset(name: &str) -> Option<ModelConfig> {
    let base = ModelConfig {
        architecture: "llama".into(),
        vocab_size: 0,
        hidden_size: 0,
        intermediate_size: 0,
        num_layers: 0,
        num_heads: 0,
        num_kv_heads: 0,
        head_dim: 0,
        rms_norm_eps: 1e-5,
        rope_theta: 10000.0,
        rope_scaling: RopeScaling::None,
        max_position_embeddings: 8192,
        tie_word_embeddings: false,
        qkv_bias: false,
        sliding_window: None,
        bos_token_id: None,
        eos_token_ids: vec![],
        stored_dtype: None,
    };
    let llama3_scaling = RopeScaling::Llama3 {
        factor: if name == "llama-3.2-1b" { 32.0 } else { 8.0 },
        low_freq_factor: 1.0,
        high_freq_factor: 4.0,
        original_max_position_embeddings: 8192,
    };
    Some(match name {
        "smollm2-135m" => ModelConfig {
            vocab_size: 49152,
            hidden_size: 576,
            intermediate_size: 1536,
            num_layers: 30,
            num_heads: 9,
            num_kv_heads: 3,
            head_dim: 64,
            rope_theta: 100000.0,
            tie_word_embeddings: true,
            ..base
        },
        "llama-3.2-1b" => ModelConfig {
            vocab_size: 128256,
            hidden_size: 2048,
            intermediate_size: 8192,
            num_layers: 16,
            num_heads: 32,
            num_kv_heads: 8,
            head_dim: 64,
            rope_theta: 500000.0,
            rope_scaling: llama3_scaling,
            max_position_embeddings: 131072,
            tie_word_embeddings: true,
            ..base
        },
        "llama-3.1-8b" => ModelConfig {
            vocab_size: 128256,
            hidden_size: 4096,
            intermediate_size: 14336,
            num_layers: 32,
            num_heads: 32,
            num_kv_heads: 8,
            head_dim: 128,
            rope_theta: 500000.0,
            rope_scaling: llama3_scaling,
            max_position_embeddings: 131072,
            ..base
        },
        "qwen2.5-0.5b" => ModelConfig {
            architecture: "qwen2".into(),
            vocab_size: 151936,
            hidden_size: 896,
            intermediate_size: 4864,
            num_layers: 24,
            num_heads: 14,
            num_kv_heads: 2,
            head_dim: 64,
            rms_norm_eps: 1e-6,
            rope_theta: 1000000.0,
            max_position_embeddings: 32768,
            tie_word_embeddings: true,
            qkv_bias: true,
            ..base
        },
        "mistral-7b" => ModelConfig {
            architecture: "mistral".into(),
            vocab_size: 32768,
            hidden_size: 4096,
            intermediate_size: 14336,
            num_layers: 32,
            num_heads: 32,
            num_kv_heads: 8,
            head_dim: 128,
            rope_theta: 1000000.0,
            max_position_embeddings: 32768,
            ..base
        },
        _ => return None,
    })
}

/// Resolves the part after `random:`: a preset name or a path to a config.json.
pub fn config_for(spec: &str) -> Result<ModelConfig> {
    if let Some(c) = preset(spec) {
        return Ok(c);
    }
    let p = Path::new(spec);
    if p.is_file() {
        return ModelConfig::from_hf_file(p);
    }
    if p.is_dir() && p.join("config.json").is_file() {
        return ModelConfig::from_hf_file(&p.join("config.json"));
    }
    Err(Error::model(
        format!("random:{spec}"),
        format!(
            "not a preset ({}) nor a config.json path",
            PRESETS.join(", ")
        ),
    ))
}

pub struct RandomWeights {
    pub config: ModelConfig,
    pub seed: u64,
}

/// SplitMix64: a tiny, well-mixed hash used as a counter-based generator.
pub fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn name_hash(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    })
}

impl WeightSource for RandomWeights {
    fn describe(&self) -> String {
        format!("random weights (seed {})", self.seed)
    }

    fn contains(&self, name: &str) -> bool {
        let specs = super::llama::weight_specs(
            &self.config,
            super::llama::DTypes {
                weight: DType::F32,
                activation: DType::F32,
                kv: DType::F32,
            },
        );
        specs.iter().any(|(n, _, _)| n == name)
    }

    fn load(&self, name: &str, dtype: DType) -> Result<HostTensor> {
        let specs = super::llama::weight_specs(
            &self.config,
            super::llama::DTypes {
                weight: DType::F32,
                activation: DType::F32,
                kv: DType::F32,
            },
        );
        let (_, shape, _) = specs
            .into_iter()
            .find(|(n, _, _)| n == name)
            .ok_or_else(|| Error::model("random", format!("no tensor {name} in this shape")))?;
        let key = splitmix64(self.seed ^ name_hash(name));
        let n: usize = shape.iter().product();
        let data: Vec<f32> = if name.ends_with("norm.weight") {
            vec![1.0; n]
        } else {
            // Uniform in [-a, a] with a = sqrt(3 / fan_in): unit-variance outputs.
            let fan_in = *shape.last().unwrap_or(&1) as f32;
            let a = if name.ends_with("embed_tokens.weight") {
                1.0
            } else {
                (3.0 / fan_in).sqrt()
            };
            let mut data = vec![0f32; n];
            // Filled in parallel chunks: a 1B-parameter model is billions of draws.
            let threads = std::thread::available_parallelism()
                .map(|t| t.get())
                .unwrap_or(1);
            let chunk = n.div_ceil(threads).max(1 << 16);
            std::thread::scope(|s| {
                for (c, part) in data.chunks_mut(chunk).enumerate() {
                    s.spawn(move || {
                        let base = (c * chunk) as u64;
                        for (i, v) in part.iter_mut().enumerate() {
                            let u = (splitmix64(key.wrapping_add(base + i as u64)) >> 40) as f32
                                / (1u64 << 24) as f32;
                            *v = (2.0 * u - 1.0) * a;
                        }
                    });
                }
            });
            data
        };
        HostTensor::f32(shape, data).to_dtype(dtype)
    }
}
