//! The CPU backend's op kernels: argument checks here, arithmetic in the files
//! named after each op family.

use crate::attention::{self, Batch, Geometry};
use crate::device::HostMemory;
use crate::matmul::{matmul, WeightRows};
use crate::view::{expect, read, read_floats, write, Floats};
use crate::{norm, rope};
use half::bf16;
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

    fn native_optional_ops(&self) -> &'static [&'static str] {
        &["add_rms_norm", "sample", "lora_shrink", "lora_expand"]
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

    fn lora_shrink(&self, x: &Tensor, a: &Tensor, idx: &Tensor, out: &Tensor) -> Result<()> {
        let (t, k) = (x.dim(0), x.dim(1));
        let (slots, r) = (a.dim(0), a.dim(1));
        expect(
            x.shape.len() == 2
                && a.shape.len() == 3
                && a.dim(2) == k
                && idx.shape == [t]
                && out.shape == [t, r],
            || {
                format!(
                    "lora_shrink: x {:?}, a {:?}, idx {:?}, out {:?}",
                    x.shape, a.shape, idx.shape, out.shape
                )
            },
        )?;
        let stack = match read_floats(a)? {
            Floats::F32(v) => WeightRows::F32(v),
            Floats::BF16(v) => WeightRows::BF16(v),
        };
        let out = write::<f32>(out)?;
        crate::lora::apply(read(x)?, k, stack, [slots, r], read(idx)?, out, false);
        Ok(())
    }

    fn lora_expand(
        &self,
        y: &Tensor,
        u: &Tensor,
        b: &Tensor,
        idx: &Tensor,
        out: &Tensor,
    ) -> Result<()> {
        let (t, n) = (y.dim(0), y.dim(1));
        let (slots, r) = (b.dim(0), b.dim(2));
        expect(
            y.shape.len() == 2
                && b.shape.len() == 3
                && b.dim(1) == n
                && u.shape == [t, r]
                && idx.shape == [t]
                && out.shape == [t, n],
            || {
                format!(
                    "lora_expand: y {:?}, u {:?}, b {:?}, idx {:?}, out {:?}",
                    y.shape, u.shape, b.shape, idx.shape, out.shape
                )
            },
        )?;
        let stack = match read_floats(b)? {
            Floats::F32(v) => WeightRows::F32(v),
            Floats::BF16(v) => WeightRows::BF16(v),
        };
        let dst = write::<f32>(out)?;
        dst.copy_from_slice(read::<f32>(y)?);
        crate::lora::apply(read(u)?, r, stack, [slots, n], read(idx)?, dst, true);
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
        crate::activation::silu_mul(write::<f32>(out)?, read::<f32>(gate)?, read::<f32>(up)?);
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

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_core::hal::{RopeStyle, Tensor};
    use tessera_core::model::config::RopeScaling;

    fn kernels() -> CpuKernels {
        CpuKernels::new(2).expect("pool")
    }

    fn tensor<T: crate::view::Elem>(k: &CpuKernels, shape: &[usize], data: &[T]) -> Tensor {
        let t = Tensor::new(
            k.alloc(std::mem::size_of_val(data)).expect("alloc"),
            0,
            T::DTYPE,
            shape.to_vec(),
        )
        .expect("tensor");
        write::<T>(&t).expect("view").copy_from_slice(data);
        t
    }

    #[test]
    fn argmax_and_sample_pick_the_same_token_everywhere() {
        let k = kernels();
        let logits = tensor(
            &k,
            &[2, 4],
            &[0.1f32, 3.0, 2.9, -1.0, 5.0, 5.0, 1.0, f32::NAN],
        );
        let out = tensor(&k, &[2], &[0i32; 2]);
        k.argmax(&logits, &out).expect("argmax");
        assert_eq!(
            read::<i32>(&out).expect("read"),
            &[1, 0],
            "first max wins ties, NaN never wins"
        );

        // Gumbel-max: noise large enough to flip row 0 only at temperature 1; t = 0 ignores it.
        let noise = tensor(&k, &[2, 4], &[0.0f32, 0.0, 0.5, 0.0, 0.0, 0.0, 0.0, 0.0]);
        let temp = tensor(&k, &[2], &[1.0f32, 0.0]);
        k.sample(&logits, &temp, &noise, &out).expect("sample");
        assert_eq!(read::<i32>(&out).expect("read"), &[2, 0]);
    }

    #[test]
    fn elementwise_ops() {
        let k = kernels();
        let a = tensor(&k, &[2, 2], &[1.0f32, -2.0, 0.0, 4.0]);
        let b = tensor(&k, &[2, 2], &[0.5f32, 0.5, 2.0, -1.0]);
        let out = tensor(&k, &[2, 2], &[0f32; 4]);
        k.add(&a, &b, &out).expect("add");
        assert_eq!(read::<f32>(&out).expect("read"), &[1.5, -1.5, 2.0, 3.0]);
        k.silu_mul(&a, &b, &out).expect("silu_mul");
        let silu = |x: f32| x / (1.0 + (-x).exp());
        let want = [silu(1.0) * 0.5, silu(-2.0) * 0.5, 0.0, -silu(4.0)];
        for (g, w) in read::<f32>(&out).expect("read").iter().zip(want) {
            assert!((g - w).abs() < 1e-6, "{g} vs {w}");
        }
        let w = tensor(&k, &[2], &[1.0f32, 2.0]);
        k.rms_norm(&a, &w, 0.0, &out).expect("rms_norm");
        let r = (2.5f32).sqrt(); // rms of [1, -2]
        assert!((read::<f32>(&out).expect("read")[1] - (-2.0 / r * 2.0)).abs() < 1e-6);
    }

    #[test]
    fn rope_layouts_agree_up_to_the_pair_order() {
        let k = kernels();
        let p = |style| RopeParams {
            style,
            head_dim: 4,
            theta: 10000.0,
            scaling: RopeScaling::None,
        };
        let pos = tensor(&k, &[1], &[3i32]);
        // The same pairs (x0,x2),(x1,x3) in neox order and (x0,x1),(x2,x3) in interleaved order.
        let neox_in = tensor(&k, &[1, 1, 4], &[1.0f32, 2.0, 3.0, 4.0]);
        let inter_in = tensor(&k, &[1, 1, 4], &[1.0f32, 3.0, 2.0, 4.0]);
        let (o1, o2) = (
            tensor(&k, &[1, 1, 4], &[0f32; 4]),
            tensor(&k, &[1, 1, 4], &[0f32; 4]),
        );
        k.rope(&neox_in, &pos, &p(RopeStyle::Neox), &o1)
            .expect("rope");
        k.rope(&inter_in, &pos, &p(RopeStyle::Interleaved), &o2)
            .expect("rope");
        let (a, b) = (
            read::<f32>(&o1).expect("read"),
            read::<f32>(&o2).expect("read"),
        );
        assert_eq!([a[0], a[2], a[1], a[3]], [b[0], b[1], b[2], b[3]]);
        let angle = 3.0f32; // position 3, first frequency 1
        assert!((a[0] - (1.0 * angle.cos() - 3.0 * angle.sin())).abs() < 1e-6);
    }

    #[test]
    fn kv_write_skips_padding_and_refuses_slots_outside_the_cache() {
        let k = kernels();
        // 2 blocks, 1 head, block size 2, head dim 2.
        let cache = tensor(&k, &[2, 1, 2, 2], &[0f32; 8]);
        let new = tensor(&k, &[2, 1, 2], &[1.0f32, 2.0, 3.0, 4.0]);
        let slots = tensor(&k, &[2], &[3i32, -1]);
        k.kv_write(&cache, &new, &slots).expect("kv_write");
        assert_eq!(
            read::<f32>(&cache).expect("read"),
            &[0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 2.0]
        );
        let bad = tensor(&k, &[2], &[4i32, 0]);
        assert!(k.kv_write(&cache, &new, &bad).is_err());
    }

    #[test]
    fn embedding_refuses_ids_outside_the_vocabulary() {
        let k = kernels();
        let table = tensor(&k, &[2, 2], &[1.0f32, 2.0, 3.0, 4.0]);
        let out = tensor(&k, &[1, 2], &[0f32; 2]);
        k.embedding(&table, &tensor(&k, &[1], &[1i32]), &out)
            .expect("embedding");
        assert_eq!(read::<f32>(&out).expect("read"), &[3.0, 4.0]);
        let e = k
            .embedding(&table, &tensor(&k, &[1], &[2i32]), &out)
            .unwrap_err();
        assert!(e.to_string().contains("token id 2"), "{e}");
    }
}
