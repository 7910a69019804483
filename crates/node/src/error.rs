//! Errors of node setup, typed by which part of the node the caller must look at.

use std::io;

use crate::FirewallBackend;

/// Why node setup failed. Netlink errors are boxed: `rtnetlink::Error` can hold a whole
/// netlink message, which would make every `Result` in this crate large.
/// [`NodeError::kind`] gives a short, fixed label for metrics
/// (never the message: it carries kernel/tool text, which is unbounded).
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The spec from the binary is unusable; fix the configuration, retrying cannot help.
    #[error("invalid node setup spec: {0}")]
    InvalidSpec(String),

    /// The netlink route socket could not be opened (not root / no CAP_NET_ADMIN?).
    #[error("cannot open netlink route socket: {0}")]
    NetlinkSocket(#[source] io::Error),

    /// Creating, finding, bringing up or deleting the interface failed.
    #[error("interface {interface}: {operation} failed: {source}")]
    Interface {
        interface: String,
        operation: &'static str,
        #[source]
        source: Box<rtnetlink::Error>,
    },

    /// The kernel refused the link kind (e.g. `dummy` is not built in); the operator must
    /// choose another `interface_kind`.
    #[error("interface {interface}: the kernel does not support link kind {kind}")]
    UnsupportedKind { interface: String, kind: &'static str },

    /// Adding or listing an address on our interface failed.
    #[error("address {address} on {interface}: {operation} failed: {source}")]
    Address {
        interface: String,
        address: std::net::IpAddr,
        operation: &'static str,
        #[source]
        source: Box<rtnetlink::Error>,
    },

    /// A firewall tool could not be run or rejected our rules. Retrying at the next resync
    /// may help (xtables lock, a concurrent writer); a missing tool will not.
    #[error("{backend} firewall: {detail}")]
    Firewall { backend: FirewallBackend, detail: String },

    /// Renewing the host-client lease (nf_tables set elements over netlink) failed. The next
    /// resync recreates the table and its sets; a persistent failure means host-network
    /// clients of the ClusterIP go through kube-proxy to kube-dns (uncached, still answered).
    #[error("host-client lease: {0}")]
    Lease(String),

    /// `FirewallMode::Auto` found neither a working `nft` nor a working `iptables`.
    #[error("no usable firewall tool found (tried nft and iptables): {0}")]
    NoFirewallTool(String),
}

impl NodeError {
    /// Every label [`NodeError::kind`] returns, so the counter can show each at 0 from the start
    /// (an alert on `increase()` cannot see a series whose first sample is already 1).
    pub const KINDS: &'static [&'static str] =
        &["spec", "interface", "interface_kind", "address", "iptables", "nftables", "firewall_tool", "host_lease"];

    /// Whether this is about the firewall rules only: the interface and addresses are in place
    /// and DNS is served on them, without the conntrack bypass.
    pub fn is_firewall(&self) -> bool {
        matches!(self, NodeError::Firewall { .. } | NodeError::NoFirewallTool(_) | NodeError::Lease(_))
    }

    /// A label from a small fixed set, for the setup-error counter.
    pub fn kind(&self) -> &'static str {
        match self {
            NodeError::InvalidSpec(_) => "spec",
            NodeError::NetlinkSocket(_) | NodeError::Interface { .. } => "interface",
            NodeError::UnsupportedKind { .. } => "interface_kind",
            NodeError::Address { .. } => "address",
            NodeError::Firewall { backend: FirewallBackend::Iptables, .. } => "iptables",
            NodeError::Firewall { backend: FirewallBackend::Nftables, .. } => "nftables",
            NodeError::NoFirewallTool(_) => "firewall_tool",
            NodeError::Lease(_) => "host_lease",
        }
    }
}
