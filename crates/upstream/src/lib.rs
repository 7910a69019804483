//! nodedns upstream transport.
//!
//! A zone's [`UpstreamPool`] holds its endpoints. With `transport: tcp` each endpoint has a small
//! pool of persistent connections, each carrying many outstanding queries matched by ID and
//! question (RFC 7766 §6.2.1.1) — the cluster's DNS traffic rides a few long-lived flows instead
//! of one conntrack entry per query. With `transport: udp` each query gets a fresh socket and a
//! random ID, and truncated answers are retried over TCP.
//!
//! Endpoints carry counters and a latency histogram for metrics, a limit of queries in flight, and
//! a health state judged only on evidence about the endpoint (see [`Evidence`]): a question that
//! fails everywhere is the question's, never an endpoint's. Selection is power of two choices
//! over in-flight queries weighted by mean latency.
#![forbid(unsafe_code)]

mod endpoint;
mod observe;
mod pool;
mod tcp;
mod udp;

pub use endpoint::{
    DEFAULT_MAX_INFLIGHT, EjectionPolicy, Endpoint, EndpointStats, ErrorKind, Evidence, Health, HealthChange,
    InflightPermit, LATENCY_BUCKETS,
};
pub use observe::{ExchangeObserver, WireProtocol};
pub use pool::{EndpointRegistry, EndpointState, PoolConfig, Resolved, Transport, UpstreamError, UpstreamPool};

use nodedns_cache::LowerName;
use nodedns_wire::UpstreamQuestion;

/// An owned copy of an upstream question, kept while the query is outstanding.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct OwnedQuestion {
    name: Box<[u8]>,
    pub qtype: u16,
    pub qclass: u16,
    pub dnssec_ok: bool,
    pub checking_disabled: bool,
}

impl OwnedQuestion {
    pub fn as_question(&self) -> UpstreamQuestion<'_> {
        UpstreamQuestion {
            // Built only from a validated `LowerName`, so this cannot fail.
            name: LowerName::new(&self.name).unwrap_or_else(|_| unreachable!("validated on construction")),
            qtype: self.qtype,
            qclass: self.qclass,
            dnssec_ok: self.dnssec_ok,
            checking_disabled: self.checking_disabled,
        }
    }

    pub fn name_wire(&self) -> &[u8] {
        &self.name
    }
}

impl From<&UpstreamQuestion<'_>> for OwnedQuestion {
    fn from(q: &UpstreamQuestion<'_>) -> Self {
        Self {
            name: q.name.as_wire().into(),
            qtype: q.qtype,
            qclass: q.qclass,
            dnssec_ok: q.dnssec_ok,
            checking_disabled: q.checking_disabled,
        }
    }
}

#[cfg(test)]
mod tests;
