//! The per-client MQTT state machine, sans IO: everything one client's
//! session means, and nothing about sockets, clocks or routing.
//!
//! A [`Session`] is driven by its shard and the network layer:
//!
//! * input: [`Session::handle_connect`] when a connection attaches (the shard
//!   has already checked the CONNECT: authentication, takeover, clean start),
//!   [`Session::handle_packet`] for every packet read after it,
//!   [`Session::set_authenticator`] after a CONNECT authenticated by an
//!   enhanced authentication method (for re-authentication),
//!   [`Session::handle_delivery`] for every message routed to the client,
//!   [`Session::handle_timeout`], [`Session::handle_held`] (backpressure)
//!   and [`Session::handle_connection_lost`];
//! * output: [`Session::poll_transmit`] (the bytes to write),
//!   [`Session::poll_event`] (what the shard must route or record) and
//!   [`Session::poll_timeout`] (when to call `handle_timeout`).
//!
//! Time is always passed in as `now`, and the shard's
//! [`SessionCounters`] as `counters` to every call that can count; the
//! session keeps no counters, never reads a clock, logs nothing and cannot
//! panic on anything a peer sends. It owns the state that
//! outlives a connection of a persistent session (subscriptions, queued and
//! in-flight outgoing messages, QoS 2 packet ids received and not yet
//! released) and the state of the current connection (version, keep alive,
//! will, topic aliases, owed acknowledgements).
//!
//! MQTT 3.1 and 3.1.1 are complete. For 5.0 the session carries properties
//! through, answers with reason codes, tells the client why it closes a
//! connection (DISCONNECT with a reason code, and a Reason String unless
//! the client asked for none), applies No Local, Retain As Published and
//! subscription identifiers, client Receive Maximum and Maximum Packet
//! Size (leaving out Reason Strings and User Properties where allowed to
//! fit it), topic aliases both ways (server-to-client: a small LRU per
//! connection), the Payload Format Indicator (a payload that is not the
//! UTF-8 it claims gets 0x99), Server Keep Alive, the Session Expiry
//! Interval (set at CONNECT, changed at DISCONNECT) and the Will Delay
//! Interval, and the re-authentication of enhanced authentication (AUTH
//! 0x19, see [`auth`]; the first exchange, before CONNACK, is driven by
//! the network layer with the same [`AuthExchange`]).

pub mod auth;
mod connection;
mod error;
mod event;
mod journal;
mod keepalive;
mod limits;
mod outbound;
mod pace;
mod qos2_in;

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;

pub use auth::{AuthExchange, AuthOutcome};
pub use error::SessionError;
pub use event::{
    CloseReason, Delivery, DeliveryOutcome, DropReason, SessionEvent, Subscribed, SubscriptionGrant,
};
pub use journal::SessionChange;
pub use limits::SessionLimits;

use crate::auth::acl::{AclFile, ClientAcl};
use crate::auth::enhanced::Authenticator;
use crate::message::Message;
use crate::metrics::SessionCounters;
use crate::protocol::{
    Auth, BoxedPublishProperties, ConnAck, ConnAckProperties, Connect, Disconnect, Packet,
    PacketType, ProtocolVersion, PubResponse, Publish, PublishProperties, QoS, ReasonCode,
    Subscribe, TopicFilter, Unsubscribe, Will,
};
use bytes::BytesMut;
use bytestring::ByteString;
pub use connection::AckToken;
use connection::{Connection, ConnectionAuth, Control, OutboundAliases, Owed, TopicAliases};
use hashbrown::HashMap;
use keepalive::KeepAlive;
use outbound::{AckOutcome, Outbound, Push, Queued};
use pace::PublishPace;
use smallvec::SmallVec;
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Bytes of output above which [`Session::poll_transmit`] takes no more
/// queued messages: the caller writes them and asks again.
pub const TRANSMIT_BATCH: usize = 64 * 1024;

/// The session of one client id: its persistent state plus, while a client
/// is connected, the state of that connection.
///
/// A clean start gets a fresh `Session` from the shard; a resumed session
/// keeps this one and calls [`handle_connect`](Self::handle_connect) again.
#[derive(Debug)]
pub struct Session {
    /// The client id (assigned by the shard when the client sent none).
    client_id: ByteString,
    /// Shared with the shard and its other sessions: one copy per shard,
    /// not one per session (8 bytes instead of 150 in every session).
    limits: Rc<SessionLimits>,
    /// Subscriptions by filter; a SUBSCRIBE to an existing filter replaces
    /// it [MQTT-3.8.4-3].
    subscriptions: HashMap<TopicFilter, Subscribed>,
    /// Outgoing messages: queued and in flight.
    outbound: Outbound,
    /// Packet ids of QoS 2 publishes received and answered with PUBREC, not
    /// yet released by PUBREL: a re-sent PUBLISH with one of them is not
    /// routed again (method B of [MQTT-4.3.3-2]). Part of the session state.
    inbound_qos2: qos2_in::InboundQos2,
    /// The attached connection, if any.
    connection: Option<Connection>,
    /// Events not yet polled, oldest first.
    events: VecDeque<SessionEvent>,
    /// The next [`AckToken`] of this session.
    next_ack_token: u64,
    /// How long the session outlives its connection: the Session Expiry
    /// Interval granted (v5), or what Clean Session means (3.1/3.1.1: 0 or
    /// the longest kept). `None`: never expires.
    expiry: Option<Duration>,
    /// A will whose v5 Will Delay Interval is running: published when it
    /// is due or when the session ends, whichever comes first, and never
    /// if a connection attaches before [MQTT-3.1.3-9]. Boxed: rare, and
    /// in every session.
    delayed_will: Option<Box<DelayedWill>>,
    /// The client's rules when an `acl_file` is configured: every publish
    /// (will included), subscription and delivery is checked against them.
    /// Boxed: a broker without an ACL file pays one pointer per session.
    acl: Option<Box<ClientAcl>>,
    /// The changes to log (see [`journal`]).
    journal: journal::Journal,
    /// Whether the acknowledgement of a QoS 1/2 PUBLISH waits for the
    /// durable log (see [`Session::set_durable_acks`]).
    durable_acks: bool,
    /// Whether the durable log cannot be written now: QoS 1/2 publishes
    /// are refused (see [`Session::set_store_unavailable`]).
    store_unavailable: bool,
    /// Whether the acknowledgement of a QoS 1/2 PUBLISH waits for the
    /// other nodes of a cluster (see [`Session::set_bridge_acks`]).
    bridge_acks: bool,
}

/// A will waiting for its Will Delay Interval (5.0 §3.1.3.2.2).
#[derive(Debug)]
struct DelayedWill {
    due: Instant,
    will: Will,
}

impl Session {
    /// Replaces the session's limits (a configuration reload). The queue
    /// limits (`max_queued_messages`, `max_queued_bytes`,
    /// `max_queued_retained`) apply from the next message queued: lowering
    /// one drops nothing already queued. `max_session_expiry` applies at
    /// the next CONNECT or DISCONNECT, `max_subscriptions` at the next
    /// SUBSCRIBE (subscriptions held past a lowered quota are kept), the
    /// topic limits and publish rates at the next packet. What a
    /// connection was told or set
    /// up with at CONNECT (`max_inflight`, `receive_maximum`,
    /// `topic_alias_maximum`, `max_keepalive`, `max_packet_size`) keeps
    /// its value until the client connects again.
    pub fn set_limits(&mut self, limits: impl Into<Rc<SessionLimits>>) {
        self.limits = limits.into();
    }

    /// A new session with no state, not connected.
    pub fn new(client_id: ByteString, limits: impl Into<Rc<SessionLimits>>) -> Self {
        Self {
            client_id,
            limits: limits.into(),
            subscriptions: HashMap::new(),
            outbound: Outbound::new(),
            inbound_qos2: qos2_in::InboundQos2::default(),
            connection: None,
            events: VecDeque::new(),
            next_ack_token: 0,
            expiry: Some(Duration::ZERO),
            delayed_will: None,
            acl: None,
            journal: journal::Journal::default(),
            durable_acks: false,
            store_unavailable: false,
            bridge_acks: false,
        }
    }

    /// Sets the client's ACL (at CONNECT, before
    /// [`handle_connect`](Self::handle_connect)): `None` without an ACL
    /// file. The rules stay with the session while it is offline, for the
    /// messages queued to it.
    pub fn set_acl(&mut self, acl: Option<ClientAcl>) {
        self.acl = acl.map(Box::new);
    }

    /// Applies a reloaded ACL file: the session's next check uses it.
    pub fn rebind_acl(&mut self, file: &Arc<AclFile>) {
        if let Some(acl) = &mut self.acl {
            acl.rebind(Arc::clone(file));
        }
    }

    /// Whether the ACL (if any) lets this client publish to `topic`.
    fn may_publish(&self, topic: &str) -> bool {
        self.acl.as_ref().is_none_or(|acl| acl.may_publish(topic, &self.client_id))
    }

    /// A network connection attaches, after the shard accepted its CONNECT.
    ///
    /// `session_present` says whether the shard resumed stored state; it is
    /// reported only when the client did not ask for a clean start
    /// [MQTT-3.2.2-1], [MQTT-3.2.2-2], and never to MQTT 3.1, whose CONNACK
    /// has no such flag.
    ///
    /// Returns the CONNACK, which [`poll_transmit`](Self::poll_transmit)
    /// writes first; the shard may add server-wide v5 properties to it.
    /// Right after it, every unacknowledged outgoing QoS 1/2 PUBLISH is re-sent
    /// with DUP=1 and every unacknowledged PUBREL re-sent, in their original
    /// order [MQTT-4.4.0-1], [MQTT-4.6.0-1]; then the queued messages follow.
    ///
    /// A connection still attached is taken over first
    /// ([`handle_takeover`](Self::handle_takeover)) and its unsent output is
    /// dropped. A will still waiting for its delay is dropped: a new
    /// connection came in time [MQTT-3.1.3-9].
    ///
    /// The session's expiry ([`expiry`](Self::expiry)) becomes the v5
    /// Session Expiry Interval (absent: 0 [MQTT-3.1.2-23 (5.0)]), capped by
    /// `max_session_expiry` and the cap then told in CONNACK (5.0
    /// §3.2.2.3.2); for 3.1/3.1.1, 0 with Clean Session 1, else the cap.
    pub fn handle_connect(
        &mut self,
        now: Instant,
        connect: &Connect,
        session_present: bool,
        counters: &mut SessionCounters,
    ) -> &mut ConnAck {
        if self.connection.is_some() {
            self.handle_takeover(now, counters);
            self.detach();
        }
        self.delayed_will = None;
        let version = connect.version;
        let mut keep_alive = connect.keep_alive;
        let mut properties = ConnAckProperties::default();
        let mut send_window = self.limits.max_inflight.get();
        let mut max_packet_size = None;
        let cap = self.limits.max_session_expiry;
        let requested = match version.is_v5() {
            // 0xFFFFFFFF: the session does not expire (5.0 §3.1.2.11.2).
            true => match connect.properties.session_expiry_interval.unwrap_or(0) {
                u32::MAX => None,
                seconds => Some(Duration::from_secs(u64::from(seconds))),
            },
            false if connect.clean_start => Some(Duration::ZERO),
            false => None,
        };
        self.expiry = match (requested, cap) {
            (Some(requested), Some(cap)) => Some(requested.min(cap)),
            (requested, None) => requested,
            (None, cap) => cap,
        };
        if version.is_v5() {
            if self.expiry != requested {
                properties.session_expiry_interval =
                    self.expiry.map(|cap| u32::try_from(cap.as_secs()).unwrap_or(u32::MAX - 1));
            }
            // What the server supports (5.0 §3.2.2.3): absent would mean
            // the same, but clients show these and some log their absence.
            // [MQTT-3.2.2-14]: 0 forbids the client RETAIN 1.
            properties.retain_available = Some(self.limits.retain_available);
            properties.wildcard_subscription_available = Some(true);
            properties.subscription_identifiers_available = Some(true);
            properties.shared_subscription_available = Some(true);
            properties.maximum_packet_size = self.limits.max_packet_size;
            let max = self.limits.max_keepalive;
            if max > 0 && (keep_alive == 0 || keep_alive > max) {
                // The client must use the Server Keep Alive (5.0 §3.2.2.3.14).
                keep_alive = max;
                properties.server_keep_alive = Some(max);
            }
            properties.receive_maximum = Some(self.limits.receive_maximum);
            properties.topic_alias_maximum =
                (self.limits.topic_alias_maximum > 0).then_some(self.limits.topic_alias_maximum);
            if connect.client_id.is_empty() {
                properties.assigned_client_identifier = Some(self.client_id.clone());
            }
            // [MQTT-3.3.4-9] no more unacknowledged QoS 1/2 publishes than
            // the client's Receive Maximum.
            if let Some(receive_maximum) = connect.properties.receive_maximum {
                send_window = send_window.min(receive_maximum.get());
            }
            max_packet_size = connect.properties.maximum_packet_size;
            // [MQTT-4.12.0-5] a successful CONNACK after enhanced
            // authentication carries the CONNECT's method; the network
            // layer put the method's last data (SCRAM's server-final) in
            // the CONNECT's Authentication Data once the exchange ended.
            if let Some(method) = &connect.properties.authentication_method {
                properties.authentication_method = Some(method.clone());
                properties.authentication_data = connect.properties.authentication_data.clone();
            }
        }
        let connack = ConnAck {
            session_present: session_present
                && !connect.clean_start
                && version != ProtocolVersion::V3_1,
            reason: ReasonCode::Success,
            properties,
        };
        // The session's expiry and will, as this CONNECT set them.
        self.note_state(connect.will.as_ref());
        self.outbound.start_resend();
        let connection = self.connection.insert(Connection {
            version,
            open: true,
            keep_alive: KeepAlive::new(keep_alive, now),
            will: connect.will.clone().map(Box::new),
            connack: None,
            control: VecDeque::new(),
            unacknowledged_in: 0,
            send_window,
            max_packet_size,
            receive_maximum: self.limits.receive_maximum,
            topic_alias_maximum: self.limits.topic_alias_maximum,
            aliases: TopicAliases::default(),
            aliases_out: OutboundAliases::new(
                connect.properties.topic_alias_maximum.filter(|_| version.is_v5()).unwrap_or(0),
                self.limits.server_topic_alias_maximum,
            ),
            problem_information: connect.properties.request_problem_information != Some(false),
            expiry_zero_at_connect: connect.properties.session_expiry_interval.unwrap_or(0) == 0,
            auth: None,
            pace: None,
            user: connect.username.as_deref().map(Box::from),
        });
        connection.connack.insert(Box::new(connack))
    }

    /// The connection just attached ([`handle_connect`](Self::handle_connect))
    /// authenticated with `authenticator`'s method: the client may
    /// re-authenticate with it [MQTT-4.12.1-1].
    pub fn set_authenticator(&mut self, authenticator: Arc<dyn Authenticator>) {
        if let Some(connection) = self.connection.as_mut().filter(|c| c.open) {
            let method = ByteString::from_static(authenticator.method());
            connection.auth =
                Some(Box::new(ConnectionAuth { authenticator, method, exchange: None }));
        }
    }

    /// An AUTH on an open connection: a re-authentication starts (0x19 with
    /// the connection's method [MQTT-4.12.1-1]) or continues (0x18). It
    /// ends with AUTH 0x00, or with DISCONNECT 0x87 when it fails
    /// [MQTT-4.12.1-2]; meanwhile the other packets flow on with the
    /// previous authentication (5.0 section 4.12.1).
    fn handle_auth(
        &mut self,
        now: Instant,
        auth: &Auth,
        counters: &mut SessionCounters,
    ) -> Result<(), SessionError> {
        let timeout = self.limits.auth_timeout;
        let Some(connection) = self.connection.as_mut() else {
            return Err(SessionError::NotConnected);
        };
        // [MQTT-4.12.0-7] no AUTH without a method in CONNECT.
        let Some(state) = connection.auth.as_deref_mut() else {
            return Err(SessionError::UnexpectedPacket(PacketType::Auth));
        };
        let outcome = match (auth.reason, state.exchange.as_mut()) {
            (ReasonCode::ReAuthenticate, None) => {
                // [MQTT-4.12.1-1] the same method as the CONNECT.
                if auth.properties.authentication_method.as_ref() != Some(&state.method) {
                    return Err(SessionError::AuthMethodChanged);
                }
                let deadline = auth::deadline_after(now, timeout);
                let data = auth.properties.authentication_data.as_ref();
                let (exchange, outcome) =
                    AuthExchange::start_with(&state.authenticator, deadline, &state.method, data);
                state.exchange = exchange;
                outcome
            }
            (ReasonCode::ContinueAuthentication, Some(exchange)) => {
                let outcome = exchange.handle_auth(auth);
                if !matches!(outcome, AuthOutcome::Continue(_)) {
                    state.exchange = None;
                }
                outcome
            }
            // A client never sends Success, starts a second exchange
            // before the first ends, or continues one that is not there.
            (reason, _) => return Err(SessionError::UnexpectedAuth(reason)),
        };
        match outcome {
            AuthOutcome::Continue(next) => connection.owe(Control::Auth(Box::new(next))),
            AuthOutcome::Success(data) => {
                let done = auth::auth_packet(&state.method, ReasonCode::Success, data);
                connection.owe(Control::Auth(Box::new(done)));
            }
            // The method changed in the middle of the exchange
            // [MQTT-4.12.0-5].
            AuthOutcome::Failed(ReasonCode::ProtocolError) => {
                return Err(SessionError::AuthMethodChanged)
            }
            AuthOutcome::Failed(_) => {
                counters.reauth_failed += 1;
                self.close(now, CloseReason::ReauthenticationFailed, counters);
            }
        }
        Ok(())
    }

    /// Every packet read after CONNECT. Any packet resets the keep alive
    /// timer.
    ///
    /// # Errors
    ///
    /// A protocol violation: the session has closed the connection (events
    /// [`SessionEvent::Will`] and [`SessionEvent::Closed`]); the network layer
    /// writes what `poll_transmit` still produces and closes the socket.
    /// [`SessionError::NotConnected`] (a packet after the close) changes
    /// nothing.
    pub fn handle_packet(
        &mut self,
        now: Instant,
        packet: Packet,
        counters: &mut SessionCounters,
    ) -> Result<(), SessionError> {
        let Some(connection) = self.connection.as_mut().filter(|c| c.open) else {
            return Err(SessionError::NotConnected);
        };
        connection.keep_alive.handle_received(now);
        let result = match packet {
            Packet::Publish(publish) => self.handle_publish(now, publish, counters),
            Packet::PubAck(ack) => self.handle_ack(PacketType::PubAck, ack, counters),
            Packet::PubRec(ack) => self.handle_ack(PacketType::PubRec, ack, counters),
            Packet::PubRel(ack) => {
                self.handle_pubrel(ack);
                Ok(())
            }
            Packet::PubComp(ack) => self.handle_ack(PacketType::PubComp, ack, counters),
            Packet::Subscribe(subscribe) => {
                self.handle_subscribe(subscribe, counters);
                Ok(())
            }
            Packet::Unsubscribe(unsubscribe) => {
                self.handle_unsubscribe(unsubscribe, counters);
                Ok(())
            }
            Packet::PingReq => {
                // [MQTT-3.12.4-1]
                connection.owe(Control::PingResp);
                Ok(())
            }
            Packet::Disconnect(disconnect) => self.handle_disconnect(now, disconnect, counters),
            Packet::Auth(auth) => self.handle_auth(now, &auth, counters),
            // [MQTT-3.1.0-2] a second CONNECT is a protocol violation.
            Packet::Connect(_) => Err(SessionError::SecondConnect),
            // Packets only a server sends.
            packet @ (Packet::ConnAck(_)
            | Packet::SubAck(_)
            | Packet::UnsubAck(_)
            | Packet::PingResp) => Err(SessionError::UnexpectedPacket(packet.packet_type())),
        };
        if let Err(error) = &result {
            self.close(now, CloseReason::ProtocolViolation(error.clone()), counters);
        }
        result
    }

    fn handle_publish(
        &mut self,
        now: Instant,
        publish: Publish,
        counters: &mut SessionCounters,
    ) -> Result<(), SessionError> {
        let Some(connection) = self.connection.as_mut() else {
            return Err(SessionError::NotConnected);
        };
        let Publish { qos, retain, topic, packet_id, mut properties, payload, .. } = publish;
        // `max_publish_rate` / `max_publish_bytes_rate`: every PUBLISH is
        // charged and served; past the rate the network layer stops
        // reading until `paced_until` (see `pace`).
        let (rate, bytes_rate) = (self.limits.max_publish_rate, self.limits.max_publish_bytes_rate);
        if rate > 0 || bytes_rate > 0 {
            let pace = connection.pace.get_or_insert_with(|| Box::new(PublishPace::new(now)));
            if pace.charge(now, payload.len(), rate, bytes_rate) {
                counters.publish_rate_limited += 1;
            }
        } else if connection.pace.is_some() {
            // Turned off by a reload.
            connection.pace = None;
        }
        // [MQTT-3.2.2-14] "A Client receiving Retain Available set to 0 from
        // the Server MUST NOT send a PUBLISH packet with the RETAIN flag set
        // to 1. If the Server receives such a packet, this is a Protocol
        // Error. The Server SHOULD send a DISCONNECT with Reason Code of
        // 0x9A (Retain not supported)". A 3.1.1 client, which could not be
        // told, is closed too (as Mosquitto's `retain_available false`):
        // storing nothing while it believes the message retained would
        // break [MQTT-3.3.1-5 (3.1.1)] silently.
        if retain && !self.limits.retain_available {
            return Err(SessionError::RetainNotSupported);
        }
        // [MQTT-3.3.4-6] subscription identifiers go server to client only.
        if !properties.subscription_identifiers.is_empty() {
            return Err(SessionError::SubscriptionIdentifierFromClient);
        }
        let topic = connection.aliases.resolve(
            topic,
            properties.get_mut().and_then(|p| p.topic_alias.take()),
            connection.topic_alias_maximum,
        )?;
        let packet_id = match qos {
            QoS::AtMostOnce => None,
            // [MQTT-2.3.1-1]
            _ => Some(packet_id.ok_or(SessionError::MissingPacketId)?),
        };
        if let Some(id) = packet_id {
            if qos == QoS::ExactlyOnce && self.inbound_qos2.contains(id) {
                // [MQTT-4.3.3-2] until PUBREL, a PUBLISH with the same id is
                // answered with PUBREC again and not delivered again.
                connection.owe(Control::PubRec(id, ReasonCode::Success));
                counters.duplicate_qos2_received += 1;
                return Ok(());
            }
            // [MQTT-3.3.4-7] a v5 client keeps at most Receive Maximum QoS 1/2
            // publishes unacknowledged.
            if connection.version.is_v5()
                && connection.unacknowledged_in >= connection.receive_maximum.get()
            {
                return Err(SessionError::ReceiveMaximumExceeded);
            }
            // Saturating: only a v5 client's count is bounded (above); a
            // 3.1.1 client may have more ids unanswered while acks wait.
            connection.unacknowledged_in = connection.unacknowledged_in.saturating_add(1);
        }
        // `max_topic_length` / `max_topic_levels`, on the topic after alias
        // resolution. 5.0: 0x90 Topic Name invalid, "The Topic Name is not
        // malformed, but is not accepted by this Client or Server" (PUBACK
        // table 3-4, PUBREC table 3-5); a failed PUBREC ends the flow
        // [MQTT-4.3.3-4]. A QoS 0 PUBLISH has no acknowledgement, so the
        // client is told with DISCONNECT 0x90 rather than losing every
        // message without a word. 3.1/3.1.1 can refuse no PUBLISH: the
        // connection is closed (see `SessionError::TopicLimitExceeded`).
        if !self.limits.topic_within(topic.as_str()) {
            counters.topic_limit_exceeded += 1;
            return match (connection.version.is_v5(), qos, packet_id) {
                (true, QoS::AtLeastOnce, Some(id)) => {
                    connection.owe(Control::PubAck(id, ReasonCode::TopicNameInvalid));
                    Ok(())
                }
                (true, QoS::ExactlyOnce, Some(id)) => {
                    connection.owe(Control::PubRec(id, ReasonCode::TopicNameInvalid));
                    Ok(())
                }
                _ => Err(SessionError::TopicLimitExceeded),
            };
        }
        // 5.0 §3.3.2.3.2: "The receiver MAY validate that the Payload is of
        // the format indicated, and if it is not send a PUBACK, PUBREC, or
        // DISCONNECT with Reason Code of 0x99 (Payload format invalid)"
        // [MQTT-3.3.2-4]. ringmq does: subscribers that trust the flag are
        // never handed bytes that are not UTF-8. The message is not routed.
        if properties.payload_format_indicator == Some(true)
            && std::str::from_utf8(&payload).is_err()
        {
            counters.payload_format_invalid += 1;
            return match (qos, packet_id) {
                (QoS::AtLeastOnce, Some(id)) => {
                    connection.owe(Control::PubAck(id, ReasonCode::PayloadFormatInvalid));
                    Ok(())
                }
                // A failed PUBREC ends the flow: the id is not kept
                // [MQTT-4.3.3-4].
                (QoS::ExactlyOnce, Some(id)) => {
                    connection.owe(Control::PubRec(id, ReasonCode::PayloadFormatInvalid));
                    Ok(())
                }
                _ => Err(SessionError::PayloadFormatInvalid),
            };
        }
        if let Some(acl) = self.acl.as_deref() {
            if !acl.may_publish(topic.as_str(), &self.client_id) {
                counters.acl_denied_publish += 1;
                // The message is dropped; the client still gets the ack
                // its QoS calls for. 5.0: 0x87 Not authorized in PUBACK
                // (§3.4.2.1) or PUBREC (§3.5.2.1), and a failed PUBREC
                // ends the flow (the id is not kept) [MQTT-4.3.3-4].
                // 3.1.1 has no refusal: the normal PUBACK [MQTT-4.3.2-2] or
                // PUBREC [MQTT-4.3.3-2] (then PUBREL / PUBCOMP as usual).
                let v5 = connection.version.is_v5();
                let reason = if v5 { ReasonCode::NotAuthorized } else { ReasonCode::Success };
                match (qos, packet_id) {
                    (QoS::AtLeastOnce, Some(id)) => connection.owe(Control::PubAck(id, reason)),
                    (QoS::ExactlyOnce, Some(id)) => {
                        if !v5 && self.inbound_qos2.insert(id) {
                            self.journal.note(self.expiry, || SessionChange::Qos2In(id));
                        }
                        connection.owe(Control::PubRec(id, reason));
                    }
                    _ => {}
                }
                return Ok(());
            }
        }
        if self.store_unavailable {
            if let Some(id) = packet_id {
                counters.refused_store_unavailable += 1;
                // 5.0 PUBACK / PUBREC 0x97 Quota exceeded, "An
                // implementation or administrative imposed limit has been
                // exceeded" (tables 3-4, 3-5): the disk is such a limit. A
                // failed PUBREC ends the flow, the id is not kept
                // [MQTT-4.3.3-4]. 3.1.1: see `SessionError::StoreUnavailable`.
                return match (connection.version.is_v5(), qos) {
                    (true, QoS::AtLeastOnce) => {
                        connection.owe(Control::PubAck(id, ReasonCode::QuotaExceeded));
                        Ok(())
                    }
                    (true, _) => {
                        connection.owe(Control::PubRec(id, ReasonCode::QuotaExceeded));
                        Ok(())
                    }
                    (false, _) => Err(SessionError::StoreUnavailable),
                };
            }
        }
        let expires_at = properties
            .message_expiry_interval
            .and_then(|secs| now.checked_add(Duration::from_secs(u64::from(secs))));
        let message = Message {
            topic,
            payload,
            qos,
            retain,
            properties,
            publisher: Some(self.client_id.clone()),
            expires_at,
            id: 0,
        };
        // Counted by the shard as it routes it (`messages_received`).
        self.events.push_back(SessionEvent::Publish(Arc::new(message)));
        if self.durable_acks && packet_id.is_some() {
            // The acknowledgement below waits on this barrier.
            let ack = AckToken(self.next_ack_token);
            self.next_ack_token += 1;
            connection.hold(ack);
            self.events.push_back(SessionEvent::Durable(ack));
        }
        if self.bridge_acks && packet_id.is_some() {
            // The acknowledgement below waits on this barrier too.
            let ack = AckToken(self.next_ack_token);
            self.next_ack_token += 1;
            connection.hold(ack);
            self.events.push_back(SessionEvent::Bridged(ack));
        }
        // Acknowledgements are queued in the order the publishes arrived
        // [MQTT-4.6.0-2], [MQTT-4.6.0-3].
        match (qos, packet_id) {
            (QoS::AtLeastOnce, Some(id)) => {
                // [MQTT-4.3.2-2]
                connection.owe(Control::PubAck(id, ReasonCode::Success));
            }
            (QoS::ExactlyOnce, Some(id)) => {
                // [MQTT-4.3.3-2] method B: store the id, deliver once, PUBREC.
                self.inbound_qos2.insert(id);
                connection.owe(Control::PubRec(id, ReasonCode::Success));
                self.journal.note(self.expiry, || SessionChange::Qos2In(id));
            }
            _ => {}
        }
        Ok(())
    }

    /// Until when the network layer is not to read the client's packets:
    /// it passed `max_publish_rate` or `max_publish_bytes_rate` (the
    /// publishes read so far are all served). `None`: read on. While
    /// paced, the connection is held as for backpressure
    /// ([`handle_held`](Self::handle_held)): the keep alive counts only
    /// what the broker reads [MQTT-3.1.2-24], so a client whose packets
    /// wait unread in its socket is not closed for them.
    pub fn paced_until(&self, now: Instant) -> Option<Instant> {
        self.connection.as_ref()?.pace.as_ref()?.until(now)
    }

    /// A PUBACK, PUBREC or PUBCOMP (`packet`) for an outgoing message.
    ///
    /// One of the wrong kind for a message in flight (a PUBREC or PUBCOMP
    /// for a QoS 1 PUBLISH, a PUBACK or PUBCOMP for a QoS 2 PUBLISH awaiting
    /// PUBREC, a PUBACK for a PUBREL) breaks [MQTT-4.3.2-1] or
    /// [MQTT-4.3.3-1]: a protocol violation, which closes the connection
    /// ([MQTT-4.8.0-1]; 5.0 §4.13: DISCONNECT 0x82 first). The message stays
    /// in flight and is re-sent on the next connection of a persistent
    /// session [MQTT-4.4.0-1].
    ///
    /// One for an id not in flight is counted and ignored. Neither 3.1.1
    /// nor 5.0 calls it an error: 5.0 answers the one such packet that has
    /// an answer, a PUBREL, with 0x92 Packet Identifier not found, "not an
    /// error during recovery" (§3.7.2.1). It happens when the client's
    /// session state and the server's disagree after a reconnect (a session
    /// that expired or was not kept, a repeated v5 PUBREC refusal), and
    /// Mosquitto ignores it too.
    fn handle_ack(
        &mut self,
        packet: PacketType,
        ack: PubResponse,
        counters: &mut SessionCounters,
    ) -> Result<(), SessionError> {
        let Some(connection) = self.connection.as_mut() else {
            return Err(SessionError::NotConnected);
        };
        let id = ack.packet_id;
        match self.outbound.handle_ack(packet, ack.packet_id, ack.reason) {
            AckOutcome::Completed | AckOutcome::Refused => {
                self.journal.note(self.expiry, || SessionChange::Completed(id));
            }
            // [MQTT-4.3.3-1] PUBREL in the order the PUBRECs arrived
            // [MQTT-4.6.0-4].
            AckOutcome::Release => {
                connection.owe(Control::PubRel(ack.packet_id));
                self.journal.note(self.expiry, || SessionChange::Released(id));
            }
            AckOutcome::NotInFlight => counters.unexpected_acks += 1,
            AckOutcome::Mismatch { expected } => {
                return Err(SessionError::WrongAcknowledgement {
                    packet,
                    packet_id: ack.packet_id.get(),
                    expected,
                })
            }
        }
        Ok(())
    }

    fn handle_pubrel(&mut self, ack: PubResponse) {
        let Some(connection) = self.connection.as_mut() else { return };
        // [MQTT-4.3.3-2] discard the id and answer PUBCOMP; an unknown id
        // still gets one (v5 says it was not found).
        let known = self.inbound_qos2.remove(ack.packet_id);
        let reason = if known || !connection.version.is_v5() {
            ReasonCode::Success
        } else {
            ReasonCode::PacketIdentifierNotFound
        };
        connection.owe(Control::PubComp(ack.packet_id, reason));
        if known {
            self.journal.note(self.expiry, || SessionChange::Qos2Done(ack.packet_id));
        }
    }

    fn handle_subscribe(&mut self, subscribe: Subscribe, counters: &mut SessionCounters) {
        let Some(connection) = self.connection.as_mut() else { return };
        let identifier = subscribe.properties.subscription_identifier;
        let count = subscribe.filter_count();
        let mut reasons = SmallVec::with_capacity(count);
        let mut grants = SmallVec::new();
        let mut refused = subscribe.refused.into_iter().peekable();
        let mut valid = subscribe.subscriptions.into_iter();
        // [MQTT-3.8.4-5] "If a Server receives a SUBSCRIBE packet that
        // contains multiple Topic Filters it MUST handle that packet as if
        // it had received a sequence of multiple SUBSCRIBE packets, except
        // that it combines their responses into a single SUBACK response";
        // one code per filter [MQTT-3.8.4-6], in order [MQTT-3.9.3-1].
        for position in 0..count {
            let subscription = match refused.next_if(|r| r.position <= position) {
                Some(_) => None,
                None => valid.next(),
            };
            let Some(subscription) = subscription else {
                // A 5.0 filter that is no topic filter (`a/#/b`): 0x8F for
                // it alone, "Topic Filter invalid" (table 3-8); the others
                // are served.
                counters.topic_filters_invalid += 1;
                reasons.push(ReasonCode::TopicFilterInvalid);
                continue;
            };
            // `max_topic_length` / `max_topic_levels`: 0x8F Topic Filter
            // invalid, "The Topic Filter is correctly formed but is not
            // allowed for this Client" (table 3-8); 3.1.1: 0x80 Failure.
            // Only this filter is refused [MQTT-3.8.4-5].
            if !self.limits.filter_within(&subscription.filter) {
                counters.topic_limit_exceeded += 1;
                reasons.push(ReasonCode::TopicFilterInvalid);
                continue;
            }
            // With an ACL file a filter needs read access (see
            // `auth::acl`): refused, 5.0 says 0x87 Not authorized
            // (§3.9.3), 3.1.1 0x80 Failure [MQTT-3.9.3-2] (the encoder
            // writes any refusal as 0x80); the filter is not subscribed.
            if let Some(acl) = self.acl.as_deref() {
                if !acl.may_subscribe(subscription.filter.filter(), &self.client_id) {
                    counters.acl_denied_subscribe += 1;
                    reasons.push(ReasonCode::NotAuthorized);
                    continue;
                }
            }
            let subscribed = Subscribed { options: subscription.options, identifier };
            let max = self.limits.max_subscriptions;
            let full = max > 0 && self.subscriptions.len() >= max;
            // [MQTT-3.8.4-3] an existing subscription is replaced. A new one
            // keeps a detached copy of its filter, not the packet's buffer.
            let is_new = match self.subscriptions.get_mut(&subscription.filter) {
                Some(existing) => {
                    *existing = subscribed;
                    false
                }
                // `max_subscriptions_per_client`: a new filter beyond it is
                // refused, 0x97 "Quota exceeded: An implementation or
                // administrative imposed limit has been exceeded" (3.1.1:
                // 0x80 Failure); [MQTT-3.8.4-7] the code says it failed.
                None if full => {
                    counters.subscriptions_quota_exceeded += 1;
                    reasons.push(ReasonCode::QuotaExceeded);
                    continue;
                }
                None => {
                    self.subscriptions.insert(subscription.filter.detached(), subscribed);
                    true
                }
            };
            if self.journal.is_enabled() {
                let filter = subscription.filter.detached();
                self.journal.note(self.expiry, || SessionChange::Subscribed(filter, subscribed));
            }
            reasons.push(granted_qos_reason(subscription.options.qos));
            grants.push(SubscriptionGrant { filter: subscription.filter, subscribed, is_new });
        }
        // [MQTT-3.8.4-1] SUBACK with the id of the SUBSCRIBE [MQTT-3.8.4-2],
        // once the shard has indexed the filters (it releases the barrier).
        if grants.is_empty() {
            // Every filter refused: nothing to index, nothing to wait for.
            connection.owe(Control::SubAck(subscribe.packet_id, reasons));
            return;
        }
        let ack = AckToken(self.next_ack_token);
        self.next_ack_token += 1;
        connection.hold(ack);
        connection.owe(Control::SubAck(subscribe.packet_id, reasons));
        self.events.push_back(SessionEvent::Subscribe { grants, ack });
    }

    fn handle_unsubscribe(&mut self, unsubscribe: Unsubscribe, counters: &mut SessionCounters) {
        let Some(connection) = self.connection.as_mut() else { return };
        let v5 = connection.version.is_v5();
        let count = unsubscribe.filters.len() + unsubscribe.refused.len();
        let mut reasons = SmallVec::new();
        let mut removed = SmallVec::new();
        let mut refused = unsubscribe.refused.into_iter().peekable();
        let mut valid = unsubscribe.filters.into_iter();
        // [MQTT-3.10.4-6] as a sequence of UNSUBSCRIBEs, one UNSUBACK; one
        // code per filter, in order [MQTT-3.11.3-1], [MQTT-3.11.3-2].
        for position in 0..count {
            let filter = match refused.next_if(|r| r.position <= position) {
                Some(_) => None,
                None => valid.next(),
            };
            let Some(filter) = filter else {
                // Only 5.0 packets carry refused filters: 0x8F for it.
                counters.topic_filters_invalid += 1;
                reasons.push(ReasonCode::TopicFilterInvalid);
                continue;
            };
            // A filter past `max_topic_length` / `max_topic_levels` cannot
            // have been subscribed: 5.0 0x8F as at SUBSCRIBE (UNSUBACK
            // table 3-9); 3.1.1 UNSUBACK has no codes and nothing is removed.
            if !self.limits.filter_within(&filter) {
                counters.topic_limit_exceeded += 1;
                if v5 {
                    reasons.push(ReasonCode::TopicFilterInvalid);
                }
                continue;
            }
            // [MQTT-3.10.4-1] filters compare character by character.
            let existed = self.subscriptions.remove(&filter).is_some();
            if existed {
                crate::shrink::after_remove(&mut self.subscriptions);
                if self.journal.is_enabled() {
                    let filter = filter.detached();
                    self.journal.note(self.expiry, || SessionChange::Unsubscribed(filter));
                }
            }
            if v5 {
                reasons.push(if existed {
                    ReasonCode::Success
                } else {
                    ReasonCode::NoSubscriptionExisted
                });
            }
            if existed {
                removed.push(filter);
            }
        }
        // [MQTT-3.10.4-4] UNSUBACK with the same id, [MQTT-3.10.4-5] even
        // when nothing was removed.
        if !removed.is_empty() {
            let ack = AckToken(self.next_ack_token);
            self.next_ack_token += 1;
            connection.hold(ack);
            self.events.push_back(SessionEvent::Unsubscribe { filters: removed, ack });
        }
        connection.owe(Control::UnsubAck(unsubscribe.packet_id, reasons));
    }

    /// A client DISCONNECT. A v5 one may change the Session Expiry
    /// Interval (capped as at CONNECT), but not from 0 to non-zero
    /// [MQTT-3.14.2-2]: that is a protocol error (0x82).
    fn handle_disconnect(
        &mut self,
        now: Instant,
        disconnect: Disconnect,
        counters: &mut SessionCounters,
    ) -> Result<(), SessionError> {
        let Some(connection) = self.connection.as_ref() else {
            return Err(SessionError::NotConnected);
        };
        if let Some(seconds) = disconnect.properties.session_expiry_interval {
            if seconds != 0 && connection.expiry_zero_at_connect {
                return Err(SessionError::SessionExpiryFromZero);
            }
            let requested = (seconds != u32::MAX).then(|| Duration::from_secs(u64::from(seconds)));
            self.expiry = match (requested, self.limits.max_session_expiry) {
                (Some(requested), Some(cap)) => Some(requested.min(cap)),
                (requested, None) => requested,
                (None, cap) => cap,
            };
        }
        // [MQTT-3.14.4-3] the will is discarded, except after a v5
        // "Disconnect with Will Message" (see CloseReason::publishes_will).
        self.close(now, CloseReason::ClientDisconnect(disconnect.reason), counters);
        Ok(())
    }

    /// A message matched one of this session's subscriptions. The shard has
    /// chosen the options of the matching subscription and the subscription
    /// identifiers, and says whether the message comes from the retained
    /// store because of a new subscription.
    ///
    /// The message is sent with QoS min(message QoS, subscription QoS)
    /// [MQTT-3.8.4-6] and RETAIN 1 only from the retained store
    /// [MQTT-3.3.1-8] or with v5 Retain As Published [MQTT-3.3.1-13], else 0
    /// [MQTT-3.3.1-9]. A QoS 0 message for a client that is not connected is
    /// dropped; a full queue drops the new message (see [`SessionLimits`]).
    pub fn handle_delivery(
        &mut self,
        now: Instant,
        delivery: Delivery,
        counters: &mut SessionCounters,
    ) -> DeliveryOutcome {
        let Delivery { message, options, subscription_ids, from_retained, log_id } = delivery;
        // With an ACL file, a message is sent only where the client may
        // read its topic (a subscription may be wider than its rules).
        if let Some(acl) = self.acl.as_deref() {
            if !acl.may_receive(message.topic.as_str(), &self.client_id) {
                counters.acl_denied_delivery += 1;
                return DeliveryOutcome::Dropped(DropReason::NotAuthorized);
            }
        }
        // [MQTT-3.8.3-3] No Local: not back to the publishing client.
        if options.no_local && message.publisher.as_ref() == Some(&self.client_id) {
            return DeliveryOutcome::Dropped(DropReason::NoLocal);
        }
        // [MQTT-3.3.2-5]
        if message.expires_at.is_some_and(|at| at <= now) {
            counters.dropped_expired += 1;
            return DeliveryOutcome::Dropped(DropReason::Expired);
        }
        let qos = message.qos.min(options.qos);
        let retain = from_retained || (options.retain_as_published && message.retain);
        if qos == QoS::AtMostOnce && !self.is_connected() {
            counters.dropped_offline_qos0 += 1;
            return DeliveryOutcome::Dropped(DropReason::Offline);
        }
        // QoS 0 is never logged.
        let log_id = if qos == QoS::AtMostOnce { 0 } else { log_id };
        let entry = (log_id != 0 && self.journal.is_enabled())
            .then(|| journal::entry_of(log_id, qos, retain, from_retained, &subscription_ids));
        let queued = Queued { message, qos, retain, subscription_ids, from_retained, log_id };
        // design.md: "QoS 1/2 applies backpressure to the publishing
        // connection - never ack and then silently drop". A QoS 1/2
        // message for a connected client is queued past the limits; the
        // shard then slows its publishers (see `DeliveryOutcome::OverLimit`).
        let overflow = qos != QoS::AtMostOnce && self.is_connected();
        let outcome = match self.outbound.push(queued, &self.limits, overflow) {
            Push::Queued => DeliveryOutcome::Queued,
            Push::OverLimit => DeliveryOutcome::OverLimit,
            Push::Full if from_retained => {
                counters.dropped_retained_limit += 1;
                return DeliveryOutcome::Dropped(DropReason::RetainedLimit);
            }
            Push::Full => {
                counters.dropped_queue_full[qos as usize] += 1;
                return DeliveryOutcome::Dropped(DropReason::QueueFull);
            }
        };
        if let Some(entry) = entry {
            self.journal.note(self.expiry, || SessionChange::Queued(entry));
        }
        outcome
    }

    /// Whether the queue is back to half its limits or less (see
    /// [`DeliveryOutcome::OverLimit`]): the shard stops slowing the
    /// publishers it held back for this session.
    pub fn is_drained(&self) -> bool {
        self.outbound.is_drained(&self.limits)
    }

    /// The client stayed past its queue limits for longer than
    /// `slow_consumer_timeout`: its connection is closed (a v5 client is
    /// sent DISCONNECT 0x97 Quota exceeded, see
    /// [`CloseReason::SlowConsumer`]) and its queue is cut back to its
    /// limits, the newest messages past them dropped and counted in
    /// `dropped_slow_consumer`. A persistent session keeps the rest.
    pub fn handle_slow_consumer(&mut self, now: Instant, counters: &mut SessionCounters) {
        self.close(now, CloseReason::SlowConsumer, counters);
    }

    /// The User Name the attached connection gave in its CONNECT.
    pub fn connected_user(&self) -> Option<&str> {
        self.connection.as_ref().filter(|c| c.open)?.user.as_deref()
    }

    /// A reloaded `password_file` removed the connected client's user or
    /// changed its password: the connection is closed, a v5 client told
    /// so with DISCONNECT 0x87 Not authorized first, as a failed
    /// re-authentication is [MQTT-4.12.1-2]. The session itself stays,
    /// like after any lost connection; the client must connect again with
    /// credentials the new file accepts.
    pub fn handle_credentials_revoked(&mut self, now: Instant, counters: &mut SessionCounters) {
        self.close(now, CloseReason::CredentialsRevoked, counters);
    }

    /// The next packet to send, in protocol order: the CONNACK, the
    /// re-sends of a resumed session, the acknowledgements and responses in
    /// the order of the requests, then queued messages within the in-flight
    /// window. `None` when there is nothing to send (or no connection).
    ///
    /// [`poll_transmit`](Self::poll_transmit) is this, encoded.
    pub fn poll_packet(&mut self, now: Instant, counters: &mut SessionCounters) -> Option<Packet> {
        if let Some(packet) = self.poll_control(now, counters) {
            return Some(packet);
        }
        // Nothing before the CONNACK [MQTT-3.2.0-1].
        let connection = self.connection.as_mut().filter(|c| c.open && c.connack.is_none())?;
        // An expired message dropped at the head of the queue is logged
        // as removed, so the log holds what the queue holds.
        let (journal, expiry) = (&mut self.journal, self.expiry);
        let (publish, mid) = self.outbound.poll_new(
            connection.send_window,
            connection.version,
            now,
            counters,
            |queued| {
                if queued.log_id != 0 {
                    journal.note(expiry, || SessionChange::Expired(queued.log_id));
                }
            },
        )?;
        counters.publishes_sent[publish.qos as usize] += 1;
        if let (Some(packet_id), true) = (publish.packet_id, mid != 0) {
            self.journal.note(self.expiry, || SessionChange::Sent { mid, packet_id });
        }
        Some(Packet::Publish(publish))
    }

    /// [`poll_packet`](Self::poll_packet) without the queued messages: the
    /// CONNACK, re-sends and acknowledgements.
    fn poll_control(&mut self, now: Instant, counters: &mut SessionCounters) -> Option<Packet> {
        let connection = self.connection.as_mut()?;
        if connection.connack.is_some() {
            // A barrier owed before the CONNACK was written holds it too.
            let held = connection.is_held();
            return connection.connack.take_if(|_| !held).map(Packet::ConnAck);
        }
        if connection.open {
            if let Some(packet) = self.outbound.poll_resend(connection.version, now) {
                if matches!(packet, Packet::Publish(_)) {
                    counters.publishes_resent += 1;
                }
                return Some(packet);
            }
        }
        while let Some(Owed::Control(_)) = connection.control.front() {
            let Some(Owed::Control(control)) = connection.control.pop_front() else { break };
            match control {
                // The client's send quota grows with every PUBACK and
                // PUBCOMP, and with a PUBREC that fails the flow (5.0 §4.9).
                Control::PubAck(..) | Control::PubComp(..) => {
                    connection.unacknowledged_in = connection.unacknowledged_in.saturating_sub(1);
                }
                Control::PubRec(_, reason) if reason.as_u8() >= 0x80 => {
                    connection.unacknowledged_in = connection.unacknowledged_in.saturating_sub(1);
                }
                // A PUBCOMP already ended this flow (the client did not wait
                // for the PUBREL): the id may be reused, so a late PUBREL
                // would confuse the client.
                Control::PubRel(id) if !self.outbound.is_awaiting_pubcomp(id) => continue,
                _ => {}
            }
            return Some(control.into_packet());
        }
        None
    }

    /// Encodes every packet ready to go (see
    /// [`poll_packet`](Self::poll_packet)) into `out`, appending; returns how
    /// many packets were written. Nothing is allocated beyond `out`.
    ///
    /// A packet larger than a v5 client's Maximum Packet Size first loses
    /// its Reason String and User Properties where the spec allows it (not
    /// a PUBLISH's: see `without_diagnostics`) [MQTT-3.1.2-24]; one still
    /// too large (or larger than MQTT can encode) is not written, and its
    /// message counts as delivered [MQTT-3.1.2-25]. The caller stops
    /// calling this while its socket cannot take more: the messages then
    /// wait in the bounded queue.
    ///
    /// A PUBLISH to a v5 client that accepts Topic Aliases gets one here,
    /// as it is written (see `OutboundAliases`).
    ///
    /// Queued messages are taken only while `out` holds less than
    /// [`TRANSMIT_BATCH`] bytes, so a long queue (the retained messages of
    /// a new subscription) leaves in batches paced by the socket;
    /// acknowledgements are always taken (they are bounded by what the
    /// client sends, which the network layer stops reading when `out` is
    /// not drained).
    pub fn poll_transmit(
        &mut self,
        now: Instant,
        out: &mut BytesMut,
        counters: &mut SessionCounters,
    ) -> usize {
        let mut written = 0;
        loop {
            let packet = match out.len() < TRANSMIT_BATCH {
                true => self.poll_packet(now, counters),
                false => self.poll_control(now, counters),
            };
            let Some(packet) = packet else { break };
            let Some(connection) = self.connection.as_mut() else { break };
            let version = connection.version;
            let max_packet_size = connection.max_packet_size;
            let exceeds = |packet: &Packet| {
                max_packet_size.is_some_and(|max| {
                    packet.encoded_len(version).map_or(true, |len| len > max.get() as usize)
                })
            };
            let mut packet = packet;
            let mut alias = match &mut packet {
                Packet::Publish(publish) => {
                    connection.aliases_out.as_mut().and_then(|aliases| aliases.apply(publish))
                }
                _ => None,
            };
            let mut too_large = exceeds(&packet);
            if too_large {
                match (&mut packet, alias) {
                    // A new alias adds three bytes: try without it.
                    (Packet::Publish(publish), Some(applied)) if applied.is_new() => {
                        if let Some(aliases) = connection.aliases_out.as_mut() {
                            aliases.finish(publish, applied, false);
                        }
                        alias = None;
                        too_large = exceeds(&packet);
                    }
                    (packet, _) => {
                        if without_diagnostics(packet) {
                            too_large = exceeds(packet);
                        }
                        // Then what a CONNACK may leave out without
                        // changing what the client must do (see
                        // `without_optional_connack_properties`).
                        if let (true, Packet::ConnAck(connack)) = (too_large, &mut *packet) {
                            if without_optional_connack_properties(connack) {
                                too_large = exceeds(packet);
                            }
                        }
                    }
                }
            }
            let start = out.len();
            let sent = !too_large && packet.encode(version, out).is_ok();
            if let (Packet::Publish(publish), Some(applied), Some(aliases)) =
                (&mut packet, alias, connection.aliases_out.as_mut())
            {
                aliases.finish(publish, applied, sent);
            }
            if sent {
                written += 1;
                continue;
            }
            out.truncate(start);
            counters.dropped_too_large += 1;
            match &packet {
                Packet::Publish(Publish { packet_id: Some(id), .. })
                | Packet::PubRel(PubResponse { packet_id: id, .. }) => {
                    let id = *id;
                    self.outbound.abandon(id);
                    self.journal.note(self.expiry, || SessionChange::Completed(id));
                }
                // Nothing may be sent before the CONNACK [MQTT-3.2.0-1].
                Packet::ConnAck(_) => self.close(now, CloseReason::ConnAckTooLarge, counters),
                _ => {}
            }
        }
        written
    }

    /// With `durability = "always"` the shard asks that a QoS 1/2 PUBLISH
    /// be acknowledged (PUBACK [MQTT-4.3.2-2], PUBREC [MQTT-4.3.3-2]) only
    /// once what its routing logged is durable: each such PUBLISH is
    /// followed by a [`SessionEvent::Durable`] barrier, which holds that
    /// acknowledgement and those owed after it, never the messages sent to
    /// the client.
    pub fn set_durable_acks(&mut self, on: bool) {
        self.durable_acks = on;
    }

    /// While the durable log cannot be written (disk full, EIO) a QoS 1/2
    /// PUBLISH is refused, as it could not be made durable: MQTT 5 with
    /// 0x97 Quota exceeded in its PUBACK or PUBREC, 3.1/3.1.1 by closing
    /// the connection (see [`SessionError::StoreUnavailable`]). QoS 0 is
    /// never logged and still flows. The shard sets it before each packet.
    pub fn set_store_unavailable(&mut self, unavailable: bool) {
        self.store_unavailable = unavailable;
    }

    /// In a cluster the shard asks that a QoS 1/2 PUBLISH be acknowledged
    /// (PUBACK [MQTT-4.3.2-2], PUBREC [MQTT-4.3.3-2]) only once every
    /// other node interested in it accepted it: each such PUBLISH is
    /// followed by a [`SessionEvent::Bridged`] barrier, which holds that
    /// acknowledgement and those owed after it, never the messages sent to
    /// the client.
    pub fn set_bridge_acks(&mut self, on: bool) {
        self.bridge_acks = on;
    }

    /// Holds the acknowledgements owed from now on (and the CONNACK, when it
    /// is not written yet) until [`release_acks`](Self::release_acks): for
    /// what the shard must finish first, e.g. an authenticator's answer or
    /// a durable write. Other output (messages to the client) keeps
    /// flowing, as the spec allows. `None` without a connection.
    pub fn hold_acks(&mut self) -> Option<AckToken> {
        let connection = self.connection.as_mut()?;
        let token = AckToken(self.next_ack_token);
        self.next_ack_token += 1;
        connection.hold(token);
        Some(token)
    }

    /// Releases a barrier of [`hold_acks`](Self::hold_acks) or of a
    /// [`SessionEvent::Subscribe`] / [`SessionEvent::Unsubscribe`]; what it
    /// held is written, up to the next barrier. A token of an earlier
    /// connection does nothing.
    pub fn release_acks(&mut self, token: AckToken) {
        if let Some(connection) = self.connection.as_mut() {
            connection.release(token);
        }
    }

    /// The next thing the shard must act on, oldest first.
    pub fn poll_event(&mut self) -> Option<SessionEvent> {
        self.events.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) is due: one and a half
    /// times the keep alive after the last packet received [MQTT-3.1.2-24]
    /// (none when the keep alive is 0 or no connection is open), or the end
    /// of a v5 Will Delay Interval, or the deadline of a re-authentication
    /// in progress, whichever comes first.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let open = self.connection.as_ref().filter(|c| c.open);
        let keep_alive = open.and_then(|c| c.keep_alive.deadline());
        let will = self.delayed_will.as_ref().map(|delayed| delayed.due);
        let reauth = open.and_then(|c| c.auth.as_ref()?.exchange.as_ref());
        [keep_alive, will, reauth.map(AuthExchange::deadline)].into_iter().flatten().min()
    }

    /// The network layer stopped (`held`) or resumed reading the
    /// connection's packets, to hold back a publisher whose messages wait
    /// for a congested destination. While held, the keep alive does not
    /// run: [MQTT-3.1.2-24] closes a connection whose client sent nothing
    /// for one and a half keep alives, and a client that the server does
    /// not read has not failed to send. On release it restarts, as if a
    /// packet had arrived then.
    pub fn handle_held(&mut self, now: Instant, held: bool) {
        if let Some(connection) = self.connection.as_mut().filter(|c| c.open) {
            connection.keep_alive.handle_held(held, now);
        }
    }

    /// Closes the connection when its keep alive has expired at `now`
    /// [MQTT-3.1.2-24] (the will is published), or when a
    /// re-authentication was not finished by its deadline; publishes a delayed will
    /// whose delay has run out [MQTT-3.1.3-9].
    pub fn handle_timeout(&mut self, now: Instant, counters: &mut SessionCounters) {
        if self.connection.as_ref().is_some_and(|c| c.open && c.keep_alive.is_expired(now)) {
            self.close(now, CloseReason::KeepAliveTimeout, counters);
        }
        // A re-authentication the client did not finish in time fails
        // [MQTT-4.12.1-2].
        let reauth = self.connection.as_ref().filter(|c| c.open);
        let reauth = reauth.and_then(|c| c.auth.as_ref()?.exchange.as_ref());
        if reauth.is_some_and(|exchange| exchange.deadline() <= now) {
            counters.reauth_failed += 1;
            self.close(now, CloseReason::ReauthenticationTimeout, counters);
        }
        if self.delayed_will.as_ref().is_some_and(|delayed| delayed.due <= now) {
            self.publish_delayed_will(now, counters);
        }
    }

    /// The session ends (expired, or replaced by a clean start): a will
    /// still waiting for its delay is published now, as the session ending
    /// came first [MQTT-3.1.3-9].
    pub fn handle_session_end(&mut self, now: Instant, counters: &mut SessionCounters) {
        self.publish_delayed_will(now, counters);
    }

    /// The broker is shutting down: the open connection is closed, a v5
    /// client told so with DISCONNECT 0x8B (5.0 §3.14.2.1).
    pub fn handle_shutdown(&mut self, now: Instant, counters: &mut SessionCounters) {
        self.close(now, CloseReason::ServerShuttingDown, counters);
    }

    /// The network layer could not decode what the client sent (or it was
    /// larger than the server's Maximum Packet Size): the connection is
    /// closed, a v5 client told why with DISCONNECT 0x81, 0x82 or 0x95
    /// first (5.0 §4.13.1).
    pub fn handle_malformed(
        &mut self,
        now: Instant,
        error: crate::protocol::DecodeError,
        counters: &mut SessionCounters,
    ) {
        self.close(now, CloseReason::Malformed(Box::new(error)), counters);
    }

    fn publish_delayed_will(&mut self, now: Instant, counters: &mut SessionCounters) {
        if let Some(delayed) = self.delayed_will.take() {
            self.publish_will(delayed.will, now, counters);
            self.note_state(None);
        }
    }

    /// Routes a will, if the ACL (as it is now: it may have been reloaded
    /// since CONNECT, where the will was checked too) lets the client
    /// publish to its topic.
    fn publish_will(&mut self, will: Will, now: Instant, counters: &mut SessionCounters) {
        if !self.may_publish(will.topic.as_str()) {
            counters.acl_denied_publish += 1;
            return;
        }
        let message = will_message(will, &self.client_id, now);
        self.events.push_back(SessionEvent::Will(Arc::new(message)));
    }

    /// How long the session outlives its connection (see
    /// [`handle_connect`](Self::handle_connect)); `None`: without limit.
    pub fn expiry(&self) -> Option<Duration> {
        self.expiry
    }

    /// The network connection ended (socket error or closed by either side).
    /// Without a DISCONNECT first, the will is published [MQTT-3.1.2-8]. The
    /// connection is detached; a persistent session keeps its subscriptions,
    /// queued QoS 1/2 messages and in-flight messages, which are re-sent on
    /// the next connect.
    pub fn handle_connection_lost(&mut self, now: Instant, counters: &mut SessionCounters) {
        self.close(now, CloseReason::ConnectionLost, counters);
        self.detach();
    }

    /// A new connection with this client id was accepted: the current one is
    /// closed [MQTT-3.1.4-2] (its will published; a v5 client is sent
    /// DISCONNECT 0x8E). The network layer writes what `poll_transmit` still
    /// produces to the old socket before the new connection attaches.
    pub fn handle_takeover(&mut self, now: Instant, counters: &mut SessionCounters) {
        self.close(now, CloseReason::TakenOver, counters);
    }

    /// Whether a connection is attached and open.
    pub fn is_connected(&self) -> bool {
        self.connection.as_ref().is_some_and(|c| c.open)
    }

    /// The protocol version of the attached connection.
    pub fn version(&self) -> Option<ProtocolVersion> {
        self.connection.as_ref().map(|c| c.version)
    }

    /// The client id.
    pub fn client_id(&self) -> &ByteString {
        &self.client_id
    }

    /// The subscriptions, in no particular order.
    pub fn subscriptions(&self) -> impl ExactSizeIterator<Item = (&TopicFilter, &Subscribed)> {
        self.subscriptions.iter()
    }

    /// Unacknowledged outgoing QoS 1/2 messages.
    pub fn inflight_len(&self) -> usize {
        self.outbound.inflight_len()
    }

    /// Messages waiting in the queue.
    pub fn queued_len(&self) -> usize {
        self.outbound.queued_len()
    }

    /// Topic and payload bytes waiting in the queue.
    pub fn queued_bytes(&self) -> usize {
        self.outbound.queued_bytes()
    }

    /// Ends the open connection: publishes or discards the will, queues a v5
    /// DISCONNECT when the server is the one closing, drops queued QoS 0
    /// messages (an offline session keeps QoS 1/2 only) and reports
    /// [`SessionEvent::Closed`]. Nothing happens if no connection is open.
    fn close(&mut self, now: Instant, reason: CloseReason, counters: &mut SessionCounters) {
        let Some(connection) = self.connection.as_mut().filter(|c| c.open) else { return };
        connection.open = false;
        // [MQTT-3.1.2-10] the will is removed once published or discarded;
        // a v5 Will Delay Interval postpones it [MQTT-3.1.3-9].
        let mut will_now = None;
        if let Some(will) = connection.will.take() {
            if reason.publishes_will() {
                match will.properties.will_delay_interval.filter(|&delay| delay > 0) {
                    Some(delay) => {
                        let due = now + Duration::from_secs(u64::from(delay));
                        self.delayed_will = Some(Box::new(DelayedWill { due, will: *will }));
                    }
                    None => will_now = Some(will),
                }
            }
        }
        // What is owed goes out before the end, held or not.
        connection.release_all();
        if connection.version.is_v5() {
            if let Some(code) = reason.server_disconnect_reason() {
                // Only when the client did not ask for none [MQTT-3.1.2-29].
                let reason_string =
                    connection.problem_information.then(|| reason.reason_string().into());
                connection.owe(Control::Disconnect(code, reason_string));
            }
        }
        self.outbound.clear_resend();
        counters.dropped_offline_qos0 += self.outbound.drop_qos0();
        // An offline session holds its limits: what was queued past them
        // while the client was connected (see `handle_delivery`) goes, the
        // newest first.
        // Logged as removed, so that they do not come back after a restart.
        let (journal, expiry) = (&mut self.journal, self.expiry);
        let trimmed = self.outbound.trim_to_limits(&self.limits, |queued| {
            if queued.log_id != 0 {
                journal.note(expiry, || SessionChange::Dropped(queued.log_id));
            }
        });
        if reason == CloseReason::SlowConsumer {
            counters.dropped_slow_consumer += trimmed.iter().sum::<u64>();
        } else {
            for (qos, count) in trimmed.into_iter().enumerate() {
                counters.dropped_queue_full[qos] += count;
            }
        }
        if let Some(will) = will_now {
            self.publish_will(*will, now, counters);
        }
        // The will is gone, published or waiting for its delay; the expiry
        // may have changed at DISCONNECT.
        self.note_state(None);
        self.events.push_back(SessionEvent::Closed(reason));
    }

    /// Forgets the (closed) connection and its unsent output.
    fn detach(&mut self) {
        self.connection = None;
    }
}

/// Takes the Reason String and User Properties out of `packet`, which is
/// too large for the client's Maximum Packet Size; returns whether it had
/// any. The spec lets the server leave them out of every packet but a
/// PUBLISH, and requires it to when they would make the packet too large:
/// CONNACK [MQTT-3.2.2-19], [MQTT-3.2.2-20], PUBACK [MQTT-3.4.2-2],
/// [MQTT-3.4.2-3], PUBREC [MQTT-3.5.2-2], [MQTT-3.5.2-3], PUBREL
/// [MQTT-3.6.2-2], [MQTT-3.6.2-3], PUBCOMP [MQTT-3.7.2-2], [MQTT-3.7.2-3],
/// SUBACK [MQTT-3.9.2-1], [MQTT-3.9.2-2], UNSUBACK [MQTT-3.11.2-1],
/// [MQTT-3.11.2-2], DISCONNECT [MQTT-3.14.2-3], [MQTT-3.14.2-4], AUTH
/// [MQTT-3.15.2-2], [MQTT-3.15.2-3]. A PUBLISH forwards its User
/// Properties unaltered [MQTT-3.3.2-17] (and has no Reason String), so it
/// is never trimmed: one still too large is dropped [MQTT-3.1.2-25].
fn without_diagnostics(packet: &mut Packet) -> bool {
    let (reason_string, user_properties) = match packet {
        Packet::ConnAck(connack) => {
            (&mut connack.properties.reason_string, &mut connack.properties.user_properties)
        }
        Packet::PubAck(ack) | Packet::PubRec(ack) | Packet::PubRel(ack) | Packet::PubComp(ack) => {
            (&mut ack.properties.reason_string, &mut ack.properties.user_properties)
        }
        Packet::SubAck(ack) => {
            (&mut ack.properties.reason_string, &mut ack.properties.user_properties)
        }
        Packet::UnsubAck(ack) => {
            (&mut ack.properties.reason_string, &mut ack.properties.user_properties)
        }
        Packet::Disconnect(disconnect) => {
            (&mut disconnect.properties.reason_string, &mut disconnect.properties.user_properties)
        }
        Packet::Auth(auth) => {
            (&mut auth.properties.reason_string, &mut auth.properties.user_properties)
        }
        Packet::Connect(_)
        | Packet::Publish(_)
        | Packet::Subscribe(_)
        | Packet::Unsubscribe(_)
        | Packet::PingReq
        | Packet::PingResp => return false,
    };
    let had = reason_string.is_some() || !user_properties.is_empty();
    *reason_string = None;
    user_properties.clear();
    had
}

/// Takes out of a CONNACK too large for the client's Maximum Packet Size
/// the properties whose absence means the same to the client, or only
/// loses an offer: Retain / Wildcard / Subscription Identifier / Shared
/// Subscription Available when 1 (absent means supported, 5.0 §3.2.2.3.5,
/// §3.2.2.3.11-13), Topic Alias Maximum (absent: 0, the client just sends
/// no aliases, §3.2.2.3.8) and Response Information (OPTIONAL,
/// §3.2.2.3.15). What the client must obey stays: Maximum Packet Size,
/// Receive Maximum, Server Keep Alive, Session Expiry Interval, Retain
/// Available 0 and the Assigned Client Identifier [MQTT-3.2.2-16].
/// [MQTT-3.1.2-24] "The Server MUST NOT send packets exceeding Maximum
/// Packet Size to the Client". Returns whether it took any.
fn without_optional_connack_properties(connack: &mut ConnAck) -> bool {
    let p = &mut connack.properties;
    let mut took = false;
    for flag in [
        &mut p.retain_available,
        &mut p.wildcard_subscription_available,
        &mut p.subscription_identifiers_available,
        &mut p.shared_subscription_available,
    ] {
        if *flag == Some(true) {
            *flag = None;
            took = true;
        }
    }
    took |= p.topic_alias_maximum.take().is_some();
    took |= p.response_information.take().is_some();
    took
}

/// The SUBACK code granting `qos`: the requested QoS is granted as asked
/// [MQTT-3.8.4-5].
fn granted_qos_reason(qos: QoS) -> ReasonCode {
    match qos {
        QoS::AtMostOnce => ReasonCode::GRANTED_QOS_0,
        QoS::AtLeastOnce => ReasonCode::GrantedQoS1,
        QoS::ExactlyOnce => ReasonCode::GrantedQoS2,
    }
}

/// The message a will becomes, with the QoS and RETAIN of CONNECT
/// [MQTT-3.1.2-16], [MQTT-3.1.2-17] and its v5 properties.
fn will_message(will: Will, client_id: &ByteString, now: Instant) -> Message {
    let Will { topic, payload, qos, retain, properties } = will;
    let expires_at = properties
        .message_expiry_interval
        .and_then(|secs| now.checked_add(Duration::from_secs(u64::from(secs))));
    Message {
        topic,
        payload,
        qos,
        retain,
        properties: BoxedPublishProperties::from(PublishProperties {
            payload_format_indicator: properties.payload_format_indicator,
            message_expiry_interval: properties.message_expiry_interval,
            topic_alias: None,
            response_topic: properties.response_topic,
            correlation_data: properties.correlation_data,
            user_properties: properties.user_properties,
            subscription_identifiers: SmallVec::new(),
            content_type: properties.content_type,
        }),
        publisher: Some(client_id.clone()),
        expires_at,
        id: 0,
    }
}
