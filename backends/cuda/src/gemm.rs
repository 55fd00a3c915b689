//! `out[T, N] = x[T, K] · w[N, K]ᵀ` through cuBLASLt, with fp32 accumulation:
//! bf16 weights run on tensor cores (x converted to bf16 first), f32 weights
//! in plain fp32 (no TF32: f32 is the precision mode). The descriptors and
//! the algorithm are chosen once per shape and kept.
//!
//! cuBLASLt is column-major. Our row-major `w [N, K]` is a column-major
//! `K x N` matrix, `x [T, K]` a `K x T` one and `out [T, N]` an `N x T` one,
//! so `out = op(w)ᵀ · x` with `m = N, n = T, k = K` and A transposed.

use crate::gpu::Gpu;
use cudarc::cublaslt::{result as lt, sys as lt_sys};
use cudarc::driver::sys::CUdeviceptr;
use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::Arc;
use tessera_core::{DType, Error, Result};

/// Scratch cuBLASLt may use; split-K algorithms want some.
pub const WORKSPACE_BYTES: usize = 32 << 20;

fn lt_fail(call: &str, e: lt::CublasError) -> Error {
    Error::device("cuda", format!("cuBLASLt {call} failed: {e:?}"))
}

/// Why cuBLASLt cannot be used here, if it cannot.
pub fn unavailable() -> Option<String> {
    // SAFETY: only tries to open the library.
    if unsafe { lt_sys::is_culib_present() } {
        None
    } else {
        Some("libcublasLt not found: install CUDA's cuBLAS (the toolkit, or pip's nvidia-cublas-cu12) and put its lib folder on LD_LIBRARY_PATH".into())
    }
}

/// Everything one shape needs, made once.
struct Plan {
    desc: lt_sys::cublasLtMatmulDesc_t,
    a: lt_sys::cublasLtMatrixLayout_t,
    b: lt_sys::cublasLtMatrixLayout_t,
    d: lt_sys::cublasLtMatrixLayout_t,
    algo: lt_sys::cublasLtMatmulAlgo_t,
}

pub struct Gemm {
    gpu: Arc<Gpu>,
    handle: lt_sys::cublasLtHandle_t,
    workspace: CUdeviceptr,
    plans: HashMap<(usize, usize, usize, DType), Plan>,
}

// SAFETY: cuBLASLt handles and descriptors may be used from any thread, one at
// a time; `Gemm` lives behind a mutex.
unsafe impl Send for Gemm {}

fn data_type(d: DType) -> Result<lt_sys::cudaDataType> {
    match d {
        DType::F32 => Ok(lt_sys::cudaDataType::CUDA_R_32F),
        DType::BF16 => Ok(lt_sys::cudaDataType::CUDA_R_16BF),
        other => Err(Error::Unsupported {
            backend: "cuda".into(),
            what: format!("{other} matmul"),
        }),
    }
}

impl Gemm {
    pub fn new(gpu: &Arc<Gpu>) -> Result<Gemm> {
        if let Some(why) = unavailable() {
            return Err(Error::device("cuda", why));
        }
        gpu.bind()?;
        let handle = lt::create_handle().map_err(|e| lt_fail("create", e))?;
        let workspace = gpu.malloc(WORKSPACE_BYTES)?;
        Ok(Gemm {
            gpu: gpu.clone(),
            handle,
            workspace,
            plans: HashMap::new(),
        })
    }

    fn plan(&mut self, n: usize, t: usize, k: usize, dtype: DType) -> Result<&Plan> {
        let key = (n, t, k, dtype);
        if !self.plans.contains_key(&key) {
            let plan = self.make_plan(n, t, k, dtype)?;
            tracing::debug!(n, t, k, %dtype, "cuBLASLt plan");
            self.plans.insert(key, plan);
        }
        self.plans
            .get(&key)
            .ok_or_else(|| Error::invalid("cuBLASLt plan cache"))
    }

    fn make_plan(&self, n: usize, t: usize, k: usize, dtype: DType) -> Result<Plan> {
        let ab = data_type(dtype)?;
        let f32t = lt_sys::cudaDataType::CUDA_R_32F;
        let (n, t, k) = (n as u64, t as u64, k as u64);
        let desc = lt::create_matmul_desc(lt_sys::cublasComputeType_t::CUBLAS_COMPUTE_32F, f32t)
            .map_err(|e| lt_fail("MatmulDescCreate", e))?;
        // cublasOperation_t: CUBLAS_OP_T is 1.
        let transpose: i32 = 1;
        // SAFETY: a valid descriptor and a value of the attribute's type.
        unsafe {
            lt::set_matmul_desc_attribute(
                desc,
                lt_sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSA,
                &transpose as *const i32 as *const c_void,
                std::mem::size_of::<i32>(),
            )
        }
        .map_err(|e| lt_fail("MatmulDescSetAttribute", e))?;
        let layout = |ty, rows: u64, cols: u64, ld: u64| {
            lt::create_matrix_layout(ty, rows, cols, ld as i64)
                .map_err(|e| lt_fail("MatrixLayoutCreate", e))
        };
        let a = layout(ab, k, n, k)?;
        let b = layout(ab, k, t, k)?;
        let d = layout(f32t, n, t, n)?;
        let pref = lt::create_matmul_pref().map_err(|e| lt_fail("MatmulPreferenceCreate", e))?;
        let ws = WORKSPACE_BYTES as u64;
        // SAFETY: a valid preference and a u64 as the attribute wants.
        unsafe {
            lt::set_matmul_pref_attribute(
                pref,
                lt_sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                &ws as *const u64 as *const c_void,
                std::mem::size_of::<u64>(),
            )
        }
        .map_err(|e| lt_fail("MatmulPreferenceSetAttribute", e))?;
        // SAFETY: all descriptors were created above.
        let heuristic =
            unsafe { lt::get_matmul_algo_heuristic(self.handle, desc, a, b, d, d, pref) };
        // SAFETY: created above, not used after.
        let _ = unsafe { lt::destroy_matmul_pref(pref) };
        let heuristic = heuristic.map_err(|e| {
            lt_fail(
                &format!("found no algorithm for {dtype} [{t}x{k}] x [{n}x{k}]ᵀ (MatmulAlgoGetHeuristic)"),
                e,
            )
        })?;
        Ok(Plan {
            desc,
            a,
            b,
            d,
            algo: heuristic.algo,
        })
    }

    /// `out [t, n] (f32) = x [t, k] · w [n, k]ᵀ`, with `x` and `w` of `dtype`.
    pub fn matmul(
        &mut self,
        dtype: DType,
        (t, n, k): (usize, usize, usize),
        w: CUdeviceptr,
        x: CUdeviceptr,
        out: CUdeviceptr,
    ) -> Result<()> {
        let gpu = self.gpu.clone();
        gpu.bind()?;
        let (handle, workspace) = (self.handle, self.workspace);
        let plan = self.plan(n, t, k, dtype)?;
        let (alpha, beta) = (1f32, 0f32);
        // SAFETY: the caller checked the three buffers against the shape; the
        // plan was made for exactly this shape and these types; the workspace
        // has WORKSPACE_BYTES bytes.
        unsafe {
            lt::matmul(
                handle,
                plan.desc,
                &alpha as *const f32 as *const c_void,
                &beta as *const f32 as *const c_void,
                w as *const c_void,
                plan.a,
                x as *const c_void,
                plan.b,
                out as *const c_void,
                plan.d,
                out as *mut c_void,
                plan.d,
                &plan.algo,
                workspace as *mut c_void,
                WORKSPACE_BYTES,
                gpu.stream() as lt_sys::cudaStream_t,
            )
        }
        .map_err(|e| lt_fail("Matmul", e))
    }
}

impl Drop for Gemm {
    fn drop(&mut self) {
        let gpu = self.gpu.clone();
        let _ = gpu.bind();
        for (_, p) in self.plans.drain() {
            // SAFETY: made in make_plan, used by nothing else now.
            unsafe {
                let _ = lt::destroy_matrix_layout(p.a);
                let _ = lt::destroy_matrix_layout(p.b);
                let _ = lt::destroy_matrix_layout(p.d);
                let _ = lt::destroy_matmul_desc(p.desc);
            }
        }
        // SAFETY: as above.
        let _ = unsafe { lt::destroy_handle(self.handle) };
        gpu.free(self.workspace);
    }
}
