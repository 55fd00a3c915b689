//! Models: configs, weight sources (HF safetensors, GGUF, random), tokenizers,
//! chat templates, and the Llama-family forward pass.

pub mod chat_template;
pub mod config;
pub mod gguf;
pub mod gguf_quant;
pub mod gguf_tokenizer;
pub mod gguf_weights;
pub mod hf;
pub mod llama;
pub mod lora;
pub mod random;
pub mod tokenizer;
pub mod weights;

use crate::{Error, Result};
use chat_template::ChatTemplate;
use config::ModelConfig;
use std::path::{Path, PathBuf};
use tokenizer::Tokenizer;
use weights::WeightSource;

/// File name of the default model (SmolLM2-135M-Instruct, Q4_1 GGUF).
pub const DEFAULT_MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// Everything needed to run a model, before anything is on a device.
pub struct ModelSource {
    /// What the user named (`default`, a path, `random:llama-3.2-1b`).
    pub name: String,
    pub config: ModelConfig,
    pub weights: Box<dyn WeightSource>,
    pub tokenizer: Option<Tokenizer>,
    pub chat_template: Option<ChatTemplate>,
}

/// tessera's cache folder: `$TESSERA_CACHE`, else `$XDG_CACHE_HOME/tessera`, else `~/.cache/tessera`.
pub fn cache_dir() -> PathBuf {
    if let Some(p) = std::env::var_os("TESSERA_CACHE") {
        return PathBuf::from(p);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from(".cache"));
    base.join("tessera")
}

/// Where `scripts/fetch-default-model.sh` puts the default model
/// (`$TESSERA_DEFAULT_MODEL` overrides).
pub fn default_model_path() -> PathBuf {
    match std::env::var_os("TESSERA_DEFAULT_MODEL") {
        Some(p) => PathBuf::from(p),
        None => cache_dir().join("models").join(DEFAULT_MODEL_FILE),
    }
}

/// Opens a model by what users type after `--model`.
pub fn open(spec: &str) -> Result<ModelSource> {
    if spec == "default" || spec.is_empty() {
        let path = default_model_path();
        if !path.is_file() {
            return Err(Error::model(
                "default",
                format!(
                    "{} is not there yet; run scripts/fetch-default-model.sh (it downloads SmolLM2-135M-Instruct, 98 MB)",
                    path.display()
                ),
            ));
        }
        return open_path(&path, spec);
    }
    if let Some(rest) = spec.strip_prefix("random:") {
        let config = random::config_for(rest)?;
        let seed = std::env::var("TESSERA_RANDOM_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        return Ok(ModelSource {
            name: spec.into(),
            weights: Box::new(random::RandomWeights {
                config: config.clone(),
                seed,
            }),
            config,
            tokenizer: None,
            chat_template: None,
        });
    }
    open_path(Path::new(spec), spec)
}

fn open_path(path: &Path, name: &str) -> Result<ModelSource> {
    if path.is_dir() {
        return open_hf_dir(path, name);
    }
    if !path.exists() {
        return Err(Error::model(
            name,
            "no such file or folder (give a GGUF file, a Hugging Face folder, `default` or `random:<preset>`)",
        ));
    }
    let mut magic = [0u8; 4];
    let read =
        std::fs::File::open(path).and_then(|mut f| std::io::Read::read_exact(&mut f, &mut magic));
    read.map_err(|e| Error::io(path, e))?;
    if &magic != b"GGUF" {
        return Err(Error::model(
            path.display(),
            "not a GGUF file (no GGUF magic); give a .gguf file or a Hugging Face folder",
        ));
    }
    open_gguf(path, name)
}

fn open_gguf(path: &Path, name: &str) -> Result<ModelSource> {
    let file = gguf::GgufFile::open(path)?;
    let config = gguf_weights::config_from_gguf(&file)?;
    let mut tokenizer = Tokenizer::from_json(&gguf_tokenizer::tokenizer_json_from_gguf(&file)?)?;
    tokenizer.add_bos = gguf_tokenizer::add_bos_from_gguf(&file);
    tokenizer.bos = config.bos_token_id;
    tokenizer.eos = config.eos_token_ids.clone();
    let token_text = |id: Option<u32>| {
        id.and_then(|i| tokenizer.id_to_token(i))
            .unwrap_or_default()
    };
    let chat_template = match gguf_tokenizer::chat_template_from_gguf(&file) {
        Some(src) => Some(ChatTemplate::new(
            src,
            token_text(config.bos_token_id),
            token_text(config.eos_token_ids.first().copied()),
        )?),
        None => None,
    };
    let weights = gguf_weights::GgufWeights::new(file)?;
    Ok(ModelSource {
        name: name.into(),
        config,
        weights: Box::new(weights),
        tokenizer: Some(tokenizer),
        chat_template,
    })
}

fn open_hf_dir(dir: &Path, name: &str) -> Result<ModelSource> {
    let config_path = dir.join("config.json");
    if !config_path.is_file() {
        return Err(Error::model(
            dir.display(),
            "no config.json: not a Hugging Face model folder",
        ));
    }
    let mut config = ModelConfig::from_hf_file(&config_path)?;
    // Instruct models often list their end-of-turn tokens only in generation_config.json.
    let generation: Option<serde_json::Value> =
        std::fs::read_to_string(dir.join("generation_config.json"))
            .ok()
            .and_then(|s| serde_json::from_str(&s).ok());
    let extra = config::token_ids(generation.as_ref().and_then(|v| v.get("eos_token_id")));
    for id in extra {
        if !config.eos_token_ids.contains(&id) {
            config.eos_token_ids.push(id);
        }
    }
    let tok_path = dir.join("tokenizer.json");
    let tokenizer = if tok_path.is_file() {
        let mut t = Tokenizer::from_file(&tok_path)?;
        t.bos = config.bos_token_id;
        t.eos = config.eos_token_ids.clone();
        // Llama checkpoints say so in tokenizer_config.json; default to false.
        t.add_bos = std::fs::read_to_string(dir.join("tokenizer_config.json"))
            .ok()
            .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
            .and_then(|v| v.get("add_bos_token").and_then(|b| b.as_bool()))
            .unwrap_or(false);
        Some(t)
    } else {
        None
    };
    let chat_template = ChatTemplate::from_hf_dir(dir)?;
    let weights = hf::HfWeights::open(dir)?;
    Ok(ModelSource {
        name: name.into(),
        config,
        weights: Box::new(weights),
        tokenizer,
        chat_template,
    })
}
