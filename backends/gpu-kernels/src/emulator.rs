//! The kernels on the CPU: the real kernel sources (`kernels/cuda/*.cu`)
//! compiled by g++ against a fiber emulation of the GPU's threads, barriers
//! and warp shuffles (`kernels/cuda/emulate`), launched by the real host code
//! of [`GpuKernels`] (shape checks, argument lists, decode/prefill choice,
//! partitions, scratch). The warp width is a parameter: 32 lanes as on
//! NVIDIA, 64 as on AMD's gfx9 wavefronts, so both paths of every kernel
//! run in CI. The backends' tests check the result with the conformance
//! suite against the f64 reference.
//!
//! What this cannot check is left to `scripts/gpu-check` on a GPU: the
//! driver calls, the vendor GEMM (a plain f64 matmul stands in for it),
//! graphs, and anything that depends on real parallel execution.
//!
//! Test support: it builds a library with g++ and panics-free reports
//! failures as errors, but it is meant for tests, not for serving.

use crate::kernels::{kernel_names, GpuKernels};
use crate::launch::{Args, Config};
use crate::runtime::Runtime;
use crate::sources::SOURCES;
use std::cell::UnsafeCell;
use std::collections::HashMap;
use std::ffi::{c_char, c_int, c_void};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use tessera_core::hal::{
    interpreter, Buffer, Capabilities, Device, DeviceMemory, Executable, Graph, Kernels,
    MemoryInfo, WeightMap,
};
use tessera_core::{DType, Error, Result};

fn kernels_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../kernels/cuda")
}

fn emu_error(what: impl Into<String>) -> Error {
    Error::device("emulator", what)
}

/// Builds the emulation library for `warp`-lane warps: every kernel file in
/// one translation unit with a trampoline per launched kernel, plus the
/// fiber runtime.
fn build_library(warp: u32) -> Result<PathBuf> {
    let src = kernels_dir();
    // One folder per build: tests load emulators concurrently.
    static BUILDS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = BUILDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let out = std::env::temp_dir().join(format!("tessera-emu-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&out)
        .map_err(|e| emu_error(format!("emulator build dir {}: {e}", out.display())))?;
    let mut unity = String::new();
    for (file, _) in SOURCES {
        unity.push_str(&format!("#include \"{file}\"\n"));
    }
    for name in kernel_names() {
        unity.push_str(&format!("TSR_EMU_TRAMPOLINE({name})\n"));
    }
    let unity_path = out.join(format!("kernels_unity_w{warp}.cpp"));
    std::fs::write(&unity_path, unity)
        .map_err(|e| emu_error(format!("write {}: {e}", unity_path.display())))?;
    let lib = out.join(format!("libtsr_emu_w{warp}.so"));
    let status = Command::new("g++")
        .args([
            "-std=c++17",
            "-O2",
            "-g0",
            "-fPIC",
            "-shared",
            "-DTSR_EMULATE",
            &format!("-DTSR_EMU_WARP={warp}u"),
            // `__shared__` is `static` here, and g++ makes the statics of
            // template functions STB_GNU_UNIQUE, which the dynamic linker
            // merges across every library of the process: two emulators
            // running at once (tests in threads) would share them.
            "-fno-gnu-unique",
            "-w",
        ])
        .arg("-include")
        .arg(src.join("emulate/emulate.h"))
        .arg("-I")
        .arg(&src)
        .arg(&unity_path)
        .arg(src.join("emulate/runtime.cpp"))
        .arg("-o")
        .arg(&lib)
        .status()
        .map_err(|e| {
            emu_error(format!(
                "run g++ (the emulation needs a C++17 compiler): {e}"
            ))
        })?;
    if !status.success() {
        return Err(emu_error("g++ could not build the kernel emulation"));
    }
    Ok(lib)
}

type Entry = unsafe extern "C" fn(*mut *mut c_void);
type Launch = unsafe extern "C" fn(
    Entry,
    u32,
    u32,
    u32,
    u32,
    u32,
    *mut *mut c_void,
    *mut c_char,
    u64,
) -> c_int;

/// Host memory standing in for device memory, 16-byte aligned like
/// `cuMemAlloc`'s; kernels write it through raw addresses.
struct HostMemory {
    data: UnsafeCell<Vec<u128>>,
    len: usize,
}

// SAFETY: the suite runs one op at a time; kernels and copies reach the
// bytes only through addresses handed out for that op.
unsafe impl Sync for HostMemory {}
unsafe impl Send for HostMemory {}

impl DeviceMemory for HostMemory {
    fn len(&self) -> usize {
        self.len
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// The emulated kernels as a [`Runtime`]: host memory, launches through the
/// fiber runtime, an f64 matmul.
pub struct Emulator {
    name: String,
    _lib: libloading::Library,
    launch: Launch,
    entries: HashMap<String, Entry>,
}

impl Emulator {
    /// Builds and loads the kernels for `warp`-lane warps (32 or 64);
    /// `name` is the backend name errors carry.
    pub fn load(name: &str, warp: u32) -> Result<Emulator> {
        let path = build_library(warp)?;
        // SAFETY: our own library, built just now; its initialisers do nothing.
        let lib = unsafe { libloading::Library::new(&path) }
            .map_err(|e| emu_error(format!("load {}: {e}", path.display())))?;
        if let Some(dir) = path.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
        let missing = |sym: &str, e: libloading::Error| emu_error(format!("{sym}: {e}"));
        // SAFETY: symbols of the signatures runtime.cpp and emulate.h define.
        let launch = *unsafe { lib.get::<Launch>(b"tsr_emu_launch\0") }
            .map_err(|e| missing("tsr_emu_launch", e))?;
        let mut entries = HashMap::new();
        for n in kernel_names() {
            let sym = format!("tsr_emu_entry_{n}\0");
            // SAFETY: as above.
            let f = *unsafe { lib.get::<Entry>(sym.as_bytes()) }.map_err(|e| missing(&sym, e))?;
            entries.insert(n, f);
        }
        Ok(Emulator {
            name: name.into(),
            _lib: lib,
            launch,
            entries,
        })
    }
}

fn host_address(buffer: &Buffer, offset: usize, bytes: usize) -> Result<u64> {
    let mem = buffer
        .downcast::<HostMemory>()
        .ok_or_else(|| Error::invalid("not an emulated buffer"))?;
    if offset.checked_add(bytes).is_none_or(|e| e > mem.len) {
        return Err(Error::invalid(format!(
            "{bytes} bytes at {offset} overflow a buffer of {}",
            mem.len
        )));
    }
    // SAFETY: only the address is taken.
    Ok(unsafe { (*mem.data.get()).as_mut_ptr() } as u64 + offset as u64)
}

fn host_alloc(bytes: usize) -> Buffer {
    Buffer::new(Arc::new(HostMemory {
        data: UnsafeCell::new(vec![0u128; bytes.div_ceil(16).max(1)]),
        len: bytes,
    }))
}

fn load_f32(p: u64, i: usize, dtype: DType) -> f64 {
    // SAFETY: callers pass addresses checked against their buffers.
    unsafe {
        match dtype {
            DType::BF16 => {
                let bits = *((p as *const u16).add(i));
                f64::from(f32::from_bits(u32::from(bits) << 16))
            }
            _ => f64::from(*((p as *const f32).add(i))),
        }
    }
}

impl Runtime for Emulator {
    fn name(&self) -> &str {
        &self.name
    }

    fn launch(&self, name: &str, cfg: Config, mut args: Args) -> Result<()> {
        let entry = *self
            .entries
            .get(name)
            .ok_or_else(|| Error::invalid(format!("no kernel {name}")))?;
        let mut params = args.params();
        let mut err = vec![0 as c_char; 1024];
        // SAFETY: the trampoline reads one value per parameter from `params`,
        // which point into `args` (alive for the call).
        let rc = unsafe {
            (self.launch)(
                entry,
                cfg.grid.0,
                cfg.grid.1,
                cfg.grid.2,
                cfg.block,
                cfg.shared,
                params.as_mut_ptr(),
                err.as_mut_ptr(),
                err.len() as u64,
            )
        };
        if rc != 0 {
            let bytes: Vec<u8> = err
                .iter()
                .take_while(|&&c| c != 0)
                .map(|&c| c as u8)
                .collect();
            return Err(Error::device(
                &self.name,
                format!("{name}: {}", String::from_utf8_lossy(&bytes)),
            ));
        }
        Ok(())
    }

    fn alloc(&self, bytes: usize) -> Result<Buffer> {
        Ok(host_alloc(bytes))
    }

    fn address(&self, buffer: &Buffer, offset: usize, bytes: usize) -> Result<u64> {
        host_address(buffer, offset, bytes)
    }

    fn upload(&self, dst: u64, src: &[u8]) -> Result<()> {
        // SAFETY: `dst` was checked by `address` for at least `src.len()` bytes.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), dst as *mut u8, src.len()) };
        Ok(())
    }

    fn memset_zero(&self, dst: u64, bytes: usize) -> Result<()> {
        // SAFETY: as above.
        unsafe { std::ptr::write_bytes(dst as *mut u8, 0, bytes) };
        Ok(())
    }

    /// What cuBLASLt computes: bf16 inputs (x already rounded by `to_bf16`),
    /// f32 out; summed here in f64.
    fn matmul(
        &self,
        dtype: DType,
        (t, n, k): (usize, usize, usize),
        w: u64,
        x: u64,
        out: u64,
    ) -> Result<()> {
        for r in 0..t {
            for c in 0..n {
                let sum: f64 = (0..k)
                    .map(|i| load_f32(x, r * k + i, dtype) * load_f32(w, c * k + i, dtype))
                    .sum();
                // SAFETY: `out` holds t x n f32 (checked by the caller).
                unsafe { *((out as *mut f32).add(r * n + c)) = sum as f32 };
            }
        }
        Ok(())
    }
}

/// A GPU backend's device logic over emulated kernels and host memory.
struct EmulatedDevice {
    kernels: Arc<GpuKernels<Emulator>>,
    capabilities: Capabilities,
}

impl Device for EmulatedDevice {
    fn name(&self) -> String {
        self.kernels.runtime().name.clone()
    }
    fn capabilities(&self) -> Capabilities {
        self.capabilities.clone()
    }
    fn memory_info(&self) -> Result<MemoryInfo> {
        Ok(MemoryInfo {
            free_bytes: 4 << 30,
            total_bytes: 8 << 30,
        })
    }
    fn alloc(&self, bytes: usize) -> Result<Buffer> {
        Ok(host_alloc(bytes))
    }
    fn upload(&self, dst: &Buffer, offset: usize, src: &[u8]) -> Result<()> {
        let at = host_address(dst, offset, src.len())?;
        self.kernels.runtime().upload(at, src)
    }
    fn download(&self, src: &Buffer, offset: usize, dst: &mut [u8]) -> Result<()> {
        let at = host_address(src, offset, dst.len())?;
        // SAFETY: checked just above.
        unsafe { std::ptr::copy_nonoverlapping(at as *const u8, dst.as_mut_ptr(), dst.len()) };
        Ok(())
    }
    fn compile(&self, graph: &Graph, weights: &WeightMap) -> Result<Box<dyn Executable>> {
        let kernels: Arc<dyn Kernels> = self.kernels.clone();
        interpreter::compile(kernels, graph, weights)
    }
    fn kernels(&self) -> Option<Arc<dyn Kernels>> {
        Some(self.kernels.clone())
    }
}

/// A device named `name` that runs the kernels with `warp`-lane warps and
/// states `capabilities` (the backend's own, graphs off).
pub fn device(name: &str, warp: u32, capabilities: Capabilities) -> Result<Arc<dyn Device>> {
    Ok(Arc::new(EmulatedDevice {
        kernels: Arc::new(GpuKernels::new(Emulator::load(name, warp)?)),
        capabilities,
    }))
}
