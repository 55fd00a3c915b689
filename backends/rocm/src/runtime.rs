//! The rocm implementation of the kernels' runtime: a GPU, our
//! hipRTC-compiled kernels and hipBLASLt or rocBLAS.

use crate::gemm::Gemm;
use crate::gpu::Gpu;
use crate::launch::{Args, Config, Functions};
use crate::memory::{address, RocmMemory};
use std::sync::{Arc, Mutex};
use tessera_core::hal::Buffer;
use tessera_core::{DType, Error, Result};
pub use tessera_gpu_kernels::runtime::Runtime;

/// The real thing: a GPU, our hipRTC-compiled kernels and hipBLASLt or rocBLAS.
pub struct RocmRuntime {
    pub gpu: Arc<Gpu>,
    functions: Functions,
    gemm: Mutex<Gemm>,
    /// hipBLASLt's scratch, alive as long as the GEMM that uses it.
    _workspace: Buffer,
}

impl RocmRuntime {
    pub fn new(gpu: Arc<Gpu>, functions: Functions, gemm: Gemm, workspace: Buffer) -> Self {
        RocmRuntime {
            gpu,
            functions,
            gemm: Mutex::new(gemm),
            _workspace: workspace,
        }
    }
}

impl Runtime for RocmRuntime {
    fn name(&self) -> &str {
        "rocm"
    }
    fn launch(&self, name: &str, cfg: Config, args: Args) -> Result<()> {
        self.functions.launch(&self.gpu, name, cfg, args)
    }
    fn alloc(&self, bytes: usize) -> Result<Buffer> {
        RocmMemory::alloc(&self.gpu, bytes)
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
            .map_err(|_| Error::invalid("hipBLASLt or rocBLAS lock poisoned"))?
            .matmul(dtype, tnk, w, x, out)
    }
}
