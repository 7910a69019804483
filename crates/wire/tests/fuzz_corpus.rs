//! Replays the committed fuzz corpus (`fuzz/corpus/<target>/`) through the same harness the
//! `cargo fuzz` targets run, so every input that ever mattered is exercised on stable by plain
//! `cargo test`. A regression found by fuzzing is fixed by adding its input to the corpus.

#[path = "../../../fuzz/harness.rs"]
mod harness;

use std::path::PathBuf;

fn replay(target: &str, run: fn(&[u8])) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus").join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("corpus entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(files.len() >= 10, "{target}: only {} corpus files in {}", files.len(), dir.display());
    for f in &files {
        let data = std::fs::read(f).expect("read corpus file");
        let outcome = std::panic::catch_unwind(|| run(&data));
        assert!(outcome.is_ok(), "{target}: {} fails the harness", f.display());
    }
}

#[test]
fn client_query_corpus() {
    replay("client_query", harness::client_query);
}

#[test]
fn upstream_response_corpus() {
    replay("upstream_response", harness::upstream_response);
}

#[test]
fn tcp_framing_corpus() {
    replay("tcp_framing", harness::tcp_stream);
}

/// Writes the hand-made seeds (`seed-*` files) into `fuzz/corpus/`. Deterministic; run after
/// changing them: `cargo test -p nodedns-wire --test fuzz_corpus -- --ignored write_seed_corpus`.
/// Real captures (`capture-*`, from dig, kdig and Knot) are written by `fuzz/capture_seeds.py`.
#[test]
#[ignore = "writes files into fuzz/corpus"]
fn write_seed_corpus() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus");
    for (target, seeds) in [
        ("client_query", seeds::queries()),
        ("upstream_response", seeds::responses()),
        ("tcp_framing", seeds::streams()),
    ] {
        let dir = root.join(target);
        std::fs::create_dir_all(&dir).unwrap();
        for (name, bytes) in seeds {
            std::fs::write(dir.join(format!("seed-{name}")), bytes).unwrap();
        }
    }
}

mod seeds {
    use std::net::{Ipv4Addr, Ipv6Addr};
    use std::str::FromStr;

    use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
    use hickory_proto::rr::rdata::{A, AAAA, CNAME, MX, NS, NULL, SOA, SRV, TXT};
    use hickory_proto::rr::{Name, RData, Record, RecordType};

    type Seeds = Vec<(String, Vec<u8>)>;

    fn name(s: &str) -> Name {
        Name::from_str(s).unwrap()
    }

    /// A plain query as the daemon's tests build it.
    fn q(qname: &str, qtype: u16, edns: Option<(u16, u8, u8)>) -> Vec<u8> {
        let mut p = vec![0xab, 0xcd, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, edns.is_some() as u8];
        p.extend(nodedns_testkit::wire_name(qname));
        p.extend_from_slice(&qtype.to_be_bytes());
        p.extend_from_slice(&[0, 1]);
        if let Some((size, version, flags)) = edns {
            p.extend_from_slice(&[0, 0, 41]);
            p.extend_from_slice(&size.to_be_bytes());
            p.extend_from_slice(&[0, version, flags, 0, 0, 0]);
        }
        p
    }

    pub fn queries() -> Seeds {
        let mut v: Seeds = Vec::new();
        let mut add = |n: &str, b: Vec<u8>| v.push((n.to_string(), b));
        add("a", q("web.default.svc.cluster.local", 1, None));
        add("aaaa-edns-do", q("Web.Default.SVC.cluster.local", 28, Some((1232, 0, 0x80))));
        add("srv-edns-4096", q("_http._tcp.web.default.svc.cluster.local", 33, Some((4096, 0, 0))));
        add("txt-edns-100", q("x.example", 16, Some((100, 0, 0))));
        add("any", q("example.com", 255, Some((1232, 0, 0))));
        add("root-ns", q(".", 2, None));
        add("ptr", q("10.0.96.10.in-addr.arpa", 12, None));
        add("axfr", q("cluster.local", 252, None));
        add("ixfr", q("cluster.local", 251, None));
        add("maila", q("a.b", 254, None));
        add("qtype-opt", q("a.b", 41, None));
        add("badvers", q("a.b", 1, Some((1232, 1, 0))));
        add("truncated-header", vec![0xab, 0xcd, 0x01]);
        add("header-only", vec![0xab, 0xcd, 0x01, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        let mut p = q("a.b", 1, None);
        p[2] |= 0x80;
        add("response-bit", p);
        let mut p = q("a.b", 1, None);
        p[5] = 0;
        add("qdcount-0", p);
        let mut p = q("a.b", 1, None);
        p[5] = 2;
        add("qdcount-2", p);
        let mut p = q("a.b", 1, None);
        p[4] = 0xff;
        add("qdcount-65280", p);
        add("label-64", q(&"x".repeat(64), 1, None));
        add("name-256", q(&["y".repeat(63), "y".repeat(63), "y".repeat(63), "y".repeat(62)].join("."), 1, None));
        add("name-255", q(&["a".repeat(63), "b".repeat(63), "c".repeat(63), "d".repeat(61)].join("."), 1, None));
        add("pointer-loop", vec![0xab, 0xcd, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xc0, 0x0c, 0, 1, 0, 1]);
        add("forward-pointer", vec![0xab, 0xcd, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xc0, 0x20, 0, 1, 0, 1]);
        let mut p = q("a", 1, None);
        let at = p.len() as u8;
        p[11] = 1;
        p.extend_from_slice(&[0xc0, at, 0, 41, 4, 0, 0, 0, 0, 0, 0, 0]);
        add("additional-pointer-loop", p);
        let mut p = q("a.b", 1, None);
        p[11] = 1;
        p.extend_from_slice(&[0xc0, 0x0c, 0, 41, 4, 0xd0, 0, 0, 0, 0, 0, 0]);
        add("opt-not-root", p);
        let mut p = q("a.b", 1, None);
        p[11] = 2;
        for _ in 0..2 {
            p.extend_from_slice(&[0, 0, 41, 4, 0xd0, 0, 0, 0, 0, 0, 0]);
        }
        add("two-opt", p);
        let mut p = q("a.b", 1, Some((1232, 0, 0)));
        let n = p.len();
        p[n - 1] = 9;
        add("opt-rdlen-past-end", p);
        let mut p = q("a.b", 1, Some((1232, 0, 0)));
        let n = p.len();
        p[n - 2..].copy_from_slice(&[0, 8]);
        p.extend_from_slice(&[0, 10, 0, 4, 1, 2, 3, 4]); // a COOKIE option
        add("opt-cookie", p);
        let mut p = q("a.b", 1, None);
        p.push(0x99);
        add("trailing-byte", p);
        let mut p = q("a.b", 1, None);
        p[2] = 0x01 | (2 << 3);
        add("opcode-status", p);
        let mut p = q("a.b", 6, None);
        p[2] = 0x01 | (5 << 3);
        add("opcode-update", p);
        let mut p = q("a.b", 1, None);
        p[7] = 1;
        add("ancount-1", p);
        let mut p = q("a.b", 1, None);
        p[9] = 1;
        add("nscount-1", p);
        let mut p = q("a.b", 1, None);
        let n = p.len();
        p[n - 1] = 255;
        add("class-any", p);
        let mut p = q("a.b", 1, None);
        let n = p.len();
        p[n - 1] = 3;
        add("class-chaos", p);
        add("short-question", q("a.b", 1, None)[..17].to_vec());
        let mut p = q("a.b", 1, None);
        p[3] = 0x30; // AD and CD
        add("ad-cd", p);
        add("many-records-udp", q("big.example", 1, Some((65535, 0, 0))));
        // An A query whose answer will not fit 512 bytes (the harness stores 1 + len % 64).
        add("truncates", q(&"t".repeat(40), 1, None));
        v
    }

    fn response(qname: &str, qtype: RecordType, rcode: ResponseCode) -> Message {
        let mut m = Message::new(0x1234, MessageType::Response, OpCode::Query);
        m.metadata.response_code = rcode;
        m.metadata.recursion_desired = true;
        m.metadata.recursion_available = true;
        m.add_query(Query::query(name(qname), qtype));
        m
    }

    fn rr(owner: &str, ttl: u32, data: RData) -> Record {
        Record::from_rdata(name(owner), ttl, data)
    }

    fn a(ip: [u8; 4]) -> RData {
        RData::A(A(Ipv4Addr::from(ip)))
    }

    fn soa(zone: &str, ttl: u32, minimum: u32) -> Record {
        rr(
            zone,
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

    /// Encodes, and sets the harness control byte (last byte: bit 0 DO, bit 1 root bailiwick)
    /// by appending nothing: the last byte of an encoded message is whatever it is, so seeds
    /// cover both bailiwicks naturally across the set.
    fn enc(m: &Message) -> Vec<u8> {
        m.to_vec().unwrap()
    }

    pub fn responses() -> Seeds {
        let mut v: Seeds = Vec::new();
        let mut add = |n: &str, b: Vec<u8>| v.push((n.to_string(), b));
        let web = "web.default.svc.cluster.local.";
        let mut m = response(web, RecordType::A, ResponseCode::NoError);
        m.add_answer(rr(web, 30, a([10, 96, 1, 1])));
        add("a", enc(&m));
        let mut m = response(web, RecordType::AAAA, ResponseCode::NoError);
        m.add_answer(rr(web, 30, RData::AAAA(AAAA(Ipv6Addr::from_str("fd00::1:1").unwrap()))));
        add("aaaa", enc(&m));
        let mut m = response("nope.default.svc.cluster.local.", RecordType::A, ResponseCode::NXDomain);
        m.add_authority(soa("cluster.local.", 30, 5));
        add("nxdomain-soa", enc(&m));
        let mut m = response("v4only.default.svc.cluster.local.", RecordType::AAAA, ResponseCode::NoError);
        m.add_authority(soa("cluster.local.", 30, 5));
        add("nodata-soa", enc(&m));
        let mut m = response("nope.default.svc.cluster.local.", RecordType::A, ResponseCode::NXDomain);
        m.add_authority(soa("evil.example.", 30, 5));
        add("nxdomain-foreign-soa", enc(&m));
        let alias = "alias.default.svc.cluster.local.";
        let mut m = response(alias, RecordType::A, ResponseCode::NoError);
        m.add_answer(rr(alias, 30, RData::CNAME(CNAME(name(web)))));
        m.add_answer(rr(web, 30, a([10, 96, 1, 1])));
        add("cname-chain", enc(&m));
        // Poisoning: a CNAME jump to an unrelated name, extra answers for that and other names,
        // a delegation in authority and addresses for it in additional.
        let mut m = response(alias, RecordType::A, ResponseCode::NoError);
        m.add_answer(rr(alias, 30, RData::CNAME(CNAME(name("victim.example.")))));
        m.add_answer(rr("victim.example.", 86400, a([6, 6, 6, 6])));
        m.add_answer(rr("bank.example.", 86400, a([6, 6, 6, 7])));
        m.add_authority(rr("example.", 86400, RData::NS(NS(name("ns.evil.example.")))));
        m.add_additional(rr("ns.evil.example.", 86400, a([6, 6, 6, 8])));
        m.add_additional(rr("kubernetes.default.svc.cluster.local.", 86400, a([6, 6, 6, 9])));
        add("poison-cname-jump", enc(&m));
        let mut m = response(web, RecordType::A, ResponseCode::NoError);
        m.add_answer(rr(web, 30, a([10, 96, 1, 1])));
        m.add_additional(rr("other.default.svc.cluster.local.", 86400, a([6, 6, 6, 6])));
        m.add_authority(rr("cluster.local.", 86400, RData::NS(NS(name("ns.evil.example.")))));
        add("poison-additional", enc(&m));
        // CNAME loop and a long chain.
        let mut m = response("l1.example.", RecordType::A, ResponseCode::NoError);
        m.add_answer(rr("l1.example.", 30, RData::CNAME(CNAME(name("l2.example.")))));
        m.add_answer(rr("l2.example.", 30, RData::CNAME(CNAME(name("l1.example.")))));
        add("cname-loop", enc(&m));
        let mut m = response("c0.example.", RecordType::A, ResponseCode::NoError);
        for i in 0..20 {
            m.add_answer(rr(&format!("c{i}.example."), 30, RData::CNAME(CNAME(name(&format!("c{}.example.", i + 1))))));
        }
        m.add_answer(rr("c20.example.", 30, a([1, 2, 3, 4])));
        add("cname-chain-20", enc(&m));
        let mut m = response("x.sub.example.", RecordType::A, ResponseCode::NoError);
        // hickory has no DNAME type: its RDATA is an uncompressed name (RFC 6672 §2.1).
        let target = b"\x05other\x07example\x00".to_vec();
        m.add_answer(rr("sub.example.", 30, RData::Unknown { code: RecordType::DNAME, rdata: NULL::with(target) }));
        m.add_answer(rr("x.sub.example.", 30, RData::CNAME(CNAME(name("x.other.example.")))));
        m.add_answer(rr("x.other.example.", 30, a([1, 2, 3, 4])));
        add("dname", enc(&m));
        let srv = "_http._tcp.web.default.svc.cluster.local.";
        let mut m = response(srv, RecordType::SRV, ResponseCode::NoError);
        m.add_answer(rr(srv, 30, RData::SRV(SRV::new(0, 100, 80, name(web)))));
        m.add_additional(rr(web, 30, a([10, 96, 1, 1])));
        m.add_additional(rr("evil.example.", 30, a([6, 6, 6, 6])));
        add("srv-glue", enc(&m));
        let mut m = response("example.com.", RecordType::MX, ResponseCode::NoError);
        m.add_answer(rr("example.com.", 30, RData::MX(MX::new(10, name("mx.example.com.")))));
        m.add_additional(rr("mx.example.com.", 30, a([192, 0, 2, 1])));
        add("mx-glue", enc(&m));
        let mut m = response("t.example.", RecordType::TXT, ResponseCode::NoError);
        m.add_answer(rr("t.example.", 30, RData::TXT(TXT::new(vec!["x".repeat(255), "y".repeat(255)]))));
        add("txt-long", enc(&m));
        let mut m = response("many.example.", RecordType::A, ResponseCode::NoError);
        for i in 0..200u32 {
            m.add_answer(rr("many.example.", 30, a([10, 0, (i >> 8) as u8, i as u8])));
        }
        add("a-200", enc(&m));
        let mut m = response(web, RecordType::A, ResponseCode::NoError);
        m.metadata.truncation = true;
        add("tc", enc(&m));
        add("servfail", enc(&response(web, RecordType::A, ResponseCode::ServFail)));
        add("refused", enc(&response(web, RecordType::A, ResponseCode::Refused)));
        let mut m = response(web, RecordType::A, ResponseCode::NoError);
        m.add_answer(rr(web, 0xffff_ffff, a([10, 96, 1, 1])));
        add("ttl-max", enc(&m));
        // Mixed case echo (0x20) and a question for another name.
        add(
            "case-echo",
            enc(&{
                let mut m = response("WeB.DeFault.svc.cluster.local.", RecordType::A, ResponseCode::NoError);
                m.add_answer(rr(web, 30, a([10, 96, 1, 1])));
                m
            }),
        );
        let mut b = enc(&response(web, RecordType::A, ResponseCode::NoError));
        b[2] &= 0x7f;
        add("qr-clear", b);
        let mut b = enc(&response(web, RecordType::A, ResponseCode::NoError));
        b[7] = 0xff; // ANCOUNT 255 with no records
        add("ancount-lies", b);
        let mut b = enc(&response(web, RecordType::A, ResponseCode::NoError));
        b[6] = 0xff; // ANCOUNT 65280: over MAX_RECORDS
        add("ancount-huge", b);
        let mut m = response(web, RecordType::A, ResponseCode::NoError);
        m.add_answer(rr(web, 30, a([10, 96, 1, 1])));
        let mut b = enc(&m);
        b.extend_from_slice(&[0xde, 0xad]);
        add("trailing", b);
        let mut b = enc(&m);
        let n = b.len();
        b[n - 6..n - 4].copy_from_slice(&[0xc0, 0xff]); // a pointer past the end
        add("bad-pointer", b);
        v
    }

    fn frame(b: &[u8]) -> Vec<u8> {
        let mut f = (b.len() as u16).to_be_bytes().to_vec();
        f.extend_from_slice(b);
        f
    }

    pub fn streams() -> Seeds {
        let mut v: Seeds = Vec::new();
        let qs = queries();
        let rs = responses();
        let query = |n: &str| qs.iter().find(|(k, _)| k == n).unwrap().1.clone();
        let resp = |n: &str| rs.iter().find(|(k, _)| k == n).unwrap().1.clone();
        let mut add = |n: &str, control: u8, parts: Vec<Vec<u8>>| {
            let mut s = vec![control];
            parts.into_iter().for_each(|p| s.extend(p));
            v.push((n.to_string(), s));
        };
        add("client-one", 0, vec![frame(&query("a"))]);
        add("client-pipelined", 2, vec![frame(&query("a")), frame(&query("aaaa-edns-do")), frame(&query("any"))]);
        add("client-zero-length", 0, vec![frame(&query("a")), vec![0, 0], frame(&query("a"))]);
        add("client-longer-than-sent", 4, vec![vec![0x01, 0x00], query("a")]);
        add("client-split-prefix", 0, vec![frame(&query("a")), vec![0x00]]);
        add("client-bad-inside", 8, vec![frame(&query("pointer-loop")), frame(&query("two-opt")), frame(&[1, 2, 3])]);
        add("upstream-one", 1, vec![frame(&resp("a"))]);
        add("upstream-pipelined", 3, vec![frame(&resp("a")), frame(&resp("nxdomain-soa")), frame(&resp("srv-glue"))]);
        add("upstream-short", 1, vec![frame(&resp("a")), frame(&[0; 11])]);
        add("upstream-poison", 5, vec![frame(&resp("poison-cname-jump")), frame(&resp("poison-additional"))]);
        add("upstream-max-len", 1, vec![vec![0xff, 0xff], resp("a-200")]);
        v
    }
}
