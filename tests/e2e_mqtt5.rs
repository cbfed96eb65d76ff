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
    // An ill-formed filter closes with 0x8F (Topic Filter invalid); No
    // Local on a shared subscription is a Protocol Error [MQTT-3.8.3-4].
    let broker = Broker::start(1);
    let mut client = raw_v5(&broker, "badfilter");
    client.send_bytes(&[0x82, 11, 0, 1, 0, 0, 5, b'a', b'/', b'#', b'/', b'b', 0]);
    assert_eq!(disconnect_code(&mut client), ReasonCode::TopicFilterInvalid);
    let mut client = raw_v5(&broker, "nolocalshare");
    let mut subscribe = vec![0x82, 16, 0, 1, 0, 0, 10];
    subscribe.extend_from_slice(b"$share/g/t");
    subscribe.push(0b0000_0100);
    client.send_bytes(&subscribe);
    assert_eq!(disconnect_code(&mut client), ReasonCode::ProtocolError);
    assert!(broker.stop().success());
}
