//! SIMD kernels for [`crate::attention`]: AVX-512 (16 lanes) and AVX2+FMA (8
//! lanes), chosen at run time. The algorithm is written once, generic over the
//! small [`Isa`] trait; each `#[target_feature]` entry point inlines it for
//! its instruction set.
//!
//! A job is `ntok` consecutive query tokens of one sequence times the `group`
//! query heads of one KV head: `R = ntok * group` query rows that walk the
//! same K/V positions, one *span* (at most `W` positions inside one cache
//! block) at a time, with an online (running max) softmax per row:
//!
//! * **row mode** (`R < W`, decode): each row's scores over a span are one
//!   vector (lane = position). Every K row is loaded (and widened) once and
//!   dotted with all rows; the per-position partial vectors are summed
//!   horizontally by a transpose-and-add tree.
//! * **tile mode** (`R >= W`, prefill): the queries are transposed once per
//!   job to `Q^T [d][Rp]` so a score vector holds one position for `W` rows;
//!   `S^T = K Q^T` is a small GEMM of broadcast K elements times Q^T vectors
//!   (no horizontal sums), and the softmax is vectorised over rows. Each K/V
//!   span is widened to f32 once and serves all `R` rows.
//!
//! Both modes accumulate `O += P V` with FMAs over head_dim, several rows at a
//! time so each V vector is loaded once per row group. Scores are pre-scaled
//! (the scale is folded into the copied queries); masked positions get -inf
//! and weigh exactly 0.

#![cfg(target_arch = "x86_64")]

use crate::attention::{Job, KvElem};
use std::arch::x86_64::*;

/// Per-thread working memory of a job, grown on demand and reused.
#[derive(Default)]
pub(crate) struct Scratch {
    f: Vec<f32>,
    i: Vec<i32>,
}

/// Runs `job` with AVX-512, writing row `(t, h)` to
/// `out[t * out_stride + h * head_dim..][..head_dim]`.
///
/// # Safety
/// The CPU supports AVX-512 F+BW+VL and AVX2+FMA (`crate::features::has_avx512`); head_dim is
/// a multiple of 16; the job is valid (see [`Job`]): every block id in its
/// table for positions below `seq_len` is `< num_blocks` and both caches hold
/// at least `num_blocks * num_kv_heads * block_size * head_dim` elements.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
pub(crate) unsafe fn run_avx512<K: KvElem>(
    job: &Job<'_, K>,
    out: &mut [f32],
    out_stride: usize,
    s: &mut Scratch,
) {
    run::<Avx512, K>(job, out, out_stride, s)
}

/// [`run_avx512`] with AVX2+FMA.
///
/// # Safety
/// As [`run_avx512`], but the CPU needs AVX2+FMA and head_dim a multiple of 8.
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn run_avx2<K: KvElem>(
    job: &Job<'_, K>,
    out: &mut [f32],
    out_stride: usize,
    s: &mut Scratch,
) {
    run::<Avx2, K>(job, out, out_stride, s)
}

/// The vector operations the kernels need. Every method is `unsafe`: the CPU
/// must support the implementation's features, and pointers must be valid
/// for the `W` lanes they touch.
pub(crate) trait Isa: Copy {
    /// f32 lanes per vector.
    const W: usize;
    /// Row vectors per tile-mode score microkernel (x 4 positions).
    const QK_RV: usize;
    /// Head-dim vectors per P.V microkernel (x up to 4 rows).
    const PV_DB: usize;
    type V: Copy;
    unsafe fn zero() -> Self::V;
    unsafe fn splat(x: f32) -> Self::V;
    unsafe fn load(p: *const f32) -> Self::V;
    unsafe fn load_kv<K: KvElem>(p: *const K) -> Self::V;
    unsafe fn store(p: *mut f32, v: Self::V);
    /// `a * b + c`
    unsafe fn fma(a: Self::V, b: Self::V, c: Self::V) -> Self::V;
    unsafe fn add(a: Self::V, b: Self::V) -> Self::V;
    unsafe fn sub(a: Self::V, b: Self::V) -> Self::V;
    unsafe fn mul(a: Self::V, b: Self::V) -> Self::V;
    unsafe fn div(a: Self::V, b: Self::V) -> Self::V;
    unsafe fn max(a: Self::V, b: Self::V) -> Self::V;
    unsafe fn hmax(v: Self::V) -> f32;
    unsafe fn hsum(v: Self::V) -> f32;
    /// Partial sums of 4 vectors: each 128-bit lane `L` of the result holds
    /// `[sum a, sum b, sum c, sum d]`, each over the inputs' lane `L`.
    unsafe fn quad(a: Self::V, b: Self::V, c: Self::V, d: Self::V) -> Self::V;
    /// Sums the 128-bit lanes of `W / 4` quads: lane `4i + x` of the result
    /// is the full sum of input `x` of quad `i`.
    unsafe fn merge_quads(q: &[Self::V; 4]) -> Self::V;
    /// `e^x`, within a few ulp; exactly 0 for `x < -87` (and -inf).
    unsafe fn exp(x: Self::V) -> Self::V;
    unsafe fn tanh(x: Self::V) -> Self::V;
    /// Lanes outside `lo..hi` become -inf (`lo, hi <= W`).
    unsafe fn keep_lanes(v: Self::V, lo: usize, hi: usize) -> Self::V;
    /// Lane `r` becomes -inf unless `lo[r] <= p < hi[r]`.
    unsafe fn keep_rows(v: Self::V, p: i32, lo: *const i32, hi: *const i32) -> Self::V;
    /// -inf lanes become 0.
    unsafe fn zero_neg_inf(v: Self::V) -> Self::V;
    /// Transposes the `W x W` block held in `r[..W]`.
    unsafe fn transpose(r: &mut [Self::V; 16]);
}

// Cephes' expf: e^x = 2^n * e^r, |r| <= ln2/2, with ln2 split in two parts.
const LOG2E: f32 = std::f32::consts::LOG2_E;
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
const EXP_P: [f32; 6] = [
    1.987_569_1e-4,
    1.398_199_9e-3,
    8.333_452e-3,
    4.166_579_6e-2,
    1.666_666_5e-1,
    0.5,
];
/// Below this `exp` returns 0 (e^-87 is near the smallest normal f32).
const EXP_MIN: f32 = -87.0;
const EXP_MAX: f32 = 88.0;
/// Below this `|x|`, tanh uses its Taylor series (exact to f32 there).
const TANH_SMALL: f32 = 0.125;

#[derive(Clone, Copy)]
pub(crate) struct Avx512;

impl Isa for Avx512 {
    const W: usize = 16;
    // 4 positions x 3 row vectors = 12 zmm accumulators.
    const QK_RV: usize = 3;
    // 4 rows x 4 vectors = 16 zmm accumulators + 4 V vectors.
    const PV_DB: usize = 4;
    type V = __m512;

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    unsafe fn zero() -> __m512 {
        _mm512_setzero_ps()
    }
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    unsafe fn splat(x: f32) -> __m512 {
        _mm512_set1_ps(x)
    }
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    unsafe fn load(p: *const f32) -> __m512 {
        _mm512_loadu_ps(p)
    }
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    unsafe fn load_kv<K: KvElem>(p: *const K) -> __m512 {
        K::load16(p)
    }
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    unsafe fn store(p: *mut f32, v: __m512) {
        _mm512_storeu_ps(p, v)
    }
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    unsafe fn fma(a: __m512, b: __m512, c: __m512) -> __m512 {
        _mm512_fmadd_ps(a, b, c)
    }
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    unsafe fn add(a: __m512, b: __m512) -> __m512 {
        _mm512_add_ps(a, b)
    }
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    unsafe fn sub(a: __m512, b: __m512) -> __m512 {
        _mm512_sub_ps(a, b)
    }
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    unsafe fn mul(a: __m512, b: __m512) -> __m512 {
        _mm512_mul_ps(a, b)
    }
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    unsafe fn div(a: __m512, b: __m512) -> __m512 {
        _mm512_div_ps(a, b)
    }
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    unsafe fn max(a: __m512, b: __m512) -> __m512 {
        _mm512_max_ps(a, b)
    }
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    unsafe fn hmax(v: __m512) -> f32 {
        _mm512_reduce_max_ps(v)
    }
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    unsafe fn hsum(v: __m512) -> f32 {
        _mm512_reduce_add_ps(v)
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    unsafe fn quad(a: __m512, b: __m512, c: __m512, d: __m512) -> __m512 {
        // Pairs: per 128-bit lane [a, b, a, b] partial sums; then [a, b, c, d].
        let ab = _mm512_add_ps(_mm512_unpacklo_ps(a, b), _mm512_unpackhi_ps(a, b));
        let cd = _mm512_add_ps(_mm512_unpacklo_ps(c, d), _mm512_unpackhi_ps(c, d));
        _mm512_add_ps(
            _mm512_shuffle_ps::<0x44>(ab, cd),
            _mm512_shuffle_ps::<0xEE>(ab, cd),
        )
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    unsafe fn merge_quads(q: &[__m512; 4]) -> __m512 {
        // [x(L0+L1), x(L2+L3), y(L0+L1), y(L2+L3)], then the totals.
        #[inline]
        #[target_feature(enable = "avx512f")]
        unsafe fn lanes(x: __m512, y: __m512) -> __m512 {
            _mm512_add_ps(
                _mm512_shuffle_f32x4::<0x88>(x, y),
                _mm512_shuffle_f32x4::<0xDD>(x, y),
            )
        }
        lanes(lanes(q[0], q[1]), lanes(q[2], q[3]))
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    unsafe fn exp(x: __m512) -> __m512 {
        // max/min return their second operand when one is NaN: NaN stays NaN.
        let xc = _mm512_min_ps(
            _mm512_set1_ps(EXP_MAX),
            _mm512_max_ps(_mm512_set1_ps(EXP_MIN), x),
        );
        let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
            _mm512_mul_ps(xc, _mm512_set1_ps(LOG2E)),
        );
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_HI), xc);
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_LO), r);
        let mut y = _mm512_set1_ps(EXP_P[0]);
        for c in &EXP_P[1..] {
            y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(*c));
        }
        let y = _mm512_add_ps(
            _mm512_fmadd_ps(y, _mm512_mul_ps(r, r), r),
            _mm512_set1_ps(1.0),
        );
        // n is in -126..=127: 2^n is a normal f32 built from its exponent.
        let pow = _mm512_castsi512_ps(_mm512_slli_epi32::<23>(_mm512_add_epi32(
            _mm512_cvtps_epi32(n),
            _mm512_set1_epi32(127),
        )));
        let under = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(x, _mm512_set1_ps(EXP_MIN));
        _mm512_mask_blend_ps(under, _mm512_mul_ps(y, pow), _mm512_setzero_ps())
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    unsafe fn tanh(x: __m512) -> __m512 {
        let bits = _mm512_castps_si512(x);
        let sign_bit = _mm512_set1_epi32(i32::MIN);
        let sign = _mm512_and_si512(bits, sign_bit);
        let a = _mm512_castsi512_ps(_mm512_andnot_si512(sign_bit, bits));
        // Large |x|: 1 - 2 / (e^{2|x|} + 1); small: x - x^3/3 + 2x^5/15 - 17x^7/315.
        let one = _mm512_set1_ps(1.0);
        let e = Self::exp(_mm512_add_ps(a, a));
        let big = _mm512_sub_ps(
            one,
            _mm512_div_ps(_mm512_set1_ps(2.0), _mm512_add_ps(e, one)),
        );
        let a2 = _mm512_mul_ps(a, a);
        let poly = _mm512_fmadd_ps(
            _mm512_fmadd_ps(
                _mm512_set1_ps(-17.0 / 315.0),
                a2,
                _mm512_set1_ps(2.0 / 15.0),
            ),
            a2,
            _mm512_set1_ps(-1.0 / 3.0),
        );
        let small = _mm512_fmadd_ps(_mm512_mul_ps(a, a2), poly, a);
        let is_small = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(a, _mm512_set1_ps(TANH_SMALL));
        let t = _mm512_mask_blend_ps(is_small, big, small);
        _mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(t), sign))
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    unsafe fn keep_lanes(v: __m512, lo: usize, hi: usize) -> __m512 {
        let below = |n: usize| ((1u32 << n) - 1) as __mmask16;
        let keep = below(hi) & !below(lo);
        _mm512_mask_blend_ps(keep, _mm512_set1_ps(f32::NEG_INFINITY), v)
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    unsafe fn keep_rows(v: __m512, p: i32, lo: *const i32, hi: *const i32) -> __m512 {
        let pv = _mm512_set1_epi32(p);
        let keep = _mm512_cmple_epi32_mask(_mm512_loadu_si512(lo.cast()), pv)
            & _mm512_cmplt_epi32_mask(pv, _mm512_loadu_si512(hi.cast()));
        _mm512_mask_blend_ps(keep, _mm512_set1_ps(f32::NEG_INFINITY), v)
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    unsafe fn zero_neg_inf(v: __m512) -> __m512 {
        let m = _mm512_cmp_ps_mask::<_CMP_EQ_OQ>(v, _mm512_set1_ps(f32::NEG_INFINITY));
        _mm512_mask_blend_ps(m, v, _mm512_setzero_ps())
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    unsafe fn transpose(r: &mut [__m512; 16]) {
        // Within 128-bit lanes: r[4k + c] = column (4L + c) of rows 4k..4k+4.
        let mut t = [_mm512_setzero_ps(); 16];
        for k in 0..8 {
            t[2 * k] = _mm512_unpacklo_ps(r[2 * k], r[2 * k + 1]);
            t[2 * k + 1] = _mm512_unpackhi_ps(r[2 * k], r[2 * k + 1]);
        }
        for k in 0..4 {
            let (a, b, c, d) = (t[4 * k], t[4 * k + 1], t[4 * k + 2], t[4 * k + 3]);
            r[4 * k] = _mm512_shuffle_ps::<0x44>(a, c);
            r[4 * k + 1] = _mm512_shuffle_ps::<0xEE>(a, c);
            r[4 * k + 2] = _mm512_shuffle_ps::<0x44>(b, d);
            r[4 * k + 3] = _mm512_shuffle_ps::<0xEE>(b, d);
        }
        // Across 128-bit lanes, twice.
        for h in 0..2 {
            for c in 0..4 {
                let (a, b) = (r[8 * h + c], r[8 * h + 4 + c]);
                t[8 * h + c] = _mm512_shuffle_f32x4::<0x88>(a, b);
                t[8 * h + 4 + c] = _mm512_shuffle_f32x4::<0xDD>(a, b);
            }
        }
        for c in 0..8 {
            r[c] = _mm512_shuffle_f32x4::<0x88>(t[c], t[8 + c]);
            r[8 + c] = _mm512_shuffle_f32x4::<0xDD>(t[c], t[8 + c]);
        }
    }
}

#[derive(Clone, Copy)]
pub(crate) struct Avx2;

impl Isa for Avx2 {
    const W: usize = 8;
    // 4 positions x 2 row vectors = 8 of the 16 ymm registers.
    const QK_RV: usize = 2;
    // 4 rows x 2 vectors = 8 accumulators + 2 V vectors.
    const PV_DB: usize = 2;
    type V = __m256;

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn zero() -> __m256 {
        _mm256_setzero_ps()
    }
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn splat(x: f32) -> __m256 {
        _mm256_set1_ps(x)
    }
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn load(p: *const f32) -> __m256 {
        _mm256_loadu_ps(p)
    }
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn load_kv<K: KvElem>(p: *const K) -> __m256 {
        K::load8(p)
    }
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn store(p: *mut f32, v: __m256) {
        _mm256_storeu_ps(p, v)
    }
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn fma(a: __m256, b: __m256, c: __m256) -> __m256 {
        _mm256_fmadd_ps(a, b, c)
    }
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn add(a: __m256, b: __m256) -> __m256 {
        _mm256_add_ps(a, b)
    }
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn sub(a: __m256, b: __m256) -> __m256 {
        _mm256_sub_ps(a, b)
    }
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn mul(a: __m256, b: __m256) -> __m256 {
        _mm256_mul_ps(a, b)
    }
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn div(a: __m256, b: __m256) -> __m256 {
        _mm256_div_ps(a, b)
    }
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn max(a: __m256, b: __m256) -> __m256 {
        _mm256_max_ps(a, b)
    }
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn hmax(v: __m256) -> f32 {
        let m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
        let m = _mm_max_ss(m, _mm_shuffle_ps::<1>(m, m));
        _mm_cvtss_f32(m)
    }
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps::<1>(s, s));
        _mm_cvtss_f32(s)
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn quad(a: __m256, b: __m256, c: __m256, d: __m256) -> __m256 {
        let ab = _mm256_add_ps(_mm256_unpacklo_ps(a, b), _mm256_unpackhi_ps(a, b));
        let cd = _mm256_add_ps(_mm256_unpacklo_ps(c, d), _mm256_unpackhi_ps(c, d));
        _mm256_add_ps(
            _mm256_shuffle_ps::<0x44>(ab, cd),
            _mm256_shuffle_ps::<0xEE>(ab, cd),
        )
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn merge_quads(q: &[__m256; 4]) -> __m256 {
        _mm256_add_ps(
            _mm256_permute2f128_ps::<0x20>(q[0], q[1]),
            _mm256_permute2f128_ps::<0x31>(q[0], q[1]),
        )
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn exp(x: __m256) -> __m256 {
        let xc = _mm256_min_ps(
            _mm256_set1_ps(EXP_MAX),
            _mm256_max_ps(_mm256_set1_ps(EXP_MIN), x),
        );
        let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
            _mm256_mul_ps(xc, _mm256_set1_ps(LOG2E)),
        );
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_HI), xc);
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_LO), r);
        let mut y = _mm256_set1_ps(EXP_P[0]);
        for c in &EXP_P[1..] {
            y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(*c));
        }
        let y = _mm256_add_ps(
            _mm256_fmadd_ps(y, _mm256_mul_ps(r, r), r),
            _mm256_set1_ps(1.0),
        );
        let pow = _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(
            _mm256_cvtps_epi32(n),
            _mm256_set1_epi32(127),
        )));
        let under = _mm256_cmp_ps::<_CMP_LT_OQ>(x, _mm256_set1_ps(EXP_MIN));
        _mm256_blendv_ps(_mm256_mul_ps(y, pow), _mm256_setzero_ps(), under)
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn tanh(x: __m256) -> __m256 {
        let sign_bit = _mm256_set1_ps(-0.0);
        let sign = _mm256_and_ps(x, sign_bit);
        let a = _mm256_andnot_ps(sign_bit, x);
        let one = _mm256_set1_ps(1.0);
        let e = Self::exp(_mm256_add_ps(a, a));
        let big = _mm256_sub_ps(
            one,
            _mm256_div_ps(_mm256_set1_ps(2.0), _mm256_add_ps(e, one)),
        );
        let a2 = _mm256_mul_ps(a, a);
        let poly = _mm256_fmadd_ps(
            _mm256_fmadd_ps(
                _mm256_set1_ps(-17.0 / 315.0),
                a2,
                _mm256_set1_ps(2.0 / 15.0),
            ),
            a2,
            _mm256_set1_ps(-1.0 / 3.0),
        );
        let small = _mm256_fmadd_ps(_mm256_mul_ps(a, a2), poly, a);
        let is_small = _mm256_cmp_ps::<_CMP_LT_OQ>(a, _mm256_set1_ps(TANH_SMALL));
        _mm256_or_ps(_mm256_blendv_ps(big, small, is_small), sign)
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn keep_lanes(v: __m256, lo: usize, hi: usize) -> __m256 {
        let iota = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        let keep = _mm256_andnot_si256(
            _mm256_cmpgt_epi32(_mm256_set1_epi32(lo as i32), iota),
            _mm256_cmpgt_epi32(_mm256_set1_epi32(hi as i32), iota),
        );
        _mm256_blendv_ps(
            _mm256_set1_ps(f32::NEG_INFINITY),
            v,
            _mm256_castsi256_ps(keep),
        )
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn keep_rows(v: __m256, p: i32, lo: *const i32, hi: *const i32) -> __m256 {
        let pv = _mm256_set1_epi32(p);
        let keep = _mm256_andnot_si256(
            _mm256_cmpgt_epi32(_mm256_loadu_si256(lo.cast()), pv),
            _mm256_cmpgt_epi32(_mm256_loadu_si256(hi.cast()), pv),
        );
        _mm256_blendv_ps(
            _mm256_set1_ps(f32::NEG_INFINITY),
            v,
            _mm256_castsi256_ps(keep),
        )
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn zero_neg_inf(v: __m256) -> __m256 {
        let m = _mm256_cmp_ps::<_CMP_EQ_OQ>(v, _mm256_set1_ps(f32::NEG_INFINITY));
        _mm256_blendv_ps(v, _mm256_setzero_ps(), m)
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn transpose(r: &mut [__m256; 16]) {
        let mut t = [_mm256_setzero_ps(); 8];
        for k in 0..4 {
            t[2 * k] = _mm256_unpacklo_ps(r[2 * k], r[2 * k + 1]);
            t[2 * k + 1] = _mm256_unpackhi_ps(r[2 * k], r[2 * k + 1]);
        }
        let mut u = [_mm256_setzero_ps(); 8];
        for k in 0..2 {
            let (a, b, c, d) = (t[4 * k], t[4 * k + 1], t[4 * k + 2], t[4 * k + 3]);
            u[4 * k] = _mm256_shuffle_ps::<0x44>(a, c);
            u[4 * k + 1] = _mm256_shuffle_ps::<0xEE>(a, c);
            u[4 * k + 2] = _mm256_shuffle_ps::<0x44>(b, d);
            u[4 * k + 3] = _mm256_shuffle_ps::<0xEE>(b, d);
        }
        for c in 0..4 {
            r[c] = _mm256_permute2f128_ps::<0x20>(u[c], u[4 + c]);
            r[4 + c] = _mm256_permute2f128_ps::<0x31>(u[c], u[4 + c]);
        }
    }
}

/// How far ahead (in positions) a job prefetches K/V. Decode streams its
/// scattered blocks from memory with little compute per block: with one
/// block in flight it reached ~60% of the machine's streaming bandwidth, with
/// four about all of it. Into L2: L1 lacks the miss buffers for that much.
const PREFETCH_AHEAD: usize = 64;

/// Asks for the cache lines of `p..p+n` into L2 (a hint: never faults).
#[inline(always)]
fn prefetch<K>(p: *const K, n: usize) {
    let (p, bytes) = (p.cast::<i8>(), n * std::mem::size_of::<K>());
    let mut at = 0;
    while at < bytes {
        // SAFETY: a prefetch is only a hint and never faults; `wrapping_add`
        // keeps the address arithmetic defined.
        unsafe { _mm_prefetch::<_MM_HINT_T1>(p.wrapping_add(at)) };
        at += 64;
    }
}

/// Rounds `n` up to a multiple of 16 (keeps scratch regions 64-byte aligned).
fn up16(n: usize) -> usize {
    n.div_ceil(16) * 16
}

/// The whole job; see the module docs.
///
/// # Safety
/// As [`run_avx512`], for `I`'s features and lane count.
#[inline(always)]
unsafe fn run<I: Isa, K: KvElem>(
    job: &Job<'_, K>,
    out: &mut [f32],
    out_stride: usize,
    s: &mut Scratch,
) {
    let w = I::W;
    let g = job.g;
    let (d, bs, group) = (g.head_dim, g.block_size, job.group);
    let rows = job.ntok * group;
    let tiled = rows >= w;
    let rp = rows.div_ceil(w) * w;

    // Scratch: [align][q: A rows x d | B d x rp][o: rows x d][m, l, alpha: rp]
    // [p: A rows x W | B W x rp][kf, vf: W x d (tile mode)].
    let q_len = up16(if tiled { d * rp } else { rows * d });
    let o_len = up16(rows * d);
    let r_len = up16(rp);
    let p_len = up16(if tiled { w * rp } else { rows * w });
    let kv_len = if tiled { up16(w * d) } else { 0 };
    let total = 16 + q_len + o_len + 3 * r_len + p_len + 2 * kv_len;
    if s.f.len() < total {
        s.f.resize(total, 0.0);
    }
    let align = match s.f.as_ptr().align_offset(64) {
        a if a < 16 => a,
        _ => 0,
    };
    let (qs, rest) = s.f[align..].split_at_mut(q_len);
    let (o, rest) = rest.split_at_mut(o_len);
    let (m, rest) = rest.split_at_mut(r_len);
    let (l, rest) = rest.split_at_mut(r_len);
    let (alpha, rest) = rest.split_at_mut(r_len);
    let (pb, rest) = rest.split_at_mut(p_len);
    let (kf, rest) = rest.split_at_mut(kv_len);
    let vf = &mut rest[..kv_len];

    // Scaled queries, the running max, sum and output.
    let scale = job.p.scale;
    let qsrc = &job.q[..(job.ntok - 1) * job.q_stride + group * d];
    if tiled {
        // Q^T, a W x W block at a time; padding rows are 0.
        let qt = qs.as_mut_ptr();
        for r0 in (0..rp).step_by(w) {
            for c in (0..d).step_by(w) {
                let mut blk = [I::zero(); 16];
                for (x, v) in blk.iter_mut().enumerate().take(w) {
                    let r = r0 + x;
                    if r < rows {
                        let at = (r / group) * job.q_stride + (r % group) * d + c;
                        // SAFETY: row r's chunk c..c+W lies within qsrc.
                        *v = I::mul(I::load(qsrc.as_ptr().add(at)), I::splat(scale));
                    }
                }
                I::transpose(&mut blk);
                for (y, &v) in blk.iter().enumerate().take(w) {
                    // SAFETY: (c + y) * rp + r0 + W <= d * rp = the Q^T length.
                    I::store(qt.add((c + y) * rp + r0), v);
                }
            }
        }
    } else {
        for r in 0..rows {
            let src = &qsrc[(r / group) * job.q_stride + (r % group) * d..][..d];
            for (dst, &x) in qs[r * d..(r + 1) * d].iter_mut().zip(src) {
                *dst = x * scale;
            }
        }
    }
    if tiled {
        if s.i.len() < 2 * rp {
            s.i.resize(2 * rp, 0);
        }
        let (lo, hi) = s.i.split_at_mut(rp);
        for r in 0..rp {
            // Padding rows see everything (their results are dropped).
            let (a, b) = if r < rows {
                job.visible(r / group)
            } else {
                (0, i32::MAX as usize)
            };
            lo[r] = a as i32;
            hi[r] = b as i32;
        }
    }
    o[..rows * d].fill(0.0);
    m[..rp].fill(f32::NEG_INFINITY);
    l[..rp].fill(0.0);

    let (lo_first, hi_first) = job.visible(0);
    let (lo_last, hi_last) = job.visible(job.ntok - 1);
    let (qs, o, m, l, alpha, pb) = (
        qs.as_mut_ptr(),
        o.as_mut_ptr(),
        m.as_mut_ptr(),
        l.as_mut_ptr(),
        alpha.as_mut_ptr(),
        pb.as_mut_ptr(),
    );
    let (kf, vf) = (kf.as_mut_ptr(), vf.as_mut_ptr());
    // Tile mode's per-row visible ranges (row mode computes its own).
    let (lo_r, hi_r) = if tiled {
        (s.i.as_ptr(), s.i.as_ptr().add(rp))
    } else {
        (std::ptr::null(), std::ptr::null())
    };
    let mut p0 = lo_first;
    // Where prefetching has reached (our first span is loaded right away,
    // other heads' are prefetched too).
    let heads = job.prefetch_heads.clamp(1, g.num_kv_heads - job.kvh);
    let mut pf = if heads > 1 {
        lo_first
    } else {
        lo_first + (bs - lo_first % bs).min(w)
    };
    while p0 < hi_last {
        let n = (bs - p0 % bs).min(w).min(hi_last - p0);
        // SAFETY: positions p0..p0+n lie in one block of this sequence
        // (p0 < hi_last <= seq_len), whose id the caller checked; the span's
        // rows end within that block's (kvh) slab of the caches.
        let at = job.kv_offset(p0);
        let (kp, vp) = (job.k_cache.as_ptr().add(at), job.v_cache.as_ptr().add(at));
        let sp = Span {
            p0,
            n,
            k: kp,
            v: vp,
        };
        // Later spans are in other, scattered blocks: keep the next
        // `PREFETCH_AHEAD` positions loading (into L2) while this one computes.
        while pf < hi_last && pf < p0 + n + PREFETCH_AHEAD {
            let n1 = (bs - pf % bs).min(w).min(hi_last - pf);
            for h in 0..heads {
                let at = job.kv_offset(pf) + h * bs * d;
                prefetch(job.k_cache.as_ptr().wrapping_add(at), n1 * d);
                prefetch(job.v_cache.as_ptr().wrapping_add(at), n1 * d);
            }
            pf += n1;
        }
        if tiled {
            let full = p0 >= lo_last && p0 + n <= hi_first;
            span_tiled::<I, K>(
                job, &sp, full, qs, rp, o, m, l, alpha, pb, kf, vf, lo_r, hi_r,
            );
        } else {
            span_rows::<I, K>(job, &sp, qs, o, m, l, alpha, pb);
        }
        p0 += n;
    }

    // Normalise into the output rows.
    for t in 0..job.ntok {
        for h in 0..group {
            let r = t * group + h;
            let lr = *l.add(r);
            let inv = if lr > 0.0 { 1.0 / lr } else { 0.0 };
            let dst = &mut out[t * out_stride + h * d..][..d];
            let src = std::slice::from_raw_parts(o.add(r * d), d);
            for (y, &x) in dst.iter_mut().zip(src) {
                *y = x * inv;
            }
        }
    }
}

/// `n <= W` consecutive positions from `p0`, inside one cache block; `k` and
/// `v` point at the first position's row.
struct Span<K> {
    p0: usize,
    n: usize,
    k: *const K,
    v: *const K,
}

/// Row mode: scores, softmax and P.V for one span.
///
/// # Safety
/// As [`run`]; the scratch pointers hold the row-mode layout.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn span_rows<I: Isa, K: KvElem>(
    job: &Job<'_, K>,
    sp: &Span<K>,
    qs: *const f32,
    o: *mut f32,
    m: *mut f32,
    l: *mut f32,
    alpha: *mut f32,
    pb: *mut f32,
) {
    let (w, d, group) = (I::W, job.g.head_dim, job.group);
    let rows = job.ntok * group;
    let mut r = 0;
    while r < rows {
        let rr = (rows - r).min(4);
        let q = qs.add(r * d);
        let mut sc = [I::zero(); 4];
        match rr {
            4 => sc = scores_rows::<I, K, 4>(q, d, sp),
            3 => sc[..3].copy_from_slice(&scores_rows::<I, K, 3>(q, d, sp)),
            2 => sc[..2].copy_from_slice(&scores_rows::<I, K, 2>(q, d, sp)),
            _ => sc[..1].copy_from_slice(&scores_rows::<I, K, 1>(q, d, sp)),
        }
        for (i, &s) in sc[..rr].iter().enumerate() {
            let row = r + i;
            let (lo, hi) = job.visible(row / group);
            let mut s = s;
            if let Some(c) = job.p.softcap {
                let c = I::splat(c);
                s = I::mul(c, I::tanh(I::div(s, c)));
            }
            let lanes = |x: usize| x.saturating_sub(sp.p0).min(sp.n);
            s = I::keep_lanes(s, lanes(lo), lanes(hi));
            let m_old = *m.add(row);
            let m_new = m_old.max(I::hmax(s));
            let prow = pb.add(row * w);
            if m_new == f32::NEG_INFINITY {
                // Nothing visible yet: no weights, nothing to rescale.
                *alpha.add(row) = 1.0;
                I::store(prow, I::zero());
                continue;
            }
            let a = if m_new == m_old {
                1.0
            } else {
                (m_old - m_new).exp()
            };
            let e = I::exp(I::sub(s, I::splat(m_new)));
            I::store(prow, e);
            *l.add(row) = *l.add(row) * a + I::hsum(e);
            *m.add(row) = m_new;
            *alpha.add(row) = a;
        }
        r += rr;
    }
    pv_all::<I, K>(o, d, rows, alpha, pb, w, 1, sp.v, sp.n);
}

/// Scores of `RR` query rows (`q`, stride `d`) against the span's keys: lane
/// `j` of result `r` is `q_r . k_j` (lanes `j >= n` are 0).
///
/// Each key vector is loaded (widened) once for all rows; every 4 positions'
/// partial-sum vectors are folded into one quad right away, so the horizontal
/// sums stay in registers.
///
/// # Safety
/// `q` holds `RR` rows of `d`; the span's `n` key rows are readable.
#[inline(always)]
unsafe fn scores_rows<I: Isa, K: KvElem, const RR: usize>(
    q: *const f32,
    d: usize,
    sp: &Span<K>,
) -> [I::V; RR] {
    let mut quads = [[I::zero(); 4]; RR];
    for quad in 0..sp.n.div_ceil(4) {
        let mut acc = [[I::zero(); 4]; RR];
        for x in 0..4 {
            let j = quad * 4 + x;
            if j >= sp.n {
                break;
            }
            let kj = sp.k.add(j * d);
            let mut c = 0;
            while c < d {
                let kv = I::load_kv(kj.add(c));
                for (rr, a) in acc.iter_mut().enumerate() {
                    a[x] = I::fma(I::load(q.add(rr * d + c)), kv, a[x]);
                }
                c += I::W;
            }
        }
        for (qd, a) in quads.iter_mut().zip(&acc) {
            qd[quad] = I::quad(a[0], a[1], a[2], a[3]);
        }
    }
    let mut s = [I::zero(); RR];
    for (s, qd) in s.iter_mut().zip(&quads) {
        *s = I::merge_quads(qd);
    }
    s
}

/// Tile mode: scores, softmax and P.V for one span.
///
/// # Safety
/// As [`run`]; the scratch pointers hold the tile-mode layout.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn span_tiled<I: Isa, K: KvElem>(
    job: &Job<'_, K>,
    sp: &Span<K>,
    full: bool,
    qt: *const f32,
    rp: usize,
    o: *mut f32,
    m: *mut f32,
    l: *mut f32,
    alpha: *mut f32,
    st: *mut f32,
    kf: *mut f32,
    vf: *mut f32,
    lo: *const i32,
    hi: *const i32,
) {
    let (w, d) = (I::W, job.g.head_dim);
    let n = sp.n;
    // Widen the span's keys and values once for all rows.
    for j in 0..n {
        let mut c = 0;
        while c < d {
            I::store(kf.add(j * d + c), I::load_kv(sp.k.add(j * d + c)));
            I::store(vf.add(j * d + c), I::load_kv(sp.v.add(j * d + c)));
            c += w;
        }
    }
    // S^T[j][r] = k_j . q_r, 4 positions x QK_RV row vectors at a time.
    let nv = rp / w;
    let mut j = 0;
    while j < n {
        // Past the span's end, repeat its last key (results are not stored).
        let kr = [0, 1, 2, 3].map(|x| kf.add((j + x).min(n - 1) * d) as *const f32);
        let keep = (n - j).min(4);
        let mut v = 0;
        while v < nv {
            let c = (nv - v).min(I::QK_RV);
            let (q, s) = (qt.add(v * w), st.add(j * rp + v * w));
            match c {
                3 => scores_tile::<I, 3>(q, rp, &kr, d, s, keep),
                2 => scores_tile::<I, 2>(q, rp, &kr, d, s, keep),
                _ => scores_tile::<I, 1>(q, rp, &kr, d, s, keep),
            }
            v += c;
        }
        j += 4;
    }
    // Online softmax, vectorised over rows.
    for v in 0..nv {
        let col = v * w;
        let mut bmax = I::splat(f32::NEG_INFINITY);
        for j in 0..n {
            let at = st.add(j * rp + col);
            let mut s = I::load(at);
            if let Some(c) = job.p.softcap {
                let c = I::splat(c);
                s = I::mul(c, I::tanh(I::div(s, c)));
            }
            if !full {
                s = I::keep_rows(s, (sp.p0 + j) as i32, lo.add(col), hi.add(col));
            }
            if job.p.softcap.is_some() || !full {
                I::store(at, s);
            }
            bmax = I::max(bmax, s);
        }
        let m_old = I::load(m.add(col));
        let m_new = I::max(m_old, bmax);
        // Rows with nothing visible yet keep m = -inf; subtracting 0 instead
        // gives them weights e^-inf = 0 (and alpha 0 on an all-zero state).
        let m_use = I::zero_neg_inf(m_new);
        let a = I::exp(I::sub(m_old, m_use));
        let mut sum = I::zero();
        for j in 0..n {
            let at = st.add(j * rp + col);
            let e = I::exp(I::sub(I::load(at), m_use));
            I::store(at, e);
            sum = I::add(sum, e);
        }
        I::store(m.add(col), m_new);
        I::store(alpha.add(col), a);
        I::store(l.add(col), I::fma(I::load(l.add(col)), a, sum));
    }
    let rows = job.ntok * job.group;
    pv_all::<I, f32>(o, d, rows, alpha, st, 1, rp, vf, n);
}

/// `S^T` for 4 positions (key rows `k`, the last ones possibly repeated) and
/// `RV` row vectors of `Q^T` (`q`, row stride `rp`); stores the first `keep`
/// positions' vectors at `s + j * rp`.
///
/// # Safety
/// `q + i * rp` holds `RV * W` values for i < d; `k[x]` holds `d` values;
/// `s + j * rp` has room for `RV * W` values for j < keep.
#[inline(always)]
unsafe fn scores_tile<I: Isa, const RV: usize>(
    q: *const f32,
    rp: usize,
    k: &[*const f32; 4],
    d: usize,
    s: *mut f32,
    keep: usize,
) {
    let mut acc = [[I::zero(); RV]; 4];
    for i in 0..d {
        let mut qv = [I::zero(); RV];
        for (v, x) in qv.iter_mut().enumerate() {
            *x = I::load(q.add(i * rp + v * I::W));
        }
        for (a, kx) in acc.iter_mut().zip(k) {
            let kb = I::splat(*kx.add(i));
            for (a, &x) in a.iter_mut().zip(&qv) {
                *a = I::fma(kb, x, *a);
            }
        }
    }
    for (j, a) in acc.iter().enumerate().take(keep) {
        for (v, &x) in a.iter().enumerate() {
            I::store(s.add(j * rp + v * I::W), x);
        }
    }
}

/// `O_r = alpha_r O_r + sum_j P[r][j] V_j` for all rows, where `P[r][j]` is
/// `p[r * pr + j * pj]` and `V_j` is `v + j * d`.
///
/// # Safety
/// `o` holds `rows x d`, `alpha` `rows`; `p` covers every (r, j) above; `v`
/// holds `n` rows of `d`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn pv_all<I: Isa, E: KvElem>(
    o: *mut f32,
    d: usize,
    rows: usize,
    alpha: *const f32,
    p: *const f32,
    pr: usize,
    pj: usize,
    v: *const E,
    n: usize,
) {
    let mut r = 0;
    while r < rows {
        let rr = (rows - r).min(4);
        let (o, a, p) = (o.add(r * d), alpha.add(r), p.add(r * pr));
        match rr {
            4 => pv_rows::<I, E, 4>(o, d, a, p, pr, pj, v, n),
            3 => pv_rows::<I, E, 3>(o, d, a, p, pr, pj, v, n),
            2 => pv_rows::<I, E, 2>(o, d, a, p, pr, pj, v, n),
            _ => pv_rows::<I, E, 1>(o, d, a, p, pr, pj, v, n),
        }
        r += rr;
    }
}

/// [`pv_all`] for `RR` rows, `PV_DB` head-dim vectors at a time.
///
/// # Safety
/// As [`pv_all`] for rows `0..RR`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn pv_rows<I: Isa, E: KvElem, const RR: usize>(
    o: *mut f32,
    d: usize,
    alpha: *const f32,
    p: *const f32,
    pr: usize,
    pj: usize,
    v: *const E,
    n: usize,
) {
    let step = I::PV_DB * I::W;
    let mut c = 0;
    while c + step <= d {
        match I::PV_DB {
            4 => pv_block::<I, E, RR, 4>(o.add(c), d, alpha, p, pr, pj, v.add(c), n),
            _ => pv_block::<I, E, RR, 2>(o.add(c), d, alpha, p, pr, pj, v.add(c), n),
        }
        c += step;
    }
    while c < d {
        pv_block::<I, E, RR, 1>(o.add(c), d, alpha, p, pr, pj, v.add(c), n);
        c += I::W;
    }
}

/// `RR` rows x `DB` vectors of the output, in registers over the span.
///
/// # Safety
/// As [`pv_all`], for columns `0..DB * W` from `o` and `v`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn pv_block<I: Isa, E: KvElem, const RR: usize, const DB: usize>(
    o: *mut f32,
    d: usize,
    alpha: *const f32,
    p: *const f32,
    pr: usize,
    pj: usize,
    v: *const E,
    n: usize,
) {
    let mut acc = [[I::zero(); DB]; RR];
    for (r, row) in acc.iter_mut().enumerate() {
        let a = I::splat(*alpha.add(r));
        for (c, x) in row.iter_mut().enumerate() {
            *x = I::mul(I::load(o.add(r * d + c * I::W)), a);
        }
    }
    for j in 0..n {
        let mut vv = [I::zero(); DB];
        for (c, x) in vv.iter_mut().enumerate() {
            *x = I::load_kv(v.add(j * d + c * I::W));
        }
        for (r, row) in acc.iter_mut().enumerate() {
            let pb = I::splat(*p.add(r * pr + j * pj));
            for (x, &vc) in row.iter_mut().zip(&vv) {
                *x = I::fma(pb, vc, *x);
            }
        }
    }
    for (r, row) in acc.iter().enumerate() {
        for (c, &x) in row.iter().enumerate() {
            I::store(o.add(r * d + c * I::W), x);
        }
    }
}
