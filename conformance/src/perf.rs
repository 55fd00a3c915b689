//! `--mode perf`: the op grid timed on the device (median of repeated runs
//! after a warm-up), next to the same shapes on the reference backend. For
//! spotting a slow kernel, not for end-to-end claims (`tessera bench` does those).

use crate::ops::cases::{self, OpCase};
use crate::ops::launch::{prepare, Path};
use serde::Serialize;
use std::time::{Duration, Instant};
use tessera_core::hal::Device;
use tessera_core::Result;

#[derive(Clone, Debug, Serialize)]
pub struct Timing {
    pub op: String,
    pub dtype: String,
    pub group: String,
    /// Median microseconds per call on the device, and on the reference.
    pub device_us: f64,
    pub reference_us: f64,
}

/// Median time of one call: at least 3 runs, until 0.2 s or 200 runs.
fn time(dev: &dyn Device, case: &OpCase, path: Path) -> Result<f64> {
    let mut p = prepare(dev, case, path)?;
    p.run()?;
    let (mut samples, start) = (vec![], Instant::now());
    while samples.len() < 3 || (start.elapsed() < Duration::from_millis(200) && samples.len() < 200)
    {
        let t = Instant::now();
        p.run()?;
        samples.push(t.elapsed().as_secs_f64() * 1e6);
    }
    samples.sort_by(f64::total_cmp);
    Ok(samples[samples.len() / 2])
}

pub fn run(dev: &dyn Device, reference: &dyn Device, only: Option<&str>) -> Result<Vec<Timing>> {
    let cases = cases::all(&dev.capabilities())?;
    let mut out = vec![];
    for c in cases.iter().filter(|c| only.is_none_or(|o| o == c.name())) {
        // An op the backend lacks has no time; `--mode support` says why.
        let device_us = time(dev, c, Path::Auto).unwrap_or(f64::NAN);
        out.push(Timing {
            op: c.name().to_string(),
            dtype: c.dtype.name().to_string(),
            group: c.group.clone(),
            device_us,
            reference_us: time(reference, c, Path::Auto)?,
        });
    }
    Ok(out)
}

pub fn print(t: &[Timing], out: &mut dyn std::io::Write) -> std::io::Result<()> {
    let w = t.iter().map(|x| x.group.len()).max().unwrap_or(5).max(5);
    writeln!(
        out,
        "{:<16} {:<5} {:<w$} {:>12} {:>12} {:>8}",
        "op", "dtype", "group", "device us", "reference us", "speedup"
    )?;
    for x in t {
        writeln!(
            out,
            "{:<16} {:<5} {:<w$} {:>12.1} {:>12.1} {:>7.1}x",
            x.op,
            x.dtype,
            x.group,
            x.device_us,
            x.reference_us,
            x.reference_us / x.device_us
        )?;
    }
    Ok(())
}
