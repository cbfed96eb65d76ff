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
        refused: Vec::new(),
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

/// [MQTT-3.3.1-6] A new subscriber receives every matching retained
/// message: 5,000 of them, five times the queue's message limit, at QoS 0
/// and at QoS 1 (acknowledged as they come, the window pacing them).
#[test]
fn a_new_subscriber_receives_every_retained_message() {
    const TOPICS: usize = 5_000;
    let broker = Broker::start(2);
    let mut publisher = RawClient::connect(broker.addr);
    publisher.send(&connect_packet("retainer", true, 0));
    assert!(matches!(publisher.recv(), Some(Packet::ConnAck(_))));
    let mut all = Vec::new();
    for i in 0..TOPICS {
        let mut packet =
            publish(&format!("ret/{i}"), QoS::AtLeastOnce, (i % 60_000 + 1) as u16, b"r");
        if let Packet::Publish(publish) = &mut packet {
            publish.retain = true;
        }
        all.push(packet);
    }
    publisher.send_bytes(&encode_all(&all));
    for _ in 0..TOPICS {
        assert!(matches!(publisher.recv(), Some(Packet::PubAck(_))));
    }
    // The PUBACKs come once each message is routed; its store on the shard
    // that owns its topic is one cross-core hop later.
    std::thread::sleep(Duration::from_millis(300));
    for (n, qos) in [QoS::AtMostOnce, QoS::AtLeastOnce].into_iter().enumerate() {
        let mut sub = RawClient::connect(broker.addr);
        sub.send(&connect_packet(&format!("late{n}"), true, 0));
        assert!(matches!(sub.recv(), Some(Packet::ConnAck(_))));
        sub.send(&subscribe(1, ["ret/#".to_string()], qos));
        let mut topics = std::collections::HashSet::new();
        while topics.len() < TOPICS {
            match sub.recv() {
                Some(Packet::Publish(publish)) => {
                    assert!(publish.retain, "[MQTT-3.3.1-8]");
                    if let Some(id) = publish.packet_id {
                        sub.send(&Packet::PubAck(ringmq::protocol::PubResponse::new(id)));
                    }
                    topics.insert(publish.topic.to_string());
                }
                Some(Packet::SubAck(_)) => {}
                other => panic!("{qos:?}: got {other:?} after {} messages", topics.len()),
            }
        }
    }
    assert!(broker.stop().success());
}

/// A CONNECT whose header announces more than `limits.max_connect_size`
/// (64 KiB by default) is refused as soon as its length is read: 200
/// sockets that each start a 983 KB CONNECT are closed at once and leave
/// the broker's memory where it was (before: held until the connect
/// timeout, 189 MB).
#[test]
fn an_oversized_connect_is_refused_before_it_is_buffered() {
    let broker = Broker::start(1);
    let before = broker.rss_kib();
    // The first 64 KiB of a 983,000-byte CONNECT: remaining length
    // 982,996 (4 bytes), then a 3.1.1 variable header and filler.
    let mut connect = vec![0x10, 0xD4, 0xFF, 0x3B];
    connect.extend_from_slice(b"\x00\x04MQTT\x04\xC2\x00\x00");
    connect.resize(64 * 1024, b'p');
    let mut sockets: Vec<RawClient> = (0..200)
        .map(|_| {
            let mut socket = RawClient::connect(broker.addr);
            // The broker may close while this is still being written.
            let _ = socket.stream.write_all(&connect);
            socket
        })
        .collect();
    for (i, socket) in sockets.iter_mut().enumerate() {
        assert!(socket.closed_within(Duration::from_secs(5)), "socket {i} still open");
    }
    let grown = broker.rss_kib().saturating_sub(before);
    assert!(grown < 20 * 1024, "RSS grew by {grown} KiB");
    assert!(broker.stop().success());
}

/// Incomplete CONNECTs share a per-shard budget
/// (`limits.max_pending_connect_bytes`): past it, a connection whose
/// CONNECT needs more is closed; a client whose CONNECT arrives whole is
/// still served.
#[test]
fn incomplete_connects_share_a_budget() {
    let broker = Broker::start_with_config(1, "[limits]\nmax_pending_connect_bytes = 1048576\n");
    let mut connect = bytes::BytesMut::new();
    let Packet::Connect(mut big) = connect_packet("slow", true, 0) else { unreachable!() };
    big.password = Some(bytes::Bytes::from(vec![b'p'; 62_000]));
    big.username = Some("u".into());
    Packet::Connect(big).encode(ProtocolVersion::V3_1_1, &mut connect).unwrap();
    let mut sockets: Vec<RawClient> = (0..40)
        .map(|_| {
            let mut socket = RawClient::connect(broker.addr);
            let _ = socket.stream.write_all(&connect[..60_000]);
            socket
        })
        .collect();
    let closed = sockets
        .iter_mut()
        .filter_map(|socket| socket.closed_within(Duration::from_millis(100)).then_some(()))
        .count();
    // 1 MiB holds about 16 of the 60 KB beginnings; the connect timeout
    // (10 s) is far away.
    assert!((20..40).contains(&closed), "{closed} of 40 incomplete CONNECTs were closed");
    let mut client = RawClient::connect(broker.addr);
    client.send(&connect_packet("whole", true, 0));
    assert!(matches!(client.recv(), Some(Packet::ConnAck(_))));
    assert!(broker.stop().success());
}

/// Drops are told when they happen: a subscriber that never reads, with a
/// queue of 10 messages, loses most of 2,000 QoS 0 messages (QoS 1 ones
/// would hold the publisher back instead: see e2e_overload); the broker
/// logs one warning line for the cause with its count at once, not one
/// per message and not only at shutdown.
#[test]
fn drops_are_logged_when_they_happen_once_per_cause_and_interval() {
    let log = std::env::temp_dir().join(format!("ringmq-drops-{}.log", std::process::id()));
    let config = std::env::temp_dir().join(format!("ringmq-drops-{}.toml", std::process::id()));
    std::fs::write(&config, "[limits]\nmax_queued_messages = 10\nmax_inflight = 1\n").unwrap();
    let broker = Broker::start_logging_to(1, &["--config", config.to_str().unwrap()], &log);
    let _ = std::fs::remove_file(&config);
    let _sleeper = subscriber(&broker, "sleeper", "flood/#");
    let mut publisher = RawClient::connect(broker.addr);
    publisher.send(&connect_packet("flooder", true, 0));
    assert!(matches!(publisher.recv(), Some(Packet::ConnAck(_))));
    let flood: Vec<Packet> =
        (0..2_000).map(|i| publish("flood/x", QoS::AtMostOnce, i % 60_000 + 1, b"m")).collect();
    publisher.send_bytes(&encode_all(&flood));
    let deadline = Instant::now() + Duration::from_secs(5);
    let lines = loop {
        let text = std::fs::read_to_string(&log).unwrap();
        let lines: Vec<String> = text
            .lines()
            .filter(|line| line.contains("messages dropped"))
            .map(String::from)
            .collect();
        if !lines.is_empty() || Instant::now() > deadline {
            break lines;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(broker.stop().success());
    let _ = std::fs::remove_file(&log);
    assert_eq!(lines.len(), 1, "one line per cause per interval: {lines:?}");
    assert!(lines[0].contains("queue_full") && lines[0].contains("dropped=1"), "{}", lines[0]);
}
