//! TCP serving: many pipelined queries per connection, answered as they complete
//! (RFC 7766 §6.2.1.1), with bounds on connections (total and per client), queries in flight per
//! connection, and idle / slow-read time (slowloris). At a connection cap the oldest idle
//! connection makes room for the new one (RFC 7766 §6.2.2).

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore, watch};
use tracing::{debug, warn};

use nodedns_wire::MAX_MESSAGE;
use nodedns_wire::framing::{Peer, frame_len};

use super::front::{Arrival, FrontDoor, Verdict};
use crate::config::Limits;
use crate::logging::RateLimitedWarn;
use crate::metrics::{Proto, ShedReason};

/// Connection accounting shared by every TCP listener.
pub struct TcpConnections {
    registry: Mutex<Registry>,
    limits: Limits,
    warn: RateLimitedWarn,
}

/// Every open connection, by client and in accept order. All of it is bounded by
/// `max_tcp_connections`: a client's list holds at most `max_tcp_connections_per_client`
/// entries and disappears with its last connection, so many clients cost one entry per open
/// connection, never more.
#[derive(Default)]
struct Registry {
    /// Open connections, evicted ones excluded.
    total: usize,
    /// Each client's open connections, oldest first: the per-client cap picks its victim here.
    per_client: HashMap<IpAddr, Vec<Arc<ConnState>>>,
    /// Every connection, oldest first, for the global cap. Closed and evicted ones are dropped
    /// from the front as they are met and the rest compacted when they make up half of it, so
    /// it holds at most about twice the open connections.
    all: VecDeque<Arc<ConnState>>,
}

/// At the global cap, how many of the oldest open connections are looked at for an idle one
/// (plus closed ones not yet compacted away): the accept path stays cheap when every old
/// connection is busy (the new one is refused then, as before).
const GLOBAL_VICTIM_SCAN: usize = 64;

/// What the accept path knows of one connection: whether it is idle, and how to close it.
struct ConnState {
    /// The client, to find its list when the connection closes.
    peer: IpAddr,
    /// Frames being read, queries outstanding and answers being written on this connection:
    /// 0 is idle, the only state in which it may be closed for a newer one (RFC 7766 §6.2.2:
    /// a client must expect an idle connection to be closed; an answer it waits for must not
    /// be lost).
    busy: AtomicUsize,
    /// Gone from the registry: closed, or evicted (its slot given to a newer connection).
    gone: AtomicBool,
    /// Wakes the connection's task to close it when evicted.
    close: Notify,
}

/// Marks a connection busy while alive (see [`ConnState::busy`]).
struct Busy(Arc<ConnState>);

impl Busy {
    fn new(state: &Arc<ConnState>) -> Busy {
        state.busy.fetch_add(1, Relaxed);
        Busy(state.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.busy.fetch_sub(1, Relaxed);
    }
}

/// What the accept path decided for a new connection.
enum Admission {
    Admitted { guard: ConnGuard, evicted_idle: bool },
    Refused,
}

impl Registry {
    /// Takes `victim`'s slot away and tells its task to close: it is idle, so nothing is lost.
    /// (A query whose first byte arrives in the instant between the choice and the close is
    /// lost with the connection, as with any server close; the client retries.)
    fn evict(&mut self, victim: &Arc<ConnState>) {
        victim.gone.store(true, Relaxed);
        self.forget(victim);
        victim.close.notify_one();
    }

    /// Removes `conn` from its client's list (the global list is compacted lazily).
    fn forget(&mut self, conn: &Arc<ConnState>) {
        if let Some(list) = self.per_client.get_mut(&conn.peer) {
            if let Some(i) = list.iter().position(|c| Arc::ptr_eq(c, conn)) {
                list.remove(i);
                self.total -= 1;
            }
            if list.is_empty() {
                self.per_client.remove(&conn.peer);
            }
        }
        while self.all.front().is_some_and(|c| c.gone.load(Relaxed)) {
            self.all.pop_front();
        }
        if self.all.len() > 2 * self.total + GLOBAL_VICTIM_SCAN {
            self.all.retain(|c| !c.gone.load(Relaxed));
        }
    }

    /// The oldest idle connection among the oldest [`GLOBAL_VICTIM_SCAN`] open ones.
    fn oldest_idle_anywhere(&self) -> Option<Arc<ConnState>> {
        self.all
            .iter()
            .filter(|c| !c.gone.load(Relaxed))
            .take(GLOBAL_VICTIM_SCAN)
            .find(|c| c.busy.load(Relaxed) == 0)
            .cloned()
    }
}

impl TcpConnections {
    pub fn new(limits: Limits) -> Arc<Self> {
        Arc::new(Self {
            registry: Mutex::new(Registry::default()),
            limits,
            warn: RateLimitedWarn::new(Duration::from_secs(10)),
        })
    }

    pub fn open(&self) -> usize {
        self.registry.lock().total
    }

    /// Admits a connection from `peer`. At a cap, the client's (per-client cap) or anyone's
    /// (global cap) oldest idle connection is closed to make room (RFC 7766 §6.2.2): a client
    /// that keeps many idle connections, or a pool that opened them and lost track, is never
    /// locked out. Only when none of them is idle is the new connection refused.
    fn admit(self: &Arc<Self>, peer: IpAddr) -> Admission {
        let mut reg = self.registry.lock();
        let mine = reg.per_client.get(&peer).map_or(0, Vec::len);
        let victim = if mine >= self.limits.max_tcp_connections_per_client {
            let list = reg.per_client.get(&peer).map(Vec::as_slice).unwrap_or_default();
            match list.iter().find(|c| c.busy.load(Relaxed) == 0) {
                Some(v) => Some(v.clone()),
                None => return Admission::Refused,
            }
        } else if reg.total >= self.limits.max_tcp_connections {
            match reg.oldest_idle_anywhere() {
                Some(v) => Some(v),
                None => return Admission::Refused,
            }
        } else {
            None
        };
        if let Some(v) = &victim {
            reg.evict(v);
        }
        let state =
            Arc::new(ConnState { peer, busy: AtomicUsize::new(0), gone: AtomicBool::new(false), close: Notify::new() });
        reg.per_client.entry(peer).or_default().push(state.clone());
        reg.all.push_back(state.clone());
        reg.total += 1;
        Admission::Admitted { guard: ConnGuard { conns: self.clone(), state }, evicted_idle: victim.is_some() }
    }
}

struct ConnGuard {
    conns: Arc<TcpConnections>,
    state: Arc<ConnState>,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        let mut reg = self.conns.registry.lock();
        // An evicted connection's slot was already given away.
        if !self.state.gone.swap(true, Relaxed) {
            reg.forget(&self.state);
        }
    }
}

/// Accepts connections until `stop` turns true.
pub async fn run_listener(
    listener: TcpListener,
    front: Arc<FrontDoor>,
    conns: Arc<TcpConnections>,
    mut stop: watch::Receiver<bool>,
) {
    let metrics = front.metrics.clone();
    let listener_ix = listener.local_addr().map_or(0, |a| metrics.listener(a));
    loop {
        let accepted = tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            a = listener.accept() => a,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                warn!(error = %e, "TCP accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let guard = match conns.admit(peer.ip()) {
            Admission::Admitted { guard, evicted_idle } => {
                if evicted_idle {
                    metrics.shed(ShedReason::TcpIdleEvicted);
                    debug!(client = %peer.ip(), "closed an idle TCP connection to admit a new one");
                }
                guard
            }
            Admission::Refused => {
                metrics.shed(ShedReason::TcpConnections);
                if conns.warn.allow() {
                    warn!(client = %peer.ip(), "TCP connection refused: connection limit reached, none idle");
                }
                drop(stream);
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let listener = listener_ix;
        let front = front.clone();
        let limits = conns.limits.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            serve_connection(stream, peer, listener, front, limits, stop, &guard.state).await;
            drop(guard);
        });
    }
}

async fn write_frame(writer: &tokio::sync::Mutex<OwnedWriteHalf>, frame: &[u8], timeout: Duration) -> bool {
    let mut w = writer.lock().await;
    // A client that stops reading its answers must not hold the task forever.
    matches!(tokio::time::timeout(timeout, w.write_all(frame)).await, Ok(Ok(())))
}

/// Reads one frame into `buf`, sized to the frame: an idle connection holds no buffer at all, and
/// one that sent a large frame gives the memory back after it (see [`release_if_large`]).
/// The connection is busy from the frame's first byte on (the returned [`Busy`]): a partial
/// frame is a query on its way, and the connection is not closed for a newer one under it.
async fn read_frame(
    read: &mut OwnedReadHalf,
    buf: &mut Vec<u8>,
    timeout: Duration,
    state: &Arc<ConnState>,
) -> Result<(usize, Busy), &'static str> {
    let mut len = [0u8; 2];
    let first = match tokio::time::timeout(timeout, read.read(&mut len)).await {
        Ok(Ok(0)) | Ok(Err(_)) => return Err("closed"),
        Ok(Ok(n)) => n,
        Err(_) => return Err("idle"),
    };
    let busy = Busy::new(state);
    if first < 2 {
        match tokio::time::timeout(timeout, read.read_exact(&mut len[1..])).await {
            Ok(Ok(_)) => {}
            Ok(Err(_)) => return Err("closed"),
            Err(_) => return Err("idle"),
        }
    }
    let len = frame_len(len, Peer::Client).map_err(|e| e.label())?;
    buf.clear();
    buf.resize(len, 0);
    // The body must follow within the idle timeout too: a frame that announces more than the
    // client sends (or sends one byte a minute) is closed, not waited on (slowloris).
    match tokio::time::timeout(timeout, read.read_exact(&mut buf[..len])).await {
        Ok(Ok(_)) => Ok((len, busy)),
        Ok(Err(_)) => Err("short_frame"),
        Err(_) => Err("slow_frame"),
    }
}

/// Per-connection buffers keep at most this much between frames: thousands of open connections
/// must cost kilobytes each, not a 64 KiB message buffer each (whatever the allocator touches).
const KEPT_BUFFER: usize = 4096;

fn release_if_large(buf: &mut Vec<u8>) {
    if buf.capacity() > KEPT_BUFFER {
        *buf = Vec::new();
    }
}

thread_local! {
    /// Render scratch for answers made on the connection's task (hits, rejections): rendering is
    /// synchronous, so one full-size buffer per runtime thread serves every connection.
    static RENDER: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0u8; MAX_MESSAGE]);
}

/// Classifies with `classify` into the thread's scratch and, for an answer, copies it,
/// length-prefixed, into `frame` (which keeps its capacity: no allocation per answer once a
/// connection has answered).
fn render_frame(frame: &mut Vec<u8>, classify: impl FnOnce(&mut [u8]) -> Verdict) -> Verdict {
    RENDER.with(|scratch| {
        let mut scratch = scratch.borrow_mut();
        let verdict = classify(&mut scratch[..]);
        if let Verdict::Answer { len, .. } = verdict {
            frame.clear();
            frame.extend_from_slice(&(len as u16).to_be_bytes());
            frame.extend_from_slice(&scratch[..len]);
        }
        verdict
    })
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    listener: u16,
    front: Arc<FrontDoor>,
    limits: Limits,
    mut stop: watch::Receiver<bool>,
    state: &Arc<ConnState>,
) {
    let metrics = front.metrics.clone();
    // dnstap: the listener's address for this connection's CLIENT_* messages (only when on).
    let local = front.dnstap.as_ref().and_then(|_| stream.local_addr().ok());
    let (mut read, write) = stream.into_split();
    let writer = Arc::new(tokio::sync::Mutex::new(write));
    let pipeline = Arc::new(Semaphore::new(limits.max_pipelined_per_connection));
    let mut inbuf = Vec::new();
    let mut outbuf = Vec::new();
    loop {
        release_if_large(&mut inbuf);
        release_if_large(&mut outbuf);
        // `_busy` lives until this frame is answered, or handed to its miss task.
        let (n, _busy) = tokio::select! {
            biased;
            _ = stop.wait_for(|s| *s) => {
                // Draining: this connection is read no more (answers in flight still go out);
                // its client reconnects to the successor.
                metrics.shed(ShedReason::Draining);
                break;
            }
            _ = state.close.notified() => {
                debug!(client = %peer, "closing idle TCP connection: the client opened a newer one at the cap");
                break;
            }
            r = read_frame(&mut read, &mut inbuf, limits.tcp_idle_timeout, state) => match r {
                Ok(r) => r,
                Err(reason) => {
                    if reason != "closed" && reason != "idle" {
                        metrics.malformed(reason);
                    }
                    debug!(client = %peer, reason, "closing TCP connection");
                    break;
                }
            },
        };
        let packet = &inbuf[..n];
        let received = Instant::now();
        let arrival = Arrival {
            proto: Proto::Tcp,
            listener,
            local,
            received,
            now: front.resolver.timestamp(received),
            wall: None,
        };
        let verdict = render_frame(&mut outbuf, |out| front.classify(packet, || Some(peer), &arrival, out));
        let miss = match verdict {
            Verdict::Answer { hit, .. } => {
                front.hits_answered(hit as usize, received);
                if !write_frame(&writer, &outbuf, limits.tcp_idle_timeout).await {
                    break;
                }
                continue;
            }
            Verdict::Drop => continue,
            Verdict::Miss(miss) => miss,
        };
        // A miss: answered when it completes, out of order. Reading pauses while the
        // connection has its maximum of queries in flight (backpressure, not buffering).
        let permit = match pipeline.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                metrics.shed(ShedReason::TcpPipeline);
                match pipeline.clone().acquire_owned().await {
                    Ok(p) => p,
                    Err(_) => break,
                }
            }
        };
        let outstanding = Busy::new(state);
        let front = front.clone();
        let writer = writer.clone();
        let timeout = limits.tcp_idle_timeout;
        tokio::spawn(async move {
            if let Some(answer) = front.answer_miss(&miss).await {
                let mut frame = Vec::with_capacity(answer.len() + 2);
                frame.extend_from_slice(&(answer.len() as u16).to_be_bytes());
                frame.extend_from_slice(&answer);
                write_frame(&writer, &frame, timeout).await;
            }
            drop(permit);
            drop(outstanding);
        });
    }
    // Answers still in flight hold the writer; the socket closes when the last one is sent.
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conns(total: usize, per_client: usize) -> Arc<TcpConnections> {
        TcpConnections::new(Limits {
            max_inflight: 10,
            max_tcp_connections: total,
            max_tcp_connections_per_client: per_client,
            max_pipelined_per_connection: 8,
            tcp_idle_timeout: Duration::from_secs(10),
            max_udp_payload: 1232,
            per_client_qps: 0,
            max_upstream_inflight: 1000,
            upstream_queue_wait: Duration::from_millis(100),
        })
    }

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, n])
    }

    fn admitted(a: Admission) -> (ConnGuard, bool) {
        match a {
            Admission::Admitted { guard, evicted_idle } => (guard, evicted_idle),
            Admission::Refused => panic!("refused"),
        }
    }

    #[test]
    fn per_client_cap_evicts_that_clients_oldest_idle_and_refuses_when_all_are_busy() {
        let c = conns(100, 3);
        let held: Vec<_> = (0..3).map(|_| admitted(c.admit(ip(1))).0).collect();
        let other = admitted(c.admit(ip(2))).0;
        let _busy = Busy::new(&held[0].state);
        let (newer, evicted) = admitted(c.admit(ip(1)));
        assert!(evicted);
        assert!(held[1].state.gone.load(Relaxed), "the oldest idle one, not the busy older one");
        assert!(!held[0].state.gone.load(Relaxed) && !held[2].state.gone.load(Relaxed));
        assert!(!other.state.gone.load(Relaxed), "other clients are never touched");
        assert_eq!(c.open(), 4);
        // The evicted connection's task ends later: its guard must not free a second slot.
        drop(held);
        assert_eq!(c.open(), 2);
        let _b = Busy::new(&newer.state);
        let again: Vec<_> = (0..2).map(|_| admitted(c.admit(ip(1))).0).collect();
        let _all_busy: Vec<_> = again.iter().map(|g| Busy::new(&g.state)).collect();
        assert!(matches!(c.admit(ip(1)), Admission::Refused), "every connection busy");
        assert_eq!(c.open(), 4);
    }

    #[test]
    fn global_cap_evicts_the_oldest_idle_connection_of_anyone() {
        let c = conns(3, 10);
        let a = admitted(c.admit(ip(1))).0;
        let b = admitted(c.admit(ip(2))).0;
        let _c = admitted(c.admit(ip(3))).0;
        let _busy = Busy::new(&a.state);
        let (_d, evicted) = admitted(c.admit(ip(4)));
        assert!(evicted && b.state.gone.load(Relaxed) && !a.state.gone.load(Relaxed));
        assert_eq!(c.open(), 3);
    }

    #[test]
    fn bookkeeping_stays_bounded_under_churn_behind_a_long_lived_connection() {
        let c = conns(1000, 1000);
        let _long_lived = admitted(c.admit(ip(1))).0;
        for i in 0..100_000u32 {
            let g = admitted(c.admit(ip((i % 200) as u8 + 2))).0;
            drop(g);
        }
        let reg = c.registry.lock();
        assert_eq!(reg.total, 1);
        assert_eq!(reg.per_client.len(), 1, "a client's entry leaves with its last connection");
        assert!(reg.all.len() <= 2 + GLOBAL_VICTIM_SCAN, "global list: {} entries", reg.all.len());
    }

    #[tokio::test]
    async fn connections_closed_by_drain_are_counted_as_shed() {
        let config = crate::config::Config::parse(
            "listen: [\"127.0.0.1:5353\"]\nzones:\n  - name: \".\"\n    upstreams: [\"127.0.0.1:9\"]\n",
            "test.yaml",
        )
        .expect("config");
        let metrics = crate::metrics::Metrics::new(false);
        let clock = nodedns_resolver::Clock::starting_now();
        let resolver = nodedns_resolver::Resolver::new(&config, metrics.clone(), None, clock);
        let query_log = Arc::new(crate::querylog::QueryLog::new(0.0));
        let (front, _prefetches) = FrontDoor::new(resolver, metrics.clone(), None, query_log, 0);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let conns = TcpConnections::new(config.limits.clone());
        let (stop_tx, stop_rx) = watch::channel(false);
        tokio::spawn(run_listener(listener, front, conns.clone(), stop_rx));
        let mut client = TcpStream::connect(addr).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while conns.open() == 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(conns.open(), 1);
        let draining = "nodedns_shed_total{reason=\"draining\"}";
        assert!(metrics.render().contains(&format!("{draining} 0")));
        stop_tx.send(true).unwrap();
        // The server closes the connection: the client reads end of stream.
        let mut buf = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(5), client.read(&mut buf)).await;
        assert!(matches!(read, Ok(Ok(0))), "connection not closed by drain: {read:?}");
        assert!(metrics.render().contains(&format!("{draining} 1")), "{}", metrics.render());
    }
}
