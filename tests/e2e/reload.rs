//! Hot reload, key by key (issue 14): each LIVE key of the reload contract, changed in the config
//! file of a running daemon and applied by SIGHUP, takes effect without a restart.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use nodedns_e2e::testkit::{Behaviour, FakeUpstream, query_tcp, query_udp};
use nodedns_e2e::{Daemon, dig, render};

const T: Duration = Duration::from_secs(3);
const RELOADED: &str = "nodedns_config_reloads_total{result=\"success\"}";

/// A config with one root zone forwarding to `up`; `cache`, `zone`, `top` are YAML lines added
/// to the `cache:` section, the zone and the top level.
fn config(up: SocketAddr, cache: &str, zone: &str, top: &str) -> String {
    format!(
        r#"listen: ["{{DNS}}"]
admin:
  listen: "{{ADMIN}}"
cache:
  min_ttl_secs: 1
{cache}
zones:
  - name: "."
    upstreams: ["{up}"]
{zone}
{top}
"#
    )
}

/// Writes `template` as the daemon's config, sends SIGHUP and waits until the reload is applied.
fn reload(d: &Daemon, template: &str) {
    let before = d.metric(RELOADED);
    std::fs::write(&d.config_path, render(template, d.dns, d.admin)).unwrap();
    d.signal(1);
    let deadline = Instant::now() + Duration::from_secs(10);
    while d.metric(RELOADED) <= before {
        assert!(Instant::now() < deadline, "reload not applied; log:\n{}", d.log());
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn ttl(d: &Daemon, name: &str, rtype: RecordType) -> u32 {
    query_udp(d.dns, name, rtype, T).unwrap().answers[0].ttl
}

#[test]
fn a_lowered_max_ttl_caps_cached_answers_at_once() {
    let up = FakeUpstream::start();
    up.answer("bad.example", RecordType::A, &["192.0.2.66"], 3000);
    up.answer("bad.example", RecordType::AAAA, &["2001:db8::66"], 3000);
    up.answer("txt.example", RecordType::TXT, &["\"v\""], 3000);
    let d = Daemon::start(&config(up.addr(), "  max_ttl_secs: 3600", "", ""));
    assert!(ttl(&d, "bad.example", RecordType::A) > 2900);
    assert!(ttl(&d, "txt.example", RecordType::TXT) > 2900);

    reload(&d, &config(up.addr(), "  max_ttl_secs: 20", "", ""));
    // Served from the cache (the upstream is not asked again), with the lowered TTL; both
    // members of the A/AAAA pair alike.
    for (name, rtype) in
        [("bad.example", RecordType::A), ("bad.example", RecordType::AAAA), ("txt.example", RecordType::TXT)]
    {
        let t = ttl(&d, name, rtype);
        assert!((1..=20).contains(&t), "{name} {rtype}: TTL {t} after lowering the ceiling to 20");
    }
    assert_eq!(up.query_count("bad.example", RecordType::A), 1);
    assert_eq!(up.query_count("txt.example", RecordType::TXT), 1);
    assert!(d.log().contains("cached entries capped"), "{}", d.log());

    // A zone's own ceiling caps its names the same way.
    reload(&d, &config(up.addr(), "  max_ttl_secs: 20", "    max_ttl_secs: 5", ""));
    assert!(ttl(&d, "txt.example", RecordType::TXT) <= 5);
    assert_eq!(up.query_count("txt.example", RecordType::TXT), 1);
}

#[test]
fn max_stale_applies_to_entries_already_cached() {
    let up = FakeUpstream::start();
    up.answer("stale.example", RecordType::TXT, &["\"v\""], 1);
    let cache = "  max_stale_secs: 3600\n  stale_answer_timeout_ms: 100";
    let d = Daemon::start(&config(up.addr(), cache, "    query_timeout_ms: 300", ""));
    assert_eq!(query_udp(d.dns, "stale.example", RecordType::TXT, T).unwrap().answers.len(), 1);
    up.set_default_behaviour(Behaviour::Drop);
    std::thread::sleep(Duration::from_millis(2500));
    // Expired 1.5 s ago, upstream silent: served stale.
    let r = query_udp(d.dns, "stale.example", RecordType::TXT, T).unwrap();
    assert_eq!((r.metadata.response_code, r.answers.len()), (ResponseCode::NoError, 1), "stale data served");

    reload(
        &d,
        &config(up.addr(), "  max_stale_secs: 1\n  stale_answer_timeout_ms: 100", "    query_timeout_ms: 300", ""),
    );
    // Now past the stale window: no stale answer (SERVFAIL once upstream gives up).
    let r = query_udp(d.dns, "stale.example", RecordType::TXT, Duration::from_secs(10)).unwrap();
    assert_eq!(r.metadata.response_code, ResponseCode::ServFail, "{r:?}");
}

#[test]
fn zones_added_changed_and_removed() {
    let a = FakeUpstream::start();
    let b = FakeUpstream::start();
    for up in [&a, &b] {
        up.answer("x.corp.example", RecordType::TXT, &["\"v\""], 300);
        up.answer("y.corp.example", RecordType::TXT, &["\"v\""], 300);
        up.answer("z.corp.example", RecordType::TXT, &["\"v\""], 300);
    }
    let base = config(a.addr(), "", "", "");
    let d = Daemon::start(&base);
    assert_eq!(query_udp(d.dns, "x.corp.example", RecordType::TXT, T).unwrap().answers.len(), 1);
    assert_eq!(
        (a.query_count("x.corp.example", RecordType::TXT), b.query_count("x.corp.example", RecordType::TXT)),
        (1, 0)
    );

    // Added: corp.example. forwards to b.
    let corp = |up: SocketAddr| format!("  - name: \"corp.example.\"\n    upstreams: [\"{up}\"]\n");
    let with_corp = base.replace("zones:\n", &format!("zones:\n{}", corp(b.addr())));
    reload(&d, &with_corp);
    assert_eq!(query_udp(d.dns, "y.corp.example", RecordType::TXT, T).unwrap().answers.len(), 1);
    assert_eq!(
        (a.query_count("y.corp.example", RecordType::TXT), b.query_count("y.corp.example", RecordType::TXT)),
        (0, 1)
    );

    // Removed: back to the root zone's upstream.
    reload(&d, &base);
    assert_eq!(query_udp(d.dns, "z.corp.example", RecordType::TXT, T).unwrap().answers.len(), 1);
    assert_eq!(
        (a.query_count("z.corp.example", RecordType::TXT), b.query_count("z.corp.example", RecordType::TXT)),
        (1, 0)
    );
}

#[test]
fn tcp_connections_of_a_kept_endpoint_follow_the_reload() {
    let up = FakeUpstream::start();
    let names: Vec<String> = (0..8).map(|i| format!("slow{i}.example")).collect();
    let zone = |n: u32| format!("    transport: tcp\n    tcp_connections: {n}");
    let d = Daemon::start(&config(up.addr(), "", &zone(1), ""));
    let accepted_at_start = up.tcp_connections_accepted();
    assert!(accepted_at_start <= 1, "{accepted_at_start}");

    reload(&d, &config(up.addr(), "", &zone(4), ""));
    // Concurrent slow misses need more than one connection: the endpoint (kept across the
    // reload) now opens up to 4, never more.
    let burst = |tag: &str| {
        let handles: Vec<_> = names
            .iter()
            .map(|n| {
                let (dns, n) = (d.dns, format!("{tag}{n}"));
                std::thread::spawn(move || query_udp(dns, &n, RecordType::TXT, Duration::from_secs(5)))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).filter(|r| r.is_ok()).count()
    };
    for n in &names {
        up.answer(&format!("a{n}"), RecordType::TXT, &["\"v\""], 300);
        up.behaviour(&format!("a{n}"), RecordType::TXT, Behaviour::Delay(Duration::from_millis(500)));
    }
    assert_eq!(burst("a"), names.len());
    assert_eq!(up.open_tcp_connections(), 4, "accepted {}", up.tcp_connections_accepted());

    // Shrunk to 2: the excess connections close (after their queries), new bursts use 2.
    reload(&d, &config(up.addr(), "", &zone(2), ""));
    wait_for("2 open connections", Duration::from_secs(5), || up.open_tcp_connections() == 2);
    let accepted = up.tcp_connections_accepted();
    for n in &names {
        up.answer(&format!("b{n}"), RecordType::TXT, &["\"v\""], 300);
        up.behaviour(&format!("b{n}"), RecordType::TXT, Behaviour::Delay(Duration::from_millis(300)));
    }
    assert_eq!(burst("b"), names.len());
    assert_eq!(up.tcp_connections_accepted(), accepted, "no new connection opened after the shrink");
    assert_eq!(up.open_tcp_connections(), 2);
}

#[test]
fn log_level_and_query_log_sampling_change_live() {
    let up = FakeUpstream::start();
    up.answer("q.example", RecordType::TXT, &["\"v\""], 300);
    let log = |level: &str, rate: &str| format!("log:\n  level: {level}\n  queries_sample_rate: {rate}");
    // RUST_LOG unset: `log.level` decides.
    let d = Daemon::spawn(&config(up.addr(), "", "", &log("info", "0")), &[("RUST_LOG", "")]);
    d.wait_ready(Duration::from_secs(10));
    let debug_line = "closing TCP connection";
    let query_line = "qname=q.example";
    let _ = query_tcp(d.dns, "q.example", RecordType::TXT, T).unwrap();
    let _ = query_udp(d.dns, "q.example", RecordType::TXT, T).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert!(!d.log().contains(debug_line));
    assert!(!d.log().contains(query_line));

    reload(&d, &config(up.addr(), "", "", &log("debug", "1.0")));
    let _ = query_tcp(d.dns, "q.example", RecordType::TXT, T).unwrap();
    let _ = query_udp(d.dns, "q.example", RecordType::TXT, T).unwrap();
    wait_for("a debug line", Duration::from_secs(3), || d.log().contains(debug_line));
    wait_for("a query log line", Duration::from_secs(3), || d.log().contains(query_line));

    // Back down: neither appears any more.
    reload(&d, &config(up.addr(), "", "", &log("info", "0")));
    let (debug_lines, query_lines) = (d.log().matches(debug_line).count(), d.log().matches(query_line).count());
    for _ in 0..3 {
        let _ = query_tcp(d.dns, "q.example", RecordType::TXT, T).unwrap();
        let _ = query_udp(d.dns, "q.example", RecordType::TXT, T).unwrap();
    }
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(d.log().matches(debug_line).count(), debug_lines);
    assert_eq!(d.log().matches(query_line).count(), query_lines);
}

#[test]
fn max_udp_payload_changes_the_truncation_threshold() {
    let up = FakeUpstream::start();
    let many: Vec<String> = (0..60).map(|i| format!("10.2.0.{i}")).collect();
    let refs: Vec<&str> = many.iter().map(String::as_str).collect();
    up.answer("big.example", RecordType::A, &refs, 300);
    up.answer("big.example", RecordType::AAAA, &["fd00::2"], 300);
    let limits = |n: u32| format!("limits:\n  max_udp_payload_bytes: {n}");
    let d = Daemon::start(&config(up.addr(), "", "", &limits(1232)));
    // 60 A records (~1000 bytes) fit the client's 1232 and the limit's 1232.
    let out = dig(d.dns, &["big.example", "A", "+bufsize=1232", "+ignore"]);
    assert!(!out.contains(" tc"), "{out}");

    reload(&d, &config(up.addr(), "", "", &limits(512)));
    let out = dig(d.dns, &["big.example", "A", "+bufsize=1232", "+ignore"]);
    assert!(out.contains(" tc"), "max_udp_payload_bytes 512 truncates: {out}");
}

#[test]
fn max_inflight_changes_how_many_misses_may_wait() {
    let up = FakeUpstream::start();
    for i in 0..6 {
        up.answer(&format!("w{i}.example"), RecordType::TXT, &["\"v\""], 300);
        up.behaviour(&format!("w{i}.example"), RecordType::TXT, Behaviour::Delay(Duration::from_millis(600)));
        up.answer(&format!("v{i}.example"), RecordType::TXT, &["\"v\""], 300);
        up.behaviour(&format!("v{i}.example"), RecordType::TXT, Behaviour::Delay(Duration::from_millis(600)));
    }
    let limits = |n: u32| format!("limits:\n  max_inflight: {n}");
    let d = Daemon::start(&config(up.addr(), "", "", &limits(1)));
    let burst = |prefix: &str| {
        let handles: Vec<_> = (0..6)
            .map(|i| {
                let (dns, n) = (d.dns, format!("{prefix}{i}.example"));
                std::thread::spawn(move || query_udp(dns, &n, RecordType::TXT, Duration::from_secs(5)))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap().map(|r| r.metadata.response_code)).collect::<Vec<_>>()
    };
    let refused =
        |codes: &[Result<ResponseCode, _>]| codes.iter().filter(|c| matches!(c, Ok(ResponseCode::Refused))).count();
    let first = burst("w");
    assert!(refused(&first) >= 1, "limit 1: some of 6 concurrent misses are shed: {first:?}");

    reload(&d, &config(up.addr(), "", "", &limits(1000)));
    let second = burst("v");
    assert_eq!(refused(&second), 0, "limit 1000: none shed: {second:?}");
    assert!(second.iter().all(|c| matches!(c, Ok(ResponseCode::NoError))), "{second:?}");
}

#[test]
fn prefetch_switched_on_and_off() {
    let up = FakeUpstream::start();
    for n in ["off.example", "on.example"] {
        up.answer(n, RecordType::TXT, &["\"v\""], 4);
    }
    let cache = |on: bool| format!("  prefetch: {on}");
    // A TTL-4 entry asked for twice is due for refresh in its last second (README, prefetch).
    let popular_near_expiry = |d: &Daemon, name: &str| {
        for _ in 0..3 {
            query_udp(d.dns, name, RecordType::TXT, T).unwrap();
        }
        std::thread::sleep(Duration::from_millis(3300));
        query_udp(d.dns, name, RecordType::TXT, T).unwrap();
    };
    let d = Daemon::start(&config(up.addr(), &cache(false), "", ""));
    popular_near_expiry(&d, "off.example");
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(up.query_count("off.example", RecordType::TXT), 1, "prefetch off: no refresh before expiry");

    reload(&d, &config(up.addr(), &cache(true), "", ""));
    popular_near_expiry(&d, "on.example");
    wait_for("the prefetch", Duration::from_millis(600), || up.query_count("on.example", RecordType::TXT) == 2);
}

#[test]
fn the_drain_timeout_in_force_at_shutdown_is_used() {
    let up = FakeUpstream::start();
    up.answer("slow.example", RecordType::TXT, &["\"v\""], 300);
    up.behaviour("slow.example", RecordType::TXT, Behaviour::Delay(Duration::from_secs(20)));
    let zone = "    query_timeout_ms: 8000\n    query_budget_ms: 8000";
    let server = |secs: u32| format!("server:\n  drain_timeout_secs: {secs}");
    let mut d = Daemon::start(&config(up.addr(), "", zone, &server(30)));
    reload(&d, &config(up.addr(), "", zone, &server(1)));
    // A query waits on the silent upstream (8 s) when shutdown starts: the 1 s now in force
    // bounds the drain, not the 30 s the daemon started with nor the query's own 8 s.
    let dns = d.dns;
    let waiting = std::thread::spawn(move || query_udp(dns, "slow.example", RecordType::TXT, Duration::from_secs(10)));
    wait_for("the query to wait upstream", Duration::from_secs(3), || {
        up.query_count("slow.example", RecordType::TXT) >= 1
    });
    let started = Instant::now();
    d.signal(15);
    let code = d.wait_exit(Duration::from_secs(15));
    let took = started.elapsed();
    assert_eq!(code, Some(0));
    assert!(took < Duration::from_secs(6), "shutdown took {took:?} with a 1 s drain timeout");
    assert!(took >= Duration::from_millis(900), "the drain did not wait: {took:?}");
    let _ = waiting.join();
}

#[test]
fn discover_gained_and_lost_starts_and_stops_discovery() {
    // The headless service resolves (through the zone's fixed upstream) to one pod address,
    // where a second fake upstream serves on port 53 (the port discovery uses).
    let fixed = FakeUpstream::start();
    let pod_ip = nodedns_e2e::free_addr().ip();
    let Ok(pod) = FakeUpstream::start_on(SocketAddr::new(pod_ip, 53)) else {
        eprintln!("skipped: cannot bind port 53 (needs root)");
        return;
    };
    let service = "kube-dns.kube-system.svc.cluster.local";
    fixed.answer(service, RecordType::A, &[&pod_ip.to_string()], 30);
    for up in [&fixed, &pod] {
        for i in 0..50 {
            up.answer(&format!("n{i}.example"), RecordType::TXT, &["\"v\""], 300);
        }
    }
    let plain = config(fixed.addr(), "", "", "");
    let d = Daemon::start(&plain);
    query_udp(d.dns, "n0.example", RecordType::TXT, T).unwrap();
    assert_eq!(
        (fixed.query_count("n0.example", RecordType::TXT), pod.query_count("n0.example", RecordType::TXT)),
        (1, 0)
    );

    // Gained: the next names go to the discovered pod (the first resolution runs at once, not
    // after the interval).
    let discovering =
        config(fixed.addr(), "", &format!("    discover: \"{service}\"\n    discover_interval_secs: 3600"), "");
    reload(&d, &discovering);
    let mut i = 1;
    wait_for("a query at the discovered pod", Duration::from_secs(5), || {
        query_udp(d.dns, &format!("n{i}.example"), RecordType::TXT, T).unwrap();
        i += 1;
        pod.query_count(&format!("n{}.example", i - 1), RecordType::TXT) == 1
    });

    // Lost: back to the fixed upstream at once.
    reload(&d, &plain);
    query_udp(d.dns, "n49.example", RecordType::TXT, T).unwrap();
    assert_eq!(
        (fixed.query_count("n49.example", RecordType::TXT), pod.query_count("n49.example", RecordType::TXT)),
        (1, 0)
    );
}

#[test]
fn stale_answer_timeout_changes_when_stale_data_answers() {
    let up = FakeUpstream::start();
    for n in ["before.example", "after.example"] {
        up.answer(n, RecordType::TXT, &["\"v\""], 1);
    }
    let zone = "    query_timeout_ms: 8000\n    query_budget_ms: 8000";
    let cache = |ms: u32| format!("  stale_answer_timeout_ms: {ms}");
    let d = Daemon::start(&config(up.addr(), &cache(4000), zone, ""));
    for n in ["before.example", "after.example"] {
        query_udp(d.dns, n, RecordType::TXT, T).unwrap();
        up.behaviour(n, RecordType::TXT, Behaviour::Delay(Duration::from_millis(2000)));
    }
    std::thread::sleep(Duration::from_millis(1500));
    // Expired; the refresh takes 2 s, within the 4 s: the client waits for the fresh answer
    // (TTL 1) instead of getting stale data (served with TTL 30, README).
    let fresh = query_udp(d.dns, "before.example", RecordType::TXT, Duration::from_secs(6)).unwrap();
    assert!(fresh.answers[0].ttl <= 1, "{fresh:?}");

    reload(&d, &config(up.addr(), &cache(100), zone, ""));
    let stale = query_udp(d.dns, "after.example", RecordType::TXT, Duration::from_secs(6)).unwrap();
    assert_eq!(stale.answers[0].ttl, 30, "stale data after 100 ms: {stale:?}");
}

#[test]
fn kube_dns_configmap_gained_and_lost_through_the_config_file() {
    let root = FakeUpstream::start();
    let stub = FakeUpstream::start();
    for up in [&root, &stub] {
        for n in ["a.acme.local", "b.acme.local", "c.acme.local"] {
            up.answer(n, RecordType::TXT, &["\"v\""], 300);
        }
    }
    // A ConfigMap volume read as a plain directory (tests/e2e/policy.rs covers the kubelet's
    // `..data` layout and content changes).
    let cm = std::env::temp_dir().join(format!("nodedns-reload-cm-{}", std::process::id()));
    std::fs::create_dir_all(&cm).unwrap();
    std::fs::write(cm.join("stubDomains"), format!("{{\"acme.local\": [\"{}\"]}}", stub.addr())).unwrap();
    let base = config(root.addr(), "", "", "");
    let d = Daemon::start(&base);
    query_udp(d.dns, "a.acme.local", RecordType::TXT, T).unwrap();
    assert_eq!(
        (root.query_count("a.acme.local", RecordType::TXT), stub.query_count("a.acme.local", RecordType::TXT)),
        (1, 0)
    );

    let with_cm = config(
        root.addr(),
        "",
        "",
        &format!("kube_dns_configmap:\n  path: \"{}\"\n  reload_interval_secs: 3600", cm.display()),
    );
    reload(&d, &with_cm);
    query_udp(d.dns, "b.acme.local", RecordType::TXT, T).unwrap();
    assert_eq!(
        (root.query_count("b.acme.local", RecordType::TXT), stub.query_count("b.acme.local", RecordType::TXT)),
        (0, 1)
    );

    reload(&d, &base);
    query_udp(d.dns, "c.acme.local", RecordType::TXT, T).unwrap();
    assert_eq!(
        (root.query_count("c.acme.local", RecordType::TXT), stub.query_count("c.acme.local", RecordType::TXT)),
        (1, 0)
    );
    let _ = std::fs::remove_dir_all(&cm);
}

#[test]
fn query_timeout_and_budget_of_a_zone_change_live() {
    let up = FakeUpstream::start();
    for n in ["early.example", "late.example"] {
        up.answer(n, RecordType::TXT, &["\"v\""], 300);
        up.behaviour(n, RecordType::TXT, Behaviour::Delay(Duration::from_millis(1200)));
    }
    let zone = |ms: u32| format!("    query_timeout_ms: {ms}\n    query_budget_ms: {ms}");
    let d = Daemon::start(&config(up.addr(), "", &zone(500), ""));
    let r = query_udp(d.dns, "early.example", RecordType::TXT, Duration::from_secs(5)).unwrap();
    assert_eq!(r.metadata.response_code, ResponseCode::ServFail, "a 1.2 s upstream within 500 ms");

    reload(&d, &config(up.addr(), "", &zone(3000), ""));
    let r = query_udp(d.dns, "late.example", RecordType::TXT, Duration::from_secs(5)).unwrap();
    assert_eq!((r.metadata.response_code, r.answers.len()), (ResponseCode::NoError, 1), "within 3 s");
}
