//! Embedding lookup: `out[t] = table[ids[t]]`.

use crate::tensors::decode_extend;
use tessera_core::{DType, Error, Result};

/// Rows `ids` of a `[vocab, h]` table stored as `bytes` of `dtype`, as f64
/// `[ids.len(), h]`. Only the rows asked for are decoded: the table is big.
pub fn embedding(
    bytes: &[u8],
    dtype: DType,
    [vocab, h]: [usize; 2],
    ids: &[i64],
) -> Result<Vec<f64>> {
    let row_bytes = h * dtype.size();
    let mut out = Vec::with_capacity(ids.len() * h);
    for &id in ids {
        let row = usize::try_from(id)
            .ok()
            .filter(|&r| r < vocab)
            .ok_or_else(|| {
                Error::invalid(format!(
                    "token id {id} is outside the vocabulary of {vocab}"
                ))
            })?;
        let src = bytes
            .get(row * row_bytes..(row + 1) * row_bytes)
            .ok_or_else(|| Error::invalid("embedding table smaller than its shape"))?;
        decode_extend(dtype, src, &mut out)?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use crate::testing::{ids, kernels, read, tensor, zeros};
    use tessera_core::hal::Kernels;
    use tessera_core::DType;

    #[test]
    fn picks_rows_in_any_table_dtype() {
        let k = kernels();
        for dtype in [DType::F32, DType::BF16, DType::F16] {
            let table = tensor(dtype, &[3, 2], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
            let out = zeros(&[3, 2]);
            k.embedding(&table, &ids(&[3], &[2, 0, 2]), &out)
                .expect("embedding");
            assert_eq!(read(&out), [5.0, 6.0, 1.0, 2.0, 5.0, 6.0], "{dtype}");
        }
    }

    #[test]
    fn ids_outside_the_vocabulary_are_errors() {
        let k = kernels();
        let table = tensor(DType::F32, &[2, 2], &[1.0, 2.0, 3.0, 4.0]);
        let out = zeros(&[1, 2]);
        for bad in [2, -1] {
            let e = k
                .embedding(&table, &ids(&[1], &[bad]), &out)
                .expect_err("bad id");
            assert!(e.to_string().contains(&format!("token id {bad}")), "{e}");
        }
        assert_eq!(read(&out), [0.0, 0.0], "nothing written on error");
    }
}
