//! Opening a model on a device: the part `generate` and `bench` share.

use anyhow::{bail, Context};
use std::sync::Arc;
use std::time::Instant;
use tessera_core::engine::{DeviceModel, KvCache, Runner};
use tessera_core::hal::{open_device, Device};
use tessera_core::model::llama::KvShape;
use tessera_core::model::{self, ModelSource};
use tessera_core::DType;

#[derive(clap::Args, Clone)]
pub struct ModelArgs {
    /// `default` (SmolLM2-135M-Instruct), a GGUF file, a Hugging Face folder, or
    /// `random:<preset|config.json>` (presets: smollm2-135m, llama-3.2-1b, llama-3.1-8b, qwen2.5-0.5b, mistral-7b).
    #[arg(long, default_value = "default")]
    pub model: String,
    /// auto, or a backend name from `tessera devices` (cpu, cuda, ...), optionally `:N`.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Weight dtype on the device: auto (bf16 where supported), f32, bf16.
    #[arg(long, default_value = "auto")]
    pub dtype: String,
    /// Threads for the cpu backend (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Tokens per KV-cache block.
    #[arg(long, default_value_t = 16)]
    pub block_size: usize,
}

/// A device and a model source, opened; weights not yet uploaded.
pub struct Session {
    pub device: Arc<dyn Device>,
    pub source: ModelSource,
    pub dtype: DType,
    pub block_size: usize,
}

pub fn weight_dtype(arg: &str, supported: &[DType]) -> anyhow::Result<DType> {
    if arg == "auto" {
        return Ok(if supported.contains(&DType::BF16) {
            DType::BF16
        } else {
            DType::F32
        });
    }
    match DType::parse(arg) {
        Some(d) if supported.contains(&d) => Ok(d),
        Some(d) => bail!("--dtype {d} is not supported by this device (supported: {supported:?})"),
        None => bail!("--dtype {arg:?} is not a dtype; use auto, f32 or bf16"),
    }
}

impl Session {
    pub fn open(args: &ModelArgs) -> anyhow::Result<Session> {
        if args.block_size == 0 {
            bail!("--block-size must be positive");
        }
        let device = open_device(&args.device, args.threads)?;
        let dtype = weight_dtype(&args.dtype, &device.capabilities().weight_dtypes)?;
        let source = model::open(&args.model)?;
        Ok(Session {
            device,
            source,
            dtype,
            block_size: args.block_size,
        })
    }

    /// Uploads the weights and sizes a KV cache for `context_tokens`.
    pub fn runner(&self, context_tokens: usize) -> anyhow::Result<Runner> {
        let t = Instant::now();
        let model = DeviceModel::load(self.device.clone(), &self.source, self.dtype)
            .with_context(|| format!("loading {}", self.source.name))?;
        tracing::info!(
            "loaded {} ({:.0} MB of {} weights) on {} in {:.2}s",
            self.source.name,
            model.weight_bytes as f64 / 1e6,
            self.dtype,
            self.device.name(),
            t.elapsed().as_secs_f64()
        );
        let ctx = context_tokens
            .min(self.source.config.max_position_embeddings)
            .max(1);
        let shape = KvShape {
            num_blocks: ctx.div_ceil(self.block_size),
            block_size: self.block_size,
        };
        let kv = KvCache::new(
            self.device.as_ref(),
            &self.source.config,
            model.dtypes.kv,
            shape,
        )?;
        Ok(Runner::new(model, kv))
    }
}
