//! The HTTP endpoints.

use super::body::{token_id, wrong, Body};
use super::error::ApiError;
use super::generation::{self, Job};
use super::params::{self, Api};
use super::{prompt, AppState};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use std::convert::Infallible;
use std::sync::Arc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;

type S = State<Arc<AppState>>;

/// Checks the `model` field: absent or the served model's name means the
/// base model; a loaded adapter's name means that adapter (returned).
fn check_model(s: &AppState, b: &Body) -> Result<Option<String>, ApiError> {
    match b.string("model")? {
        None => Ok(None),
        Some(m) if m == s.model_name => Ok(None),
        Some(m) => {
            let adapters = s.engine.lora_names();
            if adapters.iter().any(|a| a == m) {
                return Ok(Some(m.to_string()));
            }
            let mut served = vec![format!("{:?}", s.model_name)];
            served.extend(adapters.iter().map(|a| format!("{a:?}")));
            Err(ApiError {
                status: StatusCode::NOT_FOUND,
                message: format!(
                    "model {m:?} does not exist; this server serves {}",
                    served.join(", ")
                ),
                param: Some("model".into()),
            })
        }
    }
}

async fn generate(s: Arc<AppState>, api: Api, bytes: Bytes) -> Result<Response, ApiError> {
    let b = Body::parse(&bytes)?;
    let lora = check_model(&s, &b)?;
    let delivery = params::delivery(&b)?;
    let prompts = match api {
        Api::Completions => prompt::completion_prompts(&s, &b)?,
        Api::Chat => vec![prompt::chat_prompt(&s, &b)?],
    };
    let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
    let sampling = params::sampling(&b, api, s.vocab, s.max_model_len, longest)?;
    let jobs = prompts
        .into_iter()
        .map(|p| Job {
            prompt: p,
            params: sampling.clone(),
        })
        .collect();
    let run = generation::start(&s, api, jobs, lora).await?;
    if !delivery.stream {
        return Ok(Json(generation::collect(run).await?).into_response());
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<String>(64);
    tokio::spawn(generation::stream(run, delivery.include_usage, tx));
    let events =
        ReceiverStream::new(rx).map(|data| Ok::<_, Infallible>(Event::default().data(data)));
    Ok(Sse::new(events).into_response())
}

pub async fn completions(State(s): S, bytes: Bytes) -> Result<Response, ApiError> {
    generate(s, Api::Completions, bytes).await
}

pub async fn chat(State(s): S, bytes: Bytes) -> Result<Response, ApiError> {
    generate(s, Api::Chat, bytes).await
}

/// The base model, then each LoRA adapter (its `parent` is the base model).
pub async fn models(State(s): S) -> Json<Value> {
    let mut data = vec![json!({
        "id": s.model_name,
        "object": "model",
        "created": s.created,
        "owned_by": "tessera",
        "root": s.model_name,
        "parent": null,
        "max_model_len": s.max_model_len,
    })];
    for name in s.engine.lora_names() {
        data.push(json!({
            "id": name,
            "object": "model",
            "created": s.created,
            "owned_by": "tessera",
            "root": name,
            "parent": s.model_name,
            "max_model_len": s.max_model_len,
        }));
    }
    Json(json!({"object": "list", "data": data}))
}

pub async fn health(State(s): S) -> Response {
    if s.engine.gauges().alive {
        StatusCode::OK.into_response()
    } else {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the engine has stopped").into_response()
    }
}

pub async fn metrics(State(s): S) -> Response {
    let text = s.metrics.render(&s.engine.gauges());
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

/// `{"prompt": "..."}` or `{"messages": [...]}` to token ids.
pub async fn tokenize(State(s): S, bytes: Bytes) -> Result<Json<Value>, ApiError> {
    let b = Body::parse(&bytes)?;
    check_model(&s, &b)?;
    let tokens = if b.get("messages").is_some() {
        prompt::chat_prompt(&s, &b)?
    } else {
        match b.get("prompt") {
            Some(Value::String(t)) => {
                let tok = s
                    .tokenizer
                    .as_ref()
                    .ok_or_else(|| ApiError::bad_request("this model has no tokenizer"))?;
                let add_special = b.bool("add_special_tokens")?.unwrap_or(true);
                tok.encode(t, add_special)?
            }
            Some(v) => return Err(wrong("prompt", "a string", v)),
            None => return Err(ApiError::field("prompt", "prompt or messages is required")),
        }
    };
    Ok(Json(
        json!({"tokens": tokens, "count": tokens.len(), "max_model_len": s.max_model_len}),
    ))
}

pub async fn detokenize(State(s): S, bytes: Bytes) -> Result<Json<Value>, ApiError> {
    let b = Body::parse(&bytes)?;
    check_model(&s, &b)?;
    let ids = match b.get("tokens") {
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| token_id("tokens", v, s.vocab))
            .collect::<Result<Vec<_>, _>>()?,
        Some(v) => return Err(wrong("tokens", "an array of token ids", v)),
        None => return Err(ApiError::field("tokens", "tokens is required")),
    };
    let tok = s
        .tokenizer
        .as_ref()
        .ok_or_else(|| ApiError::bad_request("this model has no tokenizer"))?;
    Ok(Json(json!({"prompt": tok.decode(&ids, false)?})))
}

pub async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "no such endpoint; see /v1/models, /v1/completions, /v1/chat/completions",
    )
}
