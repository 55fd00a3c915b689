//! On this machine (no Intel driver): the loader opens when installed, and
//! asking for drivers answers "no Level Zero driver" at once. Without the
//! loader the answer names it. TESSERA_EXPECT_LEVEL_ZERO=1 (set by
//! scripts/test.sh, which installs libze1) makes a missing loader a failure.

use std::time::Instant;

#[test]
fn without_a_driver_the_answer_is_clean_and_fast() {
    let started = Instant::now();
    let answer = level_zero_sys::drivers();
    let took = started.elapsed().as_secs_f64();
    assert!(took < 2.0, "asking for drivers took {took:.2} s");
    match level_zero_sys::loader() {
        Err(why) => {
            assert!(
                std::env::var("TESSERA_EXPECT_LEVEL_ZERO").map_or(true, |v| v != "1"),
                "TESSERA_EXPECT_LEVEL_ZERO=1 but: {why}"
            );
            assert!(why.contains("libze_loader.so.1 not found"), "{why}");
        }
        Ok(_) => match answer {
            Ok(drivers) => eprintln!("{} Level Zero driver(s) here", drivers.len()),
            Err(why) => {
                // Debian's loader 1.8 with no driver installed.
                assert!(why.starts_with("no Level Zero driver"), "{why}");
                assert!(
                    why.contains("ZE_RESULT_ERROR_UNINITIALIZED") || why.contains("found none"),
                    "{why}"
                );
                eprintln!("{why} ({took:.3} s)");
            }
        },
    }
}

#[test]
fn results_have_names() {
    use level_zero_sys::*;
    assert_eq!(
        result_name(ZE_RESULT_ERROR_UNINITIALIZED),
        "ZE_RESULT_ERROR_UNINITIALIZED (0x78000001)"
    );
    assert!(result_name(0x7fff_fff0).starts_with("an unnamed"));
}

/// The generated structs have the C layout the loader expects: spot checks
/// against sizes stated by ze_api.h's types.
#[test]
fn generated_layouts_match_the_header() {
    use level_zero_sys::*;
    // stype (u32) + pNext (pointer) + ordinal (u32) + flags (u32) -> 24.
    assert_eq!(std::mem::size_of::<ze_device_mem_alloc_desc_t>(), 24);
    assert_eq!(std::mem::size_of::<ze_group_count_t>(), 12);
    assert_eq!(std::mem::size_of::<ze_kernel_handle_t>(), 8);
}
