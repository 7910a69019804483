//! Zero-loss socket handover between two nodedns processes on one node (rolling update).
//!
//! A process serving DNS listens on `server.handover_socket` (a unix socket on a hostPath shared
//! by the old and new pod). A new process connects there first and receives the old one's DNS
//! sockets with SCM_RIGHTS: the *same* kernel sockets, not new ones bound beside them. Until the
//! old process gets SIGTERM both read from them; then the old one stops reading and every
//! datagram already queued, or arriving later, is read by the new one. With SO_REUSEPORT alone a
//! closing socket drops whatever sits in its queue (and traffic hashed to it), which is the
//! per-rollout DNS loss node-cache users reported (kubernetes/dns#310).
//!
//! The new process then takes over the socket path (bind to a temporary name, rename over), so
//! the next rollout receives the sockets from it.

use std::io::{IoSlice, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::Duration;

use nix::sys::socket::{ControlMessage, MsgFlags, UnixAddr, sendmsg};
use nodedns_sys::fdpass::MAX_FDS;
use tracing::{info, warn};

const REQUEST: &[u8] = b"nodedns-handover v1\n";

/// Why no sockets were received.
#[derive(Debug, thiserror::Error)]
pub enum HandoverError {
    #[error("no nodedns is serving at {0}")]
    NoPredecessor(PathBuf),
    #[error("handover over {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("handover over {path}: {source}")]
    Sys { path: PathBuf, source: nix::Error },
}

/// Writes the cache to a successor: framed records (u32 LE length, record), then a zero length.
pub type CacheExport = Box<dyn Fn(&mut dyn Write) -> std::io::Result<usize> + Send>;

/// What a predecessor handed over: its sockets, and the stream its cache records follow on.
pub struct Received {
    pub sockets: Vec<OwnedFd>,
    pub cache: UnixStream,
}

/// Reads framed cache records from a predecessor until the end marker, EOF or `deadline`,
/// calling `import` for each. Returns how many records were read.
pub fn read_cache(mut stream: UnixStream, deadline: Duration, mut import: impl FnMut(&[u8])) -> usize {
    let _ = stream.set_read_timeout(Some(deadline));
    let started = std::time::Instant::now();
    let mut n = 0;
    let mut buf = Vec::new();
    loop {
        let mut len = [0u8; 4];
        if stream.read_exact(&mut len).is_err() || started.elapsed() > deadline {
            return n;
        }
        let len = u32::from_le_bytes(len) as usize;
        // An entry is at most two 64 KiB messages plus its header: anything larger is garbage.
        if len == 0 || len > 256 * 1024 {
            return n;
        }
        buf.resize(len, 0);
        if stream.read_exact(&mut buf).is_err() {
            return n;
        }
        import(&buf);
        n += 1;
    }
}

/// Whether a nodedns process serves handover requests at `path` (without asking for anything).
pub fn predecessor_serving(path: &Path) -> bool {
    UnixStream::connect(path).is_ok()
}

/// Asks the process serving at `path` for its DNS sockets.
pub fn receive(path: &Path) -> Result<Received, HandoverError> {
    let io = |source| HandoverError::Io { path: path.into(), source };
    let mut stream = match UnixStream::connect(path) {
        Ok(s) => s,
        Err(e) if matches!(e.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused) => {
            return Err(HandoverError::NoPredecessor(path.into()));
        }
        Err(e) => return Err(io(e)),
    };
    stream.set_read_timeout(Some(Duration::from_secs(5))).map_err(io)?;
    stream.write_all(REQUEST).map_err(io)?;
    let mut header = [0u8; 64];
    let (_, fds) = nodedns_sys::fdpass::recv_with_fds(&stream, &mut header)
        .map_err(|source| HandoverError::Sys { path: path.into(), source })?;
    Ok(Received { sockets: fds, cache: stream })
}

/// Serves handover requests on `path` with duplicates of `sockets`: binds now, and returns the
/// accept loop, for the app's task list, which ends when `stop` turns true. `handed_over` is set
/// once a successor has received them.
///
/// Fails (and changes nothing) when the path cannot be used: its directory cannot be created,
/// something other than a socket is there (never replaced: it is not ours), or binding is not
/// permitted. The caller serves anyway; only the next rollout loses the zero-loss handover.
pub fn serve(
    path: &Path,
    sockets: Vec<OwnedFd>,
    handed_over: Arc<AtomicBool>,
    export: CacheExport,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Result<impl std::future::Future<Output = ()> + Send + 'static, HandoverError> {
    let io = |source| HandoverError::Io { path: path.into(), source };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if !m.file_type().is_socket() => {
            return Err(io(std::io::Error::new(std::io::ErrorKind::AlreadyExists, "exists and is not a socket")));
        }
        _ => {}
    }
    // Bind beside the final name and rename over it: a predecessor's socket file is replaced
    // atomically, so a third process never finds no socket at all.
    let tmp = path.with_extension(format!("{}.tmp", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let listener = UnixListener::bind(&tmp).map_err(io)?;
    if let Err(e) = std::fs::rename(&tmp, path) {
        let _ = std::fs::remove_file(&tmp);
        return Err(io(e));
    }
    let listener =
        listener.set_nonblocking(true).and_then(|()| tokio::net::UnixListener::from_std(listener)).map_err(|e| {
            let _ = std::fs::remove_file(path);
            io(e)
        })?;
    let path = path.to_path_buf();
    Ok(async move {
        // Handed to each request's blocking handler and back: one request at a time.
        let mut held = Some((sockets, export));
        loop {
            let accepted = tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                a = listener.accept() => a,
            };
            let Ok(conn) = accepted.and_then(|(c, _)| c.into_std()) else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let Some((sockets, export)) = held.take() else { return };
            let (path, handed_over) = (path.clone(), handed_over.clone());
            // The request is answered with blocking I/O (SCM_RIGHTS, then the cache stream,
            // each bounded by a timeout), off the runtime.
            let answered = tokio::task::spawn_blocking(move || {
                answer_request(conn, &sockets, &export, &handed_over, &path);
                (sockets, export)
            });
            match answered.await {
                Ok(back) => held = Some(back),
                Err(_) => return,
            }
        }
    })
}

/// One successor's request: the sockets, then the warm cache.
fn answer_request(
    mut conn: UnixStream,
    sockets: &[OwnedFd],
    export: &CacheExport,
    handed_over: &AtomicBool,
    path: &Path,
) {
    let _ = conn.set_nonblocking(false);
    let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
    let mut req = [0u8; REQUEST.len()];
    match conn.read_exact(&mut req) {
        Ok(()) if req == REQUEST => {}
        // A successor waiting to take over checks that we still serve: connect, close.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return,
        _ => {
            warn!(path = %path.display(), "ignoring a malformed handover request");
            return;
        }
    }
    let raw: Vec<RawFd> = sockets.iter().take(MAX_FDS).map(|s| s.as_raw_fd()).collect();
    let header = format!("ok {}\n", raw.len());
    let sent = sendmsg::<UnixAddr>(
        conn.as_raw_fd(),
        &[IoSlice::new(header.as_bytes())],
        &[ControlMessage::ScmRights(&raw)],
        MsgFlags::empty(),
        None,
    );
    match sent {
        Ok(_) => {
            handed_over.store(true, Relaxed);
            info!(sockets = raw.len(), "DNS sockets handed over to a new nodedns process");
            // Then the warm cache, so the successor does not start cold.
            let _ = conn.set_write_timeout(Some(Duration::from_secs(10)));
            let mut out = std::io::BufWriter::new(&conn);
            match export(&mut out).and_then(|n| out.write_all(&0u32.to_le_bytes()).map(|_| n)) {
                Ok(n) => {
                    let _ = out.flush();
                    info!(entries = n, "cache handed over");
                }
                Err(e) => warn!(error = %e, "cache handover cut short"),
            }
        }
        Err(e) => warn!(error = %e, "socket handover failed"),
    }
}

/// Removes the socket file if it is still ours (not yet replaced by a successor).
pub fn remove_if_ours(path: &Path, handed_over: &AtomicBool) {
    if !handed_over.load(Relaxed) {
        let _ = std::fs::remove_file(path);
    }
}
