//! Loading the compiled kernels and launching them with checked arguments.

use crate::gpu::{fail, Gpu};
use cudarc::driver::{result, sys};
use std::collections::HashMap;
use std::ffi::{c_void, CString};
use tessera_core::{Error, Result};

/// Kernel arguments by value, in order: each one 8 bytes of storage that
/// the driver reads as many bytes of as the parameter's type has, and its
/// kind (`p` pointer, `i` int, `f` float), checked at launch against the
/// kernel's parameter list in its PTX.
#[derive(Default)]
pub struct Args {
    values: Vec<[u8; 8]>,
    kinds: String,
}

impl Args {
    pub fn new() -> Self {
        Args {
            values: Vec::with_capacity(24),
            kinds: String::with_capacity(24),
        }
    }
    pub fn ptr(mut self, p: sys::CUdeviceptr) -> Self {
        self.values.push(p.to_le_bytes());
        self.kinds.push('p');
        self
    }
    pub fn i32(mut self, v: i32) -> Self {
        let mut s = [0u8; 8];
        s[..4].copy_from_slice(&v.to_le_bytes());
        self.values.push(s);
        self.kinds.push('i');
        self
    }
    /// A size or index; the kernels take `int`.
    pub fn int(self, v: usize) -> Result<Self> {
        let v = i32::try_from(v)
            .map_err(|_| Error::invalid(format!("{v} does not fit a kernel's int")))?;
        Ok(self.i32(v))
    }
    /// The parameter kinds, in order (`p`, `i`, `f`).
    pub fn kinds(&self) -> &str {
        &self.kinds
    }

    /// One pointer per argument, at its value: what `cuLaunchKernel` takes
    /// as `kernelParams`. Valid while `self` is neither moved nor changed.
    pub fn params(&mut self) -> Vec<*mut c_void> {
        self.values
            .iter_mut()
            .map(|s| s.as_mut_ptr() as *mut c_void)
            .collect()
    }

    pub fn f32(mut self, v: f32) -> Self {
        let mut s = [0u8; 8];
        s[..4].copy_from_slice(&v.to_le_bytes());
        self.values.push(s);
        self.kinds.push('f');
        self
    }
}

/// Grid and block sizes, and dynamic shared memory in bytes.
pub struct Config {
    pub grid: (u32, u32, u32),
    pub block: u32,
    pub shared: u32,
}

impl Config {
    pub fn new(grid: (usize, usize, usize), block: u32, shared: usize) -> Result<Config> {
        let dim = |v: usize, max: u32, what: &str| -> Result<u32> {
            u32::try_from(v)
                .ok()
                .filter(|&v| v <= max)
                .ok_or_else(|| Error::invalid(format!("grid {what} of {v} is too large")))
        };
        Ok(Config {
            grid: (
                dim(grid.0, i32::MAX as u32, "x")?,
                dim(grid.1, 65535, "y")?,
                dim(grid.2, 65535, "z")?,
            ),
            block,
            shared: u32::try_from(shared)
                .map_err(|_| Error::invalid("shared memory size overflows"))?,
        })
    }
    /// One block per `per_block` elements of `count`.
    pub fn linear(count: usize, per_block: u32) -> Result<Config> {
        Config::new(
            (count.div_ceil(per_block as usize).max(1), 1, 1),
            per_block,
            0,
        )
    }
}

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
        if args.kinds != *signature {
            return Err(Error::invalid(format!(
                "kernel {name} takes parameters ({signature}) but was given ({})",
                args.kinds
            )));
        }
        if cfg.shared > max_shared {
            return Err(Error::Unsupported {
                backend: "cuda".into(),
                what: format!(
                    "{name} with {} bytes of shared memory (the device allows {}); use a smaller head_dim or GQA group",
                    cfg.shared, max_shared
                ),
            });
        }
        if cfg.grid.0 == 0 || cfg.grid.1 == 0 || cfg.grid.2 == 0 {
            return Ok(()); // nothing to do
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
