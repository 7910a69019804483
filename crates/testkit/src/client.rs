//! A minimal synchronous DNS client for tests, to query the fake upstream or the daemon.
//!
//! It returns whatever the server sent, without checking ID or question against the query:
//! fault-injection tests need to see the wrong answers they provoked.

use std::collections::HashSet;
use std::fmt;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, Query};
use hickory_proto::rr::{Name, RecordType};

/// Largest UDP datagram, so an oversized answer is seen whole rather than cut.
const MAX_DATAGRAM_BYTES: usize = 65_535;

/// Why a test query got no usable reply.
#[derive(Debug)]
pub enum QueryError {
    /// The name given is not a domain name.
    InvalidName(String),
    /// The query could not be encoded.
    Encode(String),
    /// No complete reply before the deadline.
    TimedOut,
    /// The server closed the TCP connection before replying.
    ConnectionClosed,
    /// The reply did not decode as a DNS message.
    Malformed(String),
    /// A pipelined reply carried an ID no outstanding query had.
    UnexpectedId(u16),
    /// Any other socket error, e.g. `ConnectionRefused` when nothing listens on the port.
    Io(io::Error),
}

impl fmt::Display for QueryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidName(reason) => write!(f, "invalid query name: {reason}"),
            Self::Encode(reason) => write!(f, "cannot encode query: {reason}"),
            Self::TimedOut => f.write_str("timed out waiting for a reply"),
            Self::ConnectionClosed => f.write_str("server closed the connection before replying"),
            Self::Malformed(reason) => write!(f, "malformed reply: {reason}"),
            Self::UnexpectedId(id) => write!(f, "reply with ID {id} matches no outstanding query"),
            Self::Io(error) => write!(f, "socket error: {error}"),
        }
    }
}

impl std::error::Error for QueryError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Io(error) => Some(error),
            _ => None,
        }
    }
}

impl From<io::Error> for QueryError {
    fn from(error: io::Error) -> Self {
        match error.kind() {
            // What std reports when a socket read or write timeout elapses (platform-dependent).
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => Self::TimedOut,
            io::ErrorKind::UnexpectedEof => Self::ConnectionClosed,
            _ => Self::Io(error),
        }
    }
}

/// A recursive query (RD=1) for `name`/`rtype` with a random ID and no EDNS, ready to adjust
/// (add an OPT with `set_edns`, change the ID) and send with [`exchange_udp`]/[`exchange_tcp`].
pub fn new_query(name: &str, rtype: RecordType) -> Result<Message, QueryError> {
    let fqdn = if name.ends_with('.') { name.to_owned() } else { format!("{name}.") };
    let name = Name::from_ascii(&fqdn).map_err(|error| QueryError::InvalidName(format!("{fqdn:?}: {error}")))?;
    let mut query = Message::query();
    query.metadata.recursion_desired = true;
    query.add_query(Query::query(name, rtype));
    Ok(query)
}

/// Sends one query over UDP and returns the first datagram the server sends back.
pub fn query_udp(server: SocketAddr, name: &str, rtype: RecordType, timeout: Duration) -> Result<Message, QueryError> {
    exchange_udp(server, &new_query(name, rtype)?, timeout)
}

/// Sends one query on a new TCP connection and returns the first reply on it.
pub fn query_tcp(server: SocketAddr, name: &str, rtype: RecordType, timeout: Duration) -> Result<Message, QueryError> {
    exchange_tcp(server, &new_query(name, rtype)?, timeout)
}

/// Sends `query` as is over UDP and returns the first datagram the server sends back.
pub fn exchange_udp(server: SocketAddr, query: &Message, timeout: Duration) -> Result<Message, QueryError> {
    let deadline = Instant::now() + timeout;
    let wire = encode(query)?;
    let local: SocketAddr =
        if server.is_ipv4() { (Ipv4Addr::UNSPECIFIED, 0).into() } else { (Ipv6Addr::UNSPECIFIED, 0).into() };
    let socket = UdpSocket::bind(local)?;
    // Connected, so only the server's datagrams are received, and ICMP port-unreachable shows
    // up as `ConnectionRefused` instead of a timeout.
    socket.connect(server)?;
    socket.send(&wire)?;
    let mut datagram = vec![0_u8; MAX_DATAGRAM_BYTES];
    socket.set_read_timeout(Some(remaining(deadline)?))?;
    let length = socket.recv(&mut datagram)?;
    decode(&datagram[..length])
}

/// Sends `query` as is on a new TCP connection and returns the first reply on it.
pub fn exchange_tcp(server: SocketAddr, query: &Message, timeout: Duration) -> Result<Message, QueryError> {
    let deadline = Instant::now() + timeout;
    let mut stream = connect_tcp(server, deadline)?;
    write_framed(&mut stream, &encode(query)?, deadline)?;
    read_framed(&mut stream, deadline)
}

/// Sends every query on one TCP connection before reading anything, then reads until each has a
/// reply, matching replies to queries by ID (query `i` gets ID `first_id + i`).
///
/// Replies are returned in the order they arrived, which is how tests observe answers overtaking
/// each other; find a particular one by its question.
pub fn query_tcp_pipelined(
    server: SocketAddr,
    queries: &[(&str, RecordType)],
    timeout: Duration,
) -> Result<Vec<Message>, QueryError> {
    let deadline = Instant::now() + timeout;
    let first_id: u16 = rand::random();
    let mut outstanding = HashSet::new();
    let mut pipeline = Vec::new();
    for (index, (name, rtype)) in queries.iter().enumerate() {
        let mut query = new_query(name, *rtype)?;
        // Wrapping: with more than 65 536 queries, IDs repeat and matching is ambiguous anyway.
        let id = first_id.wrapping_add(index as u16);
        query.metadata.id = id;
        outstanding.insert(id);
        pipeline.extend(framed(&encode(&query)?)?);
    }
    let mut stream = connect_tcp(server, deadline)?;
    // One write, so the server sees the queries back to back.
    stream.set_write_timeout(Some(remaining(deadline)?))?;
    stream.write_all(&pipeline)?;

    let mut replies = Vec::with_capacity(queries.len());
    while !outstanding.is_empty() {
        let reply = read_framed(&mut stream, deadline)?;
        if !outstanding.remove(&reply.metadata.id) {
            return Err(QueryError::UnexpectedId(reply.metadata.id));
        }
        replies.push(reply);
    }
    Ok(replies)
}

fn encode(query: &Message) -> Result<Vec<u8>, QueryError> {
    query.to_vec().map_err(|error| QueryError::Encode(error.to_string()))
}

fn decode(wire: &[u8]) -> Result<Message, QueryError> {
    Message::from_vec(wire).map_err(|error| QueryError::Malformed(error.to_string()))
}

/// Time left until `deadline`, or `TimedOut` if none: a zero socket timeout would mean "block
/// forever" to std.
fn remaining(deadline: Instant) -> Result<Duration, QueryError> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() { Err(QueryError::TimedOut) } else { Ok(left) }
}

fn connect_tcp(server: SocketAddr, deadline: Instant) -> Result<TcpStream, QueryError> {
    let stream = TcpStream::connect_timeout(&server, remaining(deadline)?)?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Prefixes `message` with its RFC 1035 §4.2.2 two-byte length.
fn framed(message: &[u8]) -> Result<Vec<u8>, QueryError> {
    let length = u16::try_from(message.len())
        .map_err(|_| QueryError::Encode(format!("{} bytes is too long for TCP", message.len())))?;
    let mut framed = Vec::with_capacity(2 + message.len());
    framed.extend_from_slice(&length.to_be_bytes());
    framed.extend_from_slice(message);
    Ok(framed)
}

fn write_framed(stream: &mut TcpStream, message: &[u8], deadline: Instant) -> Result<(), QueryError> {
    stream.set_write_timeout(Some(remaining(deadline)?))?;
    stream.write_all(&framed(message)?)?;
    Ok(())
}

fn read_framed(stream: &mut TcpStream, deadline: Instant) -> Result<Message, QueryError> {
    let mut prefix = [0_u8; 2];
    read_exact_by(stream, &mut prefix, deadline)?;
    let mut message = vec![0_u8; usize::from(u16::from_be_bytes(prefix))];
    read_exact_by(stream, &mut message, deadline)?;
    decode(&message)
}

/// `read_exact` that gives up at `deadline` rather than after a per-read timeout.
fn read_exact_by(stream: &mut TcpStream, buffer: &mut [u8], deadline: Instant) -> Result<(), QueryError> {
    let mut filled = 0;
    while filled < buffer.len() {
        stream.set_read_timeout(Some(remaining(deadline)?))?;
        match stream.read(&mut buffer[filled..]) {
            Ok(0) => return Err(QueryError::ConnectionClosed),
            Ok(length) => filled += length,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            // A reset by a server that closed with data unread is still "closed".
            Err(error) if error.kind() == io::ErrorKind::ConnectionReset => {
                return Err(QueryError::ConnectionClosed);
            }
            Err(error) => return Err(error.into()),
        }
    }
    Ok(())
}
