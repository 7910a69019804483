//! The nodedns resolver: what answers a query once the front door has parsed it.
//!
//! - [`resolver`]: the state — zone table ([`zone`]), cache, fetches in flight — and reload.
//! - `hit`: the synchronous cache-hit path (no tokio, no allocation).
//! - `miss`: the miss path, decided by the query's deadline; serve-stale (RFC 8767) and
//!   failure answers (RFC 9520).
//! - `fetch`: coalescing of identical misses, A/AAAA pair fetches, prefetch.
//! - `synthesis` and [`schema`]: the Kubernetes DNS schema rule (NXDOMAIN synthesized for names
//!   that cannot exist, with the zone's SOA).
//! - `probe`: readiness and re-admission probes of upstreams.
//! - [`clock`]: the injected clock every cache timestamp comes from (tokio's, so tests run on
//!   paused time).
//! - [`events`]: what the resolver reports (counters) and what observes its upstream exchanges.
#![forbid(unsafe_code)]

pub mod clock;
pub mod events;
mod fetch;
mod hit;
mod miss;
mod probe;
pub mod resolver;
pub mod schema;
mod synthesis;
mod warn;
pub mod zone;

#[cfg(test)]
mod tests;

pub use clock::Clock;
pub use events::{CacheResult, ForwarderTaps, NoEvents, ResolverEvents, Shed};
pub use fetch::{Fetched, MemberState};
pub use miss::MissAnswer;
pub use nodedns_wire::name_from_wire;
pub use resolver::Resolver;
pub use warn::RateLimitedWarn;
pub use zone::Zone;
