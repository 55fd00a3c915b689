//! Loading the compiled code objects and launching their kernels with
//! arguments checked against each kernel's parameter list, as the code
//! object's metadata states it (sizes and pointer-ness: the metadata does
//! not tell an `int` from a `float`).

use crate::code_object;
use crate::gpu::{check, Gpu, LDS_PER_BLOCK};
use crate::hip::{Function, Module};
use std::collections::HashMap;
use std::ffi::{c_void, CString};
use tessera_core::{Error, Result};
pub use tessera_gpu_kernels::launch::{Args, Config};

/// A parameter list as `p` (8-byte pointer) and `4` (4-byte value) marks,
/// the form both the host's `Args` kinds and the metadata reduce to.
fn shape_of_kinds(kinds: &str) -> String {
    kinds
        .chars()
        .map(|k| if k == 'p' { 'p' } else { '4' })
        .collect()
}

fn shape_of_args(args: &[code_object::Arg]) -> String {
    args.iter()
        .map(|a| match (a.pointer, a.size) {
            (true, 8) => 'p',
            (false, 4) => '4',
            _ => '?',
        })
        .collect()
}

/// The kernels of the loaded modules, by name.
pub struct Functions {
    /// Each kernel, its LDS use, and its parameter list shape.
    by_name: HashMap<String, (Function, u32, String)>,
}

// SAFETY: function handles are usable from any thread.
unsafe impl Send for Functions {}
unsafe impl Sync for Functions {}

impl Functions {
    /// Loads every code object and resolves `names` from them.
    pub fn load(gpu: &Gpu, objects: &[(&str, Vec<u8>)], names: &[String]) -> Result<Functions> {
        let rt = gpu.runtime();
        gpu.bind()?;
        let mut modules: Vec<Module> = vec![];
        let mut meta = HashMap::new();
        for (file, image) in objects {
            for k in code_object::kernels(image)
                .map_err(|e| Error::device("rocm", format!("code object of {file}: {e}")))?
            {
                meta.insert(k.name.clone(), k);
            }
            let mut module: Module = std::ptr::null_mut();
            // SAFETY: a complete code object; the module lives as long as
            // the process (we never unload it).
            let rc =
                unsafe { (rt.hipModuleLoadData)(&mut module, image.as_ptr() as *const c_void) };
            check(rt, &format!("hipModuleLoadData({file})"), rc)?;
            modules.push(module);
        }
        let mut by_name = HashMap::new();
        for name in names {
            let cname = CString::new(name.as_str())
                .map_err(|_| Error::invalid("kernel name contains a NUL byte"))?;
            let found = modules.iter().find_map(|&m| {
                let mut f: Function = std::ptr::null_mut();
                // SAFETY: a loaded module and a NUL-terminated name.
                let rc = unsafe { (rt.hipModuleGetFunction)(&mut f, m, cname.as_ptr()) };
                (rc == 0 && !f.is_null()).then_some(f)
            });
            let f = found.ok_or_else(|| {
                Error::device(
                    "rocm",
                    format!("kernel {name} is in none of the compiled kernel files"),
                )
            })?;
            let info = meta
                .get(name)
                .ok_or_else(|| Error::device("rocm", format!("kernel {name} has no metadata")))?;
            let dynamic = LDS_PER_BLOCK.saturating_sub(info.group_segment_fixed_size);
            by_name.insert(name.clone(), (f, dynamic, shape_of_args(&info.args)));
        }
        Ok(Functions { by_name })
    }

    /// Launches kernel `name` on the GPU's stream.
    pub fn launch(&self, gpu: &Gpu, name: &str, cfg: Config, mut args: Args) -> Result<()> {
        let (f, max_shared, signature) = self
            .by_name
            .get(name)
            .ok_or_else(|| Error::invalid(format!("no kernel named {name}")))?;
        let given = shape_of_kinds(args.kinds());
        if given != *signature {
            return Err(Error::invalid(format!(
                "kernel {name} takes parameters ({signature}) but was given ({given}) (p: pointer, 4: 4-byte value)"
            )));
        }
        cfg.check_shared("rocm", name, *max_shared)?;
        if cfg.is_empty() {
            return Ok(());
        }
        let mut params = args.params();
        gpu.bind()?;
        let rt = gpu.runtime();
        // SAFETY: `params` points at one value per kernel parameter, in the
        // ABI's order, checked against the metadata above; the pointers they
        // carry were checked against their buffers by the caller.
        let rc = unsafe {
            (rt.hipModuleLaunchKernel)(
                *f,
                cfg.grid.0,
                cfg.grid.1,
                cfg.grid.2,
                cfg.block,
                1,
                1,
                cfg.shared,
                gpu.stream(),
                params.as_mut_ptr(),
                std::ptr::null_mut(),
            )
        };
        check(rt, &format!("launch of {name}"), rc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_kinds_and_metadata_reduce_to_one_shape() {
        assert_eq!(shape_of_kinds("ppif"), "pp44");
        let arg = |size, pointer| code_object::Arg { size, pointer };
        assert_eq!(
            shape_of_args(&[arg(8, true), arg(8, true), arg(4, false), arg(4, false)]),
            "pp44"
        );
        assert_eq!(shape_of_args(&[arg(8, false)]), "?");
    }
}
