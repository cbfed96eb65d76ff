//! End-to-end tests of MQTT 5.0 over loopback, beside 3.1.1 on the same
//! listener: Python paho-mqtt 2.x with `protocol=MQTTv5`, rumqttc's v5
//! client, and raw packets where byte-level control is needed (DISCONNECT
//! reason codes sent by the server).

mod common;

use common::{client_id_on_shard, Broker, RawClient};
use ringmq::protocol::{Connect, ConnectProperties, Packet, ProtocolVersion, ReasonCode};
use rumqttc::v5::mqttbytes::v5::{Packet as V5Packet, PublishProperties};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, ConnectionError, Event, EventLoop, MqttOptions, StateError};
use std::process::Command;
use std::time::Duration;
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(10);

fn connect_v5(client_id: &str, properties: ConnectProperties) -> Packet {
    Packet::Connect(Box::new(Connect {
        version: ProtocolVersion::V5,
        clean_start: true,
        keep_alive: 30,
        client_id: client_id.into(),
        will: None,
        username: None,
        password: None,
        properties,
    }))
}

/// A raw 5.0 client, its CONNACK read and checked.
fn raw_v5(broker: &Broker, client_id: &str) -> RawClient {
    let mut client = RawClient::connect(broker.addr);
    client.send(&connect_v5(client_id, ConnectProperties::default()));
    let Some(Packet::ConnAck(connack)) = client.recv() else { panic!("no CONNACK") };
    assert_eq!(connack.reason, ReasonCode::Success);
    client
}

/// The reason code of the DISCONNECT the server sends next.
fn disconnect_code(client: &mut RawClient) -> ReasonCode {
    loop {
        match client.recv() {
            Some(Packet::Disconnect(disconnect)) => return disconnect.reason,
            Some(_) => continue,
            None => panic!("closed without DISCONNECT"),
        }
    }
}

#[test]
fn paho_mqtt_python_v5_client() {
    let probe = Command::new("python3").args(["-c", "import paho.mqtt.client"]).output();
    if !probe.is_ok_and(|output| output.status.success()) {
        assert!(std::env::var_os("CI").is_none(), "paho-mqtt is required on CI");
        eprintln!("SKIPPED: paho-mqtt is not installed");
        return;
    }
    let broker = Broker::start(2);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/paho_client_v5.py");
    // The publisher and the 3.1.1 subscriber on shard 0, the 5.0
    // subscriber and the 3.1.1 publisher on shard 1.
    let ids = [("pub5", 0), ("sub5", 1), ("sub3", 0), ("pub3", 1)]
        .map(|(prefix, shard)| client_id_on_shard(prefix, shard, 2));
    let output = Command::new("python3")
        .arg(script)
        .arg(broker.port().to_string())
        .args(ids)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "paho v5 test failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(broker.stop().success());
}

async fn rumqttc_connect(broker: &Broker, id: &str) -> (AsyncClient, EventLoop) {
    let mut options = MqttOptions::new(id, "127.0.0.1", broker.port());
    options.set_keep_alive(Duration::from_secs(30));
    let (client, mut events) = AsyncClient::new(options, 100);
    loop {
        let event = timeout(WAIT, events.poll()).await.expect("connack in time").expect("poll");
        if let Event::Incoming(V5Packet::ConnAck(ack)) = event {
            let properties = ack.properties.expect("v5 CONNACK properties");
            assert_eq!(properties.receive_max, Some(32));
            assert_eq!(properties.max_packet_size, Some(1_048_576));
            return (client, events);
        }
    }
}

async fn rumqttc_next_publish(events: &mut EventLoop) -> rumqttc::v5::mqttbytes::v5::Publish {
    loop {
        let event = timeout(WAIT, events.poll()).await.expect("publish in time").expect("poll");
        if let Event::Incoming(V5Packet::Publish(publish)) = event {
            return publish;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rumqttc_v5_properties_cross_shards_and_takeover_says_0x8e() {
    let broker = Broker::start(2);
    let (sub, mut sub_events) = rumqttc_connect(&broker, &client_id_on_shard("rsub", 0, 2)).await;
    let (publisher, mut pub_events) =
        rumqttc_connect(&broker, &client_id_on_shard("rpub", 1, 2)).await;
    sub.subscribe("r5/#", QoS::AtLeastOnce).await.unwrap();
    loop {
        let event = timeout(WAIT, sub_events.poll()).await.unwrap().unwrap();
        if let Event::Incoming(V5Packet::SubAck(_)) = event {
            break;
        }
    }
    tokio::spawn(async move { while pub_events.poll().await.is_ok() {} });
    let properties = PublishProperties {
        user_properties: vec![("a".into(), "1".into()), ("b".into(), "2".into())],
        content_type: Some("application/json".into()),
        ..Default::default()
    };
    publisher
        .publish_with_properties("r5/x", QoS::AtLeastOnce, false, "{}", properties)
        .await
        .unwrap();
    let got = rumqttc_next_publish(&mut sub_events).await;
    assert_eq!(&got.payload[..], b"{}");
    let properties = got.properties.expect("properties forwarded");
    assert_eq!(properties.user_properties, [("a".into(), "1".into()), ("b".into(), "2".into())]);
    assert_eq!(properties.content_type.as_deref(), Some("application/json"));

    // [MQTT-3.1.4-3] a second connection with the same id: the first is sent
    // DISCONNECT 0x8E before it is closed.
    let (_twin, mut twin_events) =
        rumqttc_connect(&broker, &client_id_on_shard("rsub", 0, 2)).await;
    tokio::spawn(async move { while twin_events.poll().await.is_ok() {} });
    let reason = loop {
        match timeout(WAIT, sub_events.poll()).await.expect("disconnect in time") {
            Err(ConnectionError::MqttState(StateError::ServerDisconnect {
                reason_code, ..
            })) => break reason_code,
            Err(other) => panic!("{other:?}"),
            Ok(_) => continue,
        }
    };
    assert_eq!(reason, rumqttc::v5::mqttbytes::v5::DisconnectReasonCode::SessionTakenOver);
    assert!(broker.stop().success());
}

#[test]
fn a_packet_above_the_maximum_packet_size_gets_disconnect_0x95() {
    let broker = Broker::start(1);
    let mut client = raw_v5(&broker, "big");
    // A PUBLISH announcing 2 MiB, above the default max_packet_size (1 MiB).
    client.send_bytes(&[0x30, 0x80, 0x80, 0x80, 0x01]);
    assert_eq!(disconnect_code(&mut client), ReasonCode::PacketTooLarge);
    assert!(client.closed_within(Duration::from_secs(5)));
}

#[test]
fn malformed_input_on_a_v5_connection_gets_disconnect_0x81() {
    let broker = Broker::start(1);
    let mut client = raw_v5(&broker, "garbled");
    // Packet type 0 is reserved.
    client.send_bytes(&[0x00, 0x00]);
    assert_eq!(disconnect_code(&mut client), ReasonCode::MalformedPacket);
    assert!(client.closed_within(Duration::from_secs(5)));
}

#[test]
fn sigterm_sends_every_v5_client_disconnect_0x8b() {
    let broker = Broker::start(2);
    let mut clients: Vec<RawClient> =
        (0..2).map(|shard| raw_v5(&broker, &client_id_on_shard("bye", shard, 2))).collect();
    broker.terminate();
    for client in &mut clients {
        assert_eq!(disconnect_code(client), ReasonCode::ServerShuttingDown);
    }
    assert!(broker.wait_exit().success());
}

#[test]
fn a_payload_that_is_not_the_utf8_it_claims_gets_0x99() {
    // [MQTT-3.3.2-4]: a PUBLISH with Payload Format Indicator 1 whose
    // payload is not UTF-8 is refused in its PUBACK (QoS 1) or with a
    // DISCONNECT (QoS 0), and not routed.
    let broker = Broker::start(1);
    let mut client = raw_v5(&broker, "pfi");
    // QoS 1, topic "t", packet id 1, properties {Payload Format Indicator:
    // 1}, payload 0xFF.
    client.send_bytes(&[0x32, 9, 0, 1, b't', 0, 1, 2, 1, 1, 0xff]);
    let Some(Packet::PubAck(ack)) = client.recv() else { panic!("no PUBACK") };
    assert_eq!(ack.reason, ReasonCode::PayloadFormatInvalid);
    // QoS 0: nothing to answer in, so the connection ends.
    client.send_bytes(&[0x30, 7, 0, 1, b't', 2, 1, 1, 0xff]);
    assert_eq!(disconnect_code(&mut client), ReasonCode::PayloadFormatInvalid);
    assert!(client.closed_within(Duration::from_secs(5)));
}

#[test]
fn a_repeated_topic_reaches_a_v5_subscriber_as_a_topic_alias() {
    // 5.0 §3.3.2.3.4: the subscriber accepts 4 aliases; the first message
    // on a topic sets alias 1, the next ones carry it with an empty topic.
    let broker = Broker::start(2);
    let sub_id = client_id_on_shard("aliased", 1, 2);
    let mut subscriber = RawClient::connect(broker.addr);
    let properties = ConnectProperties { topic_alias_maximum: Some(4), ..Default::default() };
    subscriber.send(&connect_v5(&sub_id, properties));
    let Some(Packet::ConnAck(_)) = subscriber.recv() else { panic!("no CONNACK") };
    // SUBSCRIBE id 1, no properties, "alias/#" at QoS 0.
    subscriber.send_bytes(&[0x82, 13, 0, 1, 0, 0, 7, b'a', b'l', b'i', b'a', b's', b'/', b'#', 0]);
    let Some(Packet::SubAck(_)) = subscriber.recv() else { panic!("no SUBACK") };
    let mut publisher = raw_v5(&broker, &client_id_on_shard("aliaspub", 0, 2));
    // Three QoS 0 PUBLISHes to "alias/x", no properties, payload "p".
    let publish = [0x30, 11, 0, 7, b'a', b'l', b'i', b'a', b's', b'/', b'x', 0, b'p'];
    for _ in 0..3 {
        publisher.send_bytes(&publish);
    }
    let received: Vec<(String, Option<u16>)> = (0..3)
        .map(|_| match subscriber.recv() {
            Some(Packet::Publish(publish)) => {
                assert_eq!(&publish.payload[..], b"p");
                let alias = publish.properties.topic_alias.map(|alias| alias.get());
                (publish.topic.as_str().to_owned(), alias)
            }
            other => panic!("expected PUBLISH, got {other:?}"),
        })
        .collect();
    let expected = [("alias/x", 1), ("", 1), ("", 1)].map(|(t, a)| (t.to_owned(), Some(a)));
    assert_eq!(received, expected);
    assert!(broker.stop().success());
}

#[test]
fn subscribe_failures_get_their_v5_reason_codes() {
    // [MQTT-3.8.4-5] a SUBSCRIBE with several filters is handled as that
    // many SUBSCRIBEs: an ill-formed one gets 0x8F (Topic Filter invalid)
    // in its place in the SUBACK [MQTT-3.9.3-1] and the others are served;
    // No Local on a shared subscription is a Protocol Error [MQTT-3.8.3-4].
    let broker = Broker::start(1);
    let mut client = raw_v5(&broker, "badfilter");
    // SUBSCRIBE id 1, no properties: "a/#/b" QoS 0, "ok/t" QoS 1, "x+" QoS 0.
    let mut subscribe = vec![0x82, 23, 0, 1, 0, 0, 5];
    subscribe.extend_from_slice(b"a/#/b\x00\x00\x04ok/t\x01\x00\x02x+\x00");
    client.send_bytes(&subscribe);
    let Some(Packet::SubAck(suback)) = client.recv() else { panic!("no SUBACK") };
    assert_eq!(
        suback.reasons.to_vec(),
        [ReasonCode::TopicFilterInvalid, ReasonCode::GrantedQoS1, ReasonCode::TopicFilterInvalid]
    );
    // The valid filter works: a QoS 1 message on ok/t comes back.
    client.send_bytes(&[0x32, 10, 0, 4, b'o', b'k', b'/', b't', 0, 9, 0, b'm']);
    let mut got_message = false;
    for _ in 0..2 {
        match client.recv() {
            Some(Packet::Publish(publish)) => {
                assert_eq!(publish.topic.as_str(), "ok/t");
                got_message = true;
            }
            Some(Packet::PubAck(_)) => {}
            other => panic!("{other:?}"),
        }
    }
    assert!(got_message);
    // UNSUBSCRIBE id 2: "#/a" (invalid), "ok/t": 0x8F then Success.
    client.send_bytes(&[0xA2, 14, 0, 2, 0, 0, 3, b'#', b'/', b'a', 0, 4, b'o', b'k', b'/', b't']);
    let unsuback = loop {
        match client.recv() {
            Some(Packet::UnsubAck(unsuback)) => break unsuback,
            Some(Packet::Publish(_)) => continue,
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(unsuback.reasons.to_vec(), [ReasonCode::TopicFilterInvalid, ReasonCode::Success]);
    let mut client = raw_v5(&broker, "nolocalshare");
    let mut subscribe = vec![0x82, 16, 0, 1, 0, 0, 10];
    subscribe.extend_from_slice(b"$share/g/t");
    subscribe.push(0b0000_0100);
    client.send_bytes(&subscribe);
    assert_eq!(disconnect_code(&mut client), ReasonCode::ProtocolError);
    // 3.1.1 has no per-filter code for it: an ill-formed filter is a
    // protocol violation that closes the connection [MQTT-4.8.0-1 (3.1.1)].
    let mut v311 = RawClient::connect(broker.addr);
    v311.send(&common::connect_packet("badfilter311", true, 30));
    let Some(Packet::ConnAck(_)) = v311.recv() else { panic!("no CONNACK") };
    v311.send_bytes(&[0x82, 10, 0, 1, 0, 5, b'a', b'/', b'#', b'/', b'b', 0]);
    assert!(v311.recv().is_none(), "closed without SUBACK");
    assert!(broker.stop().success());
}

async fn rumqttc_v5_connack(
    options: MqttOptions,
) -> (AsyncClient, EventLoop, rumqttc::v5::mqttbytes::v5::ConnAckProperties) {
    let (client, mut events) = AsyncClient::new(options, 100);
    loop {
        let event = timeout(WAIT, events.poll()).await.expect("connack in time").expect("poll");
        if let Event::Incoming(V5Packet::ConnAck(ack)) = event {
            return (client, events, ack.properties.expect("v5 CONNACK properties"));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_past_max_subscriptions_per_client_get_0x97_or_0x80() {
    let broker = Broker::start_with_config(2, "[limits]\nmax_subscriptions_per_client = 2\n");
    let options = MqttOptions::new(client_id_on_shard("quota", 1, 2), "127.0.0.1", broker.port());
    let (client, mut events, _) = rumqttc_v5_connack(options).await;
    let filters =
        ["q/a", "q/b", "q/c"].map(|f| rumqttc::v5::mqttbytes::v5::Filter::new(f, QoS::AtMostOnce));
    client.subscribe_many(filters).await.unwrap();
    // rumqttc reports a SUBACK with a failure code as an error naming it.
    let reason = loop {
        match timeout(WAIT, events.poll()).await.expect("SUBACK in time") {
            Err(ConnectionError::MqttState(StateError::SubFail { reason })) => break reason,
            Err(other) => panic!("{other:?}"),
            Ok(_) => continue,
        }
    };
    use rumqttc::v5::mqttbytes::v5::SubscribeReasonCode as Code;
    assert_eq!(reason, Code::QuotaExceeded);
    // 3.1.1: 0x80 Failure for the one past the quota.
    let mut v311 = RawClient::connect(broker.addr);
    v311.send(&common::connect_packet(&client_id_on_shard("quota3", 0, 2), true, 30));
    let Some(Packet::ConnAck(_)) = v311.recv() else { panic!("no CONNACK") };
    let mut subscribe = vec![0x82, 20, 0, 5];
    for (filter, qos) in [("q/a", 1), ("q/b", 0), ("q/c", 2)] {
        subscribe.extend([0, 3]);
        subscribe.extend_from_slice(filter.as_bytes());
        subscribe.push(qos);
    }
    v311.send_bytes(&subscribe);
    let Some(Packet::SubAck(suback)) = v311.recv() else { panic!("no SUBACK") };
    let codes: Vec<u8> = suback.reasons.iter().map(|r| r.to_v3_suback_return_code()).collect();
    assert_eq!(codes, [1, 0, 0x80]);
    assert!(broker.stop().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retain_available_false_is_told_and_enforced_with_0x9a() {
    let broker = Broker::start_with_config(1, "retain_available = false\n");
    // rumqttc v5 reads Retain Available 0 in CONNACK [MQTT-3.2.2-14].
    let options = MqttOptions::new("noretain", "127.0.0.1", broker.port());
    let (_client, _events, properties) = rumqttc_v5_connack(options).await;
    assert_eq!(properties.retain_available, Some(0));
    // A PUBLISH with RETAIN 1 gets DISCONNECT 0x9A.
    let mut client = raw_v5(&broker, "retains");
    client.send_bytes(&[0x31, 6, 0, 1, b't', 0, b'r', b'!']);
    assert_eq!(disconnect_code(&mut client), ReasonCode::RetainNotSupported);
    assert!(client.closed_within(Duration::from_secs(5)));
    // A will with Will Retain 1 gets CONNACK 0x9A [MQTT-3.2.2-13].
    let mut will_client = RawClient::connect(broker.addr);
    let Packet::Connect(mut connect) = connect_v5("willretain", ConnectProperties::default())
    else {
        unreachable!()
    };
    connect.will = Some(ringmq::protocol::Will {
        topic: ringmq::protocol::TopicName::new("w").unwrap(),
        payload: bytes::Bytes::from_static(b"gone"),
        qos: ringmq::protocol::QoS::AtMostOnce,
        retain: true,
        properties: Default::default(),
    });
    will_client.send(&Packet::Connect(connect));
    let Some(Packet::ConnAck(connack)) = will_client.recv() else { panic!("no CONNACK") };
    assert_eq!(connack.reason, ReasonCode::RetainNotSupported);
    // 3.1.1 cannot be told: its retained PUBLISH closes the connection.
    let mut v311 = RawClient::connect(broker.addr);
    v311.send(&common::connect_packet("retain311", true, 30));
    let Some(Packet::ConnAck(_)) = v311.recv() else { panic!("no CONNACK") };
    v311.send_bytes(&[0x31, 6, 0, 1, b't', 0, b'r', b'!']);
    assert!(v311.recv().is_none());
    assert!(broker.stop().success());
}

#[test]
fn redirect_sends_v5_clients_elsewhere_with_a_server_reference() {
    let config = "[redirect]\nserver_reference = \"mqtt2.example.com:1883\"\nmode = \"moved\"\n";
    let broker = Broker::start_with_config(1, config);
    // 5.0 §4.11: CONNACK 0x9D (Server moved) with the Server Reference.
    let mut client = RawClient::connect(broker.addr);
    client.send(&connect_v5("moved", ConnectProperties::default()));
    let Some(Packet::ConnAck(connack)) = client.recv() else { panic!("no CONNACK") };
    assert_eq!(connack.reason, ReasonCode::ServerMoved);
    assert_eq!(connack.properties.server_reference.as_deref(), Some("mqtt2.example.com:1883"));
    assert!(client.closed_within(Duration::from_secs(5)));
    // 3.1.1 has no redirection: return code 3 (Server unavailable).
    let mut v311 = RawClient::connect(broker.addr);
    v311.send(&common::connect_packet("moved311", true, 30));
    let Some(Packet::ConnAck(connack)) = v311.recv() else { panic!("no CONNACK") };
    assert_eq!(connack.reason.to_v3_connect_return_code(), 3);
    assert!(broker.stop().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirect_use_another_server_reaches_rumqttc_v5() {
    let config = "[redirect]\nserver_reference = \"other:1883\"\n";
    let broker = Broker::start_with_config(1, config);
    let options = MqttOptions::new("elsewhere", "127.0.0.1", broker.port());
    let (_client, mut events) = AsyncClient::new(options, 10);
    let error = loop {
        match timeout(WAIT, events.poll()).await.expect("answer in time") {
            Err(error) => break error,
            Ok(_) => continue,
        }
    };
    assert!(
        matches!(
            error,
            ConnectionError::ConnectionRefused(
                rumqttc::v5::mqttbytes::v5::ConnectReturnCode::UseAnotherServer
            )
        ),
        "{error:?}"
    );
    assert!(broker.stop().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_information_is_sent_when_asked_mqtt_3_1_2_28() {
    let broker = Broker::start_with_config(2, "response_information_prefix = \"reply/\"\n");
    let id = client_id_on_shard("asker", 1, 2);
    let mut options = MqttOptions::new(id.clone(), "127.0.0.1", broker.port());
    options.set_request_response_info(Some(1));
    let (_client, _events, properties) = rumqttc_v5_connack(options).await;
    assert_eq!(properties.response_information, Some(format!("reply/{id}")));
    // [MQTT-3.1.2-28] not asked: none.
    let options = MqttOptions::new(client_id_on_shard("quiet", 0, 2), "127.0.0.1", broker.port());
    let (_client, _events, properties) = rumqttc_v5_connack(options).await;
    assert_eq!(properties.response_information, None);
    assert!(broker.stop().success());
}

#[test]
fn a_connack_larger_than_the_client_maximum_packet_size_is_trimmed_mqtt_3_1_2_24() {
    // [MQTT-3.1.2-24] "The Server MUST NOT send packets exceeding Maximum
    // Packet Size to the Client": a client accepting 20 bytes still gets
    // its CONNACK (usually about 27 bytes), without the optional
    // capability properties.
    let broker = Broker::start(1);
    let mut client = RawClient::connect(broker.addr);
    let properties = ConnectProperties {
        maximum_packet_size: std::num::NonZeroU32::new(20),
        ..Default::default()
    };
    client.send(&connect_v5("tiny", properties));
    let Some(Packet::ConnAck(connack)) = client.recv() else { panic!("no CONNACK") };
    assert_eq!(connack.reason, ReasonCode::Success);
    let size = Packet::ConnAck(connack.clone()).encoded_len(ProtocolVersion::V5).unwrap();
    assert!(size <= 20, "CONNACK of {size} bytes");
    assert_eq!(connack.properties.wildcard_subscription_available, None);
    assert_eq!(connack.properties.maximum_packet_size, std::num::NonZeroU32::new(1_048_576));
    // The connection works.
    client.send_bytes(&[0xC0, 0]);
    assert!(matches!(client.recv(), Some(Packet::PingResp)));
    // 8 bytes cannot hold even the trimmed CONNACK: nothing is sent before
    // a CONNACK [MQTT-3.2.0-1], so the connection is closed at once.
    let mut client = RawClient::connect(broker.addr);
    let properties = ConnectProperties {
        maximum_packet_size: std::num::NonZeroU32::new(8),
        ..Default::default()
    };
    client.send(&connect_v5("tinier", properties));
    assert!(client.recv().is_none(), "closed without a CONNACK");
    assert!(broker.stop().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rumqttc_v5_receives_the_right_topics_through_server_topic_aliases() {
    // 5.0 §3.3.2.3.4: the subscriber (rumqttc v5, Topic Alias Maximum 2)
    // receives every message under its own topic while the broker maps
    // three topics onto two aliases, reassigning the least recently used
    // one. (paho-mqtt 2.2 cannot be used: it does not resolve aliases
    // sent by a server.)
    let broker = Broker::start(2);
    let mut options =
        MqttOptions::new(client_id_on_shard("alias_sub", 1, 2), "127.0.0.1", broker.port());
    options.set_topic_alias_max(Some(2));
    let (sub, mut sub_events, _) = rumqttc_v5_connack(options).await;
    sub.subscribe("al/#", QoS::AtLeastOnce).await.unwrap();
    loop {
        let event = timeout(WAIT, sub_events.poll()).await.unwrap().unwrap();
        if let Event::Incoming(V5Packet::SubAck(_)) = event {
            break;
        }
    }
    let mut publisher = raw_v5(&broker, &client_id_on_shard("alias_pub", 0, 2));
    let topics = ["al/a", "al/b", "al/a", "al/c", "al/a", "al/b", "al/c", "al/c", "al/b"];
    for (i, topic) in topics.iter().enumerate() {
        // QoS 0 PUBLISH, no properties, payload: the message's index.
        let mut packet = vec![0x30, (2 + topic.len() + 1 + 1) as u8, 0, topic.len() as u8];
        packet.extend_from_slice(topic.as_bytes());
        packet.extend([0, b'0' + i as u8]);
        publisher.send_bytes(&packet);
    }
    let mut aliased = 0;
    for (i, topic) in topics.iter().enumerate() {
        let publish = rumqttc_next_publish(&mut sub_events).await;
        assert_eq!(&publish.payload[..], &[b'0' + i as u8], "in order");
        assert_eq!(&publish.topic[..], topic.as_bytes(), "message {i}");
        let alias = publish.properties.and_then(|p| p.topic_alias);
        assert!(alias.is_some_and(|alias| (1..=2).contains(&alias)), "message {i}: {alias:?}");
        aliased += 1;
    }
    assert_eq!(aliased, topics.len());
    assert!(broker.stop().success());
}
