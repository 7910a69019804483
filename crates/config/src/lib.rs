//! Configuration: YAML → [`raw::RawConfig`] (plain data) → validated [`Config`].
//!
//! Validation (`validate/`, one file per section) collects every problem at once, each with its
//! key path and line, because a typo in a ConfigMap must fail loudly and completely rather than
//! one error per rollout. [`kubedns`] translates the kube-dns ConfigMap into zones merged into a
//! [`Config`]; [`change`] says, for every key a reload changes, whether it applies live or needs
//! a restart.
#![forbid(unsafe_code)]

pub mod change;
pub mod kubedns;
mod locate;
pub mod raw;
mod resolv;
mod validate;

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use hickory_proto::rr::Name;
use nodedns_cache::{Ttl, TtlPolicy};

use raw::RawConfig;
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
        let mut v = validate::Validator::new(text);
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

#[cfg(test)]
mod tests;
