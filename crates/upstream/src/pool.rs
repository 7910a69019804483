//! The upstreams of one zone: endpoint selection, retries, TC fallback and health.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use hickory_proto::rr::Name;
use parking_lot::RwLock;
use tokio::time::Instant;
use tracing::{info, warn};

use nodedns_cache::CacheableAnswer;
use nodedns_wire::{Ingested, UpstreamQuestion, ingest};

use crate::endpoint::{EjectionPolicy, Endpoint, ErrorKind, Health, HealthChange};
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
    /// Deadline for one attempt on one endpoint.
    pub query_timeout: Duration,
    /// Endpoints tried per query (distinct where there are enough).
    pub max_attempts: usize,
    /// Outstanding queries allowed on one TCP connection.
    pub max_pending_per_connection: usize,
    pub ejection: EjectionPolicy,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            transport: Transport::Tcp,
            tcp_connections: 2,
            query_timeout: Duration::from_secs(2),
            max_attempts: 3,
            max_pending_per_connection: 4096,
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
            return s;
        }
        states.retain(|_, w| w.strong_count() > 0);
        let s = Arc::new(EndpointState {
            endpoint: Arc::new(Endpoint::new(addr)),
            tcp: TcpPool::new(config.tcp_connections, config.query_timeout, config.max_pending_per_connection),
        });
        states.insert(addr, Arc::downgrade(&s));
        s
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
        };
        pool.set_endpoints(addrs);
        pool
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

    /// Power of two choices among healthy, untried endpoints; falls back to ejected ones when
    /// no healthy one is left, so a zone never stops trying entirely.
    fn pick(&self, endpoints: &[Arc<EndpointState>], tried: &[usize]) -> Option<usize> {
        let candidates: Vec<usize> = (0..endpoints.len()).filter(|i| !tried.contains(i)).collect();
        let healthy: Vec<usize> =
            candidates.iter().copied().filter(|&i| endpoints[i].endpoint.health() == Health::Healthy).collect();
        let pool = if healthy.is_empty() { &candidates } else { &healthy };
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

    /// Resolves one question: tries up to `max_attempts` endpoints, each within
    /// `query_timeout`; a UDP answer with TC is retried over TCP on the same endpoint.
    pub async fn resolve(&self, q: &UpstreamQuestion<'_>, bailiwick: &Name) -> Result<Resolved, UpstreamError> {
        let mut endpoints = self.endpoints();
        let fallback = self.fallback.read().clone();
        if !fallback.is_empty() && endpoints.iter().all(|e| e.endpoint.health() == Health::Ejected) {
            endpoints = fallback;
        }
        if endpoints.is_empty() {
            return Err(UpstreamError::NoEndpoints);
        }
        let attempts = self.config.max_attempts.max(1);
        if endpoints.iter().all(|e| e.endpoint.health() == Health::Ejected) {
            // Fail fast: every endpoint failed repeatedly and is backing off. The client gets
            // SERVFAIL (or stale data) now instead of after timeouts; active probes re-admit
            // endpoints as soon as they answer again.
            return Err(UpstreamError::AllEjected);
        }
        let started = Instant::now();
        // At most two attempt-lengths in all, so the client (glibc waits 5 s) still gets an answer.
        let budget = self.config.query_timeout.saturating_mul(2);
        let mut tried = Vec::with_capacity(attempts);
        let mut last = UpstreamError::Failed { last: ErrorKind::Timeout, rcode: None };
        for _ in 0..attempts {
            if tried.len() == endpoints.len() {
                // Every endpoint was tried. Over TCP a timeout means the endpoint is slow, not
                // that the query was lost, and SERVFAIL from all of them will not change: asking
                // again only multiplies load on a struggling upstream (the retry storm that drove
                // CoreDNS out of memory). Only a broken connection earns another try.
                let retry = match last {
                    UpstreamError::Failed { last: ErrorKind::Timeout, .. } => self.config.transport == Transport::Udp,
                    UpstreamError::Failed { last: ErrorKind::Rcode, .. } => false,
                    _ => true,
                };
                if !retry {
                    break;
                }
                tried.clear();
            }
            if started.elapsed() >= budget {
                break;
            }
            let Some(i) = self.pick(&endpoints, &tried) else {
                break;
            };
            tried.push(i);
            let state = &endpoints[i];
            match self.attempt(state, q, bailiwick).await {
                Ok(answer) => {
                    return Ok(Resolved { answer, endpoint: state.endpoint.addr });
                }
                Err((kind, rcode)) => {
                    last = UpstreamError::Failed { last: kind, rcode };
                }
            }
        }
        Err(last)
    }

    /// Sends one health probe to an ejected endpoint (outside client traffic); a success
    /// re-admits it. Returns whether it answered.
    pub async fn probe_ejected(&self, q: &UpstreamQuestion<'_>, bailiwick: &Name) -> usize {
        let mut readmitted = 0;
        let all = self.endpoints().iter().chain(self.fallback.read().iter()).cloned().collect::<Vec<_>>();
        for state in all.iter().filter(|s| s.endpoint.health() == Health::Ejected) {
            let started = Instant::now();
            if self.exchange_and_ingest(state, q, bailiwick).await.is_ok()
                && state.endpoint.record_success(started.elapsed()) == Some(HealthChange::Readmitted)
            {
                info!(endpoint = %state.endpoint.addr, "upstream endpoint answered a health probe: re-admitted");
                readmitted += 1;
            }
        }
        readmitted
    }

    async fn attempt(
        &self,
        state: &EndpointState,
        q: &UpstreamQuestion<'_>,
        bailiwick: &Name,
    ) -> Result<CacheableAnswer, (ErrorKind, Option<u16>)> {
        let ep = &state.endpoint;
        ep.stats.queries.fetch_add(1, Relaxed);
        ep.stats.in_flight.fetch_add(1, Relaxed);
        let started = Instant::now();
        let result = self.exchange_and_ingest(state, q, bailiwick).await;
        ep.stats.in_flight.fetch_sub(1, Relaxed);
        let change = match &result {
            Ok(_) => ep.record_success(started.elapsed()),
            // An overloaded local connection is our limit, not the endpoint's fault.
            Err((ErrorKind::Overloaded, _)) => {
                ep.stats.error(ErrorKind::Overloaded);
                None
            }
            Err((kind, _)) => ep.record_failure(*kind, &self.config.ejection),
        };
        match change {
            Some(HealthChange::Ejected { for_duration }) => warn!(
                endpoint = %ep.addr,
                backoff_ms = for_duration.as_millis() as u64,
                last_error = result.as_ref().err().map(|e| e.0.label()).unwrap_or(""),
                "upstream endpoint ejected after consecutive failures"
            ),
            Some(HealthChange::Readmitted) => {
                info!(endpoint = %ep.addr, "upstream endpoint re-admitted")
            }
            None => {}
        }
        result
    }

    async fn exchange_and_ingest(
        &self,
        state: &EndpointState,
        q: &UpstreamQuestion<'_>,
        bailiwick: &Name,
    ) -> Result<CacheableAnswer, (ErrorKind, Option<u16>)> {
        let timeout = self.config.query_timeout;
        let deadline = Instant::now() + timeout;
        let mut use_tcp = self.config.transport == Transport::Tcp;
        loop {
            let resp = if use_tcp {
                let conn = state.tcp.conn(&state.endpoint).await.map_err(|k| (k, None))?;
                let left = deadline.saturating_duration_since(Instant::now());
                match conn.exchange(q, left).await {
                    // The connection died under the query: once more on a fresh one.
                    Err(ErrorKind::Closed) if Instant::now() < deadline => {
                        let conn = state.tcp.conn(&state.endpoint).await.map_err(|k| (k, None))?;
                        conn.exchange(q, deadline.saturating_duration_since(Instant::now())).await
                    }
                    other => other,
                }
            } else {
                crate::udp::exchange(&state.endpoint, q, timeout).await
            }
            .map_err(|k| (k, None))?;
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
}
