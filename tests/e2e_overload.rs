//! End-to-end tests of overload without loss (issue 15 item 5): a QoS 1
//! message a publisher got a PUBACK for reaches every online subscriber
//! entitled to it, however slowly that subscriber reads; the broker slows
//! the publishers instead (it stops reading their sockets). A subscriber
//! that stops reading slows the publishers of its own topics only, until
//! `slow_consumer_timeout_ms` disconnects it.
//!
//! The slow subscriber is an independent client (rumqttc); the publishers
//! are raw sockets driven with ringmq's codec, which write a burst and
//! count their PUBACKs. Counts are asserted, never timings.

mod common;

use common::{client_id_on_shard, counter_at_least, counter_total, free_port, wait_ready, Broker};
use common::{metric_sum, RawClient};
use ringmq::protocol::{
    Connect, ConnectProperties, Packet, PacketId, ProtocolVersion, Publish, QoS, ReasonCode,
    Subscribe, Subscription, SubscriptionOptions, TopicFilter, TopicName,
};
use std::collections::HashSet;
use std::io::Write;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(60);

/// A broker with 2 shards, `limits` in its `[limits]` and an admin
/// listener; returns it and the admin address.
fn broker(limits: &str) -> (Broker, String) {
    let admin = format!("127.0.0.1:{}", free_port());
    let toml = format!("sys_interval_s = 0\n[limits]\n{limits}\n[admin]\nlisten = \"{admin}\"\n");
    let broker = Broker::start_with_config(2, &toml);
    wait_ready(&admin);
    (broker, admin)
}

/// A raw client of `version` connected (clean) as `client_id`.
fn raw_client(broker: &Broker, client_id: &str, version: ProtocolVersion) -> RawClient {
    let mut client = RawClient::connect(broker.addr);
    let properties = ConnectProperties::default();
    client.send(&Packet::Connect(Box::new(Connect {
        version,
        clean_start: true,
        keep_alive: 0,
        client_id: client_id.into(),
        will: None,
        username: None,
        password: None,
        properties,
    })));
    assert!(matches!(client.recv(), Some(Packet::ConnAck(_))));
    client
}

fn subscribe(client: &mut RawClient, filter: &str) {
    client.send(&Packet::Subscribe(Subscribe {
        refused: Vec::new(),
        packet_id: PacketId::new(1).unwrap(),
        properties: Default::default(),
        subscriptions: vec![Subscription {
            filter: TopicFilter::new(filter).unwrap(),
            options: SubscriptionOptions { qos: QoS::AtLeastOnce, ..Default::default() },
        }]
        .into(),
    }));
    assert!(matches!(client.recv(), Some(Packet::SubAck(_))));
}

/// `count` QoS 1 PUBLISH packets to `topic`, payload `"{name}/{i}"`, as
/// one burst of bytes.
fn burst(name: &str, topic: &str, count: u16) -> Vec<u8> {
    let mut out = bytes::BytesMut::new();
    for i in 1..=count {
        Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: TopicName::new(topic).unwrap(),
            packet_id: PacketId::new(i),
            properties: Default::default(),
            payload: format!("{name}/{i}").into(),
        })
        .encode(ProtocolVersion::V3_1_1, &mut out)
        .unwrap();
    }
    out.to_vec()
}

/// A publisher thread: writes `count` QoS 1 publishes to `topic` at once,
/// then reads PUBACKs until it has them all; returns how many came (all
/// of them, unless the connection ended).
fn publisher(
    broker: &Broker,
    client_id: String,
    topic: &'static str,
    count: u16,
) -> std::thread::JoinHandle<usize> {
    let mut client = raw_client(broker, &client_id, ProtocolVersion::V3_1_1);
    std::thread::spawn(move || {
        let bytes = burst(&client_id, topic, count);
        // A second thread writes: the broker may stop reading this socket
        // while its PUBACKs must still be read here.
        let mut writer = client.stream.try_clone().unwrap();
        let writing = std::thread::spawn(move || writer.write_all(&bytes).unwrap());
        client.stream.set_read_timeout(Some(WAIT)).unwrap();
        let mut acked = 0;
        while acked < usize::from(count) {
            match client.recv() {
                Some(Packet::PubAck(_)) => acked += 1,
                Some(other) => panic!("unexpected {other:?}"),
                None => break,
            }
        }
        writing.join().unwrap();
        acked
    })
}

/// 100 publishers (on both shards) write 100 QoS 1 messages each at once
/// to one subscriber (rumqttc) that reads slowly, with a queue limit of
/// 100: every acknowledged message arrives exactly once, none is dropped,
/// and the publishers were slowed (held) to get there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_in_qos1_overload_delivers_every_acknowledged_message() {
    const PUBLISHERS: usize = 100;
    const EACH: u16 = 100;
    let (broker, admin) = broker("max_queued_messages = 100\nslow_consumer_timeout_ms = 120000");
    let mut options =
        rumqttc::MqttOptions::new(client_id_on_shard("slow", 1, 2), "127.0.0.1", broker.port());
    options.set_keep_alive(Duration::from_secs(60));
    let (client, mut events) = rumqttc::AsyncClient::new(options, 100);
    client.subscribe("fan/in", rumqttc::QoS::AtLeastOnce).await.unwrap();
    loop {
        let event = tokio::time::timeout(WAIT, events.poll()).await.unwrap().unwrap();
        if let rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_)) = event {
            break;
        }
    }
    let publishers: Vec<_> =
        (0..PUBLISHERS).map(|i| publisher(&broker, format!("pub-{i}"), "fan/in", EACH)).collect();
    // The subscriber reads at a limited rate: a pause every ten messages
    // (rumqttc acknowledges each as it is polled).
    let mut received = HashSet::new();
    let mut duplicates = 0;
    let deadline = Instant::now() + Duration::from_secs(120);
    while received.len() < PUBLISHERS * usize::from(EACH) && Instant::now() < deadline {
        let event = tokio::time::timeout(WAIT, events.poll()).await.unwrap().unwrap();
        if let rumqttc::Event::Incoming(rumqttc::Packet::Publish(publish)) = event {
            if !received.insert(publish.payload) {
                duplicates += 1;
            }
            if received.len() % 10 == 0 {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
    }
    let acked: usize = publishers.into_iter().map(|p| p.join().unwrap()).sum();
    assert_eq!(acked, PUBLISHERS * usize::from(EACH), "every publish acknowledged");
    assert_eq!(received.len(), acked, "received == acknowledged: nothing lost");
    assert_eq!(duplicates, 0);
    let metrics = common::http_get(&admin, "/metrics");
    assert_eq!(metric_sum(&metrics, "ringmq_dropped_queue_full_total"), 0);
    assert_eq!(metric_sum(&metrics, "ringmq_deliveries_dropped_total"), 0);
    // Slowed: the subscriber went past its limit and publishers were held.
    assert!(metric_sum(&metrics, "ringmq_overloads_total") >= 1, "never past its limit");
    assert!(metric_sum(&metrics, "ringmq_publishers_held_total") >= 1, "no publisher held");
    assert_eq!(metric_sum(&metrics, "ringmq_slow_consumers_disconnected_total"), 0);
    drop(client);
    assert!(broker.stop().success());
}

/// Reads PUBACKs from `client` until none comes for `quiet`; returns how
/// many.
fn pubacks_until_quiet(client: &mut RawClient, quiet: Duration) -> usize {
    client.stream.set_read_timeout(Some(quiet)).unwrap();
    let mut acked = 0;
    let mut chunk = [0u8; 4096];
    loop {
        match std::io::Read::read(&mut client.stream, &mut chunk) {
            // PUBACKs only: 4 bytes each.
            Ok(n) if n > 0 => acked += n / 4,
            _ => return acked,
        }
    }
}

/// A subscriber that stops reading (never slow_consumer_timeout here) holds
/// back the publisher of its topic, whose PUBACKs stop short; a healthy
/// subscriber of another topic on the same shard, fed by a publisher on
/// the other shard, still gets every message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_subscriber_does_not_stall_a_healthy_one_on_another_topic() {
    let (broker, admin) = broker("max_queued_messages = 50\nslow_consumer_timeout_ms = 0");
    let mut stalled =
        raw_client(&broker, &client_id_on_shard("stalled", 1, 2), ProtocolVersion::V3_1_1);
    subscribe(&mut stalled, "slow/#");
    let mut options =
        rumqttc::MqttOptions::new(client_id_on_shard("healthy", 1, 2), "127.0.0.1", broker.port());
    options.set_keep_alive(Duration::from_secs(60));
    let (client, mut events) = rumqttc::AsyncClient::new(options, 100);
    client.subscribe("fast", rumqttc::QoS::AtLeastOnce).await.unwrap();
    loop {
        let event = tokio::time::timeout(WAIT, events.poll()).await.unwrap().unwrap();
        if let rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_)) = event {
            break;
        }
    }

    // The slow topic's publisher (shard 0) is held once the stalled
    // subscriber's window (32) and queue (50) are full. It writes in small
    // bursts: what one read brings is all routed (and acknowledged) before
    // the subscriber's shard can tell this one to hold.
    let mut slow =
        raw_client(&broker, &client_id_on_shard("slowpub", 0, 2), ProtocolVersion::V3_1_1);
    let mut writer = slow.stream.try_clone().unwrap();
    let writing = std::thread::spawn(move || {
        let bytes = burst("slowpub", "slow/x", 1000);
        for chunk in bytes.chunks(bytes.len() / 50) {
            writer.write_all(chunk).unwrap();
            std::thread::sleep(Duration::from_millis(5));
        }
    });
    assert!(counter_at_least(&admin, "overloads", 1) >= 1);
    assert!(counter_at_least(&admin, "publishers_held", 1) >= 1);
    writing.join().unwrap();
    let held_at = pubacks_until_quiet(&mut slow, Duration::from_secs(1));
    assert!(held_at < 1000, "the slow topic's publisher was never held ({held_at} acked)");

    // Meanwhile the other topic flows, across the shards, in full.
    let fast = publisher(&broker, client_id_on_shard("fastpub", 0, 2), "fast", 200);
    let mut received = 0;
    while received < 200 {
        let event = tokio::time::timeout(WAIT, events.poll()).await.unwrap().unwrap();
        if let rumqttc::Event::Incoming(rumqttc::Packet::Publish(publish)) = event {
            assert_eq!(publish.topic, "fast");
            received += 1;
        }
    }
    assert_eq!(fast.join().unwrap(), 200);
    // The stalled one still holds its publisher, and nothing was dropped.
    assert_eq!(pubacks_until_quiet(&mut slow, Duration::from_millis(300)), 0);
    assert_eq!(counter_total(&admin, "dropped_queue_full"), 0);
    assert_eq!(counter_total(&admin, "slow_consumers_disconnected"), 0);
    drop((client, stalled));
    assert!(broker.stop().success());
}

/// A v5 subscriber that stops reading is disconnected after
/// `slow_consumer_timeout_ms` with DISCONNECT 0x97 Quota exceeded
/// (5.0 §3.14.2.1), counted; its publisher is then released and every
/// one of its publishes acknowledged.
#[test]
fn slow_consumer_timeout_disconnects_with_0x97_and_releases_the_publishers() {
    let (broker, admin) = broker("max_queued_messages = 50\nslow_consumer_timeout_ms = 1000");
    let mut stalled =
        raw_client(&broker, &client_id_on_shard("stalled", 1, 2), ProtocolVersion::V5);
    subscribe(&mut stalled, "slow/#");
    // On the subscriber's shard: held as soon as the queue is full.
    let held = publisher(&broker, client_id_on_shard("slowpub", 1, 2), "slow/x", 500);
    // The stalled client reads now: its 32 messages in flight, then the
    // server's DISCONNECT, then the end of the connection.
    assert!(counter_at_least(&admin, "slow_consumers_disconnected", 1) == 1);
    stalled.stream.set_read_timeout(Some(WAIT)).unwrap();
    let mut publishes = 0;
    let reason = loop {
        match stalled.recv() {
            Some(Packet::Publish(_)) => publishes += 1,
            Some(Packet::Disconnect(disconnect)) => break disconnect.reason,
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(reason, ReasonCode::QuotaExceeded);
    assert_eq!(publishes, 32, "the window");
    assert_eq!(held.join().unwrap(), 500, "released: every publish acknowledged");
    assert!(counter_at_least(&admin, "dropped_slow_consumer", 1) >= 1);
    assert!(broker.stop().success());
}
