//! The `nodedns` command line: parse arguments, load config, hand over to the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use nodedns::config::{Config, ConfigError, parse_socket_addr};

/// The miss path allocates per query (upstream frames, decoded answers, tasks): glibc malloc cost
/// ~15% of its CPU in profiles; mimalloc's thread-local free lists cut that (benches/RESULTS.md).
/// The cache-hit path allocates nothing either way.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// EX_USAGE (sysexits.h): bad config or arguments.
const EX_USAGE: u8 = 64;
/// EX_UNAVAILABLE: could not start.
const EX_UNAVAILABLE: u8 = 69;

#[derive(Parser)]
#[command(name = "nodedns", version, about = "Node-local DNS cache for Kubernetes")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve DNS. Without --config, uses the embedded default (127.0.0.1:5353 → /etc/resolv.conf).
    Run {
        #[arg(long)]
        config: Option<PathBuf>,
        /// Admin HTTP address (repeatable); replaces `admin.listen`.
        #[arg(long = "admin-listen")]
        admin_listen: Vec<String>,
        /// Also serve admin HTTP on this unix socket (a path only this pod has, e.g. in an emptyDir),
        /// for `nodedns health --socket`. Bound at start, before node setup and handover.
        #[arg(long = "admin-socket")]
        admin_socket: Option<PathBuf>,
    },
    /// Ask the nodedns process serving admin HTTP on SOCKET for /health (or /ready): prints its
    /// answer, exits 0 on 200 and 1 otherwise. The kubelet's exec probe: it reaches this pod's own
    /// process, whatever the other pod on the node answers on the shared admin port.
    Health {
        #[arg(long)]
        socket: PathBuf,
        /// /ready instead of /health.
        #[arg(long)]
        ready: bool,
        /// Give up after this many milliseconds (keep it below the probe's timeoutSeconds).
        #[arg(long = "timeout-ms", default_value_t = 1500)]
        timeout_ms: u64,
    },
    /// Validate a config file: exit 0, or 64 listing every problem.
    CheckConfig {
        #[arg(long)]
        config: PathBuf,
    },
    /// Query every upstream endpoint of NAME's zone individually and report per endpoint.
    Probe {
        name: String,
        #[arg(long = "type", default_value = "A")]
        qtype: String,
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long, default_value_t = 10)]
        count: usize,
    },
}

fn load(path: Option<&PathBuf>) -> Result<Config, ConfigError> {
    match path {
        Some(p) => Config::load(p),
        None => Config::embedded_default(),
    }
}

fn main() -> ExitCode {
    let process_started = std::time::Instant::now();
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { config } => match Config::load(&config) {
            Ok(_) => {
                println!("{}: ok", config.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprint!("{e}");
                ExitCode::from(EX_USAGE)
            }
        },
        Command::Health { socket, ready, timeout_ms } => {
            let route = if ready { "/ready" } else { "/health" };
            match nodedns::admin_socket::get(&socket, route, std::time::Duration::from_millis(timeout_ms)) {
                Ok((200, body)) => {
                    print!("{body}");
                    ExitCode::SUCCESS
                }
                Ok((code, body)) => {
                    print!("{code} {body}");
                    ExitCode::from(1)
                }
                Err(e) => {
                    println!("nodedns health: {e}");
                    ExitCode::from(1)
                }
            }
        }
        Command::Run { config, admin_listen, admin_socket } => {
            let mut cfg = match load(config.as_ref()) {
                Ok(c) => c,
                Err(e) => {
                    eprint!("{e}");
                    return ExitCode::from(EX_USAGE);
                }
            };
            let mut overrides = nodedns::config::change::CliOverrides::default();
            if !admin_listen.is_empty() {
                let mut addrs = Vec::new();
                for a in &admin_listen {
                    match parse_socket_addr(a, 9253) {
                        Ok(a) => addrs.push(a),
                        Err(e) => {
                            eprintln!("--admin-listen: {e}");
                            return ExitCode::from(EX_USAGE);
                        }
                    }
                }
                overrides.admin_listen = Some(addrs);
            }
            overrides.apply(&mut cfg);
            let log = nodedns::logging::init(&cfg.log);
            let opts = nodedns::daemon::RunOptions {
                config_path: config,
                started: process_started,
                admin_socket,
                overrides,
                log,
            };
            match run(cfg, opts) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = %e, "nodedns failed");
                    eprintln!("nodedns: {e}");
                    ExitCode::from(EX_UNAVAILABLE)
                }
            }
        }
        Command::Probe { name, qtype, config, count } => {
            let cfg = match load(config.as_ref()) {
                Ok(c) => c,
                Err(e) => {
                    eprint!("{e}");
                    return ExitCode::from(EX_USAGE);
                }
            };
            let Ok(rtype) = qtype.to_ascii_uppercase().parse::<hickory_proto::rr::RecordType>() else {
                eprintln!("--type: unknown record type `{qtype}`");
                return ExitCode::from(EX_USAGE);
            };
            let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("nodedns: {e}");
                    return ExitCode::from(EX_UNAVAILABLE);
                }
            };
            match rt.block_on(nodedns::probe::probe(&cfg, &name, u16::from(rtype), count.max(1))) {
                Ok((zone, reports)) => {
                    println!("probe {name} {qtype} x{count} via zone {zone}:");
                    let mut failing = false;
                    let best = nodedns::probe::fastest_p50(&reports);
                    for r in &reports {
                        println!("  {}", r.line_vs(best));
                        failing |= r.failing();
                    }
                    if failing { ExitCode::from(1) } else { ExitCode::SUCCESS }
                }
                Err(e) => {
                    eprintln!("nodedns probe: {e}");
                    ExitCode::from(EX_USAGE)
                }
            }
        }
    }
}

/// `nodedns run`: prepares the app, drops privileges, serves until SIGTERM or SIGINT.
fn run(config: Config, opts: nodedns::daemon::RunOptions) -> Result<(), nodedns::daemon::RunError> {
    let rt = nodedns::daemon::runtime(&config)?;
    rt.block_on(async {
        let mut shutdown = std::pin::pin!(shutdown_signal());
        let Some(prepared) = nodedns::daemon::prepare(config, opts, &mut shutdown).await? else {
            return Ok(());
        };
        drop_privileges(prepared.keep_capabilities);
        prepared.app.serve(prepared.sockets, shutdown).await.map(|_| ())
    })
}

/// Keeps only `keep` of the process's capabilities, in every thread. Here, outside the app, so
/// that tests running the app in-process never drop their own.
fn drop_privileges(keep: u64) {
    match nodedns::privileges::keep_only(keep) {
        Ok(d) => tracing::info!(
            before = %format!("{:#x}", d.before),
            kept = %format!("{:#x}", d.kept),
            threads = d.threads,
            bounding_reduced = d.bounding_reduced,
            "capabilities dropped"
        ),
        Err(e) => tracing::warn!(error = %e, "cannot drop capabilities"),
    }
}

/// Resolves at SIGTERM (the kubelet stopping the pod) or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        tracing::error!("cannot install signal handlers; running until killed");
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
}
