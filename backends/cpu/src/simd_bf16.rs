//! bf16 x bf16 dot products with AVX512-BF16 (`vdpbf16ps`): 32 multiply-adds per
//! instruction, twice the f32 FMA rate, for bf16 weights. Activations are rounded
//! to bf16 first (as llama.cpp and oneDNN do for bf16 models); accumulation stays
//! f32. Used for every token count, so a sequence gets the same numbers alone or
//! in a batch.

#[cfg(target_arch = "x86_64")]
pub(crate) fn supported() -> bool {
    use std::sync::OnceLock;
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| crate::features::has_avx512() && is_x86_feature_detected!("avx512bf16"))
}

#[cfg(not(target_arch = "x86_64"))]
pub(crate) fn supported() -> bool {
    false
}

/// Rounds f32 to bf16 bits, nearest-even (what `vcvtne2ps2bf16` does); a
/// NaN stays a (quiet) NaN. Branch-free, so loops over it vectorize.
pub(crate) fn to_bf16_bits(x: f32) -> u16 {
    let b = x.to_bits();
    let rounded = (b.wrapping_add(0x7fff + ((b >> 16) & 1)) >> 16) as u16;
    if x.is_nan() {
        (b >> 16) as u16 | 0x0040
    } else {
        rounded
    }
}

/// `x` rounded to bf16 bits, on every core for large inputs: a prefill's
/// activations (e.g. 2048 x 4864) took longer to round on one thread than
/// a tenth of the product that follows.
pub(crate) fn round_all(x: &[f32]) -> Vec<u16> {
    use rayon::prelude::*;
    const CHUNK: usize = 1 << 15;
    let mut out = vec![0u16; x.len()];
    let convert = |(o, i): (&mut [u16], &[f32])| {
        for (d, &v) in o.iter_mut().zip(i) {
            *d = to_bf16_bits(v);
        }
    };
    if x.len() <= CHUNK {
        convert((&mut out, x));
    } else {
        out.par_chunks_mut(CHUNK)
            .zip(x.par_chunks(CHUNK))
            .for_each(convert);
    }
    out
}

/// `out[t*ldo + j] = sum_i x[t*ldx + i] * w[j*ldw + i]` with x and w as bf16 bits.
///
/// # Safety
/// `supported()` is true; `x.add(t*ldx + i)` for t < m and `w.add(j*ldw + i)` for
/// j < n are readable for i < k; `out.add(t*ldo + j)` is ours to write.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn tile(
    x: *const u16,
    ldx: usize,
    m: usize,
    w: *const u16,
    ldw: usize,
    n: usize,
    k: usize,
    out: *mut f32,
    ldo: usize,
) {
    kernels::tile(x, ldx, m, w, ldw, n, k, out, ldo)
}

#[cfg(target_arch = "x86_64")]
mod kernels {
    use std::arch::x86_64::*;

    const MR: usize = 4;
    const NR: usize = 4;

    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
    pub(super) unsafe fn tile(
        x: *const u16,
        ldx: usize,
        m: usize,
        w: *const u16,
        ldw: usize,
        n: usize,
        k: usize,
        out: *mut f32,
        ldo: usize,
    ) {
        // SAFETY (every micro call): it covers tokens t..t+R < =m and rows j..j+C <= n.
        let mut j = 0;
        while j < n {
            let c = (n - j).min(NR);
            let (wj, oj) = (w.add(j * ldw), out.add(j));
            let mut t = 0;
            while t < m {
                let r = (m - t).min(MR);
                let (xt, ot, pf) = (x.add(t * ldx), oj.add(t * ldo), t == 0 && j + c < n);
                match (r, c) {
                    (4, 4) => micro::<4, 4>(xt, ldx, wj, ldw, k, ot, ldo, pf),
                    (3, 4) => micro::<3, 4>(xt, ldx, wj, ldw, k, ot, ldo, pf),
                    (2, 4) => micro::<2, 4>(xt, ldx, wj, ldw, k, ot, ldo, pf),
                    (1, 4) => micro::<1, 4>(xt, ldx, wj, ldw, k, ot, ldo, pf),
                    (4, _) => micro::<4, 1>(xt, ldx, wj, ldw, k, ot, ldo, false),
                    (3, _) => micro::<3, 1>(xt, ldx, wj, ldw, k, ot, ldo, false),
                    (2, _) => micro::<2, 1>(xt, ldx, wj, ldw, k, ot, ldo, false),
                    _ => micro::<1, 1>(xt, ldx, wj, ldw, k, ot, ldo, false),
                }
                t += r;
            }
            j += if c == NR { NR } else { 1 };
        }
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
    unsafe fn load(p: *const u16, mask: __mmask32) -> __m512bh {
        // SAFETY: the caller's mask selects only readable elements.
        std::mem::transmute::<__m512i, __m512bh>(_mm512_maskz_loadu_epi16(mask, p as *const i16))
    }

    /// `R` tokens x `C` rows over all `k`, reduced and stored.
    #[allow(clippy::too_many_arguments)]
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
    unsafe fn micro<const R: usize, const C: usize>(
        x: *const u16,
        ldx: usize,
        w: *const u16,
        ldw: usize,
        k: usize,
        out: *mut f32,
        ldo: usize,
        prefetch: bool,
    ) {
        let mut acc = [[_mm512_setzero_ps(); C]; R];
        let mut i = 0;
        while i < k {
            let left = k - i;
            let mask: __mmask32 = if left >= 32 { !0 } else { (1u32 << left) - 1 };
            let mut wv = [std::mem::transmute::<__m512i, __m512bh>(_mm512_setzero_si512()); C];
            for (c, v) in wv.iter_mut().enumerate() {
                *v = load(w.add(c * ldw + i), mask);
                if prefetch {
                    // The same columns of the next row group (decode streams rows).
                    _mm_prefetch::<_MM_HINT_T1>(w.wrapping_add((c + C) * ldw + i).cast::<i8>());
                }
            }
            for (r, row) in acc.iter_mut().enumerate() {
                let xv = load(x.add(r * ldx + i), mask);
                for (a, wc) in row.iter_mut().zip(&wv) {
                    *a = _mm512_dpbf16_ps(*a, xv, *wc);
                }
            }
            i += 32;
        }
        for (r, row) in acc.iter().enumerate() {
            for (c, a) in row.iter().enumerate() {
                // SAFETY: out (r, c) belongs to this block.
                *out.add(r * ldo + c) = _mm512_reduce_add_ps(*a);
            }
        }
    }
}

/// Never called where `supported()` is false (every non-x86 target).
#[cfg(not(target_arch = "x86_64"))]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn tile(
    _: *const u16,
    _: usize,
    _: usize,
    _: *const u16,
    _: usize,
    _: usize,
    _: usize,
    _: *mut f32,
    _: usize,
) {
}

#[cfg(test)]
mod tests {
    use half::bf16;

    /// Every shape edge (token groups, row groups, k tails) against an f64
    /// reference over bf16-rounded activations and weights.
    #[test]
    fn matches_the_reference_over_rounded_inputs() {
        if !super::supported() {
            eprintln!("skipped: this CPU has no AVX512-BF16");
            return;
        }
        let mut seed = 7u64;
        let mut rnd = || {
            seed = tessera_core::model::random::splitmix64(seed);
            ((seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        };
        for &(m, k, n) in &[
            (1, 576, 37),
            (5, 31, 9),
            (4, 64, 4),
            (17, 100, 33),
            (3, 33, 5),
            (64, 576, 100),
        ] {
            let x: Vec<f32> = (0..m * k).map(|_| rnd()).collect();
            let w: Vec<bf16> = (0..n * k).map(|_| bf16::from_f32(rnd())).collect();
            let bias: Vec<f32> = (0..n).map(|_| rnd()).collect();
            let mut out = vec![f32::NAN; m * n];
            crate::matmul::matmul(
                &x,
                m,
                k,
                crate::matmul::WeightRows::BF16(&w),
                n,
                Some(&bias),
                &mut out,
            );
            for t in 0..m {
                for j in 0..n {
                    let (mut want, mut scale) = (bias[j] as f64, 0f64);
                    for i in 0..k {
                        let xr = bf16::from_f32(x[t * k + i]).to_f64();
                        want += xr * w[j * k + i].to_f64();
                        scale += (xr * w[j * k + i].to_f64()).abs();
                    }
                    let got = out[t * n + j] as f64;
                    assert!(
                        (got - want).abs() <= 1e-5 * (scale + 1.0),
                        "m{m} k{k} n{n} t{t} j{j}: {got} vs {want}"
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod rounding_tests {
    use super::*;

    #[test]
    fn rounding_matches_half_on_every_kind_of_value() {
        let mut z = 0x1234_5678_9abc_def0u64;
        let mut values: Vec<f32> = vec![
            0.0,
            -0.0,
            1.0,
            -1.5,
            f32::MAX,
            f32::MIN,
            f32::MIN_POSITIVE,
            1e-40,
            -1e-45,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            -f32::NAN,
            f32::from_bits(0x7f80_0001),
            f32::from_bits(0x3f80_8000),
            f32::from_bits(0x3f81_8000),
            f32::from_bits(0x3f80_7fff),
            f32::from_bits(0x7f7f_ffff),
        ];
        for _ in 0..200_000 {
            z = z
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            values.push(f32::from_bits((z >> 32) as u32));
        }
        let all = round_all(&values);
        for (v, got) in values.iter().zip(all) {
            let want = half::bf16::from_f32(*v).to_bits();
            if v.is_nan() {
                assert!(half::bf16::from_bits(got).is_nan(), "{v:?}: {got:#x}");
                assert_eq!(got & 0x8000, want & 0x8000, "sign of {v:?}");
            } else {
                assert_eq!(got, want, "{v:?} ({:#x})", v.to_bits());
            }
        }
    }
}
