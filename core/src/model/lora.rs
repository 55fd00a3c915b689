//! LoRA adapters in the PEFT layout: a folder with `adapter_config.json` and
//! `adapter_model.safetensors`, as `PeftModel.save_pretrained` writes it.
//!
//! Only plain LoRA on the seven Llama-family projections is accepted; every PEFT
//! option that would change what `W x + scaling · B (A x)` computes (DoRA, biases,
//! per-module ranks, fan-in/fan-out layouts, extra saved modules, layer subsets) is
//! refused with a message that says so, rather than silently ignored. Weights in
//! f32, bf16 or f16 are widened to f32.

use crate::model::config::ModelConfig;
use crate::model::random::splitmix64;
use crate::{DType, Error, HostTensor, Result};
use safetensors::tensor::{Dtype as StDtype, SafeTensors};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// File names inside an adapter folder.
pub const CONFIG_FILE: &str = "adapter_config.json";
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";

/// Every tensor name starts with this (PEFT's `PeftModelForCausalLM` wrapping a
/// `*ForCausalLM` whose decoder is `model`).
const NAME_PREFIX: &str = "base_model.model.model.layers.";

/// A projection LoRA can target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Target {
    Q,
    K,
    V,
    O,
    Gate,
    Up,
    Down,
}

impl Target {
    pub const ALL: [Target; 7] = [
        Target::Q,
        Target::K,
        Target::V,
        Target::O,
        Target::Gate,
        Target::Up,
        Target::Down,
    ];

    /// `q_proj` -> `Q`, ... ; `None` for anything else.
    pub fn from_module(name: &str) -> Option<Target> {
        Target::ALL.into_iter().find(|t| t.module_name() == name)
    }

    /// The module name PEFT and transformers use (`q_proj`, ..., `down_proj`).
    pub fn module_name(self) -> &'static str {
        match self {
            Target::Q => "q_proj",
            Target::K => "k_proj",
            Target::V => "v_proj",
            Target::O => "o_proj",
            Target::Gate => "gate_proj",
            Target::Up => "up_proj",
            Target::Down => "down_proj",
        }
    }

    /// The parent module in a decoder layer: `self_attn` or `mlp`.
    pub fn parent(self) -> &'static str {
        match self {
            Target::Q | Target::K | Target::V | Target::O => "self_attn",
            Target::Gate | Target::Up | Target::Down => "mlp",
        }
    }

    /// (input features, output features) of the projection for this model.
    pub fn dims(self, cfg: &ModelConfig) -> (usize, usize) {
        let h = cfg.hidden_size;
        match self {
            Target::Q => (h, cfg.q_dim()),
            Target::K | Target::V => (h, cfg.kv_dim()),
            Target::O => (cfg.q_dim(), h),
            Target::Gate | Target::Up => (h, cfg.intermediate_size),
            Target::Down => (cfg.intermediate_size, h),
        }
    }
}

/// One projection's low-rank pair: the update is `scaling · B · A`.
#[derive(Debug, Clone)]
pub struct LoraLayer {
    /// `[r, in]` f32.
    pub a: HostTensor,
    /// `[out, r]` f32.
    pub b: HostTensor,
}

#[derive(Debug, Clone)]
pub struct LoraAdapter {
    pub name: String,
    pub rank: usize,
    pub alpha: f32,
    /// What B·A is multiplied by: alpha / r, or alpha / sqrt(r) with rsLoRA.
    pub scaling: f32,
    /// From `target_modules`, sorted, without duplicates.
    pub targets: Vec<Target>,
    /// (layer, target) -> its A and B.
    pub layers: BTreeMap<(usize, Target), LoraLayer>,
}

/// The adapter options tessera reads from `adapter_config.json`.
struct AdapterOptions {
    rank: usize,
    alpha: f32,
    use_rslora: bool,
    targets: Vec<Target>,
}

/// Loads and checks a PEFT LoRA adapter folder against the base model's config.
/// `max_rank` is the server's `--max-lora-rank`.
pub fn load_adapter(
    name: &str,
    dir: &Path,
    cfg: &ModelConfig,
    max_rank: usize,
) -> Result<LoraAdapter> {
    let bad = |m: String| Error::model(name, m);
    if !dir.is_dir() {
        return Err(bad(format!(
            "adapter folder {} does not exist or is not a folder; pass the folder PEFT's \
             save_pretrained wrote (with {CONFIG_FILE} and {WEIGHTS_FILE})",
            dir.display()
        )));
    }
    let config_path = dir.join(CONFIG_FILE);
    if !config_path.is_file() {
        return Err(bad(format!(
            "{} is missing; a PEFT LoRA adapter folder holds {CONFIG_FILE} and {WEIGHTS_FILE}",
            config_path.display()
        )));
    }
    let weights_path = dir.join(WEIGHTS_FILE);
    if !weights_path.is_file() {
        return Err(bad(format!(
            "{} is missing; save the adapter with save_pretrained(safe_serialization=True) \
             (tessera does not read adapter_model.bin)",
            weights_path.display()
        )));
    }

    let text = std::fs::read_to_string(&config_path).map_err(|e| Error::io(&config_path, e))?;
    let json: Value = serde_json::from_str(&text).map_err(|e| {
        bad(format!(
            "{} is not valid JSON ({e}); rewrite it or save the adapter again",
            config_path.display()
        ))
    })?;
    let opts = parse_config(&json, max_rank).map_err(bad)?;

    let bytes = std::fs::read(&weights_path).map_err(|e| Error::io(&weights_path, e))?;
    let layers = read_weights(&bytes, &opts, cfg)
        .map_err(|m| bad(format!("{}: {m}", weights_path.display())))?;

    let r = opts.rank as f32;
    let scaling = if opts.use_rslora {
        opts.alpha / r.sqrt()
    } else {
        opts.alpha / r
    };
    Ok(LoraAdapter {
        name: name.to_string(),
        rank: opts.rank,
        alpha: opts.alpha,
        scaling,
        targets: opts.targets,
        layers,
    })
}

/// A random adapter of rank `rank` on `targets` (every layer), fixed by
/// `seed`: `A` and `B` uniform, sized so the update moves a projection's
/// output by about half its input's scale (enough to change greedy tokens,
/// not enough to break the model). For tests and `bench throughput --lora-mix`.
pub fn random_adapter(
    name: &str,
    cfg: &ModelConfig,
    rank: usize,
    targets: &[Target],
    seed: u64,
) -> LoraAdapter {
    let mut state = splitmix64(seed ^ 0x0001_0aa1_1ce5_eed5);
    let mut uniform = |n: usize, half_width: f32| -> Vec<f32> {
        (0..n)
            .map(|_| {
                state = splitmix64(state);
                let unit = (state >> 40) as f32 / (1u64 << 24) as f32;
                (2.0 * unit - 1.0) * half_width
            })
            .collect()
    };
    let mut targets = targets.to_vec();
    targets.sort();
    targets.dedup();
    let mut layers = BTreeMap::new();
    for l in 0..cfg.num_layers {
        for &t in &targets {
            let (input, output) = t.dims(cfg);
            let a = uniform(rank * input, (3.0 / input as f32).sqrt());
            let b = uniform(output * rank, 0.5 * (3.0 / rank as f32).sqrt());
            layers.insert(
                (l, t),
                LoraLayer {
                    a: HostTensor::f32(vec![rank, input], a),
                    b: HostTensor::f32(vec![output, rank], b),
                },
            );
        }
    }
    LoraAdapter {
        name: name.to_string(),
        rank,
        alpha: rank as f32,
        scaling: 1.0,
        targets,
        layers,
    }
}

/// Writes `adapter` as a PEFT folder (`adapter_config.json` and f32
/// `adapter_model.safetensors`) that `load_adapter` and PEFT both read.
pub fn save_adapter(adapter: &LoraAdapter, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let modules: Vec<&str> = adapter.targets.iter().map(|t| t.module_name()).collect();
    // With alpha = scaling * r the adapter reloads with the same scaling.
    let config = serde_json::json!({
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": adapter.rank,
        "lora_alpha": adapter.scaling * adapter.rank as f32,
        "use_rslora": false,
        "target_modules": modules,
        "bias": "none",
        "fan_in_fan_out": false,
        "use_dora": false,
    });
    let mut tensors = Vec::new();
    for (&(l, t), pair) in &adapter.layers {
        for (half, x) in [("A", &pair.a), ("B", &pair.b)] {
            let name = format!(
                "{NAME_PREFIX}{l}.{}.{}.lora_{half}.weight",
                t.parent(),
                t.module_name()
            );
            let bytes: Vec<u8> = x
                .to_f32_vec()
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect();
            tensors.push((name, x.shape.clone(), bytes));
        }
    }
    let views = tensors
        .iter()
        .map(|(n, shape, bytes)| {
            safetensors::tensor::TensorView::new(StDtype::F32, shape.clone(), bytes)
                .map(|v| (n.clone(), v))
        })
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| Error::invalid(format!("adapter {}: {e}", adapter.name)))?;
    let data = safetensors::tensor::serialize(views, None)
        .map_err(|e| Error::invalid(format!("adapter {}: {e}", adapter.name)))?;
    let weights = dir.join(WEIGHTS_FILE);
    std::fs::write(&weights, data).map_err(|e| Error::io(&weights, e))?;
    let path = dir.join(CONFIG_FILE);
    std::fs::write(&path, config.to_string()).map_err(|e| Error::io(&path, e))
}

/// True when a config key is absent, null, false, an empty list / object / string.
fn unset(v: Option<&Value>) -> bool {
    match v {
        None | Some(Value::Null) | Some(Value::Bool(false)) => true,
        Some(Value::Array(a)) => a.is_empty(),
        Some(Value::Object(o)) => o.is_empty(),
        Some(Value::String(s)) => s.is_empty(),
        Some(_) => false,
    }
}

fn parse_config(v: &Value, max_rank: usize) -> std::result::Result<AdapterOptions, String> {
    if !v.is_object() {
        return Err(format!("{CONFIG_FILE} must hold a JSON object"));
    }
    match v.get("peft_type").and_then(Value::as_str) {
        Some("LORA") => {}
        Some(other) => {
            return Err(format!(
                "peft_type is {other:?}, but tessera loads only LoRA adapters (peft_type \"LORA\")"
            ))
        }
        None => {
            let m = "tessera loads only LoRA adapters (peft_type \"LORA\")";
            return Err(format!("{CONFIG_FILE} has no peft_type; {m}"));
        }
    }

    let rank = match v.get("r") {
        None | Some(Value::Null) => {
            return Err(format!("{CONFIG_FILE} has no r (the LoRA rank)"));
        }
        Some(x) => match x.as_u64() {
            Some(0) => return Err("rank r is 0; a LoRA adapter needs r >= 1".into()),
            Some(r) => usize::try_from(r).unwrap_or(usize::MAX),
            None => return Err(format!("r is {x}, not a positive integer (the LoRA rank)")),
        },
    };
    if rank > max_rank {
        return Err(format!(
            "rank {rank} is above --max-lora-rank {max_rank}; restart the server with \
             --max-lora-rank {rank} or more, or use an adapter of lower rank"
        ));
    }

    // PEFT's default lora_alpha is 8 when the key is absent.
    let alpha = match v.get("lora_alpha") {
        None | Some(Value::Null) => 8.0,
        Some(x) => match x.as_f64() {
            Some(a) if a.is_finite() && a > 0.0 => a as f32,
            _ => return Err(format!("lora_alpha is {x}, not a positive number")),
        },
    };
    let use_rslora = match v.get("use_rslora") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(x) => return Err(format!("use_rslora is {x}, not true or false")),
    };

    let targets = match v.get("target_modules") {
        Some(Value::Array(list)) if !list.is_empty() => {
            let mut set = BTreeSet::new();
            for item in list {
                let s = item
                    .as_str()
                    .ok_or_else(|| format!("target_modules holds {item}, not a module name"))?;
                let t = Target::from_module(s).ok_or_else(|| {
                    format!(
                        "target_modules names {s:?}, which tessera cannot adapt; it supports \
                         q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj and down_proj"
                    )
                })?;
                set.insert(t);
            }
            set.into_iter().collect()
        }
        Some(Value::String(s)) => {
            return Err(format!(
                "target_modules is the pattern {s:?}; tessera needs an explicit list of \
                 projections (q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj)"
            ))
        }
        _ => {
            return Err(
                "target_modules is missing or empty; list the projections the adapter changes"
                    .into(),
            )
        }
    };

    // Options that change the computation; tessera would get them wrong, so it refuses.
    let refusals: [(&str, &str); 11] = [
        (
            "fan_in_fan_out",
            "weights stored transposed (Conv1D layout)",
        ),
        ("use_dora", "DoRA (weight-decomposed LoRA)"),
        (
            "modules_to_save",
            "fully trained extra modules (modules_to_save)",
        ),
        (
            "layers_to_transform",
            "adapting only some layers (layers_to_transform)",
        ),
        (
            "layers_pattern",
            "adapting only some layers (layers_pattern)",
        ),
        ("rank_pattern", "per-module ranks (rank_pattern)"),
        ("alpha_pattern", "per-module alphas (alpha_pattern)"),
        ("lora_bias", "a bias on lora_B (lora_bias)"),
        ("layer_replication", "layer replication"),
        (
            "target_parameters",
            "LoRA on parameters (target_parameters)",
        ),
        (
            "trainable_token_indices",
            "trained token embeddings (trainable_token_indices)",
        ),
    ];
    for (key, what) in refusals {
        if !unset(v.get(key)) {
            return Err(format!(
                "{key} is set ({}): {what} is not supported; tessera serves plain LoRA only \
                 (merge the adapter into the model, or retrain without {key})",
                v[key]
            ));
        }
    }
    match v.get("bias") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) if s == "none" => {}
        Some(x) => {
            return Err(format!(
                "bias is {x}: trained biases are not supported; tessera serves LoRA adapters \
                 with bias \"none\" only (merge the adapter into the model instead)"
            ))
        }
    }
    Ok(AdapterOptions {
        rank,
        alpha,
        use_rslora,
        targets,
    })
}

/// Splits `base_model.model.model.layers.{i}.{self_attn|mlp}.{x}_proj.lora_{A|B}.weight`
/// into (i, target, is_a).
fn parse_tensor_name(name: &str) -> Option<(usize, Target, bool)> {
    let rest = name.strip_prefix(NAME_PREFIX)?;
    let mut parts = rest.split('.');
    let idx = parts.next()?;
    if idx.is_empty() || !idx.bytes().all(|b| b.is_ascii_digit()) || idx.len() > 6 {
        return None;
    }
    let layer: usize = idx.parse().ok()?;
    let parent = parts.next()?;
    let target = Target::from_module(parts.next()?)?;
    if parent != target.parent() {
        return None;
    }
    let is_a = match parts.next()? {
        "lora_A" => true,
        "lora_B" => false,
        _ => return None,
    };
    if parts.next()? != "weight" || parts.next().is_some() {
        return None;
    }
    Some((layer, target, is_a))
}

fn read_weights(
    bytes: &[u8],
    opts: &AdapterOptions,
    cfg: &ModelConfig,
) -> std::result::Result<BTreeMap<(usize, Target), LoraLayer>, String> {
    let st = SafeTensors::deserialize(bytes).map_err(|e| {
        format!("not a valid safetensors file ({e}); it may be truncated or corrupt, save the adapter again")
    })?;
    let mut names: Vec<String> = st.names().into_iter().map(str::to_owned).collect();
    names.sort();
    if names.is_empty() {
        return Err("holds no tensors".into());
    }
    let r = opts.rank;
    let mut a_of: BTreeMap<(usize, Target), HostTensor> = BTreeMap::new();
    let mut b_of: BTreeMap<(usize, Target), HostTensor> = BTreeMap::new();
    for tname in &names {
        let (layer, target, is_a) = parse_tensor_name(tname).ok_or_else(|| {
            format!(
                "unexpected tensor {tname}; tessera expects \
                 base_model.model.model.layers.{{i}}.{{self_attn|mlp}}.{{x}}_proj.lora_{{A|B}}.weight"
            )
        })?;
        if layer >= cfg.num_layers {
            return Err(format!(
                "tensor {tname} is for layer {layer}, but the model has {} layers (0..{}); \
                 the adapter was trained for another model",
                cfg.num_layers,
                cfg.num_layers - 1
            ));
        }
        if !opts.targets.contains(&target) {
            return Err(format!(
                "tensor {tname} adapts {}, which is not in target_modules; fix \
                 target_modules in {CONFIG_FILE} or save the adapter again",
                target.module_name()
            ));
        }
        let view = st.tensor(tname).map_err(|e| format!("{tname}: {e}"))?;
        let dtype = match view.dtype() {
            StDtype::F32 => DType::F32,
            StDtype::BF16 => DType::BF16,
            StDtype::F16 => DType::F16,
            other => {
                return Err(format!(
                    "tensor {tname} has dtype {other:?}; LoRA weights must be F32, BF16 or F16"
                ))
            }
        };
        let (inp, out) = target.dims(cfg);
        let expected = if is_a { [r, inp] } else { [out, r] };
        if view.shape() != expected {
            return Err(format!(
                "tensor {tname} has shape {:?}, expected {:?} ({} for r {r}, {} in {inp}, out {out}); \
                 the adapter does not fit this model or its rank",
                view.shape(),
                expected,
                if is_a { "[r, in]" } else { "[out, r]" },
                target.module_name()
            ));
        }
        let t = HostTensor::from_bytes(dtype, view.shape().to_vec(), view.data())
            .and_then(|t| t.to_dtype(DType::F32))
            .map_err(|e| format!("tensor {tname}: {e}"))?;
        if t.to_f32_vec().iter().any(|x| !x.is_finite()) {
            return Err(format!("tensor {tname} holds NaN or infinite values"));
        }
        let map = if is_a { &mut a_of } else { &mut b_of };
        map.insert((layer, target), t);
    }

    let mut layers = BTreeMap::new();
    for (key, a) in a_of {
        let Some(b) = b_of.remove(&key) else {
            return Err(format!(
                "layer {} {} has lora_A but no lora_B; the file is incomplete",
                key.0,
                key.1.module_name()
            ));
        };
        layers.insert(key, LoraLayer { a, b });
    }
    if let Some(&(layer, target)) = b_of.keys().next() {
        return Err(format!(
            "layer {layer} {} has lora_B but no lora_A; the file is incomplete",
            target.module_name()
        ));
    }
    Ok(layers)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::HostData;
    use safetensors::tensor::TensorView;
    use serde_json::json;
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn repo() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
    }

    fn base_cfg() -> ModelConfig {
        ModelConfig::from_hf_file(
            &repo().join("conformance/fixtures/tiny/llama_gqa_rope3/config.json"),
        )
        .unwrap()
    }

    fn fixture(name: &str) -> PathBuf {
        repo().join("conformance/fixtures/lora").join(name)
    }

    #[test]
    fn lora_loads_fixture_a() {
        let cfg = base_cfg();
        let ad = load_adapter("a", &fixture("a"), &cfg, 64).unwrap();
        assert_eq!(ad.name, "a");
        assert_eq!(ad.rank, 8);
        assert_eq!(ad.alpha, 16.0);
        assert_eq!(ad.scaling, 2.0);
        assert_eq!(ad.targets, vec![Target::Q, Target::V]);
        assert_eq!(ad.layers.len(), 2 * 2);
        for l in 0..2 {
            let q = &ad.layers[&(l, Target::Q)];
            assert_eq!(q.a.shape, vec![8, 128]);
            assert_eq!(q.b.shape, vec![128, 8]);
            let v = &ad.layers[&(l, Target::V)];
            assert_eq!(v.a.shape, vec![8, 128]);
            assert_eq!(v.b.shape, vec![32, 8]);
            assert!(matches!(q.a.data, HostData::F32(_)));
            // the fixtures overwrite PEFT's zero lora_B
            assert!(q.b.to_f32_vec().iter().any(|&x| x != 0.0));
        }
    }

    #[test]
    fn lora_loads_fixture_b_rslora() {
        let cfg = base_cfg();
        let ad = load_adapter("b", &fixture("b"), &cfg, 64).unwrap();
        assert_eq!(ad.rank, 4);
        assert_eq!(ad.alpha, 8.0);
        assert_eq!(ad.scaling, 4.0); // 8 / sqrt(4)
        assert_eq!(ad.targets, Target::ALL.to_vec());
        assert_eq!(ad.layers.len(), 2 * 7);
        let want = [
            (Target::Q, 128, 128),
            (Target::K, 128, 32),
            (Target::V, 128, 32),
            (Target::O, 128, 128),
            (Target::Gate, 128, 160),
            (Target::Up, 128, 160),
            (Target::Down, 160, 128),
        ];
        for l in 0..2 {
            for (t, inp, out) in want {
                let x = &ad.layers[&(l, t)];
                assert_eq!(x.a.shape, vec![4, inp], "{l} {t:?}");
                assert_eq!(x.b.shape, vec![out, 4], "{l} {t:?}");
                assert_eq!(x.a.dtype(), DType::F32);
                assert_eq!(x.b.dtype(), DType::F32);
            }
        }
        // rank exactly at the limit is fine
        assert!(load_adapter("b", &fixture("b"), &cfg, 4).is_ok());
    }

    #[test]
    fn lora_target_names_round_trip() {
        for t in Target::ALL {
            assert_eq!(Target::from_module(t.module_name()), Some(t));
        }
        assert_eq!(Target::from_module("lm_head"), None);
    }

    // ---- synthetic adapters -----------------------------------------------------------

    static COUNTER: AtomicUsize = AtomicUsize::new(0);

    /// A fresh, empty folder under the system temp dir; removed when dropped.
    struct TempDir(PathBuf);
    impl TempDir {
        fn new(tag: &str) -> Self {
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let p = std::env::temp_dir().join(format!(
                "tessera-lora-test-{}-{tag}-{n}",
                std::process::id()
            ));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p).unwrap();
            TempDir(p)
        }
    }
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn good_config() -> Value {
        json!({
            "peft_type": "LORA",
            "r": 2,
            "lora_alpha": 4,
            "target_modules": ["q_proj", "v_proj"],
            "bias": "none",
            "fan_in_fan_out": false,
            "modules_to_save": null,
            "use_dora": false,
            "use_rslora": false,
            "layers_to_transform": null,
            "rank_pattern": {},
            "alpha_pattern": {},
            "task_type": "CAUSAL_LM"
        })
    }

    struct Tensor {
        name: String,
        dtype: StDtype,
        shape: Vec<usize>,
        bytes: Vec<u8>,
    }

    fn tname(layer: usize, t: Target, ab: &str) -> String {
        format!(
            "base_model.model.model.layers.{layer}.{}.{}.lora_{ab}.weight",
            t.parent(),
            t.module_name()
        )
    }

    fn f32_tensor(name: String, shape: Vec<usize>) -> Tensor {
        let n: usize = shape.iter().product();
        let bytes = (0..n)
            .flat_map(|i| (0.01 * (i % 17) as f32 - 0.05).to_le_bytes())
            .collect();
        Tensor {
            name,
            dtype: StDtype::F32,
            shape,
            bytes,
        }
    }

    /// A valid r=2 adapter on q_proj and v_proj of both layers of the tiny model.
    fn good_tensors() -> Vec<Tensor> {
        let cfg = base_cfg();
        let mut v = Vec::new();
        for l in 0..cfg.num_layers {
            for t in [Target::Q, Target::V] {
                let (inp, out) = t.dims(&cfg);
                v.push(f32_tensor(tname(l, t, "A"), vec![2, inp]));
                v.push(f32_tensor(tname(l, t, "B"), vec![out, 2]));
            }
        }
        v
    }

    fn serialize(tensors: &[Tensor]) -> Vec<u8> {
        let views: Vec<(String, TensorView)> = tensors
            .iter()
            .map(|t| {
                (
                    t.name.clone(),
                    TensorView::new(t.dtype, t.shape.clone(), &t.bytes).unwrap(),
                )
            })
            .collect();
        safetensors::tensor::serialize(views, None).unwrap()
    }

    fn write_adapter(tag: &str, config: &Value, tensors: &[Tensor]) -> TempDir {
        let d = TempDir::new(tag);
        std::fs::write(d.0.join(CONFIG_FILE), config.to_string()).unwrap();
        std::fs::write(d.0.join(WEIGHTS_FILE), serialize(tensors)).unwrap();
        d
    }

    fn load(d: &TempDir) -> Result<LoraAdapter> {
        load_adapter("syn", &d.0, &base_cfg(), 64)
    }

    /// Loads and expects a `Model` error naming the adapter whose message holds every key word.
    fn expect_err(d: &TempDir, words: &[&str]) {
        match load(d) {
            Ok(_) => panic!("loaded, expected an error with {words:?}"),
            Err(Error::Model { what, message }) => {
                assert_eq!(what, "syn");
                for w in words {
                    assert!(message.contains(w), "{message:?} lacks {w:?}");
                }
            }
            Err(other) => panic!("wrong error kind: {other}"),
        }
    }

    fn with_config(tag: &str, f: impl FnOnce(&mut Value)) -> TempDir {
        let mut c = good_config();
        f(&mut c);
        write_adapter(tag, &c, &good_tensors())
    }

    fn with_tensors(tag: &str, f: impl FnOnce(&mut Vec<Tensor>)) -> TempDir {
        let mut t = good_tensors();
        f(&mut t);
        write_adapter(tag, &good_config(), &t)
    }

    #[test]
    fn lora_random_adapter_saves_and_loads_back() {
        let cfg = base_cfg();
        let made = random_adapter("r", &cfg, 3, &[Target::V, Target::Down, Target::V], 9);
        assert_eq!(made.targets, vec![Target::V, Target::Down]);
        assert_eq!(made.layers.len(), 2 * cfg.num_layers);
        let d = TempDir::new("roundtrip");
        save_adapter(&made, &d.0).unwrap();
        let back = load_adapter("r", &d.0, &cfg, 8).unwrap();
        assert_eq!(
            (back.rank, back.scaling, &back.targets),
            (3, 1.0, &made.targets)
        );
        for (key, pair) in &made.layers {
            let got = &back.layers[key];
            assert_eq!(got.a.to_f32_vec(), pair.a.to_f32_vec());
            assert_eq!(got.b.to_f32_vec(), pair.b.to_f32_vec());
        }
        // Another seed is another adapter.
        let other = random_adapter("r", &cfg, 3, &[Target::V], 10);
        let key = (0, Target::V);
        assert_ne!(
            other.layers[&key].a.to_f32_vec(),
            made.layers[&key].a.to_f32_vec()
        );
    }

    #[test]
    fn lora_synthetic_good_adapter_loads() {
        let d = write_adapter("good", &good_config(), &good_tensors());
        let ad = load(&d).unwrap();
        assert_eq!(ad.rank, 2);
        assert_eq!(ad.scaling, 2.0);
        assert_eq!(ad.layers.len(), 4);
    }

    #[test]
    fn lora_lora_alpha_defaults_to_peft_default() {
        let d = with_config("alpha_default", |c| {
            c.as_object_mut().unwrap().remove("lora_alpha");
        });
        assert_eq!(load(&d).unwrap().alpha, 8.0);
    }

    #[test]
    fn lora_refuses_missing_folder() {
        let d = TempDir::new("nofolder");
        let gone = d.0.join("not-there");
        let e = load_adapter("syn", &gone, &base_cfg(), 64).unwrap_err();
        let m = e.to_string();
        assert!(
            m.contains("does not exist") && m.contains("not-there"),
            "{m}"
        );
    }

    #[test]
    fn lora_refuses_missing_config() {
        let d = write_adapter("noconfig", &good_config(), &good_tensors());
        std::fs::remove_file(d.0.join(CONFIG_FILE)).unwrap();
        expect_err(&d, &["adapter_config.json", "missing"]);
    }

    #[test]
    fn lora_refuses_missing_weights() {
        let d = write_adapter("noweights", &good_config(), &good_tensors());
        std::fs::remove_file(d.0.join(WEIGHTS_FILE)).unwrap();
        expect_err(&d, &["adapter_model.safetensors", "missing"]);
    }

    #[test]
    fn lora_refuses_config_not_json() {
        let d = write_adapter("notjson", &good_config(), &good_tensors());
        std::fs::write(d.0.join(CONFIG_FILE), "{ r: 8,").unwrap();
        expect_err(&d, &["adapter_config.json", "not valid JSON"]);
    }

    #[test]
    fn lora_refuses_other_peft_type() {
        let d = with_config("ia3", |c| c["peft_type"] = json!("IA3"));
        expect_err(&d, &["peft_type", "IA3", "LORA"]);
    }

    #[test]
    fn lora_refuses_missing_rank() {
        let d = with_config("norank", |c| {
            c.as_object_mut().unwrap().remove("r");
        });
        expect_err(&d, &["no r", "rank"]);
    }

    #[test]
    fn lora_refuses_rank_zero() {
        let d = with_config("rank0", |c| c["r"] = json!(0));
        expect_err(&d, &["rank r is 0"]);
    }

    #[test]
    fn lora_refuses_rank_above_max() {
        let d = with_config("rank128", |c| c["r"] = json!(128));
        expect_err(&d, &["rank 128 is above --max-lora-rank 64"]);
    }

    #[test]
    fn lora_refuses_unknown_target_module() {
        let d = with_config("lmhead", |c| {
            c["target_modules"] = json!(["q_proj", "lm_head"])
        });
        expect_err(&d, &["target_modules", "\"lm_head\"", "q_proj"]);
        let d = with_config("regex", |c| c["target_modules"] = json!(".*proj"));
        expect_err(&d, &["target_modules", "explicit list"]);
    }

    #[test]
    fn lora_refuses_fan_in_fan_out() {
        let d = with_config("fifo", |c| c["fan_in_fan_out"] = json!(true));
        expect_err(&d, &["fan_in_fan_out", "not supported"]);
    }

    #[test]
    fn lora_refuses_bias() {
        let d = with_config("bias", |c| c["bias"] = json!("lora_only"));
        expect_err(&d, &["bias", "lora_only", "not supported"]);
    }

    #[test]
    fn lora_refuses_modules_to_save() {
        let d = with_config("mts", |c| c["modules_to_save"] = json!(["lm_head"]));
        expect_err(&d, &["modules_to_save", "not supported"]);
        // an empty list is the same as none
        let d = with_config("mts_empty", |c| c["modules_to_save"] = json!([]));
        assert!(load(&d).is_ok());
    }

    #[test]
    fn lora_refuses_dora() {
        let d = with_config("dora", |c| c["use_dora"] = json!(true));
        expect_err(&d, &["use_dora", "DoRA", "not supported"]);
    }

    #[test]
    fn lora_refuses_layers_to_transform() {
        let d = with_config("ltt", |c| c["layers_to_transform"] = json!([0]));
        expect_err(&d, &["layers_to_transform", "not supported"]);
    }

    #[test]
    fn lora_refuses_rank_pattern() {
        let d = with_config("rp", |c| c["rank_pattern"] = json!({"q_proj": 4}));
        expect_err(&d, &["rank_pattern", "not supported"]);
    }

    #[test]
    fn lora_refuses_unreadable_safetensors() {
        let d = write_adapter("garbage", &good_config(), &good_tensors());
        std::fs::write(d.0.join(WEIGHTS_FILE), b"this is not a safetensors file").unwrap();
        expect_err(
            &d,
            &["adapter_model.safetensors", "not a valid safetensors file"],
        );
    }

    #[test]
    fn lora_refuses_truncated_safetensors() {
        let d = write_adapter("trunc", &good_config(), &good_tensors());
        let p = d.0.join(WEIGHTS_FILE);
        let bytes = std::fs::read(&p).unwrap();
        std::fs::write(&p, &bytes[..bytes.len() - 100]).unwrap();
        expect_err(&d, &["not a valid safetensors file", "truncated"]);
    }

    #[test]
    fn lora_refuses_bad_tensor_name() {
        let d = with_tensors("badname", |t| {
            t[0].name =
                "base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight".into()
        });
        expect_err(&d, &["unexpected tensor", "lora_A.default.weight"]);
        // q_proj under mlp is not a projection of this family
        let d = with_tensors("badparent", |t| {
            t[0].name = "base_model.model.model.layers.0.mlp.q_proj.lora_A.weight".into()
        });
        expect_err(&d, &["unexpected tensor", "mlp.q_proj"]);
    }

    #[test]
    fn lora_refuses_layer_out_of_range() {
        let d = with_tensors("layer", |t| {
            let cfg = base_cfg();
            let (inp, out) = Target::Q.dims(&cfg);
            t.push(f32_tensor(tname(2, Target::Q, "A"), vec![2, inp]));
            t.push(f32_tensor(tname(2, Target::Q, "B"), vec![out, 2]));
        });
        expect_err(&d, &["layer 2", "2 layers"]);
    }

    #[test]
    fn lora_refuses_module_not_in_target_modules() {
        let d = with_tensors("kproj", |t| {
            let cfg = base_cfg();
            let (inp, out) = Target::K.dims(&cfg);
            t.push(f32_tensor(tname(0, Target::K, "A"), vec![2, inp]));
            t.push(f32_tensor(tname(0, Target::K, "B"), vec![out, 2]));
        });
        expect_err(&d, &["k_proj", "not in target_modules"]);
    }

    #[test]
    fn lora_refuses_a_without_b() {
        let d = with_tensors("nob", |t| {
            let name = tname(1, Target::V, "B");
            t.retain(|x| x.name != name);
        });
        expect_err(&d, &["layer 1 v_proj has lora_A but no lora_B"]);
    }

    #[test]
    fn lora_refuses_b_without_a() {
        let d = with_tensors("noa", |t| {
            let name = tname(0, Target::Q, "A");
            t.retain(|x| x.name != name);
        });
        expect_err(&d, &["layer 0 q_proj has lora_B but no lora_A"]);
    }

    #[test]
    fn lora_refuses_wrong_shape_a() {
        // A for q_proj with `in` = 64 instead of hidden 128
        let d = with_tensors("shape_a", |t| {
            let name = tname(0, Target::Q, "A");
            let i = t.iter().position(|x| x.name == name).unwrap();
            t[i] = f32_tensor(name, vec![2, 64]);
        });
        expect_err(&d, &["shape [2, 64]", "expected [2, 128]", "q_proj"]);
    }

    #[test]
    fn lora_refuses_wrong_shape_b() {
        // B for v_proj with the rank of another adapter
        let d = with_tensors("shape_b", |t| {
            let name = tname(1, Target::V, "B");
            let i = t.iter().position(|x| x.name == name).unwrap();
            t[i] = f32_tensor(name, vec![32, 3]);
        });
        expect_err(&d, &["shape [32, 3]", "expected [32, 2]", "v_proj"]);
    }

    #[test]
    fn lora_refuses_other_dtypes() {
        let d = with_tensors("f64", |t| {
            let x = &mut t[0];
            x.dtype = StDtype::F64;
            x.bytes = vec![0u8; x.shape.iter().product::<usize>() * 8];
        });
        expect_err(&d, &["dtype F64", "F32, BF16 or F16"]);
    }

    #[test]
    fn lora_converts_bf16_and_f16_to_f32() {
        let vals = |n: usize| {
            (0..n)
                .map(|i| 0.25 * (i % 5) as f32 - 0.5)
                .collect::<Vec<f32>>()
        };
        let d = with_tensors("half", |t| {
            for (k, x) in t.iter_mut().enumerate() {
                let n = x.shape.iter().product();
                if k % 2 == 0 {
                    x.dtype = StDtype::BF16;
                    x.bytes = vals(n)
                        .into_iter()
                        .flat_map(|v| half::bf16::from_f32(v).to_le_bytes())
                        .collect();
                } else {
                    x.dtype = StDtype::F16;
                    x.bytes = vals(n)
                        .into_iter()
                        .flat_map(|v| half::f16::from_f32(v).to_le_bytes())
                        .collect();
                }
            }
        });
        let ad = load(&d).unwrap();
        for l in ad.layers.values() {
            assert_eq!(l.a.dtype(), DType::F32);
            assert_eq!(l.b.dtype(), DType::F32);
            assert_eq!(l.a.to_f32_vec(), vals(l.a.numel()));
            assert_eq!(l.b.to_f32_vec(), vals(l.b.numel()));
        }
    }

    #[test]
    fn lora_refuses_non_finite_values() {
        let d = with_tensors("nan", |t| {
            t[1].bytes[..4].copy_from_slice(&f32::NAN.to_le_bytes());
        });
        expect_err(&d, &["NaN"]);
    }
}
