//! A hook for watching upstream traffic, for dnstap's FORWARDER_QUERY / FORWARDER_RESPONSE
//! messages: a pool given an [`ExchangeObserver`] reports each query it sends (every attempt,
//! including retries on a fresh connection and TC fallbacks) and each response it receives. A
//! pool without one does nothing extra.

use std::net::SocketAddr;
use std::time::SystemTime;

/// The transport a query went out on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WireProtocol {
    Udp,
    Tcp,
}

/// Receives the wire messages exchanged with upstream endpoints. Called on the miss path, inside
/// the exchange: implementations must return quickly and never block (queue and return).
pub trait ExchangeObserver: Send + Sync {
    /// `query` (the DNS message, without a TCP length prefix) was sent to `upstream` at `sent`.
    fn query_sent(&self, upstream: SocketAddr, protocol: WireProtocol, query: &[u8], sent: SystemTime);

    /// `response` arrived from `upstream` at `received`, answering the query sent at `sent`.
    fn response_received(
        &self,
        upstream: SocketAddr,
        protocol: WireProtocol,
        response: &[u8],
        sent: SystemTime,
        received: SystemTime,
    );
}
