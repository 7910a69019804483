//! The sampled query log (`log.queries_sample_rate`): one JSON/text line per sampled answered
//! query. qnames and clients go only here, never into a metric label.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use nodedns_wire::{Query, name_from_wire};

/// At most this many sampled query lines a second, whatever the sample rate and the query rate:
/// a flood must not fill the disk.
pub const QUERY_LOG_PER_SEC: u64 = 100;

/// The sampler. The rate applies live on reload.
pub struct QueryLog {
    /// The fraction of queries logged (0 = off), as `f64` bits.
    rate_bits: AtomicU64,
    epoch: Instant,
    second: AtomicU64,
    used: AtomicU64,
}

impl QueryLog {
    pub fn new(rate: f64) -> Self {
        Self {
            rate_bits: AtomicU64::new(rate.to_bits()),
            epoch: Instant::now(),
            second: AtomicU64::new(0),
            used: AtomicU64::new(0),
        }
    }

    pub fn set_rate(&self, rate: f64) {
        self.rate_bits.store(rate.to_bits(), Relaxed);
    }

    fn rate(&self) -> f64 {
        f64::from_bits(self.rate_bits.load(Relaxed))
    }

    /// Whether sampling is on (checked before any work on the hit path).
    #[inline]
    pub fn on(&self) -> bool {
        self.rate() > 0.0
    }

    /// Logs one answered query with probability `rate`, within [`QUERY_LOG_PER_SEC`].
    pub fn sample(
        &self,
        client: Option<SocketAddr>,
        proto: &'static str,
        query: &Query<'_>,
        response: &[u8],
        result: &'static str,
        elapsed: Duration,
    ) {
        let rate = self.rate();
        if rate <= 0.0 || rand::random::<f64>() >= rate || !self.within_budget() {
            return;
        }
        let name = name_from_wire(query.qname_wire()).map(|n| n.to_ascii()).unwrap_or_default();
        tracing::info!(
            target: "nodedns::query",
            client = ?client,
            proto,
            qname = %name,
            qtype = query.qtype,
            rcode = nodedns_wire::response_rcode_label(response),
            cache = result,
            micros = elapsed.as_micros() as u64,
            "query"
        );
    }

    fn within_budget(&self) -> bool {
        let now = self.epoch.elapsed().as_secs();
        if self.second.swap(now, Relaxed) != now {
            self.used.store(0, Relaxed);
        }
        self.used.fetch_add(1, Relaxed) < QUERY_LOG_PER_SEC
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_at_zero_and_the_rate_changes_live() {
        let log = QueryLog::new(0.0);
        assert!(!log.on());
        log.set_rate(0.5);
        assert!(log.on());
    }

    #[test]
    fn at_most_the_budget_per_second() {
        let log = QueryLog::new(1.0);
        let allowed = (0..1000).filter(|_| log.within_budget()).count() as u64;
        // A second boundary may fall inside the loop: at most two seconds' worth.
        assert!((QUERY_LOG_PER_SEC..=2 * QUERY_LOG_PER_SEC).contains(&allowed), "{allowed}");
    }
}
