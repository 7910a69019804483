//! Fault isolation (issue 13): a fault stays as small as it is. One broken name, one broken record
//! type, one bad endpoint, one busy upstream must never become the node's outage. Each row breaks
//! ONE thing and shows that everything else kept working. Every wait and load loop is bounded.

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RecordType};
use nodedns_e2e::testkit::{Behaviour, FakeUpstream, OverloadModel, query_udp, wait_until};
use nodedns_e2e::{Daemon, a_addresses, client_socket, free_addr, metric_sum};

const T: Duration = Duration::from_secs(5);

/// The shipped zone shape: cluster.local (schema relief on), the reverse zones and "." all
/// forwarding to one address (the kube-dns-upstream Service), over TCP.
fn shipped_shape(upstreams: &[SocketAddr], extra: &str) -> String {
    let list = upstreams.iter().map(|u| format!("\"{u}\"")).collect::<Vec<_>>().join(", ");
    let zone =
        |name: &str, more: &str| format!("  - name: \"{name}\"\n    upstreams: [{list}]\n    transport: tcp\n{more}");
    format!(
        "listen: [\"{{DNS}}\"]\ncache:\n  max_bytes: 33554432\n  min_ttl_secs: 5\nzones:\n{}{}{}{}admin:\n  listen: \"{{ADMIN}}\"\n{extra}",
        zone("cluster.local", "    max_ttl_secs: 30\n    denial_max_ttl_secs: 5\n    kubernetes_schema: true\n"),
        zone("in-addr.arpa", ""),
        zone("ip6.arpa", ""),
        zone(".", ""),
    )
}

/// A fake CoreDNS answering `n` fresh external names (A and AAAA) and reverse lookups.
fn coredns(n: usize) -> FakeUpstream {
    let up = FakeUpstream::start();
    up.set_zone_soa("cluster.local", 5, 5);
    for i in 0..n {
        up.answer(&format!("fresh{i}.example.com"), RecordType::A, &[&format!("10.1.{}.{}", i / 250, i % 250 + 1)], 30);
        up.answer(&format!("fresh{i}.example.com"), RecordType::AAAA, &["2001:db8::1"], 30);
    }
    up.answer("web.default.svc.cluster.local", RecordType::A, &["10.96.1.1"], 30);
    up.answer("web.default.svc.cluster.local", RecordType::AAAA, &["fd00::1"], 30);
    up.answer("1.1.96.10.in-addr.arpa", RecordType::PTR, &["web.default.svc.cluster.local."], 30);
    up
}

/// Resolves `names` (A and AAAA each, 32 at a time as a busy node would) and returns the failures.
fn resolve_all(dns: SocketAddr, names: &[String]) -> Vec<String> {
    let mut failures = Vec::new();
    for chunk in names.chunks(32) {
        let handles: Vec<_> = chunk
            .iter()
            .flat_map(|n| [(n.clone(), RecordType::A), (n.clone(), RecordType::AAAA)])
            .map(|(n, t)| {
                std::thread::spawn(move || {
                    let r = query_udp(dns, &n, t, T);
                    match r {
                        Ok(m) if m.metadata.response_code == ResponseCode::NoError && !m.answers.is_empty() => None,
                        Ok(m) => Some(format!("{n} {t}: {}", m.metadata.response_code)),
                        Err(e) => Some(format!("{n} {t}: {e}")),
                    }
                })
            })
            .collect();
        failures.extend(handles.into_iter().filter_map(|h| h.join().unwrap()));
    }
    failures
}

/// Row 1: after a pod retries a name that SERVFAILs / REFUSEs / never answers 10 times (A and
/// AAAA, as glibc asks), 150 fresh names through the same upstream all resolve, and so does a
/// reverse lookup (in the shipped config every external name and every reverse lookup shares
/// that endpoint).
#[test]
fn one_broken_name_stays_that_names() {
    for (label, broken) in
        [("SERVFAIL", Behaviour::ServFail), ("REFUSED", Behaviour::Refused), ("no answer", Behaviour::Drop)]
    {
        let up = coredns(150);
        up.behaviour("broken.example.org", RecordType::A, broken.clone());
        up.behaviour("broken.example.org", RecordType::AAAA, broken.clone());
        let d = Daemon::start(&shipped_shape(&[up.addr()], ""));
        let started = Instant::now();
        for _ in 0..10 {
            for t in [RecordType::A, RecordType::AAAA] {
                let r = query_udp(d.dns, "broken.example.org", t, T).unwrap_or_else(|e| panic!("{label}: {e}"));
                assert_eq!(r.metadata.response_code, ResponseCode::ServFail, "{label}");
            }
        }
        let retries_took = started.elapsed();
        let names: Vec<String> = (0..150).map(|i| format!("fresh{i}.example.com")).collect();
        let started = Instant::now();
        let failures = resolve_all(d.dns, &names);
        let fresh_took = started.elapsed();
        assert!(
            failures.is_empty(),
            "{label}: {} of 300 fresh lookups failed: {:?}",
            failures.len(),
            &failures[..failures.len().min(5)]
        );
        let ptr = query_udp(d.dns, "1.1.96.10.in-addr.arpa", RecordType::PTR, T).unwrap();
        assert_eq!(ptr.metadata.response_code, ResponseCode::NoError, "{label}: reverse lookup");
        let m = d.metrics();
        assert_eq!(metric_sum(&m, "nodedns_upstream_ejections_total", &[]), 0.0, "{label}: an endpoint was ejected");
        assert!(metric_sum(&m, "nodedns_cache_failure_entries_total", &[]) >= 1.0, "{label}: failure not cached");
        println!(
            "row broken-name {label}: 20 retries in {retries_took:?}, then 300 fresh lookups: 0 failed ({fresh_took:?}); upstream saw {} queries for the broken name",
            up.query_count("broken.example.org", RecordType::A)
                + up.query_count("broken.example.org", RecordType::AAAA)
        );
    }
}

/// Row 2: a name whose AAAA is never answered (or SERVFAILs): A is answered within the pair
/// wait, and again from cache in < 100 ms; AAAA gets SERVFAIL within the budget, never a hang.
#[test]
fn a_broken_record_type_stays_that_types() {
    for (label, broken) in [("AAAA dropped", Behaviour::Drop), ("AAAA SERVFAIL", Behaviour::ServFail)] {
        let up = coredns(0);
        up.answer("v4only.example.com", RecordType::A, &["192.0.2.44"], 300);
        up.answer("v4only.example.com", RecordType::AAAA, &["2001:db8::44"], 300);
        up.behaviour("v4only.example.com", RecordType::AAAA, broken);
        let d = Daemon::start(&shipped_shape(&[up.addr()], ""));
        let started = Instant::now();
        let r = query_udp(d.dns, "v4only.example.com", RecordType::A, T).unwrap();
        let first = started.elapsed();
        assert_eq!(a_addresses(&r), ["192.0.2.44"], "{label}");
        assert!(first < Duration::from_millis(2500), "{label}: A took {first:?}, more than the budget");
        let started = Instant::now();
        let aaaa = query_udp(d.dns, "v4only.example.com", RecordType::AAAA, T).unwrap();
        let aaaa_took = started.elapsed();
        assert_eq!(aaaa.metadata.response_code, ResponseCode::ServFail, "{label}");
        assert!(aaaa_took < Duration::from_millis(2600), "{label}: AAAA took {aaaa_took:?}");
        let started = Instant::now();
        let again = query_udp(d.dns, "v4only.example.com", RecordType::A, T).unwrap();
        let cached = started.elapsed();
        assert_eq!(a_addresses(&again), ["192.0.2.44"], "{label}");
        assert!(cached < Duration::from_millis(100), "{label}: A from cache took {cached:?}");
        // The two members still expire together: at most min_ttl (5 s), never A's 300 s.
        assert!(again.answers[0].ttl <= 5, "{label}: A served with TTL {}", again.answers[0].ttl);
        println!(
            "row broken-type {label}: A in {first:?}, AAAA SERVFAIL in {aaaa_took:?}, A again in {cached:?} (TTL {})",
            again.answers[0].ttl
        );
    }
}

/// Row 3: a pod retrying a SERVFAIL name 50 times a second for 4 s costs the upstream at most
/// 20 queries (failure entries, RFC 9520: 1 s, 2 s, 4 s …).
#[test]
fn a_retry_loop_on_a_failing_name_is_absorbed() {
    let up = coredns(0);
    up.behaviour("failing.example.net", RecordType::A, Behaviour::ServFail);
    up.behaviour("failing.example.net", RecordType::AAAA, Behaviour::ServFail);
    let d = Daemon::start(&shipped_shape(&[up.addr()], ""));
    let started = Instant::now();
    let mut sent = 0;
    while started.elapsed() < Duration::from_secs(4) && sent < 200 {
        let r = query_udp(d.dns, "failing.example.net", RecordType::A, T).unwrap();
        assert_eq!(r.metadata.response_code, ResponseCode::ServFail);
        sent += 1;
        std::thread::sleep(Duration::from_millis(20));
    }
    let upstream =
        up.query_count("failing.example.net", RecordType::A) + up.query_count("failing.example.net", RecordType::AAAA);
    println!("row retry-loop: {sent} client queries in 4 s cost the upstream {upstream} queries");
    assert!(sent >= 100, "only {sent} queries sent");
    assert!(upstream <= 20, "{upstream} upstream queries");
    assert!(d.metric("nodedns_cache_failure_answers_total") >= (sent - 10) as f64);
}

/// Row 4: one of three endpoints SERVFAILs everything: it is ejected (its peers answer what it
/// fails), and clients see 0 failures — none before ejection either, thanks to the retry on
/// another endpoint.
#[test]
fn one_of_three_endpoints_servfailing_everything_is_ejected() {
    let ups: Vec<FakeUpstream> = (0..3).map(|_| coredns(300)).collect();
    ups[0].set_default_behaviour(Behaviour::ServFail);
    let addrs: Vec<SocketAddr> = ups.iter().map(|u| u.addr()).collect();
    let d = Daemon::start(&shipped_shape(&addrs, ""));
    let names: Vec<String> = (0..300).map(|i| format!("fresh{i}.example.com")).collect();
    let before = resolve_all(d.dns, &names[..100]);
    let m = d.metrics();
    let bad = format!("endpoint=\"{}\"", ups[0].addr());
    assert_eq!(
        metric_sum(&m, "nodedns_upstream_healthy", &[&bad]),
        0.0,
        "the SERVFAILing endpoint is still in rotation"
    );
    for u in &ups[1..] {
        let good = format!("endpoint=\"{}\"", u.addr());
        assert!(metric_sum(&m, "nodedns_upstream_healthy", &[&good]) > 0.0, "a healthy endpoint was ejected");
    }
    let bad_before = ups[0].log().len();
    let after = resolve_all(d.dns, &names[100..]);
    println!(
        "row one-of-three SERVFAIL: {} failures in the first 200 lookups, {} in the 400 after ejection; the bad endpoint saw {} queries before, {} after",
        before.len(),
        after.len(),
        bad_before,
        ups[0].log().len() - bad_before
    );
    assert!(before.is_empty(), "{before:?}");
    assert!(after.is_empty(), "{after:?}");
}

/// Row 4b: a name that fails on every endpoint is that name's outcome: no endpoint is ejected.
#[test]
fn a_name_failing_on_every_endpoint_ejects_none() {
    let ups: Vec<FakeUpstream> = (0..3).map(|_| coredns(50)).collect();
    for u in &ups {
        u.behaviour("broken.example.org", RecordType::A, Behaviour::ServFail);
        u.behaviour("broken.example.org", RecordType::AAAA, Behaviour::Drop);
    }
    let addrs: Vec<SocketAddr> = ups.iter().map(|u| u.addr()).collect();
    let d = Daemon::start(&shipped_shape(&addrs, ""));
    for i in 0..6 {
        for t in [RecordType::A, RecordType::AAAA] {
            let _ = query_udp(d.dns, "broken.example.org", t, T);
        }
        std::thread::sleep(Duration::from_millis(if i % 2 == 0 { 0 } else { 1100 }));
    }
    let names: Vec<String> = (0..50).map(|i| format!("fresh{i}.example.com")).collect();
    assert!(resolve_all(d.dns, &names).is_empty());
    assert_eq!(metric_sum(&d.metrics(), "nodedns_upstream_ejections_total", &[]), 0.0);
}

/// One query over UDP from `socket`, unanswered; its ID is `id`.
fn send_query(socket: &UdpSocket, to: SocketAddr, id: u16, name: &str) {
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
    socket.send_to(&m.to_vec().unwrap(), to).unwrap();
}

/// What a storm of `names` unique names, all sent at once from one socket, got back within
/// `wait`: answers by rcode.
fn storm(to: SocketAddr, names: usize, wait: Duration) -> HashMap<String, usize> {
    let socket = client_socket();
    socket.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    for i in 0..names {
        send_query(&socket, to, i as u16, &format!("storm{i}.example.com."));
        if i % 500 == 499 {
            // Let the server's socket buffer drain a little: the storm is the outstanding
            // count, not datagrams lost before they are read.
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    let mut rcodes = HashMap::new();
    let mut got = 0;
    let deadline = Instant::now() + wait;
    let mut buf = vec![0u8; 4096];
    while got < names && Instant::now() < deadline {
        if let Ok(n) = socket.recv(&mut buf)
            && let Ok(m) = Message::from_vec(&buf[..n])
        {
            *rcodes.entry(m.metadata.response_code.to_string()).or_default() += 1;
            got += 1;
        }
    }
    rcodes.insert("unanswered".into(), names - got);
    rcodes
}

/// Unbound as a caching forwarder over TCP (`tcp-upstream: yes`), for comparison. Killed on drop.
struct Unbound {
    child: Child,
    addr: SocketAddr,
    dir: PathBuf,
}

impl Unbound {
    fn start(upstream: SocketAddr) -> Unbound {
        assert!(nodedns_e2e::have("unbound"), "unbound (package unbound) must be installed");
        let addr = free_addr();
        let dir = std::env::temp_dir().join(format!("nodedns-storm-unbound-{}-{}", std::process::id(), addr.port()));
        std::fs::create_dir_all(&dir).unwrap();
        // Stock settings but for what a node cache needs: loopback, no chroot, one thread per
        // core, and enough query slots per thread for a node's pods (the default 1024 would
        // itself turn most of the storm away before it reaches the upstream).
        let conf = format!(
            "server:\n  interface: {ip}@{port}\n  port: {port}\n  do-ip6: no\n  username: \"\"\n  chroot: \"\"\n  directory: \"{d}\"\n  pidfile: \"{d}/unbound.pid\"\n  use-syslog: no\n  logfile: \"{d}/unbound.log\"\n  verbosity: 1\n  num-threads: 2\n  num-queries-per-thread: 4096\n  outgoing-num-tcp: 256\n  so-rcvbuf: 8m\n  so-reuseport: no\n  module-config: \"iterator\"\n  do-not-query-localhost: no\n  access-control: 127.0.0.0/8 allow\n  tcp-upstream: yes\nremote-control:\n  control-enable: no\nforward-zone:\n  name: \".\"\n  forward-addr: {up}@{up_port}\n",
            ip = addr.ip(),
            port = addr.port(),
            d = dir.display(),
            up = upstream.ip(),
            up_port = upstream.port(),
        );
        std::fs::write(dir.join("unbound.conf"), conf).unwrap();
        // Unbound lowers num-queries-per-thread to fit the open-file limit it is given; a node
        // cache runs with a high one (as nodedns raises its own to the hard limit).
        let child = Command::new("sh")
            .arg("-c")
            .arg(format!("ulimit -n \"$(ulimit -Hn)\" && exec unbound -d -c {}", dir.join("unbound.conf").display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("stderr")).unwrap())
            .spawn()
            .expect("spawn unbound");
        let u = Unbound { child, addr, dir };
        assert!(
            wait_until(Duration::from_secs(10), || query_udp(
                addr,
                "cached.example.com",
                RecordType::A,
                Duration::from_millis(300)
            )
            .is_ok()),
            "unbound did not start: {}",
            std::fs::read_to_string(u.dir.join("stderr")).unwrap_or_default()
        );
        u
    }
}

impl Drop for Unbound {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// An upstream that dies (stops answering for 10 s, as if OOM-killed) once it holds more than
/// 2,000 queries, and whose latency grows with what it holds.
fn dying_upstream() -> FakeUpstream {
    let up = FakeUpstream::start();
    up.answer("cached.example.com", RecordType::A, &["192.0.2.80"], 3600);
    up.answer("cached.example.com", RecordType::AAAA, &["2001:db8::80"], 3600);
    up.set_default_behaviour(Behaviour::Delay(Duration::from_millis(20)));
    up
}

const DIE_ABOVE: usize = 2000;
const STORM_NAMES: usize = 6000;

fn overload() -> OverloadModel {
    OverloadModel {
        die_above: DIE_ABOVE,
        dead_for: Duration::from_secs(10),
        latency_per_held: Duration::from_micros(200),
    }
}

/// Row 5: a storm of 6,000 outstanding unique names from one node. nodedns never has more than
/// `limits.max_upstream_inflight` queries at the endpoint, so the upstream never dies, every
/// query gets an answer (the name's, or REFUSED when shed), and a cached name keeps answering
/// throughout. The same storm through Unbound (`tcp-upstream: yes`) is measured alongside.
#[test]
fn a_storm_of_unique_names_never_kills_the_upstream() {
    let up = dying_upstream();
    let d = Daemon::start(&shipped_shape(&[up.addr()], ""));
    assert_eq!(a_addresses(&query_udp(d.dns, "cached.example.com", RecordType::A, T).unwrap()), ["192.0.2.80"]);
    up.set_overload(Some(overload()));

    // A pod keeps asking the cached name during the storm.
    let stop = Arc::new(AtomicBool::new(false));
    let (asked, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let watcher = {
        let (stop, asked, failed, dns) = (stop.clone(), asked.clone(), failed.clone(), d.dns);
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(30);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                asked.fetch_add(1, Ordering::Relaxed);
                let ok = query_udp(dns, "cached.example.com", RecordType::A, Duration::from_secs(1))
                    .is_ok_and(|m| a_addresses(&m) == ["192.0.2.80"]);
                if !ok {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    let rcodes = storm(d.dns, STORM_NAMES, Duration::from_secs(10));
    stop.store(true, Ordering::Relaxed);
    watcher.join().unwrap();
    let shed = metric_sum(&d.metrics(), "nodedns_shed_total", &["reason=\"upstream_inflight\""]);
    println!(
        "row storm nodedns: {STORM_NAMES} unique names at once -> {rcodes:?}; upstream peak held {} (dies above {DIE_ABOVE}), deaths {}; shed upstream_inflight {shed}; cached name {} asked, {} failed",
        up.peak_held_queries(),
        up.overload_deaths(),
        asked.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed)
    );
    assert_eq!(up.overload_deaths(), 0, "nodedns killed the upstream");
    assert!(up.peak_held_queries() <= 1000, "peak {}", up.peak_held_queries());
    assert_eq!(failed.load(Ordering::Relaxed), 0, "the cached name failed during the storm");
    assert!(asked.load(Ordering::Relaxed) > 20);
    // The storm's names do not exist: resolved means NXDOMAIN from the upstream.
    assert!(rcodes.get("Non-Existent Domain").copied().unwrap_or(0) > 0, "{rcodes:?}");
    assert_eq!(rcodes.get("unanswered").copied(), Some(0), "{rcodes:?}");
    assert!(shed > 0.0, "nothing was shed: the storm did not reach the limit");

    // The same storm through unbound.
    let up2 = dying_upstream();
    let u = Unbound::start(up2.addr());
    up2.set_overload(Some(overload()));
    let rcodes = storm(u.addr, STORM_NAMES, Duration::from_secs(10));
    println!(
        "row storm unbound (tcp-upstream): {STORM_NAMES} unique names at once -> {rcodes:?}; upstream peak held {}, deaths {}",
        up2.peak_held_queries(),
        up2.overload_deaths()
    );
    let _ = Command::new("kill").arg(u.child.id().to_string()).status();
    std::thread::sleep(Duration::from_millis(500));
    for l in
        std::fs::read_to_string(u.dir.join("unbound.log")).unwrap_or_default().lines().filter(|l| l.contains("stats"))
    {
        println!("unbound: {l}");
    }
    // Reported, not asserted: what unbound does with the storm depends on its own request-list
    // limits (its stats above say how many it dropped as `exceeded`). The issue expected it to
    // kill the upstream; the closing note says what it did here.
}

/// Row 6: one client's flood of new names, past `limits.max_inflight`, must not cost other pods
/// the names they had: a cached name that has just expired is answered from stale data
/// (RFC 8767), never REFUSED, while the flood's own excess is.
#[test]
fn a_flood_of_new_names_never_costs_a_hot_name_its_stale_answer() {
    let up = coredns(0);
    up.answer("hot.example.com", RecordType::A, &["192.0.2.7"], 1);
    up.answer("hot.example.com", RecordType::AAAA, &["2001:db8::7"], 1);
    let d = Daemon::start(
        &shipped_shape(&[up.addr()], "limits:\n  max_inflight: 20\n")
            .replace("  min_ttl_secs: 5\n", "  min_ttl_secs: 1\n  stale_answer_timeout_ms: 300\n"),
    );
    assert_eq!(a_addresses(&query_udp(d.dns, "hot.example.com", RecordType::A, T).unwrap()), ["192.0.2.7"]);
    std::thread::sleep(Duration::from_millis(1100));
    // The upstream is slow now: the flood's queries pile up past max_inflight.
    up.set_default_behaviour(Behaviour::Delay(Duration::from_secs(2)));
    let socket = client_socket();
    for i in 0..200u16 {
        send_query(&socket, d.dns, i, &format!("flood{i}.example.net."));
    }
    std::thread::sleep(Duration::from_millis(100));
    let mut stale = 0;
    for _ in 0..10 {
        let r = query_udp(d.dns, "hot.example.com", RecordType::A, T).unwrap();
        assert_eq!(r.metadata.response_code, ResponseCode::NoError, "the hot name was shed");
        assert_eq!(a_addresses(&r), ["192.0.2.7"]);
        stale += (r.answers[0].ttl == 30) as usize;
    }
    let shed = metric_sum(&d.metrics(), "nodedns_shed_total", &["reason=\"inflight\""]);
    println!(
        "row flood-vs-hot-name: 200 new names past max_inflight 20 (shed {shed}); hot name 10/10 answered, {stale} stale"
    );
    assert!(shed > 0.0, "the flood never reached the bound");
}
