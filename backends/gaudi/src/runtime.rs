//! The gaudi implementation of the kernels' runtime: our OpenCL C kernels
//! through the device's `Api`, and our tiled GEMM (`kernels/opencl/matmul.cl`)
//! where the cuda and rocm backends call a vendor library.

use crate::gpu::{address, Gaudi};
use std::sync::Arc;
use tessera_core::hal::Buffer;
use tessera_core::{DType, Error, Result};
use tessera_gpu_kernels::device::StreamGpu;
use tessera_gpu_kernels::launch::{Args, Config};
use tessera_gpu_kernels::runtime::{gemv_gpu_config, Runtime};

/// The GEMM kernel's output tile (rows and columns) and work-group size:
/// its ABI, fixed in matmul.cl.
const MATMUL_TILE: usize = 64;
const MATMUL_BLOCK: u32 = 256;
/// Rows per work-group of gemv.cl on a CPU (one row per work-item).
const GEMV_CPU_ROWS: usize = 16;

pub struct GaudiRuntime {
    pub gpu: Arc<Gaudi>,
}

impl Runtime for GaudiRuntime {
    fn name(&self) -> &str {
        "gaudi"
    }
    fn launch(&self, name: &str, cfg: Config, args: Args) -> Result<()> {
        self.gpu.api.launch(name, &cfg, &args)
    }
    fn alloc(&self, bytes: usize) -> Result<Buffer> {
        StreamGpu::alloc(&self.gpu, bytes)
    }
    fn address(&self, buffer: &Buffer, offset: usize, bytes: usize) -> Result<u64> {
        address(buffer, offset, bytes)
    }
    fn upload(&self, dst: u64, src: &[u8]) -> Result<()> {
        self.gpu.api.upload(dst, src)
    }
    fn memset_zero(&self, dst: u64, bytes: usize) -> Result<()> {
        self.gpu.api.fill_zero(dst, bytes)
    }
    fn gemv_config(&self, n: usize) -> Result<Config> {
        if self.gpu.api.is_cpu() {
            Config::new((n.div_ceil(GEMV_CPU_ROWS), 1, 1), GEMV_CPU_ROWS as u32, 0)
        } else {
            gemv_gpu_config(n)
        }
    }
    fn matmul(
        &self,
        dtype: DType,
        (t, n, k): (usize, usize, usize),
        w: u64,
        x: u64,
        out: u64,
    ) -> Result<()> {
        let name = match dtype {
            DType::F32 => "matmul_f32",
            DType::BF16 => "matmul_bf16",
            other => {
                return Err(Error::Unsupported {
                    backend: "gaudi".into(),
                    what: format!("{other} matmul"),
                })
            }
        };
        let cfg = Config::new(
            (n.div_ceil(MATMUL_TILE), t.div_ceil(MATMUL_TILE), 1),
            MATMUL_BLOCK,
            0,
        )?;
        let args = Args::new().ptr(w).ptr(x).ptr(out).int(t)?.int(n)?.int(k)?;
        self.launch(name, cfg, args)
    }
}
