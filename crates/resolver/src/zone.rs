//! The zone table's entries: one configured zone with its upstream pool.

use std::sync::Arc;

use nodedns_config::{Limits, ZoneConfig};
use nodedns_upstream::{EndpointRegistry, PoolConfig, UpstreamError, UpstreamPool};
use nodedns_wire::UpstreamQuestion;

use crate::events::ForwarderTaps;

/// One configured zone with its upstreams.
pub struct Zone {
    pub config: ZoneConfig,
    pub pool: UpstreamPool,
    /// The zone's name as a label value.
    pub label: String,
    /// Unit tests answer from a script instead of the network: paused time cannot wait on
    /// sockets served by another thread.
    #[cfg(test)]
    pub(crate) script: std::sync::OnceLock<Arc<crate::tests::Script>>,
}

impl Zone {
    pub fn new(
        config: ZoneConfig,
        limits: &Limits,
        registry: &Arc<EndpointRegistry>,
        taps: Option<&Arc<dyn ForwarderTaps>>,
    ) -> Self {
        let pool = UpstreamPool::with_registry(
            config.upstreams.addrs(),
            PoolConfig {
                transport: config.transport,
                tcp_connections: config.tcp_connections,
                query_timeout: config.query_timeout,
                query_budget: config.query_budget,
                max_inflight_per_endpoint: limits.max_upstream_inflight,
                queue_wait: limits.upstream_queue_wait,
                ..PoolConfig::default()
            },
            registry.clone(),
        )
        .with_observer(taps.map(|t| t.forwarder(&config.name)));
        let label = config.name.to_ascii();
        Self {
            config,
            pool,
            label,
            #[cfg(test)]
            script: std::sync::OnceLock::new(),
        }
    }

    /// One question to the zone's upstreams.
    pub(crate) async fn resolve(&self, q: &UpstreamQuestion<'_>) -> Result<nodedns_upstream::Resolved, UpstreamError> {
        #[cfg(test)]
        if let Some(script) = self.script.get() {
            return script.resolve(q, &self.config.name).await;
        }
        self.pool.resolve(q, &self.config.name).await
    }
}
