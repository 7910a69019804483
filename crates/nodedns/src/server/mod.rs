//! Listening sockets and the DNS serving loops.

pub mod batch;
pub mod front;
pub mod tcp;
pub mod udp;

use std::io;
use std::net::{SocketAddr, TcpListener, UdpSocket};

use socket2::{Domain, Protocol, Socket, Type};

/// The DNS sockets of one process: per address, one UDP socket per worker and one TCP listener.
pub struct Listeners {
    pub udp: Vec<(SocketAddr, UdpSocket)>,
    pub tcp: Vec<(SocketAddr, TcpListener)>,
}

fn base_socket(addr: SocketAddr, ty: Type, proto: Protocol) -> io::Result<Socket> {
    let s = Socket::new(Domain::for_address(addr), ty, Some(proto))?;
    // SO_REUSEPORT: a new nodedns (rolling update with maxSurge) can bind next to the old one;
    // for UDP it also spreads clients across worker sockets by 4-tuple hash.
    s.set_reuse_port(true)?;
    s.set_reuse_address(true)?;
    // IP_FREEBIND: binding must not fail when the node address is not (yet) on the interface,
    // e.g. while node setup is being repaired.
    if addr.is_ipv4() {
        s.set_freebind_v4(true)?;
    } else {
        s.set_only_v6(true)?;
        s.set_freebind_v6(true)?;
    }
    Ok(s)
}

/// Binds a UDP socket for a worker.
pub fn bind_udp(addr: SocketAddr) -> io::Result<UdpSocket> {
    let s = base_socket(addr, Type::DGRAM, Protocol::UDP)?;
    // A deep receive queue absorbs bursts (node-cache's UDP queue overflowed silently, #586).
    let _ = s.set_recv_buffer_size(4 << 20);
    let _ = s.set_send_buffer_size(4 << 20);
    s.bind(&addr.into())?;
    Ok(s.into())
}

/// Binds a TCP listener.
pub fn bind_tcp(addr: SocketAddr) -> io::Result<TcpListener> {
    let s = base_socket(addr, Type::STREAM, Protocol::TCP)?;
    s.bind(&addr.into())?;
    s.listen(1024)?;
    s.set_nonblocking(true)?;
    Ok(s.into())
}

impl Listeners {
    /// Uses the sockets received from a predecessor (handover) for every configured address
    /// they cover, binds the rest, and closes received sockets no longer configured. A UDP
    /// address gets at least `workers` sockets: received ones first, then new ones bound beside
    /// them in the same SO_REUSEPORT group.
    pub fn adopt_or_bind(
        addrs: &[SocketAddr],
        workers: usize,
        received: Vec<std::os::fd::OwnedFd>,
    ) -> io::Result<Listeners> {
        let mut udp_in: Vec<(SocketAddr, UdpSocket)> = Vec::new();
        let mut tcp_in: Vec<(SocketAddr, TcpListener)> = Vec::new();
        for fd in received {
            let s = Socket::from(fd);
            let (Ok(local), Ok(ty)) = (s.local_addr(), s.r#type()) else { continue };
            let Some(local) = local.as_socket() else { continue };
            if !addrs.contains(&local) {
                continue;
            }
            if ty == Type::DGRAM {
                udp_in.push((local, s.into()));
            } else if ty == Type::STREAM {
                s.set_nonblocking(true)?;
                tcp_in.push((local, s.into()));
            }
        }
        let mut udp = Vec::new();
        let mut tcp = Vec::new();
        for &configured in addrs {
            let mut addr = configured;
            let mut n = 0;
            for (a, s) in udp_in.extract_if(.., |(a, _)| *a == addr) {
                udp.push((a, s));
                n += 1;
            }
            for _ in n..workers.max(1) {
                let s = bind_udp(addr).map_err(|e| with_addr(e, "udp", addr))?;
                // Port 0 (tests run in-process on `127.0.0.1:0`): the first socket takes a free
                // port and the address's other sockets join it.
                if addr.port() == 0 {
                    addr = s.local_addr()?;
                }
                udp.push((addr, s));
            }
            match tcp_in.iter().position(|(a, _)| *a == addr) {
                Some(i) => tcp.push(tcp_in.swap_remove(i)),
                None => tcp.push((addr, bind_tcp(addr).map_err(|e| with_addr(e, "tcp", addr))?)),
            }
        }
        Ok(Listeners { udp, tcp })
    }

    /// Duplicates of every socket, to hand to a successor.
    pub fn duplicates(&self) -> io::Result<Vec<std::os::fd::OwnedFd>> {
        let mut out = Vec::new();
        for (_, s) in &self.udp {
            out.push(std::os::fd::OwnedFd::from(s.try_clone()?));
        }
        for (_, s) in &self.tcp {
            out.push(std::os::fd::OwnedFd::from(s.try_clone()?));
        }
        Ok(out)
    }

    /// Binds every address: `workers` UDP sockets and one TCP listener each (port 0 allowed,
    /// see [`Listeners::adopt_or_bind`]).
    pub fn bind(addrs: &[SocketAddr], workers: usize) -> io::Result<Listeners> {
        Self::adopt_or_bind(addrs, workers, Vec::new())
    }
}

fn with_addr(e: io::Error, proto: &str, addr: SocketAddr) -> io::Error {
    io::Error::new(e.kind(), format!("cannot bind {proto} {addr}: {e}"))
}
