//! Without an NVIDIA driver the cuda backend is unavailable, says why, and
//! answers at once (it never creates a context to find out).

use std::time::Instant;
use tessera_core::hal::{backends, open_device};

#[test]
fn without_a_driver_cuda_is_unavailable_with_its_reason() {
    // Naming the crate links it, so it registers.
    assert_eq!(tessera_cuda::BACKEND_NAME, "cuda");
    let entry = backends()
        .into_iter()
        .find(|b| b.name == "cuda")
        .expect("cuda is registered");
    let started = Instant::now();
    let probe = (entry.probe)();
    let open = open_device("cuda", None);
    assert!(
        started.elapsed().as_secs_f64() < 2.0,
        "the probe must be fast"
    );
    // SAFETY: only tries to open the library.
    let driver = unsafe { cudarc::driver::sys::is_culib_present() };
    if driver {
        eprintln!("an NVIDIA driver is present here: {probe:?}");
        return;
    }
    assert!(!probe.available());
    let reason = probe.reason.unwrap_or_default();
    assert!(reason.contains("libcuda.so not found"), "{reason}");
    let err = open.err().expect("opening cuda fails").to_string();
    assert!(
        err.contains("unavailable") && err.contains("libcuda.so"),
        "{err}"
    );
}
