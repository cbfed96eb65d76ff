//! The MQTT client state machine of one load-generator connection, sans IO.
//!
//! It owns the protocol side of a connection and nothing else: CONNECT and
//! CONNACK, SUBSCRIBE and SUBACK, both directions of the QoS 1 and QoS 2
//! exchanges, the publish window and keep-alive. Bytes go in through
//! [`Client::handle_read`], encoded packets come out of
//! [`Client::poll_transmit`]; time is passed in, never read.
//!
//! Received application messages are handed to a callback as a slice of
//! the read buffer, so the hot path moves no packet structs and takes no
//! reference counts. PUBLISH packets without v5 properties (every 3.1.1
//! PUBLISH, and the usual 5.0 one) are read by [`parse_publish`], which
//! accepts only packets the codec would accept too; every other packet, and
//! any PUBLISH it does not accept, goes through the codec's [`Decoder`].

use bytes::{Buf, Bytes, BytesMut};
use bytestring::ByteString;
use ringmq::protocol::{
    BoxedPublishProperties, ConnAck, Connect, ConnectProperties, DecodeError, Decoder, Disconnect,
    EncodeError, Packet, PacketId, ProtocolVersion, PubResponse, Publish, QoS, ReasonCode,
    Subscribe, SubscribeProperties, Subscription, SubscriptionOptions, TopicFilter, TopicName,
};
use std::collections::{HashMap, HashSet};
use std::num::NonZeroU16;
use std::time::{Duration, Instant};

/// What one connection says in its CONNECT and how it behaves.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// Protocol version of the connection.
    pub version: ProtocolVersion,
    /// Client identifier.
    pub client_id: ByteString,
    /// Keep alive in seconds; 0 disables it.
    pub keep_alive: u16,
    /// Clean Session (3.1.1) / Clean Start (5.0).
    pub clean_start: bool,
    /// Session Expiry Interval (5.0 only).
    pub session_expiry: Option<u32>,
    /// User name.
    pub username: Option<ByteString>,
    /// Password.
    pub password: Option<Bytes>,
    /// Most QoS 1/2 publishes awaiting acknowledgement at once.
    pub max_inflight: u16,
    /// Largest packet accepted from the server.
    pub max_packet_size: u32,
}

/// Where the connection is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// CONNECT sent (or queued), CONNACK not yet received.
    Connecting,
    /// CONNACK accepted the connection.
    Connected,
    /// DISCONNECT queued; nothing more is sent.
    Closing,
}

/// Where an outgoing QoS 1/2 publish is in its exchange.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Awaiting {
    /// QoS 1: waiting for PUBACK.
    Ack,
    /// QoS 2: waiting for PUBREC.
    Rec,
    /// QoS 2: PUBREL sent, waiting for PUBCOMP.
    Comp,
}

/// Something the caller needs to know about, produced by a received packet.
/// Application messages are not events: they go to the `on_message`
/// callback of [`Client::handle_read`].
#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    /// CONNACK accepted the connection.
    Connected {
        /// Session Present flag of CONNACK.
        session_present: bool,
    },
    /// SUBACK granted every subscription of a SUBSCRIBE.
    Subscribed,
    /// A QoS 1/2 publish of ours completed its exchange.
    Acked {
        /// Success, or the failure code the server answered (5.0).
        reason: ReasonCode,
    },
}

/// Why the connection cannot go on.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server refused the connection in CONNACK.
    #[error("connection refused by the broker: {}", refusal(*.reason, *.version))]
    Refused {
        /// The CONNACK reason code (3.1.1 return codes are mapped onto it).
        reason: ReasonCode,
        /// The version the CONNECT asked for.
        version: ProtocolVersion,
    },
    /// The server refused a subscription in SUBACK.
    #[error("subscription refused: {0:?}")]
    SubscribeRefused(ReasonCode),
    /// The server sent a DISCONNECT (5.0).
    #[error("disconnected by server: {0:?}")]
    ServerDisconnect(ReasonCode),
    /// The server's Maximum QoS is below the QoS asked to publish at.
    #[error("the server accepts publishes up to {0:?} only")]
    QosNotSupported(QoS),
    /// The server broke the protocol.
    #[error("protocol violation by server: {0}")]
    Protocol(&'static str),
    /// The server's bytes were malformed.
    #[error("malformed packet from server: {0}")]
    Decode(#[from] DecodeError),
    /// A packet could not be encoded.
    #[error("cannot encode packet: {0}")]
    Encode(#[from] EncodeError),
    /// No PINGRESP within a keep-alive period of the PINGREQ.
    #[error("keep-alive timeout")]
    KeepAliveTimeout,
}

/// The protocol state of one client connection.
#[derive(Debug)]
pub struct Client {
    /// Version every packet is read and written in.
    version: ProtocolVersion,
    /// Where the connection is in its life.
    state: State,
    /// Splits packets off the read buffer.
    decoder: Decoder,
    /// Encoded packets not yet taken by [`Client::poll_transmit`].
    out: BytesMut,
    /// Keep alive in force; the server's in 5.0 when it sends one.
    keep_alive: Duration,
    /// When bytes were last taken for sending.
    last_sent: Instant,
    /// When the outstanding PINGREQ was sent.
    ping_sent: Option<Instant>,
    /// The next packet identifier to try.
    next_id: PacketId,
    /// Outgoing QoS 1/2 publishes not yet completed, by packet id.
    outgoing: HashMap<u16, Awaiting>,
    /// Our window: the configured maximum, lowered to the server's Receive
    /// Maximum (5.0).
    max_inflight: u16,
    /// Highest QoS the server accepts (5.0 Maximum QoS; 2 otherwise).
    max_qos: QoS,
    /// Incoming QoS 2 packet ids delivered and awaiting PUBREL.
    incoming_qos2: HashSet<u16>,
    /// Packet ids of SUBSCRIBEs awaiting SUBACK.
    pending_subscribes: Vec<u16>,
}

impl Client {
    /// A client whose CONNECT is queued for sending at `now`.
    pub fn new(config: ClientConfig, now: Instant) -> Result<Self, ClientError> {
        let mut client = Self {
            version: config.version,
            state: State::Connecting,
            decoder: Decoder::new(config.version, config.max_packet_size),
            out: BytesMut::new(),
            keep_alive: Duration::from_secs(config.keep_alive.into()),
            last_sent: now,
            ping_sent: None,
            next_id: PacketId::new(1).expect("1 is a valid packet id"),
            outgoing: HashMap::new(),
            max_inflight: config.max_inflight.max(1),
            max_qos: QoS::ExactlyOnce,
            incoming_qos2: HashSet::new(),
            pending_subscribes: Vec::new(),
        };
        let properties = if config.version.is_v5() {
            ConnectProperties {
                session_expiry_interval: config.session_expiry,
                receive_maximum: NonZeroU16::new(config.max_inflight),
                ..ConnectProperties::default()
            }
        } else {
            ConnectProperties::default()
        };
        let connect = Connect {
            version: config.version,
            clean_start: config.clean_start,
            keep_alive: config.keep_alive,
            client_id: config.client_id,
            will: None,
            username: config.username,
            password: config.password,
            properties,
        };
        client.send(&Packet::Connect(Box::new(connect)))?;
        Ok(client)
    }

    /// Whether CONNACK accepted the connection (and no DISCONNECT is queued).
    pub fn is_connected(&self) -> bool {
        self.state == State::Connected
    }

    /// Outgoing QoS 1/2 publishes awaiting their acknowledgement.
    pub fn inflight(&self) -> usize {
        self.outgoing.len()
    }

    /// Whether a QoS 1/2 publish may be sent now: connected and the window
    /// not full. QoS 0 publishes only need a connection.
    pub fn can_publish(&self, qos: QoS) -> bool {
        self.is_connected()
            && (qos == QoS::AtMostOnce || self.outgoing.len() < usize::from(self.max_inflight))
    }

    /// Feeds received bytes: handles the complete packets at the front of
    /// `buf` and takes them off it, handing each application message to
    /// `on_message` (each QoS 2 message once). Stops after the first packet
    /// that produces an [`Event`] and returns it; call again while `buf`
    /// still holds complete packets. `Ok(None)`: only a partial packet (or
    /// nothing) is left, untouched.
    pub fn handle_read(
        &mut self,
        buf: &mut BytesMut,
        on_message: &mut impl FnMut(QoS, &[u8]),
    ) -> Result<Option<Event>, ClientError> {
        loop {
            // Checks the first byte and the size limit like `decode` does.
            let Some(size) = self.decoder.next_packet_size(buf)? else { return Ok(None) };
            if buf.len() < size {
                return Ok(None);
            }
            if self.state != State::Connecting {
                if let Some(publish) = parse_publish(&buf[..size], self.version.is_v5()) {
                    self.handle_message(
                        publish.qos,
                        publish.packet_id,
                        publish.payload,
                        on_message,
                    )?;
                    buf.advance(size);
                    continue;
                }
            }
            let Some(packet) = self.decoder.decode(buf)? else { return Ok(None) };
            if let Some(event) = self.handle_packet(packet, on_message)? {
                return Ok(Some(event));
            }
        }
    }

    /// Handles one decoded packet from the server; an application message
    /// goes to `on_message`.
    pub fn handle_packet(
        &mut self,
        packet: Packet,
        on_message: &mut impl FnMut(QoS, &[u8]),
    ) -> Result<Option<Event>, ClientError> {
        if self.state == State::Connecting && !matches!(packet, Packet::ConnAck(_)) {
            // The first packet from the server must be CONNACK [MQTT-3.2.0-1].
            return Err(ClientError::Protocol("first packet from the server is not CONNACK"));
        }
        match packet {
            Packet::ConnAck(connack) => self.handle_connack(*connack),
            Packet::Publish(publish) => {
                self.handle_message(publish.qos, publish.packet_id, &publish.payload, on_message)?;
                Ok(None)
            }
            Packet::PubAck(ack) => self.handle_puback(ack),
            Packet::PubRec(rec) => self.handle_pubrec(rec),
            Packet::PubRel(rel) => {
                // The receiver answers PUBREL with PUBCOMP and forgets the id
                // [MQTT-4.3.3-2] (3.1.1).
                self.incoming_qos2.remove(&rel.packet_id.get());
                self.send(&Packet::PubComp(PubResponse::new(rel.packet_id)))?;
                Ok(None)
            }
            Packet::PubComp(comp) => {
                match self.outgoing.get(&comp.packet_id.get()) {
                    Some(Awaiting::Comp) => {
                        self.outgoing.remove(&comp.packet_id.get());
                    }
                    _ => return Err(ClientError::Protocol("PUBCOMP for an unknown packet id")),
                }
                Ok(Some(Event::Acked { reason: comp.reason }))
            }
            Packet::SubAck(suback) => {
                let Some(pos) =
                    self.pending_subscribes.iter().position(|&id| id == suback.packet_id.get())
                else {
                    return Err(ClientError::Protocol("SUBACK for an unknown packet id"));
                };
                self.pending_subscribes.swap_remove(pos);
                // A return code of 0x80 or above is a failure [MQTT-3.9.3-2].
                if let Some(&failed) = suback.reasons.iter().find(|r| r.is_error()) {
                    return Err(ClientError::SubscribeRefused(failed));
                }
                Ok(Some(Event::Subscribed))
            }
            Packet::UnsubAck(_) => Ok(None),
            Packet::PingResp => {
                self.ping_sent = None;
                Ok(None)
            }
            Packet::Disconnect(disconnect) => Err(ClientError::ServerDisconnect(disconnect.reason)),
            Packet::Auth(_) => Err(ClientError::Protocol("AUTH without an authentication method")),
            Packet::Connect(_)
            | Packet::Subscribe(_)
            | Packet::Unsubscribe(_)
            | Packet::PingReq => Err(ClientError::Protocol("client-only packet from the server")),
        }
    }

    fn handle_connack(&mut self, connack: ConnAck) -> Result<Option<Event>, ClientError> {
        if self.state != State::Connecting {
            return Err(ClientError::Protocol("second CONNACK"));
        }
        if connack.reason.is_error() {
            return Err(ClientError::Refused { reason: connack.reason, version: self.version });
        }
        self.state = State::Connected;
        let props = &connack.properties;
        if let Some(server_max) = props.receive_maximum {
            // The client MUST NOT send more than Receive Maximum QoS 1 and
            // QoS 2 PUBLISH packets awaiting acknowledgement [MQTT-3.3.4-7].
            self.max_inflight = self.max_inflight.min(server_max.get());
        }
        if let Some(max_qos) = props.maximum_qos {
            self.max_qos = max_qos;
        }
        if let Some(server_keep_alive) = props.server_keep_alive {
            // The client MUST use the Server Keep Alive instead of its own
            // [MQTT-3.2.2-21].
            self.keep_alive = Duration::from_secs(server_keep_alive.into());
        }
        Ok(Some(Event::Connected { session_present: connack.session_present }))
    }

    /// Acknowledges an incoming application message as its QoS requires
    /// and hands it to `on_message`.
    fn handle_message(
        &mut self,
        qos: QoS,
        packet_id: Option<PacketId>,
        payload: &[u8],
        on_message: &mut impl FnMut(QoS, &[u8]),
    ) -> Result<(), ClientError> {
        match (qos, packet_id) {
            (QoS::AtMostOnce, _) => on_message(qos, payload),
            (QoS::AtLeastOnce, Some(id)) => {
                // The receiver MUST respond with a PUBACK carrying the packet
                // id [MQTT-4.3.2-2] (3.1.1).
                self.send(&Packet::PubAck(PubResponse::new(id)))?;
                on_message(qos, payload);
            }
            (QoS::ExactlyOnce, Some(id)) => {
                // PUBREC for every PUBLISH of this id until PUBREL, without
                // delivering it twice [MQTT-4.3.3-2] (3.1.1).
                self.send(&Packet::PubRec(PubResponse::new(id)))?;
                if self.incoming_qos2.insert(id.get()) {
                    on_message(qos, payload);
                }
            }
            _ => return Err(ClientError::Protocol("QoS 1/2 PUBLISH without a packet id")),
        }
        Ok(())
    }

    fn handle_puback(&mut self, ack: PubResponse) -> Result<Option<Event>, ClientError> {
        match self.outgoing.get(&ack.packet_id.get()) {
            Some(Awaiting::Ack) => {
                self.outgoing.remove(&ack.packet_id.get());
                Ok(Some(Event::Acked { reason: ack.reason }))
            }
            _ => Err(ClientError::Protocol("PUBACK for an unknown packet id")),
        }
    }

    fn handle_pubrec(&mut self, rec: PubResponse) -> Result<Option<Event>, ClientError> {
        let id = rec.packet_id.get();
        match self.outgoing.get(&id) {
            Some(Awaiting::Rec) if rec.reason.is_error() => {
                // A PUBREC of 0x80 or above ends the exchange (5.0, section
                // 4.3.3): no PUBREL follows and the id is free again.
                self.outgoing.remove(&id);
                Ok(Some(Event::Acked { reason: rec.reason }))
            }
            Some(Awaiting::Rec) | Some(Awaiting::Comp) => {
                // The sender MUST answer PUBREC with a PUBREL of the same id
                // [MQTT-4.3.3-1] (3.1.1).
                self.outgoing.insert(id, Awaiting::Comp);
                self.send(&Packet::PubRel(PubResponse::new(rec.packet_id)))?;
                Ok(None)
            }
            _ => Err(ClientError::Protocol("PUBREC for an unknown packet id")),
        }
    }

    /// Queues a SUBSCRIBE for `filters`, each with its maximum QoS.
    pub fn subscribe(&mut self, filters: &[(TopicFilter, QoS)]) -> Result<(), ClientError> {
        let packet_id = self.allocate_id();
        let subscriptions = filters
            .iter()
            .map(|(filter, qos)| Subscription {
                filter: filter.clone(),
                options: SubscriptionOptions { qos: *qos, ..SubscriptionOptions::default() },
            })
            .collect();
        self.pending_subscribes.push(packet_id.get());
        self.send(&Packet::Subscribe(Subscribe {
            packet_id,
            properties: SubscribeProperties::default(),
            subscriptions,
            refused: Vec::new(),
        }))
    }

    /// Queues a PUBLISH. `Ok(false)`: not connected or the window is full;
    /// nothing was queued.
    pub fn publish(
        &mut self,
        topic: &TopicName,
        qos: QoS,
        payload: Bytes,
    ) -> Result<bool, ClientError> {
        if qos > self.max_qos {
            // No PUBLISH above the server's Maximum QoS [MQTT-3.2.2-11].
            return Err(ClientError::QosNotSupported(self.max_qos));
        }
        if !self.can_publish(qos) {
            return Ok(false);
        }
        let packet_id = match qos {
            QoS::AtMostOnce => None,
            QoS::AtLeastOnce => {
                // A new QoS 1/2 PUBLISH takes a currently unused packet id
                // [MQTT-2.3.1-2].
                let id = self.allocate_id();
                self.outgoing.insert(id.get(), Awaiting::Ack);
                Some(id)
            }
            QoS::ExactlyOnce => {
                let id = self.allocate_id();
                self.outgoing.insert(id.get(), Awaiting::Rec);
                Some(id)
            }
        };
        self.send(&Packet::Publish(Publish {
            dup: false,
            qos,
            retain: false,
            topic: topic.clone(),
            packet_id,
            properties: BoxedPublishProperties::none(),
            payload,
        }))?;
        Ok(true)
    }

    /// Queues a DISCONNECT; nothing is sent after it.
    pub fn disconnect(&mut self) -> Result<(), ClientError> {
        if self.state == State::Closing {
            return Ok(());
        }
        self.send(&Packet::Disconnect(Disconnect::default()))?;
        self.state = State::Closing;
        Ok(())
    }

    /// When [`Client::handle_timeout`] has something to do: a PINGREQ to
    /// send or a PINGRESP overdue. `None` with keep-alive disabled.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.keep_alive.is_zero() || self.state == State::Closing {
            return None;
        }
        Some(match self.ping_sent {
            Some(sent) => sent + self.keep_alive,
            None => self.last_sent + self.keep_alive,
        })
    }

    /// Keeps the connection alive at `now`.
    pub fn handle_timeout(&mut self, now: Instant) -> Result<(), ClientError> {
        let Some(deadline) = self.poll_timeout() else { return Ok(()) };
        if now < deadline {
            return Ok(());
        }
        if self.ping_sent.is_some() {
            return Err(ClientError::KeepAliveTimeout);
        }
        // Without other packets to send, the client MUST send a PINGREQ
        // within each keep-alive period [MQTT-3.1.2-23] (3.1.1).
        self.send(&Packet::PingReq)?;
        self.ping_sent = Some(now);
        Ok(())
    }

    /// The bytes to send, handed over at `now` (which counts as activity
    /// for keep-alive). `None` when there is nothing to send.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Bytes> {
        if self.out.is_empty() {
            return None;
        }
        self.last_sent = now;
        Some(self.out.split().freeze())
    }

    fn send(&mut self, packet: &Packet) -> Result<(), ClientError> {
        packet.encode(self.version, &mut self.out)?;
        Ok(())
    }

    fn allocate_id(&mut self) -> PacketId {
        loop {
            let id = self.next_id;
            self.next_id = id.next();
            if !self.outgoing.contains_key(&id.get())
                && !self.pending_subscribes.contains(&id.get())
            {
                return id;
            }
        }
    }
}

/// How a CONNACK refusal reads in a report: the code as the version sends
/// it, and what to do about an unsupported version.
fn refusal(reason: ReasonCode, version: ProtocolVersion) -> String {
    let code = if version.is_v5() {
        format!("reason code 0x{:02X} {reason:?}", reason.as_u8())
    } else {
        format!("return code {} {reason:?}", reason.to_v3_connect_return_code())
    };
    if reason != ReasonCode::UnsupportedProtocolVersion {
        return code;
    }
    // [MQTT-3.1.2-2] The server answers a protocol level it does not
    // support with this code and closes the connection.
    let (asked, other) = match version {
        ProtocolVersion::V5 => ("5.0", "3.1.1"),
        ProtocolVersion::V3_1_1 | ProtocolVersion::V3_1 => ("3.1.1", "5"),
    };
    format!("{code}: the broker does not accept MQTT {asked}, try --mqtt-version {other}")
}

/// The fields of a PUBLISH that the client acts on, read in place.
#[derive(Debug, PartialEq, Eq)]
pub struct PublishView<'a> {
    /// Its QoS.
    pub qos: QoS,
    /// Its packet identifier (QoS 1/2).
    pub packet_id: Option<PacketId>,
    /// The application message.
    pub payload: &'a [u8],
}

/// Reads a complete PUBLISH packet (`frame`, fixed header included, whose
/// first byte and size [`Decoder::next_packet_size`] has checked) without
/// building a [`Publish`]. `None` for anything it does not handle: another
/// packet type, v5 properties, an empty topic, or anything the codec would
/// refuse; the caller then decodes the packet with the codec, which reads
/// it or says what is wrong with it. What it accepts, the codec accepts with
/// the same QoS, packet identifier and payload (tested below).
pub fn parse_publish(frame: &[u8], v5: bool) -> Option<PublishView<'_>> {
    let first = *frame.first()?;
    if first >> 4 != 3 {
        return None;
    }
    // [MQTT-3.3.1-4] QoS 3 is malformed (already refused by the caller).
    let qos = QoS::from_u8((first >> 1) & 0b11)?;
    // Skip the Remaining Length (1 to 4 bytes, validated by the caller).
    let length_bytes = frame.get(1..5)?.iter().position(|b| b & 0x80 == 0)? + 1;
    let body = &frame[1 + length_bytes..];
    let topic_len = usize::from(u16::from_be_bytes(body.get(..2)?.try_into().ok()?));
    let topic = body.get(2..2 + topic_len)?;
    // A topic name is not empty [MQTT-4.7.3-1] (an empty v5 name needs a
    // Topic Alias, left to the codec), has no wildcard [MQTT-3.3.2-2] and
    // no U+0000 [MQTT-1.5.4-2], and is well-formed UTF-8 [MQTT-1.5.4-1].
    if topic.is_empty() || topic.iter().any(|&b| matches!(b, 0 | b'+' | b'#')) {
        return None;
    }
    if !topic.is_ascii() {
        std::str::from_utf8(topic).ok()?;
    }
    let mut rest = &body[2 + topic_len..];
    let packet_id = if qos == QoS::AtMostOnce {
        None
    } else {
        // [MQTT-2.3.1-1] A non-zero packet identifier when QoS > 0.
        let id = PacketId::new(u16::from_be_bytes(rest.get(..2)?.try_into().ok()?))?;
        rest = &rest[2..];
        Some(id)
    };
    if v5 {
        // Only an empty property list (length 0); anything else is read by
        // the codec.
        if *rest.first()? != 0 {
            return None;
        }
        rest = &rest[1..];
    }
    Some(PublishView { qos, packet_id, payload: rest })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringmq::protocol::{decode_packet, AckProperties, ConnAckProperties, SubAck, UnsubAck};
    use std::iter::once;

    fn config(version: ProtocolVersion) -> ClientConfig {
        ClientConfig {
            version,
            client_id: "bench-1".into(),
            keep_alive: 10,
            clean_start: true,
            session_expiry: Some(30),
            username: Some("user".into()),
            password: Some(Bytes::from_static(b"secret")),
            max_inflight: 4,
            max_packet_size: 1 << 20,
        }
    }

    /// Every packet the client has queued, decoded as a server would.
    fn sent(client: &mut Client, now: Instant) -> Vec<Packet> {
        let mut buf = BytesMut::from(&client.poll_transmit(now).unwrap_or_default()[..]);
        let mut decoder = Decoder::new(client.version, u32::MAX);
        let mut packets = Vec::new();
        while let Some(packet) = decoder.decode(&mut buf).unwrap() {
            packets.push(packet);
        }
        assert!(buf.is_empty(), "trailing bytes");
        packets
    }

    fn connack(properties: ConnAckProperties) -> Packet {
        Packet::ConnAck(Box::new(ConnAck {
            session_present: false,
            reason: ReasonCode::Success,
            properties,
        }))
    }

    /// Handles `packet`, which must not carry an application message.
    fn handle(client: &mut Client, packet: Packet) -> Result<Option<Event>, ClientError> {
        client.handle_packet(packet, &mut |qos, payload| panic!("message {qos:?} {payload:?}"))
    }

    /// Handles `packet`; returns its event and the messages it delivered.
    fn handle_messages(
        client: &mut Client,
        packet: Packet,
    ) -> (Option<Event>, Vec<(QoS, Vec<u8>)>) {
        let mut messages = Vec::new();
        let event = client
            .handle_packet(packet, &mut |qos, payload| messages.push((qos, payload.to_vec())))
            .unwrap();
        (event, messages)
    }

    fn connected(version: ProtocolVersion, now: Instant) -> Client {
        let mut client = Client::new(config(version), now).unwrap();
        sent(&mut client, now);
        let event = handle(&mut client, connack(ConnAckProperties::default())).unwrap();
        assert_eq!(event, Some(Event::Connected { session_present: false }));
        client
    }

    fn id(value: u16) -> PacketId {
        PacketId::new(value).unwrap()
    }

    fn topic() -> TopicName {
        TopicName::new("bench/1").unwrap()
    }

    #[test]
    fn connect_carries_the_configuration_in_both_versions() {
        let now = Instant::now();
        for version in [ProtocolVersion::V3_1_1, ProtocolVersion::V5] {
            let mut client = Client::new(config(version), now).unwrap();
            let packets = sent(&mut client, now);
            let [Packet::Connect(connect)] = &packets[..] else { panic!("{packets:?}") };
            assert_eq!(connect.version, version);
            assert_eq!(connect.client_id, "bench-1");
            assert_eq!(connect.keep_alive, 10);
            assert!(connect.clean_start);
            assert_eq!(connect.username.as_deref(), Some("user"));
            assert_eq!(connect.password.as_deref(), Some(&b"secret"[..]));
            if version.is_v5() {
                assert_eq!(connect.properties.session_expiry_interval, Some(30));
                assert_eq!(connect.properties.receive_maximum, NonZeroU16::new(4));
            } else {
                assert_eq!(connect.properties, ConnectProperties::default());
            }
            assert!(!client.is_connected());
        }
    }

    #[test]
    fn first_packet_must_be_connack() {
        // [MQTT-3.2.0-1]: the first packet from the server is CONNACK.
        let now = Instant::now();
        let mut client = Client::new(config(ProtocolVersion::V3_1_1), now).unwrap();
        assert!(matches!(handle(&mut client, Packet::PingResp), Err(ClientError::Protocol(_))));
    }

    #[test]
    fn refused_connack_is_an_error() {
        let now = Instant::now();
        let mut client = Client::new(config(ProtocolVersion::V5), now).unwrap();
        let refused = Packet::ConnAck(Box::new(ConnAck {
            session_present: false,
            reason: ReasonCode::NotAuthorized,
            properties: ConnAckProperties::default(),
        }));
        assert!(matches!(
            handle(&mut client, refused),
            Err(ClientError::Refused { reason: ReasonCode::NotAuthorized, .. })
        ));
    }

    #[test]
    fn qos0_publish_needs_a_connection_but_no_window() {
        let now = Instant::now();
        let mut client = Client::new(config(ProtocolVersion::V3_1_1), now).unwrap();
        assert!(!client.publish(&topic(), QoS::AtMostOnce, Bytes::new()).unwrap());
        let mut client = connected(ProtocolVersion::V3_1_1, now);
        for _ in 0..10 {
            assert!(client.publish(&topic(), QoS::AtMostOnce, Bytes::from_static(b"x")).unwrap());
        }
        let packets = sent(&mut client, now);
        assert_eq!(packets.len(), 10);
        let Packet::Publish(publish) = &packets[0] else { panic!() };
        assert_eq!((publish.qos, publish.packet_id), (QoS::AtMostOnce, None));
        assert_eq!(client.inflight(), 0);
    }

    #[test]
    fn qos1_window_and_puback() {
        // [MQTT-2.3.1-2]: every new QoS 1 PUBLISH takes an unused packet id.
        let now = Instant::now();
        let mut client = connected(ProtocolVersion::V3_1_1, now);
        for _ in 0..4 {
            assert!(client.publish(&topic(), QoS::AtLeastOnce, Bytes::new()).unwrap());
        }
        assert!(!client.can_publish(QoS::AtLeastOnce));
        assert!(!client.publish(&topic(), QoS::AtLeastOnce, Bytes::new()).unwrap());
        let ids: Vec<u16> = sent(&mut client, now)
            .into_iter()
            .map(|p| match p {
                Packet::Publish(p) => p.packet_id.unwrap().get(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(ids, [1, 2, 3, 4]);
        let event = handle(&mut client, Packet::PubAck(PubResponse::new(id(2)))).unwrap();
        assert_eq!(event, Some(Event::Acked { reason: ReasonCode::Success }));
        assert_eq!(client.inflight(), 3);
        assert!(client.publish(&topic(), QoS::AtLeastOnce, Bytes::new()).unwrap());
        // A PUBACK for an id not in flight is a protocol violation.
        assert!(handle(&mut client, Packet::PubAck(PubResponse::new(id(2)))).is_err());
    }

    #[test]
    fn qos2_outgoing_exchange() {
        // [MQTT-4.3.3-1]: PUBREC is answered with PUBREL, then PUBCOMP ends it.
        let now = Instant::now();
        let mut client = connected(ProtocolVersion::V5, now);
        assert!(client.publish(&topic(), QoS::ExactlyOnce, Bytes::new()).unwrap());
        sent(&mut client, now);
        assert_eq!(handle(&mut client, Packet::PubRec(PubResponse::new(id(1)))).unwrap(), None);
        let packets = sent(&mut client, now);
        assert_eq!(packets, [Packet::PubRel(PubResponse::new(id(1)))]);
        assert_eq!(client.inflight(), 1);
        let event = handle(&mut client, Packet::PubComp(PubResponse::new(id(1)))).unwrap();
        assert_eq!(event, Some(Event::Acked { reason: ReasonCode::Success }));
        assert_eq!(client.inflight(), 0);
    }

    #[test]
    fn qos2_failed_pubrec_frees_the_id_without_pubrel() {
        let now = Instant::now();
        let mut client = connected(ProtocolVersion::V5, now);
        assert!(client.publish(&topic(), QoS::ExactlyOnce, Bytes::new()).unwrap());
        sent(&mut client, now);
        let rec = PubResponse {
            packet_id: id(1),
            reason: ReasonCode::QuotaExceeded,
            properties: AckProperties::default(),
        };
        let event = handle(&mut client, Packet::PubRec(rec)).unwrap();
        assert_eq!(event, Some(Event::Acked { reason: ReasonCode::QuotaExceeded }));
        assert!(sent(&mut client, now).is_empty());
        assert_eq!(client.inflight(), 0);
    }

    fn incoming(qos: QoS, packet_id: Option<PacketId>) -> Packet {
        Packet::Publish(Publish {
            dup: false,
            qos,
            retain: false,
            topic: topic(),
            packet_id,
            properties: BoxedPublishProperties::none(),
            payload: Bytes::from_static(b"payload"),
        })
    }

    #[test]
    fn incoming_qos1_is_acknowledged() {
        // [MQTT-4.3.2-2]: the receiver answers with a PUBACK of the same id.
        let now = Instant::now();
        let mut client = connected(ProtocolVersion::V3_1_1, now);
        let (event, messages) =
            handle_messages(&mut client, incoming(QoS::AtLeastOnce, Some(id(7))));
        assert_eq!(event, None);
        assert_eq!(messages, [(QoS::AtLeastOnce, b"payload".to_vec())]);
        assert_eq!(sent(&mut client, now), [Packet::PubAck(PubResponse::new(id(7)))]);
    }

    #[test]
    fn incoming_qos2_is_delivered_once() {
        // [MQTT-4.3.3-2]: PUBREC for each copy until PUBREL, one delivery,
        // PUBCOMP for PUBREL; afterwards the id is new again.
        let now = Instant::now();
        let mut client = connected(ProtocolVersion::V5, now);
        let (_, first) = handle_messages(&mut client, incoming(QoS::ExactlyOnce, Some(id(9))));
        assert_eq!(first.len(), 1);
        let (_, again) = handle_messages(&mut client, incoming(QoS::ExactlyOnce, Some(id(9))));
        assert!(again.is_empty());
        handle(&mut client, Packet::PubRel(PubResponse::new(id(9)))).unwrap();
        assert_eq!(
            sent(&mut client, now),
            [
                Packet::PubRec(PubResponse::new(id(9))),
                Packet::PubRec(PubResponse::new(id(9))),
                Packet::PubComp(PubResponse::new(id(9))),
            ]
        );
        let (_, new) = handle_messages(&mut client, incoming(QoS::ExactlyOnce, Some(id(9))));
        assert_eq!(new.len(), 1);
    }

    #[test]
    fn subscribe_and_suback() {
        let now = Instant::now();
        let mut client = connected(ProtocolVersion::V3_1_1, now);
        let filter = TopicFilter::new("bench/+").unwrap();
        client.subscribe(&[(filter.clone(), QoS::AtLeastOnce)]).unwrap();
        let packets = sent(&mut client, now);
        let [Packet::Subscribe(subscribe)] = &packets[..] else { panic!("{packets:?}") };
        assert_eq!(subscribe.subscriptions[0].filter, filter);
        assert_eq!(subscribe.subscriptions[0].options.qos, QoS::AtLeastOnce);
        let suback = SubAck {
            packet_id: subscribe.packet_id,
            properties: AckProperties::default(),
            reasons: once(ReasonCode::granted(QoS::AtLeastOnce)).collect(),
        };
        assert_eq!(handle(&mut client, Packet::SubAck(suback)).unwrap(), Some(Event::Subscribed));
    }

    #[test]
    fn refused_subscription_is_an_error() {
        // [MQTT-3.9.3-2]: 0x80 in SUBACK is a failure.
        let now = Instant::now();
        let mut client = connected(ProtocolVersion::V3_1_1, now);
        client.subscribe(&[(TopicFilter::new("a").unwrap(), QoS::AtMostOnce)]).unwrap();
        let suback = SubAck {
            packet_id: id(1),
            properties: AckProperties::default(),
            reasons: once(ReasonCode::UnspecifiedError).collect(),
        };
        assert!(matches!(
            handle(&mut client, Packet::SubAck(suback)),
            Err(ClientError::SubscribeRefused(ReasonCode::UnspecifiedError))
        ));
        let unsuback = UnsubAck {
            packet_id: id(1),
            properties: AckProperties::default(),
            reasons: Default::default(),
        };
        assert_eq!(handle(&mut client, Packet::UnsubAck(unsuback)).unwrap(), None);
    }

    #[test]
    fn keep_alive_pings_and_times_out() {
        // [MQTT-3.1.2-23]: a PINGREQ when nothing else was sent for Keep Alive.
        let start = Instant::now();
        let mut client = connected(ProtocolVersion::V3_1_1, start);
        assert_eq!(client.poll_timeout(), Some(start + Duration::from_secs(10)));
        client.handle_timeout(start + Duration::from_secs(9)).unwrap();
        assert_eq!(client.poll_transmit(start), None);
        let t1 = start + Duration::from_secs(10);
        client.handle_timeout(t1).unwrap();
        assert_eq!(sent(&mut client, t1), [Packet::PingReq]);
        handle(&mut client, Packet::PingResp).unwrap();
        assert_eq!(client.poll_timeout(), Some(t1 + Duration::from_secs(10)));
        let t2 = t1 + Duration::from_secs(10);
        client.handle_timeout(t2).unwrap();
        sent(&mut client, t2);
        let err = client.handle_timeout(t2 + Duration::from_secs(10)).unwrap_err();
        assert!(matches!(err, ClientError::KeepAliveTimeout));
    }

    #[test]
    fn v5_connack_limits_window_qos_and_keep_alive() {
        // [MQTT-3.3.4-7] Receive Maximum, [MQTT-3.2.2-11] Maximum QoS,
        // [MQTT-3.2.2-21] Server Keep Alive.
        let now = Instant::now();
        let mut client = Client::new(config(ProtocolVersion::V5), now).unwrap();
        let props = ConnAckProperties {
            receive_maximum: NonZeroU16::new(2),
            maximum_qos: Some(QoS::AtLeastOnce),
            server_keep_alive: Some(3),
            ..ConnAckProperties::default()
        };
        handle(&mut client, connack(props)).unwrap();
        assert_eq!(client.poll_timeout(), Some(now + Duration::from_secs(3)));
        assert!(matches!(
            client.publish(&topic(), QoS::ExactlyOnce, Bytes::new()),
            Err(ClientError::QosNotSupported(QoS::AtLeastOnce))
        ));
        assert!(client.publish(&topic(), QoS::AtLeastOnce, Bytes::new()).unwrap());
        assert!(client.publish(&topic(), QoS::AtLeastOnce, Bytes::new()).unwrap());
        assert!(!client.publish(&topic(), QoS::AtLeastOnce, Bytes::new()).unwrap());
    }

    /// Feeds `wire` to `client` in pieces of `step` bytes; returns the
    /// events and the messages.
    fn feed(client: &mut Client, wire: &[u8], step: usize) -> (Vec<Event>, Vec<(QoS, Vec<u8>)>) {
        let (mut events, mut messages) = (Vec::new(), Vec::new());
        let mut buf = BytesMut::new();
        for piece in wire.chunks(step) {
            buf.extend_from_slice(piece);
            let mut on_message = |qos, payload: &[u8]| messages.push((qos, payload.to_vec()));
            while let Some(event) = client.handle_read(&mut buf, &mut on_message).unwrap() {
                events.push(event);
            }
        }
        assert!(buf.is_empty(), "{} bytes left", buf.len());
        (events, messages)
    }

    #[test]
    fn handle_read_resumes_across_partial_packets() {
        // Both paths: PUBLISH read in place, and a v5 PUBLISH with
        // properties through the codec.
        for version in [ProtocolVersion::V3_1_1, ProtocolVersion::V5] {
            let mut wire = BytesMut::new();
            connack(ConnAckProperties::default()).encode(version, &mut wire).unwrap();
            incoming(QoS::AtMostOnce, None).encode(version, &mut wire).unwrap();
            incoming(QoS::AtLeastOnce, Some(id(3))).encode(version, &mut wire).unwrap();
            let Packet::Publish(mut with_properties) = incoming(QoS::AtMostOnce, None) else {
                unreachable!()
            };
            with_properties.properties.make_mut().content_type = Some("text/plain".into());
            with_properties.payload = Bytes::from_static(b"last");
            Packet::Publish(with_properties).encode(version, &mut wire).unwrap();
            for step in [1, 2, 7, wire.len()] {
                let now = Instant::now();
                let mut client = Client::new(config(version), now).unwrap();
                sent(&mut client, now);
                let (events, messages) = feed(&mut client, &wire, step);
                assert_eq!(events, [Event::Connected { session_present: false }]);
                assert_eq!(
                    messages,
                    [
                        (QoS::AtMostOnce, b"payload".to_vec()),
                        (QoS::AtLeastOnce, b"payload".to_vec()),
                        (QoS::AtMostOnce, b"last".to_vec()),
                    ],
                    "{version:?} in steps of {step}"
                );
                // [MQTT-4.3.2-2] on the in-place path too.
                assert_eq!(sent(&mut client, now), [Packet::PubAck(PubResponse::new(id(3)))]);
            }
        }
    }

    #[test]
    fn handle_read_reports_malformed_publish_through_the_codec() {
        // [MQTT-3.3.2-2] A wildcard in a topic name is malformed: the
        // in-place reader leaves it to the codec, which says why.
        let now = Instant::now();
        let mut client = connected(ProtocolVersion::V3_1_1, now);
        let mut buf = BytesMut::from(&b"\x30\x05\x00\x01+ab"[..]);
        let error = client.handle_read(&mut buf, &mut |_, _| panic!("delivered")).unwrap_err();
        assert!(matches!(error, ClientError::Decode(DecodeError::InvalidTopicName(_))), "{error}");
    }

    /// PUBLISH packets of every shape the in-place reader meets.
    fn publishes(version: ProtocolVersion) -> Vec<Vec<u8>> {
        let mut frames = Vec::new();
        for (qos, packet_id) in [
            (QoS::AtMostOnce, None),
            (QoS::AtLeastOnce, Some(id(1))),
            (QoS::ExactlyOnce, Some(id(65535))),
        ] {
            for (topic, payload) in [("a", 0), ("ringmq-bench/7", 16), ("é/x", 200)] {
                for properties in [false, true] {
                    let mut publish = Publish {
                        dup: qos != QoS::AtMostOnce,
                        qos,
                        retain: true,
                        topic: TopicName::new(topic).unwrap(),
                        packet_id,
                        properties: BoxedPublishProperties::none(),
                        payload: Bytes::from(vec![7; payload]),
                    };
                    if properties {
                        if !version.is_v5() {
                            continue;
                        }
                        publish.properties.make_mut().message_expiry_interval = Some(9);
                    }
                    let mut wire = BytesMut::new();
                    Packet::Publish(publish).encode(version, &mut wire).unwrap();
                    frames.push(wire.to_vec());
                }
            }
        }
        frames
    }

    /// What the in-place reader makes of `bytes`, checked against the
    /// codec; whether it accepted them.
    fn agrees_with_codec(bytes: &[u8], version: ProtocolVersion) -> bool {
        let decoder = Decoder::new(version, 1 << 20);
        let Ok(Some(size)) = decoder.next_packet_size(bytes) else { return false };
        let Some(frame) = bytes.get(..size) else { return false };
        let Some(view) = parse_publish(frame, version.is_v5()) else { return false };
        match decode_packet(Bytes::copy_from_slice(frame), version) {
            Ok(Packet::Publish(publish)) => {
                assert_eq!(
                    (publish.qos, publish.packet_id, &publish.payload[..]),
                    (view.qos, view.packet_id, view.payload),
                    "{frame:02x?}"
                );
                assert_eq!(publish.properties, BoxedPublishProperties::none());
            }
            other => panic!("read in place, but the codec says {other:?}: {frame:02x?}"),
        }
        true
    }

    #[test]
    fn parse_publish_accepts_only_what_the_codec_accepts() {
        for version in [ProtocolVersion::V3_1_1, ProtocolVersion::V5] {
            let frames = publishes(version);
            for frame in &frames {
                let has_properties = version.is_v5()
                    && !matches!(
                        decode_packet(Bytes::copy_from_slice(frame), version),
                        Ok(Packet::Publish(p)) if p.properties == BoxedPublishProperties::none()
                    );
                assert_eq!(agrees_with_codec(frame, version), !has_properties, "{frame:02x?}");
            }
            // Every single-byte change of every frame, and every prefix.
            let mut accepted = 0;
            for frame in &frames {
                for at in 0..frame.len() {
                    let mut mutated = frame.clone();
                    for value in 0..=255 {
                        mutated[at] = value;
                        accepted += usize::from(agrees_with_codec(&mutated, version));
                    }
                    agrees_with_codec(&frame[..at], version);
                }
            }
            assert!(accepted > 1000, "mutations read in place: {accepted}");
        }
    }

    #[test]
    fn refused_version_says_what_to_do() {
        // [MQTT-3.1.2-2] An unsupported protocol level is answered with
        // 0x84 (5.0) / return code 1 (3.1.1).
        for (version, text) in [
            (
                ProtocolVersion::V5,
                "connection refused by the broker: reason code 0x84 UnsupportedProtocolVersion: \
                 the broker does not accept MQTT 5.0, try --mqtt-version 3.1.1",
            ),
            (
                ProtocolVersion::V3_1_1,
                "connection refused by the broker: return code 1 UnsupportedProtocolVersion: \
                 the broker does not accept MQTT 3.1.1, try --mqtt-version 5",
            ),
        ] {
            let mut client = Client::new(config(version), Instant::now()).unwrap();
            let refused = Packet::ConnAck(Box::new(ConnAck {
                session_present: false,
                reason: ReasonCode::UnsupportedProtocolVersion,
                properties: ConnAckProperties::default(),
            }));
            assert_eq!(handle(&mut client, refused).unwrap_err().to_string(), text);
        }
        let error = ClientError::Refused {
            reason: ReasonCode::NotAuthorized,
            version: ProtocolVersion::V3_1_1,
        };
        assert_eq!(
            error.to_string(),
            "connection refused by the broker: return code 5 NotAuthorized"
        );
    }

    #[test]
    fn disconnect_is_the_last_packet() {
        let now = Instant::now();
        let mut client = connected(ProtocolVersion::V5, now);
        client.disconnect().unwrap();
        client.disconnect().unwrap();
        assert!(!client.is_connected());
        assert!(!client.publish(&topic(), QoS::AtMostOnce, Bytes::new()).unwrap());
        assert_eq!(sent(&mut client, now), [Packet::Disconnect(Disconnect::default())]);
        assert_eq!(client.poll_timeout(), None);
    }
}
