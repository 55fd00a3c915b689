//! The cuda `Device`: memory through the GPU's stream, eager execution of
//! graphs through the HAL interpreter with our kernels, and CUDA graphs for
//! the small (decode) step shapes.

use crate::gpu::Gpu;
use crate::graphs::Captured;
use crate::memory::{address, CudaMemory};
use crate::runtime::CudaRuntime;
use std::sync::Arc;
use tessera_core::hal::{
    interpreter, Buffer, Capabilities, Device, Executable, Graph, Kernels, MemoryInfo, WeightMap,
};
use tessera_core::Result;
use tessera_gpu_kernels::kernels::GpuKernels;

/// Steps of at most this many tokens are captured as CUDA graphs: decode
/// buckets, where launch overhead rivals the work. Larger steps run eagerly.
const GRAPH_MAX_TOKENS: usize = 256;

pub use tessera_gpu_kernels::kernels::capabilities;

pub struct CudaDevice {
    gpu: Arc<Gpu>,
    kernels: Arc<GpuKernels<CudaRuntime>>,
    graphs: bool,
}

impl CudaDevice {
    pub fn new(gpu: Arc<Gpu>, kernels: Arc<GpuKernels<CudaRuntime>>) -> Self {
        // TESSERA_CUDA_GRAPHS=0 turns capture off (to compare, or to debug).
        let graphs = std::env::var("TESSERA_CUDA_GRAPHS").map_or(true, |v| v != "0");
        CudaDevice {
            gpu,
            kernels,
            graphs,
        }
    }

    pub fn gpu(&self) -> &Arc<Gpu> {
        &self.gpu
    }
}

impl Device for CudaDevice {
    fn name(&self) -> String {
        format!("cuda:{}", self.gpu.ordinal)
    }

    fn capabilities(&self) -> Capabilities {
        capabilities(self.graphs)
    }

    fn memory_info(&self) -> Result<MemoryInfo> {
        let (free, total) = self.gpu.mem_info()?;
        Ok(MemoryInfo {
            free_bytes: free,
            total_bytes: total,
        })
    }

    fn alloc(&self, bytes: usize) -> Result<Buffer> {
        CudaMemory::alloc(&self.gpu, bytes)
    }

    fn upload(&self, dst: &Buffer, offset: usize, src: &[u8]) -> Result<()> {
        self.gpu.upload(address(dst, offset, src.len())?, src)
    }

    fn download(&self, src: &Buffer, offset: usize, dst: &mut [u8]) -> Result<()> {
        self.gpu.download(address(src, offset, dst.len())?, dst)
    }

    fn copy(
        &self,
        src: &Buffer,
        src_offset: usize,
        dst: &Buffer,
        dst_offset: usize,
        bytes: usize,
    ) -> Result<()> {
        let (s, d) = (
            address(src, src_offset, bytes)?,
            address(dst, dst_offset, bytes)?,
        );
        self.gpu.copy(s, d, bytes)
    }

    fn synchronize(&self) -> Result<()> {
        self.gpu.synchronize()
    }

    fn compile(&self, graph: &Graph, weights: &WeightMap) -> Result<Box<dyn Executable>> {
        let kernels: Arc<dyn Kernels> = self.kernels.clone();
        let eager = interpreter::compile(kernels, graph, weights)?;
        let tokens = graph
            .inputs
            .first()
            .and_then(|v| graph.ty(*v).shape.first().copied())
            .unwrap_or(usize::MAX);
        if self.graphs && tokens <= GRAPH_MAX_TOKENS {
            Ok(Box::new(Captured::new(self.gpu.clone(), eager)))
        } else {
            Ok(eager)
        }
    }

    fn kernels(&self) -> Option<Arc<dyn Kernels>> {
        Some(self.kernels.clone())
    }
}
