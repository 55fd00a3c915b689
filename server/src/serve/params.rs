//! OpenAI's and vLLM's sampling fields mapped onto the engine's
//! `SamplingParams`, each checked with a message that names the field.

use super::body::{token_id, wrong, Body};
use super::error::ApiError;
use serde_json::Value;
use std::sync::atomic::{AtomicU64, Ordering};
use tessera_core::engine::sampler::{MAX_LOGPROBS, MAX_N};
use tessera_core::engine::SamplingParams;
use tessera_core::model::random::splitmix64;

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Api {
    Completions,
    Chat,
}

/// How the response goes out.
pub struct Delivery {
    pub stream: bool,
    pub include_usage: bool,
}

/// Most stop strings a request may give, and their longest length.
const MAX_STOPS: usize = 16;
const MAX_STOP_CHARS: usize = 1024;
/// OpenAI's bound on logit_bias values.
const MAX_BIAS: f32 = 100.0;

/// A fresh seed for requests without one: different per request, so two
/// unseeded requests do not sample alike.
fn fresh_seed() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    splitmix64(nanos ^ COUNTER.fetch_add(1, Ordering::Relaxed).rotate_left(32))
}

/// Refuses the OpenAI features tessera does not have, rather than ignoring them.
fn refuse_unsupported(b: &Body) -> Result<(), ApiError> {
    for key in ["tools", "functions", "tool_choice", "suffix"] {
        if b.get(key).is_some() {
            return Err(ApiError::field(
                key,
                format!("{key} is not supported by tessera"),
            ));
        }
    }
    if b.int("best_of", 0, i64::MAX)?.is_some_and(|n| n > 1) {
        return Err(ApiError::field(
            "best_of",
            "best_of > 1 is not supported; use n",
        ));
    }
    if b.bool("echo")? == Some(true) {
        return Err(ApiError::field("echo", "echo is not supported"));
    }
    Ok(())
}

pub fn delivery(b: &Body) -> Result<Delivery, ApiError> {
    let stream = b.bool("stream")?.unwrap_or(false);
    let include_usage = match b.object("stream_options")? {
        None => false,
        Some(_) if !stream => {
            return Err(ApiError::field(
                "stream_options",
                "stream_options is only allowed with stream: true",
            ))
        }
        Some(o) => match o.get("include_usage") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(x)) => *x,
            Some(v) => return Err(wrong("stream_options.include_usage", "a boolean", v)),
        },
    };
    Ok(Delivery {
        stream,
        include_usage,
    })
}

fn stops(b: &Body) -> Result<Vec<String>, ApiError> {
    let list: Vec<String> = match b.get("stop") {
        None => vec![],
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| match v {
                Value::String(s) => Ok(s.clone()),
                other => Err(wrong("stop", "a string or an array of strings", other)),
            })
            .collect::<Result<_, _>>()?,
        Some(v) => return Err(wrong("stop", "a string or an array of strings", v)),
    };
    if list.len() > MAX_STOPS {
        return Err(ApiError::field(
            "stop",
            format!("at most {MAX_STOPS} stop strings, got {}", list.len()),
        ));
    }
    if let Some(s) = list
        .iter()
        .find(|s| s.is_empty() || s.chars().count() > MAX_STOP_CHARS)
    {
        return Err(ApiError::field(
            "stop",
            format!(
                "stop strings must have 1 to {MAX_STOP_CHARS} characters, got {:?}",
                s.chars().count()
            ),
        ));
    }
    Ok(list)
}

fn logit_bias(b: &Body, vocab: usize) -> Result<Vec<(u32, f32)>, ApiError> {
    let Some(map) = b.object("logit_bias")? else {
        return Ok(vec![]);
    };
    map.iter()
        .map(|(k, v)| {
            let id = k
                .parse::<u64>()
                .ok()
                .filter(|&id| (id as usize) < vocab)
                .ok_or_else(|| {
                    ApiError::field(
                        "logit_bias",
                        format!("logit_bias keys must be token ids in [0, {vocab}), got {k:?}"),
                    )
                })?;
            let bias = v
                .as_f64()
                .filter(|x| x.abs() <= MAX_BIAS as f64)
                .ok_or_else(|| {
                    ApiError::field(
                        "logit_bias",
                        format!("logit_bias values must be numbers in [-{MAX_BIAS}, {MAX_BIAS}], got {v}"),
                    )
                })?;
            Ok((id as u32, bias as f32))
        })
        .collect()
}

fn logprobs(b: &Body, api: Api) -> Result<Option<usize>, ApiError> {
    let max = MAX_LOGPROBS as i64;
    match api {
        // Completions: `logprobs` is the number of alternatives.
        Api::Completions => Ok(b.int("logprobs", 0, max)?.map(|k| k as usize)),
        // Chat: `logprobs` switches them on, `top_logprobs` counts alternatives.
        Api::Chat => {
            let on = b.bool("logprobs")?.unwrap_or(false);
            let top = b.int("top_logprobs", 0, max)?;
            match (on, top) {
                (false, Some(_)) => Err(ApiError::field(
                    "top_logprobs",
                    "top_logprobs needs logprobs: true",
                )),
                (false, None) => Ok(None),
                (true, top) => Ok(Some(top.unwrap_or(0) as usize)),
            }
        }
    }
}

/// The sampling parameters of a request whose longest prompt has
/// `prompt_len` tokens, for a model of `vocab` tokens serving `max_len`.
pub fn sampling(
    b: &Body,
    api: Api,
    vocab: usize,
    max_len: usize,
    prompt_len: usize,
) -> Result<SamplingParams, ApiError> {
    refuse_unsupported(b)?;
    let room = max_len.saturating_sub(prompt_len);
    if room == 0 {
        return Err(ApiError::field(
            "messages",
            format!("the prompt has {prompt_len} tokens, the model serves at most {max_len} including the output"),
        ));
    }
    let max_tokens = match (
        b.int("max_completion_tokens", 1, max_len as i64)?,
        b.int("max_tokens", 1, max_len as i64)?,
    ) {
        (Some(n), _) | (None, Some(n)) => n as usize,
        // OpenAI's legacy default for completions; chat runs to the end of the context.
        (None, None) => match api {
            Api::Completions => 16.min(room),
            Api::Chat => room,
        },
    };
    let top_k = match b.int("top_k", i64::MIN, u32::MAX as i64)? {
        None | Some(-1) | Some(0) => 0,
        Some(k) if k > 0 => k as usize,
        Some(k) => {
            return Err(ApiError::field(
                "top_k",
                format!("top_k must be -1 (off) or positive, got {k}"),
            ))
        }
    };
    let stop_token_ids = match b.get("stop_token_ids") {
        None => vec![],
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| token_id("stop_token_ids", v, vocab))
            .collect::<Result<_, _>>()?,
        Some(v) => return Err(wrong("stop_token_ids", "an array of token ids", v)),
    };
    let p = SamplingParams {
        n: b.int("n", 1, MAX_N as i64)?.unwrap_or(1) as usize,
        // OpenAI's default; 0 is greedy.
        temperature: b.f32("temperature")?.unwrap_or(1.0),
        top_p: b.f32("top_p")?.unwrap_or(1.0),
        top_k,
        min_p: b.f32("min_p")?.unwrap_or(0.0),
        seed: match b.int("seed", i64::MIN, i64::MAX)? {
            Some(s) => s as u64,
            None => fresh_seed(),
        },
        repetition_penalty: b.f32("repetition_penalty")?.unwrap_or(1.0),
        presence_penalty: b.f32("presence_penalty")?.unwrap_or(0.0),
        frequency_penalty: b.f32("frequency_penalty")?.unwrap_or(0.0),
        logit_bias: logit_bias(b, vocab)?,
        max_tokens,
        min_tokens: b.int("min_tokens", 0, max_len as i64)?.unwrap_or(0) as usize,
        stop: stops(b)?,
        stop_token_ids,
        ignore_eos: b.bool("ignore_eos")?.unwrap_or(false),
        logprobs: logprobs(b, api)?,
    };
    // The engine's own checks (ranges, min_tokens <= max_tokens, ...).
    p.validate(vocab, max_len)?;
    if prompt_len + p.max_tokens > max_len {
        return Err(ApiError::field(
            "max_tokens",
            format!(
                "the prompt ({prompt_len} tokens) + max_tokens ({}) is more than the {max_len} tokens this model serves",
                p.max_tokens
            ),
        ));
    }
    Ok(p)
}
