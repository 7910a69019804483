use super::*;

/// Every key set, each to a value no other line has, so one line's edit changes one key.
const BASE: &str = r#"listen: ["127.0.0.1:5353"]
cache:
  max_bytes: 67108864
  min_ttl_secs: 5
  max_ttl_secs: 3600
  denial_max_ttl_secs: 1800
  max_stale_secs: 3601
  stale_answer_timeout_ms: 400
  prefetch: true
  failure_max_ttl_secs: 31
  pair_wait_ms: 300
zones:
  - name: cluster.local
    upstreams: ["10.96.0.11:53"]
    transport: tcp
    min_ttl_secs: 6
    max_ttl_secs: 32
    denial_max_ttl_secs: 7
    tcp_connections: 3
    query_timeout_ms: 1001
    query_budget_ms: 2501
    discover: kube-dns-upstream.kube-system.svc.cluster.local
    discover_interval_secs: 33
    kubernetes_schema: true
    schema_exceptions: ["custom.cluster.local"]
  - name: "."
    upstreams: ["192.0.2.1"]
    transport: udp
    min_ttl_secs: 8
    max_ttl_secs: 60
    denial_max_ttl_secs: 9
admin:
  listen: "127.0.0.1:9253"
  coredns_compatible_metrics: false
node:
  interface: nodelocaldns
  interface_kind: dummy
  addresses: ["169.254.20.10"]
  firewall: auto
  resync_interval_secs: 61
  teardown_on_exit: true
  dns_port: 53
limits:
  max_inflight: 10001
  max_tcp_connections: 10002
  max_tcp_connections_per_client: 256
  max_pipelined_per_connection: 128
  tcp_idle_timeout_secs: 10
  max_udp_payload_bytes: 1232
  per_client_qps: 0
  max_upstream_inflight: 1000
  upstream_queue_wait_ms: 100
kube_dns_configmap:
  path: /etc/kube-dns
  reload_interval_secs: 11
  transport: udp
log:
  format: text
  level: info
  queries_sample_rate: 0.0
  dnstap:
    socket: /run/nodedns/dnstap.sock
    identity: node-1
server:
  workers: 2
  drain_timeout_secs: 12
  handover_socket: /run/nodedns/handover.sock
"#;

const LIVE: Applies = Applies::Live;
const RESTART: Applies = Applies::Restart;

/// One row per key of the config reference: the key, how the contract applies it, the line as
/// in `BASE` and as edited.
const EVERY_KEY: &[(&str, Applies, &str, &str)] = &[
    ("listen", RESTART, r#"listen: ["127.0.0.1:5353"]"#, r#"listen: ["127.0.0.1:5354"]"#),
    ("cache.max_bytes", RESTART, "  max_bytes: 67108864", "  max_bytes: 33554432"),
    ("cache.min_ttl_secs", LIVE, "  min_ttl_secs: 5", "  min_ttl_secs: 4"),
    ("cache.max_ttl_secs", LIVE, "  max_ttl_secs: 3600", "  max_ttl_secs: 300"),
    ("cache.denial_max_ttl_secs", LIVE, "  denial_max_ttl_secs: 1800", "  denial_max_ttl_secs: 60"),
    ("cache.max_stale_secs", LIVE, "  max_stale_secs: 3601", "  max_stale_secs: 0"),
    ("cache.stale_answer_timeout_ms", LIVE, "  stale_answer_timeout_ms: 400", "  stale_answer_timeout_ms: 200"),
    ("cache.prefetch", LIVE, "  prefetch: true", "  prefetch: false"),
    ("cache.failure_max_ttl_secs", LIVE, "  failure_max_ttl_secs: 31", "  failure_max_ttl_secs: 5"),
    ("cache.pair_wait_ms", LIVE, "  pair_wait_ms: 300", "  pair_wait_ms: 0"),
    (
        r#"zones["cluster.local."].upstreams"#,
        LIVE,
        r#"    upstreams: ["10.96.0.11:53"]"#,
        r#"    upstreams: ["10.96.0.12"]"#,
    ),
    (r#"zones["cluster.local."].transport"#, LIVE, "    transport: tcp", "    transport: udp"),
    (r#"zones["cluster.local."].min_ttl_secs"#, LIVE, "    min_ttl_secs: 6", "    min_ttl_secs: 1"),
    (r#"zones["cluster.local."].max_ttl_secs"#, LIVE, "    max_ttl_secs: 32", "    max_ttl_secs: 10"),
    (
        r#"zones["cluster.local."].denial_max_ttl_secs"#,
        LIVE,
        "    denial_max_ttl_secs: 7",
        "    denial_max_ttl_secs: 70",
    ),
    (r#"zones["cluster.local."].tcp_connections"#, LIVE, "    tcp_connections: 3", "    tcp_connections: 4"),
    (r#"zones["cluster.local."].query_timeout_ms"#, LIVE, "    query_timeout_ms: 1001", "    query_timeout_ms: 500"),
    (r#"zones["cluster.local."].query_budget_ms"#, LIVE, "    query_budget_ms: 2501", "    query_budget_ms: 1500"),
    (
        r#"zones["cluster.local."].discover"#,
        LIVE,
        "    discover: kube-dns-upstream.kube-system.svc.cluster.local",
        "    discover: other.kube-system.svc.cluster.local",
    ),
    (
        r#"zones["cluster.local."].discover_interval_secs"#,
        LIVE,
        "    discover_interval_secs: 33",
        "    discover_interval_secs: 5",
    ),
    (
        r#"zones["cluster.local."].kubernetes_schema"#,
        LIVE,
        "    kubernetes_schema: true",
        "    kubernetes_schema: false",
    ),
    (
        r#"zones["cluster.local."].schema_exceptions"#,
        LIVE,
        r#"    schema_exceptions: ["custom.cluster.local"]"#,
        r#"    schema_exceptions: []"#,
    ),
    (r#"zones["."].upstreams"#, LIVE, r#"    upstreams: ["192.0.2.1"]"#, r#"    upstreams: ["192.0.2.2"]"#),
    (r#"zones["."].max_ttl_secs"#, LIVE, "    max_ttl_secs: 60", "    max_ttl_secs: 61"),
    ("admin.listen", RESTART, r#"  listen: "127.0.0.1:9253""#, r#"  listen: "127.0.0.1:9254""#),
    (
        "admin.coredns_compatible_metrics",
        RESTART,
        "  coredns_compatible_metrics: false",
        "  coredns_compatible_metrics: true",
    ),
    ("node.interface", RESTART, "  interface: nodelocaldns", "  interface: nodedns0"),
    ("node.interface_kind", RESTART, "  interface_kind: dummy", "  interface_kind: bridge"),
    ("node.addresses", RESTART, r#"  addresses: ["169.254.20.10"]"#, r#"  addresses: ["169.254.20.11"]"#),
    ("node.firewall", RESTART, "  firewall: auto", "  firewall: nftables"),
    ("node.resync_interval_secs", RESTART, "  resync_interval_secs: 61", "  resync_interval_secs: 30"),
    ("node.teardown_on_exit", RESTART, "  teardown_on_exit: true", "  teardown_on_exit: false"),
    ("node.dns_port", RESTART, "  dns_port: 53", "  dns_port: 5300"),
    ("limits.max_inflight", LIVE, "  max_inflight: 10001", "  max_inflight: 500"),
    ("limits.max_tcp_connections", RESTART, "  max_tcp_connections: 10002", "  max_tcp_connections: 500"),
    (
        "limits.max_tcp_connections_per_client",
        RESTART,
        "  max_tcp_connections_per_client: 256",
        "  max_tcp_connections_per_client: 16",
    ),
    (
        "limits.max_pipelined_per_connection",
        RESTART,
        "  max_pipelined_per_connection: 128",
        "  max_pipelined_per_connection: 8",
    ),
    ("limits.tcp_idle_timeout_secs", RESTART, "  tcp_idle_timeout_secs: 10", "  tcp_idle_timeout_secs: 20"),
    ("limits.max_udp_payload_bytes", LIVE, "  max_udp_payload_bytes: 1232", "  max_udp_payload_bytes: 512"),
    ("limits.per_client_qps", RESTART, "  per_client_qps: 0", "  per_client_qps: 100"),
    ("limits.max_upstream_inflight", RESTART, "  max_upstream_inflight: 1000", "  max_upstream_inflight: 10"),
    ("limits.upstream_queue_wait_ms", RESTART, "  upstream_queue_wait_ms: 100", "  upstream_queue_wait_ms: 0"),
    ("kube_dns_configmap.path", LIVE, "  path: /etc/kube-dns", "  path: /etc/kube-dns-2"),
    ("kube_dns_configmap.reload_interval_secs", LIVE, "  reload_interval_secs: 11", "  reload_interval_secs: 60"),
    ("kube_dns_configmap.transport", LIVE, "  transport: udp", "  transport: tcp"),
    ("log.format", RESTART, "  format: text", "  format: json"),
    ("log.level", LIVE, "  level: info", "  level: debug"),
    ("log.queries_sample_rate", LIVE, "  queries_sample_rate: 0.0", "  queries_sample_rate: 0.5"),
    ("log.dnstap", RESTART, "    socket: /run/nodedns/dnstap.sock", "    file: /var/log/nodedns.dnstap"),
    ("log.dnstap", RESTART, "    identity: node-1", "    identity: node-2"),
    ("server.workers", RESTART, "  workers: 2", "  workers: 3"),
    ("server.drain_timeout_secs", LIVE, "  drain_timeout_secs: 12", "  drain_timeout_secs: 30"),
    (
        "server.handover_socket",
        RESTART,
        "  handover_socket: /run/nodedns/handover.sock",
        "  handover_socket: /run/x.sock",
    ),
];

fn parse(text: &str) -> Config {
    Config::parse_with(text, "test.yaml", &|| Ok(vec!["192.0.2.53:53".parse().unwrap()]))
        .unwrap_or_else(|e| panic!("{e}\n{text}"))
}

/// `BASE` with the one line `from` replaced by `to` (or removed when `to` is empty).
fn edited(from: &str, to: &str) -> String {
    let lines: Vec<&str> = BASE.lines().collect();
    assert_eq!(lines.iter().filter(|l| **l == from).count(), 1, "`{from}` must be exactly one line of BASE");
    let mut out = String::new();
    for l in lines {
        let l = if l == from { to } else { l };
        if !l.is_empty() {
            out.push_str(l);
            out.push('\n');
        }
    }
    out
}

fn change(key: &str, applies: Applies) -> KeyChange {
    KeyChange { key: key.to_string(), applies }
}

#[test]
fn identical_configs_change_nothing() {
    assert_eq!(classify(&parse(BASE), &parse(BASE), &CliOverrides::default()), vec![]);
}

#[test]
fn each_key_alone_is_classified_as_the_contract_says() {
    let base = parse(BASE);
    for (key, applies, from, to) in EVERY_KEY {
        let next = parse(&edited(from, to));
        assert_eq!(classify(&base, &next, &CliOverrides::default()), vec![change(key, *applies)], "{from} → {to}");
        // And back: the direction does not matter.
        assert_eq!(classify(&next, &base, &CliOverrides::default()), vec![change(key, *applies)], "{to} → {from}");
    }
}

#[test]
fn optional_sections_gained_or_lost_are_one_key() {
    let base = parse(BASE);
    let cut = |section: &str| {
        let mut out = String::new();
        let mut skipping = false;
        for l in BASE.lines() {
            if l == format!("{section}:") || (skipping && l.starts_with(' ')) {
                skipping = true;
                continue;
            }
            skipping = false;
            out.push_str(l);
            out.push('\n');
        }
        out
    };
    for (section, key, applies) in [
        ("node", "node", RESTART),
        ("kube_dns_configmap", "kube_dns_configmap", LIVE),
        ("  dnstap", "log.dnstap", RESTART),
    ] {
        let without = parse(&cut(section));
        assert_eq!(classify(&base, &without, &CliOverrides::default()), vec![change(key, applies)], "{section} lost");
        assert_eq!(classify(&without, &base, &CliOverrides::default()), vec![change(key, applies)], "{section} gained");
    }
}

#[test]
fn zones_added_removed_or_renamed_are_named_by_name() {
    let base = parse(BASE);
    let extra = BASE.replace("admin:\n", "  - name: acme.local\n    upstreams: [\"192.0.2.9\"]\nadmin:\n");
    let added = parse(&extra);
    let none = CliOverrides::default();
    assert_eq!(classify(&base, &added, &none), vec![change(r#"zones["acme.local."]"#, LIVE)]);
    assert_eq!(classify(&added, &base, &none), vec![change(r#"zones["acme.local."]"#, LIVE)]);
    let renamed =
        parse(&BASE.replace("  - name: cluster.local\n", "  - name: cluster.example\n").replace(
            "schema_exceptions: [\"custom.cluster.local\"]",
            "schema_exceptions: [\"custom.cluster.example\"]",
        ));
    assert_eq!(
        classify(&base, &renamed, &none),
        vec![change(r#"zones["cluster.local."]"#, LIVE), change(r#"zones["cluster.example."]"#, LIVE)]
    );
}

#[test]
fn several_keys_are_all_named() {
    let base = parse(BASE);
    let next = parse(&edited("  workers: 2", "  workers: 3").replace("  level: info\n", "  level: warn\n"));
    let changes = classify(&base, &next, &CliOverrides::default());
    assert_eq!(changes, vec![change("log.level", LIVE), change("server.workers", RESTART)]);
    assert_eq!(restart_keys(&changes), vec!["server.workers"]);
}

#[test]
fn admin_listen_overridden_on_the_command_line_is_never_reported() {
    let overrides = CliOverrides { admin_listen: Some(vec!["10.0.0.1:9253".parse().unwrap()]) };
    let mut base = parse(BASE);
    overrides.apply(&mut base);
    assert_eq!(base.admin.listen, overrides.admin_listen.clone().unwrap());
    // The file's admin.listen changes: with the override re-applied or not, nothing to report.
    let mut next = parse(&edited(r#"  listen: "127.0.0.1:9253""#, r#"  listen: "127.0.0.1:9254""#));
    assert_eq!(classify(&base, &next, &overrides), vec![]);
    overrides.apply(&mut next);
    assert_eq!(classify(&base, &next, &overrides), vec![]);
    assert_eq!(next, base, "the override makes the reloaded config the one in force");
    // Other keys are still reported.
    let mut next = parse(&edited("  format: text", "  format: json"));
    overrides.apply(&mut next);
    assert_eq!(classify(&base, &next, &overrides), vec![change("log.format", RESTART)]);
    // Without the override, the same edit is a restart key.
    let next = parse(&edited(r#"  listen: "127.0.0.1:9253""#, r#"  listen: "127.0.0.1:9254""#));
    assert_eq!(classify(&parse(BASE), &next, &CliOverrides::default()), vec![change("admin.listen", RESTART)]);
}

/// The README's config reference lists every key with its default; each must have its row above
/// (dnstap's sub-keys are the one key `log.dnstap`, a zone's `name` is what zones are matched by).
#[test]
fn every_key_of_the_readme_reference_is_in_the_table() {
    let readme = include_str!("../../../../README.md");
    let section = &readme[readme.find("## Configuration").expect("README has a Configuration section")..];
    let block = section.split("```yaml\n").nth(1).and_then(|b| b.split("```").next()).expect("a yaml block");
    let mut stack: Vec<(usize, String)> = Vec::new();
    let mut documented = Vec::new();
    for line in block.lines() {
        let body = line.trim_start();
        if body.is_empty() || body.starts_with('#') {
            continue;
        }
        let item = body.strip_prefix("- ");
        let indent = line.len() - body.len() + if item.is_some() { 2 } else { 0 };
        let Some((key, value)) = item.unwrap_or(body).split_once(':') else { continue };
        stack.retain(|(i, _)| *i < indent);
        let value = value.split(" #").next().unwrap_or("").trim();
        let parent: Vec<&str> = stack.iter().map(|(_, k)| k.as_str()).collect();
        let path = if parent.is_empty() { key.to_string() } else { format!("{}.{key}", parent.join(".")) };
        if value.is_empty() {
            stack.push((indent, key.to_string()));
        } else {
            documented.push(path.replacen("zones.", "zones[].", 1));
        }
    }
    assert!(documented.len() > 40, "{documented:?}");
    let tabled: Vec<String> = EVERY_KEY
        .iter()
        .map(|(k, ..)| match k.split_once("].") {
            Some((_, rest)) if k.starts_with("zones[") => format!("zones[].{rest}"),
            _ => k.to_string(),
        })
        .collect();
    for key in documented {
        let key = if key.starts_with("log.dnstap.") { "log.dnstap".to_string() } else { key };
        assert!(key == "zones[].name" || tabled.contains(&key), "README key `{key}` has no row in EVERY_KEY");
    }
}
