//! The engine layer: what a request gets never depends on how the engine ran
//! it. Batched = alone, chunked prefill = whole prefill, prefix-cache hit =
//! miss, preempted and recomputed = uninterrupted, and a seeded sample is the
//! same whatever shares its batch. Run on the tiny Qwen2 fixture (qkv bias).

use crate::harness::{block_size, run_to_end, runner_on, tiny_fixture};
use crate::models::main_dtype;
use crate::report::{Check, Layer};
use std::collections::HashMap;
use std::sync::Arc;
use tessera_core::engine::{Engine, EngineConfig, SamplingParams};
use tessera_core::hal::Device;
use tessera_core::model::random::splitmix64;
use tessera_core::model::ModelSource;
use tessera_core::{DType, Error, Result};

type Outputs = HashMap<String, Vec<u32>>;

struct Setup {
    dev: Arc<dyn Device>,
    src: ModelSource,
    dtype: DType,
    block_size: usize,
}

impl Setup {
    /// An engine with a pool of `tokens` cache tokens and a step budget.
    fn engine(&self, tokens: usize, budget: usize) -> Result<Engine> {
        let blocks = tokens.div_ceil(self.block_size);
        let r = runner_on(
            &self.dev,
            &self.src,
            self.dtype,
            blocks * self.block_size,
            self.block_size,
        )?;
        let cfg = EngineConfig {
            max_num_seqs: 8,
            max_num_batched_tokens: budget,
            max_model_len: 2048,
            prefix_caching: true,
            lora: None,
        };
        Engine::new(r, None, cfg)
    }

    /// Runs every request to its end; tokens by request id.
    fn run(&self, e: &mut Engine, reqs: &[(String, Vec<u32>, SamplingParams)]) -> Result<Outputs> {
        for (id, p, params) in reqs {
            e.add_request(id, p.clone(), params.clone(), 0)?;
        }
        run_to_end(e)
    }

    fn alone(&self, p: &[u32], params: &SamplingParams) -> Result<Vec<u32>> {
        let mut e = self.engine(256, 64)?;
        let mut out = self.run(&mut e, &[("alone".into(), p.to_vec(), params.clone())])?;
        out.remove("alone")
            .ok_or_else(|| Error::invalid("no output"))
    }
}

/// `len` pseudo-random token ids below 256, fixed by `seed`.
pub fn prompt(seed: u64, len: usize) -> Vec<u32> {
    (0..len)
        .map(|i| (splitmix64(seed * 1000 + i as u64) % 256) as u32)
        .collect()
}

/// Greedy decoding of exactly `max_tokens` tokens.
pub fn greedy(max_tokens: usize) -> SamplingParams {
    SamplingParams {
        max_tokens,
        ignore_eos: true,
        ..Default::default()
    }
}

/// Sampling at temperature 1 with `seed`, exactly `max_tokens` tokens.
pub fn seeded(max_tokens: usize, seed: u64) -> SamplingParams {
    SamplingParams {
        max_tokens,
        ignore_eos: true,
        temperature: 1.0,
        seed,
        ..Default::default()
    }
}

/// Compares each request's tokens with what it got alone.
fn same(name: &str, setup: &Setup, group: &str, want: &[Vec<u32>], got: &Outputs) -> Check {
    let wrong: Vec<String> = want
        .iter()
        .enumerate()
        .filter(|(i, w)| got.get(&format!("r{i}")) != Some(w))
        .map(|(i, _)| format!("r{i}"))
        .collect();
    let c = Check::measured(
        Layer::Engine,
        name,
        setup.dtype.name(),
        group,
        wrong.len() as f64,
        0.0,
    );
    if wrong.is_empty() {
        c.note(format!("{} requests identical", want.len()))
    } else {
        c.fail(format!("differ from alone: {}", wrong.join(", ")))
    }
}

pub fn check(dev: &Arc<dyn Device>) -> Vec<Check> {
    let caps = dev.capabilities();
    let dtype = main_dtype(dev.as_ref());
    let setup = || -> Result<Setup> {
        Ok(Setup {
            dev: dev.clone(),
            src: tiny_fixture("qwen2_bias")?,
            dtype,
            block_size: block_size(&caps, 4),
        })
    };
    let mut rows = vec![];
    let fail = |name: &str, e: Error| {
        Check::verdict(
            Layer::Engine,
            name,
            dtype.name(),
            "qwen2_bias",
            false,
            format!("error: {e}"),
        )
    };
    match setup() {
        Err(e) => rows.push(fail("setup", e)),
        Ok(s) => {
            match batching(&s) {
                Ok(r) => rows.extend(r),
                Err(e) => rows.push(fail("batched = alone", e)),
            }
            match prefix_hit(&s) {
                Ok(r) => rows.push(r),
                Err(e) => rows.push(fail("prefix hit = miss", e)),
            }
            match preemption(&s) {
                Ok(r) => rows.extend(r),
                Err(e) => rows.push(fail("preempted = uninterrupted", e)),
            }
        }
    }
    rows
}

/// Five prompts of 3..31 tokens, 12 greedy tokens each: together with a step
/// budget of 6 tokens (prompts chunked, mixed with decodes) and of 64.
fn batching(s: &Setup) -> Result<Vec<Check>> {
    let prompts: Vec<Vec<u32>> = (0..5).map(|i| prompt(i, 3 + 7 * i as usize)).collect();
    let want = prompts
        .iter()
        .map(|p| s.alone(p, &greedy(12)))
        .collect::<Result<Vec<_>>>()?;
    let reqs: Vec<_> = prompts
        .iter()
        .enumerate()
        .map(|(i, p)| (format!("r{i}"), p.clone(), greedy(12)))
        .collect();
    let mut rows = vec![];
    for (name, budget) in [("chunked = whole", 6usize), ("batched = alone", 64)] {
        let mut e = s.engine(256, budget)?;
        let got = s.run(&mut e, &reqs)?;
        rows.push(same(
            name,
            s,
            &format!("5 prompts, {budget}-token steps, bs {}", s.block_size),
            &want,
            &got,
        ));
    }
    Ok(rows)
}

/// The same prompt twice on one engine: the second run hits the prefix cache
/// and must get the same tokens.
fn prefix_hit(s: &Setup) -> Result<Check> {
    let p = prompt(4, 31);
    let mut e = s.engine(256, 64)?;
    let cold = s.run(&mut e, &[("r0".into(), p.clone(), greedy(12))])?;
    let hits = e.block_stats().prefix_hits;
    let warm = s.run(&mut e, &[("r0".into(), p, greedy(12))])?;
    let group = format!("31-token prompt, bs {}", s.block_size);
    let mut c = same("prefix hit = miss", s, &group, &[cold["r0"].clone()], &warm);
    if e.block_stats().prefix_hits <= hits {
        c = c.fail("the second run did not hit the prefix cache");
    }
    Ok(c)
}

/// Four seeded requests in a pool too small for all: the newest are preempted
/// and recomputed, and each must still get what it gets alone.
fn preemption(s: &Setup) -> Result<Vec<Check>> {
    let prompts: Vec<Vec<u32>> = (0..4).map(|i| prompt(10 + i, 9 + 3 * i as usize)).collect();
    let params = |i: usize| seeded(20, 7 + i as u64);
    let want = prompts
        .iter()
        .enumerate()
        .map(|(i, p)| s.alone(p, &params(i)))
        .collect::<Result<Vec<_>>>()?;
    let reqs: Vec<_> = prompts
        .iter()
        .enumerate()
        .map(|(i, p)| (format!("r{i}"), p.clone(), params(i)))
        .collect();
    // 56 tokens of cache for four sequences of up to 38 tokens.
    let mut e = s.engine(56, 64)?;
    let got = s.run(&mut e, &reqs)?;
    let group = format!("4 seeded requests, 56-token pool, bs {}", s.block_size);
    let mut pre = same("preempted = uninterrupted", s, &group, &want, &got);
    if e.preemptions == 0 {
        pre = pre.fail("the small pool did not force a preemption");
    }
    // The same seeded requests in a roomy engine, all batched together.
    let mut e = s.engine(512, 64)?;
    let got = s.run(&mut e, &reqs)?;
    let seeds = same(
        "seeded = reproducible",
        s,
        "4 seeded requests batched vs alone",
        &want,
        &got,
    );
    Ok(vec![pre, seeds])
}
