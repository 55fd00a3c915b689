//! The StableHLO lowering, op by op, through the conformance suite's ops
//! layer (one-op graphs compiled by the XLA CPU plugin, against the f64
//! reference backend); and the KV cache staying on the device across steps.

mod common;

use std::sync::Arc;
use tessera_conformance::{run_on, Layer, Options};
use tessera_core::hal::Device;
use tessera_tpu::device::TpuDevice;
use tessera_tpu::pjrt::{Client, Plugin};

fn tpu() -> TpuDevice {
    let path = common::plugin_path();
    let client = Client::new(Plugin::load(&path).expect("plugin")).expect("client");
    TpuDevice::new(Arc::new(client), 0).expect("device")
}

fn device() -> Arc<dyn Device> {
    Arc::new(tpu())
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

/// Decode steps move their inputs and logits, never the KV cache: it is
/// donated to each step and stays on the device.
#[test]
fn decode_steps_do_not_copy_the_kv_cache() {
    use tessera_core::engine::StepBatch;
    let tpu = Arc::new(tpu());
    let dev: Arc<dyn Device> = tpu.clone();
    let dir = tessera_conformance::fixtures_dir().join("tiny/qwen2_bias");
    let src = tessera_core::model::open(dir.to_str().expect("utf-8")).expect("fixture");
    let mut r = tessera_conformance::runner_on(&dev, &src, tessera_core::DType::F32, 64, 16)
        .expect("runner");
    let cache_bytes: usize = r.kv.tensors.iter().map(|t| t.nbytes()).sum();
    let prompt: Vec<u32> = (1..12).collect();
    let logits = tessera_conformance::prompt_logits(&mut r, &prompt).expect("prefill");
    let vocab = src.config.vocab_size;
    let mut next = argmax(&logits[(prompt.len() - 1) * vocab..]);
    let mut per_step = vec![];
    for pos in prompt.len()..prompt.len() + 4 {
        let before = tpu.transfers();
        let out = r
            .step(&StepBatch {
                tokens: vec![next],
                positions: vec![pos as u32],
                slots: vec![pos as u32],
                query_start_loc: vec![0, 1],
                seq_lens: vec![pos as u32 + 1],
                block_tables: vec![vec![0]],
                all_logits: false,
                lora_slots: vec![],
            })
            .expect("decode step")
            .to_f32_vec();
        next = argmax(&out);
        let after = tpu.transfers();
        per_step.push((after.0 - before.0) + (after.1 - before.1));
    }
    eprintln!("bytes moved per decode step: {per_step:?}; KV cache {cache_bytes} bytes");
    // The step's inputs (a few i32s) and one row of logits, give or take.
    let bound = (vocab * 4 + 4096) as u64;
    assert!(
        per_step.iter().all(|&b| b <= bound),
        "bytes moved per decode step {per_step:?}, bound {bound}, KV cache {cache_bytes}"
    );
    assert!(
        (cache_bytes as u64) > 4 * bound,
        "the test cache is too small to tell"
    );
}

fn argmax(row: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in row.iter().enumerate() {
        if x > row[best] {
            best = i;
        }
    }
    best as u32
}

/// The decode buckets compile ahead of time, and a step of a compiled shape
/// then runs without compiling.
#[test]
fn decode_buckets_precompile() {
    let dev = device();
    let dir = tessera_conformance::fixtures_dir().join("tiny/qwen2_bias");
    let src = tessera_core::model::open(dir.to_str().expect("utf-8")).expect("fixture");
    let mut r = tessera_conformance::runner_on(&dev, &src, tessera_core::DType::F32, 64, 16)
        .expect("runner");
    let shapes = r.decode_buckets(2, 2);
    assert_eq!(shapes.len(), 4);
    let mut seen = vec![];
    r.precompile(&shapes, |done, total, shape, secs| {
        assert!(secs >= 0.0);
        seen.push((done, total, shape.num_seqs, shape.max_blocks));
    })
    .expect("precompile");
    assert_eq!(
        seen,
        [(1, 4, 1, 1), (2, 4, 1, 2), (3, 4, 2, 1), (4, 4, 2, 2)]
    );
}

/// A step compiled once is loaded from the disk cache by the next device.
#[test]
fn compiled_steps_are_cached_on_disk() {
    let dir = std::env::temp_dir().join(format!("tessera-xla-cache-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let run = || {
        let tpu = Arc::new(tpu().with_disk_cache(Some(dir.clone())));
        let dev: Arc<dyn Device> = tpu.clone();
        let opts = Options {
            layers: vec![Layer::Ops],
            op: Some("silu_mul".into()),
            ..Options::default()
        };
        let report = run_on("tpu", &dev, &opts).expect("suite");
        assert!(report.passed());
        tpu.disk_hits()
    };
    assert_eq!(run(), 0, "a cold cache has nothing to load");
    assert!(std::fs::read_dir(&dir).map(|d| d.count()).unwrap_or(0) >= 3);
    assert_eq!(run(), 3, "every silu_mul case should load from disk");
    std::fs::remove_dir_all(&dir).ok();
}
