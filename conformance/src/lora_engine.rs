//! LoRA in the engine layer: what a request gets never depends on which other
//! adapters share its steps, which slot its adapter landed in, or how often
//! that adapter was evicted and written again. On the tiny Llama with PEFT's
//! adapters `a` and `b` and six random adapters, all read from PEFT folders.
//!
//! * mixed batch = alone: base, `a` and `b` requests together (2 slots) give
//!   each request its tokens from a fresh engine serving it alone; `a` then
//!   the base model on the same prompt shows the prefix cache keeps adapters
//!   apart.
//! * evicted and reloaded = fresh: with one slot and one host copy, `a`, `b`,
//!   `a` again: the second `a` was written back from disk and matches the first.
//! * 8 adapters on 2 slots: sixteen requests over eight adapters plus the base
//!   model, in a small step budget; every one completes with its alone tokens.
//! * rank growth: a rank-16 adapter widens slots laid out for rank 8 (on
//!   devices that grow them); `a`, already in a slot, answers as before.

use crate::golden::fixtures_dir;
use crate::harness::{block_size, run_to_end, runner_on, tiny_fixture};
use crate::invariants::{greedy, prompt};
use crate::models::main_dtype;
use crate::report::{Check, Layer};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use tessera_core::engine::{Engine, EngineConfig, LoraConfig, SamplingParams};
use tessera_core::hal::Device;
use tessera_core::model::lora::{random_adapter, save_adapter, Target};
use tessera_core::model::ModelSource;
use tessera_core::{DType, Error, Result};

const GROUP: &str = "llama_gqa_rope3 + LoRA";

/// (request id, prompt, adapter name or None for the base model).
type Request = (String, Vec<u32>, Option<String>);
type Outputs = HashMap<String, Vec<u32>>;

struct Setup {
    dev: Arc<dyn Device>,
    src: ModelSource,
    dtype: DType,
    block_size: usize,
    /// Adapter name -> PEFT folder.
    adapters: Vec<(String, PathBuf)>,
    /// Removed on drop.
    scratch: PathBuf,
}

impl Drop for Setup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.scratch);
    }
}

impl Setup {
    fn new(dev: &Arc<dyn Device>) -> Result<Setup> {
        let caps = dev.capabilities();
        let dtype = main_dtype(dev.as_ref());
        let dir = fixtures_dir();
        let src = tiny_fixture("llama_gqa_rope3")?;
        let scratch = std::env::temp_dir().join(format!(
            "tessera-lora-engine-{}-{}",
            std::process::id(),
            dev.name()
        ));
        let mut adapters = vec![
            ("a".to_string(), dir.join("lora/a")),
            ("b".to_string(), dir.join("lora/b")),
        ];
        let targets: [&[Target]; 3] = [
            &[Target::Q, Target::K, Target::V, Target::O],
            &[Target::Gate, Target::Up, Target::Down],
            &Target::ALL,
        ];
        for i in 0..6u64 {
            let name = format!("r{i}");
            let rank = [2, 4, 8][i as usize % 3];
            let made = random_adapter(&name, &src.config, rank, targets[i as usize % 3], i);
            let folder = scratch.join(&name);
            save_adapter(&made, &folder)?;
            adapters.push((name, folder));
        }
        Ok(Setup {
            dev: dev.clone(),
            block_size: block_size(&caps, 4),
            src,
            dtype,
            adapters,
            scratch,
        })
    }

    /// An engine with every adapter registered from its folder.
    fn engine(&self, lora: LoraConfig, budget: usize) -> Result<Engine> {
        let r = runner_on(&self.dev, &self.src, self.dtype, 512, self.block_size)?;
        let cfg = EngineConfig {
            max_num_seqs: 8,
            max_num_batched_tokens: budget,
            max_model_len: 512,
            prefix_caching: true,
            lora: Some(lora),
        };
        let mut e = Engine::new(r, None, cfg)?;
        for (name, dir) in &self.adapters {
            e.load_lora(name, dir)?;
        }
        Ok(e)
    }

    /// Each request alone in a fresh engine.
    fn alone(&self, reqs: &[Request], params: &SamplingParams) -> Result<Outputs> {
        let mut out = Outputs::new();
        for r in reqs {
            let mut e = self.engine(slots(1, 1), 64)?;
            out.extend(run(&mut e, std::slice::from_ref(r), params)?);
        }
        Ok(out)
    }
}

fn slots(max_loras: usize, max_cpu_loras: usize) -> LoraConfig {
    LoraConfig {
        max_loras,
        max_lora_rank: 8,
        max_cpu_loras,
    }
}

fn rank_growth(s: &Setup) -> Result<Check> {
    let params = greedy(10);
    let wide = random_adapter("wide", &s.src.config, 16, &Target::ALL, 77);
    let folder = s.scratch.join("wide");
    save_adapter(&wide, &folder)?;
    let config = LoraConfig {
        max_loras: 2,
        max_lora_rank: 32,
        max_cpu_loras: 2,
    };
    let fresh = |r: &Request| -> Result<Outputs> {
        let mut e = s.engine(config, 64)?;
        e.load_lora("wide", &folder)?;
        run(&mut e, std::slice::from_ref(r), &params)
    };
    let a = request("a", 6, 13, Some("a"));
    let w = request("wide", 6, 13, Some("wide"));
    let mut want = fresh(&a)?;
    want.extend(fresh(&w)?);
    let mut e = s.engine(config, 64)?;
    e.load_lora("wide", &folder)?;
    let before = run(&mut e, std::slice::from_ref(&a), &params)?;
    let mut got = run(&mut e, std::slice::from_ref(&w), &params)?;
    got.extend(run(&mut e, std::slice::from_ref(&a), &params)?);
    let rank = e.runner.model.lora.map_or(0, |l| l.rank);
    let c = same(
        "lora rank growth = fresh",
        s.dtype,
        &want,
        &got,
        &format!("slots at rank {rank} after the rank-16 adapter"),
    );
    Ok(if before.get("a") != want.get("a") {
        c.fail("a differs before the growth")
    } else if rank < 16 {
        c.fail(format!("the slots stayed at rank {rank}"))
    } else {
        c
    })
}

/// Runs every request to its end; tokens by request id.
fn run(e: &mut Engine, reqs: &[Request], params: &SamplingParams) -> Result<Outputs> {
    for (id, p, lora) in reqs {
        e.add_request_with(id, p.clone(), params.clone(), 0, lora.as_deref())?;
    }
    run_to_end(e)
}

fn request(id: &str, seed: u64, len: usize, lora: Option<&str>) -> Request {
    (id.to_string(), prompt(seed, len), lora.map(str::to_string))
}

/// Rows comparing each request's tokens with `want`.
fn same(name: &str, dtype: DType, want: &Outputs, got: &Outputs, note: &str) -> Check {
    let mut wrong: Vec<&String> = want
        .iter()
        .filter(|(id, w)| got.get(*id) != Some(w))
        .map(|(id, _)| id)
        .collect();
    wrong.sort();
    let c = Check::measured(
        Layer::Engine,
        name,
        dtype.name(),
        GROUP,
        wrong.len() as f64,
        0.0,
    );
    if wrong.is_empty() {
        c.note(format!("{} requests identical; {note}", want.len()))
    } else {
        let ids: Vec<&str> = wrong.iter().map(|s| s.as_str()).collect();
        c.fail(format!("differ: {}", ids.join(", ")))
    }
}

/// An adapter that does not change the tokens would make the checks vacuous.
fn adapters_matter(want: &Outputs, base: &str, adapted: &[&str]) -> Result<()> {
    for id in adapted {
        if want.get(*id) == want.get(base) {
            return Err(Error::invalid(format!(
                "request {id} gives the base model's tokens: the adapter changes nothing"
            )));
        }
    }
    Ok(())
}

fn mixed_batch(s: &Setup) -> Result<Vec<Check>> {
    let params = greedy(12);
    let reqs = vec![
        request("base", 1, 9, None),
        request("a", 1, 9, Some("a")),
        request("b", 1, 9, Some("b")),
        request("b2", 2, 17, Some("b")),
        request("a2", 3, 5, Some("a")),
    ];
    let want = s.alone(&reqs, &params)?;
    adapters_matter(&want, "base", &["a", "b"])?;
    let mut e = s.engine(slots(2, 2), 64)?;
    let got = run(&mut e, &reqs, &params)?;
    let mut rows = vec![same(
        "lora mixed batch = alone",
        s.dtype,
        &want,
        &got,
        "base, a and b in the same steps",
    )];
    // `a` first, then the base model on the same prompt: a prefix hit across
    // adapters would hand the base request a's KV.
    let mut e = s.engine(slots(2, 2), 64)?;
    let mut got = run(&mut e, &reqs[1..2], &params)?;
    got.extend(run(&mut e, &reqs[..1], &params)?);
    let want: Outputs = want
        .into_iter()
        .filter(|(k, _)| k == "a" || k == "base")
        .collect();
    rows.push(same(
        "lora prefix cache per adapter",
        s.dtype,
        &want,
        &got,
        "a, then base on the same prompt",
    ));
    Ok(rows)
}

fn evict_reload(s: &Setup) -> Result<Check> {
    let params = greedy(10);
    let first = request("a", 4, 11, Some("a"));
    let want = s.alone(std::slice::from_ref(&first), &params)?;
    // One slot, one host copy: b evicts a from both, so a comes back from disk.
    let mut e = s.engine(slots(1, 1), 64)?;
    let mut got = run(&mut e, std::slice::from_ref(&first), &params)?;
    run(&mut e, &[request("b", 4, 11, Some("b"))], &params)?;
    let again = run(&mut e, std::slice::from_ref(&first), &params)?;
    let loads = e.lora_loads;
    let mut c = same(
        "lora evicted + reloaded = fresh",
        s.dtype,
        &want,
        &again,
        &format!("{loads} slot writes"),
    );
    if got.remove("a") != want.get("a").cloned() {
        c = c.fail("the first run of a differs from a alone");
    } else if loads < 3 {
        c = c.fail(format!(
            "expected a, b, a written into the one slot (3 writes), saw {loads}"
        ));
    }
    Ok(c)
}

fn many_adapters(s: &Setup) -> Result<Check> {
    let params = greedy(8);
    let mut reqs = vec![];
    for (i, (name, _)) in s.adapters.iter().enumerate() {
        for k in 0..2u64 {
            let seed = 10 + 2 * i as u64 + k;
            reqs.push(request(
                &format!("{name}-{k}"),
                seed,
                3 + (seed as usize * 5) % 13,
                Some(name),
            ));
        }
    }
    reqs.push(request("base-0", 40, 7, None));
    reqs.push(request("base-1", 41, 12, None));
    let want = s.alone(&reqs, &params)?;
    let mut e = s.engine(slots(2, 3), 24)?;
    let got = run(&mut e, &reqs, &params)?;
    let missing = reqs.iter().filter(|(id, ..)| !got.contains_key(id)).count();
    let c = same(
        "lora 8 adapters on 2 slots",
        s.dtype,
        &want,
        &got,
        &format!("{} slot writes", e.lora_loads),
    );
    Ok(if missing > 0 {
        c.fail(format!("{missing} requests never produced a token"))
    } else {
        c
    })
}

pub fn check(dev: &Arc<dyn Device>) -> Vec<Check> {
    let setup = match Setup::new(dev) {
        Ok(s) => s,
        Err(e) => return vec![failed("lora setup", DType::F32, e)],
    };
    let mut rows = vec![];
    match mixed_batch(&setup) {
        Ok(r) => rows.extend(r),
        Err(e) => rows.push(failed("lora mixed batch = alone", setup.dtype, e)),
    }
    match evict_reload(&setup) {
        Ok(r) => rows.push(r),
        Err(e) => rows.push(failed("lora evicted + reloaded = fresh", setup.dtype, e)),
    }
    match many_adapters(&setup) {
        Ok(r) => rows.push(r),
        Err(e) => rows.push(failed("lora 8 adapters on 2 slots", setup.dtype, e)),
    }
    match rank_growth(&setup) {
        Ok(r) => rows.push(r),
        Err(e) => rows.push(failed("lora rank growth = fresh", setup.dtype, e)),
    }
    rows
}

fn failed(name: &str, dtype: DType, e: Error) -> Check {
    Check::verdict(
        Layer::Engine,
        name,
        dtype.name(),
        GROUP,
        false,
        format!("error: {e}"),
    )
}
