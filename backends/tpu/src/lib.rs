//! tessera-tpu, in progress: the PJRT runtime the `tpu` backend will run on
//! (`pjrt.rs` over the hand-written FFI of `ffi.rs`), and where its plugin
//! comes from (`plugin.rs`). The backend registers itself once the graph
//! lowering to StableHLO exists; until then `--device tpu` says this build
//! has no tpu backend.

pub mod device;
mod ffi;
mod lower;
mod mlir;
pub mod pjrt;
pub mod plugin;
