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
use crate::logging::LogControl;
use crate::metrics::Metrics;
use crate::querylog::QueryLog;
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

/// Everything a reload applies a new config to, owned by the app and handed to the watcher.
pub struct ReloadTargets {
    /// Zones, cache policy, `limits.max_inflight`, `limits.max_udp_payload`.
    pub resolver: Arc<Resolver>,
    pub metrics: Arc<Metrics>,
    /// `log.level`.
    pub log: LogControl,
    /// `log.queries_sample_rate`.
    pub query_log: Arc<QueryLog>,
    /// The merged config in force, for what is read when it is needed (the drain timeout, when
    /// shutdown starts).
    pub in_force: watch::Sender<Config>,
}

/// Watches the config file at `path` (`base` is its content as loaded) and the kube-dns ConfigMap
/// (`kube`, from [`start`]), applying the merged result to `targets` whenever it changes.
/// `overrides` (the command line's replacements of file values) are applied to every file read.
pub async fn watch_from(
    path: PathBuf,
    mut base: Config,
    mut kube: KubeDnsState,
    targets: ReloadTargets,
    mut stop: watch::Receiver<bool>,
    overrides: CliOverrides,
) {
    let metrics = targets.metrics.clone();
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
                            apply(&targets, &base, &kube, &mut serving, &path, "config reloaded");
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
            apply(&targets, &base, &kube, &mut serving, &path, "kube-dns ConfigMap applied");
        }
    }
}

/// Applies the merged config to `targets` if it differs from what they serve: every key the
/// reload contract calls live ([`crate::config::change`]).
fn apply(targets: &ReloadTargets, base: &Config, kube: &KubeDnsState, serving: &mut Config, path: &Path, what: &str) {
    let metrics = &targets.metrics;
    let next = kube.merged_or_base(base, metrics);
    if next == *serving {
        return;
    }
    targets.resolver.reconfigure(&next);
    targets.query_log.set_rate(next.log.queries_sample_rate);
    if next.log.level != serving.log.level {
        if targets.log.set_level(&next.log.level) {
            info!(level = %next.log.level, "log level changed");
        } else if targets.log.overridden_by_env() {
            warn!(level = %next.log.level, "log.level not applied: RUST_LOG is set and wins");
        }
    }
    targets.in_force.send_replace(next.clone());
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

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use hickory_proto::op::Message;
    use hickory_proto::rr::RecordType;
    use nodedns_testkit::{FakeUpstream, new_query};
    use nodedns_wire::{OwnedQuery, Parsed, Transport, parse_query};

    use super::*;

    fn config(up: SocketAddr, extra: &str, corp_max_ttl: u32) -> Config {
        let text = format!(
            "listen: [\"127.0.0.1:5353\"]\n{extra}\nzones:\n  - name: \"corp.example.\"\n    upstreams: [\"{up}\"]\n    max_ttl_secs: {corp_max_ttl}\n  - name: \".\"\n    upstreams: [\"{up}\"]\n"
        );
        Config::parse(&text, "test.yaml").expect("config")
    }

    fn packet(name: &str) -> Vec<u8> {
        let mut q = new_query(name, RecordType::TXT).unwrap();
        q.metadata.id = 7;
        q.to_vec().unwrap()
    }

    fn owned(name: &str) -> OwnedQuery {
        let p = packet(name);
        let Parsed::Query(q) = parse_query(&p) else { panic!("query") };
        q.detach()
    }

    /// The TTL a cache hit for `name` is served with, if it is one.
    fn cached_ttl(resolver: &Resolver, name: &str) -> Option<u32> {
        let p = packet(name);
        let Parsed::Query(q) = parse_query(&p) else { panic!("query") };
        let mut out = [0u8; 4096];
        let (len, _) = resolver.answer_from_cache(&q, Transport::Tcp, &mut out, resolver.now())?;
        Some(Message::from_vec(&out[..len]).unwrap().answers[0].ttl)
    }

    fn targets(config: &Config) -> ReloadTargets {
        let metrics = Metrics::new(false);
        let clock = nodedns_resolver::Clock::starting_now();
        ReloadTargets {
            resolver: Resolver::new(config, metrics.clone(), None, clock),
            metrics,
            log: LogControl::default(),
            query_log: Arc::new(QueryLog::new(config.log.queries_sample_rate)),
            in_force: watch::Sender::new(config.clone()),
        }
    }

    fn reload_to(targets: &ReloadTargets, serving: &mut Config, next: &Config) {
        apply(targets, next, &KubeDnsState::default(), serving, Path::new("t.yaml"), "test");
    }

    #[tokio::test]
    async fn apply_sets_every_live_key_outside_the_zones() {
        let up = FakeUpstream::start();
        let mut serving = config(up.addr(), "", 3600);
        let t = targets(&serving);
        let next = config(
            up.addr(),
            "limits:\n  max_inflight: 7\n  max_udp_payload_bytes: 600\nserver:\n  drain_timeout_secs: 3\ncache:\n  max_stale_secs: 9\nlog:\n  queries_sample_rate: 0.5",
            3600,
        );
        assert_ne!(t.resolver.max_inflight(), 7);
        assert!(!t.query_log.on());
        reload_to(&t, &mut serving, &next);
        assert_eq!(t.resolver.max_inflight(), 7);
        assert_eq!(t.resolver.max_udp_payload(), 600);
        assert_eq!(t.in_force.borrow().server.drain_timeout, Duration::from_secs(3));
        assert_eq!(t.resolver.cache.limits().max_stale.secs(), 9);
        assert!(t.query_log.on());
        assert_eq!(serving, next);
        assert_eq!(t.metrics.config_reloads.with_label_values(&["success"]).get(), 1);
    }

    #[tokio::test]
    async fn a_lowered_zone_ceiling_caps_that_zones_cached_names_only() {
        let up = FakeUpstream::start();
        up.answer("a.corp.example", RecordType::TXT, &["\"v\""], 3000);
        up.answer("a.other.example", RecordType::TXT, &["\"v\""], 3000);
        let mut serving = config(up.addr(), "", 3600);
        let t = targets(&serving);
        for name in ["a.corp.example", "a.other.example"] {
            t.resolver.answer_miss(&owned(name), Transport::Tcp).await.expect("answered");
            assert!(cached_ttl(&t.resolver, name).unwrap() > 2900);
        }
        reload_to(&t, &mut serving, &config(up.addr(), "", 10));
        assert!(cached_ttl(&t.resolver, "a.corp.example").unwrap() <= 10);
        assert!(cached_ttl(&t.resolver, "a.other.example").unwrap() > 2900, "the root zone's ceiling did not change");
        assert_eq!(up.query_count("a.corp.example", RecordType::TXT), 1, "capped in the cache, not re-fetched");
    }
}
