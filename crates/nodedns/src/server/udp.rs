//! UDP serving: one OS thread per socket (SO_REUSEPORT spreads clients across them), batched
//! syscalls, cache hits answered on the thread without allocating; misses handed to the async
//! runtime, which answers through the same socket.

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::mpsc;
use tracing::{error, warn};

use nodedns_wire::{
    Parsed, Rcode, Transport, parse_query, render_any_hinfo, render_rcode, render_rejection, response_rcode_label,
};

use super::batch::{BatchIo, SEND_LEN};
use crate::engine::Engine;
use crate::metrics::{At, CacheResult, Proto, ShedReason};

/// How long a worker blocks in `recvmmsg` before checking for shutdown and beating its heart.
pub const POLL_INTERVAL: Duration = Duration::from_millis(200);

/// A query for the async side: a miss to answer, or a popular entry to refresh.
pub struct MissJob {
    pub packet: Vec<u8>,
    pub peer: SocketAddr,
    pub socket: Arc<UdpSocket>,
    pub received: Instant,
    pub prefetch_only: bool,
    /// Listener and zone, for the CoreDNS-compatible series.
    pub at: At,
}

/// Shared controls of the UDP workers.
pub struct WorkerControl {
    /// Stop reading (drain: a successor now owns the sockets, or shutdown).
    pub stop: AtomicBool,
    /// Test hook: milliseconds-since-start until which workers stall (to prove /health fails).
    pub stall_until_ms: AtomicU64,
    pub epoch: Instant,
    /// Per worker: milliseconds since `epoch` at its last loop iteration.
    pub heartbeats: Vec<AtomicU64>,
}

impl WorkerControl {
    pub fn new(workers: usize) -> Arc<Self> {
        Arc::new(Self {
            stop: AtomicBool::new(false),
            stall_until_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            heartbeats: (0..workers).map(|_| AtomicU64::new(0)).collect(),
        })
    }

    pub fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// The oldest heartbeat's age.
    pub fn max_heartbeat_age(&self) -> Duration {
        let now = self.now_ms();
        let oldest = self.heartbeats.iter().map(|h| h.load(Relaxed)).min().unwrap_or(now);
        Duration::from_millis(now.saturating_sub(oldest))
    }
}

/// Runs one UDP worker until `control.stop` is set.
pub fn run_worker(
    index: usize,
    socket: Arc<UdpSocket>,
    engine: Arc<Engine>,
    misses: mpsc::Sender<MissJob>,
    control: Arc<WorkerControl>,
) {
    if let Err(e) = socket.set_read_timeout(Some(POLL_INTERVAL)) {
        error!(error = %e, "cannot set UDP receive timeout; worker exits");
        return;
    }
    let mut io = BatchIo::new(socket.as_raw_fd());
    let max_udp = engine.max_udp_payload;
    let listener = socket.local_addr().map_or(0, |a| engine.metrics.listener(a));
    // dnstap: the listener's address once, for every CLIENT_* message of this worker.
    let dnstap = engine.dnstap.as_deref();
    let local = dnstap.and_then(|_| socket.local_addr().ok());
    while !control.stop.load(Relaxed) {
        control.heartbeats[index].store(control.now_ms(), Relaxed);
        let stall = control.stall_until_ms.load(Relaxed);
        if stall > control.now_ms() {
            std::thread::sleep(Duration::from_millis(50));
            continue;
        }
        let n = match io.recv() {
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut | std::io::ErrorKind::Interrupted
                ) =>
            {
                continue;
            }
            Err(e) => {
                warn!(error = %e, "UDP receive failed");
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        // One clock read for the batch, for expiry and the duration histogram: entries expire on
        // whole milliseconds, and a batch takes microseconds.
        let started = Instant::now();
        let now = engine.timestamp(started);
        // dnstap's wall-clock time, read once per batch like `started` (and only when on).
        let wall = dnstap.map(|_| SystemTime::now());
        // Cache hits of this batch, for the duration histogram.
        let mut hits = 0usize;
        for i in 0..n {
            let Some((rx, out)) = io.received_and_send_buf(i) else {
                break;
            };
            let from = Received { listener, at: started, now };
            if let Some(reply) =
                handle_datagram(&engine, &socket, &misses, rx.data, rx.truncated, || rx.peer(), max_udp, out, from)
            {
                if let (Some(tap), Some(wall)) = (dnstap, wall) {
                    tap.client(Proto::Udp, rx.peer(), local, rx.data, Some(&out[..reply.len]), wall, wall);
                }
                io.queue_reply(i, reply.len);
                hits += reply.cache_hit_qtype.is_some() as usize;
            }
        }
        // Counted before the answers leave, so a client that reads the metrics right after its
        // answer sees its hit. One clock read per batch: each answer's in-server time is at most
        // the batch's.
        if hits > 0 {
            let secs = started.elapsed().as_secs_f64();
            for _ in 0..hits {
                engine.metrics.native_answered(CacheResult::Hit, secs);
            }
        }
        if let Err(e) = io.flush() {
            warn!(error = %e, "UDP send failed");
        }
    }
}

/// Where and when a batch was received.
#[derive(Clone, Copy)]
struct Received {
    listener: u16,
    /// When `recvmmsg` returned.
    at: Instant,
    /// `at` as a cache timestamp.
    now: nodedns_cache::Timestamp,
}

/// An answer written by the worker itself.
struct Reply {
    len: usize,
    /// Set when the answer came from the cache.
    cache_hit_qtype: Option<u16>,
}

/// Handles one datagram. Returns the answer written to `out`, or `None` when there is none
/// (dropped, or handed to the miss path).
#[allow(clippy::too_many_arguments)]
fn handle_datagram(
    engine: &Arc<Engine>,
    socket: &Arc<UdpSocket>,
    misses: &mpsc::Sender<MissJob>,
    data: &[u8],
    truncated: bool,
    peer: impl FnOnce() -> Option<SocketAddr>,
    max_udp: u16,
    out: &mut [u8; SEND_LEN],
    from: Received,
) -> Option<Reply> {
    if truncated {
        // Larger than any query we accept: not worth an answer.
        engine.metrics.malformed("oversized");
        return None;
    }
    // limits.per_client_qps: over it, queries get REFUSED and bad input no answer at all.
    let (over_limit, peer) = crate::ratelimit::check_lazy_peer(peer);
    let query = match parse_query(data) {
        Parsed::Query(q) => q,
        Parsed::Reject(_) if over_limit => {
            engine.metrics.shed(ShedReason::RateLimit);
            return None;
        }
        Parsed::Reject(r) => {
            let len = render_rejection(&r, out);
            engine.metrics.rejected(At::listener(from.listener), &r, len.map(|len| &out[..len]));
            return Some(Reply { len: len?, cache_hit_qtype: None });
        }
        Parsed::Drop => {
            engine.metrics.malformed("unparseable_header");
            return None;
        }
    };
    let at = engine.metrics.at(from.listener, &query);
    engine.metrics.request(at, Proto::Udp, query.qtype);
    if over_limit {
        engine.metrics.shed(ShedReason::RateLimit);
        let len = render_rcode(&query, Rcode::Refused, out)?;
        engine.metrics.response(at, "REFUSED");
        return Some(Reply { len, cache_hit_qtype: None });
    }
    let transport = Transport::Udp { max_len: query.max_udp_response(max_udp) };
    if query.qtype == nodedns_wire::query::TYPE_ANY {
        let len = render_any_hinfo(&query, out)?;
        engine.metrics.response(at, "NOERROR");
        return Some(Reply { len, cache_hit_qtype: None });
    }
    if let Some((len, refresh_due)) = engine.answer_from_cache(&query, transport, out, from.now) {
        engine.metrics.response(at, response_rcode_label(&out[..len]));
        if engine.metrics.coredns_compatible() {
            let secs = from.at.elapsed().as_secs_f64();
            engine.metrics.coredns_answered(at, CacheResult::Hit, query.qtype, &out[..len], secs);
        }
        let client = if refresh_due || engine.query_log_on() { peer() } else { None };
        if engine.query_log_on() {
            engine.sample_query_log(client, "udp", &query, &out[..len], "hit", Duration::ZERO);
        }
        if refresh_due && let Some(peer) = client {
            let _ = misses.try_send(MissJob {
                packet: data.to_vec(),
                peer,
                socket: socket.clone(),
                received: Instant::now(),
                prefetch_only: true,
                at,
            });
        }
        return Some(Reply { len, cache_hit_qtype: Some(query.qtype) });
    }
    let peer = peer()?;
    let job = MissJob {
        packet: data.to_vec(),
        peer,
        socket: socket.clone(),
        received: Instant::now(),
        prefetch_only: false,
        at,
    };
    if misses.try_send(job).is_err() {
        // The miss queue is full: shed rather than queue without bound — but stale data still
        // answers (serve-stale wins over shedding), only a query with nothing cached is refused.
        engine.metrics.shed(ShedReason::Inflight);
        if let Some(len) = engine.answer_stale(&query, transport, out, from.now) {
            engine.metrics.response(at, response_rcode_label(&out[..len]));
            engine.metrics.answered(at, CacheResult::Stale, query.qtype, &out[..len], 0.0);
            return Some(Reply { len, cache_hit_qtype: None });
        }
        let len = render_rcode(&query, Rcode::Refused, out)?;
        engine.metrics.response(at, "REFUSED");
        return Some(Reply { len, cache_hit_qtype: None });
    }
    None
}

/// Answers misses handed over by the UDP workers, each in its own task.
pub async fn run_miss_dispatcher(engine: Arc<Engine>, mut jobs: mpsc::Receiver<MissJob>) {
    while let Some(job) = jobs.recv().await {
        let engine = engine.clone();
        tokio::spawn(async move {
            if job.prefetch_only {
                engine.prefetch(&job.packet);
                return;
            }
            let (max_len, qtype) = match parse_query(&job.packet) {
                Parsed::Query(q) => (q.max_udp_response(engine.max_udp_payload), q.qtype),
                // The worker parsed it already; this cannot happen, but must not panic.
                _ => return,
            };
            let answer = engine.answer_miss(&job.packet, Transport::Udp { max_len }).await;
            if let Some(tap) = &engine.dnstap {
                let now = SystemTime::now();
                let asked = now.checked_sub(job.received.elapsed()).unwrap_or(now);
                let local = job.socket.local_addr().ok();
                let response = answer.as_ref().map(|a| &a.bytes[..]);
                tap.client(Proto::Udp, Some(job.peer), local, &job.packet, response, asked, now);
            }
            let Some(answer) = answer else {
                return;
            };
            engine.metrics.response(job.at, response_rcode_label(&answer.bytes));
            let secs = job.received.elapsed().as_secs_f64();
            engine.metrics.answered(job.at, answer.result, qtype, &answer.bytes, secs);
            if engine.query_log_on()
                && let Parsed::Query(q) = parse_query(&job.packet)
            {
                let result = answer.result.label();
                engine.sample_query_log(Some(job.peer), "udp", &q, &answer.bytes, result, job.received.elapsed());
            }
            if let Err(e) = job.socket.send_to(&answer.bytes, job.peer) {
                warn!(error = %e, peer = %job.peer, "UDP send failed");
            }
        });
    }
}
