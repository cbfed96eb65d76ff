//! End-to-end tests of protocol strictness against the real broker, with a
//! raw socket client: what MQTT 3.1 allows is accepted on a 3.1 connection,
//! and acknowledgements of the wrong kind for a message in flight are
//! protocol violations that close the connection [MQTT-4.8.0-1].

mod common;

use common::{connect_packet, Broker, RawClient};
use ringmq::protocol::{
    Packet, PacketId, PubResponse, Publish, QoS, Subscribe, Subscription, SubscriptionOptions,
    TopicFilter, TopicName,
};
use std::io::Read;
use std::time::Duration;

/// An MQTT 3.1 CONNECT (protocol name "MQIsdp", level 3) with client id
/// "c31", keep alive 60 and the given connect flags.
fn connect_v31(flags: u8) -> Vec<u8> {
    let mut bytes = vec![0x10, 0x11, 0x00, 0x06];
    bytes.extend_from_slice(b"MQIsdp");
    bytes.extend_from_slice(&[0x03, flags, 0x00, 0x3C, 0x00, 0x03]);
    bytes.extend_from_slice(b"c31");
    bytes
}

/// Reads exactly `N` bytes, or panics when the broker closed first.
fn read_exact<const N: usize>(client: &mut RawClient) -> [u8; N] {
    let mut answer = [0u8; N];
    client.stream.read_exact(&mut answer).expect("the broker answers instead of closing");
    answer
}

/// MQTT 3.1 section 2.1 (DUP): a re-sent PUBREL carries DUP=1 (first byte
/// 0x6A); Mosquitto answers it with PUBCOMP, and so must ringmq.
#[test]
fn mqtt31_pubrel_with_dup_is_answered_with_pubcomp() {
    let broker = Broker::start(1);
    let mut client = RawClient::connect(broker.addr);
    client.send_bytes(&connect_v31(0x02));
    assert_eq!(read_exact::<4>(&mut client), [0x20, 0x02, 0x00, 0x00]);
    // QoS 2 PUBLISH, id 1, topic "t", payload "x".
    client.send_bytes(b"\x34\x06\x00\x01t\x00\x01x");
    assert_eq!(read_exact::<4>(&mut client), [0x50, 0x02, 0x00, 0x01], "PUBREC 1");
    // The PUBREL, re-sent with DUP=1 (QoS 1 as 3.1 requires).
    client.send_bytes(b"\x6A\x02\x00\x01");
    assert_eq!(read_exact::<4>(&mut client), [0x70, 0x02, 0x00, 0x01], "PUBCOMP 1");
    assert!(broker.stop().success());
}

/// MQTT 3.1 section 2.1 (DUP): SUBSCRIBE and UNSUBSCRIBE use QoS 1 and
/// carry DUP=1 when re-sent (first bytes 0x8A and 0xAA).
#[test]
fn mqtt31_subscribe_and_unsubscribe_with_dup_are_answered() {
    let broker = Broker::start(1);
    let mut client = RawClient::connect(broker.addr);
    client.send_bytes(&connect_v31(0x02));
    assert_eq!(read_exact::<4>(&mut client), [0x20, 0x02, 0x00, 0x00]);
    // SUBSCRIBE id 7 to "t" at QoS 1, DUP=1.
    client.send_bytes(b"\x8A\x06\x00\x07\x00\x01t\x01");
    assert_eq!(read_exact::<5>(&mut client), [0x90, 0x03, 0x00, 0x07, 0x01], "SUBACK 7");
    // UNSUBSCRIBE id 8 from "t", DUP=1.
    client.send_bytes(b"\xAA\x05\x00\x08\x00\x01t");
    assert_eq!(read_exact::<4>(&mut client), [0xB0, 0x02, 0x00, 0x08], "UNSUBACK 8");
    assert!(broker.stop().success());
}

/// MQTT 3.1 section 3.1 marks bit 0 of the connect flags reserved without
/// requiring it to be 0 (3.1.1 does: [MQTT-3.1.2-3]); a 3.1 CONNECT with it
/// set is accepted.
#[test]
fn mqtt31_connect_with_the_reserved_flag_is_accepted() {
    let broker = Broker::start(1);
    let mut client = RawClient::connect(broker.addr);
    client.send_bytes(&connect_v31(0x03));
    assert_eq!(read_exact::<4>(&mut client), [0x20, 0x02, 0x00, 0x00], "CONNACK accepted");
    client.send_bytes(b"\xC0\x00");
    assert_eq!(read_exact::<2>(&mut client), [0xD0, 0x00], "PINGRESP");
    assert!(broker.stop().success());
}

/// A 3.1.1 subscriber to "q/t" at `qos` that has been sent one PUBLISH at
/// that QoS; returns the broker, the subscriber and the packet id.
fn delivered(qos: QoS) -> (Broker, RawClient, PacketId) {
    let broker = Broker::start(1);
    let mut subscriber = RawClient::connect(broker.addr);
    subscriber.send(&connect_packet("sub", true, 0));
    assert!(matches!(subscriber.recv(), Some(Packet::ConnAck(_))));
    subscriber.send(&Packet::Subscribe(Subscribe {
        refused: Vec::new(),
        packet_id: PacketId::new(1).unwrap(),
        properties: Default::default(),
        subscriptions: [Subscription {
            filter: TopicFilter::new("q/t").unwrap(),
            options: SubscriptionOptions { qos, ..Default::default() },
        }]
        .into_iter()
        .collect(),
    }));
    assert!(matches!(subscriber.recv(), Some(Packet::SubAck(_))));
    let mut publisher = RawClient::connect(broker.addr);
    publisher.send(&connect_packet("pub", true, 0));
    assert!(matches!(publisher.recv(), Some(Packet::ConnAck(_))));
    publisher.send(&Packet::Publish(Publish {
        dup: false,
        qos,
        retain: false,
        topic: TopicName::new("q/t").unwrap(),
        packet_id: PacketId::new(1),
        properties: Default::default(),
        payload: bytes::Bytes::from_static(b"m"),
    }));
    let Some(Packet::Publish(publish)) = subscriber.recv() else { panic!("no delivery") };
    assert_eq!(publish.qos, qos);
    (broker, subscriber, publish.packet_id.expect("QoS > 0 has a packet id"))
}

/// Sends `ack` and asserts that the broker closes the connection without
/// answering it ([MQTT-4.8.0-1]: a 3.1.1 connection is just closed).
fn assert_violation(mut client: RawClient, ack: Packet) {
    client.send(&ack);
    assert!(client.closed_within(Duration::from_secs(5)), "{ack:?} left the connection open");
}

/// [MQTT-4.3.2-1] a QoS 1 PUBLISH is acknowledged by PUBACK; a PUBREC for it
/// is a protocol violation [MQTT-4.8.0-1].
#[test]
fn mqtt_4_8_0_1_pubrec_for_a_qos1_delivery_closes_the_connection() {
    let (broker, client, id) = delivered(QoS::AtLeastOnce);
    assert_violation(client, Packet::PubRec(PubResponse::new(id)));
    assert!(broker.stop().success());
}

/// [MQTT-4.3.2-1] a QoS 1 PUBLISH is acknowledged by PUBACK; a PUBCOMP for
/// it is a protocol violation [MQTT-4.8.0-1].
#[test]
fn mqtt_4_8_0_1_pubcomp_for_a_qos1_delivery_closes_the_connection() {
    let (broker, client, id) = delivered(QoS::AtLeastOnce);
    assert_violation(client, Packet::PubComp(PubResponse::new(id)));
    assert!(broker.stop().success());
}

/// [MQTT-4.3.3-1] a QoS 2 PUBLISH is acknowledged by PUBREC; a PUBACK for it
/// is a protocol violation [MQTT-4.8.0-1].
#[test]
fn mqtt_4_8_0_1_puback_for_a_qos2_delivery_closes_the_connection() {
    let (broker, client, id) = delivered(QoS::ExactlyOnce);
    assert_violation(client, Packet::PubAck(PubResponse::new(id)));
    assert!(broker.stop().success());
}

/// [MQTT-4.3.3-1] a QoS 2 PUBLISH is acknowledged by PUBREC; a PUBCOMP
/// before it (there was no PUBREL to complete) is a protocol violation
/// [MQTT-4.8.0-1].
#[test]
fn mqtt_4_8_0_1_pubcomp_for_a_qos2_delivery_awaiting_pubrec_closes_the_connection() {
    let (broker, client, id) = delivered(QoS::ExactlyOnce);
    assert_violation(client, Packet::PubComp(PubResponse::new(id)));
    assert!(broker.stop().success());
}

/// [MQTT-4.3.3-1] a PUBREL is acknowledged by PUBCOMP; a PUBACK for it is a
/// protocol violation [MQTT-4.8.0-1].
#[test]
fn mqtt_4_8_0_1_puback_for_a_pubrel_closes_the_connection() {
    let (broker, mut client, id) = delivered(QoS::ExactlyOnce);
    client.send(&Packet::PubRec(PubResponse::new(id)));
    let Some(Packet::PubRel(pubrel)) = client.recv() else { panic!("no PUBREL") };
    assert_eq!(pubrel.packet_id, id);
    assert_violation(client, Packet::PubAck(PubResponse::new(id)));
    assert!(broker.stop().success());
}
