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

/// How much memory the KV cache may take.
#[derive(Clone, Copy, Debug)]
pub struct KvBudget {
    /// Exact bytes (`--kv-cache-memory`); wins over the fraction.
    pub bytes: Option<usize>,
    /// Fraction of the device's memory the whole process may use (`--memory-utilization`).
    pub memory_utilization: f32,
}

/// Default KV size on devices that share the host's RAM (vLLM's CPU default too).
pub const HOST_KV_DEFAULT_BYTES: usize = 4 << 30;

/// Sizes the KV pool after a profiling step: runs the largest step the engine
/// will run (`max_step_tokens` tokens spread over up to `max_seqs` sequences, so
/// the logits of every sequence are there too) with a small cache so activations
/// are allocated, then gives the cache what the budget leaves.
pub fn build_runner(
    model: super::DeviceModel,
    block_size: usize,
    max_step_tokens: usize,
    max_seqs: usize,
    budget: KvBudget,
) -> Result<super::Runner> {
    let cfg = model.config.clone();
    let device = model.device.clone();
    let caps = device.capabilities();
    let dtype = model.dtypes.kv;
    let per_block = KvCache::bytes_per_token(&cfg, dtype) * block_size;

    // Profiling pass: short sequences keep it quick (attention is quadratic).
    let n = max_step_tokens.min(cfg.max_position_embeddings).max(1);
    let seqs = max_seqs.clamp(1, n);
    let mut batch = super::StepBatch {
        query_start_loc: vec![0],
        ..Default::default()
    };
    let mut next_block = 0u32;
    for i in 0..seqs {
        let len = n / seqs + usize::from(i < n % seqs);
        let blocks = len.div_ceil(block_size) as u32;
        let table: Vec<u32> = (next_block..next_block + blocks).collect();
        for pos in 0..len {
            batch.tokens.push(0);
            batch.positions.push(pos as u32);
            batch
                .slots
                .push(table[pos / block_size] * block_size as u32 + (pos % block_size) as u32);
        }
        batch.query_start_loc.push(batch.tokens.len() as u32);
        batch.seq_lens.push(len as u32);
        batch.block_tables.push(table);
        next_block += blocks;
    }
    let probe = KvCache::new(
        device.as_ref(),
        &cfg,
        dtype,
        KvShape {
            num_blocks: next_block.max(1) as usize,
            block_size,
        },
    )?;
    let mut runner = super::Runner::new(model, probe);
    runner.step(&batch)?;
    let mem = device.memory_info()?;

    let bytes = match budget.bytes {
        Some(b) => b,
        None if caps.host_memory => {
            HOST_KV_DEFAULT_BYTES.min((mem.free_bytes as f64 * 0.5) as usize)
        }
        None => {
            let allowed = mem.total_bytes as f64 * budget.memory_utilization as f64;
            let used = (mem.total_bytes - mem.free_bytes.min(mem.total_bytes)) as f64;
            (allowed - used).max(0.0) as usize
        }
    };
    // No use for more blocks than sequences could ever fill.
    let useful = (cfg.max_position_embeddings * 256).div_ceil(block_size);
    let num_blocks = (bytes / per_block.max(1)).min(useful);
    if num_blocks
        < cfg
            .max_position_embeddings
            .min(max_step_tokens)
            .div_ceil(block_size)
            .max(1)
    {
        return Err(Error::device(
            device.name(),
            format!(
                "only {} bytes left for the KV cache ({num_blocks} blocks of {block_size} tokens); raise --kv-cache-memory or --memory-utilization, or lower --max-num-batched-tokens",
                bytes
            ),
        ));
    }
    let model = runner.model;
    drop(runner.kv);
    let kv = KvCache::new(
        device.as_ref(),
        &cfg,
        dtype,
        KvShape {
            num_blocks,
            block_size,
        },
    )?;
    tracing::info!(
        "KV cache: {num_blocks} blocks x {block_size} tokens = {} tokens, {:.1} MB ({dtype})",
        num_blocks * block_size,
        kv.bytes() as f64 / 1e6
    );
    Ok(super::Runner::new(model, kv))
}
