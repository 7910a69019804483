//! Frame Streams (fstrm, the transport dnstap rides on): data frames are a 4-byte big-endian
//! length then the payload; a control frame is an escape (a zero length), its own length, a
//! control type and fields, of which only CONTENT_TYPE is defined.
//!
//! A file is a unidirectional stream: START (content type), data frames, STOP. Over a socket the
//! writer first offers READY with its content types, the reader answers ACCEPT naming those it
//! takes, then START … STOP, and the reader closes with FINISH (the fstrm protocol, as
//! `fstrm_capture` speaks it).

use std::io::{self, Read, Write};

/// The content type dnstap readers expect.
pub const CONTENT_TYPE: &[u8] = b"protobuf:dnstap.Dnstap";

pub const CONTROL_ACCEPT: u32 = 0x01;
pub const CONTROL_START: u32 = 0x02;
pub const CONTROL_STOP: u32 = 0x03;
pub const CONTROL_READY: u32 = 0x04;
pub const CONTROL_FINISH: u32 = 0x05;
const FIELD_CONTENT_TYPE: u32 = 0x01;
/// fstrm's bound on a control frame; a longer one is a protocol error.
const MAX_CONTROL_LEN: usize = 512;

/// A control frame of type `control`, with `content_type` as its one field when given.
pub fn control_frame(control: u32, content_type: Option<&[u8]>) -> Vec<u8> {
    let body_len = 4 + content_type.map_or(0, |c| 8 + c.len());
    let mut f = Vec::with_capacity(8 + body_len);
    f.extend_from_slice(&0u32.to_be_bytes());
    f.extend_from_slice(&(body_len as u32).to_be_bytes());
    f.extend_from_slice(&control.to_be_bytes());
    if let Some(c) = content_type {
        f.extend_from_slice(&FIELD_CONTENT_TYPE.to_be_bytes());
        f.extend_from_slice(&(c.len() as u32).to_be_bytes());
        f.extend_from_slice(c);
    }
    f
}

/// A decoded control frame.
#[derive(Debug, PartialEq, Eq)]
pub struct Control {
    pub control: u32,
    pub content_types: Vec<Vec<u8>>,
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// Parses a control frame body (after the escape and length).
pub fn parse_control(body: &[u8]) -> io::Result<Control> {
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, format!("Frame Streams control frame: {what}"));
    if body.len() < 4 {
        return Err(bad("shorter than its type"));
    }
    let control = be32(body);
    let mut content_types = Vec::new();
    let mut rest = &body[4..];
    while !rest.is_empty() {
        if rest.len() < 8 {
            return Err(bad("truncated field"));
        }
        let (field, len) = (be32(rest), be32(&rest[4..]) as usize);
        let value = rest.get(8..8 + len).ok_or_else(|| bad("field longer than the frame"))?;
        if field == FIELD_CONTENT_TYPE {
            content_types.push(value.to_vec());
        }
        rest = &rest[8 + len..];
    }
    Ok(Control { control, content_types })
}

/// Reads one control frame (the escape, its length, its body).
pub fn read_control(r: &mut impl Read) -> io::Result<Control> {
    let mut head = [0u8; 8];
    r.read_exact(&mut head)?;
    if be32(&head) != 0 {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "expected a Frame Streams control frame"));
    }
    let len = be32(&head[4..]) as usize;
    if len > MAX_CONTROL_LEN {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "Frame Streams control frame too long"));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)?;
    parse_control(&body)
}

/// The writer's side of the bidirectional handshake: READY, expect ACCEPT naming our content
/// type, START.
pub fn handshake(stream: &mut (impl Read + Write)) -> io::Result<()> {
    stream.write_all(&control_frame(CONTROL_READY, Some(CONTENT_TYPE)))?;
    let accept = read_control(stream)?;
    if accept.control != CONTROL_ACCEPT {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("the dnstap reader answered READY with control type {}", accept.control),
        ));
    }
    // An ACCEPT without content types accepts anything (fstrm's reading of the protocol).
    if !accept.content_types.is_empty() && !accept.content_types.iter().any(|c| c == CONTENT_TYPE) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "the dnstap reader does not accept protobuf:dnstap.Dnstap",
        ));
    }
    stream.write_all(&control_frame(CONTROL_START, Some(CONTENT_TYPE)))
}

/// The writer's side of closing a bidirectional stream: STOP, then wait for FINISH.
pub fn finish(stream: &mut (impl Read + Write)) -> io::Result<()> {
    stream.write_all(&control_frame(CONTROL_STOP, None))?;
    let fin = read_control(stream)?;
    if fin.control != CONTROL_FINISH {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "the dnstap reader did not answer STOP with FINISH"));
    }
    Ok(())
}
