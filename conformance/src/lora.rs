//! LoRA against PEFT (models layer): the tiny Llama with PEFT adapters `a`
//! (r 8, q/v) and `b` (r 4, rsLoRA, all seven projections) in two slots must
//! give transformers + peft's logits for each adapter (and so the merged
//! model's), the base model's where a token has no slot, the same in one
//! step that mixes base, `a` and `b`, and PEFT's greedy tokens through each slot (fixtures: `oracle/make_lora_fixtures.py`).

use crate::golden::{fixtures_dir, worst_row_nmse, Golden};
use crate::harness::{block_size, greedy_in_slot, tiny_fixture};
use crate::report::{Check, Layer};
use crate::thresholds::model_logits_limit;
use std::sync::Arc;
use tessera_core::engine::{DeviceModel, KvCache, Runner, StepBatch};
use tessera_core::hal::Device;
use tessera_core::model::llama::{KvShape, LoraShape};
use tessera_core::model::lora::load_adapter;
use tessera_core::{DType, Error, Result};

const GROUP: &str = "llama_gqa_rope3 + PEFT a, b";

/// Whether the device can run the LoRA ops (compiling backends lower them).
pub fn supported(dev: &dyn Device) -> bool {
    dev.kernels().is_none_or(|k| {
        let native = k.native_optional_ops();
        native.contains(&"lora_shrink") && native.contains(&"lora_expand")
    })
}

pub fn check(dev: &Arc<dyn Device>, dtype: DType) -> Vec<Check> {
    run(dev, dtype).unwrap_or_else(|e| {
        vec![Check::verdict(
            Layer::Models,
            "peft logits",
            dtype.name(),
            GROUP,
            false,
            format!("error: {e}"),
        )]
    })
}

fn run(dev: &Arc<dyn Device>, dtype: DType) -> Result<Vec<Check>> {
    let dir = fixtures_dir();
    let src = tiny_fixture("llama_gqa_rope3")?;
    let cfg = src.config.clone();
    let golden = Golden::load(&dir.join("lora/golden.safetensors"))?;
    let adapters = [
        load_adapter("a", &dir.join("lora/a"), &cfg, 64)?,
        load_adapter("b", &dir.join("lora/b"), &cfg, 64)?,
    ];
    let mut m = DeviceModel::load(dev.clone(), &src, dtype)?;
    m.enable_lora(LoraShape { slots: 2, rank: 8 })?;
    let bs = block_size(&dev.capabilities(), 16);
    let kv = KvCache::new(
        dev.as_ref(),
        &cfg,
        m.dtypes.kv,
        KvShape {
            num_blocks: 64usize.div_ceil(bs) * 4,
            block_size: bs,
        },
    )?;
    let mut runner = Runner::new(m, kv);
    let vocab = cfg.vocab_size;
    let limit = model_logits_limit(dtype);
    let mut rows = vec![];
    let prompts = [golden.ids("p0.input_ids")?, golden.ids("p1.input_ids")?];
    let base = golden.floats("p0.logits.base")?;
    // Slots are written after steps are compiled, as a server swaps adapters:
    // an empty slot is the base model, before and after it held an adapter.
    let empty = step(&mut runner, &[(&prompts[0], 0)], bs)?;
    rows.push(measured(
        "empty slot",
        dtype,
        &worst_row_nmse(base, &empty, vocab),
        limit,
        "p0",
    ));
    for (slot, adapter) in adapters.iter().enumerate() {
        runner.model.load_lora_slot(slot, adapter)?;
    }
    // Each prompt alone with each slot; then one step with three sequences.
    for (p, prompt) in prompts.iter().enumerate() {
        for (slot, key) in [(-1, "base"), (0, "a"), (1, "b")] {
            let logits = step(&mut runner, &[(prompt, slot)], bs)?;
            let want = golden.floats(&format!("p{p}.logits.{key}"))?;
            let (row, err) = worst_row_nmse(want, &logits, vocab);
            rows.push(
                Check::measured(
                    Layer::Models,
                    "peft logits",
                    dtype.name(),
                    GROUP,
                    err,
                    limit,
                )
                .note(format!(
                    "p{p} {key}: worst of {} positions at {row}",
                    prompt.len()
                )),
            );
            if slot >= 0 {
                let merged = golden.floats(&format!("p{p}.logits.{key}_merged"))?;
                let (_, err) = worst_row_nmse(merged, &logits, vocab);
                rows.push(
                    Check::measured(
                        Layer::Models,
                        "peft merged logits",
                        dtype.name(),
                        GROUP,
                        err,
                        limit,
                    )
                    .note(format!("p{p} {key}")),
                );
            }
        }
    }
    let mixed = [(&prompts[0], -1), (&prompts[0], 0), (&prompts[1], 1)];
    let logits = step(&mut runner, &mixed, bs)?;
    let mut at = 0;
    for (p, (prompt, key)) in [
        (0, (&prompts[0], "base")),
        (0, (&prompts[0], "a")),
        (1, (&prompts[1], "b")),
    ] {
        let n = prompt.len() * vocab;
        let got = logits
            .get(at..at + n)
            .ok_or_else(|| Error::invalid("the mixed step returned too few rows"))?;
        let want = golden.floats(&format!("p{p}.logits.{key}"))?;
        let (_, err) = worst_row_nmse(want, got, vocab);
        rows.push(
            Check::measured(
                Layer::Models,
                "peft mixed batch",
                dtype.name(),
                GROUP,
                err,
                limit,
            )
            .note(format!("p{p} {key} beside the others")),
        );
        at += n;
    }
    // Greedy decoding through each slot (f32: the golden tokens are f32's).
    if dtype == DType::F32 {
        for (slot, key) in [(None, "base"), (Some(0), "a"), (Some(1), "b")] {
            let want = golden.ids(&format!("p0.greedy.{key}"))?;
            let got = greedy_in_slot(&mut runner, &prompts[0], want.len(), slot)?;
            let first = want.iter().zip(&got).position(|(w, g)| w != g);
            let ok = first.is_none() && got.len() == want.len();
            let detail = match first {
                None => format!("p0 {key}: {} tokens identical", got.len()),
                Some(i) => format!("p0 {key}: token {i} is {} instead of {}", got[i], want[i]),
            };
            rows.push(Check::verdict(
                Layer::Models,
                "peft greedy tokens",
                dtype.name(),
                GROUP,
                ok,
                detail,
            ));
        }
    }
    runner.model.clear_lora_slot(0)?;
    let cleared = step(&mut runner, &[(&prompts[0], 0)], bs)?;
    rows.push(measured(
        "cleared slot",
        dtype,
        &worst_row_nmse(base, &cleared, vocab),
        limit,
        "p0",
    ));
    Ok(rows)
}

fn measured(what: &str, dtype: DType, (row, err): &(usize, f64), limit: f64, note: &str) -> Check {
    Check::measured(
        Layer::Models,
        format!("peft {what}"),
        dtype.name(),
        GROUP,
        *err,
        limit,
    )
    .note(format!(
        "{note}: worst position {row}, against the base model"
    ))
}

/// One prefill step of `seqs` (prompt, LoRA slot), each in blocks of its own;
/// the logits of every token, sequence after sequence.
fn step(runner: &mut Runner, seqs: &[(&Vec<u32>, i32)], bs: usize) -> Result<Vec<f32>> {
    let mut b = StepBatch {
        query_start_loc: vec![0],
        all_logits: true,
        ..Default::default()
    };
    let mut next_block = 0u32;
    for (prompt, slot) in seqs {
        let n = prompt.len();
        let blocks: Vec<u32> = (next_block..next_block + n.div_ceil(bs) as u32).collect();
        next_block += blocks.len() as u32;
        for (pos, &tok) in prompt.iter().enumerate() {
            b.tokens.push(tok);
            b.positions.push(pos as u32);
            b.slots
                .push(blocks[pos / bs] * bs as u32 + (pos % bs) as u32);
            b.lora_slots.push(*slot);
        }
        b.query_start_loc.push(b.tokens.len() as u32);
        b.seq_lens.push(n as u32);
        b.block_tables.push(blocks);
    }
    Ok(runner.step(&b)?.to_f32_vec())
}
