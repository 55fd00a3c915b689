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

mod hipblaslt;
mod rocblas;

use std::ffi::c_void;

use libloading::Library;
use tessera_core::{DType, Error, Result};

use hipblaslt::{lt_data_type, Lt, LtApi, HIPBLASLT_FILES};
use rocblas::{Roc, RocApi, ROCBLAS_FILES};

const BACKEND: &str = "rocm";

/// The variable that picks the library (`auto`, `hipblaslt`, `rocblas`).
const CHOICE_VAR: &str = "TESSERA_ROCM_GEMM";

/// Handles, descriptors and `hipStream_t`: opaque pointers in both libraries.
type Ptr = *mut c_void;

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

/// An error's text without the "device rocm:" its Display adds, to nest it
/// in another error.
fn message(e: Error) -> String {
    match e {
        Error::Device { message, .. } => message,
        other => other.to_string(),
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
    use super::rocblas::rocblas_data_type;
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
}
