//! The resolver shared by every listener: cache lookups, and the miss path — zone selection,
//! A/AAAA pair fetches, coalescing of identical misses, serve-stale and prefetch.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use hickory_proto::rr::Name;
use parking_lot::{Mutex, RwLock};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{debug, warn};

use nodedns_cache::{
    AnswerView, Cache, CacheKey, CacheLimits, CacheableAnswer, FailurePolicy, FailureRecorded, Freshness, KeyKind,
    LowerName, MAX_NAME_LEN, Member, PairMember, Timestamp, TtlPolicy,
};
use nodedns_upstream::{EndpointRegistry, PoolConfig, UpstreamError, UpstreamPool};
use nodedns_wire::{OwnedQuery, Query, Rcode, Transport, UpstreamQuestion, render_cached, render_rcode};

use nodedns_config::{Config, Limits, ZoneConfig};

use crate::clock::Clock;
use crate::events::{CacheResult, ForwarderTaps, ResolverEvents, Shed};
use crate::warn::RateLimitedWarn;

/// One configured zone with its upstreams.
pub struct Zone {
    pub config: ZoneConfig,
    pub pool: UpstreamPool,
    /// The zone's name as a label value.
    pub label: String,
    /// Unit tests answer from a script instead of the network: paused time cannot wait on
    /// sockets served by another thread.
    #[cfg(test)]
    pub(crate) script: std::sync::OnceLock<Arc<crate::tests::Script>>,
}

impl Zone {
    pub fn new(
        config: ZoneConfig,
        limits: &Limits,
        registry: &Arc<EndpointRegistry>,
        taps: Option<&Arc<dyn ForwarderTaps>>,
    ) -> Self {
        let pool = UpstreamPool::with_registry(
            config.upstreams.addrs(),
            PoolConfig {
                transport: config.transport,
                tcp_connections: config.tcp_connections,
                query_timeout: config.query_timeout,
                query_budget: config.query_budget,
                max_inflight_per_endpoint: limits.max_upstream_inflight,
                queue_wait: limits.upstream_queue_wait,
                ..PoolConfig::default()
            },
            registry.clone(),
        )
        .with_observer(taps.map(|t| t.forwarder(&config.name)));
        let label = config.name.to_ascii();
        Self {
            config,
            pool,
            label,
            #[cfg(test)]
            script: std::sync::OnceLock::new(),
        }
    }

    /// One question to the zone's upstreams.
    async fn resolve(&self, q: &UpstreamQuestion<'_>) -> Result<nodedns_upstream::Resolved, UpstreamError> {
        #[cfg(test)]
        if let Some(script) = self.script.get() {
            return script.resolve(q, &self.config.name).await;
        }
        self.pool.resolve(q, &self.config.name).await
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

/// How one member of a fetch (the single answer, or A or AAAA of a pair) stands.
#[derive(Clone)]
pub enum MemberState {
    Pending,
    Answered(Arc<Fetched>),
    /// The member failed; the cache holds what answers it now (a failure entry, stale data),
    /// except for a shed query, which is answered REFUSED and caches nothing.
    Failed(UpstreamError),
}

/// The progress of one (coalesced) upstream fetch, published to its waiters as each member
/// settles: a client waits for its own member only, never for the other one of a pair beyond
/// `cache.pair_wait_ms` (issue #13: one record type's failure is that type's).
#[derive(Clone)]
pub struct FetchState {
    /// Single fetches use `members[0]`.
    members: [MemberState; 2],
    done: bool,
}

impl FetchState {
    fn new() -> Self {
        Self { members: [MemberState::Pending, MemberState::Pending], done: false }
    }

    fn member(&self, m: Member) -> &MemberState {
        &self.members[match m {
            Member::Aaaa => 1,
            Member::A | Member::Single => 0,
        }]
    }

    /// Whether a waiter for `m` has its answer (or will get none from this fetch).
    fn settled(&self, m: Member) -> bool {
        self.done || !matches!(self.member(m), MemberState::Pending)
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
pub struct Resolver {
    pub cache: Cache,
    zones: RwLock<Arc<Vec<Arc<Zone>>>>,
    /// Upstream endpoints shared across zones (one connection pool per address).
    registry: Arc<EndpointRegistry>,
    /// The upstream in-flight limits new zones are built with (a restart applies changes).
    limits: Limits,
    cache_config: RwLock<nodedns_config::CacheConfig>,
    /// Where counters and gauges about what the resolver did go (the daemon's metrics).
    events: Arc<dyn ResolverEvents>,
    /// Cache timestamps: injected, so tests drive TTLs on tokio's paused clock.
    clock: Clock,
    fetches: Mutex<HashMap<FetchKey, Arc<watch::Sender<FetchState>>>>,
    /// Client queries waiting on the miss path.
    waiting: AtomicUsize,
    pub max_inflight: usize,
    pub max_udp_payload: u16,
    /// Set once an upstream has answered (the app's readiness probe asks).
    upstream_answered: AtomicBool,
    split_warn: RateLimitedWarn,
    shed_warn: RateLimitedWarn,
    /// Observes every upstream exchange (dnstap's FORWARDER messages), for zones built later.
    taps: Option<Arc<dyn ForwarderTaps>>,
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
    Fetched(Arc<Fetched>),
    /// Upstream failed or was too slow: stale data if any, else what the cache holds for the
    /// failure (a failure entry), else SERVFAIL.
    StaleOrServFail,
    /// Shed by the upstream in-flight limit: stale data if any, else REFUSED (as `max_inflight`
    /// shedding answers); never a failure entry.
    StaleOrRefused,
    Synthesized(Box<CacheableAnswer>, TtlPolicy),
}

thread_local! {
    /// Render scratch for the miss path: rendering is synchronous, so one buffer per runtime
    /// thread serves every miss.
    static SCRATCH: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0u8; nodedns_wire::MAX_MESSAGE]);
}

impl Resolver {
    /// The resolver for `config`'s zones and cache, reporting to `events`, its upstream
    /// exchanges observed by `taps`, on `clock`.
    pub fn new(
        config: &Config,
        events: Arc<dyn ResolverEvents>,
        taps: Option<Arc<dyn ForwarderTaps>>,
        clock: Clock,
    ) -> Arc<Self> {
        let registry = EndpointRegistry::new();
        let zones: Vec<Arc<Zone>> = config
            .zones
            .iter()
            .cloned()
            .map(|z| Arc::new(Zone::new(z, &config.limits, &registry, taps.as_ref())))
            .collect();
        events.zones_changed(&zones);
        Arc::new(Self {
            cache: Cache::new(CacheLimits {
                max_bytes: config.cache.max_bytes,
                max_stale: config.cache.max_stale,
                shards: 64,
            }),
            zones: RwLock::new(Arc::new(zones)),
            registry,
            limits: config.limits.clone(),
            cache_config: RwLock::new(config.cache.clone()),
            events,
            clock,
            fetches: Mutex::new(HashMap::new()),
            waiting: AtomicUsize::new(0),
            max_inflight: config.limits.max_inflight,
            max_udp_payload: config.limits.max_udp_payload,
            upstream_answered: AtomicBool::new(false),
            split_warn: RateLimitedWarn::new(Duration::from_secs(10)),
            shed_warn: RateLimitedWarn::new(Duration::from_secs(10)),
            taps,
        })
    }

    /// Now, for the cache.
    #[inline]
    pub fn now(&self) -> Timestamp {
        self.clock.now()
    }

    /// `at` as a cache timestamp, for callers that already read the clock (a UDP worker, once
    /// per batch).
    #[inline]
    pub fn timestamp(&self, at: std::time::Instant) -> Timestamp {
        self.clock.at(at)
    }

    /// Whether an upstream has answered since start.
    pub fn upstream_answered(&self) -> bool {
        self.upstream_answered.load(Relaxed)
    }

    pub fn zones(&self) -> Arc<Vec<Arc<Zone>>> {
        self.zones.read().clone()
    }

    /// Applies a reloaded config's zones and cache TTL policy. Endpoints that remain keep their
    /// connections, health and counters (they live in the shared registry); the cache is kept.
    pub fn reconfigure(&self, config: &Config) {
        let next: Vec<Arc<Zone>> = config
            .zones
            .iter()
            .cloned()
            .map(|z| Arc::new(Zone::new(z, &self.limits, &self.registry, self.taps.as_ref())))
            .collect();
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
        self.events.zones_changed(&next);
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
        let hit = self
            .cache
            .lookup(&key, member, now, |view| match view.freshness {
                Freshness::Fresh { refresh_due } => {
                    render_cached(query, view, transport, out).map(|n| (n, refresh_due))
                }
                Freshness::Stale { .. } => None,
            })
            .flatten();
        // A SERVFAIL served from the cache can only come from a failure entry (RFC 9520).
        if let Some((len, _)) = hit
            && len > 3
            && out[3] & 0x0f == Rcode::ServFail as u8
        {
            self.events.failure_answered();
        }
        hit
    }

    /// A stale (expired, within `max_stale_secs`) answer for a query that cannot wait for an
    /// upstream because a bound is reached (the miss queue is full): serve-stale wins over
    /// shedding, so a flood of new names from one client never costs the names others had.
    pub fn answer_stale(
        &self,
        query: &Query<'_>,
        transport: Transport,
        out: &mut [u8],
        now: Timestamp,
    ) -> Option<usize> {
        let mut name_buf = [0u8; MAX_NAME_LEN];
        let (key, member) = query.cache_key(&mut name_buf);
        self.cache
            .lookup(&key, member, now, |view| match view.freshness {
                Freshness::Stale { .. } if !view.is_failure() => render_cached(query, view, transport, out),
                _ => None,
            })
            .flatten()
    }

    /// The miss path for one client query (owned packet). Everything it does for the query —
    /// the schema rule's SOA fetch, every upstream attempt, the pair wait — fits one deadline,
    /// the zone's `query_budget_ms` from now (issue #13: glibc gives up after 5 s).
    pub async fn answer_miss(self: &Arc<Self>, miss: &OwnedQuery, transport: Transport) -> Option<MissAnswer> {
        let query = miss.query();
        let (key, member) = miss.cache_key();
        let decision = if self.waiting.load(Relaxed) >= self.max_inflight {
            self.events.shed(Shed::Inflight);
            if self.shed_warn.allow() {
                warn!(limit = self.max_inflight, "shedding queries: too many waiting for upstream answers");
            }
            // One client's flood of new names must not cost other pods the names they had: stale
            // data still answers (RFC 8767), only a query with nothing cached is refused.
            Decision::StaleOrRefused
        } else {
            self.waiting.fetch_add(1, Relaxed);
            self.events.waiting(1);
            let d = self.decide(&query, &key, member, Instant::now()).await;
            self.events.waiting(-1);
            self.waiting.fetch_sub(1, Relaxed);
            d
        };
        SCRATCH.with(|scratch| {
            let mut out = scratch.borrow_mut();
            let (len, result) = self.render_decision(&query, (&key, member), decision, transport, &mut out)?;
            Some(MissAnswer { bytes: out[..len].to_vec(), result })
        })
    }

    fn render_decision(
        &self,
        query: &Query<'_>,
        (key, member): (&CacheKey<'_>, Member),
        decision: Decision,
        transport: Transport,
        out: &mut [u8],
    ) -> Option<(usize, CacheResult)> {
        let miss = |len| (len, CacheResult::Miss);
        match decision {
            Decision::Rcode(rcode) => render_rcode(query, rcode, out).map(miss),
            Decision::Fetched(f) => render_cached(query, &f.view(), transport, out).map(miss),
            Decision::Synthesized(answer, policy) => {
                render_cached(query, &Fetched::new(*answer, &policy).view(), transport, out).map(miss)
            }
            Decision::Cached | Decision::StaleOrServFail | Decision::StaleOrRefused => {
                let now = self.now();
                let from_cache = self
                    .cache
                    .lookup(key, member, now, |view| {
                        let result = match view.freshness {
                            Freshness::Fresh { .. } => CacheResult::Hit,
                            Freshness::Stale { .. } => CacheResult::Stale,
                        };
                        let failure = view.is_failure();
                        render_cached(query, view, transport, out).map(|len| (len, result, failure))
                    })
                    .flatten();
                match from_cache {
                    // Shed: stale data may answer, a failure entry may not (shedding is no
                    // resolution failure, and the client should retry elsewhere).
                    Some((_, _, true)) if matches!(decision, Decision::StaleOrRefused) => {
                        render_rcode(query, Rcode::Refused, out).map(miss)
                    }
                    Some((len, result, failure)) => {
                        if failure {
                            self.events.failure_answered();
                        }
                        // A fresh entry found after the upstream failed was filled by a fetch.
                        let result = match (result, &decision) {
                            (CacheResult::Hit, Decision::Cached) => CacheResult::Hit,
                            (CacheResult::Hit, _) => CacheResult::Miss,
                            (r, _) => r,
                        };
                        Some((len, result))
                    }
                    None if matches!(decision, Decision::StaleOrRefused) => {
                        render_rcode(query, Rcode::Refused, out).map(miss)
                    }
                    None => render_rcode(query, Rcode::ServFail, out).map(miss),
                }
            }
        }
    }

    /// Decides how to answer a miss, waiting for upstream if needed, by the query's deadline.
    async fn decide(
        self: &Arc<Self>,
        query: &Query<'_>,
        key: &CacheKey<'_>,
        member: Member,
        received: Instant,
    ) -> Decision {
        // Filled while this query waited in a queue?
        let now = self.now();
        let freshness = self.cache.lookup(key, member, now, |view| view.freshness);
        let has_stale = match freshness {
            Some(Freshness::Fresh { .. }) => return Decision::Cached,
            // A failed refresh of this stale entry is backing off (RFC 9520 §3.2): answer stale
            // now without asking upstream again.
            Some(Freshness::Stale { refresh_allowed: false, .. }) => return Decision::StaleOrServFail,
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
        let deadline = received + zone.config.query_budget;

        if zone.config.kubernetes_schema
            && crate::schema::verdict(&qname, &zone.config) == crate::schema::SchemaVerdict::CannotExist
        {
            // The SOA fetch may take at most half the budget: the other half is for asking
            // upstream about the name itself if no SOA can be had.
            let soa_deadline = received + zone.config.query_budget / 2;
            if let Some(answer) = self.synthesize_nxdomain(&zone, query, soa_deadline).await {
                self.events.synthesized(&zone);
                return Decision::Synthesized(Box::new(answer), zone.config.ttl);
            }
        }
        // (No SOA learned yet, e.g. upstream down: ask upstream like any other name.)

        let Some(mut rx) = self.join_or_fetch(&zone, key, Some(member)) else {
            // Filled by a fetch that ended between the lookup above and now.
            return Decision::Cached;
        };
        // RFC 8767 §5: with stale data, answer from it if the refresh takes longer than the
        // client timeout allows; the fetch goes on in the background and refreshes the entry.
        let wait_until = if has_stale { deadline.min(Instant::now() + self.stale_answer_timeout()) } else { deadline };
        let state = match tokio::time::timeout_at(wait_until, rx.wait_for(|s| s.settled(member))).await {
            Ok(Ok(state)) => state.member(member).clone(),
            _ => return Decision::StaleOrServFail,
        };
        match state {
            MemberState::Answered(f) => Decision::Fetched(f),
            MemberState::Failed(UpstreamError::Overloaded) => {
                self.events.shed(Shed::UpstreamInflight);
                if self.shed_warn.allow() {
                    warn!(
                        limit = self.limits.max_upstream_inflight,
                        zone = %zone.label,
                        "shedding queries: every upstream endpoint of the zone holds its in-flight limit"
                    );
                }
                Decision::StaleOrRefused
            }
            MemberState::Failed(_) | MemberState::Pending => Decision::StaleOrServFail,
        }
    }

    /// Starts a refresh of a popular entry before it expires (prefetch). Coalesced with any
    /// fetch of the same key already running.
    pub fn prefetch(self: &Arc<Self>, query: &OwnedQuery) {
        if !self.prefetch_enabled() {
            return;
        }
        let (key, _) = query.cache_key();
        let Some(qname) = name_from_wire(key.name.as_wire()) else {
            return;
        };
        if let Some(zone) = self.zone_for(&qname) {
            self.events.prefetch_started();
            drop(self.fetch(&zone, &key));
        }
    }

    /// Joins or starts the fetch for `key`. Identical misses share one upstream exchange: 10,000
    /// simultaneous queries for one name cost the upstream one A+AAAA pair. A query that joins
    /// late sees what has settled already (a `watch`, not a broadcast).
    fn fetch(self: &Arc<Self>, zone: &Arc<Zone>, key: &CacheKey<'_>) -> watch::Receiver<FetchState> {
        self.join_or_fetch(zone, key, None).unwrap_or_else(|| unreachable!("no recheck asked"))
    }

    /// [`Resolver::fetch`] for a miss of `recheck`: `None` when no fetch is running and the cache
    /// has a fresh answer for it after all (the fetch that filled it ended after the caller
    /// looked), so identical misses never cost a second upstream exchange.
    fn join_or_fetch(
        self: &Arc<Self>,
        zone: &Arc<Zone>,
        key: &CacheKey<'_>,
        recheck: Option<Member>,
    ) -> Option<watch::Receiver<FetchState>> {
        let fk = FetchKey::of(key);
        let mut fetches = self.fetches.lock();
        if let Some(tx) = fetches.get(&fk) {
            return Some(tx.subscribe());
        }
        if let Some(member) = recheck
            && let Some(Freshness::Fresh { .. }) = self.cache.lookup(key, member, self.now(), |v| v.freshness)
        {
            return None;
        }
        let (tx, rx) = watch::channel(FetchState::new());
        let tx = Arc::new(tx);
        fetches.insert(fk.clone(), tx.clone());
        drop(fetches);
        let engine = self.clone();
        let zone = zone.clone();
        tokio::spawn(async move {
            engine.run_fetch(&zone, &fk, &tx).await;
            engine.fetches.lock().remove(&fk);
            tx.send_modify(|s| s.done = true);
        });
        Some(rx)
    }

    /// Stores the failure of `key` unless it was shed (our limit, not a resolution failure).
    fn cache_failure(&self, key: &CacheKey<'_>, e: &UpstreamError) {
        match e {
            UpstreamError::Failed { .. } => {
                let failure = self.cache_config.read().failure;
                if let Ok(FailureRecorded::Stored { .. }) = self.cache.insert_failure(key, &failure, self.now()) {
                    self.events.failure_entry_stored();
                }
            }
            // Shed, every endpoint ejected (already failing fast, and re-admission must not
            // leave names failing behind it), or nothing configured: no failure entry.
            UpstreamError::Overloaded | UpstreamError::AllEjected | UpstreamError::NoEndpoints => {}
        }
    }

    async fn run_fetch(&self, zone: &Zone, fk: &FetchKey, tx: &watch::Sender<FetchState>) {
        let Ok(name) = LowerName::new(&fk.name) else {
            tx.send_modify(|s| s.members = [0, 1].map(|_| MemberState::Failed(UpstreamError::NoEndpoints)));
            return;
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
        match fk.kind {
            KeyKind::Single(qtype) => {
                let state = match zone.resolve(&question(qtype)).await {
                    Ok(r) => {
                        let _ = self.cache.insert(&key, &r.answer, &policy, self.now());
                        // After the insert: readiness must not announce an answer not yet cached.
                        self.upstream_answered.store(true, Relaxed);
                        MemberState::Answered(Arc::new(Fetched::new(r.answer, &policy)))
                    }
                    Err(e) => {
                        self.cache_failure(&key, &e);
                        MemberState::Failed(e)
                    }
                };
                tx.send_modify(|s| s.members[0] = state);
            }
            KeyKind::Pair => {
                let questions = (question(nodedns_cache::TYPE_A), question(nodedns_cache::TYPE_AAAA));
                self.run_pair_fetch(zone, &key, fk, tx, questions).await
            }
        }
    }

    /// A/AAAA fetched together. When both answer within `pair_wait` of each other the pair rule
    /// stands (one entry, one expiry, split detection). When one member fails, or is still
    /// missing `pair_wait` after the other arrived, the one that answered is served at once and
    /// stored with the other as a failure member, both for `min_ttl` only: IPv4 never breaks
    /// because of IPv6, the two still expire together, and a failure member is SERVFAIL, never
    /// NXDOMAIN, so the NXDOMAIN-next-to-NOERROR split that made glibc give up cannot come of it.
    async fn run_pair_fetch(
        &self,
        zone: &Zone,
        key: &CacheKey<'_>,
        fk: &FetchKey,
        tx: &watch::Sender<FetchState>,
        questions: (UpstreamQuestion<'_>, UpstreamQuestion<'_>),
    ) {
        let policy = zone.config.ttl;
        let (pair_wait, failure) = {
            let c = self.cache_config.read();
            (c.pair_wait, c.failure)
        };
        let degraded_ttl = policy.min_ttl.max(failure.initial).max(nodedns_cache::Ttl::from_secs(1)).secs();
        let (qa, qaaaa) = questions;
        let publish = |m: PairMember, state: MemberState| {
            tx.send_modify(|s| s.members[pair_slot(m)] = state);
        };
        let mut refetched = false;
        loop {
            let mut fa = std::pin::pin!(zone.resolve(&qa));
            let mut fb = std::pin::pin!(zone.resolve(&qaaaa));
            let (first, first_result) = tokio::select! {
                r = fa.as_mut() => (PairMember::A, r),
                r = fb.as_mut() => (PairMember::Aaaa, r),
            };
            let mut other = match first {
                PairMember::A => fb.as_mut(),
                PairMember::Aaaa => fa.as_mut(),
            };
            let second_result = match &first_result {
                Ok(_) => match tokio::time::timeout(pair_wait, other.as_mut()).await {
                    Ok(r) => r,
                    Err(_) => {
                        // The other member is late: the one that came is answered now, and the
                        // pair is stored once the other settles.
                        let Ok(first_answer) = first_result else { unreachable!("matched Ok") };
                        self.upstream_answered.store(true, Relaxed);
                        let kept = first_answer.answer.clone();
                        let fetched = Fetched::with_ttl(first_answer.answer, degraded_ttl, false);
                        publish(first, MemberState::Answered(Arc::new(fetched)));
                        let late = other.await;
                        self.store_late_pair(key, (first, kept), late, &policy, &failure, &publish);
                        return;
                    }
                },
                Err(e) => {
                    // The failed member's waiters are answered now (stale data, a failure
                    // entry once stored, or SERVFAIL); the other member is awaited in full.
                    publish(first, MemberState::Failed(*e));
                    other.await
                }
            };
            let (a, aaaa) = match first {
                PairMember::A => (first_result, second_result),
                PairMember::Aaaa => (second_result, first_result),
            };
            match (a, aaaa) {
                (Ok(a), Ok(aaaa)) => {
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
                    let ttl = self.store_pair(key, &a.answer, &aaaa.answer, &policy);
                    tx.send_modify(|s| {
                        s.members = [
                            MemberState::Answered(Arc::new(Fetched::with_ttl(a.answer, ttl, split))),
                            MemberState::Answered(Arc::new(Fetched::with_ttl(aaaa.answer, ttl, split))),
                        ]
                    });
                }
                (Ok(ok), Err(e)) => {
                    self.upstream_answered.store(true, Relaxed);
                    self.store_degraded(key, (PairMember::A, ok), e, &policy, &failure, &publish);
                }
                (Err(e), Ok(ok)) => {
                    self.upstream_answered.store(true, Relaxed);
                    self.store_degraded(key, (PairMember::Aaaa, ok), e, &policy, &failure, &publish);
                }
                (Err(ea), Err(eb)) => {
                    // Both failed: one failure entry for the pair, unless either was shed.
                    if matches!((ea, eb), (UpstreamError::Failed { .. }, UpstreamError::Failed { .. })) {
                        self.cache_failure(key, &eb);
                    }
                    tx.send_modify(|s| s.members = [MemberState::Failed(ea), MemberState::Failed(eb)]);
                }
            }
            return;
        }
    }

    /// Stores a pair both of whose members answered; returns its one TTL.
    fn store_pair(&self, key: &CacheKey<'_>, a: &CacheableAnswer, aaaa: &CacheableAnswer, policy: &TtlPolicy) -> u32 {
        match self.cache.insert_pair(key, a, aaaa, policy, self.now()) {
            Ok(ins) => ins.lifetime.secs(),
            // Not stored (larger than a shard's budget): the same rule, computed here.
            Err(_) => {
                let t = a.disposition.lifetime(policy).min(aaaa.disposition.lifetime(policy));
                let split = a.disposition.is_nxdomain() != aaaa.disposition.is_nxdomain();
                if split { t.min(policy.min_ttl).secs() } else { t.secs() }
            }
        }
    }

    /// One member answered and the other failed: the answered one is served and stored with
    /// the other as a failure member ([`Cache::insert_pair_degraded`]). A shed member (our
    /// limit) caches nothing: the answered member is served without being stored.
    fn store_degraded(
        &self,
        key: &CacheKey<'_>,
        answered: (PairMember, nodedns_upstream::Resolved),
        error: UpstreamError,
        policy: &TtlPolicy,
        failure: &FailurePolicy,
        publish: &dyn Fn(PairMember, MemberState),
    ) {
        let (member, ok) = answered;
        let mut ttl = policy.min_ttl.max(failure.initial).max(nodedns_cache::Ttl::from_secs(1)).secs();
        if matches!(error, UpstreamError::Failed { .. })
            && let Ok(ins) = self.cache.insert_pair_degraded(key, (member, &ok.answer), policy, failure, self.now())
        {
            self.events.failure_entry_stored();
            ttl = ins.lifetime.secs();
        }
        publish(member.other(), MemberState::Failed(error));
        publish(member, MemberState::Answered(Arc::new(Fetched::with_ttl(ok.answer, ttl, false))));
    }

    /// The first member was answered alone after `pair_wait`; the late one has now settled.
    fn store_late_pair(
        &self,
        key: &CacheKey<'_>,
        first: (PairMember, CacheableAnswer),
        late: Result<nodedns_upstream::Resolved, UpstreamError>,
        policy: &TtlPolicy,
        failure: &FailurePolicy,
        publish: &dyn Fn(PairMember, MemberState),
    ) {
        let (member, first_answer) = first;
        match late {
            Ok(second) => {
                let (a, aaaa) = match member {
                    PairMember::A => (&first_answer, &second.answer),
                    PairMember::Aaaa => (&second.answer, &first_answer),
                };
                let ttl = self.store_pair(key, a, aaaa, policy);
                publish(member.other(), MemberState::Answered(Arc::new(Fetched::with_ttl(second.answer, ttl, false))));
            }
            Err(error) => {
                if matches!(error, UpstreamError::Failed { .. })
                    && self
                        .cache
                        .insert_pair_degraded(key, (member, &first_answer), policy, failure, self.now())
                        .is_ok()
                {
                    self.events.failure_entry_stored();
                }
                publish(member.other(), MemberState::Failed(error));
            }
        }
    }

    /// The NXDOMAIN answer for a name that cannot exist under the Kubernetes DNS schema, with
    /// the zone's SOA in the authority section (learned from upstream and cached).
    async fn synthesize_nxdomain(
        self: &Arc<Self>,
        zone: &Arc<Zone>,
        query: &Query<'_>,
        deadline: Instant,
    ) -> Option<CacheableAnswer> {
        let soa = self.zone_soa(zone, deadline).await?;
        crate::schema::nxdomain_answer(query, &soa)
    }

    /// The zone apex SOA answer (wire message), from the cache or one upstream query answered by
    /// `deadline`. A failure entry for the SOA means none can be had now.
    async fn zone_soa(self: &Arc<Self>, zone: &Arc<Zone>, deadline: Instant) -> Option<Vec<u8>> {
        let wire = hickory_proto::serialize::binary::BinEncodable::to_bytes(&zone.config.name.to_lowercase()).ok()?;
        let name = LowerName::new(&wire).ok()?;
        let (key, member) = CacheKey::for_query(name, 6, nodedns_cache::CLASS_IN, false, false);
        let now = self.now();
        if let Some((m, fresh, failure)) = self.cache.lookup(&key, member, now, |v| {
            (v.message().to_vec(), matches!(v.freshness, Freshness::Fresh { .. }), v.is_failure())
        }) {
            if failure {
                return None;
            }
            if !fresh {
                // Serve the expired SOA now and refresh it in the background.
                drop(self.fetch(zone, &key));
            }
            return Some(m);
        }
        let mut rx = self.fetch(zone, &key);
        let state = tokio::time::timeout_at(deadline, rx.wait_for(|s| s.settled(member))).await.ok()?.ok()?;
        match state.member(member) {
            MemberState::Answered(f) => Some(f.message.clone()),
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
            let (key, member) = CacheKey::for_query(name, 6, nodedns_cache::CLASS_IN, false, false);
            let mut rx = self.fetch(zone, &key);
            if let Ok(state) = rx.wait_for(|s| s.settled(member)).await
                && matches!(state.member(member), MemberState::Answered(_))
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

/// Where a pair member's state lives in [`FetchState::members`].
fn pair_slot(m: PairMember) -> usize {
    match m {
        PairMember::A => 0,
        PairMember::Aaaa => 1,
    }
}

fn display_name(wire: &[u8]) -> String {
    name_from_wire(wire).map(|n| n.to_ascii()).unwrap_or_else(|| "<invalid>".into())
}
