//! `--device tpu` as users run it, on the XLA CPU PJRT plugin (the same PJRT
//! C API a TPU's libtpu serves; scripts/fetch-pjrt-plugin.sh fetches it):
//! every conformance layer passes, the chat answer names Paris like the cpu
//! backend's, and without a plugin `tessera devices` says why tpu is
//! unavailable, at once.

mod common;

use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn plugin() -> String {
    common::script_output("fetch-pjrt-plugin.sh")
}

fn tessera(args: &[&str], plugin: Option<&str>) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tessera"));
    c.args(args);
    match plugin {
        Some(p) => c.env("TESSERA_PJRT_PLUGIN", p),
        None => c.env_remove("TESSERA_PJRT_PLUGIN"),
    };
    c.output().expect("run tessera")
}

#[test]
fn tpu_passes_every_conformance_layer_on_the_cpu_plugin() {
    let p = plugin();
    let o = tessera(&["conformance", "--device", "tpu"], Some(&p));
    // LoRA is checked on tpu too (PEFT's logits, the manager in the engine).
    common::assert_conformance_passed(
        &o,
        "tpu",
        &[
            "peft logits",
            "lora mixed batch = alone",
            "lora 8 adapters on 2 slots",
        ],
    );
}

#[test]
fn tpu_answers_the_chat_question_like_the_cpu() {
    let p = plugin();
    let q = "What is the capital of France?";
    let tpu = tessera(&["generate", "--device", "tpu", "--chat", q], Some(&p));
    let cpu = tessera(&["generate", "--device", "cpu", "--chat", q], None);
    common::assert_answers_like_cpu(&tpu, &cpu, "tpu");
}

#[test]
fn without_a_plugin_tpu_is_unavailable_with_its_reason_at_once() {
    let start = Instant::now();
    let o = tessera(&["devices"], None);
    let took = start.elapsed();
    let out = String::from_utf8_lossy(&o.stdout);
    let row = out
        .lines()
        .find(|l| l.starts_with("tpu "))
        .unwrap_or_else(|| panic!("no tpu row:\n{out}"));
    assert!(
        row.contains("unavailable") && row.contains("TESSERA_PJRT_PLUGIN"),
        "{row}"
    );
    assert!(
        took < Duration::from_secs(1),
        "tessera devices took {took:?}"
    );
    let o = tessera(&["generate", "--device", "tpu", "hi"], None);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("unavailable"), "{err}");
}
