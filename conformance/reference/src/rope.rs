//! Rotary position embeddings on `x [tokens, heads, head_dim]`.
//!
//! Pair `i` of a head turns by `position * position_scale * inv_freq[i]`:
//! `(a, b) -> (a cos - b sin, b cos + a sin)`. Neox style pairs `x[i]` with
//! `x[i + d/2]` (HF Llama's `rotate_half`); interleaved pairs `x[2i]` with
//! `x[2i + 1]` (GPT-J, llama.cpp).

use tessera_core::hal::{RopeParams, RopeStyle};

/// `positions` has one entry per token; `x.len()` is `tokens * heads * head_dim`.
pub fn rope(x: &[f64], positions: &[i64], heads: usize, p: &RopeParams) -> Vec<f64> {
    let d = p.head_dim;
    let half = d / 2;
    // The frequencies are f32 by definition (transformers computes them in
    // f32); widened, and everything after them is f64.
    let inv_freq: Vec<f64> = p.inv_freq().into_iter().map(f64::from).collect();
    let scale = f64::from(p.position_scale());
    let mut out = x.to_vec();
    for (t, &pos) in positions.iter().enumerate() {
        let cos_sin: Vec<(f64, f64)> = inv_freq
            .iter()
            .map(|f| {
                let angle = pos as f64 * scale * f;
                (angle.cos(), angle.sin())
            })
            .collect();
        for h in 0..heads {
            let start = (t * heads + h) * d;
            let head = &mut out[start..start + d];
            for (i, &(cos, sin)) in cos_sin.iter().enumerate() {
                let (ia, ib) = match p.style {
                    RopeStyle::Neox => (i, i + half),
                    RopeStyle::Interleaved => (2 * i, 2 * i + 1),
                };
                let (a, b) = (head[ia], head[ib]);
                head[ia] = a * cos - b * sin;
                head[ib] = b * cos + a * sin;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use crate::testing::{assert_close, f32s, ids, kernels, read, zeros};
    use tessera_core::hal::{Kernels, RopeParams, RopeStyle};
    use tessera_core::model::config::RopeScaling;

    fn params(style: RopeStyle, scaling: RopeScaling) -> RopeParams {
        RopeParams {
            style,
            head_dim: 4,
            theta: 10000.0,
            scaling,
        }
    }

    #[test]
    fn unit_vectors_turn_by_the_position() {
        // head_dim 4, theta 1e4: inv_freq = [1, 1e4^-0.5 = 0.01].
        // Position 1, neox: the pair (x0, x2) = (1, 0) turns by 1 radian to
        // (cos 1, sin 1) = (0.5403023, 0.8414710); the pair (x1, x3) = (0, 1)
        // turns by 0.01 radian to (-sin 0.01, cos 0.01) = (-0.0099998, 0.99995).
        let k = kernels();
        let x = f32s(&[1, 1, 4], &[1.0, 0.0, 0.0, 1.0]);
        let out = zeros(&[1, 1, 4]);
        let p = params(RopeStyle::Neox, RopeScaling::None);
        k.rope(&x, &ids(&[1], &[1]), &p, &out).expect("rope");
        let want = [0.540_302_3, -0.009_999_8, 0.841_471_0, 0.999_950_0];
        assert_close(&read(&out), &want, 1e-6);

        // Interleaved: the pairs are (x0, x1) = (1, 0) and (x2, x3) = (0, 1).
        let p = params(RopeStyle::Interleaved, RopeScaling::None);
        k.rope(&x, &ids(&[1], &[1]), &p, &out).expect("rope");
        let want = [0.540_302_3, 0.841_471_0, -0.009_999_8, 0.999_950_0];
        assert_close(&read(&out), &want, 1e-6);
    }

    #[test]
    fn position_zero_is_the_identity_and_linear_scaling_divides_positions() {
        let k = kernels();
        let x = f32s(&[2, 1, 4], &[1.0, 2.0, 3.0, 4.0, 1.0, 0.0, 0.0, 1.0]);
        let out = zeros(&[2, 1, 4]);
        // Position 2 with linear factor 2 turns like position 1 above.
        let p = params(RopeStyle::Neox, RopeScaling::Linear { factor: 2.0 });
        k.rope(&x, &ids(&[2], &[0, 2]), &p, &out).expect("rope");
        let want = [
            1.0,
            2.0,
            3.0,
            4.0,
            0.540_302_3,
            -0.009_999_8,
            0.841_471_0,
            0.999_950_0,
        ];
        assert_close(&read(&out), &want, 1e-6);
    }

    #[test]
    fn odd_head_dims_and_wrong_shapes_are_errors() {
        let k = kernels();
        let mut p = params(RopeStyle::Neox, RopeScaling::None);
        p.head_dim = 3;
        let x = f32s(&[1, 1, 3], &[1.0, 2.0, 3.0]);
        assert!(k
            .rope(&x, &ids(&[1], &[0]), &p, &zeros(&[1, 1, 3]))
            .is_err());
        let p = params(RopeStyle::Neox, RopeScaling::None);
        let x = f32s(&[1, 1, 4], &[0.0; 4]);
        assert!(k
            .rope(&x, &ids(&[2], &[0, 1]), &p, &zeros(&[1, 1, 4]))
            .is_err());
    }
}
