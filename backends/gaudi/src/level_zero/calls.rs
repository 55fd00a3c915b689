//! How Level Zero calls are made and their results read: errors that name
//! the call and the result, properties structs with their stype, list
//! queries, C strings.

use level_zero_sys::*;
use std::fmt::Display;
use std::ptr::null_mut;
use tessera_core::{Error, Result};

pub(super) const BACKEND: &str = "gaudi";

/// `"{call} answered {result}"`, with what to do where that is known.
pub(super) fn message(r: ze_result_t, call: impl Display) -> String {
    let hint = match r {
        ZE_RESULT_ERROR_OUT_OF_DEVICE_MEMORY => {
            " (the device is out of memory: lower --memory-utilization or use a smaller model)"
        }
        ZE_RESULT_ERROR_DEVICE_LOST => {
            " (the device was lost: a kernel faulted or the driver reset it)"
        }
        _ => "",
    };
    format!("{call} answered {}{hint}", result_name(r))
}

pub(super) fn ok(r: ze_result_t, call: impl Display) -> std::result::Result<(), String> {
    if r == ZE_RESULT_SUCCESS {
        Ok(())
    } else {
        Err(message(r, call))
    }
}

pub(super) fn check(r: ze_result_t, call: impl Display) -> Result<()> {
    ok(r, call).map_err(|m| Error::device(BACKEND, m))
}

/// `check(ze.zeFoo(args), "zeFoo")`: a call, named in its error.
macro_rules! ze {
    ($ze:expr, $f:ident($($arg:expr),* $(,)?)) => {
        $crate::level_zero::calls::check($ze.$f($($arg),*), stringify!($f))
    };
}

/// A zeroed properties struct (valid: integers, arrays, a null pNext) with
/// the stype ze_api.h names for it, for the driver to fill.
macro_rules! props {
    ($t:ty, $stype:expr) => {{
        // SAFETY: every field of these structs is valid as zero bytes.
        let mut p: $t = unsafe { std::mem::zeroed() };
        p.stype = $stype;
        p
    }};
}

/// A Level Zero list query: the count, then that many entries, each
/// starting as `init`.
pub(super) fn query<T: Copy>(
    init: T,
    call: &str,
    mut get: impl FnMut(&mut u32, *mut T) -> ze_result_t,
) -> std::result::Result<Vec<T>, String> {
    let mut count = 0u32;
    ok(get(&mut count, null_mut()), call)?;
    let mut all = vec![init; count as usize];
    ok(get(&mut count, all.as_mut_ptr()), call)?;
    all.truncate(count as usize);
    Ok(all)
}

/// A C `char` array up to its NUL, as text.
pub(super) fn c_text(chars: &[std::os::raw::c_char]) -> String {
    let bytes: Vec<u8> = chars
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}
