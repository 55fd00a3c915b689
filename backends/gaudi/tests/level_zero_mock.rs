//! The Level Zero runtime (`src/level_zero/`) on a fake loader,
//! `tests/mock_ze/mock.c`, with no Intel hardware: the mock checks each call
//! against ze_api.h's rules (stypes, barriers between commands, what is
//! signalled before a host wait, frees and destroys only of what no queued
//! work uses, children destroyed before parents) and runs the test's kernels
//! on host memory, late, as a device may; this test checks the results, the
//! errors and the native-binary cache.
//!
//! The mock is built here with `cc` against ze_api.h (Debian's libze-dev) and
//! opened through `TESSERA_ZE_LOADER`. Without them the test is skipped,
//! unless TESSERA_EXPECT_LEVEL_ZERO=1 (CI, which installs them).

use std::path::{Path, PathBuf};
use std::process::Command;
use tessera_gaudi::api::Api;
use tessera_gaudi::level_zero::{devices, LevelZero};
use tessera_gpu_kernels::launch::{Args, Config};

const HEADER: &str = "/usr/include/level_zero/ze_api.h";
/// What the mock says of its device (mock.c).
const MEM_TOTAL: u64 = 64 << 20;
const MAX_ALLOC: usize = 32 << 20;
const MAX_LOCAL: u32 = 65536;

/// The mock as `dir/libze_loader.so.1`, or why it cannot be built here.
fn build_mock(dir: &Path) -> Result<PathBuf, String> {
    if !Path::new(HEADER).exists() {
        return Err(format!("{HEADER} is missing (install libze-dev)"));
    }
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/mock_ze/mock.c");
    let out = dir.join("libze_loader.so.1");
    let built = Command::new("cc")
        .args(["-shared", "-fPIC", "-O1", "-Wall", "-Werror", "-o"])
        .arg(&out)
        .arg(&source)
        .output()
        .map_err(|e| format!("cc does not run ({e}): no C compiler"))?;
    assert!(
        built.status.success(),
        "{} does not compile:\n{}",
        source.display(),
        String::from_utf8_lossy(&built.stderr)
    );
    Ok(out)
}

/// The mock's report: a line per event (mock.c).
struct Report(PathBuf);

impl Report {
    fn lines(&self) -> Vec<String> {
        let text = std::fs::read_to_string(&self.0).unwrap_or_default();
        text.lines().map(String::from).collect()
    }

    fn count(&self, prefix: &str) -> usize {
        self.lines()
            .iter()
            .filter(|l| l.starts_with(prefix))
            .count()
    }
}

/// A SPIR-V header (magic, version 1.0, generator, bound, schema), then `code`:
/// all the mock reads of a module.
fn spirv(code: &[u8]) -> Vec<u8> {
    let mut v = vec![0x03, 0x02, 0x23, 0x07, 0, 0, 1, 0];
    v.resize(20, 0);
    v.extend_from_slice(code);
    v
}

fn to_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn download_f32(l: &LevelZero, ptr: u64, n: usize) -> Vec<f32> {
    let mut out = vec![0u8; n * 4];
    l.download(ptr, &mut out).unwrap();
    out.chunks(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

fn error<T>(r: tessera_core::Result<T>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

/// The one cache file (the native binary of the last module built).
fn cached_binary(cache: &Path) -> PathBuf {
    let files: Vec<PathBuf> = std::fs::read_dir(cache)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "bin"))
        .collect();
    assert_eq!(files.len(), 1, "cache files: {files:?}");
    files[0].clone()
}

// One test: it sets the process's environment, which must happen before
// level-zero-sys opens the loader (once per process).
#[test]
fn level_zero_runtime_on_a_mock_driver() {
    let dir = std::env::temp_dir().join(format!("tessera-ze-mock-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let loader = match build_mock(&dir) {
        Ok(loader) => loader,
        Err(why) => {
            assert!(
                std::env::var("TESSERA_EXPECT_LEVEL_ZERO").as_deref() != Ok("1"),
                "TESSERA_EXPECT_LEVEL_ZERO=1 but the Level Zero mock cannot be built: {why}"
            );
            eprintln!("skipped: the Level Zero mock cannot be built: {why}");
            let _ = std::fs::remove_dir_all(&dir);
            return;
        }
    };
    let report = Report(dir.join("report"));
    std::env::set_var(level_zero_sys::LOADER_ENV, &loader);
    std::env::set_var("MOCK_ZE_REPORT", &report.0);
    let cache = dir.join("cache");

    let name = "Mock Xe GPU (GPU, Level Zero driver 0x1036f4e)";
    assert_eq!(devices().unwrap(), vec![(name.to_string(), MEM_TOTAL)]);

    // Refused before a module is built: not SPIR-V, no such device.
    let e = error(LevelZero::open(0, b"hello", &cache));
    assert!(e.contains("(5 bytes) is not SPIR-V"), "{e}");
    let e = error(LevelZero::open(1, &spirv(b"ok"), &cache));
    assert!(e.contains("no Level Zero device 1: there are 1"), "{e}");
    // A failed build carries the driver's build log.
    let e = error(LevelZero::open(0, &spirv(b"BAD"), &cache));
    assert!(
        e.contains("zeModuleCreate (SPIR-V) answered ZE_RESULT_ERROR_MODULE_BUILD_FAILURE")
            && e.contains("build log:\nerror: mock build failure"),
        "{e}"
    );
    assert_eq!(report.count("module"), 1);

    // Built once from SPIR-V, then loaded from the cached native binary; a
    // stale cache file is rebuilt and replaced.
    let code = spirv(b"kernels");
    drop(LevelZero::open(0, &code, &cache).unwrap());
    assert_eq!(
        (report.count("module spirv"), report.count("module native")),
        (2, 0)
    );
    drop(LevelZero::open(0, &code, &cache).unwrap());
    assert_eq!(
        (report.count("module spirv"), report.count("module native")),
        (2, 1)
    );
    let bin = cached_binary(&cache);
    std::fs::write(&bin, b"stale").unwrap();
    drop(LevelZero::open(0, &code, &cache).unwrap());
    assert_eq!(report.count("module native rejected"), 1);
    assert_eq!(report.count("module spirv"), 3);
    assert_ne!(std::fs::read(&bin).unwrap(), b"stale");
    let l = LevelZero::open(0, &code, &cache).unwrap();
    assert_eq!(report.count("module native"), 3);

    assert_eq!(l.runtime_name(), "level-zero");
    assert_eq!(l.device_description(), name);
    assert_eq!(l.mem_info().unwrap(), (MEM_TOTAL, MEM_TOTAL));
    assert_eq!(l.max_local_bytes(), MAX_LOCAL);

    // Upload, fill, two launches (the second reads the first's output), a
    // device copy, download.
    let n = 1000;
    let input: Vec<f32> = (0..n).map(|i| i as f32).collect();
    let [a, b, c] = [(); 3].map(|()| l.alloc(n * 4).unwrap());
    l.upload(a, &to_bytes(&input)).unwrap();
    l.fill_zero(c, n * 4).unwrap();
    assert!(download_f32(&l, c, n).iter().all(|&x| x == 0.0));
    let cfg = Config::linear(n, 256).unwrap();
    let scale = |dst, src, f| Args::new().ptr(dst).ptr(src).i32(n as i32).f32(f);
    l.launch("scale", &cfg, &scale(b, a, 2.0)).unwrap();
    l.launch("scale", &cfg, &scale(c, b, 3.0)).unwrap();
    // `a` is in use by queued work: freed at the next host wait.
    l.free(a, n * 4);
    assert_eq!(l.mem_info().unwrap().0, MEM_TOTAL - 3 * 4000);
    let d = l.alloc(n * 4).unwrap();
    l.copy(c, d, n * 4).unwrap();
    let got = download_f32(&l, d, n);
    assert!(got.iter().zip(&input).all(|(g, x)| *g == x * 6.0));
    assert_eq!(l.mem_info().unwrap().0, MEM_TOTAL - 3 * 4000);

    // Host-side errors, named.
    let e = error(l.launch("scale", &cfg, &Args::new().ptr(b)));
    assert!(
        e.contains("scale takes 4 parameters but the host passes 1"),
        "{e}"
    );
    let e = error(l.launch("nope", &cfg, &Args::new()));
    assert!(
        e.contains("zeKernelCreate(nope) answered ZE_RESULT_ERROR_INVALID_KERNEL_NAME"),
        "{e}"
    );
    let mut sum_cfg = Config::linear(n, 128).unwrap();
    sum_cfg.shared = 1 << 20;
    let sum_args = Args::new().ptr(b).ptr(d).i32(n as i32);
    let e = error(l.launch("block_sum", &sum_cfg, &sum_args));
    assert!(
        e.contains("1048576 bytes of shared memory (the device allows 65536)"),
        "{e}"
    );

    // A kernel with a __local parameter gets cfg.shared bytes of it.
    sum_cfg.shared = 128 * 4;
    l.launch("block_sum", &sum_cfg, &sum_args).unwrap();
    assert_eq!(report.count("launch block_sum 8x1x1 of 128, local 512"), 1);
    let sums = download_f32(&l, b, 8);
    let expected: Vec<f32> = got.chunks(128).map(|c| c.iter().sum()).collect();
    assert_eq!(sums, expected);

    // An empty grid launches nothing.
    let launches = report.count("launch");
    let empty = Config::new((0, 1, 1), 128, 0).unwrap();
    l.launch("scale", &empty, &scale(b, c, 1.0)).unwrap();
    assert_eq!(report.count("launch"), launches);

    // Larger than one allocation may be: refused before the driver is asked.
    let e = error(l.alloc(MAX_ALLOC + 1));
    assert!(e.contains("maxMemAllocSize"), "{e}");

    // Out of memory while frees are deferred: the queue drains, the frees
    // happen and the allocation is tried again.
    let x = l.alloc(MAX_ALLOC).unwrap();
    let y = l.alloc(MAX_ALLOC - (2 << 20)).unwrap();
    l.fill_zero(y, 1 << 20).unwrap();
    l.free(y, MAX_ALLOC - (2 << 20));
    let z = l.alloc(4 << 20).unwrap();
    assert_eq!(report.count("out of device memory"), 1);
    l.free(x, MAX_ALLOC);
    l.free(z, 4 << 20);

    // Dropped with work queued and memory allocated: drained, then torn down.
    l.launch("scale", &cfg, &scale(b, c, 1.0)).unwrap();
    drop(l);
    assert_eq!(report.count("context created"), 5);
    assert_eq!(report.count("context destroyed"), 5);

    let bugs: Vec<String> = report
        .lines()
        .into_iter()
        .filter(|l| l.starts_with("BUG"))
        .collect();
    assert!(bugs.is_empty(), "the mock recorded bugs: {bugs:#?}");
    let _ = std::fs::remove_dir_all(&dir);
}
