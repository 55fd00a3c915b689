//! The server's hard edges on a live `tessera serve`: a table of malformed
//! requests, each answered with its 4xx in OpenAI's error shape while a normal
//! request right after still succeeds; 64 concurrent streams; 32 clients that
//! hang up mid-stream and one that gives up on a non-streamed request leave no
//! KV blocks behind; SIGTERM drains and exits 0.

mod common;

use futures_util::StreamExt;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const KEY: &str = "sk-edges";

async fn post(c: &reqwest::Client, url: &str, body: Vec<u8>, key: Option<&str>) -> (u16, String) {
    let mut req = c
        .post(url)
        .header("content-type", "application/json")
        .body(body);
    if let Some(k) = key {
        req = req.header("authorization", format!("Bearer {k}"));
    }
    let resp = req.send().await.expect("request sent");
    let status = resp.status().as_u16();
    (status, resp.text().await.unwrap_or_default())
}

/// A short request that must succeed.
async fn normal(c: &reqwest::Client, base: &str) {
    let body = json!({"prompt": "Hello", "max_tokens": 2, "temperature": 0}).to_string();
    let (status, text) = post(
        c,
        &format!("{base}/v1/completions"),
        body.into_bytes(),
        Some(KEY),
    )
    .await;
    assert_eq!(
        status, 200,
        "a normal request failed after a bad one: {text}"
    );
}

async fn metric(c: &reqwest::Client, base: &str, name: &str) -> f64 {
    let text = c
        .get(format!("{base}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics"))
}

/// (what, (path, body), expected status, a word the message or param must contain)
type Case = (&'static str, (&'static str, Vec<u8>), u16, &'static str);

#[test]
fn malformed_requests_get_their_4xx_and_the_server_keeps_serving() {
    let server = common::Server::start(&["--api-key", KEY, "--max-model-len", "2048"]);
    let base = server.url.clone();
    let cmpl = |v: Value| ("/v1/completions", v.to_string().into_bytes());
    let chat = |v: Value| ("/v1/chat/completions", v.to_string().into_bytes());
    let raw = |path: &'static str, s: &str| (path, s.as_bytes().to_vec());
    let user = json!([{"role": "user", "content": "hi"}]);
    let cases: Vec<Case> = vec![
        ("invalid JSON", raw("/v1/completions", "{bad"), 400, "JSON"),
        (
            "body is an array",
            raw("/v1/completions", "[]"),
            400,
            "object",
        ),
        (
            "body is a string",
            raw("/v1/chat/completions", "\"hi\""),
            400,
            "object",
        ),
        ("empty body", raw("/v1/completions", ""), 400, "JSON"),
        (
            "missing prompt",
            cmpl(json!({"max_tokens": 1})),
            400,
            "prompt",
        ),
        (
            "prompt is a number",
            cmpl(json!({"prompt": 5})),
            400,
            "prompt",
        ),
        ("empty prompt", cmpl(json!({"prompt": ""})), 400, "prompt"),
        (
            "empty prompt array",
            cmpl(json!({"prompt": []})),
            400,
            "prompt",
        ),
        (
            "out-of-vocabulary prompt id",
            cmpl(json!({"prompt": [999999]})),
            400,
            "prompt",
        ),
        (
            "negative prompt id",
            cmpl(json!({"prompt": [-1]})),
            400,
            "prompt",
        ),
        (
            "prompt beyond the context",
            cmpl(json!({"prompt": vec![100; 2100]})),
            400,
            "2048",
        ),
        (
            "negative max_tokens",
            cmpl(json!({"prompt": "x", "max_tokens": -1})),
            400,
            "max_tokens",
        ),
        (
            "huge max_tokens",
            cmpl(json!({"prompt": "x", "max_tokens": 1_000_000_000u64})),
            400,
            "max_tokens",
        ),
        (
            "max_tokens is a string",
            cmpl(json!({"prompt": "x", "max_tokens": "ten"})),
            400,
            "max_tokens",
        ),
        (
            "negative temperature",
            cmpl(json!({"prompt": "x", "temperature": -1})),
            400,
            "temperature",
        ),
        (
            "temperature is a string",
            cmpl(json!({"prompt": "x", "temperature": "hot"})),
            400,
            "temperature",
        ),
        (
            "top_p 0",
            cmpl(json!({"prompt": "x", "top_p": 0})),
            400,
            "top_p",
        ),
        (
            "top_p above 1",
            cmpl(json!({"prompt": "x", "top_p": 1.5})),
            400,
            "top_p",
        ),
        (
            "top_k -5",
            cmpl(json!({"prompt": "x", "top_k": -5})),
            400,
            "top_k",
        ),
        ("n 0", cmpl(json!({"prompt": "x", "n": 0})), 400, "n"),
        ("n 1000", cmpl(json!({"prompt": "x", "n": 1000})), 400, "n"),
        (
            "logprobs 50",
            cmpl(json!({"prompt": "x", "logprobs": 50})),
            400,
            "logprobs",
        ),
        (
            "logit_bias id out of vocabulary",
            cmpl(json!({"prompt": "x", "logit_bias": {"999999": 1}})),
            400,
            "logit_bias",
        ),
        (
            "logit_bias key not a number",
            cmpl(json!({"prompt": "x", "logit_bias": {"abc": 1}})),
            400,
            "logit_bias",
        ),
        (
            "logit_bias value too big",
            cmpl(json!({"prompt": "x", "logit_bias": {"5": 1000}})),
            400,
            "logit_bias",
        ),
        (
            "stop_token_ids out of vocabulary",
            cmpl(json!({"prompt": "x", "stop_token_ids": [999999]})),
            400,
            "stop_token_ids",
        ),
        (
            "stop is a number",
            cmpl(json!({"prompt": "x", "stop": 5})),
            400,
            "stop",
        ),
        (
            "presence_penalty 5",
            cmpl(json!({"prompt": "x", "presence_penalty": 5})),
            400,
            "presence_penalty",
        ),
        (
            "repetition_penalty 0",
            cmpl(json!({"prompt": "x", "repetition_penalty": 0})),
            400,
            "repetition_penalty",
        ),
        (
            "min_tokens above max_tokens",
            cmpl(json!({"prompt": "x", "max_tokens": 2, "min_tokens": 5})),
            400,
            "min_tokens",
        ),
        (
            "seed is a string",
            cmpl(json!({"prompt": "x", "seed": "x"})),
            400,
            "seed",
        ),
        (
            "stream is a string",
            cmpl(json!({"prompt": "x", "stream": "yes"})),
            400,
            "stream",
        ),
        (
            "stream_options without stream",
            cmpl(json!({"prompt": "x", "stream_options": {"include_usage": true}})),
            400,
            "stream_options",
        ),
        (
            "tools",
            chat(json!({"messages": user, "tools": []})),
            400,
            "tools",
        ),
        (
            "unknown model",
            cmpl(json!({"prompt": "x", "model": "gpt-4"})),
            404,
            "model",
        ),
        (
            "missing messages",
            chat(json!({"max_tokens": 1})),
            400,
            "messages",
        ),
        (
            "empty messages",
            chat(json!({"messages": []})),
            400,
            "messages",
        ),
        (
            "invalid role",
            chat(json!({"messages": [{"role": "wizard", "content": "hi"}]})),
            400,
            "role",
        ),
        (
            "missing content",
            chat(json!({"messages": [{"role": "user"}]})),
            400,
            "content",
        ),
        (
            "message not an object",
            chat(json!({"messages": ["hi"]})),
            400,
            "messages[0]",
        ),
        (
            "image content part",
            chat(
                json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}),
            ),
            400,
            "content",
        ),
        (
            "top_logprobs without logprobs",
            chat(json!({"messages": user, "top_logprobs": 2})),
            400,
            "top_logprobs",
        ),
        (
            "tokenize without prompt",
            ("/tokenize", json!({}).to_string().into_bytes()),
            400,
            "prompt",
        ),
        (
            "detokenize out of vocabulary",
            (
                "/detokenize",
                json!({"tokens": [999999]}).to_string().into_bytes(),
            ),
            400,
            "tokens",
        ),
        (
            "body over the limit",
            ("/v1/completions", vec![b' '; 5 << 20]),
            413,
            "large",
        ),
    ];
    assert!(cases.len() >= 30);
    let rt = common::runtime();
    rt.block_on(async {
        let c = common::client();
        let mut failures = vec![];
        for (what, (path, body), want, word) in cases {
            let (status, text) = post(&c, &format!("{base}{path}"), body, Some(KEY)).await;
            let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            let e = &v["error"];
            let shaped = e["message"].is_string()
                && e["type"].is_string()
                && e.get("param").is_some()
                && e.get("code").is_some();
            let mentions = e["message"].as_str().unwrap_or_default().contains(word)
                || e["param"].as_str().unwrap_or_default().contains(word);
            if status != want || !shaped || !mentions {
                failures.push(format!("{what}: {status} (want {want}) {text}"));
            }
            normal(&c, &base).await;
        }
        // Auth and routing.
        for (what, key, path, want) in [
            ("no key", None, "/v1/completions", 401),
            ("wrong key", Some("sk-wrong"), "/v1/completions", 401),
            ("unknown endpoint", Some(KEY), "/v1/embeddings", 404),
        ] {
            let body = json!({"prompt": "x", "max_tokens": 1})
                .to_string()
                .into_bytes();
            let (status, text) = post(&c, &format!("{base}{path}"), body, key).await;
            let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            if status != want || !v["error"]["message"].is_string() {
                failures.push(format!("{what}: {status} (want {want}) {text}"));
            }
        }
        let get = c
            .get(format!("{base}/v1/completions"))
            .header("authorization", format!("Bearer {KEY}"))
            .send()
            .await
            .expect("get");
        if get.status().as_u16() != 405 {
            failures.push(format!("GET /v1/completions: {}", get.status()));
        }
        // A body too large is not read to its end, so the connection cannot be
        // reused: the answer must say so, or the client's next request on it fails.
        let big = c
            .post(format!("{base}/v1/completions"))
            .header("authorization", format!("Bearer {KEY}"))
            .body(vec![b' '; 5 << 20])
            .send()
            .await
            .expect("large body");
        let closes = big
            .headers()
            .get("connection")
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
        if big.status().as_u16() != 413 || !closes {
            failures.push(format!(
                "large body: {} without connection: close ({:?})",
                big.status(),
                big.headers()
            ));
        }
        for _ in 0..3 {
            normal(&c, &base).await;
        }
        assert!(
            failures.is_empty(),
            "{} cases wrong:\n{}",
            failures.len(),
            failures.join("\n")
        );
        let health = c
            .get(format!("{base}/health"))
            .send()
            .await
            .expect("health");
        assert_eq!(health.status().as_u16(), 200);
        normal(&c, &base).await;
        // Every refused request is counted by status.
        let text = c
            .get(format!("{base}/metrics"))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .unwrap_or_default();
        assert!(
            text.contains("tessera_requests_total{endpoint=\"/v1/completions\",status=\"400\"}"),
            "{text}"
        );
    });
}

/// Opens a streamed completion; returns the response (headers read).
async fn open_stream(c: &reqwest::Client, base: &str, max_tokens: usize) -> reqwest::Response {
    let body = json!({
        "prompt": "Tell me a story about a dragon",
        "max_tokens": max_tokens,
        "temperature": 0.8,
        "seed": 1,
        "ignore_eos": true,
        "stream": true,
    });
    let resp = c
        .post(format!("{base}/v1/completions"))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .expect("stream request");
    assert_eq!(resp.status().as_u16(), 200);
    resp
}

#[test]
fn concurrent_streams_complete_and_dropped_clients_free_their_blocks() {
    let server = common::Server::start(&["--max-num-seqs", "64"]);
    let base = server.url.clone();
    let rt = common::runtime();
    rt.block_on(async {
        let c = common::client();
        // 64 clients at once, each reading its stream to [DONE].
        let tasks: Vec<_> = (0..64)
            .map(|_| {
                let (c, base) = (c.clone(), base.clone());
                tokio::spawn(async move {
                    let mut body = open_stream(&c, &base, 16).await.bytes_stream();
                    let mut all = Vec::new();
                    while let Some(chunk) = body.next().await {
                        all.extend_from_slice(&chunk.expect("chunk"));
                    }
                    let text = String::from_utf8_lossy(&all).to_string();
                    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
                    assert_eq!(
                        text.matches("\"finish_reason\":\"length\"").count(),
                        1,
                        "{text}"
                    );
                })
            })
            .collect();
        for t in tasks {
            t.await.expect("a streaming client failed");
        }
        // 32 clients that hang up after their first chunk of a long stream.
        let tasks: Vec<_> = (0..32)
            .map(|_| {
                let (c, base) = (c.clone(), base.clone());
                tokio::spawn(async move {
                    let mut body = open_stream(&c, &base, 1000).await.bytes_stream();
                    let first = body.next().await;
                    assert!(first.is_some_and(|c| c.is_ok()), "no first chunk");
                    // Dropping the body closes the connection mid-stream.
                })
            })
            .collect();
        for t in tasks {
            t.await.expect("a disconnecting client failed");
        }
        // A non-streaming client that gives up after a second.
        let impatient = reqwest::Client::builder()
            .timeout(Duration::from_secs(1))
            .build()
            .expect("client");
        let body = json!({"prompt": "Tell me a story", "max_tokens": 1000, "ignore_eos": true});
        let gave_up = impatient
            .post(format!("{base}/v1/completions"))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await;
        assert!(
            gave_up.is_err(),
            "a 1000-token request answered within a second"
        );
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let used = metric(&c, &base, "tessera_kv_blocks_used").await;
            let running = metric(&c, &base, "tessera_num_requests_running").await;
            if used == 0.0 && running == 0.0 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{used} KV blocks still used, {running} running after clients left"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // The dropped requests never ran to their 1000 tokens.
        let generated = metric(&c, &base, "tessera_generation_tokens_total").await;
        assert!(
            generated < 64.0 * 16.0 + 32.0 * 1000.0 / 2.0,
            "generated {generated}"
        );
        let hist = metric(&c, &base, "tessera_time_to_first_token_seconds_count").await;
        assert!(hist >= 96.0, "TTFT observed {hist} times");
    });
}

#[test]
fn sigterm_finishes_in_flight_requests_and_exits_zero() {
    let mut server = common::Server::start(&[]);
    let base = server.url.clone();
    let rt = common::runtime();
    let pid = server.child.id();
    let answer = rt.block_on(async {
        let c = common::client();
        let pending = {
            let (c, base) = (c.clone(), base.clone());
            tokio::spawn(async move {
                let body = json!({"prompt": "Count to ten:", "max_tokens": 128, "ignore_eos": true, "temperature": 0});
                post(&c, &format!("{base}/v1/completions"), body.to_string().into_bytes(), None).await
            })
        };
        // Once the request runs in the engine, ask the server to stop.
        let deadline = Instant::now() + Duration::from_secs(60);
        while metric(&c, &base, "tessera_num_requests_running").await < 1.0 {
            assert!(Instant::now() < deadline, "the request never started");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let killed = std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status();
        assert!(killed.is_ok_and(|s| s.success()), "kill -TERM failed");
        pending.await.expect("client task")
    });
    assert_eq!(
        answer.0, 200,
        "the in-flight request was not finished: {}",
        answer.1
    );
    let v: Value = serde_json::from_str(&answer.1).expect("JSON");
    assert_eq!(v["usage"]["completion_tokens"], 128);
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = server.child.try_wait().expect("wait") {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "the server did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "exit status {status}");
    let log: Vec<String> = server.log.try_iter().collect();
    assert!(log.iter().any(|l| l.contains("shutting down")), "{log:?}");
}
