//! The hardware-abstraction layer: what a backend implements and what the core
//! drives. Start with `device.rs` (the trait a backend implements), `graph.rs`
//! (the ops) and `kernels.rs` (per-op kernels for eager backends).

pub mod backend;
pub mod device;
pub mod graph;
pub mod interpreter;
pub mod kernels;
pub mod tensor;

pub use backend::{backends, open_device, BackendEntry, DeviceInfo, OpenOptions, Probe};
pub use device::{Capabilities, Device, Executable, KvLayout, MemoryInfo, WeightMap};
pub use graph::{
    AttentionParams, Graph, Op, RopeParams, RopeStyle, TensorType, ValueId, ValueKind,
};
pub use kernels::{AttentionBatch, Kernels};
pub use tensor::{Buffer, DeviceMemory, Tensor};
