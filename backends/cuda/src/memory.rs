//! Device memory behind the HAL's `Buffer`: a stream-ordered allocation,
//! freed (in stream order) when the last handle drops.

use crate::gpu::Gpu;
use cudarc::driver::sys::CUdeviceptr;
use std::any::Any;
use std::sync::Arc;
use tessera_core::hal::{Buffer, DeviceMemory};
use tessera_core::{Error, Result};

pub struct CudaMemory {
    ptr: CUdeviceptr,
    len: usize,
    gpu: Arc<Gpu>,
}

impl CudaMemory {
    pub fn alloc(gpu: &Arc<Gpu>, len: usize) -> Result<Buffer> {
        let ptr = gpu.malloc(len)?;
        Ok(Buffer::new(Arc::new(CudaMemory {
            ptr,
            len,
            gpu: gpu.clone(),
        })))
    }
}

impl DeviceMemory for CudaMemory {
    fn len(&self) -> usize {
        self.len
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

impl Drop for CudaMemory {
    fn drop(&mut self) {
        self.gpu.free(self.ptr);
    }
}

/// The device address of bytes `offset..offset + bytes` of `buffer`, checked.
pub fn address(buffer: &Buffer, offset: usize, bytes: usize) -> Result<CUdeviceptr> {
    let mem = buffer
        .downcast::<CudaMemory>()
        .ok_or_else(|| Error::invalid("a buffer of another backend was given to cuda"))?;
    let end = offset.checked_add(bytes);
    if end.is_none_or(|e| e > mem.len) {
        return Err(Error::invalid(format!(
            "{bytes} bytes at offset {offset} do not fit a cuda buffer of {} bytes",
            mem.len
        )));
    }
    Ok(mem.ptr + offset as u64)
}
