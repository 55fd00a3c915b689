//! Elementwise ops: the SwiGLU activation `silu(gate) * up` and `a + b`.

/// `silu(g) * u = g / (1 + e^-g) * u`. For very negative `g`, `e^-g` is
/// infinite and the quotient a signed zero, which is the limit: no NaN.
pub fn silu_mul(gate: &[f64], up: &[f64]) -> Vec<f64> {
    gate.iter()
        .zip(up)
        .map(|(g, u)| g / (1.0 + (-g).exp()) * u)
        .collect()
}

pub fn add(a: &[f64], b: &[f64]) -> Vec<f64> {
    a.iter().zip(b).map(|(x, y)| x + y).collect()
}

#[cfg(test)]
mod tests {
    use crate::testing::{assert_close, f32s, kernels, read, zeros};
    use tessera_core::hal::Kernels;

    #[test]
    fn silu_mul_by_hand() {
        // silu(0) = 0; silu(1) = 1 / (1 + e^-1) = 0.7310586, times 2;
        // silu(-1) = -1 / (1 + e) = -0.2689414; silu(-1000) = -0 (no NaN).
        let k = kernels();
        let gate = f32s(&[4], &[0.0, 1.0, -1.0, -1000.0]);
        let up = f32s(&[4], &[5.0, 2.0, 1.0, 1.0]);
        let out = zeros(&[4]);
        k.silu_mul(&gate, &up, &out).expect("silu_mul");
        assert_close(&read(&out), &[0.0, 1.462_117_2, -0.268_941_4, 0.0], 1e-6);
    }

    #[test]
    fn add_and_shape_checks() {
        let k = kernels();
        let out = zeros(&[2]);
        k.add(&f32s(&[2], &[1.0, -2.0]), &f32s(&[2], &[0.5, 2.0]), &out)
            .expect("add");
        assert_eq!(read(&out), [1.5, 0.0]);
        assert!(k
            .add(&f32s(&[2], &[0.0; 2]), &f32s(&[1, 2], &[0.0; 2]), &out)
            .is_err());
    }
}
