//! The engine: requests in, streamed deltas out. `step()` schedules, runs the
//! model once over the ragged batch, and turns logits into tokens and text.

use super::block_manager::{BlockManager, PrefixRoot};
use super::lora::{LoraConfig, LoraManager, LoraSlots};
use super::runner::{Runner, StepBatch};
use super::sampler::{sample_token, SamplingParams};
use super::scheduler::{Scheduler, SchedulerConfig, SeqId};
use super::sequence::{FinishReason, RequestId, SeqStatus, Sequence};
use super::stop::StopMatcher;
use crate::model::tokenizer::{StreamDecoder, Tokenizer};
use crate::{Error, Result};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Clone, Debug)]
pub struct EngineConfig {
    pub max_num_seqs: usize,
    pub max_num_batched_tokens: usize,
    /// Longest sequence (prompt + output) served; at most the model's context.
    pub max_model_len: usize,
    pub prefix_caching: bool,
    /// LoRA adapter slots and caches; None serves the base model only (and
    /// compiles steps without the LoRA ops).
    pub lora: Option<LoraConfig>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            max_num_seqs: 256,
            max_num_batched_tokens: 2048,
            max_model_len: 8192,
            prefix_caching: true,
            lora: None,
        }
    }
}

/// One token's log-probability and the most likely alternatives.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct TokenLogprob {
    pub token: u32,
    pub logprob: f32,
    pub top: Vec<(u32, f32)>,
}

/// What one step produced for one sample of a request.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct RequestOutput {
    pub request_id: RequestId,
    /// Which of the request's `n` samples.
    pub index: usize,
    /// Tokens added this step.
    pub token_ids: Vec<u32>,
    /// Text added this step (never splits a character or a stop string).
    pub text: String,
    pub logprobs: Vec<TokenLogprob>,
    pub finish_reason: Option<FinishReason>,
    pub prompt_tokens: usize,
    pub output_tokens: usize,
}

/// Time spent per part of the last steps, for `bench throughput`.
#[derive(Clone, Copy, Debug, Default)]
pub struct StepTimes {
    pub steps: u64,
    pub schedule: Duration,
    pub execute: Duration,
    pub postprocess: Duration,
}

struct RequestState {
    seqs: Vec<SeqId>,
    n: usize,
    /// Samples 1..n are forked from sample 0 once its prompt is computed.
    forked: bool,
    prompt_tokens: usize,
}

pub struct Engine {
    pub runner: Runner,
    pub config: EngineConfig,
    scheduler: Scheduler,
    tokenizer: Option<Arc<Tokenizer>>,
    eos_ids: Vec<u32>,
    requests: HashMap<RequestId, RequestState>,
    next_seq: SeqId,
    arrivals: u64,
    pub times: StepTimes,
    /// Sequences preempted (and later recomputed) so far.
    pub preemptions: u64,
    lora: Option<LoraManager>,
    /// Adapters written into device slots so far.
    pub lora_loads: u64,
}

impl Engine {
    pub fn new(
        mut runner: Runner,
        tokenizer: Option<Arc<Tokenizer>>,
        mut config: EngineConfig,
    ) -> Result<Self> {
        let shape = runner.kv.shape;
        config.max_model_len = config
            .max_model_len
            .min(runner.model.config.max_position_embeddings);
        if config.max_num_seqs == 0 || config.max_num_batched_tokens == 0 {
            return Err(Error::Request(
                "max_num_seqs and max_num_batched_tokens must be positive".into(),
            ));
        }
        let blocks = BlockManager::new(shape.num_blocks, shape.block_size, config.prefix_caching);
        let sched = SchedulerConfig {
            max_num_seqs: config.max_num_seqs,
            max_num_batched_tokens: config.max_num_batched_tokens,
        };
        let mut scheduler = Scheduler::new(sched, blocks);
        let lora = match config.lora {
            None => None,
            Some(lc) => {
                let manager = LoraManager::new(lc, &runner.model.config)?;
                let want = crate::model::llama::LoraShape {
                    slots: lc.max_loras,
                    rank: lc.max_lora_rank,
                };
                match runner.model.lora_capacity {
                    None => runner.model.enable_lora(want)?,
                    Some(have) if have != want => {
                        return Err(Error::invalid(format!(
                        "the model has {} LoRA slots of rank {}, the engine wants {} of rank {}",
                        have.slots, have.rank, want.slots, want.rank
                    )))
                    }
                    Some(_) => {}
                }
                scheduler.lora = Some(LoraSlots::new(lc.max_loras));
                Some(manager)
            }
        };
        let eos_ids = tokenizer
            .as_ref()
            .map(|t| t.eos.clone())
            .unwrap_or_else(|| runner.model.config.eos_token_ids.clone());

        Ok(Engine {
            runner,
            config,
            scheduler,
            tokenizer,
            eos_ids,
            requests: HashMap::new(),
            next_seq: 0,
            arrivals: 0,
            times: StepTimes::default(),
            preemptions: 0,
            lora,
            lora_loads: 0,
        })
    }

    fn lora_manager(&mut self) -> Result<&mut LoraManager> {
        self.lora.as_mut().ok_or_else(|| {
            Error::Request("this engine serves no LoRA adapters; start it with LoRA enabled".into())
        })
    }

    /// Serves the PEFT adapter in `dir` as `name` (read and checked now).
    pub fn load_lora(&mut self, name: &str, dir: &std::path::Path) -> Result<()> {
        self.lora_manager()?;
        let root = self.scheduler.blocks.new_root();
        self.lora_manager()?.register(name, dir, root).map(|_| ())
    }

    /// Serves an adapter made in memory as its `name`.
    pub fn add_lora(&mut self, adapter: crate::model::lora::LoraAdapter) -> Result<()> {
        self.lora_manager()?;
        let root = self.scheduler.blocks.new_root();
        self.lora_manager()?
            .register_adapter(adapter, root)
            .map(|_| ())
    }

    /// Stops serving `name`; requests already queued with it finish.
    pub fn unload_lora(&mut self, name: &str) -> Result<()> {
        let id = self.lora_manager()?.unregister(name)?;
        let in_use = self.scheduler.seqs.values().any(|s| s.lora == Some(id));
        if !in_use {
            if let Some(slots) = self.scheduler.lora.as_mut() {
                slots.evict(id);
            }
        }
        let seqs = &self.scheduler.seqs;
        if let Some(m) = self.lora.as_mut() {
            m.forget_unused(|a| seqs.values().any(|s| s.lora == Some(a)));
        }
        Ok(())
    }

    /// The adapters served now, by name.
    pub fn lora_names(&self) -> Vec<String> {
        self.lora
            .as_ref()
            .map(LoraManager::names)
            .unwrap_or_default()
    }

    /// The adapter in each device slot (tests and diagnostics).
    pub fn lora_slots(&self) -> Vec<Option<String>> {
        let (Some(slots), Some(m)) = (&self.scheduler.lora, &self.lora) else {
            return vec![];
        };
        (0..slots.len())
            .map(|s| slots.adapter_in(s).map(|a| m.name(a).to_string()))
            .collect()
    }

    pub fn tokenizer(&self) -> Option<&Arc<Tokenizer>> {
        self.tokenizer.as_ref()
    }
    pub fn has_work(&self) -> bool {
        self.scheduler.has_work()
    }
    pub fn num_requests(&self) -> usize {
        self.requests.len()
    }
    pub fn num_running(&self) -> usize {
        self.scheduler.num_running()
    }
    pub fn num_waiting(&self) -> usize {
        self.scheduler.num_waiting()
    }
    pub fn block_stats(&self) -> super::block_manager::BlockStats {
        self.scheduler.blocks.stats()
    }
    /// Internal consistency of the block accounting (tests).
    pub fn check_blocks(&self) -> std::result::Result<(), String> {
        self.scheduler.blocks.check()
    }

    /// Queues a request for the base model, or says why it can never be
    /// served. Nothing changes on error.
    pub fn add_request(
        &mut self,
        id: &str,
        prompt: Vec<u32>,
        params: SamplingParams,
        priority: i32,
    ) -> Result<()> {
        self.add_request_with(id, prompt, params, priority, None)
    }

    /// Queues a request that runs with the LoRA adapter named `lora` (None:
    /// the base model). Nothing changes on error.
    pub fn add_request_with(
        &mut self,
        id: &str,
        prompt: Vec<u32>,
        params: SamplingParams,
        priority: i32,
        lora: Option<&str>,
    ) -> Result<()> {
        let (adapter, prefix_root) = match lora {
            None => (None, PrefixRoot::BASE),
            Some(name) => {
                let m = self.lora_manager()?;
                let a = m.id(name).ok_or_else(|| {
                    Error::Request(format!("no LoRA adapter named {name:?} is loaded"))
                })?;
                (Some(a), m.root(a))
            }
        };
        if self.requests.contains_key(id) {
            return Err(Error::Request(format!(
                "request id {id:?} is already in use"
            )));
        }
        let vocab = self.runner.model.config.vocab_size;
        if prompt.is_empty() {
            return Err(Error::Request("the prompt is empty".into()));
        }
        if let Some(bad) = prompt.iter().find(|&&t| t as usize >= vocab) {
            return Err(Error::Request(format!(
                "prompt token id {bad} is outside the vocabulary of {vocab}"
            )));
        }
        params.validate(vocab, self.config.max_model_len)?;
        if !params.stop.is_empty() && self.tokenizer.is_none() {
            return Err(Error::Request(
                "stop strings need a model with a tokenizer".into(),
            ));
        }
        let max_len = self.config.max_model_len;
        if prompt.len() + params.max_tokens > max_len {
            return Err(Error::Request(format!(
                "prompt ({} tokens) + max_tokens ({}) is more than the {max_len} tokens this model serves",
                prompt.len(),
                params.max_tokens
            )));
        }
        let blocks = &self.scheduler.blocks;
        let need = blocks.blocks_for(prompt.len() + params.max_tokens)
            + (params.n - 1) * blocks.blocks_for(params.max_tokens + blocks.block_size());
        if need > blocks.num_blocks() {
            return Err(Error::Request(format!(
                "the request needs {need} KV blocks at its longest but the cache has {}; lower max_tokens or n",
                blocks.num_blocks()
            )));
        }
        let seq_id = self.new_seq_id();
        self.arrivals += 1;
        let params = Arc::new(params);
        let seq = Sequence {
            request_id: id.to_string(),
            index: 0,
            prompt_len: prompt.len(),
            tokens: prompt,
            num_computed: 0,
            block_table: vec![],
            status: SeqStatus::Waiting,
            seed: params.seed,
            priority,
            arrival: self.arrivals,
            decoder: StreamDecoder::new(),
            stop: StopMatcher::new(params.stop.clone()),
            params: params.clone(),
            lora: adapter,
            prefix_root,
        };
        let prompt_tokens = seq.prompt_len;
        self.scheduler.add(seq_id, seq);
        self.requests.insert(
            id.to_string(),
            RequestState {
                seqs: vec![seq_id],
                n: params.n,
                forked: params.n == 1,
                prompt_tokens,
            },
        );
        Ok(())
    }

    fn new_seq_id(&mut self) -> SeqId {
        self.next_seq += 1;
        self.next_seq
    }

    /// Stops a request at once and frees its blocks. Unknown ids are ignored
    /// (the request may just have finished).
    pub fn abort(&mut self, id: &str) -> Vec<RequestOutput> {
        let Some(state) = self.requests.remove(id) else {
            return vec![];
        };
        let mut out = vec![];
        for sid in state.seqs {
            if let Some(seq) = self.scheduler.remove(sid) {
                out.push(RequestOutput {
                    request_id: id.to_string(),
                    index: seq.index,
                    token_ids: vec![],
                    text: String::new(),
                    logprobs: vec![],
                    finish_reason: Some(FinishReason::Abort),
                    prompt_tokens: state.prompt_tokens,
                    output_tokens: seq.output().len(),
                });
            }
        }
        out
    }

    /// One engine step: schedule, execute, postprocess.
    pub fn step(&mut self) -> Result<Vec<RequestOutput>> {
        let t0 = Instant::now();
        let mut plan = self.scheduler.schedule();
        self.preemptions += plan.preempted.len() as u64;
        let mut outputs = self.write_lora_slots(&mut plan);
        let t1 = Instant::now();
        if plan.scheduled.is_empty() {
            self.times.schedule += t1 - t0;
            return Ok(outputs);
        }
        let result = self.runner.copy_blocks(&plan.copies).and_then(|_| {
            let batch = self.batch(&plan.scheduled);
            self.runner.step(&batch)
        });
        let t2 = Instant::now();
        outputs.extend(match result {
            Ok(logits) => {
                let mut data = match logits.data {
                    crate::HostData::F32(v) => v,
                    _ => logits.to_f32_vec(),
                };
                self.postprocess(&plan.scheduled, &mut data)
            }
            Err(e) => self.fail(&plan.scheduled, &e),
        });
        self.times.steps += 1;
        self.times.schedule += t1 - t0;
        self.times.execute += t2 - t1;
        self.times.postprocess += t2.elapsed();
        Ok(outputs)
    }

    /// Writes the adapters the scheduler placed into their slots. An adapter
    /// that cannot be read (its folder changed or vanished since it was
    /// checked) ends the requests that use it, with the reason, and leaves
    /// its slot empty; the rest of the step goes on.
    fn write_lora_slots(&mut self, plan: &mut super::scheduler::Step) -> Vec<RequestOutput> {
        let mut out = vec![];
        if plan.lora_loads.is_empty() {
            return out;
        }
        for (slot, adapter) in std::mem::take(&mut plan.lora_loads) {
            let Some(m) = self.lora.as_mut() else {
                break;
            };
            let runner = &mut self.runner;
            let written = m.weights(adapter).and_then(|w| {
                if runner.model.grow_lora_rank(w.rank)? {
                    runner.clear_executables();
                }
                runner.model.load_lora_slot(slot, &w)
            });
            if written.is_ok() {
                self.lora_loads += 1;
                continue;
            }
            let e = written.err().unwrap_or_else(|| Error::invalid("LoRA slot"));
            tracing::error!("LoRA adapter {} could not be written: {e}", m.name(adapter));
            if let Some(slots) = self.scheduler.lora.as_mut() {
                slots.evict(adapter);
            }
            let users: Vec<String> = self
                .scheduler
                .seqs
                .values()
                .filter(|s| s.lora == Some(adapter))
                .map(|s| s.request_id.clone())
                .collect();
            for rid in users {
                for mut o in self.abort(&rid) {
                    o.finish_reason = Some(FinishReason::Error(e.to_string()));
                    out.push(o);
                }
            }
        }
        let seqs = &self.scheduler.seqs;
        plan.scheduled.retain(|s| seqs.contains_key(&s.seq));
        out
    }

    fn batch(&self, scheduled: &[super::scheduler::Scheduled]) -> StepBatch {
        let bs = self.scheduler.blocks.block_size();
        let mut b = StepBatch {
            query_start_loc: vec![0],
            ..Default::default()
        };
        for s in scheduled {
            let Some(seq) = self.scheduler.seqs.get(&s.seq) else {
                continue;
            };
            let start = seq.num_computed;
            if let Some(slots) = &self.scheduler.lora {
                let slot = seq
                    .lora
                    .and_then(|a| slots.slot_of(a))
                    .map_or(-1, |x| x as i32);
                b.lora_slots.extend(std::iter::repeat_n(slot, s.num_tokens));
            }
            for pos in start..start + s.num_tokens {
                b.tokens.push(seq.tokens[pos]);
                b.positions.push(pos as u32);
                b.slots
                    .push(seq.block_table[pos / bs] * bs as u32 + (pos % bs) as u32);
            }
            b.query_start_loc.push(b.tokens.len() as u32);
            b.seq_lens.push((start + s.num_tokens) as u32);
            b.block_tables
                .push(seq.block_table[..(start + s.num_tokens).div_ceil(bs)].to_vec());
        }
        b
    }

    /// A failed step ends every request it carried with the error; the engine goes on.
    fn fail(&mut self, scheduled: &[super::scheduler::Scheduled], e: &Error) -> Vec<RequestOutput> {
        tracing::error!("step failed: {e}");
        let mut out = vec![];
        for s in scheduled {
            let Some(rid) = self
                .scheduler
                .seqs
                .get(&s.seq)
                .map(|q| q.request_id.clone())
            else {
                continue;
            };
            for mut o in self.abort(&rid) {
                o.finish_reason = Some(FinishReason::Error(e.to_string()));
                out.push(o);
            }
        }
        out
    }

    fn postprocess(
        &mut self,
        scheduled: &[super::scheduler::Scheduled],
        logits: &mut [f32],
    ) -> Vec<RequestOutput> {
        let vocab = self.runner.model.config.vocab_size;
        let mut out = vec![];
        for (row, s) in scheduled.iter().enumerate() {
            let Some(seq) = self.scheduler.seqs.get_mut(&s.seq) else {
                continue;
            };
            seq.num_computed += s.num_tokens;
            let computed = seq.num_computed;
            self.scheduler.blocks.cache_full_blocks_in(
                seq.prefix_root,
                &seq.block_table,
                &seq.tokens,
                computed,
            );
            if seq.pending() > 0 {
                continue; // a prompt chunk: no token yet
            }
            let row_logits = &mut logits[row * vocab..(row + 1) * vocab];
            let rid = seq.request_id.clone();
            let mut targets = vec![s.seq];
            if let Some(state) = self.requests.get_mut(&rid) {
                if !state.forked {
                    state.forked = true;
                    targets.extend(self.fork(s.seq, &rid));
                }
            }
            // Sampling edits its logits in place: forks get their own copy.
            let last = targets.len() - 1;
            for (i, sid) in targets.into_iter().enumerate() {
                let o = if i == last {
                    self.sample_and_emit(sid, row_logits)
                } else {
                    self.sample_and_emit(sid, &mut row_logits.to_vec())
                };
                out.extend(o);
            }
        }
        out
    }

    /// Samples 1..n of a request share sample 0's computed prompt blocks.
    fn fork(&mut self, parent: SeqId, rid: &str) -> Vec<SeqId> {
        let n = self.requests.get(rid).map(|s| s.n).unwrap_or(1);
        let mut ids = vec![];
        for index in 1..n {
            let Some(p) = self.scheduler.seqs.get(&parent) else {
                break;
            };
            let child = Sequence {
                request_id: p.request_id.clone(),
                index,
                params: p.params.clone(),
                prompt_len: p.prompt_len,
                tokens: p.tokens.clone(),
                num_computed: p.num_computed,
                block_table: self.scheduler.blocks.fork(&p.block_table),
                status: SeqStatus::Running,
                seed: super::sampler::choice_seed(p.seed, index),
                priority: p.priority,
                arrival: p.arrival,
                decoder: StreamDecoder::new(),
                stop: StopMatcher::new(p.params.stop.clone()),
                lora: p.lora,
                prefix_root: p.prefix_root,
            };
            let id = self.new_seq_id();
            self.scheduler.add_running(id, child);
            ids.push(id);
        }
        if let Some(state) = self.requests.get_mut(rid) {
            state.seqs.extend(&ids);
        }
        ids
    }

    fn sample_and_emit(&mut self, sid: SeqId, logits: &mut [f32]) -> Option<RequestOutput> {
        let eos = &self.eos_ids;
        let seq = self.scheduler.seqs.get_mut(&sid)?;
        let p = seq.params.clone();
        let position = seq.tokens.len() as u64;
        let picked = sample_token(
            logits,
            &p,
            seq.prompt(),
            seq.output(),
            eos,
            seq.seed,
            position,
        );
        let token = picked.token;
        let min_reached = seq.output().len() >= p.min_tokens;
        let is_stop_token = min_reached
            && (p.stop_token_ids.contains(&token) || (!p.ignore_eos && eos.contains(&token)));
        let mut finish = None;
        let mut text = String::new();
        let mut token_ids = vec![];
        if is_stop_token {
            finish = Some(FinishReason::Stop);
        } else {
            seq.tokens.push(token);
            token_ids.push(token);
            if let Some(tok) = &self.tokenizer {
                if let Ok(Some(piece)) = seq.decoder.push(tok, token) {
                    let (safe, stopped) = seq.stop.push(&piece);
                    text = safe;
                    if stopped {
                        finish = Some(FinishReason::Stop);
                    }
                }
            }
            if finish.is_none() && seq.output().len() >= p.max_tokens {
                finish = Some(FinishReason::Length);
            }
            if finish == Some(FinishReason::Length) {
                text.push_str(&seq.stop.flush());
            }
        }
        let logprobs = if p.logprobs.is_some() && !is_stop_token {
            vec![TokenLogprob {
                token,
                logprob: picked.logprob,
                top: picked.top_logprobs,
            }]
        } else {
            vec![]
        };
        let output = RequestOutput {
            request_id: seq.request_id.clone(),
            index: seq.index,
            token_ids,
            text,
            logprobs,
            finish_reason: finish.clone(),
            prompt_tokens: seq.prompt_len,
            output_tokens: seq.output().len(),
        };
        if finish.is_some() {
            let rid = seq.request_id.clone();
            self.scheduler.remove(sid);
            if let Some(state) = self.requests.get_mut(&rid) {
                state.seqs.retain(|&s| s != sid);
                if state.seqs.is_empty() && state.forked {
                    self.requests.remove(&rid);
                }
            }
        }
        Some(output)
    }
}
