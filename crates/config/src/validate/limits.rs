//! `limits`.

use std::time::Duration;

use super::Validator;
use crate::Limits;
use crate::raw::RawLimits;

impl Validator<'_> {
    pub(super) fn limits(&mut self, l: &RawLimits) -> Limits {
        Limits {
            max_inflight: self.range("limits.max_inflight", l.max_inflight, 1, 1_000_000) as usize,
            max_tcp_connections: self.range("limits.max_tcp_connections", l.max_tcp_connections, 1, 1_000_000) as usize,
            max_tcp_connections_per_client: self.range(
                "limits.max_tcp_connections_per_client",
                l.max_tcp_connections_per_client,
                1,
                1_000_000,
            ) as usize,
            max_pipelined_per_connection: self.range(
                "limits.max_pipelined_per_connection",
                l.max_pipelined_per_connection,
                1,
                65_535,
            ) as usize,
            tcp_idle_timeout: Duration::from_secs(self.range(
                "limits.tcp_idle_timeout_secs",
                l.tcp_idle_timeout_secs,
                1,
                3600,
            ) as u64),
            max_udp_payload: self.range("limits.max_udp_payload_bytes", l.max_udp_payload_bytes, 512, 4096),
            per_client_qps: l.per_client_qps,
            max_upstream_inflight: self.range("limits.max_upstream_inflight", l.max_upstream_inflight, 1, 1_000_000)
                as usize,
            upstream_queue_wait: Duration::from_millis(self.range(
                "limits.upstream_queue_wait_ms",
                l.upstream_queue_wait_ms,
                0,
                10_000,
            )),
        }
    }
}
