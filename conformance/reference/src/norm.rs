//! RMSNorm, `out = x / sqrt(mean(x^2) + eps) * w` per row of `w.len()`
//! values, and its fused form with the residual add.

/// Normalises each row of `x`; rows have `w.len()` values.
pub fn rms_norm(x: &[f64], w: &[f64], eps: f64) -> Vec<f64> {
    let h = w.len();
    let mut out = Vec::with_capacity(x.len());
    if h == 0 {
        return out; // rows of nothing: nothing to normalise
    }
    for row in x.chunks_exact(h) {
        let mean_square = row.iter().map(|v| v * v).sum::<f64>() / h as f64;
        let inv_rms = 1.0 / (mean_square + eps).sqrt();
        out.extend(row.iter().zip(w).map(|(v, g)| v * inv_rms * g));
    }
    out
}

/// `(rms_norm(x + residual), x + residual)`.
pub fn add_rms_norm(x: &[f64], residual: &[f64], w: &[f64], eps: f64) -> (Vec<f64>, Vec<f64>) {
    let sum: Vec<f64> = x.iter().zip(residual).map(|(a, b)| a + b).collect();
    (rms_norm(&sum, w, eps), sum)
}

#[cfg(test)]
mod tests {
    use crate::testing::{assert_close, f32s, kernels, read, zeros};
    use tessera_core::hal::Kernels;

    #[test]
    fn rms_norm_of_three_four() {
        // mean([9, 16]) = 12.5, rms = sqrt(12.5) = 3.5355339;
        // 3 / 3.5355339 = 0.8485281, 4 / 3.5355339 = 1.1313708; w = [1, 2].
        let k = kernels();
        let out = zeros(&[1, 2]);
        k.rms_norm(
            &f32s(&[1, 2], &[3.0, 4.0]),
            &f32s(&[2], &[1.0, 2.0]),
            0.0,
            &out,
        )
        .expect("rms_norm");
        assert_close(&read(&out), &[0.848_528_1, 2.262_741_7], 1e-6);
    }

    #[test]
    fn eps_is_added_to_the_mean_square() {
        // x = [0, 0] with eps = 0.25: 0 / sqrt(0.25) = 0, no NaN;
        // x = [1, 1]: 1 / sqrt(1 + 0.25) = 0.8944272.
        let k = kernels();
        let out = zeros(&[2, 2]);
        let x = f32s(&[2, 2], &[0.0, 0.0, 1.0, 1.0]);
        k.rms_norm(&x, &f32s(&[2], &[1.0, 1.0]), 0.25, &out)
            .expect("rms_norm");
        assert_close(&read(&out), &[0.0, 0.0, 0.894_427_2, 0.894_427_2], 1e-6);
    }

    #[test]
    fn add_rms_norm_returns_the_sum_and_its_norm() {
        // x + residual = [1, 2] + [2, 2] = [3, 4], normalised as above.
        let k = kernels();
        let (out, res) = (zeros(&[1, 2]), zeros(&[1, 2]));
        k.add_rms_norm(
            &f32s(&[1, 2], &[1.0, 2.0]),
            &f32s(&[1, 2], &[2.0, 2.0]),
            &f32s(&[2], &[1.0, 1.0]),
            0.0,
            &out,
            &res,
        )
        .expect("add_rms_norm");
        assert_eq!(read(&res), [3.0, 4.0]);
        assert_close(&read(&out), &[0.848_528_1, 1.131_370_8], 1e-6);
    }
}
