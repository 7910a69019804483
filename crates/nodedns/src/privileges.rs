//! Least privilege after start-up. The container starts with `NET_ADMIN` and `NET_BIND_SERVICE`
//! (and `NET_RAW` with iptables-legacy; deploy/base/daemonset.yaml). Once the DNS sockets are
//! bound and node setup has run, only what resync and teardown need is kept: `NET_ADMIN` (netlink
//! interface and addresses, nftables / iptables-nft) and `NET_RAW` if it was granted (iptables-
//! legacy's raw socket). Everything else, `NET_BIND_SERVICE` included, is dropped from the
//! effective, permitted, inheritable and ambient sets, and from the bounding set where
//! `CAP_SETPCAP` allows.
//!
//! This module is the policy (what to keep); the mechanism (every thread changed, exec'd
//! children held to the kept set by `no_new_privs`, the result verified per thread) is
//! [`nodedns_sys::caps`], with the rest of nodedns's `unsafe`.

pub use nodedns_sys::caps::{Capability, Dropped, PrivilegeError, keep_only};

/// The capabilities resync needs, as a mask: `NET_ADMIN` always, `NET_RAW` too (kept only if the
/// process was granted it: iptables-legacy).
pub fn resync_capabilities() -> u64 {
    Capability::NetAdmin.bit() | Capability::NetRaw.bit()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resync_keeps_net_admin_and_net_raw_only() {
        assert_eq!(resync_capabilities(), 1 << 12 | 1 << 13);
        assert_eq!(resync_capabilities() & Capability::NetBindService.bit(), 0);
    }
}
