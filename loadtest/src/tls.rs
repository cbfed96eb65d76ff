//! `--tls`: the client side of TLS. [`client_config`] reads `--cafile`;
//! [`Stream`] is a connection's byte stream, plain TCP or rustls's sans-IO
//! `ClientConnection` driven over glommio's readiness-based socket, so the
//! runner's reader and writer do not know which.

use futures_lite::io::{AsyncRead, AsyncWrite};
use glommio::net::TcpStream;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore};
use std::io::{self, Read, Write};
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

/// The client configuration of `--tls --cafile FILE`: TLS 1.2 and 1.3,
/// the broker's certificate verified against the CAs of `cafile`, ALPN
/// `mqtt`.
pub fn client_config(cafile: &Path) -> anyhow::Result<Arc<ClientConfig>> {
    use anyhow::Context as _;
    let mut roots = RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(cafile)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("--cafile {}", cafile.display()))?;
    if certs.is_empty() {
        anyhow::bail!("--cafile {}: no PEM certificate in it", cafile.display());
    }
    for cert in certs {
        roots.add(cert).with_context(|| format!("--cafile {}", cafile.display()))?;
    }
    let mut config = ClientConfig::builder_with_provider(Arc::new(provider()))
        .with_protocol_versions(&[&rustls::version::TLS12, &rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"mqtt".to_vec()];
    Ok(Arc::new(config))
}

/// The broker's provider (ring, X25519 preferred, as most clients do).
fn provider() -> rustls::crypto::CryptoProvider {
    ringmq::net::tls::provider()
}

/// A connection's byte stream.
pub enum Stream {
    /// Plain TCP.
    Tcp(TcpStream),
    /// TLS: the handshake runs as the stream is first read and written.
    Tls(TcpStream, Box<ClientConnection>),
}

impl Stream {
    /// A TLS stream to `name` over `tcp`.
    pub fn tls(
        tcp: TcpStream,
        config: Arc<ClientConfig>,
        name: ServerName<'static>,
    ) -> io::Result<Self> {
        let tls = ClientConnection::new(config, name).map_err(io::Error::other)?;
        Ok(Self::Tls(tcp, Box::new(tls)))
    }
}

/// The socket as rustls's `io::Read`/`io::Write`: `Pending` becomes
/// `WouldBlock`, with the task's waker registered.
struct SocketIo<'a, 'b> {
    tcp: &'a mut TcpStream,
    cx: &'a mut Context<'b>,
}

impl Read for SocketIo<'_, '_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match Pin::new(&mut *self.tcp).poll_read(self.cx, buf) {
            Poll::Ready(result) => result,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
}

impl Write for SocketIo<'_, '_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match Pin::new(&mut *self.tcp).poll_write(self.cx, buf) {
            Poll::Ready(result) => result,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Sends what rustls has queued until it is out or the socket is full.
fn send_records(tls: &mut ClientConnection, io: &mut SocketIo<'_, '_>) -> Poll<io::Result<()>> {
    while tls.wants_write() {
        match tls.write_tls(io) {
            Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Poll::Pending,
            Err(e) => return Poll::Ready(Err(e)),
        }
    }
    Poll::Ready(Ok(()))
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let (tcp, tls) = match self.get_mut() {
            Self::Tcp(tcp) => return Pin::new(tcp).poll_read(cx, buf),
            Self::Tls(tcp, tls) => (tcp, tls),
        };
        let mut io = SocketIo { tcp, cx };
        loop {
            // Handshake messages and what the writer left queued.
            if let Poll::Ready(Err(e)) = send_records(tls, &mut io) {
                return Poll::Ready(Err(e));
            }
            match tls.reader().read(buf) {
                Ok(n) => return Poll::Ready(Ok(n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
            match tls.read_tls(&mut io) {
                Ok(0) => return Poll::Ready(Ok(0)),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Poll::Pending,
                Err(e) => return Poll::Ready(Err(e)),
            }
            if let Err(e) = tls.process_new_packets() {
                let _ = tls.write_tls(&mut io);
                return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, e)));
            }
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let (tcp, tls) = match self.get_mut() {
            Self::Tcp(tcp) => return Pin::new(tcp).poll_write(cx, buf),
            Self::Tls(tcp, tls) => (tcp, tls),
        };
        let mut io = SocketIo { tcp, cx };
        // Before the handshake ends rustls keeps the plaintext; after, it
        // seals it into records at once.
        let taken = tls.writer().write(buf)?;
        match send_records(tls, &mut io) {
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            // rustls's buffer was full: the socket or the handshake (which
            // the reader of the same task drives) wakes this task.
            _ if taken == 0 && !buf.is_empty() => Poll::Pending,
            _ => Poll::Ready(Ok(taken)),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let (tcp, tls) = match self.get_mut() {
            Self::Tcp(tcp) => return Pin::new(tcp).poll_flush(cx),
            Self::Tls(tcp, tls) => (tcp, tls),
        };
        match send_records(tls, &mut SocketIo { tcp: &mut *tcp, cx }) {
            Poll::Ready(Ok(())) => Pin::new(tcp).poll_flush(cx),
            other => other,
        }
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let (tcp, tls) = match self.get_mut() {
            Self::Tcp(tcp) => return Pin::new(tcp).poll_close(cx),
            Self::Tls(tcp, tls) => (tcp, tls),
        };
        if !tls.is_handshaking() {
            tls.send_close_notify();
        }
        let closed = match send_records(tls, &mut SocketIo { tcp: &mut *tcp, cx }) {
            Poll::Ready(Ok(())) => Pin::new(tcp).poll_close(cx),
            other => other,
        };
        // The close_notify goes in a record after the DISCONNECT; a broker
        // that closed on the DISCONNECT answers it with a reset, which is
        // no failure of the run (plain TCP has no such second write).
        closed.map(|result| match result {
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ENOTCONN | libc::ECONNRESET | libc::EPIPE)
                ) =>
            {
                Ok(())
            }
            other => other,
        })
    }
}
