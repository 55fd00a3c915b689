//! One GPU as the rest of the backend sees it: its primary context, the one
//! stream all work goes to (so ordering needs no events), stream-ordered
//! memory, and the capture flag that keeps lazy work out of a CUDA graph.
//!
//! Every entry point makes the context current on the calling thread first:
//! the engine, the server and the tests call from different threads.

use cudarc::driver::{result, sys, DriverError};
use tessera_core::{Error, Result};
use tessera_gpu_kernels::graphs::CaptureState;

pub struct Gpu {
    pub ordinal: usize,
    pub name: String,
    /// `sm_90` -> (9, 0).
    pub compute_capability: (i32, i32),
    pub total_memory: u64,
    /// Largest dynamic shared memory a block may opt into.
    pub max_shared_optin: u32,
    device: sys::CUdevice,
    ctx: sys::CUcontext,
    stream: sys::CUstream,
    capture: CaptureState,
}

// SAFETY: the handles are plain driver handles, usable from any thread once
// the context is made current there (`bind` does it before every use).
unsafe impl Send for Gpu {}
unsafe impl Sync for Gpu {}

/// The driver's name for an error (`CUDA_ERROR_NO_DEVICE`).
pub fn error_name(e: &DriverError) -> String {
    e.error_name()
        .map(|c| c.to_string_lossy().into_owned())
        .unwrap_or_else(|_| format!("{e:?}"))
}

/// A driver error as a tessera error naming the call and what to do.
pub fn fail(call: &str, e: DriverError) -> Error {
    let name = error_name(&e);
    let hint = match e.0 {
        sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY => {
            ": out of GPU memory; lower --memory-utilization, --max-num-seqs or --max-num-batched-tokens, or use a smaller model"
        }
        sys::CUresult::CUDA_ERROR_NO_DEVICE => ": no CUDA device is visible (check CUDA_VISIBLE_DEVICES)",
        sys::CUresult::CUDA_ERROR_UNSUPPORTED_PTX_VERSION => {
            ": the driver cannot load PTX from this NVRTC; use the NVRTC of the driver's CUDA version"
        }
        _ => "",
    };
    Error::device("cuda", format!("{call} failed with {name}{hint}"))
}

impl Gpu {
    /// Initialises the driver and opens device `ordinal`. The caller has
    /// checked that libcuda is present (cudarc panics otherwise).
    pub fn open(ordinal: usize) -> Result<Gpu> {
        result::init().map_err(|e| fail("cuInit", e))?;
        let count = result::device::get_count().map_err(|e| fail("cuDeviceGetCount", e))?;
        if ordinal as i32 >= count {
            return Err(Error::device(
                "cuda",
                format!("cuda:{ordinal} asked for, {count} device(s) found"),
            ));
        }
        let device = result::device::get(ordinal as i32).map_err(|e| fail("cuDeviceGet", e))?;
        let attr = |a: sys::CUdevice_attribute| {
            // SAFETY: `device` came from cuDeviceGet.
            unsafe { result::device::get_attribute(device, a) }
                .map_err(|e| fail("cuDeviceGetAttribute", e))
        };
        use sys::CUdevice_attribute::*;
        let cc = (
            attr(CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?,
            attr(CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?,
        );
        let max_shared_optin = attr(CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)? as u32;
        let name = result::device::get_name(device).map_err(|e| fail("cuDeviceGetName", e))?;
        // SAFETY: as above.
        let total = unsafe { result::device::total_mem(device) }
            .map_err(|e| fail("cuDeviceTotalMem", e))? as u64;
        // SAFETY: the primary context of a valid device; released in Drop.
        let ctx = unsafe { result::primary_ctx::retain(device) }
            .map_err(|e| fail("cuDevicePrimaryCtxRetain", e))?;
        // SAFETY: ctx was just retained.
        unsafe { result::ctx::set_current(ctx) }.map_err(|e| fail("cuCtxSetCurrent", e))?;
        let stream = result::stream::create(result::stream::StreamKind::NonBlocking)
            .map_err(|e| fail("cuStreamCreate", e))?;
        // Keep up to this much freed memory in the stream-ordered pool across
        // synchronisations (the default, 0, returns it at every step's sync
        // and the next step's small allocations map memory again).
        let mut keep: u64 = 1 << 30;
        // SAFETY: the device's default pool; the attribute takes a u64.
        let kept = unsafe {
            result::device::get_default_mem_pool(device).and_then(|pool| {
                result::mem_pool::set_attribute(
                    pool,
                    sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
                    &mut keep as *mut u64 as *mut std::ffi::c_void,
                )
            })
        };
        if let Err(e) = kept {
            tracing::debug!("memory pool release threshold not set: {e:?}");
        }
        Ok(Gpu {
            ordinal,
            name,
            compute_capability: cc,
            total_memory: total,
            max_shared_optin,
            device,
            ctx,
            stream,
            capture: CaptureState::default(),
        })
    }

    /// Makes the context current on this thread.
    pub fn bind(&self) -> Result<()> {
        // SAFETY: the context is retained for the life of `self`.
        unsafe { result::ctx::set_current(self.ctx) }.map_err(|e| fail("cuCtxSetCurrent", e))
    }

    pub fn stream(&self) -> sys::CUstream {
        self.stream
    }

    pub fn arch(&self) -> String {
        format!(
            "sm_{}{}",
            self.compute_capability.0, self.compute_capability.1
        )
    }

    pub fn mem_info(&self) -> Result<(u64, u64)> {
        self.bind()?;
        let (free, total) = result::mem_get_info().map_err(|e| fail("cuMemGetInfo", e))?;
        Ok((free as u64, total as u64))
    }

    /// Stream-ordered allocation: cheap, and safe to reuse in stream order.
    pub fn malloc(&self, bytes: usize) -> Result<sys::CUdeviceptr> {
        self.bind()?;
        if self.is_capturing() {
            return Err(Error::device(
                "cuda",
                "an allocation was asked for while a CUDA graph was being captured",
            ));
        }
        // SAFETY: a valid stream of the current context.
        unsafe { result::malloc_async(self.stream, bytes.max(1)) }.map_err(|e| {
            fail(
                &format!("cuMemAllocAsync of {:.2} GB", bytes as f64 / 1e9),
                e,
            )
        })
    }

    /// Frees in stream order; deferred while a graph is being captured, so the
    /// free is not recorded into the graph.
    pub fn free(&self, ptr: sys::CUdeviceptr) {
        if self.capture.defer_free(ptr) {
            return;
        }
        if self.bind().is_ok() {
            // SAFETY: `ptr` came from `malloc` and is freed once.
            let _ = unsafe { result::free_async(ptr, self.stream) };
        }
    }

    pub fn is_capturing(&self) -> bool {
        self.capture.is_capturing()
    }

    pub fn set_capturing(&self, on: bool) {
        for p in self.capture.set(on) {
            self.free(p);
        }
    }

    pub fn synchronize(&self) -> Result<()> {
        self.bind()?;
        // SAFETY: a valid stream.
        unsafe { result::stream::synchronize(self.stream) }
            .map_err(|e| fail("cuStreamSynchronize", e))
    }

    pub fn upload(&self, dst: sys::CUdeviceptr, src: &[u8]) -> Result<()> {
        self.bind()?;
        // SAFETY: the caller checked that `dst` has room for `src`. From pageable
        // memory the call returns once `src` is staged, so `src` may go after.
        unsafe { result::memcpy_htod_async(dst, src, self.stream) }
            .map_err(|e| fail("cuMemcpyHtoDAsync", e))
    }

    /// Copies to the host and waits for it.
    pub fn download(&self, src: sys::CUdeviceptr, dst: &mut [u8]) -> Result<()> {
        self.bind()?;
        // SAFETY: the caller checked that `src` holds `dst.len()` bytes; the
        // stream is synchronised before `dst` is used.
        unsafe { result::memcpy_dtoh_async(dst, src, self.stream) }
            .map_err(|e| fail("cuMemcpyDtoHAsync", e))?;
        self.synchronize()
    }

    pub fn copy(&self, src: sys::CUdeviceptr, dst: sys::CUdeviceptr, bytes: usize) -> Result<()> {
        self.bind()?;
        // SAFETY: the caller checked both ranges.
        unsafe { result::memcpy_dtod_async(dst, src, bytes, self.stream) }
            .map_err(|e| fail("cuMemcpyDtoDAsync", e))
    }

    pub fn memset_zero(&self, dst: sys::CUdeviceptr, bytes: usize) -> Result<()> {
        self.bind()?;
        // SAFETY: the caller checked the range.
        unsafe { result::memset_d8_async(dst, 0, bytes, self.stream) }
            .map_err(|e| fail("cuMemsetD8Async", e))
    }

    pub fn device(&self) -> sys::CUdevice {
        self.device
    }
}

impl Drop for Gpu {
    fn drop(&mut self) {
        if self.bind().is_ok() {
            // SAFETY: created in `open`, used by nothing else once we drop.
            unsafe {
                let _ = result::stream::synchronize(self.stream);
                let _ = result::stream::destroy(self.stream);
                let _ = result::primary_ctx::release(self.device);
            }
        }
    }
}

/// The driver's CUDA version, as `13.0`.
pub fn driver_version() -> Option<String> {
    let mut v = 0;
    // SAFETY: writes one int.
    let ok = unsafe { sys::cuDriverGetVersion(&mut v) } == sys::CUresult::CUDA_SUCCESS;
    ok.then(|| format!("{}.{}", v / 1000, (v % 1000) / 10))
}
