//! RMSNorm, with the residual add fused in (one pass over the row for the add and
//! the sum of squares, one for the scaling).

use rayon::prelude::*;

/// Rows above this many elements in total are split across threads.
const PAR_MIN: usize = 1 << 15;

#[inline(always)]
fn norm_row(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let ss: f32 = x.iter().map(|v| v * v).sum();
    let inv = 1.0 / (ss / x.len() as f32 + eps).sqrt();
    for ((o, &v), &g) in out.iter_mut().zip(x).zip(w) {
        *o = v * inv * g;
    }
}

pub fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let h = w.len();
    if x.len() >= PAR_MIN {
        out.par_chunks_mut(h)
            .zip(x.par_chunks(h))
            .for_each(|(o, r)| norm_row(r, w, eps, o));
    } else {
        out.chunks_mut(h)
            .zip(x.chunks(h))
            .for_each(|(o, r)| norm_row(r, w, eps, o));
    }
}

pub fn add_rms_norm(
    x: &[f32],
    residual: &[f32],
    w: &[f32],
    eps: f32,
    out: &mut [f32],
    residual_out: &mut [f32],
) {
    let h = w.len();
    let row = |(o, ro, xr, rr): (&mut [f32], &mut [f32], &[f32], &[f32])| {
        for ((d, &a), &b) in ro.iter_mut().zip(xr).zip(rr) {
            *d = a + b;
        }
        norm_row(ro, w, eps, o);
    };
    if x.len() >= PAR_MIN {
        out.par_chunks_mut(h)
            .zip(residual_out.par_chunks_mut(h))
            .zip(x.par_chunks(h).zip(residual.par_chunks(h)))
            .for_each(|((o, ro), (xr, rr))| row((o, ro, xr, rr)));
    } else {
        for (((o, ro), xr), rr) in out
            .chunks_mut(h)
            .zip(residual_out.chunks_mut(h))
            .zip(x.chunks(h))
            .zip(residual.chunks(h))
        {
            row((o, ro, xr, rr));
        }
    }
}
