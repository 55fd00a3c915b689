//! The HAL `Device` of a GPU backend, written once: memory through the
//! GPU's one in-order stream, eager execution of graphs through the HAL
//! interpreter with our kernels, and CUDA/HIP graphs for the small (decode)
//! step shapes. A backend supplies its GPU through [`StreamGpu`].

use crate::graphs::Captured;
use crate::kernels::{capabilities, GpuKernels};
use crate::runtime::Runtime;
use std::sync::Arc;
use tessera_core::hal::{
    interpreter, Buffer, Capabilities, Device, Executable, Graph, Kernels, MemoryInfo, Tensor,
    WeightMap,
};
use tessera_core::Result;

/// Steps of at most this many tokens are captured as graphs: decode
/// buckets, where launch overhead rivals the work. Larger steps run eagerly.
const GRAPH_MAX_TOKENS: usize = 256;

/// One GPU driven through one in-order stream: what the shared device code
/// and graph capture need from a vendor backend.
pub trait StreamGpu: Send + Sync + 'static {
    /// An instantiated graph; dropping it destroys it.
    type GraphExec: Send;
    /// `cuda:0`, `rocm:1`.
    fn name(&self) -> String;
    /// Free and total device memory, in bytes.
    fn mem_info(&self) -> Result<(u64, u64)>;
    /// A device buffer of `bytes`, freed (in stream order) when dropped.
    fn alloc(self: &Arc<Self>, bytes: usize) -> Result<Buffer>;
    /// The device address of `bytes` bytes at `offset` of `buffer`, checked.
    fn address(&self, buffer: &Buffer, offset: usize, bytes: usize) -> Result<u64>;
    fn upload(&self, dst: u64, src: &[u8]) -> Result<()>;
    /// Copies to the host and waits for it.
    fn download(&self, src: u64, dst: &mut [u8]) -> Result<()>;
    fn copy(&self, src: u64, dst: u64, bytes: usize) -> Result<()>;
    fn synchronize(&self) -> Result<()>;
    /// Starts recording the stream's work into a graph (nothing runs).
    fn begin_capture(&self) -> Result<()>;
    /// Stops recording; instantiates the graph when `keep`, else drops it.
    fn end_capture(&self, keep: bool) -> Result<Option<Self::GraphExec>>;
    /// Replays a graph on the stream.
    fn launch_graph(&self, exec: &Self::GraphExec) -> Result<()>;
    /// Whether the GPU records graphs at all (a runtime without them runs
    /// every step eagerly).
    fn can_capture(&self) -> bool {
        true
    }

    /// The device address of a tensor's first element.
    fn tensor_address(&self, t: &Tensor) -> Result<u64> {
        self.address(&t.buffer, t.offset, t.nbytes())
    }
}

pub struct GpuDevice<G: StreamGpu, R: Runtime> {
    gpu: Arc<G>,
    kernels: Arc<GpuKernels<R>>,
    graphs: bool,
}

impl<G: StreamGpu, R: Runtime + 'static> GpuDevice<G, R> {
    /// `graphs_env` (`TESSERA_CUDA_GRAPHS`) set to 0 turns capture off, to
    /// compare or to debug.
    pub fn new(gpu: Arc<G>, kernels: Arc<GpuKernels<R>>, graphs_env: &str) -> Self {
        let graphs = gpu.can_capture() && std::env::var(graphs_env).map_or(true, |v| v != "0");
        GpuDevice {
            gpu,
            kernels,
            graphs,
        }
    }
}

impl<G: StreamGpu, R: Runtime + 'static> Device for GpuDevice<G, R> {
    fn name(&self) -> String {
        self.gpu.name()
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
        self.gpu.alloc(bytes)
    }

    fn upload(&self, dst: &Buffer, offset: usize, src: &[u8]) -> Result<()> {
        self.gpu
            .upload(self.gpu.address(dst, offset, src.len())?, src)
    }

    fn download(&self, src: &Buffer, offset: usize, dst: &mut [u8]) -> Result<()> {
        self.gpu
            .download(self.gpu.address(src, offset, dst.len())?, dst)
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
            self.gpu.address(src, src_offset, bytes)?,
            self.gpu.address(dst, dst_offset, bytes)?,
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
