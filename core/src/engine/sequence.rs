//! One sequence being generated: its tokens, how many of them are in the KV
//! cache, its blocks, and where it stands. A request with `n > 1` owns n sequences.

use super::block_manager::{BlockId, PrefixRoot};
use super::lora::AdapterId;
use super::sampler::SamplingParams;
use super::stop::StopMatcher;
use crate::model::tokenizer::StreamDecoder;
use std::sync::Arc;

pub type RequestId = String;

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FinishReason {
    /// An end-of-sequence token, a stop token or a stop string.
    Stop,
    /// `max_tokens` reached.
    Length,
    /// Aborted by the caller (client gone) or refused mid-flight.
    Abort,
    /// The backend failed on a step this sequence was in.
    Error(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SeqStatus {
    Waiting,
    Running,
    Finished,
}

pub struct Sequence {
    pub request_id: RequestId,
    /// Which of the request's `n` samples this is.
    pub index: usize,
    pub params: Arc<SamplingParams>,
    pub prompt_len: usize,
    /// Prompt followed by the generated tokens.
    pub tokens: Vec<u32>,
    /// Leading tokens whose K/V is in the cache.
    pub num_computed: usize,
    pub block_table: Vec<BlockId>,
    pub status: SeqStatus,
    /// Noise for sampling depends on this seed and the position only.
    pub seed: u64,
    /// Lower runs first; ties go to the earlier arrival.
    pub priority: i32,
    pub arrival: u64,
    pub decoder: StreamDecoder,
    pub stop: StopMatcher,
    /// The LoRA adapter it runs with (None: the base model).
    pub lora: Option<AdapterId>,
    /// Where its blocks' prefix-cache hashes start (its adapter's namespace).
    pub prefix_root: PrefixRoot,
}

impl Sequence {
    pub fn output(&self) -> &[u32] {
        &self.tokens[self.prompt_len..]
    }
    pub fn prompt(&self) -> &[u32] {
        &self.tokens[..self.prompt_len]
    }
    /// Tokens still to run through the model before the next token can be sampled.
    pub fn pending(&self) -> usize {
        self.tokens.len() - self.num_computed
    }
    /// Scheduling order: priority, then arrival.
    pub fn order_key(&self) -> (i32, u64) {
        (self.priority, self.arrival)
    }
}
