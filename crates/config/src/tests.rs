use super::*;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse_with(text, "test.yaml", &|| Ok(vec!["192.0.2.53:53".parse().unwrap()]))
}

const CONTRACT: &str = r#"
listen: ["127.0.0.1:5353"]
cache:
  max_bytes: 67108864
  min_ttl_secs: 5
  max_ttl_secs: 3600
  denial_max_ttl_secs: 1800
zones:
  - name: cluster.local
    upstreams: ["10.96.0.11:53"]
    transport: tcp
    max_ttl_secs: 30
    denial_max_ttl_secs: 5
  - name: "."
    upstreams: resolv.conf
    transport: udp
admin:
  listen: "127.0.0.1:9253"
"#;

#[test]
fn the_contract_example_parses() {
    let c = parse(CONTRACT).unwrap();
    assert_eq!(c.listen, vec!["127.0.0.1:5353".parse().unwrap()]);
    assert_eq!(c.cache.max_bytes, 64 << 20);
    assert_eq!(c.zones.len(), 2);
    assert_eq!(c.zones[0].name.to_ascii(), "cluster.local.");
    assert_eq!(c.zones[0].ttl.max_ttl.secs(), 30);
    assert_eq!(c.zones[0].ttl.denial_max_ttl.secs(), 5);
    assert_eq!(c.zones[0].ttl.min_ttl.secs(), 5);
    assert_eq!(c.zones[1].upstreams, UpstreamSource::ResolvConf(vec!["192.0.2.53:53".parse().unwrap()]));
    assert_eq!(c.zones[1].transport, nodedns_upstream::Transport::Udp);
    assert_eq!(c.admin.listen, vec!["127.0.0.1:9253".parse().unwrap()]);
}

#[test]
fn embedded_default_is_valid() {
    let c = Config::parse_with(EMBEDDED_DEFAULT, "<embedded>", &|| Ok(vec!["192.0.2.1:53".parse().unwrap()])).unwrap();
    assert_eq!(c.listen, vec!["127.0.0.1:5353".parse().unwrap()]);
    assert_eq!(c.zones[0].name, Name::root());
}

#[test]
fn longest_suffix_wins() {
    let c = parse(CONTRACT).unwrap();
    let n = parse_zone_name("a.ns.svc.cluster.local").unwrap();
    assert_eq!(c.zone_index_for(&n), Some(0));
    let n = parse_zone_name("example.com").unwrap();
    assert_eq!(c.zone_index_for(&n), Some(1));
}

#[test]
fn every_problem_is_reported_with_key_and_line() {
    let text = r#"listen: ["127.0.0.1:5353", "nonsense"]
cache:
  max_bytes: 10
  min_ttl_secs: 100
  max_ttl_secs: 50
  colour: blue
zones:
  - name: cluster.local
    upstreams: ["10.96.0.11:53", "not-an-ip"]
    transprt: tcp
admin:
  listen: "127.0.0.1:9253"
"#;
    let err = parse(text).unwrap_err();
    let keys: Vec<(&str, Option<usize>)> = err.problems.iter().map(|p| (p.key.as_str(), p.line)).collect();
    assert!(keys.contains(&("cache.colour", Some(6))), "{keys:?}");
    assert!(keys.contains(&("zones[0].transprt", Some(10))), "{keys:?}");
    assert!(keys.contains(&("cache.max_bytes", Some(3))), "{keys:?}");
    assert!(keys.contains(&("cache.max_ttl_secs", Some(5))), "{keys:?}");
    assert!(keys.contains(&("listen[1]", Some(1))), "{keys:?}");
    assert!(keys.contains(&("zones[0].upstreams[1]", Some(9))), "{keys:?}");
    let shown = err.to_string();
    assert!(shown.contains("test.yaml:6: cache.colour: unknown key"), "{shown}");
}

#[test]
fn every_fixture_rejects_an_injected_unknown_key() {
    for (section, line) in [("cache", "  bogus_key: 1"), ("admin", "  bogus_key: 1")] {
        let text = CONTRACT.replace(&format!("{section}:\n"), &format!("{section}:\n{line}\n"));
        let err = parse(&text).unwrap_err();
        assert!(err.problems.iter().any(|p| p.key == format!("{section}.bogus_key")), "{err}");
    }
    let err = parse(&format!("{CONTRACT}\nwhatever: 1\n")).unwrap_err();
    assert!(err.problems.iter().any(|p| p.key == "whatever"));
}

#[test]
fn syntax_and_type_errors_name_the_line() {
    let err = parse("listen: [\"127.0.0.1:5353\"]\ncache:\n  max_bytes: lots\n").unwrap_err();
    assert_eq!(err.problems.len(), 1);
    assert_eq!(err.problems[0].line, Some(3), "{err}");
    let err = parse("zones:\n  - name: a\n    transport: carrier-pigeon\n").unwrap_err();
    assert!(err.to_string().contains("carrier-pigeon"), "{err}");
}

#[test]
fn forwarding_to_ourselves_is_refused() {
    let text = "listen: [\"127.0.0.1:53\"]\nzones:\n  - name: \".\"\n    upstreams: [\"127.0.0.1:53\"]\n";
    let err = parse(text).unwrap_err();
    assert!(err.to_string().contains("forwarding loop"), "{err}");
}

#[test]
fn zones_need_upstreams_and_unique_names() {
    let text = "listen: [\"127.0.0.1:5353\"]\nzones:\n  - name: a\n    upstreams: []\n  - name: A.\n    upstreams: [\"10.0.0.1\"]\n";
    let err = parse(text).unwrap_err();
    let s = err.to_string();
    assert!(s.contains("zones[0].upstreams: at least one upstream"), "{s}");
    assert!(s.contains("defined twice"), "{s}");
}

#[test]
fn node_addresses_become_listeners_on_port_53() {
    let text = "zones:\n  - name: \".\"\n    upstreams: [\"10.0.0.1\"]\nnode:\n  interface_kind: bridge\n  addresses: [\"169.254.20.10\", \"fd00::10\"]\n";
    let c = parse(text).unwrap();
    assert_eq!(c.listen, vec!["169.254.20.10:53".parse::<SocketAddr>().unwrap(), "[fd00::10]:53".parse().unwrap()]);
    let n = c.node.unwrap();
    assert_eq!(n.interface, "nodelocaldns");
    assert_eq!(n.interface_kind, nodedns_node::InterfaceKind::Bridge);
    assert!(n.teardown_on_exit);
}

#[test]
fn empty_file_says_what_is_missing() {
    let err = parse("# nothing\n").unwrap_err();
    let s = err.to_string();
    assert!(s.contains("zones"), "{s}");
    assert!(s.contains("listen"), "{s}");
}

#[test]
fn kubernetes_schema_only_on_cluster_domains() {
    let text = "listen: [\"127.0.0.1:5353\"]\nzones:\n  - name: \".\"\n    upstreams: [\"10.0.0.1\"]\n    kubernetes_schema: true\n  - name: cluster.local\n    upstreams: [\"10.0.0.1\"]\n    kubernetes_schema: true\n    schema_exceptions: [\"custom.cluster.local\", \"other.example\"]\n";
    let err = parse(text).unwrap_err().to_string();
    assert!(err.contains("zones[0].kubernetes_schema"), "{err}");
    assert!(err.contains("zones[1].schema_exceptions[1]"), "{err}");
    assert!(!err.contains("schema_exceptions[0]"), "{err}");
}

/// A minimal valid file, for tests of one section appended to it.
const BASE: &str = "listen: [\"127.0.0.1:5353\"]\nzones:\n  - name: \".\"\n    upstreams: [\"192.0.2.1\"]\n";
const BASE_LINES: usize = 4;

fn with_base(section: &str) -> String {
    format!("{BASE}{section}")
}

#[test]
fn dnstap_takes_a_socket_or_a_file() {
    let c = parse(&with_base("log:\n  dnstap:\n    socket: /run/nodedns/dnstap.sock\n")).unwrap();
    assert_eq!(
        c.log.dnstap,
        Some(DnstapConfig { target: DnstapTarget::Socket("/run/nodedns/dnstap.sock".into()), identity: None })
    );
    let c = parse(&with_base("log:\n  dnstap:\n    file: /var/log/nodedns.dnstap\n    identity: node-1\n")).unwrap();
    assert_eq!(
        c.log.dnstap,
        Some(DnstapConfig {
            target: DnstapTarget::File("/var/log/nodedns.dnstap".into()),
            identity: Some("node-1".into())
        })
    );
    assert_eq!(parse(&with_base("log:\n  level: info\n")).unwrap().log.dnstap, None);
}

#[test]
fn dnstap_problems_name_line_and_key() {
    let cases: &[(&str, &str, usize)] = &[
        ("log:\n  dnstap:\n    socket: /a.sock\n    file: /b\n", "log.dnstap", 2),
        ("log:\n  dnstap:\n    identity: x\n", "log.dnstap", 2),
        ("log:\n  dnstap:\n    socket: relative.sock\n", "log.dnstap.socket", 3),
        ("log:\n  dnstap:\n    file: \"\"\n", "log.dnstap.file", 3),
        ("log:\n  level: info\n  dnstap:\n    file: /x\n    identity: \" \"\n", "log.dnstap.identity", 5),
        ("log:\n  dnstap:\n    sockt: /a.sock\n", "log.dnstap.sockt", 3),
    ];
    for (text, key, line) in cases {
        let err = parse(&with_base(text)).unwrap_err();
        assert!(
            err.problems.iter().any(|p| p.key == *key && p.line == Some(*line + BASE_LINES)),
            "{text}: {:?}",
            err.problems
        );
    }
    let long = format!("log:\n  dnstap:\n    socket: /{}\n", "s".repeat(120));
    let err = parse(&with_base(&long)).unwrap_err();
    assert!(err.problems.iter().any(|p| p.key == "log.dnstap.socket" && p.message.contains("107")), "{err:?}");
}
