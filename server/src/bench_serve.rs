//! `tessera bench serve`: online serving benchmark against a running
//! OpenAI-compatible server such as `tessera serve` (like `vllm bench serve`).
//!
//! It sends `--num-prompts` streaming `POST {url}/v1/completions` requests. Each
//! prompt is exactly `--input-len` random token ids, sent as a list of ids so the
//! client needs no tokenizer, and each request must generate exactly
//! `--output-len` tokens (`max_tokens` = `min_tokens`, `ignore_eos`). Requests
//! arrive as a Poisson process at `--request-rate` per second (`inf`: all at
//! once), optionally capped at `--max-concurrency` in flight. From each
//! server-sent-event stream it times, relative to when the request was sent:
//! - TTFT: the first token chunk (one with a choice in it);
//! - ITL: the gaps between consecutive token chunks;
//! - TPOT: (E2E - TTFT) / (output tokens - 1), one value per request;
//! - E2E: `data: [DONE]`.
//!
//! It prints throughput over the whole run and the mean / median / p99 of each
//! latency as a table, and writes the same numbers as JSON.
//!
//! A token chunk is any chunk whose `choices` is not empty, even if its `text` is
//! "": a token can decode to nothing (half a UTF-8 character, a model without a
//! tokenizer such as `random:*`), and it was still generated. vLLM's client counts
//! the same way, so the numbers compare.

use crate::sse::SseParser;
use anyhow::{anyhow, bail, Context};
use futures_util::StreamExt;
use serde::Serialize;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tessera_core::model::random::splitmix64;
use tokio::sync::Semaphore;
use tokio::time::Instant;

/// A request that makes no progress (no headers, no body bytes) for this long fails.
const STALL_TIMEOUT: Duration = Duration::from_secs(300);
/// Distinct error messages kept for the report.
const MAX_ERRORS: usize = 5;
/// The prompts are generated up front: keep them to a sane amount of memory.
const MAX_PROMPT_TOKENS_TOTAL: usize = 1 << 28;

#[derive(clap::Args)]
pub struct ServeArgs {
    /// Server root; requests go to `{url}/v1/completions`.
    #[arg(long, default_value = "http://127.0.0.1:8000")]
    url: String,
    /// `model` to request (default: the first id listed by `{url}/v1/models`).
    #[arg(long)]
    model: Option<String>,
    /// Requests to send.
    #[arg(long, default_value_t = 64)]
    num_prompts: usize,
    /// Mean requests per second, Poisson arrivals (`inf`: send all at once).
    #[arg(long, default_value_t = f64::INFINITY)]
    request_rate: f64,
    /// Prompt length in tokens.
    #[arg(long, default_value_t = 128)]
    input_len: usize,
    /// Tokens generated per request (forced with min_tokens and ignore_eos).
    #[arg(long, default_value_t = 128)]
    output_len: usize,
    /// Seed for the prompts and the arrival times.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Sent as `Authorization: Bearer KEY`.
    #[arg(long)]
    api_key: Option<String>,
    /// Most requests in flight at once (default: no cap).
    #[arg(long)]
    max_concurrency: Option<usize>,
    /// Where to write the JSON results.
    #[arg(long, default_value = "bench-results/serve.json")]
    json: PathBuf,
}

pub fn run(a: ServeArgs) -> anyhow::Result<()> {
    let base = base_url(&a.url)?;
    if a.num_prompts == 0 || a.input_len == 0 || a.output_len == 0 {
        bail!("--num-prompts, --input-len and --output-len must be at least 1");
    }
    if a.num_prompts.saturating_mul(a.input_len) > MAX_PROMPT_TOKENS_TOTAL {
        bail!("--num-prompts x --input-len is over {MAX_PROMPT_TOKENS_TOTAL} tokens");
    }
    if a.request_rate.is_nan() || a.request_rate <= 0.0 {
        bail!(
            "--request-rate must be > 0 (or inf), got {}",
            a.request_rate
        );
    }
    if a.max_concurrency == Some(0) {
        bail!("--max-concurrency must be at least 1");
    }
    let mut rng = Rng(a.seed);
    let prompts: Vec<Vec<u32>> = (0..a.num_prompts)
        .map(|_| random_prompt(&mut rng, a.input_len))
        .collect();
    let arrivals = arrival_times(a.num_prompts, a.request_rate, &mut rng);

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let report = rt.block_on(bench(&a, &base, prompts, arrivals))?;
    print_report(&report);
    if let Some(dir) = a.json.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(&a.json, serde_json::to_string_pretty(&report)?)
        .with_context(|| format!("writing {}", a.json.display()))?;
    println!("results written to {}", a.json.display());
    if report.successful_requests == 0 {
        bail!("all {} requests failed", report.failed_requests);
    }
    Ok(())
}

/// The server root without a trailing `/` (nor `/v1`, as OpenAI clients' base URLs have).
fn base_url(url: &str) -> anyhow::Result<String> {
    let parsed = reqwest::Url::parse(url)
        .with_context(|| format!("--url {url:?} is not a URL like http://127.0.0.1:8000"))?;
    match parsed.scheme() {
        "http" => {}
        "https" => bail!("--url {url}: https is not supported (built without TLS)"),
        s => bail!("--url {url}: scheme {s:?} is not http (expected http://HOST:PORT)"),
    }
    let base = url.trim_end_matches('/');
    Ok(base.strip_suffix("/v1").unwrap_or(base).to_string())
}

async fn bench(
    a: &ServeArgs,
    base: &str,
    prompts: Vec<Vec<u32>>,
    arrivals: Vec<f64>,
) -> anyhow::Result<Report> {
    // No proxy: a benchmark through one would measure the proxy too.
    let client = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(30))
        .no_proxy()
        .build()
        .context("building the HTTP client")?;
    let model = resolve_model(&client, base, a.api_key.as_deref(), a.model.as_deref()).await?;
    println!(
        "benchmarking {model} at {base}: {} prompts, {} in / {} out tokens, rate {} req/s, max concurrency {}",
        a.num_prompts,
        a.input_len,
        a.output_len,
        a.request_rate,
        a.max_concurrency.map_or("none".into(), |c| c.to_string()),
    );
    // Serialize every body before the clock starts so dispatch is only sleeps and spawns.
    let bodies: Vec<String> = prompts
        .iter()
        .map(|p| {
            serde_json::json!({
                "model": model, "prompt": p,
                "max_tokens": a.output_len, "min_tokens": a.output_len, "ignore_eos": true,
                "temperature": 0.0, "stream": true, "stream_options": {"include_usage": true},
            })
            .to_string()
        })
        .collect();
    let ctx = Arc::new(Ctx {
        client,
        url: format!("{base}/v1/completions"),
        key: a.api_key.clone(),
        input_len: a.input_len,
    });
    let limiter = (a.max_concurrency).map(|c| Arc::new(Semaphore::new(c.min(a.num_prompts))));

    let t0 = Instant::now();
    let mut tasks = Vec::with_capacity(bodies.len());
    for (body, at) in bodies.into_iter().zip(arrivals) {
        // Capped at ~30 years so that an absurdly low rate cannot overflow the Instant.
        tokio::time::sleep_until(t0 + Duration::from_secs_f64(at.min(1e9))).await;
        let (ctx, limiter) = (ctx.clone(), limiter.clone());
        tasks.push(tokio::spawn(async move {
            // The permit caps requests in flight, not arrivals: a late request waits here
            // and its clock starts when it is actually sent, as in vLLM.
            let _permit = match limiter {
                Some(l) => l.acquire_owned().await.ok(),
                None => None,
            };
            ctx.stream_one(body).await.map_err(|e| format!("{e:#}"))
        }));
    }
    let mut outcomes = Vec::with_capacity(tasks.len());
    for t in tasks {
        outcomes.push(
            t.await
                .map_err(|e| format!("request task: {e}"))
                .and_then(|r| r),
        );
    }
    let duration = t0.elapsed().as_secs_f64();
    Ok(summarize(a, base, model, duration, &outcomes))
}

/// `--model`, or the first model the server lists. Either way this first GET also
/// checks that the server is reachable: one clear error instead of N failed requests.
async fn resolve_model(
    client: &reqwest::Client,
    base: &str,
    key: Option<&str>,
    given: Option<&str>,
) -> anyhow::Result<String> {
    let url = format!("{base}/v1/models");
    let mut req = client.get(&url);
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    let resp = within(Duration::from_secs(30), req.send())
        .await
        .and_then(|r| r.map_err(anyhow::Error::from))
        .with_context(|| format!("cannot reach the server at {base}"))?;
    if let Some(m) = given {
        return Ok(m.to_string());
    }
    if resp.status() != reqwest::StatusCode::OK {
        return Err(http_error(resp).await).with_context(|| format!("GET {url}"));
    }
    let body = read_capped(resp, 1 << 20).await?;
    let v: serde_json::Value =
        serde_json::from_slice(&body).with_context(|| format!("GET {url}: not JSON"))?;
    // Indexing a serde_json::Value never panics: a missing field reads as null.
    let id = v["data"][0]["id"].as_str();
    id.map(str::to_string)
        .with_context(|| format!("no model listed at {url}; pass --model NAME"))
}

/// What one successful request measured; times in seconds from when it was sent.
struct Outcome {
    ttft: f64,
    itl: Vec<f64>,
    e2e: f64,
    prompt_tokens: usize,
    output_tokens: usize,
}

/// What every request task shares.
struct Ctx {
    client: reqwest::Client,
    /// `{base}/v1/completions`.
    url: String,
    key: Option<String>,
    input_len: usize,
}

impl Ctx {
    /// Sends one streaming completion and times its chunks.
    async fn stream_one(&self, body: String) -> anyhow::Result<Outcome> {
        let mut req = self
            .client
            .post(&self.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body);
        if let Some(k) = &self.key {
            req = req.bearer_auth(k);
        }
        let start = Instant::now();
        let resp = within(STALL_TIMEOUT, req.send()).await??;
        if resp.status() != reqwest::StatusCode::OK {
            return Err(http_error(resp).await);
        }
        let mut stream = resp.bytes_stream();
        let mut sse = SseParser::default();
        let (mut ttft, mut last, mut itl, mut token_chunks) = (None, 0.0, vec![], 0);
        let (mut prompt_tokens, mut completion_tokens) = (None, None);
        'read: loop {
            let bytes = match within(STALL_TIMEOUT, stream.next()).await? {
                None => bail!("the stream ended before data: [DONE]"),
                Some(b) => b.context("reading the stream")?,
            };
            for data in sse.push(&bytes)? {
                if data == "[DONE]" {
                    break 'read;
                }
                let v: serde_json::Value = serde_json::from_str(&data).with_context(|| {
                    format!("bad event: {}", data.chars().take(200).collect::<String>())
                })?;
                if let Some(err) = v.get("error").filter(|e| !e.is_null()) {
                    bail!("server error in stream: {err}");
                }
                // The usage-only chunk at the end has `"choices": []`.
                if v["choices"].as_array().is_some_and(|c| !c.is_empty()) {
                    let now = start.elapsed().as_secs_f64();
                    match ttft {
                        None => ttft = Some(now),
                        Some(_) => itl.push(now - last),
                    }
                    last = now;
                    token_chunks += 1;
                }
                // Only the final chunk has usage with include_usage; the others say null.
                let usage = &v["usage"];
                prompt_tokens = usage["prompt_tokens"].as_u64().or(prompt_tokens);
                completion_tokens = usage["completion_tokens"].as_u64().or(completion_tokens);
            }
        }
        let e2e = start.elapsed().as_secs_f64();
        let ttft = ttft.context("the stream carried no token")?;
        Ok(Outcome {
            ttft,
            itl,
            e2e,
            prompt_tokens: prompt_tokens.map_or(self.input_len, |n| n as usize),
            output_tokens: completion_tokens.map_or(token_chunks, |n| n as usize),
        })
    }
}

/// A non-200 answer as an error: the status and the start of the body, where
/// OpenAI-style servers say what was wrong.
async fn http_error(resp: reqwest::Response) -> anyhow::Error {
    let status = resp.status();
    let body = read_capped(resp, 4096).await.unwrap_or_default();
    let text: String = String::from_utf8_lossy(&body)
        .trim()
        .chars()
        .take(300)
        .collect();
    anyhow!("HTTP {status}: {text}")
}

/// `fut`'s output, or a timeout error after `limit`.
async fn within<T>(limit: Duration, fut: impl Future<Output = T>) -> anyhow::Result<T> {
    tokio::time::timeout(limit, fut)
        .await
        .map_err(|_| anyhow!("timed out: no progress for {} s", limit.as_secs()))
}

/// At most `limit` bytes of a response body (error bodies and model lists are small;
/// a misbehaving server must not make us buffer without bound).
async fn read_capped(resp: reqwest::Response, limit: usize) -> anyhow::Result<Vec<u8>> {
    let (mut out, mut stream) = (vec![], resp.bytes_stream());
    while let Some(bytes) = within(STALL_TIMEOUT, stream.next()).await? {
        let bytes = bytes?;
        out.extend_from_slice(&bytes[..bytes.len().min(limit - out.len())]);
        if out.len() == limit {
            break;
        }
    }
    Ok(out)
}

/// splitmix64 stream: deterministic for a seed, good enough for prompts and arrivals.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        let z = splitmix64(self.0);
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z
    }

    /// Uniform in [0, 1), from the top 53 bits.
    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Token ids in 1000..10000: inside the default model's 49152-token vocabulary and
/// clear of the low ids where tokenizers keep special tokens.
fn random_prompt(rng: &mut Rng, len: usize) -> Vec<u32> {
    (0..len)
        .map(|_| 1000 + (rng.next_u64() % 9000) as u32)
        .collect()
}

/// Send times (s from the start) of `n` requests as a Poisson process at `rate`:
/// exponential gaps with mean 1/rate, by inverting the CDF (-ln(1 - u) / rate).
/// The first request goes at 0; with an infinite rate they all do.
fn arrival_times(n: usize, rate: f64, rng: &mut Rng) -> Vec<f64> {
    let mut t = 0.0;
    (0..n)
        .map(|i| {
            if i > 0 && rate.is_finite() {
                t += -(1.0 - rng.next_f64()).ln() / rate;
            }
            t
        })
        .collect()
}

/// Mean, median and p99 of a latency, in ms.
#[derive(Serialize)]
struct Stats {
    mean: f64,
    median: f64,
    p99: f64,
}

fn mean(xs: &[f64]) -> f64 {
    if xs.is_empty() {
        return 0.0;
    }
    xs.iter().sum::<f64>() / xs.len() as f64
}

/// The `p`-th percentile (0..=100) of ascending `sorted`, interpolating linearly
/// between the two nearest ranks at rank p/100 * (n - 1): numpy's default, which
/// vLLM's report uses, so the numbers compare. 0 for an empty list.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    let Some(last) = sorted.len().checked_sub(1) else {
        return 0.0;
    };
    let rank = p.clamp(0.0, 100.0) / 100.0 * last as f64;
    let (lo, hi) = (rank.floor() as usize, rank.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (rank - lo as f64)
}

/// Stats of `seconds`, reported in ms; None when there is no sample.
fn stats(mut seconds: Vec<f64>) -> Option<Stats> {
    if seconds.is_empty() {
        return None;
    }
    seconds.iter_mut().for_each(|x| *x *= 1000.0);
    seconds.sort_by(f64::total_cmp);
    let (mean, median, p99) = (
        mean(&seconds),
        percentile(&seconds, 50.0),
        percentile(&seconds, 99.0),
    );
    Some(Stats { mean, median, p99 })
}

#[derive(Serialize)]
struct Report {
    url: String,
    model: String,
    num_prompts: usize,
    /// A number, or "inf".
    request_rate: serde_json::Value,
    max_concurrency: Option<usize>,
    input_len: usize,
    output_len: usize,
    seed: u64,
    successful_requests: usize,
    failed_requests: usize,
    duration_s: f64,
    total_input_tokens: usize,
    total_output_tokens: usize,
    request_throughput: f64,
    output_throughput: f64,
    total_token_throughput: f64,
    ttft_ms: Option<Stats>,
    tpot_ms: Option<Stats>,
    itl_ms: Option<Stats>,
    e2el_ms: Option<Stats>,
    /// The first few distinct error messages.
    errors: Vec<String>,
}

type Outcomes = [Result<Outcome, String>];

fn summarize(a: &ServeArgs, base: &str, model: String, duration: f64, outs: &Outcomes) -> Report {
    let ok: Vec<&Outcome> = outs.iter().filter_map(|o| o.as_ref().ok()).collect();
    let mut errors: Vec<String> = vec![];
    for e in outs.iter().filter_map(|o| o.as_ref().err()) {
        if errors.len() < MAX_ERRORS && !errors.contains(e) {
            errors.push(e.clone());
        }
    }
    let total_in: usize = ok.iter().map(|o| o.prompt_tokens).sum();
    let total_out: usize = ok.iter().map(|o| o.output_tokens).sum();
    let per_s = |x: usize| x as f64 / duration.max(1e-9);
    let tpot = ok.iter().filter(|o| o.output_tokens > 1);
    Report {
        url: base.to_string(),
        model,
        num_prompts: a.num_prompts,
        request_rate: serde_json::Number::from_f64(a.request_rate).map_or("inf".into(), Into::into),
        max_concurrency: a.max_concurrency,
        input_len: a.input_len,
        output_len: a.output_len,
        seed: a.seed,
        successful_requests: ok.len(),
        failed_requests: outs.len() - ok.len(),
        duration_s: duration,
        total_input_tokens: total_in,
        total_output_tokens: total_out,
        request_throughput: per_s(ok.len()),
        output_throughput: per_s(total_out),
        total_token_throughput: per_s(total_in + total_out),
        ttft_ms: stats(ok.iter().map(|o| o.ttft).collect()),
        tpot_ms: stats(
            tpot.map(|o| (o.e2e - o.ttft) / (o.output_tokens - 1) as f64)
                .collect(),
        ),
        itl_ms: stats(ok.iter().flat_map(|o| o.itl.iter().copied()).collect()),
        e2el_ms: stats(ok.iter().map(|o| o.e2e).collect()),
        errors,
    }
}

fn print_report(r: &Report) {
    let rate = r.request_rate.to_string().replace('"', "");
    let concurrency = r.max_concurrency.map_or("none".into(), |c| c.to_string());
    let f2 = |x: f64| format!("{x:.2}");
    println!("{:=^50}", " Serving Benchmark Result ");
    for (label, value) in [
        ("Model:", r.model.clone()),
        ("URL:", r.url.clone()),
        ("Request rate (req/s):", rate),
        ("Max concurrency:", concurrency),
        (
            "Input / output length:",
            format!("{} / {}", r.input_len, r.output_len),
        ),
        ("Successful requests:", r.successful_requests.to_string()),
        ("Failed requests:", r.failed_requests.to_string()),
        ("Benchmark duration (s):", f2(r.duration_s)),
        ("Total input tokens:", r.total_input_tokens.to_string()),
        ("Total generated tokens:", r.total_output_tokens.to_string()),
        ("Request throughput (req/s):", f2(r.request_throughput)),
        ("Output token throughput (tok/s):", f2(r.output_throughput)),
        (
            "Total token throughput (tok/s):",
            f2(r.total_token_throughput),
        ),
    ] {
        println!("{label:<40} {value}");
    }
    let sections = [
        ("Time to First Token", "TTFT", &r.ttft_ms),
        (
            "Time per Output Token (excl. 1st token)",
            "TPOT",
            &r.tpot_ms,
        ),
        ("Inter-token Latency", "ITL", &r.itl_ms),
        ("End-to-end Latency", "E2EL", &r.e2el_ms),
    ];
    for (title, short, s) in sections {
        println!("{title:-^50}");
        let pick = |x: fn(&Stats) -> f64| s.as_ref().map_or("-".into(), |s| f2(x(s)));
        for (name, value) in [
            ("Mean", pick(|s| s.mean)),
            ("Median", pick(|s| s.median)),
            ("P99", pick(|s| s.p99)),
        ] {
            println!("{:<40} {value}", format!("{name} {short} (ms):"));
        }
    }
    println!("{}", "=".repeat(50));
    for e in &r.errors {
        eprintln!("request error: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_interpolates_between_ranks() {
        let xs = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0];
        assert_eq!(percentile(&xs, 50.0), 5.5);
        assert!((percentile(&xs, 99.0) - 9.91).abs() < 1e-12);
        assert_eq!(percentile(&xs, 0.0), 1.0);
        assert_eq!(percentile(&xs, 100.0), 10.0);
        assert_eq!(percentile(&[7.0], 99.0), 7.0);
        assert_eq!(percentile(&[], 50.0), 0.0);
        assert_eq!(mean(&xs), 5.5);
    }

    #[test]
    fn poisson_gaps_have_mean_one_over_rate() {
        let (n, rate) = (20_000, 8.0);
        let t = arrival_times(n, rate, &mut Rng(0));
        let gaps: Vec<f64> = t.windows(2).map(|w| w[1] - w[0]).collect();
        assert!(gaps.iter().all(|&g| g >= 0.0));
        // The standard error of the mean is (1/rate)/sqrt(n), about 0.7% here.
        assert!(
            (mean(&gaps) * rate - 1.0).abs() < 0.03,
            "mean gap {}",
            mean(&gaps)
        );
        assert!(arrival_times(5, f64::INFINITY, &mut Rng(0))
            .iter()
            .all(|&t| t == 0.0));
    }

    #[test]
    fn prompts_are_seeded_and_in_range() {
        let p = random_prompt(&mut Rng(3), 1000);
        assert_eq!(p, random_prompt(&mut Rng(3), 1000));
        assert!(p.iter().all(|&t| (1000..10000).contains(&t)));
    }

    #[test]
    fn base_url_is_checked() {
        assert_eq!(base_url("http://h:8000/").unwrap(), "http://h:8000");
        assert_eq!(base_url("http://h:8000/v1").unwrap(), "http://h:8000");
        assert!(base_url("localhost:8000").is_err());
        assert!(base_url("not a url").is_err());
    }
}
