//! The byte transports a connection runs over. The connection loop
//! ([`super::connection`]) is generic over [`Transport`]: plain TCP here,
//! TLS in [`super::tls`], WebSocket over either in `super::websocket` (see
//! the module notes of [`super`] for how a TLS connection reaches its home
//! shard; a WebSocket one moves the same way, its framing state boxed
//! beside the inner transport's).

use crate::router::MovedTransport;
use futures_lite::{AsyncRead, AsyncWrite};
use glommio::net::TcpStream;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::pin::Pin;
use std::task::{Context, Poll};

/// A connected byte stream to one client, owned by one connection task.
///
/// Readiness-based like glommio's sockets: `Pending` registers the task's
/// waker. The connection loop gathers its output into one buffer, writes
/// it with [`Transport::poll_write`] until it is taken, then calls
/// [`Transport::poll_flush`] once, so a transport that frames (TLS
/// records, WebSocket frames) can seal one frame per batch.
pub trait Transport: 'static {
    /// Reads what the client sent into `buf`; `Ok(0)` is the end of the
    /// stream.
    fn poll_read(&mut self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>>;

    /// Takes bytes for the client; returns how many it took.
    fn poll_write(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>>;

    /// Sends whatever the transport still buffers of what it took.
    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;

    /// Ends the stream towards the client (TCP: shuts the write side,
    /// FIN) while its input can still be read; called once, after the
    /// last flush.
    fn poll_close(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;

    /// What the home shard needs to continue this connection: a duplicate
    /// of the socket and any transport state that must travel with it.
    /// The transport is only dropped afterwards, which closes this
    /// shard's handle of the socket.
    fn hand_off(&mut self) -> io::Result<MovedTransport>;

    /// Who the client proved to be below MQTT: the identity of its TLS
    /// client certificate (see [`super::tls::TlsStream::peer_identity`]).
    fn peer_identity(&self) -> Option<String> {
        None
    }

    /// Whether [`Transport::poll_close`] tells the client something even
    /// when no bytes are pending (a WebSocket close frame): the connection
    /// then always ends with it, not only after a last packet.
    fn has_closing_handshake(&self) -> bool {
        false
    }
}

impl Transport for TcpStream {
    fn poll_read(&mut self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        AsyncRead::poll_read(Pin::new(self), cx, buf)
    }

    fn poll_write(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        AsyncWrite::poll_write(Pin::new(self), cx, buf)
    }

    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        AsyncWrite::poll_flush(Pin::new(self), cx)
    }

    fn poll_close(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // glommio shuts the write side (shutdown(2), SHUT_WR).
        AsyncWrite::poll_close(Pin::new(self), cx)
    }

    fn hand_off(&mut self) -> io::Result<MovedTransport> {
        // SAFETY: the fd belongs to `self`, alive for this call.
        let fd = unsafe { BorrowedFd::borrow_raw(self.as_raw_fd()) };
        // The duplicate is owned by the message: wherever the message ends
        // (adopted, or dropped at shutdown) the socket is closed once.
        fd.try_clone_to_owned().map(MovedTransport::Tcp)
    }
}
