//! The miss path: building upstream queries, accepting only responses that answer them, and
//! turning a response into a cacheable answer that holds nothing but the answer to the question.

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use hickory_proto::serialize::binary::{BinEncodable, BinEncoder};
use nodedns_cache::{CacheableAnswer, Disposition, LowerName, Ttl};
use thiserror::Error;

use crate::query::{HEADER_LEN, TYPE_OPT};
use crate::render::ADVERTISED_UDP_PAYLOAD;

/// Upper bound on records accepted in one upstream response; anything larger is refused before
/// it is decoded in full.
pub const MAX_RECORDS: usize = 512;
/// CNAME/DNAME hops followed from the question name.
const MAX_CHAIN: usize = 16;

/// The question nodedns asks upstream: the client's question, lower-cased, with its DO/CD bits.
#[derive(Clone, Copy, Debug)]
pub struct UpstreamQuestion<'a> {
    pub name: LowerName<'a>,
    pub qtype: u16,
    pub qclass: u16,
    pub dnssec_ok: bool,
    pub checking_disabled: bool,
}

/// Writes the upstream query: RD set, CD as the client asked, EDNS with our payload size and
/// the client's DO bit.
pub fn build_query(id: u16, q: &UpstreamQuestion<'_>, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(&id.to_be_bytes());
    out.push(0x01); // RD
    out.push(if q.checking_disabled { 0x10 } else { 0 });
    out.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 1]);
    out.extend_from_slice(q.name.as_wire());
    out.extend_from_slice(&q.qtype.to_be_bytes());
    out.extend_from_slice(&q.qclass.to_be_bytes());
    out.push(0);
    out.extend_from_slice(&TYPE_OPT.to_be_bytes());
    out.extend_from_slice(&ADVERTISED_UDP_PAYLOAD.to_be_bytes());
    out.extend_from_slice(&[0, 0, if q.dnssec_ok { 0x80 } else { 0 }, 0, 0, 0]);
}

/// The ID of a response, if it has a header.
pub fn response_id(resp: &[u8]) -> Option<u16> {
    Some(u16::from_be_bytes([*resp.first()?, *resp.get(1)?]))
}

/// Whether `resp` is a response (QR=1) to exactly this question: opcode QUERY (a response copies
/// the query's opcode, RFC 1035 §4.1.1), one question, same name (case-insensitively: upstreams
/// may echo 0x20 case), type and class. The ID is matched by the transport, which knows which IDs
/// it has outstanding.
pub fn answers_question(resp: &[u8], q: &UpstreamQuestion<'_>) -> bool {
    // Opcode: another one makes hickory decode the message under different rules (UPDATE allows
    // empty RDATA), and what it decodes would be cached as an answer no client can parse.
    if resp.len() < HEADER_LEN || resp[2] & 0x80 == 0 || resp[2] & 0x78 != 0 || resp[4..6] != [0, 1] {
        return false;
    }
    let name = q.name.as_wire();
    let end = HEADER_LEN + name.len();
    let Some(echoed) = resp.get(HEADER_LEN..end) else {
        return false;
    };
    if !echoed.eq_ignore_ascii_case(name) {
        return false;
    }
    resp.get(end..end + 4) == Some(&[q.qtype.to_be_bytes(), q.qclass.to_be_bytes()].concat()[..])
}

/// Why an upstream response was not usable.
#[derive(Debug, Error)]
pub enum IngestError {
    #[error("response does not parse: {0}")]
    Malformed(String),
    #[error("response holds {0} records, over the limit of {MAX_RECORDS}")]
    TooManyRecords(usize),
    #[error("response question does not match the query")]
    QuestionMismatch,
}

impl IngestError {
    pub fn kind(&self) -> &'static str {
        match self {
            IngestError::Malformed(_) => "malformed",
            IngestError::TooManyRecords(_) => "too_many_records",
            IngestError::QuestionMismatch => "question_mismatch",
        }
    }
}

/// What an upstream response means.
#[derive(Debug)]
pub enum Ingested {
    /// NOERROR or NXDOMAIN: an answer to cache and serve.
    Answer(CacheableAnswer),
    /// TC=1: not cached (RFC 2181 §9); retry over TCP.
    Truncated,
    /// SERVFAIL, REFUSED, NOTIMP, FORMERR or another rcode: an upstream failure. Never cached,
    /// never replaces a cached answer.
    Failure { rcode: u16 },
}

/// Turns a matched upstream response into a cacheable answer holding only the records that
/// answer the question: the CNAME/DNAME chain from the qname and the records at its end; for
/// denials, the SOA of an enclosing zone; glue only for SRV/MX targets inside `bailiwick`.
/// Everything else (unrelated names in any section, NS records, OPT) is dropped, so a response
/// cannot plant records for other names in the cache.
///
/// The common case (a plain A/AAAA answer, maybe behind CNAMEs) is taken by a wire walker
/// without decoding; everything else by [`ingest_decoded`].
pub fn ingest(resp: &[u8], q: &UpstreamQuestion<'_>, bailiwick: &Name) -> Result<Ingested, IngestError> {
    if let Some(early) = check_envelope(resp, q) {
        return early;
    }
    match walk::simple_positive(resp, q) {
        Some(answer) => Ok(Ingested::Answer(answer)),
        None => decoded(resp, q, bailiwick),
    }
}

/// [`ingest`] by a full hickory decode only: what the wire walker must agree with (the fuzz
/// harness compares the two) and the baseline of the `ingest` microbenchmark.
pub fn ingest_decoded(resp: &[u8], q: &UpstreamQuestion<'_>, bailiwick: &Name) -> Result<Ingested, IngestError> {
    match check_envelope(resp, q) {
        Some(early) => early,
        None => decoded(resp, q, bailiwick),
    }
}

/// The checks before any record is read: the question, the record limit, TC.
fn check_envelope(resp: &[u8], q: &UpstreamQuestion<'_>) -> Option<Result<Ingested, IngestError>> {
    if !answers_question(resp, q) {
        return Some(Err(IngestError::QuestionMismatch));
    }
    let counts = [6, 8, 10].map(|at| u16::from_be_bytes([resp[at], resp[at + 1]]) as usize);
    let total: usize = counts.iter().sum();
    if total > MAX_RECORDS {
        return Some(Err(IngestError::TooManyRecords(total)));
    }
    if resp[2] & 0x02 != 0 {
        return Some(Ok(Ingested::Truncated));
    }
    None
}

fn decoded(resp: &[u8], q: &UpstreamQuestion<'_>, bailiwick: &Name) -> Result<Ingested, IngestError> {
    let msg = Message::from_vec(resp).map_err(|e| IngestError::Malformed(e.to_string()))?;
    let rcode = msg.metadata.response_code;
    let nxdomain = match rcode {
        ResponseCode::NoError => false,
        ResponseCode::NXDomain => true,
        other => {
            return Ok(Ingested::Failure { rcode: u16::from(other) });
        }
    };

    let qname = question_name(q)?;
    let qtype = RecordType::from(q.qtype);
    let (answers, final_target, found) = follow_chain(&msg.answers, &qname, qtype, q.dnssec_ok);

    let positive = !nxdomain && found;
    let mut authority: Vec<&Record> = Vec::new();
    let mut soa = None;
    if !positive {
        for r in &msg.authorities {
            if let RData::SOA(s) = &r.data {
                // RFC 2308 §3: the SOA of the zone that holds (or would hold) the name.
                if r.name.zone_of(&final_target) && soa.is_none() {
                    soa = Some((Ttl::from_wire(r.ttl), Ttl::from_wire(s.minimum)));
                    authority.push(r);
                }
            } else if q.dnssec_ok
                && matches!(r.record_type(), RecordType::NSEC | RecordType::NSEC3 | RecordType::RRSIG)
                && bailiwick.zone_of(&r.name)
            {
                authority.push(r);
            }
        }
    }
    let additional = glue(&answers, &msg.additionals, bailiwick);

    let chain_ttl = answers.iter().map(|r| Ttl::from_wire(r.ttl)).min();
    let disposition = if positive {
        Disposition::Positive { ttl: chain_ttl.unwrap_or(Ttl::ZERO) }
    } else {
        Disposition::Denial { nxdomain, soa, chain_ttl }
    };
    let header_flags = [0x80, (msg.metadata.authentic_data as u8) << 5 | (u16::from(rcode) & 0x0f) as u8];
    let (message, ttl_offsets) = encode_answer(q, header_flags, &answers, &authority, &additional)
        .map_err(|e| IngestError::Malformed(e.to_string()))?;
    Ok(Ingested::Answer(CacheableAnswer { message, ttl_offsets, disposition }))
}

/// An uncompressed wire name (as a cache key holds it) as a hickory `Name`, fully qualified.
pub fn name_from_wire(wire: &[u8]) -> Option<Name> {
    let mut labels = Vec::new();
    let mut pos = 0;
    while let Some(&len) = wire.get(pos) {
        if len == 0 {
            break;
        }
        labels.push(wire.get(pos + 1..pos + 1 + len as usize)?);
        pos += 1 + len as usize;
    }
    let mut name = Name::from_labels(labels).ok()?;
    name.set_fqdn(true);
    Some(name)
}

fn question_name(q: &UpstreamQuestion<'_>) -> Result<Name, IngestError> {
    name_from_wire(q.name.as_wire()).ok_or_else(|| IngestError::Malformed("question name".into()))
}

/// Walks the answer section from `qname`: records at the current target of the asked type,
/// CNAMEs (switching the target), DNAMEs above the target (RFC 6672 §3), and with DO their
/// RRSIGs. Returns the kept records, the final target and whether records of the type were found.
fn follow_chain<'m>(
    records: &'m [Record],
    qname: &Name,
    qtype: RecordType,
    dnssec_ok: bool,
) -> (Vec<&'m Record>, Name, bool) {
    let mut kept: Vec<&Record> = Vec::new();
    let mut taken = vec![false; records.len()];
    let mut target = qname.clone();
    let mut found = false;
    for _ in 0..MAX_CHAIN {
        let mut next = None;
        for (i, r) in records.iter().enumerate() {
            if taken[i] {
                continue;
            }
            let rt = r.record_type();
            let at_target = r.name == target;
            let keep = if at_target && (rt == qtype || qtype == RecordType::ANY) {
                found = true;
                true
            } else if at_target && rt == RecordType::CNAME {
                if let RData::CNAME(c) = &r.data {
                    next.get_or_insert_with(|| c.0.clone());
                }
                true
            } else if rt == RecordType::DNAME {
                r.name.zone_of(&target) && r.name != target
            } else {
                at_target && dnssec_ok && rt == RecordType::RRSIG
            };
            if keep {
                taken[i] = true;
                kept.push(r);
            }
        }
        match next {
            Some(n) if !found && n != target => target = n,
            _ => break,
        }
    }
    (kept, target, found)
}

/// Additional-section addresses for SRV and MX targets in the answer, when the target is inside
/// the zone the query was forwarded for (anything else is out of bailiwick).
fn glue<'m>(answers: &[&Record], additionals: &'m [Record], bailiwick: &Name) -> Vec<&'m Record> {
    let targets: Vec<&Name> = answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::SRV(s) => Some(&s.target),
            RData::MX(m) => Some(&m.exchange),
            _ => None,
        })
        .collect();
    additionals
        .iter()
        .filter(|r| {
            matches!(r.record_type(), RecordType::A | RecordType::AAAA)
                && targets.contains(&&r.name)
                && bailiwick.zone_of(&r.name)
        })
        .collect()
}

/// Encodes a cacheable answer message: header (ID 0, `flags`, counts), the question exactly as
/// `q.name` (lower-cased), then the records, and returns it with the offset of every record's
/// TTL. Also used for answers nodedns makes itself (Kubernetes-schema NXDOMAIN), so every cached
/// message has one layout.
pub fn encode_answer(
    q: &UpstreamQuestion<'_>,
    flags: [u8; 2],
    answers: &[&Record],
    authority: &[&Record],
    additional: &[&Record],
) -> Result<(Vec<u8>, Vec<u16>), hickory_proto::ProtoError> {
    let mut buf = Vec::with_capacity(512);
    let mut offsets = Vec::new();
    {
        let mut enc = BinEncoder::new(&mut buf);
        enc.emit_u16(0)?; // ID: patched per client
        enc.emit_vec(&flags)?;
        enc.emit_u16(1)?;
        enc.emit_u16(answers.len() as u16)?;
        enc.emit_u16(authority.len() as u16)?;
        enc.emit_u16(additional.len() as u16)?;
        // The question as a Name so later owner names compress against it.
        question_name(q).map_err(|e| hickory_proto::ProtoError::from(e.to_string()))?.emit(&mut enc)?;
        enc.emit_u16(q.qtype)?;
        enc.emit_u16(q.qclass)?;
        for r in answers.iter().chain(authority).chain(additional) {
            r.name.emit(&mut enc)?;
            enc.emit_u16(u16::from(r.record_type()))?;
            enc.emit_u16(u16::from(r.dns_class))?;
            offsets.push(enc.offset() as u16);
            enc.emit_u32(r.ttl)?;
            let place = enc.place::<u16>()?;
            r.data.emit(&mut enc)?;
            let len = enc.len_since_place(&place);
            enc.emit_at(place, len as u16)?;
        }
    }
    // The question must be stored exactly as the key's lower-cased name: hits copy the client's
    // question over it byte for byte.
    if buf.get(HEADER_LEN..HEADER_LEN + q.name.as_wire().len()) != Some(q.name.as_wire()) {
        return Err(hickory_proto::ProtoError::from("question did not encode as sent"));
    }
    Ok((buf, offsets))
}

mod walk;

#[cfg(test)]
mod tests;
