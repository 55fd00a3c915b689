//! Without an AMD GPU the rocm backend is unavailable, says why (the HIP
//! runtime missing, or present with no device), answers fast, and opening
//! it is an error, not a crash.

use std::time::Instant;
use tessera_core::hal::{backends, open_device};

#[test]
fn without_an_amd_gpu_rocm_is_unavailable_with_its_reason() {
    assert_eq!(tessera_rocm::BACKEND_NAME, "rocm");
    let entry = backends()
        .into_iter()
        .find(|b| b.name == "rocm")
        .expect("rocm is registered");
    let started = Instant::now();
    let probe = (entry.probe)();
    let open = open_device("rocm", None);
    let took = started.elapsed().as_secs_f64();
    assert!(took < 5.0, "the probe must be fast, took {took:.1} s");
    if probe.available() {
        eprintln!("an AMD GPU is present here: {probe:?}");
        return;
    }
    let reason = probe.reason.clone().unwrap_or_default();
    let expect_hip = std::env::var("TESSERA_EXPECT_HIP").is_ok_and(|v| v == "1");
    match tessera_rocm::hip::runtime() {
        Err(_) => {
            assert!(!expect_hip, "TESSERA_EXPECT_HIP=1 but: {reason}");
            assert!(reason.contains("libamdhip64.so not found"), "{reason}");
        }
        Ok(_) => assert!(reason.starts_with("no AMD GPU"), "{reason}"),
    }
    let err = open.err().expect("opening rocm fails").to_string();
    assert!(err.contains("rocm"), "{err}");
    eprintln!("probe: {reason}\nopen: {err}");
}
