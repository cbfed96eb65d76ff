//! The only socket code: listeners, the accept loop, the connection tasks
//! that move bytes between sockets and sessions, and the admin HTTP
//! listener.
//!
//! * [`listener`]: the listening sockets (SO_REUSEPORT, one per shard).
//! * [`admin`]: health probes and metrics over HTTP, on a thread of its own.
//! * [`Transport`]: the byte stream a connection runs over. The connection
//!   loop is generic over it: plain TCP, TLS ([`tls`]), WebSocket over
//!   either (`websocket`).
//! * [`tls`]: the TLS listeners' configurations, handshake and transport.
//! * `websocket`: the WebSocket upgrade and transport (ws, and wss over
//!   TLS); the framing itself is [`crate::protocol::websocket`], sans IO.
//! * [`proxy`]: the PROXY protocol header a `proxy_protocol` listener reads
//!   before anything else (before the TLS handshake too): its client
//!   address replaces the socket's peer address for the connection's life,
//!   the hand-off included ([`crate::router::HandOff`] carries it).
//! * [`serve`]: one connection's task. It reads the CONNECT, asks the
//!   shard where the connection goes ([`crate::shard::Shard::place`]:
//!   attached here, handed off, or refused) and, when attached, pumps
//!   packets both ways.
//!
//! # The hand-off
//!
//! A connection whose client id is homed on another shard moves there: the
//! accepting shard sends a [`crate::router::HandOff`] over the mesh, with
//! the transport ([`crate::router::MovedTransport`]: a duplicate of the
//! socket and whatever transport state must travel), the CONNECT as it
//! was decoded and the bytes read after it. The home shard neither copies
//! nor decodes them again. Whatever the home shard would refuse is
//! refused before moving.
//!
//! # How a TLS connection reaches its home shard
//!
//! The client id is inside the encrypted CONNECT, so the accepting shard
//! does the TLS handshake, decrypts the CONNECT and places it like any
//! other. On a hand-off, the rustls `ServerConnection` travels with the
//! socket: it is `Send`, and moving it is moving a `Box` inside the
//! hand-off message (a `MovedTransport::Tls` beside `Tcp`), so the cost of
//! a hand-off stays what it is for TCP (one mesh message, one `dup`, one
//! socket registration on the home shard). The session state goes whole:
//! traffic secrets and sequence numbers, a partial record already read,
//! session tickets not yet sent. The home shard continues the same TLS
//! session; the client sees nothing.
//!
//! Not kTLS for the hand-off: switching to kernel TLS needs the `tls`
//! kernel module (absent from many container hosts) and a cipher suite
//! the kernel implements; it can only happen on a record boundary (a
//! partial record rustls has read cannot be given to the kernel); and a
//! TLS 1.3 KeyUpdate from the client arrives as a control record that the
//! readiness-based `recv` the connection loop uses cannot take. The
//! rustls state works everywhere and makes the hand-off no special case.
//! kTLS stays an option for the steady state: once a connection is home
//! and at a record boundary, its transport may hand its record layer to
//! the kernel where supported; that is independent of the hand-off.
//!
//! # WebSocket connections
//!
//! A WebSocket connection (`websocket`, ws or wss) is placed the same
//! way: the accepting shard does the upgrade (and the TLS handshake for
//! wss), unframes the CONNECT and places it. On a hand-off its framing state
//! ([`crate::protocol::websocket::WsCodec`]: a partial frame header, the
//! mask and its position, a partial control frame, frames not yet sent)
//! goes boxed in `MovedTransport::WebSocket` around the inner transport's
//! (`Tcp`, or `Tls` with the rustls state): one more `Box` of a few hundred
//! bytes in the same mesh message, no other cost, and a frame cut in the
//! middle by the hand-off continues on the home shard. The alternative,
//! ending the frame layer before moving (waiting for a frame boundary on
//! the accepting shard), cannot be forced: the client decides where its
//! frames end.

pub mod admin;
pub mod admission;
mod connection;
pub mod listener;
pub mod proxy;
pub mod tls;
mod transport;
mod websocket;

pub use connection::{serve, Accepted};
pub use transport::Transport;

use crate::auth::enhanced::Authenticators;
use crate::auth::pool::Verifier;
use crate::metrics::NetCounters;
use crate::protocol::ReasonCode;
use crate::ratelimit::RateLimit;
use crate::router::{HandOff, MovedTransport, Outbox, ShardId};
use crate::shard::Shard;
use admission::{Admission, ListenerAdmission};
use glommio::net::{TcpListener, TcpStream};
use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};
use tls::{HandshakeFailure, ListenerTls, TlsStream};
use websocket::WebSocket;

/// Connect, refusal and disconnect lines a shard logs per second at most;
/// past it, one summary line per second tells how many were held back.
pub const CONNECTION_LOG_LINES_PER_S: u32 = 50;

/// Bytes one socket read may bring in at most.
const READ_SCRATCH: usize = 64 * 1024;

/// What the connection tasks of one shard share.
#[derive(Debug)]
pub struct NetContext {
    /// This shard's number.
    pub shard_id: ShardId,
    /// The shard's state.
    pub shard: Rc<RefCell<Shard>>,
    /// Queues towards the other shards.
    pub outbox: Rc<Outbox>,
    /// The limits in force; a Cell so that a configuration reload can
    /// replace them (see [`NetContext::set_limits`]).
    limits: Cell<NetLimits>,
    /// Bytes held now for connections whose CONNECT is incomplete.
    pending_connect_bytes: Cell<usize>,
    /// Connections open in the whole process, against `max_connections`.
    pub open_connections: Arc<AtomicUsize>,
    /// Socket reads land here first (one read at a time per shard).
    read_scratch: RefCell<Box<[u8]>>,
    /// Connection tasks alive on this shard.
    live: Cell<usize>,
    /// The accept loops waiting for the shard's shutdown.
    shutdown_wakers: RefCell<Vec<Waker>>,
    /// The budget of connect and disconnect log lines (a reconnect storm
    /// must not flood the log).
    connection_logs: RefCell<RateLimit>,
    /// How clients authenticate.
    auth: NetAuth,
    /// The TLS configuration of each listener (`None`: plain TCP); a
    /// reload replaces it (see [`NetContext::set_tls`]).
    tls: RefCell<ListenerTls>,
    /// Each listener's limits and open connections (process-wide).
    listeners: Arc<[ListenerAdmission]>,
    /// This shard's connection-rate buckets and refusal log lines.
    admission: RefCell<Admission>,
    /// `[redirect]`: where every client is sent instead of being served.
    redirect: Option<Redirect>,
    /// Each listener's WebSocket path (`None`: MQTT straight over TCP/TLS).
    websocket: Arc<[Option<Arc<str>>]>,
}

/// What the network layers of all shards share, built once at start.
#[derive(Clone, Debug)]
pub struct NetShared {
    /// Connections open in the whole process.
    pub open_connections: Arc<AtomicUsize>,
    /// How the clients of each listener authenticate.
    pub auth: NetAuth,
    /// Each listener's connection limits and open connections.
    pub listeners: Arc<[ListenerAdmission]>,
    /// How many shards share the listeners (and their connection rates).
    pub nr_shards: usize,
    /// `[redirect]`: where every client is sent instead of being served.
    pub redirect: Option<Redirect>,
    /// Each listener's WebSocket path (`None`: not a WebSocket listener).
    pub websocket: Arc<[Option<Arc<str>>]>,
}

/// A broker configured to send its clients elsewhere (`[redirect]`): every
/// CONNECT is answered with a CONNACK carrying `reason` and, to a v5
/// client, the Server Reference (MQTT 5.0 §4.11).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Redirect {
    /// 0x9C Use another server or 0x9D Server moved (3.1.1 clients get
    /// return code 3, Server unavailable: 3.1.1 has no redirection).
    pub reason: ReasonCode,
    /// The Server Reference property.
    pub server_reference: bytestring::ByteString,
}

/// How the clients of each listener authenticate; the same for every shard.
#[derive(Clone, Debug)]
pub struct NetAuth {
    /// Checks passwords when a `password_file` is configured: then every
    /// CONNECT with a user name is checked (off the shard).
    pub verifier: Option<Arc<Verifier>>,
    /// Per listener (by index in the configuration): whether a CONNECT
    /// without a user name is accepted.
    pub anonymous: Arc<[bool]>,
    /// Per listener: whether the client certificate's identity is the
    /// user name (`use_identity_as_username`); the password file is then
    /// not consulted.
    pub identity_as_username: Arc<[bool]>,
    /// The MQTT 5.0 enhanced authentication methods offered (SCRAM-SHA-256
    /// when a `scram_file` is configured); a CONNECT with another
    /// Authentication Method is refused with 0x8C.
    pub methods: Arc<Authenticators>,
}

impl NetContext {
    /// The context of one shard's network layer.
    pub fn new(
        shard_id: ShardId,
        shard: Rc<RefCell<Shard>>,
        outbox: Rc<Outbox>,
        limits: NetLimits,
        shared: NetShared,
        tls: ListenerTls,
    ) -> Self {
        let NetShared { open_connections, auth, listeners, nr_shards, redirect, websocket } =
            shared;
        let admission = Admission::new(&listeners, nr_shards, Instant::now());
        Self {
            shard_id,
            shard,
            outbox,
            limits: Cell::new(limits),
            pending_connect_bytes: Cell::new(0),
            open_connections,
            read_scratch: RefCell::new(vec![0; READ_SCRATCH].into_boxed_slice()),
            live: Cell::new(0),
            shutdown_wakers: RefCell::new(Vec::new()),
            connection_logs: RefCell::new(RateLimit::new(
                CONNECTION_LOG_LINES_PER_S,
                Duration::from_secs(1),
            )),
            auth,
            tls: RefCell::new(tls),
            listeners,
            admission: RefCell::new(admission),
            redirect,
            websocket,
        }
    }

    /// Replaces the listeners' TLS configurations (a reload re-read the
    /// certificates): connections accepted from now on use the new ones.
    pub fn set_tls(&self, tls: ListenerTls) {
        *self.tls.borrow_mut() = tls;
    }

    /// The TLS configuration of listener `index`, when it speaks TLS.
    fn tls_config(&self, index: usize) -> Option<Arc<rustls::ServerConfig>> {
        self.tls.borrow().get(index).cloned().flatten()
    }

    /// Whether one more connect or disconnect line may be logged now
    /// (`info` is enabled and the shard's budget has room); the lines held
    /// back are told by [`Self::poll_connection_log_summary`].
    fn may_log_connection(&self) -> bool {
        if !tracing::enabled!(tracing::Level::INFO) {
            return false;
        }
        let now = Instant::now();
        self.poll_connection_log_summary(now);
        self.connection_logs.borrow_mut().record(1, now).is_some()
    }

    /// Logs how many connect and disconnect lines were held back, once
    /// per second while there are some; the shard's tick calls it.
    pub fn poll_connection_log_summary(&self, now: Instant) {
        let held_back = self.connection_logs.borrow_mut().poll_due(now);
        if let Some(suppressed) = held_back {
            tracing::info!(
                suppressed,
                limit_per_s = CONNECTION_LOG_LINES_PER_S,
                "connection log lines suppressed"
            );
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> NetLimits {
        self.limits.get()
    }

    /// Replaces the limits (a configuration reload). `max_connections` and
    /// `max_pending_connect_bytes` apply at once (nothing open is closed);
    /// `connect_timeout`, `max_connect_size` and `max_packet_size` apply
    /// to connections accepted from now on.
    pub fn set_limits(&self, limits: NetLimits) {
        self.limits.set(limits);
    }

    /// Starts the shard's shutdown: the accept loops stop and no session
    /// starts or moves here any more (see `Shard::begin_drain`); the
    /// connections are closed by [`close_connections`](Self::close_connections).
    pub fn stop_accepting(&self) {
        self.shard.borrow_mut().begin_drain();
        self.shutdown_wakers.take().into_iter().for_each(Waker::wake);
    }

    /// Closes up to `count` connections of the shard (their sessions wake
    /// their tasks to close: see `Shard::close_connections`); returns how
    /// many stay connected.
    pub fn close_connections(&self, count: usize) -> usize {
        self.shard.borrow_mut().close_connections(count, std::time::Instant::now())
    }

    /// Counts into the shard's [`NetCounters`]; never called while the
    /// shard is borrowed.
    fn count(&self, count: impl FnOnce(&mut NetCounters)) {
        count(self.shard.borrow_mut().net_counters());
    }

    /// Connection tasks alive on this shard.
    pub fn live_connections(&self) -> usize {
        self.live.get()
    }

    fn count_malformed(&self) {
        self.count(|net| net.malformed += 1);
    }

    fn count_handoff(&self) {
        self.count(|net| net.handed_off += 1);
    }

    /// Bytes held now for connections whose CONNECT is incomplete.
    pub fn pending_connect_bytes(&self) -> usize {
        self.pending_connect_bytes.get()
    }

    /// Takes a connection slot for a connection accepted on `listener`;
    /// false (counted and logged) when a limit refuses it (see
    /// [`admission`]).
    fn try_open(&self, listener: usize) -> bool {
        let mut shard = self.shard.borrow_mut();
        let admitted = self.admission.borrow_mut().admit(
            listener,
            &self.listeners,
            &self.open_connections,
            self.limits.get().max_connections,
            Instant::now(),
            shard.net_counters(),
        );
        if admitted.is_err() {
            return false;
        }
        self.live.set(self.live.get() + 1);
        true
    }

    /// Logs the connection refusals held back; the shard's tick calls it.
    pub fn poll_refusal_log_summary(&self, now: Instant) {
        self.admission.borrow_mut().poll_log_summary(now);
    }

    /// A connection task ended because its socket moved to another shard,
    /// which keeps counting it in `open_connections`.
    fn connection_moved(&self) {
        self.live.set(self.live.get() - 1);
    }

    fn connection_closed(&self, listener: usize) {
        Admission::release(listener, &self.listeners, &self.open_connections);
        self.live.set(self.live.get() - 1);
    }

    /// Starts serving a connection handed off by another shard.
    pub fn adopt(self: &Rc<Self>, handoff: crate::router::HandOff) {
        use std::os::fd::{FromRawFd, IntoRawFd};
        // The accepting shard counted it in open_connections; this shard
        // takes over that count.
        self.live.set(self.live.get() + 1);
        let ctx = Rc::clone(self);
        tracing::trace!(peer = %handoff.peer, "adopting a handed-off connection");
        let HandOff { transport, connect, rest, verified, peer, listener } = handoff;
        // SAFETY: the hand-off owns the fd, and `into_raw_fd` gives that
        // ownership to the stream.
        let tcp =
            |socket: std::os::fd::OwnedFd| unsafe { TcpStream::from_raw_fd(socket.into_raw_fd()) };
        let handed_off = |connect, rest| Accepted::HandedOff { connect, rest, verified };
        let task = match transport {
            MovedTransport::Tcp(socket) => glommio::spawn_local(serve(
                ctx,
                tcp(socket),
                peer,
                listener,
                handed_off(connect, rest),
            )),
            MovedTransport::Tls { socket, tls } => {
                let stream = TlsStream::adopt(tcp(socket), tls);
                glommio::spawn_local(serve(ctx, stream, peer, listener, handed_off(connect, rest)))
            }
            MovedTransport::WebSocket { inner, codec } => match *inner {
                MovedTransport::Tcp(socket) => {
                    let stream = WebSocket::new(tcp(socket), codec);
                    glommio::spawn_local(serve(
                        ctx,
                        stream,
                        peer,
                        listener,
                        handed_off(connect, rest),
                    ))
                }
                MovedTransport::Tls { socket, tls } => {
                    let stream = WebSocket::new(TlsStream::adopt(tcp(socket), tls), codec);
                    glommio::spawn_local(serve(
                        ctx,
                        stream,
                        peer,
                        listener,
                        handed_off(connect, rest),
                    ))
                }
                // Never built: a WebSocket runs over TCP or TLS. Dropping
                // it closes the socket.
                MovedTransport::WebSocket { .. } => {
                    tracing::warn!(%peer, "dropped a hand-off of WebSocket over WebSocket");
                    ctx.connection_closed(listener);
                    return;
                }
            },
        };
        task.detach();
    }
}

/// The limits the network layer enforces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetLimits {
    /// The largest packet accepted.
    pub max_packet_size: u32,
    /// The largest CONNECT accepted (at most `max_packet_size`).
    pub max_connect_size: u32,
    /// The most bytes a shard holds for connections whose CONNECT is
    /// incomplete.
    pub max_pending_connect_bytes: usize,
    /// The time allowed for the CONNECT.
    pub connect_timeout: Duration,
    /// Connections open at once in the process.
    pub max_connections: usize,
}

/// Accepts connections on `listener` until the shard shuts down.
pub async fn accept_loop(ctx: Rc<NetContext>, listener: TcpListener, index: usize) {
    loop {
        let accepted = futures_lite::future::or(async { Some(listener.accept().await) }, async {
            wait_shutdown(&ctx).await;
            None
        })
        .await;
        let stream = match accepted {
            None => return,
            Some(Ok(stream)) => stream,
            Some(Err(error)) => {
                let error = std::io::Error::from(error);
                // EINVAL: the socket no longer listens, stopped at shutdown
                // (`listener::ListenerStop`); the shard follows within a tick.
                if error.raw_os_error() == Some(libc::EINVAL) {
                    return;
                }
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(%error, "accept failed");
                glommio::timer::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        if !ctx.try_open(index) {
            continue;
        }
        ctx.count(|net| net.accepted += 1);
        let _ = stream.set_nodelay(true);
        let peer = stream.peer_addr().unwrap_or_else(|_| ([0, 0, 0, 0], 0).into());
        // One connect timeout for everything before the session: the PROXY
        // header, the TLS handshake, the WebSocket upgrade and the CONNECT
        // (with its authentication) share it, so a slow client cannot hold
        // a socket for a timeout per step.
        let deadline = Instant::now() + ctx.limits().connect_timeout;
        if ctx.listeners[index].proxy_protocol() {
            glommio::spawn_local(serve_proxied(Rc::clone(&ctx), stream, peer, index, deadline))
                .detach();
        } else {
            start_serving(&ctx, stream, peer, index, deadline);
        }
    }
}

/// Starts the task of a connection whose client is `peer`: the TLS
/// handshake first on a TLS listener, the WebSocket upgrade on a `ws`
/// listener, then [`serve`]; all of them before `deadline`.
fn start_serving(
    ctx: &Rc<NetContext>,
    stream: TcpStream,
    peer: SocketAddr,
    index: usize,
    deadline: Instant,
) {
    let ctx = Rc::clone(ctx);
    match ctx.tls_config(index) {
        None => spawn_serving(ctx, stream, peer, index, deadline),
        Some(config) => {
            glommio::spawn_local(serve_tls(ctx, stream, config, peer, index, deadline)).detach();
        }
    }
}

/// Starts the task that serves `transport` (TCP, or TLS with its handshake
/// done) on `listener`: MQTT straight away, or after the WebSocket upgrade
/// on a `ws` listener; its CONNECT must arrive before `deadline`.
///
/// A connection's task lives as long as the connection, and is as large as
/// the largest state of its future, arguments included: so each step before
/// the CONNECT (TLS handshake, WebSocket upgrade) runs in a task of its own
/// that starts the next one and ends, and an idle connection's task is the
/// [`serve`] future alone (when one task ran every step, each plain
/// connection's task was 2 KiB; heaptrack, 15,000 idle connections).
fn spawn_serving<T: Transport + 'static>(
    ctx: Rc<NetContext>,
    transport: T,
    peer: SocketAddr,
    listener: usize,
    deadline: Instant,
) {
    match ctx.websocket.get(listener).cloned().flatten() {
        None => {
            glommio::spawn_local(serve(ctx, transport, peer, listener, Accepted::Read(deadline)))
        }
        Some(path) => glommio::spawn_local(websocket::serve_ws(
            ctx, transport, path, peer, listener, deadline,
        )),
    }
    .detach();
}

/// A timer that fires at `deadline` (at once if it passed).
fn timer_until(deadline: Instant) -> glommio::timer::Timer {
    glommio::timer::Timer::new(deadline.saturating_duration_since(Instant::now()))
}

/// Why a connection of a `proxy_protocol` listener was closed before its
/// PROXY header was read.
#[derive(Debug, thiserror::Error)]
enum ProxyFailure {
    /// Not a valid PROXY header.
    #[error(transparent)]
    Invalid(#[from] proxy::ProxyError),
    /// No complete header within `connect_timeout_ms`.
    #[error("no PROXY header within the connect timeout")]
    Timeout,
    /// The header would pass the shard's `max_pending_connect_bytes`.
    #[error("too many bytes held by incomplete CONNECTs on this shard")]
    ConnectBudget,
    /// The client went away, or the socket failed.
    #[error("socket error: {0}")]
    Io(#[from] std::io::Error),
}

/// Serves a connection of a `proxy_protocol` listener: reads its PROXY
/// header before `deadline` (the connect timeout, which the TLS handshake
/// and the CONNECT after it share), then starts serving it as the client
/// the header names ([`start_serving`], in a task of its own: nothing of the header
/// stays with the connection). A connection without a valid header is
/// closed, counted (`proxy_header_invalid`) and logged within the shard's
/// connection log budget.
async fn serve_proxied(
    ctx: Rc<NetContext>,
    mut stream: TcpStream,
    socket: SocketAddr,
    index: usize,
    deadline: Instant,
) {
    let read = Box::pin(read_proxy_header(&ctx, &mut stream));
    let timer = async {
        timer_until(deadline).await;
        Err(ProxyFailure::Timeout)
    };
    let failure = match futures_lite::future::or(read, timer).await {
        Ok(header) => {
            // LOCAL (v2), UNKNOWN (v1): the proxy names no client; the
            // socket's address stands.
            let peer = header.source.unwrap_or(socket);
            return start_serving(&ctx, stream, peer, index, deadline);
        }
        Err(failure) => failure,
    };
    ctx.count(|net| match failure {
        ProxyFailure::Invalid(_) => net.proxy_header_invalid += 1,
        ProxyFailure::Timeout => net.connect_timeouts += 1,
        ProxyFailure::ConnectBudget => net.connect_budget_exceeded += 1,
        ProxyFailure::Io(_) => {}
    });
    if ctx.may_log_connection() {
        tracing::info!(peer = %socket, error = %failure, "PROXY header refused");
    }
    ctx.connection_closed(index);
}

/// Reads the PROXY header at the start of `stream` and consumes exactly
/// its bytes: what follows (a CONNECT, a TLS ClientHello) stays in the
/// socket for the connection's transport. The socket is peeked, and only
/// bytes known to belong to the header are read, so nothing read past it
/// needs handing on. What it looks at is held against the shard's
/// `max_pending_connect_bytes`.
async fn read_proxy_header(
    ctx: &Rc<NetContext>,
    stream: &mut TcpStream,
) -> Result<proxy::ProxyHeader, ProxyFailure> {
    use futures_lite::AsyncReadExt;
    let mut held = connection::PendingConnect::new(Rc::clone(ctx));
    // The header's bytes consumed so far, then those peeked after them.
    let mut seen = Vec::new();
    let mut peeked = Vec::new();
    loop {
        let wanted = proxy::wanted(&seen);
        // The header so far, and the peek's buffers (glommio's and ours).
        if !held.hold(seen.len() + 2 * (wanted - seen.len())) {
            return Err(ProxyFailure::ConnectBudget);
        }
        peeked.resize(wanted - seen.len(), 0);
        let n = stream.peek(&mut peeked).await.map_err(std::io::Error::from)?;
        if n == 0 {
            return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
        }
        let consumed = seen.len();
        seen.extend_from_slice(&peeked[..n]);
        // A proper prefix of a header is all header: consumed whole.
        let (header, take) = match proxy::parse(&seen)? {
            Some(header) => (Some(header), header.len - consumed),
            None => (None, n),
        };
        stream.read_exact(&mut peeked[..take]).await?;
        if let Some(header) = header {
            return Ok(header);
        }
    }
}

/// Serves a connection of a TLS listener: the handshake, then [`serve`],
/// both before `deadline` (the connect timeout). Only this connection's
/// task waits on its handshake.
async fn serve_tls(
    ctx: Rc<NetContext>,
    stream: TcpStream,
    config: Arc<rustls::ServerConfig>,
    peer: std::net::SocketAddr,
    listener: usize,
    deadline: Instant,
) {
    // Boxed: its state (the handshake's buffers) must not size the task
    // that then serves the connection for its whole life.
    let handshake = Box::pin(async {
        let mut stream = TlsStream::accept(stream, config)?;
        let mut held = connection::PendingConnect::new(Rc::clone(&ctx));
        stream.handshake(|received| held.hold(received)).await.map(|()| stream)
    });
    let timer = async {
        timer_until(deadline).await;
        Err(tls::HandshakeError {
            cause: HandshakeFailure::Timeout,
            error: std::io::ErrorKind::TimedOut.into(),
        })
    };
    match futures_lite::future::or(handshake, timer).await {
        Ok(stream) => {
            ctx.count(|net| net.tls_handshakes += 1);
            spawn_serving(ctx, stream, peer, listener, deadline);
        }
        Err(failure) => {
            ctx.count(|net| match failure.cause {
                HandshakeFailure::BadCertificate => net.tls_failed_certificate += 1,
                HandshakeFailure::Protocol => net.tls_failed_protocol += 1,
                HandshakeFailure::Timeout => net.tls_failed_timeout += 1,
                HandshakeFailure::ConnectBudget => net.connect_budget_exceeded += 1,
                HandshakeFailure::Other => net.tls_failed_other += 1,
            });
            if ctx.may_log_connection() {
                tracing::info!(%peer, cause = ?failure.cause, error = %failure.error, "TLS handshake failed");
            }
            ctx.connection_closed(listener);
        }
    }
}

/// Resolves when the shard starts shutting down: woken by
/// [`NetContext::stop_accepting`] rather than polling, so an idle shard
/// sleeps.
async fn wait_shutdown(ctx: &NetContext) {
    futures_lite::future::poll_fn(|cx| {
        if ctx.shard.borrow().is_shutting_down() {
            return Poll::Ready(());
        }
        // Each accept loop's task keeps its waker: kept once, however
        // often the loop polls.
        let mut wakers = ctx.shutdown_wakers.borrow_mut();
        if !wakers.iter().any(|waker| waker.will_wake(cx.waker())) {
            wakers.push(cx.waker().clone());
        }
        Poll::Pending
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn size5<F, A, B, C, D, E, R>(_: F) -> usize
    where
        F: FnOnce(A, B, C, D, E) -> R,
    {
        std::mem::size_of::<R>()
    }

    fn size6<F, A, B, C, D, E, G, R>(_: F) -> usize
    where
        F: FnOnce(A, B, C, D, E, G) -> R,
    {
        std::mem::size_of::<R>()
    }

    /// What an idle connection's task holds, per kind: [`serve`] over its
    /// transport, since the TLS handshake and the WebSocket upgrade run in
    /// tasks of their own ([`spawn_serving`]); those are short-lived, and
    /// still kept small (their buffers boxed). Measured with rustc 1.95:
    /// serve 400 bytes over TCP, 408 over WebSocket, 416 over TLS; the
    /// upgrade's task 416, the handshake's 296. Then 408 over TCP, 416 over
    /// WebSocket, 424 over TLS once a held connection can wait for a topic
    /// gate (overload without loss; 4 bytes that no longer fit the padding).
    #[test]
    fn connection_tasks_are_sized_by_serving_not_by_their_handshakes() {
        let plain = size5(serve::<TcpStream>);
        let over_ws = size5(serve::<WebSocket<TcpStream>>);
        let over_tls = size5(serve::<TlsStream>).max(size5(serve::<WebSocket<TlsStream>>));
        let upgrade = size6(websocket::serve_ws::<TcpStream>);
        let handshake = size6(serve_tls);
        eprintln!(
            "task futures: serve {plain}, over WebSocket {over_ws}, over TLS {over_tls}; \
             upgrade {upgrade}, handshake {handshake}"
        );
        assert!(plain <= 408 && over_ws <= 416 && over_tls <= 448);
        assert!(upgrade <= 1024 && handshake <= 1024);
    }
}
