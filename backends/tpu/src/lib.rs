//! tessera-tpu: Google TPUs (and any PJRT plugin) through the PJRT C API.
//! The whole graph is lowered to one StableHLO function per step shape
//! (`lower.rs`, written with `mlir.rs`), compiled by the plugin and run
//! through the safe layer of `pjrt.rs` over the hand-written FFI of `ffi.rs`.
//! `plugin.rs` finds the plugin; `device.rs` is the `Device`.

pub mod device;
mod ffi;
mod lower;
mod mlir;
pub mod pjrt;
pub mod plugin;

use std::sync::{Arc, OnceLock};
use tessera_core::hal::{BackendEntry, Device, DeviceInfo, OpenOptions, Probe};
use tessera_core::{Error, Result};

/// The backend's name; naming it from a binary links this crate.
pub const BACKEND_NAME: &str = "tpu";

/// One client per process, made on first use and shared by probe and open.
fn client() -> &'static std::result::Result<Arc<pjrt::Client>, String> {
    static CLIENT: OnceLock<std::result::Result<Arc<pjrt::Client>, String>> = OnceLock::new();
    CLIENT.get_or_init(|| {
        let path = plugin::locate_here()?;
        let plugin = pjrt::Plugin::load(&path).map_err(|e| e.to_string())?;
        pjrt::Client::new(plugin)
            .map(Arc::new)
            .map_err(|e| e.to_string())
    })
}

fn probe() -> Probe {
    match client() {
        Err(reason) => Probe::unavailable(reason.clone()),
        Ok(c) => {
            let platform = c.platform_name().unwrap_or_default();
            // A real TPU beats the cpu backend for `auto`; a PJRT plugin that
            // runs on the CPU (tests, CI) does not.
            let score = if platform == "tpu" { 30 } else { 5 };
            let devices = (0..c.num_devices())
                .map(|i| DeviceInfo {
                    name: format!("tpu:{i}"),
                    memory_bytes: None,
                    detail: format!("PJRT {platform} plugin"),
                })
                .collect();
            Probe::found(devices, score)
        }
    }
}

fn open(opts: &OpenOptions) -> Result<Arc<dyn Device>> {
    let c = client()
        .as_ref()
        .map_err(|r| Error::device(BACKEND_NAME, r.clone()))?;
    Ok(Arc::new(device::TpuDevice::new(c.clone(), opts.ordinal)?))
}

inventory::submit! {
    BackendEntry {
        name: BACKEND_NAME,
        description: "TPUs (any PJRT plugin) via whole-graph StableHLO",
        probe,
        open,
    }
}
