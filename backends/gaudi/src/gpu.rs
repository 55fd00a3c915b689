//! One gaudi device seen through its runtime (`Api`): the GPU the shared
//! device code (`tessera_gpu_kernels`'s `GpuDevice`) drives, and device
//! memory behind the HAL's `Buffer`.

use crate::api::Api;
use std::any::Any;
use std::sync::Arc;
use tessera_core::hal::{Buffer, DeviceMemory};
use tessera_core::{Error, Result};
use tessera_gpu_kernels::device::StreamGpu;

pub struct Gaudi {
    pub api: Box<dyn Api>,
    pub ordinal: usize,
}

/// No graphs: Level Zero's command lists could record a step, but that is
/// not built yet, and OpenCL has none; every step runs eagerly.
pub enum NoGraph {}

/// A device allocation, freed (in queue order) when the last handle drops.
struct GaudiMemory {
    ptr: u64,
    len: usize,
    gpu: Arc<Gaudi>,
}

impl DeviceMemory for GaudiMemory {
    fn len(&self) -> usize {
        self.len
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

impl Drop for GaudiMemory {
    fn drop(&mut self) {
        self.gpu.api.free(self.ptr, self.len);
    }
}

impl StreamGpu for Gaudi {
    type GraphExec = NoGraph;

    fn name(&self) -> String {
        format!("gaudi:{}", self.ordinal)
    }
    fn mem_info(&self) -> Result<(u64, u64)> {
        self.api.mem_info()
    }
    fn alloc(self: &Arc<Self>, bytes: usize) -> Result<Buffer> {
        let ptr = self.api.alloc(bytes)?;
        Ok(Buffer::new(Arc::new(GaudiMemory {
            ptr,
            len: bytes,
            gpu: self.clone(),
        })))
    }
    fn address(&self, buffer: &Buffer, offset: usize, bytes: usize) -> Result<u64> {
        address(buffer, offset, bytes)
    }
    fn upload(&self, dst: u64, src: &[u8]) -> Result<()> {
        self.api.upload(dst, src)
    }
    fn download(&self, src: u64, dst: &mut [u8]) -> Result<()> {
        self.api.download(src, dst)
    }
    fn copy(&self, src: u64, dst: u64, bytes: usize) -> Result<()> {
        self.api.copy(src, dst, bytes)
    }
    fn synchronize(&self) -> Result<()> {
        self.api.synchronize()
    }
    fn can_capture(&self) -> bool {
        false
    }
    fn begin_capture(&self) -> Result<()> {
        Err(Error::Unsupported {
            backend: "gaudi".into(),
            what: "graph capture".into(),
        })
    }
    fn end_capture(&self, _keep: bool) -> Result<Option<NoGraph>> {
        Ok(None)
    }
    fn launch_graph(&self, exec: &NoGraph) -> Result<()> {
        match *exec {}
    }
}

/// The device address of bytes `offset..offset + bytes` of `buffer`, checked.
pub fn address(buffer: &Buffer, offset: usize, bytes: usize) -> Result<u64> {
    let mem = buffer
        .downcast::<GaudiMemory>()
        .ok_or_else(|| Error::invalid("a buffer of another backend was given to gaudi"))?;
    if offset.checked_add(bytes).is_none_or(|e| e > mem.len) {
        return Err(Error::invalid(format!(
            "{bytes} bytes at offset {offset} do not fit a gaudi buffer of {} bytes",
            mem.len
        )));
    }
    Ok(mem.ptr + offset as u64)
}
