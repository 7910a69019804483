//! The core issue's acceptance tests, against the real binary.

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use nodedns_e2e::testkit::{Behaviour, FakeUpstream, Transport, query_tcp, query_tcp_pipelined, query_udp};
use nodedns_e2e::{Daemon, Knot, dig, have, metric_value};

const T: Duration = Duration::from_secs(3);

fn config(upstream: SocketAddr, transport: &str) -> String {
    format!(
        r#"listen: ["{{DNS}}"]
cache:
  max_bytes: 16777216
  min_ttl_secs: 5
  max_ttl_secs: 3600
  denial_max_ttl_secs: 1800
zones:
  - name: cluster.local
    upstreams: ["{upstream}"]
    transport: {transport}
    max_ttl_secs: 30
    denial_max_ttl_secs: 5
  - name: "."
    upstreams: ["{upstream}"]
    transport: {transport}
admin:
  listen: "{{ADMIN}}"
"#
    )
}

fn ttls(m: &Message) -> Vec<u32> {
    m.answers.iter().map(|r| r.ttl).collect()
}

#[test]
fn pair_ttls_are_equal_count_down_together_and_refresh_together() {
    let up = FakeUpstream::start();
    up.answer("a.ns.svc.cluster.local", RecordType::A, &["10.0.0.1"], 30);
    up.answer("a.ns.svc.cluster.local", RecordType::AAAA, &["fd00::1"], 7);
    let d = Daemon::start(&config(up.addr(), "tcp"));
    up.clear_log();

    let a = query_udp(d.dns, "a.ns.svc.cluster.local", RecordType::A, T).unwrap();
    let aaaa = query_udp(d.dns, "a.ns.svc.cluster.local", RecordType::AAAA, T).unwrap();
    assert_eq!(ttls(&a).len(), 1);
    assert_eq!(ttls(&a), ttls(&aaaa), "A and AAAA carry the pair's one TTL");
    assert!(ttls(&a)[0] <= 7 && ttls(&a)[0] >= 6, "the smaller TTL wins: {:?}", ttls(&a));
    // Fetched together, once.
    assert_eq!(up.query_count("a.ns.svc.cluster.local", RecordType::A), 1);
    assert_eq!(up.query_count("a.ns.svc.cluster.local", RecordType::AAAA), 1);

    std::thread::sleep(Duration::from_millis(2100));
    let a2 = query_udp(d.dns, "a.ns.svc.cluster.local", RecordType::A, T).unwrap();
    let aaaa2 = query_udp(d.dns, "a.ns.svc.cluster.local", RecordType::AAAA, T).unwrap();
    assert_eq!(ttls(&a2), ttls(&aaaa2));
    assert!(ttls(&a2)[0] < ttls(&a)[0], "TTL counts down: {:?} then {:?}", ttls(&a), ttls(&a2));

    // After expiry both are fetched again, together, once.
    std::thread::sleep(Duration::from_millis(5500));
    let a3 = query_udp(d.dns, "a.ns.svc.cluster.local", RecordType::A, T).unwrap();
    let aaaa3 = query_udp(d.dns, "a.ns.svc.cluster.local", RecordType::AAAA, T).unwrap();
    assert_eq!(ttls(&a3), ttls(&aaaa3));
    let log = up.log();
    let times = |t: RecordType| -> Vec<Instant> {
        log.iter().filter(|l| l.name == "a.ns.svc.cluster.local" && l.rtype == t).map(|l| l.at).collect()
    };
    let (ta, tq) = (times(RecordType::A), times(RecordType::AAAA));
    assert_eq!(ta.len(), 2, "A fetched once per expiry: {ta:?}");
    assert_eq!(tq.len(), 2, "AAAA fetched once per expiry: {tq:?}");
    for (x, y) in ta.iter().zip(&tq) {
        let gap = if x > y { *x - *y } else { *y - *x };
        assert!(gap < Duration::from_millis(500), "A and AAAA fetched on one schedule");
    }
}

#[test]
fn tcp_only_upstream_10k_names_at_2k_qps_stay_on_the_pool() {
    let up = FakeUpstream::start();
    up.set_udp_enabled(false);
    up.set_zone_soa("cluster.local", 30, 5);
    for i in 0..10_000 {
        up.answer(&format!("svc-{i}.ns.svc.cluster.local"), RecordType::A, &["10.1.0.1"], 300);
    }
    let d = Daemon::start(&config(up.addr(), "tcp"));
    let accepted_before = up.tcp_connections_accepted();

    // 2,000 qps for 5 s from 4 client sockets; each answer matched by ID.
    let sockets: Vec<UdpSocket> = (0..4).map(|_| nodedns_e2e::client_socket()).collect();
    for s in &sockets {
        s.set_read_timeout(Some(Duration::from_millis(1))).unwrap();
    }
    let mut outstanding = std::collections::HashMap::new();
    let mut answered = 0usize;
    let start = Instant::now();
    let mut buf = [0u8; 1500];
    for i in 0..10_000usize {
        let due = start + Duration::from_micros(500 * i as u64);
        while Instant::now() < due {
            for s in &sockets {
                while let Ok(n) = s.recv(&mut buf) {
                    if n >= 12 && outstanding.remove(&u16::from_be_bytes([buf[0], buf[1]])).is_some() {
                        answered += 1;
                    }
                }
            }
        }
        let mut q = Message::new(i as u16, MessageType::Query, OpCode::Query);
        q.metadata.recursion_desired = true;
        q.add_query(Query::query(Name::from_ascii(format!("svc-{i}.ns.svc.cluster.local.")).unwrap(), RecordType::A));
        sockets[i % 4].send_to(&q.to_vec().unwrap(), d.dns).unwrap();
        outstanding.insert(i as u16, i);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while !outstanding.is_empty() && Instant::now() < deadline {
        for s in &sockets {
            while let Ok(n) = s.recv(&mut buf) {
                if n >= 12 && outstanding.remove(&u16::from_be_bytes([buf[0], buf[1]])).is_some() {
                    answered += 1;
                }
            }
        }
    }
    let m = d.metrics();
    let sent_by_nodedns = nodedns_e2e::metric_sum(&m, "nodedns_responses_total", &[]);
    let diag: Vec<&str> = m
        .lines()
        .filter(|l| {
            l.starts_with("nodedns_upstream_errors") && !l.ends_with(" 0")
                || l.starts_with("nodedns_inflight")
                || l.starts_with("nodedns_shed")
                || l.starts_with("nodedns_responses")
        })
        .collect();
    assert_eq!(
        answered,
        10_000,
        "{} queries lost; nodedns sent {sent_by_nodedns} responses; {diag:#?}",
        outstanding.len()
    );
    // Pool size is 2 (the default): no more connections were opened for the load.
    assert!(up.tcp_connections_accepted() <= 2, "opened {} TCP connections", up.tcp_connections_accepted());
    assert!(up.tcp_connections_accepted() >= accepted_before);
    assert!(up.log().iter().all(|l| l.transport == Transport::Tcp));
    // `ss -tn` view: established connections from nodedns to the upstream.
    if have("ss") {
        let out = std::process::Command::new("ss")
            .args(["-Htn", "state", "established", &format!("dst {}", up.addr())])
            .output()
            .unwrap();
        let n = String::from_utf8_lossy(&out.stdout).lines().count();
        assert!(n <= 2, "ss shows {n} connections to the upstream");
    }
}

#[test]
fn nxdomain_carries_soa_and_is_cached_for_the_denial_ttl() {
    let up = FakeUpstream::start();
    up.set_zone_soa("cluster.local", 60, 30);
    let d = Daemon::start(&config(up.addr(), "tcp"));
    let r = query_udp(d.dns, "missing.ns.svc.cluster.local", RecordType::A, T).unwrap();
    assert_eq!(r.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(r.authorities.len(), 1);
    let soa = &r.authorities[0];
    assert!(matches!(soa.data, RData::SOA(_)));
    // The zone's denial ceiling is 5 s.
    assert!(soa.ttl <= 5 && soa.ttl >= 4, "SOA TTL {}", soa.ttl);
    let before = up.query_count("missing.ns.svc.cluster.local", RecordType::A);
    for _ in 0..5 {
        let r = query_udp(d.dns, "missing.ns.svc.cluster.local", RecordType::A, T).unwrap();
        assert_eq!(r.metadata.response_code, ResponseCode::NXDomain);
        let r = query_tcp(d.dns, "missing.ns.svc.cluster.local", RecordType::AAAA, T).unwrap();
        assert_eq!(r.metadata.response_code, ResponseCode::NXDomain);
    }
    assert_eq!(up.query_count("missing.ns.svc.cluster.local", RecordType::A), before);
    let m = d.metrics();
    assert!(metric_value(&m, "nodedns_responses_total{rcode=\"NXDOMAIN\"}").unwrap() >= 11.0);
}

#[test]
fn answers_echo_id_question_case_and_edns_and_truncate_over_udp() {
    let up = FakeUpstream::start();
    let many: Vec<String> = (0..60).map(|i| format!("10.2.0.{i}")).collect();
    let refs: Vec<&str> = many.iter().map(String::as_str).collect();
    up.answer("big.ns.svc.cluster.local", RecordType::A, &refs, 300);
    up.answer("big.ns.svc.cluster.local", RecordType::AAAA, &["fd00::2"], 300);
    let d = Daemon::start(&config(up.addr(), "tcp"));
    // 0x20 mixed case comes back as sent.
    let out = dig(d.dns, &["BiG.nS.sVc.ClUsTeR.lOcAl", "A", "+noedns", "+ignore"]);
    assert!(out.contains("BiG.nS.sVc.ClUsTeR.lOcAl."), "{out}");
    assert!(out.contains(" tc "), "60 A records do not fit 512 bytes: {out}");
    // Over TCP the whole answer comes back.
    let r = query_tcp(d.dns, "big.ns.svc.cluster.local", RecordType::A, T).unwrap();
    assert_eq!(r.answers.len(), 60);
    // With EDNS the client's 1232 fits 60 A records (~1000 bytes) and gets an OPT back.
    let out = dig(d.dns, &["big.ns.svc.cluster.local", "A", "+bufsize=1232"]);
    assert!(out.contains("OPT PSEUDOSECTION"), "{out}");
    assert!(!out.contains(" tc"), "{out}");
}

#[test]
fn tcp_pipelined_queries_are_answered_out_of_order() {
    let up = FakeUpstream::start();
    up.answer("slow.ns.svc.cluster.local", RecordType::TXT, &["\"slow\""], 300);
    up.behaviour("slow.ns.svc.cluster.local", RecordType::TXT, Behaviour::Delay(Duration::from_millis(500)));
    up.answer("fast.ns.svc.cluster.local", RecordType::TXT, &["\"fast\""], 300);
    let d = Daemon::start(&config(up.addr(), "tcp"));
    let answers = query_tcp_pipelined(
        d.dns,
        &[("slow.ns.svc.cluster.local", RecordType::TXT), ("fast.ns.svc.cluster.local", RecordType::TXT)],
        T,
    )
    .unwrap();
    assert_eq!(answers.len(), 2);
    assert_eq!(answers[0].queries[0].name().to_ascii(), "fast.ns.svc.cluster.local.");
    assert_eq!(answers[1].queries[0].name().to_ascii(), "slow.ns.svc.cluster.local.");
}

#[test]
fn servfail_when_upstream_fails_and_cached_answers_survive_it() {
    let up = FakeUpstream::start();
    up.answer("ok.ns.svc.cluster.local", RecordType::TXT, &["\"v\""], 300);
    let d = Daemon::start(&config(up.addr(), "tcp"));
    let r = query_udp(d.dns, "ok.ns.svc.cluster.local", RecordType::TXT, T).unwrap();
    assert_eq!(r.answers.len(), 1);
    up.set_default_behaviour(Behaviour::ServFail);
    let r = query_udp(d.dns, "new.ns.svc.cluster.local", RecordType::TXT, Duration::from_secs(10)).unwrap();
    assert_eq!(r.metadata.response_code, ResponseCode::ServFail);
    // The cached answer is still served: SERVFAIL never replaces it.
    let r = query_udp(d.dns, "ok.ns.svc.cluster.local", RecordType::TXT, T).unwrap();
    assert_eq!(r.metadata.response_code, ResponseCode::NoError);
    assert_eq!(r.answers.len(), 1);
}

/// (description, packet, expected rcode or None for "no answer").
fn bad_inputs() -> Vec<(&'static str, Vec<u8>, Option<u8>)> {
    let good = |name: &str, qtype: u16| {
        let mut p = vec![0xab, 0xcd, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        p.extend(nodedns_testkit::wire_name(name));
        p.extend_from_slice(&qtype.to_be_bytes());
        p.extend_from_slice(&[0, 1]);
        p
    };
    let mut v = Vec::new();
    v.push(("truncated header", vec![0xab, 0xcd, 0x01], None));
    let mut p = good("a.b", 1);
    p[5] = 0;
    v.push(("qdcount 0", p, Some(1)));
    let mut p = good("a.b", 1);
    p[5] = 2;
    v.push(("qdcount 2", p, Some(1)));
    v.push(("label > 63", good(&"x".repeat(64), 1), Some(1)));
    let long = ["y".repeat(63), "y".repeat(63), "y".repeat(63), "y".repeat(63)].join(".");
    v.push(("name > 255", good(&long, 1), Some(1)));
    let mut p = vec![0xab, 0xcd, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, 0xc0, 0x0c, 0, 1, 0, 1];
    v.push(("pointer loop in question", p.clone(), Some(1)));
    p[13] = 0x20;
    v.push(("forward pointer in question", p, Some(1)));
    let mut p = good("a.b", 1);
    p[2] = 0x01 | (2 << 3);
    v.push(("opcode STATUS", p, Some(4)));
    v.push(("AXFR", good("cluster.local", 252), Some(5)));
    v.push(("IXFR", good("cluster.local", 251), Some(5)));
    let mut p = good("a.b", 1);
    p.push(0x99);
    v.push(("trailing garbage", p, Some(1)));
    let mut p = good("a.b", 1);
    p[11] = 2;
    for _ in 0..2 {
        p.extend_from_slice(&[0, 0, 41, 4, 0xd0, 0, 0, 0, 0, 0, 0]);
    }
    v.push(("two OPT records", p, Some(1)));
    let mut p = good("a.b", 1);
    p[11] = 1;
    p.extend_from_slice(&[0, 0, 41, 4, 0xd0, 0, 1, 0, 0, 0, 0]);
    v.push(("EDNS version 1 (BADVERS)", p, Some(0)));
    let mut p = good("a.b", 1);
    let n = p.len();
    p[n - 1] = 255;
    v.push(("class ANY", p, Some(5)));
    v
}

#[test]
fn bad_input_gets_its_documented_answer_and_the_daemon_keeps_serving() {
    let up = FakeUpstream::start();
    up.answer("ok.ns.svc.cluster.local", RecordType::A, &["10.0.0.7"], 300);
    let d = Daemon::start(&config(up.addr(), "tcp"));
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    for (what, packet, expected) in bad_inputs() {
        s.send_to(&packet, d.dns).unwrap();
        let mut buf = [0u8; 1500];
        match (s.recv(&mut buf), expected) {
            (Ok(n), Some(rcode)) => {
                assert!(n >= 12, "{what}: short answer");
                assert_eq!(&buf[..2], &[0xab, 0xcd], "{what}: ID echoed");
                assert_eq!(buf[3] & 0x0f, rcode, "{what}: rcode");
                if what.contains("BADVERS") {
                    assert_eq!(buf[n - 11 + 5], 1, "extended rcode 1 → BADVERS 16");
                }
            }
            (Err(_), None) => {}
            (got, want) => panic!("{what}: got {got:?}, want rcode {want:?}"),
        }
        // Still serving.
        let r = query_udp(d.dns, "ok.ns.svc.cluster.local", RecordType::A, T).unwrap();
        assert_eq!(r.answers.len(), 1, "{what}: daemon stopped answering");
    }
    // qtype ANY: RFC 8482 minimal answer.
    let r = query_udp(d.dns, "ok.ns.svc.cluster.local", RecordType::ANY, T).unwrap();
    assert_eq!(r.answers.len(), 1);
    assert_eq!(r.answers[0].record_type(), RecordType::HINFO);
    let m = d.metrics();
    assert!(nodedns_e2e::metric_sum(&m, "nodedns_malformed_queries_total", &[]) >= 10.0, "{m}");
    // The same cases over TCP (where the framing allows them).
    for (what, packet, expected) in bad_inputs() {
        let Some(rcode) = expected else { continue };
        let mut conn = std::net::TcpStream::connect(d.dns).unwrap();
        conn.set_read_timeout(Some(T)).unwrap();
        use std::io::{Read, Write};
        let mut frame = (packet.len() as u16).to_be_bytes().to_vec();
        frame.extend_from_slice(&packet);
        conn.write_all(&frame).unwrap();
        let mut len = [0u8; 2];
        conn.read_exact(&mut len).unwrap_or_else(|e| panic!("{what} over TCP: {e}"));
        let mut body = vec![0u8; u16::from_be_bytes(len) as usize];
        conn.read_exact(&mut body).unwrap();
        assert_eq!(body[3] & 0x0f, rcode, "{what} over TCP");
    }
    // A zero-length TCP frame closes the connection; the daemon keeps serving.
    {
        use std::io::{Read, Write};
        let mut conn = std::net::TcpStream::connect(d.dns).unwrap();
        conn.set_read_timeout(Some(T)).unwrap();
        conn.write_all(&[0, 0]).unwrap();
        let mut b = [0u8; 1];
        assert!(matches!(conn.read(&mut b), Ok(0) | Err(_)));
    }
    let r = query_tcp(d.dns, "ok.ns.svc.cluster.local", RecordType::A, T).unwrap();
    assert_eq!(r.answers.len(), 1);
}

/// Against a real authoritative server (Knot DNS) standing in for CoreDNS.
#[test]
fn resolves_through_knot_with_dig_and_a_rust_client() {
    if !have("knotd") || !have("dig") {
        panic!("knotd and dig are required (apt-get install knot bind9-dnsutils)");
    }
    let zone = "$ORIGIN cluster.local.\n$TTL 30\n@ SOA ns.dns.cluster.local. hostmaster.cluster.local. 1 7200 1800 86400 5\n@ NS ns.dns\nns.dns A 10.96.0.10\nweb.default.svc A 10.96.1.1\nweb.default.svc AAAA fd00::1:1\nv4only.default.svc A 10.96.1.2\nalias.default.svc CNAME web.default.svc\n_http._tcp.web.default.svc SRV 0 100 80 web.default.svc\n";
    let knot = Knot::start(&[("cluster.local.", zone)]);
    let d = Daemon::start(&config(knot.addr, "tcp"));
    let out = dig(d.dns, &["web.default.svc.cluster.local", "A", "+short"]);
    assert_eq!(out.trim(), "10.96.1.1");
    let out = dig(d.dns, &["web.default.svc.cluster.local", "AAAA", "+short"]);
    assert_eq!(out.trim(), "fd00::1:1");
    let out = dig(d.dns, &["alias.default.svc.cluster.local", "A", "+short"]);
    assert!(out.contains("web.default.svc.cluster.local.") && out.contains("10.96.1.1"), "{out}");
    let out = dig(d.dns, &["v4only.default.svc.cluster.local", "AAAA"]);
    assert!(out.contains("status: NOERROR") && out.contains("ANSWER: 0") && out.contains("SOA"), "NODATA: {out}");
    let out = dig(d.dns, &["nope.default.svc.cluster.local", "A"]);
    assert!(out.contains("status: NXDOMAIN") && out.contains("SOA"), "{out}");
    let out = dig(d.dns, &["_http._tcp.web.default.svc.cluster.local", "SRV", "+tcp", "+short"]);
    assert_eq!(out.trim(), "0 100 80 web.default.svc.cluster.local.");
    let r = query_tcp(d.dns, "web.default.svc.cluster.local", RecordType::A, T).unwrap();
    assert_eq!(r.answers.len(), 1);
    let r = query_udp(d.dns, "web.default.svc.cluster.local", RecordType::AAAA, T).unwrap();
    assert_eq!(r.answers.len(), 1);
    assert!(d.metric("nodedns_cache_hits_total") >= 2.0);
}
