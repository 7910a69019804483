//! Which keys a reload changes, and for each whether the running daemon applies it at once or
//! only a restart does: the reload contract (README, "Configuration"), in one place.
//!
//! Every config struct is destructured field by field, never with `..`: adding a field to any of
//! them (here or in `nodedns_cache::{TtlPolicy, FailurePolicy}`) fails to compile until it is
//! classified below, so a new key can never be silently ignored by a reload again (issue 14: the
//! old hand-written list covered five keys).
//!
//! Keys are the YAML key paths of the README's config reference. Zones are named by their name
//! (`zones["cluster.local."].max_ttl_secs`), not their index: the running config's zones are
//! sorted and merged with the kube-dns ConfigMap's, so an index would name the wrong one.

use std::net::SocketAddr;

use nodedns_cache::{FailurePolicy, TtlPolicy};

use crate::{
    AdminConfig, CacheConfig, Config, DnstapConfig, KubeDnsConfigMap, Limits, LogConfig, NodeConfig, ServerConfig,
    ZoneConfig,
};

/// When a changed key takes effect.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applies {
    /// The reload applies it.
    Live,
    /// Only a restart applies it; the reload names it in its warning.
    Restart,
}

/// One changed key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyChange {
    /// YAML key path, e.g. `limits.max_inflight`, `node.interface`, `zones["."].upstreams`.
    pub key: String,
    pub applies: Applies,
}

/// What the command line put in place of the file's values. Kept so that every config read on a
/// reload gets the same replacement, and so that a file value that is not in use is never
/// reported as needing a restart.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CliOverrides {
    /// `--admin-listen`: replaces `admin.listen`.
    pub admin_listen: Option<Vec<SocketAddr>>,
}

impl CliOverrides {
    /// Puts the command line's values into `config` (read from the file).
    pub fn apply(&self, config: &mut Config) {
        if let Some(a) = &self.admin_listen {
            config.admin.listen = a.clone();
        }
    }
}

/// Every key that differs between `old` and `new`, in the order of the config reference.
pub fn classify(old: &Config, new: &Config, overrides: &CliOverrides) -> Vec<KeyChange> {
    let mut c = Changes(Vec::new());
    let Config {
        listen: old_listen,
        cache: old_cache,
        zones: old_zones,
        admin: old_admin,
        node: old_node,
        limits: old_limits,
        log: old_log,
        server: old_server,
        kube_dns_configmap: old_kube,
    } = old;
    let Config { listen, cache, zones, admin, node, limits, log, server, kube_dns_configmap } = new;
    c.diff("listen", Applies::Restart, &own_listen(old_listen, old_node.as_ref()), &own_listen(listen, node.as_ref()));
    c.cache(old_cache, cache);
    c.zones(old_zones, zones);
    c.admin(old_admin, admin, overrides);
    c.optional("node", Applies::Restart, old_node.as_ref(), node.as_ref(), Changes::node);
    c.limits(old_limits, limits);
    c.optional(
        "kube_dns_configmap",
        Applies::Live,
        old_kube.as_ref(),
        kube_dns_configmap.as_ref(),
        Changes::kube_dns_configmap,
    );
    c.log(old_log, log);
    c.server(old_server, server);
    c.0
}

/// The keys of `changes` that need a restart, for the reload's one warning line.
pub fn restart_keys(changes: &[KeyChange]) -> Vec<&str> {
    changes.iter().filter(|k| k.applies == Applies::Restart).map(|k| k.key.as_str()).collect()
}

/// `listen` as the file wrote it: the validated list also holds every node address on
/// `node.dns_port`, and a change of those is a change of `node.*`, named there.
fn own_listen(listen: &[SocketAddr], node: Option<&NodeConfig>) -> Vec<SocketAddr> {
    let from_node = |a: &SocketAddr| node.is_some_and(|n| a.port() == n.dns_port && n.addresses.contains(&a.ip()));
    listen.iter().filter(|a| !from_node(a)).copied().collect()
}

struct Changes(Vec<KeyChange>);

impl Changes {
    fn diff<T: PartialEq + ?Sized>(&mut self, key: &str, applies: Applies, old: &T, new: &T) {
        if old != new {
            self.0.push(KeyChange { key: key.to_string(), applies });
        }
    }

    /// An optional section: gained or lost is the section's key; present in both, `each` names
    /// the changed sub-keys.
    fn optional<T>(
        &mut self,
        key: &str,
        applies: Applies,
        old: Option<&T>,
        new: Option<&T>,
        each: fn(&mut Self, &T, &T),
    ) {
        match (old, new) {
            (Some(o), Some(n)) => each(self, o, n),
            (None, None) => {}
            _ => self.0.push(KeyChange { key: key.to_string(), applies }),
        }
    }

    fn cache(&mut self, old: &CacheConfig, new: &CacheConfig) {
        let CacheConfig {
            max_bytes: old_max_bytes,
            ttl: old_ttl,
            max_stale: old_max_stale,
            stale_answer_timeout: old_stale_answer_timeout,
            prefetch: old_prefetch,
            failure: old_failure,
            pair_wait: old_pair_wait,
        } = old;
        let CacheConfig { max_bytes, ttl, max_stale, stale_answer_timeout, prefetch, failure, pair_wait } = new;
        // The cache's memory is allocated (sharded) once, at start.
        self.diff("cache.max_bytes", Applies::Restart, old_max_bytes, max_bytes);
        // A lowered ceiling also caps the entries already cached (the live set's reason to be).
        self.ttl("cache.", old_ttl, ttl);
        self.diff("cache.max_stale_secs", Applies::Live, old_max_stale, max_stale);
        self.diff("cache.stale_answer_timeout_ms", Applies::Live, old_stale_answer_timeout, stale_answer_timeout);
        self.diff("cache.prefetch", Applies::Live, old_prefetch, prefetch);
        // `initial` is fixed at 1 s (RFC 9520 §3.2), not a key; compared anyway so that it could
        // never change unseen.
        let FailurePolicy { initial: old_initial, max: old_failure_max } = old_failure;
        let FailurePolicy { initial, max: failure_max } = failure;
        self.diff(
            "cache.failure_max_ttl_secs",
            Applies::Live,
            &(old_initial, old_failure_max),
            &(initial, failure_max),
        );
        self.diff("cache.pair_wait_ms", Applies::Live, old_pair_wait, pair_wait);
    }

    /// The three TTL keys, live everywhere: `prefix` is `cache.` or a zone's key.
    fn ttl(&mut self, prefix: &str, old: &TtlPolicy, new: &TtlPolicy) {
        let TtlPolicy { min_ttl: old_min, max_ttl: old_max, denial_max_ttl: old_denial } = old;
        let TtlPolicy { min_ttl, max_ttl, denial_max_ttl } = new;
        self.diff(&format!("{prefix}min_ttl_secs"), Applies::Live, old_min, min_ttl);
        self.diff(&format!("{prefix}max_ttl_secs"), Applies::Live, old_max, max_ttl);
        self.diff(&format!("{prefix}denial_max_ttl_secs"), Applies::Live, old_denial, denial_max_ttl);
    }

    /// Zones are matched by name: one added or removed is `zones["name"]`; one in both names each
    /// changed key. All of it is live.
    fn zones(&mut self, old: &[ZoneConfig], new: &[ZoneConfig]) {
        let key = |z: &ZoneConfig| format!("zones[{:?}]", z.name.to_string());
        for o in old {
            match new.iter().find(|n| n.name == o.name) {
                Some(n) => self.zone(&key(o), o, n),
                None => self.0.push(KeyChange { key: key(o), applies: Applies::Live }),
            }
        }
        for n in new.iter().filter(|n| !old.iter().any(|o| o.name == n.name)) {
            self.0.push(KeyChange { key: key(n), applies: Applies::Live });
        }
    }

    fn zone(&mut self, prefix: &str, old: &ZoneConfig, new: &ZoneConfig) {
        let ZoneConfig {
            name: _, // What the zones were matched by.
            upstreams: old_upstreams,
            transport: old_transport,
            ttl: old_ttl,
            tcp_connections: old_tcp_connections,
            query_timeout: old_query_timeout,
            query_budget: old_query_budget,
            discover: old_discover,
            discover_interval: old_discover_interval,
            kubernetes_schema: old_kubernetes_schema,
            schema_exceptions: old_schema_exceptions,
        } = old;
        let ZoneConfig {
            name: _,
            upstreams,
            transport,
            ttl,
            tcp_connections,
            query_timeout,
            query_budget,
            discover,
            discover_interval,
            kubernetes_schema,
            schema_exceptions,
        } = new;
        let live = |c: &mut Self, k: &str, changed: bool| {
            if changed {
                c.0.push(KeyChange { key: format!("{prefix}.{k}"), applies: Applies::Live });
            }
        };
        live(self, "upstreams", old_upstreams != upstreams);
        live(self, "transport", old_transport != transport);
        self.ttl(&format!("{prefix}."), old_ttl, ttl);
        live(self, "tcp_connections", old_tcp_connections != tcp_connections);
        live(self, "query_timeout_ms", old_query_timeout != query_timeout);
        live(self, "query_budget_ms", old_query_budget != query_budget);
        live(self, "discover", old_discover != discover);
        live(self, "discover_interval_secs", old_discover_interval != discover_interval);
        live(self, "kubernetes_schema", old_kubernetes_schema != kubernetes_schema);
        live(self, "schema_exceptions", old_schema_exceptions != schema_exceptions);
    }

    fn admin(&mut self, old: &AdminConfig, new: &AdminConfig, overrides: &CliOverrides) {
        let AdminConfig { listen: old_listen, coredns_compatible_metrics: old_compat } = old;
        let AdminConfig { listen, coredns_compatible_metrics } = new;
        // With --admin-listen the file's value is not in use: changing it changes nothing.
        if overrides.admin_listen.is_none() {
            self.diff("admin.listen", Applies::Restart, old_listen, listen);
        }
        // The metric families are registered once, at start.
        self.diff("admin.coredns_compatible_metrics", Applies::Restart, old_compat, coredns_compatible_metrics);
    }

    /// Every key: the interface, its addresses and the firewall rules are set up once, at start.
    fn node(&mut self, old: &NodeConfig, new: &NodeConfig) {
        let NodeConfig {
            interface: old_interface,
            interface_kind: old_interface_kind,
            addresses: old_addresses,
            firewall: old_firewall,
            resync_interval: old_resync_interval,
            teardown_on_exit: old_teardown_on_exit,
            dns_port: old_dns_port,
        } = old;
        let NodeConfig { interface, interface_kind, addresses, firewall, resync_interval, teardown_on_exit, dns_port } =
            new;
        let r = Applies::Restart;
        self.diff("node.interface", r, old_interface, interface);
        self.diff("node.interface_kind", r, old_interface_kind, interface_kind);
        self.diff("node.addresses", r, old_addresses, addresses);
        self.diff("node.firewall", r, old_firewall, firewall);
        self.diff("node.resync_interval_secs", r, old_resync_interval, resync_interval);
        self.diff("node.teardown_on_exit", r, old_teardown_on_exit, teardown_on_exit);
        self.diff("node.dns_port", r, old_dns_port, dns_port);
    }

    fn limits(&mut self, old: &Limits, new: &Limits) {
        let Limits {
            max_inflight: old_max_inflight,
            max_tcp_connections: old_max_tcp_connections,
            max_tcp_connections_per_client: old_max_tcp_connections_per_client,
            max_pipelined_per_connection: old_max_pipelined_per_connection,
            tcp_idle_timeout: old_tcp_idle_timeout,
            max_udp_payload: old_max_udp_payload,
            per_client_qps: old_per_client_qps,
            max_upstream_inflight: old_max_upstream_inflight,
            upstream_queue_wait: old_upstream_queue_wait,
        } = old;
        let Limits {
            max_inflight,
            max_tcp_connections,
            max_tcp_connections_per_client,
            max_pipelined_per_connection,
            tcp_idle_timeout,
            max_udp_payload,
            per_client_qps,
            max_upstream_inflight,
            upstream_queue_wait,
        } = new;
        let (l, r) = (Applies::Live, Applies::Restart);
        self.diff("limits.max_inflight", l, old_max_inflight, max_inflight);
        self.diff("limits.max_tcp_connections", r, old_max_tcp_connections, max_tcp_connections);
        self.diff(
            "limits.max_tcp_connections_per_client",
            r,
            old_max_tcp_connections_per_client,
            max_tcp_connections_per_client,
        );
        self.diff(
            "limits.max_pipelined_per_connection",
            r,
            old_max_pipelined_per_connection,
            max_pipelined_per_connection,
        );
        self.diff("limits.tcp_idle_timeout_secs", r, old_tcp_idle_timeout, tcp_idle_timeout);
        self.diff("limits.max_udp_payload_bytes", l, old_max_udp_payload, max_udp_payload);
        self.diff("limits.per_client_qps", r, old_per_client_qps, per_client_qps);
        self.diff("limits.max_upstream_inflight", r, old_max_upstream_inflight, max_upstream_inflight);
        self.diff("limits.upstream_queue_wait_ms", r, old_upstream_queue_wait, upstream_queue_wait);
    }

    fn kube_dns_configmap(&mut self, old: &KubeDnsConfigMap, new: &KubeDnsConfigMap) {
        let KubeDnsConfigMap { path: old_path, reload_interval: old_interval, transport: old_transport } = old;
        let KubeDnsConfigMap { path, reload_interval, transport } = new;
        let l = Applies::Live;
        self.diff("kube_dns_configmap.path", l, old_path, path);
        self.diff("kube_dns_configmap.reload_interval_secs", l, old_interval, reload_interval);
        self.diff("kube_dns_configmap.transport", l, old_transport, transport);
    }

    fn log(&mut self, old: &LogConfig, new: &LogConfig) {
        let LogConfig { format: old_format, level: old_level, queries_sample_rate: old_rate, dnstap: old_dnstap } = old;
        let LogConfig { format, level, queries_sample_rate, dnstap } = new;
        // The subscriber's formatter is installed once, at start; its filter can be swapped.
        self.diff("log.format", Applies::Restart, old_format, format);
        self.diff("log.level", Applies::Live, old_level, level);
        self.diff("log.queries_sample_rate", Applies::Live, old_rate, queries_sample_rate);
        // The writer thread and its socket or file are opened once, at start: one key for all of it.
        let dnstap_fields = |d: &DnstapConfig| {
            let DnstapConfig { target, identity } = d;
            (target.clone(), identity.clone())
        };
        self.diff(
            "log.dnstap",
            Applies::Restart,
            &old_dnstap.as_ref().map(dnstap_fields),
            &dnstap.as_ref().map(dnstap_fields),
        );
    }

    fn server(&mut self, old: &ServerConfig, new: &ServerConfig) {
        let ServerConfig { workers: old_workers, drain_timeout: old_drain, handover_socket: old_handover } = old;
        let ServerConfig { workers, drain_timeout, handover_socket } = new;
        self.diff("server.workers", Applies::Restart, old_workers, workers);
        // The value in force when shutdown starts is the one used.
        self.diff("server.drain_timeout_secs", Applies::Live, old_drain, drain_timeout);
        self.diff("server.handover_socket", Applies::Restart, old_handover, handover_socket);
    }
}

#[cfg(test)]
mod tests;
