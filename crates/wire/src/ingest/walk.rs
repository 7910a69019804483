//! The common miss answered without decoding: a NOERROR response to an A or AAAA question whose
//! answer section is exactly the CNAME chain from the question name and the addresses at its
//! end, in order, with nothing in the authority section and at most an empty OPT in the
//! additional section. That is what CoreDNS and Knot send for nearly every address lookup.
//!
//! Such a response is already the cacheable answer: header, question and answer section are kept
//! byte for byte (compression pointers included) and the rest is cut off. Anything else, or
//! anything this walker is not sure of, returns `None` and goes through the full hickory decode
//! in [`super::ingest_decoded`], whose result this path must equal (the `upstream_response` fuzz
//! target checks that on every input this path accepts).
//!
//! Why: decoding every response into a hickory `Message` and re-encoding the kept records was
//! ~9 % of the miss path's CPU (benches/RESULTS.md, miss profile).

use nodedns_cache::{CacheableAnswer, Disposition, MAX_NAME_LEN, Ttl};

use super::{MAX_CHAIN, UpstreamQuestion};
use crate::query::{HEADER_LEN, TYPE_OPT};

const TYPE_A: u16 = 1;
const TYPE_CNAME: u16 = 5;
const TYPE_AAAA: u16 = 28;
const CLASS_IN: u16 = 1;
/// Label starts a pointer may target. A response with more distinct labels than this is not
/// the simple case.
const MAX_LABEL_STARTS: usize = 64;

/// The cacheable answer of a simple positive A/AAAA response (see the module doc), or `None`
/// when the response is anything else. The caller has checked [`super::answers_question`], the
/// record limit and TC.
pub fn simple_positive(resp: &[u8], q: &UpstreamQuestion<'_>) -> Option<CacheableAnswer> {
    if !matches!(q.qtype, TYPE_A | TYPE_AAAA) || q.qclass != CLASS_IN || q.dnssec_ok {
        return None;
    }
    // RCODE NOERROR, no authority records, at most one additional record (the OPT).
    if resp[3] & 0x0f != 0 || resp[8..10] != [0, 0] || resp[10] != 0 || resp[11] > 1 {
        return None;
    }
    let ancount = u16::from_be_bytes([resp[6], resp[7]]) as usize;
    let qname = q.name.as_wire();
    let mut walk = Walk { resp, pos: HEADER_LEN + qname.len() + 4, starts: LabelStarts::default() };
    // Pointers may target the question's labels: bytes we keep (lower-cased, same length).
    let mut at = HEADER_LEN;
    while qname[at - HEADER_LEN] != 0 {
        walk.starts.push(at);
        at += 1 + qname[at - HEADER_LEN] as usize;
    }

    let mut target = [0u8; MAX_NAME_LEN];
    target[..qname.len()].copy_from_slice(qname);
    let mut target_len = qname.len();
    let mut owner = [0u8; MAX_NAME_LEN];
    let mut found = false;
    let mut hops = 0;
    let mut min_ttl = u32::MAX;
    let mut ttl_offsets = Vec::with_capacity(ancount);
    for _ in 0..ancount {
        let owner_len = walk.name(&mut owner)?;
        let rtype = walk.u16()?;
        let class = walk.u16()?;
        let ttl_at = walk.pos;
        let ttl = walk.u32()?;
        let rdlen = walk.u16()? as usize;
        let rdata_end = walk.pos.checked_add(rdlen).filter(|&e| e <= resp.len())?;
        if class != CLASS_IN || owner[..owner_len] != target[..target_len] {
            return None;
        }
        if rtype == q.qtype {
            if rdlen != if rtype == TYPE_A { 4 } else { 16 } {
                return None;
            }
            found = true;
            walk.pos = rdata_end;
        } else if rtype == TYPE_CNAME && !found && hops < MAX_CHAIN - 1 {
            // The chain follows the first CNAME at the target; a second one, or records after
            // the addresses, leave the simple case (the full decode orders and filters them).
            target_len = walk.name(&mut target)?;
            if walk.pos != rdata_end {
                return None;
            }
            hops += 1;
        } else {
            return None;
        }
        ttl_offsets.push(u16::try_from(ttl_at).ok()?);
        min_ttl = min_ttl.min(Ttl::from_wire(ttl).secs());
    }
    if !found {
        return None;
    }
    let answer_end = walk.pos;
    if resp[11] == 1 {
        // The OPT (RFC 6891 §6.1.2): root owner, no extended RCODE bits, no options.
        let opt = resp.get(answer_end..answer_end + 11)?;
        if opt[0] != 0 || opt[1..3] != TYPE_OPT.to_be_bytes() || opt[5] != 0 || opt[9..11] != [0, 0] {
            return None;
        }
        walk.pos = answer_end + 11;
    }
    if walk.pos != resp.len() {
        return None;
    }

    let mut message = Vec::with_capacity(answer_end);
    // ID 0 (patched per client), QR, AD as upstream said, RCODE NOERROR, no other records.
    message.extend_from_slice(&[0, 0, 0x80, resp[3] & 0x20, 0, 1, resp[6], resp[7], 0, 0, 0, 0]);
    // The question exactly as the key holds it: hits copy the client's question over it.
    message.extend_from_slice(qname);
    message.extend_from_slice(&resp[HEADER_LEN + qname.len()..answer_end]);
    Some(CacheableAnswer { message, ttl_offsets, disposition: Disposition::Positive { ttl: Ttl::from_wire(min_ttl) } })
}

/// Offsets of labels in names already read: the only places a compression pointer may target.
/// Pointing anywhere else (the header, a TTL, the middle of a label) could change a name's meaning
/// once the header and TTLs are patched, and a target must precede the name pointing to it, so
/// pointer chains end.
struct LabelStarts {
    at: [u16; MAX_LABEL_STARTS],
    len: usize,
}

impl Default for LabelStarts {
    fn default() -> Self {
        Self { at: [0; MAX_LABEL_STARTS], len: 0 }
    }
}

impl LabelStarts {
    fn push(&mut self, offset: usize) -> bool {
        match (self.at.get_mut(self.len), u16::try_from(offset)) {
            (Some(slot), Ok(o)) => {
                *slot = o;
                self.len += 1;
                true
            }
            _ => false,
        }
    }

    /// Whether `offset` is one of the first `n` recorded.
    fn among_first(&self, n: usize, offset: usize) -> bool {
        self.at[..n].iter().any(|&o| o as usize == offset)
    }
}

struct Walk<'r> {
    resp: &'r [u8],
    pos: usize,
    starts: LabelStarts,
}

impl Walk<'_> {
    fn u16(&mut self) -> Option<u16> {
        let v = u16::from_be_bytes(self.resp.get(self.pos..self.pos + 2)?.try_into().ok()?);
        self.pos += 2;
        Some(v)
    }

    fn u32(&mut self) -> Option<u32> {
        let v = u32::from_be_bytes(self.resp.get(self.pos..self.pos + 4)?.try_into().ok()?);
        self.pos += 4;
        Some(v)
    }

    /// Reads the name at `pos` into `out`, lower-cased and uncompressed, and returns its length.
    /// Labels read in place become pointer targets for later names; a pointer must target one
    /// recorded before this name began (never one of its own labels, so chains end). The name,
    /// uncompressed, stays under 255 octets (RFC 1035 §2.3.4).
    fn name(&mut self, out: &mut [u8; MAX_NAME_LEN]) -> Option<usize> {
        let earlier = self.starts.len;
        let mut len = 0;
        let mut at = self.pos;
        let mut in_place = true;
        loop {
            let b = *self.resp.get(at)?;
            match b {
                0 => {
                    *out.get_mut(len)? = 0;
                    len += 1;
                    if in_place {
                        self.pos = at + 1;
                    }
                    break;
                }
                1..=63 => {
                    let label = self.resp.get(at..at + 1 + b as usize)?;
                    // Leave a byte for the root label, and one more: hickory refuses a name of
                    // 255 octets, and this path must accept nothing the full decode refuses.
                    if len + label.len() + 2 > MAX_NAME_LEN {
                        return None;
                    }
                    for (o, i) in out[len..len + label.len()].iter_mut().zip(label) {
                        *o = i.to_ascii_lowercase();
                    }
                    if in_place && !self.starts.push(at) {
                        return None;
                    }
                    len += label.len();
                    at += label.len();
                }
                0xc0..=0xff => {
                    let ptr = ((b as usize & 0x3f) << 8) | *self.resp.get(at + 1)? as usize;
                    if !self.starts.among_first(earlier, ptr) {
                        return None;
                    }
                    if in_place {
                        self.pos = at + 2;
                        in_place = false;
                    }
                    at = ptr;
                }
                _ => return None, // 0x40 and 0x80: reserved label types (RFC 6891 §5)
            }
        }
        Some(len)
    }
}
