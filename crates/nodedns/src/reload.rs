//! Hot reload: on SIGHUP or when the config file's content changes (a ConfigMap update swaps
//! the mounted file), the new config is validated and applied without dropping the cache or
//! the sockets. An invalid file is rejected with a log line and a metric; the old config stays.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::config::Config;
use crate::engine::Engine;

/// How often the file is re-read to detect changes.
pub const POLL_INTERVAL: Duration = Duration::from_secs(2);

pub async fn watch(path: PathBuf, mut current: Config, engine: Arc<Engine>, mut stop: watch::Receiver<bool>) {
    let mut hup = signal(SignalKind::hangup()).ok();
    let mut last = std::fs::read(&path).ok();
    let mut tick = tokio::time::interval(POLL_INTERVAL);
    loop {
        let forced = tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = tick.tick() => false,
            Some(_) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => true,
        };
        let content = std::fs::read(&path).ok();
        if !forced && content == last {
            continue;
        }
        last = content;
        match Config::load(&path) {
            Ok(next) => {
                if next == current {
                    continue;
                }
                for (what, changed) in [
                    ("listen", next.listen != current.listen),
                    ("admin", next.admin != current.admin),
                    ("node", next.node != current.node),
                    ("limits", next.limits != current.limits),
                    ("cache.max_bytes", next.cache.max_bytes != current.cache.max_bytes),
                ] {
                    if changed {
                        warn!(key = what, "config change needs a restart to take effect; the rest is applied now");
                    }
                }
                engine.reconfigure(&next);
                engine.metrics.config_reloads.with_label_values(&["success"]).inc();
                info!(path = %path.display(), zones = next.zones.len(), "config reloaded");
                current = next;
            }
            Err(e) => {
                engine.metrics.config_reloads.with_label_values(&["failure"]).inc();
                error!(problems = %e, "config reload rejected; the previous config keeps serving");
            }
        }
    }
}
