//! Serves the tensors of a GGUF file under Hugging Face names and in Hugging
//! Face layout, and builds a `ModelConfig` from GGUF metadata.
//!
//! llama.cpp's converter permutes the rows of q_proj/k_proj (weights and
//! biases) of `llama` models so that its interleaved ("normal") RoPE matches
//! HF's rotate-half RoPE. This module undoes that permutation, so the rest of
//! tessera sees exactly the tensors of the original HF checkpoint.

use super::config::{ModelConfig, RopeScaling};
use super::gguf::GgufFile;
use super::weights::WeightSource;
use crate::{DType, Error, HostData, HostTensor, Result};
use std::path::Path;

/// Architectures (`general.architecture`) tessera can run from GGUF.
pub const SUPPORTED_ARCHITECTURES: [&str; 3] = ["llama", "mistral", "qwen2"];

/// Whether llama.cpp's converter permuted q/k rows for `arch`.
fn qk_permuted(arch: &str) -> bool {
    matches!(arch, "llama" | "mistral")
}

/// The GGUF name of the tensor HF calls `hf`, when there is one.
pub fn gguf_name(hf: &str) -> Option<String> {
    match hf {
        "model.embed_tokens.weight" => return Some("token_embd.weight".into()),
        "model.norm.weight" => return Some("output_norm.weight".into()),
        "lm_head.weight" => return Some("output.weight".into()),
        _ => {}
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (idx, suffix) = rest.split_once('.')?;
    if idx.is_empty()
        || !idx.bytes().all(|b| b.is_ascii_digit())
        || (idx.len() > 1 && idx.starts_with('0'))
    {
        return None;
    }
    let (module, kind) = suffix.rsplit_once('.')?;
    if kind != "weight" && kind != "bias" {
        return None;
    }
    let g = match module {
        "input_layernorm" => "attn_norm",
        "post_attention_layernorm" => "ffn_norm",
        "self_attn.q_proj" => "attn_q",
        "self_attn.k_proj" => "attn_k",
        "self_attn.v_proj" => "attn_v",
        "self_attn.o_proj" => "attn_output",
        "mlp.gate_proj" => "ffn_gate",
        "mlp.up_proj" => "ffn_up",
        "mlp.down_proj" => "ffn_down",
        _ => return None,
    };
    Some(format!("blk.{idx}.{g}.{kind}"))
}

/// The weights of a GGUF file, as a `WeightSource`.
pub struct GgufWeights {
    file: GgufFile,
    /// Undo llama.cpp's q/k row permutation (llama, mistral).
    permute_qk: bool,
    n_head: usize,
    n_head_kv: usize,
}

impl GgufWeights {
    pub fn open(path: &Path) -> Result<Self> {
        Self::new(GgufFile::open(path)?)
    }

    pub fn new(file: GgufFile) -> Result<Self> {
        let bad = |m: String| Error::model(file.path.display(), m);
        let arch = file
            .architecture()
            .ok_or_else(|| bad("GGUF metadata has no general.architecture".into()))?
            .to_string();
        let (n_head, n_head_kv) = if qk_permuted(&arch) {
            let h = meta_usize(&file, &format!("{arch}.attention.head_count"))?
                .ok_or_else(|| bad(format!("GGUF metadata has no {arch}.attention.head_count")))?;
            let kv = meta_usize(&file, &format!("{arch}.attention.head_count_kv"))?.unwrap_or(h);
            if h == 0 || kv == 0 {
                return Err(bad(format!(
                    "head counts must be positive (heads {h}, kv heads {kv})"
                )));
            }
            (h, kv)
        } else {
            (0, 0)
        };
        Ok(GgufWeights {
            permute_qk: qk_permuted(&arch),
            file,
            n_head,
            n_head_kv,
        })
    }

    pub fn file(&self) -> &GgufFile {
        &self.file
    }

    /// The model's configuration (see `config_from_gguf`).
    pub fn config(&self) -> Result<ModelConfig> {
        config_from_gguf(&self.file)
    }

    fn err(&self, m: String) -> Error {
        Error::model(self.file.path.display(), m)
    }

    /// Loads tensor `hf` (HF name) as f32 in HF layout.
    pub fn load_f32(&self, hf: &str) -> Result<HostTensor> {
        let gname =
            gguf_name(hf).ok_or_else(|| self.err(format!("no GGUF tensor corresponds to {hf}")))?;
        let info = self
            .file
            .tensor(&gname)
            .ok_or_else(|| self.err(format!("tensor {hf} (GGUF {gname}) is not in the file")))?;
        let mut data = self.file.dequantize(info)?;
        let shape = info.shape.clone();
        if self.permute_qk {
            let heads = if gname.ends_with(".attn_q.weight") || gname.ends_with(".attn_q.bias") {
                Some(self.n_head)
            } else if gname.ends_with(".attn_k.weight") || gname.ends_with(".attn_k.bias") {
                Some(self.n_head_kv)
            } else {
                None
            };
            if let Some(n_head) = heads {
                data = unpermute_rows(&data, &shape, n_head)
                    .map_err(|m| self.err(format!("tensor {gname}: {m}")))?;
            }
        }
        Ok(HostTensor::f32(shape, data))
    }
}

impl WeightSource for GgufWeights {
    fn describe(&self) -> String {
        format!(
            "GGUF v{} {} ({} tensors, {})",
            self.file.version,
            self.file.path.display(),
            self.file.tensors.len(),
            self.file.architecture().unwrap_or("?")
        )
    }

    fn contains(&self, name: &str) -> bool {
        gguf_name(name).is_some_and(|g| self.file.tensor(&g).is_some())
    }

    fn load(&self, name: &str, dtype: DType) -> Result<HostTensor> {
        let t = self.load_f32(name)?;
        // Narrow in one pass (the same round-to-nearest-even as `HostTensor::to_dtype`).
        let data = match (&t.data, dtype) {
            (HostData::F32(v), DType::BF16) => {
                HostData::BF16(v.iter().map(|&x| half::bf16::from_f32(x)).collect())
            }
            (HostData::F32(v), DType::F16) => {
                HostData::F16(v.iter().map(|&x| half::f16::from_f32(x)).collect())
            }
            _ => return t.to_dtype(dtype),
        };
        Ok(HostTensor {
            shape: t.shape,
            data,
        })
    }
}

/// Inverts convert_hf_to_gguf's `permute`:
/// `w.reshape(n_head, 2, hd/2, *rest).swapaxes(1, 2).reshape(w.shape)`,
/// which sends HF row `h*hd + s*hd/2 + j` to GGUF row `h*hd + 2*j + s`.
pub fn unpermute_rows(data: &[f32], shape: &[usize], n_head: usize) -> Result<Vec<f32>, String> {
    move_rows(data, shape, n_head, false)
}

/// The inverse of `unpermute_rows`: what llama.cpp's converter does.
pub fn permute_rows(data: &[f32], shape: &[usize], n_head: usize) -> Result<Vec<f32>, String> {
    move_rows(data, shape, n_head, true)
}

/// Moves each head's rows between the HF order (halves) and llama.cpp's (pairs).
fn move_rows(
    data: &[f32],
    shape: &[usize],
    n_head: usize,
    to_gguf: bool,
) -> Result<Vec<f32>, String> {
    let rows = *shape.first().ok_or("tensor has no dimensions")?;
    let cols: usize = shape[1..].iter().product();
    if n_head == 0 || !rows.is_multiple_of(n_head) || !(rows / n_head).is_multiple_of(2) {
        return Err(format!(
            "{rows} rows do not split into {n_head} heads of an even size"
        ));
    }
    if rows.checked_mul(cols) != Some(data.len()) {
        return Err(format!("{} values do not fill shape {shape:?}", data.len()));
    }
    let hd = rows / n_head;
    let half = hd / 2;
    let mut out = vec![0f32; data.len()];
    for h in 0..n_head {
        for s in 0..2 {
            for j in 0..half {
                let hf = (h * hd + s * half + j) * cols;
                let gguf = (h * hd + 2 * j + s) * cols;
                let (dst, src) = if to_gguf { (gguf, hf) } else { (hf, gguf) };
                out[dst..dst + cols].copy_from_slice(&data[src..src + cols]);
            }
        }
    }
    Ok(out)
}

/// An integer key as usize; `Ok(None)` when absent, an error when present but not a usable integer.
fn meta_usize(file: &GgufFile, key: &str) -> Result<Option<usize>> {
    match file.meta(key) {
        None => Ok(None),
        Some(v) => v
            .as_u64()
            .and_then(|x| usize::try_from(x).ok())
            .map(Some)
            .ok_or_else(|| {
                Error::model(
                    file.path.display(),
                    format!("metadata {key} is {v:?}, not a non-negative integer"),
                )
            }),
    }
}

fn meta_f32(file: &GgufFile, key: &str) -> Result<Option<f32>> {
    match file.meta(key) {
        None => Ok(None),
        Some(v) => v.as_f64().map(|x| Some(x as f32)).ok_or_else(|| {
            Error::model(
                file.path.display(),
                format!("metadata {key} is {v:?}, not a float"),
            )
        }),
    }
}

fn meta_u32(file: &GgufFile, key: &str) -> Result<Option<u32>> {
    match meta_usize(file, key)? {
        None => Ok(None),
        Some(x) => u32::try_from(x).map(Some).map_err(|_| {
            Error::model(
                file.path.display(),
                format!("metadata {key} = {x} is too large for a token id"),
            )
        }),
    }
}

/// The `ModelConfig` of a GGUF file, from its metadata and tensor table.
pub fn config_from_gguf(file: &GgufFile) -> Result<ModelConfig> {
    let bad = |m: String| Error::model(file.path.display(), m);
    let arch = file
        .architecture()
        .ok_or_else(|| bad("GGUF metadata has no general.architecture".into()))?;
    if !SUPPORTED_ARCHITECTURES.contains(&arch) {
        return Err(bad(format!(
            "GGUF architecture {arch:?} is not supported (tessera runs {} GGUF files)",
            SUPPORTED_ARCHITECTURES.join(", ")
        )));
    }
    let key = |s: &str| format!("{arch}.{s}");
    let required = |s: &str| -> Result<usize> {
        meta_usize(file, &key(s))?.ok_or_else(|| bad(format!("GGUF metadata has no {}", key(s))))
    };

    let num_layers = required("block_count")?;
    let hidden_size = required("embedding_length")?;
    let intermediate_size = required("feed_forward_length")?;
    let num_heads = required("attention.head_count")?;
    let num_kv_heads = meta_usize(file, &key("attention.head_count_kv"))?.unwrap_or(num_heads);
    let head_dim = match meta_usize(file, &key("attention.key_length"))? {
        Some(d) => d,
        None if num_heads > 0 && hidden_size % num_heads == 0 => hidden_size / num_heads,
        None => {
            return Err(bad(format!(
                "embedding_length {hidden_size} is not a multiple of head_count {num_heads}"
            )));
        }
    };
    if let Some(v) = meta_usize(file, &key("attention.value_length"))? {
        if v != head_dim {
            return Err(bad(format!(
                "value_length {v} differs from key_length {head_dim}; tessera needs them equal"
            )));
        }
    }
    if let Some(r) = meta_usize(file, &key("rope.dimension_count"))? {
        if r != head_dim {
            return Err(bad(format!(
                "rope.dimension_count {r} differs from head_dim {head_dim}; partial rotary embeddings are not supported"
            )));
        }
    }
    let rms_norm_eps =
        meta_f32(file, &key("attention.layer_norm_rms_epsilon"))?.ok_or_else(|| {
            bad(format!(
                "GGUF metadata has no {}",
                key("attention.layer_norm_rms_epsilon")
            ))
        })?;
    let rope_theta = meta_f32(file, &key("rope.freq_base"))?.unwrap_or(10000.0);
    let max_position_embeddings = meta_usize(file, &key("context_length"))?.unwrap_or(4096);

    let mut rope_scaling = match file.meta_str(&key("rope.scaling.type")) {
        None | Some("none") => match meta_f32(file, &key("rope.scale_linear"))? {
            Some(f) if f != 1.0 => RopeScaling::Linear { factor: f },
            _ => RopeScaling::None,
        },
        Some("linear") => {
            let factor = meta_f32(file, &key("rope.scaling.factor"))?.ok_or_else(|| {
                bad(format!(
                    "linear rope scaling without {}",
                    key("rope.scaling.factor")
                ))
            })?;
            RopeScaling::Linear { factor }
        }
        Some(other) => {
            return Err(bad(format!(
                "rope scaling type {other:?} is not supported (supported: none, linear)"
            )));
        }
    };
    if let Some(info) = file.tensor("rope_freqs.weight") {
        if rope_scaling != RopeScaling::None {
            return Err(bad(
                "both rope_freqs.weight and a rope.scaling type; cannot tell which applies".into(),
            ));
        }
        let factors = file.dequantize(info)?;
        rope_scaling = llama3_from_rope_freqs(&factors, rope_theta, head_dim).map_err(bad)?;
    }

    let vocab_size = if let Some(t) = file.tensor("token_embd.weight") {
        match t.shape.as_slice() {
            [v, h] if *h == hidden_size => *v,
            s => {
                return Err(bad(format!(
                    "token_embd.weight has shape {s:?}, expected [vocab, {hidden_size}]"
                )))
            }
        }
    } else if let Some(toks) = file.meta_array("tokenizer.ggml.tokens") {
        toks.len()
    } else {
        meta_usize(file, &key("vocab_size"))?
            .ok_or_else(|| bad("cannot tell the vocabulary size".into()))?
    };

    let mut eos_token_ids = vec![];
    for k in ["tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id"] {
        if let Some(id) = meta_u32(file, k)? {
            if !eos_token_ids.contains(&id) {
                eos_token_ids.push(id);
            }
        }
    }
    let sliding_window = meta_usize(file, &key("attention.sliding_window"))?.filter(|&w| w > 0);

    let cfg = ModelConfig {
        architecture: arch.to_string(),
        vocab_size,
        hidden_size,
        intermediate_size,
        num_layers,
        num_heads,
        num_kv_heads,
        head_dim,
        rms_norm_eps,
        rope_theta,
        rope_scaling,
        max_position_embeddings,
        tie_word_embeddings: file.tensor("output.weight").is_none(),
        qkv_bias: file.tensor("blk.0.attn_q.bias").is_some(),
        sliding_window,
        bos_token_id: meta_u32(file, "tokenizer.ggml.bos_token_id")?,
        eos_token_ids,
        stored_dtype: None,
    };
    cfg.validate().map_err(|e| match e {
        Error::Model { message, .. } => bad(message),
        other => other,
    })?;
    Ok(cfg)
}

/// llama.cpp stores Llama 3.1-style rope scaling only as the per-frequency
/// divisors `rope_freqs.weight` that its converter computed. The parameters
/// are recovered by finding the (factor, low/high frequency factors, original
/// context) among the values Meta's and others' models use that reproduce the
/// stored divisors; anything else is refused rather than guessed.
fn llama3_from_rope_freqs(
    factors: &[f32],
    theta: f32,
    head_dim: usize,
) -> Result<RopeScaling, String> {
    if factors.len() != head_dim / 2 {
        return Err(format!(
            "rope_freqs.weight has {} values, expected head_dim/2 = {}",
            factors.len(),
            head_dim / 2
        ));
    }
    if factors.iter().any(|f| !f.is_finite() || *f <= 0.0) {
        return Err("rope_freqs.weight holds non-positive or non-finite values".into());
    }
    if factors.iter().all(|&f| f == 1.0) {
        return Ok(RopeScaling::None);
    }
    let factor = factors.iter().copied().fold(1.0f32, f32::max) as f64;
    let expected = |low: f64, high: f64, orig: f64| -> Vec<f64> {
        let low_wavelen = orig / low;
        let high_wavelen = orig / high;
        (0..head_dim / 2)
            .map(|i| {
                let freq = 1.0 / (theta as f64).powf((2 * i) as f64 / head_dim as f64);
                let wavelen = 2.0 * std::f64::consts::PI / freq;
                if wavelen < high_wavelen {
                    1.0
                } else if wavelen > low_wavelen {
                    factor
                } else {
                    let smooth = (orig / wavelen - low) / (high - low);
                    1.0 / ((1.0 - smooth) / factor + smooth)
                }
            })
            .collect()
    };
    for orig in [8192.0, 4096.0, 2048.0, 16384.0, 32768.0, 65536.0, 131072.0] {
        for (low, high) in [(1.0, 4.0), (1.0, 2.0), (1.0, 8.0), (2.0, 4.0), (0.5, 4.0)] {
            let e = expected(low, high, orig);
            let fits = e
                .iter()
                .zip(factors)
                .all(|(&e, &f)| ((f as f64) - e).abs() <= 1e-3 * e.max(1.0));
            if fits {
                return Ok(RopeScaling::Llama3 {
                    factor: factor as f32,
                    low_freq_factor: low as f32,
                    high_freq_factor: high as f32,
                    original_max_position_embeddings: orig as usize,
                });
            }
        }
    }
    Err(
        "rope_freqs.weight does not match Llama 3 rope scaling with any usual parameters; \
         this GGUF rope scaling is not supported yet"
            .into(),
    )
}

#[cfg(test)]
mod tests {
    use super::super::gguf::testutil::build;
    use super::super::gguf::{GgmlType, MetaValue};
    use super::*;

    fn f32_bytes(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    #[test]
    fn maps_names() {
        assert_eq!(
            gguf_name("model.embed_tokens.weight").as_deref(),
            Some("token_embd.weight")
        );
        assert_eq!(
            gguf_name("lm_head.weight").as_deref(),
            Some("output.weight")
        );
        assert_eq!(
            gguf_name("model.layers.12.self_attn.o_proj.weight").as_deref(),
            Some("blk.12.attn_output.weight")
        );
        assert_eq!(
            gguf_name("model.layers.0.self_attn.k_proj.bias").as_deref(),
            Some("blk.0.attn_k.bias")
        );
        assert_eq!(
            gguf_name("model.layers.3.mlp.down_proj.weight").as_deref(),
            Some("blk.3.ffn_down.weight")
        );
        assert_eq!(
            gguf_name("model.layers.3.post_attention_layernorm.weight").as_deref(),
            Some("blk.3.ffn_norm.weight")
        );
        assert_eq!(gguf_name("model.layers.+3.mlp.down_proj.weight"), None);
        assert_eq!(gguf_name("model.layers.03.mlp.down_proj.weight"), None);
        assert_eq!(gguf_name("model.layers.3.mlp.down_proj.scale"), None);
        assert_eq!(gguf_name("model.rotary_emb.inv_freq"), None);
    }

    #[test]
    fn unpermute_inverts_the_converter() {
        // n_head 2, head_dim 4, 3 columns: HF rows 0..8 hold values row*10 + col.
        let shape = [8usize, 3];
        let hf: Vec<f32> = (0..8)
            .flat_map(|r| (0..3).map(move |c| (r * 10 + c) as f32))
            .collect();
        let g = permute_rows(&hf, &shape, 2).unwrap();
        // Within a head, GGUF order is rows [0, 2, 1, 3] of HF (pairs (j, j + hd/2) interleaved).
        let rows: Vec<f32> = g.chunks(3).map(|r| r[0] / 10.0).collect();
        assert_eq!(rows, vec![0., 2., 1., 3., 4., 6., 5., 7.]);
        assert_eq!(unpermute_rows(&g, &shape, 2).unwrap(), hf);
        let b: Vec<f32> = (0..12).map(|x| x as f32).collect();
        assert_eq!(
            unpermute_rows(&permute_rows(&b, &[12], 2).unwrap(), &[12], 2).unwrap(),
            b
        );
        assert!(unpermute_rows(&b, &[12], 5).is_err());
        assert!(unpermute_rows(&b, &[12], 4).is_err()); // odd head_dim 3
    }

    fn tiny(arch: &str, extra_tensors: bool) -> GgufFile {
        let s = |x: &str| MetaValue::String(x.into());
        let k = |x: &str| format!("{arch}.{x}");
        let keys = [
            k("block_count"),
            k("embedding_length"),
            k("feed_forward_length"),
            k("attention.head_count"),
            k("attention.head_count_kv"),
            k("attention.layer_norm_rms_epsilon"),
            k("context_length"),
        ];
        let meta = vec![
            ("general.architecture", s(arch)),
            (keys[0].as_str(), MetaValue::U32(1)),
            (keys[1].as_str(), MetaValue::U32(8)),
            (keys[2].as_str(), MetaValue::U32(16)),
            (keys[3].as_str(), MetaValue::U32(2)),
            (keys[4].as_str(), MetaValue::U32(1)),
            (keys[5].as_str(), MetaValue::F32(1e-5)),
            (keys[6].as_str(), MetaValue::U64(2048)),
            ("tokenizer.ggml.bos_token_id", MetaValue::U32(1)),
            ("tokenizer.ggml.eos_token_id", MetaValue::U32(2)),
            ("tokenizer.ggml.eot_token_id", MetaValue::U32(3)),
        ];
        let q: Vec<f32> = (0..64).map(|x| x as f32).collect();
        let kk: Vec<f32> = (0..32).map(|x| x as f32).collect();
        let mut tensors = vec![
            (
                "token_embd.weight",
                vec![8, 10],
                GgmlType::F32,
                f32_bytes(&[0.5; 80]),
            ),
            (
                "blk.0.attn_q.weight",
                vec![8, 8],
                GgmlType::F32,
                f32_bytes(&q),
            ),
            (
                "blk.0.attn_k.weight",
                vec![8, 4],
                GgmlType::F32,
                f32_bytes(&kk),
            ),
            (
                "blk.0.attn_q.bias",
                vec![8],
                GgmlType::F32,
                f32_bytes(&q[..8]),
            ),
        ];
        if extra_tensors {
            tensors.push((
                "output.weight",
                vec![8, 10],
                GgmlType::F32,
                f32_bytes(&[1.0; 80]),
            ));
        }
        GgufFile::from_bytes("tiny.gguf", build(&meta, &tensors)).unwrap()
    }

    #[test]
    fn config_from_metadata() {
        let c = config_from_gguf(&tiny("llama", false)).unwrap();
        assert_eq!(
            (c.num_layers, c.hidden_size, c.intermediate_size),
            (1, 8, 16)
        );
        assert_eq!(
            (c.num_heads, c.num_kv_heads, c.head_dim, c.vocab_size),
            (2, 1, 4, 10)
        );
        assert_eq!(c.rope_theta, 10000.0);
        assert_eq!(c.max_position_embeddings, 2048);
        assert!(c.tie_word_embeddings && c.qkv_bias);
        assert_eq!(c.bos_token_id, Some(1));
        assert_eq!(c.eos_token_ids, vec![2, 3]);
        assert_eq!(c.rope_scaling, RopeScaling::None);
        let c = config_from_gguf(&tiny("qwen2", true)).unwrap();
        assert!(!c.tie_word_embeddings);
        let e = config_from_gguf(&tiny("gemma", true))
            .unwrap_err()
            .to_string();
        assert!(e.contains("gemma"), "{e}");
    }

    #[test]
    fn serves_hf_names_and_unpermutes_llama_only() {
        let w = GgufWeights::new(tiny("llama", false)).unwrap();
        assert!(w.contains("model.embed_tokens.weight"));
        assert!(!w.contains("lm_head.weight"));
        assert!(!w.contains("model.layers.0.self_attn.v_proj.weight"));
        let e = w.load_f32("model.embed_tokens.weight").unwrap();
        assert_eq!(e.shape, vec![10, 8]);
        let q = w
            .load_f32("model.layers.0.self_attn.q_proj.weight")
            .unwrap();
        assert_eq!(q.shape, vec![8, 8]);
        let raw: Vec<f32> = (0..64).map(|x| x as f32).collect();
        assert_eq!(q.to_f32_vec(), unpermute_rows(&raw, &[8, 8], 2).unwrap());
        let k = w
            .load_f32("model.layers.0.self_attn.k_proj.weight")
            .unwrap();
        assert_eq!(k.shape, vec![4, 8]);
        let rows: Vec<f32> = k.to_f32_vec().chunks(8).map(|r| r[0] / 8.0).collect();
        assert_eq!(rows, vec![0., 2., 1., 3.]); // one kv head of 4 rows
        let b = w
            .load("model.layers.0.self_attn.q_proj.bias", DType::BF16)
            .unwrap();
        assert_eq!(b.dtype(), DType::BF16);
        assert_eq!(b.to_f32_vec(), unpermute_rows(&raw[..8], &[8], 2).unwrap());
        assert!(w.load("lm_head.weight", DType::F32).is_err());

        let w = GgufWeights::new(tiny("qwen2", true)).unwrap();
        assert!(w.contains("lm_head.weight"));
        let q = w
            .load_f32("model.layers.0.self_attn.q_proj.weight")
            .unwrap();
        assert_eq!(q.to_f32_vec(), raw);
    }

    #[test]
    fn recovers_llama3_rope_scaling() {
        // Llama 3.1's parameters, computed in f32 as the converter does.
        let (theta, hd, factor, low, high, orig) = (500000f32, 128usize, 8f32, 1f32, 4f32, 8192f32);
        let f: Vec<f32> = (0..hd / 2)
            .map(|i| {
                let freq = 1.0 / theta.powf((2 * i) as f32 / hd as f32);
                let wl = 2.0 * std::f32::consts::PI / freq;
                if wl < orig / high {
                    1.0
                } else if wl > orig / low {
                    factor
                } else {
                    let s = (orig / wl - low) / (high - low);
                    1.0 / ((1.0 - s) / factor + s)
                }
            })
            .collect();
        let r = llama3_from_rope_freqs(&f, theta, hd).unwrap();
        assert_eq!(
            r,
            RopeScaling::Llama3 {
                factor: 8.0,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_max_position_embeddings: 8192
            }
        );
        let mut g = f.clone();
        g[40] *= 1.5;
        assert!(llama3_from_rope_freqs(&g, theta, hd).is_err());
    }

    /// The default model, when it is on disk: `TESSERA_DEFAULT_MODEL` or the cache path.
    fn default_model() -> Option<std::path::PathBuf> {
        let p = std::env::var_os("TESSERA_DEFAULT_MODEL")
            .map(std::path::PathBuf::from)
            .or_else(|| {
                std::env::var_os("HOME").map(|h| {
                    std::path::PathBuf::from(h)
                        .join(".cache/tessera/models/SmolLM2-135M-Instruct.Q4_1.gguf")
                })
            })?;
        if p.is_file() {
            Some(p)
        } else {
            eprintln!("skipping: default model {} is not on disk", p.display());
            None
        }
    }

    #[test]
    fn default_model_config_and_every_tensor() {
        let Some(path) = default_model() else { return };
        let w = GgufWeights::open(&path).unwrap();
        let c = w.config().unwrap();
        assert_eq!(c.architecture, "llama");
        assert_eq!(
            (c.num_layers, c.hidden_size, c.intermediate_size),
            (30, 576, 1536)
        );
        assert_eq!((c.num_heads, c.num_kv_heads, c.head_dim), (9, 3, 64));
        assert_eq!(c.vocab_size, 49152);
        assert!(c.tie_word_embeddings && !c.qkv_bias);
        assert_eq!(c.rope_theta, 100000.0);
        assert_eq!(c.rms_norm_eps, 1e-5);
        assert_eq!(c.max_position_embeddings, 8192);
        assert_eq!(c.rope_scaling, RopeScaling::None);
        assert_eq!(c.bos_token_id, Some(1));
        assert_eq!(c.eos_token_ids, vec![2]);

        let (h, i, q, kv) = (c.hidden_size, c.intermediate_size, c.q_dim(), c.kv_dim());
        let mut names: Vec<(String, Vec<usize>)> = vec![
            ("model.embed_tokens.weight".into(), vec![c.vocab_size, h]),
            ("model.norm.weight".into(), vec![h]),
        ];
        for l in 0..c.num_layers {
            let n = |s: &str| format!("model.layers.{l}.{s}");
            names.extend([
                (n("input_layernorm.weight"), vec![h]),
                (n("post_attention_layernorm.weight"), vec![h]),
                (n("self_attn.q_proj.weight"), vec![q, h]),
                (n("self_attn.k_proj.weight"), vec![kv, h]),
                (n("self_attn.v_proj.weight"), vec![kv, h]),
                (n("self_attn.o_proj.weight"), vec![h, q]),
                (n("mlp.gate_proj.weight"), vec![i, h]),
                (n("mlp.up_proj.weight"), vec![i, h]),
                (n("mlp.down_proj.weight"), vec![h, i]),
            ]);
        }
        assert_eq!(
            names.len(),
            w.file().tensors.len(),
            "every GGUF tensor has an HF name"
        );
        let t0 = std::time::Instant::now();
        let mut total = 0usize;
        for (n, shape) in &names {
            assert!(w.contains(n), "{n}");
            let t = w.load(n, DType::F32).unwrap();
            assert_eq!(&t.shape, shape, "{n}");
            let v = t.to_f32_vec();
            assert!(v.iter().all(|x| x.is_finite()), "{n} has non-finite values");
            assert!(v.iter().any(|&x| x != 0.0), "{n} is all zeros");
            total += v.len();
        }
        eprintln!("dequantized {total} weights in {:?}", t0.elapsed());
        assert_eq!(total, c.num_params());
        assert!(!w.contains("lm_head.weight"));
        let bf = w
            .load("model.layers.0.mlp.up_proj.weight", DType::BF16)
            .unwrap();
        assert_eq!(bf.dtype(), DType::BF16);
    }
}
