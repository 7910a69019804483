//! Integration tests: real interface, addresses and firewall rules, inside a network
//! namespace created per test (needs root; skipped with a message otherwise).
//!
//! The body runs on a thread that `setns`ed into the namespace, with a current-thread
//! runtime: netns membership is per thread, and both the netlink socket and the `nft` /
//! `iptables-*` children take the namespace of the thread that creates them.

use std::fs::File;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

use nix::sched::{CloneFlags, setns};
use nodedns_node::{
    FirewallBackend, FirewallMode, InterfaceKind, IptablesVariant, LEASE, NodeError, NodeSetup, NodeSetupSpec, Repairs,
};

/// A network namespace that is deleted when dropped, even if the test panicked.
struct Netns(String);

impl Netns {
    /// `None` (test skipped) when namespaces cannot be created: not root, no `ip`.
    fn create() -> Option<Netns> {
        static N: AtomicUsize = AtomicUsize::new(0);
        let name = format!("nd-test-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed));
        match Command::new("ip").args(["netns", "add", &name]).output() {
            Ok(o) if o.status.success() => Some(Netns(name)),
            Ok(o) => {
                eprintln!("SKIP: `ip netns add` failed (need root): {}", String::from_utf8_lossy(&o.stderr));
                None
            }
            Err(e) => {
                eprintln!("SKIP: cannot run `ip`: {e}");
                None
            }
        }
    }

    /// Runs `body` on a thread inside the namespace, with a current-thread runtime.
    fn run<F, Fut>(&self, body: F)
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()>,
    {
        let path = format!("/run/netns/{}", self.0);
        let result = std::thread::spawn(move || {
            let ns = File::open(&path).expect("open netns");
            setns(ns, CloneFlags::CLONE_NEWNET).expect("setns");
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(body());
        })
        .join();
        if let Err(panic) = result {
            std::panic::resume_unwind(panic);
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// Runs a shell command in the calling thread's namespace; panics on failure.
fn sh(cmd: &str) -> String {
    let out = Command::new("sh").args(["-c", cmd]).output().expect("sh");
    assert!(out.status.success(), "`{cmd}` failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn spec(firewall: FirewallMode, addrs: &[&str]) -> NodeSetupSpec {
    NodeSetupSpec {
        interface: "nodelocaldns".into(),
        interface_kind: InterfaceKind::Bridge,
        addresses: addrs.iter().map(|a| a.parse().unwrap()).collect(),
        firewall,
        dns_port: 53,
        admin_port: Some(8080),
    }
}

fn addresses_on_iface() -> Vec<String> {
    let out = sh("ip -o addr show dev nodelocaldns");
    out.lines().map(|l| l.split_whitespace().nth(3).unwrap().to_owned()).filter(|a| !a.starts_with("fe80")).collect()
}

fn nft_rule_count() -> usize {
    match Command::new("nft").args(["list", "table", "inet", "nodedns"]).output() {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter(|l| l.contains(" notrack") || l.ends_with(" accept"))
            .count(),
        _ => 0,
    }
}

/// iptables-save output of both tables for one family.
fn ipt_save(cmd: &str) -> String {
    sh(&format!("{cmd} -t raw; {cmd} -t filter"))
}

const ALL: Repairs = Repairs { interface_created: true, addresses_added: 0, rules_restored: true };
const NOTHING: Repairs = Repairs { interface_created: false, addresses_added: 0, rules_restored: false };

#[test]
fn nftables_dual_stack_apply_repair_teardown() {
    let Some(ns) = Netns::create() else { return };
    ns.run(|| async {
        // A foreign table that teardown must leave alone.
        sh("nft add table ip foreign && nft add chain ip foreign c '{ type filter hook prerouting priority raw; }' && nft add rule ip foreign c ip daddr 10.0.0.1 notrack");
        let setup = NodeSetup::new(spec(FirewallMode::Nftables, &["169.254.20.10", "10.96.0.10", "fd00:96::10"])).unwrap();
        assert_eq!(setup.firewall_backend(), Some(FirewallBackend::Nftables));

        let first = setup.apply().await.unwrap();
        assert_eq!(first, Repairs { addresses_added: 3, ..ALL });
        let mut addrs = addresses_on_iface();
        addrs.sort();
        assert_eq!(addrs, ["10.96.0.10/32", "169.254.20.10/32", "fd00:96::10/128"]);
        // IFA_F_NODAD: usable at once, never "tentative".
        let v6 = sh("ip -6 -o addr show dev nodelocaldns");
        let ours = v6.lines().find(|l| l.contains("fd00:96::10/128")).unwrap();
        assert!(ours.contains("nodad") && !ours.contains("tentative"), "{v6}");
        // 3 addresses x 3 (udp 53, tcp 53, tcp 8080) x 4 chains, plus the host-client lease
        // rules: 2 families x 3 ports x (request, reply).
        assert_eq!(nft_rule_count(), 48);

        for _ in 0..100 {
            assert_eq!(setup.apply().await.unwrap(), NOTHING);
        }
        assert_eq!(nft_rule_count(), 48);
        assert_eq!(sh("nft list tables").matches("table inet nodedns").count(), 1);
        assert_eq!(addresses_on_iface().len(), 3);

        // External deletion is repaired and reported.
        sh("nft delete table inet nodedns");
        sh("ip addr del 10.96.0.10/32 dev nodelocaldns");
        let repaired = setup.apply().await.unwrap();
        assert_eq!(repaired, Repairs { interface_created: false, addresses_added: 1, rules_restored: true });
        assert_eq!(nft_rule_count(), 48);
        // A single deleted rule inside our table is drift too.
        let handle = sh("nft -a list chain inet nodedns raw_prerouting | grep 'udp dport 53' | head -1 | sed 's/.*handle //'");
        sh(&format!("nft delete rule inet nodedns raw_prerouting handle {}", handle.trim()));
        assert!(setup.apply().await.unwrap().rules_restored);
        assert_eq!(nft_rule_count(), 48);

        setup.teardown().await.unwrap();
        assert!(!sh("nft list tables").contains("nodedns"));
        assert!(sh("nft list table ip foreign").contains("ip daddr 10.0.0.1 notrack"));
        assert!(!sh("ip -o link").contains("nodelocaldns"));
        // Teardown of nothing is fine.
        setup.teardown().await.unwrap();
    });
}

fn iptables_case(addrs: &'static [&'static str]) {
    let Some(ns) = Netns::create() else { return };
    ns.run(move || async move {
        let has_v4 = addrs.iter().any(|a| !a.contains(':'));
        let has_v6 = addrs.iter().any(|a| a.contains(':'));
        // Foreign rules in the same builtin chains, which must survive.
        sh("iptables -t raw -A PREROUTING -d 10.0.0.1/32 -j CT --notrack");
        sh("ip6tables -t filter -A INPUT -d fd00::1/128 -j ACCEPT");
        let setup = NodeSetup::new(spec(FirewallMode::Iptables, addrs)).unwrap();
        assert_eq!(setup.firewall_backend(), Some(FirewallBackend::Iptables));
        assert_eq!(setup.apply().await.unwrap(), Repairs { addresses_added: addrs.len(), ..ALL });

        let check = |save: &str, present: bool, n_addrs: usize| {
            for jump in ["-j NODEDNS-PREROUTING", "-j NODEDNS-INPUT"] {
                let n = save
                    .lines()
                    .filter(|l| {
                        l.ends_with(jump) && l.starts_with("-A PREROUTING")
                            || l.ends_with(jump) && l.starts_with("-A INPUT")
                    })
                    .count();
                assert_eq!(n, present as usize, "{jump} in\n{save}");
            }
            // 3 ports x 2 chains x 2 tables per address.
            assert_eq!(save.lines().filter(|l| l.starts_with("-A NODEDNS-")).count(), n_addrs * 12, "{save}");
            // Our jump comes first.
            if present {
                let first_pre = save.lines().find(|l| l.starts_with("-A PREROUTING")).unwrap();
                assert!(first_pre.ends_with("-m comment --comment nodedns -j NODEDNS-PREROUTING"), "{save}");
            }
        };
        let n4 = addrs.iter().filter(|a| !a.contains(':')).count();
        let n6 = addrs.len() - n4;
        for _ in 0..100 {
            assert_eq!(setup.apply().await.unwrap(), NOTHING);
        }
        check(&ipt_save("iptables-save"), has_v4, n4);
        check(&ipt_save("ip6tables-save"), has_v6, n6);

        // External flush of our chain / deletion of our jump is repaired and reported.
        let (cmd, save) = if has_v4 { ("iptables", "iptables-save") } else { ("ip6tables", "ip6tables-save") };
        sh(&format!("{cmd} -t raw -F NODEDNS-PREROUTING"));
        assert!(setup.apply().await.unwrap().rules_restored);
        sh(&format!("{cmd} -t filter -D INPUT -m comment --comment nodedns -j NODEDNS-INPUT"));
        // A duplicate jump (what `iptables -C` flakiness produced) is collapsed to one.
        sh(&format!("{cmd} -t raw -A PREROUTING -m comment --comment nodedns -j NODEDNS-PREROUTING"));
        assert!(setup.apply().await.unwrap().rules_restored);
        assert_eq!(setup.apply().await.unwrap(), NOTHING);
        check(&ipt_save(save), true, if has_v4 { n4 } else { n6 });

        setup.teardown().await.unwrap();
        for save in ["iptables-save", "ip6tables-save"] {
            let text = ipt_save(save);
            assert!(!text.contains("NODEDNS"), "{text}");
        }
        assert!(sh("iptables-save -t raw").contains("-A PREROUTING -d 10.0.0.1/32 -j CT --notrack"));
        assert!(sh("ip6tables-save -t filter").contains("-A INPUT -d fd00::1/128 -j ACCEPT"));
        assert!(!sh("ip -o link").contains("nodelocaldns"));
    });
}

#[test]
fn iptables_ipv4() {
    iptables_case(&["169.254.20.10", "10.96.0.10"]);
}

#[test]
fn iptables_ipv6() {
    iptables_case(&["fd00:96::10"]);
}

#[test]
fn iptables_dual_stack() {
    iptables_case(&["10.96.0.10", "fd00:96::10"]);
}

#[test]
fn auto_prefers_nftables_when_kube_proxy_does() {
    let Some(ns) = Netns::create() else { return };
    ns.run(|| async {
        let auto = || NodeSetup::new(spec(FirewallMode::Auto, &["10.96.0.10"])).unwrap().firewall_backend();
        assert_eq!(auto(), Some(FirewallBackend::Iptables));
        sh("nft add table ip kube-proxy");
        assert_eq!(auto(), Some(FirewallBackend::Nftables));
    });
}

#[test]
fn dummy_kind_unsupported_is_typed() {
    let Some(ns) = Netns::create() else { return };
    ns.run(|| async {
        let mut s = spec(FirewallMode::None, &["10.96.0.10"]);
        s.interface_kind = InterfaceKind::Dummy;
        let setup = NodeSetup::new(s).unwrap();
        match setup.apply().await {
            // Kernels with CONFIG_DUMMY: fine as well.
            Ok(r) => assert!(r.interface_created),
            Err(e @ NodeError::UnsupportedKind { .. }) => assert_eq!(e.kind(), "interface_kind"),
            Err(e) => panic!("unexpected error: {e}"),
        }
    });
}

/// Remaining lifetime of the lease element for `addr`, from `nft list set`; `None` if absent.
fn lease_expires_ms(set: &str, addr: &str) -> Option<u64> {
    let listing = sh(&format!("nft list set inet nodedns {set}"));
    let flat = listing.split_whitespace().collect::<Vec<_>>().join(" ");
    let at = flat.find(&format!("{addr} timeout "))?;
    let rest = &flat[at..];
    let expires = rest.split("expires ").nth(1)?.split([',', ' ', '}']).next()?;
    // e.g. "1s412ms", "987ms", "1s"
    let mut ms = 0;
    let mut num = String::new();
    let mut chars = expires.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() {
            num.push(c);
        } else if c == 'm' && chars.peek() == Some(&'s') {
            chars.next();
            ms += num.parse::<u64>().ok()?;
            num.clear();
        } else if c == 's' {
            ms += num.parse::<u64>().ok()? * 1000;
            num.clear();
        }
    }
    Some(ms)
}

#[test]
fn host_client_lease_expires_unless_renewed() {
    let Some(ns) = Netns::create() else { return };
    ns.run(|| async {
        let setup = NodeSetup::new(spec(FirewallMode::Nftables, &["10.96.0.10", "fd00:96::10"])).unwrap();
        setup.apply().await.unwrap();
        // Applying creates the elements with a fresh lease.
        assert!(lease_expires_ms("host_v4", "10.96.0.10").is_some_and(|ms| ms <= LEASE.as_millis() as u64));
        let mut lease = setup.host_client_lease().expect("nftables has a lease").unwrap();
        std::thread::sleep(std::time::Duration::from_millis(700));
        let before = lease_expires_ms("host_v4", "10.96.0.10").unwrap();
        lease.renew().unwrap();
        let after = lease_expires_ms("host_v4", "10.96.0.10").unwrap();
        assert!(after > before + 400, "renewal restarts the timeout: {before} ms then {after} ms");
        assert!(lease_expires_ms("host_v6", "fd00:96::10").unwrap() > 1000);
        // Renewing again and again never duplicates anything.
        for _ in 0..20 {
            lease.renew().unwrap();
        }
        assert_eq!(sh("nft list set inet nodedns host_v4").matches("10.96.0.10").count(), 1);
        // Not renewed: gone within the lease.
        std::thread::sleep(LEASE + std::time::Duration::from_millis(200));
        assert_eq!(lease_expires_ms("host_v4", "10.96.0.10"), None, "{}", sh("nft list set inet nodedns host_v4"));
        // Renewal after expiry brings the element back.
        lease.renew().unwrap();
        assert!(lease_expires_ms("host_v4", "10.96.0.10").is_some());
        // A resync's rewrite is not drift although the elements' timers differ.
        assert!(!setup.apply().await.unwrap().rules_restored);
        // Without our table, renewal fails with a typed error (resync recreates it).
        setup.teardown().await.unwrap();
        assert_eq!(lease.renew().unwrap_err().kind(), "host_lease");
        // The iptables backend has no lease.
        let ipt = NodeSetup::new(spec(FirewallMode::Iptables, &["10.96.0.10"])).unwrap();
        assert!(ipt.host_client_lease().is_none());
    });
}

#[test]
fn iptables_follows_kube_proxys_variant() {
    let Some(ns) = Netns::create() else { return };
    ns.run(|| async {
        let kube = |bin: &str| {
            sh(&format!(
                "{bin} -t nat -N KUBE-SERVICES && {bin} -t nat -A PREROUTING -j KUBE-SERVICES && \
                 {bin} -t nat -A KUBE-SERVICES -d 10.96.0.10/32 -p udp --dport 53 -j DNAT --to-destination 10.244.1.2:53"
            ))
        };
        let ours = |save: &str| sh(&format!("{save} -t raw; {save} -t filter")).lines().filter(|l| l.contains("NODEDNS")).count();
        // kube-proxy on legacy iptables while the image's default `iptables` is nf_tables.
        kube("iptables-legacy");
        let setup = NodeSetup::new(spec(FirewallMode::Iptables, &["10.96.0.10"])).unwrap();
        setup.apply().await.unwrap();
        assert_eq!(setup.iptables_variant(), Some(IptablesVariant::Legacy));
        assert!(ours("iptables-legacy-save") > 0);
        assert_eq!(ours("iptables-nft-save"), 0);
        // kube-proxy moves to nf_tables (more KUBE rules there): our rules follow, once.
        kube("iptables-nft");
        sh("iptables-nft -t nat -A KUBE-SERVICES -d 10.96.0.11/32 -p tcp --dport 53 -j DNAT --to-destination 10.244.1.2:53");
        assert!(setup.apply().await.unwrap().rules_restored);
        assert_eq!(setup.iptables_variant(), Some(IptablesVariant::Nft));
        assert_eq!(ours("iptables-legacy-save"), 0);
        let n = ours("iptables-nft-save");
        assert!(n > 0);
        assert_eq!(setup.apply().await.unwrap(), NOTHING);
        assert_eq!(ours("iptables-nft-save"), n);
        setup.teardown().await.unwrap();
        assert_eq!(ours("iptables-nft-save") + ours("iptables-legacy-save"), 0);
        // kube-proxy's rules are untouched.
        assert!(sh("iptables-legacy-save -t nat").contains("KUBE-SERVICES -d 10.96.0.10/32"));
    });
}
