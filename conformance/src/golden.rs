//! Golden outputs of independent implementations (fixtures made by
//! `oracle/make_fixtures.py` with Hugging Face transformers), and the metric.

use safetensors::SafeTensors;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tessera_core::{Error, Result};

/// The committed fixtures.
pub fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

/// Normalised mean squared error: sum (a-b)^2 / sum a^2, with `a` the
/// reference. Slices of different lengths, NaN or Inf give infinity.
pub fn nmse(reference: &[f32], got: &[f32]) -> f64 {
    if reference.len() != got.len() {
        return f64::INFINITY;
    }
    let (mut num, mut den) = (0f64, 0f64);
    for (&a, &b) in reference.iter().zip(got) {
        let (a, b) = (a as f64, b as f64);
        num += (a - b) * (a - b);
        den += a * a;
    }
    if !num.is_finite() {
        return f64::INFINITY;
    }
    if den == 0.0 {
        // An all-zero reference: any difference at all is total.
        return if num == 0.0 { 0.0 } else { f64::INFINITY };
    }
    num / den
}

/// Per-position NMSE of `[rows, vocab]` logits; returns the worst row.
pub fn worst_row_nmse(reference: &[f32], got: &[f32], vocab: usize) -> (usize, f64) {
    if reference.len() != got.len() {
        return (0, f64::INFINITY);
    }
    reference
        .chunks(vocab.max(1))
        .zip(got.chunks(vocab.max(1)))
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

/// A golden file's tensors, widened: f32 tensors as f32, integer tensors as ids.
pub struct Golden {
    path: PathBuf,
    pub floats: HashMap<String, (Vec<usize>, Vec<f32>)>,
    pub ints: HashMap<String, Vec<i64>>,
}

impl Golden {
    pub fn load(path: &Path) -> Result<Golden> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let st = SafeTensors::deserialize(&bytes)
            .map_err(|e| Error::model(path.display(), e.to_string()))?;
        let mut g = Golden {
            path: path.to_path_buf(),
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
                        .map(|b| {
                            i64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
                        })
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

    fn missing(&self, name: &str) -> Error {
        Error::model(
            self.path.display(),
            format!("golden tensor {name} is missing"),
        )
    }

    pub fn ids(&self, name: &str) -> Result<Vec<u32>> {
        let v = self.ints.get(name).ok_or_else(|| self.missing(name))?;
        Ok(v.iter().map(|&x| x as u32).collect())
    }

    pub fn floats(&self, name: &str) -> Result<&[f32]> {
        Ok(&self.floats.get(name).ok_or_else(|| self.missing(name))?.1)
    }
}
