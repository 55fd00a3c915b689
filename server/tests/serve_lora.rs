//! LoRA over HTTP on a live `tessera serve` with the tiny Llama fixture and
//! PEFT's adapters (`conformance/fixtures/lora`): `model` picks the adapter
//! and each answers PEFT's greedy tokens, alone and all at once; `/v1/models`
//! lists them; runtime load/unload confined to `--lora-dir`; every bad adapter
//! or path gets a 400 that names the problem while the server keeps serving;
//! without `--allow-runtime-lora` the endpoints are off.

mod common;

use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use tessera_conformance::{fixtures_dir, Golden};
use tessera_core::model::lora::{random_adapter, save_adapter, Target, WEIGHTS_FILE};
use tessera_core::model::{self};

async fn post(c: &reqwest::Client, url: String, body: Value) -> (u16, Value) {
    let resp = c
        .post(url)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .expect("request sent");
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap_or_default();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// Greedy token ids for `prompt` under `model`, read back from the logprobs
/// (the fixture has no tokenizer, so each token shows as `<id>`).
async fn greedy(
    c: &reqwest::Client,
    base: &str,
    model: &str,
    prompt: &[u32],
    n: usize,
) -> Vec<u32> {
    let (status, body) = post(
        c,
        format!("{base}/v1/completions"),
        json!({"model": model, "prompt": prompt, "max_tokens": n, "temperature": 0,
               "logprobs": 1, "ignore_eos": true}),
    )
    .await;
    assert_eq!(status, 200, "{model}: {body}");
    assert_eq!(body["model"], model, "the response names the adapter");
    body["choices"][0]["logprobs"]["tokens"]
        .as_array()
        .expect("tokens")
        .iter()
        .map(|t| {
            let s = t.as_str().expect("token text");
            s.trim_start_matches('<')
                .trim_end_matches('>')
                .parse()
                .expect("token id")
        })
        .collect()
}

struct Scratch(PathBuf);
impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("read dir") {
        let e = e.expect("entry");
        std::fs::copy(e.path(), to.join(e.file_name())).expect("copy");
    }
}

/// A `--lora-dir` with `b` (PEFT's), and one broken adapter per way to be wrong.
fn lora_dir(tiny: &Path) -> Scratch {
    let top = std::env::temp_dir().join(format!("tessera-serve-lora-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&top);
    let dir = top.join("adapters");
    let fixtures = fixtures_dir().join("lora");
    copy_dir(&fixtures.join("b"), &dir.join("b"));
    let cfg = model::open(tiny.to_str().expect("utf-8"))
        .expect("tiny")
        .config;
    save_adapter(
        &random_adapter("big", &cfg, 16, &[Target::Q], 1),
        &dir.join("rank16"),
    )
    .expect("save");
    let mut wider = cfg.clone();
    wider.hidden_size *= 2;
    save_adapter(
        &random_adapter("w", &wider, 4, &[Target::Q], 2),
        &dir.join("wrong-shape"),
    )
    .expect("save");
    copy_dir(&fixtures.join("a"), &dir.join("unknown-target"));
    let config = dir.join("unknown-target/adapter_config.json");
    let text = std::fs::read_to_string(&config).expect("config");
    std::fs::write(&config, text.replace("\"v_proj\"", "\"lm_head\"")).expect("write");
    copy_dir(&fixtures.join("a"), &dir.join("truncated"));
    let weights = dir.join("truncated").join(WEIGHTS_FILE);
    let bytes = std::fs::read(&weights).expect("weights");
    std::fs::write(&weights, &bytes[..bytes.len() / 2]).expect("truncate");
    // Outside the folder, and a symlink inside it that leads there.
    copy_dir(&fixtures.join("b"), &top.join("outside"));
    #[cfg(unix)]
    std::os::unix::fs::symlink(top.join("outside"), dir.join("escape")).expect("symlink");
    Scratch(top)
}

#[test]
fn adapters_answer_like_peft_and_bad_ones_get_400() {
    let tiny = fixtures_dir().join("tiny/llama_gqa_rope3");
    let scratch = lora_dir(&tiny);
    let dir = scratch.0.join("adapters");
    let a = fixtures_dir().join("lora/a");
    let server = common::Server::start(&[
        "--model",
        tiny.to_str().expect("utf-8"),
        "--device",
        "cpu",
        "--served-model-name",
        "tiny",
        "--lora",
        &format!("a={}", a.display()),
        "--max-loras",
        "2",
        "--max-lora-rank",
        "8",
        "--allow-runtime-lora",
        "--lora-dir",
        dir.to_str().expect("utf-8"),
    ]);
    let base = server.url.clone();
    let golden = Golden::load(&fixtures_dir().join("lora/golden.safetensors")).expect("golden");
    let p0 = golden.ids("p0.input_ids").expect("p0");
    let want = |k: &str| {
        golden
            .ids(&format!("p0.greedy.{k}"))
            .expect("golden tokens")
    };
    common::runtime().block_on(async {
        let c = common::client();
        let n = want("a").len();
        let models = |c: reqwest::Client| {
            let base = base.clone();
            async move {
                let text = c
                    .get(format!("{base}/v1/models"))
                    .send()
                    .await
                    .expect("models")
                    .text()
                    .await
                    .expect("body");
                let v: Value = serde_json::from_str(&text).expect("json");
                v["data"]
                    .as_array()
                    .expect("data")
                    .iter()
                    .map(|m| {
                        (
                            m["id"].as_str().unwrap_or("").to_string(),
                            m["parent"].clone(),
                        )
                    })
                    .collect::<Vec<_>>()
            }
        };
        assert_eq!(
            models(c.clone()).await,
            vec![("tiny".into(), Value::Null), ("a".into(), json!("tiny"))]
        );
        assert_eq!(greedy(&c, &base, "tiny", &p0, n).await, want("base"));
        assert_eq!(greedy(&c, &base, "a", &p0, n).await, want("a"));

        // b at run time, by a path relative to --lora-dir.
        let (status, body) = post(
            &c,
            format!("{base}/v1/load_lora_adapter"),
            json!({"lora_name": "b", "lora_path": "b"}),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(greedy(&c, &base, "b", &p0, n).await, want("b"));
        // All three at once, in shared steps.
        let (x, y, z) = tokio::join!(
            greedy(&c, &base, "tiny", &p0, n),
            greedy(&c, &base, "a", &p0, n),
            greedy(&c, &base, "b", &p0, n)
        );
        assert_eq!((x, y, z), (want("base"), want("a"), want("b")));

        let bad: [(&str, Value, &str); 9] = [
            (
                "rank over the limit",
                json!({"lora_name": "r", "lora_path": "rank16"}),
                "rank",
            ),
            (
                "unknown target",
                json!({"lora_name": "u", "lora_path": "unknown-target"}),
                "lm_head",
            ),
            (
                "wrong shapes",
                json!({"lora_name": "w", "lora_path": "wrong-shape"}),
                "shape",
            ),
            (
                "truncated weights",
                json!({"lora_name": "t", "lora_path": "truncated"}),
                "safetensors",
            ),
            (
                "outside --lora-dir",
                json!({"lora_name": "o", "lora_path": scratch.0.join("outside").to_str()}),
                "outside --lora-dir",
            ),
            (
                "symlink escape",
                json!({"lora_name": "s", "lora_path": "escape"}),
                "outside --lora-dir",
            ),
            (
                "../ in the path",
                json!({"lora_name": "p", "lora_path": "../outside"}),
                "..",
            ),
            (
                "../ in the name",
                json!({"lora_name": "../b", "lora_path": "b"}),
                "lora_name",
            ),
            (
                "name taken",
                json!({"lora_name": "a", "lora_path": "b"}),
                "already loaded",
            ),
        ];
        for (what, body, word) in bad {
            let (status, answer) = post(&c, format!("{base}/v1/load_lora_adapter"), body).await;
            assert_eq!(status, 400, "{what}: {answer}");
            let text = answer.to_string();
            assert!(text.contains(word), "{what}: {word:?} not in {text}");
            // The server keeps serving, the good adapters untouched.
            assert_eq!(greedy(&c, &base, "a", &p0, 2).await, want("a")[..2]);
        }
        let names: Vec<String> = models(c.clone()).await.into_iter().map(|m| m.0).collect();
        assert_eq!(names, vec!["tiny", "a", "b"]);

        // Unload: b is gone for new requests.
        let (status, body) = post(
            &c,
            format!("{base}/v1/unload_lora_adapter"),
            json!({"lora_name": "b"}),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        let (status, body) = post(
            &c,
            format!("{base}/v1/completions"),
            json!({"model": "b", "prompt": p0, "max_tokens": 1}),
        )
        .await;
        assert_eq!(status, 404, "{body}");
        assert!(
            body.to_string().contains("\\\"a\\\""),
            "lists what is served: {body}"
        );
        let (status, _) = post(
            &c,
            format!("{base}/v1/unload_lora_adapter"),
            json!({"lora_name": "b"}),
        )
        .await;
        assert_eq!(status, 404);
        let metrics = c
            .get(format!("{base}/metrics"))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .unwrap_or_default();
        assert!(
            metrics.contains("tessera_lora_slot_loads_total"),
            "{metrics}"
        );
    });
}

#[test]
fn runtime_loading_is_off_unless_asked_and_bad_start_flags_are_refused() {
    let tiny = fixtures_dir().join("tiny/llama_gqa_rope3");
    let server =
        common::Server::start(&["--model", tiny.to_str().expect("utf-8"), "--device", "cpu"]);
    common::runtime().block_on(async {
        let c = common::client();
        let (status, body) = post(
            &c,
            format!("{}/v1/load_lora_adapter", server.url),
            json!({"lora_name": "b", "lora_path": "/tmp"}),
        )
        .await;
        assert_eq!(status, 404, "{body}");
        assert!(body.to_string().contains("--allow-runtime-lora"), "{body}");
    });
    drop(server);
    let tiny = tiny.to_str().expect("utf-8").to_string();
    let a = fixtures_dir().join("lora/a").display().to_string();
    for (args, word) in [
        (vec!["--allow-runtime-lora"], "--lora-dir"),
        (vec!["--lora", "a"], "NAME=PATH"),
        (vec!["--lora", "x=/nonexistent/adapter"], "does not exist"),
        (vec!["--lora", &format!("../a={a}")], "'..'"),
        (
            vec!["--lora", &format!("a={a}"), "--max-lora-rank", "4"],
            "rank",
        ),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tessera"))
            .args(["serve", "--port", "0", "--device", "cpu", "--model", &tiny])
            .args(&args)
            .output()
            .expect("run tessera serve");
        assert!(!out.status.success(), "{args:?} started");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(word), "{args:?}: {word:?} not in {err}");
    }
}
