//! The resolver's rules on tokio's paused clock: TTLs counting down, pairs expiring together,
//! serve-stale and its refresh backoff, prefetch, failure caching with its doubling lifetime,
//! and one pair member's failure staying that member's. The upstream is a script answering
//! after virtual delays, so every time in these tests is exact.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, Query as Question, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, SOA};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use parking_lot::Mutex;

use nodedns_config::Config;
use nodedns_upstream::{ErrorKind, Resolved, UpstreamError};
use nodedns_wire::{Ingested, OwnedQuery, Parsed, Transport, UpstreamQuestion, ingest, parse_query};

use crate::{CacheResult, Clock, NoEvents, Resolver};

/// What the scripted upstream does with one question.
#[derive(Clone)]
pub(crate) enum Step {
    /// Answers with these addresses (A or AAAA by the question) and this TTL.
    Answer(&'static [&'static str], u32),
    /// NXDOMAIN with the zone SOA (negative TTL `ttl`).
    NxDomain(u32),
    /// Every attempt fails (SERVFAIL from every endpoint).
    ServFail,
    /// Never answered (the pool's budget runs out).
    Hang,
}

/// The scripted upstream: per (name, type) a step and a delay, and a count of questions asked.
#[derive(Default)]
pub(crate) struct Script {
    steps: Mutex<HashMap<(String, u16), (Step, Duration)>>,
    asked: Mutex<HashMap<(String, u16), usize>>,
    total: AtomicUsize,
}

impl Script {
    fn set(&self, name: &str, qtype: RecordType, step: Step, delay: Duration) {
        self.steps.lock().insert((name.to_ascii_lowercase(), u16::from(qtype)), (step, delay));
    }

    fn asked(&self, name: &str, qtype: RecordType) -> usize {
        self.asked.lock().get(&(name.to_ascii_lowercase(), u16::from(qtype))).copied().unwrap_or(0)
    }

    pub(crate) async fn resolve(&self, q: &UpstreamQuestion<'_>, bailiwick: &Name) -> Result<Resolved, UpstreamError> {
        let name = nodedns_wire::name_from_wire(q.name.as_wire()).expect("valid name").to_ascii();
        let key = (name.trim_end_matches('.').to_string(), q.qtype);
        *self.asked.lock().entry(key.clone()).or_default() += 1;
        self.total.fetch_add(1, Relaxed);
        let (step, delay) = self.steps.lock().get(&key).cloned().unwrap_or((Step::NxDomain(30), Duration::ZERO));
        tokio::time::sleep(delay).await;
        let fail = Err(UpstreamError::Failed { last: ErrorKind::Rcode, rcode: Some(2) });
        let response = match step {
            Step::Hang => {
                std::future::pending::<()>().await;
                unreachable!()
            }
            Step::ServFail => return fail,
            Step::Answer(addrs, ttl) => response(q, ResponseCode::NoError, addrs, ttl),
            Step::NxDomain(ttl) => response(q, ResponseCode::NXDomain, &[], ttl),
        };
        match ingest(&response, q, bailiwick) {
            Ok(Ingested::Answer(answer)) => Ok(Resolved { answer, endpoint: "127.0.0.1:9".parse().unwrap() }),
            other => panic!("script response not ingested: {other:?}"),
        }
    }
}

fn response(q: &UpstreamQuestion<'_>, rcode: ResponseCode, addrs: &[&str], ttl: u32) -> Vec<u8> {
    let name = Name::from_ascii(nodedns_wire::name_from_wire(q.name.as_wire()).unwrap().to_ascii()).unwrap();
    let qtype = RecordType::from(q.qtype);
    let mut m = Message::new(0, MessageType::Response, OpCode::Query);
    m.metadata.response_code = rcode;
    m.metadata.recursion_desired = true;
    m.metadata.recursion_available = true;
    m.add_query(Question::query(name.clone(), qtype));
    for a in addrs {
        let rdata = match qtype {
            RecordType::AAAA => RData::AAAA(AAAA(a.parse().unwrap())),
            _ => RData::A(A(a.parse().unwrap())),
        };
        m.add_answer(Record::from_rdata(name.clone(), ttl, rdata));
    }
    if addrs.is_empty() {
        let soa = SOA::new(Name::from_ascii("ns.example.").unwrap(), Name::root(), 1, 7200, 1800, 86400, ttl);
        m.add_authority(Record::from_rdata(Name::from_ascii("example.").unwrap(), ttl, RData::SOA(soa)));
    }
    m.to_vec().unwrap()
}

/// A resolver for "." whose upstream is the script; the cache's minimum TTL is 0 so the
/// scripted TTLs stand.
fn resolver(extra_cache: &str) -> (Arc<Resolver>, Arc<Script>) {
    let yaml = format!(
        "listen: [\"127.0.0.1:5353\"]\ncache:\n  min_ttl_secs: 0\n{extra_cache}zones:\n  - name: \".\"\n    upstreams: [\"127.0.0.1:9\"]\n"
    );
    let config = Config::parse(&yaml, "resolver-test.yaml").expect("valid config");
    let r = Resolver::new(&config, Arc::new(NoEvents), None, Clock::starting_now());
    let script = Arc::new(Script::default());
    for zone in r.zones().iter() {
        let _ = zone.script.set(script.clone());
    }
    (r, script)
}

fn packet(name: &str, qtype: RecordType) -> Vec<u8> {
    let mut m = Message::new(7, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Question::query(Name::from_ascii(name).unwrap(), qtype));
    m.to_vec().unwrap()
}

fn owned(name: &str, qtype: RecordType) -> OwnedQuery {
    let p = packet(name, qtype);
    match parse_query(&p) {
        Parsed::Query(q) => q.detach(),
        _ => panic!("test query does not parse"),
    }
}

/// What a client got: rcode, addresses, and the TTL of the first answer.
#[derive(Debug, PartialEq)]
struct Answer {
    rcode: ResponseCode,
    addrs: Vec<String>,
    ttl: Option<u32>,
}

fn decode(bytes: &[u8]) -> Answer {
    let m = Message::from_vec(bytes).expect("answer decodes");
    let addrs = m.answers.iter().map(|r| r.data.to_string()).collect();
    Answer { rcode: m.metadata.response_code, addrs, ttl: m.answers.first().map(|r| r.ttl) }
}

const UDP: Transport = Transport::Udp { max_len: 1232 };

/// The hit path: `None` on a miss or stale entry; with whether a refresh is due.
fn hit(r: &Resolver, name: &str, qtype: RecordType) -> Option<(Answer, bool)> {
    let p = packet(name, qtype);
    let Parsed::Query(q) = parse_query(&p) else { panic!() };
    let mut out = vec![0u8; 1232];
    let (len, refresh) = r.answer_from_cache(&q, UDP, &mut out, r.now())?;
    Some((decode(&out[..len]), refresh))
}

/// The miss path (waits on virtual time).
async fn miss(r: &Arc<Resolver>, name: &str, qtype: RecordType) -> (Answer, CacheResult) {
    let a = r.answer_miss(&owned(name, qtype), UDP).await.expect("an answer");
    (decode(&a.bytes), a.result)
}

/// Lets `ms` of virtual time pass; every task runs meanwhile (the paused clock jumps only when
/// all of them wait).
async fn advance(ms: u64) {
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

#[tokio::test(start_paused = true)]
async fn a_pair_takes_its_shorter_ttl_counts_down_and_expires_together() {
    let (r, up) = resolver("");
    up.set("pair.example", RecordType::A, Step::Answer(&["192.0.2.1"], 30), Duration::ZERO);
    up.set("pair.example", RecordType::AAAA, Step::Answer(&["2001:db8::1"], 60), Duration::ZERO);
    let (a, result) = miss(&r, "pair.example.", RecordType::A).await;
    assert_eq!((a.rcode, a.ttl, result), (ResponseCode::NoError, Some(30), CacheResult::Miss));
    // One fetch filled both members: the AAAA is a hit without asking upstream.
    let (aaaa, _) = hit(&r, "pair.example.", RecordType::AAAA).expect("AAAA cached with A");
    assert_eq!((aaaa.addrs, aaaa.ttl), (vec!["2001:db8::1".to_string()], Some(30)));
    advance(10_000).await;
    assert_eq!(hit(&r, "pair.example.", RecordType::A).unwrap().0.ttl, Some(20));
    assert_eq!(hit(&r, "pair.example.", RecordType::AAAA).unwrap().0.ttl, Some(20));
    advance(20_000).await;
    assert!(hit(&r, "pair.example.", RecordType::A).is_none(), "A expired at 30 s");
    assert!(hit(&r, "pair.example.", RecordType::AAAA).is_none(), "AAAA expired with it");
    assert_eq!(up.asked("pair.example", RecordType::A), 1);
}

#[tokio::test(start_paused = true)]
async fn stale_data_answers_a_failed_refresh_and_the_refresh_backs_off() {
    let (r, up) = resolver("");
    up.set("stale.example", RecordType::A, Step::Answer(&["192.0.2.2"], 10), Duration::ZERO);
    up.set("stale.example", RecordType::AAAA, Step::Answer(&["2001:db8::2"], 10), Duration::ZERO);
    miss(&r, "stale.example.", RecordType::A).await;
    advance(11_000).await;
    // The upstream now fails: the expired answer is served (RFC 8767), with the stale TTL.
    up.set("stale.example", RecordType::A, Step::ServFail, Duration::ZERO);
    up.set("stale.example", RecordType::AAAA, Step::ServFail, Duration::ZERO);
    let (a, result) = miss(&r, "stale.example.", RecordType::A).await;
    assert_eq!(result, CacheResult::Stale);
    assert_eq!((a.rcode, a.addrs), (ResponseCode::NoError, vec!["192.0.2.2".to_string()]));
    assert_eq!(up.asked("stale.example", RecordType::A), 2);
    // The refresh failed: for the next second, stale data answers without asking again.
    advance(500).await;
    let (_, result) = miss(&r, "stale.example.", RecordType::A).await;
    assert_eq!(result, CacheResult::Stale);
    assert_eq!(up.asked("stale.example", RecordType::A), 2, "refresh retried inside its backoff");
    advance(600).await;
    miss(&r, "stale.example.", RecordType::A).await;
    assert_eq!(up.asked("stale.example", RecordType::A), 3, "refresh retried after its backoff");
}

#[tokio::test(start_paused = true)]
async fn a_popular_entry_is_refreshed_in_its_last_tenth_and_never_misses() {
    let (r, up) = resolver("");
    up.set("pop.example", RecordType::A, Step::Answer(&["192.0.2.3"], 20), Duration::ZERO);
    up.set("pop.example", RecordType::AAAA, Step::Answer(&["2001:db8::3"], 20), Duration::ZERO);
    miss(&r, "pop.example.", RecordType::A).await;
    // Popular: two hits. Before the last tenth (2 s) of its life nothing is due.
    assert!(!hit(&r, "pop.example.", RecordType::A).unwrap().1);
    assert!(!hit(&r, "pop.example.", RecordType::A).unwrap().1);
    advance(17_000).await;
    assert!(!hit(&r, "pop.example.", RecordType::A).unwrap().1, "3 s left: not due yet");
    advance(1_500).await;
    assert!(hit(&r, "pop.example.", RecordType::A).unwrap().1, "1.5 s left: due");
    assert!(!hit(&r, "pop.example.", RecordType::A).unwrap().1, "claimed once");
    r.prefetch(&owned("pop.example.", RecordType::A));
    advance(10).await;
    assert_eq!(up.asked("pop.example", RecordType::A), 2);
    // Past the old expiry the refreshed entry answers: no miss ever happened.
    advance(5_000).await;
    let (a, _) = hit(&r, "pop.example.", RecordType::A).expect("refreshed before expiry");
    assert_eq!(a.ttl, Some(15));
}

#[tokio::test(start_paused = true)]
async fn failures_are_cached_one_second_doubling_and_reset_by_a_success() {
    let (r, up) = resolver("");
    up.set("broken.example", RecordType::A, Step::ServFail, Duration::ZERO);
    up.set("broken.example", RecordType::AAAA, Step::ServFail, Duration::ZERO);
    let asked = || up.asked("broken.example", RecordType::A);
    let (a, _) = miss(&r, "broken.example.", RecordType::A).await;
    assert_eq!(a.rcode, ResponseCode::ServFail);
    // RFC 9520: the failure answers from the cache for 1 s, then 2 s, then 4 s.
    for (lifetime_ms, asked_before) in [(1_000, 1), (2_000, 2), (4_000, 3)] {
        advance(lifetime_ms - 100).await;
        let (cached, _) = hit(&r, "broken.example.", RecordType::A).expect("failure entry answers");
        assert_eq!(cached.rcode, ResponseCode::ServFail);
        assert_eq!(asked(), asked_before, "upstream asked while the failure was cached");
        advance(200).await;
        assert!(hit(&r, "broken.example.", RecordType::A).is_none(), "expired after {lifetime_ms} ms");
        miss(&r, "broken.example.", RecordType::A).await;
        assert_eq!(asked(), asked_before + 1);
    }
    // The name is fixed: the answer replaces the failure, and a later failure starts at 1 s.
    advance(8_000).await;
    up.set("broken.example", RecordType::A, Step::Answer(&["192.0.2.4"], 1), Duration::ZERO);
    up.set("broken.example", RecordType::AAAA, Step::Answer(&["2001:db8::4"], 1), Duration::ZERO);
    let (a, _) = miss(&r, "broken.example.", RecordType::A).await;
    assert_eq!(a.rcode, ResponseCode::NoError);
    advance(1_100).await;
    up.set("broken.example", RecordType::A, Step::ServFail, Duration::ZERO);
    up.set("broken.example", RecordType::AAAA, Step::ServFail, Duration::ZERO);
    miss(&r, "broken.example.", RecordType::A).await;
    let failed_at = asked();
    advance(1_100).await;
    // (Stale data from the success now answers instead; the point is the refresh retry time.)
    miss(&r, "broken.example.", RecordType::A).await;
    assert_eq!(asked(), failed_at + 1, "back to a 1 s backoff after the success");
}

#[tokio::test(start_paused = true)]
async fn an_aaaa_that_is_never_answered_costs_the_a_query_only_the_pair_wait() {
    let (r, up) = resolver("  pair_wait_ms: 300\n");
    up.set("v4only.example", RecordType::A, Step::Answer(&["192.0.2.5"], 60), Duration::from_millis(20));
    up.set("v4only.example", RecordType::AAAA, Step::Hang, Duration::ZERO);
    let started = tokio::time::Instant::now();
    let (a, _) = miss(&r, "v4only.example.", RecordType::A).await;
    assert_eq!((a.rcode, a.addrs), (ResponseCode::NoError, vec!["192.0.2.5".to_string()]));
    // Answered when A came plus the pair wait, never after the AAAA's budget.
    assert_eq!(started.elapsed(), Duration::from_millis(320));
}

#[tokio::test(start_paused = true)]
async fn identical_misses_share_one_upstream_exchange() {
    let (r, up) = resolver("");
    up.set("same.example", RecordType::A, Step::Answer(&["192.0.2.6"], 60), Duration::from_millis(50));
    up.set("same.example", RecordType::AAAA, Step::Answer(&["2001:db8::6"], 60), Duration::from_millis(50));
    let waiters: Vec<_> = (0..100)
        .map(|i| {
            let r = r.clone();
            let qtype = if i % 2 == 0 { RecordType::A } else { RecordType::AAAA };
            tokio::spawn(async move { miss(&r, "same.example.", qtype).await.0.rcode })
        })
        .collect();
    for w in waiters {
        assert_eq!(w.await.unwrap(), ResponseCode::NoError);
    }
    assert_eq!(up.asked("same.example", RecordType::A), 1);
    assert_eq!(up.asked("same.example", RecordType::AAAA), 1);
    assert_eq!(up.total.load(Relaxed), 2);
}
