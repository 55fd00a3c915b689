//! Runs one op case on a device, the way ggml's test-backend-ops does: every
//! buffer it hands the backend has guard bytes on both sides, outputs start as
//! NaN (an element the kernel forgets to write shows), and inputs are read
//! back afterwards to prove the op left them alone.
//!
//! Eager backends are called kernel by kernel (`Device::kernels`) on buffers
//! the suite owns. Compiling backends get a one-op graph through
//! `Device::compile`; their outputs live in buffers the backend allocates, so
//! only inputs and state are guarded there.

use super::cases::OpCase;
use std::sync::Arc;
use tessera_core::hal::{
    interpreter, Buffer, Device, Executable, Graph, Kernels, Op, Tensor, WeightMap,
};
use tessera_core::{DType, Error, HostTensor, Result};

/// Bytes of guard on each side of every buffer.
const GUARD: usize = 256;
const GUARD_BYTE: u8 = 0xA5;

/// How the case reached the backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Path {
    /// `Device::kernels` when the backend has them, else a one-op graph.
    Auto,
    /// Always a one-op graph through `Device::compile`.
    Graph,
}

/// What came back: the outputs, and every memory rule the op broke.
pub struct Outcome {
    pub outputs: Vec<HostTensor>,
    pub violations: Vec<String>,
}

/// A host copy of a guarded buffer as uploaded.
struct Guarded {
    tensor: Tensor,
    bytes: Vec<u8>,
}

fn unwritten(dtype: DType, n: usize) -> Vec<u8> {
    let pattern: &[u8] = match dtype {
        DType::F32 => &0x7fc0_0000u32.to_le_bytes(),
        DType::BF16 | DType::F16 => &0x7fffu16.to_le_bytes(),
        DType::I32 => &i32::MIN.to_le_bytes(),
    };
    pattern
        .iter()
        .copied()
        .cycle()
        .take(n * dtype.size())
        .collect()
}

fn upload(dev: &dyn Device, dtype: DType, shape: &[usize], data: &[u8]) -> Result<Guarded> {
    let mut bytes = vec![GUARD_BYTE; GUARD];
    bytes.extend_from_slice(data);
    bytes.extend(std::iter::repeat_n(GUARD_BYTE, GUARD));
    let buffer = dev.alloc(bytes.len())?;
    dev.upload(&buffer, 0, &bytes)?;
    Ok(Guarded {
        tensor: Tensor::new(buffer, GUARD, dtype, shape.to_vec())?,
        bytes,
    })
}

fn download_all(dev: &dyn Device, b: &Buffer) -> Result<Vec<u8>> {
    let mut v = vec![0u8; b.len()];
    dev.download(b, 0, &mut v)?;
    Ok(v)
}

/// Names the first broken guard of `now` (a download of `g`'s buffer), if any;
/// with `whole`, any change inside the data counts too.
fn check(g: &Guarded, now: &[u8], what: &str, whole: bool) -> Option<String> {
    let data_end = g.bytes.len() - GUARD;
    let first = (0..now.len()).find(|&i| {
        let in_data = (GUARD..data_end).contains(&i);
        (whole || !in_data) && now[i] != g.bytes[i]
    })?;
    Some(if first < GUARD {
        format!("wrote {} bytes before {what}", GUARD - first)
    } else if first >= data_end {
        format!(
            "wrote past the end of {what} (byte {} after it)",
            first - data_end
        )
    } else {
        format!("modified {what} (byte {})", first - GUARD)
    })
}

/// A case uploaded to a device, ready to run any number of times.
pub struct Prepared<'a> {
    dev: &'a dyn Device,
    case: &'a OpCase,
    inputs: Vec<Guarded>,
    outputs: Vec<Guarded>,
    how: How,
}

enum How {
    Kernels(Arc<dyn Kernels>),
    Graph {
        exe: Box<dyn Executable>,
        inputs: Vec<Tensor>,
        state: Vec<Tensor>,
    },
}

pub fn prepare<'a>(dev: &'a dyn Device, case: &'a OpCase, path: Path) -> Result<Prepared<'a>> {
    let inputs = case
        .inputs
        .iter()
        .map(|h| upload(dev, h.dtype(), &h.shape, h.as_bytes()))
        .collect::<Result<Vec<_>>>()?;
    let kernels = match path {
        Path::Auto => dev.kernels(),
        Path::Graph => None,
    };
    let (how, outputs) = match kernels {
        Some(k) if case.in_place() => (How::Kernels(k), vec![]),
        Some(k) => {
            let outs = case
                .outputs
                .iter()
                .map(|t| {
                    let n = t.shape.iter().product();
                    upload(dev, t.dtype, &t.shape, &unwritten(t.dtype, n))
                })
                .collect::<Result<Vec<_>>>()?;
            (How::Kernels(k), outs)
        }
        None => (compile_graph(dev, case, &inputs)?, vec![]),
    };
    Ok(Prepared {
        dev,
        case,
        inputs,
        outputs,
        how,
    })
}

impl Prepared<'_> {
    /// Runs the op once and waits for it; returns the output tensors.
    pub fn run(&mut self) -> Result<Vec<Tensor>> {
        let outs = match &mut self.how {
            How::Kernels(k) => {
                let i: Vec<Tensor> = self.inputs.iter().map(|g| g.tensor.clone()).collect();
                let o: Vec<Tensor> = if self.case.in_place() {
                    vec![i[0].clone()]
                } else {
                    self.outputs.iter().map(|g| g.tensor.clone()).collect()
                };
                interpreter::dispatch(k.as_ref(), &self.case.op, &i, &o)?;
                o
            }
            How::Graph { exe, inputs, state } => exe.run(inputs, state)?,
        };
        self.dev.synchronize()?;
        if outs.len() != self.case.outputs.len() {
            return Err(Error::invalid(format!(
                "{} returned {} outputs, want {}",
                self.case.name(),
                outs.len(),
                self.case.outputs.len()
            )));
        }
        Ok(outs)
    }
}

/// Runs `case` once on `dev` and checks every guard.
pub fn run_case(dev: &dyn Device, case: &OpCase, path: Path) -> Result<Outcome> {
    let mut p = prepare(dev, case, path)?;
    let outputs = p.run()?;
    let mut violations = vec![];
    for (i, g) in p.inputs.iter().enumerate() {
        let now = download_all(dev, &g.tensor.buffer)?;
        let in_place = case.in_place() && i == 0;
        if let Some(v) = check(g, &now, &format!("input {i}"), !in_place) {
            violations.push(v);
        }
    }
    for (i, g) in p.outputs.iter().enumerate() {
        let now = download_all(dev, &g.tensor.buffer)?;
        if let Some(v) = check(g, &now, &format!("output {i}"), false) {
            violations.push(v);
        }
    }
    let outputs = outputs
        .iter()
        .map(|t| {
            let mut raw = vec![0u8; t.nbytes()];
            dev.download(&t.buffer, t.offset, &mut raw)?;
            HostTensor::from_bytes(t.dtype, t.shape.clone(), &raw)
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Outcome {
        outputs,
        violations,
    })
}

/// The case as a graph of one node: the KV caches are state, as in a model.
fn compile_graph(dev: &dyn Device, case: &OpCase, inputs: &[Guarded]) -> Result<How> {
    let is_state = |i: usize| match case.op {
        Op::KvWrite => i == 0,
        Op::PagedAttention(_) => i == 1 || i == 2,
        _ => false,
    };
    let mut g = Graph::new();
    let (mut run_inputs, mut state) = (vec![], vec![]);
    let ids: Vec<_> = inputs
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let (dtype, shape) = (h.tensor.dtype, h.tensor.shape.clone());
            if is_state(i) {
                state.push(h.tensor.clone());
                g.state(&format!("in{i}"), dtype, shape)
            } else {
                run_inputs.push(h.tensor.clone());
                g.input(&format!("in{i}"), dtype, shape)
            }
        })
        .collect();
    for o in g.node(case.op.clone(), ids, case.outputs.clone()) {
        g.output(o);
    }
    let exe = dev.compile(&g.finish()?, &WeightMap::new())?;
    Ok(How::Graph {
        exe,
        inputs: run_inputs,
        state,
    })
}
