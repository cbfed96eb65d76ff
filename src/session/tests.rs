//! Tests of the session state machine, driven with a virtual clock. Each test
//! is named after the rule it enforces and quotes its normative statement.

use super::*;
use crate::protocol::{
    ConnectProperties, DecodeError, Decoder, PacketId, PacketType, SubscribeProperties,
    Subscription, SubscriptionOptions, TopicName, UnsubscribeProperties, WillProperties,
};
use bytes::Bytes;
use std::num::{NonZeroU16, NonZeroU32};
use std::ops::{Deref, DerefMut};

const V311: ProtocolVersion = ProtocolVersion::V3_1_1;
const V5: ProtocolVersion = ProtocolVersion::V5;

fn pid(id: u16) -> PacketId {
    PacketId::new(id).expect("non-zero packet id")
}

/// A session with the counters its shard would keep for it: the calls that
/// count take the counters by `&mut`; these pass [`Counted::counters`].
struct Counted {
    session: Session,
    counters: SessionCounters,
}

impl Counted {
    fn new(client_id: ByteString, limits: SessionLimits) -> Self {
        Self { session: Session::new(client_id, limits), counters: SessionCounters::default() }
    }

    fn handle_connect(&mut self, now: Instant, connect: &Connect, present: bool) -> &mut ConnAck {
        self.session.handle_connect(now, connect, present, &mut self.counters)
    }

    fn handle_packet(&mut self, now: Instant, packet: Packet) -> Result<(), SessionError> {
        self.session.handle_packet(now, packet, &mut self.counters)
    }

    fn handle_delivery(&mut self, now: Instant, delivery: Delivery) -> DeliveryOutcome {
        self.session.handle_delivery(now, delivery, &mut self.counters)
    }

    fn poll_packet(&mut self, now: Instant) -> Option<Packet> {
        self.session.poll_packet(now, &mut self.counters)
    }

    fn poll_transmit(&mut self, now: Instant, out: &mut BytesMut) -> usize {
        self.session.poll_transmit(now, out, &mut self.counters)
    }

    fn handle_timeout(&mut self, now: Instant) {
        self.session.handle_timeout(now, &mut self.counters)
    }

    fn handle_connection_lost(&mut self, now: Instant) {
        self.session.handle_connection_lost(now, &mut self.counters)
    }

    fn handle_takeover(&mut self, now: Instant) {
        self.session.handle_takeover(now, &mut self.counters)
    }

    fn handle_session_end(&mut self, now: Instant) {
        self.session.handle_session_end(now, &mut self.counters)
    }
}

impl Deref for Counted {
    type Target = Session;

    fn deref(&self) -> &Session {
        &self.session
    }
}

impl DerefMut for Counted {
    fn deref_mut(&mut self) -> &mut Session {
        &mut self.session
    }
}

fn limits() -> SessionLimits {
    SessionLimits {
        max_inflight: NonZeroU16::new(4).unwrap(),
        max_queued_messages: 10,
        max_queued_bytes: 1000,
        max_queued_retained: 20,
        max_keepalive: 100,
        receive_maximum: NonZeroU16::new(2).unwrap(),
        topic_alias_maximum: 2,
        server_topic_alias_maximum: 2,
        max_session_expiry: None,
        max_packet_size: None,
        max_subscriptions: 0,
        retain_available: true,
        auth_timeout: Duration::from_secs(10),
        ..SessionLimits::default()
    }
}

fn connect_packet(version: ProtocolVersion, keep_alive: u16, clean_start: bool) -> Connect {
    Connect {
        version,
        clean_start,
        keep_alive,
        client_id: ByteString::from_static("c1"),
        will: None,
        username: None,
        password: None,
        properties: ConnectProperties::default(),
    }
}

fn will() -> Will {
    Will {
        topic: TopicName::new("clients/c1/status").unwrap(),
        payload: Bytes::from_static(b"gone"),
        qos: QoS::AtLeastOnce,
        retain: true,
        properties: WillProperties::default(),
    }
}

/// A session connected with `connect`, its CONNACK already taken.
fn connected_with(now: Instant, connect: &Connect, limits: SessionLimits) -> Counted {
    let mut session = Counted::new(ByteString::from_static("c1"), limits);
    session.handle_connect(now, connect, false);
    assert!(matches!(drain(&mut session, now)[..], [Packet::ConnAck(_)]));
    session
}

fn connected(now: Instant, version: ProtocolVersion) -> Counted {
    connected_with(now, &connect_packet(version, 0, false), limits())
}

/// Everything the session has to send, written by `poll_transmit` and read
/// back with the protocol decoder, as the client sees it.
fn drain(session: &mut Counted, now: Instant) -> Vec<Packet> {
    let mut out = BytesMut::new();
    let written = session.poll_transmit(now, &mut out);
    let mut decoder = Decoder::new(session.version().unwrap_or(V311), u32::MAX);
    let packets: Vec<Packet> =
        std::iter::from_fn(|| decoder.decode(&mut out).expect("the session writes valid packets"))
            .collect();
    assert!(out.is_empty(), "{} bytes left after the last whole packet", out.len());
    assert_eq!(packets.len(), written, "poll_transmit counts the packets it writes");
    packets
}

fn events(session: &mut Counted) -> Vec<SessionEvent> {
    std::iter::from_fn(|| session.poll_event()).collect()
}

/// [`events`], with the SUBACK and UNSUBACK barriers released as the shard
/// does once the filters are in its index.
fn indexed(session: &mut Counted) -> Vec<SessionEvent> {
    let events = events(session);
    for event in &events {
        if let SessionEvent::Subscribe { ack, .. } | SessionEvent::Unsubscribe { ack, .. } = event {
            session.release_acks(*ack);
        }
    }
    events
}

fn publish_in(qos: QoS, id: u16, topic: &str) -> Publish {
    Publish {
        dup: false,
        qos,
        retain: false,
        topic: TopicName::new(topic).unwrap(),
        packet_id: PacketId::new(id),
        properties: BoxedPublishProperties::none(),
        payload: Bytes::from_static(b"payload"),
    }
}

fn message(topic: &str, qos: QoS, payload: &'static [u8]) -> Arc<Message> {
    Arc::new(Message {
        topic: TopicName::new(topic).unwrap(),
        payload: Bytes::from_static(payload),
        qos,
        retain: false,
        properties: BoxedPublishProperties::none(),
        publisher: Some(ByteString::from_static("other")),
        expires_at: None,
        id: 0,
    })
}

fn delivery(message: Arc<Message>, subscription_qos: QoS) -> Delivery {
    Delivery {
        message,
        options: SubscriptionOptions { qos: subscription_qos, ..SubscriptionOptions::default() },
        subscription_ids: SmallVec::new(),
        from_retained: false,
        log_id: 0,
    }
}

fn deliver(session: &mut Counted, now: Instant, topic: &str, qos: QoS) -> DeliveryOutcome {
    session.handle_delivery(now, delivery(message(topic, qos, b"m"), QoS::ExactlyOnce))
}

fn ack(packet_id: u16) -> PubResponse {
    PubResponse::new(pid(packet_id))
}

fn subscribe(id: u16, filters: &[(&str, QoS)]) -> Packet {
    Packet::Subscribe(Subscribe {
        refused: Vec::new(),
        packet_id: pid(id),
        properties: SubscribeProperties::default(),
        subscriptions: filters
            .iter()
            .map(|&(filter, qos)| Subscription {
                filter: TopicFilter::new(filter).unwrap(),
                options: SubscriptionOptions { qos, ..SubscriptionOptions::default() },
            })
            .collect(),
    })
}

fn unsubscribe(id: u16, filters: &[&str]) -> Packet {
    Packet::Unsubscribe(Unsubscribe {
        refused: Vec::new(),
        packet_id: pid(id),
        properties: UnsubscribeProperties::default(),
        filters: filters.iter().map(|f| TopicFilter::new(*f).unwrap()).collect(),
    })
}

fn disconnect(reason: ReasonCode) -> Packet {
    Packet::Disconnect(Disconnect { reason, ..Disconnect::default() })
}

/// `packets` with the Reason Strings of DISCONNECTs taken out, to compare
/// reason codes.
fn stripped(mut packets: Vec<Packet>) -> Vec<Packet> {
    for packet in &mut packets {
        if let Packet::Disconnect(disconnect) = packet {
            disconnect.properties.reason_string = None;
        }
    }
    packets
}

fn as_publish(packet: &Packet) -> &Publish {
    match packet {
        Packet::Publish(publish) => publish,
        other => panic!("expected PUBLISH, got {other:?}"),
    }
}

/// (packet type, packet id, dup) of each packet, for compact assertions.
fn summary(packets: &[Packet]) -> Vec<(PacketType, Option<u16>, bool)> {
    packets
        .iter()
        .map(|packet| match packet {
            Packet::Publish(p) => (PacketType::Publish, p.packet_id.map(PacketId::get), p.dup),
            Packet::PubAck(r) | Packet::PubRec(r) | Packet::PubRel(r) | Packet::PubComp(r) => {
                (packet.packet_type(), Some(r.packet_id.get()), false)
            }
            Packet::SubAck(s) => (PacketType::SubAck, Some(s.packet_id.get()), false),
            Packet::UnsubAck(u) => (PacketType::UnsubAck, Some(u.packet_id.get()), false),
            other => (other.packet_type(), None, false),
        })
        .collect()
}

fn closed_reason(events: &[SessionEvent]) -> Option<&CloseReason> {
    events.iter().find_map(|event| match event {
        SessionEvent::Closed(reason) => Some(reason),
        _ => None,
    })
}

fn will_event(events: &[SessionEvent]) -> Option<&Arc<Message>> {
    events.iter().find_map(|event| match event {
        SessionEvent::Will(message) => Some(message),
        _ => None,
    })
}

// ---- CONNECT ---------------------------------------------------------------

#[test]
fn second_connect_is_a_protocol_violation_mqtt_3_1_0_2() {
    // [MQTT-3.1.0-2] "The Server MUST process a second CONNECT Packet sent
    // from a Client as a protocol violation and disconnect the Client."
    let t0 = Instant::now();
    let mut connect = connect_packet(V311, 0, false);
    connect.will = Some(will());
    let mut session = connected_with(t0, &connect, limits());
    let result = session.handle_packet(t0, Packet::Connect(Box::new(connect)));
    assert_eq!(result, Err(SessionError::SecondConnect));
    assert_eq!(SessionError::SecondConnect.reason_code(), ReasonCode::ProtocolError);
    assert!(!session.is_connected());
    let events = events(&mut session);
    assert!(will_event(&events).is_some(), "a protocol error close publishes the will");
    assert_eq!(
        closed_reason(&events),
        Some(&CloseReason::ProtocolViolation(SessionError::SecondConnect))
    );
    // Nothing more is read from the closed connection.
    assert_eq!(session.handle_packet(t0, Packet::PingReq), Err(SessionError::NotConnected));
    assert!(drain(&mut session, t0).is_empty(), "MQTT 3.1.1 gets no DISCONNECT");
}

#[test]
fn session_present_only_without_clean_start_mqtt_3_2_2_1() {
    // [MQTT-3.2.2-1] CleanSession=1 -> Session Present 0; [MQTT-3.2.2-2]
    // stored state and CleanSession=0 -> Session Present 1.
    let t0 = Instant::now();
    let cases = [
        (V311, true, true, false),
        (V311, false, true, true),
        (V311, false, false, false),
        (V5, false, true, true),
        (ProtocolVersion::V3_1, false, true, false),
    ];
    for (version, clean_start, stored, expected) in cases {
        let mut session = Counted::new(ByteString::from_static("c1"), limits());
        let connack =
            session.handle_connect(t0, &connect_packet(version, 0, clean_start), stored).clone();
        assert_eq!(connack.session_present, expected, "{version:?} clean={clean_start}");
        assert_eq!(connack.reason, ReasonCode::Success);
        assert_eq!(session.poll_packet(t0), Some(Packet::ConnAck(Box::new(connack))));
    }
}

#[test]
fn v5_connack_advertises_limits_and_assigned_client_id() {
    let t0 = Instant::now();
    let mut connect = connect_packet(V5, 30, true);
    connect.client_id = ByteString::new();
    let mut session = Counted::new(ByteString::from_static("auto-1"), limits());
    let connack = session.handle_connect(t0, &connect, false);
    assert_eq!(connack.properties.receive_maximum, NonZeroU16::new(2));
    assert_eq!(connack.properties.topic_alias_maximum, Some(2));
    assert_eq!(connack.properties.assigned_client_identifier.as_deref(), Some("auto-1"));
    assert_eq!(connack.properties.server_keep_alive, None, "30 s is within the maximum");
}

// ---- PUBLISH from the client ------------------------------------------------

#[test]
fn qos0_publish_in_is_routed_without_acknowledgement() {
    // [MQTT-3.3.4-1] QoS 0: no response.
    let t0 = Instant::now();
    let mut session = connected(t0, V311);
    session.handle_packet(t0, Packet::Publish(publish_in(QoS::AtMostOnce, 0, "a/b"))).unwrap();
    let events = events(&mut session);
    assert!(matches!(&events[..], [SessionEvent::Publish(m)] if m.topic.as_str() == "a/b"));
    assert!(drain(&mut session, t0).is_empty());
}

#[test]
fn qos1_publish_in_is_routed_and_acknowledged_mqtt_4_3_2_2() {
    // [MQTT-4.3.2-2] "MUST respond with a PUBACK Packet containing the Packet
    // Identifier from the incoming PUBLISH Packet, having accepted ownership".
    let t0 = Instant::now();
    let mut session = connected(t0, V311);
    for _ in 0..2 {
        // After PUBACK the same id is a new publication, DUP or not.
        session.handle_packet(t0, Packet::Publish(publish_in(QoS::AtLeastOnce, 9, "a"))).unwrap();
        assert_eq!(events(&mut session).len(), 1);
        assert_eq!(drain(&mut session, t0), vec![Packet::PubAck(ack(9))]);
    }
}

#[test]
fn qos2_publish_in_method_b_delivers_once_mqtt_4_3_3_2() {
    // [MQTT-4.3.3-2] "Until it has received the corresponding PUBREL packet,
    // the Receiver MUST acknowledge any subsequent PUBLISH packet with the
    // same Packet Identifier by sending a PUBREC. It MUST NOT cause duplicate
    // messages to be delivered to any onward recipients in this case."
    let t0 = Instant::now();
    let mut session = connected(t0, V311);
    session.handle_packet(t0, Packet::Publish(publish_in(QoS::ExactlyOnce, 7, "a"))).unwrap();
    assert_eq!(events(&mut session).len(), 1);
    assert_eq!(drain(&mut session, t0), vec![Packet::PubRec(ack(7))]);

    let mut again = publish_in(QoS::ExactlyOnce, 7, "a");
    again.dup = true;
    session.handle_packet(t0, Packet::Publish(again)).unwrap();
    assert!(events(&mut session).is_empty(), "no second event before PUBREL");
    assert_eq!(drain(&mut session, t0), vec![Packet::PubRec(ack(7))]);
    assert_eq!(session.counters.duplicate_qos2_received, 1);

    // "MUST respond to a PUBREL packet by sending a PUBCOMP packet containing
    // the same Packet Identifier as the PUBREL."
    session.handle_packet(t0, Packet::PubRel(ack(7))).unwrap();
    assert_eq!(drain(&mut session, t0), vec![Packet::PubComp(ack(7))]);

    // "After it has sent a PUBCOMP, the receiver MUST treat any subsequent
    // PUBLISH packet that contains that Packet Identifier as being a new
    // publication."
    session.handle_packet(t0, Packet::Publish(publish_in(QoS::ExactlyOnce, 7, "a"))).unwrap();
    assert_eq!(events(&mut session).len(), 1);
}

#[test]
fn qos2_awaiting_pubrel_survives_reconnect_mqtt_4_3_3_2() {
    // The ids awaiting PUBREL are session state (3.1.1 §3.1.2.4): a re-sent
    // PUBLISH on the next connection is still not delivered twice.
    let t0 = Instant::now();
    let mut session = connected(t0, V311);
    session.handle_packet(t0, Packet::Publish(publish_in(QoS::ExactlyOnce, 3, "a"))).unwrap();
    session.handle_connection_lost(t0);
    events(&mut session);
    session.handle_connect(t0, &connect_packet(V311, 0, false), true);
    drain(&mut session, t0);
    let mut again = publish_in(QoS::ExactlyOnce, 3, "a");
    again.dup = true;
    session.handle_packet(t0, Packet::Publish(again)).unwrap();
    assert!(events(&mut session).is_empty());
    assert_eq!(drain(&mut session, t0), vec![Packet::PubRec(ack(3))]);
}

#[test]
fn pubrel_for_unknown_id_still_gets_pubcomp_mqtt_4_3_3_2() {
    // 3.1.1 [MQTT-4.3.3-2] the receiver "MUST respond to a PUBREL packet by
    // sending a PUBCOMP packet containing the same Packet Identifier as the
    // PUBREL", known or not: it is no violation, as the PUBREL may be a
    // re-send after the PUBCOMP was lost [MQTT-4.4.0-1]. 5.0 §3.7.2.1 answers
    // an unknown id with PUBCOMP 0x92 (Packet Identifier not found).
    let t0 = Instant::now();
    let mut session = connected(t0, V311);
    session.handle_packet(t0, Packet::PubRel(ack(44))).unwrap();
    assert_eq!(drain(&mut session, t0), vec![Packet::PubComp(ack(44))]);

    let mut session = connected(t0, V5);
    session.handle_packet(t0, Packet::PubRel(ack(44))).unwrap();
    let mut expected = ack(44);
    expected.reason = ReasonCode::PacketIdentifierNotFound;
    assert_eq!(drain(&mut session, t0), vec![Packet::PubComp(expected)]);
}

#[test]
fn acknowledgements_follow_the_order_of_publishes_mqtt_4_6_0_2() {
    // [MQTT-4.6.0-2] PUBACKs and [MQTT-4.6.0-3] PUBRECs in the order the
    // PUBLISHes were received.
    let t0 = Instant::now();
    let mut session = connected(t0, V311);
    let incoming = [
        (QoS::AtLeastOnce, 5),
        (QoS::ExactlyOnce, 2),
        (QoS::AtLeastOnce, 9),
        (QoS::ExactlyOnce, 1),
    ];
    for (qos, id) in incoming {
        session.handle_packet(t0, Packet::Publish(publish_in(qos, id, "a"))).unwrap();
    }
    session.handle_packet(t0, Packet::PubRel(ack(1))).unwrap();
    session.handle_packet(t0, Packet::PubRel(ack(2))).unwrap();
    assert_eq!(
        drain(&mut session, t0),
        vec![
            Packet::PubAck(ack(5)),
            Packet::PubRec(ack(2)),
            Packet::PubAck(ack(9)),
            Packet::PubRec(ack(1)),
            Packet::PubComp(ack(1)),
            Packet::PubComp(ack(2)),
        ]
    );
}

#[test]
fn routed_message_keeps_publisher_retain_and_properties() {
    // The Message is built once with the publisher's client id (for No Local)
    // and RETAIN as published (for the retained store).
    let t0 = Instant::now();
    let mut session = connected(t0, V5);
    let mut publish = publish_in(QoS::AtLeastOnce, 1, "a/b");
    publish.retain = true;
    publish.properties.make_mut().content_type = Some(ByteString::from_static("text/plain"));
    publish.properties.make_mut().message_expiry_interval = Some(10);
    session.handle_packet(t0, Packet::Publish(publish)).unwrap();
    let events = events(&mut session);
    let [SessionEvent::Publish(message)] = &events[..] else { panic!("{events:?}") };
    assert_eq!(message.publisher.as_deref(), Some("c1"));
    assert!(message.retain);
    assert_eq!(message.qos, QoS::AtLeastOnce);
    assert_eq!(&message.payload[..], b"payload");
    assert_eq!(message.properties.content_type.as_deref(), Some("text/plain"));
    assert_eq!(message.expires_at, Some(t0 + Duration::from_secs(10)));
}

// ---- PUBLISH to the client ---------------------------------------------------

#[test]
fn effective_qos_is_the_minimum_mqtt_3_8_4_6() {
    // [MQTT-3.8.4-6] (5.0 [MQTT-3.8.4-8]) "The QoS of Payload Messages sent in
    // response to a Subscription MUST be the minimum of the QoS of the
    // originally published message and the maximum QoS granted by the Server."
    let t0 = Instant::now();
    let mut session = connected(t0, V311);
    let cases = [
        (QoS::ExactlyOnce, QoS::AtLeastOnce, QoS::AtLeastOnce),
        (QoS::AtLeastOnce, QoS::ExactlyOnce, QoS::AtLeastOnce),
        (QoS::ExactlyOnce, QoS::AtMostOnce, QoS::AtMostOnce),
        (QoS::ExactlyOnce, QoS::ExactlyOnce, QoS::ExactlyOnce),
    ];
    for (message_qos, subscription_qos, expected) in cases {
        let outcome = session
            .handle_delivery(t0, delivery(message("t", message_qos, b"x"), subscription_qos));
        assert_eq!(outcome, DeliveryOutcome::Queued);
        let packets = drain(&mut session, t0);
        let publish = as_publish(&packets[0]);
        assert_eq!(publish.qos, expected);
        assert_eq!(publish.packet_id.is_some(), expected != QoS::AtMostOnce, "[MQTT-2.3.1-5]");
    }
}

#[test]
fn retain_flag_is_zero_for_established_subscriptions_mqtt_3_3_1_9() {
    // [MQTT-3.3.1-9] "It MUST set the RETAIN flag to 0 when a PUBLISH Packet
    // is sent to a Client because it matches an established subscription
    // regardless of how the flag was set in the message it received."
    let t0 = Instant::now();
    let mut session = connected(t0, V311);
    let mut retained = Message::clone(&message("t", QoS::AtMostOnce, b"x"));
    retained.retain = true;
    session.handle_delivery(t0, delivery(Arc::new(retained), QoS::AtMostOnce));
    assert!(!as_publish(&drain(&mut session, t0)[0]).retain);
}

#[test]
fn retain_flag_is_one_from_the_retained_store_mqtt_3_3_1_8() {
    // [MQTT-3.3.1-8] "When sending a PUBLISH Packet to a Client the Server
    // MUST set the RETAIN flag to 1 if a message is sent as a result of a new
    // subscription being made by a Client."
    let t0 = Instant::now();
    let mut session = connected(t0, V311);
    let mut from_store = delivery(message("t", QoS::AtMostOnce, b"x"), QoS::AtMostOnce);
    from_store.from_retained = true;
    session.handle_delivery(t0, from_store);
    assert!(as_publish(&drain(&mut session, t0)[0]).retain);
}

#[test]
fn retain_as_published_keeps_the_flag_mqtt_3_3_1_13() {
    // 5.0 [MQTT-3.3.1-13] "If the value of Retain As Published subscription
    // option is set to 1, the Server MUST set the RETAIN flag equal to the
    // RETAIN flag in the received PUBLISH packet."
    let t0 = Instant::now();
    let mut session = connected(t0, V5);
    for published in [true, false] {
        let mut m = Message::clone(&message("t", QoS::AtMostOnce, b"x"));
        m.retain = published;
        let mut d = delivery(Arc::new(m), QoS::AtMostOnce);
        d.options.retain_as_published = true;
        session.handle_delivery(t0, d);
        assert_eq!(as_publish(&drain(&mut session, t0)[0]).retain, published);
    }
}

#[test]
fn first_send_has_dup_zero_and_unused_nonzero_ids_mqtt_2_3_1_2() {
    // [MQTT-2.3.1-2] (5.0 [MQTT-2.2.1-3]) a new QoS > 0 PUBLISH gets a
    // non-zero Packet Identifier that is currently unused; [MQTT-4.3.2-1]
    // and [MQTT-4.3.3-1] with DUP=0.
    let t0 = Instant::now();
    let mut session = connected(t0, V311);
    let mut in_use = std::collections::BTreeSet::new();
    // Go around the id space twice; every second message stays unacknowledged.
    for round in 0..70_000u32 {
        assert_eq!(deliver(&mut session, t0, "t", QoS::AtLeastOnce), DeliveryOutcome::Queued);
        let packets = drain(&mut session, t0);
        let publish = as_publish(&packets[0]);
        assert!(!publish.dup);
        let id = publish.packet_id.unwrap().get();
        assert!(in_use.insert(id), "id {id} reused while in flight");
        if round % 2 == 0 || in_use.len() == 4 {
            let oldest = *in_use.iter().next().unwrap();
            in_use.remove(&oldest);
            session.handle_packet(t0, Packet::PubAck(ack(oldest))).unwrap();
        }
    }
    assert_eq!(session.counters.unexpected_acks, 0);
}

#[test]
fn qos1_out_is_unacknowledged_until_puback_mqtt_4_3_2_1() {
    // [MQTT-4.3.2-1] "MUST treat the PUBLISH Packet as unacknowledged until
    // it has received the corresponding PUBACK packet from the receiver."
    let t0 = Instant::now();
    let mut session = connected(t0, V311);
    deliver(&mut session, t0, "t", QoS::AtLeastOnce);
    drain(&mut session, t0);
    assert_eq!(session.inflight_len(), 1);
    session.handle_packet(t0, Packet::PubAck(ack(1))).unwrap();
    assert_eq!(session.inflight_len(), 0);
    assert!(drain(&mut session, t0).is_empty());
}

#[test]
fn qos2_out_pubrec_pubrel_pubcomp_mqtt_4_3_3_1() {
    // [MQTT-4.3.3-1] unacknowledged until PUBREC; then "MUST send a PUBREL
    // packet ... containing the same Packet Identifier" and treat it as
    // unacknowledged until PUBCOMP.
    let t0 = Instant::now();
    let mut session = connected(t0, V311);
    deliver(&mut session, t0, "t", QoS::ExactlyOnce);
    let packets = drain(&mut session, t0);
    assert_eq!(summary(&packets), vec![(PacketType::Publish, Some(1), false)]);
    session.handle_packet(t0, Packet::PubRec(ack(1))).unwrap();
    assert_eq!(drain(&mut session, t0), vec![Packet::PubRel(ack(1))]);
    assert_eq!(session.inflight_len(), 1, "the PUBREL awaits PUBCOMP");
    session.handle_packet(t0, Packet::PubComp(ack(1))).unwrap();
    assert_eq!(session.inflight_len(), 0);
    assert_eq!(session.counters.unexpected_acks, 0);
}

#[test]
fn v5_pubrec_with_failure_ends_the_flow_mqtt_4_3_3_4() {
    // 5.0 [MQTT-4.3.3-4] PUBREL only for a PUBREC with a reason below 0x80.
    let t0 = Instant::now();
    let mut session = connected(t0, V5);
    deliver(&mut session, t0, "t", QoS::ExactlyOnce);
    drain(&mut session, t0);
    let mut refused = ack(1);
    refused.reason = ReasonCode::QuotaExceeded;
    session.handle_packet(t0, Packet::PubRec(refused)).unwrap();
    assert!(drain(&mut session, t0).is_empty());
    assert_eq!(session.inflight_len(), 0);
}

#[test]
fn acknowledgements_for_ids_not_in_flight_are_ignored() {
    // MQTT 3.1.1 defines no error for them, and 5.0 §3.6.2.1 calls an
    // unknown packet id "not an error during recovery": a client may re-send
    // an acknowledgement after reconnecting. They are counted and ignored,
    // in 3.1.1 and in 5.0, including ids whose flow has just completed.
    let t0 = Instant::now();
    for version in [V311, V5] {
        let mut session = connected(t0, version);
        deliver(&mut session, t0, "t", QoS::AtLeastOnce);
        drain(&mut session, t0);
        session.handle_packet(t0, Packet::PubAck(ack(1))).unwrap();
        for packet in [
            Packet::PubAck(ack(1)),
            Packet::PubRec(ack(1)),
            Packet::PubComp(ack(1)),
            Packet::PubAck(ack(3)),
            Packet::PubRec(ack(4)),
            Packet::PubComp(ack(5)),
        ] {
            assert_eq!(session.handle_packet(t0, packet), Ok(()));
        }
        assert!(session.is_connected());
        assert!(drain(&mut session, t0).is_empty());
        assert_eq!(session.counters.unexpected_acks, 6);
    }
}

/// A session (3.1.1 or 5.0, persistent) that has sent one PUBLISH at `qos`
/// (packet id 1); with `pubrec`, the client has answered PUBREC and been sent
/// the PUBREL.
fn awaiting_ack(t0: Instant, version: ProtocolVersion, qos: QoS, pubrec: bool) -> Counted {
    let mut session = connected(t0, version);
    deliver(&mut session, t0, "t", qos);
    assert_eq!(summary(&drain(&mut session, t0)), vec![(PacketType::Publish, Some(1), false)]);
    if pubrec {
        session.handle_packet(t0, Packet::PubRec(ack(1))).unwrap();
        assert_eq!(drain(&mut session, t0), vec![Packet::PubRel(ack(1))]);
    }
    session
}

/// Sends `wrong` to `session` and checks that it is a protocol violation
/// that closes the connection: nothing more for a 3.1.1 client
/// [MQTT-4.8.0-1], a DISCONNECT 0x82 for a 5.0 client (5.0 §4.13). The
/// message stays in flight and is re-sent on the next connection
/// [MQTT-4.4.0-1].
fn assert_wrong_ack(mut session: Counted, t0: Instant, wrong: Packet, expected: PacketType) {
    let version = session.version().unwrap();
    let packet = wrong.packet_type();
    let error = SessionError::WrongAcknowledgement { packet, packet_id: 1, expected };
    assert_eq!(session.handle_packet(t0, wrong), Err(error.clone()));
    assert_eq!(error.reason_code(), ReasonCode::ProtocolError);
    assert!(!session.is_connected());
    assert_eq!(closed_reason(&events(&mut session)), Some(&CloseReason::ProtocolViolation(error)));
    let output = stripped(drain(&mut session, t0));
    if version.is_v5() {
        assert_eq!(output, vec![disconnect(ReasonCode::ProtocolError)]);
    } else {
        assert!(output.is_empty(), "MQTT 3.1.1 has no DISCONNECT from the server");
    }
    assert_eq!(session.inflight_len(), 1, "the message is still in flight");
    assert_eq!(session.counters.unexpected_acks, 0);
    session.handle_connection_lost(t0);
    session.handle_connect(t0, &connect_packet(version, 0, false), true);
    let resent = summary(&drain(&mut session, t0)[1..]);
    let resent_as = if expected == PacketType::PubComp {
        (PacketType::PubRel, Some(1), false)
    } else {
        (PacketType::Publish, Some(1), true)
    };
    assert_eq!(resent, vec![resent_as]);
}

#[test]
fn pubrec_for_a_qos1_publish_is_a_protocol_violation_mqtt_4_3_2_1_mqtt_4_8_0_1() {
    // [MQTT-4.3.2-1] the sender of a QoS 1 PUBLISH "MUST treat the PUBLISH
    // Packet as unacknowledged until it has received the corresponding
    // PUBACK packet"; a PUBREC instead breaks the protocol, and "if either
    // the Server or Client encounters a protocol violation, it MUST close
    // the Network Connection" [MQTT-4.8.0-1].
    let t0 = Instant::now();
    for version in [V311, V5] {
        let session = awaiting_ack(t0, version, QoS::AtLeastOnce, false);
        assert_wrong_ack(session, t0, Packet::PubRec(ack(1)), PacketType::PubAck);
        // A v5 PUBREC with a failure reason is no better.
        let session = awaiting_ack(t0, version, QoS::AtLeastOnce, false);
        let mut refused = ack(1);
        if version.is_v5() {
            refused.reason = ReasonCode::QuotaExceeded;
        }
        assert_wrong_ack(session, t0, Packet::PubRec(refused), PacketType::PubAck);
    }
}

#[test]
fn pubcomp_for_a_qos1_publish_is_a_protocol_violation_mqtt_4_3_2_1_mqtt_4_8_0_1() {
    // [MQTT-4.3.2-1] only PUBACK acknowledges a QoS 1 PUBLISH; there was no
    // PUBREL to complete. [MQTT-4.8.0-1]
    let t0 = Instant::now();
    for version in [V311, V5] {
        let session = awaiting_ack(t0, version, QoS::AtLeastOnce, false);
        assert_wrong_ack(session, t0, Packet::PubComp(ack(1)), PacketType::PubAck);
    }
}

#[test]
fn puback_for_a_qos2_publish_is_a_protocol_violation_mqtt_4_3_3_1_mqtt_4_8_0_1() {
    // [MQTT-4.3.3-1] the sender of a QoS 2 PUBLISH "MUST treat the PUBLISH
    // packet as unacknowledged until it has received the corresponding
    // PUBREC packet from the receiver"; a PUBACK is not one. [MQTT-4.8.0-1]
    let t0 = Instant::now();
    for version in [V311, V5] {
        let session = awaiting_ack(t0, version, QoS::ExactlyOnce, false);
        assert_wrong_ack(session, t0, Packet::PubAck(ack(1)), PacketType::PubRec);
    }
}

#[test]
fn pubcomp_before_pubrec_is_a_protocol_violation_mqtt_4_3_3_1_mqtt_4_8_0_1() {
    // [MQTT-4.3.3-1] a QoS 2 PUBLISH awaits PUBREC; a PUBCOMP completes a
    // PUBREL, and none was sent. [MQTT-4.8.0-1]
    let t0 = Instant::now();
    for version in [V311, V5] {
        let session = awaiting_ack(t0, version, QoS::ExactlyOnce, false);
        assert_wrong_ack(session, t0, Packet::PubComp(ack(1)), PacketType::PubRec);
    }
}

#[test]
fn puback_for_a_pubrel_is_a_protocol_violation_mqtt_4_3_3_1_mqtt_4_8_0_1() {
    // [MQTT-4.3.3-1] the sender "MUST treat the PUBREL packet as
    // unacknowledged until it has received the corresponding PUBCOMP
    // packet from the receiver"; a PUBACK is not one. [MQTT-4.8.0-1]
    let t0 = Instant::now();
    for version in [V311, V5] {
        let session = awaiting_ack(t0, version, QoS::ExactlyOnce, true);
        assert_wrong_ack(session, t0, Packet::PubAck(ack(1)), PacketType::PubComp);
    }
}

#[test]
fn repeated_pubrec_gets_its_pubrel_again_mqtt_4_3_3_1() {
    // A PUBREC for a PUBREL already sent is the right kind of
    // acknowledgement, late: it is answered with the PUBREL again, not
    // treated as a violation.
    let t0 = Instant::now();
    let mut session = awaiting_ack(t0, V311, QoS::ExactlyOnce, true);
    session.handle_packet(t0, Packet::PubRec(ack(1))).unwrap();
    assert_eq!(drain(&mut session, t0), vec![Packet::PubRel(ack(1))]);
    assert!(session.is_connected());
}

#[test]
fn messages_keep_their_order_mqtt_4_6_0_6() {
    // [MQTT-4.6.0-6] PUBLISH packets to a subscriber in the order they were
    // received (the session keeps one FIFO for every topic and QoS).
    let t0 = Instant::now();
    let mut session = connected(t0, V311);
    let sent = [
        ("a", QoS::AtLeastOnce),
        ("b", QoS::AtMostOnce),
        ("a", QoS::ExactlyOnce),
        ("a", QoS::AtMostOnce),
    ];
    for (i, (topic, qos)) in sent.iter().enumerate() {
        let payload: &'static [u8] = [b"0", b"1", b"2", b"3"][i];
        session.handle_delivery(t0, delivery(message(topic, *qos, payload), QoS::ExactlyOnce));
    }
    let packets = drain(&mut session, t0);
    let payloads: Vec<&[u8]> = packets.iter().map(|p| &as_publish(p).payload[..]).collect();
    assert_eq!(payloads, [b"0", b"1", b"2", b"3"]);
}

// ---- Flow control and queue limits -------------------------------------------

#[test]
fn at_most_max_inflight_unacknowledged_publishes() {
    let t0 = Instant::now();
    let mut session = connected(t0, V311);
    for _ in 0..6 {
        deliver(&mut session, t0, "t", QoS::AtLeastOnce);
    }
    let packets = drain(&mut session, t0);
    assert_eq!(packets.len(), 4, "max_inflight is 4");
    assert_eq!((session.inflight_len(), session.queued_len()), (4, 2));
    session.handle_packet(t0, Packet::PubAck(ack(2))).unwrap();
    assert_eq!(summary(&drain(&mut session, t0)), vec![(PacketType::Publish, Some(5), false)]);
    assert!(drain(&mut session, t0).is_empty(), "the window is full again");
}

#[test]
fn qos0_bypasses_the_inflight_window() {
    let t0 = Instant::now();
    let mut session = connected(t0, V311);
    for _ in 0..4 {
        deliver(&mut session, t0, "t", QoS::ExactlyOnce);
    }
    drain(&mut session, t0);
    assert_eq!(session.inflight_len(), 4);
    deliver(&mut session, t0, "t", QoS::AtMostOnce);
    let packets = drain(&mut session, t0);
    assert_eq!(summary(&packets), vec![(PacketType::Publish, None, false)]);
}

#[test]
fn v5_client_receive_maximum_narrows_the_window_mqtt_3_3_4_9() {
    // 5.0 [MQTT-3.3.4-9] "The Server MUST NOT send more than Receive Maximum
    // QoS 1 and QoS 2 PUBLISH packets for which it has not received PUBACK,
    // PUBCOMP, or PUBREC with a Reason Code of 128 or greater."
    let t0 = Instant::now();
    let mut connect = connect_packet(V5, 0, false);
    connect.properties.receive_maximum = NonZeroU16::new(1);
    let mut session = connected_with(t0, &connect, limits());
    deliver(&mut session, t0, "t", QoS::ExactlyOnce);
    deliver(&mut session, t0, "t", QoS::AtLeastOnce);
    assert_eq!(drain(&mut session, t0).len(), 1);
    session.handle_packet(t0, Packet::PubRec(ack(1))).unwrap();
    assert_eq!(summary(&drain(&mut session, t0)), vec![(PacketType::PubRel, Some(1), false)]);
    session.handle_packet(t0, Packet::PubComp(ack(1))).unwrap();
    assert_eq!(summary(&drain(&mut session, t0)), vec![(PacketType::Publish, Some(2), false)]);
}

#[test]
fn full_queue_drops_the_new_message_not_an_older_one() {
    let t0 = Instant::now();
    let mut small = limits();
    small.max_queued_messages = 3;
    let mut session = Counted::new(ByteString::from_static("c1"), small);
    let qos =
        [QoS::AtLeastOnce, QoS::ExactlyOnce, QoS::AtLeastOnce, QoS::ExactlyOnce, QoS::AtLeastOnce];
    let outcomes: Vec<_> = qos.iter().map(|&q| deliver(&mut session, t0, "t", q)).collect();
    assert_eq!(outcomes[..3], [DeliveryOutcome::Queued; 3]);
    assert_eq!(outcomes[3..], [DeliveryOutcome::Dropped(DropReason::QueueFull); 2]);
    assert_eq!(session.queued_len(), 3);
    assert_eq!(session.counters.dropped_queue_full, [0, 1, 1], "counted per QoS");
    session.handle_connect(t0, &connect_packet(V311, 0, false), true);
    let packets = drain(&mut session, t0);
    let sent: Vec<QoS> = packets[1..].iter().map(|p| as_publish(p).qos).collect();
    assert_eq!(sent, qos[..3], "the first three survive");
}

#[test]
fn queue_bytes_limit_counts_topic_and_payload() {
    let t0 = Instant::now();
    let mut small = limits();
    small.max_queued_bytes = 10;
    let mut session = Counted::new(ByteString::from_static("c1"), small);
    // 1 byte of topic + 4 of payload = 5 bytes each.
    let five = || delivery(message("t", QoS::AtLeastOnce, b"1234"), QoS::AtLeastOnce);
    assert_eq!(session.handle_delivery(t0, five()), DeliveryOutcome::Queued);
    assert_eq!(session.handle_delivery(t0, five()), DeliveryOutcome::Queued);
    assert_eq!(session.queued_bytes(), 10);
    assert_eq!(
        session.handle_delivery(t0, five()),
        DeliveryOutcome::Dropped(DropReason::QueueFull)
    );
    assert_eq!(session.queued_bytes(), 10);
}

#[test]
fn new_queue_limits_apply_at_once_and_drop_nothing_queued() {
    let t0 = Instant::now();
    let mut small = limits();
    small.max_queued_messages = 2;
    let mut session = Counted::new(ByteString::from_static("c1"), small);
    for _ in 0..2 {
        assert_eq!(deliver(&mut session, t0, "t", QoS::AtLeastOnce), DeliveryOutcome::Queued);
    }
    assert_eq!(
        deliver(&mut session, t0, "t", QoS::AtLeastOnce),
        DeliveryOutcome::Dropped(DropReason::QueueFull)
    );
    small.max_queued_messages = 3;
    session.set_limits(small);
    assert_eq!(deliver(&mut session, t0, "t", QoS::AtLeastOnce), DeliveryOutcome::Queued);
    small.max_queued_messages = 1;
    session.set_limits(small);
    assert_eq!(session.queued_len(), 3, "lowering a limit drops nothing already queued");
    assert_eq!(
        deliver(&mut session, t0, "t", QoS::AtLeastOnce),
        DeliveryOutcome::Dropped(DropReason::QueueFull)
    );
}

#[test]
fn receive_maximum_keeps_the_value_its_connack_advertised_until_reconnect() {
    let t0 = Instant::now();
    let mut session = connected(t0, V5);
    let mut lower = limits();
    lower.receive_maximum = NonZeroU16::new(1).unwrap();
    session.set_limits(lower);
    // Advertised 2 at CONNECT: two unacknowledged QoS 2 publishes are fine.
    session.handle_packet(t0, Packet::Publish(publish_in(QoS::ExactlyOnce, 1, "t"))).unwrap();
    session.handle_packet(t0, Packet::Publish(publish_in(QoS::ExactlyOnce, 2, "t"))).unwrap();
    session.handle_connection_lost(t0);
    session.handle_connect(t0, &connect_packet(V5, 0, false), true);
    let Packet::ConnAck(connack) = &drain(&mut session, t0)[0] else { panic!("no CONNACK") };
    assert_eq!(connack.properties.receive_maximum, NonZeroU16::new(1));
}

#[test]
fn empty_queue_admits_one_oversized_message() {
    let t0 = Instant::now();
    let mut small = limits();
    small.max_queued_bytes = 3;
    let mut session = connected_with(t0, &connect_packet(V311, 0, false), small);
    let big = |qos| delivery(message("topic", qos, b"larger than 3"), qos);
    assert_eq!(session.handle_delivery(t0, big(QoS::AtMostOnce)), DeliveryOutcome::Queued);
    assert_eq!(
        session.handle_delivery(t0, big(QoS::AtMostOnce)),
        DeliveryOutcome::Dropped(DropReason::QueueFull)
    );
    assert_eq!(drain(&mut session, t0).len(), 1);
    assert_eq!(session.queued_bytes(), 0);
}

/// Fills a connected session's window (4) and queue (10), then delivers
/// `past` more at `qos`; returns their outcomes.
fn fill_past_limits(
    session: &mut Counted,
    now: Instant,
    qos: QoS,
    past: usize,
) -> Vec<DeliveryOutcome> {
    for i in 0..14 {
        assert_eq!(
            deliver(session, now, &format!("t/{i}"), QoS::AtLeastOnce),
            DeliveryOutcome::Queued
        );
        if i == 3 {
            assert_eq!(drain(session, now).len(), 4, "the window");
        }
    }
    (0..past).map(|i| deliver(session, now, &format!("over/{i}"), qos)).collect()
}

#[test]
fn qos1_for_a_connected_client_past_its_limits_is_queued_not_dropped() {
    // design.md: "QoS 1/2 applies backpressure to the publishing
    // connection - never ack and then silently drop". The message may be
    // acknowledged to its publisher already: it is queued past the limits,
    // and the shard slows the publishers instead.
    let t0 = Instant::now();
    let mut session = connected(t0, V311);
    let outcomes = fill_past_limits(&mut session, t0, QoS::AtLeastOnce, 3);
    assert_eq!(outcomes, [DeliveryOutcome::OverLimit; 3]);
    assert_eq!(session.counters.dropped_queue_full, [0, 0, 0]);
    assert_eq!(session.queued_len(), 13);
    // QoS 0 is still dropped at the limit.
    assert_eq!(
        deliver(&mut session, t0, "q0", QoS::AtMostOnce),
        DeliveryOutcome::Dropped(DropReason::QueueFull)
    );
    assert_eq!(session.counters.dropped_queue_full, [1, 0, 0]);
    // Drained once back to half its limits (5 of 10), not before.
    for id in 1..=4 {
        session.handle_packet(t0, Packet::PubAck(ack(id))).unwrap();
    }
    let mut received = 4;
    while !session.is_drained() {
        for packet in drain(&mut session, t0) {
            let Packet::Publish(publish) = packet else { continue };
            received += 1;
            session
                .handle_packet(t0, Packet::PubAck(ack(publish.packet_id.unwrap().get())))
                .unwrap();
        }
        assert!(session.queued_len() <= 13);
    }
    assert_eq!(session.queued_len(), 5);
    assert_eq!(received + session.queued_len(), 14 + 3, "nothing lost");
}

#[test]
fn a_slow_consumer_is_told_0x97_and_its_queue_cut_to_its_limits() {
    // 5.0 §3.14.2.1: 0x97 Quota exceeded, "An implementation or
    // administrative imposed limit has been exceeded".
    let t0 = Instant::now();
    let mut session = connected(t0, V5);
    fill_past_limits(&mut session, t0, QoS::AtLeastOnce, 3);
    session.handle_slow_consumer(t0, &mut Default::default());
    let last = drain(&mut session, t0);
    let Some(Packet::Disconnect(disconnect)) = last.last() else { panic!("{last:?}") };
    assert_eq!(disconnect.reason, ReasonCode::QuotaExceeded);
    assert!(!session.is_connected());
    let mut counters = SessionCounters::default();
    let mut fresh = connected(t0, V5);
    fill_past_limits(&mut fresh, t0, QoS::AtLeastOnce, 3);
    fresh.session.handle_slow_consumer(t0, &mut counters);
    // The newest three go: a prefix of what was routed stays.
    assert_eq!(counters.dropped_slow_consumer, 3);
    assert_eq!(counters.dropped_queue_full, [0, 0, 0]);
    assert_eq!(fresh.queued_len(), 10);
    // Offline: the limits hold again.
    assert_eq!(
        deliver(&mut fresh, t0, "late", QoS::AtLeastOnce),
        DeliveryOutcome::Dropped(DropReason::QueueFull)
    );
}

#[test]
fn revoked_credentials_close_the_connection_with_0x87_and_keep_the_session() {
    // A reloaded password_file removed the user (or changed its password):
    // 5.0 §3.14.2.1, 0x87 Not authorized, as for a failed
    // re-authentication [MQTT-4.12.1-2].
    let t0 = Instant::now();
    let connect = Connect { username: Some("alice".into()), ..connect_packet(V5, 0, false) };
    let mut session = connected_with(t0, &connect, limits());
    assert_eq!(session.connected_user(), Some("alice"));
    session.handle_credentials_revoked(t0, &mut Default::default());
    let last = drain(&mut session, t0);
    let Some(Packet::Disconnect(disconnect)) = last.last() else { panic!("{last:?}") };
    assert_eq!(disconnect.reason, ReasonCode::NotAuthorized);
    assert!(!session.is_connected());
    assert_eq!(session.connected_user(), None, "a closed connection has no user any more");
    // Anonymous connections have no user to revoke.
    assert_eq!(connected(t0, V311).connected_user(), None);
}

#[test]
fn a_client_that_leaves_past_its_limits_keeps_them_counted_as_queue_full() {
    let t0 = Instant::now();
    let mut session = connected(t0, V311);
    fill_past_limits(&mut session, t0, QoS::ExactlyOnce, 2);
    session.handle_connection_lost(t0);
    assert_eq!(session.counters.dropped_queue_full, [0, 0, 2]);
    assert_eq!(session.counters.dropped_slow_consumer, 0);
    assert_eq!(session.queued_len(), 10);
    // What stays is the oldest: resumed, the client gets t/4 .. t/13 after
    // its four in flight.
    session.handle_connect(t0, &connect_packet(V311, 0, false), true);
    let mut topics = Vec::new();
    loop {
        let packets = drain(&mut session, t0);
        let publishes: Vec<_> =
            packets.iter().filter(|&p| matches!(p, Packet::Publish(_))).map(as_publish).collect();
        if publishes.is_empty() {
            break;
        }
        for publish in publishes {
            topics.push(publish.topic.to_string());
            let id = publish.packet_id.unwrap().get();
            session.handle_packet(t0, Packet::PubAck(ack(id))).unwrap();
        }
    }
    let expected: Vec<String> = (0..14).map(|i| format!("t/{i}")).collect();
    assert_eq!(topics, expected);
}

// ---- Offline sessions and resumption ------------------------------------------

#[test]
fn offline_session_queues_qos1_and_qos2_but_not_qos0() {
    let t0 = Instant::now();
    let mut session = Counted::new(ByteString::from_static("c1"), limits());
    assert_eq!(
        deliver(&mut session, t0, "t", QoS::AtMostOnce),
        DeliveryOutcome::Dropped(DropReason::Offline)
    );
    assert_eq!(deliver(&mut session, t0, "t", QoS::AtLeastOnce), DeliveryOutcome::Queued);
    assert_eq!(deliver(&mut session, t0, "t", QoS::ExactlyOnce), DeliveryOutcome::Queued);
    assert_eq!(session.counters.dropped_offline_qos0, 1);
    assert!(session.poll_packet(t0).is_none(), "nothing is sent without a connection");
    session.handle_connect(t0, &connect_packet(V311, 0, false), true);
    assert_eq!(
        summary(&drain(&mut session, t0)),
        vec![
            (PacketType::ConnAck, None, false),
            (PacketType::Publish, Some(1), false),
            (PacketType::Publish, Some(2), false),
        ]
    );
}

#[test]
fn queued_qos0_is_dropped_when_the_connection_is_lost() {
    let t0 = Instant::now();
    let mut session = connected(t0, V311);
    deliver(&mut session, t0, "t", QoS::AtMostOnce);
    deliver(&mut session, t0, "t", QoS::AtLeastOnce);
    session.handle_connection_lost(t0);
    assert_eq!(session.queued_len(), 1);
    assert_eq!(session.queued_bytes(), 2);
    assert_eq!(session.counters.dropped_offline_qos0, 1);
}

#[test]
fn resume_resends_publishes_with_dup_and_pubrels_in_order_mqtt_4_4_0_1() {
    // [MQTT-4.4.0-1] re-send unacknowledged PUBLISH (QoS > 0) and PUBREL
    // packets with their original Packet Identifiers; [MQTT-3.3.1-1] DUP=1;
    // [MQTT-4.6.0-1] PUBLISHes in the order first sent; [MQTT-4.6.0-4]
    // PUBRELs in the order the PUBRECs arrived.
    let t0 = Instant::now();
    let mut session = connected(t0, V311);
    for qos in [QoS::ExactlyOnce, QoS::AtLeastOnce, QoS::ExactlyOnce, QoS::ExactlyOnce] {
        deliver(&mut session, t0, "t", qos);
    }
    deliver(&mut session, t0, "t", QoS::AtLeastOnce); // waits: window of 4
    assert_eq!(drain(&mut session, t0).len(), 4);
    session.handle_packet(t0, Packet::PubRec(ack(4))).unwrap();
    session.handle_packet(t0, Packet::PubRec(ack(1))).unwrap();
    assert_eq!(drain(&mut session, t0), vec![Packet::PubRel(ack(4)), Packet::PubRel(ack(1))]);
    session.handle_connection_lost(t0);
    assert!(!session.is_connected());
    deliver(&mut session, t0, "t", QoS::AtLeastOnce); // queued while offline

    session.handle_connect(t0, &connect_packet(V311, 0, false), true);
    assert_eq!(
        summary(&drain(&mut session, t0)),
        vec![
            (PacketType::ConnAck, None, false),
            (PacketType::Publish, Some(2), true),
            (PacketType::Publish, Some(3), true),
            (PacketType::PubRel, Some(4), false),
            (PacketType::PubRel, Some(1), false),
        ]
    );
    assert_eq!(session.counters.publishes_resent, 2);
    // The queued messages follow as the window frees up.
    session.handle_packet(t0, Packet::PubAck(ack(2))).unwrap();
    session.handle_packet(t0, Packet::PubComp(ack(4))).unwrap();
    assert_eq!(
        summary(&drain(&mut session, t0)),
        vec![(PacketType::Publish, Some(5), false), (PacketType::Publish, Some(6), false)]
    );
}

#[test]
fn resent_publish_keeps_the_message_and_switches_version() {
    // A session resumed by a v5 connection re-sends in v5 (properties
    // included), from the same shared message.
    let t0 = Instant::now();
    let mut session = connected(t0, V311);
    let mut m = Message::clone(&message("t", QoS::AtLeastOnce, b"body"));
    m.properties.make_mut().content_type = Some(ByteString::from_static("x/y"));
    session.handle_delivery(t0, delivery(Arc::new(m), QoS::AtLeastOnce));
    let first = drain(&mut session, t0);
    assert_eq!(as_publish(&first[0]).properties, BoxedPublishProperties::none(), "3.1.1: none");
    session.handle_connection_lost(t0);
    session.handle_connect(t0, &connect_packet(V5, 0, false), true);
    let packets = drain(&mut session, t0);
    let resent = as_publish(&packets[1]);
    assert!(resent.dup);
    assert_eq!(&resent.payload[..], b"body");
    assert_eq!(resent.properties.content_type.as_deref(), Some("x/y"));
}

// ---- Keep alive ------------------------------------------------------------------

#[test]
fn no_keep_alive_when_zero() {
    let t0 = Instant::now();
    let mut session = connected(t0, V311);
    assert_eq!(session.poll_timeout(), None);
    session.handle_timeout(t0 + Duration::from_secs(1_000_000));
    assert!(session.is_connected());
}

#[test]
fn keep_alive_closes_after_one_and_a_half_times_mqtt_3_1_2_24() {
    // [MQTT-3.1.2-24] "If the Keep Alive value is non-zero and the Server does
    // not receive a Control Packet from the Client within one and a half times
    // the Keep Alive time period, it MUST disconnect the Network Connection to
    // the Client as if the network had failed."
    let t0 = Instant::now();
    let mut connect = connect_packet(V311, 10, false);
    connect.will = Some(will());
    let mut session = connected_with(t0, &connect, limits());
    assert_eq!(session.poll_timeout(), Some(t0 + Duration::from_secs(15)));

    // Any packet resets the timer.
    let t1 = t0 + Duration::from_secs(14);
    session.handle_timeout(t1);
    assert!(session.is_connected());
    session.handle_packet(t1, Packet::PubAck(ack(1))).unwrap();
    assert_eq!(session.poll_timeout(), Some(t1 + Duration::from_secs(15)));
    session.handle_timeout(t0 + Duration::from_secs(15));
    assert!(session.is_connected());

    session.handle_timeout(t1 + Duration::from_secs(15));
    assert!(!session.is_connected());
    assert_eq!(session.poll_timeout(), None);
    let events = events(&mut session);
    assert!(will_event(&events).is_some(), "as if the network had failed: the will is published");
    assert_eq!(closed_reason(&events), Some(&CloseReason::KeepAliveTimeout));
}

#[test]
fn v5_server_keep_alive_caps_the_keep_alive() {
    // 5.0 §3.2.2.3.14: the client must use the Server Keep Alive; 3.1.1 has
    // no way to say it, so the requested value is kept.
    let t0 = Instant::now();
    for (version, requested, expected, property) in [
        (V5, 500, 100, Some(100)),
        (V5, 0, 100, Some(100)),
        (V5, 60, 60, None),
        (V311, 500, 500, None),
    ] {
        let mut session = Counted::new(ByteString::from_static("c1"), limits());
        let connack = session.handle_connect(t0, &connect_packet(version, requested, false), false);
        assert_eq!(connack.properties.server_keep_alive, property);
        assert_eq!(session.poll_timeout(), Some(t0 + Duration::from_millis(expected * 1500)));
    }
}

#[test]
fn pingreq_gets_pingresp_mqtt_3_12_4_1() {
    // [MQTT-3.12.4-1] "The Server MUST send a PINGRESP Packet in response to a
    // PINGREQ Packet."
    let t0 = Instant::now();
    let mut session = connected(t0, V311);
    session.handle_packet(t0, Packet::PingReq).unwrap();
    assert_eq!(drain(&mut session, t0), vec![Packet::PingResp]);
}

// ---- Will and DISCONNECT -----------------------------------------------------------

#[test]
fn will_is_published_when_the_connection_is_lost_mqtt_3_1_2_8() {
    // [MQTT-3.1.2-8] the Will Message MUST be published when the Network
    // Connection is closed without DISCONNECT; [MQTT-3.1.2-16/17] with the
    // Will QoS and Will Retain of CONNECT.
    let t0 = Instant::now();
    let mut connect = connect_packet(V311, 0, false);
    connect.will = Some(will());
    let mut session = connected_with(t0, &connect, limits());
    session.handle_connection_lost(t0);
    let events = events(&mut session);
    let [SessionEvent::Will(message), SessionEvent::Closed(CloseReason::ConnectionLost)] =
        &events[..]
    else {
        panic!("{events:?}")
    };
    assert_eq!(message.topic.as_str(), "clients/c1/status");
    assert_eq!(&message.payload[..], b"gone");
    assert_eq!(message.qos, QoS::AtLeastOnce);
    assert!(message.retain);
    assert_eq!(message.publisher.as_deref(), Some("c1"));
    // [MQTT-3.1.2-10] published once: a second loss publishes nothing.
    session.handle_connection_lost(t0);
    assert!(session.poll_event().is_none());
}

#[test]
fn disconnect_discards_the_will_mqtt_3_14_4_3() {
    // [MQTT-3.14.4-3] "On receipt of DISCONNECT the Server MUST discard any
    // Will Message associated with the current connection without publishing
    // it."
    let t0 = Instant::now();
    let mut connect = connect_packet(V311, 0, false);
    connect.will = Some(will());
    let mut session = connected_with(t0, &connect, limits());
    session.handle_packet(t0, Packet::Disconnect(Disconnect::default())).unwrap();
    assert!(!session.is_connected());
    session.handle_connection_lost(t0);
    assert_eq!(
        events(&mut session),
        vec![SessionEvent::Closed(CloseReason::ClientDisconnect(ReasonCode::Success))]
    );
    assert!(drain(&mut session, t0).is_empty());
    assert_eq!(session.handle_packet(t0, Packet::PingReq), Err(SessionError::NotConnected));
}

#[test]
fn v5_disconnect_with_will_message_publishes_it() {
    let t0 = Instant::now();
    let mut connect = connect_packet(V5, 0, false);
    connect.will = Some(will());
    let mut session = connected_with(t0, &connect, limits());
    let disconnect =
        Disconnect { reason: ReasonCode::DisconnectWithWillMessage, ..Disconnect::default() };
    session.handle_packet(t0, Packet::Disconnect(disconnect)).unwrap();
    assert!(will_event(&events(&mut session)).is_some());
    assert!(drain(&mut session, t0).is_empty(), "the client closed: no DISCONNECT back");
}

#[test]
fn packets_only_a_server_sends_are_protocol_errors_mqtt_4_8_0_1() {
    // [MQTT-4.8.0-1] a protocol violation closes the connection; a v5 client
    // is told why with DISCONNECT (5.0 §4.13).
    let t0 = Instant::now();
    let mut session = connected(t0, V5);
    assert_eq!(
        session.handle_packet(t0, Packet::PingResp),
        Err(SessionError::UnexpectedPacket(PacketType::PingResp))
    );
    assert_eq!(stripped(drain(&mut session, t0)), vec![disconnect(ReasonCode::ProtocolError)]);
}

#[test]
fn takeover_closes_the_old_connection_mqtt_3_1_4_2() {
    // [MQTT-3.1.4-2] "If the ClientId represents a Client already connected to
    // the Server then the Server MUST disconnect the existing Client"; 5.0
    // [MQTT-3.1.4-3] with DISCONNECT 0x8E.
    let t0 = Instant::now();
    let mut connect = connect_packet(V5, 0, false);
    connect.will = Some(will());
    let mut session = connected_with(t0, &connect, limits());
    session.handle_takeover(t0);
    assert_eq!(stripped(drain(&mut session, t0)), vec![disconnect(ReasonCode::SessionTakenOver)]);
    let first = events(&mut session);
    assert!(will_event(&first).is_some());
    assert_eq!(closed_reason(&first), Some(&CloseReason::TakenOver));

    // The new connection attaches and works.
    session.handle_connect(t0, &connect_packet(V311, 0, false), true);
    assert!(session.is_connected());
    assert!(matches!(drain(&mut session, t0)[..], [Packet::ConnAck(_)]));

    // handle_connect over a still-open connection takes it over itself.
    session.handle_connect(t0, &connect_packet(V311, 0, false), true);
    assert_eq!(closed_reason(&events(&mut session)), Some(&CloseReason::TakenOver));
    assert!(session.is_connected());
}

// ---- SUBSCRIBE and UNSUBSCRIBE -----------------------------------------------------

#[test]
fn subscribe_answers_suback_in_order_mqtt_3_8_4_1() {
    // [MQTT-3.8.4-1] SUBACK; [MQTT-3.8.4-2] same Packet Identifier;
    // [MQTT-3.8.4-5] a code per filter, [MQTT-3.9.3-1] in order; the
    // requested QoS is granted.
    let t0 = Instant::now();
    let mut session = connected(t0, V311);
    session
        .handle_packet(
            t0,
            subscribe(
                12,
                &[("a/#", QoS::ExactlyOnce), ("b", QoS::AtMostOnce), ("c/+", QoS::AtLeastOnce)],
            ),
        )
        .unwrap();
    let events = indexed(&mut session);
    let packets = drain(&mut session, t0);
    let [Packet::SubAck(suback)] = &packets[..] else { panic!("{packets:?}") };
    assert_eq!(suback.packet_id, pid(12));
    assert_eq!(
        suback.reasons[..],
        [ReasonCode::GrantedQoS2, ReasonCode::GRANTED_QOS_0, ReasonCode::GrantedQoS1]
    );
    let [SessionEvent::Subscribe { grants, .. }] = &events[..] else { panic!("{events:?}") };
    let filters: Vec<&str> = grants.iter().map(|g| g.filter.as_str()).collect();
    assert_eq!(filters, ["a/#", "b", "c/+"]);
    assert!(grants.iter().all(|g| g.is_new));
    assert_eq!(grants[0].subscribed.options.qos, QoS::ExactlyOnce);
    assert_eq!(session.subscriptions().len(), 3);
}

#[test]
fn subscribe_to_an_existing_filter_replaces_it_mqtt_3_8_4_3() {
    // [MQTT-3.8.4-3] "it MUST completely replace that existing Subscription
    // with a new Subscription" (the shard re-sends retained messages).
    let t0 = Instant::now();
    let mut session = connected(t0, V311);
    session.handle_packet(t0, subscribe(1, &[("a", QoS::AtMostOnce)])).unwrap();
    session.handle_packet(t0, subscribe(2, &[("a", QoS::ExactlyOnce)])).unwrap();
    let events = events(&mut session);
    let SessionEvent::Subscribe { grants, .. } = &events[1] else { panic!("{events:?}") };
    assert!(!grants[0].is_new);
    let subscriptions: Vec<_> = session.subscriptions().collect();
    assert_eq!(subscriptions.len(), 1);
    assert_eq!(subscriptions[0].1.options.qos, QoS::ExactlyOnce);
}

#[test]
fn v5_subscription_identifier_is_kept_and_sent_back_mqtt_3_3_4_3() {
    let t0 = Instant::now();
    let mut session = connected(t0, V5);
    let Packet::Subscribe(mut sub) = subscribe(1, &[("a", QoS::AtLeastOnce)]) else {
        unreachable!()
    };
    sub.properties.subscription_identifier = NonZeroU32::new(77);
    session.handle_packet(t0, Packet::Subscribe(sub)).unwrap();
    assert_eq!(session.subscriptions().next().unwrap().1.identifier, NonZeroU32::new(77));
    drain(&mut session, t0);
    let mut d = delivery(message("a", QoS::AtLeastOnce, b"x"), QoS::AtLeastOnce);
    d.subscription_ids.push(NonZeroU32::new(77).unwrap());
    session.handle_delivery(t0, d);
    let packets = drain(&mut session, t0);
    assert_eq!(
        as_publish(&packets[0]).properties.subscription_identifiers[..],
        [NonZeroU32::new(77).unwrap()]
    );
}

#[test]
fn unsubscribe_always_answers_unsuback_mqtt_3_10_4_5() {
    // [MQTT-3.10.4-4] UNSUBACK with the same Packet Identifier;
    // [MQTT-3.10.4-5] "Even where no Topic Subscriptions are deleted, the
    // Server MUST respond with an UNSUBACK."
    let t0 = Instant::now();
    let mut session = connected(t0, V311);
    session
        .handle_packet(t0, subscribe(1, &[("a", QoS::AtMostOnce), ("b", QoS::AtMostOnce)]))
        .unwrap();
    indexed(&mut session);
    drain(&mut session, t0);
    session.handle_packet(t0, unsubscribe(2, &["a", "zzz"])).unwrap();
    let events = indexed(&mut session);
    let packets = drain(&mut session, t0);
    let [Packet::UnsubAck(unsuback)] = &packets[..] else { panic!("{packets:?}") };
    assert_eq!(unsuback.packet_id, pid(2));
    assert!(unsuback.reasons.is_empty(), "3.1.1 UNSUBACK has no payload");
    let [SessionEvent::Unsubscribe { filters: removed, .. }] = &events[..] else {
        panic!("{events:?}")
    };
    assert_eq!(removed[..], [TopicFilter::new("a").unwrap()]);
    assert_eq!(session.subscriptions().len(), 1);

    session.handle_packet(t0, unsubscribe(3, &["nothing"])).unwrap();
    assert_eq!(summary(&drain(&mut session, t0)), vec![(PacketType::UnsubAck, Some(3), false)]);
    assert!(session.poll_event().is_none(), "nothing removed, nothing for the shard");
}

#[test]
fn v5_unsuback_says_which_subscriptions_existed() {
    let t0 = Instant::now();
    let mut session = connected(t0, V5);
    session.handle_packet(t0, subscribe(1, &[("a", QoS::AtMostOnce)])).unwrap();
    indexed(&mut session);
    drain(&mut session, t0);
    session.handle_packet(t0, unsubscribe(2, &["a", "b"])).unwrap();
    indexed(&mut session);
    let packets = drain(&mut session, t0);
    let [Packet::UnsubAck(unsuback)] = &packets[..] else { panic!("{packets:?}") };
    assert_eq!(unsuback.reasons[..], [ReasonCode::Success, ReasonCode::NoSubscriptionExisted]);
}

// ---- v5 publish rules ------------------------------------------------------------

#[test]
fn v5_topic_aliases_resolve_mqtt_3_3_2_12() {
    // [MQTT-3.3.2-12] aliases 1..=Topic Alias Maximum are accepted; an empty
    // topic uses the mapping; the Message never carries the alias.
    let t0 = Instant::now();
    let mut session = connected(t0, V5);
    let mut first = publish_in(QoS::AtMostOnce, 0, "long/topic/name");
    first.properties.make_mut().topic_alias = NonZeroU16::new(2);
    session.handle_packet(t0, Packet::Publish(first)).unwrap();
    let mut second = publish_in(QoS::AtMostOnce, 0, "x");
    second.topic = TopicName::new_aliased(ByteString::new()).unwrap();
    second.properties.make_mut().topic_alias = NonZeroU16::new(2);
    session.handle_packet(t0, Packet::Publish(second)).unwrap();
    for event in events(&mut session) {
        let SessionEvent::Publish(message) = event else { panic!("{event:?}") };
        assert_eq!(message.topic.as_str(), "long/topic/name");
        assert_eq!(message.properties.topic_alias, None);
    }
}

#[test]
fn v5_topic_alias_above_the_maximum_is_invalid_mqtt_3_3_2_9() {
    // [MQTT-3.3.2-9] "A Client MUST NOT send a PUBLISH packet with a Topic
    // Alias greater than the Topic Alias Maximum value returned by the Server
    // in the CONNACK packet."
    let t0 = Instant::now();
    let mut session = connected(t0, V5);
    let mut publish = publish_in(QoS::AtMostOnce, 0, "t");
    publish.properties.make_mut().topic_alias = NonZeroU16::new(3);
    let error = session.handle_packet(t0, Packet::Publish(publish)).unwrap_err();
    assert_eq!(error, SessionError::TopicAliasInvalid(3));
    assert_eq!(error.reason_code(), ReasonCode::TopicAliasInvalid);
    assert!(!session.is_connected());

    let mut session = connected(t0, V5);
    let mut unknown = publish_in(QoS::AtMostOnce, 0, "t");
    unknown.topic = TopicName::new_aliased(ByteString::new()).unwrap();
    unknown.properties.make_mut().topic_alias = NonZeroU16::new(1);
    let error = session.handle_packet(t0, Packet::Publish(unknown)).unwrap_err();
    assert_eq!(error.reason_code(), ReasonCode::ProtocolError);
}

#[test]
fn v5_subscription_identifier_from_client_is_a_protocol_error_mqtt_3_3_4_6() {
    // [MQTT-3.3.4-6] "A PUBLISH packet sent from a Client to a Server MUST NOT
    // contain a Subscription Identifier."
    let t0 = Instant::now();
    let mut session = connected(t0, V5);
    let mut publish = publish_in(QoS::AtMostOnce, 0, "t");
    publish.properties.make_mut().subscription_identifiers.push(NonZeroU32::new(1).unwrap());
    assert_eq!(
        session.handle_packet(t0, Packet::Publish(publish)),
        Err(SessionError::SubscriptionIdentifierFromClient)
    );
    let events = events(&mut session);
    assert!(!events.iter().any(|e| matches!(e, SessionEvent::Publish(_))));
}

#[test]
fn v5_receive_maximum_exceeded_closes_mqtt_3_3_4_7() {
    // [MQTT-3.3.4-7] the client keeps at most Receive Maximum (2 here) QoS 1/2
    // publishes unacknowledged; the server closes with 0x93.
    let t0 = Instant::now();
    let mut session = connected(t0, V5);
    session.handle_packet(t0, Packet::Publish(publish_in(QoS::ExactlyOnce, 1, "t"))).unwrap();
    session.handle_packet(t0, Packet::Publish(publish_in(QoS::AtLeastOnce, 2, "t"))).unwrap();
    drain(&mut session, t0); // the PUBACK for 2 is sent: one left unacknowledged
    session.handle_packet(t0, Packet::Publish(publish_in(QoS::AtLeastOnce, 3, "t"))).unwrap();
    let error = session.handle_packet(t0, Packet::Publish(publish_in(QoS::AtLeastOnce, 4, "t")));
    assert_eq!(error, Err(SessionError::ReceiveMaximumExceeded));
    assert_eq!(
        stripped(drain(&mut session, t0)).last(),
        Some(&disconnect(ReasonCode::ReceiveMaximumExceeded))
    );
}

#[test]
fn v5_receive_maximum_frees_on_pubcomp_and_starts_full_on_each_connection() {
    // 5.0 §4.9: the client's send quota grows with each PUBACK or PUBCOMP and
    // starts at Receive Maximum on every connection, so a QoS 2 flow left
    // from an earlier connection does not count [MQTT-3.3.4-7].
    let t0 = Instant::now();
    let mut session = connected(t0, V5);
    session.handle_packet(t0, Packet::Publish(publish_in(QoS::ExactlyOnce, 1, "t"))).unwrap();
    session.handle_packet(t0, Packet::Publish(publish_in(QoS::ExactlyOnce, 2, "t"))).unwrap();
    session.handle_packet(t0, Packet::PubRel(ack(2))).unwrap();
    drain(&mut session, t0); // PUBREC 1, PUBREC 2, PUBCOMP 2
    session.handle_packet(t0, Packet::Publish(publish_in(QoS::AtLeastOnce, 3, "t"))).unwrap();

    session.handle_connection_lost(t0);
    session.handle_connect(t0, &connect_packet(V5, 0, false), true);
    drain(&mut session, t0);
    // QoS 2 id 1 still awaits its PUBREL, yet two new publishes fit.
    session.handle_packet(t0, Packet::Publish(publish_in(QoS::AtLeastOnce, 4, "t"))).unwrap();
    session.handle_packet(t0, Packet::Publish(publish_in(QoS::ExactlyOnce, 5, "t"))).unwrap();
    session.handle_packet(t0, Packet::PubRel(ack(1))).unwrap();
    assert!(session.is_connected());
    assert_eq!(
        summary(&drain(&mut session, t0)),
        vec![
            (PacketType::PubAck, Some(4), false),
            (PacketType::PubRec, Some(5), false),
            (PacketType::PubComp, Some(1), false),
        ]
    );
}

#[test]
fn no_local_is_not_sent_back_to_the_publisher_mqtt_3_8_3_3() {
    // 5.0 [MQTT-3.8.3-3] "Application Messages MUST NOT be forwarded to a
    // connection with a ClientID equal to the ClientID of the publishing
    // connection" when No Local is set.
    let t0 = Instant::now();
    let mut session = connected(t0, V5);
    let mut own = Message::clone(&message("t", QoS::AtMostOnce, b"x"));
    own.publisher = Some(ByteString::from_static("c1"));
    let own = Arc::new(own);
    let mut d = delivery(own.clone(), QoS::AtMostOnce);
    d.options.no_local = true;
    assert_eq!(session.handle_delivery(t0, d), DeliveryOutcome::Dropped(DropReason::NoLocal));
    assert_eq!(
        session.handle_delivery(t0, delivery(own, QoS::AtMostOnce)),
        DeliveryOutcome::Queued
    );
}

#[test]
fn expired_messages_are_not_sent_mqtt_3_3_2_5() {
    // 5.0 [MQTT-3.3.2-5] an expired message not yet sent is deleted;
    // [MQTT-3.3.2-6] the interval sent is what is left of it.
    let t0 = Instant::now();
    let mut session = Counted::new(ByteString::from_static("c1"), limits());
    let expiring = |secs| {
        let mut m = Message::clone(&message("t", QoS::AtLeastOnce, b"x"));
        m.properties.make_mut().message_expiry_interval = Some(secs);
        m.expires_at = Some(t0 + Duration::from_secs(u64::from(secs)));
        delivery(Arc::new(m), QoS::AtLeastOnce)
    };
    assert_eq!(session.handle_delivery(t0, expiring(5)), DeliveryOutcome::Queued);
    assert_eq!(session.handle_delivery(t0, expiring(60)), DeliveryOutcome::Queued);
    assert_eq!(
        session.handle_delivery(t0 + Duration::from_secs(61), expiring(60)),
        DeliveryOutcome::Dropped(DropReason::Expired)
    );
    let t1 = t0 + Duration::from_millis(10_500);
    session.handle_connect(t1, &connect_packet(V5, 0, false), true);
    let packets = drain(&mut session, t1);
    assert_eq!(packets.len(), 2, "CONNACK and the unexpired message");
    assert_eq!(as_publish(&packets[1]).properties.message_expiry_interval, Some(50));
    assert_eq!(session.counters.dropped_expired, 2);
}

#[test]
fn nothing_is_sent_and_nothing_panics_without_a_connection() {
    let t0 = Instant::now();
    let mut session = Counted::new(ByteString::from_static("c1"), limits());
    assert_eq!(session.handle_packet(t0, Packet::PingReq), Err(SessionError::NotConnected));
    session.handle_timeout(t0);
    session.handle_connection_lost(t0);
    session.handle_takeover(t0);
    assert_eq!(session.poll_timeout(), None);
    assert!(session.poll_event().is_none());
    let mut out = BytesMut::new();
    assert_eq!(session.poll_transmit(t0, &mut out), 0);
    assert!(out.is_empty());
}

// ---- Transmission ------------------------------------------------------------------

#[test]
fn poll_transmit_appends_every_ready_packet_in_order() {
    let t0 = Instant::now();
    let mut session = Counted::new(ByteString::from_static("c1"), limits());
    deliver(&mut session, t0, "t", QoS::AtLeastOnce);
    session.handle_connect(t0, &connect_packet(V311, 0, false), true);
    let mut out = BytesMut::from(&b"already here"[..]);
    assert_eq!(session.poll_transmit(t0, &mut out), 2);
    assert_eq!(&out[..12], b"already here");
    let mut rest = out.split_off(12);
    let mut decoder = Decoder::new(V311, u32::MAX);
    assert!(matches!(decoder.decode(&mut rest), Ok(Some(Packet::ConnAck(_)))));
    let Ok(Some(Packet::Publish(publish))) = decoder.decode(&mut rest) else { panic!() };
    assert_eq!(
        (publish.qos, publish.packet_id, publish.dup),
        (QoS::AtLeastOnce, Some(pid(1)), false)
    );
    assert!(rest.is_empty());
    assert_eq!(session.poll_transmit(t0, &mut out), 0, "nothing more to send");
}

#[test]
fn packets_above_the_client_maximum_are_dropped_as_delivered_mqtt_3_1_2_25() {
    // 5.0 [MQTT-3.1.2-25] "Where a Packet is too large to send, the Server
    // MUST discard it without sending it and then behave as if it had
    // completed sending that Application Message."
    let t0 = Instant::now();
    let mut connect = connect_packet(V5, 0, false);
    connect.properties.maximum_packet_size = NonZeroU32::new(40);
    let mut session = connected_with(t0, &connect, limits());
    session.handle_delivery(
        t0,
        delivery(message("t", QoS::AtLeastOnce, &[b'x'; 64]), QoS::AtLeastOnce),
    );
    session
        .handle_delivery(t0, delivery(message("t", QoS::AtLeastOnce, b"small"), QoS::AtLeastOnce));
    let packets = drain(&mut session, t0);
    assert_eq!(packets.len(), 1);
    assert_eq!(&as_publish(&packets[0]).payload[..], b"small");
    assert_eq!(session.counters.dropped_too_large, 1);
    assert_eq!(session.inflight_len(), 1, "the dropped message holds no window slot");
}

#[test]
fn poll_packet_yields_what_poll_transmit_would_encode() {
    let t0 = Instant::now();
    let mut session = Counted::new(ByteString::from_static("c1"), limits());
    session.handle_connect(t0, &connect_packet(V311, 0, false), false);
    session.handle_packet(t0, Packet::PingReq).unwrap();
    deliver(&mut session, t0, "t", QoS::AtMostOnce);
    let packets: Vec<Packet> = std::iter::from_fn(|| session.poll_packet(t0)).collect();
    assert_eq!(
        summary(&packets),
        vec![
            (PacketType::ConnAck, None, false),
            (PacketType::PingResp, None, false),
            (PacketType::Publish, None, false),
        ]
    );
}

/// A delivery from the retained store for a new subscription.
fn retained_delivery(topic: &str, qos: QoS, payload: &'static [u8]) -> Delivery {
    let mut from_store = delivery(message(topic, qos, payload), qos);
    from_store.from_retained = true;
    from_store
}

#[test]
fn every_retained_message_of_a_new_subscription_is_sent_mqtt_3_3_1_6() {
    // [MQTT-3.3.1-6] "When a new subscription is established, the last
    // retained message, if any, on each matching topic name MUST be sent to
    // the subscriber." They pass the queue's message and byte limits (10
    // and 1000 here), paced by the in-flight window (4) instead.
    let t0 = Instant::now();
    let mut session = connected(t0, V311);
    for i in 0..20 {
        let outcome = session
            .handle_delivery(t0, retained_delivery(&format!("r/{i}"), QoS::AtLeastOnce, b"x"));
        assert_eq!(outcome, DeliveryOutcome::Queued, "retained message {i}");
    }
    // Live messages still have their own limits beside them.
    for i in 0..10 {
        assert_eq!(
            deliver(&mut session, t0, &format!("live/{i}"), QoS::AtLeastOnce),
            DeliveryOutcome::Queued
        );
    }
    assert_eq!(
        deliver(&mut session, t0, "live/10", QoS::AtMostOnce),
        DeliveryOutcome::Dropped(DropReason::QueueFull)
    );
    let mut topics = Vec::new();
    loop {
        let packets = drain(&mut session, t0);
        if packets.is_empty() {
            break;
        }
        assert!(packets.len() <= 4, "at most the window in flight");
        for packet in &packets {
            let publish = as_publish(packet);
            topics.push(publish.topic.to_string());
            session
                .handle_packet(t0, Packet::PubAck(ack(publish.packet_id.unwrap().get())))
                .unwrap();
        }
    }
    let expected: Vec<String> =
        (0..20).map(|i| format!("r/{i}")).chain((0..10).map(|i| format!("live/{i}"))).collect();
    assert_eq!(topics, expected);
}

#[test]
fn retained_messages_past_max_queued_retained_are_dropped_and_counted() {
    let t0 = Instant::now();
    let mut session = connected(t0, V311);
    for i in 0..20 {
        session.handle_delivery(t0, retained_delivery(&format!("r/{i}"), QoS::AtLeastOnce, b"x"));
    }
    assert_eq!(
        session.handle_delivery(t0, retained_delivery("r/20", QoS::AtLeastOnce, b"x")),
        DeliveryOutcome::Dropped(DropReason::RetainedLimit)
    );
    assert_eq!(session.counters.dropped_retained_limit, 1);
    assert_eq!(session.counters.dropped_queue_full, [0, 0, 0]);
}

#[test]
fn queued_messages_leave_in_batches_acknowledgements_always() {
    // A long queue of QoS 0 messages is written TRANSMIT_BATCH bytes at a
    // time (the caller asks again once a batch is written); an
    // acknowledgement owed to the client is written even past the batch.
    let t0 = Instant::now();
    let limits = SessionLimits { max_queued_retained: 10_000, ..limits() };
    let mut session = connected_with(t0, &connect_packet(V311, 0, false), limits);
    static PAYLOAD: [u8; 1000] = [7; 1000];
    for i in 0..500 {
        session
            .handle_delivery(t0, retained_delivery(&format!("r/{i}"), QoS::AtMostOnce, &PAYLOAD));
    }
    let mut out = BytesMut::new();
    let first = session.poll_transmit(t0, &mut out);
    assert!(out.len() >= TRANSMIT_BATCH && out.len() < TRANSMIT_BATCH + 1100, "{}", out.len());
    session.handle_packet(t0, Packet::Publish(publish_in(QoS::AtLeastOnce, 9, "in"))).unwrap();
    assert_eq!(session.poll_transmit(t0, &mut out), 1, "the PUBACK, past the batch");
    out.clear();
    let mut total = first;
    loop {
        let written = session.poll_transmit(t0, &mut out);
        if written == 0 {
            break;
        }
        total += written;
        out.clear();
    }
    assert_eq!(total, 500);
}

#[test]
fn a_barrier_holds_the_acknowledgements_after_it_not_the_messages() {
    // The SUBACK waits for its barrier (the shard indexes the filters
    // first), and so does every acknowledgement owed after it, in order
    // [MQTT-4.6.0-2]; messages to the client keep flowing: the server may
    // send PUBLISH packets matching the subscription before the SUBACK
    // (MQTT 3.1.1 section 3.8.4).
    let t0 = Instant::now();
    let mut session = connected(t0, V311);
    session.handle_packet(t0, subscribe(1, &[("a", QoS::AtMostOnce)])).unwrap();
    session.handle_packet(t0, Packet::Publish(publish_in(QoS::AtLeastOnce, 5, "x"))).unwrap();
    deliver(&mut session, t0, "a", QoS::AtMostOnce);
    let packets = drain(&mut session, t0);
    assert_eq!(summary(&packets), vec![(PacketType::Publish, None, false)]);
    let ack = events(&mut session)
        .into_iter()
        .find_map(|event| match event {
            SessionEvent::Subscribe { ack, .. } => Some(ack),
            _ => None,
        })
        .unwrap();
    session.release_acks(ack);
    assert_eq!(
        summary(&drain(&mut session, t0)),
        vec![(PacketType::SubAck, Some(1), false), (PacketType::PubAck, Some(5), false)]
    );
}

#[test]
fn a_barrier_before_the_connack_holds_everything_mqtt_3_2_0_1() {
    // An authenticator that answers later holds the CONNACK; nothing may be
    // written before it [MQTT-3.2.0-1], queued messages included.
    let t0 = Instant::now();
    let mut session = Counted::new(ByteString::from_static("c1"), limits());
    session.handle_connect(t0, &connect_packet(V311, 0, false), false);
    let ack = session.hold_acks().unwrap();
    deliver(&mut session, t0, "a", QoS::AtMostOnce);
    assert!(drain(&mut session, t0).is_empty());
    session.release_acks(ack);
    assert_eq!(
        summary(&drain(&mut session, t0)),
        vec![(PacketType::ConnAck, None, false), (PacketType::Publish, None, false)]
    );
}

#[test]
fn a_closing_connection_writes_what_it_owes_barriers_or_not() {
    // A v5 client that breaks the protocol gets its DISCONNECT even while
    // a SUBACK waits for its barrier.
    let t0 = Instant::now();
    let mut session = connected(t0, V5);
    session.handle_packet(t0, subscribe(1, &[("a", QoS::AtMostOnce)])).unwrap();
    assert!(session.handle_packet(t0, Packet::PingResp).is_err());
    let kinds: Vec<PacketType> =
        summary(&drain(&mut session, t0)).into_iter().map(|p| p.0).collect();
    assert_eq!(kinds, [PacketType::SubAck, PacketType::Disconnect]);
}

// ---- MQTT 5.0: session expiry, will delay, server DISCONNECT ---------------

fn connect_v5_expiry(expiry: Option<u32>) -> Connect {
    let mut connect = connect_packet(V5, 0, false);
    connect.properties.session_expiry_interval = expiry;
    connect
}

fn limits_with_expiry_cap(seconds: u64) -> SessionLimits {
    SessionLimits { max_session_expiry: Some(Duration::from_secs(seconds)), ..limits() }
}

#[test]
fn v5_connack_advertises_what_the_server_supports_mqtt_3_2_2_3() {
    let t0 = Instant::now();
    let limits = SessionLimits { max_packet_size: NonZeroU32::new(4096), ..limits() };
    let mut session = Counted::new(ByteString::from_static("c1"), limits);
    let properties = session.handle_connect(t0, &connect_v5_expiry(None), false).properties.clone();
    // Maximum QoS 2 is the default: absent [MQTT-3.2.2-9].
    assert_eq!(properties.maximum_qos, None);
    assert_eq!(properties.retain_available, Some(true));
    assert_eq!(properties.wildcard_subscription_available, Some(true));
    assert_eq!(properties.subscription_identifiers_available, Some(true));
    assert_eq!(properties.shared_subscription_available, Some(true));
    assert_eq!(properties.maximum_packet_size, NonZeroU32::new(4096));
    assert_eq!(properties.session_expiry_interval, None, "0 asked, 0 granted");
    // A 3.1.1 CONNACK has no properties at all.
    let mut session = Counted::new(ByteString::from_static("c1"), limits);
    let connack = session.handle_connect(t0, &connect_packet(V311, 0, false), false);
    assert_eq!(connack.properties, ConnAckProperties::default());
}

#[test]
fn v5_session_expiry_is_capped_and_the_cap_told_in_connack_mqtt_3_2_2_3_2() {
    // 5.0 §3.2.2.3.2: "If the Session Expiry Interval is absent the value in
    // the CONNECT Packet used. The server uses this property to inform the
    // Client that it is using a value other than that sent by the Client".
    let t0 = Instant::now();
    let cases = [
        (None, Some(0), None),
        (Some(30), Some(30), None),
        (Some(7200), Some(3600), Some(3600)),
        (Some(u32::MAX), Some(3600), Some(3600)),
    ];
    for (asked, granted, told) in cases {
        let mut session = Counted::new(ByteString::from_static("c1"), limits_with_expiry_cap(3600));
        let connack = session.handle_connect(t0, &connect_v5_expiry(asked), false).clone();
        assert_eq!(connack.properties.session_expiry_interval, told, "asked {asked:?}");
        assert_eq!(session.expiry(), granted.map(Duration::from_secs), "asked {asked:?}");
    }
    // Without a cap, 0xFFFFFFFF never expires (5.0 §3.1.2.11.2).
    let mut session = Counted::new(ByteString::from_static("c1"), limits());
    session.handle_connect(t0, &connect_v5_expiry(Some(u32::MAX)), false);
    assert_eq!(session.expiry(), None);
    // 3.1.1: Clean Session 1 ends with the connection, 0 is kept to the cap.
    let mut session = Counted::new(ByteString::from_static("c1"), limits_with_expiry_cap(60));
    session.handle_connect(t0, &connect_packet(V311, 0, true), false);
    assert_eq!(session.expiry(), Some(Duration::ZERO));
    session.handle_connect(t0, &connect_packet(V311, 0, false), false);
    assert_eq!(session.expiry(), Some(Duration::from_secs(60)));
}

#[test]
fn v5_disconnect_changes_the_session_expiry_mqtt_3_14_2_2() {
    let t0 = Instant::now();
    let mut session = connected_with(t0, &connect_v5_expiry(Some(10)), limits_with_expiry_cap(60));
    let mut disconnect = Disconnect::default();
    disconnect.properties.session_expiry_interval = Some(600);
    session.handle_packet(t0, Packet::Disconnect(disconnect)).unwrap();
    assert_eq!(session.expiry(), Some(Duration::from_secs(60)), "capped as at CONNECT");
}

#[test]
fn v5_disconnect_may_not_set_expiry_after_zero_mqtt_3_14_2_2() {
    // [MQTT-3.14.2-2] "If the Session Expiry Interval in the CONNECT packet
    // was zero, then it is a Protocol Error to set a non-zero Session Expiry
    // Interval in the DISCONNECT packet sent by the Client."
    let t0 = Instant::now();
    let mut session = connected_with(t0, &connect_v5_expiry(None), limits_with_expiry_cap(60));
    let mut packet = Disconnect::default();
    packet.properties.session_expiry_interval = Some(30);
    let result = session.handle_packet(t0, Packet::Disconnect(packet));
    assert_eq!(result, Err(SessionError::SessionExpiryFromZero));
    assert_eq!(session.expiry(), Some(Duration::ZERO));
    assert_eq!(stripped(drain(&mut session, t0)), vec![disconnect(ReasonCode::ProtocolError)]);
}

fn delayed_will(delay: u32) -> Will {
    let mut will = will();
    will.properties.will_delay_interval = Some(delay);
    will
}

#[test]
fn v5_will_waits_for_its_delay_mqtt_3_1_3_9() {
    // [MQTT-3.1.3-9] "If a new Network Connection to this Session is made
    // before the Will Delay Interval has passed, the Server MUST NOT send
    // the Will Message."
    let t0 = Instant::now();
    let mut connect = connect_v5_expiry(Some(600));
    connect.will = Some(delayed_will(10));
    let mut session = connected_with(t0, &connect, limits());
    session.handle_connection_lost(t0);
    assert!(will_event(&events(&mut session)).is_none(), "not before the delay");
    assert_eq!(session.poll_timeout(), Some(t0 + Duration::from_secs(10)));
    // Back after 5 s: the will is never sent.
    let t5 = t0 + Duration::from_secs(5);
    session.handle_connect(t5, &connect_v5_expiry(Some(600)), true);
    // Only the Server Keep Alive (100 s) is left to wait for.
    assert_eq!(session.poll_timeout(), Some(t5 + Duration::from_secs(150)));
    session.handle_timeout(t0 + Duration::from_secs(20));
    assert!(will_event(&events(&mut session)).is_none());
}

#[test]
fn v5_will_is_published_when_its_delay_runs_out_mqtt_3_1_3_9() {
    let t0 = Instant::now();
    let mut connect = connect_v5_expiry(Some(600));
    connect.will = Some(delayed_will(10));
    let mut session = connected_with(t0, &connect, limits());
    session.handle_connection_lost(t0);
    events(&mut session);
    session.handle_timeout(t0 + Duration::from_secs(9));
    assert!(will_event(&events(&mut session)).is_none());
    session.handle_timeout(t0 + Duration::from_secs(10));
    assert!(will_event(&events(&mut session)).is_some());
    assert_eq!(session.poll_timeout(), None, "published once");
}

#[test]
fn v5_will_is_published_when_the_session_ends_first_mqtt_3_1_3_9() {
    // 5.0 §3.1.3.2.2: "The Server delays publishing the Client's Will
    // Message until the Will Delay Interval has passed or the Session
    // ends, whichever happens first."
    let t0 = Instant::now();
    let mut connect = connect_v5_expiry(Some(5));
    connect.will = Some(delayed_will(3600));
    let mut session = connected_with(t0, &connect, limits());
    session.handle_connection_lost(t0);
    events(&mut session);
    session.handle_session_end(t0 + Duration::from_secs(5));
    assert!(will_event(&events(&mut session)).is_some());
}

#[test]
fn v5_server_disconnects_carry_their_reason_code_mqtt_4_13_1() {
    let t0 = Instant::now();
    // 0x8D keep alive timeout.
    let mut session = connected_with(t0, &connect_packet(V5, 10, false), limits());
    session.handle_timeout(t0 + Duration::from_secs(15));
    let output = drain(&mut session, t0);
    assert_eq!(stripped(output.clone()), vec![disconnect(ReasonCode::KeepAliveTimeout)]);
    let Packet::Disconnect(sent) = &output[0] else { unreachable!() };
    assert_eq!(sent.properties.reason_string.as_deref(), Some("keep alive timeout"));
    // 0x8B server shutting down.
    let mut session = connected(t0, V5);
    session.handle_shutdown(t0, &mut SessionCounters::default());
    assert_eq!(stripped(drain(&mut session, t0)), vec![disconnect(ReasonCode::ServerShuttingDown)]);
    // 0x95 packet too large, 0x81 malformed, from the decoder.
    for (error, code) in [
        (DecodeError::PacketTooLarge { size: 10, max: 5 }, ReasonCode::PacketTooLarge),
        (DecodeError::MalformedVarInt, ReasonCode::MalformedPacket),
    ] {
        let mut session = connected(t0, V5);
        session.handle_malformed(t0, error, &mut SessionCounters::default());
        assert_eq!(stripped(drain(&mut session, t0)), vec![disconnect(code)]);
    }
    // 3.1.1 has no DISCONNECT from the server.
    let mut session = connected(t0, V311);
    session.handle_shutdown(t0, &mut SessionCounters::default());
    assert!(drain(&mut session, t0).is_empty());
}

#[test]
fn no_reason_string_when_problem_information_is_off_mqtt_3_1_2_29() {
    // [MQTT-3.1.2-29] with Request Problem Information 0 the server "MUST
    // NOT send a Reason String or User Properties on any packet other than
    // PUBLISH, CONNACK, or DISCONNECT"; ringmq omits it there too.
    let t0 = Instant::now();
    let mut connect = connect_packet(V5, 0, false);
    connect.properties.request_problem_information = Some(false);
    let mut session = connected_with(t0, &connect, limits());
    session.handle_takeover(t0);
    let output = drain(&mut session, t0);
    let [Packet::Disconnect(sent)] = &output[..] else { panic!("{output:?}") };
    assert_eq!(sent.reason, ReasonCode::SessionTakenOver);
    assert_eq!(sent.properties.reason_string, None);
}

// ---- Payload Format Indicator ---------------------------------------------

/// A v5 PUBLISH whose Payload Format Indicator says UTF-8, with `payload`.
fn utf8_flagged(qos: QoS, id: u16, payload: &'static [u8]) -> Packet {
    let mut publish = publish_in(qos, id, "text");
    publish.properties.make_mut().payload_format_indicator = Some(true);
    publish.payload = Bytes::from_static(payload);
    Packet::Publish(publish)
}

#[test]
fn payload_not_utf8_is_refused_with_0x99_and_not_routed_mqtt_3_3_2_4() {
    // 5.0 §3.3.2.3.2 [MQTT-3.3.2-4]: "The receiver MAY validate that the
    // Payload is of the format indicated, and if it is not send a PUBACK,
    // PUBREC, or DISCONNECT with Reason Code of 0x99 (Payload format
    // invalid)".
    let t0 = Instant::now();
    let mut session = connected(t0, V5);
    session.handle_packet(t0, utf8_flagged(QoS::AtLeastOnce, 1, b"\xff\xfe")).unwrap();
    session.handle_packet(t0, utf8_flagged(QoS::ExactlyOnce, 2, b"\xc3")).unwrap();
    assert!(events(&mut session).is_empty(), "nothing is routed");
    let refused = |id| PubResponse { reason: ReasonCode::PayloadFormatInvalid, ..ack(id) };
    assert_eq!(
        drain(&mut session, t0),
        vec![Packet::PubAck(refused(1)), Packet::PubRec(refused(2))]
    );
    // The refused PUBREC ended the QoS 2 flow [MQTT-4.3.3-4]: the same id is
    // a new message, and the client's quota is whole again (receive
    // maximum 2 in `limits()`).
    for id in [2, 3] {
        session.handle_packet(t0, utf8_flagged(QoS::ExactlyOnce, id, "é".as_bytes())).unwrap();
    }
    assert_eq!(events(&mut session).len(), 2);
    assert_eq!(
        summary(&drain(&mut session, t0)),
        [(PacketType::PubRec, Some(2), false), (PacketType::PubRec, Some(3), false),]
    );
}

#[test]
fn qos0_payload_not_utf8_gets_disconnect_0x99_mqtt_3_3_2_4() {
    let t0 = Instant::now();
    let mut session = connected(t0, V5);
    let error = session.handle_packet(t0, utf8_flagged(QoS::AtMostOnce, 0, b"\x80")).unwrap_err();
    assert_eq!(error, SessionError::PayloadFormatInvalid);
    let events = events(&mut session);
    assert!(!events.iter().any(|event| matches!(event, SessionEvent::Publish(_))));
    assert_eq!(
        stripped(drain(&mut session, t0)),
        vec![disconnect(ReasonCode::PayloadFormatInvalid)]
    );
}

#[test]
fn valid_utf8_with_the_indicator_is_routed_unaltered_mqtt_3_3_2_4() {
    // [MQTT-3.3.2-4] "A Server MUST send the Payload Format Indicator
    // unaltered to all subscribers receiving the Application Message".
    let t0 = Instant::now();
    let mut session = connected(t0, V5);
    session.handle_packet(t0, utf8_flagged(QoS::AtMostOnce, 0, "naïve ✓".as_bytes())).unwrap();
    let events = events(&mut session);
    let [SessionEvent::Publish(message)] = &events[..] else { panic!("{events:?}") };
    assert_eq!(message.properties.payload_format_indicator, Some(true));
}

// ---- Maximum Packet Size: what may be left out ------------------------------

#[test]
fn reason_string_is_left_out_to_fit_the_maximum_packet_size_mqtt_3_1_2_24() {
    // 5.0 [MQTT-3.1.2-24] "The Server MUST NOT send packets exceeding
    // Maximum Packet Size to the Client"; [MQTT-3.14.2-3] "The sender MUST
    // NOT send this property [the Reason String] if it would increase the
    // size of the DISCONNECT packet beyond the Maximum Packet Size specified
    // by the receiver".
    let t0 = Instant::now();
    let mut connect = connect_packet(V5, 0, false);
    // Room for the CONNACK (22 bytes) and a bare DISCONNECT (4), not for
    // one with "server shutting down" (27).
    connect.properties.maximum_packet_size = NonZeroU32::new(24);
    let mut session = connected_with(t0, &connect, limits());
    session.session.handle_shutdown(t0, &mut session.counters);
    let packets = drain(&mut session, t0);
    assert_eq!(
        packets,
        vec![disconnect(ReasonCode::ServerShuttingDown)],
        "sent, without its Reason String"
    );
    assert_eq!(session.counters.dropped_too_large, 0);
}

#[test]
fn reason_string_is_kept_when_it_fits_mqtt_3_1_2_24() {
    let t0 = Instant::now();
    let mut connect = connect_packet(V5, 0, false);
    connect.properties.maximum_packet_size = NonZeroU32::new(64);
    let mut session = connected_with(t0, &connect, limits());
    session.session.handle_shutdown(t0, &mut session.counters);
    let packets = drain(&mut session, t0);
    let [Packet::Disconnect(disconnect)] = &packets[..] else { panic!("{packets:?}") };
    assert!(disconnect.properties.reason_string.is_some());
}

#[test]
fn a_publish_keeps_its_user_properties_and_is_dropped_if_too_large_mqtt_3_3_2_17() {
    // [MQTT-3.3.2-17] "The Server MUST send all User Properties unaltered in
    // a PUBLISH packet when forwarding the Application Message to a
    // Client": they are not trimmed to fit, the message is dropped
    // [MQTT-3.1.2-25].
    let t0 = Instant::now();
    let mut connect = connect_packet(V5, 0, false);
    connect.properties.maximum_packet_size = NonZeroU32::new(24);
    let mut session = connected_with(t0, &connect, limits());
    let mut message = (*message("t", QoS::AtMostOnce, b"m")).clone();
    message.properties.make_mut().user_properties =
        vec![(ByteString::from_static("origin"), ByteString::from_static("building-7"))];
    session.handle_delivery(t0, delivery(Arc::new(message), QoS::AtMostOnce));
    assert!(drain(&mut session, t0).is_empty());
    assert_eq!(session.counters.dropped_too_large, 1);
}

// ---- Server-to-client topic aliases -----------------------------------------

/// A v5 session whose client accepts `client_maximum` topic aliases.
fn aliasing(t0: Instant, client_maximum: u16, limits: SessionLimits) -> Counted {
    let mut connect = connect_packet(V5, 0, false);
    connect.properties.topic_alias_maximum = Some(client_maximum);
    connected_with(t0, &connect, limits)
}

/// (topic name, topic alias) of each PUBLISH in `packets`.
fn topics_and_aliases(packets: &[Packet]) -> Vec<(String, Option<u16>)> {
    packets
        .iter()
        .map(|packet| {
            let publish = as_publish(packet);
            (publish.topic.as_str().to_owned(), publish.properties.topic_alias.map(NonZeroU16::get))
        })
        .collect()
}

fn alias(topic: &str, alias: u16) -> (String, Option<u16>) {
    (topic.to_owned(), Some(alias))
}

#[test]
fn a_repeated_topic_is_sent_as_its_alias_mqtt_3_3_2_10() {
    // 5.0 §3.3.2.3.4: a sender may set a mapping with a topic name and a
    // Topic Alias, then send a zero length topic name with that alias.
    let t0 = Instant::now();
    let mut session = aliasing(t0, 10, limits());
    for topic in ["a/b", "a/b", "c", "a/b"] {
        deliver(&mut session, t0, topic, QoS::AtMostOnce);
    }
    let packets = drain(&mut session, t0);
    assert_eq!(
        topics_and_aliases(&packets),
        [alias("a/b", 1), alias("", 1), alias("c", 2), alias("", 1)]
    );
    // Payloads and everything else unchanged.
    assert!(packets.iter().all(|p| &as_publish(p).payload[..] == b"m"));
}

#[test]
fn aliases_never_exceed_the_client_maximum_least_recently_used_is_reused_mqtt_3_3_2_10() {
    // [MQTT-3.3.2-10] "The Server MUST NOT send a Topic Alias in a PUBLISH
    // packet to the Client greater than this value" (the client's Topic
    // Alias Maximum). The server's cap in `limits()` is 2.
    let t0 = Instant::now();
    let mut session = aliasing(t0, 5, limits());
    for topic in ["x", "y", "x", "z", "x", "y"] {
        deliver(&mut session, t0, topic, QoS::AtMostOnce);
    }
    // "y" was least recently used when "z" came: "z" takes alias 2; "y"
    // later takes the least recently used then, "z"'s.
    assert_eq!(
        topics_and_aliases(&drain(&mut session, t0)),
        [alias("x", 1), alias("y", 2), alias("", 1), alias("z", 2), alias("", 1), alias("y", 2),]
    );
    let mut session = aliasing(t0, 1, limits());
    for topic in ["x", "y", "y"] {
        deliver(&mut session, t0, topic, QoS::AtMostOnce);
    }
    assert_eq!(
        topics_and_aliases(&drain(&mut session, t0)),
        [alias("x", 1), alias("y", 1), alias("", 1)]
    );
}

#[test]
fn no_alias_without_a_client_topic_alias_maximum_mqtt_3_3_2_11() {
    // [MQTT-3.3.2-11] "A Client Topic Alias Maximum of 0 ... The Server MUST
    // NOT send a Topic Alias"; absent means 0. And off when the server cap is.
    let t0 = Instant::now();
    for (client, server) in [(0, 2), (4, 0)] {
        let limits = SessionLimits { server_topic_alias_maximum: server, ..limits() };
        let mut session = aliasing(t0, client, limits);
        deliver(&mut session, t0, "t", QoS::AtMostOnce);
        deliver(&mut session, t0, "t", QoS::AtMostOnce);
        assert_eq!(
            topics_and_aliases(&drain(&mut session, t0)),
            [("t".into(), None), ("t".into(), None)]
        );
    }
    let mut session = connected(t0, V5);
    deliver(&mut session, t0, "t", QoS::AtMostOnce);
    assert_eq!(topics_and_aliases(&drain(&mut session, t0)), [("t".into(), None)]);
}

#[test]
fn aliases_are_per_connection_and_reset_on_reconnect_mqtt_3_3_2_7() {
    // [MQTT-3.3.2-7] "A receiver MUST NOT carry forward any Topic Alias
    // mappings from one Network Connection to another". A QoS 1 message
    // re-sent on the new connection names its topic again.
    let t0 = Instant::now();
    let mut session = aliasing(t0, 4, limits());
    deliver(&mut session, t0, "t", QoS::AtLeastOnce);
    deliver(&mut session, t0, "t", QoS::AtLeastOnce);
    assert_eq!(topics_and_aliases(&drain(&mut session, t0)), [alias("t", 1), alias("", 1)]);
    session.handle_connection_lost(t0);
    let mut connect = connect_packet(V5, 0, false);
    connect.properties.topic_alias_maximum = Some(4);
    connect.properties.session_expiry_interval = Some(60);
    session.handle_connect(t0, &connect, true);
    let packets = drain(&mut session, t0);
    assert!(matches!(packets[0], Packet::ConnAck(_)));
    assert_eq!(topics_and_aliases(&packets[1..]), [alias("t", 1), alias("", 1)]);
    assert!(packets[1..].iter().all(|p| as_publish(p).dup));
}

#[test]
fn a_message_with_properties_keeps_them_beside_its_alias() {
    let t0 = Instant::now();
    let mut session = aliasing(t0, 4, limits());
    let mut with = (*message("t", QoS::AtMostOnce, b"m")).clone();
    with.properties.make_mut().content_type = Some(ByteString::from_static("text/plain"));
    let with = Arc::new(with);
    for message in [with.clone(), message("t", QoS::AtMostOnce, b"m"), with] {
        session.handle_delivery(t0, delivery(message, QoS::AtMostOnce));
    }
    let packets = drain(&mut session, t0);
    assert_eq!(topics_and_aliases(&packets), [alias("t", 1), alias("", 1), alias("", 1)]);
    let content_types: Vec<_> =
        packets.iter().map(|p| as_publish(p).properties.content_type.clone()).collect();
    assert_eq!(content_types, [Some("text/plain".into()), None, Some("text/plain".into())]);
}

#[test]
fn a_new_alias_is_left_out_when_it_would_make_the_publish_too_large_mqtt_3_1_2_24() {
    // The PUBLISH of "t" and 15 bytes is 21 bytes, 24 with a Topic Alias:
    // at a Maximum Packet Size of 23 it goes without one, and the alias is
    // not remembered (the client never saw it set).
    let t0 = Instant::now();
    let mut connect = connect_packet(V5, 0, false);
    connect.properties.topic_alias_maximum = Some(4);
    connect.properties.maximum_packet_size = NonZeroU32::new(23);
    let mut session = connected_with(t0, &connect, limits());
    session
        .handle_delivery(t0, delivery(message("t", QoS::AtMostOnce, &[b'x'; 15]), QoS::AtMostOnce));
    session.handle_delivery(t0, delivery(message("t", QoS::AtMostOnce, b"m"), QoS::AtMostOnce));
    session.handle_delivery(t0, delivery(message("t", QoS::AtMostOnce, b"m"), QoS::AtMostOnce));
    let packets = drain(&mut session, t0);
    assert_eq!(topics_and_aliases(&packets), [("t".into(), None), alias("t", 1), alias("", 1)]);
    assert_eq!(session.counters.dropped_too_large, 0);
}

// ---- Per-filter SUBACK / UNSUBACK codes, quota, retain, CONNACK size ---------

/// A 5.0 SUBSCRIBE whose filter at `position` is the invalid `text`
/// (as the decoder hands it over), among the valid `filters`.
fn subscribe_with_refused(id: u16, filters: &[(&str, QoS)], refused: &[(usize, &str)]) -> Packet {
    let Packet::Subscribe(mut subscribe) = subscribe(id, filters) else { unreachable!() };
    subscribe.refused = refused
        .iter()
        .map(|&(position, text)| crate::protocol::RefusedFilter {
            position,
            text: ByteString::from(text),
            error: crate::protocol::TopicError::MisplacedMultiLevelWildcard,
            options: SubscriptionOptions::default(),
        })
        .collect();
    Packet::Subscribe(subscribe)
}

fn suback_reasons(packets: &[Packet]) -> Vec<ReasonCode> {
    match packets {
        [Packet::SubAck(suback)] => suback.reasons.to_vec(),
        other => panic!("expected one SUBACK, got {other:?}"),
    }
}

#[test]
fn an_invalid_filter_gets_0x8f_and_the_others_are_served_mqtt_3_8_4_5() {
    // [MQTT-3.8.4-5] "If a Server receives a SUBSCRIBE packet that contains
    // multiple Topic Filters it MUST handle that packet as if it had
    // received a sequence of multiple SUBSCRIBE packets, except that it
    // combines their responses into a single SUBACK response."
    // [MQTT-3.8.4-6] "The SUBACK packet sent by the Server to the Client
    // MUST contain a Reason Code for each Topic Filter/Subscription Option
    // pair." [MQTT-3.9.3-1] "The order of Reason Codes in the SUBACK packet
    // MUST match the order of Topic Filters in the SUBSCRIBE packet."
    let t0 = Instant::now();
    let mut session = connected(t0, V5);
    let packet = subscribe_with_refused(
        3,
        &[("a/b", QoS::AtLeastOnce), ("c", QoS::ExactlyOnce)],
        &[(0, "a/#/b"), (2, "x+")],
    );
    session.handle_packet(t0, packet).expect("the connection stays open");
    let events = indexed(&mut session);
    let [SessionEvent::Subscribe { grants, .. }] = &events[..] else { panic!("{events:?}") };
    let granted: Vec<_> = grants.iter().map(|g| g.filter.as_str()).collect();
    assert_eq!(granted, ["a/b", "c"]);
    assert_eq!(
        suback_reasons(&drain(&mut session, t0)),
        [
            ReasonCode::TopicFilterInvalid,
            ReasonCode::GrantedQoS1,
            ReasonCode::TopicFilterInvalid,
            ReasonCode::GrantedQoS2,
        ]
    );
    assert!(session.is_connected());
    assert_eq!(session.counters.topic_filters_invalid, 2);
    assert_eq!(session.subscriptions().len(), 2);
}

#[test]
fn an_invalid_filter_in_unsubscribe_gets_0x8f_in_its_place_mqtt_3_11_3_1() {
    // [MQTT-3.10.4-6] "If a Server receives an UNSUBSCRIBE packet that
    // contains multiple Topic Filters, it MUST process that packet as if it
    // had received a sequence of multiple UNSUBSCRIBE packets, except that it
    // sends just one UNSUBACK response." [MQTT-3.11.3-1] "The order of
    // Reason Codes in the UNSUBACK packet MUST match the order of Topic
    // Filters in the UNSUBSCRIBE packet."
    let t0 = Instant::now();
    let mut session = connected(t0, V5);
    session.handle_packet(t0, subscribe(1, &[("a", QoS::AtMostOnce)])).unwrap();
    indexed(&mut session);
    drain(&mut session, t0);
    let Packet::Unsubscribe(mut unsubscribe) = unsubscribe(2, &["a", "b"]) else { unreachable!() };
    unsubscribe.refused.push(crate::protocol::RefusedFilter {
        position: 1,
        text: ByteString::from_static("#/x"),
        error: crate::protocol::TopicError::MisplacedMultiLevelWildcard,
        options: SubscriptionOptions::default(),
    });
    session.handle_packet(t0, Packet::Unsubscribe(unsubscribe)).unwrap();
    indexed(&mut session);
    let packets = drain(&mut session, t0);
    let [Packet::UnsubAck(unsuback)] = &packets[..] else { panic!("{packets:?}") };
    assert_eq!(
        unsuback.reasons.to_vec(),
        [ReasonCode::Success, ReasonCode::TopicFilterInvalid, ReasonCode::NoSubscriptionExisted]
    );
    assert_eq!(session.counters.topic_filters_invalid, 1);
}

#[test]
fn subscriptions_past_the_quota_get_0x97_mqtt_3_8_4_7() {
    // [MQTT-3.8.4-7] "This Reason Code MUST either show the maximum QoS that
    // was granted for that Subscription or indicate that the subscription
    // failed": 0x97 Quota exceeded ("An implementation or administrative
    // imposed limit has been exceeded"). A filter already held is replaced
    // [MQTT-3.8.4-3], not counted again.
    let t0 = Instant::now();
    let limits = SessionLimits { max_subscriptions: 2, ..limits() };
    let mut session = connected_with(t0, &connect_packet(V5, 0, false), limits);
    let filters = [
        ("a", QoS::AtMostOnce),
        ("b", QoS::AtMostOnce),
        ("a", QoS::AtLeastOnce),
        ("c", QoS::AtMostOnce),
    ];
    session.handle_packet(t0, subscribe(1, &filters)).unwrap();
    indexed(&mut session);
    assert_eq!(
        suback_reasons(&drain(&mut session, t0)),
        [
            ReasonCode::GRANTED_QOS_0,
            ReasonCode::GRANTED_QOS_0,
            ReasonCode::GrantedQoS1,
            ReasonCode::QuotaExceeded
        ]
    );
    assert_eq!(session.subscriptions().len(), 2);
    assert_eq!(session.counters.subscriptions_quota_exceeded, 1);
    // Room again after an UNSUBSCRIBE.
    session.handle_packet(t0, unsubscribe(2, &["b"])).unwrap();
    session.handle_packet(t0, subscribe(3, &[("c", QoS::AtMostOnce)])).unwrap();
    indexed(&mut session);
    let packets = drain(&mut session, t0);
    assert_eq!(suback_reasons(&packets[1..]), [ReasonCode::GRANTED_QOS_0]);
}

#[test]
fn subscriptions_past_the_quota_get_0x80_in_3_1_1_mqtt_3_9_3_2() {
    // 3.1.1 [MQTT-3.9.3-2] "SUBACK return codes other than 0x00, 0x01, 0x02
    // and 0x80 are reserved and MUST NOT be used": the quota is told as
    // 0x80 Failure.
    let t0 = Instant::now();
    let limits = SessionLimits { max_subscriptions: 1, ..limits() };
    let mut session = connected_with(t0, &connect_packet(V311, 0, false), limits);
    session
        .handle_packet(t0, subscribe(1, &[("a", QoS::AtMostOnce), ("b", QoS::AtMostOnce)]))
        .unwrap();
    indexed(&mut session);
    let mut out = BytesMut::new();
    session.poll_transmit(t0, &mut out);
    assert_eq!(&out[..], b"\x90\x04\x00\x01\x00\x80");
}

#[test]
fn retain_1_without_retain_available_is_disconnect_0x9a_mqtt_3_2_2_14() {
    // [MQTT-3.2.2-14] "A Client receiving Retain Available set to 0 from the
    // Server MUST NOT send a PUBLISH packet with the RETAIN flag set to 1.
    // If the Server receives such a packet, this is a Protocol Error. The
    // Server SHOULD send a DISCONNECT with Reason Code of 0x9A (Retain not
    // supported)".
    let t0 = Instant::now();
    let limits = SessionLimits { retain_available: false, ..limits() };
    let mut session = Counted::new(ByteString::from_static("c1"), limits);
    let connack = session.handle_connect(t0, &connect_packet(V5, 0, false), false).clone();
    assert_eq!(connack.properties.retain_available, Some(false));
    drain(&mut session, t0);
    // Not retained: served.
    session.handle_packet(t0, Packet::Publish(publish_in(QoS::AtMostOnce, 1, "t"))).unwrap();
    let mut retained = publish_in(QoS::AtLeastOnce, 2, "t");
    retained.retain = true;
    assert_eq!(
        session.handle_packet(t0, Packet::Publish(retained)),
        Err(SessionError::RetainNotSupported)
    );
    assert_eq!(stripped(drain(&mut session, t0)), [disconnect(ReasonCode::RetainNotSupported)]);
    let events = events(&mut session);
    assert_eq!(events.iter().filter(|e| matches!(e, SessionEvent::Publish(_))).count(), 1);
}

#[test]
fn retain_1_without_retain_available_closes_a_3_1_1_connection() {
    // 3.1.1 cannot be told; its connection is closed without DISCONNECT
    // (3.1.1 has none from the server), as Mosquitto does.
    let t0 = Instant::now();
    let limits = SessionLimits { retain_available: false, ..limits() };
    let mut session = connected_with(t0, &connect_packet(V311, 0, false), limits);
    let mut retained = publish_in(QoS::AtMostOnce, 1, "t");
    retained.retain = true;
    assert!(session.handle_packet(t0, Packet::Publish(retained)).is_err());
    assert!(drain(&mut session, t0).is_empty());
    assert!(!session.is_connected());
}

#[test]
fn payload_format_failures_are_counted_mqtt_3_3_2_4() {
    let t0 = Instant::now();
    let mut session = connected(t0, V5);
    let mut publish = publish_in(QoS::AtLeastOnce, 1, "t");
    publish.payload = Bytes::from_static(b"\xff");
    publish.properties.make_mut().payload_format_indicator = Some(true);
    session.handle_packet(t0, Packet::Publish(publish)).unwrap();
    assert_eq!(session.counters.payload_format_invalid, 1);
}

#[test]
fn a_connack_leaves_out_optional_properties_to_fit_mqtt_3_1_2_24() {
    // [MQTT-3.1.2-24] "The Server MUST NOT send packets exceeding Maximum
    // Packet Size to the Client": the capability properties whose absence
    // means the same (Retain / Wildcard / Subscription Identifier / Shared
    // Subscription Available 1) and the Topic Alias Maximum go first; what
    // the client must obey (Maximum Packet Size, Receive Maximum, Server
    // Keep Alive) stays.
    let t0 = Instant::now();
    let mut connect = connect_packet(V5, 0, false);
    connect.properties.maximum_packet_size = NonZeroU32::new(20);
    let limits = SessionLimits { max_packet_size: NonZeroU32::new(4096), ..limits() };
    let mut session = Counted::new(ByteString::from_static("c1"), limits);
    session.handle_connect(t0, &connect, false);
    let packets = drain(&mut session, t0);
    let [Packet::ConnAck(connack)] = &packets[..] else { panic!("{packets:?}") };
    let p = &connack.properties;
    assert_eq!(connack.reason, ReasonCode::Success);
    assert_eq!(p.retain_available, None);
    assert_eq!(p.wildcard_subscription_available, None);
    assert_eq!(p.topic_alias_maximum, None);
    assert_eq!(p.maximum_packet_size, NonZeroU32::new(4096));
    assert_eq!(p.receive_maximum, NonZeroU16::new(2));
    assert_eq!(p.server_keep_alive, Some(100));
    assert!(session.is_connected());
    assert_eq!(session.counters.dropped_too_large, 0);
}

#[test]
fn a_connack_that_cannot_fit_closes_the_connection_mqtt_3_2_0_1() {
    // [MQTT-3.2.0-1] "The Server MUST send a CONNACK with a 0x00 (Success)
    // Reason Code before sending any Packet other than AUTH": a CONNACK too
    // large even without its optional properties is not sent, and nothing
    // else may be; the connection is closed.
    let t0 = Instant::now();
    let mut connect = connect_packet(V5, 0, false);
    connect.properties.maximum_packet_size = NonZeroU32::new(8);
    let mut session = Counted::new(ByteString::from_static("c1"), limits());
    session.handle_connect(t0, &connect, false);
    deliver(&mut session, t0, "t", QoS::AtMostOnce);
    assert!(drain(&mut session, t0).is_empty());
    assert!(!session.is_connected());
    assert_eq!(session.counters.dropped_too_large, 1);
    let closed = events(&mut session);
    assert!(closed.contains(&SessionEvent::Closed(CloseReason::ConnAckTooLarge)), "{closed:?}");
}
// ---- MQTT 5.0: enhanced authentication (section 4.12) ---------------------

mod enhanced_auth {
    use super::*;
    use crate::auth::enhanced::{Authenticator, Authenticators};
    use crate::auth::scram::client::ScramClient;
    use crate::auth::scram::{ScramCredential, ScramFile, ScramSha256};

    const METHOD: &str = "SCRAM-SHA-256";

    /// SCRAM-SHA-256 with user "user", password "pencil" (RFC 7677's).
    fn scram() -> Arc<dyn Authenticator> {
        let credential = ScramCredential::derive("pencil", b"salt of user", 4096).unwrap();
        let file = ScramFile::parse(&format!("user:{}", credential.to_text())).unwrap();
        Arc::new(ScramSha256::new(file).unwrap())
    }

    fn methods() -> Authenticators {
        let mut methods = Authenticators::default();
        methods.add(scram());
        methods
    }

    fn auth(reason: ReasonCode, method: &str, data: Option<&str>) -> Auth {
        auth::auth_packet(
            &ByteString::from(method),
            reason,
            data.map(|data| Bytes::copy_from_slice(data.as_bytes())),
        )
    }

    fn data(auth: &Auth) -> &str {
        std::str::from_utf8(auth.properties.authentication_data.as_deref().unwrap()).unwrap()
    }

    fn as_auth(packet: &Packet) -> &Auth {
        match packet {
            Packet::Auth(auth) => auth,
            other => panic!("expected AUTH, got {other:?}"),
        }
    }

    /// A v5 session whose connection authenticated with SCRAM at CONNECT.
    fn authenticated(now: Instant) -> Counted {
        let mut connect = connect_packet(V5, 0, false);
        connect.properties.authentication_method = Some(ByteString::from_static(METHOD));
        let mut session = connected_with(now, &connect, limits());
        session.set_authenticator(scram());
        session
    }

    /// The CONNECT exchange, as the network layer drives it, with the RFC
    /// 7677 flow: CONNECT -> AUTH 0x18 -> AUTH 0x18 -> success.
    #[test]
    fn the_connect_exchange_continues_with_auth_0x18_mqtt_4_12_0_2() {
        // [MQTT-4.12.0-2] "If the Server requires additional information to
        // complete the authorization, it can send an AUTH packet to the
        // Client. This packet MUST contain a Reason Code of 0x18 (Continue
        // authentication)." [MQTT-4.12.0-5]: with the CONNECT's method.
        let t0 = Instant::now();
        let deadline = t0 + Duration::from_secs(10);
        let mut client = ScramClient::new("user", "pencil", "rOprNGfwEbeRWgbNEkqO");
        let method = ByteString::from_static(METHOD);
        let first = Bytes::from(client.client_first());
        let (exchange, outcome) = AuthExchange::start(&methods(), deadline, &method, Some(&first));
        let mut exchange = exchange.expect("the exchange goes on");
        assert_eq!(exchange.deadline(), deadline);
        assert_eq!(exchange.method(), &method);
        let AuthOutcome::Continue(server_first) = outcome else { panic!("{outcome:?}") };
        assert_eq!(server_first.reason, ReasonCode::ContinueAuthentication);
        assert_eq!(server_first.properties.authentication_method.as_ref(), Some(&method));
        let client_final = client.client_final(data(&server_first)).unwrap();
        let answer = auth(ReasonCode::ContinueAuthentication, METHOD, Some(&client_final));
        let AuthOutcome::Success(Some(server_final)) = exchange.handle_auth(&answer) else {
            panic!("refused")
        };
        assert!(client.verify_server_final(std::str::from_utf8(&server_final).unwrap()));
    }

    #[test]
    fn an_unknown_method_is_refused_with_0x8c_mqtt_4_12_0_1() {
        // [MQTT-4.12.0-1] "If the Server does not support the Authentication
        // Method supplied by the Client, it MAY send a CONNACK with a Reason
        // Code of 0x8C (Bad authentication method) or 0x87 (Not Authorized)
        // as described in section 4.13 and MUST close the Network
        // Connection."
        let t0 = Instant::now();
        for (methods, name) in [(methods(), "SCRAM-SHA-1"), (Authenticators::default(), METHOD)] {
            let (exchange, outcome) =
                AuthExchange::start(&methods, t0, &ByteString::from(name), None);
            assert!(exchange.is_none());
            assert_eq!(outcome, AuthOutcome::Failed(ReasonCode::BadAuthenticationMethod));
        }
    }

    #[test]
    fn the_connect_exchange_fails_with_0x87_or_0x82_mqtt_4_12_0_4() {
        // [MQTT-4.12.0-4] "The Server can reject the authentication at any
        // point in this process. It MAY send a CONNACK with a Reason Code of
        // 0x80 or above as described in section 4.13, and MUST close the
        // Network Connection."
        let t0 = Instant::now();
        let method = ByteString::from_static(METHOD);
        let start = |client: &ScramClient| {
            let first = Bytes::from(client.client_first());
            let (exchange, outcome) = AuthExchange::start(&methods(), t0, &method, Some(&first));
            let AuthOutcome::Continue(server_first) = outcome else { panic!("{outcome:?}") };
            (exchange.unwrap(), data(&server_first).to_owned())
        };
        // A wrong password: Not authorized.
        let mut client = ScramClient::new("user", "pencil?", "n1");
        let (mut exchange, server_first) = start(&client);
        let client_final = client.client_final(&server_first).unwrap();
        let answer = auth(ReasonCode::ContinueAuthentication, METHOD, Some(&client_final));
        assert_eq!(exchange.handle_auth(&answer), AuthOutcome::Failed(ReasonCode::NotAuthorized));
        // Another method, or another reason code, in the client's AUTH: a
        // Protocol Error ([MQTT-4.12.0-5], [MQTT-4.12.0-3]).
        let mut client = ScramClient::new("user", "pencil", "n2");
        let (mut exchange, server_first) = start(&client);
        let client_final = client.client_final(&server_first).unwrap();
        for answer in [
            auth(ReasonCode::ContinueAuthentication, "PLAIN", Some(&client_final)),
            auth(ReasonCode::ReAuthenticate, METHOD, Some(&client_final)),
        ] {
            assert_eq!(
                exchange.handle_auth(&answer),
                AuthOutcome::Failed(ReasonCode::ProtocolError)
            );
        }
        // Malformed SCRAM data in CONNECT: Not authorized at once.
        let garbage = Bytes::from_static(b"garbage");
        let (exchange, outcome) = AuthExchange::start(&methods(), t0, &method, Some(&garbage));
        assert!(exchange.is_none());
        assert_eq!(outcome, AuthOutcome::Failed(ReasonCode::NotAuthorized));
    }

    #[test]
    fn a_successful_connack_carries_the_method_and_data_mqtt_4_12_0_5() {
        // [MQTT-4.12.0-5] "If the initial CONNECT packet included an
        // Authentication Method property then all AUTH packets, and any
        // successful CONNACK packet MUST include an Authentication Method
        // Property with the same value as in the CONNECT packet."
        let t0 = Instant::now();
        let mut connect = connect_packet(V5, 0, false);
        connect.properties.authentication_method = Some(ByteString::from_static(METHOD));
        connect.properties.authentication_data = Some(Bytes::from_static(b"v=final"));
        let mut session = Counted::new(ByteString::from_static("c1"), limits());
        session.handle_connect(t0, &connect, false);
        let Packet::ConnAck(connack) = &drain(&mut session, t0)[0] else { panic!("no CONNACK") };
        assert_eq!(connack.properties.authentication_method.as_deref(), Some(METHOD));
        assert_eq!(connack.properties.authentication_data.as_deref(), Some(&b"v=final"[..]));
        // [MQTT-4.12.0-6] and none without a method in CONNECT.
        let mut plain = Counted::new(ByteString::from_static("c1"), limits());
        plain.handle_connect(t0, &connect_packet(V5, 0, false), false);
        let Packet::ConnAck(connack) = &drain(&mut plain, t0)[0] else { panic!("no CONNACK") };
        assert_eq!(connack.properties.authentication_method, None);
    }

    #[test]
    fn reauthentication_succeeds_with_auth_0x00_mqtt_4_12_1_1() {
        // [MQTT-4.12.1-1] "If the Client supplied an Authentication Method
        // in the CONNECT packet it can initiate a re-authentication at any
        // time after receiving a CONNACK. It does this by sending an AUTH
        // packet with a Reason Code of 0x19 (Re-authentication). The Client
        // MUST set the Authentication Method to the same value as the
        // Authentication Method originally used to authenticate the Network
        // Connection." 4.12.1: the server ends it with AUTH 0x00, and other
        // packets flow meanwhile.
        let t0 = Instant::now();
        let mut session = authenticated(t0);
        let mut client = ScramClient::new("user", "pencil", "again");
        let first = auth(ReasonCode::ReAuthenticate, METHOD, Some(&client.client_first()));
        session.handle_packet(t0, Packet::Auth(Box::new(first))).unwrap();
        let packets = drain(&mut session, t0);
        let server_first = as_auth(&packets[0]);
        assert_eq!(server_first.reason, ReasonCode::ContinueAuthentication);
        assert_eq!(server_first.properties.authentication_method.as_deref(), Some(METHOD));
        assert_eq!(session.poll_timeout(), Some(t0 + Duration::from_secs(10)));
        // The connection goes on with the previous authentication.
        session.handle_packet(t0, Packet::PingReq).unwrap();
        assert_eq!(drain(&mut session, t0), vec![Packet::PingResp]);
        let client_final = client.client_final(data(server_first)).unwrap();
        let last = auth(ReasonCode::ContinueAuthentication, METHOD, Some(&client_final));
        session.handle_packet(t0, Packet::Auth(Box::new(last))).unwrap();
        let packets = drain(&mut session, t0);
        let done = as_auth(&packets[0]);
        assert_eq!(done.reason, ReasonCode::Success);
        assert_eq!(done.properties.authentication_method.as_deref(), Some(METHOD));
        assert!(client.verify_server_final(data(done)));
        assert!(session.is_connected());
        // Only the keep alive is left to time out.
        assert!(session.poll_timeout() > Some(t0 + Duration::from_secs(10)));
        // And again: a connection may re-authenticate any number of times.
        let client = ScramClient::new("user", "pencil", "third");
        let first = auth(ReasonCode::ReAuthenticate, METHOD, Some(&client.client_first()));
        session.handle_packet(t0, Packet::Auth(Box::new(first))).unwrap();
        assert_eq!(as_auth(&drain(&mut session, t0)[0]).reason, ReasonCode::ContinueAuthentication);
    }

    #[test]
    fn failed_reauthentication_disconnects_with_0x87_mqtt_4_12_1_2() {
        // [MQTT-4.12.1-2] "If the re-authentication fails, the Client or
        // Server SHOULD send DISCONNECT with an appropriate Reason Code as
        // described in section 4.13, and MUST close the Network Connection."
        let t0 = Instant::now();
        let mut session = authenticated(t0);
        let mut client = ScramClient::new("user", "wrong", "again");
        let first = auth(ReasonCode::ReAuthenticate, METHOD, Some(&client.client_first()));
        session.handle_packet(t0, Packet::Auth(Box::new(first))).unwrap();
        let packets = drain(&mut session, t0);
        let client_final = client.client_final(data(as_auth(&packets[0]))).unwrap();
        let last = auth(ReasonCode::ContinueAuthentication, METHOD, Some(&client_final));
        session.handle_packet(t0, Packet::Auth(Box::new(last))).unwrap();
        assert_eq!(stripped(drain(&mut session, t0)), vec![disconnect(ReasonCode::NotAuthorized)]);
        assert!(!session.is_connected());
        assert_eq!(
            closed_reason(&events(&mut session)),
            Some(&CloseReason::ReauthenticationFailed)
        );
        assert_eq!(session.counters.reauth_failed, 1);
    }

    #[test]
    fn reauthentication_times_out_with_0x87() {
        // The exchange is bounded by connect_timeout_ms (`auth_timeout`):
        // a client that does not answer is disconnected [MQTT-4.12.1-2].
        let t0 = Instant::now();
        let mut session = authenticated(t0);
        let client = ScramClient::new("user", "pencil", "again");
        let first = auth(ReasonCode::ReAuthenticate, METHOD, Some(&client.client_first()));
        session.handle_packet(t0, Packet::Auth(Box::new(first))).unwrap();
        drain(&mut session, t0);
        let due = t0 + limits().auth_timeout;
        assert_eq!(session.poll_timeout(), Some(due));
        session.handle_timeout(due - Duration::from_millis(1));
        assert!(session.is_connected());
        session.handle_timeout(due);
        assert_eq!(stripped(drain(&mut session, due)), vec![disconnect(ReasonCode::NotAuthorized)]);
        assert_eq!(
            closed_reason(&events(&mut session)),
            Some(&CloseReason::ReauthenticationTimeout)
        );
        assert_eq!(session.counters.reauth_failed, 1);
    }

    #[test]
    fn reauthentication_with_another_method_is_a_protocol_error_mqtt_4_12_1_1() {
        // [MQTT-4.12.1-1] "The Client MUST set the Authentication Method to
        // the same value"; DISCONNECT has no 0x8C, so it is 0x82.
        let t0 = Instant::now();
        let mut session = authenticated(t0);
        let other = auth(ReasonCode::ReAuthenticate, "SCRAM-SHA-1", Some("n,,n=user,r=x"));
        assert_eq!(
            session.handle_packet(t0, Packet::Auth(Box::new(other))),
            Err(SessionError::AuthMethodChanged)
        );
        assert_eq!(stripped(drain(&mut session, t0)), vec![disconnect(ReasonCode::ProtocolError)]);
    }

    #[test]
    fn auth_out_of_turn_is_a_protocol_error_mqtt_3_15_2_1() {
        // 5.0 section 3.15.2.1 and 4.12: a client sends 0x19 to start and
        // 0x18 to continue; never 0x00, never 0x18 with no exchange, never
        // 0x19 during one.
        let t0 = Instant::now();
        for (reason, started) in [
            (ReasonCode::Success, false),
            (ReasonCode::ContinueAuthentication, false),
            (ReasonCode::ReAuthenticate, true),
        ] {
            let mut session = authenticated(t0);
            if started {
                let first = auth(ReasonCode::ReAuthenticate, METHOD, Some("n,,n=user,r=x"));
                session.handle_packet(t0, Packet::Auth(Box::new(first))).unwrap();
                drain(&mut session, t0);
            }
            let packet = auth(reason, METHOD, Some("n,,n=user,r=x"));
            assert_eq!(
                session.handle_packet(t0, Packet::Auth(Box::new(packet))),
                Err(SessionError::UnexpectedAuth(reason))
            );
            assert_eq!(
                stripped(drain(&mut session, t0)),
                vec![disconnect(ReasonCode::ProtocolError)]
            );
        }
    }

    #[test]
    fn auth_without_a_method_in_connect_is_a_protocol_error_mqtt_4_12_0_7() {
        // [MQTT-4.12.0-7] "If the Client does not include an Authentication
        // Method in the CONNECT, the Client MUST NOT send an AUTH packet to
        // the Server."
        let t0 = Instant::now();
        let mut session = connected(t0, V5);
        let packet = auth(ReasonCode::ReAuthenticate, METHOD, Some("n,,n=user,r=x"));
        assert_eq!(
            session.handle_packet(t0, Packet::Auth(Box::new(packet))),
            Err(SessionError::UnexpectedPacket(PacketType::Auth))
        );
        assert_eq!(stripped(drain(&mut session, t0)), vec![disconnect(ReasonCode::ProtocolError)]);
    }
}

// ---- Abuse limits: topic length and levels, publish rate -------------------

/// Limits of at most 16 bytes and 3 levels per topic.
fn short_topics() -> SessionLimits {
    SessionLimits { max_topic_length: 16, max_topic_levels: 3, ..limits() }
}

#[test]
fn topic_limits_count_bytes_and_levels() {
    let limits = short_topics();
    assert!(limits.topic_within("a/b/c"));
    assert!(!limits.topic_within("a/b/c/d"), "four levels");
    assert!(!limits.topic_within("a//b/"), "empty levels count");
    assert!(limits.topic_within("0123456789abcdef"));
    assert!(!limits.topic_within("0123456789abcdefg"), "17 bytes");
    let one = SessionLimits { max_topic_levels: 1, ..limits };
    assert!(one.topic_within("a") && !one.topic_within("a/"));
    // A filter: its share name counts against the length, not the levels.
    let shared = TopicFilter::new("$share/g/a/b/c").unwrap();
    assert!(limits.filter_within(&shared));
    let long_share = TopicFilter::new("$share/a-very-long-group/a").unwrap();
    assert!(!limits.filter_within(&long_share));
}

#[test]
fn v5_publish_past_the_topic_limits_gets_0x90_in_puback_and_pubrec() {
    // 5.0 PUBACK / PUBREC 0x90 Topic Name invalid: "The Topic Name is not
    // malformed, but is not accepted by this Client or Server" (tables 3-4,
    // 3-5). [MQTT-3.4.2-1] / [MQTT-3.5.2-1]: the code is one the tables
    // allow. The message is not routed; a failed PUBREC ends the QoS 2 flow
    // [MQTT-4.3.3-4], so the id is free again.
    let t0 = Instant::now();
    let mut session = connected_with(t0, &connect_packet(V5, 0, false), short_topics());
    let too_deep = "a/b/c/d";
    session.handle_packet(t0, Packet::Publish(publish_in(QoS::AtLeastOnce, 1, too_deep))).unwrap();
    session
        .handle_packet(t0, Packet::Publish(publish_in(QoS::ExactlyOnce, 2, "0123456789abcdefg")))
        .unwrap();
    let packets = drain(&mut session, t0);
    let codes: Vec<_> = packets
        .iter()
        .map(|packet| match packet {
            Packet::PubAck(ack) | Packet::PubRec(ack) => (packet.packet_type(), ack.reason),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        codes,
        [
            (PacketType::PubAck, ReasonCode::TopicNameInvalid),
            (PacketType::PubRec, ReasonCode::TopicNameInvalid)
        ]
    );
    assert!(ReasonCode::TopicNameInvalid.is_valid_for(PacketType::PubAck));
    assert!(events(&mut session).is_empty(), "nothing routed");
    assert_eq!(session.counters.topic_limit_exceeded, 2);
    // The QoS 2 id was not kept: a new PUBLISH with it is served.
    session.handle_packet(t0, Packet::Publish(publish_in(QoS::ExactlyOnce, 2, "a/b"))).unwrap();
    assert_eq!(events(&mut session).len(), 1);
    assert!(session.is_connected());
}

#[test]
fn v5_qos0_publish_past_the_topic_limits_is_disconnect_0x90() {
    // A QoS 0 PUBLISH has no acknowledgement to refuse it in. DISCONNECT
    // 0x90 (table 3-10: "The Topic Name is correctly formed, but is not
    // accepted by this Client or Server") tells the client, where dropping
    // would lose every message it sends without a word.
    let t0 = Instant::now();
    let mut session = connected_with(t0, &connect_packet(V5, 0, false), short_topics());
    let result =
        session.handle_packet(t0, Packet::Publish(publish_in(QoS::AtMostOnce, 0, "a/b/c/d")));
    assert_eq!(result, Err(SessionError::TopicLimitExceeded));
    assert_eq!(stripped(drain(&mut session, t0)), [disconnect(ReasonCode::TopicNameInvalid)]);
    assert!(!session.is_connected());
    assert_eq!(session.counters.topic_limit_exceeded, 1);
}

#[test]
fn v311_publish_past_the_topic_limits_closes_the_connection_mqtt_4_8_0_1() {
    // 3.1.1 has no way to refuse a PUBLISH (its PUBACK has no code):
    // the connection is closed [MQTT-4.8.0-1], nothing is routed.
    let t0 = Instant::now();
    for qos in [QoS::AtMostOnce, QoS::AtLeastOnce] {
        let mut session = connected_with(t0, &connect_packet(V311, 0, false), short_topics());
        let publish = publish_in(qos, 1, "a/b/c/d");
        assert_eq!(
            session.handle_packet(t0, Packet::Publish(publish)),
            Err(SessionError::TopicLimitExceeded)
        );
        assert!(drain(&mut session, t0).is_empty(), "no DISCONNECT in 3.1.1");
        assert!(!session.is_connected());
        assert!(!events(&mut session).iter().any(|e| matches!(e, SessionEvent::Publish(_))));
    }
}

// ---- ACL -------------------------------------------------------------------

/// A session of user `alice` (client id "c1") connected with `version`,
/// under these ACL rules.
fn with_acl(now: Instant, version: ProtocolVersion, rules: &str) -> Counted {
    let file = Arc::new(crate::auth::acl::AclFile::parse(rules).unwrap());
    let mut session = Counted::new(ByteString::from_static("c1"), limits());
    session.set_acl(Some(ClientAcl::new(file, Some("alice"))));
    session.handle_connect(now, &connect_packet(version, 0, false), false);
    assert!(matches!(drain(&mut session, now)[..], [Packet::ConnAck(_)]));
    session
}

const ALICE: &str = "user alice\ntopic readwrite ok/#\ntopic read ro/#\ntopic deny ok/no\n";

#[test]
fn v5_denied_publish_gets_0x87_and_is_not_routed() {
    // 5.0 §3.4.2.1 / §3.5.2.1: 0x87 Not authorized in PUBACK / PUBREC; a
    // failed PUBREC ends the QoS 2 flow [MQTT-4.3.3-4].
    let t0 = Instant::now();
    let mut session = with_acl(t0, V5, ALICE);
    for packet in [
        publish_in(QoS::AtMostOnce, 0, "ro/x"),
        publish_in(QoS::AtLeastOnce, 1, "ro/x"),
        publish_in(QoS::ExactlyOnce, 2, "ok/no"),
    ] {
        session.handle_packet(t0, Packet::Publish(packet)).unwrap();
    }
    let refused = |id| PubResponse { reason: ReasonCode::NotAuthorized, ..ack(id) };
    assert_eq!(
        drain(&mut session, t0),
        vec![Packet::PubAck(refused(1)), Packet::PubRec(refused(2))]
    );
    session.handle_packet(t0, Packet::Publish(publish_in(QoS::AtLeastOnce, 3, "ok/yes"))).unwrap();
    let routed: Vec<_> = events(&mut session)
        .into_iter()
        .filter_map(|event| match event {
            SessionEvent::Publish(message) => Some(message.topic.as_str().to_owned()),
            _ => None,
        })
        .collect();
    assert_eq!(routed, ["ok/yes"]);
    assert_eq!(drain(&mut session, t0), vec![Packet::PubAck(ack(3))]);
    assert_eq!(session.counters.acl_denied_publish, 3);
    // The id of the refused PUBREC is not kept: PUBREL gets 0x92.
    session.handle_packet(t0, Packet::PubRel(ack(2))).unwrap();
    let not_found = PubResponse { reason: ReasonCode::PacketIdentifierNotFound, ..ack(2) };
    assert_eq!(drain(&mut session, t0), vec![Packet::PubComp(not_found)]);
}

#[test]
fn v311_denied_publish_gets_the_normal_ack_and_is_dropped() {
    // 3.1.1 has no refusal: PUBACK [MQTT-4.3.2-2], PUBREC then PUBCOMP
    // [MQTT-4.3.3-2], and the message goes nowhere.
    let t0 = Instant::now();
    let mut session = with_acl(t0, V311, ALICE);
    session.handle_packet(t0, Packet::Publish(publish_in(QoS::AtLeastOnce, 1, "ro/x"))).unwrap();
    session.handle_packet(t0, Packet::Publish(publish_in(QoS::ExactlyOnce, 2, "x"))).unwrap();
    // A re-sent QoS 2 PUBLISH is answered as the first [MQTT-4.3.3-2].
    session.handle_packet(t0, Packet::Publish(publish_in(QoS::ExactlyOnce, 2, "x"))).unwrap();
    assert!(events(&mut session).is_empty(), "nothing is routed");
    session.handle_packet(t0, Packet::PubRel(ack(2))).unwrap();
    assert_eq!(
        drain(&mut session, t0),
        vec![
            Packet::PubAck(ack(1)),
            Packet::PubRec(ack(2)),
            Packet::PubRec(ack(2)),
            Packet::PubComp(ack(2))
        ]
    );
    assert_eq!(session.counters.acl_denied_publish, 2);
}

#[test]
fn denied_subscribe_filters_are_refused_one_by_one() {
    // 5.0 §3.9.3: 0x87 Not authorized; 3.1.1 [MQTT-3.9.3-2]: 0x80 Failure.
    let t0 = Instant::now();
    for (version, refused) in [(V5, 0x87), (V311, 0x80)] {
        let mut session = with_acl(t0, version, ALICE);
        // A shared subscription is checked by its filter.
        let filters = [
            ("ok/#", QoS::AtLeastOnce),
            ("no/#", QoS::AtLeastOnce),
            ("#", QoS::AtMostOnce),
            ("$share/g/no/#", QoS::AtMostOnce),
            ("$share/g/ro/+", QoS::AtMostOnce),
        ];
        session.handle_packet(t0, subscribe(1, &filters)).unwrap();
        let subscribed: Vec<_> = indexed(&mut session)
            .into_iter()
            .flat_map(|event| match event {
                SessionEvent::Subscribe { grants, .. } => {
                    grants.into_iter().map(|g| g.filter.as_str().to_owned()).collect()
                }
                _ => Vec::new(),
            })
            .collect();
        assert_eq!(subscribed, ["ok/#", "#", "$share/g/ro/+"], "{version}");
        let [Packet::SubAck(suback)] = &drain(&mut session, t0)[..] else { panic!("a SUBACK") };
        let codes: Vec<u8> = suback.reasons.iter().map(|r| r.to_v3_suback_return_code()).collect();
        assert_eq!(codes, [1, 0x80, 0, 0x80, 0], "{version}");
        assert_eq!(suback.reasons[1].as_u8(), refused, "{version}: as the client reads it");
        // Every filter refused: the SUBACK goes at once, nothing to index.
        session.handle_packet(t0, subscribe(2, &[("no/x", QoS::AtLeastOnce)])).unwrap();
        assert!(events(&mut session).is_empty());
        assert_eq!(summary(&drain(&mut session, t0)), [(PacketType::SubAck, Some(2), false)]);
        assert_eq!(session.counters.acl_denied_subscribe, 3);
    }
}

#[test]
fn v5_aliased_publish_is_checked_on_the_resolved_topic() {
    // The limits apply to the Topic Name the alias stands for (5.0
    // §3.3.2.3.4): an empty topic with an alias of a long one is refused.
    let t0 = Instant::now();
    let mut session = connected_with(t0, &connect_packet(V5, 0, false), short_topics());
    let mut first = publish_in(QoS::AtLeastOnce, 1, "a/b/c/d");
    first.properties.make_mut().topic_alias = NonZeroU16::new(1);
    session.handle_packet(t0, Packet::Publish(first)).unwrap();
    let mut second = publish_in(QoS::AtLeastOnce, 2, "x");
    second.topic = TopicName::new_aliased(ByteString::new()).unwrap();
    second.properties.make_mut().topic_alias = NonZeroU16::new(1);
    session.handle_packet(t0, Packet::Publish(second)).unwrap();
    assert_eq!(session.counters.topic_limit_exceeded, 2);
    assert!(events(&mut session).is_empty());
}

#[test]
fn filters_past_the_topic_limits_get_0x8f_alone_mqtt_3_8_4_5() {
    // [MQTT-3.8.4-5] each filter is handled as its own SUBSCRIBE: the one
    // past the limits gets 0x8F Topic Filter invalid ("correctly formed
    // but is not allowed for this Client", table 3-8), the others are
    // served. A `$share/NAME/` prefix does not count against the levels.
    let t0 = Instant::now();
    let mut session = connected_with(t0, &connect_packet(V5, 0, false), short_topics());
    let filters = [
        ("a/+/#", QoS::AtMostOnce),
        ("a/b/c/#", QoS::AtMostOnce),
        ("$share/g/a/b/c", QoS::AtMostOnce),
    ];
    session.handle_packet(t0, subscribe(1, &filters)).unwrap();
    indexed(&mut session);
    assert_eq!(
        suback_reasons(&drain(&mut session, t0)),
        [ReasonCode::GRANTED_QOS_0, ReasonCode::TopicFilterInvalid, ReasonCode::GRANTED_QOS_0]
    );
    assert_eq!(session.subscriptions().len(), 2);
    // UNSUBSCRIBE of such a filter: 0x8F as well (table 3-9).
    session.handle_packet(t0, unsubscribe(2, &["a/b/c/#", "a/+/#"])).unwrap();
    indexed(&mut session);
    let packets = drain(&mut session, t0);
    let [Packet::UnsubAck(unsuback)] = &packets[..] else { panic!("{packets:?}") };
    assert_eq!(unsuback.reasons.to_vec(), [ReasonCode::TopicFilterInvalid, ReasonCode::Success]);
    assert_eq!(session.counters.topic_limit_exceeded, 2);
}

#[test]
fn v311_filters_past_the_topic_limits_get_0x80_mqtt_3_9_3_2() {
    // 3.1.1 [MQTT-3.9.3-2]: the failure is told as 0x80.
    let t0 = Instant::now();
    let mut session = connected_with(t0, &connect_packet(V311, 0, false), short_topics());
    session
        .handle_packet(t0, subscribe(1, &[("a/b/c/d", QoS::AtMostOnce), ("a", QoS::AtMostOnce)]))
        .unwrap();
    indexed(&mut session);
    let mut out = BytesMut::new();
    session.poll_transmit(t0, &mut out);
    assert_eq!(&out[..], b"\x90\x04\x00\x01\x80\x00");
}

#[test]
fn publishes_past_the_rate_pace_the_connection_and_are_all_served() {
    // Nothing acknowledged is dropped: every PUBLISH read is routed and
    // acknowledged; past the rate the session only asks not to be read
    // until its budget is back.
    let t0 = Instant::now();
    let limits =
        SessionLimits { max_publish_rate: 5, receive_maximum: NonZeroU16::MAX, ..limits() };
    let mut session = connected_with(t0, &connect_packet(V5, 0, false), limits);
    for id in 1..=5 {
        session.handle_packet(t0, Packet::Publish(publish_in(QoS::AtLeastOnce, id, "t"))).unwrap();
        assert_eq!(session.paced_until(t0), None, "within a second's burst");
    }
    session.handle_packet(t0, Packet::Publish(publish_in(QoS::AtLeastOnce, 6, "t"))).unwrap();
    let until = session.paced_until(t0).expect("paced past 5/s");
    assert!(until > t0 && until <= t0 + Duration::from_millis(400), "{until:?}");
    assert_eq!(session.paced_until(until), None);
    assert_eq!(session.counters.publish_rate_limited, 1);
    assert_eq!(events(&mut session).len(), 6, "every publish routed");
    assert_eq!(drain(&mut session, t0).len(), 6, "and acknowledged");
    // Turned off by a reload: no pacing, the budget is dropped.
    session.set_limits(SessionLimits { max_publish_rate: 0, ..limits });
    session.handle_packet(t0, Packet::Publish(publish_in(QoS::AtMostOnce, 0, "t"))).unwrap();
    assert_eq!(session.paced_until(t0), None);
}

#[test]
fn payload_bytes_past_the_rate_pace_the_connection() {
    let t0 = Instant::now();
    let limits = SessionLimits { max_publish_bytes_rate: 10, ..limits() };
    let mut session = connected_with(t0, &connect_packet(V311, 0, false), limits);
    // "payload" is 7 bytes: the second passes 10 bytes/s.
    session.handle_packet(t0, Packet::Publish(publish_in(QoS::AtMostOnce, 0, "t"))).unwrap();
    assert_eq!(session.paced_until(t0), None);
    session.handle_packet(t0, Packet::Publish(publish_in(QoS::AtMostOnce, 0, "t"))).unwrap();
    assert!(session.paced_until(t0).is_some());
    assert_eq!(session.counters.publish_rate_limited, 1);
    assert_eq!(events(&mut session).len(), 2);
}

#[test]
fn denied_deliveries_are_never_sent() {
    let t0 = Instant::now();
    let mut session = with_acl(t0, V5, ALICE);
    assert_eq!(
        deliver(&mut session, t0, "elsewhere/x", QoS::AtLeastOnce),
        DeliveryOutcome::Dropped(DropReason::NotAuthorized)
    );
    assert_eq!(
        deliver(&mut session, t0, "ok/no", QoS::AtMostOnce),
        DeliveryOutcome::Dropped(DropReason::NotAuthorized)
    );
    assert_eq!(deliver(&mut session, t0, "ro/x", QoS::AtLeastOnce), DeliveryOutcome::Queued);
    let sent: Vec<_> =
        drain(&mut session, t0).iter().map(|p| as_publish(p).topic.as_str().to_owned()).collect();
    assert_eq!(sent, ["ro/x"]);
    assert_eq!(session.counters.acl_denied_delivery, 2);
    // A reloaded file applies from the next check.
    let reloaded = Arc::new(crate::auth::acl::AclFile::parse("user alice\ntopic read x").unwrap());
    session.rebind_acl(&reloaded);
    assert_eq!(deliver(&mut session, t0, "x", QoS::AtMostOnce), DeliveryOutcome::Queued);
    assert_eq!(
        deliver(&mut session, t0, "ro/x", QoS::AtMostOnce),
        DeliveryOutcome::Dropped(DropReason::NotAuthorized)
    );
}

#[test]
fn a_will_the_acl_denies_is_not_published() {
    let t0 = Instant::now();
    for (topic, published) in [("clients/c1/status", false), ("ok/will", true)] {
        let file = Arc::new(crate::auth::acl::AclFile::parse(ALICE).unwrap());
        let mut session = Counted::new(ByteString::from_static("c1"), limits());
        session.set_acl(Some(ClientAcl::new(file, Some("alice"))));
        let mut connect = connect_packet(V311, 0, false);
        connect.will = Some(Will { topic: TopicName::new(topic).unwrap(), ..will() });
        session.handle_connect(t0, &connect, false);
        session.handle_connection_lost(t0);
        assert_eq!(will_event(&events(&mut session)).is_some(), published, "{topic}");
        assert_eq!(session.counters.acl_denied_publish, u64::from(!published));
    }
}

#[test]
fn while_the_log_cannot_be_written_v5_qos1_and_qos2_publishes_get_0x97_and_qos0_flows() {
    // 5.0 PUBACK / PUBREC 0x97 Quota exceeded, "An implementation or
    // administrative imposed limit has been exceeded" (tables 3-4, 3-5;
    // [MQTT-3.4.2-1], [MQTT-3.5.2-1]: a code the tables allow). Nothing is
    // routed; the failed PUBREC ends the flow [MQTT-4.3.3-4].
    let t0 = Instant::now();
    let mut session = connected(t0, V5);
    session.set_store_unavailable(true);
    session.handle_packet(t0, Packet::Publish(publish_in(QoS::AtLeastOnce, 1, "a"))).unwrap();
    session.handle_packet(t0, Packet::Publish(publish_in(QoS::ExactlyOnce, 2, "a"))).unwrap();
    session.handle_packet(t0, Packet::Publish(publish_in(QoS::AtMostOnce, 0, "a"))).unwrap();
    let codes: Vec<_> = drain(&mut session, t0)
        .iter()
        .map(|packet| match packet {
            Packet::PubAck(ack) | Packet::PubRec(ack) => (packet.packet_type(), ack.reason),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        codes,
        [
            (PacketType::PubAck, ReasonCode::QuotaExceeded),
            (PacketType::PubRec, ReasonCode::QuotaExceeded)
        ]
    );
    assert!(ReasonCode::QuotaExceeded.is_valid_for(PacketType::PubAck));
    assert!(ReasonCode::QuotaExceeded.is_valid_for(PacketType::PubRec));
    let routed = events(&mut session);
    assert!(
        matches!(&routed[..], [SessionEvent::Publish(m)] if m.qos == QoS::AtMostOnce),
        "only the QoS 0 message is routed: {routed:?}"
    );
    assert_eq!(session.counters.refused_store_unavailable, 2);
    // The log works again: the same ids are served (the QoS 2 one was not
    // kept).
    session.set_store_unavailable(false);
    session.handle_packet(t0, Packet::Publish(publish_in(QoS::AtLeastOnce, 1, "a"))).unwrap();
    session.handle_packet(t0, Packet::Publish(publish_in(QoS::ExactlyOnce, 2, "a"))).unwrap();
    assert_eq!(events(&mut session).len(), 2);
    let codes: Vec<_> = drain(&mut session, t0)
        .iter()
        .map(|packet| match packet {
            Packet::PubAck(ack) | Packet::PubRec(ack) => ack.reason,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(codes, [ReasonCode::Success, ReasonCode::Success]);
    assert!(session.is_connected());
}

#[test]
fn while_the_log_cannot_be_written_a_v311_qos1_publish_closes_the_connection_mqtt_3_3_5_2() {
    // 3.1.1 cannot refuse a PUBLISH in its acknowledgement and a positive
    // one would claim durability: "It MUST either make a positive
    // acknowledgement, according to the normal QoS rules, or close the
    // Network Connection" [MQTT-3.3.5-2]. QoS 0 is served as usual.
    let t0 = Instant::now();
    for qos in [QoS::AtLeastOnce, QoS::ExactlyOnce] {
        let mut session = connected(t0, V311);
        session.set_store_unavailable(true);
        session.handle_packet(t0, Packet::Publish(publish_in(QoS::AtMostOnce, 0, "a"))).unwrap();
        assert_eq!(
            session.handle_packet(t0, Packet::Publish(publish_in(qos, 1, "a"))),
            Err(SessionError::StoreUnavailable)
        );
        assert!(drain(&mut session, t0).is_empty(), "no acknowledgement, no DISCONNECT in 3.1.1");
        assert!(!session.is_connected());
        let routed = events(&mut session);
        let published: Vec<QoS> = routed
            .iter()
            .filter_map(|e| match e {
                SessionEvent::Publish(m) => Some(m.qos),
                _ => None,
            })
            .collect();
        assert_eq!(published, [QoS::AtMostOnce]);
        assert_eq!(session.counters.refused_store_unavailable, 1);
    }
}
