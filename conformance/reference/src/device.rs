//! The reference device: host memory behind the `Device` trait, and graphs
//! run op by op through the interpreter with the kernels of `ops.rs`.

use crate::memory::{self, memory};
use crate::ops::RefKernels;
use crate::tensors::ensure;
use crate::BACKEND_NAME;
use std::sync::Arc;
use tessera_core::hal::{
    self, Buffer, Capabilities, Device, Executable, Graph, Kernels, KvLayout, MemoryInfo, WeightMap,
};
use tessera_core::{DType, Result};

pub struct RefDevice {
    kernels: Arc<RefKernels>,
}

impl RefDevice {
    /// A device whose large linears use up to `threads` threads.
    pub fn new(threads: usize) -> Self {
        RefDevice {
            kernels: Arc::new(RefKernels::new(threads)),
        }
    }
}

/// Fails unless `len` bytes from `offset` lie within a buffer of `size` bytes.
fn check_range(what: &str, offset: usize, len: usize, size: usize) -> Result<()> {
    ensure(
        offset.checked_add(len).is_some_and(|end| end <= size),
        || format!("{what} of {len} bytes at {offset} overflows a {size}-byte buffer"),
    )
}

impl Device for RefDevice {
    fn name(&self) -> String {
        BACKEND_NAME.into()
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            weight_dtypes: vec![DType::F32, DType::BF16, DType::F16],
            activation_dtype: DType::F32,
            kv_dtypes: vec![DType::F32, DType::BF16, DType::F16],
            kv_layout: KvLayout::BlockHeadToken,
            block_sizes: vec![1, 2, 4, 8, 16, 32, 64, 128, 256],
            graph_capture: false,
            exact_shapes: true,
            host_memory: true,
        }
    }

    fn memory_info(&self) -> Result<MemoryInfo> {
        Ok(host_memory_info())
    }

    fn alloc(&self, bytes: usize) -> Result<Buffer> {
        memory::alloc(bytes)
    }

    fn upload(&self, dst: &Buffer, offset: usize, src: &[u8]) -> Result<()> {
        let mut bytes = memory(dst)?.lock()?;
        check_range("upload", offset, src.len(), bytes.len())?;
        bytes[offset..offset + src.len()].copy_from_slice(src);
        Ok(())
    }

    fn download(&self, src: &Buffer, offset: usize, dst: &mut [u8]) -> Result<()> {
        let bytes = memory(src)?.lock()?;
        check_range("download", offset, dst.len(), bytes.len())?;
        dst.copy_from_slice(&bytes[offset..offset + dst.len()]);
        Ok(())
    }

    fn copy(
        &self,
        src: &Buffer,
        src_offset: usize,
        dst: &Buffer,
        dst_offset: usize,
        bytes: usize,
    ) -> Result<()> {
        // Through a temporary: `src` and `dst` may be the same buffer, whose
        // lock cannot be taken twice, and the ranges may overlap.
        check_range("copy source", src_offset, bytes, src.len())?;
        check_range("copy destination", dst_offset, bytes, dst.len())?;
        let mut tmp = vec![0u8; bytes];
        self.download(src, src_offset, &mut tmp)?;
        self.upload(dst, dst_offset, &tmp)
    }

    fn compile(&self, graph: &Graph, weights: &WeightMap) -> Result<Box<dyn Executable>> {
        hal::interpreter::compile(self.kernels.clone(), graph, weights)
    }

    fn kernels(&self) -> Option<Arc<dyn Kernels>> {
        Some(self.kernels.clone())
    }
}

/// Host RAM from /proc/meminfo (MemAvailable counts as free); zeros where
/// that file is missing or unreadable.
pub fn host_memory_info() -> MemoryInfo {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let field = |name: &str| -> u64 {
        text.lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kb| kb.parse::<u64>().ok())
            .map_or(0, |kb| kb.saturating_mul(1024))
    };
    MemoryInfo {
        free_bytes: field("MemAvailable:"),
        total_bytes: field("MemTotal:"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::assert_close;
    use tessera_core::hal::{Graph, Tensor};

    #[test]
    fn registered_under_its_name_with_a_low_auto_score() {
        let entry = hal::backends()
            .into_iter()
            .find(|b| b.name == crate::BACKEND_NAME)
            .expect("registered");
        let probe = (entry.probe)();
        assert!(probe.available());
        assert_eq!(probe.score, 1);
        let dev = hal::open_device(crate::BACKEND_NAME, Some(2)).expect("open");
        assert_eq!(dev.name(), crate::BACKEND_NAME);
        assert!(dev.kernels().is_some());
        let second = format!("{}:1", crate::BACKEND_NAME);
        assert!(hal::open_device(&second, None).is_err());
    }

    #[test]
    fn transfers_check_bounds_and_copy_within_one_buffer() {
        let dev = RefDevice::new(1);
        let b = dev.alloc(8).expect("alloc");
        dev.upload(&b, 0, &[1, 2, 3, 4, 5, 6, 7, 8])
            .expect("upload");
        // Overlapping copy inside the same buffer: bytes 0..6 move to 2..8.
        dev.copy(&b, 0, &b, 2, 6).expect("copy");
        let mut got = [0u8; 8];
        dev.download(&b, 0, &mut got).expect("download");
        assert_eq!(got, [1, 2, 1, 2, 3, 4, 5, 6]);
        assert!(dev.upload(&b, 7, &[0, 0]).is_err());
        assert!(dev.download(&b, usize::MAX, &mut got).is_err());
        assert!(dev.copy(&b, 4, &b, 0, 5).is_err());
        assert!(dev.alloc(usize::MAX).is_err(), "an error, not an abort");
    }

    #[test]
    fn runs_a_graph_through_the_interpreter() {
        // ids [1, 0] -> rows [0, 1], [1, 0] of the table -> times w = [[2, 0],
        // [0, 3]] -> [0, 3], [2, 0] -> argmax [1, 0].
        let dev = RefDevice::new(1);
        let mut g = Graph::new();
        let ids = g.input("ids", DType::I32, vec![2]);
        let table = g.weight("table", DType::BF16, vec![2, 2]);
        let w = g.weight("w", DType::F16, vec![2, 2]);
        let x = g.embedding(table, ids, DType::F32);
        let y = g.linear(x, w, None);
        let tok = g.argmax(y);
        g.output(y);
        g.output(tok);
        let g = g.finish().expect("graph");
        let upload = |dtype: DType, values: &[f64]| {
            let t = Tensor::new(
                dev.alloc(values.len() * dtype.size()).expect("alloc"),
                0,
                dtype,
                vec![2, 2],
            )
            .expect("tensor");
            crate::tensors::store(&t, values).expect("store");
            t
        };
        let weights = WeightMap::from([
            (
                "table".to_string(),
                upload(DType::BF16, &[1.0, 0.0, 0.0, 1.0]),
            ),
            ("w".to_string(), upload(DType::F16, &[2.0, 0.0, 0.0, 3.0])),
        ]);
        let mut exe = dev.compile(&g, &weights).expect("compile");
        let ids =
            Tensor::new(dev.alloc(8).expect("alloc"), 0, DType::I32, vec![2]).expect("tensor");
        dev.upload(&ids.buffer, 0, &[1, 0, 0, 0, 0, 0, 0, 0])
            .expect("upload");
        let out = exe.run(&[ids], &mut []).expect("run");
        assert_close(&crate::testing::read(&out[0]), &[0.0, 3.0, 2.0, 0.0], 0.0);
        assert_eq!(crate::testing::read_ids(&out[1]), [1, 0]);
    }
}
