//! Device memory of the reference backend: a byte vector behind a mutex.
//!
//! A real device hands out raw pointers; here safe Rust stands in for them.
//! Kernels lock a buffer only to copy values in or out, and never hold two
//! locks at once: an op's inputs and outputs may be different ranges of the
//! same buffer (the interpreter packs intermediates into shared arenas), and
//! two locks taken in different orders by two threads would deadlock.

use crate::BACKEND_NAME;
use std::sync::{Arc, Mutex, MutexGuard};
use tessera_core::hal::{Buffer, DeviceMemory};
use tessera_core::{Error, Result};

pub struct RefMemory {
    /// Fixed at allocation, so `len` needs no lock.
    len: usize,
    bytes: Mutex<Vec<u8>>,
}

impl RefMemory {
    /// `len` zeroed bytes, or an error (not an abort) when the host cannot
    /// provide them.
    pub fn new(len: usize) -> Result<Self> {
        let mut bytes = Vec::new();
        bytes.try_reserve_exact(len).map_err(|_| {
            Error::device(
                BACKEND_NAME,
                format!(
                    "out of host memory allocating {:.1} MiB; use a smaller model or a smaller --kv-cache-memory",
                    len as f64 / (1u64 << 20) as f64
                ),
            )
        })?;
        bytes.resize(len, 0);
        Ok(RefMemory {
            len,
            bytes: Mutex::new(bytes),
        })
    }

    /// The bytes, locked. A lock poisoned by a panicking thread is reported,
    /// not propagated as a second panic.
    pub fn lock(&self) -> Result<MutexGuard<'_, Vec<u8>>> {
        self.bytes.lock().map_err(|_| {
            Error::device(
                BACKEND_NAME,
                "a buffer's lock is poisoned: a thread panicked while using it",
            )
        })
    }
}

impl DeviceMemory for RefMemory {
    fn len(&self) -> usize {
        self.len
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// A new zeroed buffer of `len` bytes.
pub fn alloc(len: usize) -> Result<Buffer> {
    Ok(Buffer::new(Arc::new(RefMemory::new(len)?)))
}

/// The reference memory behind `b`; an error for another backend's buffer.
pub fn memory(b: &Buffer) -> Result<&RefMemory> {
    b.downcast::<RefMemory>().ok_or_else(|| {
        Error::invalid(format!(
            "a buffer from another device was passed to the {} backend",
            crate::BACKEND_NAME
        ))
    })
}
