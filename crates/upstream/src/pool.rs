//! The upstreams of one zone: endpoint selection, retries, TC fallback and health.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use hickory_proto::rr::Name;
use parking_lot::RwLock;
use tokio::time::Instant;
use tracing::{info, warn};

use nodedns_cache::{CacheableAnswer, LowerName};
use nodedns_wire::{Ingested, UpstreamQuestion, ingest};

use crate::endpoint::{EjectionPolicy, Endpoint, ErrorKind, Evidence, Health, HealthChange};
use crate::observe::{ExchangeObserver, WireProtocol};
use crate::tcp::TcpPool;

/// How queries reach the zone's upstreams.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// Persistent pipelined TCP connections: no conntrack churn, no UDP loss.
    Tcp,
    /// UDP, retried over TCP when the response is truncated.
    Udp,
}

/// Settings of one zone's upstream pool.
#[derive(Clone, Copy, Debug)]
pub struct PoolConfig {
    pub transport: Transport,
    /// Persistent TCP connections per endpoint.
    pub tcp_connections: usize,
    /// Deadline for one attempt on one endpoint (`query_timeout_ms`).
    pub query_timeout: Duration,
    /// Deadline for every attempt of one question together (`query_budget_ms`): glibc gives up
    /// after 5 s, so the question must be settled well before.
    pub query_budget: Duration,
    /// Attempts per question: the first and, when it fails, one on another endpoint.
    pub max_attempts: usize,
    /// Outstanding queries allowed on one TCP connection.
    pub max_pending_per_connection: usize,
    /// Upstream queries in flight to one endpoint (`limits.max_upstream_inflight`).
    pub max_inflight_per_endpoint: usize,
    /// How long a query waits for an in-flight slot before it is shed
    /// (`limits.upstream_queue_wait_ms`).
    pub queue_wait: Duration,
    pub ejection: EjectionPolicy,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            transport: Transport::Tcp,
            tcp_connections: 2,
            query_timeout: Duration::from_secs(1),
            query_budget: Duration::from_millis(2500),
            max_attempts: 2,
            max_pending_per_connection: 4096,
            max_inflight_per_endpoint: crate::endpoint::DEFAULT_MAX_INFLIGHT,
            queue_wait: Duration::from_millis(100),
            ejection: EjectionPolicy::default(),
        }
    }
}

/// An endpoint with its connections.
pub struct EndpointState {
    pub endpoint: Arc<Endpoint>,
    tcp: TcpPool,
}

/// Why resolution failed on every attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum UpstreamError {
    #[error("no upstream endpoint configured")]
    NoEndpoints,
    #[error("every upstream endpoint is ejected")]
    AllEjected,
    /// Every endpoint tried already holds its limit of queries in flight: shed, never a
    /// resolution failure (no failure entry is cached for it).
    #[error("every upstream endpoint is at its in-flight limit")]
    Overloaded,
    #[error("every attempt failed; last failure: {}", .last.label())]
    Failed { last: ErrorKind, rcode: Option<u16> },
}

/// A response that answered the question.
#[derive(Debug)]
pub struct Resolved {
    pub answer: CacheableAnswer,
    pub endpoint: SocketAddr,
}

/// Endpoint states shared by every pool that uses the same address: each upstream address gets
/// one set of persistent connections (and one health state) however many zones forward to it.
#[derive(Default)]
pub struct EndpointRegistry {
    states: parking_lot::Mutex<std::collections::HashMap<SocketAddr, std::sync::Weak<EndpointState>>>,
}

impl EndpointRegistry {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// The state for `addr`, created with `config`'s connection settings if no pool holds it.
    pub fn get(&self, addr: SocketAddr, config: &PoolConfig) -> Arc<EndpointState> {
        let mut states = self.states.lock();
        if let Some(s) = states.get(&addr).and_then(|w| w.upgrade()) {
            // Zones sharing an endpoint share its connections: the one asking for most gets
            // them (see [`EndpointRegistry::set_tcp_connections`]).
            s.tcp.grow_to(config.tcp_connections);
            return s;
        }
        states.retain(|_, w| w.strong_count() > 0);
        let s = Arc::new(EndpointState {
            endpoint: Arc::new(Endpoint::with_limit(addr, config.max_inflight_per_endpoint)),
            tcp: TcpPool::new(config.tcp_connections, config.query_timeout, config.max_pending_per_connection),
        });
        states.insert(addr, Arc::downgrade(&s));
        s
    }
}

impl EndpointRegistry {
    /// Applies reloaded `tcp_connections` to the endpoints `pools` use (endpoints and fallback):
    /// each gets the largest count any pool using it asks for. Zones sharing an endpoint share
    /// its connections, so a zone asking for fewer does not take them from one that asked for
    /// more (fewer connections would queue that zone's queries behind each other's). Shrinking
    /// lets the excess connections finish their queries before they close.
    pub fn set_tcp_connections<'p>(&self, pools: impl IntoIterator<Item = &'p UpstreamPool>) {
        let mut wanted: std::collections::HashMap<SocketAddr, (Arc<EndpointState>, usize)> =
            std::collections::HashMap::new();
        for pool in pools {
            let n = pool.config.tcp_connections;
            for state in pool.endpoints().iter().chain(pool.fallback().iter()) {
                let e = wanted.entry(state.endpoint.addr).or_insert_with(|| (state.clone(), n));
                e.1 = e.1.max(n);
            }
        }
        for (state, n) in wanted.into_values() {
            if state.tcp.size() != n {
                state.tcp.resize(n);
            }
        }
    }
}

impl EndpointState {
    /// How many TCP connections this endpoint keeps (`tcp_connections`, the largest asked by
    /// the zones using it).
    pub fn tcp_connections(&self) -> usize {
        self.tcp.size()
    }
}

/// The upstreams of one zone.
pub struct UpstreamPool {
    endpoints: RwLock<Arc<[Arc<EndpointState>]>>,
    /// Used only when every endpoint is ejected (the fixed Service address behind discovered
    /// pod endpoints).
    fallback: RwLock<Arc<[Arc<EndpointState>]>>,
    registry: Arc<EndpointRegistry>,
    config: PoolConfig,
    /// Sees every query sent and response received (dnstap); `None`: nothing extra is done.
    observer: Option<Arc<dyn ExchangeObserver>>,
}

impl UpstreamPool {
    /// A pool with endpoints of its own (not shared with other pools).
    pub fn new(addrs: &[SocketAddr], config: PoolConfig) -> Self {
        Self::with_registry(addrs, config, EndpointRegistry::new())
    }

    /// A pool whose endpoint states come from (and are shared through) `registry`.
    pub fn with_registry(addrs: &[SocketAddr], config: PoolConfig, registry: Arc<EndpointRegistry>) -> Self {
        let pool = Self {
            endpoints: RwLock::new(Arc::from(Vec::new())),
            fallback: RwLock::new(Arc::from(Vec::new())),
            registry,
            config,
            observer: None,
        };
        pool.set_endpoints(addrs);
        pool
    }

    /// Reports this pool's upstream traffic to `observer` (dnstap forwarder messages).
    pub fn with_observer(mut self, observer: Option<Arc<dyn ExchangeObserver>>) -> Self {
        self.observer = observer;
        self
    }

    pub fn config(&self) -> &PoolConfig {
        &self.config
    }

    /// Replaces the endpoint set, keeping the state (connections, health, counters) of
    /// endpoints that remain. Returns the removed endpoints so the caller can close them.
    pub fn set_endpoints(&self, addrs: &[SocketAddr]) -> Vec<Arc<EndpointState>> {
        let mut guard = self.endpoints.write();
        let old = guard.clone();
        let mut next = Vec::with_capacity(addrs.len());
        for addr in addrs {
            if next.iter().any(|e: &Arc<EndpointState>| e.endpoint.addr == *addr) {
                continue;
            }
            let state = old.iter().find(|e| e.endpoint.addr == *addr).cloned().unwrap_or_else(|| self.new_state(*addr));
            next.push(state);
        }
        let removed = old.iter().filter(|e| !addrs.contains(&e.endpoint.addr)).cloned().collect();
        *guard = Arc::from(next);
        removed
    }

    pub fn endpoints(&self) -> Arc<[Arc<EndpointState>]> {
        self.endpoints.read().clone()
    }

    /// The fallback endpoints (for metrics).
    pub fn fallback(&self) -> Arc<[Arc<EndpointState>]> {
        self.fallback.read().clone()
    }

    /// Sets the fallback endpoints, tried only when every endpoint is ejected.
    pub fn set_fallback(&self, addrs: &[SocketAddr]) {
        let old = self.fallback.read().clone();
        let next: Vec<Arc<EndpointState>> = addrs
            .iter()
            .map(|a| old.iter().find(|e| e.endpoint.addr == *a).cloned().unwrap_or_else(|| self.new_state(*a)))
            .collect();
        *self.fallback.write() = Arc::from(next);
    }

    fn new_state(&self, addr: SocketAddr) -> Arc<EndpointState> {
        self.registry.get(addr, &self.config)
    }

    /// Opens the persistent TCP connections of every endpoint.
    pub async fn warm(&self) {
        if self.config.transport == Transport::Tcp {
            for e in self.endpoints().iter() {
                e.tcp.warm(&e.endpoint).await;
            }
        }
    }

    /// Closes the connections of removed endpoints.
    pub async fn close(states: &[Arc<EndpointState>]) {
        for s in states {
            s.tcp.close_all().await;
        }
    }

    /// Power of two choices among healthy, untried endpoints; `None` when none is left.
    fn pick(&self, endpoints: &[Arc<EndpointState>], tried: Option<usize>) -> Option<usize> {
        let pool: Vec<usize> = (0..endpoints.len())
            .filter(|&i| Some(i) != tried && endpoints[i].endpoint.health() == Health::Healthy)
            .collect();
        match pool.len() {
            0 => None,
            1 => Some(pool[0]),
            n => {
                let a = pool[rand::random_range(0..n)];
                let mut b = pool[rand::random_range(0..n)];
                if a == b {
                    b = pool[(pool.iter().position(|&x| x == a).unwrap_or(0) + 1) % n];
                }
                let (sa, sb) = (endpoints[a].endpoint.load_score(), endpoints[b].endpoint.load_score());
                Some(if sa <= sb { a } else { b })
            }
        }
    }

    /// Resolves one question within `query_budget`: one attempt, and when it fails, one more on
    /// another endpoint (where the zone has one) before the failure is the name's. Each attempt
    /// is bounded by `query_timeout` and by what is left of the budget.
    ///
    /// Health follows [`Evidence`]: the first endpoint's question-level failure counts against it
    /// only if the second endpoint then answers; failing on both is the question's outcome.
    pub async fn resolve(&self, q: &UpstreamQuestion<'_>, bailiwick: &Name) -> Result<Resolved, UpstreamError> {
        let deadline = Instant::now() + self.config.query_budget;
        let mut endpoints = self.endpoints();
        let fallback = self.fallback.read().clone();
        if !fallback.is_empty() && endpoints.iter().all(|e| e.endpoint.health() == Health::Ejected) {
            endpoints = fallback;
        }
        if endpoints.is_empty() {
            return Err(UpstreamError::NoEndpoints);
        }
        // Fail fast when every endpoint answers nothing: the client gets SERVFAIL (or stale
        // data) now instead of after timeouts; probes re-admit endpoints as soon as they answer.
        let Some(first) = self.pick(&endpoints, None) else {
            return Err(UpstreamError::AllEjected);
        };
        let first_state = &endpoints[first];
        let first_err = match self.attempt(first_state, q, bailiwick, deadline).await {
            Ok(answer) => return Ok(Resolved { answer, endpoint: first_state.endpoint.addr }),
            Err(e) => e,
        };
        let (kind, rcode) = first_err;
        let peer = if self.config.max_attempts > 1 { self.pick(&endpoints, Some(first)) } else { None };
        let retry_same = peer.is_none()
            && self.config.max_attempts > 1
            // UDP loses datagrams: the one endpoint gets the question once more. Over TCP
            // nothing is lost, and asking a struggling upstream again only adds load (the retry
            // storm behind the CoreDNS OOM outage).
            && self.config.transport == Transport::Udp
            && kind == ErrorKind::Timeout;
        let second = match (peer, retry_same) {
            (Some(i), _) => Some(i),
            (None, true) => Some(first),
            (None, false) => None,
        };
        let has_peers = endpoints.len() > 1;
        let Some(second) = second.filter(|_| Instant::now() < deadline) else {
            self.settle_unanswered(&endpoints, first, kind, has_peers);
            return Err(failed(kind, rcode));
        };
        let second_state = &endpoints[second];
        match self.attempt(second_state, q, bailiwick, deadline).await {
            Ok(answer) => {
                if second != first && kind.evidence() == Evidence::Question {
                    // A peer answered what this endpoint failed: now it is the endpoint's.
                    let ep = &first_state.endpoint;
                    self.log_change(ep, ep.record_failure(&self.config.ejection), kind);
                }
                Ok(Resolved { answer, endpoint: second_state.endpoint.addr })
            }
            Err((kind2, rcode2)) => {
                // Failed on two endpoints: the question's outcome, counted against neither.
                // Shedding on one of them is ours, so the other's failure stays unsettled.
                if kind2.evidence() == Evidence::Local && second != first {
                    self.settle_unanswered(&endpoints, first, kind, has_peers);
                }
                if kind.evidence() == Evidence::Local && second != first {
                    self.settle_unanswered(&endpoints, second, kind2, has_peers);
                }
                // Report the more telling failure: an upstream's rcode over our own shedding.
                Err(if kind2 == ErrorKind::Overloaded { failed(kind, rcode) } else { failed(kind2, rcode2) })
            }
        }
    }

    /// A question-level failure no peer settled: with peers, it enters the endpoint's outcome
    /// window, and an endpoint whose failure share stands out from its peers' is ejected
    /// ([`EjectionPolicy::outlier_factor`]). With one endpoint it counts against nothing: only
    /// "answers nothing" ejects the only endpoint of a zone.
    fn settle_unanswered(&self, endpoints: &[Arc<EndpointState>], i: usize, kind: ErrorKind, has_peers: bool) {
        if kind.evidence() != Evidence::Question || !has_peers {
            return;
        }
        let ep = &endpoints[i].endpoint;
        ep.record_unsettled_failure();
        let Some(own) = ep.failure_percent() else { return };
        let mut peers: Vec<u32> = endpoints
            .iter()
            .enumerate()
            .filter(|(j, e)| *j != i && e.endpoint.health() == Health::Healthy)
            .filter_map(|(_, e)| e.endpoint.failure_percent())
            .collect();
        if peers.is_empty() {
            return;
        }
        peers.sort_unstable();
        let median = peers[peers.len() / 2];
        let policy = &self.config.ejection;
        if own >= policy.outlier_min_percent && own >= median.saturating_mul(policy.outlier_factor).max(1) {
            self.log_change(ep, ep.eject(policy), kind);
        }
    }

    fn log_change(&self, ep: &Endpoint, change: Option<HealthChange>, last: ErrorKind) {
        match change {
            Some(HealthChange::Ejected { for_duration }) => warn!(
                endpoint = %ep.addr,
                backoff_ms = for_duration.as_millis() as u64,
                last_error = last.label(),
                "upstream endpoint ejected: it fails what its peers answer, or answers nothing"
            ),
            Some(HealthChange::Readmitted) => info!(endpoint = %ep.addr, "upstream endpoint re-admitted"),
            None => {}
        }
    }

    /// Sends one health probe to an ejected endpoint (outside client traffic); a success
    /// re-admits it. Returns how many were re-admitted.
    pub async fn probe_ejected(&self, q: &UpstreamQuestion<'_>, bailiwick: &Name) -> usize {
        let mut readmitted = 0;
        let all = self.endpoints().iter().chain(self.fallback.read().iter()).cloned().collect::<Vec<_>>();
        for state in all.iter().filter(|s| s.endpoint.health() == Health::Ejected) {
            // Probes count against the in-flight limit like any query; a full endpoint is busy
            // answering, so the probe can wait for the next round.
            let Some(_permit) = state.endpoint.acquire(Duration::ZERO).await else { continue };
            let started = Instant::now();
            // Probes are counted as queries and their failures as errors: while every endpoint is
            // ejected, client queries fail fast without reaching one, and the probes are all the
            // traffic left, so an error ratio without them goes 0/0 and the alert on it resolves.
            state.endpoint.stats.queries.fetch_add(1, Relaxed);
            match exchange_and_ingest(
                &self.config,
                self.observer.as_deref(),
                state,
                q,
                bailiwick,
                started + self.config.query_timeout,
            )
            .await
            {
                Ok(_) if state.endpoint.record_success(started.elapsed()) == Some(HealthChange::Readmitted) => {
                    info!(endpoint = %state.endpoint.addr, "upstream endpoint answered a health probe: re-admitted");
                    readmitted += 1;
                }
                Ok(_) => {}
                Err((kind, _)) => state.endpoint.count_failure(kind),
            }
        }
        readmitted
    }

    /// One attempt on one endpoint, bounded by `query_timeout` and `deadline`. Records only what
    /// is certain now: an answer, or an unreachable endpoint; question-level failures are
    /// settled by [`UpstreamPool::resolve`].
    async fn attempt(
        &self,
        state: &Arc<EndpointState>,
        q: &UpstreamQuestion<'_>,
        bailiwick: &Name,
        deadline: Instant,
    ) -> Result<CacheableAnswer, (ErrorKind, Option<u16>)> {
        let ep = &state.endpoint;
        let wait = self.config.queue_wait.min(deadline.saturating_duration_since(Instant::now()));
        let Some(permit) = ep.acquire(wait).await else {
            ep.count_failure(ErrorKind::Overloaded);
            return Err((ErrorKind::Overloaded, None));
        };
        ep.stats.queries.fetch_add(1, Relaxed);
        let started = Instant::now();
        let attempt_deadline = (started + self.config.query_timeout).min(deadline);
        let result =
            exchange_and_ingest(&self.config, self.observer.as_deref(), state, q, bailiwick, attempt_deadline).await;
        drop(permit);
        match &result {
            Ok(_) => self.log_change(ep, ep.record_success(started.elapsed()), ErrorKind::Timeout),
            Err((kind, _)) => {
                ep.count_failure(*kind);
                match kind.evidence() {
                    Evidence::Unreachable => self.log_change(ep, ep.record_failure(&self.config.ejection), *kind),
                    Evidence::Question => {
                        if *kind != ErrorKind::Timeout && *kind != ErrorKind::Closed {
                            ep.note_response();
                        }
                        self.check_silence(state, bailiwick);
                    }
                    Evidence::Local => {}
                }
            }
        }
        result
    }

    /// An endpoint that has sent nothing back for two attempt-lengths while queries were
    /// outstanding may be dead rather than failing names: a liveness probe (the zone's SOA)
    /// settles it. No answer to the probe either is evidence about the endpoint: ejected.
    fn check_silence(&self, state: &Arc<EndpointState>, bailiwick: &Name) {
        let ep = &state.endpoint;
        if ep.silent_for() < self.config.query_timeout.saturating_mul(2) || !ep.begin_probe() {
            return;
        }
        let (state, config, zone, observer) = (state.clone(), self.config, bailiwick.clone(), self.observer.clone());
        tokio::spawn(async move {
            let ep = &state.endpoint;
            if let Some(probe) = LivenessProbe::for_zone(&zone)
                && let Some(_permit) = ep.acquire(Duration::ZERO).await
            {
                let deadline = Instant::now() + config.query_timeout;
                match exchange_and_ingest(&config, observer.as_deref(), &state, &probe.question(), &zone, deadline)
                    .await
                {
                    Err((ErrorKind::Timeout | ErrorKind::Connect | ErrorKind::Closed, _)) => {
                        if let Some(HealthChange::Ejected { for_duration }) = ep.eject(&config.ejection) {
                            warn!(
                                endpoint = %ep.addr,
                                backoff_ms = for_duration.as_millis() as u64,
                                "upstream endpoint ejected: silent for two attempt-lengths and its liveness probe got no answer"
                            );
                        }
                    }
                    _ => ep.note_response(),
                }
            }
            ep.end_probe();
        });
    }
}

/// The question a liveness probe asks: the zone apex SOA, which every authoritative or
/// forwarding server answers (or refuses) at once.
struct LivenessProbe {
    wire: Vec<u8>,
}

impl LivenessProbe {
    fn for_zone(zone: &Name) -> Option<Self> {
        let wire = hickory_proto::serialize::binary::BinEncodable::to_bytes(&zone.to_lowercase()).ok()?;
        LowerName::new(&wire).ok()?;
        Some(Self { wire })
    }

    fn question(&self) -> UpstreamQuestion<'_> {
        UpstreamQuestion {
            // Checked in `for_zone`.
            name: LowerName::new(&self.wire).unwrap_or_else(|_| unreachable!("validated in for_zone")),
            qtype: 6,
            qclass: 1,
            dnssec_ok: false,
            checking_disabled: false,
        }
    }
}

fn failed(kind: ErrorKind, rcode: Option<u16>) -> UpstreamError {
    if kind == ErrorKind::Overloaded { UpstreamError::Overloaded } else { UpstreamError::Failed { last: kind, rcode } }
}

/// One exchange with one endpoint, answered by `deadline`; a UDP answer with TC is retried over
/// TCP on the same endpoint within the same deadline.
async fn exchange_and_ingest(
    config: &PoolConfig,
    observer: Option<&dyn ExchangeObserver>,
    state: &EndpointState,
    q: &UpstreamQuestion<'_>,
    bailiwick: &Name,
    deadline: Instant,
) -> Result<CacheableAnswer, (ErrorKind, Option<u16>)> {
    let mut use_tcp = config.transport == Transport::Tcp;
    loop {
        let left = || deadline.saturating_duration_since(Instant::now());
        let protocol = if use_tcp { WireProtocol::Tcp } else { WireProtocol::Udp };
        let sent_at = std::sync::Mutex::new(std::time::UNIX_EPOCH);
        let on_sent = |query: &[u8]| {
            if let Some(o) = observer {
                let now = std::time::SystemTime::now();
                *sent_at.lock().unwrap_or_else(|e| e.into_inner()) = now;
                o.query_sent(state.endpoint.addr, protocol, query, now);
            }
        };
        let resp = if use_tcp {
            // A connection that cannot be had by the deadline is a connect that timed out.
            let conn = tokio::time::timeout(left(), state.tcp.conn(&state.endpoint))
                .await
                .map_err(|_| (ErrorKind::Connect, None))?
                .map_err(|k| (k, None))?;
            match conn.exchange(q, left(), &on_sent).await {
                // The connection died under the query: once more on a fresh one.
                Err(ErrorKind::Closed) if Instant::now() < deadline => {
                    let conn = tokio::time::timeout(left(), state.tcp.conn(&state.endpoint))
                        .await
                        .map_err(|_| (ErrorKind::Connect, None))?
                        .map_err(|k| (k, None))?;
                    conn.exchange(q, left(), &on_sent).await
                }
                other => other,
            }
        } else {
            crate::udp::exchange(&state.endpoint, q, left(), &on_sent).await
        }
        .map_err(|k| (k, None))?;
        if let Some(o) = observer {
            let sent = *sent_at.lock().unwrap_or_else(|e| e.into_inner());
            o.response_received(state.endpoint.addr, protocol, &resp, sent, std::time::SystemTime::now());
        }
        match ingest(&resp, q, bailiwick) {
            Ok(Ingested::Answer(a)) => return Ok(a),
            Ok(Ingested::Truncated) if !use_tcp => use_tcp = true,
            Ok(Ingested::Truncated) => return Err((ErrorKind::Malformed, None)),
            Ok(Ingested::Failure { rcode }) => return Err((ErrorKind::Rcode, Some(rcode))),
            Err(nodedns_wire::IngestError::QuestionMismatch) => {
                return Err((ErrorKind::Mismatch, None));
            }
            Err(_) => return Err((ErrorKind::Malformed, None)),
        }
    }
}
