//! Decides what runs in each step: which sequences, how many of their tokens,
//! and who gives up its KV blocks when they run out.

use super::block_manager::{BlockId, BlockManager};
use super::lora::{AdapterId, LoraSlots, SlotDecision};
use super::sequence::{SeqStatus, Sequence};
use std::collections::{HashMap, VecDeque};

pub type SeqId = u64;

#[derive(Clone, Debug)]
pub struct SchedulerConfig {
    pub max_num_seqs: usize,
    pub max_num_batched_tokens: usize,
}

/// One sequence's share of a step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scheduled {
    pub seq: SeqId,
    pub num_tokens: usize,
}

#[derive(Debug, Default)]
pub struct Step {
    pub scheduled: Vec<Scheduled>,
    /// Block copies (src, dst) to do before the step runs (copy-on-write).
    pub copies: Vec<(BlockId, BlockId)>,
    /// Sequences pushed back to waiting this step (their KV is recomputed later).
    pub preempted: Vec<SeqId>,
    /// Adapters to write into LoRA slots (slot, adapter) before the step runs.
    pub lora_loads: Vec<(usize, AdapterId)>,
}

pub struct Scheduler {
    pub config: SchedulerConfig,
    pub blocks: BlockManager,
    pub seqs: HashMap<SeqId, Sequence>,
    /// Sorted by (priority, arrival) when admitted.
    waiting: VecDeque<SeqId>,
    /// In admission order; the last one is the newest.
    running: Vec<SeqId>,
    /// The device's LoRA slots, when the model has them.
    pub lora: Option<LoraSlots>,
}

impl Scheduler {
    pub fn new(config: SchedulerConfig, blocks: BlockManager) -> Self {
        Scheduler {
            config,
            blocks,
            seqs: HashMap::new(),
            waiting: VecDeque::new(),
            running: vec![],
            lora: None,
        }
    }

    pub fn num_waiting(&self) -> usize {
        self.waiting.len()
    }
    pub fn num_running(&self) -> usize {
        self.running.len()
    }
    pub fn has_work(&self) -> bool {
        !self.waiting.is_empty() || !self.running.is_empty()
    }

    /// Queues a sequence (new, or a fork) in priority/arrival order.
    pub fn add(&mut self, id: SeqId, mut seq: Sequence) {
        seq.status = SeqStatus::Waiting;
        let key = seq.order_key();
        self.seqs.insert(id, seq);
        self.insert_waiting(id, key);
    }

    fn insert_waiting(&mut self, id: SeqId, key: (i32, u64)) {
        let at = self
            .waiting
            .iter()
            .position(|w| self.seqs.get(w).is_some_and(|s| s.order_key() > key));
        match at {
            Some(i) => self.waiting.insert(i, id),
            None => self.waiting.push_back(id),
        }
    }

    /// Adds an already-running sequence (a fork sharing its parent's blocks).
    pub fn add_running(&mut self, id: SeqId, mut seq: Sequence) {
        seq.status = SeqStatus::Running;
        self.seqs.insert(id, seq);
        self.running.push(id);
    }

    /// Removes a sequence wherever it is and frees its blocks.
    pub fn remove(&mut self, id: SeqId) -> Option<Sequence> {
        let mut seq = self.seqs.remove(&id)?;
        self.waiting.retain(|&w| w != id);
        self.running.retain(|&r| r != id);
        self.blocks.free(&seq.block_table);
        seq.block_table.clear();
        seq.status = SeqStatus::Finished;
        Some(seq)
    }

    /// Policy. There are no prefill or decode phases: every step has a budget of
    /// `max_num_batched_tokens` tokens, and each scheduled sequence gets
    /// `min(its pending tokens, what is left of the budget)`, so long prompts are
    /// chunked and ride along with decodes. Running sequences go first, oldest
    /// first; each gets the blocks its new tokens need, and when the pool is out,
    /// the newest running sequence (lowest priority, then latest arrival) is
    /// preempted: its blocks are freed and it returns to the front of the waiting
    /// queue to be recomputed. Then, unless someone was preempted this step,
    /// waiting sequences are admitted (`admit`). Requests that could never fit
    /// are refused before they get here.
    pub fn schedule(&mut self) -> Step {
        let mut step = Step::default();
        let mut budget = self.config.max_num_batched_tokens;

        let mut i = 0;
        while i < self.running.len() && budget > 0 {
            let id = self.running[i];
            let Some(seq) = self.seqs.get(&id) else {
                self.running.remove(i);
                continue;
            };
            let n = seq.pending().min(budget);
            if n == 0 {
                i += 1;
                continue;
            }
            let (cur, new_len) = (seq.num_computed, seq.num_computed + n);
            let mut table = seq.block_table.clone();
            let grown = self.blocks.grow(&mut table, cur, new_len);
            match grown {
                Some(copies) => {
                    if let Some(s) = self.seqs.get_mut(&id) {
                        s.block_table = table;
                    }
                    step.copies.extend(copies);
                    step.scheduled.push(Scheduled {
                        seq: id,
                        num_tokens: n,
                    });
                    budget -= n;
                    i += 1;
                }
                None => {
                    // Out of blocks: preempt the newest running sequence (maybe this one).
                    let victim = self.newest_running();
                    let victim_at = self.running.iter().position(|&r| r == victim);
                    self.preempt(victim);
                    if victim_at.is_some_and(|v| v < i) {
                        i -= 1; // the list shifted under us
                    }
                    step.preempted.push(victim);
                    step.scheduled.retain(|s| s.seq != victim);
                    if victim == id {
                        continue; // `running[i]` is now the next sequence
                    }
                    // Someone after `i` was preempted; retry this one.
                }
            }
        }
        // Budget returned by preempted sequences that had been scheduled is not reused
        // this step: it keeps the policy simple and the step bounded.

        if step.preempted.is_empty() {
            self.admit(&mut step, budget);
        }
        if let Some(slots) = self.lora.as_mut() {
            for sch in &step.scheduled {
                if let Some(s) = self.seqs.get(&sch.seq).and_then(|q| q.lora) {
                    if let Some(slot) = slots.slot_of(s) {
                        slots.touch(slot);
                    }
                }
            }
        }
        step
    }

    /// Admits waiting sequences in (priority, arrival) order while the budget,
    /// `max_num_seqs` and the free blocks allow; admission reuses cached prefix
    /// blocks, and a sequence that does not fit in the blocks stops admission
    /// (FCFS: nobody overtakes it). A sequence whose LoRA adapter cannot have a
    /// slot this step is passed over and keeps its place (see `lora`).
    fn admit(&mut self, step: &mut Step, mut budget: usize) {
        let mut busy: HashMap<AdapterId, usize> = HashMap::new();
        if self.lora.is_some() {
            for id in &self.running {
                if let Some(a) = self.seqs.get(id).and_then(|s| s.lora) {
                    *busy.entry(a).or_default() += 1;
                }
            }
        }
        if let Some(slots) = self.lora.as_mut() {
            slots.settle(&busy);
        }
        let mut i = 0;
        while budget > 0 && self.running.len() < self.config.max_num_seqs {
            let Some(&id) = self.waiting.get(i) else {
                break;
            };
            let Some(seq) = self.seqs.get(&id) else {
                self.waiting.remove(i);
                continue;
            };
            let mut load = None;
            if let Some(adapter) = seq.lora {
                let Some(slots) = self.lora.as_mut() else {
                    // Refused when added; never runs without slots.
                    i += 1;
                    continue;
                };
                match slots.decide(adapter, &busy) {
                    SlotDecision::Ready(_) => {}
                    SlotDecision::Load(slot) => load = Some((slot, adapter)),
                    SlotDecision::Wait => {
                        i += 1;
                        continue;
                    }
                }
            }
            let Some((table, computed)) = self.blocks.allocate_in(seq.prefix_root, &seq.tokens)
            else {
                break;
            };
            if let (Some((slot, adapter)), Some(slots)) = (load, self.lora.as_mut()) {
                slots.assign(slot, adapter);
                step.lora_loads.retain(|&(s, _)| s != slot);
                step.lora_loads.push((slot, adapter));
            }
            if let Some(a) = seq.lora {
                *busy.entry(a).or_default() += 1;
            }
            self.waiting.remove(i);
            let Some(seq) = self.seqs.get_mut(&id) else {
                continue;
            };
            seq.block_table = table;
            seq.num_computed = computed;
            seq.status = SeqStatus::Running;
            let n = seq.pending().min(budget);
            step.scheduled.push(Scheduled {
                seq: id,
                num_tokens: n,
            });
            budget -= n;
            self.running.push(id);
        }
    }

    fn newest_running(&self) -> SeqId {
        *self
            .running
            .iter()
            .max_by_key(|id| {
                self.seqs
                    .get(id)
                    .map(|s| s.order_key())
                    .unwrap_or((i32::MIN, 0))
            })
            .unwrap_or(&0)
    }

    fn preempt(&mut self, id: SeqId) {
        self.running.retain(|&r| r != id);
        if let Some(seq) = self.seqs.get_mut(&id) {
            self.blocks.free(&seq.block_table);
            seq.block_table.clear();
            seq.num_computed = 0;
            seq.status = SeqStatus::Waiting;
            self.waiting.push_front(id);
        }
    }
}
