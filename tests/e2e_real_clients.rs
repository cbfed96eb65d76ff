//! End-to-end tests of how real devices and gateways behave rather than
//! how polite clients do: packets pipelined behind CONNECT, sensors that
//! write everything at once and hang up, subscribes of 100,000 filters.
//! Raw sockets against the real `ringmq` binary.

mod common;

use common::{client_id_on_shard, connect_packet, Broker, RawClient};
use ringmq::protocol::{
    Disconnect, Packet, PacketId, ProtocolVersion, Publish, QoS, Subscribe, Subscription,
    SubscriptionOptions, TopicFilter, TopicName,
};
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Encodes `packets` (3.1.1) back to back, as one write would carry them.
fn encode_all(packets: &[Packet]) -> Vec<u8> {
    let mut out = bytes::BytesMut::new();
    for packet in packets {
        packet.encode(ProtocolVersion::V3_1_1, &mut out).unwrap();
    }
    out.to_vec()
}

fn subscribe(packet_id: u16, filters: impl IntoIterator<Item = String>, qos: QoS) -> Packet {
    Packet::Subscribe(Subscribe {
        packet_id: PacketId::new(packet_id).unwrap(),
        properties: Default::default(),
        subscriptions: filters
            .into_iter()
            .map(|filter| Subscription {
                filter: TopicFilter::new(filter).unwrap(),
                options: SubscriptionOptions { qos, ..Default::default() },
            })
            .collect(),
    })
}

fn publish(topic: &str, qos: QoS, id: u16, payload: &[u8]) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos,
        retain: false,
        topic: TopicName::new(topic).unwrap(),
        packet_id: (qos != QoS::AtMostOnce).then(|| PacketId::new(id).unwrap()),
        properties: Default::default(),
        payload: bytes::Bytes::copy_from_slice(payload),
    })
}

fn disconnect() -> Packet {
    Packet::Disconnect(Disconnect::default())
}

/// A subscriber to `filter`, its SUBACK received.
fn subscriber(broker: &Broker, client_id: &str, filter: &str) -> RawClient {
    let mut client = RawClient::connect(broker.addr);
    client.send(&connect_packet(client_id, true, 0));
    assert!(matches!(client.recv(), Some(Packet::ConnAck(_))));
    client.send(&subscribe(1, [filter.to_string()], QoS::AtLeastOnce));
    assert!(matches!(client.recv(), Some(Packet::SubAck(_))));
    client
}

/// MQTT 3.1.1 section 3.1.4: "Clients are allowed to send further Control
/// Packets immediately after sending a CONNECT Packet; Clients need not
/// wait for a CONNACK Packet to arrive from the Server." A SUBSCRIBE in the
/// same write as the CONNECT is answered without the client sending more,
/// on the accepting shard and after a hand-off (client ids homed on every
/// shard).
#[test]
fn subscribe_in_the_same_write_as_connect_is_answered() {
    for shards in [1, 2] {
        let broker = Broker::start(shards);
        for i in 0..8 {
            let client_id = client_id_on_shard(&format!("pipelined{i}"), i % shards, shards);
            let mut client = RawClient::connect(broker.addr);
            client.send_bytes(&encode_all(&[
                connect_packet(&client_id, true, 0),
                subscribe(1, ["a/b".to_string()], QoS::AtMostOnce),
            ]));
            assert!(matches!(client.recv(), Some(Packet::ConnAck(_))), "{shards} shards");
            assert!(
                matches!(client.recv(), Some(Packet::SubAck(_))),
                "{shards} shards, {client_id}: no SUBACK without further input"
            );
        }
        assert!(broker.stop().success());
    }
}

/// A fire-and-forget sensor writes CONNECT, PUBLISH QoS 0, PUBLISH QoS 1
/// and DISCONNECT in one write and closes the socket: both messages are
/// delivered (the close after DISCONNECT ends nothing that came before it).
#[test]
fn a_sensor_that_writes_everything_at_once_and_hangs_up_is_heard() {
    for shards in [1, 2] {
        let broker = Broker::start(shards);
        let mut sub = subscriber(&broker, "listener", "sensors/#");
        let sensors = 10;
        for i in 0..sensors {
            let client_id = client_id_on_shard(&format!("sensor{i}"), i % shards, shards);
            let mut sensor = std::net::TcpStream::connect(broker.addr).unwrap();
            sensor
                .write_all(&encode_all(&[
                    connect_packet(&client_id, true, 0),
                    publish(&format!("sensors/{i}/q0"), QoS::AtMostOnce, 0, b"q0"),
                    publish(&format!("sensors/{i}/q1"), QoS::AtLeastOnce, 1, b"q1"),
                    disconnect(),
                ]))
                .unwrap();
            drop(sensor);
        }
        let mut received = Vec::new();
        while received.len() < 2 * sensors {
            match sub.recv() {
                Some(Packet::Publish(publish)) => received.push(publish.topic.to_string()),
                other => panic!("{shards} shards: got {other:?} after {received:?}"),
            }
        }
        received.sort();
        let mut expected: Vec<String> = (0..sensors)
            .flat_map(|i| [format!("sensors/{i}/q0"), format!("sensors/{i}/q1")])
            .collect();
        expected.sort();
        assert_eq!(received, expected, "{shards} shards");
        assert!(broker.stop().success());
    }
}

/// Subscribing is linear, and a SUBSCRIBE of 100,000 filters does not stall
/// the other clients of its shard: it is indexed in turns, the SUBACK
/// coming after the last. A canary client on the same shard keeps its round
/// trip meanwhile. Relative, not timed: before, the canary stood still for
/// the whole subscribe (its worst round trip was the time to the SUBACK,
/// 11 s); now its worst round trip is a small part of it.
#[test]
fn a_subscribe_of_100000_filters_does_not_stall_its_shard() {
    let broker = Broker::start(2);
    let canary_id = client_id_on_shard("canary", 0, 2);
    let mut canary = subscriber(&broker, &canary_id, "canary");
    let stop = Arc::new(AtomicBool::new(false));
    let round_trips = Arc::new(Mutex::new(Vec::new()));
    let thread = std::thread::spawn({
        let (stop, round_trips) = (Arc::clone(&stop), Arc::clone(&round_trips));
        move || {
            while !stop.load(Ordering::Relaxed) {
                let start = Instant::now();
                canary.send(&publish("canary", QoS::AtMostOnce, 0, b"x"));
                assert!(matches!(canary.recv(), Some(Packet::Publish(_))));
                round_trips.lock().unwrap().push((start, start.elapsed()));
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    });
    let mut big = RawClient::connect(broker.addr);
    big.send(&connect_packet(&client_id_on_shard("big", 0, 2), true, 0));
    assert!(matches!(big.recv(), Some(Packet::ConnAck(_))));
    let filters = (0..100_000).map(|i| format!("s/{i}"));
    let mut packet = bytes::BytesMut::new();
    subscribe(1, filters, QoS::AtMostOnce).encode(ProtocolVersion::V3_1_1, &mut packet).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let start = Instant::now();
    big.send_bytes(&packet);
    match big.recv() {
        Some(Packet::SubAck(suback)) => assert_eq!(suback.reasons.len(), 100_000),
        other => panic!("expected SUBACK, got {other:?}"),
    }
    let subscribe_time = start.elapsed();
    stop.store(true, Ordering::Relaxed);
    thread.join().unwrap();
    let round_trips = round_trips.lock().unwrap();
    let during: Vec<Duration> = round_trips
        .iter()
        .filter(|(at, took)| *at + *took >= start && *at <= start + subscribe_time)
        .map(|(_, took)| *took)
        .collect();
    let worst = during.iter().max().copied().unwrap_or(subscribe_time);
    assert!(during.len() >= 3, "the canary got {} round trips in {subscribe_time:?}", during.len());
    assert!(
        worst < subscribe_time / 2,
        "the canary stood still for {worst:?} of the {subscribe_time:?} subscribe"
    );
    assert!(broker.stop().success());
}
