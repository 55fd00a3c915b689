//! The ops layer: every op of the HAL, every dtype the backend claims, over the
//! grid of `cases`, against the reference backend (f64 inside).

pub mod cases;
pub mod launch;

use crate::report::{Check, Layer};
use crate::thresholds::{nmse_limit, INDEX_TIE};
use cases::{OpCase, OPTIONAL_OPS};
pub use launch::Path;
use tessera_core::hal::{Device, Op};
use tessera_core::{DType, Error, HostTensor, Result};

/// Runs the grid on `dev`, comparing with `reference`; `only` keeps one op.
pub fn check(
    dev: &dyn Device,
    reference: &dyn Device,
    only: Option<&str>,
    path: Path,
) -> Result<Vec<Check>> {
    let cases = cases::all(&dev.capabilities())?;
    Ok(cases
        .iter()
        .filter(|c| only.is_none_or(|o| o == c.name()))
        .map(|c| check_case(dev, reference, c, path))
        .collect())
}

fn check_case(dev: &dyn Device, reference: &dyn Device, case: &OpCase, path: Path) -> Check {
    let row = |ok: bool, detail: String| {
        Check::verdict(
            Layer::Ops,
            case.name(),
            case.dtype.name(),
            &case.group,
            ok,
            detail,
        )
    };
    let want = match launch::run_case(reference, case, Path::Auto) {
        Ok(o) => o.outputs,
        Err(e) => return row(false, format!("the reference failed, a suite bug: {e}")),
    };
    let got = match launch::run_case(dev, case, path) {
        Ok(o) => o,
        Err(Error::Unsupported { what, .. }) if OPTIONAL_OPS.contains(&case.name()) => {
            let mut c = row(true, format!("optional, not implemented ({what})"));
            c.status = crate::report::Status::Skip;
            return c;
        }
        Err(e) => return row(false, format!("error: {e}")),
    };
    let mut c = if case.outputs.iter().all(|t| t.dtype == DType::I32) {
        compare_indices(case, &want, &got.outputs)
    } else {
        compare_floats(case, &want, &got.outputs)
    };
    for v in got.violations {
        c = c.fail(v);
    }
    c
}

fn compare_floats(case: &OpCase, want: &[HostTensor], got: &[HostTensor]) -> Check {
    let Some(limit) = nmse_limit(case.name(), case.dtype) else {
        return Check::verdict(
            Layer::Ops,
            case.name(),
            case.dtype.name(),
            &case.group,
            false,
            format!(
                "no threshold for {} at {}: add one to thresholds.rs",
                case.name(),
                case.dtype
            ),
        );
    };
    let mut worst = 0.0f64;
    let mut bad = None;
    for (k, (w, g)) in want.iter().zip(got).enumerate() {
        let (w, g) = (w.to_f32_vec(), g.to_f32_vec());
        if let Some(i) = g.iter().position(|v| !v.is_finite()) {
            bad = Some(format!(
                "output {k} has {} at element {i} (unwritten or overflow)",
                g[i]
            ));
        } else if let Some(why) = worst_element(&w, &g, limit) {
            bad = Some(format!("output {k}: {why}"));
        }
        worst = worst.max(crate::nmse(&w, &g));
    }
    let c = Check::measured(
        Layer::Ops,
        case.name(),
        case.dtype.name(),
        &case.group,
        worst,
        limit,
    );
    match bad {
        Some(why) => c.fail(why),
        None => c,
    }
}

/// NMSE averages over the whole output, so one wrong element of a large
/// output can hide under it; no single element may be off by more than
/// `ELEMENT_FACTOR * sqrt(limit)` times the reference's RMS.
fn worst_element(want: &[f32], got: &[f32], limit: f64) -> Option<String> {
    let n = want.len().max(1) as f64;
    let rms = (want.iter().map(|&a| (a as f64).powi(2)).sum::<f64>() / n).sqrt();
    let (i, err) = want
        .iter()
        .zip(got)
        .map(|(&a, &b)| (a as f64 - b as f64).abs())
        .enumerate()
        .fold((0, 0.0), |m, (i, e)| if e > m.1 { (i, e) } else { m });
    let allowed = ELEMENT_FACTOR * limit.sqrt() * rms.max(f64::MIN_POSITIVE);
    (err > allowed).then(|| {
        format!(
            "element {i} is {} instead of {} (off by {:.2e}, {:.1}x the reference RMS)",
            got[i],
            want[i],
            err,
            err / rms.max(f64::MIN_POSITIVE)
        )
    })
}

/// See `worst_element`.
const ELEMENT_FACTOR: f64 = 30.0;

/// argmax/sample: the backend's token must score as high as the reference's,
/// up to `INDEX_TIE` (two tokens that close are a tie any order may break).
fn compare_indices(case: &OpCase, want: &[HostTensor], got: &[HostTensor]) -> Check {
    let (w, g) = (want[0].to_f32_vec(), got[0].to_f32_vec());
    let logits = case.inputs[0].to_f32_vec();
    let vocab = case.inputs[0].shape[1];
    let (temps, noise) = match case.op {
        Op::Sample => (case.inputs[1].to_f32_vec(), case.inputs[2].to_f32_vec()),
        _ => (vec![0.0; w.len()], vec![]),
    };
    let score = |s: usize, v: usize| -> f64 {
        let x = logits[s * vocab + v] as f64;
        if temps[s] > 0.0 {
            x / temps[s] as f64 + noise[s * vocab + v] as f64
        } else {
            x
        }
    };
    let mut wrong = vec![];
    for s in 0..w.len() {
        let (wi, gi) = (w[s] as i64, g[s] as i64);
        if wi == gi {
            continue;
        }
        let ok = gi >= 0 && (gi as usize) < vocab && {
            let (a, b) = (score(s, wi as usize), score(s, gi as usize));
            a - b <= INDEX_TIE * (a.abs() + 1.0)
        };
        if !ok {
            wrong.push(format!("row {s}: {gi} instead of {wi}"));
        }
    }
    let c = Check::measured(
        Layer::Ops,
        case.name(),
        case.dtype.name(),
        &case.group,
        wrong.len() as f64,
        0.0,
    );
    if wrong.is_empty() {
        c
    } else {
        c.fail(wrong.join(", "))
    }
}
