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
use tessera_conformance::{assert_layer_on, assert_tiny_models, Layer};
use tessera_core::hal::Device;

const NAME: &str = "rocm-emu-wave64";

fn device() -> Arc<dyn Device> {
    tessera_gpu_kernels::emulator::device(NAME, 64, tessera_rocm::device::capabilities(false))
        .expect("build the kernel emulation")
}

#[test]
fn every_op_matches_the_reference_with_64_lane_wavefronts() {
    assert_layer_on(NAME, &device(), Layer::Ops);
}

/// The tiny fixture models against transformers (the default model would
/// take the emulation many minutes; the GPU check covers real shapes).
#[test]
fn tiny_models_match_transformers_with_64_lane_wavefronts() {
    assert_tiny_models(&device());
}

/// The engine layer (chunked = whole, batched = alone, prefix hit = miss,
/// preempted = uninterrupted, seeded = reproducible, the LoRA slot checks).
#[test]
fn engine_invariants_hold_with_64_lane_wavefronts() {
    assert_layer_on(NAME, &device(), Layer::Engine);
}
