//! Least privilege after start-up. The container starts with `NET_ADMIN` and `NET_BIND_SERVICE`
//! (and `NET_RAW` with iptables-legacy; deploy/base/daemonset.yaml). Once the DNS sockets are
//! bound and node setup has run, only what resync and teardown need is kept: `NET_ADMIN` (netlink
//! interface and addresses, nftables / iptables-nft) and `NET_RAW` if it was granted (iptables-
//! legacy's raw socket). Everything else, `NET_BIND_SERVICE` included, is dropped from the
//! effective, permitted, inheritable and ambient sets, and from the bounding set where
//! `CAP_SETPCAP` allows.
//!
//! Two Linux details decide how this must be done:
//! - Capabilities and `no_new_privs` are per *thread* (capset(2) changes only the caller). By the
//!   time sockets are bound the tokio runtime, the UDP workers and the admin thread exist, so the
//!   change is applied in every thread: the calling one directly, each other one from a signal
//!   handler run in that thread (what glibc does for setuid, and libcap's psx for capabilities).
//!   The result is verified per thread from /proc/self/task/*/status.
//! - nodedns is uid 0, and a root `execve` (of `nft` or `iptables` during resync) gets every
//!   capability of the *bounding* set back. `PR_SET_NO_NEW_PRIVS` stops that: under it, exec
//!   never grants more than the caller's permitted set (Kubernetes sets it too with
//!   `allowPrivilegeEscalation: false`). Children therefore run with exactly the kept set.

#![allow(unsafe_code)]

use std::io;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::time::{Duration, Instant};

/// Capability numbers (linux/capability.h).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Capability {
    SetPcap = 8,
    NetBindService = 10,
    NetAdmin = 12,
    NetRaw = 13,
}

impl Capability {
    pub fn bit(self) -> u64 {
        1 << self as u32
    }
}

/// The capabilities resync needs, as a mask: `NET_ADMIN` always, `NET_RAW` too (kept only if the
/// process was granted it: iptables-legacy).
pub fn resync_capabilities() -> u64 {
    Capability::NetAdmin.bit() | Capability::NetRaw.bit()
}

/// Why dropping privileges failed.
#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    #[error("{call}: {source}")]
    Syscall { call: &'static str, source: io::Error },
    #[error("threads {tids:?} still hold capabilities beyond {kept:#x} or lack no_new_privs")]
    ThreadsNotDropped { tids: Vec<i32>, kept: u64 },
}

fn sys(call: &'static str) -> PrivilegeError {
    PrivilegeError::Syscall { call, source: io::Error::last_os_error() }
}

/// The outcome, for the start-up log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dropped {
    /// Permitted set before.
    pub before: u64,
    /// Permitted = effective set after (the kept capabilities the process had).
    pub kept: u64,
    /// Whether the bounding set was reduced too (needs `CAP_SETPCAP`).
    pub bounding_reduced: bool,
    /// Threads changed.
    pub threads: usize,
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// The calling thread's (effective, permitted) sets.
fn capget() -> Result<(u64, u64), PrivilegeError> {
    let mut header = CapHeader { version: LINUX_CAPABILITY_VERSION_3, pid: 0 };
    let mut data = [CapData::default(); 2];
    // SAFETY: header and a two-element data array (version 3 layout) are valid for the call.
    if unsafe { libc::syscall(libc::SYS_capget, &mut header as *mut CapHeader, data.as_mut_ptr()) } != 0 {
        return Err(sys("capget"));
    }
    let join = |lo: u32, hi: u32| (hi as u64) << 32 | lo as u64;
    Ok((join(data[0].effective, data[1].effective), join(data[0].permitted, data[1].permitted)))
}

/// The mask every thread is set to; read by the signal handler.
static TARGET: AtomicU64 = AtomicU64::new(0);
/// Threads that ran the handler (successfully or not) in the current round.
static ACKS: AtomicUsize = AtomicUsize::new(0);
static FAILURES: AtomicUsize = AtomicUsize::new(0);

/// Applies `TARGET` to the calling thread: no_new_privs, bounding set (best effort), ambient
/// cleared, then effective = permitted = kept, inheritable empty. Only raw syscalls and atomics:
/// it runs inside a signal handler. Returns whether capset succeeded.
fn apply_to_current_thread() -> bool {
    let keep = TARGET.load(SeqCst);
    // SAFETY: prctl and capset with plain integer arguments and pointers to locals.
    unsafe {
        libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
        for cap in 0..64u64 {
            if keep & (1 << cap) == 0 {
                // EINVAL past the kernel's last capability, EPERM without CAP_SETPCAP: both fine.
                libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0);
            }
        }
        libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0);
        let mut header = CapHeader { version: LINUX_CAPABILITY_VERSION_3, pid: 0 };
        let (lo, hi) = (keep as u32, (keep >> 32) as u32);
        let data = [
            CapData { effective: lo, permitted: lo, inheritable: 0 },
            CapData { effective: hi, permitted: hi, inheritable: 0 },
        ];
        libc::syscall(libc::SYS_capset, &mut header as *mut CapHeader, data.as_ptr()) == 0
    }
}

extern "C" fn on_signal(_: libc::c_int) {
    // SAFETY: errno is thread-local; saved and restored so the interrupted code never sees ours.
    let errno = unsafe { *libc::__errno_location() };
    if !apply_to_current_thread() {
        FAILURES.fetch_add(1, SeqCst);
    }
    ACKS.fetch_add(1, SeqCst);
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = errno };
}

fn gettid() -> i32 {
    // SAFETY: gettid has no arguments and cannot fail.
    unsafe { libc::syscall(libc::SYS_gettid) as i32 }
}

fn thread_ids() -> io::Result<Vec<i32>> {
    let mut tids = Vec::new();
    for entry in std::fs::read_dir("/proc/self/task")? {
        if let Some(tid) = entry?.file_name().to_str().and_then(|s| s.parse().ok()) {
            tids.push(tid);
        }
    }
    Ok(tids)
}

/// A thread's (CapEff, CapPrm, NoNewPrivs) from /proc; `None` if it exited meanwhile.
fn thread_state(tid: i32) -> Option<(u64, u64, bool)> {
    let status = std::fs::read_to_string(format!("/proc/self/task/{tid}/status")).ok()?;
    let field = |name: &str| {
        status.lines().find_map(|l| l.strip_prefix(name)).map(|v| v.trim().to_string()).unwrap_or_default()
    };
    let eff = u64::from_str_radix(&field("CapEff:"), 16).ok()?;
    let prm = u64::from_str_radix(&field("CapPrm:"), 16).ok()?;
    Some((eff, prm, field("NoNewPrivs:") == "1"))
}

/// The signal used to reach other threads: a real-time one nothing else in nodedns uses.
fn broadcast_signal() -> libc::c_int {
    libc::SIGRTMIN() + 5
}

/// Reduces every thread of the process to `keep ∩ permitted` (see the module doc) and verifies
/// it. Threads started later inherit the reduced sets.
pub fn keep_only(keep: u64) -> Result<Dropped, PrivilegeError> {
    let (_, before) = capget()?;
    let kept = keep & before;
    let bounding_reduced = before & Capability::SetPcap.bit() != 0;
    TARGET.store(kept, SeqCst);

    let sig = broadcast_signal();
    // SAFETY: a zeroed sigaction is valid; the handler only calls async-signal-safe syscalls.
    let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as usize;
        action.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut action.sa_mask);
        if libc::sigaction(sig, &action, &mut old) != 0 {
            return Err(sys("sigaction"));
        }
    }
    let result = drop_everywhere(kept, sig);
    // SAFETY: restores the previous disposition saved above.
    unsafe { libc::sigaction(sig, &old, std::ptr::null_mut()) };
    let threads = result?;
    Ok(Dropped { before, kept, bounding_reduced, threads })
}

fn drop_everywhere(kept: u64, sig: libc::c_int) -> Result<usize, PrivilegeError> {
    if !apply_to_current_thread() {
        return Err(sys("capset"));
    }
    let me = gettid();
    // SAFETY: getpid cannot fail.
    let pid = unsafe { libc::getpid() };
    // Threads may be created while this runs (they inherit from their creator, which may not have
    // been reached yet), so repeat until every thread verifies, a bounded number of times.
    for _round in 0..5 {
        let tids = thread_ids().map_err(|source| PrivilegeError::Syscall { call: "read /proc/self/task", source })?;
        let pending: Vec<i32> = tids
            .iter()
            .copied()
            .filter(|&t| t != me && thread_state(t).is_some_and(|(e, p, nnp)| e != kept || p != kept || !nnp))
            .collect();
        if pending.is_empty() {
            return Ok(tids.len());
        }
        ACKS.store(0, SeqCst);
        FAILURES.store(0, SeqCst);
        let mut sent = 0;
        for &tid in &pending {
            // SAFETY: tgkill with our own pid and a tid from /proc; ESRCH if it exited.
            if unsafe { libc::syscall(libc::SYS_tgkill, pid, tid, sig) } == 0 {
                sent += 1;
            }
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        while ACKS.load(SeqCst) < sent && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        if FAILURES.load(SeqCst) > 0 {
            return Err(PrivilegeError::Syscall {
                call: "capset in another thread",
                source: io::Error::from(io::ErrorKind::PermissionDenied),
            });
        }
    }
    let tids = thread_ids().map_err(|source| PrivilegeError::Syscall { call: "read /proc/self/task", source })?;
    let stuck: Vec<i32> = tids
        .into_iter()
        .filter(|&t| thread_state(t).is_some_and(|(e, p, nnp)| e != kept || p != kept || !nnp))
        .collect();
    Err(PrivilegeError::ThreadsNotDropped { tids: stuck, kept })
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHILD_ENV: &str = "NODEDNS_PRIVILEGES_TEST_CHILD";

    /// Runs in a fresh copy of this test binary (capabilities cannot be regained, so the test
    /// process itself must keep them): spawns threads, drops, and checks every thread, the
    /// process status and an exec'd child.
    #[test]
    fn child_body_drops_capabilities_in_every_thread() {
        if std::env::var_os(CHILD_ENV).is_none() {
            return; // only meaningful inside the subprocess started below
        }
        let (_, before) = capget().unwrap();
        let parked: Vec<_> = (0..4)
            .map(|_| {
                std::thread::spawn(|| {
                    // Blocked in a syscall, as UDP workers are in recvmmsg.
                    std::thread::sleep(Duration::from_secs(3));
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(50));
        let d = keep_only(resync_capabilities()).unwrap();
        assert_eq!(d.kept, resync_capabilities() & before);
        assert!(d.threads >= 5, "{d:?}");
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let eff = status.lines().find_map(|l| l.strip_prefix("CapEff:")).unwrap().trim();
        assert_eq!(u64::from_str_radix(eff, 16).unwrap(), d.kept, "CapEff after the drop");
        assert!(status.contains("NoNewPrivs:\t1"));
        for tid in thread_ids().unwrap() {
            if let Some((e, p, nnp)) = thread_state(tid) {
                assert_eq!((e, p, nnp), (d.kept, d.kept, true), "thread {tid}");
            }
        }
        // New threads inherit the reduced set.
        let t = std::thread::spawn(|| capget().unwrap()).join().unwrap();
        assert_eq!(t, (d.kept, d.kept));
        // A root exec (as resync runs nft/iptables) does not get the bounding set back.
        let out = std::process::Command::new("/bin/cat").arg("/proc/self/status").output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let child_eff = text.lines().find_map(|l| l.strip_prefix("CapEff:")).unwrap().trim();
        assert_eq!(u64::from_str_radix(child_eff, 16).unwrap() & !d.kept, 0, "exec'd child: {text}");
        // Privileged ports are out of reach once NET_BIND_SERVICE is gone (when the kernel
        // reserves them at all: containers often set ip_unprivileged_port_start to 0).
        let start: u32 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(1024);
        if start > 53 && before & Capability::NetBindService.bit() != 0 {
            let e = std::net::UdpSocket::bind("127.0.0.1:53").expect_err("port 53 needs NET_BIND_SERVICE");
            assert_eq!(e.kind(), io::ErrorKind::PermissionDenied);
        }
        for p in parked {
            p.join().unwrap();
        }
        println!("CHILD-OK kept={:#x} before={before:#x}", d.kept);
    }

    #[test]
    fn drops_in_a_subprocess() {
        let exe = std::env::current_exe().unwrap();
        let out = std::process::Command::new(exe)
            .args(["--exact", "privileges::tests::child_body_drops_capabilities_in_every_thread", "--nocapture"])
            .env(CHILD_ENV, "1")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("CHILD-OK"),
            "child failed:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // This process is untouched.
        let (_, p) = capget().unwrap();
        if p & Capability::NetBindService.bit() != 0 {
            assert!(stdout.contains("kept=0x3000") || stdout.contains("kept=0x1000"), "{stdout}");
        }
    }
}
