//! The nodedns resolver: what answers a query once the front door has parsed it.
//!
//! - [`resolver`]: the zone table, the synchronous cache-hit path (no tokio, no allocation) and
//!   the miss path — A/AAAA pair fetches, coalescing of identical misses, serve-stale, prefetch
//!   and failure caching (RFC 8767, RFC 9520).
//! - [`schema`]: the Kubernetes DNS schema rule (NXDOMAIN synthesized for names that cannot exist).
//! - [`clock`]: the injected clock every cache timestamp comes from (tokio's, so tests run on
//!   paused time).
//! - [`events`]: what the resolver reports (counters) and what observes its upstream exchanges.
#![forbid(unsafe_code)]

pub mod clock;
pub mod events;
pub mod resolver;
pub mod schema;
mod warn;

#[cfg(test)]
mod tests;

pub use clock::Clock;
pub use events::{CacheResult, ForwarderTaps, NoEvents, ResolverEvents, Shed};
pub use resolver::{Fetched, MemberState, MissAnswer, Resolver, Zone, name_from_wire};
pub use warn::RateLimitedWarn;
