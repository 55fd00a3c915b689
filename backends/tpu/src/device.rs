//! The tpu `Device`. Memory handed to the core is staged on the host, and a
//! region of it may also live on the device: a step's state (the KV cache)
//! stays there between steps, donated to each step's executable and replaced
//! by its output, so it crosses to the host only when the core reads or writes
//! those bytes itself (block copies), which first brings them home. Weights
//! are uploaded once per device; inputs and logits cross every step.

use crate::lower::lower;
use crate::pjrt::{Buffer as PjrtBuffer, Client, Executable as PjrtExecutable};
use std::sync::{Arc, Mutex, MutexGuard};
use tessera_core::hal::{
    Buffer, Capabilities, Device, DeviceMemory, Executable, Graph, KvLayout, MemoryInfo, Tensor,
    WeightMap,
};
use tessera_core::{DType, Error, Result};

/// A region of staged memory whose current value is on the device.
struct Resident {
    offset: usize,
    buf: PjrtBuffer,
}

/// Host-staged bytes, and the regions whose newer value is on the device.
pub struct StagedMemory {
    bytes: Mutex<Vec<u8>>,
    resident: Mutex<Vec<Resident>>,
    /// Bumped by every host write, so device copies of weights (LoRA slots
    /// are written after compiling) know when they are stale.
    version: std::sync::atomic::AtomicU64,
}

impl DeviceMemory for StagedMemory {
    fn len(&self) -> usize {
        self.lock().map_or(0, |b| b.len())
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

fn poisoned<T>(_: T) -> Error {
    Error::device("tpu", "a buffer's lock was poisoned by a panic")
}

impl StagedMemory {
    fn lock(&self) -> Result<MutexGuard<'_, Vec<u8>>> {
        self.bytes.lock().map_err(poisoned)
    }

    /// Brings every device-resident region back into the host bytes.
    fn bring_home(&self, stats: &Transfers) -> Result<()> {
        let mut resident = self.resident.lock().map_err(poisoned)?;
        let mut bytes = self.lock()?;
        for r in resident.drain(..) {
            let n = r.buf.dims()?.iter().product::<usize>() * r.buf.dtype()?.size();
            let dst = bytes
                .get_mut(r.offset..r.offset + n)
                .ok_or_else(|| Error::invalid("a resident region outside its buffer"))?;
            r.buf.download(dst)?;
            stats.down(n);
        }
        Ok(())
    }

    /// Takes the device copy of the region at `offset`, if there is one.
    fn take_resident(&self, offset: usize) -> Result<Option<PjrtBuffer>> {
        let mut resident = self.resident.lock().map_err(poisoned)?;
        Ok(resident
            .iter()
            .position(|r| r.offset == offset)
            .map(|i| resident.swap_remove(i).buf))
    }

    fn put_resident(&self, offset: usize, buf: PjrtBuffer) -> Result<()> {
        self.resident
            .lock()
            .map_err(poisoned)?
            .push(Resident { offset, buf });
        Ok(())
    }
}

/// Bytes moved between host and device, for tests and diagnostics.
#[derive(Default)]
pub struct Transfers {
    up: std::sync::atomic::AtomicU64,
    down: std::sync::atomic::AtomicU64,
}

impl Transfers {
    fn up(&self, n: usize) {
        self.up
            .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
    }
    fn down(&self, n: usize) {
        self.down
            .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
    }
    /// (uploaded, downloaded) bytes so far.
    pub fn totals(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (self.up.load(Relaxed), self.down.load(Relaxed))
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
type WeightCache = Mutex<Vec<(Buffer, usize, u64, Arc<PjrtBuffer>)>>;

/// How many times the host has written `t`'s buffer.
fn version(t: &Tensor) -> Result<u64> {
    Ok(staged(&t.buffer)?
        .version
        .load(std::sync::atomic::Ordering::Acquire))
}

/// Cheap to clone: every field is shared.
#[derive(Clone)]
pub struct TpuDevice {
    client: Arc<Client>,
    ordinal: usize,
    platform: String,
    weights: Arc<WeightCache>,
    transfers: Arc<Transfers>,
    /// Compiled executables on disk, by hash of program and plugin; `None` off.
    disk_cache: Option<std::path::PathBuf>,
    disk_hits: Arc<std::sync::atomic::AtomicU64>,
}

/// A 128-bit name for `text` (two independent 64-bit FNV-1a hashes).
fn program_key(text: &str, salt: &str) -> String {
    let h = |seed: u64| {
        text.bytes().chain(salt.bytes()).fold(seed, |h, b| {
            (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
        })
    };
    format!(
        "{:016x}{:016x}",
        h(0xcbf2_9ce4_8422_2325),
        h(0x84222325_cbf29ce4)
    )
}

impl TpuDevice {
    pub fn new(client: Arc<Client>, ordinal: usize) -> Result<Self> {
        let platform = client.platform_name()?;
        Ok(TpuDevice {
            client,
            ordinal,
            platform,
            weights: Arc::new(Mutex::new(vec![])),
            transfers: Arc::new(Transfers::default()),
            disk_cache: Some(tessera_core::model::cache_dir().join("xla-executables")),
            disk_hits: Arc::new(std::sync::atomic::AtomicU64::new(0)),
        })
    }

    /// Keeps compiled executables under `dir` (`None`: in memory only).
    pub fn with_disk_cache(mut self, dir: Option<std::path::PathBuf>) -> Self {
        self.disk_cache = dir;
        self
    }

    /// Executables loaded from the disk cache instead of compiled.
    pub fn disk_hits(&self) -> u64 {
        self.disk_hits.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Compiles `text`, or loads it from the disk cache, and stores new ones.
    /// A cache file that does not load (another plugin version, corruption)
    /// is replaced; a cache that cannot be written only costs the next start.
    fn compile_cached(&self, text: &str) -> Result<PjrtExecutable> {
        let salt = format!("{}:{:?}", self.platform, self.client.plugin_version());
        let path = self
            .disk_cache
            .as_ref()
            .map(|d| d.join(format!("{}.pjrt", program_key(text, &salt))));
        if let Some(bytes) = path.as_ref().and_then(|p| std::fs::read(p).ok()) {
            if let Ok(exe) = self.client.load_serialized(&bytes) {
                self.disk_hits
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                return Ok(exe);
            }
        }
        let exe = self.client.compile(text)?;
        if let (Some(path), Ok(bytes)) = (path, exe.serialize()) {
            let tmp = path.with_extension(format!("tmp{}", std::process::id()));
            let stored = path
                .parent()
                .map_or(Ok(()), std::fs::create_dir_all)
                .and_then(|()| std::fs::write(&tmp, &bytes))
                .and_then(|()| std::fs::rename(&tmp, &path));
            if let Err(e) = stored {
                tracing::warn!(
                    "tpu: cannot cache a compiled step in {}: {e}",
                    path.display()
                );
                let _ = std::fs::remove_file(&tmp);
            }
        }
        Ok(exe)
    }

    /// Bytes moved between host and device so far.
    pub fn transfers(&self) -> (u64, u64) {
        self.transfers.totals()
    }

    /// `t` on the device, uploaded once per (buffer, offset) and again after
    /// the host writes the buffer; with the version it was uploaded at.
    fn weight(&self, t: &Tensor) -> Result<(u64, Arc<PjrtBuffer>)> {
        let now = version(t)?;
        let mut cache = self
            .weights
            .lock()
            .map_err(|_| Error::device("tpu", "the weight cache's lock was poisoned"))?;
        let same = |buf: &Buffer, off: usize, b: &PjrtBuffer| {
            buf.same(&t.buffer)
                && off == t.offset
                && b.dims().is_ok_and(|d| d == t.shape)
                && b.dtype().is_ok_and(|d| d == t.dtype)
        };
        if let Some((_, _, v, b)) = cache
            .iter()
            .find(|(buf, off, v, b)| *v == now && same(buf, *off, b))
        {
            return Ok((*v, b.clone()));
        }
        cache.retain(|(buf, off, _, b)| !same(buf, *off, b));
        let b = Arc::new(self.upload(t)?);
        cache.push((t.buffer.clone(), t.offset, now, b.clone()));
        Ok((now, b))
    }

    fn upload(&self, t: &Tensor) -> Result<PjrtBuffer> {
        let bytes = read(t)?;
        self.transfers.up(bytes.len());
        self.client.upload(&bytes, t.dtype, &t.shape, self.ordinal)
    }

    /// A state tensor on the device: its resident copy, else uploaded.
    fn state(&self, t: &Tensor) -> Result<PjrtBuffer> {
        match staged(&t.buffer)?.take_resident(t.offset)? {
            Some(b) => Ok(b),
            None => self.upload(t),
        }
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
            resident: Mutex::new(vec![]),
            version: std::sync::atomic::AtomicU64::new(0),
        })))
    }

    fn upload(&self, dst: &Buffer, offset: usize, src: &[u8]) -> Result<()> {
        let mem = staged(dst)?;
        mem.bring_home(&self.transfers)?;
        let mut m = mem.lock()?;
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
        mem.version
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        Ok(())
    }

    fn download(&self, src: &Buffer, offset: usize, dst: &mut [u8]) -> Result<()> {
        let mem = staged(src)?;
        mem.bring_home(&self.transfers)?;
        let m = mem.lock()?;
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
        let started = std::time::Instant::now();
        let lowered = lower(graph)?;
        let exe = self
            .compile_cached(&lowered.text)
            .map_err(|e| with_program_head(e, &lowered.text))?;
        let first = graph.inputs.first().map(|&v| graph.ty(v).shape.clone());
        tracing::info!(
            "tpu: compiled a step for inputs {first:?} ({} ops, {} bytes of StableHLO) in {:.2}s",
            graph.nodes.len(),
            lowered.text.len(),
            started.elapsed().as_secs_f64()
        );
        let weights = lowered
            .weights
            .iter()
            .map(|name| {
                let t = weights
                    .get(name)
                    .ok_or_else(|| Error::invalid(format!("weight {name} is not bound")))?;
                let (v, b) = self.weight(t)?;
                Ok((t.clone(), v, b))
            })
            .collect::<Result<Vec<_>>>()?;
        let outputs = graph.outputs.iter().map(|&v| graph.ty(v).clone()).collect();
        Ok(Box::new(TpuExecutable {
            device: self.clone(),
            exe,
            weights,
            outputs,
        }))
    }
}

/// Adds the head of the program to a compile error, where the line numbers point.
fn with_program_head(e: Error, text: &str) -> Error {
    let head: String = text.lines().take(3).collect::<Vec<_>>().join(" | ");
    Error::device("tpu", format!("{e} (program starts: {head})"))
}

struct TpuExecutable {
    device: TpuDevice,
    exe: PjrtExecutable,
    /// Each bound weight, the version of its device copy, and the copy.
    weights: Vec<(Tensor, u64, Arc<PjrtBuffer>)>,
    outputs: Vec<tessera_core::hal::TensorType>,
}

impl Executable for TpuExecutable {
    fn run(&mut self, inputs: &[Tensor], state: &mut [Tensor]) -> Result<Vec<Tensor>> {
        // Weights the host wrote since (LoRA slots) go up again.
        for w in self.weights.iter_mut() {
            if version(&w.0)? != w.1 {
                let (v, b) = self.device.weight(&w.0)?;
                (w.1, w.2) = (v, b);
            }
        }
        let mut staged_in = inputs
            .iter()
            .map(|t| self.device.upload(t))
            .collect::<Result<Vec<_>>>()?;
        for t in state.iter() {
            staged_in.push(self.device.state(t)?);
        }
        let args: Vec<&PjrtBuffer> = staged_in
            .iter()
            .chain(self.weights.iter().map(|w| w.2.as_ref()))
            .collect();
        let results = self.exe.execute(&args)?;
        drop(staged_in);
        let mut results = results.into_iter();
        let mut tensors = vec![];
        for tt in &self.outputs {
            let buf = results
                .next()
                .ok_or_else(|| Error::invalid("the step returned too few outputs"))?;
            let mut host = vec![0u8; tt.nbytes()];
            buf.download(&mut host)?;
            self.device.transfers.down(host.len());
            let t = Tensor::new(
                self.device.alloc(host.len())?,
                0,
                tt.dtype,
                tt.shape.clone(),
            )?;
            write(&t, &host)?;
            tensors.push(t);
        }
        // The new caches stay on the device, in place of the donated ones.
        for t in state.iter() {
            let buf = results
                .next()
                .ok_or_else(|| Error::invalid("the step returned too few state outputs"))?;
            staged(&t.buffer)?.put_resident(t.offset, buf)?;
        }
        Ok(tensors)
    }
}
