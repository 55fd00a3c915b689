//! The LoRA manager. `LoraManager` knows the adapters the engine serves (name
//! -> PEFT folder, checked when registered) and keeps the weights of the most
//! recently used ones in host memory (`max_cpu_loras`; older ones are read
//! from disk again when needed). `LoraSlots` is the scheduler's view of the
//! device: which adapter sits in each of the `max_loras` slots the model's
//! steps were compiled with.
//!
//! The scheduling rules (in `Scheduler::schedule`):
//! * every running sequence's adapter is in a slot, so a step never mixes more
//!   distinct adapters than there are slots;
//! * a waiting sequence whose adapter has no slot takes an empty slot, else the
//!   least recently used slot no running sequence needs (its adapter is evicted
//!   and written later again if needed);
//! * when every slot is in use, the first such sequence in queue order marks
//!   one slot *draining*: no newly admitted sequence may use it, so it empties
//!   as its sequences finish and the waiting adapter gets it. Sequences behind
//!   it whose adapters are in other slots (or none) go on meanwhile. That way
//!   a popular adapter never starves a rare one.

use super::block_manager::PrefixRoot;
use crate::model::config::ModelConfig;
use crate::model::lora::{load_adapter, LoraAdapter};
use crate::{Error, Result};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// An adapter registration; never reused, so a name loaded again after an
/// unload is another adapter (with its own prefix-cache entries).
pub type AdapterId = u64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoraConfig {
    /// Adapter slots on the device (`--max-loras`): distinct adapters in one step.
    pub max_loras: usize,
    /// Largest adapter rank accepted (`--max-lora-rank`); the slots' size.
    pub max_lora_rank: usize,
    /// Adapters whose weights stay in host memory (`--max-cpu-loras`).
    pub max_cpu_loras: usize,
}

impl Default for LoraConfig {
    fn default() -> Self {
        LoraConfig {
            max_loras: 4,
            max_lora_rank: 64,
            max_cpu_loras: 16,
        }
    }
}

impl LoraConfig {
    pub fn validate(&self) -> Result<()> {
        if self.max_loras == 0 || self.max_lora_rank == 0 || self.max_cpu_loras == 0 {
            return Err(Error::invalid(format!(
                "--max-loras ({}), --max-lora-rank ({}) and --max-cpu-loras ({}) must all be at least 1",
                self.max_loras, self.max_lora_rank, self.max_cpu_loras
            )));
        }
        Ok(())
    }
}

/// Where an adapter's weights come from when they are not in the host cache.
enum Source {
    Dir(PathBuf),
    /// Made in memory (tests, benchmarks): always kept.
    Memory(Arc<LoraAdapter>),
}

struct Known {
    name: String,
    source: Source,
    root: PrefixRoot,
}

pub struct LoraManager {
    pub config: LoraConfig,
    model: ModelConfig,
    /// Servable names; an unloaded name leaves here at once.
    by_name: BTreeMap<String, AdapterId>,
    /// Every registration, kept after an unload for the requests still using it.
    known: HashMap<AdapterId, Known>,
    /// Weights read from disk, least recently used first.
    host: VecDeque<(AdapterId, Arc<LoraAdapter>)>,
    next_id: AdapterId,
}

impl LoraManager {
    pub fn new(config: LoraConfig, model: &ModelConfig) -> Result<Self> {
        config.validate()?;
        Ok(LoraManager {
            config,
            model: model.clone(),
            by_name: BTreeMap::new(),
            known: HashMap::new(),
            host: VecDeque::new(),
            next_id: 1,
        })
    }

    fn check_name(&self, name: &str) -> Result<()> {
        if name.is_empty() || name.len() > 256 || name.chars().any(char::is_control) {
            return Err(Error::Request(format!(
                "adapter name {name:?} must be 1 to 256 printable characters"
            )));
        }
        if self.by_name.contains_key(name) {
            return Err(Error::Request(format!(
                "an adapter named {name:?} is already loaded; unload it first or pick another name"
            )));
        }
        Ok(())
    }

    /// Reads and checks the PEFT folder `dir` now, so a bad adapter is refused
    /// here and not on its first request; `root` is its prefix-cache namespace.
    pub fn register(&mut self, name: &str, dir: &Path, root: PrefixRoot) -> Result<AdapterId> {
        self.check_name(name)?;
        let adapter = load_adapter(name, dir, &self.model, self.config.max_lora_rank)?;
        let id = self.add(name, Source::Dir(dir.to_path_buf()), root);
        self.cache(id, Arc::new(adapter));
        Ok(id)
    }

    /// Registers an adapter made in memory (kept for the engine's life).
    pub fn register_adapter(
        &mut self,
        adapter: LoraAdapter,
        root: PrefixRoot,
    ) -> Result<AdapterId> {
        let name = adapter.name.clone();
        self.check_name(&name)?;
        if adapter.rank > self.config.max_lora_rank {
            return Err(Error::Request(format!(
                "adapter {name} has rank {}, more than --max-lora-rank {}",
                adapter.rank, self.config.max_lora_rank
            )));
        }
        Ok(self.add(&name, Source::Memory(Arc::new(adapter)), root))
    }

    fn add(&mut self, name: &str, source: Source, root: PrefixRoot) -> AdapterId {
        let id = self.next_id;
        self.next_id += 1;
        self.by_name.insert(name.to_string(), id);
        self.known.insert(
            id,
            Known {
                name: name.to_string(),
                source,
                root,
            },
        );
        id
    }

    /// Stops serving `name`. Requests already queued with it still finish.
    pub fn unregister(&mut self, name: &str) -> Result<AdapterId> {
        let id = self
            .by_name
            .remove(name)
            .ok_or_else(|| Error::Request(format!("no adapter named {name:?} is loaded")))?;
        self.host.retain(|(h, _)| *h != id);
        Ok(id)
    }

    /// Drops what is kept for adapters that were unloaded and that no
    /// sequence uses any more (`in_use` says which ids are still needed).
    pub fn forget_unused(&mut self, in_use: impl Fn(AdapterId) -> bool) {
        let servable: Vec<AdapterId> = self.by_name.values().copied().collect();
        self.known
            .retain(|id, _| servable.contains(id) || in_use(*id));
    }

    pub fn id(&self, name: &str) -> Option<AdapterId> {
        self.by_name.get(name).copied()
    }

    pub fn names(&self) -> Vec<String> {
        self.by_name.keys().cloned().collect()
    }

    pub fn name(&self, id: AdapterId) -> &str {
        self.known.get(&id).map_or("?", |k| k.name.as_str())
    }

    pub fn root(&self, id: AdapterId) -> PrefixRoot {
        self.known.get(&id).map_or(PrefixRoot::BASE, |k| k.root)
    }

    /// Adapters whose weights are in host memory now (cached or made there).
    pub fn num_in_host_memory(&self) -> usize {
        let made = self
            .known
            .values()
            .filter(|k| matches!(k.source, Source::Memory(_)))
            .count();
        self.host.len() + made
    }

    /// The weights of adapter `id`: from host memory, else read from its
    /// folder again (checked again: the folder may have changed).
    pub fn weights(&mut self, id: AdapterId) -> Result<Arc<LoraAdapter>> {
        let known = self
            .known
            .get(&id)
            .ok_or_else(|| Error::invalid(format!("LoRA adapter id {id} is not known")))?;
        let dir = match &known.source {
            Source::Memory(a) => return Ok(a.clone()),
            Source::Dir(d) => d.clone(),
        };
        if let Some(i) = self.host.iter().position(|(h, _)| *h == id) {
            let entry = self
                .host
                .remove(i)
                .ok_or_else(|| Error::invalid("host cache"))?;
            let weights = entry.1.clone();
            self.host.push_back(entry);
            return Ok(weights);
        }
        let name = known.name.clone();
        let adapter = Arc::new(load_adapter(
            &name,
            &dir,
            &self.model,
            self.config.max_lora_rank,
        )?);
        self.cache(id, adapter.clone());
        Ok(adapter)
    }

    fn cache(&mut self, id: AdapterId, adapter: Arc<LoraAdapter>) {
        self.host.retain(|(h, _)| *h != id);
        self.host.push_back((id, adapter));
        while self.host.len() > self.config.max_cpu_loras {
            self.host.pop_front();
        }
    }
}

/// What the scheduler may do with a waiting sequence's adapter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlotDecision {
    /// Its adapter is in this slot.
    Ready(usize),
    /// This slot is free to take (empty, or its adapter idle): write it there.
    Load(usize),
    /// No slot for it this step.
    Wait,
}

/// Which adapter is in each device slot.
#[derive(Clone, Debug)]
pub struct LoraSlots {
    slots: Vec<Option<AdapterId>>,
    last_used: Vec<u64>,
    clock: u64,
    /// The slot being emptied for a waiting adapter (see the module docs).
    draining: Option<usize>,
}

impl LoraSlots {
    pub fn new(n: usize) -> Self {
        LoraSlots {
            slots: vec![None; n],
            last_used: vec![0; n],
            clock: 0,
            draining: None,
        }
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    pub fn slot_of(&self, id: AdapterId) -> Option<usize> {
        self.slots.iter().position(|&s| s == Some(id))
    }

    pub fn adapter_in(&self, slot: usize) -> Option<AdapterId> {
        self.slots.get(slot).copied().flatten()
    }

    pub fn draining(&self) -> Option<usize> {
        self.draining
    }

    /// Marks `slot` used by this step (LRU order).
    pub fn touch(&mut self, slot: usize) {
        self.clock += 1;
        if let Some(t) = self.last_used.get_mut(slot) {
            *t = self.clock;
        }
    }

    /// Called before admitting: a draining slot that no running sequence
    /// uses any more is free again (the first waiting sequence takes it).
    pub fn settle(&mut self, busy: &HashMap<AdapterId, usize>) {
        if let Some(d) = self.draining {
            if self.users(d, busy) == 0 {
                self.draining = None;
            }
        }
    }

    fn users(&self, slot: usize, busy: &HashMap<AdapterId, usize>) -> usize {
        self.adapter_in(slot)
            .map_or(0, |a| busy.get(&a).copied().unwrap_or(0))
    }

    /// Where a waiting sequence of adapter `id` could run, given how many
    /// running sequences use each adapter. `Wait` may mark a slot draining.
    pub fn decide(&mut self, id: AdapterId, busy: &HashMap<AdapterId, usize>) -> SlotDecision {
        if let Some(s) = self.slot_of(id) {
            return if self.draining == Some(s) {
                SlotDecision::Wait
            } else {
                SlotDecision::Ready(s)
            };
        }
        let idle = (0..self.slots.len())
            .filter(|&s| self.users(s, busy) == 0)
            .min_by_key(|&s| (self.slots[s].is_some(), self.last_used[s]));
        if let Some(s) = idle {
            return SlotDecision::Load(s);
        }
        if self.draining.is_none() {
            // The slot with the fewest running sequences empties soonest.
            self.draining =
                (0..self.slots.len()).min_by_key(|&s| (self.users(s, busy), self.last_used[s]));
        }
        SlotDecision::Wait
    }

    /// Puts adapter `id` in `slot` (the engine writes its weights before the step).
    pub fn assign(&mut self, slot: usize, id: AdapterId) {
        if let Some(s) = self.slots.get_mut(slot) {
            *s = Some(id);
        }
        if self.draining == Some(slot) {
            self.draining = None;
        }
        self.touch(slot);
    }

    /// Empties the slot holding `id`, if any (its weights failed to load, or
    /// it was unloaded and nothing uses it).
    pub fn evict(&mut self, id: AdapterId) {
        if let Some(s) = self.slot_of(id) {
            self.slots[s] = None;
            if self.draining == Some(s) {
                self.draining = None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn busy(pairs: &[(AdapterId, usize)]) -> HashMap<AdapterId, usize> {
        pairs.iter().copied().collect()
    }

    #[test]
    fn slots_fill_empty_first_then_evict_least_recent_idle() {
        let mut s = LoraSlots::new(2);
        assert_eq!(s.decide(7, &busy(&[])), SlotDecision::Load(0));
        s.assign(0, 7);
        assert_eq!(s.decide(7, &busy(&[])), SlotDecision::Ready(0));
        assert_eq!(s.decide(8, &busy(&[])), SlotDecision::Load(1));
        s.assign(1, 8);
        s.touch(0); // 7 used more recently than 8
        assert_eq!(s.decide(9, &busy(&[])), SlotDecision::Load(1));
        // 8 is running: only 7's slot can go.
        assert_eq!(s.decide(9, &busy(&[(8, 1)])), SlotDecision::Load(0));
        assert_eq!(s.draining(), None);
    }

    #[test]
    fn a_full_house_drains_the_least_used_slot() {
        let mut s = LoraSlots::new(2);
        s.assign(0, 1);
        s.assign(1, 2);
        let running = busy(&[(1, 3), (2, 1)]);
        assert_eq!(s.decide(3, &running), SlotDecision::Wait);
        assert_eq!(s.draining(), Some(1));
        // New work for the draining adapter waits; the other slot goes on.
        assert_eq!(s.decide(2, &running), SlotDecision::Wait);
        assert_eq!(s.decide(1, &running), SlotDecision::Ready(0));
        // The drain sticks while its last sequence runs...
        s.settle(&running);
        assert_eq!(s.draining(), Some(1));
        // ...and once it is done the waiting adapter takes the slot.
        let done = busy(&[(1, 3)]);
        s.settle(&done);
        assert_eq!(s.draining(), None);
        assert_eq!(s.decide(3, &done), SlotDecision::Load(1));
        s.assign(1, 3);
        assert_eq!(s.slot_of(2), None);
        assert_eq!(s.slot_of(3), Some(1));
    }

    #[test]
    fn evict_empties_a_slot() {
        let mut s = LoraSlots::new(1);
        s.assign(0, 5);
        s.evict(5);
        assert_eq!(s.adapter_in(0), None);
        assert_eq!(s.decide(6, &busy(&[])), SlotDecision::Load(0));
    }

    #[test]
    fn manager_refuses_duplicates_and_unknown_names() {
        let cfg = crate::model::random::preset("smollm2-135m").expect("preset");
        let mut m = LoraManager::new(LoraConfig::default(), &cfg).unwrap();
        let a =
            crate::model::lora::random_adapter("a", &cfg, 2, &[crate::model::lora::Target::Q], 1);
        let id = m.register_adapter(a.clone(), PrefixRoot::BASE).unwrap();
        assert_eq!(m.id("a"), Some(id));
        let dup = m.register_adapter(a, PrefixRoot::BASE).unwrap_err();
        assert!(dup.to_string().contains("already loaded"), "{dup}");
        assert!(m.unregister("nope").is_err());
        m.unregister("a").unwrap();
        assert_eq!(m.id("a"), None);
        assert!(m.weights(id).is_ok(), "kept for requests still using it");
        m.forget_unused(|_| false);
        assert!(m.weights(id).is_err());
        let bad = LoraConfig {
            max_loras: 0,
            ..LoraConfig::default()
        };
        assert!(LoraManager::new(bad, &cfg).is_err());
    }

    #[test]
    fn manager_rereads_evicted_adapters_from_disk() {
        let cfg = crate::model::random::preset("smollm2-135m").expect("preset");
        let root = std::env::temp_dir().join(format!("tessera-lora-mgr-{}", std::process::id()));
        let config = LoraConfig {
            max_cpu_loras: 1,
            ..LoraConfig::default()
        };
        let mut m = LoraManager::new(config, &cfg).unwrap();
        let mut ids = vec![];
        for (i, name) in ["x", "y"].iter().enumerate() {
            let made = crate::model::lora::random_adapter(
                name,
                &cfg,
                2,
                &[crate::model::lora::Target::V],
                i as u64,
            );
            let dir = root.join(name);
            crate::model::lora::save_adapter(&made, &dir).unwrap();
            ids.push(m.register(name, &dir, PrefixRoot::BASE).unwrap());
        }
        assert_eq!(m.num_in_host_memory(), 1);
        let x = m.weights(ids[0]).unwrap();
        assert_eq!(x.name, "x");
        // Gone from disk and from memory: a clear error, not a panic.
        std::fs::remove_dir_all(root.join("y")).unwrap();
        let err = m.weights(ids[1]).unwrap_err().to_string();
        assert!(err.contains("does not exist"), "{err}");
        let _ = std::fs::remove_dir_all(&root);
    }
}
