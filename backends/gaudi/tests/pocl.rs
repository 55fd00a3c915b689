//! The gaudi backend end to end on PoCL (OpenCL on the CPU): the OpenCL C
//! kernels and every line of host code above the runtime trait, checked by
//! the conformance suite against the f64 reference and transformers. What
//! this cannot cover is the Level Zero runtime itself (no Intel hardware).
//!
//! Skipped (with the reason printed) where no OpenCL device with SVM
//! exists, unless `TESSERA_EXPECT_OPENCL=1` (CI sets it after installing
//! PoCL), where that is a failure.

use std::sync::Arc;
use tessera_conformance::{assert_layer_on, assert_tiny_models, Layer};
use tessera_core::hal::Device;

const NAME: &str = "gaudi-opencl";

/// The first OpenCL device, or None (after saying why) where there is none.
fn device() -> Option<Arc<dyn Device>> {
    if let Err(why) = tessera_gaudi::opencl::devices() {
        assert!(
            std::env::var("TESSERA_EXPECT_OPENCL").as_deref() != Ok("1"),
            "TESSERA_EXPECT_OPENCL=1 but {why}"
        );
        eprintln!("skipped: {why}");
        return None;
    }
    let dev = tessera_gaudi::open_with(tessera_gaudi::RuntimeKind::OpenCl, 0)
        .expect("open gaudi through OpenCL");
    Some(dev)
}

#[test]
fn every_op_matches_the_reference_on_pocl() {
    if let Some(dev) = device() {
        assert_layer_on(NAME, &dev, Layer::Ops);
    }
}

/// The kernels as GPUs run them (gemv.cl has a CPU work mapping that PoCL
/// gets by default; Level Zero devices get this one).
#[test]
fn every_op_matches_the_reference_on_pocl_with_the_gpu_kernel_mappings() {
    if device().is_some() {
        let dev =
            tessera_gaudi::open_opencl_with_gpu_kernels(0).expect("open gaudi through OpenCL");
        assert_layer_on("gaudi-opencl-gpu-mappings", &dev, Layer::Ops);
    }
}

#[test]
fn tiny_models_match_transformers_on_pocl() {
    if let Some(dev) = device() {
        assert_tiny_models(&dev);
    }
}

/// Chunked = whole, batched = alone, prefix hit = miss, preempted =
/// uninterrupted, seeded = reproducible, the LoRA slot checks.
#[test]
fn engine_invariants_hold_on_pocl() {
    if let Some(dev) = device() {
        assert_layer_on(NAME, &dev, Layer::Engine);
    }
}
