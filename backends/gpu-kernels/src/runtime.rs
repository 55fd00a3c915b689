//! What the op kernels need from the thing that runs them: launches of our
//! kernels by name, memory, and the GEMM. Each GPU backend implements it
//! (cuda: driver + cuBLASLt; rocm: HIP + hipBLASLt/rocBLAS); the emulator
//! implements it on the CPU with the same kernel sources, so the host logic
//! of `kernels.rs` and the kernels' numerics are checked with no GPU.

use crate::launch::{Args, Config};
use tessera_core::hal::Buffer;
use tessera_core::{DType, Result};

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
    /// The launch shape of the gemv kernels for `n` output rows: 4 rows per
    /// 128-thread block (kernels/cuda/gemv.cu). A runtime whose gemv kernel
    /// maps rows otherwise on its device says so here (gaudi on a CPU).
    fn gemv_config(&self, n: usize) -> Result<Config> {
        gemv_gpu_config(n)
    }
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

/// gemv.cu's launch shape: 4 output rows per 128-thread block.
pub fn gemv_gpu_config(n: usize) -> Result<Config> {
    Config::new((n.div_ceil(4), 1, 1), 128, 0)
}
