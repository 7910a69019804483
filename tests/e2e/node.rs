//! Issue #3 (node integration), end to end: the real binary in a network-namespace lab (see
//! `node/lab.rs`) with glibc and dig clients in a pod namespace, knotd as kube-dns and as the
//! upstream, and a stand-in kube-proxy DNAT for the ClusterIPs.
//!
//! Needs root and the lab tools (knot, bind9-dnsutils, iproute2, iptables, nftables,
//! conntrack, curl, util-linux's setpriv); skipped with a message otherwise.
//!
//! Run: `cargo build -p nodedns && cargo test -p nodedns-e2e --test node`.

#[path = "node/lab.rs"]
mod lab;

use std::time::{Duration, Instant};

use lab::{
    CLUSTER_IP, CLUSTER_IP6, KubeProxy, LINK_LOCAL, LINK_LOCAL6, Lab, NodeConfig, NodeDaemon, UPSTREAM, ns_ok, ns_sh,
};

const REQUESTS: &str = "nodedns_requests_total";

/// Skips (returns `None`) where the lab cannot run.
fn lab(kube_proxy: KubeProxy) -> Option<Lab> {
    if let Some(why) = lab::unavailable() {
        eprintln!("SKIP: {why}");
        return None;
    }
    Some(Lab::new(kube_proxy))
}

/// Polls `f` every 50 ms until it returns true; returns the time it took, or `None` past `limit`.
fn time_until(limit: Duration, mut f: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if f() {
            return Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

/// `getent ahosts NAME` in the pod (glibc: A and AAAA in parallel over one socket).
fn pod_getent(lab: &Lab, name: &str) -> String {
    let out = ns_sh(&lab.pod, &format!("getent ahosts {name}"));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Counts our firewall rules: nft `notrack`/`accept` rules in `inet nodedns`, or iptables
/// `-A NODEDNS-*` rules plus jumps to them in `save` (e.g. `iptables-legacy-save`).
fn nft_rules(lab: &Lab) -> usize {
    let out = ns_sh(&lab.node, "nft list table inet nodedns");
    String::from_utf8_lossy(&out.stdout).lines().filter(|l| l.contains(" notrack") || l.ends_with(" accept")).count()
}

fn ipt_rules(lab: &Lab, save: &str) -> (usize, usize) {
    let text = ns_ok(&lab.node, &format!("{save} -t raw; {save} -t filter"));
    let rules = text.lines().filter(|l| l.starts_with("-A NODEDNS-")).count();
    let jumps = text.lines().filter(|l| !l.starts_with("-A NODEDNS-") && l.contains("-j NODEDNS-")).count();
    (rules, jumps)
}

fn interface_present(lab: &Lab) -> bool {
    ns_ok(&lab.node, "ip -o link").contains("nodelocaldns")
}

/// Conntrack entries for port 53 to any of `addrs` (an entry keeps the original destination
/// even when DNATed).
fn dns_entries_to(conntrack: &str, addrs: &[&str]) -> Vec<String> {
    conntrack
        .lines()
        .filter(|l| l.contains("dport=53 ") && addrs.iter().any(|a| l.contains(&format!("dst={a} "))))
        .map(str::to_owned)
        .collect()
}

// 1. glibc getent through nodedns ------------------------------------------------------------

#[test]
fn getent_ahosts_from_pod_resolves_cluster_names_through_nodedns() {
    let Some(lab) = lab(KubeProxy::IptablesNft) else { return };
    let d = NodeDaemon::start(&lab, &NodeConfig::new("nftables", &[LINK_LOCAL, CLUSTER_IP]));
    for (i, server) in [LINK_LOCAL, CLUSTER_IP].into_iter().enumerate() {
        lab.pod_resolv(server);
        let before = d.metric(REQUESTS, &[]);
        let name = format!("svc{i}.default.svc.cluster.local");
        let got = pod_getent(&lab, &name);
        assert!(got.contains(&format!("10.0.0.{} ", i + 1)), "getent via {server}: {got:?}");
        assert!(got.contains(&format!("fd00::{} ", i + 1)), "getent via {server}: {got:?}");
        // Both members of the parallel pair were answered by nodedns, not by kube-dns.
        let counted = d.metric(REQUESTS, &[]) - before;
        assert!(counted >= 2.0, "nodedns counted {counted} requests for getent via {server}");
        assert_eq!(lab.pod_whoami(server, false), "upstream", "answered via nodedns, not kube-proxy");
    }
}

// 2. no conntrack ---------------------------------------------------------------------------

fn no_conntrack_after_1000_pod_queries(firewall: &'static str) {
    let Some(lab) = lab(KubeProxy::IptablesNft) else { return };
    let d = NodeDaemon::start(&lab, &NodeConfig::new(firewall, &[LINK_LOCAL, CLUSTER_IP]));
    // 1,000 queries, each from a fresh UDP socket (dig batch mode): half to each address, over
    // 10 names x A/AAAA, so mostly cache hits after the first 20.
    let mut batch = String::new();
    for i in 0..1000 {
        let server = if i % 2 == 0 { LINK_LOCAL } else { CLUSTER_IP };
        let qtype = if i % 4 < 2 { "A" } else { "AAAA" };
        batch += &format!("@{server} svc{}.default.svc.cluster.local {qtype}\n", (i / 4) % 10);
    }
    let file = lab.dir.join("batch.txt");
    std::fs::write(&file, batch).unwrap();
    let before = d.metric(REQUESTS, &[]);
    let started = Instant::now();
    let out = ns_sh(&lab.pod, &format!("dig +short +time=1 +tries=1 -f {}", file.display()));
    let answers = String::from_utf8_lossy(&out.stdout).lines().filter(|l| !l.starts_with(';')).count();
    eprintln!("1000 pod queries in {:?}", started.elapsed());
    assert_eq!(answers, 1000, "every query answered: {}", String::from_utf8_lossy(&out.stderr));
    assert!(d.metric(REQUESTS, &[]) - before >= 1000.0, "all 1000 went through nodedns");

    let ct = lab.conntrack();
    let ours = dns_entries_to(&ct, &[LINK_LOCAL, CLUSTER_IP]);
    assert!(ours.is_empty(), "{} conntrack entries for our addresses, e.g. {:?}", ours.len(), ours.first());
    let upstream_tcp = ct.lines().filter(|l| l.starts_with("tcp") && l.contains(&format!("dst={UPSTREAM} "))).count();
    let upstream_udp = ct.lines().filter(|l| l.starts_with("udp") && l.contains(&format!("dst={UPSTREAM} "))).count();
    assert_eq!((upstream_tcp, upstream_udp), (2, 0), "toward the upstream only the pool's 2 TCP connections:\n{ct}");
}

#[test]
fn no_conntrack_for_1000_pod_queries_nftables() {
    no_conntrack_after_1000_pod_queries("nftables");
}

#[test]
fn no_conntrack_for_1000_pod_queries_iptables() {
    no_conntrack_after_1000_pod_queries("iptables");
}

// 3. firewall rule lifecycle, both backends --------------------------------------------------

#[test]
fn nftables_rules_present_restored_never_duplicated_and_removed() {
    let Some(lab) = lab(KubeProxy::IptablesNft) else { return };
    let config = NodeConfig::new("nftables", &[LINK_LOCAL, CLUSTER_IP]);
    let mut d = NodeDaemon::start(&lab, &config);
    // 2 addresses x (udp, tcp) x 4 chains + host-lease rules: (udp, tcp) x (request, reply).
    let expected = 2 * 2 * 4 + 2 * 2;
    assert_eq!(nft_rules(&lab), expected);

    let repairs = d.metric("nodedns_node_repairs_total", &[]);
    ns_ok(&lab.node, "nft delete table inet nodedns");
    let took = time_until(Duration::from_millis(2500), || nft_rules(&lab) == expected)
        .expect("table restored within one resync (1 s) + margin");
    eprintln!("nftables table restored after {took:?}");
    assert!(d.metric("nodedns_node_repairs_total", &[]) > repairs, "the repair is counted");
    assert_eq!(lab.pod_whoami(CLUSTER_IP, false), "upstream");

    // Several resyncs and a restart over leftover rules (SIGKILL) never duplicate anything.
    std::thread::sleep(Duration::from_millis(2200));
    d.kill();
    let d2 = NodeDaemon::start(&lab, &config);
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(nft_rules(&lab), expected);
    assert_eq!(ns_ok(&lab.node, "nft list tables").matches("table inet nodedns").count(), 1);
    drop(d);

    let mut d2 = d2;
    assert_eq!(d2.terminate(), Some(0), "clean exit; log:\n{}", d2.log());
    assert!(!ns_ok(&lab.node, "nft list tables").contains("nodedns"), "table removed on SIGTERM");
    assert!(!interface_present(&lab), "interface removed on SIGTERM");
    // kube-proxy's rules are left alone.
    assert!(ns_ok(&lab.node, "iptables-nft-save -t nat").contains("--to-destination 10.244.1.2:53"));
}

#[test]
fn iptables_rules_follow_kube_proxys_variant_restored_never_duplicated_and_removed() {
    // kube-proxy on legacy iptables while the unsuffixed `iptables` here is nf_tables: our
    // rules must land next to kube-proxy's.
    let Some(lab) = lab(KubeProxy::IptablesLegacy) else { return };
    let config = NodeConfig::new("iptables", &[LINK_LOCAL, CLUSTER_IP]);
    let mut d = NodeDaemon::start(&lab, &config);
    // Per address: (udp, tcp) x (2 chains in raw + 2 in filter); 4 jumps.
    let expected = (2 * 2 * 4, 4);
    assert_eq!(ipt_rules(&lab, "iptables-legacy-save"), expected);
    assert_eq!(ipt_rules(&lab, "iptables-nft-save"), (0, 0), "nothing in the variant kube-proxy does not use");
    let log = d.log();
    let variant_line = log.lines().find(|l| l.contains("iptables variant")).unwrap_or_default();
    assert!(variant_line.contains("legacy"), "{log}");

    let repairs = d.metric("nodedns_node_repairs_total", &[]);
    ns_ok(&lab.node, "iptables-legacy -t raw -F NODEDNS-PREROUTING");
    let took = time_until(Duration::from_millis(2500), || ipt_rules(&lab, "iptables-legacy-save") == expected)
        .expect("chain restored within one resync (1 s) + margin");
    eprintln!("iptables chain restored after {took:?}");
    assert!(d.metric("nodedns_node_repairs_total", &[]) > repairs, "the repair is counted");
    // A deleted jump too.
    ns_ok(&lab.node, "iptables-legacy -t filter -D INPUT -m comment --comment nodedns -j NODEDNS-INPUT");
    time_until(Duration::from_millis(2500), || ipt_rules(&lab, "iptables-legacy-save") == expected)
        .expect("jump restored");

    std::thread::sleep(Duration::from_millis(2200));
    d.kill();
    let mut d2 = NodeDaemon::start(&lab, &config);
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(ipt_rules(&lab, "iptables-legacy-save"), expected, "never duplicated");
    assert_eq!(lab.pod_whoami(CLUSTER_IP, true), "upstream");

    assert_eq!(d2.terminate(), Some(0), "clean exit; log:\n{}", d2.log());
    assert_eq!(ipt_rules(&lab, "iptables-legacy-save"), (0, 0), "rules removed on SIGTERM");
    assert_eq!(ipt_rules(&lab, "iptables-nft-save"), (0, 0));
    assert!(!interface_present(&lab), "interface removed on SIGTERM");
    assert!(ns_ok(&lab.node, "iptables-legacy-save -t nat").contains("--to-destination 10.244.1.2:53"));
    // With nodedns gone, the ClusterIP is kube-dns again.
    assert_eq!(lab.pod_whoami(CLUSTER_IP, false), "kube-dns");
}

// 4. fail-open on SIGKILL, takeover on restart ----------------------------------------------

fn sigkill_fails_open(firewall: &'static str, kube_proxy: KubeProxy) {
    let Some(lab) = lab(kube_proxy) else { return };
    let config = NodeConfig::new(firewall, &[LINK_LOCAL, CLUSTER_IP]);
    let mut d = NodeDaemon::start(&lab, &config);
    assert_eq!(lab.pod_whoami(CLUSTER_IP, false), "upstream");
    assert_eq!(lab.pod_whoami(CLUSTER_IP, true), "upstream");

    d.kill();
    let killed = Instant::now();
    let udp = time_until(Duration::from_secs(3), || lab.pod_whoami(CLUSTER_IP, false) == "kube-dns");
    let udp = udp.expect("pod UDP queries to the ClusterIP answered by kube-dns after SIGKILL");
    let tcp = time_until(Duration::from_secs(3), || lab.pod_whoami(CLUSTER_IP, true) == "kube-dns");
    tcp.expect("pod TCP queries to the ClusterIP answered by kube-dns after SIGKILL");
    eprintln!("{firewall}: pod fail-open after SIGKILL: UDP {udp:?}, UDP+TCP {:?}", killed.elapsed());
    assert!(udp < Duration::from_secs(2), "fail-open took {udp:?}");

    let restarted = Instant::now();
    let d2 = NodeDaemon::start(&lab, &config);
    let before = d2.metric(REQUESTS, &[]);
    let back = time_until(Duration::from_secs(3), || lab.pod_whoami(CLUSTER_IP, false) == "upstream")
        .expect("traffic returns to nodedns after restart");
    assert_eq!(lab.pod_whoami(CLUSTER_IP, true), "upstream");
    assert!(d2.metric(REQUESTS, &[]) - before >= 2.0, "the restarted nodedns counts the queries");
    eprintln!("{firewall}: back on nodedns {:?} after restart (ready + {back:?})", restarted.elapsed());
}

#[test]
fn sigkill_fails_open_to_kube_dns_and_restart_takes_over_nftables() {
    sigkill_fails_open("nftables", KubeProxy::IptablesNft);
}

#[test]
fn sigkill_fails_open_to_kube_dns_and_restart_takes_over_iptables() {
    sigkill_fails_open("iptables", KubeProxy::IptablesLegacy);
}

/// ClusterIP takeover with kube-proxy in nftables mode: `firewall: auto` picks nftables, the
/// NOTRACKed packets skip kube-proxy's nat chains and its `ct state new` checks (the reject of
/// un-DNATed ClusterIP traffic included), and SIGKILL fails open to its DNAT.
#[test]
fn clusterip_takeover_with_kube_proxy_in_nftables_mode() {
    let Some(lab) = lab(KubeProxy::Nftables) else { return };
    assert_eq!(lab.pod_whoami(CLUSTER_IP, false), "kube-dns", "the stand-in kube-proxy DNATs");
    // That query's entry is kube-proxy's, not a sign of nodedns traffic being tracked.
    ns_ok(&lab.node, "conntrack -F 2>/dev/null");
    let config = NodeConfig::new("auto", &[LINK_LOCAL, CLUSTER_IP, LINK_LOCAL6, CLUSTER_IP6]);
    let d = NodeDaemon::start(&lab, &config);
    assert!(d.log().contains("Nftables"), "auto must pick nftables next to kube-proxy's tables:\n{}", d.log());
    for ip in [CLUSTER_IP, CLUSTER_IP6] {
        for tcp in [false, true] {
            assert_eq!(lab.pod_whoami(ip, tcp), "upstream", "pod → {ip} (tcp: {tcp}) answered by nodedns");
        }
        assert_eq!(lab.node_whoami(ip, false), "upstream", "host-network client → {ip}");
    }
    for _ in 0..20 {
        lab.pod_whoami(CLUSTER_IP, false);
    }
    let ours = dns_entries_to(&lab.conntrack(), &[CLUSTER_IP, CLUSTER_IP6, LINK_LOCAL, LINK_LOCAL6]);
    assert!(ours.is_empty(), "conntrack entries for our addresses: {ours:?}");
    drop(d);
    sigkill_fails_open("auto", KubeProxy::Nftables);
}

/// Link-local mode has nothing to fail open to (the kubelet hands pods only 169.254.20.10): after a
/// SIGKILL the address is left without a socket, so queries are refused at once (ICMP port
/// unreachable), from pods and host-network clients alike, rather than left to time out; a
/// restarted nodedns serves again over the interface and rules left behind.
fn sigkill_in_link_local_mode_is_refused_at_once(firewall: &'static str) {
    let Some(lab) = lab(KubeProxy::IptablesNft) else { return };
    let config = NodeConfig::new(firewall, &[LINK_LOCAL]);
    let mut d = NodeDaemon::start(&lab, &config);
    assert_eq!(lab.pod_whoami(LINK_LOCAL, false), "upstream");
    d.kill();
    std::thread::sleep(Duration::from_millis(100));
    for ns in [&lab.pod, &lab.node] {
        let started = Instant::now();
        let out = ns_sh(ns, &format!("dig +time=3 +tries=1 @{LINK_LOCAL} whoami.cluster.local TXT"));
        let took = started.elapsed();
        let text = String::from_utf8_lossy(&out.stdout);
        eprintln!("{firewall}: link-local query from {ns} after SIGKILL: {took:?}");
        assert!(text.contains("connection refused"), "{ns}: not refused: {text}");
        assert!(took < Duration::from_secs(2), "{ns}: refused only after {took:?}");
    }
    let _d2 = NodeDaemon::start(&lab, &config);
    assert_eq!(lab.pod_whoami(LINK_LOCAL, false), "upstream", "served again after restart");
}

#[test]
fn sigkill_in_link_local_mode_is_refused_at_once_nftables() {
    sigkill_in_link_local_mode_is_refused_at_once("nftables");
}

#[test]
fn sigkill_in_link_local_mode_is_refused_at_once_iptables() {
    sigkill_in_link_local_mode_is_refused_at_once("iptables");
}

// 5. IPv6 and dual stack ---------------------------------------------------------------------

fn serves_addresses(firewall: &'static str, addresses: &[&'static str], cluster_ips: &[&'static str]) {
    let Some(lab) = lab(KubeProxy::IptablesNft) else { return };
    let mut d = NodeDaemon::start(&lab, &NodeConfig::new(firewall, addresses));
    let on_iface = ns_ok(&lab.node, "ip -o addr show dev nodelocaldns");
    for a in addresses {
        let plen = if a.contains(':') { 128 } else { 32 };
        assert!(on_iface.contains(&format!(" {a}/{plen} ")), "{a} missing:\n{on_iface}");
        for tcp in [false, true] {
            assert_eq!(lab.pod_whoami(a, tcp), "upstream", "pod → {a} (tcp: {tcp})");
        }
        lab.pod_resolv(a);
        let got = pod_getent(&lab, "svc3.default.svc.cluster.local");
        assert!(got.contains("10.0.0.4 ") && got.contains("fd00::4 "), "getent via {a}: {got:?}");
    }
    let ct = lab.conntrack();
    let ours = dns_entries_to(&ct, addresses);
    assert!(ours.is_empty(), "conntrack entries for our addresses: {ours:?}");
    // Fail-open per family.
    d.kill();
    for ip in cluster_ips {
        let took = time_until(Duration::from_secs(3), || lab.pod_whoami(ip, false) == "kube-dns")
            .unwrap_or_else(|| panic!("{ip}: not answered by kube-dns after SIGKILL"));
        eprintln!("{firewall} {ip}: fail-open after {took:?}");
        assert!(took < Duration::from_secs(2));
    }
}

#[test]
fn ipv6_only_nftables() {
    serves_addresses("nftables", &[LINK_LOCAL6, CLUSTER_IP6], &[CLUSTER_IP6]);
}

#[test]
fn ipv6_only_iptables() {
    serves_addresses("iptables", &[LINK_LOCAL6, CLUSTER_IP6], &[CLUSTER_IP6]);
}

#[test]
fn dual_stack_nftables() {
    serves_addresses("nftables", &[LINK_LOCAL, CLUSTER_IP, LINK_LOCAL6, CLUSTER_IP6], &[CLUSTER_IP, CLUSTER_IP6]);
}

#[test]
fn dual_stack_iptables() {
    serves_addresses("iptables", &[LINK_LOCAL, CLUSTER_IP, LINK_LOCAL6, CLUSTER_IP6], &[CLUSTER_IP, CLUSTER_IP6]);
}

// 6. teardown and rolling update -------------------------------------------------------------

#[test]
fn sigterm_tears_down_unless_another_instance_serves() {
    let Some(lab) = lab(KubeProxy::IptablesNft) else { return };
    let config_a = NodeConfig::new("nftables", &[LINK_LOCAL, CLUSTER_IP]);
    let mut a = NodeDaemon::start(&lab, &config_a);
    // Rolling update: B binds the same addresses next to A (SO_REUSEPORT).
    let config_b = NodeConfig { admin_port: 9254, ..config_a.clone() };
    let mut b = NodeDaemon::start(&lab, &config_b);
    assert_eq!(a.terminate(), Some(0), "A exits cleanly; log:\n{}", a.log());
    assert!(a.log().contains("another nodedns instance serves this node"), "{}", a.log());
    assert!(interface_present(&lab), "the shared interface stays");
    assert_eq!(nft_rules(&lab), 2 * 2 * 4 + 2 * 2, "the shared rules stay");
    let before = b.metric(REQUESTS, &[]);
    for server in [LINK_LOCAL, CLUSTER_IP] {
        for tcp in [false, true] {
            assert_eq!(lab.pod_whoami(server, tcp), "upstream", "B answers the pod at {server} (tcp: {tcp})");
        }
    }
    assert!(b.metric(REQUESTS, &[]) - before >= 4.0, "answered by B");
    // B keeps the host-client lease alive after A stopped renewing it.
    std::thread::sleep(Duration::from_millis(1800));
    assert_eq!(lab.node_whoami(CLUSTER_IP, false), "upstream");

    // The last instance tears down: interface and rules gone, the ClusterIP is kube-dns again.
    assert_eq!(b.terminate(), Some(0), "B exits cleanly; log:\n{}", b.log());
    assert!(b.log().contains("node setup removed"), "{}", b.log());
    assert!(!interface_present(&lab));
    assert!(!ns_ok(&lab.node, "nft list tables").contains("nodedns"));
    assert_eq!(lab.pod_whoami(CLUSTER_IP, false), "kube-dns");
    assert_eq!(
        lab.node_whoami(CLUSTER_IP, false),
        "kube-dns",
        "{}",
        lab.node_dig(CLUSTER_IP, "whoami.cluster.local TXT")
    );

    // teardown_on_exit: false leaves the setup; the dead instance's ClusterIP still fails open.
    let keep = NodeConfig { teardown_on_exit: false, ..config_a };
    let mut c = NodeDaemon::start(&lab, &keep);
    assert_eq!(c.terminate(), Some(0));
    assert!(interface_present(&lab) && nft_rules(&lab) > 0, "teardown_on_exit: false keeps the setup");
    assert_eq!(lab.pod_whoami(CLUSTER_IP, false), "kube-dns");
    let took = time_until(Duration::from_secs(3), || lab.node_whoami(CLUSTER_IP, false) == "kube-dns");
    assert!(took.is_some_and(|t| t < Duration::from_secs(2)), "host clients fail open after the lease: {took:?}");
}

// Host-network clients ------------------------------------------------------------------------

#[test]
fn host_network_clients_use_nodedns_while_alive_and_kube_dns_after_sigkill_nftables() {
    let Some(lab) = lab(KubeProxy::IptablesNft) else { return };
    let config = NodeConfig::new("nftables", &[LINK_LOCAL, CLUSTER_IP]);
    let mut d = NodeDaemon::start(&lab, &config);
    let before = d.metric(REQUESTS, &[]);
    for server in [CLUSTER_IP, LINK_LOCAL] {
        for tcp in [false, true] {
            assert_eq!(lab.node_whoami(server, tcp), "upstream", "host client → {server} (tcp: {tcp})");
        }
    }
    assert!(d.metric(REQUESTS, &[]) - before >= 4.0);
    // Still so after several lease lifetimes: the daemon renews it.
    std::thread::sleep(Duration::from_millis(3200));
    assert_eq!(lab.node_whoami(CLUSTER_IP, false), "upstream");
    assert_eq!(lab.node_whoami(CLUSTER_IP, true), "upstream");
    let ours = dns_entries_to(&lab.conntrack(), &[LINK_LOCAL, CLUSTER_IP]);
    assert!(ours.is_empty(), "host clients' queries bypass conntrack too: {ours:?}");

    d.kill();
    let killed = Instant::now();
    let took = time_until(Duration::from_secs(4), || lab.node_whoami(CLUSTER_IP, false) == "kube-dns")
        .expect("host client → ClusterIP answered by kube-dns after SIGKILL");
    assert_eq!(lab.node_whoami(CLUSTER_IP, true), "kube-dns");
    eprintln!("host-network fail-open after SIGKILL: {took:?} (TCP too by {:?})", killed.elapsed());
    assert!(took < Duration::from_secs(2), "took {took:?}");

    let d2 = NodeDaemon::start(&lab, &config);
    let back = time_until(Duration::from_secs(2), || lab.node_whoami(CLUSTER_IP, false) == "upstream");
    assert!(back.is_some(), "host clients return to nodedns after restart");
    assert_eq!(d2.metric("nodedns_node_setup_errors_total", &[]), 0.0, "{}", d2.log());
}

#[test]
fn host_network_clients_of_the_cluster_ip_go_to_kube_dns_with_iptables() {
    // The documented gap of the iptables backend: no lease, so no NOTRACK in OUTPUT, and
    // kube-proxy's DNAT always applies to host clients of a ClusterIP.
    let Some(lab) = lab(KubeProxy::IptablesNft) else { return };
    let _d = NodeDaemon::start(&lab, &NodeConfig::new("iptables", &[LINK_LOCAL, CLUSTER_IP]));
    assert_eq!(lab.node_whoami(CLUSTER_IP, false), "kube-dns");
    assert_eq!(lab.node_whoami(LINK_LOCAL, false), "upstream");
}

// Capabilities and setup errors --------------------------------------------------------------

/// Runs the binary with only CAP_NET_ADMIN and CAP_NET_BIND_SERVICE (root uid, all other
/// capabilities dropped from the bounding set, so also from every tool it runs).
const ONLY_NET_ADMIN_AND_BIND: &[&str] = &["setpriv", "--bounding-set=-all,+net_admin,+net_bind_service", "--"];

#[test]
fn needs_only_net_admin_and_net_bind_service() {
    let Some(lab) = lab(KubeProxy::IptablesNft) else { return };
    for firewall in ["nftables", "iptables"] {
        let mut d = NodeDaemon::start_wrapped(
            &lab,
            &NodeConfig::new(firewall, &[LINK_LOCAL, CLUSTER_IP]),
            ONLY_NET_ADMIN_AND_BIND,
        );
        let status = ns_ok(&lab.node, &format!("grep CapEff /proc/{}/status", d.pid()));
        // Started with CAP_NET_BIND_SERVICE (10) and CAP_NET_ADMIN (12); once bound and set up,
        // only CAP_NET_ADMIN is kept (crates/nodedns/src/privileges.rs).
        assert!(status.trim().ends_with("0000000000001000"), "{status}");
        assert_eq!(lab.pod_whoami(CLUSTER_IP, false), "upstream", "{firewall}");
        std::thread::sleep(Duration::from_millis(1500));
        assert_eq!(d.metric("nodedns_node_setup_errors_total", &[]), 0.0, "{firewall}: {}", d.log());
        assert_eq!(d.terminate(), Some(0));
        assert!(!interface_present(&lab), "{firewall}: teardown works with these capabilities");
    }
}

#[test]
fn setup_failures_are_counted_by_kind_and_serving_continues() {
    // Legacy iptables needs CAP_NET_RAW as well: without it every apply fails, is counted with
    // kind "iptables", and the daemon keeps serving on the addresses it bound.
    let Some(lab) = lab(KubeProxy::IptablesLegacy) else { return };
    let d = NodeDaemon::start_wrapped(
        &lab,
        &NodeConfig::new("iptables", &[LINK_LOCAL, CLUSTER_IP]),
        ONLY_NET_ADMIN_AND_BIND,
    );
    std::thread::sleep(Duration::from_millis(2200));
    let failures = d.metric("nodedns_node_setup_errors_total", &["kind=\"iptables\""]);
    assert!(failures >= 2.0, "initial apply and resyncs counted: {failures}; log:\n{}", d.log());
    assert_eq!(lab.pod_whoami(LINK_LOCAL, false), "upstream", "serving continues");
}

/// A directory of stand-ins for every firewall tool nodedns may run (`nft`, and `iptables` /
/// `ip6tables` with their `-save` / `-restore` forms, unsuffixed, `-nft` and `-legacy`), each
/// failing as a missing or broken tool would, and the daemon's PATH with it first; removing the
/// directory brings the real tools back.
fn failing_firewall_tools(lab: &Lab) -> (std::path::PathBuf, String) {
    use std::os::unix::fs::PermissionsExt;
    let dir = lab.dir.join("failing-tools");
    std::fs::create_dir_all(&dir).unwrap();
    let mut names = vec!["nft".to_string()];
    for tool in ["iptables", "ip6tables"] {
        for variant in ["", "-nft", "-legacy"] {
            for form in ["", "-save", "-restore"] {
                names.push(format!("{tool}{variant}{form}"));
            }
        }
    }
    for name in names {
        let path = dir.join(name);
        std::fs::write(&path, "#!/bin/sh\necho 'tool unavailable (test stand-in)' >&2\nexit 1\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let path = format!(
        "{}:{}",
        dir.display(),
        std::env::var("PATH").unwrap_or_else(|_| "/usr/sbin:/usr/bin:/sbin:/bin".into())
    );
    (dir, path)
}

#[test]
fn without_working_firewall_tools_the_node_is_served_and_the_rules_follow_when_they_work() {
    // The shipped `firewall: auto` on a node where no firewall tool works at start (missing from
    // the image, failing, the xtables lock held): DNS on the node address anyway, the failure
    // counted and retried at every resync (1 s here), the rules in as soon as the tools work.
    let Some(lab) = lab(KubeProxy::IptablesNft) else { return };
    let (tools, path) = failing_firewall_tools(&lab);
    let started = Instant::now();
    let mut d = NodeDaemon::spawn(&lab, &NodeConfig::new("auto", &[LINK_LOCAL]), &[], &[("PATH", path)]);
    // dig's shortest timeout is 1 s: ask once the daemon says it serves, not before.
    let first = time_until(Duration::from_secs(2), || {
        d.log().contains("nodedns serving") && lab.pod_whoami(LINK_LOCAL, false) == "upstream"
    })
    .map(|_| started.elapsed())
    .unwrap_or_else(|| panic!("no answer on {LINK_LOCAL} within 2 s of start; log:\n{}", d.log()));
    eprintln!("first pod answer on {LINK_LOCAL} {first:?} after start, without firewall tools");
    assert!(first < Duration::from_secs(2));
    let errors = || d.metric("nodedns_node_setup_errors_total", &["kind=\"firewall_tool\""]);
    assert!(errors() >= 1.0, "the failure is counted; log:\n{}", d.log());
    // Every kind exists from the start (at 0 unless it failed): increase() sees a first failure.
    let m = d.metrics();
    for kind in ["nftables", "iptables", "interface", "address"] {
        assert!(m.contains(&format!("nodedns_node_setup_errors_total{{kind=\"{kind}\"}} 0")), "{kind}: {m}");
    }
    assert!(d.log().contains("node setup incomplete"), "and logged:\n{}", d.log());
    assert_eq!(ipt_rules(&lab, "iptables-nft-save"), (0, 0));
    assert!(!ns_ok(&lab.node, "nft list tables").contains("nodedns"));
    // Retried at every resync: the counter keeps rising while the tools fail.
    let before = errors();
    assert!(
        time_until(Duration::from_millis(2500), || errors() > before).is_some(),
        "retried within a resync; log:\n{}",
        d.log()
    );
    eprintln!("setup errors counted while the tools failed: {}", errors());

    // The tools work again: the rules are in within one resync. Auto picks iptables here (no
    // kube-proxy nftables table; `iptables -V` works), kube-proxy's variant (nf_tables).
    std::fs::remove_dir_all(&tools).unwrap();
    let took = time_until(Duration::from_millis(2500), || ipt_rules(&lab, "iptables-nft-save") == (8, 4))
        .unwrap_or_else(|| panic!("rules not in within one resync (1 s) + margin; log:\n{}", d.log()));
    eprintln!("rules in place {took:?} after the tools work again (1 s resync)");
    assert!(
        time_until(Duration::from_secs(2), || d.log().contains("node setup complete")).is_some(),
        "the recovery is logged:\n{}",
        d.log()
    );
    let settled = errors();
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(errors(), settled, "no failures once the rules are in");
    eprintln!("nodedns_node_setup_errors_total{{kind=\"firewall_tool\"}} = {settled}");
    // Now pod queries bypass conntrack.
    ns_ok(&lab.node, "conntrack -F 2>/dev/null; true");
    assert_eq!(lab.pod_whoami(LINK_LOCAL, false), "upstream");
    let ct = lab.conntrack();
    assert!(dns_entries_to(&ct, &[LINK_LOCAL]).is_empty(), "NOTRACK in effect:\n{ct}");
    assert_eq!(d.terminate(), Some(0), "log:\n{}", d.log());
}

#[test]
fn without_the_interface_listen_is_served_and_the_node_address_follows_when_the_interface_exists() {
    // `interface_kind: dummy` on a kernel without it: the interface cannot be created. nodedns
    // serves on `listen`, counts and retries; once a link of that name exists (here made by hand)
    // the next resync adopts it, adds the address and the rules, and pods are answered there.
    let Some(lab) = lab(KubeProxy::IptablesNft) else { return };
    if ns_sh(&lab.node, "ip link add nodedns-probe type dummy && ip link del nodedns-probe").status.success() {
        eprintln!("SKIP: this kernel supports dummy links; the interface fault cannot be staged this way");
        return;
    }
    let mut config = NodeConfig::new("nftables", &[LINK_LOCAL]);
    config.interface_kind = "dummy";
    config.listen = vec!["127.0.0.1:5353"];
    let d = NodeDaemon::start(&lab, &config);
    assert!(!interface_present(&lab));
    let local = ns_sh(&lab.node, "dig +short +time=1 +tries=1 -p 5353 @127.0.0.1 svc1.default.svc.cluster.local");
    assert_eq!(String::from_utf8_lossy(&local.stdout).trim(), "10.0.0.2", "served on listen; log:\n{}", d.log());
    let errors = || d.metric("nodedns_node_setup_errors_total", &["kind=\"interface_kind\""]);
    assert!(errors() >= 1.0, "counted; log:\n{}", d.log());
    assert!(!ns_ok(&lab.node, "nft list tables").contains("nodedns"), "no rules before the address exists");

    ns_ok(&lab.node, "ip link add nodelocaldns type bridge");
    // Within a resync (1 s) plus a lost dig (1 s).
    let took = time_until(Duration::from_millis(3500), || lab.pod_whoami(LINK_LOCAL, false) == "upstream")
        .unwrap_or_else(|| {
            panic!("not served on {LINK_LOCAL} within a resync of the interface existing:\n{}", d.log())
        });
    eprintln!("pods answered on {LINK_LOCAL} {took:?} after the interface appeared (1 s resync)");
    assert!(time_until(Duration::from_secs(2), || nft_rules(&lab) > 0).is_some(), "rules follow");
    assert!(d.log().contains("node setup complete"), "{}", d.log());
}

#[test]
fn with_a_failing_nft_the_node_is_served_and_the_table_and_host_lease_follow_when_it_works() {
    // `firewall: nftables` with `nft` failing at start: the link-local address is served, the
    // ClusterIP goes to kube-dns through kube-proxy meanwhile (nothing NOTRACKs it), and once
    // `nft` works the table is in within a resync and the host-client lease starts with it.
    let Some(lab) = lab(KubeProxy::IptablesNft) else { return };
    let (tools, path) = failing_firewall_tools(&lab);
    let started = Instant::now();
    let d = NodeDaemon::spawn(&lab, &NodeConfig::new("nftables", &[LINK_LOCAL, CLUSTER_IP]), &[], &[("PATH", path)]);
    let first = time_until(Duration::from_secs(2), || {
        d.log().contains("nodedns serving") && lab.pod_whoami(LINK_LOCAL, false) == "upstream"
    })
    .map(|_| started.elapsed())
    .unwrap_or_else(|| panic!("no answer on {LINK_LOCAL} within 2 s of start; log:\n{}", d.log()));
    eprintln!("first pod answer on {LINK_LOCAL} {first:?} after start, with nft failing");
    let errors = |kind: &str| d.metric("nodedns_node_setup_errors_total", &[&format!("kind=\"{kind}\"")]);
    assert!(errors("nftables") >= 1.0, "counted; log:\n{}", d.log());
    assert_eq!(lab.pod_whoami(CLUSTER_IP, false), "kube-dns", "the ClusterIP fails open to kube-dns meanwhile");

    std::fs::remove_dir_all(&tools).unwrap();
    let expected = 2 * 2 * 4 + 2 * 2;
    let took = time_until(Duration::from_millis(2500), || nft_rules(&lab) == expected)
        .unwrap_or_else(|| panic!("table not in within one resync (1 s) + margin; log:\n{}", d.log()));
    eprintln!("nftables table in {took:?} after nft works again; nftables errors counted: {}", errors("nftables"));
    assert_eq!(lab.pod_whoami(CLUSTER_IP, false), "upstream");
    assert!(
        time_until(Duration::from_secs(2), || lab.node_whoami(CLUSTER_IP, false) == "upstream").is_some(),
        "host-network clients of the ClusterIP reach nodedns: the lease runs; log:\n{}",
        d.log()
    );
    assert_eq!(errors("host_lease"), 0.0, "the lease is not renewed before its table exists");
}
