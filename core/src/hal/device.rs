//! A device: memory, transfers, capabilities and compilation of graphs.

use super::graph::Graph;
use super::kernels::Kernels;
use super::tensor::{Buffer, Tensor};
use crate::{DType, Result};
use std::collections::HashMap;
use std::sync::Arc;

pub trait Device: Send + Sync {
    /// `cpu`, `cuda:0`, ...
    fn name(&self) -> String;
    fn capabilities(&self) -> Capabilities;
    fn memory_info(&self) -> Result<MemoryInfo>;

    fn alloc(&self, bytes: usize) -> Result<Buffer>;
    fn upload(&self, dst: &Buffer, offset: usize, src: &[u8]) -> Result<()>;
    fn download(&self, src: &Buffer, offset: usize, dst: &mut [u8]) -> Result<()>;
    /// Copies `bytes` bytes between (or within) buffers of this device. The
    /// default goes through the host; backends override it with a device copy.
    fn copy(
        &self,
        src: &Buffer,
        src_offset: usize,
        dst: &Buffer,
        dst_offset: usize,
        bytes: usize,
    ) -> Result<()> {
        let mut tmp = vec![0u8; bytes];
        self.download(src, src_offset, &mut tmp)?;
        self.upload(dst, dst_offset, &tmp)
    }
    /// Waits until all queued work is done. Eager host backends are always done.
    fn synchronize(&self) -> Result<()> {
        Ok(())
    }

    /// Turns a graph into something that runs. `weights` binds the graph's weight
    /// values by name; the executable keeps them alive. Eager backends implement
    /// this as one call to `hal::interpreter::compile` with their `Kernels`.
    fn compile(&self, graph: &Graph, weights: &WeightMap) -> Result<Box<dyn Executable>>;

    /// The op kernels of an eager backend, so the conformance suite can call each
    /// one on buffers it guards with sentinels. Compiling backends keep `None`
    /// and are tested through one-op graphs instead.
    fn kernels(&self) -> Option<Arc<dyn Kernels>> {
        None
    }
}

/// Weights already on the device, by name.
pub type WeightMap = HashMap<String, Tensor>;

/// A compiled graph.
pub trait Executable: Send {
    /// Runs once. `inputs` follow `graph.inputs`; `state` follows `graph.state`
    /// (the KV cache) and is updated in place, or replaced by a backend that
    /// donates buffers. The returned tensors follow `graph.outputs` and stay valid
    /// until the next `run`.
    fn run(&mut self, inputs: &[Tensor], state: &mut [Tensor]) -> Result<Vec<Tensor>>;
}

#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct MemoryInfo {
    pub free_bytes: u64,
    pub total_bytes: u64,
}

/// How a backend stores one layer's K (or V) cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum KvLayout {
    /// `[num_blocks, num_kv_heads, block_size, head_dim]`: each head's tokens of a
    /// block are contiguous, so a decode step streams them.
    BlockHeadToken,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct Capabilities {
    /// Dtypes the weights may have (activations follow `activation_dtype`).
    pub weight_dtypes: Vec<DType>,
    /// Dtype of activations between ops.
    pub activation_dtype: DType,
    pub kv_dtypes: Vec<DType>,
    pub kv_layout: KvLayout,
    pub block_sizes: Vec<usize>,
    /// Whether a compiled graph can be captured and replayed (CUDA graphs).
    pub graph_capture: bool,
    /// True when compiling is cheap and shapes need no padding to buckets.
    pub exact_shapes: bool,
    /// Device memory is the host's RAM (cpu): the KV cache default is a fixed
    /// size rather than a fraction of what is free.
    pub host_memory: bool,
}
