//! Dropping capabilities in every thread of the process. Which capabilities to keep is the
//! daemon's policy (`nodedns::privileges`); this module is the mechanism.
//!
//! Two Linux details decide how it must be done:
//! - Capabilities and `no_new_privs` are per *thread* (capset(2) changes only the caller). By the
//!   time sockets are bound the tokio runtime, the UDP workers and the admin thread exist, so the
//!   change is applied in every thread: the calling one directly, each other one from a signal
//!   handler run in that thread (what glibc does for setuid, and libcap's psx for capabilities).
//!   The result is verified per thread from /proc/self/task/*/status.
//! - nodedns is uid 0, and a root `execve` (of `nft` or `iptables` during resync) gets every
//!   capability of the *bounding* set back. `PR_SET_NO_NEW_PRIVS` stops that: under it, exec
//!   never grants more than the caller's permitted set (Kubernetes sets it too with
//!   `allowPrivilegeEscalation: false`). Children therefore run with exactly the kept set.
//!
//! The signal handler and the statics it uses (`TARGET`, `ACKS`, `FAILURES`, and a lock that
//! serializes drops) are nodedns's one piece of process-wide mutable state: a handler cannot be
//! given arguments, and the kernel offers no call that changes another thread's credentials. [`keep_only`] installs
//! the handler only for the duration of one drop and restores the previous disposition.

use std::io;
use std::sync::Mutex;
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
pub fn capget() -> Result<(u64, u64), PrivilegeError> {
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
/// Held for the whole of [`keep_only`]: the statics above describe one drop at a time.
static ONE_DROP_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Applies `TARGET` to the calling thread: no_new_privs, bounding set (best effort), ambient
/// cleared, then effective = permitted = kept, inheritable empty. Only raw syscalls and atomics:
/// it runs inside a signal handler. Returns whether capset succeeded.
fn apply_to_current_thread() -> bool {
    let keep = TARGET.load(SeqCst);
    // SAFETY: prctl(2) with integer arguments only; it touches no memory of ours.
    unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
    for cap in 0..64u64 {
        if keep & (1 << cap) == 0 {
            // EINVAL past the kernel's last capability, EPERM without CAP_SETPCAP: both fine.
            // SAFETY: as above, integer arguments only.
            unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) };
        }
    }
    // SAFETY: as above, integer arguments only.
    unsafe { libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) };
    let mut header = CapHeader { version: LINUX_CAPABILITY_VERSION_3, pid: 0 };
    let (lo, hi) = (keep as u32, (keep >> 32) as u32);
    let data = [
        CapData { effective: lo, permitted: lo, inheritable: 0 },
        CapData { effective: hi, permitted: hi, inheritable: 0 },
    ];
    // SAFETY: capset(2) reads a version-3 header and a two-element data array, both live locals
    // of the layout linux/capability.h defines (#[repr(C)] above).
    unsafe { libc::syscall(libc::SYS_capset, &mut header as *mut CapHeader, data.as_ptr()) == 0 }
}

extern "C" fn on_signal(_: libc::c_int) {
    // errno is thread-local; saved and restored so the interrupted code never sees ours.
    let errno = nix::errno::Errno::last_raw();
    if !apply_to_current_thread() {
        FAILURES.fetch_add(1, SeqCst);
    }
    ACKS.fetch_add(1, SeqCst);
    nix::errno::Errno::set_raw(errno);
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
/// Concurrent calls run one after the other.
pub fn keep_only(keep: u64) -> Result<Dropped, PrivilegeError> {
    // A panic while holding it leaves nothing half-done that matters here: the next call redoes
    // the whole drop.
    let _one = ONE_DROP_AT_A_TIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let (_, before) = capget()?;
    let kept = keep & before;
    let bounding_reduced = before & Capability::SetPcap.bit() != 0;
    TARGET.store(kept, SeqCst);

    let sig = broadcast_signal();
    // SAFETY: sigaction is a plain C struct for which all-zero is a valid value (no handler,
    // empty mask, no flags).
    let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
    action.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as usize;
    action.sa_flags = libc::SA_RESTART;
    // SAFETY: as above, for the previous disposition the kernel writes back.
    let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: sigemptyset writes only the mask of the live local `action`. The handler it then
    // installs only loads and adds atomics and makes raw syscalls (prctl, capset), all
    // async-signal-safe, and restores errno; `sig` is a real-time signal nothing else uses.
    if unsafe { libc::sigemptyset(&mut action.sa_mask) != 0 || libc::sigaction(sig, &action, &mut old) != 0 } {
        return Err(sys("sigaction"));
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
    let me = nix::unistd::gettid().as_raw();
    let pid = std::process::id() as libc::pid_t;
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
            // SAFETY: tgkill(2) with integer arguments only: our own pid, a tid from /proc and the
            // signal whose handler is installed above. A thread that exited meanwhile gives ESRCH;
            // a tid reused meanwhile can only be another thread of ours (tgkill checks the thread
            // group), which runs the same handler.
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

    const CHILD_ENV: &str = "NODEDNS_CAPS_TEST_CHILD";
    /// What the daemon keeps for resync (nodedns::privileges::resync_capabilities).
    fn resync() -> u64 {
        Capability::NetAdmin.bit() | Capability::NetRaw.bit()
    }

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
        let d = keep_only(resync()).unwrap();
        assert_eq!(d.kept, resync() & before);
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
    fn capget_reads_what_proc_reports() {
        let (eff, prm) = capget().unwrap();
        let (proc_eff, proc_prm, _) = thread_state(nix::unistd::gettid().as_raw()).unwrap();
        assert_eq!((eff, prm), (proc_eff, proc_prm));
        assert_eq!(eff & !prm, 0, "effective is a subset of permitted");
    }

    #[test]
    fn drops_in_a_subprocess() {
        let exe = std::env::current_exe().unwrap();
        let out = std::process::Command::new(exe)
            .args(["--exact", "caps::tests::child_body_drops_capabilities_in_every_thread", "--nocapture"])
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
