//! tessera's conformance suite: checks any backend against golden outputs of
//! independent implementations. This layer holds the model checks: Hugging Face
//! transformers' logits and greedy tokens for tiny random models and for the
//! default model (fixtures made by `oracle/make_fixtures.py`).

use safetensors::SafeTensors;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tessera_core::engine::{
    generate, DeviceModel, GenerateOptions, KvCache, Runner, SamplingParams, StepBatch,
};
use tessera_core::hal::open_device;
use tessera_core::model::llama::KvShape;
use tessera_core::model::ModelSource;
use tessera_core::{DType, Error, Result};

/// The committed fixtures.
pub fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

/// Normalised mean squared error: sum (a-b)^2 / sum a^2, with `a` the reference.
pub fn nmse(reference: &[f32], got: &[f32]) -> f64 {
    assert_eq!(
        reference.len(),
        got.len(),
        "nmse of slices of different lengths"
    );
    let (mut num, mut den) = (0f64, 0f64);
    for (&a, &b) in reference.iter().zip(got) {
        let (a, b) = (a as f64, b as f64);
        num += (a - b) * (a - b);
        den += a * a;
    }
    if !num.is_finite() {
        return f64::INFINITY;
    }
    num / den.max(f64::MIN_POSITIVE)
}

/// A golden file's tensors, widened: f32 tensors as f32, integer tensors as ids.
pub struct Golden {
    pub floats: HashMap<String, (Vec<usize>, Vec<f32>)>,
    pub ints: HashMap<String, Vec<i64>>,
}

impl Golden {
    pub fn load(path: &Path) -> Result<Golden> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let st = SafeTensors::deserialize(&bytes)
            .map_err(|e| Error::model(path.display(), e.to_string()))?;
        let mut g = Golden {
            floats: HashMap::new(),
            ints: HashMap::new(),
        };
        for (name, view) in st.tensors() {
            let data = view.data();
            match view.dtype() {
                safetensors::Dtype::F32 => {
                    let v = data
                        .chunks_exact(4)
                        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                        .collect();
                    g.floats.insert(name, (view.shape().to_vec(), v));
                }
                safetensors::Dtype::I64 => {
                    let v = data
                        .chunks_exact(8)
                        .map(|b| i64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
                        .collect();
                    g.ints.insert(name, v);
                }
                other => {
                    return Err(Error::model(
                        path.display(),
                        format!("{name}: unexpected dtype {other:?}"),
                    ))
                }
            }
        }
        Ok(g)
    }

    pub fn ids(&self, name: &str) -> Vec<u32> {
        self.ints
            .get(name)
            .unwrap_or_else(|| panic!("golden tensor {name} missing"))
            .iter()
            .map(|&x| x as u32)
            .collect()
    }

    pub fn floats(&self, name: &str) -> &(Vec<usize>, Vec<f32>) {
        self.floats
            .get(name)
            .unwrap_or_else(|| panic!("golden tensor {name} missing"))
    }
}

/// Loads `source` on `device` with room for `context` tokens.
pub fn runner(
    source: &ModelSource,
    device: &str,
    dtype: DType,
    context: usize,
    block_size: usize,
) -> Result<Runner> {
    let dev = open_device(device, None)?;
    let model = DeviceModel::load(dev.clone(), source, dtype)?;
    let shape = KvShape {
        num_blocks: context.div_ceil(block_size),
        block_size,
    };
    let kv = KvCache::new(dev.as_ref(), &source.config, model.dtypes.kv, shape)?;
    Ok(Runner::new(model, kv))
}

/// Logits at every position of `prompt`, run as one prefill step.
pub fn prompt_logits(runner: &mut Runner, prompt: &[u32]) -> Result<Vec<f32>> {
    let bs = runner.kv.shape.block_size;
    let n = prompt.len();
    let positions: Vec<u32> = (0..n as u32).collect();
    let batch = StepBatch {
        tokens: prompt.to_vec(),
        slots: positions.clone(),
        positions,
        query_start_loc: vec![0, n as u32],
        seq_lens: vec![n as u32],
        block_tables: vec![(0..n.div_ceil(bs) as u32).collect()],
        all_logits: true,
    };
    Ok(runner.step(&batch)?.to_f32_vec())
}

/// `steps` greedy tokens after `prompt`, never stopping at EOS.
pub fn greedy(runner: &mut Runner, prompt: &[u32], steps: usize) -> Result<Vec<u32>> {
    let opts = GenerateOptions {
        max_tokens: steps,
        sampling: SamplingParams::default(),
        stop_ids: vec![],
        prefill_chunk: 512,
    };
    let mut out = vec![];
    generate(runner, prompt, &opts, |id| {
        out.push(id);
        Ok(true)
    })?;
    Ok(out)
}

/// Per-position NMSE of `[rows, vocab]` logits; returns the worst row.
pub fn worst_row_nmse(reference: &[f32], got: &[f32], vocab: usize) -> (usize, f64) {
    reference
        .chunks(vocab)
        .zip(got.chunks(vocab))
        .map(|(r, g)| nmse(r, g))
        .enumerate()
        .fold((0, 0.0), |best, (i, e)| {
            if e > best.1 || e.is_nan() {
                (i, e)
            } else {
                best
            }
        })
}
