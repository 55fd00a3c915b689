//! The cuda device: the shared GPU device code (`tessera_gpu_kernels`'s
//! `GpuDevice`) over this GPU: memory and copies on its stream, and CUDA
//! graphs recorded by stream capture.

use crate::gpu::{fail, Gpu};
use crate::memory::{address, CudaMemory};
use crate::runtime::CudaRuntime;
use cudarc::driver::{result, sys};
use std::sync::Arc;
use tessera_core::hal::Buffer;
use tessera_core::Result;
use tessera_gpu_kernels::device::{GpuDevice, StreamGpu};
pub use tessera_gpu_kernels::kernels::capabilities;

pub type CudaDevice = GpuDevice<Gpu, CudaRuntime>;

/// An instantiated CUDA graph, destroyed when dropped.
pub struct GraphExec(sys::CUgraphExec);

// SAFETY: an instantiated graph may be launched from any thread with the
// context current; one executable uses it at a time.
unsafe impl Send for GraphExec {}

impl Drop for GraphExec {
    fn drop(&mut self) {
        // SAFETY: instantiated once, destroyed once.
        let _ = unsafe { result::graph::exec_destroy(self.0) };
    }
}

impl StreamGpu for Gpu {
    type GraphExec = GraphExec;

    fn name(&self) -> String {
        format!("cuda:{}", self.ordinal)
    }
    fn mem_info(&self) -> Result<(u64, u64)> {
        Gpu::mem_info(self)
    }
    fn alloc(self: &Arc<Self>, bytes: usize) -> Result<Buffer> {
        CudaMemory::alloc(self, bytes)
    }
    fn address(&self, buffer: &Buffer, offset: usize, bytes: usize) -> Result<u64> {
        address(buffer, offset, bytes)
    }
    fn upload(&self, dst: u64, src: &[u8]) -> Result<()> {
        Gpu::upload(self, dst, src)
    }
    fn download(&self, src: u64, dst: &mut [u8]) -> Result<()> {
        Gpu::download(self, src, dst)
    }
    fn copy(&self, src: u64, dst: u64, bytes: usize) -> Result<()> {
        Gpu::copy(self, src, dst, bytes)
    }
    fn synchronize(&self) -> Result<()> {
        Gpu::synchronize(self)
    }

    fn begin_capture(&self) -> Result<()> {
        self.bind()?;
        // SAFETY: our stream; `end_capture` ends it.
        unsafe {
            result::stream::begin_capture(
                self.stream(),
                sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL,
            )
        }
        .map_err(|e| fail("cuStreamBeginCapture", e))?;
        self.set_capturing(true);
        Ok(())
    }

    fn end_capture(&self, keep: bool) -> Result<Option<GraphExec>> {
        // SAFETY: capture was begun on this stream by `begin_capture`.
        let ended = unsafe { result::stream::end_capture(self.stream()) };
        self.set_capturing(false);
        let graph = ended.map_err(|e| fail("cuStreamEndCapture", e))?;
        if !keep {
            // SAFETY: captured above, used by nothing else.
            let _ = unsafe { result::graph::destroy(graph) };
            return Ok(None);
        }
        // SAFETY: a graph just captured; destroyed right after instantiation.
        let exec = unsafe { result::graph::instantiate(graph, sys::CUgraphInstantiate_flags(0)) };
        // SAFETY: as above.
        let _ = unsafe { result::graph::destroy(graph) };
        Ok(Some(GraphExec(
            exec.map_err(|e| fail("cuGraphInstantiate", e))?,
        )))
    }

    fn launch_graph(&self, exec: &GraphExec) -> Result<()> {
        self.bind()?;
        // SAFETY: an instantiated graph of this context, on our stream.
        unsafe { result::graph::launch(exec.0, self.stream()) }
            .map_err(|e| fail("cuGraphLaunch", e))
    }
}
