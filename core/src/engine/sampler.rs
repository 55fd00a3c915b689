//! Chooses the next token of a sequence on the host, with everything vLLM's
//! sampling parameters do: repetition / presence / frequency penalties, logit
//! bias, `min_tokens` masking of end tokens, then greedy or temperature with
//! top-k / top-p / min-p, and log-probabilities of the raw logits.
//!
//! Randomness is a pure function of (seed, position): the draw depends only on
//! the logits, the parameters, the seed and the position, so a seeded request
//! draws the same tokens whatever batch it runs in. Which tokens survive
//! top-k / top-p / min-p is decided in the strict total order (value desc, id
//! asc), and the survivors are always drawn from in id order, so no selection
//! or sorting detail can change the token. The arithmetic uses no fused
//! multiply-add and no library `exp`, so results are the same on every CPU.
//!
//! Cost per call, for a vocabulary of V (no full sort anywhere): greedy is one
//! vectorised max pass; temperature sampling one vectorised exp pass; top-k a
//! few cheap counting passes, then work on about k candidates; top-p one exp
//! pass that also measures the mass above a few levels, a gathering pass for
//! the tokens above the level that must hold the nucleus, and a linear binning
//! of those (only the bin holding the nucleus edge is sorted); min-p one
//! gathering pass. Penalties touch only the tokens that occurred; logprobs add
//! a max pass and an exp pass (and counting passes for the top alternatives).

// Comparisons are written `!(x >= y)` on purpose where NaN must fail them, and
// the kernels index fixed-width chunks by lane, the form the compiler vectorises.
#![allow(clippy::neg_cmp_op_on_partial_ord, clippy::needless_range_loop)]

use crate::model::random::splitmix64;
use crate::{Error, Result};
use std::cell::Cell;

/// Most sequences one request may ask for (`n`).
pub const MAX_N: usize = 64;
/// Most top alternatives `logprobs` may ask for.
pub const MAX_LOGPROBS: usize = 20;
/// Largest magnitude of one logit bias.
pub const MAX_LOGIT_BIAS: f32 = 100.0;
/// Largest magnitude of the presence and frequency penalties.
pub const MAX_PRESENCE_FREQUENCY: f32 = 2.0;
/// Temperatures below this are greedy (as in vLLM).
pub const GREEDY_TEMPERATURE: f32 = 1e-5;

#[derive(Clone, Debug, PartialEq)]
pub struct SamplingParams {
    /// 0 (anything below [`GREEDY_TEMPERATURE`]) means greedy.
    pub temperature: f32,
    /// Nucleus sampling: keep the smallest head whose mass reaches `top_p`; 1 = off.
    pub top_p: f32,
    /// 0 means no limit.
    pub top_k: usize,
    /// Drop tokens whose probability is below `min_p` times the top one; 0 = off.
    pub min_p: f32,
    /// The request's seed; see [`choice_seed`] for its sequences when `n` > 1.
    pub seed: u64,
    /// Sequences to generate for the request (the sampler handles one at a time).
    pub n: usize,
    /// HF / vLLM semantics over prompt and output tokens: positive logits are
    /// divided by it, negative ones multiplied. 1 = off.
    pub repetition_penalty: f32,
    /// OpenAI semantics over output tokens: `logit -= presence * [count > 0]`.
    pub presence_penalty: f32,
    /// OpenAI semantics over output tokens: `logit -= frequency * count`.
    pub frequency_penalty: f32,
    /// (token, bias) added to the logits; repeated ids add up.
    pub logit_bias: Vec<(u32, f32)>,
    /// Most tokens to generate.
    pub max_tokens: usize,
    /// End tokens and `stop_token_ids` are masked until this many were generated.
    pub min_tokens: usize,
    /// Strings that end generation (see [`super::stop::StopMatcher`]).
    pub stop: Vec<String>,
    /// Tokens that end generation, besides the model's end tokens.
    pub stop_token_ids: Vec<u32>,
    /// Keep generating past the model's end tokens (the caller's loop acts on
    /// it; end tokens are then not masked for `min_tokens` either, as in vLLM).
    pub ignore_eos: bool,
    /// `Some(k)`: return the chosen token's log-probability and the top `k`
    /// alternatives (0..=20) of the raw logits.
    pub logprobs: Option<usize>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.0,
            top_p: 1.0,
            top_k: 0,
            min_p: 0.0,
            seed: 0,
            n: 1,
            repetition_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            logit_bias: Vec::new(),
            max_tokens: 256,
            min_tokens: 0,
            stop: Vec::new(),
            stop_token_ids: Vec::new(),
            ignore_eos: false,
            logprobs: None,
        }
    }
}

fn bad(msg: String) -> Result<()> {
    Err(Error::Request(msg))
}

impl SamplingParams {
    /// Checks every field that does not depend on the model; [`Self::validate`]
    /// does these checks and the ones that need the vocabulary and context size.
    pub fn validate_params(&self) -> Result<()> {
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return bad(format!(
                "temperature must be in [0, inf) and finite, got {}",
                self.temperature
            ));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad(format!("top_p must be in (0, 1], got {}", self.top_p));
        }
        if !(self.min_p >= 0.0 && self.min_p <= 1.0) {
            return bad(format!("min_p must be in [0, 1], got {}", self.min_p));
        }
        if !(self.repetition_penalty > 0.0 && self.repetition_penalty.is_finite()) {
            return bad(format!(
                "repetition_penalty must be in (0, inf) and finite (1 = off), got {}",
                self.repetition_penalty
            ));
        }
        let pf = MAX_PRESENCE_FREQUENCY;
        if !(self.presence_penalty >= -pf && self.presence_penalty <= pf) {
            return bad(format!(
                "presence_penalty must be in [-{pf}, {pf}], got {}",
                self.presence_penalty
            ));
        }
        if !(self.frequency_penalty >= -pf && self.frequency_penalty <= pf) {
            return bad(format!(
                "frequency_penalty must be in [-{pf}, {pf}], got {}",
                self.frequency_penalty
            ));
        }
        if self.n == 0 || self.n > MAX_N {
            return bad(format!("n must be in [1, {MAX_N}], got {}", self.n));
        }
        if self.max_tokens == 0 {
            return bad("max_tokens must be in [1, context length], got 0".into());
        }
        if self.min_tokens > self.max_tokens {
            return bad(format!(
                "min_tokens must be in [0, max_tokens = {}], got {}",
                self.max_tokens, self.min_tokens
            ));
        }
        let b = MAX_LOGIT_BIAS;
        for &(id, bias) in &self.logit_bias {
            if !(bias >= -b && bias <= b) {
                return bad(format!(
                    "logit_bias for token {id} must be in [-{b}, {b}], got {bias}"
                ));
            }
        }
        if let Some(k) = self.logprobs {
            if k > MAX_LOGPROBS {
                return bad(format!("logprobs must be in [0, {MAX_LOGPROBS}], got {k}"));
            }
        }
        if let Some(i) = self.stop.iter().position(|s| s.is_empty()) {
            return bad(format!("stop strings must not be empty (stop[{i}] is)"));
        }
        Ok(())
    }

    /// Every check of [`Self::validate_params`], plus token ids below
    /// `vocab_size` (`logit_bias`, `stop_token_ids`) and `max_tokens <= max_context`.
    /// Errors are `Error::Request` naming the field and its allowed range.
    pub fn validate(&self, vocab_size: usize, max_context: usize) -> Result<()> {
        self.validate_params()?;
        if self.max_tokens > max_context {
            return bad(format!(
                "max_tokens must be in [1, {max_context}] (the model's context), got {}",
                self.max_tokens
            ));
        }
        if let Some(&(id, _)) = self
            .logit_bias
            .iter()
            .find(|&&(id, _)| id as usize >= vocab_size)
        {
            return bad(format!(
                "logit_bias token ids must be in [0, {vocab_size}), got {id}"
            ));
        }
        if let Some(&id) = self
            .stop_token_ids
            .iter()
            .find(|&&id| id as usize >= vocab_size)
        {
            return bad(format!(
                "stop_token_ids must be in [0, {vocab_size}), got {id}"
            ));
        }
        Ok(())
    }

    fn is_greedy(&self) -> bool {
        // Also catches NaN.
        !(self.temperature >= GREEDY_TEMPERATURE)
    }
}

/// The seed of sequence `index` of a request with `n` sequences: the request's
/// seed for the first, independent streams for the others.
pub fn choice_seed(seed: u64, index: usize) -> u64 {
    if index == 0 {
        seed
    } else {
        splitmix64(seed ^ splitmix64(index as u64 ^ 0x5eed_5eed_5eed_5eed))
    }
}

/// Uniform in [0, 1) from (seed, position).
pub fn uniform(seed: u64, position: u64) -> f64 {
    let r = splitmix64(splitmix64(seed) ^ position.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    (r >> 11) as f64 / (1u64 << 53) as f64
}

/// Index of the largest logit (the first on ties; NaN never wins; 0 when none
/// is above -inf).
pub fn argmax(logits: &[f32]) -> u32 {
    max_index(logits).1
}

/// Picks the token for `position` with `p.seed`, from the logits alone: logit
/// bias and the distribution shaping (temperature, top-k, top-p, min-p) apply;
/// penalties and `min_tokens` need the token history, see [`sample_token`].
pub fn sample(logits: &[f32], p: &SamplingParams, position: u64) -> u32 {
    sample_token(&mut logits.to_vec(), p, &[], &[], &[], p.seed, position).token
}

#[derive(Clone, Debug, PartialEq)]
pub struct SampledToken {
    pub token: u32,
    /// log_softmax of the raw logits at `token`; NaN when `logprobs` is `None`.
    pub logprob: f32,
    /// The `logprobs` most likely tokens of the raw logits with their
    /// log-probabilities, most likely first (ties: lower id first).
    pub top_logprobs: Vec<(u32, f32)>,
}

/// Picks the next token of one sequence.
///
/// `logits`: the model's raw logits for this sequence; used as scratch: on return
/// they hold the processed logits (penalties, bias and masks applied, before
/// temperature). `prompt`/`output`: token ids so far. `eos_ids`: the model's end
/// tokens (masked, together with `stop_token_ids`, while `output.len() <
/// min_tokens`; end tokens not when `ignore_eos`). `seed`: the sequence's seed
/// (see [`choice_seed`]); `position`: index of the token being sampled in the
/// whole sequence.
///
/// Order: logprobs of the RAW logits are computed first (log_softmax of raw
/// logits, vLLM's default) for the chosen token and the top-N; then repetition /
/// presence / frequency penalties, logit bias, min_tokens masking, then greedy
/// (temperature 0) or temperature -> top-k -> top-p -> min-p -> a draw with
/// `uniform(seed, position)`.
///
/// Token ids at or beyond the vocabulary (in the history, bias or stop ids) are
/// ignored; nothing here panics on request data.
pub fn sample_token(
    logits: &mut [f32],
    p: &SamplingParams,
    prompt: &[u32],
    output: &[u32],
    eos_ids: &[u32],
    seed: u64,
    position: u64,
) -> SampledToken {
    if logits.is_empty() {
        return SampledToken {
            token: 0,
            logprob: f32::NAN,
            top_logprobs: Vec::new(),
        };
    }
    let raw = p
        .logprobs
        .map(|k| RawLogprobs::new(logits, k.min(MAX_LOGPROBS)));
    let mut ed = Edits {
        logits,
        saved: raw.as_ref().map(|_| Vec::new()),
    };
    with_scratch(|s| apply_penalties(&mut ed, p, prompt, output, &mut s.counts));
    for &(t, b) in &p.logit_bias {
        if b.is_finite() {
            ed.update(t, |x| x + b);
        }
    }
    if output.len() < p.min_tokens {
        if !p.ignore_eos {
            for &t in eos_ids {
                ed.update(t, |_| f32::NEG_INFINITY);
            }
        }
        for &t in &p.stop_token_ids {
            ed.update(t, |_| f32::NEG_INFINITY);
        }
    }
    let token = choose(ed.logits, p, seed, position);
    match raw {
        Some(raw) => SampledToken {
            token,
            logprob: raw.logprob(ed.original(token)),
            top_logprobs: raw.top,
        },
        None => SampledToken {
            token,
            logprob: f32::NAN,
            top_logprobs: Vec::new(),
        },
    }
}

/// In-place edits of the logits, remembering the original values when the
/// chosen token's raw logprob is wanted.
struct Edits<'a> {
    logits: &'a mut [f32],
    saved: Option<Vec<(u32, f32)>>,
}

impl Edits<'_> {
    fn update(&mut self, t: u32, f: impl FnOnce(f32) -> f32) {
        if let Some(x) = self.logits.get_mut(t as usize) {
            if let Some(s) = &mut self.saved {
                s.push((t, *x));
            }
            *x = f(*x);
        }
    }

    fn original(&self, t: u32) -> f32 {
        let first = self
            .saved
            .as_ref()
            .and_then(|s| s.iter().find(|e| e.0 == t).map(|e| e.1));
        first.unwrap_or_else(|| self.logits.get(t as usize).copied().unwrap_or(f32::NAN))
    }
}

fn apply_penalties(
    ed: &mut Edits,
    p: &SamplingParams,
    prompt: &[u32],
    output: &[u32],
    counts: &mut Vec<u32>,
) {
    let v = ed.logits.len();
    let rp = p.repetition_penalty;
    if rp != 1.0 && rp > 0.0 && rp.is_finite() {
        let mut seen = vec![0u64; v.div_ceil(64)];
        for &t in prompt.iter().chain(output) {
            let i = t as usize;
            if i >= v {
                continue;
            }
            let (w, bit) = (i / 64, 1u64 << (i % 64));
            if let Some(word) = seen.get_mut(w) {
                if *word & bit != 0 {
                    continue;
                }
                *word |= bit;
            }
            ed.update(t, |x| if x > 0.0 { x / rp } else { x * rp });
        }
    }
    let (pres, freq) = (p.presence_penalty, p.frequency_penalty);
    let pres = if pres.is_finite() { pres } else { 0.0 };
    let freq = if freq.is_finite() { freq } else { 0.0 };
    if pres == 0.0 && freq == 0.0 {
        return;
    }
    // Counts live in a zeroed per-thread buffer; each touched entry is reset.
    if counts.len() < v {
        counts.resize(v, 0);
    }
    for &t in output {
        if let Some(c) = counts.get_mut(t as usize).filter(|_| (t as usize) < v) {
            *c = c.saturating_add(1);
        }
    }
    for &t in output {
        let c = match counts.get_mut(t as usize) {
            Some(c) if *c > 0 => std::mem::take(c),
            _ => continue,
        };
        ed.update(t, |x| x - (freq * c as f32 + pres));
    }
}

/// log_softmax of the raw logits: their logsumexp and the top alternatives.
struct RawLogprobs {
    lse: f64,
    top: Vec<(u32, f32)>,
}

impl RawLogprobs {
    fn new(l: &[f32], k: usize) -> Self {
        with_scratch(|s| {
            let (m, _) = max_index(l);
            let lse = if m.is_finite() {
                m as f64 + weight_sums(l, m, LOG2_E, &mut s.sums).ln()
            } else {
                m as f64
            };
            let mut r = RawLogprobs {
                lse,
                top: Vec::new(),
            };
            if k == 0 {
                return r;
            }
            let mut top = Vec::new();
            if m.is_finite() {
                let bmin = top_k_level(l, m, LOG2_E, k, EXP2_MIN);
                let c = &mut s.cands;
                c.gather(l, m, LOG2_E, bmin);
                if c.n >= k {
                    c.keys(&mut s.keys);
                    top_k_keys(&mut s.keys, k);
                    s.keys.sort_unstable_by(|a, b| b.cmp(a));
                    top.extend(s.keys.iter().map(|&c| (key_id(c), key_value(c))));
                }
            }
            if top.is_empty() {
                top = top_k_scan(l, k);
            }
            for e in &mut top {
                e.1 = r.logprob(e.1);
            }
            r.top = top;
            r
        })
    }

    fn logprob(&self, x: f32) -> f32 {
        if x.is_nan() || x == f32::NEG_INFINITY {
            f32::NEG_INFINITY
        } else if self.lse == f64::INFINITY {
            if x == f32::INFINITY {
                0.0
            } else {
                f32::NEG_INFINITY
            }
        } else {
            (x as f64 - self.lse) as f32
        }
    }
}

/// The `k` best (value desc, id asc) of all non-NaN values, -inf included: a
/// plain scan for the rare case where fewer than `k` tokens lie within 2^126
/// of the top one.
fn top_k_scan(l: &[f32], k: usize) -> Vec<(u32, f32)> {
    let mut top: Vec<(u32, f32)> = Vec::with_capacity(k + 1);
    for (i, &x) in l.iter().enumerate() {
        if x.is_nan() {
            continue;
        }
        if top.len() < k || top.last().is_some_and(|&(_, y)| x > y) {
            // After equal values: ids ascend among ties.
            let at = top.partition_point(|&(_, y)| y >= x);
            top.insert(at, (i as u32, x));
            top.truncate(k);
        }
    }
    top
}

/// Greedy, or a draw from the shaped distribution.
fn choose(l: &[f32], p: &SamplingParams, seed: u64, position: u64) -> u32 {
    if p.is_greedy() || l.is_empty() {
        return argmax(l);
    }
    let u = uniform(seed, position);
    with_scratch(|s| draw(l, p, u, s))
}

// --- candidates -----------------------------------------------------------------
//
// Candidates are gathered in id order as parallel arrays (id, logit, weight).
// Where they must be ranked, a candidate becomes one u64 whose integer order is
// the rank order (value desc, then id asc): the value's order-preserving bits
// above the complemented id. Selection and sorting then compare plain
// integers, and since no two keys are equal the selected sets never depend on
// the algorithm.

#[derive(Default)]
struct Cands {
    /// Buffers at least as long as the vocabulary; the first `n` are in use.
    ids: Vec<u32>,
    vals: Vec<f32>,
    w: Vec<f32>,
    n: usize,
}

impl Cands {
    fn ids(&self) -> &[u32] {
        self.ids.get(..self.n).unwrap_or(&[])
    }

    fn vals(&self) -> &[f32] {
        self.vals.get(..self.n).unwrap_or(&[])
    }

    fn w(&self) -> &[f32] {
        self.w.get(..self.n).unwrap_or(&[])
    }

    fn reserve(&mut self, len: usize) {
        grow(&mut self.ids, len);
        grow(&mut self.vals, len);
        grow(&mut self.w, len);
    }

    /// The logits at level `bmin` or above, in id order.
    fn gather(&mut self, l: &[f32], m: f32, k2: f32, bmin: f32) {
        self.reserve(l.len());
        self.n = collect(l, m, k2, bmin, &mut self.ids, &mut self.vals);
    }

    /// Rank keys of the candidates.
    fn keys(&self, keys: &mut Vec<u64>) {
        keys.clear();
        keys.extend(
            self.ids()
                .iter()
                .zip(self.vals())
                .map(|(&id, &x)| rank_key(id, x)),
        );
    }

    /// Keeps the `k` best, in id order.
    fn top_k(&mut self, k: usize, keys: &mut Vec<u64>) {
        if self.n <= k {
            return;
        }
        self.keys(keys);
        top_k_keys(keys, k);
        keys.sort_unstable_by_key(|&c| key_id(c));
        let mut n = 0;
        for (&c, (id, x)) in keys
            .iter()
            .zip(self.ids.iter_mut().zip(self.vals.iter_mut()))
        {
            *id = key_id(c);
            *x = key_value(c);
            n += 1;
        }
        self.n = n;
    }

    fn weigh(&mut self, m: f32, k2: f32) {
        let n = self.n.min(self.vals.len()).min(self.w.len());
        if let (Some(v), Some(w)) = (self.vals.get(..n), self.w.get_mut(..n)) {
            weights(v, m, k2, w);
        }
    }
}

/// Lengthens a buffer (never shortens it; what it holds stays).
fn grow<T: Copy + Default>(v: &mut Vec<T>, len: usize) {
    if v.len() < len {
        v.resize(len, T::default());
    }
}

/// Order-preserving bits of a non-NaN float.
#[inline(always)]
fn ord_bits(x: f32) -> u32 {
    let b = x.to_bits();
    if b >> 31 == 1 {
        !b
    } else {
        b | 0x8000_0000
    }
}

#[inline(always)]
fn rank_key(id: u32, x: f32) -> u64 {
    ((ord_bits(x) as u64) << 32) | (u32::MAX - id) as u64
}

#[inline(always)]
fn key_id(k: u64) -> u32 {
    u32::MAX - k as u32
}

#[inline(always)]
fn key_value(k: u64) -> f32 {
    let o = (k >> 32) as u32;
    f32::from_bits(if o >> 31 == 1 { o & 0x7fff_ffff } else { !o })
}

/// Keeps the `k` best keys (in no particular order).
fn top_k_keys(keys: &mut Vec<u64>, k: usize) {
    if k > 0 && keys.len() > k {
        keys.select_nth_unstable_by(k - 1, |a, b| b.cmp(a));
        keys.truncate(k);
    }
}

/// A level (log2 of relative probability) below which no token can weigh `w`
/// or more: below log2(w) by far more than the error of `exp2_neg`.
fn safe_level(w: f32) -> f32 {
    if !(w > 0.0) {
        return EXP2_MIN;
    }
    let b = w.min(1.0).log2();
    (b - 1e-3 - 1e-4 * b.abs()).max(EXP2_MIN)
}

/// A level with at least `k` tokens at or above it (or `lower` when even that
/// has fewer), and not many more: tries -1, -2, -4, ... with cheap counting
/// passes, then narrows the last step by bisection.
fn top_k_level(l: &[f32], m: f32, k2: f32, k: usize, lower: f32) -> f32 {
    let mut hi = 0.0f32; // fewer than k at or above (when k > 1)
    let mut b = -1.0f32;
    loop {
        if b <= lower {
            b = lower;
            if count_at_least(l, m, k2, b) < k {
                return lower;
            }
            break;
        }
        if count_at_least(l, m, k2, b) >= k {
            break;
        }
        hi = b;
        b *= 2.0;
    }
    // count(b) >= k > count(hi): narrow while the bracket is wide.
    for _ in 0..4 {
        if hi - b < 0.5 {
            break;
        }
        let mid = 0.5 * (hi + b);
        if count_at_least(l, m, k2, mid) >= k {
            b = mid;
        } else {
            hi = mid;
        }
    }
    b
}

/// The lowest-ranked token of the nucleus as (value, id): the shortest
/// rank-order prefix of the (weighed) candidates whose weight reaches `target`;
/// `None`, keeping all, when none does. Linear: weights are binned by level (a
/// quarter bit per bin, so bins are contiguous in rank), and only the bin that
/// holds the edge is sorted.
fn nucleus_edge(
    c: &Cands,
    m: f32,
    k2: f32,
    target: f64,
    bins: &mut Vec<f64>,
    edge_bins: &mut Vec<u16>,
    edge: &mut Vec<u64>,
) -> Option<(f32, u32)> {
    let n = c.n.min(c.vals.len());
    let vals = c.vals.get(..n).unwrap_or(&[]);
    let bin_of = edge_bins;
    bin_of.clear();
    bin_of.resize(n, 0);
    bin_levels(vals, m, k2, bin_of);
    // Four interleaved sets of bins, so runs of equal values do not wait on
    // each other's additions.
    bins.clear();
    bins.resize(4 * BINS, 0.0);
    for (i, (&b, &w)) in bin_of.iter().zip(c.w()).enumerate() {
        if let Some(s) = bins.get_mut((i & 3) * BINS + b as usize) {
            *s += w as f64;
        }
    }
    let mut acc = 0.0f64;
    let mut edge_bin = None;
    for i in 0..BINS {
        let ms = (0..4)
            .map(|r| bins.get(r * BINS + i).copied().unwrap_or(0.0))
            .sum::<f64>();
        if acc + ms >= target {
            edge_bin = Some(i as u16);
            break;
        }
        acc += ms;
    }
    let eb = edge_bin?;
    edge.clear();
    edge.extend(
        c.ids()
            .iter()
            .zip(vals)
            .zip(bin_of.iter())
            .filter(|&(_, &b)| b == eb)
            .map(|((&id, &x), _)| rank_key(id, x)),
    );
    edge.sort_unstable_by(|a, b| b.cmp(a));
    let mut last = None;
    for &k in edge.iter() {
        acc += weight(key_value(k), m, k2, 0.0) as f64;
        last = Some((key_value(k), key_id(k)));
        if acc >= target {
            break;
        }
    }
    // (Rounding: the bin's sum may reach the target where its terms one by one
    // do not; then the whole bin is kept.)
    last
}

/// Draws with `u` from `ids` with their `weights`, in order: block sums
/// first, then the block that holds the draw.
fn draw_from(ids: &[u32], weights: &[f32], u: f64, fallback: u32) -> u32 {
    let block_sum = |b: &[f32]| {
        let mut a = [0.0f32; LANES];
        for (aj, &w) in a.iter_mut().zip(b) {
            *aj = w;
        }
        tree_sum(a) as f64
    };
    let total: f64 = weights.chunks(LANES).map(block_sum).sum();
    if !(total > 0.0) {
        return fallback;
    }
    let target = u * total;
    let mut acc = 0.0f64;
    for (bi, b) in weights.chunks(LANES).enumerate() {
        let bs = block_sum(b);
        if target < acc + bs {
            let mut last = None;
            for (j, &w) in b.iter().enumerate() {
                if w > 0.0 {
                    acc += w as f64;
                    last = Some(j);
                    if target < acc {
                        break;
                    }
                }
            }
            return last
                .and_then(|j| ids.get(bi * LANES + j))
                .copied()
                .unwrap_or(fallback);
        }
        acc += bs;
    }
    fallback
}

/// The draw. The kept tokens are always scanned in id order, so only the set
/// that temperature / top-k / top-p / min-p keep matters, never how it was found.
fn draw(l: &[f32], p: &SamplingParams, u: f64, s: &mut Scratch) -> u32 {
    let v = l.len();
    let (m, first_max) = max_index(l);
    if !m.is_finite() {
        // All masked (or an infinite logit): nothing to draw from.
        return first_max;
    }
    // Levels are log2 of the probability relative to the top token.
    let k2 = (1.0 / p.temperature) * LOG2_E;
    let k_on = p.top_k > 0 && p.top_k < v;
    let p_on = p.top_p < 1.0; // false for NaN
    let top_p = p.top_p.max(0.0) as f64;
    let min_p = if p.min_p > 0.0 { p.min_p.min(1.0) } else { 0.0 };

    if !k_on && !p_on && min_p == 0.0 {
        // The whole vocabulary: one exp pass keeping per-group sums, then only
        // the group that holds the draw is recomputed.
        let total = weight_sums(l, m, k2, &mut s.sums);
        if !(total > 0.0) {
            return first_max;
        }
        let target = u * total;
        let mut acc = 0.0f64;
        for (gi, &gs) in s.sums.iter().enumerate() {
            if target < acc + gs {
                let lo = gi * GROUP;
                let group = l.get(lo..(lo + GROUP).min(v)).unwrap_or(&[]);
                let mut last = None;
                for (j, &x) in group.iter().enumerate() {
                    let w = weight(x, m, k2, 0.0);
                    if w > 0.0 {
                        last = Some(j);
                        acc += w as f64;
                        if target < acc {
                            return (lo + j) as u32;
                        }
                    }
                }
                return last.map_or(first_max, |j| (lo + j) as u32);
            }
            acc += gs;
        }
        return first_max;
    }

    // Gather a superset of the survivors (in id order), cut it to the kept set.
    let min_p_level = safe_level(min_p);
    let c = &mut s.cands;
    let mut edge = None;
    if k_on {
        // min-p may bound the gathering unless top-p needs the mass of the
        // whole top-k set.
        let lower = if p_on { EXP2_MIN } else { min_p_level };
        let bmin = top_k_level(l, m, k2, p.top_k, lower);
        c.gather(l, m, k2, bmin);
        c.top_k(p.top_k, &mut s.keys);
        c.weigh(m, k2);
        if p_on {
            let z: f64 = c.w().iter().map(|&w| w as f64).sum();
            edge = nucleus_edge(c, m, k2, top_p * z, &mut s.sums, &mut s.bins, &mut s.keys);
        }
    } else if p_on {
        // The nucleus lies at or above the highest of `MASS_LEVELS` whose mass
        // reaches top_p (with a margin for rounding); failing that, inside
        // {w >= (1 - top_p) Z / V}, since all tokens outside that set together
        // weigh under (1 - top_p) Z.
        let (z, mass) = mass_above(l, m, k2);
        let need = top_p * z + 1e-4 * z;
        let floor = ((1.0 - top_p) * z / v as f64).min(1.0) as f32;
        let bmin = MASS_LEVELS
            .iter()
            .zip(mass)
            .find(|&(_, ms)| ms >= need)
            .map_or(safe_level(floor), |(&b, _)| b)
            .max(min_p_level);
        c.gather(l, m, k2, bmin);
        c.weigh(m, k2);
        edge = nucleus_edge(c, m, k2, top_p * z, &mut s.sums, &mut s.bins, &mut s.keys);
    } else {
        c.gather(l, m, k2, min_p_level);
        c.weigh(m, k2);
    }
    // Zero what lies past the nucleus edge or under min-p; draw in id order.
    let n = c.n.min(c.w.len());
    let (ids, vals, w) = (&c.ids, &c.vals, &mut c.w[..n]);
    for ((wi, &id), &x) in w.iter_mut().zip(ids).zip(vals) {
        let inside = edge.is_none_or(|(ve, ie)| x > ve || (x == ve && id <= ie));
        if !(inside && *wi >= min_p) {
            *wi = 0.0;
        }
    }
    draw_from(c.ids(), c.w(), u, first_max)
}

// --- kernels ----------------------------------------------------------------
//
// Plain loops over fixed-width chunks that the compiler vectorises. They use
// only +, -, *, comparisons and bit operations (never fused multiply-add), so
// every CPU and every instruction set gives bit-identical results; on x86-64
// with AVX2 a copy compiled for it is picked at run time.

const LANES: usize = 16;
/// Logits per stored partial sum of the id-order draw.
const GROUP: usize = 256;
const LOG2_E: f32 = std::f32::consts::LOG2_E;
/// Below this level `exp2_neg` returns 0 (the result would be subnormal).
const EXP2_MIN: f32 = -126.0;

/// 2^b for b <= 0, within ~2e-7 relative; 0 for b < -126 and for NaN.
#[inline(always)]
fn exp2_neg(b: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0; // 1.5 * 2^23: adding it rounds to an integer
    let x = b.clamp(EXP2_MIN, 0.0);
    let t = x + MAGIC;
    let n = t - MAGIC;
    let ni = (t.to_bits() as i32).wrapping_sub(0x4b40_0000);
    // f in [-0.5, 0.5]; 2^f by its Taylor series to degree 6 (error < 1.2e-7).
    let f = x - n;
    let mut y = 1.540_353_1e-4f32;
    y = y * f + 1.333_355_8e-3;
    y = y * f + 9.618_129e-3;
    y = y * f + 5.550_411e-2;
    y = y * f + 2.402_265e-1;
    y = y * f + 6.931_472e-1;
    y = y * f + 1.0;
    let scale = f32::from_bits((ni.wrapping_add(127) as u32) << 23);
    if b >= EXP2_MIN {
        y * scale
    } else {
        0.0
    }
}

/// log2 of the probability of logit `x` relative to the top logit `m`, with
/// `k2` = log2(e) / temperature.
#[inline(always)]
fn level(x: f32, m: f32, k2: f32) -> f32 {
    (x - m) * k2
}

/// Probability of logit `x` relative to the top one (1 for `m`), 0 below `floor`.
#[inline(always)]
fn weight(x: f32, m: f32, k2: f32, floor: f32) -> f32 {
    let w = exp2_neg(level(x, m, k2));
    if w >= floor {
        w
    } else {
        0.0
    }
}

#[inline(always)]
fn tree_sum(w: [f32; LANES]) -> f32 {
    let mut s8 = [0.0f32; 8];
    for j in 0..8 {
        s8[j] = w[j] + w[j + 8];
    }
    let mut s4 = [0.0f32; 4];
    for j in 0..4 {
        s4[j] = s8[j] + s8[j + 4];
    }
    (s4[0] + s4[2]) + (s4[1] + s4[3])
}

/// Sum of the weights of one group (up to `GROUP` logits), in lanes.
#[inline(always)]
fn group_sum(g: &[f32], m: f32, k2: f32) -> f32 {
    let mut acc = [0.0f32; LANES];
    let mut it = g.chunks_exact(LANES);
    for c in &mut it {
        for j in 0..LANES {
            acc[j] += weight(c[j], m, k2, 0.0);
        }
    }
    for (a, &x) in acc.iter_mut().zip(it.remainder()) {
        *a += weight(x, m, k2, 0.0);
    }
    tree_sum(acc)
}

/// Sum of the weights; `sums` gets the sum of each group of `GROUP` logits.
#[inline(always)]
fn weight_sums_impl(l: &[f32], m: f32, k2: f32, sums: &mut Vec<f64>) -> f64 {
    sums.clear();
    sums.reserve(l.len().div_ceil(GROUP));
    let mut total = 0.0f64;
    for g in l.chunks(GROUP) {
        let s = group_sum(g, m, k2) as f64;
        sums.push(s);
        total += s;
    }
    total
}

/// `w[i]` = the weight of `vals[i]`.
#[inline(always)]
fn weights_impl(vals: &[f32], m: f32, k2: f32, w: &mut [f32]) {
    for (wi, &x) in w.iter_mut().zip(vals) {
        *wi = weight(x, m, k2, 0.0);
    }
}

/// Bins of a quarter bit of level, for [`nucleus_edge`].
const PER_BIT: f32 = 4.0;
const BINS: usize = 128 * PER_BIT as usize;

/// `out[i]` = the bin of `vals[i]`: its level below the top in quarter bits.
#[inline(always)]
fn bin_levels_impl(vals: &[f32], m: f32, k2: f32, out: &mut [u16]) {
    for (o, &x) in out.iter_mut().zip(vals) {
        *o = (-level(x, m, k2) * PER_BIT).clamp(0.0, (BINS - 1) as f32) as u16;
    }
}

/// Levels at which [`mass_above`] measures the mass (log2 relative to the top).
const MASS_LEVELS: [f32; 6] = [-1.0, -2.5, -5.0, -8.0, -12.0, -17.0];

/// The sum of all weights, and the sums of the weights at or above each of
/// `MASS_LEVELS`. (Written stage by stage over fixed-width chunks: the form the
/// compiler vectorises.)
#[inline(always)]
fn mass_above_impl(l: &[f32], m: f32, k2: f32) -> (f64, [f64; 6]) {
    let mut total = 0.0f64;
    let mut mass = [0.0f64; 6];
    for g in l.chunks(GROUP) {
        let mut acc = [[0.0f32; LANES]; 7];
        let mut it = g.chunks_exact(LANES);
        for c in &mut it {
            let mut b = [0.0f32; LANES];
            let mut w = [0.0f32; LANES];
            for j in 0..LANES {
                b[j] = level(c[j], m, k2);
            }
            for j in 0..LANES {
                w[j] = exp2_neg(b[j]);
            }
            for j in 0..LANES {
                acc[0][j] += w[j];
            }
            for t in 0..6 {
                let lt = MASS_LEVELS[t];
                for j in 0..LANES {
                    let keep = 0u32.wrapping_sub((b[j] >= lt) as u32);
                    acc[t + 1][j] += f32::from_bits(w[j].to_bits() & keep);
                }
            }
        }
        for (j, &x) in it.remainder().iter().enumerate() {
            let b = level(x, m, k2);
            let w = exp2_neg(b);
            acc[0][j] += w;
            for t in 0..6 {
                let keep = 0u32.wrapping_sub((b >= MASS_LEVELS[t]) as u32);
                acc[t + 1][j] += f32::from_bits(w.to_bits() & keep);
            }
        }
        total += tree_sum(acc[0]) as f64;
        for t in 0..6 {
            mass[t] += tree_sum(acc[t + 1]) as f64;
        }
    }
    (total, mass)
}

/// The largest value (NaN ignored; -inf for none) and the first index holding
/// it (0 when no value is above -inf).
#[inline(always)]
fn max_index_impl(l: &[f32]) -> (f32, u32) {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let mut it = l.chunks_exact(LANES);
    for c in &mut it {
        for j in 0..LANES {
            acc[j] = if c[j] > acc[j] { c[j] } else { acc[j] };
        }
    }
    let mut m = f32::NEG_INFINITY;
    for &x in acc.iter().chain(it.remainder()) {
        if x > m {
            m = x;
        }
    }
    if !(m > f32::NEG_INFINITY) {
        return (m, 0);
    }
    // Skip whole chunks that do not hold it, then find it in the first that does.
    let mut base = 0usize;
    for c in l.chunks_exact(LANES) {
        let mut any = false;
        for j in 0..LANES {
            any |= c[j] == m;
        }
        if any {
            break;
        }
        base += LANES;
    }
    let at = l
        .get(base..)
        .and_then(|r| r.iter().position(|&x| x == m))
        .map_or(0, |p| base + p);
    (m, at as u32)
}

/// How many logits lie at level `bmin` or above.
#[inline(always)]
fn count_at_least_impl(l: &[f32], m: f32, k2: f32, bmin: f32) -> usize {
    l.iter()
        .map(|&x| (level(x, m, k2) >= bmin) as u32)
        .sum::<u32>() as usize
}

/// Writes the ids and values of the logits at level `bmin` or above, in id
/// order, to the front of `ids` and `vals` (as many as fit); returns how many.
#[inline(always)]
fn collect_impl(l: &[f32], m: f32, k2: f32, bmin: f32, ids: &mut [u32], vals: &mut [f32]) -> usize {
    let cap = ids.len().min(vals.len());
    let mut n = 0usize;
    let mut it = l.chunks_exact(LANES);
    let mut base = 0u32;
    for c in &mut it {
        let mut any = false;
        for j in 0..LANES {
            any |= level(c[j], m, k2) >= bmin;
        }
        if any {
            let mut hits = 0u32;
            for j in 0..LANES {
                hits |= ((level(c[j], m, k2) >= bmin) as u32) << j;
            }
            while hits != 0 && n < cap {
                let j = hits.trailing_zeros() as usize;
                hits &= hits - 1;
                ids[n] = base + j as u32;
                vals[n] = c[j];
                n += 1;
            }
        }
        base = base.wrapping_add(LANES as u32);
    }
    for (j, &x) in it.remainder().iter().enumerate() {
        if n < cap {
            ids[n] = base + j as u32;
            vals[n] = x;
            n += (level(x, m, k2) >= bmin) as usize;
        }
    }
    n
}

/// Defines `name(args)` calling `imp(args)`, through a copy compiled for AVX2
/// when the CPU has it (same results, wider vectors).
macro_rules! dispatch {
    ($(fn $name:ident($($arg:ident: $ty:ty),*) -> $ret:ty = $imp:ident;)*) => {$(
        #[inline]
        fn $name($($arg: $ty),*) -> $ret {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2")]
                fn avx2($($arg: $ty),*) -> $ret {
                    $imp($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx2") {
                    // SAFETY: the CPU supports AVX2, checked just above.
                    return unsafe { avx2($($arg),*) };
                }
            }
            $imp($($arg),*)
        }
    )*};
}

dispatch! {
    fn weight_sums(l: &[f32], m: f32, k2: f32, sums: &mut Vec<f64>) -> f64 = weight_sums_impl;
    fn weights(vals: &[f32], m: f32, k2: f32, w: &mut [f32]) -> () = weights_impl;
    fn bin_levels(vals: &[f32], m: f32, k2: f32, out: &mut [u16]) -> () = bin_levels_impl;
    fn mass_above(l: &[f32], m: f32, k2: f32) -> (f64, [f64; 6]) = mass_above_impl;
    fn max_index(l: &[f32]) -> (f32, u32) = max_index_impl;
    fn count_at_least(l: &[f32], m: f32, k2: f32, bmin: f32) -> usize = count_at_least_impl;
    fn collect(l: &[f32], m: f32, k2: f32, bmin: f32, ids: &mut [u32], vals: &mut [f32]) -> usize = collect_impl;
}

// --- per-thread scratch -------------------------------------------------------

#[derive(Default)]
struct Scratch {
    cands: Cands,
    bins: Vec<u16>,
    keys: Vec<u64>,
    sums: Vec<f64>,
    /// All zero between calls.
    counts: Vec<u32>,
}

thread_local! {
    static SCRATCH: Cell<Scratch> = Cell::new(Scratch::default());
}

/// Runs `f` with this thread's scratch buffers (a fresh set if they are in use
/// or the thread is shutting down).
fn with_scratch<R>(f: impl FnOnce(&mut Scratch) -> R) -> R {
    let mut s = SCRATCH.try_with(Cell::take).unwrap_or_default();
    let r = f(&mut s);
    let _ = SCRATCH.try_with(|c| c.set(s));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(t: f32, seed: u64) -> SamplingParams {
        SamplingParams {
            temperature: t,
            seed,
            ..Default::default()
        }
    }

    fn log_softmax(l: &[f32]) -> Vec<f64> {
        let m = l.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
        let s: f64 = l.iter().map(|&x| (x as f64 - m).exp()).sum();
        l.iter().map(|&x| x as f64 - m - s.ln()).collect()
    }

    fn softmax(l: &[f32], t: f32) -> Vec<f64> {
        let z: Vec<f32> = l.iter().map(|&x| x / t).collect();
        log_softmax(&z).into_iter().map(f64::exp).collect()
    }

    /// A fixed pseudo-random vocabulary of logits.
    fn random_logits(v: usize, seed: u64, scale: f32) -> Vec<f32> {
        (0..v)
            .map(|i| (uniform(seed, i as u64) as f32 - 0.5) * scale)
            .collect()
    }

    fn counts_of(logits: &[f32], p: &SamplingParams, draws: u64, v: usize) -> Vec<u64> {
        let mut c = vec![0u64; v];
        for i in 0..draws {
            let mut l = logits.to_vec();
            let t = sample_token(&mut l, p, &[], &[], &[], p.seed, i).token;
            c[t as usize] += 1;
        }
        c
    }

    fn chi_square(counts: &[u64], probs: &[f64]) -> f64 {
        let n: u64 = counts.iter().sum();
        counts
            .iter()
            .zip(probs)
            .filter(|(_, &p)| p > 0.0)
            .map(|(&c, &p)| {
                let e = p * n as f64;
                (c as f64 - e).powi(2) / e
            })
            .sum()
    }

    #[test]
    fn exp2_neg_is_accurate() {
        let mut worst = 0.0f64;
        for i in 0..=400_000 {
            let b = -126.0 * i as f32 / 400_000.0;
            let want = (b as f64).exp2();
            let got = exp2_neg(b) as f64;
            worst = worst.max((got - want).abs() / want);
        }
        assert!(worst < 3e-7, "{worst}");
        assert_eq!(exp2_neg(0.0), 1.0);
        assert_eq!(exp2_neg(-1.0), 0.5);
        assert_eq!(exp2_neg(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp2_neg(-126.5), 0.0);
        assert_eq!(exp2_neg(f32::NAN), 0.0);
    }

    #[test]
    fn kernels_match_plain_code_and_every_instruction_set() {
        for v in [0usize, 1, 5, 16, 17, 100, 4099] {
            let mut l = random_logits(v, v as u64, 40.0);
            if v > 3 {
                l[1] = f32::NAN;
                l[2] = f32::NEG_INFINITY;
            }
            let (m, i) = max_index_impl(&l);
            let naive =
                l.iter().enumerate().fold(
                    (0, f32::NEG_INFINITY),
                    |b, (i, &x)| if x > b.1 { (i, x) } else { b },
                );
            assert_eq!((m, i as usize), (naive.1, naive.0), "v={v}");
            if v == 0 {
                continue;
            }
            let k2 = LOG2_E / 0.7;
            let mut sums = Vec::new();
            let total = weight_sums_impl(&l, m, k2, &mut sums);
            let plain: f64 = l.iter().map(|&x| weight(x, m, k2, 0.0) as f64).sum();
            assert!((total - plain).abs() <= 1e-6 * plain, "{total} {plain}");
            assert_eq!(sums.len(), v.div_ceil(GROUP));
            let (z, mass) = mass_above_impl(&l, m, k2);
            let plain: f64 = l.iter().map(|&x| weight(x, m, k2, 0.0) as f64).sum();
            assert!((z - plain).abs() <= 1e-6 * plain, "{z} {plain}");
            for (&b, &ms) in MASS_LEVELS.iter().zip(&mass) {
                let plain: f64 = l
                    .iter()
                    .filter(|&&x| level(x, m, k2) >= b)
                    .map(|&x| weight(x, m, k2, 0.0) as f64)
                    .sum();
                assert!(
                    (ms - plain).abs() <= 1e-6 * plain.max(1e-30),
                    "{ms} {plain}"
                );
            }
            let (z2, mass2) = mass_above(&l, m, k2);
            assert_eq!(
                (z2.to_bits(), mass2.map(f64::to_bits)),
                (z.to_bits(), mass.map(f64::to_bits))
            );
            let n = count_at_least_impl(&l, m, k2, -3.0);
            assert_eq!(n, l.iter().filter(|&&x| level(x, m, k2) >= -3.0).count());
            let (mut ids, mut vals) = (vec![0u32; v], vec![0.0f32; v]);
            let n = collect_impl(&l, m, k2, -3.0, &mut ids, &mut vals);
            ids.truncate(n);
            vals.truncate(n);
            let want: Vec<(u32, f32)> = l
                .iter()
                .enumerate()
                .filter(|&(_, &x)| level(x, m, k2) >= -3.0)
                .map(|(i, &x)| (i as u32, x))
                .collect();
            let got: Vec<(u32, f32)> = ids.iter().copied().zip(vals.iter().copied()).collect();
            assert_eq!(got, want);
            for &(id, x) in &got {
                assert_eq!(
                    (key_id(rank_key(id, x)), key_value(rank_key(id, x))),
                    (id, x)
                );
            }
            let mut w = vec![0.0; vals.len()];
            weights_impl(&vals, m, k2, &mut w);
            let mut w2 = vec![0.0; vals.len()];
            weights(&vals, m, k2, &mut w2);
            assert_eq!(w, w2);
            assert!(w
                .iter()
                .zip(&vals)
                .all(|(&wi, &x)| wi == weight(x, m, k2, 0.0)));
            // The dispatched (possibly AVX2) versions give identical bits.
            let mut sums2 = Vec::new();
            assert_eq!(
                weight_sums(&l, m, k2, &mut sums2).to_bits(),
                total.to_bits()
            );
            assert_eq!(sums, sums2);
            assert_eq!(max_index(&l), (m, i));
            assert_eq!(count_at_least(&l, m, k2, -3.0), n);
            let (mut ids2, mut vals2) = (vec![0u32; v], vec![0.0f32; v]);
            let n2 = collect(&l, m, k2, -3.0, &mut ids2, &mut vals2);
            ids2.truncate(n2);
            vals2.truncate(n2);
            assert_eq!((ids, vals), (ids2, vals2));
        }
    }

    #[test]
    fn greedy_is_argmax_and_seeded_draws_repeat() {
        let logits = [0.1, 2.0, 1.9, -1.0];
        assert_eq!(sample(&logits, &SamplingParams::default(), 0), 1);
        let p = temp(1.0, 7);
        let a: Vec<u32> = (0..50).map(|i| sample(&logits, &p, i)).collect();
        let b: Vec<u32> = (0..50).map(|i| sample(&logits, &p, i)).collect();
        assert_eq!(a, b);
        assert!(
            a.contains(&2),
            "temperature 1 must sometimes pick the runner-up"
        );
    }

    #[test]
    fn argmax_ties_nan_and_long_vectors() {
        assert_eq!(argmax(&[]), 0);
        assert_eq!(argmax(&[f32::NEG_INFINITY; 3]), 0);
        assert_eq!(argmax(&[f32::NAN, 1.0, f32::NAN, 1.0]), 1);
        let mut l = random_logits(49_152, 3, 10.0);
        l[40_001] = 50.0;
        l[40_007] = 50.0;
        assert_eq!(argmax(&l), 40_001);
        let naive =
            l.iter().enumerate().fold(
                (0, f32::NEG_INFINITY),
                |b, (i, &x)| if x > b.1 { (i, x) } else { b },
            );
        assert_eq!(argmax(&l) as usize, naive.0);
        let mut g = l.clone();
        let t = sample_token(&mut g, &SamplingParams::default(), &[], &[], &[], 0, 0);
        assert_eq!(t.token, 40_001);
        assert!(t.logprob.is_nan() && t.top_logprobs.is_empty());
    }

    #[test]
    fn repetition_penalty_divides_positive_and_multiplies_negative() {
        let p = SamplingParams {
            repetition_penalty: 2.0,
            ..Default::default()
        };
        let mut l = [2.0f32, -1.0, 0.5, 3.0, 0.0];
        // Token 0 in the prompt, 1 twice in the output, 4 (zero) in the output,
        // 99 out of range: ignored.
        sample_token(&mut l, &p, &[0, 99], &[1, 1, 4], &[], 0, 0);
        assert_eq!(l, [1.0, -2.0, 0.5, 3.0, 0.0]);
    }

    #[test]
    fn presence_and_frequency_penalties_count_output_only() {
        let p = SamplingParams {
            presence_penalty: 0.5,
            frequency_penalty: 0.25,
            ..Default::default()
        };
        let mut l = [1.0f32, 1.0, 1.0, 1.0];
        sample_token(&mut l, &p, &[3, 3], &[2, 2, 1, 2], &[], 0, 0);
        // token 2: 1 - 0.5 - 3 * 0.25; token 1: 1 - 0.5 - 0.25; prompt token 3 untouched.
        assert_eq!(l, [1.0, 0.25, -0.25, 1.0]);
        // The per-thread counts are left zeroed: a second call gives the same.
        let mut l2 = [1.0f32, 1.0, 1.0, 1.0];
        sample_token(&mut l2, &p, &[3, 3], &[2, 2, 1, 2], &[], 0, 0);
        assert_eq!(l2, l);
        // Negative penalties encourage repeats.
        let p = SamplingParams {
            presence_penalty: -1.0,
            frequency_penalty: -0.5,
            ..Default::default()
        };
        let mut l = [1.0f32, 1.5];
        let t = sample_token(&mut l, &p, &[], &[0, 0], &[], 0, 0);
        assert_eq!((t.token, l), (0, [3.0, 1.5]));
    }

    #[test]
    fn penalties_combine_in_order() {
        let p = SamplingParams {
            repetition_penalty: 2.0,
            frequency_penalty: 1.0,
            logit_bias: vec![(0, 0.5), (0, 0.25), (7, 5.0)],
            ..Default::default()
        };
        let mut l = [4.0f32, 1.0];
        sample_token(&mut l, &p, &[], &[0], &[], 0, 0);
        // (4 / 2) - 1 * 1 + 0.5 + 0.25; id 7 is out of range and ignored.
        assert_eq!(l, [1.75, 1.0]);
    }

    #[test]
    fn logit_bias_forces_and_bans_tokens() {
        let logits = [3.0f32, 2.0, 1.0, 0.0];
        let force = SamplingParams {
            temperature: 1.0,
            seed: 5,
            logit_bias: vec![(3, 100.0)],
            ..Default::default()
        };
        let ban = SamplingParams {
            logit_bias: vec![(0, -100.0)],
            ..force.clone()
        };
        for i in 0..200 {
            let mut l = logits;
            assert_eq!(sample_token(&mut l, &force, &[], &[], &[], 5, i).token, 3);
            let mut l = logits;
            assert_ne!(sample_token(&mut l, &ban, &[], &[], &[], 5, i).token, 0);
            assert_eq!(sample(&logits, &force, i), 3);
        }
    }

    #[test]
    fn min_tokens_masks_eos_and_stop_ids_until_reached() {
        let logits = [0.0f32, 10.0, 9.0, 1.0];
        let p = SamplingParams {
            min_tokens: 2,
            stop_token_ids: vec![2, 1000],
            ..Default::default()
        };
        let eos = [1u32];
        let mut l = logits;
        let t = sample_token(&mut l, &p, &[5], &[3], &eos, 0, 2);
        assert_eq!(t.token, 3);
        assert_eq!(l[1], f32::NEG_INFINITY);
        assert_eq!(l[2], f32::NEG_INFINITY);
        let mut l = logits;
        assert_eq!(sample_token(&mut l, &p, &[5], &[3, 3], &eos, 0, 3).token, 1);
        // ignore_eos: end tokens stay; stop ids are still masked.
        let p2 = SamplingParams {
            ignore_eos: true,
            ..p.clone()
        };
        let mut l = logits;
        assert_eq!(sample_token(&mut l, &p2, &[5], &[3], &eos, 0, 2).token, 1);
        // Sampling never draws a masked token.
        let p3 = SamplingParams {
            temperature: 1.0,
            ..p.clone()
        };
        for i in 0..500 {
            let mut l = logits;
            let t = sample_token(&mut l, &p3, &[], &[], &eos, 9, i).token;
            assert!(t != 1 && t != 2, "{t}");
        }
    }

    #[test]
    fn top_k_one_and_tiny_top_p_are_greedy() {
        let logits = random_logits(1000, 1, 8.0);
        let best = argmax(&logits);
        let k1 = SamplingParams {
            top_k: 1,
            ..temp(5.0, 3)
        };
        let p_tiny = SamplingParams {
            top_p: 1e-6,
            ..temp(5.0, 3)
        };
        for i in 0..200 {
            let mut l = logits.clone();
            assert_eq!(sample_token(&mut l, &k1, &[], &[], &[], 3, i).token, best);
            let mut l = logits.clone();
            assert_eq!(
                sample_token(&mut l, &p_tiny, &[], &[], &[], 3, i).token,
                best
            );
        }
        let small = [0.1, 2.0, 1.9, -1.0];
        assert!((0..100).all(|i| sample(&small, &k1, i) == 1));
    }

    #[test]
    fn min_p_drops_unlikely_tokens() {
        // probabilities 0.5, 0.3, 0.15, 0.05; min_p 0.35 keeps p >= 0.175.
        let logits: Vec<f32> = [0.5f32, 0.3, 0.15, 0.05].iter().map(|p| p.ln()).collect();
        let p = SamplingParams {
            min_p: 0.35,
            ..temp(1.0, 21)
        };
        let c = counts_of(&logits, &p, 20_000, 4);
        assert_eq!((c[2], c[3]), (0, 0), "{c:?}");
        assert!(chi_square(&c[..2], &[0.625, 0.375]) < 13.8, "{c:?}");
        // Together with top-k (large) and top-p (1): the same set.
        let p2 = SamplingParams {
            top_k: 3,
            ..p.clone()
        };
        let c2 = counts_of(&logits, &p2, 20_000, 4);
        assert_eq!((c2[2], c2[3]), (0, 0), "{c2:?}");
    }

    #[test]
    fn top_k_and_top_p_renormalise_the_head() {
        let logits: Vec<f32> = [0.5f32, 0.3, 0.15, 0.05].iter().map(|p| p.ln()).collect();
        let k2 = SamplingParams {
            top_k: 2,
            ..temp(1.0, 4)
        };
        let c = counts_of(&logits, &k2, 20_000, 4);
        assert_eq!((c[2], c[3]), (0, 0));
        assert!(chi_square(&c[..2], &[0.625, 0.375]) < 13.8, "{c:?}");
        // top_p 0.7: 0.5 is not enough, 0.5 + 0.3 is.
        let p7 = SamplingParams {
            top_p: 0.7,
            ..temp(1.0, 4)
        };
        let c = counts_of(&logits, &p7, 20_000, 4);
        assert_eq!((c[2], c[3]), (0, 0));
        assert!(chi_square(&c[..2], &[0.625, 0.375]) < 13.8, "{c:?}");
        // top-k first, then top-p over the renormalised top-k: with k = 3 the
        // head is 0.5/0.95, 0.3/0.95, 0.15/0.95, so top_p 0.82 keeps two tokens
        // (0.842), while over the whole vocabulary it needs three (0.8 < 0.82).
        let kp = SamplingParams {
            top_k: 3,
            top_p: 0.82,
            ..temp(1.0, 4)
        };
        let c = counts_of(&logits, &kp, 20_000, 4);
        assert_eq!((c[2], c[3]), (0, 0), "{c:?}");
        assert!(chi_square(&c[..2], &[0.625, 0.375]) < 13.8, "{c:?}");
        let p82 = SamplingParams {
            top_p: 0.82,
            ..temp(1.0, 4)
        };
        let c = counts_of(&logits, &p82, 30_000, 4);
        assert_eq!(c[3], 0, "{c:?}");
        assert!(
            chi_square(&c[..3], &[0.5 / 0.95, 0.3 / 0.95, 0.15 / 0.95]) < 16.3,
            "{c:?}"
        );
    }

    #[test]
    fn frequencies_follow_the_softmax() {
        let logits = [0.0f32, (3.0f32).ln()]; // probabilities 1/4, 3/4
        let p = temp(1.0, 11);
        let ones = (0..20000).filter(|&i| sample(&logits, &p, i) == 1).count() as f64 / 20000.0;
        assert!((ones - 0.75).abs() < 0.02, "{ones}");
        // Chi-square against softmax(logits / T) over 12 tokens, vocab not a
        // multiple of the lane width; df = 11, p = 0.001 -> 31.3.
        let logits = random_logits(12, 8, 6.0);
        for t in [0.5f32, 0.7, 1.0, 1.6] {
            let p = temp(t, 99);
            let c = counts_of(&logits, &p, 40_000, 12);
            let x2 = chi_square(&c, &softmax(&logits, t));
            assert!(x2 < 31.3, "T={t}: chi2 {x2} {c:?}");
        }
    }

    /// Total order of candidates: value descending, then id ascending.
    fn by_rank(a: &(u32, f32), b: &(u32, f32)) -> std::cmp::Ordering {
        b.1.total_cmp(&a.1).then(a.0.cmp(&b.0))
    }

    /// The reference: a full stable sort gives the kept set (top-k, then the
    /// shortest prefix reaching top_p of the top-k mass, then min-p), drawn in
    /// id order with the same weights.
    fn reference_draw(l: &[f32], p: &SamplingParams, u: f64) -> u32 {
        let m = max_index(l).0;
        let k2 = (1.0 / p.temperature) * LOG2_E;
        let mut c: Vec<(u32, f32)> = l.iter().enumerate().map(|(i, &x)| (i as u32, x)).collect();
        c.sort_by(by_rank);
        if p.top_k > 0 {
            c.truncate(p.top_k);
        }
        let w: Vec<f32> = c.iter().map(|&(_, x)| weight(x, m, k2, 0.0)).collect();
        let z: f64 = w.iter().map(|&x| x as f64).sum();
        let mut keep = 0;
        let mut acc = 0.0;
        for &x in &w {
            if !(x >= p.min_p && x > 0.0) {
                break;
            }
            keep += 1;
            acc += x as f64;
            if p.top_p < 1.0 && acc >= p.top_p as f64 * z {
                break;
            }
        }
        let mut kept: Vec<(u32, f32)> = c[..keep].to_vec();
        kept.sort_by_key(|e| e.0);
        let total: f64 = kept
            .iter()
            .map(|&(_, x)| weight(x, m, k2, 0.0) as f64)
            .sum();
        let target = u * total;
        let mut acc = 0.0;
        for &(id, x) in &kept {
            acc += weight(x, m, k2, 0.0) as f64;
            if target < acc {
                return id;
            }
        }
        kept[keep - 1].0
    }

    #[test]
    fn the_kept_set_matches_a_full_sort() {
        let v = 49_152;
        let zipf: Vec<f32> = {
            let mut l = vec![-30.0f32; v];
            for r in 0..v {
                let at = (splitmix64(99 ^ r as u64) % v as u64) as usize;
                l[at] = l[at].max(-1.1 * ((r + 1) as f32).ln());
            }
            l
        };
        // Values on a coarse grid: many exact ties, across and inside bins.
        let ties: Vec<f32> = random_logits(v, 5, 12.0)
            .iter()
            .map(|x| (x * 2.0).round() / 2.0)
            .collect();
        let kinds = [
            ("uniform", random_logits(v, 17, 20.0)),
            ("zipf", zipf),
            ("ties", ties),
        ];
        let cases = [
            (0.8f32, 0usize, 0.9f32, 0.0f32),
            (1.0, 0, 0.95, 0.0),
            (1.0, 50, 1.0, 0.0),
            (1.3, 40, 0.9, 0.0),
            (1.0, 0, 1.0, 0.01),
            (0.7, 200, 0.98, 0.001),
            (2.0, 0, 0.5, 0.05),
            (1.0, 0, 0.999, 0.0),
            (1.0, 0, 1.0, 0.0),
            (0.5, 1000, 0.8, 0.0),
        ];
        for (kind, logits) in &kinds {
            for (t, k, tp, mp) in cases {
                let p = SamplingParams {
                    top_k: k,
                    top_p: tp,
                    min_p: mp,
                    ..temp(t, 1234)
                };
                let mut agree = 0;
                for i in 0..60 {
                    let got = sample(logits, &p, i);
                    let want = reference_draw(logits, &p, uniform(1234, i));
                    if got == want {
                        agree += 1;
                    }
                }
                // Only float rounding (sums in another order) may differ, rarely.
                assert!(
                    agree >= 59,
                    "{kind} T={t} k={k} p={tp} min_p={mp}: {agree}/60"
                );
            }
        }
    }

    #[test]
    fn same_seed_and_position_give_the_same_token_in_any_order() {
        let logits = random_logits(5000, 2, 10.0);
        let ps = [
            temp(1.0, 77),
            SamplingParams {
                top_p: 0.9,
                ..temp(0.8, 77)
            },
            SamplingParams {
                top_k: 30,
                min_p: 0.01,
                ..temp(1.2, 77)
            },
        ];
        for p in &ps {
            let fwd: Vec<u32> = (0..300).map(|i| sample(&logits, p, i)).collect();
            let mut back = vec![0u32; 300];
            for i in (0..300).rev() {
                // Interleave other work that uses the per-thread scratch.
                let other = random_logits(70_000 + i, 5, 3.0);
                sample(&other, &ps[1], i as u64);
                back[i] = sample(&logits, p, i as u64);
            }
            assert_eq!(fwd, back);
            // The seed argument of sample_token, not p.seed, drives the draw.
            let other_seed = SamplingParams {
                seed: 1,
                ..p.clone()
            };
            for i in 0..50u64 {
                let mut l = logits.clone();
                let t = sample_token(&mut l, &other_seed, &[], &[], &[], 77, i).token;
                assert_eq!(t, fwd[i as usize]);
            }
            // On another thread (fresh scratch) too.
            let (l2, p2) = (logits.clone(), p.clone());
            let th = std::thread::spawn(move || {
                (0..300).map(|i| sample(&l2, &p2, i)).collect::<Vec<_>>()
            });
            assert_eq!(th.join().ok(), Some(fwd));
        }
        assert_ne!(choice_seed(5, 0), choice_seed(5, 1));
        assert_eq!(choice_seed(5, 0), 5);
    }

    #[test]
    fn logprobs_are_log_softmax_of_the_raw_logits() {
        let raw = random_logits(49_157, 4, 30.0);
        let want = log_softmax(&raw);
        let p = SamplingParams {
            logprobs: Some(5),
            repetition_penalty: 1.3,
            frequency_penalty: 0.7,
            logit_bias: vec![(11, 40.0)],
            ..temp(0.9, 8)
        };
        for i in 0..20 {
            let mut l = raw.clone();
            let t = sample_token(&mut l, &p, &[11, 12], &[13, 11, 11], &[], 8, i);
            assert!(
                (t.logprob as f64 - want[t.token as usize]).abs() < 1e-5,
                "{} vs {}",
                t.logprob,
                want[t.token as usize]
            );
            assert_eq!(t.top_logprobs.len(), 5);
            let mut order: Vec<usize> = (0..raw.len()).collect();
            order.sort_by(|&a, &b| raw[b].total_cmp(&raw[a]).then(a.cmp(&b)));
            for (k, &(id, lp)) in t.top_logprobs.iter().enumerate() {
                assert_eq!(id as usize, order[k]);
                assert!((lp as f64 - want[id as usize]).abs() < 1e-5);
            }
            assert!(t.top_logprobs.windows(2).all(|w| w[0].1 >= w[1].1));
        }
        // Greedy with logprobs: 0 alternatives, and ties order by id.
        let p = SamplingParams {
            logprobs: Some(0),
            ..Default::default()
        };
        let mut l = vec![1.0f32, 2.0, 2.0, f32::NEG_INFINITY];
        let t = sample_token(&mut l, &p, &[], &[], &[], 0, 0);
        let want = log_softmax(&[1.0, 2.0, 2.0, f32::NEG_INFINITY]);
        assert_eq!(t.token, 1);
        assert!((t.logprob as f64 - want[1]).abs() < 1e-6);
        assert!(t.top_logprobs.is_empty());
        let p = SamplingParams {
            logprobs: Some(20),
            ..Default::default()
        };
        let mut l = vec![1.0f32, 2.0, 2.0, f32::NEG_INFINITY];
        let t = sample_token(&mut l, &p, &[], &[], &[], 0, 0);
        let ids: Vec<u32> = t.top_logprobs.iter().map(|e| e.0).collect();
        assert_eq!(ids, [1, 2, 0, 3]);
        assert_eq!(t.top_logprobs[3].1, f32::NEG_INFINITY);
    }

    #[test]
    fn degenerate_inputs_do_not_panic() {
        let p = SamplingParams {
            logprobs: Some(3),
            top_k: 2,
            top_p: 0.5,
            min_p: 0.5,
            ..temp(1.0, 0)
        };
        let t = sample_token(&mut [], &p, &[1], &[2], &[3], 0, 0);
        assert_eq!(t.token, 0);
        let mut l = [f32::NEG_INFINITY; 5];
        assert_eq!(sample_token(&mut l, &p, &[], &[], &[], 0, 0).token, 0);
        let mut l = [f32::NAN, 1.0, f32::NAN];
        assert_eq!(sample_token(&mut l, &p, &[], &[], &[], 0, 0).token, 1);
        let mut l = [0.0, f32::INFINITY, 1.0];
        assert_eq!(sample_token(&mut l, &p, &[], &[], &[], 0, 0).token, 1);
        // Unvalidated nonsense parameters still pick a token.
        let weird = SamplingParams {
            temperature: f32::NAN,
            top_p: f32::NAN,
            min_p: 7.0,
            repetition_penalty: -3.0,
            presence_penalty: f32::INFINITY,
            logit_bias: vec![(u32::MAX, 1.0), (0, f32::NAN)],
            stop_token_ids: vec![u32::MAX],
            min_tokens: 3,
            logprobs: Some(usize::MAX),
            ..Default::default()
        };
        let mut l = [0.5f32, 0.25];
        assert_eq!(
            sample_token(&mut l, &weird, &[u32::MAX], &[u32::MAX], &[u32::MAX], 0, 0).token,
            0
        );
        let weird = SamplingParams {
            temperature: 1e30,
            top_p: -1.0,
            ..weird
        };
        let mut l = [0.5f32, 0.25];
        assert!(sample_token(&mut l, &weird, &[], &[], &[], 0, 0).token < 2);
        let weird = SamplingParams {
            top_k: usize::MAX,
            top_p: 0.5,
            ..weird
        };
        let mut l = [0.5f32, 0.25];
        assert!(sample_token(&mut l, &weird, &[], &[], &[], 0, 0).token < 2);
    }

    #[test]
    fn validate_rejects_each_bad_value_naming_the_field() {
        let ok = SamplingParams::default();
        assert!(ok.validate_params().is_ok());
        assert!(ok.validate(100, 4096).is_ok());
        let cases: Vec<(SamplingParams, &str)> = vec![
            (
                SamplingParams {
                    temperature: -0.1,
                    ..ok.clone()
                },
                "temperature",
            ),
            (
                SamplingParams {
                    temperature: f32::INFINITY,
                    ..ok.clone()
                },
                "temperature",
            ),
            (
                SamplingParams {
                    temperature: f32::NAN,
                    ..ok.clone()
                },
                "temperature",
            ),
            (
                SamplingParams {
                    top_p: 0.0,
                    ..ok.clone()
                },
                "top_p",
            ),
            (
                SamplingParams {
                    top_p: 1.01,
                    ..ok.clone()
                },
                "top_p",
            ),
            (
                SamplingParams {
                    top_p: f32::NAN,
                    ..ok.clone()
                },
                "top_p",
            ),
            (
                SamplingParams {
                    min_p: -0.01,
                    ..ok.clone()
                },
                "min_p",
            ),
            (
                SamplingParams {
                    min_p: 1.5,
                    ..ok.clone()
                },
                "min_p",
            ),
            (
                SamplingParams {
                    repetition_penalty: 0.0,
                    ..ok.clone()
                },
                "repetition_penalty",
            ),
            (
                SamplingParams {
                    repetition_penalty: f32::INFINITY,
                    ..ok.clone()
                },
                "repetition_penalty",
            ),
            (
                SamplingParams {
                    presence_penalty: 2.5,
                    ..ok.clone()
                },
                "presence_penalty",
            ),
            (
                SamplingParams {
                    presence_penalty: f32::NAN,
                    ..ok.clone()
                },
                "presence_penalty",
            ),
            (
                SamplingParams {
                    frequency_penalty: -2.1,
                    ..ok.clone()
                },
                "frequency_penalty",
            ),
            (SamplingParams { n: 0, ..ok.clone() }, "n must"),
            (
                SamplingParams {
                    n: 65,
                    ..ok.clone()
                },
                "n must",
            ),
            (
                SamplingParams {
                    max_tokens: 0,
                    ..ok.clone()
                },
                "max_tokens",
            ),
            (
                SamplingParams {
                    min_tokens: 300,
                    ..ok.clone()
                },
                "min_tokens",
            ),
            (
                SamplingParams {
                    logit_bias: vec![(1, 101.0)],
                    ..ok.clone()
                },
                "logit_bias",
            ),
            (
                SamplingParams {
                    logit_bias: vec![(1, f32::NAN)],
                    ..ok.clone()
                },
                "logit_bias",
            ),
            (
                SamplingParams {
                    logprobs: Some(21),
                    ..ok.clone()
                },
                "logprobs",
            ),
            (
                SamplingParams {
                    stop: vec!["x".into(), String::new()],
                    ..ok.clone()
                },
                "stop",
            ),
        ];
        for (p, field) in &cases {
            let e = p
                .validate_params()
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(e.contains(field), "{p:?}: {e:?}");
            let e = p
                .validate(100, 4096)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(e.contains(field), "{p:?}: {e:?}");
            assert!(e.contains('[') || e.contains('('), "range missing in {e:?}");
        }
        let vocab_cases: Vec<(SamplingParams, &str)> = vec![
            (
                SamplingParams {
                    logit_bias: vec![(100, 1.0)],
                    ..ok.clone()
                },
                "logit_bias",
            ),
            (
                SamplingParams {
                    stop_token_ids: vec![5, 100],
                    ..ok.clone()
                },
                "stop_token_ids",
            ),
            (
                SamplingParams {
                    max_tokens: 5000,
                    ..ok.clone()
                },
                "max_tokens",
            ),
        ];
        for (p, field) in &vocab_cases {
            assert!(p.validate_params().is_ok());
            let e = p
                .validate(100, 4096)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(e.contains(field), "{p:?}: {e:?}");
        }
        let good = SamplingParams {
            temperature: 0.7,
            top_p: 0.9,
            min_p: 0.05,
            repetition_penalty: 1.1,
            presence_penalty: -2.0,
            frequency_penalty: 2.0,
            n: 64,
            logit_bias: vec![(99, -100.0), (0, 100.0)],
            min_tokens: 256,
            stop: vec!["\n\n".into()],
            stop_token_ids: vec![99],
            logprobs: Some(20),
            ..ok.clone()
        };
        assert!(good.validate(100, 4096).is_ok());
    }
}
