//! LoRA's two halves with one adapter slot per token. Tokens are grouped by
//! slot and each group runs through the f32-FMA matmul kernels against its
//! slot's matrix, so a batch of several adapters costs one small GEMM per
//! adapter (the CPU form of a gather-GEMM); tokens without a slot get nothing.

use crate::matmul::{matmul_with, WeightRows};

/// Slot `s` of a `[slots, rows, cols]` stack, as `[rows, cols]` weight rows.
fn slot<'a>(stack: &WeightRows<'a>, s: usize, size: usize) -> WeightRows<'a> {
    match stack {
        WeightRows::F32(v) => WeightRows::F32(&v[s * size..(s + 1) * size]),
        WeightRows::BF16(v) => WeightRows::BF16(&v[s * size..(s + 1) * size]),
    }
}

/// For every token `t` with a slot `s = idx[t]` in `0..slots`:
/// `out[t] (+)= stack[s] · x[t]` (`x [T, cols]`, `out [T, rows]`); `add`
/// accumulates into `out`, otherwise rows of tokens without a slot are zeroed.
pub fn apply(
    x: &[f32],
    cols: usize,
    stack: WeightRows<'_>,
    [slots, rows]: [usize; 2],
    idx: &[i32],
    out: &mut [f32],
    add: bool,
) {
    if !add {
        for (t, &s) in idx.iter().enumerate() {
            if usize::try_from(s).map_or(true, |s| s >= slots) {
                out[t * rows..(t + 1) * rows].fill(0.0);
            }
        }
    }
    let mut gathered = vec![];
    let mut result = vec![];
    for s in 0..slots {
        let tokens: Vec<usize> = (0..idx.len()).filter(|&t| idx[t] == s as i32).collect();
        if tokens.is_empty() {
            continue;
        }
        gathered.clear();
        for &t in &tokens {
            gathered.extend_from_slice(&x[t * cols..(t + 1) * cols]);
        }
        result.clear();
        result.resize(tokens.len() * rows, 0.0);
        let m = slot(&stack, s, rows * cols);
        // The f32-FMA kernels widen bf16 in registers. The vdpbf16ps path of
        // `matmul` first rounds all of `x` to bf16, single-threaded, which
        // costs more than the whole product when one side is a LoRA rank
        // (shrink: n = rank; expand: k = rank): measured 2-5x slower here.
        matmul_with(
            crate::simd::level(),
            &gathered,
            tokens.len(),
            cols,
            m,
            rows,
            None,
            &mut result,
        );
        for (j, &t) in tokens.iter().enumerate() {
            let dst = &mut out[t * rows..(t + 1) * rows];
            let src = &result[j * rows..(j + 1) * rows];
            if add {
                dst.iter_mut().zip(src).for_each(|(d, s)| *d += s);
            } else {
                dst.copy_from_slice(src);
            }
        }
    }
}
