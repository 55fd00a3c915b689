//! The engine: requests in, streamed deltas out. `step()` schedules, runs the
//! model once over the ragged batch, and turns logits into tokens and text.

use super::block_manager::BlockManager;
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
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            max_num_seqs: 256,
            max_num_batched_tokens: 2048,
            max_model_len: 8192,
            prefix_caching: true,
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
}

impl Engine {
    pub fn new(
        runner: Runner,
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
        let eos_ids = tokenizer
            .as_ref()
            .map(|t| t.eos.clone())
            .unwrap_or_else(|| runner.model.config.eos_token_ids.clone());

        Ok(Engine {
            runner,
            config,
            scheduler: Scheduler::new(sched, blocks),
            tokenizer,
            eos_ids,
            requests: HashMap::new(),
            next_seq: 0,
            arrivals: 0,
            times: StepTimes::default(),
            preemptions: 0,
        })
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

    /// Queues a request, or says why it can never be served. Nothing changes on error.
    pub fn add_request(
        &mut self,
        id: &str,
        prompt: Vec<u32>,
        params: SamplingParams,
        priority: i32,
    ) -> Result<()> {
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
        let plan = self.scheduler.schedule();
        self.preemptions += plan.preempted.len() as u64;
        let t1 = Instant::now();
        if plan.scheduled.is_empty() {
            self.times.schedule += t1 - t0;
            return Ok(vec![]);
        }
        let result = self.runner.copy_blocks(&plan.copies).and_then(|_| {
            let batch = self.batch(&plan.scheduled);
            self.runner.step(&batch)
        });
        let t2 = Instant::now();
        let outputs = match result {
            Ok(logits) => {
                let mut data = match logits.data {
                    crate::HostData::F32(v) => v,
                    _ => logits.to_f32_vec(),
                };
                self.postprocess(&plan.scheduled, &mut data)
            }
            Err(e) => self.fail(&plan.scheduled, &e),
        };
        self.times.steps += 1;
        self.times.schedule += t1 - t0;
        self.times.execute += t2 - t1;
        self.times.postprocess += t2.elapsed();
        Ok(outputs)
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
            self.scheduler
                .blocks
                .cache_full_blocks(&seq.block_table, &seq.tokens, computed);
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
