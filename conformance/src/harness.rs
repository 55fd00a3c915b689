//! Small drivers the models and engine layers share: a fixture model, a
//! runner on a device, prompt logits in one step, greedy decoding, an engine
//! run to its end.

use std::collections::HashMap;
use std::sync::Arc;
use tessera_core::engine::{
    generate, DeviceModel, Engine, FinishReason, GenerateOptions, KvCache, Runner, SamplingParams,
    StepBatch,
};
use tessera_core::hal::{open_device, Capabilities, Device};
use tessera_core::model::llama::KvShape;
use tessera_core::model::{self, ModelSource};
use tessera_core::{DType, Error, Result};

/// A tiny model of `fixtures/tiny` by name (`qwen2_bias`, `llama_gqa_rope3`, ...).
pub fn tiny_fixture(name: &str) -> Result<ModelSource> {
    let dir = crate::golden::fixtures_dir().join("tiny").join(name);
    let path = dir
        .to_str()
        .ok_or_else(|| Error::invalid("fixture path is not UTF-8"))?;
    model::open(path)
}

/// Steps `e` until every request is done; tokens by request id. A request
/// that ends with an error, broken block accounting, or blocks still held
/// at the end are errors.
pub fn run_to_end(e: &mut Engine) -> Result<HashMap<String, Vec<u32>>> {
    let mut out: HashMap<String, Vec<u32>> = HashMap::new();
    let mut steps = 0;
    while e.has_work() {
        steps += 1;
        if steps > 100_000 {
            return Err(Error::invalid("the engine did not finish in 100000 steps"));
        }
        for o in e.step()? {
            if let Some(FinishReason::Error(m)) = &o.finish_reason {
                return Err(Error::invalid(format!(
                    "request {} failed: {m}",
                    o.request_id
                )));
            }
            out.entry(o.request_id.clone())
                .or_default()
                .extend(&o.token_ids);
        }
        e.check_blocks()
            .map_err(|m| Error::invalid(format!("block accounting: {m}")))?;
    }
    if e.block_stats().used != 0 {
        return Err(Error::invalid(
            "blocks still held after every request finished",
        ));
    }
    Ok(out)
}

/// Loads `source` on `dev` with room for `context` tokens.
pub fn runner_on(
    dev: &Arc<dyn Device>,
    source: &ModelSource,
    dtype: DType,
    context: usize,
    block_size: usize,
) -> Result<Runner> {
    let model = DeviceModel::load(dev.clone(), source, dtype)?;
    let shape = KvShape {
        num_blocks: context.div_ceil(block_size),
        block_size,
    };
    let kv = KvCache::new(dev.as_ref(), &source.config, model.dtypes.kv, shape)?;
    Ok(Runner::new(model, kv))
}

/// `runner_on` a device opened by name (`cpu`, `reference`, ...).
pub fn runner(
    source: &ModelSource,
    device: &str,
    dtype: DType,
    context: usize,
    block_size: usize,
) -> Result<Runner> {
    runner_on(
        &open_device(device, None)?,
        source,
        dtype,
        context,
        block_size,
    )
}

/// The block size the device takes closest to `want`.
pub fn block_size(caps: &Capabilities, want: usize) -> usize {
    caps.block_sizes
        .iter()
        .copied()
        .min_by_key(|b| (b.abs_diff(want), *b))
        .unwrap_or(want)
}

/// Logits at every position of `prompt`, run as one prefill step.
pub fn prompt_logits(runner: &mut Runner, prompt: &[u32]) -> Result<Vec<f32>> {
    let bs = runner.kv.shape.block_size;
    let n = prompt.len();
    let positions: Vec<u32> = (0..n as u32).collect();
    let batch = StepBatch {
        tokens: prompt.to_vec(),
        slots: positions.clone(),
        positions,
        query_start_loc: vec![0, n as u32],
        seq_lens: vec![n as u32],
        block_tables: vec![(0..n.div_ceil(bs) as u32).collect()],
        all_logits: true,
        lora_slots: vec![],
    };
    Ok(runner.step(&batch)?.to_f32_vec())
}

/// `steps` greedy tokens after `prompt`, never stopping at EOS.
pub fn greedy(runner: &mut Runner, prompt: &[u32], steps: usize) -> Result<Vec<u32>> {
    greedy_in_slot(runner, prompt, steps, None)
}

/// `greedy` with every token in LoRA slot `slot` (the model must have slots).
pub fn greedy_in_slot(
    runner: &mut Runner,
    prompt: &[u32],
    steps: usize,
    slot: Option<usize>,
) -> Result<Vec<u32>> {
    let opts = GenerateOptions {
        max_tokens: steps,
        sampling: SamplingParams::default(),
        stop_ids: vec![],
        prefill_chunk: 512,
        lora_slot: slot,
    };
    let mut out = vec![];
    generate(runner, prompt, &opts, |id| {
        out.push(id);
        Ok(true)
    })?;
    Ok(out)
}
