//! One upstream endpoint (an IP:port): its counters, latency histogram and health state.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use tokio::time::Instant;

/// Upper bounds (seconds) of the latency histogram buckets.
pub const LATENCY_BUCKETS: [f64; 12] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5];

/// Kinds of upstream failure, used as the `kind` metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    Connect,
    Closed,
    Timeout,
    Malformed,
    Mismatch,
    Rcode,
    Overloaded,
}

impl ErrorKind {
    pub const ALL: [ErrorKind; 7] = [
        ErrorKind::Connect,
        ErrorKind::Closed,
        ErrorKind::Timeout,
        ErrorKind::Malformed,
        ErrorKind::Mismatch,
        ErrorKind::Rcode,
        ErrorKind::Overloaded,
    ];

    pub fn label(self) -> &'static str {
        match self {
            ErrorKind::Connect => "connect",
            ErrorKind::Closed => "closed",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Malformed => "malformed",
            ErrorKind::Mismatch => "mismatch",
            ErrorKind::Rcode => "rcode",
            ErrorKind::Overloaded => "overloaded",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Counters for one endpoint, read by the metrics exporter at scrape time.
#[derive(Debug, Default)]
pub struct EndpointStats {
    pub queries: AtomicU64,
    pub responses: AtomicU64,
    errors: [AtomicU64; 7],
    pub in_flight: AtomicI64,
    pub open_connections: AtomicI64,
    pub connections_opened: AtomicU64,
    latency_buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    latency_count: AtomicU64,
    latency_sum_micros: AtomicU64,
    /// Exponentially weighted mean latency in microseconds, for endpoint selection.
    pub ewma_micros: AtomicU64,
}

impl EndpointStats {
    pub fn error(&self, kind: ErrorKind) -> u64 {
        self.errors[kind.index()].load(Relaxed)
    }

    pub(crate) fn count_error(&self, kind: ErrorKind) {
        self.errors[kind.index()].fetch_add(1, Relaxed);
    }

    pub(crate) fn observe_latency(&self, d: Duration) {
        let secs = d.as_secs_f64();
        for (i, bound) in LATENCY_BUCKETS.iter().enumerate() {
            if secs <= *bound {
                self.latency_buckets[i].fetch_add(1, Relaxed);
            }
        }
        self.latency_count.fetch_add(1, Relaxed);
        let micros = d.as_micros().min(u64::MAX as u128) as u64;
        self.latency_sum_micros.fetch_add(micros, Relaxed);
        let old = self.ewma_micros.load(Relaxed);
        let new = if old == 0 { micros } else { (old * 7 + micros) / 8 };
        self.ewma_micros.store(new, Relaxed);
    }

    /// Cumulative bucket counts (Prometheus `le` semantics), count and sum in seconds.
    pub fn latency(&self) -> ([u64; LATENCY_BUCKETS.len()], u64, f64) {
        let buckets = std::array::from_fn(|i| self.latency_buckets[i].load(Relaxed));
        (buckets, self.latency_count.load(Relaxed), self.latency_sum_micros.load(Relaxed) as f64 / 1e6)
    }
}

/// Health of an endpoint, for outlier ejection (passive: from real queries).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Health {
    Healthy,
    /// Ejected after consecutive failures; re-admitted on probation when the backoff ends.
    Ejected,
}

/// Outcomes remembered for failure-rate ejection.
pub const OUTCOME_WINDOW: u32 = 20;

/// Ejection policy.
#[derive(Clone, Copy, Debug)]
pub struct EjectionPolicy {
    /// Consecutive failures (errors or timeouts) that eject an endpoint.
    pub consecutive_failures: u32,
    /// Failures among the last [`OUTCOME_WINDOW`] queries that eject an endpoint: catches the
    /// endpoint that fails a fraction of queries (a sick node) without ever failing 3 in a row.
    pub window_failures: u32,
    /// First ejection period; doubled on each re-ejection up to `max_backoff`.
    pub base_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for EjectionPolicy {
    fn default() -> Self {
        Self {
            consecutive_failures: 3,
            window_failures: 5,
            base_backoff: Duration::from_secs(2),
            max_backoff: Duration::from_secs(60),
        }
    }
}

/// One upstream endpoint.
#[derive(Debug)]
pub struct Endpoint {
    pub addr: SocketAddr,
    pub stats: EndpointStats,
    consecutive_failures: AtomicU32,
    /// The last outcomes, newest in bit 0 (1 = failure), and how many are recorded.
    outcomes: AtomicU64,
    outcome_count: AtomicU32,
    ejections_in_a_row: AtomicU32,
    /// Milliseconds since `epoch` until which the endpoint is ejected; 0 when healthy.
    ejected_until_ms: AtomicU64,
    /// Total ejections, for metrics.
    pub ejections: AtomicU64,
    epoch: Instant,
}

/// A change in an endpoint's health, returned so the caller can log it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HealthChange {
    Ejected { for_duration: Duration },
    Readmitted,
}

impl Endpoint {
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            stats: EndpointStats::default(),
            consecutive_failures: AtomicU32::new(0),
            outcomes: AtomicU64::new(0),
            outcome_count: AtomicU32::new(0),
            ejections_in_a_row: AtomicU32::new(0),
            ejected_until_ms: AtomicU64::new(0),
            ejections: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64 + 1
    }

    pub fn health(&self) -> Health {
        let until = self.ejected_until_ms.load(Relaxed);
        if until != 0 && self.now_ms() < until { Health::Ejected } else { Health::Healthy }
    }

    /// Records a success; an endpoint on probation after ejection is fully re-admitted.
    pub fn record_success(&self, latency: Duration) -> Option<HealthChange> {
        self.stats.responses.fetch_add(1, Relaxed);
        self.stats.observe_latency(latency);
        self.consecutive_failures.store(0, Relaxed);
        self.record_outcome(false);
        if self.ejected_until_ms.swap(0, Relaxed) != 0 {
            self.ejections_in_a_row.store(0, Relaxed);
            return Some(HealthChange::Readmitted);
        }
        None
    }

    /// Records a failure; returns an ejection when this one crosses the threshold.
    pub fn record_failure(&self, kind: ErrorKind, policy: &EjectionPolicy) -> Option<HealthChange> {
        self.stats.count_error(kind);
        let failures = self.consecutive_failures.fetch_add(1, Relaxed) + 1;
        let window = self.record_outcome(true);
        let rate_exceeded = window.is_some_and(|w| w >= policy.window_failures);
        if (failures < policy.consecutive_failures && !rate_exceeded) || self.health() == Health::Ejected {
            return None;
        }
        self.outcomes.store(0, Relaxed);
        self.outcome_count.store(0, Relaxed);
        let n = self.ejections_in_a_row.fetch_add(1, Relaxed).min(16);
        let backoff = policy.base_backoff.saturating_mul(1 << n).min(policy.max_backoff);
        self.ejected_until_ms.store(self.now_ms() + backoff.as_millis() as u64, Relaxed);
        // After the backoff it gets one query on probation: one more failure re-ejects it.
        self.consecutive_failures.store(policy.consecutive_failures.saturating_sub(1), Relaxed);
        self.ejections.fetch_add(1, Relaxed);
        Some(HealthChange::Ejected { for_duration: backoff })
    }

    /// Shifts one outcome into the window; returns the failures in a full window.
    fn record_outcome(&self, failure: bool) -> Option<u32> {
        let mask = (1u64 << OUTCOME_WINDOW) - 1;
        let prev =
            self.outcomes.fetch_update(Relaxed, Relaxed, |o| Some(((o << 1) | failure as u64) & mask)).unwrap_or(0);
        let bits = ((prev << 1) | failure as u64) & mask;
        let n = self.outcome_count.fetch_add(1, Relaxed) + 1;
        (n >= OUTCOME_WINDOW).then(|| bits.count_ones())
    }

    /// Selection cost: in-flight queries weighted by mean latency (lower is better).
    pub(crate) fn load_score(&self) -> u64 {
        let in_flight = self.stats.in_flight.load(Relaxed).max(0) as u64;
        let ewma = self.stats.ewma_micros.load(Relaxed).max(100);
        (in_flight + 1) * ewma
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn ejection_and_readmission() {
        let e = Endpoint::new("127.0.0.1:53".parse().unwrap());
        let p = EjectionPolicy::default();
        assert_eq!(e.record_failure(ErrorKind::Timeout, &p), None);
        assert_eq!(e.record_failure(ErrorKind::Timeout, &p), None);
        assert_eq!(
            e.record_failure(ErrorKind::Timeout, &p),
            Some(HealthChange::Ejected { for_duration: Duration::from_secs(2) })
        );
        assert_eq!(e.health(), Health::Ejected);
        tokio::time::advance(Duration::from_millis(2100)).await;
        assert_eq!(e.health(), Health::Healthy);
        // On probation: one failure re-ejects, with a doubled backoff.
        assert_eq!(
            e.record_failure(ErrorKind::Timeout, &p),
            Some(HealthChange::Ejected { for_duration: Duration::from_secs(4) })
        );
        tokio::time::advance(Duration::from_millis(4100)).await;
        assert_eq!(e.record_success(Duration::from_millis(1)), Some(HealthChange::Readmitted));
        assert_eq!(e.health(), Health::Healthy);
        assert_eq!(e.stats.error(ErrorKind::Timeout), 4);
        assert_eq!(e.ejections.load(Relaxed), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_fraction_of_failures_ejects_without_three_in_a_row() {
        let e = Endpoint::new("127.0.0.1:53".parse().unwrap());
        let p = EjectionPolicy::default();
        let mut ejected = None;
        // 30% failures, never two in a row.
        for i in 0..40 {
            let change = if i % 10 == 0 || i % 10 == 3 || i % 10 == 6 {
                e.record_failure(ErrorKind::Timeout, &p)
            } else {
                e.record_success(Duration::from_millis(1))
            };
            if matches!(change, Some(HealthChange::Ejected { .. })) {
                ejected = Some(i);
                break;
            }
        }
        assert!(ejected.is_some(), "30% failures must eject");
        // A healthy endpoint with a rare failure is not ejected.
        let h = Endpoint::new("127.0.0.2:53".parse().unwrap());
        for i in 0..200 {
            let change = if i % 25 == 0 {
                h.record_failure(ErrorKind::Timeout, &p)
            } else {
                h.record_success(Duration::from_millis(1))
            };
            assert_eq!(change, None);
        }
    }

    #[test]
    fn latency_histogram_is_cumulative() {
        let s = EndpointStats::default();
        s.observe_latency(Duration::from_micros(300));
        s.observe_latency(Duration::from_millis(30));
        let (b, count, sum) = s.latency();
        assert_eq!(count, 2);
        assert_eq!(b[0], 1);
        assert_eq!(b[6], 2);
        assert!((sum - 0.0303).abs() < 1e-6);
    }
}
