//! tessera-rocm: AMD GPUs. The same kernel sources as the cuda backend
//! (`kernels/cuda/`, written in the subset CUDA and HIP share) compiled by
//! hipRTC for the device's gfx arch at first use (`compiler.rs`), GEMMs on
//! hipBLASLt or rocBLAS (`gemm/`), decode steps replayed as HIP graphs
//! (`device.rs`). The HIP runtime, hipRTC and the GEMM libraries are all
//! opened at run time (`hip.rs`), so the binary starts, and says why rocm
//! is unavailable, on machines without them.

pub mod code_object;
pub mod compiler;
pub mod device;
mod gemm;
mod gpu;
pub mod hip;
pub mod launch;
mod memory;
pub mod runtime;

use std::sync::Arc;
use tessera_core::hal::{BackendEntry, Device, DeviceInfo, OpenOptions, Probe};
use tessera_core::{Error, Result};
use tessera_gpu_kernels::kernels::{kernel_names, GpuKernels};

/// The backend's name; naming it from a binary links this crate.
pub const BACKEND_NAME: &str = "rocm";

/// Device scratch hipBLASLt may use (split-K and stream-K want some).
const GEMM_WORKSPACE_BYTES: usize = 32 << 20;

/// Why the libraries besides the runtime cannot be used.
fn missing_library() -> Option<String> {
    hip::rtc().err().or_else(gemm::unavailable)
}

/// The GPUs the HIP runtime sees. Without a GPU, hipInit fails (Debian's
/// HIP 5.2 answers hipErrorInvalidDevice) or the count is 0: both mean "no
/// device", said plainly.
fn list_devices() -> std::result::Result<Vec<DeviceInfo>, String> {
    let rt = hip::runtime()?;
    let no_device = |call: &str, e| {
        format!(
            "no AMD GPU: {call} answered {} ({})",
            hip::error_name(rt, e),
            hip::runtime_file().unwrap_or("libamdhip64")
        )
    };
    // SAFETY: plain calls with out-pointers to locals.
    let rc = unsafe { (rt.hipInit)(0) };
    if rc != hip::SUCCESS {
        return Err(no_device("hipInit", rc));
    }
    let mut count = 0;
    // SAFETY: as above.
    let rc = unsafe { (rt.hipGetDeviceCount)(&mut count) };
    if rc != hip::SUCCESS {
        return Err(no_device("hipGetDeviceCount", rc));
    }
    if count == 0 {
        return Err("no AMD GPU: the HIP runtime sees none".into());
    }
    let mut version = 0;
    // SAFETY: writes one int.
    unsafe { (rt.hipRuntimeGetVersion)(&mut version) };
    (0..count)
        .map(|i| {
            let info = gpu::device_info(rt, i).map_err(|e| e.to_string())?;
            Ok(DeviceInfo {
                name: format!("rocm:{i}"),
                memory_bytes: Some(info.total_memory),
                detail: format!("{}, {}, HIP {version}", info.name, info.arch),
            })
        })
        .collect()
}

fn probe() -> Probe {
    match list_devices() {
        Err(reason) => Probe::unavailable(reason),
        Ok(devices) => match missing_library() {
            Some(reason) => Probe::unavailable(reason),
            // Level with cuda (50): a machine has one or the other.
            None => Probe::found(devices, 50),
        },
    }
}

fn open(opts: &OpenOptions) -> Result<Arc<dyn Device>> {
    let gpu = Arc::new(gpu::Gpu::open(opts.ordinal)?);
    if let Some(why) = missing_library() {
        return Err(Error::device(BACKEND_NAME, why));
    }
    let objects = compiler::code_objects_for(&gpu.arch)?;
    let functions = launch::Functions::load(&gpu, &objects, &kernel_names())?;
    let workspace = memory::RocmMemory::alloc(&gpu, GEMM_WORKSPACE_BYTES)?;
    let gemm = gemm::Gemm::new(
        gpu.stream(),
        memory::address(&workspace, 0, GEMM_WORKSPACE_BYTES)?,
        GEMM_WORKSPACE_BYTES,
    )?;
    tracing::info!(
        "rocm:{} is {} ({}, {:.1} GB), GEMM on {}",
        gpu.ordinal,
        gpu.name,
        gpu.arch,
        gpu.total_memory as f64 / 1e9,
        gemm.library()
    );
    let kernels = Arc::new(GpuKernels::new(runtime::RocmRuntime::new(
        gpu.clone(),
        functions,
        gemm,
        workspace,
    )));
    Ok(Arc::new(device::RocmDevice::new(
        gpu,
        kernels,
        "TESSERA_ROCM_GRAPHS",
    )))
}

inventory::submit! {
    BackendEntry {
        name: BACKEND_NAME,
        description: "AMD GPUs: hipRTC-compiled kernels, hipBLASLt/rocBLAS, HIP graphs",
        probe,
        open,
    }
}
