//! Admin HTTP: `/metrics`, `/health` (a real DNS query to our own socket), `/ready`.
//! Runs on its own thread and runtime, so a saturated data path cannot starve it of CPU time
//! and a stuck admin request cannot slow the data path.

use std::convert::Infallible;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tracing::{info, warn};

use crate::readiness::{Phase, Readiness};
use crate::server::udp::WorkerControl;

/// A worker that has not looped for this long is stuck (it wakes every 200 ms when idle).
const MAX_HEARTBEAT_AGE: Duration = Duration::from_secs(2);
/// The self-query must be answered within this time.
const HEALTH_QUERY_TIMEOUT: Duration = Duration::from_secs(1);

/// What the admin endpoints read.
pub struct AdminState {
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Set once the UDP workers run (admin starts before them, to answer probes while waiting).
    pub workers: OnceLock<Arc<WorkerControl>>,
    /// Where `/health` sends its query.
    pub dns_target: OnceLock<SocketAddr>,
    /// The process's phase and the upstream latch, owned by the app.
    pub readiness: Arc<Readiness>,
    /// Enables `/debug/stall` (tests only: `NODEDNS_TEST_HOOKS=1`).
    pub test_hooks: bool,
}

impl AdminState {
    pub fn ready(&self) -> bool {
        self.readiness.ready()
    }

    /// Healthy iff a real query to our own DNS socket is answered in time and every worker is
    /// looping. A stuck worker or a full, unread socket fails this (node-cache's check did not).
    pub fn healthy(&self) -> Result<(), String> {
        if self.readiness.phase() == Phase::WaitingForTakeover {
            return Ok(());
        }
        let (Phase::Serving | Phase::Draining, Some(workers)) = (self.readiness.phase(), self.workers.get()) else {
            return Err("not serving yet".into());
        };
        let age = workers.max_heartbeat_age();
        if age > MAX_HEARTBEAT_AGE {
            return Err(format!("a UDP worker has not run for {} ms", age.as_millis()));
        }
        let Some(target) = self.dns_target.get() else {
            return Err("not serving yet".into());
        };
        self_query(*target)
    }
}

/// The question of the `/health` self-query, `health.nodedns. TXT CH` in wire form: class CH is
/// answered REFUSED by a worker itself, without upstream or cache.
const HEALTH_QUESTION: &[u8] = b"\x06health\x07nodedns\x00\x00\x10\x00\x03";

/// Whether a rejected query is the `/health` self-query (counted apart from client traffic).
/// Only rejected queries are checked, so the hit path pays nothing for it.
pub fn is_health_self_query(r: &nodedns_wire::RejectedQuery<'_>) -> bool {
    r.reason == nodedns_wire::Rejection::Refused
        && r.question_end
            .and_then(|end| r.packet.get(12..end + 4))
            .is_some_and(|q| q.eq_ignore_ascii_case(HEALTH_QUESTION))
}

fn self_query(target: SocketAddr) -> Result<(), String> {
    let bind: SocketAddr =
        if target.is_ipv4() { "0.0.0.0:0".parse().unwrap_or(target) } else { "[::]:0".parse().unwrap_or(target) };
    let socket = UdpSocket::bind(bind).map_err(|e| format!("self-query socket: {e}"))?;
    socket.set_read_timeout(Some(HEALTH_QUERY_TIMEOUT)).map_err(|e| format!("self-query socket: {e}"))?;
    let id: u16 = rand::random();
    let mut q = Vec::with_capacity(40);
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    q.extend_from_slice(HEALTH_QUESTION);
    socket.send_to(&q, target).map_err(|e| format!("self-query send: {e}"))?;
    let mut buf = [0u8; 512];
    loop {
        match socket.recv_from(&mut buf) {
            Ok((n, _)) if n >= 12 && buf[..2] == id.to_be_bytes() => return Ok(()),
            Ok(_) => continue,
            Err(e) => return Err(format!("DNS self-query to {target} not answered: {e}")),
        }
    }
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r
}

async fn handle(
    req: Request<hyper::body::Incoming>,
    state: Arc<AdminState>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path();
    Ok(match (req.method(), path) {
        (&Method::GET, "/metrics") => {
            let mut r = text(StatusCode::OK, state.metrics.render());
            r.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            r
        }
        (&Method::GET, "/health") => {
            let s = state.clone();
            match tokio::task::spawn_blocking(move || s.healthy()).await {
                Ok(Ok(())) => text(StatusCode::OK, "ok\n"),
                Ok(Err(why)) => text(StatusCode::SERVICE_UNAVAILABLE, format!("unhealthy: {why}\n")),
                Err(_) => text(StatusCode::SERVICE_UNAVAILABLE, "unhealthy: check panicked\n"),
            }
        }
        (&Method::GET, "/ready") => {
            if state.ready() {
                text(StatusCode::OK, "ready\n")
            } else if state.readiness.phase() == Phase::WaitingForTakeover {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "not ready: another nodedns serves this node; taking over once an upstream answers\n",
                )
            } else if state.readiness.phase() != Phase::Serving {
                text(StatusCode::SERVICE_UNAVAILABLE, "not ready: listeners not serving\n")
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "not ready: no upstream has answered yet\n")
            }
        }
        (&Method::POST, "/debug/stall") if state.test_hooks => match state.workers.get() {
            Some(workers) => {
                let ms: u64 =
                    req.uri().query().and_then(|q| q.strip_prefix("ms=")).and_then(|v| v.parse().ok()).unwrap_or(3000);
                let until = workers.now_ms() + ms;
                workers.stall_until_ms.store(until, Relaxed);
                warn!(ms, "test hook: UDP workers stalled");
                text(StatusCode::OK, "stalled\n")
            }
            None => text(StatusCode::SERVICE_UNAVAILABLE, "not serving yet\n"),
        },
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    })
}

/// Where admin HTTP is served: TCP (Prometheus, curl) or the pod's own unix socket (probes).
pub enum AdminListener {
    Tcp(std::net::TcpListener),
    Unix(std::os::unix::net::UnixListener),
}

/// One connection, bounded in time so a stuck client cannot hold it.
fn serve_connection<S>(stream: S, state: Arc<AdminState>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        let svc = service_fn(move |req| handle(req, state.clone()));
        let conn = http1::Builder::new().serve_connection(TokioIo::new(stream), svc);
        let _ = tokio::time::timeout(Duration::from_secs(30), conn).await;
    });
}

/// Whether an accept error means the listener is gone for good: a TCP listener shut down after
/// its port was released to a successor answers EINVAL from then on.
fn listener_closed(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::InvalidInput
}

/// Serves admin HTTP on the given listeners, on a dedicated thread (a stalled serving runtime
/// must not stall the probes that detect it), until `stop` turns true (a TCP listener also
/// until it is shut down). The thread ends then: join it to know admin is gone.
pub fn spawn(
    listeners: Vec<AdminListener>,
    state: Arc<AdminState>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    std::thread::Builder::new().name("nodedns-admin".into()).spawn(move || {
        rt.block_on(async move {
            let mut tasks = Vec::new();
            for l in listeners {
                let state = state.clone();
                match l {
                    AdminListener::Tcp(l) => {
                        let addr = l.local_addr().ok();
                        let listener = match tokio::net::TcpListener::from_std(l) {
                            Ok(l) => l,
                            Err(e) => {
                                warn!(error = %e, "admin listener unusable");
                                continue;
                            }
                        };
                        info!(addr = ?addr, "admin HTTP listening");
                        tasks.push(tokio::spawn(async move {
                            loop {
                                match listener.accept().await {
                                    Ok((stream, _)) => serve_connection(stream, state.clone()),
                                    Err(e) if listener_closed(&e) => {
                                        info!(addr = ?addr, "admin HTTP listener released");
                                        return;
                                    }
                                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                                }
                            }
                        }));
                    }
                    AdminListener::Unix(l) => {
                        let path = l.local_addr().ok().and_then(|a| a.as_pathname().map(|p| p.display().to_string()));
                        let listener = match tokio::net::UnixListener::from_std(l) {
                            Ok(l) => l,
                            Err(e) => {
                                warn!(error = %e, "admin socket unusable");
                                continue;
                            }
                        };
                        info!(path = ?path, "admin HTTP listening on the pod's socket");
                        tasks.push(tokio::spawn(async move {
                            loop {
                                match listener.accept().await {
                                    Ok((stream, _)) => serve_connection(stream, state.clone()),
                                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                                }
                            }
                        }));
                    }
                }
            }
            let _ = stop.wait_for(|s| *s).await;
            for t in &tasks {
                t.abort();
            }
        });
    })
}
