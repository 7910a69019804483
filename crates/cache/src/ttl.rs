//! Time and TTL types. The cache never reads a clock: callers pass [`Timestamp`]s, so policy is
//! tested with exact, controlled time.

use std::fmt;

/// A monotonic point in time, in milliseconds since an arbitrary epoch chosen by the caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp(u64);

impl Timestamp {
    pub const fn from_millis(ms: u64) -> Self {
        Self(ms)
    }
    pub const fn from_secs(s: u64) -> Self {
        Self(s.saturating_mul(1000))
    }
    pub const fn as_millis(self) -> u64 {
        self.0
    }
    pub const fn add_secs(self, secs: u32) -> Self {
        Self(self.0.saturating_add(secs as u64 * 1000))
    }
    pub const fn add_millis(self, ms: u64) -> Self {
        Self(self.0.saturating_add(ms))
    }
    /// Milliseconds from `earlier` to `self`, zero if `earlier` is later.
    pub const fn millis_since(self, earlier: Timestamp) -> u64 {
        self.0.saturating_sub(earlier.0)
    }
}

/// A DNS TTL in seconds. RFC 2181 §8: a TTL is an unsigned 31-bit value; values with the top bit
/// set are treated as zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Ttl(u32);

impl Ttl {
    pub const ZERO: Ttl = Ttl(0);
    /// RFC 2181 §8: the largest TTL a server may send.
    pub const MAX: Ttl = Ttl(0x7fff_ffff);

    /// Builds a TTL from a wire value, applying RFC 2181 §8.
    pub const fn from_wire(v: u32) -> Self {
        if v > Self::MAX.0 { Ttl(0) } else { Ttl(v) }
    }
    pub const fn from_secs(v: u32) -> Self {
        Self::from_wire(v)
    }
    pub const fn secs(self) -> u32 {
        self.0
    }
    pub fn clamp_to(self, floor: Ttl, ceiling: Ttl) -> Ttl {
        // A ceiling below the floor is rejected by config validation; if it ever happens, the
        // floor wins so an answer is never cached for less than `min_ttl`.
        Ttl(self.0.min(ceiling.0).max(floor.0))
    }
}

impl fmt::Display for Ttl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}s", self.0)
    }
}

/// The TTL bounds of one zone (`cache.*_ttl_secs`, overridable per zone).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TtlPolicy {
    /// Floor for every cached TTL; also the lifetime of split pairs and of denials without SOA.
    pub min_ttl: Ttl,
    /// Ceiling for positive answers.
    pub max_ttl: Ttl,
    /// Ceiling for NXDOMAIN / NODATA (RFC 2308 §5).
    pub denial_max_ttl: Ttl,
}

impl Default for TtlPolicy {
    fn default() -> Self {
        Self { min_ttl: Ttl(5), max_ttl: Ttl(3600), denial_max_ttl: Ttl(1800) }
    }
}
