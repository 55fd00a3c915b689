//! Picking rows and tokens: `gather_last` (each sequence's last query row),
//! `argmax` and `sample` (Gumbel-max with noise the caller supplies, so every
//! backend draws the same token).

use crate::tensors::ensure;
use tessera_core::Result;

/// Row `query_start_loc[s + 1] - 1` of `x [tokens, h]` for each sequence `s`,
/// or a zero row for a sequence without query tokens.
pub fn gather_last(
    x: &[f64],
    [tokens, h]: [usize; 2],
    query_start_loc: &[i64],
) -> Result<Vec<f64>> {
    let mut out = Vec::with_capacity(query_start_loc.len().saturating_sub(1) * h);
    for (s, pair) in query_start_loc.windows(2).enumerate() {
        let (start, end) = (pair[0], pair[1]);
        ensure(0 <= start && start <= end && end <= tokens as i64, || {
            format!("query_start_loc {start}..{end} of sequence {s} is not an increasing range within {tokens} tokens")
        })?;
        if start == end {
            out.extend(std::iter::repeat_n(0.0, h));
        } else {
            let last = end as usize - 1;
            out.extend_from_slice(&x[last * h..(last + 1) * h]);
        }
    }
    Ok(out)
}

/// Index of the largest value: the first one on ties; NaN never wins; 0
/// when nothing beats -inf (all NaN or -inf, or an empty row).
pub fn argmax(values: impl Iterator<Item = f64>) -> usize {
    let mut best = (0, f64::NEG_INFINITY);
    for (i, v) in values.enumerate() {
        if v > best.1 {
            best = (i, v);
        }
    }
    best.0
}

/// The argmax of each `vocab`-wide row.
pub fn argmax_rows(logits: &[f64], rows: usize, vocab: usize) -> Vec<i64> {
    (0..rows)
        .map(|s| argmax(logits[s * vocab..(s + 1) * vocab].iter().copied()) as i64)
        .collect()
}

/// Per row `s`: `argmax(logits / t[s] + noise)`, or plain `argmax(logits)`
/// where `t[s] <= 0` (greedy requests ignore the noise).
pub fn sample(logits: &[f64], temperature: &[f64], noise: &[f64], vocab: usize) -> Vec<i64> {
    temperature
        .iter()
        .enumerate()
        .map(|(s, &t)| {
            let row = &logits[s * vocab..(s + 1) * vocab];
            let token = if t <= 0.0 {
                argmax(row.iter().copied())
            } else {
                let g = &noise[s * vocab..(s + 1) * vocab];
                argmax(row.iter().zip(g).map(|(l, g)| l / t + g))
            };
            token as i64
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use crate::testing::{f32s, ids, kernels, read, read_ids, zeros};
    use tessera_core::hal::Kernels;

    #[test]
    fn gather_last_takes_last_rows_and_zero_rows() {
        // Three sequences over 3 token rows: [0, 2), [2, 2) (empty), [2, 3).
        let k = kernels();
        let x = f32s(&[3, 2], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        let out = f32s(&[3, 2], &[-1.0; 6]);
        k.gather_last(&x, &ids(&[4], &[0, 2, 2, 3]), &out)
            .expect("gather_last");
        assert_eq!(read(&out), [3.0, 4.0, 0.0, 0.0, 5.0, 6.0]);
        let bad = ids(&[2], &[0, 4]);
        assert!(
            k.gather_last(&x, &bad, &zeros(&[1, 2])).is_err(),
            "row 4 of 3"
        );
    }

    #[test]
    fn argmax_ties_nan_and_negative_infinity() {
        // Row 0: tie between 1 and 2 -> the first, 1. Row 1: NaN first ->
        // 2 wins. Row 2: nothing beats -inf -> 0.
        let k = kernels();
        let nan = f64::NAN;
        let inf = f64::INFINITY;
        let logits = f32s(&[3, 3], &[0.5, 2.0, 2.0, nan, -1.0, 3.0, nan, -inf, nan]);
        let out = ids(&[3], &[9, 9, 9]);
        k.argmax(&logits, &out).expect("argmax");
        assert_eq!(read_ids(&out), [1, 2, 0]);
    }

    #[test]
    fn sample_is_gumbel_max_and_greedy_at_zero_temperature() {
        // Row 0, t = 0.5: logits / t = [2, 4, 3.8] + noise [0, 0, 0.5] ->
        // [2, 4, 4.3] -> 2. Row 1, t = 0: the noise is ignored -> argmax 1.
        let k = kernels();
        let logits = f32s(&[2, 3], &[1.0, 2.0, 1.9, 1.0, 2.0, 1.9]);
        let noise = f32s(&[2, 3], &[0.0, 0.0, 0.5, 0.0, 0.0, 5.0]);
        let t = f32s(&[2], &[0.5, 0.0]);
        let out = ids(&[2], &[9, 9]);
        k.sample(&logits, &t, &noise, &out).expect("sample");
        assert_eq!(read_ids(&out), [2, 1]);
        // With every temperature 0, sample equals argmax.
        let greedy = ids(&[2], &[9, 9]);
        k.argmax(&logits, &greedy).expect("argmax");
        k.sample(&logits, &f32s(&[2], &[0.0, 0.0]), &noise, &out)
            .expect("sample");
        assert_eq!(read_ids(&out), read_ids(&greedy));
    }
}
