//! `tessera generate`: one prompt, text streamed to stdout, stats to stderr.

use crate::session::{ModelArgs, Session};
use anyhow::{bail, Context};
use std::io::{Read, Write};
use tessera_core::engine::{generate, GenerateOptions, SamplingParams};
use tessera_core::model::chat_template::ChatMessage;
use tessera_core::model::llama::LoraShape;
use tessera_core::model::lora::load_adapter;
use tessera_core::model::tokenizer::StreamDecoder;

/// `generate --lora` sizes its one slot to the adapter; this only bounds a
/// config that claims an absurd rank.
const MAX_CLI_LORA_RANK: usize = 4096;

#[derive(clap::Args)]
#[command(allow_negative_numbers = true)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// Most tokens to generate.
    #[arg(long, default_value_t = 256)]
    max_tokens: usize,
    /// 0 is greedy (the default: the same answer every time).
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    /// 0 means no limit.
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    #[arg(long, default_value_t = 0.0)]
    min_p: f32,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Wrap the prompt in the model's chat template as a user message.
    #[arg(long)]
    chat: bool,
    /// System message for --chat (default: the template's own).
    #[arg(long)]
    system: Option<String>,
    /// Keep generating past end-of-sequence tokens.
    #[arg(long)]
    ignore_eos: bool,
    /// Prompt tokens run per step.
    #[arg(long, default_value_t = 512)]
    prefill_chunk: usize,
    /// A PEFT LoRA adapter folder to generate with (like llama.cpp's --lora).
    #[arg(long, value_name = "DIR")]
    lora: Option<std::path::PathBuf>,
    /// The prompt; `-` reads it from stdin.
    prompt: String,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let sampling = SamplingParams {
        temperature: a.temperature,
        top_p: a.top_p,
        top_k: a.top_k,
        min_p: a.min_p,
        seed: a.seed,
        max_tokens: a.max_tokens.max(1),
        ..Default::default()
    };
    sampling.validate_params()?;
    if a.max_tokens == 0 {
        bail!("--max-tokens must be at least 1");
    }
    let prompt_text = if a.prompt == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("reading the prompt from stdin")?;
        s
    } else {
        a.prompt.clone()
    };
    let session = Session::open(&a.model)?;
    let src = &session.source;
    let (prompt, stop_ids, tokenizer) = match &src.tokenizer {
        Some(tok) => {
            let text = if a.chat {
                let tmpl = src
                    .chat_template
                    .as_ref()
                    .with_context(|| format!("{} has no chat template; drop --chat", src.name))?;
                let mut messages = vec![];
                if let Some(sys) = &a.system {
                    messages.push(ChatMessage {
                        role: "system".into(),
                        content: sys.clone(),
                    });
                }
                messages.push(ChatMessage {
                    role: "user".into(),
                    content: prompt_text,
                });
                tmpl.render(&messages, true)?
            } else {
                prompt_text
            };
            (tok.encode(&text, true)?, tok.eos.clone(), Some(tok))
        }
        None => {
            // Models without a tokenizer (random weights) take space-separated ids,
            // or any text as bytes-mod-vocab so speed checks need no tokenizer.
            if a.chat {
                bail!(
                    "{} has no tokenizer, so no chat template; drop --chat",
                    src.name
                );
            }
            let vocab = src.config.vocab_size as u32;
            let ids: Option<Vec<u32>> = prompt_text
                .split_whitespace()
                .map(|w| w.parse::<u32>().ok())
                .collect();
            let ids = match ids {
                Some(ids) if !ids.is_empty() => ids,
                _ => prompt_text.bytes().map(|b| b as u32 % vocab).collect(),
            };
            (ids, vec![], None)
        }
    };
    if prompt.is_empty() {
        bail!("the prompt is empty");
    }
    let stop_ids = if a.ignore_eos { vec![] } else { stop_ids };
    let mut runner = session.runner(prompt.len() + a.max_tokens)?;
    let lora_slot = match &a.lora {
        None => None,
        Some(dir) => {
            // One slot, exactly as wide as this adapter.
            let adapter = load_adapter("--lora", dir, &src.config, MAX_CLI_LORA_RANK)?;
            let shape = LoraShape {
                slots: 1,
                rank: adapter.rank,
            };
            runner.model.enable_lora(shape)?;
            runner.model.grow_lora_rank(adapter.rank)?;
            runner.model.load_lora_slot(0, &adapter)?;
            Some(0)
        }
    };
    let opts = GenerateOptions {
        max_tokens: a.max_tokens,
        sampling,
        stop_ids,
        prefill_chunk: a.prefill_chunk,
        lora_slot,
    };

    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut decoder = StreamDecoder::new();
    let stats = generate(&mut runner, &prompt, &opts, |id| {
        match tokenizer {
            Some(tok) => {
                if let Some(piece) = decoder.push(tok, id)? {
                    let _ = out.write_all(piece.as_bytes());
                }
            }
            None => {
                let _ = write!(out, "{id} ");
            }
        }
        // A closed stdout (`| head`) ends generation quietly.
        Ok(out.flush().is_ok())
    })?;
    let _ = writeln!(out);
    eprintln!(
        "[{} prompt tokens, {:.1} tok/s prefill; {} generated, {:.1} tok/s decode; {} on {}, {} weights; finish: {}]",
        stats.prompt_tokens,
        stats.prefill_tokens_per_s(),
        stats.generated_tokens,
        stats.decode_tokens_per_s(),
        src.name,
        session.device.name(),
        session.dtype,
        stats.finish_reason
    );
    Ok(())
}
