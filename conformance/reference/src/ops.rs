//! The `Kernels` trait for the reference backend: each op checks its shapes
//! here, loads its inputs as f64, calls the arithmetic in the file named
//! after its family, and stores the result. Outputs are written only after
//! every check has passed, so a refused call leaves them untouched.

use crate::attention::{self, Batch};
use crate::kv_cache::{self, Geometry};
use crate::linear::{self, Weights};
use crate::tensors::{dims, ensure, load, load_ids, store, store_ids, with_bytes, with_bytes_mut};
use crate::{activation, embedding, lora, memory, norm, rope, select, BACKEND_NAME};
use tessera_core::hal::{AttentionBatch, AttentionParams, Buffer, Kernels, RopeParams, Tensor};
use tessera_core::Result;

pub struct RefKernels {
    /// Threads a large `linear` may use.
    threads: usize,
}

impl RefKernels {
    pub fn new(threads: usize) -> Self {
        RefKernels {
            threads: threads.max(1),
        }
    }
}

/// Fails unless `t` has exactly `shape`.
fn shape_is(t: &Tensor, shape: &[usize], what: &str) -> Result<()> {
    ensure(t.shape == shape, || {
        format!("{what} has shape {:?}, expected {shape:?}", t.shape)
    })
}

/// Fails unless `t` is a float tensor (weights, tables, caches may be any).
fn float(t: &Tensor, what: &str) -> Result<()> {
    ensure(t.dtype.is_float(), || {
        format!("{what} must be f32, bf16 or f16, got {}", t.dtype)
    })
}

impl Kernels for RefKernels {
    fn backend(&self) -> &str {
        BACKEND_NAME
    }

    fn native_optional_ops(&self) -> &'static [&'static str] {
        &["add_rms_norm", "sample", "lora_shrink", "lora_expand"]
    }

    fn alloc(&self, bytes: usize) -> Result<Buffer> {
        memory::alloc(bytes)
    }

    fn embedding(&self, table: &Tensor, ids: &Tensor, out: &Tensor) -> Result<()> {
        let [vocab, h] = dims(table, "embedding: table")?;
        let [tokens] = dims(ids, "embedding: ids")?;
        shape_is(out, &[tokens, h], "embedding: out")?;
        float(table, "embedding: table")?;
        let ids = load_ids(ids)?;
        let rows = with_bytes(table, |bytes| {
            embedding::embedding(bytes, table.dtype, [vocab, h], &ids)
        })?;
        store(out, &rows)
    }

    fn linear(&self, x: &Tensor, w: &Tensor, bias: Option<&Tensor>, out: &Tensor) -> Result<()> {
        let [tokens, k] = dims(x, "linear: x")?;
        let [n, wk] = dims(w, "linear: w")?;
        ensure(wk == k, || {
            format!("linear: x {:?} does not match w {:?}", x.shape, w.shape)
        })?;
        if let Some(b) = bias {
            shape_is(b, &[n], "linear: bias")?;
        }
        shape_is(out, &[tokens, n], "linear: out")?;
        float(w, "linear: w")?;
        let xv = load(x)?;
        let bias = bias.map(load).transpose()?;
        // The weights are read in place, under their buffer's lock, for the
        // whole product (see linear.rs); x and bias are copies already.
        let y = with_bytes(w, |bytes| {
            let weights = Weights {
                bytes,
                dtype: w.dtype,
                rows: n,
                cols: k,
            };
            linear::linear(&xv, tokens, weights, bias.as_deref(), self.threads)
        })?;
        store(out, &y)
    }

    fn rms_norm(&self, x: &Tensor, w: &Tensor, eps: f32, out: &Tensor) -> Result<()> {
        let [h] = dims(w, "rms_norm: w")?;
        ensure(x.shape.last() == Some(&h), || {
            format!("rms_norm: x {:?} does not end in w's {h}", x.shape)
        })?;
        shape_is(out, &x.shape, "rms_norm: out")?;
        let y = norm::rms_norm(&load(x)?, &load(w)?, f64::from(eps));
        store(out, &y)
    }

    fn add_rms_norm(
        &self,
        x: &Tensor,
        residual: &Tensor,
        w: &Tensor,
        eps: f32,
        out: &Tensor,
        residual_out: &Tensor,
    ) -> Result<()> {
        let [h] = dims(w, "add_rms_norm: w")?;
        ensure(x.shape.last() == Some(&h), || {
            format!("add_rms_norm: x {:?} does not end in w's {h}", x.shape)
        })?;
        shape_is(residual, &x.shape, "add_rms_norm: residual")?;
        shape_is(out, &x.shape, "add_rms_norm: out")?;
        shape_is(residual_out, &x.shape, "add_rms_norm: residual_out")?;
        let (y, sum) = norm::add_rms_norm(&load(x)?, &load(residual)?, &load(w)?, f64::from(eps));
        store(residual_out, &sum)?;
        store(out, &y)
    }

    fn rope(&self, x: &Tensor, positions: &Tensor, p: &RopeParams, out: &Tensor) -> Result<()> {
        let [tokens, heads, d] = dims(x, "rope: x")?;
        ensure(d == p.head_dim && d % 2 == 0, || {
            format!(
                "rope: head_dim {} (x {:?}) must match x and be even",
                p.head_dim, x.shape
            )
        })?;
        shape_is(positions, &[tokens], "rope: positions")?;
        shape_is(out, &x.shape, "rope: out")?;
        let y = rope::rope(&load(x)?, &load_ids(positions)?, heads, p);
        store(out, &y)
    }

    fn silu_mul(&self, gate: &Tensor, up: &Tensor, out: &Tensor) -> Result<()> {
        shape_is(up, &gate.shape, "silu_mul: up")?;
        shape_is(out, &gate.shape, "silu_mul: out")?;
        store(out, &activation::silu_mul(&load(gate)?, &load(up)?))
    }

    fn add(&self, a: &Tensor, b: &Tensor, out: &Tensor) -> Result<()> {
        shape_is(b, &a.shape, "add: b")?;
        shape_is(out, &a.shape, "add: out")?;
        store(out, &activation::add(&load(a)?, &load(b)?))
    }

    fn kv_write(&self, cache: &Tensor, new: &Tensor, slots: &Tensor) -> Result<()> {
        let g = geometry(cache, "kv_write: cache")?;
        let [tokens, _, _] = dims(new, "kv_write: new")?;
        shape_is(new, &[tokens, g.num_kv_heads, g.head_dim], "kv_write: new")?;
        shape_is(slots, &[tokens], "kv_write: slots")?;
        float(cache, "kv_write: cache")?;
        let (values, slots) = (load(new)?, load_ids(slots)?);
        with_bytes_mut(cache, |bytes| {
            kv_cache::kv_write(bytes, cache.dtype, &g, &values, &slots)
        })
    }

    fn paged_attention(
        &self,
        q: &Tensor,
        k_cache: &Tensor,
        v_cache: &Tensor,
        batch: &AttentionBatch,
        p: &AttentionParams,
        out: &Tensor,
    ) -> Result<()> {
        let q_shape @ [_, num_heads, d] = dims(q, "paged_attention: q")?;
        let g = geometry(k_cache, "paged_attention: k_cache")?;
        shape_is(v_cache, &k_cache.shape, "paged_attention: v_cache")?;
        ensure(k_cache.dtype == v_cache.dtype, || {
            format!(
                "paged_attention: K cache is {}, V cache is {}",
                k_cache.dtype, v_cache.dtype
            )
        })?;
        float(k_cache, "paged_attention: caches")?;
        ensure(d == g.head_dim, || {
            format!(
                "paged_attention: q {:?} and the caches {:?} differ in head_dim",
                q.shape, k_cache.shape
            )
        })?;
        ensure(
            num_heads >= g.num_kv_heads && num_heads % g.num_kv_heads == 0,
            || {
                format!(
                    "paged_attention: {num_heads} query heads do not group over {} KV heads",
                    g.num_kv_heads
                )
            },
        )?;
        let [num_seqs] = dims(batch.seq_lens, "paged_attention: seq_lens")?;
        shape_is(
            batch.query_start_loc,
            &[num_seqs + 1],
            "paged_attention: query_start_loc",
        )?;
        let [table_rows, max_blocks] = dims(batch.block_tables, "paged_attention: block_tables")?;
        ensure(table_rows == num_seqs, || {
            format!("paged_attention: {table_rows} block table rows for {num_seqs} sequences")
        })?;
        shape_is(out, &q.shape, "paged_attention: out")?;
        let b = Batch {
            query_start_loc: load_ids(batch.query_start_loc)?,
            seq_lens: load_ids(batch.seq_lens)?,
            block_tables: load_ids(batch.block_tables)?,
            max_blocks,
        };
        let y = attention::paged_attention(&load(q)?, q_shape, [k_cache, v_cache], &g, &b, p)?;
        store(out, &y)
    }

    fn gather_last(&self, x: &Tensor, query_start_loc: &Tensor, out: &Tensor) -> Result<()> {
        let x_shape @ [_, h] = dims(x, "gather_last: x")?;
        let [n] = dims(query_start_loc, "gather_last: query_start_loc")?;
        ensure(n >= 1, || "gather_last: query_start_loc is empty".into())?;
        shape_is(out, &[n - 1, h], "gather_last: out")?;
        let y = select::gather_last(&load(x)?, x_shape, &load_ids(query_start_loc)?)?;
        store(out, &y)
    }

    fn argmax(&self, logits: &Tensor, out: &Tensor) -> Result<()> {
        let [rows, vocab] = dims(logits, "argmax: logits")?;
        shape_is(out, &[rows], "argmax: out")?;
        store_ids(out, &select::argmax_rows(&load(logits)?, rows, vocab))
    }

    fn sample(
        &self,
        logits: &Tensor,
        temperature: &Tensor,
        noise: &Tensor,
        out: &Tensor,
    ) -> Result<()> {
        let [rows, vocab] = dims(logits, "sample: logits")?;
        shape_is(temperature, &[rows], "sample: temperature")?;
        shape_is(noise, &logits.shape, "sample: noise")?;
        shape_is(out, &[rows], "sample: out")?;
        let tokens = select::sample(&load(logits)?, &load(temperature)?, &load(noise)?, vocab);
        store_ids(out, &tokens)
    }

    fn lora_shrink(&self, x: &Tensor, a: &Tensor, idx: &Tensor, out: &Tensor) -> Result<()> {
        let [tokens, k] = dims(x, "lora_shrink: x")?;
        let stack @ [_, r, ak] = dims(a, "lora_shrink: a")?;
        ensure(ak == k, || {
            format!(
                "lora_shrink: x {:?} does not match a {:?}",
                x.shape, a.shape
            )
        })?;
        shape_is(idx, &[tokens], "lora_shrink: idx")?;
        shape_is(out, &[tokens, r], "lora_shrink: out")?;
        float(a, "lora_shrink: a")?;
        let u = lora::apply(&load(x)?, &load(a)?, &load_ids(idx)?, stack);
        store(out, &u)
    }

    fn lora_expand(
        &self,
        y: &Tensor,
        u: &Tensor,
        b: &Tensor,
        idx: &Tensor,
        out: &Tensor,
    ) -> Result<()> {
        let [tokens, n] = dims(y, "lora_expand: y")?;
        let stack @ [_, bn, r] = dims(b, "lora_expand: b")?;
        ensure(bn == n, || {
            format!(
                "lora_expand: y {:?} does not match b {:?}",
                y.shape, b.shape
            )
        })?;
        shape_is(u, &[tokens, r], "lora_expand: u")?;
        shape_is(idx, &[tokens], "lora_expand: idx")?;
        shape_is(out, &[tokens, n], "lora_expand: out")?;
        float(b, "lora_expand: b")?;
        let delta = lora::apply(&load(u)?, &load(b)?, &load_ids(idx)?, stack);
        let sum: Vec<f64> = load(y)?.iter().zip(&delta).map(|(a, d)| a + d).collect();
        store(out, &sum)
    }
}

/// The shape of a KV cache tensor, with the sizes attention divides by checked.
fn geometry(cache: &Tensor, what: &str) -> Result<Geometry> {
    let [num_blocks, num_kv_heads, block_size, head_dim] = dims(cache, what)?;
    ensure(num_kv_heads > 0 && block_size > 0, || {
        format!(
            "{what}: {:?} needs KV heads and a block size above 0",
            cache.shape
        )
    })?;
    Ok(Geometry {
        num_blocks,
        num_kv_heads,
        block_size,
        head_dim,
    })
}
