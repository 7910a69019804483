//! Issue 10 end to end: the cluster's DNS policy is not bypassed.
//!
//! The lab, all on loopback: three Knot authoritative servers — the cluster zone (`cluster.local`,
//! what CoreDNS's kubernetes plugin serves), a stub domain (`acme.local`, a second one with other
//! data for the "change" step) and an external zone (`example.test`, what the node's resolver
//! reaches) — and Unbound as the cluster DNS stand-in (CoreDNS with a Corefile): `cluster.local`
//! and the stub domain `acme.local` as stub zones, `.` forwarded to the external Knot, and one
//! policy rule (a `local-data` override of `special.example.test`, like a CoreDNS `hosts` or
//! `rewrite` rule). Each Unbound query is logged (`log-queries`), which is how the tests count
//! what reaches "CoreDNS".
//!
//! Needs `knotd` (package knot) and `unbound` (package unbound); run with `--nocapture` to see
//! the queries-per-lookup numbers quoted in deploy/README.md.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::RecordType;
use nodedns_e2e::testkit::query_udp;
use nodedns_e2e::{Daemon, Knot, a_addresses, free_addr, metric_value};

const T: Duration = Duration::from_secs(3);
/// The ConfigMap poll interval used in the ConfigMap test.
const RELOAD_INTERVAL: Duration = Duration::from_secs(1);
/// Slack on top of the reload interval for a change to be served (poll phase, reconfigure,
/// one upstream round trip, a loaded 2-core machine).
const RELOAD_SLACK: Duration = Duration::from_secs(4);

const CLUSTER_ZONE: &str = "$ORIGIN cluster.local.
$TTL 5
@ SOA ns.dns.cluster.local. hostmaster.cluster.local. 1 7200 1800 86400 5
@ NS ns.dns.cluster.local.
ns.dns A 10.96.0.10
kubernetes.default.svc A 10.96.0.1
web.my-ns.svc A 10.96.0.20
";

/// The stub domain as its own server has it (TTL 1: changes show at once).
fn acme_zone(addr: &str) -> String {
    format!(
        "$ORIGIN acme.local.
$TTL 1
@ SOA ns.acme.local. hostmaster.acme.local. 1 7200 1800 86400 1
@ NS ns.acme.local.
ns A 10.20.0.53
www A {addr}
* A {addr}
"
    )
}

/// The external zone as the node's resolver sees it.
const EXTERNAL_ZONE: &str = "$ORIGIN example.test.
$TTL 1
@ SOA ns.example.test. hostmaster.example.test. 1 7200 1800 86400 1
@ NS ns.example.test.
ns A 192.0.2.53
api A 192.0.2.10
api AAAA 2001:db8::10
special A 192.0.2.1
*.special A 192.0.2.1
";
const ACME_V1: &str = "10.20.0.1";
const ACME_V2: &str = "10.20.0.2";
const SPECIAL_BY_NODE: &str = "192.0.2.1";
const SPECIAL_BY_CLUSTER_DNS: &str = "192.0.2.99";

/// Unbound as the cluster DNS stand-in, killed on drop.
struct ClusterDns {
    child: Child,
    addr: SocketAddr,
    dir: PathBuf,
}

impl ClusterDns {
    /// Stub zones `cluster.local` → `cluster`, `acme.local` → `acme`; `.` forwarded to
    /// `external`; `special.example.test` (and below) answered locally.
    fn start(cluster: SocketAddr, acme: SocketAddr, external: SocketAddr) -> ClusterDns {
        assert!(nodedns_e2e::have("unbound"), "unbound (package unbound) must be installed");
        let addr = free_addr();
        let dir = std::env::temp_dir().join(format!("nodedns-unbound-{}-{}", std::process::id(), addr.port()));
        std::fs::create_dir_all(&dir).unwrap();
        let at = |a: SocketAddr| format!("{}@{}", a.ip(), a.port());
        let conf = format!(
            r#"server:
  interface: {listen}
  port: {port}
  do-ip6: no
  username: ""
  chroot: ""
  directory: "{d}"
  pidfile: "{d}/unbound.pid"
  use-syslog: no
  logfile: "{d}/unbound.log"
  log-queries: yes
  verbosity: 1
  num-threads: 1
  so-reuseport: no
  module-config: "iterator"
  do-not-query-localhost: no
  access-control: 127.0.0.0/8 allow
  local-zone: "test." nodefault
  local-zone: "special.example.test." redirect
  local-data: "special.example.test. 1 IN A {SPECIAL_BY_CLUSTER_DNS}"
remote-control:
  control-enable: no
stub-zone:
  name: "cluster.local."
  stub-addr: {cluster}
stub-zone:
  name: "acme.local."
  stub-addr: {acme}
forward-zone:
  name: "."
  forward-addr: {external}
"#,
            listen = at(addr),
            port = addr.port(),
            d = dir.display(),
            cluster = at(cluster),
            acme = at(acme),
            external = at(external),
        );
        let conf_path = dir.join("unbound.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let child = Command::new("unbound")
            .arg("-d")
            .arg("-c")
            .arg(&conf_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("stderr")).unwrap())
            .spawn()
            .expect("spawn unbound");
        let u = ClusterDns { child, addr, dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if a_records(&query_udp(addr, "special.example.test", RecordType::A, Duration::from_millis(300)))
                == [SPECIAL_BY_CLUSTER_DNS]
            {
                return u;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("unbound did not start: {}", std::fs::read_to_string(u.dir.join("stderr")).unwrap_or_default());
    }

    /// Every query it received so far, as `name type` (`www.acme.local. A`), in order.
    fn queries(&self) -> Vec<String> {
        let log = std::fs::read_to_string(self.dir.join("unbound.log")).unwrap_or_default();
        log.lines()
            .filter_map(|l| {
                // "[ts] unbound[pid:0] info: 127.0.0.1 www.acme.local. A IN"
                let rest = l.split_once(" info: ")?.1;
                let f: Vec<&str> = rest.split_whitespace().collect();
                (f.len() == 4 && f[3] == "IN").then(|| format!("{} {}", f[1], f[2]))
            })
            .collect()
    }

    /// Queries received after the first `from`, once the log has been quiet for 200 ms.
    fn queries_since(&self, from: usize) -> Vec<String> {
        let mut last = self.queries().len();
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            std::thread::sleep(Duration::from_millis(200));
            let now = self.queries().len();
            if now == last || Instant::now() > deadline {
                return self.queries().split_off(from.min(now));
            }
            last = now;
        }
    }
}

impl Drop for ClusterDns {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "--- unbound log ---\n{}",
                std::fs::read_to_string(self.dir.join("unbound.log")).unwrap_or_default()
            );
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The whole lab.
struct Lab {
    _cluster: Knot,
    acme: Knot,
    acme2: Knot,
    external: Knot,
    cluster_dns: ClusterDns,
}

impl Lab {
    fn start() -> Lab {
        let cluster = Knot::start(&[("cluster.local", CLUSTER_ZONE)]);
        let acme = Knot::start(&[("acme.local", &acme_zone(ACME_V1))]);
        let acme2 = Knot::start(&[("acme.local", &acme_zone(ACME_V2))]);
        let external = Knot::start(&[("example.test", EXTERNAL_ZONE)]);
        let cluster_dns = ClusterDns::start(cluster.addr, acme.addr, external.addr);
        Lab { _cluster: cluster, acme, acme2, external, cluster_dns }
    }
}

/// Where `.` goes.
#[derive(Clone, Copy, Debug)]
enum Mode {
    /// deploy/config/nodedns.yaml: `.` to the cluster DNS over TCP.
    ClusterDns,
    /// deploy/overlays/node-resolvers: `.` to the node's resolver over UDP.
    NodeResolvers,
}

/// The shipped config's zones (deploy/config/nodedns.yaml) with the lab's addresses; `extra` is
/// inserted as more zones; `tail` is appended at the top level.
fn config(lab: &Lab, mode: Mode, schema: bool, extra: &str, tail: &str) -> String {
    let cdns = lab.cluster_dns.addr;
    let (dot, transport) = match mode {
        Mode::ClusterDns => (cdns, "tcp"),
        Mode::NodeResolvers => (lab.external.addr, "udp"),
    };
    format!(
        r#"listen: ["{{DNS}}"]
cache:
  max_bytes: 16777216
  min_ttl_secs: 2
zones:
  - name: cluster.local
    upstreams: ["{cdns}"]
    transport: tcp
    max_ttl_secs: 30
    denial_max_ttl_secs: 5
    kubernetes_schema: {schema}
  - name: in-addr.arpa
    upstreams: ["{cdns}"]
    transport: tcp
  - name: ip6.arpa
    upstreams: ["{cdns}"]
    transport: tcp
{extra}  - name: "."
    upstreams: ["{dot}"]
    transport: {transport}
admin:
  listen: "{{ADMIN}}"
{tail}"#
    )
}

fn a_records(m: &Result<Message, impl std::fmt::Debug>) -> Vec<String> {
    m.as_ref().map(a_addresses).unwrap_or_default()
}

fn resolve(d: &Daemon, name: &str) -> Vec<String> {
    a_records(&query_udp(d.dns, name, RecordType::A, T))
}

/// Polls `f` every 50 ms until it is true or `timeout` passes; returns the time it took.
fn wait(timeout: Duration, mut f: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if f() {
            return Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

// ----- (1) a stub domain resolves in both modes -----

#[test]
fn stub_domain_resolves_as_a_nodedns_zone_and_through_the_cluster_dns() {
    let lab = Lab::start();

    // As a zone of nodedns's own config (node-resolvers mode: the cluster DNS is not asked).
    let zone = format!("  - name: acme.local\n    upstreams: [\"{}\"]\n    transport: udp\n", lab.acme.addr);
    let d = Daemon::start(&config(&lab, Mode::NodeResolvers, false, &zone, ""));
    let from = lab.cluster_dns.queries().len();
    assert_eq!(resolve(&d, "www.acme.local"), [ACME_V1]);
    let seen = lab.cluster_dns.queries_since(from);
    assert!(!seen.iter().any(|q| q.contains("acme.local")), "the cluster DNS was asked: {seen:?}");
    let metrics = d.metrics();
    let sample = format!("nodedns_upstream_queries_total{{endpoint=\"{}\"}}", lab.acme.addr);
    assert!(metric_value(&metrics, &sample).unwrap_or(0.0) >= 1.0, "no {sample} in:\n{metrics}");
    let zone_of = format!(
        "nodedns_upstream_zone_endpoint{{endpoint=\"{}\",role=\"primary\",zone=\"acme.local.\"}}",
        lab.acme.addr
    );
    assert_eq!(metric_value(&metrics, &zone_of), Some(1.0), "no {zone_of} in:\n{metrics}");
    drop(d);

    // Through the cluster DNS's own stub domain (the shipped default: `.` to the cluster DNS).
    let d = Daemon::start(&config(&lab, Mode::ClusterDns, false, "", ""));
    let from = lab.cluster_dns.queries().len();
    assert_eq!(resolve(&d, "www.acme.local"), [ACME_V1]);
    let seen = lab.cluster_dns.queries_since(from);
    assert!(seen.iter().any(|q| q == "www.acme.local. A"), "the cluster DNS was not asked: {seen:?}");
}

// ----- (2) the cluster DNS's policy applies to non-cluster names by default -----

#[test]
fn default_config_answers_as_the_cluster_dns_says_not_as_the_node_resolver() {
    let lab = Lab::start();
    // What the node's resolver says, and what the cluster DNS's policy says instead.
    assert_eq!(a_records(&query_udp(lab.external.addr, "special.example.test", RecordType::A, T)), [SPECIAL_BY_NODE]);
    assert_eq!(
        a_records(&query_udp(lab.cluster_dns.addr, "special.example.test", RecordType::A, T)),
        [SPECIAL_BY_CLUSTER_DNS]
    );

    let d = Daemon::start(&config(&lab, Mode::ClusterDns, false, "", ""));
    assert_eq!(resolve(&d, "special.example.test"), [SPECIAL_BY_CLUSTER_DNS]);
    assert_eq!(resolve(&d, "x.special.example.test"), [SPECIAL_BY_CLUSTER_DNS]);
    // Over TCP from the client too, and an ordinary external name still resolves.
    let tcp = nodedns_e2e::testkit::query_tcp(d.dns, "y.special.example.test", RecordType::A, T);
    assert_eq!(a_records(&tcp), [SPECIAL_BY_CLUSTER_DNS]);
    assert_eq!(resolve(&d, "api.example.test"), ["192.0.2.10"]);
    drop(d);

    // The documented alternative bypasses that rule: the trade-off the README states.
    let d = Daemon::start(&config(&lab, Mode::NodeResolvers, false, "", ""));
    assert_eq!(resolve(&d, "special.example.test"), [SPECIAL_BY_NODE]);
}

// ----- (3) the kube-dns ConfigMap, mounted as a volume -----

/// A directory laid out as the kubelet lays out a ConfigMap volume: the data in a hidden
/// timestamped directory, `..data` pointing at it, each key a symlink through `..data`. An update
/// writes a new directory and swaps `..data` atomically (rename of a symlink), as the kubelet's
/// AtomicWriter does.
struct ConfigMapVolume {
    dir: PathBuf,
    version: u32,
}

impl ConfigMapVolume {
    fn new() -> ConfigMapVolume {
        let dir = std::env::temp_dir().join(format!("nodedns-kube-dns-cm-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        ConfigMapVolume { dir, version: 0 }
    }

    fn publish(&mut self, data: &[(&str, &str)]) {
        self.version += 1;
        let old = format!("..2026_01_01_00_00_{:02}.{}", self.version - 1, self.version - 1);
        let new = format!("..2026_01_01_00_00_{:02}.{}", self.version, self.version);
        std::fs::create_dir_all(self.dir.join(&new)).unwrap();
        for (key, value) in data {
            std::fs::write(self.dir.join(&new).join(key), value).unwrap();
        }
        let tmp = self.dir.join("..data_tmp");
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(&new, &tmp).unwrap();
        std::fs::rename(&tmp, self.dir.join("..data")).unwrap();
        // Key links: add the new ones, remove those the ConfigMap no longer has.
        for key in ["stubDomains", "upstreamNameservers"] {
            let link = self.dir.join(key);
            let wanted = data.iter().any(|(k, _)| *k == key);
            let present = std::fs::symlink_metadata(&link).is_ok();
            if wanted && !present {
                std::os::unix::fs::symlink(Path::new("..data").join(key), &link).unwrap();
            } else if !wanted && present {
                std::fs::remove_file(&link).unwrap();
            }
        }
        let _ = std::fs::remove_dir_all(self.dir.join(old));
    }
}

impl Drop for ConfigMapVolume {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn kube_dns_configmap_stub_domains_follow_add_change_remove_and_survive_invalid_json() {
    let lab = Lab::start();
    let mut cm = ConfigMapVolume::new();
    cm.publish(&[("stubDomains", "{}")]);
    let tail = format!(
        "kube_dns_configmap:\n  path: \"{}\"\n  reload_interval_secs: {}\n",
        cm.dir.display(),
        RELOAD_INTERVAL.as_secs()
    );
    // Node-resolvers mode: the case where the ConfigMap's policy would otherwise be bypassed.
    let d = Daemon::start(&config(&lab, Mode::NodeResolvers, false, "", &tail));
    let zone_listed = |addr: SocketAddr| {
        d.metrics()
            .lines()
            .any(|l| l.starts_with("nodedns_upstream_healthy{") && l.contains(&format!("endpoint=\"{addr}\"")))
    };
    assert!(!zone_listed(lab.acme.addr), "no stub domain yet");
    assert_eq!(resolve(&d, "a0.special.example.test"), [SPECIAL_BY_NODE]);
    let mut n = 0u32;
    let mut fresh = |prefix: &str, zone: &str| {
        n += 1;
        format!("{prefix}{n}.{zone}")
    };
    let within = RELOAD_INTERVAL + RELOAD_SLACK;

    // Add a stub domain, and upstreamNameservers pointing `.` at the cluster DNS.
    let ups = format!("[\"{}\"]", lab.cluster_dns.addr);
    cm.publish(&[
        ("stubDomains", &format!("{{\"acme.local\": [\"{}\"]}}", lab.acme.addr)),
        ("upstreamNameservers", &ups),
    ]);
    let took = wait(within, || resolve(&d, &fresh("add", "acme.local")) == [ACME_V1]);
    assert!(took.is_some(), "stub domain not added within {within:?}");
    println!("policy: ConfigMap stub domain added, served after {:?}", took.unwrap());
    assert!(
        wait(T, || resolve(&d, &fresh("add", "special.example.test")) == [SPECIAL_BY_CLUSTER_DNS]).is_some(),
        "upstreamNameservers not applied"
    );
    let reloads = d.metric("nodedns_config_reloads_total{result=\"success\"}");
    assert!(reloads >= 1.0);

    // Change its nameserver.
    cm.publish(&[
        ("stubDomains", &format!("{{\"acme.local\": [\"{}\"]}}", lab.acme2.addr)),
        ("upstreamNameservers", &ups),
    ]);
    let took = wait(within, || resolve(&d, &fresh("chg", "acme.local")) == [ACME_V2]);
    assert!(took.is_some(), "stub domain not changed within {within:?}");
    println!("policy: ConfigMap stub domain changed, served after {:?}", took.unwrap());
    assert!(!zone_listed(lab.acme.addr) && zone_listed(lab.acme2.addr));

    // Invalid JSON: rejected with file and reason; the previous zones keep serving.
    let failures = d.metric("nodedns_config_reloads_total{result=\"failure\"}");
    cm.publish(&[("stubDomains", &format!("{{\"acme.local\": [\"{}\"", lab.acme.addr)), ("upstreamNameservers", &ups)]);
    assert!(
        wait(within, || d.metric("nodedns_config_reloads_total{result=\"failure\"}") > failures).is_some(),
        "invalid ConfigMap not noticed"
    );
    let log = d.log();
    assert!(log.contains("kube-dns ConfigMap rejected"), "{log}");
    assert!(log.contains(&format!("{}/stubDomains", cm.dir.display())), "the file is named: {log}");
    std::thread::sleep(RELOAD_INTERVAL * 2);
    assert_eq!(resolve(&d, &fresh("bad", "acme.local")), [ACME_V2]);
    assert_eq!(resolve(&d, &fresh("bad", "special.example.test")), [SPECIAL_BY_CLUSTER_DNS]);
    // Counted once, not once per poll.
    assert_eq!(d.metric("nodedns_config_reloads_total{result=\"failure\"}"), failures + 1.0);

    // Remove both keys: the stub zone goes, `.` is the node's resolver again.
    cm.publish(&[]);
    assert!(wait(within, || !zone_listed(lab.acme2.addr)).is_some(), "stub domain not removed within {within:?}");
    assert!(
        wait(T, || resolve(&d, &fresh("rm", "special.example.test")) == [SPECIAL_BY_NODE]).is_some(),
        "upstreamNameservers not removed"
    );
    let after = query_udp(d.dns, &fresh("rm", "acme.local"), RecordType::A, T);
    assert!(a_records(&after).is_empty(), "removed stub domain still answered: {after:?}");
    let log = d.log();
    assert!(log.contains("kube-dns ConfigMap applied"), "{log}");
}

// ----- the numbers: queries reaching the cluster DNS per external lookup -----

/// What glibc does for `name` (fewer dots than ndots:5) with a ClusterFirst pod's search list:
/// each candidate in order, A and AAAA, until one has an address.
fn glibc_search_walk(d: &Daemon, name: &str) -> Vec<String> {
    let search = ["my-ns.svc.cluster.local", "svc.cluster.local", "cluster.local"];
    let candidates = search.iter().map(|s| format!("{name}.{s}")).chain([name.to_string()]);
    for c in candidates {
        let a = query_udp(d.dns, &c, RecordType::A, T);
        let _ = query_udp(d.dns, &c, RecordType::AAAA, T);
        if matches!(&a, Ok(m) if m.metadata.response_code == ResponseCode::NoError) && !a_records(&a).is_empty() {
            return a_records(&a);
        }
    }
    Vec::new()
}

#[test]
fn queries_per_external_lookup_reaching_the_cluster_dns() {
    let lab = Lab::start();
    let mut rows = Vec::new();
    for mode in [Mode::ClusterDns, Mode::NodeResolvers] {
        for schema in [false, true] {
            let d = Daemon::start(&config(&lab, mode, schema, "", ""));
            // Let start-up probes settle (unbound writes its query log asynchronously), then
            // count one cold lookup and one warm one.
            let mut start = lab.cluster_dns.queries_since(0).len();
            let settle = std::time::Instant::now();
            loop {
                std::thread::sleep(std::time::Duration::from_millis(300));
                let now = lab.cluster_dns.queries_since(0).len();
                if now == start || settle.elapsed() > std::time::Duration::from_secs(3) {
                    break;
                }
                start = now;
            }
            assert_eq!(glibc_search_walk(&d, "api.example.test"), ["192.0.2.10"]);
            let cold = lab.cluster_dns.queries_since(start);
            let start = start + cold.len();
            assert_eq!(glibc_search_walk(&d, "api.example.test"), ["192.0.2.10"]);
            let warm = lab.cluster_dns.queries_since(start);
            println!(
                "policy: RESULT mode={mode:?} kubernetes_schema={schema}: cold lookup {} queries at the cluster DNS {cold:?}; repeated at once: {}",
                cold.len(),
                warm.len()
            );
            rows.push((mode, schema, cold.len()));
            drop(d);
        }
    }
    let count = |m: &str, s: bool| rows.iter().find(|r| format!("{:?}", r.0) == m && r.1 == s).unwrap().2;
    // `.` through the cluster DNS costs it the external name's A and AAAA on top.
    assert_eq!(count("ClusterDns", false), count("NodeResolvers", false) + 2, "{rows:?}");
    assert_eq!(count("ClusterDns", true), count("NodeResolvers", true) + 2, "{rows:?}");
    assert!(count("ClusterDns", true) < count("ClusterDns", false), "{rows:?}");
}
