//! The models layer: whole forward passes against golden outputs of Hugging
//! Face transformers. Tiny random models (GQA with llama3 rope, qkv bias, tied
//! embeddings, sliding window) in every weight dtype the backend claims; the
//! default model (SmolLM2-135M, from its GGUF) in f32, or the backend's first
//! weight dtype. Plus two invariants of the paged cache: the block size and a
//! ragged mixed batch never change the logits.

use crate::golden::{fixtures_dir, nmse, worst_row_nmse, Golden};
use crate::harness::{block_size, greedy, prompt_logits, runner_on};
use crate::report::{Check, Layer};
use crate::thresholds::model_logits_limit;
use std::sync::Arc;
use tessera_core::engine::StepBatch;
use tessera_core::hal::Device;
use tessera_core::model::{self, default_model_path, ModelSource};
use tessera_core::{DType, Error, Result};

pub const TINY: &[&str] = &[
    "llama_gqa_rope3",
    "qwen2_bias",
    "smollm_tied",
    "mistral_sliding",
];

/// NMSE allowed between two runs of the same backend that only batch or page
/// differently: summation order may change, nothing else.
fn invariance_limit(dtype: DType) -> f64 {
    if dtype == DType::F32 {
        1e-9
    } else {
        1e-5
    }
}

/// The weight dtype whose results are compared token for token (f32 where
/// the backend takes it).
pub(crate) fn main_dtype(dev: &dyn Device) -> DType {
    let caps = dev.capabilities();
    if caps.weight_dtypes.contains(&DType::F32) {
        DType::F32
    } else {
        caps.weight_dtypes.first().copied().unwrap_or(DType::F32)
    }
}

pub fn check(dev: &Arc<dyn Device>) -> Vec<Check> {
    let mut out = check_tiny(dev);
    let main = main_dtype(dev.as_ref());
    out.extend(result_rows(
        default_model(dev, main),
        "transformers logits",
        main,
        "default model",
    ));
    out
}

/// Everything but the default model: the tiny fixtures, LoRA against PEFT
/// (where the device runs the LoRA ops) and the paging invariants (what a
/// slow device, such as a kernel emulation, can afford).
pub fn check_tiny(dev: &Arc<dyn Device>) -> Vec<Check> {
    let mut out = vec![];
    if crate::lora::supported(dev.as_ref()) {
        out.extend(crate::lora::check(dev, main_dtype(dev.as_ref())));
    }
    let caps = dev.capabilities();
    let main = main_dtype(dev.as_ref());
    for &dtype in &caps.weight_dtypes {
        for name in TINY {
            out.extend(result_rows(
                tiny(dev, name, dtype, dtype == main),
                "transformers logits",
                dtype,
                name,
            ));
        }
    }
    out.extend(result_rows(
        block_size_invariance(dev, main),
        "block size invariance",
        main,
        "llama_gqa_rope3",
    ));
    out.extend(result_rows(
        ragged_batch(dev, main),
        "ragged batch = alone",
        main,
        "qwen2_bias",
    ));
    out
}

/// An error while checking is a failed row, named after what was checked.
fn result_rows(r: Result<Vec<Check>>, name: &str, dtype: DType, group: &str) -> Vec<Check> {
    r.unwrap_or_else(|e| {
        vec![Check::verdict(
            Layer::Models,
            name,
            dtype.name(),
            group,
            false,
            format!("error: {e}"),
        )]
    })
}

fn open_fixture(name: &str) -> Result<(ModelSource, Golden)> {
    let dir = fixtures_dir().join("tiny").join(name);
    let golden = Golden::load(&dir.join("golden.safetensors"))?;
    let path = dir
        .to_str()
        .ok_or_else(|| Error::invalid("fixture path is not UTF-8"))?;
    Ok((model::open(path)?, golden))
}

/// Logits at every prompt position, then greedy tokens (compared only at the
/// dtype the golden outputs were made in: rounding the weights makes another model).
fn tiny(dev: &Arc<dyn Device>, name: &str, dtype: DType, tokens: bool) -> Result<Vec<Check>> {
    let (source, golden) = open_fixture(name)?;
    let vocab = source.config.vocab_size;
    let prompt = golden.ids("input_ids")?;
    let want_greedy = golden.ids("greedy")?;
    let bs = block_size(&dev.capabilities(), 16);
    let mut r = runner_on(
        dev,
        &source,
        dtype,
        prompt.len() + want_greedy.len() + 1,
        bs,
    )?;
    let logits = prompt_logits(&mut r, &prompt)?;
    let (row, err) = worst_row_nmse(golden.floats("logits")?, &logits, vocab);
    let mut rows = vec![Check::measured(
        Layer::Models,
        "transformers logits",
        dtype.name(),
        name,
        err,
        model_logits_limit(dtype),
    )
    .note(format!("worst of {} positions at {row}", prompt.len()))];
    if tokens {
        let got = greedy(&mut r, &prompt, want_greedy.len())?;
        rows.push(tokens_row(name, dtype, &want_greedy, &got));
    }
    Ok(rows)
}

fn tokens_row(group: &str, dtype: DType, want: &[u32], got: &[u32]) -> Check {
    let first = want.iter().zip(got).position(|(a, b)| a != b);
    let c = Check::measured(
        Layer::Models,
        "transformers greedy tokens",
        dtype.name(),
        group,
        first.map_or(0.0, |i| (want.len() - i) as f64),
        0.0,
    );
    match first {
        None if want.len() == got.len() => c.note(format!("{} tokens identical", want.len())),
        None => c.fail(format!("{} tokens instead of {}", got.len(), want.len())),
        Some(i) => c.fail(format!(
            "diverges at token {i}: {} instead of {}",
            got[i], want[i]
        )),
    }
}

fn block_size_invariance(dev: &Arc<dyn Device>, dtype: DType) -> Result<Vec<Check>> {
    let caps = dev.capabilities();
    let (small, large) = (block_size(&caps, 8), block_size(&caps, 32));
    let name = "block size invariance";
    if small == large {
        return Ok(vec![Check::verdict(
            Layer::Models,
            name,
            dtype.name(),
            "llama_gqa_rope3",
            true,
            format!("one block size ({small})"),
        )]);
    }
    let (source, golden) = open_fixture("llama_gqa_rope3")?;
    let prompt = golden.ids("input_ids")?;
    let mut a = runner_on(dev, &source, dtype, 64, small)?;
    let mut b = runner_on(dev, &source, dtype, 64, large)?;
    let (la, lb) = (
        prompt_logits(&mut a, &prompt)?,
        prompt_logits(&mut b, &prompt)?,
    );
    let (_, err) = worst_row_nmse(&la, &lb, source.config.vocab_size);
    Ok(vec![Check::measured(
        Layer::Models,
        name,
        dtype.name(),
        format!("llama_gqa_rope3 bs {small} vs {large}"),
        err,
        invariance_limit(dtype),
    )])
}

/// One ragged step mixing a decode (sequence A: its prompt cached, one new
/// token) and a prefill (sequence B, its blocks scattered elsewhere in the
/// cache) gives each sequence the logits it gets alone.
fn ragged_batch(dev: &Arc<dyn Device>, dtype: DType) -> Result<Vec<Check>> {
    let (source, golden) = open_fixture("qwen2_bias")?;
    let vocab = source.config.vocab_size;
    let a: Vec<u32> = golden.ids("input_ids")?;
    let next_a = golden.ids("greedy")?.first().copied().unwrap_or(1);
    let b: Vec<u32> = a
        .iter()
        .rev()
        .take(7)
        .map(|&t| (t * 7 + 3) % vocab as u32)
        .collect();
    let bs = block_size(&dev.capabilities(), 4);
    let context = 4 * (a.len() + b.len() + bs);

    let mut r = runner_on(dev, &source, dtype, context, bs)?;
    let mut a_full = a.clone();
    a_full.push(next_a);
    let alone_a = prompt_logits(&mut r, &a_full)?;
    let alone_a = &alone_a[(a_full.len() - 1) * vocab..];
    let alone_b = prompt_logits(&mut r, &b)?;
    let alone_b = &alone_b[(b.len() - 1) * vocab..];

    let mut r = runner_on(dev, &source, dtype, context, bs)?;
    let blocks = r.kv.shape.num_blocks as u32;
    let table_a: Vec<u32> = (0..a_full.len().div_ceil(bs) as u32).collect();
    // B's blocks at the far end of the cache, in reverse order.
    let table_b: Vec<u32> = (0..b.len().div_ceil(bs) as u32)
        .map(|i| blocks - 1 - i)
        .collect();
    let slot = |table: &[u32], pos: usize| table[pos / bs] * bs as u32 + (pos % bs) as u32;
    r.step(&StepBatch {
        tokens: a.clone(),
        positions: (0..a.len() as u32).collect(),
        slots: (0..a.len()).map(|p| slot(&table_a, p)).collect(),
        query_start_loc: vec![0, a.len() as u32],
        seq_lens: vec![a.len() as u32],
        block_tables: vec![table_a.clone()],
        all_logits: false,
        lora_slots: vec![],
    })?;
    let mut tokens = vec![next_a];
    tokens.extend(&b);
    let mut positions = vec![a.len() as u32];
    positions.extend(0..b.len() as u32);
    let mut slots = vec![slot(&table_a, a.len())];
    slots.extend((0..b.len()).map(|p| slot(&table_b, p)));
    let together = r
        .step(&StepBatch {
            tokens,
            positions,
            slots,
            query_start_loc: vec![0, 1, 1 + b.len() as u32],
            seq_lens: vec![a_full.len() as u32, b.len() as u32],
            block_tables: vec![table_a, table_b],
            all_logits: false,
            lora_slots: vec![],
        })?
        .to_f32_vec();
    let err = nmse(alone_a, &together[..vocab]).max(nmse(alone_b, &together[vocab..]));
    Ok(vec![Check::measured(
        Layer::Models,
        "ragged batch = alone",
        dtype.name(),
        format!("qwen2_bias decode+prefill bs {bs}"),
        err,
        invariance_limit(dtype),
    )])
}

/// The default model on the golden prompts: logits, then 64 greedy tokens.
fn default_model(dev: &Arc<dyn Device>, dtype: DType) -> Result<Vec<Check>> {
    let path = default_model_path();
    if !path.is_file() {
        // Machines the model does not travel to (the GPU check) skip this row;
        // CI always has it (scripts/test.sh fetches it).
        let mut skip = Check::verdict(
            Layer::Models,
            "transformers logits",
            dtype.name(),
            "default model",
            true,
            format!(
                "{} is not downloaded (scripts/fetch-default-model.sh)",
                path.display()
            ),
        );
        skip.status = crate::report::Status::Skip;
        return Ok(vec![skip]);
    }
    let src = model::open("default")?;
    let golden = Golden::load(&fixtures_dir().join("default/golden.safetensors"))?;
    let vocab = src.config.vocab_size;
    let mut r = runner_on(dev, &src, dtype, 128, block_size(&dev.capabilities(), 16))?;
    let mut rows = vec![];
    for name in ["p0", "p1", "p2"] {
        let group = format!("default model {name}");
        let prompt = golden.ids(&format!("{name}.input_ids"))?;
        let logits = prompt_logits(&mut r, &prompt)?;
        let (row, err) = worst_row_nmse(golden.floats(&format!("{name}.logits"))?, &logits, vocab);
        rows.push(
            Check::measured(
                Layer::Models,
                "transformers logits",
                dtype.name(),
                &group,
                err,
                model_logits_limit(dtype),
            )
            .note(format!("worst of {} positions at {row}", prompt.len())),
        );
        if dtype == DType::F32 {
            let want = golden.ids(&format!("{name}.greedy"))?;
            let got = greedy(&mut r, &prompt, want.len())?;
            rows.push(tokens_row(&group, dtype, &want, &got));
        }
    }
    Ok(rows)
}
