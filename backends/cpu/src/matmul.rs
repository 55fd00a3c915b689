//! Dense matmul of f32 activations against linear-layer weights: the hot path
//! of the CPU backend.
//!
//! `out[t, j] = sum_i x[t, i] * w[j, i] (+ bias[j])`, with `w` in the HF layout
//! `[out_features, in_features]`, f32 or bf16. The SIMD microkernels (4 tokens
//! x 4 rows of register accumulators, see `simd.rs`) walk the operands in
//! place; this file cuts the output into tasks for the rayon pool:
//!
//! * **Decode** (`m <= 4`) is memory-bandwidth bound: the rows of `w` are split
//!   into ~4 contiguous chunks per thread (>= 16 rows, >= 64K multiply-adds),
//!   and each row is streamed from memory exactly once for all tokens, bf16
//!   widened in registers. The kernels prefetch the next group of rows.
//! * **Prefill** (`m > 4`) is compute bound: tasks are (<= 128 tokens) x (row
//!   chunk), split over tokens as well when `n` is small. Every weight vector
//!   loaded (and widened) serves 4 tokens and every activation vector 4 rows.
//!
//! Measured on Zen 4: copying operands into packed,
//! padded or `k`-tiled buffers was slower than this, so there is none: bf16
//! prefill runs at ~90% of the FMA peak, f32 at 70-90%.

use crate::simd::{self, Level, Tile, WElem};
use half::bf16;
use rayon::prelude::*;

/// Weights of a linear layer, row-major `[n, k]` (HF layout: out_features x
/// in_features).
#[derive(Clone, Copy, Debug)]
pub enum WeightRows<'a> {
    F32(&'a [f32]),
    BF16(&'a [bf16]),
}

/// `out[t*n + j] = sum_i x[t*k + i] * w[j*k + i] (+ bias[j])`, for `t` in
/// `0..m`, `j` in `0..n`.
///
/// `x`: `[m, k]` f32, `w`: `[n, k]`, `bias`: `[n]`, `out`: `[m, n]` f32.
/// Activations stay exact f32 (bf16 weights are widened, never the reverse).
/// Multithreaded on the current rayon pool.
///
/// # Panics
/// If a slice is shorter than its shape says: a caller bug, checked in
/// release builds too because the kernels index with raw pointers (debug
/// builds also check that the lengths are exact).
pub fn matmul(
    x: &[f32],
    m: usize,
    k: usize,
    w: WeightRows<'_>,
    n: usize,
    bias: Option<&[f32]>,
    out: &mut [f32],
) {
    if let WeightRows::BF16(wb) = w {
        if crate::simd_bf16::supported() {
            return matmul_bf16dot(x, m, k, wb, n, bias, out);
        }
    }
    matmul_with(simd::level(), x, m, k, w, n, bias, out);
}

/// bf16 weights on a CPU with AVX512-BF16: activations rounded to bf16 once,
/// then `vdpbf16ps` tiles over the same task grid as [`run`].
fn matmul_bf16dot(
    x: &[f32],
    m: usize,
    k: usize,
    w: &[half::bf16],
    n: usize,
    bias: Option<&[f32]>,
    out: &mut [f32],
) {
    assert!(
        x.len() >= m * k
            && w.len() >= n * k
            && out.len() >= m * n
            && bias.is_none_or(|b| b.len() >= n),
        "matmul: an operand is shorter than its shape"
    );
    if m == 0 || n == 0 {
        return;
    }
    let xb = crate::simd_bf16::round_all(&x[..m * k]);
    let plan = Plan::new(m, k, n, rayon::current_num_threads());
    let (mc, nc) = (plan.mc.clamp(1, m), plan.nc.clamp(1, n));
    let (m_tasks, n_tasks) = (m.div_ceil(mc), n.div_ceil(nc));
    let out_ptr = OutPtr(out.as_mut_ptr());
    let (xp, wp) = (xb.as_ptr() as usize, w.as_ptr() as usize);
    let task = |idx: usize| {
        let (ti, ni) = (idx / n_tasks, idx % n_tasks);
        let (t0, j0) = (ti * mc, ni * nc);
        let (t1, j1) = ((t0 + mc).min(m), (j0 + nc).min(n));
        // SAFETY: tokens t0..t1 and rows j0..j1 are inside x (m*k, converted
        // above) and w (n*k, asserted); this task alone writes that block of out.
        unsafe {
            crate::simd_bf16::tile(
                (xp as *const u16).add(t0 * k),
                k,
                t1 - t0,
                (wp as *const u16).add(j0 * k),
                k,
                j1 - j0,
                k,
                out_ptr.get().add(t0 * n + j0),
                n,
            )
        };
        if let Some(b) = bias {
            for t in t0..t1 {
                // SAFETY: row t of this task's block.
                let row = unsafe {
                    std::slice::from_raw_parts_mut(out_ptr.get().add(t * n + j0), j1 - j0)
                };
                for (o, bj) in row.iter_mut().zip(&b[j0..j1]) {
                    *o += bj;
                }
            }
        }
    };
    let tasks = m_tasks * n_tasks;
    if tasks == 1 {
        task(0);
    } else {
        (0..tasks).into_par_iter().for_each(task);
    }
}

/// Name of the SIMD path chosen on this machine ("avx512", "avx2", "neon",
/// "scalar"), for `tessera devices`.
pub fn simd_level() -> &'static str {
    simd::level().name()
}

/// [`matmul`] with an explicit SIMD level (tests and benchmarks compare them;
/// a level the CPU lacks runs the scalar kernels).
#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul_with(
    level: Level,
    x: &[f32],
    m: usize,
    k: usize,
    w: WeightRows<'_>,
    n: usize,
    bias: Option<&[f32]>,
    out: &mut [f32],
) {
    let plan = Plan::new(m, k, n, rayon::current_num_threads());
    match w {
        WeightRows::F32(w) => run(level, plan, x, m, k, w, n, bias, out),
        WeightRows::BF16(w) => run(level, plan, x, m, k, w, n, bias, out),
    }
}

/// Up to this many tokens a call is decode (one token group of the kernels).
const DECODE_M: usize = 4;
/// Most tokens per task, so the activation block stays around L2 size.
const MC_MAX: usize = 128;
/// Row chunks are multiples of this (whole microkernels).
const ROW_ALIGN: usize = 16;
/// Tasks per rayon thread, for load balance on shared or noisy cores.
const TASKS_PER_THREAD: usize = 4;
/// Least multiply-adds per task, so rayon's overhead (~µs) stays negligible.
const MIN_TASK_MACS: usize = 1 << 16;

/// How a call is cut into tasks: a grid of `mc` tokens x `nc` rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Plan {
    mc: usize,
    nc: usize,
}

fn round_up(v: usize, to: usize) -> usize {
    v.div_ceil(to) * to
}

impl Plan {
    fn new(m: usize, k: usize, n: usize, threads: usize) -> Plan {
        let (m, k, n) = (m.max(1), k.max(1), n.max(1));
        let macs = m.saturating_mul(k).saturating_mul(n);
        let target = if threads <= 1 {
            1
        } else {
            threads
                .saturating_mul(TASKS_PER_THREAD)
                .min((macs / MIN_TASK_MACS).max(1))
        };
        let mut m_tasks = if m <= DECODE_M { 1 } else { m.div_ceil(MC_MAX) };
        let n_tasks = target.div_ceil(m_tasks).clamp(1, n.div_ceil(ROW_ALIGN));
        if m_tasks * n_tasks < target && m > 2 * DECODE_M {
            // Few rows (small n): split the tokens further.
            m_tasks = m_tasks.max(target.div_ceil(n_tasks).min(m.div_ceil(DECODE_M)));
        }
        let mc = if m <= DECODE_M {
            m
        } else {
            round_up(m.div_ceil(m_tasks), DECODE_M).min(m)
        };
        let nc = round_up(n.div_ceil(n_tasks), ROW_ALIGN).min(n);
        Plan { mc, nc }
    }
}

/// `*mut f32` shared by the tasks; each task writes only its own block.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);

// SAFETY: the pointer is only dereferenced by `run`'s tasks, each on its own
// disjoint (token range x row range) block, so sharing it between threads
// cannot create a data race.
unsafe impl Send for OutPtr {}
// SAFETY: as for Send.
unsafe impl Sync for OutPtr {}

impl OutPtr {
    // A method, not a field access, so closures capture the Sync wrapper.
    fn get(self) -> *mut f32 {
        self.0
    }
}

#[allow(clippy::too_many_arguments)]
fn run<W: WElem>(
    level: Level,
    plan: Plan,
    x: &[f32],
    m: usize,
    k: usize,
    w: &[W],
    n: usize,
    bias: Option<&[f32]>,
    out: &mut [f32],
) {
    debug_assert_eq!(Some(x.len()), m.checked_mul(k), "matmul: x is not [m, k]");
    debug_assert_eq!(Some(w.len()), n.checked_mul(k), "matmul: w is not [n, k]");
    debug_assert_eq!(
        Some(out.len()),
        m.checked_mul(n),
        "matmul: out is not [m, n]"
    );
    debug_assert!(bias.is_none_or(|b| b.len() == n), "matmul: bias is not [n]");
    // Release-mode guard that makes the raw-pointer writes below sound (the
    // kernels check `x` and `w` themselves).
    assert!(
        m.checked_mul(n).is_some_and(|l| l <= out.len()) && bias.is_none_or(|b| b.len() >= n),
        "matmul: out or bias shorter than its shape"
    );
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        for row in out[..m * n].chunks_exact_mut(n) {
            match bias {
                Some(b) => row.copy_from_slice(&b[..n]),
                None => row.fill(0.0),
            }
        }
        return;
    }
    let (mc, nc) = (plan.mc.clamp(1, m), plan.nc.clamp(1, n));
    let (m_tasks, n_tasks) = (m.div_ceil(mc), n.div_ceil(nc));
    let out_ptr = OutPtr(out.as_mut_ptr());
    let task = |idx: usize| {
        let (ti, ni) = (idx / n_tasks, idx % n_tasks);
        let (t0, j0) = (ti * mc, ni * nc);
        let (t1, j1) = ((t0 + mc).min(m), (j0 + nc).min(n));
        let (mt, nt) = (t1 - t0, j1 - j0);
        // `x` and `w` may be short: `simd::tile` checks them (and panics).
        let xs = x.get(t0 * k..).unwrap_or_default();
        let ws = w.get(j0 * k..).unwrap_or_default();
        let tile = Tile {
            x: xs,
            ldx: k,
            m: mt,
            w: ws,
            ldw: k,
            n: nt,
            k,
        };
        // SAFETY: the tile writes out[(t0 + t) * n + j0 + j] for t < mt,
        // j < nt: inside `out` (m*n elements, asserted above), and only this
        // task touches tokens t0..t1 x rows j0..j1, since the (ti, ni) grid
        // partitions [0, m) x [0, n).
        unsafe { simd::tile(level, tile, out_ptr.get().add(t0 * n + j0), n) };
        if let Some(b) = bias {
            for t in t0..t1 {
                // SAFETY: row t of this task's block, as above.
                let row =
                    unsafe { std::slice::from_raw_parts_mut(out_ptr.get().add(t * n + j0), nt) };
                for (o, bj) in row.iter_mut().zip(&b[j0..j1]) {
                    *o += bj;
                }
            }
        }
    };
    let tasks = m_tasks * n_tasks;
    if tasks == 1 {
        task(0);
    } else {
        (0..tasks).into_par_iter().for_each(task);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Rng(u64);

    impl Rng {
        fn f32(&mut self) -> f32 {
            // xorshift64*, uniform in [-1, 1).
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            let v = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D);
            ((v >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        }
        fn vec(&mut self, len: usize) -> Vec<f32> {
            (0..len).map(|_| self.f32()).collect()
        }
    }

    /// f64 reference and, per output, sum |x||w| + |bias| (the error scale).
    fn reference(
        x: &[f32],
        m: usize,
        k: usize,
        w: &[f32],
        n: usize,
        bias: Option<&[f32]>,
    ) -> (Vec<f64>, Vec<f64>) {
        let mut r = vec![0.0; m * n];
        let mut scale = vec![0.0; m * n];
        for t in 0..m {
            for j in 0..n {
                let (mut s, mut a) = (0.0f64, 0.0f64);
                for i in 0..k {
                    let p = f64::from(x[t * k + i]) * f64::from(w[j * k + i]);
                    s += p;
                    a += p.abs();
                }
                if let Some(b) = bias {
                    s += f64::from(b[j]);
                    a += f64::from(b[j]).abs();
                }
                r[t * n + j] = s;
                scale[t * n + j] = a;
            }
        }
        (r, scale)
    }

    fn check(got: &[f32], want: &[f64], scale: &[f64], what: &str) {
        for (idx, ((&g, &r), &s)) in got.iter().zip(want).zip(scale).enumerate() {
            let err = (f64::from(g) - r).abs();
            assert!(
                err <= 1e-5 * s + 1e-30,
                "{what}: out[{idx}] = {g}, want {r} (err {err:e}, scale {s:e})"
            );
        }
    }

    fn levels() -> Vec<Level> {
        Level::ALL
            .into_iter()
            .filter(|l| l.is_supported())
            .collect()
    }

    /// Runs one case at `level` with `plan` (or the default plan), f32 and
    /// bf16 weights, with and without bias, against the f64 reference.
    fn case(level: Level, plan: Option<Plan>, m: usize, k: usize, n: usize, rng: &mut Rng) {
        let x = rng.vec(m * k);
        let w = rng.vec(n * k);
        let wb: Vec<bf16> = w.iter().map(|&v| bf16::from_f32(v)).collect();
        let wr: Vec<f32> = wb.iter().map(|v| v.to_f32()).collect();
        let b = rng.vec(n);
        for bias in [None, Some(&b[..])] {
            for is_bf16 in [false, true] {
                let (wt, wref) = if is_bf16 {
                    (WeightRows::BF16(&wb), &wr)
                } else {
                    (WeightRows::F32(&w), &w)
                };
                let mut out = vec![f32::NAN; m * n];
                match (plan, wt) {
                    (None, wt) => matmul_with(level, &x, m, k, wt, n, bias, &mut out),
                    (Some(p), WeightRows::F32(w)) => run(level, p, &x, m, k, w, n, bias, &mut out),
                    (Some(p), WeightRows::BF16(w)) => run(level, p, &x, m, k, w, n, bias, &mut out),
                }
                let (want, scale) = reference(&x, m, k, wref, n, bias);
                let what = format!(
                    "{} m={m} k={k} n={n} bf16={is_bf16} bias={} plan={plan:?}",
                    level.name(),
                    bias.is_some()
                );
                check(&out, &want, &scale, &what);
            }
        }
    }

    #[test]
    fn matmul_matches_reference_every_level() {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        for level in levels() {
            for m in [1, 2, 3, 5, 17, 64] {
                for k in [1, 7, 16, 64, 100, 576] {
                    for n in [1, 3, 16, 33, 100] {
                        case(level, None, m, k, n, &mut rng);
                    }
                }
            }
        }
    }

    #[test]
    fn matmul_public_entry_point() {
        let mut rng = Rng(7);
        let (m, k, n) = (3, 37, 21);
        let x = rng.vec(m * k);
        let w = rng.vec(n * k);
        let b = rng.vec(n);
        let mut out = vec![0.0; m * n];
        matmul(&x, m, k, WeightRows::F32(&w), n, Some(&b), &mut out);
        let (want, scale) = reference(&x, m, k, &w, n, Some(&b));
        check(&out, &want, &scale, "matmul()");
        assert!(["avx512", "avx2", "neon", "scalar"].contains(&simd_level()));
    }

    /// Forced task grids: many tasks, ragged last blocks over tokens and rows,
    /// and blocks that do not line up with the microkernels.
    #[test]
    fn matmul_forced_plans_every_level() {
        let mut rng = Rng(42);
        let plans = [
            Plan { mc: 4, nc: 16 },
            Plan { mc: 8, nc: 16 },
            Plan { mc: 5, nc: 7 },
            Plan { mc: 1, nc: 1 },
            Plan { mc: 3, nc: 5 },
            Plan { mc: 64, nc: 100 },
        ];
        for level in levels() {
            for plan in plans {
                for (m, k, n) in [
                    (1, 100, 33),
                    (5, 100, 33),
                    (17, 576, 40),
                    (64, 130, 17),
                    (9, 1, 5),
                ] {
                    case(level, Some(plan), m, k, n, &mut rng);
                }
            }
        }
    }

    /// Each SIMD path directly against the scalar path, on shapes with
    /// every remainder of the microkernels (m mod 4, n mod 4, k mod 16).
    #[test]
    fn matmul_simd_paths_agree_with_scalar() {
        let mut rng = Rng(3);
        for level in levels() {
            for (m, k, n) in [
                (1, 31, 9),
                (4, 33, 8),
                (7, 47, 13),
                (16, 257, 19),
                (2, 1040, 70),
            ] {
                let x = rng.vec(m * k);
                let w = rng.vec(n * k);
                let wb: Vec<bf16> = w.iter().map(|&v| bf16::from_f32(v)).collect();
                for wt in [WeightRows::F32(&w), WeightRows::BF16(&wb)] {
                    let mut a = vec![0.0; m * n];
                    let mut s = vec![0.0; m * n];
                    matmul_with(level, &x, m, k, wt, n, None, &mut a);
                    matmul_with(Level::Scalar, &x, m, k, wt, n, None, &mut s);
                    // Both are f32 sums of k products |x||w| <= 1 in another
                    // order: differences are a few ulps of k.
                    for (i, (p, q)) in a.iter().zip(&s).enumerate() {
                        assert!(
                            (p - q).abs() <= 1e-5 * k as f32,
                            "{} vs scalar, m={m} k={k} n={n} {wt:?}: [{i}] {p} vs {q}",
                            level.name()
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn matmul_degenerate_shapes() {
        let b = [1.5f32, -2.0, 3.0];
        let mut out = vec![9.0; 6];
        matmul(&[], 2, 0, WeightRows::F32(&[]), 3, Some(&b), &mut out);
        assert_eq!(out, [1.5, -2.0, 3.0, 1.5, -2.0, 3.0]);
        matmul(&[], 2, 0, WeightRows::BF16(&[]), 3, None, &mut out);
        assert_eq!(out, [0.0; 6]);
        let mut none: Vec<f32> = Vec::new();
        matmul(&[], 0, 4, WeightRows::F32(&[1.0; 12]), 3, None, &mut none);
        matmul(&[1.0; 8], 2, 4, WeightRows::F32(&[]), 0, None, &mut none);
    }

    #[test]
    fn matmul_plan_shapes() {
        // Decode: one token block, rows split into >= 4 chunks of 16k rows.
        let p = Plan::new(1, 576, 1536, 2);
        assert_eq!(p.mc, 1);
        assert_eq!(p.nc % ROW_ALIGN, 0);
        assert!(1536usize.div_ceil(p.nc) >= 4);
        // Prefill: one token block of 128, 8 row chunks.
        let p = Plan::new(128, 2048, 8192, 2);
        assert_eq!((p.mc, p.nc), (128, 1024));
        // Long prompt: token blocks of at most 128.
        let p = Plan::new(500, 576, 1536, 2);
        assert_eq!(p.mc, 128);
        // Tiny: a single task.
        let p = Plan::new(2, 16, 16, 8);
        assert_eq!((p.mc, p.nc), (2, 16));
        // Small n, many tokens: split over tokens too.
        let p = Plan::new(256, 512, 16, 4);
        assert!(256usize.div_ceil(p.mc) >= 4, "{p:?}");
    }
}
