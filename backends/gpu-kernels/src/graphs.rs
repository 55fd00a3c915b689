//! Graphs (CUDA or HIP): a step's hundreds of launches recorded once and
//! replayed with one call, which is what makes small decode batches fast.
//!
//! The first run of an executable runs eagerly (so every lazily made
//! resource, such as scratch and GEMM plans, exists) and then records the
//! same run into a graph. A graph bakes in addresses, so it reads its inputs
//! from buffers of its own (each run copies the step's inputs there first)
//! and is replayed only while the state (the KV cache) is the same memory it
//! was recorded with; otherwise, or when recording fails, the step runs
//! eagerly, as it always does for shapes not captured.

use crate::device::StreamGpu;
use std::sync::{Arc, Mutex};
use tessera_core::hal::{Executable, Tensor};
use tessera_core::{Error, Result};

struct Recorded<E> {
    exec: E,
    /// The graph's own copies of the step inputs.
    staged: Vec<Tensor>,
    /// Addresses of the state tensors the graph was recorded with.
    state_at: Vec<u64>,
    outputs: Vec<Tensor>,
}

enum Phase<E> {
    /// Not run yet.
    Fresh,
    Recorded(Box<Recorded<E>>),
    /// Recording failed: always eager.
    Eager,
}

pub struct Captured<G: StreamGpu> {
    gpu: Arc<G>,
    inner: Box<dyn Executable>,
    phase: Phase<G::GraphExec>,
}

impl<G: StreamGpu> Captured<G> {
    pub fn new(gpu: Arc<G>, inner: Box<dyn Executable>) -> Self {
        Captured {
            gpu,
            inner,
            phase: Phase::Fresh,
        }
    }

    fn record(
        &mut self,
        inputs: &[Tensor],
        state: &mut [Tensor],
    ) -> Result<Recorded<G::GraphExec>> {
        let staged = inputs
            .iter()
            .map(|t| {
                let buf = self.gpu.alloc(t.nbytes())?;
                Tensor::new(buf, 0, t.dtype, t.shape.clone())
            })
            .collect::<Result<Vec<_>>>()?;
        let state_at = state
            .iter()
            .map(|t| self.gpu.tensor_address(t))
            .collect::<Result<Vec<_>>>()?;
        self.gpu.begin_capture()?;
        let ran = self.inner.run(&staged, state);
        let exec = self.gpu.end_capture(ran.is_ok())?;
        let outputs = ran?;
        let exec = exec.ok_or_else(|| Error::invalid("a kept capture gave no graph"))?;
        Ok(Recorded {
            exec,
            staged,
            state_at,
            outputs,
        })
    }

    fn replay(&self, r: &Recorded<G::GraphExec>, inputs: &[Tensor]) -> Result<Vec<Tensor>> {
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
            self.gpu.copy(
                self.gpu.tensor_address(src)?,
                self.gpu.tensor_address(dst)?,
                src.nbytes(),
            )?;
        }
        self.gpu.launch_graph(&r.exec)?;
        Ok(r.outputs.clone())
    }
}

impl<G: StreamGpu> Executable for Captured<G> {
    fn run(&mut self, inputs: &[Tensor], state: &mut [Tensor]) -> Result<Vec<Tensor>> {
        match &self.phase {
            Phase::Eager => self.inner.run(inputs, state),
            Phase::Recorded(r) => {
                let same = state.len() == r.state_at.len()
                    && state
                        .iter()
                        .zip(&r.state_at)
                        .all(|(t, &at)| self.gpu.tensor_address(t).is_ok_and(|p| p == at));
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
                        tracing::warn!("graph capture failed, this step shape runs eagerly: {e}");
                        Phase::Eager
                    }
                };
                Ok(outputs)
            }
        }
    }
}

/// Whether a graph is being recorded on a GPU's stream, and the frees asked
/// for meanwhile: a free during a recording would be recorded into the
/// graph (and a plain free waits for the device, which a capture forbids),
/// so it waits until the recording ends. `Some` while recording.
#[derive(Default)]
pub struct CaptureState(Mutex<Option<Vec<u64>>>);

impl CaptureState {
    pub fn is_capturing(&self) -> bool {
        self.0.lock().is_ok_and(|s| s.is_some())
    }

    /// Keeps `ptr` for later while a recording is on (true); false when the
    /// caller should free it now.
    pub fn defer_free(&self, ptr: u64) -> bool {
        match self.0.lock() {
            Ok(mut s) => s.as_mut().map(|v| v.push(ptr)).is_some(),
            Err(_) => false,
        }
    }

    /// Starts (`on`) or ends a recording; ending it hands back the frees to
    /// do now.
    pub fn set(&self, on: bool) -> Vec<u64> {
        let Ok(mut s) = self.0.lock() else {
            return vec![];
        };
        if on {
            s.get_or_insert_with(Vec::new);
            vec![]
        } else {
            s.take().unwrap_or_default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::CaptureState;

    #[test]
    fn frees_wait_for_the_end_of_a_recording() {
        let c = CaptureState::default();
        assert!(!c.is_capturing());
        assert!(!c.defer_free(1), "no recording: free at once");
        assert!(c.set(true).is_empty());
        assert!(c.is_capturing());
        assert!(c.defer_free(2) && c.defer_free(3));
        assert_eq!(c.set(false), [2, 3]);
        assert!(!c.is_capturing() && !c.defer_free(4));
    }
}
