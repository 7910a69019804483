//! Issue 9 end to end: a glibc client with the Kubernetes resolv.conf (`ndots:5`, search
//! `<ns>.svc.cluster.local svc.cluster.local cluster.local`) resolving an external name through
//! nodedns, with `kubernetes_schema` off and on, counting what reaches the cluster zone's upstream.
//!
//! The client must use port 53 (glibc cannot be pointed elsewhere) and its own resolv.conf, so
//! everything runs in a fresh network namespace: nodedns on 127.0.0.1:53, the fake upstream
//! (CoreDNS stand-in) on 127.0.0.1, `getent ahosts` with `/etc/netns/<ns>/resolv.conf`, which
//! `ip netns exec` mounts over `/etc/resolv.conf`. Only `lo` is up there, so glibc's AI_ADDRCONFIG
//! sees no non-loopback address of either family and asks A and AAAA, as in a dual-stack pod.
//!
//! The outer test (host namespace) makes the namespace and resolv.conf and runs this same test
//! binary inside it (`ip netns exec <ns> <this binary> --ignored --exact search_walk_in_namespace`)
//! once per mode; the inner run starts the fake upstream and nodedns there, runs getent, checks the
//! answer and prints `RESULT` lines. Needs root, iproute2 and getent (libc-bin); skipped without
//! root. Run with `--nocapture` to see the counts.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::rdata::SOA;
use hickory_proto::rr::{Name, RData, Record, RecordType};
use nodedns_e2e::testkit::{FakeUpstream, LoggedQuery, query_udp};
use nodedns_e2e::{Daemon, metric_sum};

/// Set (to `on` or `off`) in the inner run; names the `kubernetes_schema` setting.
const INNER_ENV: &str = "NODEDNS_SEARCH_PATH_SCHEMA";
/// The inner test's name, for `--exact`.
const INNER_TEST: &str = "search_walk_in_namespace";
/// The client pod's namespace: the first search domain is `<NAMESPACE>.svc.cluster.local`.
const NAMESPACE: &str = "my-ns";
/// The external name the client resolves, and its addresses at the fake upstream.
const EXTERNAL: &str = "api.example.test";
const EXTERNAL_V4: &str = "192.0.2.10";
const EXTERNAL_V6: &str = "2001:db8::10";
/// The issue's bound: upstream queries for the cluster zone per external lookup on a cold cache,
/// the zone's SOA included.
const MAX_CLUSTER_QUERIES: usize = 3;
/// How long one inner run may take (two getent walks, daemon start and stop).
const INNER_DEADLINE: Duration = Duration::from_secs(90);
const T: Duration = Duration::from_secs(3);

#[test]
fn getent_search_walk_asks_the_cluster_zone_at_most_three_times() {
    if !is_root() {
        eprintln!("search_path: skipped (needs root for network namespaces and port 53)");
        return;
    }
    for tool in ["ip", "getent"] {
        assert!(nodedns_e2e::have(tool), "{tool} is required (packages iproute2, libc-bin)");
    }
    let lab = Lab::new();
    let off = lab.run_inner("off");
    let on = lab.run_inner("on");
    println!(
        "search_path: upstream queries for cluster.local per `getent ahosts {EXTERNAL}` (cold cache, SOA included):"
    );
    println!("search_path:   kubernetes_schema off: {} {:?}", off.cluster_queries, off.names);
    println!("search_path:   kubernetes_schema on:  {} {:?}", on.cluster_queries, on.names);
    assert!(
        on.cluster_queries <= MAX_CLUSTER_QUERIES,
        "with kubernetes_schema the walk asked the cluster zone {} times: {:?}",
        on.cluster_queries,
        on.names
    );
    assert!(off.cluster_queries > on.cluster_queries, "the feature saved nothing: off {off:?}, on {on:?}");
}

/// One inner run's counts, parsed from its `RESULT` lines.
#[derive(Debug)]
struct Counts {
    /// Upstream queries for names in cluster.local since nodedns started.
    cluster_queries: usize,
    /// Those queries as `name/type`, in order.
    names: Vec<String>,
}

/// A network namespace with `lo` up and the Kubernetes resolv.conf, removed on drop with
/// everything still running in it.
struct Lab {
    name: String,
    etc_dir: PathBuf,
}

impl Lab {
    fn new() -> Lab {
        let name = format!("nodedns-sp-{}", std::process::id());
        let etc_dir = PathBuf::from("/etc/netns").join(&name);
        // A namespace left by a crashed run of the same pid would make `add` fail.
        let _ = Command::new("ip").args(["netns", "del", &name]).stderr(Stdio::null()).status();
        run(Command::new("ip").args(["netns", "add", &name]));
        let lab = Lab { name, etc_dir };
        run(Command::new("ip").args(["netns", "exec", &lab.name, "ip", "link", "set", "lo", "up"]));
        std::fs::create_dir_all(&lab.etc_dir).unwrap();
        // What kubelet writes for a ClusterFirst pod (search list, one nameserver, ndots:5).
        let resolv = format!(
            "search {NAMESPACE}.svc.cluster.local svc.cluster.local cluster.local\nnameserver 127.0.0.1\noptions ndots:5\n"
        );
        std::fs::write(lab.etc_dir.join("resolv.conf"), resolv).unwrap();
        lab
    }

    /// Runs the inner test in the namespace with `kubernetes_schema` set to `mode`.
    fn run_inner(&self, mode: &str) -> Counts {
        let exe = std::env::current_exe().unwrap();
        let out_dir = std::env::temp_dir().join(format!("{}-{mode}", self.name));
        std::fs::create_dir_all(&out_dir).unwrap();
        let (stdout_path, stderr_path) = (out_dir.join("stdout"), out_dir.join("stderr"));
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.name])
            .arg(&exe)
            .args(["--ignored", "--exact", INNER_TEST, "--nocapture", "--test-threads=1"])
            .env(INNER_ENV, mode)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout_path).unwrap())
            .stderr(std::fs::File::create(&stderr_path).unwrap())
            .spawn()
            .expect("ip netns exec");
        let deadline = Instant::now() + INNER_DEADLINE;
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break Some(status);
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let stdout = std::fs::read_to_string(&stdout_path).unwrap_or_default();
        let stderr = std::fs::read_to_string(&stderr_path).unwrap_or_default();
        let _ = std::fs::remove_dir_all(&out_dir);
        let ok = status.is_some_and(|s| s.success());
        let counts = parse_counts(&stdout);
        match (ok, counts) {
            (true, Some(counts)) => counts,
            _ => panic!(
                "inner run (kubernetes_schema {mode}) failed: {status:?}\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}"
            ),
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Whatever is left in the namespace was started by this test (nodedns, the inner run).
        if let Ok(out) = Command::new("ip").args(["netns", "pids", &self.name]).output() {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let _ = Command::new("kill").args(["-9", pid]).status();
            }
        }
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
        // Only this namespace's directory: /etc/netns itself may be in use by other tests.
        let _ = std::fs::remove_dir_all(&self.etc_dir);
    }
}

fn parse_counts(stdout: &str) -> Option<Counts> {
    let mut cluster_queries = None;
    let mut names = Vec::new();
    // libtest writes `test <name> ... ` before the test's own first line.
    for line in stdout.lines().filter_map(|l| l.find("RESULT ").map(|at| &l[at..])) {
        if let Some(n) = line.strip_prefix("RESULT cluster_queries=") {
            cluster_queries = n.trim().parse().ok();
        } else if let Some(q) = line.strip_prefix("RESULT query=") {
            names.push(q.trim().to_owned());
        }
    }
    Some(Counts { cluster_queries: cluster_queries?, names })
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
}

// ----- the inner run, inside the namespace -----

#[test]
#[ignore = "runs inside the network namespace made by getent_search_walk_asks_the_cluster_zone_at_most_three_times"]
fn search_walk_in_namespace() {
    let Ok(mode) = std::env::var(INNER_ENV) else {
        return;
    };
    let schema = mode == "on";
    let up = FakeUpstream::start_on(SocketAddr::from(([127, 0, 0, 1], 0))).expect("fake upstream in the namespace");
    // The cluster zone as CoreDNS serves it: apex SOA (TTL and MINIMUM = the plugin's 5 s TTL),
    // two Services; anything else there is NXDOMAIN.
    up.set_zone_soa("cluster.local", 5, 5);
    up.answer_records("cluster.local", RecordType::SOA, vec![cluster_soa()]);
    up.answer("kubernetes.default.svc.cluster.local", RecordType::A, &["10.96.0.1"], 5);
    up.answer(&format!("web.{NAMESPACE}.svc.cluster.local"), RecordType::A, &["10.96.0.20"], 5);
    // The external zone, served by the same upstream through the "." zone.
    up.set_zone_soa("example.test", 300, 60);
    up.answer(EXTERNAL, RecordType::A, &[EXTERNAL_V4], 300);
    up.answer(EXTERNAL, RecordType::AAAA, &[EXTERNAL_V6], 300);

    let config = format!(
        r#"listen: ["{{DNS}}"]
zones:
  - name: cluster.local
    upstreams: ["{up}"]
    transport: tcp
    max_ttl_secs: 30
    denial_max_ttl_secs: 5
    kubernetes_schema: {schema}
  - name: "."
    upstreams: ["{up}"]
    transport: udp
admin:
  listen: "{{ADMIN}}"
"#,
        up = up.addr()
    );
    let dns = SocketAddr::from(([127, 0, 0, 1], 53));
    let admin = SocketAddr::from(([127, 0, 0, 1], 9253));
    let daemon = Daemon::spawn_at(&config, dns, admin, &[]);
    daemon.wait_ready(Duration::from_secs(10));

    // The external lookup on a cold cache (readiness fetched the zone's SOA, counted below).
    let addrs = getent_ahosts(EXTERNAL);
    assert!(
        addrs.contains(&EXTERNAL_V4.to_owned()) && addrs.contains(&EXTERNAL_V6.to_owned()),
        "getent ahosts {EXTERNAL} answered {addrs:?}; log:\n{}",
        daemon.log()
    );
    let cluster: Vec<LoggedQuery> = up.log().into_iter().filter(|q| in_cluster_zone(&q.name)).collect();
    println!("RESULT cluster_queries={}", cluster.len());
    for q in &cluster {
        println!("RESULT query={}/{}", q.name, q.rtype);
    }
    let external_asked = up.query_count(EXTERNAL, RecordType::A) + up.query_count(EXTERNAL, RecordType::AAAA);
    assert_eq!(external_asked, 2, "the external name is asked once per type");

    if schema {
        assert!(cluster.len() <= MAX_CLUSTER_QUERIES, "cluster zone asked {} times: {cluster:?}", cluster.len());
        // Only the SOA and the one expansion that could be a name (`api` endpoint of Service
        // `example` in Namespace `test`) went upstream.
        let expected_forwarded = format!("{EXTERNAL}.svc.cluster.local");
        assert!(
            cluster.iter().all(|q| q.name == "cluster.local" || q.name == expected_forwarded),
            "unexpected upstream queries: {cluster:?}"
        );
        let synthesized = metric_sum(&daemon.metrics(), "nodedns_local_synthesized_total", &[]);
        assert!(synthesized >= 4.0, "two expansions × A/AAAA synthesized, metric says {synthesized}");

        // A synthesized answer as a client sees it: NXDOMAIN with the zone's SOA, not asked upstream.
        let before = up.log().len();
        let r = query_udp(dns, &format!("{EXTERNAL}.cluster.local"), RecordType::TXT, T).unwrap();
        assert_eq!(r.metadata.response_code, ResponseCode::NXDomain);
        assert!(r.answers.is_empty());
        assert!(
            matches!(r.authorities.as_slice(), [soa] if soa.name == Name::from_ascii("cluster.local.").unwrap()
                && matches!(soa.data, RData::SOA(_))),
            "authority: {:?}",
            r.authorities
        );
        assert_eq!(up.log().len(), before, "a synthesized name is never asked upstream");
    }

    // In-cluster names still resolve through the same search list: a Service in the pod's own
    // namespace (first expansion) and `kubernetes.default` (second expansion).
    for (short, want) in [("web", "10.96.0.20"), ("kubernetes.default", "10.96.0.1")] {
        let addrs = getent_ahosts(short);
        assert!(addrs.contains(&want.to_owned()), "getent ahosts {short} answered {addrs:?}");
    }
    drop(daemon);
}

/// The addresses `getent ahosts NAME` prints (one per line, first column), deduplicated.
fn getent_ahosts(name: &str) -> Vec<String> {
    let out = Command::new("getent").args(["ahosts", name]).output().expect("getent");
    let mut addrs: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect();
    addrs.dedup();
    addrs
}

fn in_cluster_zone(name: &str) -> bool {
    name == "cluster.local" || name.ends_with(".cluster.local")
}

/// The SOA CoreDNS's kubernetes plugin serves at the apex (TTL and MINIMUM = its `ttl`, 5 s).
fn cluster_soa() -> Record {
    let n = |s: &str| Name::from_ascii(s).unwrap();
    let soa = SOA::new(n("ns.dns.cluster.local."), n("hostmaster.cluster.local."), 1_700_000_000, 7200, 1800, 86400, 5);
    Record::from_rdata(n("cluster.local."), 5, RData::SOA(soa))
}
