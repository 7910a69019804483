//! The shipped alerts and dashboard against a real Prometheus (Debian's `prometheus`, 2.42 on
//! bookworm) scraping real nodedns daemons every second, with the labels the PodMonitor gives
//! (`job="nodedns"`, `node`) and deploy/monitoring/prometheusrule.yaml loaded.
//!
//! One daemon per fault ("node"), all at once so the whole test takes well under two minutes:
//! every alert's expression (without its `for:`, which tests/deploy/prometheusrule.test.yaml
//! covers with promtool) must return no series while every node is healthy, series for the
//! faulty node once its fault is injected, and never one for the healthy control node. The rule
//! engine must agree (the alert pending or firing for that node). Every dashboard query must be
//! valid and return data. NodeDNSUpstreamErrors must keep its series over a window in which its
//! endpoint was ejected throughout (the health probes are counted). Prints one `RESULT` line per
//! alert with the fault and its time to fire. The node setup faults need root (a network
//! namespace with a veth pair to the host); without it those two alerts are reported skipped.
//!
//! Measured (debug build, 2 cores): all 13 alerts within 24 s of their faults, 36 s in all.

use std::collections::BTreeMap;
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use hickory_proto::rr::RecordType;
use nodedns_e2e::testkit::{Behaviour, FakeUpstream, new_query, query_tcp};
use nodedns_e2e::{Daemon, free_addr, have, http_get};

/// Names the cache node cycles through, more than its 1 MiB holds.
const FILL_NAMES: u64 = 3000;

/// Time a fault has to show up in an alert expression (most take a few seconds).
const FIRE_WITHIN: Duration = Duration::from_secs(60);

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A Prometheus server on a loopback address with its own TSDB directory, killed on drop.
struct Prometheus {
    child: Option<Child>,
    addr: SocketAddr,
    dir: PathBuf,
}

/// One series of an instant query: its labels and value.
#[derive(Debug)]
struct Sample {
    labels: BTreeMap<String, String>,
    value: f64,
}

impl Prometheus {
    /// Scrapes `targets` (node name, admin address) every second as job "nodedns", evaluating
    /// `rules` every second.
    fn start(targets: &[(&str, SocketAddr)], rules: &Path) -> Prometheus {
        let addr = free_addr();
        let dir = std::env::temp_dir().join(format!("nodedns-prometheus-{}-{}", std::process::id(), addr.port()));
        std::fs::create_dir_all(dir.join("data")).unwrap();
        let mut config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 900ms\n  evaluation_interval: 1s\nrule_files:\n  - {}\nscrape_configs:\n  - job_name: nodedns\n    static_configs:\n",
            rules.display()
        );
        for (node, admin) in targets {
            // The PodMonitor's relabeling sets `node` from the pod's node name; here it is static.
            config.push_str(&format!("      - targets: [\"{admin}\"]\n        labels:\n          node: {node}\n"));
        }
        std::fs::write(dir.join("prometheus.yml"), config).unwrap();
        let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg("--storage.tsdb.retention.time=1h")
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn prometheus");
        let p = Prometheus { child: Some(child), addr, dir };
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some((200, _)) = http_get(addr, "/-/ready") {
                return p;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("prometheus not ready within 20 s; log:\n{}", p.log());
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }

    fn api(&self, path: &str) -> serde_json::Value {
        let (code, body) = http_get(self.addr, path).unwrap_or_else(|| panic!("prometheus {path} unreachable"));
        let v: serde_json::Value =
            serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {code} not JSON ({e}): {body}"));
        v
    }

    /// Evaluates `expr` now; `Err` carries Prometheus's error (a query that does not parse or
    /// cannot be evaluated).
    fn query(&self, expr: &str) -> Result<Vec<Sample>, String> {
        let v = self.api(&format!("/api/v1/query?query={}", url_encode(expr)));
        if v["status"] != "success" {
            return Err(format!("{}: {}", v["errorType"], v["error"]));
        }
        let data = &v["data"];
        let samples = match data["resultType"].as_str() {
            Some("vector") => data["result"].as_array().cloned().unwrap_or_default(),
            Some("scalar") => {
                let value = data["result"][1].as_str().and_then(|s| s.parse().ok()).unwrap_or(f64::NAN);
                return Ok(vec![Sample { labels: BTreeMap::new(), value }]);
            }
            other => return Err(format!("unexpected result type {other:?}")),
        };
        Ok(samples
            .iter()
            .map(|s| Sample {
                labels: s["metric"]
                    .as_object()
                    .map(|m| m.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string())).collect())
                    .unwrap_or_default(),
                value: s["value"][1].as_str().and_then(|v| v.parse().ok()).unwrap_or(f64::NAN),
            })
            .collect())
    }

    /// (alertname, node, state) of every pending or firing alert of the rule engine.
    fn alerts(&self) -> Vec<(String, String, String)> {
        let v = self.api("/api/v1/alerts");
        v["data"]["alerts"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|a| {
                let s = |k: &str| a["labels"][k].as_str().unwrap_or("").to_string();
                (s("alertname"), s("node"), a["state"].as_str().unwrap_or("").to_string())
            })
            .collect()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- prometheus log ---\n{}", self.log());
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The PrometheusRule's `spec.groups` as a plain rules file, and its alerts (name, expr).
fn extract_rules(out: &Path) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(repo().join("deploy/monitoring/prometheusrule.yaml")).unwrap();
    let rule: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    let groups = rule["spec"]["groups"].clone();
    let mut plain = serde_yaml::Mapping::new();
    plain.insert("groups".into(), groups.clone());
    std::fs::write(out, serde_yaml::to_string(&plain).unwrap()).unwrap();
    let mut alerts = Vec::new();
    for g in groups.as_sequence().unwrap() {
        for r in g["rules"].as_sequence().unwrap() {
            if let (Some(a), Some(e)) = (r["alert"].as_str(), r["expr"].as_str()) {
                alerts.push((a.to_string(), e.to_string()));
            }
        }
    }
    alerts
}

/// Every query of the dashboard (panel title, expr) and its template variable's, with the
/// variables as Grafana would fill them: every node, a one-minute rate interval.
fn dashboard_queries() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(repo().join("deploy/monitoring/grafana-dashboard.json")).unwrap();
    let d: serde_json::Value = serde_json::from_str(&text).unwrap();
    let fill = |e: &str| e.replace("$node", ".*").replace("$__rate_interval", "1m");
    let mut out = Vec::new();
    for p in d["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().cloned().unwrap_or_default() {
            if let Some(e) = t["expr"].as_str() {
                out.push((p["title"].as_str().unwrap_or("").to_string(), fill(e)));
            }
        }
    }
    out
}

/// Sends queries without waiting for answers: a fault must not slow the traffic that shows it.
struct Traffic {
    socket: UdpSocket,
    target: SocketAddr,
    unique: AtomicU64,
}

impl Traffic {
    fn new(target: SocketAddr) -> Traffic {
        // Unspecified: the source follows the route (loopback, or the veth of the netns node).
        let socket = UdpSocket::bind("0.0.0.0:0").unwrap();
        socket.set_nonblocking(true).unwrap();
        Traffic { socket, target, unique: AtomicU64::new(0) }
    }

    fn send(&self, name: &str, rtype: RecordType) {
        let mut q = new_query(name, rtype).unwrap();
        q.metadata.id = rand_id(&self.unique);
        let _ = self.socket.send_to(&q.to_vec().unwrap(), self.target);
        // Answers are read and thrown away, so the socket buffer never fills.
        let mut buf = [0u8; 1500];
        while self.socket.recv_from(&mut buf).is_ok() {}
    }

    /// A name never asked before: a cache miss.
    fn send_unique(&self, suffix: &str) {
        let n = self.unique.fetch_add(1, Relaxed);
        self.send(&format!("u{n}.{suffix}"), RecordType::A);
    }
}

fn rand_id(counter: &AtomicU64) -> u16 {
    (counter.load(Relaxed).wrapping_mul(40503) & 0xffff) as u16
}

fn config(zone_extra: &str, max_inflight: usize, max_bytes: usize, upstream: SocketAddr) -> String {
    format!(
        r#"listen: ["{{DNS}}"]
cache:
  max_bytes: {max_bytes}
  min_ttl_secs: 1
  max_ttl_secs: 1
  denial_max_ttl_secs: 1
  stale_answer_timeout_ms: 200
zones:
{zone_extra}  - name: "."
    upstreams: ["{upstream}"]
    transport: udp
    query_timeout_ms: 400
admin:
  listen: "{{ADMIN}}"
  coredns_compatible_metrics: true
limits:
  max_inflight: {max_inflight}
server:
  workers: 1
"#
    )
}

/// A node of the test: its daemon and its upstream.
struct Node {
    name: &'static str,
    daemon: Daemon,
    upstream: FakeUpstream,
}

fn node(name: &'static str, max_inflight: usize, zone_extra: impl FnOnce(SocketAddr) -> String) -> Node {
    let upstream = FakeUpstream::start();
    upstream.answer("fixed.example", RecordType::A, &["192.0.2.1"], 1);
    upstream.answer("fixed.example", RecordType::AAAA, &["2001:db8::1"], 1);
    upstream.answer("stale.example", RecordType::A, &["192.0.2.2"], 1);
    if name == "cache" {
        // Names with 40 A records each (about 700 bytes cached): 1 MiB fills in seconds.
        let addrs: Vec<String> = (0..40).map(|i| format!("10.9.0.{i}")).collect();
        let addrs: Vec<&str> = addrs.iter().map(String::as_str).collect();
        for i in 0..FILL_NAMES {
            upstream.answer(&format!("f{i}.fill.example"), RecordType::A, &addrs, 300);
        }
    }
    let extra = zone_extra(upstream.addr());
    // The smallest cache allowed (1 MiB) on the node that must fill it.
    let max_bytes = if name == "cache" { 1 << 20 } else { 64 << 20 };
    let daemon = Daemon::spawn(&config(&extra, max_inflight, max_bytes, upstream.addr()), &[]);
    Node { name, daemon, upstream }
}

/// A nodedns with node setup (interface, addresses; no firewall rules) in a network namespace
/// the test creates, reached from the host (Prometheus, traffic, its upstream) over a veth pair.
struct NetnsNode {
    ns: String,
    child: Option<Child>,
    dns: SocketAddr,
    admin: SocketAddr,
    dir: PathBuf,
    /// Its upstream, on the host end of the veth pair.
    _upstream: Option<FakeUpstream>,
}

const NODE_V4: &str = "169.254.20.10";
const NODE_V6: &str = "fd00:5:20::10";

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip").args(args).output().map_err(|e| format!("ip {args:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("ip {args:?}: {}", String::from_utf8_lossy(&out.stderr).trim()))
    }
}

impl NetnsNode {
    /// `None` (with the reason) where namespaces cannot be made (not root, no `ip`).
    fn start() -> Result<NetnsNode, String> {
        let id = std::process::id() % 100_000;
        let ns = format!("ndprom{id}");
        let (host_if, ns_if) = (format!("ndpa{id}"), format!("ndpb{id}"));
        let net = id % 250;
        let (host_ip, ns_ip) = (format!("10.254.{net}.1"), format!("10.254.{net}.2"));
        ip(&["netns", "add", &ns])?;
        let mut node = NetnsNode {
            ns: ns.clone(),
            child: None,
            dns: format!("{ns_ip}:5353").parse().unwrap(),
            admin: format!("{ns_ip}:9253").parse().unwrap(),
            dir: std::env::temp_dir().join(format!("nodedns-prom-{ns}")),
            _upstream: None,
        };
        ip(&["link", "add", &host_if, "type", "veth", "peer", "name", &ns_if, "netns", &ns])?;
        ip(&["addr", "add", &format!("{host_ip}/30"), "dev", &host_if])?;
        ip(&["link", "set", &host_if, "up"])?;
        ip(&["-n", &ns, "addr", "add", &format!("{ns_ip}/30"), "dev", &ns_if])?;
        ip(&["-n", &ns, "link", "set", &ns_if, "up"])?;
        ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        let upstream = FakeUpstream::start_on(format!("{host_ip}:0").parse().unwrap()).map_err(|e| e.to_string())?;
        upstream.answer("fixed.example", RecordType::A, &["192.0.2.1"], 1);
        upstream.answer("stale.example", RecordType::A, &["192.0.2.2"], 1);
        std::fs::create_dir_all(&node.dir).unwrap();
        let config = format!(
            r#"listen: ["{dns}"]
zones:
  - name: "."
    upstreams: ["{up}"]
    transport: udp
    query_timeout_ms: 400
admin:
  listen: "{admin}"
node:
  interface: nodelocaldns
  interface_kind: bridge
  addresses: ["{NODE_V4}", "{NODE_V6}"]
  firewall: none
  resync_interval_secs: 1
server:
  workers: 1
"#,
            dns = node.dns,
            admin = node.admin,
            up = upstream.addr(),
        );
        let path = node.dir.join("nodedns.yaml");
        std::fs::write(&path, config).unwrap();
        let log = std::fs::File::create(node.dir.join("nodedns.log")).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &ns])
            .arg(nodedns_e2e::nodedns_bin())
            .arg("run")
            .arg("--config")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .map_err(|e| e.to_string())?;
        node.child = Some(child);
        node._upstream = Some(upstream);
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Some((200, _)) = http_get(node.admin, "/ready") {
                return Ok(node);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let log = node.log();
        node.child.take().map(|mut c| c.kill());
        Err(format!("nodedns in {ns} not ready within 15 s; log:\n{log}"))
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("nodedns.log")).unwrap_or_default()
    }
}

/// The netns node's faults: its IPv4 address removed three times (each restored by the next
/// resync: repairs), then IPv6 disabled on the interface, so re-adding the IPv6 address fails at
/// every resync (setup errors).
fn break_setup(ns: &str) {
    for _ in 0..3 {
        let _ = ip(&["-n", ns, "addr", "del", &format!("{NODE_V4}/32"), "dev", "nodelocaldns"]);
        std::thread::sleep(Duration::from_millis(1300));
    }
    let _ = Command::new("ip")
        .args(["netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.nodelocaldns.disable_ipv6=1"])
        .status();
}

impl Drop for NetnsNode {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- nodedns log ({}) ---\n{}", self.ns, self.log());
        }
        // Deleting the namespace deletes the veth pair with it.
        let _ = ip(&["netns", "del", &self.ns]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Which node's fault must fire which alert.
const EXPECTED: &[(&str, &str, &str)] = &[
    ("NodeDNSDown", "killed", "daemon killed (SIGKILL)"),
    ("NodeDNSAllUpstreamsDown", "blackhole", "the only upstream drops every query"),
    ("NodeDNSUpstreamEndpointDown", "blackhole", "the only upstream drops every query"),
    ("NodeDNSUpstreamSlow", "slow", "the upstream answers after 300 ms"),
    ("NodeDNSUpstreamErrors", "blackhole", "the only upstream drops every query"),
    ("NodeDNSUpstreamEjections", "blackhole", "the only upstream drops every query"),
    ("NodeDNSServfailRate", "servfail", "the only upstream answers SERVFAIL to everything"),
    ("NodeDNSServingStale", "stale", "the upstream drops queries for a cached name past its TTL"),
    ("NodeDNSSheddingLoad", "shed", "limits.max_inflight 5, upstream 1 s slow, bursts of 30 misses"),
    ("NodeDNSConfigReloadFailed", "reload", "an invalid config file written"),
    ("NodeDNSCacheNearBound", "cache", "1 MiB cache filled with big answers, then 250 new names a second"),
];

/// Alerts of node setup, provoked in a network namespace (root only).
const NODE_SETUP: &[(&str, &str, &str)] = &[
    ("NodeDNSSetupErrors", "netns", "IPv6 disabled on the interface: re-adding its address fails"),
    ("NodeDNSRepairs", "netns", "the interface's IPv4 address deleted three times"),
];

#[test]
fn alerts_fire_under_their_faults_and_dashboard_queries_return_data() {
    assert!(have("prometheus"), "prometheus (Debian package prometheus) must be installed; tests/run.sh installs it");
    let started = Instant::now();
    let work = std::env::temp_dir().join(format!("nodedns-prom-rules-{}", std::process::id()));
    std::fs::create_dir_all(&work).unwrap();
    let rules = work.join("nodedns-rules.yaml");
    let alerts = extract_rules(&rules);
    for (alert, _) in &alerts {
        assert!(EXPECTED.iter().chain(NODE_SETUP).any(|e| e.0 == alert), "{alert} has no fault in this test");
    }

    let healthy = node("healthy", 1000, |up| {
        format!("  - name: cluster.local\n    upstreams: [\"{up}\"]\n    transport: udp\n    kubernetes_schema: true\n")
    });
    let nodes = vec![
        node("blackhole", 1000, |_| String::new()),
        node("servfail", 1000, |_| String::new()),
        node("slow", 1000, |_| String::new()),
        node("stale", 1000, |_| String::new()),
        node("shed", 5, |_| String::new()),
        node("reload", 1000, |_| String::new()),
        node("killed", 1000, |_| String::new()),
        node("cache", 1000, |_| String::new()),
    ];
    healthy.daemon.wait_ready(Duration::from_secs(15));
    for n in &nodes {
        n.daemon.wait_ready(Duration::from_secs(15));
    }
    let netns = NetnsNode::start();
    let mut expected: Vec<(&str, &str, &str)> = EXPECTED.to_vec();
    let mut targets = vec![(healthy.name, healthy.daemon.admin, healthy.daemon.dns)];
    targets.extend(nodes.iter().map(|n| (n.name, n.daemon.admin, n.daemon.dns)));
    match &netns {
        Ok(n) => {
            targets.push(("netns", n.admin, n.dns));
            expected.extend_from_slice(NODE_SETUP);
        }
        Err(why) => {
            for (alert, _, _) in NODE_SETUP {
                println!("RESULT alert={alert} SKIPPED: no network namespace ({why})");
            }
        }
    }
    let scrape: Vec<(&str, SocketAddr)> = targets.iter().map(|t| (t.0, t.1)).collect();
    let prom = Prometheus::start(&scrape, &rules);

    // Traffic on every node, all along: 10 queries a second (hits and misses), more on the
    // healthy node (TCP, AAAA, malformed, a name the Kubernetes schema rules out, /health).
    let stop = Arc::new(AtomicBool::new(false));
    let faulted = Arc::new(AtomicBool::new(false));
    let by_name = |name: &str| nodes.iter().find(|n| n.name == name).unwrap();
    let mut threads = Vec::new();
    for &(name, _, dns) in &targets {
        let (stop, faulted) = (stop.clone(), faulted.clone());
        let admin = if name == "healthy" { Some(healthy.daemon.admin) } else { None };
        threads.push(std::thread::spawn(move || {
            let t = Traffic::new(dns);
            let mut tick = 0u64;
            while !stop.load(Relaxed) {
                tick += 1;
                t.send("fixed.example", RecordType::A);
                t.send("stale.example", RecordType::A);
                t.send_unique("example");
                if name == "shed" && faulted.load(Relaxed) {
                    for _ in 0..30 {
                        t.send_unique("example");
                    }
                }
                if name == "cache" && faulted.load(Relaxed) {
                    // Big answers fill the bound; new names then evict an entry each.
                    for i in 0..20 {
                        t.send(&format!("f{}.fill.example", (tick * 20 + i) % FILL_NAMES), RecordType::A);
                    }
                    for _ in 0..25 {
                        t.send_unique("new.example");
                    }
                }
                if let Some(admin) = admin {
                    t.send("fixed.example", RecordType::AAAA);
                    t.send("www.example.com.cluster.local", RecordType::A);
                    if tick.is_multiple_of(5) {
                        let _ = query_tcp(dns, "fixed.example", RecordType::A, Duration::from_millis(500));
                        // Malformed: QDCOUNT 0.
                        let _ = t.socket.send_to(&[0, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0], dns);
                        let _ = http_get(admin, "/health");
                    }
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }));
    }

    // Healthy baseline: every target scraped a few times, and no alert expression has a series.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let scraped = prom.query("count_over_time(up{job=\"nodedns\"}[1m]) >= 4").unwrap();
        let rated = prom.query("sum by (node) (rate(nodedns_requests_total[1m])) > 0").unwrap();
        if scraped.len() == targets.len() && rated.len() == targets.len() {
            break;
        }
        assert!(Instant::now() < deadline, "targets not scraped within 30 s: {scraped:?}\n{}", prom.log());
        std::thread::sleep(Duration::from_millis(250));
    }
    for (alert, expr) in &alerts {
        let got = prom.query(expr).unwrap_or_else(|e| panic!("{alert}: {e}"));
        assert!(got.is_empty(), "{alert} has series while every node is healthy: {got:?}");
    }
    println!("RESULT healthy_baseline_s={:.1}", started.elapsed().as_secs_f64());

    // Faults.
    let fault_at = Instant::now();
    faulted.store(true, Relaxed);
    by_name("blackhole").upstream.set_default_behaviour(Behaviour::Drop);
    by_name("servfail").upstream.set_default_behaviour(Behaviour::ServFail);
    by_name("slow").upstream.set_default_behaviour(Behaviour::Delay(Duration::from_millis(300)));
    by_name("stale").upstream.behaviour("stale.example", RecordType::A, Behaviour::Drop);
    by_name("shed").upstream.set_default_behaviour(Behaviour::Delay(Duration::from_secs(1)));
    std::fs::write(&by_name("reload").daemon.config_path, "listen: [\n").unwrap();
    by_name("killed").daemon.signal(9);
    let breaker = netns.as_ref().ok().map(|n| {
        let ns = n.ns.clone();
        std::thread::spawn(move || break_setup(&ns))
    });

    let mut fired: BTreeMap<&str, (f64, Option<f64>)> = BTreeMap::new();
    let deadline = fault_at + FIRE_WITHIN;
    while fired.len() < expected.len() || fired.values().any(|f| f.1.is_none()) {
        if Instant::now() > deadline {
            break;
        }
        let rule_states = prom.alerts();
        for (alert, node, _) in &expected {
            let expr = &alerts.iter().find(|a| a.0 == *alert).unwrap().1;
            if !fired.contains_key(alert) {
                let got = prom.query(expr).unwrap();
                if got.iter().any(|s| s.labels.get("node").map(String::as_str) == Some(*node)) {
                    fired.insert(alert, (fault_at.elapsed().as_secs_f64(), None));
                }
            }
            if let Some(f) = fired.get_mut(alert)
                && f.1.is_none()
                && rule_states.iter().any(|(a, n, _)| a == alert && n == node)
            {
                f.1 = Some(fault_at.elapsed().as_secs_f64());
            }
        }
        std::thread::sleep(Duration::from_millis(250));
    }

    // NodeDNSUpstreamErrors survives ejection: over a window in which the blackholed endpoint
    // was ejected throughout (no client query reaches it), the error ratio still has a series,
    // made of the health probes. A 10 s window stands in for the rule's 5 m.
    let (errors_alert, errors_expr) = alerts.iter().find(|a| a.0 == "NodeDNSUpstreamErrors").unwrap();
    let short = errors_expr.replace("[5m]", "[10s]");
    let survive_deadline = fault_at + Duration::from_secs(60);
    let mut survived = None;
    while Instant::now() < survive_deadline {
        let ejected_throughout =
            prom.query("max_over_time(nodedns_upstream_healthy{node=\"blackhole\"}[10s]) == 0").unwrap();
        if !ejected_throughout.is_empty() {
            let got = prom.query(&short).unwrap();
            assert!(
                got.iter().any(|s| s.labels.get("node").map(String::as_str) == Some("blackhole")),
                "{errors_alert} lost its series while the endpoint is ejected: {short} = {got:?}"
            );
            survived = Some(fault_at.elapsed().as_secs_f64());
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let survived = survived.expect("the blackholed endpoint was never ejected for 10 s straight within 60 s");
    println!("RESULT upstream_errors_series_while_ejected_10s_at_s={survived:.1}");

    // The control node never shows up in an alert, in expressions or in the rule engine.
    for (alert, expr) in &alerts {
        let got = prom.query(expr).unwrap();
        assert!(
            !got.iter().any(|s| s.labels.get("node").map(String::as_str) == Some("healthy")),
            "{alert} has a series for the healthy node: {got:?}"
        );
    }
    let states = prom.alerts();
    assert!(!states.iter().any(|(_, n, _)| n == "healthy"), "an alert for the healthy node: {states:?}");

    // The /health self-queries are not client traffic: none of the healthy node's answers is
    // REFUSED, and the self-queries are counted apart.
    let refused = prom.query("nodedns_responses_total{node=\"healthy\", rcode=\"REFUSED\"}").unwrap();
    assert!(refused.iter().all(|s| s.value == 0.0), "REFUSED answers on the healthy node: {refused:?}");
    let selfq = prom.query("nodedns_health_self_queries_total{node=\"healthy\"}").unwrap();
    assert!(selfq.iter().any(|s| s.value >= 1.0), "no self-query counted: {selfq:?}");

    // Dashboard: every query valid and with data; panels whose subject happened show it.
    let mut empty = Vec::new();
    let mut with_data = 0;
    for (title, expr) in dashboard_queries() {
        let got = prom.query(&expr).unwrap_or_else(|e| panic!("dashboard panel {title:?}: {expr}: {e}"));
        if got.is_empty() {
            empty.push(format!("{title}: {expr}"));
        } else {
            with_data += 1;
        }
    }
    let nodes_listed = prom.api("/api/v1/label/node/values?match[]=nodedns_build_info%7Bjob%3D%22nodedns%22%7D");
    let listed = nodes_listed["data"].as_array().map(|a| a.len()).unwrap_or(0);
    assert_eq!(listed, targets.len(), "the dashboard's node variable lists every node: {nodes_listed}");
    let positive = |expr: &str| prom.query(expr).unwrap().iter().any(|s| s.value > 0.0);
    for (subject, expr) in [
        ("UDP queries", "sum by (proto) (rate(nodedns_requests_total{proto=\"udp\"}[1m]))"),
        ("TCP queries", "sum by (proto) (rate(nodedns_requests_total{proto=\"tcp\"}[1m]))"),
        ("SERVFAIL answers", "sum(rate(nodedns_responses_total{rcode=\"SERVFAIL\"}[1m]))"),
        ("shed queries", "sum(rate(nodedns_shed_total[1m]))"),
        ("malformed queries", "sum(rate(nodedns_malformed_queries_total[1m]))"),
        ("hits", "sum(rate(nodedns_cache_hits_total[1m]))"),
        ("misses", "sum(rate(nodedns_cache_misses_total[1m]))"),
        ("stale answers", "sum(rate(nodedns_cache_stale_answers_total[1m]))"),
        ("upstream errors", "sum(rate(nodedns_upstream_errors_total[1m]))"),
        ("unhealthy endpoints", "count(nodedns_upstream_healthy == 0)"),
        ("ejections", "sum(increase(nodedns_upstream_ejections_total[1m]))"),
        ("rejected reloads", "sum(increase(nodedns_config_reloads_total{result=\"failure\"}[1m]))"),
        ("CoreDNS-compatible requests", "sum(rate(coredns_dns_requests_total[1m]))"),
        ("answered locally", "sum(rate(nodedns_local_synthesized_total[1m]))"),
    ] {
        assert!(positive(expr), "the dashboard shows no {subject}: {expr}");
    }

    stop.store(true, Relaxed);
    if let Some(b) = breaker {
        let _ = b.join();
    }
    for t in threads {
        let _ = t.join();
    }
    for (alert, node, fault) in &expected {
        match fired.get(alert) {
            Some((expr_s, rule_s)) => println!(
                "RESULT alert={alert} node={node} fault=\"{fault}\" expr_after_s={expr_s:.1} rule_after_s={}",
                rule_s.map_or("-".to_string(), |s| format!("{s:.1}"))
            ),
            None => println!("RESULT alert={alert} node={node} fault=\"{fault}\" NOT FIRED"),
        }
    }
    println!("RESULT dashboard_queries_with_data={with_data} empty={}", empty.len());
    for e in &empty {
        println!("RESULT dashboard_empty {e}");
    }
    println!("RESULT total_s={:.1}", started.elapsed().as_secs_f64());
    let _ = std::fs::remove_dir_all(&work);
    let missing: Vec<_> = expected.iter().filter(|e| fired.get(e.0).is_none_or(|f| f.1.is_none())).collect();
    assert!(
        missing.is_empty(),
        "not fired within {FIRE_WITHIN:?} (expression or rule engine): {missing:?}; fired: {fired:?}"
    );
    assert!(empty.is_empty(), "dashboard queries without data: {empty:#?}");
}
