//! Hot reload: on SIGHUP or when the config file's content changes (a ConfigMap update swaps
//! the mounted file), the new config is validated and applied without dropping the cache or
//! the sockets. An invalid file is rejected with a log line and a metric; the old config stays.
//!
//! With `kube_dns_configmap`, the mounted kube-dns ConfigMap ([`crate::kubedns`]) is read every
//! `reload_interval` (and on SIGHUP) and its zones are merged into the config file's. Changes are
//! found by content. Invalid content is rejected the same way: log line,
//! `nodedns_config_reloads_total{result="failure"}`, the zones in use keep serving.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;
use tokio::time::{Interval, MissedTickBehavior};
use tracing::{error, info, warn};

use crate::config::change::{CliOverrides, classify, restart_keys};
use crate::config::{Config, KubeDnsConfigMap};
use crate::kubedns::{KubeDns, KubeDnsError, Snapshot};
use crate::metrics::Metrics;
use nodedns_resolver::Resolver;

/// How often the file is re-read to detect changes.
pub const POLL_INTERVAL: Duration = Duration::from_secs(2);

/// What was last read from the kube-dns ConfigMap, carried from startup into [`watch_from`].
#[derive(Debug, Default)]
pub struct KubeDnsState {
    /// The setting it was read under; a change of `path` starts over.
    source: Option<KubeDnsConfigMap>,
    /// The last content read (valid or not), or why it could not be read: an unchanged ConfigMap
    /// is not parsed, logged or counted again.
    last_read: Option<Result<Snapshot, KubeDnsError>>,
    /// The last valid content: what is merged into the config file's zones.
    valid: Option<(Snapshot, KubeDns)>,
}

impl KubeDnsState {
    /// Re-reads the ConfigMap named by `base`. Returns `None` when nothing changed since the last
    /// read, else whether the new content is valid (the error is logged and counted here).
    fn refresh(&mut self, base: &Config, metrics: &Metrics) -> Option<Result<(), ()>> {
        let Some(source) = &base.kube_dns_configmap else {
            let had = self.valid.is_some();
            *self = KubeDnsState::default();
            return had.then_some(Ok(()));
        };
        if self.source.as_ref().map(|s| &s.path) != Some(&source.path) {
            *self = KubeDnsState { source: Some(source.clone()), ..KubeDnsState::default() };
        }
        let read = Snapshot::read(&source.path);
        if self.last_read.as_ref() == Some(&read) {
            return None;
        }
        self.last_read = Some(read.clone());
        let parsed = read.and_then(|s| KubeDns::parse(&s).map(|k| (s, k)));
        let checked = parsed.and_then(|(s, k)| k.apply_to(base, &s.dir).map(|_| (s, k)));
        match checked {
            Ok(valid) => {
                self.valid = Some(valid);
                Some(Ok(()))
            }
            Err(e) => {
                metrics.config_reloads.with_label_values(&["failure"]).inc();
                error!(path = %source.path.display(), problems = %e, "kube-dns ConfigMap rejected; the previous zones keep serving");
                Some(Err(()))
            }
        }
    }

    /// `base` with the last valid ConfigMap's zones merged in (`base` alone without one). Fails
    /// when a new config file makes the ConfigMap loop (one of its nameservers became a listen
    /// address).
    fn merged(&self, base: &Config) -> Result<Config, KubeDnsError> {
        let Some((snapshot, kube)) = &self.valid else {
            return Ok(base.clone());
        };
        let applied = kube.apply_to(base, &snapshot.dir)?;
        for name in &applied.shadowed {
            warn!(zone = %name, "stub domain of the kube-dns ConfigMap ignored: the config file has a zone of that name");
        }
        Ok(applied.config)
    }

    /// [`Self::merged`], or on failure `base` alone, counted and logged.
    fn merged_or_base(&self, base: &Config, metrics: &Metrics) -> Config {
        self.merged(base).unwrap_or_else(|e| {
            metrics.config_reloads.with_label_values(&["failure"]).inc();
            error!(problems = %e, "kube-dns ConfigMap not applied to the new config; its zones are dropped until it is fixed");
            base.clone()
        })
    }

    fn summary(&self) -> (usize, usize) {
        self.valid.as_ref().map(|(_, k)| (k.stub_domains.len(), k.upstream_nameservers.len())).unwrap_or((0, 0))
    }
}

/// The config to serve at startup: `base` (the validated config file) with the kube-dns
/// ConfigMap's zones merged in, and the state to hand to [`watch_from`]. An unreadable or invalid
/// ConfigMap is logged and counted, and `base` alone serves until a valid version appears.
pub fn start(base: &Config, metrics: &Metrics) -> (Config, KubeDnsState) {
    let mut state = KubeDnsState::default();
    if state.refresh(base, metrics) == Some(Ok(())) {
        let (stubs, upstreams) = state.summary();
        info!(stub_domains = stubs, upstream_nameservers = upstreams, "kube-dns ConfigMap applied");
    }
    let serving = state.merged_or_base(base, metrics);
    (serving, state)
}

/// Watches the config file at `path` (`base` is its content as loaded) and the kube-dns ConfigMap
/// (`kube`, from [`start`]), reconfiguring `engine` whenever the merged result changes.
/// `overrides` (the command line's replacements of file values) are applied to every file read.
pub async fn watch_from(
    path: PathBuf,
    mut base: Config,
    mut kube: KubeDnsState,
    engine: Arc<Resolver>,
    metrics: Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
    overrides: CliOverrides,
) {
    let mut hup = signal(SignalKind::hangup()).ok();
    let mut last = std::fs::read(&path).ok();
    let mut tick = tokio::time::interval(POLL_INTERVAL);
    let mut kube_tick = kube_interval(&base);
    let mut serving = kube.merged(&base).unwrap_or_else(|_| base.clone());
    loop {
        let (file, forced) = tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = tick.tick() => (true, false),
            _ = kube_tick.tick(), if base.kube_dns_configmap.is_some() => (false, false),
            Some(_) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => (true, true),
        };
        if file {
            let content = std::fs::read(&path).ok();
            if forced || content != last {
                last = content;
                match Config::load(&path) {
                    Ok(mut next) => {
                        overrides.apply(&mut next);
                        if next != base {
                            warn_restart_keys(&base, &next, &overrides);
                            if next.kube_dns_configmap != base.kube_dns_configmap {
                                kube_tick = kube_interval(&next);
                            }
                            base = next;
                            // Re-read the ConfigMap under the new file; if it did not change, the
                            // last valid version is merged again.
                            kube.refresh(&base, &metrics);
                            apply(&engine, &metrics, &base, &kube, &mut serving, &path, "config reloaded");
                        }
                    }
                    Err(e) => {
                        metrics.config_reloads.with_label_values(&["failure"]).inc();
                        error!(problems = %e, "config reload rejected; the previous config keeps serving");
                    }
                }
            }
            if !forced {
                continue;
            }
        }
        // The ConfigMap's interval, or SIGHUP.
        if kube.refresh(&base, &metrics) == Some(Ok(())) {
            let (stubs, upstreams) = kube.summary();
            info!(stub_domains = stubs, upstream_nameservers = upstreams, "kube-dns ConfigMap read");
            apply(&engine, &metrics, &base, &kube, &mut serving, &path, "kube-dns ConfigMap applied");
        }
    }
}

/// Reconfigures `engine` if the merged config differs from what it serves.
fn apply(
    engine: &Resolver,
    metrics: &Metrics,
    base: &Config,
    kube: &KubeDnsState,
    serving: &mut Config,
    path: &Path,
    what: &str,
) {
    let next = kube.merged_or_base(base, metrics);
    if next == *serving {
        return;
    }
    engine.reconfigure(&next);
    metrics.config_reloads.with_label_values(&["success"]).inc();
    let zones: Vec<String> = next.zones.iter().map(|z| z.name.to_string()).collect();
    info!(path = %path.display(), zones = ?zones, "{what}");
    *serving = next;
}

/// One warning naming every key of this reload that only a restart applies (the reload contract:
/// [`crate::config::change`]); the rest is applied by the caller.
fn warn_restart_keys(current: &Config, next: &Config, overrides: &CliOverrides) {
    let changes = classify(current, next, overrides);
    let keys = restart_keys(&changes);
    if !keys.is_empty() {
        warn!(keys = %keys.join(", "), "config change needs a restart to take effect; the rest is applied now");
    }
}

/// The ConfigMap poll timer (never fires without `kube_dns_configmap`: the select skips it).
fn kube_interval(config: &Config) -> Interval {
    let period = config.kube_dns_configmap.as_ref().map(|k| k.reload_interval).unwrap_or(POLL_INTERVAL);
    let mut i = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    i.set_missed_tick_behavior(MissedTickBehavior::Delay);
    i
}
