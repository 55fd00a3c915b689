//! The rocm device: the shared GPU device code (`tessera_gpu_kernels`'s
//! `GpuDevice`) over this GPU: memory and copies on its stream, and HIP
//! graphs recorded by stream capture.

use crate::gpu::{check, Gpu};
use crate::hip::{self, Runtime};
use crate::memory::{address, RocmMemory};
use crate::runtime::RocmRuntime;
use std::sync::Arc;
use tessera_core::hal::Buffer;
use tessera_core::Result;
use tessera_gpu_kernels::device::{GpuDevice, StreamGpu};
pub use tessera_gpu_kernels::kernels::capabilities;

pub type RocmDevice = GpuDevice<Gpu, RocmRuntime>;

/// An instantiated HIP graph, destroyed when dropped.
pub struct GraphExec(hip::GraphExec, &'static Runtime);

// SAFETY: an instantiated graph may be launched from any thread; one
// executable uses it at a time.
unsafe impl Send for GraphExec {}

impl Drop for GraphExec {
    fn drop(&mut self) {
        // SAFETY: instantiated once, destroyed once.
        let _ = unsafe { (self.1.hipGraphExecDestroy)(self.0) };
    }
}

impl StreamGpu for Gpu {
    type GraphExec = GraphExec;

    fn name(&self) -> String {
        format!("rocm:{}", self.ordinal)
    }
    fn mem_info(&self) -> Result<(u64, u64)> {
        Gpu::mem_info(self)
    }
    fn alloc(self: &Arc<Self>, bytes: usize) -> Result<Buffer> {
        RocmMemory::alloc(self, bytes)
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
        let rt = self.runtime();
        self.bind()?;
        // SAFETY: our stream; `end_capture` ends it.
        let rc =
            unsafe { (rt.hipStreamBeginCapture)(self.stream(), hip::CAPTURE_MODE_THREAD_LOCAL) };
        check(rt, "hipStreamBeginCapture", rc)?;
        self.set_capturing(true);
        Ok(())
    }

    fn end_capture(&self, keep: bool) -> Result<Option<GraphExec>> {
        let rt = self.runtime();
        let mut graph: hip::Graph = std::ptr::null_mut();
        // SAFETY: capture was begun on this stream by `begin_capture`.
        let ended = unsafe { (rt.hipStreamEndCapture)(self.stream(), &mut graph) };
        self.set_capturing(false);
        check(rt, "hipStreamEndCapture", ended)?;
        if !keep {
            // SAFETY: captured above, used by nothing else.
            let _ = unsafe { (rt.hipGraphDestroy)(graph) };
            return Ok(None);
        }
        let mut exec: hip::GraphExec = std::ptr::null_mut();
        // SAFETY: a graph just captured; destroyed right after instantiation.
        let rc = unsafe {
            (rt.hipGraphInstantiate)(
                &mut exec,
                graph,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                0,
            )
        };
        // SAFETY: as above.
        let _ = unsafe { (rt.hipGraphDestroy)(graph) };
        check(rt, "hipGraphInstantiate", rc)?;
        Ok(Some(GraphExec(exec, rt)))
    }

    fn launch_graph(&self, exec: &GraphExec) -> Result<()> {
        let rt = self.runtime();
        self.bind()?;
        // SAFETY: an instantiated graph, on our stream.
        let rc = unsafe { (rt.hipGraphLaunch)(exec.0, self.stream()) };
        check(rt, "hipGraphLaunch", rc)
    }
}
