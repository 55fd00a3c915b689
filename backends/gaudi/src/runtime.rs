//! The gaudi implementation of the kernels' runtime: our OpenCL C kernels
//! through the device's `Api`, and our GEMM (`kernels/opencl/matmul.cl`)
//! where the cuda and rocm backends call a vendor library: the sub-group
//! kernels where the device has them, else the tiled one.

use crate::gpu::{address, Gaudi};
use std::sync::{Arc, OnceLock};
use tessera_core::hal::Buffer;
use tessera_core::{DType, Error, Result};
use tessera_gpu_kernels::device::StreamGpu;
use tessera_gpu_kernels::launch::{Args, Config};
use tessera_gpu_kernels::runtime::{gemv_gpu_config, Runtime};

/// The tiled GEMM kernel's (`matmul_{f32,bf16}`) output tile (rows and
/// columns) and work-group size: its ABI, fixed in matmul.cl.
const MATMUL_TILE: usize = 64;
const MATMUL_BLOCK: u32 = 256;
/// The sub-group GEMM kernel's (`matmul_{f32,bf16}_sg`) output tile per
/// work-group, rows (t) and columns (n), and work-group size (four
/// sub-groups of 16): its ABI, fixed in matmul.cl.
const MATMUL_SG_TILE_T: usize = 32;
const MATMUL_SG_TILE_N: usize = 32;
const MATMUL_SG_BLOCK: u32 = 64;
/// Rows per work-group of gemv.cl on a CPU (one row per work-item).
const GEMV_CPU_ROWS: usize = 16;

/// Which GEMM kernel `matmul` launches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gemm {
    /// `matmul_{f32,bf16}`: local-memory tiles, any device.
    Tiled,
    /// `matmul_{f32,bf16}_sg`: sub-group broadcasts, where the program has them.
    Subgroup,
}

/// The sub-group GEMM kernels; the program has them only where the device
/// has sub-groups of 16.
const SUBGROUP_KERNELS: [&str; 2] = ["matmul_f32_sg", "matmul_bf16_sg"];

pub struct GaudiRuntime {
    pub gpu: Arc<Gaudi>,
    /// The GEMM kernel, chosen at the first matmul (or why none can be).
    gemm: OnceLock<std::result::Result<Gemm, String>>,
}

impl GaudiRuntime {
    pub fn new(gpu: Arc<Gaudi>) -> GaudiRuntime {
        GaudiRuntime {
            gpu,
            gemm: OnceLock::new(),
        }
    }

    /// The GEMM kernel for this device: `TESSERA_GAUDI_GEMM=tiled|subgroup|auto`
    /// (unset: auto, the sub-group kernels where the program has both).
    /// Decided once.
    pub fn gemm(&self) -> Result<Gemm> {
        self.gemm
            .get_or_init(|| {
                let choice = std::env::var("TESSERA_GAUDI_GEMM").ok();
                let gemm = choose_gemm(choice.as_deref(), || {
                    SUBGROUP_KERNELS.iter().all(|k| self.gpu.api.has_kernel(k))
                })
                .map_err(|e| format!("{e} ({})", self.gpu.api.device_description()));
                match &gemm {
                    Ok(g) => tracing::info!("gaudi:{} GEMM: {g:?}", self.gpu.ordinal),
                    Err(e) => tracing::warn!("{e}"),
                }
                gemm
            })
            .clone()
            .map_err(|e| Error::device("gaudi", e))
    }
}

/// `TESSERA_GAUDI_GEMM`'s value (`None`: unset) as a choice; `has_subgroup`
/// says whether the program has the sub-group kernels.
pub fn choose_gemm(
    value: Option<&str>,
    has_subgroup: impl FnOnce() -> bool,
) -> std::result::Result<Gemm, String> {
    match value {
        None | Some("") | Some("auto") => Ok(if has_subgroup() {
            Gemm::Subgroup
        } else {
            Gemm::Tiled
        }),
        Some("tiled") => Ok(Gemm::Tiled),
        Some("subgroup") if has_subgroup() => Ok(Gemm::Subgroup),
        Some("subgroup") => Err(
            "TESSERA_GAUDI_GEMM=subgroup, but this device's program has no sub-group GEMM kernels (matmul_*_sg need sub-groups of 16 and cl_intel_required_subgroup_size): use tiled or auto".into(),
        ),
        Some(other) => Err(format!(
            "TESSERA_GAUDI_GEMM={other} is not a GEMM kernel: use auto (the default), tiled or subgroup"
        )),
    }
}

impl Runtime for GaudiRuntime {
    fn name(&self) -> &str {
        "gaudi"
    }
    fn launch(&self, name: &str, cfg: Config, args: Args) -> Result<()> {
        self.gpu.api.launch(name, &cfg, &args)
    }
    fn alloc(&self, bytes: usize) -> Result<Buffer> {
        StreamGpu::alloc(&self.gpu, bytes)
    }
    fn address(&self, buffer: &Buffer, offset: usize, bytes: usize) -> Result<u64> {
        address(buffer, offset, bytes)
    }
    fn upload(&self, dst: u64, src: &[u8]) -> Result<()> {
        self.gpu.api.upload(dst, src)
    }
    fn memset_zero(&self, dst: u64, bytes: usize) -> Result<()> {
        self.gpu.api.fill_zero(dst, bytes)
    }
    fn gemv_config(&self, n: usize) -> Result<Config> {
        if self.gpu.api.is_cpu() {
            Config::new((n.div_ceil(GEMV_CPU_ROWS), 1, 1), GEMV_CPU_ROWS as u32, 0)
        } else {
            gemv_gpu_config(n)
        }
    }
    fn matmul(
        &self,
        dtype: DType,
        (t, n, k): (usize, usize, usize),
        w: u64,
        x: u64,
        out: u64,
    ) -> Result<()> {
        let name = match dtype {
            DType::F32 => "matmul_f32",
            DType::BF16 => "matmul_bf16",
            other => {
                return Err(Error::Unsupported {
                    backend: "gaudi".into(),
                    what: format!("{other} matmul"),
                })
            }
        };
        let args = Args::new().ptr(w).ptr(x).ptr(out).int(t)?.int(n)?.int(k)?;
        match self.gemm()? {
            Gemm::Tiled => {
                let grid = (n.div_ceil(MATMUL_TILE), t.div_ceil(MATMUL_TILE), 1);
                self.launch(name, Config::new(grid, MATMUL_BLOCK, 0)?, args)
            }
            Gemm::Subgroup => {
                let grid = (
                    n.div_ceil(MATMUL_SG_TILE_N),
                    t.div_ceil(MATMUL_SG_TILE_T),
                    1,
                );
                let cfg = Config::new(grid, MATMUL_SG_BLOCK, 0)?;
                self.launch(&format!("{name}_sg"), cfg, args)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gemm_choice() {
        assert_eq!(choose_gemm(None, || true), Ok(Gemm::Subgroup));
        assert_eq!(choose_gemm(None, || false), Ok(Gemm::Tiled));
        assert_eq!(choose_gemm(Some("auto"), || true), Ok(Gemm::Subgroup));
        assert_eq!(choose_gemm(Some(""), || false), Ok(Gemm::Tiled));
        assert_eq!(choose_gemm(Some("tiled"), || true), Ok(Gemm::Tiled));
        assert_eq!(choose_gemm(Some("subgroup"), || true), Ok(Gemm::Subgroup));
        let e = choose_gemm(Some("subgroup"), || false).unwrap_err();
        assert!(e.contains("no sub-group GEMM kernels"), "{e}");
        let e = choose_gemm(Some("fast"), || true).unwrap_err();
        assert!(
            e.contains("TESSERA_GAUDI_GEMM=fast") && e.contains("tiled"),
            "{e}"
        );
    }
}
