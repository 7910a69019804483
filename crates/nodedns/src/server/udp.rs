//! UDP serving: one OS thread per socket (SO_REUSEPORT spreads clients across them), batched
//! syscalls, cache hits answered on the thread without allocating; misses handed to the async
//! runtime, which answers through the same socket.

use std::net::UdpSocket;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::mpsc;
use tracing::{error, warn};

use super::batch::BatchIo;
use super::front::{Arrival, FrontDoor, Miss, Verdict};
use crate::metrics::Proto;

/// How long a worker blocks in `recvmmsg` before checking for shutdown and beating its heart.
pub const POLL_INTERVAL: Duration = Duration::from_millis(200);

/// A miss for the async side, with the socket its answer leaves through.
pub struct MissJob {
    pub miss: Miss,
    pub socket: Arc<UdpSocket>,
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
    front: Arc<FrontDoor>,
    misses: mpsc::Sender<MissJob>,
    control: Arc<WorkerControl>,
) {
    if let Err(e) = socket.set_read_timeout(Some(POLL_INTERVAL)) {
        error!(error = %e, "cannot set UDP receive timeout; worker exits");
        return;
    }
    let resolver = front.resolver.clone();
    let metrics = front.metrics.clone();
    let mut io = BatchIo::new(socket.clone());
    let listener = socket.local_addr().map_or(0, |a| metrics.listener(a));
    // dnstap: the listener's address once, for every CLIENT_* message of this worker.
    let dnstap = front.dnstap.is_some();
    let local = if dnstap { socket.local_addr().ok() } else { None };
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
        // whole milliseconds, and a batch takes microseconds. dnstap's wall clock likewise.
        let started = Instant::now();
        let arrival = Arrival {
            proto: Proto::Udp,
            listener,
            local,
            received: started,
            now: resolver.timestamp(started),
            wall: dnstap.then(SystemTime::now),
        };
        // Cache hits of this batch, for the duration histogram.
        let mut hits = 0usize;
        for i in 0..n {
            let Some((rx, out)) = io.received_and_send_buf(i) else {
                break;
            };
            if rx.truncated {
                // Larger than any query we accept: not worth an answer.
                metrics.malformed("oversized");
                continue;
            }
            let len = match front.classify(rx.data, || rx.peer(), &arrival, &mut out[..]) {
                Verdict::Answer { len, hit } => {
                    hits += hit as usize;
                    len
                }
                Verdict::Drop => continue,
                Verdict::Miss(miss) => {
                    // The queue's bound is `limits.max_inflight` as now in force (reloadable),
                    // not the channel's capacity ([`MISS_QUEUE_CAPACITY`]).
                    let full = misses.max_capacity() - misses.capacity() >= resolver.max_inflight();
                    let refused = if full {
                        Some(miss)
                    } else {
                        match misses.try_send(MissJob { miss, socket: socket.clone() }) {
                            Ok(()) => None,
                            Err(mpsc::error::TrySendError::Full(job) | mpsc::error::TrySendError::Closed(job)) => {
                                Some(job.miss)
                            }
                        }
                    };
                    // The miss queue is full: shed rather than queue without bound.
                    match refused.and_then(|miss| front.overflow(&miss, &mut out[..])) {
                        Some(len) => len,
                        None => continue,
                    }
                }
            };
            io.queue_reply(i, len);
        }
        // Counted before the answers leave, so a client that reads the metrics right after its
        // answer sees its hit. One clock read per batch: each answer's in-server time is at most
        // the batch's.
        front.hits_answered(hits, started);
        if let Err(e) = io.flush() {
            warn!(error = %e, "UDP send failed");
        }
    }
}

/// The capacity of the miss hand-off channel: the largest `limits.max_inflight` config
/// validation accepts, so a reload can raise the limit (the channel allocates blocks only as
/// jobs queue; workers hold the queue to the limit in force).
pub const MISS_QUEUE_CAPACITY: usize = 1_000_000;

/// Answers misses handed over by the UDP workers, each in its own task, until every worker has
/// stopped and every queued or running miss is answered: the drain waits for this to return.
pub async fn run_miss_dispatcher(front: Arc<FrontDoor>, mut jobs: mpsc::Receiver<MissJob>) {
    // Every running miss task holds a clone of `running`: once the queue is closed and drained,
    // `all_done` yields `None` when the last of them has answered (one atomic increment per
    // task, cheaper than a JoinSet on this path).
    let (running, mut all_done) = mpsc::channel::<()>(1);
    while let Some(job) = jobs.recv().await {
        let front = front.clone();
        let running = running.clone();
        tokio::spawn(async move {
            if let Some(bytes) = front.answer_miss(&job.miss).await
                && let Err(e) = job.socket.send_to(&bytes, job.miss.peer)
            {
                warn!(error = %e, peer = %job.miss.peer, "UDP send failed");
            }
            drop(running);
        });
    }
    drop(running);
    let _ = all_done.recv().await;
}
