//! The KV cache on the device: one K and one V tensor per layer, in the
//! backend's block layout. The core hands out block ids; the device only stores.

use crate::hal::{Device, Tensor};
use crate::model::config::ModelConfig;
use crate::model::llama::KvShape;
use crate::{DType, Error, Result};

pub struct KvCache {
    pub shape: KvShape,
    pub dtype: DType,
    /// `k_cache.0, v_cache.0, k_cache.1, ...`: the order of the graph's state.
    pub tensors: Vec<Tensor>,
}

impl KvCache {
    pub fn new(
        device: &dyn Device,
        cfg: &ModelConfig,
        dtype: DType,
        shape: KvShape,
    ) -> Result<Self> {
        if !device
            .capabilities()
            .block_sizes
            .contains(&shape.block_size)
        {
            return Err(Error::device(
                device.name(),
                format!(
                    "block size {} is not supported (supported: {:?})",
                    shape.block_size,
                    device.capabilities().block_sizes
                ),
            ));
        }
        let layer = shape.layer_shape(cfg);
        let bytes = layer.iter().product::<usize>() * dtype.size();
        let mut tensors = Vec::with_capacity(2 * cfg.num_layers);
        for _ in 0..2 * cfg.num_layers {
            tensors.push(Tensor::new(device.alloc(bytes)?, 0, dtype, layer.clone())?);
        }
        Ok(KvCache {
            shape,
            dtype,
            tensors,
        })
    }

    pub fn bytes(&self) -> usize {
        self.tensors.iter().map(|t| t.nbytes()).sum()
    }

    /// Bytes one cached token takes across all layers.
    pub fn bytes_per_token(cfg: &ModelConfig, dtype: DType) -> usize {
        2 * cfg.num_layers * cfg.kv_dim() * dtype.size()
    }
}
