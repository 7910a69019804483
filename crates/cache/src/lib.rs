//! The nodedns answer cache.
//!
//! Pure: no I/O and no clock. Callers pass a [`Timestamp`] into every operation, so TTL,
//! stale and prefetch policy are tested with exact time.
//!
//! What it guarantees:
//! - A and AAAA of one name (class IN) live in one entry with one expiry, so a client can never
//!   see one member expire before the other ([`Cache::insert_pair`]).
//! - Served TTLs are the entry's remaining lifetime, equal for every record and both members.
//! - Bytes held never exceed `max_bytes`: each shard evicts (CLOCK, dead entries first) before
//!   it grows past its share.
//! - A resolution failure is cached as a failure entry (RFC 9520): a SERVFAIL message served
//!   like any answer while fresh, never served stale, its lifetime doubling while the failure
//!   repeats; stale data for the same key always wins over it (RFC 8767).
//! - A hit allocates nothing: [`Cache::lookup`] hands a borrowed view of the stored wire
//!   message to a closure that renders it.
#![forbid(unsafe_code)]

mod answer;
mod key;
mod store;
mod ttl;

pub use answer::{AnswerView, CacheableAnswer, Disposition, Freshness, STALE_TTL};
pub use key::{
    CLASS_IN, CacheKey, KeyKind, LowerName, MAX_LABEL_LEN, MAX_NAME_LEN, Member, NameError, PairMember, TYPE_A,
    TYPE_AAAA, lowercase_into,
};
pub use store::{Cache, CacheCounters, CacheLimits, CapKind, FailurePolicy, FailureRecorded, InsertError, Inserted};
pub use ttl::{Timestamp, Ttl, TtlPolicy};

#[cfg(test)]
mod tests;
