//! WebSocket listeners (`protocol = "ws"`; over `tls`, wss): the HTTP
//! upgrade, and [`WebSocket`], the [`Transport`] that frames MQTT bytes
//! over any inner transport (a TCP socket for ws, a [`super::tls::TlsStream`]
//! for wss) with the sans-IO [`WsCodec`].
//!
//! The upgrade runs in the connection's own task, bounded by
//! `limits.connect_timeout_ms` and `limits.max_connect_size` (the request
//! is charged to the shard's `max_pending_connect_bytes` like an unfinished
//! CONNECT), and counted (`ws_upgrades`, `ws_upgrade_failed`).
//!
//! At a hand-off the framing state (a partial frame, its mask and position,
//! frames not yet sent) travels inside [`MovedTransport::WebSocket`] with
//! the inner transport's own; it is a few hundred bytes, moved as a `Box`.

use super::connection::{Accepted, PendingConnect};
use super::transport::Transport;
use super::NetContext;
use crate::protocol::websocket::{close_code, WsCodec};
use crate::router::MovedTransport;
use futures_lite::future::poll_fn;
use sha1::{Digest, Sha1};
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

/// The subprotocols accepted, preferred first. "The Client MUST include
/// "mqtt" in the list of WebSocket Sub Protocols it offers" [MQTT-6.0.0-3]
/// and "The WebSocket Sub Protocol name selected and returned by the
/// Server MUST be "mqtt"" [MQTT-6.0.0-4]; older MQTT 3.1 clients offer
/// "mqttv3.1" alone (the name of the MQTT 3.1 days), which Mosquitto
/// accepts too, and get it back.
const SUBPROTOCOLS: [&str; 2] = ["mqtt", "mqttv3.1"];

/// RFC 6455 section 1.3: appended to the client's key for the accept key.
const ACCEPT_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Headers an upgrade request may have at most.
const MAX_HEADERS: usize = 64;

/// MQTT bytes framed over WebSocket, over the transport `T`.
pub struct WebSocket<T> {
    inner: T,
    /// The framing state; `None` only once handed off.
    codec: Option<Box<WsCodec>>,
}

fn handed_off() -> io::Error {
    io::Error::other("the WebSocket state was handed off")
}

impl<T: Transport> WebSocket<T> {
    /// A connection upgraded here or continued after a hand-off.
    pub fn new(inner: T, codec: Box<WsCodec>) -> Self {
        Self { inner, codec: Some(codec) }
    }
}

/// Sends the frames the codec holds until all are out or `inner` is full.
fn send_frames<T: Transport>(
    inner: &mut T,
    codec: &mut WsCodec,
    cx: &mut Context<'_>,
) -> Poll<io::Result<()>> {
    while !codec.output().is_empty() {
        match inner.poll_write(cx, codec.output()) {
            Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
            Poll::Ready(Ok(n)) => codec.consume(n),
            Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
            Poll::Pending => return Poll::Pending,
        }
    }
    Poll::Ready(Ok(()))
}

impl<T: Transport> Transport for WebSocket<T> {
    fn poll_read(&mut self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        let Some(codec) = self.codec.as_deref_mut() else { return Poll::Ready(Err(handed_off())) };
        loop {
            if codec.close_received() {
                // The client's close frame (answered), or a refused frame
                // (our close frame says why): the end of the stream.
                return Poll::Ready(match codec.error() {
                    None => Ok(0),
                    Some(error) => Err(io::Error::new(io::ErrorKind::InvalidData, error)),
                });
            }
            let mut n = codec.take_early(buf);
            if n == 0 {
                n = match self.inner.poll_read(cx, buf) {
                    Poll::Ready(Ok(0)) => return Poll::Ready(Ok(0)),
                    Poll::Ready(Ok(n)) => n,
                    other => return other,
                };
            }
            let decoded = codec.decode(&mut buf[..n]);
            // Pongs and close frames go at once, as far as the socket
            // takes them (the rest with the next flush).
            if !codec.output().is_empty() {
                let _ = send_frames(&mut self.inner, codec, cx);
            }
            match decoded {
                Ok(0) => continue,
                Ok(n) => return Poll::Ready(Ok(n)),
                Err(error) => {
                    return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, error)))
                }
            }
        }
    }

    fn poll_write(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let Some(codec) = self.codec.as_deref_mut() else { return Poll::Ready(Err(handed_off())) };
        if codec.output_full() {
            match send_frames(&mut self.inner, codec, cx) {
                Poll::Ready(Ok(())) => {}
                other => return other.map_ok(|()| 0),
            }
        }
        Poll::Ready(Ok(codec.write(buf)))
    }

    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let Some(codec) = self.codec.as_deref_mut() else { return Poll::Ready(Err(handed_off())) };
        // One binary frame per batch.
        codec.seal();
        match send_frames(&mut self.inner, codec, cx) {
            Poll::Ready(Ok(())) => self.inner.poll_flush(cx),
            other => other,
        }
    }

    fn poll_close(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let Some(codec) = self.codec.as_deref_mut() else { return Poll::Ready(Err(handed_off())) };
        // The closing handshake (RFC 6455 section 7.1.2), then the inner
        // transport's end of stream; queued once however often polled.
        codec.seal();
        codec.queue_close(close_code::NORMAL);
        match send_frames(&mut self.inner, codec, cx) {
            Poll::Ready(Ok(())) => self.inner.poll_close(cx),
            other => other,
        }
    }

    fn hand_off(&mut self) -> io::Result<MovedTransport> {
        let inner = Box::new(self.inner.hand_off()?);
        let codec = self.codec.take().ok_or_else(handed_off)?;
        Ok(MovedTransport::WebSocket { inner, codec })
    }

    fn peer_identity(&self) -> Option<String> {
        self.inner.peer_identity()
    }

    fn has_closing_handshake(&self) -> bool {
        // RFC 6455 section 7.1.2: the close frame, then the TCP close.
        true
    }
}

/// Why an upgrade request was refused.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Refusal {
    /// The HTTP status line's code and reason phrase.
    status: &'static str,
    /// Extra response header lines (each ending in CRLF).
    headers: &'static str,
    /// What was wrong, for the client (the response body) and the log.
    reason: &'static str,
}

const fn refuse(status: &'static str, reason: &'static str) -> Refusal {
    Refusal { status, headers: "", reason }
}

impl Refusal {
    /// The HTTP response that tells the client.
    fn response(&self) -> String {
        format!(
            "HTTP/1.1 {}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: \
             close\r\n{}\r\n{}\n",
            self.status,
            self.reason.len() + 1,
            self.headers,
            self.reason
        )
    }
}

/// The values of header `name` in `request`, split at commas, trimmed.
fn tokens<'a>(
    request: &'a httparse::Request<'_, '_>,
    name: &'a str,
) -> impl Iterator<Item = &'a str> {
    request
        .headers
        .iter()
        .filter(move |header| header.name.eq_ignore_ascii_case(name))
        .filter_map(|header| std::str::from_utf8(header.value).ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
}

/// Checks a complete upgrade request (RFC 6455 section 4.2.1) against the
/// listener's `path`; returns the `101 Switching Protocols` response.
pub(super) fn accept(request: &httparse::Request<'_, '_>, path: &str) -> Result<String, Refusal> {
    if request.method != Some("GET") {
        return Err(refuse("400 Bad Request", "a WebSocket upgrade is a GET request"));
    }
    let target = request.path.unwrap_or("");
    if target.split(['?', '#']).next() != Some(path) {
        return Err(refuse("404 Not Found", "no WebSocket endpoint at this path"));
    }
    if !tokens(request, "upgrade").any(|token| token.eq_ignore_ascii_case("websocket"))
        || !tokens(request, "connection").any(|token| token.eq_ignore_ascii_case("upgrade"))
    {
        return Err(refuse("400 Bad Request", "not a WebSocket upgrade request"));
    }
    if !tokens(request, "sec-websocket-version").any(|version| version == "13") {
        // RFC 6455 section 4.4: the versions the server speaks.
        return Err(Refusal {
            status: "426 Upgrade Required",
            headers: "Sec-WebSocket-Version: 13\r\n",
            reason: "WebSocket version 13 is required",
        });
    }
    let mut keys = tokens(request, "sec-websocket-key");
    let key = match (keys.next(), keys.next()) {
        (Some(key), None) if key_is_valid(key) => key,
        _ => return Err(refuse("400 Bad Request", "a Sec-WebSocket-Key is required")),
    };
    let Some(protocol) = SUBPROTOCOLS
        .into_iter()
        .find(|wanted| tokens(request, "sec-websocket-protocol").any(|offered| offered == *wanted))
    else {
        return Err(refuse(
            "400 Bad Request",
            "the mqtt subprotocol is required (Sec-WebSocket-Protocol: mqtt)",
        ));
    };
    Ok(format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {}\r\nSec-WebSocket-Protocol: {protocol}\r\n\r\n",
        accept_key(key)
    ))
}

/// A Sec-WebSocket-Key is 16 bytes in base64 (RFC 6455 section 4.1).
fn key_is_valid(key: &str) -> bool {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.decode(key).is_ok_and(|bytes| bytes.len() == 16)
}

/// The Sec-WebSocket-Accept of a key (RFC 6455 section 4.2.2).
fn accept_key(key: &str) -> String {
    use base64::Engine;
    let digest = Sha1::new().chain_update(key).chain_update(ACCEPT_GUID).finalize();
    base64::engine::general_purpose::STANDARD.encode(digest)
}

/// How an upgrade ended without a WebSocket.
enum Failure {
    /// Refused with an HTTP response.
    Refused(Refusal),
    /// The client went away, the socket failed, or the shard's budget of
    /// pending bytes is spent.
    Io(io::Error),
}

/// Writes `bytes` whole and flushes.
async fn write_all<T: Transport>(transport: &mut T, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        let n = poll_fn(|cx| transport.poll_write(cx, bytes)).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        bytes = &bytes[n..];
    }
    poll_fn(|cx| transport.poll_flush(cx)).await
}

/// Reads the upgrade request and answers it; returns the bytes the client
/// sent after the request.
async fn upgrade<T: Transport>(
    ctx: &Rc<NetContext>,
    transport: &mut T,
    path: &str,
) -> Result<Vec<u8>, Failure> {
    let max = ctx.limits().max_connect_size as usize;
    let mut held = PendingConnect::new(Rc::clone(ctx));
    let mut request = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        let n = poll_fn(|cx| transport.poll_read(cx, &mut chunk)).await.map_err(Failure::Io)?;
        if n == 0 {
            return Err(Failure::Io(io::ErrorKind::UnexpectedEof.into()));
        }
        request.extend_from_slice(&chunk[..n]);
        if !held.hold(request.len()) {
            return Err(Failure::Io(io::Error::other(
                "too many bytes held by unfinished connects on this shard",
            )));
        }
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut parsed = httparse::Request::new(&mut headers);
        let refusal = match parsed.parse(&request) {
            Ok(httparse::Status::Complete(len)) => match accept(&parsed, path) {
                Ok(response) => {
                    let early = request[len..].to_vec();
                    write_all(transport, response.as_bytes()).await.map_err(Failure::Io)?;
                    return Ok(early);
                }
                Err(refusal) => refusal,
            },
            Ok(httparse::Status::Partial) if request.len() <= max => continue,
            Ok(httparse::Status::Partial) | Err(httparse::Error::TooManyHeaders) => {
                refuse("431 Request Header Fields Too Large", "the upgrade request is too large")
            }
            Err(_) => refuse("400 Bad Request", "not an HTTP request"),
        };
        drop(held);
        // Best effort: the client learns why, then the connection ends.
        if write_all(transport, refusal.response().as_bytes()).await.is_ok() {
            let _ = poll_fn(|cx| transport.poll_close(cx)).await;
        }
        return Err(Failure::Refused(refusal));
    }
}

/// Serves a connection of a WebSocket listener: the upgrade at `path`,
/// then [`super::serve`] over [`WebSocket`], both before `deadline` (the
/// connect timeout).
pub(super) async fn serve_ws<T: Transport>(
    ctx: Rc<NetContext>,
    mut transport: T,
    path: Arc<str>,
    peer: SocketAddr,
    listener: usize,
    deadline: Instant,
) {
    // Boxed: the upgrade's state (the request's buffer and headers, the
    // refusal's drain) must not size the task that then serves the
    // connection for its whole life.
    let upgraded = Box::pin(upgrade_within(&ctx, &mut transport, &path, peer, deadline)).await;
    match upgraded {
        Some(early) => {
            ctx.count(|net| net.ws_upgrades += 1);
            let transport = WebSocket::new(transport, Box::new(WsCodec::new(early)));
            // A task of its own: this one (which holds the upgrade's
            // arguments) ends, and the connection's long-lived task is the
            // `serve` future alone.
            let serving = super::serve(ctx, transport, peer, listener, Accepted::Read(deadline));
            glommio::spawn_local(serving).detach();
        }
        None => {
            ctx.count(|net| net.ws_upgrade_failed += 1);
            ctx.connection_closed(listener);
        }
    }
}

/// The upgrade at `path` before `deadline`: the bytes read after the
/// request, or `None` when it was refused or failed (logged within the
/// shard's connection log budget).
async fn upgrade_within<T: Transport>(
    ctx: &Rc<NetContext>,
    transport: &mut T,
    path: &str,
    peer: SocketAddr,
    deadline: Instant,
) -> Option<Vec<u8>> {
    let upgraded = futures_lite::future::or(upgrade(ctx, transport, path), async {
        super::timer_until(deadline).await;
        Err(Failure::Io(io::ErrorKind::TimedOut.into()))
    })
    .await;
    let failure = match upgraded {
        Ok(early) => return Some(early),
        Err(failure) => failure,
    };
    if matches!(failure, Failure::Refused(_)) {
        // The response is out and the write side shut: read what the
        // client still sends until it closes, so that closing with unread
        // input (a reset) cannot destroy the response before the client
        // reads it. Bounded in time.
        let discard = async {
            let mut chunk = [0u8; 1024];
            while let Ok(1..) = poll_fn(|cx| transport.poll_read(cx, &mut chunk)).await {}
        };
        let timer = async {
            glommio::timer::Timer::new(ctx.limits().connect_timeout).await;
        };
        futures_lite::future::or(discard, timer).await;
    }
    if ctx.may_log_connection() {
        match failure {
            Failure::Refused(refusal) => tracing::info!(
                %peer, status = refusal.status, reason = refusal.reason,
                "WebSocket upgrade refused"
            ),
            Failure::Io(error) => tracing::info!(%peer, %error, "WebSocket upgrade failed"),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The answer to `request` (a complete HTTP request) at path "/mqtt".
    fn answer(request: &str) -> Result<String, Refusal> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut parsed = httparse::Request::new(&mut headers);
        assert!(parsed.parse(request.as_bytes()).unwrap().is_complete());
        accept(&parsed, "/mqtt")
    }

    fn request(path: &str, extra: &str) -> String {
        format!(
            "GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: keep-alive, \
             Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{extra}\r\n"
        )
    }

    const V13: &str = "Sec-WebSocket-Version: 13\r\n";

    #[test]
    fn the_upgrade_echoes_the_mqtt_subprotocol_and_the_accept_key() {
        let response = answer(&request(
            "/mqtt?x=1",
            &format!("{V13}Sec-WebSocket-Protocol: mqttv3.1, mqtt\r\n"),
        ))
        .unwrap();
        // The key and accept value of RFC 6455 section 1.3.
        assert!(response.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
        assert!(response.contains("Sec-WebSocket-Protocol: mqtt\r\n"), "{response}");
        let response =
            answer(&request("/mqtt", &format!("{V13}Sec-WebSocket-Protocol: mqttv3.1\r\n")))
                .unwrap();
        assert!(response.contains("Sec-WebSocket-Protocol: mqttv3.1\r\n"), "{response}");
    }

    #[test]
    fn bad_upgrades_are_refused_with_an_http_status() {
        let mqtt = "Sec-WebSocket-Protocol: mqtt\r\n";
        let status = |request: &str| answer(request).unwrap_err().status;
        assert_eq!(status(&request("/other", &format!("{V13}{mqtt}"))), "404 Not Found");
        assert_eq!(status(&request("/mqtt", V13)), "400 Bad Request");
        assert_eq!(
            status(&request("/mqtt", &format!("{V13}Sec-WebSocket-Protocol: wamp\r\n"))),
            "400 Bad Request"
        );
        assert_eq!(status(&request("/mqtt", mqtt)), "426 Upgrade Required");
        assert_eq!(status("GET /mqtt HTTP/1.1\r\nHost: x\r\n\r\n"), "400 Bad Request");
        assert_eq!(
            status(&format!(
                "GET /mqtt HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n{V13}{mqtt}\
                 Sec-WebSocket-Key: short\r\n\r\n"
            )),
            "400 Bad Request"
        );
    }
}
