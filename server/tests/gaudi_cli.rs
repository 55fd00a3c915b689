//! `--device gaudi` as users run it, through the OpenCL runtime on PoCL
//! (`TESSERA_GAUDI_RUNTIME=opencl`; scripts/install-gaudi-deps.sh installs
//! PoCL): every conformance layer passes, the chat answer is the cpu
//! backend's, word for word; and with the default runtime (Level Zero) on a
//! machine with no Intel driver, `tessera devices` says why gaudi is
//! unavailable, at once.

use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// Skips (printing why) where there is no OpenCL device, unless CI said
/// PoCL is installed (`TESSERA_EXPECT_OPENCL=1`).
fn have_opencl() -> bool {
    match tessera_gaudi_probe() {
        Ok(()) => true,
        Err(why) => {
            assert!(
                std::env::var("TESSERA_EXPECT_OPENCL").as_deref() != Ok("1"),
                "TESSERA_EXPECT_OPENCL=1 but {why}"
            );
            eprintln!("skipped: {why}");
            false
        }
    }
}

/// Whether `tessera devices` lists gaudi available through OpenCL.
fn tessera_gaudi_probe() -> Result<(), String> {
    let o = tessera(&["devices"], Some("opencl"));
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let row = out
        .lines()
        .find(|l| l.starts_with("gaudi"))
        .ok_or_else(|| format!("no gaudi row in:\n{out}"))?;
    if row.contains("unavailable") {
        return Err(row.to_string());
    }
    Ok(())
}

fn tessera(args: &[&str], runtime: Option<&str>) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tessera"));
    c.args(args);
    match runtime {
        Some(r) => c.env("TESSERA_GAUDI_RUNTIME", r),
        None => c.env_remove("TESSERA_GAUDI_RUNTIME"),
    };
    c.output().expect("run tessera")
}

#[test]
fn gaudi_passes_every_conformance_layer_on_pocl() {
    if !have_opencl() {
        return;
    }
    let o = tessera(&["conformance", "--device", "gaudi"], Some("opencl"));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{out}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let summary = out.lines().last().unwrap_or_default();
    assert!(
        summary.starts_with("conformance gaudi: ") && summary.ends_with("-> PASS"),
        "{summary}"
    );
    // Every layer ran: ops, the models (the default one included), the engine.
    for name in [
        "paged_attention",
        "transformers logits",
        "default model",
        "chunked = whole",
        "lora mixed batch = alone",
    ] {
        assert!(
            out.lines()
                .any(|l| l.contains(name) && l.contains(" pass ")),
            "no passing {name:?} row:\n{out}"
        );
    }
}

#[test]
fn gaudi_answers_the_chat_question_like_the_cpu() {
    if !have_opencl() {
        return;
    }
    let q = "What is the capital of France?";
    let args = |device| {
        [
            "generate",
            "--device",
            device,
            "--chat",
            "--temperature",
            "0",
            q,
        ]
    };
    let gaudi = tessera(&args("gaudi"), Some("opencl"));
    let cpu = tessera(&args("cpu"), None);
    let (g, c) = (
        String::from_utf8_lossy(&gaudi.stdout),
        String::from_utf8_lossy(&cpu.stdout),
    );
    assert!(
        gaudi.status.success(),
        "{}",
        String::from_utf8_lossy(&gaudi.stderr)
    );
    assert!(g.contains("Paris"), "{g}");
    assert_eq!(g, c, "gaudi and cpu answers differ");
}

#[test]
fn without_an_intel_driver_gaudi_is_unavailable_with_its_reason_at_once() {
    let start = Instant::now();
    let o = tessera(&["devices"], None);
    let took = start.elapsed();
    let out = String::from_utf8_lossy(&o.stdout);
    let row = out
        .lines()
        .find(|l| l.starts_with("gaudi"))
        .unwrap_or_else(|| panic!("no gaudi row in:\n{out}"));
    if row.contains("unavailable") {
        assert!(
            row.contains("no Level Zero driver") || row.contains("libze_loader.so.1 not found"),
            "{row}"
        );
        let o = tessera(&["generate", "--device", "gaudi", "hi"], None);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success());
        assert!(
            err.contains("unavailable") && !err.contains("panicked"),
            "{err}"
        );
    }
    assert!(took < Duration::from_secs(10), "devices took {took:?}");
}
