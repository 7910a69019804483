//! UDP serving: one OS thread per socket (SO_REUSEPORT spreads clients across them), batched
//! syscalls, cache hits answered on the thread without allocating; misses handed to the async
//! runtime, which answers through the same socket.

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tracing::{error, warn};

use nodedns_wire::{
    Parsed, Rcode, Transport, parse_query, render_any_hinfo, render_rcode, render_rejection, response_rcode_label,
};

use super::batch::{BatchIo, SEND_LEN};
use crate::engine::Engine;
use crate::metrics::{CacheResult, Proto, ShedReason};

/// How long a worker blocks in `recvmmsg` before checking for shutdown and beating its heart.
pub const POLL_INTERVAL: Duration = Duration::from_millis(200);

/// A query for the async side: a miss to answer, or a popular entry to refresh.
pub struct MissJob {
    pub packet: Vec<u8>,
    pub peer: SocketAddr,
    pub socket: Arc<UdpSocket>,
    pub received: Instant,
    pub prefetch_only: bool,
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
        // Cache hits of this batch by qtype, for the duration histogram (A, AAAA, other).
        let mut hits = [0usize; 3];
        for i in 0..n {
            let Some((rx, out)) = io.received_and_send_buf(i) else {
                break;
            };
            if let Some(reply) =
                handle_datagram(&engine, &socket, &misses, rx.data, rx.truncated, || rx.peer(), max_udp, out, now)
            {
                io.queue_reply(i, reply.len);
                if let Some(qtype) = reply.cache_hit_qtype {
                    hits[match qtype {
                        1 => 0,
                        28 => 1,
                        _ => 2,
                    }] += 1;
                }
            }
        }
        // Counted before the answers leave, so a client that reads the metrics right after its
        // answer sees its hit. One clock read per batch: each answer's in-server time is at most
        // the batch's.
        if hits.iter().any(|&h| h > 0) {
            let secs = started.elapsed().as_secs_f64();
            for (qtype, count) in [1u16, 28, 0].into_iter().zip(hits) {
                for _ in 0..count {
                    engine.metrics.answered(CacheResult::Hit, qtype, secs);
                }
            }
        }
        if let Err(e) = io.flush() {
            warn!(error = %e, "UDP send failed");
        }
    }
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
    now: nodedns_cache::Timestamp,
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
            engine.metrics.rejected(&r, len.map(|len| &out[..len]));
            return Some(Reply { len: len?, cache_hit_qtype: None });
        }
        Parsed::Drop => {
            engine.metrics.malformed("unparseable_header");
            return None;
        }
    };
    engine.metrics.request(Proto::Udp, query.qtype);
    if over_limit {
        engine.metrics.shed(ShedReason::RateLimit);
        let len = render_rcode(&query, Rcode::Refused, out)?;
        engine.metrics.response("REFUSED");
        return Some(Reply { len, cache_hit_qtype: None });
    }
    let transport = Transport::Udp { max_len: query.max_udp_response(max_udp) };
    if query.qtype == nodedns_wire::query::TYPE_ANY {
        let len = render_any_hinfo(&query, out)?;
        engine.metrics.response("NOERROR");
        return Some(Reply { len, cache_hit_qtype: None });
    }
    if let Some((len, refresh_due)) = engine.answer_from_cache(&query, transport, out, now) {
        engine.metrics.response(response_rcode_label(&out[..len]));
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
            });
        }
        return Some(Reply { len, cache_hit_qtype: Some(query.qtype) });
    }
    let peer = peer()?;
    let job =
        MissJob { packet: data.to_vec(), peer, socket: socket.clone(), received: Instant::now(), prefetch_only: false };
    if misses.try_send(job).is_err() {
        // The miss queue is full: shed rather than queue without bound.
        engine.metrics.shed(ShedReason::Inflight);
        let len = render_rcode(&query, Rcode::Refused, out)?;
        engine.metrics.response("REFUSED");
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
            let Some(answer) = engine.answer_miss(&job.packet, Transport::Udp { max_len }).await else {
                return;
            };
            engine.metrics.response(response_rcode_label(&answer.bytes));
            engine.metrics.answered(answer.result, qtype, job.received.elapsed().as_secs_f64());
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
