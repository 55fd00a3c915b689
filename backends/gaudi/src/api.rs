//! The one thing that differs between the gaudi backend's two runtimes:
//! how memory is allocated and copied and how a kernel of our program is
//! launched. Level Zero (`level_zero/`, production: Intel GPUs and
//! Gaudi) and OpenCL (`opencl/`: PoCL in CI, any OpenCL 2.0+ device with
//! SVM) implement it; everything above it (`gpu.rs`, `runtime.rs`, the
//! shared `GpuKernels`) is written once and runs on PoCL in CI.
//!
//! Memory is addressed by raw device pointers (Level Zero USM device
//! allocations, OpenCL SVM), so the host can pass `base + offset` to a
//! kernel as the CUDA and HIP backends do.

use tessera_core::Result;
use tessera_gpu_kernels::launch::{Args, Config};

pub trait Api: Send + Sync + 'static {
    /// `level-zero` or `opencl`.
    fn runtime_name(&self) -> &'static str;
    /// The device as its driver names it, with the driver's version.
    fn device_description(&self) -> String;
    /// Free and total device memory, in bytes.
    fn mem_info(&self) -> Result<(u64, u64)>;
    /// A device allocation of `bytes` (at least 1), aligned to at least 16 bytes.
    fn alloc(&self, bytes: usize) -> Result<u64>;
    /// Frees an allocation of `alloc` of `bytes` once the work queued
    /// before it ends.
    fn free(&self, ptr: u64, bytes: usize);
    fn upload(&self, dst: u64, src: &[u8]) -> Result<()>;
    /// Copies to the host and waits for it.
    fn download(&self, src: u64, dst: &mut [u8]) -> Result<()>;
    fn copy(&self, src: u64, dst: u64, bytes: usize) -> Result<()>;
    fn fill_zero(&self, dst: u64, bytes: usize) -> Result<()>;
    /// Launches kernel `name` of our program, in queue order. `cfg` is in
    /// CUDA terms: `grid` work-groups of `block` work-items in dimension 0.
    /// A kernel with one parameter more than `args` takes its last one as
    /// `__local` memory of `cfg.shared` bytes.
    fn launch(&self, name: &str, cfg: &Config, args: &Args) -> Result<()>;
    /// Whether our program has kernel `name` on this device (the sub-group
    /// kernels exist only where the device has sub-groups).
    fn has_kernel(&self, name: &str) -> bool;
    /// Waits until all queued work has finished.
    fn synchronize(&self) -> Result<()>;
    /// Largest `__local` memory a work-group may use, in bytes.
    fn max_local_bytes(&self) -> u32;
    /// Whether the program was built for a CPU device (`-DTSR_CPU`), whose
    /// kernels map work differently (gemv.cl).
    fn is_cpu(&self) -> bool {
        false
    }
}
