//! Rotary position embeddings on `[tokens, heads, head_dim]`, both layouts.

use tessera_core::hal::{RopeParams, RopeStyle};

pub fn rope(x: &[f32], positions: &[i32], p: &RopeParams, heads: usize, out: &mut [f32]) {
    let d = p.head_dim;
    let half = d / 2;
    let inv_freq = p.inv_freq();
    let scale = p.position_scale();
    let mut cos = vec![0f32; half];
    let mut sin = vec![0f32; half];
    for (t, &pos) in positions.iter().enumerate() {
        // Angles in f32 as transformers computes them, so results agree bit-closely.
        for i in 0..half {
            let a = (pos as f32 * scale) * inv_freq[i];
            cos[i] = a.cos();
            sin[i] = a.sin();
        }
        let row = t * heads * d;
        for h in 0..heads {
            let xs = &x[row + h * d..row + (h + 1) * d];
            let os = &mut out[row + h * d..row + (h + 1) * d];
            match p.style {
                RopeStyle::Neox => {
                    for i in 0..half {
                        let (a, b) = (xs[i], xs[i + half]);
                        os[i] = a * cos[i] - b * sin[i];
                        os[i + half] = b * cos[i] + a * sin[i];
                    }
                }
                RopeStyle::Interleaved => {
                    for i in 0..half {
                        let (a, b) = (xs[2 * i], xs[2 * i + 1]);
                        os[2 * i] = a * cos[i] - b * sin[i];
                        os[2 * i + 1] = b * cos[i] + a * sin[i];
                    }
                }
            }
        }
    }
}
