//! The ops layer's grid: for each op of the HAL, seeded random inputs over the
//! shapes that break kernels (head dims 64/80/128/256, GQA 1/4/8, block sizes
//! 16/32, lengths that are multiples of nothing, mixed prefill+decode batches,
//! sequences with no query token, single tokens, sliding window, softcap).

use crate::harness::block_size;
use tessera_core::hal::{AttentionParams, Capabilities, Op, RopeParams, RopeStyle, TensorType};
use tessera_core::model::config::RopeScaling;
use tessera_core::model::random::splitmix64;
use tessera_core::{DType, HostTensor, Result};

/// One op call: inputs in the order `hal::interpreter::dispatch` takes them.
pub struct OpCase {
    pub op: Op,
    /// The dtype under test: of the weights (embedding, linear), of the KV cache
    /// (kv_write, paged_attention), else of the activations.
    pub dtype: DType,
    /// Shape group, as the report prints it.
    pub group: String,
    pub inputs: Vec<HostTensor>,
    pub outputs: Vec<TensorType>,
}

impl OpCase {
    pub fn name(&self) -> &'static str {
        self.op.name()
    }
    /// The op updates input 0 in place (kv_write): its output is that input.
    pub fn in_place(&self) -> bool {
        self.op == Op::KvWrite
    }
}

/// Every op name the grid covers, in report order.
pub const OPS: &[&str] = &[
    "embedding",
    "linear",
    "rms_norm",
    "add_rms_norm",
    "rope",
    "silu_mul",
    "add",
    "kv_write",
    "paged_attention",
    "gather_last",
    "argmax",
    "sample",
    "lora_shrink",
    "lora_expand",
];

/// Ops a backend may leave out (the engine composes or avoids them).
pub const OPTIONAL_OPS: &[&str] = &["add_rms_norm", "sample", "lora_shrink", "lora_expand"];

/// Deterministic uniform numbers; each case seeds its own stream so that
/// adding a case never changes the inputs of another.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(1);
        splitmix64(self.0)
    }
    /// Uniform in [lo, hi).
    pub fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        let u = (self.next() >> 40) as f32 / (1u64 << 24) as f32;
        lo + (hi - lo) * u
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    pub fn floats(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.uniform(-scale, scale)).collect()
    }
    fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            v.swap(i, self.below(i + 1));
        }
    }
}

fn floats(rng: &mut Rng, shape: Vec<usize>, scale: f32, dtype: DType) -> Result<HostTensor> {
    let n = shape.iter().product();
    HostTensor::f32(shape, rng.floats(n, scale)).to_dtype(dtype)
}

fn ids(shape: Vec<usize>, v: Vec<i32>) -> HostTensor {
    HostTensor::i32(shape, v)
}

fn out(dtype: DType, shape: Vec<usize>) -> TensorType {
    TensorType::new(dtype, shape)
}

/// The whole grid for a device with these capabilities.
pub fn all(caps: &Capabilities) -> Result<Vec<OpCase>> {
    let act = caps.activation_dtype;
    let mut cases = vec![];
    for &w in &caps.weight_dtypes {
        embedding(&mut cases, w, act)?;
        linear(&mut cases, w, act)?;
        lora(&mut cases, w, act)?;
    }
    norms(&mut cases, act)?;
    rope(&mut cases, act)?;
    elementwise(&mut cases, act)?;
    for &kv in &caps.kv_dtypes {
        kv_write(&mut cases, kv, act, caps)?;
        attention(&mut cases, kv, act, caps)?;
    }
    select(&mut cases, act)?;
    Ok(cases)
}

fn seed(op: &str, i: usize) -> u64 {
    op.bytes()
        .fold(0x51_7cc1_b727_220a, |h, b| splitmix64(h ^ b as u64))
        ^ i as u64
}

fn embedding(cases: &mut Vec<OpCase>, w: DType, act: DType) -> Result<()> {
    for (i, &(vocab, h, t)) in [(1000usize, 64usize, 1usize), (517, 96, 7), (64, 83, 33)]
        .iter()
        .enumerate()
    {
        let mut rng = Rng::new(seed("embedding", i));
        // The first and last rows are where an off-by-one shows.
        let mut tok: Vec<i32> = (0..t).map(|_| rng.below(vocab) as i32).collect();
        tok[0] = vocab as i32 - 1;
        if t > 1 {
            tok[1] = 0;
        }
        cases.push(OpCase {
            op: Op::Embedding,
            dtype: w,
            group: format!("V={vocab} H={h} T={t}"),
            inputs: vec![floats(&mut rng, vec![vocab, h], 1.0, w)?, ids(vec![t], tok)],
            outputs: vec![out(act, vec![t, h])],
        });
    }
    Ok(())
}

fn linear(cases: &mut Vec<OpCase>, w: DType, act: DType) -> Result<()> {
    let shapes = [
        (1usize, 576usize, 1536usize, false),
        (7, 83, 50, true),
        (33, 256, 130, false),
        (16, 64, 64, true),
        (3, 1000, 1, false),
    ];
    for (i, &(t, k, n, bias)) in shapes.iter().enumerate() {
        let mut rng = Rng::new(seed("linear", i));
        let mut inputs = vec![
            floats(&mut rng, vec![t, k], 1.0, act)?,
            floats(&mut rng, vec![n, k], 1.0 / (k as f32).sqrt(), w)?,
        ];
        if bias {
            inputs.push(floats(&mut rng, vec![n], 0.5, DType::F32)?);
        }
        cases.push(OpCase {
            op: Op::Linear,
            dtype: w,
            group: format!("T={t} K={k} N={n}{}", if bias { " bias" } else { "" }),
            inputs,
            outputs: vec![out(act, vec![t, n])],
        });
    }
    Ok(())
}

/// Both LoRA halves over a batch that mixes adapter slots, tokens without
/// one (-1) and, for the last shape, a slot index past the stack.
fn lora(cases: &mut Vec<OpCase>, w: DType, act: DType) -> Result<()> {
    // (tokens, slots, rank, in, out)
    let shapes = [
        (1usize, 1usize, 8usize, 64usize, 80usize),
        (7, 3, 16, 96, 64),
        (33, 4, 8, 83, 130),
    ];
    for (i, &(t, l, r, k, n)) in shapes.iter().enumerate() {
        let mut rng = Rng::new(seed("lora", i));
        let mut idx: Vec<i32> = (0..t).map(|j| (j % (l + 1)) as i32 - 1).collect();
        rng.shuffle(&mut idx);
        if i == 2 {
            idx[5] = l as i32; // not a slot: treated as no adapter
        }
        let group = format!("T={t} slots={l} R={r} K={k} N={n}");
        cases.push(OpCase {
            op: Op::LoraShrink,
            dtype: w,
            group: group.clone(),
            inputs: vec![
                floats(&mut rng, vec![t, k], 1.0, act)?,
                floats(&mut rng, vec![l, r, k], 1.0 / (k as f32).sqrt(), w)?,
                ids(vec![t], idx.clone()),
            ],
            outputs: vec![out(act, vec![t, r])],
        });
        cases.push(OpCase {
            op: Op::LoraExpand,
            dtype: w,
            group,
            inputs: vec![
                floats(&mut rng, vec![t, n], 1.0, act)?,
                floats(&mut rng, vec![t, r], 1.0, act)?,
                floats(&mut rng, vec![l, n, r], 1.0 / (r as f32).sqrt(), w)?,
                ids(vec![t], idx),
            ],
            outputs: vec![out(act, vec![t, n])],
        });
    }
    Ok(())
}

fn norms(cases: &mut Vec<OpCase>, act: DType) -> Result<()> {
    for (i, &(t, h, eps)) in [(1usize, 64usize, 1e-5f32), (7, 576, 1e-6), (33, 83, 1e-5)]
        .iter()
        .enumerate()
    {
        let mut rng = Rng::new(seed("rms_norm", i));
        let x = floats(&mut rng, vec![t, h], 2.0, act)?;
        let w = HostTensor::f32(vec![h], (0..h).map(|_| rng.uniform(0.5, 1.5)).collect());
        cases.push(OpCase {
            op: Op::RmsNorm { eps },
            dtype: act,
            group: format!("T={t} H={h}"),
            inputs: vec![x.clone(), w.clone()],
            outputs: vec![out(act, vec![t, h])],
        });
        let residual = floats(&mut rng, vec![t, h], 2.0, act)?;
        cases.push(OpCase {
            op: Op::AddRmsNorm { eps },
            dtype: act,
            group: format!("T={t} H={h}"),
            inputs: vec![x, residual, w],
            outputs: vec![out(act, vec![t, h]), out(act, vec![t, h])],
        });
    }
    Ok(())
}

fn rope(cases: &mut Vec<OpCase>, act: DType) -> Result<()> {
    let llama3 = RopeScaling::Llama3 {
        factor: 8.0,
        low_freq_factor: 1.0,
        high_freq_factor: 4.0,
        original_max_position_embeddings: 8192,
    };
    let variants = [
        (
            64usize,
            4usize,
            RopeStyle::Neox,
            RopeScaling::None,
            10000.0f32,
        ),
        (
            80,
            2,
            RopeStyle::Neox,
            RopeScaling::Linear { factor: 4.0 },
            10000.0,
        ),
        (128, 3, RopeStyle::Neox, llama3.clone(), 500000.0),
        (256, 1, RopeStyle::Interleaved, RopeScaling::None, 1000000.0),
        (64, 2, RopeStyle::Interleaved, llama3, 500000.0),
    ];
    for (i, (d, heads, style, scaling, theta)) in variants.into_iter().enumerate() {
        let mut rng = Rng::new(seed("rope", i));
        let t = [1usize, 7, 13, 33, 5][i];
        // Positions from 0 to a few thousand: long angles are where f32 drifts.
        let mut pos: Vec<i32> = (0..t).map(|_| rng.below(4096) as i32).collect();
        pos[0] = 0;
        let label = match scaling {
            RopeScaling::None => "plain",
            RopeScaling::Linear { .. } => "linear",
            RopeScaling::Llama3 { .. } => "llama3",
        };
        let p = RopeParams {
            style,
            head_dim: d,
            theta,
            scaling,
        };
        cases.push(OpCase {
            op: Op::Rope(p),
            dtype: act,
            group: format!(
                "T={t} heads={heads} d={d} {} {}",
                match style {
                    RopeStyle::Neox => "neox",
                    RopeStyle::Interleaved => "interleaved",
                },
                label
            ),
            inputs: vec![
                floats(&mut rng, vec![t, heads, d], 1.0, act)?,
                ids(vec![t], pos),
            ],
            outputs: vec![out(act, vec![t, heads, d])],
        });
    }
    Ok(())
}

fn elementwise(cases: &mut Vec<OpCase>, act: DType) -> Result<()> {
    for (i, &(t, n)) in [(1usize, 1usize), (7, 1536), (33, 83)].iter().enumerate() {
        let mut rng = Rng::new(seed("silu_mul", i));
        // Gates up to ±12 reach both tails of the sigmoid.
        let gate = floats(&mut rng, vec![t, n], 12.0, act)?;
        let up = floats(&mut rng, vec![t, n], 2.0, act)?;
        cases.push(OpCase {
            op: Op::SiluMul,
            dtype: act,
            group: format!("T={t} I={n}"),
            inputs: vec![gate.clone(), up.clone()],
            outputs: vec![out(act, vec![t, n])],
        });
        cases.push(OpCase {
            op: Op::Add,
            dtype: act,
            group: format!("T={t} H={n}"),
            inputs: vec![gate, up],
            outputs: vec![out(act, vec![t, n])],
        });
    }
    Ok(())
}

fn kv_write(cases: &mut Vec<OpCase>, kv: DType, act: DType, caps: &Capabilities) -> Result<()> {
    let variants = [
        (1usize, 64usize, 16usize, 1usize),
        (2, 80, 32, 7),
        (8, 128, 16, 33),
        (1, 256, 32, 5),
    ];
    for (i, &(heads, d, bs, t)) in variants.iter().enumerate() {
        let bs = block_size(caps, bs);
        let mut rng = Rng::new(seed("kv_write", i));
        let blocks = t.div_ceil(bs) + 3;
        // Distinct random slots, one of them padding (-1) when there are several.
        let mut all: Vec<i32> = (0..(blocks * bs) as i32).collect();
        rng.shuffle(&mut all);
        let mut slots: Vec<i32> = all[..t].to_vec();
        if t > 1 {
            slots[t / 2] = -1;
        }
        let cache = floats(&mut rng, vec![blocks, heads, bs, d], 1.0, kv)?;
        cases.push(OpCase {
            op: Op::KvWrite,
            dtype: kv,
            group: format!("T={t} kv_heads={heads} d={d} bs={bs}"),
            inputs: vec![
                cache,
                floats(&mut rng, vec![t, heads, d], 1.0, act)?,
                ids(vec![t], slots),
            ],
            outputs: vec![out(kv, vec![blocks, heads, bs, d])],
        });
    }
    Ok(())
}

/// A ragged batch: (seq_len, q_len) per sequence.
struct BatchKind {
    name: &'static str,
    seqs: &'static [(usize, usize)],
    causal: bool,
    window: Option<usize>,
    softcap: Option<f32>,
    /// Query rows after the last sequence's, as a bucketed step pads them.
    pad_rows: usize,
}

const BATCHES: &[BatchKind] = &[
    BatchKind {
        name: "decode",
        seqs: &[(1, 1), (17, 1), (100, 1)],
        causal: true,
        window: None,
        softcap: None,
        pad_rows: 0,
    },
    BatchKind {
        name: "prefill",
        seqs: &[(37, 37)],
        causal: true,
        window: None,
        softcap: None,
        pad_rows: 0,
    },
    // Chunked prefill next to decodes, a one-token sequence, and a sequence
    // with nothing to compute this step.
    BatchKind {
        name: "mixed+empty",
        seqs: &[(45, 12), (1, 1), (29, 0), (70, 1)],
        causal: true,
        window: None,
        softcap: None,
        pad_rows: 0,
    },
    BatchKind {
        name: "window8+softcap",
        seqs: &[(41, 9), (23, 1)],
        causal: true,
        window: Some(8),
        softcap: Some(2.0),
        pad_rows: 0,
    },
    // A step padded to a bucket: an empty padding sequence and padding rows.
    BatchKind {
        name: "padded",
        seqs: &[(13, 1), (6, 6), (0, 0)],
        causal: true,
        window: None,
        softcap: None,
        pad_rows: 2,
    },
    // Contexts longer than a kernel's split of the keys (GPU decode kernels
    // cut contexts into partitions), one with a window across the cuts.
    BatchKind {
        name: "long decode",
        seqs: &[(1100, 1), (300, 1), (5, 1)],
        causal: true,
        window: None,
        softcap: None,
        pad_rows: 0,
    },
    BatchKind {
        name: "long window",
        seqs: &[(900, 1), (2, 1)],
        causal: true,
        window: Some(300),
        softcap: None,
        pad_rows: 0,
    },
    BatchKind {
        name: "noncausal",
        seqs: &[(19, 19), (5, 5)],
        causal: false,
        window: None,
        softcap: None,
        pad_rows: 0,
    },
];

fn attention(cases: &mut Vec<OpCase>, kv: DType, act: DType, caps: &Capabilities) -> Result<()> {
    let mut i = 0;
    for d in [64usize, 80, 128, 256] {
        // 12 query heads per KV head: more than a GPU decode block takes
        // (8), so it is split over blocks; one head dim is enough for that.
        let groups: &[(usize, usize)] = if d == 128 {
            &[(4, 4), (8, 2), (8, 1), (12, 1)]
        } else {
            &[(4, 4), (8, 2), (8, 1)]
        };
        for &(heads, kv_heads) in groups {
            for want_bs in [16usize, 32] {
                let bs = block_size(caps, want_bs);
                for b in BATCHES {
                    i += 1;
                    let mut rng = Rng::new(seed("paged_attention", i));
                    cases.push(attention_case(
                        &mut rng, b, d, heads, kv_heads, bs, kv, act,
                    )?);
                }
            }
        }
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn attention_case(
    rng: &mut Rng,
    b: &BatchKind,
    d: usize,
    heads: usize,
    kv_heads: usize,
    bs: usize,
    kv: DType,
    act: DType,
) -> Result<OpCase> {
    let per_seq: Vec<usize> = b.seqs.iter().map(|&(len, _)| len.div_ceil(bs)).collect();
    let used: usize = per_seq.iter().sum();
    let num_blocks = used + 3;
    let max_blocks = per_seq.iter().copied().max().unwrap_or(1).max(1);
    // Physical blocks in random order, so a kernel that assumes contiguity fails.
    let mut physical: Vec<i32> = (0..num_blocks as i32).collect();
    rng.shuffle(&mut physical);
    let mut tables = vec![0i32; b.seqs.len() * max_blocks];
    let mut next = 0;
    for (s, &n) in per_seq.iter().enumerate() {
        for j in 0..n {
            tables[s * max_blocks + j] = physical[next];
            next += 1;
        }
    }
    let mut qsl = vec![0i32];
    for &(_, q) in b.seqs {
        qsl.push(qsl[qsl.len() - 1] + q as i32);
    }
    let t = *qsl.last().unwrap_or(&0) as usize + b.pad_rows;
    let seq_lens: Vec<i32> = b.seqs.iter().map(|&(l, _)| l as i32).collect();
    let scale = 1.0 / (d as f32).sqrt();
    // Scores of order one: softmax neither flat nor one-hot.
    let q = floats(rng, vec![t, heads, d], 2.0, act)?;
    let k = floats(rng, vec![num_blocks, kv_heads, bs, d], 1.0, kv)?;
    let v = floats(rng, vec![num_blocks, kv_heads, bs, d], 1.0, kv)?;
    Ok(OpCase {
        op: Op::PagedAttention(AttentionParams {
            scale,
            causal: b.causal,
            sliding_window: b.window,
            softcap: b.softcap,
        }),
        dtype: kv,
        group: format!("d={d} heads={heads}/{kv_heads} bs={bs} {} T={t}", b.name),
        inputs: vec![
            q,
            k,
            v,
            ids(vec![qsl.len()], qsl),
            ids(vec![seq_lens.len()], seq_lens),
            ids(vec![b.seqs.len(), max_blocks], tables),
        ],
        outputs: vec![out(act, vec![t, heads, d])],
    })
}

fn select(cases: &mut Vec<OpCase>, act: DType) -> Result<()> {
    let mut rng = Rng::new(seed("gather_last", 0));
    // Three sequences, the middle one without query tokens (a zero row).
    cases.push(OpCase {
        op: Op::GatherLast,
        dtype: act,
        group: "T=12 H=64 S=3 (one empty)".into(),
        inputs: vec![
            floats(&mut rng, vec![12, 64], 1.0, act)?,
            ids(vec![4], vec![0, 5, 5, 12]),
        ],
        outputs: vec![out(act, vec![3, 64])],
    });
    for (i, &(s, v)) in [(1usize, 1000usize), (3, 4099)].iter().enumerate() {
        let mut rng = Rng::new(seed("argmax", i));
        cases.push(OpCase {
            op: Op::Argmax,
            dtype: act,
            group: format!("S={s} V={v}"),
            inputs: vec![floats(&mut rng, vec![s, v], 8.0, act)?],
            outputs: vec![out(DType::I32, vec![s])],
        });
    }
    for (i, &(s, v)) in [(3usize, 1000usize), (4, 4099)].iter().enumerate() {
        let mut rng = Rng::new(seed("sample", i));
        let logits = floats(&mut rng, vec![s, v], 8.0, act)?;
        let temps: Vec<f32> = [0.0f32, 0.7, 1.5, 1.0][..s].to_vec();
        // Gumbel noise, -ln(-ln u), as the engine draws it.
        let noise: Vec<f32> = (0..s * v)
            .map(|_| -(-(rng.uniform(1e-7, 1.0)).ln()).ln())
            .collect();
        cases.push(OpCase {
            op: Op::Sample,
            dtype: act,
            group: format!("S={s} V={v} t=0/0.7/1.5"),
            inputs: vec![
                logits,
                HostTensor::f32(vec![s], temps).to_dtype(act)?,
                HostTensor::f32(vec![s, v], noise).to_dtype(act)?,
            ],
            outputs: vec![out(DType::I32, vec![s])],
        });
    }
    Ok(())
}
