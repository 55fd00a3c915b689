//! The suite catches what it claims to: a cpu backend with one planted bug
//! (one output element flipped, one element written past an output, an input
//! modified, an output element never written) fails exactly that op, and the
//! clean backend passes through both the kernel path and the one-op graph path.

use std::sync::Arc;
use tessera_conformance::ops::Path;
use tessera_conformance::{run_on, Layer, Options, Report, Status};
use tessera_core::hal::{
    self, open_device, AttentionBatch, AttentionParams, Buffer, Capabilities, Device, Executable,
    Graph, Kernels, MemoryInfo, RopeParams, Tensor, WeightMap,
};
use tessera_core::Result;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Bug {
    /// Negates the largest element of silu_mul's output.
    FlipSiluMul,
    /// Writes one f32 just past the end of rms_norm's output.
    RmsNormPastTheEnd,
    /// Overwrites the first element of linear's input x.
    LinearModifiesInput,
    /// Leaves the last element of paged_attention's output unwritten.
    AttentionSkipsLast,
}

struct PlantedKernels {
    inner: Arc<dyn Kernels>,
    dev: Arc<dyn Device>,
    bug: Bug,
}

impl PlantedKernels {
    fn poke(&self, t: &Tensor, byte_offset: usize, value: f32) -> Result<()> {
        self.dev
            .upload(&t.buffer, t.offset + byte_offset, &value.to_le_bytes())
    }
    fn peek(&self, t: &Tensor, byte_offset: usize) -> Result<f32> {
        let mut b = [0u8; 4];
        self.dev
            .download(&t.buffer, t.offset + byte_offset, &mut b)?;
        Ok(f32::from_le_bytes(b))
    }
}

impl Kernels for PlantedKernels {
    fn backend(&self) -> &str {
        "planted"
    }
    fn alloc(&self, bytes: usize) -> Result<Buffer> {
        self.inner.alloc(bytes)
    }
    fn embedding(&self, table: &Tensor, ids: &Tensor, out: &Tensor) -> Result<()> {
        self.inner.embedding(table, ids, out)
    }
    fn linear(&self, x: &Tensor, w: &Tensor, bias: Option<&Tensor>, out: &Tensor) -> Result<()> {
        self.inner.linear(x, w, bias, out)?;
        if self.bug == Bug::LinearModifiesInput {
            self.poke(x, 0, 42.0)?;
        }
        Ok(())
    }
    fn rms_norm(&self, x: &Tensor, w: &Tensor, eps: f32, out: &Tensor) -> Result<()> {
        self.inner.rms_norm(x, w, eps, out)?;
        if self.bug == Bug::RmsNormPastTheEnd {
            self.poke(out, out.nbytes(), 1.0)?;
        }
        Ok(())
    }
    fn rope(&self, x: &Tensor, positions: &Tensor, p: &RopeParams, out: &Tensor) -> Result<()> {
        self.inner.rope(x, positions, p, out)
    }
    fn silu_mul(&self, gate: &Tensor, up: &Tensor, out: &Tensor) -> Result<()> {
        self.inner.silu_mul(gate, up, out)?;
        if self.bug == Bug::FlipSiluMul {
            let (mut at, mut big) = (0, 0.0f32);
            for i in 0..out.numel() {
                let v = self.peek(out, 4 * i)?;
                if v.abs() > big.abs() {
                    (at, big) = (i, v);
                }
            }
            self.poke(out, 4 * at, -big)?;
        }
        Ok(())
    }
    fn add(&self, a: &Tensor, b: &Tensor, out: &Tensor) -> Result<()> {
        self.inner.add(a, b, out)
    }
    fn kv_write(&self, cache: &Tensor, new: &Tensor, slots: &Tensor) -> Result<()> {
        self.inner.kv_write(cache, new, slots)
    }
    fn paged_attention(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        batch: &AttentionBatch,
        p: &AttentionParams,
        out: &Tensor,
    ) -> Result<()> {
        if self.bug != Bug::AttentionSkipsLast || out.numel() == 0 {
            return self.inner.paged_attention(q, k, v, batch, p, out);
        }
        // Compute into scratch, then copy all but the last element.
        let scratch = Tensor::new(
            self.inner.alloc(out.nbytes())?,
            0,
            out.dtype,
            out.shape.clone(),
        )?;
        self.inner.paged_attention(q, k, v, batch, p, &scratch)?;
        self.dev.copy(
            &scratch.buffer,
            0,
            &out.buffer,
            out.offset,
            out.nbytes() - 4,
        )
    }
    fn gather_last(&self, x: &Tensor, qsl: &Tensor, out: &Tensor) -> Result<()> {
        self.inner.gather_last(x, qsl, out)
    }
    fn argmax(&self, logits: &Tensor, out: &Tensor) -> Result<()> {
        self.inner.argmax(logits, out)
    }
    fn add_rms_norm(
        &self,
        x: &Tensor,
        residual: &Tensor,
        w: &Tensor,
        eps: f32,
        out: &Tensor,
        residual_out: &Tensor,
    ) -> Result<()> {
        self.inner
            .add_rms_norm(x, residual, w, eps, out, residual_out)
    }
    fn sample(&self, logits: &Tensor, t: &Tensor, noise: &Tensor, out: &Tensor) -> Result<()> {
        self.inner.sample(logits, t, noise, out)
    }
    fn native_optional_ops(&self) -> &'static [&'static str] {
        self.inner.native_optional_ops()
    }
}

/// The cpu device with its kernels swapped for planted ones.
struct Planted {
    inner: Arc<dyn Device>,
    kernels: Arc<PlantedKernels>,
}

impl Device for Planted {
    fn name(&self) -> String {
        "planted".into()
    }
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    fn memory_info(&self) -> Result<MemoryInfo> {
        self.inner.memory_info()
    }
    fn alloc(&self, bytes: usize) -> Result<Buffer> {
        self.inner.alloc(bytes)
    }
    fn upload(&self, dst: &Buffer, offset: usize, src: &[u8]) -> Result<()> {
        self.inner.upload(dst, offset, src)
    }
    fn download(&self, src: &Buffer, offset: usize, dst: &mut [u8]) -> Result<()> {
        self.inner.download(src, offset, dst)
    }
    fn compile(&self, graph: &Graph, weights: &WeightMap) -> Result<Box<dyn Executable>> {
        hal::interpreter::compile(self.kernels.clone(), graph, weights)
    }
    fn kernels(&self) -> Option<Arc<dyn Kernels>> {
        Some(self.kernels.clone())
    }
}

fn planted(bug: Bug) -> Arc<dyn Device> {
    let inner = open_device(tessera_cpu::BACKEND_NAME, None).expect("cpu");
    let kernels = Arc::new(PlantedKernels {
        inner: inner.kernels().expect("cpu has kernels"),
        dev: inner.clone(),
        bug,
    });
    Arc::new(Planted { inner, kernels })
}

fn ops_report(dev: &Arc<dyn Device>, path: Path) -> Report {
    let opts = Options {
        layers: vec![Layer::Ops],
        op: None,
        path,
        peer: None,
    };
    run_on("planted", dev, &opts).expect("suite runs")
}

/// Asserts that exactly `op` fails, in every one of its cases, and that each
/// failure's detail contains `why`.
fn only_fails(bug: Bug, op: &str, why: &str) {
    let report = ops_report(&planted(bug), Path::Auto);
    let failing: Vec<_> = report.failures().collect();
    assert!(!failing.is_empty(), "{bug:?}: the suite missed it");
    for c in &failing {
        assert_eq!(
            c.name, op,
            "{bug:?}: {} {} failed too: {}",
            c.name, c.group, c.detail
        );
        assert!(
            c.detail.contains(why),
            "{bug:?}: detail {:?} lacks {why:?}",
            c.detail
        );
    }
    let cases = report
        .checks
        .iter()
        .filter(|c| c.name == op && c.status != Status::Skip)
        .count();
    assert_eq!(failing.len(), cases, "{bug:?}: only some {op} cases failed");
}

#[test]
fn a_flipped_output_element_fails_its_op() {
    only_fails(Bug::FlipSiluMul, "silu_mul", "instead of");
}

#[test]
fn a_write_past_an_output_is_caught_by_the_guard() {
    only_fails(
        Bug::RmsNormPastTheEnd,
        "rms_norm",
        "wrote past the end of output 0",
    );
}

#[test]
fn a_modified_input_is_caught() {
    only_fails(Bug::LinearModifiesInput, "linear", "modified input 0");
}

#[test]
fn an_unwritten_output_element_shows_as_nan() {
    only_fails(Bug::AttentionSkipsLast, "paged_attention", "NaN");
}

#[test]
fn the_clean_backend_passes_through_kernels_and_through_one_op_graphs() {
    let dev = open_device(tessera_cpu::BACKEND_NAME, None).expect("cpu");
    for path in [Path::Auto, Path::Graph] {
        let report = ops_report(&dev, path);
        assert!(
            report.passed(),
            "{path:?}: {:?}",
            report.failures().collect::<Vec<_>>()
        );
    }
}
