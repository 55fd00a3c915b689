//! Our program on an OpenCL device: from the OpenCL C sources, or from the
//! SPIR-V Level Zero loads; cached as a program binary; its kernels'
//! parameter kinds.

use super::{cl_error, info_string, OpenCl, BACKEND};
use crate::sources;
use cl3::types::{cl_device_id, cl_kernel, cl_program};
use std::ffi::CString;
use std::path::Path;
use std::ptr;
use tessera_core::{Error, Result};

/// `-cl-kernel-arg-info` lets `launch` check every argument's kind against
/// the kernel's declaration, as the cuda (PTX) and rocm (metadata) backends do.
const BUILD_OPTIONS: &str = "-cl-std=CL1.2 -cl-kernel-arg-info";
/// Added for CPU devices (PoCL): kernels pick work splits that suit one
/// core running a work-group's items in a loop (gemv.cl).
const CPU_OPTIONS: &str = " -DTSR_CPU=1";

/// What the program is built from: the OpenCL C sources, or the SPIR-V that
/// Level Zero loads (on devices that take SPIR-V: the same module, so the
/// OpenCL runtime checks it too). `TESSERA_OPENCL_PROGRAM=source|spirv`
/// overrides the choice.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ProgramForm {
    Source,
    Spirv,
}

/// The form to build from, and whether the user chose it.
pub(super) fn program_form(device: cl_device_id) -> Result<(ProgramForm, bool)> {
    match std::env::var("TESSERA_OPENCL_PROGRAM").as_deref() {
        Ok("source") => return Ok((ProgramForm::Source, true)),
        Ok("spirv") => return Ok((ProgramForm::Spirv, true)),
        Err(_) | Ok("") => {}
        Ok(other) => {
            return Err(Error::device(
                BACKEND,
                format!(
                    "TESSERA_OPENCL_PROGRAM={other} is not a program form: use source or spirv"
                ),
            ))
        }
    }
    let il = info_string(device, cl3::device::CL_DEVICE_IL_VERSION);
    let form = if il.contains("SPIR-V") {
        ProgramForm::Spirv
    } else {
        ProgramForm::Source
    };
    Ok((form, false))
}

impl OpenCl {
    /// Our program for this device: the cached binary when one exists and
    /// loads, else built from source and cached.
    pub(super) fn build(&self, cache_dir: &Path) -> Result<cl_program> {
        let source = sources::opencl_source();
        let options = self.build_options();
        // SPIR-V as text for the key: one char per byte, so distinct
        // modules give distinct keys.
        let spirv_text: String;
        let input: &str = match self.form {
            ProgramForm::Source => &source,
            ProgramForm::Spirv => {
                spirv_text = sources::SPIRV.iter().map(|&b| char::from(b)).collect();
                &spirv_text
            }
        };
        let key = tessera_gpu_kernels::sources::cache_key(&[input, &self.description, &options]);
        let path = cache_dir.join(format!("{key:016x}.clbin"));
        let options = CString::new(options).map_err(|_| Error::invalid("build options"))?;
        if let Ok(binary) = std::fs::read(&path) {
            // SAFETY: one device, one binary; the status array is sized by cl3.
            if let Ok(p) = unsafe {
                cl3::program::create_program_with_binary(self.context, &[self.device], &[&binary])
            } {
                if cl3::program::build_program(p, &[self.device], &options, None, ptr::null_mut())
                    .is_ok()
                {
                    return Ok(p);
                }
                // SAFETY: created above, used by nothing.
                unsafe { cl3::program::release_program(p).ok() };
            }
            tracing::warn!(
                "the cached OpenCL binary {} does not load; building again",
                path.display()
            );
        }
        let program = match self.form {
            ProgramForm::Source => {
                cl3::program::create_program_with_source(self.context, &[&source])
                    .map_err(|e| cl_error("clCreateProgramWithSource", e))?
            }
            ProgramForm::Spirv => {
                cl3::program::create_program_with_il(self.context, sources::SPIRV)
                    .map_err(|e| cl_error("clCreateProgramWithIL", e))?
            }
        };
        if let Err(code) =
            cl3::program::build_program(program, &[self.device], &options, None, ptr::null_mut())
        {
            let log = cl3::program::get_program_build_info(
                program,
                self.device,
                cl3::program::CL_PROGRAM_BUILD_LOG,
            )
            .map(String::from)
            .unwrap_or_default();
            // SAFETY: created above, used by nothing.
            unsafe { cl3::program::release_program(program).ok() };
            return Err(Error::device(
                BACKEND,
                format!(
                    "building the kernels failed ({}): {}",
                    cl3::error_codes::error_text(code),
                    log.trim()
                ),
            ));
        }
        if let Ok(binaries) =
            cl3::program::get_program_info(program, cl3::program::CL_PROGRAM_BINARIES)
                .map(Vec::<Vec<u8>>::from)
        {
            if let Some(b) = binaries.first().filter(|b| !b.is_empty()) {
                if let Err(e) = std::fs::create_dir_all(cache_dir)
                    .and_then(|_| tessera_gpu_kernels::sources::write_atomically(&path, b))
                {
                    tracing::warn!(
                        "could not cache the OpenCL binary in {}: {e}",
                        path.display()
                    );
                }
            }
        }
        Ok(program)
    }

    fn build_options(&self) -> String {
        if self.form == ProgramForm::Spirv {
            // The SPIR-V carries its language version and has no sources to
            // define TSR_CPU in: it is the GPU module as built.
            String::new()
        } else if self.cpu {
            format!("{BUILD_OPTIONS}{CPU_OPTIONS}")
        } else {
            BUILD_OPTIONS.to_string()
        }
    }

    pub(super) fn kernel_kinds(&self, handle: cl_kernel, name: &str) -> Result<String> {
        let count: u32 = cl3::kernel::get_kernel_info(handle, cl3::kernel::CL_KERNEL_NUM_ARGS)
            .map(u32::from)
            .map_err(|e| cl_error("clGetKernelInfo", e))?;
        let unknown = "?".repeat(count as usize);
        if self.form == ProgramForm::Spirv {
            return Ok(unknown);
        }
        // A program loaded from a cached binary may keep no argument info
        // (Intel's runtime): then only the count is checked, as for SPIR-V.
        if matches!(
            cl3::kernel::get_kernel_arg_info(
                handle,
                0,
                cl3::kernel::CL_KERNEL_ARG_ADDRESS_QUALIFIER
            ),
            Err(cl3::error_codes::CL_KERNEL_ARG_INFO_NOT_AVAILABLE)
        ) {
            return Ok(unknown);
        }
        (0..count)
            .map(|i| {
                let space: u32 = cl3::kernel::get_kernel_arg_info(
                    handle,
                    i,
                    cl3::kernel::CL_KERNEL_ARG_ADDRESS_QUALIFIER,
                )
                .map(u32::from)
                .map_err(|e| cl_error("clGetKernelArgInfo", e))?;
                let ty = cl3::kernel::get_kernel_arg_info(
                    handle,
                    i,
                    cl3::kernel::CL_KERNEL_ARG_TYPE_NAME,
                )
                .map(String::from)
                .unwrap_or_default();
                let ty = ty.trim_end_matches('\0').trim();
                Ok(match space {
                    cl3::kernel::CL_KERNEL_ARG_ADDRESS_LOCAL => 'l',
                    cl3::kernel::CL_KERNEL_ARG_ADDRESS_PRIVATE if ty == "int" => 'i',
                    cl3::kernel::CL_KERNEL_ARG_ADDRESS_PRIVATE if ty == "float" => 'f',
                    cl3::kernel::CL_KERNEL_ARG_ADDRESS_PRIVATE => {
                        return Err(Error::invalid(format!(
                            "kernel {name} takes a {ty} by value, which the host never passes"
                        )))
                    }
                    _ => 'p',
                })
            })
            .collect()
    }
}
