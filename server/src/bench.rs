//! `tessera bench`: speed measurements that print a table and write JSON.

use crate::session::{weight_dtype, ModelArgs, Session};
use anyhow::Context;
use std::path::PathBuf;
use std::time::Instant;
use tessera_core::engine::{generate, GenerateOptions, SamplingParams};
use tessera_core::DType;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Batch-1 prefill and decode speed per weight dtype, against the memory-bandwidth bound.
    Decode(DecodeArgs),
    /// Offline throughput of the engine on random prompts (like `vllm bench throughput`).
    Throughput(crate::throughput::ThroughputArgs),
    /// Online serving: Poisson arrivals against a running `tessera serve` (like `vllm bench serve`).
    Serve(crate::bench_serve::ServeArgs),
}

#[derive(clap::Args)]
pub struct DecodeArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Weight dtypes to compare, comma-separated.
    #[arg(long, default_value = "f32,bf16", value_delimiter = ',')]
    dtypes: Vec<String>,
    #[arg(long, default_value_t = 128)]
    prompt_tokens: usize,
    #[arg(long, default_value_t = 64)]
    decode_tokens: usize,
    /// Where to write the JSON results.
    #[arg(long, default_value = "bench-results/decode.json")]
    json: PathBuf,
}

#[derive(serde::Serialize)]
struct DecodeRow {
    dtype: String,
    weight_bytes: usize,
    prefill_tokens: usize,
    prefill_tok_s: f64,
    decode_tokens: usize,
    decode_tok_s: f64,
    /// Bytes read per decode step: all weights once plus the KV cache so far.
    bytes_per_token: f64,
    bandwidth_bound_tok_s: f64,
    fraction_of_bound: f64,
}

#[derive(serde::Serialize)]
struct DecodeReport {
    model: String,
    device: String,
    threads: usize,
    read_bandwidth_gb_s: f64,
    rows: Vec<DecodeRow>,
}

pub fn run(c: Command) -> anyhow::Result<()> {
    match c {
        Command::Decode(a) => decode(a),
        Command::Throughput(a) => crate::throughput::run(a),
        Command::Serve(a) => crate::bench_serve::run(a),
    }
}

/// Host memory read bandwidth: the best of several passes summing a 1 GiB array
/// on `threads` threads (what a bandwidth-bound decode step can hope for).
fn read_bandwidth_gb_s(threads: usize) -> f64 {
    let n = (1usize << 30) / 4;
    let data: Vec<f32> = (0..n).map(|i| (i % 7) as f32).collect();
    let mut best = 0f64;
    for _ in 0..5 {
        let t = Instant::now();
        let chunk = n.div_ceil(threads.max(1));
        let total: f32 = std::thread::scope(|s| {
            let handles: Vec<_> = data
                .chunks(chunk)
                .map(|c| {
                    s.spawn(move || {
                        let mut acc = [0f32; 16];
                        for w in c.chunks_exact(16) {
                            for i in 0..16 {
                                acc[i] += w[i];
                            }
                        }
                        acc.iter().sum::<f32>()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap_or(0.0)).sum()
        });
        std::hint::black_box(total);
        best = best.max((n * 4) as f64 / t.elapsed().as_secs_f64() / 1e9);
    }
    best
}

/// Device memory bandwidth: the best of several 1 GiB device-to-device
/// copies, counting the bytes read and written (what decode streams from HBM).
fn device_copy_bandwidth_gb_s(dev: &dyn tessera_core::hal::Device) -> anyhow::Result<f64> {
    let free = dev.memory_info()?.free_bytes as usize;
    let bytes = (1usize << 30).min(free / 4).max(1 << 20);
    let (src, dst) = (dev.alloc(bytes)?, dev.alloc(bytes)?);
    let mut best = 0f64;
    for _ in 0..6 {
        dev.synchronize()?;
        let t = Instant::now();
        dev.copy(&src, 0, &dst, 0, bytes)?;
        dev.synchronize()?;
        best = best.max(2.0 * bytes as f64 / t.elapsed().as_secs_f64() / 1e9);
    }
    Ok(best)
}

fn decode(a: DecodeArgs) -> anyhow::Result<()> {
    let threads = a.model.threads.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    // Host bandwidth unless the device has memory of its own (measured below).
    let mut bw: Option<f64> = None;
    let mut rows = vec![];
    let mut device_name = String::new();
    for d in &a.dtypes {
        let mut args = a.model.clone();
        args.dtype = d.clone();
        let session = Session::open(&args)?;
        let dtype: DType = weight_dtype(d, &session.device.capabilities().weight_dtypes)?;
        device_name = session.device.name();
        let cfg = &session.source.config;
        let mut runner = session.runner(a.prompt_tokens + a.decode_tokens + 1)?;
        // A fixed pseudo-random prompt: the speed does not depend on the text.
        let prompt: Vec<u32> = (0..a.prompt_tokens.max(1))
            .map(|i| ((i * 7919 + 13) % cfg.vocab_size) as u32)
            .collect();
        let opts = GenerateOptions {
            max_tokens: a.decode_tokens.max(2),
            sampling: SamplingParams::default(),
            stop_ids: vec![],
            prefill_chunk: 4096,
            lora_slot: None,
        };
        let caps = session.device.capabilities();
        let bw = *bw.get_or_insert_with(|| {
            if caps.host_memory {
                read_bandwidth_gb_s(threads)
            } else {
                device_copy_bandwidth_gb_s(session.device.as_ref()).unwrap_or(f64::NAN)
            }
        });
        if caps.graph_capture {
            // Record the step shapes' graphs first, as serving does at start.
            generate(&mut runner, &prompt, &opts, |_| Ok(true))?;
        }
        let stats = generate(&mut runner, &prompt, &opts, |_| Ok(true))?;
        let weight_bytes = runner.model.weight_bytes;
        let avg_ctx = a.prompt_tokens + a.decode_tokens / 2;
        let kv_bytes = avg_ctx * 2 * cfg.num_layers * cfg.kv_dim() * runner.kv.dtype.size();
        let bytes_per_token = (weight_bytes + kv_bytes) as f64;
        let bound = bw * 1e9 / bytes_per_token;
        let decode_tok_s = stats.decode_tokens_per_s();
        rows.push(DecodeRow {
            dtype: dtype.to_string(),
            weight_bytes,
            prefill_tokens: stats.prompt_tokens,
            prefill_tok_s: stats.prefill_tokens_per_s(),
            decode_tokens: stats.generated_tokens,
            decode_tok_s,
            bytes_per_token,
            bandwidth_bound_tok_s: bound,
            fraction_of_bound: decode_tok_s / bound,
        });
    }
    let report = DecodeReport {
        model: a.model.model.clone(),
        device: device_name,
        threads,
        read_bandwidth_gb_s: bw.unwrap_or(f64::NAN),
        rows,
    };
    println!(
        "model {} on {} ({} threads), read bandwidth {:.1} GB/s",
        report.model, report.device, threads, report.read_bandwidth_gb_s
    );
    println!(
        "{:<6} {:>10} {:>13} {:>12} {:>14} {:>15} {:>9}",
        "dtype",
        "weights MB",
        "prefill tok/s",
        "decode tok/s",
        "MB read/token",
        "bound tok/s",
        "of bound"
    );
    for r in &report.rows {
        println!(
            "{:<6} {:>10.1} {:>13.1} {:>12.1} {:>14.1} {:>15.1} {:>8.0}%",
            r.dtype,
            r.weight_bytes as f64 / 1e6,
            r.prefill_tok_s,
            r.decode_tok_s,
            r.bytes_per_token / 1e6,
            r.bandwidth_bound_tok_s,
            100.0 * r.fraction_of_bound
        );
    }
    if let Some(dir) = a.json.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(&a.json, serde_json::to_string_pretty(&report)?)
        .with_context(|| format!("writing {}", a.json.display()))?;
    println!("wrote {}", a.json.display());
    Ok(())
}
