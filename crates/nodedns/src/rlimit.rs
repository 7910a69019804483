//! The open-file limit. Every TCP client connection, upstream connection and UDP worker socket
//! is a descriptor; `limits.max_tcp_connections` (10,000 by default) is meaningless under the
//! common soft default of 1024, where accept fails with EMFILE long before the configured bound.
//! The soft limit is raised to the hard limit at start, which needs no privilege (the hard limit
//! is what the container runtime, systemd or the kubelet granted).

use std::io;

use nix::sys::resource::{Resource, getrlimit, setrlimit};

fn get() -> io::Result<(u64, u64)> {
    // rlim_t is u64 on Linux.
    getrlimit(Resource::RLIMIT_NOFILE).map_err(io::Error::from)
}

fn set(soft: u64, hard: u64) -> io::Result<()> {
    setrlimit(Resource::RLIMIT_NOFILE, soft, hard).map_err(io::Error::from)
}

/// The open-file limits before and after [`raise_nofile`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NofileLimit {
    pub soft_before: u64,
    pub soft: u64,
    pub hard: u64,
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit. Returns the limits for the start-up log;
/// callers should warn when `soft` is below what `limits.max_tcp_connections` needs.
pub fn raise_nofile() -> io::Result<NofileLimit> {
    let (soft_before, hard) = get()?;
    if soft_before < hard {
        set(hard, hard)?;
    }
    let (soft, hard) = get()?;
    Ok(NofileLimit { soft_before, soft, hard })
}

/// Descriptors the daemon needs beyond client TCP connections: listeners, UDP workers, upstream
/// pools, admin, runtime internals. A generous round number; the check is advisory.
pub const BASE_DESCRIPTORS: u64 = 256;

/// Whether `limit` covers `max_tcp_connections` client connections plus the base.
pub fn covers(limit: &NofileLimit, max_tcp_connections: usize) -> bool {
    limit.soft >= max_tcp_connections as u64 + BASE_DESCRIPTORS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn soft_limit_ends_at_the_hard_limit() {
        let l = raise_nofile().unwrap();
        assert_eq!(l.soft, l.hard);
        assert!(l.soft >= l.soft_before);
        // Idempotent.
        assert_eq!(raise_nofile().unwrap().soft, l.soft);
        assert!(covers(&NofileLimit { soft_before: 0, soft: 20_000, hard: 20_000 }, 10_000));
        assert!(!covers(&NofileLimit { soft_before: 0, soft: 1024, hard: 1024 }, 10_000));
    }
}
