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
use tessera_conformance::{assert_layer_on, assert_tiny_models, Layer};
use tessera_core::hal::Device;

const NAME: &str = "cuda-emu";

fn device() -> Arc<dyn Device> {
    tessera_gpu_kernels::emulator::device(NAME, 32, tessera_cuda::device::capabilities(false))
        .expect("build the kernel emulation")
}

#[test]
fn every_op_matches_the_reference_under_emulation() {
    assert_layer_on(NAME, &device(), Layer::Ops);
}

/// The tiny fixture models against transformers (the default model would
/// take the emulation many minutes; the GPU check covers real shapes).
#[test]
fn tiny_models_match_transformers_under_emulation() {
    assert_tiny_models(&device());
}

/// The engine layer (chunked = whole, batched = alone, prefix hit = miss,
/// preempted = uninterrupted, seeded = reproducible, the LoRA slot checks).
#[test]
fn engine_invariants_hold_under_emulation() {
    assert_layer_on(NAME, &device(), Layer::Engine);
}
