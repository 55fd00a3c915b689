//! Host memory as device memory, and the CPU device itself.

use crate::ops::CpuKernels;
use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::sync::Arc;
use tessera_core::hal::{
    self, Buffer, Capabilities, Device, DeviceMemory, Executable, Graph, Kernels, KvLayout,
    MemoryInfo, Tensor, WeightMap,
};
use tessera_core::{DType, Error, Result};

/// Alignment of every allocation: a cache line, and what AVX-512 loads like.
const ALIGN: usize = 64;

/// A zeroed, 64-byte aligned host allocation. Kernels read and write it through
/// raw pointers, like device memory; the interpreter guarantees that an op's
/// outputs never overlap its inputs (except the documented in-place ops).
pub struct HostMemory {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the allocation is plain memory owned by this value; synchronisation of
// reads and writes is the executor's job, as with any device pointer.
unsafe impl Send for HostMemory {}
unsafe impl Sync for HostMemory {}

impl HostMemory {
    pub fn new(len: usize) -> Result<Self> {
        let layout = Layout::from_size_align(len.max(1), ALIGN)
            .map_err(|_| Error::device("cpu", format!("cannot allocate {len} bytes")))?;
        // SAFETY: layout has non-zero size.
        let ptr = unsafe { alloc_zeroed(layout) };
        if ptr.is_null() {
            return Err(Error::device(
                "cpu",
                format!("out of host memory allocating {:.1} MiB; use a smaller model, --dtype bf16 or a smaller --kv-cache-memory", len as f64 / (1 << 20) as f64),
            ));
        }
        Ok(HostMemory { ptr, len })
    }

    pub fn ptr(&self) -> *mut u8 {
        self.ptr
    }
}

impl Drop for HostMemory {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this exact layout.
        unsafe {
            dealloc(
                self.ptr,
                Layout::from_size_align_unchecked(self.len.max(1), ALIGN),
            )
        }
    }
}

impl DeviceMemory for HostMemory {
    fn len(&self) -> usize {
        self.len
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

pub fn host_memory(b: &Buffer) -> Result<&HostMemory> {
    b.downcast::<HostMemory>()
        .ok_or_else(|| Error::invalid("a buffer from another device was passed to the cpu backend"))
}

pub struct CpuDevice {
    kernels: Arc<CpuKernels>,
}

impl CpuDevice {
    pub fn new(threads: usize) -> Result<Self> {
        Ok(CpuDevice {
            kernels: Arc::new(CpuKernels::new(threads)?),
        })
    }
}

/// Runs the interpreted graph inside the device's thread pool, so every kernel's
/// parallel loops use it without a hop per op.
struct PooledExecutable {
    inner: Box<dyn Executable>,
    kernels: Arc<CpuKernels>,
}

impl Executable for PooledExecutable {
    fn run(&mut self, inputs: &[Tensor], state: &mut [Tensor]) -> Result<Vec<Tensor>> {
        let inner = &mut self.inner;
        self.kernels.pool().install(|| inner.run(inputs, state))
    }
}

impl Device for CpuDevice {
    fn name(&self) -> String {
        "cpu".into()
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            weight_dtypes: vec![DType::F32, DType::BF16],
            activation_dtype: DType::F32,
            kv_dtypes: vec![DType::F32, DType::BF16],
            kv_layout: KvLayout::BlockHeadToken,
            block_sizes: vec![1, 2, 4, 8, 16, 32, 64, 128, 256],
            graph_capture: false,
            exact_shapes: true,
            host_memory: true,
        }
    }

    fn memory_info(&self) -> Result<MemoryInfo> {
        Ok(host_memory_info())
    }

    fn alloc(&self, bytes: usize) -> Result<Buffer> {
        Ok(Buffer::new(Arc::new(HostMemory::new(bytes)?)))
    }

    fn upload(&self, dst: &Buffer, offset: usize, src: &[u8]) -> Result<()> {
        let m = host_memory(dst)?;
        if offset
            .checked_add(src.len())
            .is_none_or(|end| end > m.len())
        {
            return Err(Error::invalid(format!(
                "upload of {} bytes at {offset} overflows a {}-byte buffer",
                src.len(),
                m.len()
            )));
        }
        // SAFETY: bounds checked above; src is host memory that cannot overlap a
        // buffer we own exclusively at this point.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), m.ptr().add(offset), src.len()) };
        Ok(())
    }

    fn download(&self, src: &Buffer, offset: usize, dst: &mut [u8]) -> Result<()> {
        let m = host_memory(src)?;
        if offset
            .checked_add(dst.len())
            .is_none_or(|end| end > m.len())
        {
            return Err(Error::invalid(format!(
                "download of {} bytes at {offset} overflows a {}-byte buffer",
                dst.len(),
                m.len()
            )));
        }
        // SAFETY: bounds checked above.
        unsafe { std::ptr::copy_nonoverlapping(m.ptr().add(offset), dst.as_mut_ptr(), dst.len()) };
        Ok(())
    }

    fn copy(
        &self,
        src: &Buffer,
        src_offset: usize,
        dst: &Buffer,
        dst_offset: usize,
        bytes: usize,
    ) -> Result<()> {
        let (s, d) = (host_memory(src)?, host_memory(dst)?);
        let fits = |off: usize, len: usize| off.checked_add(bytes).is_some_and(|end| end <= len);
        if !fits(src_offset, s.len()) || !fits(dst_offset, d.len()) {
            return Err(Error::invalid(format!(
                "copy of {bytes} bytes overflows a buffer"
            )));
        }
        // SAFETY: both ranges checked above; `copy` (memmove) allows overlap.
        unsafe { std::ptr::copy(s.ptr().add(src_offset), d.ptr().add(dst_offset), bytes) };
        Ok(())
    }

    fn compile(&self, graph: &Graph, weights: &WeightMap) -> Result<Box<dyn Executable>> {
        let inner = hal::interpreter::compile(self.kernels.clone(), graph, weights)?;
        Ok(Box::new(PooledExecutable {
            inner,
            kernels: self.kernels.clone(),
        }))
    }

    fn kernels(&self) -> Option<Arc<dyn Kernels>> {
        Some(self.kernels.clone())
    }
}

/// Host RAM from /proc/meminfo (MemAvailable counts as free); zeros elsewhere.
pub fn host_memory_info() -> MemoryInfo {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let field = |name: &str| -> u64 {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .map(|kb| kb * 1024)
            .unwrap_or(0)
    };
    MemoryInfo {
        free_bytes: field("MemAvailable:"),
        total_bytes: field("MemTotal:"),
    }
}
