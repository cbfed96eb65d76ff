//! TLS listeners: the rustls server configuration of each listener (read
//! from its PEM files at start and on reload), the handshake, and
//! [`TlsStream`], the [`Transport`] that drives rustls's sans-IO
//! [`ServerConnection`] over glommio's readiness-based socket.
//!
//! The handshake runs in the connection's own task, under
//! `limits.connect_timeout_ms`: it only ever waits on its own socket, so a
//! slow or silent client holds no other connection of its shard. Its
//! failures are counted by cause ([`HandshakeFailure`]).
//!
//! The rustls state is the transport's own: at a hand-off it travels, boxed,
//! inside [`MovedTransport::Tls`] beside the duplicated socket (see the
//! module notes of [`super`]), and the home shard continues the same TLS
//! session.
//!
//! The crypto provider is rustls's `ring` one (see `Cargo.toml`).

use super::transport::Transport;
use crate::config::{Config, TlsFiles};
use crate::router::MovedTransport;
use futures_lite::{AsyncRead, AsyncWrite};
use glommio::net::TcpStream;
use rustls::server::WebPkiClientVerifier;
use rustls::{AlertDescription, RootCertStore, ServerConfig, ServerConnection};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

/// The ALPN protocol name of MQTT (IANA registry: "mqtt"). A client that
/// offers ALPN must offer it; a client that offers none is served.
const ALPN_MQTT: &[u8] = b"mqtt";

/// The server configuration of every listener, by index in the
/// configuration: `None` for a plain TCP listener.
pub type ListenerTls = Vec<Option<Arc<ServerConfig>>>;

/// A TLS file of a listener that cannot be used: one line naming the key,
/// the path and what is wrong.
#[derive(Debug, thiserror::Error)]
#[error("listener[{listener}].tls.{key} = {path:?}: {reason}")]
pub struct TlsFileError {
    /// The listener's index in the configuration.
    pub listener: usize,
    /// `cert`, `key` or `client_ca`.
    pub key: &'static str,
    /// The configured path.
    pub path: std::path::PathBuf,
    /// What is wrong, and the fix where there is one.
    pub reason: String,
}

/// Reads the TLS files of every listener of `config`.
pub fn load_listeners(config: &Config) -> Result<ListenerTls, TlsFileError> {
    config
        .listeners()
        .iter()
        .enumerate()
        .map(|(i, listener)| listener.tls().map(|files| load(i, files)).transpose())
        .collect()
}

/// The rustls server configuration of listener `listener` from its files:
/// TLS 1.2 and 1.3, ALPN `mqtt`, and, with `client_ca`, client
/// certificates required and verified against it.
pub fn load(listener: usize, files: &TlsFiles) -> Result<Arc<ServerConfig>, TlsFileError> {
    let error = |key, path: &Path, reason: String| TlsFileError {
        listener,
        key,
        path: path.to_owned(),
        reason,
    };
    let certs =
        read_certificates(&files.cert).map_err(|reason| error("cert", &files.cert, reason))?;
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| error("key", &files.key, pem_reason(e, "a PEM private key")))?;
    let provider = Arc::new(provider());
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&[&rustls::version::TLS12, &rustls::version::TLS13])
        .map_err(|e| error("cert", &files.cert, e.to_string()))?;
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(path) => {
            let mut roots = RootCertStore::empty();
            for cert in
                read_certificates(path).map_err(|reason| error("client_ca", path, reason))?
            {
                roots
                    .add(cert)
                    .map_err(|e| error("client_ca", path, format!("not a usable CA: {e}")))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| error("client_ca", path, e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(certs, key).map_err(|e| {
        error("key", &files.key, format!("does not fit tls.cert ({e}); give the certificate's key"))
    })?;
    config.alpn_protocols = vec![ALPN_MQTT.to_vec()];
    Ok(Arc::new(config))
}

/// rustls's `ring` crypto provider: AES-GCM and ChaCha20-Poly1305, and
/// X25519, P-256 and P-384 key exchange, preferred in that order.
///
/// rustls 0.23.48 puts P-384 first, and ring computes P-384 with generic
/// big-number code: measured here, a handshake then cost the broker about
/// 1.2 ms of CPU (60% in `bn_mul_mont`), against a fraction of that with
/// X25519, which every TLS 1.3 client offers first (OpenSSL, hence
/// mosquitto, rustls, browsers).
// rustls 0.23.48 deprecates ring's provider only because ring has no
// post-quantum key exchange (X25519MLKEM768, which aws-lc-rs has); ring is
// the chosen provider for its build (see Cargo.toml), and clients that offer
// the hybrid group fall back to X25519.
#[allow(deprecated)]
pub fn provider() -> rustls::crypto::CryptoProvider {
    use rustls::crypto::ring::kx_group;
    let mut provider = rustls::crypto::ring::default_provider();
    provider.kx_groups = vec![kx_group::X25519, kx_group::SECP256R1, kx_group::SECP384R1];
    provider
}

/// The certificates of a PEM file, at least one.
fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem_reason(e, "PEM certificates"))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_reason(e, "PEM certificates"))?;
    if certs.is_empty() {
        return Err("no certificate in it; expected PEM certificates (BEGIN CERTIFICATE)".into());
    }
    Ok(certs)
}

/// What is wrong with a PEM file, in a few words.
fn pem_reason(error: rustls_pki_types::pem::Error, expected: &str) -> String {
    match error {
        rustls_pki_types::pem::Error::Io(error) => format!("cannot read it: {error}"),
        rustls_pki_types::pem::Error::NoItemsFound => format!("expected {expected}, found none"),
        error => format!("expected {expected}: {error}"),
    }
}

/// Why a TLS handshake failed, as counted in the metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HandshakeFailure {
    /// A certificate was refused: the client's (unknown issuer, expired,
    /// missing where `client_ca` requires one), or ours by the client.
    BadCertificate,
    /// No protocol version, cipher suite or ALPN protocol in common.
    Protocol,
    /// Not done within `limits.connect_timeout_ms`.
    Timeout,
    /// What it held would pass the shard's `max_pending_connect_bytes`
    /// (counted with the CONNECTs that do: `connect_budget_exceeded`).
    ConnectBudget,
    /// Anything else: not TLS, a socket error, the client went away.
    Other,
}

impl HandshakeFailure {
    /// The cause of a rustls error.
    fn of(error: &rustls::Error) -> Self {
        use rustls::Error;
        match error {
            Error::InvalidCertificate(_)
            | Error::NoCertificatesPresented
            | Error::AlertReceived(
                AlertDescription::BadCertificate
                | AlertDescription::UnsupportedCertificate
                | AlertDescription::CertificateRevoked
                | AlertDescription::CertificateExpired
                | AlertDescription::CertificateUnknown
                | AlertDescription::UnknownCA
                | AlertDescription::CertificateRequired,
            ) => Self::BadCertificate,
            Error::PeerIncompatible(_)
            | Error::NoApplicationProtocol
            | Error::AlertReceived(
                AlertDescription::ProtocolVersion
                | AlertDescription::HandshakeFailure
                | AlertDescription::InsufficientSecurity
                | AlertDescription::NoApplicationProtocol,
            ) => Self::Protocol,
            _ => Self::Other,
        }
    }
}

/// A failed handshake: its cause, and what happened for the log.
#[derive(Debug)]
pub struct HandshakeError {
    /// The cause, for the counters.
    pub cause: HandshakeFailure,
    /// What happened.
    pub error: io::Error,
}

/// Adapts the socket to the `io::Read`/`io::Write` rustls reads records
/// from and writes them to: `Pending` becomes `WouldBlock` (the task's
/// waker is registered for the socket's readiness).
struct SocketIo<'a, 'b> {
    tcp: &'a mut TcpStream,
    cx: &'a mut Context<'b>,
}

impl Read for SocketIo<'_, '_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match AsyncRead::poll_read(Pin::new(&mut *self.tcp), self.cx, buf) {
            Poll::Ready(result) => result,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
}

impl Write for SocketIo<'_, '_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match AsyncWrite::poll_write(Pin::new(&mut *self.tcp), self.cx, buf) {
            Poll::Ready(result) => result,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A TLS connection to one client: the socket and the rustls state.
#[derive(Debug)]
pub struct TlsStream {
    tcp: TcpStream,
    /// The rustls state; `None` only once it was handed off.
    tls: Option<Box<ServerConnection>>,
}

/// The transport was handed off: nothing more may use it.
fn handed_off() -> io::Error {
    io::Error::other("the TLS state was handed off")
}

impl TlsStream {
    /// A connection whose handshake is yet to be done.
    pub fn accept(tcp: TcpStream, config: Arc<ServerConfig>) -> Result<Self, HandshakeError> {
        let tls = ServerConnection::new(config).map_err(|error| HandshakeError {
            cause: HandshakeFailure::Other,
            error: io::Error::other(error),
        })?;
        Ok(Self { tcp, tls: Some(Box::new(tls)) })
    }

    /// Continues a connection handed off by another shard.
    pub fn adopt(tcp: TcpStream, tls: Box<ServerConnection>) -> Self {
        Self { tcp, tls: Some(tls) }
    }

    /// Drives the handshake to its end (what rustls has to send included).
    /// Application data the client sent with its last flight (a CONNECT)
    /// stays buffered for [`Transport::poll_read`]. The caller bounds it
    /// in time.
    ///
    /// `admit` is asked, after each read, whether the bytes received so
    /// far may be held: they bound what rustls buffers of an unfinished
    /// handshake (a partial record of up to 16 KiB), which the shard
    /// charges to `max_pending_connect_bytes` as it does an unfinished
    /// CONNECT.
    pub async fn handshake(
        &mut self,
        mut admit: impl FnMut(usize) -> bool,
    ) -> Result<(), HandshakeError> {
        let mut received = 0;
        futures_lite::future::poll_fn(|cx| self.poll_handshake(cx, &mut received, &mut admit)).await
    }

    fn poll_handshake(
        &mut self,
        cx: &mut Context<'_>,
        received: &mut usize,
        admit: &mut impl FnMut(usize) -> bool,
    ) -> Poll<Result<(), HandshakeError>> {
        let other = |error| HandshakeError { cause: HandshakeFailure::Other, error };
        let Some(tls) = self.tls.as_deref_mut() else {
            return Poll::Ready(Err(other(handed_off())));
        };
        let mut io = SocketIo { tcp: &mut self.tcp, cx };
        loop {
            match send_records(tls, &mut io) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(error)) => return Poll::Ready(Err(other(error))),
                Poll::Pending => return Poll::Pending,
            }
            if !tls.is_handshaking() {
                return Poll::Ready(Ok(()));
            }
            match tls.read_tls(&mut io) {
                Ok(0) => return Poll::Ready(Err(other(io::ErrorKind::UnexpectedEof.into()))),
                Ok(n) => {
                    *received += n;
                    if !admit(*received) {
                        return Poll::Ready(Err(HandshakeError {
                            cause: HandshakeFailure::ConnectBudget,
                            error: io::Error::other(
                                "too many bytes held by unfinished handshakes on this shard",
                            ),
                        }));
                    }
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return Poll::Pending,
                Err(error) => return Poll::Ready(Err(other(error))),
            }
            if let Err(error) = tls.process_new_packets() {
                // The alert rustls queued tells the client why; best effort.
                let _ = tls.write_tls(&mut io);
                let cause = HandshakeFailure::of(&error);
                return Poll::Ready(Err(HandshakeError {
                    cause,
                    error: io::Error::new(io::ErrorKind::InvalidData, error),
                }));
            }
        }
    }

    /// The identity of the client certificate: its subject's common name,
    /// or its first DNS name when it has no common name. `None` without a
    /// client certificate, or when it names nobody.
    pub fn peer_identity(&self) -> Option<String> {
        let certificate = self.tls.as_ref()?.peer_certificates()?.first()?;
        certificate_identity(certificate)
    }
}

/// Writes what rustls has to send until it is all out or the socket is full.
fn send_records(tls: &mut ServerConnection, io: &mut SocketIo<'_, '_>) -> Poll<io::Result<()>> {
    while tls.wants_write() {
        match tls.write_tls(io) {
            Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
            Ok(_) => {}
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => return Poll::Pending,
            Err(error) => return Poll::Ready(Err(error)),
        }
    }
    Poll::Ready(Ok(()))
}

impl Transport for TlsStream {
    fn poll_read(&mut self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        let Some(tls) = self.tls.as_deref_mut() else { return Poll::Ready(Err(handed_off())) };
        let mut io = SocketIo { tcp: &mut self.tcp, cx };
        loop {
            // Plaintext already decrypted first: what came with the
            // handshake, or the rest of a record larger than `buf`.
            match tls.reader().read(buf) {
                // Ok(0): the client's close_notify.
                Ok(n) => return Poll::Ready(Ok(n)),
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                Err(error) => return Poll::Ready(Err(error)),
            }
            match tls.read_tls(&mut io) {
                Ok(0) => return Poll::Ready(Ok(0)),
                Ok(_) => {}
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return Poll::Pending,
                Err(error) => return Poll::Ready(Err(error)),
            }
            if let Err(error) = tls.process_new_packets() {
                let _ = tls.write_tls(&mut io);
                return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, error)));
            }
        }
    }

    fn poll_write(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let Some(tls) = self.tls.as_deref_mut() else { return Poll::Ready(Err(handed_off())) };
        let mut io = SocketIo { tcp: &mut self.tcp, cx };
        loop {
            // Sealed into records at once, up to rustls's buffer limit.
            let taken = tls.writer().write(buf)?;
            if taken > 0 || buf.is_empty() || !tls.wants_write() {
                return Poll::Ready(Ok(taken));
            }
            // rustls's buffer is full: send records first.
            match send_records(tls, &mut io) {
                Poll::Ready(Ok(())) => {}
                other => return other.map_ok(|()| 0),
            }
        }
    }

    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let Some(tls) = self.tls.as_deref_mut() else { return Poll::Ready(Err(handed_off())) };
        match send_records(tls, &mut SocketIo { tcp: &mut self.tcp, cx }) {
            Poll::Ready(Ok(())) => AsyncWrite::poll_flush(Pin::new(&mut self.tcp), cx),
            other => other,
        }
    }

    fn poll_close(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let Some(tls) = self.tls.as_deref_mut() else { return Poll::Ready(Err(handed_off())) };
        // TLS's end of stream first (RFC 8446 section 6.1: close_notify),
        // then TCP's. rustls queues it once, however often this is polled.
        tls.send_close_notify();
        match send_records(tls, &mut SocketIo { tcp: &mut self.tcp, cx }) {
            Poll::Ready(Ok(())) => AsyncWrite::poll_close(Pin::new(&mut self.tcp), cx),
            other => other,
        }
    }

    fn hand_off(&mut self) -> io::Result<MovedTransport> {
        // SAFETY: the fd belongs to `self.tcp`, alive for this call.
        let fd = unsafe { BorrowedFd::borrow_raw(self.tcp.as_raw_fd()) };
        let socket = fd.try_clone_to_owned()?;
        let tls = self.tls.take().ok_or_else(handed_off)?;
        Ok(MovedTransport::Tls { socket, tls })
    }

    fn peer_identity(&self) -> Option<String> {
        TlsStream::peer_identity(self)
    }
}

// ---- the identity of a client certificate (DER) -----------------------------
//
// The certificate was verified by webpki before it gets here; this reads
// the two fields rustls does not expose, refusing (None) whatever does not
// parse rather than trusting it.

/// The DER OID of the X.520 commonName attribute (2.5.4.3).
const OID_COMMON_NAME: &[u8] = &[0x55, 0x04, 0x03];
/// The DER OID of the subjectAltName extension (2.5.29.17).
const OID_SUBJECT_ALT_NAME: &[u8] = &[0x55, 0x1d, 0x11];

/// One DER element of `input`: its tag, its contents and what follows it.
fn der(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let octets = usize::from(first & 0x7f);
        if octets == 0 || octets > 4 || rest.len() < octets {
            return None;
        }
        let (bytes, rest) = rest.split_at(octets);
        (bytes.iter().fold(0usize, |len, &b| (len << 8) | usize::from(b)), rest)
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

/// The elements of a DER sequence's (or set's) contents.
fn der_items(mut contents: &[u8]) -> impl Iterator<Item = (u8, &[u8])> {
    std::iter::from_fn(move || {
        let (tag, value, rest) = der(contents)?;
        contents = rest;
        Some((tag, value))
    })
}

/// The subject's common name of a certificate, else its first DNS name.
fn certificate_identity(certificate: &[u8]) -> Option<String> {
    const SEQUENCE: u8 = 0x30;
    let (SEQUENCE, certificate, _) = der(certificate)? else { return None };
    let (SEQUENCE, tbs, _) = der(certificate)? else { return None };
    let mut fields = der_items(tbs).peekable();
    // version [0] EXPLICIT, optional.
    fields.next_if(|(tag, _)| *tag == 0xa0);
    // serialNumber, signature, issuer, validity, then the subject.
    let (_, subject) = fields.nth(4)?;
    if let Some(name) = common_name(subject) {
        return Some(name);
    }
    // subjectPublicKeyInfo, then issuerUniqueID [1], subjectUniqueID [2],
    // extensions [3] EXPLICIT.
    let (_, extensions) = fields.find(|(tag, _)| *tag == 0xa3)?;
    let (SEQUENCE, extensions, _) = der(extensions)? else { return None };
    der_items(extensions).find_map(|(_, extension)| {
        let mut parts = der_items(extension);
        let (0x06, OID_SUBJECT_ALT_NAME) = parts.next()? else { return None };
        // critical BOOLEAN (optional), then extnValue OCTET STRING.
        let (_, value) = parts.find(|(tag, _)| *tag == 0x04)?;
        let (SEQUENCE, names, _) = der(value)? else { return None };
        // dNSName [2] IA5String.
        der_items(names).find(|(tag, _)| *tag == 0x82).and_then(|(_, name)| text(name))
    })
}

/// The first commonName of a Name (SEQUENCE OF SET OF AttributeTypeAndValue).
fn common_name(name: &[u8]) -> Option<String> {
    der_items(name).flat_map(|(_, set)| der_items(set)).find_map(|(_, attribute)| {
        let mut parts = der_items(attribute);
        let (0x06, OID_COMMON_NAME) = parts.next()? else { return None };
        match parts.next()? {
            // UTF8String, PrintableString, TeletexString, IA5String.
            (0x0c | 0x13 | 0x14 | 0x16, value) => text(value),
            _ => None,
        }
    })
}

/// A non-empty UTF-8 string.
fn text(bytes: &[u8]) -> Option<String> {
    std::str::from_utf8(bytes).ok().filter(|text| !text.is_empty()).map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn certificate(params: rcgen::CertificateParams) -> Vec<u8> {
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn the_identity_is_the_common_name_else_the_first_dns_name() {
        let mut params = rcgen::CertificateParams::new(vec!["one.example".into()]).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(rcgen::DnType::OrganizationName, "Acme");
        params.distinguished_name.push(rcgen::DnType::CommonName, "device-7");
        assert_eq!(certificate_identity(&certificate(params.clone())).as_deref(), Some("device-7"));
        params.distinguished_name.remove(rcgen::DnType::CommonName);
        params.subject_alt_names.insert(0, rcgen::SanType::IpAddress([127, 0, 0, 1].into()));
        assert_eq!(
            certificate_identity(&certificate(params.clone())).as_deref(),
            Some("one.example")
        );
        params.subject_alt_names.clear();
        assert_eq!(certificate_identity(&certificate(params)), None);
    }

    #[test]
    fn a_certificate_that_does_not_parse_has_no_identity() {
        let mut params = rcgen::CertificateParams::new(vec!["a.example".into()]).unwrap();
        params.distinguished_name.push(rcgen::DnType::CommonName, "device");
        let der = certificate(params);
        for len in 0..der.len() {
            // Never a panic, whatever the prefix.
            let _ = certificate_identity(&der[..len]);
        }
        assert_eq!(certificate_identity(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]), None);
    }

    #[test]
    fn x25519_is_the_preferred_key_exchange() {
        let groups: Vec<_> = provider().kx_groups.iter().map(|group| group.name()).collect();
        use rustls::NamedGroup;
        assert_eq!(groups, [NamedGroup::X25519, NamedGroup::secp256r1, NamedGroup::secp384r1]);
    }

    #[test]
    fn handshake_failures_are_told_apart_by_cause() {
        use rustls::{CertificateError, Error, PeerIncompatible};
        let cases = [
            (
                Error::InvalidCertificate(CertificateError::Expired),
                HandshakeFailure::BadCertificate,
            ),
            (
                Error::InvalidCertificate(CertificateError::UnknownIssuer),
                HandshakeFailure::BadCertificate,
            ),
            (Error::NoCertificatesPresented, HandshakeFailure::BadCertificate),
            (Error::AlertReceived(AlertDescription::UnknownCA), HandshakeFailure::BadCertificate),
            (
                Error::PeerIncompatible(PeerIncompatible::NoCipherSuitesInCommon),
                HandshakeFailure::Protocol,
            ),
            (Error::AlertReceived(AlertDescription::ProtocolVersion), HandshakeFailure::Protocol),
            (Error::NoApplicationProtocol, HandshakeFailure::Protocol),
            (Error::DecryptError, HandshakeFailure::Other),
        ];
        for (error, cause) in cases {
            assert_eq!(HandshakeFailure::of(&error), cause, "{error}");
        }
    }
}
