//! Listening sockets: one SO_REUSEPORT socket per listener per shard, built
//! with socket2 so the backlog comes from the configuration (glommio's own
//! `TcpListener::bind` fixes it at 1024 and panics on a bad address).
//!
//! All sockets are bound on the main thread before any executor starts, so
//! an address in use or a permission error is reported once, clearly, and
//! no shard is left waiting for a peer that failed.

use socket2::{Domain, Protocol, Socket, Type};
use std::io;
use std::net::SocketAddr;

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
pub fn bind_reuseport(
    addr: SocketAddr,
    backlog: u32,
    count: usize,
) -> Result<Vec<Socket>, ListenError> {
    let wrap = |source| ListenError { addr, source };
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
    fn address_in_use_is_an_error_not_a_panic() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let err = bind_reuseport(taken.local_addr().unwrap(), 16, 1).unwrap_err();
        assert!(err.to_string().starts_with("cannot listen on 127.0.0.1:"), "{err}");
    }
}
