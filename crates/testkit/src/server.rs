//! The fake upstream's server thread: its own tokio runtime serving UDP and TCP until stopped.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc as std_mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;

use crate::fake_upstream::{Shared, Transport};
use crate::overload::{Admission, HeldQuery};
use crate::responder::{Outcome, respond};

/// Largest UDP datagram; a query never comes close, but a short buffer would silently cut one.
const MAX_DATAGRAM_BYTES: usize = 65_535;

/// Pause after a failed `accept` (e.g. out of file descriptors) so the loop does not spin.
const ACCEPT_RETRY_PAUSE: Duration = Duration::from_millis(10);

/// A request from the handle to the UDP task, acknowledged once done so that the handle returns
/// only when the socket really is closed or open.
enum UdpCommand {
    /// Close the socket, abandoning delayed answers.
    Close(std_mpsc::Sender<()>),
    /// Serve on this freshly bound socket.
    Open(std::net::UdpSocket, std_mpsc::Sender<io::Result<()>>),
}

/// The running server thread, as seen by its [`FakeUpstream`](crate::FakeUpstream).
#[derive(Debug)]
pub(crate) struct ServerThread {
    /// Ends the server when sent (or dropped).
    shutdown: oneshot::Sender<()>,
    /// Opens and closes the UDP socket.
    udp_commands: mpsc::UnboundedSender<UdpCommand>,
    /// Whether UDP is being served, so repeated calls are no-ops.
    udp_enabled: bool,
    /// Joined on stop, so that every socket is closed when `stop` returns.
    thread: JoinHandle<()>,
}

impl std::fmt::Debug for UdpCommand {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Close(_) => "Close",
            Self::Open(..) => "Open",
        })
    }
}

impl ServerThread {
    /// Starts the thread serving on the already bound sockets; returns once it serves.
    pub(crate) fn spawn(shared: Arc<Shared>, tcp: std::net::TcpListener, udp: std::net::UdpSocket) -> io::Result<Self> {
        // tokio requires non-blocking sockets when adopting std ones.
        tcp.set_nonblocking(true)?;
        udp.set_nonblocking(true)?;
        let port = tcp.local_addr()?.port();
        let (shutdown, shutdown_received) = oneshot::channel();
        let (udp_commands, udp_commands_received) = mpsc::unbounded_channel();
        let (ready, ready_received) = std_mpsc::channel::<io::Result<()>>();
        let thread = std::thread::Builder::new().name(format!("fake-upstream-{port}")).spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(runtime) => runtime,
                Err(error) => {
                    let _ = ready.send(Err(error));
                    return;
                }
            };
            runtime.block_on(async move {
                // Adopting std sockets needs the runtime's reactor, hence inside block_on.
                let sockets = TcpListener::from_std(tcp).and_then(|tcp| Ok((tcp, UdpSocket::from_std(udp)?)));
                let (tcp, udp) = match sockets {
                    Ok(sockets) => sockets,
                    Err(error) => {
                        let _ = ready.send(Err(error));
                        return;
                    }
                };
                let _ = ready.send(Ok(()));
                tokio::select! {
                    _ = shutdown_received => {}
                    () = serve_udp(Arc::clone(&shared), udp, udp_commands_received) => {}
                    () = accept_tcp(shared, tcp) => {}
                }
            });
            // Dropping the runtime here, on this thread, cancels every connection and
            // delayed-answer task, which closes their sockets before `stop` returns.
            drop(runtime);
        })?;
        match ready_received.recv() {
            Ok(Ok(())) => Ok(Self { shutdown, udp_commands, udp_enabled: true, thread }),
            Ok(Err(error)) => Err(error),
            Err(_) => Err(io::Error::other("fake upstream thread exited before serving")),
        }
    }

    /// Closes or reopens the UDP socket on `addr`, waiting for the server to confirm.
    ///
    /// # Panics
    ///
    /// If the port cannot be bound again, or the server does not confirm within `timeout`.
    pub(crate) fn set_udp_enabled(&mut self, addr: SocketAddr, enabled: bool, timeout: Duration) {
        if enabled == self.udp_enabled {
            return;
        }
        if enabled {
            let socket = std::net::UdpSocket::bind(addr)
                .and_then(|socket| socket.set_nonblocking(true).map(|()| socket))
                .unwrap_or_else(|error| panic!("cannot bind fake upstream UDP on {addr} again: {error}"));
            let (ack, acked) = std_mpsc::channel();
            if self.udp_commands.send(UdpCommand::Open(socket, ack)).is_err() {
                return;
            }
            match acked.recv_timeout(timeout) {
                Ok(Ok(())) => {}
                Ok(Err(error)) => panic!("fake upstream cannot serve UDP on {addr} again: {error}"),
                Err(std_mpsc::RecvTimeoutError::Timeout) => {
                    panic!("fake upstream on {addr} did not reopen UDP within {timeout:?}")
                }
                // The server thread is gone (it only ends on stop); nothing left to reopen.
                Err(std_mpsc::RecvTimeoutError::Disconnected) => {}
            }
        } else {
            let (ack, acked) = std_mpsc::channel();
            if self.udp_commands.send(UdpCommand::Close(ack)).is_err() {
                return;
            }
            if let Err(std_mpsc::RecvTimeoutError::Timeout) = acked.recv_timeout(timeout) {
                panic!("fake upstream on {addr} did not close UDP within {timeout:?}");
            }
        }
        self.udp_enabled = enabled;
    }

    /// Stops the server and joins its thread.
    ///
    /// # Panics
    ///
    /// Re-raises a panic of the server thread (a testkit bug), unless already panicking.
    pub(crate) fn stop(self) {
        let _ = self.shutdown.send(());
        if let Err(panic) = self.thread.join()
            && !std::thread::panicking()
        {
            std::panic::resume_unwind(panic);
        }
    }
}

/// Serves UDP until the handle goes away, closing and reopening the socket on command.
async fn serve_udp(shared: Arc<Shared>, socket: UdpSocket, mut commands: mpsc::UnboundedReceiver<UdpCommand>) {
    let mut socket = Some(Arc::new(socket));
    // Answers waiting out a `Delay`; each holds the socket, so they are aborted on close.
    let mut delayed = JoinSet::new();
    let mut datagram = vec![0_u8; MAX_DATAGRAM_BYTES];
    loop {
        tokio::select! {
            command = commands.recv() => match command {
                Some(UdpCommand::Close(ack)) => {
                    delayed.shutdown().await;
                    socket = None;
                    let _ = ack.send(());
                }
                Some(UdpCommand::Open(std_socket, ack)) => {
                    let opened = UdpSocket::from_std(std_socket).map(|opened| {
                        socket = Some(Arc::new(opened));
                    });
                    let _ = ack.send(opened);
                }
                None => return,
            },
            received = recv_from(socket.as_deref(), &mut datagram) => {
                // Errors here are per-datagram (e.g. a too-short buffer) and transient.
                let (Ok((length, peer)), Some(socket)) = (received, &socket) else { continue };
                match respond(&shared, &datagram[..length], Transport::Udp, peer) {
                    Outcome::NoAnswer | Outcome::CloseConnection => {}
                    Outcome::Respond { delay, wire } => match shared.overload.admit() {
                        Admission::Drop => {}
                        Admission::Unmodelled if delay.is_zero() => {
                            let _ = socket.send_to(&wire, peer).await;
                        }
                        admission => {
                            let (extra, guard) = held(admission);
                            let socket = Arc::clone(socket);
                            delayed.spawn(async move {
                                tokio::time::sleep(delay + extra).await;
                                if guard.as_ref().is_none_or(HeldQuery::alive) {
                                    let _ = socket.send_to(&wire, peer).await;
                                }
                            });
                        }
                    },
                }
            }
            Some(_) = delayed.join_next(), if !delayed.is_empty() => {}
        }
    }
}

/// Receives from `socket`, or waits forever while UDP is closed.
async fn recv_from(socket: Option<&UdpSocket>, buffer: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
    match socket {
        Some(socket) => socket.recv_from(buffer).await,
        None => std::future::pending().await,
    }
}

/// Accepts TCP connections forever, serving each on its own task.
async fn accept_tcp(shared: Arc<Shared>, listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                shared.tcp_connections_accepted.fetch_add(1, Ordering::SeqCst);
                // Counted before the task starts so the count is right as soon as accept is.
                let open = OpenConnection::count(Arc::clone(&shared));
                tokio::spawn(serve_tcp_connection(shared.clone(), stream, peer, open));
            }
            Err(_) => tokio::time::sleep(ACCEPT_RETRY_PAUSE).await,
        }
    }
}

/// Keeps one connection in `open_tcp_connections` for as long as it lives, including when its
/// task is cancelled at shutdown.
struct OpenConnection(Arc<Shared>);

impl OpenConnection {
    fn count(shared: Arc<Shared>) -> Self {
        shared.open_tcp_connections.fetch_add(1, Ordering::SeqCst);
        Self(shared)
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.open_tcp_connections.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Serves one TCP connection: any number of pipelined queries (RFC 7766 §6.2.1.1), each answered
/// as soon as its own delay has passed, so answers go out of order when delays differ. When the
/// client stops sending, pending answers are still delivered before closing.
async fn serve_tcp_connection(shared: Arc<Shared>, mut stream: TcpStream, peer: SocketAddr, _open: OpenConnection) {
    // Each answer is written with one call; without NODELAY a second small answer can wait for
    // the client's delayed ACK.
    let _ = stream.set_nodelay(true);
    let mut received = Vec::new();
    let mut chunk = [0_u8; 4096];
    // Delayed answers, each resolving to its framed bytes; dropped (aborted) with the connection.
    let mut delayed: JoinSet<Vec<u8>> = JoinSet::new();
    let mut client_finished_sending = false;
    loop {
        while let Some(query) = take_frame(&mut received) {
            match respond(&shared, &query, Transport::Tcp, peer) {
                Outcome::NoAnswer => {}
                Outcome::CloseConnection => return,
                Outcome::Respond { delay, wire } => {
                    let Some(framed) = frame(&wire) else { continue };
                    match shared.overload.admit() {
                        Admission::Drop => {}
                        Admission::Unmodelled if delay.is_zero() => {
                            if stream.write_all(&framed).await.is_err() {
                                return;
                            }
                        }
                        admission => {
                            let (extra, guard) = held(admission);
                            delayed.spawn(async move {
                                tokio::time::sleep(delay + extra).await;
                                // Dead since: the answer is lost, as with a killed process.
                                if guard.as_ref().is_some_and(|g| !g.alive()) { Vec::new() } else { framed }
                            });
                        }
                    }
                }
            }
        }
        if client_finished_sending && delayed.is_empty() {
            return;
        }
        tokio::select! {
            read = stream.read(&mut chunk), if !client_finished_sending => match read {
                Ok(0) => client_finished_sending = true,
                Ok(length) => received.extend_from_slice(&chunk[..length]),
                Err(_) => return,
            },
            Some(answer) = delayed.join_next(), if !delayed.is_empty() => {
                if let Ok(framed) = answer
                    && !framed.is_empty()
                    && stream.write_all(&framed).await.is_err()
                {
                    return;
                }
            }
        }
    }
}

/// The extra delay and guard of an admitted answer.
fn held(admission: Admission) -> (Duration, Option<HeldQuery>) {
    match admission {
        Admission::Held { extra_delay, guard } => (extra_delay, Some(guard)),
        Admission::Unmodelled | Admission::Drop => (Duration::ZERO, None),
    }
}

/// Removes and returns the first complete length-prefixed message in `received`, if any.
fn take_frame(received: &mut Vec<u8>) -> Option<Vec<u8>> {
    let prefix: [u8; 2] = received.get(..2)?.try_into().ok()?;
    let end = 2 + usize::from(u16::from_be_bytes(prefix));
    let message = received.get(2..end)?.to_vec();
    received.drain(..end);
    Some(message)
}

/// Prefixes `message` with its two-byte length; `None` if it is too long to frame.
fn frame(message: &[u8]) -> Option<Vec<u8>> {
    let length = u16::try_from(message.len()).ok()?;
    let mut framed = Vec::with_capacity(2 + message.len());
    framed.extend_from_slice(&length.to_be_bytes());
    framed.extend_from_slice(message);
    Some(framed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_taken_whole_and_in_order() {
        let mut received = frame(b"abc").unwrap();
        received.extend(frame(b"de").unwrap());
        received.extend_from_slice(&[0, 5, b'x']);
        assert_eq!(take_frame(&mut received).as_deref(), Some(&b"abc"[..]));
        assert_eq!(take_frame(&mut received).as_deref(), Some(&b"de"[..]));
        assert_eq!(take_frame(&mut received), None);
        assert_eq!(received, [0, 5, b'x']);
    }
}
