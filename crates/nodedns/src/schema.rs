//! Kubernetes DNS schema: which names can exist in a cluster zone (kubernetes/dns
//! docs/specification.md). Being written (issue 9): until then every name may exist and is
//! forwarded.

use hickory_proto::rr::Name;
use nodedns_cache::CacheableAnswer;
use nodedns_wire::Query;

use crate::config::ZoneConfig;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SchemaVerdict {
    /// The name may exist: forward it.
    MayExist,
    /// No name of this shape exists under the specification: answer NXDOMAIN locally.
    CannotExist,
}

pub fn verdict(_name: &Name, _zone: &ZoneConfig) -> SchemaVerdict {
    SchemaVerdict::MayExist
}

/// An NXDOMAIN answer for `query` carrying the SOA record of `soa_answer` (the zone apex SOA
/// answer as cached: a wire message whose answer section holds the SOA).
pub fn nxdomain_answer(_query: &Query<'_>, _soa_answer: &[u8]) -> Option<CacheableAnswer> {
    None
}
