//! The sharded, byte-bounded entry store.
//!
//! Each shard is a `hashbrown::HashTable` holding its entries' slots inline, behind a read-write
//! lock. A hit takes the read lock, compares the key against the entry's own bytes (the key is
//! never stored twice), and hands the caller a view of the stored wire message: no allocation,
//! no reference counting. Eviction is CLOCK (second chance) over the table's buckets, with
//! entries past their stale window evicted first; the referenced bit is an atomic so hits never
//! need the write lock.
//!
//! Why slots live in the table's buckets rather than in a slab indexed by the table: a hit is a
//! chain of dependent memory loads (control bytes → bucket → entry blob), and at a hit rate of
//! 100k/s on a core shared with the kernel's packet work, each of them is usually a cache miss.
//! An index table over a slab adds one more link (bucket → slab slot); profiles of the hit
//! workload (benches/RESULTS.md) showed the table probe as the largest user-space cost.

use std::mem::size_of;
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering::Relaxed};

use hashbrown::HashTable;
use parking_lot::RwLock;

use crate::answer::{AnswerView, CacheableAnswer, Freshness, STALE_TTL, failure_message, is_failure_message};
use crate::key::{CacheKey, KeyKind, LowerName, Member, PairMember};
use crate::ttl::{Timestamp, Ttl, TtlPolicy};

const REFERENCED: u8 = 1;
const REFRESH_CLAIMED: u8 = 2;
const SPLIT: u8 = 4;
/// Bits 3..7 of `state`: how many refreshes of this expired entry failed in a row, the exponent of
/// its refresh backoff (RFC 9520 §3.2).
const BACKOFF_SHIFT: u8 = 3;
const BACKOFF_MAX_EXP: u8 = 31;

/// Prefetch only entries asked for at least this often since they were stored.
const PREFETCH_MIN_HITS: u32 = 2;

/// What the allocator really hands out for a blob, so `max_bytes` bounds real memory: the larger
/// of glibc malloc's (an 8-byte header, rounded to 16 bytes) and mimalloc's, which the nodedns
/// binary uses (size classes of 16 bytes up to 64, then four per power of two).
pub(crate) fn allocated(len: usize) -> usize {
    let glibc = (len + 8).div_ceil(16) * 16;
    let words = len.div_ceil(8).max(1);
    let mimalloc = if words <= 8 {
        words.next_multiple_of(2) * 8
    } else {
        let w = words - 1;
        let shift = (usize::BITS - 1 - w.leading_zeros()) - 2;
        ((w >> shift) + 1) << shift << 3
    };
    glibc.max(mimalloc)
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
    /// While fresh: hits since stored, counted up to the prefetch threshold. Once expired: the
    /// millisecond after expiry before which no refresh may start, set when a refresh failed
    /// (RFC 9520 §3.2). One field serves both because an entry is never both at once, and slots
    /// fill every table bucket (see the size assertion below).
    hits_or_retry: AtomicU32,
    expires_at: Timestamp,
    lifetime: Ttl,
}

// Slots fill every table bucket, empty or not: keep them small (memory per name, issue #7).
const _: () = assert!(size_of::<Slot>() <= 48);

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

    /// Whether any member is a failure entry (RFC 9520).
    fn has_failure(&self) -> bool {
        (0..2).filter_map(|i| self.member(i)).any(|(msg, _)| is_failure_message(msg))
    }

    /// When the entry was stored: derived rather than kept, since slots live in every table
    /// bucket (empty ones too), so each byte of a slot is paid about 1.1 to 2.3 times.
    fn stored_at(&self) -> Timestamp {
        Timestamp::from_millis(self.expires_at.as_millis().saturating_sub(self.lifetime.secs() as u64 * 1000))
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

/// A failure member for `key`'s name with type `qtype`.
fn failure_answer(key: &CacheKey<'_>, qtype: u16) -> CacheableAnswer {
    CacheableAnswer {
        message: failure_message(key.name.as_wire(), qtype, key.class),
        ttl_offsets: Vec::new(),
        // Never read for a failure member: its lifetime comes from the failure policy.
        disposition: crate::answer::Disposition::Denial { nxdomain: false, soa: None, chain_ttl: None },
    }
}

/// hashbrown's control bytes past the last bucket (its SSE2 group width), counted as held.
const TABLE_CTRL_TAIL: usize = 16;

struct Shard {
    /// The entries, stored in the table's buckets (see the module doc for why not in a slab).
    table: HashTable<Slot>,
    /// The CLOCK hand: a bucket index. A rehash reorders buckets; the hand simply goes on from
    /// where it is, which keeps CLOCK's approximation (every entry still gets a second chance
    /// per sweep).
    hand: usize,
    blob_bytes: usize,
}

impl Shard {
    fn new() -> Self {
        Self { table: HashTable::new(), hand: 0, blob_bytes: 0 }
    }

    /// Every byte this shard holds: entry blobs plus the table's buckets and control bytes.
    fn bytes(&self) -> usize {
        let buckets = self.table.num_buckets();
        self.blob_bytes + if buckets == 0 { 0 } else { buckets * (size_of::<Slot>() + 1) + TABLE_CTRL_TAIL }
    }

    fn find(&self, hash: u64, key: &CacheKey<'_>) -> Option<&Slot> {
        self.table.find(hash, |s| s.matches(hash, key))
    }

    fn remove_bucket(&mut self, index: usize) -> Option<Slot> {
        let (slot, _) = self.table.get_bucket_entry(index).ok()?.remove();
        self.blob_bytes -= slot.bytes();
        Some(slot)
    }

    /// Evicts one entry by CLOCK, never the one whose hash is `keep` (the entry just inserted,
    /// which has had no chance to be referenced yet); returns false if nothing could go.
    fn evict_one(&mut self, now: Timestamp, max_stale: Ttl, keep: Option<u64>) -> bool {
        let n = self.table.num_buckets();
        if self.table.is_empty() {
            return false;
        }
        // Two sweeps suffice: the first clears every referenced bit it passes.
        for _ in 0..2 * n {
            let i = self.hand % n;
            self.hand = (i + 1) % n;
            let Some(slot) = self.table.get_bucket(i) else { continue };
            if keep == Some(slot.hash) {
                continue;
            }
            let state = slot.state.load(Relaxed);
            if state & REFERENCED != 0 && !slot.is_dead(now, max_stale) {
                slot.state.fetch_and(!REFERENCED, Relaxed);
                continue;
            }
            self.remove_bucket(i);
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
    /// Failure entries stored (RFC 9520), pairs with one failed member included.
    pub failures: AtomicU64,
    /// Failed refreshes that kept stale data and set its refresh backoff.
    pub stale_kept: AtomicU64,
}

/// How long resolution failures are cached (RFC 9520 §3.2: at least 1 s, backing off while the
/// failure repeats, at most 5 minutes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FailurePolicy {
    /// The first failure's lifetime; also the life of a pair with one failed member, when longer
    /// than the zone's `min_ttl`.
    pub initial: Ttl,
    /// The ceiling of the doubling (`cache.failure_max_ttl_secs`).
    pub max: Ttl,
}

impl Default for FailurePolicy {
    fn default() -> Self {
        Self { initial: Ttl::from_secs(1), max: Ttl::from_secs(30) }
    }
}

impl FailurePolicy {
    /// The lifetime after `repeats` failures in a row (0 for the first).
    fn after(&self, repeats: u32) -> Ttl {
        let secs = (self.initial.secs().max(1) as u64) << repeats.min(20);
        Ttl::from_secs(secs.min(self.max.secs().max(self.initial.secs()) as u64) as u32)
    }
}

/// What [`Cache::insert_failure`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureRecorded {
    /// A failure entry now answers SERVFAIL for this long.
    Stored { lifetime: Ttl },
    /// Stale data for the key was kept (RFC 8767 wins over RFC 9520); no refresh starts for this
    /// long.
    StaleKept { retry_in: Ttl },
    /// A fresh entry is stored (filled by another fetch, or a prefetch failed): left as it is.
    FreshKept,
}

/// What a cached member is, for [`Cache::cap_ttl`]: each has its own ceiling.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CapKind {
    /// An answer with data (`max_ttl_secs`).
    Positive,
    /// NXDOMAIN or NODATA (`denial_max_ttl_secs`, RFC 2308 §5).
    Denial,
    /// A cached resolution failure (RFC 9520, `failure_max_ttl_secs`).
    Failure,
}

/// Whether a stored response is a denial: NXDOMAIN, or NOERROR without answer records (NODATA).
fn is_denial(msg: &[u8]) -> bool {
    msg.len() >= 12 && (msg[3] & 0x0f == 3 || u16::from_be_bytes([msg[6], msg[7]]) == 0)
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

/// One shard's lock and table header, alone in its cache lines: every hit takes the read lock
/// (an atomic add on the lock word), so with one UDP worker per core, shards sharing a line
/// would bounce it between cores even when their keys never collide. 128 bytes covers the
/// adjacent-line prefetcher of x86 cores as well as the 64-byte line.
#[repr(align(128))]
struct ShardCell(RwLock<Shard>);

/// The answer cache.
pub struct Cache {
    shards: Box<[ShardCell]>,
    shard_mask: u64,
    shard_budget: usize,
    limits: CacheLimits,
    /// `limits.max_stale` in seconds, changed by a reload ([`Cache::set_max_stale`]).
    max_stale_secs: AtomicU32,
    hasher: foldhash::fast::FixedState,
    entries: AtomicU64,
    bytes: AtomicU64,
    pub counters: CacheCounters,
}

impl Cache {
    pub fn new(limits: CacheLimits) -> Self {
        let shards = limits.shards.max(1).next_power_of_two();
        Self {
            shards: (0..shards).map(|_| ShardCell(RwLock::new(Shard::new()))).collect(),
            shard_mask: shards as u64 - 1,
            shard_budget: limits.max_bytes / shards,
            limits,
            max_stale_secs: AtomicU32::new(limits.max_stale.secs()),
            // A fixed seed keeps shard placement stable across runs; the keys are not attacker
            // controlled enough to matter: hashbrown copes with collisions, and shards are many.
            hasher: foldhash::fast::FixedState::with_seed(0x6e6f_6465_646e_7321),
            entries: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            counters: CacheCounters::default(),
        }
    }

    /// The limits in force (`max_stale` as last set).
    pub fn limits(&self) -> CacheLimits {
        CacheLimits { max_stale: self.max_stale(), ..self.limits }
    }

    /// How long past expiry an entry may still be served stale, now.
    #[inline]
    fn max_stale(&self) -> Ttl {
        Ttl::from_secs(self.max_stale_secs.load(Relaxed))
    }

    /// Changes the stale window (`cache.max_stale_secs` reloaded). It applies to entries already
    /// stored: the window is measured from each entry's expiry at every lookup, so a shorter one
    /// makes older stale entries dead (evicted first) at once, a longer one keeps them servable
    /// if not yet evicted.
    pub fn set_max_stale(&self, max_stale: Ttl) {
        self.max_stale_secs.store(max_stale.secs(), Relaxed);
    }

    /// Caps the remaining lifetime of every fresh entry at the ceiling `ceiling` gives for it
    /// (a lowered TTL ceiling reloaded: an operator who lowers it to get rid of a bad record must
    /// not wait out the old TTL). `ceiling(name, kind)` is asked once per member with the entry's
    /// name (lower-case wire form) and what the member is; `None` leaves the member uncapped. A
    /// pair keeps one expiry: it is capped at the lower of its members' ceilings. A capped entry
    /// is treated as stored now with the ceiling as its lifetime (its prefetch window and age
    /// follow), and answers rendered from it show the lowered TTL, since served TTLs are the
    /// remaining lifetime. Expired (stale) entries are left alone: they are already served with
    /// [`STALE_TTL`]. Walks each shard once under its write lock; allocates nothing. Returns the
    /// number of entries capped.
    pub fn cap_ttl(&self, now: Timestamp, mut ceiling: impl FnMut(&[u8], CapKind) -> Option<Ttl>) -> usize {
        let mut capped = 0;
        for cell in self.shards.iter() {
            let mut shard = cell.0.write();
            for slot in shard.table.iter_mut() {
                if now >= slot.expires_at {
                    continue;
                }
                let mut lowest: Option<Ttl> = None;
                for i in 0..2 {
                    let Some((msg, _)) = slot.member(i) else { break };
                    let kind = if is_failure_message(msg) {
                        CapKind::Failure
                    } else if is_denial(msg) {
                        CapKind::Denial
                    } else {
                        CapKind::Positive
                    };
                    if let Some(c) = ceiling(slot.name(), kind) {
                        lowest = Some(lowest.map_or(c, |l| l.min(c)));
                    }
                }
                let Some(max) = lowest else { continue };
                if slot.expires_at.millis_since(now) > max.secs() as u64 * 1000 {
                    slot.expires_at = now.add_secs(max.secs());
                    slot.lifetime = max;
                    // A fresh entry's counter is its hits (the prefetch threshold), kept; the
                    // refresh claim is cleared so the shortened entry can still be prefetched.
                    slot.state.fetch_and(!REFRESH_CLAIMED, Relaxed);
                    capped += 1;
                }
            }
        }
        capped
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
        &self.shards[((hash >> 48) & self.shard_mask) as usize].0
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
        let slot = shard.find(hash, key)?;
        let (message, ttl_offsets) = slot.member(member.index())?;
        let split = slot.state.load(Relaxed) & SPLIT != 0;
        let (ttl, freshness) = if now < slot.expires_at {
            let remaining_ms = slot.expires_at.millis_since(now);
            (
                remaining_ms.div_ceil(1000) as u32,
                // A failure entry is never prefetched: it must expire so the next miss retries.
                Freshness::Fresh {
                    refresh_due: !is_failure_message(message) && self.claim_refresh(slot, remaining_ms),
                },
            )
        } else if slot.is_dead(now, self.max_stale()) || is_failure_message(message) {
            // A failure entry is never served stale: once expired it only remembers its backoff.
            return None;
        } else {
            let expired_ms = now.millis_since(slot.expires_at);
            let refresh_allowed = expired_ms >= slot.hits_or_retry.load(Relaxed) as u64;
            (STALE_TTL, Freshness::Stale { expired_for_secs: (expired_ms / 1000) as u32, refresh_allowed })
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
        // Hits are counted only up to the threshold: past it the count is never read, so a hit
        // on a popular entry is a plain load instead of a locked add that dirties the entry's
        // cache line (which would bounce between cores serving the same name).
        if slot.hits_or_retry.load(Relaxed) < PREFETCH_MIN_HITS {
            let hits = slot.hits_or_retry.fetch_add(1, Relaxed).saturating_add(1);
            if hits < PREFETCH_MIN_HITS {
                return false;
            }
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

    /// Records that resolving `key` failed (SERVFAIL, REFUSED or every attempt timed out, after
    /// the retry on another endpoint). Stale data for the key is kept and its refresh backs off;
    /// otherwise a failure entry answers SERVFAIL for `policy.initial`, doubling each time the
    /// failure repeats (the previous failure entry still known) up to `policy.max`. Answers
    /// served from a failure entry do not count as repeats: only a new failed fetch does. A pair
    /// key fails both members.
    pub fn insert_failure(
        &self,
        key: &CacheKey<'_>,
        policy: &FailurePolicy,
        now: Timestamp,
    ) -> Result<FailureRecorded, InsertError> {
        let hash = key.hash_with(&self.hasher);
        let repeats = {
            let shard = self.shard_of(hash).read();
            match shard.find(hash, key) {
                Some(slot) if now < slot.expires_at && !slot.has_failure() => return Ok(FailureRecorded::FreshKept),
                Some(slot) if !slot.has_failure() && !slot.is_dead(now, self.max_stale()) => {
                    // RFC 8767: stale data keeps being served; the refresh waits like a new
                    // failure would, doubling per failed refresh.
                    let prev = slot
                        .state
                        .fetch_update(Relaxed, Relaxed, |s| {
                            let exp = (s >> BACKOFF_SHIFT).saturating_add(1).min(BACKOFF_MAX_EXP);
                            Some((s & ((1 << BACKOFF_SHIFT) - 1)) | (exp << BACKOFF_SHIFT))
                        })
                        .unwrap_or(0);
                    let retry_in = policy.after((prev >> BACKOFF_SHIFT) as u32);
                    let expired_ms = now.millis_since(slot.expires_at);
                    let retry_at = expired_ms.saturating_add(retry_in.secs() as u64 * 1000);
                    slot.hits_or_retry.store(retry_at.min(u32::MAX as u64) as u32, Relaxed);
                    self.counters.stale_kept.fetch_add(1, Relaxed);
                    return Ok(FailureRecorded::StaleKept { retry_in });
                }
                // The previous failure entry, fresh or expired: the failure repeats.
                Some(slot) if slot.has_failure() && !slot.is_dead(now, self.max_stale()) => {
                    slot.state.load(Relaxed) as u32 >> BACKOFF_SHIFT
                }
                _ => 0,
            }
        };
        let lifetime = policy.after(repeats);
        let messages: Vec<CacheableAnswer> = match key.kind {
            KeyKind::Pair => PairMember::BOTH.iter().map(|m| failure_answer(key, m.qtype())).collect(),
            KeyKind::Single(qtype) => vec![failure_answer(key, qtype)],
        };
        let refs: Vec<&CacheableAnswer> = messages.iter().collect();
        let blob = build_blob(key.name.as_wire(), &refs);
        let exp = (repeats + 1).min(BACKOFF_MAX_EXP as u32) as u8;
        self.store_blob(key, blob, lifetime, now.add_secs(lifetime.secs()), exp << BACKOFF_SHIFT, now)?;
        self.counters.failures.fetch_add(1, Relaxed);
        Ok(FailureRecorded::Stored { lifetime })
    }

    /// Stores a pair of which only one member was answered in time (issue: one record type's
    /// failure is that type's). The answered member is served as data; the other is served from
    /// stale data the entry still held for it, else as a failure member (SERVFAIL). Both live
    /// one lifetime, `max(min_ttl, failure initial)`, so they still expire together and the next
    /// miss fetches both again. A failure member is never NXDOMAIN, so this can never cache the
    /// NXDOMAIN-next-to-NOERROR split that made glibc give up.
    pub fn insert_pair_degraded(
        &self,
        key: &CacheKey<'_>,
        answered: (PairMember, &CacheableAnswer),
        policy: &TtlPolicy,
        failure: &FailurePolicy,
        now: Timestamp,
    ) -> Result<Inserted, InsertError> {
        let (member, answer) = answered;
        let other = member.other();
        // Stale data for the failed member wins over a failure member (RFC 8767).
        let stale_other = {
            let hash = key.hash_with(&self.hasher);
            let shard = self.shard_of(hash).read();
            shard.find(hash, key).filter(|s| !s.is_dead(now, self.max_stale())).and_then(|s| {
                let (msg, offsets) = s.member(other.member().index())?;
                (!is_failure_message(msg)).then(|| CacheableAnswer {
                    message: msg.to_vec(),
                    ttl_offsets: offsets.chunks_exact(2).map(|o| u16::from_le_bytes([o[0], o[1]])).collect(),
                    // Not stored: an entry's lifetime is its own, given below.
                    disposition: answer.disposition,
                })
            })
        };
        let other_answer = stale_other.unwrap_or_else(|| failure_answer(key, other.qtype()));
        let lifetime = policy.min_ttl.max(failure.initial).max(Ttl::from_secs(1));
        let answers = match member {
            PairMember::A => [answer, &other_answer],
            PairMember::Aaaa => [&other_answer, answer],
        };
        if !answers.iter().all(|a| a.is_consistent()) {
            self.counters.rejected.fetch_add(1, Relaxed);
            return Err(InsertError::Inconsistent);
        }
        let blob = build_blob(key.name.as_wire(), &answers);
        let inserted = self.store_blob(key, blob, lifetime, now.add_secs(lifetime.secs()), 0, now)?;
        if is_failure_message(&other_answer.message) {
            self.counters.failures.fetch_add(1, Relaxed);
        }
        Ok(inserted)
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
        let expires_at = now.add_secs(lifetime.secs());
        self.store_blob(key, blob, lifetime, expires_at, if split { SPLIT } else { 0 }, now)
    }

    /// Stores a built entry blob under `key`.
    fn store_blob(
        &self,
        key: &CacheKey<'_>,
        blob: Box<[u8]>,
        lifetime: Ttl,
        expires_at: Timestamp,
        state: u8,
        now: Timestamp,
    ) -> Result<Inserted, InsertError> {
        let split = state & SPLIT != 0;
        let need = allocated(blob.len()) + size_of::<Slot>() + 1;
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
            state: AtomicU8::new(state),
            hits_or_retry: AtomicU32::new(0),
            expires_at,
            lifetime,
        };
        let mut shard = self.shard_of(hash).write();
        let before_bytes = shard.bytes();
        let before_entries = shard.table.len();
        let mut evicted = 0;

        if let Some(existing) = shard.table.find_mut(hash, |s| s.matches(hash, key)) {
            let (old, new) = (existing.bytes(), slot.bytes());
            *existing = slot;
            shard.blob_bytes = shard.blob_bytes - old + new;
        } else {
            // Make room first, counting the bucket this insert takes.
            while shard.bytes() + need > self.shard_budget && shard.evict_one(now, self.max_stale(), None) {
                evicted += 1;
            }
            shard.blob_bytes += slot.bytes();
            shard.table.insert_unique(hash, slot, |s| s.hash);
            // Growth of the table may still overshoot by a rehash; shed entries (never the new
            // one) until the shard is back under its budget.
            while shard.bytes() > self.shard_budget
                && shard.table.len() > 1
                && shard.evict_one(now, self.max_stale(), Some(hash))
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
        let Ok(entry) = shard.table.find_entry(hash, |s| s.matches(hash, key)) else {
            return false;
        };
        let (slot, _) = entry.remove();
        shard.blob_bytes -= slot.bytes();
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
        let slot = shard.find(hash, key)?;
        Some((now.millis_since(slot.stored_at()), slot.lifetime))
    }
}

/// Handing a warm cache to a successor process (rolling update): every live entry is exported as
/// a self-describing record; the successor validates each record fully before storing it, so a
/// damaged or hostile stream can cost entries but never corrupt the cache or panic.
///
/// Record: `kind_code: u32 LE, class: u16 LE, key flags: u8, split: u8, lifetime secs: u32 LE,
/// remaining ms: i64 LE (negative: expired that long ago), entry blob`. Times are relative because
/// the two processes' clocks have different epochs.
impl Cache {
    /// Calls `emit` with one record per entry not past its stale window; stops early if `emit`
    /// returns false. Returns the number of records emitted.
    pub fn export(&self, now: Timestamp, mut emit: impl FnMut(&[u8]) -> bool) -> usize {
        let mut n = 0;
        let mut rec = Vec::with_capacity(512);
        for cell in self.shards.iter() {
            let shard = cell.0.read();
            for slot in shard.table.iter() {
                if slot.is_dead(now, self.max_stale()) {
                    continue;
                }
                let remaining = slot.expires_at.as_millis() as i64 - now.as_millis() as i64;
                rec.clear();
                rec.extend_from_slice(&slot.kind_code.to_le_bytes());
                rec.extend_from_slice(&slot.class.to_le_bytes());
                rec.push(slot.key_flags);
                rec.push((slot.state.load(Relaxed) & SPLIT != 0) as u8);
                rec.extend_from_slice(&slot.lifetime.secs().to_le_bytes());
                rec.extend_from_slice(&remaining.to_le_bytes());
                rec.extend_from_slice(&slot.blob);
                if !emit(&rec) {
                    return n;
                }
                n += 1;
            }
        }
        n
    }

    /// Validates and stores one exported record.
    pub fn import(&self, record: &[u8], now: Timestamp) -> Result<Inserted, InsertError> {
        const HEAD: usize = 4 + 2 + 1 + 1 + 4 + 8;
        let bad = || {
            self.counters.rejected.fetch_add(1, Relaxed);
            InsertError::Inconsistent
        };
        if record.len() <= HEAD {
            return Err(bad());
        }
        let kind_code = u32::from_le_bytes(record[0..4].try_into().map_err(|_| bad())?);
        let class = u16::from_le_bytes([record[4], record[5]]);
        let flags = record[6];
        let split = record[7] != 0;
        let lifetime = Ttl::from_secs(u32::from_le_bytes(record[8..12].try_into().map_err(|_| bad())?));
        let remaining = i64::from_le_bytes(record[12..20].try_into().map_err(|_| bad())?);
        let blob = &record[HEAD..];
        if flags > 3 || kind_code > u16::MAX as u32 + 1 || !blob_is_valid(blob, kind_code == 0) {
            return Err(bad());
        }
        let name = LowerName::new(&blob[1..1 + blob[0] as usize]).map_err(|_| bad())?;
        let kind = if kind_code == 0 { KeyKind::Pair } else { KeyKind::Single((kind_code - 1) as u16) };
        let key = CacheKey { name, kind, class, dnssec_ok: flags & 1 != 0, checking_disabled: flags & 2 != 0 };
        let expires_at = if remaining >= 0 {
            now.add_millis(remaining as u64)
        } else {
            Timestamp::from_millis(now.as_millis().saturating_sub(remaining.unsigned_abs()))
        };
        if now >= expires_at.add_secs(self.max_stale().secs()) {
            return Err(bad());
        }
        self.store_blob(&key, blob.into(), lifetime, expires_at, if split { SPLIT } else { 0 }, now)
    }
}

/// Whether `blob` has the entry layout (see [`Slot`]): a lower-case name, one member (two for a
/// pair), lengths that add up, messages whose question is the name, and TTL offsets inside them.
fn blob_is_valid(blob: &[u8], pair: bool) -> bool {
    let Some(&name_len) = blob.first() else { return false };
    let name_end = 1 + name_len as usize;
    let Some(name) = blob.get(1..name_end) else { return false };
    if LowerName::new(name).is_err() {
        return false;
    }
    let Some(&members) = blob.get(name_end) else { return false };
    if members as usize != if pair { 2 } else { 1 } {
        return false;
    }
    let header = name_end + 1;
    let Some(heads) = blob.get(header..header + 3 * members as usize) else { return false };
    let lens: Vec<(usize, usize)> =
        heads.chunks_exact(3).map(|h| (u16::from_le_bytes([h[0], h[1]]) as usize, h[2] as usize)).collect();
    let offsets_start = header + 3 * members as usize;
    let offsets_len: usize = lens.iter().map(|(_, t)| 2 * t).sum();
    let msgs_len: usize = lens.iter().map(|(m, _)| m).sum();
    if blob.len() != offsets_start + offsets_len + msgs_len {
        return false;
    }
    let mut off_pos = offsets_start;
    let mut msg_pos = offsets_start + offsets_len;
    for (msg_len, ttls) in lens {
        let msg = &blob[msg_pos..msg_pos + msg_len];
        if msg_len < 12 + name.len() + 4 || &msg[12..12 + name.len()] != name {
            return false;
        }
        for i in 0..ttls {
            let o = u16::from_le_bytes([blob[off_pos + 2 * i], blob[off_pos + 2 * i + 1]]) as usize;
            if o < 12 || o + 4 > msg_len {
                return false;
            }
        }
        off_pos += 2 * ttls;
        msg_pos += msg_len;
    }
    true
}
