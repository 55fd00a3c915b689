//! The paged KV cache: `[num_blocks, num_kv_heads, block_size, head_dim]`
//! (`KvLayout::BlockHeadToken`), in f32, bf16 or f16. Token slot `s` is
//! offset `s % block_size` of block `s / block_size`. This file writes new
//! rows (`kv_write`) and reads a sequence's rows back for attention.

use crate::tensors::{decode_extend, encode};
use tessera_core::{DType, Error, Result};

/// The cache's shape.
#[derive(Clone, Copy, Debug)]
pub struct Geometry {
    pub num_blocks: usize,
    pub num_kv_heads: usize,
    pub block_size: usize,
    pub head_dim: usize,
}

impl Geometry {
    /// Byte range of the row of (`block`, `head`, `offset`) in a cache of `dtype`.
    fn row(
        &self,
        dtype: DType,
        block: usize,
        head: usize,
        offset: usize,
    ) -> std::ops::Range<usize> {
        let row = (block * self.num_kv_heads + head) * self.block_size + offset;
        let bytes = self.head_dim * dtype.size();
        row * bytes..(row + 1) * bytes
    }
}

fn cache_too_small() -> Error {
    Error::invalid("KV cache smaller than its shape")
}

/// Writes `new [tokens, num_kv_heads, head_dim]` into the cache `bytes` at
/// `slots` (one per token; negative = padding, skipped). Every slot is
/// checked before anything is written, so a bad one leaves the cache as it was.
pub fn kv_write(
    bytes: &mut [u8],
    dtype: DType,
    g: &Geometry,
    new: &[f64],
    slots: &[i64],
) -> Result<()> {
    let capacity = g.num_blocks * g.block_size;
    let mut places = Vec::with_capacity(slots.len());
    for &slot in slots {
        if slot < 0 {
            places.push(None);
            continue;
        }
        let s = usize::try_from(slot)
            .ok()
            .filter(|&s| s < capacity)
            .ok_or_else(|| {
                Error::invalid(format!(
                    "slot {slot} is outside the cache of {} blocks of {}",
                    g.num_blocks, g.block_size
                ))
            })?;
        places.push(Some((s / g.block_size, s % g.block_size)));
    }
    let d = g.head_dim;
    for (t, place) in places.into_iter().enumerate() {
        let Some((block, offset)) = place else {
            continue;
        };
        for h in 0..g.num_kv_heads {
            let src = &new[(t * g.num_kv_heads + h) * d..][..d];
            let dst = bytes
                .get_mut(g.row(dtype, block, h, offset))
                .ok_or_else(cache_too_small)?;
            encode(dtype, src, dst)?;
        }
    }
    Ok(())
}

/// The first `len` positions of one sequence, `[len, num_kv_heads, head_dim]`,
/// following `table` (the sequence's row of the block table, already
/// checked to hold valid block ids for these positions).
pub fn read_sequence(
    bytes: &[u8],
    dtype: DType,
    g: &Geometry,
    table: &[usize],
    len: usize,
) -> Result<Vec<f64>> {
    let mut out = Vec::with_capacity(len * g.num_kv_heads * g.head_dim);
    for pos in 0..len {
        let block = *table
            .get(pos / g.block_size)
            .ok_or_else(|| Error::invalid(format!("no block for position {pos}")))?;
        for h in 0..g.num_kv_heads {
            let src = bytes
                .get(g.row(dtype, block, h, pos % g.block_size))
                .ok_or_else(cache_too_small)?;
            decode_extend(dtype, src, &mut out)?;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use crate::testing::{f32s, ids, kernels, read, tensor};
    use tessera_core::hal::Kernels;
    use tessera_core::DType;

    #[test]
    fn writes_at_slots_skips_padding_in_every_dtype() {
        // 2 blocks of 2 tokens, 1 head of dim 2. Slot 3 = block 1, offset 1,
        // the last row; slot -1 is padding.
        let k = kernels();
        for dtype in [DType::F32, DType::BF16, DType::F16] {
            let cache = tensor(dtype, &[2, 1, 2, 2], &[0.0; 8]);
            let new = f32s(&[2, 1, 2], &[1.0, 2.0, 3.0, 4.0]);
            k.kv_write(&cache, &new, &ids(&[2], &[3, -1]))
                .expect("kv_write");
            assert_eq!(
                read(&cache),
                [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 2.0],
                "{dtype}"
            );
        }
    }

    #[test]
    fn heads_of_a_token_go_to_their_own_rows() {
        // 1 block of 2 tokens, 2 heads of dim 1: layout [block][head][offset].
        // Token 0 -> slot 1: head 0 at index 1, head 1 at index 3.
        let k = kernels();
        let cache = f32s(&[1, 2, 2, 1], &[0.0; 4]);
        k.kv_write(&cache, &f32s(&[1, 2, 1], &[7.0, 8.0]), &ids(&[1], &[1]))
            .expect("kv_write");
        assert_eq!(read(&cache), [0.0, 7.0, 0.0, 8.0]);
    }

    #[test]
    fn a_slot_beyond_the_cache_is_an_error_and_writes_nothing() {
        let k = kernels();
        let cache = f32s(&[2, 1, 2, 2], &[0.0; 8]);
        let new = f32s(&[2, 1, 2], &[1.0, 2.0, 3.0, 4.0]);
        let e = k
            .kv_write(&cache, &new, &ids(&[2], &[0, 4]))
            .expect_err("slot 4 of 4");
        assert!(e.to_string().contains("slot 4"), "{e}");
        assert_eq!(read(&cache), [0.0; 8], "slot 0 was not written either");
    }
}
