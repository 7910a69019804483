//! Turns one received query into what the server must do: log it, look up its behaviour and
//! canned data, and build the wire answer. Transport-independent except for UDP truncation.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RecordType};
use rand::Rng;

use crate::behaviour::{Behaviour, ResponsePlan};
use crate::fake_upstream::{LoggedQuery, Shared, Transport};
use crate::script::{Resolution, normalize_name};

/// The EDNS UDP payload size the fake advertises, the DNS Flag Day 2020 value CoreDNS also uses.
pub const ADVERTISED_UDP_PAYLOAD_BYTES: u16 = 1232;

/// Size of a DNS header; anything shorter cannot even be answered with FORMERR.
const HEADER_BYTES: usize = 12;

/// What the server must do with one received message.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// Send nothing.
    NoAnswer,
    /// Close the TCP connection it came on (over UDP: send nothing).
    CloseConnection,
    /// Send `wire` (unframed) after `delay`.
    Respond {
        /// How long to hold the answer back.
        delay: Duration,
        /// The encoded answer.
        wire: Vec<u8>,
    },
}

/// Decides and builds the response to one received message.
pub(crate) fn respond(shared: &Shared, wire: &[u8], transport: Transport, peer: SocketAddr) -> Outcome {
    let query = match Message::from_vec(wire) {
        Ok(query) => query,
        Err(_) => return answer_undecodable(wire),
    };
    // Never answer a response: two fakes pointed at each other must not loop.
    if query.metadata.message_type != MessageType::Query {
        return Outcome::NoAnswer;
    }
    let Some(question) = query.queries.first() else {
        return respond_now(error_response(&query, ResponseCode::FormErr));
    };
    let name = normalize_name(&question.name().to_ascii());
    let rtype = question.query_type();
    shared.log.lock().push(LoggedQuery {
        name: name.clone(),
        rtype,
        transport,
        id: query.metadata.id,
        at: Instant::now(),
        peer,
    });

    let (plan, resolution) = {
        let script = shared.script.lock();
        (script.behaviour_for(&name, rtype).plan(), script.resolve(&name, rtype))
    };
    if plan.drop_probability > 0.0 && rand::rng().random_bool(plan.drop_probability) {
        return Outcome::NoAnswer;
    }
    if plan.close_connection {
        if plan.close_once {
            shared.script.lock().set_behaviour(&name, rtype, Behaviour::Answer);
        }
        return match transport {
            Transport::Tcp => Outcome::CloseConnection,
            Transport::Udp => Outcome::NoAnswer,
        };
    }

    let response = build_response(&query, question, resolution, &plan);
    let wire = encode_for(&query, response, transport, plan.truncate_udp);
    respond_after(plan.delay, wire)
}

/// Answers a message that does not decode: FORMERR if its ID can be read, else nothing.
fn answer_undecodable(wire: &[u8]) -> Outcome {
    if wire.len() < HEADER_BYTES {
        return Outcome::NoAnswer;
    }
    let id = u16::from_be_bytes([wire[0], wire[1]]);
    let response = Message::error_msg(id, OpCode::Query, ResponseCode::FormErr);
    match response.to_vec() {
        Ok(wire) => respond_now(wire),
        Err(_) => Outcome::NoAnswer,
    }
}

fn respond_now(wire: Vec<u8>) -> Outcome {
    respond_after(Duration::ZERO, wire)
}

/// Sends `wire` after `delay`; an empty `wire` means no answer could be encoded at all.
fn respond_after(delay: Duration, wire: Vec<u8>) -> Outcome {
    if wire.is_empty() { Outcome::NoAnswer } else { Outcome::Respond { delay, wire } }
}

/// A response to `query` with header flags set as a CoreDNS answer has them, and no sections.
fn response_skeleton(query: &Message) -> Message {
    let mut response = Message::response(query.metadata.id, query.metadata.op_code);
    response.metadata.authoritative = true;
    response.metadata.recursion_available = true;
    response.metadata.recursion_desired = query.metadata.recursion_desired;
    response.metadata.checking_disabled = query.metadata.checking_disabled;
    if query.edns.is_some() {
        // RFC 6891 §6.1.1: a query with OPT gets an OPT back.
        let mut edns = Edns::new();
        edns.set_max_payload(ADVERTISED_UDP_PAYLOAD_BYTES);
        response.set_edns(edns);
    }
    response
}

/// An empty-sectioned error answer echoing the question, encoded.
fn error_response(query: &Message, rcode: ResponseCode) -> Vec<u8> {
    let mut response = response_skeleton(query);
    response.metadata.response_code = rcode;
    response.add_queries(query.queries.iter().cloned());
    // A skeleton with only the query's own question always encodes; should it not, an empty
    // vector makes `respond_after` send nothing.
    response.to_vec().unwrap_or_default()
}

fn build_response(query: &Message, question: &Query, resolution: Resolution, plan: &ResponsePlan) -> Message {
    let mut response = response_skeleton(query);
    if plan.wrong_id {
        response.metadata.id = query.metadata.id.wrapping_add(1);
    }
    let echoed_question = if plan.wrong_question { wrong_question(question) } else { question.clone() };
    response.add_query(echoed_question);

    match (plan.error_rcode, resolution) {
        (Some(rcode), _) => response.metadata.response_code = rcode,
        (None, Resolution::Records(records)) => {
            response.add_answers(records);
        }
        (None, Resolution::NoData(soa)) => {
            response.add_authority(soa);
        }
        (None, Resolution::NxDomain(soa)) => {
            response.metadata.response_code = ResponseCode::NXDomain;
            response.add_authority(soa);
        }
    }
    for record in &plan.extra_records {
        match record.record_type() {
            RecordType::NS | RecordType::SOA => response.add_authority(record.clone()),
            _ => response.add_additional(record.clone()),
        };
    }
    response
}

/// The same question about `wrong.<name>` (or `wrong.` for the root).
fn wrong_question(question: &Query) -> Query {
    let wrong_label = Name::from_ascii("wrong").unwrap_or_else(|_| Name::root());
    // Prepending a label fails only if the name is already at the 255-byte limit; then the
    // root is still a different name.
    let name = wrong_label.append_domain(question.name()).unwrap_or_else(|_| Name::root());
    let mut wrong = question.clone();
    wrong.set_name(name);
    wrong
}

/// Encodes `response`, truncating it for UDP when asked to or when it exceeds the client's UDP
/// payload size (512 bytes without EDNS, RFC 1035 §4.2.1; the OPT's size with it, RFC 6891
/// §6.2.5). A truncated answer keeps the question and OPT and drops every record, so the client
/// must retry over TCP. Over TCP the answer must fit the two-byte length prefix.
fn encode_for(query: &Message, mut response: Message, transport: Transport, truncate_udp: bool) -> Vec<u8> {
    let Ok(wire) = response.to_vec() else {
        return error_response(query, ResponseCode::ServFail);
    };
    let fits = match transport {
        Transport::Udp => !truncate_udp && wire.len() <= usize::from(query.max_payload()),
        Transport::Tcp => wire.len() <= usize::from(u16::MAX),
    };
    if fits {
        return wire;
    }
    if transport == Transport::Tcp {
        return error_response(query, ResponseCode::ServFail);
    }
    response.answers.clear();
    response.authorities.clear();
    response.additionals.clear();
    response.metadata.truncation = true;
    response.to_vec().unwrap_or_else(|_| error_response(query, ResponseCode::ServFail))
}
