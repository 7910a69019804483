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

fn varint_len(v: u64) -> usize {
    // 7 bits per byte; 0 still takes one.
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
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

/// Writes into a slice already sized to the encoding: no capacity checks per byte.
struct Cursor<'a> {
    buf: &'a mut [u8],
    at: usize,
}

impl Cursor<'_> {
    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.buf[self.at] = (v as u8) | 0x80;
            self.at += 1;
            v >>= 7;
        }
        self.buf[self.at] = v as u8;
        self.at += 1;
    }

    fn slice(&mut self, b: &[u8]) {
        self.buf[self.at..self.at + b.len()].copy_from_slice(b);
        self.at += b.len();
    }

    fn varint_field(&mut self, field: u32, v: u64) {
        self.varint(key(field, VARINT));
        self.varint(v);
    }

    fn bytes_field(&mut self, field: u32, b: &[u8]) {
        self.varint(key(field, LEN));
        self.varint(b.len() as u64);
        self.slice(b);
    }

    fn fixed32_field(&mut self, field: u32, v: u32) {
        self.varint(key(field, FIXED32));
        self.slice(&v.to_le_bytes());
    }
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

/// What encoding an event needs computed once: the lengths and the split times.
#[derive(Clone, Copy, Default)]
pub struct Layout {
    message: usize,
    dnstap: usize,
    query_time: Option<(u64, u32)>,
    response_time: Option<(u64, u32)>,
}

impl Layout {
    /// The whole data frame's length.
    pub fn frame_len(&self) -> usize {
        4 + self.dnstap
    }
}

impl Event<'_> {
    fn family(&self) -> Option<u64> {
        self.query_addr.or(self.response_addr).map(|a| if a.is_ipv4() { FAMILY_INET } else { FAMILY_INET6 })
    }

    /// Sizes the encoding of this event with `identity` and `version`.
    pub fn layout(&self, identity: &[u8], version: &[u8]) -> Layout {
        let query_time = self.query_time.map(split_time);
        let response_time = self.response_time.map(split_time);
        let addr_len = |a: SocketAddr| if a.is_ipv4() { 4 } else { 16 };
        let mut n = varint_field_len(1, self.kind as u64);
        if let Some(f) = self.family() {
            n += varint_field_len(2, f);
        }
        n += varint_field_len(3, self.protocol as u64);
        if let Some(a) = self.query_addr {
            n += bytes_field_len(4, addr_len(a)) + varint_field_len(6, u64::from(a.port()));
        }
        if let Some(a) = self.response_addr {
            n += bytes_field_len(5, addr_len(a)) + varint_field_len(7, u64::from(a.port()));
        }
        if let Some((secs, _)) = query_time {
            n += varint_field_len(8, secs) + 1 + 4;
        }
        if let Some(m) = self.query_message {
            n += bytes_field_len(10, m.len());
        }
        if let Some(z) = self.query_zone {
            n += bytes_field_len(11, z.len());
        }
        if let Some((secs, _)) = response_time {
            n += varint_field_len(12, secs) + 1 + 4;
        }
        if let Some(m) = self.response_message {
            n += bytes_field_len(14, m.len());
        }
        let dnstap = bytes_field_len(1, identity.len())
            + bytes_field_len(2, version.len())
            + bytes_field_len(14, n)
            + varint_field_len(15, DNSTAP_TYPE_MESSAGE);
        Layout { message: n, dnstap, query_time, response_time }
    }

    /// The length of the whole data frame [`put_frame`](Self::put_frame) writes.
    pub fn frame_len(&self, identity: &[u8], version: &[u8]) -> usize {
        self.layout(identity, version).frame_len()
    }

    /// Appends one Frame Streams data frame holding a `Dnstap` message with this event.
    pub fn put_frame(&self, identity: &[u8], version: &[u8], out: &mut Vec<u8>) {
        let layout = self.layout(identity, version);
        self.put_frame_laid_out(&layout, identity, version, out);
    }

    /// [`put_frame`](Self::put_frame) with the layout already computed (by
    /// [`layout`](Self::layout) for the same identity and version).
    pub fn put_frame_laid_out(&self, layout: &Layout, identity: &[u8], version: &[u8], out: &mut Vec<u8>) {
        let start = out.len();
        out.resize(start + layout.frame_len(), 0);
        let mut w = Cursor { buf: &mut out[start..], at: 0 };
        w.slice(&(layout.dnstap as u32).to_be_bytes());
        w.bytes_field(1, identity);
        w.bytes_field(2, version);
        w.varint(key(14, LEN));
        w.varint(layout.message as u64);
        // Message fields in field-number order, as protobuf encoders write them.
        w.varint_field(1, self.kind as u64);
        if let Some(f) = self.family() {
            w.varint_field(2, f);
        }
        w.varint_field(3, self.protocol as u64);
        if let Some(a) = self.query_addr {
            w.bytes_field(4, Octets::of(a.ip()).as_slice());
        }
        if let Some(a) = self.response_addr {
            w.bytes_field(5, Octets::of(a.ip()).as_slice());
        }
        if let Some(a) = self.query_addr {
            w.varint_field(6, u64::from(a.port()));
        }
        if let Some(a) = self.response_addr {
            w.varint_field(7, u64::from(a.port()));
        }
        if let Some((secs, nanos)) = layout.query_time {
            w.varint_field(8, secs);
            w.fixed32_field(9, nanos);
        }
        if let Some(m) = self.query_message {
            w.bytes_field(10, m);
        }
        if let Some(z) = self.query_zone {
            w.bytes_field(11, z);
        }
        if let Some((secs, nanos)) = layout.response_time {
            w.varint_field(12, secs);
            w.fixed32_field(13, nanos);
        }
        if let Some(m) = self.response_message {
            w.bytes_field(14, m);
        }
        w.varint_field(15, DNSTAP_TYPE_MESSAGE);
        debug_assert_eq!(w.at, layout.frame_len());
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
