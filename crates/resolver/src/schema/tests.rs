use hickory_proto::op::{Message, MessageType, OpCode, Query as Question, ResponseCode};
use hickory_proto::rr::rdata::SOA;
use hickory_proto::rr::{Name, RData, Record, RecordType};
use nodedns_cache::{AnswerView, Disposition, Ttl};
use nodedns_wire::{Parsed, Transport, parse_query, render_cached};

use super::*;
use nodedns_config::{Config, ZoneConfig};

/// A cluster zone with the rule on and two exceptions, an MCS zone, a reverse zone and the
/// root zone, all with the rule on.
fn zones() -> Vec<ZoneConfig> {
    let text = r#"
listen: ["127.0.0.1:5353"]
zones:
  - name: Cluster.Local
    upstreams: ["192.0.2.53"]
    kubernetes_schema: true
    schema_exceptions: ["custom.cluster.local", "db.legacy.cluster.local"]
  - name: clusterset.local
    upstreams: ["192.0.2.53"]
    kubernetes_schema: true
  - name: in-addr.arpa
    upstreams: ["192.0.2.53"]
  - name: "."
    upstreams: ["192.0.2.53"]
admin:
  listen: "127.0.0.1:9253"
"#;
    let mut zones = Config::parse(text, "schema-test.yaml").unwrap_or_else(|e| panic!("{e}")).zones;
    // Config validation refuses the rule on the root and reverse zones; switch it on behind
    // its back to prove the rule's own guard holds too.
    for z in &mut zones {
        z.kubernetes_schema = true;
    }
    zones
}

fn zone<'z>(zones: &'z [ZoneConfig], apex: &str) -> &'z ZoneConfig {
    zones.iter().find(|z| z.name.to_ascii() == apex).unwrap_or_else(|| panic!("no zone {apex}"))
}

/// A name from its labels as raw bytes, the way it arrives on the wire (hickory's text parser
/// rejects labels such as `_*` that a query can still carry).
fn name(text: &str) -> Name {
    let labels = text.trim_end_matches('.').split('.').filter(|l| !l.is_empty()).map(str::as_bytes);
    let mut n = Name::from_labels(labels).unwrap_or_else(|e| panic!("{text}: {e}"));
    n.set_fqdn(true);
    n
}

/// Names CoreDNS (or another server following the spec) may answer positively, or answers NODATA
/// as empty non-terminals: each must be forwarded. `(name, why)`.
const FORWARD: &[(&str, &str)] = &[
    // Zone apex and the records CoreDNS serves beside svc/pod.
    ("cluster.local", "apex: SOA, NS"),
    ("dns-version.cluster.local", "spec §2.2 TXT"),
    ("ns.dns.cluster.local", "CoreDNS NS target (ns.go)"),
    ("dns.cluster.local", "empty non-terminal above ns.dns"),
    // Empty non-terminals: NODATA, never NXDOMAIN (RFC 8020).
    ("svc.cluster.local", "ENT"),
    ("pod.cluster.local", "ENT"),
    ("default.svc.cluster.local", "namespace ENT"),
    ("kube-system.svc.cluster.local", "namespace ENT"),
    ("default.pod.cluster.local", "namespace ENT under pod"),
    // Services (spec §2.3.1, §2.4.1, §2.5).
    ("kubernetes.default.svc.cluster.local", "ClusterIP service"),
    ("headless.default.svc.cluster.local", "headless service"),
    ("foo.default.svc.cluster.local", "ExternalName service"),
    ("1st-svc.default.svc.cluster.local", "service names may start with a digit"),
    ("123.default.svc.cluster.local", "all-digit service name"),
    ("a.b.svc.cluster.local", "service a in namespace b"),
    // Headless-service hostnames (spec §2.4.1) and CoreDNS endpoint names.
    ("my-pet.headless.default.svc.cluster.local", "endpoint hostname"),
    ("web-0.web.prod.svc.cluster.local", "StatefulSet pod hostname"),
    ("438934893.headless.default.svc.cluster.local", "system-assigned endpoint id (spec example)"),
    ("10-3-0-100.headless.default.svc.cluster.local", "dashed IPv4 endpoint"),
    ("2001-db8--1.headless.default.svc.cluster.local", "dashed IPv6 endpoint"),
    ("fd00--0.headless.default.svc.cluster.local", "dashed IPv6 endpoint ending in :: (CoreDNS appends 0)"),
    ("my-deployment-5d4f8c7b9-x2x9q.headless.default.svc.cluster.local", "endpoint_pod_names"),
    // SRV names (spec §2.3.2, §2.4.2); CoreDNS strips one underscore and matches case-insensitively.
    ("_https._tcp.kubernetes.default.svc.cluster.local", "SRV"),
    ("_dns._udp.kube-dns.kube-system.svc.cluster.local", "SRV udp"),
    ("_dns-tcp._tcp.kube-dns.kube-system.svc.cluster.local", "SRV, dashed port name"),
    ("_sip._sctp.voip.default.svc.cluster.local", "SRV sctp"),
    ("_https._tcp.headless.default.svc.cluster.local", "SRV of a headless service"),
    ("https.tcp.kubernetes.default.svc.cluster.local", "SRV without underscores (parse.go)"),
    ("_https.tcp.kubernetes.default.svc.cluster.local", "SRV, one underscore"),
    ("_HTTPS._TCP.Kubernetes.Default.SVC.cluster.local", "case-insensitive (spec §2.1)"),
    // Wildcards (CoreDNS before 1.9.0).
    ("*.default.svc.cluster.local", "wildcard service"),
    ("*.*.svc.cluster.local", "wildcard service and namespace"),
    ("*.headless.default.svc.cluster.local", "wildcard endpoint"),
    ("_*._*.kubernetes.default.svc.cluster.local", "wildcard port and protocol"),
    ("*.any.kubernetes.default.svc.cluster.local", "wildcard port, any protocol"),
    ("*.svc.cluster.local", "wildcard namespace ENT"),
    ("*.pod.cluster.local", "wildcard namespace under pod"),
    // Pods (CoreDNS `pods insecure|verified`): dashed IPv4 or IPv6 (`--` for `::`).
    ("10-244-1-7.default.pod.cluster.local", "dashed IPv4 pod"),
    ("0-0-0-0.default.pod.cluster.local", "dashed IPv4 pod, zeros"),
    ("010-244-001-007.default.pod.cluster.local", "leading zeros: older CoreDNS accepted them"),
    ("fd00--1.default.pod.cluster.local", "dashed IPv6 pod"),
    ("2001-db8-0-0-0-0-0-1.default.pod.cluster.local", "dashed IPv6 pod, full form"),
    ("FD00--A.default.pod.cluster.local", "dashed IPv6 pod, upper case"),
    ("--1.default.pod.cluster.local", "dashed ::1"),
    ("x.10-244-1-7.default.pod.cluster.local", "endpoint label before a pod: findPods ignores it"),
    ("_http._tcp.10-244-1-7.default.pod.cluster.local", "port/protocol before a pod: ignored"),
    // CoreDNS `zonal` option.
    ("us-west-2a.pin._zone.db.prod.svc.cluster.local", "zonal pin"),
    ("corp.example.com.prefer._zone.db.prod.svc.cluster.local", "zonal prefer, dotted zone"),
    // Search expansions of external names that remain possible names.
    ("api.example.com.svc.cluster.local", "endpoint api of service example in namespace com"),
    ("example.com.default.svc.cluster.local", "endpoint example of service com"),
    ("example.com.svc.cluster.local", "service example in namespace com"),
    ("api.tcp.com.default.svc.cluster.local", "SRV-shaped: port api, protocol tcp"),
    // Exceptions, below them, and their empty non-terminals.
    ("custom.cluster.local", "exception"),
    ("a.b.custom.cluster.local", "below an exception"),
    ("db.legacy.cluster.local", "exception"),
    ("legacy.cluster.local", "ENT above an exception"),
    // Not in the zone at all.
    ("example.com", "outside the zone"),
    ("local", "above the zone"),
];

/// Names no Kubernetes DNS server answers: each is answered NXDOMAIN locally. `(name, why)`.
const SYNTHESIZE: &[(&str, &str)] = &[
    // Search expansions of external names (ndots:5, search <ns>.svc.<zone> svc.<zone> <zone>).
    ("api.example.com.default.svc.cluster.local", "protocol `example`"),
    ("api.example.com.cluster.local", "neither svc nor pod"),
    ("api.example.test.my-ns.svc.cluster.local", "protocol `example`"),
    ("api.example.test.cluster.local", "neither svc nor pod"),
    ("www.google.com.default.svc.cluster.local", "protocol `google`"),
    ("www.google.com.cluster.local", "neither svc nor pod"),
    ("a.b.example.com.default.svc.cluster.local", "too long"),
    ("a.b.example.com.svc.cluster.local", "protocol `b`"),
    ("a.b.example.com.cluster.local", "neither svc nor pod"),
    ("s3.eu-west-1.amazonaws.com.default.svc.cluster.local", "protocol `eu-west-1`"),
    ("example.com.cluster.local", "neither svc nor pod"),
    ("com.cluster.local", "neither svc nor pod"),
    ("localhost.cluster.local", "neither svc nor pod"),
    ("API.Example.COM.cluster.local", "case-insensitive"),
    // Beside svc and pod.
    ("kubernetes.default.cluster.local", "legacy kube-dns shape without svc"),
    ("svc.default.cluster.local", "ends in a namespace, not svc"),
    ("foo.dns-version.cluster.local", "below dns-version"),
    ("x.ns.dns.cluster.local", "below ns.dns"),
    ("foo.dns.cluster.local", "beside ns.dns"),
    ("dns-version.dns.cluster.local", "beside ns.dns"),
    // Under svc.
    ("_https._http.kubernetes.default.svc.cluster.local", "protocol http is no port protocol"),
    ("_https._tcp.extra.kubernetes.default.svc.cluster.local", "too long"),
    ("x.y.z.svc1.default.svc.cluster.local", "too long"),
    ("host.cluster1.svc1.default.svc.cluster.local", "multicluster shape outside clusterset.local"),
    ("pin._zone.db.prod.svc.cluster.local", "zonal name without a zone: protocol `_zone`"),
    ("us-west-2a.ready._zone.db.prod.svc.cluster.local", "unknown zonal directive"),
    ("us-west-2a.pin.zone.db.prod.svc.cluster.local", "zonal anchor needs its underscore"),
    // Under pod.
    ("my-pod.default.pod.cluster.local", "pod names are dashed IPs"),
    ("10-0-0-256.default.pod.cluster.local", "octet out of range"),
    ("10-0-0.default.pod.cluster.local", "three octets"),
    ("1-2-3-4-5.default.pod.cluster.local", "neither IPv4 nor IPv6"),
    ("fd00---1.default.pod.cluster.local", "::: is no IPv6"),
    ("a.b.c.10-0-0-1.default.pod.cluster.local", "too long"),
    ("api.example.com.default.pod.cluster.local", "`com` is no pod IP"),
    ("us-west-2a.pin._zone.db.prod.pod.cluster.local", "zonal names are svc only"),
];

#[test]
fn names_that_may_exist_are_forwarded() {
    let zones = zones();
    let cluster = zone(&zones, "cluster.local.");
    let wrong: Vec<_> =
        FORWARD.iter().filter(|(n, _)| verdict(&name(n).to_lowercase(), cluster) != SchemaVerdict::MayExist).collect();
    assert!(wrong.is_empty(), "would be answered NXDOMAIN locally but may exist: {wrong:#?}");
}

#[test]
fn names_that_cannot_exist_are_synthesized() {
    let zones = zones();
    let cluster = zone(&zones, "cluster.local.");
    let wrong: Vec<_> = SYNTHESIZE
        .iter()
        .filter(|(n, _)| verdict(&name(n).to_lowercase(), cluster) != SchemaVerdict::CannotExist)
        .collect();
    assert!(wrong.is_empty(), "would be forwarded although they cannot exist: {wrong:#?}");
}

#[test]
fn the_verdict_does_not_depend_on_case() {
    let zones = zones();
    let cluster = zone(&zones, "cluster.local.");
    for (n, _) in FORWARD.iter().chain(SYNTHESIZE) {
        let upper = name(&n.to_ascii_uppercase());
        assert_eq!(verdict(&upper, cluster), verdict(&name(n).to_lowercase(), cluster), "{n}");
    }
}

/// The three cluster-zone expansions of each external name under the Kubernetes search list,
/// and which of them are still asked upstream.
#[test]
fn search_expansions_of_external_names() {
    let zones = zones();
    let cluster = zone(&zones, "cluster.local.");
    // (external name, forwarded expansions out of `<ns>.svc`, `svc`, bare zone)
    let table: &[(&str, [bool; 3])] = &[
        ("api.example.test", [false, true, false]),
        ("api.example.com", [false, true, false]),
        ("www.googleapis.com", [false, true, false]),
        ("sqs.us-east-1.amazonaws.com", [false, false, false]),
        ("a.b.c.d.example.org", [false, false, false]),
        ("example.com", [true, true, false]),
        // A Service in another namespace, asked as `<svc>.<ns>`: its `svc.<zone>` expansion is
        // the real name and must be forwarded.
        ("kubernetes.default", [true, true, false]),
    ];
    for (external, expected) in table {
        let expansions = [
            format!("{external}.my-ns.svc.cluster.local"),
            format!("{external}.svc.cluster.local"),
            format!("{external}.cluster.local"),
        ];
        let got = expansions.each_ref().map(|e| verdict(&name(e), cluster) == SchemaVerdict::MayExist);
        assert_eq!(&got, expected, "{external}: forwarded expansions of {expansions:?}");
    }
}

#[test]
fn multicluster_zone_allows_hostname_and_cluster_id() {
    let zones = zones();
    let clusterset = zone(&zones, "clusterset.local.");
    for n in [
        "host.cluster1.svc1.default.svc.clusterset.local",
        "_http._tcp.svc1.default.svc.clusterset.local",
        "svc1.default.svc.clusterset.local",
    ] {
        assert_eq!(verdict(&name(n), clusterset), SchemaVerdict::MayExist, "{n}");
    }
    for n in ["_host.cluster1.svc1.default.svc.clusterset.local", "api.example.com.clusterset.local"] {
        assert_eq!(verdict(&name(n), clusterset), SchemaVerdict::CannotExist, "{n}");
    }
}

#[test]
fn the_rule_is_off_for_the_root_and_reverse_zones() {
    let zones = zones();
    for (apex, n) in [
        (".", "api.example.com"),
        (".", "api.example.com.cluster.local"),
        ("in-addr.arpa.", "1.0.96.10.in-addr.arpa"),
        ("in-addr.arpa.", "in-addr.arpa"),
    ] {
        assert_eq!(verdict(&name(n), zone(&zones, apex)), SchemaVerdict::MayExist, "{n} in {apex}");
    }
}

// ----- nxdomain_answer -----

const CLIENT_NAME: &str = "API.Example.COM.Default.SVC.Cluster.Local.";

fn client_query(rtype: RecordType, edns: bool) -> Vec<u8> {
    let mut m = Message::new(0x4242, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Question::query(Name::from_ascii(CLIENT_NAME).unwrap(), rtype));
    if edns {
        let mut e = hickory_proto::op::Edns::new();
        e.set_max_payload(1232);
        m.set_edns(e);
    }
    m.to_vec().unwrap()
}

fn soa_record(owner: &str, ttl: u32, minimum: u32) -> Record {
    let soa = SOA::new(
        name("ns.dns.cluster.local"),
        name("hostmaster.cluster.local"),
        1_700_000_000,
        7200,
        1800,
        86400,
        minimum,
    );
    Record::from_rdata(name(owner), ttl, RData::SOA(soa))
}

/// The apex SOA answer as the engine caches it: ID 0, the SOA in the answer section.
fn soa_answer(record: Record, in_authority: bool) -> Vec<u8> {
    let mut m = Message::new(0, MessageType::Response, OpCode::Query);
    m.add_query(Question::query(record.name.clone(), RecordType::SOA));
    if in_authority {
        m.add_authority(record);
    } else {
        m.add_answer(record);
    }
    m.to_vec().unwrap()
}

fn parsed(packet: &[u8]) -> nodedns_wire::Query<'_> {
    match parse_query(packet) {
        Parsed::Query(q) => q,
        _ => panic!("test query does not parse"),
    }
}

#[test]
fn nxdomain_answer_is_a_cacheable_denial_with_the_zone_soa() {
    let packet = client_query(RecordType::AAAA, false);
    let query = parsed(&packet);
    let soa = soa_answer(soa_record("cluster.local", 30, 5), false);
    let answer = nxdomain_answer(&query, &soa).expect("an answer");

    // Header: QR, rcode 3, nothing else; one question, one authority record.
    assert_eq!(answer.message[2..4], [0x80, 0x03]);
    assert_eq!(answer.message[4..12], [0, 1, 0, 0, 0, 1, 0, 0]);
    // The question is the client's, lower-cased, byte for byte the same length.
    let question = query.question_wire();
    assert_eq!(answer.message[12..12 + question.len()], question.to_ascii_lowercase()[..]);

    let m = Message::from_vec(&answer.message).unwrap();
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    assert!(!m.metadata.authoritative && !m.metadata.authentic_data);
    assert!(m.answers.is_empty() && m.additionals.is_empty());
    assert_eq!(m.authorities.len(), 1);
    let auth = &m.authorities[0];
    assert_eq!(auth.name, name("cluster.local"));
    // RFC 2308 §3: the SOA's TTL is min(TTL, MINIMUM).
    assert_eq!(auth.ttl, 5);
    assert!(matches!(&auth.data, RData::SOA(s) if s.minimum == 5 && s.serial == 1_700_000_000));

    // Every record's TTL offset points at its TTL.
    assert_eq!(answer.ttl_offsets.len(), 1);
    let at = answer.ttl_offsets[0] as usize;
    assert_eq!(u32::from_be_bytes(answer.message[at..at + 4].try_into().unwrap()), 5);

    assert_eq!(
        answer.disposition,
        Disposition::Denial { nxdomain: true, soa: Some((Ttl::from_wire(5), Ttl::from_wire(5))), chain_ttl: None }
    );
}

#[test]
fn nxdomain_answer_renders_with_the_clients_case_id_and_ttl() {
    let packet = client_query(RecordType::A, true);
    let query = parsed(&packet);
    let soa = soa_answer(soa_record("cluster.local", 60, 30), false);
    let answer = nxdomain_answer(&query, &soa).expect("an answer");
    let offsets = answer.ttl_offsets_le();
    let view = AnswerView::detached(&answer.message, &offsets, 7, false);
    let mut out = [0u8; 1232];
    let len = render_cached(&query, &view, Transport::Udp { max_len: 1232 }, &mut out).expect("rendered");

    let m = Message::from_vec(&out[..len]).unwrap();
    assert_eq!(m.metadata.id, 0x4242);
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    assert!(m.metadata.recursion_desired);
    assert_eq!(m.queries[0].name().to_ascii(), CLIENT_NAME, "0x20 case restored");
    assert_eq!(m.authorities.len(), 1);
    assert_eq!(m.authorities[0].ttl, 7, "TTL patched to the entry's lifetime");
    assert!(m.edns.is_some(), "OPT added for an EDNS client");
}

#[test]
fn nxdomain_answer_accepts_an_soa_in_authority() {
    let packet = client_query(RecordType::A, false);
    let query = parsed(&packet);
    let soa = soa_answer(soa_record("cluster.local", 5, 30), true);
    let answer = nxdomain_answer(&query, &soa).expect("an answer");
    assert_eq!(
        answer.disposition,
        Disposition::Denial { nxdomain: true, soa: Some((Ttl::from_wire(5), Ttl::from_wire(30))), chain_ttl: None }
    );
}

#[test]
fn nxdomain_answer_needs_an_soa_enclosing_the_name() {
    let packet = client_query(RecordType::A, false);
    let query = parsed(&packet);
    // An SOA of another zone.
    assert!(nxdomain_answer(&query, &soa_answer(soa_record("other.test", 30, 5), false)).is_none());
    // No SOA at all.
    let mut empty = Message::new(0, MessageType::Response, OpCode::Query);
    empty.add_query(Question::query(name("cluster.local"), RecordType::SOA));
    assert!(nxdomain_answer(&query, &empty.to_vec().unwrap()).is_none());
    // Not a message.
    assert!(nxdomain_answer(&query, b"\x00\x01").is_none());
}
