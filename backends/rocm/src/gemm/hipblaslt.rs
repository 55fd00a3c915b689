//! hipBLASLt: one plan (descriptors and the algorithm the heuristic picked)
//! per shape, made on first use and kept; `hipblasLtMatmul` per call. Speaks
//! the ROCm 6.1+ API only (see the parent module).

use std::collections::HashMap;
use std::ffi::{c_int, c_void};

use libloading::Library;
use tessera_core::{DType, Error, Result};

use super::{dim, open_first, symbol, unsupported, Call, Ptr, BACKEND};

pub(super) const HIPBLASLT_FILES: [&str; 3] =
    ["libhipblaslt.so.1", "libhipblaslt.so.0", "libhipblaslt.so"];

// ---------------------------------------------------------------------------
// C enum values. C enums are passed as `int` (`c_int`).
// ---------------------------------------------------------------------------

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
// Function pointer types, from the declarations in hipblaslt.h. Handles
// and descriptors are opaque pointers; `hipStream_t` is a pointer.
// ---------------------------------------------------------------------------

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

/// hipBLASLt's functions; `_lib` keeps them mapped.
pub(super) struct LtApi {
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
    pub(super) fn load() -> std::result::Result<LtApi, String> {
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

/// `hipDataType` of `x` and `w`.
pub(super) fn lt_data_type(dtype: DType) -> Result<c_int> {
    match dtype {
        DType::F32 => Ok(HIP_R_32F),
        DType::BF16 => Ok(HIP_R_16BF),
        other => Err(unsupported(other)),
    }
}

// ---------------------------------------------------------------------------
// Plans
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

pub(super) struct Lt {
    api: LtApi,
    handle: Ptr,
    plans: HashMap<Call, Route>,
}

impl Lt {
    pub(super) fn new(api: LtApi) -> Result<Lt> {
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
    pub(super) fn matmul(
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

#[cfg(test)]
mod tests {
    use super::*;

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
