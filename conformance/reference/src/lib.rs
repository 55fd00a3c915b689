//! tessera-reference: the `reference` backend. Plain scalar Rust with f64
//! arithmetic inside, written to be obviously right rather than fast. It is
//! the numerical oracle of the conformance suite and the template for a new
//! backend: copy this crate, keep `device.rs`, `memory.rs` and `lib.rs`, and
//! replace the op families one file at a time.
//!
//! Layout: `device.rs` (the `Device`), `memory.rs` (buffers), `tensors.rs`
//! (decoding tensors to f64 and back), `ops.rs` (the `Kernels` trait: shape
//! checks), and one file per op family with the arithmetic.

#![forbid(unsafe_code)]

mod activation;
mod attention;
mod device;
mod embedding;
mod kv_cache;
mod linear;
mod lora;
mod memory;
mod norm;
mod ops;
mod rope;
mod select;
mod tensors;
#[cfg(test)]
mod testing;

pub use device::RefDevice;
pub use ops::RefKernels;
use std::sync::Arc;
use tessera_core::hal::{BackendEntry, Device, DeviceInfo, OpenOptions, Probe};
use tessera_core::{Error, Result};

/// The backend's name. Referencing it from a binary or a test links this
/// crate, and with it the backend's registration below.
pub const BACKEND_NAME: &str = "reference";

/// Below every real backend (cpu has 10), so `--device auto` picks this one
/// only when nothing else is linked.
const AUTO_SCORE: u32 = 1;

fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn probe() -> Probe {
    let mem = device::host_memory_info();
    Probe::found(
        vec![DeviceInfo {
            name: BACKEND_NAME.into(),
            memory_bytes: Some(mem.total_bytes),
            detail: format!("f64 scalar oracle, {} threads", default_threads()),
        }],
        AUTO_SCORE,
    )
}

fn open(opts: &OpenOptions) -> Result<Arc<dyn Device>> {
    if opts.ordinal != 0 {
        return Err(Error::device(
            BACKEND_NAME,
            format!(
                "there is one {BACKEND_NAME} device, not {}",
                opts.ordinal + 1
            ),
        ));
    }
    let threads = opts.threads.unwrap_or_else(default_threads);
    Ok(Arc::new(RefDevice::new(threads)))
}

inventory::submit! {
    BackendEntry {
        name: BACKEND_NAME,
        description: "f64 scalar oracle: slow, obvious, the template for new backends",
        probe,
        open,
    }
}
