//! Tensors as f64 values: kernels `load` their inputs, compute in f64 and
//! `store` their results, which rounds once, to the output's dtype. Big
//! tensors that an op reads only part of (weights, embedding tables, the KV
//! cache) are read through `with_bytes` and decoded row by row instead.
//!
//! Device bytes are little-endian, the layout `HostTensor::as_bytes` uploads.

use crate::memory::memory;
use half::{bf16, f16};
use tessera_core::hal::Tensor;
use tessera_core::{DType, Error, Result};

/// `Ok` when `cond` holds, otherwise an `Error::Invalid` with `msg()`.
pub fn ensure(cond: bool, msg: impl FnOnce() -> String) -> Result<()> {
    if cond {
        Ok(())
    } else {
        Err(Error::invalid(msg()))
    }
}

/// The dims of `t`, which must have exactly `N` of them.
pub fn dims<const N: usize>(t: &Tensor, what: &str) -> Result<[usize; N]> {
    <[usize; N]>::try_from(t.shape.as_slice()).map_err(|_| {
        Error::invalid(format!(
            "{what} must have {N} dimensions, got shape {:?}",
            t.shape
        ))
    })
}

/// Byte range of `t` in its buffer; overflow-proof, the bounds check is the caller's `get`.
fn byte_range(t: &Tensor) -> Result<std::ops::Range<usize>> {
    t.shape
        .iter()
        .try_fold(t.dtype.size(), |n, &d| n.checked_mul(d))
        .and_then(|n| t.offset.checked_add(n))
        .map(|end| t.offset..end)
        .ok_or_else(|| Error::invalid(format!("tensor of shape {:?} is too large", t.shape)))
}

fn out_of_buffer(t: &Tensor, len: usize) -> Error {
    Error::invalid(format!(
        "a {} tensor of shape {:?} at byte {} does not fit its buffer of {len} bytes",
        t.dtype, t.shape, t.offset
    ))
}

/// Runs `f` on the bytes of `t`, holding its buffer's lock meanwhile.
pub fn with_bytes<R>(t: &Tensor, f: impl FnOnce(&[u8]) -> Result<R>) -> Result<R> {
    let range = byte_range(t)?;
    let guard = memory(&t.buffer)?.lock()?;
    let len = guard.len();
    f(guard.get(range).ok_or_else(|| out_of_buffer(t, len))?)
}

/// Runs `f` on the bytes of `t` for writing, holding its buffer's lock meanwhile.
pub fn with_bytes_mut<R>(t: &Tensor, f: impl FnOnce(&mut [u8]) -> Result<R>) -> Result<R> {
    let range = byte_range(t)?;
    let mut guard = memory(&t.buffer)?.lock()?;
    let len = guard.len();
    f(guard.get_mut(range).ok_or_else(|| out_of_buffer(t, len))?)
}

fn not_float(dtype: DType) -> Error {
    Error::invalid(format!(
        "expected a float tensor (f32, bf16, f16), got {dtype}"
    ))
}

/// Appends the values of `bytes`, elements of the float `dtype`, to `out`.
pub fn decode_extend(dtype: DType, bytes: &[u8], out: &mut Vec<f64>) -> Result<()> {
    // `chunks_exact` yields whole elements only, so the indexing cannot fail.
    match dtype {
        DType::F32 => out.extend(
            bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64),
        ),
        DType::BF16 => out.extend(
            bytes
                .chunks_exact(2)
                .map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f64()),
        ),
        DType::F16 => out.extend(
            bytes
                .chunks_exact(2)
                .map(|b| f16::from_le_bytes([b[0], b[1]]).to_f64()),
        ),
        DType::I32 => return Err(not_float(dtype)),
    }
    Ok(())
}

/// Writes `values` into `bytes` as the float `dtype`, rounding to nearest even.
pub fn encode(dtype: DType, values: &[f64], bytes: &mut [u8]) -> Result<()> {
    ensure(bytes.len() == values.len() * dtype.size(), || {
        format!(
            "{} values do not fill {} bytes of {dtype}",
            values.len(),
            bytes.len()
        )
    })?;
    match dtype {
        DType::F32 => {
            for (b, &v) in bytes.chunks_exact_mut(4).zip(values) {
                b.copy_from_slice(&(v as f32).to_le_bytes());
            }
        }
        DType::BF16 => {
            for (b, &v) in bytes.chunks_exact_mut(2).zip(values) {
                b.copy_from_slice(&bf16::from_f64(v).to_le_bytes());
            }
        }
        DType::F16 => {
            for (b, &v) in bytes.chunks_exact_mut(2).zip(values) {
                b.copy_from_slice(&f16::from_f64(v).to_le_bytes());
            }
        }
        DType::I32 => return Err(not_float(dtype)),
    }
    Ok(())
}

/// All values of a float tensor, widened to f64 (exactly).
pub fn load(t: &Tensor) -> Result<Vec<f64>> {
    with_bytes(t, |bytes| {
        let mut out = Vec::with_capacity(t.numel());
        decode_extend(t.dtype, bytes, &mut out)?;
        Ok(out)
    })
}

/// All values of an i32 tensor (ids, positions, batch metadata).
pub fn load_ids(t: &Tensor) -> Result<Vec<i64>> {
    ensure(t.dtype == DType::I32, || {
        format!("expected an i32 tensor, got {}", t.dtype)
    })?;
    with_bytes(t, |bytes| {
        Ok(bytes
            .chunks_exact(4)
            .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as i64)
            .collect())
    })
}

/// Writes all values of a float tensor, rounded to its dtype.
pub fn store(t: &Tensor, values: &[f64]) -> Result<()> {
    ensure(values.len() == t.numel(), || {
        format!(
            "{} values for a tensor of shape {:?}",
            values.len(),
            t.shape
        )
    })?;
    with_bytes_mut(t, |bytes| encode(t.dtype, values, bytes))
}

/// Writes all values of an i32 tensor.
pub fn store_ids(t: &Tensor, ids: &[i64]) -> Result<()> {
    ensure(t.dtype == DType::I32 && ids.len() == t.numel(), || {
        format!(
            "{} ids for a {} tensor of shape {:?} (wanted i32)",
            ids.len(),
            t.dtype,
            t.shape
        )
    })?;
    with_bytes_mut(t, |bytes| {
        for (b, &id) in bytes.chunks_exact_mut(4).zip(ids) {
            let id = i32::try_from(id)
                .map_err(|_| Error::invalid(format!("id {id} does not fit an i32")))?;
            b.copy_from_slice(&id.to_le_bytes());
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{read, tensor};

    #[test]
    fn float_dtypes_round_trip_values_they_can_hold() {
        // 1.5, -2.25 and 1024 are exact in every float dtype.
        for dtype in [DType::F32, DType::BF16, DType::F16] {
            let t = tensor(dtype, &[3], &[1.5, -2.25, 1024.0]);
            assert_eq!(read(&t), [1.5, -2.25, 1024.0], "{dtype}");
        }
    }

    #[test]
    fn store_rounds_to_the_dtype() {
        // 1 + 2^-10 is an f16 (10 mantissa bits) but not a bf16 (7): bf16's
        // step above 1 is 2^-7, so it rounds to 1.
        let x = 1.0 + 2f64.powi(-10);
        assert_eq!(read(&tensor(DType::F16, &[1], &[x])), [x]);
        assert_eq!(read(&tensor(DType::BF16, &[1], &[x])), [1.0]);
        // f32 keeps 23 bits: 1 + 2^-30 becomes 1.
        assert_eq!(
            read(&tensor(DType::F32, &[1], &[1.0 + 2f64.powi(-30)])),
            [1.0]
        );
    }

    #[test]
    fn wrong_dtypes_and_sizes_are_errors() {
        let ids = crate::testing::ids(&[2], &[1, 2]);
        assert!(load(&ids).is_err(), "i32 read as floats");
        let floats = tensor(DType::F32, &[2], &[1.0, 2.0]);
        assert!(load_ids(&floats).is_err(), "floats read as ids");
        assert!(store(&floats, &[1.0]).is_err(), "too few values");
        assert!(store_ids(&ids, &[1, 1 << 40]).is_err(), "id beyond i32");
        // A tensor whose view runs past its buffer's end.
        let past_end = Tensor {
            offset: 4,
            ..floats
        };
        let e = load(&past_end).expect_err("past the end");
        assert!(e.to_string().contains("does not fit"), "{e}");
    }
}
