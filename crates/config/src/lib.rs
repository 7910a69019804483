//! Configuration: YAML → [`raw::RawConfig`] (plain data) → validated [`Config`].
//!
//! Validation collects every problem at once, each with its key path and line, because a typo in
//! a ConfigMap must fail loudly and completely rather than one error per rollout.
//! [`kubedns`] translates the kube-dns ConfigMap into zones merged into a [`Config`].
#![forbid(unsafe_code)]

pub mod kubedns;
mod locate;
pub mod raw;
mod resolv;

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use hickory_proto::rr::Name;
use nodedns_cache::{Ttl, TtlPolicy};

use raw::{RawConfig, RawFirewall, RawInterfaceKind, RawLogFormat, RawTransport, RawUpstreams};
pub use resolv::nameservers_from_resolv_conf;

/// The embedded default: serve on 127.0.0.1:5353 (no root needed) and forward everything to the
/// nameservers of /etc/resolv.conf.
pub const EMBEDDED_DEFAULT: &str = r#"# nodedns embedded default configuration
listen: ["127.0.0.1:5353"]
cache:
  max_bytes: 67108864
  min_ttl_secs: 5
  max_ttl_secs: 3600
  denial_max_ttl_secs: 1800
zones:
  - name: "."
    upstreams: resolv.conf
    transport: udp
admin:
  listen: "127.0.0.1:9253"
"#;

/// One problem found in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Key path, e.g. `zones[1].upstreams[0]`; empty for syntax errors.
    pub key: String,
    /// 1-based line in the file, when it can be located.
    pub line: Option<usize>,
    pub message: String,
}

/// Every problem of one config file.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigError {
    pub file: String,
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}: {} problem(s):", self.file, self.problems.len())?;
        for p in &self.problems {
            let line = p.line.map(|l| format!(":{l}")).unwrap_or_default();
            if p.key.is_empty() {
                writeln!(f, "  {}{}: {}", self.file, line, p.message)?;
            } else {
                writeln!(f, "  {}{}: {}: {}", self.file, line, p.key, p.message)?;
            }
        }
        Ok(())
    }
}

/// Where a zone's upstream addresses come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UpstreamSource {
    Fixed(Vec<SocketAddr>),
    /// The nameservers of /etc/resolv.conf, read when the config is loaded.
    ResolvConf(Vec<SocketAddr>),
}

impl UpstreamSource {
    pub fn addrs(&self) -> &[SocketAddr] {
        match self {
            UpstreamSource::Fixed(a) | UpstreamSource::ResolvConf(a) => a,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ZoneConfig {
    /// Lower-cased, fully qualified.
    pub name: Name,
    pub upstreams: UpstreamSource,
    pub transport: nodedns_upstream::Transport,
    pub ttl: TtlPolicy,
    pub tcp_connections: usize,
    /// One attempt on one endpoint.
    pub query_timeout: Duration,
    /// Every attempt for one client query together, the schema rule's SOA fetch included.
    pub query_budget: Duration,
    pub discover: Option<Name>,
    pub discover_interval: Duration,
    pub kubernetes_schema: bool,
    pub schema_exceptions: Vec<Name>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheConfig {
    pub max_bytes: usize,
    pub ttl: TtlPolicy,
    pub max_stale: Ttl,
    pub stale_answer_timeout: Duration,
    pub prefetch: bool,
    pub failure: nodedns_cache::FailurePolicy,
    pub pair_wait: Duration,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdminConfig {
    pub listen: Vec<SocketAddr>,
    pub coredns_compatible_metrics: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeConfig {
    pub interface: String,
    pub interface_kind: nodedns_node::InterfaceKind,
    pub addresses: Vec<IpAddr>,
    pub firewall: nodedns_node::FirewallMode,
    pub resync_interval: Duration,
    pub teardown_on_exit: bool,
    pub dns_port: u16,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    pub max_inflight: usize,
    pub max_tcp_connections: usize,
    pub max_tcp_connections_per_client: usize,
    pub max_pipelined_per_connection: usize,
    pub tcp_idle_timeout: Duration,
    pub max_udp_payload: u16,
    pub per_client_qps: u32,
    /// Upstream queries in flight to one endpoint.
    pub max_upstream_inflight: usize,
    pub upstream_queue_wait: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Debug, PartialEq)]
pub struct LogConfig {
    pub format: LogFormat,
    pub level: String,
    pub queries_sample_rate: f64,
    pub dnstap: Option<DnstapConfig>,
}

/// Where dnstap output goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DnstapTarget {
    /// A Frame Streams unix socket, with the bidirectional handshake.
    Socket(PathBuf),
    /// A Frame Streams file (unidirectional), replaced at each start.
    File(PathBuf),
}

/// `log.dnstap`, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnstapConfig {
    pub target: DnstapTarget,
    /// `None`: `NODE_NAME` from the environment, else the host name (resolved at start).
    pub identity: Option<String>,
}

/// sun_path holds 108 bytes with its terminating NUL (unix(7)).
const MAX_SOCKET_PATH: usize = 107;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerConfig {
    pub workers: usize,
    pub drain_timeout: Duration,
    pub handover_socket: Option<PathBuf>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KubeDnsConfigMap {
    pub path: PathBuf,
    pub reload_interval: Duration,
    /// How the ConfigMap's nameservers are reached: UDP by default, as kube-dns and node-cache
    /// reached them (kubernetes/dns 0ceb7f4a: UDP-only stub servers broke over TCP).
    pub transport: nodedns_upstream::Transport,
}

/// A validated configuration: every value is in range and typed.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// Every DNS listen address: `listen` plus each node address on `node.dns_port`.
    pub listen: Vec<SocketAddr>,
    pub cache: CacheConfig,
    /// Sorted most specific first, so the first suffix match is the longest.
    pub zones: Vec<ZoneConfig>,
    pub admin: AdminConfig,
    pub node: Option<NodeConfig>,
    pub limits: Limits,
    pub log: LogConfig,
    pub server: ServerConfig,
    pub kube_dns_configmap: Option<KubeDnsConfigMap>,
}

impl Config {
    /// Loads and validates a file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: file.clone(),
            problems: vec![Problem { key: String::new(), line: None, message: format!("cannot read: {e}") }],
        })?;
        Config::parse(&text, &file)
    }

    /// The embedded default configuration.
    pub fn embedded_default() -> Result<Config, ConfigError> {
        Config::parse(EMBEDDED_DEFAULT, "<embedded default>")
    }

    /// Parses and validates config text; `file` names it in errors.
    pub fn parse(text: &str, file: &str) -> Result<Config, ConfigError> {
        Config::parse_with(text, file, &resolv::read_system_resolv_conf)
    }

    pub(crate) fn parse_with(
        text: &str,
        file: &str,
        resolv_conf: &dyn Fn() -> Result<Vec<SocketAddr>, String>,
    ) -> Result<Config, ConfigError> {
        let mut unknown = Vec::new();
        let de = serde_yaml::Deserializer::from_str(text);
        let parsed: Result<RawConfig, _> = serde_ignored::deserialize(de, |path| unknown.push(key_path(&path)));
        let raw = match parsed {
            Ok(raw) => raw,
            Err(e) => {
                // Empty file: all defaults (then validation says what is missing).
                if text.trim().is_empty()
                    || text.lines().all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'))
                {
                    RawConfig::default()
                } else {
                    return Err(ConfigError {
                        file: file.into(),
                        problems: vec![Problem {
                            key: String::new(),
                            line: e.location().map(|l| l.line()),
                            message: e.to_string(),
                        }],
                    });
                }
            }
        };
        let mut v = Validator { text, problems: Vec::new() };
        for key in unknown {
            v.problem(&key, "unknown key (check spelling and indentation)");
        }
        let config = v.validate(raw, resolv_conf);
        if v.problems.is_empty() { Ok(config) } else { Err(ConfigError { file: file.into(), problems: v.problems }) }
    }

    /// The zone a (lower-cased) name belongs to: the longest matching suffix.
    pub fn zone_index_for(&self, name: &Name) -> Option<usize> {
        self.zones.iter().position(|z| z.name.zone_of(name))
    }
}

fn key_path(path: &serde_ignored::Path<'_>) -> String {
    use serde_ignored::Path as P;
    match path {
        P::Root => String::new(),
        P::Seq { parent, index } => format!("{}[{index}]", key_path(parent)),
        P::Map { parent, key } => {
            let p = key_path(parent);
            if p.is_empty() { key.clone() } else { format!("{p}.{key}") }
        }
        P::Some { parent } | P::NewtypeStruct { parent } | P::NewtypeVariant { parent } => key_path(parent),
    }
}

struct Validator<'t> {
    text: &'t str,
    problems: Vec<Problem>,
}

/// Parses `IP:PORT`, or a bare IP with `default_port`.
pub fn parse_socket_addr(s: &str, default_port: u16) -> Result<SocketAddr, String> {
    let s = s.trim();
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    if let Ok(ip) = s.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, default_port));
    }
    Err(format!("`{s}` is not an address (IP or IP:PORT)"))
}

/// Parses a DNS name into lower-cased FQDN form.
pub fn parse_zone_name(s: &str) -> Result<Name, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("empty name".into());
    }
    let mut n = Name::from_ascii(s).map_err(|e| format!("`{s}` is not a DNS name: {e}"))?;
    n.set_fqdn(true);
    Ok(n.to_lowercase())
}

impl Validator<'_> {
    fn problem(&mut self, key: &str, message: impl Into<String>) {
        let line = locate::line_of(self.text, key);
        self.problems.push(Problem { key: key.into(), line, message: message.into() });
    }

    fn range<T: PartialOrd + fmt::Display + Copy>(&mut self, key: &str, v: T, lo: T, hi: T) -> T {
        if v < lo || v > hi {
            self.problem(key, format!("{v} is out of range [{lo}, {hi}]"));
        }
        v
    }

    fn dnstap_path(&mut self, key: &str, path: &str) -> Option<PathBuf> {
        if path.is_empty() {
            self.problem(key, "empty path");
            return None;
        }
        if !path.starts_with('/') {
            self.problem(key, format!("`{path}` is not an absolute path"));
            return None;
        }
        Some(PathBuf::from(path))
    }

    fn dnstap(&mut self, d: &raw::RawDnstap) -> Option<DnstapConfig> {
        let target = match (&d.socket, &d.file) {
            (Some(_), Some(_)) => {
                self.problem("log.dnstap", "set one of socket and file, not both");
                None
            }
            (None, None) => {
                self.problem("log.dnstap", "set socket (a Frame Streams unix socket path) or file");
                None
            }
            (Some(s), None) => {
                let p = self.dnstap_path("log.dnstap.socket", s);
                if s.len() > MAX_SOCKET_PATH {
                    self.problem(
                        "log.dnstap.socket",
                        format!("{} bytes is longer than a unix socket path can be ({MAX_SOCKET_PATH})", s.len()),
                    );
                    return None;
                }
                p.map(DnstapTarget::Socket)
            }
            (None, Some(f)) => self.dnstap_path("log.dnstap.file", f).map(DnstapTarget::File),
        };
        if let Some(id) = &d.identity
            && id.trim().is_empty()
        {
            self.problem("log.dnstap.identity", "empty (leave it out for the node or host name)");
        }
        Some(DnstapConfig { target: target?, identity: d.identity.clone() })
    }

    fn validate(&mut self, raw: RawConfig, resolv_conf: &dyn Fn() -> Result<Vec<SocketAddr>, String>) -> Config {
        // Cache.
        let c = &raw.cache;
        let max_bytes = self.range("cache.max_bytes", c.max_bytes, 1 << 20, 64 << 30) as usize;
        let min_ttl = self.range("cache.min_ttl_secs", c.min_ttl_secs, 0, 86_400);
        let max_ttl = self.range("cache.max_ttl_secs", c.max_ttl_secs, 1, 7 * 86_400);
        let denial_max = self.range("cache.denial_max_ttl_secs", c.denial_max_ttl_secs, 1, 7 * 86_400);
        if max_ttl < min_ttl {
            self.problem("cache.max_ttl_secs", format!("{max_ttl} is below cache.min_ttl_secs ({min_ttl})"));
        }
        if denial_max < min_ttl {
            self.problem("cache.denial_max_ttl_secs", format!("{denial_max} is below cache.min_ttl_secs ({min_ttl})"));
        }
        let max_stale = self.range("cache.max_stale_secs", c.max_stale_secs, 0, 7 * 86_400);
        let stale_timeout = self.range("cache.stale_answer_timeout_ms", c.stale_answer_timeout_ms, 1, 30_000);
        let cache_ttl = TtlPolicy {
            min_ttl: Ttl::from_secs(min_ttl),
            max_ttl: Ttl::from_secs(max_ttl),
            denial_max_ttl: Ttl::from_secs(denial_max),
        };
        // RFC 9520 §3.2: failures are cached at least 1 s and at most 5 minutes.
        let failure_max = self.range("cache.failure_max_ttl_secs", c.failure_max_ttl_secs, 1, 300);
        let pair_wait = self.range("cache.pair_wait_ms", c.pair_wait_ms, 0, 5_000);
        let cache = CacheConfig {
            max_bytes,
            ttl: cache_ttl,
            max_stale: Ttl::from_secs(max_stale),
            stale_answer_timeout: Duration::from_millis(stale_timeout),
            prefetch: c.prefetch,
            failure: nodedns_cache::FailurePolicy { initial: Ttl::from_secs(1), max: Ttl::from_secs(failure_max) },
            pair_wait: Duration::from_millis(pair_wait),
        };

        // Listeners.
        let mut listen = Vec::new();
        for (i, l) in raw.listen.iter().enumerate() {
            match parse_socket_addr(l, 53) {
                Ok(a) => listen.push(a),
                Err(e) => self.problem(&format!("listen[{i}]"), e),
            }
        }

        // Node.
        let node = raw.node.as_ref().map(|n| {
            if let Err(e) = nodedns_node::InterfaceName::parse(&n.interface) {
                self.problem("node.interface", e);
            }
            let mut addresses = Vec::new();
            for (i, a) in n.addresses.iter().enumerate() {
                match a.trim().parse::<IpAddr>() {
                    Ok(ip) if !addresses.contains(&ip) => addresses.push(ip),
                    Ok(_) => self.problem(&format!("node.addresses[{i}]"), format!("`{a}` is listed twice")),
                    Err(_) => self.problem(&format!("node.addresses[{i}]"), format!("`{a}` is not an IP address")),
                }
            }
            if n.addresses.is_empty() {
                self.problem("node.addresses", "at least one address is required");
            }
            let resync = self.range("node.resync_interval_secs", n.resync_interval_secs, 1, 3600);
            if n.dns_port == 0 {
                self.problem("node.dns_port", "must not be 0");
            }
            for ip in &addresses {
                let a = SocketAddr::new(*ip, n.dns_port);
                if !listen.contains(&a) {
                    listen.push(a);
                }
            }
            NodeConfig {
                interface: n.interface.clone(),
                interface_kind: match n.interface_kind {
                    RawInterfaceKind::Dummy => nodedns_node::InterfaceKind::Dummy,
                    RawInterfaceKind::Bridge => nodedns_node::InterfaceKind::Bridge,
                },
                addresses,
                firewall: match n.firewall {
                    RawFirewall::Auto => nodedns_node::FirewallMode::Auto,
                    RawFirewall::Iptables => nodedns_node::FirewallMode::Iptables,
                    RawFirewall::Nftables => nodedns_node::FirewallMode::Nftables,
                    RawFirewall::None => nodedns_node::FirewallMode::None,
                },
                resync_interval: Duration::from_secs(resync as u64),
                teardown_on_exit: n.teardown_on_exit,
                dns_port: n.dns_port,
            }
        });
        if listen.is_empty() {
            self.problem("listen", "no listen address: set `listen` or `node.addresses`");
        }

        // Zones.
        let mut zones = Vec::new();
        if raw.zones.is_empty() {
            self.problem("zones", "at least one zone is required (use name \".\" for everything)");
        }
        let mut resolv_cache: Option<Result<Vec<SocketAddr>, String>> = None;
        for (i, z) in raw.zones.iter().enumerate() {
            let key = |k: &str| format!("zones[{i}].{k}");
            let name = match parse_zone_name(&z.name) {
                Ok(n) => n,
                Err(e) => {
                    self.problem(&key("name"), e);
                    continue;
                }
            };
            if zones.iter().any(|other: &ZoneConfig| other.name == name) {
                self.problem(&key("name"), format!("zone `{name}` is defined twice"));
            }
            let upstreams = match &z.upstreams {
                RawUpstreams::Named(s) if s == "resolv.conf" => {
                    let got = resolv_cache.get_or_insert_with(resolv_conf).clone();
                    match got {
                        Ok(a) if a.is_empty() => {
                            self.problem(&key("upstreams"), "/etc/resolv.conf lists no usable nameserver");
                            UpstreamSource::ResolvConf(a)
                        }
                        Ok(a) => UpstreamSource::ResolvConf(a),
                        Err(e) => {
                            self.problem(&key("upstreams"), e);
                            UpstreamSource::ResolvConf(Vec::new())
                        }
                    }
                }
                RawUpstreams::Named(s) => {
                    self.problem(&key("upstreams"), format!("`{s}`: expected a list of addresses or \"resolv.conf\""));
                    UpstreamSource::Fixed(Vec::new())
                }
                RawUpstreams::List(list) => {
                    if list.is_empty() && z.discover.is_none() {
                        self.problem(&key("upstreams"), "at least one upstream is required");
                    }
                    let mut addrs = Vec::new();
                    for (j, u) in list.iter().enumerate() {
                        match parse_socket_addr(u, 53) {
                            Ok(a) => addrs.push(a),
                            Err(e) => self.problem(&format!("zones[{i}].upstreams[{j}]"), e),
                        }
                    }
                    UpstreamSource::Fixed(addrs)
                }
            };
            // Forwarding to ourselves would loop every miss until the deadline.
            for a in upstreams.addrs() {
                if listen.contains(a) {
                    self.problem(
                        &key("upstreams"),
                        format!("{a} is one of nodedns's own listen addresses (forwarding loop)"),
                    );
                }
            }
            let zmin = self.range(&key("min_ttl_secs"), z.min_ttl_secs.unwrap_or(min_ttl), 0, 86_400);
            let zmax = self.range(&key("max_ttl_secs"), z.max_ttl_secs.unwrap_or(max_ttl), 1, 7 * 86_400);
            let zden =
                self.range(&key("denial_max_ttl_secs"), z.denial_max_ttl_secs.unwrap_or(denial_max), 1, 7 * 86_400);
            if zmax < zmin {
                self.problem(&key("max_ttl_secs"), format!("{zmax} is below the zone's min_ttl_secs ({zmin})"));
            }
            if zden < zmin {
                self.problem(&key("denial_max_ttl_secs"), format!("{zden} is below the zone's min_ttl_secs ({zmin})"));
            }
            let conns = self.range(&key("tcp_connections"), z.tcp_connections.unwrap_or(2), 1, 64);
            // 1 s attempts leave room, inside the 2.5 s budget, for the retry on another endpoint
            // that comes before a failure is cached; both stay well under glibc's 5 s timeout.
            let timeout = self.range(&key("query_timeout_ms"), z.query_timeout_ms.unwrap_or(1000), 50, 30_000);
            let budget =
                self.range(&key("query_budget_ms"), z.query_budget_ms.unwrap_or(2500.max(timeout)), 50, 60_000);
            if budget < timeout {
                self.problem(
                    &key("query_budget_ms"),
                    format!("{budget} is below the zone's query_timeout_ms ({timeout})"),
                );
            }
            let discover = z.discover.as_ref().and_then(|d| match parse_zone_name(d) {
                Ok(n) => Some(n),
                Err(e) => {
                    self.problem(&key("discover"), e);
                    None
                }
            });
            let interval = self.range(&key("discover_interval_secs"), z.discover_interval_secs.unwrap_or(30), 1, 3600);
            // The schema describes a cluster domain: it must never decide over the root or the
            // reverse zones (their names have nothing to do with Services and Pods).
            let reverse = ["in-addr.arpa.", "ip6.arpa."].iter().any(|r| name.to_ascii().ends_with(r));
            if z.kubernetes_schema && (name.is_root() || reverse) {
                self.problem(&key("kubernetes_schema"), format!("`{name}` is not a cluster domain"));
            }
            let mut exceptions = Vec::new();
            for (j, e) in z.schema_exceptions.iter().enumerate() {
                match parse_zone_name(e) {
                    Ok(n) if name.zone_of(&n) => exceptions.push(n),
                    Ok(n) => self.problem(
                        &format!("zones[{i}].schema_exceptions[{j}]"),
                        format!("`{n}` is outside zone `{name}`"),
                    ),
                    Err(err) => self.problem(&format!("zones[{i}].schema_exceptions[{j}]"), err),
                }
            }
            zones.push(ZoneConfig {
                name,
                upstreams,
                transport: match z.transport {
                    RawTransport::Tcp => nodedns_upstream::Transport::Tcp,
                    RawTransport::Udp => nodedns_upstream::Transport::Udp,
                },
                ttl: TtlPolicy {
                    min_ttl: Ttl::from_secs(zmin),
                    max_ttl: Ttl::from_secs(zmax),
                    denial_max_ttl: Ttl::from_secs(zden),
                },
                tcp_connections: conns as usize,
                query_timeout: Duration::from_millis(timeout),
                query_budget: Duration::from_millis(budget),
                discover,
                discover_interval: Duration::from_secs(interval as u64),
                kubernetes_schema: z.kubernetes_schema,
                schema_exceptions: exceptions,
            });
        }
        // Most labels first: the first zone that contains a name is its longest suffix.
        zones.sort_by_key(|z| std::cmp::Reverse(z.name.num_labels()));

        // Admin.
        let mut admin_listen = Vec::new();
        for (i, l) in raw.admin.listen.items().iter().enumerate() {
            let key = match &raw.admin.listen {
                raw::OneOrMany::One(_) => "admin.listen".to_string(),
                raw::OneOrMany::Many(_) => format!("admin.listen[{i}]"),
            };
            match parse_socket_addr(l, 9253) {
                Ok(a) => admin_listen.push(a),
                Err(e) => self.problem(&key, e),
            }
        }

        // Limits.
        let l = &raw.limits;
        let limits = Limits {
            max_inflight: self.range("limits.max_inflight", l.max_inflight, 1, 1_000_000) as usize,
            max_tcp_connections: self.range("limits.max_tcp_connections", l.max_tcp_connections, 1, 1_000_000) as usize,
            max_tcp_connections_per_client: self.range(
                "limits.max_tcp_connections_per_client",
                l.max_tcp_connections_per_client,
                1,
                1_000_000,
            ) as usize,
            max_pipelined_per_connection: self.range(
                "limits.max_pipelined_per_connection",
                l.max_pipelined_per_connection,
                1,
                65_535,
            ) as usize,
            tcp_idle_timeout: Duration::from_secs(self.range(
                "limits.tcp_idle_timeout_secs",
                l.tcp_idle_timeout_secs,
                1,
                3600,
            ) as u64),
            max_udp_payload: self.range("limits.max_udp_payload_bytes", l.max_udp_payload_bytes, 512, 4096),
            per_client_qps: l.per_client_qps,
            max_upstream_inflight: self.range("limits.max_upstream_inflight", l.max_upstream_inflight, 1, 1_000_000)
                as usize,
            upstream_queue_wait: Duration::from_millis(self.range(
                "limits.upstream_queue_wait_ms",
                l.upstream_queue_wait_ms,
                0,
                10_000,
            )),
        };

        // Log.
        if tracing_subscriber::EnvFilter::try_new(&raw.log.level).is_err() {
            self.problem("log.level", format!("`{}` is not a log level or filter", raw.log.level));
        }
        let rate = raw.log.queries_sample_rate;
        if !(0.0..=1.0).contains(&rate) {
            self.problem("log.queries_sample_rate", format!("{rate} is out of range [0, 1]"));
        }
        let log = LogConfig {
            format: match raw.log.format {
                RawLogFormat::Text => LogFormat::Text,
                RawLogFormat::Json => LogFormat::Json,
            },
            level: raw.log.level.clone(),
            queries_sample_rate: rate,
            dnstap: raw.log.dnstap.as_ref().and_then(|d| self.dnstap(d)),
        };

        let server = ServerConfig {
            workers: self.range("server.workers", raw.server.workers, 0, 256) as usize,
            drain_timeout: Duration::from_secs(self.range(
                "server.drain_timeout_secs",
                raw.server.drain_timeout_secs,
                0,
                600,
            ) as u64),
            handover_socket: raw.server.handover_socket.as_ref().map(PathBuf::from),
        };

        let kube_dns_configmap = raw.kube_dns_configmap.as_ref().map(|k| {
            if k.path.is_empty() {
                self.problem("kube_dns_configmap.path", "required");
            }
            KubeDnsConfigMap {
                path: PathBuf::from(&k.path),
                reload_interval: Duration::from_secs(self.range(
                    "kube_dns_configmap.reload_interval_secs",
                    k.reload_interval_secs,
                    1,
                    3600,
                ) as u64),
                transport: match k.transport {
                    Some(RawTransport::Tcp) => nodedns_upstream::Transport::Tcp,
                    Some(RawTransport::Udp) | None => nodedns_upstream::Transport::Udp,
                },
            }
        });

        Config {
            listen,
            cache,
            zones,
            admin: AdminConfig {
                listen: admin_listen,
                coredns_compatible_metrics: raw.admin.coredns_compatible_metrics,
            },
            node,
            limits,
            log,
            server,
            kube_dns_configmap,
        }
    }
}

#[cfg(test)]
mod tests;
