//! One upstream endpoint (an IP:port): its counters, latency histogram and health state.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use tokio::sync::Semaphore;
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

/// Health of an endpoint, for outlier ejection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Health {
    Healthy,
    /// Ejected; re-admitted when its health probe is answered or, on probation, when the
    /// backoff ends.
    Ejected,
}

/// Outcomes remembered for failure-rate ejection.
pub const OUTCOME_WINDOW: u32 = 20;

/// Outcomes recorded before the window's failure count is judged (`window_failures` of them
/// failing: half of these).
pub const WINDOW_MIN_OUTCOMES: u32 = 10;

/// What a failed attempt says, and about whom (issue #13: a fault stays as small as it is).
///
/// The rule, and why: an endpoint is judged only on evidence about the endpoint. A SERVFAIL,
/// REFUSED, timeout or bad response for one question is first of all that question's outcome —
/// one external domain with broken servers makes CoreDNS SERVFAIL that one name on every pod, and
/// counting it against the endpoint ejected the only endpoint of `.` and failed every other
/// external name for seconds. So:
/// - [`Evidence::Unreachable`] (connect refused, reset or timed out; a silent endpoint failing its
///   liveness probe) is about the endpoint: it counts toward ejection at once.
/// - [`Evidence::Question`] is about the question until a peer settles it: it counts against the
///   endpoint only when another endpoint then answered the same question
///   ([`Endpoint::record_failure`]), or when the endpoint's share of unconfirmed failures stands
///   out from its peers' (see `UpstreamPool`). A question that fails on every endpoint is the
///   name's outcome and counts against none.
/// - [`Evidence::Local`]: our own limit (in-flight cap, pipeline full); never the endpoint's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Evidence {
    Unreachable,
    Question,
    Local,
}

impl ErrorKind {
    /// What a failure of this kind says about the endpoint that produced it.
    pub fn evidence(self) -> Evidence {
        match self {
            ErrorKind::Connect => Evidence::Unreachable,
            // A connection that dies under a query was already retried once on a fresh one:
            // what is left may be the question (a query that crashes a connection), so a peer,
            // or the liveness probe when the endpoint goes silent, has to settle it.
            ErrorKind::Closed | ErrorKind::Timeout | ErrorKind::Malformed | ErrorKind::Mismatch | ErrorKind::Rcode => {
                Evidence::Question
            }
            ErrorKind::Overloaded => Evidence::Local,
        }
    }
}

/// Ejection policy.
#[derive(Clone, Copy, Debug)]
pub struct EjectionPolicy {
    /// Consecutive failures (confirmed by a peer, or unreachable) that eject an endpoint.
    pub consecutive_failures: u32,
    /// Failures among the last [`OUTCOME_WINDOW`] queries that eject an endpoint: catches the
    /// endpoint that fails a fraction of queries (a sick node) without ever failing 3 in a row.
    pub window_failures: u32,
    /// Outlier rule for failures no peer could settle: an endpoint whose failure share over its
    /// full window is at least this (percent) ...
    pub outlier_min_percent: u32,
    /// ... and at least this many times its peers' median share is ejected. Envoy's success-rate
    /// detection needs 5 hosts; CoreDNS runs 2–3 pods, so the rule compares with the median of
    /// however many peers there are, one included.
    pub outlier_factor: u32,
    /// First ejection period; doubled on each re-ejection up to `max_backoff`.
    pub base_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for EjectionPolicy {
    fn default() -> Self {
        Self {
            consecutive_failures: 3,
            window_failures: 5,
            outlier_min_percent: 25,
            outlier_factor: 3,
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
    /// Milliseconds since `epoch` when the first query was sent that has had no response of any
    /// kind (an answer, SERVFAIL, a bad message) since; 0 once anything came back. An idle
    /// endpoint is not a silent one; one sent queries for seconds without a word back is.
    unanswered_since_ms: AtomicU64,
    /// A liveness probe is under way (at most one per endpoint).
    probing: AtomicBool,
    /// Upstream queries in flight to this endpoint — client misses, pair members, prefetches,
    /// stale refreshes and probes alike — never more than the limit (issue #13: a storm of unique
    /// names from one node OOM-killed CoreDNS).
    permits: Semaphore,
    /// The limit `permits` was created with, for metrics.
    pub max_inflight: usize,
    epoch: Instant,
}

/// A change in an endpoint's health, returned so the caller can log it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HealthChange {
    Ejected { for_duration: Duration },
    Readmitted,
}

/// The default limit of upstream queries in flight to one endpoint.
pub const DEFAULT_MAX_INFLIGHT: usize = 1000;

impl Endpoint {
    pub fn new(addr: SocketAddr) -> Self {
        Self::with_limit(addr, DEFAULT_MAX_INFLIGHT)
    }

    /// An endpoint that never has more than `max_inflight` queries outstanding.
    pub fn with_limit(addr: SocketAddr, max_inflight: usize) -> Self {
        let max_inflight = max_inflight.clamp(1, Semaphore::MAX_PERMITS);
        Self {
            addr,
            stats: EndpointStats::default(),
            consecutive_failures: AtomicU32::new(0),
            outcomes: AtomicU64::new(0),
            outcome_count: AtomicU32::new(0),
            ejections_in_a_row: AtomicU32::new(0),
            ejected_until_ms: AtomicU64::new(0),
            ejections: AtomicU64::new(0),
            unanswered_since_ms: AtomicU64::new(0),
            probing: AtomicBool::new(false),
            permits: Semaphore::new(max_inflight),
            max_inflight,
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

    /// A slot for one upstream query, waiting at most `wait` for one to free up. `None`: the
    /// endpoint already holds its limit of queries (the caller sheds or tries another endpoint).
    pub async fn acquire(&self, wait: Duration) -> Option<InflightPermit<'_>> {
        let permit = match self.permits.try_acquire() {
            Ok(p) => p,
            Err(_) if wait.is_zero() => return None,
            Err(_) => tokio::time::timeout(wait, self.permits.acquire()).await.ok()?.ok()?,
        };
        self.stats.in_flight.fetch_add(1, Relaxed);
        let _ = self.unanswered_since_ms.compare_exchange(0, self.now_ms(), Relaxed, Relaxed);
        Some(InflightPermit { endpoint: self, _permit: permit })
    }

    /// Queries in flight now.
    pub fn in_flight(&self) -> usize {
        self.max_inflight - self.permits.available_permits()
    }

    /// Records an answered question; an endpoint on probation after ejection is re-admitted.
    pub fn record_success(&self, latency: Duration) -> Option<HealthChange> {
        self.stats.responses.fetch_add(1, Relaxed);
        self.stats.observe_latency(latency);
        self.note_response();
        self.consecutive_failures.store(0, Relaxed);
        self.record_outcome(false);
        if self.ejected_until_ms.swap(0, Relaxed) != 0 {
            self.ejections_in_a_row.store(0, Relaxed);
            return Some(HealthChange::Readmitted);
        }
        None
    }

    /// The endpoint sent something (an answer, an error rcode, a bad message): it is alive.
    pub fn note_response(&self) {
        self.unanswered_since_ms.store(0, Relaxed);
    }

    /// Counts a failure in the error counters only: what it says about the endpoint is decided
    /// later ([`Evidence`]).
    pub fn count_failure(&self, kind: ErrorKind) {
        self.stats.count_error(kind);
    }

    /// How long the endpoint has been sent queries without sending anything back.
    pub fn silent_for(&self) -> Duration {
        match self.unanswered_since_ms.load(Relaxed) {
            0 => Duration::ZERO,
            since => Duration::from_millis(self.now_ms().saturating_sub(since)),
        }
    }

    /// Claims the endpoint's one liveness probe; false if one is under way.
    pub fn begin_probe(&self) -> bool {
        !self.probing.swap(true, Relaxed)
    }

    pub fn end_probe(&self) {
        self.probing.store(false, Relaxed);
    }

    /// Records a failure that is evidence against this endpoint: unreachable, or confirmed by a
    /// peer answering the same question. Returns an ejection when this one crosses a threshold.
    pub fn record_failure(&self, policy: &EjectionPolicy) -> Option<HealthChange> {
        let failures = self.consecutive_failures.fetch_add(1, Relaxed) + 1;
        let window = self.record_outcome(true);
        let rate_exceeded = window.is_some_and(|w| w >= policy.window_failures);
        if failures < policy.consecutive_failures && !rate_exceeded {
            return None;
        }
        self.eject(policy)
    }

    /// Records a failure no peer could settle into the outcome window (not the consecutive
    /// count); the pool compares the window with the peers' ([`EjectionPolicy::outlier_factor`]).
    pub fn record_unsettled_failure(&self) {
        self.record_outcome(true);
    }

    /// The share of failures (percent) over a full window, `None` until the window is full.
    pub fn failure_percent(&self) -> Option<u32> {
        if self.outcome_count.load(Relaxed) < OUTCOME_WINDOW {
            return None;
        }
        Some(self.outcomes.load(Relaxed).count_ones() * 100 / OUTCOME_WINDOW)
    }

    /// Ejects the endpoint now (unless it already is), with exponential backoff.
    pub fn eject(&self, policy: &EjectionPolicy) -> Option<HealthChange> {
        if self.health() == Health::Ejected {
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

    /// Shifts one outcome into the window; returns the failures in it once it holds at least
    /// [`WINDOW_MIN_OUTCOMES`]: an endpoint that power-of-two selection steers away from (its
    /// failed attempts are slow) may see few queries, and must not need twenty of them before
    /// five confirmed failures count.
    fn record_outcome(&self, failure: bool) -> Option<u32> {
        let mask = (1u64 << OUTCOME_WINDOW) - 1;
        let prev =
            self.outcomes.fetch_update(Relaxed, Relaxed, |o| Some(((o << 1) | failure as u64) & mask)).unwrap_or(0);
        let bits = ((prev << 1) | failure as u64) & mask;
        let n = self.outcome_count.fetch_add(1, Relaxed) + 1;
        (n >= WINDOW_MIN_OUTCOMES).then(|| bits.count_ones())
    }

    /// Selection cost: in-flight queries weighted by mean latency (lower is better).
    pub(crate) fn load_score(&self) -> u64 {
        let in_flight = self.stats.in_flight.load(Relaxed).max(0) as u64;
        let ewma = self.stats.ewma_micros.load(Relaxed).max(100);
        (in_flight + 1) * ewma
    }
}

/// One upstream query's slot at an endpoint; released (and counted out) on drop.
pub struct InflightPermit<'a> {
    endpoint: &'a Endpoint,
    _permit: tokio::sync::SemaphorePermit<'a>,
}

impl Drop for InflightPermit<'_> {
    fn drop(&mut self) {
        self.endpoint.stats.in_flight.fetch_sub(1, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn ejection_and_readmission() {
        let e = Endpoint::new("127.0.0.1:53".parse().unwrap());
        let p = EjectionPolicy::default();
        assert_eq!(e.record_failure(&p), None);
        assert_eq!(e.record_failure(&p), None);
        assert_eq!(e.record_failure(&p), Some(HealthChange::Ejected { for_duration: Duration::from_secs(2) }));
        assert_eq!(e.health(), Health::Ejected);
        tokio::time::advance(Duration::from_millis(2100)).await;
        assert_eq!(e.health(), Health::Healthy);
        // On probation: one failure re-ejects, with a doubled backoff.
        assert_eq!(e.record_failure(&p), Some(HealthChange::Ejected { for_duration: Duration::from_secs(4) }));
        tokio::time::advance(Duration::from_millis(4100)).await;
        assert_eq!(e.record_success(Duration::from_millis(1)), Some(HealthChange::Readmitted));
        assert_eq!(e.health(), Health::Healthy);
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
                e.record_failure(&p)
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
            let change = if i % 25 == 0 { h.record_failure(&p) } else { h.record_success(Duration::from_millis(1)) };
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
