//! Per-ISA SIMD kernels for the CPU matmul, chosen at run time.
//!
//! Paths: AVX-512 (F+BW+VL), AVX2+FMA, NEON (aarch64) and a portable scalar
//! fallback that is correct everywhere. [`level`] picks the best one that the
//! running CPU supports, once, and caches it.
//!
//! The one operation every path implements is a *tile* in dot-product form
//! (both operands contiguous along `k`, the HF `[out, in]` weight layout):
//!
//! ```text
//! out[t*ldo + j] = sum_{i<k} x[t*ldx + i] * w[j*ldw + i]     t < m, j < n
//! ```
//!
//! Inside a tile each path walks groups of `NR` weight rows and, for each,
//! groups of `MR` tokens, keeping an `MR x NR` block of vector accumulators in
//! registers: every weight vector is loaded (and for bf16, widened) once per
//! token group and every activation vector once per row group. The per-row
//! partial vectors are summed horizontally once, at the end of the row. For
//! decode-sized token counts the first token group of each row group also
//! prefetches the next row group, whose short rows the hardware prefetcher
//! would otherwise pick up late. Threading lives in `matmul.rs`.
//!
//! Activations stay exact f32; bf16 weights are widened to f32 exactly (a
//! 16-bit shift), and all arithmetic is f32.

use half::bf16;
use std::sync::OnceLock;

#[cfg(target_arch = "aarch64")]
use std::arch::aarch64::*;
#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// A SIMD instruction-set level with a kernel implementation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Level {
    /// Portable Rust, no intrinsics (the compiler may still auto-vectorize).
    Scalar,
    /// x86_64 AVX2 + FMA, 8 f32 lanes.
    Avx2,
    /// x86_64 AVX-512 F + BW + VL, 16 f32 lanes, masked tails.
    Avx512,
    /// aarch64 Advanced SIMD, 4 f32 lanes.
    Neon,
}

impl Level {
    /// Every level, best first.
    pub(crate) const ALL: [Level; 4] = [Level::Avx512, Level::Avx2, Level::Neon, Level::Scalar];

    /// Short name, as shown by `tessera devices`.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Level::Scalar => "scalar",
            Level::Avx2 => "avx2",
            Level::Avx512 => "avx512",
            Level::Neon => "neon",
        }
    }

    /// Whether the running CPU can execute this level's kernels.
    pub(crate) fn is_supported(self) -> bool {
        match self {
            Level::Scalar => true,
            Level::Avx2 => avx2_supported(),
            Level::Avx512 => avx512_supported(),
            Level::Neon => neon_supported(),
        }
    }
}

fn avx2_supported() -> bool {
    crate::features::has_avx2_fma()
}

fn avx512_supported() -> bool {
    crate::features::has_avx512()
}

#[cfg(target_arch = "aarch64")]
fn neon_supported() -> bool {
    std::arch::is_aarch64_feature_detected!("neon")
}

#[cfg(not(target_arch = "aarch64"))]
fn neon_supported() -> bool {
    false
}

/// The best level this CPU supports; detected once and cached.
pub(crate) fn level() -> Level {
    static LEVEL: OnceLock<Level> = OnceLock::new();
    *LEVEL.get_or_init(|| {
        Level::ALL
            .into_iter()
            .find(|l| l.is_supported())
            .unwrap_or(Level::Scalar)
    })
}

/// Element type of weight rows: f32 or bf16. Sealed to those two.
pub(crate) trait WElem: Copy + Send + Sync + sealed::Sealed + 'static {
    /// Exact conversion to f32.
    fn to_f32(self) -> f32;

    /// Loads 16 consecutive elements as f32.
    ///
    /// # Safety
    /// The CPU supports AVX-512 F+BW+VL; `p..p+16` is readable.
    #[cfg(target_arch = "x86_64")]
    unsafe fn load16(p: *const Self) -> __m512;

    /// Loads the elements of `p..p+16` whose bit is set in `mask` (others: 0.0).
    ///
    /// # Safety
    /// The CPU supports AVX-512 F+BW+VL; every element selected by `mask` is
    /// readable (unselected ones are never touched, masked loads do not fault).
    #[cfg(target_arch = "x86_64")]
    unsafe fn load16_masked(p: *const Self, mask: __mmask16) -> __m512;

    /// Loads 8 consecutive elements as f32.
    ///
    /// # Safety
    /// The CPU supports AVX2; `p..p+8` is readable.
    #[cfg(target_arch = "x86_64")]
    unsafe fn load8(p: *const Self) -> __m256;

    /// Loads 4 consecutive elements as f32.
    ///
    /// # Safety
    /// `p..p+4` is readable.
    #[cfg(target_arch = "aarch64")]
    unsafe fn load4(p: *const Self) -> float32x4_t;
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for half::bf16 {}
}

impl WElem for f32 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }

    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    unsafe fn load16(p: *const f32) -> __m512 {
        _mm512_loadu_ps(p)
    }

    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    unsafe fn load16_masked(p: *const f32, mask: __mmask16) -> __m512 {
        _mm512_maskz_loadu_ps(mask, p)
    }

    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn load8(p: *const f32) -> __m256 {
        _mm256_loadu_ps(p)
    }

    #[cfg(target_arch = "aarch64")]
    #[inline]
    #[target_feature(enable = "neon")]
    unsafe fn load4(p: *const f32) -> float32x4_t {
        vld1q_f32(p)
    }
}

// `half::bf16` is `#[repr(transparent)]` over `u16` (its bit pattern), so a
// `*const bf16` may be read as `*const u16`; bf16 -> f32 is `bits << 16`.
impl WElem for bf16 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        f32::from_bits(u32::from(self.to_bits()) << 16)
    }

    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    unsafe fn load16(p: *const bf16) -> __m512 {
        let h = _mm256_loadu_si256(p.cast::<__m256i>());
        _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(h)))
    }

    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    unsafe fn load16_masked(p: *const bf16, mask: __mmask16) -> __m512 {
        let h = _mm256_maskz_loadu_epi16(mask, p.cast::<i16>());
        _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(h)))
    }

    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn load8(p: *const bf16) -> __m256 {
        let h = _mm_loadu_si128(p.cast::<__m128i>());
        _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(h)))
    }

    #[cfg(target_arch = "aarch64")]
    #[inline]
    #[target_feature(enable = "neon")]
    unsafe fn load4(p: *const bf16) -> float32x4_t {
        let h = vld1_u16(p.cast::<u16>());
        vreinterpretq_f32_u32(vshlq_n_u32::<16>(vmovl_u16(h)))
    }
}

/// Operands of one tile: `x` is `m` rows of stride `ldx`, `w` is `n` rows of
/// stride `ldw`, and each dot product runs over the first `k` columns.
#[derive(Clone, Copy)]
pub(crate) struct Tile<'a, W> {
    pub x: &'a [f32],
    pub ldx: usize,
    pub m: usize,
    pub w: &'a [W],
    pub ldw: usize,
    pub n: usize,
    pub k: usize,
}

/// Smallest length a slice of `rows` rows of stride `ld` with `k` used columns
/// must have (`None` on overflow).
fn needed_len(rows: usize, ld: usize, k: usize) -> Option<usize> {
    if rows == 0 || k == 0 {
        return Some(0);
    }
    (rows - 1).checked_mul(ld)?.checked_add(k)
}

/// Computes a tile with the kernels of `level` (or the scalar ones if the CPU
/// does not support `level`):
/// `out[t*ldo + j] = sum_i x[t*ldx + i] * w[j*ldw + i]` for `t < m`, `j < n`,
/// `i < k`.
///
/// Panics if `x` or `w` is too short for the shape (a caller bug).
///
/// # Safety
/// `out.add(t*ldo + j)` must be valid for writes for every `t < m`, `j < n`,
/// and no other thread may access those elements during the call.
pub(crate) unsafe fn tile<W: WElem>(level: Level, tile: Tile<'_, W>, out: *mut f32, ldo: usize) {
    let Tile {
        x,
        ldx,
        m,
        w,
        ldw,
        n,
        k,
    } = tile;
    if m == 0 || n == 0 {
        return;
    }
    // These checks make every `x`/`w` access of the kernels below in bounds:
    // they read x[t*ldx + i] and w[j*ldw + i] only for t < m, j < n, i < k.
    assert!(
        needed_len(m, ldx, k).is_some_and(|l| l <= x.len()),
        "simd::tile: x too short"
    );
    assert!(
        needed_len(n, ldw, k).is_some_and(|l| l <= w.len()),
        "simd::tile: w too short"
    );
    let (xp, wp) = (x.as_ptr(), w.as_ptr());
    // SAFETY (all arms): bounds of x and w asserted above, `out` guaranteed by
    // our caller, and each ISA arm runs only if `is_supported` said the CPU
    // has the features its `#[target_feature]` functions enable.
    match level {
        #[cfg(target_arch = "x86_64")]
        Level::Avx512 if avx512_supported() => avx512::tile(xp, ldx, m, wp, ldw, n, k, out, ldo),
        #[cfg(target_arch = "x86_64")]
        Level::Avx2 if avx2_supported() => avx2::tile(xp, ldx, m, wp, ldw, n, k, out, ldo),
        #[cfg(target_arch = "aarch64")]
        Level::Neon if neon_supported() => neon::tile(xp, ldx, m, wp, ldw, n, k, out, ldo),
        _ => scalar::tile(xp, ldx, m, wp, ldw, n, k, out, ldo),
    }
}

// ---------------------------------------------------------------------------
// Scalar
// ---------------------------------------------------------------------------

mod scalar {
    use super::WElem;

    /// Lanes of the independent partial sums: lets the compiler use whatever
    /// vector width the baseline target has, and shortens rounding chains.
    const LANES: usize = 8;

    fn dot<W: WElem>(x: &[f32], w: &[W]) -> f32 {
        let mut acc = [0.0f32; LANES];
        let xc = x.chunks_exact(LANES);
        let wc = w.chunks_exact(LANES);
        let (xr, wr) = (xc.remainder(), wc.remainder());
        for (xa, wa) in xc.zip(wc) {
            for l in 0..LANES {
                acc[l] += xa[l] * wa[l].to_f32();
            }
        }
        let mut s =
            ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
        for (a, b) in xr.iter().zip(wr) {
            s += a * b.to_f32();
        }
        s
    }

    /// # Safety
    /// As [`super::tile`], plus: `x.add(t*ldx + i)` and `w.add(j*ldw + i)` are
    /// readable for t < m, j < n, i < k.
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn tile<W: WElem>(
        x: *const f32,
        ldx: usize,
        m: usize,
        w: *const W,
        ldw: usize,
        n: usize,
        k: usize,
        out: *mut f32,
        ldo: usize,
    ) {
        for j in 0..n {
            // SAFETY: row j of w is readable for k elements (contract).
            let wr = std::slice::from_raw_parts(w.add(j * ldw), k);
            for t in 0..m {
                // SAFETY: row t of x is readable for k elements (contract).
                let xr = std::slice::from_raw_parts(x.add(t * ldx), k);
                let s = dot(xr, wr);
                // SAFETY: t < m, j < n: out element is ours (contract).
                let o = out.add(t * ldo + j);
                *o = s;
            }
        }
    }
}

// ---------------------------------------------------------------------------
// AVX-512
// ---------------------------------------------------------------------------

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::WElem;
    use std::arch::x86_64::*;

    /// Tokens per microkernel.
    const MR: usize = 4;
    /// Weight rows per microkernel. 4x4 = 16 zmm accumulators + 4 weight
    /// vectors + 1 activation vector of the 32 registers.
    const NR: usize = 4;

    /// # Safety
    /// The CPU supports AVX-512 F+BW+VL and AVX2+FMA; `x.add(t*ldx + i)` and
    /// `w.add(j*ldw + i)` are readable for t < m, j < n, i < k; `out.add(t*ldo
    /// + j)` is ours to write for t < m, j < n.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
    pub(super) unsafe fn tile<W: WElem>(
        x: *const f32,
        ldx: usize,
        m: usize,
        w: *const W,
        ldw: usize,
        n: usize,
        k: usize,
        out: *mut f32,
        ldo: usize,
    ) {
        // SAFETY (every micro call): it covers tokens t..t+R and rows j..j+C
        // with t+R <= m and j+C <= n, and offsets x, w, out to that block, so
        // its own accesses (token r < R, row c < C, column i < k) are the
        // tile's accesses for token t+r and row j+c, in bounds by contract.
        let mut j = 0;
        while j + NR <= n {
            let (wj, oj) = (w.add(j * ldw), out.add(j));
            // The first token group of each row group prefetches the next
            // row group (decode has only that one group).
            let mut t = 0;
            while t + MR <= m {
                let (xt, ot) = (x.add(t * ldx), oj.add(t * ldo));
                micro::<W, MR, NR>(xt, ldx, wj, ldw, k, ot, ldo, t == 0);
                t += MR;
            }
            let (xt, ot, pf) = (x.add(t * ldx), oj.add(t * ldo), t == 0);
            match m - t {
                1 => micro::<W, 1, NR>(xt, ldx, wj, ldw, k, ot, ldo, pf),
                2 => micro::<W, 2, NR>(xt, ldx, wj, ldw, k, ot, ldo, pf),
                3 => micro::<W, 3, NR>(xt, ldx, wj, ldw, k, ot, ldo, pf),
                _ => {}
            }
            j += NR;
        }
        // Leftover rows (< NR), one at a time.
        while j < n {
            let (wj, oj) = (w.add(j * ldw), out.add(j));
            let mut t = 0;
            while t + MR <= m {
                let (xt, ot) = (x.add(t * ldx), oj.add(t * ldo));
                micro::<W, MR, 1>(xt, ldx, wj, ldw, k, ot, ldo, false);
                t += MR;
            }
            let (xt, ot) = (x.add(t * ldx), oj.add(t * ldo));
            match m - t {
                1 => micro::<W, 1, 1>(xt, ldx, wj, ldw, k, ot, ldo, false),
                2 => micro::<W, 2, 1>(xt, ldx, wj, ldw, k, ot, ldo, false),
                3 => micro::<W, 3, 1>(xt, ldx, wj, ldw, k, ot, ldo, false),
                _ => {}
            }
            j += 1;
        }
    }

    /// One 16-column step of an `R x C` block: loads C weight vectors and R
    /// activation vectors at column `i`, masked to `mask` when `MASKED`.
    ///
    /// # Safety
    /// As [`micro`]; the loaded columns (i..i+16, or those selected by
    /// `mask`) are < k.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn step<W: WElem, const R: usize, const C: usize, const MASKED: bool>(
        acc: &mut [[__m512; C]; R],
        x: *const f32,
        ldx: usize,
        w: *const W,
        ldw: usize,
        i: usize,
        mask: __mmask16,
        prefetch: bool,
    ) {
        let mut wv = [_mm512_setzero_ps(); C];
        for (c, v) in wv.iter_mut().enumerate() {
            let p = w.add(c * ldw + i);
            *v = if MASKED {
                W::load16_masked(p, mask)
            } else {
                W::load16(p)
            };
            if prefetch {
                // The same columns of the next row group: keeps one
                // microkernel's worth of weights in flight, which the
                // hardware prefetcher does not for short rows. A prefetch
                // never faults, and `wrapping_add` keeps the address
                // computation defined even past the end of `w`.
                _mm_prefetch::<_MM_HINT_T1>(w.wrapping_add((c + C) * ldw + i).cast::<i8>());
            }
        }
        for (r, row) in acc.iter_mut().enumerate() {
            let p = x.add(r * ldx + i);
            let xv = if MASKED {
                _mm512_maskz_loadu_ps(mask, p)
            } else {
                _mm512_loadu_ps(p)
            };
            for (a, wc) in row.iter_mut().zip(&wv) {
                *a = _mm512_fmadd_ps(xv, *wc, *a);
            }
        }
    }

    /// `R` tokens x `C` rows over all `k` columns, then reduce and store;
    /// with `prefetch`, also prefetch the same columns of the next `C` rows.
    ///
    /// # Safety
    /// `x.add(r*ldx + i)` and `w.add(c*ldw + i)` are readable and
    /// `out.add(r*ldo + c)` is ours, for r < R, c < C, i < k; CPU features as
    /// [`tile`].
    #[allow(clippy::too_many_arguments)]
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
    unsafe fn micro<W: WElem, const R: usize, const C: usize>(
        x: *const f32,
        ldx: usize,
        w: *const W,
        ldw: usize,
        k: usize,
        out: *mut f32,
        ldo: usize,
        prefetch: bool,
    ) {
        let mut acc = [[_mm512_setzero_ps(); C]; R];
        let mut i = 0;
        // SAFETY: i + 16 <= k, so columns i..i+16 are in bounds.
        while i + 16 <= k {
            step::<W, R, C, false>(&mut acc, x, ldx, w, ldw, i, 0, prefetch);
            i += 16;
        }
        if i < k {
            // 1..=15 columns left: select exactly columns i..k.
            let mask = ((1u32 << (k - i)) - 1) as __mmask16;
            // SAFETY: the mask selects columns i..k only.
            step::<W, R, C, true>(&mut acc, x, ldx, w, ldw, i, mask, false);
        }
        for (r, row) in acc.iter().enumerate() {
            let o = out.add(r * ldo);
            let mut c = 0;
            while c + 4 <= C {
                let s = reduce4(row[c], row[c + 1], row[c + 2], row[c + 3]);
                // SAFETY: out columns c..c+4 <= C belong to this block.
                _mm_storeu_ps(o.add(c), s);
                c += 4;
            }
            while c < C {
                // SAFETY: out column c < C belongs to this block.
                *o.add(c) = _mm512_reduce_add_ps(row[c]);
                c += 1;
            }
        }
    }

    /// Horizontal sums of four vectors, as `[sum a, sum b, sum c, sum d]`.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
    fn reduce4(a: __m512, b: __m512, c: __m512, d: __m512) -> __m128 {
        // Per 128-bit lane: [a0+a2, b0+b2, a1+a3, b1+b3].
        let ab = _mm512_add_ps(_mm512_unpacklo_ps(a, b), _mm512_unpackhi_ps(a, b));
        let cd = _mm512_add_ps(_mm512_unpacklo_ps(c, d), _mm512_unpackhi_ps(c, d));
        // Per 128-bit lane: [a, b, c, d] partial sums.
        let abcd = _mm512_add_ps(
            _mm512_shuffle_ps::<0b01_00_01_00>(ab, cd),
            _mm512_shuffle_ps::<0b11_10_11_10>(ab, cd),
        );
        // Sum the four 128-bit lanes.
        let lo = _mm512_castps512_ps256(abcd);
        let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(abcd)));
        let s = _mm256_add_ps(lo, hi);
        _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps::<1>(s))
    }
}

// ---------------------------------------------------------------------------
// AVX2 + FMA
// ---------------------------------------------------------------------------

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::WElem;
    use std::arch::x86_64::*;

    /// Tokens per microkernel. 3x4 = 12 ymm accumulators + 3 activation
    /// vectors + 1 weight vector: all 16 registers, no spills.
    const MR: usize = 3;
    /// Weight rows per microkernel.
    const NR: usize = 4;

    /// # Safety
    /// As [`super::avx512::tile`], with AVX2+FMA as the required features.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn tile<W: WElem>(
        x: *const f32,
        ldx: usize,
        m: usize,
        w: *const W,
        ldw: usize,
        n: usize,
        k: usize,
        out: *mut f32,
        ldo: usize,
    ) {
        // SAFETY (every micro call): block tokens t..t+R <= m, rows j..j+C <=
        // n, pointers offset to the block; see avx512::tile.
        let mut j = 0;
        while j + NR <= n {
            let (wj, oj) = (w.add(j * ldw), out.add(j));
            let mut t = 0;
            while t + MR <= m {
                let (xt, ot) = (x.add(t * ldx), oj.add(t * ldo));
                micro::<W, MR, NR>(xt, ldx, wj, ldw, k, ot, ldo, t == 0);
                t += MR;
            }
            let (xt, ot, pf) = (x.add(t * ldx), oj.add(t * ldo), t == 0);
            match m - t {
                1 => micro::<W, 1, NR>(xt, ldx, wj, ldw, k, ot, ldo, pf),
                2 => micro::<W, 2, NR>(xt, ldx, wj, ldw, k, ot, ldo, pf),
                _ => {}
            }
            j += NR;
        }
        while j < n {
            let (wj, oj) = (w.add(j * ldw), out.add(j));
            let mut t = 0;
            while t + MR <= m {
                let (xt, ot) = (x.add(t * ldx), oj.add(t * ldo));
                micro::<W, MR, 1>(xt, ldx, wj, ldw, k, ot, ldo, false);
                t += MR;
            }
            let (xt, ot) = (x.add(t * ldx), oj.add(t * ldo));
            match m - t {
                1 => micro::<W, 1, 1>(xt, ldx, wj, ldw, k, ot, ldo, false),
                2 => micro::<W, 2, 1>(xt, ldx, wj, ldw, k, ot, ldo, false),
                _ => {}
            }
            j += 1;
        }
    }

    /// # Safety
    /// As [`super::avx512`]'s `micro`, with AVX2+FMA.
    #[allow(clippy::too_many_arguments)]
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn micro<W: WElem, const R: usize, const C: usize>(
        x: *const f32,
        ldx: usize,
        w: *const W,
        ldw: usize,
        k: usize,
        out: *mut f32,
        ldo: usize,
        prefetch: bool,
    ) {
        let mut acc = [[_mm256_setzero_ps(); C]; R];
        let mut i = 0;
        // SAFETY: i + 8 <= k: columns i..i+8 in bounds for every row.
        while i + 8 <= k {
            // R activation vectors live across the step; one weight vector
            // at a time: R*C + R + 1 <= 16 registers for 3x4.
            let mut xv = [_mm256_setzero_ps(); R];
            for (r, v) in xv.iter_mut().enumerate() {
                *v = _mm256_loadu_ps(x.add(r * ldx + i));
            }
            for c in 0..C {
                let wc = W::load8(w.add(c * ldw + i));
                if prefetch {
                    // Next row group, same columns (see avx512::step).
                    _mm_prefetch::<_MM_HINT_T1>(w.wrapping_add((c + C) * ldw + i).cast::<i8>());
                }
                for (row, xr) in acc.iter_mut().zip(&xv) {
                    row[c] = _mm256_fmadd_ps(*xr, wc, row[c]);
                }
            }
            i += 8;
        }
        let mut sums = [[0.0f32; C]; R];
        for (r, (row, srow)) in acc.iter().zip(sums.iter_mut()).enumerate() {
            let mut c = 0;
            while c + 4 <= C {
                let s = reduce4(row[c], row[c + 1], row[c + 2], row[c + 3]);
                // SAFETY: srow[c..c+4] is in bounds (c + 4 <= C).
                _mm_storeu_ps(srow.as_mut_ptr().add(c), s);
                c += 4;
            }
            while c < C {
                srow[c] = reduce1(row[c]);
                c += 1;
            }
            // Scalar tail, columns i..k (< 8 of them).
            for (c, s) in srow.iter_mut().enumerate() {
                for ii in i..k {
                    // SAFETY: ii < k, r < R, c < C.
                    *s += *x.add(r * ldx + ii) * (*w.add(c * ldw + ii)).to_f32();
                }
            }
        }
        for (r, srow) in sums.iter().enumerate() {
            for (c, &s) in srow.iter().enumerate() {
                // SAFETY: r < R, c < C: this block's out element.
                let p = out.add(r * ldo + c);
                *p = s;
            }
        }
    }

    /// `[sum a, sum b, sum c, sum d]`.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn reduce4(a: __m256, b: __m256, c: __m256, d: __m256) -> __m128 {
        // [a01, a23, b01, b23 | a45, a67, b45, b67], likewise for c, d.
        let ab = _mm256_hadd_ps(a, b);
        let cd = _mm256_hadd_ps(c, d);
        // [a0123, b0123, c0123, d0123 | a4567, b4567, c4567, d4567].
        let abcd = _mm256_hadd_ps(ab, cd);
        _mm_add_ps(
            _mm256_castps256_ps128(abcd),
            _mm256_extractf128_ps::<1>(abcd),
        )
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn reduce1(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps::<1>(s, s));
        _mm_cvtss_f32(s)
    }
}

// ---------------------------------------------------------------------------
// NEON (aarch64)
// ---------------------------------------------------------------------------

#[cfg(target_arch = "aarch64")]
mod neon {
    use super::WElem;
    use std::arch::aarch64::*;

    /// 4x4 = 16 q-register accumulators + 4 weight vectors of the 32.
    const MR: usize = 4;
    const NR: usize = 4;

    /// # Safety
    /// As [`super::scalar::tile`]; NEON is present.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "neon")]
    pub(super) unsafe fn tile<W: WElem>(
        x: *const f32,
        ldx: usize,
        m: usize,
        w: *const W,
        ldw: usize,
        n: usize,
        k: usize,
        out: *mut f32,
        ldo: usize,
    ) {
        // SAFETY (every micro call): block tokens t..t+R <= m, rows j..j+C <=
        // n, pointers offset to the block.
        let mut j = 0;
        while j + NR <= n {
            let (wj, oj) = (w.add(j * ldw), out.add(j));
            let mut t = 0;
            while t + MR <= m {
                micro::<W, MR, NR>(x.add(t * ldx), ldx, wj, ldw, k, oj.add(t * ldo), ldo);
                t += MR;
            }
            let (xt, ot) = (x.add(t * ldx), oj.add(t * ldo));
            match m - t {
                1 => micro::<W, 1, NR>(xt, ldx, wj, ldw, k, ot, ldo),
                2 => micro::<W, 2, NR>(xt, ldx, wj, ldw, k, ot, ldo),
                3 => micro::<W, 3, NR>(xt, ldx, wj, ldw, k, ot, ldo),
                _ => {}
            }
            j += NR;
        }
        while j < n {
            let (wj, oj) = (w.add(j * ldw), out.add(j));
            let mut t = 0;
            while t + MR <= m {
                micro::<W, MR, 1>(x.add(t * ldx), ldx, wj, ldw, k, oj.add(t * ldo), ldo);
                t += MR;
            }
            let (xt, ot) = (x.add(t * ldx), oj.add(t * ldo));
            match m - t {
                1 => micro::<W, 1, 1>(xt, ldx, wj, ldw, k, ot, ldo),
                2 => micro::<W, 2, 1>(xt, ldx, wj, ldw, k, ot, ldo),
                3 => micro::<W, 3, 1>(xt, ldx, wj, ldw, k, ot, ldo),
                _ => {}
            }
            j += 1;
        }
    }

    /// # Safety
    /// `x.add(r*ldx + i)`, `w.add(c*ldw + i)` readable and `out.add(r*ldo +
    /// c)` ours for r < R, c < C, i < k.
    #[allow(clippy::too_many_arguments)]
    #[inline]
    #[target_feature(enable = "neon")]
    unsafe fn micro<W: WElem, const R: usize, const C: usize>(
        x: *const f32,
        ldx: usize,
        w: *const W,
        ldw: usize,
        k: usize,
        out: *mut f32,
        ldo: usize,
    ) {
        let mut acc = [[vdupq_n_f32(0.0); C]; R];
        let mut i = 0;
        // SAFETY: i + 4 <= k.
        while i + 4 <= k {
            let mut wv = [vdupq_n_f32(0.0); C];
            for (c, v) in wv.iter_mut().enumerate() {
                *v = W::load4(w.add(c * ldw + i));
            }
            for (r, row) in acc.iter_mut().enumerate() {
                let xv = vld1q_f32(x.add(r * ldx + i));
                for (a, wc) in row.iter_mut().zip(&wv) {
                    *a = vfmaq_f32(*a, xv, *wc);
                }
            }
            i += 4;
        }
        for (r, row) in acc.iter().enumerate() {
            for (c, a) in row.iter().enumerate() {
                let mut s = vaddvq_f32(*a);
                for ii in i..k {
                    // SAFETY: ii < k, r < R, c < C.
                    s += *x.add(r * ldx + ii) * (*w.add(c * ldw + ii)).to_f32();
                }
                // SAFETY: r < R, c < C: this block's out element.
                let p = out.add(r * ldo + c);
                *p = s;
            }
        }
    }
}
