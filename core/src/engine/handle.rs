//! The async edge: the engine runs on its own thread; a cloneable handle submits
//! requests and receives each one's stream of outputs over tokio channels.
//! Dropping a request's receiver aborts it and frees its blocks.

use super::engine::{Engine, RequestOutput};
use super::sampler::SamplingParams;
use crate::{Error, Result};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use tokio::sync::{mpsc as tmpsc, oneshot};

// `Add` is the common message; boxing it would only add an allocation.
#[allow(clippy::large_enum_variant)]
enum Command {
    Add {
        id: String,
        prompt: Vec<u32>,
        params: SamplingParams,
        priority: i32,
        /// The LoRA adapter's name; None for the base model.
        lora: Option<String>,
        sink: tmpsc::UnboundedSender<RequestOutput>,
        reply: oneshot::Sender<Result<()>>,
    },
    LoadLora {
        name: String,
        dir: PathBuf,
        reply: oneshot::Sender<Result<()>>,
    },
    UnloadLora {
        name: String,
        reply: oneshot::Sender<Result<()>>,
    },
    Abort(String),
    Shutdown,
}

#[derive(Clone)]
pub struct EngineHandle {
    tx: mpsc::Sender<Command>,
    gauges: Arc<Gauges>,
}

/// What the engine thread publishes after every iteration, for `/metrics`
/// and admission control, without a round trip to the engine thread.
#[derive(Default)]
struct Gauges {
    running: AtomicU64,
    waiting: AtomicU64,
    blocks_used: AtomicU64,
    blocks_total: AtomicU64,
    prefix_queries: AtomicU64,
    prefix_hits: AtomicU64,
    preemptions: AtomicU64,
    lora_loads: AtomicU64,
    alive: AtomicBool,
    /// The adapters served, by name (changes only on load and unload).
    adapters: Mutex<Vec<String>>,
}

/// A snapshot of the engine's state.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct EngineGauges {
    pub running: u64,
    pub waiting: u64,
    pub blocks_used: u64,
    pub blocks_total: u64,
    pub prefix_queries: u64,
    pub prefix_hits: u64,
    pub preemptions: u64,
    /// LoRA adapters written into device slots so far.
    pub lora_loads: u64,
    /// False once the engine thread has stopped.
    pub alive: bool,
}

impl Gauges {
    fn publish(&self, e: &Engine) {
        let b = e.block_stats();
        let set = |a: &AtomicU64, v: u64| a.store(v, Ordering::Relaxed);
        set(&self.running, e.num_running() as u64);
        set(&self.waiting, e.num_waiting() as u64);
        set(&self.blocks_used, b.used as u64);
        set(&self.blocks_total, b.num_blocks as u64);
        set(&self.prefix_queries, b.prefix_queries);
        set(&self.prefix_hits, b.prefix_hits);
        set(&self.preemptions, e.preemptions);
        set(&self.lora_loads, e.lora_loads);
    }

    fn publish_adapters(&self, e: &Engine) {
        if let Ok(mut names) = self.adapters.lock() {
            *names = e.lora_names();
        }
    }
}

impl EngineHandle {
    /// Starts the engine thread.
    pub fn spawn(engine: Engine) -> Result<(EngineHandle, std::thread::JoinHandle<()>)> {
        let (tx, rx) = mpsc::channel();
        let gauges = Arc::new(Gauges::default());
        gauges.publish(&engine);
        gauges.publish_adapters(&engine);
        gauges.alive.store(true, Ordering::Relaxed);
        let published = gauges.clone();
        let thread = std::thread::Builder::new()
            .name("tessera-engine".into())
            .spawn(move || {
                run(engine, rx, &published);
                published.alive.store(false, Ordering::Relaxed);
            })
            .map_err(|e| Error::invalid(format!("cannot start the engine thread: {e}")))?;
        Ok((EngineHandle { tx, gauges }, thread))
    }

    /// The engine's state as of its last iteration.
    pub fn gauges(&self) -> EngineGauges {
        let g = &self.gauges;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        EngineGauges {
            running: get(&g.running),
            waiting: get(&g.waiting),
            blocks_used: get(&g.blocks_used),
            blocks_total: get(&g.blocks_total),
            prefix_queries: get(&g.prefix_queries),
            prefix_hits: get(&g.prefix_hits),
            preemptions: get(&g.preemptions),
            lora_loads: get(&g.lora_loads),
            alive: g.alive.load(Ordering::Relaxed),
        }
    }

    /// The LoRA adapters served now, by name.
    pub fn lora_names(&self) -> Vec<String> {
        self.gauges
            .adapters
            .lock()
            .map(|n| n.clone())
            .unwrap_or_default()
    }

    /// Reads, checks and starts serving the PEFT adapter in `dir` as `name`.
    pub async fn load_lora(&self, name: &str, dir: PathBuf) -> Result<()> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::LoadLora {
            name: name.to_string(),
            dir,
            reply,
        })?;
        answer.await.map_err(|_| stopped())?
    }

    /// Stops serving adapter `name` (queued requests with it still finish).
    pub async fn unload_lora(&self, name: &str) -> Result<()> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::UnloadLora {
            name: name.to_string(),
            reply,
        })?;
        answer.await.map_err(|_| stopped())?
    }

    fn send(&self, cmd: Command) -> Result<()> {
        self.tx.send(cmd).map_err(|_| stopped())
    }

    /// Submits a request (with LoRA adapter `lora`, or the base model); the
    /// receiver yields its outputs, the last ones with a finish reason (one
    /// per sample). Refusals come back here as errors.
    pub async fn submit(
        &self,
        id: &str,
        prompt: Vec<u32>,
        params: SamplingParams,
        priority: i32,
        lora: Option<&str>,
    ) -> Result<tmpsc::UnboundedReceiver<RequestOutput>> {
        let (sink, stream) = tmpsc::unbounded_channel();
        let (reply, answer) = oneshot::channel();
        let cmd = Command::Add {
            id: id.to_string(),
            prompt,
            params,
            priority,
            lora: lora.map(str::to_string),
            sink,
            reply,
        };
        self.send(cmd)?;
        answer.await.map_err(|_| stopped())??;
        Ok(stream)
    }

    pub fn abort(&self, id: &str) {
        let _ = self.tx.send(Command::Abort(id.to_string()));
    }

    /// Asks the engine thread to finish; in-flight requests are aborted.
    pub fn shutdown(&self) {
        let _ = self.tx.send(Command::Shutdown);
    }
}

fn stopped() -> Error {
    Error::Request("the engine has stopped".into())
}

struct Sink {
    tx: tmpsc::UnboundedSender<RequestOutput>,
    /// Samples not finished yet.
    open: usize,
}

fn run(mut engine: Engine, rx: mpsc::Receiver<Command>, gauges: &Gauges) {
    let mut sinks: HashMap<String, Sink> = HashMap::new();
    loop {
        // Block while idle; otherwise take whatever arrived and keep stepping.
        let first = if engine.has_work() {
            match rx.try_recv() {
                Ok(c) => Some(c),
                Err(mpsc::TryRecvError::Empty) => None,
                Err(mpsc::TryRecvError::Disconnected) => Some(Command::Shutdown),
            }
        } else {
            Some(rx.recv().unwrap_or(Command::Shutdown))
        };
        let mut next = first;
        while let Some(cmd) = next.take() {
            match cmd {
                Command::Add {
                    id,
                    prompt,
                    params,
                    priority,
                    lora,
                    sink,
                    reply,
                } => {
                    let n = params.n;
                    let result =
                        engine.add_request_with(&id, prompt, params, priority, lora.as_deref());
                    if result.is_ok() {
                        sinks.insert(id, Sink { tx: sink, open: n });
                    }
                    let _ = reply.send(result);
                }
                // The new list is published before the reply, so a client's
                // next request after a load or unload sees it.
                Command::LoadLora { name, dir, reply } => {
                    let result = engine.load_lora(&name, &dir);
                    gauges.publish_adapters(&engine);
                    let _ = reply.send(result);
                }
                Command::UnloadLora { name, reply } => {
                    let result = engine.unload_lora(&name);
                    gauges.publish_adapters(&engine);
                    let _ = reply.send(result);
                }
                Command::Abort(id) => {
                    deliver(&mut sinks, engine.abort(&id));
                    sinks.remove(&id);
                }
                Command::Shutdown => {
                    let ids: Vec<String> = sinks.keys().cloned().collect();
                    for id in ids {
                        deliver(&mut sinks, engine.abort(&id));
                    }
                    return;
                }
            }
            next = rx.try_recv().ok();
        }
        // Clients that went away: abort their requests now, freeing blocks.
        let gone: Vec<String> = sinks
            .iter()
            .filter(|(_, s)| s.tx.is_closed())
            .map(|(id, _)| id.clone())
            .collect();
        for id in gone {
            engine.abort(&id);
            sinks.remove(&id);
        }
        if engine.has_work() {
            match engine.step() {
                Ok(outputs) => deliver(&mut sinks, outputs),
                Err(e) => tracing::error!("engine step failed: {e}"),
            }
        }
        gauges.publish(&engine);
    }
}

fn deliver(sinks: &mut HashMap<String, Sink>, outputs: Vec<RequestOutput>) {
    for o in outputs {
        let id = o.request_id.clone();
        let done = o.finish_reason.is_some();
        if let Some(s) = sinks.get_mut(&id) {
            let _ = s.tx.send(o);
            if done {
                s.open = s.open.saturating_sub(1);
                if s.open == 0 {
                    sinks.remove(&id);
                }
            }
        }
    }
}
