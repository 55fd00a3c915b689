//! Turns a graph into an executable for an eager backend: plans memory once
//! (intermediates share buffers when their lifetimes do not overlap), then
//! runs the nodes in order through the backend's `Kernels`.

use super::device::{Executable, WeightMap};
use super::graph::{Graph, Node, Op, ValueId, ValueKind};
use super::kernels::{AttentionBatch, Kernels};
use super::tensor::Tensor;
use crate::{Error, Result};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Where a value's elements live.
#[derive(Clone, Debug)]
enum Home {
    Input(usize),
    State(usize),
    /// Fixed at compile time: a weight or an intermediate in a planned buffer.
    Fixed(Tensor),
}

pub struct Interpreted {
    kernels: Arc<dyn Kernels>,
    graph: Graph,
    homes: Vec<Home>,
    /// Time per op name, when `TESSERA_PROFILE` is set; printed when dropped.
    profile: Option<Vec<(&'static str, Duration, usize)>>,
}

pub fn compile(
    kernels: Arc<dyn Kernels>,
    graph: &Graph,
    weights: &WeightMap,
) -> Result<Box<dyn Executable>> {
    let n = graph.values.len();
    // Each value's root: the value whose storage it shares (itself unless it is a
    // reshape or the in-place result of an op such as kv_write).
    let mut root: Vec<usize> = (0..n).collect();
    for (i, v) in graph.values.iter().enumerate() {
        root[i] = match &v.kind {
            ValueKind::Reshape(src) => root[src.0 as usize],
            ValueKind::Node(ni, oi) => match graph.nodes[*ni].alias() {
                Some((o, inp)) if o == *oi => root[graph.nodes[*ni].inputs[inp].0 as usize],
                _ => i,
            },
            _ => i,
        };
    }

    // Last node that touches each root (its producer if nobody reads it);
    // graph outputs live to the end.
    let mut last_use = vec![0usize; n];
    for (ni, node) in graph.nodes.iter().enumerate() {
        for v in node.inputs.iter().chain(&node.outputs) {
            last_use[root[v.0 as usize]] = ni;
        }
    }
    for v in &graph.outputs {
        last_use[root[v.0 as usize]] = usize::MAX;
    }

    // Greedy buffer planning over the node order: a node's outputs take the
    // smallest free buffer that fits; buffers come back after their last use.
    let mut slot_of = vec![usize::MAX; n];
    let mut slots: Vec<usize> = vec![]; // capacity in bytes
    let mut free: Vec<usize> = vec![];
    for (ni, node) in graph.nodes.iter().enumerate() {
        for &out in &node.outputs {
            let r = root[out.0 as usize];
            if r != out.0 as usize {
                continue; // aliases an existing value
            }
            let need = graph.values[r].ty.nbytes().max(1);
            let best = free
                .iter()
                .enumerate()
                .filter(|(_, &s)| slots[s] >= need)
                .min_by_key(|(_, &s)| slots[s])
                .map(|(i, _)| i);
            slot_of[r] = match best {
                Some(i) => free.swap_remove(i),
                None => {
                    slots.push(need);
                    slots.len() - 1
                }
            };
        }
        for v in node.inputs.iter().chain(&node.outputs) {
            let r = root[v.0 as usize];
            if last_use[r] == ni && slot_of[r] != usize::MAX && !free.contains(&slot_of[r]) {
                free.push(slot_of[r]);
            }
        }
    }
    let buffers = slots
        .iter()
        .map(|&b| kernels.alloc(b))
        .collect::<Result<Vec<_>>>()?;

    let mut homes: Vec<Home> = Vec::with_capacity(n);
    for (i, v) in graph.values.iter().enumerate() {
        let home = match &v.kind {
            ValueKind::Input(_) => Home::Input(position(&graph.inputs, i)?),
            ValueKind::State(_) => Home::State(position(&graph.state, i)?),
            ValueKind::Weight(name) => {
                let w = weights
                    .get(name)
                    .ok_or_else(|| Error::invalid(format!("weight {name} was not uploaded")))?;
                if w.dtype != v.ty.dtype || w.shape != v.ty.shape {
                    return Err(Error::invalid(format!(
                        "weight {name} is {} {:?}, the graph wants {} {:?}",
                        w.dtype, w.shape, v.ty.dtype, v.ty.shape
                    )));
                }
                Home::Fixed(w.clone())
            }
            ValueKind::Reshape(_) | ValueKind::Node(..) if root[i] != i => match &homes[root[i]] {
                Home::Fixed(t) => Home::Fixed(Tensor {
                    shape: v.ty.shape.clone(),
                    ..t.clone()
                }),
                other => other.clone(),
            },
            ValueKind::Reshape(_) | ValueKind::Node(..) => Home::Fixed(Tensor::new(
                buffers[slot_of[i]].clone(),
                0,
                v.ty.dtype,
                v.ty.shape.clone(),
            )?),
        };
        homes.push(home);
    }
    let profile = std::env::var_os("TESSERA_PROFILE").map(|_| vec![]);
    Ok(Box::new(Interpreted {
        kernels,
        graph: graph.clone(),
        homes,
        profile,
    }))
}

fn position(list: &[ValueId], i: usize) -> Result<usize> {
    list.iter()
        .position(|v| v.0 as usize == i)
        .ok_or_else(|| Error::invalid(format!("value {i} is not listed")))
}

impl Interpreted {
    fn tensor(&self, v: ValueId, inputs: &[Tensor], state: &[Tensor]) -> Tensor {
        let ty = &self.graph.values[v.0 as usize].ty;
        match &self.homes[v.0 as usize] {
            Home::Fixed(t) => t.clone(),
            Home::Input(k) => Tensor {
                shape: ty.shape.clone(),
                ..inputs[*k].clone()
            },
            Home::State(k) => Tensor {
                shape: ty.shape.clone(),
                ..state[*k].clone()
            },
        }
    }

    fn run_node(&self, node: &Node, inputs: &[Tensor], state: &[Tensor]) -> Result<()> {
        let i: Vec<Tensor> = node
            .inputs
            .iter()
            .map(|&v| self.tensor(v, inputs, state))
            .collect();
        let o: Vec<Tensor> = node
            .outputs
            .iter()
            .map(|&v| self.tensor(v, inputs, state))
            .collect();
        dispatch(&*self.kernels, &node.op, &i, &o)
    }
}

/// Calls the kernel of `op` with the node's input and output tensors, in the
/// order the graph builder gives them (see `graph.rs`). Shared with the
/// conformance suite, which calls kernels on buffers it guards.
pub fn dispatch(k: &dyn Kernels, op: &Op, i: &[Tensor], o: &[Tensor]) -> Result<()> {
    let ((min_in, max_in, outs), (n_in, n_out)) = (op_arity(op), (i.len(), o.len()));
    if n_in < min_in || n_in > max_in || n_out != outs {
        return Err(Error::invalid(format!(
            "{} takes {min_in}..={max_in} inputs and {outs} outputs, got {n_in} and {n_out}",
            op.name()
        )));
    }
    match op {
        Op::Embedding => k.embedding(&i[0], &i[1], &o[0]),
        Op::Linear => k.linear(&i[0], &i[1], i.get(2), &o[0]),
        Op::RmsNorm { eps } => k.rms_norm(&i[0], &i[1], *eps, &o[0]),
        Op::AddRmsNorm { eps } => k.add_rms_norm(&i[0], &i[1], &i[2], *eps, &o[0], &o[1]),
        Op::Rope(p) => k.rope(&i[0], &i[1], p, &o[0]),
        Op::SiluMul => k.silu_mul(&i[0], &i[1], &o[0]),
        Op::Add => k.add(&i[0], &i[1], &o[0]),
        Op::KvWrite => k.kv_write(&i[0], &i[1], &i[2]),
        Op::PagedAttention(p) => {
            let batch = AttentionBatch {
                query_start_loc: &i[3],
                seq_lens: &i[4],
                block_tables: &i[5],
            };
            k.paged_attention(&i[0], &i[1], &i[2], &batch, p, &o[0])
        }
        Op::GatherLast => k.gather_last(&i[0], &i[1], &o[0]),
        Op::Argmax => k.argmax(&i[0], &o[0]),
        Op::Sample => k.sample(&i[0], &i[1], &i[2], &o[0]),
        Op::LoraShrink => k.lora_shrink(&i[0], &i[1], &i[2], &o[0]),
        Op::LoraExpand => k.lora_expand(&i[0], &i[1], &i[2], &i[3], &o[0]),
    }
}

/// (fewest inputs, most inputs, outputs) of each op.
fn op_arity(op: &Op) -> (usize, usize, usize) {
    match op {
        Op::Linear => (2, 3, 1),
        Op::AddRmsNorm { .. } => (3, 3, 2),
        // The output is the cache itself, updated in place.
        Op::KvWrite => (3, 3, 1),
        Op::PagedAttention(_) => (6, 6, 1),
        Op::Sample => (3, 3, 1),
        Op::LoraShrink => (3, 3, 1),
        Op::LoraExpand => (4, 4, 1),
        Op::Argmax => (1, 1, 1),
        _ => (2, 2, 1),
    }
}

fn check_bound(what: &str, want: &super::graph::TensorType, got: &Tensor) -> Result<()> {
    if want.dtype != got.dtype || want.shape != got.shape {
        return Err(Error::invalid(format!(
            "{what} is {} {:?}, the graph wants {} {:?}",
            got.dtype, got.shape, want.dtype, want.shape
        )));
    }
    Ok(())
}

impl Executable for Interpreted {
    fn run(&mut self, inputs: &[Tensor], state: &mut [Tensor]) -> Result<Vec<Tensor>> {
        if inputs.len() != self.graph.inputs.len() || state.len() != self.graph.state.len() {
            return Err(Error::invalid(format!(
                "run got {} inputs and {} state tensors, the graph has {} and {}",
                inputs.len(),
                state.len(),
                self.graph.inputs.len(),
                self.graph.state.len()
            )));
        }
        for (v, t) in self.graph.inputs.iter().zip(inputs) {
            check_bound(
                &format!("input {:?}", self.graph.value(*v).kind),
                self.graph.ty(*v),
                t,
            )?;
        }
        for (v, t) in self.graph.state.iter().zip(state.iter()) {
            check_bound(
                &format!("state {:?}", self.graph.value(*v).kind),
                self.graph.ty(*v),
                t,
            )?;
        }
        for node in &self.graph.nodes {
            let start = self.profile.is_some().then(Instant::now);
            self.run_node(node, inputs, state).map_err(|e| match e {
                Error::Invalid(m) => Error::Invalid(format!("{}: {m}", node.op.name())),
                other => other,
            })?;
            if let (Some(start), Some(p)) = (start, self.profile.as_mut()) {
                let name = node.op.name();
                match p.iter_mut().find(|(n, _, _)| *n == name) {
                    Some(entry) => {
                        entry.1 += start.elapsed();
                        entry.2 += 1;
                    }
                    None => p.push((name, start.elapsed(), 1)),
                }
            }
        }
        Ok(self
            .graph
            .outputs
            .iter()
            .map(|&v| self.tensor(v, inputs, state))
            .collect())
    }
}

impl Drop for Interpreted {
    fn drop(&mut self) {
        let Some(p) = self.profile.as_mut() else {
            return;
        };
        if p.is_empty() {
            return;
        }
        p.sort_by_key(|e| std::cmp::Reverse(e.1));
        let total: Duration = p.iter().map(|e| e.1).sum();
        let shape = self
            .graph
            .inputs
            .first()
            .map(|v| self.graph.ty(*v).shape.clone())
            .unwrap_or_default();
        eprintln!(
            "profile of a {} graph with first input {shape:?} (total {:.2} ms):",
            self.kernels.backend(),
            total.as_secs_f64() * 1e3
        );
        for (name, t, n) in p.iter() {
            let share = 100.0 * t.as_secs_f64() / total.as_secs_f64().max(1e-12);
            eprintln!(
                "  {name:<16} {:>9.3} ms {share:>5.1}%  {n} calls",
                t.as_secs_f64() * 1e3
            );
        }
    }
}
