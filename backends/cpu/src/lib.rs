//! tessera-cpu: the backend every machine has. Kernels use AVX-512, AVX2+FMA or
//! NEON when the CPU has them (chosen at run time) and all cores through a
//! rayon pool; a portable path runs everywhere else.

mod activation;
mod attention;
mod attention_simd;
mod device;
mod features;
mod lora;
mod matmul;
mod norm;
mod ops;
mod rope;
mod simd;
mod simd_bf16;
mod view;

pub use device::CpuDevice;
use std::sync::Arc;
use tessera_core::hal::{BackendEntry, Device, DeviceInfo, OpenOptions, Probe};
use tessera_core::Result;

/// The backend's name; referencing it from a binary also makes sure this
/// crate (and so its registration) is linked.
pub const BACKEND_NAME: &str = "cpu";

fn default_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

fn probe() -> Probe {
    let mem = device::host_memory_info();
    Probe::found(
        vec![DeviceInfo {
            name: "cpu".into(),
            memory_bytes: Some(mem.total_bytes),
            detail: format!(
                "{} threads, {} kernels",
                default_threads(),
                matmul::simd_level()
            ),
        }],
        10,
    )
}

fn open(opts: &OpenOptions) -> Result<Arc<dyn Device>> {
    Ok(Arc::new(CpuDevice::new(
        opts.threads.unwrap_or_else(default_threads),
    )?))
}

inventory::submit! {
    BackendEntry { name: BACKEND_NAME, description: "host CPU (SIMD, all cores)", probe, open }
}
