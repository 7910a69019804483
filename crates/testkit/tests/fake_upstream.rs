//! Proves each behaviour of the fake upstream over the wire, using the crate's own client.
//!
//! No test asserts on speed; every wait is bounded by `TIMEOUT` (or a short timeout where the
//! expected outcome *is* silence).

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::Duration;

use hickory_proto::op::{Edns, Message, MessageType, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, CNAME, NS};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use nodedns_testkit::{
    ADVERTISED_UDP_PAYLOAD_BYTES, Behaviour, FakeUpstream, QueryError, Transport, exchange_tcp, exchange_udp,
    new_query, query_tcp, query_tcp_pipelined, query_udp, wait_until,
};

/// Bound on every wait for something that should happen.
const TIMEOUT: Duration = Duration::from_secs(5);
/// How long to wait for an answer that must never come.
const SILENCE: Duration = Duration::from_millis(300);

fn name(text: &str) -> Name {
    Name::from_ascii(text).expect("test names are valid")
}

fn a_record(owner: &str, address: [u8; 4], ttl: u32) -> Record {
    Record::from_rdata(name(owner), ttl, RData::A(A(Ipv4Addr::from(address))))
}

/// `(owner, ttl, minimum)` of the single SOA in the authority section.
fn authority_soa(reply: &Message) -> (String, u32, u32) {
    assert_eq!(reply.authorities.len(), 1, "expected one SOA in {reply:?}");
    let record = &reply.authorities[0];
    let RData::SOA(soa) = &record.data else { panic!("expected an SOA, got {record:?}") };
    (record.name.to_ascii(), record.ttl, soa.minimum)
}

fn question_name(reply: &Message) -> String {
    reply.queries[0].name().to_ascii()
}

#[test]
fn canned_a_and_aaaa_come_back_exactly_over_udp_and_tcp() {
    let upstream = FakeUpstream::start();
    upstream.answer("a.ns.svc.cluster.local", RecordType::A, &["10.0.0.1", "10.0.0.2"], 30);
    upstream.answer("a.ns.svc.cluster.local.", RecordType::AAAA, &["fd00::1"], 45);

    for reply in [
        query_udp(upstream.addr(), "a.ns.svc.cluster.local", RecordType::A, TIMEOUT).unwrap(),
        query_tcp(upstream.addr(), "A.NS.svc.cluster.local.", RecordType::A, TIMEOUT).unwrap(),
    ] {
        assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
        assert_eq!(reply.metadata.message_type, MessageType::Response);
        assert!(reply.metadata.authoritative);
        assert!(reply.metadata.recursion_available);
        assert!(reply.metadata.recursion_desired, "RD is echoed");
        assert!(!reply.metadata.truncation);
        let answers: Vec<_> = reply.answers.iter().map(|r| (r.data.clone(), r.ttl)).collect();
        assert_eq!(answers, [(RData::A(A::new(10, 0, 0, 1)), 30), (RData::A(A::new(10, 0, 0, 2)), 30)]);
        assert!(reply.authorities.is_empty() && reply.additionals.is_empty());
    }

    let reply = query_udp(upstream.addr(), "a.ns.svc.cluster.local", RecordType::AAAA, TIMEOUT).unwrap();
    assert_eq!(reply.answers.len(), 1);
    assert_eq!(reply.answers[0].ttl, 45);
    assert_eq!(reply.answers[0].data, RData::AAAA(AAAA(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1))));
}

#[test]
fn id_and_question_are_echoed() {
    let upstream = FakeUpstream::start();
    upstream.answer("a.example", RecordType::A, &["192.0.2.1"], 60);
    let mut query = new_query("a.example", RecordType::A).unwrap();
    query.metadata.id = 4242;
    let reply = exchange_udp(upstream.addr(), &query, TIMEOUT).unwrap();
    assert_eq!(reply.metadata.id, 4242);
    assert_eq!(reply.queries, query.queries);
    assert!(reply.edns.is_none(), "no OPT in the query, none in the answer");
}

#[test]
fn answer_records_returns_the_given_section_as_is() {
    let upstream = FakeUpstream::start();
    let chain = vec![
        Record::from_rdata(name("alias.example."), 300, RData::CNAME(CNAME(name("target.example.")))),
        a_record("target.example.", [192, 0, 2, 7], 20),
    ];
    upstream.answer_records("alias.example", RecordType::A, chain.clone());
    let reply = query_udp(upstream.addr(), "alias.example", RecordType::A, TIMEOUT).unwrap();
    assert_eq!(reply.answers, chain);
}

#[test]
fn nxdomain_carries_the_zone_soa_with_the_given_ttl_and_minimum() {
    let upstream = FakeUpstream::start();
    upstream.nxdomain("gone.ns.svc.cluster.local", 7, 3);
    for rtype in [RecordType::A, RecordType::AAAA] {
        let reply = query_udp(upstream.addr(), "gone.ns.svc.cluster.local", rtype, TIMEOUT).unwrap();
        assert_eq!(reply.metadata.response_code, ResponseCode::NXDomain);
        assert!(reply.answers.is_empty());
        assert_eq!(authority_soa(&reply), ("cluster.local.".to_owned(), 7, 3));
    }

    upstream.set_zone_soa("svc.cluster.local", 999, 999);
    let reply = query_tcp(upstream.addr(), "gone.ns.svc.cluster.local", RecordType::A, TIMEOUT).unwrap();
    assert_eq!(
        authority_soa(&reply),
        ("svc.cluster.local.".to_owned(), 7, 3),
        "a configured zone names the SOA; the nxdomain call still sets its timers"
    );
}

#[test]
fn nodata_carries_the_soa_and_no_answer() {
    let upstream = FakeUpstream::start();
    upstream.answer("v4only.example.com", RecordType::A, &["192.0.2.1"], 30);
    upstream.nodata("v4only.example.com", RecordType::AAAA, 11, 4);
    let reply = query_udp(upstream.addr(), "v4only.example.com", RecordType::AAAA, TIMEOUT).unwrap();
    assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
    assert!(reply.answers.is_empty());
    assert_eq!(authority_soa(&reply), ("example.com.".to_owned(), 11, 4));
}

#[test]
fn unknown_names_are_denied_with_the_root_or_zone_soa() {
    let upstream = FakeUpstream::start();
    let reply = query_udp(upstream.addr(), "unknown.example", RecordType::A, TIMEOUT).unwrap();
    assert_eq!(reply.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(authority_soa(&reply), (".".to_owned(), 30, 30));

    upstream.set_zone_soa("cluster.local", 5, 10);
    upstream.answer("a.ns.svc.cluster.local", RecordType::A, &["10.0.0.1"], 30);
    let reply = query_udp(upstream.addr(), "b.ns.svc.cluster.local", RecordType::A, TIMEOUT).unwrap();
    assert_eq!(reply.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(authority_soa(&reply), ("cluster.local.".to_owned(), 5, 10));

    // An existing name asked for another type, and an empty non-terminal, are NODATA.
    for (asked, rtype) in [("a.ns.svc.cluster.local", RecordType::AAAA), ("svc.cluster.local", RecordType::A)] {
        let reply = query_udp(upstream.addr(), asked, rtype, TIMEOUT).unwrap();
        assert_eq!(reply.metadata.response_code, ResponseCode::NoError, "{asked} {rtype}");
        assert!(reply.answers.is_empty());
        assert_eq!(authority_soa(&reply), ("cluster.local.".to_owned(), 5, 10));
    }
}

#[test]
fn servfail_and_refused_replace_the_answer() {
    let upstream = FakeUpstream::start();
    upstream.answer("a.example", RecordType::A, &["192.0.2.1"], 30);
    upstream.behaviour("a.example", RecordType::A, Behaviour::ServFail);
    let reply = query_udp(upstream.addr(), "a.example", RecordType::A, TIMEOUT).unwrap();
    assert_eq!(reply.metadata.response_code, ResponseCode::ServFail);
    assert!(reply.answers.is_empty());

    upstream.set_default_behaviour(Behaviour::Refused);
    let reply = query_tcp(upstream.addr(), "other.example", RecordType::A, TIMEOUT).unwrap();
    assert_eq!(reply.metadata.response_code, ResponseCode::Refused);
    // The per-name behaviour overrides the default.
    let reply = query_tcp(upstream.addr(), "a.example", RecordType::A, TIMEOUT).unwrap();
    assert_eq!(reply.metadata.response_code, ResponseCode::ServFail);
}

#[test]
fn dropped_queries_get_no_answer_but_are_logged() {
    let upstream = FakeUpstream::start();
    upstream.behaviour("blackhole.example", RecordType::A, Behaviour::Drop);
    let result = query_udp(upstream.addr(), "blackhole.example", RecordType::A, SILENCE);
    assert!(matches!(result, Err(QueryError::TimedOut)), "{result:?}");
    let result = query_tcp(upstream.addr(), "blackhole.example", RecordType::A, SILENCE);
    assert!(matches!(result, Err(QueryError::TimedOut)), "{result:?}");
    assert_eq!(upstream.query_count("blackhole.example", RecordType::A), 2);
}

#[test]
fn delays_answer_pipelined_tcp_queries_out_of_order() {
    let upstream = FakeUpstream::start();
    for host in ["slow.example", "medium.example", "fast.example"] {
        upstream.answer(host, RecordType::A, &["192.0.2.1"], 30);
    }
    upstream.behaviour("slow.example", RecordType::A, Behaviour::Delay(Duration::from_millis(600)));
    upstream.behaviour("medium.example", RecordType::A, Behaviour::Delay(Duration::from_millis(300)));

    let replies = query_tcp_pipelined(
        upstream.addr(),
        &[("slow.example", RecordType::A), ("medium.example", RecordType::A), ("fast.example", RecordType::A)],
        TIMEOUT,
    )
    .unwrap();
    let arrival: Vec<_> = replies.iter().map(question_name).collect();
    assert_eq!(arrival, ["fast.example.", "medium.example.", "slow.example."]);
    assert!(replies.iter().all(|reply| reply.answers.len() == 1));
    assert_eq!(upstream.tcp_connections_accepted(), 1, "all on one connection");
}

#[test]
fn a_delayed_udp_answer_does_not_hold_up_others() {
    let upstream = FakeUpstream::start();
    upstream.behaviour("slow.example", RecordType::A, Behaviour::Delay(Duration::from_secs(3)));
    let slow_socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    slow_socket.connect(upstream.addr()).unwrap();
    let slow_query = new_query("slow.example", RecordType::A).unwrap();
    slow_socket.send(&slow_query.to_vec().unwrap()).unwrap();
    assert!(wait_until(TIMEOUT, || upstream.query_count("slow.example", RecordType::A) == 1));

    let fast = query_udp(upstream.addr(), "fast.example", RecordType::A, TIMEOUT).unwrap();
    assert_eq!(question_name(&fast), "fast.example.");
    // Had the server waited out the delay before serving the next query, the slow answer would
    // already be here.
    slow_socket.set_nonblocking(true).unwrap();
    let early = slow_socket.recv(&mut [0_u8; 512]);
    assert!(
        matches!(early, Err(ref error) if error.kind() == std::io::ErrorKind::WouldBlock),
        "slow answer overtook the fast one: {early:?}"
    );

    slow_socket.set_nonblocking(false).unwrap();
    slow_socket.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut datagram = [0_u8; 512];
    let length = slow_socket.recv(&mut datagram).unwrap();
    let slow = Message::from_vec(&datagram[..length]).unwrap();
    assert_eq!(slow.metadata.id, slow_query.metadata.id);
}

#[test]
fn truncate_sets_tc_over_udp_but_answers_fully_over_tcp() {
    let upstream = FakeUpstream::start();
    upstream.answer("big.example", RecordType::A, &["192.0.2.1"], 30);
    upstream.behaviour("big.example", RecordType::A, Behaviour::Truncate);

    let udp = query_udp(upstream.addr(), "big.example", RecordType::A, TIMEOUT).unwrap();
    assert!(udp.metadata.truncation);
    assert!(udp.answers.is_empty());
    assert_eq!(question_name(&udp), "big.example.");

    let tcp = query_tcp(upstream.addr(), "big.example", RecordType::A, TIMEOUT).unwrap();
    assert!(!tcp.metadata.truncation);
    assert_eq!(tcp.answers.len(), 1);
}

#[test]
fn udp_answers_larger_than_the_client_payload_are_truncated() {
    let upstream = FakeUpstream::start();
    let addresses: Vec<String> = (1..=60).map(|host| format!("10.0.0.{host}")).collect();
    let addresses: Vec<&str> = addresses.iter().map(String::as_str).collect();
    upstream.answer("many.example", RecordType::A, &addresses, 30);

    // Without EDNS the limit is 512 bytes; 60 A records do not fit.
    let plain = query_udp(upstream.addr(), "many.example", RecordType::A, TIMEOUT).unwrap();
    assert!(plain.metadata.truncation);
    assert!(plain.answers.is_empty());

    // With EDNS and a 4096-byte payload they do, and the answer carries OPT.
    let mut query = new_query("many.example", RecordType::A).unwrap();
    let mut edns = Edns::new();
    edns.set_max_payload(4096);
    query.set_edns(edns);
    let reply = exchange_udp(upstream.addr(), &query, TIMEOUT).unwrap();
    assert!(!reply.metadata.truncation);
    assert_eq!(reply.answers.len(), 60);
    let opt = reply.edns.expect("OPT in the answer to a query with OPT");
    assert_eq!(opt.max_payload(), ADVERTISED_UDP_PAYLOAD_BYTES);

    // TCP is never truncated.
    let tcp = query_tcp(upstream.addr(), "many.example", RecordType::A, TIMEOUT).unwrap();
    assert_eq!(tcp.answers.len(), 60);
}

#[test]
fn close_connection_closes_the_tcp_stream_without_answering() {
    let upstream = FakeUpstream::start();
    upstream.behaviour("closer.example", RecordType::A, Behaviour::CloseConnection);
    let result = query_tcp(upstream.addr(), "closer.example", RecordType::A, TIMEOUT);
    assert!(matches!(result, Err(QueryError::ConnectionClosed)), "{result:?}");
    assert!(wait_until(TIMEOUT, || upstream.open_tcp_connections() == 0));

    // A pending delayed answer on the same connection is abandoned too.
    upstream.behaviour("pending.example", RecordType::A, Behaviour::Delay(Duration::from_millis(200)));
    let result = query_tcp_pipelined(
        upstream.addr(),
        &[("pending.example", RecordType::A), ("closer.example", RecordType::A)],
        TIMEOUT,
    );
    assert!(matches!(result, Err(QueryError::ConnectionClosed)), "{result:?}");

    // Over UDP it is a drop.
    let result = query_udp(upstream.addr(), "closer.example", RecordType::A, SILENCE);
    assert!(matches!(result, Err(QueryError::TimedOut)), "{result:?}");
    assert_eq!(upstream.query_count("closer.example", RecordType::A), 3);
}

#[test]
fn wrong_id_and_wrong_question_really_are_wrong() {
    let upstream = FakeUpstream::start();
    upstream.answer("a.example", RecordType::A, &["192.0.2.1"], 30);
    upstream.behaviour("a.example", RecordType::A, Behaviour::WrongId);
    let mut query = new_query("a.example", RecordType::A).unwrap();
    query.metadata.id = u16::MAX;
    let reply = exchange_udp(upstream.addr(), &query, TIMEOUT).unwrap();
    assert_eq!(reply.metadata.id, 0, "ID + 1, wrapping");
    let reply = exchange_tcp(upstream.addr(), &query, TIMEOUT).unwrap();
    assert_eq!(reply.metadata.id, 0);

    upstream.behaviour("a.example", RecordType::A, Behaviour::WrongQuestion);
    let reply = exchange_udp(upstream.addr(), &query, TIMEOUT).unwrap();
    assert_eq!(reply.metadata.id, query.metadata.id);
    assert_eq!(reply.queries.len(), 1);
    assert_ne!(reply.queries[0].name(), query.queries[0].name());
    assert_eq!(question_name(&reply), "wrong.a.example.");
}

#[test]
fn extra_records_are_appended_to_authority_and_additional() {
    let upstream = FakeUpstream::start();
    upstream.answer("a.example", RecordType::A, &["192.0.2.1"], 30);
    let poison_ns = Record::from_rdata(name("example."), 86400, RData::NS(NS(name("ns.evil."))));
    let poison_a = a_record("victim.other.", [203, 0, 113, 66], 86400);
    upstream.behaviour("a.example", RecordType::A, Behaviour::ExtraRecords(vec![poison_ns.clone(), poison_a.clone()]));
    let reply = query_udp(upstream.addr(), "a.example", RecordType::A, TIMEOUT).unwrap();
    assert_eq!(reply.answers.len(), 1);
    assert_eq!(reply.authorities, [poison_ns]);
    assert_eq!(reply.additionals, [poison_a]);
}

#[test]
fn behaviours_compose() {
    let upstream = FakeUpstream::start();
    upstream.answer("a.example", RecordType::A, &["192.0.2.1"], 30);
    upstream.set_default_behaviour(Behaviour::All(vec![
        Behaviour::Delay(Duration::from_millis(50)),
        Behaviour::WrongId,
        Behaviour::ServFail,
    ]));
    let mut query = new_query("a.example", RecordType::A).unwrap();
    query.metadata.id = 7;
    let reply = exchange_udp(upstream.addr(), &query, TIMEOUT).unwrap();
    assert_eq!(reply.metadata.id, 8);
    assert_eq!(reply.metadata.response_code, ResponseCode::ServFail);
}

/// Sends `count` pipelined queries for `name` followed by one for `sentinel` on one connection,
/// and returns how many replies preceded the sentinel's. Undelayed answers are written in query
/// order, so once the sentinel's reply arrives every other reply has arrived: no timing involved.
fn answered_before_sentinel(server: SocketAddr, name: &str, count: u16, sentinel: &str) -> usize {
    let mut pipeline = Vec::new();
    for index in 0..=count {
        let asked = if index == count { sentinel } else { name };
        let mut query = new_query(asked, RecordType::A).unwrap();
        query.metadata.id = index;
        let wire = query.to_vec().unwrap();
        pipeline.extend_from_slice(&u16::try_from(wire.len()).unwrap().to_be_bytes());
        pipeline.extend_from_slice(&wire);
    }
    let mut stream = TcpStream::connect_timeout(&server, TIMEOUT).unwrap();
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    stream.set_write_timeout(Some(TIMEOUT)).unwrap();
    stream.write_all(&pipeline).unwrap();
    let mut answered = 0;
    loop {
        let mut prefix = [0_u8; 2];
        stream.read_exact(&mut prefix).unwrap();
        let mut wire = vec![0_u8; usize::from(u16::from_be_bytes(prefix))];
        stream.read_exact(&mut wire).unwrap();
        let reply = Message::from_vec(&wire).unwrap();
        if reply.metadata.id == count {
            return answered;
        }
        answered += 1;
    }
}

#[test]
fn drop_fraction_drops_roughly_that_fraction() {
    let upstream = FakeUpstream::start();
    upstream.answer("lossy.example", RecordType::A, &["192.0.2.1"], 30);
    upstream.answer("sentinel.example", RecordType::A, &["192.0.2.2"], 30);
    upstream.behaviour("lossy.example", RecordType::A, Behaviour::DropFraction(0.3));

    let answered = answered_before_sentinel(upstream.addr(), "lossy.example", 1000, "sentinel.example");
    let dropped = 1000 - answered;
    assert!((150..=450).contains(&dropped), "dropped {dropped} of 1000");
    assert_eq!(upstream.query_count("lossy.example", RecordType::A), 1000, "drops are logged");
}

#[test]
fn the_log_records_names_types_transports_and_ids() {
    let upstream = FakeUpstream::start();
    let mut udp_query = new_query("MiXeD.Example.", RecordType::A).unwrap();
    udp_query.metadata.id = 11;
    exchange_udp(upstream.addr(), &udp_query, TIMEOUT).unwrap();
    let mut tcp_query = new_query("mixed.example", RecordType::AAAA).unwrap();
    tcp_query.metadata.id = 12;
    exchange_tcp(upstream.addr(), &tcp_query, TIMEOUT).unwrap();

    let log = upstream.log();
    let summary: Vec<_> =
        log.iter().map(|query| (query.name.as_str(), query.rtype, query.transport, query.id)).collect();
    assert_eq!(
        summary,
        [("mixed.example", RecordType::A, Transport::Udp, 11), ("mixed.example", RecordType::AAAA, Transport::Tcp, 12),]
    );
    assert!(log.iter().all(|query| query.peer.ip() == IpAddr::from(Ipv4Addr::LOCALHOST)));
    assert!(log[0].at <= log[1].at);
    assert_eq!(upstream.query_count("MIXED.example.", RecordType::A), 1);
    assert_eq!(upstream.query_count("mixed.example", RecordType::MX), 0);

    upstream.clear_log();
    assert!(upstream.log().is_empty());
}

#[test]
fn tcp_connections_are_counted() {
    let upstream = FakeUpstream::start();
    let idle = TcpStream::connect_timeout(&upstream.addr(), TIMEOUT).unwrap();
    assert!(wait_until(TIMEOUT, || upstream.open_tcp_connections() == 1));
    query_tcp(upstream.addr(), "a.example", RecordType::A, TIMEOUT).unwrap();
    assert_eq!(upstream.tcp_connections_accepted(), 2);
    drop(idle);
    assert!(wait_until(TIMEOUT, || upstream.open_tcp_connections() == 0));
}

#[test]
fn udp_can_be_switched_off_leaving_tcp() {
    let upstream = FakeUpstream::start();
    upstream.answer("a.example", RecordType::A, &["192.0.2.1"], 30);
    upstream.set_udp_enabled(false);
    let result = query_udp(upstream.addr(), "a.example", RecordType::A, SILENCE);
    assert!(
        matches!(result, Err(QueryError::Io(ref error)) if error.kind() == std::io::ErrorKind::ConnectionRefused)
            || matches!(result, Err(QueryError::TimedOut)),
        "{result:?}"
    );
    assert_eq!(upstream.query_count("a.example", RecordType::A), 0, "the socket is closed");
    assert_eq!(query_tcp(upstream.addr(), "a.example", RecordType::A, TIMEOUT).unwrap().answers.len(), 1);

    upstream.set_udp_enabled(true);
    assert_eq!(query_udp(upstream.addr(), "a.example", RecordType::A, TIMEOUT).unwrap().answers.len(), 1);
}

#[test]
fn dropping_the_upstream_closes_connections_and_frees_the_port() {
    let upstream = FakeUpstream::start();
    let addr = upstream.addr();
    let mut connection = TcpStream::connect_timeout(&addr, TIMEOUT).unwrap();
    assert!(wait_until(TIMEOUT, || upstream.open_tcp_connections() == 1));
    drop(upstream);

    connection.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut buffer = [0_u8; 1];
    let read = connection.read(&mut buffer);
    assert!(matches!(read, Ok(0)) || read.is_err(), "connection still open: {read:?}");
    TcpListener::bind(addr).expect("TCP port freed");
    UdpSocket::bind(addr).expect("UDP port freed");
}

#[test]
fn stop_is_idempotent_and_leaves_the_log_readable() {
    let upstream = FakeUpstream::start();
    query_udp(upstream.addr(), "a.example", RecordType::A, TIMEOUT).unwrap();
    upstream.stop();
    upstream.stop();
    upstream.set_udp_enabled(false);
    assert_eq!(upstream.log().len(), 1);
    let result = query_tcp(upstream.addr(), "a.example", RecordType::A, SILENCE);
    assert!(result.is_err(), "{result:?}");
}

#[test]
fn start_on_serves_a_given_address() {
    let upstream = FakeUpstream::start_on(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
    assert_eq!(upstream.addr().ip(), IpAddr::from(Ipv4Addr::LOCALHOST));
    assert_ne!(upstream.addr().port(), 0);
    let taken = upstream.addr();
    assert!(FakeUpstream::start_on(taken).is_err(), "the port is in use");
}

#[tokio::test]
async fn usable_from_async_tests() {
    let upstream = FakeUpstream::start();
    upstream.answer("a.example", RecordType::A, &["192.0.2.1"], 30);
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    socket.connect(upstream.addr()).await.unwrap();
    let query = new_query("a.example", RecordType::A).unwrap();
    socket.send(&query.to_vec().unwrap()).await.unwrap();
    let mut datagram = [0_u8; 512];
    let length = tokio::time::timeout(TIMEOUT, socket.recv(&mut datagram)).await.expect("answered in time").unwrap();
    let reply = Message::from_vec(&datagram[..length]).unwrap();
    assert_eq!(reply.answers.len(), 1);
    assert_eq!(upstream.query_count("a.example", RecordType::A), 1);
    drop(upstream);
}
