//! Fault injection (issue 4): serve-stale, fail-fast, recovery, prefetch, coalescing, endpoint
//! ejection and bounded memory under a flood. Every wait is bounded.

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RecordType};
use nodedns_e2e::testkit::{Behaviour, FakeUpstream, query_udp};
use nodedns_e2e::{Daemon, client_socket, metric_sum, metric_value};

fn config(upstreams: &[SocketAddr], extra_zone: &str, extra: &str) -> String {
    let list = upstreams.iter().map(|u| format!("\"{u}\"")).collect::<Vec<_>>().join(", ");
    format!(
        r#"listen: ["{{DNS}}"]
cache:
  max_bytes: 16777216
  min_ttl_secs: 1
  max_ttl_secs: 3600
  denial_max_ttl_secs: 60
  max_stale_secs: 3600
  stale_answer_timeout_ms: 300
zones:
  - name: "."
    upstreams: [{list}]
    transport: tcp
    query_timeout_ms: 500
{extra_zone}admin:
  listen: "{{ADMIN}}"
{extra}"#
    )
}

fn rcode_and_ttl(m: &Message) -> (ResponseCode, Option<u32>) {
    (m.metadata.response_code, m.answers.first().map(|r| r.ttl))
}

/// Asks for `name` and returns (rcode, first TTL, how long it took).
fn ask(d: &Daemon, name: &str, t: RecordType) -> (ResponseCode, Option<u32>, Duration) {
    let start = Instant::now();
    let m = query_udp(d.dns, name, t, Duration::from_secs(5)).unwrap_or_else(|e| panic!("{name}: {e}"));
    let (r, ttl) = rcode_and_ttl(&m);
    (r, ttl, start.elapsed())
}

#[derive(Clone, Copy, Debug)]
enum Fault {
    Killed,
    Blackholed,
    ServFail,
    ClosesMidStream,
    AnswersAfter3s,
}

fn fault_scenario(fault: Fault) {
    let up = FakeUpstream::start();
    let addr = up.addr();
    for i in 0..5 {
        up.answer(&format!("cached{i}.example"), RecordType::A, &["192.0.2.1"], 1);
        up.answer(&format!("cached{i}.example"), RecordType::AAAA, &["2001:db8::1"], 1);
    }
    up.answer("later.example", RecordType::A, &["192.0.2.9"], 300);
    up.answer("later.example", RecordType::AAAA, &["2001:db8::9"], 300);
    let d = Daemon::start(&config(&[addr], "", ""));
    for i in 0..5 {
        assert_eq!(ask(&d, &format!("cached{i}.example"), RecordType::A).0, ResponseCode::NoError);
    }
    // Let the entries expire (TTL 1 s).
    std::thread::sleep(Duration::from_millis(1300));

    let mut up = Some(up);
    match fault {
        Fault::Killed => drop(up.take()),
        Fault::Blackholed => up.as_ref().unwrap().set_default_behaviour(Behaviour::Drop),
        Fault::ServFail => up.as_ref().unwrap().set_default_behaviour(Behaviour::ServFail),
        Fault::ClosesMidStream => up.as_ref().unwrap().set_default_behaviour(Behaviour::CloseConnection),
        Fault::AnswersAfter3s => up.as_ref().unwrap().set_default_behaviour(Behaviour::Delay(Duration::from_secs(3))),
    }

    // Cached names keep resolving from stale data, well within a client's 5 s timeout.
    for i in 0..5 {
        for t in [RecordType::A, RecordType::AAAA] {
            let (rcode, ttl, took) = ask(&d, &format!("cached{i}.example"), t);
            assert_eq!(rcode, ResponseCode::NoError, "{fault:?}: stale answer expected");
            assert_eq!(ttl, Some(30), "{fault:?}: stale answers carry TTL 30 (RFC 8767)");
            assert!(took < Duration::from_secs(2), "{fault:?}: stale answer took {took:?}");
        }
    }
    // New names fail with SERVFAIL, and fast.
    let mut slowest = Duration::ZERO;
    for i in 0..5 {
        let (rcode, _, took) = ask(&d, &format!("new{i}.example"), RecordType::A);
        assert_eq!(rcode, ResponseCode::ServFail, "{fault:?}: new name");
        slowest = slowest.max(took);
    }
    assert!(slowest < Duration::from_secs(2), "{fault:?}: SERVFAIL took {slowest:?}");
    assert!(d.metric("nodedns_cache_stale_answers_total") >= 10.0);

    // Recovery is automatic once the upstream is back.
    let restored = match up {
        Some(u) => {
            u.set_default_behaviour(Behaviour::Answer);
            u
        }
        None => FakeUpstream::start_on(addr).expect("restart the upstream on its address"),
    };
    restored.answer("later.example", RecordType::A, &["192.0.2.9"], 300);
    restored.answer("later.example", RecordType::AAAA, &["2001:db8::9"], 300);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (rcode, ttl, _) = ask(&d, "later.example", RecordType::A);
        if rcode == ResponseCode::NoError && ttl.is_some_and(|t| t > 30) {
            break;
        }
        assert!(Instant::now() < deadline, "{fault:?}: no recovery within 10 s: last {rcode:?} ttl {ttl:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn upstream_killed() {
    fault_scenario(Fault::Killed);
}

#[test]
fn upstream_blackholed() {
    fault_scenario(Fault::Blackholed);
}

#[test]
fn upstream_answers_servfail() {
    fault_scenario(Fault::ServFail);
}

#[test]
fn upstream_closes_connections_mid_stream() {
    fault_scenario(Fault::ClosesMidStream);
}

#[test]
fn upstream_answers_after_3s() {
    fault_scenario(Fault::AnswersAfter3s);
}

#[test]
fn ten_thousand_identical_misses_cost_one_pair() {
    let up = FakeUpstream::start();
    up.answer("hot.example", RecordType::A, &["192.0.2.5"], 300);
    up.answer("hot.example", RecordType::AAAA, &["2001:db8::5"], 300);
    up.behaviour("hot.example", RecordType::A, Behaviour::Delay(Duration::from_millis(300)));
    up.behaviour("hot.example", RecordType::AAAA, Behaviour::Delay(Duration::from_millis(300)));
    // A generous attempt timeout: this test is about coalescing, and the flood test may be
    // loading the machine at the same time.
    let cfg = config(&[up.addr()], "", "limits:\n  max_inflight: 50000\n")
        .replace("query_timeout_ms: 500", "query_timeout_ms: 3000");
    let d = Daemon::start(&cfg);
    up.clear_log();
    let sockets: Vec<UdpSocket> = (0..8).map(|_| client_socket()).collect();
    let mut q = Message::new(0, MessageType::Query, OpCode::Query);
    q.add_query(Query::query(Name::from_ascii("hot.example.").unwrap(), RecordType::A));
    for i in 0..10_000u16 {
        q.metadata.id = i;
        q.queries[0].set_query_type(if i % 2 == 0 { RecordType::A } else { RecordType::AAAA });
        sockets[i as usize % 8].send_to(&q.to_vec().unwrap(), d.dns).unwrap();
    }
    let mut answered = std::collections::HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut buf = [0u8; 512];
    for s in &sockets {
        s.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
    }
    while answered.len() < 10_000 && Instant::now() < deadline {
        for s in &sockets {
            while let Ok(n) = s.recv(&mut buf) {
                let m = Message::from_vec(&buf[..n]).unwrap();
                assert_eq!(m.metadata.response_code, ResponseCode::NoError);
                assert_eq!(m.answers.len(), 1);
                answered.insert(m.metadata.id);
            }
        }
    }
    assert_eq!(answered.len(), 10_000);
    assert_eq!(up.query_count("hot.example", RecordType::A), 1, "one A upstream");
    assert_eq!(up.query_count("hot.example", RecordType::AAAA), 1, "one AAAA upstream");
}

#[test]
fn popular_entries_are_prefetched_and_never_miss() {
    let up = FakeUpstream::start();
    up.answer("popular.example", RecordType::A, &["192.0.2.7"], 10);
    up.answer("popular.example", RecordType::AAAA, &["2001:db8::7"], 10);
    let d = Daemon::start(&config(&[up.addr()], "", ""));
    let misses_at_start = d.metric("nodedns_cache_misses_total");
    // Ask every 250 ms for 14 s: across at least one expiry of the 10 s TTL.
    let end = Instant::now() + Duration::from_secs(14);
    let mut min_ttl = u32::MAX;
    while Instant::now() < end {
        let (rcode, ttl, _) = ask(&d, "popular.example", RecordType::A);
        assert_eq!(rcode, ResponseCode::NoError);
        min_ttl = min_ttl.min(ttl.unwrap());
        std::thread::sleep(Duration::from_millis(250));
    }
    let misses = d.metric("nodedns_cache_misses_total") - misses_at_start;
    assert_eq!(misses, 1.0, "only the very first query missed");
    assert!(d.metric("nodedns_cache_prefetches_total") >= 1.0);
    assert!(up.query_count("popular.example", RecordType::A) >= 2, "refreshed upstream");
    assert!(up.query_count("popular.example", RecordType::AAAA) >= 2, "refreshed as a pair");
    assert!(min_ttl >= 1, "never served an expired answer");
}

#[test]
fn a_flaky_endpoint_is_ejected_and_named_in_metrics() {
    let good1 = FakeUpstream::start();
    let good2 = FakeUpstream::start();
    let bad = FakeUpstream::start();
    bad.set_default_behaviour(Behaviour::DropFraction(0.3));
    let d = Daemon::start(&config(&[good1.addr(), good2.addr(), bad.addr()], "", ""));
    let mut failures_first = 0;
    let mut failures_last = 0;
    let total = 600;
    // Six queries at a time, as a node's pods send them: with one at a time no endpoint ever has
    // a query in flight when the next is placed, and power-of-two selection (in-flight x mean
    // latency) could leave the slowest endpoint without traffic, and so without evidence.
    let dns = d.dns;
    for chunk in (0..total).collect::<Vec<usize>>().chunks(6) {
        let handles: Vec<_> = chunk
            .iter()
            .map(|&i| {
                std::thread::spawn(move || {
                    // Distinct names, so every query goes upstream.
                    let m = query_udp(dns, &format!("n{i}.example"), RecordType::TXT, Duration::from_secs(5));
                    let failed = match m {
                        Ok(m) => m.metadata.response_code == ResponseCode::ServFail,
                        Err(_) => true,
                    };
                    (i, failed)
                })
            })
            .collect();
        for h in handles {
            let (i, failed) = h.join().unwrap();
            if failed && i < 100 {
                failures_first += 1;
            }
            if failed && i >= total - 300 {
                failures_last += 1;
            }
        }
    }
    let m = d.metrics();
    let bad_label = format!("endpoint=\"{}\"", bad.addr());
    let bad_timeouts = metric_sum(&m, "nodedns_upstream_errors_total", &[&bad_label, "kind=\"timeout\""]);
    let bad_ejections = metric_sum(&m, "nodedns_upstream_ejections_total", &[&bad_label]);
    for good in [&good1, &good2] {
        let l = format!("endpoint=\"{}\"", good.addr());
        assert_eq!(metric_sum(&m, "nodedns_upstream_errors_total", &[&l]), 0.0, "a healthy endpoint is blamed");
        assert_eq!(metric_sum(&m, "nodedns_upstream_ejections_total", &[&l]), 0.0);
    }
    assert!(
        bad_timeouts > 0.0,
        "the bad endpoint's timeouts are counted under its name ({} queries reached it)",
        bad.log().len()
    );
    assert!(bad_ejections >= 1.0, "the bad endpoint was ejected");
    eprintln!(
        "client-visible failures: first 100 queries {failures_first}, last 300 queries {failures_last}; bad endpoint timeouts {bad_timeouts}, ejections {bad_ejections}"
    );
    assert_eq!(failures_last, 0, "after ejection no client sees a failure");
}

fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// In-flight bound used by the flood test.
const MAX_INFLIGHT: u64 = 10000;

/// Documented overhead on top of `cache.max_bytes`: a fixed base (runtime, worker buffers,
/// allocator) plus a bound per in-flight upstream query (task, fetch, buffers); see the
/// README's resource section.
const FIXED_OVERHEAD: u64 = (24 << 20) + MAX_INFLIGHT * 12 * 1024;

#[test]
fn a_flood_of_unique_names_stays_within_the_memory_budget() {
    let secs: u64 = std::env::var("NODEDNS_FLOOD_SECS").ok().and_then(|v| v.parse().ok()).unwrap_or(60);
    let up = FakeUpstream::start();
    up.answer("keep.example", RecordType::A, &["192.0.2.8"], 3600);
    up.answer("keep.example", RecordType::AAAA, &["2001:db8::8"], 3600);
    let max_bytes: u64 = 8 << 20;
    let cfg = config(&[up.addr()], "", "").replace("max_bytes: 16777216", &format!("max_bytes: {max_bytes}"));
    let cfg = format!("{cfg}limits:\n  max_inflight: {MAX_INFLIGHT}\n");
    let d = Daemon::start(&cfg);
    assert_eq!(ask(&d, "keep.example", RecordType::A).0, ResponseCode::NoError);
    let pid = d.pid();
    let dns = d.dns;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // The flood: unique names as fast as one client can send, at most 2,000 outstanding.
    let flood = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let s = client_socket();
            s.set_read_timeout(Some(Duration::from_millis(1))).unwrap();
            let mut sent = 0u64;
            let mut received = 0u64;
            let mut buf = [0u8; 1500];
            let mut q = Message::new(0, MessageType::Query, OpCode::Query);
            q.add_query(Query::query(Name::root(), RecordType::A));
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                while sent - received < 2000 {
                    let name = format!("r{:x}-{}.flood.example.", rand_u64(sent), sent);
                    q.queries[0].set_name(Name::from_ascii(&name).unwrap());
                    q.metadata.id = sent as u16;
                    let _ = s.send_to(&q.to_vec().unwrap(), dns);
                    sent += 1;
                }
                match s.recv(&mut buf) {
                    Ok(_) => received += 1,
                    // Lost or shed: don't let the window close for good.
                    Err(_) => received = received.max(sent.saturating_sub(1000)),
                }
            }
            sent
        })
    };
    let start = Instant::now();
    let mut peak = 0u64;
    let mut failures = 0;
    while start.elapsed() < Duration::from_secs(secs) {
        peak = peak.max(rss_bytes(pid));
        match query_udp(dns, "keep.example", RecordType::A, Duration::from_secs(2)) {
            Ok(m) if m.answers.len() == 1 => {}
            _ => failures += 1,
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let sent = flood.join().unwrap();
    let m = d.metrics();
    let entries = metric_value(&m, "nodedns_cache_entries").unwrap_or(0.0);
    let cache_bytes = metric_value(&m, "nodedns_cache_bytes").unwrap_or(0.0);
    eprintln!(
        "flood: {sent} unique names in {secs} s; peak RSS {} MiB (bound {} MiB + {} MiB overhead); cache {entries} entries, {cache_bytes} bytes; cached-name failures {failures}",
        peak >> 20,
        max_bytes >> 20,
        FIXED_OVERHEAD >> 20
    );
    assert!(cache_bytes <= max_bytes as f64);
    assert!(peak <= max_bytes + FIXED_OVERHEAD, "peak RSS {peak}");
    assert_eq!(failures, 0, "a cached name failed during the flood");
}

fn rand_u64(seed: u64) -> u64 {
    // splitmix64: cheap, deterministic, good enough for unique-looking labels.
    let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}
