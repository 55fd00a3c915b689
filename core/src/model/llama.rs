//! The Llama-family forward pass (Llama 2/3, Mistral, Qwen2/2.5, SmolLM),
//! written once against the graph IR for one step of a ragged batch.

use super::config::ModelConfig;
use super::lora::Target;
use super::weights::names;
use crate::hal::{AttentionParams, Graph, RopeParams, RopeStyle, ValueId};
use crate::{DType, Result};

/// The shape of one step: the graph is static for each.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct StepShape {
    /// Tokens in the ragged batch (all sequences' new tokens, concatenated).
    pub num_tokens: usize,
    pub num_seqs: usize,
    /// Columns of the block table.
    pub max_blocks: usize,
    /// Logits for every token instead of each sequence's last (for tests).
    pub all_logits: bool,
}

/// How the model's tensors are typed on the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DTypes {
    pub weight: DType,
    pub activation: DType,
    pub kv: DType,
}

/// The KV cache geometry the graph reads and writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct KvShape {
    pub num_blocks: usize,
    pub block_size: usize,
}

impl KvShape {
    /// Shape of one layer's K (or V) cache: `[blocks, kv_heads, block_size, head_dim]`.
    pub fn layer_shape(&self, cfg: &ModelConfig) -> Vec<usize> {
        vec![
            self.num_blocks,
            cfg.num_kv_heads,
            self.block_size,
            cfg.head_dim,
        ]
    }
}

/// LoRA adapter slots compiled into the graph: `slots` adapters of rank up
/// to `rank`, on every projection (an adapter leaves its other targets zero).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LoraShape {
    pub slots: usize,
    pub rank: usize,
}

/// The stacked LoRA matrices of every layer and projection: `a [slots, rank,
/// in]` and `b [slots, out, rank]` (the adapter's scaling folded into `b`).
pub fn lora_specs(
    cfg: &ModelConfig,
    dt: DTypes,
    lora: LoraShape,
) -> Vec<(String, Vec<usize>, DType)> {
    let mut v = vec![];
    for l in 0..cfg.num_layers {
        for target in Target::ALL {
            let (input, output) = target.dims(cfg);
            v.push((
                lora_name(l, target, "a"),
                vec![lora.slots, lora.rank, input],
                dt.weight,
            ));
            v.push((
                lora_name(l, target, "b"),
                vec![lora.slots, output, lora.rank],
                dt.weight,
            ));
        }
    }
    v
}

/// `lora.{layer}.{module}.{a|b}`: the name a slot stack is bound by.
pub fn lora_name(layer: usize, target: Target, half: &str) -> String {
    format!("lora.{layer}.{}.{half}", target.module_name())
}

/// Every weight the graph binds, with the shape and dtype it must have on the device.
/// Norm weights stay f32: they are tiny and keep the normalisation exact.
pub fn weight_specs(cfg: &ModelConfig, dt: DTypes) -> Vec<(String, Vec<usize>, DType)> {
    let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
    let w = dt.weight;
    let mut v = vec![(names::EMBED.to_string(), vec![cfg.vocab_size, h], w)];
    for l in 0..cfg.num_layers {
        let mut add = |s: &str, shape: Vec<usize>, d: DType| v.push((names::layer(l, s), shape, d));
        add("input_layernorm.weight", vec![h], DType::F32);
        add("self_attn.q_proj.weight", vec![cfg.q_dim(), h], w);
        add("self_attn.k_proj.weight", vec![cfg.kv_dim(), h], w);
        add("self_attn.v_proj.weight", vec![cfg.kv_dim(), h], w);
        if cfg.qkv_bias {
            add("self_attn.q_proj.bias", vec![cfg.q_dim()], DType::F32);
            add("self_attn.k_proj.bias", vec![cfg.kv_dim()], DType::F32);
            add("self_attn.v_proj.bias", vec![cfg.kv_dim()], DType::F32);
        }
        add("self_attn.o_proj.weight", vec![h, cfg.q_dim()], w);
        add("post_attention_layernorm.weight", vec![h], DType::F32);
        add("mlp.gate_proj.weight", vec![i, h], w);
        add("mlp.up_proj.weight", vec![i, h], w);
        add("mlp.down_proj.weight", vec![h, i], w);
    }
    v.push((names::FINAL_NORM.to_string(), vec![h], DType::F32));
    if !cfg.tie_word_embeddings {
        v.push((names::LM_HEAD.to_string(), vec![cfg.vocab_size, h], w));
    }
    v
}

/// Builds one step's graph. Inputs, in order: `tokens [T]`, `positions [T]`,
/// `slots [T]`, `query_start_loc [S+1]`, `seq_lens [S]`, `block_tables [S,M]`
/// (all i32). State: `k_cache.{l}`, `v_cache.{l}` per layer. Output: f32-or-
/// activation-dtype logits `[S, vocab]` (or `[T, vocab]` with `all_logits`).
/// With `lora`, a seventh input `lora_slots [T]` picks each token's adapter
/// slot (negative: none) and every projection adds its slot's delta.
pub fn build_graph(
    cfg: &ModelConfig,
    shape: StepShape,
    dt: DTypes,
    kv: KvShape,
    lora: Option<LoraShape>,
) -> Result<Graph> {
    let mut g = Graph::new();
    let (t, s) = (shape.num_tokens, shape.num_seqs);
    let (nh, nkv, d) = (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim);
    let tokens = g.input("tokens", DType::I32, vec![t]);
    let positions = g.input("positions", DType::I32, vec![t]);
    let slots = g.input("slots", DType::I32, vec![t]);
    let qsl = g.input("query_start_loc", DType::I32, vec![s + 1]);
    let seq_lens = g.input("seq_lens", DType::I32, vec![s]);
    let block_tables = g.input("block_tables", DType::I32, vec![s, shape.max_blocks]);
    let lora_slots = lora.map(|_| g.input("lora_slots", DType::I32, vec![t]));

    let mut specs = weight_specs(cfg, dt);
    if let Some(shape) = lora {
        specs.extend(lora_specs(cfg, dt, shape));
    }
    let w = |g: &mut Graph, name: &str| -> ValueId {
        let (_, shape, dtype) = specs
            .iter()
            .find(|(n, _, _)| n == name)
            .cloned()
            .unwrap_or_else(|| {
                // Only reachable through a bug in this file: every name used below is in weight_specs.
                (name.to_string(), vec![0], DType::F32)
            });
        g.weight(name, dtype, shape)
    };
    let rope = RopeParams {
        style: RopeStyle::Neox,
        head_dim: d,
        theta: cfg.rope_theta,
        scaling: cfg.rope_scaling.clone(),
    };
    let attn = AttentionParams {
        scale: 1.0 / (d as f32).sqrt(),
        causal: true,
        sliding_window: cfg.sliding_window,
        softcap: None,
    };

    let embed = w(&mut g, names::EMBED);
    let mut x = g.embedding(embed, tokens, dt.activation);
    let mut residual: Option<ValueId> = None;
    for l in 0..cfg.num_layers {
        let lw = |g: &mut Graph, s: &str| w(g, &names::layer(l, s));
        let ln1 = lw(&mut g, "input_layernorm.weight");
        let hidden = match residual {
            None => {
                residual = Some(x);
                g.rms_norm(x, ln1, cfg.rms_norm_eps)
            }
            Some(r) => {
                let (n, r) = g.add_rms_norm(x, r, ln1, cfg.rms_norm_eps);
                residual = Some(r);
                n
            }
        };
        let bias = |g: &mut Graph, p: &str| {
            cfg.qkv_bias
                .then(|| w(g, &names::layer(l, &format!("self_attn.{p}_proj.bias"))))
        };
        let (wq, bq) = (lw(&mut g, "self_attn.q_proj.weight"), bias(&mut g, "q"));
        let (wk, bk) = (lw(&mut g, "self_attn.k_proj.weight"), bias(&mut g, "k"));
        let (wv, bv) = (lw(&mut g, "self_attn.v_proj.weight"), bias(&mut g, "v"));
        // A projection, plus its LoRA delta when slots are compiled in.
        let proj = |g: &mut Graph, x: ValueId, wt: ValueId, b: Option<ValueId>, target: Target| {
            let y = g.linear(x, wt, b);
            match lora_slots {
                None => y,
                Some(idx) => {
                    let a = w(g, &lora_name(l, target, "a"));
                    let bm = w(g, &lora_name(l, target, "b"));
                    let u = g.lora_shrink(x, a, idx);
                    g.lora_expand(y, u, bm, idx)
                }
            }
        };
        let q = proj(&mut g, hidden, wq, bq, Target::Q);
        let k = proj(&mut g, hidden, wk, bk, Target::K);
        let v = proj(&mut g, hidden, wv, bv, Target::V);
        let q = g.reshape(q, vec![t, nh, d]);
        let k = g.reshape(k, vec![t, nkv, d]);
        let v = g.reshape(v, vec![t, nkv, d]);
        let q = g.rope(q, positions, rope.clone());
        let k = g.rope(k, positions, rope.clone());

        let k_cache = g.state(&format!("k_cache.{l}"), dt.kv, kv.layer_shape(cfg));
        let v_cache = g.state(&format!("v_cache.{l}"), dt.kv, kv.layer_shape(cfg));
        let k_cache = g.kv_write(k_cache, k, slots);
        let v_cache = g.kv_write(v_cache, v, slots);
        let a = g.paged_attention(
            q,
            k_cache,
            v_cache,
            qsl,
            seq_lens,
            block_tables,
            attn.clone(),
        );
        let a = g.reshape(a, vec![t, nh * d]);
        let wo = lw(&mut g, "self_attn.o_proj.weight");
        let o = proj(&mut g, a, wo, None, Target::O);

        let ln2 = lw(&mut g, "post_attention_layernorm.weight");
        let r = residual.unwrap_or(o);
        let (hidden, r) = g.add_rms_norm(o, r, ln2, cfg.rms_norm_eps);
        residual = Some(r);
        let (wg, wu, wd) = (
            lw(&mut g, "mlp.gate_proj.weight"),
            lw(&mut g, "mlp.up_proj.weight"),
            lw(&mut g, "mlp.down_proj.weight"),
        );
        let gate = proj(&mut g, hidden, wg, None, Target::Gate);
        let up = proj(&mut g, hidden, wu, None, Target::Up);
        let m = g.silu_mul(gate, up);
        x = proj(&mut g, m, wd, None, Target::Down);
    }
    let norm = w(&mut g, names::FINAL_NORM);
    let hidden = match residual {
        Some(r) => g.add_rms_norm(x, r, norm, cfg.rms_norm_eps).0,
        None => g.rms_norm(x, norm, cfg.rms_norm_eps),
    };
    let hidden = if shape.all_logits {
        hidden
    } else {
        g.gather_last(hidden, qsl)
    };
    let head = if cfg.tie_word_embeddings {
        embed
    } else {
        w(&mut g, names::LM_HEAD)
    };
    let logits = g.linear(hidden, head, None);
    g.output(logits);
    g.finish()
}
