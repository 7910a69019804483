//! The test-facing handle of the fake upstream: start, script, inspect, stop.

use std::io;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use hickory_proto::rr::{Record, RecordType};
use parking_lot::Mutex;

use crate::behaviour::Behaviour;
use crate::script::{Script, SoaTimers, normalize_name, records_from_text};
use crate::server::ServerThread;

/// How long a control call waits for the server thread before concluding it is wedged.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(10);

/// How many times `start` tries to find a port free for both UDP and TCP: the kernel picks the
/// TCP port, and another process may already hold the same number for UDP.
const SAME_PORT_BIND_ATTEMPTS: usize = 32;

/// The transport a query arrived over.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Transport {
    /// One datagram per query.
    Udp,
    /// RFC 1035 §4.2.2 length-prefixed messages on a stream.
    Tcp,
}

/// One query as the fake upstream received it, recorded before its [`Behaviour`] is applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoggedQuery {
    /// The question name, ASCII lower-case, without the trailing dot (the root is `"."`).
    pub name: String,
    /// The question type.
    pub rtype: RecordType,
    /// Whether it came over UDP or TCP.
    pub transport: Transport,
    /// The query's message ID.
    pub id: u16,
    /// When the server read it.
    pub at: Instant,
    /// The client's address.
    pub peer: SocketAddr,
}

/// State shared by the test-facing handle and the server thread.
#[derive(Debug, Default)]
pub(crate) struct Shared {
    /// The canned data and behaviours; held only for lookups, never across an await.
    pub(crate) script: Mutex<Script>,
    /// Every query received, in arrival order. Unbounded: tests are short.
    pub(crate) log: Mutex<Vec<LoggedQuery>>,
    /// TCP connections accepted since start.
    pub(crate) tcp_connections_accepted: AtomicUsize,
    /// TCP connections accepted and not yet closed by either side.
    pub(crate) open_tcp_connections: AtomicUsize,
    /// The overload model, if set, and what it saw.
    pub(crate) overload: Arc<crate::overload::OverloadState>,
}

/// A programmable fake upstream DNS server (a stand-in for CoreDNS), serving UDP and TCP on one
/// port from its own thread and tokio runtime.
///
/// Every method is synchronous and callable from any thread, so plain `#[test]`s and
/// `#[tokio::test]`s can both use it. Changes to the script take effect for the next query that
/// arrives. Stopping (explicitly or on drop) closes every socket and joins the thread.
///
/// ```
/// use std::time::Duration;
/// use hickory_proto::rr::RecordType;
/// use nodedns_testkit::{FakeUpstream, query_udp};
///
/// let upstream = FakeUpstream::start();
/// upstream.answer("a.ns.svc.cluster.local", RecordType::A, &["10.0.0.1"], 30);
/// let reply = query_udp(upstream.addr(), "a.ns.svc.cluster.local", RecordType::A, Duration::from_secs(5)).unwrap();
/// assert_eq!(reply.answers.len(), 1);
/// assert_eq!(upstream.query_count("a.ns.svc.cluster.local.", RecordType::A), 1);
/// ```
#[derive(Debug)]
pub struct FakeUpstream {
    /// Where UDP and TCP are served.
    addr: SocketAddr,
    /// Script, log and counters, shared with the server thread.
    shared: Arc<Shared>,
    /// The server thread; `None` once stopped.
    server: Mutex<Option<ServerThread>>,
}

impl FakeUpstream {
    /// Starts a fake upstream on `127.0.0.1` at a port free for both UDP and TCP.
    ///
    /// # Panics
    ///
    /// If no loopback port can be bound, which leaves a test nothing to run against.
    pub fn start() -> Self {
        let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
        Self::start_on(loopback).unwrap_or_else(|error| panic!("cannot start fake upstream on {loopback}: {error}"))
    }

    /// Starts a fake upstream serving UDP and TCP on `addr`; with port 0, on a port the kernel
    /// picks that is free for both.
    pub fn start_on(addr: SocketAddr) -> io::Result<Self> {
        let (tcp, udp) = bind_same_port(addr)?;
        let addr = tcp.local_addr()?;
        let shared = Arc::new(Shared::default());
        let server = ServerThread::spawn(Arc::clone(&shared), tcp, udp)?;
        Ok(Self { addr, shared, server: Mutex::new(Some(server)) })
    }

    /// The address UDP and TCP are served on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Answers `(name, rtype)` with one record per datum in `data`, in presentation format
    /// (`"10.0.0.1"`, `"::1"`, `"other.example."`, `"10 mail.example."`), each with `ttl`.
    ///
    /// Replaces any earlier answer for `(name, rtype)` and any `nxdomain` for `name`.
    ///
    /// # Panics
    ///
    /// If `name` is not a domain name or a datum does not parse as `rtype`.
    pub fn answer(&self, name: &str, rtype: RecordType, data: &[&str], ttl: u32) {
        let records = records_from_text(name, rtype, data, ttl);
        self.shared.script.lock().set_records(name, rtype, records);
    }

    /// Answers `(name, rtype)` with exactly `records` as the answer section (CNAME chains,
    /// records owned by other names, mixed TTLs).
    ///
    /// Replaces any earlier answer for `(name, rtype)` and any `nxdomain` for `name`.
    pub fn answer_records(&self, name: &str, rtype: RecordType, records: Vec<Record>) {
        self.shared.script.lock().set_records(name, rtype, records);
    }

    /// Makes `name` not exist: every type gets NXDOMAIN with the zone's SOA in authority, the SOA
    /// record having TTL `soa_ttl` and MINIMUM `soa_minimum` (RFC 2308 §5). The zone is the
    /// deepest one set with [`set_zone_soa`](Self::set_zone_soa) containing `name`, otherwise
    /// its last two labels.
    ///
    /// Replaces any earlier answers for `name`.
    pub fn nxdomain(&self, name: &str, soa_ttl: u32, soa_minimum: u32) {
        let timers = SoaTimers { ttl: soa_ttl, minimum: soa_minimum };
        self.shared.script.lock().set_nxdomain(name, timers);
    }

    /// Makes `(name, rtype)` answer NOERROR with no records and the zone's SOA in authority, with
    /// the SOA's TTL and MINIMUM as given; the zone is chosen as for [`nxdomain`](Self::nxdomain).
    ///
    /// Replaces any earlier answer for `(name, rtype)` and any `nxdomain` for `name`.
    pub fn nodata(&self, name: &str, rtype: RecordType, soa_ttl: u32, soa_minimum: u32) {
        let timers = SoaTimers { ttl: soa_ttl, minimum: soa_minimum };
        self.shared.script.lock().set_nodata(name, rtype, timers);
    }

    /// Declares a zone: denials of names under `zone` carry its SOA, and names without canned
    /// data there get NXDOMAIN (NODATA if the name exists with other types or has names below it)
    /// with TTL `ttl` and MINIMUM `minimum`. Names outside every zone are denied with the root's
    /// SOA (30 s / 30 s until changed with `set_zone_soa(".", ..)`).
    pub fn set_zone_soa(&self, zone: &str, ttl: u32, minimum: u32) {
        self.shared.script.lock().set_zone(zone, SoaTimers { ttl, minimum });
    }

    /// Sets how queries for `(name, rtype)` are treated, replacing the default behaviour for
    /// them.
    ///
    /// # Panics
    ///
    /// If a [`Behaviour::DropFraction`] is outside 0.0..=1.0.
    pub fn behaviour(&self, name: &str, rtype: RecordType, behaviour: Behaviour) {
        behaviour.assert_valid();
        self.shared.script.lock().set_behaviour(name, rtype, behaviour);
    }

    /// Sets how queries without their own [`behaviour`](Self::behaviour) are treated.
    ///
    /// # Panics
    ///
    /// If a [`Behaviour::DropFraction`] is outside 0.0..=1.0.
    pub fn set_default_behaviour(&self, behaviour: Behaviour) {
        behaviour.assert_valid();
        self.shared.script.lock().set_default_behaviour(behaviour);
    }

    /// Turns UDP service off or back on; TCP is unaffected.
    ///
    /// Off closes the UDP socket, like an upstream that only listens on TCP: datagrams to the
    /// port draw ICMP port-unreachable and are not logged. (For an upstream that receives but
    /// never answers, use [`Behaviour::Drop`] instead.) On binds the same port again.
    /// Does nothing once stopped.
    ///
    /// # Panics
    ///
    /// If the UDP port cannot be bound again (something else took it while it was closed), or the
    /// server thread does not respond within 10 s.
    pub fn set_udp_enabled(&self, enabled: bool) {
        let mut server = self.server.lock();
        if let Some(server) = server.as_mut() {
            server.set_udp_enabled(self.addr, enabled, CONTROL_TIMEOUT);
        }
    }

    /// Makes the upstream die of overload ([`OverloadModel`](crate::OverloadModel)): latency grows
    /// with the queries it holds, and holding more than `die_above` kills it for `dead_for`.
    /// `None` turns the model off.
    pub fn set_overload(&self, model: Option<crate::OverloadModel>) {
        self.shared.overload.set(model);
    }

    /// The most unanswered queries the upstream held at once while the overload model was set.
    pub fn peak_held_queries(&self) -> usize {
        self.shared.overload.peak.load(Ordering::SeqCst)
    }

    /// How many times the overload model killed the upstream.
    pub fn overload_deaths(&self) -> usize {
        self.shared.overload.deaths.load(Ordering::SeqCst)
    }

    /// Every query received since start or the last [`clear_log`](Self::clear_log), in arrival
    /// order, including those that were then dropped.
    pub fn log(&self) -> Vec<LoggedQuery> {
        self.shared.log.lock().clone()
    }

    /// Forgets every logged query.
    pub fn clear_log(&self) {
        self.shared.log.lock().clear();
    }

    /// How many logged queries asked for `(name, rtype)`, over either transport.
    pub fn query_count(&self, name: &str, rtype: RecordType) -> usize {
        let name = normalize_name(name);
        self.shared.log.lock().iter().filter(|query| query.name == name && query.rtype == rtype).count()
    }

    /// How many TCP connections were accepted since start.
    pub fn tcp_connections_accepted(&self) -> usize {
        self.shared.tcp_connections_accepted.load(Ordering::SeqCst)
    }

    /// How many accepted TCP connections are still open. A connection the client closes is
    /// counted until the server has read the close, so poll with [`wait_until`](crate::wait_until).
    pub fn open_tcp_connections(&self) -> usize {
        self.shared.open_tcp_connections.load(Ordering::SeqCst)
    }

    /// Stops serving: closes the UDP socket, the TCP listener and every TCP connection, and
    /// joins the server thread. Idempotent; also done on drop. Script, log and counters stay
    /// readable.
    pub fn stop(&self) {
        let server = self.server.lock().take();
        if let Some(server) = server {
            server.stop();
        }
    }
}

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Binds TCP and UDP on the same address. With port 0 the kernel picks the TCP port and UDP
/// takes the same number, retrying if that number is already taken for UDP.
fn bind_same_port(addr: SocketAddr) -> io::Result<(TcpListener, UdpSocket)> {
    if addr.port() != 0 {
        return Ok((TcpListener::bind(addr)?, UdpSocket::bind(addr)?));
    }
    let mut last_error = None;
    for _ in 0..SAME_PORT_BIND_ATTEMPTS {
        let tcp = TcpListener::bind(addr)?;
        match UdpSocket::bind(tcp.local_addr()?) {
            Ok(udp) => return Ok((tcp, udp)),
            Err(error) if error.kind() == io::ErrorKind::AddrInUse => last_error = Some(error),
            Err(error) => return Err(error),
        }
    }
    Err(last_error.unwrap_or_else(|| io::Error::from(io::ErrorKind::AddrInUse)))
}
