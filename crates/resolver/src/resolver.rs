//! The resolver shared by every listener: its state (the zone table, the cache, the fetches in
//! flight), construction and live reconfiguration. What it does is in the sibling modules:
//! [`crate::hit`], [`crate::miss`], [`crate::fetch`], [`crate::synthesis`], [`crate::probe`].

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use hickory_proto::rr::Name;
use parking_lot::{Mutex, RwLock};
use tokio::sync::watch;

use nodedns_cache::{Cache, CacheLimits, Timestamp};
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
    pub max_inflight: usize,
    pub max_udp_payload: u16,
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
