//! Paged attention over the ragged batch: every query token attends to its
//! sequence's cached keys (causal, optional sliding window and softcap), reading
//! K/V block by block through the block table.
//!
//! Tasks are tiles of consecutive query tokens of one sequence (one token for
//! decode, about `Path::tile_rows` query rows for prefill), each run per KV
//! head as a [`Job`] that serves all query heads of that head's group, so a
//! K/V row is read once per tile. A decode token's KV heads run in turn (the
//! first prefetches every head's part of each block, contiguous in memory),
//! or as separate tasks when there are too few tokens to occupy the threads.
//!
//! The AVX-512 and AVX2+FMA kernels are in `attention_simd`; the portable
//! scalar path here runs everywhere else and is the reference the SIMD paths
//! are tested against.

use crate::view::expect;
use rayon::prelude::*;
use tessera_core::hal::AttentionParams;
use tessera_core::Result;

/// K/V element types (f32, bf16): the crate's one widening-load trait.
pub(crate) use crate::simd::WElem as KvElem;

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
    expect(
        b.query_start_loc.len() == s + 1 && b.query_start_loc[0] == 0,
        || "query_start_loc must start at 0 and have S+1 entries".into(),
    )?;
    for i in 0..s {
        let (start, end) = (b.query_start_loc[i], b.query_start_loc[i + 1]);
        let len = b.seq_lens[i];
        expect(start <= end && end as usize <= num_tokens, || {
            format!("query_start_loc is not monotonic within {num_tokens} tokens")
        })?;
        let q_len = (end - start) as usize;
        expect(len >= 0 && q_len <= len as usize, || {
            format!("sequence {i}: {q_len} query tokens but seq_len {len}")
        })?;
        let len = len as usize;
        let blocks = len.div_ceil(g.block_size);
        expect(blocks <= b.max_blocks, || {
            format!(
                "sequence {i}: seq_len {len} needs {blocks} blocks, the table has {}",
                b.max_blocks
            )
        })?;
        for blk in &b.block_tables[i * b.max_blocks..i * b.max_blocks + blocks] {
            expect(*blk >= 0 && (*blk as usize) < g.num_blocks, || {
                format!(
                    "sequence {i}: block id {blk} is outside the cache of {} blocks",
                    g.num_blocks
                )
            })?;
        }
        for (j, t) in (start as usize..end as usize).enumerate() {
            places[t] = Some(TokenPlace {
                seq: i,
                pos: len - q_len + j,
            });
        }
    }
    Ok(places)
}

/// Which kernels run a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Path {
    /// Portable Rust, one (token, KV head) at a time; runs everywhere.
    Scalar,
    /// AVX2+FMA kernels, 8 lanes (head_dim a multiple of 8).
    Avx2,
    /// AVX-512 kernels, 16 lanes (head_dim a multiple of 16).
    Avx512,
}

impl Path {
    /// Every path, best first.
    #[cfg(test)]
    const ALL: [Path; 3] = [Path::Avx512, Path::Avx2, Path::Scalar];

    /// Whether this CPU can run the path for this head_dim.
    fn usable(self, head_dim: usize) -> bool {
        match self {
            Path::Scalar => true,
            // (Never true off x86_64.)
            Path::Avx2 => head_dim.is_multiple_of(8) && crate::features::has_avx2_fma(),
            #[cfg(target_arch = "x86_64")]
            Path::Avx512 => head_dim.is_multiple_of(16) && crate::features::has_avx512(),
            #[cfg(not(target_arch = "x86_64"))]
            Path::Avx512 => false,
        }
    }

    fn best(head_dim: usize) -> Path {
        [Path::Avx512, Path::Avx2]
            .into_iter()
            .find(|p| p.usable(head_dim))
            .unwrap_or(Path::Scalar)
    }

    /// Query rows (tokens x heads of a group) one SIMD task aims for: each
    /// K/V span is loaded once for all of them. The scalar path takes one
    /// token at a time.
    fn tile_rows(self) -> usize {
        match self {
            Path::Scalar => 1,
            Path::Avx2 => 24,
            Path::Avx512 => 48,
        }
    }
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn paged_attention<K: KvElem>(
    q: &[f32],
    k_cache: &[K],
    v_cache: &[K],
    b: &Batch,
    g: &Geometry,
    p: &AttentionParams,
    out: &mut [f32],
) -> Result<()> {
    paged_attention_on(Path::best(g.head_dim), q, k_cache, v_cache, b, g, p, out)
}

/// Checks the sizes every kernel relies on (beyond what [`place_tokens`]
/// checks): the SIMD kernels read the caches through raw pointers.
fn check_sizes<K>(
    q: &[f32],
    kc: &[K],
    vc: &[K],
    b: &Batch,
    g: &Geometry,
    out: &[f32],
) -> Result<()> {
    expect(
        g.num_kv_heads > 0 && g.head_dim > 0 && g.block_size > 0,
        || "attention needs KV heads, head_dim and block_size above 0".into(),
    )?;
    expect(
        g.num_heads.is_multiple_of(g.num_kv_heads) && g.num_heads > 0,
        || {
            format!(
                "{} query heads do not group over {} KV heads",
                g.num_heads, g.num_kv_heads
            )
        },
    )?;
    let row = g.num_heads * g.head_dim;
    expect(q.len().is_multiple_of(row) && out.len() == q.len(), || {
        format!(
            "q ({}) and out ({}) must be the same whole number of {row}-wide rows",
            q.len(),
            out.len()
        )
    })?;
    let slab = [g.num_blocks, g.num_kv_heads, g.block_size, g.head_dim]
        .iter()
        .try_fold(1usize, |a, &x| a.checked_mul(x));
    expect(slab.is_some_and(|n| kc.len() >= n && vc.len() >= n), || {
        "the K/V caches are smaller than their geometry".into()
    })?;
    expect(
        b.seq_lens
            .len()
            .checked_mul(b.max_blocks)
            .is_some_and(|n| b.block_tables.len() >= n)
            && b.seq_lens.iter().all(|&l| l >= 0)
            && b.seq_lens.iter().all(|&l| l < i32::MAX),
        || "block_tables must hold max_blocks entries per sequence".into(),
    )
}

/// One parallel task: `ntok` query tokens of sequence `seq` from token `t0`,
/// for one KV head (`kvh`) or all of them, writing `out` (those tokens' rows,
/// or just that head group's part for a single token).
struct Item<'a> {
    seq: usize,
    t0: usize,
    pos0: usize,
    ntok: usize,
    kvh: Option<usize>,
    out: &'a mut [f32],
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn paged_attention_on<K: KvElem>(
    path: Path,
    q: &[f32],
    k_cache: &[K],
    v_cache: &[K],
    b: &Batch,
    g: &Geometry,
    p: &AttentionParams,
    out: &mut [f32],
) -> Result<()> {
    check_sizes(q, k_cache, v_cache, b, g, out)?;
    let row = g.num_heads * g.head_dim;
    let num_tokens = q.len() / row;
    let places = place_tokens(b, g, num_tokens)?;
    let path = if path.usable(g.head_dim) {
        path
    } else {
        Path::Scalar
    };
    let group = g.num_heads / g.num_kv_heads;
    let chunk = group * g.head_dim;
    let tile = (path.tile_rows() / group).max(1);

    // Split the output into tasks: tokens of a sequence in tiles of about
    // `tile`, all KV heads in turn. Only if that leaves threads idle (a few
    // decode tokens), a single token's KV heads become tasks of their own.
    let tiles: usize = b
        .query_start_loc
        .windows(2)
        .map(|w| ((w[1] - w[0]) as usize).div_ceil(tile))
        .sum();
    let split_heads = tiles < 2 * rayon::current_num_threads();
    let mut items = Vec::new();
    let mut rest = out;
    for s in 0..b.seq_lens.len() {
        let t0 = b.query_start_loc[s] as usize;
        let q_len = b.query_start_loc[s + 1] as usize - t0;
        let (region, tail) = std::mem::take(&mut rest).split_at_mut(q_len * row);
        rest = tail;
        // The sequence's first query token (none: nothing to do).
        let Some(Some(TokenPlace { seq, pos: pos0 })) = places.get(t0).filter(|_| q_len > 0) else {
            continue;
        };
        let (seq, pos0) = (*seq, *pos0);
        let per = q_len.div_ceil(q_len.div_ceil(tile));
        for (i, tokens) in region.chunks_mut(per * row).enumerate() {
            let ntok = tokens.len() / row;
            let (t0, pos0) = (t0 + i * per, pos0 + i * per);
            if ntok == 1 && split_heads {
                for (kvh, o) in tokens.chunks_mut(chunk).enumerate() {
                    let kvh = Some(kvh);
                    items.push(Item {
                        seq,
                        t0,
                        pos0,
                        ntok,
                        kvh,
                        out: o,
                    });
                }
            } else {
                let kvh = None;
                items.push(Item {
                    seq,
                    t0,
                    pos0,
                    ntok,
                    kvh,
                    out: tokens,
                });
            }
        }
    }
    // Padding tokens after the last sequence produce zeros.
    rest.fill(0.0);

    items.into_par_iter().for_each(|it| {
        let table = &b.block_tables[it.seq * b.max_blocks..(it.seq + 1) * b.max_blocks];
        let heads = match it.kvh {
            Some(h) => h..h + 1,
            None => 0..g.num_kv_heads,
        };
        with_scratch(|s| {
            for kvh in heads {
                let job = Job {
                    q: &q[it.t0 * row + kvh * chunk..],
                    q_stride: row,
                    k_cache,
                    v_cache,
                    table,
                    seq_len: b.seq_lens[it.seq] as usize,
                    pos0: it.pos0,
                    ntok: it.ntok,
                    kvh,
                    group,
                    // Decode reads each block's heads in turn: the first
                    // fetches them all, as one contiguous run of memory.
                    prefetch_heads: if it.kvh.is_none() && kvh == 0 {
                        g.num_kv_heads
                    } else {
                        1
                    },
                    g,
                    p,
                };
                let o = match it.kvh {
                    Some(_) => &mut *it.out,
                    None => &mut it.out[kvh * chunk..],
                };
                job.run(path, o, row, s);
            }
        })
    });
    Ok(())
}

#[cfg(target_arch = "x86_64")]
use crate::attention_simd::Scratch;

#[cfg(not(target_arch = "x86_64"))]
#[derive(Default)]
struct Scratch;

thread_local! {
    static SCRATCH: std::cell::RefCell<(Scratch, Vec<f32>)> = Default::default();
}

/// Runs `f` with this thread's reusable scratch memory.
fn with_scratch<R>(f: impl FnOnce(&mut (Scratch, Vec<f32>)) -> R) -> R {
    SCRATCH.with(|c| match c.try_borrow_mut() {
        Ok(mut s) => f(&mut s),
        // Only if `f` were re-entered on this thread; fresh memory is correct.
        Err(_) => f(&mut Default::default()),
    })
}

/// Query tokens `0..ntok` (positions `pos0..`) of one sequence, times the
/// `group` query heads of KV head `kvh`.
///
/// Valid (as built by [`paged_attention_on`] after its checks): `pos0 + ntok
/// <= seq_len`; `table` holds a block id `< num_blocks` for every position
/// below `seq_len`; the caches hold `num_blocks * num_kv_heads * block_size *
/// head_dim` elements.
pub(crate) struct Job<'a, K> {
    /// Row `(t, h)` is `q[t * q_stride + h * head_dim..][..head_dim]`.
    pub q: &'a [f32],
    pub q_stride: usize,
    pub k_cache: &'a [K],
    pub v_cache: &'a [K],
    pub table: &'a [i32],
    pub seq_len: usize,
    pub pos0: usize,
    pub ntok: usize,
    pub kvh: usize,
    pub group: usize,
    /// How many KV heads from `kvh` on to prefetch K/V for (SIMD paths).
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pub prefetch_heads: usize,
    pub g: &'a Geometry,
    pub p: &'a AttentionParams,
}

impl<K: KvElem> Job<'_, K> {
    /// The positions token `t` attends to: `lo..hi`, never empty.
    #[inline]
    pub fn visible(&self, t: usize) -> (usize, usize) {
        let pos = self.pos0 + t;
        let hi = if self.p.causal { pos + 1 } else { self.seq_len };
        let lo = match self.p.sliding_window {
            Some(w) if w > 0 => (pos + 1).saturating_sub(w),
            _ => 0,
        };
        (lo, hi)
    }

    /// Cache offset of position `pos`'s row (`pos < seq_len`).
    #[inline]
    pub fn kv_offset(&self, pos: usize) -> usize {
        let bs = self.g.block_size;
        let blk = self.table[pos / bs] as usize;
        ((blk * self.g.num_kv_heads + self.kvh) * bs + pos % bs) * self.g.head_dim
    }

    /// Writes row `(t, h)` to `out[t * out_stride + h * head_dim..][..head_dim]`.
    fn run(&self, path: Path, out: &mut [f32], out_stride: usize, s: &mut (Scratch, Vec<f32>)) {
        match path {
            // SAFETY: `usable` checked the CPU features and head_dim for the
            // path; the job is valid (see `Job`).
            #[cfg(target_arch = "x86_64")]
            Path::Avx512 => unsafe {
                crate::attention_simd::run_avx512(self, out, out_stride, &mut s.0)
            },
            #[cfg(target_arch = "x86_64")]
            Path::Avx2 => unsafe {
                crate::attention_simd::run_avx2(self, out, out_stride, &mut s.0)
            },
            _ => self.run_scalar(out, out_stride, &mut s.1),
        }
    }

    /// The portable path: online softmax over the context, one block of
    /// positions at a time, token by token.
    fn run_scalar(&self, out: &mut [f32], out_stride: usize, scratch: &mut Vec<f32>) {
        let (d, bs, group) = (self.g.head_dim, self.g.block_size, self.group);
        scratch.resize(2 * group + group * bs, 0.0);
        let (m, rest) = scratch.split_at_mut(group);
        let (l, scores) = rest.split_at_mut(group);
        for t in 0..self.ntok {
            let q = &self.q[t * self.q_stride..][..group * d];
            let out = &mut out[t * out_stride..][..group * d];
            m.fill(f32::NEG_INFINITY);
            l.fill(0.0);
            out.fill(0.0);
            let (mut pos, end) = self.visible(t);
            while pos < end {
                let n = (bs - pos % bs).min(end - pos);
                let base = self.kv_offset(pos);
                let kc = &self.k_cache[base..base + n * d];
                let vc = &self.v_cache[base..base + n * d];
                for h in 0..group {
                    let qh = &q[h * d..(h + 1) * d];
                    let sc = &mut scores[h * bs..h * bs + n];
                    for (s, k) in sc.iter_mut().zip(kc.chunks_exact(d)) {
                        *s = dot(qh, k) * self.p.scale;
                        if let Some(c) = self.p.softcap {
                            *s = c * (*s / c).tanh();
                        }
                    }
                    let bmax = sc.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    let new_m = m[h].max(bmax);
                    let rescale = (m[h] - new_m).exp();
                    let oh = &mut out[h * d..(h + 1) * d];
                    if rescale != 1.0 {
                        oh.iter_mut().for_each(|v| *v *= rescale);
                    }
                    l[h] *= rescale;
                    for (&s, v) in sc.iter().zip(vc.chunks_exact(d)) {
                        let w = (s - new_m).exp();
                        l[h] += w;
                        for (o, x) in oh.iter_mut().zip(v) {
                            *o += w * x.to_f32();
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
    }
}

#[inline(always)]
fn dot<K: KvElem>(a: &[f32], b: &[K]) -> f32 {
    // Eight independent lanes let the compiler vectorise the reduction.
    let mut acc = [0f32; 8];
    let n = a.len() / 8 * 8;
    for (ac, bc) in a[..n].chunks_exact(8).zip(b[..n].chunks_exact(8)) {
        for i in 0..8 {
            acc[i] += ac[i] * bc[i].to_f32();
        }
    }
    let mut s: f32 = acc.iter().sum();
    for i in n..a.len() {
        s += a[i] * b[i].to_f32();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::bf16;

    fn rand(seed: &mut u64) -> f32 {
        *seed = tessera_core::model::random::splitmix64(*seed);
        ((*seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    /// Dense attention in f64 over the positions each query may see.
    fn naive(
        q: &[f32],
        keys: &[Vec<f32>],
        vals: &[Vec<f32>],
        pos: usize,
        p: &AttentionParams,
    ) -> Vec<f32> {
        let d = q.len();
        let start = p
            .sliding_window
            .map(|w| (pos + 1).saturating_sub(w))
            .unwrap_or(0);
        let end = if p.causal { pos + 1 } else { keys.len() };
        let scores: Vec<f64> = (start..end)
            .map(|j| {
                let mut s =
                    (0..d).map(|i| q[i] as f64 * keys[j][i] as f64).sum::<f64>() * p.scale as f64;
                if let Some(c) = p.softcap {
                    s = c as f64 * (s / c as f64).tanh();
                }
                s
            })
            .collect();
        let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let w: Vec<f64> = scores.iter().map(|s| (s - m).exp()).collect();
        let z: f64 = w.iter().sum();
        (0..d)
            .map(|i| {
                (w.iter()
                    .zip(start..end)
                    .map(|(w, j)| w * vals[j][i] as f64)
                    .sum::<f64>()
                    / z) as f32
            })
            .collect()
    }

    #[test]
    fn matches_dense_attention_on_a_mixed_batch() {
        let (nh, nkv, d, bs, blocks) = (8, 2, 16, 4, 32);
        // (cached tokens before this step, new tokens) per sequence: decode, prefill,
        // chunked prefill, and an empty sequence.
        let seqs = [(9usize, 1usize), (0, 7), (5, 6), (0, 0)];
        let mut seed = 42u64;
        for (window, softcap) in [(None, None), (Some(5), None), (None, Some(5.0))] {
            let p = AttentionParams {
                scale: 0.25,
                causal: true,
                sliding_window: window,
                softcap,
            };
            let mut kc = vec![0f32; blocks * nkv * bs * d];
            let mut vc = kc.clone();
            let mut qsl = vec![0i32];
            let mut lens = vec![];
            let max_blocks = 4;
            let mut tables = vec![0i32; seqs.len() * max_blocks];
            let mut q = vec![];
            let mut expect = vec![];
            let mut next_block = 3; // scattered, not starting at 0
            for (s, &(cached, new)) in seqs.iter().enumerate() {
                let len = cached + new;
                for b in 0..len.div_ceil(bs) {
                    tables[s * max_blocks + b] = next_block;
                    next_block += 5;
                    next_block %= blocks as i32;
                }
                let mut keys = vec![vec![vec![0f32; d]; len]; nkv];
                let mut vals = keys.clone();
                for pos in 0..len {
                    let blk = tables[s * max_blocks + pos / bs] as usize;
                    for h in 0..nkv {
                        for i in 0..d {
                            let (k, v) = (rand(&mut seed), rand(&mut seed));
                            let at = ((blk * nkv + h) * bs + pos % bs) * d + i;
                            kc[at] = k;
                            vc[at] = v;
                            keys[h][pos][i] = k;
                            vals[h][pos][i] = v;
                        }
                    }
                }
                for j in 0..new {
                    for h in 0..nh {
                        let qh: Vec<f32> = (0..d).map(|_| rand(&mut seed)).collect();
                        expect.extend(naive(
                            &qh,
                            &keys[h / (nh / nkv)],
                            &vals[h / (nh / nkv)],
                            cached + j,
                            &p,
                        ));
                        q.extend(qh);
                    }
                }
                qsl.push(qsl.last().copied().unwrap_or(0) + new as i32);
                lens.push(len as i32);
            }
            let b = Batch {
                query_start_loc: &qsl,
                seq_lens: &lens,
                block_tables: &tables,
                max_blocks,
            };
            let g = Geometry {
                num_heads: nh,
                num_kv_heads: nkv,
                head_dim: d,
                num_blocks: blocks,
                block_size: bs,
            };
            let mut out = vec![0f32; q.len()];
            paged_attention(&q, &kc, &vc, &b, &g, &p, &mut out).expect("attention");
            let err = out
                .iter()
                .zip(&expect)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(
                err < 1e-5,
                "f32 cache, window {window:?}, softcap {softcap:?}: max error {err}"
            );

            // A bf16 cache holding the same (rounded) values agrees to bf16 precision.
            let kb: Vec<bf16> = kc.iter().map(|&x| bf16::from_f32(x)).collect();
            let vb: Vec<bf16> = vc.iter().map(|&x| bf16::from_f32(x)).collect();
            let mut out_b = vec![0f32; q.len()];
            paged_attention(&q, &kb, &vb, &b, &g, &p, &mut out_b).expect("attention");
            let err = out_b
                .iter()
                .zip(&expect)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(err < 2e-2, "bf16 cache: max error {err}");
        }
    }

    /// Per KV head, per position: a key or value vector.
    type PerHead = Vec<Vec<Vec<f32>>>;

    /// A random batch over a scattered cache: per sequence (cached, new)
    /// tokens, plus `padding` tokens after the last sequence.
    struct Case {
        g: Geometry,
        q: Vec<f32>,
        kc: Vec<f32>,
        vc: Vec<f32>,
        qsl: Vec<i32>,
        lens: Vec<i32>,
        tables: Vec<i32>,
        max_blocks: usize,
        /// Per sequence: keys and values per KV head and position.
        kv: Vec<(PerHead, PerHead)>,
    }

    fn case(
        (nh, nkv, d, bs): (usize, usize, usize, usize),
        seqs: &[(usize, usize)],
        padding: usize,
        round: fn(f32) -> f32,
        seed: &mut u64,
    ) -> Case {
        let max_blocks = seqs
            .iter()
            .map(|s| (s.0 + s.1).div_ceil(bs))
            .max()
            .unwrap_or(0)
            + 1;
        let num_blocks = seqs.iter().map(|s| (s.0 + s.1).div_ceil(bs)).sum::<usize>() * 2 + 1;
        let mut kc = vec![0f32; num_blocks * nkv * bs * d];
        let mut vc = kc.clone();
        let mut tables = vec![0i32; seqs.len() * max_blocks];
        let (mut qsl, mut lens, mut kv) = (vec![0i32], vec![], vec![]);
        let mut next = 1;
        for (s, &(cached, new)) in seqs.iter().enumerate() {
            let len = cached + new;
            for b in 0..len.div_ceil(bs) {
                // Every other block, backwards: scattered and out of order.
                tables[s * max_blocks + b] = (num_blocks - next) as i32;
                next += 2;
            }
            let mut keys = vec![vec![vec![0f32; d]; len]; nkv];
            let mut vals = keys.clone();
            for pos in 0..len {
                let blk = tables[s * max_blocks + pos / bs] as usize;
                for h in 0..nkv {
                    for i in 0..d {
                        let (k, v) = (round(rand(seed)), round(rand(seed)));
                        let at = ((blk * nkv + h) * bs + pos % bs) * d + i;
                        kc[at] = k;
                        vc[at] = v;
                        keys[h][pos][i] = k;
                        vals[h][pos][i] = v;
                    }
                }
            }
            kv.push((keys, vals));
            qsl.push(qsl[s] + new as i32);
            lens.push(len as i32);
        }
        let tokens = qsl[seqs.len()] as usize + padding;
        let q = (0..tokens * nh * d).map(|_| rand(seed) * 2.0).collect();
        let g = Geometry {
            num_heads: nh,
            num_kv_heads: nkv,
            head_dim: d,
            num_blocks,
            block_size: bs,
        };
        Case {
            g,
            q,
            kc,
            vc,
            qsl,
            lens,
            tables,
            max_blocks,
            kv,
        }
    }

    impl Case {
        fn batch(&self) -> Batch<'_> {
            Batch {
                query_start_loc: &self.qsl,
                seq_lens: &self.lens,
                block_tables: &self.tables,
                max_blocks: self.max_blocks,
            }
        }

        /// The dense f64 reference (zeros for padding tokens).
        fn expected(&self, p: &AttentionParams) -> Vec<f32> {
            let (nh, d) = (self.g.num_heads, self.g.head_dim);
            let group = nh / self.g.num_kv_heads;
            let mut out = vec![0f32; self.q.len()];
            for (s, (keys, vals)) in self.kv.iter().enumerate() {
                let (t0, t1) = (self.qsl[s] as usize, self.qsl[s + 1] as usize);
                let cached = self.lens[s] as usize - (t1 - t0);
                for t in t0..t1 {
                    for h in 0..nh {
                        let at = (t * nh + h) * d;
                        let o = naive(
                            &self.q[at..at + d],
                            &keys[h / group],
                            &vals[h / group],
                            cached + t - t0,
                            p,
                        );
                        out[at..at + d].copy_from_slice(&o);
                    }
                }
            }
            out
        }

        fn run<K: KvElem>(&self, path: Path, p: &AttentionParams, conv: fn(f32) -> K) -> Vec<f32> {
            let kc: Vec<K> = self.kc.iter().map(|&x| conv(x)).collect();
            let vc: Vec<K> = self.vc.iter().map(|&x| conv(x)).collect();
            // Garbage in, to see that every element is written.
            let mut out = vec![f32::NAN; self.q.len()];
            paged_attention_on(path, &self.q, &kc, &vc, &self.batch(), &self.g, p, &mut out)
                .expect("attention");
            out
        }
    }

    fn max_err(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        a.iter()
            .zip(b)
            .map(|(x, y)| {
                if x.is_nan() || y.is_nan() {
                    f32::INFINITY
                } else {
                    (x - y).abs()
                }
            })
            .fold(0f32, f32::max)
    }

    /// Every path this CPU runs (SIMD row and tile modes, all their tails)
    /// against the f64 reference and against the scalar path, for f32 and
    /// bf16 caches (the reference sees the bf16-rounded values).
    #[test]
    fn every_path_matches_dense_attention_and_the_scalar_path() {
        let geometries = [
            (9, 3, 64, 16),  // SmolLM2: group 3
            (8, 2, 16, 4),   // small blocks
            (4, 4, 32, 8),   // no grouping
            (16, 1, 64, 16), // one KV head: a single token fills a tile
            (12, 2, 80, 16), // head_dim not a multiple of 64
            (6, 2, 24, 5),   // head_dim 24 (no AVX-512), odd blocks
            (4, 2, 8, 32),   // blocks longer than a vector
        ];
        // Decode, prefill, chunked prefill, empty, cached-only, short chunks.
        let seqs = [
            (130, 1),
            (0, 50),
            (17, 23),
            (0, 0),
            (5, 0),
            (0, 1),
            (3, 2),
            (40, 9),
            (8, 1),
        ];
        let params = [
            (true, None, None),
            (true, Some(5), None),
            (true, Some(37), None),
            (true, None, Some(5.0)),
            (false, None, None),
            (false, Some(20), Some(30.0)),
        ];
        let pools = [1, 16].map(|n| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(n)
                .build()
                .expect("pool")
        });
        let mut seed = 3u64;
        let bf: fn(f32) -> f32 = |x| bf16::from_f32(x).to_f32();
        let mut ran = vec![];
        for geometry in geometries {
            for (round, name) in [(bf, "bf16"), ((|x| x) as fn(f32) -> f32, "f32")] {
                let c = case(geometry, &seqs, 2, round, &mut seed);
                for (causal, sliding_window, softcap) in params {
                    let scale = 1.0 / (geometry.2 as f32).sqrt();
                    let p = AttentionParams {
                        scale,
                        causal,
                        sliding_window,
                        softcap,
                    };
                    let want = c.expected(&p);
                    let scalar = if name == "bf16" {
                        c.run(Path::Scalar, &p, bf16::from_f32)
                    } else {
                        c.run(Path::Scalar, &p, |x| x)
                    };
                    // One thread: whole tokens per task; many: a decode
                    // token's KV heads are tasks of their own.
                    for (path, pool) in Path::ALL
                        .into_iter()
                        .flat_map(|x| pools.iter().map(move |p| (x, p)))
                    {
                        if !path.usable(geometry.2) {
                            continue;
                        }
                        ran.push(path);
                        let got = pool.install(|| {
                            if name == "bf16" {
                                c.run(path, &p, bf16::from_f32)
                            } else {
                                c.run(path, &p, |x| x)
                            }
                        });
                        let threads = pool.current_num_threads();
                        let what = format!("{path:?} {name} {geometry:?} {p:?} {threads} threads");
                        let e = max_err(&got, &want);
                        assert!(e < 1e-5, "{what}: max error {e} vs dense");
                        let e = max_err(&got, &scalar);
                        assert!(e < 1e-5, "{what}: max error {e} vs scalar");
                    }
                }
            }
        }
        for path in Path::ALL {
            if !ran.contains(&path) {
                eprintln!("note: this CPU cannot run {path:?}; not tested");
            }
        }
    }

    #[test]
    fn refuses_inconsistent_sizes() {
        let g = Geometry {
            num_heads: 2,
            num_kv_heads: 1,
            head_dim: 16,
            num_blocks: 2,
            block_size: 4,
        };
        let b = Batch {
            query_start_loc: &[0, 1],
            seq_lens: &[1],
            block_tables: &[1],
            max_blocks: 1,
        };
        let p = AttentionParams {
            scale: 1.0,
            causal: true,
            sliding_window: None,
            softcap: None,
        };
        let (q, cache) = (vec![0f32; 32], vec![0f32; 2 * 4 * 16]);
        let mut out = vec![0f32; 32];
        assert!(paged_attention(&q, &cache, &cache, &b, &g, &p, &mut out).is_ok());
        let short = &cache[..cache.len() - 1];
        assert!(paged_attention(&q, short, &cache, &b, &g, &p, &mut out).is_err());
        assert!(paged_attention(&q, &cache, &cache, &b, &g, &p, &mut out[..16]).is_err());
        let g3 = Geometry {
            num_kv_heads: 3,
            ..g
        };
        assert!(paged_attention(&q, &cache, &cache, &b, &g3, &p, &mut out).is_err());
        let b2 = Batch {
            block_tables: &[],
            ..b
        };
        assert!(paged_attention(&q, &cache, &cache, &b2, &g, &p, &mut out).is_err());
    }

    #[test]
    fn refuses_block_ids_outside_the_cache() {
        let g = Geometry {
            num_heads: 1,
            num_kv_heads: 1,
            head_dim: 2,
            num_blocks: 2,
            block_size: 2,
        };
        let b = Batch {
            query_start_loc: &[0, 1],
            seq_lens: &[1],
            block_tables: &[7],
            max_blocks: 1,
        };
        let p = AttentionParams {
            scale: 1.0,
            causal: true,
            sliding_window: None,
            softcap: None,
        };
        let mut out = vec![0f32; 2];
        let e =
            paged_attention(&[1.0, 1.0], &[0f32; 8], &[0f32; 8], &b, &g, &p, &mut out).unwrap_err();
        assert!(e.to_string().contains("block id 7"), "{e}");
    }
}
