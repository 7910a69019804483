//! `zones`.

use std::net::SocketAddr;
use std::time::Duration;

use nodedns_cache::{Ttl, TtlPolicy};

use super::Validator;
use crate::raw::{RawCache, RawTransport, RawUpstreams, RawZone};
use crate::{UpstreamSource, ZoneConfig, parse_socket_addr, parse_zone_name};

/// resolv.conf, read at most once however many zones name it.
struct ResolvConf<'r> {
    read: &'r dyn Fn() -> Result<Vec<SocketAddr>, String>,
    got: Option<Result<Vec<SocketAddr>, String>>,
}

impl ResolvConf<'_> {
    fn nameservers(&mut self) -> Result<Vec<SocketAddr>, String> {
        self.got.get_or_insert_with(self.read).clone()
    }
}

impl Validator<'_> {
    /// `cache` gives the TTL bounds a zone inherits; `listen` is every listener (node addresses
    /// included), which no upstream may be.
    pub(super) fn zones(
        &mut self,
        raw: &[RawZone],
        cache: &RawCache,
        listen: &[SocketAddr],
        resolv_conf: &dyn Fn() -> Result<Vec<SocketAddr>, String>,
    ) -> Vec<ZoneConfig> {
        let mut zones = Vec::new();
        if raw.is_empty() {
            self.problem("zones", "at least one zone is required (use name \".\" for everything)");
        }
        let mut resolv = ResolvConf { read: resolv_conf, got: None };
        for (i, z) in raw.iter().enumerate() {
            if let Some(zone) = self.zone(i, z, cache, listen, &zones, &mut resolv) {
                zones.push(zone);
            }
        }
        // Most labels first: the first zone that contains a name is its longest suffix.
        zones.sort_by_key(|z| std::cmp::Reverse(z.name.num_labels()));
        zones
    }

    /// `zones[i]`; `None` when its name is unusable (nothing else about it can be checked).
    fn zone(
        &mut self,
        i: usize,
        z: &RawZone,
        cache: &RawCache,
        listen: &[SocketAddr],
        earlier: &[ZoneConfig],
        resolv: &mut ResolvConf<'_>,
    ) -> Option<ZoneConfig> {
        let key = |k: &str| format!("zones[{i}].{k}");
        let name = match parse_zone_name(&z.name) {
            Ok(n) => n,
            Err(e) => {
                self.problem(&key("name"), e);
                return None;
            }
        };
        if earlier.iter().any(|other| other.name == name) {
            self.problem(&key("name"), format!("zone `{name}` is defined twice"));
        }
        let upstreams = match &z.upstreams {
            RawUpstreams::Named(s) if s == "resolv.conf" => match resolv.nameservers() {
                Ok(a) if a.is_empty() => {
                    self.problem(&key("upstreams"), "/etc/resolv.conf lists no usable nameserver");
                    UpstreamSource::ResolvConf(a)
                }
                Ok(a) => UpstreamSource::ResolvConf(a),
                Err(e) => {
                    self.problem(&key("upstreams"), e);
                    UpstreamSource::ResolvConf(Vec::new())
                }
            },
            RawUpstreams::Named(s) => {
                self.problem(&key("upstreams"), format!("`{s}`: expected a list of addresses or \"resolv.conf\""));
                UpstreamSource::Fixed(Vec::new())
            }
            RawUpstreams::List(list) => {
                if list.is_empty() && z.discover.is_none() {
                    self.problem(&key("upstreams"), "at least one upstream is required");
                }
                let mut addrs = Vec::new();
                for (j, u) in list.iter().enumerate() {
                    match parse_socket_addr(u, 53) {
                        Ok(a) => addrs.push(a),
                        Err(e) => self.problem(&format!("zones[{i}].upstreams[{j}]"), e),
                    }
                }
                UpstreamSource::Fixed(addrs)
            }
        };
        // Forwarding to ourselves would loop every miss until the deadline.
        for a in upstreams.addrs() {
            if listen.contains(a) {
                self.problem(
                    &key("upstreams"),
                    format!("{a} is one of nodedns's own listen addresses (forwarding loop)"),
                );
            }
        }
        let zmin = self.range(&key("min_ttl_secs"), z.min_ttl_secs.unwrap_or(cache.min_ttl_secs), 0, 86_400);
        let zmax = self.range(&key("max_ttl_secs"), z.max_ttl_secs.unwrap_or(cache.max_ttl_secs), 1, 7 * 86_400);
        let zden = self.range(
            &key("denial_max_ttl_secs"),
            z.denial_max_ttl_secs.unwrap_or(cache.denial_max_ttl_secs),
            1,
            7 * 86_400,
        );
        if zmax < zmin {
            self.problem(&key("max_ttl_secs"), format!("{zmax} is below the zone's min_ttl_secs ({zmin})"));
        }
        if zden < zmin {
            self.problem(&key("denial_max_ttl_secs"), format!("{zden} is below the zone's min_ttl_secs ({zmin})"));
        }
        let conns = self.range(&key("tcp_connections"), z.tcp_connections.unwrap_or(2), 1, 64);
        // 1 s attempts leave room, inside the 2.5 s budget, for the retry on another endpoint
        // that comes before a failure is cached; both stay well under glibc's 5 s timeout.
        let timeout = self.range(&key("query_timeout_ms"), z.query_timeout_ms.unwrap_or(1000), 50, 30_000);
        let budget = self.range(&key("query_budget_ms"), z.query_budget_ms.unwrap_or(2500.max(timeout)), 50, 60_000);
        if budget < timeout {
            self.problem(&key("query_budget_ms"), format!("{budget} is below the zone's query_timeout_ms ({timeout})"));
        }
        let discover = z.discover.as_ref().and_then(|d| match parse_zone_name(d) {
            Ok(n) => Some(n),
            Err(e) => {
                self.problem(&key("discover"), e);
                None
            }
        });
        let interval = self.range(&key("discover_interval_secs"), z.discover_interval_secs.unwrap_or(30), 1, 3600);
        // The schema describes a cluster domain: it must never decide over the root or the
        // reverse zones (their names have nothing to do with Services and Pods).
        let reverse = ["in-addr.arpa.", "ip6.arpa."].iter().any(|r| name.to_ascii().ends_with(r));
        if z.kubernetes_schema && (name.is_root() || reverse) {
            self.problem(&key("kubernetes_schema"), format!("`{name}` is not a cluster domain"));
        }
        let mut exceptions = Vec::new();
        for (j, e) in z.schema_exceptions.iter().enumerate() {
            match parse_zone_name(e) {
                Ok(n) if name.zone_of(&n) => exceptions.push(n),
                Ok(n) => self
                    .problem(&format!("zones[{i}].schema_exceptions[{j}]"), format!("`{n}` is outside zone `{name}`")),
                Err(err) => self.problem(&format!("zones[{i}].schema_exceptions[{j}]"), err),
            }
        }
        Some(ZoneConfig {
            name,
            upstreams,
            transport: match z.transport {
                RawTransport::Tcp => nodedns_upstream::Transport::Tcp,
                RawTransport::Udp => nodedns_upstream::Transport::Udp,
            },
            ttl: TtlPolicy {
                min_ttl: Ttl::from_secs(zmin),
                max_ttl: Ttl::from_secs(zmax),
                denial_max_ttl: Ttl::from_secs(zden),
            },
            tcp_connections: conns as usize,
            query_timeout: Duration::from_millis(timeout),
            query_budget: Duration::from_millis(budget),
            discover,
            discover_interval: Duration::from_secs(interval as u64),
            kubernetes_schema: z.kubernetes_schema,
            schema_exceptions: exceptions,
        })
    }
}
