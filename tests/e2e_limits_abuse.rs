//! End-to-end tests of the abuse limits of `[limits]`, against the real
//! binary over loopback with raw 3.1.1 and 5.0 clients: each limit hit
//! gets its reason code (5.0) or return code / close (3.1.1), and its
//! counter on `/metrics` moves.
//!
//! The pacing tests assert behaviour: nothing is lost, the connection is
//! not closed for keep alive while the broker does not read it, and the
//! time taken is at least what the configured rate implies (a lower bound
//! set by the configuration, which a slow machine cannot break).

mod common;

use common::counter_total as counter;

use common::{connect_packet, free_port, Broker, RawClient};
use ringmq::protocol::{
    Connect, ConnectProperties, Packet, PacketId, ProtocolVersion, Publish, QoS, ReasonCode,
    Subscribe, Subscription, SubscriptionOptions, TopicFilter, TopicName, Will,
};
use std::time::{Duration, Instant};

/// Waits until `counter(admin, name)` is `expected` (the shards publish
/// their counters to `/metrics` at their tick), or panics after 10 s.
fn await_counter(admin: &str, name: &str, expected: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let value = counter(admin, name);
        if value == expected {
            return;
        }
        assert!(Instant::now() < deadline, "{name} is {value}, not {expected}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A broker with `limits` and an admin listener; returns it and the admin
/// address.
fn broker(shards: usize, limits: &str) -> (Broker, String) {
    let admin = format!("127.0.0.1:{}", free_port());
    let toml = format!("sys_interval_s = 0\n[limits]\n{limits}\n[admin]\nlisten = \"{admin}\"\n");
    (Broker::start_with_config(shards, &toml), admin)
}

fn connect(
    version: ProtocolVersion,
    client_id: &str,
    keep_alive: u16,
    will: Option<&str>,
) -> Packet {
    Packet::Connect(Box::new(Connect {
        version,
        clean_start: true,
        keep_alive,
        client_id: client_id.into(),
        will: will.map(|topic| Will {
            topic: TopicName::new(topic).unwrap(),
            payload: bytes::Bytes::from_static(b"gone"),
            qos: QoS::AtMostOnce,
            retain: false,
            properties: Default::default(),
        }),
        username: None,
        password: None,
        properties: ConnectProperties::default(),
    }))
}

/// A client connected with `version`, its CONNACK checked.
fn connected(
    broker: &Broker,
    version: ProtocolVersion,
    client_id: &str,
    keep_alive: u16,
) -> RawClient {
    let mut client = RawClient::connect(broker.addr);
    client.send(&connect(version, client_id, keep_alive, None));
    let Some(Packet::ConnAck(connack)) = client.recv() else { panic!("no CONNACK") };
    assert_eq!(connack.reason, ReasonCode::Success);
    client
}

/// The CONNACK code a CONNECT gets.
fn connack_reason(broker: &Broker, connect: &Packet) -> ReasonCode {
    let mut client = RawClient::connect(broker.addr);
    client.send(connect);
    match client.recv() {
        Some(Packet::ConnAck(connack)) => connack.reason,
        other => panic!("expected CONNACK, got {other:?}"),
    }
}

fn publish(topic: &str, qos: QoS, id: u16, payload: &[u8], retain: bool) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos,
        retain,
        topic: TopicName::new(topic).unwrap(),
        packet_id: PacketId::new(id),
        properties: Default::default(),
        payload: bytes::Bytes::copy_from_slice(payload),
    })
}

/// SUBSCRIBEs `filters` at QoS 1; returns the SUBACK codes.
fn subscribe(client: &mut RawClient, filters: &[&str]) -> Vec<ReasonCode> {
    client.send(&Packet::Subscribe(Subscribe {
        refused: Vec::new(),
        packet_id: PacketId::new(1).unwrap(),
        properties: Default::default(),
        subscriptions: filters
            .iter()
            .map(|filter| Subscription {
                filter: TopicFilter::new(*filter).unwrap(),
                options: SubscriptionOptions { qos: QoS::AtLeastOnce, ..Default::default() },
            })
            .collect(),
    }));
    match client.recv() {
        Some(Packet::SubAck(suback)) => suback.reasons.to_vec(),
        other => panic!("expected SUBACK, got {other:?}"),
    }
}

#[test]
fn topics_past_max_topic_length_or_levels_get_their_reason_codes() {
    let (broker, admin) = broker(2, "max_topic_length = 32\nmax_topic_levels = 3");
    let deep = "a/b/c/d";
    let long = "x".repeat(33);
    // 5.0 PUBLISH QoS 1 / QoS 2: PUBACK / PUBREC 0x90, the connection stays.
    let mut v5 = connected(&broker, ProtocolVersion::V5, "v5-pub", 30);
    v5.send(&publish(deep, QoS::AtLeastOnce, 1, b"m", false));
    let Some(Packet::PubAck(ack)) = v5.recv() else { panic!("no PUBACK") };
    assert_eq!(ack.reason, ReasonCode::TopicNameInvalid);
    v5.send(&publish(&long, QoS::ExactlyOnce, 2, b"m", false));
    let Some(Packet::PubRec(rec)) = v5.recv() else { panic!("no PUBREC") };
    assert_eq!(rec.reason, ReasonCode::TopicNameInvalid);
    // 5.0 filters: 0x8F for that filter alone.
    assert_eq!(
        subscribe(&mut v5, &["a/b/#", deep]),
        [ReasonCode::GrantedQoS1, ReasonCode::TopicFilterInvalid]
    );
    // 5.0 QoS 0: DISCONNECT 0x90.
    v5.send(&publish(deep, QoS::AtMostOnce, 0, b"m", false));
    let Some(Packet::Disconnect(disconnect)) = v5.recv() else { panic!("no DISCONNECT") };
    assert_eq!(disconnect.reason, ReasonCode::TopicNameInvalid);
    assert!(v5.closed_within(Duration::from_secs(5)));
    // 3.1.1 filter: 0x80; 3.1.1 PUBLISH: closed.
    let mut v311 = connected(&broker, ProtocolVersion::V3_1_1, "v311-pub", 30);
    let codes = subscribe(&mut v311, &[deep, "a"]);
    assert_eq!(codes[0].to_v3_suback_return_code(), 0x80, "{codes:?}");
    assert_eq!(codes[1], ReasonCode::GrantedQoS1);
    v311.send(&publish(deep, QoS::AtLeastOnce, 1, b"m", false));
    assert!(v311.closed_within(Duration::from_secs(5)));
    // Wills: 5.0 CONNACK 0x90, 3.1.1 return code 3.
    let will_v5 = connect(ProtocolVersion::V5, "will-v5", 30, Some(deep));
    assert_eq!(connack_reason(&broker, &will_v5), ReasonCode::TopicNameInvalid);
    let will_v311 = connect(ProtocolVersion::V3_1_1, "will-v311", 30, Some(deep));
    assert_eq!(connack_reason(&broker, &will_v311), ReasonCode::ServerUnavailable);
    // Three 5.0 publishes, two filters, one 3.1.1 publish and two wills.
    await_counter(&admin, "topic_limit_exceeded", 8);
    broker.stop();
}

#[test]
fn client_ids_past_max_client_id_length_get_0x85_or_return_code_2() {
    let (broker, admin) = broker(2, "max_client_id_length = 23");
    let long = "d".repeat(24);
    let v5 = connect(ProtocolVersion::V5, &long, 30, None);
    assert_eq!(connack_reason(&broker, &v5), ReasonCode::ClientIdentifierNotValid);
    // 3.1.1 return code 2, Identifier rejected (decoded as 0x85).
    assert_eq!(
        connack_reason(&broker, &connect_packet(&long, true, 30)),
        ReasonCode::ClientIdentifierNotValid
    );
    // [MQTT-3.1.3-5]: 23 bytes are accepted.
    connected(&broker, ProtocolVersion::V3_1_1, &"d".repeat(23), 30);
    await_counter(&admin, "client_id_too_long", 2);
    broker.stop();
}

#[test]
fn new_retained_topics_past_max_retained_messages_are_delivered_but_not_stored() {
    let (broker, admin) = broker(1, "max_retained_messages = 2");
    let mut live = connected(&broker, ProtocolVersion::V3_1_1, "live", 30);
    assert_eq!(subscribe(&mut live, &["r/#"]), [ReasonCode::GrantedQoS1]);
    let mut publisher = connected(&broker, ProtocolVersion::V5, "retainer", 30);
    for (id, topic) in [(1, "r/1"), (2, "r/2"), (3, "r/3")] {
        publisher.send(&publish(topic, QoS::AtLeastOnce, id, b"kept", true));
        // 5.0: Success, the message was accepted and delivered.
        let Some(Packet::PubAck(ack)) = publisher.recv() else { panic!("no PUBACK") };
        assert_eq!(ack.reason, ReasonCode::Success);
    }
    // Replacing a stored topic still works past the limit.
    publisher.send(&publish("r/1", QoS::AtLeastOnce, 4, b"new", true));
    assert!(matches!(publisher.recv(), Some(Packet::PubAck(_))));
    let mut live_topics = Vec::new();
    while live_topics.len() < 4 {
        if let Some(Packet::Publish(p)) = live.recv() {
            live_topics.push(p.topic.as_str().to_owned());
            if let Some(id) = p.packet_id {
                live.send(&Packet::PubAck(ringmq::protocol::PubResponse {
                    packet_id: id,
                    reason: ReasonCode::Success,
                    properties: Default::default(),
                }));
            }
        }
    }
    assert_eq!(live_topics, ["r/1", "r/2", "r/3", "r/1"], "every PUBLISH delivered");
    // A new subscriber gets the two stored, r/1 replaced.
    let mut late = connected(&broker, ProtocolVersion::V3_1_1, "late", 30);
    late.send(&Packet::Subscribe(Subscribe {
        refused: Vec::new(),
        packet_id: PacketId::new(1).unwrap(),
        properties: Default::default(),
        subscriptions: [Subscription {
            filter: TopicFilter::new("r/#").unwrap(),
            options: SubscriptionOptions::default(),
        }]
        .into_iter()
        .collect(),
    }));
    let mut retained = Vec::new();
    while retained.len() < 2 {
        match late.recv() {
            Some(Packet::Publish(p)) => retained.push((p.topic.as_str().to_owned(), p.payload)),
            Some(Packet::SubAck(_)) => {}
            other => panic!("{other:?}"),
        }
    }
    retained.sort();
    assert_eq!(retained[0], ("r/1".to_owned(), bytes::Bytes::from_static(b"new")));
    assert_eq!(retained[1].0, "r/2");
    assert!(!late.closed_within(Duration::from_millis(300)), "nothing more");
    await_counter(&admin, "retained_limit_exceeded", 1);
    broker.stop();
}

#[test]
fn a_client_past_max_publish_rate_is_paced_and_loses_nothing() {
    // 20 messages/s, a second's worth at once: 60 QoS 0 publishes in one
    // write take at least 2 s to be read, then the QoS 1 one is answered.
    let (broker, admin) = broker(2, "max_publish_rate = 20");
    let mut subscriber = connected(&broker, ProtocolVersion::V3_1_1, "rate-sub", 30);
    subscribe(&mut subscriber, &["paced"]);
    let mut publisher = connected(&broker, ProtocolVersion::V3_1_1, "rate-pub", 30);
    let started = Instant::now();
    let mut burst = bytes::BytesMut::new();
    for _ in 0..60 {
        publish("paced", QoS::AtMostOnce, 0, b"m", false)
            .encode(ProtocolVersion::V3_1_1, &mut burst)
            .unwrap();
    }
    publish("paced", QoS::AtLeastOnce, 1, b"last", false)
        .encode(ProtocolVersion::V3_1_1, &mut burst)
        .unwrap();
    publisher.send_bytes(&burst);
    assert!(matches!(publisher.recv(), Some(Packet::PubAck(_))));
    let elapsed = started.elapsed();
    eprintln!("61 publishes at 20/s took {elapsed:?}");
    assert!(elapsed >= Duration::from_secs(1), "not paced: {elapsed:?}");
    let mut received = 0;
    while received < 61 {
        if let Some(Packet::Publish(p)) = subscriber.recv() {
            received += 1;
            if let Some(id) = p.packet_id {
                subscriber.send(&Packet::PubAck(ringmq::protocol::PubResponse {
                    packet_id: id,
                    reason: ReasonCode::Success,
                    properties: Default::default(),
                }));
            }
        }
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while counter(&admin, "publish_rate_limited") == 0 {
        assert!(Instant::now() < deadline, "publish_rate_limited not counted");
        std::thread::sleep(Duration::from_millis(20));
    }
    broker.stop();
}

#[test]
fn a_paced_client_is_not_closed_for_keep_alive_while_it_is_not_read() {
    // 1,000 bytes/s; a 4,000-byte payload leaves the connection unread for
    // about 3 s, longer than one and a half times its keep alive of 1 s
    // [MQTT-3.1.2-24]: the keep alive is suspended while the broker does
    // not read, so the QoS 1 PUBLISH behind it is answered.
    let (broker, admin) = broker(1, "max_publish_bytes_rate = 1000");
    let mut publisher = connected(&broker, ProtocolVersion::V5, "bytes-pub", 1);
    let started = Instant::now();
    let mut burst = bytes::BytesMut::new();
    publish("big", QoS::AtMostOnce, 0, &[0u8; 4000], false)
        .encode(ProtocolVersion::V5, &mut burst)
        .unwrap();
    publish("big", QoS::AtLeastOnce, 7, b"after", false)
        .encode(ProtocolVersion::V5, &mut burst)
        .unwrap();
    publisher.send_bytes(&burst);
    match publisher.recv() {
        Some(Packet::PubAck(ack)) => assert_eq!(ack.reason, ReasonCode::Success),
        other => panic!("expected PUBACK, got {other:?}"),
    }
    assert!(started.elapsed() >= Duration::from_secs(2), "{:?}", started.elapsed());
    await_counter(&admin, "publish_rate_limited", 1);
    broker.stop();
}

#[test]
fn sighup_applies_new_abuse_limits_at_once() {
    let config =
        std::env::temp_dir().join(format!("ringmq-abuse-reload-{}.toml", std::process::id()));
    let log = std::env::temp_dir().join(format!("ringmq-abuse-reload-{}.log", std::process::id()));
    std::fs::write(&config, "[limits]\nmax_client_id_length = 23\n").unwrap();
    let args = ["--config", config.to_str().unwrap(), "--log", "info"];
    let broker = Broker::start_logging_to(2, &args, &log);
    let id = "r".repeat(30);
    let v5 = connect(ProtocolVersion::V5, &id, 30, None);
    assert_eq!(connack_reason(&broker, &v5), ReasonCode::ClientIdentifierNotValid);
    std::fs::write(&config, "[limits]\nmax_client_id_length = 64\nmax_topic_levels = 2\n").unwrap();
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(broker.pid() as i32, libc::SIGHUP) };
    let deadline = Instant::now() + Duration::from_secs(10);
    let wanted = "limits.max_client_id_length: 23 -> 64";
    while !std::fs::read_to_string(&log).unwrap_or_default().contains(wanted) {
        assert!(Instant::now() < deadline, "no reload line");
        std::thread::sleep(Duration::from_millis(20));
    }
    // The shards take new limits at their next tick (250 ms).
    std::thread::sleep(Duration::from_millis(800));
    let mut client = connected(&broker, ProtocolVersion::V5, &id, 30);
    client.send(&publish("a/b/c", QoS::AtLeastOnce, 1, b"m", false));
    let Some(Packet::PubAck(ack)) = client.recv() else { panic!("no PUBACK") };
    assert_eq!(ack.reason, ReasonCode::TopicNameInvalid);
    assert!(broker.stop().success());
    let _ = std::fs::remove_file(&config);
    let _ = std::fs::remove_file(&log);
}
