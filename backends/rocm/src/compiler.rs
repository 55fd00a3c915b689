//! Our kernels (`kernels/cuda/*.cu`, the same sources as the cuda backend,
//! shipped inside the binary) compiled by hipRTC for the device's gfx arch
//! at first use, and cached on disk by source hash + arch + hipRTC and HIP
//! versions, so later starts load code objects. hipRTC needs no GPU: CI
//! compiles every kernel for gfx90a, gfx940 and gfx1030 on a CPU machine.

use crate::hip;
use std::ffi::{c_char, CString};
use std::path::PathBuf;
use tessera_core::{Error, Result};
use tessera_gpu_kernels::sources::{cache_key, write_atomically};
pub use tessera_gpu_kernels::sources::{COMPAT_H, SOURCES};

fn rtc_fail(what: impl Into<String>) -> Error {
    Error::device("rocm", what)
}

/// hipRTC's version and the HIP runtime's, as one string for cache keys
/// and logs (`hipRTC 9.0, HIP 50221153`).
pub fn version() -> Result<String> {
    let rtc = hip::rtc().map_err(rtc_fail)?;
    let (mut major, mut minor) = (0, 0);
    // SAFETY: writes two ints.
    let rc = unsafe { (rtc.hiprtcVersion)(&mut major, &mut minor) };
    if rc != 0 {
        return Err(rtc_fail(format!(
            "hiprtcVersion failed: {}",
            hip::rtc_error(rtc, rc)
        )));
    }
    Ok(format!("hipRTC {major}.{minor}, HIP {}", runtime_version()))
}

/// The options every kernel is compiled with for `arch` (`gfx90a`).
fn options(arch: &str) -> Vec<String> {
    vec![
        format!("--offload-arch={arch}"),
        "-O3".into(),
        "-std=c++17".into(),
    ]
}

/// The HIP runtime's version number (`50221153` for 5.2.21153), 0 if unknown.
fn runtime_version() -> i32 {
    let mut v = 0;
    if let Ok(rt) = hip::runtime() {
        // SAFETY: writes one int; needs no GPU.
        unsafe { (rt.hipRuntimeGetVersion)(&mut v) };
    }
    v
}

/// Why this hipRTC cannot compile for `arch`, for the targets newer than
/// the HIP that ships them: Debian's HIP 5.2 hipRTC crashes the process
/// (inside hiprtcCompileProgram) when asked for gfx940, so it is never asked.
fn unsupported_arch(arch: &str, version: i32) -> Option<String> {
    let newer = ["gfx94", "gfx95", "gfx11", "gfx12"]
        .iter()
        .any(|p| arch.starts_with(p));
    (newer && version > 0 && version < 50_500_000).then(|| {
        format!(
            "the hipRTC of HIP {}.{} cannot compile for {arch}: install ROCm 5.5 or newer (ROCm 6 for gfx942 and gfx11/gfx12)",
            version / 10_000_000,
            (version / 100_000) % 100
        )
    })
}

/// Compiles one kernel file to a code object (an AMDGPU ELF) for `arch`.
pub fn compile(name: &str, source: &str, arch: &str) -> Result<Vec<u8>> {
    let rtc = hip::rtc().map_err(rtc_fail)?;
    if let Some(why) = unsupported_arch(arch, runtime_version()) {
        return Err(Error::Unsupported {
            backend: "rocm".into(),
            what: why,
        });
    }
    let bad = |what: &str| Error::invalid(format!("kernel {name}: {what} contains a NUL byte"));
    let src = CString::new(source).map_err(|_| bad("source"))?;
    let cname = CString::new(name).map_err(|_| bad("name"))?;
    let header = CString::new(COMPAT_H).map_err(|_| bad("compat.h"))?;
    let headers = [header.as_ptr()];
    let include_names = [c"compat.h".as_ptr()];
    let opts: Vec<CString> = options(arch)
        .into_iter()
        .map(CString::new)
        .collect::<std::result::Result<_, _>>()
        .map_err(|_| bad("arch"))?;
    let opt_ptrs: Vec<*const c_char> = opts.iter().map(|o| o.as_ptr()).collect();
    let mut prog: hip::Program = std::ptr::null_mut();
    // SAFETY: every pointer is a NUL-terminated string alive for the call.
    let rc = unsafe {
        (rtc.hiprtcCreateProgram)(
            &mut prog,
            src.as_ptr(),
            cname.as_ptr(),
            1,
            headers.as_ptr(),
            include_names.as_ptr(),
        )
    };
    if rc != 0 {
        return Err(rtc_fail(format!(
            "hiprtcCreateProgram({name}): {}",
            hip::rtc_error(rtc, rc)
        )));
    }
    // SAFETY: a valid program and options alive for the call.
    let rc = unsafe { (rtc.hiprtcCompileProgram)(prog, opt_ptrs.len() as i32, opt_ptrs.as_ptr()) };
    let out = if rc != 0 {
        Err(rtc_fail(format!(
            "hipRTC could not compile {name} for {arch} ({}):\n{}",
            hip::rtc_error(rtc, rc),
            log(rtc, prog)
        )))
    } else {
        code(rtc, prog).map_err(|e| rtc_fail(format!("{name}: {e}")))
    };
    // SAFETY: destroyed once, not used after.
    unsafe { (rtc.hiprtcDestroyProgram)(&mut prog) };
    out
}

/// The program's compile log (warnings and errors).
fn log(rtc: &hip::Rtc, prog: hip::Program) -> String {
    let mut size = 0usize;
    // SAFETY: a valid program; writes one size.
    if unsafe { (rtc.hiprtcGetProgramLogSize)(prog, &mut size) } != 0 || size == 0 {
        return String::new();
    }
    let mut buf = vec![0u8; size + 1];
    // SAFETY: `buf` holds the size hipRTC asked for, plus one.
    if unsafe { (rtc.hiprtcGetProgramLog)(prog, buf.as_mut_ptr() as *mut c_char) } != 0 {
        return String::new();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// The compiled code object.
fn code(rtc: &hip::Rtc, prog: hip::Program) -> std::result::Result<Vec<u8>, String> {
    let mut size = 0usize;
    // SAFETY: a compiled program; writes one size.
    let rc = unsafe { (rtc.hiprtcGetCodeSize)(prog, &mut size) };
    if rc != 0 || size == 0 {
        return Err(format!(
            "hiprtcGetCodeSize: {} (size {size})",
            hip::rtc_error(rtc, rc)
        ));
    }
    let mut buf = vec![0u8; size];
    // SAFETY: `buf` holds `size` bytes.
    let rc = unsafe { (rtc.hiprtcGetCode)(prog, buf.as_mut_ptr() as *mut c_char) };
    if rc != 0 {
        return Err(format!("hiprtcGetCode: {}", hip::rtc_error(rtc, rc)));
    }
    Ok(buf)
}

fn cache_dir() -> PathBuf {
    tessera_core::model::cache_dir().join("rocm-kernels")
}

/// The code object of every kernel file for `arch`, from the disk cache or
/// compiled now (and cached; a cache that cannot be written only costs a
/// recompile). A cached file that does not parse as a code object is
/// compiled again.
pub fn code_objects_for(arch: &str) -> Result<Vec<(&'static str, Vec<u8>)>> {
    let version = version()?;
    let dir = cache_dir();
    let mut out = Vec::with_capacity(SOURCES.len());
    for &(name, source) in SOURCES {
        let opts = options(arch).join(" ");
        let key = cache_key(&[name, source, COMPAT_H, arch, &version, &opts]);
        let path = dir.join(format!(
            "{}-{arch}-{key:016x}.co",
            name.trim_end_matches(".cu")
        ));
        if let Ok(co) = std::fs::read(&path) {
            if crate::code_object::kernels(&co).is_ok() {
                out.push((name, co));
                continue;
            }
        }
        let started = std::time::Instant::now();
        let co = compile(name, source, arch)?;
        tracing::info!(
            "compiled kernels {name} for {arch} with {version} in {:.0} ms",
            started.elapsed().as_secs_f64() * 1e3
        );
        if let Err(e) = write_atomically(&path, &co) {
            tracing::warn!("could not cache {name} in {}: {e}", dir.display());
        }
        out.push((name, co));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::unsupported_arch;

    #[test]
    fn targets_newer_than_the_hip_are_refused_before_hiprtc_sees_them() {
        let why = unsupported_arch("gfx940", 50_221_153).expect("refused");
        assert!(why.contains("HIP 5.2") && why.contains("gfx940"), "{why}");
        assert!(unsupported_arch("gfx1100", 50_221_153).is_some());
        assert!(unsupported_arch("gfx90a", 50_221_153).is_none());
        assert!(unsupported_arch("gfx1030", 50_221_153).is_none());
        assert!(unsupported_arch("gfx942", 60_200_000).is_none());
    }
}
