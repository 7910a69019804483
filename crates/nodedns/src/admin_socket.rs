//! The pod's own admin endpoint: admin HTTP on a unix socket in a directory that belongs to one
//! pod (an emptyDir), and the client that the kubelet's exec probes run (`nodedns health`).
//!
//! Why not the TCP port: with `hostNetwork` the old and the new pod of a rolling update share the
//! node's 127.0.0.1:9253, and with SO_REUSEPORT the kernel hands each probe connection to either
//! process. A new version that could not reach its upstream was reported Ready because the old
//! process answered its readiness probe (issue 15). A path in the pod's own emptyDir reaches
//! exactly that pod's process.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::Duration;

/// Binds the admin socket at `path`, replacing a stale file left by this pod's previous
/// container (an emptyDir outlives a container restart).
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let l = UnixListener::bind(path)?;
    l.set_nonblocking(true)?;
    Ok(l)
}

/// `GET route` over the admin socket at `path`: the status code and the body, or why not.
pub fn get(path: &Path, route: &str, timeout: Duration) -> Result<(u16, String), String> {
    let mut s = UnixStream::connect(path).map_err(|e| format!("{}: {e}", path.display()))?;
    s.set_read_timeout(Some(timeout)).and_then(|_| s.set_write_timeout(Some(timeout))).map_err(|e| e.to_string())?;
    // HTTP/1.0: the server closes the connection after the response, so read to EOF.
    s.write_all(format!("GET {route} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let mut raw = Vec::new();
    s.take(64 * 1024).read_to_end(&mut raw).map_err(|e| format!("{}: no answer: {e}", path.display()))?;
    parse_response(&raw).ok_or_else(|| format!("{}: not an HTTP response", path.display()))
}

/// Status code and body of an HTTP/1.x response.
fn parse_response(raw: &[u8]) -> Option<(u16, String)> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.lines().next()?;
    let mut parts = status.split_whitespace();
    if !parts.next()?.starts_with("HTTP/1.") {
        return None;
    }
    let code = parts.next()?.parse().ok()?;
    Some((code, body.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status_and_body() {
        let r = parse_response(b"HTTP/1.0 503 Service Unavailable\r\ncontent-length: 5\r\n\r\nnope\n");
        assert_eq!(r, Some((503, "nope\n".into())));
        assert_eq!(parse_response(b"HTTP/1.1 200 OK\r\n\r\n"), Some((200, String::new())));
    }

    #[test]
    fn rejects_garbage() {
        assert_eq!(parse_response(b""), None);
        assert_eq!(parse_response(b"SSH-2.0\r\n\r\n"), None);
        assert_eq!(parse_response(b"HTTP/1.1 abc\r\n\r\n"), None);
        assert_eq!(parse_response(b"HTTP/1.1 200 OK\r\n"), None);
    }

    #[test]
    fn get_without_a_server_says_why() {
        let dir = std::env::temp_dir().join(format!("nodedns-admin-socket-{}", std::process::id()));
        let err = get(&dir.join("none.sock"), "/ready", Duration::from_millis(100)).unwrap_err();
        assert!(err.contains("none.sock"), "{err}");
    }

    #[test]
    fn bind_replaces_a_stale_socket() {
        let dir = std::env::temp_dir().join(format!("nodedns-admin-socket-b{}", std::process::id()));
        let path = dir.join("admin.sock");
        drop(bind(&path).unwrap());
        // The file stays after the listener is gone, as after a container restart.
        assert!(path.exists());
        let l = bind(&path).unwrap();
        drop(l);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
