//! What the binary asks for, and its validation into types that cannot be wrong.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::NodeError;

/// The node setup the binary asks for (already parsed from config).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSetupSpec {
    /// Name of the local interface holding the listen addresses, e.g. `nodelocaldns`.
    pub interface: String,
    /// Link kind to create when the interface is missing.
    pub interface_kind: InterfaceKind,
    /// Listen addresses; each is added as a host address (/32 or /128).
    pub addresses: Vec<IpAddr>,
    /// Which firewall tool installs the conntrack-bypass rules.
    pub firewall: FirewallMode,
    /// DNS port (UDP and TCP), normally 53.
    pub dns_port: u16,
    /// Admin (health/metrics) TCP port on the same addresses, also bypassing conntrack.
    pub admin_port: Option<u16>,
}

/// Link kind of the local interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InterfaceKind {
    /// `dummy`: what node-cache uses; needs CONFIG_DUMMY.
    Dummy,
    /// `bridge` with no ports: for kernels without `dummy` (some sandboxes, this CI kernel).
    Bridge,
}

impl InterfaceKind {
    pub(crate) fn name(self) -> &'static str {
        match self {
            InterfaceKind::Dummy => "dummy",
            InterfaceKind::Bridge => "bridge",
        }
    }
}

/// Which firewall tool to use, as configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FirewallMode {
    /// Probe the node; see [`crate::NodeSetup::new`] for the rule.
    Auto,
    Iptables,
    Nftables,
    /// Install no rules (the operator manages them).
    None,
}

/// The firewall tool actually in use after resolving [`FirewallMode::Auto`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FirewallBackend {
    /// `iptables`/`ip6tables` (`-save`/`-restore`), whichever backend (legacy or nf_tables)
    /// the node's `iptables` binary uses.
    Iptables,
    /// `nft`, with one table `inet nodedns`.
    Nftables,
}

impl std::fmt::Display for FirewallBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FirewallBackend::Iptables => "iptables",
            FirewallBackend::Nftables => "nftables",
        })
    }
}

/// A Linux interface name: 1..=15 bytes (IFNAMSIZ 16 with the NUL) of `[a-zA-Z0-9_.-]`.
/// The character set is narrower than the kernel's on purpose: the name never needs quoting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceName(String);

impl InterfaceName {
    pub fn parse(name: &str) -> Result<Self, String> {
        if name.is_empty() || name.len() > 15 {
            return Err(format!("interface {name:?}: must be 1 to 15 characters"));
        }
        if !name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-')) {
            return Err(format!("interface {name:?}: only [a-zA-Z0-9_.-] allowed"));
        }
        if name == "." || name == ".." {
            return Err(format!("interface {name:?}: not a valid name"));
        }
        Ok(InterfaceName(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Transport protocol of a bypassed port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transport {
    Udp,
    Tcp,
}

impl Transport {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
        }
    }
}

/// The validated addresses and ports the firewall rules are generated from.
/// Only typed values live here, so the rule text generated from it needs no escaping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BypassTargets {
    pub v4: Vec<Ipv4Addr>,
    pub v6: Vec<Ipv6Addr>,
    /// (transport, port) pairs: UDP+TCP DNS, then TCP admin.
    pub ports: Vec<(Transport, u16)>,
}

/// [`NodeSetupSpec`] after validation.
#[derive(Debug, Clone)]
pub(crate) struct ValidSpec {
    pub interface: InterfaceName,
    pub interface_kind: InterfaceKind,
    pub targets: BypassTargets,
    pub firewall: FirewallMode,
}

impl NodeSetupSpec {
    /// Validates, reporting every problem at once.
    pub(crate) fn validate(&self) -> Result<ValidSpec, NodeError> {
        let mut problems = Vec::new();
        let interface = InterfaceName::parse(&self.interface).map_err(|p| problems.push(p)).ok();
        if self.addresses.is_empty() {
            problems.push("addresses: at least one address is required".to_owned());
        }
        let (mut v4, mut v6) = (Vec::new(), Vec::new());
        for addr in &self.addresses {
            let bad = addr.is_unspecified() || addr.is_multicast() || addr.is_loopback();
            if bad {
                problems.push(format!("addresses: {addr} is not a unicast service address"));
                continue;
            }
            // Duplicates would make the "exactly one copy of each rule" check ambiguous.
            match addr {
                IpAddr::V4(a) if !v4.contains(a) => v4.push(*a),
                IpAddr::V6(a) if !v6.contains(a) => v6.push(*a),
                _ => problems.push(format!("addresses: {addr} listed twice")),
            }
        }
        if self.dns_port == 0 {
            problems.push("dns_port: must not be 0".to_owned());
        }
        let mut ports = vec![(Transport::Udp, self.dns_port), (Transport::Tcp, self.dns_port)];
        match self.admin_port {
            Some(0) => problems.push("admin_port: must not be 0".to_owned()),
            Some(p) if p == self.dns_port => problems.push(format!("admin_port: {p} is the same as dns_port")),
            Some(p) => ports.push((Transport::Tcp, p)),
            None => {}
        }
        match interface {
            Some(interface) if problems.is_empty() => Ok(ValidSpec {
                interface,
                interface_kind: self.interface_kind,
                targets: BypassTargets { v4, v6, ports },
                firewall: self.firewall,
            }),
            _ => Err(NodeError::InvalidSpec(problems.join("; "))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn spec(addrs: &[&str]) -> NodeSetupSpec {
        NodeSetupSpec {
            interface: "nodelocaldns".into(),
            interface_kind: InterfaceKind::Bridge,
            addresses: addrs.iter().map(|a| a.parse().unwrap()).collect(),
            firewall: FirewallMode::Nftables,
            dns_port: 53,
            admin_port: Some(8080),
        }
    }

    #[test]
    fn interface_names() {
        assert!(InterfaceName::parse("nodelocaldns").is_ok());
        assert!(InterfaceName::parse("a.b_c-1").is_ok());
        assert!(InterfaceName::parse("123456789012345").is_ok());
        assert!(InterfaceName::parse("1234567890123456").is_err());
        assert!(InterfaceName::parse("").is_err());
        assert!(InterfaceName::parse("eth0; rm").is_err());
        assert!(InterfaceName::parse("a/b").is_err());
        assert!(InterfaceName::parse("..").is_err());
    }

    #[test]
    fn valid_dual_stack() {
        let v = spec(&["169.254.20.10", "10.96.0.10", "fd00::10"]).validate().unwrap();
        assert_eq!(v.targets.v4.len(), 2);
        assert_eq!(v.targets.v6.len(), 1);
        assert_eq!(v.targets.ports, vec![(Transport::Udp, 53), (Transport::Tcp, 53), (Transport::Tcp, 8080)]);
    }

    #[test]
    fn reports_every_problem() {
        let mut s = spec(&["0.0.0.0", "10.0.0.1", "10.0.0.1", "ff02::1"]);
        s.interface = "way-too-long-interface".into();
        s.admin_port = Some(53);
        let NodeError::InvalidSpec(msg) = s.validate().unwrap_err() else { panic!() };
        for needle in ["interface", "0.0.0.0", "listed twice", "ff02::1", "admin_port"] {
            assert!(msg.contains(needle), "{needle} missing from {msg}");
        }
    }

    #[test]
    fn needs_an_address() {
        assert!(spec(&[]).validate().is_err());
    }
}
