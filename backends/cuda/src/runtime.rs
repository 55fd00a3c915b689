//! What the op kernels need from the thing that runs them: launches of our
//! kernels by name, memory, and the GEMM. The GPU implements it; a test
//! implements it with a CPU emulation of the same kernel sources, so the
//! host logic of `kernels.rs` and the kernels' numerics are checked on
//! machines with no GPU.

use crate::gemm::Gemm;
use crate::gpu::Gpu;
use crate::launch::{Args, Config, Functions};
use crate::memory::{address, CudaMemory};
use std::sync::{Arc, Mutex};
use tessera_core::hal::Buffer;
use tessera_core::{DType, Error, Result};

pub trait Runtime: Send + Sync {
    /// Backend name, for error messages.
    fn name(&self) -> &str;
    /// Launches kernel `name` (in stream order).
    fn launch(&self, name: &str, cfg: Config, args: Args) -> Result<()>;
    fn alloc(&self, bytes: usize) -> Result<Buffer>;
    /// The device address of `bytes` bytes at `offset` of `buffer`, checked.
    fn address(&self, buffer: &Buffer, offset: usize, bytes: usize) -> Result<u64>;
    fn upload(&self, dst: u64, src: &[u8]) -> Result<()>;
    fn memset_zero(&self, dst: u64, bytes: usize) -> Result<()>;
    /// `out [t, n] (f32) = x [t, k] · w [n, k]ᵀ`, `x` and `w` of `dtype`.
    fn matmul(
        &self,
        dtype: DType,
        tnk: (usize, usize, usize),
        w: u64,
        x: u64,
        out: u64,
    ) -> Result<()>;
}

/// The real thing: a GPU, our NVRTC-compiled kernels and cuBLASLt.
pub struct CudaRuntime {
    pub gpu: Arc<Gpu>,
    functions: Functions,
    gemm: Mutex<Gemm>,
}

impl CudaRuntime {
    pub fn new(gpu: Arc<Gpu>, functions: Functions, gemm: Gemm) -> Self {
        CudaRuntime {
            gpu,
            functions,
            gemm: Mutex::new(gemm),
        }
    }
}

impl Runtime for CudaRuntime {
    fn name(&self) -> &str {
        "cuda"
    }
    fn launch(&self, name: &str, cfg: Config, args: Args) -> Result<()> {
        self.functions.launch(&self.gpu, name, cfg, args)
    }
    fn alloc(&self, bytes: usize) -> Result<Buffer> {
        CudaMemory::alloc(&self.gpu, bytes)
    }
    fn address(&self, buffer: &Buffer, offset: usize, bytes: usize) -> Result<u64> {
        address(buffer, offset, bytes)
    }
    fn upload(&self, dst: u64, src: &[u8]) -> Result<()> {
        self.gpu.upload(dst, src)
    }
    fn memset_zero(&self, dst: u64, bytes: usize) -> Result<()> {
        self.gpu.memset_zero(dst, bytes)
    }
    fn matmul(
        &self,
        dtype: DType,
        tnk: (usize, usize, usize),
        w: u64,
        x: u64,
        out: u64,
    ) -> Result<()> {
        self.gemm
            .lock()
            .map_err(|_| Error::invalid("cuBLASLt lock poisoned"))?
            .matmul(dtype, tnk, w, x, out)
    }
}
