//! Upstream endpoint discovery: a zone with `discover: <headless service name>` resolves that
//! name through its fixed upstream (the kube-dns-upstream Service) every interval and then talks
//! to each CoreDNS pod directly — bypassing kube-proxy's DNAT and its stale conntrack state
//! after CoreDNS scales down. The fixed address stays as the fallback when every discovered
//! endpoint is ejected.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

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
