//! The node-facing start of the `nodedns run` process, before the [`App`] serves: the open-file
//! limit, the pod's own admin socket, the rollout gate, node setup, receiving the predecessor's
//! sockets and binding the rest. What it returns is served by `main.rs` once it has dropped
//! privileges (which stays in `main`, so in-process tests never drop their own).

use std::future::Future;
use std::path::PathBuf;
use std::time::Instant;

use tracing::{info, warn};

use crate::admin::AdminListener;
use crate::app::{App, AppOptions, Sockets, worker_count};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::server::{Listeners, bind_tcp};

pub use crate::app::RunError;

/// Options from the command line.
pub struct RunOptions {
    pub config_path: Option<PathBuf>,
    /// When the process started (before the config was read): start-to-ready is logged from it.
    pub started: Instant,
    /// Admin HTTP on a unix socket that belongs to this pod (`--admin-socket`): what the
    /// kubelet's exec probes ask, so that they reach this process and never a neighbour.
    pub admin_socket: Option<PathBuf>,
    /// The command line's replacements of config file values, applied again on every reload.
    pub overrides: crate::config::change::CliOverrides,
    /// Changes `log.level` on reload.
    pub log: crate::logging::LogControl,
}

/// An app with its sockets, ready to serve once `main` has dropped privileges.
pub struct Prepared {
    pub app: App,
    pub sockets: Sockets,
    /// The capabilities the serving process still needs (resync and teardown of node setup);
    /// 0 without node integration.
    pub keep_capabilities: u64,
}

/// The multi-threaded runtime the daemon serves on (the UDP workers are threads of their own).
pub fn runtime(config: &Config) -> Result<tokio::runtime::Runtime, RunError> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(worker_count(config).clamp(1, 4))
        .thread_name("nodedns-async")
        .enable_all()
        .build()
        .map_err(RunError::Runtime)
}

/// Everything before serving. `None`: `shutdown` resolved while waiting to take over from the
/// running nodedns, which keeps serving this node.
pub async fn prepare(
    config: Config,
    opts: RunOptions,
    shutdown: &mut (impl Future<Output = ()> + Unpin),
) -> Result<Option<Prepared>, RunError> {
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
    let metrics = Metrics::new(config.admin.coredns_compatible_metrics);
    let app_opts = AppOptions {
        config_path: opts.config_path,
        started: opts.started,
        overrides: opts.overrides,
        log: opts.log,
        test_hooks: std::env::var("NODEDNS_TEST_HOOKS").is_ok_and(|v| v == "1"),
    };
    let mut app = App::new(config, metrics, app_opts);
    // The pod's own admin socket answers from the start: probes must see this process's state
    // (also "waiting to take over"), never the other pod's.
    if let Some(path) = &opts.admin_socket {
        let l = crate::admin_socket::bind(path).map_err(RunError::Bind)?;
        app.serve_admin(vec![AdminListener::Unix(l)]).map_err(RunError::Runtime)?;
    }

    // Rollout gate (issue 15): while another nodedns serves this node, take nothing from it (no
    // node setup, no sockets) until an upstream has answered us. A new version that cannot reach
    // CoreDNS never becomes ready, and the old pod keeps serving until the broken one is deleted.
    let handover = app.config().server.handover_socket.clone();
    if let Some(path) = &handover
        && crate::handover::predecessor_serving(path)
        && !app.wait_before_takeover(path, &mut *shutdown).await
    {
        info!("stopped before taking over: the running nodedns keeps serving this node");
        return Ok(None);
    }

    // Node setup first, so the addresses normally exist when we bind (FREEBIND covers the other
    // order).
    app.set_up_node().await?;

    // Bound before the handover, so that the admin port (SO_REUSEPORT) is never without a
    // listener: the predecessor releases its own once it has handed over.
    let config = app.config().clone();
    let mut admin = Vec::new();
    for a in &config.admin.listen {
        admin.push(bind_tcp(*a).map_err(RunError::Bind)?);
    }
    // Zero-loss rollout: take the predecessor's sockets if one serves on this node.
    let received = app.receive_handover();
    let inherited = !received.is_empty();
    let dns = Listeners::adopt_or_bind(&config.listen, workers, received).map_err(RunError::Bind)?;
    // Least privilege: every socket is bound and node setup has run. Keep only what resync and
    // teardown need (NET_ADMIN, and NET_RAW where granted for iptables-legacy); nothing without
    // node integration. NET_BIND_SERVICE goes: listeners are never rebound (restart needed).
    let keep_capabilities = if config.node.is_some() { crate::privileges::resync_capabilities() } else { 0 };
    Ok(Some(Prepared { app, sockets: Sockets { dns, admin, inherited }, keep_capabilities }))
}
