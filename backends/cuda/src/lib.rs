//! tessera-cuda: NVIDIA GPUs. Our kernels (`kernels/cuda/`) are compiled by
//! NVRTC for the device at first use (`compiler.rs`), GEMMs go to cuBLASLt
//! (`gemm.rs`), decode steps are replayed as CUDA graphs (`device.rs`). The
//! driver, NVRTC and cuBLASLt are all loaded at run time through cudarc, so
//! the binary starts, and says why, on machines without them.

pub mod compiler;
pub mod device;
mod gemm;
mod gpu;
pub mod launch;
pub use launch::ptx_signatures;
mod memory;
pub mod runtime;

use cudarc::driver::{result, sys};
use std::sync::Arc;
use tessera_core::hal::{BackendEntry, Device, DeviceInfo, OpenOptions, Probe};
use tessera_core::{Error, Result};
use tessera_gpu_kernels::kernels::{kernel_names, GpuKernels};

/// The backend's name; naming it from a binary links this crate.
pub const BACKEND_NAME: &str = "cuda";

/// Why libcuda cannot be used, checked before any driver call (cudarc
/// panics on a call into a library it cannot load).
fn missing_driver() -> Option<String> {
    // SAFETY: only tries to open the library.
    (!unsafe { sys::is_culib_present() })
        .then(|| "libcuda.so not found: no NVIDIA driver on this machine".into())
}

/// Why the libraries the backend needs cannot be used.
fn missing_library() -> Option<String> {
    missing_driver()
        .or_else(compiler::unavailable)
        .or_else(gemm::unavailable)
}

/// The GPUs the driver sees, without creating a context.
fn list_devices() -> std::result::Result<Vec<DeviceInfo>, String> {
    if let Some(why) = missing_driver() {
        return Err(why);
    }
    let why = |call: &str, e: cudarc::driver::DriverError| {
        format!("{call} failed with {}", gpu::error_name(&e))
    };
    result::init().map_err(|e| why("cuInit", e))?;
    let count = result::device::get_count().map_err(|e| why("cuDeviceGetCount", e))?;
    if count == 0 {
        return Err("the NVIDIA driver sees no GPU".into());
    }
    let driver = gpu::driver_version().unwrap_or_else(|| "?".into());
    let nvrtc = compiler::version()
        .map(|(a, b)| format!("NVRTC {a}.{b}"))
        .unwrap_or_else(|_| "no NVRTC".into());
    (0..count)
        .map(|i| {
            let dev = result::device::get(i).map_err(|e| why("cuDeviceGet", e))?;
            let name = result::device::get_name(dev).map_err(|e| why("cuDeviceGetName", e))?;
            // SAFETY: a device handle from cuDeviceGet.
            let mem = unsafe { result::device::total_mem(dev) }
                .ok()
                .map(|m| m as u64);
            let attr = |a| {
                // SAFETY: as above.
                unsafe { result::device::get_attribute(dev, a) }.unwrap_or(0)
            };
            use sys::CUdevice_attribute::*;
            let (major, minor) = (
                attr(CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR),
                attr(CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR),
            );
            Ok(DeviceInfo {
                name: format!("cuda:{i}"),
                memory_bytes: mem,
                detail: format!("{name}, sm_{major}{minor}, driver CUDA {driver}, {nvrtc}"),
            })
        })
        .collect()
}

fn probe() -> Probe {
    match list_devices() {
        Err(reason) => Probe::unavailable(reason),
        Ok(devices) => match missing_library() {
            Some(reason) => Probe::unavailable(reason),
            // Above the cpu (10) and tpu (30) backends for `auto`.
            None => Probe::found(devices, 50),
        },
    }
}

fn open(opts: &OpenOptions) -> Result<Arc<dyn Device>> {
    if let Some(why) = missing_library() {
        return Err(Error::device(BACKEND_NAME, why));
    }
    let gpu = Arc::new(gpu::Gpu::open(opts.ordinal)?);
    let arch = gpu.arch();
    let ptx = compiler::ptx_for(&arch)?;
    let functions = launch::Functions::load(&gpu, &ptx, &kernel_names())?;
    let gemm = gemm::Gemm::new(&gpu)?;
    let kernels = Arc::new(GpuKernels::new(runtime::CudaRuntime::new(
        gpu.clone(),
        functions,
        gemm,
    )));
    tracing::info!(
        "cuda:{} is {} ({arch}, {:.1} GB)",
        gpu.ordinal,
        gpu.name,
        gpu.total_memory as f64 / 1e9
    );
    Ok(Arc::new(device::CudaDevice::new(
        gpu,
        kernels,
        "TESSERA_CUDA_GRAPHS",
    )))
}

inventory::submit! {
    BackendEntry {
        name: BACKEND_NAME,
        description: "NVIDIA GPUs: NVRTC-compiled kernels, cuBLASLt, CUDA graphs",
        probe,
        open,
    }
}
