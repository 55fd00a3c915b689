//! Running a model on a device. `engine` serves many requests at once:
//! `scheduler` picks each step's work, `block_manager` accounts for the paged KV
//! cache (`kv_cache`), `lora` keeps adapters and their device slots, `runner`
//! executes one ragged batch, `sampler` and `stop` turn logits into tokens and text, `handle` is the async edge. `generate` is
//! the single-sequence loop of the CLI.

pub mod block_manager;
pub mod device_model;
#[allow(clippy::module_inception)] // engine/engine.rs: one noun per file, as the design asks
pub mod engine;
pub mod generate;
pub mod handle;
pub mod kv_cache;
pub mod lora;
pub mod runner;
pub mod sampler;
pub mod scheduler;
pub mod sequence;
pub mod stop;

pub use device_model::DeviceModel;
pub use engine::{Engine, EngineConfig, RequestOutput, TokenLogprob};
pub use generate::{generate, GenerateOptions, GenerateStats};
pub use handle::{EngineGauges, EngineHandle};
pub use kv_cache::KvCache;
pub use lora::{AdapterId, LoraConfig};
pub use runner::{Runner, StepBatch};
pub use sampler::{choice_seed, SamplingParams};
pub use sequence::{FinishReason, RequestId};
