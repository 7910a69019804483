//! In-place parsing of client queries: header, question and EDNS, without allocating.

use nodedns_cache::{CacheKey, LowerName, MAX_NAME_LEN, Member, lowercase_into};

pub const HEADER_LEN: usize = 12;
pub const TYPE_OPT: u16 = 41;
pub const TYPE_IXFR: u16 = 251;
pub const TYPE_AXFR: u16 = 252;
pub const TYPE_MAILB: u16 = 253;
pub const TYPE_MAILA: u16 = 254;
pub const TYPE_ANY: u16 = 255;
pub const CLASS_ANY: u16 = 255;

/// The EDNS(0) parameters a client sent (RFC 6891 §6.1.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Edns {
    /// The client's UDP payload size; values below 512 are treated as 512 (RFC 6891 §6.2.3).
    pub udp_payload: u16,
    pub version: u8,
    pub dnssec_ok: bool,
}

/// A well-formed standard query, borrowed from the packet it came in.
#[derive(Clone, Copy, Debug)]
pub struct Query<'a> {
    packet: &'a [u8],
    qname_end: usize,
    pub id: u16,
    pub qtype: u16,
    pub qclass: u16,
    pub recursion_desired: bool,
    pub authentic_data: bool,
    pub checking_disabled: bool,
    pub edns: Option<Edns>,
}

impl<'a> Query<'a> {
    /// The question name as the client sent it (case preserved, RFC 0x20 clients need that).
    pub fn qname_wire(&self) -> &'a [u8] {
        &self.packet[HEADER_LEN..self.qname_end]
    }

    /// The whole packet the query came in.
    pub fn packet(&self) -> &'a [u8] {
        self.packet
    }

    /// Name, type and class exactly as sent.
    pub fn question_wire(&self) -> &'a [u8] {
        &self.packet[HEADER_LEN..self.qname_end + 4]
    }

    pub fn dnssec_ok(&self) -> bool {
        self.edns.is_some_and(|e| e.dnssec_ok)
    }

    /// The largest UDP response this client accepts: 512 without EDNS (RFC 1035 §4.2.1), else
    /// its advertised size, capped at `server_max`.
    pub fn max_udp_response(&self, server_max: u16) -> usize {
        match self.edns {
            None => 512,
            Some(e) => e.udp_payload.clamp(512, server_max.max(512)) as usize,
        }
    }

    /// Lower-cases the qname into `buf` and returns the cache key and member for this query.
    pub fn cache_key<'b>(&self, buf: &'b mut [u8; MAX_NAME_LEN]) -> (CacheKey<'b>, Member) {
        // The parser already checked the name, so lowercasing cannot fail; fall back to the
        // root name rather than panic if that invariant is ever broken.
        let name = lowercase_into(self.qname_wire(), buf).unwrap_or_else(|_| root_name());
        CacheKey::for_query(name, self.qtype, self.qclass, self.dnssec_ok(), self.checking_disabled)
    }
}

impl Query<'_> {
    /// This query detached from its receive buffer, for the miss path: the packet and the
    /// lower-cased cache-key name in one allocation, with everything the parse found, so a task
    /// on another thread neither parses the packet again nor rebuilds the key.
    pub fn detach(&self) -> OwnedQuery {
        let mut name_buf = [0u8; MAX_NAME_LEN];
        let (key, _) = self.cache_key(&mut name_buf);
        let name = key.name.as_wire();
        let mut bytes = Vec::with_capacity(self.packet.len() + name.len());
        bytes.extend_from_slice(self.packet);
        bytes.extend_from_slice(name);
        OwnedQuery {
            bytes: bytes.into_boxed_slice(),
            packet_len: self.packet.len(),
            qname_end: self.qname_end,
            id: self.id,
            qtype: self.qtype,
            qclass: self.qclass,
            recursion_desired: self.recursion_desired,
            authentic_data: self.authentic_data,
            checking_disabled: self.checking_disabled,
            edns: self.edns,
        }
    }
}

/// A parsed query that owns its bytes ([`Query::detach`]).
#[derive(Clone, Debug)]
pub struct OwnedQuery {
    /// The packet as received, then the lower-cased question name.
    bytes: Box<[u8]>,
    packet_len: usize,
    qname_end: usize,
    id: u16,
    qtype: u16,
    qclass: u16,
    recursion_desired: bool,
    authentic_data: bool,
    checking_disabled: bool,
    edns: Option<Edns>,
}

impl OwnedQuery {
    /// The query as parsed, borrowed from this value.
    pub fn query(&self) -> Query<'_> {
        Query {
            packet: &self.bytes[..self.packet_len],
            qname_end: self.qname_end,
            id: self.id,
            qtype: self.qtype,
            qclass: self.qclass,
            recursion_desired: self.recursion_desired,
            authentic_data: self.authentic_data,
            checking_disabled: self.checking_disabled,
            edns: self.edns,
        }
    }

    pub fn qtype(&self) -> u16 {
        self.qtype
    }

    /// The packet as received.
    pub fn packet(&self) -> &[u8] {
        &self.bytes[..self.packet_len]
    }

    /// The cache key and member, as [`Query::cache_key`] computed them when detached.
    pub fn cache_key(&self) -> (CacheKey<'_>, Member) {
        // Lower-cased and checked by `detach`; the root name rather than a panic if that
        // invariant is ever broken.
        let name = LowerName::new(&self.bytes[self.packet_len..]).unwrap_or_else(|_| root_name());
        let dnssec_ok = self.edns.is_some_and(|e| e.dnssec_ok);
        CacheKey::for_query(name, self.qtype, self.qclass, dnssec_ok, self.checking_disabled)
    }
}

fn root_name() -> LowerName<'static> {
    LowerName::new(b"\x00").unwrap_or_else(|_| unreachable!("the root name is valid"))
}

/// Why a query is answered with an error instead of being looked up (also a metric label).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Malformed {
    /// QDCOUNT is not 1.
    QuestionCount,
    /// The question name is truncated, has a label over 63 octets, exceeds 255 octets, or uses a
    /// compression pointer (nothing earlier in a query can be pointed to).
    BadName,
    /// The question's type and class are cut off.
    ShortQuestion,
    /// Records in the answer or authority section of a query.
    UnexpectedRecords,
    /// A record in the additional section is cut off or malformed.
    BadRecord,
    /// More than one OPT record (RFC 6891 §6.1.1), or an OPT not owned by the root.
    BadOpt,
    /// Bytes after the last record.
    TrailingBytes,
}

impl Malformed {
    pub fn label(self) -> &'static str {
        match self {
            Malformed::QuestionCount => "question_count",
            Malformed::BadName => "bad_name",
            Malformed::ShortQuestion => "short_question",
            Malformed::UnexpectedRecords => "unexpected_records",
            Malformed::BadRecord => "bad_record",
            Malformed::BadOpt => "bad_opt",
            Malformed::TrailingBytes => "trailing_bytes",
        }
    }
}

/// A query that gets an immediate error answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rejection {
    /// FORMERR.
    FormErr(Malformed),
    /// NOTIMP: an opcode other than QUERY, or MAILA/MAILB.
    NotImp,
    /// BADVERS: EDNS version above 0 (RFC 6891 §6.1.3).
    BadVers,
    /// REFUSED: zone transfers, class ANY, classes other than IN.
    Refused,
}

impl Rejection {
    pub fn label(self) -> &'static str {
        match self {
            Rejection::FormErr(m) => m.label(),
            Rejection::NotImp => "not_implemented",
            Rejection::BadVers => "bad_edns_version",
            Rejection::Refused => "refused_type_or_class",
        }
    }
}

/// The parts of a rejected query an error answer echoes.
#[derive(Clone, Copy, Debug)]
pub struct RejectedQuery<'a> {
    pub packet: &'a [u8],
    pub reason: Rejection,
    /// The end of a well-formed question, if there is one to echo.
    pub question_end: Option<usize>,
    /// The client's EDNS, if it sent a well-formed OPT.
    pub edns: Option<Edns>,
}

/// The result of parsing a packet from a client.
#[derive(Clone, Copy, Debug)]
pub enum Parsed<'a> {
    Query(Query<'a>),
    Reject(RejectedQuery<'a>),
    /// Not worth an answer: shorter than a header, or a response (QR=1; answering responses
    /// invites reflection loops).
    Drop,
}

fn u16_at(p: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*p.get(at)?, *p.get(at + 1)?]))
}

/// Skips a possibly compressed name starting at `pos`; returns the position after it. Only
/// backward pointers are accepted and at most 127 of them, so loops and forward references end.
fn skip_name(p: &[u8], mut pos: usize) -> Option<usize> {
    let mut end = None;
    let mut jumps = 0;
    let mut total = 0usize;
    loop {
        let len = *p.get(pos)? as usize;
        match len & 0xc0 {
            0x00 => {
                if len == 0 {
                    return Some(end.unwrap_or(pos + 1));
                }
                total += len + 1;
                if total > MAX_NAME_LEN {
                    return None;
                }
                pos += 1 + len;
                if pos >= p.len() {
                    return None;
                }
            }
            0xc0 => {
                let target = (u16_at(p, pos)? & 0x3fff) as usize;
                if target >= pos || jumps >= 127 {
                    return None;
                }
                end.get_or_insert(pos + 2);
                jumps += 1;
                pos = target;
            }
            _ => return None,
        }
    }
}

/// The end of an uncompressed question name at `HEADER_LEN`, checked against RFC 1035 limits.
fn question_name_end(p: &[u8]) -> Option<usize> {
    let mut pos = HEADER_LEN;
    loop {
        let len = *p.get(pos)? as usize;
        if len == 0 {
            return Some(pos + 1);
        }
        if len > 63 {
            return None;
        }
        pos += 1 + len;
        if pos - HEADER_LEN >= MAX_NAME_LEN {
            return None;
        }
    }
}

/// Parses a client packet. Never panics and never allocates.
pub fn parse_query(packet: &[u8]) -> Parsed<'_> {
    if packet.len() < HEADER_LEN {
        return Parsed::Drop;
    }
    let flags = u16::from_be_bytes([packet[2], packet[3]]);
    if flags & 0x8000 != 0 {
        return Parsed::Drop;
    }
    let reject = |reason, question_end, edns| Parsed::Reject(RejectedQuery { packet, reason, question_end, edns });
    let opcode = ((flags >> 11) & 0xf) as u8;
    let qdcount = u16::from_be_bytes([packet[4], packet[5]]);
    let ancount = u16::from_be_bytes([packet[6], packet[7]]);
    let nscount = u16::from_be_bytes([packet[8], packet[9]]);
    let arcount = u16::from_be_bytes([packet[10], packet[11]]);

    // The question is parsed even for other opcodes so NOTIMP can echo it.
    let question = if qdcount == 1 {
        match question_name_end(packet) {
            Some(end) if end + 4 <= packet.len() => Ok(end),
            Some(_) => Err(Malformed::ShortQuestion),
            None => Err(Malformed::BadName),
        }
    } else {
        Err(Malformed::QuestionCount)
    };
    if opcode != 0 {
        return reject(Rejection::NotImp, question.ok(), None);
    }
    let qname_end = match question {
        Ok(end) => end,
        Err(m) => return reject(Rejection::FormErr(m), None, None),
    };
    if ancount != 0 || nscount != 0 {
        return reject(Rejection::FormErr(Malformed::UnexpectedRecords), Some(qname_end), None);
    }

    // Additional section: at most one OPT owned by the root; other records are skipped.
    let mut pos = qname_end + 4;
    let mut edns = None;
    for _ in 0..arcount {
        let Some(after_name) = skip_name(packet, pos) else {
            return reject(Rejection::FormErr(Malformed::BadRecord), Some(qname_end), None);
        };
        let (Some(rtype), Some(class), Some(rdlen)) =
            (u16_at(packet, after_name), u16_at(packet, after_name + 2), u16_at(packet, after_name + 8))
        else {
            return reject(Rejection::FormErr(Malformed::BadRecord), Some(qname_end), None);
        };
        let end = after_name + 10 + rdlen as usize;
        if end > packet.len() {
            return reject(Rejection::FormErr(Malformed::BadRecord), Some(qname_end), None);
        }
        if rtype == TYPE_OPT {
            if edns.is_some() || after_name != pos + 1 || packet[pos] != 0 {
                return reject(Rejection::FormErr(Malformed::BadOpt), Some(qname_end), None);
            }
            edns = Some(Edns {
                udp_payload: class.max(512),
                version: packet[after_name + 5],
                dnssec_ok: packet[after_name + 6] & 0x80 != 0,
            });
        }
        pos = end;
    }
    if pos != packet.len() {
        return reject(Rejection::FormErr(Malformed::TrailingBytes), Some(qname_end), edns);
    }
    if edns.is_some_and(|e| e.version != 0) {
        return reject(Rejection::BadVers, Some(qname_end), edns);
    }

    let qtype = u16::from_be_bytes([packet[qname_end], packet[qname_end + 1]]);
    let qclass = u16::from_be_bytes([packet[qname_end + 2], packet[qname_end + 3]]);
    match qtype {
        TYPE_AXFR | TYPE_IXFR => return reject(Rejection::Refused, Some(qname_end), edns),
        TYPE_MAILA | TYPE_MAILB => return reject(Rejection::NotImp, Some(qname_end), edns),
        TYPE_OPT => return reject(Rejection::FormErr(Malformed::BadOpt), Some(qname_end), edns),
        _ => {}
    }
    // Only class IN is forwarded: the cluster DNS serves nothing else, and class ANY questions
    // are a classic amplification vector (RFC 8482 §4).
    if qclass != nodedns_cache::CLASS_IN {
        return reject(Rejection::Refused, Some(qname_end), edns);
    }

    Parsed::Query(Query {
        packet,
        qname_end,
        id: u16::from_be_bytes([packet[0], packet[1]]),
        qtype,
        qclass,
        recursion_desired: flags & 0x0100 != 0,
        authentic_data: flags & 0x0020 != 0,
        checking_disabled: flags & 0x0010 != 0,
        edns,
    })
}

/// Reads the DNS message length prefix of a TCP stream (RFC 1035 §4.2.2).
pub fn tcp_frame_len(prefix: [u8; 2]) -> usize {
    u16::from_be_bytes(prefix) as usize
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn query(name: &str, qtype: u16, edns: Option<(u16, u8, bool)>) -> Vec<u8> {
        let mut p = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, edns.is_some() as u8];
        p.extend(nodedns_testkit::wire_name(name));
        p.extend_from_slice(&qtype.to_be_bytes());
        p.extend_from_slice(&1u16.to_be_bytes());
        if let Some((size, version, dok)) = edns {
            p.push(0);
            p.extend_from_slice(&TYPE_OPT.to_be_bytes());
            p.extend_from_slice(&size.to_be_bytes());
            p.extend_from_slice(&[0, version, if dok { 0x80 } else { 0 }, 0, 0, 0]);
        }
        p
    }

    fn rejection(p: &[u8]) -> Rejection {
        match parse_query(p) {
            Parsed::Reject(r) => r.reason,
            other => panic!("expected a rejection, got {other:?}"),
        }
    }

    #[test]
    fn parses_a_plain_query() {
        let p = query("Foo.Example", 1, None);
        let Parsed::Query(q) = parse_query(&p) else { panic!() };
        assert_eq!(q.id, 0x1234);
        assert_eq!((q.qtype, q.qclass), (1, 1));
        assert!(q.recursion_desired);
        assert_eq!(q.qname_wire(), b"\x03Foo\x07Example\x00");
        assert_eq!(q.max_udp_response(1232), 512);
        let mut buf = [0; MAX_NAME_LEN];
        let (key, member) = q.cache_key(&mut buf);
        assert_eq!(key.name.as_wire(), b"\x03foo\x07example\x00");
        assert_eq!(member, Member::A);
    }

    #[test]
    fn a_detached_query_keeps_the_parse_and_the_key() {
        let p = query("Foo.Example", 28, Some((4096, 0, true)));
        // The receive buffer goes away; the detached query keeps what it needs.
        let owned = {
            let buffer = p.clone();
            let Parsed::Query(q) = parse_query(&buffer) else { panic!() };
            q.detach()
        };
        let again = owned.query();
        assert_eq!(owned.packet(), &p[..]);
        assert_eq!((again.id, again.qtype, again.qclass), (0x1234, 28, 1));
        assert_eq!(again.qname_wire(), b"\x03Foo\x07Example\x00", "case kept for the answer");
        assert_eq!(again.edns, Some(Edns { udp_payload: 4096, version: 0, dnssec_ok: true }));
        let (key, member) = owned.cache_key();
        assert_eq!(key.name.as_wire(), b"\x03foo\x07example\x00");
        assert_eq!(member, Member::Aaaa);
        assert!(key.dnssec_ok);
    }

    #[test]
    fn parses_edns() {
        let p = query("a", 28, Some((4096, 0, true)));
        let Parsed::Query(q) = parse_query(&p) else { panic!() };
        assert_eq!(q.edns, Some(Edns { udp_payload: 4096, version: 0, dnssec_ok: true }));
        assert_eq!(q.max_udp_response(1232), 1232);
        let p = query("a", 28, Some((100, 0, false)));
        let Parsed::Query(q) = parse_query(&p) else { panic!() };
        assert_eq!(q.max_udp_response(1232), 512);
    }

    #[test]
    fn drops_short_packets_and_responses() {
        assert!(matches!(parse_query(&[0; 11]), Parsed::Drop));
        let mut p = query("a", 1, None);
        p[2] |= 0x80;
        assert!(matches!(parse_query(&p), Parsed::Drop));
    }

    #[test]
    fn question_count_must_be_one() {
        let mut p = query("a", 1, None);
        p[5] = 0;
        assert_eq!(rejection(&p), Rejection::FormErr(Malformed::QuestionCount));
        p[5] = 2;
        assert_eq!(rejection(&p), Rejection::FormErr(Malformed::QuestionCount));
    }

    #[test]
    fn bad_names_are_formerr() {
        // Label of 64 octets.
        let long_label = "a".repeat(64);
        assert_eq!(rejection(&query(&long_label, 1, None)), Rejection::FormErr(Malformed::BadName));
        // Name over 255 octets: five labels of 63.
        let l = "b".repeat(63);
        let long = [l.as_str(); 5].join(".");
        assert_eq!(rejection(&query(&long, 1, None)), Rejection::FormErr(Malformed::BadName));
        // A compression pointer in the question.
        let mut p = query("a", 1, None);
        p.truncate(12);
        p.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1]);
        assert_eq!(rejection(&p), Rejection::FormErr(Malformed::BadName));
        // Truncated inside the name.
        let p = query("abc", 1, None);
        assert_eq!(rejection(&p[..14]), Rejection::FormErr(Malformed::BadName));
        // Type and class cut off.
        assert_eq!(rejection(&p[..p.len() - 2]), Rejection::FormErr(Malformed::ShortQuestion));
    }

    #[test]
    fn opcodes_other_than_query_are_notimp() {
        let mut p = query("a", 1, None);
        p[2] = (p[2] & 0x87) | (5 << 3); // UPDATE
        assert_eq!(rejection(&p), Rejection::NotImp);
        let Parsed::Reject(r) = parse_query(&p) else { panic!() };
        assert!(r.question_end.is_some(), "NOTIMP echoes the question");
    }

    #[test]
    fn edns_errors() {
        assert_eq!(rejection(&query("a", 1, Some((1232, 1, false)))), Rejection::BadVers);
        // Two OPT records.
        let mut p = query("a", 1, Some((1232, 0, false)));
        let opt = p[p.len() - 11..].to_vec();
        p.extend_from_slice(&opt);
        p[11] = 2;
        assert_eq!(rejection(&p), Rejection::FormErr(Malformed::BadOpt));
        // OPT with rdlength past the end.
        let mut p = query("a", 1, Some((1232, 0, false)));
        let n = p.len();
        p[n - 1] = 9;
        assert_eq!(rejection(&p), Rejection::FormErr(Malformed::BadRecord));
    }

    #[test]
    fn trailing_garbage_is_formerr() {
        let mut p = query("a", 1, None);
        p.push(0);
        assert_eq!(rejection(&p), Rejection::FormErr(Malformed::TrailingBytes));
    }

    #[test]
    fn records_in_answer_section_are_formerr() {
        let mut p = query("a", 1, None);
        p[7] = 1;
        assert_eq!(rejection(&p), Rejection::FormErr(Malformed::UnexpectedRecords));
    }

    #[test]
    fn transfers_any_class_and_mail_types() {
        assert_eq!(rejection(&query("a", TYPE_AXFR, None)), Rejection::Refused);
        assert_eq!(rejection(&query("a", TYPE_IXFR, None)), Rejection::Refused);
        assert_eq!(rejection(&query("a", TYPE_MAILB, None)), Rejection::NotImp);
        let mut p = query("a", 1, None);
        let n = p.len();
        p[n - 1] = 255; // class ANY
        assert_eq!(rejection(&p), Rejection::Refused);
        // qtype ANY is a query: answered per RFC 8482 by the server.
        assert!(matches!(parse_query(&query("a", TYPE_ANY, None)), Parsed::Query(_)));
    }

    #[test]
    fn pointer_loops_in_additional_records_end() {
        let mut p = query("a", 1, None);
        let loop_at = p.len();
        p.extend_from_slice(&[0xc0, loop_at as u8, 0, 41, 4, 0, 0, 0, 0, 0, 0, 0]);
        p[11] = 1;
        assert_eq!(rejection(&p), Rejection::FormErr(Malformed::BadRecord));
        // Forward pointer.
        let mut p = query("a", 1, None);
        let at = p.len();
        p.extend_from_slice(&[0xc0, (at + 4) as u8, 0, 41, 4, 0, 0, 0, 0, 0, 0, 0]);
        p[11] = 1;
        assert_eq!(rejection(&p), Rejection::FormErr(Malformed::BadRecord));
    }

    #[test]
    fn root_and_max_length_names_parse() {
        let root = query(".", 2, None);
        let Parsed::Query(q) = parse_query(&root) else { panic!() };
        assert_eq!(q.qname_wire(), b"\x00");
        // 255 octets exactly: 3×63 + 1×61 labels + lengths + root = 255.
        let name = ["a".repeat(63), "b".repeat(63), "c".repeat(63), "d".repeat(61)].join(".");
        let packet = query(&name, 1, None);
        let Parsed::Query(q) = parse_query(&packet) else { panic!() };
        assert_eq!(q.qname_wire().len(), 255);
    }
}
