//! A model's weights on a device, uploaded once and shared by every compiled step.

use crate::hal::{Device, Tensor, WeightMap};
use crate::model::config::ModelConfig;
use crate::model::llama::{weight_specs, DTypes};
use crate::model::weights::names;
use crate::model::ModelSource;
use crate::{DType, Error, Result};
use std::sync::Arc;

pub struct DeviceModel {
    pub config: ModelConfig,
    pub dtypes: DTypes,
    pub device: Arc<dyn Device>,
    pub weights: WeightMap,
    pub weight_bytes: usize,
}

impl DeviceModel {
    /// Uploads every weight of `src` converted to `weight_dtype`, one tensor at a time.
    pub fn load(device: Arc<dyn Device>, src: &ModelSource, weight_dtype: DType) -> Result<Self> {
        let caps = device.capabilities();
        if !caps.weight_dtypes.contains(&weight_dtype) {
            return Err(Error::Unsupported {
                backend: device.name(),
                what: format!("{weight_dtype} weights"),
            });
        }
        let kv = if caps.kv_dtypes.contains(&weight_dtype) {
            weight_dtype
        } else {
            caps.activation_dtype
        };
        let dtypes = DTypes {
            weight: weight_dtype,
            activation: caps.activation_dtype,
            kv,
        };
        let cfg = &src.config;
        if cfg.tie_word_embeddings && !src.weights.contains(names::EMBED) {
            return Err(Error::model(
                &src.name,
                "tied embeddings but no embedding table",
            ));
        }
        if !cfg.tie_word_embeddings && !src.weights.contains(names::LM_HEAD) {
            return Err(Error::model(
                &src.name,
                "no lm_head.weight and tie_word_embeddings is false",
            ));
        }
        let specs = weight_specs(cfg, dtypes);
        let need: usize = specs
            .iter()
            .map(|(_, s, d)| s.iter().product::<usize>() * d.size())
            .sum();
        let mem = device.memory_info()?;
        if mem.free_bytes > 0 && need as u64 > mem.free_bytes {
            let hint = if weight_dtype == DType::F32 {
                "; try --dtype bf16"
            } else {
                ""
            };
            return Err(Error::device(
                device.name(),
                format!(
                    "{} needs {:.1} GB for its {weight_dtype} weights but only {:.1} GB is free{hint}",
                    src.name,
                    need as f64 / 1e9,
                    mem.free_bytes as f64 / 1e9
                ),
            ));
        }
        let mut weights = WeightMap::new();
        let mut weight_bytes = 0;
        for (name, shape, dtype) in specs {
            let host = src.weights.load(&name, dtype)?;
            if host.shape != shape {
                return Err(Error::model(
                    &src.name,
                    format!(
                        "tensor {name} has shape {:?}, the config implies {shape:?}",
                        host.shape
                    ),
                ));
            }
            let bytes = host.as_bytes();
            let buf = device.alloc(bytes.len())?;
            device.upload(&buf, 0, bytes)?;
            weight_bytes += bytes.len();
            weights.insert(name, Tensor::new(buf, 0, dtype, shape)?);
        }
        Ok(DeviceModel {
            config: cfg.clone(),
            dtypes,
            device,
            weights,
            weight_bytes,
        })
    }

    /// Bytes a decode step reads from the weights (the tied head is read twice:
    /// one embedding row, and the whole table as the output projection).
    pub fn decode_weight_bytes(&self) -> usize {
        self.weight_bytes
    }
}
