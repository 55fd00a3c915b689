//! `out[T, N] (f32) = x[T, K] · w[N, K]ᵀ` on AMD GPUs, with fp32 accumulation,
//! through hipBLASLt (preferred) or rocBLAS. Both are opened at run time with
//! `dlopen`, so the binary starts on machines without ROCm; every symbol is
//! resolved once, when [`Gemm::new`] opens the library.
//!
//! Both libraries are column-major. Our row-major `w [N, K]` is a
//! column-major `K x N` matrix, `x [T, K]` a `K x T` one and `out [T, N]` an
//! `N x T` one, so `out = op(w)ᵀ · x` with `m = N, n = T, k = K`, A = `w`
//! transposed (`lda = K`), B = `x` as is (`ldb = K`), C = D = `out`
//! (`ldc = N`).
//!
//! hipBLASLt: one plan (matmul descriptor, three layouts, the algorithm the
//! heuristic picked) per `(t, n, k, dtype)`, made on first use and kept. A
//! shape hipBLASLt has no algorithm for goes to rocBLAS (when it loaded).
//! `TESSERA_ROCM_GEMM=rocblas` uses rocBLAS only, `=hipblaslt` requires
//! hipBLASLt, unset or `auto` prefers hipBLASLt.
//!
//! API versions: the hipBLASLt calls speak the ROCm 6.1+ API (hipBLASLt 0.7
//! and newer: `hipDataType` and `hipblasComputeType_t`); the hipBLASLt of ROCm
//! 5.7/6.0 used its own enums with other values (`HIPBLASLT_R_32F = 151`,
//! `HIPBLASLT_COMPUTE_F32 = 300`), so an older hipBLASLt is not used (its
//! version is checked) and rocBLAS serves instead. rocBLAS's `rocblas_gemm_ex`
//! has kept its signature and enum values since ROCm 3.
//!
//! UNVERIFIED: written from the headers without an AMD GPU; nothing here has
//! run. A GPU run must check, for f32 and bf16, with `t = 1` and `t > 1` and
//! with `n`, `k` not multiples of 16, that `out` matches a CPU reference both
//! by default and with `TESSERA_ROCM_GEMM=rocblas`; that `library()` says
//! "hipBLASLt" on ROCm >= 6.1 and that those shapes did not fall back
//! (`ROCBLAS_LAYER=1` makes rocBLAS log every call it serves); that an `out`
//! filled with NaN beforehand comes out clean (beta = 0 must not read C);
//! and that nothing synchronizes (the calls only enqueue on the stream).

use std::collections::HashMap;
use std::ffi::{c_char, c_int, c_void, CStr};

use libloading::Library;
use tessera_core::{DType, Error, Result};

const BACKEND: &str = "rocm";

/// The variable that picks the library (`auto`, `hipblaslt`, `rocblas`).
const CHOICE_VAR: &str = "TESSERA_ROCM_GEMM";

const HIPBLASLT_FILES: [&str; 3] = ["libhipblaslt.so.1", "libhipblaslt.so.0", "libhipblaslt.so"];
const ROCBLAS_FILES: [&str; 3] = ["librocblas.so.4", "librocblas.so.3", "librocblas.so"];

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

// hipblas-common.h (hipBLAS-common, ROCm 6.x; the same values were in
// hipBLASLt's own hipblas-enums.h before hipblas-common was split out).
/// `HIPBLAS_STATUS_SUCCESS`.
const HIPBLAS_STATUS_SUCCESS: c_int = 0;
/// `HIPBLAS_OP_T` (`hipblasOperation_t`): 112, not cuBLAS's 1.
const HIPBLAS_OP_T: i32 = 112;
/// `HIPBLAS_COMPUTE_32F` (`hipblasComputeType_t`).
const HIPBLAS_COMPUTE_32F: c_int = 2;

// hip/library_types.h (`hipDataType`, ROCm 6.x; mirrors cudaDataType).
/// `HIP_R_32F`.
const HIP_R_32F: c_int = 0;
/// `HIP_R_16BF`.
const HIP_R_16BF: c_int = 14;

// hipblaslt.h (hipBLASLt 0.7 .. 1.x).
/// `HIPBLASLT_MATMUL_DESC_TRANSA` (value type `int32_t`).
const HIPBLASLT_MATMUL_DESC_TRANSA: c_int = 0;
/// `HIPBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES` (value type `uint64_t`).
const HIPBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES: c_int = 1;

/// The oldest hipBLASLt whose API this module speaks: 0.7.0 (ROCm 6.1), as
/// `hipblasLtGetVersion` encodes it (`major * 100000 + minor * 100 + patch`,
/// hipblaslt.cpp).
const HIPBLASLT_MIN_VERSION: c_int = 700;

// ---------------------------------------------------------------------------
// hipblasLtMatmulHeuristicResult_t
// ---------------------------------------------------------------------------

// Layout from hipblaslt.h (hipBLASLt 0.7 .. 1.x, `__HIP_PLATFORM_AMD__`):
//
//   typedef struct { uint8_t data[16]; size_t max_workspace_bytes; }
//       hipblasLtMatmulAlgo_t;                       // 24 bytes, align 8
//   typedef struct {
//       hipblasLtMatmulAlgo_t algo;                  // offset  0
//       size_t                workspaceSize;         // offset 24
//       hipblasStatus_t       state;                 // offset 32 (int)
//       float                 wavesCount;            // offset 36
//       int                   reserved[4];           // offset 40
//   } hipblasLtMatmulHeuristicResult_t;              // 56 bytes, align 8
//
// `algo` comes first, so a pointer to the whole result is a valid
// `const hipblasLtMatmulAlgo_t*` for hipblasLtMatmul.
const HEURISTIC_RESULT_BYTES: usize = 56;
const HEURISTIC_WORKSPACE_AT: usize = 24;
const HEURISTIC_STATE_AT: usize = 32;
/// What we allocate: more than the 56 bytes the header declares, so that a
/// library whose struct grew (cuBLASLt's is 96 bytes) cannot write past it.
const HEURISTIC_BUFFER_BYTES: usize = 128;
const _: () = assert!(HEURISTIC_RESULT_BYTES <= HEURISTIC_BUFFER_BYTES);
const _: () = assert!(HEURISTIC_STATE_AT + 4 <= HEURISTIC_RESULT_BYTES);

/// One `hipblasLtMatmulHeuristicResult_t`, as bytes, aligned like `size_t`.
#[repr(C, align(8))]
struct HeuristicResult([u8; HEURISTIC_BUFFER_BYTES]);

impl HeuristicResult {
    fn zeroed() -> Self {
        HeuristicResult([0; HEURISTIC_BUFFER_BYTES])
    }

    fn field<const N: usize>(&self, at: usize) -> Option<[u8; N]> {
        self.0.get(at..at + N)?.try_into().ok()
    }

    /// `state`: `HIPBLAS_STATUS_SUCCESS` when the other fields are valid.
    fn state(&self) -> Option<c_int> {
        self.field(HEURISTIC_STATE_AT).map(c_int::from_ne_bytes)
    }

    /// `workspaceSize`: the workspace the algorithm needs.
    fn workspace_size(&self) -> Option<usize> {
        self.field(HEURISTIC_WORKSPACE_AT).map(usize::from_ne_bytes)
    }

    /// The `algo` member, for hipblasLtMatmul.
    fn algo(&self) -> *const c_void {
        self.0.as_ptr().cast()
    }

    fn as_mut_ptr(&mut self) -> *mut c_void {
        self.0.as_mut_ptr().cast()
    }
}

// ---------------------------------------------------------------------------
// Function pointer types, from the declarations in rocblas-functions.h,
// rocblas-auxiliary.h and hipblaslt.h. Handles and descriptors are opaque
// pointers; `hipStream_t` is a pointer.
// ---------------------------------------------------------------------------

type Ptr = *mut c_void;

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

/// `hipblasLtCreate(hipblasLtHandle_t*)`.
type LtCreate = unsafe extern "C" fn(*mut Ptr) -> c_int;
/// `hipblasLtDestroy`, `hipblasLtMatmulDescDestroy`,
/// `hipblasLtMatrixLayoutDestroy`, `hipblasLtMatmulPreferenceDestroy`.
type LtDestroy = unsafe extern "C" fn(Ptr) -> c_int;
/// `hipblasLtGetVersion(hipblasLtHandle_t, int*)`.
type LtGetVersion = unsafe extern "C" fn(Ptr, *mut c_int) -> c_int;
/// `hipblasLtMatmulDescCreate(hipblasLtMatmulDesc_t*, hipblasComputeType_t,
/// hipDataType scaleType)`.
type LtDescCreate = unsafe extern "C" fn(*mut Ptr, c_int, c_int) -> c_int;
/// `hipblasLtMatmulDescSetAttribute` and
/// `hipblasLtMatmulPreferenceSetAttribute`: (object, attribute enum,
/// `const void* buf`, `size_t sizeInBytes`).
type LtSetAttribute = unsafe extern "C" fn(Ptr, c_int, *const c_void, usize) -> c_int;
/// `hipblasLtMatrixLayoutCreate(hipblasLtMatrixLayout_t*, hipDataType,
/// uint64_t rows, uint64_t cols, int64_t ld)`.
type LtLayoutCreate = unsafe extern "C" fn(*mut Ptr, c_int, u64, u64, i64) -> c_int;
/// `hipblasLtMatmulPreferenceCreate(hipblasLtMatmulPreference_t*)`.
type LtPreferenceCreate = unsafe extern "C" fn(*mut Ptr) -> c_int;
/// `hipblasLtMatmulAlgoGetHeuristic(handle, desc, Adesc, Bdesc, Cdesc, Ddesc,
/// pref, int requestedAlgoCount, hipblasLtMatmulHeuristicResult_t[],
/// int* returnAlgoCount)`.
type LtHeuristic =
    unsafe extern "C" fn(Ptr, Ptr, Ptr, Ptr, Ptr, Ptr, Ptr, c_int, Ptr, *mut c_int) -> c_int;
/// `hipblasLtMatmul`.
type LtMatmul = unsafe extern "C" fn(
    Ptr,           // handle
    Ptr,           // matmulDesc
    *const c_void, // alpha
    *const c_void, // A
    Ptr,           // Adesc
    *const c_void, // B
    Ptr,           // Bdesc
    *const c_void, // beta
    *const c_void, // C
    Ptr,           // Cdesc
    Ptr,           // D
    Ptr,           // Ddesc
    *const c_void, // algo: const hipblasLtMatmulAlgo_t*
    Ptr,           // workspace
    usize,         // workspaceSizeInBytes
    Ptr,           // stream
) -> c_int;

// ---------------------------------------------------------------------------
// Loading
// ---------------------------------------------------------------------------

/// A libloading error's cause: its own text is only "dlopen failed", the
/// `dlerror` message is its source.
fn dl_error(e: &libloading::Error) -> String {
    let mut parts = Vec::new();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        parts.push(c.to_string());
        cause = c.source();
    }
    if parts.is_empty() {
        e.to_string()
    } else {
        parts.join(": ")
    }
}

/// Opens the first of `files` that loads; the error says why none did.
fn open_first(files: &[&'static str]) -> std::result::Result<(Library, &'static str), String> {
    let mut why = Vec::new();
    for &file in files {
        // SAFETY: ROCm's libraries; their initialisers only set up the HIP
        // runtime and their own tables.
        match unsafe { Library::new(file) } {
            Ok(lib) => return Ok((lib, file)),
            Err(e) => {
                let e = dl_error(&e);
                // dlerror usually names the file already.
                why.push(if e.contains(file) {
                    e
                } else {
                    format!("{file}: {e}")
                });
            }
        }
    }
    // The common case in one phrase; anything else (a library that exists
    // but fails to load) in full.
    if why.iter().all(|w| w.contains("No such file or directory")) {
        Err("not found on the library search path".into())
    } else {
        Err(why.join("; "))
    }
}

/// The function `name` of `lib` as a `T`.
///
/// # Safety
/// `T` must be the function-pointer type of `name`'s C declaration.
unsafe fn symbol<T: Copy>(lib: &Library, file: &str, name: &str) -> std::result::Result<T, String> {
    // SAFETY: the caller vouches for `T`.
    let f = unsafe { lib.get::<T>(name) }
        .map_err(|e| format!("{file} has no symbol {name}: {}", dl_error(&e)))?;
    Ok(*f)
}

/// rocBLAS's functions; `_lib` keeps them mapped.
struct RocApi {
    create: RocCreate,
    destroy: RocDestroy,
    set_stream: RocSetStream,
    gemm_ex: RocGemmEx,
    status_string: Option<RocStatusString>,
    file: &'static str,
    _lib: Library,
}

impl RocApi {
    fn load() -> std::result::Result<RocApi, String> {
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

/// hipBLASLt's functions; `_lib` keeps them mapped.
struct LtApi {
    create: LtCreate,
    destroy: LtDestroy,
    get_version: Option<LtGetVersion>,
    desc_create: LtDescCreate,
    desc_destroy: LtDestroy,
    desc_set: LtSetAttribute,
    layout_create: LtLayoutCreate,
    layout_destroy: LtDestroy,
    pref_create: LtPreferenceCreate,
    pref_destroy: LtDestroy,
    pref_set: LtSetAttribute,
    heuristic: LtHeuristic,
    matmul: LtMatmul,
    file: &'static str,
    _lib: Library,
}

impl LtApi {
    fn load() -> std::result::Result<LtApi, String> {
        let (lib, file) = open_first(&HIPBLASLT_FILES)?;
        // SAFETY: each type is the declaration in hipblaslt.h (see the type
        // aliases).
        unsafe {
            Ok(LtApi {
                create: symbol(&lib, file, "hipblasLtCreate")?,
                destroy: symbol(&lib, file, "hipblasLtDestroy")?,
                // Missing only in versions too old to use anyway.
                get_version: symbol(&lib, file, "hipblasLtGetVersion").ok(),
                desc_create: symbol(&lib, file, "hipblasLtMatmulDescCreate")?,
                desc_destroy: symbol(&lib, file, "hipblasLtMatmulDescDestroy")?,
                desc_set: symbol(&lib, file, "hipblasLtMatmulDescSetAttribute")?,
                layout_create: symbol(&lib, file, "hipblasLtMatrixLayoutCreate")?,
                layout_destroy: symbol(&lib, file, "hipblasLtMatrixLayoutDestroy")?,
                pref_create: symbol(&lib, file, "hipblasLtMatmulPreferenceCreate")?,
                pref_destroy: symbol(&lib, file, "hipblasLtMatmulPreferenceDestroy")?,
                pref_set: symbol(&lib, file, "hipblasLtMatmulPreferenceSetAttribute")?,
                heuristic: symbol(&lib, file, "hipblasLtMatmulAlgoGetHeuristic")?,
                matmul: symbol(&lib, file, "hipblasLtMatmul")?,
                file,
                _lib: lib,
            })
        }
    }
}

/// `hipblasStatus_t` names, from hipblas-common.h.
fn lt_status_name(status: c_int) -> String {
    let name = match status {
        0 => "HIPBLAS_STATUS_SUCCESS",
        1 => "HIPBLAS_STATUS_NOT_INITIALIZED",
        2 => "HIPBLAS_STATUS_ALLOC_FAILED",
        3 => "HIPBLAS_STATUS_INVALID_VALUE",
        4 => "HIPBLAS_STATUS_MAPPING_ERROR",
        5 => "HIPBLAS_STATUS_EXECUTION_FAILED",
        6 => "HIPBLAS_STATUS_INTERNAL_ERROR",
        7 => "HIPBLAS_STATUS_NOT_SUPPORTED",
        8 => "HIPBLAS_STATUS_ARCH_MISMATCH",
        9 => "HIPBLAS_STATUS_HANDLE_IS_NULLPTR",
        10 => "HIPBLAS_STATUS_INVALID_ENUM",
        11 => "HIPBLAS_STATUS_UNKNOWN",
        other => return format!("hipblasStatus_t {other}"),
    };
    name.into()
}

/// An error's text without the "device rocm:" its Display adds, to nest it
/// in another error.
fn message(e: Error) -> String {
    match e {
        Error::Device { message, .. } => message,
        other => other.to_string(),
    }
}

fn lt_check(call: &str, status: c_int) -> Result<()> {
    if status == HIPBLAS_STATUS_SUCCESS {
        Ok(())
    } else {
        Err(Error::device(
            BACKEND,
            format!("hipBLASLt {call} failed: {}", lt_status_name(status)),
        ))
    }
}

// ---------------------------------------------------------------------------
// Which library
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Choice {
    /// hipBLASLt if it loads, rocBLAS for the rest.
    Auto,
    /// hipBLASLt or an error (rocBLAS still serves shapes it cannot do).
    HipBlasLt,
    /// rocBLAS only.
    RocBlas,
}

fn parse_choice(value: Option<&str>) -> Result<Choice> {
    match value.map(|v| v.trim().to_ascii_lowercase()).as_deref() {
        None | Some("" | "auto") => Ok(Choice::Auto),
        Some("hipblaslt") => Ok(Choice::HipBlasLt),
        Some("rocblas") => Ok(Choice::RocBlas),
        Some(other) => Err(Error::device(
            BACKEND,
            format!("{CHOICE_VAR}={other}: expected auto, hipblaslt or rocblas"),
        )),
    }
}

fn choice() -> Result<Choice> {
    let value = std::env::var_os(CHOICE_VAR);
    parse_choice(value.as_ref().map(|v| v.to_string_lossy()).as_deref())
}

fn no_library(hipblaslt: Option<&str>, rocblas: &str) -> String {
    let lt = match hipblaslt {
        Some(why) => format!("hipBLASLt ({}): {why}; ", HIPBLASLT_FILES.join(", ")),
        None => String::new(),
    };
    format!(
        "no GEMM library: {lt}rocBLAS ({}): {rocblas}. Install ROCm's hipblaslt or rocblas \
         package (its lib folder, e.g. /opt/rocm/lib, must be on LD_LIBRARY_PATH)",
        ROCBLAS_FILES.join(", ")
    )
}

/// Why no GEMM library can be used here (neither hipBLASLt nor rocBLAS
/// loads), if so. Only opens the libraries; needs no GPU.
pub fn unavailable() -> Option<String> {
    let choice = match choice() {
        Ok(c) => c,
        Err(e) => return Some(message(e)),
    };
    let lt = match choice {
        Choice::RocBlas => None,
        Choice::Auto | Choice::HipBlasLt => match LtApi::load() {
            Ok(_) => return None,
            Err(why) => Some(why),
        },
    };
    if choice == Choice::HipBlasLt {
        return lt.map(|why| format!("{CHOICE_VAR}=hipblaslt, but hipBLASLt does not load: {why}"));
    }
    match RocApi::load() {
        Ok(_) => None,
        Err(why) => Some(no_library(lt.as_deref(), &why)),
    }
}

// ---------------------------------------------------------------------------
// The problem
// ---------------------------------------------------------------------------

/// `hipDataType` of `x` and `w`.
fn lt_data_type(dtype: DType) -> Result<c_int> {
    match dtype {
        DType::F32 => Ok(HIP_R_32F),
        DType::BF16 => Ok(HIP_R_16BF),
        other => Err(unsupported(other)),
    }
}

/// `rocblas_datatype` of `x` and `w`.
fn rocblas_data_type(dtype: DType) -> Result<c_int> {
    match dtype {
        DType::F32 => Ok(ROCBLAS_DATATYPE_F32_R),
        DType::BF16 => Ok(ROCBLAS_DATATYPE_BF16_R),
        other => Err(unsupported(other)),
    }
}

fn unsupported(dtype: DType) -> Error {
    Error::Unsupported {
        backend: BACKEND.into(),
        what: format!("{dtype} matmul (hipBLASLt/rocBLAS take f32 or bf16)"),
    }
}

/// One call, checked: `x [t, k]`, `w [n, k]`, `out [t, n]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Call {
    dtype: DType,
    t: usize,
    n: usize,
    k: usize,
}

impl Call {
    /// `Ok(None)` when there is nothing to compute (`t == 0` or `n == 0`).
    fn check(
        dtype: DType,
        (t, n, k): (usize, usize, usize),
        w: u64,
        x: u64,
        out: u64,
    ) -> Result<Option<Call>> {
        lt_data_type(dtype)?;
        if k == 0 {
            return Err(Error::invalid(format!(
                "matmul with k = 0 ([{t}x0] x [{n}x0]ᵀ): nothing defines out"
            )));
        }
        if t == 0 || n == 0 {
            return Ok(None);
        }
        if w == 0 || x == 0 || out == 0 {
            return Err(Error::invalid("matmul on a null device address"));
        }
        Ok(Some(Call { dtype, t, n, k }))
    }

    fn describe(&self) -> String {
        let Call { dtype, t, n, k } = *self;
        format!("{dtype} [{t}x{k}] x [{n}x{k}]ᵀ")
    }

    /// Column-major `(m, n, k)` = `(N, T, K)`.
    fn mnk(&self) -> (usize, usize, usize) {
        (self.n, self.t, self.k)
    }
}

fn dim<T: TryFrom<usize>>(call: &Call, what: &str, v: usize, library: &str) -> Result<T> {
    T::try_from(v).map_err(|_| Error::Unsupported {
        backend: BACKEND.into(),
        what: format!(
            "{} ({what} = {v} does not fit {library}'s integer)",
            call.describe()
        ),
    })
}

// ---------------------------------------------------------------------------
// rocBLAS
// ---------------------------------------------------------------------------

struct Roc {
    api: RocApi,
    handle: Ptr,
}

impl Roc {
    fn new(api: RocApi, stream: Ptr) -> Result<Roc> {
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

    fn matmul(&self, call: &Call, w: u64, x: u64, out: u64) -> Result<()> {
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

// ---------------------------------------------------------------------------
// hipBLASLt
// ---------------------------------------------------------------------------

/// Everything one shape needs, made once. Null members were not created.
struct Plan {
    desc: Ptr,
    a: Ptr,
    b: Ptr,
    d: Ptr,
    heuristic: HeuristicResult,
}

/// What hipBLASLt does with a shape.
enum Route {
    Plan(Plan),
    /// No algorithm; the reason, for the error if rocBLAS is missing too.
    NoAlgorithm(String),
}

struct Lt {
    api: LtApi,
    handle: Ptr,
    plans: HashMap<Call, Route>,
}

impl Lt {
    fn new(api: LtApi) -> Result<Lt> {
        let mut handle: Ptr = std::ptr::null_mut();
        // SAFETY: writes one handle.
        lt_check("hipblasLtCreate", unsafe { (api.create)(&mut handle) })?;
        let lt = Lt {
            api,
            handle,
            plans: HashMap::new(),
        };
        lt.check_version()?;
        Ok(lt)
    }

    /// Refuses a hipBLASLt older than the `hipDataType` API (see the module
    /// doc): its enum values differ from the ones we pass.
    fn check_version(&self) -> Result<()> {
        let old = |v: &str| {
            Error::device(
                BACKEND,
                format!(
                    "{} is hipBLASLt {v}; this backend needs 0.7 or newer (ROCm 6.1+)",
                    self.api.file
                ),
            )
        };
        let Some(get_version) = self.api.get_version else {
            return Err(old("without hipblasLtGetVersion"));
        };
        let mut version: c_int = 0;
        // SAFETY: a live handle; writes one int.
        lt_check("hipblasLtGetVersion", unsafe {
            get_version(self.handle, &mut version)
        })?;
        if version < HIPBLASLT_MIN_VERSION {
            let (major, minor, patch) = (version / 100_000, version / 100 % 1000, version % 100);
            return Err(old(&format!("{major}.{minor}.{patch}")));
        }
        Ok(())
    }

    /// Runs `call` if hipBLASLt has an algorithm for it; `Ok(Err(why))` if
    /// it has none.
    fn matmul(
        &mut self,
        call: &Call,
        (w, x, out): (u64, u64, u64),
        workspace: (u64, usize),
        stream: Ptr,
    ) -> Result<std::result::Result<(), String>> {
        if !self.plans.contains_key(call) {
            let route = self.make_route(call, workspace.1)?;
            self.plans.insert(*call, route);
        }
        let plan = match self.plans.get(call) {
            Some(Route::Plan(plan)) => plan,
            Some(Route::NoAlgorithm(why)) => return Ok(Err(why.clone())),
            None => return Err(Error::invalid("hipBLASLt plan cache lost an entry")),
        };
        let (alpha, beta) = (1f32, 0f32);
        let ws = if workspace.1 == 0 {
            std::ptr::null_mut()
        } else {
            workspace.0 as Ptr
        };
        // SAFETY: the plan was made for exactly this shape and these types;
        // the caller's buffers hold w, x and out of that shape; the algorithm
        // needs at most `workspace.1` bytes (checked in make_route), which
        // the caller's workspace has.
        let status = unsafe {
            (self.api.matmul)(
                self.handle,
                plan.desc,
                (&raw const alpha).cast(),
                w as *const c_void,
                plan.a,
                x as *const c_void,
                plan.b,
                (&raw const beta).cast(),
                out as *const c_void,
                plan.d,
                out as Ptr,
                plan.d,
                plan.heuristic.algo(),
                ws,
                workspace.1,
                stream,
            )
        };
        lt_check(&format!("hipblasLtMatmul ({})", call.describe()), status)?;
        Ok(Ok(()))
    }

    fn make_route(&self, call: &Call, workspace_bytes: usize) -> Result<Route> {
        let mut plan = Plan {
            desc: std::ptr::null_mut(),
            a: std::ptr::null_mut(),
            b: std::ptr::null_mut(),
            d: std::ptr::null_mut(),
            heuristic: HeuristicResult::zeroed(),
        };
        let found = self.fill_plan(&mut plan, call, workspace_bytes);
        match found {
            Ok(None) => Ok(Route::Plan(plan)),
            Ok(Some(why)) => {
                self.destroy(&plan);
                Ok(Route::NoAlgorithm(why))
            }
            Err(e) => {
                self.destroy(&plan);
                Err(e)
            }
        }
    }

    /// Creates the plan's descriptors and asks for an algorithm; `Ok(Some)`
    /// says why there is none.
    fn fill_plan(
        &self,
        plan: &mut Plan,
        call: &Call,
        workspace_bytes: usize,
    ) -> Result<Option<String>> {
        let ab = lt_data_type(call.dtype)?;
        let (m, n, k) = call.mnk();
        let lib = "hipBLASLt";
        let (m64, n64, k64): (u64, u64, u64) = (
            dim(call, "n", m, lib)?,
            dim(call, "t", n, lib)?,
            dim(call, "k", k, lib)?,
        );
        let (ld_a, ld_d): (i64, i64) = (dim(call, "k", k, lib)?, dim(call, "n", m, lib)?);
        let max_workspace: u64 = dim(call, "workspace bytes", workspace_bytes, lib)?;

        // SAFETY (this block): each create writes one descriptor into the
        // plan, which `destroy` frees; attribute values have the types
        // hipblaslt.h gives (int32_t TRANSA, uint64_t MAX_WORKSPACE_BYTES).
        unsafe {
            lt_check(
                "hipblasLtMatmulDescCreate",
                (self.api.desc_create)(&mut plan.desc, HIPBLAS_COMPUTE_32F, HIP_R_32F),
            )?;
            let transpose: i32 = HIPBLAS_OP_T;
            lt_check(
                "hipblasLtMatmulDescSetAttribute(TRANSA)",
                (self.api.desc_set)(
                    plan.desc,
                    HIPBLASLT_MATMUL_DESC_TRANSA,
                    (&raw const transpose).cast(),
                    std::mem::size_of::<i32>(),
                ),
            )?;
            // A = w: K x N column-major (op T makes it N x K); B = x: K x T;
            // C = D = out: N x T, f32.
            let layout = |out: &mut Ptr, ty, rows, cols, ld| {
                lt_check(
                    "hipblasLtMatrixLayoutCreate",
                    (self.api.layout_create)(out, ty, rows, cols, ld),
                )
            };
            layout(&mut plan.a, ab, k64, m64, ld_a)?;
            layout(&mut plan.b, ab, k64, n64, ld_a)?;
            layout(&mut plan.d, HIP_R_32F, m64, n64, ld_d)?;

            let mut pref: Ptr = std::ptr::null_mut();
            lt_check(
                "hipblasLtMatmulPreferenceCreate",
                (self.api.pref_create)(&mut pref),
            )?;
            // The preference is only needed for the query: destroyed right
            // after it, whatever happened.
            let mut query = || -> Result<(c_int, c_int)> {
                lt_check(
                    "hipblasLtMatmulPreferenceSetAttribute(MAX_WORKSPACE_BYTES)",
                    (self.api.pref_set)(
                        pref,
                        HIPBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                        (&raw const max_workspace).cast(),
                        std::mem::size_of::<u64>(),
                    ),
                )?;
                let mut returned: c_int = 0;
                let status = (self.api.heuristic)(
                    self.handle,
                    plan.desc,
                    plan.a,
                    plan.b,
                    plan.d,
                    plan.d,
                    pref,
                    1,
                    plan.heuristic.as_mut_ptr(),
                    &mut returned,
                );
                Ok((status, returned))
            };
            let queried = query();
            let _ = (self.api.pref_destroy)(pref);
            let (status, returned) = queried?;
            Ok(judge_heuristic(
                call,
                status,
                returned,
                &plan.heuristic,
                workspace_bytes,
            ))
        }
    }

    fn destroy(&self, plan: &Plan) {
        // SAFETY: each non-null member was created by this library and is
        // used by nothing else now.
        unsafe {
            for layout in [plan.a, plan.b, plan.d] {
                if !layout.is_null() {
                    let _ = (self.api.layout_destroy)(layout);
                }
            }
            if !plan.desc.is_null() {
                let _ = (self.api.desc_destroy)(plan.desc);
            }
        }
    }
}

/// `None` if the heuristic gave a usable algorithm, else why not.
fn judge_heuristic(
    call: &Call,
    status: c_int,
    returned: c_int,
    result: &HeuristicResult,
    workspace_bytes: usize,
) -> Option<String> {
    let none = |why: String| {
        Some(format!(
            "hipBLASLt has no algorithm for {}: {why}",
            call.describe()
        ))
    };
    if status != HIPBLAS_STATUS_SUCCESS {
        return none(format!(
            "hipblasLtMatmulAlgoGetHeuristic returned {}",
            lt_status_name(status)
        ));
    }
    if returned < 1 {
        return none("the heuristic returned no algorithm".into());
    }
    match result.state() {
        Some(HIPBLAS_STATUS_SUCCESS) => {}
        Some(state) => return none(format!("its result's state is {}", lt_status_name(state))),
        None => return none("unreadable heuristic result".into()),
    }
    match result.workspace_size() {
        Some(need) if need <= workspace_bytes => None,
        Some(need) => none(format!(
            "it wants {need} bytes of workspace, {workspace_bytes} are given"
        )),
        None => none("unreadable heuristic result".into()),
    }
}

impl Drop for Lt {
    fn drop(&mut self) {
        for (_, route) in std::mem::take(&mut self.plans) {
            if let Route::Plan(plan) = route {
                self.destroy(&plan);
            }
        }
        // SAFETY: created in `new`, used by nothing else now.
        let _ = unsafe { (self.api.destroy)(self.handle) };
    }
}

// ---------------------------------------------------------------------------
// Gemm
// ---------------------------------------------------------------------------

pub struct Gemm {
    stream: Ptr,
    workspace: u64,
    workspace_bytes: usize,
    lt: Option<Lt>,
    roc: Option<Roc>,
    /// Why rocBLAS is not there, for the error when hipBLASLt cannot serve a
    /// shape either.
    roc_missing: Option<String>,
}

// SAFETY: the handles, descriptors and stream are used by one thread at a
// time: `Gemm` lives behind a Mutex, and neither library ties its handle to
// the thread that created it (only to the device, which the caller binds).
unsafe impl Send for Gemm {}

impl Gemm {
    /// Opens hipBLASLt (libhipblaslt.so.1, .so.0, .so), else rocBLAS
    /// (librocblas.so.4, .so.3, .so), binding all work to `stream` (a
    /// `hipStream_t`); the device the stream belongs to must be current.
    ///
    /// `workspace`/`workspace_bytes`: device scratch the caller allocated
    /// (hipMalloc, so 16-byte aligned as hipBLASLt requires) that hipBLASLt
    /// may use; rocBLAS ignores it. It must outlive the `Gemm`.
    ///
    /// `TESSERA_ROCM_GEMM=rocblas` forces rocBLAS (to compare, or if
    /// hipBLASLt misbehaves); `=hipblaslt` makes a missing hipBLASLt an error.
    pub fn new(stream: *mut c_void, workspace: u64, workspace_bytes: usize) -> Result<Gemm> {
        if workspace_bytes > 0 && (workspace == 0 || !workspace.is_multiple_of(16)) {
            return Err(Error::invalid(format!(
                "GEMM workspace at {workspace:#x}: hipBLASLt needs a 16-byte aligned address"
            )));
        }
        let choice = choice()?;
        let (lt, lt_missing) = match choice {
            Choice::RocBlas => (None, None),
            Choice::Auto | Choice::HipBlasLt => {
                let lt = LtApi::load()
                    .map_err(|why| Error::device(BACKEND, why))
                    .and_then(Lt::new);
                match lt {
                    Ok(lt) => (Some(lt), None),
                    Err(e) if choice == Choice::HipBlasLt => {
                        return Err(Error::device(
                            BACKEND,
                            format!(
                                "{CHOICE_VAR}=hipblaslt, but hipBLASLt cannot be used: {}",
                                message(e)
                            ),
                        ))
                    }
                    Err(e) => (None, Some(message(e))),
                }
            }
        };
        // rocBLAS serves everything when hipBLASLt is not there, else the
        // shapes hipBLASLt has no algorithm for; then it is optional.
        let roc = RocApi::load().and_then(|api| Roc::new(api, stream).map_err(message));
        let (roc, roc_missing) = match roc {
            Ok(roc) => (Some(roc), None),
            Err(why) if lt.is_some() => (None, Some(why)),
            Err(why) => {
                return Err(Error::device(
                    BACKEND,
                    no_library(lt_missing.as_deref(), &why),
                ))
            }
        };
        Ok(Gemm {
            stream,
            workspace,
            workspace_bytes,
            lt,
            roc,
            roc_missing,
        })
    }

    /// "hipBLASLt" or "rocBLAS", for logs and `tessera devices`.
    pub fn library(&self) -> &'static str {
        if self.lt.is_some() {
            "hipBLASLt"
        } else {
            "rocBLAS"
        }
    }

    /// `out [t, n] f32 (row-major) = x [t, k] · w [n, k]ᵀ` (both row-major, of
    /// `dtype`: F32 or BF16), fp32 accumulation, enqueued on the stream.
    /// `w`, `x`, `out` are device addresses the caller checked against the
    /// shape.
    pub fn matmul(
        &mut self,
        dtype: DType,
        tnk: (usize, usize, usize),
        w: u64,
        x: u64,
        out: u64,
    ) -> Result<()> {
        let Some(call) = Call::check(dtype, tnk, w, x, out)? else {
            return Ok(());
        };
        let mut no_algorithm = None;
        if let Some(lt) = self.lt.as_mut() {
            let workspace = (self.workspace, self.workspace_bytes);
            match lt.matmul(&call, (w, x, out), workspace, self.stream)? {
                Ok(()) => return Ok(()),
                Err(why) => no_algorithm = Some(why),
            }
        }
        match (&self.roc, no_algorithm) {
            (Some(roc), _) => roc.matmul(&call, w, x, out),
            (None, Some(why)) => Err(Error::device(
                BACKEND,
                format!(
                    "{why}; rocBLAS, the fallback, did not load: {}",
                    self.roc_missing.as_deref().unwrap_or("unknown reason")
                ),
            )),
            (None, None) => Err(Error::invalid("Gemm without a library")),
        }
    }
}

impl Drop for Gemm {
    fn drop(&mut self) {
        // hipBLASLt's plans, then its handle (Lt's Drop); then rocBLAS's
        // handle (Roc's Drop). Each library stays mapped until its own
        // handles are gone.
        self.lt.take();
        self.roc.take();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unavailable_names_both_libraries() {
        // Only meaningful where ROCm is not installed (as on CI machines
        // without AMD GPUs); with ROCm there is nothing to check here.
        let Some(why) = unavailable() else { return };
        if !matches!(choice(), Ok(Choice::Auto)) {
            return;
        }
        assert!(why.contains("hipBLASLt"), "{why}");
        assert!(why.contains("libhipblaslt.so.1"), "{why}");
        assert!(why.contains("rocBLAS"), "{why}");
        assert!(why.contains("librocblas.so.4"), "{why}");
    }

    #[test]
    fn new_fails_cleanly_without_rocm() {
        if unavailable().is_none() {
            return;
        }
        let err = match Gemm::new(std::ptr::null_mut(), 0, 0) {
            Ok(_) => panic!("Gemm::new succeeded without a GEMM library"),
            Err(e) => e.to_string(),
        };
        if matches!(choice(), Ok(Choice::Auto)) {
            assert!(
                err.contains("hipBLASLt") && err.contains("rocBLAS"),
                "{err}"
            );
        }
    }

    #[test]
    fn open_first_explains_failures() {
        let err = match open_first(&["libtessera-none-1.so", "libtessera-none-2.so"]) {
            Ok(_) => panic!("opened a library that does not exist"),
            Err(e) => e,
        };
        assert!(err.contains("not found"), "{err}");

        // A file that exists but is no library: its own error, in full.
        let path = std::env::temp_dir().join(format!("tessera-gemm-{}.so", std::process::id()));
        std::fs::write(&path, b"not an ELF file").expect("temp file");
        let name: &'static str = Box::leak(path.to_string_lossy().into_owned().into_boxed_str());
        let err = match open_first(&[name, "libtessera-none-1.so"]) {
            Ok(_) => panic!("opened a text file as a library"),
            Err(e) => e,
        };
        let _ = std::fs::remove_file(&path);
        assert!(err.contains(name) && !err.contains("not found"), "{err}");
    }

    #[test]
    fn missing_symbol_names_symbol_and_library() {
        // libc stands in for a ROCm library; skip where it has another name.
        let Ok((lib, file)) = open_first(&["libc.so.6"]) else {
            return;
        };
        // SAFETY: the symbol does not exist, so nothing is ever called.
        let err = unsafe { symbol::<unsafe extern "C" fn()>(&lib, file, "tessera_no_such_fn") };
        let err = err.err().unwrap_or_default();
        assert!(
            err.contains("libc.so.6") && err.contains("tessera_no_such_fn"),
            "{err}"
        );
    }

    #[test]
    fn dtypes_map_to_header_values() {
        assert_eq!(lt_data_type(DType::F32).ok(), Some(0));
        assert_eq!(lt_data_type(DType::BF16).ok(), Some(14));
        assert_eq!(rocblas_data_type(DType::F32).ok(), Some(151));
        assert_eq!(rocblas_data_type(DType::BF16).ok(), Some(168));
        for d in [DType::F16, DType::I32] {
            assert!(matches!(lt_data_type(d), Err(Error::Unsupported { .. })));
            assert!(matches!(
                rocblas_data_type(d),
                Err(Error::Unsupported { .. })
            ));
            assert!(matches!(
                Call::check(d, (1, 1, 1), 8, 8, 8),
                Err(Error::Unsupported { .. })
            ));
        }
    }

    #[test]
    fn calls_are_checked() {
        let ok = Call::check(DType::BF16, (3, 5, 7), 8, 16, 24);
        assert!(matches!(
            ok,
            Ok(Some(Call {
                t: 3,
                n: 5,
                k: 7,
                ..
            }))
        ));
        assert!(matches!(
            Call::check(DType::F32, (0, 5, 7), 8, 16, 24),
            Ok(None)
        ));
        assert!(matches!(
            Call::check(DType::F32, (3, 0, 7), 0, 0, 0),
            Ok(None)
        ));
        assert!(matches!(
            Call::check(DType::F32, (3, 5, 0), 8, 16, 24),
            Err(Error::Invalid(_))
        ));
        assert!(matches!(
            Call::check(DType::F32, (3, 5, 7), 0, 16, 24),
            Err(Error::Invalid(_))
        ));
    }

    #[test]
    fn column_major_mapping() {
        let call = Call {
            dtype: DType::F32,
            t: 3,
            n: 5,
            k: 7,
        };
        assert_eq!(call.mnk(), (5, 3, 7));
    }

    #[test]
    fn rocblas_dims_must_fit_i32() {
        let call = Call {
            dtype: DType::F32,
            t: 1,
            n: 1,
            k: 1,
        };
        let big = i32::MAX as usize + 1;
        assert!(dim::<i32>(&call, "k", big, "rocBLAS").is_err());
        assert_eq!(dim::<i32>(&call, "k", 4096, "rocBLAS").ok(), Some(4096));
        assert_eq!(
            dim::<u64>(&call, "k", big, "hipBLASLt").ok(),
            Some(big as u64)
        );
    }

    #[test]
    fn choice_parses() {
        assert_eq!(parse_choice(None).ok(), Some(Choice::Auto));
        assert_eq!(parse_choice(Some("")).ok(), Some(Choice::Auto));
        assert_eq!(parse_choice(Some("rocBLAS")).ok(), Some(Choice::RocBlas));
        assert_eq!(
            parse_choice(Some(" hipblaslt ")).ok(),
            Some(Choice::HipBlasLt)
        );
        assert!(matches!(
            parse_choice(Some("cublas")),
            Err(Error::Device { .. })
        ));
    }

    #[test]
    fn heuristic_result_layout() {
        assert_eq!(std::mem::align_of::<HeuristicResult>(), 8);
        assert!(std::mem::size_of::<HeuristicResult>() >= HEURISTIC_RESULT_BYTES);
        let mut r = HeuristicResult::zeroed();
        r.0[HEURISTIC_WORKSPACE_AT..HEURISTIC_WORKSPACE_AT + 8]
            .copy_from_slice(&4096usize.to_ne_bytes());
        r.0[HEURISTIC_STATE_AT..HEURISTIC_STATE_AT + 4].copy_from_slice(&7i32.to_ne_bytes());
        assert_eq!(r.workspace_size(), Some(4096));
        assert_eq!(r.state(), Some(7));
        assert_eq!(r.algo(), r.0.as_ptr().cast());
    }

    #[test]
    fn status_names() {
        assert_eq!(lt_status_name(7), "HIPBLAS_STATUS_NOT_SUPPORTED");
        assert_eq!(lt_status_name(99), "hipblasStatus_t 99");
    }
}
