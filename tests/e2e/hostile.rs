//! Hostile input and poisoning resistance, against the real binary: every malformed-query case
//! over UDP and TCP with its answer and counter, TCP framing abuse, a garbage flood, cache
//! poisoning attempts through the fake upstream, connection floods (idle, slowloris, clients
//! that never read) and the per-client rate limit.
//!
//! The core suite (`core.rs`) checks the basic bad inputs once; this goes through each rule of
//! `nodedns_wire::query` with its `nodedns_malformed_queries_total{reason}` label.

#[path = "hostile/flood.rs"]
mod flood;
#[path = "hostile/packets.rs"]
mod packets;

use std::io::Write;
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::rdata::{A, CNAME, NS};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use nodedns_e2e::testkit::{Behaviour, FakeUpstream, query_tcp, query_udp, wait_until};
use nodedns_e2e::{Daemon, a_addresses, metric_sum};

use packets::{Expect, ID, check_answer, frame, read_frame, tcp_exchange, udp_exchange, wait_closed};

const T: Duration = Duration::from_secs(3);
const GOOD: &str = "ok.ns.svc.cluster.local";

fn config(upstream: SocketAddr, transport: &str, limits: &str) -> String {
    format!(
        r#"listen: ["{{DNS}}"]
cache:
  max_bytes: 16777216
zones:
  - name: "."
    upstreams: ["{upstream}"]
    transport: {transport}
    query_timeout_ms: 400
admin:
  listen: "{{ADMIN}}"
limits:
{limits}
"#
    )
}

fn malformed(d: &Daemon, reason: &str) -> f64 {
    d.metric(&format!("nodedns_malformed_queries_total{{reason=\"{reason}\"}}"))
}

fn shed(d: &Daemon, reason: &str) -> f64 {
    d.metric(&format!("nodedns_shed_total{{reason=\"{reason}\"}}"))
}

fn assert_serving(d: &Daemon, what: &str) {
    let r = query_udp(d.dns, GOOD, RecordType::A, T).unwrap_or_else(|e| panic!("{what}: UDP query failed: {e}"));
    assert_eq!(r.answers.len(), 1, "{what}: UDP answer");
    let r = query_tcp(d.dns, GOOD, RecordType::A, T).unwrap_or_else(|e| panic!("{what}: TCP query failed: {e}"));
    assert_eq!(r.answers.len(), 1, "{what}: TCP answer");
}

fn upstream() -> FakeUpstream {
    let up = FakeUpstream::start();
    up.answer(GOOD, RecordType::A, &["10.0.0.7"], 300);
    up
}

#[test]
fn each_malformed_query_gets_its_answer_and_counter_over_udp_and_tcp() {
    let up = upstream();
    let d = Daemon::start(&config(up.addr(), "tcp", "  tcp_idle_timeout_secs: 2"));
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    for case in packets::cases() {
        let before = malformed(&d, case.reason);
        let answer = udp_exchange(
            &udp,
            d.dns,
            &case.packet,
            Duration::from_millis(if case.expect == Expect::Nothing { 300 } else { 2000 }),
        );
        if let Err(e) = check_answer(&case, answer.as_deref()) {
            panic!("UDP {}: {e}", case.what);
        }
        assert_eq!(malformed(&d, case.reason), before + 1.0, "UDP {}: counter {}", case.what, case.reason);

        // Over TCP, on one connection: the case, then a good query, both on the same stream.
        let before = malformed(&d, case.reason);
        let mut conn = TcpStream::connect(d.dns).unwrap();
        conn.write_all(&frame(&case.packet)).unwrap();
        let mut good = packets::query(GOOD, 1);
        good[..2].copy_from_slice(&[0x11, 0x22]);
        conn.write_all(&frame(&good)).unwrap();
        let first = read_frame(&mut conn, T).unwrap_or_else(|| panic!("TCP {}: connection closed", case.what));
        let (case_answer, good_answer) =
            if first[..2] == ID { (Some(first), read_frame(&mut conn, T)) } else { (None, Some(first)) };
        if let Err(e) = check_answer(&case, case_answer.as_deref()) {
            panic!("TCP {}: {e}", case.what);
        }
        let good_answer =
            good_answer.unwrap_or_else(|| panic!("TCP {}: no answer to the good query after it", case.what));
        assert_eq!((&good_answer[..2], good_answer[3] & 0x0f), (&[0x11u8, 0x22][..], 0), "TCP {}", case.what);
        assert_eq!(malformed(&d, case.reason), before + 1.0, "TCP {}: counter {}", case.what, case.reason);
        assert_serving(&d, case.what);
    }
    // qtype ANY is answered (RFC 8482), not rejected, and never reaches the upstream.
    up.clear_log();
    let r = query_tcp(d.dns, GOOD, RecordType::ANY, T).unwrap();
    assert_eq!(r.answers.len(), 1);
    assert_eq!(r.answers[0].record_type(), RecordType::HINFO);
    assert_eq!(up.query_count(GOOD, RecordType::ANY), 0);
}

#[test]
fn tcp_framing_abuse_closes_only_the_offending_connection() {
    let up = upstream();
    let d = Daemon::start(&config(up.addr(), "tcp", "  tcp_idle_timeout_secs: 2"));
    // A bystander connection, open throughout.
    let mut bystander = TcpStream::connect(d.dns).unwrap();

    // Zero-length frame after a good query: the good one is answered, then the stream closes.
    let before = malformed(&d, "zero_length_frame");
    let mut conn = TcpStream::connect(d.dns).unwrap();
    let mut stream = frame(&packets::query(GOOD, 1));
    stream.extend_from_slice(&[0, 0]);
    stream.extend(frame(&packets::query(GOOD, 1)));
    conn.write_all(&stream).unwrap();
    assert!(read_frame(&mut conn, T).is_some(), "the query before the zero-length frame is answered");
    assert!(wait_closed(&mut conn, T).is_some(), "zero-length frame closes the connection");
    assert_eq!(malformed(&d, "zero_length_frame"), before + 1.0);

    // A frame announcing more than is sent, sender then silent: closed after the idle timeout
    // (2 s here), counted as slow_frame.
    let before = malformed(&d, "slow_frame");
    let mut conn = TcpStream::connect(d.dns).unwrap();
    let q = packets::query(GOOD, 1);
    conn.write_all(&(q.len() as u16 + 100).to_be_bytes()).unwrap();
    conn.write_all(&q).unwrap();
    let took =
        wait_closed(&mut conn, Duration::from_secs(8)).expect("a frame longer than sent is not waited on forever");
    assert!(took >= Duration::from_millis(1500) && took < Duration::from_secs(5), "closed after {took:?}");
    assert!(wait_until(T, || malformed(&d, "slow_frame") == before + 1.0));

    // The same, but the client half-closes: short_frame at once.
    let before = malformed(&d, "short_frame");
    let mut conn = TcpStream::connect(d.dns).unwrap();
    conn.write_all(&[0x01, 0x00, 0xab, 0xcd]).unwrap();
    conn.shutdown(std::net::Shutdown::Write).unwrap();
    let took = wait_closed(&mut conn, T).expect("closed");
    assert!(took < Duration::from_secs(1), "short frame closed after {took:?}");
    assert!(wait_until(T, || malformed(&d, "short_frame") == before + 1.0));

    // A slowloris trickling one byte of the body every 500 ms is closed at the deadline for the
    // whole frame, not kept alive by each byte.
    let mut conn = TcpStream::connect(d.dns).unwrap();
    conn.write_all(&[0x00, 0x40]).unwrap();
    let start = Instant::now();
    let mut closed = None;
    while closed.is_none() && start.elapsed() < Duration::from_secs(8) {
        // A write may still succeed after the server closed; the read below sees the close.
        let _ = conn.write_all(&[0x41]);
        closed = wait_closed(&mut conn, Duration::from_millis(500)).map(|_| start.elapsed());
    }
    let closed = closed.expect("a trickling frame is closed");
    assert!(closed < Duration::from_secs(5), "trickle closed after {closed:?}");

    // Half a length prefix, then nothing: an idle connection, closed after the idle timeout.
    let mut conn = TcpStream::connect(d.dns).unwrap();
    conn.write_all(&[0x00]).unwrap();
    let took = wait_closed(&mut conn, Duration::from_secs(8)).expect("closed");
    assert!(took < Duration::from_secs(5), "{took:?}");

    // Garbage frames that are not DNS at all are answered or dropped; the connection lives.
    let mut conn = TcpStream::connect(d.dns).unwrap();
    let mut g = packets::Garbage::new(7);
    let base = packets::query(GOOD, 1);
    for _ in 0..200 {
        let p = g.packet(&base);
        if !p.is_empty() {
            conn.write_all(&frame(&p)).unwrap();
        }
    }
    let mut good = packets::query(GOOD, 1);
    good[..2].copy_from_slice(&[0x77, 0x77]);
    conn.write_all(&frame(&good)).unwrap();
    let deadline = Instant::now() + T;
    let mut got = false;
    while Instant::now() < deadline {
        match read_frame(&mut conn, T) {
            Some(f) if f[..2] == [0x77, 0x77] => {
                got = true;
                break;
            }
            Some(_) => {}
            None => break,
        }
    }
    assert!(got, "the good query after 200 garbage frames on the same connection is answered");

    // The bystander was idle 2 s+ and is closed by now; the daemon still serves.
    assert!(wait_closed(&mut bystander, Duration::from_secs(5)).is_some(), "idle connection closed");
    assert_serving(&d, "after framing abuse");
}

#[test]
fn a_garbage_flood_over_udp_does_not_stop_the_daemon() {
    let up = upstream();
    let d = Daemon::start(&config(up.addr(), "tcp", "  tcp_idle_timeout_secs: 10"));
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut g = packets::Garbage::new(0x5eed);
    let base = packets::with_additional(packets::query(GOOD, 1), &[packets::opt(0)]);
    for i in 0..5000 {
        let _ = s.send_to(&g.packet(&base), d.dns);
        if i % 500 == 0 {
            std::thread::sleep(Duration::from_millis(5)); // stay under the socket buffer
        }
    }
    assert_serving(&d, "after 5000 garbage datagrams");
    let m = d.metrics();
    assert!(metric_sum(&m, "nodedns_malformed_queries_total", &[]) > 1000.0, "{m}");
    let rss = flood::rss_kib(d.pid());
    assert!(rss < 200 * 1024, "RSS {rss} KiB after the garbage flood");
}

// ---------------------------------------------------------------------------------------------
// Poisoning attempts. Each one: the upstream misbehaves for a question; later, honest answers
// (or NXDOMAIN) are set for every name involved, and a client asking through nodedns must get
// the honest data, never the planted records.

fn a_rec(name: &str, ip: [u8; 4], ttl: u32) -> Record {
    Record::from_rdata(Name::from_ascii(name).unwrap(), ttl, RData::A(A::new(ip[0], ip[1], ip[2], ip[3])))
}

/// Every record in every section of an answer, as "owner TYPE".
fn all_records(m: &hickory_proto::op::Message) -> Vec<String> {
    m.answers
        .iter()
        .chain(&m.authorities)
        .chain(&m.additionals)
        .map(|r| format!("{} {}", r.name, r.record_type()))
        .collect()
}

fn wait_serving(d: &Daemon) {
    // A failed attempt may have ejected the only endpoint for a moment; wait for it to come back.
    assert!(
        wait_until(Duration::from_secs(10), || query_udp(d.dns, GOOD, RecordType::A, T)
            .is_ok_and(|r| r.answers.len() == 1)),
        "the daemon does not answer the good name any more"
    );
}

#[test]
fn responses_with_a_wrong_id_or_question_are_never_cached() {
    for transport in ["tcp", "udp"] {
        let up = upstream();
        let d = Daemon::start(&config(up.addr(), transport, "  tcp_idle_timeout_secs: 10"));
        let victim = "victim.ns.svc.cluster.local";
        up.answer(victim, RecordType::A, &["6.6.6.6"], 3600);
        up.answer(&format!("wrong.{victim}"), RecordType::A, &["6.6.6.7"], 3600);
        up.behaviour(victim, RecordType::A, Behaviour::WrongId);
        let r = query_udp(d.dns, victim, RecordType::A, T).unwrap();
        assert_eq!(r.metadata.response_code, ResponseCode::ServFail, "{transport}: wrong ID is no answer");
        // The failure is cached (RFC 9520) for a second: the next query that reaches the upstream
        // comes once it has expired, and gets a wrong question, which is no answer either.
        up.behaviour(victim, RecordType::A, Behaviour::WrongQuestion);
        let asked = up.query_count(victim, RecordType::A);
        assert!(
            wait_until(Duration::from_secs(5), || {
                let r = query_udp(d.dns, victim, RecordType::A, T).unwrap();
                assert_eq!(
                    r.metadata.response_code,
                    ResponseCode::ServFail,
                    "{transport}: wrong question is no answer"
                );
                up.query_count(victim, RecordType::A) > asked
            }),
            "{transport}: the failure entry never expired"
        );
        wait_serving(&d);

        // Honest data now: the planted 6.6.6.x must never come back from the cache. The honest
        // answer may wait for the failure entry to expire; until then the answer is SERVFAIL.
        up.answer(victim, RecordType::A, &["10.1.1.1"], 60);
        up.behaviour(victim, RecordType::A, Behaviour::Answer);
        up.nxdomain(&format!("wrong.{victim}"), 30, 30);
        assert!(
            wait_until(Duration::from_secs(10), || {
                let r = query_udp(d.dns, victim, RecordType::A, T).unwrap();
                let got = a_addresses(&r);
                assert!(got.is_empty() || got == ["10.1.1.1"], "{transport}: forged data served: {got:?}");
                got == ["10.1.1.1"]
            }),
            "{transport}: the honest answer never came"
        );
        let r = query_udp(d.dns, &format!("wrong.{victim}"), RecordType::A, T).unwrap();
        assert_eq!(r.metadata.response_code, ResponseCode::NXDomain, "{transport}: {:?}", a_addresses(&r));
    }
}

#[test]
fn unrelated_records_in_any_section_never_reach_a_later_client() {
    let up = upstream();
    let d = Daemon::start(&config(up.addr(), "tcp", "  tcp_idle_timeout_secs: 10"));
    let asked = "web.ns.svc.cluster.local";
    // The answer section itself carries a record for another name; authority a delegation of
    // the cluster zone and of example.com to the attacker; additional addresses for those and for
    // the kube-dns service.
    up.answer_records(
        asked,
        RecordType::A,
        vec![
            a_rec("web.ns.svc.cluster.local.", [10, 2, 2, 2], 300),
            a_rec("kube-dns.kube-system.svc.cluster.local.", [6, 6, 6, 1], 86400),
        ],
    );
    up.behaviour(
        asked,
        RecordType::A,
        Behaviour::ExtraRecords(vec![
            Record::from_rdata(
                Name::from_ascii("cluster.local.").unwrap(),
                86400,
                RData::NS(NS(Name::from_ascii("ns.evil.example.").unwrap())),
            ),
            Record::from_rdata(
                Name::from_ascii("example.com.").unwrap(),
                86400,
                RData::NS(NS(Name::from_ascii("ns.evil.example.").unwrap())),
            ),
            a_rec("ns.evil.example.", [6, 6, 6, 2], 86400),
            a_rec("www.example.com.", [6, 6, 6, 3], 86400),
            a_rec("other.ns.svc.cluster.local.", [6, 6, 6, 4], 86400),
        ]),
    );
    let r = query_udp(d.dns, asked, RecordType::A, T).unwrap();
    assert_eq!(all_records(&r), ["web.ns.svc.cluster.local. A"], "only the answer to the question is served");
    // Served again from the cache: still clean.
    let r = query_tcp(d.dns, asked, RecordType::A, T).unwrap();
    assert_eq!(all_records(&r), ["web.ns.svc.cluster.local. A"]);

    // Every planted name, asked directly, gets the upstream's honest answer.
    up.answer("kube-dns.kube-system.svc.cluster.local", RecordType::A, &["10.96.0.10"], 30);
    up.answer("www.example.com", RecordType::A, &["93.184.216.34"], 30);
    up.nxdomain("ns.evil.example", 30, 30);
    up.nxdomain("other.ns.svc.cluster.local", 30, 30);
    let r = query_udp(d.dns, "kube-dns.kube-system.svc.cluster.local", RecordType::A, T).unwrap();
    assert_eq!(a_addresses(&r), ["10.96.0.10"]);
    let r = query_udp(d.dns, "www.example.com", RecordType::A, T).unwrap();
    assert_eq!(a_addresses(&r), ["93.184.216.34"]);
    for nx in ["ns.evil.example", "other.ns.svc.cluster.local"] {
        let r = query_udp(d.dns, nx, RecordType::A, T).unwrap();
        assert_eq!(r.metadata.response_code, ResponseCode::NXDomain, "{nx}: {:?}", all_records(&r));
    }
    // The NS records were not followed either: names under the "delegated" zones still go to
    // the configured upstream (its log shows them).
    assert!(up.query_count("www.example.com", RecordType::A) >= 1);
}

#[test]
fn a_cname_jump_to_an_unrelated_name_caches_nothing_for_that_name() {
    let up = upstream();
    let d = Daemon::start(&config(up.addr(), "udp", "  tcp_idle_timeout_secs: 10"));
    let alias = "alias.ns.svc.cluster.local";
    up.answer_records(
        alias,
        RecordType::A,
        vec![
            Record::from_rdata(
                Name::from_ascii("alias.ns.svc.cluster.local.").unwrap(),
                300,
                RData::CNAME(CNAME(Name::from_ascii("login.bank.example.").unwrap())),
            ),
            a_rec("login.bank.example.", [6, 6, 6, 6], 86400),
            // Beside the chain: records for names nobody asked about.
            a_rec("www.bank.example.", [6, 6, 6, 7], 86400),
            a_rec("kubernetes.default.svc.cluster.local.", [6, 6, 6, 8], 86400),
        ],
    );
    up.behaviour(alias, RecordType::A, Behaviour::ExtraRecords(vec![a_rec("mail.bank.example.", [6, 6, 6, 9], 86400)]));
    let r = query_udp(d.dns, alias, RecordType::A, T).unwrap();
    let recs = all_records(&r);
    assert!(recs.iter().all(|x| x.starts_with("alias.") || x.starts_with("login.bank.example.")), "{recs:?}");

    // Asked directly, each of those names is resolved upstream, honestly.
    up.answer("login.bank.example", RecordType::A, &["192.0.2.10"], 30);
    up.answer("www.bank.example", RecordType::A, &["192.0.2.11"], 30);
    up.answer("kubernetes.default.svc.cluster.local", RecordType::A, &["10.96.0.1"], 30);
    up.nxdomain("mail.bank.example", 30, 30);
    up.clear_log();
    for (name, want) in [
        ("login.bank.example", "192.0.2.10"),
        ("www.bank.example", "192.0.2.11"),
        ("kubernetes.default.svc.cluster.local", "10.96.0.1"),
    ] {
        let r = query_tcp(d.dns, name, RecordType::A, T).unwrap();
        assert_eq!(a_addresses(&r), [want], "{name}");
        assert_eq!(up.query_count(name, RecordType::A), 1, "{name} was fetched, not served from the alias's chain");
    }
    let r = query_udp(d.dns, "mail.bank.example", RecordType::A, T).unwrap();
    assert_eq!(r.metadata.response_code, ResponseCode::NXDomain);
}

// ---------------------------------------------------------------------------------------------
// Resource exhaustion.

/// Idle connections opened, from 25 source addresses (200 each, under the per-client cap 256).
const IDLE: usize = 5000;
/// Slow connections: half trickle a frame (slowloris), half pipeline queries and never read.
const SLOW: usize = 500;
/// RSS bound for the daemon during the flood. Measured here: about 30 MiB before, 48 MiB at peak
/// with 5,500 connections (~3.5 KiB each: a task, socket state, buffers sized to the frames
/// actually sent). A connection used to hold two 64 KiB message buffers; with mimalloc, which
/// touches what it hands out, that was 868 MiB. The bound leaves room for allocator behaviour on
/// other machines while catching any per-connection buffer of a whole message (5,500 × 64 KiB
/// is 344 MiB).
const RSS_BOUND_KIB: u64 = 192 * 1024;

#[test]
fn five_thousand_idle_and_five_hundred_slow_connections() {
    let soft = flood::ensure_nofile((IDLE + SLOW) as u64 + 1024);
    assert!(soft >= (IDLE + SLOW) as u64 + 512, "open-file limit {soft} too low for the test");
    let up = upstream();
    let idle_secs = 4;
    let d = Daemon::start(&config(
        up.addr(),
        "tcp",
        &format!(
            "  tcp_idle_timeout_secs: {idle_secs}\n  max_tcp_connections: 20000\n  max_tcp_connections_per_client: 256"
        ),
    ));
    assert_serving(&d, "before the flood");
    let rss_start = flood::rss_kib(d.pid());

    let sources: Vec<_> = (0..IDLE + SLOW).map(|i| flood::client_ip(i / 200)).collect();
    let opened = Instant::now();
    let mut idle = flood::connect_all(&sources[..IDLE], d.dns);
    let connect_time = opened.elapsed();
    let mut slow = flood::connect_all(&sources[IDLE..], d.dns);
    // Slowloris half: a prefix and one byte of body.
    for c in slow.iter_mut().take(SLOW / 2) {
        flood::start_slow_frame(c, 300).unwrap();
    }
    // Never-reading half: a burst of pipelined queries for a large answer, answers never read.
    let big = "big.ns.svc.cluster.local";
    let txt: Vec<String> = (0..30).map(|i| format!("\"{}{i}\"", "x".repeat(200))).collect();
    up.answer(big, RecordType::TXT, &txt.iter().map(String::as_str).collect::<Vec<_>>(), 300);
    let mut burst = Vec::new();
    for _ in 0..64 {
        burst.extend(frame(&packets::query(big, 16)));
    }
    for c in slow.iter_mut().skip(SLOW / 2) {
        c.set_nonblocking(true).unwrap();
        let _ = c.write(&burst);
    }

    // While all of that is open: normal queries keep being answered, promptly.
    // The kernel completes handshakes before the daemon accepts them: give the accept loop
    // (busy with the burst above, on a machine running other tests) time to catch up.
    let accept_deadline = Instant::now() + Duration::from_secs(20);
    let mut fds = flood::open_fds(d.pid());
    while fds < IDLE + SLOW && Instant::now() < accept_deadline {
        std::thread::sleep(Duration::from_millis(100));
        fds = flood::open_fds(d.pid());
    }
    assert!(fds >= IDLE + SLOW, "daemon holds {fds} descriptors: connections were not all accepted");
    for i in 0..20 {
        let t = Instant::now();
        assert_serving(&d, &format!("during the flood ({i})"));
        assert!(t.elapsed() < Duration::from_secs(2), "answers slowed to {:?}", t.elapsed());
    }
    let rss_peak = flood::rss_kib(d.pid());
    eprintln!(
        "flood: {} connections in {connect_time:?}, daemon fds {fds}, RSS {rss_start} KiB → {rss_peak} KiB",
        IDLE + SLOW
    );
    assert!(rss_peak < RSS_BOUND_KIB, "RSS {rss_peak} KiB over the bound of {RSS_BOUND_KIB} KiB");

    // Idle ones are closed on time: by the idle timeout after their last byte (the last
    // connection opened at `opened + connect_time`), with slack for 5,000 timers on 2 cores.
    let deadline = opened + connect_time + Duration::from_secs(idle_secs + 4);
    let mut not_closed = 0;
    for c in idle.iter_mut() {
        let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(10));
        if wait_closed(c, left).is_none() {
            not_closed += 1;
        }
    }
    assert_eq!(not_closed, 0, "{not_closed} idle connections still open {idle_secs}s+4s after they went idle");
    // The first ones were not closed early: the daemon kept them at least ~the idle timeout.
    assert!(opened.elapsed() >= Duration::from_secs(idle_secs - 1));
    // Slow ones too (slowloris at the frame deadline, non-readers at the write timeout).
    let mut slow_open = 0;
    for c in slow.iter_mut() {
        c.set_nonblocking(false).unwrap();
        if wait_closed(c, Duration::from_secs(idle_secs * 2 + 4)).is_none() {
            slow_open += 1;
        }
    }
    assert_eq!(slow_open, 0, "{slow_open} slow connections never closed");
    drop(idle);
    drop(slow);
    assert!(
        wait_until(Duration::from_secs(10), || flood::open_fds(d.pid()) < 200),
        "descriptors not released: {}",
        flood::open_fds(d.pid())
    );
    assert_serving(&d, "after the flood");
}

/// Waits until the daemon has read `n` more TCP queries than `before` (parsed and counted).
fn wait_tcp_requests(d: &Daemon, before: f64, n: f64) {
    let tcp_requests = || metric_sum(&d.metrics(), "nodedns_requests_total", &["proto=\"tcp\""]);
    assert!(
        wait_until(Duration::from_secs(3), || tcp_requests() >= before + n),
        "the daemon read {} of {n} queries",
        tcp_requests() - before
    );
}

#[test]
fn per_client_connection_cap_closes_the_oldest_idle_connection_and_refuses_only_when_none_is_idle() {
    let up = upstream();
    // Slow names keep queries outstanding: the attempt timeout (2 s) is longer than the part of
    // the test that needs them in flight, the upstream's delay longer still.
    let slow: Vec<String> = (0..19).map(|i| format!("slow{i}.ns.svc.cluster.local")).collect();
    for name in &slow {
        up.answer(name, RecordType::A, &["10.0.0.8"], 300);
        up.behaviour(name, RecordType::A, Behaviour::Delay(Duration::from_secs(3)));
    }
    let cfg = config(up.addr(), "tcp", "  tcp_idle_timeout_secs: 10\n  max_tcp_connections_per_client: 20")
        .replace("query_timeout_ms: 400", "query_timeout_ms: 2000");
    let d = Daemon::start(&cfg);
    let good = packets::query(GOOD, 1);

    // 1. A client holding its maximum of idle connections is not locked out. The oldest one has a
    //    partial frame (one byte of its length): busy, so the oldest *idle* one (the second) is
    //    the one closed.
    let greedy = flood::client_ip(900);
    let mut held = flood::connect_all(&vec![greedy; 20], d.dns);
    held[0].write_all(&frame(&good)[..1]).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let mut newer = flood::connect_all(&[greedy], d.dns).pop().unwrap();
    let started = Instant::now();
    newer.write_all(&frame(&good)).unwrap();
    let answer = read_frame(&mut newer, Duration::from_secs(2)).expect("the new connection is answered within 2 s");
    let took = started.elapsed();
    assert_eq!(answer[3] & 0x0f, 0);
    eprintln!("new connection at the per-client cap answered in {took:?}");
    assert_only_closed(&mut held, 1);
    // The busy one was kept with its partial frame: finishing it gets its answer.
    held[0].write_all(&frame(&good)[1..]).unwrap();
    let r = read_frame(&mut held[0], T).expect("the partial frame's query is answered");
    assert_eq!(r[3] & 0x0f, 0);
    assert_eq!(shed(&d, "tcp_idle_evicted"), 1.0);
    assert_eq!(shed(&d, "tcp_connections"), 0.0);

    // 2. A client whose connections are all busy (one partial frame, 19 queries waiting on the
    //    upstream) is refused the next one, as before.
    let busy_client = flood::client_ip(901);
    let mut busy = flood::connect_all(&vec![busy_client; 20], d.dns);
    let before = metric_sum(&d.metrics(), "nodedns_requests_total", &["proto=\"tcp\""]);
    busy[0].write_all(&frame(&good)[..1]).unwrap();
    for (c, name) in busy[1..].iter_mut().zip(&slow) {
        c.write_all(&frame(&packets::query(name, 1))).unwrap();
    }
    wait_tcp_requests(&d, before, 19.0);
    let mut refused = flood::connect_all(&[busy_client], d.dns).pop().unwrap();
    let _ = refused.write_all(&frame(&good));
    assert!(read_frame(&mut refused, Duration::from_secs(1)).is_none(), "no answer over the cap when none is idle");
    assert!(wait_closed(&mut refused, Duration::from_secs(1)).is_some(), "refused connection closed");
    assert_eq!(shed(&d, "tcp_connections"), 1.0);
    assert_eq!(shed(&d, "tcp_idle_evicted"), 1.0, "no busy connection was closed");

    // 3. Another client is unaffected meanwhile.
    let r = tcp_exchange(d.dns, &good, T).expect("another client is served");
    assert_eq!(r[3] & 0x0f, 0);
    // The busy connections were never closed: each gets an answer to its query (data, or
    // SERVFAIL once the attempt timed out).
    let answered = busy[1..].iter_mut().filter_map(|c| read_frame(c, Duration::from_secs(6))).count();
    assert_eq!(answered, 19, "every outstanding query is answered on its connection");
}

#[test]
fn global_connection_cap_closes_the_oldest_idle_connection_for_a_new_client() {
    let up = upstream();
    let d = Daemon::start(&config(up.addr(), "tcp", "  tcp_idle_timeout_secs: 10\n  max_tcp_connections: 10"));
    let good = packets::query(GOOD, 1);
    // Ten clients, one idle connection each, fill the global cap; the oldest has a partial frame.
    let sources: Vec<_> = (910..920).map(flood::client_ip).collect();
    let mut held = flood::connect_all(&sources, d.dns);
    held[0].write_all(&frame(&good)[..1]).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    // An eleventh client gets in: the oldest idle connection (another client's) makes room.
    let mut newer = flood::connect_all(&[flood::client_ip(920)], d.dns).pop().unwrap();
    newer.write_all(&frame(&good)).unwrap();
    let answer = read_frame(&mut newer, Duration::from_secs(2)).expect("a new client is answered at the global cap");
    assert_eq!(answer[3] & 0x0f, 0);
    assert_only_closed(&mut held, 1);
    assert_eq!(shed(&d, "tcp_idle_evicted"), 1.0);
    assert_eq!(shed(&d, "tcp_connections"), 0.0);
}

#[test]
fn per_client_rate_limit_refuses_over_the_rate_and_only_that_client() {
    let up = upstream();
    let d = Daemon::start(&config(up.addr(), "tcp", "  tcp_idle_timeout_secs: 10\n  per_client_qps: 20"));
    // Warm the cache from another address so the flood is all hits.
    let r = query_udp(d.dns, GOOD, RecordType::A, T).unwrap();
    assert_eq!(r.answers.len(), 1);

    let flooder = UdpSocket::bind("127.66.0.1:0").unwrap();
    flooder.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    let q = packets::query(GOOD, 1);
    let start = Instant::now();
    let (mut ok, mut refused) = (0, 0);
    for _ in 0..200 {
        flooder.send_to(&q, d.dns).unwrap();
        let mut buf = [0u8; 1500];
        if let Ok(n) = flooder.recv(&mut buf) {
            match buf[..n][3] & 0x0f {
                0 => ok += 1,
                5 => refused += 1,
                r => panic!("rcode {r}"),
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    // One second of burst (20) plus 20 per second of the run.
    let allowed = 20.0 + 20.0 * secs + 2.0;
    assert!(ok as f64 <= allowed && ok >= 20, "{ok} answered, {refused} refused in {secs:.2}s");
    assert_eq!(ok + refused, 200, "every query gets an answer (REFUSED over the limit)");
    assert!(shed(&d, "rate_limit") >= refused as f64);

    // Another client is not affected, over UDP or TCP.
    let other = UdpSocket::bind("127.66.0.2:0").unwrap();
    for _ in 0..10 {
        let a = udp_exchange(&other, d.dns, &q, T).expect("answer");
        assert_eq!(a[3] & 0x0f, 0, "another client is answered");
    }
    // Over TCP the same budget applies (shared with UDP): a pipelined burst from a third client
    // gets its burst answered and the rest REFUSED, on one connection.
    let third = flood::client_ip(950);
    let mut conn = flood::connect_all(&[third], d.dns).pop().unwrap();
    let mut burst = Vec::new();
    for _ in 0..60 {
        burst.extend(frame(&q));
    }
    conn.write_all(&burst).unwrap();
    let (mut ok, mut refused) = (0, 0);
    for _ in 0..60 {
        let f = read_frame(&mut conn, T).expect("every pipelined query is answered");
        match f[3] & 0x0f {
            0 => ok += 1,
            5 => refused += 1,
            r => panic!("rcode {r}"),
        }
    }
    assert!((20..=25).contains(&ok) && refused >= 35, "TCP: {ok} answered, {refused} refused");
    // After a second the budget is back.
    std::thread::sleep(Duration::from_millis(1100));
    let a = udp_exchange(&flooder, d.dns, &q, T).expect("answer");
    assert_eq!(a[3] & 0x0f, 0, "refilled after a second");
}

#[test]
fn the_daemon_runs_without_capabilities_once_serving() {
    let up = upstream();
    let d = Daemon::start(&config(up.addr(), "tcp", "  tcp_idle_timeout_secs: 10"));
    assert_serving(&d, "after dropping capabilities");
    // Without node integration nothing is kept, in any thread.
    for task in std::fs::read_dir(format!("/proc/{}/task", d.pid())).unwrap() {
        let status = std::fs::read_to_string(task.unwrap().path().join("status")).unwrap();
        let field = |f: &str| status.lines().find_map(|l| l.strip_prefix(f)).unwrap_or("").trim().to_string();
        assert_eq!(field("CapEff:"), "0000000000000000", "{status}");
        assert_eq!(field("CapPrm:"), "0000000000000000");
        assert_eq!(field("NoNewPrivs:"), "1");
    }
    assert!(d.log().contains("capabilities dropped"), "{}", d.log());
}

/// Asserts that of `held`, connection `closed` (the oldest idle one) was closed for a newer one,
/// and every other one is still open.
fn assert_only_closed(held: &mut [TcpStream], closed: usize) {
    assert!(wait_closed(&mut held[closed], Duration::from_secs(1)).is_some(), "the oldest idle connection is closed");
    let still_open = held
        .iter_mut()
        .enumerate()
        .filter(|(i, _)| *i != closed)
        .map(|(_, c)| wait_closed(c, Duration::from_millis(50)))
        .filter(Option::is_none)
        .count();
    assert_eq!(still_open, held.len() - 1, "only one connection is closed for the new one");
}
