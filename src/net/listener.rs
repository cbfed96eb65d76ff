//! Listening sockets: one SO_REUSEPORT socket per listener per shard, built
//! with socket2 so the backlog comes from the configuration (glommio's own
//! `TcpListener::bind` fixes it at 1024 and panics on a bad address).
//!
//! All sockets are bound on the main thread before any executor starts, so
//! an address in use or a permission error is reported once, clearly, and
//! no shard is left waiting for a peer that failed.
//!
//! They are stopped at one point too, [`ListenerStop::stop`], when the
//! broker stops accepting: closing a shard's descriptor is not enough (see
//! [`ListenerStop`]).

use glommio::net::TcpListener;
use socket2::{Domain, Protocol, Socket, Type};
use std::io;
use std::net::{Shutdown, SocketAddr};
use std::sync::{Mutex, PoisonError};

/// Why a listener could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr}: {source}")]
pub struct ListenError {
    /// The configured address.
    pub addr: SocketAddr,
    /// What the kernel said.
    #[source]
    pub source: io::Error,
}

/// Binds `count` sockets to `addr` with SO_REUSEPORT, so the kernel spreads
/// incoming connections over them (one per shard).
///
/// SO_REUSEPORT would also let this process join the sockets of another
/// program of the same user listening on `addr` (a second ringmq started by
/// mistake), the kernel then splitting the clients between two brokers that
/// know nothing of each other. So the address is first probed without it:
/// a bind that fails there means somebody listens already, and the broker
/// refuses to start.
pub fn bind_reuseport(
    addr: SocketAddr,
    backlog: u32,
    count: usize,
) -> Result<Vec<Socket>, ListenError> {
    let wrap = |source| ListenError { addr, source };
    if addr.port() != 0 {
        probe_unused(addr).map_err(wrap)?;
    }
    let mut sockets = Vec::with_capacity(count);
    let mut bound_addr = addr;
    for _ in 0..count {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
            .map_err(wrap)?;
        socket.set_reuse_address(true).map_err(wrap)?;
        socket.set_reuse_port(true).map_err(wrap)?;
        if addr.is_ipv6() {
            socket.set_only_v6(true).map_err(wrap)?;
        }
        // With port 0 the first socket picks a port; the others join it.
        socket.bind(&bound_addr.into()).map_err(wrap)?;
        socket.listen(i32::try_from(backlog).unwrap_or(i32::MAX)).map_err(wrap)?;
        if let Some(local) = socket.local_addr().map_err(wrap)?.as_socket() {
            bound_addr = local;
        }
        sockets.push(socket);
    }
    Ok(sockets)
}

/// Binds a socket to `addr` without SO_REUSEPORT (SO_REUSEADDR only, so
/// connections of an earlier run in TIME_WAIT do not count) and closes it.
fn probe_unused(addr: SocketAddr) -> io::Result<()> {
    let probe = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    probe.set_reuse_address(true)?;
    if addr.is_ipv6() {
        probe.set_only_v6(true)?;
    }
    probe.bind(&addr.into()).map_err(|error| match error.kind() {
        io::ErrorKind::AddrInUse => io::Error::new(
            io::ErrorKind::AddrInUse,
            "the address is in use by another program (another ringmq, or a \
             broker such as mosquitto); stop it or choose another port",
        ),
        _ => error,
    })
}

/// A socket of [`bind_reuseport`] as a listener of the calling shard's
/// executor.
pub fn serve_on_this_shard(socket: Socket) -> TcpListener {
    use std::os::fd::{FromRawFd, IntoRawFd};
    // SAFETY: the socket is bound and listening, and `into_raw_fd` hands
    // its ownership to the listener.
    unsafe { TcpListener::from_raw_fd(socket.into_raw_fd()) }
}

/// Every listening socket of the process, to stop them all at once.
///
/// A shard's listener cannot simply be closed: while an accept is pending
/// in its io_uring ring, the ring holds the socket, which keeps listening
/// after the descriptor is closed and even after the process has ended,
/// until the kernel tears the ring down (10-17 ms after the exit, measured):
/// connections made meanwhile completed their handshake and were then
/// reset, and a broker restarted on the same port shared it with the
/// lingering socket (SO_REUSEPORT). `shutdown(2)` on a listening socket
/// acts on the socket itself, whoever else holds it: it leaves the
/// listening state, so new connections are refused (the SYN is answered
/// with a reset, ECONNREFUSED); the connections in its accept queue
/// (handshake done, not accepted yet) are reset, which is the defined end
/// of a connection the broker never took; and pending accepts fail, which
/// ends the shard's accept loop (see `net::accept_loop`).
#[derive(Debug, Default)]
pub struct ListenerStop {
    state: Mutex<StopState>,
}

#[derive(Debug, Default)]
struct StopState {
    /// Set by the first [`ListenerStop::stop`].
    stopped: bool,
    /// Duplicates of the descriptors of the sockets to stop.
    sockets: Vec<Socket>,
}

impl ListenerStop {
    /// Keeps a duplicate of `socket`'s descriptor, to stop it with the
    /// others; stops it at once if [`Self::stop`] already ran.
    pub fn register(&self, socket: &Socket) -> io::Result<()> {
        let duplicate = socket.try_clone()?;
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if state.stopped {
            stop_listening(&duplicate);
        } else {
            state.sockets.push(duplicate);
        }
        Ok(())
    }

    /// Stops every registered socket listening, and closes the duplicates.
    /// Idempotent; sockets registered later are stopped as they come.
    pub fn stop(&self) {
        let sockets = {
            let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            state.stopped = true;
            std::mem::take(&mut state.sockets)
        };
        sockets.iter().for_each(stop_listening);
    }
}

fn stop_listening(socket: &Socket) {
    if let Err(error) = socket.shutdown(Shutdown::Both) {
        tracing::warn!(%error, "cannot stop a listening socket");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockets_share_one_port() {
        let sockets = bind_reuseport("127.0.0.1:0".parse().unwrap(), 16, 3).unwrap();
        let ports: Vec<u16> =
            sockets.iter().map(|s| s.local_addr().unwrap().as_socket().unwrap().port()).collect();
        assert!(ports[0] != 0 && ports.iter().all(|&p| p == ports[0]));
    }

    #[test]
    fn a_stopped_listener_refuses_and_resets_its_queue() {
        let sockets = bind_reuseport("127.0.0.1:0".parse().unwrap(), 16, 2).unwrap();
        let addr = sockets[0].local_addr().unwrap().as_socket().unwrap();
        let stop = ListenerStop::default();
        stop.register(&sockets[0]).unwrap();
        // Handshakes the kernel completes; nobody accepts them.
        let mut queued: Vec<_> =
            (0..4).map(|_| std::net::TcpStream::connect(addr).unwrap()).collect();
        stop.stop();
        stop.register(&sockets[1]).unwrap();
        // The descriptors are still open here, as a pending io_uring
        // accept would keep them: nothing listens any more.
        let refused = std::net::TcpStream::connect(addr).unwrap_err();
        assert_eq!(refused.kind(), io::ErrorKind::ConnectionRefused);
        assert_eq!(
            sockets[0].accept().unwrap_err().raw_os_error(),
            Some(libc::EINVAL),
            "accepting on a stopped socket fails"
        );
        for stream in &mut queued {
            use std::io::Read;
            let reset = stream.read(&mut [0; 1]).unwrap_err();
            assert_eq!(reset.kind(), io::ErrorKind::ConnectionReset);
        }
    }

    #[test]
    fn address_in_use_is_an_error_not_a_panic() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let err = bind_reuseport(taken.local_addr().unwrap(), 16, 1).unwrap_err();
        assert!(err.to_string().starts_with("cannot listen on 127.0.0.1:"), "{err}");
    }

    #[test]
    fn a_port_another_program_shares_with_reuseport_is_refused() {
        // Another ringmq (SO_REUSEPORT, same user) would let a second one
        // join its port and take some of its clients.
        let first = bind_reuseport("127.0.0.1:0".parse().unwrap(), 16, 2).unwrap();
        let addr = first[0].local_addr().unwrap().as_socket().unwrap();
        let err = bind_reuseport(addr, 16, 2).unwrap_err();
        assert!(err.to_string().contains("in use by another program"), "{err}");
        drop(first);
        assert!(bind_reuseport(addr, 16, 2).is_ok(), "free again once the first is gone");
    }
}
