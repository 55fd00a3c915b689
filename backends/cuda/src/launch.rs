//! Loading the compiled kernels and launching them with checked arguments.

use crate::gpu::{fail, Gpu};
use cudarc::driver::{result, sys};
use std::collections::HashMap;
use std::ffi::{c_void, CString};
use tessera_core::{Error, Result};
pub use tessera_gpu_kernels::launch::{Args, Config};

/// Each kernel's parameter kinds (`p` 64-bit pointer, `i` 32-bit int, `f`
/// float) as its PTX declares them, by kernel name.
pub fn ptx_signatures(ptx: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut rest = ptx;
    while let Some(at) = rest.find(".entry ") {
        rest = &rest[at + ".entry ".len()..];
        let Some(open) = rest.find('(') else { break };
        let name = rest[..open].trim().to_string();
        let close = rest[open..].find(')').map_or(rest.len(), |c| open + c);
        let kinds: String = rest[open..close]
            .split(".param")
            .skip(1)
            .map(|p| {
                let ty = p.split_whitespace().next().unwrap_or("");
                match ty {
                    ".u64" | ".s64" | ".b64" => 'p',
                    ".u32" | ".s32" | ".b32" => 'i',
                    ".f32" => 'f',
                    _ => '?',
                }
            })
            .collect();
        out.insert(name, kinds);
        rest = &rest[close..];
    }
    out
}

/// The kernels of the loaded modules, by name.
pub struct Functions {
    /// Each kernel, the dynamic shared memory it may use, and its parameter kinds.
    by_name: HashMap<String, (sys::CUfunction, u32, String)>,
}

// SAFETY: function handles are usable from any thread with the context current.
unsafe impl Send for Functions {}
unsafe impl Sync for Functions {}

impl Functions {
    /// Loads every module's PTX and resolves `names` from them.
    pub fn load(gpu: &Gpu, ptx: &[(&str, String)], names: &[String]) -> Result<Functions> {
        gpu.bind()?;
        let mut modules = vec![];
        for (file, text) in ptx {
            let image = CString::new(text.as_str())
                .map_err(|_| Error::invalid(format!("PTX of {file} contains a NUL byte")))?;
            // SAFETY: a NUL-terminated PTX image; the module lives as long as
            // the context (we never unload it).
            let module = unsafe { result::module::load_data(image.as_ptr() as *const c_void) }
                .map_err(|e| fail(&format!("cuModuleLoadData({file})"), e))?;
            modules.push(module);
        }
        let signatures: HashMap<String, String> = ptx
            .iter()
            .flat_map(|(_, text)| ptx_signatures(text))
            .collect();
        let mut by_name = HashMap::new();
        for name in names {
            let cname = CString::new(name.as_str())
                .map_err(|_| Error::invalid("kernel name contains a NUL byte"))?;
            let found = modules.iter().find_map(|&m| {
                // SAFETY: a loaded module and a NUL-terminated name.
                unsafe { result::module::get_function(m, cname.clone()) }.ok()
            });
            let f = found.ok_or_else(|| {
                Error::device(
                    "cuda",
                    format!("kernel {name} is in none of the compiled kernel files"),
                )
            })?;
            // Let every kernel use as much dynamic shared memory as the device
            // allows beside its static shared memory; each launch checks its
            // own need against that.
            // SAFETY: a valid function.
            let fixed = unsafe {
                result::function::get_function_attribute(
                    f,
                    sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES,
                )
            }
            .map_err(|e| fail(&format!("cuFuncGetAttribute({name})"), e))?;
            let dynamic = gpu.max_shared_optin.saturating_sub(fixed.max(0) as u32);
            // SAFETY: a valid function.
            unsafe {
                result::function::set_function_attribute(
                    f,
                    sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                    dynamic as i32,
                )
            }
            .map_err(|e| fail(&format!("cuFuncSetAttribute({name})"), e))?;
            let signature = signatures.get(name).cloned().unwrap_or_default();
            by_name.insert(name.clone(), (f, dynamic, signature));
        }
        Ok(Functions { by_name })
    }

    /// Launches kernel `name` on the GPU's stream.
    pub fn launch(&self, gpu: &Gpu, name: &str, cfg: Config, mut args: Args) -> Result<()> {
        let (f, max_shared, signature) = self
            .by_name
            .get(name)
            .ok_or_else(|| Error::invalid(format!("no kernel named {name}")))?;
        let (f, max_shared) = (*f, *max_shared);
        if args.kinds() != signature.as_str() {
            return Err(Error::invalid(format!(
                "kernel {name} takes parameters ({signature}) but was given ({})",
                args.kinds()
            )));
        }
        cfg.check_shared("cuda", name, max_shared)?;
        if cfg.is_empty() {
            return Ok(());
        }
        let mut params = args.params();
        gpu.bind()?;
        // SAFETY: `params` points at one value per kernel parameter, in the
        // ABI's order (kernels/cuda/*.cu); the pointers they carry were
        // checked against their buffers by the caller.
        unsafe {
            result::launch_kernel(
                f,
                cfg.grid,
                (cfg.block, 1, 1),
                cfg.shared,
                gpu.stream(),
                &mut params,
            )
        }
        .map_err(|e| fail(&format!("launch of {name}"), e))
    }
}
