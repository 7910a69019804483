//! The encoder and the framing, checked by decoding what they wrote (an independent, minimal
//! protobuf and Frame Streams reader below), and the writer against a fake collector.

use std::io::{Read, Write};
use std::os::unix::net::UnixListener;
use std::time::{Duration, UNIX_EPOCH};

use super::framestream::*;
use super::*;
use crate::config::{DnstapConfig, DnstapTarget};

#[derive(Debug, PartialEq)]
enum Value {
    Varint(u64),
    Fixed32(u32),
    Bytes(Vec<u8>),
}

fn read_varint(b: &[u8], at: &mut usize) -> u64 {
    let mut v = 0u64;
    let mut shift = 0;
    loop {
        let byte = b[*at];
        *at += 1;
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return v;
        }
        shift += 7;
    }
}

/// Decodes one protobuf message into (field, value) pairs, panicking on anything malformed.
fn decode(b: &[u8]) -> Vec<(u32, Value)> {
    let mut at = 0;
    let mut fields = Vec::new();
    while at < b.len() {
        let key = read_varint(b, &mut at);
        let (field, wire) = ((key >> 3) as u32, key & 7);
        let v = match wire {
            0 => Value::Varint(read_varint(b, &mut at)),
            5 => {
                let v = u32::from_le_bytes(b[at..at + 4].try_into().unwrap());
                at += 4;
                Value::Fixed32(v)
            }
            2 => {
                let len = read_varint(b, &mut at) as usize;
                let v = b[at..at + len].to_vec();
                at += len;
                Value::Bytes(v)
            }
            w => panic!("unexpected wire type {w}"),
        };
        fields.push((field, v));
    }
    assert_eq!(at, b.len());
    fields
}

fn field(fields: &[(u32, Value)], n: u32) -> Option<&Value> {
    fields.iter().find(|(f, _)| *f == n).map(|(_, v)| v)
}

fn bytes(fields: &[(u32, Value)], n: u32) -> Vec<u8> {
    match field(fields, n) {
        Some(Value::Bytes(b)) => b.clone(),
        other => panic!("field {n}: {other:?}"),
    }
}

fn varint(fields: &[(u32, Value)], n: u32) -> u64 {
    match field(fields, n) {
        Some(Value::Varint(v)) => *v,
        other => panic!("field {n}: {other:?}"),
    }
}

/// Splits a stream of data frames into payloads.
fn frames(mut b: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while !b.is_empty() {
        let len = u32::from_be_bytes(b[..4].try_into().unwrap()) as usize;
        assert_ne!(len, 0, "a control frame among data frames");
        out.push(b[4..4 + len].to_vec());
        b = &b[4 + len..];
    }
    out
}

/// A Dnstap payload: (identity, version, Message fields).
fn dnstap(payload: &[u8]) -> (Vec<u8>, Vec<u8>, Vec<(u32, Value)>) {
    let top = decode(payload);
    assert_eq!(varint(&top, 15), 1, "Dnstap.type MESSAGE");
    (bytes(&top, 1), bytes(&top, 2), decode(&bytes(&top, 14)))
}

const QUERY: &[u8] = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x01a\x00\x00\x01\x00\x01";
const RESPONSE: &[u8] = b"\x12\x34\x81\x80\x00\x01\x00\x00\x00\x00\x00\x00\x01a\x00\x00\x01\x00\x01";

#[test]
fn client_events_decode_to_what_was_encoded() {
    let client: SocketAddr = "10.1.2.3:40000".parse().unwrap();
    let server: SocketAddr = "169.254.20.10:53".parse().unwrap();
    let asked = UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789);
    let answered = asked + Duration::from_micros(5);
    let q = Event {
        kind: MessageType::ClientQuery,
        protocol: SocketProtocol::Udp,
        query_addr: Some(client),
        response_addr: Some(server),
        query_time: Some(asked),
        query_message: Some(QUERY),
        query_zone: None,
        response_time: None,
        response_message: None,
    };
    let r = Event {
        kind: MessageType::ClientResponse,
        query_message: None,
        response_time: Some(answered),
        response_message: Some(RESPONSE),
        ..q
    };
    let mut out = Vec::new();
    q.put_frame(b"node-1", b"nodedns 0.1.0", &mut out);
    assert_eq!(out.len(), q.frame_len(b"node-1", b"nodedns 0.1.0"));
    r.put_frame(b"node-1", b"nodedns 0.1.0", &mut out);
    assert_eq!(count_frames(&out), 2);
    let f = frames(&out);
    assert_eq!(f.len(), 2);

    let (id, ver, m) = dnstap(&f[0]);
    assert_eq!(id, b"node-1");
    assert_eq!(ver, b"nodedns 0.1.0");
    assert_eq!(varint(&m, 1), 5, "CLIENT_QUERY");
    assert_eq!(varint(&m, 2), 1, "INET");
    assert_eq!(varint(&m, 3), 1, "UDP");
    assert_eq!(bytes(&m, 4), [10, 1, 2, 3]);
    assert_eq!(bytes(&m, 5), [169, 254, 20, 10]);
    assert_eq!(varint(&m, 6), 40000);
    assert_eq!(varint(&m, 7), 53);
    assert_eq!(varint(&m, 8), 1_700_000_000);
    assert_eq!(field(&m, 9), Some(&Value::Fixed32(123_456_789)));
    assert_eq!(bytes(&m, 10), QUERY);
    assert!(field(&m, 14).is_none());

    let (_, _, m) = dnstap(&f[1]);
    assert_eq!(varint(&m, 1), 6, "CLIENT_RESPONSE");
    assert_eq!(varint(&m, 8), 1_700_000_000);
    assert_eq!(varint(&m, 12), 1_700_000_000);
    assert_eq!(field(&m, 13), Some(&Value::Fixed32(123_461_789)));
    assert_eq!(bytes(&m, 14), RESPONSE);
    assert!(field(&m, 10).is_none());
}

#[test]
fn ipv6_and_large_messages_encode_lengths_right() {
    // A 64 KiB TCP answer needs a 3-byte length varint inside the Message and the Dnstap.
    let big = vec![0xab; 65_535];
    let e = Event {
        kind: MessageType::ForwarderResponse,
        protocol: SocketProtocol::Tcp,
        query_addr: None,
        response_addr: Some("[fd00::53]:5353".parse().unwrap()),
        query_time: Some(UNIX_EPOCH),
        query_message: None,
        query_zone: Some(b"\x07cluster\x05local\x00"),
        response_time: Some(UNIX_EPOCH + Duration::from_secs(1)),
        response_message: Some(&big),
    };
    let mut out = Vec::new();
    e.put_frame(b"", b"v", &mut out);
    assert_eq!(out.len(), e.frame_len(b"", b"v"));
    let (id, _, m) = dnstap(&frames(&out)[0]);
    assert!(id.is_empty());
    assert_eq!(varint(&m, 1), 8, "FORWARDER_RESPONSE");
    assert_eq!(varint(&m, 2), 2, "INET6");
    assert_eq!(varint(&m, 3), 2, "TCP");
    assert_eq!(bytes(&m, 5).len(), 16);
    assert_eq!(varint(&m, 7), 5353);
    assert!(field(&m, 4).is_none() && field(&m, 6).is_none());
    assert_eq!(bytes(&m, 11), b"\x07cluster\x05local\x00");
    assert_eq!(bytes(&m, 14), big);
}

#[test]
fn control_frames_round_trip() {
    let f = control_frame(CONTROL_READY, Some(CONTENT_TYPE));
    assert_eq!(&f[..4], &[0, 0, 0, 0], "escape");
    let c = read_control(&mut &f[..]).unwrap();
    assert_eq!(c, Control { control: CONTROL_READY, content_types: vec![CONTENT_TYPE.to_vec()] });
    let stop = control_frame(CONTROL_STOP, None);
    assert_eq!(stop, [0, 0, 0, 0, 0, 0, 0, 4, 0, 0, 0, 3]);
    assert!(parse_control(&[0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 9]).is_err(), "field longer than the frame");
    assert!(read_control(&mut &[0u8, 0, 0, 5][..]).is_err(), "a data frame is not a control frame");
}

/// Reads a Frame Streams file or socket stream: START/STOP control frames around data frames.
/// Returns the data frames' payloads and whether the stream ended with STOP.
fn read_stream(r: &mut impl Read) -> (Vec<Vec<u8>>, bool) {
    let mut out = Vec::new();
    let mut len = [0u8; 4];
    loop {
        if r.read_exact(&mut len).is_err() {
            return (out, false);
        }
        let n = u32::from_be_bytes(len) as usize;
        if n == 0 {
            let mut clen = [0u8; 4];
            r.read_exact(&mut clen).unwrap();
            let mut body = vec![0; u32::from_be_bytes(clen) as usize];
            r.read_exact(&mut body).unwrap();
            match parse_control(&body).unwrap().control {
                CONTROL_START => continue,
                CONTROL_STOP => return (out, true),
                c => panic!("unexpected control frame {c}"),
            }
        }
        let mut payload = vec![0; n];
        r.read_exact(&mut payload).unwrap();
        out.push(payload);
    }
}

fn tmp(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("nodedns-dnstap-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn a_file_gets_start_frames_and_stop() {
    let dir = tmp("file");
    let path = dir.join("out.dnstap");
    let metrics = Metrics::new(false);
    let config = DnstapConfig { target: DnstapTarget::File(path.clone()), identity: Some("node-a".into()) };
    let tap = Dnstap::start(&config, &metrics).unwrap();
    let client = "127.0.0.1:1000".parse().ok();
    let now = SystemTime::now();
    tap.client(Proto::Udp, client, None, QUERY, Some(RESPONSE), now, now);
    tap.client(Proto::Tcp, client, None, QUERY, None, now, now);
    wait_for("three messages written", || metrics.dnstap_sent.get() == 3);
    tap.shutdown(Duration::from_secs(5));
    let mut f = File::open(&path).unwrap();
    let mut start = [0u8; 8];
    f.read_exact(&mut start).unwrap();
    assert_eq!(start[..4], [0, 0, 0, 0]);
    let mut body = vec![0; u32::from_be_bytes(start[4..].try_into().unwrap()) as usize];
    f.read_exact(&mut body).unwrap();
    assert_eq!(parse_control(&body).unwrap().content_types, vec![CONTENT_TYPE.to_vec()]);
    let (payloads, stopped) = read_stream(&mut f);
    assert!(stopped, "the file ends with STOP");
    let kinds: Vec<u64> = payloads.iter().map(|p| varint(&dnstap(p).2, 1)).collect();
    assert_eq!(kinds, [5, 6, 5]);
    assert_eq!(dnstap(&payloads[2]).2.iter().find(|(f, _)| *f == 3).map(|(_, v)| v), Some(&Value::Varint(2)));
    let (id, ver, _) = dnstap(&payloads[0]);
    assert_eq!(id, b"node-a");
    assert_eq!(ver, version_string().as_bytes());
    assert_eq!(metrics.dnstap_dropped.get(), 0);
    let _ = std::fs::remove_dir_all(dir);
}

/// A fake collector connection: ACCEPTs, then reads `want` data frames; answers STOP with
/// FINISH when `finish`.
fn collect(listener: &UnixListener, want: usize) -> (Vec<Vec<u8>>, std::os::unix::net::UnixStream) {
    let (mut s, _) = listener.accept().unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let ready = read_control(&mut s).unwrap();
    assert_eq!(ready.control, CONTROL_READY);
    assert_eq!(ready.content_types, vec![CONTENT_TYPE.to_vec()]);
    s.write_all(&control_frame(CONTROL_ACCEPT, Some(CONTENT_TYPE))).unwrap();
    let start = read_control(&mut s).unwrap();
    assert_eq!(start.control, CONTROL_START);
    let mut got = Vec::new();
    while got.len() < want {
        let mut len = [0u8; 4];
        s.read_exact(&mut len).unwrap();
        let mut p = vec![0; u32::from_be_bytes(len) as usize];
        assert!(!p.is_empty(), "control frame before the data");
        s.read_exact(&mut p).unwrap();
        got.push(p);
    }
    (got, s)
}

#[test]
fn a_socket_gets_the_handshake_reconnects_and_finishes() {
    let dir = tmp("socket");
    let path = dir.join("tap.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let metrics = Metrics::new(false);
    let config = DnstapConfig { target: DnstapTarget::Socket(path.clone()), identity: None };
    let tap = Dnstap::start(&config, &metrics).unwrap();
    let now = SystemTime::now();
    let fwd = tap.forwarder(&"cluster.local.".parse().unwrap());
    fwd.query_sent("127.0.0.53:53".parse().unwrap(), WireProtocol::Tcp, QUERY, now);

    // The first reader takes one message, then goes away.
    let (got, first) = collect(&listener, 1);
    let (_, _, m) = dnstap(&got[0]);
    assert_eq!(varint(&m, 1), 7, "FORWARDER_QUERY");
    assert_eq!(bytes(&m, 11), b"\x07cluster\x05local\x00");
    assert_eq!(bytes(&m, 5), [127, 0, 0, 53]);
    wait_for("the first message counted", || metrics.dnstap_sent.get() == 1);
    drop(first);

    // Messages while nobody reads are dropped (and counted) until the writer notices and
    // reconnects to the next reader, which then gets new messages.
    let reader = std::thread::spawn(move || {
        let (got, mut s) = collect(&listener, 1);
        // More data may follow before the writer stops: skip to STOP, answer FINISH.
        loop {
            let mut len = [0u8; 4];
            s.read_exact(&mut len).unwrap();
            let n = u32::from_be_bytes(len) as usize;
            if n > 0 {
                s.read_exact(&mut vec![0; n]).unwrap();
                continue;
            }
            s.read_exact(&mut len).unwrap();
            let mut body = vec![0; u32::from_be_bytes(len) as usize];
            s.read_exact(&mut body).unwrap();
            assert_eq!(parse_control(&body).unwrap().control, CONTROL_STOP);
            break;
        }
        s.write_all(&control_frame(CONTROL_FINISH, None)).unwrap();
        got
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while metrics.dnstap_sent.get() < 2 {
        assert!(Instant::now() < deadline, "no reconnect");
        fwd.response_received("127.0.0.53:53".parse().unwrap(), WireProtocol::Tcp, RESPONSE, now, now);
        std::thread::sleep(Duration::from_millis(20));
    }
    tap.shutdown(Duration::from_secs(5));
    let got = reader.join().unwrap();
    let (_, _, m) = dnstap(&got[0]);
    assert_eq!(varint(&m, 1), 8, "FORWARDER_RESPONSE");
    assert_eq!(bytes(&m, 14), RESPONSE);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn without_a_reader_messages_are_dropped_and_counted_never_waited_for() {
    let dir = tmp("noreader");
    let metrics = Metrics::new(false);
    let config = DnstapConfig { target: DnstapTarget::Socket(dir.join("nobody.sock")), identity: None };
    let tap = Dnstap::start(&config, &metrics).unwrap();
    let now = SystemTime::now();
    let started = Instant::now();
    for _ in 0..(MAX_SLOTS + 1000) {
        tap.client(Proto::Udp, None, None, QUERY, Some(RESPONSE), now, now);
    }
    // Generous bound: 9,000 encodes; a blocking send would hang here instead.
    assert!(started.elapsed() < Duration::from_secs(5));
    wait_for("every message counted as dropped", || metrics.dnstap_dropped.get() == 2 * (MAX_SLOTS as u64 + 1000));
    assert_eq!(metrics.dnstap_sent.get(), 0);
    tap.shutdown(Duration::from_secs(5));
    let _ = std::fs::remove_dir_all(dir);
}

/// The producer's cost per client exchange (CLIENT_QUERY + CLIENT_RESPONSE of a hit), with the
/// writer draining to /dev/null beside it. A measurement, not a check:
/// `cargo test --release -p nodedns --lib dnstap::tests::producer_cost -- --ignored --nocapture`
#[test]
#[ignore]
fn producer_cost() {
    let metrics = Metrics::new(false);
    let config = DnstapConfig { target: DnstapTarget::File("/dev/null".into()), identity: Some("node-1".into()) };
    let tap = Dnstap::start(&config, &metrics).unwrap();
    let client = "10.1.2.3:40000".parse().ok();
    let server = "169.254.20.10:53".parse().ok();
    let mut best = f64::MAX;
    for _ in 0..50 {
        // Bursts within the queue's 8,192 buffers, then time for the writer to drain them, so
        // what is timed is queueing, not dropping.
        let n = 4000;
        let started = Instant::now();
        for _ in 0..n {
            let now = SystemTime::now();
            tap.client(Proto::Udp, client, server, QUERY, Some(RESPONSE), now, now);
        }
        let ns = started.elapsed().as_nanos() as f64 / f64::from(n);
        best = best.min(ns);
        std::thread::sleep(Duration::from_millis(20));
    }
    tap.shutdown(Duration::from_secs(5));
    println!(
        "dnstap producer: best {best:.0} ns per client exchange (2 messages); sent {} dropped {}",
        metrics.dnstap_sent.get(),
        metrics.dnstap_dropped.get()
    );
}
