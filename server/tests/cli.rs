//! The `tessera` binary as users run it: answers, device listing, and one clear
//! line on stderr (never a panic) for every kind of bad input.

use std::process::{Command, Output};

fn tessera(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(args)
        .output()
        .expect("run tessera")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A failed run: non-zero exit, exactly one line on stderr naming `needle`, no panic.
fn assert_clean_failure(args: &[&str], needle: &str) {
    let o = tessera(args);
    let err = stderr(&o);
    assert!(!o.status.success(), "{args:?} should fail");
    assert!(
        !err.contains("panicked") && !err.contains("RUST_BACKTRACE"),
        "{args:?} panicked: {err}"
    );
    assert_eq!(
        err.trim_end().lines().count(),
        1,
        "{args:?} should print one line, got: {err}"
    );
    assert!(
        err.contains(needle),
        "{args:?}: {err:?} does not mention {needle:?}"
    );
}

#[test]
fn devices_lists_cpu_available() {
    let o = tessera(&["devices"]);
    assert!(o.status.success());
    let out = String::from_utf8_lossy(&o.stdout);
    let cpu = out
        .lines()
        .find(|l| l.starts_with("cpu"))
        .expect("a cpu row");
    assert!(
        cpu.contains("available") && !cpu.contains("unavailable"),
        "{cpu}"
    );

    let o = tessera(&["devices", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON");
    let cpu = v
        .as_array()
        .expect("list")
        .iter()
        .find(|b| b["backend"] == "cpu")
        .expect("cpu entry");
    assert_eq!(cpu["available"], true);
    // No AMD GPU here: rocm is listed, unavailable, with its reason (the
    // HIP runtime missing, or present without a device).
    let rocm = v
        .as_array()
        .expect("list")
        .iter()
        .find(|b| b["backend"] == "rocm")
        .expect("rocm entry");
    if rocm["available"] == false {
        let text = rocm.to_string();
        assert!(
            text.contains("libamdhip64.so not found") || text.contains("no AMD GPU"),
            "{text}"
        );
    }
}

/// One binary for every machine: no vendor library is linked (each backend
/// opens its own at run time), so `ldd` lists none of them.
#[test]
fn the_binary_links_no_vendor_library() {
    let o = Command::new("ldd")
        .arg(env!("CARGO_BIN_EXE_tessera"))
        .output()
        .expect("run ldd");
    let libs = String::from_utf8_lossy(&o.stdout).to_lowercase();
    assert!(libs.contains("libc.so"), "ldd output: {libs}");
    for vendor in [
        "amdhip",
        "hiprtc",
        "rocblas",
        "hipblas",
        "hsa-runtime",
        "libcuda",
        "nvrtc",
        "cublas",
        "libze",
        "opencl",
        "libtpu",
    ] {
        assert!(!libs.contains(vendor), "the binary links {vendor}:\n{libs}");
    }
}

#[test]
fn default_model_answers_the_chat_question() {
    let o = tessera(&["generate", "--chat", "What is the capital of France?"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("Paris"), "answer: {out:?}");
}

#[test]
fn random_llama_3_2_1b_runs() {
    let o = tessera(&[
        "generate",
        "--model",
        "random:llama-3.2-1b",
        "--device",
        "cpu",
        "--max-tokens",
        "16",
        "hi",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let ids: Vec<u32> = String::from_utf8_lossy(&o.stdout)
        .split_whitespace()
        .map(|w| w.parse().expect("token id"))
        .collect();
    assert_eq!(ids.len(), 16);
    assert!(ids.iter().all(|&id| id < 128256));
    assert!(stderr(&o).contains("16 generated"), "{}", stderr(&o));
}

#[test]
fn bad_input_is_one_clear_line() {
    let dir = std::env::temp_dir().join(format!("tessera-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let junk = dir.join("junk.gguf");
    std::fs::write(&junk, b"this is not a model").expect("write");
    let bad_header = dir.join("bad-header.gguf");
    std::fs::write(
        &bad_header,
        b"GGUF\x03\x00\x00\x00\xff\xff\xff\xff\xff\xff\xff\x7f",
    )
    .expect("write");
    let (junk, bad_header) = (
        junk.to_str().expect("utf-8"),
        bad_header.to_str().expect("utf-8"),
    );

    assert_clean_failure(
        &["generate", "--device", "warp-drive", "x"],
        "unknown device",
    );
    assert_clean_failure(
        &["generate", "--model", "/no/such/model.gguf", "x"],
        "no such file",
    );
    assert_clean_failure(&["generate", "--model", junk, "x"], "not a GGUF file");
    assert_clean_failure(&["generate", "--model", bad_header, "x"], bad_header);
    assert_clean_failure(&["generate", "--no-such-flag", "x"], "--no-such-flag");
    assert_clean_failure(&["generate", "--temperature", "-1", "x"], "temperature");
    assert_clean_failure(&["generate", "--max-tokens", "1000000", "x"], "context");
    assert_clean_failure(
        &["generate", "--model", "random:not-a-preset", "x"],
        "not a preset",
    );
    assert_clean_failure(&["generate", "--dtype", "f8", "x"], "--dtype");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn bench_throughput_lora_mix_reports_both_runs() {
    let tiny = tessera_conformance::fixtures_dir().join("tiny/llama_gqa_rope3");
    let tiny = tiny.to_str().expect("utf-8").to_string();
    let json = std::env::temp_dir().join(format!("tessera-lora-mix-{}.json", std::process::id()));
    let json_arg = json.to_str().expect("utf-8");
    let o = tessera(&[
        "bench",
        "throughput",
        "--model",
        &tiny,
        "--device",
        "cpu",
        "--num-prompts",
        "6",
        "--input-len",
        "8",
        "--output-len",
        "5",
        "--lora-mix",
        "3",
        "--lora-rank",
        "4",
        "--max-loras",
        "2",
        "--json",
        json_arg,
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("base only") && out.contains("3 adapters"),
        "{out}"
    );
    assert!(out.contains("LoRA output tokens/s vs base"), "{out}");
    let text = std::fs::read_to_string(&json).expect("json written");
    let _ = std::fs::remove_file(&json);
    let v: serde_json::Value = serde_json::from_str(&text).expect("json");
    assert_eq!(v["lora_mix"], 3);
    assert!(
        v["output_tokens_per_s_ratio"]
            .as_f64()
            .is_some_and(|r| r > 0.0),
        "{v}"
    );
    // Every request of both runs produced all its tokens.
    for run in ["base", "lora"] {
        let steps = v[run]["steps"].as_u64().expect("steps");
        assert!(steps >= 5, "{run}: {steps} steps");
        let tps = v[run]["output_tokens_per_s"].as_f64().expect("tok/s");
        let elapsed = v[run]["elapsed_s"].as_f64().expect("elapsed");
        assert_eq!((tps * elapsed).round() as u64, 30, "{run}: 6 x 5 tokens");
    }
    // A rank above the slots is refused before anything runs.
    assert_clean_failure(
        &[
            "bench",
            "throughput",
            "--model",
            &tiny,
            "--device",
            "cpu",
            "--lora-mix",
            "2",
            "--lora-rank",
            "128",
        ],
        "--max-lora-rank",
    );
}

#[test]
fn generate_with_a_lora_adapter_gives_peft_greedy_tokens() {
    let fixtures = tessera_conformance::fixtures_dir().display().to_string();
    let golden = tessera_conformance::Golden::load(std::path::Path::new(&format!(
        "{fixtures}/lora/golden.safetensors"
    )))
    .expect("golden");
    let prompt: Vec<String> = golden
        .ids("p0.input_ids")
        .expect("p0")
        .iter()
        .map(u32::to_string)
        .collect();
    let tiny = format!("{fixtures}/tiny/llama_gqa_rope3");
    for (adapter, key) in [(None, "base"), (Some("a"), "a"), (Some("b"), "b")] {
        let want = golden.ids(&format!("p0.greedy.{key}")).expect("tokens");
        let n = want.len().to_string();
        let dir = adapter.map(|a| format!("{fixtures}/lora/{a}"));
        let mut args = vec![
            "generate",
            "--model",
            &tiny,
            "--device",
            "cpu",
            "--max-tokens",
            &n,
            "--ignore-eos",
        ];
        if let Some(d) = &dir {
            args.extend(["--lora", d.as_str()]);
        }
        let joined = prompt.join(" ");
        args.push(&joined);
        let o = tessera(&args);
        assert!(o.status.success(), "{key}: {}", stderr(&o));
        let got: Vec<u32> = String::from_utf8_lossy(&o.stdout)
            .split_whitespace()
            .map(|w| w.parse().expect("token id"))
            .collect();
        assert_eq!(got, want, "{key}");
    }
    let tiny_arg = tiny.as_str();
    assert_clean_failure(
        &[
            "generate",
            "--model",
            tiny_arg,
            "--device",
            "cpu",
            "--lora",
            "/nonexistent",
            "1 2",
        ],
        "does not exist",
    );
}
