//! The CPU backend's op kernels: argument checks here, arithmetic in the files
//! named after each op family.

use crate::attention::{self, Batch, Geometry};
use crate::device::HostMemory;
use crate::matmul::{matmul, WeightRows};
use crate::view::{expect, read, read_floats, write, Floats};
use crate::{norm, rope};
use half::bf16;
use rayon::prelude::*;
use std::sync::Arc;
use tessera_core::hal::{AttentionBatch, AttentionParams, Buffer, Kernels, RopeParams, Tensor};
use tessera_core::{DType, Error, Result};

pub struct CpuKernels {
    pool: rayon::ThreadPool,
}

impl CpuKernels {
    pub fn new(threads: usize) -> Result<Self> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads.max(1))
            .thread_name(|i| format!("tessera-cpu-{i}"))
            .build()
            .map_err(|e| Error::device("cpu", format!("cannot start {threads} threads: {e}")))?;
        Ok(CpuKernels { pool })
    }

    pub fn pool(&self) -> &rayon::ThreadPool {
        &self.pool
    }
}

fn same_shape(a: &Tensor, b: &Tensor, op: &str) -> Result<()> {
    expect(a.shape == b.shape, || {
        format!("{op}: shapes {:?} and {:?} differ", a.shape, b.shape)
    })
}

impl Kernels for CpuKernels {
    fn backend(&self) -> &str {
        "cpu"
    }

    fn alloc(&self, bytes: usize) -> Result<Buffer> {
        Ok(Buffer::new(Arc::new(HostMemory::new(bytes)?)))
    }

    fn embedding(&self, table: &Tensor, ids: &Tensor, out: &Tensor) -> Result<()> {
        let (vocab, h) = (table.dim(0), table.dim(1));
        let ids = read::<i32>(ids)?;
        let o = write::<f32>(out)?;
        for (t, &id) in ids.iter().enumerate() {
            expect(id >= 0 && (id as usize) < vocab, || {
                format!("token id {id} is outside the vocabulary of {vocab}")
            })?;
            let row = &mut o[t * h..(t + 1) * h];
            let src = id as usize * h;
            match read_floats(table)? {
                Floats::F32(w) => row.copy_from_slice(&w[src..src + h]),
                Floats::BF16(w) => row
                    .iter_mut()
                    .zip(&w[src..src + h])
                    .for_each(|(d, s)| *d = s.to_f32()),
            }
        }
        Ok(())
    }

    fn linear(&self, x: &Tensor, w: &Tensor, bias: Option<&Tensor>, out: &Tensor) -> Result<()> {
        let (m, k, n) = (x.dim(0), x.dim(1), w.dim(0));
        expect(w.dim(1) == k && out.shape == [m, n], || {
            format!(
                "linear: x {:?}, w {:?}, out {:?}",
                x.shape, w.shape, out.shape
            )
        })?;
        let rows = match read_floats(w)? {
            Floats::F32(v) => WeightRows::F32(v),
            Floats::BF16(v) => WeightRows::BF16(v),
        };
        let bias = match bias {
            Some(b) => Some(read::<f32>(b)?),
            None => None,
        };
        matmul(read::<f32>(x)?, m, k, rows, n, bias, write::<f32>(out)?);
        Ok(())
    }

    fn rms_norm(&self, x: &Tensor, w: &Tensor, eps: f32, out: &Tensor) -> Result<()> {
        same_shape(x, out, "rms_norm")?;
        norm::rms_norm(read(x)?, read(w)?, eps, write(out)?);
        Ok(())
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
        same_shape(x, residual, "add_rms_norm")?;
        norm::add_rms_norm(
            read(x)?,
            read(residual)?,
            read(w)?,
            eps,
            write(out)?,
            write(residual_out)?,
        );
        Ok(())
    }

    fn rope(&self, x: &Tensor, positions: &Tensor, p: &RopeParams, out: &Tensor) -> Result<()> {
        same_shape(x, out, "rope")?;
        rope::rope(read(x)?, read(positions)?, p, x.dim(1), write(out)?);
        Ok(())
    }

    fn silu_mul(&self, gate: &Tensor, up: &Tensor, out: &Tensor) -> Result<()> {
        same_shape(gate, up, "silu_mul")?;
        let (g, u, o) = (read::<f32>(gate)?, read::<f32>(up)?, write::<f32>(out)?);
        let f = |(o, (&g, &u)): (&mut f32, (&f32, &f32))| *o = g / (1.0 + (-g).exp()) * u;
        if o.len() >= 1 << 15 {
            o.par_iter_mut()
                .zip(g.par_iter().zip(u.par_iter()))
                .for_each(f);
        } else {
            o.iter_mut().zip(g.iter().zip(u.iter())).for_each(f);
        }
        Ok(())
    }

    fn add(&self, a: &Tensor, b: &Tensor, out: &Tensor) -> Result<()> {
        same_shape(a, b, "add")?;
        let (a, b, o) = (read::<f32>(a)?, read::<f32>(b)?, write::<f32>(out)?);
        o.iter_mut()
            .zip(a.iter().zip(b))
            .for_each(|(o, (x, y))| *o = x + y);
        Ok(())
    }

    fn kv_write(&self, cache: &Tensor, new: &Tensor, slots: &Tensor) -> Result<()> {
        let (blocks, heads, bs, d) = (cache.dim(0), cache.dim(1), cache.dim(2), cache.dim(3));
        let src = read::<f32>(new)?;
        let slots = read::<i32>(slots)?;
        for (t, &slot) in slots.iter().enumerate() {
            if slot < 0 {
                continue; // padding
            }
            let (blk, off) = (slot as usize / bs, slot as usize % bs);
            expect(blk < blocks, || {
                format!("slot {slot} is outside the cache of {blocks} blocks of {bs}")
            })?;
            for h in 0..heads {
                let s = &src[(t * heads + h) * d..][..d];
                let at = ((blk * heads + h) * bs + off) * d;
                match cache.dtype {
                    DType::F32 => write::<f32>(cache)?[at..at + d].copy_from_slice(s),
                    DType::BF16 => write::<bf16>(cache)?[at..at + d]
                        .iter_mut()
                        .zip(s)
                        .for_each(|(o, &v)| *o = bf16::from_f32(v)),
                    other => {
                        return Err(Error::Unsupported {
                            backend: "cpu".into(),
                            what: format!("{other} KV cache"),
                        })
                    }
                }
            }
        }
        Ok(())
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
        same_shape(q, out, "paged_attention")?;
        same_shape(k_cache, v_cache, "paged_attention")?;
        let g = Geometry {
            num_heads: q.dim(1),
            num_kv_heads: k_cache.dim(1),
            head_dim: q.dim(2),
            num_blocks: k_cache.dim(0),
            block_size: k_cache.dim(2),
        };
        let b = Batch {
            query_start_loc: read(batch.query_start_loc)?,
            seq_lens: read(batch.seq_lens)?,
            block_tables: read(batch.block_tables)?,
            max_blocks: batch.block_tables.dim(1),
        };
        let (qv, o) = (read::<f32>(q)?, write::<f32>(out)?);
        match (read_floats(k_cache)?, read_floats(v_cache)?) {
            (Floats::F32(k), Floats::F32(v)) => attention::paged_attention(qv, k, v, &b, &g, p, o),
            (Floats::BF16(k), Floats::BF16(v)) => {
                attention::paged_attention(qv, k, v, &b, &g, p, o)
            }
            _ => Err(Error::invalid("K and V caches have different dtypes")),
        }
    }

    fn gather_last(&self, x: &Tensor, query_start_loc: &Tensor, out: &Tensor) -> Result<()> {
        let h = x.dim(1);
        let (xv, qsl, o) = (
            read::<f32>(x)?,
            read::<i32>(query_start_loc)?,
            write::<f32>(out)?,
        );
        for s in 0..qsl.len().saturating_sub(1) {
            let (start, end) = (qsl[s], qsl[s + 1]);
            let row = &mut o[s * h..(s + 1) * h];
            if end > start && (end as usize) <= x.dim(0) {
                row.copy_from_slice(&xv[(end as usize - 1) * h..end as usize * h]);
            } else {
                row.iter_mut().for_each(|v| *v = 0.0);
            }
        }
        Ok(())
    }

    fn argmax(&self, logits: &Tensor, out: &Tensor) -> Result<()> {
        let v = logits.dim(1);
        let (l, o) = (read::<f32>(logits)?, write::<i32>(out)?);
        for (row, dst) in l.chunks(v).zip(o.iter_mut()) {
            *dst = argmax(row.iter().copied()) as i32;
        }
        Ok(())
    }

    fn sample(
        &self,
        logits: &Tensor,
        temperature: &Tensor,
        noise: &Tensor,
        out: &Tensor,
    ) -> Result<()> {
        same_shape(logits, noise, "sample")?;
        let v = logits.dim(1);
        let (l, t, n, o) = (
            read::<f32>(logits)?,
            read::<f32>(temperature)?,
            read::<f32>(noise)?,
            write::<i32>(out)?,
        );
        for (s, dst) in o.iter_mut().enumerate() {
            let row = &l[s * v..(s + 1) * v];
            *dst = if t[s] <= 0.0 {
                argmax(row.iter().copied())
            } else {
                let inv = 1.0 / t[s];
                argmax(
                    row.iter()
                        .zip(&n[s * v..(s + 1) * v])
                        .map(|(x, g)| x * inv + g),
                )
            } as i32;
        }
        Ok(())
    }
}

/// Index of the largest value; the first one on ties; NaN never wins.
fn argmax(values: impl Iterator<Item = f32>) -> usize {
    let mut best = (0, f32::NEG_INFINITY);
    for (i, x) in values.enumerate() {
        if x > best.1 {
            best = (i, x);
        }
    }
    best.0
}
