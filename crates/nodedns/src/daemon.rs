//! The daemon: wires config, node setup, listeners, workers, admin and reload, then runs until
//! SIGTERM and drains in one ordered, deadline-bound sequence.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::{Duration, Instant};

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{mpsc, watch};
use tracing::{error, info, warn};

use crate::admin::{self, AdminListener, AdminState};
use crate::config::Config;
use crate::engine::Engine;
use crate::metrics::{CacheSample, Metrics, ScrapeSample, ScrapedCollector, upstream_sample};
use crate::server::udp::{self, WorkerControl};
use crate::server::{Listeners, bind_tcp, tcp};

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

/// Options from the command line.
pub struct RunOptions {
    pub config_path: Option<PathBuf>,
    /// When the process started (before the config was read): start-to-ready is logged from it.
    pub started: Instant,
    /// Admin HTTP on a unix socket that belongs to this pod (`--admin-socket`): what the
    /// kubelet's exec probes ask, so that they reach this process and never a neighbour.
    pub admin_socket: Option<PathBuf>,
}

/// UDP workers: as configured, else one per CPU this process may run on.
fn worker_count(config: &Config) -> usize {
    if config.server.workers > 0 {
        return config.server.workers;
    }
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

pub fn run(config: Config, opts: RunOptions) -> Result<(), RunError> {
    // Every client TCP connection is a descriptor: raise the soft limit before any thread starts.
    match crate::rlimit::raise_nofile() {
        Ok(l) if !crate::rlimit::covers(&l, config.limits.max_tcp_connections) => warn!(
            soft = l.soft,
            hard = l.hard,
            max_tcp_connections = config.limits.max_tcp_connections,
            "the open-file limit is below what limits.max_tcp_connections needs"
        ),
        Ok(l) => info!(soft = l.soft, was = l.soft_before, "open-file limit"),
        Err(e) => warn!(error = %e, "cannot raise the open-file limit"),
    }
    let workers = worker_count(&config);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers.clamp(1, 4))
        .thread_name("nodedns-async")
        .enable_all()
        .build()
        .map_err(RunError::Runtime)?;
    rt.block_on(run_async(config, opts, workers))
}

async fn run_async(config: Config, opts: RunOptions, workers: usize) -> Result<(), RunError> {
    let started = opts.started;
    let metrics = Metrics::new(config.admin.coredns_compatible_metrics);
    // The kube-dns ConfigMap's zones are merged in before serving; `config` stays the file's.
    let (serving, kube_dns) = crate::reload::start(&config, &metrics);
    let engine = Engine::new(&serving, metrics.clone());
    register_scraped(&metrics, &engine);

    let dns_target = {
        let mut t = config.listen[0];
        if t.ip().is_unspecified() {
            t.set_ip(if t.is_ipv4() {
                std::net::Ipv4Addr::LOCALHOST.into()
            } else {
                std::net::Ipv6Addr::LOCALHOST.into()
            });
        }
        t
    };
    let admin_state = Arc::new(AdminState {
        engine: engine.clone(),
        workers: std::sync::OnceLock::new(),
        dns_target,
        serving: AtomicBool::new(false),
        waiting_for_takeover: AtomicBool::new(false),
        test_hooks: std::env::var("NODEDNS_TEST_HOOKS").is_ok_and(|v| v == "1"),
    });
    // The pod's own admin socket answers from the start: probes must see this process's state
    // (also "waiting to take over"), never the other pod's.
    if let Some(path) = &opts.admin_socket {
        let l = crate::admin_socket::bind(path).map_err(RunError::Bind)?;
        admin::spawn(vec![AdminListener::Unix(l)], admin_state.clone()).map_err(RunError::Runtime)?;
    }

    // Rollout gate (issue 15): while another nodedns serves this node, take nothing from it (no
    // node setup, no sockets) until an upstream has answered us. A new version that cannot reach
    // CoreDNS never becomes ready, and the old pod keeps serving until the broken one is deleted.
    if let Some(path) = &config.server.handover_socket
        && crate::handover::predecessor_serving(path)
    {
        admin_state.waiting_for_takeover.store(true, Relaxed);
        info!("another nodedns serves this node: taking over its sockets once an upstream answers");
        if !wait_before_takeover(&engine, path, started).await {
            info!("stopped before taking over: the running nodedns keeps serving this node");
            return Ok(());
        }
        admin_state.waiting_for_takeover.store(false, Relaxed);
    }

    let (stop_tx, stop_rx) = watch::channel(false);
    // Node setup first, so the addresses normally exist when we bind (FREEBIND covers the other
    // order). Only an invalid spec (a config error) stops the start: a failing apply (no
    // firewall tool, a held lock, no interface) is counted, logged and retried at every
    // resync while DNS is served, and the start waits for the first apply only briefly.
    let node = match &config.node {
        Some(n) => {
            let setup = Arc::new(nodedns_node::NodeSetup::new(crate::node_setup::spec(n, &config))?);
            let first =
                crate::node_setup::spawn_resync(setup.clone(), n.resync_interval, metrics.clone(), stop_rx.clone())
                    .map_err(RunError::Runtime)?;
            if tokio::time::timeout(crate::node_setup::FIRST_APPLY_WAIT, first).await.is_err() {
                warn!("node setup is still running; serving meanwhile");
            }
            Some(setup)
        }
        None => None,
    };

    // Bound before the handover, so that the admin port (SO_REUSEPORT) is never without a
    // listener: the predecessor releases its own once it has handed over (see the export).
    let mut admin_tcp = Vec::new();
    for a in &config.admin.listen {
        admin_tcp.push(bind_tcp(*a).map_err(RunError::Bind)?);
    }
    let admin_release: Vec<socket2::Socket> =
        admin_tcp.iter().filter_map(|l| l.try_clone().ok()).map(socket2::Socket::from).collect();

    // Zero-loss rollout: take the predecessor's sockets if one serves on this node.
    let handed_over = Arc::new(AtomicBool::new(false));
    let received = match &config.server.handover_socket {
        Some(path) => match crate::handover::receive(path) {
            Ok(r) => {
                info!(sockets = r.sockets.len(), "received DNS sockets from the running nodedns");
                // The predecessor's cache follows on the same stream; load it in the background
                // while this process already serves.
                let engine = engine.clone();
                let stream = r.cache;
                std::thread::Builder::new()
                    .name("nodedns-cache-import".into())
                    .spawn(move || {
                        let now = engine.now();
                        let mut imported = 0usize;
                        let read = crate::handover::read_cache(stream, Duration::from_secs(30), |rec| {
                            imported += engine.cache.import(rec, now).is_ok() as usize;
                        });
                        info!(records = read, imported, "warm cache received from the predecessor");
                    })
                    .map_err(RunError::Runtime)?;
                r.sockets
            }
            Err(crate::handover::HandoverError::NoPredecessor(_)) => Vec::new(),
            Err(e) => {
                warn!(error = %e, "socket handover failed; binding new sockets");
                Vec::new()
            }
        },
        None => Vec::new(),
    };
    let inherited = !received.is_empty();
    let listeners = Listeners::adopt_or_bind(&config.listen, workers, received).map_err(RunError::Bind)?;
    // Whether we serve handovers at `server.handover_socket` (then the socket file is ours to
    // remove on exit). An unusable path costs the next rollout its zero-loss handover, not DNS.
    let mut serving_handover = false;
    if let Some(path) = &config.server.handover_socket {
        let source = engine.clone();
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
            .and_then(|dups| crate::handover::serve(path, dups, handed_over.clone(), export));
        match served {
            Ok(()) => serving_handover = true,
            Err(e) => warn!(
                path = %path.display(),
                error = %e,
                "server.handover_socket is unusable: serving without it; the next rollout binds fresh sockets"
            ),
        }
    }
    let own_udp_inodes: Vec<u64> = listeners.udp.iter().filter_map(|(_, s)| socket_inode(s)).collect();
    // Least privilege: every socket is bound and node setup has run. Keep only what resync and
    // teardown need (NET_ADMIN, and NET_RAW where granted for iptables-legacy); nothing without
    // node integration. NET_BIND_SERVICE goes: listeners are never rebound (restart needed).
    let keep = if config.node.is_some() { crate::privileges::resync_capabilities() } else { 0 };
    match crate::privileges::keep_only(keep) {
        Ok(d) => info!(
            before = %format!("{:#x}", d.before),
            kept = %format!("{:#x}", d.kept),
            threads = d.threads,
            bounding_reduced = d.bounding_reduced,
            "capabilities dropped"
        ),
        Err(e) => warn!(error = %e, "cannot drop capabilities"),
    }

    let control = WorkerControl::new(listeners.udp.len());
    // The hand-off queue holds at most `max_inflight` jobs (about 100 bytes each): a burst of
    // identical misses (10,000 clients asking one name at once) is queued and coalesced, not
    // shed; past the bound, workers answer REFUSED instead of queueing more.
    let (miss_tx, miss_rx) = mpsc::channel(config.limits.max_inflight);
    tokio::spawn(udp::run_miss_dispatcher(engine.clone(), miss_rx));

    let mut worker_threads = Vec::new();
    for (i, (addr, socket)) in listeners.udp.into_iter().enumerate() {
        let socket = Arc::new(socket);
        let engine = engine.clone();
        let misses = miss_tx.clone();
        let control = control.clone();
        let t = std::thread::Builder::new()
            .name(format!("nodedns-udp-{i}"))
            .spawn(move || udp::run_worker(i, socket, engine, misses, control))
            .map_err(RunError::Runtime)?;
        info!(%addr, worker = i, "UDP worker serving");
        worker_threads.push(t);
    }
    drop(miss_tx);

    let conns = tcp::TcpConnections::new(config.limits.clone());
    for (addr, l) in listeners.tcp {
        let l = tokio::net::TcpListener::from_std(l).map_err(RunError::Bind)?;
        tokio::spawn(tcp::run_listener(l, engine.clone(), conns.clone(), stop_rx.clone()));
        info!(%addr, "TCP serving");
    }

    let _ = admin_state.workers.set(control.clone());
    admin_state.serving.store(true, Relaxed);
    admin::spawn(admin_tcp.into_iter().map(AdminListener::Tcp).collect(), admin_state.clone())
        .map_err(RunError::Runtime)?;

    for zone in engine.zones().iter().filter(|z| z.config.discover.is_some()) {
        tokio::spawn(crate::discover::run(engine.clone(), zone.config.name.clone(), stop_rx.clone()));
    }
    tokio::spawn(probe_until_answered(engine.clone(), stop_rx.clone(), started));
    tokio::spawn(engine.clone().probe_ejected_loop(stop_rx.clone()));
    if let Some(path) = &opts.config_path {
        tokio::spawn(crate::reload::watch_from(
            path.clone(),
            config.clone(),
            kube_dns,
            engine.clone(),
            stop_rx.clone(),
        ));
    }
    info!(
        listen = ?config.listen,
        admin = ?config.admin.listen,
        workers,
        startup_ms = started.elapsed().as_millis() as u64,
        inherited_sockets = inherited,
        "nodedns serving"
    );

    wait_for_shutdown().await;

    // Drain: stop reading new queries, finish those in flight, then tear down.
    let drain_started = Instant::now();
    info!("shutting down: draining in-flight queries");
    control.stop.store(true, Relaxed);
    let _ = stop_tx.send(true);
    for t in worker_threads {
        let _ = t.join();
    }
    let deadline = drain_started + config.server.drain_timeout;
    while engine.waiting() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    if engine.waiting() > 0 {
        warn!(waiting = engine.waiting(), "drain deadline reached with queries still waiting");
    }
    if let Some(path) = config.server.handover_socket.as_ref().filter(|_| serving_handover) {
        crate::handover::remove_if_ours(path, &handed_over);
    }
    // After the drain, so the stream holds every answer sent; STOP (and FINISH) close it.
    if let Some(tap) = &engine.dnstap {
        tap.shutdown(Duration::from_secs(3));
    }
    if let (Some(setup), Some(n)) = (&node, &config.node)
        && n.teardown_on_exit
    {
        if handed_over.load(Relaxed) {
            info!("sockets were handed to a successor: leaving node setup in place");
        } else if crate::node_setup::other_instance_serving(&config.listen, &own_udp_inodes) {
            info!("another nodedns instance serves this node: leaving node setup in place");
        } else if let Err(e) = setup.teardown().await {
            metrics.node_setup_error(e.kind());
            error!(error = %e, "node teardown failed");
        } else {
            info!("node setup removed");
        }
    }
    admin_state.serving.store(false, Relaxed);
    info!(drain_ms = drain_started.elapsed().as_millis() as u64, "nodedns stopped");
    Ok(())
}

/// The inode of a socket (as /proc/net/udp lists it), to tell our sockets from another
/// instance's.
fn socket_inode(s: &std::net::UdpSocket) -> Option<u64> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(format!("/proc/self/fd/{}", s.as_raw_fd())).ok().map(|m| m.ino())
}

async fn wait_for_shutdown() {
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        error!("cannot install signal handlers; running until killed");
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => info!("SIGTERM received"),
        _ = int.recv() => info!("SIGINT received"),
    }
}

/// Waits until an upstream answers (true), the predecessor stops serving (true: serve rather
/// than leave the node without DNS), or SIGTERM/SIGINT (false).
async fn wait_before_takeover(engine: &Arc<Engine>, handover: &std::path::Path, started: Instant) -> bool {
    // Never fires: the shutdown branch below ends the wait.
    let (_never_tx, never) = watch::channel(false);
    let answered = probe_until_answered(engine.clone(), never, started);
    let shutdown = wait_for_shutdown();
    tokio::pin!(answered, shutdown);
    let mut check = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = &mut answered => return true,
            _ = &mut shutdown => return false,
            _ = check.tick() => {
                if !crate::handover::predecessor_serving(handover) {
                    warn!("the running nodedns went away before an upstream answered: taking over now");
                    return true;
                }
            }
        }
    }
}

/// Asks each zone's upstreams for the zone's SOA until one answers: readiness needs a live
/// upstream, and the query opens the persistent connections before clients arrive.
async fn probe_until_answered(engine: Arc<Engine>, mut stop: watch::Receiver<bool>, started: Instant) {
    let mut delay = Duration::from_millis(250);
    loop {
        for zone in engine.zones().iter() {
            zone.pool.warm().await;
        }
        if engine.probe_zones().await {
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

fn register_scraped(metrics: &Arc<Metrics>, engine: &Arc<Engine>) {
    let engine = engine.clone();
    let max_bytes = engine.cache.limits().max_bytes as u64;
    let coredns = metrics.coredns_compatible();
    metrics.register_scraped(Box::new(ScrapedCollector::new(
        coredns,
        Box::new(move || {
            let cache = CacheSample {
                entries: engine.cache.entries(),
                bytes: engine.cache.bytes(),
                max_bytes,
                evictions: engine.cache.counters.evictions.load(Relaxed),
                split_pairs: engine.cache.counters.split_pairs.load(Relaxed),
            };
            // One series per endpoint (shared by every zone that forwards to it), and one
            // zone→endpoint pair per use, primaries and fallbacks alike.
            let zones = engine.zones();
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
