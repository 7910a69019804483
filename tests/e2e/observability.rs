//! Metrics, health, probe and dashboards (issue 5).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use hickory_proto::rr::RecordType;
use nodedns_e2e::testkit::{Behaviour, FakeUpstream, query_udp};
use nodedns_e2e::{Daemon, http_get, metric_sum, metric_value, nodedns_bin};

const T: Duration = Duration::from_secs(5);

fn config(upstreams: &[SocketAddr], compat: bool) -> String {
    let list = upstreams.iter().map(|u| format!("\"{u}\"")).collect::<Vec<_>>().join(", ");
    format!(
        r#"listen: ["{{DNS}}"]
cache:
  min_ttl_secs: 1
  stale_answer_timeout_ms: 200
zones:
  - name: "."
    upstreams: [{list}]
    transport: tcp
    query_timeout_ms: 400
admin:
  listen: "{{ADMIN}}"
  coredns_compatible_metrics: {compat}
"#
    )
}

/// Checks Prometheus text exposition format (0.0.4): HELP/TYPE comments, then samples
/// `name{label="value",...} number`, every sample's family declared by a TYPE line.
fn assert_prometheus_text(text: &str) {
    let mut typed = BTreeSet::new();
    for (i, line) in text.lines().enumerate() {
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split(' ');
            let name = parts.next().unwrap();
            let kind = parts.next().unwrap_or("");
            assert!(["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind), "line {i}: {line}");
            typed.insert(name.to_string());
            continue;
        }
        if line.starts_with("# HELP ") {
            continue;
        }
        assert!(!line.starts_with('#'), "line {i}: stray comment {line}");
        let (sample, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("line {i}: {line}"));
        assert!(value.parse::<f64>().is_ok() || ["+Inf", "-Inf", "NaN"].contains(&value), "line {i}: value {value}");
        let (name, labels) = match sample.split_once('{') {
            Some((n, l)) => (n, Some(l)),
            None => (sample, None),
        };
        assert!(name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'), "line {i}: name {name}");
        if let Some(l) = labels {
            assert!(l.ends_with('}'), "line {i}: {line}");
            for pair in l.trim_end_matches('}').split("\",").filter(|p| !p.is_empty()) {
                let (k, v) = pair.split_once("=\"").unwrap_or_else(|| panic!("line {i}: label {pair}"));
                assert!(k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'), "line {i}: label {k}");
                let _ = v;
            }
        }
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|f| typed.contains(*f)))
            .unwrap_or(name);
        assert!(typed.contains(family), "line {i}: {name} has no TYPE line");
    }
}

#[test]
fn counters_move_as_queries_dictate_and_the_output_is_prometheus_text() {
    let good = FakeUpstream::start();
    let slow = FakeUpstream::start();
    slow.set_default_behaviour(Behaviour::Drop);
    good.answer("hit.example", RecordType::A, &["192.0.2.1"], 1);
    good.answer("hit.example", RecordType::AAAA, &["2001:db8::1"], 1);
    // A split pair: NXDOMAIN for A, NOERROR (a record) for AAAA.
    good.behaviour("split.example", RecordType::A, Behaviour::NxDomain);
    good.answer("split.example", RecordType::AAAA, &["2001:db8::2"], 300);
    let d = Daemon::start(&config(&[good.addr(), slow.addr()], true));
    let before = d.metrics();
    let get = |m: &str, s: &str| metric_value(m, s).unwrap_or(0.0);

    query_udp(d.dns, "hit.example", RecordType::A, T).unwrap(); // miss
    for _ in 0..3 {
        query_udp(d.dns, "hit.example", RecordType::A, T).unwrap(); // hits
    }
    let nx = query_udp(d.dns, "nope.example", RecordType::TXT, T).unwrap();
    assert_eq!(u16::from(nx.metadata.response_code), 3);
    query_udp(d.dns, "split.example", RecordType::AAAA, T).unwrap();
    // Expire, then take the good upstream away: the next answer is stale.
    std::thread::sleep(Duration::from_millis(1200));
    good.set_default_behaviour(Behaviour::Drop);
    let stale = query_udp(d.dns, "hit.example", RecordType::A, T).unwrap();
    assert_eq!(stale.answers[0].ttl, 30);

    let after = d.metrics();
    assert_prometheus_text(&after);
    let delta = |s: &str| get(&after, s) - get(&before, s);
    assert!(delta("nodedns_cache_hits_total") >= 3.0, "hits");
    assert!(delta("nodedns_cache_misses_total") >= 3.0, "misses");
    assert!(delta("nodedns_responses_total{rcode=\"NXDOMAIN\"}") >= 1.0, "NXDOMAIN");
    assert!(delta("nodedns_cache_stale_answers_total") >= 1.0, "stale");
    assert!(delta("nodedns_cache_split_pairs_total") >= 1.0, "split pair");
    assert!(delta("nodedns_requests_total{proto=\"udp\",qtype=\"A\"}") >= 5.0);
    assert!(get(&after, "nodedns_cache_entries") >= 2.0);
    assert!(get(&after, "nodedns_cache_bytes") > 0.0);
    let slow_label = format!("endpoint=\"{}\"", slow.addr());
    let good_label = format!("endpoint=\"{}\"", good.addr());
    assert!(metric_sum(&after, "nodedns_upstream_errors_total", &[&slow_label, "kind=\"timeout\""]) >= 1.0);
    assert!(metric_sum(&after, "nodedns_upstream_queries_total", &[&good_label]) >= 3.0);
    assert!(metric_sum(&after, "nodedns_upstream_duration_seconds_count", &[&good_label]) >= 3.0);
    assert!(after.contains("nodedns_request_duration_seconds_bucket{cache=\"hit\""));
    assert!(after.contains("nodedns_build_info{version="));
    // NodeLocal DNSCache dashboards keep working.
    assert!(metric_sum(&after, "coredns_dns_requests_total", &["type=\"A\""]) >= 5.0);
    assert!(metric_sum(&after, "coredns_cache_hits_total", &[]) >= 3.0);
    assert!(metric_sum(&after, "coredns_dns_responses_total", &["rcode=\"NXDOMAIN\""]) >= 1.0);
    assert!(after.contains("coredns_cache_entries{"));
    // Never a qname or client address in a label.
    assert!(!after.contains("hit.example") && !after.contains("split.example"));
}

#[test]
fn health_fails_while_a_worker_is_wedged_and_recovers() {
    let up = FakeUpstream::start();
    let d = Daemon::spawn(&config(&[up.addr()], false), &[("NODEDNS_TEST_HOOKS", "1")]);
    d.wait_ready(Duration::from_secs(10));
    assert_eq!(d.get("/health").0, 200);
    // Stall every UDP worker for 4 s.
    let stall = post(d.admin, "/debug/stall?ms=4000");
    assert_eq!(stall, Some(200));
    let deadline = Instant::now() + Duration::from_secs(4);
    let mut saw_unhealthy = false;
    while Instant::now() < deadline {
        if let Some((503, body)) = http_get(d.admin, "/health") {
            assert!(body.contains("unhealthy"), "{body}");
            saw_unhealthy = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(saw_unhealthy, "/health kept answering 200 while workers were stuck");
    let deadline = Instant::now() + Duration::from_secs(10);
    while http_get(d.admin, "/health").map(|r| r.0) != Some(200) {
        assert!(Instant::now() < deadline, "/health did not recover");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn ready_waits_for_an_upstream_answer() {
    let up = FakeUpstream::start();
    up.set_default_behaviour(Behaviour::Drop);
    let d = Daemon::spawn(&config(&[up.addr()], false), &[]);
    let deadline = Instant::now() + Duration::from_secs(5);
    while d.try_get("/health").is_none() {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(500));
    let (code, body) = d.get("/ready");
    assert_eq!(code, 503, "{body}");
    up.set_default_behaviour(Behaviour::Answer);
    d.wait_ready(Duration::from_secs(15));
}

fn post(addr: SocketAddr, path: &str) -> Option<u16> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    write!(s, "POST {path} HTTP/1.0\r\nHost: x\r\nContent-Length: 0\r\n\r\n").ok()?;
    let mut r = String::new();
    s.read_to_string(&mut r).ok()?;
    r.split_whitespace().nth(1)?.parse().ok()
}

#[test]
fn probe_names_the_slow_and_the_lossy_endpoint() {
    let healthy = FakeUpstream::start();
    let slow = FakeUpstream::start();
    let lossy = FakeUpstream::start();
    for up in [&healthy, &slow, &lossy] {
        up.answer("web.default.svc.cluster.local", RecordType::A, &["10.96.1.1"], 30);
    }
    slow.set_default_behaviour(Behaviour::Delay(Duration::from_millis(150)));
    lossy.set_default_behaviour(Behaviour::DropFraction(0.3));
    let dir = std::env::temp_dir().join(format!("nodedns-probe-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("probe.yaml");
    let upstreams = [healthy.addr(), slow.addr(), lossy.addr()];
    std::fs::write(
        &cfg,
        nodedns_e2e::render(&config(&upstreams, false), "127.0.0.1:1".parse().unwrap(), "127.0.0.1:2".parse().unwrap()),
    )
    .unwrap();
    let out = Command::new(nodedns_bin())
        .args(["probe", "web.default.svc.cluster.local", "--type", "A", "--count", "30", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    eprintln!("{text}");
    assert_eq!(out.status.code(), Some(1), "a failing endpoint makes probe exit 1: {text}");
    let line = |a: SocketAddr| {
        text.lines().find(|l| l.contains(&a.to_string())).unwrap_or_else(|| panic!("{a} missing: {text}")).to_string()
    };
    let (h, s, l) = (line(healthy.addr()), line(slow.addr()), line(lossy.addr()));
    assert!(!h.contains("FAILING") && !h.contains("SLOW"), "{h}");
    assert!(s.contains("SLOW") && !s.contains("FAILING"), "{s}");
    assert!(l.contains("FAILING") && l.contains("timeouts="), "{l}");
    assert!(h.contains("sent=30 answered=30"), "{h}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn json_logs_carry_sampled_queries() {
    let up = FakeUpstream::start();
    up.answer("logged.example", RecordType::A, &["192.0.2.1"], 300);
    let cfg =
        format!("{}log:\n  format: json\n  level: info\n  queries_sample_rate: 1.0\n", config(&[up.addr()], false));
    let d = Daemon::start(&cfg);
    query_udp(d.dns, "logged.example", RecordType::A, T).unwrap();
    query_udp(d.dns, "logged.example", RecordType::A, T).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let log = d.log();
        let lines: Vec<&str> = log.lines().filter(|l| l.contains("\"qname\":\"logged.example.\"")).collect();
        if lines.len() >= 2 {
            assert!(lines.iter().all(|l| l.starts_with('{') && l.ends_with('}')), "{lines:?}");
            assert!(lines.iter().any(|l| l.contains("\"cache\":\"miss\"")), "{lines:?}");
            assert!(lines.iter().any(|l| l.contains("\"cache\":\"hit\"")), "{lines:?}");
            break;
        }
        assert!(Instant::now() < deadline, "no sampled query lines: {log}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Every metric family nodedns lists (tests/deploy/exported-metrics.txt: what the dashboard and
/// the alerts may query) has a series before the first client query: a series that appears only
/// with its first event is invisible to `increase()` and `rate()`, and a panel shows "no data".
#[test]
fn every_listed_metric_has_a_series_before_any_client_query() {
    let up = FakeUpstream::start();
    let template = format!(
        r#"listen: ["{{DNS}}"]
zones:
  - name: cluster.local
    upstreams: ["{up}"]
    kubernetes_schema: true
  - name: "."
    upstreams: ["{up}"]
admin:
  listen: "{{ADMIN}}"
  coredns_compatible_metrics: true
"#,
        up = up.addr()
    );
    let d = Daemon::start(&template);
    let text = d.metrics();
    let listed = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/exported-metrics.txt")).unwrap();
    let mut missing = Vec::new();
    for name in listed.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let has_sample = text.lines().any(|l| {
            !l.starts_with('#')
                && l.strip_prefix(name).is_some_and(|rest| rest.starts_with([' ', '{']) || rest.starts_with("_count"))
        });
        if !has_sample {
            missing.push(name);
        }
    }
    assert!(missing.is_empty(), "no series at start for {missing:?}:\n{text}");
    // Counters of events that have not happened are there at 0.
    for series in [
        "nodedns_config_reloads_total{result=\"failure\"} 0",
        "nodedns_shed_total{reason=\"draining\"} 0",
        "nodedns_malformed_queries_total{reason=\"bad_name\"} 0",
        "nodedns_node_setup_errors_total{kind=\"iptables\"} 0",
        "nodedns_local_synthesized_total{zone=\"cluster.local.\"} 0",
        "nodedns_cache_stale_answers_total 0",
    ] {
        assert!(text.lines().any(|l| l == series), "{series} missing:\n{text}");
    }
    assert!(text.contains("# TYPE nodedns_build_info gauge"));
}
