//! Prometheus metrics. Names are constants; labels come from small fixed sets (proto, qtype
//! class, rcode, cache result, zone, upstream endpoint) — never a qname or client address.
//! Handles for the hot path are resolved once at start, so a counted query costs a few atomic
//! adds and no lookups.

use std::sync::Arc;

use prometheus::core::{Collector, Desc};
use prometheus::proto::{self, MetricFamily, MetricType};
use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

use nodedns_upstream::{ErrorKind, Health, LATENCY_BUCKETS};

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
pub const BUILD_INFO: &str = "nodedns_build_info";

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
    BUILD_INFO,
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

/// How a query was answered, for the duration histogram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheResult {
    Hit = 0,
    Miss = 1,
    Stale = 2,
}

const CACHE_RESULTS: [&str; 3] = ["hit", "miss", "stale"];

impl CacheResult {
    pub fn label(self) -> &'static str {
        CACHE_RESULTS[self as usize]
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
    coredns: Option<CorednsMetrics>,
}

/// The NodeLocal DNSCache metric names with CoreDNS's labels, for existing dashboards.
struct CorednsMetrics {
    requests: Vec<IntCounter>,
    responses: Vec<IntCounter>,
    duration: Vec<Histogram>,
    hits: IntCounter,
    misses: IntCounter,
    setup_errors: IntCounterVec,
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
        let duration = CACHE_RESULTS.iter().map(|c| duration_vec.with_label_values(&[c])).collect();
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
        // Every kind exists at 0 from the start, so an alert on increase() sees the first failure.
        for kind in nodedns_node::NodeError::KINDS {
            node_setup_errors.with_label_values(&[kind]);
        }
        let config_reloads = vec(CONFIG_RELOADS, "Config reloads, by result.", &["result"]);
        let local_synthesized = vec(
            LOCAL_SYNTHESIZED,
            "Queries answered NXDOMAIN locally because the name cannot exist under the Kubernetes DNS schema.",
            &["zone"],
        );

        let build =
            must(IntCounterVec::new(Opts::new(BUILD_INFO, "Build information; the value is always 1."), &["version"]));
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).inc();
        reg(Box::new(build));

        let coredns = coredns_compatible.then(|| {
            let req = must(IntCounterVec::new(
                Opts::new(COREDNS_REQUESTS, "Counter of DNS requests made per zone, protocol and family."),
                &["server", "zone", "view", "proto", "family", "type"],
            ));
            let mut requests = Vec::new();
            for proto in ["udp", "tcp"] {
                for i in 0..=QTYPE_OTHER {
                    requests.push(req.with_label_values(&["dns://:53", ".", "", proto, "1", qtype_label(i)]));
                }
            }
            reg(Box::new(req));
            let resp = must(IntCounterVec::new(
                Opts::new(COREDNS_RESPONSES, "Counter of response status codes."),
                &["server", "zone", "view", "rcode", "plugin"],
            ));
            let responses =
                RCODES.iter().map(|r| resp.with_label_values(&["dns://:53", ".", "", r, "cache"])).collect();
            reg(Box::new(resp));
            let dur = must(prometheus::HistogramVec::new(
                HistogramOpts::new(COREDNS_REQUEST_DURATION, "Histogram of the time (in seconds) each request took.")
                    .buckets(REQUEST_BUCKETS.to_vec()),
                &["server", "zone", "view", "type"],
            ));
            let duration =
                (0..=QTYPE_OTHER).map(|i| dur.with_label_values(&["dns://:53", ".", "", qtype_label(i)])).collect();
            reg(Box::new(dur));
            let hits_vec = must(IntCounterVec::new(
                Opts::new(COREDNS_CACHE_HITS, "The count of cache hits."),
                &["server", "type", "view", "zones"],
            ));
            let hits = hits_vec.with_label_values(&["dns://:53", "success", "", "."]);
            reg(Box::new(hits_vec));
            let misses_vec = must(IntCounterVec::new(
                Opts::new(COREDNS_CACHE_MISSES, "The count of cache misses."),
                &["server", "view", "zones"],
            ));
            let misses = misses_vec.with_label_values(&["dns://:53", "", "."]);
            reg(Box::new(misses_vec));
            let setup_errors = must(IntCounterVec::new(
                Opts::new(COREDNS_SETUP_ERRORS, "The number of errors during periodic network setup for node-cache."),
                &["errortype"],
            ));
            reg(Box::new(setup_errors.clone()));
            for kind in nodedns_node::NodeError::KINDS {
                setup_errors.with_label_values(&[kind]);
            }
            CorednsMetrics { requests, responses, duration, hits, misses, setup_errors }
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
            coredns,
        })
    }

    pub fn coredns_compatible(&self) -> bool {
        self.coredns.is_some()
    }

    #[inline]
    pub fn request(&self, proto: Proto, qtype: u16) {
        let i = proto as usize * (QTYPE_OTHER + 1) + qtype_index(qtype);
        self.requests[i].inc();
        if let Some(c) = &self.coredns {
            c.requests[i].inc();
        }
    }

    #[inline]
    pub fn response(&self, rcode_label: &str) {
        let i = rcode_index(rcode_label);
        self.responses[i].inc();
        if let Some(c) = &self.coredns {
            c.responses[i].inc();
        }
    }

    #[inline]
    pub fn answered(&self, result: CacheResult, qtype: u16, seconds: f64) {
        self.duration[result as usize].observe(seconds);
        match result {
            CacheResult::Hit => self.cache_hits.inc(),
            CacheResult::Miss => self.cache_misses.inc(),
            CacheResult::Stale => self.stale_answers.inc(),
        }
        if let Some(c) = &self.coredns {
            c.duration[qtype_index(qtype)].observe(seconds);
            match result {
                CacheResult::Hit => c.hits.inc(),
                CacheResult::Miss | CacheResult::Stale => c.misses.inc(),
            }
        }
    }

    pub fn shed(&self, reason: ShedReason) {
        self.shed[reason as usize].inc();
    }

    pub fn malformed(&self, reason: &str) {
        self.malformed.with_label_values(&[reason]).inc();
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

/// A point-in-time sample of one upstream endpoint.
pub struct EndpointSample {
    pub zone: String,
    pub endpoint: String,
    pub queries: u64,
    pub errors: Vec<(&'static str, u64)>,
    pub latency: ([u64; LATENCY_BUCKETS.len()], u64, f64),
    pub healthy: bool,
    pub open_connections: i64,
    pub ejections: u64,
}

impl EndpointSample {
    pub fn from_endpoint(zone: &str, e: &nodedns_upstream::Endpoint) -> Self {
        use std::sync::atomic::Ordering::Relaxed;
        Self {
            zone: zone.to_string(),
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
    sample: Box<dyn Fn() -> (CacheSample, Vec<EndpointSample>) + Send + Sync>,
    coredns_compatible: bool,
}

impl ScrapedCollector {
    pub fn new(
        coredns_compatible: bool,
        sample: Box<dyn Fn() -> (CacheSample, Vec<EndpointSample>) + Send + Sync>,
    ) -> Self {
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
            d(UPSTREAM_QUERIES, "Queries sent to each upstream endpoint.", &["zone", "endpoint"]),
            d(UPSTREAM_ERRORS, "Upstream failures by endpoint and kind.", &["zone", "endpoint", "kind"]),
            d(UPSTREAM_DURATION, "Upstream round-trip time of answered queries.", &["zone", "endpoint"]),
            d(UPSTREAM_HEALTHY, "1 if the endpoint is in rotation, 0 if ejected.", &["zone", "endpoint"]),
            d(UPSTREAM_OPEN_CONNECTIONS, "Open TCP connections to the endpoint.", &["zone", "endpoint"]),
            d(UPSTREAM_EJECTIONS, "Times the endpoint was ejected.", &["zone", "endpoint"]),
        ];
        if coredns_compatible {
            descs.push(d(
                COREDNS_CACHE_ENTRIES,
                "The number of elements in the cache.",
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
        let (cache, endpoints) = (self.sample)();
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
        let ep_labels = |e: &EndpointSample| vec![label("endpoint", &e.endpoint), label("zone", &e.zone)];
        let mut queries = Vec::new();
        let mut errors = Vec::new();
        let mut durations = Vec::new();
        let mut healthy = Vec::new();
        let mut conns = Vec::new();
        let mut ejections = Vec::new();
        for e in &endpoints {
            queries.push(counter_metric(ep_labels(e), e.queries as f64));
            for (kind, n) in &e.errors {
                errors.push(counter_metric(
                    vec![label("endpoint", &e.endpoint), label("kind", kind), label("zone", &e.zone)],
                    *n as f64,
                ));
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
        if self.coredns_compatible {
            out.push(family(
                COREDNS_CACHE_ENTRIES,
                &help(11),
                MetricType::GAUGE,
                vec![gauge_metric(
                    vec![
                        label("server", "dns://:53"),
                        label("type", "success"),
                        label("view", ""),
                        label("zones", "."),
                    ],
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

    #[test]
    fn every_name_is_exported_in_compatible_mode() {
        let m = Metrics::new(true);
        m.request(Proto::Udp, 1);
        m.response("NOERROR");
        m.answered(CacheResult::Hit, 1, 0.0001);
        m.shed(ShedReason::Inflight);
        m.malformed("bad_name");
        m.node_setup_error("iptables");
        m.config_reloads.with_label_values(&["success"]).inc();
        m.local_synthesized.with_label_values(&["cluster.local."]).inc();
        m.node_repairs.inc();
        m.register_scraped(Box::new(ScrapedCollector::new(
            true,
            Box::new(|| {
                let e = nodedns_upstream::Endpoint::new("10.0.0.1:53".parse().unwrap());
                (
                    CacheSample { entries: 1, bytes: 2, max_bytes: 3, evictions: 4, split_pairs: 5 },
                    vec![EndpointSample::from_endpoint("cluster.local.", &e)],
                )
            }),
        )));
        let text = m.render();
        for name in ALL_NAMES {
            assert!(text.contains(&format!("\n{name}")) || text.contains(&format!("# TYPE {name}")), "{name} missing");
        }
        assert!(text.contains("nodedns_requests_total{proto=\"udp\",qtype=\"A\"} 1"));
        assert!(text.contains("nodedns_upstream_healthy{endpoint=\"10.0.0.1:53\",zone=\"cluster.local.\"} 1"));
    }

    #[test]
    fn compat_names_are_absent_by_default() {
        let m = Metrics::new(false);
        assert!(!m.render().contains("coredns_"));
    }
}
