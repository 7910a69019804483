//! Persistent, pipelined TCP connections to one endpoint (RFC 7766 §6.2.1.1).
//!
//! Each connection carries many outstanding queries at once. Responses are matched by ID *and*
//! question and may arrive in any order. A connection that closes fails its outstanding queries
//! with [`ErrorKind::Closed`], and the pool retries them on a new connection.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use nodedns_wire::framing::{Peer, frame_len};
use nodedns_wire::{UpstreamQuestion, answers_question, build_query};

use crate::OwnedQuestion;
use crate::endpoint::{Endpoint, ErrorKind};

/// Read buffer of one upstream connection.
const READ_BUFFER: usize = 32 * 1024;

struct Pending {
    question: OwnedQuestion,
    reply: oneshot::Sender<Vec<u8>>,
}

/// One pipelined TCP connection.
pub(crate) struct TcpConn {
    frames: mpsc::Sender<Vec<u8>>,
    pending: Mutex<HashMap<u16, Pending>>,
    closed: AtomicBool,
    /// Wakes the writer task when the connection closes (it holds a sender of `frames` itself
    /// through `conn`, so the channel alone would never end it).
    shutdown: tokio::sync::Notify,
    max_pending: usize,
}

impl TcpConn {
    async fn connect(endpoint: &Arc<Endpoint>, timeout: Duration, max_pending: usize) -> Result<Arc<Self>, ErrorKind> {
        let stream = match tokio::time::timeout(timeout, TcpStream::connect(endpoint.addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(_)) => return Err(ErrorKind::Connect),
            Err(_) => return Err(ErrorKind::Connect),
        };
        let _ = stream.set_nodelay(true);
        let (read, write) = stream.into_split();
        // Bounded so a stalled upstream pushes back on callers instead of buffering without limit.
        let (frames, rx) = mpsc::channel(1024);
        let conn = Arc::new(TcpConn {
            frames,
            pending: Mutex::new(HashMap::new()),
            closed: AtomicBool::new(false),
            shutdown: tokio::sync::Notify::new(),
            max_pending,
        });
        endpoint.stats.open_connections.fetch_add(1, Relaxed);
        endpoint.stats.connections_opened.fetch_add(1, Relaxed);
        tokio::spawn(write_loop(write, rx, conn.clone()));
        tokio::spawn(read_loop(read, conn.clone(), endpoint.clone()));
        Ok(conn)
    }

    fn is_usable(&self) -> bool {
        !self.closed.load(Relaxed) && !self.frames.is_closed()
    }

    fn pending_len(&self) -> usize {
        self.pending.lock().len()
    }

    fn close(&self) {
        self.closed.store(true, Relaxed);
        self.shutdown.notify_one();
        // Dropping the senders fails every outstanding exchange with `Closed`.
        self.pending.lock().clear();
    }

    /// Sends one query and waits for its response, at most `timeout`. `on_sent` sees the query's
    /// wire bytes as they go out (the pool's observer, for dnstap).
    pub(crate) async fn exchange(
        &self,
        q: &UpstreamQuestion<'_>,
        timeout: Duration,
        on_sent: &(dyn Fn(&[u8]) + Sync),
    ) -> Result<Vec<u8>, ErrorKind> {
        if !self.is_usable() {
            return Err(ErrorKind::Closed);
        }
        let (tx, rx) = oneshot::channel();
        let id = {
            let mut pending = self.pending.lock();
            if pending.len() >= self.max_pending {
                return Err(ErrorKind::Overloaded);
            }
            // IDs are random so an off-path attacker cannot predict them (RFC 5452 §9.2).
            let mut id = rand::random::<u16>();
            while pending.contains_key(&id) {
                id = id.wrapping_add(rand::random::<u16>() | 1);
            }
            pending.insert(id, Pending { question: OwnedQuestion::from(q), reply: tx });
            id
        };
        let frame = tcp_frame(id, q);
        on_sent(&frame[2..]);
        let deadline = Instant::now() + timeout;
        let sent = tokio::time::timeout_at(deadline, self.frames.send(frame)).await;
        let result = match sent {
            Ok(Ok(())) => match tokio::time::timeout_at(deadline, rx).await {
                Ok(Ok(resp)) => Ok(resp),
                Ok(Err(_)) => Err(ErrorKind::Closed),
                Err(_) => Err(ErrorKind::Timeout),
            },
            Ok(Err(_)) => Err(ErrorKind::Closed),
            Err(_) => Err(ErrorKind::Timeout),
        };
        if result.is_err() {
            self.pending.lock().remove(&id);
        }
        result
    }
}

/// The query as one length-prefixed TCP frame, in a single allocation.
fn tcp_frame(id: u16, q: &UpstreamQuestion<'_>) -> Vec<u8> {
    let mut body = Vec::with_capacity(2 + 32 + q.name.as_wire().len());
    build_query(id, q, &mut body);
    let len = (body.len() as u16).to_be_bytes();
    body.splice(0..0, len);
    body
}

async fn write_loop(write: OwnedWriteHalf, mut rx: mpsc::Receiver<Vec<u8>>, conn: Arc<TcpConn>) {
    let mut out = BufWriter::with_capacity(16 * 1024, write);
    loop {
        let frame = tokio::select! {
            biased;
            _ = conn.shutdown.notified() => break,
            frame = rx.recv() => match frame {
                Some(f) => f,
                None => break,
            },
        };
        if out.write_all(&frame).await.is_err() {
            break;
        }
        // Let the queries that are ready to run enqueue their frames before this one leaves:
        // woken by the first frame, this task would otherwise run right after its sender and
        // send one or two frames per syscall (measured: 2 frames per send at 12k misses/s). A
        // loopback TCP send costs several microseconds, about as much as the rest of a miss.
        tokio::task::yield_now().await;
        // Coalesce whatever else is queued into the same segment(s), then flush.
        while let Ok(frame) = rx.try_recv() {
            if out.write_all(&frame).await.is_err() {
                conn.close();
                return;
            }
        }
        if out.flush().await.is_err() {
            break;
        }
    }
    conn.close();
}

async fn read_loop(read: OwnedReadHalf, conn: Arc<TcpConn>, endpoint: Arc<Endpoint>) {
    // Responses to pipelined queries arrive back to back: one read takes many of them, instead
    // of two reads (length, then body) per response.
    let mut read = BufReader::with_capacity(READ_BUFFER, read);
    let mut len_buf = [0u8; 2];
    loop {
        if read.read_exact(&mut len_buf).await.is_err() {
            break;
        }
        let Ok(len) = frame_len(len_buf, Peer::Upstream) else {
            // A frame too short to be a DNS message: the stream cannot be trusted any more.
            endpoint.stats.count_error(ErrorKind::Malformed);
            break;
        };
        let mut resp = vec![0u8; len];
        if read.read_exact(&mut resp).await.is_err() {
            break;
        }
        let id = u16::from_be_bytes([resp[0], resp[1]]);
        let mut pending = conn.pending.lock();
        let matched = match pending.get(&id) {
            Some(p) => answers_question(&resp, &p.question.as_question()),
            None => false,
        };
        if matched {
            if let Some(p) = pending.remove(&id) {
                let _ = p.reply.send(resp);
            }
        } else {
            // Unknown ID or wrong question: never delivered. The real answer may still come.
            endpoint.stats.count_error(ErrorKind::Mismatch);
        }
    }
    conn.close();
    endpoint.stats.open_connections.fetch_sub(1, Relaxed);
}

/// A fixed number of connection slots to one endpoint, connected lazily and re-opened with
/// backoff after failures.
pub(crate) struct TcpPool {
    /// Every slot the pool may ever use ([`MAX_SLOTS`], or the size asked at construction if
    /// larger); only the first `active` are used. Allocated up front so a reload can resize the
    /// pool without swapping the slot array under queries that hold a slot's lock.
    slots: Arc<[tokio::sync::Mutex<Slot>]>,
    /// How many slots are in use (`tcp_connections`), changed by [`TcpPool::resize`]; shared
    /// with the task that retires the connections of slots a shrink took out of use.
    active: Arc<AtomicUsize>,
    next: AtomicUsize,
    connect_timeout: Duration,
    max_pending: usize,
}

#[derive(Default)]
struct Slot {
    conn: Option<Arc<TcpConn>>,
    failures: u32,
    retry_after: Option<Instant>,
}

/// The most connections a pool can be resized to without being rebuilt: the ceiling config
/// validation puts on `tcp_connections`.
pub(crate) const MAX_SLOTS: usize = 64;

const MIN_RECONNECT_BACKOFF: Duration = Duration::from_millis(50);
const MAX_RECONNECT_BACKOFF: Duration = Duration::from_secs(5);

impl TcpPool {
    pub(crate) fn new(size: usize, connect_timeout: Duration, max_pending: usize) -> Self {
        let size = size.max(1);
        Self {
            slots: (0..size.max(MAX_SLOTS)).map(|_| tokio::sync::Mutex::new(Slot::default())).collect(),
            active: Arc::new(AtomicUsize::new(size)),
            next: AtomicUsize::new(0),
            connect_timeout,
            max_pending,
        }
    }

    /// A usable connection: the least loaded of the open ones, opening a new one in an empty
    /// slot only when every open connection already has queries outstanding.
    pub(crate) async fn conn(&self, endpoint: &Arc<Endpoint>) -> Result<Arc<TcpConn>, ErrorKind> {
        let start = self.next.fetch_add(1, Relaxed);
        let n = self.size();
        let mut best: Option<Arc<TcpConn>> = None;
        let mut empty_slot = None;
        for i in 0..n {
            let idx = (start + i) % n;
            let slot = self.slots[idx].lock().await;
            match &slot.conn {
                Some(c) if c.is_usable() => {
                    if best.as_ref().is_none_or(|b| c.pending_len() < b.pending_len()) {
                        best = Some(c.clone());
                    }
                }
                _ => {
                    empty_slot.get_or_insert(idx);
                }
            }
        }
        if let Some(b) = &best
            && (b.pending_len() == 0 || empty_slot.is_none())
        {
            return Ok(b.clone());
        }
        let Some(idx) = empty_slot else {
            return best.ok_or(ErrorKind::Connect);
        };
        let mut slot = self.slots[idx].lock().await;
        if let Some(c) = &slot.conn
            && c.is_usable()
        {
            return Ok(c.clone());
        }
        if let Some(after) = slot.retry_after
            && Instant::now() < after
        {
            return best.ok_or(ErrorKind::Connect);
        }
        match TcpConn::connect(endpoint, self.connect_timeout, self.max_pending).await {
            // A shrink took this slot out of use while it was connecting (its retiring task may
            // already have passed it): serve this query, then close.
            Ok(c) if idx >= self.size() => {
                retire(c.clone(), self.connect_timeout);
                Ok(c)
            }
            Ok(c) => {
                slot.conn = Some(c.clone());
                slot.failures = 0;
                slot.retry_after = None;
                Ok(c)
            }
            Err(e) => {
                slot.conn = None;
                slot.failures = slot.failures.saturating_add(1);
                let backoff =
                    MIN_RECONNECT_BACKOFF.saturating_mul(1 << slot.failures.min(10)).min(MAX_RECONNECT_BACKOFF);
                slot.retry_after = Some(Instant::now() + backoff);
                best.ok_or(e)
            }
        }
    }

    /// The number of connections the pool keeps (`tcp_connections`).
    pub(crate) fn size(&self) -> usize {
        self.active.load(Relaxed)
    }

    /// Changes the number of connections (`tcp_connections` reloaded). Growing lets more slots
    /// be connected, lazily as for a new pool. Shrinking takes the slots beyond the new size out
    /// of use at once (no new query picks them); their connections are retired: each closes once
    /// its outstanding queries are answered, at the latest after one query timeout (when every
    /// one of them has given up anyway), so a reload never fails a query in flight.
    pub(crate) fn resize(&self, size: usize) {
        let size = size.clamp(1, self.slots.len());
        let before = self.active.swap(size, Relaxed);
        if before <= size {
            return;
        }
        let (slots, active, timeout) = (self.slots.clone(), self.active.clone(), self.connect_timeout);
        let retire_excess = async move {
            for idx in size..before {
                let mut slot = slots[idx].lock().await;
                // Grown back meanwhile: the slot is in use again.
                if idx < active.load(Relaxed) {
                    continue;
                }
                let conn = slot.conn.take();
                *slot = Slot::default();
                drop(slot);
                if let Some(conn) = conn {
                    retire(conn, timeout);
                }
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(retire_excess);
            }
            // Outside a runtime no query can be in flight: close at once.
            Err(_) => {
                for slot in self.slots[size..before].iter() {
                    if let Ok(mut s) = slot.try_lock()
                        && let Some(c) = s.conn.take()
                    {
                        c.close();
                    }
                }
            }
        }
    }

    /// Grows the pool to at least `size` connections (another zone sharing the endpoint asks
    /// for more).
    pub(crate) fn grow_to(&self, size: usize) {
        self.active.fetch_max(size.clamp(1, self.slots.len()), Relaxed);
    }

    /// Opens every slot now, so the first queries do not pay for the handshake.
    pub(crate) async fn warm(&self, endpoint: &Arc<Endpoint>) {
        for slot in self.slots.iter().take(self.size()) {
            let mut slot = slot.lock().await;
            if slot.conn.as_ref().is_none_or(|c| !c.is_usable())
                && let Ok(c) = TcpConn::connect(endpoint, self.connect_timeout, self.max_pending).await
            {
                slot.conn = Some(c);
            }
        }
    }

    /// Closes every connection (endpoint removed or shutting down).
    pub(crate) async fn close_all(&self) {
        for slot in self.slots.iter() {
            if let Some(c) = slot.lock().await.conn.take() {
                c.close();
            }
        }
    }
}

/// How often a retired connection checks whether its last query was answered.
const RETIRE_POLL: Duration = Duration::from_millis(20);

/// Closes `conn` once nothing is outstanding on it, at the latest after `timeout` (the query
/// timeout: by then every query on it has given up). Runs inside the runtime (from the task of
/// [`TcpPool::resize`]).
fn retire(conn: Arc<TcpConn>, timeout: Duration) {
    tokio::spawn(async move {
        let deadline = Instant::now() + timeout;
        while conn.is_usable() && conn.pending_len() > 0 && Instant::now() < deadline {
            tokio::time::sleep(RETIRE_POLL).await;
        }
        conn.close();
    });
}

impl Drop for TcpPool {
    /// The last pool using an endpoint is gone (zone removed, endpoint no longer discovered):
    /// close its connections instead of leaving them to the peer's idle timeout.
    fn drop(&mut self) {
        for slot in self.slots.iter() {
            if let Ok(mut s) = slot.try_lock()
                && let Some(c) = s.conn.take()
            {
                c.close();
            }
        }
    }
}

impl Drop for TcpConn {
    fn drop(&mut self) {
        self.closed.store(true, Relaxed);
    }
}
