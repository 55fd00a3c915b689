//! Linear layer: `out[t, n] = sum_k x[t, k] * w[n, k] + bias[n]`, summed in
//! f64 in the order of k.
//!
//! The weight matrix stays in its stored dtype: widening a 49152 x 576
//! lm_head to f64 would take 226 MB per call, so each weight row is decoded
//! when it is used, once per call, and serves every token.

use crate::tensors::decode_extend;
use crate::BACKEND_NAME;
use std::ops::Range;
use tessera_core::{DType, Error, Result};

/// Multiply-adds below which one thread does the whole product: spawning
/// threads costs more than such a product (a decode step's small matrices).
const PARALLEL_MIN_WORK: usize = 1 << 20;

/// A `[rows, cols]` weight matrix as stored: `bytes` of `dtype`.
#[derive(Clone, Copy)]
pub struct Weights<'a> {
    pub bytes: &'a [u8],
    pub dtype: DType,
    pub rows: usize,
    pub cols: usize,
}

/// `x` is `[tokens, w.cols]`; returns `[tokens, w.rows]`. Large products
/// split the weight rows over `threads` threads: the suite runs a whole
/// model through this backend and the linears are nearly all of its time.
pub fn linear(
    x: &[f64],
    tokens: usize,
    w: Weights,
    bias: Option<&[f64]>,
    threads: usize,
) -> Result<Vec<f64>> {
    let (n, k) = (w.rows, w.cols);
    let work = tokens.saturating_mul(n).saturating_mul(k);
    let workers = if work > PARALLEL_MIN_WORK {
        threads.clamp(1, n.max(1))
    } else {
        1
    };
    if workers == 1 {
        return rows_block(x, tokens, w, bias, 0..n);
    }
    let per = n.div_ceil(workers);
    let blocks = std::thread::scope(|s| {
        let mut handles = Vec::new();
        for start in (0..n).step_by(per) {
            let rows = start..(start + per).min(n);
            let job = move || (rows.clone(), rows_block(x, tokens, w, bias, rows));
            let handle = std::thread::Builder::new()
                .name("tessera-reference".into())
                .spawn_scoped(s, job)
                .map_err(|e| Error::device(BACKEND_NAME, format!("cannot start a thread: {e}")))?;
            handles.push(handle);
        }
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .map_err(|_| Error::device(BACKEND_NAME, "a linear worker thread panicked"))
            })
            .collect::<Result<Vec<_>>>()
    })?;
    // Each block holds columns `rows` of the output, `[tokens, rows.len()]`.
    let mut out = vec![0.0; tokens * n];
    for (rows, block) in blocks {
        let block = block?;
        let width = rows.len();
        for t in 0..tokens {
            out[t * n + rows.start..t * n + rows.end]
                .copy_from_slice(&block[t * width..(t + 1) * width]);
        }
    }
    Ok(out)
}

/// Output columns `rows` for every token, as `[tokens, rows.len()]`.
fn rows_block(
    x: &[f64],
    tokens: usize,
    w: Weights,
    bias: Option<&[f64]>,
    rows: Range<usize>,
) -> Result<Vec<f64>> {
    let (k, width) = (w.cols, rows.len());
    let row_bytes = k * w.dtype.size();
    let mut out = vec![0.0; tokens * width];
    let mut wrow = Vec::with_capacity(k);
    for (j, n) in rows.enumerate() {
        wrow.clear();
        let bytes = w
            .bytes
            .get(n * row_bytes..(n + 1) * row_bytes)
            .ok_or_else(|| Error::invalid("weight matrix smaller than its shape"))?;
        decode_extend(w.dtype, bytes, &mut wrow)?;
        let b = bias.and_then(|b| b.get(n)).copied().unwrap_or(0.0);
        for t in 0..tokens {
            let xt = &x[t * k..(t + 1) * k];
            let mut acc = 0.0;
            for (a, c) in xt.iter().zip(&wrow) {
                acc += a * c;
            }
            out[t * width + j] = acc + b;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use crate::testing::{assert_close, f32s, kernels, read, tensor, zeros};
    use crate::RefKernels;
    use tessera_core::hal::Kernels;
    use tessera_core::DType;

    #[test]
    fn small_product_with_bias() {
        // x = [[1, 2]], w = [[3, 4], [5, 6], [-1, 0]]:
        // 1*3 + 2*4 = 11, 1*5 + 2*6 = 17, -1; plus bias [0.5, 0, 1].
        let k = kernels();
        for dtype in [DType::F32, DType::BF16, DType::F16] {
            let x = f32s(&[1, 2], &[1.0, 2.0]);
            let w = tensor(dtype, &[3, 2], &[3.0, 4.0, 5.0, 6.0, -1.0, 0.0]);
            let b = tensor(dtype, &[3], &[0.5, 0.0, 1.0]);
            let out = zeros(&[1, 3]);
            k.linear(&x, &w, Some(&b), &out).expect("linear");
            assert_eq!(read(&out), [11.5, 17.0, 0.0], "{dtype}");
            k.linear(&x, &w, None, &out).expect("linear");
            assert_eq!(read(&out), [11.0, 17.0, -1.0], "{dtype}");
        }
    }

    #[test]
    fn threads_give_the_same_result() {
        // 4 x 300 x 1000 = 1.2M multiply-adds: above the threshold, so split.
        let (t, kd, n) = (4, 300, 1000);
        let xv: Vec<f64> = (0..t * kd)
            .map(|i| ((i * 7 % 13) as f64 - 6.0) / 8.0)
            .collect();
        let wv: Vec<f64> = (0..n * kd)
            .map(|i| ((i * 5 % 11) as f64 - 5.0) / 4.0)
            .collect();
        let (x, w) = (f32s(&[t, kd], &xv), f32s(&[n, kd], &wv));
        let one = zeros(&[t, n]);
        let many = zeros(&[t, n]);
        RefKernels::new(1)
            .linear(&x, &w, None, &one)
            .expect("1 thread");
        RefKernels::new(3)
            .linear(&x, &w, None, &many)
            .expect("3 threads");
        assert_eq!(read(&one), read(&many));
        // Spot check one output against the definition.
        let want: f64 = (0..kd).map(|i| xv[kd + i] * wv[7 * kd + i]).sum();
        assert_close(&[read(&one)[n + 7]], &[want], 1e-3);
    }

    #[test]
    fn mismatched_shapes_are_errors() {
        let k = kernels();
        let x = f32s(&[1, 2], &[1.0, 2.0]);
        let w = f32s(&[2, 3], &[0.0; 6]);
        assert!(k.linear(&x, &w, None, &zeros(&[1, 2])).is_err());
    }
}
