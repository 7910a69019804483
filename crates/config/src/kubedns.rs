//! The kube-dns ConfigMap (`kube-system/kube-dns`), mounted as files, translated into zones.
//!
//! Keys, as kube-dns reads them (kubernetes/dns `pkg/dns/config`: `sync.go`, `config.go`,
//! `sync_dir.go`) and as node-cache translates them (`cmd/node-cache/app/configmap.go`):
//!
//! - `stubDomains`: a JSON map `{"acme.local": ["1.2.3.4", "1.2.3.5:5353"]}`. Each domain becomes
//!   a zone of its own forwarding to those nameservers. The domain must be a DNS-1123 subdomain
//!   (lower case, no trailing dot), as kube-dns validates it. Nameservers are `IP`, `IP:PORT` or
//!   `[IPv6]:PORT`. kube-dns also accepts host names there, resolved once when it starts;
//!   node-cache rejects them (CoreDNS `forward` takes addresses only) and so does nodedns. A
//!   domain with no nameserver is rejected (kube-dns silently ignored it).
//! - `upstreamNameservers`: a JSON list, at most three addresses (`IP` or `IP:PORT`). When not
//!   empty it replaces the upstreams of the `"."` zone (kube-dns: "overrides nameservers inherited
//!   from the node"); a `"."` zone is added if the config has none.
//! - Every other file (`federations`, long removed from Kubernetes) is ignored, as are hidden
//!   files (the volume's `..data` machinery). Either key may be absent; an empty or missing
//!   directory means no stub domains and no upstream override.
//!
//! Choices (see the README, "Where non-cluster names go"):
//! - **Transport: UDP** (retried over TCP on TC=1), like kube-dns's dnsmasq and node-cache since
//!   kubernetes/dns 0ceb7f4a ("Use UDP for stubdomains": servers reachable over UDP only worked
//!   with kube-dns and CoreDNS but failed behind node-cache's TCP). The ConfigMap names no
//!   transport, and its servers were only ever promised UDP.
//! - **TTL ceilings: 30 s** for stub domains (positive and negative), node-cache's and kubeadm's
//!   `cache 30` for stub-domain server blocks: stub domains are often service registries (Consul)
//!   whose answers change quickly. The floor is `cache.min_ttl_secs` (at most 30).
//! - **The config file wins**: a stub domain with the same name as a zone of the config file is
//!   ignored (with a warning). A platform team that wrote a zone by hand (its own transport, TTLs,
//!   metrics name) meant it; and the cluster zones must never be taken over by a ConfigMap edit.
//!   `upstreamNameservers` is the exception by design: it is a statement about `"."` only.
//! - **Invalid content is rejected whole**, with every problem as `file: key: reason`, and the
//!   zones in use keep serving, as kube-dns ignores an invalid update.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use hickory_proto::rr::Name;
use nodedns_cache::{Ttl, TtlPolicy};
use nodedns_upstream::Transport;

use crate::{Config, UpstreamSource, ZoneConfig, parse_zone_name};

/// The ConfigMap key of the stub domains.
pub const STUB_DOMAINS: &str = "stubDomains";
/// The ConfigMap key of the upstream nameservers.
pub const UPSTREAM_NAMESERVERS: &str = "upstreamNameservers";
/// kube-dns: "upstreamNameserver cannot have more than three entries" (glibc's MAXNS).
pub const MAX_UPSTREAM_NAMESERVERS: usize = 3;
/// TTL ceiling of stub-domain zones: node-cache's `cache 30` for stub-domain blocks.
pub const STUB_MAX_TTL_SECS: u32 = 30;
/// Default transport to the ConfigMap's nameservers (see the module documentation).
pub const TRANSPORT: Transport = Transport::Udp;
/// The symlink a ConfigMap volume swaps atomically on every update.
const DATA_LINK: &str = "..data";
/// Attempts to read a consistent set of files while the volume is being updated.
const READ_ATTEMPTS: usize = 5;

/// One problem in the ConfigMap.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KubeDnsProblem {
    /// The file (or directory) it is in.
    pub file: PathBuf,
    /// The key path inside it, e.g. `stubDomains["acme.local"][1]`; empty when the whole file is
    /// at fault.
    pub key: String,
    pub reason: String,
}

/// Every problem of one version of the ConfigMap.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct KubeDnsError {
    pub problems: Vec<KubeDnsProblem>,
}

impl KubeDnsError {
    fn one(file: PathBuf, key: impl Into<String>, reason: impl Into<String>) -> Self {
        KubeDnsError { problems: vec![KubeDnsProblem { file, key: key.into(), reason: reason.into() }] }
    }
}

impl fmt::Display for KubeDnsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            if p.key.is_empty() {
                write!(f, "{}: {}", p.file.display(), p.reason)?;
            } else {
                write!(f, "{}: {}: {}", p.file.display(), p.key, p.reason)?;
            }
        }
        Ok(())
    }
}

/// The ConfigMap's files as read at one moment: file name → content. Compared by content, never
/// by modification time: a volume update swaps the `..data` symlink, and the files' own times
/// say nothing reliable.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// The directory the files were read from.
    pub dir: PathBuf,
    pub files: BTreeMap<String, String>,
}

impl Snapshot {
    /// Reads the mounted ConfigMap in `dir`. With a `..data` symlink (a ConfigMap volume) the
    /// files are read from its target, and read again if the link moved meanwhile, so that the two
    /// keys always come from the same version.
    pub fn read(dir: &Path) -> Result<Snapshot, KubeDnsError> {
        let link = dir.join(DATA_LINK);
        for _ in 0..READ_ATTEMPTS {
            let Ok(before) = std::fs::read_link(&link) else {
                return read_files(dir, dir);
            };
            let snapshot = read_files(dir, &link);
            match std::fs::read_link(&link) {
                Ok(after) if after == before => return snapshot,
                _ => std::thread::sleep(Duration::from_millis(10)),
            }
        }
        Err(KubeDnsError::one(dir.into(), "", "the ConfigMap volume kept changing while it was read"))
    }
}

/// Reads the visible regular files of `from` (not recursing; names starting with `.` skipped, as
/// kube-dns does); errors name them under `dir`.
fn read_files(dir: &Path, from: &Path) -> Result<Snapshot, KubeDnsError> {
    let entries = std::fs::read_dir(from)
        .map_err(|e| KubeDnsError::one(dir.into(), "", format!("cannot read the directory: {e}")))?;
    let mut files = BTreeMap::new();
    for entry in entries {
        let entry = entry.map_err(|e| KubeDnsError::one(dir.into(), "", format!("cannot read the directory: {e}")))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        let path = from.join(&name);
        // Follows symlinks: in a volume, `dir/<key>` links into `..data`.
        match std::fs::metadata(&path) {
            Ok(m) if m.is_file() => {}
            _ => continue,
        }
        let bytes =
            std::fs::read(&path).map_err(|e| KubeDnsError::one(dir.join(&name), "", format!("cannot read: {e}")))?;
        let text = String::from_utf8(bytes)
            .map_err(|_| KubeDnsError::one(dir.join(&name), "", "not UTF-8 (kube-dns rejects it too)"))?;
        files.insert(name, text);
    }
    Ok(Snapshot { dir: dir.into(), files })
}

/// A valid ConfigMap.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KubeDns {
    /// Stub domains, sorted by name, each with its nameservers in the given order.
    pub stub_domains: Vec<(Name, Vec<SocketAddr>)>,
    /// Empty: the `"."` zone keeps its upstreams.
    pub upstream_nameservers: Vec<SocketAddr>,
}

impl KubeDns {
    /// Parses and validates a snapshot, collecting every problem.
    pub fn parse(snapshot: &Snapshot) -> Result<KubeDns, KubeDnsError> {
        let mut problems = Vec::new();
        let mut out = KubeDns::default();
        if let Some(text) = snapshot.files.get(STUB_DOMAINS) {
            let file = snapshot.dir.join(STUB_DOMAINS);
            let mut problem =
                |key: String, reason: String| problems.push(KubeDnsProblem { file: file.clone(), key, reason });
            match json::<BTreeMap<String, Vec<String>>>(text, "a JSON object of domain → list of nameservers") {
                Err(reason) => problem(String::new(), reason),
                Ok(map) => {
                    for (domain, servers) in map {
                        let key = format!("{STUB_DOMAINS}[{domain:?}]");
                        let name = match stub_domain_name(&domain) {
                            Ok(n) => n,
                            Err(reason) => {
                                problem(key, reason);
                                continue;
                            }
                        };
                        if servers.is_empty() {
                            problem(key, "no nameserver".into());
                            continue;
                        }
                        let mut addrs = Vec::new();
                        for (i, s) in servers.iter().enumerate() {
                            match nameserver(s) {
                                Ok(a) if addrs.contains(&a) => {
                                    problem(format!("{key}[{i}]"), format!("`{s}` is listed twice"))
                                }
                                Ok(a) => addrs.push(a),
                                Err(reason) => problem(format!("{key}[{i}]"), reason),
                            }
                        }
                        out.stub_domains.push((name, addrs));
                    }
                }
            }
        }
        if let Some(text) = snapshot.files.get(UPSTREAM_NAMESERVERS) {
            let file = snapshot.dir.join(UPSTREAM_NAMESERVERS);
            let mut problem =
                |key: String, reason: String| problems.push(KubeDnsProblem { file: file.clone(), key, reason });
            match json::<Vec<String>>(text, "a JSON list of nameservers") {
                Err(reason) => problem(String::new(), reason),
                Ok(list) if list.len() > MAX_UPSTREAM_NAMESERVERS => problem(
                    UPSTREAM_NAMESERVERS.into(),
                    format!("{} entries: at most {MAX_UPSTREAM_NAMESERVERS} are allowed (as in kube-dns)", list.len()),
                ),
                Ok(list) => {
                    for (i, s) in list.iter().enumerate() {
                        let key = format!("{UPSTREAM_NAMESERVERS}[{i}]");
                        match nameserver(s) {
                            Ok(a) if out.upstream_nameservers.contains(&a) => {
                                problem(key, format!("`{s}` is listed twice"))
                            }
                            Ok(a) => out.upstream_nameservers.push(a),
                            Err(reason) => problem(key, reason),
                        }
                    }
                }
            }
        }
        if problems.is_empty() { Ok(out) } else { Err(KubeDnsError { problems }) }
    }

    /// `base` (the validated config file) with this ConfigMap's zones merged in. Fails when a
    /// nameserver is one of nodedns's own listen addresses (every miss would loop).
    pub fn apply_to(&self, base: &Config, snapshot_dir: &Path) -> Result<Applied, KubeDnsError> {
        let mut problems = Vec::new();
        let mut check_loop = |file: &str, key: String, addrs: &[SocketAddr]| {
            for a in addrs {
                if base.listen.contains(a) {
                    problems.push(KubeDnsProblem {
                        file: snapshot_dir.join(file),
                        key: key.clone(),
                        reason: format!("{a} is one of nodedns's own listen addresses (forwarding loop)"),
                    });
                }
            }
        };
        for (name, addrs) in &self.stub_domains {
            check_loop(STUB_DOMAINS, format!("{STUB_DOMAINS}[{:?}]", name.to_string().trim_end_matches('.')), addrs);
        }
        check_loop(UPSTREAM_NAMESERVERS, UPSTREAM_NAMESERVERS.into(), &self.upstream_nameservers);
        if !problems.is_empty() {
            return Err(KubeDnsError { problems });
        }

        let mut config = base.clone();
        let mut shadowed = Vec::new();
        for (name, addrs) in &self.stub_domains {
            if base.zones.iter().any(|z| &z.name == name) {
                shadowed.push(name.clone());
                continue;
            }
            config.zones.push(stub_zone(base, name.clone(), addrs.clone()));
        }
        if !self.upstream_nameservers.is_empty() {
            let root = Name::root();
            let upstreams = UpstreamSource::Fixed(self.upstream_nameservers.clone());
            match config.zones.iter_mut().find(|z| z.name == root) {
                Some(z) => {
                    z.upstreams = upstreams;
                    z.transport = transport(base);
                    // Discovery would replace these upstreams with the cluster DNS's endpoints.
                    z.discover = None;
                }
                None => {
                    let mut z = stub_zone(base, root, self.upstream_nameservers.clone());
                    z.ttl = base.cache.ttl;
                    config.zones.push(z);
                }
            }
        }
        // As validation orders them: most labels first, so the first suffix match is the longest.
        config.zones.sort_by_key(|z| std::cmp::Reverse(z.name.num_labels()));
        Ok(Applied { config, shadowed })
    }
}

/// A config with the ConfigMap's zones merged in.
#[derive(Clone, Debug, PartialEq)]
pub struct Applied {
    pub config: Config,
    /// Stub domains ignored because the config file has a zone of the same name.
    pub shadowed: Vec<Name>,
}

/// The transport to the ConfigMap's nameservers.
fn transport(base: &Config) -> Transport {
    base.kube_dns_configmap.as_ref().map_or(TRANSPORT, |k| k.transport)
}

/// The zone of one stub domain: the ConfigMap transport, 30 s ceilings, defaults otherwise.
fn stub_zone(base: &Config, name: Name, addrs: Vec<SocketAddr>) -> ZoneConfig {
    let ceiling = Ttl::from_secs(STUB_MAX_TTL_SECS);
    ZoneConfig {
        name,
        upstreams: UpstreamSource::Fixed(addrs),
        transport: transport(base),
        ttl: TtlPolicy { min_ttl: base.cache.ttl.min_ttl.min(ceiling), max_ttl: ceiling, denial_max_ttl: ceiling },
        tcp_connections: 2,
        query_timeout: Duration::from_millis(1000),
        query_budget: Duration::from_millis(2500),
        discover: None,
        discover_interval: Duration::from_secs(30),
        kubernetes_schema: false,
        schema_exceptions: Vec::new(),
    }
}

/// Parses a JSON document into `T`. serde_yaml reads JSON (a subset of YAML 1.2); the text must
/// still start as JSON does, so that a plain word is not taken as a YAML string.
fn json<T: serde::de::DeserializeOwned>(text: &str, expected: &str) -> Result<T, String> {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(format!("empty; expected {expected}"));
    }
    let open = if expected.contains("object") { '{' } else { '[' };
    if !trimmed.starts_with(open) {
        return Err(format!("not JSON: expected {expected}"));
    }
    serde_yaml::from_str(trimmed).map_err(|e| format!("invalid JSON ({e}); expected {expected}"))
}

/// A stub domain: a DNS-1123 subdomain (kube-dns `validation.IsDNS1123Subdomain`): at most 253
/// characters of lower-case letters, digits, `-` and `.`, each label starting and ending with a
/// letter or digit.
fn stub_domain_name(domain: &str) -> Result<Name, String> {
    let ok_label = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if domain.is_empty() || domain.len() > 253 || !domain.split('.').all(ok_label) {
        return Err(format!(
            "`{domain}` is not a DNS-1123 subdomain (lower-case letters, digits, '-' and '.', no trailing dot), as kube-dns requires"
        ));
    }
    parse_zone_name(domain)
}

/// A nameserver: `IP`, `IP:PORT`, `[IPv6]:PORT` (port 53 by default).
fn nameserver(s: &str) -> Result<SocketAddr, String> {
    let t = s.trim();
    let addr = if let Ok(ip) = t.parse::<IpAddr>() {
        SocketAddr::new(ip, 53)
    } else if let Ok(a) = t.parse::<SocketAddr>() {
        a
    } else {
        return Err(format!("`{s}` is not an IP address or IP:PORT (host names are not accepted)"));
    };
    if addr.port() == 0 {
        return Err(format!("`{s}`: port 0"));
    }
    if addr.ip().is_unspecified() || addr.ip().is_multicast() {
        return Err(format!("`{s}` is not a unicast address"));
    }
    Ok(addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(stub: Option<&str>, up: Option<&str>) -> Snapshot {
        let mut files = BTreeMap::new();
        if let Some(s) = stub {
            files.insert(STUB_DOMAINS.to_string(), s.to_string());
        }
        if let Some(u) = up {
            files.insert(UPSTREAM_NAMESERVERS.to_string(), u.to_string());
        }
        Snapshot { dir: PathBuf::from("/etc/kube-dns"), files }
    }

    fn base() -> Config {
        Config::parse_with(
            r#"listen: ["127.0.0.1:5353"]
zones:
  - name: cluster.local
    upstreams: ["10.96.0.11"]
    transport: tcp
  - name: "."
    upstreams: ["10.96.0.11"]
    transport: tcp
    discover: kube-dns-upstream.kube-system.svc.cluster.local
"#,
            "t.yaml",
            &|| Ok(vec![]),
        )
        .unwrap()
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn parses_the_documented_example() {
        let k = KubeDns::parse(&snap(
            Some(r#"{"acme.local": ["1.2.3.4", "1.2.3.5:5353"], "consul.local": ["[fd00::1]:8600", "fd00::2"]}"#),
            Some(r#"["8.8.8.8", "8.8.4.4:53"]"#),
        ))
        .unwrap();
        assert_eq!(k.stub_domains.len(), 2);
        assert_eq!(k.stub_domains[0].0, parse_zone_name("acme.local").unwrap());
        assert_eq!(k.stub_domains[0].1, vec![addr("1.2.3.4:53"), addr("1.2.3.5:5353")]);
        assert_eq!(k.stub_domains[1].1, vec![addr("[fd00::1]:8600"), addr("[fd00::2]:53")]);
        assert_eq!(k.upstream_nameservers, vec![addr("8.8.8.8:53"), addr("8.8.4.4:53")]);
    }

    #[test]
    fn absent_or_empty_keys_mean_nothing_to_do() {
        assert_eq!(KubeDns::parse(&snap(None, None)).unwrap(), KubeDns::default());
        assert_eq!(KubeDns::parse(&snap(Some("{}"), Some("[]"))).unwrap(), KubeDns::default());
        let b = base();
        assert_eq!(KubeDns::default().apply_to(&b, Path::new("/x")).unwrap().config, b);
    }

    #[test]
    fn rejects_what_kube_dns_rejects_naming_file_and_key() {
        let bad = [
            (snap(Some(r#"{"acme.local": ["1.2.3.4"]"#), None), STUB_DOMAINS, ""),
            (snap(Some(r#"["1.2.3.4"]"#), None), STUB_DOMAINS, ""),
            (snap(Some("acme.local: [1.2.3.4]"), None), STUB_DOMAINS, ""),
            (snap(Some(r#"{"Acme.local": ["1.2.3.4"]}"#), None), STUB_DOMAINS, r#"stubDomains["Acme.local"]"#),
            (snap(Some(r#"{"acme.local.": ["1.2.3.4"]}"#), None), STUB_DOMAINS, r#"stubDomains["acme.local."]"#),
            (snap(Some(r#"{"-acme.local": ["1.2.3.4"]}"#), None), STUB_DOMAINS, r#"stubDomains["-acme.local"]"#),
            (snap(Some(r#"{".": ["1.2.3.4"]}"#), None), STUB_DOMAINS, r#"stubDomains["."]"#),
            (snap(Some(r#"{"acme.local": []}"#), None), STUB_DOMAINS, r#"stubDomains["acme.local"]"#),
            (snap(Some(r#"{"acme.local": ["ns.acme.local"]}"#), None), STUB_DOMAINS, r#"stubDomains["acme.local"][0]"#),
            (snap(Some(r#"{"acme.local": ["1.2.3.4:0"]}"#), None), STUB_DOMAINS, r#"stubDomains["acme.local"][0]"#),
            (snap(Some(r#"{"acme.local": ["1.2.3.4:70000"]}"#), None), STUB_DOMAINS, r#"stubDomains["acme.local"][0]"#),
            (
                snap(None, Some(r#"["8.8.8.8", "8.8.4.4", "1.1.1.1", "9.9.9.9"]"#)),
                UPSTREAM_NAMESERVERS,
                UPSTREAM_NAMESERVERS,
            ),
            (snap(None, Some(r#"["dns.google"]"#)), UPSTREAM_NAMESERVERS, "upstreamNameservers[0]"),
            (snap(None, Some(r#"["0.0.0.0"]"#)), UPSTREAM_NAMESERVERS, "upstreamNameservers[0]"),
            (snap(None, Some(r#"{"a": "b"}"#)), UPSTREAM_NAMESERVERS, ""),
            (snap(None, Some("")), UPSTREAM_NAMESERVERS, ""),
        ];
        for (s, file, key) in bad {
            let e = KubeDns::parse(&s).expect_err(&format!("{:?} must be rejected", s.files));
            assert_eq!(e.problems.len(), 1, "{e}");
            assert_eq!(e.problems[0].file, Path::new("/etc/kube-dns").join(file), "{e}");
            assert_eq!(e.problems[0].key, key, "{e}");
            assert!(e.to_string().starts_with(&format!("/etc/kube-dns/{file}")), "{e}");
        }
    }

    #[test]
    fn collects_every_problem() {
        let e =
            KubeDns::parse(&snap(Some(r#"{"a.local": ["x"], "B.local": ["1.2.3.4"]}"#), Some(r#"["y"]"#))).unwrap_err();
        assert_eq!(e.problems.len(), 3, "{e}");
    }

    #[test]
    fn stub_domains_become_udp_zones_with_30s_ceilings_and_config_zones_win() {
        let b = base();
        let k =
            KubeDns::parse(&snap(Some(r#"{"acme.local": ["1.2.3.4"], "cluster.local": ["6.6.6.6"]}"#), None)).unwrap();
        let applied = k.apply_to(&b, Path::new("/etc/kube-dns")).unwrap();
        assert_eq!(applied.shadowed, vec![parse_zone_name("cluster.local").unwrap()]);
        let c = &applied.config;
        assert_eq!(c.zones.len(), 3);
        let acme = &c.zones[c.zone_index_for(&parse_zone_name("www.acme.local").unwrap()).unwrap()];
        assert_eq!(acme.name, parse_zone_name("acme.local").unwrap());
        assert_eq!(acme.upstreams, UpstreamSource::Fixed(vec![addr("1.2.3.4:53")]));
        assert_eq!(acme.transport, Transport::Udp);
        assert_eq!(acme.ttl.max_ttl, Ttl::from_secs(30));
        assert_eq!(acme.ttl.denial_max_ttl, Ttl::from_secs(30));
        assert_eq!(acme.ttl.min_ttl, b.cache.ttl.min_ttl);
        let cl = &c.zones[c.zone_index_for(&parse_zone_name("a.svc.cluster.local").unwrap()).unwrap()];
        assert_eq!(cl, &b.zones[0], "the config's cluster zone is untouched");
        // Longest suffix first.
        let labels: Vec<u8> = c.zones.iter().map(|z| z.name.num_labels()).collect();
        assert!(labels.windows(2).all(|w| w[0] >= w[1]), "{labels:?}");
    }

    #[test]
    fn upstream_nameservers_replace_the_root_zone_upstreams() {
        let b = base();
        let k = KubeDns::parse(&snap(None, Some(r#"["8.8.8.8", "8.8.4.4:5353"]"#))).unwrap();
        let c = k.apply_to(&b, Path::new("/x")).unwrap().config;
        let root = c.zones.iter().find(|z| z.name.is_root()).unwrap();
        assert_eq!(root.upstreams, UpstreamSource::Fixed(vec![addr("8.8.8.8:53"), addr("8.8.4.4:5353")]));
        assert_eq!(root.transport, Transport::Udp);
        assert_eq!(root.discover, None, "discovery would override the ConfigMap's upstreams");
        let old_root = b.zones.iter().find(|z| z.name.is_root()).unwrap();
        assert_eq!(root.ttl, old_root.ttl);

        // No "." zone in the config: one is added.
        let mut no_root = b.clone();
        no_root.zones.retain(|z| !z.name.is_root());
        let c = k.apply_to(&no_root, Path::new("/x")).unwrap().config;
        assert!(c.zones.last().unwrap().name.is_root());
        assert_eq!(c.zones.last().unwrap().ttl, b.cache.ttl);
    }

    #[test]
    fn forwarding_to_ourselves_is_rejected() {
        let k = KubeDns::parse(&snap(Some(r#"{"acme.local": ["127.0.0.1:5353"]}"#), None)).unwrap();
        let e = k.apply_to(&base(), Path::new("/etc/kube-dns")).unwrap_err();
        assert!(e.to_string().contains("forwarding loop"), "{e}");
        assert!(e.to_string().starts_with("/etc/kube-dns/stubDomains: stubDomains[\"acme.local\"]"), "{e}");
    }

    #[test]
    fn reads_a_configmap_volume_through_its_data_link() {
        let dir = std::env::temp_dir().join(format!("nodedns-kubedns-unit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("..v1")).unwrap();
        std::fs::write(dir.join("..v1").join(STUB_DOMAINS), r#"{"acme.local": ["1.2.3.4"]}"#).unwrap();
        std::os::unix::fs::symlink("..v1", dir.join(DATA_LINK)).unwrap();
        std::os::unix::fs::symlink(format!("{DATA_LINK}/{STUB_DOMAINS}"), dir.join(STUB_DOMAINS)).unwrap();
        let s = Snapshot::read(&dir).unwrap();
        assert_eq!(s.files.keys().collect::<Vec<_>>(), vec![STUB_DOMAINS]);
        assert_eq!(s.dir, dir);
        // Plain directory (no ..data): read as is; a missing one is an error naming it.
        let plain = dir.join("..v1");
        assert_eq!(Snapshot::read(&plain).unwrap().files.len(), 1);
        let e = Snapshot::read(&dir.join("missing")).unwrap_err();
        assert!(e.to_string().contains("missing"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
