//! Transport tests against the programmable fake upstream.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::rr::{Name, RecordType};
use nodedns_cache::{Disposition, LowerName};
use nodedns_testkit::{Behaviour, FakeUpstream, Transport as FakeTransport, wire_name as wire};
use nodedns_wire::UpstreamQuestion;

use super::*;

fn q(w: &[u8], qtype: u16) -> UpstreamQuestion<'_> {
    UpstreamQuestion { name: LowerName::new(w).unwrap(), qtype, qclass: 1, dnssec_ok: false, checking_disabled: false }
}

fn pool(addrs: &[SocketAddr], transport: Transport, conns: usize) -> Arc<UpstreamPool> {
    Arc::new(UpstreamPool::new(
        addrs,
        PoolConfig {
            transport,
            tcp_connections: conns,
            query_timeout: Duration::from_millis(800),
            ..PoolConfig::default()
        },
    ))
}

#[tokio::test]
async fn many_queries_share_one_pipelined_connection() {
    let up = FakeUpstream::start();
    for i in 0..200 {
        up.answer(&format!("n{i}.example"), RecordType::A, &["10.0.0.1"], 30);
    }
    let p = pool(&[up.addr()], Transport::Tcp, 1);
    let mut tasks = Vec::new();
    for i in 0..200 {
        let p = p.clone();
        tasks.push(tokio::spawn(async move {
            let w = wire(&format!("n{i}.example"));
            p.resolve(&q(&w, 1), &Name::root()).await
        }));
    }
    for t in tasks {
        let r = t.await.unwrap().unwrap();
        assert!(matches!(r.answer.disposition, Disposition::Positive { .. }));
    }
    assert_eq!(up.tcp_connections_accepted(), 1);
    assert!(up.log().iter().all(|l| l.transport == FakeTransport::Tcp));
}

#[tokio::test]
async fn answers_arrive_out_of_order() {
    let up = FakeUpstream::start();
    up.answer("slow.example", RecordType::A, &["10.0.0.1"], 30);
    up.answer("fast.example", RecordType::A, &["10.0.0.2"], 30);
    up.behaviour("slow.example", RecordType::A, Behaviour::Delay(Duration::from_millis(400)));
    let p = pool(&[up.addr()], Transport::Tcp, 1);
    let p2 = p.clone();
    let slow = tokio::spawn(async move {
        let w = wire("slow.example");
        let r = p2.resolve(&q(&w, 1), &Name::root()).await;
        (r.is_ok(), tokio::time::Instant::now())
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let w = wire("fast.example");
    assert!(p.resolve(&q(&w, 1), &Name::root()).await.is_ok());
    let fast_done = tokio::time::Instant::now();
    let (ok, slow_done) = slow.await.unwrap();
    assert!(ok);
    assert!(fast_done < slow_done, "the fast answer was not held behind the slow one");
    assert_eq!(up.tcp_connections_accepted(), 1);
}

#[tokio::test]
async fn queries_on_a_closed_connection_are_retried_on_a_new_one() {
    let up = FakeUpstream::start();
    up.answer("pending.example", RecordType::A, &["10.0.0.1"], 30);
    up.behaviour("pending.example", RecordType::A, Behaviour::Delay(Duration::from_millis(200)));
    up.behaviour("killer.example", RecordType::A, Behaviour::CloseConnectionOnce);
    let p = pool(&[up.addr()], Transport::Tcp, 1);
    let p2 = p.clone();
    let pending = tokio::spawn(async move {
        let w = wire("pending.example");
        p2.resolve(&q(&w, 1), &Name::root()).await
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let w = wire("killer.example");
    let killer = p.resolve(&q(&w, 1), &Name::root()).await;
    assert!(killer.is_ok(), "the killer's own retry is answered: {killer:?}");
    let r = pending.await.unwrap();
    assert!(r.is_ok(), "{r:?}");
    assert!(up.tcp_connections_accepted() >= 2);
}

#[tokio::test]
async fn udp_truncation_falls_back_to_tcp() {
    let up = FakeUpstream::start();
    up.answer("big.example", RecordType::TXT, &["\"hello\""], 30);
    up.behaviour("big.example", RecordType::TXT, Behaviour::Truncate);
    let p = pool(&[up.addr()], Transport::Udp, 1);
    let w = wire("big.example");
    let r = p.resolve(&q(&w, 16), &Name::root()).await.unwrap();
    assert!(matches!(r.answer.disposition, Disposition::Positive { .. }));
    let transports: Vec<_> = up.log().iter().map(|l| l.transport).collect();
    assert_eq!(transports, vec![FakeTransport::Udp, FakeTransport::Tcp]);
}

#[tokio::test]
async fn responses_with_wrong_id_or_question_are_never_accepted() {
    for bad in [Behaviour::WrongId, Behaviour::WrongQuestion] {
        for transport in [Transport::Udp, Transport::Tcp] {
            let up = FakeUpstream::start();
            up.answer("x.example", RecordType::A, &["6.6.6.6"], 30);
            up.behaviour("x.example", RecordType::A, bad.clone());
            let p = UpstreamPool::new(
                &[up.addr()],
                PoolConfig {
                    transport,
                    tcp_connections: 1,
                    query_timeout: Duration::from_millis(300),
                    max_attempts: 1,
                    ..PoolConfig::default()
                },
            );
            let w = wire("x.example");
            let r = p.resolve(&q(&w, 1), &Name::root()).await;
            assert!(r.is_err(), "{bad:?} over {transport:?} was accepted");
            let ep = &p.endpoints()[0].endpoint;
            assert!(ep.stats.error(ErrorKind::Mismatch) > 0 || ep.stats.error(ErrorKind::Timeout) > 0);
        }
    }
}

#[tokio::test]
async fn a_dead_endpoint_is_skipped_and_ejected() {
    let good = FakeUpstream::start();
    let bad = FakeUpstream::start();
    bad.set_default_behaviour(Behaviour::Drop);
    for i in 0..20 {
        good.answer(&format!("n{i}.example"), RecordType::A, &["10.0.0.1"], 30);
    }
    let p = pool(&[bad.addr(), good.addr()], Transport::Tcp, 1);
    for i in 0..20 {
        let w = wire(&format!("n{i}.example"));
        let r = p.resolve(&q(&w, 1), &Name::root()).await.unwrap();
        assert_eq!(r.endpoint, good.addr());
    }
    let eps = p.endpoints();
    let bad_ep = eps.iter().find(|e| e.endpoint.addr == bad.addr()).unwrap();
    assert_eq!(bad_ep.endpoint.health(), Health::Ejected);
    // Once ejected it gets no more queries: far fewer than 20 reached it.
    assert!(bad.log().len() < 10, "{} queries reached the dead endpoint", bad.log().len());
}

#[tokio::test]
async fn servfail_is_a_failure_and_tries_the_next_endpoint() {
    let a = FakeUpstream::start();
    let b = FakeUpstream::start();
    a.set_default_behaviour(Behaviour::ServFail);
    b.set_default_behaviour(Behaviour::ServFail);
    let p = pool(&[a.addr(), b.addr()], Transport::Tcp, 1);
    let w = wire("any.example");
    let r = p.resolve(&q(&w, 1), &Name::root()).await;
    assert!(matches!(r, Err(UpstreamError::Failed { last: ErrorKind::Rcode, rcode: Some(2) })), "{r:?}");
    assert!(a.log().len() + b.log().len() >= 2);
}

fn pool_with(addrs: &[SocketAddr], f: impl FnOnce(&mut PoolConfig)) -> Arc<UpstreamPool> {
    let mut c = PoolConfig {
        transport: Transport::Tcp,
        tcp_connections: 1,
        query_timeout: Duration::from_millis(300),
        query_budget: Duration::from_millis(800),
        ..PoolConfig::default()
    };
    f(&mut c);
    Arc::new(UpstreamPool::new(addrs, c))
}

/// Issue #13: one name that SERVFAILs, REFUSEs or never answers on the only endpoint is that
/// name's failure; the endpoint stays healthy and every other name resolves.
#[tokio::test]
async fn one_broken_name_never_ejects_the_only_endpoint() {
    for broken in [Behaviour::ServFail, Behaviour::Refused, Behaviour::Drop] {
        let up = FakeUpstream::start();
        up.behaviour("broken.example", RecordType::A, broken.clone());
        for i in 0..20 {
            up.answer(&format!("n{i}.example"), RecordType::A, &["10.0.0.1"], 30);
        }
        let p = pool_with(&[up.addr()], |_| {});
        let bw = wire("broken.example");
        let (bq, root) = (q(&bw, 1), Name::root());
        // Retries of the broken name, with other traffic flowing alongside (as on a node).
        for round in 0..10 {
            let (broken, fine) = tokio::join!(p.resolve(&bq, &root), async {
                let w = wire(&format!("n{}.example", round % 20));
                p.resolve(&q(&w, 1), &Name::root()).await
            });
            assert!(broken.is_err(), "{broken:?}");
            assert!(fine.is_ok(), "{broken:?}: round {round}: {fine:?}");
        }
        assert_eq!(p.endpoints()[0].endpoint.health(), Health::Healthy, "{broken:?}");
        for i in 0..20 {
            let w = wire(&format!("n{i}.example"));
            assert!(p.resolve(&q(&w, 1), &Name::root()).await.is_ok(), "{broken:?}: n{i}");
        }
    }
}

/// A name that fails on every endpoint counts against none; an endpoint failing what its peers
/// answer is ejected.
#[tokio::test]
async fn a_peer_answering_is_what_makes_a_failure_the_endpoints() {
    let ups: Vec<FakeUpstream> = (0..3).map(|_| FakeUpstream::start()).collect();
    for up in &ups {
        up.behaviour("broken.example", RecordType::A, Behaviour::ServFail);
        for i in 0..40 {
            up.answer(&format!("n{i}.example"), RecordType::A, &["10.0.0.1"], 30);
        }
    }
    let addrs: Vec<SocketAddr> = ups.iter().map(|u| u.addr()).collect();
    let p = pool_with(&addrs, |_| {});
    let bw = wire("broken.example");
    for _ in 0..30 {
        assert!(p.resolve(&q(&bw, 1), &Name::root()).await.is_err());
    }
    assert!(p.endpoints().iter().all(|e| e.endpoint.health() == Health::Healthy), "a broken name ejected an endpoint");
    // Now the first endpoint SERVFAILs everything: its peers answer, so it is ejected.
    ups[0].set_default_behaviour(Behaviour::ServFail);
    for i in 0..40 {
        let w = wire(&format!("n{i}.example"));
        let r = p.resolve(&q(&w, 1), &Name::root()).await;
        assert!(r.is_ok(), "n{i}: {r:?}");
    }
    let eps = p.endpoints();
    assert_eq!(eps[0].endpoint.health(), Health::Ejected);
    assert!(eps[1..].iter().all(|e| e.endpoint.health() == Health::Healthy));
}

/// An endpoint that answers nothing at all is ejected even when it is the only one: it goes
/// silent for two attempt-lengths and its liveness probe gets no answer.
#[tokio::test]
async fn a_silent_only_endpoint_is_ejected_by_its_liveness_probe() {
    let up = FakeUpstream::start();
    up.set_default_behaviour(Behaviour::Drop);
    let p = pool_with(&[up.addr()], |_| {});
    let started = std::time::Instant::now();
    let mut ejected_after = None;
    for i in 0..20 {
        let w = wire(&format!("n{i}.example"));
        let _ = p.resolve(&q(&w, 1), &Name::root()).await;
        if p.endpoints()[0].endpoint.health() == Health::Ejected {
            ejected_after = Some(started.elapsed());
            break;
        }
    }
    let after = ejected_after.expect("a silent endpoint must be ejected");
    // Silent for 2 × 300 ms, then a 300 ms probe: about 1 s, never the 20 attempts' 6 s.
    assert!(after < Duration::from_secs(3), "{after:?}");
    assert!(matches!(p.resolve(&q(&wire("later.example"), 1), &Name::root()).await, Err(UpstreamError::AllEjected)));
}

/// Issue #13 (5): never more than the limit in flight at one endpoint; over it a query waits
/// `queue_wait`, then is shed as `Overloaded` — probes and retries included.
#[tokio::test]
async fn in_flight_limit_per_endpoint_is_never_exceeded() {
    let up = FakeUpstream::start();
    up.set_default_behaviour(Behaviour::Delay(Duration::from_millis(200)));
    for i in 0..60 {
        up.answer(&format!("n{i}.example"), RecordType::A, &["10.0.0.1"], 30);
    }
    let p = pool_with(&[up.addr()], |c| {
        c.max_inflight_per_endpoint = 10;
        c.queue_wait = Duration::from_millis(50);
        c.query_timeout = Duration::from_secs(1);
        c.query_budget = Duration::from_secs(2);
    });
    let mut tasks = Vec::new();
    for i in 0..60 {
        let p = p.clone();
        tasks.push(tokio::spawn(async move {
            let w = wire(&format!("n{i}.example"));
            p.resolve(&q(&w, 1), &Name::root()).await
        }));
    }
    let mut peak = 0;
    let ep = p.endpoints()[0].endpoint.clone();
    while !tasks.iter().all(|t| t.is_finished()) {
        peak = peak.max(ep.in_flight());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (mut ok, mut shed) = (0, 0);
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => ok += 1,
            Err(UpstreamError::Overloaded) => shed += 1,
            Err(e) => panic!("{e:?}"),
        }
    }
    assert!(peak <= 10, "peak {peak}");
    assert_eq!(ok, 10, "the first ten got slots");
    assert_eq!(shed, 50);
    assert_eq!(up.log().len(), 10, "shed queries never reach the upstream");
    assert_eq!(ep.health(), Health::Healthy, "our own limit is never the endpoint's fault");
}

/// Every attempt of one question fits the budget, however many endpoints time out.
#[tokio::test]
async fn attempts_fit_one_budget() {
    let ups: Vec<FakeUpstream> = (0..3).map(|_| FakeUpstream::start()).collect();
    for up in &ups {
        up.set_default_behaviour(Behaviour::Drop);
    }
    let addrs: Vec<SocketAddr> = ups.iter().map(|u| u.addr()).collect();
    let p = pool_with(&addrs, |c| {
        c.query_timeout = Duration::from_millis(400);
        c.query_budget = Duration::from_millis(600);
    });
    let started = std::time::Instant::now();
    let r = p.resolve(&q(&wire("x.example"), 1), &Name::root()).await;
    let took = started.elapsed();
    assert!(r.is_err());
    assert!(took < Duration::from_millis(900), "{took:?}");
    let asked: usize = ups.iter().map(|u| u.log().len()).sum();
    assert_eq!(asked, 2, "one attempt and one retry on another endpoint");
}

/// Once an endpoint is ejected, client queries no longer reach it; its health probes must count
/// as queries and their losses as errors, or the error ratio of a dead endpoint goes 0/0.
#[tokio::test]
async fn health_probes_of_an_ejected_endpoint_count_as_queries_and_errors() {
    use std::sync::atomic::Ordering::Relaxed;
    let (a, b) = (FakeUpstream::start(), FakeUpstream::start());
    a.set_default_behaviour(Behaviour::Drop);
    b.set_default_behaviour(Behaviour::Drop);
    let p = Arc::new(UpstreamPool::new(
        &[a.addr(), b.addr()],
        PoolConfig { transport: Transport::Udp, query_timeout: Duration::from_millis(100), ..PoolConfig::default() },
    ));
    let w = wire("x.example");
    let ejected = || p.endpoints().iter().find(|e| e.endpoint.health() == Health::Ejected).cloned();
    for _ in 0..10 {
        if ejected().is_some() {
            break;
        }
        let _ = p.resolve(&q(&w, 1), &Name::root()).await;
    }
    let e = ejected().expect("an endpoint that loses every query is ejected").endpoint.clone();
    let (sent, lost) = (e.stats.queries.load(Relaxed), e.stats.error(ErrorKind::Timeout));
    assert!(p.probe_ejected(&q(&w, 6), &Name::root()).await == 0, "a blackholed endpoint is not re-admitted");
    assert_eq!(e.stats.queries.load(Relaxed), sent + 1, "the probe is a query sent");
    assert_eq!(e.stats.error(ErrorKind::Timeout), lost + 1, "its loss is a timeout");
}

/// One report: "query" or "response", the endpoint, the transport, the wire message.
type Seen = (&'static str, SocketAddr, WireProtocol, Vec<u8>);

/// Records what a pool reports to its observer.
#[derive(Default)]
struct Recorder {
    seen: parking_lot::Mutex<Vec<Seen>>,
}

impl ExchangeObserver for Recorder {
    fn query_sent(&self, upstream: SocketAddr, protocol: WireProtocol, query: &[u8], _: std::time::SystemTime) {
        self.seen.lock().push(("query", upstream, protocol, query.to_vec()));
    }

    fn response_received(
        &self,
        upstream: SocketAddr,
        protocol: WireProtocol,
        response: &[u8],
        sent: std::time::SystemTime,
        received: std::time::SystemTime,
    ) {
        assert!(received >= sent);
        self.seen.lock().push(("response", upstream, protocol, response.to_vec()));
    }
}

#[tokio::test]
async fn the_observer_sees_each_query_sent_and_response_received() {
    let up = FakeUpstream::start();
    up.answer("seen.example", RecordType::A, &["10.0.0.1"], 30);
    up.answer("big.example", RecordType::A, &["10.0.0.2"], 30);
    up.behaviour("big.example", RecordType::A, Behaviour::Truncate);
    let recorder = Arc::new(Recorder::default());
    let observer: Arc<dyn ExchangeObserver> = recorder.clone();
    for transport in [Transport::Tcp, Transport::Udp] {
        let p = UpstreamPool::new(&[up.addr()], PoolConfig { transport, ..PoolConfig::default() })
            .with_observer(Some(observer.clone()));
        let w = wire("seen.example");
        p.resolve(&q(&w, 1), &Name::root()).await.unwrap();
    }
    // A truncated UDP answer: both attempts (UDP, then TCP) are reported.
    let p = UpstreamPool::new(&[up.addr()], PoolConfig { transport: Transport::Udp, ..PoolConfig::default() })
        .with_observer(Some(observer));
    let w = wire("big.example");
    p.resolve(&q(&w, 1), &Name::root()).await.unwrap();

    let seen = recorder.seen.lock();
    let kinds: Vec<(&str, WireProtocol)> = seen.iter().map(|s| (s.0, s.2)).collect();
    use WireProtocol::{Tcp, Udp};
    assert_eq!(
        kinds,
        [
            ("query", Tcp),
            ("response", Tcp),
            ("query", Udp),
            ("response", Udp),
            ("query", Udp),
            ("response", Udp),
            ("query", Tcp),
            ("response", Tcp)
        ]
    );
    for pair in seen.chunks(2) {
        assert_eq!(pair[0].1, up.addr());
        // The query as sent (no TCP length prefix) and its response share the ID.
        assert_eq!(pair[0].3[..2], pair[1].3[..2]);
        assert_eq!(pair[0].3[2] & 0x80, 0, "QR clear in the query");
        assert_eq!(pair[1].3[2] & 0x80, 0x80, "QR set in the response");
    }
}

fn shared_pool(registry: &Arc<EndpointRegistry>, addr: SocketAddr, conns: usize) -> Arc<UpstreamPool> {
    Arc::new(UpstreamPool::with_registry(
        &[addr],
        PoolConfig {
            transport: Transport::Tcp,
            tcp_connections: conns,
            query_timeout: Duration::from_millis(2000),
            ..PoolConfig::default()
        },
        registry.clone(),
    ))
}

/// Resolves `n` slow names at once; returns when all are answered, with whether all succeeded.
async fn slow_burst(p: &Arc<UpstreamPool>, n: usize) -> Vec<tokio::task::JoinHandle<bool>> {
    (0..n)
        .map(|i| {
            let p = p.clone();
            tokio::spawn(async move {
                let w = wire(&format!("slow{i}.example"));
                p.resolve(&q(&w, 1), &Name::root()).await.is_ok()
            })
        })
        .collect()
}

async fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !f() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn tcp_connections_of_a_kept_endpoint_grow_and_shrink_without_losing_queries() {
    let up = FakeUpstream::start();
    for i in 0..3 {
        up.answer(&format!("slow{i}.example"), RecordType::A, &["10.0.0.1"], 30);
        up.behaviour(&format!("slow{i}.example"), RecordType::A, Behaviour::Delay(Duration::from_millis(400)));
    }
    let registry = EndpointRegistry::new();
    let old = shared_pool(&registry, up.addr(), 1);
    assert_eq!(old.endpoints()[0].tcp_connections(), 1);

    // Reload: the zone now asks for 3; the endpoint (kept in the registry) grows.
    let grown = shared_pool(&registry, up.addr(), 3);
    registry.set_tcp_connections([&*grown]);
    drop(old);
    assert_eq!(grown.endpoints()[0].tcp_connections(), 3);
    let burst = slow_burst(&grown, 3).await;
    wait_until("3 connections", || up.open_tcp_connections() == 3).await;

    // Reload to 1 while the three slow queries are outstanding, one on each connection: none
    // is lost, and the two excess connections close once their query is answered.
    let shrunk = shared_pool(&registry, up.addr(), 1);
    registry.set_tcp_connections([&*shrunk]);
    drop(grown);
    assert_eq!(shrunk.endpoints()[0].tcp_connections(), 1);
    for t in burst {
        assert!(t.await.unwrap(), "a query in flight failed across the shrink");
    }
    wait_until("1 connection", || up.open_tcp_connections() == 1).await;
    assert_eq!(up.tcp_connections_accepted(), 3);
    // New queries use the one remaining connection.
    for t in slow_burst(&shrunk, 3).await {
        assert!(t.await.unwrap());
    }
    assert_eq!(up.tcp_connections_accepted(), 3);
}

#[tokio::test]
async fn zones_sharing_an_endpoint_get_the_largest_count_asked() {
    let up = FakeUpstream::start();
    let registry = EndpointRegistry::new();
    let a = shared_pool(&registry, up.addr(), 2);
    let b = shared_pool(&registry, up.addr(), 5);
    // Built at startup: the second zone's larger count wins.
    assert_eq!(a.endpoints()[0].tcp_connections(), 5);
    // Reload: the second zone now asks for 3, the first still 2: 3.
    let b_next = shared_pool(&registry, up.addr(), 3);
    drop(b);
    registry.set_tcp_connections([&*a, &*b_next]);
    assert_eq!(a.endpoints()[0].tcp_connections(), 3);
    assert!(Arc::ptr_eq(&a.endpoints()[0], &b_next.endpoints()[0]));
}
