//! Kubernetes DNS schema: which names can exist in a cluster zone, so that the search-path
//! expansions of external names (`ndots:5`) are answered NXDOMAIN here instead of upstream.
//!
//! The rule is the grammar of the Kubernetes DNS specification (kubernetes/dns
//! `docs/specification.md`, schema 1.1.0, "the spec" below) widened to everything CoreDNS's
//! kubernetes plugin answers by default or with one of its options (`plugin/kubernetes/parse.go`
//! `parseRequest`, `kubernetes.go` `Services`/`findServices`/`findPods`, `ns.go`). A name is
//! [`SchemaVerdict::CannotExist`] only when CoreDNS would answer NXDOMAIN for it whatever the
//! cluster holds; anything that might exist, or might be an empty non-terminal (NODATA, RFC 8020),
//! is forwarded. Labels relative to the zone, read right to left:
//!
//! | name (left of `<zone>`)               | verdict                          | source                          |
//! |---------------------------------------|----------------------------------|---------------------------------|
//! | (apex)                                | forward                          | SOA, NS; parse.go: apex NODATA  |
//! | `dns-version`                         | forward                          | spec §2.2 (TXT)                 |
//! | `ns.dns`; `dns` (its ENT)             | forward                          | ns.go `isDefaultNS`; RFC 8020   |
//! | other names not ending `svc` or `pod` | NXDOMAIN                         | parse.go `errInvalidRequest`    |
//! | `svc`, `<ns>.svc`                     | forward (ENT, NODATA)            | parse.go; `findServices`        |
//! | `<svc>.<ns>.svc`                      | forward                          | spec §2.3.1, §2.4.1, §2.5       |
//! | `<host>.<svc>.<ns>.svc`               | forward                          | spec §2.4.1; `endpointHostname` |
//! | `<port>.<proto>.<svc>.<ns>.svc`       | forward if `<proto>` less one `_` is tcp, udp, sctp (`*`, `any` before 1.9) | spec §2.3.2, §2.4.2; parse.go |
//! | `<host>.<cluster>.<svc>.<ns>.svc`     | forward in `clusterset.local`    | parse.go multicluster; KEP-1645 |
//! | `<z>.pin._zone.<svc>.<ns>.svc`, `prefer` | forward                       | parse.go `zonal` option         |
//! | other names, 5+ labels left of `<ns>.svc` | NXDOMAIN                     | parse.go "too long"             |
//! | `pod`, `<ns>.pod`                     | forward (ENT, NODATA)            | `findPods`                      |
//! | `[x.[y.]]<dashed-ip>.<ns>.pod`        | forward                          | `findPods` (insecure/verified)  |
//! | other names under `pod`               | NXDOMAIN                         | `findPods` `net.ParseIP`; parse.go |
//!
//! What the rule deliberately does not model, and why it is safe:
//! - Label spelling. Namespaces, Services and hostnames are RFC 1123 labels (Service names may
//!   start with a digit: KEP-5311, `RelaxedServiceNameValidation`, alpha in 1.34), and CoreDNS
//!   before 1.9.0 also matched the wildcards `*` and `any` there (removed in coredns#5019). Any
//!   label is accepted in those positions; only the protocol and pod-name labels are checked.
//! - CoreDNS's own NXDOMAINs for some names forwarded here (`dns.<zone>`, `_tcp.<svc>.<ns>.svc`,
//!   endpoint names of ExternalName Services): forwarding a name costs one query, a wrong
//!   NXDOMAIN breaks a client.
//! - Other plugins serving names inside the zone (`hosts`, `template`, `rewrite`, `fallthrough`
//!   to another plugin): list them in `schema_exceptions` or leave `kubernetes_schema` off.
//! - CoreDNS `autopath` answers the first search expansion with a CNAME when it can identify the
//!   client pod by source address; behind a node-local cache the source is the cache, so autopath
//!   never fires and the expansion is NXDOMAIN upstream too (CoreDNS autopath README).
//!
//! The search expansions this removes (`ndots:5`, search `<ns>.svc.<zone> svc.<zone> <zone>`):
//! for `api.example.com`, `api.example.com.<ns>.svc.<zone>` (port/protocol shape, `example` is no
//! protocol) and `api.example.com.<zone>` (neither `svc` nor `pod`); `api.example.com.svc.<zone>`
//! remains forwarded: it is endpoint `api` of Service `example` in a Namespace `com`.

use hickory_proto::op::Message;
use hickory_proto::rr::{Name, RData, Record};
use nodedns_cache::{CacheableAnswer, Disposition, MAX_NAME_LEN, Ttl};
use nodedns_wire::Query;
use nodedns_wire::UpstreamQuestion;
use nodedns_wire::ingest::encode_answer;

use nodedns_config::ZoneConfig;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SchemaVerdict {
    /// The name may exist: forward it.
    MayExist,
    /// No name of this shape exists under the specification: answer NXDOMAIN locally.
    CannotExist,
}

/// Most labels a name can have (255 octets, two per label at least).
const MAX_LABELS: usize = 128;

/// The zone of Multi-Cluster Services (KEP-1645, "clusterset.local"): CoreDNS serves it with its
/// `multicluster` option, which reads two non-underscore labels left of the Service as
/// `<hostname>.<clusterid>` instead of port and protocol (parse.go).
const MULTICLUSTER_ZONE: &[&[u8]] = &[b"clusterset", b"local"];

/// Protocols a Service or EndpointSlice port may have (Kubernetes API validation:
/// `supportedPortProtocols` = TCP, UDP, SCTP), matched case-insensitively by CoreDNS
/// (`matchPortAndProtocol` → `strings.EqualFold`). `*` and `any` matched every protocol before
/// CoreDNS 1.9.0 (coredns#5019); older CoreDNS still runs in clusters, so they stay.
const PROTOCOLS: &[&[u8]] = &[b"tcp", b"udp", b"sctp", b"*", b"any"];

/// Whether `name` (lower-cased, fully qualified, inside `zone.name`) can exist in a zone that
/// follows the Kubernetes DNS schema. See the module documentation for the rule and its sources.
pub fn verdict(name: &Name, zone: &ZoneConfig) -> SchemaVerdict {
    if !schema_applies(&zone.name) || !zone.name.zone_of(name) {
        return SchemaVerdict::MayExist;
    }
    // An exception is never synthesized, nor is anything below it; names above it are its empty
    // non-terminals, and an NXDOMAIN there would deny the exception too (RFC 8020 §2).
    if zone.schema_exceptions.iter().any(|e| e.zone_of(name) || name.zone_of(e)) {
        return SchemaVerdict::MayExist;
    }
    let mut labels: [&[u8]; MAX_LABELS] = [&[]; MAX_LABELS];
    let mut count = 0;
    for label in name.iter() {
        let Some(slot) = labels.get_mut(count) else {
            return SchemaVerdict::MayExist;
        };
        *slot = label;
        count += 1;
    }
    // `Name::num_labels` does not count a leading `*`, so count the zone's labels directly.
    let zone_labels = zone.name.iter().count();
    let relative = &labels[..count.saturating_sub(zone_labels)];
    let multicluster = zone_labels == MULTICLUSTER_ZONE.len() && ends_with(&zone.name, MULTICLUSTER_ZONE);
    if may_exist(relative, multicluster) { SchemaVerdict::MayExist } else { SchemaVerdict::CannotExist }
}

/// The rule only describes a forward cluster domain. Under the root it would deny the whole
/// DNS, and reverse zones hold PTR records for Service and endpoint addresses (spec §2.3.3,
/// §2.4.3) in a different grammar; for those the rule is off whatever the config says.
fn schema_applies(zone: &Name) -> bool {
    !zone.is_root() && !ends_with(zone, &[b"in-addr", b"arpa"]) && !ends_with(zone, &[b"ip6", b"arpa"])
}

/// Whether the last labels of `name` are `suffix` (case-insensitively).
fn ends_with(name: &Name, suffix: &[&[u8]]) -> bool {
    name.iter().len() >= suffix.len() && name.iter().rev().zip(suffix.iter().rev()).all(|(a, b)| is(a, b))
}

/// The schema proper, on the labels left of the zone (leftmost first).
fn may_exist(labels: &[&[u8]], multicluster: bool) -> bool {
    let Some((&kind, rest)) = labels.split_last() else {
        // The apex: SOA and NS (parse.go: "return NODATA for apex queries").
        return true;
    };
    if is(kind, b"svc") {
        services(rest, multicluster)
    } else if is(kind, b"pod") {
        pods(rest)
    } else {
        apex_records(labels)
    }
}

/// Names outside `svc` and `pod` that CoreDNS serves. Everything else there is
/// `errInvalidRequest` in parse.go: NXDOMAIN.
fn apex_records(labels: &[&[u8]]) -> bool {
    match labels {
        // Spec §2.2: `dns-version.<zone>. IN TXT`. Other types are NXDOMAIN at CoreDNS, but the
        // verdict is per name: forward them all.
        [only] if is(only, b"dns-version") => true,
        // ns.go `isDefaultNS`: `ns.dns.<zone>` holds the A/AAAA of the zone's NS records.
        [ns, dns] if is(ns, b"ns") && is(dns, b"dns") => true,
        // `dns.<zone>` is the empty non-terminal above it (RFC 8020: never NXDOMAIN it).
        [only] if is(only, b"dns") => true,
        _ => false,
    }
}

/// Names under `svc.<zone>`: `labels` ends with the namespace.
fn services(labels: &[&[u8]], multicluster: bool) -> bool {
    match labels {
        // `svc.<zone>` and `<ns>.svc.<zone>`: empty non-terminals, NODATA (parse.go; findServices
        // "handle empty service name").
        [] | [_] => true,
        // Spec §2.3.1 (A/AAAA), §2.4.1 (headless), §2.5 (ExternalName CNAME).
        [_service, _ns] => true,
        // `<hostname>.<service>.<ns>`: spec §2.4.1 endpoint hostname; CoreDNS also names
        // endpoints by dashed IP (IPv6 with `-` for `:`) and, with `endpoint_pod_names`, by pod
        // name (kubernetes.go `endpointHostname`). Any label may be one.
        [_endpoint, _service, _ns] => true,
        // `_<port>._<proto>.<service>.<ns>`: spec §2.3.2, §2.4.2. CoreDNS strips one leading
        // underscore from each and matches without it, so `http.tcp.<svc>` answers too; the
        // port is any port name, the protocol one a port can have.
        [port, proto, _service, _ns] => {
            (multicluster && !port.starts_with(b"_") && !proto.starts_with(b"_"))
                || PROTOCOLS.iter().any(|p| is(strip_underscore(proto), p))
        }
        // CoreDNS `zonal` option: `<topology-zone>.pin|prefer._zone.<service>.<ns>`, the zone
        // spanning one or more labels. Anything else this long is "too long" (parse.go).
        [zone @ .., directive, anchor, _service, _ns] => {
            !zone.is_empty() && is(anchor, b"_zone") && (is(directive, b"pin") || is(directive, b"prefer"))
        }
    }
}

/// Names under `pod.<zone>`: `labels` ends with the namespace.
fn pods(labels: &[&[u8]]) -> bool {
    match labels {
        // `pod.<zone>`, `<ns>.pod.<zone>`: NODATA (findPods "handle empty pod name").
        [] | [_] => true,
        // `<dashed-ip>.<ns>.pod.<zone>`; parse.go reads up to two more labels on the left as
        // endpoint or port/protocol and findPods ignores them, so they answer the same.
        [left @ .., pod, _ns] if left.len() <= 2 => is_dashed_ip(pod),
        _ => false,
    }
}

/// Whether `label` names a pod IP the way CoreDNS's `findPods` reads it: an IPv4 address with
/// `-` for `.`, or an IPv6 address with `-` for `:` (so `--` is `::`). CoreDNS picks the family
/// by counting dashes and rejects octets with leading zeros (Go ≥ 1.17 `net.ParseIP`); both
/// families and leading zeros are accepted here, which only ever forwards more.
fn is_dashed_ip(label: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(label) else {
        return false;
    };
    is_dashed_ipv4(text) || text.replace('-', ":").parse::<std::net::Ipv6Addr>().is_ok()
}

fn is_dashed_ipv4(text: &str) -> bool {
    let mut octets = 0;
    for part in text.split('-') {
        octets += 1;
        let decimal = !part.is_empty() && part.len() <= 3 && part.bytes().all(|b| b.is_ascii_digit());
        if !decimal || !part.parse::<u16>().is_ok_and(|v| v <= 255) {
            return false;
        }
    }
    octets == 4
}

fn strip_underscore(label: &[u8]) -> &[u8] {
    label.strip_prefix(b"_").unwrap_or(label)
}

/// Label comparison; all comparisons are case-insensitive (spec §2.1).
fn is(label: &[u8], literal: &[u8]) -> bool {
    label.eq_ignore_ascii_case(literal)
}

/// An NXDOMAIN answer for `query` carrying the SOA record of `soa_answer` (the zone apex SOA
/// answer as cached: a wire message whose answer section holds the SOA).
///
/// The message is laid out like an ingested upstream answer (`encode_answer`): ID 0, QR and
/// rcode 3 (no AA: nodedns is a cache, and no AD: nothing was validated), the question
/// lower-cased, the SOA in the authority section with its TTL set to min(TTL, MINIMUM)
/// (RFC 2308 §3). The disposition gives it the lifetime of any upstream NXDOMAIN with that SOA
/// (RFC 2308 §5), clamped by the zone's policy. `None` if `soa_answer` holds no SOA enclosing
/// the name.
pub fn nxdomain_answer(query: &Query<'_>, soa_answer: &[u8]) -> Option<CacheableAnswer> {
    let mut name_buf = [0u8; MAX_NAME_LEN];
    let (key, _) = query.cache_key(&mut name_buf);
    let question = UpstreamQuestion {
        name: key.name,
        qtype: query.qtype,
        qclass: query.qclass,
        dnssec_ok: query.dnssec_ok(),
        checking_disabled: query.checking_disabled,
    };
    let qname = nodedns_wire::name_from_wire(key.name.as_wire())?;
    let soa_message = Message::from_vec(soa_answer).ok()?;
    // The answer to an apex SOA query holds it in the answer section; accept a denial's
    // authority SOA too (an upstream that answered the apex query with NODATA).
    let mut soa = soa_message
        .answers
        .iter()
        .chain(&soa_message.authorities)
        .find(|r| matches!(r.data, RData::SOA(_)) && r.name.zone_of(&qname))?
        .clone();
    let RData::SOA(data) = &soa.data else {
        return None;
    };
    let minimum = data.minimum;
    soa.ttl = soa.ttl.min(minimum);
    let authority: [&Record; 1] = [&soa];
    let (message, ttl_offsets) = encode_answer(&question, [0x80, 0x03], &[], &authority, &[]).ok()?;
    Some(CacheableAnswer {
        message,
        ttl_offsets,
        disposition: Disposition::Denial {
            nxdomain: true,
            soa: Some((Ttl::from_wire(soa.ttl), Ttl::from_wire(minimum))),
            chain_ttl: None,
        },
    })
}

#[cfg(test)]
mod tests;
