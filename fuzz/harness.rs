//! What every fuzz target runs, shared with the stable corpus replay test
//! (`crates/wire/tests/fuzz_corpus.rs` includes this file by path), so a corpus file exercises
//! exactly the same code under `cargo fuzz` and under `cargo test`.
//!
//! Each entry point takes arbitrary bytes, runs them through the nodedns wire code the daemon
//! runs, and panics when an invariant breaks (a panic or an assertion is a finding):
//!
//! - [`client_query`]: query parsing, rejection answers, RFC 8482 and the cache-hit render path.
//! - [`upstream_response`]: response matching, ingestion (bailiwick filter), cache insertion and
//!   rendering the cached answer back, with a poisoning oracle: nothing in the stored answer may
//!   belong to a name outside the question's CNAME/DNAME chain except the denial SOA and
//!   in-bailiwick glue.
//! - [`tcp_stream`]: TCP length-prefix framing on both sides, with arbitrary segmenting.

#![allow(dead_code)]

use hickory_proto::op::{Message, MessageType, OpCode, Query as HQuery, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, CNAME};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use nodedns_cache::{
    Cache, CacheKey, CacheLimits, CacheableAnswer, KeyKind, LowerName, MAX_NAME_LEN, Timestamp, TtlPolicy,
    lowercase_into,
};
use nodedns_wire::framing::{FrameSplitter, Peer, Split};
use nodedns_wire::query::HEADER_LEN;
use nodedns_wire::{
    IngestError, Ingested, MAX_MESSAGE, Parsed, Query, Rejection, Transport, UpstreamQuestion, answers_question,
    ingest, ingest_decoded, parse_query, render_any_hinfo, render_cached, render_rcode, render_rejection,
    render_truncated,
};

/// The server's UDP payload cap (`limits.max_udp_payload_bytes` default).
const SERVER_MAX_UDP: u16 = 1232;

fn header_rcode(msg: &[u8]) -> u8 {
    msg[3] & 0x0f
}

/// A rendered answer must decode, be a response, echo the ID, and fit `limit`.
fn check_rendered(out: &[u8], id: [u8; 2], limit: usize, what: &str) -> Message {
    assert!(out.len() >= HEADER_LEN, "{what}: answer shorter than a header");
    assert!(out.len() <= limit, "{what}: {} bytes over the limit of {limit}", out.len());
    assert_eq!(&out[..2], &id, "{what}: ID not echoed");
    assert!(out[2] & 0x80 != 0, "{what}: QR not set");
    Message::from_vec(out).unwrap_or_else(|e| panic!("{what}: rendered answer does not decode: {e}"))
}

/// Client query bytes (UDP payload or one TCP frame body): parse, answer as the daemon would.
pub fn client_query(data: &[u8]) {
    let mut out = vec![0u8; MAX_MESSAGE + 2];
    match parse_query(data) {
        Parsed::Drop => {
            assert!(data.len() < HEADER_LEN || data[2] & 0x80 != 0, "only short packets and responses are dropped");
        }
        Parsed::Reject(r) => {
            let len = render_rejection(&r, &mut out).expect("a rejection always fits a 64 KiB buffer");
            let msg = check_rendered(&out[..len], [data[0], data[1]], MAX_MESSAGE, "rejection");
            let want = match r.reason {
                Rejection::FormErr(_) => 1,
                Rejection::NotImp => 4,
                Rejection::Refused => 5,
                Rejection::BadVers => 0,
            };
            assert_eq!(header_rcode(&out), want, "rejection rcode for {:?}", r.reason);
            if r.reason == Rejection::BadVers {
                assert_eq!(u16::from(msg.metadata.response_code), 16, "BADVERS via the OPT extended rcode");
            }
            // An echoed question is the client's bytes, untouched.
            if let Some(end) = r.question_end {
                assert_eq!(&out[HEADER_LEN..end + 4], &data[HEADER_LEN..end + 4]);
            }
        }
        Parsed::Query(q) => answer_query(&q, data, &mut out),
    }
}

fn answer_query(q: &Query<'_>, data: &[u8], out: &mut [u8]) {
    let id = [data[0], data[1]];
    // Invariants the rest of the daemon relies on.
    let qname = q.qname_wire();
    assert!(qname.len() <= MAX_NAME_LEN && qname.last() == Some(&0));
    let mut buf = [0u8; MAX_NAME_LEN];
    let (key, member) = q.cache_key(&mut buf);
    assert_eq!(key.name.as_wire().len(), qname.len(), "the key name has the question's length");
    assert_eq!(q.qclass, nodedns_cache::CLASS_IN, "only class IN reaches the cache");
    let udp_limit = q.max_udp_response(SERVER_MAX_UDP);
    assert!((512..=SERVER_MAX_UDP as usize).contains(&udp_limit));

    if q.qtype == nodedns_wire::query::TYPE_ANY {
        let len = render_any_hinfo(q, out).expect("fits");
        let msg = check_rendered(&out[..len], id, udp_limit, "RFC 8482 HINFO");
        assert_eq!(msg.answers.len(), 1);
    }
    for (rcode, want) in [(nodedns_wire::Rcode::ServFail, 2), (nodedns_wire::Rcode::Refused, 5)] {
        let len = render_rcode(q, rcode, out).expect("fits");
        check_rendered(&out[..len], id, udp_limit, "rcode answer");
        assert_eq!(header_rcode(&out[..len]), want);
    }
    let len = render_truncated(q, out).expect("fits");
    let msg = check_rendered(&out[..len], id, udp_limit, "truncated answer");
    assert!(msg.metadata.truncation);

    // The hit path: store an answer for this question the way the miss path would (through
    // ingest), then render it for the client over UDP and TCP.
    let cache = Cache::new(CacheLimits { max_bytes: 1 << 20, shards: 1, ..CacheLimits::default() });
    let now = Timestamp::from_secs(1);
    let policy = TtlPolicy::default();
    let records = 1 + (data.len() % 64); // sometimes too large for UDP: exercises TC=1
    let stored = |qtype: u16| synthetic_answer(key.name, qtype, q.dnssec_ok(), q.checking_disabled, records);
    let inserted = match key.kind {
        KeyKind::Pair => cache.insert_pair(&key, &stored(1), &stored(28), &policy, now),
        KeyKind::Single(t) => cache.insert(&key, &stored(t), &policy, now),
    };
    if inserted.is_err() {
        return;
    }
    // TCP first: the full answer is the oracle for the truncated UDP one.
    let mut full: Vec<u8> = Vec::new();
    for transport in [Transport::Tcp, Transport::Udp { max_len: udp_limit }] {
        let len = cache
            .lookup(&key, member, now, |view| render_cached(q, view, transport, out))
            .expect("just inserted")
            .expect("a hit always renders into a 64 KiB buffer");
        let limit = match transport {
            Transport::Udp { max_len } => max_len,
            Transport::Tcp => MAX_MESSAGE,
        };
        let msg = check_rendered(&out[..len], id, limit, "cache hit");
        // 0x20: the question goes back exactly as the client wrote it.
        assert_eq!(&out[HEADER_LEN..HEADER_LEN + qname.len() + 4], q.question_wire());
        assert!(msg.answers.iter().all(|r| r.ttl <= policy.max_ttl.secs()), "TTLs patched");
        assert_eq!(msg.edns.is_some(), q.edns.is_some(), "OPT echoed only when sent");
        if !msg.metadata.truncation {
            if full.is_empty() {
                full = out[..len].to_vec();
            }
            continue;
        }
        assert!(matches!(transport, Transport::Udp { .. }), "TCP answers are never truncated");
        // RFC 2181 §9: the truncated answer is the full one cut after its last whole record
        // that fits; the next record would not have fitted.
        let opt = if q.edns.is_some() { 11 } else { 0 };
        let cut = len - opt;
        assert_eq!(&out[12..cut], &full[12..cut], "a prefix of the full answer");
        let next = record_end(&full, cut).expect("the full answer has a record where the cut is");
        assert!(next + opt > limit, "the record after the cut ({cut}..{next}) would have fitted in {limit}");
    }
}

/// The end of the record starting at `pos` (owner name possibly ending in a pointer).
fn record_end(m: &[u8], mut pos: usize) -> Option<usize> {
    loop {
        let len = *m.get(pos)? as usize;
        if len == 0 {
            pos += 1;
            break;
        }
        if len & 0xc0 == 0xc0 {
            pos += 2;
            break;
        }
        pos += 1 + len;
    }
    let rdlen = u16::from_be_bytes([*m.get(pos + 8)?, *m.get(pos + 9)?]) as usize;
    Some(pos + 10 + rdlen).filter(|&e| e <= m.len())
}

/// A cacheable answer for `name`/`qtype` built by ingesting a response, as the miss path does:
/// `records` records of the type for A/AAAA, else a CNAME (valid for any type).
fn synthetic_answer(name: LowerName<'_>, qtype: u16, dnssec_ok: bool, cd: bool, records: usize) -> CacheableAnswer {
    let owner = wire_to_name(name.as_wire()).expect("valid");
    let mut resp = Message::new(0x4242, MessageType::Response, OpCode::Query);
    resp.metadata.recursion_desired = true;
    resp.add_query(HQuery::query(owner.clone(), RecordType::from(qtype)));
    for i in 0..records {
        let data = match qtype {
            1 => RData::A(A::new(10, 0, (i >> 8) as u8, i as u8)),
            28 => RData::AAAA(AAAA::new(0xfd00, 0, 0, 0, 0, 0, 0, i as u16)),
            _ => {
                let target = Name::from_ascii(format!("t{i}.example.")).expect("valid");
                RData::CNAME(CNAME(target))
            }
        };
        resp.add_answer(Record::from_rdata(owner.clone(), 300, data));
        if !matches!(qtype, 1 | 28) {
            break;
        }
    }
    let wire = resp.to_vec().expect("encodes");
    let q = UpstreamQuestion { name, qtype, qclass: 1, dnssec_ok, checking_disabled: cd };
    match ingest(&wire, &q, &Name::root()) {
        Ok(Ingested::Answer(a)) => a,
        other => panic!("a well-formed response for a parsed query must ingest: {other:?}"),
    }
}

fn wire_to_name(wire: &[u8]) -> Option<Name> {
    nodedns_wire::name_from_wire(wire)
}

/// The end of an uncompressed name at `pos`, if it is one.
fn plain_name_end(p: &[u8], mut pos: usize) -> Option<usize> {
    let start = pos;
    loop {
        let len = *p.get(pos)? as usize;
        if len == 0 {
            return (pos + 1 - start <= MAX_NAME_LEN).then_some(pos + 1);
        }
        if len > 63 {
            return None;
        }
        pos += 1 + len;
    }
}

/// Upstream response bytes. The question nodedns asked is taken from the response's own
/// question (so random inputs reach ingestion instead of failing the match), with DO from the
/// last byte and the bailiwick chosen between the root and `cluster.local.`.
pub fn upstream_response(data: &[u8]) {
    let Some(end) = plain_name_end(data, HEADER_LEN) else {
        // Not matchable: whatever it is, matching must say no without panicking.
        if let Ok(n) = LowerName::new(b"\x01a\x00") {
            let q = UpstreamQuestion { name: n, qtype: 1, qclass: 1, dnssec_ok: false, checking_disabled: false };
            let _ = answers_question(data, &q);
            let _ = ingest(data, &q, &Name::root());
        }
        return;
    };
    if data.len() < end + 4 {
        return;
    }
    let mut buf = [0u8; MAX_NAME_LEN];
    let Ok(name) = lowercase_into(&data[HEADER_LEN..end], &mut buf) else {
        return;
    };
    let qtype = u16::from_be_bytes([data[end], data[end + 1]]);
    let qclass = u16::from_be_bytes([data[end + 2], data[end + 3]]);
    let last = *data.last().unwrap_or(&0);
    let dnssec_ok = last & 1 != 0;
    let bailiwick = if last & 2 != 0 { Name::root() } else { Name::from_ascii("cluster.local.").expect("valid") };
    let q = UpstreamQuestion { name, qtype, qclass, dnssec_ok, checking_disabled: false };
    let matches = answers_question(data, &q);
    let result = ingest(data, &q, &bailiwick);
    same_outcome(&result, &ingest_decoded(data, &q, &bailiwick), &q);
    if !matches {
        assert!(result.is_err(), "a response that does not answer the question is never ingested");
        return;
    }
    let answer = match result {
        Ok(Ingested::Answer(a)) => a,
        Ok(Ingested::Truncated) => {
            assert!(data[2] & 0x02 != 0, "only TC=1 responses are truncated");
            return;
        }
        Ok(Ingested::Failure { rcode }) => {
            assert!(rcode != 0 && rcode != 3, "NOERROR/NXDOMAIN are answers, not failures");
            return;
        }
        Err(_) => return,
    };
    check_cacheable(&answer, &q, &bailiwick);

    // Insert as the engine does and serve it back to a client asking the same question.
    let cache = Cache::new(CacheLimits { max_bytes: 4 << 20, shards: 1, ..CacheLimits::default() });
    let now = Timestamp::from_secs(1);
    let policy = TtlPolicy::default();
    let (key, member) = CacheKey::for_query(name, qtype, qclass, dnssec_ok, false);
    let stored = match key.kind {
        KeyKind::Pair => cache.insert_pair(&key, &answer, &answer, &policy, now),
        KeyKind::Single(_) => cache.insert(&key, &answer, &policy, now),
    };
    if stored.is_err() || qclass != nodedns_cache::CLASS_IN {
        return;
    }
    // Another name is never answered from this entry.
    let mut other = [0u8; MAX_NAME_LEN];
    let other_name = lowercase_into(b"\x09unrelated\x07example\x00", &mut other).expect("valid");
    if other_name.as_wire() != name.as_wire() {
        let (okey, om) = CacheKey::for_query(other_name, qtype, qclass, dnssec_ok, false);
        assert!(cache.lookup(&okey, om, now, |_| ()).is_none(), "an entry answered for another name");
    }
    let client = client_packet(&data[HEADER_LEN..end], qtype, qclass, dnssec_ok);
    let Parsed::Query(cq) = parse_query(&client) else {
        return; // e.g. AXFR, MAILA: never looked up
    };
    let mut out = vec![0u8; MAX_MESSAGE + 2];
    for transport in [Transport::Udp { max_len: 512 }, Transport::Udp { max_len: 1232 }, Transport::Tcp] {
        let Some(Some(len)) = cache.lookup(&key, member, now, |view| render_cached(&cq, view, transport, &mut out))
        else {
            panic!("a stored answer renders");
        };
        let limit = match transport {
            Transport::Udp { max_len } => max_len,
            Transport::Tcp => MAX_MESSAGE,
        };
        check_rendered(&out[..len], [client[0], client[1]], limit, "served upstream answer");
    }
}

/// `ingest` (which takes simple answers by walking the wire) and `ingest_decoded` (a full
/// hickory decode) must mean the same: same outcome, and for answers the same header, question,
/// disposition and records, each with a TTL offset pointing at its TTL.
fn same_outcome(fast: &Result<Ingested, IngestError>, full: &Result<Ingested, IngestError>, q: &UpstreamQuestion<'_>) {
    match (fast, full) {
        (Ok(Ingested::Answer(f)), Ok(Ingested::Answer(d))) => {
            assert_eq!(f.disposition, d.disposition, "walker and decoder disagree on the disposition");
            assert_eq!(f.message[..HEADER_LEN], d.message[..HEADER_LEN], "header");
            let (fm, dm) =
                (Message::from_vec(&f.message).expect("decodes"), Message::from_vec(&d.message).expect("decodes"));
            let question = HEADER_LEN..HEADER_LEN + q.name.as_wire().len() + 4;
            assert_eq!(f.message[question.clone()], d.message[question], "question bytes");
            assert_eq!(fm.queries, dm.queries, "question");
            let records = |m: &Message| -> Vec<(String, Record)> {
                m.answers
                    .iter()
                    .chain(&m.authorities)
                    .chain(&m.additionals)
                    .map(|r| (r.name.to_lowercase().to_string(), r.clone()))
                    .collect()
            };
            let (fr, dr) = (records(&fm), records(&dm));
            assert_eq!(fr.len(), dr.len(), "record count");
            for ((fname, frec), (dname, drec)) in fr.iter().zip(&dr) {
                assert_eq!(fname, dname, "owner");
                assert_eq!(
                    (frec.record_type(), frec.dns_class, frec.ttl),
                    (drec.record_type(), drec.dns_class, drec.ttl)
                );
                assert_eq!(frec.data, drec.data, "RDATA of {fname}");
            }
            for (a, recs) in [(f, &fr), (d, &dr)] {
                assert_eq!(a.ttl_offsets.len(), recs.len(), "one TTL offset per record");
                for (&off, (_, r)) in a.ttl_offsets.iter().zip(recs.iter()) {
                    let at = off as usize;
                    assert_eq!(a.message[at..at + 4], r.ttl.to_be_bytes(), "TTL offset {off}");
                }
            }
        }
        (Ok(Ingested::Truncated), Ok(Ingested::Truncated)) | (Err(_), Err(_)) => {}
        (Ok(Ingested::Failure { rcode: a }), Ok(Ingested::Failure { rcode: b })) => assert_eq!(a, b),
        (fast, full) => panic!("walker and decoder disagree: {fast:?} vs {full:?}"),
    }
}

/// A client query for the given question (EDNS with DO as given).
fn client_packet(qname: &[u8], qtype: u16, qclass: u16, dnssec_ok: bool) -> Vec<u8> {
    let mut p = vec![0x5a, 0xa5, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 1];
    p.extend_from_slice(qname);
    p.extend_from_slice(&qtype.to_be_bytes());
    p.extend_from_slice(&qclass.to_be_bytes());
    p.extend_from_slice(&[0, 0, 41, 0x04, 0xd0, 0, 0, if dnssec_ok { 0x80 } else { 0 }, 0, 0, 0]);
    p
}

/// The poisoning oracle: what ingest stored must answer the question and nothing else.
fn check_cacheable(a: &CacheableAnswer, q: &UpstreamQuestion<'_>, bailiwick: &Name) {
    assert!(a.message.len() <= MAX_MESSAGE);
    assert_eq!(
        &a.message[HEADER_LEN..HEADER_LEN + q.name.as_wire().len()],
        q.name.as_wire(),
        "question stored lower-cased"
    );
    for &off in &a.ttl_offsets {
        assert!(off as usize + 4 <= a.message.len(), "TTL offset {off} outside the message");
    }
    let msg = Message::from_vec(&a.message).unwrap_or_else(|e| panic!("stored answer does not decode: {e}"));
    assert_eq!(msg.queries.len(), 1);
    assert!(msg.edns.is_none(), "no OPT is stored");
    let total = msg.answers.len() + msg.authorities.len() + msg.additionals.len();
    assert_eq!(a.ttl_offsets.len(), total, "one TTL offset per record");
    let qname = wire_to_name(q.name.as_wire()).expect("valid");
    // The chain: the question name and every CNAME target reachable from it.
    let mut chain = vec![qname];
    loop {
        let before = chain.len();
        for r in &msg.answers {
            if let RData::CNAME(c) = &r.data
                && chain.contains(&r.name)
                && !chain.contains(&c.0)
            {
                chain.push(c.0.clone());
            }
        }
        if chain.len() == before {
            break;
        }
    }
    for r in &msg.answers {
        let ok = chain.contains(&r.name)
            || (r.record_type() == RecordType::DNAME && chain.iter().any(|n| r.name.zone_of(n)));
        assert!(ok, "answer record for unrelated name {} ({})", r.name, r.record_type());
    }
    for r in &msg.authorities {
        let ok = match r.record_type() {
            RecordType::SOA => chain.iter().any(|n| r.name.zone_of(n)),
            RecordType::NSEC | RecordType::NSEC3 | RecordType::RRSIG => q.dnssec_ok && bailiwick.zone_of(&r.name),
            _ => false,
        };
        assert!(ok, "authority record {} ({}) kept", r.name, r.record_type());
    }
    let targets: Vec<&Name> = msg
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::SRV(s) => Some(&s.target),
            RData::MX(m) => Some(&m.exchange),
            _ => None,
        })
        .collect();
    for r in &msg.additionals {
        let ok = matches!(r.record_type(), RecordType::A | RecordType::AAAA)
            && bailiwick.zone_of(&r.name)
            && targets.iter().any(|t| **t == r.name);
        assert!(ok, "additional record {} ({}) kept", r.name, r.record_type());
    }
    let rcode = msg.metadata.response_code;
    assert!(rcode == ResponseCode::NoError || rcode == ResponseCode::NXDomain);
    assert_eq!(a.disposition.is_nxdomain(), rcode == ResponseCode::NXDomain);
}

/// A TCP byte stream. The first byte picks the peer and how the stream is cut into reads; the
/// rest is the stream. Every frame goes to the code that would receive it.
pub fn tcp_stream(data: &[u8]) {
    let Some((&control, stream)) = data.split_first() else {
        return;
    };
    let peer = if control & 1 == 0 { Peer::Client } else { Peer::Upstream };
    // All at once.
    let mut whole = Vec::new();
    let mut s = FrameSplitter::new(stream, peer);
    let end = loop {
        match s.next_frame() {
            Split::Frame(f) => whole.push(f),
            other => break other,
        }
    };
    assert!(s.consumed() <= stream.len());
    let framed: usize = whole.iter().map(|f| f.len() + 2).sum();
    assert_eq!(framed, s.consumed());
    // The same bytes arriving in segments of `step` bytes: a reader that re-splits what it has
    // buffered must see the same frames in the same order and stop at the same place.
    let step = 1 + (control as usize >> 1);
    let mut segmented = Vec::new();
    let mut buffered = 0;
    let mut consumed = 0;
    let mut seg_end = Split::NeedMore;
    while buffered < stream.len() {
        buffered = (buffered + step).min(stream.len());
        let mut s = FrameSplitter::new(&stream[consumed..buffered], peer);
        loop {
            match s.next_frame() {
                Split::Frame(f) => segmented.push(f.to_vec()),
                Split::NeedMore => break,
                e @ Split::Error(_) => {
                    seg_end = e;
                    break;
                }
            }
        }
        consumed += s.consumed();
        if matches!(seg_end, Split::Error(_)) {
            break;
        }
    }
    assert_eq!(whole.len(), segmented.len(), "segmenting changed the frames");
    assert!(whole.iter().zip(&segmented).all(|(a, b)| *a == b.as_slice()));
    assert_eq!(std::mem::discriminant(&end), std::mem::discriminant(&seg_end));
    for f in whole {
        match peer {
            Peer::Client => client_query(f),
            Peer::Upstream => upstream_response(f),
        }
    }
}
