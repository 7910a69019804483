//! The iptables backend: nodedns-owned chains plus one tagged jump per builtin chain.
//!
//! Our chains are refilled with `iptables-restore --noflush` (one atomic commit per table);
//! the jumps are found by parsing `iptables-save`, never with `iptables -C`: node-cache's
//! `-C` checks failed intermittently and each failure inserted another copy
//! (kubernetes/dns#568).
//!
//! # Which iptables: nf_tables or legacy
//!
//! iptables 1.8 ships two binaries per tool (`iptables-nft-*`, `iptables-legacy-*`) that
//! program different kernel subsystems; the unsuffixed `iptables` is whatever the image's
//! alternatives say, which need not be what the node's kube-proxy uses. Our rules must live
//! in kube-proxy's variant: an operator reading `iptables-save` sees them next to kube-proxy's,
//! and a node with only one subsystem usable would otherwise fail. [`Variant::detect`] does
//! what kubernetes-sigs/iptables-wrappers does: the variant whose `-t nat` holds more
//! `KUBE-*` rules (IPv4 first, IPv6 for single-stack v6 nodes) wins; with no kube-proxy rules
//! anywhere the unsuffixed `iptables` decides. Detection runs on every apply, and when the
//! choice changes (kube-proxy started after us) our rules are removed from the other variant.
//!
//! Capabilities: the nf_tables variant needs only CAP_NET_ADMIN. The legacy variant also
//! needs CAP_NET_RAW: it reads and writes tables through get/setsockopt on a raw socket.

use std::fmt::Write;
use std::net::IpAddr;

use crate::command::run;
use crate::spec::BypassTargets;
use crate::{FirewallBackend, NodeError};

/// Tag on our jump rules, so a human can tell them apart in `iptables-save`.
const COMMENT: &str = "nodedns";

/// IP family, selecting `iptables-*` or `ip6tables-*`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Family {
    V4,
    V6,
}

impl Family {
    fn save(self, variant: Variant) -> String {
        format!("{}{}-save", self.tool(), variant.suffix())
    }
    fn restore(self, variant: Variant) -> String {
        format!("{}{}-restore", self.tool(), variant.suffix())
    }
    fn tool(self) -> &'static str {
        match self {
            Family::V4 => "iptables",
            Family::V6 => "ip6tables",
        }
    }
    fn host_prefix(self) -> u8 {
        match self {
            Family::V4 => 32,
            Family::V6 => 128,
        }
    }
}

/// Which iptables binaries to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Variant {
    /// `iptables-nft-*`: the nf_tables kernel API (xtables matches via nft_compat).
    Nft,
    /// `iptables-legacy-*`: the old ip_tables kernel API (also needs CAP_NET_RAW).
    Legacy,
    /// Plain `iptables-*`: iptables before 1.8, which has no suffixed binaries.
    Unsuffixed,
}

impl Variant {
    fn suffix(self) -> &'static str {
        match self {
            Variant::Nft => "-nft",
            Variant::Legacy => "-legacy",
            Variant::Unsuffixed => "",
        }
    }

    /// Short name for logs.
    pub fn name(self) -> &'static str {
        match self {
            Variant::Nft => "nf_tables",
            Variant::Legacy => "legacy",
            Variant::Unsuffixed => "iptables",
        }
    }

    /// The variant kube-proxy uses on this node (see the module docs).
    ///
    /// A variant whose tool is missing or whose kernel tables do not exist counts as having
    /// no rules. One we may not read (legacy without CAP_NET_RAW: "Permission denied") is an
    /// error, unless nf_tables already shows kube-proxy's rules: guessing could put our rules
    /// where kube-proxy does not look.
    pub(crate) fn detect() -> Result<Variant, NodeError> {
        let kube_rules = |family: Family, variant: Variant| -> Result<usize, NodeError> {
            match run(FirewallBackend::Iptables, &family.save(variant), &["-t", "nat"], None) {
                Ok(s) => Ok(s.lines().filter(|l| l.starts_with("-A KUBE-")).count()),
                Err(NodeError::Firewall { detail, .. })
                    if detail.contains("Permission denied") || detail.contains("must be root") =>
                {
                    Err(NodeError::Firewall {
                        backend: FirewallBackend::Iptables,
                        detail: format!(
                            "cannot read {} to find kube-proxy's iptables variant (legacy needs CAP_NET_RAW): {detail}",
                            family.save(variant)
                        ),
                    })
                }
                Err(_) => Ok(0),
            }
        };
        for family in [Family::V4, Family::V6] {
            let nft = kube_rules(family, Variant::Nft)?;
            let legacy = match kube_rules(family, Variant::Legacy) {
                Ok(n) => n,
                Err(_) if nft > 0 => 0,
                Err(e) => return Err(e),
            };
            if nft > 0 || legacy > 0 {
                return Ok(if legacy > nft { Variant::Legacy } else { Variant::Nft });
            }
        }
        // No kube-proxy rules: follow the unsuffixed binary ("iptables v1.8.9 (legacy)").
        Ok(match run(FirewallBackend::Iptables, "iptables", &["-V"], None) {
            Ok(v) if v.contains("(legacy)") => Variant::Legacy,
            Ok(v) if v.contains("(nf_tables)") => Variant::Nft,
            _ => Variant::Unsuffixed,
        })
    }

    /// The other suffixed variant, whose leftovers of ours are removed on a switch.
    fn other(self) -> Option<Variant> {
        match self {
            Variant::Nft => Some(Variant::Legacy),
            Variant::Legacy => Some(Variant::Nft),
            Variant::Unsuffixed => None,
        }
    }
}

/// One of the two tables we use, with (builtin chain, our chain) pairs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Table {
    Raw,
    Filter,
}

impl Table {
    const ALL: [Table; 2] = [Table::Raw, Table::Filter];

    fn name(self) -> &'static str {
        match self {
            Table::Raw => "raw",
            Table::Filter => "filter",
        }
    }

    /// (builtin chain, our chain). `NODEDNS-OUTPUT` exists in both tables; tables are
    /// separate namespaces for chain names.
    fn chains(self) -> [(&'static str, &'static str); 2] {
        match self {
            Table::Raw => [("PREROUTING", "NODEDNS-PREROUTING"), ("OUTPUT", "NODEDNS-OUTPUT")],
            Table::Filter => [("INPUT", "NODEDNS-INPUT"), ("OUTPUT", "NODEDNS-OUTPUT")],
        }
    }
}

/// The jump rule spec (without `-A CHAIN`), exactly as `iptables-save` prints it.
fn jump_spec(our_chain: &str) -> String {
    format!("-m comment --comment {COMMENT} -j {our_chain}")
}

/// The rules of our chains in one table, as `-A CHAIN spec` lines in `iptables-save`'s
/// normalised spelling (so drift is detected by plain string comparison).
pub(crate) fn chain_rules(targets: &BypassTargets, family: Family, table: Table) -> Vec<String> {
    let addrs: Vec<IpAddr> = match family {
        Family::V4 => targets.v4.iter().copied().map(IpAddr::V4).collect(),
        Family::V6 => targets.v6.iter().copied().map(IpAddr::V6).collect(),
    };
    let plen = family.host_prefix();
    let mut out = Vec::new();
    let [(_, first), (_, second)] = table.chains();
    for addr in &addrs {
        for &(proto, port) in &targets.ports {
            let p = proto.name();
            match table {
                Table::Raw => {
                    // Requests: NOTRACK only while a socket is bound for the packet (xt_socket
                    // in its default mode, which ignores 0.0.0.0/:: sockets but, unlike nft's
                    // `socket wildcard 0`, also matches TCP request sockets). With nodedns dead
                    // the packet is tracked and kube-proxy DNATs it to kube-dns
                    // (kubernetes/dns#438). NB: `--nowildcard` would do the opposite (count
                    // wildcard sockets too). xt_socket is only allowed in PREROUTING and
                    // INPUT (the kernel rejects it in OUTPUT with EINVAL).
                    out.push(format!("-A {first} -d {addr}/{plen} -p {p} -m {p} --dport {port} -m socket -j NOTRACK"));
                }
                Table::Filter => {
                    out.push(format!("-A {first} -d {addr}/{plen} -p {p} -m {p} --dport {port} -j ACCEPT"))
                }
            }
        }
    }
    for addr in &addrs {
        for &(proto, port) in &targets.ports {
            let p = proto.name();
            match table {
                // Replies, except to local (host-network) clients whose requests are tracked.
                Table::Raw => out.push(format!(
                    "-A {second} -s {addr}/{plen} -p {p} -m {p} --sport {port} -m addrtype ! --dst-type LOCAL -j NOTRACK"
                )),
                Table::Filter => out.push(format!(
                    "-A {second} -s {addr}/{plen} -p {p} -m {p} --sport {port} -j ACCEPT"
                )),
            }
        }
    }
    out
}

/// What of ours one table holds, parsed from `iptables-save -t TABLE`.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct OurRules {
    /// Per builtin chain: (1-based position, rule spec) of each rule jumping to our chain.
    pub jumps: Vec<(&'static str, usize, String)>,
    /// Our chains that exist, with their `-A` lines.
    pub chains: Vec<(&'static str, Vec<String>)>,
}

impl OurRules {
    pub(crate) fn parse(save: &str, table: Table) -> OurRules {
        let mut ours = OurRules::default();
        let mut positions: Vec<(&str, usize)> = Vec::new();
        for line in save.lines() {
            for (_, chain) in table.chains() {
                if line.split_whitespace().next() == Some(&format!(":{chain}")) {
                    ours.chains.push((chain, Vec::new()));
                }
            }
            let Some(rest) = line.strip_prefix("-A ") else {
                continue;
            };
            let Some((chain, spec)) = rest.split_once(' ') else {
                continue;
            };
            if let Some((_, rules)) = ours.chains.iter_mut().find(|(c, _)| *c == chain) {
                rules.push(line.to_owned());
                continue;
            }
            for (builtin, our) in table.chains() {
                if chain != builtin {
                    continue;
                }
                let pos = match positions.iter_mut().find(|(c, _)| *c == chain) {
                    Some((_, n)) => {
                        *n += 1;
                        *n
                    }
                    None => {
                        positions.push((chain, 1));
                        1
                    }
                };
                let tokens: Vec<&str> = spec.split_whitespace().collect();
                let jumps_to_ours = tokens.windows(2).any(|w| w[0] == "-j" && w[1] == our);
                if jumps_to_ours {
                    ours.jumps.push((builtin, pos, spec.to_owned()));
                }
            }
        }
        ours
    }

    /// Whether this is exactly what we install: each builtin chain jumps to ours once, first,
    /// and our chains hold exactly `rules`.
    pub(crate) fn is_exactly(&self, table: Table, rules: &[String]) -> bool {
        let jumps_ok = table.chains().iter().all(|(builtin, our)| {
            let mine: Vec<_> = self.jumps.iter().filter(|(b, _, _)| b == builtin).collect();
            mine.len() == 1 && mine[0].1 == 1 && mine[0].2 == jump_spec(our)
        });
        let have: Vec<&String> = self.chains.iter().flat_map(|(_, r)| r).collect();
        let chains_ok = self.chains.len() == 2 && have.len() == rules.len();
        // Compare per chain in order: chain rules are emitted chain by chain.
        let mut expected = Vec::new();
        for (_, our) in table.chains() {
            expected.extend(rules.iter().filter(|r| r.starts_with(&format!("-A {our} "))));
        }
        let mut got = Vec::new();
        for (_, our) in table.chains() {
            if let Some((_, r)) = self.chains.iter().find(|(c, _)| *c == our) {
                got.extend(r.iter());
            }
        }
        jumps_ok && chains_ok && got == expected
    }
}

/// `iptables-restore --noflush` input that (re)installs our chains and jumps in one table.
/// Declaring a chain in `--noflush` mode creates it or flushes it; existing jumps (any
/// number, any spelling) are deleted by their exact spec before the single new one is
/// inserted at position 1, all in one commit.
pub(crate) fn render_install(table: Table, current: &OurRules, rules: &[String]) -> String {
    let mut s = String::new();
    writeln!(s, "*{}", table.name()).unwrap();
    for (_, our) in table.chains() {
        writeln!(s, ":{our} - [0:0]").unwrap();
    }
    for r in rules {
        writeln!(s, "{r}").unwrap();
    }
    for (builtin, _, spec) in &current.jumps {
        writeln!(s, "-D {builtin} {spec}").unwrap();
    }
    for (builtin, our) in table.chains() {
        writeln!(s, "-I {builtin} 1 {}", jump_spec(our)).unwrap();
    }
    s.push_str("COMMIT\n");
    s
}

/// Input removing our jumps and chains from one table; `None` when nothing of ours is there.
pub(crate) fn render_remove(table: Table, current: &OurRules) -> Option<String> {
    if current.jumps.is_empty() && current.chains.is_empty() {
        return None;
    }
    let mut s = format!("*{}\n", table.name());
    for (builtin, _, spec) in &current.jumps {
        writeln!(s, "-D {builtin} {spec}").unwrap();
    }
    for (chain, _) in &current.chains {
        writeln!(s, "-F {chain}\n-X {chain}").unwrap();
    }
    s.push_str("COMMIT\n");
    Some(s)
}

fn save(variant: Variant, family: Family, table: Table) -> Result<String, NodeError> {
    run(FirewallBackend::Iptables, &family.save(variant), &["-t", table.name()], None)
}

fn restore(variant: Variant, family: Family, input: &str) -> Result<(), NodeError> {
    // -w: wait for the xtables lock (legacy backend) instead of failing when kube-proxy
    // holds it; bounded so a stuck holder cannot hang resync.
    run(FirewallBackend::Iptables, &family.restore(variant), &["-w", "5", "--noflush"], Some(input)).map(drop)
}

/// Removes whatever of ours one variant holds; best effort for families/variants whose tools
/// do not work here. Used for the variant we are *not* using.
pub(crate) fn remove_from(variant: Variant) -> Result<(), NodeError> {
    for family in [Family::V4, Family::V6] {
        for table in Table::ALL {
            if let Ok(text) = save(variant, family, table)
                && let Some(input) = render_remove(table, &OurRules::parse(&text, table))
            {
                restore(variant, family, &input)?;
            }
        }
    }
    Ok(())
}

/// Removes our rules from the variant other than `current`, if there is one.
pub(crate) fn remove_from_other(current: Variant) -> Result<(), NodeError> {
    match current.other() {
        Some(other) => remove_from(other),
        None => Ok(()),
    }
}

fn families(targets: &BypassTargets) -> [(Family, bool); 2] {
    [(Family::V4, !targets.v4.is_empty()), (Family::V6, !targets.v6.is_empty())]
}

/// Installs what is missing or different. Returns whether anything had to be written.
/// A family without addresses has any leftovers of ours removed.
pub(crate) fn apply(variant: Variant, targets: &BypassTargets) -> Result<bool, NodeError> {
    let mut restored = false;
    for (family, wanted) in families(targets) {
        for table in Table::ALL {
            if !wanted {
                // Best effort: a node without IPv6 may have no working ip6tables at all.
                if let Ok(text) = save(variant, family, table)
                    && let Some(input) = render_remove(table, &OurRules::parse(&text, table))
                {
                    restore(variant, family, &input)?;
                }
                continue;
            }
            let current = OurRules::parse(&save(variant, family, table)?, table);
            let rules = chain_rules(targets, family, table);
            if current.is_exactly(table, &rules) {
                continue;
            }
            restore(variant, family, &render_install(table, &current, &rules))?;
            restored = true;
        }
    }
    Ok(restored)
}

/// Removes our jumps and chains from both families; never touches other rules.
pub(crate) fn teardown(variant: Variant, targets: &BypassTargets) -> Result<(), NodeError> {
    for (family, wanted) in families(targets) {
        for table in Table::ALL {
            let text = match save(variant, family, table) {
                Ok(text) => text,
                Err(e) if wanted => return Err(e),
                Err(_) => continue,
            };
            if let Some(input) = render_remove(table, &OurRules::parse(&text, table)) {
                restore(variant, family, &input)?;
            }
        }
    }
    // Leftovers of an instance that had picked the other variant.
    let _ = remove_from_other(variant);
    Ok(())
}

/// Whether an `iptables` binary is usable at all.
pub(crate) fn available() -> bool {
    run(FirewallBackend::Iptables, "iptables", &["-V"], None).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::Transport;

    fn targets(addrs: &[&str]) -> BypassTargets {
        let mut t = BypassTargets { v4: vec![], v6: vec![], ports: vec![(Transport::Udp, 53), (Transport::Tcp, 53)] };
        for a in addrs {
            match a.parse::<IpAddr>().unwrap() {
                IpAddr::V4(a) => t.v4.push(a),
                IpAddr::V6(a) => t.v6.push(a),
            }
        }
        t
    }

    #[test]
    fn raw_v4_rules() {
        let t = targets(&["10.96.0.10"]);
        assert_eq!(
            chain_rules(&t, Family::V4, Table::Raw),
            [
                "-A NODEDNS-PREROUTING -d 10.96.0.10/32 -p udp -m udp --dport 53 -m socket -j NOTRACK",
                "-A NODEDNS-PREROUTING -d 10.96.0.10/32 -p tcp -m tcp --dport 53 -m socket -j NOTRACK",
                "-A NODEDNS-OUTPUT -s 10.96.0.10/32 -p udp -m udp --sport 53 -m addrtype ! --dst-type LOCAL -j NOTRACK",
                "-A NODEDNS-OUTPUT -s 10.96.0.10/32 -p tcp -m tcp --sport 53 -m addrtype ! --dst-type LOCAL -j NOTRACK",
            ]
        );
        assert!(chain_rules(&t, Family::V6, Table::Raw).is_empty());
    }

    #[test]
    fn filter_v6_rules_with_admin() {
        let mut t = targets(&["10.96.0.10", "fd00::10"]);
        t.ports.push((Transport::Tcp, 8080));
        assert_eq!(
            chain_rules(&t, Family::V6, Table::Filter),
            [
                "-A NODEDNS-INPUT -d fd00::10/128 -p udp -m udp --dport 53 -j ACCEPT",
                "-A NODEDNS-INPUT -d fd00::10/128 -p tcp -m tcp --dport 53 -j ACCEPT",
                "-A NODEDNS-INPUT -d fd00::10/128 -p tcp -m tcp --dport 8080 -j ACCEPT",
                "-A NODEDNS-OUTPUT -s fd00::10/128 -p udp -m udp --sport 53 -j ACCEPT",
                "-A NODEDNS-OUTPUT -s fd00::10/128 -p tcp -m tcp --sport 53 -j ACCEPT",
                "-A NODEDNS-OUTPUT -s fd00::10/128 -p tcp -m tcp --sport 8080 -j ACCEPT",
            ]
        );
    }

    #[test]
    fn install_text_dual_stack_v4_raw() {
        let t = targets(&["169.254.20.10", "fd00::10"]);
        let rules = chain_rules(&t, Family::V4, Table::Raw);
        let text = render_install(Table::Raw, &OurRules::default(), &rules);
        assert_eq!(
            text,
            "*raw
:NODEDNS-PREROUTING - [0:0]
:NODEDNS-OUTPUT - [0:0]
-A NODEDNS-PREROUTING -d 169.254.20.10/32 -p udp -m udp --dport 53 -m socket -j NOTRACK
-A NODEDNS-PREROUTING -d 169.254.20.10/32 -p tcp -m tcp --dport 53 -m socket -j NOTRACK
-A NODEDNS-OUTPUT -s 169.254.20.10/32 -p udp -m udp --sport 53 -m addrtype ! --dst-type LOCAL -j NOTRACK
-A NODEDNS-OUTPUT -s 169.254.20.10/32 -p tcp -m tcp --sport 53 -m addrtype ! --dst-type LOCAL -j NOTRACK
-I PREROUTING 1 -m comment --comment nodedns -j NODEDNS-PREROUTING
-I OUTPUT 1 -m comment --comment nodedns -j NODEDNS-OUTPUT
COMMIT
"
        );
    }

    const SAVE_OK: &str = "# Generated by iptables-save v1.8.9 (nf_tables)
*raw
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:NODEDNS-OUTPUT - [0:0]
:NODEDNS-PREROUTING - [0:0]
-A PREROUTING -m comment --comment nodedns -j NODEDNS-PREROUTING
-A PREROUTING -d 10.0.0.1/32 -j CT --notrack
-A OUTPUT -m comment --comment nodedns -j NODEDNS-OUTPUT
-A NODEDNS-OUTPUT -s 10.96.0.10/32 -p udp -m udp --sport 53 -m addrtype ! --dst-type LOCAL -j NOTRACK
-A NODEDNS-OUTPUT -s 10.96.0.10/32 -p tcp -m tcp --sport 53 -m addrtype ! --dst-type LOCAL -j NOTRACK
-A NODEDNS-PREROUTING -d 10.96.0.10/32 -p udp -m udp --dport 53 -m socket -j NOTRACK
-A NODEDNS-PREROUTING -d 10.96.0.10/32 -p tcp -m tcp --dport 53 -m socket -j NOTRACK
COMMIT
";

    #[test]
    fn parse_present() {
        let t = targets(&["10.96.0.10"]);
        let ours = OurRules::parse(SAVE_OK, Table::Raw);
        assert_eq!(ours.jumps.len(), 2);
        assert!(ours.is_exactly(Table::Raw, &chain_rules(&t, Family::V4, Table::Raw)));
        // A different address set is drift.
        let other = targets(&["10.96.0.11"]);
        assert!(!ours.is_exactly(Table::Raw, &chain_rules(&other, Family::V4, Table::Raw)));
    }

    #[test]
    fn parse_absent() {
        let save = "*raw\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n-A PREROUTING -d 10.0.0.1/32 -j CT --notrack\nCOMMIT\n";
        let ours = OurRules::parse(save, Table::Raw);
        assert_eq!(ours, OurRules::default());
        assert!(render_remove(Table::Raw, &ours).is_none());
    }

    #[test]
    fn parse_duplicated_and_misplaced_jumps() {
        let save = SAVE_OK.replace(
            "-A PREROUTING -d 10.0.0.1/32 -j CT --notrack\n",
            "-A PREROUTING -d 10.0.0.1/32 -j CT --notrack\n-A PREROUTING -m comment --comment nodedns -j NODEDNS-PREROUTING\n-A PREROUTING -j NODEDNS-PREROUTING\n",
        );
        let ours = OurRules::parse(&save, Table::Raw);
        let pre: Vec<_> = ours.jumps.iter().filter(|j| j.0 == "PREROUTING").collect();
        assert_eq!(pre.len(), 3);
        assert_eq!((pre[1].1, pre[2].1), (3, 4));
        let t = targets(&["10.96.0.10"]);
        assert!(!ours.is_exactly(Table::Raw, &chain_rules(&t, Family::V4, Table::Raw)));
        let install = render_install(Table::Raw, &ours, &chain_rules(&t, Family::V4, Table::Raw));
        assert_eq!(install.matches("-D PREROUTING").count(), 3);
        assert!(install.contains("-D PREROUTING -j NODEDNS-PREROUTING\n"));
        assert_eq!(install.matches("-I PREROUTING 1").count(), 1);
        // Removal never names the foreign CT rule.
        let remove = render_remove(Table::Raw, &ours).unwrap();
        assert!(!remove.contains("10.0.0.1"));
        assert!(remove.contains("-X NODEDNS-PREROUTING"));
    }

    #[test]
    fn jump_not_first_is_drift() {
        let save = SAVE_OK.replace(
            "-A PREROUTING -m comment --comment nodedns -j NODEDNS-PREROUTING\n-A PREROUTING -d 10.0.0.1/32 -j CT --notrack\n",
            "-A PREROUTING -d 10.0.0.1/32 -j CT --notrack\n-A PREROUTING -m comment --comment nodedns -j NODEDNS-PREROUTING\n",
        );
        let t = targets(&["10.96.0.10"]);
        let ours = OurRules::parse(&save, Table::Raw);
        assert!(!ours.is_exactly(Table::Raw, &chain_rules(&t, Family::V4, Table::Raw)));
    }
}
