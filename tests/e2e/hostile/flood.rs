//! Connection floods against the real daemon: many idle TCP clients, slowloris clients, and
//! clients that never read their answers. Sources are spread over 127.x addresses (all of
//! 127.0.0.0/8 is loopback on Linux) so the per-client connection cap does not hide the test.

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::time::Duration;

/// The `n`-th client source address: 127.77.<n / 200>.<n % 200 + 1>.
pub fn client_ip(n: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 77, (n / 200) as u8, (n % 200) as u8 + 1))
}

/// Opens one connection from each of `sources` to `server` (std cannot bind before connecting;
/// tokio's `TcpSocket` can), returned as blocking std streams. Connections the server refuses
/// (accepted, then closed at once) still count: the caller checks what it can read.
pub fn connect_all(sources: &[IpAddr], server: SocketAddr) -> Vec<TcpStream> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_io().enable_time().build().unwrap();
    rt.block_on(async {
        let mut out = Vec::with_capacity(sources.len());
        for &source in sources {
            let s = tokio::net::TcpSocket::new_v4().unwrap();
            s.bind(SocketAddr::new(source, 0)).unwrap();
            let stream = tokio::time::timeout(Duration::from_secs(5), s.connect(server))
                .await
                .unwrap_or_else(|_| panic!("connect from {source} timed out"))
                .unwrap_or_else(|e| panic!("connect from {source}: {e}"));
            let std = stream.into_std().unwrap();
            std.set_nonblocking(false).unwrap();
            out.push(std);
        }
        out
    })
}

/// The daemon's resident memory in KiB (VmRSS).
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Open descriptors of a process.
pub fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

/// The soft open-file limit of this process; raised to the hard limit with prlimit(1) if it is
/// below `need` (the daemon, a child, inherits the raised limit when started afterwards).
pub fn ensure_nofile(need: u64) -> u64 {
    let soft = || -> u64 {
        std::fs::read_to_string("/proc/self/limits")
            .unwrap_or_default()
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .and_then(|l| l.split_whitespace().nth(3).and_then(|v| v.parse().ok()))
            .unwrap_or(0)
    };
    if soft() < need {
        let _ = std::process::Command::new("prlimit")
            .arg(format!("--pid={}", std::process::id()))
            .arg("--nofile=unlimited:")
            .status();
        let hard = std::fs::read_to_string("/proc/self/limits")
            .unwrap_or_default()
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .and_then(|l| l.split_whitespace().nth(4).map(str::to_string))
            .unwrap_or_default();
        let _ = std::process::Command::new("prlimit")
            .arg(format!("--pid={}", std::process::id()))
            .arg(format!("--nofile={hard}:{hard}"))
            .status();
    }
    soft()
}

/// Starts a slowloris on `conn`: a prefix announcing `len` bytes and then only the first byte.
pub fn start_slow_frame(conn: &mut TcpStream, len: u16) -> std::io::Result<()> {
    conn.write_all(&len.to_be_bytes())?;
    conn.write_all(&[0xab])
}
