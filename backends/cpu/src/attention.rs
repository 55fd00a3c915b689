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
                let q = &q[t * g.num_heads * g.head_dim + kvh * chunk..][..chunk];
                Task {
                    q,
                    k_cache,
                    v_cache,
                    b,
                    g,
                    p,
                    place,
                    kvh,
                }
                .run(o);
            }
        }
    });
    Ok(())
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

/// One query token's heads that share KV head `kvh`.
struct Task<'a, K> {
    q: &'a [f32],
    k_cache: &'a [K],
    v_cache: &'a [K],
    b: &'a Batch<'a>,
    g: &'a Geometry,
    p: &'a AttentionParams,
    place: &'a TokenPlace,
    kvh: usize,
}

impl<K: KvElem> Task<'_, K> {
    fn run(&self, out: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if crate::features::has_avx2_fma() {
            // SAFETY: the CPU supports AVX2 and FMA (checked at run time).
            return unsafe { self.run_avx2(out) };
        }
        self.attend(out)
    }

    /// The same code compiled with AVX2 enabled, so the dot products vectorise.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn run_avx2(&self, out: &mut [f32]) {
        self.attend(out)
    }
    /// Online softmax over the context, one block of positions at a time.
    #[inline(always)]
    fn attend(&self, out: &mut [f32]) {
        let Task {
            q,
            k_cache: kc,
            v_cache: vc,
            b,
            g,
            p,
            place,
            kvh,
        } = *self;
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
                let bmax = scores[h * bs..h * bs + n]
                    .iter()
                    .copied()
                    .fold(f32::NEG_INFINITY, f32::max);
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
}

#[cfg(test)]
mod tests {
    use super::*;

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

    /// One benchmark workload: per sequence (cached tokens, new query tokens).
    struct Workload {
        name: &'static str,
        seqs: Vec<(usize, usize)>,
        /// Calls per timed run, each on the next of `layers` distinct caches.
        calls: usize,
        layers: usize,
        reps: usize,
    }

    /// The caches, batch and queries of one workload with KV type `K`.
    struct BenchSetup<K> {
        caches: Vec<(Vec<K>, Vec<K>)>,
        q: Vec<f32>,
        qsl: Vec<i32>,
        lens: Vec<i32>,
        tables: Vec<i32>,
        max_blocks: usize,
        g: Geometry,
        flops: f64,
    }

    fn bench_setup<K: KvElem>(w: &Workload, conv: fn(f32) -> K) -> BenchSetup<K> {
        // SmolLM2-135M's attention geometry.
        let (nh, nkv, d, bs) = (9, 3, 64, 16);
        let mut seed = 7u64;
        let max_blocks = w
            .seqs
            .iter()
            .map(|s| (s.0 + s.1).div_ceil(bs))
            .max()
            .unwrap_or(1);
        let num_blocks: usize = w.seqs.iter().map(|s| (s.0 + s.1).div_ceil(bs)).sum();
        // Scattered block ids: a shuffled permutation.
        let mut perm: Vec<i32> = (0..num_blocks as i32).collect();
        for i in (1..perm.len()).rev() {
            seed = tessera_core::model::random::splitmix64(seed);
            perm.swap(i, (seed % (i as u64 + 1)) as usize);
        }
        let mut tables = vec![0i32; w.seqs.len() * max_blocks];
        let mut next = 0;
        let (mut qsl, mut lens, mut flops) = (vec![0i32], vec![], 0f64);
        for (s, &(cached, new)) in w.seqs.iter().enumerate() {
            let len = cached + new;
            for b in 0..len.div_ceil(bs) {
                tables[s * max_blocks + b] = perm[next];
                next += 1;
            }
            qsl.push(qsl[s] + new as i32);
            lens.push(len as i32);
            // Each query head sees cached + j + 1 positions: 2d flops for q.k, 2d for p.v.
            let seen: usize = (0..new).map(|j| cached + j + 1).sum();
            flops += (seen * nh * 4 * d) as f64;
        }
        let n = num_blocks * nkv * bs * d;
        let caches = (0..w.layers)
            .map(|_| {
                let mut v = || (0..n).map(|_| conv(rand(&mut seed))).collect::<Vec<K>>();
                (v(), v())
            })
            .collect();
        let tokens = *qsl.last().unwrap_or(&0) as usize;
        let q = (0..tokens * nh * d).map(|_| rand(&mut seed)).collect();
        BenchSetup {
            caches,
            q,
            qsl,
            lens,
            tables,
            max_blocks,
            g: Geometry {
                num_heads: nh,
                num_kv_heads: nkv,
                head_dim: d,
                num_blocks,
                block_size: bs,
            },
            flops: flops * w.calls as f64,
        }
    }

    /// Best-of-`reps` milliseconds for `calls` calls, and GFLOP/s.
    fn bench_run<K: KvElem>(
        w: &Workload,
        s: &BenchSetup<K>,
        pool: &rayon::ThreadPool,
    ) -> (f64, f64) {
        let b = Batch {
            query_start_loc: &s.qsl,
            seq_lens: &s.lens,
            block_tables: &s.tables,
            max_blocks: s.max_blocks,
        };
        let p = AttentionParams {
            scale: 0.125,
            causal: true,
            sliding_window: None,
            softcap: None,
        };
        let mut out = vec![0f32; s.q.len()];
        let mut best = f64::INFINITY;
        for _ in 0..w.reps {
            let t = std::time::Instant::now();
            pool.install(|| {
                for c in 0..w.calls {
                    let (k, v) = &s.caches[c % w.layers];
                    paged_attention(&s.q, k, v, &b, &s.g, &p, &mut out).expect("attention");
                }
            });
            best = best.min(t.elapsed().as_secs_f64());
        }
        (best * 1e3, s.flops / best / 1e9)
    }

    /// `cargo test -p tessera-cpu --release bench_paged_attention -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn bench_paged_attention() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .expect("pool");
        let workloads = [
            Workload {
                name: "decode 64x1, ctx 128-256, 30 calls",
                seqs: (0..64).map(|i| (127 + (i * 67) % 129, 1)).collect(),
                calls: 30,
                layers: 8,
                reps: 7,
            },
            Workload {
                name: "prefill 16x128",
                seqs: vec![(0, 128); 16],
                calls: 1,
                layers: 1,
                reps: 7,
            },
            Workload {
                name: "long 1x2048",
                seqs: vec![(0, 2048)],
                calls: 1,
                layers: 1,
                reps: 3,
            },
        ];
        for w in &workloads {
            let s = bench_setup(w, |x| x);
            let (ms, gf) = bench_run(w, &s, &pool);
            println!("{:<40} f32  {ms:9.2} ms {gf:7.1} GFLOP/s", w.name);
            drop(s);
            let s = bench_setup(w, bf16::from_f32);
            let (ms, gf) = bench_run(w, &s, &pool);
            println!("{:<40} bf16 {ms:9.2} ms {gf:7.1} GFLOP/s", w.name);
        }
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
