//! HIP graphs: a step's hundreds of launches recorded once and replayed
//! with one call, which is what makes small decode batches fast. The same
//! scheme as the cuda backend's CUDA graphs.
//!
//! The first run of an executable runs eagerly (so every lazily made
//! resource, such as scratch and GEMM plans, exists) and then records the
//! same run into a graph. A graph bakes in addresses, so it reads its inputs
//! from buffers of its own (each run copies the step's inputs there first)
//! and is replayed only while the state (the KV cache) is the same memory it
//! was recorded with; otherwise, or when recording fails, the step runs
//! eagerly, as it always does for shapes not captured.

use crate::gpu::{check, Gpu};
use crate::hip::{self, Runtime};
use crate::memory::{ptr, RocmMemory};
use std::sync::Arc;
use tessera_core::hal::{Executable, Tensor};
use tessera_core::{Error, Result};

struct GraphExec(hip::GraphExec, &'static Runtime);

// SAFETY: an instantiated graph may be launched from any thread; `Captured` is used by one thread at a time (`&mut self`).
unsafe impl Send for GraphExec {}

impl Drop for GraphExec {
    fn drop(&mut self) {
        // SAFETY: instantiated once, destroyed once.
        let _ = unsafe { (self.1.hipGraphExecDestroy)(self.0) };
    }
}

struct Recorded {
    exec: GraphExec,
    /// The graph's own copies of the step inputs.
    staged: Vec<Tensor>,
    /// Addresses of the state tensors the graph was recorded with.
    state_at: Vec<u64>,
    outputs: Vec<Tensor>,
}

enum Phase {
    /// Not run yet.
    Fresh,
    Recorded(Box<Recorded>),
    /// Recording failed: always eager.
    Eager,
}

pub struct Captured {
    gpu: Arc<Gpu>,
    inner: Box<dyn Executable>,
    phase: Phase,
}

impl Captured {
    pub fn new(gpu: Arc<Gpu>, inner: Box<dyn Executable>) -> Self {
        Captured {
            gpu,
            inner,
            phase: Phase::Fresh,
        }
    }

    fn record(&mut self, inputs: &[Tensor], state: &mut [Tensor]) -> Result<Recorded> {
        let staged = inputs
            .iter()
            .map(|t| {
                let buf = RocmMemory::alloc(&self.gpu, t.nbytes())?;
                Tensor::new(buf, 0, t.dtype, t.shape.clone())
            })
            .collect::<Result<Vec<_>>>()?;
        let state_at = state.iter().map(ptr).collect::<Result<Vec<_>>>()?;
        let stream = self.gpu.stream();
        let rt = self.gpu.runtime();
        self.gpu.bind()?;
        // SAFETY: our stream; capture ends below on every path.
        let rc = unsafe { (rt.hipStreamBeginCapture)(stream, hip::CAPTURE_MODE_THREAD_LOCAL) };
        check(rt, "hipStreamBeginCapture", rc)?;
        self.gpu.set_capturing(true);
        let ran = self.inner.run(&staged, state);
        let mut graph: hip::Graph = std::ptr::null_mut();
        // SAFETY: capture was begun above on this stream.
        let ended = unsafe { (rt.hipStreamEndCapture)(stream, &mut graph) };
        self.gpu.set_capturing(false);
        check(rt, "hipStreamEndCapture", ended)?;
        let outputs = match ran {
            Ok(o) => o,
            Err(e) => {
                // SAFETY: captured above, used by nothing else.
                let _ = unsafe { (rt.hipGraphDestroy)(graph) };
                return Err(e);
            }
        };
        let mut exec: hip::GraphExec = std::ptr::null_mut();
        // SAFETY: a graph just captured; destroyed right after instantiation.
        let rc = unsafe {
            (rt.hipGraphInstantiate)(
                &mut exec,
                graph,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                0,
            )
        };
        // SAFETY: as above.
        let _ = unsafe { (rt.hipGraphDestroy)(graph) };
        check(rt, "hipGraphInstantiate", rc)?;
        let exec = GraphExec(exec, rt);
        Ok(Recorded {
            exec,
            staged,
            state_at,
            outputs,
        })
    }

    fn replay(&self, r: &Recorded, inputs: &[Tensor]) -> Result<Vec<Tensor>> {
        if inputs.len() != r.staged.len() {
            return Err(Error::invalid(
                "a captured step got another number of inputs",
            ));
        }
        for (src, dst) in inputs.iter().zip(&r.staged) {
            if src.dtype != dst.dtype || src.shape != dst.shape {
                return Err(Error::invalid(format!(
                    "a captured step got input {} {:?}, it was recorded with {} {:?}",
                    src.dtype, src.shape, dst.dtype, dst.shape
                )));
            }
            self.gpu.copy(ptr(src)?, ptr(dst)?, src.nbytes())?;
        }
        self.gpu.bind()?;
        let rt = self.gpu.runtime();
        // SAFETY: an instantiated graph, on our stream.
        let rc = unsafe { (rt.hipGraphLaunch)(r.exec.0, self.gpu.stream()) };
        check(rt, "hipGraphLaunch", rc)?;
        Ok(r.outputs.clone())
    }
}

impl Executable for Captured {
    fn run(&mut self, inputs: &[Tensor], state: &mut [Tensor]) -> Result<Vec<Tensor>> {
        match &self.phase {
            Phase::Eager => self.inner.run(inputs, state),
            Phase::Recorded(r) => {
                let same = state.len() == r.state_at.len()
                    && state
                        .iter()
                        .zip(&r.state_at)
                        .all(|(t, &at)| ptr(t).is_ok_and(|p| p == at));
                if same {
                    self.replay(r, inputs)
                } else {
                    self.inner.run(inputs, state)
                }
            }
            Phase::Fresh => {
                let outputs = self.inner.run(inputs, state)?;
                self.phase = match self.record(inputs, state) {
                    Ok(r) => Phase::Recorded(Box::new(r)),
                    Err(e) => {
                        tracing::warn!(
                            "HIP graph capture failed, this step shape runs eagerly: {e}"
                        );
                        Phase::Eager
                    }
                };
                Ok(outputs)
            }
        }
    }
}
