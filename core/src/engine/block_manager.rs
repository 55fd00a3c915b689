//! Block accounting for the paged KV cache: which block ids a sequence holds,
//! reference counts, the free pool, automatic prefix caching and
//! copy-on-write. Pure bookkeeping; the device memory lives in `kv_cache`.
//!
//! # Design
//!
//! Every block is in exactly one of three places:
//! * **used**: ref count > 0, held by one or more block tables;
//! * **free**: ref count 0 and not in the prefix cache (an intrusive FIFO list);
//! * **cached**: ref count 0 but registered in the prefix cache, so a later
//!   `allocate` can still reuse its KV (an intrusive list in LRU order: the
//!   head is the least recently freed and is evicted first).
//!
//! Both lists are doubly linked through `prev`/`next` fields of the blocks, so
//! taking a block out of either (a prefix hit on a cached block, a fork of a
//! freed table) is O(1). Fresh blocks come from the free list first and only
//! then by evicting the head of the cached list.
//!
//! ## Prefix cache
//!
//! A full, computed block is identified by the chained hash
//! `H(hash of the previous block (a fixed seed for block 0), its tokens)`,
//! the key of `map`. Hashes may collide, so a registered block also stores its
//! tokens and the *entry id* of its parent: every registration gets a unique,
//! never reused id that stands for one exact token prefix. A lookup matches a
//! block only if its parent entry is the entry just matched (or the root) and
//! its tokens are equal, so by induction a hit always holds exactly the
//! requested prefix, whatever the hashes do.
//!
//! A block whose prefix is already registered by another block (two equal
//! prompts computed at the same time) is a *duplicate*: it keeps the map entry
//! of the other block (its `ident` is that entry id) and is listed in `dups`.
//! When the registered block is evicted while a duplicate is still in use, the
//! registration (entry id included) moves to the duplicate, so blocks
//! registered behind it stay reachable. A duplicate dropping to ref 0 refreshes
//! the LRU position of the block it duplicates, so a parent is never evicted
//! before its cached children.
//!
//! `cache_full_blocks` resumes after the last block of the table that it has
//! already processed ("sealed"), so every call costs O(new full blocks).

use std::collections::HashMap;

use crate::model::random::splitmix64;

pub type BlockId = u32;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlockStats {
    pub num_blocks: usize,
    /// Blocks with ref count > 0.
    pub used: usize,
    /// Blocks with ref count 0, cached ones included.
    pub free: usize,
    /// Free blocks still matchable in the prefix cache.
    pub cached_free: usize,
    /// Full blocks looked up in the prefix cache by successful `allocate` calls.
    pub prefix_queries: u64,
    /// Of those, the ones reused.
    pub prefix_hits: u64,
}

/// End of an intrusive list.
const NIL: u32 = u32::MAX;
/// Chain hash "before" block 0.
const ROOT_HASH: u64 = 0x5eed_b10c_ca11_ab1e;
/// Parent entry of block 0; real entry ids start at 1 (0 also means "none").
const ROOT_ENTRY: u64 = 0;

/// Where a sequence's chain of block hashes starts. The same tokens under
/// another LoRA adapter are other KV, so each adapter gets its own root
/// (`BlockManager::new_root`) and its blocks never match another's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PrefixRoot {
    hash: u64,
    entry: u64,
}

impl PrefixRoot {
    /// The base model's root.
    pub const BASE: PrefixRoot = PrefixRoot {
        hash: ROOT_HASH,
        entry: ROOT_ENTRY,
    };
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Place {
    Used,
    Free,
    Cached,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Block {
    refs: u32,
    place: Place,
    prev: u32,
    next: u32,
    /// Non-zero once the block is full, computed and processed by
    /// `cache_full_blocks` ("sealed"): the entry id of its exact prefix, its
    /// own if `registered`, else the one of the registered block it duplicates.
    ident: u64,
    /// `map[hash]` points at this block; its tokens are in `tokens`.
    registered: bool,
    /// Chain hash (valid while sealed).
    hash: u64,
    /// Chain hash of the previous block (registered blocks only).
    parent_hash: u64,
    /// Entry id of the previous block's prefix (registered blocks only).
    parent_entry: u64,
}

impl Block {
    const EMPTY: Block = Block {
        refs: 0,
        place: Place::Free,
        prev: NIL,
        next: NIL,
        ident: 0,
        registered: false,
        hash: 0,
        parent_hash: 0,
        parent_entry: 0,
    };

    fn unseal(&mut self) {
        self.ident = 0;
        self.registered = false;
        self.hash = 0;
        self.parent_hash = 0;
        self.parent_entry = 0;
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct List {
    head: u32,
    tail: u32,
    len: usize,
}

impl List {
    const EMPTY: List = List {
        head: NIL,
        tail: NIL,
        len: 0,
    };
}

fn list_push_back(blocks: &mut [Block], list: &mut List, b: BlockId) {
    let tail = list.tail;
    if let Some(blk) = blocks.get_mut(b as usize) {
        blk.prev = tail;
        blk.next = NIL;
    }
    match blocks.get_mut(tail as usize) {
        Some(t) => t.next = b,
        None => list.head = b,
    }
    list.tail = b;
    list.len += 1;
}

fn list_unlink(blocks: &mut [Block], list: &mut List, b: BlockId) {
    let Some(blk) = blocks.get_mut(b as usize) else {
        return;
    };
    let (prev, next) = (blk.prev, blk.next);
    blk.prev = NIL;
    blk.next = NIL;
    match blocks.get_mut(prev as usize) {
        Some(p) => p.next = next,
        None => list.head = next,
    }
    match blocks.get_mut(next as usize) {
        Some(n) => n.prev = prev,
        None => list.tail = prev,
    }
    list.len = list.len.saturating_sub(1);
}

/// Chained hash of one full block.
fn block_hash(parent: u64, tokens: &[u32]) -> u64 {
    let mut h = splitmix64(parent);
    for &t in tokens {
        h = splitmix64(h ^ u64::from(t));
    }
    h
}

#[derive(Clone, Debug)]
pub struct BlockManager {
    block_size: usize,
    prefix_caching: bool,
    blocks: Vec<Block>,
    /// `block_size` token ids per block; meaningful for registered blocks.
    tokens: Vec<u32>,
    /// Ref 0, not cached; taken from the head.
    free: List,
    /// Ref 0, cached; LRU order, evicted from the head.
    cached: List,
    /// Chain hash -> the registered block with that hash.
    map: HashMap<u64, BlockId>,
    /// Entry id -> used blocks duplicating the registered block of that entry.
    dups: HashMap<u64, Vec<BlockId>>,
    next_entry: u64,
    prefix_queries: u64,
    prefix_hits: u64,
    /// Registrations replaced because of a hash collision (or an unreachable
    /// entry); expected to stay 0.
    replaced: u64,
}

impl BlockManager {
    /// `num_blocks` is capped at `u32::MAX` (ids are `u32`, one value is the
    /// list terminator); a `block_size` of 0 is taken as 1.
    pub fn new(num_blocks: usize, block_size: usize, prefix_caching: bool) -> Self {
        let n = num_blocks.min(NIL as usize);
        let block_size = block_size.max(1);
        let mut blocks = vec![Block::EMPTY; n];
        let mut free = List::EMPTY;
        for b in 0..n {
            list_push_back(&mut blocks, &mut free, b as BlockId);
        }
        let tokens = if prefix_caching {
            vec![0; n.saturating_mul(block_size)]
        } else {
            Vec::new()
        };
        BlockManager {
            block_size,
            prefix_caching,
            blocks,
            tokens,
            free,
            cached: List::EMPTY,
            map: HashMap::new(),
            dups: HashMap::new(),
            next_entry: ROOT_ENTRY + 1,
            prefix_queries: 0,
            prefix_hits: 0,
            replaced: 0,
        }
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    pub fn num_blocks(&self) -> usize {
        self.blocks.len()
    }

    /// Blocks with ref count 0 (never-used or cached-but-evictable).
    pub fn num_free_blocks(&self) -> usize {
        self.free.len + self.cached.len
    }

    /// Blocks a sequence holding `len` tokens needs.
    pub fn blocks_for(&self, len: usize) -> usize {
        len.div_ceil(self.block_size)
    }

    /// Blocks for a new sequence whose tokens so far are `tokens` (a prompt, or
    /// prompt+output when a preempted sequence is recomputed). Reuses cached
    /// full blocks matching the longest prefix, but never the block holding the
    /// last token: at least one token is always left to compute (so the
    /// sequence gets logits) and a block that will be written is never shared.
    /// Returns (block table covering all of `tokens`, number of leading tokens
    /// already computed = hit blocks * block_size), or None if there are not
    /// enough free blocks (then nothing changes).
    pub fn allocate(&mut self, tokens: &[u32]) -> Option<(Vec<BlockId>, usize)> {
        self.allocate_in(PrefixRoot::BASE, tokens)
    }

    /// A fresh root for a prefix-cache namespace (a LoRA adapter). Its entry
    /// id is taken from the registration ids, so it is never reused.
    pub fn new_root(&mut self) -> PrefixRoot {
        let entry = self.next_entry;
        self.next_entry += 1;
        PrefixRoot {
            hash: splitmix64(ROOT_HASH ^ entry),
            entry,
        }
    }

    /// `allocate` with prefix hits only among blocks cached under `root`.
    pub fn allocate_in(
        &mut self,
        root: PrefixRoot,
        tokens: &[u32],
    ) -> Option<(Vec<BlockId>, usize)> {
        let bs = self.block_size;
        let need = self.blocks_for(tokens.len());
        let mut table: Vec<BlockId> = Vec::with_capacity(need);
        let mut queries = 0usize;
        if self.prefix_caching && !tokens.is_empty() {
            // Full blocks before the one holding the last token.
            queries = (tokens.len() - 1) / bs;
            let mut parent_hash = root.hash;
            let mut parent_entry = root.entry;
            for chunk in tokens.chunks_exact(bs).take(queries) {
                let h = block_hash(parent_hash, chunk);
                let Some(b) = self.lookup(h, parent_entry, chunk) else {
                    break;
                };
                table.push(b);
                parent_hash = h;
                parent_entry = self.blocks[b as usize].ident;
            }
        }
        let hits = table.len();
        // Hit blocks that are free now stop being available for fresh ones.
        let revived = table
            .iter()
            .filter(|&&b| self.blocks[b as usize].refs == 0)
            .count();
        let fresh = need - hits;
        if fresh > self.num_free_blocks() - revived {
            return None;
        }
        // Take the hits first so that eviction cannot pick one of them.
        for &b in &table {
            self.acquire(b);
        }
        for _ in 0..fresh {
            table.push(self.take_fresh()?);
        }
        self.prefix_queries += queries as u64;
        self.prefix_hits += hits as u64;
        Some((table, hits * bs))
    }

    /// Makes `table` (currently covering `cur_len` tokens) cover
    /// `new_len >= cur_len` tokens. If the last block is partial and shared
    /// (ref > 1) and new tokens will be written into it, it is replaced by a
    /// fresh block (copy-on-write): the returned list holds the (src, dst)
    /// block copies the caller must perform on the device before writing.
    /// None if not enough free blocks (then nothing changes).
    ///
    /// More generally every shared block of `table` from the one holding
    /// position `cur_len` on (up to the `new_len` coverage) is copied. A table
    /// holding an id out of range among those blocks also gives None.
    pub fn grow(
        &mut self,
        table: &mut Vec<BlockId>,
        cur_len: usize,
        new_len: usize,
    ) -> Option<Vec<(BlockId, BlockId)>> {
        let need = self.blocks_for(new_len);
        let mut cow: Vec<usize> = Vec::new();
        if new_len > cur_len {
            let end = need.min(table.len());
            for (i, &b) in table
                .iter()
                .enumerate()
                .take(end)
                .skip(cur_len / self.block_size)
            {
                let blk = self.blocks.get(b as usize)?;
                if blk.refs > 1 {
                    cow.push(i);
                }
            }
        }
        let extra = need.saturating_sub(table.len());
        if cow.len() + extra > self.num_free_blocks() {
            return None;
        }
        let mut copies = Vec::with_capacity(cow.len());
        for i in cow {
            let src = table[i];
            let dst = self.take_fresh()?;
            // refs > 1 checked above, so the source stays in use.
            self.blocks[src as usize].refs -= 1;
            table[i] = dst;
            copies.push((src, dst));
        }
        for _ in 0..extra {
            table.push(self.take_fresh()?);
        }
        Some(copies)
    }

    /// Records that `tokens[..computed]` of the sequence owning `table` now
    /// have their KV written: every FULL block among them gets its chained hash
    /// registered so later `allocate` calls can reuse it. Idempotent; a block
    /// already registered is skipped; if another block already holds the same
    /// prefix, the existing mapping is kept (this block becomes its duplicate).
    pub fn cache_full_blocks(&mut self, table: &[BlockId], tokens: &[u32], computed: usize) {
        self.cache_full_blocks_in(PrefixRoot::BASE, table, tokens, computed)
    }

    /// `cache_full_blocks` for a sequence whose chain starts at `root`.
    pub fn cache_full_blocks_in(
        &mut self,
        root: PrefixRoot,
        table: &[BlockId],
        tokens: &[u32],
        computed: usize,
    ) {
        if !self.prefix_caching {
            return;
        }
        let bs = self.block_size;
        let full = (computed.min(tokens.len()) / bs).min(table.len());
        // Resume after the last block already processed.
        let mut start = full;
        while start > 0 {
            match self.blocks.get(table[start - 1] as usize) {
                Some(blk) if blk.ident != 0 => break,
                Some(_) => start -= 1,
                None => return,
            }
        }
        let (mut parent_hash, mut parent_entry) = match start {
            0 => (root.hash, root.entry),
            _ => {
                let blk = self.blocks[table[start - 1] as usize];
                (blk.hash, blk.ident)
            }
        };
        for (i, &b) in table.iter().enumerate().take(full).skip(start) {
            let Some(blk) = self.blocks.get(b as usize).copied() else {
                return;
            };
            if blk.refs == 0 {
                // Not held by anyone: the caller's table is stale.
                return;
            }
            if blk.ident != 0 {
                // Already processed (only reachable with an inconsistent
                // caller); go on from it.
                parent_hash = blk.hash;
                parent_entry = blk.ident;
                continue;
            }
            let Some(toks) = tokens.get(i * bs..(i + 1) * bs) else {
                return;
            };
            let h = block_hash(parent_hash, toks);
            match self.map.get(&h).copied() {
                Some(o) if self.matches(o, parent_entry, toks) => {
                    // Same prefix as a registered block: keep that mapping.
                    let e = self.blocks[o as usize].ident;
                    let blk = &mut self.blocks[b as usize];
                    blk.ident = e;
                    blk.hash = h;
                    self.dups.entry(e).or_default().push(b);
                }
                other => {
                    if let Some(o) = other {
                        // A different prefix under the same hash.
                        self.drop_registration(o);
                        self.replaced += 1;
                    }
                    self.register(b, h, parent_hash, parent_entry, toks);
                }
            }
            parent_hash = h;
            parent_entry = self.blocks[b as usize].ident;
        }
    }

    /// A second sequence sharing all of `table` (n > 1 samples of one
    /// prompt): every ref count +1; returns the copy of the table.
    pub fn fork(&mut self, table: &[BlockId]) -> Vec<BlockId> {
        for &b in table {
            if (b as usize) < self.blocks.len() {
                self.acquire(b);
            }
        }
        table.to_vec()
    }

    /// Releases a sequence's blocks (ref -1), last block first. A block
    /// reaching 0 becomes free; if it is registered in the prefix cache it
    /// stays matchable until it is reused (evicted) in LRU order: the least
    /// recently freed cached block is evicted first, never-used/uncached free
    /// blocks are taken before cached ones.
    pub fn free(&mut self, table: &[BlockId]) {
        for &b in table.iter().rev() {
            let Some(blk) = self.blocks.get_mut(b as usize) else {
                continue;
            };
            if blk.refs == 0 {
                continue;
            }
            blk.refs -= 1;
            if blk.refs == 0 {
                self.release(b);
            }
        }
    }

    pub fn stats(&self) -> BlockStats {
        BlockStats {
            num_blocks: self.blocks.len(),
            used: self.blocks.len() - self.num_free_blocks(),
            free: self.num_free_blocks(),
            cached_free: self.cached.len,
            prefix_queries: self.prefix_queries,
            prefix_hits: self.prefix_hits,
        }
    }

    /// Every internal invariant (ref counts match the free structures, hash map
    /// entries point at blocks whose stored hash matches, no block both free
    /// and used, free count + used count = num_blocks); Err names the first
    /// violation. For tests and debug assertions.
    pub fn check(&self) -> Result<(), String> {
        let n = self.blocks.len();
        let bs = self.block_size;
        if self.prefix_caching && self.tokens.len() != n * bs {
            return Err(format!(
                "token store holds {} ids, expected {}",
                self.tokens.len(),
                n * bs
            ));
        }
        // The two lists: links, places, lengths.
        let mut on_list = vec![false; n];
        for (name, list, place) in [
            ("free", &self.free, Place::Free),
            ("cached", &self.cached, Place::Cached),
        ] {
            let mut prev = NIL;
            let mut cur = list.head;
            let mut count = 0usize;
            while cur != NIL {
                let Some(blk) = self.blocks.get(cur as usize) else {
                    return Err(format!("{name} list links to block {cur}, out of range"));
                };
                if on_list[cur as usize] {
                    return Err(format!("block {cur} is linked twice (cycle or both lists)"));
                }
                on_list[cur as usize] = true;
                if blk.place != place {
                    return Err(format!(
                        "block {cur} is on the {name} list but marked {:?}",
                        blk.place
                    ));
                }
                if blk.prev != prev {
                    return Err(format!(
                        "block {cur} on the {name} list: prev {} but reached from {prev}",
                        blk.prev
                    ));
                }
                count += 1;
                prev = cur;
                cur = blk.next;
            }
            if list.tail != prev {
                return Err(format!(
                    "{name} list tail is {} but the last linked block is {prev}",
                    list.tail
                ));
            }
            if list.len != count {
                return Err(format!(
                    "{name} list length is {} but {count} blocks are linked",
                    list.len
                ));
            }
        }
        // Per block.
        let mut used = 0usize;
        let mut registered = 0usize;
        let mut dup_count = 0usize;
        let mut entries: HashMap<u64, BlockId> = HashMap::new();
        for (i, blk) in self.blocks.iter().enumerate() {
            match blk.place {
                Place::Used => {
                    if blk.refs == 0 {
                        return Err(format!("block {i} is marked used with ref count 0"));
                    }
                    if on_list[i] || blk.prev != NIL || blk.next != NIL {
                        return Err(format!("block {i} is used but linked into a free list"));
                    }
                    used += 1;
                }
                Place::Free | Place::Cached => {
                    if blk.refs != 0 {
                        return Err(format!(
                            "block {i} is free ({:?}) with ref count {}",
                            blk.place, blk.refs
                        ));
                    }
                    if !on_list[i] {
                        return Err(format!(
                            "block {i} is marked {:?} but not linked",
                            blk.place
                        ));
                    }
                }
            }
            if blk.place == Place::Cached && !blk.registered {
                return Err(format!(
                    "block {i} is on the cached list but not registered"
                ));
            }
            if blk.place == Place::Free && blk.ident != 0 {
                return Err(format!("block {i} is on the free list but still sealed"));
            }
            if blk.registered {
                if !self.prefix_caching {
                    return Err(format!("block {i} is registered with prefix caching off"));
                }
                if blk.ident == 0 || blk.ident >= self.next_entry {
                    return Err(format!("registered block {i} has entry id {}", blk.ident));
                }
                if blk.parent_entry >= blk.ident {
                    return Err(format!(
                        "registered block {i}: parent entry {} not older than its entry {}",
                        blk.parent_entry, blk.ident
                    ));
                }
                if let Some(other) = entries.insert(blk.ident, i as BlockId) {
                    return Err(format!(
                        "blocks {other} and {i} are both registered as entry {}",
                        blk.ident
                    ));
                }
                if self.map.get(&blk.hash) != Some(&(i as BlockId)) {
                    return Err(format!(
                        "block {i} is registered but the map does not point at it for its hash {:#x}",
                        blk.hash
                    ));
                }
                registered += 1;
            } else if blk.ident != 0 {
                if !self.prefix_caching {
                    return Err(format!("block {i} is sealed with prefix caching off"));
                }
                if blk.refs == 0 {
                    return Err(format!("duplicate block {i} has ref count 0"));
                }
                dup_count += 1;
            }
        }
        if used + self.free.len + self.cached.len != n {
            return Err(format!(
                "used {used} + free {} + cached {} != {n} blocks",
                self.free.len, self.cached.len
            ));
        }
        // Map entries: registered blocks whose stored hash matches their content.
        if self.map.len() != registered {
            return Err(format!(
                "the map holds {} entries but {registered} blocks are registered",
                self.map.len()
            ));
        }
        for (&h, &b) in &self.map {
            let Some(blk) = self.blocks.get(b as usize) else {
                return Err(format!(
                    "map entry {h:#x} points at block {b}, out of range"
                ));
            };
            if !blk.registered || blk.hash != h {
                return Err(format!(
                    "map entry {h:#x} points at block {b} whose stored hash is {:#x} (registered: {})",
                    blk.hash, blk.registered
                ));
            }
            let recomputed = block_hash(blk.parent_hash, self.stored_tokens(b));
            if recomputed != h {
                return Err(format!(
                    "block {b}: stored hash {h:#x} does not match its parent hash and tokens ({recomputed:#x})"
                ));
            }
        }
        // Duplicates: each sealed, unregistered, used block listed exactly once
        // under a live entry with the same hash.
        let mut listed = 0usize;
        let mut seen = vec![false; n];
        for (&e, list) in &self.dups {
            if list.is_empty() {
                return Err(format!("empty duplicate list for entry {e}"));
            }
            let Some(&owner) = entries.get(&e) else {
                return Err(format!(
                    "duplicates listed for entry {e}, which no block holds"
                ));
            };
            let owner_hash = self.blocks[owner as usize].hash;
            for &d in list {
                let Some(blk) = self.blocks.get(d as usize) else {
                    return Err(format!(
                        "duplicate list of entry {e} names block {d}, out of range"
                    ));
                };
                if seen[d as usize] {
                    return Err(format!("block {d} is listed twice as a duplicate"));
                }
                seen[d as usize] = true;
                if blk.registered || blk.ident != e || blk.hash != owner_hash {
                    return Err(format!(
                        "block {d} is listed as a duplicate of entry {e} (block {owner}) but has ident {}, hash {:#x}, registered {}",
                        blk.ident, blk.hash, blk.registered
                    ));
                }
                listed += 1;
            }
        }
        if listed != dup_count {
            return Err(format!(
                "{dup_count} duplicate blocks exist but {listed} are listed"
            ));
        }
        Ok(())
    }

    // ---- private helpers ----

    /// The stored tokens of block `b` (empty without prefix caching).
    fn stored_tokens(&self, b: BlockId) -> &[u32] {
        let start = b as usize * self.block_size;
        self.tokens
            .get(start..start + self.block_size)
            .unwrap_or(&[])
    }

    /// Does registered block `b` hold exactly `tokens` after the prefix `parent_entry`?
    fn matches(&self, b: BlockId, parent_entry: u64, tokens: &[u32]) -> bool {
        self.blocks
            .get(b as usize)
            .is_some_and(|blk| blk.registered && blk.parent_entry == parent_entry)
            && self.stored_tokens(b) == tokens
    }

    fn lookup(&self, h: u64, parent_entry: u64, tokens: &[u32]) -> Option<BlockId> {
        let &b = self.map.get(&h)?;
        self.matches(b, parent_entry, tokens).then_some(b)
    }

    fn link(&mut self, b: BlockId, place: Place) {
        let list = match place {
            Place::Free => &mut self.free,
            Place::Cached => &mut self.cached,
            Place::Used => return,
        };
        list_push_back(&mut self.blocks, list, b);
        self.blocks[b as usize].place = place;
    }

    fn unlink(&mut self, b: BlockId) {
        let list = match self.blocks[b as usize].place {
            Place::Free => &mut self.free,
            Place::Cached => &mut self.cached,
            Place::Used => return,
        };
        list_unlink(&mut self.blocks, list, b);
        self.blocks[b as usize].place = Place::Used;
    }

    /// Ref +1 on a block in range, taking it out of the free structures if needed.
    fn acquire(&mut self, b: BlockId) {
        if self.blocks[b as usize].refs == 0 {
            self.unlink(b);
        }
        let blk = &mut self.blocks[b as usize];
        blk.refs = blk.refs.saturating_add(1);
    }

    /// A block for new content, ref 1: never-used/uncached first, else the
    /// least recently freed cached block (evicted from the prefix cache).
    fn take_fresh(&mut self) -> Option<BlockId> {
        let b = if self.free.head != NIL {
            self.free.head
        } else if self.cached.head != NIL {
            self.cached.head
        } else {
            return None;
        };
        self.unlink(b);
        if self.blocks[b as usize].registered {
            self.evict(b);
        }
        let blk = &mut self.blocks[b as usize];
        blk.unseal();
        blk.refs = 1;
        Some(b)
    }

    /// Registered block `o` loses its content. If a used duplicate exists, it
    /// takes over the registration (same entry id, so the blocks registered
    /// after it stay reachable); otherwise the map entry goes.
    fn evict(&mut self, o: BlockId) {
        let blk = self.blocks[o as usize];
        let successor = match self.dups.get_mut(&blk.ident) {
            Some(list) => {
                let d = list.pop();
                if list.is_empty() {
                    self.dups.remove(&blk.ident);
                }
                d
            }
            None => None,
        };
        match successor {
            Some(d) => {
                let bs = self.block_size;
                let (src, dst) = (o as usize * bs, d as usize * bs);
                self.tokens.copy_within(src..src + bs, dst);
                let dblk = &mut self.blocks[d as usize];
                dblk.registered = true;
                dblk.parent_hash = blk.parent_hash;
                dblk.parent_entry = blk.parent_entry;
                self.map.insert(blk.hash, d);
            }
            None => {
                if self.map.get(&blk.hash) == Some(&o) {
                    self.map.remove(&blk.hash);
                }
            }
        }
        self.blocks[o as usize].unseal();
    }

    /// Removes registered block `o` from the prefix cache for good (its map
    /// slot is needed for a different prefix). Its duplicates are unsealed.
    fn drop_registration(&mut self, o: BlockId) {
        let blk = self.blocks[o as usize];
        if let Some(list) = self.dups.remove(&blk.ident) {
            for d in list {
                self.blocks[d as usize].unseal();
            }
        }
        if self.map.get(&blk.hash) == Some(&o) {
            self.map.remove(&blk.hash);
        }
        self.blocks[o as usize].unseal();
        if blk.place == Place::Cached {
            self.unlink(o);
            self.link(o, Place::Free);
        }
    }

    fn register(
        &mut self,
        b: BlockId,
        h: u64,
        parent_hash: u64,
        parent_entry: u64,
        tokens: &[u32],
    ) {
        let e = self.next_entry;
        self.next_entry += 1;
        let start = b as usize * self.block_size;
        if let Some(dst) = self.tokens.get_mut(start..start + self.block_size) {
            dst.copy_from_slice(tokens);
        }
        let blk = &mut self.blocks[b as usize];
        blk.ident = e;
        blk.registered = true;
        blk.hash = h;
        blk.parent_hash = parent_hash;
        blk.parent_entry = parent_entry;
        self.map.insert(h, b);
    }

    /// Block `b` just reached ref count 0.
    fn release(&mut self, b: BlockId) {
        let blk = self.blocks[b as usize];
        if blk.registered {
            self.link(b, Place::Cached);
            return;
        }
        if blk.ident != 0 {
            // A duplicate: forget it, and count this as a use of the content
            // for the block it duplicates (keeps a parent behind its children
            // in the LRU order).
            if let Some(list) = self.dups.get_mut(&blk.ident) {
                list.retain(|&d| d != b);
                if list.is_empty() {
                    self.dups.remove(&blk.ident);
                }
            }
            if let Some(&o) = self.map.get(&blk.hash) {
                let oblk = self.blocks[o as usize];
                if oblk.ident == blk.ident && oblk.place == Place::Cached {
                    self.unlink(o);
                    self.link(o, Place::Cached);
                }
            }
            self.blocks[b as usize].unseal();
        }
        self.link(b, Place::Free);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn same_state(a: &BlockManager, b: &BlockManager) -> bool {
        a.blocks == b.blocks
            && a.tokens == b.tokens
            && a.free == b.free
            && a.cached == b.cached
            && a.map == b.map
            && a.dups == b.dups
            && a.next_entry == b.next_entry
            && a.stats() == b.stats()
    }

    /// Registered blocks whose parent entry no block holds (unreachable).
    fn orphans(m: &BlockManager) -> usize {
        let live: std::collections::HashSet<u64> = m
            .blocks
            .iter()
            .filter(|b| b.registered)
            .map(|b| b.ident)
            .collect();
        m.blocks
            .iter()
            .filter(|b| {
                b.registered && b.parent_entry != ROOT_ENTRY && !live.contains(&b.parent_entry)
            })
            .count()
    }

    fn refs(m: &BlockManager, b: BlockId) -> u32 {
        m.blocks[b as usize].refs
    }

    #[test]
    fn roots_keep_prefixes_apart() {
        let mut m = BlockManager::new(16, 4, true);
        let prompt: Vec<u32> = (0..10).collect();
        let lora = m.new_root();
        let other = m.new_root();
        assert_ne!(lora, other);
        let (t1, _) = m.allocate_in(lora, &prompt).unwrap();
        m.cache_full_blocks_in(lora, &t1, &prompt, 10);
        m.free(&t1);
        m.check().unwrap();
        // The same tokens under the base model or another adapter: a miss.
        let (t2, c2) = m.allocate(&prompt).unwrap();
        assert_eq!(c2, 0);
        m.cache_full_blocks(&t2, &prompt, 10);
        m.free(&t2);
        let (t3, c3) = m.allocate_in(other, &prompt).unwrap();
        assert_eq!(c3, 0);
        m.free(&t3);
        // Under its own root: a hit on its own blocks.
        let (t4, c4) = m.allocate_in(lora, &prompt).unwrap();
        assert_eq!((c4, &t4[..2]), (8, &t1[..2]));
        let (t5, c5) = m.allocate(&prompt).unwrap();
        assert_eq!((c5, &t5[..2]), (8, &t2[..2]));
        m.check().unwrap();
    }

    #[test]
    fn prefix_hit_after_free() {
        let mut m = BlockManager::new(16, 4, true);
        let prompt: Vec<u32> = (0..10).collect();
        let (t1, c1) = m.allocate(&prompt).unwrap();
        assert_eq!((t1.len(), c1), (3, 0));
        m.cache_full_blocks(&t1, &prompt, 10);
        m.check().unwrap();
        m.free(&t1);
        m.check().unwrap();
        let s = m.stats();
        assert_eq!((s.used, s.free, s.cached_free), (0, 16, 2));

        let (t2, c2) = m.allocate(&prompt).unwrap();
        assert_eq!(c2, 8);
        assert_eq!(t2[..2], t1[..2]);
        assert_eq!(t2.len(), 3);
        let s = m.stats();
        assert_eq!((s.prefix_queries, s.prefix_hits), (4, 2));
        assert_eq!((s.used, s.cached_free), (3, 0));
        m.check().unwrap();

        // A longer prompt with the same start hits too; a different start does not.
        let mut longer = prompt.clone();
        longer.extend([50, 51, 52]);
        let (t3, c3) = m.allocate(&longer).unwrap();
        assert_eq!((c3, &t3[..2]), (8, &t1[..2]));
        assert_eq!(refs(&m, t1[0]), 2);
        let other: Vec<u32> = (100..110).collect();
        let (_, c4) = m.allocate(&other).unwrap();
        assert_eq!(c4, 0);
        let s = m.stats();
        assert_eq!((s.prefix_queries, s.prefix_hits), (4 + 3 + 2, 2 + 2));
        m.check().unwrap();
    }

    #[test]
    fn never_shares_the_block_with_the_last_token() {
        let mut m = BlockManager::new(16, 4, true);
        let prompt: Vec<u32> = (0..8).collect();
        let (t1, _) = m.allocate(&prompt).unwrap();
        m.cache_full_blocks(&t1, &prompt, 8);
        assert_eq!(m.map.len(), 2);
        // Same prompt while the first is alive: only block 0 is shared.
        let (t2, c2) = m.allocate(&prompt).unwrap();
        assert_eq!(c2, 4);
        assert_eq!(t2[0], t1[0]);
        assert_ne!(t2[1], t1[1]);
        assert_eq!(
            (refs(&m, t1[0]), refs(&m, t1[1]), refs(&m, t2[1])),
            (2, 1, 1)
        );
        // After freeing: the cached last block is still not reused.
        m.free(&t1);
        m.free(&t2);
        let (t3, c3) = m.allocate(&prompt).unwrap();
        assert_eq!(c3, 4);
        assert_eq!(t3[0], t1[0]);
        assert_ne!(t3[1], t1[1]);
        // A one-token prompt never hits.
        let (_, c4) = m.allocate(&[0]).unwrap();
        assert_eq!(c4, 0);
        m.check().unwrap();
    }

    #[test]
    fn partial_blocks_are_never_cached() {
        let mut m = BlockManager::new(16, 4, true);
        let prompt = [7, 7, 7, 7, 8, 8];
        let (t1, _) = m.allocate(&prompt).unwrap();
        m.cache_full_blocks(&t1, &prompt, 6);
        assert_eq!(m.map.len(), 1);
        // Computed less than a full block: nothing more.
        m.cache_full_blocks(&t1, &prompt, 3);
        assert_eq!(m.map.len(), 1);
        m.free(&t1);
        assert_eq!(m.stats().cached_free, 1);
        let longer = [7, 7, 7, 7, 8, 8, 9, 9, 1, 2];
        let (t2, c2) = m.allocate(&longer).unwrap();
        assert_eq!(c2, 4);
        assert_eq!(t2[0], t1[0]);
        assert_ne!(t2[1], t1[1]);
        m.check().unwrap();
    }

    #[test]
    fn cache_full_blocks_is_idempotent_and_incremental() {
        let mut m = BlockManager::new(16, 2, true);
        let tokens = [1, 2, 3, 4, 5, 6, 7];
        let (t, _) = m.allocate(&tokens).unwrap();
        m.cache_full_blocks(&t, &tokens, 3);
        assert_eq!(m.map.len(), 1);
        let before = m.clone();
        m.cache_full_blocks(&t, &tokens, 3);
        m.cache_full_blocks(&t, &tokens, 1);
        assert!(same_state(&before, &m));
        m.cache_full_blocks(&t, &tokens, 7);
        assert_eq!(m.map.len(), 3);
        m.check().unwrap();
        m.free(&t);
        let (t2, c) = m.allocate(&[1, 2, 3, 4, 5, 6, 9]).unwrap();
        assert_eq!((c, &t2[..3]), (6, &t[..3]));
        m.check().unwrap();
    }

    #[test]
    fn lru_evicts_least_recently_freed_after_uncached() {
        // One full block per sequence: A, B, C cached, block 3 never used.
        let mut m = BlockManager::new(4, 2, true);
        let seqs = [[1u32, 1], [2, 2], [3, 3]];
        let mut tables = Vec::new();
        for s in &seqs {
            let (t, _) = m.allocate(s).unwrap();
            m.cache_full_blocks(&t, s, 2);
            tables.push(t);
        }
        // Free order B, A, C.
        m.free(&tables[1]);
        m.free(&tables[0]);
        m.free(&tables[2]);
        assert_eq!(m.stats().cached_free, 3);
        // The uncached block goes first.
        let (d, _) = m.allocate(&[9, 9]).unwrap();
        assert_eq!(d, vec![3]);
        assert_eq!(m.stats().cached_free, 3);
        // Then B (least recently freed).
        let (e, _) = m.allocate(&[8, 8]).unwrap();
        assert_eq!(e, tables[1]);
        assert_eq!(m.stats().cached_free, 2);
        m.check().unwrap();
        // A still hits; B does not.
        m.free(&d); // block 3 back to the free list (never cached)
        let (ta, ca) = m.allocate(&[1, 1, 5]).unwrap();
        assert_eq!(ta, vec![tables[0][0], 3]);
        assert_eq!(ca, 2);
        m.free(&ta); // A's block goes to the LRU tail, behind C; block 3 to the free list.
        let (tb, cb) = m.allocate(&[2, 2, 5]).unwrap();
        assert_eq!(cb, 0);
        // The uncached block first, then C (freed before A's latest free).
        assert_eq!(tb, vec![3, tables[2][0]]);
        m.free(&e);
        let (ta2, ca2) = m.allocate(&[1, 1, 5]).unwrap();
        assert_eq!((ta2[0], ca2), (tables[0][0], 2));
        m.check().unwrap();
    }

    #[test]
    fn a_freed_table_is_evicted_tail_first() {
        let mut m = BlockManager::new(4, 2, true);
        let s: Vec<u32> = (0..7).collect(); // 3 full blocks + 1 token
        let (t, _) = m.allocate(&s).unwrap();
        m.cache_full_blocks(&t, &s, 7);
        m.free(&t);
        assert_eq!(m.stats().cached_free, 3);
        // Needs 2 fresh: the uncached one, then the cached last full block.
        let (u, _) = m.allocate(&[40, 41, 42]).unwrap();
        assert!(u.contains(&t[2]));
        assert!(!u.contains(&t[0]) && !u.contains(&t[1]));
        m.free(&u);
        let (v, c) = m.allocate(&s).unwrap();
        assert_eq!((c, &v[..2]), (4, &t[..2]));
        m.check().unwrap();
    }

    #[test]
    fn copy_on_write_after_fork() {
        let mut m = BlockManager::new(16, 4, true);
        let prompt = [1, 2, 3, 4, 5, 6];
        let (mut a, _) = m.allocate(&prompt).unwrap();
        m.cache_full_blocks(&a, &prompt, 6);
        let mut b = m.fork(&a);
        assert_eq!(a, b);
        assert_eq!((refs(&m, a[0]), refs(&m, a[1])), (2, 2));
        let shared_last = a[1];
        let ca = m.grow(&mut a, 6, 7).unwrap();
        assert_eq!(ca.len(), 1);
        assert_eq!(ca[0].0, shared_last);
        assert_eq!(a[1], ca[0].1);
        assert_ne!(a[1], shared_last);
        // The other sequence now owns the old block alone: no copy.
        let cb = m.grow(&mut b, 6, 7).unwrap();
        assert!(cb.is_empty());
        assert_eq!(b[1], shared_last);
        // The full block stays shared.
        assert_eq!(a[0], b[0]);
        assert_eq!((refs(&m, a[0]), refs(&m, a[1]), refs(&m, b[1])), (2, 1, 1));
        m.check().unwrap();

        // Last block full at the fork: each gets a new block, no copies.
        let p8: Vec<u32> = (20..28).collect();
        let (mut c, _) = m.allocate(&p8).unwrap();
        let mut d = m.fork(&c);
        assert!(m.grow(&mut c, 8, 9).unwrap().is_empty());
        assert!(m.grow(&mut d, 8, 9).unwrap().is_empty());
        assert_eq!(c[..2], d[..2]);
        assert_ne!(c[2], d[2]);
        assert_eq!((refs(&m, c[0]), refs(&m, c[1])), (2, 2));
        // Growth within the current last block with no sharing: nothing.
        assert!(m.grow(&mut c, 9, 10).unwrap().is_empty());
        assert_eq!(c.len(), 3);
        m.check().unwrap();
    }

    #[test]
    fn out_of_blocks_changes_nothing() {
        let mut m = BlockManager::new(4, 4, true);
        let p: Vec<u32> = (0..12).collect();
        let (mut t, _) = m.allocate(&p).unwrap();
        m.cache_full_blocks(&t, &p, 12);
        let before = m.clone();
        assert!(m
            .allocate(&(0..8).map(|x| x + 100).collect::<Vec<_>>())
            .is_none());
        assert!(same_state(&before, &m));
        let t_before = t.clone();
        assert!(m.grow(&mut t, 12, 20).is_none());
        assert_eq!(t, t_before);
        assert!(same_state(&before, &m));
        m.check().unwrap();
        // Prefix hits do not make an allocation fit if fresh blocks are missing.
        let (_, _) = m.allocate(&[1]).unwrap(); // the last free block
        let before = m.clone();
        assert!(m.allocate(&p).is_none());
        assert!(same_state(&before, &m));
        // Copy-on-write needs a block too.
        let mut f = m.fork(&t);
        let before = m.clone();
        let f_before = f.clone();
        assert!(m.grow(&mut f, 10, 11).is_none());
        assert_eq!(f, f_before);
        assert!(same_state(&before, &m));
        m.check().unwrap();
        // Exactly enough: revived cached blocks count, hits reuse them.
        m.free(&f);
        m.free(&t);
        let (t2, c2) = m.allocate(&p).unwrap();
        assert_eq!(c2, 8);
        assert_eq!(t2[..2], t_before[..2]);
        m.check().unwrap();
    }

    #[test]
    fn revived_cached_hits_count_against_free_blocks() {
        // 2 blocks; prompt needs 2, hit 1 cached: the cached hit is not also
        // available as a fresh block.
        let mut m = BlockManager::new(2, 2, true);
        let (t, _) = m.allocate(&[1, 2]).unwrap();
        m.cache_full_blocks(&t, &[1, 2], 2);
        let (u, _) = m.allocate(&[3]).unwrap();
        m.free(&t);
        assert_eq!(m.num_free_blocks(), 1);
        let before = m.clone();
        assert!(m.allocate(&[1, 2, 3]).is_none());
        assert!(same_state(&before, &m));
        m.free(&u);
        let (v, c) = m.allocate(&[1, 2, 3]).unwrap();
        assert_eq!((c, v[0]), (2, t[0]));
        m.check().unwrap();
    }

    #[test]
    fn without_prefix_caching_nothing_is_reused() {
        let mut m = BlockManager::new(8, 2, false);
        let p = [1, 2, 3, 4, 5];
        let (t, c) = m.allocate(&p).unwrap();
        assert_eq!(c, 0);
        m.cache_full_blocks(&t, &p, 5);
        assert!(m.map.is_empty());
        m.free(&t);
        let (_, c) = m.allocate(&p).unwrap();
        assert_eq!(c, 0);
        let s = m.stats();
        assert_eq!((s.cached_free, s.prefix_queries, s.prefix_hits), (0, 0, 0));
        m.check().unwrap();
    }

    #[test]
    fn hash_collision_never_returns_other_tokens() {
        let mut m = BlockManager::new(8, 2, true);
        let (t, _) = m.allocate(&[1, 2, 3]).unwrap();
        m.cache_full_blocks(&t, &[1, 2, 3], 2);
        // Forge a collision: move the entry under the hash of prefix [5, 6].
        let real = block_hash(ROOT_HASH, &[1, 2]);
        let forged = block_hash(ROOT_HASH, &[5, 6]);
        m.map.remove(&real);
        m.map.insert(forged, t[0]);
        m.blocks[t[0] as usize].hash = forged;
        assert!(m.check().is_err());
        let (u, c) = m.allocate(&[5, 6, 7]).unwrap();
        assert_eq!(c, 0);
        assert_ne!(u[0], t[0]);
        // Registering [5, 6] replaces the wrong mapping.
        m.cache_full_blocks(&u, &[5, 6, 7], 2);
        assert_eq!(m.map.get(&forged), Some(&u[0]));
        assert!(!m.blocks[t[0] as usize].registered);
        m.check().unwrap();
    }

    #[test]
    fn duplicate_takes_over_when_the_original_is_evicted() {
        let mut m = BlockManager::new(6, 2, true);
        let p = [1, 2, 3, 4, 5];
        // Two equal prompts computed at once: B's blocks duplicate A's.
        let (a, _) = m.allocate(&p).unwrap();
        let (b, cb) = m.allocate(&p).unwrap();
        assert_eq!(cb, 0);
        m.cache_full_blocks(&a, &p, 5);
        m.cache_full_blocks(&b, &p, 5);
        assert_eq!(m.map.len(), 2);
        // B decodes on and registers a block behind its duplicates.
        let mut b = b;
        let mut bt = p.to_vec();
        bt.push(6);
        assert!(m.grow(&mut b, 5, 6).unwrap().is_empty());
        m.cache_full_blocks(&b, &bt, 6);
        assert_eq!(m.map.len(), 3);
        m.check().unwrap();
        // A ends; its blocks get evicted while B still runs.
        m.free(&a);
        let (x, _) = m.allocate(&[9, 9, 9, 9, 9]).unwrap();
        assert!(x.contains(&a[0]) && x.contains(&a[1]));
        assert_eq!(orphans(&m), 0);
        m.check().unwrap();
        m.free(&x);
        // B's whole prefix is still found (through B's blocks).
        let mut q = bt.clone();
        q.push(7);
        let (y, cy) = m.allocate(&q).unwrap();
        assert_eq!(cy, 6);
        assert_eq!(y[..3], b[..3]);
        m.check().unwrap();
    }

    #[test]
    fn fork_of_a_freed_table_takes_blocks_back() {
        let mut m = BlockManager::new(4, 2, true);
        let (t, _) = m.allocate(&[1, 2, 3]).unwrap();
        m.cache_full_blocks(&t, &[1, 2, 3], 2);
        m.free(&t);
        let f = m.fork(&t);
        assert_eq!(m.stats().used, 2);
        m.check().unwrap();
        m.free(&f);
        m.free(&f); // double free is ignored
        assert_eq!(m.stats().used, 0);
        m.check().unwrap();
    }

    // ---- randomized ----

    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(1);
            splitmix64(self.0.wrapping_mul(0x9e37_79b9_7f4a_7c15))
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n.max(1) as u64) as usize
        }
    }

    struct Seq {
        table: Vec<BlockId>,
        tokens: Vec<u32>,
        computed: usize,
    }

    struct Model {
        bs: usize,
        seqs: Vec<Seq>,
        /// What the "device" holds in each slot of each block.
        content: Vec<Vec<Option<u32>>>,
    }

    impl Model {
        fn holders(&self, n: usize) -> Vec<u32> {
            let mut h = vec![0u32; n];
            for s in &self.seqs {
                for &b in &s.table {
                    h[b as usize] += 1;
                }
            }
            h
        }
    }

    fn verify(m: &BlockManager, model: &Model, ctx: &str) {
        if let Err(e) = m.check() {
            panic!("{ctx}: {e}");
        }
        let holders = model.holders(m.num_blocks());
        for (b, &h) in holders.iter().enumerate() {
            assert_eq!(m.blocks[b].refs, h, "{ctx}: ref count of block {b}");
        }
        for s in &model.seqs {
            assert_eq!(
                s.table.len(),
                m.blocks_for(s.tokens.len()),
                "{ctx}: table length"
            );
        }
        // Registered blocks hold (on the model device) the tokens stored for them.
        for (b, blk) in m.blocks.iter().enumerate() {
            if blk.registered {
                let stored = m.stored_tokens(b as BlockId);
                for (j, &t) in stored.iter().enumerate() {
                    assert_eq!(
                        model.content[b][j],
                        Some(t),
                        "{ctx}: registered block {b} slot {j}"
                    );
                }
            }
        }
        assert_eq!(orphans(m), 0, "{ctx}: unreachable registered blocks");
        assert_eq!(m.replaced, 0, "{ctx}: unexpected replacements");
        let s = m.stats();
        assert_eq!(s.used + s.free, s.num_blocks);
        assert!(s.prefix_hits <= s.prefix_queries);
    }

    fn after_allocate(
        m: &BlockManager,
        model: &mut Model,
        tokens: &[u32],
        table: &[BlockId],
        computed: usize,
    ) {
        let bs = model.bs;
        assert_eq!(computed % bs, 0);
        assert!(computed < tokens.len() || tokens.is_empty());
        let hits = computed / bs;
        for (i, &b) in table.iter().enumerate() {
            if i < hits {
                // A prefix hit must hold exactly these tokens.
                for j in 0..bs {
                    assert_eq!(
                        model.content[b as usize][j],
                        Some(tokens[i * bs + j]),
                        "hit block {b} (position {i}) slot {j}"
                    );
                }
            } else {
                assert_eq!(m.blocks[b as usize].refs, 1, "fresh block {b} shared");
                model.content[b as usize] = vec![None; bs];
            }
        }
    }

    fn run_random(seed: u64, num_blocks: usize, bs: usize, prefix_caching: bool, ops: usize) {
        let mut rng = Rng(seed);
        let mut m = BlockManager::new(num_blocks, bs, prefix_caching);
        let mut model = Model {
            bs,
            seqs: Vec::new(),
            content: vec![vec![None; bs]; num_blocks],
        };
        let bases: Vec<Vec<u32>> = (0..4)
            .map(|_| {
                let len = rng.below(4 * bs);
                (0..len).map(|_| rng.below(3) as u32).collect()
            })
            .collect();
        let mut hits_seen = 0u64;
        let mut failures = 0usize;
        let (mut forks, mut cow_copies, mut dups_seen) = (0usize, 0usize, 0usize);
        for step in 0..ops {
            let live = model.seqs.len();
            let r = rng.below(100);
            let ctx = format!("seed {seed} step {step} op {r}");
            if r < 25 || live == 0 {
                // New sequence.
                let mut tokens = bases[rng.below(bases.len())].clone();
                let extra = rng.below(2 * bs) + 1;
                tokens.extend((0..extra).map(|_| rng.below(3) as u32));
                let before = m.clone();
                match m.allocate(&tokens) {
                    Some((table, computed)) => {
                        after_allocate(&m, &mut model, &tokens, &table, computed);
                        hits_seen += (computed / bs) as u64;
                        model.seqs.push(Seq {
                            table,
                            tokens,
                            computed,
                        });
                    }
                    None => {
                        failures += 1;
                        assert!(
                            m.blocks_for(tokens.len()) > before.num_free_blocks(),
                            "{ctx}"
                        );
                        assert!(
                            same_state(&before, &m),
                            "{ctx}: failed allocate changed state"
                        );
                    }
                }
            } else if r < 50 {
                // Compute some of the pending tokens, then register full blocks.
                let i = rng.below(live);
                let s = &model.seqs[i];
                if s.computed < s.tokens.len() {
                    let new_computed = s.computed + 1 + rng.below(s.tokens.len() - s.computed);
                    let holders = model.holders(num_blocks);
                    let s = &mut model.seqs[i];
                    for p in s.computed..new_computed {
                        let b = s.table[p / bs] as usize;
                        assert_eq!(holders[b], 1, "{ctx}: writing into shared block {b}");
                        model.content[b][p % bs] = Some(s.tokens[p]);
                    }
                    s.computed = new_computed;
                    let (table, tokens) = (s.table.clone(), s.tokens.clone());
                    m.cache_full_blocks(&table, &tokens, new_computed);
                    if rng.below(4) == 0 {
                        let before = m.clone();
                        m.cache_full_blocks(&table, &tokens, rng.below(new_computed + 1));
                        assert!(same_state(&before, &m), "{ctx}: repeated cache_full_blocks");
                    }
                }
            } else if r < 70 {
                // Append tokens (decode or a new chunk); copy-on-write as told.
                let i = rng.below(live);
                let k = rng.below(bs + 1) + 1;
                let cur = model.seqs[i].tokens.len();
                let mut table = model.seqs[i].table.clone();
                let before = m.clone();
                match m.grow(&mut table, cur, cur + k) {
                    Some(copies) => {
                        let old = &model.seqs[i].table;
                        cow_copies += copies.len();
                        for &(src, dst) in &copies {
                            let pos = old.iter().position(|&b| b == src).unwrap();
                            assert_eq!(table[pos], dst, "{ctx}");
                            assert!(pos * bs <= cur, "{ctx}: copy of an unwritten block");
                            model.content[dst as usize] = model.content[src as usize].clone();
                        }
                        for (j, (&o, &n)) in old.iter().zip(&table).enumerate() {
                            if o != n {
                                assert!(
                                    copies.contains(&(o, n)),
                                    "{ctx}: block {j} replaced silently"
                                );
                            }
                        }
                        for &b in &table[old.len()..] {
                            assert_eq!(m.blocks[b as usize].refs, 1, "{ctx}");
                            model.content[b as usize] = vec![None; bs];
                        }
                        let s = &mut model.seqs[i];
                        s.table = table;
                        s.tokens.extend((0..k).map(|_| rng.below(3) as u32));
                    }
                    None => {
                        failures += 1;
                        assert_eq!(table, model.seqs[i].table, "{ctx}");
                        assert!(same_state(&before, &m), "{ctx}: failed grow changed state");
                    }
                }
            } else if r < 80 {
                // Fork a fully computed sequence (n > 1 sampling).
                let i = rng.below(live);
                let s = &model.seqs[i];
                if s.computed == s.tokens.len() {
                    let table = m.fork(&s.table);
                    forks += 1;
                    assert_eq!(table, s.table);
                    let (tokens, computed) = (s.tokens.clone(), s.computed);
                    model.seqs.push(Seq {
                        table,
                        tokens,
                        computed,
                    });
                }
            } else if r < 95 {
                let s = model.seqs.swap_remove(rng.below(live));
                m.free(&s.table);
            } else {
                // Preemption: free and recompute from all known tokens.
                let s = model.seqs.swap_remove(rng.below(live));
                m.free(&s.table);
                verify(&m, &model, &ctx);
                if let Some((table, computed)) = m.allocate(&s.tokens) {
                    after_allocate(&m, &mut model, &s.tokens, &table, computed);
                    hits_seen += (computed / bs) as u64;
                    model.seqs.push(Seq {
                        table,
                        tokens: s.tokens,
                        computed,
                    });
                }
            }
            verify(&m, &model, &ctx);
            dups_seen = dups_seen.max(m.dups.values().map(Vec::len).sum());
        }
        while let Some(s) = model.seqs.pop() {
            m.free(&s.table);
            verify(&m, &model, "final free");
        }
        let s = m.stats();
        assert_eq!((s.used, s.free), (0, num_blocks));
        assert!(m.blocks.iter().all(|b| b.refs == 0));
        assert!(m.dups.is_empty());
        assert_eq!(s.prefix_hits, hits_seen);
        if prefix_caching {
            assert!(
                hits_seen > 0,
                "seed {seed}: the run never hit the prefix cache"
            );
        } else {
            assert_eq!((s.prefix_hits, s.cached_free), (0, 0));
        }
        assert!(failures > 0, "seed {seed}: the pool never ran out");
        assert!(
            forks > 0 && (cow_copies > 0 || bs == 1),
            "seed {seed}: forks {forks}, copies {cow_copies}"
        );
        if prefix_caching {
            assert!(dups_seen > 0, "seed {seed}: never had duplicate blocks");
        }
    }

    #[test]
    fn randomized_operations_keep_invariants() {
        for seed in 0..6 {
            run_random(seed, 32, 4, true, 4000);
        }
        run_random(100, 16, 1, true, 4000);
        run_random(101, 24, 3, true, 4000);
        run_random(102, 32, 4, false, 4000);
    }
}
