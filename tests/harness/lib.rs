//! End-to-end harness: runs the real `nodedns` binary as a child process with a generated config,
//! waits for readiness, scrapes metrics, and cleans up on drop.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub use nodedns_testkit as testkit;

pub mod load;

/// The `nodedns` binary: `$NODEDNS_BIN`, else `target/<profile>/nodedns` next to this test.
pub fn nodedns_bin() -> PathBuf {
    if let Ok(p) = std::env::var("NODEDNS_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<test> → target/<profile>/nodedns
    let profile_dir = exe.parent().and_then(Path::parent).expect("target dir");
    let bin = profile_dir.join("nodedns");
    assert!(bin.exists(), "{} not found: build it first (`cargo build -p nodedns`), or set NODEDNS_BIN", bin.display());
    bin
}

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A loopback address and port nobody uses: a distinct 127.x address per call (so parallel
/// tests never collide) and a port free for both UDP and TCP there.
pub fn free_addr() -> SocketAddr {
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let pid = std::process::id();
    for attempt in 0..1000u32 {
        let x = (pid.wrapping_mul(7919).wrapping_add(n * 131 + attempt)) % 60_000;
        let ip = std::net::Ipv4Addr::new(127, 10 + (x / 250 % 200) as u8, (x % 250) as u8 + 1, 1 + (n % 250) as u8);
        let Ok(u) = UdpSocket::bind((ip, 0)) else { continue };
        let port = u.local_addr().unwrap().port();
        if std::net::TcpListener::bind((ip, port)).is_ok() {
            return SocketAddr::new(ip.into(), port);
        }
    }
    panic!("no free loopback address");
}

/// A UDP client socket on 127.0.0.1 with a deep receive buffer, so a load test's own client is
/// never the place answers are lost when the machine is busy.
pub fn client_socket() -> UdpSocket {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).unwrap();
    let _ = s.set_recv_buffer_size(8 << 20);
    s.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into()).unwrap();
    s.into()
}

/// A running nodedns.
pub struct Daemon {
    child: Option<Child>,
    pub dns: SocketAddr,
    pub admin: SocketAddr,
    pub dir: PathBuf,
    pub config_path: PathBuf,
    log_path: PathBuf,
}

/// Placeholders in config templates: `{DNS}` and `{ADMIN}` become the daemon's addresses.
pub fn render(template: &str, dns: SocketAddr, admin: SocketAddr) -> String {
    template.replace("{DNS}", &dns.to_string()).replace("{ADMIN}", &admin.to_string())
}

impl Daemon {
    /// Starts nodedns with `template` (placeholders `{DNS}`, `{ADMIN}`) and waits until it is
    /// ready (an upstream answered). Panics with the daemon's log if it is not within 10 s.
    pub fn start(template: &str) -> Daemon {
        let d = Daemon::spawn(template, &[]);
        d.wait_ready(Duration::from_secs(10));
        d
    }

    /// Starts nodedns without waiting.
    pub fn spawn(template: &str, env: &[(&str, &str)]) -> Daemon {
        let dns = free_addr();
        let admin = free_addr();
        Daemon::spawn_at(template, dns, admin, env)
    }

    pub fn spawn_at(template: &str, dns: SocketAddr, admin: SocketAddr, env: &[(&str, &str)]) -> Daemon {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("nodedns-e2e-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let config_path = dir.join("nodedns.yaml");
        std::fs::write(&config_path, render(template, dns, admin)).unwrap();
        let log_path = dir.join("nodedns.log");
        let log = std::fs::File::create(&log_path).unwrap();
        let mut cmd = Command::new(nodedns_bin());
        cmd.arg("run")
            .arg("--config")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .env("RUST_LOG", std::env::var("NODEDNS_TEST_LOG").unwrap_or_else(|_| "info".into()));
        // An empty value removes the variable (`("RUST_LOG", "")`: the config's `log.level` rules).
        for (k, v) in env {
            if v.is_empty() {
                cmd.env_remove(k);
            } else {
                cmd.env(k, v);
            }
        }
        let child = cmd.spawn().expect("spawn nodedns");
        Daemon { child: Some(child), dns, admin, dir, config_path, log_path }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Waits for `/ready` to answer 200; panics with the log otherwise.
    pub fn wait_ready(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some((200, _)) = self.try_get("/ready") {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("nodedns did not become ready within {timeout:?}; log:\n{}", self.log());
    }

    /// GET `path` on the admin port; `None` if it cannot connect.
    pub fn try_get(&self, path: &str) -> Option<(u16, String)> {
        http_get(self.admin, path)
    }

    pub fn get(&self, path: &str) -> (u16, String) {
        self.try_get(path).unwrap_or_else(|| panic!("admin {path} unreachable; log:\n{}", self.log()))
    }

    pub fn metrics(&self) -> String {
        let (code, body) = self.get("/metrics");
        assert_eq!(code, 200);
        body
    }

    /// The value of one sample, e.g. `nodedns_cache_hits_total` or
    /// `nodedns_responses_total{rcode="NXDOMAIN"}` (labels as rendered).
    pub fn metric(&self, sample: &str) -> f64 {
        metric_value(&self.metrics(), sample).unwrap_or(0.0)
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY-free: kill(1) through the shell-free nix-less path: use /bin/kill.
        let _ = Command::new("kill").arg(format!("-{sig}")).arg(self.pid().to_string()).status();
    }

    /// Waits for the process to exit; returns its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut()?;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Some(status.code().unwrap_or(-1));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }

    /// SIGTERM and wait for a clean exit.
    pub fn stop(&mut self) -> Option<i32> {
        self.signal(15);
        self.wait_exit(Duration::from_secs(15))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- nodedns log ({}) ---\n{}", self.log_path.display(), self.log());
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A minimal HTTP/1.0 GET.
pub fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").ok()?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).ok()?;
    let code = resp.split_whitespace().nth(1)?.parse().ok()?;
    let body = resp.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Some((code, body))
}

/// Finds `sample` (name plus rendered labels) in Prometheus text and returns its value.
pub fn metric_value(text: &str, sample: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (name, value) = l.rsplit_once(' ')?;
        (name == sample).then(|| value.parse().ok()).flatten()
    })
}

/// Sum of every sample of `name` whose labels contain all of `labels` (e.g. `zone="x."`).
pub fn metric_sum(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (sample, value) = l.rsplit_once(' ')?;
            let (n, rest) = sample.split_once('{').unwrap_or((sample, ""));
            (n == name && labels.iter().all(|x| rest.contains(x))).then(|| value.parse::<f64>().ok()).flatten()
        })
        .sum()
}

/// The A records of an answer, as text ("10.0.0.1"), in answer order.
pub fn a_addresses(m: &hickory_proto::op::Message) -> Vec<String> {
    m.answers
        .iter()
        .filter_map(|r| match &r.data {
            hickory_proto::rr::RData::A(a) => Some(a.0.to_string()),
            _ => None,
        })
        .collect()
}

/// Runs `dig` and returns its stdout.
pub fn dig(server: SocketAddr, args: &[&str]) -> String {
    let out = Command::new("dig")
        .arg(format!("@{}", server.ip()))
        .arg("-p")
        .arg(server.port().to_string())
        .args(["+time=2", "+tries=1"])
        .args(args)
        .output()
        .expect("dig (bind9-dnsutils) must be installed");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Whether a command exists.
pub fn have(cmd: &str) -> bool {
    Command::new("sh").arg("-c").arg(format!("command -v {cmd} >/dev/null 2>&1")).status().is_ok_and(|s| s.success())
}

/// A Knot DNS authoritative server (the CoreDNS stand-in) on a loopback address, serving the
/// given zones (`(origin, zone file text)`), killed on drop.
pub struct Knot {
    child: Child,
    pub addr: SocketAddr,
    dir: PathBuf,
}

impl Knot {
    pub fn start(zones: &[(&str, &str)]) -> Knot {
        let addr = free_addr();
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("nodedns-knot-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut conf = format!(
            "server:\n  listen: {}@{}\n  rundir: {d}\n  background-workers: 1\n  udp-workers: 1\n  tcp-workers: 1\n  tcp-idle-timeout: 300\ndatabase:\n  storage: {d}\nlog:\n  - target: stderr\n    any: warning\ntemplate:\n  - id: default\n    storage: {d}\n    semantic-checks: off\nzone:\n",
            addr.ip(),
            addr.port(),
            d = dir.display()
        );
        for (origin, text) in zones {
            let file = dir.join(format!("{}.zone", origin.trim_end_matches('.')));
            std::fs::write(&file, text).unwrap();
            conf.push_str(&format!("  - domain: {origin}\n    file: {}\n", file.display()));
        }
        let conf_path = dir.join("knot.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let child = Command::new("knotd")
            .arg("-c")
            .arg(&conf_path)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("knot.log")).unwrap())
            .spawn()
            .expect("knotd (package knot) must be installed");
        let k = Knot { child, addr, dir };
        // Ready once it answers over TCP.
        let deadline = Instant::now() + Duration::from_secs(10);
        let probe = zones.first().map(|z| z.0).unwrap_or(".");
        while Instant::now() < deadline {
            if testkit::query_tcp(addr, probe, hickory_proto::rr::RecordType::SOA, Duration::from_millis(300)).is_ok() {
                return k;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("knotd did not start: {}", std::fs::read_to_string(k.dir.join("knot.log")).unwrap_or_default());
    }
}

impl Drop for Knot {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Tears a network-namespace lab down: kills its processes, deletes its namespaces and the
/// `/etc/netns/<name>` resolver directory of `pod_netns`, and removes its work directory —
/// kept (and named) when the test is panicking, so its logs can be read.
pub fn tear_down_lab<'a>(
    processes: impl IntoIterator<Item = &'a mut Child>,
    namespaces: &[&str],
    pod_netns: &str,
    dir: &Path,
) {
    for p in processes {
        let _ = p.kill();
        let _ = p.wait();
    }
    for ns in namespaces {
        let _ = Command::new("ip").args(["netns", "del", ns]).status();
    }
    let _ = std::fs::remove_dir_all(PathBuf::from("/etc/netns").join(pod_netns));
    if std::thread::panicking() {
        eprintln!("--- lab files kept in {} ---", dir.display());
    } else {
        let _ = std::fs::remove_dir_all(dir);
    }
}
