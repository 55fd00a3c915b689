//! CI without an AMD GPU: every kernel file compiles for gfx90a and gfx940
//! (CDNA, 64-lane wavefronts) and gfx1030 (RDNA, 32-lane), with hipRTC (the
//! run-time path; Debian's HIP 5.2, installed by scripts/install-hip.sh) and
//! with clang offline (the same LLVM, for gfx940, which that hipRTC cannot
//! target); the code objects' register notes show no spills and no scratch;
//! each kernel takes the parameters the host launches it with; compiled
//! objects are cached.
//!
//! Without HIP installed these tests say so and pass, unless
//! TESSERA_EXPECT_HIP=1 (set by scripts/test.sh, which installs it) makes a
//! missing HIP a failure.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::process::Command;
use tessera_gpu_kernels::kernels::{host_abi, kernel_names};
use tessera_rocm::code_object::{self, KernelInfo};
use tessera_rocm::compiler::{compile, COMPAT_H, SOURCES};

/// Each target, its wavefront width, and whether this hipRTC compiles it.
const ARCHS: &[(&str, u32, bool)] = &[
    ("gfx90a", 64, true),
    ("gfx940", 64, false),
    ("gfx1030", 32, true),
];

/// Whether hipRTC is here; panics if it must be and is not.
fn hip_present() -> bool {
    match tessera_rocm::hip::rtc() {
        Ok(_) => true,
        Err(why) => {
            assert!(
                std::env::var("TESSERA_EXPECT_HIP").map_or(true, |v| v != "1"),
                "TESSERA_EXPECT_HIP=1 but hipRTC is missing: {why}"
            );
            eprintln!("skipped: {why}");
            false
        }
    }
}

/// The clang that came with Debian's hipcc, offline: the raw device ELF.
fn offline(file: &str, source: &str, arch: &str) -> Vec<u8> {
    let dir = std::env::temp_dir().join(format!("tessera-hipcc-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    std::fs::write(dir.join("compat.h"), COMPAT_H).expect("write compat.h");
    let src = dir.join(file);
    std::fs::write(&src, source).expect("write source");
    let out: PathBuf = dir.join(format!("{file}-{arch}.elf"));
    let clang = ["clang++-15", "clang++"]
        .into_iter()
        .find(|c| Command::new(c).arg("--version").output().is_ok())
        .expect("clang++ (Debian's hipcc brings clang++-15)");
    let run = Command::new(clang)
        .args(["-x", "hip", "-std=c++17", "--rocm-path=/usr"])
        .arg("--hip-device-lib-path=/usr/lib/x86_64-linux-gnu/amdgcn/bitcode")
        .args(["-include", "hip/hip_runtime.h"])
        .arg(format!("--offload-arch={arch}"))
        .args(["--cuda-device-only", "--no-gpu-bundle-output", "-O3", "-I"])
        .arg(&dir)
        .arg(&src)
        .arg("-o")
        .arg(&out)
        .output()
        .expect("run clang");
    assert!(
        run.status.success(),
        "clang {file} {arch}: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    std::fs::read(&out).expect("read the code object")
}

/// The kernels of `file` for `arch`, compiled by hipRTC or clang offline.
fn kernels_of(file: &str, source: &str, arch: &str, hiprtc: bool) -> Vec<KernelInfo> {
    let co = if hiprtc {
        compile(file, source, arch).unwrap_or_else(|e| panic!("{e}"))
    } else {
        offline(file, source, arch)
    };
    let target = code_object::target(&co).unwrap_or_else(|e| panic!("{file} {arch}: {e}"));
    assert!(
        target.as_deref().is_some_and(|t| t.contains(arch)),
        "{file} was built for {target:?}, not {arch}"
    );
    code_object::kernels(&co).unwrap_or_else(|e| panic!("{file} {arch}: {e}"))
}

/// Compiles everything for every target with `hiprtc` (where it can) or
/// clang, prints the register table and asserts no spills, no scratch and
/// the expected wavefront width.
fn compiles_without_spills(hiprtc: bool) {
    let tool = if hiprtc { "hipRTC" } else { "clang" };
    let mut table = vec![format!(
        "{:<7} {:<8} {:<30} {:>4} {:>4} {:>4} {:>6} {:>6} {:>7} {:>5}",
        "tool", "arch", "kernel", "vgpr", "agpr", "sgpr", "vspill", "sspill", "scratch", "lds"
    )];
    let mut bad = vec![];
    for &(arch, wave, rtc_can) in ARCHS {
        if hiprtc && !rtc_can {
            continue;
        }
        let mut seen = HashSet::new();
        for &(file, source) in SOURCES {
            let kernels = kernels_of(file, source, arch, hiprtc);
            assert!(!kernels.is_empty(), "no kernel in {file} for {arch}");
            for k in kernels {
                table.push(format!(
                    "{tool:<7} {arch:<8} {:<30} {:>4} {:>4} {:>4} {:>6} {:>6} {:>7} {:>5}",
                    k.name,
                    k.vgpr_count,
                    k.agpr_count,
                    k.sgpr_count,
                    k.vgpr_spill_count,
                    k.sgpr_spill_count,
                    k.private_segment_fixed_size,
                    k.group_segment_fixed_size
                ));
                if k.vgpr_spill_count + k.sgpr_spill_count + k.private_segment_fixed_size > 0 {
                    bad.push(format!("{arch} {}: spills or scratch: {k:?}", k.name));
                }
                // compat.h's TSR_WARP must be the width the code runs at.
                if k.wavefront_size != wave {
                    bad.push(format!(
                        "{arch} {}: wavefront {} (expected {wave})",
                        k.name, k.wavefront_size
                    ));
                }
                seen.insert(k.name);
            }
        }
        let missing: Vec<_> = kernel_names()
            .into_iter()
            .filter(|n| !seen.contains(n))
            .collect();
        assert!(missing.is_empty(), "{arch}: no file defines {missing:?}");
    }
    println!("{}", table.join("\n"));
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

#[test]
fn every_kernel_compiles_with_hiprtc_for_gfx90a_and_gfx1030_without_spills() {
    if hip_present() {
        compiles_without_spills(true);
    }
}

#[test]
fn every_kernel_compiles_offline_for_gfx90a_gfx940_gfx1030_without_spills() {
    if hip_present() {
        compiles_without_spills(false);
    }
}

/// gfx940 is refused by this hipRTC with a clear error instead of a crash.
#[test]
fn hiprtc_too_old_for_the_target_is_an_error_not_a_crash() {
    if !hip_present() {
        return;
    }
    let (file, source) = SOURCES[0];
    match compile(file, source, "gfx940") {
        Ok(co) => assert!(code_object::kernels(&co).is_ok()),
        Err(e) => assert!(e.to_string().contains("ROCm 5.5"), "{e}"),
    }
}

#[test]
fn kernel_parameters_are_the_ones_the_host_passes() {
    if !hip_present() {
        return;
    }
    let mut declared: HashMap<String, KernelInfo> = HashMap::new();
    for &(file, source) in SOURCES {
        for k in kernels_of(file, source, "gfx90a", true) {
            declared.insert(k.name.clone(), k);
        }
    }
    let mut wrong = vec![];
    for (name, kinds) in host_abi() {
        let want: Vec<(u32, bool)> = kinds
            .chars()
            .map(|c| if c == 'p' { (8, true) } else { (4, false) })
            .collect();
        let got: Option<Vec<(u32, bool)>> = declared
            .get(&name)
            .map(|k| k.args.iter().map(|a| (a.size, a.pointer)).collect());
        if got.as_ref() != Some(&want) {
            wrong.push(format!("{name}: kernel takes {got:?}, host passes {kinds}"));
        }
    }
    wrong.sort();
    assert!(wrong.is_empty(), "ABI mismatches:\n{}", wrong.join("\n"));
}

/// Kernels compiled once are loaded from the disk cache after; a damaged
/// cache file is compiled again and replaced; another arch is another entry.
#[test]
fn compiled_kernels_are_cached_on_disk_by_source_arch_and_hiprtc() {
    if !hip_present() {
        return;
    }
    let cache = std::env::temp_dir().join(format!("tessera-rocm-cache-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&cache);
    // SAFETY: no other test of this binary reads TESSERA_CACHE.
    unsafe { std::env::set_var("TESSERA_CACHE", &cache) };
    let first = tessera_rocm::compiler::code_objects_for("gfx90a").expect("compile");
    let dir = cache.join("rocm-kernels");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("cache dir")
        .map(|e| e.expect("entry").path())
        .collect();
    files.sort();
    assert_eq!(
        files.len(),
        SOURCES.len(),
        "one code object per file: {files:?}"
    );
    assert!(files
        .iter()
        .all(|f| f.to_string_lossy().contains("-gfx90a-")));
    std::fs::write(&files[0], "not a code object").expect("damage a cache file");
    let again = tessera_rocm::compiler::code_objects_for("gfx90a").expect("recompile");
    assert_eq!(first, again, "the cache gives back what was compiled");
    assert!(code_object::kernels(&std::fs::read(&files[0]).expect("read")).is_ok());
    let other = tessera_rocm::compiler::code_objects_for("gfx1030").expect("gfx1030");
    assert_ne!(first[0].1, other[0].1, "another arch is another entry");
    assert_eq!(
        std::fs::read_dir(&dir).expect("cache dir").count(),
        2 * SOURCES.len()
    );
    let _ = std::fs::remove_dir_all(&cache);
}

/// A kernel that does not compile comes back as an error with hipRTC's log.
#[test]
fn a_compile_error_names_the_file_and_carries_the_log() {
    if !hip_present() {
        return;
    }
    let err = compile(
        "broken.cu",
        "#include \"compat.h\"\nextern \"C\" __global__ void k() { nope; }",
        "gfx90a",
    )
    .expect_err("does not compile")
    .to_string();
    assert!(err.contains("broken.cu") && err.contains("nope"), "{err}");
}
