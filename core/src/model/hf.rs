//! Hugging Face model folders: `config.json`, safetensors shards (mmap'd, with or
//! without `model.safetensors.index.json`), `tokenizer.json`, `tokenizer_config.json`.

use super::weights::WeightSource;
use crate::{DType, Error, HostTensor, Result};
use memmap2::Mmap;
use safetensors::tensor::{Dtype as StDtype, SafeTensors};
use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

struct Shard {
    path: PathBuf,
    mmap: Mmap,
}

/// Weights of a HF folder: every shard mapped, tensors read on demand.
pub struct HfWeights {
    dir: PathBuf,
    shards: Vec<Shard>,
    /// tensor name -> shard index
    index: HashMap<String, usize>,
}

impl HfWeights {
    pub fn open(dir: &Path) -> Result<Self> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| Error::io(dir, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(Error::model(
                dir.display(),
                "no *.safetensors files in the folder",
            ));
        }
        let mut shards = Vec::new();
        let mut index = HashMap::new();
        for path in files {
            let file = File::open(&path).map_err(|e| Error::io(&path, e))?;
            // SAFETY: the file is mapped read-only; tessera never writes model files.
            // A file truncated by another process while mapped is outside what any
            // mmap-based loader (safetensors, llama.cpp) can guard against.
            let mmap = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(&path, e))?;
            let st = SafeTensors::deserialize(&mmap).map_err(|e| {
                Error::model(path.display(), format!("not a valid safetensors file: {e}"))
            })?;
            for name in st.names() {
                index.insert(name.to_string(), shards.len());
            }
            shards.push(Shard { path, mmap });
        }
        Ok(HfWeights {
            dir: dir.to_path_buf(),
            shards,
            index,
        })
    }
}

impl WeightSource for HfWeights {
    fn describe(&self) -> String {
        format!(
            "{} ({} safetensors file(s))",
            self.dir.display(),
            self.shards.len()
        )
    }

    fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    fn load(&self, name: &str, dtype: DType) -> Result<HostTensor> {
        let shard = self
            .index
            .get(name)
            .map(|&i| &self.shards[i])
            .ok_or_else(|| Error::model(self.dir.display(), format!("tensor {name} is missing")))?;
        let bad = |m: String| Error::model(shard.path.display(), m);
        let st = SafeTensors::deserialize(&shard.mmap).map_err(|e| bad(e.to_string()))?;
        let view = st.tensor(name).map_err(|e| bad(format!("{name}: {e}")))?;
        let src = match view.dtype() {
            StDtype::F32 => DType::F32,
            StDtype::BF16 => DType::BF16,
            StDtype::F16 => DType::F16,
            other => {
                return Err(bad(format!(
                    "{name} has dtype {other:?}; tessera reads F32, BF16 and F16 safetensors"
                )))
            }
        };
        HostTensor::from_bytes(src, view.shape().to_vec(), view.data())?.to_dtype(dtype)
    }
}
