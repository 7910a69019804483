//! The sharded, byte-bounded entry store.
//!
//! Each shard is a slab of entries plus a `hashbrown::HashTable` of slab indices, behind a
//! read-write lock. A hit takes the read lock, compares the key against the entry's own bytes
//! (the key is never stored twice), and hands the caller a view of the stored wire message: no
//! allocation, no reference counting. Eviction is CLOCK (second chance) over the slab, with
//! entries past their stale window evicted first; the referenced bit is an atomic so hits never
//! need the write lock.

use std::mem::size_of;
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering::Relaxed};

use hashbrown::HashTable;
use parking_lot::RwLock;

use crate::answer::{AnswerView, CacheableAnswer, Freshness, STALE_TTL};
use crate::key::{CacheKey, Member};
use crate::ttl::{Timestamp, Ttl, TtlPolicy};

const REFERENCED: u8 = 1;
const REFRESH_CLAIMED: u8 = 2;
const SPLIT: u8 = 4;

/// Prefetch only entries asked for at least this often since they were stored.
const PREFETCH_MIN_HITS: u32 = 2;

/// What the allocator really hands out for a blob: glibc malloc rounds to 16 bytes and adds an
/// 8-byte header.
fn allocated(len: usize) -> usize {
    (len + 8).div_ceil(16) * 16
}

/// One cached entry: the key's name and one or two answers, in a single allocation.
///
/// Blob layout: `name_len: u8, name, members: u8, per member (msg_len: u16 LE, ttl_count: u8),
/// every TTL offset (u16 LE), every message`.
struct Slot {
    blob: Box<[u8]>,
    hash: u64,
    kind_code: u32,
    class: u16,
    key_flags: u8,
    state: AtomicU8,
    hits: AtomicU32,
    stored_at: Timestamp,
    expires_at: Timestamp,
    lifetime: Ttl,
}

impl Slot {
    fn name(&self) -> &[u8] {
        let len = self.blob[0] as usize;
        &self.blob[1..1 + len]
    }

    fn matches(&self, hash: u64, key: &CacheKey<'_>) -> bool {
        self.hash == hash
            && self.kind_code == key.kind_code()
            && self.class == key.class
            && self.key_flags == key.flags_byte()
            && self.name() == key.name.as_wire()
    }

    /// The message and TTL-offset bytes of member `index`, if present.
    fn member(&self, index: usize) -> Option<(&[u8], &[u8])> {
        let b = &self.blob;
        let mut pos = 1 + b[0] as usize;
        let members = b[pos] as usize;
        if index >= members {
            return None;
        }
        pos += 1;
        let header = pos;
        pos += 3 * members;
        let mut ttl_start = pos;
        let mut msg_start = pos + 2 * (0..members).map(|m| b[header + 3 * m + 2] as usize).sum::<usize>();
        for m in 0..members {
            let msg_len = u16::from_le_bytes([b[header + 3 * m], b[header + 3 * m + 1]]) as usize;
            let ttl_len = 2 * b[header + 3 * m + 2] as usize;
            if m == index {
                return Some((&b[msg_start..msg_start + msg_len], &b[ttl_start..ttl_start + ttl_len]));
            }
            ttl_start += ttl_len;
            msg_start += msg_len;
        }
        None
    }

    fn bytes(&self) -> usize {
        allocated(self.blob.len())
    }

    fn is_dead(&self, now: Timestamp, max_stale: Ttl) -> bool {
        now >= self.expires_at.add_secs(max_stale.secs())
    }
}

fn build_blob(name: &[u8], answers: &[&CacheableAnswer]) -> Box<[u8]> {
    let total = 2 + name.len() + answers.iter().map(|a| 3 + 2 * a.ttl_offsets.len() + a.message.len()).sum::<usize>();
    let mut b = Vec::with_capacity(total);
    b.push(name.len() as u8);
    b.extend_from_slice(name);
    b.push(answers.len() as u8);
    for a in answers {
        b.extend_from_slice(&(a.message.len() as u16).to_le_bytes());
        b.push(a.ttl_offsets.len() as u8);
    }
    for a in answers {
        for o in &a.ttl_offsets {
            b.extend_from_slice(&o.to_le_bytes());
        }
    }
    for a in answers {
        b.extend_from_slice(&a.message);
    }
    b.into_boxed_slice()
}

struct Shard {
    table: HashTable<u32>,
    slots: Vec<Option<Slot>>,
    free: Vec<u32>,
    hand: usize,
    blob_bytes: usize,
}

impl Shard {
    fn new() -> Self {
        Self { table: HashTable::new(), slots: Vec::new(), free: Vec::new(), hand: 0, blob_bytes: 0 }
    }

    /// Every byte this shard holds: entry blobs plus the slab, free list and table capacity.
    fn bytes(&self) -> usize {
        self.blob_bytes
            + self.slots.capacity() * size_of::<Option<Slot>>()
            + self.free.capacity() * size_of::<u32>()
            + self.table.capacity() * (size_of::<u32>() + 1)
    }

    fn find(&self, hash: u64, key: &CacheKey<'_>) -> Option<u32> {
        let slots = &self.slots;
        self.table.find(hash, |&i| slots[i as usize].as_ref().is_some_and(|s| s.matches(hash, key))).copied()
    }

    fn remove_index(&mut self, index: u32) -> Option<Slot> {
        let slot = self.slots[index as usize].take()?;
        if let Ok(entry) = self.table.find_entry(slot.hash, |&i| i == index) {
            entry.remove();
        }
        self.free.push(index);
        self.blob_bytes -= slot.bytes();
        Some(slot)
    }

    /// Evicts one entry by CLOCK; returns false if the shard is empty.
    fn evict_one(&mut self, now: Timestamp, max_stale: Ttl) -> bool {
        let n = self.slots.len();
        if n == 0 || self.table.is_empty() {
            return false;
        }
        // Two sweeps suffice: the first clears every referenced bit it passes.
        for _ in 0..2 * n {
            let i = self.hand % n;
            self.hand = (i + 1) % n;
            let Some(slot) = &self.slots[i] else { continue };
            let state = slot.state.load(Relaxed);
            if state & REFERENCED != 0 && !slot.is_dead(now, max_stale) {
                slot.state.fetch_and(!REFERENCED, Relaxed);
                continue;
            }
            self.remove_index(i as u32);
            return true;
        }
        false
    }
}

/// Cache sizing and stale policy.
#[derive(Clone, Copy, Debug)]
pub struct CacheLimits {
    /// Hard bound on the bytes the cache holds (`cache.max_bytes`).
    pub max_bytes: usize,
    /// How long past expiry an entry may still be served stale (RFC 8767 §5 suggests 1–3 days;
    /// `cache.max_stale_secs`).
    pub max_stale: Ttl,
    /// Number of independently locked shards (a power of two).
    pub shards: usize,
}

impl Default for CacheLimits {
    fn default() -> Self {
        Self { max_bytes: 64 << 20, max_stale: Ttl::from_secs(3600), shards: 64 }
    }
}

/// Counters only the cache can know. Hits and misses are counted by the caller, which knows
/// whether a stale answer was finally served.
#[derive(Debug, Default)]
pub struct CacheCounters {
    pub inserts: AtomicU64,
    pub evictions: AtomicU64,
    pub split_pairs: AtomicU64,
    pub refreshes_due: AtomicU64,
    pub rejected: AtomicU64,
}

/// The outcome of an insert.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Inserted {
    /// The lifetime the entry was given.
    pub lifetime: Ttl,
    /// The entry is a split pair (one member NXDOMAIN, the other NOERROR).
    pub split: bool,
    /// Entries evicted to make room.
    pub evicted: usize,
}

/// Why an insert was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InsertError {
    #[error("answer's TTL offsets do not fit its message")]
    Inconsistent,
    #[error("entry larger than a cache shard's byte budget")]
    TooLarge,
}

/// The answer cache.
pub struct Cache {
    shards: Box<[RwLock<Shard>]>,
    shard_mask: u64,
    shard_budget: usize,
    limits: CacheLimits,
    hasher: foldhash::fast::FixedState,
    entries: AtomicU64,
    bytes: AtomicU64,
    pub counters: CacheCounters,
}

impl Cache {
    pub fn new(limits: CacheLimits) -> Self {
        let shards = limits.shards.max(1).next_power_of_two();
        Self {
            shards: (0..shards).map(|_| RwLock::new(Shard::new())).collect(),
            shard_mask: shards as u64 - 1,
            shard_budget: limits.max_bytes / shards,
            limits,
            // A fixed seed keeps shard placement stable across runs; the keys are not attacker
            // controlled enough to matter: hashbrown copes with collisions, and shards are many.
            hasher: foldhash::fast::FixedState::with_seed(0x6e6f_6465_646e_7321),
            entries: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            counters: CacheCounters::default(),
        }
    }

    pub fn limits(&self) -> CacheLimits {
        self.limits
    }

    /// Entries currently stored (fresh or stale).
    pub fn entries(&self) -> u64 {
        self.entries.load(Relaxed)
    }

    /// Bytes currently held, as counted against `max_bytes`.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Relaxed)
    }

    fn shard_of(&self, hash: u64) -> &RwLock<Shard> {
        // The low bits pick the bucket inside hashbrown; use the high bits for the shard.
        &self.shards[((hash >> 48) & self.shard_mask) as usize]
    }

    /// Looks `key` up and, if an answer for `member` is stored and not dead, calls `f` with it
    /// under the shard's read lock. Expired entries within the stale window are passed as
    /// [`Freshness::Stale`] with TTL [`STALE_TTL`]; the caller decides whether to use them.
    pub fn lookup<R>(
        &self,
        key: &CacheKey<'_>,
        member: Member,
        now: Timestamp,
        f: impl FnOnce(&AnswerView<'_>) -> R,
    ) -> Option<R> {
        let hash = key.hash_with(&self.hasher);
        let shard = self.shard_of(hash).read();
        let index = shard.find(hash, key)?;
        let slot = shard.slots[index as usize].as_ref()?;
        let (message, ttl_offsets) = slot.member(member.index())?;
        let split = slot.state.load(Relaxed) & SPLIT != 0;
        let (ttl, freshness) = if now < slot.expires_at {
            let remaining_ms = slot.expires_at.millis_since(now);
            (
                remaining_ms.div_ceil(1000) as u32,
                Freshness::Fresh { refresh_due: self.claim_refresh(slot, remaining_ms) },
            )
        } else if slot.is_dead(now, self.limits.max_stale) {
            return None;
        } else {
            let expired_for = (now.millis_since(slot.expires_at) / 1000) as u32;
            (STALE_TTL, Freshness::Stale { expired_for_secs: expired_for })
        };
        if slot.state.load(Relaxed) & REFERENCED == 0 {
            slot.state.fetch_or(REFERENCED, Relaxed);
        }
        let view = AnswerView { message, ttl_offsets, ttl, freshness, split };
        Some(f(&view))
    }

    /// Prefetch rule: an entry asked for at least [`PREFETCH_MIN_HITS`] times is due for refresh
    /// in the last tenth of its lifetime (at least one second, at most half). Claimed once.
    fn claim_refresh(&self, slot: &Slot, remaining_ms: u64) -> bool {
        let hits = slot.hits.fetch_add(1, Relaxed).saturating_add(1);
        if hits < PREFETCH_MIN_HITS {
            return false;
        }
        let life_ms = slot.lifetime.secs() as u64 * 1000;
        let window = (life_ms / 10).max(1000).min(life_ms / 2);
        if remaining_ms > window || slot.state.load(Relaxed) & REFRESH_CLAIMED != 0 {
            return false;
        }
        let prev = slot.state.fetch_or(REFRESH_CLAIMED, Relaxed);
        let claimed = prev & REFRESH_CLAIMED == 0;
        if claimed {
            self.counters.refreshes_due.fetch_add(1, Relaxed);
        }
        claimed
    }

    /// Stores a single-type answer (`key.kind` must be `Single`).
    pub fn insert(
        &self,
        key: &CacheKey<'_>,
        answer: &CacheableAnswer,
        policy: &TtlPolicy,
        now: Timestamp,
    ) -> Result<Inserted, InsertError> {
        let lifetime = answer.disposition.lifetime(policy);
        self.store(key, &[answer], lifetime, false, now)
    }

    /// Stores an A/AAAA pair as one entry with one expiry: the smaller of the two lifetimes. A
    /// split pair (one NXDOMAIN, one NOERROR) is kept no longer than `min_ttl`: it is what made
    /// glibc give up on names in the incidents this cache exists for, so it must not linger.
    pub fn insert_pair(
        &self,
        key: &CacheKey<'_>,
        a: &CacheableAnswer,
        aaaa: &CacheableAnswer,
        policy: &TtlPolicy,
        now: Timestamp,
    ) -> Result<Inserted, InsertError> {
        let split = a.disposition.is_nxdomain() != aaaa.disposition.is_nxdomain();
        let mut lifetime = a.disposition.lifetime(policy).min(aaaa.disposition.lifetime(policy));
        if split {
            lifetime = lifetime.min(policy.min_ttl);
            self.counters.split_pairs.fetch_add(1, Relaxed);
        }
        self.store(key, &[a, aaaa], lifetime, split, now)
    }

    fn store(
        &self,
        key: &CacheKey<'_>,
        answers: &[&CacheableAnswer],
        lifetime: Ttl,
        split: bool,
        now: Timestamp,
    ) -> Result<Inserted, InsertError> {
        if !answers.iter().all(|a| a.is_consistent()) {
            self.counters.rejected.fetch_add(1, Relaxed);
            return Err(InsertError::Inconsistent);
        }
        let blob = build_blob(key.name.as_wire(), answers);
        let need = allocated(blob.len()) + size_of::<Option<Slot>>() + size_of::<u32>() + 1;
        if need > self.shard_budget {
            self.counters.rejected.fetch_add(1, Relaxed);
            return Err(InsertError::TooLarge);
        }
        let hash = key.hash_with(&self.hasher);
        let slot = Slot {
            blob,
            hash,
            kind_code: key.kind_code(),
            class: key.class,
            key_flags: key.flags_byte(),
            state: AtomicU8::new(if split { SPLIT } else { 0 }),
            hits: AtomicU32::new(0),
            stored_at: now,
            expires_at: now.add_secs(lifetime.secs()),
            lifetime,
        };
        let mut shard = self.shard_of(hash).write();
        let before_bytes = shard.bytes();
        let before_entries = shard.table.len();
        let mut evicted = 0;

        if let Some(index) = shard.find(hash, key) {
            let old = shard.slots[index as usize].replace(slot).map(|s| s.bytes()).unwrap_or(0);
            let new = shard.slots[index as usize].as_ref().map(|s| s.bytes()).unwrap_or(0);
            shard.blob_bytes = shard.blob_bytes - old + new;
        } else {
            // Make room first, counting the growth of the slab and table this insert may cause.
            while shard.bytes() + need > self.shard_budget && shard.evict_one(now, self.limits.max_stale) {
                evicted += 1;
            }
            shard.blob_bytes += slot.bytes();
            let index = match shard.free.pop() {
                Some(i) => {
                    shard.slots[i as usize] = Some(slot);
                    i
                }
                None => {
                    shard.slots.push(Some(slot));
                    (shard.slots.len() - 1) as u32
                }
            };
            let Shard { table, slots, .. } = &mut *shard;
            table.insert_unique(hash, index, |&i| slots[i as usize].as_ref().map_or(0, |s| s.hash));
            // Growth of the slab or table may still overshoot by a rehash; shed entries until
            // the shard is back under its budget.
            while shard.bytes() > self.shard_budget
                && shard.table.len() > 1
                && shard.evict_one(now, self.limits.max_stale)
            {
                evicted += 1;
            }
        }
        let after_bytes = shard.bytes();
        let after_entries = shard.table.len();
        drop(shard);

        self.bytes.fetch_add(after_bytes as u64, Relaxed);
        self.bytes.fetch_sub(before_bytes as u64, Relaxed);
        self.entries.fetch_add(after_entries as u64, Relaxed);
        self.entries.fetch_sub(before_entries as u64, Relaxed);
        self.counters.inserts.fetch_add(1, Relaxed);
        self.counters.evictions.fetch_add(evicted as u64, Relaxed);
        Ok(Inserted { lifetime, split, evicted })
    }

    /// Removes an entry; returns whether one was stored.
    pub fn remove(&self, key: &CacheKey<'_>) -> bool {
        let hash = key.hash_with(&self.hasher);
        let mut shard = self.shard_of(hash).write();
        let before = shard.bytes();
        let Some(index) = shard.find(hash, key) else {
            return false;
        };
        shard.remove_index(index);
        let after = shard.bytes();
        drop(shard);
        self.bytes.fetch_sub((before - after) as u64, Relaxed);
        self.entries.fetch_sub(1, Relaxed);
        true
    }

    /// When the entry for `key` was stored, and its lifetime, if present.
    pub fn entry_age(&self, key: &CacheKey<'_>, now: Timestamp) -> Option<(u64, Ttl)> {
        let hash = key.hash_with(&self.hasher);
        let shard = self.shard_of(hash).read();
        let index = shard.find(hash, key)?;
        let slot = shard.slots[index as usize].as_ref()?;
        Some((now.millis_since(slot.stored_at), slot.lifetime))
    }
}
