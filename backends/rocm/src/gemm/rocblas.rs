//! rocBLAS: one handle bound to the stream, and `rocblas_gemm_ex` per call
//! (the fallback for what hipBLASLt does not serve; see the parent module).

use std::ffi::{c_char, c_int, c_void, CStr};

use libloading::Library;
use tessera_core::{DType, Error, Result};

use super::{dim, open_first, symbol, unsupported, Call, Ptr, BACKEND};

pub(super) const ROCBLAS_FILES: [&str; 3] = ["librocblas.so.4", "librocblas.so.3", "librocblas.so"];

// ---------------------------------------------------------------------------
// C enum values. C enums are passed as `int` (`c_int`).
// ---------------------------------------------------------------------------

// rocblas-types.h (library/include/internal/rocblas-types.h), unchanged since
// ROCm 3.
/// `rocblas_status_success`.
const ROCBLAS_STATUS_SUCCESS: c_int = 0;
/// `rocblas_operation_none`.
const ROCBLAS_OPERATION_NONE: c_int = 111;
/// `rocblas_operation_transpose`.
const ROCBLAS_OPERATION_TRANSPOSE: c_int = 112;
/// `rocblas_datatype_f32_r`.
const ROCBLAS_DATATYPE_F32_R: c_int = 151;
/// `rocblas_datatype_bf16_r`.
const ROCBLAS_DATATYPE_BF16_R: c_int = 168;
/// `rocblas_gemm_algo_standard`.
const ROCBLAS_GEMM_ALGO_STANDARD: c_int = 0;
/// `rocblas_gemm_flags_none`.
const ROCBLAS_GEMM_FLAGS_NONE: u32 = 0;

// ---------------------------------------------------------------------------
// Function pointer types, from the declarations in rocblas-functions.h and
// rocblas-auxiliary.h. Handles are opaque pointers; `hipStream_t` is a
// pointer.
// ---------------------------------------------------------------------------

/// `rocblas_status rocblas_create_handle(rocblas_handle*)`.
type RocCreate = unsafe extern "C" fn(*mut Ptr) -> c_int;
/// `rocblas_status rocblas_destroy_handle(rocblas_handle)`.
type RocDestroy = unsafe extern "C" fn(Ptr) -> c_int;
/// `rocblas_status rocblas_set_stream(rocblas_handle, hipStream_t)`.
type RocSetStream = unsafe extern "C" fn(Ptr, Ptr) -> c_int;
/// `const char* rocblas_status_to_string(rocblas_status)`.
type RocStatusString = unsafe extern "C" fn(c_int) -> *const c_char;
/// `rocblas_gemm_ex`; `rocblas_int` is `int32_t` (LP64 builds, which ROCm
/// ships; ILP64 is separate `_64` entry points).
type RocGemmEx = unsafe extern "C" fn(
    Ptr,           // handle
    c_int,         // trans_a: rocblas_operation
    c_int,         // trans_b
    i32,           // m
    i32,           // n
    i32,           // k
    *const c_void, // alpha
    *const c_void, // a
    c_int,         // a_type: rocblas_datatype
    i32,           // lda
    *const c_void, // b
    c_int,         // b_type
    i32,           // ldb
    *const c_void, // beta
    *const c_void, // c
    c_int,         // c_type
    i32,           // ldc
    Ptr,           // d
    c_int,         // d_type
    i32,           // ldd
    c_int,         // compute_type: rocblas_datatype
    c_int,         // algo: rocblas_gemm_algo
    i32,           // solution_index
    u32,           // flags
) -> c_int;

// ---------------------------------------------------------------------------
// Loading
// ---------------------------------------------------------------------------

/// rocBLAS's functions; `_lib` keeps them mapped.
pub(super) struct RocApi {
    create: RocCreate,
    destroy: RocDestroy,
    set_stream: RocSetStream,
    gemm_ex: RocGemmEx,
    status_string: Option<RocStatusString>,
    file: &'static str,
    _lib: Library,
}

impl RocApi {
    pub(super) fn load() -> std::result::Result<RocApi, String> {
        let (lib, file) = open_first(&ROCBLAS_FILES)?;
        // SAFETY: each type is the declaration in rocblas-functions.h /
        // rocblas-auxiliary.h (see the type aliases).
        unsafe {
            Ok(RocApi {
                create: symbol(&lib, file, "rocblas_create_handle")?,
                destroy: symbol(&lib, file, "rocblas_destroy_handle")?,
                set_stream: symbol(&lib, file, "rocblas_set_stream")?,
                gemm_ex: symbol(&lib, file, "rocblas_gemm_ex")?,
                // Only for error messages, so not required.
                status_string: symbol(&lib, file, "rocblas_status_to_string").ok(),
                file,
                _lib: lib,
            })
        }
    }

    fn status_name(&self, status: c_int) -> String {
        let name = self.status_string.and_then(|f| {
            // SAFETY: returns a pointer to a static string (or null).
            let p = unsafe { f(status) };
            // SAFETY: non-null pointers are NUL-terminated static strings.
            (!p.is_null()).then(|| unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
        });
        name.unwrap_or_else(|| format!("rocblas_status {status}"))
    }

    fn check(&self, call: &str, status: c_int) -> Result<()> {
        if status == ROCBLAS_STATUS_SUCCESS {
            Ok(())
        } else {
            Err(Error::device(
                BACKEND,
                format!(
                    "rocBLAS ({}) {call} failed: {}",
                    self.file,
                    self.status_name(status)
                ),
            ))
        }
    }
}

/// `rocblas_datatype` of `x` and `w`.
pub(super) fn rocblas_data_type(dtype: DType) -> Result<c_int> {
    match dtype {
        DType::F32 => Ok(ROCBLAS_DATATYPE_F32_R),
        DType::BF16 => Ok(ROCBLAS_DATATYPE_BF16_R),
        other => Err(unsupported(other)),
    }
}

// ---------------------------------------------------------------------------
// The handle
// ---------------------------------------------------------------------------

pub(super) struct Roc {
    api: RocApi,
    handle: Ptr,
}

impl Roc {
    pub(super) fn new(api: RocApi, stream: Ptr) -> Result<Roc> {
        let mut handle: Ptr = std::ptr::null_mut();
        // SAFETY: writes one handle.
        api.check("rocblas_create_handle", unsafe {
            (api.create)(&mut handle)
        })?;
        let roc = Roc { api, handle };
        // SAFETY: a live handle and the caller's stream.
        let status = unsafe { (roc.api.set_stream)(roc.handle, stream) };
        roc.api.check("rocblas_set_stream", status)?;
        Ok(roc)
    }

    pub(super) fn matmul(&self, call: &Call, w: u64, x: u64, out: u64) -> Result<()> {
        let ab = rocblas_data_type(call.dtype)?;
        let (m, n, k) = call.mnk();
        let lib = "rocBLAS";
        let (m, n, k): (i32, i32, i32) = (
            dim(call, "n", m, lib)?,
            dim(call, "t", n, lib)?,
            dim(call, "k", k, lib)?,
        );
        // Host scalars: rocBLAS's default pointer mode is host.
        let (alpha, beta) = (1f32, 0f32);
        let f32t = ROCBLAS_DATATYPE_F32_R;
        // SAFETY: the caller's buffers hold w [N, K], x [T, K] (of `ab`) and
        // out [T, N] f32; lda = ldb = K, ldc = ldd = N as the module doc maps
        // them; C == D with identical parameters is allowed.
        let status = unsafe {
            (self.api.gemm_ex)(
                self.handle,
                ROCBLAS_OPERATION_TRANSPOSE,
                ROCBLAS_OPERATION_NONE,
                m,
                n,
                k,
                (&raw const alpha).cast(),
                w as *const c_void,
                ab,
                k,
                x as *const c_void,
                ab,
                k,
                (&raw const beta).cast(),
                out as *const c_void,
                f32t,
                m,
                out as Ptr,
                f32t,
                m,
                f32t,
                ROCBLAS_GEMM_ALGO_STANDARD,
                0,
                ROCBLAS_GEMM_FLAGS_NONE,
            )
        };
        self.api
            .check(&format!("rocblas_gemm_ex ({})", call.describe()), status)
    }
}

impl Drop for Roc {
    fn drop(&mut self) {
        // SAFETY: created in `new`, used by nothing else now.
        let _ = unsafe { (self.api.destroy)(self.handle) };
    }
}
