//! The nftables backend: one table, `inet nodedns`, owned entirely by nodedns.
//!
//! The whole table is replaced in one `nft -f -` transaction ("create if missing; delete;
//! define"), so a re-apply is atomic and can never leave two copies, and teardown is one
//! `delete table` that cannot touch anybody else's rules.

use std::fmt::Write;
use std::net::IpAddr;

use crate::command::run;
use crate::lease::{LEASE, SET_V4, SET_V6};
use crate::spec::BypassTargets;
use crate::{FirewallBackend, NodeError};

/// Family and name of our table. `inet` covers IPv4 and IPv6 in one table.
pub(crate) const TABLE: &str = "inet nodedns";

/// The conntrack-bypass ruleset, rendered as an `nft -f` transaction.
pub(crate) struct NotrackTable<'a> {
    targets: &'a BypassTargets,
}

impl<'a> NotrackTable<'a> {
    pub(crate) fn new(targets: &'a BypassTargets) -> Self {
        NotrackTable { targets }
    }

    fn v4_strings(&self) -> Vec<String> {
        self.targets.v4.iter().map(|a| a.to_string()).collect()
    }

    fn v6_strings(&self) -> Vec<String> {
        self.targets.v6.iter().map(|a| a.to_string()).collect()
    }

    /// One line per (family with addresses, port), naming the family's lease set.
    fn each_set(&self, f: &dyn Fn(&str, &str, &str, u16) -> String) -> String {
        let mut s = String::new();
        let fams = [("ip", SET_V4, !self.targets.v4.is_empty()), ("ip6", SET_V6, !self.targets.v6.is_empty())];
        for (fam, set, _) in fams.iter().filter(|f| f.2) {
            for &(proto, port) in &self.targets.ports {
                s.push_str("\t\t");
                s.push_str(&f(fam, set, proto.name(), port));
                s.push('\n');
            }
        }
        s
    }

    /// The full transaction text. The first two lines make the `delete` succeed whether or
    /// not the table exists (adding an existing table is a no-op), all in one transaction.
    pub(crate) fn render(&self) -> String {
        let addrs: Vec<IpAddr> = (self.targets.v4.iter().copied().map(IpAddr::V4))
            .chain(self.targets.v6.iter().copied().map(IpAddr::V6))
            .collect();
        let each = |f: &dyn Fn(&str, IpAddr, &str, u16) -> String| -> String {
            let mut s = String::new();
            for &addr in &addrs {
                let fam = if addr.is_ipv4() { "ip" } else { "ip6" };
                for &(proto, port) in &self.targets.ports {
                    s.push_str("\t\t");
                    s.push_str(&f(fam, addr, proto.name(), port));
                    s.push('\n');
                }
            }
            s
        };
        let mut out = String::new();
        writeln!(out, "table {TABLE}").unwrap();
        writeln!(out, "delete table {TABLE}").unwrap();
        writeln!(out, "table {TABLE} {{").unwrap();
        // The lease sets, created with fresh elements: whoever applies the table is alive.
        let lease = LEASE.as_millis();
        let sets = [(SET_V4, "ipv4_addr", self.v4_strings()), (SET_V6, "ipv6_addr", self.v6_strings())];
        for (set, ty, members) in sets.iter().filter(|s| !s.2.is_empty()) {
            let elements: Vec<String> = members.iter().map(|a| format!("{a} timeout {lease}ms")).collect();
            writeln!(
                out,
                "\tset {set} {{\n\t\ttype {ty}\n\t\tflags timeout\n\t\telements = {{ {} }}\n\t}}",
                elements.join(", ")
            )
            .unwrap();
        }
        // Requests from pods: NOTRACK only while a socket of ours is bound to the address.
        // The `socket` expression does not match when the lookup finds no socket, so when
        // nodedns dies (SIGKILL, OOM) the kernel closes its sockets and the very next packet
        // is tracked and DNATed by kube-proxy to kube-dns: fail-open without any cleanup
        // (kubernetes/dns#438). Priority raw (-300) runs before conntrack (-200).
        //  - UDP: `socket wildcard 0` = a socket bound to this exact address. A 0.0.0.0:53
        //    socket of another program (dnsmasq) must not count as "nodedns is alive".
        //  - TCP: `socket transparent 0` = any socket. `wildcard` cannot be used: it does not
        //    match request sockets (TCP_NEW_SYN_RECV), so the handshake's final ACK would be
        //    tracked, DNATed to kube-dns and answered with RST (seen in the lab). A foreign
        //    0.0.0.0:53 TCP listener would make our own bind fail with EADDRINUSE anyway.
        out.push_str("\tchain raw_prerouting {\n\t\ttype filter hook prerouting priority raw; policy accept;\n");
        out += &each(&|fam, addr, proto, port| {
            let socket = match proto {
                "udp" => "socket wildcard 0",
                _ => "socket transparent 0",
            };
            format!("{fam} daddr {addr} {proto} dport {port} {socket} notrack")
        });
        out.push_str("\t}\n");
        // Host-network clients (the host-client lease, see `lease.rs`): requests to our
        // addresses, and our replies to them, are NOTRACKed only while the address is in the
        // lease set, i.e. while a live nodedns renews it. When it dies the elements expire
        // within `LEASE` and host clients of the ClusterIP are DNATed by kube-proxy again.
        // Replies to pods (non-local destinations) are NOTRACKed unconditionally: their
        // requests were NOTRACKed in raw_prerouting, which only happens while we listen.
        out.push_str("\tchain raw_output {\n\t\ttype filter hook output priority raw; policy accept;\n");
        out += &self.each_set(&|fam, set, proto, port| format!("{fam} daddr @{set} {proto} dport {port} notrack"));
        out += &each(&|fam, addr, proto, port| {
            format!("{fam} saddr {addr} {proto} sport {port} fib daddr type != local notrack")
        });
        out += &self.each_set(&|fam, set, proto, port| {
            format!("{fam} saddr @{set} {proto} sport {port} fib daddr type local notrack")
        });
        out.push_str("\t}\n");
        // node-cache parity. Note: an nftables `accept` only ends *this* base chain; a drop in
        // another table's chain on the same hook still drops.
        out.push_str("\tchain filter_input {\n\t\ttype filter hook input priority filter; policy accept;\n");
        out += &each(&|fam, addr, proto, port| format!("{fam} daddr {addr} {proto} dport {port} accept"));
        out.push_str("\t}\n");
        out.push_str("\tchain filter_output {\n\t\ttype filter hook output priority filter; policy accept;\n");
        out += &each(&|fam, addr, proto, port| format!("{fam} saddr {addr} {proto} sport {port} accept"));
        out.push_str("\t}\n}\n");
        out
    }
}

/// The table as the kernel has it now (`nft -t list table`: terse, without set elements,
/// whose remaining timeouts change every millisecond), `None` if it does not exist.
fn list() -> Result<Option<String>, NodeError> {
    // `nft list tables` first, so "missing" is told apart from "nft failed" without parsing
    // error text.
    let tables = run(FirewallBackend::Nftables, "nft", &["list", "tables"], None)?;
    if !tables.lines().any(|l| l.trim() == format!("table {TABLE}")) {
        return Ok(None);
    }
    let listing = run(FirewallBackend::Nftables, "nft", &["-t", "list", "table", "inet", "nodedns"], None)?;
    Ok(Some(listing))
}

/// Installs (replaces) the table. Returns whether it was missing or differed before.
pub(crate) fn apply(targets: &BypassTargets) -> Result<bool, NodeError> {
    let before = list()?;
    run(FirewallBackend::Nftables, "nft", &["-f", "-"], Some(&NotrackTable::new(targets).render()))?;
    let after = list()?;
    Ok(before != after)
}

/// Deletes our table, if present. Nothing else is touched.
pub(crate) fn teardown() -> Result<(), NodeError> {
    let text = format!("table {TABLE}\ndelete table {TABLE}\n");
    run(FirewallBackend::Nftables, "nft", &["-f", "-"], Some(&text)).map(drop)
}

/// Whether kube-proxy runs in nftables mode here (it owns `table ip kube-proxy` and/or
/// `table ip6 kube-proxy`). `None` if `nft` itself is unusable.
pub(crate) fn kube_proxy_uses_nftables() -> Option<bool> {
    let tables = run(FirewallBackend::Nftables, "nft", &["list", "tables"], None).ok()?;
    Some(tables.lines().any(|l| {
        let l = l.trim();
        l == "table ip kube-proxy" || l == "table ip6 kube-proxy"
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::ValidSpec;
    use crate::{FirewallMode, InterfaceKind, NodeSetupSpec};

    fn targets(addrs: &[&str], admin: Option<u16>) -> BypassTargets {
        let spec = NodeSetupSpec {
            interface: "nodelocaldns".into(),
            interface_kind: InterfaceKind::Bridge,
            addresses: addrs.iter().map(|a| a.parse().unwrap()).collect(),
            firewall: FirewallMode::Nftables,
            dns_port: 53,
            admin_port: admin,
        };
        let ValidSpec { targets, .. } = spec.validate().unwrap();
        targets
    }

    #[test]
    fn v4() {
        let got = NotrackTable::new(&targets(&["10.96.0.10"], None)).render();
        let want = "\
table inet nodedns
delete table inet nodedns
table inet nodedns {
\tset host_v4 {
\t\ttype ipv4_addr
\t\tflags timeout
\t\telements = { 10.96.0.10 timeout 1500ms }
\t}
\tchain raw_prerouting {
\t\ttype filter hook prerouting priority raw; policy accept;
\t\tip daddr 10.96.0.10 udp dport 53 socket wildcard 0 notrack
\t\tip daddr 10.96.0.10 tcp dport 53 socket transparent 0 notrack
\t}
\tchain raw_output {
\t\ttype filter hook output priority raw; policy accept;
\t\tip daddr @host_v4 udp dport 53 notrack
\t\tip daddr @host_v4 tcp dport 53 notrack
\t\tip saddr 10.96.0.10 udp sport 53 fib daddr type != local notrack
\t\tip saddr 10.96.0.10 tcp sport 53 fib daddr type != local notrack
\t\tip saddr @host_v4 udp sport 53 fib daddr type local notrack
\t\tip saddr @host_v4 tcp sport 53 fib daddr type local notrack
\t}
\tchain filter_input {
\t\ttype filter hook input priority filter; policy accept;
\t\tip daddr 10.96.0.10 udp dport 53 accept
\t\tip daddr 10.96.0.10 tcp dport 53 accept
\t}
\tchain filter_output {
\t\ttype filter hook output priority filter; policy accept;
\t\tip saddr 10.96.0.10 udp sport 53 accept
\t\tip saddr 10.96.0.10 tcp sport 53 accept
\t}
}
";
        assert_eq!(got, want);
    }

    #[test]
    fn v6_with_admin_port() {
        let got = NotrackTable::new(&targets(&["fd00::10"], Some(8080))).render();
        let pre: Vec<&str> = got.lines().filter(|l| l.contains("dport") && l.contains("socket")).collect();
        assert_eq!(
            pre,
            [
                "\t\tip6 daddr fd00::10 udp dport 53 socket wildcard 0 notrack",
                "\t\tip6 daddr fd00::10 tcp dport 53 socket transparent 0 notrack",
                "\t\tip6 daddr fd00::10 tcp dport 8080 socket transparent 0 notrack",
            ]
        );
        assert!(got.contains("\t\tip6 saddr fd00::10 tcp sport 8080 accept\n"));
        assert!(got.contains("\t\tip6 daddr @host_v6 tcp dport 8080 notrack\n"));
        assert!(got.contains(
            "\tset host_v6 {\n\t\ttype ipv6_addr\n\t\tflags timeout\n\t\telements = { fd00::10 timeout 1500ms }\n\t}\n"
        ));
        assert!(!got.contains("host_v4"));
    }

    #[test]
    fn dual_stack_orders_v4_then_v6() {
        let got = NotrackTable::new(&targets(&["fd00::10", "169.254.20.10"], None)).render();
        let input: Vec<&str> = got.lines().filter(|l| l.ends_with("dport 53 accept")).collect();
        assert_eq!(
            input,
            [
                "\t\tip daddr 169.254.20.10 udp dport 53 accept",
                "\t\tip daddr 169.254.20.10 tcp dport 53 accept",
                "\t\tip6 daddr fd00::10 udp dport 53 accept",
                "\t\tip6 daddr fd00::10 tcp dport 53 accept",
            ]
        );
        // Per family and port: pod request, pod reply, host request, host reply.
        assert_eq!(got.matches("notrack").count(), 8 + 8);
        assert!(got.contains("elements = { 169.254.20.10 timeout 1500ms }"));
        assert!(got.contains("elements = { fd00::10 timeout 1500ms }"));
    }
}
