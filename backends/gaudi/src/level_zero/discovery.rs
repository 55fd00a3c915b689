//! The Level Zero devices: every device of every driver, in order.

use super::calls::{c_text, ok, query};
use level_zero_sys::*;
use std::ptr::null_mut;

/// A device of some driver, as `zeDeviceGet` lists them.
pub(super) struct Found {
    pub(super) driver: ze_driver_handle_t,
    pub(super) device: ze_device_handle_t,
    pub(super) props: ze_device_properties_t,
    pub(super) driver_version: u32,
}

impl Found {
    pub(super) fn description(&self) -> String {
        let kind = match self.props.type_ {
            ZE_DEVICE_TYPE_GPU => "GPU",
            ZE_DEVICE_TYPE_CPU => "CPU",
            ZE_DEVICE_TYPE_FPGA => "FPGA",
            ZE_DEVICE_TYPE_MCA => "MCA",
            ZE_DEVICE_TYPE_VPU => "VPU",
            _ => "device",
        };
        // driverVersion is vendor-encoded; hex shows Intel's fields.
        let (name, version) = (c_text(&self.props.name), self.driver_version);
        format!("{name} ({kind}, Level Zero driver {version:#x})")
    }
}

// SAFETY (the queries below): handles from the loader, out-pointers to
// locals, arrays sized by the count the driver gave.

/// Every device of every driver, in order, or why there are none (the
/// reasons of `level_zero_sys::drivers`, unchanged).
pub(super) fn found_devices() -> std::result::Result<(&'static ZeLoader, Vec<Found>), String> {
    let drivers = level_zero_sys::drivers()?;
    let ze = level_zero_sys::loader()?;
    let mut all = vec![];
    for driver in drivers {
        let mut dp = props!(ze_driver_properties_t, ZE_STRUCTURE_TYPE_DRIVER_PROPERTIES);
        ok(
            unsafe { ze.zeDriverGetProperties(driver, &mut dp) },
            "zeDriverGetProperties",
        )?;
        let devices = query(null_mut(), "zeDeviceGet", |n, p| unsafe {
            ze.zeDeviceGet(driver, n, p)
        })?;
        for device in devices {
            let mut props = props!(ze_device_properties_t, ZE_STRUCTURE_TYPE_DEVICE_PROPERTIES);
            ok(
                unsafe { ze.zeDeviceGetProperties(device, &mut props) },
                "zeDeviceGetProperties",
            )?;
            let driver_version = dp.driverVersion;
            all.push(Found {
                driver,
                device,
                props,
                driver_version,
            });
        }
    }
    if all.is_empty() {
        return Err("no Level Zero device: the drivers list none".into());
    }
    Ok((ze, all))
}

/// The device's memory, all its memory ordinals together.
pub(super) fn memory_total(
    ze: &ZeLoader,
    device: ze_device_handle_t,
) -> std::result::Result<u64, String> {
    let init = props!(
        ze_device_memory_properties_t,
        ZE_STRUCTURE_TYPE_DEVICE_MEMORY_PROPERTIES
    );
    let all = query(init, "zeDeviceGetMemoryProperties", |n, p| unsafe {
        ze.zeDeviceGetMemoryProperties(device, n, p)
    })?;
    Ok(all.iter().map(|p| p.totalSize).sum())
}

/// Every Level Zero device: its description and memory in bytes.
pub fn devices() -> std::result::Result<Vec<(String, u64)>, String> {
    let (ze, found) = found_devices()?;
    found
        .iter()
        .map(|f| Ok((f.description(), memory_total(ze, f.device)?)))
        .collect()
}
