//! `tessera bench serve` against a live `tessera serve`: every request
//! succeeds, token counts are exact, and the latency statistics are ordered.

mod common;

use serde_json::Value;

#[test]
fn bench_serve_reports_exact_counts_and_ordered_latencies() {
    let server = common::Server::start(&[]);
    let json =
        std::env::temp_dir().join(format!("tessera-bench-serve-{}.json", std::process::id()));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args([
            "bench",
            "serve",
            "--url",
            &server.url,
            "--num-prompts",
            "8",
            "--input-len",
            "24",
        ])
        .args(["--output-len", "8", "--request-rate", "20", "--json"])
        .arg(&json)
        .output()
        .expect("run tessera bench serve");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("Mean TTFT (ms)"), "{stdout}");
    let r: Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("json")).expect("valid JSON");
    assert_eq!(r["successful_requests"], 8, "{r}");
    assert_eq!(r["failed_requests"], 0, "{r}");
    assert_eq!(r["total_input_tokens"], 8 * 24, "{r}");
    assert_eq!(r["total_output_tokens"], 8 * 8, "{r}");
    for k in ["ttft_ms", "itl_ms", "e2el_ms"] {
        let (mean, p50, p99) = (
            r[k]["mean"].as_f64(),
            r[k]["median"].as_f64(),
            r[k]["p99"].as_f64(),
        );
        let (Some(mean), Some(p50), Some(p99)) = (mean, p50, p99) else {
            panic!("{k} missing: {r}");
        };
        assert!(
            mean > 0.0 && p50 > 0.0 && p50 <= p99,
            "{k}: {mean} {p50} {p99}"
        );
    }
    assert!(
        r["e2el_ms"]["mean"].as_f64() >= r["ttft_ms"]["mean"].as_f64(),
        "{r}"
    );
    std::fs::remove_file(&json).ok();
}
