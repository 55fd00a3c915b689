//! Untyped device buffers and the typed views the graph and kernels see.

use crate::{DType, Error, Result};
use std::any::Any;
use std::sync::Arc;

/// Memory owned by a backend. The backend downcasts to its own type.
pub trait DeviceMemory: Any + Send + Sync {
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    fn as_any(&self) -> &dyn Any;
}

/// A handle to device memory: cheap to clone, freed when the last handle drops.
/// Like a device pointer, writing through it is the executor's business: kernels
/// take outputs by shared handle.
#[derive(Clone)]
pub struct Buffer(Arc<dyn DeviceMemory>);

impl Buffer {
    pub fn new(mem: Arc<dyn DeviceMemory>) -> Self {
        Buffer(mem)
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn downcast<T: DeviceMemory>(&self) -> Option<&T> {
        self.0.as_any().downcast_ref::<T>()
    }
    /// Whether two handles name the same memory.
    pub fn same(&self, other: &Buffer) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl std::fmt::Debug for Buffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Buffer({} bytes)", self.len())
    }
}

/// A typed, contiguous, row-major view of (part of) a buffer.
#[derive(Clone, Debug)]
pub struct Tensor {
    pub buffer: Buffer,
    /// Byte offset of the first element.
    pub offset: usize,
    pub dtype: DType,
    pub shape: Vec<usize>,
}

impl Tensor {
    pub fn new(buffer: Buffer, offset: usize, dtype: DType, shape: Vec<usize>) -> Result<Self> {
        let t = Tensor {
            buffer,
            offset,
            dtype,
            shape,
        };
        if t.offset + t.nbytes() > t.buffer.len() {
            return Err(Error::invalid(format!(
                "a {} tensor of shape {:?} at offset {} does not fit a buffer of {} bytes",
                t.dtype,
                t.shape,
                t.offset,
                t.buffer.len()
            )));
        }
        Ok(t)
    }
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
    pub fn nbytes(&self) -> usize {
        self.numel() * self.dtype.size()
    }
    /// Size of dimension `i` counted from the end when negative-like helpers are clearer.
    pub fn dim(&self, i: usize) -> usize {
        self.shape.get(i).copied().unwrap_or(1)
    }
}
