//! Prompts to token ids: completions' four prompt forms, and chat messages
//! through the model's chat template.

use super::body::{token_id, wrong, Body};
use super::error::ApiError;
use super::AppState;
use serde_json::Value;
use tessera_core::model::chat_template::ChatMessage;

/// Most prompts one completions request may batch.
const MAX_PROMPTS: usize = 64;
/// Roles a chat message may have.
const ROLES: &[&str] = &["system", "developer", "user", "assistant"];

fn encode(s: &AppState, text: &str, param: &str) -> Result<Vec<u32>, ApiError> {
    let tok = s.tokenizer.as_ref().ok_or_else(|| {
        ApiError::field(
            param,
            "this model has no tokenizer: send token ids as the prompt",
        )
    })?;
    Ok(tok.encode(text, true)?)
}

fn ids(s: &AppState, list: &[Value]) -> Result<Vec<u32>, ApiError> {
    list.iter()
        .map(|v| token_id("prompt", v, s.vocab))
        .collect()
}

/// `prompt`: a string, an array of strings, an array of token ids, or an
/// array of arrays of token ids. Every prompt must be non-empty.
pub fn completion_prompts(s: &AppState, b: &Body) -> Result<Vec<Vec<u32>>, ApiError> {
    let prompts = match b.get("prompt") {
        None => return Err(ApiError::field("prompt", "prompt is required")),
        Some(Value::String(t)) => vec![encode(s, t, "prompt")?],
        Some(Value::Array(a)) if a.is_empty() => {
            return Err(ApiError::field("prompt", "prompt is an empty array"))
        }
        Some(Value::Array(a)) => match &a[0] {
            Value::Number(_) => vec![ids(s, a)?],
            Value::String(_) | Value::Array(_) => a
                .iter()
                .map(|p| match p {
                    Value::String(t) => encode(s, t, "prompt"),
                    Value::Array(inner) => ids(s, inner),
                    other => Err(wrong("prompt", "strings or arrays of token ids", other)),
                })
                .collect::<Result<_, _>>()?,
            other => return Err(wrong("prompt", "a string, strings or token ids", other)),
        },
        Some(v) => return Err(wrong("prompt", "a string or an array", v)),
    };
    if prompts.len() > MAX_PROMPTS {
        return Err(ApiError::field(
            "prompt",
            format!(
                "at most {MAX_PROMPTS} prompts per request, got {}",
                prompts.len()
            ),
        ));
    }
    if prompts.iter().any(|p| p.is_empty()) {
        return Err(ApiError::field("prompt", "a prompt is empty"));
    }
    Ok(prompts)
}

/// A message's text: a string, or an array of `{"type": "text", "text": ...}` parts.
fn content(i: usize, m: &serde_json::Map<String, Value>) -> Result<String, ApiError> {
    let param = format!("messages[{i}].content");
    match m.get("content") {
        None | Some(Value::Null) => Err(ApiError::field(&param, format!("{param} is required"))),
        Some(Value::String(t)) => Ok(t.clone()),
        Some(Value::Array(parts)) => parts
            .iter()
            .map(|p| match (p.get("type").and_then(Value::as_str), p.get("text").and_then(Value::as_str)) {
                (Some("text"), Some(t)) => Ok(t.to_string()),
                _ => Err(ApiError::field(
                    &param,
                    format!("{param} parts must be {{\"type\": \"text\", \"text\": ...}}; other kinds are not supported"),
                )),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(|t| t.concat()),
        Some(v) => Err(wrong(&param, "a string or an array of text parts", v)),
    }
}

/// `messages` rendered with the model's chat template, ready to generate the
/// assistant's turn.
pub fn chat_prompt(s: &AppState, b: &Body) -> Result<Vec<u32>, ApiError> {
    let list = match b.get("messages") {
        None => return Err(ApiError::field("messages", "messages is required")),
        Some(Value::Array(a)) if a.is_empty() => {
            return Err(ApiError::field("messages", "messages is empty"))
        }
        Some(Value::Array(a)) => a,
        Some(v) => return Err(wrong("messages", "an array of messages", v)),
    };
    let mut messages = Vec::with_capacity(list.len());
    for (i, m) in list.iter().enumerate() {
        let Value::Object(m) = m else {
            return Err(wrong(&format!("messages[{i}]"), "an object", m));
        };
        let role = match m.get("role") {
            Some(Value::String(r)) if ROLES.contains(&r.as_str()) => r.clone(),
            Some(Value::String(r)) => {
                return Err(ApiError::field(
                    &format!("messages[{i}].role"),
                    format!("role {r:?} is not one of {}", ROLES.join(", ")),
                ))
            }
            Some(v) => return Err(wrong(&format!("messages[{i}].role"), "a string", v)),
            None => {
                return Err(ApiError::field(
                    &format!("messages[{i}].role"),
                    format!("messages[{i}].role is required"),
                ))
            }
        };
        // Templates know system, user and assistant; developer is OpenAI's new name for system.
        let role = if role == "developer" {
            "system".to_string()
        } else {
            role
        };
        messages.push(ChatMessage {
            role,
            content: content(i, m)?,
        });
    }
    let tmpl = s.template.as_ref().ok_or_else(|| {
        ApiError::field(
            "messages",
            "this model has no chat template; use /v1/completions",
        )
    })?;
    let text = tmpl.render(&messages, true)?;
    let prompt = encode(s, &text, "messages")?;
    if prompt.is_empty() {
        return Err(ApiError::field("messages", "the rendered chat is empty"));
    }
    Ok(prompt)
}
