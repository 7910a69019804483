//! Upstream probes the app runs: the zone SOA until an upstream answers (readiness), and a
//! health probe to each ejected endpoint every second (re-admission).

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use nodedns_cache::{CacheKey, LowerName};
use nodedns_wire::UpstreamQuestion;

use crate::fetch::MemberState;
use crate::resolver::Resolver;

impl Resolver {
    /// Asks every zone's upstreams for the zone apex SOA (cached like any answer, and the SOA
    /// later denials use). Returns whether any upstream has answered.
    pub async fn probe_zones(self: &Arc<Self>) -> bool {
        for zone in self.zones().iter() {
            let Ok(wire) = hickory_proto::serialize::binary::BinEncodable::to_bytes(&zone.config.name.to_lowercase())
            else {
                continue;
            };
            let Ok(name) = LowerName::new(&wire) else {
                continue;
            };
            let (key, member) = CacheKey::for_query(name, 6, nodedns_cache::CLASS_IN, false, false);
            let mut rx = self.fetch(zone, &key);
            if let Ok(state) = rx.wait_for(|s| s.settled(member)).await
                && matches!(state.member(member), MemberState::Answered(_))
            {
                return true;
            }
        }
        self.upstream_answered.load(Relaxed)
    }

    /// Every second, sends a health probe (the zone apex SOA) to each ejected endpoint, so
    /// endpoints come back as soon as they answer instead of waiting out their backoff with
    /// client queries as the probes.
    pub async fn probe_ejected_loop(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        loop {
            tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            for zone in self.zones().iter() {
                let Ok(wire) =
                    hickory_proto::serialize::binary::BinEncodable::to_bytes(&zone.config.name.to_lowercase())
                else {
                    continue;
                };
                let Ok(name) = LowerName::new(&wire) else { continue };
                let q = UpstreamQuestion { name, qtype: 6, qclass: 1, dnssec_ok: false, checking_disabled: false };
                zone.pool.probe_ejected(&q, &zone.config.name).await;
            }
        }
    }
}
