//! Raw DNS packets and raw exchanges for the hostile-input tests: the test client must be able to
//! send what no well-behaved library would.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use nodedns_testkit::wire_name;

pub const ID: [u8; 2] = [0xab, 0xcd];

/// A well-formed query (RD set, one question, no EDNS) with ID [`ID`].
pub fn query(name: &str, qtype: u16) -> Vec<u8> {
    let mut p = vec![ID[0], ID[1], 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    p.extend(wire_name(name));
    p.extend_from_slice(&qtype.to_be_bytes());
    p.extend_from_slice(&[0, 1]);
    p
}

/// An OPT record owned by the root: payload 1232, this EDNS version, DO clear, no options.
pub fn opt(version: u8) -> Vec<u8> {
    vec![0, 0, 41, 0x04, 0xd0, 0, version, 0, 0, 0, 0]
}

/// Appends additional records and sets ARCOUNT.
pub fn with_additional(mut p: Vec<u8>, records: &[Vec<u8>]) -> Vec<u8> {
    p[10..12].copy_from_slice(&(records.len() as u16).to_be_bytes());
    records.iter().for_each(|r| p.extend_from_slice(r));
    p
}

/// What a case must get back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    /// An answer with this header rcode.
    Rcode(u8),
    /// Header rcode 0 and extended rcode 1 in the OPT record: BADVERS (16).
    BadVers,
    /// Nothing (dropped).
    Nothing,
}

/// One malformed input, its documented answer and `nodedns_malformed_queries_total` reason.
pub struct Case {
    pub what: &'static str,
    pub packet: Vec<u8>,
    pub expect: Expect,
    pub reason: &'static str,
    /// Whether the answer echoes the question (NOTIMP and FORMERR after a good question do).
    pub echoes_question: bool,
}

const FORMERR: Expect = Expect::Rcode(1);
const NOTIMP: Expect = Expect::Rcode(4);
const REFUSED: Expect = Expect::Rcode(5);

/// Every malformed-query case, beyond the core suite's basic ones: each header, question and
/// additional-section rule and each opcode.
pub fn cases() -> Vec<Case> {
    let mut v = Vec::new();
    let mut add = |what, packet, expect, reason, echoes_question| {
        v.push(Case { what, packet, expect, reason, echoes_question });
    };
    let good = || query("a.example", 1);
    add("5-byte header", vec![0xab, 0xcd, 1, 0, 0], Expect::Nothing, "unparseable_header", false);
    add("11-byte header", good()[..11].to_vec(), Expect::Nothing, "unparseable_header", false);
    let mut p = good();
    p[2] |= 0x80;
    add("a response (QR=1)", p, Expect::Nothing, "unparseable_header", false);
    let mut p = good();
    p[5] = 0;
    add("QDCOUNT 0", p, FORMERR, "question_count", false);
    let mut p = good();
    p[5] = 2;
    add("QDCOUNT 2, one question", p, FORMERR, "question_count", false);
    let mut p = good();
    p[5] = 2;
    let q2 = good()[12..].to_vec();
    p.extend(q2);
    add("QDCOUNT 2, two questions", p, FORMERR, "question_count", false);
    let mut p = good();
    p[4] = 0xff;
    add("QDCOUNT 65281", p, FORMERR, "question_count", false);
    add("label of 64", query(&format!("{}.example", "l".repeat(64)), 1), FORMERR, "bad_name", false);
    add("label length 0xff", [&good()[..12], &[0xff, b'x'], &[0, 0, 1, 0, 1][..]].concat(), FORMERR, "bad_name", false);
    let long = ["n".repeat(63), "n".repeat(63), "n".repeat(63), "n".repeat(62)].join(".");
    add("name of 256", query(&long, 1), FORMERR, "bad_name", false);
    let mut p = good()[..12].to_vec();
    p.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1]);
    add("pointer loop in question", p, FORMERR, "bad_name", false);
    let mut p = good()[..12].to_vec();
    p.extend_from_slice(&[0xc0, 0x12, 0, 1, 0, 1, 1, b'a', 0]);
    add("forward pointer in question", p, FORMERR, "bad_name", false);
    let mut p = good()[..12].to_vec();
    p.extend_from_slice(&[1, b'a', 0xc0, 0x0c, 0, 1, 0, 1]);
    add("pointer after a label", p, FORMERR, "bad_name", false);
    let mut p = good()[..12].to_vec();
    p.extend_from_slice(&[0x40, b'x', 0, 0, 1, 0, 1]);
    add("label type 0x40 (extended)", p, FORMERR, "bad_name", false);
    add("name cut mid-label", good()[..15].to_vec(), FORMERR, "bad_name", false);
    let p = good();
    add("type and class missing", p[..p.len() - 4].to_vec(), FORMERR, "short_question", false);
    add("class missing", p[..p.len() - 2].to_vec(), FORMERR, "short_question", false);
    let mut p = good();
    p[7] = 1;
    add("ANCOUNT 1", p, FORMERR, "unexpected_records", true);
    let mut p = good();
    p[9] = 1;
    add("NSCOUNT 1", p, FORMERR, "unexpected_records", true);
    let loop_at = good().len() as u8;
    add(
        "pointer loop in additional",
        with_additional(good(), &[vec![0xc0, loop_at, 0, 41, 4, 0xd0, 0, 0, 0, 0, 0, 0]]),
        FORMERR,
        "bad_record",
        true,
    );
    add(
        "forward pointer in additional",
        with_additional(good(), &[vec![0xc0, loop_at + 4, 0, 41, 4, 0xd0, 0, 0, 0, 0, 0, 0]]),
        FORMERR,
        "bad_record",
        true,
    );
    let mut o = opt(0);
    o[10] = 40;
    add("OPT RDLENGTH past the end", with_additional(good(), &[o]), FORMERR, "bad_record", true);
    add("ARCOUNT 1, no record", with_additional(good(), &[vec![]]), FORMERR, "bad_record", true);
    add("two OPT records", with_additional(good(), &[opt(0), opt(0)]), FORMERR, "bad_opt", true);
    let mut o = vec![1, b'x', 0];
    o.extend_from_slice(&opt(0)[1..]);
    add("OPT not owned by the root", with_additional(good(), &[o]), FORMERR, "bad_opt", true);
    add("qtype OPT", query("a.example", 41), FORMERR, "bad_opt", true);
    add("EDNS version 1", with_additional(good(), &[opt(1)]), Expect::BadVers, "bad_edns_version", true);
    add("EDNS version 255", with_additional(good(), &[opt(255)]), Expect::BadVers, "bad_edns_version", true);
    let mut p = good();
    p.extend_from_slice(b"garbage");
    add("trailing garbage", p, FORMERR, "trailing_bytes", true);
    let mut p = with_additional(good(), &[opt(0)]);
    p.push(0);
    add("trailing byte after OPT", p, FORMERR, "trailing_bytes", true);
    for (what, opcode) in [
        ("opcode IQUERY", 1u8),
        ("opcode STATUS", 2),
        ("opcode 3 (unassigned)", 3),
        ("opcode NOTIFY", 4),
        ("opcode UPDATE", 5),
        ("opcode DSO", 6),
        ("opcode 15", 15),
    ] {
        let mut p = good();
        p[2] = (p[2] & 0x87) | (opcode << 3);
        add(what, p, NOTIMP, "not_implemented", true);
    }
    let mut p = good();
    p[2] = 5 << 3;
    p[5] = 0;
    add("opcode UPDATE, no question", p, NOTIMP, "not_implemented", false);
    add("MAILA", query("a.example", 254), NOTIMP, "not_implemented", true);
    add("MAILB", query("a.example", 253), NOTIMP, "not_implemented", true);
    add("AXFR", query("cluster.local", 252), REFUSED, "refused_type_or_class", true);
    add("IXFR", query("cluster.local", 251), REFUSED, "refused_type_or_class", true);
    let mut p = good();
    let n = p.len();
    p[n - 1] = 3;
    add("class CH", p, REFUSED, "refused_type_or_class", true);
    let mut p = good();
    let n = p.len();
    p[n - 1] = 255;
    add("class ANY", p, REFUSED, "refused_type_or_class", true);
    v
}

/// Checks an answer against a case; returns a description of what is wrong.
pub fn check_answer(case: &Case, answer: Option<&[u8]>) -> Result<(), String> {
    let a = match (case.expect, answer) {
        (Expect::Nothing, None) => return Ok(()),
        (Expect::Nothing, Some(a)) => return Err(format!("expected no answer, got {a:02x?}")),
        (_, None) => return Err("no answer".into()),
        (_, Some(a)) => a,
    };
    if a.len() < 12 {
        return Err(format!("answer shorter than a header: {a:02x?}"));
    }
    if a[..2] != ID || a[2] & 0x80 == 0 {
        return Err(format!("ID not echoed or QR clear: {:02x?}", &a[..4]));
    }
    let rcode = a[3] & 0x0f;
    match case.expect {
        Expect::Rcode(r) if r != rcode => return Err(format!("rcode {rcode}, want {r}")),
        // Header rcode 0, OPT (last 11 bytes) carries extended rcode 1 → 16.
        Expect::BadVers if rcode != 0 || a.len() < 23 || a[a.len() - 11 + 2] != 41 || a[a.len() - 11 + 5] != 1 => {
            return Err(format!("not BADVERS: {a:02x?}"));
        }
        _ => {}
    }
    let qdcount = u16::from_be_bytes([a[4], a[5]]);
    if case.echoes_question {
        let qend = 12 + case.packet[12..].iter().position(|&b| b == 0).unwrap_or(0) + 5;
        if qdcount != 1 || a.get(12..qend) != case.packet.get(12..qend) {
            return Err(format!("question not echoed: {a:02x?}"));
        }
    } else if qdcount != 0 {
        return Err(format!("an unparseable question must not be echoed: {a:02x?}"));
    }
    if u16::from_be_bytes([a[6], a[7]]) != 0 || u16::from_be_bytes([a[8], a[9]]) != 0 {
        return Err("error answers carry no records".into());
    }
    Ok(())
}

/// Sends one datagram from `socket`, returns the first answer within `wait`.
pub fn udp_exchange(socket: &UdpSocket, server: SocketAddr, packet: &[u8], wait: Duration) -> Option<Vec<u8>> {
    socket.set_read_timeout(Some(wait)).unwrap();
    let mut buf = [0u8; 4096];
    // Drain anything late from an earlier case first.
    socket.set_nonblocking(true).unwrap();
    while socket.recv(&mut buf).is_ok() {}
    socket.set_nonblocking(false).unwrap();
    socket.send_to(packet, server).unwrap();
    match socket.recv(&mut buf) {
        Ok(n) => Some(buf[..n].to_vec()),
        Err(_) => None,
    }
}

/// A length-prefixed frame.
pub fn frame(packet: &[u8]) -> Vec<u8> {
    let mut f = (packet.len() as u16).to_be_bytes().to_vec();
    f.extend_from_slice(packet);
    f
}

/// Reads one frame; `None` on timeout, close or error.
pub fn read_frame(conn: &mut TcpStream, wait: Duration) -> Option<Vec<u8>> {
    conn.set_read_timeout(Some(wait)).unwrap();
    let mut len = [0u8; 2];
    conn.read_exact(&mut len).ok()?;
    let mut body = vec![0u8; u16::from_be_bytes(len) as usize];
    conn.read_exact(&mut body).ok()?;
    Some(body)
}

/// Waits until the server closes `conn` (EOF or reset); returns how long that took, or `None`
/// if it is still open after `wait`. Bytes the server sends meanwhile are discarded.
pub fn wait_closed(conn: &mut TcpStream, wait: Duration) -> Option<Duration> {
    let start = Instant::now();
    let mut buf = [0u8; 512];
    while start.elapsed() < wait {
        conn.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        match conn.read(&mut buf) {
            Ok(0) => return Some(start.elapsed()),
            Ok(_) => {}
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => return Some(start.elapsed()),
        }
    }
    None
}

/// Sends `packet` as one frame on a new connection and returns the answer frame.
pub fn tcp_exchange(server: SocketAddr, packet: &[u8], wait: Duration) -> Option<Vec<u8>> {
    let mut conn = TcpStream::connect_timeout(&server, wait).ok()?;
    conn.write_all(&frame(packet)).ok()?;
    read_frame(&mut conn, wait)
}

/// A small deterministic generator for garbage (xorshift64*).
pub struct Garbage(u64);

impl Garbage {
    pub fn new(seed: u64) -> Self {
        Self(seed | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A packet: sometimes pure noise, mostly a valid query with a few bytes flipped.
    pub fn packet(&mut self, base: &[u8]) -> Vec<u8> {
        let r = self.next_u64();
        if r.is_multiple_of(4) {
            let len = (r >> 8) as usize % 600;
            return (0..len).map(|_| self.next_u64() as u8).collect();
        }
        let mut p = base.to_vec();
        for _ in 0..1 + (r >> 16) % 4 {
            let at = self.next_u64() as usize % p.len();
            p[at] = self.next_u64() as u8;
        }
        if r & 0x100 != 0 {
            p.truncate(self.next_u64() as usize % p.len() + 1);
        }
        p
    }
}
