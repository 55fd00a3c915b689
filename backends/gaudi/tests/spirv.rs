//! The SPIR-V that Level Zero loads (`kernels/opencl/tessera.spv`, shipped
//! in the binary): built from the current OpenCL C sources, valid
//! (spirv-val), and holding every kernel the host launches with the
//! parameters it passes (read from the disassembly), so the Level Zero path
//! launches exactly what PoCL ran.
//!
//! Needs clang-15, llvm-spirv-15 and spirv-tools; skipped (with the reason)
//! without them unless `TESSERA_EXPECT_SPIRV_TOOLS=1` (CI), where that fails.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use tessera_gpu_kernels::kernels::{host_abi, kernel_names};

fn kernels_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../kernels/opencl")
}

fn tools_present() -> bool {
    let missing: Vec<&str> = ["clang-15", "llvm-spirv-15", "spirv-val", "spirv-dis"]
        .into_iter()
        .filter(|t| Command::new(t).arg("--version").output().is_err())
        .collect();
    if missing.is_empty() {
        return true;
    }
    assert!(
        std::env::var("TESSERA_EXPECT_SPIRV_TOOLS").as_deref() != Ok("1"),
        "TESSERA_EXPECT_SPIRV_TOOLS=1 but {missing:?} are missing (scripts/install-gaudi-deps.sh installs them)"
    );
    eprintln!("skipped: {missing:?} not installed");
    false
}

#[test]
fn committed_spirv_is_built_from_the_current_sources_and_valid() {
    if !tools_present() {
        return;
    }
    let out = std::env::temp_dir().join(format!("tessera-spirv-{}.spv", std::process::id()));
    let run = Command::new("bash")
        .arg(kernels_dir().join("build-spirv.sh"))
        .arg(&out)
        .output()
        .expect("run build-spirv.sh");
    assert!(
        run.status.success(),
        "build-spirv.sh failed:\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let fresh = std::fs::read(&out).expect("read the fresh SPIR-V");
    let _ = std::fs::remove_file(&out);
    assert!(
        fresh == tessera_gaudi::sources::SPIRV,
        "kernels/opencl/tessera.spv is stale: run kernels/opencl/build-spirv.sh kernels/opencl/tessera.spv and commit it"
    );
    let val = Command::new("spirv-val")
        .arg(kernels_dir().join("tessera.spv"))
        .output()
        .expect("run spirv-val");
    assert!(
        val.status.success(),
        "spirv-val rejects tessera.spv:\n{}",
        String::from_utf8_lossy(&val.stderr)
    );
}

/// Each entry point's parameter kinds as the host writes them (`p` global
/// pointer, `l` local memory, `i` int, `f` float), from spirv-dis's text.
fn entry_point_kinds(disassembly: &str) -> HashMap<String, String> {
    let mut types: HashMap<&str, char> = HashMap::new();
    let mut entries: HashMap<&str, String> = HashMap::new();
    for line in disassembly.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            [id, "=", "OpTypePointer", "CrossWorkgroup", ..] => {
                types.insert(id, 'p');
            }
            [id, "=", "OpTypePointer", "Workgroup", ..] => {
                types.insert(id, 'l');
            }
            [id, "=", "OpTypeInt", "32", ..] => {
                types.insert(id, 'i');
            }
            [id, "=", "OpTypeFloat", "32"] => {
                types.insert(id, 'f');
            }
            ["OpEntryPoint", "Kernel", id, name, ..] => {
                entries.insert(id, name.trim_matches('"').to_string());
            }
            _ => {}
        }
    }
    let mut kinds = HashMap::new();
    let mut current: Option<(String, String)> = None;
    for line in disassembly.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            [id, "=", "OpFunction", ..] => {
                current = entries.get(id).map(|name| (name.clone(), String::new()));
            }
            [_, "=", "OpFunctionParameter", ty] => {
                if let Some((_, k)) = current.as_mut() {
                    k.push(types.get(ty).copied().unwrap_or('?'));
                }
            }
            ["OpFunctionEnd"] => {
                if let Some((name, k)) = current.take() {
                    kinds.insert(name, k);
                }
            }
            _ => {}
        }
    }
    kinds
}

#[test]
fn every_kernel_the_host_launches_is_in_the_spirv_with_its_parameters() {
    if !tools_present() {
        return;
    }
    let dis = Command::new("spirv-dis")
        .arg(kernels_dir().join("tessera.spv"))
        .output()
        .expect("run spirv-dis");
    assert!(dis.status.success(), "spirv-dis failed");
    let kinds = entry_point_kinds(&String::from_utf8_lossy(&dis.stdout));
    let mut abi = host_abi();
    for k in tessera_gaudi::sources::EXTRA_KERNELS {
        abi.insert(k.to_string(), "pppiii".into());
    }
    let mut names = kernel_names();
    names.extend(
        tessera_gaudi::sources::EXTRA_KERNELS
            .iter()
            .map(|s| s.to_string()),
    );
    for name in names {
        let got = kinds
            .get(&name)
            .unwrap_or_else(|| panic!("kernel {name} is not an entry point of tessera.spv"));
        let host = &abi[&name];
        // A kernel with dynamic shared memory in CUDA takes it as one more,
        // last, __local parameter.
        assert!(
            got == host || *got == format!("{host}l"),
            "{name}: the SPIR-V takes ({got}), the host passes ({host})"
        );
    }
}
