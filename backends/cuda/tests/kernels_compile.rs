//! CI without a GPU: every kernel file compiles with NVRTC (from NVIDIA's
//! PyPI wheels, see scripts/fetch-cuda-tools.sh) for sm_80 and sm_90, ptxas
//! finds no register spills in any kernel, and each kernel's parameters are
//! the ones the host launches it with (a mismatch would corrupt memory on a
//! GPU, silently).

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use tessera_cuda::compiler::{compile, SOURCES};
use tessera_cuda::ptx_signatures;
use tessera_gpu_kernels::kernels::{host_abi, kernel_names};

const ARCHS: &[&str] = &["sm_80", "sm_90"];

/// The cached NVRTC + ptxas wheels, with NVRTC loaded so that cudarc's
/// `dlopen("libnvrtc.so.12")` finds it (the loader matches loaded sonames).
fn tools() -> &'static PathBuf {
    static TOOLS: OnceLock<(PathBuf, libloading::Library)> = OnceLock::new();
    &TOOLS
        .get_or_init(|| {
            let script = concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../scripts/fetch-cuda-tools.sh"
            );
            let out = Command::new("bash")
                .arg(script)
                .output()
                .expect("run scripts/fetch-cuda-tools.sh");
            assert!(
                out.status.success(),
                "fetch-cuda-tools.sh failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
            let lib = dir.join("nvidia/cuda_nvrtc/lib/libnvrtc.so.12");
            // SAFETY: NVRTC's initialisers have no preconditions.
            let nvrtc = unsafe { libloading::Library::new(&lib) }
                .unwrap_or_else(|e| panic!("load {}: {e}", lib.display()));
            (dir, nvrtc)
        })
        .0
}

fn ptx(name: &str, source: &str, arch: &str) -> String {
    tools();
    compile(name, source, arch).unwrap_or_else(|e| panic!("{e}"))
}

/// What ptxas says about one kernel.
#[derive(Debug)]
struct Usage {
    registers: u32,
    spill_stores: u32,
    spill_loads: u32,
    stack: u32,
}

fn number_before(line: &str, unit: &str) -> Option<u32> {
    let at = line.find(unit)?;
    line[..at].split_whitespace().last()?.parse().ok()
}

fn ptxas(ptx: &str, arch: &str, file: &str) -> HashMap<String, Usage> {
    let dir = std::env::temp_dir().join(format!("tessera-ptxas-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join(format!("{file}-{arch}.ptx"));
    std::fs::write(&path, ptx).expect("write ptx");
    let out = Command::new(tools().join("nvidia/cuda_nvcc/bin/ptxas"))
        .args([&format!("-arch={arch}"), "-v", "-o", "/dev/null"])
        .arg(&path)
        .output()
        .expect("run ptxas");
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "ptxas {arch} {file}: {log}");
    let mut usage = HashMap::new();
    let mut current: Option<String> = None;
    for line in log.lines() {
        if let Some(rest) = line.split("Function properties for ").nth(1) {
            current = Some(rest.trim().to_string());
            usage.insert(
                rest.trim().to_string(),
                Usage {
                    registers: 0,
                    spill_stores: 0,
                    spill_loads: 0,
                    stack: 0,
                },
            );
        } else if let Some(u) = current.as_ref().and_then(|n| usage.get_mut(n)) {
            if line.contains("spill stores") {
                u.stack = number_before(line, "bytes stack frame").unwrap_or(0);
                u.spill_stores = number_before(line, "bytes spill stores").unwrap_or(0);
                u.spill_loads = number_before(line, "bytes spill loads").unwrap_or(0);
            } else if line.contains("Used ") && line.contains("registers") {
                u.registers = number_before(line, "registers").unwrap_or(0);
            }
        }
    }
    usage
}

#[test]
fn every_kernel_compiles_for_sm80_and_sm90_without_spills() {
    let mut table = vec![];
    let mut spills = vec![];
    let mut seen = std::collections::HashSet::new();
    for &arch in ARCHS {
        for &(file, source) in SOURCES {
            let ptx = ptx(file, source, arch);
            let usage = ptxas(&ptx, arch, file);
            assert!(!usage.is_empty(), "ptxas reported no kernel in {file}");
            let mut names: Vec<_> = usage.keys().cloned().collect();
            names.sort();
            for name in names {
                let u = &usage[&name];
                table.push(format!(
                    "{arch}  {name:<32} {:>3} registers  {:>4} B stack  {} B spill stores  {} B spill loads",
                    u.registers, u.stack, u.spill_stores, u.spill_loads
                ));
                if u.spill_stores + u.spill_loads > 0 {
                    spills.push(format!("{arch} {name}: {u:?}"));
                }
                seen.insert(name);
            }
        }
    }
    println!("{}", table.join("\n"));
    assert!(
        spills.is_empty(),
        "kernels spill registers:\n{}",
        spills.join("\n")
    );
    let missing: Vec<_> = kernel_names()
        .into_iter()
        .filter(|n| !seen.contains(n))
        .collect();
    assert!(
        missing.is_empty(),
        "the host launches kernels no file defines: {missing:?}"
    );
}

#[test]
fn kernel_parameters_are_the_ones_the_host_passes() {
    let abi = host_abi();
    assert_eq!(
        abi.len(),
        kernel_names().len(),
        "the table covers every launched kernel"
    );
    let mut declared = HashMap::new();
    for &(file, source) in SOURCES {
        declared.extend(ptx_signatures(&ptx(file, source, "sm_90")));
    }
    let mut wrong = vec![];
    for name in kernel_names() {
        let want = &abi[&name];
        match declared.get(&name) {
            Some(got) if got == want => {}
            got => wrong.push(format!("{name}: kernel takes {got:?}, host passes {want}")),
        }
    }
    assert!(wrong.is_empty(), "ABI mismatches:\n{}", wrong.join("\n"));
}

/// Kernels compiled once are loaded from the disk cache after; a damaged
/// cache file is compiled again and replaced.
#[test]
fn compiled_kernels_are_cached_on_disk_by_source_arch_and_nvrtc() {
    tools();
    let cache = std::env::temp_dir().join(format!("tessera-cuda-cache-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&cache);
    // SAFETY: no other test of this binary reads TESSERA_CACHE.
    unsafe { std::env::set_var("TESSERA_CACHE", &cache) };
    let first = tessera_cuda::compiler::ptx_for("sm_80").expect("compile");
    let dir = cache.join("cuda-kernels");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("cache dir")
        .map(|e| e.expect("entry").path())
        .collect();
    files.sort();
    assert_eq!(
        files.len(),
        SOURCES.len(),
        "one cached PTX per kernel file: {files:?}"
    );
    assert!(files
        .iter()
        .all(|f| f.to_string_lossy().contains("-sm_80-nvrtc12.")));
    std::fs::write(&files[0], "not ptx").expect("damage a cache file");
    let again = tessera_cuda::compiler::ptx_for("sm_80").expect("recompile");
    assert_eq!(first, again, "the cache gives back what was compiled");
    assert_ne!(std::fs::read_to_string(&files[0]).expect("read"), "not ptx");
    let other = tessera_cuda::compiler::ptx_for("sm_90").expect("compile sm_90");
    assert_ne!(first[0].1, other[0].1, "another arch is another entry");
    assert_eq!(
        std::fs::read_dir(&dir).expect("cache dir").count(),
        2 * SOURCES.len()
    );
    let _ = std::fs::remove_dir_all(&cache);
}
