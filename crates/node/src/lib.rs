//! Node setup for nodedns: the local interface with the listen addresses (rtnetlink) and
//! the conntrack-bypass firewall rules (nftables or iptables).
//!
//! # Fail-open: the rules only bypass conntrack while nodedns is alive
//!
//! node-cache NOTRACKs every packet to its addresses unconditionally. Because that NOTRACK
//! is also what keeps kube-proxy's DNAT away from the kube-dns ClusterIP, a node-cache killed
//! without cleanup (SIGKILL, OOM of the container) blackholes the node's DNS
//! (kubernetes/dns#438). Here the *request* NOTRACK in raw PREROUTING is conditional on a
//! local socket existing for the packet (nft `socket`, iptables `-m socket`). The kernel
//! closes a dead process's sockets, so the next packet is tracked and kube-proxy's nat
//! PREROUTING DNAT sends it to a kube-dns pod; when nodedns binds again, NOTRACK resumes.
//! Measured on kernel 6.18 in a netns lab (pod → ClusterIP, UDP and TCP, IPv4 and IPv6, both
//! backends): answers came from nodedns while it ran, from the DNAT target 0.2 s after
//! SIGKILL, and from nodedns again right after restart.
//!
//! ## Host-network clients: a lease, renewed while nodedns lives (nftables backend)
//!
//! The request NOTRACK cannot be made conditional on a listener in OUTPUT: xt_socket is
//! rejected there (EINVAL), and nft `socket` in OUTPUT inspects the *sending* socket
//! (`skb->sk`), not a listener (lab: a connected TCP client matched `socket wildcard 0`, an
//! unconnected UDP client did not). Instead, with the nftables backend, raw OUTPUT NOTRACKs
//! requests to (and our replies to) host-network clients only while the destination address
//! is in a set whose elements time out after [`LEASE`] (1.5 s) unless renewed; a live nodedns
//! renews them every [`RENEW_EVERY`] (0.5 s) over netlink ([`HostClientLease`]). After a
//! SIGKILL the elements expire and host clients of the ClusterIP are DNATed by kube-proxy to
//! kube-dns within 1.5 s (measured in `tests/e2e/node.rs`).
//!
//! With the iptables backend there is no lease: iptables has no per-element timeouts of its
//! own (only through ipset, an extra tool and kernel module we do not require), so no
//! request NOTRACK is installed in OUTPUT: host-network clients of a ClusterIP are DNATed by
//! kube-proxy to kube-dns (always fail-open, but uncached), and host clients of a
//! non-service address (169.254.20.10) reach nodedns with tracked packets; replies to local
//! clients stay tracked too.
//!
//! # Capabilities
//!
//! CAP_NET_ADMIN (netlink, nft, iptables-nft) and CAP_NET_BIND_SERVICE (port 53). The
//! iptables *legacy* variant also needs CAP_NET_RAW (see `iptables.rs`); nftables and
//! iptables-nft do not.
//!
//! Established TCP connections do not survive a switch in either direction (their packets
//! suddenly go to the other server, which answers RST); DNS clients retry.

#![forbid(unsafe_code)]

mod command;
mod error;
mod iptables;
mod lease;
mod link;
mod nft;
mod spec;

use std::net::IpAddr;
use std::sync::Mutex;

pub use error::NodeError;
pub use iptables::Variant as IptablesVariant;
pub use lease::{HostClientLease, LEASE, RENEW_EVERY};
pub use spec::{FirewallBackend, FirewallMode, InterfaceKind, InterfaceName, NodeSetupSpec};

use link::LocalInterface;
use spec::ValidSpec;

/// [`FirewallMode::Auto`]'s choice (see [`NodeSetup::new`]).
fn detect_backend() -> Result<FirewallBackend, NodeError> {
    match nft::kube_proxy_uses_nftables() {
        Some(true) => Ok(FirewallBackend::Nftables),
        nft_usable => {
            if iptables::available() {
                Ok(FirewallBackend::Iptables)
            } else if nft_usable.is_some() {
                Ok(FirewallBackend::Nftables)
            } else {
                Err(NodeError::NoFirewallTool("`nft list tables` and `iptables -V` both failed".to_owned()))
            }
        }
    }
}

/// What [`NodeSetup::apply`] had to (re)create; all-zero on a node already in shape.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Repairs {
    /// The interface was missing and was created.
    pub interface_created: bool,
    /// How many listen addresses were missing and were added.
    pub addresses_added: usize,
    /// The firewall rules were missing or differed and were rewritten.
    pub rules_restored: bool,
}

impl Repairs {
    /// Whether anything had to be done.
    pub fn any(&self) -> bool {
        self.interface_created || self.addresses_added > 0 || self.rules_restored
    }
}

/// The node's nodedns interface, addresses and firewall rules, as configured.
#[derive(Debug)]
pub struct NodeSetup {
    spec: ValidSpec,
    /// The backend in use: the configured one, or for [`FirewallMode::Auto`] the one probing
    /// found. `None` for [`FirewallMode::None`], and for `Auto` while no tool works yet (probed
    /// again on every apply: a missing or failing tool must not take DNS away, see
    /// [`NodeSetup::new`]).
    firewall: Mutex<Option<FirewallBackend>>,
    /// The iptables variant the last apply used (re-detected on every apply; see
    /// `iptables.rs`). `None` before the first apply and for the nftables backend.
    iptables_variant: Mutex<Option<IptablesVariant>>,
}

impl NodeSetup {
    /// Validates the spec and resolves the firewall backend.
    ///
    /// [`FirewallMode::Auto`] picks, in order:
    /// 1. nftables if kube-proxy runs in nftables mode (`table ip kube-proxy` or
    ///    `table ip6 kube-proxy` exists): such nodes may have no iptables at all;
    /// 2. iptables if `iptables -V` works: kube-proxy's iptables mode (or anything else
    ///    iptables-based) then sees our filter ACCEPTs in the same chains, as with node-cache;
    /// 3. nftables if `nft` works.
    ///
    /// When neither tool works (missing from the image, failing, a held lock), the backend
    /// stays unresolved and every [`NodeSetup::apply`] probes again, failing with
    /// [`NodeError::NoFirewallTool`] after setting up the interface and addresses: DNS is served
    /// without the rules meanwhile. Only an invalid spec is an error here.
    ///
    /// Either backend's raw-priority NOTRACK works alongside the other's rules (both run
    /// before conntrack), so a wrong guess costs consistency, not correctness.
    ///
    /// Probing runs `nft`/`iptables` on the calling thread, i.e. in its network namespace.
    pub fn new(spec: NodeSetupSpec) -> Result<NodeSetup, NodeError> {
        let spec = spec.validate()?;
        let firewall = match spec.firewall {
            FirewallMode::None => None,
            FirewallMode::Iptables => Some(FirewallBackend::Iptables),
            FirewallMode::Nftables => Some(FirewallBackend::Nftables),
            FirewallMode::Auto => detect_backend().ok(),
        };
        Ok(NodeSetup { spec, firewall: Mutex::new(firewall), iptables_variant: Mutex::new(None) })
    }

    /// The firewall backend in use (`None` for [`FirewallMode::None`], and for
    /// [`FirewallMode::Auto`] until a tool works).
    pub fn firewall_backend(&self) -> Option<FirewallBackend> {
        *self.firewall.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The backend to apply rules with: `Ok(None)` for no rules at all
    /// ([`FirewallMode::None`]); for an unresolved `Auto`, probes again.
    fn backend_for_apply(&self) -> Result<Option<FirewallBackend>, NodeError> {
        let mut current = self.firewall.lock().unwrap_or_else(|p| p.into_inner());
        if current.is_none() && self.spec.firewall == FirewallMode::Auto {
            let found = detect_backend()?;
            tracing::info!(firewall = %found, "firewall tool found");
            *current = Some(found);
        }
        Ok(*current)
    }

    /// The iptables variant in use (`None` before the first apply, or with nftables).
    pub fn iptables_variant(&self) -> Option<IptablesVariant> {
        *self.iptables_variant.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Detects kube-proxy's iptables variant; on a change (or the first apply) removes our
    /// rules from the other variant, so they never exist twice.
    fn iptables_variant_for_apply(&self) -> Result<IptablesVariant, NodeError> {
        let variant = IptablesVariant::detect()?;
        let mut last = self.iptables_variant.lock().unwrap_or_else(|p| p.into_inner());
        if *last != Some(variant) {
            if let Err(e) = iptables::remove_from_other(variant) {
                tracing::warn!(error = %e, "removing our rules from the other iptables variant failed");
            }
            tracing::info!(variant = variant.name(), "iptables variant (kube-proxy's, or the node default)");
            *last = Some(variant);
        }
        Ok(variant)
    }

    /// The host-client lease (see the crate docs), for the nftables backend; `None` for
    /// the others. Opens a netlink socket on the calling thread (its network namespace).
    /// Renew it every [`RENEW_EVERY`] while serving; stop renewing when no longer serving.
    pub fn host_client_lease(&self) -> Option<Result<HostClientLease, NodeError>> {
        match self.firewall_backend() {
            Some(FirewallBackend::Nftables) => Some(HostClientLease::new(&self.spec.targets)),
            _ => None,
        }
    }

    /// The interface name.
    pub fn interface(&self) -> &InterfaceName {
        &self.spec.interface
    }

    fn addresses(&self) -> Vec<IpAddr> {
        let t = &self.spec.targets;
        t.v4.iter().copied().map(IpAddr::V4).chain(t.v6.iter().copied().map(IpAddr::V6)).collect()
    }

    fn local_interface(&self) -> LocalInterface<'_> {
        LocalInterface { name: &self.spec.interface, kind: self.spec.interface_kind }
    }

    /// Opens a route-netlink connection. The socket is created on the calling thread, so it
    /// lives in that thread's network namespace wherever the connection task later runs.
    fn netlink() -> Result<rtnetlink::Handle, NodeError> {
        let (connection, handle, _) = rtnetlink::new_connection().map_err(NodeError::NetlinkSocket)?;
        tokio::spawn(connection);
        Ok(handle)
    }

    /// Brings the node to the configured state: interface up with every address, firewall
    /// rules installed. Idempotent; call it at start and on every resync. Addresses come
    /// before rules, so NOTRACK never points at an address that is not local yet.
    pub async fn apply(&self) -> Result<Repairs, NodeError> {
        let handle = Self::netlink()?;
        let iface = self.local_interface();
        let (index, interface_created) = iface.ensure_up(&handle).await?;
        let addresses_added = iface.ensure_addresses(&handle, index, &self.addresses()).await?;
        let rules_restored = match self.backend_for_apply()? {
            None => false,
            Some(FirewallBackend::Nftables) => nft::apply(&self.spec.targets)?,
            Some(FirewallBackend::Iptables) => iptables::apply(self.iptables_variant_for_apply()?, &self.spec.targets)?,
        };
        let repairs = Repairs { interface_created, addresses_added, rules_restored };
        if repairs.any() {
            tracing::info!(?repairs, interface = self.spec.interface.as_str(), "node setup repaired");
        }
        Ok(repairs)
    }

    /// Removes what nodedns installs — rules first (so no NOTRACK outlives the addresses),
    /// then the interface with its addresses. Never touches other rules. Only call it when
    /// no other nodedns instance on the node still serves (rolling update).
    pub async fn teardown(&self) -> Result<(), NodeError> {
        match self.firewall_backend() {
            None => {}
            Some(FirewallBackend::Nftables) => nft::teardown()?,
            Some(FirewallBackend::Iptables) => {
                let last = *self.iptables_variant.lock().unwrap_or_else(|p| p.into_inner());
                let variant = match last {
                    Some(v) => v,
                    None => IptablesVariant::detect()?,
                };
                iptables::teardown(variant, &self.spec.targets)?
            }
        }
        let handle = Self::netlink()?;
        self.local_interface().delete(&handle).await
    }
}
