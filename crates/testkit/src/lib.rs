//! Test support for nodedns: a programmable fake upstream DNS server standing in for CoreDNS,
//! a small synchronous client to query it (or the daemon) with, and wire-name building.
//!
//! [`FakeUpstream`] serves UDP and TCP on one port from its own thread and tokio runtime, answers
//! from canned data set per name and type, and injects faults per query ([`Behaviour`]): delay,
//! drop, SERVFAIL, truncation, closed connections, wrong IDs or questions, extra records. It logs
//! every query it receives, so tests can assert on what the daemon sent upstream.
//!
//! Synchronous `#[test]`s and `#[tokio::test]`s can both use it: every method blocks only
//! briefly and never needs the caller's runtime.

#![forbid(unsafe_code)]

mod behaviour;
mod client;
mod fake_upstream;
mod overload;
mod responder;
mod script;
mod server;

use std::time::{Duration, Instant};

pub use behaviour::Behaviour;
pub use client::{QueryError, exchange_tcp, exchange_udp, new_query, query_tcp, query_tcp_pipelined, query_udp};
pub use fake_upstream::{FakeUpstream, LoggedQuery, Transport};
pub use overload::OverloadModel;
pub use responder::ADVERTISED_UDP_PAYLOAD_BYTES;

/// `name` ("a.example" or "a.example.") as an uncompressed wire name: length-prefixed labels
/// and the root label. Label lengths are not checked, so tests can build bad names with it.
pub fn wire_name(name: &str) -> Vec<u8> {
    let mut w = Vec::new();
    for l in name.trim_end_matches('.').split('.').filter(|l| !l.is_empty()) {
        w.push(l.len() as u8);
        w.extend_from_slice(l.as_bytes());
    }
    w.push(0);
    w
}

/// How often [`wait_until`] re-checks its condition.
const WAIT_POLL_INTERVAL: Duration = Duration::from_millis(5);

/// Polls `condition` until it holds or `timeout` passes; returns whether it held. For state that
/// settles asynchronously, such as [`FakeUpstream::open_tcp_connections`] after a client closes:
/// `assert!(wait_until(Duration::from_secs(5), || upstream.open_tcp_connections() == 0))`.
///
/// Blocks the calling thread; from async code, call it in `spawn_blocking`.
pub fn wait_until(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(WAIT_POLL_INTERVAL);
    }
}
