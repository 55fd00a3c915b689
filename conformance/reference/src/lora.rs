//! LoRA's two halves with one adapter slot per token: `shrink` takes each
//! token's vector to its adapter's rank (`a[slot] · x`), `expand` adds the
//! adapter's delta back (`y + b[slot] · u`). A token whose slot is negative
//! or past the stack has no adapter: zeros from shrink, `y` from expand.

/// `x [tokens, cols]`, `stack [slots, rows, cols]` -> `[tokens, rows]`.
pub fn apply(
    x: &[f64],
    stack: &[f64],
    slots_of: &[i64],
    [slots, rows, cols]: [usize; 3],
) -> Vec<f64> {
    let mut out = vec![0.0; slots_of.len() * rows];
    for (t, &slot) in slots_of.iter().enumerate() {
        let Some(s) = usize::try_from(slot).ok().filter(|&s| s < slots) else {
            continue;
        };
        let v = &x[t * cols..(t + 1) * cols];
        for r in 0..rows {
            let m = &stack[(s * rows + r) * cols..][..cols];
            out[t * rows + r] = m.iter().zip(v).map(|(a, b)| a * b).sum();
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::apply;

    #[test]
    fn each_token_uses_its_slot_and_no_slot_gives_zeros() {
        // Two slots of a 1x2 matrix: [1, 2] and [3, 4].
        let stack = [1.0, 2.0, 3.0, 4.0];
        let x = [1.0, 1.0, 1.0, 2.0, 5.0, 5.0, 7.0, 7.0];
        let out = apply(&x, &stack, &[1, 0, -1, 2], [2, 1, 2]);
        assert_eq!(out, vec![7.0, 5.0, 0.0, 0.0]);
    }
}
