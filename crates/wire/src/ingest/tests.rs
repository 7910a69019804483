use std::net::{Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, CNAME, SOA, SRV};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use nodedns_testkit::wire_name as wire;

use super::*;

fn name(s: &str) -> Name {
    Name::from_str(s).unwrap()
}

fn question(w: &[u8], qtype: u16) -> UpstreamQuestion<'_> {
    UpstreamQuestion { name: LowerName::new(w).unwrap(), qtype, qclass: 1, dnssec_ok: false, checking_disabled: false }
}

fn response(qname: &str, qtype: RecordType, rcode: ResponseCode) -> Message {
    let mut m = Message::new(7, MessageType::Response, OpCode::Query);
    m.metadata.response_code = rcode;
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(name(qname), qtype));
    m
}

fn a(n: &str, ttl: u32, ip: [u8; 4]) -> Record {
    Record::from_rdata(name(n), ttl, RData::A(A(Ipv4Addr::from(ip))))
}

fn soa(zone: &str, ttl: u32, minimum: u32) -> Record {
    Record::from_rdata(
        name(zone),
        ttl,
        RData::SOA(SOA::new(
            name("ns.dns.cluster.local."),
            name("hostmaster.cluster.local."),
            1,
            7200,
            1800,
            86400,
            minimum,
        )),
    )
}

fn answer(resp: &Message, q: &UpstreamQuestion<'_>) -> (CacheableAnswer, Message) {
    let bytes = resp.to_vec().unwrap();
    match ingest(&bytes, q, &name("cluster.local.")).unwrap() {
        Ingested::Answer(a) => {
            let parsed = Message::from_vec(&a.message).unwrap();
            (a, parsed)
        }
        other => panic!("expected an answer, got {other:?}"),
    }
}

#[test]
fn builds_a_query_with_edns() {
    let w = wire("svc.ns.svc.cluster.local");
    let mut out = Vec::new();
    build_query(0xbeef, &question(&w, 28), &mut out);
    let m = Message::from_vec(&out).unwrap();
    assert_eq!(m.metadata.id, 0xbeef);
    assert!(m.metadata.recursion_desired);
    assert_eq!(m.queries[0].query_type(), RecordType::AAAA);
    assert_eq!(m.edns.unwrap().max_payload(), 1232);
}

#[test]
fn positive_answer_keeps_records_and_ttl_offsets() {
    let w = wire("a.ns.svc.cluster.local");
    let q = question(&w, 1);
    let mut r = response("a.ns.svc.cluster.local.", RecordType::A, ResponseCode::NoError);
    r.add_answer(a("a.ns.svc.cluster.local.", 30, [10, 0, 0, 1]));
    r.add_answer(a("a.ns.svc.cluster.local.", 20, [10, 0, 0, 2]));
    let (ans, parsed) = answer(&r, &q);
    assert_eq!(ans.disposition, Disposition::Positive { ttl: Ttl::from_secs(20) });
    assert_eq!(parsed.answers.len(), 2);
    assert_eq!(ans.ttl_offsets.len(), 2);
    for off in &ans.ttl_offsets {
        let o = *off as usize;
        let ttl = u32::from_be_bytes(ans.message[o..o + 4].try_into().unwrap());
        assert!(ttl == 30 || ttl == 20);
    }
    assert_eq!(&ans.message[12..12 + w.len()], &w[..]);
    assert_eq!(parsed.metadata.id, 0);
}

#[test]
fn upper_case_echo_is_accepted_and_stored_lower_case() {
    let w = wire("a.example");
    let q = question(&w, 1);
    let mut r = response("A.ExAmple.", RecordType::A, ResponseCode::NoError);
    r.add_answer(a("A.ExAmple.", 30, [10, 0, 0, 1]));
    let (ans, _) = answer(&r, &q);
    assert_eq!(&ans.message[12..12 + w.len()], &w[..]);
}

#[test]
fn cname_chain_is_kept_and_unrelated_records_dropped() {
    let w = wire("www.ns.svc.cluster.local");
    let q = question(&w, 1);
    let mut r = response("www.ns.svc.cluster.local.", RecordType::A, ResponseCode::NoError);
    r.add_answer(Record::from_rdata(
        name("www.ns.svc.cluster.local."),
        60,
        RData::CNAME(CNAME(name("real.ns.svc.cluster.local."))),
    ));
    r.add_answer(a("real.ns.svc.cluster.local.", 40, [10, 0, 0, 9]));
    // Poison: an unrelated name in every section.
    r.add_answer(a("bank.example.", 86400, [6, 6, 6, 6]));
    r.add_authority(a("bank.example.", 86400, [6, 6, 6, 6]));
    r.add_additional(a("bank.example.", 86400, [6, 6, 6, 6]));
    let (ans, parsed) = answer(&r, &q);
    assert_eq!(parsed.answers.len(), 2);
    assert!(parsed.all_sections().all(|r| r.name != name("bank.example.")));
    assert_eq!(ans.disposition, Disposition::Positive { ttl: Ttl::from_secs(40) });
}

#[test]
fn cname_to_a_missing_type_is_nodata_with_chain_ttl() {
    let w = wire("x.example");
    let q = question(&w, 28);
    let mut r = response("x.example.", RecordType::AAAA, ResponseCode::NoError);
    r.add_answer(Record::from_rdata(name("x.example."), 10, RData::CNAME(CNAME(name("y.example.")))));
    r.add_authority(soa("example.", 300, 60));
    let (ans, parsed) = answer(&r, &q);
    assert_eq!(parsed.answers.len(), 1);
    assert_eq!(parsed.authorities.len(), 1);
    assert_eq!(
        ans.disposition,
        Disposition::Denial {
            nxdomain: false,
            soa: Some((Ttl::from_secs(300), Ttl::from_secs(60))),
            chain_ttl: Some(Ttl::from_secs(10)),
        }
    );
}

#[test]
fn cname_loop_terminates() {
    let w = wire("l1.example");
    let q = question(&w, 1);
    let mut r = response("l1.example.", RecordType::A, ResponseCode::NoError);
    r.add_answer(Record::from_rdata(name("l1.example."), 10, RData::CNAME(CNAME(name("l2.example.")))));
    r.add_answer(Record::from_rdata(name("l2.example."), 10, RData::CNAME(CNAME(name("l1.example.")))));
    let (ans, parsed) = answer(&r, &q);
    assert_eq!(parsed.answers.len(), 2);
    assert!(matches!(ans.disposition, Disposition::Denial { nxdomain: false, soa: None, .. }));
}

#[test]
fn nxdomain_keeps_the_enclosing_soa_only() {
    let w = wire("nope.ns.svc.cluster.local");
    let q = question(&w, 1);
    let mut r = response("nope.ns.svc.cluster.local.", RecordType::A, ResponseCode::NXDomain);
    r.add_authority(soa("evil.example.", 99999, 99999));
    r.add_authority(soa("cluster.local.", 30, 5));
    let (ans, parsed) = answer(&r, &q);
    assert_eq!(parsed.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(parsed.authorities.len(), 1);
    assert_eq!(parsed.authorities[0].name, name("cluster.local."));
    assert_eq!(
        ans.disposition,
        Disposition::Denial { nxdomain: true, soa: Some((Ttl::from_secs(30), Ttl::from_secs(5))), chain_ttl: None }
    );
}

#[test]
fn failures_truncation_and_mismatches() {
    let w = wire("a.example");
    let q = question(&w, 1);
    let sf = response("a.example.", RecordType::A, ResponseCode::ServFail).to_vec().unwrap();
    assert!(matches!(ingest(&sf, &q, &Name::root()).unwrap(), Ingested::Failure { rcode: 2 }));
    let refused = response("a.example.", RecordType::A, ResponseCode::Refused).to_vec().unwrap();
    assert!(matches!(ingest(&refused, &q, &Name::root()).unwrap(), Ingested::Failure { rcode: 5 }));

    let mut tc = response("a.example.", RecordType::A, ResponseCode::NoError);
    tc.metadata.truncation = true;
    assert!(matches!(ingest(&tc.to_vec().unwrap(), &q, &Name::root()).unwrap(), Ingested::Truncated));

    let other = response("b.example.", RecordType::A, ResponseCode::NoError).to_vec().unwrap();
    assert!(matches!(ingest(&other, &q, &Name::root()), Err(IngestError::QuestionMismatch)));
    let wrong_type = response("a.example.", RecordType::AAAA, ResponseCode::NoError).to_vec().unwrap();
    assert!(matches!(ingest(&wrong_type, &q, &Name::root()), Err(IngestError::QuestionMismatch)));
    let mut query_not_response = response("a.example.", RecordType::A, ResponseCode::NoError);
    query_not_response.metadata.message_type = MessageType::Query;
    assert!(matches!(
        ingest(&query_not_response.to_vec().unwrap(), &q, &Name::root()),
        Err(IngestError::QuestionMismatch)
    ));
    assert!(matches!(ingest(&[0u8; 5], &q, &Name::root()), Err(IngestError::QuestionMismatch)));
}

#[test]
fn too_many_records_is_refused() {
    let w = wire("big.example");
    let q = question(&w, 1);
    let mut r = response("big.example.", RecordType::A, ResponseCode::NoError);
    for i in 0..(MAX_RECORDS + 1) {
        r.add_answer(a("big.example.", 30, [10, 0, (i >> 8) as u8, i as u8]));
    }
    assert!(matches!(ingest(&r.to_vec().unwrap(), &q, &Name::root()), Err(IngestError::TooManyRecords(_))));
}

#[test]
fn srv_glue_inside_bailiwick_only() {
    let w = wire("_http._tcp.web.ns.svc.cluster.local");
    let q = question(&w, 33);
    let mut r = response("_http._tcp.web.ns.svc.cluster.local.", RecordType::SRV, ResponseCode::NoError);
    r.add_answer(Record::from_rdata(
        name("_http._tcp.web.ns.svc.cluster.local."),
        30,
        RData::SRV(SRV::new(0, 100, 80, name("pod-1.web.ns.svc.cluster.local."))),
    ));
    r.add_answer(Record::from_rdata(
        name("_http._tcp.web.ns.svc.cluster.local."),
        30,
        RData::SRV(SRV::new(0, 100, 80, name("outside.example."))),
    ));
    r.add_additional(a("pod-1.web.ns.svc.cluster.local.", 30, [10, 1, 1, 1]));
    r.add_additional(Record::from_rdata(
        name("pod-1.web.ns.svc.cluster.local."),
        30,
        RData::AAAA(AAAA(Ipv6Addr::LOCALHOST)),
    ));
    r.add_additional(a("outside.example.", 30, [6, 6, 6, 6]));
    r.add_additional(a("unrelated.ns.svc.cluster.local.", 30, [6, 6, 6, 6]));
    let (_, parsed) = answer(&r, &q);
    assert_eq!(parsed.answers.len(), 2);
    assert_eq!(parsed.additionals.len(), 2);
    assert!(parsed.additionals.iter().all(|r| r.name == name("pod-1.web.ns.svc.cluster.local.")));
}

#[test]
fn garbage_never_panics() {
    let w = wire("a.example");
    let q = question(&w, 1);
    let mut good = response("a.example.", RecordType::A, ResponseCode::NoError);
    good.add_answer(a("a.example.", 30, [1, 2, 3, 4]));
    let bytes = good.to_vec().unwrap();
    for cut in 0..bytes.len() {
        let _ = ingest(&bytes[..cut], &q, &Name::root());
    }
    for i in 12..bytes.len() {
        let mut b = bytes.clone();
        b[i] ^= 0xff;
        let _ = ingest(&b, &q, &Name::root());
    }
}

// The wire walker (walk.rs): which responses it takes, and that what it takes means exactly
// what the full decode makes of it.

/// The walker's answer for `bytes`, after checking the full decode agrees on it.
fn walked(bytes: &[u8], q: &UpstreamQuestion<'_>) -> Option<CacheableAnswer> {
    let fast = walk::simple_positive(bytes, q)?;
    let Ok(Ingested::Answer(full)) = ingest_decoded(bytes, q, &name("cluster.local.")) else {
        panic!("the walker took a response the decoder refuses");
    };
    assert_eq!(fast.disposition, full.disposition);
    assert_eq!(fast.message[..HEADER_LEN], full.message[..HEADER_LEN]);
    let (f, d) = (Message::from_vec(&fast.message).unwrap(), Message::from_vec(&full.message).unwrap());
    assert_eq!(f.answers, d.answers);
    assert!(f.authorities.is_empty() && f.additionals.is_empty() && f.edns.is_none());
    for (off, r) in fast.ttl_offsets.iter().zip(&f.answers) {
        assert_eq!(fast.message[*off as usize..*off as usize + 4], r.ttl.to_be_bytes());
    }
    Some(fast)
}

fn bytes_with_edns(m: &Message) -> Vec<u8> {
    let mut m = m.clone();
    m.edns = Some(hickory_proto::op::Edns::new());
    m.to_vec().unwrap()
}

#[test]
fn walker_takes_plain_and_cname_answers() {
    let w = wire("www.ns.svc.cluster.local");
    let q = question(&w, 1);
    let mut r = response("WWW.ns.svc.cluster.local.", RecordType::A, ResponseCode::NoError);
    r.add_answer(a("www.ns.svc.cluster.local.", 30, [10, 0, 0, 1]));
    r.add_answer(a("www.ns.svc.cluster.local.", 20, [10, 0, 0, 2]));
    for bytes in [r.to_vec().unwrap(), bytes_with_edns(&r)] {
        let ans = walked(&bytes, &q).expect("a plain answer is walked");
        assert_eq!(ans.disposition, Disposition::Positive { ttl: Ttl::from_secs(20) });
        assert_eq!(&ans.message[12..12 + w.len()], &w[..], "question stored lower-cased");
        assert_eq!(ans.ttl_offsets.len(), 2);
    }

    let mut r = response("www.ns.svc.cluster.local.", RecordType::AAAA, ResponseCode::NoError);
    r.add_answer(Record::from_rdata(name("www.ns.svc.cluster.local."), 60, RData::CNAME(CNAME(name("b.x.")))));
    r.add_answer(Record::from_rdata(name("b.x."), 50, RData::CNAME(CNAME(name("c.ns.svc.cluster.local.")))));
    r.add_answer(Record::from_rdata(name("c.ns.svc.cluster.local."), 40, RData::AAAA(AAAA(Ipv6Addr::LOCALHOST))));
    let ans = walked(&bytes_with_edns(&r), &question(&w, 28)).expect("a CNAME chain is walked");
    assert_eq!(ans.disposition, Disposition::Positive { ttl: Ttl::from_secs(40) });
    assert_eq!(ans.ttl_offsets.len(), 3);
}

#[test]
fn walker_leaves_everything_else_to_the_decoder() {
    let w = wire("a.example");
    let q = question(&w, 1);
    let plain = || {
        let mut r = response("a.example.", RecordType::A, ResponseCode::NoError);
        r.add_answer(a("a.example.", 30, [10, 0, 0, 1]));
        r
    };
    let not_walked = |bytes: &[u8], q: &UpstreamQuestion<'_>, why: &str| {
        assert!(walk::simple_positive(bytes, q).is_none(), "{why}: walked");
    };
    // Answers in the wrong order, an unrelated record, an authority record, a denial, DO, NODATA.
    let mut r = response("a.example.", RecordType::A, ResponseCode::NoError);
    r.add_answer(a("b.example.", 30, [10, 0, 0, 1]));
    r.add_answer(Record::from_rdata(name("a.example."), 60, RData::CNAME(CNAME(name("b.example.")))));
    not_walked(&r.to_vec().unwrap(), &q, "chain out of order");
    let (ans, parsed) = answer(&r, &q);
    assert_eq!(parsed.answers[0].record_type(), RecordType::CNAME, "the decoder orders the chain");
    assert!(matches!(ans.disposition, Disposition::Positive { .. }));
    let mut r = plain();
    r.add_answer(a("evil.example.", 30, [6, 6, 6, 6]));
    not_walked(&r.to_vec().unwrap(), &q, "unrelated record");
    let mut r = plain();
    r.add_authority(soa("example.", 30, 5));
    not_walked(&r.to_vec().unwrap(), &q, "authority section");
    not_walked(&response("a.example.", RecordType::A, ResponseCode::NXDomain).to_vec().unwrap(), &q, "NXDOMAIN");
    not_walked(&response("a.example.", RecordType::A, ResponseCode::NoError).to_vec().unwrap(), &q, "NODATA");
    let do_q = UpstreamQuestion { dnssec_ok: true, ..q };
    not_walked(&plain().to_vec().unwrap(), &do_q, "DO set");
    not_walked(&plain().to_vec().unwrap(), &question(&w, 16), "TXT question");

    let good = bytes_with_edns(&plain());
    assert!(walked(&good, &q).is_some());
    let opt = good.len() - 11;
    let mut trailing = good.clone();
    trailing.push(0);
    not_walked(&trailing, &q, "trailing byte");
    let mut ext_rcode = good.clone();
    ext_rcode[opt + 5] = 1; // OPT TTL's first octet: extended RCODE (BADVERS)
    not_walked(&ext_rcode, &q, "extended RCODE");
    assert!(matches!(ingest(&ext_rcode, &q, &name("example.")), Ok(Ingested::Failure { rcode: 16 })));
    let mut a_len = plain().to_vec().unwrap();
    let n = a_len.len();
    a_len[n - 5] = 5; // RDLENGTH 5 for an A record
    a_len.push(0);
    not_walked(&a_len, &q, "A with 5 octets");
}

#[test]
fn walker_pointers_must_target_labels_already_read() {
    let w = wire("a.example");
    let q = question(&w, 1);
    // Header, question, then one A record whose owner is the pointer under test.
    let with_owner_pointer = |ptr: u16| {
        let mut m = vec![0, 7, 0x81, 0x80, 0, 1, 0, 1, 0, 0, 0, 0];
        m.extend_from_slice(&w);
        m.extend_from_slice(&[0, 1, 0, 1]);
        m.extend_from_slice(&(0xc000 | ptr).to_be_bytes());
        m.extend_from_slice(&[0, 1, 0, 1, 0, 0, 0, 30, 0, 4, 10, 0, 0, 1]);
        m
    };
    assert!(walked(&with_owner_pointer(12), &q).is_some(), "pointer to the question name");
    // Offset 14 is the second label ("example"): a real label start, but not the owner name.
    assert!(walk::simple_positive(&with_owner_pointer(14), &q).is_none(), "pointer to another name");
    for bad in [0, 2, 13, 23, 29] {
        let m = with_owner_pointer(bad);
        assert!(walk::simple_positive(&m, &q).is_none(), "pointer to offset {bad}");
    }
    // A pointer into a TTL: the bytes spell a name today and another after the TTL is patched.
    let mut m = vec![0, 7, 0x81, 0x80, 0, 1, 0, 2, 0, 0, 0, 0];
    m.extend_from_slice(&w);
    m.extend_from_slice(&[0, 1, 0, 1]);
    m.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 1, 0, 0, 4, 10, 0, 0, 1]);
    let ttl_at = m.len() - 10;
    m.extend_from_slice(&(0xc000 | ttl_at as u16).to_be_bytes());
    m.extend_from_slice(&[0, 1, 0, 1, 0, 0, 0, 30, 0, 4, 10, 0, 0, 2]);
    assert!(walk::simple_positive(&m, &q).is_none(), "pointer into a TTL");
}
