//! The config file as written: plain data, deserialized from YAML. Every field has a default so
//! a minimal file works; validation (`super::validate`) turns it into a [`super::Config`].

use serde::Deserialize;

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
pub struct RawConfig {
    /// Extra listen addresses (`IP:PORT`), UDP and TCP on each.
    pub listen: Vec<String>,
    pub cache: RawCache,
    pub zones: Vec<RawZone>,
    pub admin: RawAdmin,
    pub node: Option<RawNode>,
    pub limits: RawLimits,
    pub log: RawLog,
    pub server: RawServer,
    pub kube_dns_configmap: Option<RawKubeDnsConfigMap>,
}

#[derive(Debug, Deserialize)]
#[serde(default)]
pub struct RawCache {
    pub max_bytes: u64,
    pub min_ttl_secs: u32,
    pub max_ttl_secs: u32,
    pub denial_max_ttl_secs: u32,
    pub max_stale_secs: u32,
    pub stale_answer_timeout_ms: u64,
    pub prefetch: bool,
    /// Ceiling of the failure-entry backoff (RFC 9520: 1 s doubling, at most 5 minutes).
    pub failure_max_ttl_secs: u32,
    /// How long a pair member that has arrived waits for the other before it is answered alone.
    pub pair_wait_ms: u64,
}

impl Default for RawCache {
    fn default() -> Self {
        Self {
            max_bytes: 64 << 20,
            min_ttl_secs: 5,
            max_ttl_secs: 3600,
            denial_max_ttl_secs: 1800,
            max_stale_secs: 3600,
            stale_answer_timeout_ms: 400,
            prefetch: true,
            failure_max_ttl_secs: 30,
            pair_wait_ms: 300,
        }
    }
}

/// Upstreams: a list of addresses, or the string `resolv.conf`.
#[derive(Debug, Deserialize, Clone)]
#[serde(untagged)]
pub enum RawUpstreams {
    List(Vec<String>),
    Named(String),
}

impl Default for RawUpstreams {
    fn default() -> Self {
        RawUpstreams::List(Vec::new())
    }
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum RawTransport {
    #[default]
    Tcp,
    Udp,
}

#[derive(Debug, Deserialize, Clone, Default)]
#[serde(default)]
pub struct RawZone {
    pub name: String,
    pub upstreams: RawUpstreams,
    pub transport: RawTransport,
    pub min_ttl_secs: Option<u32>,
    pub max_ttl_secs: Option<u32>,
    pub denial_max_ttl_secs: Option<u32>,
    pub tcp_connections: Option<u32>,
    pub query_timeout_ms: Option<u64>,
    pub query_budget_ms: Option<u64>,
    /// A headless Service name resolved through this zone's upstreams to find its endpoints.
    pub discover: Option<String>,
    pub discover_interval_secs: Option<u32>,
    /// Answer names impossible under the Kubernetes DNS schema locally.
    pub kubernetes_schema: bool,
    /// Names (and everything below them) never synthesized even with `kubernetes_schema`.
    pub schema_exceptions: Vec<String>,
}

/// A single address or a list.
#[derive(Debug, Deserialize, Clone)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn items(&self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s.clone()],
            OneOrMany::Many(v) => v.clone(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(default)]
pub struct RawAdmin {
    pub listen: OneOrMany,
    pub coredns_compatible_metrics: bool,
}

impl Default for RawAdmin {
    fn default() -> Self {
        Self { listen: OneOrMany::One("127.0.0.1:9253".into()), coredns_compatible_metrics: false }
    }
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RawInterfaceKind {
    Dummy,
    Bridge,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RawFirewall {
    Auto,
    Iptables,
    Nftables,
    None,
}

#[derive(Debug, Deserialize)]
#[serde(default)]
pub struct RawNode {
    pub interface: String,
    pub interface_kind: RawInterfaceKind,
    pub addresses: Vec<String>,
    pub firewall: RawFirewall,
    pub resync_interval_secs: u32,
    pub teardown_on_exit: bool,
    pub dns_port: u16,
}

impl Default for RawNode {
    fn default() -> Self {
        Self {
            interface: "nodelocaldns".into(),
            interface_kind: RawInterfaceKind::Dummy,
            addresses: vec!["169.254.20.10".into()],
            firewall: RawFirewall::Auto,
            resync_interval_secs: 60,
            teardown_on_exit: true,
            dns_port: 53,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(default)]
pub struct RawLimits {
    pub max_inflight: u32,
    pub max_tcp_connections: u32,
    pub max_tcp_connections_per_client: u32,
    pub max_pipelined_per_connection: u32,
    pub tcp_idle_timeout_secs: u32,
    pub max_udp_payload_bytes: u16,
    pub per_client_qps: u32,
    pub max_upstream_inflight: u32,
    pub upstream_queue_wait_ms: u64,
}

impl Default for RawLimits {
    fn default() -> Self {
        Self {
            max_inflight: 10_000,
            max_tcp_connections: 10_000,
            max_tcp_connections_per_client: 256,
            max_pipelined_per_connection: 128,
            tcp_idle_timeout_secs: 10,
            max_udp_payload_bytes: 1232,
            per_client_qps: 0,
            max_upstream_inflight: 1000,
            upstream_queue_wait_ms: 100,
        }
    }
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RawLogFormat {
    Text,
    Json,
}

#[derive(Debug, Deserialize)]
#[serde(default)]
pub struct RawLog {
    pub format: RawLogFormat,
    pub level: String,
    pub queries_sample_rate: f64,
    pub dnstap: Option<RawDnstap>,
}

impl Default for RawLog {
    fn default() -> Self {
        Self { format: RawLogFormat::Text, level: "info".into(), queries_sample_rate: 0.0, dnstap: None }
    }
}

/// `log.dnstap`: where dnstap messages go (exactly one of `socket` and `file`).
#[derive(Debug, Deserialize, Default)]
#[serde(default)]
pub struct RawDnstap {
    /// A Frame Streams unix socket (bidirectional: a collector such as `fstrm_capture` listens).
    pub socket: Option<String>,
    /// A file, rewritten as one Frame Streams stream at each start.
    pub file: Option<String>,
    /// The identity every message carries; default: `NODE_NAME` from the environment, else the
    /// host name.
    pub identity: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(default)]
pub struct RawServer {
    /// UDP worker threads; 0 = one per CPU the process may run on.
    pub workers: u32,
    pub drain_timeout_secs: u32,
    pub handover_socket: Option<String>,
}

impl Default for RawServer {
    fn default() -> Self {
        Self { workers: 0, drain_timeout_secs: 10, handover_socket: None }
    }
}

#[derive(Debug, Deserialize)]
#[serde(default)]
pub struct RawKubeDnsConfigMap {
    /// Directory where the kube-dns ConfigMap is mounted (files `stubDomains`, `upstreamNameservers`).
    pub path: String,
    pub reload_interval_secs: u32,
    /// Transport to the ConfigMap's nameservers (stub domains, upstreamNameservers); default udp.
    pub transport: Option<RawTransport>,
}

impl Default for RawKubeDnsConfigMap {
    fn default() -> Self {
        // node-cache re-reads every 10 s; the kubelet takes longer than that to update a volume.
        Self { path: String::new(), reload_interval_secs: 10, transport: None }
    }
}
