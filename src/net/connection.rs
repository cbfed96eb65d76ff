//! One client connection: read the CONNECT (under a timeout), move the
//! socket to the client's home shard if needed, then pump bytes between the
//! socket and the session until either side ends.
//!
//! Buffers are held only while there is traffic: an idle connection owns no
//! read or write buffer. Reads land in a per-shard scratch buffer and are
//! copied into an exactly-sized buffer whose packets become zero-copy
//! `Bytes`; writes gather every pending packet of the session into one
//! buffer and one `send`.

use super::NetContext;
use crate::protocol::{
    decode_packet, ConnAck, ConnAckProperties, Connect, DecodeError, Decoder, Packet,
    ProtocolVersion, ReasonCode,
};
use crate::router::{HandOff, RouterMessage};
use crate::shard::{ConnectOutcome, ConnectionError, ConnectionId, SessionKey};
use bytes::{Buf, Bytes, BytesMut};
use futures_lite::future::poll_fn;
use futures_lite::{AsyncRead, AsyncWrite};
use glommio::net::TcpStream;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// Stop reading from a client while this much output to it is unsent, so a
/// client that publishes but never reads cannot grow our buffers.
const MAX_UNSENT: usize = 256 * 1024;

/// The pause between two turns of indexing a large SUBSCRIBE.
const INDEX_TURN_PAUSE: Duration = Duration::from_micros(10);

/// Why a connection ended, for logs and counters.
#[derive(Debug, thiserror::Error)]
pub enum CloseReason {
    /// The client closed the socket.
    #[error("closed by the client")]
    PeerClosed,
    /// A socket error.
    #[error("socket error: {0}")]
    Io(#[from] io::Error),
    /// No complete CONNECT within the connect timeout.
    #[error("no CONNECT within the connect timeout")]
    ConnectTimeout,
    /// The first packet was not a CONNECT [MQTT-3.1.0-1].
    #[error("first packet is not CONNECT")]
    NotConnect,
    /// The client sent bytes that are not a valid packet.
    #[error("malformed packet: {0}")]
    Decode(#[from] DecodeError),
    /// The CONNECT was refused with this code.
    #[error("connection refused: {0:?}")]
    Refused(ReasonCode),
    /// The session or shard ended the connection.
    #[error(transparent)]
    Session(#[from] ConnectionError),
    /// The connection moved to its home shard.
    #[error("handed off to its home shard")]
    HandedOff,
    /// The broker is shutting down.
    #[error("shutting down")]
    Shutdown,
    /// The incomplete CONNECT needed more of the shard's
    /// `max_pending_connect_bytes` than was left.
    #[error("too many bytes held by incomplete CONNECTs on this shard")]
    ConnectBudget,
}

/// The bytes an incomplete CONNECT holds, charged to the shard's
/// `pending_connect_bytes` and released when dropped (CONNECT complete,
/// timeout, error).
struct PendingConnect {
    ctx: Rc<NetContext>,
    bytes: usize,
}

impl PendingConnect {
    /// Charges `bytes` instead of what was held; false (and nothing
    /// charged) when that would pass the shard's budget.
    fn hold(&mut self, bytes: usize) -> bool {
        let others = self.ctx.pending_connect_bytes.get() - self.bytes;
        if bytes > self.bytes && others + bytes > self.ctx.max_pending_connect_bytes {
            return false;
        }
        self.ctx.pending_connect_bytes.set(others + bytes);
        self.bytes = bytes;
        true
    }
}

impl Drop for PendingConnect {
    fn drop(&mut self) {
        let total = self.ctx.pending_connect_bytes.get();
        self.ctx.pending_connect_bytes.set(total - self.bytes);
    }
}

/// Serves one accepted (or handed-off) connection to its end.
///
/// Not an `async fn`: the connection is built before the future, so the
/// task of an idle connection holds it once, not once per argument and
/// once per local.
pub fn serve(
    ctx: Rc<NetContext>,
    stream: TcpStream,
    peer: SocketAddr,
    listener: usize,
    buffered: Bytes,
) -> impl std::future::Future<Output = ()> {
    let mut connection = Connection {
        read_buf: (!buffered.is_empty()).then(|| BytesMut::from(&buffered[..])),
        write_buf: BytesMut::new(),
        // Until the CONNECT is read, the smaller limit applies.
        decoder: Decoder::new(ProtocolVersion::V3_1_1, ctx.max_connect_size),
        ctx,
        stream,
    };
    // The connection is used in place: moving it into a local would store
    // it twice in the task.
    async move {
        let result = connection.run(peer, listener).await;
        let ctx = &connection.ctx;
        match &result {
            // The connection lives on at its home shard.
            Err(CloseReason::HandedOff) => return ctx.connection_moved(),
            Err(CloseReason::PeerClosed) | Ok(()) => {}
            Err(reason) => tracing::debug!(%peer, %reason, "connection closed"),
        }
        ctx.connection_closed();
    }
}

struct Connection {
    ctx: Rc<NetContext>,
    stream: TcpStream,
    /// Bytes read but not yet decoded; `None` when there are none.
    read_buf: Option<BytesMut>,
    /// Encoded packets not yet written.
    write_buf: BytesMut,
    decoder: Decoder,
}

/// What woke a connection task.
enum Wake {
    /// Bytes were read into `read_buf`.
    Read,
    /// The session has output, or the connection was detached.
    Notified,
    /// The broker is shutting down.
    Shutdown,
}

impl Connection {
    /// The whole life of the connection. The phases before and after the
    /// session are boxed: their futures would otherwise be part of every
    /// idle connection's task, which only needs the small [`Self::pump`].
    async fn run(&mut self, peer: SocketAddr, listener: usize) -> Result<(), CloseReason> {
        let (key, id) = Box::pin(self.attach(peer, listener)).await?;
        let result = self.pump(key, id).await;
        self.ctx.shard.borrow_mut().handle_connection_closed(key, id, Instant::now());
        // Best effort: what the session produced before the end (e.g. the
        // last acks, a v5 DISCONNECT) still goes out.
        Box::pin(self.flush_with_timeout()).await;
        result
    }

    /// Reads the CONNECT, moves the connection to its home shard if needed,
    /// and attaches it to its session there.
    async fn attach(
        &mut self,
        peer: SocketAddr,
        listener: usize,
    ) -> Result<(SessionKey, ConnectionId), CloseReason> {
        let timeout = self.ctx.connect_timeout;
        let (frame, connect) = futures_lite::future::or(self.read_connect(), async {
            glommio::timer::Timer::new(timeout).await;
            Err(CloseReason::ConnectTimeout)
        })
        .await?;
        let client_id = if connect.client_id.is_empty() {
            self.ctx.shard.borrow_mut().assign_client_id()
        } else {
            connect.client_id.clone()
        };
        let home = self.ctx.shard.borrow().home_of(&client_id);
        if home != self.ctx.shard_id {
            return Err(self.hand_off(home.index(), frame, peer, listener));
        }
        let id = self.ctx.shard.borrow_mut().new_connection_id();
        let outcome =
            self.ctx.shard.borrow_mut().handle_connect(Instant::now(), &connect, client_id, id);
        if self.read_buf.as_ref().is_some_and(BytesMut::is_empty) {
            self.read_buf = None;
        }
        match outcome {
            ConnectOutcome::Accepted(key) => Ok((key, id)),
            ConnectOutcome::Refused(reason) => {
                self.send_final(refusal(reason), connect.version).await;
                Err(CloseReason::Refused(reason))
            }
        }
    }

    /// Reads until a complete first packet, which must be a CONNECT.
    /// Returns its bytes (for a hand-off) and the parsed packet.
    ///
    /// What an incomplete CONNECT holds between reads counts against the
    /// shard's `max_pending_connect_bytes`; a connection that would pass it
    /// is closed (a stranger's bytes, not yet anybody's session).
    async fn read_connect(&mut self) -> Result<(Bytes, Box<Connect>), CloseReason> {
        let mut held = PendingConnect { ctx: Rc::clone(&self.ctx), bytes: 0 };
        loop {
            let buffered = self.read_buf.as_deref().unwrap_or_default();
            let size = match self.decoder.next_packet_size(buffered) {
                Ok(size) => size,
                Err(error) => return Err(self.refuse_malformed_connect(error).await),
            };
            if let Some(size) = size.filter(|&size| buffered.len() >= size) {
                let frame = self.read_buf.as_mut().map(|buf| buf.split_to(size).freeze());
                let frame = frame.unwrap_or_default();
                return match decode_packet(frame.clone(), ProtocolVersion::V3_1_1) {
                    Ok(Packet::Connect(connect)) => {
                        self.decoder = Decoder::new(connect.version, self.ctx.max_packet_size);
                        Ok((frame, connect))
                    }
                    // [MQTT-3.1.0-1] The first packet is a CONNECT.
                    Ok(_) => Err(CloseReason::NotConnect),
                    Err(error) => Err(self.refuse_malformed_connect(error).await),
                };
            }
            if !held.hold(self.read_buf.as_ref().map_or(0, BytesMut::capacity)) {
                self.ctx.count(|net| net.connect_budget_exceeded += 1);
                return Err(CloseReason::ConnectBudget);
            }
            poll_fn(|cx| self.poll_read(cx)).await?;
        }
    }

    /// [MQTT-3.1.2-2] An unsupported protocol level is answered with
    /// CONNACK return code 1 (0x84 in 5.0) before closing; any other
    /// malformed CONNECT just closes the connection [MQTT-3.1.4-1].
    async fn refuse_malformed_connect(&mut self, error: DecodeError) -> CloseReason {
        match error {
            DecodeError::UnsupportedProtocolVersion(level) => {
                let version =
                    if level == 5 { ProtocolVersion::V5 } else { ProtocolVersion::V3_1_1 };
                self.send_final(refusal(ReasonCode::UnsupportedProtocolVersion), version).await;
            }
            // Too large for `max_connect_size`: told apart in the counters;
            // the protocol version is not known yet, so nothing is sent.
            DecodeError::PacketTooLarge { .. } => {
                self.ctx.count(|net| net.connect_too_large += 1);
                return CloseReason::Decode(error);
            }
            _ => {}
        }
        self.ctx.count_malformed();
        CloseReason::Decode(error)
    }

    /// Moves the socket, with the CONNECT and anything read after it, to
    /// the home shard of its client id.
    fn hand_off(
        &mut self,
        home: usize,
        frame: Bytes,
        peer: SocketAddr,
        listener: usize,
    ) -> CloseReason {
        // SAFETY: the fd belongs to `self.stream`, alive for this call.
        let fd = unsafe { BorrowedFd::borrow_raw(self.stream.as_raw_fd()) };
        // The duplicate is owned by the message: wherever the message ends
        // (delivered, or dropped at shutdown) the socket is closed once.
        let socket = match fd.try_clone_to_owned() {
            Ok(socket) => socket,
            Err(error) => return CloseReason::Io(error),
        };
        let mut buffered =
            BytesMut::with_capacity(frame.len() + self.read_buf.as_ref().map_or(0, |b| b.len()));
        buffered.extend_from_slice(&frame);
        if let Some(rest) = self.read_buf.take() {
            buffered.extend_from_slice(&rest);
        }
        let handoff = HandOff { socket, buffered: buffered.freeze(), peer, listener };
        self.ctx.outbox.push(home, RouterMessage::HandOff(handoff));
        self.ctx.count_handoff();
        CloseReason::HandedOff
    }

    /// Moves packets both ways until the connection ends.
    async fn pump(&mut self, key: SessionKey, id: ConnectionId) -> Result<(), CloseReason> {
        // A client may send packets right after CONNECT without waiting for
        // CONNACK (MQTT 3.1.1 section 3.1.4, 5.0 section 3.1.4): whatever
        // arrived with the CONNECT (or with the hand-off) is served now,
        // not when the socket next has bytes, which may be never.
        self.handle_input(key, id)?;
        loop {
            if self.ctx.shard.borrow().has_index_work(key) {
                self.index_turn(key, id).await?;
                continue;
            }
            self.ctx.shard.borrow_mut().poll_transmit(
                key,
                id,
                Instant::now(),
                &mut self.write_buf,
            )?;
            match poll_fn(|cx| self.poll_wake(cx, key, id)).await? {
                Wake::Read => self.handle_input(key, id)?,
                Wake::Notified => {}
                Wake::Shutdown => {
                    // The session's last words (a v5 DISCONNECT 0x8B).
                    let mut shard = self.ctx.shard.borrow_mut();
                    let _ = shard.poll_transmit(key, id, Instant::now(), &mut self.write_buf);
                    return Err(CloseReason::Shutdown);
                }
            }
            // A busy connection must not starve the shard's other tasks.
            glommio::yield_if_needed().await;
        }
    }

    /// One turn of indexing a large SUBSCRIBE or UNSUBSCRIBE, then the
    /// other tasks of the shard run; once it is done, the packets read
    /// after it are handled.
    async fn index_turn(&mut self, key: SessionKey, id: ConnectionId) -> Result<(), CloseReason> {
        if self.ctx.shard.borrow().is_shutting_down() {
            return Err(CloseReason::Shutdown);
        }
        self.ctx.shard.borrow_mut().handle_index_work(key, id, Instant::now())?;
        // Not a yield: glommio reaps socket completions only when its task
        // queues run dry or after its 100 ms time slice, so a yielding task
        // would keep the other connections' input unread. A timer that is
        // not due yet (a zero one returns at once) is fired by the reactor,
        // after it has reaped them.
        glommio::timer::sleep(INDEX_TURN_PAUSE).await;
        if !self.ctx.shard.borrow().has_index_work(key) {
            self.handle_input(key, id)?;
        }
        Ok(())
    }

    /// Decodes and handles every complete packet read so far; stops after
    /// a SUBSCRIBE or UNSUBSCRIBE too large to index at once (see
    /// [`Self::index_turn`]).
    fn handle_input(&mut self, key: SessionKey, id: ConnectionId) -> Result<(), CloseReason> {
        let Some(buf) = self.read_buf.as_mut() else { return Ok(()) };
        let now = Instant::now();
        loop {
            match self.decoder.decode(buf) {
                Ok(Some(packet)) => {
                    let indexes = matches!(packet, Packet::Subscribe(_) | Packet::Unsubscribe(_));
                    let mut shard = self.ctx.shard.borrow_mut();
                    if !shard.handle_packet(key, id, now, packet)? {
                        // The session closed the connection; the rest is
                        // ignored [MQTT-3.14.4-1].
                        self.read_buf = None;
                        return Ok(());
                    }
                    if indexes && shard.has_index_work(key) {
                        // The packets after it wait until it is indexed.
                        return Ok(());
                    }
                }
                Ok(None) => break,
                Err(error) => {
                    // A v5 client is told why (DISCONNECT 0x81, 0x82 or
                    // 0x95 for a packet above our Maximum Packet Size).
                    let mut shard = self.ctx.shard.borrow_mut();
                    shard.handle_malformed(key, id, now, error.clone());
                    let _ = shard.poll_transmit(key, id, now, &mut self.write_buf);
                    drop(shard);
                    self.ctx.count_malformed();
                    return Err(CloseReason::Decode(error));
                }
            }
        }
        if buf.is_empty() {
            // Idle connections hold no read buffer.
            self.read_buf = None;
        }
        Ok(())
    }

    /// Writes pending output, then waits for input, new output, or
    /// shutdown.
    fn poll_wake(
        &mut self,
        cx: &mut Context<'_>,
        key: SessionKey,
        id: ConnectionId,
    ) -> Poll<Result<Wake, CloseReason>> {
        if let Poll::Ready(Err(error)) = self.poll_flush(cx) {
            return Poll::Ready(Err(error.into()));
        }
        {
            let mut shard = self.ctx.shard.borrow_mut();
            if shard.is_shutting_down() {
                return Poll::Ready(Ok(Wake::Shutdown));
            }
            // New output is taken only once the previous output is out, so
            // a client that stops reading holds at most one batch here.
            if shard.register_waker(key, id, cx.waker()) && self.write_buf.is_empty() {
                return Poll::Ready(Ok(Wake::Notified));
            }
        }
        if self.ctx.outbox.is_congested() {
            // Backpressure: publishes wait until the cross-core queues drain.
            self.ctx.outbox.wait_uncongested(cx.waker());
        } else if self.write_buf.len() < MAX_UNSENT {
            match self.poll_read(cx) {
                Poll::Ready(Ok(())) => return Poll::Ready(Ok(Wake::Read)),
                Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
                Poll::Pending => {}
            }
        }
        Poll::Pending
    }

    /// Reads what the socket has into `read_buf`.
    fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), CloseReason>> {
        let mut scratch = self.ctx.read_scratch.borrow_mut();
        let n = match Pin::new(&mut self.stream).poll_read(cx, &mut scratch[..]) {
            Poll::Ready(Ok(0)) => return Poll::Ready(Err(CloseReason::PeerClosed)),
            Poll::Ready(Ok(n)) => n,
            Poll::Ready(Err(error)) => return Poll::Ready(Err(error.into())),
            Poll::Pending => return Poll::Pending,
        };
        match &mut self.read_buf {
            Some(buf) => buf.extend_from_slice(&scratch[..n]),
            None => self.read_buf = Some(BytesMut::from(&scratch[..n])),
        }
        Poll::Ready(Ok(()))
    }

    /// Writes as much of `write_buf` as the socket takes.
    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.write_buf.is_empty() {
            match Pin::new(&mut self.stream).poll_write(cx, &self.write_buf) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => self.write_buf.advance(n),
                Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
                Poll::Pending => return Poll::Pending,
            }
        }
        // Idle connections hold no write buffer.
        self.write_buf = BytesMut::new();
        Poll::Ready(Ok(()))
    }

    /// Writes what is pending, giving up after a short while (the peer may
    /// not read at all).
    async fn flush_with_timeout(&mut self) {
        if self.write_buf.is_empty() {
            return;
        }
        let _ = futures_lite::future::or(
            async { poll_fn(|cx| self.poll_flush(cx)).await.is_ok() },
            async {
                glommio::timer::Timer::new(Duration::from_secs(1)).await;
                false
            },
        )
        .await;
    }

    /// Sends one last packet, then the connection closes.
    async fn send_final(&mut self, packet: Packet, version: ProtocolVersion) {
        encode_into(&packet, version, &mut self.write_buf);
        drop(packet);
        self.flush_with_timeout().await;
    }
}

/// The CONNACK that refuses a connection.
fn refusal(reason: ReasonCode) -> Packet {
    Packet::ConnAck(Box::new(ConnAck {
        session_present: false,
        reason,
        properties: ConnAckProperties::default(),
    }))
}

/// Encodes a packet the broker built itself (so it always fits).
fn encode_into(packet: &Packet, version: ProtocolVersion, out: &mut BytesMut) {
    if let Err(error) = packet.encode(version, out) {
        tracing::error!(%error, ?packet, "cannot encode a packet the broker built");
    }
}
