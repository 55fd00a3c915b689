//! tessera's conformance suite: proves a backend computes what the others do.
//! Three layers, one report (`tessera conformance --device X`):
//!
//! 1. **ops** (`ops/`): every op of the HAL, in every dtype the backend claims,
//!    on seeded random inputs over a grid of awkward shapes, against the f64
//!    reference backend; NMSE limits per op and dtype (`thresholds.rs`); NaN,
//!    writes outside an output and changes to inputs fail.
//! 2. **models** (`models.rs`): whole models against Hugging Face transformers'
//!    golden logits and greedy tokens (fixtures made by `oracle/make_fixtures.py`);
//!    with a peer device, random-weight models of real shapes against it (`peer.rs`).
//! 3. **engine** (`invariants.rs`, `lora_engine.rs`): batching, chunking,
//!    prefix caching, preemption, seeds and LoRA slot juggling never change
//!    what a request gets.
//!
//! `perf.rs` times the op grid, `support.rs` lists native ops, and
//! `backend_suite!` turns the whole suite into a backend crate's cargo tests.

mod golden;
mod harness;
pub mod invariants;
pub mod lora;
pub mod lora_engine;
pub mod models;
pub mod ops;
mod peer;
pub mod perf;
mod report;
mod suite;
pub mod support;
pub mod thresholds;

pub use golden::{fixtures_dir, nmse, worst_row_nmse, Golden};
pub use harness::{block_size, greedy, prompt_logits, runner, runner_on};
pub use report::{Check, Layer, Report, Status};
pub use suite::{
    assert_layer, assert_layer_on, assert_tiny_models, check_op_name, run, run_on, Options,
    REFERENCE,
};
