//! The cuda backend's op kernels run on the CPU, in CI, as 32-lane warps:
//! the real kernel sources (`kernels/cuda/*.cu`) compiled by g++ against a
//! fiber emulation of CUDA's threads, barriers and warp shuffles
//! (`tessera_gpu_kernels::emulator`), launched by the real host code
//! (shape checks, argument lists, decode/prefill choice, partitions,
//! scratch), checked by the conformance suite against the f64 reference:
//! every op, every dtype, the whole grid of awkward shapes, with guard bytes
//! around every buffer.
//!
//! What this cannot check is left to `scripts/gpu-check` on a GPU: the
//! driver calls, cuBLASLt (a plain matmul stands in for it here), CUDA
//! graphs, and anything that depends on real parallel execution.

use std::sync::Arc;
use tessera_conformance::{run_on, Layer, Options};
use tessera_core::hal::Device;

fn device() -> Arc<dyn Device> {
    tessera_gpu_kernels::emulator::device("cuda-emu", 32, tessera_cuda::device::capabilities(false))
        .expect("build the kernel emulation")
}

fn assert_layer(layer: Layer) {
    let dev = device();
    let opts = Options {
        layers: vec![layer],
        ..Options::default()
    };
    let report = run_on("cuda-emu", &dev, &opts).expect("run the suite");
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
fn every_op_matches_the_reference_under_emulation() {
    assert_layer(Layer::Ops);
}

/// The tiny fixture models against transformers (the default model would
/// take the emulation many minutes; the GPU check covers real shapes).
#[test]
fn tiny_models_match_transformers_under_emulation() {
    let dev = device();
    let checks = tessera_conformance::models::check_tiny(&dev);
    let failed: Vec<String> = checks
        .iter()
        .filter(|c| c.status == tessera_conformance::Status::Fail)
        .map(|c| format!("  {} {} {}: {}", c.name, c.dtype, c.group, c.detail))
        .collect();
    for c in &checks {
        eprintln!(
            "{} {} {} {:?} {}",
            c.name, c.dtype, c.group, c.status, c.detail
        );
    }
    assert!(checks.len() >= 8, "the tiny fixtures ran");
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}

#[test]
fn engine_invariants_hold_under_emulation() {
    assert_layer(Layer::Engine);
}
