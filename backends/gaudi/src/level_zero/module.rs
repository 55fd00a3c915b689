//! Our program on the device: one module from the SPIR-V, or from the
//! native binary a previous build left in the cache, and its kernels.

use super::calls::{c_text, check, message, ok, BACKEND};
use super::{Kernel, LevelZero};
use level_zero_sys::*;
use std::ffi::CString;
use std::path::Path;
use std::ptr::{null, null_mut};
use tessera_core::{Error, Result};
use tessera_gpu_kernels::sources::write_atomically;

/// SPIR-V carries its OpenCL C version; the driver needs no options.
pub(super) const BUILD_FLAGS: &std::ffi::CStr = c"";

impl LevelZero {
    /// The cached native binary when it loads, else the module built from
    /// SPIR-V, whose native binary is then cached (over a stale one).
    pub(super) fn load_module(&self, spirv: &[u8], path: &Path) -> Result<ze_module_handle_t> {
        if let Ok(bin) = std::fs::read(path) {
            match self.create_module(ZE_MODULE_FORMAT_NATIVE, &bin) {
                Ok(m) => return Ok(m),
                Err(e) => tracing::warn!(
                    "{} did not load ({e}); building the kernels again",
                    path.display()
                ),
            }
        }
        let module = self.create_module(ZE_MODULE_FORMAT_IL_SPIRV, spirv)?;
        let (ze, mut size) = (self.ze, 0usize);
        let call = "zeModuleGetNativeBinary";
        // SAFETY: our module; the buffer has the size the first call gave.
        let bin = ok(
            unsafe { ze.zeModuleGetNativeBinary(module, &mut size, null_mut()) },
            call,
        )
        .and_then(|()| {
            let mut bin = vec![0u8; size];
            ok(
                unsafe { ze.zeModuleGetNativeBinary(module, &mut size, bin.as_mut_ptr()) },
                call,
            )?;
            bin.truncate(size);
            Ok(bin)
        });
        // A cache that cannot be written only costs a build next time.
        match bin {
            Ok(bin) if !bin.is_empty() => {
                if let Err(e) = write_atomically(path, &bin) {
                    tracing::warn!("could not cache the kernels in {}: {e}", path.display());
                }
            }
            Ok(_) => {}
            Err(e) => tracing::warn!("kernels not cached: {e}"),
        }
        Ok(module)
    }

    /// A module from SPIR-V or a native binary; a failed build's error
    /// carries the driver's build log.
    fn create_module(
        &self,
        format: ze_module_format_t,
        input: &[u8],
    ) -> Result<ze_module_handle_t> {
        let desc = ze_module_desc_t {
            stype: ZE_STRUCTURE_TYPE_MODULE_DESC,
            pNext: null(),
            format,
            inputSize: input.len(),
            pInputModule: input.as_ptr(),
            pBuildFlags: BUILD_FLAGS.as_ptr(),
            pConstants: null(),
        };
        let (ze, mut module, mut log) = (self.ze, null_mut(), null_mut());
        // SAFETY: `desc` points at `input` and a static string, alive for the
        // call; the build log is read, then destroyed once.
        let r =
            unsafe { ze.zeModuleCreate(self.context, self.device, &desc, &mut module, &mut log) };
        let mut text = String::new();
        if !log.is_null() {
            let mut size = 0usize;
            // SAFETY: as above; the buffer has the size the first call gave.
            unsafe {
                if r != ZE_RESULT_SUCCESS
                    && ze.zeModuleBuildLogGetString(log, &mut size, null_mut()) == ZE_RESULT_SUCCESS
                {
                    let mut buf = vec![0; size.max(1)];
                    if ze.zeModuleBuildLogGetString(log, &mut size, buf.as_mut_ptr())
                        == ZE_RESULT_SUCCESS
                    {
                        text = format!("; build log:\n{}", c_text(&buf).trim());
                    }
                }
                ze.zeModuleBuildLogDestroy(log);
            }
        }
        let what = if format == ZE_MODULE_FORMAT_NATIVE {
            "native binary"
        } else {
            "SPIR-V"
        };
        ok(r, format_args!("zeModuleCreate ({what})"))
            .map_err(|m| Error::device(BACKEND, format!("{m}{text}")))?;
        if module.is_null() {
            return Err(Error::device(BACKEND, "zeModuleCreate gave no module"));
        }
        Ok(module)
    }

    pub(super) fn create_kernel(&self, name: &str) -> Result<Kernel> {
        let cname =
            CString::new(name).map_err(|_| Error::invalid(format!("kernel name {name:?}")))?;
        let desc = ze_kernel_desc_t {
            stype: ZE_STRUCTURE_TYPE_KERNEL_DESC,
            pNext: null(),
            flags: 0,
            pKernelName: cname.as_ptr(),
        };
        let mut handle = null_mut();
        let mut props = props!(ze_kernel_properties_t, ZE_STRUCTURE_TYPE_KERNEL_PROPERTIES);
        // SAFETY: our module; `desc` and `props` are locals; the kernel is
        // destroyed if it is not kept.
        unsafe {
            check(
                self.ze.zeKernelCreate(self.module, &desc, &mut handle),
                format_args!("zeKernelCreate({name})"),
            )?;
            let r = self.ze.zeKernelGetProperties(handle, &mut props);
            if r != ZE_RESULT_SUCCESS {
                self.ze.zeKernelDestroy(handle);
                return Err(Error::device(
                    BACKEND,
                    message(r, format_args!("zeKernelGetProperties({name})")),
                ));
            }
        }
        Ok(Kernel {
            handle,
            params: props.numKernelArgs,
            group: 0,
            static_local: props.localMemSize,
        })
    }
}
