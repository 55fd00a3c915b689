//! `tessera serve`: the OpenAI-compatible HTTP server (axum on tokio) in front
//! of the engine thread. `routes.rs` has the endpoints, `prompt.rs` and
//! `params.rs` turn request fields into engine requests, `generation.rs` runs
//! them and shapes the answers, `lora.rs` loads and unloads adapters,
//! `metrics.rs` is `/metrics`, `error.rs` the OpenAI error shape.

mod body;
mod error;
mod generation;
mod lora;
mod metrics;
mod params;
mod prompt;
mod routes;

use crate::session::{ModelArgs, Session};
use crate::throughput::EngineArgs;
use anyhow::Context;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use error::ApiError;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tessera_core::engine::EngineHandle;
use tessera_core::model::chat_template::ChatTemplate;
use tessera_core::model::tokenizer::Tokenizer;

#[derive(clap::Args)]
pub struct ServeArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    engine: EngineArgs,
    /// Address to bind. Loopback by default; anything else exposes the server.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port (0 picks a free one; the ready line says which).
    #[arg(long, default_value_t = 8000)]
    port: u16,
    /// Require `Authorization: Bearer KEY` on the API endpoints.
    #[arg(long)]
    api_key: Option<String>,
    /// The model name clients use (default: the model's own name).
    #[arg(long)]
    served_model_name: Option<String>,
    /// Sequences allowed to wait for a batch slot; beyond it requests get 503.
    #[arg(long, default_value_t = 1024)]
    max_waiting: usize,
    /// Largest request body, in bytes; larger ones get 413.
    #[arg(long, default_value_t = 4 << 20)]
    max_body_bytes: usize,
    /// Seconds in-flight requests get to finish after SIGTERM/Ctrl-C before they are aborted.
    #[arg(long, default_value_t = 30)]
    shutdown_timeout: u64,
    /// On backends that compile per step shape (tpu), do not compile the decode
    /// buckets before serving (the first requests then wait for them).
    #[arg(long)]
    no_precompile: bool,
    /// A LoRA adapter served from the start, as NAME=PATH (a PEFT folder);
    /// repeat for more. Requests pick it with `"model": NAME`.
    #[arg(long = "lora", value_name = "NAME=PATH")]
    lora: Vec<String>,
    /// Enables POST /v1/load_lora_adapter and /v1/unload_lora_adapter; their
    /// paths must lie inside --lora-dir.
    #[arg(long)]
    allow_runtime_lora: bool,
    /// The folder that adapters loaded at run time must be in.
    #[arg(long, value_name = "DIR")]
    lora_dir: Option<std::path::PathBuf>,
}

/// Compiles the decode buckets of a bucketing backend before the server
/// accepts requests, with a progress bar on stderr.
fn precompile(engine: &mut tessera_core::engine::Engine, block_size: usize) -> anyhow::Result<()> {
    let seqs = engine.config.max_num_seqs.min(8);
    let blocks = engine
        .config
        .max_model_len
        .min(512)
        .div_ceil(block_size.max(1));
    let shapes = engine.runner.decode_buckets(seqs, blocks);
    let started = std::time::Instant::now();
    // A device that captures graphs (cuda) also records each bucket's graph.
    let what = if engine.runner.model.device.capabilities().graph_capture {
        "compiling and capturing"
    } else {
        "compiling"
    };
    engine.runner.precompile(&shapes, |done, total, shape, secs| {
        let width = 24;
        let filled = width * done / total.max(1);
        eprint!(
            "\rtessera: {what} step buckets [{}{}] {done}/{total} ({} seqs x {} blocks: {secs:.1}s)   ",
            "#".repeat(filled),
            ".".repeat(width - filled),
            shape.num_seqs,
            shape.max_blocks
        );
    })?;
    eprintln!(
        "\ntessera: compiled {} buckets in {:.1}s",
        shapes.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

pub struct AppState {
    engine: EngineHandle,
    tokenizer: Option<Arc<Tokenizer>>,
    template: Option<ChatTemplate>,
    model_name: String,
    max_model_len: usize,
    vocab: usize,
    api_key: Option<String>,
    max_waiting: usize,
    metrics: metrics::Metrics,
    created: u64,
    next_id: AtomicU64,
    /// Canonical `--lora-dir` when runtime loading is allowed.
    lora_dir: Option<std::path::PathBuf>,
}

impl AppState {
    fn new_id(&self, prefix: &str) -> String {
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        format!("{prefix}-{:x}{n:06x}", self.created)
    }
}

pub fn unix_time() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// 401 unless the request carries the key.
async fn auth(State(s): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    if let Some(key) = &s.api_key {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if given != Some(key.as_str()) {
            return ApiError::new(
                StatusCode::UNAUTHORIZED,
                "missing or wrong API key: send Authorization: Bearer <key>",
            )
            .into_response();
        }
    }
    next.run(req).await
}

/// Counts every response by endpoint and status, and gives the errors axum
/// produces itself (body too large, wrong method) OpenAI's JSON shape.
async fn observe(State(s): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let endpoint = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("other".to_string(), |p| p.as_str().to_string());
    let mut resp = next.run(req).await;
    let status = resp.status();
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if (status.is_client_error() || status.is_server_error()) && !is_json {
        let message = match status {
            StatusCode::PAYLOAD_TOO_LARGE => {
                "the request body is too large (see --max-body-bytes)".to_string()
            }
            StatusCode::METHOD_NOT_ALLOWED => "method not allowed on this endpoint".to_string(),
            other => other.canonical_reason().unwrap_or("error").to_string(),
        };
        resp = ApiError::new(status, message).into_response();
    }
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        // The rest of the body was never read, so hyper drops the connection
        // after this answer; saying so keeps the client from reusing it for
        // its next request (which would then fail as an incomplete message).
        resp.headers_mut().insert(
            header::CONNECTION,
            header::HeaderValue::from_static("close"),
        );
    }
    s.metrics.request(&endpoint, status.as_u16());
    resp
}

fn router(state: Arc<AppState>, max_body: usize) -> Router {
    let api = Router::new()
        .route("/v1/completions", post(routes::completions))
        .route("/v1/chat/completions", post(routes::chat))
        .route("/v1/models", get(routes::models))
        .route("/v1/load_lora_adapter", post(lora::load))
        .route("/v1/unload_lora_adapter", post(lora::unload))
        .route("/tokenize", post(routes::tokenize))
        .route("/detokenize", post(routes::detokenize))
        .route_layer(middleware::from_fn_with_state(state.clone(), auth));
    Router::new()
        .merge(api)
        .route("/health", get(routes::health))
        .route("/metrics", get(routes::metrics))
        .fallback(routes::not_found)
        .layer(DefaultBodyLimit::max(max_body))
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state)
}

async fn signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

/// The checked LoRA flags: the runtime folder (canonical), and the start-up
/// adapters as (name, folder).
type LoraFlags = (Option<std::path::PathBuf>, Vec<(String, String)>);

fn lora_flags(a: &ServeArgs) -> anyhow::Result<LoraFlags> {
    let lora_dir = match (a.allow_runtime_lora, &a.lora_dir) {
        (false, None) => None,
        (false, Some(_)) => anyhow::bail!("--lora-dir is used only with --allow-runtime-lora"),
        (true, None) => anyhow::bail!(
            "--allow-runtime-lora needs --lora-dir DIR: the folder runtime-loaded adapters must be in"
        ),
        (true, Some(d)) => Some(d.canonicalize().with_context(|| {
            format!("--lora-dir {}: cannot open the folder", d.display())
        })?),
    };
    let mut adapters = vec![];
    for spec in &a.lora {
        let Some((name, path)) = spec.split_once('=') else {
            anyhow::bail!("--lora {spec:?}: write it as NAME=PATH (PATH: a PEFT adapter folder)");
        };
        adapters.push((name.to_string(), path.to_string()));
    }
    Ok((lora_dir, adapters))
}

pub fn run(mut a: ServeArgs) -> anyhow::Result<()> {
    let (lora_dir, adapters) = lora_flags(&a)?;
    a.engine.enable_lora |= a.allow_runtime_lora || !adapters.is_empty();
    let mut session = Session::open(&a.model)?;
    let mut engine = a.engine.build(&session)?;
    let served_name = a
        .served_model_name
        .clone()
        .unwrap_or_else(|| session.source.name.clone());
    for (name, path) in &adapters {
        lora::check_name(name, &served_name).map_err(|m| anyhow::anyhow!("--lora: {m}"))?;
        engine
            .load_lora(name, std::path::Path::new(path))
            .with_context(|| format!("--lora {name}={path}"))?;
    }
    let blocks = engine.block_stats().num_blocks;
    // A request as long as the model's context must fit the KV cache, or
    // every long default-length chat would be refused: serve what fits.
    let capacity = blocks * session.block_size;
    if engine.config.max_model_len > capacity {
        eprintln!(
            "tessera: the KV cache holds {capacity} tokens, less than the model's {}; serving at most {capacity} (raise --kv-cache-memory or lower --max-model-len)",
            engine.config.max_model_len
        );
        engine.config.max_model_len = capacity;
    }
    let max_model_len = engine.config.max_model_len;
    if !session.device.capabilities().exact_shapes && !a.no_precompile {
        precompile(&mut engine, session.block_size)?;
    }
    let vocab = session.source.config.vocab_size;
    let model_name = served_name;
    let device = session.device.name();
    let (handle, engine_thread) = EngineHandle::spawn(engine)?;
    let state = Arc::new(AppState {
        engine: handle.clone(),
        tokenizer: session.source.tokenizer.take().map(Arc::new),
        template: session.source.chat_template.take(),
        model_name: model_name.clone(),
        max_model_len,
        vocab,
        api_key: a.api_key.clone(),
        max_waiting: a.max_waiting,
        metrics: metrics::Metrics::default(),
        created: unix_time(),
        next_id: AtomicU64::new(0),
        lora_dir,
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let stopper = handle.clone();
    rt.block_on(async move {
        let addr = format!("{}:{}", a.host, a.port);
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        let local = listener.local_addr()?;
        eprintln!(
            "tessera: serving {model_name} on http://{local} (device {device}, {blocks} KV blocks, max model len {max_model_len})"
        );
        let grace = Duration::from_secs(a.shutdown_timeout);
        let shutdown = async move {
            signal().await;
            eprintln!("tessera: shutting down; in-flight requests get {}s to finish", grace.as_secs());
            // After the grace period, abort what is left: its streams end and
            // the server's wait for open connections returns.
            tokio::spawn(async move {
                tokio::time::sleep(grace).await;
                stopper.shutdown();
            });
        };
        axum::serve(listener, router(state, a.max_body_bytes))
            .with_graceful_shutdown(shutdown)
            .await
            .context("serving")?;
        anyhow::Ok(())
    })?;
    handle.shutdown();
    let _ = engine_thread.join();
    eprintln!("tessera: stopped");
    Ok(())
}
