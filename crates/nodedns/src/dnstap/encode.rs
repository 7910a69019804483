//! The dnstap protobuf encoding (schema: dnstap.pb's `dnstap.proto`, proto2), written by hand:
//! two messages with fixed fields need no code generator, and writing straight into a reused
//! buffer keeps the hit path free of allocations. Each message goes out as one Frame Streams
//! data frame: a 4-byte big-endian length, then the payload.

use std::net::{IpAddr, SocketAddr};
use std::time::{SystemTime, UNIX_EPOCH};

/// `Message.Type` values (dnstap.proto).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MessageType {
    ClientQuery = 5,
    ClientResponse = 6,
    ForwarderQuery = 7,
    ForwarderResponse = 8,
}

/// `SocketProtocol` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SocketProtocol {
    Udp = 1,
    Tcp = 2,
}

/// `SocketFamily` values.
const FAMILY_INET: u64 = 1;
const FAMILY_INET6: u64 = 2;
/// `Dnstap.Type.MESSAGE`.
const DNSTAP_TYPE_MESSAGE: u64 = 1;

// Protobuf wire types.
const VARINT: u32 = 0;
const LEN: u32 = 2;
const FIXED32: u32 = 5;

/// One dnstap `Message`: what happened, between whom, when, and the wire messages.
pub struct Event<'a> {
    pub kind: MessageType,
    pub protocol: SocketProtocol,
    /// The initiator: the client for CLIENT_*, nodedns for FORWARDER_*.
    pub query_addr: Option<SocketAddr>,
    /// The responder: nodedns's listener for CLIENT_*, the upstream for FORWARDER_*.
    pub response_addr: Option<SocketAddr>,
    pub query_time: Option<SystemTime>,
    pub query_message: Option<&'a [u8]>,
    /// The zone (bailiwick) a forwarded query belongs to, in wire format.
    pub query_zone: Option<&'a [u8]>,
    pub response_time: Option<SystemTime>,
    pub response_message: Option<&'a [u8]>,
}

fn varint_len(mut v: u64) -> usize {
    let mut n = 1;
    while v >= 0x80 {
        v >>= 7;
        n += 1;
    }
    n
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn key(field: u32, wire: u32) -> u64 {
    u64::from((field << 3) | wire)
}

fn varint_field_len(field: u32, v: u64) -> usize {
    varint_len(key(field, VARINT)) + varint_len(v)
}

fn bytes_field_len(field: u32, len: usize) -> usize {
    varint_len(key(field, LEN)) + varint_len(len as u64) + len
}

fn put_varint_field(out: &mut Vec<u8>, field: u32, v: u64) {
    put_varint(out, key(field, VARINT));
    put_varint(out, v);
}

fn put_bytes_field(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    put_varint(out, key(field, LEN));
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

fn put_fixed32_field(out: &mut Vec<u8>, field: u32, v: u32) {
    put_varint(out, key(field, FIXED32));
    out.extend_from_slice(&v.to_le_bytes());
}

/// An address's octets without allocating: 4 for IPv4, 16 for IPv6.
struct Octets {
    bytes: [u8; 16],
    len: usize,
}

impl Octets {
    fn of(ip: IpAddr) -> Self {
        let mut bytes = [0u8; 16];
        match ip {
            IpAddr::V4(v4) => {
                bytes[..4].copy_from_slice(&v4.octets());
                Octets { bytes, len: 4 }
            }
            IpAddr::V6(v6) => Octets { bytes: v6.octets(), len: 16 },
        }
    }

    fn as_slice(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

/// Seconds and nanoseconds since the Unix epoch (0 for a clock set before 1970).
fn split_time(t: SystemTime) -> (u64, u32) {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    (d.as_secs(), d.subsec_nanos())
}

impl Event<'_> {
    fn family(&self) -> Option<u64> {
        self.query_addr.or(self.response_addr).map(|a| if a.is_ipv4() { FAMILY_INET } else { FAMILY_INET6 })
    }

    /// The encoded length of the `Message` body.
    fn message_len(&self) -> usize {
        let mut n = varint_field_len(1, self.kind as u64);
        if let Some(f) = self.family() {
            n += varint_field_len(2, f);
        }
        n += varint_field_len(3, self.protocol as u64);
        if let Some(a) = self.query_addr {
            n += bytes_field_len(4, Octets::of(a.ip()).len) + varint_field_len(6, u64::from(a.port()));
        }
        if let Some(a) = self.response_addr {
            n += bytes_field_len(5, Octets::of(a.ip()).len) + varint_field_len(7, u64::from(a.port()));
        }
        if let Some(t) = self.query_time {
            n += varint_field_len(8, split_time(t).0) + 1 + 4;
        }
        if let Some(m) = self.query_message {
            n += bytes_field_len(10, m.len());
        }
        if let Some(z) = self.query_zone {
            n += bytes_field_len(11, z.len());
        }
        if let Some(t) = self.response_time {
            n += varint_field_len(12, split_time(t).0) + 1 + 4;
        }
        if let Some(m) = self.response_message {
            n += bytes_field_len(14, m.len());
        }
        n
    }

    /// Fields in field-number order, as protobuf encoders write them (readers accept any order).
    fn put_message(&self, out: &mut Vec<u8>) {
        put_varint_field(out, 1, self.kind as u64);
        if let Some(f) = self.family() {
            put_varint_field(out, 2, f);
        }
        put_varint_field(out, 3, self.protocol as u64);
        if let Some(a) = self.query_addr {
            put_bytes_field(out, 4, Octets::of(a.ip()).as_slice());
        }
        if let Some(a) = self.response_addr {
            put_bytes_field(out, 5, Octets::of(a.ip()).as_slice());
        }
        if let Some(a) = self.query_addr {
            put_varint_field(out, 6, u64::from(a.port()));
        }
        if let Some(a) = self.response_addr {
            put_varint_field(out, 7, u64::from(a.port()));
        }
        if let Some(t) = self.query_time {
            let (secs, nanos) = split_time(t);
            put_varint_field(out, 8, secs);
            put_fixed32_field(out, 9, nanos);
        }
        if let Some(m) = self.query_message {
            put_bytes_field(out, 10, m);
        }
        if let Some(z) = self.query_zone {
            put_bytes_field(out, 11, z);
        }
        if let Some(t) = self.response_time {
            let (secs, nanos) = split_time(t);
            put_varint_field(out, 12, secs);
            put_fixed32_field(out, 13, nanos);
        }
        if let Some(m) = self.response_message {
            put_bytes_field(out, 14, m);
        }
    }

    /// The length of the whole data frame [`put_frame`](Self::put_frame) writes.
    pub fn frame_len(&self, identity: &[u8], version: &[u8]) -> usize {
        4 + self.dnstap_len(identity, version)
    }

    fn dnstap_len(&self, identity: &[u8], version: &[u8]) -> usize {
        bytes_field_len(1, identity.len())
            + bytes_field_len(2, version.len())
            + bytes_field_len(14, self.message_len())
            + varint_field_len(15, DNSTAP_TYPE_MESSAGE)
    }

    /// Appends one Frame Streams data frame holding a `Dnstap` message with this event.
    pub fn put_frame(&self, identity: &[u8], version: &[u8], out: &mut Vec<u8>) {
        let len = self.dnstap_len(identity, version);
        out.reserve(4 + len);
        let start = out.len();
        out.extend_from_slice(&(len as u32).to_be_bytes());
        put_bytes_field(out, 1, identity);
        put_bytes_field(out, 2, version);
        put_varint(out, key(14, LEN));
        put_varint(out, self.message_len() as u64);
        self.put_message(out);
        put_varint_field(out, 15, DNSTAP_TYPE_MESSAGE);
        debug_assert_eq!(out.len() - start, 4 + len);
    }
}

/// How many data frames `bytes` (a sequence of whole frames) holds.
pub fn count_frames(bytes: &[u8]) -> u64 {
    let mut n = 0;
    let mut at = 0;
    while let Some(len) = bytes.get(at..at + 4) {
        let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
        at += 4 + len;
        n += 1;
    }
    n
}
