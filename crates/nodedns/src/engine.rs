//! The resolver shared by every listener: cache lookups, and the miss path — zone selection,
//! A/AAAA pair fetches, coalescing of identical misses, serve-stale and prefetch.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use hickory_proto::rr::Name;
use parking_lot::{Mutex, RwLock};
use tokio::sync::broadcast;
use tracing::{debug, warn};

use nodedns_cache::{
    AnswerView, Cache, CacheKey, CacheLimits, CacheableAnswer, Freshness, KeyKind, LowerName, MAX_NAME_LEN, Member,
    Timestamp, TtlPolicy,
};
use nodedns_upstream::{EndpointRegistry, PoolConfig, UpstreamError, UpstreamPool};
use nodedns_wire::{Parsed, Query, Rcode, Transport, UpstreamQuestion, parse_query, render_cached, render_rcode};

use crate::config::{Config, ZoneConfig};
use crate::logging::RateLimitedWarn;
use crate::metrics::{CacheResult, Metrics, ShedReason};

/// One configured zone with its upstreams.
pub struct Zone {
    pub config: ZoneConfig,
    pub pool: UpstreamPool,
    /// The zone's name as a label value.
    pub label: String,
}

impl Zone {
    pub fn new(config: ZoneConfig, registry: &Arc<EndpointRegistry>) -> Self {
        let pool = UpstreamPool::with_registry(
            config.upstreams.addrs(),
            PoolConfig {
                transport: config.transport,
                tcp_connections: config.tcp_connections,
                query_timeout: config.query_timeout,
                ..PoolConfig::default()
            },
            registry.clone(),
        );
        let label = config.name.to_ascii();
        Self { config, pool, label }
    }
}

/// A fetched answer, ready to render for any waiter.
pub struct Fetched {
    message: Vec<u8>,
    offsets_le: Vec<u8>,
    ttl: u32,
    split: bool,
}

impl Fetched {
    fn new(a: CacheableAnswer, policy: &TtlPolicy) -> Self {
        let ttl = a.disposition.lifetime(policy).secs();
        Self::with_ttl(a, ttl, false)
    }

    /// With the TTL of the entry it belongs to (a pair's one TTL). Takes the answer: the cache
    /// holds its own copy, and the waiters render from this one without another.
    fn with_ttl(a: CacheableAnswer, ttl: u32, split: bool) -> Self {
        let offsets_le = a.ttl_offsets_le();
        Self { message: a.message, offsets_le, ttl, split }
    }

    pub fn view(&self) -> AnswerView<'_> {
        AnswerView::detached(&self.message, &self.offsets_le, self.ttl, self.split)
    }
}

/// The result of one (coalesced) upstream fetch: one answer per member.
pub enum FetchResult {
    Single(Arc<Fetched>),
    Pair { a: Arc<Fetched>, aaaa: Arc<Fetched> },
    Failed(UpstreamError),
}

impl FetchResult {
    fn member(&self, m: Member) -> Option<&Arc<Fetched>> {
        match (self, m) {
            (FetchResult::Single(f), _) => Some(f),
            (FetchResult::Pair { a, .. }, Member::A) => Some(a),
            (FetchResult::Pair { aaaa, .. }, Member::Aaaa) => Some(aaaa),
            _ => None,
        }
    }
}

/// Identity of a fetch: the cache key in owned form.
#[derive(Clone, PartialEq, Eq, Hash)]
struct FetchKey {
    name: Box<[u8]>,
    kind: KeyKind,
    class: u16,
    dnssec_ok: bool,
    checking_disabled: bool,
}

impl FetchKey {
    fn of(k: &CacheKey<'_>) -> Self {
        Self {
            name: k.name.as_wire().into(),
            kind: k.kind,
            class: k.class,
            dnssec_ok: k.dnssec_ok,
            checking_disabled: k.checking_disabled,
        }
    }
}

/// The resolver state shared by listeners.
pub struct Engine {
    pub cache: Cache,
    zones: RwLock<Arc<Vec<Arc<Zone>>>>,
    /// Upstream endpoints shared across zones (one connection pool per address).
    registry: Arc<EndpointRegistry>,
    cache_config: RwLock<crate::config::CacheConfig>,
    pub metrics: Arc<Metrics>,
    epoch: std::time::Instant,
    fetches: Mutex<HashMap<FetchKey, broadcast::Sender<Arc<FetchResult>>>>,
    /// Client queries waiting on the miss path.
    waiting: AtomicUsize,
    pub max_inflight: usize,
    pub max_udp_payload: u16,
    /// Set once an upstream has answered: part of readiness.
    pub upstream_answered: AtomicBool,
    split_warn: RateLimitedWarn,
    shed_warn: RateLimitedWarn,
    /// `log.queries_sample_rate`: the fraction of queries logged (0 = off).
    query_log_rate: f64,
    query_log_budget: QueryLogBudget,
}

/// At most [`QUERY_LOG_PER_SEC`] sampled query lines a second, whatever the sample rate and
/// the query rate: a flood must not fill the disk.
const QUERY_LOG_PER_SEC: u64 = 100;

#[derive(Default)]
struct QueryLogBudget {
    second: std::sync::atomic::AtomicU64,
    used: std::sync::atomic::AtomicU64,
}

/// What the miss path produced for a client: the answer's bytes, allocated at their exact size
/// only once the answer is known (a query waiting on upstream holds no output buffer).
pub struct MissAnswer {
    pub bytes: Vec<u8>,
    pub result: CacheResult,
}

/// What to answer, decided (after waiting, if need be) before anything is rendered.
enum Decision {
    Rcode(Rcode),
    /// The cache has a fresh answer now.
    Cached,
    Fetched(Arc<FetchResult>, Member),
    /// Upstream failed or was too slow: stale data if any, else SERVFAIL.
    StaleOrServFail,
    Synthesized(Box<CacheableAnswer>, TtlPolicy),
}

thread_local! {
    /// Render scratch for the miss path: rendering is synchronous, so one buffer per runtime
    /// thread serves every miss.
    static SCRATCH: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0u8; nodedns_wire::MAX_MESSAGE]);
}

impl Engine {
    pub fn new(config: &Config, metrics: Arc<Metrics>) -> Arc<Self> {
        let registry = EndpointRegistry::new();
        let zones = config.zones.iter().cloned().map(|z| Arc::new(Zone::new(z, &registry))).collect();
        Arc::new(Self {
            cache: Cache::new(CacheLimits {
                max_bytes: config.cache.max_bytes,
                max_stale: config.cache.max_stale,
                shards: 64,
            }),
            zones: RwLock::new(Arc::new(zones)),
            registry,
            cache_config: RwLock::new(config.cache.clone()),
            metrics,
            epoch: std::time::Instant::now(),
            fetches: Mutex::new(HashMap::new()),
            waiting: AtomicUsize::new(0),
            max_inflight: config.limits.max_inflight,
            max_udp_payload: config.limits.max_udp_payload,
            upstream_answered: AtomicBool::new(false),
            split_warn: RateLimitedWarn::new(Duration::from_secs(10)),
            shed_warn: RateLimitedWarn::new(Duration::from_secs(10)),
            query_log_rate: config.log.queries_sample_rate,
            query_log_budget: QueryLogBudget::default(),
        })
    }

    /// Now, for the cache.
    #[inline]
    pub fn now(&self) -> Timestamp {
        self.timestamp(std::time::Instant::now())
    }

    /// `at` as a cache timestamp, for callers that already read the clock.
    #[inline]
    pub fn timestamp(&self, at: std::time::Instant) -> Timestamp {
        Timestamp::from_millis(at.saturating_duration_since(self.epoch).as_millis() as u64)
    }

    pub fn zones(&self) -> Arc<Vec<Arc<Zone>>> {
        self.zones.read().clone()
    }

    /// Applies a reloaded config's zones and cache TTL policy. Endpoints that remain keep their
    /// connections, health and counters (they live in the shared registry); the cache is kept.
    pub fn reconfigure(&self, config: &Config) {
        let next: Vec<Arc<Zone>> =
            config.zones.iter().cloned().map(|z| Arc::new(Zone::new(z, &self.registry))).collect();
        // Keep discovered endpoints of zones whose discovery target did not change.
        for zone in &next {
            if let Some(old) = self.zones().iter().find(|o| {
                o.config.name == zone.config.name
                    && o.config.discover == zone.config.discover
                    && zone.config.discover.is_some()
            }) {
                let addrs: Vec<_> = old.pool.endpoints().iter().map(|e| e.endpoint.addr).collect();
                zone.pool.set_endpoints(&addrs);
                zone.pool.set_fallback(zone.config.upstreams.addrs());
            }
        }
        *self.cache_config.write() = config.cache.clone();
        *self.zones.write() = Arc::new(next);
    }

    fn zone_for(&self, name: &Name) -> Option<Arc<Zone>> {
        self.zones.read().iter().find(|z| z.config.name.zone_of(name)).cloned()
    }

    pub fn stale_answer_timeout(&self) -> Duration {
        self.cache_config.read().stale_answer_timeout
    }

    fn prefetch_enabled(&self) -> bool {
        self.cache_config.read().prefetch
    }

    /// The hit path: renders a fresh cached answer into `out`. Returns the length and whether a
    /// prefetch is due, or `None` on a miss or stale entry (the miss path decides). `now` comes
    /// from the caller: a UDP worker reads the clock once per `recvmmsg` batch.
    #[inline]
    pub fn answer_from_cache(
        &self,
        query: &Query<'_>,
        transport: Transport,
        out: &mut [u8],
        now: Timestamp,
    ) -> Option<(usize, bool)> {
        let mut name_buf = [0u8; MAX_NAME_LEN];
        let (key, member) = query.cache_key(&mut name_buf);
        self.cache
            .lookup(&key, member, now, |view| match view.freshness {
                Freshness::Fresh { refresh_due } => {
                    render_cached(query, view, transport, out).map(|n| (n, refresh_due))
                }
                Freshness::Stale { .. } => None,
            })
            .flatten()
    }

    /// Whether sampled query logging is on (checked before any work on the hit path).
    #[inline]
    pub fn query_log_on(&self) -> bool {
        self.query_log_rate > 0.0
    }

    /// Logs one answered query with probability `log.queries_sample_rate` (never a label in a
    /// metric: qnames and clients go only to this sampled log).
    #[inline]
    pub fn sample_query_log(
        &self,
        client: Option<std::net::SocketAddr>,
        proto: &'static str,
        query: &Query<'_>,
        response: &[u8],
        result: &'static str,
        elapsed: Duration,
    ) {
        if self.query_log_rate <= 0.0 || rand::random::<f64>() >= self.query_log_rate {
            return;
        }
        let now = self.epoch.elapsed().as_secs();
        let b = &self.query_log_budget;
        if b.second.swap(now, Relaxed) != now {
            b.used.store(0, Relaxed);
        }
        if b.used.fetch_add(1, Relaxed) >= QUERY_LOG_PER_SEC {
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

    /// The miss path for one client query (owned packet).
    pub async fn answer_miss(self: &Arc<Self>, packet: &[u8], transport: Transport) -> Option<MissAnswer> {
        let Parsed::Query(query) = parse_query(packet) else {
            return None;
        };
        let decision = if self.waiting.load(Relaxed) >= self.max_inflight {
            self.metrics.shed(ShedReason::Inflight);
            if self.shed_warn.allow() {
                warn!(limit = self.max_inflight, "shedding queries: too many waiting for upstream answers");
            }
            Decision::Rcode(Rcode::Refused)
        } else {
            self.waiting.fetch_add(1, Relaxed);
            self.metrics.inflight.inc();
            let d = self.decide(&query).await;
            self.metrics.inflight.dec();
            self.waiting.fetch_sub(1, Relaxed);
            d
        };
        SCRATCH.with(|scratch| {
            let mut out = scratch.borrow_mut();
            let (len, result) = self.render_decision(&query, decision, transport, &mut out)?;
            Some(MissAnswer { bytes: out[..len].to_vec(), result })
        })
    }

    fn render_decision(
        &self,
        query: &Query<'_>,
        decision: Decision,
        transport: Transport,
        out: &mut [u8],
    ) -> Option<(usize, CacheResult)> {
        let mut name_buf = [0u8; MAX_NAME_LEN];
        let (key, member) = query.cache_key(&mut name_buf);
        let miss = |len| (len, CacheResult::Miss);
        match decision {
            Decision::Rcode(rcode) => render_rcode(query, rcode, out).map(miss),
            Decision::Fetched(result, member) => match result.member(member) {
                Some(f) => render_cached(query, &f.view(), transport, out).map(miss),
                None => self.render_decision(query, Decision::StaleOrServFail, transport, out),
            },
            Decision::Synthesized(answer, policy) => {
                render_cached(query, &Fetched::new(*answer, &policy).view(), transport, out).map(miss)
            }
            Decision::Cached | Decision::StaleOrServFail => {
                let now = self.now();
                let from_cache = self
                    .cache
                    .lookup(&key, member, now, |view| {
                        let result = match view.freshness {
                            Freshness::Fresh { .. } => CacheResult::Hit,
                            Freshness::Stale { .. } => CacheResult::Stale,
                        };
                        render_cached(query, view, transport, out).map(|len| (len, result))
                    })
                    .flatten();
                match from_cache {
                    // A fresh entry found after the upstream failed was filled by another fetch.
                    Some((len, CacheResult::Hit)) if matches!(decision, Decision::StaleOrServFail) => {
                        Some((len, CacheResult::Miss))
                    }
                    Some(r) => Some(r),
                    None => render_rcode(query, Rcode::ServFail, out).map(miss),
                }
            }
        }
    }

    /// Decides how to answer a miss, waiting for upstream if needed.
    async fn decide(self: &Arc<Self>, query: &Query<'_>) -> Decision {
        let mut name_buf = [0u8; MAX_NAME_LEN];
        let (key, member) = query.cache_key(&mut name_buf);

        // Filled while this query waited in a queue?
        let now = self.now();
        let freshness = self.cache.lookup(&key, member, now, |view| view.freshness);
        let has_stale = match freshness {
            Some(Freshness::Fresh { .. }) => return Decision::Cached,
            Some(Freshness::Stale { .. }) => true,
            None => false,
        };

        let Some(qname) = name_from_wire(key.name.as_wire()) else {
            return Decision::Rcode(Rcode::FormErr);
        };
        let Some(zone) = self.zone_for(&qname) else {
            // No zone covers the name and there is no "." zone: not ours to answer.
            return Decision::Rcode(Rcode::Refused);
        };

        if zone.config.kubernetes_schema
            && crate::schema::verdict(&qname, &zone.config) == crate::schema::SchemaVerdict::CannotExist
            && let Some(answer) = self.synthesize_nxdomain(&zone, query).await
        {
            self.metrics.local_synthesized.with_label_values(&[&zone.label]).inc();
            return Decision::Synthesized(Box::new(answer), zone.config.ttl);
        }
        // (No SOA learned yet, e.g. upstream down: ask upstream like any other name.)

        let mut rx = self.fetch(&zone, &key);
        let result = if has_stale {
            // RFC 8767 §5: answer from stale data if the refresh takes longer than the client
            // timeout allows; the fetch goes on in the background and refreshes the entry.
            match tokio::time::timeout(self.stale_answer_timeout(), rx.recv()).await {
                Ok(Ok(r)) => Some(r),
                _ => None,
            }
        } else {
            rx.recv().await.ok()
        };
        match result {
            Some(r) if r.member(member).is_some() => Decision::Fetched(r, member),
            _ => Decision::StaleOrServFail,
        }
    }

    /// Starts a refresh of a popular entry before it expires (prefetch). Coalesced with any
    /// fetch of the same key already running.
    pub fn prefetch(self: &Arc<Self>, packet: &[u8]) {
        if !self.prefetch_enabled() {
            return;
        }
        let Parsed::Query(query) = parse_query(packet) else {
            return;
        };
        let mut name_buf = [0u8; MAX_NAME_LEN];
        let (key, _) = query.cache_key(&mut name_buf);
        let Some(qname) = name_from_wire(key.name.as_wire()) else {
            return;
        };
        if let Some(zone) = self.zone_for(&qname) {
            self.metrics.prefetches.inc();
            drop(self.fetch(&zone, &key));
        }
    }

    /// Joins or starts the fetch for `key`. Identical misses share one upstream exchange: 10,000
    /// simultaneous queries for one name cost the upstream one A+AAAA pair.
    fn fetch(self: &Arc<Self>, zone: &Arc<Zone>, key: &CacheKey<'_>) -> broadcast::Receiver<Arc<FetchResult>> {
        let fk = FetchKey::of(key);
        let mut fetches = self.fetches.lock();
        if let Some(tx) = fetches.get(&fk) {
            return tx.subscribe();
        }
        let (tx, rx) = broadcast::channel(1);
        fetches.insert(fk.clone(), tx.clone());
        drop(fetches);
        let engine = self.clone();
        let zone = zone.clone();
        tokio::spawn(async move {
            let result = Arc::new(engine.run_fetch(&zone, &fk).await);
            engine.fetches.lock().remove(&fk);
            let _ = tx.send(result);
        });
        rx
    }

    async fn run_fetch(&self, zone: &Zone, fk: &FetchKey) -> FetchResult {
        let Ok(name) = LowerName::new(&fk.name) else {
            return FetchResult::Failed(UpstreamError::NoEndpoints);
        };
        let question = |qtype| UpstreamQuestion {
            name,
            qtype,
            qclass: fk.class,
            dnssec_ok: fk.dnssec_ok,
            checking_disabled: fk.checking_disabled,
        };
        let key = CacheKey {
            name,
            kind: fk.kind,
            class: fk.class,
            dnssec_ok: fk.dnssec_ok,
            checking_disabled: fk.checking_disabled,
        };
        let policy = zone.config.ttl;
        let bailiwick = &zone.config.name;
        match fk.kind {
            KeyKind::Single(qtype) => match zone.pool.resolve(&question(qtype), bailiwick).await {
                Ok(r) => {
                    let _ = self.cache.insert(&key, &r.answer, &policy, self.now());
                    // After the insert: readiness must not announce an answer not yet cached.
                    self.upstream_answered.store(true, Relaxed);
                    FetchResult::Single(Arc::new(Fetched::new(r.answer, &policy)))
                }
                Err(e) => FetchResult::Failed(e),
            },
            KeyKind::Pair => {
                let (qa, qaaaa) = (question(nodedns_cache::TYPE_A), question(nodedns_cache::TYPE_AAAA));
                let mut refetched = false;
                loop {
                    let (a, aaaa) =
                        tokio::join!(zone.pool.resolve(&qa, bailiwick), zone.pool.resolve(&qaaaa, bailiwick));
                    let (a, aaaa) = match (a, aaaa) {
                        (Ok(a), Ok(aaaa)) => (a, aaaa),
                        (Err(e), _) | (_, Err(e)) => {
                            // One member failed: nothing is cached, so the pair can never be
                            // stored half-refreshed. SERVFAIL/timeouts never replace an entry.
                            return FetchResult::Failed(e);
                        }
                    };
                    self.upstream_answered.store(true, Relaxed);
                    let split = a.answer.disposition.is_nxdomain() != aaaa.answer.disposition.is_nxdomain();
                    if split && !refetched {
                        // An NXDOMAIN for one type and NOERROR for the other is what made glibc
                        // give up on names (CoreDNS autopath guessing wrong): ask once more.
                        refetched = true;
                        debug!(name = %display_name(&fk.name), "split A/AAAA answer, fetching the pair again");
                        continue;
                    }
                    if split && self.split_warn.allow() {
                        warn!(
                            name = %display_name(&fk.name),
                            a_nxdomain = a.answer.disposition.is_nxdomain(),
                            aaaa_nxdomain = aaaa.answer.disposition.is_nxdomain(),
                            "upstream answers NXDOMAIN for one of A/AAAA and NOERROR for the other; caching the split pair for min_ttl only"
                        );
                    }
                    let stored = self.cache.insert_pair(&key, &a.answer, &aaaa.answer, &policy, self.now());
                    let ttl = match stored {
                        Ok(ins) => ins.lifetime.secs(),
                        // Not stored (larger than a shard's budget): the same rule, computed here.
                        Err(_) => {
                            let t =
                                a.answer.disposition.lifetime(&policy).min(aaaa.answer.disposition.lifetime(&policy));
                            if split { t.min(policy.min_ttl).secs() } else { t.secs() }
                        }
                    };
                    return FetchResult::Pair {
                        a: Arc::new(Fetched::with_ttl(a.answer, ttl, split)),
                        aaaa: Arc::new(Fetched::with_ttl(aaaa.answer, ttl, split)),
                    };
                }
            }
        }
    }

    /// The NXDOMAIN answer for a name that cannot exist under the Kubernetes DNS schema, with
    /// the zone's SOA in the authority section (learned from upstream and cached).
    async fn synthesize_nxdomain(self: &Arc<Self>, zone: &Arc<Zone>, query: &Query<'_>) -> Option<CacheableAnswer> {
        let soa = self.zone_soa(zone).await?;
        crate::schema::nxdomain_answer(query, &soa)
    }

    /// The zone apex SOA answer (wire message), from the cache or one upstream query.
    async fn zone_soa(self: &Arc<Self>, zone: &Arc<Zone>) -> Option<Vec<u8>> {
        let wire = hickory_proto::serialize::binary::BinEncodable::to_bytes(&zone.config.name.to_lowercase()).ok()?;
        let name = LowerName::new(&wire).ok()?;
        let (key, member) = CacheKey::for_query(name, 6, nodedns_cache::CLASS_IN, false, false);
        let now = self.now();
        if let Some((m, fresh)) = self
            .cache
            .lookup(&key, member, now, |v| (v.message().to_vec(), matches!(v.freshness, Freshness::Fresh { .. })))
        {
            if !fresh {
                // Serve the expired SOA now and refresh it in the background.
                drop(self.fetch(zone, &key));
            }
            return Some(m);
        }
        let mut rx = self.fetch(zone, &key);
        match rx.recv().await.ok()?.as_ref() {
            FetchResult::Single(f) => Some(f.message.clone()),
            _ => None,
        }
    }

    /// Asks every zone's upstreams for the zone apex SOA (cached like any answer, and the SOA
    /// later denials use). Returns whether any upstream has answered.
    pub async fn probe_zones(self: &Arc<Self>) -> bool {
        for zone in self.zones().iter() {
            let Ok(wire) = hickory_proto::serialize::binary::BinEncodable::to_bytes(&zone.config.name.to_lowercase())
            else {
                continue;
            };
            let Ok(name) = LowerName::new(&wire) else {
                continue;
            };
            let (key, _) = CacheKey::for_query(name, 6, nodedns_cache::CLASS_IN, false, false);
            let mut rx = self.fetch(zone, &key);
            if let Ok(r) = rx.recv().await
                && !matches!(r.as_ref(), FetchResult::Failed(_))
            {
                return true;
            }
        }
        self.upstream_answered.load(Relaxed)
    }

    /// Every second, sends a health probe (the zone apex SOA) to each ejected endpoint, so
    /// endpoints come back as soon as they answer instead of waiting out their backoff with
    /// client queries as the probes.
    pub async fn probe_ejected_loop(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        loop {
            tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            for zone in self.zones().iter() {
                let Ok(wire) =
                    hickory_proto::serialize::binary::BinEncodable::to_bytes(&zone.config.name.to_lowercase())
                else {
                    continue;
                };
                let Ok(name) = LowerName::new(&wire) else { continue };
                let q = UpstreamQuestion { name, qtype: 6, qclass: 1, dnssec_ok: false, checking_disabled: false };
                zone.pool.probe_ejected(&q, &zone.config.name).await;
            }
        }
    }

    /// Counts of waiting queries, for tests and metrics.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Relaxed)
    }
}

pub use nodedns_wire::name_from_wire;

fn display_name(wire: &[u8]) -> String {
    name_from_wire(wire).map(|n| n.to_ascii()).unwrap_or_else(|| "<invalid>".into())
}
