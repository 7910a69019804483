//! Answers made here rather than fetched: the NXDOMAIN the Kubernetes DNS schema rule
//! synthesizes for a name that cannot exist, with the zone's SOA learned from upstream.

use std::sync::Arc;

use tokio::time::Instant;

use nodedns_cache::{CacheKey, CacheableAnswer, Freshness, LowerName};
use nodedns_wire::Query;

use crate::fetch::MemberState;
use crate::resolver::Resolver;
use crate::zone::Zone;

impl Resolver {
    /// The NXDOMAIN answer for a name that cannot exist under the Kubernetes DNS schema, with
    /// the zone's SOA in the authority section (learned from upstream and cached).
    pub(crate) async fn synthesize_nxdomain(
        self: &Arc<Self>,
        zone: &Arc<Zone>,
        query: &Query<'_>,
        deadline: Instant,
    ) -> Option<CacheableAnswer> {
        let soa = self.zone_soa(zone, deadline).await?;
        crate::schema::nxdomain_answer(query, &soa)
    }

    /// The zone apex SOA answer (wire message), from the cache or one upstream query answered by
    /// `deadline`. A failure entry for the SOA means none can be had now.
    async fn zone_soa(self: &Arc<Self>, zone: &Arc<Zone>, deadline: Instant) -> Option<Vec<u8>> {
        let wire = hickory_proto::serialize::binary::BinEncodable::to_bytes(&zone.config.name.to_lowercase()).ok()?;
        let name = LowerName::new(&wire).ok()?;
        let (key, member) = CacheKey::for_query(name, 6, nodedns_cache::CLASS_IN, false, false);
        let now = self.now();
        if let Some((m, fresh, failure)) = self.cache.lookup(&key, member, now, |v| {
            (v.message().to_vec(), matches!(v.freshness, Freshness::Fresh { .. }), v.is_failure())
        }) {
            if failure {
                return None;
            }
            if !fresh {
                // Serve the expired SOA now and refresh it in the background.
                drop(self.fetch(zone, &key));
            }
            return Some(m);
        }
        let mut rx = self.fetch(zone, &key);
        let state = tokio::time::timeout_at(deadline, rx.wait_for(|s| s.settled(member))).await.ok()?.ok()?;
        match state.member(member) {
            MemberState::Answered(f) => Some(f.message.clone()),
            _ => None,
        }
    }
}
