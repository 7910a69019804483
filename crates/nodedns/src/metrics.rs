//! Prometheus metrics. Names are constants; labels come from small fixed sets (proto, qtype
//! class, rcode, cache result, zone, upstream endpoint) — never a qname or client address.
//! Handles for the hot path are resolved once at start, so a counted query costs a few atomic
//! adds and no lookups.

use std::net::SocketAddr;
use std::sync::Arc;

use parking_lot::RwLock;
use prometheus::core::{Collector, Desc};
use prometheus::proto::{self, MetricFamily, MetricType};
use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

use nodedns_upstream::{ErrorKind, Health, LATENCY_BUCKETS};
use nodedns_wire::{RejectedQuery, Rejection, response_rcode_label};

pub const REQUESTS: &str = "nodedns_requests_total";
pub const RESPONSES: &str = "nodedns_responses_total";
pub const REQUEST_DURATION: &str = "nodedns_request_duration_seconds";
pub const CACHE_ENTRIES: &str = "nodedns_cache_entries";
pub const CACHE_BYTES: &str = "nodedns_cache_bytes";
pub const CACHE_MAX_BYTES: &str = "nodedns_cache_max_bytes";
pub const CACHE_HITS: &str = "nodedns_cache_hits_total";
pub const CACHE_MISSES: &str = "nodedns_cache_misses_total";
pub const CACHE_EVICTIONS: &str = "nodedns_cache_evictions_total";
pub const CACHE_PREFETCHES: &str = "nodedns_cache_prefetches_total";
pub const CACHE_STALE_ANSWERS: &str = "nodedns_cache_stale_answers_total";
pub const CACHE_SPLIT_PAIRS: &str = "nodedns_cache_split_pairs_total";
pub const CACHE_FAILURE_ENTRIES: &str = "nodedns_cache_failure_entries_total";
pub const CACHE_FAILURE_ANSWERS: &str = "nodedns_cache_failure_answers_total";
pub const UPSTREAM_QUERIES: &str = "nodedns_upstream_queries_total";
pub const UPSTREAM_ERRORS: &str = "nodedns_upstream_errors_total";
pub const UPSTREAM_DURATION: &str = "nodedns_upstream_duration_seconds";
pub const UPSTREAM_HEALTHY: &str = "nodedns_upstream_healthy";
pub const UPSTREAM_OPEN_CONNECTIONS: &str = "nodedns_upstream_open_connections";
pub const UPSTREAM_EJECTIONS: &str = "nodedns_upstream_ejections_total";
pub const INFLIGHT: &str = "nodedns_inflight_queries";
pub const SHED: &str = "nodedns_shed_total";
pub const MALFORMED: &str = "nodedns_malformed_queries_total";
pub const NODE_SETUP_ERRORS: &str = "nodedns_node_setup_errors_total";
pub const NODE_REPAIRS: &str = "nodedns_node_repairs_total";
pub const CONFIG_RELOADS: &str = "nodedns_config_reloads_total";
pub const LOCAL_SYNTHESIZED: &str = "nodedns_local_synthesized_total";
pub const HEALTH_SELF_QUERIES: &str = "nodedns_health_self_queries_total";
pub const UPSTREAM_ZONE_ENDPOINTS: &str = "nodedns_upstream_zone_endpoint";
pub const BUILD_INFO: &str = "nodedns_build_info";
pub const DNSTAP_SENT: &str = "nodedns_dnstap_sent_total";
pub const DNSTAP_DROPPED: &str = "nodedns_dnstap_dropped_total";

// NodeLocal DNSCache (CoreDNS) names, behind `admin.coredns_compatible_metrics`.
pub const COREDNS_REQUESTS: &str = "coredns_dns_requests_total";
pub const COREDNS_RESPONSES: &str = "coredns_dns_responses_total";
pub const COREDNS_REQUEST_DURATION: &str = "coredns_dns_request_duration_seconds";
pub const COREDNS_CACHE_HITS: &str = "coredns_cache_hits_total";
pub const COREDNS_CACHE_MISSES: &str = "coredns_cache_misses_total";
pub const COREDNS_CACHE_ENTRIES: &str = "coredns_cache_entries";
pub const COREDNS_SETUP_ERRORS: &str = "coredns_nodecache_setup_errors_total";

/// Every metric name nodedns can export (checked against the dashboard and alert rules).
pub const ALL_NAMES: &[&str] = &[
    REQUESTS,
    RESPONSES,
    REQUEST_DURATION,
    CACHE_ENTRIES,
    CACHE_BYTES,
    CACHE_MAX_BYTES,
    CACHE_HITS,
    CACHE_MISSES,
    CACHE_EVICTIONS,
    CACHE_PREFETCHES,
    CACHE_STALE_ANSWERS,
    CACHE_SPLIT_PAIRS,
    CACHE_FAILURE_ENTRIES,
    CACHE_FAILURE_ANSWERS,
    UPSTREAM_QUERIES,
    UPSTREAM_ERRORS,
    UPSTREAM_DURATION,
    UPSTREAM_HEALTHY,
    UPSTREAM_OPEN_CONNECTIONS,
    UPSTREAM_EJECTIONS,
    INFLIGHT,
    SHED,
    MALFORMED,
    NODE_SETUP_ERRORS,
    NODE_REPAIRS,
    CONFIG_RELOADS,
    LOCAL_SYNTHESIZED,
    HEALTH_SELF_QUERIES,
    UPSTREAM_ZONE_ENDPOINTS,
    BUILD_INFO,
    DNSTAP_SENT,
    DNSTAP_DROPPED,
    COREDNS_REQUESTS,
    COREDNS_RESPONSES,
    COREDNS_REQUEST_DURATION,
    COREDNS_CACHE_HITS,
    COREDNS_CACHE_MISSES,
    COREDNS_CACHE_ENTRIES,
    COREDNS_SETUP_ERRORS,
];

/// Transport a query came in on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    Udp = 0,
    Tcp = 1,
}

impl Proto {
    pub fn label(self) -> &'static str {
        match self {
            Proto::Udp => "udp",
            Proto::Tcp => "tcp",
        }
    }
}

const QTYPES: [(u16, &str); 12] = [
    (1, "A"),
    (28, "AAAA"),
    (5, "CNAME"),
    (15, "MX"),
    (2, "NS"),
    (12, "PTR"),
    (6, "SOA"),
    (33, "SRV"),
    (16, "TXT"),
    (255, "ANY"),
    (65, "HTTPS"),
    (64, "SVCB"),
];
const QTYPE_OTHER: usize = QTYPES.len();

fn qtype_index(qtype: u16) -> usize {
    QTYPES.iter().position(|(t, _)| *t == qtype).unwrap_or(QTYPE_OTHER)
}

fn qtype_label(i: usize) -> &'static str {
    QTYPES.get(i).map_or("other", |(_, l)| l)
}

const RCODES: [&str; 8] = ["NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED", "BADVERS", "OTHER"];

fn rcode_index(label: &str) -> usize {
    RCODES.iter().position(|r| *r == label).unwrap_or(RCODES.len() - 1)
}

pub use nodedns_resolver::CacheResult;

/// The resolver's counters are these metrics.
impl nodedns_resolver::ResolverEvents for Metrics {
    fn shed(&self, why: nodedns_resolver::Shed) {
        Metrics::shed(
            self,
            match why {
                nodedns_resolver::Shed::Inflight => ShedReason::Inflight,
                nodedns_resolver::Shed::UpstreamInflight => ShedReason::UpstreamInflight,
            },
        );
    }

    fn waiting(&self, delta: i64) {
        self.inflight.add(delta);
    }

    fn failure_entry_stored(&self) {
        self.failure_entries.inc();
    }

    fn failure_answered(&self) {
        self.failure_answers.inc();
    }

    fn prefetch_started(&self) {
        self.prefetches.inc();
    }

    fn synthesized(&self, zone: &nodedns_resolver::Zone) {
        self.local_synthesized.with_label_values(&[&zone.label]).inc();
    }

    fn zones_changed(&self, zones: &[Arc<nodedns_resolver::Zone>]) {
        self.zone_labels(zones);
    }
}

/// Why a query was shed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShedReason {
    Inflight = 0,
    TcpConnections = 1,
    TcpPipeline = 2,
    RateLimit = 3,
    Draining = 4,
    /// Every endpoint of the zone holds `limits.max_upstream_inflight` queries.
    UpstreamInflight = 5,
    /// An idle TCP connection closed to admit a new one at a connection cap (RFC 7766 §6.2.2).
    TcpIdleEvicted = 6,
}

const SHED_REASONS: [&str; 7] =
    ["inflight", "tcp_connections", "tcp_pipeline", "rate_limit", "draining", "upstream_inflight", "tcp_idle_evicted"];

/// Every `reason` of `nodedns_malformed_queries_total`: the rejections of `parse_query`
/// ([`nodedns_wire::Rejection::label`]), datagrams too large to read, headers not worth an
/// answer, and the TCP framing faults of `server::tcp`. Exported at 0 from the start: a series
/// born at 1 is invisible to `increase()` and `rate()`.
pub const MALFORMED_REASONS: [&str; 15] = [
    "question_count",
    "bad_name",
    "short_question",
    "unexpected_records",
    "bad_record",
    "bad_opt",
    "trailing_bytes",
    "not_implemented",
    "bad_edns_version",
    "refused_type_or_class",
    "oversized",
    "unparseable_header",
    "zero_length_frame",
    "short_frame",
    "slow_frame",
];

/// Every `kind` of `nodedns_node_setup_errors_total`: the node library's own list.
pub const NODE_SETUP_ERROR_KINDS: &[&str] = nodedns_node::NodeError::KINDS;

/// Every `result` of `nodedns_config_reloads_total`.
pub const CONFIG_RELOAD_RESULTS: [&str; 2] = ["success", "failure"];

const REQUEST_BUCKETS: [f64; 14] =
    [0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0];

/// Handles used on the serving paths.
pub struct Metrics {
    pub registry: Registry,
    requests: Vec<IntCounter>,
    responses: Vec<IntCounter>,
    duration: Vec<Histogram>,
    pub cache_hits: IntCounter,
    pub cache_misses: IntCounter,
    pub stale_answers: IntCounter,
    pub prefetches: IntCounter,
    /// Failure entries stored (RFC 9520), and answers served from them.
    pub failure_entries: IntCounter,
    pub failure_answers: IntCounter,
    pub inflight: IntGauge,
    shed: Vec<IntCounter>,
    malformed: IntCounterVec,
    pub node_setup_errors: IntCounterVec,
    pub node_repairs: IntCounter,
    pub config_reloads: IntCounterVec,
    pub local_synthesized: IntCounterVec,
    health_self_queries: IntCounter,
    /// dnstap messages written to the output, and dropped (queue full, output down).
    pub dnstap_sent: IntCounter,
    pub dnstap_dropped: IntCounter,
    coredns: Option<CorednsMetrics>,
}

/// The NodeLocal DNSCache metric names with CoreDNS's labels, for existing dashboards. The labels
/// say what happened: `server` is the listener the query came in on (`dns://169.254.20.10:53`),
/// `zone` the configured zone that covers the name, `family` the client's (1 IPv4, 2 IPv6, as
/// CoreDNS), cache `type` success or denial (NXDOMAIN or NODATA). Handles are looked up per
/// query (a hash of the label values): this costs a few hundred nanoseconds, only when enabled.
struct CorednsMetrics {
    requests: IntCounterVec,
    responses: IntCounterVec,
    duration: prometheus::HistogramVec,
    hits: IntCounterVec,
    misses: IntCounterVec,
    setup_errors: IntCounterVec,
    /// `server` label and `family` of each listener, by [`At::listener`].
    listeners: RwLock<Vec<(String, &'static str)>>,
    /// The configured zones (lowercase wire name, label), by [`At::zone`].
    zones: RwLock<Vec<(Vec<u8>, String)>>,
}

/// Where a query came in and which zone covers it: the `server` and `zone` labels of the
/// CoreDNS-compatible series (indices; both ignored when those series are off).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct At {
    listener: u16,
    zone: u16,
}

/// [`At::zone`] of a name no configured zone covers, or of a query without a usable name.
const ROOT_ZONE: u16 = u16::MAX;

impl At {
    /// A query on `listener` whose zone is unknown (unparseable, or no zone covers it).
    pub fn listener(listener: u16) -> At {
        At { listener, zone: ROOT_ZONE }
    }
}

/// Whether an answer is a denial (NXDOMAIN, or NOERROR without answers: NODATA), the cache `type`
/// CoreDNS calls "denial".
fn is_denial(response: &[u8]) -> bool {
    let rcode = response.get(3).map(|b| b & 0x0f);
    let ancount = response.get(6..8).map(|a| u16::from_be_bytes([a[0], a[1]]));
    rcode == Some(3) || (rcode == Some(0) && ancount == Some(0))
}

impl CorednsMetrics {
    /// Calls `f` with the `server`, `zone` and `family` label values of `at`.
    fn with_labels(&self, at: At, f: impl FnOnce(&str, &str, &str)) {
        let listeners = self.listeners.read();
        let zones = self.zones.read();
        let (server, family) = listeners.get(at.listener as usize).map_or(("", "1"), |(s, f)| (s.as_str(), *f));
        let zone = zones.get(at.zone as usize).map_or(".", |(_, label)| label.as_str());
        f(server, zone, family)
    }

    /// The zone covering `qname` (wire form, any case): the longest configured suffix.
    fn zone_of(&self, qname: &[u8]) -> u16 {
        let zones = self.zones.read();
        let mut i = 0;
        while i < qname.len() {
            if let Some(z) = zones.iter().position(|(wire, _)| qname[i..].eq_ignore_ascii_case(wire)) {
                return z as u16;
            }
            i += qname[i] as usize + 1;
        }
        ROOT_ZONE
    }

    fn hit_or_miss(&self, at: At, result: CacheResult, qtype: u16, denial: bool, seconds: f64) {
        self.with_labels(at, |server, zone, _| {
            self.duration.with_label_values(&[server, zone, "", qtype_label(qtype_index(qtype))]).observe(seconds);
            match result {
                CacheResult::Hit => {
                    let kind = if denial { "denial" } else { "success" };
                    self.hits.with_label_values(&[server, kind, "", zone]).inc()
                }
                CacheResult::Miss | CacheResult::Stale => self.misses.with_label_values(&[server, "", zone]).inc(),
            }
        });
    }

    /// Creates the series of every listener × zone at 0, so `rate()` sees their first query.
    fn precreate(&self) {
        let listeners = self.listeners.read().clone();
        let mut zones: Vec<String> = self.zones.read().iter().map(|(_, l)| l.clone()).collect();
        if !zones.iter().any(|z| z == ".") {
            zones.push(".".into());
        }
        for (server, family) in &listeners {
            for zone in &zones {
                for proto in ["udp", "tcp"] {
                    for i in 0..=QTYPE_OTHER {
                        self.requests.with_label_values(&[server, zone, "", proto, family, qtype_label(i)]);
                    }
                }
                for r in RCODES {
                    self.responses.with_label_values(&[server, zone, "", r, "cache"]);
                }
                for kind in ["success", "denial"] {
                    self.hits.with_label_values(&[server, kind, "", zone]);
                }
                self.misses.with_label_values(&[server, "", zone]);
                // Histograms are 17 lines each: only for the types pods ask (glibc's A/AAAA pair).
                for qtype in ["A", "AAAA"] {
                    self.duration.with_label_values(&[server, zone, "", qtype]);
                }
            }
        }
    }
}

fn must<T>(r: prometheus::Result<T>) -> T {
    // Only fails on invalid names or duplicate registration: both are programming errors in
    // this module, caught by its tests.
    r.unwrap_or_else(|e| panic!("metric registration: {e}"))
}

impl Metrics {
    pub fn new(coredns_compatible: bool) -> Arc<Self> {
        let registry = Registry::new();
        let reg = |c: Box<dyn Collector>| must(registry.register(c));

        let requests_vec = must(IntCounterVec::new(
            Opts::new(REQUESTS, "DNS requests received, by transport and query type."),
            &["proto", "qtype"],
        ));
        let mut requests = Vec::new();
        for proto in ["udp", "tcp"] {
            for i in 0..=QTYPE_OTHER {
                requests.push(requests_vec.with_label_values(&[proto, qtype_label(i)]));
            }
        }
        reg(Box::new(requests_vec));

        let responses_vec = must(IntCounterVec::new(Opts::new(RESPONSES, "DNS responses sent, by rcode."), &["rcode"]));
        let responses = RCODES.iter().map(|r| responses_vec.with_label_values(&[r])).collect();
        reg(Box::new(responses_vec));

        let duration_vec = must(prometheus::HistogramVec::new(
            HistogramOpts::new(REQUEST_DURATION, "Time from receiving a query to sending its answer, by cache result.")
                .buckets(REQUEST_BUCKETS.to_vec()),
            &["cache"],
        ));
        let results = [CacheResult::Hit, CacheResult::Miss, CacheResult::Stale];
        let duration = results.iter().map(|c| duration_vec.with_label_values(&[c.label()])).collect();
        reg(Box::new(duration_vec));

        let counter = |name: &str, help: &str| {
            let c = must(IntCounter::new(name, help));
            reg(Box::new(c.clone()));
            c
        };
        let cache_hits = counter(CACHE_HITS, "Queries answered from fresh cache entries.");
        let cache_misses = counter(CACHE_MISSES, "Queries that needed an upstream query.");
        let stale_answers =
            counter(CACHE_STALE_ANSWERS, "Answers served from expired entries because upstreams failed (RFC 8767).");
        let prefetches = counter(CACHE_PREFETCHES, "Popular entries refreshed before they expired.");
        let failure_entries = counter(
            CACHE_FAILURE_ENTRIES,
            "Resolution failures cached (RFC 9520), pairs with one failed member included.",
        );
        let failure_answers = counter(CACHE_FAILURE_ANSWERS, "SERVFAIL answers served from failure entries.");
        let node_repairs =
            counter(NODE_REPAIRS, "Node setup pieces (interface, addresses, rules) found missing and restored.");
        let dnstap_sent = counter(DNSTAP_SENT, "dnstap messages written to log.dnstap's socket or file.");
        let dnstap_dropped = counter(
            DNSTAP_DROPPED,
            "dnstap messages dropped because the queue was full or the output was not open (never waited for).",
        );

        let inflight = must(IntGauge::new(INFLIGHT, "Client queries waiting for an upstream answer."));
        reg(Box::new(inflight.clone()));

        let shed_vec = must(IntCounterVec::new(
            Opts::new(SHED, "Queries or connections refused because a bound was reached."),
            &["reason"],
        ));
        let shed = SHED_REASONS.iter().map(|r| shed_vec.with_label_values(&[r])).collect();
        reg(Box::new(shed_vec));

        let vec = |name: &str, help: &str, labels: &[&str]| {
            let v = must(IntCounterVec::new(Opts::new(name, help), labels));
            reg(Box::new(v.clone()));
            v
        };
        let malformed = vec(MALFORMED, "Queries answered with an error without lookup, by reason.", &["reason"]);
        let node_setup_errors = vec(NODE_SETUP_ERRORS, "Node setup or resync failures, by kind.", &["kind"]);
        for r in MALFORMED_REASONS {
            malformed.with_label_values(&[r]);
        }
        for k in NODE_SETUP_ERROR_KINDS {
            node_setup_errors.with_label_values(&[k]);
        }
        let config_reloads = vec(CONFIG_RELOADS, "Config reloads, by result.", &["result"]);
        for r in CONFIG_RELOAD_RESULTS {
            config_reloads.with_label_values(&[r]);
        }
        let local_synthesized = vec(
            LOCAL_SYNTHESIZED,
            "Queries answered NXDOMAIN locally because the name cannot exist under the Kubernetes DNS schema.",
            &["zone"],
        );

        // An info metric is a gauge at 1 (OpenMetrics "info"): a counter would invite rate().
        let build =
            must(IntGaugeVec::new(Opts::new(BUILD_INFO, "Build information; the value is always 1."), &["version"]));
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        reg(Box::new(build));
        let health_self_queries = counter(
            HEALTH_SELF_QUERIES,
            "/health self-queries answered by a UDP worker (not counted as client requests or responses).",
        );

        let coredns = coredns_compatible.then(|| {
            let requests = vec(
                COREDNS_REQUESTS,
                "Counter of DNS requests made per zone, protocol and family.",
                &["server", "zone", "view", "proto", "family", "type"],
            );
            let responses = vec(
                COREDNS_RESPONSES,
                "Counter of response status codes.",
                &["server", "zone", "view", "rcode", "plugin"],
            );
            let duration = must(prometheus::HistogramVec::new(
                HistogramOpts::new(COREDNS_REQUEST_DURATION, "Histogram of the time (in seconds) each request took.")
                    .buckets(REQUEST_BUCKETS.to_vec()),
                &["server", "zone", "view", "type"],
            ));
            reg(Box::new(duration.clone()));
            let hits = vec(COREDNS_CACHE_HITS, "The count of cache hits.", &["server", "type", "view", "zones"]);
            let misses = vec(COREDNS_CACHE_MISSES, "The count of cache misses.", &["server", "view", "zones"]);
            let setup_errors = vec(
                COREDNS_SETUP_ERRORS,
                "The number of errors during periodic network setup for node-cache.",
                &["errortype"],
            );
            for k in NODE_SETUP_ERROR_KINDS {
                setup_errors.with_label_values(&[k]);
            }
            CorednsMetrics {
                requests,
                responses,
                duration,
                hits,
                misses,
                setup_errors,
                listeners: RwLock::new(Vec::new()),
                zones: RwLock::new(Vec::new()),
            }
        });

        Arc::new(Self {
            registry,
            requests,
            responses,
            duration,
            cache_hits,
            cache_misses,
            stale_answers,
            prefetches,
            failure_entries,
            failure_answers,
            inflight,
            shed,
            malformed,
            node_setup_errors,
            node_repairs,
            config_reloads,
            local_synthesized,
            health_self_queries,
            dnstap_sent,
            dnstap_dropped,
            coredns,
        })
    }

    pub fn coredns_compatible(&self) -> bool {
        self.coredns.is_some()
    }

    /// Registers a listening address (once per address, whatever the number of sockets) for
    /// the `server` label; returns its index for [`At`].
    pub fn listener(&self, addr: SocketAddr) -> u16 {
        let Some(c) = &self.coredns else { return 0 };
        let server = format!("dns://{addr}");
        let mut listeners = c.listeners.write();
        let i = match listeners.iter().position(|(s, _)| *s == server) {
            Some(i) => i,
            None => {
                listeners.push((server, if addr.is_ipv4() { "1" } else { "2" }));
                listeners.len() - 1
            }
        };
        drop(listeners);
        c.precreate();
        i as u16
    }

    /// The zones as configured now (at start and after each reload): `zone` labels, and
    /// `nodedns_local_synthesized_total` at 0 for the zones answered under the Kubernetes schema.
    fn zone_labels(&self, zones: &[Arc<nodedns_resolver::Zone>]) {
        for z in zones.iter().filter(|z| z.config.kubernetes_schema) {
            self.known_zone(&z.label);
        }
        let Some(c) = &self.coredns else { return };
        let named = zones.iter().filter_map(|z| {
            let wire = hickory_proto::serialize::binary::BinEncodable::to_bytes(&z.config.name.to_lowercase()).ok()?;
            Some((wire, z.label.clone()))
        });
        *c.zones.write() = named.collect();
        c.precreate();
    }

    /// Where `query` came in and which zone covers it (only looked up when the CoreDNS-compatible
    /// series are on).
    #[inline]
    pub fn at(&self, listener: u16, query: &nodedns_wire::Query<'_>) -> At {
        match &self.coredns {
            Some(c) => At { listener, zone: c.zone_of(query.qname_wire()) },
            None => At::listener(listener),
        }
    }

    #[inline]
    pub fn request(&self, at: At, proto: Proto, qtype: u16) {
        let i = proto as usize * (QTYPE_OTHER + 1) + qtype_index(qtype);
        self.requests[i].inc();
        if let Some(c) = &self.coredns {
            c.with_labels(at, |server, zone, family| {
                let labels = [server, zone, "", proto.label(), family, qtype_label(qtype_index(qtype))];
                c.requests.with_label_values(&labels).inc();
            });
        }
    }

    #[inline]
    pub fn response(&self, at: At, rcode_label: &str) {
        let i = rcode_index(rcode_label);
        self.responses[i].inc();
        if let Some(c) = &self.coredns {
            c.with_labels(at, |server, zone, _| {
                c.responses.with_label_values(&[server, zone, "", RCODES[i], "cache"]).inc();
            });
        }
    }

    /// A query answered with `response`: its duration and cache result.
    #[inline]
    pub fn answered(&self, at: At, result: CacheResult, qtype: u16, response: &[u8], seconds: f64) {
        self.native_answered(result, seconds);
        self.coredns_answered(at, result, qtype, response, seconds);
    }

    /// [`answered`](Self::answered) without the CoreDNS-compatible series (the UDP workers count
    /// a batch's hits at once, and the compatible series per hit).
    #[inline]
    pub fn native_answered(&self, result: CacheResult, seconds: f64) {
        self.duration[result as usize].observe(seconds);
        match result {
            CacheResult::Hit => self.cache_hits.inc(),
            CacheResult::Miss => self.cache_misses.inc(),
            CacheResult::Stale => self.stale_answers.inc(),
        }
    }

    /// The CoreDNS-compatible part of [`answered`](Self::answered); nothing when they are off.
    #[inline]
    pub fn coredns_answered(&self, at: At, result: CacheResult, qtype: u16, response: &[u8], seconds: f64) {
        if let Some(c) = &self.coredns {
            c.hit_or_miss(at, result, qtype, is_denial(response), seconds);
        }
    }

    pub fn shed(&self, reason: ShedReason) {
        self.shed[reason as usize].inc();
    }

    pub fn malformed(&self, reason: &str) {
        self.malformed.with_label_values(&[reason]).inc();
    }

    /// Counts a query `parse_query` rejected: its reason, and the rcode of `response` if one was
    /// rendered. The `/health` self-query is counted apart: it is not client traffic, and a
    /// REFUSED per kubelet probe would skew the rcode mix the SERVFAIL alert divides by.
    pub fn rejected(&self, at: At, r: &RejectedQuery<'_>, response: Option<&[u8]>) {
        if crate::admin::is_health_self_query(r) {
            self.health_self_queries.inc();
            return;
        }
        self.malformed(r.reason.label());
        if let Some(response) = response {
            // BADVERS is 16: the header's four bits say 0 (NOERROR) and the upper bits are in the
            // OPT record (RFC 6891 §6.1.3), so the header alone would count it as NOERROR.
            let rcode = if r.reason == Rejection::BadVers { "BADVERS" } else { response_rcode_label(response) };
            self.response(at, rcode);
        }
    }

    /// Exports `nodedns_local_synthesized_total{zone}` at 0 for a zone answered under the
    /// Kubernetes schema, before its first synthesized answer.
    pub fn known_zone(&self, zone: &str) {
        self.local_synthesized.with_label_values(&[zone]);
    }

    pub fn node_setup_error(&self, kind: &str) {
        self.node_setup_errors.with_label_values(&[kind]).inc();
        if let Some(c) = &self.coredns {
            c.setup_errors.with_label_values(&[kind]).inc();
        }
    }

    /// Registers a collector that reads live state (cache, upstream endpoints) at scrape time.
    pub fn register_scraped(&self, collector: Box<dyn Collector>) {
        must(self.registry.register(collector));
    }

    /// The metrics in Prometheus text format.
    pub fn render(&self) -> String {
        let families = self.registry.gather();
        let mut out = String::new();
        let enc = prometheus::TextEncoder::new();
        if let Err(e) = enc.encode_utf8(&families, &mut out) {
            out = format!("# encoding failed: {e}\n");
        }
        out
    }
}

/// A point-in-time sample of one upstream endpoint. Labelled by `endpoint` only: one address
/// serves every zone that forwards to it (one connection pool, one health state, one set of
/// counters), so a `zone` label would either join zones into one value (breaking `by (zone)`)
/// or repeat the same counts once per zone (doubling every sum). Which zones use which endpoint
/// is [`ZoneEndpoint`], a separate series to join on.
pub struct EndpointSample {
    pub endpoint: String,
    pub queries: u64,
    pub errors: Vec<(&'static str, u64)>,
    pub latency: ([u64; LATENCY_BUCKETS.len()], u64, f64),
    pub healthy: bool,
    pub open_connections: i64,
    pub ejections: u64,
}

impl EndpointSample {
    pub fn from_endpoint(e: &nodedns_upstream::Endpoint) -> Self {
        use std::sync::atomic::Ordering::Relaxed;
        Self {
            endpoint: e.addr.to_string(),
            queries: e.stats.queries.load(Relaxed),
            errors: ErrorKind::ALL.iter().map(|k| (k.label(), e.stats.error(*k))).collect(),
            latency: e.stats.latency(),
            healthy: e.health() == Health::Healthy,
            open_connections: e.stats.open_connections.load(Relaxed),
            ejections: e.ejections.load(Relaxed),
        }
    }
}

/// One zone's use of one endpoint: `nodedns_upstream_zone_endpoint{zone, endpoint, role} 1`.
pub struct ZoneEndpoint {
    pub zone: String,
    pub endpoint: String,
    /// `primary` (configured or discovered) or `fallback` (the fixed address of a discovering
    /// zone, asked only when every discovered endpoint is ejected).
    pub role: &'static str,
}

/// Everything the scrape-time collector reads.
pub struct ScrapeSample {
    pub cache: CacheSample,
    pub endpoints: Vec<EndpointSample>,
    pub zone_endpoints: Vec<ZoneEndpoint>,
}

/// The upstream part of a scrape from every `(zone, role, endpoint)` use: one sample per
/// distinct endpoint (in first-use order) and one [`ZoneEndpoint`] per use.
pub fn upstream_sample(
    uses: &[(&str, &'static str, Arc<nodedns_upstream::Endpoint>)],
) -> (Vec<EndpointSample>, Vec<ZoneEndpoint>) {
    let mut distinct: Vec<&Arc<nodedns_upstream::Endpoint>> = Vec::new();
    let mut pairs = Vec::with_capacity(uses.len());
    for (zone, role, e) in uses {
        if !distinct.iter().any(|d| d.addr == e.addr) {
            distinct.push(e);
        }
        let endpoint = e.addr.to_string();
        if !pairs.iter().any(|p: &ZoneEndpoint| p.zone == *zone && p.endpoint == endpoint) {
            pairs.push(ZoneEndpoint { zone: zone.to_string(), endpoint, role });
        }
    }
    (distinct.into_iter().map(|e| EndpointSample::from_endpoint(e)).collect(), pairs)
}

/// A sample of the cache.
pub struct CacheSample {
    pub entries: u64,
    pub bytes: u64,
    pub max_bytes: u64,
    pub evictions: u64,
    pub split_pairs: u64,
}

/// Reads live state through a closure at scrape time.
pub struct ScrapedCollector {
    descs: Vec<Desc>,
    sample: Box<dyn Fn() -> ScrapeSample + Send + Sync>,
    coredns_compatible: bool,
}

impl ScrapedCollector {
    pub fn new(coredns_compatible: bool, sample: Box<dyn Fn() -> ScrapeSample + Send + Sync>) -> Self {
        let d = |name: &str, help: &str, labels: &[&str]| {
            must(Desc::new(
                name.into(),
                help.into(),
                labels.iter().map(|s| s.to_string()).collect(),
                Default::default(),
            ))
        };
        let mut descs = vec![
            d(CACHE_ENTRIES, "Entries in the cache (fresh and stale).", &[]),
            d(CACHE_BYTES, "Bytes held by the cache, as counted against cache.max_bytes.", &[]),
            d(CACHE_MAX_BYTES, "The configured cache byte bound.", &[]),
            d(CACHE_EVICTIONS, "Entries evicted to stay under the byte bound.", &[]),
            d(CACHE_SPLIT_PAIRS, "A/AAAA pairs stored split (one NXDOMAIN, one NOERROR).", &[]),
            d(
                UPSTREAM_QUERIES,
                "Queries sent to each upstream endpoint, client queries and health probes of ejected endpoints.",
                &["endpoint"],
            ),
            d(
                UPSTREAM_ERRORS,
                "Upstream failures by endpoint and kind, health probes included.",
                &["endpoint", "kind"],
            ),
            d(UPSTREAM_DURATION, "Upstream round-trip time of answered queries.", &["endpoint"]),
            d(UPSTREAM_HEALTHY, "1 if the endpoint is in rotation, 0 if ejected.", &["endpoint"]),
            d(UPSTREAM_OPEN_CONNECTIONS, "Open TCP connections to the endpoint.", &["endpoint"]),
            d(UPSTREAM_EJECTIONS, "Times the endpoint was ejected.", &["endpoint"]),
            d(
                UPSTREAM_ZONE_ENDPOINTS,
                "1 for each zone and upstream endpoint it forwards to (role primary or fallback).",
                &["zone", "endpoint", "role"],
            ),
        ];
        if coredns_compatible {
            descs.push(d(
                COREDNS_CACHE_ENTRIES,
                "The number of elements in the cache (all listeners, zones and types: nodedns has one cache).",
                &["server", "type", "view", "zones"],
            ));
        }
        Self { descs, sample, coredns_compatible }
    }
}

fn label(name: &str, value: &str) -> proto::LabelPair {
    let mut l = proto::LabelPair::default();
    l.set_name(name.into());
    l.set_value(value.into());
    l
}

fn family(name: &str, help: &str, kind: MetricType, metrics: Vec<proto::Metric>) -> MetricFamily {
    let mut f = MetricFamily::default();
    f.set_name(name.into());
    f.set_help(help.into());
    f.set_field_type(kind);
    f.set_metric(metrics);
    f
}

fn gauge_metric(labels: Vec<proto::LabelPair>, v: f64) -> proto::Metric {
    let mut g = proto::Gauge::default();
    g.set_value(v);
    let mut m = proto::Metric::from_gauge(g);
    m.set_label(labels);
    m
}

fn counter_metric(labels: Vec<proto::LabelPair>, v: f64) -> proto::Metric {
    let mut c = proto::Counter::default();
    c.set_value(v);
    let mut m = proto::Metric::default();
    m.set_counter(c);
    m.set_label(labels);
    m
}

impl Collector for ScrapedCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let ScrapeSample { cache, endpoints, zone_endpoints } = (self.sample)();
        let help = |i: usize| self.descs[i].help.clone();
        let mut out = vec![
            family(CACHE_ENTRIES, &help(0), MetricType::GAUGE, vec![gauge_metric(vec![], cache.entries as f64)]),
            family(CACHE_BYTES, &help(1), MetricType::GAUGE, vec![gauge_metric(vec![], cache.bytes as f64)]),
            family(CACHE_MAX_BYTES, &help(2), MetricType::GAUGE, vec![gauge_metric(vec![], cache.max_bytes as f64)]),
            family(
                CACHE_EVICTIONS,
                &help(3),
                MetricType::COUNTER,
                vec![counter_metric(vec![], cache.evictions as f64)],
            ),
            family(
                CACHE_SPLIT_PAIRS,
                &help(4),
                MetricType::COUNTER,
                vec![counter_metric(vec![], cache.split_pairs as f64)],
            ),
        ];
        let ep_labels = |e: &EndpointSample| vec![label("endpoint", &e.endpoint)];
        let mut queries = Vec::new();
        let mut errors = Vec::new();
        let mut durations = Vec::new();
        let mut healthy = Vec::new();
        let mut conns = Vec::new();
        let mut ejections = Vec::new();
        for e in &endpoints {
            queries.push(counter_metric(ep_labels(e), e.queries as f64));
            for (kind, n) in &e.errors {
                errors.push(counter_metric(vec![label("endpoint", &e.endpoint), label("kind", kind)], *n as f64));
            }
            let (buckets, count, sum) = e.latency;
            let mut h = proto::Histogram::default();
            h.set_sample_count(count);
            h.set_sample_sum(sum);
            h.set_bucket(
                buckets
                    .iter()
                    .zip(LATENCY_BUCKETS)
                    .map(|(c, ub)| {
                        let mut b = proto::Bucket::default();
                        b.set_cumulative_count(*c);
                        b.set_upper_bound(ub);
                        b
                    })
                    .collect(),
            );
            let mut m = proto::Metric::default();
            m.set_histogram(h);
            m.set_label(ep_labels(e));
            durations.push(m);
            healthy.push(gauge_metric(ep_labels(e), if e.healthy { 1.0 } else { 0.0 }));
            conns.push(gauge_metric(ep_labels(e), e.open_connections as f64));
            ejections.push(counter_metric(ep_labels(e), e.ejections as f64));
        }
        if !endpoints.is_empty() {
            out.push(family(UPSTREAM_QUERIES, &help(5), MetricType::COUNTER, queries));
            out.push(family(UPSTREAM_ERRORS, &help(6), MetricType::COUNTER, errors));
            out.push(family(UPSTREAM_DURATION, &help(7), MetricType::HISTOGRAM, durations));
            out.push(family(UPSTREAM_HEALTHY, &help(8), MetricType::GAUGE, healthy));
            out.push(family(UPSTREAM_OPEN_CONNECTIONS, &help(9), MetricType::GAUGE, conns));
            out.push(family(UPSTREAM_EJECTIONS, &help(10), MetricType::COUNTER, ejections));
        }
        if !zone_endpoints.is_empty() {
            let pairs = zone_endpoints
                .iter()
                .map(|z| {
                    gauge_metric(
                        vec![label("endpoint", &z.endpoint), label("role", z.role), label("zone", &z.zone)],
                        1.0,
                    )
                })
                .collect();
            out.push(family(UPSTREAM_ZONE_ENDPOINTS, &help(11), MetricType::GAUGE, pairs));
        }
        if self.coredns_compatible {
            out.push(family(
                COREDNS_CACHE_ENTRIES,
                &help(12),
                MetricType::GAUGE,
                // One cache serves every listener and zone, and it does not count entries by
                // type: the series says so (no `server`, type "all", zones ".") rather than
                // passing the total off as one listener's successes.
                vec![gauge_metric(
                    vec![label("server", ""), label("type", "all"), label("view", ""), label("zones", ".")],
                    cache.entries as f64,
                )],
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use nodedns_wire::{Parsed, parse_query, render_rejection};

    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    fn with_upstreams(m: &Metrics, uses: Vec<(&'static str, &'static str, Arc<nodedns_upstream::Endpoint>)>) {
        m.register_scraped(Box::new(ScrapedCollector::new(
            m.coredns_compatible(),
            Box::new(move || {
                let (endpoints, zone_endpoints) = upstream_sample(&uses);
                ScrapeSample {
                    cache: CacheSample { entries: 1, bytes: 2, max_bytes: 3, evictions: 4, split_pairs: 5 },
                    endpoints,
                    zone_endpoints,
                }
            }),
        )));
    }

    #[test]
    fn every_name_is_exported_in_compatible_mode() {
        let m = Metrics::new(true);
        let at = At::listener(m.listener("127.0.0.1:53".parse().unwrap()));
        m.request(at, Proto::Udp, 1);
        m.response(at, "NOERROR");
        m.answered(at, CacheResult::Hit, 1, &[0; 12], 0.0001);
        m.known_zone("cluster.local.");
        let e = Arc::new(nodedns_upstream::Endpoint::new("10.0.0.1:53".parse().unwrap()));
        with_upstreams(&m, vec![("cluster.local.", "primary", e)]);
        let text = m.render();
        for name in ALL_NAMES {
            assert!(text.contains(&format!("# TYPE {name} ")), "{name} missing");
        }
        assert_eq!(sample(&text, "nodedns_requests_total{proto=\"udp\",qtype=\"A\"}"), Some(1.0));
        assert_eq!(sample(&text, "nodedns_upstream_healthy{endpoint=\"10.0.0.1:53\"}"), Some(1.0));
    }

    /// A series born at 1 is invisible to `increase()`: the first rejected reload, shed query or
    /// setup error would never fire an alert. Every known label value is there at 0 from the start.
    #[test]
    fn known_label_values_start_at_zero() {
        let m = Metrics::new(true);
        let e = Arc::new(nodedns_upstream::Endpoint::new("10.0.0.1:53".parse().unwrap()));
        with_upstreams(&m, vec![("cluster.local.", "primary", e)]);
        m.known_zone("cluster.local.");
        let text = m.render();
        let mut expected: Vec<String> = Vec::new();
        expected.extend(CONFIG_RELOAD_RESULTS.iter().map(|r| format!("{CONFIG_RELOADS}{{result=\"{r}\"}}")));
        expected.extend(SHED_REASONS.iter().map(|r| format!("{SHED}{{reason=\"{r}\"}}")));
        expected.extend(MALFORMED_REASONS.iter().map(|r| format!("{MALFORMED}{{reason=\"{r}\"}}")));
        expected.extend(NODE_SETUP_ERROR_KINDS.iter().map(|k| format!("{NODE_SETUP_ERRORS}{{kind=\"{k}\"}}")));
        expected.extend(NODE_SETUP_ERROR_KINDS.iter().map(|k| format!("{COREDNS_SETUP_ERRORS}{{errortype=\"{k}\"}}")));
        expected.extend(RCODES.iter().map(|r| format!("{RESPONSES}{{rcode=\"{r}\"}}")));
        expected.extend(
            ErrorKind::ALL
                .iter()
                .map(|k| format!("{UPSTREAM_ERRORS}{{endpoint=\"10.0.0.1:53\",kind=\"{}\"}}", k.label())),
        );
        expected.push(format!("{LOCAL_SYNTHESIZED}{{zone=\"cluster.local.\"}}"));
        expected.push(format!("{UPSTREAM_EJECTIONS}{{endpoint=\"10.0.0.1:53\"}}"));
        expected.push(HEALTH_SELF_QUERIES.to_string());
        expected.push(NODE_REPAIRS.to_string());
        for series in &expected {
            assert_eq!(sample(&text, series), Some(0.0), "{series} not exported at 0:\n{text}");
        }
        // Every reason the serving paths can count is one of the pre-created ones.
        for r in [
            nodedns_wire::Rejection::NotImp,
            nodedns_wire::Rejection::BadVers,
            nodedns_wire::Rejection::Refused,
            nodedns_wire::Rejection::FormErr(nodedns_wire::Malformed::QuestionCount),
            nodedns_wire::Rejection::FormErr(nodedns_wire::Malformed::BadName),
            nodedns_wire::Rejection::FormErr(nodedns_wire::Malformed::ShortQuestion),
            nodedns_wire::Rejection::FormErr(nodedns_wire::Malformed::UnexpectedRecords),
            nodedns_wire::Rejection::FormErr(nodedns_wire::Malformed::BadRecord),
            nodedns_wire::Rejection::FormErr(nodedns_wire::Malformed::BadOpt),
            nodedns_wire::Rejection::FormErr(nodedns_wire::Malformed::TrailingBytes),
        ] {
            assert!(MALFORMED_REASONS.contains(&r.label()), "{} not pre-created", r.label());
        }
        for f in
            [nodedns_wire::framing::FrameError::ZeroLength, nodedns_wire::framing::FrameError::ShorterThanHeader(3)]
        {
            assert!(MALFORMED_REASONS.contains(&f.label()), "{} not pre-created", f.label());
        }
    }

    #[test]
    fn build_info_is_a_gauge_at_one() {
        let text = Metrics::new(false).render();
        assert!(text.contains(&format!("# TYPE {BUILD_INFO} gauge")), "{text}");
        let series = format!("{BUILD_INFO}{{version=\"{}\"}}", env!("CARGO_PKG_VERSION"));
        assert_eq!(sample(&text, &series), Some(1.0));
    }

    fn health_query(id: u16) -> Vec<u8> {
        let mut q = id.to_be_bytes().to_vec();
        q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
        q.extend_from_slice(b"\x06HEALTH\x07nodedns\x00\x00\x10\x00\x03");
        q
    }

    #[test]
    fn health_self_query_is_not_client_traffic() {
        let m = Metrics::new(true);
        let packet = health_query(7);
        let Parsed::Reject(r) = parse_query(&packet) else { panic!("the self-query must be rejected (class CH)") };
        let mut out = [0u8; 512];
        let len = render_rejection(&r, &mut out).unwrap();
        m.rejected(At::listener(0), &r, Some(&out[..len]));
        let text = m.render();
        assert_eq!(sample(&text, HEALTH_SELF_QUERIES), Some(1.0));
        assert_eq!(sample(&text, "nodedns_responses_total{rcode=\"REFUSED\"}"), Some(0.0));
        assert_eq!(sample(&text, "nodedns_malformed_queries_total{reason=\"refused_type_or_class\"}"), Some(0.0));

        // Another CH query is a client's: counted as one.
        let mut other = health_query(8);
        other[13] = b'w';
        let Parsed::Reject(r) = parse_query(&other) else { panic!() };
        let len = render_rejection(&r, &mut out).unwrap();
        m.rejected(At::listener(0), &r, Some(&out[..len]));
        let text = m.render();
        assert_eq!(sample(&text, HEALTH_SELF_QUERIES), Some(1.0));
        assert_eq!(sample(&text, "nodedns_responses_total{rcode=\"REFUSED\"}"), Some(1.0));
        assert_eq!(sample(&text, "nodedns_malformed_queries_total{reason=\"refused_type_or_class\"}"), Some(1.0));
    }

    #[test]
    fn badvers_is_counted_as_badvers() {
        let m = Metrics::new(true);
        // example.com A with an OPT record of EDNS version 1.
        let mut q = vec![0, 9, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 1];
        q.extend_from_slice(b"\x07example\x03com\x00\x00\x01\x00\x01");
        q.extend_from_slice(&[0, 0, 41, 0x04, 0xd0, 0, 1, 0, 0, 0, 0]);
        let Parsed::Reject(r) = parse_query(&q) else { panic!("EDNS version 1 must be rejected") };
        assert_eq!(r.reason, Rejection::BadVers);
        let mut out = [0u8; 512];
        let len = render_rejection(&r, &mut out).unwrap();
        assert_eq!(response_rcode_label(&out[..len]), "NOERROR", "the header alone cannot say BADVERS");
        m.rejected(At::listener(m.listener("127.0.0.1:53".parse().unwrap())), &r, Some(&out[..len]));
        let text = m.render();
        assert_eq!(sample(&text, "nodedns_responses_total{rcode=\"BADVERS\"}"), Some(1.0));
        assert_eq!(sample(&text, "nodedns_responses_total{rcode=\"NOERROR\"}"), Some(0.0));
        assert_eq!(
            sample(
                &text,
                "coredns_dns_responses_total{plugin=\"cache\",rcode=\"BADVERS\",server=\"dns://127.0.0.1:53\",view=\"\",zone=\".\"}"
            ),
            Some(1.0)
        );
    }

    /// The default config forwards cluster.local, in-addr.arpa and ip6.arpa to one address: its
    /// series must not carry a joined `zone` ("a.,b.") nor repeat per zone; the zones are a
    /// separate mapping, fallbacks included.
    #[test]
    fn an_endpoint_shared_by_zones_is_one_series_with_a_mapping_per_zone() {
        let m = Metrics::new(false);
        let shared = Arc::new(nodedns_upstream::Endpoint::new("10.96.0.11:53".parse().unwrap()));
        let pod = Arc::new(nodedns_upstream::Endpoint::new("10.244.1.5:53".parse().unwrap()));
        shared.stats.queries.fetch_add(3, std::sync::atomic::Ordering::Relaxed);
        with_upstreams(
            &m,
            vec![
                ("cluster.local.", "primary", pod.clone()),
                ("cluster.local.", "fallback", shared.clone()),
                ("in-addr.arpa.", "primary", shared.clone()),
                ("ip6.arpa.", "primary", shared.clone()),
            ],
        );
        let text = m.render();
        let queries: Vec<&str> = text.lines().filter(|l| l.starts_with(UPSTREAM_QUERIES)).collect();
        assert_eq!(
            queries,
            [
                "nodedns_upstream_queries_total{endpoint=\"10.244.1.5:53\"} 0",
                "nodedns_upstream_queries_total{endpoint=\"10.96.0.11:53\"} 3"
            ]
        );
        assert!(!text.contains(".,"), "no joined zone labels:\n{text}");
        for pair in [
            "{endpoint=\"10.244.1.5:53\",role=\"primary\",zone=\"cluster.local.\"}",
            "{endpoint=\"10.96.0.11:53\",role=\"fallback\",zone=\"cluster.local.\"}",
            "{endpoint=\"10.96.0.11:53\",role=\"primary\",zone=\"in-addr.arpa.\"}",
            "{endpoint=\"10.96.0.11:53\",role=\"primary\",zone=\"ip6.arpa.\"}",
        ] {
            assert_eq!(sample(&text, &format!("{UPSTREAM_ZONE_ENDPOINTS}{pair}")), Some(1.0), "{pair}:\n{text}");
        }
        assert_eq!(text.lines().filter(|l| l.starts_with(UPSTREAM_ZONE_ENDPOINTS)).count(), 4);
    }

    fn packet(name: &str, qtype: u16) -> Vec<u8> {
        let mut q = vec![0, 1, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        q.extend_from_slice(&nodedns_testkit::wire_name(name));
        q.extend_from_slice(&qtype.to_be_bytes());
        q.extend_from_slice(&[0, 1]);
        q
    }

    /// `server` is the listener, `zone` the zone covering the name, `family` the client's, cache
    /// `type` success or denial: never constants.
    #[test]
    fn coredns_compatible_series_say_where_and_what() {
        let config = crate::config::Config::parse(
            "listen: [\"169.254.20.10:53\", \"[fd00::10]:53\"]\nzones:\n  - name: cluster.local\n    upstreams: [\"10.96.0.11:53\"]\n  - name: \".\"\n    upstreams: [\"10.96.0.11:53\"]\n",
            "test.yaml",
        )
        .unwrap();
        let m = Metrics::new(true);
        let clock = nodedns_resolver::Clock::starting_now();
        let _resolver = nodedns_resolver::Resolver::new(&config, m.clone(), None, clock);
        let v4 = m.listener("169.254.20.10:53".parse().unwrap());
        let v6 = m.listener("[fd00::10]:53".parse().unwrap());
        assert_eq!(m.listener("169.254.20.10:53".parse().unwrap()), v4, "one index per address");

        let cluster = packet("Web.Default.SVC.cluster.local", 1);
        let Parsed::Query(q) = parse_query(&cluster) else { panic!() };
        let at = m.at(v4, &q);
        m.request(at, Proto::Udp, 1);
        let mut answer = cluster.clone();
        answer[2] |= 0x80;
        answer[7] = 1; // ANCOUNT 1: a success
        m.answered(at, CacheResult::Hit, 1, &answer, 0.001);
        m.response(at, "NOERROR");

        let external = packet("example.com", 28);
        let Parsed::Query(q) = parse_query(&external) else { panic!() };
        let at = m.at(v6, &q);
        m.request(at, Proto::Tcp, 28);
        let mut nx = external.clone();
        nx[2] |= 0x80;
        nx[3] = 3; // NXDOMAIN: a denial
        m.answered(at, CacheResult::Hit, 28, &nx, 0.001);
        m.answered(at, CacheResult::Miss, 28, &nx, 0.01);

        let text = m.render();
        for (series, value) in [
            (
                r#"coredns_dns_requests_total{family="1",proto="udp",server="dns://169.254.20.10:53",type="A",view="",zone="cluster.local."}"#,
                1.0,
            ),
            (
                r#"coredns_dns_requests_total{family="2",proto="tcp",server="dns://[fd00::10]:53",type="AAAA",view="",zone="."}"#,
                1.0,
            ),
            (
                r#"coredns_cache_hits_total{server="dns://169.254.20.10:53",type="success",view="",zones="cluster.local."}"#,
                1.0,
            ),
            (
                r#"coredns_cache_hits_total{server="dns://169.254.20.10:53",type="denial",view="",zones="cluster.local."}"#,
                0.0,
            ),
            (r#"coredns_cache_hits_total{server="dns://[fd00::10]:53",type="denial",view="",zones="."}"#, 1.0),
            (r#"coredns_cache_misses_total{server="dns://[fd00::10]:53",view="",zones="."}"#, 1.0),
            (
                r#"coredns_dns_responses_total{plugin="cache",rcode="NOERROR",server="dns://169.254.20.10:53",view="",zone="cluster.local."}"#,
                1.0,
            ),
            (
                r#"coredns_dns_request_duration_seconds_count{server="dns://[fd00::10]:53",type="AAAA",view="",zone="."}"#,
                2.0,
            ),
        ] {
            assert_eq!(sample(&text, series), Some(value), "{series}:\n{text}");
        }
        assert!(!text.contains("dns://:53"), "no made-up listener:\n{text}");
    }

    #[test]
    fn compat_names_are_absent_by_default() {
        let m = Metrics::new(false);
        assert!(!m.render().contains("coredns_"));
    }
}
