//! What the resolver reports and needs from outside, as traits the daemon implements: its
//! counters (the metrics registry is the daemon's) and the observers of upstream exchanges
//! (dnstap's FORWARDER messages).

use std::sync::Arc;

use hickory_proto::rr::Name;
use nodedns_upstream::ExchangeObserver;

use crate::zone::Zone;

/// How a query was answered, for the duration histogram and the query log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheResult {
    Hit = 0,
    Miss = 1,
    Stale = 2,
}

const CACHE_RESULTS: [&str; 3] = ["hit", "miss", "stale"];

impl CacheResult {
    pub fn label(self) -> &'static str {
        CACHE_RESULTS[self as usize]
    }
}

/// Why the resolver shed a query (answered it from stale data, or REFUSED).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shed {
    /// `limits.max_inflight` client queries wait on the miss path.
    Inflight,
    /// Every endpoint of the zone holds `limits.max_upstream_inflight` queries.
    UpstreamInflight,
}

/// The resolver's counters. Called on the miss path and for failure answers only: a cache hit
/// of a positive answer reports nothing.
pub trait ResolverEvents: Send + Sync {
    fn shed(&self, why: Shed);
    /// Client queries waiting on the miss path went up (+1) or down (-1).
    fn waiting(&self, delta: i64);
    /// A failure entry (RFC 9520) was stored.
    fn failure_entry_stored(&self);
    /// A SERVFAIL was answered from a failure entry.
    fn failure_answered(&self);
    fn prefetch_started(&self);
    /// An NXDOMAIN was synthesized for `zone` under the Kubernetes DNS schema rule.
    fn synthesized(&self, zone: &Zone);
    /// The zone table was (re)built.
    fn zones_changed(&self, zones: &[Arc<Zone>]);
}

/// Counts nothing (tools like `nodedns probe`, and tests).
pub struct NoEvents;

impl ResolverEvents for NoEvents {
    fn shed(&self, _: Shed) {}
    fn waiting(&self, _: i64) {}
    fn failure_entry_stored(&self) {}
    fn failure_answered(&self) {}
    fn prefetch_started(&self) {}
    fn synthesized(&self, _: &Zone) {}
    fn zones_changed(&self, _: &[Arc<Zone>]) {}
}

/// Gives each zone's upstream pool the observer of its exchanges.
pub trait ForwarderTaps: Send + Sync {
    fn forwarder(&self, zone: &Name) -> Arc<dyn ExchangeObserver>;
}
