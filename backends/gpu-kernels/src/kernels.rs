//! The HAL's op kernels on a GPU (NVIDIA or AMD): shapes checked here, then
//! one launch (or two) of our kernels in `kernels/cuda/` following their
//! ABI, or the vendor library's matmul (cuBLASLt, hipBLASLt/rocBLAS).
//! Everything goes to the GPU's one stream, in order. Nothing here depends
//! on the warp width: the kernels take it from compat.h (`TSR_WARP`).
//!
//! Activations are f32; weights and the KV cache are f32 or bf16.

use crate::launch::{Args, Config};
use crate::runtime::Runtime;
use std::collections::HashMap;
use std::sync::Mutex;
use tessera_core::hal::{
    AttentionBatch, AttentionParams, Buffer, Capabilities, Kernels, KvLayout, RopeParams,
    RopeStyle, Tensor,
};
use tessera_core::{DType, Error, Result};

/// What the kernels take, on every vendor: f32 activations, bf16 or f32
/// weights and KV cache, blocks of 8 to 256 tokens. `graph_capture`: whether
/// the backend records decode steps as CUDA/HIP graphs.
pub fn capabilities(graph_capture: bool) -> Capabilities {
    Capabilities {
        weight_dtypes: vec![DType::BF16, DType::F32],
        activation_dtype: DType::F32,
        kv_dtypes: vec![DType::BF16, DType::F32],
        kv_layout: KvLayout::BlockHeadToken,
        block_sizes: vec![8, 16, 32, 64, 128, 256],
        graph_capture,
        exact_shapes: false,
        host_memory: false,
    }
}

/// Kernels with one instance per element type (`_f32`, `_bf16`).
const TYPED: &[&str] = &[
    "embedding",
    "rms_norm",
    "add_rms_norm",
    "add_bias",
    "gemv",
    "kv_write",
    "paged_attention_prefill",
    "paged_attention_decode",
    "lora_shrink",
    "lora_expand",
];
const UNTYPED: &[&str] = &[
    "rope",
    "silu_mul",
    "add",
    "to_bf16",
    "attention_tiles",
    "paged_attention_reduce",
    "gather_last",
    "argmax",
    "sample",
];

/// Every kernel name the host launches.
pub fn kernel_names() -> Vec<String> {
    let mut v: Vec<String> = TYPED
        .iter()
        .flat_map(|k| [format!("{k}_f32"), format!("{k}_bf16")])
        .collect();
    v.extend(UNTYPED.iter().map(|k| k.to_string()));
    v
}

/// Query rows per prefill tile and keys per decode partition (the kernels' ABI).
const TILE_ROWS: usize = 16;
const TILE_KEYS: usize = 32;
const PARTITION_TOKENS: usize = 256;
/// Query heads per decode block: a KV head with more takes several blocks.
const DECODE_HEADS: usize = 8;
/// Largest batch the gemv kernel takes; larger ones go to the vendor GEMM.
const GEMV_MAX_TOKENS: usize = 8;

pub struct GpuKernels<R: Runtime> {
    rt: R,
    /// Scratch by purpose and size; kept for the device's life, because a
    /// captured CUDA/HIP graph may hold its address.
    scratch: Mutex<HashMap<(&'static str, usize), Buffer>>,
    /// Rope inverse frequencies by parameters.
    rope_tables: Mutex<HashMap<String, Buffer>>,
}

fn suffix(backend: &str, d: DType, what: &str) -> Result<&'static str> {
    match d {
        DType::F32 => Ok("f32"),
        DType::BF16 => Ok("bf16"),
        other => Err(Error::Unsupported {
            backend: backend.into(),
            what: format!("{other} {what}"),
        }),
    }
}

fn check(t: &Tensor, dtype: DType, what: &str) -> Result<()> {
    if t.dtype != dtype {
        return Err(Error::invalid(format!(
            "{what} must be {dtype}, got {}",
            t.dtype
        )));
    }
    Ok(())
}

fn check_shape(t: &Tensor, shape: &[usize], what: &str) -> Result<()> {
    if t.shape != shape {
        return Err(Error::invalid(format!(
            "{what} has shape {:?}, expected {shape:?}",
            t.shape
        )));
    }
    Ok(())
}

fn dims<const N: usize>(t: &Tensor, what: &str) -> Result<[usize; N]> {
    <[usize; N]>::try_from(t.shape.as_slice()).map_err(|_| {
        Error::invalid(format!(
            "{what} must have {N} dimensions, got {:?}",
            t.shape
        ))
    })
}

impl<R: Runtime> GpuKernels<R> {
    pub fn new(rt: R) -> Self {
        GpuKernels {
            rt,
            scratch: Mutex::new(HashMap::new()),
            rope_tables: Mutex::new(HashMap::new()),
        }
    }

    pub fn runtime(&self) -> &R {
        &self.rt
    }

    fn launch(&self, name: &str, cfg: Config, args: Args) -> Result<()> {
        self.rt.launch(name, cfg, args)
    }

    /// The device address of a tensor's first element.
    fn ptr(&self, t: &Tensor) -> Result<u64> {
        self.rt.address(&t.buffer, t.offset, t.nbytes())
    }

    /// A scratch buffer of at least `bytes` for `purpose`, made once per size.
    fn scratch(&self, purpose: &'static str, bytes: usize) -> Result<Buffer> {
        let mut map = self
            .scratch
            .lock()
            .map_err(|_| Error::invalid("kernel scratch lock poisoned"))?;
        if let Some(b) = map.get(&(purpose, bytes)) {
            return Ok(b.clone());
        }
        let b = self.rt.alloc(bytes)?;
        map.insert((purpose, bytes), b.clone());
        Ok(b)
    }

    fn scratch_ptr(&self, purpose: &'static str, bytes: usize) -> Result<u64> {
        let b = self.scratch(purpose, bytes)?;
        self.rt.address(&b, 0, bytes)
    }

    fn rope_table(&self, p: &RopeParams) -> Result<Buffer> {
        let key = format!("{}/{}/{:?}", p.head_dim, p.theta, p.scaling);
        let mut map = self
            .rope_tables
            .lock()
            .map_err(|_| Error::invalid("rope table lock poisoned"))?;
        if let Some(b) = map.get(&key) {
            return Ok(b.clone());
        }
        let bytes: Vec<u8> = p.inv_freq().iter().flat_map(|f| f.to_le_bytes()).collect();
        let b = self.rt.alloc(bytes.len())?;
        self.rt
            .upload(self.rt.address(&b, 0, bytes.len())?, &bytes)?;
        map.insert(key, b.clone());
        Ok(b)
    }

    fn to_bf16(&self, x: &Tensor) -> Result<u64> {
        let n = x.numel();
        let dst = self.scratch_ptr("gemm input", n * 2)?;
        self.launch(
            "to_bf16",
            Config::linear(n, 256)?,
            Args::new().ptr(self.ptr(x)?).ptr(dst).int(n)?,
        )?;
        Ok(dst)
    }
}

impl<R: Runtime> Kernels for GpuKernels<R> {
    fn backend(&self) -> &str {
        self.rt.name()
    }

    fn alloc(&self, bytes: usize) -> Result<Buffer> {
        self.rt.alloc(bytes)
    }

    fn native_optional_ops(&self) -> &'static [&'static str] {
        &["add_rms_norm", "sample", "lora_shrink", "lora_expand"]
    }

    fn embedding(&self, table: &Tensor, ids: &Tensor, out: &Tensor) -> Result<()> {
        let [v, h] = dims(table, "embedding table")?;
        let [t] = dims(ids, "token ids")?;
        check(ids, DType::I32, "token ids")?;
        check(out, DType::F32, "embedding output")?;
        check_shape(out, &[t, h], "embedding output")?;
        let name = format!(
            "embedding_{}",
            suffix(self.rt.name(), table.dtype, "embedding table")?
        );
        let args = Args::new()
            .ptr(self.ptr(table)?)
            .ptr(self.ptr(ids)?)
            .ptr(self.ptr(out)?)
            .int(t)?
            .int(h)?
            .int(v)?;
        self.launch(&name, Config::new((t, 1, 1), 256, 0)?, args)
    }

    fn linear(&self, x: &Tensor, w: &Tensor, bias: Option<&Tensor>, out: &Tensor) -> Result<()> {
        let [t, k] = dims(x, "linear input")?;
        let [n, k2] = dims(w, "linear weight")?;
        if k != k2 {
            return Err(Error::invalid(format!(
                "linear: input {:?} and weight {:?} disagree",
                x.shape, w.shape
            )));
        }
        check(x, DType::F32, "linear input")?;
        check(out, DType::F32, "linear output")?;
        check_shape(out, &[t, n], "linear output")?;
        let wsfx = suffix(self.rt.name(), w.dtype, "linear weight")?;
        let (wp, xp, op) = (self.ptr(w)?, self.ptr(x)?, self.ptr(out)?);
        if t == 0 || n == 0 {
            return Ok(());
        }
        // The gemv kernel streams weights with 16-byte loads.
        let aligned = wp % 16 == 0 && xp % 16 == 0 && k % 8 == 0;
        if t <= GEMV_MAX_TOKENS && aligned {
            let args = Args::new().ptr(wp).ptr(xp).ptr(op).int(t)?.int(n)?.int(k)?;
            self.launch(&format!("gemv_{wsfx}"), self.rt.gemv_config(n)?, args)?;
        } else {
            let xin = if w.dtype == DType::BF16 {
                self.to_bf16(x)?
            } else {
                xp
            };
            self.rt.matmul(w.dtype, (t, n, k), wp, xin, op)?;
        }
        if let Some(b) = bias {
            check_shape(b, &[n], "linear bias")?;
            let name = format!(
                "add_bias_{}",
                suffix(self.rt.name(), b.dtype, "linear bias")?
            );
            let args = Args::new().ptr(op).ptr(self.ptr(b)?).int(t)?.int(n)?;
            self.launch(&name, Config::linear(t * n, 256)?, args)?;
        }
        Ok(())
    }

    fn rms_norm(&self, x: &Tensor, w: &Tensor, eps: f32, out: &Tensor) -> Result<()> {
        let [t, h] = dims(x, "rms_norm input")?;
        check(x, DType::F32, "rms_norm input")?;
        check(out, DType::F32, "rms_norm output")?;
        check_shape(w, &[h], "rms_norm weight")?;
        check_shape(out, &[t, h], "rms_norm output")?;
        let name = format!(
            "rms_norm_{}",
            suffix(self.rt.name(), w.dtype, "rms_norm weight")?
        );
        let args = Args::new()
            .ptr(self.ptr(x)?)
            .ptr(self.ptr(w)?)
            .ptr(self.ptr(out)?)
            .int(t)?
            .int(h)?
            .f32(eps);
        self.launch(&name, Config::new((t, 1, 1), 256, 0)?, args)
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
        let [t, h] = dims(x, "add_rms_norm input")?;
        for (tensor, what) in [
            (x, "input"),
            (residual, "residual"),
            (out, "output"),
            (residual_out, "residual output"),
        ] {
            check(tensor, DType::F32, what)?;
            check_shape(tensor, &[t, h], what)?;
        }
        check_shape(w, &[h], "add_rms_norm weight")?;
        let name = format!(
            "add_rms_norm_{}",
            suffix(self.rt.name(), w.dtype, "rms_norm weight")?
        );
        let args = Args::new()
            .ptr(self.ptr(x)?)
            .ptr(self.ptr(residual)?)
            .ptr(self.ptr(w)?)
            .ptr(self.ptr(out)?)
            .ptr(self.ptr(residual_out)?)
            .int(t)?
            .int(h)?
            .f32(eps);
        self.launch(&name, Config::new((t, 1, 1), 256, 0)?, args)
    }

    fn rope(&self, x: &Tensor, positions: &Tensor, p: &RopeParams, out: &Tensor) -> Result<()> {
        let [t, heads, d] = dims(x, "rope input")?;
        check(x, DType::F32, "rope input")?;
        check(out, DType::F32, "rope output")?;
        check(positions, DType::I32, "positions")?;
        check_shape(positions, &[t], "positions")?;
        check_shape(out, &[t, heads, d], "rope output")?;
        if d != p.head_dim || d % 2 != 0 {
            return Err(Error::invalid(format!(
                "rope: head_dim {} for tensors of head size {d}",
                p.head_dim
            )));
        }
        let table = self.rope_table(p)?;
        let args = Args::new()
            .ptr(self.ptr(x)?)
            .ptr(self.ptr(positions)?)
            .ptr(self.rt.address(&table, 0, d / 2 * 4)?)
            .ptr(self.ptr(out)?)
            .int(t)?
            .int(heads)?
            .int(d)?
            .f32(p.position_scale())
            .i32(i32::from(p.style == RopeStyle::Interleaved));
        self.launch("rope", Config::new((t, 1, 1), 128, 0)?, args)
    }

    fn silu_mul(&self, gate: &Tensor, up: &Tensor, out: &Tensor) -> Result<()> {
        self.elementwise("silu_mul", gate, up, out)
    }

    fn add(&self, a: &Tensor, b: &Tensor, out: &Tensor) -> Result<()> {
        self.elementwise("add", a, b, out)
    }

    fn kv_write(&self, cache: &Tensor, new: &Tensor, slots: &Tensor) -> Result<()> {
        let [blocks, nkv, bs, d] = dims(cache, "KV cache")?;
        let [t, nkv2, d2] = dims(new, "new K/V")?;
        if (nkv2, d2) != (nkv, d) {
            return Err(Error::invalid(format!(
                "kv_write: new {:?} does not match cache {:?}",
                new.shape, cache.shape
            )));
        }
        check(new, DType::F32, "new K/V")?;
        check(slots, DType::I32, "slots")?;
        check_shape(slots, &[t], "slots")?;
        let name = format!(
            "kv_write_{}",
            suffix(self.rt.name(), cache.dtype, "KV cache")?
        );
        let args = Args::new()
            .ptr(self.ptr(cache)?)
            .ptr(self.ptr(new)?)
            .ptr(self.ptr(slots)?)
            .int(t)?
            .int(nkv)?
            .int(bs)?
            .int(d)?
            .int(blocks)?;
        self.launch(&name, Config::new((t, nkv, 1), 128, 0)?, args)
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
        let [t, n, d] = dims(q, "attention query")?;
        let [blocks, nkv, bs, d2] = dims(k_cache, "K cache")?;
        check(q, DType::F32, "attention query")?;
        check(out, DType::F32, "attention output")?;
        check_shape(out, &[t, n, d], "attention output")?;
        check_shape(v_cache, &k_cache.shape, "V cache")?;
        check(v_cache, k_cache.dtype, "V cache")?;
        if d2 != d || nkv == 0 || n % nkv != 0 {
            return Err(Error::invalid(format!(
                "paged_attention: q {:?} with cache {:?}",
                q.shape, k_cache.shape
            )));
        }
        let [s] = dims(batch.seq_lens, "seq_lens")?;
        let [s2, m] = dims(batch.block_tables, "block_tables")?;
        check_shape(batch.query_start_loc, &[s + 1], "query_start_loc")?;
        for (tensor, what) in [
            (batch.seq_lens, "seq_lens"),
            (batch.block_tables, "block_tables"),
            (batch.query_start_loc, "query_start_loc"),
        ] {
            check(tensor, DType::I32, what)?;
        }
        if s2 != s {
            return Err(Error::invalid(
                "block_tables must have one row per sequence",
            ));
        }
        let group = n / nkv;
        let kv = suffix(self.rt.name(), k_cache.dtype, "KV cache")?;
        // The kernels read dims in pairs; prefill tiles hold at most 256 dims
        // in registers, 16 at a time.
        if d % 2 != 0 || (t > s && (d % 16 != 0 || d > 256)) {
            return Err(Error::Unsupported {
                backend: self.rt.name().into(),
                what: format!("attention with head_dim {d} (multiples of 16 up to 256 are)"),
            });
        }
        if let Some(c) = p.softcap {
            if c <= 0.0 {
                return Err(Error::invalid(format!("softcap must be positive, got {c}")));
            }
        }
        let (qp, kp, vp, op) = (
            self.ptr(q)?,
            self.ptr(k_cache)?,
            self.ptr(v_cache)?,
            self.ptr(out)?,
        );
        let (qsl, lens, tables) = (
            self.ptr(batch.query_start_loc)?,
            self.ptr(batch.seq_lens)?,
            self.ptr(batch.block_tables)?,
        );
        let window = p.sliding_window.unwrap_or(0);
        let softcap = p.softcap.unwrap_or(0.0);
        let tail = |a: Args| -> Result<Args> {
            Ok(a.int(t)?
                .int(s)?
                .int(n)?
                .int(nkv)?
                .int(d)?
                .int(bs)?
                .int(m)?
                .int(blocks)?
                .f32(p.scale)
                .i32(i32::from(p.causal))
                .int(window)?
                .f32(softcap))
        };
        if t == 0 {
            return Ok(());
        }
        if t > s {
            // Some sequence has several query rows: FlashAttention-style tiles.
            let max_tiles = t.div_ceil(TILE_ROWS) + s;
            let tiles = self.scratch_ptr("attention tiles", max_tiles * 2 * 4)?;
            self.launch(
                "attention_tiles",
                Config::new((1, 1, 1), 32, 0)?,
                Args::new().ptr(qsl).int(s)?.ptr(tiles).int(max_tiles)?,
            )?;
            // Rows outside every tile (padding) stay zero.
            self.rt.memset_zero(op, out.nbytes())?;
            let shared = (TILE_ROWS * d + TILE_KEYS * d + TILE_ROWS * TILE_KEYS) * 4;
            let args = Args::new()
                .ptr(qp)
                .ptr(kp)
                .ptr(vp)
                .ptr(qsl)
                .ptr(lens)
                .ptr(tables)
                .ptr(tiles)
                .ptr(op);
            return self.launch(
                &format!("paged_attention_prefill_{kv}"),
                Config::new((max_tiles, n, 1), 128, shared)?,
                tail(args)?,
            );
        }
        // One query row per sequence (decode): split long contexts, and
        // groups of more than DECODE_HEADS query heads over several blocks.
        let heads = group.min(DECODE_HEADS);
        let head_blocks = group.div_ceil(DECODE_HEADS);
        let partitions = (m * bs).div_ceil(PARTITION_TOKENS).max(1);
        let (part_out, part_ml) = if partitions > 1 {
            (
                self.scratch_ptr("attention partials", t * n * partitions * d * 4)?,
                self.scratch_ptr("attention maxima", t * n * partitions * 2 * 4)?,
            )
        } else {
            (0, 0)
        };
        let shared = (heads * d + heads * PARTITION_TOKENS) * 4;
        let args = Args::new()
            .ptr(qp)
            .ptr(kp)
            .ptr(vp)
            .ptr(qsl)
            .ptr(lens)
            .ptr(tables)
            .ptr(op)
            .ptr(part_out)
            .ptr(part_ml);
        let args = tail(args)?.int(PARTITION_TOKENS)?.int(partitions)?;
        self.launch(
            &format!("paged_attention_decode_{kv}"),
            Config::new((t, nkv * head_blocks, partitions), 128, shared)?,
            args,
        )?;
        if partitions > 1 {
            let args = Args::new()
                .ptr(part_out)
                .ptr(part_ml)
                .ptr(op)
                .int(t)?
                .int(n)?
                .int(d)?
                .int(partitions)?;
            self.launch(
                "paged_attention_reduce",
                Config::new((t, n, 1), 128, 0)?,
                args,
            )?;
        }
        Ok(())
    }

    fn gather_last(&self, x: &Tensor, query_start_loc: &Tensor, out: &Tensor) -> Result<()> {
        let [_, h] = dims(x, "gather_last input")?;
        let [s1] = dims(query_start_loc, "query_start_loc")?;
        let s = s1.saturating_sub(1);
        check(x, DType::F32, "gather_last input")?;
        check(out, DType::F32, "gather_last output")?;
        check(query_start_loc, DType::I32, "query_start_loc")?;
        check_shape(out, &[s, h], "gather_last output")?;
        let args = Args::new()
            .ptr(self.ptr(x)?)
            .ptr(self.ptr(query_start_loc)?)
            .ptr(self.ptr(out)?)
            .int(s)?
            .int(h)?;
        self.launch("gather_last", Config::new((s, 1, 1), 256, 0)?, args)
    }

    fn argmax(&self, logits: &Tensor, out: &Tensor) -> Result<()> {
        let [s, v] = dims(logits, "logits")?;
        check(logits, DType::F32, "logits")?;
        check(out, DType::I32, "argmax output")?;
        check_shape(out, &[s], "argmax output")?;
        let args = Args::new()
            .ptr(self.ptr(logits)?)
            .ptr(self.ptr(out)?)
            .int(s)?
            .int(v)?;
        self.launch("argmax", Config::new((s, 1, 1), 512, 0)?, args)
    }

    fn sample(
        &self,
        logits: &Tensor,
        temperature: &Tensor,
        noise: &Tensor,
        out: &Tensor,
    ) -> Result<()> {
        let [s, v] = dims(logits, "logits")?;
        check(logits, DType::F32, "logits")?;
        check(temperature, DType::F32, "temperature")?;
        check(noise, DType::F32, "noise")?;
        check(out, DType::I32, "sample output")?;
        check_shape(temperature, &[s], "temperature")?;
        check_shape(noise, &[s, v], "noise")?;
        check_shape(out, &[s], "sample output")?;
        let args = Args::new()
            .ptr(self.ptr(logits)?)
            .ptr(self.ptr(temperature)?)
            .ptr(self.ptr(noise)?)
            .ptr(self.ptr(out)?)
            .int(s)?
            .int(v)?;
        self.launch("sample", Config::new((s, 1, 1), 512, 0)?, args)
    }

    fn lora_shrink(&self, x: &Tensor, a: &Tensor, idx: &Tensor, out: &Tensor) -> Result<()> {
        let [t, k] = dims(x, "lora_shrink input")?;
        let [l, r, k2] = dims(a, "lora_shrink stack")?;
        if k2 != k {
            return Err(Error::invalid(format!(
                "lora_shrink: input {:?} and stack {:?} disagree",
                x.shape, a.shape
            )));
        }
        check(x, DType::F32, "lora_shrink input")?;
        check(out, DType::F32, "lora_shrink output")?;
        check(idx, DType::I32, "adapter slots")?;
        check_shape(idx, &[t], "adapter slots")?;
        check_shape(out, &[t, r], "lora_shrink output")?;
        let name = format!(
            "lora_shrink_{}",
            suffix(self.rt.name(), a.dtype, "LoRA stack")?
        );
        let args = Args::new()
            .ptr(self.ptr(x)?)
            .ptr(self.ptr(a)?)
            .ptr(self.ptr(idx)?)
            .ptr(self.ptr(out)?)
            .int(t)?
            .int(r)?
            .int(k)?
            .int(l)?;
        self.launch(&name, Config::new((t, 1, 1), 128, 0)?, args)
    }

    fn lora_expand(
        &self,
        y: &Tensor,
        u: &Tensor,
        b: &Tensor,
        idx: &Tensor,
        out: &Tensor,
    ) -> Result<()> {
        let [t, n] = dims(y, "lora_expand input")?;
        let [l, n2, r] = dims(b, "lora_expand stack")?;
        if n2 != n {
            return Err(Error::invalid(format!(
                "lora_expand: input {:?} and stack {:?} disagree",
                y.shape, b.shape
            )));
        }
        for (tensor, what) in [
            (y, "lora_expand input"),
            (u, "lora_expand rank input"),
            (out, "lora_expand output"),
        ] {
            check(tensor, DType::F32, what)?;
        }
        check(idx, DType::I32, "adapter slots")?;
        check_shape(u, &[t, r], "lora_expand rank input")?;
        check_shape(idx, &[t], "adapter slots")?;
        check_shape(out, &[t, n], "lora_expand output")?;
        let name = format!(
            "lora_expand_{}",
            suffix(self.rt.name(), b.dtype, "LoRA stack")?
        );
        let args = Args::new()
            .ptr(self.ptr(y)?)
            .ptr(self.ptr(u)?)
            .ptr(self.ptr(b)?)
            .ptr(self.ptr(idx)?)
            .ptr(self.ptr(out)?)
            .int(t)?
            .int(n)?
            .int(r)?
            .int(l)?;
        self.launch(&name, Config::new((t, n.div_ceil(128), 1), 128, 0)?, args)
    }
}

impl<R: Runtime> GpuKernels<R> {
    /// `silu_mul` and `add`: f32 in, f32 out, same shapes.
    fn elementwise(&self, name: &str, a: &Tensor, b: &Tensor, out: &Tensor) -> Result<()> {
        for (t, what) in [(a, "first input"), (b, "second input"), (out, "output")] {
            check(t, DType::F32, &format!("{name} {what}"))?;
            check_shape(t, &a.shape, &format!("{name} {what}"))?;
        }
        let count = a.numel();
        let args = Args::new()
            .ptr(self.ptr(a)?)
            .ptr(self.ptr(b)?)
            .ptr(self.ptr(out)?)
            .int(count)?;
        self.launch(name, Config::linear(count, 256)?, args)
    }
}

/// The parameters (`p` pointer, `i` int, `f` float) the host passes to each
/// kernel, in order: the ABI `GpuKernels` builds its `Args` by, written out
/// once more by hand so that the backends' compile tests can check every
/// compiled kernel (PTX, AMDGPU metadata) against it.
pub fn host_abi() -> HashMap<String, String> {
    let attention = "iiiiiiiifiif";
    let mut abi: HashMap<String, String> = HashMap::new();
    for t in ["f32", "bf16"] {
        for (k, sig) in [
            ("embedding", "pppiii".to_string()),
            ("rms_norm", "pppiif".into()),
            ("add_rms_norm", "pppppiif".into()),
            ("add_bias", "ppii".into()),
            ("gemv", "pppiii".into()),
            ("kv_write", "pppiiiii".into()),
            ("paged_attention_prefill", format!("pppppppp{attention}")),
            ("paged_attention_decode", format!("ppppppppp{attention}ii")),
            ("lora_shrink", "ppppiiii".into()),
            ("lora_expand", "pppppiiii".into()),
        ] {
            abi.insert(format!("{k}_{t}"), sig);
        }
    }
    for (k, sig) in [
        ("rope", "ppppiiifi"),
        ("silu_mul", "pppi"),
        ("add", "pppi"),
        ("to_bf16", "ppi"),
        ("attention_tiles", "pipi"),
        ("paged_attention_reduce", "pppiiii"),
        ("gather_last", "pppii"),
        ("argmax", "ppii"),
        ("sample", "ppppii"),
    ] {
        abi.insert(k.into(), sig.into());
    }
    abi
}
