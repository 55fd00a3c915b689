//! One API request as engine requests: submitted together (one per prompt),
//! their outputs merged, and turned into OpenAI's response or SSE chunks.
//! Dropping a `Run` drops the engine receivers, which aborts the requests and
//! frees their blocks: that is how a client that goes away is handled.

use super::error::ApiError;
use super::params::Api;
use super::AppState;
use axum::http::StatusCode;
use futures_util::stream::{select_all, BoxStream};
use futures_util::StreamExt;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;
use tessera_core::engine::{FinishReason, RequestOutput, SamplingParams, TokenLogprob};
use tokio_stream::wrappers::UnboundedReceiverStream;

pub struct Job {
    pub prompt: Vec<u32>,
    pub params: SamplingParams,
}

/// Latency bookkeeping for `/metrics`, per engine request and sample.
struct Timing {
    start: Instant,
    first: bool,
    last: HashMap<usize, Instant>,
    open: usize,
}

pub struct Run {
    pub id: String,
    pub created: u64,
    pub api: Api,
    /// Samples per prompt.
    pub n: usize,
    pub prompt_tokens: usize,
    logprobs: bool,
    outputs: BoxStream<'static, (usize, RequestOutput)>,
    timing: Vec<Timing>,
    state: Arc<AppState>,
    /// The `model` the response names: the adapter's, or the served model's.
    lora: Option<String>,
}

/// Submits every job (with LoRA adapter `lora`, or the base model), or none:
/// a refusal drops the ones already queued.
pub async fn start(
    state: &Arc<AppState>,
    api: Api,
    jobs: Vec<Job>,
    lora: Option<String>,
) -> Result<Run, ApiError> {
    let samples: usize = jobs.iter().map(|j| j.params.n).sum();
    let waiting = state.engine.gauges().waiting as usize;
    if waiting + samples > state.max_waiting {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "the server is overloaded ({waiting} sequences waiting, limit {}); retry later",
                state.max_waiting
            ),
        ));
    }
    let id = state.new_id(match api {
        Api::Completions => "cmpl",
        Api::Chat => "chatcmpl",
    });
    let n = jobs.first().map_or(1, |j| j.params.n);
    let logprobs = jobs.first().is_some_and(|j| j.params.logprobs.is_some());
    let prompt_tokens = jobs.iter().map(|j| j.prompt.len()).sum();
    let mut streams = Vec::with_capacity(jobs.len());
    let mut timing = Vec::with_capacity(jobs.len());
    for (k, job) in jobs.into_iter().enumerate() {
        let open = job.params.n;
        let rx = state
            .engine
            .submit(
                &format!("{id}-{k}"),
                job.prompt,
                job.params,
                0,
                lora.as_deref(),
            )
            .await?;
        streams.push(
            UnboundedReceiverStream::new(rx)
                .map(move |o| (k, o))
                .boxed(),
        );
        timing.push(Timing {
            start: Instant::now(),
            first: false,
            last: HashMap::new(),
            open,
        });
    }
    state.metrics.prompt_tokens(prompt_tokens);
    Ok(Run {
        id,
        created: super::unix_time(),
        api,
        n,
        prompt_tokens,
        logprobs,
        outputs: select_all(streams).boxed(),
        timing,
        state: state.clone(),
        lora,
    })
}

pub fn finish_reason(f: &FinishReason) -> &'static str {
    match f {
        FinishReason::Stop => "stop",
        FinishReason::Length => "length",
        FinishReason::Abort => "abort",
        FinishReason::Error(_) => "error",
    }
}

impl Run {
    /// The next output, with its choice index; `None` when all are done.
    pub async fn next(&mut self) -> Option<(usize, RequestOutput)> {
        let (k, o) = self.outputs.next().await?;
        let now = Instant::now();
        let m = &self.state.metrics;
        m.generation_tokens(o.token_ids.len());
        if let Some(t) = self.timing.get_mut(k) {
            if !o.token_ids.is_empty() {
                if !t.first {
                    t.first = true;
                    m.ttft(now - t.start);
                } else if let Some(prev) = t.last.get(&o.index) {
                    m.itl(now - *prev);
                }
                t.last.insert(o.index, now);
            }
            if o.finish_reason.is_some() {
                t.open = t.open.saturating_sub(1);
                if t.open == 0 {
                    m.e2e(now - t.start);
                }
            }
        }
        Some((k * self.n + o.index, o))
    }

    pub fn model(&self) -> &str {
        self.lora.as_deref().unwrap_or(&self.state.model_name)
    }

    fn token_text(&self, id: u32) -> String {
        match self.state.tokenizer.as_ref() {
            Some(t) => t
                .decode(&[id], false)
                .ok()
                .or_else(|| t.id_to_token(id))
                .unwrap_or_default(),
            None => format!("<{id}>"),
        }
    }

    /// Log-probabilities of `lps` in this API's shape, as one chunk's worth;
    /// `offset` is the text length before them (completions' `text_offset`).
    pub fn logprobs_json(&self, lps: &[TokenLogprob], offset: usize) -> Value {
        if !self.logprobs {
            return Value::Null;
        }
        match self.api {
            Api::Completions => {
                let (mut tokens, mut lp, mut top, mut offs) = (vec![], vec![], vec![], vec![]);
                let mut at = offset;
                for l in lps {
                    let t = self.token_text(l.token);
                    offs.push(at);
                    at += t.len();
                    tokens.push(t);
                    lp.push(l.logprob);
                    let alts: serde_json::Map<String, Value> = l
                        .top
                        .iter()
                        .map(|&(id, p)| (self.token_text(id), json!(p)))
                        .collect();
                    top.push(Value::Object(alts));
                }
                json!({"tokens": tokens, "token_logprobs": lp, "top_logprobs": top, "text_offset": offs})
            }
            Api::Chat => {
                let entry = |id: u32, p: f32| {
                    let t = self.token_text(id);
                    json!({"token": t, "logprob": p, "bytes": t.as_bytes()})
                };
                let content: Vec<Value> = lps
                    .iter()
                    .map(|l| {
                        let mut e = entry(l.token, l.logprob);
                        e["top_logprobs"] = l.top.iter().map(|&(id, p)| entry(id, p)).collect();
                        e
                    })
                    .collect();
                json!({ "content": content })
            }
        }
    }

    pub fn usage(&self, completion_tokens: usize) -> Value {
        json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": self.prompt_tokens + completion_tokens,
        })
    }
}

/// Runs to the end and builds the whole response.
pub async fn collect(mut run: Run) -> Result<Value, ApiError> {
    struct Choice {
        text: String,
        logprobs: Vec<TokenLogprob>,
        finish: Option<FinishReason>,
        tokens: usize,
    }
    let mut choices: std::collections::BTreeMap<usize, Choice> = Default::default();
    while let Some((index, o)) = run.next().await {
        let c = choices.entry(index).or_insert(Choice {
            text: String::new(),
            logprobs: vec![],
            finish: None,
            tokens: 0,
        });
        c.text.push_str(&o.text);
        c.logprobs.extend(o.logprobs);
        c.tokens += o.token_ids.len();
        if let Some(FinishReason::Error(e)) = &o.finish_reason {
            return Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("generation failed: {e}"),
            ));
        }
        if o.finish_reason.is_some() {
            c.finish = o.finish_reason;
        }
    }
    let completion_tokens = choices.values().map(|c| c.tokens).sum();
    let list: Vec<Value> = choices
        .iter()
        .map(|(&index, c)| {
            let finish = c.finish.as_ref().map(finish_reason);
            let logprobs = run.logprobs_json(&c.logprobs, 0);
            match run.api {
                Api::Completions => json!({
                    "index": index, "text": c.text, "logprobs": logprobs, "finish_reason": finish,
                }),
                Api::Chat => json!({
                    "index": index,
                    "message": {"role": "assistant", "content": c.text},
                    "logprobs": logprobs,
                    "finish_reason": finish,
                }),
            }
        })
        .collect();
    Ok(json!({
        "id": run.id,
        "object": match run.api { Api::Completions => "text_completion", Api::Chat => "chat.completion" },
        "created": run.created,
        "model": run.model(),
        "choices": list,
        "usage": run.usage(completion_tokens),
    }))
}

/// The SSE chunks of a run, as JSON strings, ending with `[DONE]`. Sent
/// through `tx`; stops (dropping the run, so aborting it) when the client is gone.
pub async fn stream(mut run: Run, include_usage: bool, tx: tokio::sync::mpsc::Sender<String>) {
    let object = match run.api {
        Api::Completions => "text_completion",
        Api::Chat => "chat.completion.chunk",
    };
    let chunk = |run: &Run, choices: Value| {
        json!({"id": run.id, "object": object, "created": run.created, "model": run.model(), "choices": choices})
            .to_string()
    };
    let mut offsets: HashMap<usize, usize> = HashMap::new();
    let mut completion_tokens = 0;
    let mut greeted = std::collections::HashSet::new();
    while let Some((index, o)) = run.next().await {
        completion_tokens += o.token_ids.len();
        if let Some(FinishReason::Error(e)) = &o.finish_reason {
            let err = ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("generation failed: {e}"),
            );
            let _ = tx.send(err.body().to_string()).await;
            break;
        }
        let offset = offsets.entry(index).or_default();
        let logprobs = run.logprobs_json(&o.logprobs, *offset);
        *offset += o.text.len();
        let finish = o.finish_reason.as_ref().map(finish_reason);
        let choice = match run.api {
            Api::Completions => {
                json!({"index": index, "text": o.text, "logprobs": logprobs, "finish_reason": finish})
            }
            Api::Chat => {
                // The first chunk of each choice names the role, as OpenAI's do.
                let delta = if greeted.insert(index) {
                    json!({"role": "assistant", "content": o.text})
                } else {
                    json!({"content": o.text})
                };
                json!({"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish})
            }
        };
        if tx.send(chunk(&run, json!([choice]))).await.is_err() {
            return; // the client went away: dropping `run` aborts its requests
        }
    }
    if include_usage {
        let mut last: Value = serde_json::from_str(&chunk(&run, json!([]))).unwrap_or(Value::Null);
        last["usage"] = run.usage(completion_tokens);
        let _ = tx.send(last.to_string()).await;
    }
    let _ = tx.send("[DONE]".to_string()).await;
}
