//! Where the PJRT plugin comes from: `TESSERA_PJRT_PLUGIN` wins (any PJRT
//! plugin: the XLA CPU one in CI, a GPU one); otherwise libtpu, and only on a
//! host with TPU hardware, because libtpu off a TPU host polls a cloud
//! metadata server for minutes. Looking never loads anything.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

pub const ENV: &str = "TESSERA_PJRT_PLUGIN";

/// Device nodes a TPU host has (TPU v4+ as accel, older through VFIO).
fn has_tpu_hardware(dev: &Path) -> bool {
    let Ok(entries) = std::fs::read_dir(dev) else {
        return false;
    };
    entries.flatten().any(|e| {
        let name = e.file_name();
        let name = name.to_string_lossy();
        name.starts_with("accel")
            || (name == "vfio"
                && dev
                    .join("vfio")
                    .read_dir()
                    .is_ok_and(|mut d| d.any(|x| x.is_ok_and(|x| x.file_name() != "vfio"))))
    })
}

/// libtpu.so in the usual places: the library directories, the system
/// Python's site-packages, then wherever `python3` has the `libtpu` package.
fn find_libtpu() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("LD_LIBRARY_PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.extend(["/usr/lib", "/usr/local/lib", "/usr/lib/x86_64-linux-gnu"].map(PathBuf::from));
    let site: Vec<PathBuf> = ["/usr/lib", "/usr/local/lib"]
        .iter()
        .flat_map(|root| std::fs::read_dir(root).into_iter().flatten().flatten())
        .filter(|e| e.file_name().to_string_lossy().starts_with("python3"))
        .flat_map(|e| ["site-packages", "dist-packages"].map(|s| e.path().join(s).join("libtpu")))
        .collect();
    dirs.extend(site);
    dirs.into_iter()
        .map(|d| d.join("libtpu.so"))
        .find(|p| p.is_file())
        .or_else(libtpu_from_python)
}

/// Where the `python3` on PATH (a virtualenv, pyenv) has the `libtpu`
/// package. Importing it only locates the library; it does not initialise it.
fn libtpu_from_python() -> Option<PathBuf> {
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import os, libtpu; print(os.path.dirname(libtpu.__file__))",
        ])
        .stderr(std::process::Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())?;
    let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    Some(dir.join("libtpu.so")).filter(|p| p.is_file())
}

/// The plugin to load, or why there is none. `env` is `TESSERA_PJRT_PLUGIN`,
/// `dev` is `/dev` (parameters so tests need not touch the process's own).
pub fn locate(env: Option<OsString>, dev: &Path) -> Result<PathBuf, String> {
    if let Some(p) = env.filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(format!("{ENV}={} is not a file", p.display()))
        };
    }
    if !has_tpu_hardware(dev) {
        return Err(format!(
            "no TPU on this host (no {}/accel* or VFIO device); set {ENV} to a PJRT plugin to use another",
            dev.display()
        ));
    }
    find_libtpu().ok_or_else(|| {
        "a TPU is present but libtpu.so was not found; `pip install libtpu` or set TESSERA_PJRT_PLUGIN"
            .to_string()
    })
}

/// `locate` for this process.
pub fn locate_here() -> Result<PathBuf, String> {
    locate(std::env::var_os(ENV), Path::new("/dev"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_variable_wins_and_must_name_a_file() {
        let me = std::env::current_exe().expect("exe");
        assert_eq!(
            locate(Some(me.clone().into()), Path::new("/nonexistent")),
            Ok(me)
        );
        let err = locate(Some("/no/such/plugin.so".into()), Path::new("/dev")).unwrap_err();
        assert!(err.contains("is not a file"), "{err}");
    }

    #[test]
    fn without_tpu_hardware_libtpu_is_never_looked_for() {
        let empty = std::env::temp_dir().join(format!("tessera-dev-{}", std::process::id()));
        std::fs::create_dir_all(&empty).expect("dir");
        let err = locate(None, &empty).unwrap_err();
        assert!(err.contains("no TPU on this host"), "{err}");
        std::fs::create_dir_all(empty.join("accel0")).expect("fake accel");
        let err = locate(None, &empty).err().unwrap_or_default();
        // With (fake) hardware it goes looking; here it finds nothing or a real libtpu.
        assert!(!err.contains("no TPU on this host"), "{err}");
        std::fs::remove_dir_all(&empty).ok();
    }
}
