//! The StableHLO lowering, op by op, through the conformance suite's ops
//! layer (one-op graphs compiled by the XLA CPU plugin, against the f64
//! reference backend).

use std::path::PathBuf;
use std::sync::Arc;
use tessera_conformance::{run_on, Layer, Options};
use tessera_core::hal::Device;
use tessera_tpu::device::TpuDevice;
use tessera_tpu::pjrt::{Client, Plugin};

fn device() -> Arc<dyn Device> {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../scripts/fetch-pjrt-plugin.sh"
    );
    let out = std::process::Command::new("bash")
        .arg(script)
        .output()
        .expect("fetch plugin");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    let client = Client::new(Plugin::load(&path).expect("plugin")).expect("client");
    Arc::new(TpuDevice::new(Arc::new(client), 0).expect("device"))
}

fn check(op: &str) {
    let dev = device();
    let opts = Options {
        layers: vec![Layer::Ops],
        op: Some(op.to_string()),
        ..Options::default()
    };
    let report = run_on("tpu", &dev, &opts).expect("suite runs");
    let mut table = vec![];
    let _ = report.print(&mut table);
    eprintln!("{}", String::from_utf8_lossy(&table));
    assert!(report.passed(), "{}", String::from_utf8_lossy(&table));
}

#[test]
fn elementwise_and_norms() {
    for op in ["add", "silu_mul", "rms_norm", "add_rms_norm"] {
        check(op);
    }
}

#[test]
fn linear_and_embedding() {
    for op in ["linear", "embedding"] {
        check(op);
    }
}

#[test]
fn rope() {
    check("rope");
}

#[test]
fn kv_write_and_selection() {
    for op in ["kv_write", "gather_last", "argmax", "sample"] {
        check(op);
    }
}

#[test]
fn paged_attention() {
    check("paged_attention");
}
