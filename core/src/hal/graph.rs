//! The graph IR: a static-shape list of LLM-level ops in execution order.
//! Models are written once against it; eager backends run it op by op through
//! the interpreter, compiling backends lower it whole.
//!
//! Shapes (T tokens of the ragged batch, S sequences, H hidden, n heads, d head dim):
//! - `embedding(table [V,H], ids [T] i32) -> [T,H]`
//! - `linear(x [T,K], w [N,K], bias? [N]) -> [T,N]`
//! - `rms_norm(x [T,H], w [H]) -> [T,H]`; `add_rms_norm(x, residual, w) -> (norm(x+residual), x+residual)`
//! - `rope(x [T,n,d], positions [T] i32) -> [T,n,d]`
//! - `silu_mul(gate [T,I], up [T,I]) -> [T,I]`, `add(a, b) -> a+b`
//! - `kv_write(cache [B,nkv,bs,d], new [T,nkv,d], slots [T] i32) -> cache` (in place;
//!   slot = block * bs + offset, negative slots are padding and skipped)
//! - `paged_attention(q [T,n,d], k_cache, v_cache, query_start_loc [S+1], seq_lens [S],
//!   block_tables [S,M]) -> [T,n,d]`: the last `q_len` tokens of each sequence attend
//!   to its `seq_len` cached tokens. Rows after `query_start_loc[S]` (padding of a
//!   bucketed step) come out zero; a sequence may have no query rows.
//! - `gather_last(x [T,H], query_start_loc [S+1]) -> [S,H]`; a sequence with no
//!   query token yields a zero row.
//! - `argmax(logits [S,V]) -> [S] i32`; `sample(logits, temperature [S], noise [S,V]) -> [S]`:
//!   argmax(logits / t + noise), plain argmax where t == 0. The caller supplies the
//!   Gumbel noise so that every backend draws the same token.
//! - LoRA, one adapter slot per token (`idx [T] i32`, negative: no adapter), with
//!   `L` slots of rank `R` stacked (a smaller rank is zero-padded):
//!   `lora_shrink(x [T,K], a [L,R,K], idx) -> [T,R]`: `a[idx[t]] · x[t]`, zeros where
//!   `idx[t] < 0`; `lora_expand(y [T,N], u [T,R], b [L,N,R], idx) -> [T,N]`:
//!   `y[t] + b[idx[t]] · u[t]`, `y[t]` where `idx[t] < 0` (the adapter's scaling is
//!   folded into `b`). A slot index at or past `L` is a caller bug: zeros / `y`.

use crate::{DType, Error, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ValueId(pub u32);

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TensorType {
    pub dtype: DType,
    pub shape: Vec<usize>,
}

impl TensorType {
    pub fn new(dtype: DType, shape: Vec<usize>) -> Self {
        TensorType { dtype, shape }
    }
    pub fn nbytes(&self) -> usize {
        self.shape.iter().product::<usize>() * self.dtype.size()
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum ValueKind {
    /// Fed per run (token ids, positions, batch metadata).
    Input(String),
    /// Persistent across runs and updated in place (the KV cache).
    State(String),
    /// Bound once at compile time.
    Weight(String),
    /// Produced by node `.0`, output number `.1`.
    Node(usize, usize),
    /// The same elements as another value, with another shape (no copy).
    Reshape(ValueId),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Value {
    pub ty: TensorType,
    pub kind: ValueKind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeStyle {
    /// Rotates the two halves of each head (HF Llama `rotate_half`).
    Neox,
    /// Rotates adjacent pairs (GPT-J, llama.cpp's native layout).
    Interleaved,
}

#[derive(Clone, Debug, PartialEq)]
pub struct RopeParams {
    pub style: RopeStyle,
    pub head_dim: usize,
    pub theta: f32,
    pub scaling: crate::model::config::RopeScaling,
}

impl RopeParams {
    /// Inverse frequencies, computed in f32 as transformers does, with scaling applied.
    pub fn inv_freq(&self) -> Vec<f32> {
        use crate::model::config::RopeScaling;
        let half = self.head_dim / 2;
        let base: Vec<f32> = (0..half)
            .map(|i| 1.0 / self.theta.powf((2 * i) as f32 / self.head_dim as f32))
            .collect();
        match self.scaling {
            RopeScaling::None | RopeScaling::Linear { .. } => base,
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            } => {
                let old = original_max_position_embeddings as f32;
                let low_wavelen = old / low_freq_factor;
                let high_wavelen = old / high_freq_factor;
                base.into_iter()
                    .map(|f| {
                        let wavelen = 2.0 * std::f32::consts::PI / f;
                        if wavelen < high_wavelen {
                            f
                        } else if wavelen > low_wavelen {
                            f / factor
                        } else {
                            let smooth = (old / wavelen - low_freq_factor)
                                / (high_freq_factor - low_freq_factor);
                            (1.0 - smooth) * f / factor + smooth * f
                        }
                    })
                    .collect()
            }
        }
    }

    /// The factor positions are divided by (linear scaling), 1 otherwise.
    pub fn position_scale(&self) -> f32 {
        match self.scaling {
            crate::model::config::RopeScaling::Linear { factor } => 1.0 / factor,
            _ => 1.0,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct AttentionParams {
    pub scale: f32,
    pub causal: bool,
    /// Attend only to the last `w` positions (Mistral-style), including itself.
    pub sliding_window: Option<usize>,
    /// `softcap * tanh(score / softcap)` before the softmax (Gemma 2).
    pub softcap: Option<f32>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    Embedding,
    Linear,
    RmsNorm { eps: f32 },
    AddRmsNorm { eps: f32 },
    Rope(RopeParams),
    SiluMul,
    Add,
    KvWrite,
    PagedAttention(AttentionParams),
    GatherLast,
    Argmax,
    Sample,
    LoraShrink,
    LoraExpand,
}

impl Op {
    pub fn name(&self) -> &'static str {
        match self {
            Op::Embedding => "embedding",
            Op::Linear => "linear",
            Op::RmsNorm { .. } => "rms_norm",
            Op::AddRmsNorm { .. } => "add_rms_norm",
            Op::Rope(_) => "rope",
            Op::SiluMul => "silu_mul",
            Op::Add => "add",
            Op::KvWrite => "kv_write",
            Op::PagedAttention(_) => "paged_attention",
            Op::GatherLast => "gather_last",
            Op::Argmax => "argmax",
            Op::Sample => "sample",
            Op::LoraShrink => "lora_shrink",
            Op::LoraExpand => "lora_expand",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub op: Op,
    pub inputs: Vec<ValueId>,
    pub outputs: Vec<ValueId>,
}

impl Node {
    /// For an op that updates an input in place: (output index, input index).
    pub fn alias(&self) -> Option<(usize, usize)> {
        match self.op {
            Op::KvWrite => Some((0, 0)),
            _ => None,
        }
    }
}

/// A graph under construction and, once `finish`ed, a checked one. Builder
/// methods record the first shape error instead of failing at each call, so
/// model code reads like the math; `finish` reports it.
#[derive(Clone, Debug, Default)]
pub struct Graph {
    pub values: Vec<Value>,
    pub nodes: Vec<Node>,
    pub inputs: Vec<ValueId>,
    pub state: Vec<ValueId>,
    pub outputs: Vec<ValueId>,
    error: Option<String>,
}

impl Graph {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn value(&self, v: ValueId) -> &Value {
        &self.values[v.0 as usize]
    }

    pub fn ty(&self, v: ValueId) -> &TensorType {
        &self.value(v).ty
    }

    fn shape(&self, v: ValueId) -> &[usize] {
        &self.ty(v).shape
    }

    fn push_value(&mut self, ty: TensorType, kind: ValueKind) -> ValueId {
        self.values.push(Value { ty, kind });
        ValueId(self.values.len() as u32 - 1)
    }

    pub fn input(&mut self, name: &str, dtype: DType, shape: Vec<usize>) -> ValueId {
        let v = self.push_value(TensorType::new(dtype, shape), ValueKind::Input(name.into()));
        self.inputs.push(v);
        v
    }

    pub fn state(&mut self, name: &str, dtype: DType, shape: Vec<usize>) -> ValueId {
        let v = self.push_value(TensorType::new(dtype, shape), ValueKind::State(name.into()));
        self.state.push(v);
        v
    }

    pub fn weight(&mut self, name: &str, dtype: DType, shape: Vec<usize>) -> ValueId {
        self.push_value(
            TensorType::new(dtype, shape),
            ValueKind::Weight(name.into()),
        )
    }

    pub fn output(&mut self, v: ValueId) {
        self.outputs.push(v);
    }

    fn fail(&mut self, msg: String) {
        if self.error.is_none() {
            self.error = Some(msg);
        }
    }

    fn check(&mut self, ok: bool, msg: impl FnOnce() -> String) {
        if !ok {
            let m = msg();
            self.fail(m);
        }
    }

    /// Appends `op` with the given output types, without the shape checks of
    /// the typed builders below (which model code should use). The conformance
    /// suite builds its one-op graphs with it.
    pub fn node(&mut self, op: Op, inputs: Vec<ValueId>, outs: Vec<TensorType>) -> Vec<ValueId> {
        let idx = self.nodes.len();
        let outputs: Vec<ValueId> = outs
            .into_iter()
            .enumerate()
            .map(|(i, ty)| self.push_value(ty, ValueKind::Node(idx, i)))
            .collect();
        self.nodes.push(Node {
            op,
            inputs,
            outputs: outputs.clone(),
        });
        outputs
    }

    fn node1(&mut self, op: Op, inputs: Vec<ValueId>, out: TensorType) -> ValueId {
        self.node(op, inputs, vec![out])[0]
    }

    pub fn embedding(&mut self, table: ValueId, ids: ValueId, act: DType) -> ValueId {
        let (ts, is) = (self.shape(table).to_vec(), self.shape(ids).to_vec());
        self.check(ts.len() == 2 && is.len() == 1, || {
            format!("embedding: table {ts:?}, ids {is:?}")
        });
        let shape = vec![
            is.first().copied().unwrap_or(0),
            ts.get(1).copied().unwrap_or(0),
        ];
        self.node1(Op::Embedding, vec![table, ids], TensorType::new(act, shape))
    }

    pub fn linear(&mut self, x: ValueId, w: ValueId, bias: Option<ValueId>) -> ValueId {
        let (xs, ws) = (self.shape(x).to_vec(), self.shape(w).to_vec());
        self.check(xs.len() == 2 && ws.len() == 2 && xs[1] == ws[1], || {
            format!("linear: x {xs:?}, w {ws:?}")
        });
        if let Some(b) = bias {
            let bs = self.shape(b).to_vec();
            self.check(bs == [ws[0]], || {
                format!("linear: bias {bs:?} for w {ws:?}")
            });
        }
        let dtype = self.ty(x).dtype;
        let mut inputs = vec![x, w];
        inputs.extend(bias);
        self.node1(
            Op::Linear,
            inputs,
            TensorType::new(dtype, vec![xs[0], ws[0]]),
        )
    }

    pub fn rms_norm(&mut self, x: ValueId, w: ValueId, eps: f32) -> ValueId {
        let (xs, ws) = (self.shape(x).to_vec(), self.shape(w).to_vec());
        self.check(xs.last() == ws.first() && ws.len() == 1, || {
            format!("rms_norm: x {xs:?}, w {ws:?}")
        });
        let ty = self.ty(x).clone();
        self.node1(Op::RmsNorm { eps }, vec![x, w], ty)
    }

    /// Returns `(norm(x + residual) * w, x + residual)`.
    pub fn add_rms_norm(
        &mut self,
        x: ValueId,
        residual: ValueId,
        w: ValueId,
        eps: f32,
    ) -> (ValueId, ValueId) {
        let (xs, rs) = (self.shape(x).to_vec(), self.shape(residual).to_vec());
        self.check(xs == rs, || {
            format!("add_rms_norm: x {xs:?}, residual {rs:?}")
        });
        let ty = self.ty(x).clone();
        let o = self.node(
            Op::AddRmsNorm { eps },
            vec![x, residual, w],
            vec![ty.clone(), ty],
        );
        (o[0], o[1])
    }

    pub fn rope(&mut self, x: ValueId, positions: ValueId, p: RopeParams) -> ValueId {
        let (xs, ps) = (self.shape(x).to_vec(), self.shape(positions).to_vec());
        self.check(
            xs.len() == 3 && xs[2] == p.head_dim && ps == [xs[0]],
            || format!("rope: x {xs:?}, positions {ps:?}"),
        );
        let ty = self.ty(x).clone();
        self.node1(Op::Rope(p), vec![x, positions], ty)
    }

    pub fn silu_mul(&mut self, gate: ValueId, up: ValueId) -> ValueId {
        let (gs, us) = (self.shape(gate).to_vec(), self.shape(up).to_vec());
        self.check(gs == us, || format!("silu_mul: gate {gs:?}, up {us:?}"));
        let ty = self.ty(gate).clone();
        self.node1(Op::SiluMul, vec![gate, up], ty)
    }

    pub fn add(&mut self, a: ValueId, b: ValueId) -> ValueId {
        let (as_, bs) = (self.shape(a).to_vec(), self.shape(b).to_vec());
        self.check(as_ == bs, || format!("add: {as_:?} + {bs:?}"));
        let ty = self.ty(a).clone();
        self.node1(Op::Add, vec![a, b], ty)
    }

    /// Views `x` with another shape of the same number of elements; no data moves.
    pub fn reshape(&mut self, x: ValueId, shape: Vec<usize>) -> ValueId {
        let xs = self.shape(x).to_vec();
        self.check(
            xs.iter().product::<usize>() == shape.iter().product::<usize>(),
            || format!("reshape {xs:?} to {shape:?}"),
        );
        let dtype = self.ty(x).dtype;
        self.push_value(TensorType::new(dtype, shape), ValueKind::Reshape(x))
    }

    pub fn kv_write(&mut self, cache: ValueId, new: ValueId, slots: ValueId) -> ValueId {
        let (cs, ns, ss) = (
            self.shape(cache).to_vec(),
            self.shape(new).to_vec(),
            self.shape(slots).to_vec(),
        );
        self.check(
            cs.len() == 4 && ns.len() == 3 && cs[1] == ns[1] && cs[3] == ns[2] && ss == [ns[0]],
            || format!("kv_write: cache {cs:?}, new {ns:?}, slots {ss:?}"),
        );
        let ty = self.ty(cache).clone();
        self.node1(Op::KvWrite, vec![cache, new, slots], ty)
    }

    #[allow(clippy::too_many_arguments)]
    pub fn paged_attention(
        &mut self,
        q: ValueId,
        k_cache: ValueId,
        v_cache: ValueId,
        query_start_loc: ValueId,
        seq_lens: ValueId,
        block_tables: ValueId,
        p: AttentionParams,
    ) -> ValueId {
        let (qs, ks) = (self.shape(q).to_vec(), self.shape(k_cache).to_vec());
        let (ls, bs) = (
            self.shape(seq_lens).to_vec(),
            self.shape(block_tables).to_vec(),
        );
        let qsl = self.shape(query_start_loc).to_vec();
        self.check(
            qs.len() == 3 && ks.len() == 4 && qs[2] == ks[3] && ks[1] > 0 && qs[1] % ks[1] == 0,
            || format!("paged_attention: q {qs:?}, cache {ks:?}"),
        );
        self.check(ls.len() == 1 && qsl == [ls[0] + 1] && bs.len() == 2 && bs[0] == ls[0], || {
            format!("paged_attention: query_start_loc {qsl:?}, seq_lens {ls:?}, block_tables {bs:?}")
        });
        let ty = self.ty(q).clone();
        self.node1(
            Op::PagedAttention(p),
            vec![q, k_cache, v_cache, query_start_loc, seq_lens, block_tables],
            ty,
        )
    }

    pub fn gather_last(&mut self, x: ValueId, query_start_loc: ValueId) -> ValueId {
        let (xs, qs) = (self.shape(x).to_vec(), self.shape(query_start_loc).to_vec());
        self.check(xs.len() == 2 && qs.len() == 1 && qs[0] >= 1, || {
            format!("gather_last: x {xs:?}, qsl {qs:?}")
        });
        let ty = TensorType::new(self.ty(x).dtype, vec![qs[0].saturating_sub(1), xs[1]]);
        self.node1(Op::GatherLast, vec![x, query_start_loc], ty)
    }

    pub fn argmax(&mut self, logits: ValueId) -> ValueId {
        let ls = self.shape(logits).to_vec();
        self.check(ls.len() == 2, || format!("argmax: logits {ls:?}"));
        self.node1(
            Op::Argmax,
            vec![logits],
            TensorType::new(DType::I32, vec![ls[0]]),
        )
    }

    pub fn sample(&mut self, logits: ValueId, temperature: ValueId, noise: ValueId) -> ValueId {
        let (ls, ts, ns) = (
            self.shape(logits).to_vec(),
            self.shape(temperature).to_vec(),
            self.shape(noise).to_vec(),
        );
        self.check(ls.len() == 2 && ts == [ls[0]] && ns == ls, || {
            format!("sample: logits {ls:?}, t {ts:?}, noise {ns:?}")
        });
        self.node1(
            Op::Sample,
            vec![logits, temperature, noise],
            TensorType::new(DType::I32, vec![ls[0]]),
        )
    }

    /// `a[idx[t]] · x[t]` per token: the first half of a LoRA delta.
    pub fn lora_shrink(&mut self, x: ValueId, a: ValueId, idx: ValueId) -> ValueId {
        let (xs, as_, is) = (
            self.shape(x).to_vec(),
            self.shape(a).to_vec(),
            self.shape(idx).to_vec(),
        );
        self.check(
            xs.len() == 2 && as_.len() == 3 && as_[2] == xs[1] && is == [xs[0]],
            || format!("lora_shrink: x {xs:?}, a {as_:?}, idx {is:?}"),
        );
        let dtype = self.ty(x).dtype;
        let r = as_.get(1).copied().unwrap_or(0);
        self.node1(
            Op::LoraShrink,
            vec![x, a, idx],
            TensorType::new(dtype, vec![xs[0], r]),
        )
    }

    /// `y[t] + b[idx[t]] · u[t]` per token: the second half of a LoRA delta.
    pub fn lora_expand(&mut self, y: ValueId, u: ValueId, b: ValueId, idx: ValueId) -> ValueId {
        let (ys, us, bs, is) = (
            self.shape(y).to_vec(),
            self.shape(u).to_vec(),
            self.shape(b).to_vec(),
            self.shape(idx).to_vec(),
        );
        self.check(
            ys.len() == 2
                && us.len() == 2
                && bs.len() == 3
                && us[0] == ys[0]
                && bs[1] == ys[1]
                && bs[2] == us[1]
                && is == [ys[0]],
            || format!("lora_expand: y {ys:?}, u {us:?}, b {bs:?}, idx {is:?}"),
        );
        let ty = self.ty(y).clone();
        self.node1(Op::LoraExpand, vec![y, u, b, idx], ty)
    }

    /// Checks the graph and returns it, or the first shape error.
    pub fn finish(mut self) -> Result<Graph> {
        if let Some(e) = self.error.take() {
            return Err(Error::invalid(e));
        }
        if self.outputs.is_empty() {
            return Err(Error::invalid("graph has no outputs"));
        }
        Ok(self)
    }
}
