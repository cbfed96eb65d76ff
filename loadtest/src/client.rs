//! The MQTT client state machine of one load-generator connection, sans IO.
//!
//! It owns the protocol side of a connection and nothing else: CONNECT and
//! CONNACK, SUBSCRIBE and SUBACK, both directions of the QoS 1 and QoS 2
//! exchanges, the publish window and keep-alive. Bytes go in through
//! [`Client::handle_read`], encoded packets come out of
//! [`Client::poll_transmit`]; time is passed in, never read.

use bytes::{Bytes, BytesMut};
use bytestring::ByteString;
use ringmq::protocol::{
    ConnAck, Connect, ConnectProperties, DecodeError, Decoder, Disconnect, EncodeError, Packet,
    PacketId, ProtocolVersion, PubResponse, Publish, PublishProperties, QoS, ReasonCode, Subscribe,
    SubscribeProperties, Subscription, SubscriptionOptions, TopicFilter, TopicName,
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
// `Message` is the common variant on the hot path; boxing it would cost an
// allocation per received message to shrink the rare ones.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    /// CONNACK accepted the connection.
    Connected {
        /// Session Present flag of CONNACK.
        session_present: bool,
    },
    /// SUBACK granted every subscription of a SUBSCRIBE.
    Subscribed,
    /// An application message arrived (each QoS 2 message once).
    Message(Publish),
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
    #[error("connection refused: {0:?}")]
    Refused(ReasonCode),
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

    /// Feeds received bytes: takes at most one complete packet off `buf` and
    /// handles it. `Ok(None)` when no event came of it; call again while
    /// `buf` still holds complete packets (it returns `Ok(None)` with `buf`
    /// untouched once only a partial packet is left).
    pub fn handle_read(&mut self, buf: &mut BytesMut) -> Result<Option<Event>, ClientError> {
        loop {
            let Some(packet) = self.decoder.decode(buf)? else { return Ok(None) };
            if let Some(event) = self.handle_packet(packet)? {
                return Ok(Some(event));
            }
            if buf.is_empty() {
                return Ok(None);
            }
        }
    }

    /// Handles one decoded packet from the server.
    pub fn handle_packet(&mut self, packet: Packet) -> Result<Option<Event>, ClientError> {
        if self.state == State::Connecting && !matches!(packet, Packet::ConnAck(_)) {
            // The first packet from the server must be CONNACK [MQTT-3.2.0-1].
            return Err(ClientError::Protocol("first packet from the server is not CONNACK"));
        }
        match packet {
            Packet::ConnAck(connack) => self.handle_connack(connack),
            Packet::Publish(publish) => self.handle_publish(publish),
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
            return Err(ClientError::Refused(connack.reason));
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

    fn handle_publish(&mut self, publish: Publish) -> Result<Option<Event>, ClientError> {
        match (publish.qos, publish.packet_id) {
            (QoS::AtMostOnce, _) => Ok(Some(Event::Message(publish))),
            (QoS::AtLeastOnce, Some(id)) => {
                // The receiver MUST respond with a PUBACK carrying the packet
                // id [MQTT-4.3.2-2] (3.1.1).
                self.send(&Packet::PubAck(PubResponse::new(id)))?;
                Ok(Some(Event::Message(publish)))
            }
            (QoS::ExactlyOnce, Some(id)) => {
                // PUBREC for every PUBLISH of this id until PUBREL, without
                // delivering it twice [MQTT-4.3.3-2] (3.1.1).
                self.send(&Packet::PubRec(PubResponse::new(id)))?;
                if self.incoming_qos2.insert(id.get()) {
                    Ok(Some(Event::Message(publish)))
                } else {
                    Ok(None)
                }
            }
            _ => Err(ClientError::Protocol("QoS 1/2 PUBLISH without a packet id")),
        }
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
            properties: PublishProperties::default(),
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

#[cfg(test)]
mod tests {
    use super::*;
    use ringmq::protocol::{AckProperties, ConnAckProperties, SubAck, UnsubAck};
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
        Packet::ConnAck(ConnAck { session_present: false, reason: ReasonCode::Success, properties })
    }

    fn connected(version: ProtocolVersion, now: Instant) -> Client {
        let mut client = Client::new(config(version), now).unwrap();
        sent(&mut client, now);
        let event = client.handle_packet(connack(ConnAckProperties::default())).unwrap();
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
        assert!(matches!(client.handle_packet(Packet::PingResp), Err(ClientError::Protocol(_))));
    }

    #[test]
    fn refused_connack_is_an_error() {
        let now = Instant::now();
        let mut client = Client::new(config(ProtocolVersion::V5), now).unwrap();
        let refused = Packet::ConnAck(ConnAck {
            session_present: false,
            reason: ReasonCode::NotAuthorized,
            properties: ConnAckProperties::default(),
        });
        assert!(matches!(
            client.handle_packet(refused),
            Err(ClientError::Refused(ReasonCode::NotAuthorized))
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
        let event = client.handle_packet(Packet::PubAck(PubResponse::new(id(2)))).unwrap();
        assert_eq!(event, Some(Event::Acked { reason: ReasonCode::Success }));
        assert_eq!(client.inflight(), 3);
        assert!(client.publish(&topic(), QoS::AtLeastOnce, Bytes::new()).unwrap());
        // A PUBACK for an id not in flight is a protocol violation.
        assert!(client.handle_packet(Packet::PubAck(PubResponse::new(id(2)))).is_err());
    }

    #[test]
    fn qos2_outgoing_exchange() {
        // [MQTT-4.3.3-1]: PUBREC is answered with PUBREL, then PUBCOMP ends it.
        let now = Instant::now();
        let mut client = connected(ProtocolVersion::V5, now);
        assert!(client.publish(&topic(), QoS::ExactlyOnce, Bytes::new()).unwrap());
        sent(&mut client, now);
        assert_eq!(client.handle_packet(Packet::PubRec(PubResponse::new(id(1)))).unwrap(), None);
        let packets = sent(&mut client, now);
        assert_eq!(packets, [Packet::PubRel(PubResponse::new(id(1)))]);
        assert_eq!(client.inflight(), 1);
        let event = client.handle_packet(Packet::PubComp(PubResponse::new(id(1)))).unwrap();
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
        let event = client.handle_packet(Packet::PubRec(rec)).unwrap();
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
            properties: PublishProperties::default(),
            payload: Bytes::from_static(b"payload"),
        })
    }

    #[test]
    fn incoming_qos1_is_acknowledged() {
        // [MQTT-4.3.2-2]: the receiver answers with a PUBACK of the same id.
        let now = Instant::now();
        let mut client = connected(ProtocolVersion::V3_1_1, now);
        let event = client.handle_packet(incoming(QoS::AtLeastOnce, Some(id(7)))).unwrap();
        assert!(matches!(event, Some(Event::Message(_))));
        assert_eq!(sent(&mut client, now), [Packet::PubAck(PubResponse::new(id(7)))]);
    }

    #[test]
    fn incoming_qos2_is_delivered_once() {
        // [MQTT-4.3.3-2]: PUBREC for each copy until PUBREL, one delivery,
        // PUBCOMP for PUBREL; afterwards the id is new again.
        let now = Instant::now();
        let mut client = connected(ProtocolVersion::V5, now);
        let first = client.handle_packet(incoming(QoS::ExactlyOnce, Some(id(9)))).unwrap();
        assert!(matches!(first, Some(Event::Message(_))));
        let again = client.handle_packet(incoming(QoS::ExactlyOnce, Some(id(9)))).unwrap();
        assert_eq!(again, None);
        client.handle_packet(Packet::PubRel(PubResponse::new(id(9)))).unwrap();
        assert_eq!(
            sent(&mut client, now),
            [
                Packet::PubRec(PubResponse::new(id(9))),
                Packet::PubRec(PubResponse::new(id(9))),
                Packet::PubComp(PubResponse::new(id(9))),
            ]
        );
        let new = client.handle_packet(incoming(QoS::ExactlyOnce, Some(id(9)))).unwrap();
        assert!(matches!(new, Some(Event::Message(_))));
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
        assert_eq!(client.handle_packet(Packet::SubAck(suback)).unwrap(), Some(Event::Subscribed));
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
            client.handle_packet(Packet::SubAck(suback)),
            Err(ClientError::SubscribeRefused(ReasonCode::UnspecifiedError))
        ));
        let unsuback = UnsubAck {
            packet_id: id(1),
            properties: AckProperties::default(),
            reasons: Default::default(),
        };
        assert_eq!(client.handle_packet(Packet::UnsubAck(unsuback)).unwrap(), None);
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
        client.handle_packet(Packet::PingResp).unwrap();
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
        client.handle_packet(connack(props)).unwrap();
        assert_eq!(client.poll_timeout(), Some(now + Duration::from_secs(3)));
        assert!(matches!(
            client.publish(&topic(), QoS::ExactlyOnce, Bytes::new()),
            Err(ClientError::QosNotSupported(QoS::AtLeastOnce))
        ));
        assert!(client.publish(&topic(), QoS::AtLeastOnce, Bytes::new()).unwrap());
        assert!(client.publish(&topic(), QoS::AtLeastOnce, Bytes::new()).unwrap());
        assert!(!client.publish(&topic(), QoS::AtLeastOnce, Bytes::new()).unwrap());
    }

    #[test]
    fn handle_read_resumes_across_partial_packets() {
        let now = Instant::now();
        let mut client = Client::new(config(ProtocolVersion::V3_1_1), now).unwrap();
        let mut wire = BytesMut::new();
        connack(ConnAckProperties::default()).encode(ProtocolVersion::V3_1_1, &mut wire).unwrap();
        incoming(QoS::AtMostOnce, None).encode(ProtocolVersion::V3_1_1, &mut wire).unwrap();
        let total = wire.len();
        let mut buf = BytesMut::new();
        let mut events = Vec::new();
        for byte in wire.iter() {
            buf.extend_from_slice(&[*byte]);
            while let Some(event) = client.handle_read(&mut buf).unwrap() {
                events.push(event);
            }
        }
        assert_eq!(events.len(), 2, "{total} bytes gave {events:?}");
        assert!(matches!(events[1], Event::Message(_)));
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
