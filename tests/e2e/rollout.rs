//! Zero-downtime rollout and hot reload (issue 6).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use nodedns_e2e::load::run_load;
use nodedns_e2e::testkit::{FakeUpstream, query_udp};
use nodedns_e2e::{Daemon, client_socket, free_addr, metric_sum};

fn config(upstream: SocketAddr, handover: &str, max_ttl: u32) -> String {
    format!(
        r#"listen: ["{{DNS}}"]
cache:
  min_ttl_secs: 1
zones:
  - name: "."
    upstreams: ["{upstream}"]
    transport: tcp
    max_ttl_secs: {max_ttl}
admin:
  listen: "{{ADMIN}}"
server:
  drain_timeout_secs: 5
  handover_socket: "{handover}"
"#
    )
}

#[test]
fn process_replaced_three_times_under_load_loses_nothing() {
    let up = FakeUpstream::start();
    let names: Vec<String> = (0..2000).map(|i| format!("svc{i}.example.")).collect();
    for n in &names {
        up.answer(n, RecordType::A, &["192.0.2.1"], 300);
        up.answer(n, RecordType::AAAA, &["2001:db8::1"], 300);
    }
    let dns = free_addr();
    let dir = std::env::temp_dir().join(format!("nodedns-rollout-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let handover = dir.join("handover.sock");
    let cfg = config(up.addr(), handover.to_str().unwrap(), 3600);
    let secs: u64 = std::env::var("NODEDNS_ROLLOUT_SECS").ok().and_then(|v| v.parse().ok()).unwrap_or(30);

    // Baseline: the same load without replacements.
    let baseline = {
        let d = Daemon::spawn_at(
            &cfg.replace(handover.to_str().unwrap(), dir.join("base.sock").to_str().unwrap()),
            free_addr(),
            free_addr(),
            &[],
        );
        d.wait_ready(Duration::from_secs(10));
        run_load(
            client_socket(),
            d.dns,
            5000,
            Duration::from_secs(secs.min(10)),
            &names,
            Arc::new(AtomicBool::new(false)),
        )
    };

    let mut current = Daemon::spawn_at(&cfg, dns, free_addr(), &[]);
    current.wait_ready(Duration::from_secs(10));
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let names = names.clone();
        let stop = stop.clone();
        std::thread::spawn(move || run_load(client_socket(), dns, 5000, Duration::from_secs(secs), &names, stop))
    };
    let mut replaced = 0;
    for _ in 0..3 {
        std::thread::sleep(Duration::from_secs(secs / 4));
        // Start the new process (same DNS address and handover socket, its own admin port),
        // wait until it is ready, then SIGTERM the old one.
        let next = Daemon::spawn_at(&cfg, dns, free_addr(), &[]);
        next.wait_ready(Duration::from_secs(10));
        assert!(next.log().contains("received DNS sockets"), "no handover: {}", next.log());
        // The warm cache follows the sockets.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !next.log().contains("warm cache received") {
            assert!(Instant::now() < deadline, "no cache handover: {}", next.log());
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(!next.log().contains("warm cache received records=0"), "{}", next.log());
        let code = current.stop();
        assert_eq!(code, Some(0), "old process exits cleanly after draining");
        current = next;
        replaced += 1;
    }
    let report = load.join().unwrap();
    stop.store(true, Ordering::Relaxed);
    eprintln!(
        "rollout: {replaced} replacements; sent {} answered {} servfail {}; p99 {:?} (baseline p99 {:?}, baseline sent {} answered {})",
        report.sent,
        report.answered,
        report.servfail,
        report.p99(),
        baseline.p99(),
        baseline.sent,
        baseline.answered
    );
    assert_eq!(replaced, 3);
    assert_eq!(report.sent - report.answered, 0, "queries lost during handovers");
    assert_eq!(report.servfail, 0);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn reload_applies_new_ttls_and_upstreams_keeps_the_cache_and_rejects_bad_files() {
    let a = FakeUpstream::start();
    let b = FakeUpstream::start();
    for up in [&a, &b] {
        for n in ["cached.example", "fresh.example", "later.example"] {
            up.answer(n, RecordType::A, &["192.0.2.1"], 300);
            up.answer(n, RecordType::AAAA, &["2001:db8::1"], 300);
        }
    }
    let dir = std::env::temp_dir().join(format!("nodedns-reload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let handover = dir.join("h.sock");
    let d = Daemon::spawn(&config(a.addr(), handover.to_str().unwrap(), 30), &[]);
    d.wait_ready(Duration::from_secs(10));
    let ttl = |name: &str| query_udp(d.dns, name, RecordType::A, Duration::from_secs(3)).unwrap().answers[0].ttl;
    assert!(ttl("cached.example") <= 30);

    // New TTL ceiling and a new upstream, through the file.
    let next = nodedns_e2e::render(&config(b.addr(), handover.to_str().unwrap(), 10), d.dns, d.admin);
    std::fs::write(&d.config_path, next).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while d.metric("nodedns_config_reloads_total{result=\"success\"}") < 1.0 {
        assert!(Instant::now() < deadline, "reload not picked up: {}", d.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    let hits_before = d.metric("nodedns_cache_hits_total");
    // The cache is still warm: the cached name is a hit and never reaches the new upstream, and
    // the lowered ceiling caps it at once (tests/e2e/reload.rs covers that key by key).
    assert!(ttl("cached.example") <= 10);
    assert_eq!(b.query_count("cached.example", RecordType::A), 0);
    // Workers count a batch's hits after sending it: give the counter a moment.
    let deadline = Instant::now() + Duration::from_secs(3);
    while d.metric("nodedns_cache_hits_total") <= hits_before {
        assert!(Instant::now() < deadline, "the cached name was not a hit");
        std::thread::sleep(Duration::from_millis(20));
    }
    // New names go to the new upstream, with the new ceiling.
    assert!(ttl("fresh.example") <= 10);
    assert_eq!(b.query_count("fresh.example", RecordType::A), 1);
    assert_eq!(a.query_count("fresh.example", RecordType::A), 0);

    // An invalid file is rejected; the running config keeps serving.
    std::fs::write(&d.config_path, "listen: [\"nonsense\"]\nzones: []\n").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while d.metric("nodedns_config_reloads_total{result=\"failure\"}") < 1.0 {
        assert!(Instant::now() < deadline, "invalid reload not noticed");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(ttl("later.example") <= 10);
    assert_eq!(b.query_count("later.example", RecordType::A), 1);
    let m = d.metrics();
    assert!(metric_sum(&m, "nodedns_responses_total", &["rcode=\"NOERROR\""]) >= 4.0);
    assert!(d.log().contains("config reload rejected"));
    let r = query_udp(d.dns, "cached.example", RecordType::A, Duration::from_secs(3)).unwrap();
    assert_eq!(r.metadata.response_code, ResponseCode::NoError);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_unusable_handover_socket_path_gives_a_serving_daemon_and_a_warning_naming_it() {
    // Optional parts degrade: a handover socket that cannot be used costs the next rollout its
    // zero-loss handover, never this start (it used to stop with "cannot bind listeners: No
    // such file or directory").
    let up = FakeUpstream::start();
    up.answer("ok.example", RecordType::A, &["192.0.2.1"], 300);
    let dir = std::env::temp_dir().join(format!("nodedns-bad-handover-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // A directory that cannot be created (its parent is a file), and a path that is not a socket.
    let file = dir.join("a-file");
    std::fs::write(&file, "not a directory, not a socket\n").unwrap();
    for path in [file.join("handover.sock"), file.clone()] {
        let mut d = Daemon::spawn(&config(up.addr(), path.to_str().unwrap(), 30), &[]);
        d.wait_ready(Duration::from_secs(10));
        let r = query_udp(d.dns, "ok.example", RecordType::A, Duration::from_secs(3)).unwrap();
        assert_eq!(r.answers.len(), 1, "{}: serving", path.display());
        let log = d.log();
        let warning = log.lines().find(|l| l.contains("handover_socket is unusable")).unwrap_or_default();
        assert!(warning.contains(path.to_str().unwrap()), "{}: warning naming the path:\n{log}", path.display());
        d.signal(15);
        assert_eq!(d.wait_exit(Duration::from_secs(10)), Some(0), "{log}");
        assert_eq!(
            std::fs::read_to_string(&file).unwrap(),
            "not a directory, not a socket\n",
            "what is at the path is left alone"
        );
    }
}

/// Issue 15: a new process whose upstream does not answer takes nothing from the running one
/// (no sockets, no admin port; the old one keeps answering uncached names), and if the running
/// one goes away first, the waiting one takes over at once rather than leave the address dark.
#[test]
fn a_new_process_takes_over_only_once_an_upstream_answers() {
    let up = FakeUpstream::start();
    for n in ["first.example", "uncached.example"] {
        up.answer(n, RecordType::A, &["192.0.2.1"], 300);
        up.answer(n, RecordType::AAAA, &["2001:db8::1"], 300);
    }
    let dir = std::env::temp_dir().join(format!("nodedns-gate-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let handover = dir.join("handover.sock");
    let dns = free_addr();
    let mut old = Daemon::spawn_at(&config(up.addr(), handover.to_str().unwrap(), 3600), dns, free_addr(), &[]);
    old.wait_ready(Duration::from_secs(10));
    assert!(query_udp(dns, "first.example", RecordType::A, Duration::from_secs(3)).is_ok());

    // Nothing listens on the new version's upstream.
    let dead = free_addr();
    let new = Daemon::spawn_at(&config(dead, handover.to_str().unwrap(), 3600), dns, free_addr(), &[]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !new.log().contains("another nodedns serves this node") {
        assert!(Instant::now() < deadline, "the new process did not wait: {}", new.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_secs(2));
    assert!(new.try_get("/ready").is_none(), "the waiting process bound the admin port");
    assert!(!new.log().contains("received DNS sockets"), "{}", new.log());
    let r = query_udp(dns, "uncached.example", RecordType::A, Duration::from_secs(3)).expect("answered");
    assert_eq!(r.metadata.response_code, ResponseCode::NoError);
    assert_eq!(up.query_count("uncached.example", RecordType::A), 1, "answered by the old process");
    assert!(old.get("/ready").0 == 200);

    // The running process goes away (deleted, crashed): the waiting one serves at once.
    assert_eq!(old.stop(), Some(0));
    let gone = Instant::now();
    while new.try_get("/health").is_none_or(|(c, _)| c != 200) {
        assert!(gone.elapsed() < Duration::from_secs(5), "no takeover after the old process left: {}", new.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!("waiting process serving {:?} after the running one exited", gone.elapsed());
    assert!(new.log().contains("went away before an upstream answered"), "{}", new.log());
    assert_eq!(new.get("/ready").0, 503, "still no upstream: alive, serving, not ready");
    let _ = std::fs::remove_dir_all(&dir);
}
