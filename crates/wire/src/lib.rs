//! The nodedns wire layer.
//!
//! - [`query`]: parses a client query in place (header, question, EDNS) and classifies bad input
//!   into the answer it gets. No allocation.
//! - [`render`]: writes a cached answer for a query (the hit path: copy, patch ID, flags,
//!   question case and TTLs, add OPT) and locally generated answers. No allocation.
//! - [`framing`]: the TCP length prefix (RFC 1035 §4.2.2): which lengths each peer may send,
//!   and a pure stream splitter for tests and fuzzing.
//! - [`ingest`]: the miss path: builds upstream queries and turns upstream responses into
//!   cacheable answers that hold only records answering the question. Plain A/AAAA answers are
//!   walked on the wire and kept as sent; everything else is decoded with hickory-proto.
#![forbid(unsafe_code)]

pub mod framing;
pub mod ingest;
pub mod query;
pub mod render;

pub use ingest::{
    IngestError, Ingested, UpstreamQuestion, answers_question, build_query, ingest, ingest_decoded, name_from_wire,
    response_id,
};
pub use query::{Edns, Malformed, OwnedQuery, Parsed, Query, RejectedQuery, Rejection, parse_query};
pub use render::{
    ADVERTISED_UDP_PAYLOAD, MAX_MESSAGE, Rcode, Transport, render_any_hinfo, render_cached, render_rcode,
    render_rejection, render_truncated, response_rcode_label,
};
