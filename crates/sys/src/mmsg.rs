//! Batched UDP I/O: `recvmmsg(2)` / `sendmmsg(2)`.
//!
//! Per-packet syscalls are most of a cache hit's cost (the shared/bench ceiling gets its speed
//! from batching), so a worker receives up to [`BATCH`] datagrams per call and sends all their
//! answers with one call. All buffers are allocated once per worker; nothing is allocated per
//! packet.
//!
//! Everything on the hot path (`recv`, `received`, `received_and_send_buf`, `queue_reply`,
//! `flush`, the address decode) is `#[inline]`: it was inlined into the UDP worker when it lived
//! in the daemon crate, and must stay so across the crate boundary.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::RawFd;

/// Datagrams per syscall.
pub const BATCH: usize = 32;
/// Receive buffer per datagram. Larger queries are cut and flagged (`MSG_TRUNC`).
pub const RECV_LEN: usize = 4096;
/// Send buffer per datagram: the largest UDP answer we ever send (limits.max_udp_payload_bytes ≤ 4096).
pub const SEND_LEN: usize = 4096;

/// One side (receive or send) of a batch: buffers, addresses and the kernel's headers.
struct Ring<const LEN: usize> {
    bufs: Box<[[u8; LEN]]>,
    addrs: Box<[libc::sockaddr_storage]>,
    iovecs: Box<[libc::iovec]>,
    hdrs: Box<[libc::mmsghdr]>,
}

impl<const LEN: usize> Ring<LEN> {
    fn new() -> Self {
        let mut bufs = vec![[0u8; LEN]; BATCH].into_boxed_slice();
        // SAFETY: sockaddr_storage, iovec and mmsghdr are plain C structs for which all-zero is a
        // valid value.
        let mut addrs: Box<[libc::sockaddr_storage]> = (0..BATCH).map(|_| unsafe { zeroed() }).collect();
        let mut iovecs: Box<[libc::iovec]> =
            (0..BATCH).map(|i| libc::iovec { iov_base: bufs[i].as_mut_ptr().cast(), iov_len: LEN }).collect();
        let hdrs: Box<[libc::mmsghdr]> = (0..BATCH)
            .map(|i| {
                // SAFETY: as above.
                let mut h: libc::mmsghdr = unsafe { zeroed() };
                h.msg_hdr.msg_name = (&mut addrs[i] as *mut libc::sockaddr_storage).cast();
                h.msg_hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as u32;
                h.msg_hdr.msg_iov = &mut iovecs[i];
                h.msg_hdr.msg_iovlen = 1;
                h
            })
            .collect();
        // The boxes never move their heap contents, so the pointers above stay valid.
        Self { bufs, addrs, iovecs, hdrs }
    }
}

/// A worker's receive and send rings.
///
/// Holds the socket as a [`RawFd`] it does not own: the caller keeps the socket open for as long
/// as it uses the `BatchIo` (a UDP worker owns both). A descriptor closed early makes the calls
/// fail with `EBADF`; the kernel only ever writes into the rings' own buffers.
pub struct BatchIo {
    /// The socket's descriptor, valid while `socket` (which owns it) is held.
    fd: RawFd,
    socket: std::sync::Arc<std::net::UdpSocket>,
    rx: Ring<RECV_LEN>,
    tx: Ring<SEND_LEN>,
    tx_len: usize,
}

// SAFETY: the raw pointers inside point only into the struct's own boxes; the struct is moved to
// its worker thread once and used there alone.
unsafe impl Send for BatchIo {}

/// A received datagram.
pub struct Received<'a> {
    pub data: &'a [u8],
    pub truncated: bool,
    addr: &'a libc::sockaddr_storage,
    addr_len: u32,
}

impl Received<'_> {
    #[inline]
    pub fn peer(&self) -> Option<SocketAddr> {
        sockaddr_to_std(self.addr, self.addr_len)
    }
}

impl BatchIo {
    /// Batched I/O on `socket`, which it keeps open: the descriptor the syscalls use can never
    /// be closed (or reused for another file) under it.
    pub fn new(socket: std::sync::Arc<std::net::UdpSocket>) -> Self {
        use std::os::fd::AsRawFd;
        Self { fd: socket.as_raw_fd(), socket, rx: Ring::new(), tx: Ring::new(), tx_len: 0 }
    }

    /// The socket batched on.
    pub fn socket(&self) -> &std::sync::Arc<std::net::UdpSocket> {
        &self.socket
    }

    /// Blocks until at least one datagram arrives (or the socket's receive timeout passes), then
    /// takes every datagram already queued, up to [`BATCH`]. Returns how many.
    #[inline]
    pub fn recv(&mut self) -> io::Result<usize> {
        for i in 0..BATCH {
            self.rx.hdrs[i].msg_hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as u32;
            self.rx.hdrs[i].msg_hdr.msg_flags = 0;
            self.rx.iovecs[i].iov_len = RECV_LEN;
        }
        // SAFETY: `fd` is the descriptor of `self.socket`, held open by this struct; `hdrs` holds
        // BATCH initialized headers pointing into live buffers of the sizes given; the kernel
        // writes at most those sizes.
        let n = unsafe {
            libc::recvmmsg(self.fd, self.rx.hdrs.as_mut_ptr(), BATCH as u32, libc::MSG_WAITFORONE, std::ptr::null_mut())
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }

    /// Datagram `i` of the last [`recv`](Self::recv).
    #[inline]
    pub fn received(&self, i: usize) -> Received<'_> {
        let h = &self.rx.hdrs[i];
        let len = (h.msg_len as usize).min(RECV_LEN);
        Received {
            data: &self.rx.bufs[i][..len],
            truncated: h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0,
            addr: &self.rx.addrs[i],
            addr_len: h.msg_hdr.msg_namelen,
        }
    }

    /// Split borrow: datagram `i` of the last receive and the next free send buffer.
    #[inline]
    pub fn received_and_send_buf(&mut self, i: usize) -> Option<(Received<'_>, &mut [u8; SEND_LEN])> {
        if self.tx_len >= BATCH {
            return None;
        }
        let h = &self.rx.hdrs[i];
        let len = (h.msg_len as usize).min(RECV_LEN);
        let received = Received {
            data: &self.rx.bufs[i][..len],
            truncated: h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0,
            addr: &self.rx.addrs[i],
            addr_len: h.msg_hdr.msg_namelen,
        };
        Some((received, &mut self.tx.bufs[self.tx_len]))
    }

    /// Queues the answer written into the send buffer handed out last, to the sender of
    /// datagram `i`.
    #[inline]
    pub fn queue_reply(&mut self, i: usize, len: usize) {
        let t = self.tx_len;
        if t >= BATCH {
            return;
        }
        self.tx.addrs[t] = self.rx.addrs[i];
        self.tx.hdrs[t].msg_hdr.msg_namelen = self.rx.hdrs[i].msg_hdr.msg_namelen;
        self.tx.iovecs[t].iov_len = len.min(SEND_LEN);
        self.tx_len += 1;
    }

    /// Sends every queued answer; returns how many were sent.
    #[inline]
    pub fn flush(&mut self) -> io::Result<usize> {
        let mut sent = 0;
        while sent < self.tx_len {
            // SAFETY: headers [sent, tx_len) are initialized and point into live buffers whose
            // lengths were set by `queue_reply`.
            let n =
                unsafe { libc::sendmmsg(self.fd, self.tx.hdrs.as_mut_ptr().add(sent), (self.tx_len - sent) as u32, 0) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                // One bad destination (e.g. EPERM from a firewall) must not hold back the rest:
                // skip the first of the remaining datagrams and carry on.
                sent += 1;
                if sent >= self.tx_len {
                    self.tx_len = 0;
                    return Err(e);
                }
                continue;
            }
            sent += n as usize;
        }
        self.tx_len = 0;
        Ok(sent)
    }
}

#[inline]
fn sockaddr_to_std(addr: &libc::sockaddr_storage, len: u32) -> Option<SocketAddr> {
    match addr.ss_family as i32 {
        libc::AF_INET if len as usize >= size_of::<libc::sockaddr_in>() => {
            // SAFETY: sockaddr_storage is sized and aligned for every socket address type (its
            // purpose, socket(7)), and family and length say the kernel wrote a sockaddr_in.
            let a: &libc::sockaddr_in = unsafe { &*(addr as *const libc::sockaddr_storage).cast() };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)),
                u16::from_be(a.sin_port),
            )))
        }
        libc::AF_INET6 if len as usize >= size_of::<libc::sockaddr_in6>() => {
            // SAFETY: as above, for a sockaddr_in6.
            let a: &libc::sockaddr_in6 = unsafe { &*(addr as *const libc::sockaddr_storage).cast() };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(a.sin6_addr.s6_addr),
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_round_trip_on_loopback() {
        let server = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        server.set_read_timeout(Some(std::time::Duration::from_secs(2))).unwrap();
        let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        client.set_read_timeout(Some(std::time::Duration::from_secs(2))).unwrap();
        for i in 0..5u8 {
            client.send_to(&[i; 3], server.local_addr().unwrap()).unwrap();
        }
        let mut io = BatchIo::new(std::sync::Arc::new(server.try_clone().unwrap()));
        let mut got = 0;
        while got < 5 {
            let n = io.recv().unwrap();
            for i in 0..n {
                let (r, out) = io.received_and_send_buf(i).unwrap();
                assert_eq!(r.peer(), Some(client.local_addr().unwrap()));
                assert!(!r.truncated);
                let len = r.data.len();
                out[..len].copy_from_slice(r.data);
                out[0] += 100;
                io.queue_reply(i, len);
            }
            assert_eq!(io.flush().unwrap(), n);
            got += n;
        }
        let mut seen = Vec::new();
        for _ in 0..5 {
            let mut b = [0u8; 16];
            let n = client.recv(&mut b).unwrap();
            assert_eq!(n, 3);
            seen.push(b[0]);
        }
        seen.sort();
        assert_eq!(seen, vec![100, 101, 102, 103, 104]);
    }

    fn pair(bind: &str) -> Option<(std::net::UdpSocket, std::net::UdpSocket)> {
        let server = std::net::UdpSocket::bind(bind).ok()?;
        let client = std::net::UdpSocket::bind(bind).ok()?;
        for s in [&server, &client] {
            s.set_read_timeout(Some(std::time::Duration::from_secs(2))).unwrap();
        }
        Some((server, client))
    }

    #[test]
    fn ipv6_peer_and_oversized_datagram_flagged_truncated() {
        let Some((server, client)) = pair("[::1]:0") else {
            return; // no IPv6 loopback here
        };
        client.send_to(&[7u8; RECV_LEN + 100], server.local_addr().unwrap()).unwrap();
        client.send_to(&[8u8; 10], server.local_addr().unwrap()).unwrap();
        let mut io = BatchIo::new(std::sync::Arc::new(server.try_clone().unwrap()));
        let mut got = Vec::new();
        while got.len() < 2 {
            let n = io.recv().unwrap();
            for i in 0..n {
                let r = io.received(i);
                assert_eq!(r.peer(), Some(client.local_addr().unwrap()));
                got.push((r.data.len(), r.truncated));
            }
        }
        assert_eq!(got, vec![(RECV_LEN, true), (10, false)]);
    }

    #[test]
    fn a_refused_destination_does_not_hold_back_the_rest() {
        let (server, client) = pair("127.0.0.1:0").unwrap();
        for i in 0..3u8 {
            client.send_to(&[i; 4], server.local_addr().unwrap()).unwrap();
        }
        let mut io = BatchIo::new(std::sync::Arc::new(server.try_clone().unwrap()));
        // Replies are queued across receives (queue_reply copies the address), flushed at once.
        let mut queued = 0;
        while queued < 3 {
            let n = io.recv().unwrap();
            for i in 0..n {
                if queued == 0 {
                    // Port 0 is refused by udp_sendmsg (EINVAL): the first answer fails.
                    // SAFETY: the socket is IPv4, so the kernel wrote a sockaddr_in here.
                    let a: &mut libc::sockaddr_in =
                        unsafe { &mut *(&mut io.rx.addrs[i] as *mut libc::sockaddr_storage).cast() };
                    a.sin_port = 0;
                }
                let (r, out) = io.received_and_send_buf(i).unwrap();
                let len = r.data.len();
                out[..len].copy_from_slice(r.data);
                io.queue_reply(i, len);
                queued += 1;
            }
        }
        assert_eq!(io.flush().unwrap(), 3, "all three handled, the refused one skipped");
        let mut seen = Vec::new();
        for _ in 0..2 {
            let mut b = [0u8; 16];
            assert_eq!(client.recv(&mut b).unwrap(), 4);
            seen.push(b[0]);
        }
        seen.sort();
        assert_eq!(seen, vec![1, 2]);
    }

    #[test]
    fn unknown_family_or_short_length_decodes_to_none() {
        // SAFETY: all-zero is a valid sockaddr_storage.
        let mut storage: libc::sockaddr_storage = unsafe { zeroed() };
        storage.ss_family = libc::AF_INET as libc::sa_family_t;
        assert_eq!(sockaddr_to_std(&storage, 4), None, "shorter than a sockaddr_in");
        assert!(sockaddr_to_std(&storage, size_of::<libc::sockaddr_in>() as u32).is_some());
        storage.ss_family = libc::AF_INET6 as libc::sa_family_t;
        assert_eq!(sockaddr_to_std(&storage, size_of::<libc::sockaddr_in>() as u32), None);
        storage.ss_family = libc::AF_UNIX as libc::sa_family_t;
        assert_eq!(sockaddr_to_std(&storage, size_of::<libc::sockaddr_storage>() as u32), None);
    }
}
