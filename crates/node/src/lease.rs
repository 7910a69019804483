//! The host-client lease: NOTRACK for host-network clients, valid only while nodedns renews it.
//!
//! Requests from host-network clients leave through raw OUTPUT, where no "is a nodedns socket
//! listening?" test exists (see the crate docs). Instead, `inet nodedns` holds two sets,
//! `host_v4` / `host_v6`, of our addresses with a per-element timeout of [`LEASE`], and raw
//! OUTPUT NOTRACKs requests to an address only while it is in the set. A live nodedns renews
//! the elements every [`RENEW_EVERY`]; when it dies (SIGKILL, OOM) nobody renews them, they
//! expire within [`LEASE`], and host clients of the kube-dns ClusterIP are tracked — and
//! DNATed by kube-proxy to kube-dns — again.
//!
//! Renewal is one nfnetlink batch (a few hundred bytes, no process spawned): per set
//! `NEWSETELEM; DELSETELEM; NEWSETELEM` in one transaction. The first add makes the element
//! exist (a no-op if it does), the delete and the second add replace it with a fresh timeout.
//! Plain re-adding an existing element does not restart its timeout on kernels before 6.10,
//! and a lone delete fails the whole batch when the element has already expired; the triple is
//! atomic (the element is never absent in between) and works on every kernel with set
//! timeouts (4.1+).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Duration;

use nix::sys::socket::{
    AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType, bind, recv, send, setsockopt, socket,
    sockopt,
};
use nix::sys::time::TimeVal;

use crate::NodeError;
use crate::spec::BypassTargets;

/// How long an element lives unless renewed: the upper bound on how long host-network clients
/// keep being NOTRACKed (and so miss kube-proxy's DNAT) after nodedns died.
pub const LEASE: Duration = Duration::from_millis(1500);

/// How often a live nodedns renews: three renewals per lease, so two may be late or lost.
pub const RENEW_EVERY: Duration = Duration::from_millis(500);

/// Our table's name (family `inet`, see `nft.rs`) and the set names.
const TABLE: &str = "nodedns";
pub(crate) const SET_V4: &str = "host_v4";
pub(crate) const SET_V6: &str = "host_v6";

// Netlink / nfnetlink / nf_tables constants (linux/netlink.h, linux/netfilter/nfnetlink.h,
// linux/netfilter/nf_tables.h).
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_CREATE: u16 = 0x400;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_DELSETELEM: u16 = 14;
const NFPROTO_UNSPEC: u8 = 0;
const NFPROTO_INET: u8 = 1;
const NLA_F_NESTED: u16 = 0x8000;
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_TIMEOUT: u16 = 4;
const NFTA_DATA_VALUE: u16 = 1;

/// A netlink message under construction; attributes are appended with their padding.
struct Msg(Vec<u8>);

impl Msg {
    /// nlmsghdr (length patched in [`Msg::finish`]) + nfgenmsg.
    fn new(ty: u16, flags: u16, seq: u32, family: u8, res_id: u16) -> Msg {
        let mut b = Vec::with_capacity(256);
        b.extend_from_slice(&0u32.to_ne_bytes());
        b.extend_from_slice(&ty.to_ne_bytes());
        b.extend_from_slice(&flags.to_ne_bytes());
        b.extend_from_slice(&seq.to_ne_bytes());
        b.extend_from_slice(&0u32.to_ne_bytes());
        b.push(family);
        b.push(0); // NFNETLINK_V0
        b.extend_from_slice(&res_id.to_be_bytes());
        Msg(b)
    }

    fn attr(&mut self, ty: u16, payload: &[u8]) {
        self.0.extend_from_slice(&((4 + payload.len()) as u16).to_ne_bytes());
        self.0.extend_from_slice(&ty.to_ne_bytes());
        self.0.extend_from_slice(payload);
        self.pad();
    }

    fn attr_str(&mut self, ty: u16, s: &str) {
        let mut v = s.as_bytes().to_vec();
        v.push(0);
        self.attr(ty, &v);
    }

    /// Opens a nested attribute; returns its offset for [`Msg::end_nest`].
    fn begin_nest(&mut self, ty: u16) -> usize {
        let at = self.0.len();
        self.0.extend_from_slice(&0u16.to_ne_bytes());
        self.0.extend_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
        at
    }

    fn end_nest(&mut self, at: usize) {
        let len = (self.0.len() - at) as u16;
        self.0[at..at + 2].copy_from_slice(&len.to_ne_bytes());
    }

    fn pad(&mut self) {
        while !self.0.len().is_multiple_of(4) {
            self.0.push(0);
        }
    }

    fn finish(mut self, out: &mut Vec<u8>) {
        let len = self.0.len() as u32;
        self.0[0..4].copy_from_slice(&len.to_ne_bytes());
        out.extend_from_slice(&self.0);
    }
}

/// One set-element message (add or delete) for every address of one family.
fn setelem(ty: u16, seq: u32, set: &str, keys: &[Vec<u8>], timeout: Option<Duration>) -> Msg {
    let flags = NLM_F_REQUEST | NLM_F_ACK | if ty == NFT_MSG_NEWSETELEM { NLM_F_CREATE } else { 0 };
    let mut m = Msg::new((NFNL_SUBSYS_NFTABLES << 8) | ty, flags, seq, NFPROTO_INET, 0);
    m.attr_str(NFTA_SET_ELEM_LIST_TABLE, TABLE);
    m.attr_str(NFTA_SET_ELEM_LIST_SET, set);
    let list = m.begin_nest(NFTA_SET_ELEM_LIST_ELEMENTS);
    for key in keys {
        let elem = m.begin_nest(NFTA_LIST_ELEM);
        let k = m.begin_nest(NFTA_SET_ELEM_KEY);
        m.attr(NFTA_DATA_VALUE, key);
        m.end_nest(k);
        if let Some(t) = timeout {
            // Milliseconds, big-endian (nf_tables converts with be64_to_cpu + msecs_to_jiffies).
            m.attr(NFTA_SET_ELEM_TIMEOUT, &(t.as_millis() as u64).to_be_bytes());
        }
        m.end_nest(elem);
    }
    m.end_nest(list);
    m
}

/// The renewal transaction for the given addresses: batch begin, per non-empty family
/// add/delete/add, batch end. Returns the bytes and how many messages ask for an ACK.
fn renewal(v4: &[Ipv4Addr], v6: &[Ipv6Addr], seq: u32) -> (Vec<u8>, usize) {
    let mut out = Vec::new();
    let mut acks = 0;
    let mut seq = seq;
    let mut next = || {
        seq = seq.wrapping_add(1);
        seq
    };
    Msg::new(NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, next(), NFPROTO_UNSPEC, NFNL_SUBSYS_NFTABLES).finish(&mut out);
    let families: [(&str, Vec<Vec<u8>>); 2] = [
        (SET_V4, v4.iter().map(|a| a.octets().to_vec()).collect()),
        (SET_V6, v6.iter().map(|a| a.octets().to_vec()).collect()),
    ];
    for (set, keys) in families.iter().filter(|(_, k)| !k.is_empty()) {
        setelem(NFT_MSG_NEWSETELEM, next(), set, keys, Some(LEASE)).finish(&mut out);
        setelem(NFT_MSG_DELSETELEM, next(), set, keys, None).finish(&mut out);
        setelem(NFT_MSG_NEWSETELEM, next(), set, keys, Some(LEASE)).finish(&mut out);
        acks += 3;
    }
    Msg::new(NFNL_MSG_BATCH_END, NLM_F_REQUEST, next(), NFPROTO_UNSPEC, NFNL_SUBSYS_NFTABLES).finish(&mut out);
    (out, acks)
}

/// The host-client lease of one node setup: renew it every [`RENEW_EVERY`] while serving.
#[derive(Debug)]
pub struct HostClientLease {
    v4: Vec<Ipv4Addr>,
    v6: Vec<Ipv6Addr>,
    /// A NETLINK_NETFILTER socket, opened on the creating thread (so in its network
    /// namespace) and kept: renewing must not depend on opening sockets.
    sock: OwnedFd,
    seq: u32,
}

impl HostClientLease {
    pub(crate) fn new(targets: &BypassTargets) -> Result<HostClientLease, NodeError> {
        let err = |what: &str, e: nix::Error| NodeError::Lease(format!("{what}: {e}"));
        let sock =
            socket(AddressFamily::Netlink, SockType::Raw, SockFlag::SOCK_CLOEXEC, SockProtocol::NetlinkNetFilter)
                .map_err(|e| err("netlink socket", e))?;
        bind(sock.as_raw_fd(), &NetlinkAddr::new(0, 0)).map_err(|e| err("netlink bind", e))?;
        // Bounded: a renewal must never hang the renewing thread.
        setsockopt(&sock, sockopt::ReceiveTimeout, &TimeVal::new(1, 0)).map_err(|e| err("SO_RCVTIMEO", e))?;
        Ok(HostClientLease { v4: targets.v4.clone(), v6: targets.v6.clone(), sock, seq: std::process::id() << 16 })
    }

    /// The addresses covered.
    pub fn addresses(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.v4.iter().copied().map(IpAddr::V4).chain(self.v6.iter().copied().map(IpAddr::V6))
    }

    /// Restarts every element's timeout (creating missing elements). Fails if our table or
    /// sets are missing (resync recreates them, with fresh elements).
    pub fn renew(&mut self) -> Result<(), NodeError> {
        let (msg, mut acks) = renewal(&self.v4, &self.v6, self.seq);
        self.seq = self.seq.wrapping_add(16);
        let fd = self.sock.as_raw_fd();
        send(fd, &msg, MsgFlags::empty()).map_err(|e| NodeError::Lease(format!("netlink send: {e}")))?;
        let mut buf = vec![0u8; 8192];
        let mut failure: Option<String> = None;
        while acks > 0 {
            let n = recv(fd, &mut buf, MsgFlags::empty())
                .map_err(|e| NodeError::Lease(format!("netlink recv ({acks} acks missing): {e}")))?;
            let mut at = 0;
            while at + 16 <= n {
                let len = u32::from_ne_bytes(buf[at..at + 4].try_into().unwrap()) as usize;
                let ty = u16::from_ne_bytes(buf[at + 4..at + 6].try_into().unwrap());
                if len < 16 || at + len > n {
                    return Err(NodeError::Lease("malformed netlink reply".into()));
                }
                if ty == NLMSG_ERROR && len >= 20 {
                    let code = i32::from_ne_bytes(buf[at + 16..at + 20].try_into().unwrap());
                    acks -= 1;
                    if code != 0 && failure.is_none() {
                        failure = Some(format!(
                            "nf_tables rejected the renewal of {TABLE}/{{{SET_V4},{SET_V6}}}: {}",
                            nix::errno::Errno::from_raw(-code)
                        ));
                    }
                }
                at += len.next_multiple_of(4);
            }
        }
        match failure {
            None => Ok(()),
            Some(f) => Err(NodeError::Lease(f)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_layout() {
        let (bytes, acks) = renewal(&["10.96.0.10".parse().unwrap()], &[], 0);
        assert_eq!(acks, 3);
        // begin (20) + 3 setelem messages + end (20); each message length is 4-aligned and
        // the lengths add up to the whole buffer.
        let mut at = 0;
        let mut types = Vec::new();
        while at < bytes.len() {
            let len = u32::from_ne_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
            assert_eq!(len % 4, 0);
            types.push(u16::from_ne_bytes(bytes[at + 4..at + 6].try_into().unwrap()));
            at += len;
        }
        assert_eq!(at, bytes.len());
        assert_eq!(types, [0x10, 0x0a0c, 0x0a0e, 0x0a0c, 0x11]);
        // The key and the timeout (1500 ms, big-endian) are in the first add.
        let first = &bytes[20..];
        let find = |needle: &[u8]| first.windows(needle.len()).any(|w| w == needle);
        assert!(find(&[10, 96, 0, 10]));
        assert!(find(&1500u64.to_be_bytes()));
        assert!(find(b"host_v4\0"));
    }

    #[test]
    fn renewal_dual_stack_has_both_sets() {
        let (bytes, acks) = renewal(&["10.96.0.10".parse().unwrap()], &["fd00::a".parse().unwrap()], 7);
        assert_eq!(acks, 6);
        let s = String::from_utf8_lossy(&bytes);
        assert_eq!(s.matches("host_v4").count(), 3);
        assert_eq!(s.matches("host_v6").count(), 3);
    }
}
