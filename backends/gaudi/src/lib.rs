//! tessera-gaudi: Intel accelerators (Gaudi, Intel GPUs) through oneAPI
//! Level Zero, running our OpenCL C kernels (`kernels/opencl/`) compiled to
//! SPIR-V. The same kernels and host code also run through OpenCL on any
//! device with shared virtual memory (`TESSERA_GAUDI_RUNTIME=opencl`),
//! which is how CI proves them on PoCL, with no Intel hardware.
//!
//! Layers: `api.rs` is the only thing that differs between the two
//! runtimes (`level_zero/`, `opencl/`); `gpu.rs` makes either one the
//! GPU of the shared device code, `runtime.rs` the runtime of the shared op
//! kernels (`tessera_gpu_kernels`). Both runtimes open their libraries at
//! run time, so the binary starts, and says why gaudi is unavailable,
//! without them.

pub mod api;
pub mod gpu;
pub mod level_zero;
pub mod opencl;
pub mod runtime;
pub mod sources;

use gpu::Gaudi;
use runtime::GaudiRuntime;
use std::path::PathBuf;
use std::sync::Arc;
use tessera_core::hal::{BackendEntry, Device, DeviceInfo, OpenOptions, Probe};
use tessera_core::{Error, Result};
use tessera_gpu_kernels::device::GpuDevice;
use tessera_gpu_kernels::kernels::GpuKernels;

/// The backend's name; naming it from a binary links this crate.
pub const BACKEND_NAME: &str = "gaudi";

/// Which runtime drives the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RuntimeKind {
    /// oneAPI Level Zero with the SPIR-V kernels: Gaudi and Intel GPUs.
    LevelZero,
    /// OpenCL with the kernels built from source: PoCL, any device with SVM.
    OpenCl,
}

/// `TESSERA_GAUDI_RUNTIME`: unset or `level-zero` (the default), or `opencl`.
pub fn runtime_kind() -> std::result::Result<RuntimeKind, String> {
    match std::env::var("TESSERA_GAUDI_RUNTIME").as_deref() {
        Err(_) | Ok("") | Ok("level-zero") | Ok("level_zero") | Ok("ze") => {
            Ok(RuntimeKind::LevelZero)
        }
        Ok("opencl") => Ok(RuntimeKind::OpenCl),
        Ok(other) => Err(format!(
            "TESSERA_GAUDI_RUNTIME={other} is not a runtime: use level-zero (the default) or opencl"
        )),
    }
}

/// Kernel builds: native binaries from Level Zero, program binaries from OpenCL.
fn cache_dir() -> PathBuf {
    tessera_core::model::cache_dir().join("gaudi-kernels")
}

fn probe() -> Probe {
    let found = runtime_kind().and_then(|kind| {
        let devices = match kind {
            RuntimeKind::LevelZero => level_zero::devices()?,
            RuntimeKind::OpenCl => opencl::devices()?,
        };
        Ok((kind, devices))
    });
    match found {
        Err(reason) => Probe::unavailable(reason),
        Ok((kind, devices)) => {
            let devices = devices
                .into_iter()
                .enumerate()
                .map(|(i, (detail, memory))| DeviceInfo {
                    name: format!("gaudi:{i}"),
                    memory_bytes: Some(memory),
                    detail,
                })
                .collect();
            // An accelerator found through Level Zero is level with cuda
            // and rocm; OpenCL (PoCL is a CPU) stays below the cpu backend,
            // so `--device auto` never picks it by itself.
            let score = match kind {
                RuntimeKind::LevelZero => 50,
                RuntimeKind::OpenCl => 5,
            };
            Probe::found(devices, score)
        }
    }
}

fn open(opts: &OpenOptions) -> Result<Arc<dyn Device>> {
    let kind = runtime_kind().map_err(|e| Error::device(BACKEND_NAME, e))?;
    open_with(kind, opts.ordinal)
}

/// Device `ordinal` through runtime `kind`, whatever `TESSERA_GAUDI_RUNTIME`
/// says (tests use this: setting the environment while a driver's threads
/// read it is undefined behaviour).
pub fn open_with(kind: RuntimeKind, ordinal: usize) -> Result<Arc<dyn Device>> {
    let api: Box<dyn api::Api> = match kind {
        RuntimeKind::LevelZero => Box::new(level_zero::LevelZero::open(
            ordinal,
            sources::SPIRV,
            &cache_dir(),
        )?),
        RuntimeKind::OpenCl => Box::new(opencl::OpenCl::open(ordinal, &cache_dir(), None)?),
    };
    Ok(device(api, ordinal))
}

/// OpenCL device `ordinal` with the kernels' GPU work mappings (what Level
/// Zero devices run) even where the device is a CPU: how the tests check
/// those mappings on PoCL.
pub fn open_opencl_with_gpu_kernels(ordinal: usize) -> Result<Arc<dyn Device>> {
    let api = Box::new(opencl::OpenCl::open(ordinal, &cache_dir(), Some(false))?);
    Ok(device(api, ordinal))
}

fn device(api: Box<dyn api::Api>, ordinal: usize) -> Arc<dyn Device> {
    tracing::info!(
        "gaudi:{ordinal} is {} through {}",
        api.device_description(),
        api.runtime_name()
    );
    let gpu = Arc::new(Gaudi { api, ordinal });
    let kernels = Arc::new(GpuKernels::new(GaudiRuntime::new(gpu.clone())));
    // Graph capture is off: `Gaudi::can_capture` says no.
    Arc::new(GpuDevice::new(gpu, kernels, "TESSERA_GAUDI_GRAPHS"))
}

inventory::submit! {
    BackendEntry {
        name: BACKEND_NAME,
        description: "Intel accelerators through Level Zero (SPIR-V kernels); TESSERA_GAUDI_RUNTIME=opencl runs the same kernels on any OpenCL device with SVM",
        probe,
        open,
    }
}
