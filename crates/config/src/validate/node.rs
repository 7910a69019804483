//! `node`.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use super::Validator;
use crate::NodeConfig;
use crate::raw::{RawFirewall, RawInterfaceKind, RawNode};

impl Validator<'_> {
    /// Also adds each node address on `node.dns_port` to `listen`.
    pub(super) fn node(&mut self, n: &RawNode, listen: &mut Vec<SocketAddr>) -> NodeConfig {
        if let Err(e) = nodedns_node::InterfaceName::parse(&n.interface) {
            self.problem("node.interface", e);
        }
        let mut addresses = Vec::new();
        for (i, a) in n.addresses.iter().enumerate() {
            match a.trim().parse::<IpAddr>() {
                Ok(ip) if !addresses.contains(&ip) => addresses.push(ip),
                Ok(_) => self.problem(&format!("node.addresses[{i}]"), format!("`{a}` is listed twice")),
                Err(_) => self.problem(&format!("node.addresses[{i}]"), format!("`{a}` is not an IP address")),
            }
        }
        if n.addresses.is_empty() {
            self.problem("node.addresses", "at least one address is required");
        }
        let resync = self.range("node.resync_interval_secs", n.resync_interval_secs, 1, 3600);
        if n.dns_port == 0 {
            self.problem("node.dns_port", "must not be 0");
        }
        for ip in &addresses {
            let a = SocketAddr::new(*ip, n.dns_port);
            if !listen.contains(&a) {
                listen.push(a);
            }
        }
        NodeConfig {
            interface: n.interface.clone(),
            interface_kind: match n.interface_kind {
                RawInterfaceKind::Dummy => nodedns_node::InterfaceKind::Dummy,
                RawInterfaceKind::Bridge => nodedns_node::InterfaceKind::Bridge,
            },
            addresses,
            firewall: match n.firewall {
                RawFirewall::Auto => nodedns_node::FirewallMode::Auto,
                RawFirewall::Iptables => nodedns_node::FirewallMode::Iptables,
                RawFirewall::Nftables => nodedns_node::FirewallMode::Nftables,
                RawFirewall::None => nodedns_node::FirewallMode::None,
            },
            resync_interval: Duration::from_secs(resync as u64),
            teardown_on_exit: n.teardown_on_exit,
            dns_port: n.dns_port,
        }
    }
}
