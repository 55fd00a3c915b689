//! Dequantization of ggml tensor data to f32.
//!
//! Block layouts are ggml's. Every value is computed as gguf-py's numpy code
//! computes it (`q * d + m` in f32, with `d` and `m` widened from f16, no fused
//! multiply-add), so the results are bit-identical to `gguf.quants.dequantize`.

use super::gguf::GgmlType;
use crate::{Error, Result};
use half::f16;

/// The types `dequantize` can read.
pub const SUPPORTED: [GgmlType; 6] = [
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q8_0,
];

pub fn can_dequantize(ty: GgmlType) -> bool {
    SUPPORTED.contains(&ty)
}

fn bad(message: String) -> Error {
    Error::model("GGUF tensor data", message)
}

/// Dequantizes `numel` values of type `ty` from `raw`, the data of tensor `name`
/// (the name is only used in messages). `raw` must hold exactly the bytes of
/// `numel` values.
pub fn dequantize(name: &str, ty: GgmlType, raw: &[u8], numel: usize) -> Result<Vec<f32>> {
    // Validate before allocating: the output is never larger than the input implies.
    check_len(name, ty, raw.len(), numel)?;
    let mut out = vec![0f32; numel];
    dequantize_into(name, ty, raw, &mut out)?;
    Ok(out)
}

fn check_len(name: &str, ty: GgmlType, have: usize, numel: usize) -> Result<()> {
    if !can_dequantize(ty) {
        let list: Vec<&str> = SUPPORTED.iter().map(|t| t.name()).collect();
        return Err(bad(format!(
            "tensor {name} has type {ty}, which tessera cannot dequantize yet (supported: {})",
            list.join(", ")
        )));
    }
    let (bs, ts) = (ty.block_size(), ty.type_size());
    if !numel.is_multiple_of(bs) {
        return Err(bad(format!(
            "tensor {name}: {numel} values are not a whole number of {ty} blocks of {bs}"
        )));
    }
    let need = (numel / bs).checked_mul(ts);
    if need != Some(have) {
        return Err(bad(format!(
            "tensor {name}: {numel} {ty} values need {} bytes but the data has {have} (truncated or corrupt)",
            need.map_or_else(|| "more than addressable".to_string(), |n| n.to_string())
        )));
    }
    Ok(())
}

/// Dequantizes `raw` into `out` (whose length is the number of values).
pub fn dequantize_into(name: &str, ty: GgmlType, raw: &[u8], out: &mut [f32]) -> Result<()> {
    check_len(name, ty, raw.len(), out.len())?;
    match ty {
        GgmlType::F32 => {
            for (o, b) in out.iter_mut().zip(raw.chunks_exact(4)) {
                *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
        }
        GgmlType::F16 => {
            for (o, b) in out.iter_mut().zip(raw.chunks_exact(2)) {
                *o = f16::from_le_bytes([b[0], b[1]]).to_f32();
            }
        }
        GgmlType::BF16 => {
            for (o, b) in out.iter_mut().zip(raw.chunks_exact(2)) {
                *o = f32::from_bits((u16::from_le_bytes([b[0], b[1]]) as u32) << 16);
            }
        }
        GgmlType::Q4_0 => {
            for (blk, o) in raw.chunks_exact(18).zip(out.chunks_exact_mut(32)) {
                let d = f16::from_le_bytes([blk[0], blk[1]]).to_f32();
                let qs: &[u8; 16] = blk[2..18]
                    .try_into()
                    .map_err(|_| bad(format!("tensor {name}: bad Q4_0 block")))?;
                let (lo, hi) = o.split_at_mut(16);
                for j in 0..16 {
                    lo[j] = ((qs[j] & 0x0f) as i32 - 8) as f32 * d;
                    hi[j] = ((qs[j] >> 4) as i32 - 8) as f32 * d;
                }
            }
        }
        GgmlType::Q4_1 => {
            for (blk, o) in raw.chunks_exact(20).zip(out.chunks_exact_mut(32)) {
                let d = f16::from_le_bytes([blk[0], blk[1]]).to_f32();
                let m = f16::from_le_bytes([blk[2], blk[3]]).to_f32();
                let qs: &[u8; 16] = blk[4..20]
                    .try_into()
                    .map_err(|_| bad(format!("tensor {name}: bad Q4_1 block")))?;
                let (lo, hi) = o.split_at_mut(16);
                for j in 0..16 {
                    lo[j] = (qs[j] & 0x0f) as f32 * d + m;
                    hi[j] = (qs[j] >> 4) as f32 * d + m;
                }
            }
        }
        GgmlType::Q8_0 => {
            for (blk, o) in raw.chunks_exact(34).zip(out.chunks_exact_mut(32)) {
                let d = f16::from_le_bytes([blk[0], blk[1]]).to_f32();
                let qs: &[u8; 32] = blk[2..34]
                    .try_into()
                    .map_err(|_| bad(format!("tensor {name}: bad Q8_0 block")))?;
                for j in 0..32 {
                    o[j] = (qs[j] as i8) as f32 * d;
                }
            }
        }
        // check_len refused every other type.
        other => {
            return Err(bad(format!(
                "tensor {name} has type {other}, which tessera cannot dequantize yet"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(x: f32) -> [u8; 2] {
        f16::from_f32(x).to_le_bytes()
    }

    #[test]
    fn q4_0_block() {
        // d = 0.5; element j < 16 from the low nibble of byte j, j >= 16 from the high nibble of byte j-16.
        let mut blk = h(0.5).to_vec();
        for j in 0..16u8 {
            blk.push(j | ((15 - j) << 4));
        }
        let v = dequantize("t", GgmlType::Q4_0, &blk, 32).unwrap();
        for j in 0..16 {
            assert_eq!(v[j], (j as f32 - 8.0) * 0.5);
            assert_eq!(v[16 + j], ((15 - j) as f32 - 8.0) * 0.5);
        }
        assert_eq!(v[0], -4.0);
        assert_eq!(v[16], 3.5);
    }

    #[test]
    fn q4_1_block() {
        let mut blk = h(0.25).to_vec();
        blk.extend_from_slice(&h(-1.0));
        for j in 0..16u8 {
            blk.push((j % 16) | (((j + 3) % 16) << 4));
        }
        // Two blocks: the second with d = 2, m = 1 and all nibbles 15.
        blk.extend_from_slice(&h(2.0));
        blk.extend_from_slice(&h(1.0));
        blk.extend_from_slice(&[0xff; 16]);
        let v = dequantize("t", GgmlType::Q4_1, &blk, 64).unwrap();
        for j in 0..16 {
            assert_eq!(v[j], j as f32 * 0.25 - 1.0);
            assert_eq!(v[16 + j], ((j + 3) % 16) as f32 * 0.25 - 1.0);
        }
        assert!(v[32..].iter().all(|&x| x == 31.0));
    }

    #[test]
    fn q4_1_rounds_like_numpy() {
        // d and m that are not exact in a fused multiply-add: q*d rounded, then + m rounded.
        let d = f16::from_bits(0x2e66).to_f32(); // ~0.0999
        let m = f16::from_bits(0xb555).to_f32(); // ~-0.3333
        let mut blk = f16::from_f32(d).to_le_bytes().to_vec();
        blk.extend_from_slice(&f16::from_f32(m).to_le_bytes());
        blk.extend_from_slice(&[0x97; 16]);
        let v = dequantize("t", GgmlType::Q4_1, &blk, 32).unwrap();
        let expect_lo = 7f32 * d + m;
        let expect_hi = 9f32 * d + m;
        assert_eq!(v[0].to_bits(), expect_lo.to_bits());
        assert_eq!(v[16].to_bits(), expect_hi.to_bits());
    }

    #[test]
    fn q8_0_block() {
        let mut blk = h(0.125).to_vec();
        for j in 0..32i32 {
            blk.push((j * 8 - 128) as i8 as u8);
        }
        let v = dequantize("t", GgmlType::Q8_0, &blk, 32).unwrap();
        for (j, &x) in v.iter().enumerate() {
            assert_eq!(x, (j as f32 * 8.0 - 128.0) * 0.125);
        }
    }

    #[test]
    fn plain_types() {
        let raw: Vec<u8> = [1.5f32, -2.0]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        assert_eq!(
            dequantize("t", GgmlType::F32, &raw, 2).unwrap(),
            vec![1.5, -2.0]
        );
        let raw: Vec<u8> = [h(1.5), h(-0.25)].concat();
        assert_eq!(
            dequantize("t", GgmlType::F16, &raw, 2).unwrap(),
            vec![1.5, -0.25]
        );
        let raw: Vec<u8> = [half::bf16::from_f32(3.0), half::bf16::from_f32(-0.5)]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        assert_eq!(
            dequantize("t", GgmlType::BF16, &raw, 2).unwrap(),
            vec![3.0, -0.5]
        );
    }

    #[test]
    fn truncated_or_oversized_data_is_an_error() {
        let blk = [0u8; 20];
        let e = dequantize("blk.0.attn_q.weight", GgmlType::Q4_1, &blk[..19], 32)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("blk.0.attn_q.weight") && e.contains("truncated"),
            "{e}"
        );
        assert!(dequantize("t", GgmlType::Q4_1, &blk, 64).is_err());
        assert!(dequantize("t", GgmlType::Q4_1, &blk, 31).is_err());
        assert!(dequantize("t", GgmlType::Q8_0, &[0u8; 35], 32).is_err());
        assert!(dequantize("t", GgmlType::F32, &[0u8; 7], 2).is_err());
        assert!(dequantize("t", GgmlType::F32, &[0u8; 8], usize::MAX).is_err());
        let mut out = [0f32; 32];
        assert!(dequantize_into("t", GgmlType::Q4_0, &[0u8; 17], &mut out).is_err());
    }

    #[test]
    fn unsupported_types_are_named() {
        let e = dequantize("blk.3.ffn_down.weight", GgmlType::Q5_K, &[0u8; 176], 256)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(
                "tensor blk.3.ffn_down.weight has type Q5_K, which tessera cannot dequantize yet \
                 (supported: F32, F16, BF16, Q4_0, Q4_1, Q8_0)"
            ),
            "{e}"
        );
    }
}
