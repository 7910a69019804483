//! DNS over TCP framing (RFC 1035 §4.2.2, RFC 7766 §8): every message is preceded by its length
//! as a 16-bit big-endian integer.
//!
//! The serving loop and the upstream connections read frames with async `read_exact`; the rule
//! for which lengths are acceptable lives here so both sides, the fuzz targets and the corpus
//! replay test share it. [`FrameSplitter`] is the same logic over an in-memory byte stream: pure,
//! allocation-free, and what the framing fuzz target drives with arbitrary chunking.

use crate::query::HEADER_LEN;

/// The length prefix.
pub const PREFIX_LEN: usize = 2;

/// Who sends the frames being read; the peers are held to different minimums.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Peer {
    /// A client talking to nodedns. Only a zero length is refused outright: a short but non-empty
    /// frame still gets its defined answer (dropped if shorter than a header), as over UDP.
    Client,
    /// An upstream answering nodedns. A frame shorter than a header cannot be a response and
    /// leaves the stream untrustworthy.
    Upstream,
}

/// Why a frame length is refused; the connection is closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameError {
    /// Length 0 (a client sending `00 00`).
    ZeroLength,
    /// Shorter than a DNS header, from an upstream.
    ShorterThanHeader(usize),
}

impl FrameError {
    /// The `nodedns_malformed_queries_total` reason label.
    pub fn label(self) -> &'static str {
        match self {
            FrameError::ZeroLength => "zero_length_frame",
            FrameError::ShorterThanHeader(_) => "short_frame",
        }
    }
}

/// Checks a length prefix read from `peer`; returns the body length to read next.
pub fn frame_len(prefix: [u8; PREFIX_LEN], peer: Peer) -> Result<usize, FrameError> {
    let len = u16::from_be_bytes(prefix) as usize;
    match peer {
        _ if len == 0 => Err(FrameError::ZeroLength),
        Peer::Upstream if len < HEADER_LEN => Err(FrameError::ShorterThanHeader(len)),
        _ => Ok(len),
    }
}

/// One step of [`FrameSplitter::next_frame`].
#[derive(Debug, PartialEq, Eq)]
pub enum Split<'a> {
    /// A complete frame body; the stream continues after it.
    Frame(&'a [u8]),
    /// More bytes are needed (a partial prefix or body): the "frame longer than sent" case,
    /// which the socket readers bound with a timeout.
    NeedMore,
    /// The stream is broken; the connection is closed.
    Error(FrameError),
}

/// Splits a byte stream into DNS messages, the way the TCP readers do, without I/O.
#[derive(Debug)]
pub struct FrameSplitter<'a> {
    stream: &'a [u8],
    pos: usize,
    peer: Peer,
    /// Set once the stream is broken: nothing after a bad prefix can be framed.
    failed: Option<FrameError>,
}

impl<'a> FrameSplitter<'a> {
    pub fn new(stream: &'a [u8], peer: Peer) -> Self {
        Self { stream, pos: 0, peer, failed: None }
    }

    /// Bytes consumed by the complete frames returned so far.
    pub fn consumed(&self) -> usize {
        self.pos
    }

    /// The next frame, [`Split::NeedMore`] at the end of the bytes, or the error that ends the
    /// stream (returned again on every later call).
    pub fn next_frame(&mut self) -> Split<'a> {
        if let Some(e) = self.failed {
            return Split::Error(e);
        }
        let rest = &self.stream[self.pos..];
        let (Some(&hi), Some(&lo)) = (rest.first(), rest.get(1)) else {
            return Split::NeedMore;
        };
        let len = match frame_len([hi, lo], self.peer) {
            Ok(len) => len,
            Err(e) => {
                self.failed = Some(e);
                return Split::Error(e);
            }
        };
        match rest.get(PREFIX_LEN..PREFIX_LEN + len) {
            Some(body) => {
                self.pos += PREFIX_LEN + len;
                Split::Frame(body)
            }
            None => Split::NeedMore,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_back_to_back_frames_and_waits_for_partial_ones() {
        let stream = [0, 1, 0xaa, 0, 2, 0xbb, 0xcc, 0, 3, 0xdd];
        let mut s = FrameSplitter::new(&stream, Peer::Client);
        assert_eq!(s.next_frame(), Split::Frame(&[0xaa]));
        assert_eq!(s.next_frame(), Split::Frame(&[0xbb, 0xcc]));
        // Announces three bytes, sends one: a frame longer than sent.
        assert_eq!(s.next_frame(), Split::NeedMore);
        assert_eq!(s.consumed(), 7);
        let mut s = FrameSplitter::new(&stream[..1], Peer::Client);
        assert_eq!(s.next_frame(), Split::NeedMore);
    }

    #[test]
    fn zero_length_ends_the_stream_for_either_peer() {
        let stream = [0, 0, 0, 1, 0xaa];
        for peer in [Peer::Client, Peer::Upstream] {
            let mut s = FrameSplitter::new(&stream, peer);
            assert_eq!(s.next_frame(), Split::Error(FrameError::ZeroLength));
            assert_eq!(s.next_frame(), Split::Error(FrameError::ZeroLength), "sticky");
        }
    }

    #[test]
    fn upstream_frames_shorter_than_a_header_are_refused() {
        assert_eq!(frame_len([0, 11], Peer::Upstream), Err(FrameError::ShorterThanHeader(11)));
        assert_eq!(frame_len([0, 12], Peer::Upstream), Ok(12));
        assert_eq!(frame_len([0, 11], Peer::Client), Ok(11));
        assert_eq!(frame_len([0xff, 0xff], Peer::Client), Ok(65535));
        assert_eq!(FrameError::ZeroLength.label(), "zero_length_frame");
    }
}
