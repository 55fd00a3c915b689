//! Without Intel hardware, `--device gaudi` says why, quickly: the Level
//! Zero loader is missing, or it finds no driver (CI installs Debian's
//! loader, `TESSERA_EXPECT_LEVEL_ZERO=1`, so there it must be "no driver").
//! A wrong `TESSERA_GAUDI_RUNTIME` is named, with the choices.

use std::time::{Duration, Instant};

fn gaudi_probe() -> tessera_core::hal::Probe {
    let entry = tessera_core::hal::backends()
        .into_iter()
        .find(|b| b.name == tessera_gaudi::BACKEND_NAME)
        .expect("the gaudi backend is registered");
    (entry.probe)()
}

// One test, because it sets the process's environment.
#[test]
fn probe_and_open_say_why_gaudi_is_unavailable() {
    std::env::remove_var("TESSERA_GAUDI_RUNTIME");
    let start = Instant::now();
    let probe = gaudi_probe();
    let took = start.elapsed();
    assert!(took < Duration::from_secs(5), "the probe took {took:?}");
    if !probe.available() {
        let reason = probe.reason.clone().unwrap_or_default();
        let expected = if std::env::var("TESSERA_EXPECT_LEVEL_ZERO").as_deref() == Ok("1") {
            "no Level Zero driver"
        } else if reason.starts_with("libze_loader.so.1 not found") {
            "libze_loader.so.1 not found"
        } else {
            "no Level Zero driver"
        };
        assert!(reason.starts_with(expected), "probe reason: {reason}");
        eprintln!("gaudi probe ({took:?}): {reason}");
        let err = tessera_core::hal::open_device("gaudi", None)
            .err()
            .expect("opening gaudi without a device fails");
        assert!(err.to_string().contains(&reason), "open error: {err}");
    }

    std::env::set_var("TESSERA_GAUDI_RUNTIME", "vulkan");
    let probe = gaudi_probe();
    let reason = probe.reason.unwrap_or_default();
    assert!(
        reason.contains("TESSERA_GAUDI_RUNTIME=vulkan is not a runtime")
            && reason.contains("level-zero")
            && reason.contains("opencl"),
        "probe reason: {reason}"
    );
    std::env::remove_var("TESSERA_GAUDI_RUNTIME");
}
