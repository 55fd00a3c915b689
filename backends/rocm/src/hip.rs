//! The HIP runtime and hipRTC, opened at run time (`dlopen`), so the one
//! `tessera` binary starts, and says why, on machines without ROCm.
//!
//! Our own small FFI rather than hip-sys: hip-sys links libamdhip64 at
//! build time (its build script needs HIP_PATH), which would tie the binary
//! to ROCm. Only calls with plain arguments are bound (handles, ints,
//! pointers); the one struct we read, `hipDeviceProp_t`, changes layout
//! between HIP versions, so `gpu.rs` reads only its arch string, by content.

use std::ffi::{c_char, c_int, c_uint, c_void, CStr};
use std::sync::OnceLock;

pub type HipError = c_int;
pub type Stream = *mut c_void;
pub type Module = *mut c_void;
pub type Function = *mut c_void;
pub type Graph = *mut c_void;
pub type GraphExec = *mut c_void;
pub type Program = *mut c_void;

pub const SUCCESS: HipError = 0;
/// `hipErrorOutOfMemory` (hip_runtime_api.h).
pub const ERROR_OUT_OF_MEMORY: HipError = 2;
/// `hipErrorNoDevice`.
pub const ERROR_NO_DEVICE: HipError = 100;
/// `hipErrorInvalidDevice`: what hipInit returns with the runtime but no GPU.
pub const ERROR_INVALID_DEVICE: HipError = 101;
/// `hipStreamNonBlocking`.
pub const STREAM_NON_BLOCKING: c_uint = 1;
/// `hipStreamCaptureModeThreadLocal`.
pub const CAPTURE_MODE_THREAD_LOCAL: c_int = 1;

/// The runtime library names, newest first: ROCm 6/7 ship `.so.6`/`.so.7`,
/// Debian 12 and ROCm 5 `.so.5`.
const RUNTIME_LIBS: &[&str] = &[
    "libamdhip64.so.7",
    "libamdhip64.so.6",
    "libamdhip64.so.5",
    "libamdhip64.so",
];
/// hipRTC: inside libamdhip64 up to ROCm 5, its own library from ROCm 6.
const RTC_LIBS: &[&str] = &[
    "libhiprtc.so.7",
    "libhiprtc.so.6",
    "libhiprtc.so.5",
    "libhiprtc.so",
];

macro_rules! api {
    ($name:ident { $($f:ident : fn($($a:ty),*) $(-> $r:ty)?;)* }) => {
        /// Function pointers resolved from the library, kept with it; the
        /// fields keep the C names, so calls read like HIP code.
        #[allow(non_snake_case)]
        pub struct $name {
            $(pub $f: unsafe extern "C" fn($($a),*) $(-> $r)?,)*
            _lib: libloading::Library,
        }
        impl $name {
            /// # Safety
            /// `lib` must export each symbol with the signature declared here.
            unsafe fn resolve(lib: libloading::Library, file: &str) -> Result<$name, String> {
                Ok($name {
                    $($f: *unsafe { lib.get(concat!(stringify!($f), "\0").as_bytes()) }
                        .map_err(|e| format!("{file} has no {}: {e}", stringify!($f)))?,)*
                    _lib: lib,
                })
            }
        }
    };
}

api!(Runtime {
    hipInit: fn(c_uint) -> HipError;
    hipGetDeviceCount: fn(*mut c_int) -> HipError;
    hipSetDevice: fn(c_int) -> HipError;
    hipDeviceGetName: fn(*mut c_char, c_int, c_int) -> HipError;
    hipDeviceTotalMem: fn(*mut usize, c_int) -> HipError;
    hipRuntimeGetVersion: fn(*mut c_int) -> HipError;
    hipDriverGetVersion: fn(*mut c_int) -> HipError;
    hipGetErrorName: fn(HipError) -> *const c_char;
    hipMemGetInfo: fn(*mut usize, *mut usize) -> HipError;
    hipMalloc: fn(*mut *mut c_void, usize) -> HipError;
    hipFree: fn(*mut c_void) -> HipError;
    hipStreamCreateWithFlags: fn(*mut Stream, c_uint) -> HipError;
    hipStreamDestroy: fn(Stream) -> HipError;
    hipStreamSynchronize: fn(Stream) -> HipError;
    hipMemcpyHtoDAsync: fn(*mut c_void, *const c_void, usize, Stream) -> HipError;
    hipMemcpyDtoHAsync: fn(*mut c_void, *mut c_void, usize, Stream) -> HipError;
    hipMemcpyDtoDAsync: fn(*mut c_void, *mut c_void, usize, Stream) -> HipError;
    hipMemsetD8Async: fn(*mut c_void, u8, usize, Stream) -> HipError;
    hipModuleLoadData: fn(*mut Module, *const c_void) -> HipError;
    hipModuleGetFunction: fn(*mut Function, Module, *const c_char) -> HipError;
    hipModuleLaunchKernel: fn(
        Function, c_uint, c_uint, c_uint, c_uint, c_uint, c_uint, c_uint, Stream,
        *mut *mut c_void, *mut *mut c_void
    ) -> HipError;
    hipStreamBeginCapture: fn(Stream, c_int) -> HipError;
    hipStreamEndCapture: fn(Stream, *mut Graph) -> HipError;
    hipGraphInstantiate: fn(*mut GraphExec, Graph, *mut c_void, *mut c_char, usize) -> HipError;
    hipGraphLaunch: fn(GraphExec, Stream) -> HipError;
    hipGraphExecDestroy: fn(GraphExec) -> HipError;
    hipGraphDestroy: fn(Graph) -> HipError;
});

api!(Rtc {
    hiprtcVersion: fn(*mut c_int, *mut c_int) -> c_int;
    hiprtcGetErrorString: fn(c_int) -> *const c_char;
    hiprtcCreateProgram: fn(
        *mut Program, *const c_char, *const c_char, c_int, *const *const c_char,
        *const *const c_char
    ) -> c_int;
    hiprtcCompileProgram: fn(Program, c_int, *const *const c_char) -> c_int;
    hiprtcGetProgramLogSize: fn(Program, *mut usize) -> c_int;
    hiprtcGetProgramLog: fn(Program, *mut c_char) -> c_int;
    hiprtcGetCodeSize: fn(Program, *mut usize) -> c_int;
    hiprtcGetCode: fn(Program, *mut c_char) -> c_int;
    hiprtcDestroyProgram: fn(*mut Program) -> c_int;
});

/// `hipGetDeviceProperties` (HIP 6+ exports the current layout as
/// `...R0600` and keeps the old name for old binaries).
pub type PropertiesFn = unsafe extern "C" fn(*mut c_void, c_int) -> HipError;
/// `hipMallocAsync`: stream-ordered allocation (HIP 5.1+).
pub type MallocAsyncFn = unsafe extern "C" fn(*mut *mut c_void, usize, Stream) -> HipError;
/// `hipFreeAsync`.
pub type FreeAsyncFn = unsafe extern "C" fn(*mut c_void, Stream) -> HipError;

impl Runtime {
    /// An optional symbol of the runtime library: calls that only some HIP
    /// versions have.
    ///
    /// # Safety
    /// `T` must be the symbol's C function type.
    pub unsafe fn optional<T: Copy>(&self, name: &str) -> Option<T> {
        let name = format!("{name}\0");
        // SAFETY: per the caller.
        unsafe { self._lib.get::<T>(name.as_bytes()) }
            .ok()
            .map(|s| *s)
    }
}

// SAFETY: plain function pointers into a library that stays loaded; the HIP
// runtime is thread-safe.
unsafe impl Send for Runtime {}
unsafe impl Sync for Runtime {}
unsafe impl Send for Rtc {}
unsafe impl Sync for Rtc {}

/// Opens the first of `names` that loads, with the library's own name.
fn open_first(names: &[&str]) -> Result<(libloading::Library, String), Vec<String>> {
    let mut errors = vec![];
    for name in names {
        // SAFETY: loading runs the library's initialisers; the HIP runtime's
        // do not touch a GPU (that happens in hipInit).
        match unsafe { libloading::Library::new(*name) } {
            Ok(lib) => return Ok((lib, name.to_string())),
            Err(e) => errors.push(e.to_string()),
        }
    }
    Err(errors)
}

/// The HIP runtime and the file it came from, loaded once.
fn loaded() -> &'static Result<(Runtime, String), String> {
    static RUNTIME: OnceLock<Result<(Runtime, String), String>> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        let (lib, file) = open_first(RUNTIME_LIBS).map_err(|_| {
            "libamdhip64.so not found: no ROCm/HIP runtime on this machine (install ROCm, or Debian's libamdhip64-5, and make sure the loader finds it)".to_string()
        })?;
        // SAFETY: the symbols have the signatures of hip_runtime_api.h.
        let rt = unsafe { Runtime::resolve(lib, &file) }?;
        Ok((rt, file))
    })
}

/// The HIP runtime; the error says what is missing.
pub fn runtime() -> Result<&'static Runtime, String> {
    loaded().as_ref().map(|(rt, _)| rt).map_err(Clone::clone)
}

/// The file the runtime was loaded from (`libamdhip64.so.5`).
pub fn runtime_file() -> Option<&'static str> {
    loaded().as_ref().ok().map(|(_, f)| f.as_str())
}

/// hipRTC, from the runtime library (ROCm 5) or its own (ROCm 6+).
pub fn rtc() -> Result<&'static Rtc, String> {
    static RTC: OnceLock<Result<Rtc, String>> = OnceLock::new();
    RTC.get_or_init(|| {
        let mut tried = vec![];
        for names in [RUNTIME_LIBS, RTC_LIBS] {
            if let Ok((lib, file)) = open_first(names) {
                // SAFETY: the symbols have the signatures of hiprtc.h.
                match unsafe { Rtc::resolve(lib, &file) } {
                    Ok(rtc) => return Ok(rtc),
                    Err(e) => tried.push(e),
                }
            }
        }
        Err(if tried.is_empty() {
            "hipRTC not found: neither libamdhip64.so (ROCm 5) nor libhiprtc.so (ROCm 6+) loads; install ROCm's hiprtc".into()
        } else {
            format!("hipRTC not usable: {}", tried.join("; "))
        })
    })
    .as_ref()
    .map_err(Clone::clone)
}

/// `hipErrorNoDevice (100)`, from the runtime when it can say.
pub fn error_name(rt: &Runtime, e: HipError) -> String {
    // SAFETY: returns a static string (or null).
    let p = unsafe { (rt.hipGetErrorName)(e) };
    let name = if p.is_null() {
        "unknown HIP error".into()
    } else {
        // SAFETY: a NUL-terminated static string.
        unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
    };
    format!("{name} ({e})")
}

/// hipRTC's error string for `e`.
pub fn rtc_error(rtc: &Rtc, e: c_int) -> String {
    // SAFETY: returns a static string (or null).
    let p = unsafe { (rtc.hiprtcGetErrorString)(e) };
    if p.is_null() {
        format!("hipRTC error {e}")
    } else {
        // SAFETY: a NUL-terminated static string.
        format!("{} ({e})", unsafe { CStr::from_ptr(p) }.to_string_lossy())
    }
}
