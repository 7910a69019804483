//! The front door: what every DNS listener does with a message it received, in one place for UDP
//! and TCP — the per-client rate limit, rejections, ANY, cache hits, prefetch, and the metrics,
//! dnstap and query-log records of each. The transports only frame and move bytes:
//! [`FrontDoor::classify`] says whether to answer now, drop, or hand a [`Miss`] to the miss path,
//! and [`FrontDoor::answer_miss`] answers that miss. The miss carries its parsed query and cache
//! key ([`OwnedQuery`]): nothing downstream parses the packet again.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use tokio::sync::mpsc;

use nodedns_cache::Timestamp;
use nodedns_wire::{
    OwnedQuery, Parsed, Query, Rcode, Transport, parse_query, render_any_hinfo, render_rcode, render_rejection,
    response_rcode_label,
};

use nodedns_resolver::Resolver;

use crate::dnstap::Dnstap;
use crate::metrics::{At, CacheResult, Metrics, Proto, ShedReason};
use crate::querylog::QueryLog;
use crate::ratelimit::ClientRateLimit;

/// Prefetches waiting to start. Past it a prefetch is skipped: the entry is then refreshed by
/// the first query after it expires, as without prefetch.
pub const PREFETCH_QUEUE: usize = 1024;

/// The decision for one received message.
pub enum Verdict {
    /// Answer `out[..len]` now. `hit`: it came from the cache (the transport counts hits'
    /// durations: a UDP worker once per batch).
    Answer { len: usize, hit: bool },
    /// Send nothing: bad input beyond an answer, or bad input from a client over its rate.
    Drop,
    /// Not answerable from the cache: for the miss path ([`FrontDoor::answer_miss`]).
    Miss(Miss),
}

/// A query for the miss path, with everything the front door learned about it.
pub struct Miss {
    pub query: OwnedQuery,
    pub peer: SocketAddr,
    /// Listener and zone, for the CoreDNS-compatible series.
    pub at: At,
    pub transport: Transport,
    pub received: Instant,
    /// The listener's address, for dnstap.
    pub local: Option<SocketAddr>,
    pub proto: Proto,
}

/// Where and when a message arrived.
#[derive(Clone, Copy)]
pub struct Arrival {
    pub proto: Proto,
    /// The listener's index for the CoreDNS-compatible `server` label.
    pub listener: u16,
    /// The listener's address (only needed with dnstap on).
    pub local: Option<SocketAddr>,
    /// When it was read (a UDP worker reads the clock once per batch).
    pub received: Instant,
    /// `received` as a cache timestamp.
    pub now: Timestamp,
    /// Wall-clock time for dnstap, read with `received` when dnstap is on.
    pub wall: Option<SystemTime>,
}

/// The front door shared by every listener of the process.
pub struct FrontDoor {
    pub resolver: Arc<Resolver>,
    pub metrics: Arc<Metrics>,
    /// `log.dnstap`: CLIENT_QUERY/CLIENT_RESPONSE of every exchange, when configured.
    pub dnstap: Option<Arc<Dnstap>>,
    pub query_log: Arc<QueryLog>,
    /// `limits.per_client_qps` (shared by UDP and TCP, so a client's budget covers both).
    rate_limit: Option<ClientRateLimit>,
    prefetches: mpsc::Sender<OwnedQuery>,
}

/// The client's address, decoded only when something needs it (the rate limit, a miss, a log
/// record): a UDP hit without them never decodes it.
struct LazyPeer<F> {
    decode: Option<F>,
    known: Option<Option<SocketAddr>>,
}

impl<F: FnOnce() -> Option<SocketAddr>> LazyPeer<F> {
    #[inline]
    fn get(&mut self) -> Option<SocketAddr> {
        if let Some(known) = self.known {
            return known;
        }
        let peer = self.decode.take().and_then(|f| f());
        self.known = Some(peer);
        peer
    }
}

impl FrontDoor {
    /// The front door and the queue of prefetches it asks for (for [`run_prefetches`]).
    pub fn new(
        resolver: Arc<Resolver>,
        metrics: Arc<Metrics>,
        dnstap: Option<Arc<Dnstap>>,
        query_log: Arc<QueryLog>,
        per_client_qps: u32,
    ) -> (Arc<Self>, mpsc::Receiver<OwnedQuery>) {
        let (prefetches, rx) = mpsc::channel(PREFETCH_QUEUE);
        let rate_limit = ClientRateLimit::new(per_client_qps);
        (Arc::new(Self { resolver, metrics, dnstap, query_log, rate_limit, prefetches }), rx)
    }

    /// Decides what to do with `packet`: answers it into `out` when the cache (or a rule) can,
    /// else hands it to the miss path. Allocates nothing unless it is a miss.
    #[inline]
    pub fn classify(
        &self,
        packet: &[u8],
        peer: impl FnOnce() -> Option<SocketAddr>,
        arrival: &Arrival,
        out: &mut [u8],
    ) -> Verdict {
        let resolver = &*self.resolver;
        let m = &*self.metrics;
        let mut peer = LazyPeer { decode: Some(peer), known: None };
        // limits.per_client_qps: over it, queries get REFUSED and bad input no answer at all.
        let over_limit = match &self.rate_limit {
            Some(limit) => peer.get().is_some_and(|p| !limit.allow(p.ip())),
            None => false,
        };
        let query = match parse_query(packet) {
            Parsed::Query(q) => q,
            Parsed::Reject(_) if over_limit => {
                m.shed(ShedReason::RateLimit);
                return Verdict::Drop;
            }
            Parsed::Reject(r) => {
                let len = render_rejection(&r, out);
                m.rejected(At::listener(arrival.listener), &r, len.map(|len| &out[..len]));
                let Some(len) = len else { return Verdict::Drop };
                self.tap(arrival, &mut peer, packet, &out[..len]);
                return Verdict::Answer { len, hit: false };
            }
            Parsed::Drop => {
                m.malformed("unparseable_header");
                return Verdict::Drop;
            }
        };
        let at = m.at(arrival.listener, &query);
        m.request(at, arrival.proto, query.qtype);
        if over_limit {
            m.shed(ShedReason::RateLimit);
            return self.answer_rcode(&query, Rcode::Refused, at, arrival, &mut peer, out);
        }
        let transport = match arrival.proto {
            Proto::Udp => Transport::Udp { max_len: query.max_udp_response(resolver.max_udp_payload()) },
            Proto::Tcp => Transport::Tcp,
        };
        if query.qtype == nodedns_wire::query::TYPE_ANY {
            // RFC 8482: one synthesized HINFO, never a lookup.
            let Some(len) = render_any_hinfo(&query, out) else { return Verdict::Drop };
            m.response(at, "NOERROR");
            self.tap(arrival, &mut peer, packet, &out[..len]);
            return Verdict::Answer { len, hit: false };
        }
        if let Some((len, refresh_due)) = resolver.answer_from_cache(&query, transport, out, arrival.now) {
            let response = &out[..len];
            m.response(at, response_rcode_label(response));
            if m.coredns_compatible() {
                let secs = arrival.received.elapsed().as_secs_f64();
                m.coredns_answered(at, CacheResult::Hit, query.qtype, response, secs);
            }
            if self.query_log.on() {
                let proto = arrival.proto.label();
                self.query_log.sample(peer.get(), proto, &query, response, "hit", std::time::Duration::ZERO);
            }
            if refresh_due {
                // The entry's one refresh claim (RFC 8767's prefetch, popular entries only) is
                // spent here, by whichever transport served the hit: it always starts a refresh.
                let _ = self.prefetches.try_send(query.detach());
            }
            self.tap(arrival, &mut peer, packet, response);
            return Verdict::Answer { len, hit: true };
        }
        let Some(client) = peer.get() else { return Verdict::Drop };
        Verdict::Miss(Miss {
            query: query.detach(),
            peer: client,
            at,
            transport,
            received: arrival.received,
            local: arrival.local,
            proto: arrival.proto,
        })
    }

    /// The answer for a miss that cannot wait for upstream because a bound is reached (the UDP
    /// miss queue is full): stale data if any — serve-stale wins over shedding, so one client's
    /// flood of new names never costs others the names they had — else REFUSED.
    pub fn overflow(&self, miss: &Miss, out: &mut [u8]) -> Option<usize> {
        let resolver = &*self.resolver;
        let m = &*self.metrics;
        m.shed(ShedReason::Inflight);
        let query = miss.query.query();
        let now = resolver.timestamp(miss.received);
        let len = match resolver.answer_stale(&query, miss.transport, out, now) {
            Some(len) => {
                m.response(miss.at, response_rcode_label(&out[..len]));
                m.answered(miss.at, CacheResult::Stale, query.qtype, &out[..len], 0.0);
                len
            }
            None => {
                let len = render_rcode(&query, Rcode::Refused, out)?;
                m.response(miss.at, "REFUSED");
                len
            }
        };
        if let Some(tap) = &self.dnstap {
            let (asked, now) = wall_times(miss.received);
            tap.client(miss.proto, Some(miss.peer), miss.local, miss.query.packet(), Some(&out[..len]), asked, now);
        }
        Some(len)
    }

    /// Answers a miss (waiting for upstream as the miss path decides) and records it. `None`:
    /// nothing to send.
    pub async fn answer_miss(&self, miss: &Miss) -> Option<Vec<u8>> {
        let answer = self.resolver.answer_miss(&miss.query, miss.transport).await;
        if let Some(tap) = &self.dnstap {
            let (asked, now) = wall_times(miss.received);
            let response = answer.as_ref().map(|a| &a.bytes[..]);
            tap.client(miss.proto, Some(miss.peer), miss.local, miss.query.packet(), response, asked, now);
        }
        let answer = answer?;
        let m = &*self.metrics;
        m.response(miss.at, response_rcode_label(&answer.bytes));
        let elapsed = miss.received.elapsed();
        m.answered(miss.at, answer.result, miss.query.qtype(), &answer.bytes, elapsed.as_secs_f64());
        if self.query_log.on() {
            let label = answer.result.label();
            let query = miss.query.query();
            self.query_log.sample(Some(miss.peer), miss.proto.label(), &query, &answer.bytes, label, elapsed);
        }
        Some(answer.bytes)
    }

    /// Counts `n` cache hits answered since `received` (their duration histogram).
    #[inline]
    pub fn hits_answered(&self, n: usize, received: Instant) {
        if n > 0 {
            let secs = received.elapsed().as_secs_f64();
            for _ in 0..n {
                self.metrics.native_answered(CacheResult::Hit, secs);
            }
        }
    }

    /// An rcode-only answer made here.
    fn answer_rcode<F: FnOnce() -> Option<SocketAddr>>(
        &self,
        query: &Query<'_>,
        rcode: Rcode,
        at: At,
        arrival: &Arrival,
        peer: &mut LazyPeer<F>,
        out: &mut [u8],
    ) -> Verdict {
        let Some(len) = render_rcode(query, rcode, out) else { return Verdict::Drop };
        self.metrics.response(at, response_rcode_label(&out[..len]));
        self.tap(arrival, peer, query.packet(), &out[..len]);
        Verdict::Answer { len, hit: false }
    }

    /// dnstap's CLIENT_QUERY/CLIENT_RESPONSE for an answer made here (nothing when dnstap is off).
    #[inline]
    fn tap<F: FnOnce() -> Option<SocketAddr>>(
        &self,
        arrival: &Arrival,
        peer: &mut LazyPeer<F>,
        query: &[u8],
        response: &[u8],
    ) {
        if let Some(tap) = &self.dnstap {
            let wall = arrival.wall.unwrap_or_else(SystemTime::now);
            tap.client(arrival.proto, peer.get(), arrival.local, query, Some(response), wall, wall);
        }
    }
}

/// The wall-clock times of an exchange that began at `received` and ends now.
fn wall_times(received: Instant) -> (SystemTime, SystemTime) {
    let now = SystemTime::now();
    (now.checked_sub(received.elapsed()).unwrap_or(now), now)
}

/// Starts the prefetches the front door queued, until `stop` (or every front door is gone).
pub async fn run_prefetches(
    resolver: Arc<Resolver>,
    mut queued: mpsc::Receiver<OwnedQuery>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            query = queued.recv() => match query {
                Some(query) => resolver.prefetch(&query),
                None => return,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use hickory_proto::op::{Message, ResponseCode};
    use hickory_proto::rr::RecordType;
    use nodedns_testkit::{FakeUpstream, new_query};

    use super::*;

    const CLIENT: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 7)), 5353);

    fn front(up: SocketAddr, qps: u32) -> (Arc<FrontDoor>, mpsc::Receiver<OwnedQuery>) {
        let yaml = format!(
            "listen: [\"127.0.0.1:5353\"]\ncache:\n  min_ttl_secs: 0\nzones:\n  - name: \".\"\n    upstreams: [\"{up}\"]\n"
        );
        let config = crate::config::Config::parse(&yaml, "front-test.yaml").expect("config");
        let metrics = Metrics::new(false);
        let resolver = Resolver::new(&config, metrics.clone(), None, nodedns_resolver::Clock::starting_now());
        FrontDoor::new(resolver, metrics, None, Arc::new(QueryLog::new(0.0)), qps)
    }

    fn arrival(front: &FrontDoor, proto: Proto) -> Arrival {
        let received = Instant::now();
        Arrival { proto, listener: 0, local: None, received, now: front.resolver.timestamp(received), wall: None }
    }

    fn packet(name: &str, rtype: RecordType) -> Vec<u8> {
        new_query(name, rtype).unwrap().to_vec().unwrap()
    }

    /// A query with two questions: malformed (FORMERR).
    fn two_questions() -> Vec<u8> {
        let mut two = new_query("a.example", RecordType::A).unwrap();
        two.add_query(hickory_proto::op::Query::query("b.example.".parse().unwrap(), RecordType::A));
        two.to_vec().unwrap()
    }

    /// Classifies `p` and decodes the answer, if one was made here.
    fn classify(front: &FrontDoor, p: &[u8], proto: Proto) -> (Option<(Message, bool)>, Option<Miss>) {
        let mut out = vec![0u8; 4096];
        match front.classify(p, || Some(CLIENT), &arrival(front, proto), &mut out) {
            Verdict::Answer { len, hit } => (Some((Message::from_vec(&out[..len]).unwrap(), hit)), None),
            Verdict::Drop => (None, None),
            Verdict::Miss(m) => (None, Some(m)),
        }
    }

    #[tokio::test]
    async fn a_miss_carries_its_parsed_query_and_key_and_is_answered_then_hit_on_both_transports() {
        let up = FakeUpstream::start();
        up.answer("a.example", RecordType::A, &["192.0.2.1"], 60);
        let (front, _prefetches) = front(up.addr(), 0);
        let p = packet("A.Example", RecordType::A);
        let (answer, miss) = classify(&front, &p, Proto::Udp);
        assert!(answer.is_none());
        let miss = miss.expect("a miss");
        assert_eq!(miss.peer, CLIENT);
        assert_eq!(miss.query.packet(), &p[..]);
        assert_eq!(miss.query.cache_key().0.name.as_wire(), b"\x01a\x07example\x00");
        let bytes = front.answer_miss(&miss).await.expect("answered");
        assert_eq!(Message::from_vec(&bytes).unwrap().answers.len(), 1);
        for proto in [Proto::Udp, Proto::Tcp] {
            let (answer, miss) = classify(&front, &p, proto);
            let (m, hit) = answer.expect("answered from the cache");
            assert!(hit && miss.is_none());
            assert_eq!(m.answers.len(), 1);
        }
        assert_eq!(up.query_count("a.example.", RecordType::A), 1);
    }

    #[tokio::test]
    async fn rejections_and_any_are_answered_here_and_garbage_is_dropped() {
        let up = FakeUpstream::start();
        let (front, _prefetches) = front(up.addr(), 0);
        // Two questions: FORMERR (RFC 1035), made here.
        let (answer, _) = classify(&front, &two_questions(), Proto::Udp);
        assert_eq!(answer.expect("FORMERR").0.metadata.response_code, ResponseCode::FormErr);
        // ANY: one synthesized HINFO (RFC 8482), never a lookup.
        let (answer, _) = classify(&front, &packet("a.example", RecordType::ANY), Proto::Tcp);
        let (m, hit) = answer.expect("an ANY answer");
        assert!(!hit);
        assert_eq!(m.answers[0].record_type(), RecordType::HINFO);
        // Not even a header: nothing to answer.
        let (answer, miss) = classify(&front, &[0u8; 5], Proto::Udp);
        assert!(answer.is_none() && miss.is_none());
        assert_eq!(up.log().len(), 0, "nothing reached upstream");
    }

    #[tokio::test]
    async fn a_client_over_its_rate_gets_refused_on_udp_and_tcp_alike_and_its_garbage_no_answer() {
        let up = FakeUpstream::start();
        up.answer("a.example", RecordType::A, &["192.0.2.1"], 60);
        let (front, _prefetches) = front(up.addr(), 1);
        let p = packet("a.example", RecordType::A);
        // The first query spends the burst (1 qps); one budget covers both transports.
        assert!(classify(&front, &p, Proto::Udp).1.is_some());
        let (answer, _) = classify(&front, &p, Proto::Tcp);
        assert_eq!(answer.expect("REFUSED").0.metadata.response_code, ResponseCode::Refused);
        let (answer, _) = classify(&front, &p, Proto::Udp);
        assert_eq!(answer.expect("REFUSED").0.metadata.response_code, ResponseCode::Refused);
        let (answer, miss) = classify(&front, &two_questions(), Proto::Udp);
        assert!(answer.is_none() && miss.is_none(), "bad input over the rate gets nothing");
    }

    #[tokio::test]
    async fn a_tcp_hit_due_for_refresh_queues_the_prefetch() {
        let up = FakeUpstream::start();
        up.answer("pop.example", RecordType::A, &["192.0.2.9"], 2);
        let (front, mut prefetches) = front(up.addr(), 0);
        let p = packet("pop.example", RecordType::A);
        let miss = classify(&front, &p, Proto::Tcp).1.expect("a miss");
        front.answer_miss(&miss).await.expect("answered");
        // Popular (two hits), then in the last second of a 2 s life: due, once.
        classify(&front, &p, Proto::Tcp);
        classify(&front, &p, Proto::Tcp);
        assert!(prefetches.try_recv().is_err(), "not due yet");
        tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
        let (answer, _) = classify(&front, &p, Proto::Tcp);
        assert!(answer.expect("still a hit").1);
        let queued = prefetches.try_recv().expect("the TCP hit queued the prefetch its claim stands for");
        assert_eq!(queued.packet(), &p[..]);
        classify(&front, &p, Proto::Tcp);
        assert!(prefetches.try_recv().is_err(), "claimed once");
    }
}
