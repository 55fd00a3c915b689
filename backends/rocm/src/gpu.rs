//! One AMD GPU through the HIP runtime: the device, its stream, memory and
//! copies. Every call is checked and named in errors.

use crate::hip::{self, HipError, Runtime, Stream};
use std::ffi::{c_char, c_void};
use tessera_core::{Error, Result};
use tessera_gpu_kernels::graphs::CaptureState;

/// Bytes of LDS one workgroup may use: 64 KiB on every CDNA and RDNA part
/// hipRTC targets here (read from the device it would need the attribute
/// enum, whose values moved between HIP versions).
pub const LDS_PER_BLOCK: u32 = 64 << 10;

pub struct Gpu {
    rt: &'static Runtime,
    pub ordinal: usize,
    pub name: String,
    /// The gfx target hipRTC compiles for (`gfx90a`).
    pub arch: String,
    pub total_memory: u64,
    stream: Stream,
    /// hipMallocAsync/hipFreeAsync where the runtime has them and they work
    /// on this device: the runner's small per-step buffers then cost no
    /// device sync (hipFree waits for the whole device).
    ordered: Option<(hip::MallocAsyncFn, hip::FreeAsyncFn)>,
    capture: CaptureState,
}

// SAFETY: the stream and device pointers are usable from any thread; the HIP
// runtime is thread-safe and each call names the device first.
unsafe impl Send for Gpu {}
unsafe impl Sync for Gpu {}

/// A HIP error as a tessera error naming the call and what to do.
pub fn fail(rt: &Runtime, call: &str, e: HipError) -> Error {
    let hint = match e {
        hip::ERROR_OUT_OF_MEMORY => {
            ": out of GPU memory; lower --memory-utilization, --max-num-seqs or --max-num-batched-tokens, or use a smaller model"
        }
        hip::ERROR_NO_DEVICE | hip::ERROR_INVALID_DEVICE => {
            ": no AMD GPU is visible (check HIP_VISIBLE_DEVICES / ROCR_VISIBLE_DEVICES and that this user may open /dev/kfd)"
        }
        _ => "",
    };
    Error::device(
        "rocm",
        format!("{call} failed with {}{hint}", hip::error_name(rt, e)),
    )
}

/// Runs one HIP call and turns a non-zero status into an error.
pub fn check(rt: &Runtime, call: &str, rc: HipError) -> Result<()> {
    if rc == hip::SUCCESS {
        Ok(())
    } else {
        Err(fail(rt, call, rc))
    }
}

/// The gfx target in a `hipDeviceProp_t`, found by content: the struct's
/// layout differs between HIP 5, 6 and 7, but `gcnArchName` is always a
/// NUL-terminated `gfx...` string (`gfx90a:sramecc+:xnack-`) and nothing
/// before it holds one (the marketing name does not start with "gfx").
pub fn arch_in_properties(props: &[u8]) -> Option<String> {
    let at = props.windows(3).position(|w| w == b"gfx")?;
    let name: String = props[at..]
        .iter()
        .take_while(|&&b| b.is_ascii_alphanumeric())
        .map(|&b| b as char)
        .collect();
    (name.len() > 3).then_some(name)
}

impl Gpu {
    /// Initialises HIP and opens device `ordinal`.
    pub fn open(ordinal: usize) -> Result<Gpu> {
        let rt = hip::runtime().map_err(|e| Error::device("rocm", e))?;
        // SAFETY: plain calls with out-pointers to locals.
        unsafe {
            check(rt, "hipInit", (rt.hipInit)(0))?;
            let mut count = 0;
            check(rt, "hipGetDeviceCount", (rt.hipGetDeviceCount)(&mut count))?;
            let dev = i32::try_from(ordinal).unwrap_or(i32::MAX);
            if dev >= count {
                return Err(Error::device(
                    "rocm",
                    format!("rocm:{ordinal} asked for, {count} device(s) found"),
                ));
            }
            check(rt, "hipSetDevice", (rt.hipSetDevice)(dev))?;
            let info = device_info(rt, dev)?;
            let mut stream: Stream = std::ptr::null_mut();
            check(
                rt,
                "hipStreamCreateWithFlags",
                (rt.hipStreamCreateWithFlags)(&mut stream, hip::STREAM_NON_BLOCKING),
            )?;
            Ok(Gpu {
                rt,
                ordinal,
                name: info.name,
                arch: info.arch,
                total_memory: info.total_memory,
                stream,
                ordered: stream_ordered_allocation(rt, stream),
                capture: CaptureState::default(),
            })
        }
    }

    /// Makes this device current on the calling thread (HIP's current
    /// device is per thread; the engine may call from several).
    pub fn bind(&self) -> Result<()> {
        let dev = i32::try_from(self.ordinal).unwrap_or(i32::MAX);
        // SAFETY: a plain call.
        check(self.rt, "hipSetDevice", unsafe {
            (self.rt.hipSetDevice)(dev)
        })
    }

    pub fn runtime(&self) -> &'static Runtime {
        self.rt
    }

    pub fn stream(&self) -> Stream {
        self.stream
    }

    pub fn mem_info(&self) -> Result<(u64, u64)> {
        self.bind()?;
        let (mut free, mut total) = (0usize, 0usize);
        // SAFETY: writes two sizes.
        let rc = unsafe { (self.rt.hipMemGetInfo)(&mut free, &mut total) };
        check(self.rt, "hipMemGetInfo", rc)?;
        Ok((free as u64, total as u64))
    }

    pub fn malloc(&self, bytes: usize) -> Result<u64> {
        self.bind()?;
        if self.is_capturing() {
            return Err(Error::device(
                "rocm",
                "an allocation was asked for while a HIP graph was being captured",
            ));
        }
        let mut p: *mut c_void = std::ptr::null_mut();
        let (call, rc) = match self.ordered {
            // SAFETY: writes one pointer; our stream.
            Some((malloc, _)) => ("hipMallocAsync", unsafe {
                malloc(&mut p, bytes.max(1), self.stream)
            }),
            // SAFETY: writes one pointer.
            None => ("hipMalloc", unsafe {
                (self.rt.hipMalloc)(&mut p, bytes.max(1))
            }),
        };
        check(
            self.rt,
            &format!("{call} of {:.2} GB", bytes as f64 / 1e9),
            rc,
        )?;
        Ok(p as u64)
    }

    /// Frees device memory; deferred while a graph is being captured, so
    /// the free is not recorded into the graph (hipFree also waits for the
    /// device, which a capture forbids).
    pub fn free(&self, ptr: u64) {
        if self.capture.defer_free(ptr) {
            return;
        }
        if self.bind().is_ok() {
            // SAFETY: `ptr` came from `malloc` (the same kind of call) and is
            // freed once.
            let _ = unsafe {
                match self.ordered {
                    Some((_, free)) => free(ptr as *mut c_void, self.stream),
                    None => (self.rt.hipFree)(ptr as *mut c_void),
                }
            };
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
        // SAFETY: our stream.
        let rc = unsafe { (self.rt.hipStreamSynchronize)(self.stream) };
        check(self.rt, "hipStreamSynchronize", rc)
    }

    pub fn upload(&self, dst: u64, src: &[u8]) -> Result<()> {
        self.bind()?;
        // SAFETY: the caller checked that `dst` has room for `src`. From
        // pageable memory the copy is staged before the call returns.
        let rc = unsafe {
            (self.rt.hipMemcpyHtoDAsync)(
                dst as *mut c_void,
                src.as_ptr() as *const c_void,
                src.len(),
                self.stream,
            )
        };
        check(self.rt, "hipMemcpyHtoDAsync", rc)
    }

    /// Copies to the host and waits for it.
    pub fn download(&self, src: u64, dst: &mut [u8]) -> Result<()> {
        self.bind()?;
        // SAFETY: the caller checked that `src` holds `dst.len()` bytes; the
        // stream is synchronised before `dst` is used.
        let rc = unsafe {
            (self.rt.hipMemcpyDtoHAsync)(
                dst.as_mut_ptr() as *mut c_void,
                src as *mut c_void,
                dst.len(),
                self.stream,
            )
        };
        check(self.rt, "hipMemcpyDtoHAsync", rc)?;
        self.synchronize()
    }

    pub fn copy(&self, src: u64, dst: u64, bytes: usize) -> Result<()> {
        self.bind()?;
        // SAFETY: the caller checked both ranges.
        let rc = unsafe {
            (self.rt.hipMemcpyDtoDAsync)(dst as *mut c_void, src as *mut c_void, bytes, self.stream)
        };
        check(self.rt, "hipMemcpyDtoDAsync", rc)
    }

    pub fn memset_zero(&self, dst: u64, bytes: usize) -> Result<()> {
        self.bind()?;
        // SAFETY: the caller checked the range.
        let rc = unsafe { (self.rt.hipMemsetD8Async)(dst as *mut c_void, 0, bytes, self.stream) };
        check(self.rt, "hipMemsetD8Async", rc)
    }
}

impl Drop for Gpu {
    fn drop(&mut self) {
        if self.bind().is_ok() {
            // SAFETY: created in `open`, used by nothing else once we drop.
            unsafe {
                let _ = (self.rt.hipStreamSynchronize)(self.stream);
                let _ = (self.rt.hipStreamDestroy)(self.stream);
            }
        }
    }
}

/// hipMallocAsync/hipFreeAsync, when the runtime exports them and a first
/// allocation through them works (some devices and versions lack memory
/// pools). TESSERA_ROCM_MALLOC_ASYNC=0 keeps plain hipMalloc.
fn stream_ordered_allocation(
    rt: &Runtime,
    stream: Stream,
) -> Option<(hip::MallocAsyncFn, hip::FreeAsyncFn)> {
    if std::env::var("TESSERA_ROCM_MALLOC_ASYNC").is_ok_and(|v| v == "0") {
        return None;
    }
    // SAFETY: the HIP signatures of these names.
    let (malloc, free) = unsafe {
        (
            rt.optional::<hip::MallocAsyncFn>("hipMallocAsync")?,
            rt.optional::<hip::FreeAsyncFn>("hipFreeAsync")?,
        )
    };
    let mut p: *mut c_void = std::ptr::null_mut();
    // SAFETY: writes one pointer; our stream; freed right after.
    unsafe {
        if malloc(&mut p, 256, stream) != hip::SUCCESS || p.is_null() {
            tracing::debug!("hipMallocAsync does not work here: plain hipMalloc");
            return None;
        }
        free(p, stream);
    }
    Some((malloc, free))
}

/// What `tessera devices` and `open` report about one device.
pub struct DeviceInfo {
    pub name: String,
    pub arch: String,
    pub total_memory: u64,
}

/// Name, gfx target (`TESSERA_ROCM_ARCH` overrides what the properties
/// say) and memory of device `dev`. The caller has run hipInit.
pub fn device_info(rt: &Runtime, dev: i32) -> Result<DeviceInfo> {
    let mut name = [0 as c_char; 256];
    // SAFETY: the buffer holds 256 chars.
    let rc = unsafe { (rt.hipDeviceGetName)(name.as_mut_ptr(), 256, dev) };
    check(rt, "hipDeviceGetName", rc)?;
    let name: String = name
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8 as char)
        .collect();
    let mut total = 0usize;
    // SAFETY: writes one size.
    let rc = unsafe { (rt.hipDeviceTotalMem)(&mut total, dev) };
    check(rt, "hipDeviceTotalMem", rc)?;
    // Larger than any hipDeviceProp_t so far (about 1.5 KB in HIP 6), so
    // the runtime never writes past it whatever its version.
    let mut props = vec![0u8; 16 << 10];
    // SAFETY: both names have this signature.
    let properties = unsafe {
        rt.optional::<hip::PropertiesFn>("hipGetDevicePropertiesR0600")
            .or_else(|| rt.optional::<hip::PropertiesFn>("hipGetDeviceProperties"))
    }
    .ok_or_else(|| Error::device("rocm", "the HIP runtime has no hipGetDeviceProperties"))?;
    // SAFETY: the buffer is larger than the struct.
    let rc = unsafe { properties(props.as_mut_ptr() as *mut c_void, dev) };
    check(rt, "hipGetDeviceProperties", rc)?;
    let arch = match std::env::var("TESSERA_ROCM_ARCH") {
        Ok(a) if !a.is_empty() => a,
        _ => arch_in_properties(&props).ok_or_else(|| {
            Error::device(
                "rocm",
                format!("could not read the gfx target of {name} from hipGetDeviceProperties; set TESSERA_ROCM_ARCH (for example gfx90a)"),
            )
        })?,
    };
    Ok(DeviceInfo {
        name,
        arch,
        total_memory: total as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::arch_in_properties;

    #[test]
    fn arch_is_read_from_the_properties_by_content() {
        let mut props = vec![0u8; 2048];
        props[..20].copy_from_slice(b"AMD Instinct MI250X\0");
        props[1000..1022].copy_from_slice(b"gfx90a:sramecc+:xnack-");
        assert_eq!(arch_in_properties(&props).as_deref(), Some("gfx90a"));
        props[1000..1008].copy_from_slice(b"gfx1030\0");
        assert_eq!(arch_in_properties(&props).as_deref(), Some("gfx1030"));
        assert_eq!(arch_in_properties(&[0u8; 64]), None);
        assert_eq!(arch_in_properties(b"gfx\0"), None);
    }
}
