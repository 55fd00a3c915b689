//! Backend registration. A backend crate adds itself with
//! `inventory::submit!(BackendEntry { .. })`; the binary links it and every
//! registered backend shows up in `tessera devices` and `--device`.

use super::device::Device;
use crate::{Error, Result};
use std::sync::Arc;

/// One registered backend: its name, how to look for devices, how to open one.
pub struct BackendEntry {
    /// What users type after `--device` (`cpu`, `cuda`, `reference`, ...).
    pub name: &'static str,
    /// One line for `tessera devices`.
    pub description: &'static str,
    /// Looks for devices without side effects beyond loading libraries.
    pub probe: fn() -> Probe,
    /// Opens a device found by `probe`.
    pub open: fn(&OpenOptions) -> Result<Arc<dyn Device>>,
}

inventory::collect!(BackendEntry);

/// What `probe` found.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Probe {
    pub devices: Vec<DeviceInfo>,
    /// Why no device is usable, when `devices` is empty (`libcuda.so not found`).
    pub reason: Option<String>,
    /// Preference for `--device auto`: the highest available score wins.
    pub score: u32,
}

impl Probe {
    pub fn found(devices: Vec<DeviceInfo>, score: u32) -> Self {
        Probe {
            devices,
            reason: None,
            score,
        }
    }
    pub fn unavailable(reason: impl Into<String>) -> Self {
        Probe {
            devices: vec![],
            reason: Some(reason.into()),
            score: 0,
        }
    }
    pub fn available(&self) -> bool {
        !self.devices.is_empty()
    }
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct DeviceInfo {
    pub name: String,
    pub memory_bytes: Option<u64>,
    /// Free-form facts worth showing (SIMD level, threads, driver version).
    pub detail: String,
}

#[derive(Clone, Debug, Default)]
pub struct OpenOptions {
    /// Which device of the backend (`cuda:1` is ordinal 1).
    pub ordinal: usize,
    /// Host threads an eager CPU-side backend may use; `None` means all cores.
    pub threads: Option<usize>,
}

/// Every linked backend, sorted by name.
pub fn backends() -> Vec<&'static BackendEntry> {
    let mut v: Vec<_> = inventory::iter::<BackendEntry>.into_iter().collect();
    v.sort_by_key(|b| b.name);
    v
}

/// Opens `spec`: `auto`, a backend name, or `name:ordinal`.
pub fn open_device(spec: &str, threads: Option<usize>) -> Result<Arc<dyn Device>> {
    let names = || {
        backends()
            .iter()
            .map(|b| b.name)
            .collect::<Vec<_>>()
            .join(", ")
    };
    if spec == "auto" {
        let best = backends()
            .into_iter()
            .map(|b| (b, (b.probe)()))
            .filter(|(_, p)| p.available())
            .max_by_key(|(_, p)| p.score);
        let (entry, _) = best.ok_or_else(|| {
            Error::device(
                "auto",
                format!("no backend found a device (registered: {})", names()),
            )
        })?;
        tracing::info!("device auto: picked {}", entry.name);
        return (entry.open)(&OpenOptions {
            ordinal: 0,
            threads,
        });
    }
    let (name, ordinal) = match spec.split_once(':') {
        Some((n, o)) => {
            let o = o.parse::<usize>().map_err(|_| {
                Error::device(
                    spec,
                    "the part after ':' must be a device number, as in cuda:1",
                )
            })?;
            (n, o)
        }
        None => (spec, 0),
    };
    let entry = backends()
        .into_iter()
        .find(|b| b.name == name)
        .ok_or_else(|| {
            Error::device(
                spec,
                format!("unknown device; choose one of: auto, {}", names()),
            )
        })?;
    let probe = (entry.probe)();
    if !probe.available() {
        let why = probe.reason.unwrap_or_else(|| "no device found".into());
        return Err(Error::device(spec, format!("unavailable: {why}")));
    }
    if ordinal >= probe.devices.len() {
        return Err(Error::device(
            spec,
            format!("only {} device(s) found", probe.devices.len()),
        ));
    }
    (entry.open)(&OpenOptions { ordinal, threads })
}
