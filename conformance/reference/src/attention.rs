//! Paged attention over the ragged batch, the plain way: for each sequence,
//! query token and head, every visible score in f64, a max-subtracted
//! softmax, and the weighted sum of the values.
//!
//! Sequence `s` owns query rows `query_start_loc[s]..query_start_loc[s + 1]`
//! of `q`; they are its last `q_len` tokens, so query `i` sits at position
//! `seq_len - q_len + i`. Its keys are the sequence's cached positions
//! `lo..hi`: `hi = pos + 1` when causal (else `seq_len`), and with a sliding
//! window `w`, `lo = pos + 1 - w` (the last `w` positions, itself included).
//! Query head `h` reads KV head `h / (num_heads / num_kv_heads)` (GQA).
//! Rows of `q` after the last sequence are padding and come out zero.

use crate::kv_cache::{self, Geometry};
use crate::tensors::{ensure, with_bytes};
use std::ops::Range;
use tessera_core::hal::{AttentionParams, Tensor};
use tessera_core::{Error, Result};

/// The batch metadata, read from the device.
pub struct Batch {
    /// `[S + 1]`
    pub query_start_loc: Vec<i64>,
    /// `[S]`
    pub seq_lens: Vec<i64>,
    /// `[S, max_blocks]`
    pub block_tables: Vec<i64>,
    pub max_blocks: usize,
}

/// One sequence's part of the batch, checked.
struct Sequence {
    /// Its query rows of `q`.
    rows: Range<usize>,
    seq_len: usize,
    /// Block ids of its positions `0..seq_len`.
    blocks: Vec<usize>,
}

/// Checks the metadata against `tokens` query rows and the cache, so that
/// the arithmetic below cannot index out of bounds.
fn sequences(b: &Batch, tokens: usize, g: &Geometry) -> Result<Vec<Sequence>> {
    let num_seqs = b.seq_lens.len();
    ensure(
        b.query_start_loc.len() == num_seqs + 1 && b.query_start_loc.first() == Some(&0),
        || {
            format!(
                "query_start_loc must start at 0 and have {} entries",
                num_seqs + 1
            )
        },
    )?;
    let mut out = Vec::with_capacity(num_seqs);
    let ranges = b.query_start_loc.windows(2);
    for (s, (&len, range)) in b.seq_lens.iter().zip(ranges).enumerate() {
        let (start, end) = (range[0], range[1]);
        ensure(start <= end && end <= tokens as i64, || {
            format!("query_start_loc {start}..{end} of sequence {s} is not an increasing range within {tokens} tokens")
        })?;
        let q_len = end - start;
        ensure(len >= q_len, || {
            format!("sequence {s} has {q_len} query tokens but seq_len {len}")
        })?;
        let seq_len = len as usize;
        let needed = seq_len.div_ceil(g.block_size);
        ensure(needed <= b.max_blocks, || {
            format!(
                "sequence {s}: seq_len {seq_len} needs {needed} blocks, the block table has {}",
                b.max_blocks
            )
        })?;
        let table = b
            .block_tables
            .get(s * b.max_blocks..)
            .and_then(|rows| rows.get(..needed))
            .ok_or_else(|| Error::invalid(format!("block_tables has no row {s}")))?;
        let blocks = table
            .iter()
            .map(|&id| {
                usize::try_from(id)
                    .ok()
                    .filter(|&id| id < g.num_blocks)
                    .ok_or_else(|| {
                        Error::invalid(format!(
                            "sequence {s}: block id {id} is outside the cache of {} blocks",
                            g.num_blocks
                        ))
                    })
            })
            .collect::<Result<Vec<_>>>()?;
        out.push(Sequence {
            rows: start as usize..end as usize,
            seq_len,
            blocks,
        });
    }
    Ok(out)
}

/// `q` of shape `[tokens, num_heads, head_dim]` attends to the caches (K
/// then V, read one sequence at a time); returns the output, shaped as `q`.
pub fn paged_attention(
    q: &[f64],
    [tokens, num_heads, d]: [usize; 3],
    [k_cache, v_cache]: [&Tensor; 2],
    g: &Geometry,
    b: &Batch,
    p: &AttentionParams,
) -> Result<Vec<f64>> {
    if let Some(c) = p.softcap {
        ensure(c > 0.0, || format!("softcap must be positive, got {c}"))?;
    }
    let group = num_heads / g.num_kv_heads;
    let mut out = vec![0.0; q.len()];
    for seq in sequences(b, tokens, g)? {
        if seq.rows.is_empty() {
            continue; // no query token: nothing to compute, no cache to read
        }
        let read = |cache: &Tensor| {
            with_bytes(cache, |bytes| {
                kv_cache::read_sequence(bytes, cache.dtype, g, &seq.blocks, seq.seq_len)
            })
        };
        // [seq_len, num_kv_heads, head_dim]
        let (keys, values) = (read(k_cache)?, read(v_cache)?);
        let kv = [keys.as_slice(), values.as_slice()];
        let q_len = seq.rows.len();
        for (i, t) in seq.rows.enumerate() {
            let seen = visible(seq.seq_len - q_len + i, seq.seq_len, p);
            for h in 0..num_heads {
                let row = (t * num_heads + h) * d..(t * num_heads + h + 1) * d;
                let o = attend(&q[row.clone()], kv, h / group, seen.clone(), g, p);
                out[row].copy_from_slice(&o);
            }
        }
    }
    Ok(out)
}

/// The positions a query at `pos` attends to: up to itself when causal (else
/// the whole sequence), and only the last `w` of those with a sliding window.
fn visible(pos: usize, seq_len: usize, p: &AttentionParams) -> Range<usize> {
    let hi = if p.causal { pos + 1 } else { seq_len };
    let lo = match p.sliding_window {
        Some(w) if w > 0 => (pos + 1).saturating_sub(w),
        _ => 0,
    };
    lo..hi
}

/// One query head `qh` over `seen` of KV head `kv_head`, with `kv` the
/// sequence's keys and values: `softmax(softcap(scale * q.k)) . v`.
fn attend(
    qh: &[f64],
    [keys, values]: [&[f64]; 2],
    kv_head: usize,
    seen: Range<usize>,
    g: &Geometry,
    p: &AttentionParams,
) -> Vec<f64> {
    let scale = f64::from(p.scale);
    let scores: Vec<f64> = seen
        .clone()
        .map(|j| {
            let k = kv_row(keys, g, j, kv_head);
            let s = qh.iter().zip(k).map(|(a, b)| a * b).sum::<f64>() * scale;
            match p.softcap.map(f64::from) {
                Some(c) => c * (s / c).tanh(),
                None => s,
            }
        })
        .collect();
    // Subtracting the max keeps exp() finite; it cancels in the ratio.
    let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let weights: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
    let total: f64 = weights.iter().sum();
    let mut out = vec![0.0; qh.len()];
    for (j, w) in seen.zip(&weights) {
        for (o, v) in out.iter_mut().zip(kv_row(values, g, j, kv_head)) {
            *o += w / total * v;
        }
    }
    out
}

/// Row (`pos`, `kv_head`) of a sequence's keys or values, `[seq_len, num_kv_heads, head_dim]`.
fn kv_row<'a>(kv: &'a [f64], g: &Geometry, pos: usize, kv_head: usize) -> &'a [f64] {
    &kv[(pos * g.num_kv_heads + kv_head) * g.head_dim..][..g.head_dim]
}

#[cfg(test)]
mod tests {
    use crate::testing::{assert_close, f32s, ids, kernels, read, tensor, zeros};
    use tessera_core::hal::{AttentionBatch, AttentionParams, Kernels, Tensor};
    use tessera_core::DType;

    fn params() -> AttentionParams {
        AttentionParams {
            scale: 1.0,
            causal: true,
            sliding_window: None,
            softcap: None,
        }
    }

    /// One sequence of `keys.len()` cached tokens (one block, one KV head,
    /// head dim 2) whose last `queries.len()` tokens are the queries, with
    /// `heads` query heads sharing the KV head. Returns `[q_len, heads, 2]`.
    fn attend(
        queries: &[[f64; 2]],
        heads: usize,
        keys: &[[f64; 2]],
        values: &[[f64; 2]],
        p: &AttentionParams,
        dtype: DType,
    ) -> Vec<f64> {
        let n = keys.len();
        let k = kernels();
        let flat = |rows: &[[f64; 2]]| rows.iter().flatten().copied().collect::<Vec<_>>();
        let kc = tensor(dtype, &[1, 1, n, 2], &flat(keys));
        let vc = tensor(dtype, &[1, 1, n, 2], &flat(values));
        let q_rows: Vec<[f64; 2]> = queries
            .iter()
            .flat_map(|q| std::iter::repeat_n(*q, heads))
            .collect();
        let q = f32s(&[queries.len(), heads, 2], &flat(&q_rows));
        let out = zeros(&[queries.len(), heads, 2]);
        let batch = AttentionBatch {
            query_start_loc: &ids(&[2], &[0, queries.len() as i64]),
            seq_lens: &ids(&[1], &[n as i64]),
            block_tables: &ids(&[1, 1], &[0]),
        };
        k.paged_attention(&q, &kc, &vc, &batch, p, &out)
            .expect("attention");
        read(&out)
    }

    #[test]
    fn a_single_key_returns_its_value() {
        for dtype in [DType::F32, DType::BF16, DType::F16] {
            let out = attend(
                &[[3.0, -1.0]],
                1,
                &[[0.5, 2.0]],
                &[[4.0, -8.0]],
                &params(),
                dtype,
            );
            assert_eq!(out, [4.0, -8.0], "{dtype}");
        }
    }

    #[test]
    fn equal_keys_average_the_values_for_every_head() {
        // Two query heads share the KV head (GQA); equal scores weigh 1/2 each.
        let keys = [[1.0, 0.0], [1.0, 0.0]];
        let out = attend(
            &[[2.0, 5.0]],
            2,
            &keys,
            &[[2.0, 0.0], [4.0, 6.0]],
            &params(),
            DType::F32,
        );
        assert_eq!(out, [3.0, 3.0, 3.0, 3.0]);
    }

    #[test]
    fn scores_follow_the_softmax() {
        // q = [1, 0], keys [0, 0] and [ln 3, 0]: scores 0 and ln 3, weights 1/4
        // and 3/4; values 0 and 4 give 3. Scale 2 doubles the scores: weights
        // 1/10 and 9/10, giving 3.6.
        let keys = [[0.0, 0.0], [3f64.ln(), 0.0]];
        let values = [[0.0, 0.0], [4.0, 0.0]];
        let out = attend(&[[1.0, 0.0]], 1, &keys, &values, &params(), DType::F32);
        assert_close(&out, &[3.0, 0.0], 1e-6);
        let p = AttentionParams {
            scale: 2.0,
            ..params()
        };
        let out = attend(&[[1.0, 0.0]], 1, &keys, &values, &p, DType::F32);
        assert_close(&out, &[3.6, 0.0], 1e-6);
    }

    #[test]
    fn causal_queries_see_only_their_past_and_the_window_hides_old_keys() {
        // Three cached tokens, all three are queries (a prefill). Equal
        // scores (q = 0), so each output is the mean of the visible values.
        let keys = [[0.0, 0.0]; 3];
        let values = [[3.0, 0.0], [6.0, 0.0], [9.0, 0.0]];
        let q = [[0.0, 0.0]; 3];
        let out = attend(&q, 1, &keys, &values, &params(), DType::F32);
        assert_close(&out, &[3.0, 0.0, 4.5, 0.0, 6.0, 0.0], 1e-6);
        // Window 2: position 2 sees positions 1 and 2 only.
        let p = AttentionParams {
            sliding_window: Some(2),
            ..params()
        };
        let out = attend(&q, 1, &keys, &values, &p, DType::F32);
        assert_close(&out, &[3.0, 0.0, 4.5, 0.0, 7.5, 0.0], 1e-6);
        // Not causal: every query sees all three.
        let p = AttentionParams {
            causal: false,
            ..params()
        };
        let out = attend(&q, 1, &keys, &values, &p, DType::F32);
        assert_close(&out, &[6.0, 0.0, 6.0, 0.0, 6.0, 0.0], 1e-6);
    }

    #[test]
    fn softcap_bounds_the_scores() {
        // Scores 0 and 100 capped at 1: 1 * tanh(100) = 1.0 (to 1e-80), so
        // the weights are 1 / (1 + e) and e / (1 + e) = 0.7310586 instead of
        // all on the second key. Values 0 and 1.
        let keys = [[0.0, 0.0], [100.0, 0.0]];
        let values = [[0.0, 0.0], [1.0, 0.0]];
        let p = AttentionParams {
            softcap: Some(1.0),
            ..params()
        };
        let out = attend(&[[1.0, 0.0]], 1, &keys, &values, &p, DType::F32);
        assert_close(&out, &[0.731_058_6, 0.0], 1e-6);
    }

    #[test]
    fn ragged_batch_with_paging_and_padding_rows() {
        // Sequence 0: 3 cached tokens in blocks [1, 0] (block size 2), one
        // query (decode). Sequence 1: no query token. Row 1 is padding.
        // Only values differ between positions; q = 0, so the output is the
        // mean of positions 0, 1 (block 1) and 2 (block 0, offset 0).
        let k = kernels();
        let kc = f32s(&[2, 1, 2, 1], &[0.0; 4]);
        let vc = f32s(&[2, 1, 2, 1], &[7.0, 100.0, 1.0, 4.0]);
        let q = f32s(&[2, 1, 1], &[0.0, 0.0]);
        let out = f32s(&[2, 1, 1], &[-1.0, -1.0]);
        let batch = AttentionBatch {
            query_start_loc: &ids(&[3], &[0, 1, 1]),
            seq_lens: &ids(&[2], &[3, 0]),
            block_tables: &ids(&[2, 2], &[1, 0, 0, 0]),
        };
        k.paged_attention(&q, &kc, &vc, &batch, &params(), &out)
            .expect("attention");
        assert_close(&read(&out), &[4.0, 0.0], 1e-6);
    }

    #[test]
    fn bad_metadata_is_an_error() {
        let k = kernels();
        let cache = f32s(&[1, 1, 2, 1], &[0.0; 2]);
        let q = f32s(&[1, 1, 1], &[0.0]);
        let out = zeros(&[1, 1, 1]);
        let run = |qsl: &[i64], lens: &[i64], table: &[i64]| {
            let (qsl, lens, table): (Tensor, Tensor, Tensor) =
                (ids(&[2], qsl), ids(&[1], lens), ids(&[1, 1], table));
            let batch = AttentionBatch {
                query_start_loc: &qsl,
                seq_lens: &lens,
                block_tables: &table,
            };
            k.paged_attention(&q, &cache, &cache, &batch, &params(), &out)
        };
        assert!(run(&[0, 1], &[2], &[0]).is_ok());
        assert!(run(&[0, 2], &[2], &[0]).is_err(), "query rows beyond q");
        assert!(
            run(&[0, 1], &[0], &[0]).is_err(),
            "more queries than tokens"
        );
        assert!(run(&[0, 1], &[3], &[0]).is_err(), "seq_len needs 2 blocks");
        assert!(
            run(&[0, 1], &[2], &[1]).is_err(),
            "block id outside the cache"
        );
        assert!(
            run(&[1, 1], &[2], &[0]).is_err(),
            "query_start_loc not from 0"
        );
    }
}
