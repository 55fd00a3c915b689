//! The rocm backend's kernels as AMD runs them on gfx9 (64-lane
//! wavefronts), on the CPU: the same sources and host code as the GPU path,
//! compiled by g++ against the fiber emulation with 64-lane warps
//! (`tessera_gpu_kernels::emulator`), checked by the conformance suite
//! against the f64 reference. This is what proves, without AMD hardware,
//! that no kernel assumes 32 lanes (reductions, shuffles, warps per block,
//! shared-memory slots per warp). gfx10+ runs 32-lane waves, which the cuda
//! backend's emulated tests cover.
//!
//! Not covered here (needs a GPU, `scripts/gpu-check --device rocm`): HIP
//! calls, hipBLASLt/rocBLAS, HIP graphs, real parallel timing.

use std::sync::Arc;
use tessera_conformance::{run_on, Layer, Options};
use tessera_core::hal::Device;

fn device() -> Arc<dyn Device> {
    tessera_gpu_kernels::emulator::device(
        "rocm-emu-wave64",
        64,
        tessera_rocm::device::capabilities(false),
    )
    .expect("build the kernel emulation")
}

fn assert_layer(layer: Layer) {
    let dev = device();
    let opts = Options {
        layers: vec![layer],
        ..Options::default()
    };
    let report = run_on("rocm-emu-wave64", &dev, &opts).expect("run the suite");
    let mut table = vec![];
    let _ = report.print(&mut table);
    eprintln!("{}", String::from_utf8_lossy(&table));
    let failed: Vec<String> = report
        .failures()
        .map(|c| format!("  {} {} {}: {}", c.name, c.dtype, c.group, c.detail))
        .collect();
    assert!(
        report.passed(),
        "{}\n{}",
        report.summary(),
        failed.join("\n")
    );
}

#[test]
fn every_op_matches_the_reference_with_64_lane_wavefronts() {
    assert_layer(Layer::Ops);
}

#[test]
fn tiny_models_match_transformers_with_64_lane_wavefronts() {
    let dev = device();
    let checks = tessera_conformance::models::check_tiny(&dev);
    let failed: Vec<String> = checks
        .iter()
        .filter(|c| c.status == tessera_conformance::Status::Fail)
        .map(|c| format!("  {} {} {}: {}", c.name, c.dtype, c.group, c.detail))
        .collect();
    assert!(checks.len() >= 8, "the tiny fixtures ran");
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}

/// The engine layer (chunked = whole, batched = alone, prefix hit = miss,
/// preempted = uninterrupted, seeded = reproducible, the LoRA slot checks)
/// through the same kernels with 64-lane wavefronts.
#[test]
fn engine_invariants_hold_with_64_lane_wavefronts() {
    assert_layer(Layer::Engine);
}
