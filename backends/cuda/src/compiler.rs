//! Our kernels (`kernels/cuda/*.cu`, shipped inside the binary) compiled by
//! NVRTC for the device's architecture at first use, and cached on disk by
//! source hash + architecture + NVRTC version, so later starts load PTX.

use cudarc::nvrtc::{result as nvrtc, sys as nvrtc_sys};
use std::ffi::{CStr, CString};
use std::path::PathBuf;
use tessera_core::{Error, Result};

use tessera_gpu_kernels::sources::{cache_key, write_atomically};
pub use tessera_gpu_kernels::sources::{COMPAT_H, SOURCES};

/// Why NVRTC cannot be used here, if it cannot.
pub fn unavailable() -> Option<String> {
    // SAFETY: only tries to open the library.
    if unsafe { nvrtc_sys::is_culib_present() } {
        None
    } else {
        Some(
            "libnvrtc not found: install CUDA's NVRTC (the toolkit, or pip's nvidia-cuda-nvrtc-cu12) and put its lib folder on LD_LIBRARY_PATH"
                .into(),
        )
    }
}

/// NVRTC's version, as (major, minor).
pub fn version() -> Result<(i32, i32)> {
    if let Some(why) = unavailable() {
        return Err(Error::device("cuda", why));
    }
    let (mut major, mut minor) = (0, 0);
    // SAFETY: writes two ints.
    unsafe { nvrtc_sys::nvrtcVersion(&mut major, &mut minor) }
        .result()
        .map_err(|e| Error::device("cuda", format!("nvrtcVersion failed: {e:?}")))?;
    Ok((major, minor))
}

/// The options every kernel is compiled with for `arch` (`sm_90`).
fn options(arch: &str) -> Vec<String> {
    let compute = arch.replacen("sm_", "compute_", 1);
    vec![
        format!("--gpu-architecture={compute}"),
        "--std=c++17".into(),
        "-default-device".into(),
    ]
}

/// Compiles one kernel file to PTX for `arch` (`sm_80`, `sm_90`).
pub fn compile(name: &str, source: &str, arch: &str) -> Result<String> {
    if let Some(why) = unavailable() {
        return Err(Error::device("cuda", why));
    }
    let bad = |what: &str| Error::invalid(format!("kernel {name}: {what} contains a NUL byte"));
    let src = CString::new(source).map_err(|_| bad("source"))?;
    let cname = CString::new(name).map_err(|_| bad("name"))?;
    let header = CString::new(COMPAT_H).map_err(|_| bad("compat.h"))?;
    let header_name = c"compat.h";
    let headers = [header.as_ptr()];
    let include_names = [header_name.as_ptr()];
    let mut prog = std::mem::MaybeUninit::uninit();
    // SAFETY: every pointer is a NUL-terminated string alive for the call.
    unsafe {
        nvrtc_sys::nvrtcCreateProgram(
            prog.as_mut_ptr(),
            src.as_ptr(),
            cname.as_ptr(),
            1,
            headers.as_ptr(),
            include_names.as_ptr(),
        )
    }
    .result()
    .map_err(|e| Error::device("cuda", format!("nvrtcCreateProgram({name}): {e:?}")))?;
    // SAFETY: created just above.
    let prog = unsafe { prog.assume_init() };
    // SAFETY: a valid program, destroyed once below on every path.
    let compiled = unsafe { nvrtc::compile_program(prog, &options(arch)) };
    let log = || {
        // SAFETY: a valid program.
        unsafe { nvrtc::get_program_log(prog) }
            .ok()
            .map(|v| c_chars_to_string(&v))
            .unwrap_or_default()
    };
    let out = match compiled {
        Err(e) => Err(Error::device(
            "cuda",
            format!(
                "NVRTC could not compile {name} for {arch} ({e:?}):\n{}",
                log()
            ),
        )),
        // SAFETY: a compiled program.
        Ok(()) => unsafe { nvrtc::get_ptx(prog) }
            .map(|v| c_chars_to_string(&v))
            .map_err(|e| Error::device("cuda", format!("nvrtcGetPTX({name}): {e:?}"))),
    };
    // SAFETY: not used after this.
    let _ = unsafe { nvrtc::destroy_program(prog) };
    out
}

fn c_chars_to_string(v: &[std::ffi::c_char]) -> String {
    let bytes: Vec<u8> = v.iter().map(|&c| c as u8).collect();
    CStr::from_bytes_until_nul(&bytes)
        .map(|c| c.to_string_lossy().into_owned())
        .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).into_owned())
}

fn cache_dir() -> PathBuf {
    tessera_core::model::cache_dir().join("cuda-kernels")
}

/// PTX of every kernel file for `arch`, from the disk cache or compiled now
/// (and cached; a cache that cannot be written only costs a recompile).
pub fn ptx_for(arch: &str) -> Result<Vec<(&'static str, String)>> {
    let (major, minor) = version()?;
    let nvrtc = format!("{major}.{minor}");
    let dir = cache_dir();
    let mut out = Vec::with_capacity(SOURCES.len());
    for &(name, source) in SOURCES {
        let opts = options(arch).join(" ");
        let key = cache_key(&[name, source, COMPAT_H, arch, &nvrtc, &opts]);
        let path = dir.join(format!(
            "{}-{arch}-nvrtc{nvrtc}-{key:016x}.ptx",
            name.trim_end_matches(".cu")
        ));
        if let Ok(ptx) = std::fs::read_to_string(&path) {
            if ptx.contains(".version") {
                out.push((name, ptx));
                continue;
            }
        }
        let started = std::time::Instant::now();
        let ptx = compile(name, source, arch)?;
        tracing::info!(
            "compiled kernels {name} for {arch} with NVRTC {nvrtc} in {:.0} ms",
            started.elapsed().as_secs_f64() * 1e3
        );
        if let Err(e) = write_atomically(&path, ptx.as_bytes()) {
            tracing::warn!("could not cache {name} in {}: {e}", dir.display());
        }
        out.push((name, ptx));
    }
    Ok(out)
}
