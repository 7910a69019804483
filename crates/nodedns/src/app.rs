//! The app: one nodedns built from a [`Config`] and a metrics registry, served on sockets passed
//! in until a shutdown future resolves, then stopped in one ordered, deadline-bound sequence.
//!
//! Everything process-level stays outside: parsing the command line, signals and dropping
//! privileges are `main.rs`'s; the node-facing start steps (node setup, the rollout gate,
//! receiving sockets from a predecessor, binding) are [`crate::daemon`]'s. An end-to-end test
//! runs the app in-process on `127.0.0.1:0` ([`Sockets::bind`]) with a channel as its shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

use crate::admin::{self, AdminListener, AdminState};
use crate::config::Config;
use crate::dnstap::{Dnstap, DnstapTaps};
use crate::logging::LogControl;
use crate::metrics::{CacheSample, Metrics, ScrapeSample, ScrapedCollector, upstream_sample};
use crate::querylog::QueryLog;
use crate::readiness::{Phase, Readiness};
use crate::reload::KubeDnsState;
use crate::server::front::{self, FrontDoor};
use crate::server::udp::{self, WorkerControl};
use crate::server::{Listeners, tcp};
use nodedns_resolver::{Clock, Resolver};

/// Node teardown gets this long at shutdown: a hung firewall tool must not keep the pod in
/// Terminating until the kubelet's SIGKILL (the rules are fail-open anyway).
pub const TEARDOWN_TIMEOUT: Duration = Duration::from_secs(10);
/// Background tasks get this long to end once told to stop; the rest are aborted.
pub const TASK_STOP_TIMEOUT: Duration = Duration::from_secs(2);
/// dnstap's STOP/FINISH handshake at exit.
pub const DNSTAP_STOP_TIMEOUT: Duration = Duration::from_secs(3);

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot bind listeners: {0}")]
    Bind(std::io::Error),
    #[error("cannot start the runtime: {0}")]
    Runtime(std::io::Error),
    #[error("node setup: {0}")]
    Node(#[from] nodedns_node::NodeError),
}

/// How the shutdown went: what did not finish in time.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Stopped {
    /// Client queries still waiting on the miss path, or queued for it, at the drain deadline.
    pub unanswered_at_deadline: bool,
    /// Background tasks that did not stop within [`TASK_STOP_TIMEOUT`] and were aborted.
    pub aborted_tasks: Vec<&'static str>,
}

/// What the app needs to know beyond the config.
#[derive(Clone, Debug)]
pub struct AppOptions {
    /// The config file, watched for hot reload (none: the embedded default, never reloaded).
    pub config_path: Option<PathBuf>,
    /// When the process started: start-to-ready is logged from it.
    pub started: Instant,
    /// The command line's replacements of config file values (`--admin-listen`), applied again
    /// to every reloaded file: a reload neither reverts them nor warns about the file's value.
    pub overrides: nodedns_config::change::CliOverrides,
    /// Enables `/debug/stall` (tests only).
    pub test_hooks: bool,
    /// Changes `log.level` on reload (from [`crate::logging::init`]; the default controls nothing).
    pub log: LogControl,
}

impl AppOptions {
    pub fn new(config_path: Option<PathBuf>) -> Self {
        Self {
            config_path,
            started: Instant::now(),
            overrides: Default::default(),
            test_hooks: false,
            log: LogControl::default(),
        }
    }
}

/// The sockets the app serves on, bound (or received) before it runs.
pub struct Sockets {
    pub dns: Listeners,
    pub admin: Vec<std::net::TcpListener>,
    /// Whether the DNS sockets came from a predecessor (handover).
    pub inherited: bool,
}

impl Sockets {
    /// Binds `config.listen` (`workers` UDP sockets and one TCP listener each) and
    /// `config.admin.listen`. Port 0 is allowed: each address's sockets share the one port
    /// the first of them got (see [`Sockets::dns_addrs`]).
    pub fn bind(config: &Config, workers: usize) -> std::io::Result<Sockets> {
        let dns = Listeners::bind(&config.listen, workers)?;
        let admin = config.admin.listen.iter().map(|a| crate::server::bind_tcp(*a)).collect::<Result<_, _>>()?;
        Ok(Sockets { dns, admin, inherited: false })
    }

    /// The DNS addresses as bound.
    pub fn dns_addrs(&self) -> Vec<SocketAddr> {
        self.dns.tcp.iter().map(|(a, _)| *a).collect()
    }

    /// The admin addresses as bound.
    pub fn admin_addrs(&self) -> Vec<SocketAddr> {
        self.admin.iter().filter_map(|l| l.local_addr().ok()).collect()
    }
}

/// UDP workers: as configured, else one per CPU this process may run on.
pub fn worker_count(config: &Config) -> usize {
    if config.server.workers > 0 {
        return config.server.workers;
    }
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

/// Every background task of the app, spawned from this one list and stopped together.
struct BackgroundTasks {
    stop: watch::Sender<bool>,
    tasks: Vec<(&'static str, JoinHandle<()>)>,
}

impl BackgroundTasks {
    fn new() -> Self {
        Self { stop: watch::channel(false).0, tasks: Vec::new() }
    }

    /// Turns true when the app stops: every task's loop watches it.
    fn stop_signal(&self) -> watch::Receiver<bool> {
        self.stop.subscribe()
    }

    fn spawn(&mut self, name: &'static str, task: impl Future<Output = ()> + Send + 'static) {
        self.tasks.push((name, tokio::spawn(task)));
    }

    /// Tells every task to stop and waits for them until `deadline`; the rest are aborted, and
    /// their names returned.
    async fn stop(self, deadline: tokio::time::Instant) -> Vec<&'static str> {
        let _ = self.stop.send(true);
        let mut aborted = Vec::new();
        for (name, task) in self.tasks {
            let abort = task.abort_handle();
            if tokio::time::timeout_at(deadline, task).await.is_err() {
                warn!(task = name, "background task did not stop in time; aborted");
                abort.abort();
                aborted.push(name);
            }
        }
        aborted
    }
}

/// One nodedns.
pub struct App {
    /// The config file's content as loaded (reload compares against it).
    config: Config,
    /// The merged config in force (the file's and the kube-dns ConfigMap's), updated by reload.
    in_force: watch::Sender<Config>,
    /// What was last read from the kube-dns ConfigMap (merged into `config`'s zones).
    kube_dns: KubeDnsState,
    opts: AppOptions,
    metrics: Arc<Metrics>,
    resolver: Arc<Resolver>,
    /// `log.dnstap`, when configured and its writer started.
    dnstap: Option<Arc<Dnstap>>,
    query_log: Arc<QueryLog>,
    readiness: Arc<Readiness>,
    admin: Arc<AdminState>,
    /// Admin HTTP threads started so far (the pod's socket may start before the rest).
    admin_threads: Vec<std::thread::JoinHandle<()>>,
    admin_stop: watch::Sender<bool>,
    tasks: BackgroundTasks,
    node: Option<Arc<nodedns_node::NodeSetup>>,
}

impl App {
    /// The app for `config` (the config file's content): the resolver with the kube-dns
    /// ConfigMap's zones merged in, metrics registered in `metrics`. Nothing is bound or
    /// started yet; call inside a tokio runtime.
    pub fn new(config: Config, metrics: Arc<Metrics>, opts: AppOptions) -> App {
        let (serving, kube_dns) = crate::reload::start(&config, &metrics);
        let dnstap = config.log.dnstap.as_ref().and_then(|c| match Dnstap::start(c, &metrics) {
            Ok(d) => Some(d),
            Err(e) => {
                // Logging must not stop serving.
                warn!(error = %e, "cannot start the dnstap writer; serving without dnstap");
                None
            }
        });
        let taps = dnstap.clone().map(|d| Arc::new(DnstapTaps(d)) as Arc<dyn nodedns_resolver::ForwarderTaps>);
        let resolver = Resolver::new(&serving, metrics.clone(), taps, Clock::starting_now());
        register_scraped(&metrics, &resolver);
        let query_log = Arc::new(QueryLog::new(config.log.queries_sample_rate));
        let readiness = Arc::new(Readiness::default());
        let admin = Arc::new(AdminState {
            metrics: metrics.clone(),
            workers: std::sync::OnceLock::new(),
            dns_target: std::sync::OnceLock::new(),
            readiness: readiness.clone(),
            test_hooks: opts.test_hooks,
        });
        App {
            config,
            in_force: watch::Sender::new(serving),
            kube_dns,
            opts,
            metrics,
            resolver,
            dnstap,
            query_log,
            readiness,
            admin,
            admin_threads: Vec::new(),
            admin_stop: watch::channel(false).0,
            tasks: BackgroundTasks::new(),
            node: None,
        }
    }

    pub fn resolver(&self) -> &Arc<Resolver> {
        &self.resolver
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn readiness(&self) -> &Arc<Readiness> {
        &self.readiness
    }

    /// Serves admin HTTP on `listeners` from now on (the pod's own socket answers probes
    /// before node setup and handover: they must see this process's state, never the other
    /// pod's). Stopped at the end of the shutdown.
    pub fn serve_admin(&mut self, listeners: Vec<AdminListener>) -> std::io::Result<()> {
        let t = admin::spawn(listeners, self.admin.clone(), self.admin_stop.subscribe())?;
        self.admin_threads.push(t);
        Ok(())
    }

    /// Rollout gate (issue 15): while another nodedns serves this node, waits until an upstream
    /// answers us (true), the predecessor stops serving (true: serve rather than leave the node
    /// without DNS), or `shutdown` resolves (false).
    pub async fn wait_before_takeover(&self, handover: &Path, shutdown: impl Future<Output = ()>) -> bool {
        self.readiness.enter(Phase::WaitingForTakeover);
        info!("another nodedns serves this node: taking over its sockets once an upstream answers");
        let (_never_tx, never) = watch::channel(false);
        let answered = probe_until_answered(self.resolver.clone(), self.readiness.clone(), never, self.opts.started);
        tokio::pin!(answered, shutdown);
        let mut check = tokio::time::interval(Duration::from_secs(1));
        let take_over = loop {
            tokio::select! {
                _ = &mut answered => break true,
                _ = &mut shutdown => break false,
                _ = check.tick() => {
                    if !crate::handover::predecessor_serving(handover) {
                        warn!("the running nodedns went away before an upstream answered: taking over now");
                        break true;
                    }
                }
            }
        };
        self.readiness.enter(Phase::Starting);
        take_over
    }

    /// Node setup (interface, addresses, NOTRACK rules): the first apply (waited for briefly)
    /// and the resync loop as a background task. Only an invalid spec (a config error) is an
    /// error: a failing apply is counted, logged and retried at every resync while DNS is served.
    pub async fn set_up_node(&mut self) -> Result<(), RunError> {
        let Some(n) = &self.config.node else { return Ok(()) };
        let setup = Arc::new(nodedns_node::NodeSetup::new(crate::node_setup::spec(n, &self.config))?);
        let (first_rx, stopped) = crate::node_setup::spawn_resync(
            setup.clone(),
            n.resync_interval,
            self.metrics.clone(),
            self.tasks.stop_signal(),
        )
        .map_err(RunError::Runtime)?;
        self.tasks.spawn("node-resync", stopped);
        if tokio::time::timeout(crate::node_setup::FIRST_APPLY_WAIT, first_rx).await.is_err() {
            warn!("node setup is still running; serving meanwhile");
        }
        self.node = Some(setup);
        Ok(())
    }

    /// Takes the predecessor's sockets if one serves on this node (zero-loss rollout); its
    /// cache follows on the same stream and is loaded in the background while this process
    /// already serves. Empty without a predecessor or when the handover fails.
    pub fn receive_handover(&mut self) -> Vec<std::os::fd::OwnedFd> {
        let Some(path) = &self.config.server.handover_socket else { return Vec::new() };
        match crate::handover::receive(path) {
            Ok(r) => {
                info!(sockets = r.sockets.len(), "received DNS sockets from the running nodedns");
                let resolver = self.resolver.clone();
                let stream = r.cache;
                self.tasks.spawn("cache-import", async move {
                    let import = tokio::task::spawn_blocking(move || {
                        let now = resolver.now();
                        let mut imported = 0usize;
                        let read = crate::handover::read_cache(stream, Duration::from_secs(30), |rec| {
                            imported += resolver.cache.import(rec, now).is_ok() as usize;
                        });
                        info!(records = read, imported, "warm cache received from the predecessor");
                    });
                    let _ = import.await;
                });
                r.sockets
            }
            Err(crate::handover::HandoverError::NoPredecessor(_)) => Vec::new(),
            Err(e) => {
                warn!(error = %e, "socket handover failed; binding new sockets");
                Vec::new()
            }
        }
    }

    /// Serves on `sockets` until `shutdown` resolves, then stops: readiness ends, the workers
    /// stop reading, every query already read — running or still queued — is answered by
    /// `server.drain_timeout_secs`, then the handover socket, dnstap, node teardown (bounded by
    /// [`TEARDOWN_TIMEOUT`]), the background tasks and admin are stopped, in that order.
    pub async fn serve(mut self, sockets: Sockets, shutdown: impl Future<Output = ()>) -> Result<Stopped, RunError> {
        let Sockets { dns: listeners, admin: admin_tcp, inherited } = sockets;
        let config = self.config.clone();
        let stop_rx = self.tasks.stop_signal();
        // The health self-query goes to what was bound (port 0 in tests).
        let _ = self.admin.dns_target.set(health_target(listeners.tcp.first().map(|(a, _)| *a)));

        let admin_release: Vec<socket2::Socket> =
            admin_tcp.iter().filter_map(|l| l.try_clone().ok()).map(socket2::Socket::from).collect();
        let handed_over = Arc::new(AtomicBool::new(false));
        // The handover listener serves until the drain is over (a successor may take the sockets
        // while this process drains), so it has its own stop.
        let (handover_stop, handover_stopped) = watch::channel(false);
        let serving_handover = self.serve_handover(&listeners, admin_release, &handed_over, handover_stopped);
        let own_udp_inodes: Vec<u64> = listeners.udp.iter().filter_map(|(_, s)| socket_inode(s)).collect();

        let (front, prefetches) = FrontDoor::new(
            self.resolver.clone(),
            self.metrics.clone(),
            self.dnstap.clone(),
            self.query_log.clone(),
            config.limits.per_client_qps,
        );
        self.tasks.spawn("prefetch", front::run_prefetches(self.resolver.clone(), prefetches, stop_rx.clone()));

        let control = WorkerControl::new(listeners.udp.len());
        // The hand-off queue holds at most `limits.max_inflight` jobs as in force (about 150 bytes
        // each; the workers hold it there, the channel is sized for the largest value a reload
        // may set): a burst of identical misses (10,000 clients asking one name at once) is
        // queued and coalesced, not shed; past the bound, workers answer from stale data or
        // REFUSED instead of queueing.
        let (miss_tx, miss_rx) = mpsc::channel(udp::MISS_QUEUE_CAPACITY);
        // Not in the task list: the drain waits for it to answer every queued miss.
        let dispatcher = tokio::spawn(udp::run_miss_dispatcher(front.clone(), miss_rx));
        let mut worker_threads = Vec::new();
        for (i, (addr, socket)) in listeners.udp.into_iter().enumerate() {
            let socket = Arc::new(socket);
            let (front, misses, control) = (front.clone(), miss_tx.clone(), control.clone());
            let t = std::thread::Builder::new()
                .name(format!("nodedns-udp-{i}"))
                .spawn(move || udp::run_worker(i, socket, front, misses, control))
                .map_err(RunError::Runtime)?;
            info!(%addr, worker = i, "UDP worker serving");
            worker_threads.push(t);
        }
        drop(miss_tx);

        let conns = tcp::TcpConnections::new(config.limits.clone());
        let mut tcp_listeners = Vec::new();
        for (addr, l) in listeners.tcp {
            let l = tokio::net::TcpListener::from_std(l).map_err(RunError::Bind)?;
            tcp_listeners.push(tokio::spawn(tcp::run_listener(l, front.clone(), conns.clone(), stop_rx.clone())));
            info!(%addr, "TCP serving");
        }

        let _ = self.admin.workers.set(control.clone());
        self.readiness.enter(Phase::Serving);
        self.serve_admin(admin_tcp.into_iter().map(AdminListener::Tcp).collect()).map_err(RunError::Runtime)?;

        self.spawn_background(&stop_rx);
        info!(
            listen = ?config.listen,
            admin = ?config.admin.listen,
            workers = worker_threads.len(),
            startup_ms = self.opts.started.elapsed().as_millis() as u64,
            inherited_sockets = inherited,
            "nodedns serving"
        );

        shutdown.await;

        // Drain: not ready any more, stop reading new queries, answer those already read.
        let drain_started = tokio::time::Instant::now();
        // The drain timeout in force (a reload may have changed it).
        let drain_deadline = drain_started + self.in_force.borrow().server.drain_timeout;
        info!("shutting down: draining in-flight queries");
        self.readiness.enter(Phase::Draining);
        control.stop.store(true, Relaxed);
        let _ = self.tasks.stop.send(true);
        for l in tcp_listeners {
            let _ = l.await;
        }
        // Workers leave `recvmmsg` within their poll interval; joined off the runtime.
        let _ = tokio::task::spawn_blocking(move || {
            for t in worker_threads {
                let _ = t.join();
            }
        })
        .await;
        // The workers' queue senders are gone: the dispatcher answers what is queued and ends.
        let mut stopped = Stopped::default();
        if tokio::time::timeout_at(drain_deadline, dispatcher).await.is_err() {
            warn!("drain deadline reached with queued UDP misses unanswered");
            stopped.unanswered_at_deadline = true;
        }
        while self.resolver.waiting() > 0 && tokio::time::Instant::now() < drain_deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if self.resolver.waiting() > 0 {
            warn!(waiting = self.resolver.waiting(), "drain deadline reached with queries still waiting");
            stopped.unanswered_at_deadline = true;
        }
        let _ = handover_stop.send(true);
        if let Some(path) = config.server.handover_socket.as_ref().filter(|_| serving_handover) {
            crate::handover::remove_if_ours(path, &handed_over);
        }
        // After the drain, so the stream holds every answer sent; STOP (and FINISH) close it.
        if let Some(tap) = &self.dnstap {
            let tap = tap.clone();
            let _ = tokio::task::spawn_blocking(move || tap.shutdown(DNSTAP_STOP_TIMEOUT)).await;
        }
        self.tear_down_node(&handed_over, &own_udp_inodes).await;
        stopped.aborted_tasks = self.tasks.stop(tokio::time::Instant::now() + TASK_STOP_TIMEOUT).await;
        let _ = self.admin_stop.send(true);
        let admin_threads = std::mem::take(&mut self.admin_threads);
        let _ = tokio::task::spawn_blocking(move || {
            for t in admin_threads {
                let _ = t.join();
            }
        })
        .await;
        info!(drain_ms = drain_started.elapsed().as_millis() as u64, "nodedns stopped");
        Ok(stopped)
    }

    /// The background tasks of a serving app, all from here: upstream readiness probes, probes
    /// of ejected endpoints, endpoint discovery, hot reload (node resync and the cache import
    /// were added when they started).
    fn spawn_background(&mut self, stop: &watch::Receiver<bool>) {
        let resolver = &self.resolver;
        self.tasks.spawn(
            "upstream-ready-probe",
            probe_until_answered(resolver.clone(), self.readiness.clone(), stop.clone(), self.opts.started),
        );
        self.tasks.spawn("ejected-endpoint-probe", resolver.clone().probe_ejected_loop(stop.clone()));
        self.tasks.spawn("discovery", crate::discover::supervise(resolver.clone(), stop.clone()));
        if let Some(path) = &self.opts.config_path {
            let kube_dns = std::mem::take(&mut self.kube_dns);
            self.tasks.spawn(
                "reload",
                crate::reload::watch_from(
                    path.clone(),
                    self.config.clone(),
                    kube_dns,
                    crate::reload::ReloadTargets {
                        resolver: resolver.clone(),
                        metrics: self.metrics.clone(),
                        log: self.opts.log.clone(),
                        query_log: self.query_log.clone(),
                        in_force: self.in_force.clone(),
                    },
                    stop.clone(),
                    self.opts.overrides.clone(),
                ),
            );
        }
    }

    /// Serves handovers at `server.handover_socket`: a successor gets duplicates of every DNS
    /// socket and the cache. Returns whether it does (then the socket file is ours to remove).
    /// An unusable path costs the next rollout its zero-loss handover, not DNS.
    fn serve_handover(
        &mut self,
        listeners: &Listeners,
        admin_release: Vec<socket2::Socket>,
        handed_over: &Arc<AtomicBool>,
        stop: watch::Receiver<bool>,
    ) -> bool {
        let Some(path) = &self.config.server.handover_socket else { return false };
        let source = self.resolver.clone();
        let export: crate::handover::CacheExport = Box::new(move |w| {
            let mut failed = None;
            let n = source.cache.export(source.now(), |rec| {
                let r = w.write_all(&(rec.len() as u32).to_le_bytes()).and_then(|_| w.write_all(rec));
                match r {
                    Ok(()) => true,
                    Err(e) => {
                        failed = Some(e);
                        false
                    }
                }
            });
            // Prometheus scrapes must reach one process: the successor has bound the admin port
            // by now, so this process leaves it (shutdown takes a listener out of the SO_REUSEPORT
            // group at once). Its probes still reach it over its own admin socket.
            for l in &admin_release {
                let _ = l.shutdown(std::net::Shutdown::Both);
            }
            failed.map_or(Ok(n), Err)
        });
        let served = listeners
            .duplicates()
            .map_err(|source| crate::handover::HandoverError::Io { path: path.clone(), source })
            .and_then(|dups| crate::handover::serve(path, dups, handed_over.clone(), export, stop));
        match served {
            Ok(accepting) => {
                self.tasks.spawn("handover", accepting);
                true
            }
            Err(e) => {
                warn!(
                    path = %path.display(),
                    error = %e,
                    "server.handover_socket is unusable: serving without it; the next rollout binds fresh sockets"
                );
                false
            }
        }
    }

    /// Removes node setup at exit unless a successor (or another instance) serves the node.
    async fn tear_down_node(&self, handed_over: &AtomicBool, own_udp_inodes: &[u64]) {
        let (Some(setup), Some(n)) = (&self.node, &self.config.node) else { return };
        if !n.teardown_on_exit {
            return;
        }
        if handed_over.load(Relaxed) {
            info!("sockets were handed to a successor: leaving node setup in place");
        } else if crate::node_setup::other_instance_serving(&self.config.listen, own_udp_inodes) {
            info!("another nodedns instance serves this node: leaving node setup in place");
        } else {
            match tokio::time::timeout(TEARDOWN_TIMEOUT, setup.teardown()).await {
                Ok(Ok(())) => info!("node setup removed"),
                Ok(Err(e)) => {
                    self.metrics.node_setup_error(e.kind());
                    error!(error = %e, "node teardown failed");
                }
                Err(_) => {
                    error!(timeout_s = TEARDOWN_TIMEOUT.as_secs(), "node teardown timed out; rules left (fail-open)")
                }
            }
        }
    }
}

/// Where `/health` sends its self-query: the first DNS address (loopback for a wildcard).
fn health_target(first: Option<SocketAddr>) -> SocketAddr {
    let mut t = first.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 53)));
    if t.ip().is_unspecified() {
        t.set_ip(if t.is_ipv4() { std::net::Ipv4Addr::LOCALHOST.into() } else { std::net::Ipv6Addr::LOCALHOST.into() });
    }
    t
}

/// The inode of a socket (as /proc/net/udp lists it), to tell our sockets from another
/// instance's.
fn socket_inode(s: &std::net::UdpSocket) -> Option<u64> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(format!("/proc/self/fd/{}", s.as_raw_fd())).ok().map(|m| m.ino())
}

/// Asks each zone's upstreams for the zone's SOA until one answers, then releases readiness:
/// readiness needs a live upstream, and the query opens the persistent connections before
/// clients arrive.
async fn probe_until_answered(
    resolver: Arc<Resolver>,
    readiness: Arc<Readiness>,
    mut stop: watch::Receiver<bool>,
    started: Instant,
) {
    let mut delay = Duration::from_millis(250);
    loop {
        let attempt = async {
            for zone in resolver.zones().iter() {
                zone.pool.warm().await;
            }
            resolver.probe_zones().await
        };
        let answered = tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            answered = attempt => answered,
        };
        if answered {
            readiness.upstream_answered.release();
            info!(since_start_ms = started.elapsed().as_millis() as u64, "an upstream answered: ready");
            return;
        }
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

fn register_scraped(metrics: &Arc<Metrics>, resolver: &Arc<Resolver>) {
    let resolver = resolver.clone();
    let max_bytes = resolver.cache.limits().max_bytes as u64;
    let coredns = metrics.coredns_compatible();
    metrics.register_scraped(Box::new(ScrapedCollector::new(
        coredns,
        Box::new(move || {
            let cache = CacheSample {
                entries: resolver.cache.entries(),
                bytes: resolver.cache.bytes(),
                max_bytes,
                evictions: resolver.cache.counters.evictions.load(Relaxed),
                split_pairs: resolver.cache.counters.split_pairs.load(Relaxed),
            };
            // One series per endpoint (shared by every zone that forwards to it), and one
            // zone→endpoint pair per use, primaries and fallbacks alike.
            let zones = resolver.zones();
            let mut uses = Vec::new();
            for zone in zones.iter() {
                for (role, states) in [("primary", zone.pool.endpoints()), ("fallback", zone.pool.fallback())] {
                    uses.extend(states.iter().map(|e| (zone.label.as_str(), role, e.endpoint.clone())));
                }
            }
            let (endpoints, zone_endpoints) = upstream_sample(&uses);
            ScrapeSample { cache, endpoints, zone_endpoints }
        }),
    )));
}
