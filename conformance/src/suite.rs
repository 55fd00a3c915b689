//! The three layers behind one call, as `tessera conformance` and the vendor
//! macro run them.

use crate::ops::{self, Path};
use crate::report::{Check, Layer, Report};
use crate::{invariants, models};
use std::sync::Arc;
use tessera_core::hal::{open_device, Device};
use tessera_core::{Error, Result};

/// The reference backend's name. Naming it links the crate, so its
/// registration is always present where the suite is.
pub const REFERENCE: &str = tessera_reference::BACKEND_NAME;

#[derive(Clone, Debug)]
pub struct Options {
    /// Layers to run; all when empty.
    pub layers: Vec<Layer>,
    /// Only this op (ops layer).
    pub op: Option<String>,
    pub path: Path,
    /// Also compare random-weight models of real shapes with this device
    /// (models layer), for machines where no model file is at hand.
    pub peer: Option<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            layers: Layer::ALL.to_vec(),
            op: None,
            path: Path::Auto,
            peer: None,
        }
    }
}

/// Refuses an op name the suite does not know, listing the ones it does.
pub fn check_op_name(op: &str) -> Result<()> {
    if crate::ops::cases::OPS.contains(&op) {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "unknown op {op:?}; choose one of: {}",
            crate::ops::cases::OPS.join(", ")
        )))
    }
}

/// Opens `device` and runs the chosen layers on it.
pub fn run(device: &str, opts: &Options) -> Result<Report> {
    let dev = open_device(device, None)?;
    run_on(device, &dev, opts)
}

pub fn run_on(device: &str, dev: &Arc<dyn Device>, opts: &Options) -> Result<Report> {
    if let Some(op) = &opts.op {
        check_op_name(op)?;
    }
    let reference = open_device(REFERENCE, None)?;
    let layers = if opts.layers.is_empty() {
        Layer::ALL.to_vec()
    } else {
        opts.layers.clone()
    };
    let mut checks: Vec<Check> = vec![];
    for layer in layers {
        match layer {
            Layer::Ops => checks.extend(ops::check(
                dev.as_ref(),
                reference.as_ref(),
                opts.op.as_deref(),
                opts.path,
            )?),
            Layer::Models => {
                checks.extend(models::check(dev));
                if let Some(peer) = &opts.peer {
                    checks.extend(crate::peer::check(dev, peer));
                }
            }
            Layer::Engine => {
                checks.extend(invariants::check(dev));
                if crate::lora::supported(dev.as_ref()) {
                    checks.extend(crate::lora_engine::check(dev));
                }
            }
        }
    }
    Ok(Report {
        // `auto` says nothing in a published report: name what it picked.
        device: if device == "auto" {
            dev.name()
        } else {
            device.to_string()
        },
        backend: dev.name(),
        checks,
    })
}

/// Runs one layer and panics with the failing rows: the body of the tests
/// `backend_suite!` generates.
pub fn assert_layer(device: &str, layer: Layer) {
    match open_device(device, None) {
        Ok(dev) => assert_layer_on(device, &dev, layer),
        Err(e) => panic!("conformance {} on {device}: {e}", layer.name()),
    }
}

/// [`assert_layer`] on a device already open (an emulation, a device made
/// by a test).
pub fn assert_layer_on(name: &str, dev: &Arc<dyn Device>, layer: Layer) {
    let opts = Options {
        layers: vec![layer],
        ..Options::default()
    };
    let report = match run_on(name, dev, &opts) {
        Ok(r) => r,
        Err(e) => panic!("conformance {} on {name}: {e}", layer.name()),
    };
    let mut table = vec![];
    let _ = report.print(&mut table);
    eprintln!("{}", String::from_utf8_lossy(&table));
    if !report.passed() {
        fail_with(&report.summary(), report.failures());
    }
}

/// The tiny fixture models (and LoRA against PEFT where the device has the
/// ops) on `dev`, without the default model: what a slow device such as a
/// kernel emulation can afford. Panics with the failing rows.
pub fn assert_tiny_models(dev: &Arc<dyn Device>) {
    let checks = models::check_tiny(dev);
    for c in &checks {
        eprintln!(
            "{} {} {} {:?} {}",
            c.name, c.dtype, c.group, c.status, c.detail
        );
    }
    assert!(
        checks.len() >= 8,
        "the tiny fixtures ran: {} checks",
        checks.len()
    );
    let mut failed = checks
        .iter()
        .filter(|c| c.status == crate::Status::Fail)
        .peekable();
    if failed.peek().is_some() {
        fail_with("tiny models", failed);
    }
}

fn fail_with<'a>(summary: &str, failures: impl Iterator<Item = &'a Check>) -> ! {
    let failed: Vec<String> = failures
        .map(|c| format!("  {} {} {}: {}", c.name, c.dtype, c.group, c.detail))
        .collect();
    panic!("{summary}\nfailing checks:\n{}", failed.join("\n"));
}

/// The vendor kit: one line in a backend crate's `tests/conformance.rs`,
///
/// ```ignore
/// tessera_conformance::backend_suite!(tessera_acme::BACKEND_NAME);
/// ```
///
/// gives three cargo tests (ops, models, engine) that run the whole suite on
/// that backend. Naming the crate's constant links it, and so registers it.
#[macro_export]
macro_rules! backend_suite {
    ($backend:expr) => {
        #[test]
        fn conformance_ops() {
            $crate::assert_layer($backend, $crate::Layer::Ops);
        }
        #[test]
        fn conformance_models() {
            $crate::assert_layer($backend, $crate::Layer::Models);
        }
        #[test]
        fn conformance_engine() {
            $crate::assert_layer($backend, $crate::Layer::Engine);
        }
    };
}
