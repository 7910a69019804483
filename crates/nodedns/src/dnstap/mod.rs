//! dnstap output (`log.dnstap`): every client query and response (CLIENT_QUERY /
//! CLIENT_RESPONSE) and every query sent to and response received from an upstream
//! (FORWARDER_QUERY / FORWARDER_RESPONSE), as dnstap protobuf messages in Frame Streams, to a
//! unix socket (a collector such as `fstrm_capture`, dnscollector, vector) or a file.
//!
//! The serving paths never wait for it. A message is encoded on the serving thread into a
//! recycled buffer and handed to a bounded queue; one writer thread drains the queue every few
//! milliseconds (it polls instead of being woken, so a send is never a syscall on the hit path)
//! and writes whole batches. A full queue, a missing reader or a slow one means messages
//! are dropped and counted (`nodedns_dnstap_dropped_total`), never that a query waits. The
//! writer reconnects to the socket with backoff when the reader goes away.

mod encode;
pub mod framestream;
#[cfg(test)]
mod tests;

use std::fs::File;
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, TrySendError};
use std::time::{Duration, Instant, SystemTime};

use parking_lot::Mutex;
use prometheus::IntCounter;
use tracing::{info, warn};

use nodedns_upstream::{ExchangeObserver, WireProtocol};

pub use encode::{Event, Layout, MessageType, SocketProtocol, count_frames};

use crate::config::{DnstapConfig, DnstapTarget};
use crate::logging::RateLimitedWarn;
use crate::metrics::{Metrics, Proto};

/// Queued buffers at most. Each holds one client exchange (query and response frames) or one
/// forwarder message: at 100,000 queries a second, 80 ms of traffic.
const MAX_SLOTS: usize = 8192;
/// Bytes held at most by buffers larger than `SLOT_KEEP` (large TCP answers); the others are
/// bounded by `MAX_SLOTS` × `SLOT_KEEP`, with no shared counter to update on the hit path.
const MAX_LARGE_BYTES: usize = 8 << 20;
/// A new buffer's capacity: a hit's two frames are a few hundred bytes.
const SLOT_BYTES: usize = 1024;
/// Buffers that grew past this are freed rather than kept, so idle slots hold at most
/// `MAX_SLOTS` × this (16 MiB).
const SLOT_KEEP: usize = 2048;
/// The writer writes once this much is batched, or the queue is empty.
const WRITE_BATCH: usize = 256 << 10;
/// The writer's poll interval while messages flow: each wake-up is two context switches on a
/// CPU the UDP workers may share, so it batches 5 ms of traffic per write (at 100,000 queries a
/// second, 500 of the `MAX_SLOTS` buffers) rather than waking every millisecond.
const BUSY_POLL: Duration = Duration::from_millis(5);
/// While idle the interval doubles up to this.
const MAX_IDLE_POLL: Duration = Duration::from_millis(50);
/// Reconnect backoff bounds.
const MIN_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// A reader that takes no data for this long is treated as gone (reconnect).
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the handshake and the closing FINISH may take.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(2);

/// What the producers and the writer thread share.
struct Shared {
    identity: Box<[u8]>,
    version: Box<[u8]>,
    /// Emptied buffers, for producers to fill again (no allocation per message).
    free: Mutex<Vec<Vec<u8>>>,
    /// Buffers in existence (free, queued or being written).
    slots: AtomicUsize,
    /// Bytes in queued buffers longer than `SLOT_KEEP`.
    large_bytes: AtomicUsize,
    stop: AtomicBool,
    sent: IntCounter,
    dropped: IntCounter,
}

impl Shared {
    fn recycle(&self, mut buf: Vec<u8>) {
        if buf.len() > SLOT_KEEP {
            self.large_bytes.fetch_sub(buf.len(), Relaxed);
        }
        if buf.capacity() > SLOT_KEEP {
            self.slots.fetch_sub(1, Relaxed);
            return;
        }
        buf.clear();
        self.free.lock().push(buf);
    }
}

/// The producers' handle: cheap to call from any serving thread.
pub struct Dnstap {
    shared: Arc<Shared>,
    queue: SyncSender<Vec<u8>>,
    writer: Mutex<Option<(std::thread::JoinHandle<()>, Receiver<()>)>>,
}

/// `log.dnstap.identity` if set, else the `NODE_NAME` environment variable (the DaemonSet can
/// set it from the downward API's `spec.nodeName`), else the host name.
fn default_identity() -> String {
    if let Ok(n) = std::env::var("NODE_NAME")
        && !n.trim().is_empty()
    {
        return n.trim().to_string();
    }
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "nodedns".into())
}

/// The version string every message carries.
pub fn version_string() -> String {
    format!("nodedns {}", env!("CARGO_PKG_VERSION"))
}

impl Dnstap {
    /// Starts the writer thread. The socket or file is opened by the writer (and reopened after
    /// failures), so a collector that starts after nodedns still gets the stream.
    pub fn start(config: &DnstapConfig, metrics: &Metrics) -> std::io::Result<Arc<Self>> {
        let identity = config.identity.clone().unwrap_or_else(default_identity);
        let shared = Arc::new(Shared {
            identity: identity.into_bytes().into(),
            version: version_string().into_bytes().into(),
            free: Mutex::new(Vec::new()),
            slots: AtomicUsize::new(0),
            large_bytes: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
            sent: metrics.dnstap_sent.clone(),
            dropped: metrics.dnstap_dropped.clone(),
        });
        // The channel never fills before the slot bound does: a send never blocks either way.
        let (queue, rx) = std::sync::mpsc::sync_channel(MAX_SLOTS);
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let target = config.target.clone();
        let thread_shared = shared.clone();
        let handle = std::thread::Builder::new().name("nodedns-dnstap".into()).spawn(move || {
            run_writer(&thread_shared, &rx, &target);
            let _ = done_tx.send(());
        })?;
        Ok(Arc::new(Self { shared, queue, writer: Mutex::new(Some((handle, done_rx))) }))
    }

    /// A client exchange: CLIENT_QUERY, and CLIENT_RESPONSE when an answer was sent. `client` is
    /// the querier, `server` the listener's address.
    #[allow(clippy::too_many_arguments)]
    #[inline]
    pub fn client(
        &self,
        proto: Proto,
        client: Option<SocketAddr>,
        server: Option<SocketAddr>,
        query: &[u8],
        response: Option<&[u8]>,
        query_time: SystemTime,
        response_time: SystemTime,
    ) {
        let protocol = match proto {
            Proto::Udp => SocketProtocol::Udp,
            Proto::Tcp => SocketProtocol::Tcp,
        };
        let q = Event {
            kind: MessageType::ClientQuery,
            protocol,
            query_addr: client,
            response_addr: server,
            query_time: Some(query_time),
            query_message: Some(query),
            query_zone: None,
            response_time: None,
            response_message: None,
        };
        match response {
            Some(r) => {
                let resp = Event {
                    kind: MessageType::ClientResponse,
                    query_message: None,
                    response_time: Some(response_time),
                    response_message: Some(r),
                    ..q
                };
                self.emit(&[q, resp]);
            }
            None => self.emit(&[q]),
        }
    }

    /// Encodes `events` (at most two: a query and its response) into one queued buffer, or
    /// drops and counts them.
    fn emit(&self, events: &[Event<'_>]) {
        let s = &*self.shared;
        let dropped = || s.dropped.inc_by(events.len() as u64);
        if s.stop.load(Relaxed) {
            return dropped();
        }
        let events = &events[..events.len().min(2)];
        let mut layouts = [Layout::default(); 2];
        for (l, e) in layouts.iter_mut().zip(events) {
            *l = e.layout(&s.identity, &s.version);
        }
        let layouts = &layouts[..events.len()];
        let len: usize = layouts.iter().map(Layout::frame_len).sum();
        let large = len > SLOT_KEEP;
        if large && s.large_bytes.fetch_add(len, Relaxed) + len > MAX_LARGE_BYTES {
            s.large_bytes.fetch_sub(len, Relaxed);
            return dropped();
        }
        let buf = s.free.lock().pop().or_else(|| {
            if s.slots.fetch_add(1, Relaxed) < MAX_SLOTS {
                Some(Vec::with_capacity(SLOT_BYTES.max(len)))
            } else {
                s.slots.fetch_sub(1, Relaxed);
                None
            }
        });
        let Some(mut buf) = buf else {
            if large {
                s.large_bytes.fetch_sub(len, Relaxed);
            }
            return dropped();
        };
        for (e, l) in events.iter().zip(layouts) {
            e.put_frame_laid_out(l, &s.identity, &s.version, &mut buf);
        }
        match self.queue.try_send(buf) {
            Ok(()) => {}
            Err(TrySendError::Full(buf) | TrySendError::Disconnected(buf)) => {
                s.recycle(buf);
                dropped();
            }
        }
    }

    /// An observer for one zone's upstream pool: FORWARDER_QUERY / FORWARDER_RESPONSE with the
    /// zone as `query_zone`.
    pub fn forwarder(self: &Arc<Self>, zone: &hickory_proto::rr::Name) -> Arc<dyn ExchangeObserver> {
        let zone = hickory_proto::serialize::binary::BinEncodable::to_bytes(zone).unwrap_or_default();
        Arc::new(ForwarderTap { tap: self.clone(), zone: zone.into() })
    }

    /// Message buffers in existence (free, queued or being written; at most 8,192): once this
    /// many exist, that many messages can be queued at once without allocating.
    pub fn buffers(&self) -> usize {
        self.shared.slots.load(Relaxed)
    }

    /// Stops the writer after it has written what is queued and closed the stream (STOP, and
    /// FINISH from a socket reader), waiting at most `timeout`.
    pub fn shutdown(&self, timeout: Duration) {
        self.shared.stop.store(true, Relaxed);
        let Some((handle, done)) = self.writer.lock().take() else { return };
        if done.recv_timeout(timeout).is_ok() {
            let _ = handle.join();
        } else {
            warn!("dnstap writer did not finish in time; the stream may lack its STOP frame");
        }
    }
}

/// Reports one zone's upstream exchanges.
struct ForwarderTap {
    tap: Arc<Dnstap>,
    zone: Box<[u8]>,
}

fn socket_protocol(p: WireProtocol) -> SocketProtocol {
    match p {
        WireProtocol::Udp => SocketProtocol::Udp,
        WireProtocol::Tcp => SocketProtocol::Tcp,
    }
}

impl ExchangeObserver for ForwarderTap {
    fn query_sent(&self, upstream: SocketAddr, protocol: WireProtocol, query: &[u8], sent: SystemTime) {
        self.tap.emit(&[Event {
            kind: MessageType::ForwarderQuery,
            protocol: socket_protocol(protocol),
            query_addr: None,
            response_addr: Some(upstream),
            query_time: Some(sent),
            query_message: Some(query),
            query_zone: Some(&self.zone),
            response_time: None,
            response_message: None,
        }]);
    }

    fn response_received(
        &self,
        upstream: SocketAddr,
        protocol: WireProtocol,
        response: &[u8],
        sent: SystemTime,
        received: SystemTime,
    ) {
        self.tap.emit(&[Event {
            kind: MessageType::ForwarderResponse,
            protocol: socket_protocol(protocol),
            query_addr: None,
            response_addr: Some(upstream),
            query_time: Some(sent),
            query_message: None,
            query_zone: Some(&self.zone),
            response_time: Some(received),
            response_message: Some(response),
        }]);
    }
}

/// An open Frame Streams output.
enum Sink {
    File(File),
    Socket(UnixStream),
}

impl Sink {
    fn open(target: &DnstapTarget) -> std::io::Result<Sink> {
        match target {
            DnstapTarget::File(path) => {
                // A Frame Streams file is one stream from START to STOP: appending a second
                // stream would leave readers stopping at the first STOP, so each start replaces it.
                let mut f = File::create(path)?;
                f.write_all(&framestream::control_frame(framestream::CONTROL_START, Some(framestream::CONTENT_TYPE)))?;
                Ok(Sink::File(f))
            }
            DnstapTarget::Socket(path) => {
                let mut s = UnixStream::connect(path)?;
                s.set_read_timeout(Some(CONTROL_TIMEOUT))?;
                s.set_write_timeout(Some(CONTROL_TIMEOUT))?;
                framestream::handshake(&mut s)?;
                s.set_write_timeout(Some(WRITE_TIMEOUT))?;
                Ok(Sink::Socket(s))
            }
        }
    }

    fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match self {
            Sink::File(f) => f.write_all(bytes),
            Sink::Socket(s) => s.write_all(bytes),
        }
    }

    fn close(self) -> std::io::Result<()> {
        match self {
            Sink::File(mut f) => {
                f.write_all(&framestream::control_frame(framestream::CONTROL_STOP, None))?;
                f.flush()
            }
            Sink::Socket(mut s) => {
                s.set_write_timeout(Some(CONTROL_TIMEOUT))?;
                framestream::finish(&mut s)
            }
        }
    }
}

fn target_name(t: &DnstapTarget) -> (&'static str, &PathBuf) {
    match t {
        DnstapTarget::File(p) => ("file", p),
        DnstapTarget::Socket(p) => ("socket", p),
    }
}

/// The writer thread: (re)opens the output, drains the queue in batches, closes the stream on
/// shutdown.
fn run_writer(shared: &Shared, rx: &Receiver<Vec<u8>>, target: &DnstapTarget) {
    let (kind, path) = target_name(target);
    let warn_limit = RateLimitedWarn::new(Duration::from_secs(30));
    let mut sink: Option<Sink> = None;
    let mut retry_at = Instant::now();
    let mut backoff = MIN_BACKOFF;
    let mut out: Vec<u8> = Vec::with_capacity(WRITE_BATCH + SLOT_KEEP);
    let mut out_frames = 0u64;
    let mut poll = BUSY_POLL;
    loop {
        let stopping = shared.stop.load(Relaxed);
        if sink.is_none() && Instant::now() >= retry_at {
            match Sink::open(target) {
                Ok(s) => {
                    info!(kind, path = %path.display(), "dnstap output open");
                    sink = Some(s);
                    backoff = MIN_BACKOFF;
                }
                Err(e) => {
                    if warn_limit.allow() {
                        warn!(kind, path = %path.display(), error = %e, "cannot open the dnstap output; dropping messages until it opens");
                    }
                    retry_at = Instant::now() + backoff;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
        let mut drained = false;
        let mut disconnected = false;
        let mut out_full = false;
        loop {
            let buf = match rx.try_recv() {
                Ok(b) => b,
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    disconnected = true;
                    break;
                }
            };
            drained = true;
            let frames = count_frames(&buf);
            if sink.is_some() {
                out.extend_from_slice(&buf);
                out_frames += frames;
            } else {
                shared.dropped.inc_by(frames);
            }
            shared.recycle(buf);
            if out.len() >= WRITE_BATCH {
                out_full = true;
                break;
            }
        }
        if !out.is_empty() {
            if let Some(s) = &mut sink {
                match s.write_all(&out) {
                    Ok(()) => shared.sent.inc_by(out_frames),
                    Err(e) => {
                        shared.dropped.inc_by(out_frames);
                        if warn_limit.allow() {
                            warn!(kind, path = %path.display(), error = %e, "dnstap output failed; reopening");
                        }
                        sink = None;
                        retry_at = Instant::now() + backoff;
                    }
                }
            } else {
                shared.dropped.inc_by(out_frames);
            }
            out.clear();
            out_frames = 0;
        }
        if (stopping && !drained) || disconnected {
            break;
        }
        if out_full {
            // Behind: write the next batch at once.
            continue;
        }
        std::thread::sleep(poll);
        poll = if drained { BUSY_POLL } else { (poll * 2).min(MAX_IDLE_POLL) };
    }
    if let Some(s) = sink
        && let Err(e) = s.close()
    {
        warn!(kind, path = %path.display(), error = %e, "closing the dnstap stream failed");
    }
}

/// dnstap as the resolver's observer of upstream exchanges (FORWARDER_QUERY/RESPONSE).
pub struct DnstapTaps(pub Arc<Dnstap>);

impl nodedns_resolver::ForwarderTaps for DnstapTaps {
    fn forwarder(&self, zone: &hickory_proto::rr::Name) -> Arc<dyn ExchangeObserver> {
        self.0.forwarder(zone)
    }
}
