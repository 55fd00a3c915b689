//! `tessera conformance` as CI and vendors run it: every layer passes on cpu and
//! on the reference backend, the JSON report has every layer, support and perf
//! modes list every op, and bad flags are one clear line.

use std::process::{Command, Output};

fn tessera(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(args)
        .output()
        .expect("run tessera")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Runs every layer on `device`; checks the summary line and the JSON report.
fn passes_every_layer(device: &str) {
    let json = std::env::temp_dir().join(format!(
        "tessera-conformance-{device}-{}.json",
        std::process::id()
    ));
    let json_arg = json.to_str().expect("utf-8");
    let o = tessera(&["conformance", "--device", device, "--json", json_arg]);
    let out = text(&o.stdout);
    assert!(
        o.status.success(),
        "conformance on {device} failed:\n{out}\n{}",
        text(&o.stderr)
    );
    let summary = out.lines().last().unwrap_or_default();
    assert!(
        summary.starts_with(&format!("conformance {device}: ")) && summary.ends_with("-> PASS"),
        "{summary}"
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("json written"))
            .expect("valid JSON");
    let checks = report["checks"].as_array().expect("checks");
    for layer in ["ops", "models", "engine"] {
        let n = checks.iter().filter(|c| c["layer"] == layer).count();
        assert!(n > 0, "{device}: no {layer} checks in the report");
    }
    assert!(
        checks.iter().all(|c| c["status"] != "fail"),
        "{device}: a failing check in a passing report"
    );
    // Every op of the HAL appears in the ops layer.
    for &op in tessera_conformance::ops::cases::OPS {
        assert!(
            checks
                .iter()
                .any(|c| c["layer"] == "ops" && c["name"] == op),
            "{device}: op {op} untested"
        );
    }
    // LoRA is checked, not skipped: PEFT's logits, and the manager in the engine.
    for name in LORA_CHECKS {
        assert!(
            checks
                .iter()
                .any(|c| c["name"] == *name && c["status"] == "pass"),
            "{device}: no passing {name:?} check"
        );
    }
    std::fs::remove_file(&json).ok();
}

/// The LoRA checks every backend with the LoRA ops must pass.
const LORA_CHECKS: &[&str] = &[
    "peft logits",
    "peft mixed batch",
    "lora mixed batch = alone",
    "lora prefix cache per adapter",
    "lora evicted + reloaded = fresh",
    "lora 8 adapters on 2 slots",
    "lora rank growth = fresh",
];

#[test]
fn cpu_passes_every_layer() {
    passes_every_layer("cpu");
}

#[test]
fn reference_passes_every_layer() {
    passes_every_layer("reference");
}

#[test]
fn support_mode_lists_every_op_and_perf_mode_times_one() {
    let o = tessera(&["conformance", "--device", "cpu", "--mode", "support"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let out = text(&o.stdout);
    for op in ["linear", "paged_attention", "add_rms_norm", "sample"] {
        let row = out
            .lines()
            .find(|l| l.starts_with(&format!("{op} ")))
            .unwrap_or_else(|| panic!("no {op} row:\n{out}"));
        assert!(row.contains("native"), "{row}");
    }
    let o = tessera(&[
        "conformance",
        "--device",
        "cpu",
        "--mode",
        "perf",
        "--op",
        "add",
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let out = text(&o.stdout);
    let rows: Vec<&str> = out.lines().filter(|l| l.starts_with("add ")).collect();
    assert_eq!(rows.len(), 3, "{out}");
    assert!(rows.iter().all(|r| r.trim_end().ends_with('x')), "{out}");
}

#[test]
fn bad_flags_are_one_clear_line() {
    for (args, needle) in [
        (vec!["conformance", "--op", "conv2d"], "unknown op"),
        (vec!["conformance", "--layer", "kernels"], "unknown layer"),
        (
            vec!["conformance", "--device", "warp-drive"],
            "unknown device",
        ),
        (vec!["conformance", "--mode", "fast"], "--mode"),
    ] {
        let o = tessera(&args);
        let err = text(&o.stderr);
        assert!(!o.status.success(), "{args:?} should fail");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}
