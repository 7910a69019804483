//! Receiving descriptors with `SCM_RIGHTS` (unix(7)). nix does the `recvmsg(2)` and the control
//! message parsing safely but hands the descriptors back as `RawFd`; taking ownership of a raw
//! descriptor is the one step std only offers as `unsafe` (`OwnedFd::from_raw_fd`), so it is
//! done here, right where the kernel installed them. Sending needs no ownership transfer and
//! stays with nix's safe `sendmsg`.

use std::io::IoSliceMut;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

use nix::sys::socket::{ControlMessageOwned, MsgFlags, UnixAddr, recvmsg};

/// SCM_MAX_FD: the kernel passes at most 253 descriptors in one message.
pub const MAX_FDS: usize = 253;

/// Receives one message on `stream` into `buf`, with the descriptors it carries (up to
/// [`MAX_FDS`], close-on-exec). Returns the bytes read and the descriptors, now owned by the
/// caller: they are closed when dropped.
pub fn recv_with_fds(stream: &UnixStream, buf: &mut [u8]) -> nix::Result<(usize, Vec<OwnedFd>)> {
    let mut iov = [IoSliceMut::new(buf)];
    let mut cmsg = nix::cmsg_space!([RawFd; MAX_FDS]);
    let msg = recvmsg::<UnixAddr>(stream.as_raw_fd(), &mut iov, Some(&mut cmsg), MsgFlags::MSG_CMSG_CLOEXEC)?;
    let mut fds = Vec::new();
    for c in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(raw) = c {
            // SAFETY: the kernel installed these descriptors in this process during the recvmsg
            // above (SCM_RIGHTS creates new descriptors for the receiver), and nothing else has
            // seen their numbers yet, so each is open and has no other owner.
            fds.extend(raw.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }));
        }
    }
    Ok((msg.bytes, fds))
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::socket::{ControlMessage, sendmsg};
    use std::io::IoSlice;
    use std::os::fd::AsFd;

    #[test]
    fn descriptors_cross_a_socketpair_and_stay_usable() {
        let (a, b) = UnixStream::pair().unwrap();
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = udp.local_addr().unwrap();
        let fds = [udp.as_raw_fd(), udp.as_raw_fd()];
        sendmsg::<UnixAddr>(
            a.as_raw_fd(),
            &[IoSlice::new(b"hi")],
            &[ControlMessage::ScmRights(&fds)],
            MsgFlags::empty(),
            None,
        )
        .unwrap();
        let mut buf = [0u8; 16];
        let (n, got) = recv_with_fds(&b, &mut buf).unwrap();
        assert_eq!(&buf[..n], b"hi");
        assert_eq!(got.len(), 2);
        // New descriptors for the same socket, close-on-exec, distinct from the sender's.
        for fd in &got {
            assert_ne!(fd.as_raw_fd(), udp.as_raw_fd());
            let flags = nix::fcntl::fcntl(fd.as_fd(), nix::fcntl::FcntlArg::F_GETFD).unwrap();
            assert_ne!(flags & libc::FD_CLOEXEC, 0);
        }
        let received = std::net::UdpSocket::from(got.into_iter().next().unwrap());
        assert_eq!(received.local_addr().unwrap(), addr);
        // A message without descriptors gives none.
        sendmsg::<UnixAddr>(a.as_raw_fd(), &[IoSlice::new(b"x")], &[], MsgFlags::empty(), None).unwrap();
        let (n, got) = recv_with_fds(&b, &mut buf).unwrap();
        assert_eq!((n, got.len()), (1, 0));
    }
}
