//! The resolver shared by every listener: its state (the zone table, the cache, the fetches in
//! flight), construction and live reconfiguration. What it does is in the sibling modules:
//! [`crate::hit`], [`crate::miss`], [`crate::fetch`], [`crate::synthesis`], [`crate::probe`].

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use hickory_proto::rr::Name;
use parking_lot::{Mutex, RwLock};
use tokio::sync::watch;

use nodedns_cache::{Cache, CacheLimits, CapKind, Timestamp, TtlPolicy};
use nodedns_config::{Config, Limits};
use nodedns_upstream::EndpointRegistry;

use crate::clock::Clock;
use crate::events::{ForwarderTaps, ResolverEvents};
use crate::fetch::{FetchKey, FetchState};
use crate::warn::RateLimitedWarn;
use crate::zone::Zone;

/// The resolver state shared by listeners.
pub struct Resolver {
    pub cache: Cache,
    pub(crate) zones: RwLock<Arc<Vec<Arc<Zone>>>>,
    /// Bumped by every [`Resolver::reconfigure`]: what the discovery supervisor waits on.
    pub(crate) zones_version: watch::Sender<u64>,
    /// Upstream endpoints shared across zones (one connection pool per address).
    pub(crate) registry: Arc<EndpointRegistry>,
    /// The upstream in-flight limits new zones are built with (a restart applies changes).
    pub(crate) limits: Limits,
    pub(crate) cache_config: RwLock<nodedns_config::CacheConfig>,
    /// Where counters and gauges about what the resolver did go (the daemon's metrics).
    pub(crate) events: Arc<dyn ResolverEvents>,
    /// Cache timestamps: injected, so tests drive TTLs on tokio's paused clock.
    pub(crate) clock: Clock,
    pub(crate) fetches: Mutex<HashMap<FetchKey, Arc<watch::Sender<FetchState>>>>,
    /// Client queries waiting on the miss path.
    pub(crate) waiting: AtomicUsize,
    /// `limits.max_inflight` in force (reloadable, [`Resolver::max_inflight`]).
    pub(crate) max_inflight: AtomicUsize,
    /// `limits.max_udp_payload` in force (reloadable, [`Resolver::max_udp_payload`]).
    pub(crate) max_udp_payload: AtomicU16,
    /// Set once an upstream has answered (the app's readiness probe asks).
    pub(crate) upstream_answered: AtomicBool,
    pub(crate) split_warn: RateLimitedWarn,
    pub(crate) shed_warn: RateLimitedWarn,
    /// Observes every upstream exchange (dnstap's FORWARDER messages), for zones built later.
    pub(crate) taps: Option<Arc<dyn ForwarderTaps>>,
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
            zones_version: watch::Sender::new(0),
            registry,
            limits: config.limits.clone(),
            cache_config: RwLock::new(config.cache.clone()),
            events,
            clock,
            fetches: Mutex::new(HashMap::new()),
            waiting: AtomicUsize::new(0),
            max_inflight: AtomicUsize::new(config.limits.max_inflight),
            max_udp_payload: AtomicU16::new(config.limits.max_udp_payload),
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

    /// Applies a reloaded config: zones (endpoints that remain keep their connections, health
    /// and counters: they live in the shared registry; their `tcp_connections` is applied), the
    /// `cache.*` policy (a lowered TTL ceiling caps entries already cached, `max_stale_secs`),
    /// `limits.max_inflight` and `limits.max_udp_payload`. The cache is kept. Discovery follows
    /// the new zones by itself (the daemon's discovery supervisor waits on [`Self::zones_changed`]).
    pub fn reconfigure(&self, config: &Config) {
        let next: Vec<Arc<Zone>> = config
            .zones
            .iter()
            .cloned()
            .map(|z| Arc::new(Zone::new(z, &self.limits, &self.registry, self.taps.as_ref())))
            .collect();
        let previous = self.zones();
        // Keep discovered endpoints of zones whose discovery target did not change.
        for zone in &next {
            if let Some(old) = previous.iter().find(|o| {
                o.config.name == zone.config.name
                    && o.config.discover == zone.config.discover
                    && zone.config.discover.is_some()
            }) {
                let addrs: Vec<_> = old.pool.endpoints().iter().map(|e| e.endpoint.addr).collect();
                zone.pool.set_endpoints(&addrs);
                zone.pool.set_fallback(zone.config.upstreams.addrs());
            }
        }
        // Capping walks the whole cache: only when a ceiling can have gone down (a zone's TTL
        // ceilings, the zones that own names, or the failure ceiling changed).
        let ceilings = |zones: &[Arc<Zone>]| -> Vec<_> {
            zones.iter().map(|z| (z.config.name.clone(), z.config.ttl.max_ttl, z.config.ttl.denial_max_ttl)).collect()
        };
        let ceilings_changed =
            ceilings(&previous) != ceilings(&next) || self.cache_config.read().failure.max != config.cache.failure.max;
        self.registry.set_tcp_connections(next.iter().map(|z| &z.pool));
        self.events.zones_changed(&next);
        *self.cache_config.write() = config.cache.clone();
        *self.zones.write() = Arc::new(next);
        self.zones_version.send_modify(|v| *v += 1);
        self.cache.set_max_stale(config.cache.max_stale);
        let capped = if ceilings_changed { self.cap_cached_ttls(config) } else { 0 };
        if capped > 0 {
            tracing::info!(entries = capped, "cached entries capped at the reloaded TTL ceiling");
        }
        self.max_inflight.store(config.limits.max_inflight, Relaxed);
        self.max_udp_payload.store(config.limits.max_udp_payload, Relaxed);
    }

    /// Changes whenever a reload replaced the zones.
    pub fn zones_changed(&self) -> watch::Receiver<u64> {
        self.zones_version.subscribe()
    }

    /// Caps every cached entry at the ceiling of the zone that now serves its name: a lowered
    /// `max_ttl_secs` (or denial / failure ceiling) applies to what is cached at once, so an
    /// operator can get rid of a bad record without waiting out its old TTL. Names no zone
    /// serves are left alone (never answered from the cache: the miss path refuses them).
    fn cap_cached_ttls(&self, config: &Config) -> usize {
        let zones: Vec<(Vec<u8>, TtlPolicy)> = config
            .zones
            .iter()
            .filter_map(|z| {
                let wire = hickory_proto::serialize::binary::BinEncodable::to_bytes(&z.name.to_lowercase()).ok()?;
                Some((wire, z.ttl))
            })
            .collect();
        let failure_max = config.cache.failure.max;
        self.cache.cap_ttl(self.now(), |name, kind| {
            // The first zone that contains the name, as `zone_for` picks it.
            let (_, policy) = zones.iter().find(|(zone, _)| wire_in_zone(name, zone))?;
            Some(match kind {
                CapKind::Positive => policy.max_ttl,
                CapKind::Denial => policy.denial_max_ttl,
                CapKind::Failure => failure_max,
            })
        })
    }

    /// `limits.max_inflight` in force: client queries that may wait on the miss path at once.
    #[inline]
    pub fn max_inflight(&self) -> usize {
        self.max_inflight.load(Relaxed)
    }

    /// `limits.max_udp_payload` in force: the largest UDP answer sent.
    #[inline]
    pub fn max_udp_payload(&self) -> u16 {
        self.max_udp_payload.load(Relaxed)
    }

    pub(crate) fn zone_for(&self, name: &Name) -> Option<Arc<Zone>> {
        self.zones.read().iter().find(|z| z.config.name.zone_of(name)).cloned()
    }

    pub fn stale_answer_timeout(&self) -> Duration {
        self.cache_config.read().stale_answer_timeout
    }

    pub(crate) fn prefetch_enabled(&self) -> bool {
        self.cache_config.read().prefetch
    }

    /// Counts of waiting queries, for tests and metrics.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Relaxed)
    }
}

/// Whether the lower-case wire name `name` is `zone` (lower-case wire form) or below it: `zone`
/// is a suffix of `name` starting at a label boundary.
fn wire_in_zone(name: &[u8], zone: &[u8]) -> bool {
    let mut pos = 0;
    while pos < name.len() {
        if name[pos..] == *zone {
            return true;
        }
        pos += 1 + name[pos] as usize;
    }
    false
}
