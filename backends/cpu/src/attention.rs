//! Paged attention over the ragged batch: every query token attends to its
//! sequence's cached keys (causal, optional sliding window and softcap), reading
//! K/V block by block through the block table. One task per (token, KV head)
//! serves all query heads of that group, so each K/V row is read once per token.

use crate::view::expect;
use half::bf16;
use rayon::prelude::*;
use tessera_core::hal::AttentionParams;
use tessera_core::Result;

/// K/V element types: widened to f32 on load.
pub trait KvElem: Copy + Send + Sync {
    fn f(self) -> f32;
}
impl KvElem for f32 {
    #[inline(always)]
    fn f(self) -> f32 {
        self
    }
}
impl KvElem for bf16 {
    #[inline(always)]
    fn f(self) -> f32 {
        f32::from_bits((self.to_bits() as u32) << 16)
    }
}

pub struct Geometry {
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub num_blocks: usize,
    pub block_size: usize,
}

pub struct Batch<'a> {
    pub query_start_loc: &'a [i32],
    pub seq_lens: &'a [i32],
    /// `[S, max_blocks]`
    pub block_tables: &'a [i32],
    pub max_blocks: usize,
}

/// Where each query token sits: its sequence and its position in it.
struct TokenPlace {
    seq: usize,
    pos: usize,
}

/// Checks the batch metadata against the cache and maps tokens to sequences.
fn place_tokens(b: &Batch, g: &Geometry, num_tokens: usize) -> Result<Vec<Option<TokenPlace>>> {
    let s = b.seq_lens.len();
    let mut places: Vec<Option<TokenPlace>> = (0..num_tokens).map(|_| None).collect();
    expect(b.query_start_loc.len() == s + 1 && b.query_start_loc[0] == 0, || "query_start_loc must start at 0 and have S+1 entries".into())?;
    for i in 0..s {
        let (start, end) = (b.query_start_loc[i], b.query_start_loc[i + 1]);
        let len = b.seq_lens[i];
        expect(start <= end && end as usize <= num_tokens, || format!("query_start_loc is not monotonic within {num_tokens} tokens"))?;
        let q_len = (end - start) as usize;
        expect(len >= 0 && q_len <= len as usize, || format!("sequence {i}: {q_len} query tokens but seq_len {len}"))?;
        let len = len as usize;
        let blocks = len.div_ceil(g.block_size);
        expect(blocks <= b.max_blocks, || format!("sequence {i}: seq_len {len} needs {blocks} blocks, the table has {}", b.max_blocks))?;
        for blk in &b.block_tables[i * b.max_blocks..i * b.max_blocks + blocks] {
            expect(*blk >= 0 && (*blk as usize) < g.num_blocks, || format!("sequence {i}: block id {blk} is outside the cache of {} blocks", g.num_blocks))?;
        }
        for (j, t) in (start as usize..end as usize).enumerate() {
            places[t] = Some(TokenPlace { seq: i, pos: len - q_len + j });
        }
    }
    Ok(places)
}

#[allow(clippy::too_many_arguments)]
pub fn paged_attention<K: KvElem>(
    q: &[f32],
    k_cache: &[K],
    v_cache: &[K],
    b: &Batch,
    g: &Geometry,
    p: &AttentionParams,
    out: &mut [f32],
) -> Result<()> {
    let num_tokens = q.len() / (g.num_heads * g.head_dim);
    let places = place_tokens(b, g, num_tokens)?;
    let group = g.num_heads / g.num_kv_heads;
    let chunk = group * g.head_dim;
    out.par_chunks_mut(chunk).enumerate().for_each(|(task, o)| {
        let (t, kvh) = (task / g.num_kv_heads, task % g.num_kv_heads);
        match &places[t] {
            // Padding tokens produce zeros.
            None => o.iter_mut().for_each(|v| *v = 0.0),
            Some(place) => {
                let qs = &q[t * g.num_heads * g.head_dim + kvh * chunk..][..chunk];
                attend_dispatch(qs, k_cache, v_cache, b, g, p, place, kvh, o);
            }
        }
    });
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn attend_dispatch<K: KvElem>(
    q: &[f32],
    kc: &[K],
    vc: &[K],
    b: &Batch,
    g: &Geometry,
    p: &AttentionParams,
    place: &TokenPlace,
    kvh: usize,
    out: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    if crate::features::has_avx2_fma() {
        // SAFETY: the CPU supports AVX2 and FMA (checked at run time).
        return unsafe { attend_avx2(q, kc, vc, b, g, p, place, kvh, out) };
    }
    attend(q, kc, vc, b, g, p, place, kvh, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn attend_avx2<K: KvElem>(
    q: &[f32],
    kc: &[K],
    vc: &[K],
    b: &Batch,
    g: &Geometry,
    p: &AttentionParams,
    place: &TokenPlace,
    kvh: usize,
    out: &mut [f32],
) {
    attend(q, kc, vc, b, g, p, place, kvh, out)
}

#[inline(always)]
fn dot<K: KvElem>(a: &[f32], b: &[K]) -> f32 {
    // Eight independent lanes let the compiler vectorise the reduction.
    let mut acc = [0f32; 8];
    let n = a.len() / 8 * 8;
    for (ac, bc) in a[..n].chunks_exact(8).zip(b[..n].chunks_exact(8)) {
        for i in 0..8 {
            acc[i] += ac[i] * bc[i].f();
        }
    }
    let mut s: f32 = acc.iter().sum();
    for i in n..a.len() {
        s += a[i] * b[i].f();
    }
    s
}

/// Online softmax over the context, one block of positions at a time.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn attend<K: KvElem>(
    q: &[f32],
    kc: &[K],
    vc: &[K],
    b: &Batch,
    g: &Geometry,
    p: &AttentionParams,
    place: &TokenPlace,
    kvh: usize,
    out: &mut [f32],
) {
    let (d, bs) = (g.head_dim, g.block_size);
    let group = q.len() / d;
    let seq_len = b.seq_lens[place.seq] as usize;
    let end = if p.causal { place.pos + 1 } else { seq_len };
    let start = match p.sliding_window {
        Some(w) if w > 0 => (place.pos + 1).saturating_sub(w),
        _ => 0,
    };
    let table = &b.block_tables[place.seq * b.max_blocks..];
    let mut m = vec![f32::NEG_INFINITY; group];
    let mut l = vec![0f32; group];
    out.iter_mut().for_each(|v| *v = 0.0);
    let mut scores = vec![0f32; group * bs];
    let mut pos = start;
    while pos < end {
        let blk = table[pos / bs] as usize;
        let off0 = pos % bs;
        let n = (bs - off0).min(end - pos);
        let base = (blk * g.num_kv_heads + kvh) * bs * d;
        for h in 0..group {
            let qh = &q[h * d..(h + 1) * d];
            for j in 0..n {
                let k = &kc[base + (off0 + j) * d..][..d];
                let mut s = dot(qh, k) * p.scale;
                if let Some(c) = p.softcap {
                    s = c * (s / c).tanh();
                }
                scores[h * bs + j] = s;
            }
            let bmax = scores[h * bs..h * bs + n].iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let new_m = m[h].max(bmax);
            let rescale = (m[h] - new_m).exp();
            let oh = &mut out[h * d..(h + 1) * d];
            if rescale != 1.0 {
                oh.iter_mut().for_each(|v| *v *= rescale);
            }
            l[h] *= rescale;
            for j in 0..n {
                let w = (scores[h * bs + j] - new_m).exp();
                l[h] += w;
                let v = &vc[base + (off0 + j) * d..][..d];
                for (o, x) in oh.iter_mut().zip(v) {
                    *o += w * x.f();
                }
            }
            m[h] = new_m;
        }
        pos += n;
    }
    for h in 0..group {
        let inv = if l[h] > 0.0 { 1.0 / l[h] } else { 0.0 };
        out[h * d..(h + 1) * d].iter_mut().for_each(|v| *v *= inv);
    }
}
