//! Running a model on a device: weights uploaded once (`device_model`), the KV
//! cache (`kv_cache`), one step of a ragged batch (`runner`), token choice
//! (`sampler`) and a single-sequence generation loop (`generate`).

pub mod device_model;
pub mod generate;
pub mod kv_cache;
pub mod runner;
pub mod sampler;

pub use device_model::DeviceModel;
pub use generate::{generate, GenerateOptions, GenerateStats};
pub use kv_cache::KvCache;
pub use runner::{Runner, StepBatch};
pub use sampler::SamplingParams;
