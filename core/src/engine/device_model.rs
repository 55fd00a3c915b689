//! A model's weights on a device, uploaded once and shared by every compiled step.

use crate::hal::{Device, Tensor, WeightMap};
use crate::model::config::ModelConfig;
use crate::model::llama::{lora_name, lora_specs, weight_specs, DTypes, LoraShape};
use crate::model::lora::{LoraAdapter, Target};
use crate::model::weights::names;
use crate::model::ModelSource;
use crate::{DType, Error, HostTensor, Result};
use std::sync::Arc;

pub struct DeviceModel {
    pub config: ModelConfig,
    pub dtypes: DTypes,
    pub device: Arc<dyn Device>,
    pub weights: WeightMap,
    pub weight_bytes: usize,
    /// LoRA slots compiled into every step, once `enable_lora` made them:
    /// their number and the rank the steps use now (see `grow_lora_rank`).
    pub lora: Option<LoraShape>,
    /// The slots and rank the stacks' memory was sized for.
    pub lora_capacity: Option<LoraShape>,
}

/// The smallest rank LoRA steps run at; adapters of higher rank grow it in
/// powers of two up to the slots' capacity.
const FIRST_LORA_RANK: usize = 8;

impl DeviceModel {
    /// Uploads every weight of `src` converted to `weight_dtype`, one tensor at a time.
    pub fn load(device: Arc<dyn Device>, src: &ModelSource, weight_dtype: DType) -> Result<Self> {
        let caps = device.capabilities();
        if !caps.weight_dtypes.contains(&weight_dtype) {
            return Err(Error::Unsupported {
                backend: device.name(),
                what: format!("{weight_dtype} weights"),
            });
        }
        let kv = if caps.kv_dtypes.contains(&weight_dtype) {
            weight_dtype
        } else {
            caps.activation_dtype
        };
        let dtypes = DTypes {
            weight: weight_dtype,
            activation: caps.activation_dtype,
            kv,
        };
        let cfg = &src.config;
        if cfg.tie_word_embeddings && !src.weights.contains(names::EMBED) {
            return Err(Error::model(
                &src.name,
                "tied embeddings but no embedding table",
            ));
        }
        if !cfg.tie_word_embeddings && !src.weights.contains(names::LM_HEAD) {
            return Err(Error::model(
                &src.name,
                "no lm_head.weight and tie_word_embeddings is false",
            ));
        }
        let specs = weight_specs(cfg, dtypes);
        let need: usize = specs
            .iter()
            .map(|(_, s, d)| s.iter().product::<usize>() * d.size())
            .sum();
        let mem = device.memory_info()?;
        if mem.free_bytes > 0 && need as u64 > mem.free_bytes {
            let hint = if weight_dtype == DType::F32 {
                "; try --dtype bf16"
            } else {
                ""
            };
            return Err(Error::device(
                device.name(),
                format!(
                    "{} needs {:.1} GB for its {weight_dtype} weights but only {:.1} GB is free{hint}",
                    src.name,
                    need as f64 / 1e9,
                    mem.free_bytes as f64 / 1e9
                ),
            ));
        }
        let mut weights = WeightMap::new();
        let mut weight_bytes = 0;
        for (name, shape, dtype) in specs {
            let host = src.weights.load(&name, dtype)?;
            if host.shape != shape {
                return Err(Error::model(
                    &src.name,
                    format!(
                        "tensor {name} has shape {:?}, the config implies {shape:?}",
                        host.shape
                    ),
                ));
            }
            let bytes = host.as_bytes();
            let buf = device.alloc(bytes.len())?;
            device.upload(&buf, 0, bytes)?;
            weight_bytes += bytes.len();
            weights.insert(name, Tensor::new(buf, 0, dtype, shape)?);
        }
        Ok(DeviceModel {
            config: cfg.clone(),
            dtypes,
            device,
            weights,
            weight_bytes,
            lora: None,
            lora_capacity: None,
        })
    }

    /// Makes `shape.slots` empty adapter slots of rank up to `shape.rank` on
    /// every projection (zeros: a slot without an adapter changes nothing).
    /// Steps compiled after this take a per-token slot input.
    ///
    /// The LoRA ops cost in proportion to the rank the stacks are laid out
    /// with, and most adapters are far below `--max-lora-rank`: so on devices
    /// that run any shape (`exact_shapes`) the steps start at rank 8 and
    /// `grow_lora_rank` widens them when a bigger adapter arrives. Devices
    /// that compile per shape bucket start at the full rank instead (one
    /// compile of each bucket, never a second).
    pub fn enable_lora(&mut self, shape: LoraShape) -> Result<()> {
        if shape.slots == 0 || shape.rank == 0 {
            return Err(Error::invalid(
                "LoRA needs at least one slot of rank 1 or more",
            ));
        }
        let start = if self.device.capabilities().exact_shapes {
            shape.rank.min(FIRST_LORA_RANK)
        } else {
            shape.rank
        };
        let used = LoraShape {
            slots: shape.slots,
            rank: start,
        };
        let full = lora_specs(&self.config, self.dtypes, shape);
        for ((name, dims, dtype), (_, used_dims, _)) in
            full.into_iter()
                .zip(lora_specs(&self.config, self.dtypes, used))
        {
            let bytes = dims.iter().product::<usize>() * dtype.size();
            let buf = self.device.alloc(bytes)?;
            self.device.upload(&buf, 0, &vec![0u8; bytes])?;
            self.weights
                .insert(name, Tensor::new(buf, 0, dtype, used_dims)?);
        }
        self.lora = Some(used);
        self.lora_capacity = Some(shape);
        Ok(())
    }

    /// Widens the slots to hold an adapter of rank `rank`: the next power of
    /// two, at most the capacity. Every stack is rewritten in the wider
    /// layout in place (A gains zero rows, B zero columns, per slot), so the
    /// adapters already in slots stay as they are. Returns whether the
    /// layout changed: steps compiled before must then be dropped.
    pub fn grow_lora_rank(&mut self, rank: usize) -> Result<bool> {
        let (Some(used), Some(cap)) = (self.lora, self.lora_capacity) else {
            return Err(Error::invalid("LoRA slots were not enabled on this model"));
        };
        if rank <= used.rank {
            return Ok(false);
        }
        if rank > cap.rank {
            return Err(Error::Request(format!(
                "an adapter of rank {rank} does not fit slots of rank {} (raise --max-lora-rank)",
                cap.rank
            )));
        }
        let new = rank.next_power_of_two().min(cap.rank);
        let (old_r, slots) = (used.rank, used.slots);
        for l in 0..self.config.num_layers {
            for target in Target::ALL {
                let (input, output) = target.dims(&self.config);
                // A [slots, r, in]: rows of a slot stay rows; B [slots, out, r]:
                // each output row gains zero columns.
                for (half, rows, cols_old, cols_new, widen_rows) in [
                    ("a", input, old_r, new, true),
                    ("b", output, old_r, new, false),
                ] {
                    let name = lora_name(l, target, half);
                    let t = self
                        .weights
                        .get(&name)
                        .ok_or_else(|| Error::invalid(format!("no LoRA stack {name}")))?
                        .clone();
                    let size = t.dtype.size();
                    let mut old = vec![0u8; t.nbytes()];
                    self.device.download(&t.buffer, t.offset, &mut old)?;
                    let (dims, bytes) = if widen_rows {
                        // [slots, old_r, in] -> [slots, new, in]
                        let per_old = cols_old * rows * size;
                        let per_new = cols_new * rows * size;
                        let mut out = vec![0u8; slots * per_new];
                        for s in 0..slots {
                            out[s * per_new..s * per_new + per_old]
                                .copy_from_slice(&old[s * per_old..(s + 1) * per_old]);
                        }
                        (vec![slots, new, rows], out)
                    } else {
                        // [slots, out, old_r] -> [slots, out, new]
                        let (ro, rn) = (cols_old * size, cols_new * size);
                        let mut out = vec![0u8; slots * rows * rn];
                        for row in 0..slots * rows {
                            out[row * rn..row * rn + ro]
                                .copy_from_slice(&old[row * ro..(row + 1) * ro]);
                        }
                        (vec![slots, rows, new], out)
                    };
                    self.device.upload(&t.buffer, t.offset, &bytes)?;
                    self.weights.insert(
                        name,
                        Tensor::new(t.buffer.clone(), t.offset, t.dtype, dims)?,
                    );
                }
            }
        }
        self.lora = Some(LoraShape { slots, rank: new });
        Ok(true)
    }

    /// Writes `adapter` into slot `slot`: each target's `A` (rank rows, the
    /// rest zero) and `scaling · B` (rank columns, the rest zero); projections
    /// the adapter does not target are zeroed.
    pub fn load_lora_slot(&self, slot: usize, adapter: &LoraAdapter) -> Result<()> {
        let shape = self.lora_slot_check(slot)?;
        if adapter.rank > shape.rank {
            return Err(Error::Request(format!(
                "adapter {} has rank {}, the slots are laid out for rank {} now (grow_lora_rank \
                 first; the most is --max-lora-rank)",
                adapter.name, adapter.rank, shape.rank
            )));
        }
        for l in 0..self.config.num_layers {
            for target in Target::ALL {
                let (input, output) = target.dims(&self.config);
                let mut a = vec![0f32; shape.rank * input];
                let mut b = vec![0f32; output * shape.rank];
                if let Some(pair) = adapter.layers.get(&(l, target)) {
                    let (av, bv) = (pair.a.to_f32_vec(), pair.b.to_f32_vec());
                    let r = adapter.rank;
                    a[..r * input].copy_from_slice(&av[..r * input]);
                    for n in 0..output {
                        for j in 0..r {
                            b[n * shape.rank + j] = bv[n * r + j] * adapter.scaling;
                        }
                    }
                }
                self.write_slot(&lora_name(l, target, "a"), slot, a)?;
                self.write_slot(&lora_name(l, target, "b"), slot, b)?;
            }
        }
        Ok(())
    }

    /// Empties slot `slot` (its adapter no longer applies).
    pub fn clear_lora_slot(&self, slot: usize) -> Result<()> {
        self.lora_slot_check(slot)?;
        for l in 0..self.config.num_layers {
            for target in Target::ALL {
                for half in ["a", "b"] {
                    let name = lora_name(l, target, half);
                    let per_slot = self.slot_elems(&name)?;
                    self.write_slot(&name, slot, vec![0f32; per_slot])?;
                }
            }
        }
        Ok(())
    }

    fn lora_slot_check(&self, slot: usize) -> Result<LoraShape> {
        let shape = self
            .lora
            .ok_or_else(|| Error::invalid("LoRA slots were not enabled on this model"))?;
        if slot >= shape.slots {
            return Err(Error::invalid(format!(
                "LoRA slot {slot} of {} slots",
                shape.slots
            )));
        }
        Ok(shape)
    }

    fn slot_elems(&self, name: &str) -> Result<usize> {
        let t = self
            .weights
            .get(name)
            .ok_or_else(|| Error::invalid(format!("no LoRA stack {name}")))?;
        Ok(t.shape.iter().skip(1).product())
    }

    /// Uploads one slot's worth of f32 values into stack `name`, in its dtype.
    fn write_slot(&self, name: &str, slot: usize, values: Vec<f32>) -> Result<()> {
        let t = self
            .weights
            .get(name)
            .ok_or_else(|| Error::invalid(format!("no LoRA stack {name}")))?;
        let per_slot: usize = t.shape.iter().skip(1).product();
        if values.len() != per_slot {
            return Err(Error::invalid(format!(
                "{name}: {} values for a slot of {per_slot}",
                values.len()
            )));
        }
        let host = HostTensor::f32(t.shape[1..].to_vec(), values).to_dtype(t.dtype)?;
        let bytes = host.as_bytes();
        self.device
            .upload(&t.buffer, t.offset + slot * bytes.len(), bytes)
    }

    /// Bytes a decode step reads from the weights (the tied head is read twice:
    /// one embedding row, and the whole table as the output projection).
    pub fn decode_weight_bytes(&self) -> usize {
        self.weight_bytes
    }
}
