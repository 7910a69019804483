//! TCP serving: many pipelined queries per connection, answered as they complete
//! (RFC 7766 §6.2.1.1), with bounds on connections (total and per client), queries in flight per
//! connection, and idle / slow-read time (slowloris).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tracing::{debug, warn};

use nodedns_wire::framing::{Peer, frame_len};
use nodedns_wire::{
    MAX_MESSAGE, Parsed, Rcode, Transport, parse_query, render_any_hinfo, render_rcode, render_rejection,
    response_rcode_label,
};

use crate::config::Limits;
use crate::engine::Engine;
use crate::logging::RateLimitedWarn;
use crate::metrics::{CacheResult, Proto, ShedReason};

/// Connection accounting shared by every TCP listener.
pub struct TcpConnections {
    total: AtomicUsize,
    per_client: Mutex<HashMap<IpAddr, usize>>,
    limits: Limits,
    warn: RateLimitedWarn,
}

impl TcpConnections {
    pub fn new(limits: Limits) -> Arc<Self> {
        // The per-client rate limiter is shared with the UDP workers (see `ratelimit`).
        crate::ratelimit::install(limits.per_client_qps);
        Arc::new(Self {
            total: AtomicUsize::new(0),
            per_client: Mutex::new(HashMap::new()),
            limits,
            warn: RateLimitedWarn::new(Duration::from_secs(10)),
        })
    }

    pub fn open(&self) -> usize {
        self.total.load(Relaxed)
    }

    fn admit(self: &Arc<Self>, peer: IpAddr) -> Option<ConnGuard> {
        let mut per = self.per_client.lock();
        if self.total.load(Relaxed) >= self.limits.max_tcp_connections {
            return None;
        }
        let n = per.entry(peer).or_insert(0);
        if *n >= self.limits.max_tcp_connections_per_client {
            return None;
        }
        *n += 1;
        self.total.fetch_add(1, Relaxed);
        Some(ConnGuard { conns: self.clone(), peer })
    }
}

struct ConnGuard {
    conns: Arc<TcpConnections>,
    peer: IpAddr,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        let mut per = self.conns.per_client.lock();
        if let Some(n) = per.get_mut(&self.peer) {
            *n -= 1;
            if *n == 0 {
                per.remove(&self.peer);
            }
        }
        self.conns.total.fetch_sub(1, Relaxed);
    }
}

/// Accepts connections until `stop` turns true.
pub async fn run_listener(
    listener: TcpListener,
    engine: Arc<Engine>,
    conns: Arc<TcpConnections>,
    mut stop: watch::Receiver<bool>,
) {
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
        let Some(guard) = conns.admit(peer.ip()) else {
            engine.metrics.shed(ShedReason::TcpConnections);
            if conns.warn.allow() {
                warn!(client = %peer.ip(), "TCP connection refused: connection limit reached");
            }
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let engine = engine.clone();
        let limits = conns.limits.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            serve_connection(stream, peer, engine, limits, stop).await;
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
async fn read_frame(read: &mut OwnedReadHalf, buf: &mut Vec<u8>, timeout: Duration) -> Result<usize, &'static str> {
    let mut len = [0u8; 2];
    match tokio::time::timeout(timeout, read.read_exact(&mut len)).await {
        Ok(Ok(_)) => {}
        Ok(Err(_)) => return Err("closed"),
        Err(_) => return Err("idle"),
    }
    let len = frame_len(len, Peer::Client).map_err(|e| e.label())?;
    buf.clear();
    buf.resize(len, 0);
    // The body must follow within the idle timeout too: a frame that announces more than the
    // client sends (or sends one byte a minute) is closed, not waited on (slowloris).
    match tokio::time::timeout(timeout, read.read_exact(&mut buf[..len])).await {
        Ok(Ok(_)) => Ok(len),
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

/// Renders with `render` into the thread's scratch and copies the result, length-prefixed, into
/// `frame` (which keeps its capacity: no allocation per answer once a connection has answered).
fn render_frame(frame: &mut Vec<u8>, render: impl FnOnce(&mut [u8]) -> Option<usize>) -> Option<usize> {
    RENDER.with(|scratch| {
        let mut scratch = scratch.borrow_mut();
        let len = render(&mut scratch[..])?;
        frame.clear();
        frame.extend_from_slice(&(len as u16).to_be_bytes());
        frame.extend_from_slice(&scratch[..len]);
        Some(len)
    })
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    engine: Arc<Engine>,
    limits: Limits,
    mut stop: watch::Receiver<bool>,
) {
    let (mut read, write) = stream.into_split();
    let writer = Arc::new(tokio::sync::Mutex::new(write));
    let pipeline = Arc::new(Semaphore::new(limits.max_pipelined_per_connection));
    let mut inbuf = Vec::new();
    let mut outbuf = Vec::new();
    loop {
        release_if_large(&mut inbuf);
        release_if_large(&mut outbuf);
        let n = tokio::select! {
            biased;
            _ = stop.wait_for(|s| *s) => break,
            r = read_frame(&mut read, &mut inbuf, limits.tcp_idle_timeout) => match r {
                Ok(n) => n,
                Err(reason) => {
                    if reason != "closed" && reason != "idle" {
                        engine.metrics.malformed(reason);
                    }
                    debug!(client = %peer, reason, "closing TCP connection");
                    break;
                }
            },
        };
        let packet = &inbuf[..n];
        let received = Instant::now();
        let over_limit = crate::ratelimit::over_limit(peer.ip());
        let query = match parse_query(packet) {
            Parsed::Query(q) => q,
            Parsed::Reject(_) if over_limit => {
                engine.metrics.shed(ShedReason::RateLimit);
                continue;
            }
            Parsed::Reject(r) => {
                engine.metrics.malformed(r.reason.label());
                if render_frame(&mut outbuf, |out| render_rejection(&r, out)).is_some() {
                    engine.metrics.response(response_rcode_label(&outbuf[2..]));
                    if !write_frame(&writer, &outbuf, limits.tcp_idle_timeout).await {
                        break;
                    }
                }
                continue;
            }
            Parsed::Drop => {
                engine.metrics.malformed("unparseable_header");
                continue;
            }
        };
        engine.metrics.request(Proto::Tcp, query.qtype);
        let local = if over_limit {
            engine.metrics.shed(ShedReason::RateLimit);
            render_frame(&mut outbuf, |out| render_rcode(&query, Rcode::Refused, out)).map(|_| false)
        } else if query.qtype == nodedns_wire::query::TYPE_ANY {
            render_frame(&mut outbuf, |out| render_any_hinfo(&query, out)).map(|_| false)
        } else {
            render_frame(&mut outbuf, |out| {
                engine.answer_from_cache(&query, Transport::Tcp, out, engine.now()).map(|(l, _)| l)
            })
            .map(|_| true)
        };
        if let Some(hit) = local {
            engine.metrics.response(response_rcode_label(&outbuf[2..]));
            if hit {
                engine.metrics.answered(CacheResult::Hit, query.qtype, received.elapsed().as_secs_f64());
            }
            if !write_frame(&writer, &outbuf, limits.tcp_idle_timeout).await {
                break;
            }
            continue;
        }
        // A miss: answered when it completes, out of order. Reading pauses while the
        // connection has its maximum of queries in flight (backpressure, not buffering).
        let permit = match pipeline.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                engine.metrics.shed(ShedReason::TcpPipeline);
                match pipeline.clone().acquire_owned().await {
                    Ok(p) => p,
                    Err(_) => break,
                }
            }
        };
        let packet = packet.to_vec();
        let qtype = query.qtype;
        let engine = engine.clone();
        let writer = writer.clone();
        let timeout = limits.tcp_idle_timeout;
        tokio::spawn(async move {
            if let Some(answer) = engine.answer_miss(&packet, Transport::Tcp).await {
                engine.metrics.response(response_rcode_label(&answer.bytes));
                engine.metrics.answered(answer.result, qtype, received.elapsed().as_secs_f64());
                if let Parsed::Query(q) = parse_query(&packet) {
                    let result = answer.result.label();
                    engine.sample_query_log(Some(peer), "tcp", &q, &answer.bytes, result, received.elapsed());
                }
                let mut frame = Vec::with_capacity(answer.bytes.len() + 2);
                frame.extend_from_slice(&(answer.bytes.len() as u16).to_be_bytes());
                frame.extend_from_slice(&answer.bytes);
                write_frame(&writer, &frame, timeout).await;
            }
            drop(permit);
        });
    }
    // Answers still in flight hold the writer; the socket closes when the last one is sent.
}
