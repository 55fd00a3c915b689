//! `tessera bench throughput`: many random requests through the engine at once.

use crate::session::{ModelArgs, Session};
use anyhow::Context;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tessera_core::engine::kv_cache::{build_runner, KvBudget};
use tessera_core::engine::{DeviceModel, Engine, EngineConfig, LoraConfig, SamplingParams};
use tessera_core::model::llama::LoraShape;
use tessera_core::model::lora::{random_adapter, Target};
use tessera_core::model::random::splitmix64;

#[derive(clap::Args)]
pub struct ThroughputArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[arg(long, default_value_t = 64)]
    num_prompts: usize,
    #[arg(long, default_value_t = 128)]
    input_len: usize,
    #[arg(long, default_value_t = 128)]
    output_len: usize,
    #[command(flatten)]
    engine: EngineArgs,
    /// Also run the same requests spread over K random LoRA adapters (request
    /// i uses adapter i mod K) and print both runs side by side. 0: base only.
    #[arg(long, default_value_t = 0)]
    lora_mix: usize,
    /// Rank of the --lora-mix adapters (they target all seven projections).
    #[arg(long, default_value_t = 16)]
    lora_rank: usize,
    /// Where to write the JSON results.
    #[arg(long, default_value = "bench-results/throughput.json")]
    json: PathBuf,
}

/// Engine sizing flags shared by commands that run the engine.
#[derive(clap::Args, Clone)]
pub struct EngineArgs {
    #[arg(long, default_value_t = 256)]
    pub max_num_seqs: usize,
    #[arg(long, default_value_t = 2048)]
    pub max_num_batched_tokens: usize,
    /// Bytes for the KV cache (default: a fraction of free device memory; 4 GiB on the cpu).
    #[arg(long)]
    pub kv_cache_memory: Option<usize>,
    #[arg(long, default_value_t = 0.9)]
    pub memory_utilization: f32,
    /// Longest prompt + output served (default: the model's context).
    #[arg(long)]
    pub max_model_len: Option<usize>,
    #[arg(long)]
    pub no_prefix_caching: bool,
    /// Serve LoRA adapters (implied by --lora, --allow-runtime-lora and --lora-mix).
    #[arg(long)]
    pub enable_lora: bool,
    /// Adapter slots on the device: the most distinct adapters in one step.
    #[arg(long, default_value_t = 4)]
    pub max_loras: usize,
    /// Largest adapter rank accepted (every slot is this big).
    #[arg(long, default_value_t = 64)]
    pub max_lora_rank: usize,
    /// Adapters whose weights stay in host memory; others are read from disk again when used.
    #[arg(long, default_value_t = 16)]
    pub max_cpu_loras: usize,
}

impl EngineArgs {
    pub fn build(&self, session: &Session) -> anyhow::Result<Engine> {
        if !(self.memory_utilization > 0.0 && self.memory_utilization <= 1.0) {
            anyhow::bail!(
                "--memory-utilization must be in (0, 1], got {}",
                self.memory_utilization
            );
        }
        let mut model = DeviceModel::load(session.device.clone(), &session.source, session.dtype)
            .with_context(|| format!("loading {}", session.source.name))?;
        let lora = self.enable_lora.then_some(LoraConfig {
            max_loras: self.max_loras,
            max_lora_rank: self.max_lora_rank,
            max_cpu_loras: self.max_cpu_loras,
        });
        if let Some(l) = lora {
            // Before the KV cache takes what memory is left.
            l.validate()?;
            model.enable_lora(LoraShape {
                slots: l.max_loras,
                rank: l.max_lora_rank,
            })?;
        }
        let budget = KvBudget {
            bytes: self.kv_cache_memory,
            memory_utilization: self.memory_utilization,
        };
        let runner = build_runner(
            model,
            session.block_size,
            self.max_num_batched_tokens,
            self.max_num_seqs,
            budget,
        )?;
        let context = session.source.config.max_position_embeddings;
        let max_model_len = match self.max_model_len {
            Some(0) => anyhow::bail!("--max-model-len must be positive"),
            Some(n) if n > context => anyhow::bail!(
                "--max-model-len {n} is more than the model's context of {context} tokens"
            ),
            Some(n) => n,
            None => context,
        };
        let config = EngineConfig {
            max_num_seqs: self.max_num_seqs,
            max_num_batched_tokens: self.max_num_batched_tokens,
            max_model_len,
            prefix_caching: !self.no_prefix_caching,
            lora,
        };
        let tokenizer = session
            .source
            .tokenizer
            .as_ref()
            .map(|t| std::sync::Arc::new(t.clone()));
        Ok(Engine::new(runner, tokenizer, config)?)
    }
}

#[derive(serde::Serialize)]
struct Report {
    model: String,
    device: String,
    num_prompts: usize,
    input_len: usize,
    output_len: usize,
    max_num_seqs: usize,
    max_num_batched_tokens: usize,
    elapsed_s: f64,
    requests_per_s: f64,
    output_tokens_per_s: f64,
    total_tokens_per_s: f64,
    steps: u64,
    mean_step_ms: f64,
    p99_step_ms: f64,
    /// Scheduler + sampling/postprocessing share of the step time, all steps.
    overhead_share: f64,
    /// The same over steps that ran `max_num_seqs` sequences (None if none did).
    overhead_share_full_batch: Option<f64>,
}

pub fn run(a: ThroughputArgs) -> anyhow::Result<()> {
    if a.num_prompts == 0 || a.input_len == 0 || a.output_len == 0 {
        anyhow::bail!("--num-prompts, --input-len and --output-len must be positive");
    }
    let session = Session::open(&a.model)?;
    println!(
        "{} prompts x ({} in, {} out) on {} with max {} seqs / {} batched tokens",
        a.num_prompts,
        a.input_len,
        a.output_len,
        session.device.name(),
        a.engine.max_num_seqs,
        a.engine.max_num_batched_tokens
    );
    if a.lora_mix == 0 {
        let mut engine = a.engine.build(&session)?;
        let report = measure(&mut engine, &a, &session, &[])?;
        print_table(&[("value", &report)]);
        return write_json(&a.json, &report);
    }
    if a.lora_rank == 0 || a.lora_rank > a.engine.max_lora_rank {
        anyhow::bail!(
            "--lora-rank {} must be between 1 and --max-lora-rank {}",
            a.lora_rank,
            a.engine.max_lora_rank
        );
    }
    // The same requests twice, one engine at a time: the base model alone,
    // then spread over K adapters.
    let base = {
        let mut engine = a.engine.build(&session)?;
        measure(&mut engine, &a, &session, &[])?
    };
    let mut args = a.engine.clone();
    args.enable_lora = true;
    let mut engine = args.build(&session)?;
    let mut names = vec![];
    for k in 0..a.lora_mix {
        let name = format!("bench-lora-{k}");
        let adapter = random_adapter(
            &name,
            &session.source.config,
            a.lora_rank,
            &Target::ALL,
            k as u64,
        );
        engine.add_lora(adapter)?;
        names.push(name);
    }
    let mixed = measure(&mut engine, &a, &session, &names)?;
    let ratio = mixed.output_tokens_per_s / base.output_tokens_per_s.max(1e-12);
    let label = format!("{} adapters", a.lora_mix);
    print_table(&[("base only", &base), (label.as_str(), &mixed)]);
    println!(
        "{:<34} {:>12.1}%   (rank {}, {} slots, {} slot writes)",
        "LoRA output tokens/s vs base",
        100.0 * ratio,
        a.lora_rank,
        a.engine.max_loras,
        engine.lora_loads
    );
    let report = LoraMixReport {
        lora_mix: a.lora_mix,
        lora_rank: a.lora_rank,
        max_loras: a.engine.max_loras,
        output_tokens_per_s_ratio: ratio,
        base,
        lora: mixed,
    };
    write_json(&a.json, &report)
}

#[derive(serde::Serialize)]
struct LoraMixReport {
    lora_mix: usize,
    lora_rank: usize,
    max_loras: usize,
    /// LoRA-mix output tokens/s over base-only output tokens/s.
    output_tokens_per_s_ratio: f64,
    base: Report,
    lora: Report,
}

/// Runs `a.num_prompts` random requests to the end; request i uses
/// adapter `adapters[i % len]` (none when `adapters` is empty).
fn measure(
    engine: &mut Engine,
    a: &ThroughputArgs,
    session: &Session,
    adapters: &[String],
) -> anyhow::Result<Report> {
    let kv = &engine.runner.kv;
    println!(
        "KV cache: {} blocks x {} tokens = {} tokens, {:.1} MB ({})",
        kv.shape.num_blocks,
        kv.shape.block_size,
        kv.shape.num_blocks * kv.shape.block_size,
        kv.bytes() as f64 / 1e6,
        kv.dtype
    );
    let vocab = session.source.config.vocab_size as u64;
    for i in 0..a.num_prompts {
        let prompt: Vec<u32> = (0..a.input_len)
            .map(|j| (splitmix64(((i as u64) << 32) | j as u64) % vocab) as u32)
            .collect();
        let params = SamplingParams {
            temperature: 1.0,
            max_tokens: a.output_len,
            ignore_eos: true,
            seed: i as u64,
            ..Default::default()
        };
        let lora = (!adapters.is_empty()).then(|| adapters[i % adapters.len()].as_str());
        engine.add_request_with(&format!("bench-{i}"), prompt, params, 0, lora)?;
    }
    let start = Instant::now();
    let mut step_ms = vec![];
    let mut output_tokens = 0usize;
    let (mut full_total, mut full_over) = (Duration::ZERO, Duration::ZERO);
    let times_before = engine.times;
    while engine.has_work() {
        let before = engine.times;
        let running = engine.num_running();
        let t = Instant::now();
        for o in engine.step()? {
            output_tokens += o.token_ids.len();
        }
        let dt = t.elapsed();
        step_ms.push(dt.as_secs_f64() * 1e3);
        let after = engine.times;
        if running.max(engine.num_running()) >= a.engine.max_num_seqs {
            full_total += dt;
            full_over +=
                (after.schedule - before.schedule) + (after.postprocess - before.postprocess);
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let t = engine.times;
    let (steps, schedule, execute, postprocess) = (
        t.steps - times_before.steps,
        t.schedule - times_before.schedule,
        t.execute - times_before.execute,
        t.postprocess - times_before.postprocess,
    );
    let total = schedule + execute + postprocess;
    step_ms.sort_by(|x, y| x.total_cmp(y));
    let p99 = step_ms
        .get(((step_ms.len() as f64 * 0.99) as usize).min(step_ms.len().saturating_sub(1)))
        .copied()
        .unwrap_or(0.0);
    Ok(Report {
        model: a.model.model.clone(),
        device: session.device.name(),
        num_prompts: a.num_prompts,
        input_len: a.input_len,
        output_len: a.output_len,
        max_num_seqs: a.engine.max_num_seqs,
        max_num_batched_tokens: a.engine.max_num_batched_tokens,
        elapsed_s: elapsed,
        requests_per_s: a.num_prompts as f64 / elapsed,
        output_tokens_per_s: output_tokens as f64 / elapsed,
        total_tokens_per_s: (output_tokens + a.num_prompts * a.input_len) as f64 / elapsed,
        steps,
        mean_step_ms: step_ms.iter().sum::<f64>() / step_ms.len().max(1) as f64,
        p99_step_ms: p99,
        overhead_share: (schedule + postprocess).as_secs_f64() / total.as_secs_f64().max(1e-12),
        overhead_share_full_batch: (full_total > Duration::ZERO)
            .then(|| full_over.as_secs_f64() / full_total.as_secs_f64()),
    })
}

/// One column per run.
fn print_table(runs: &[(&str, &Report)]) {
    print!("{:<34}", "metric");
    for (name, _) in runs {
        print!(" {name:>12}");
    }
    println!();
    type Row = (&'static str, fn(&Report) -> Option<f64>);
    let rows: [Row; 9] = [
        ("elapsed (s)", |r| Some(r.elapsed_s)),
        ("requests/s", |r| Some(r.requests_per_s)),
        ("output tokens/s", |r| Some(r.output_tokens_per_s)),
        ("total tokens/s", |r| Some(r.total_tokens_per_s)),
        ("steps", |r| Some(r.steps as f64)),
        ("mean step (ms)", |r| Some(r.mean_step_ms)),
        ("p99 step (ms)", |r| Some(r.p99_step_ms)),
        ("scheduler+sampler share (%)", |r| {
            Some(100.0 * r.overhead_share)
        }),
        ("  at a full batch (%)", |r| {
            r.overhead_share_full_batch.map(|s| 100.0 * s)
        }),
    ];
    for (label, get) in rows {
        let values: Vec<Option<f64>> = runs.iter().map(|(_, r)| get(r)).collect();
        if values.iter().all(Option::is_none) {
            continue;
        }
        print!("{label:<34}");
        for v in values {
            match v {
                Some(v) => print!(" {v:>12.2}"),
                None => print!(" {:>12}", "-"),
            }
        }
        println!();
    }
}

fn write_json(path: &std::path::Path, report: &impl serde::Serialize) -> anyhow::Result<()> {
    if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(path, serde_json::to_string_pretty(report)?)
        .with_context(|| format!("writing {}", path.display()))?;
    println!("wrote {}", path.display());
    Ok(())
}
