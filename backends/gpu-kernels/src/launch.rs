//! Kernel launches as the host code describes them: arguments by value
//! with their kinds, and the launch shape. The backends check both against
//! the compiled kernel before they launch.

use std::ffi::c_void;
use tessera_core::{Error, Result};

/// Kernel arguments by value, in order: each one 8 bytes of storage that
/// the driver reads as many bytes of as the parameter's type has, and its
/// kind (`p` pointer, `i` int, `f` float), checked at launch against the
/// kernel's parameter list as its compiled
/// form declares it (PTX on NVIDIA, the code object's metadata on AMD).
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
    pub fn ptr(mut self, p: u64) -> Self {
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

    /// The values, in order: a pointer's 8 bytes, an int's or float's 4
    /// (little-endian, zero-padded), for APIs that take one argument per
    /// call (OpenCL, Level Zero).
    pub fn values(&self) -> &[[u8; 8]] {
        &self.values
    }

    /// One pointer per argument, at its value: what `cuLaunchKernel` and
    /// `hipModuleLaunchKernel` take as `kernelParams`. Valid while `self` is neither moved nor changed.
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
    /// Whether the launch has no block (nothing to do; drivers reject it).
    pub fn is_empty(&self) -> bool {
        self.grid.0 == 0 || self.grid.1 == 0 || self.grid.2 == 0
    }

    /// Checks the dynamic shared memory against what kernel `name` may use
    /// on `backend`'s device.
    pub fn check_shared(&self, backend: &str, name: &str, max_shared: u32) -> Result<()> {
        if self.shared > max_shared {
            return Err(Error::Unsupported {
                backend: backend.into(),
                what: format!(
                    "{name} with {} bytes of shared memory (the device allows {max_shared}); use a smaller head_dim or GQA group",
                    self.shared
                ),
            });
        }
        Ok(())
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
