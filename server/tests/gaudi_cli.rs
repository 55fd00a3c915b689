//! `--device gaudi` as users run it, through the OpenCL runtime
//! (`TESSERA_GAUDI_RUNTIME=opencl`): on PoCL (scripts/install-gaudi-deps.sh)
//! with the kernels built from source, and on Intel's OpenCL CPU runtime
//! (scripts/fetch-intel-opencl.sh) with the SPIR-V module Level Zero loads,
//! every conformance layer passes and the chat answer is the cpu backend's,
//! word for word; and with the default runtime (Level Zero) on a machine
//! with no Intel driver, `tessera devices` says why gaudi is unavailable, at
//! once.

mod common;

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
    tessera_with(args, runtime, &[])
}

fn tessera_with(args: &[&str], runtime: Option<&str>, env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tessera"));
    c.args(args).envs(env.iter().copied());
    match runtime {
        Some(r) => c.env("TESSERA_GAUDI_RUNTIME", r),
        None => c.env_remove("TESSERA_GAUDI_RUNTIME"),
    };
    c.output().expect("run tessera")
}

/// Every conformance layer passed on gaudi: ops, models (the default one
/// included) and the engine all ran.
fn assert_conformance_passed(o: &Output) {
    common::assert_conformance_passed(
        o,
        "gaudi",
        &[
            "paged_attention",
            "transformers logits",
            "default model",
            "chunked = whole",
            "lora mixed batch = alone",
        ],
    );
}

/// `generate --chat --temperature 0` of the capital of France on gaudi
/// (through OpenCL, with `env`) prints what cpu prints, and names Paris.
fn assert_answers_like_cpu(env: &[(&str, &str)]) {
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
    let gaudi = tessera_with(&args("gaudi"), Some("opencl"), env);
    let cpu = tessera(&args("cpu"), None);
    common::assert_answers_like_cpu(&gaudi, &cpu, &format!("gaudi ({env:?})"));
}

/// Intel's OpenCL CPU runtime, alone in the ICD loader's list, made to load
/// the shipped SPIR-V (an error if it cannot): the module Level Zero loads,
/// through Intel's SPIR-V consumer, with sub-groups. Every layer runs with
/// the sub-group GEMM (`TESSERA_GAUDI_GEMM=subgroup`: an error if the
/// kernels are missing), then the ops once more with the tiled one.
#[test]
fn gaudi_runs_the_level_zero_spirv_on_intels_opencl_cpu_runtime() {
    let vendors = common::script_output("fetch-intel-opencl.sh");
    let env = [
        ("OCL_ICD_VENDORS", vendors.as_str()),
        ("TESSERA_OPENCL_PROGRAM", "spirv"),
        ("TESSERA_GAUDI_GEMM", "subgroup"),
    ];
    let o = tessera_with(&["devices"], Some("opencl"), &env);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.lines().any(|l| l.starts_with("gaudi")
            && l.contains("available")
            && !l.contains("unavailable")),
        "Intel's runtime is not listed:\n{out}"
    );
    let o = tessera_with(&["conformance", "--device", "gaudi"], Some("opencl"), &env);
    assert_conformance_passed(&o);
    let tiled = [env[0], env[1], ("TESSERA_GAUDI_GEMM", "tiled")];
    let o = tessera_with(
        &["conformance", "--device", "gaudi", "--layer", "ops"],
        Some("opencl"),
        &tiled,
    );
    common::assert_conformance_passed(&o, "gaudi", &["linear"]);
    assert_answers_like_cpu(&env);
}

#[test]
fn gaudi_passes_every_conformance_layer_on_pocl() {
    if !have_opencl() {
        return;
    }
    let o = tessera(&["conformance", "--device", "gaudi"], Some("opencl"));
    assert_conformance_passed(&o);
}

#[test]
fn gaudi_answers_the_chat_question_like_the_cpu() {
    if have_opencl() {
        assert_answers_like_cpu(&[]);
    }
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
