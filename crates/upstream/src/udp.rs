//! One query over UDP: a fresh socket (the kernel picks a random source port) and a random ID
//! per query (RFC 5452 §9.2); a response counts only if ID and question both match.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::time::Instant;

use nodedns_wire::{UpstreamQuestion, answers_question, build_query, response_id};

use crate::endpoint::{Endpoint, ErrorKind};

/// We advertise 1232 bytes; anything larger than this buffer would be cut and fail to match.
const RECV_BUF: usize = 4096;

pub(crate) async fn exchange(
    endpoint: &Endpoint,
    q: &UpstreamQuestion<'_>,
    timeout: Duration,
    on_sent: &(dyn Fn(&[u8]) + Sync),
) -> Result<Vec<u8>, ErrorKind> {
    let deadline = Instant::now() + timeout;
    let bind: SocketAddr =
        if endpoint.addr.is_ipv4() { ([0, 0, 0, 0], 0).into() } else { (std::net::Ipv6Addr::UNSPECIFIED, 0).into() };
    let socket = UdpSocket::bind(bind).await.map_err(|_| ErrorKind::Connect)?;
    socket.connect(endpoint.addr).await.map_err(|_| ErrorKind::Connect)?;
    let id = rand::random::<u16>();
    let mut query = Vec::with_capacity(64);
    build_query(id, q, &mut query);
    socket.send(&query).await.map_err(|_| ErrorKind::Connect)?;
    on_sent(&query);
    let mut buf = vec![0u8; RECV_BUF];
    loop {
        let n = match tokio::time::timeout_at(deadline, socket.recv(&mut buf)).await {
            Ok(Ok(n)) => n,
            // ICMP port unreachable surfaces as ECONNREFUSED on a connected socket.
            Ok(Err(_)) => return Err(ErrorKind::Connect),
            Err(_) => return Err(ErrorKind::Timeout),
        };
        let resp = &buf[..n];
        if response_id(resp) == Some(id) && answers_question(resp, q) {
            buf.truncate(n);
            return Ok(buf);
        }
        // A spoofed or stray datagram: keep waiting for the real one.
        endpoint.stats.count_error(ErrorKind::Mismatch);
    }
}
