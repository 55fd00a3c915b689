//! Generation for one sequence: chunked prefill, then one token per step, with
//! the sequence's KV blocks laid out 0, 1, 2, ... (the engine's block manager
//! takes over when there are many sequences).

use super::runner::{Runner, StepBatch};
use super::sampler::{sample_token, SamplingParams};
use crate::{Error, Result};
use std::time::{Duration, Instant};

#[derive(Clone, Debug)]
pub struct GenerateOptions {
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    /// Tokens that end generation (not emitted).
    pub stop_ids: Vec<u32>,
    /// Longest prompt piece run in one step; bounds activation memory.
    pub prefill_chunk: usize,
    /// The LoRA slot every token uses (the model must have slots), or none.
    pub lora_slot: Option<usize>,
}

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct GenerateStats {
    pub prompt_tokens: usize,
    pub generated_tokens: usize,
    pub prefill_time: Duration,
    pub decode_time: Duration,
    /// Why generation ended: `stop` (a stop token) or `length`.
    pub finish_reason: String,
}

impl GenerateStats {
    pub fn prefill_tokens_per_s(&self) -> f64 {
        self.prompt_tokens as f64 / self.prefill_time.as_secs_f64().max(1e-9)
    }
    /// Decode rate over the steps after the first generated token.
    pub fn decode_tokens_per_s(&self) -> f64 {
        (self.generated_tokens.saturating_sub(1)) as f64 / self.decode_time.as_secs_f64().max(1e-9)
    }
}

/// Generates after `prompt`, calling `on_token` with each new token; it returns
/// `false` to stop early.
pub fn generate(
    runner: &mut Runner,
    prompt: &[u32],
    opts: &GenerateOptions,
    mut on_token: impl FnMut(u32) -> Result<bool>,
) -> Result<GenerateStats> {
    opts.sampling.validate_params()?;
    if prompt.is_empty() {
        return Err(Error::Request("the prompt is empty".into()));
    }
    let bs = runner.kv.shape.block_size;
    let capacity = runner.kv.shape.num_blocks * bs;
    let max_ctx = runner.model.config.max_position_embeddings.min(capacity);
    if prompt.len() + opts.max_tokens > max_ctx {
        return Err(Error::Request(format!(
            "prompt ({} tokens) + max_tokens ({}) exceeds the context of {max_ctx} tokens",
            prompt.len(),
            opts.max_tokens
        )));
    }
    let table = |len: usize| -> Vec<u32> { (0..len.div_ceil(bs) as u32).collect() };
    let lora = |n: usize| -> Vec<i32> { opts.lora_slot.map_or(vec![], |s| vec![s as i32; n]) };
    let mut stats = GenerateStats {
        prompt_tokens: prompt.len(),
        finish_reason: "length".into(),
        ..Default::default()
    };

    // Prefill in chunks; the last chunk's logits pick the first token.
    let start = Instant::now();
    let mut done = 0;
    let mut logits = None;
    while done < prompt.len() {
        let n = opts.prefill_chunk.max(1).min(prompt.len() - done);
        let positions: Vec<u32> = (done as u32..(done + n) as u32).collect();
        let batch = StepBatch {
            tokens: prompt[done..done + n].to_vec(),
            slots: positions.clone(),
            positions,
            query_start_loc: vec![0, n as u32],
            seq_lens: vec![(done + n) as u32],
            block_tables: vec![table(done + n)],
            all_logits: false,
            lora_slots: lora(n),
        };
        logits = Some(runner.step(&batch)?);
        done += n;
    }
    stats.prefill_time = start.elapsed();

    let mut logits = logits.ok_or_else(|| Error::invalid("no prefill step ran"))?;
    let mut output: Vec<u32> = Vec::with_capacity(opts.max_tokens);
    for len in prompt.len()..prompt.len() + opts.max_tokens {
        let mut row = match logits.data {
            crate::HostData::F32(v) => v,
            _ => logits.to_f32_vec(),
        };
        let p = &opts.sampling;
        let next = sample_token(&mut row, p, prompt, &output, &[], p.seed, len as u64).token;
        if opts.stop_ids.contains(&next) {
            stats.finish_reason = "stop".into();
            break;
        }
        stats.generated_tokens += 1;
        output.push(next);
        if !on_token(next)? || stats.generated_tokens == opts.max_tokens {
            break;
        }
        // The decode rate is timed over the steps after the first generated token.
        let t = Instant::now();
        let batch = StepBatch {
            tokens: vec![next],
            positions: vec![len as u32],
            slots: vec![len as u32],
            query_start_loc: vec![0, 1],
            seq_lens: vec![(len + 1) as u32],
            block_tables: vec![table(len + 1)],
            all_logits: false,
            lora_slots: lora(1),
        };
        logits = runner.step(&batch)?;
        stats.decode_time += t.elapsed();
    }
    Ok(stats)
}
