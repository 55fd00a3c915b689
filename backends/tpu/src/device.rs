//! The tpu `Device`. Memory handed to the core is staged on the host; a
//! compiled step uploads its inputs and state, runs the whole graph as one
//! PJRT executable, and downloads outputs and state. Weights are uploaded
//! once, at compile. (Keeping the KV cache on the device between steps, by
//! donation, is the next step; `pjrt.rs` already supports it.)

use crate::lower::lower;
use crate::pjrt::{Buffer as PjrtBuffer, Client, Executable as PjrtExecutable};
use std::sync::{Arc, Mutex, MutexGuard};
use tessera_core::hal::{
    Buffer, Capabilities, Device, DeviceMemory, Executable, Graph, KvLayout, MemoryInfo, Tensor,
    WeightMap,
};
use tessera_core::{DType, Error, Result};

/// Host-staged bytes.
pub struct StagedMemory {
    bytes: Mutex<Vec<u8>>,
}

impl DeviceMemory for StagedMemory {
    fn len(&self) -> usize {
        self.lock().map_or(0, |b| b.len())
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

impl StagedMemory {
    fn lock(&self) -> Result<MutexGuard<'_, Vec<u8>>> {
        self.bytes
            .lock()
            .map_err(|_| Error::device("tpu", "a buffer's lock was poisoned by a panic"))
    }
}

fn staged(b: &Buffer) -> Result<&StagedMemory> {
    b.downcast::<StagedMemory>()
        .ok_or_else(|| Error::invalid("a buffer from another device was passed to the tpu backend"))
}

fn read(t: &Tensor) -> Result<Vec<u8>> {
    let m = staged(&t.buffer)?.lock()?;
    m.get(t.offset..t.offset + t.nbytes())
        .map(<[u8]>::to_vec)
        .ok_or_else(|| Error::invalid("tensor outside its buffer"))
}

fn write(t: &Tensor, bytes: &[u8]) -> Result<()> {
    let mut m = staged(&t.buffer)?.lock()?;
    let dst = m
        .get_mut(t.offset..t.offset + bytes.len())
        .ok_or_else(|| Error::invalid("tensor outside its buffer"))?;
    dst.copy_from_slice(bytes);
    Ok(())
}

/// Weights already on the device, shared by every executable compiled with
/// them (each step shape is its own executable). The `Buffer` clone keeps the
/// staged memory alive, so its address cannot be reused by another weight.
type WeightCache = Mutex<Vec<(Buffer, usize, Arc<PjrtBuffer>)>>;

pub struct TpuDevice {
    client: Arc<Client>,
    ordinal: usize,
    platform: String,
    weights: Arc<WeightCache>,
}

impl TpuDevice {
    pub fn new(client: Arc<Client>, ordinal: usize) -> Result<Self> {
        let platform = client.platform_name()?;
        Ok(TpuDevice {
            client,
            ordinal,
            platform,
            weights: Arc::new(Mutex::new(vec![])),
        })
    }

    /// `t` on the device, uploaded once per (buffer, offset).
    fn weight(&self, t: &Tensor) -> Result<Arc<PjrtBuffer>> {
        let mut cache = self
            .weights
            .lock()
            .map_err(|_| Error::device("tpu", "the weight cache's lock was poisoned"))?;
        if let Some((_, _, b)) = cache.iter().find(|(buf, off, b)| {
            buf.same(&t.buffer)
                && *off == t.offset
                && b.dims().is_ok_and(|d| d == t.shape)
                && b.dtype().is_ok_and(|d| d == t.dtype)
        }) {
            return Ok(b.clone());
        }
        let b = Arc::new(self.upload(t)?);
        cache.push((t.buffer.clone(), t.offset, b.clone()));
        Ok(b)
    }

    fn upload(&self, t: &Tensor) -> Result<PjrtBuffer> {
        self.client
            .upload(&read(t)?, t.dtype, &t.shape, self.ordinal)
    }
}

impl Device for TpuDevice {
    fn name(&self) -> String {
        format!("tpu:{} ({})", self.ordinal, self.platform)
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            weight_dtypes: vec![DType::F32, DType::BF16],
            activation_dtype: DType::F32,
            kv_dtypes: vec![DType::F32, DType::BF16],
            kv_layout: KvLayout::BlockHeadToken,
            block_sizes: vec![1, 2, 4, 8, 16, 32, 64, 128, 256],
            graph_capture: false,
            exact_shapes: false,
            host_memory: false,
        }
    }

    fn memory_info(&self) -> Result<MemoryInfo> {
        // The XLA CPU plugin reports no memory stats; staged memory is host RAM.
        Ok(MemoryInfo {
            free_bytes: 8 << 30,
            total_bytes: 8 << 30,
        })
    }

    fn alloc(&self, bytes: usize) -> Result<Buffer> {
        let mut v = Vec::new();
        v.try_reserve_exact(bytes)
            .map_err(|_| Error::device("tpu", format!("cannot stage {bytes} bytes")))?;
        v.resize(bytes, 0);
        Ok(Buffer::new(Arc::new(StagedMemory {
            bytes: Mutex::new(v),
        })))
    }

    fn upload(&self, dst: &Buffer, offset: usize, src: &[u8]) -> Result<()> {
        let mut m = staged(dst)?.lock()?;
        let end = offset
            .checked_add(src.len())
            .filter(|&e| e <= m.len())
            .ok_or_else(|| {
                Error::invalid(format!(
                    "upload of {} bytes at {offset} overflows",
                    src.len()
                ))
            })?;
        m[offset..end].copy_from_slice(src);
        Ok(())
    }

    fn download(&self, src: &Buffer, offset: usize, dst: &mut [u8]) -> Result<()> {
        let m = staged(src)?.lock()?;
        let s = offset
            .checked_add(dst.len())
            .and_then(|e| m.get(offset..e))
            .ok_or_else(|| {
                Error::invalid(format!(
                    "download of {} bytes at {offset} overflows",
                    dst.len()
                ))
            })?;
        dst.copy_from_slice(s);
        Ok(())
    }

    fn compile(&self, graph: &Graph, weights: &WeightMap) -> Result<Box<dyn Executable>> {
        let lowered = lower(graph)?;
        let exe = self
            .client
            .compile(&lowered.text)
            .map_err(|e| tracing_free_hint(e, &lowered.text))?;
        let weights = lowered
            .weights
            .iter()
            .map(|name| {
                let t = weights
                    .get(name)
                    .ok_or_else(|| Error::invalid(format!("weight {name} is not bound")))?;
                self.weight(t)
            })
            .collect::<Result<Vec<_>>>()?;
        let outputs = graph.outputs.iter().map(|&v| graph.ty(v).clone()).collect();
        Ok(Box::new(TpuExecutable {
            device: TpuDevice {
                client: self.client.clone(),
                ordinal: self.ordinal,
                platform: self.platform.clone(),
                weights: self.weights.clone(),
            },
            exe,
            weights,
            outputs,
        }))
    }
}

/// Adds the head of the program to a compile error, where the line numbers point.
fn tracing_free_hint(e: Error, text: &str) -> Error {
    let head: String = text.lines().take(3).collect::<Vec<_>>().join(" | ");
    Error::device("tpu", format!("{e} (program starts: {head})"))
}

struct TpuExecutable {
    device: TpuDevice,
    exe: PjrtExecutable,
    weights: Vec<Arc<PjrtBuffer>>,
    outputs: Vec<tessera_core::hal::TensorType>,
}

impl Executable for TpuExecutable {
    fn run(&mut self, inputs: &[Tensor], state: &mut [Tensor]) -> Result<Vec<Tensor>> {
        let staged_in = inputs
            .iter()
            .chain(state.iter())
            .map(|t| self.device.upload(t))
            .collect::<Result<Vec<_>>>()?;
        let args: Vec<&PjrtBuffer> = staged_in
            .iter()
            .chain(self.weights.iter().map(|w| w.as_ref()))
            .collect();
        let results = self.exe.execute(&args)?;
        let (outs, new_state) = results.split_at(self.outputs.len().min(results.len()));
        let mut tensors = vec![];
        for (buf, tt) in outs.iter().zip(&self.outputs) {
            let mut host = vec![0u8; tt.nbytes()];
            buf.download(&mut host)?;
            let t = Tensor::new(
                self.device.alloc(host.len())?,
                0,
                tt.dtype,
                tt.shape.clone(),
            )?;
            write(&t, &host)?;
            tensors.push(t);
        }
        for (buf, t) in new_state.iter().zip(state.iter()) {
            let mut host = vec![0u8; t.nbytes()];
            buf.download(&mut host)?;
            write(t, &host)?;
        }
        Ok(tensors)
    }
}
