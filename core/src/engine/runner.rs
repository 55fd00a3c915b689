//! Runs one step of a ragged batch: builds (or reuses) the executable for the
//! step's shape, uploads the batch metadata, runs, and returns the logits.

use super::device_model::DeviceModel;
use super::kv_cache::KvCache;
use crate::hal::{Executable, Tensor};
use crate::model::llama::{build_graph, StepShape};
use crate::{DType, Error, HostTensor, Result};
use std::collections::VecDeque;

/// One step's batch. Sequence `s` owns tokens `query_start_loc[s]..query_start_loc[s+1]`,
/// has `seq_lens[s]` tokens in the cache after this step, and its blocks are
/// `block_tables[s]`; `slots[t]` is where token `t`'s K/V goes.
#[derive(Clone, Debug, Default)]
pub struct StepBatch {
    pub tokens: Vec<u32>,
    pub positions: Vec<u32>,
    pub slots: Vec<u32>,
    pub query_start_loc: Vec<u32>,
    pub seq_lens: Vec<u32>,
    pub block_tables: Vec<Vec<u32>>,
    /// Return logits for every token, not only each sequence's last.
    pub all_logits: bool,
    /// Each token's LoRA slot (negative: none); empty means none anywhere.
    /// Used when the model has LoRA slots.
    pub lora_slots: Vec<i32>,
}

/// Compiled executables kept per shape.
const MAX_EXECUTABLES: usize = 24;

pub struct Runner {
    pub model: DeviceModel,
    pub kv: KvCache,
    executables: VecDeque<(StepShape, Box<dyn Executable>)>,
}

fn pad_to_bucket(n: usize) -> usize {
    n.max(1).next_power_of_two()
}

impl Runner {
    pub fn new(model: DeviceModel, kv: KvCache) -> Self {
        Runner {
            model,
            kv,
            executables: VecDeque::new(),
        }
    }

    /// The step shapes a device that pads to buckets compiles for decoding:
    /// 1, 2, 4, ... sequences (up to `max_seqs`, one token each) by 1, 2, 4,
    /// ... blocks per sequence (up to `max_blocks`), as many as the
    /// executable cache holds, smallest first.
    pub fn decode_buckets(&self, max_seqs: usize, max_blocks: usize) -> Vec<StepShape> {
        let pow2 = |max: usize| {
            std::iter::successors(Some(1usize), |&x| Some(x * 2))
                .take_while(move |&x| x <= max.max(1))
        };
        let mut shapes: Vec<StepShape> = pow2(max_seqs)
            .flat_map(|s| {
                pow2(max_blocks).map(move |b| StepShape {
                    num_tokens: s,
                    num_seqs: s,
                    max_blocks: b,
                    all_logits: false,
                })
            })
            .collect();
        shapes.sort_by_key(|s| (s.num_seqs * s.max_blocks, s.num_seqs));
        shapes.truncate(MAX_EXECUTABLES);
        shapes
    }

    /// Compiles `shapes` now, so the first requests of each do not wait (and
    /// on a device that captures graphs, runs each once on padding so its
    /// graph is recorded); `progress(done, total, shape, seconds)` after each.
    pub fn precompile(
        &mut self,
        shapes: &[StepShape],
        mut progress: impl FnMut(usize, usize, &StepShape, f64),
    ) -> Result<()> {
        for (i, &shape) in shapes.iter().enumerate() {
            let started = std::time::Instant::now();
            self.executable(shape)?;
            if self.model.device.capabilities().graph_capture {
                self.run_padding(shape)?;
            }
            progress(i + 1, shapes.len(), &shape, started.elapsed().as_secs_f64());
        }
        Ok(())
    }

    /// Drops every compiled step (the weights' layout changed, as when the
    /// LoRA slots grow to a higher rank); the next steps compile again.
    pub fn clear_executables(&mut self) {
        self.executables.clear();
    }

    fn executable(&mut self, shape: StepShape) -> Result<&mut Box<dyn Executable>> {
        if let Some(i) = self.executables.iter().position(|(s, _)| *s == shape) {
            let entry = self
                .executables
                .remove(i)
                .ok_or_else(|| Error::invalid("executable cache"))?;
            self.executables.push_front(entry);
        } else {
            let graph = build_graph(
                &self.model.config,
                shape,
                self.model.dtypes,
                self.kv.shape,
                self.model.lora,
            )?;
            let exe = self.model.device.compile(&graph, &self.model.weights)?;
            tracing::debug!(?shape, "compiled step");
            if self.executables.len() >= MAX_EXECUTABLES {
                self.executables.pop_back();
            }
            self.executables.push_front((shape, exe));
        }
        Ok(&mut self.executables[0].1)
    }

    fn upload_i32(&self, data: &[i32], shape: Vec<usize>) -> Result<Tensor> {
        let dev = &self.model.device;
        let bytes: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        let buf = dev.alloc(bytes.len())?;
        dev.upload(&buf, 0, &bytes)?;
        Tensor::new(buf, 0, DType::I32, shape)
    }

    /// Uploads a step's inputs (`tokens, positions, slots, query_start_loc,
    /// seq_lens, block_tables`, padded to `shape`) and runs its executable.
    /// With LoRA slots, `lora` is each token's slot (padded with -1).
    fn run_shape(
        &mut self,
        shape: StepShape,
        inputs: [&[i32]; 6],
        lora: &[i32],
    ) -> Result<Vec<Tensor>> {
        let (t, s) = (shape.num_tokens, shape.num_seqs);
        let shapes = [
            vec![t],
            vec![t],
            vec![t],
            vec![s + 1],
            vec![s],
            vec![s, shape.max_blocks],
        ];
        let mut inputs = inputs
            .into_iter()
            .zip(shapes)
            .map(|(data, dims)| self.upload_i32(data, dims))
            .collect::<Result<Vec<_>>>()?;
        if self.model.lora.is_some() {
            let mut slots = vec![-1i32; t];
            let n = lora.len().min(t);
            slots[..n].copy_from_slice(&lora[..n]);
            inputs.push(self.upload_i32(&slots, vec![t])?);
        }
        let mut state = std::mem::take(&mut self.kv.tensors);
        let result = self
            .executable(shape)
            .and_then(|exe| exe.run(&inputs, &mut state));
        self.kv.tensors = state;
        result
    }

    /// Runs `shape` once on padding only (no sequence has a token, no slot is
    /// written), so a device that captures graphs records this shape's now.
    fn run_padding(&mut self, shape: StepShape) -> Result<()> {
        let (t, s) = (shape.num_tokens, shape.num_seqs);
        let zeros = vec![0i32; t.max(s + 1).max(s * shape.max_blocks)];
        let no_slots = vec![-1i32; t];
        self.run_shape(
            shape,
            [
                &zeros[..t],
                &zeros[..t],
                &no_slots,
                &zeros[..s + 1],
                &zeros[..s],
                &zeros[..s * shape.max_blocks],
            ],
            &[],
        )?;
        self.model.device.synchronize()
    }

    /// Runs one step; returns f32 logits `[sequences, vocab]` (or `[tokens, vocab]`).
    pub fn step(&mut self, b: &StepBatch) -> Result<HostTensor> {
        let (t, s) = (b.tokens.len(), b.seq_lens.len());
        if t == 0
            || s == 0
            || b.positions.len() != t
            || b.slots.len() != t
            || b.query_start_loc.len() != s + 1
            || b.block_tables.len() != s
        {
            return Err(Error::invalid(format!(
                "malformed step batch: {t} tokens, {s} sequences"
            )));
        }
        let vocab = self.model.config.vocab_size;
        if let Some(&bad) = b.tokens.iter().find(|&&id| id as usize >= vocab) {
            return Err(Error::Request(format!(
                "token id {bad} is outside the model's vocabulary of {vocab}"
            )));
        }
        let exact = self.model.device.capabilities().exact_shapes;
        let max_blocks = pad_to_bucket(b.block_tables.iter().map(Vec::len).max().unwrap_or(1));
        let shape = StepShape {
            num_tokens: if exact { t } else { pad_to_bucket(t) },
            num_seqs: if exact { s } else { pad_to_bucket(s) },
            max_blocks,
            all_logits: b.all_logits,
        };
        // Padding tokens write nowhere (slot -1); padding sequences have no tokens.
        let i32s = |v: &[u32], n: usize, fill: i32| -> Vec<i32> {
            let mut out: Vec<i32> = v.iter().map(|&x| x as i32).collect();
            out.resize(n, fill);
            out
        };
        let tokens = i32s(&b.tokens, shape.num_tokens, 0);
        let positions = i32s(&b.positions, shape.num_tokens, 0);
        let slots = i32s(&b.slots, shape.num_tokens, -1);
        let last = *b.query_start_loc.last().unwrap_or(&0) as i32;
        let qsl = i32s(&b.query_start_loc, shape.num_seqs + 1, last);
        let seq_lens = i32s(&b.seq_lens, shape.num_seqs, 0);
        let mut tables = vec![0i32; shape.num_seqs * max_blocks];
        for (i, row) in b.block_tables.iter().enumerate() {
            for (j, &blk) in row.iter().enumerate() {
                tables[i * max_blocks + j] = blk as i32;
            }
        }
        let lora_slots = self.model.lora.map_or(0, |l| l.slots);
        if !b.lora_slots.is_empty() && b.lora_slots.len() != t {
            return Err(Error::invalid(format!(
                "{} LoRA slots for {t} tokens",
                b.lora_slots.len()
            )));
        }
        if let Some(&bad) = b
            .lora_slots
            .iter()
            .find(|&&x| x >= 0 && x as usize >= lora_slots)
        {
            return Err(Error::invalid(format!(
                "LoRA slot {bad} of {lora_slots} slots"
            )));
        }
        let outputs = self.run_shape(
            shape,
            [&tokens, &positions, &slots, &qsl, &seq_lens, &tables],
            &b.lora_slots,
        )?;
        let logits = outputs
            .first()
            .ok_or_else(|| Error::invalid("the graph returned no logits"))?;
        let rows = if b.all_logits { t } else { s };
        if logits.dtype == DType::F32 {
            // Straight into f32s: at 256 sequences the logits are 50 MB a step.
            let mut data = vec![0f32; rows * vocab];
            // SAFETY: f32 has no invalid bit patterns and no padding; the byte view
            // covers exactly the vector's initialised elements.
            let bytes = unsafe {
                std::slice::from_raw_parts_mut(data.as_mut_ptr() as *mut u8, data.len() * 4)
            };
            self.model
                .device
                .download(&logits.buffer, logits.offset, bytes)?;
            return Ok(HostTensor::f32(vec![rows, vocab], data));
        }
        let mut raw = vec![0u8; rows * vocab * logits.dtype.size()];
        self.model
            .device
            .download(&logits.buffer, logits.offset, &mut raw)?;
        HostTensor::from_bytes(logits.dtype, vec![rows, vocab], &raw)?.to_dtype(DType::F32)
    }
}

impl Runner {
    /// Copies whole KV blocks (src -> dst) in every layer's K and V: the
    /// copy-on-write the block manager asks for before a shared block is written.
    pub fn copy_blocks(&mut self, copies: &[(u32, u32)]) -> Result<()> {
        if copies.is_empty() {
            return Ok(());
        }
        let dev = self.model.device.clone();
        for t in &self.kv.tensors {
            let block_bytes = t.nbytes() / t.shape[0].max(1);
            for &(src, dst) in copies {
                let (s, d) = (src as usize, dst as usize);
                if s >= t.shape[0] || d >= t.shape[0] {
                    return Err(Error::invalid(format!(
                        "block copy {src} -> {dst} outside {} blocks",
                        t.shape[0]
                    )));
                }
                dev.copy(
                    &t.buffer,
                    t.offset + s * block_bytes,
                    &t.buffer,
                    t.offset + d * block_bytes,
                    block_bytes,
                )?;
            }
        }
        Ok(())
    }
}
