//! The OpenCL devices this runtime can use: OpenCL 2.0+ with coarse-grained
//! shared virtual memory, over all platforms, in order.

use cl3::types::cl_device_id;
use std::sync::Mutex;

/// A device usable by this runtime: OpenCL 2.0+ with coarse-grained SVM.
pub(super) struct ClDevice {
    pub(super) id: cl_device_id,
    pub(super) description: String,
    pub(super) memory: u64,
}

pub(super) fn info_string(device: cl_device_id, what: u32) -> String {
    cl3::device::get_device_info(device, what)
        .map(String::from)
        .unwrap_or_default()
        .trim_end_matches('\0')
        .trim()
        .to_string()
}

/// Serialises device discovery and context creation: PoCL 3.1 crashes when
/// two threads query its devices while it initialises them.
pub(super) static DISCOVERY: Mutex<()> = Mutex::new(());

/// Every OpenCL device with SVM, over all platforms, in order; or why none.
/// Call with `DISCOVERY` held.
pub(super) fn usable_devices() -> std::result::Result<Vec<ClDevice>, String> {
    let platforms = cl3::platform::get_platform_ids().map_err(|e| match e {
        cl3::error_codes::DLOPEN_RUNTIME_LOAD_FAILED => {
            "libOpenCL.so.1 not found: no OpenCL ICD loader on this machine (install ocl-icd-libopencl1 and a driver such as pocl-opencl-icd)".to_string()
        }
        code => format!(
            "no OpenCL platform: clGetPlatformIDs answered {} ({code})",
            cl3::error_codes::error_text(code)
        ),
    })?;
    let mut out = vec![];
    let mut skipped = vec![];
    for platform in platforms {
        let ids = cl3::device::get_device_ids(platform, cl3::device::CL_DEVICE_TYPE_ALL)
            .unwrap_or_default();
        for id in ids {
            let name = info_string(id, cl3::device::CL_DEVICE_NAME);
            let svm = cl3::device::get_device_info(id, cl3::device::CL_DEVICE_SVM_CAPABILITIES)
                .map(u64::from)
                .unwrap_or(0);
            if svm & cl3::device::CL_DEVICE_SVM_COARSE_GRAIN_BUFFER == 0 {
                skipped.push(name);
                continue;
            }
            let memory = cl3::device::get_device_info(id, cl3::device::CL_DEVICE_GLOBAL_MEM_SIZE)
                .map(u64::from)
                .unwrap_or(0);
            let description = format!(
                "{name} ({}, OpenCL driver {})",
                info_string(id, cl3::device::CL_DEVICE_VERSION),
                info_string(id, cl3::device::CL_DRIVER_VERSION)
            );
            out.push(ClDevice {
                id,
                description,
                memory,
            });
        }
    }
    if out.is_empty() {
        return Err(if skipped.is_empty() {
            "no OpenCL device: the ICD loader found no platform with a device".into()
        } else {
            format!(
                "no OpenCL device with shared virtual memory (OpenCL 2.0 SVM), which gaudi's OpenCL runtime needs: {}",
                skipped.join(", ")
            )
        });
    }
    Ok(out)
}

/// The OpenCL devices this runtime can open: description and memory size.
pub fn devices() -> std::result::Result<Vec<(String, u64)>, String> {
    let _discovery = DISCOVERY.lock().unwrap_or_else(|e| e.into_inner());
    Ok(usable_devices()?
        .into_iter()
        .map(|d| (d.description, d.memory))
        .collect())
}
