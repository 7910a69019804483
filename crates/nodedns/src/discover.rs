//! Upstream endpoint discovery: a zone with `discover: <headless service name>` resolves that
//! name through its fixed upstream (the kube-dns-upstream Service) every interval and then talks
//! to each CoreDNS pod directly — bypassing kube-proxy's DNAT and its stale conntrack state
//! after CoreDNS scales down. The fixed address stays as the fallback when every discovered
//! endpoint is ejected.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::Message;
use hickory_proto::rr::{Name, RData};
use tokio::sync::watch;
use tracing::{info, warn};

use nodedns_cache::LowerName;
use nodedns_upstream::{PoolConfig, UpstreamPool};
use nodedns_wire::UpstreamQuestion;

use crate::config::ZoneConfig;
use nodedns_resolver::{Resolver, Zone};

/// The A and AAAA addresses of `service`, asked of the zone's fixed upstreams, on port 53.
pub async fn resolve_endpoints(zone: &ZoneConfig, service: &Name) -> Result<Vec<SocketAddr>, String> {
    let fixed = UpstreamPool::new(
        zone.upstreams.addrs(),
        PoolConfig {
            transport: zone.transport,
            tcp_connections: 1,
            query_timeout: zone.query_timeout,
            ..PoolConfig::default()
        },
    );
    let wire =
        hickory_proto::serialize::binary::BinEncodable::to_bytes(&service.to_lowercase()).map_err(|e| e.to_string())?;
    let name = LowerName::new(&wire).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    let mut last_err = None;
    for qtype in [nodedns_cache::TYPE_A, nodedns_cache::TYPE_AAAA] {
        let q = UpstreamQuestion { name, qtype, qclass: 1, dnssec_ok: false, checking_disabled: false };
        match fixed.resolve(&q, &Name::root()).await {
            Ok(r) => {
                if let Ok(msg) = Message::from_vec(&r.answer.message) {
                    for rec in &msg.answers {
                        let ip: Option<IpAddr> = match &rec.data {
                            RData::A(a) => Some(a.0.into()),
                            RData::AAAA(a) => Some(a.0.into()),
                            _ => None,
                        };
                        if let Some(ip) = ip {
                            let sa = SocketAddr::new(ip, 53);
                            if !out.contains(&sa) {
                                out.push(sa);
                            }
                        }
                    }
                }
            }
            Err(e) => last_err = Some(e.to_string()),
        }
    }
    UpstreamPool::close(&fixed.endpoints()).await;
    if out.is_empty()
        && let Some(e) = last_err
    {
        return Err(e);
    }
    out.sort();
    Ok(out)
}

/// Keeps one discovery loop ([`run`]) per zone that has `discover` in the config in force, until
/// `stop`: a reload that gives a zone `discover` starts its loop (the first resolution at once),
/// one that removes it stops the loop (the zone then serves its fixed upstreams, as configured),
/// and one that changes the service or its interval restarts it, so the new target is resolved
/// at once rather than after the old interval. A stopped loop is aborted, so a resolution of the
/// old target still under way can never overwrite the new zone's endpoints.
pub async fn supervise(engine: Arc<Resolver>, mut stop: watch::Receiver<bool>) {
    let mut changed = engine.zones_changed();
    let mut running: HashMap<Name, (Name, Duration, tokio::task::JoinHandle<()>)> = HashMap::new();
    loop {
        changed.mark_unchanged();
        let zones = engine.zones();
        running.retain(|name, (service, interval, task)| {
            let keep = zones.iter().any(|z| {
                &z.config.name == name
                    && z.config.discover.as_ref() == Some(service)
                    && z.config.discover_interval == *interval
            });
            if !keep {
                task.abort();
            }
            keep
        });
        for zone in zones.iter() {
            if let Some(service) = &zone.config.discover
                && !running.contains_key(&zone.config.name)
            {
                let task = tokio::spawn(run(engine.clone(), zone.config.name.clone(), stop.clone()));
                running.insert(zone.config.name.clone(), (service.clone(), zone.config.discover_interval, task));
            }
        }
        tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            r = changed.changed() => if r.is_err() { break },
        }
    }
    for (_, (_, _, task)) in running {
        task.abort();
    }
}

/// Keeps the pool of `zone` in step with the discovered endpoints until `stop`.
pub async fn run(engine: Arc<Resolver>, zone_name: Name, mut stop: watch::Receiver<bool>) {
    loop {
        let Some(zone) = engine.zones().iter().find(|z| z.config.name == zone_name).cloned() else {
            return;
        };
        let Some(service) = zone.config.discover.clone() else {
            return;
        };
        refresh(&zone, &service).await;
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = tokio::time::sleep(zone.config.discover_interval) => {}
        }
    }
}

async fn refresh(zone: &Zone, service: &Name) {
    match resolve_endpoints(&zone.config, service).await {
        Ok(found) if !found.is_empty() => {
            let before: Vec<SocketAddr> = zone.pool.endpoints().iter().map(|e| e.endpoint.addr).collect();
            if before != found {
                let removed = zone.pool.set_endpoints(&found);
                zone.pool.set_fallback(zone.config.upstreams.addrs());
                info!(zone = %zone.label, service = %service, endpoints = ?found, "upstream endpoints discovered");
                UpstreamPool::close(&removed).await;
            }
        }
        Ok(_) => {
            warn!(zone = %zone.label, service = %service, "endpoint discovery found no addresses; keeping the current endpoints")
        }
        Err(e) => {
            warn!(zone = %zone.label, service = %service, error = %e, "endpoint discovery failed; keeping the current endpoints")
        }
    }
}

#[cfg(test)]
mod tests {
    use hickory_proto::rr::RecordType;
    use nodedns_testkit::FakeUpstream;

    use super::*;
    use crate::config::Config;

    fn config(up: SocketAddr, discover: Option<&str>) -> Config {
        let discover = discover.map(|s| format!("    discover: \"{s}\"\n    discover_interval_secs: 3600\n"));
        let text = format!(
            "listen: [\"127.0.0.1:5353\"]\nzones:\n  - name: \".\"\n    upstreams: [\"{up}\"]\n{}",
            discover.unwrap_or_default()
        );
        Config::parse(&text, "test.yaml").expect("config")
    }

    fn endpoints(engine: &Resolver) -> Vec<SocketAddr> {
        engine.zones()[0].pool.endpoints().iter().map(|e| e.endpoint.addr).collect()
    }

    async fn wait_for_endpoints(engine: &Resolver, want: &[SocketAddr]) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while endpoints(engine) != want {
            assert!(tokio::time::Instant::now() < deadline, "endpoints {:?}, want {want:?}", endpoints(engine));
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn discovery_follows_zones_that_gain_change_and_lose_discover() {
        let fixed = FakeUpstream::start();
        fixed.answer("one.svc.example", RecordType::A, &["127.0.0.21"], 30);
        fixed.answer("two.svc.example", RecordType::A, &["127.0.0.22"], 30);
        let clock = nodedns_resolver::Clock::starting_now();
        let metrics = crate::metrics::Metrics::new(false);
        let engine = Resolver::new(&config(fixed.addr(), None), metrics, None, clock);
        let (stop_tx, stop) = watch::channel(false);
        let supervisor = tokio::spawn(supervise(engine.clone(), stop));
        assert_eq!(endpoints(&engine), [fixed.addr()]);

        // Gained: resolved at once, although the interval is an hour.
        engine.reconfigure(&config(fixed.addr(), Some("one.svc.example")));
        wait_for_endpoints(&engine, &["127.0.0.21:53".parse().unwrap()]).await;
        // Changed: the loop restarts on the new service.
        engine.reconfigure(&config(fixed.addr(), Some("two.svc.example")));
        wait_for_endpoints(&engine, &["127.0.0.22:53".parse().unwrap()]).await;
        // Lost: the fixed upstream, and no loop puts discovered endpoints back.
        engine.reconfigure(&config(fixed.addr(), None));
        assert_eq!(endpoints(&engine), [fixed.addr()]);
        let asked = fixed.query_count("two.svc.example", RecordType::A);
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(endpoints(&engine), [fixed.addr()]);
        assert_eq!(fixed.query_count("two.svc.example", RecordType::A), asked);

        let _ = stop_tx.send(true);
        tokio::time::timeout(Duration::from_secs(2), supervisor).await.expect("supervisor stops").unwrap();
    }
}
