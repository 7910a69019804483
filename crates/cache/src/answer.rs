//! Cacheable answers: wire bytes plus the offsets of their TTL fields, and what the answer means
//! for its lifetime.

use crate::ttl::{Ttl, TtlPolicy};

/// RFC 8767 §4: the TTL to put on an answer served from expired data.
pub const STALE_TTL: u32 = 30;

/// What an upstream answer means for caching. Derived by the wire layer from the response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Disposition {
    /// NOERROR with records of the asked type; `ttl` is the smallest TTL in the answer section.
    Positive { ttl: Ttl },
    /// NXDOMAIN, or NODATA (NOERROR without records of the asked type), RFC 2308.
    Denial {
        nxdomain: bool,
        /// The authority section's SOA: (its TTL, its MINIMUM field).
        soa: Option<(Ttl, Ttl)>,
        /// The smallest TTL of answer-section records (a CNAME chain ending in the denial).
        chain_ttl: Option<Ttl>,
    },
}

impl Disposition {
    pub fn is_nxdomain(&self) -> bool {
        matches!(self, Disposition::Denial { nxdomain: true, .. })
    }

    /// How long this answer may be cached under `policy`.
    pub fn lifetime(&self, policy: &TtlPolicy) -> Ttl {
        match *self {
            Disposition::Positive { ttl } => ttl.clamp_to(policy.min_ttl, policy.max_ttl),
            // RFC 2308 §5: a denial lives min(SOA TTL, SOA MINIMUM). §5 also says a denial without
            // an SOA SHOULD NOT be cached; we keep it for the floor only, which shields the
            // upstream from retry storms without holding an unverifiable denial for long.
            Disposition::Denial { soa: None, .. } => policy.min_ttl,
            Disposition::Denial { soa: Some((soa_ttl, minimum)), chain_ttl, .. } => {
                let mut ttl = soa_ttl.min(minimum);
                if let Some(chain) = chain_ttl {
                    ttl = ttl.min(chain);
                }
                ttl.clamp_to(policy.min_ttl, policy.denial_max_ttl)
            }
        }
    }
}

/// An answer ready to be cached: a complete DNS message (header, lower-cased question, records,
/// no OPT record) and the offsets of every TTL field in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheableAnswer {
    pub message: Vec<u8>,
    pub ttl_offsets: Vec<u16>,
    pub disposition: Disposition,
}

impl CacheableAnswer {
    /// The TTL offsets as little-endian bytes, the form [`AnswerView::detached`] takes.
    pub fn ttl_offsets_le(&self) -> Vec<u8> {
        self.ttl_offsets.iter().flat_map(|o| o.to_le_bytes()).collect()
    }

    /// Whether the offsets all point inside the message, leaving room for a 4-byte TTL.
    pub(crate) fn is_consistent(&self) -> bool {
        self.message.len() <= u16::MAX as usize
            && self.ttl_offsets.len() <= u8::MAX as usize
            && self.ttl_offsets.iter().all(|&o| o as usize >= 12 && o as usize + 4 <= self.message.len())
    }
}

/// Whether a stored message is a failure entry. Upstream SERVFAIL answers are never ingested as
/// data (the wire layer turns them into failures), so a stored SERVFAIL is always one the cache
/// built itself in [`crate::Cache::insert_failure`].
pub(crate) fn is_failure_message(message: &[u8]) -> bool {
    message.get(3).is_some_and(|b| b & 0x0f == RCODE_SERVFAIL)
}

const RCODE_SERVFAIL: u8 = 2;

/// The SERVFAIL message a failure entry holds: header (QR, RD, RA, rcode 2), the question, no
/// records. Rendered like any cached answer, so a failure hit costs what a hit costs.
pub(crate) fn failure_message(name: &[u8], qtype: u16, qclass: u16) -> Vec<u8> {
    let mut m = Vec::with_capacity(12 + name.len() + 4);
    m.extend_from_slice(&[0, 0, 0x81, 0x80 | RCODE_SERVFAIL, 0, 1, 0, 0, 0, 0, 0, 0]);
    m.extend_from_slice(name);
    m.extend_from_slice(&qtype.to_be_bytes());
    m.extend_from_slice(&qclass.to_be_bytes());
    m
}

/// How fresh a cached answer is at lookup time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Freshness {
    Fresh {
        /// Set once per entry when it is popular and close to expiry: the caller should refresh
        /// it in the background (prefetch) so it never misses.
        refresh_due: bool,
    },
    /// Expired, but within the stale window: servable only if the upstream fails (RFC 8767).
    Stale {
        expired_for_secs: u32,
        /// False while a refresh that failed is backing off (RFC 9520 §3.2: a failed refresh of
        /// stale data is not retried sooner than a new failure would be): answer stale at once.
        refresh_allowed: bool,
    },
}

/// A cached answer seen under the cache lock.
#[derive(Clone, Copy, Debug)]
pub struct AnswerView<'a> {
    pub(crate) message: &'a [u8],
    pub(crate) ttl_offsets: &'a [u8],
    /// The TTL every record is served with: the entry's remaining lifetime, or [`STALE_TTL`].
    pub ttl: u32,
    pub freshness: Freshness,
    /// The entry was a split pair (one member NXDOMAIN, the other NOERROR).
    pub split: bool,
}

impl<'a> AnswerView<'a> {
    /// A view of an answer held outside the cache (e.g. one too large to store, or a fetch
    /// result handed to coalesced waiters). `ttl_offsets_le` is the offsets as little-endian
    /// u16 pairs, as [`CacheableAnswer::ttl_offsets_le`] produces.
    pub fn detached(message: &'a [u8], ttl_offsets_le: &'a [u8], ttl: u32, split: bool) -> Self {
        AnswerView {
            message,
            ttl_offsets: ttl_offsets_le,
            ttl,
            freshness: Freshness::Fresh { refresh_due: false },
            split,
        }
    }

    pub fn message_len(&self) -> usize {
        self.message.len()
    }

    /// The stored message, TTLs not yet patched.
    pub fn message(&self) -> &[u8] {
        self.message
    }

    /// Whether this is a failure entry (RFC 9520): a cached SERVFAIL, never upstream data.
    pub fn is_failure(&self) -> bool {
        is_failure_message(self.message)
    }

    /// Copies the message into `out` with every TTL set to `self.ttl`; returns its length, or
    /// `None` if `out` is too small.
    pub fn write_into(&self, out: &mut [u8]) -> Option<usize> {
        let len = self.message.len();
        let dst = out.get_mut(..len)?;
        dst.copy_from_slice(self.message);
        let ttl = self.ttl.to_be_bytes();
        for off in self.ttl_offsets.chunks_exact(2) {
            let off = u16::from_le_bytes([off[0], off[1]]) as usize;
            // Offsets were checked on insert (`is_consistent`), so this cannot fail.
            if let Some(field) = dst.get_mut(off..off + 4) {
                field.copy_from_slice(&ttl);
            }
        }
        Some(len)
    }

    /// Like [`AnswerView::write_into`] for the first `len` bytes of the message only (a
    /// truncated UDP answer cut at a record boundary): the TTLs inside them are patched, the
    /// rest is not copied. `None` if `len` is past the message or `out` is too small.
    pub fn write_prefix_into(&self, len: usize, out: &mut [u8]) -> Option<usize> {
        let src = self.message.get(..len)?;
        let dst = out.get_mut(..len)?;
        dst.copy_from_slice(src);
        let ttl = self.ttl.to_be_bytes();
        for off in self.ttl_offsets.chunks_exact(2) {
            let off = u16::from_le_bytes([off[0], off[1]]) as usize;
            // A TTL field the cut splits cannot happen at a record boundary; skip it anyway.
            if let Some(field) = dst.get_mut(off..off + 4) {
                field.copy_from_slice(&ttl);
            }
        }
        Some(len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> TtlPolicy {
        TtlPolicy { min_ttl: Ttl::from_secs(5), max_ttl: Ttl::from_secs(3600), denial_max_ttl: Ttl::from_secs(1800) }
    }

    #[test]
    fn positive_lifetime_is_clamped() {
        let p = policy();
        let life = |t| Disposition::Positive { ttl: Ttl::from_secs(t) }.lifetime(&p).secs();
        assert_eq!(life(0), 5);
        assert_eq!(life(30), 30);
        assert_eq!(life(86400), 3600);
    }

    #[test]
    fn denial_lifetime_follows_rfc2308() {
        let p = policy();
        let d = |soa: Option<(u32, u32)>, chain: Option<u32>| {
            Disposition::Denial {
                nxdomain: true,
                soa: soa.map(|(a, b)| (Ttl::from_secs(a), Ttl::from_secs(b))),
                chain_ttl: chain.map(Ttl::from_secs),
            }
            .lifetime(&p)
            .secs()
        };
        assert_eq!(d(Some((3600, 60)), None), 60, "min(SOA TTL, MINIMUM)");
        assert_eq!(d(Some((20, 60)), None), 20);
        assert_eq!(d(Some((3600, 7200)), None), 1800, "denial ceiling");
        assert_eq!(d(Some((1, 1)), None), 5, "floor");
        assert_eq!(d(None, None), 5, "no SOA: floor only");
        assert_eq!(d(Some((300, 300)), Some(40)), 40, "a CNAME chain bounds it");
    }

    #[test]
    fn ttl_with_top_bit_is_zero() {
        assert_eq!(Ttl::from_wire(0x8000_0000).secs(), 0);
        assert_eq!(Ttl::from_wire(0x7fff_ffff).secs(), 0x7fff_ffff);
    }
}
