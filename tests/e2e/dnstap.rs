//! dnstap output (issue 16), read by the dnstap ecosystem's own tools: the real binary writes to
//! a unix socket served by `fstrm_capture` (fstrm-bin) and to a file, and `dnstap-ldns`
//! (dnstap-ldns) decodes both. Client traffic over UDP and TCP (miss, hit, NXDOMAIN) and the
//! upstream exchanges must all be there, with identity and version.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use nodedns_e2e::testkit::{FakeUpstream, query_tcp, query_udp};
use nodedns_e2e::{Daemon, have};

const T: Duration = Duration::from_secs(3);

fn config(upstream: SocketAddr, dnstap: &str) -> String {
    format!(
        r#"listen: ["{{DNS}}"]
zones:
  - name: "."
    upstreams: ["{upstream}"]
    transport: tcp
admin:
  listen: "{{ADMIN}}"
log:
  dnstap:
{dnstap}
"#
    )
}

fn tools() {
    for t in ["fstrm_capture", "dnstap-ldns"] {
        assert!(have(t), "{t} missing: tests/run.sh installs fstrm-bin and dnstap-ldns");
    }
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("nodedns-e2e-dnstap-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// One message as `dnstap-ldns -y` prints it.
#[derive(Debug)]
struct Msg {
    identity: String,
    version: String,
    kind: String,
    protocol: String,
    /// The rest of the document: addresses and the decoded DNS message(s).
    text: String,
}

fn field(doc: &str, key: &str) -> String {
    doc.lines()
        .find_map(|l| l.trim_start().strip_prefix(key).and_then(|v| v.strip_prefix(": ")))
        .unwrap_or("")
        .trim_matches('"')
        .to_string()
}

/// Decodes a Frame Streams file with `dnstap-ldns -r FILE -y`.
fn read_capture(path: &Path) -> Vec<Msg> {
    let out = Command::new("dnstap-ldns").arg("-r").arg(path).arg("-y").output().expect("run dnstap-ldns");
    assert!(out.status.success(), "dnstap-ldns failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout)
        .split("\n---")
        .filter(|d| d.contains("type: MESSAGE"))
        .map(|d| Msg {
            identity: field(d, "identity"),
            version: field(d, "version"),
            // The Dnstap type is the first `type:`; the message's is indented under `message:`.
            kind: d
                .lines()
                .filter(|l| l.starts_with("  type: "))
                .map(|l| l[8..].to_string())
                .next()
                .unwrap_or_default(),
            protocol: field(d, "socket_protocol"),
            text: d.to_string(),
        })
        .collect()
}

/// The question line dnstap-ldns prints for `name` `A` (the newline keeps AAAA out).
fn question(name: &str) -> String {
    format!(";{name}.\tIN\tA\n")
}

fn count(msgs: &[Msg], kind: &str, protocol: &str, name: &str) -> usize {
    msgs.iter().filter(|m| m.kind == kind && m.protocol == protocol && m.text.contains(&question(name))).count()
}

fn upstream() -> FakeUpstream {
    let up = FakeUpstream::start();
    up.answer("hit.example", RecordType::A, &["192.0.2.1"], 300);
    up.answer("hit.example", RecordType::AAAA, &["2001:db8::1"], 300);
    up.answer("tcp.example", RecordType::A, &["192.0.2.2"], 300);
    up.answer("tcp.example", RecordType::AAAA, &["2001:db8::2"], 300);
    up.nxdomain("gone.example", 60, 60);
    up
}

/// Miss then hit over UDP, NXDOMAIN over UDP, hit and miss over TCP: 5 client exchanges.
fn send_queries(d: &Daemon) {
    let r = query_udp(d.dns, "hit.example", RecordType::A, T).unwrap();
    assert_eq!(r.response_code, ResponseCode::NoError);
    query_udp(d.dns, "hit.example", RecordType::A, T).unwrap();
    let nx = query_udp(d.dns, "gone.example", RecordType::A, T).unwrap();
    assert_eq!(nx.response_code, ResponseCode::NXDomain);
    query_tcp(d.dns, "hit.example", RecordType::A, T).unwrap();
    query_tcp(d.dns, "tcp.example", RecordType::A, T).unwrap();
}

fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn check_stream(msgs: &[Msg], identity: &str) {
    assert!(!msgs.is_empty());
    for m in msgs {
        assert_eq!(m.identity, identity, "{m:?}");
        assert_eq!(m.version, concat!("nodedns ", env!("CARGO_PKG_VERSION")), "{m:?}");
    }
    // UDP: the miss and the hit of hit.example, and gone.example.
    assert_eq!(count(msgs, "CLIENT_QUERY", "UDP", "hit.example"), 2, "{msgs:#?}");
    assert_eq!(count(msgs, "CLIENT_RESPONSE", "UDP", "hit.example"), 2);
    assert_eq!(count(msgs, "CLIENT_QUERY", "UDP", "gone.example"), 1);
    let nx: Vec<&Msg> =
        msgs.iter().filter(|m| m.kind == "CLIENT_RESPONSE" && m.text.contains(&question("gone.example"))).collect();
    assert_eq!(nx.len(), 1);
    assert!(nx[0].text.contains("rcode: NXDOMAIN"), "{}", nx[0].text);
    // TCP: a hit and a miss.
    assert_eq!(count(msgs, "CLIENT_QUERY", "TCP", "hit.example"), 1);
    assert_eq!(count(msgs, "CLIENT_RESPONSE", "TCP", "hit.example"), 1);
    assert_eq!(count(msgs, "CLIENT_QUERY", "TCP", "tcp.example"), 1);
    assert_eq!(count(msgs, "CLIENT_RESPONSE", "TCP", "tcp.example"), 1);
    // Client messages carry the client's and the listener's addresses.
    let q = msgs.iter().find(|m| m.kind == "CLIENT_QUERY").unwrap();
    assert!(q.text.contains("query_address: \"127.0.0.1\""), "{}", q.text);
    assert!(q.text.contains("response_address: \"127."), "{}", q.text);
    // Upstream: each miss fetched the pair over the persistent TCP connections, once.
    for name in ["hit.example", "tcp.example", "gone.example"] {
        assert_eq!(count(msgs, "FORWARDER_QUERY", "TCP", name), 1, "{name}");
        assert_eq!(count(msgs, "FORWARDER_RESPONSE", "TCP", name), 1, "{name}");
    }
    let f = msgs.iter().find(|m| m.kind == "FORWARDER_RESPONSE").unwrap();
    assert!(f.text.contains("query_zone: \".\""), "{}", f.text);
}

/// fstrm_capture on `socket`, writing `out`; killed on drop.
struct Capture(Child);

impl Capture {
    fn start(socket: &Path, out: &Path) -> Capture {
        let child = Command::new("fstrm_capture")
            .args(["-t", "protobuf:dnstap.Dnstap", "-u"])
            .arg(socket)
            .arg("-w")
            .arg(out)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("run fstrm_capture");
        wait_until("fstrm_capture's socket", Duration::from_secs(5), || socket.exists());
        Capture(child)
    }

    /// SIGTERM: fstrm_capture closes its output file cleanly.
    fn stop(mut self) {
        let _ = Command::new("kill").arg(self.0.id().to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("fstrm_capture did not exit on SIGTERM");
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_unix_socket_read_by_fstrm_capture_gets_every_client_and_upstream_message() {
    tools();
    let dir = scratch("socket");
    let socket = dir.join("tap.sock");
    let capture_file = dir.join("capture.fstrm");
    let capture = Capture::start(&socket, &capture_file);
    let up = upstream();
    let mut d =
        Daemon::start(&config(up.addr(), &format!("    socket: {}\n    identity: e2e-node-1", socket.display())));
    // The first stream opens with the writer's first poll after start.
    wait_until("dnstap stream open", T, || d.log().contains("dnstap output open"));
    let before = d.metric("nodedns_dnstap_sent_total");
    send_queries(&d);
    // 5 client exchanges (10 messages) and 3 pair fetches (12): at least 22 more, at most a
    // few probe messages besides.
    wait_until("messages sent", T, || d.metric("nodedns_dnstap_sent_total") >= before + 22.0);
    assert_eq!(d.metric("nodedns_dnstap_dropped_total"), 0.0);
    // SIGTERM: the daemon sends STOP and waits for FINISH before exiting.
    assert_eq!(d.stop(), Some(0), "clean exit");
    capture.stop();
    let msgs = read_capture(&capture_file);
    check_stream(&msgs, "e2e-node-1");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_file_holds_one_readable_stream() {
    tools();
    let dir = scratch("file");
    let file = dir.join("nodedns.dnstap");
    let up = upstream();
    let mut d = Daemon::spawn(&config(up.addr(), &format!("    file: {}", file.display())), &[("NODE_NAME", "node-7")]);
    d.wait_ready(Duration::from_secs(10));
    send_queries(&d);
    wait_until("messages sent", T, || d.metric("nodedns_dnstap_sent_total") >= 22.0);
    assert_eq!(d.stop(), Some(0));
    let msgs = read_capture(&file);
    // Without log.dnstap.identity, NODE_NAME names the node.
    check_stream(&msgs, "node-7");
}

#[test]
fn without_dnstap_the_counters_exist_at_zero_and_stay_there() {
    let up = upstream();
    let d = Daemon::start(&format!(
        r#"listen: ["{{DNS}}"]
zones:
  - name: "."
    upstreams: ["{}"]
admin:
  listen: "{{ADMIN}}"
"#,
        up.addr()
    ));
    send_queries(&d);
    let text = d.metrics();
    assert!(text.contains("\nnodedns_dnstap_sent_total 0\n"), "{text}");
    assert!(text.contains("\nnodedns_dnstap_dropped_total 0\n"), "{text}");
}

#[test]
fn when_the_reader_goes_away_the_stream_resumes_with_the_next_one() {
    tools();
    let dir = scratch("reconnect");
    let socket = dir.join("tap.sock");
    let (first_file, second_file) = (dir.join("first.fstrm"), dir.join("second.fstrm"));
    let first = Capture::start(&socket, &first_file);
    let up = upstream();
    let mut d = Daemon::start(&config(up.addr(), &format!("    socket: {}", socket.display())));
    wait_until("dnstap stream open", T, || d.log().contains("dnstap output open"));
    let sent = d.metric("nodedns_dnstap_sent_total");
    query_udp(d.dns, "hit.example", RecordType::A, T).unwrap();
    // hit.example is a pair miss: CLIENT_QUERY, 2 FORWARDER_QUERY, 2 FORWARDER_RESPONSE and
    // CLIENT_RESPONSE. The readiness probe's 2 SOA messages may be counted after `sent` was read,
    // so wait for 6: at least 4 of them are this query's, and its CLIENT_QUERY is the first.
    wait_until("the first reader's messages", T, || d.metric("nodedns_dnstap_sent_total") >= sent + 6.0);
    first.stop();
    // A new collector on the same path: nodedns notices the old one is gone at its next write
    // (those messages are dropped and counted), reconnects with backoff and carries on.
    let second = Capture::start(&socket, &second_file);
    let resumed_from = d.metric("nodedns_dnstap_sent_total");
    wait_until("messages to the second reader", Duration::from_secs(15), || {
        query_udp(d.dns, "tcp.example", RecordType::A, T).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        d.metric("nodedns_dnstap_sent_total") >= resumed_from + 4.0
    });
    assert_eq!(d.stop(), Some(0));
    second.stop();
    let before = read_capture(&first_file);
    assert!(count(&before, "CLIENT_QUERY", "UDP", "hit.example") >= 1, "{before:#?}");
    let after = read_capture(&second_file);
    assert!(count(&after, "CLIENT_QUERY", "UDP", "tcp.example") >= 1, "{after:#?}");
    assert!(count(&after, "CLIENT_RESPONSE", "UDP", "tcp.example") >= 1);
    let _ = std::fs::remove_dir_all(dir);
}
