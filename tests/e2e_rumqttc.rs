//! End-to-end tests over loopback with an independent client (the rumqttc
//! crate): the real `ringmq` binary, with 2 shards so that clients land on
//! different cores.

mod common;

use common::{client_id_on_shard, Broker};
use rumqttc::{AsyncClient, Event, EventLoop, LastWill, MqttOptions, Packet, QoS};
use std::time::Duration;
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(10);

fn options(broker: &Broker, id: &str) -> MqttOptions {
    let mut options = MqttOptions::new(id, "127.0.0.1", broker.port());
    options.set_keep_alive(Duration::from_secs(30));
    options
}

/// Connects and waits for the CONNACK; returns the client, its event loop
/// and the session-present flag.
async fn connect(options: MqttOptions) -> (AsyncClient, EventLoop, bool) {
    let (client, mut events) = AsyncClient::new(options, 100);
    loop {
        match timeout(WAIT, events.poll()).await.expect("connack in time").expect("connect") {
            Event::Incoming(Packet::ConnAck(ack)) => {
                assert_eq!(ack.code, rumqttc::ConnectReturnCode::Success);
                return (client, events, ack.session_present);
            }
            _ => continue,
        }
    }
}

/// Polls until a SUBACK arrives.
async fn wait_suback(events: &mut EventLoop) -> Vec<rumqttc::SubscribeReasonCode> {
    loop {
        if let Event::Incoming(Packet::SubAck(ack)) =
            timeout(WAIT, events.poll()).await.expect("suback in time").expect("poll")
        {
            return ack.return_codes;
        }
    }
}

/// Polls until a PUBLISH arrives.
async fn next_publish(events: &mut EventLoop) -> rumqttc::Publish {
    loop {
        if let Event::Incoming(Packet::Publish(publish)) =
            timeout(WAIT, events.poll()).await.expect("publish in time").expect("poll")
        {
            return publish;
        }
    }
}

/// Polls for `within`; returns the publishes that arrived.
async fn publishes_within(events: &mut EventLoop, within: Duration) -> Vec<rumqttc::Publish> {
    let mut got = Vec::new();
    let _ = timeout(within, async {
        loop {
            if let Ok(Event::Incoming(Packet::Publish(p))) = events.poll().await {
                got.push(p);
            }
        }
    })
    .await;
    got
}

/// Drives an event loop in the background until the test ends.
fn drive(mut events: EventLoop) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move { while events.poll().await.is_ok() {} })
}

async fn round_trip(qos: QoS, publisher_shard: usize, subscriber_shard: usize) {
    let broker = Broker::start(2);
    let sub_id = client_id_on_shard("sub", subscriber_shard, 2);
    let pub_id = client_id_on_shard("pub", publisher_shard, 2);
    let (sub, mut sub_events, _) = connect(options(&broker, &sub_id)).await;
    sub.subscribe("rt/+/x", qos).await.unwrap();
    assert_eq!(wait_suback(&mut sub_events).await.len(), 1);
    let (publisher, pub_events, _) = connect(options(&broker, &pub_id)).await;
    let _driver = drive(pub_events);
    for i in 0..20u8 {
        publisher.publish("rt/a/x", qos, false, vec![i; 8]).await.unwrap();
    }
    // [MQTT-4.6.0-2..6] ordered, and [MQTT-3.3.1-9] RETAIN 0 on live delivery.
    for i in 0..20u8 {
        let p = next_publish(&mut sub_events).await;
        assert_eq!(p.topic, "rt/a/x");
        assert_eq!(&p.payload[..], &[i; 8][..]);
        assert_eq!(p.qos, qos);
        assert!(!p.retain);
    }
    assert!(broker.stop().success());
}

#[tokio::test]
async fn qos0_same_shard() {
    round_trip(QoS::AtMostOnce, 0, 0).await;
}

#[tokio::test]
async fn qos0_cross_shard() {
    round_trip(QoS::AtMostOnce, 0, 1).await;
}

#[tokio::test]
async fn qos1_cross_shard() {
    round_trip(QoS::AtLeastOnce, 1, 0).await;
}

#[tokio::test]
async fn qos2_cross_shard() {
    round_trip(QoS::ExactlyOnce, 0, 1).await;
}

#[tokio::test]
async fn delivered_qos_is_the_minimum_of_publish_and_subscription() {
    // [MQTT-3.8.4-6] (3.1.1)
    let broker = Broker::start(2);
    let (sub, mut sub_events, _) = connect(options(&broker, "min-sub")).await;
    sub.subscribe("minq", QoS::AtLeastOnce).await.unwrap();
    wait_suback(&mut sub_events).await;
    let (publisher, pub_events, _) = connect(options(&broker, "min-pub")).await;
    let _driver = drive(pub_events);
    publisher.publish("minq", QoS::ExactlyOnce, false, "a").await.unwrap();
    assert_eq!(next_publish(&mut sub_events).await.qos, QoS::AtLeastOnce);
    publisher.publish("minq", QoS::AtMostOnce, false, "b").await.unwrap();
    assert_eq!(next_publish(&mut sub_events).await.qos, QoS::AtMostOnce);
}

#[tokio::test]
async fn a_shared_group_across_shards_delivers_each_message_to_one_member() {
    // [MQTT-4.8.2] (5.0 shared subscriptions, also served to 3.1.1
    // clients): one member on shard 0, two on shard 1, the publisher on
    // shard 0.
    let broker = Broker::start(2);
    let mut members = Vec::new();
    for (prefix, shard) in [("m0", 0), ("m1", 1), ("m2", 1)] {
        let (client, mut events, _) =
            connect(options(&broker, &client_id_on_shard(prefix, shard, 2))).await;
        client.subscribe("$share/g/jobs/+", QoS::AtLeastOnce).await.unwrap();
        wait_suback(&mut events).await;
        members.push((client, events));
    }
    let (publisher, pub_events, _) =
        connect(options(&broker, &client_id_on_shard("share-pub", 0, 2))).await;
    let _driver = drive(pub_events);
    let publish_all = |range: std::ops::Range<u8>| {
        let publisher = publisher.clone();
        async move {
            for i in range {
                publisher.publish("jobs/1", QoS::AtLeastOnce, false, vec![i]).await.unwrap();
            }
        }
    };
    /// The payloads each member receives within two seconds.
    async fn received(members: &mut [(AsyncClient, EventLoop)]) -> Vec<Vec<u8>> {
        let within = Duration::from_secs(2);
        let [(_, a), (_, b), (_, c)] = members else { unreachable!() };
        let (a, b, c) = tokio::join!(
            publishes_within(a, within),
            publishes_within(b, within),
            publishes_within(c, within)
        );
        [a, b, c].iter().map(|got| got.iter().map(|p| p.payload[0]).collect()).collect()
    }
    publish_all(0..30).await;
    let got = received(&mut members).await;
    let mut all: Vec<u8> = got.concat();
    all.sort_unstable();
    assert_eq!(all, (0..30).collect::<Vec<_>>(), "each message exactly once: {got:?}");
    // The member shards take turns; so do the members within shard 1.
    assert_eq!(got.iter().map(Vec::len).collect::<Vec<_>>(), [15, 8, 7], "{got:?}");

    // Shard 0's member leaves: everything goes to shard 1's.
    members[0].0.unsubscribe("$share/g/jobs/+").await.unwrap();
    loop {
        let event = timeout(WAIT, members[0].1.poll()).await.expect("unsuback in time");
        if let Event::Incoming(Packet::UnsubAck(_)) = event.expect("poll") {
            break;
        }
    }
    publish_all(30..40).await;
    let got = received(&mut members).await;
    assert!(got[0].is_empty(), "{got:?}");
    let mut rest: Vec<u8> = got.concat();
    rest.sort_unstable();
    assert_eq!(rest, (30..40).collect::<Vec<_>>());
    assert!(broker.stop().success());
}

#[tokio::test]
async fn retained_set_replace_delete_on_every_shard() {
    let broker = Broker::start(2);
    let (publisher, pub_events, _) = connect(options(&broker, "ret-pub")).await;
    let _driver = drive(pub_events);
    // Topics spread over both shards' shares of the retained store.
    for i in 0..10 {
        publisher.publish(format!("ret/{i}"), QoS::AtLeastOnce, true, "v1").await.unwrap();
    }
    // [MQTT-3.3.1-5] replace; [MQTT-3.3.1-10] an empty payload deletes.
    publisher.publish("ret/3", QoS::AtLeastOnce, true, "v2").await.unwrap();
    publisher.publish("ret/4", QoS::AtLeastOnce, true, "").await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    for shard in 0..2 {
        let id = client_id_on_shard("ret-sub", shard, 2);
        let (sub, mut events, _) = connect(options(&broker, &id)).await;
        // A wildcard subscribe gathers retained messages from every shard.
        sub.subscribe("ret/#", QoS::AtLeastOnce).await.unwrap();
        let mut got = publishes_within(&mut events, Duration::from_millis(1500)).await;
        got.sort_by(|a, b| a.topic.cmp(&b.topic));
        let topics: Vec<_> = got.iter().map(|p| p.topic.as_str()).collect();
        assert_eq!(
            topics,
            ["ret/0", "ret/1", "ret/2", "ret/3", "ret/5", "ret/6", "ret/7", "ret/8", "ret/9"]
        );
        // [MQTT-3.3.1-8] retained deliveries carry RETAIN 1.
        assert!(got.iter().all(|p| p.retain));
        assert_eq!(&got[3].payload[..], b"v2");
        // An exact subscribe asks only the owning shard.
        sub.subscribe("ret/7", QoS::AtMostOnce).await.unwrap();
        let got = publishes_within(&mut events, Duration::from_millis(800)).await;
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].topic, "ret/7");
    }
}

#[tokio::test]
async fn will_is_published_on_abnormal_close_not_after_disconnect() {
    let broker = Broker::start(2);
    let watcher_id = client_id_on_shard("will-watch", 1, 2);
    let (watcher, mut watch_events, _) = connect(options(&broker, &watcher_id)).await;
    watcher.subscribe("will/#", QoS::AtLeastOnce).await.unwrap();
    wait_suback(&mut watch_events).await;

    // Abnormal end: the socket closes without DISCONNECT [MQTT-3.1.2-8].
    let mut raw = common::RawClient::connect(broker.addr);
    let mut connect_a = common::connect_packet(&client_id_on_shard("will-a", 0, 2), true, 30);
    if let ringmq::protocol::Packet::Connect(c) = &mut connect_a {
        c.will = Some(ringmq::protocol::Will {
            topic: ringmq::protocol::TopicName::new("will/a").unwrap(),
            payload: bytes::Bytes::from_static(b"gone"),
            qos: ringmq::protocol::QoS::AtLeastOnce,
            retain: false,
            properties: Default::default(),
        });
    }
    raw.send(&connect_a);
    assert!(matches!(raw.recv(), Some(ringmq::protocol::Packet::ConnAck(_))));
    drop(raw);
    let will = next_publish(&mut watch_events).await;
    assert_eq!((will.topic.as_str(), &will.payload[..]), ("will/a", &b"gone"[..]));

    // Clean end: after DISCONNECT the will is discarded [MQTT-3.1.2-10].
    let mut options_b = options(&broker, "will-b");
    options_b.set_last_will(LastWill::new("will/b", "gone", QoS::AtLeastOnce, false));
    let (client_b, events_b, _) = connect(options_b).await;
    let driver = drive(events_b);
    client_b.disconnect().await.unwrap();
    let _ = timeout(WAIT, driver).await;
    assert!(publishes_within(&mut watch_events, Duration::from_millis(800)).await.is_empty());
}

#[tokio::test]
async fn keepalive_expiry_closes_and_publishes_the_will() {
    // [MQTT-3.1.2-24] closed after 1.5 x keep alive of silence.
    let broker = Broker::start(2);
    let (watcher, mut watch_events, _) = connect(options(&broker, "ka-watch")).await;
    watcher.subscribe("ka/will", QoS::AtMostOnce).await.unwrap();
    wait_suback(&mut watch_events).await;
    let mut raw = common::RawClient::connect(broker.addr);
    let mut silent = common::connect_packet("ka-silent", true, 1);
    if let ringmq::protocol::Packet::Connect(c) = &mut silent {
        c.will = Some(ringmq::protocol::Will {
            topic: ringmq::protocol::TopicName::new("ka/will").unwrap(),
            payload: bytes::Bytes::from_static(b"expired"),
            qos: ringmq::protocol::QoS::AtMostOnce,
            retain: false,
            properties: Default::default(),
        });
    }
    let started = std::time::Instant::now();
    raw.send(&silent);
    assert!(matches!(raw.recv(), Some(ringmq::protocol::Packet::ConnAck(_))));
    assert!(raw.closed_within(Duration::from_secs(5)), "not closed after keep alive expiry");
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(1400), "closed too early: {elapsed:?}");
    assert_eq!(&next_publish(&mut watch_events).await.payload[..], b"expired");
}

#[tokio::test]
async fn takeover_closes_the_old_connection() {
    // [MQTT-3.1.4-2] The existing client is disconnected.
    let broker = Broker::start(2);
    let mut first = common::RawClient::connect(broker.addr);
    first.send(&common::connect_packet("twin", true, 30));
    assert!(matches!(first.recv(), Some(ringmq::protocol::Packet::ConnAck(_))));
    let (_second, second_events, _) = connect(options(&broker, "twin")).await;
    let _driver = drive(second_events);
    assert!(first.closed_within(Duration::from_secs(5)));
}

#[tokio::test]
async fn simultaneous_connects_leave_exactly_one_connection() {
    let broker = Broker::start(2);
    // Many sockets race with the same client id, accepted on both shards.
    let mut clients: Vec<_> = (0..16).map(|_| common::RawClient::connect(broker.addr)).collect();
    let mut bytes = bytes::BytesMut::new();
    common::connect_packet("racer", true, 30)
        .encode(ringmq::protocol::ProtocolVersion::V3_1_1, &mut bytes)
        .unwrap();
    std::thread::scope(|scope| {
        for client in clients.iter_mut() {
            let bytes = &bytes;
            scope.spawn(move || client.send_bytes(bytes));
        }
    });
    std::thread::sleep(Duration::from_millis(1500));
    let open = clients
        .iter_mut()
        .map(|client| client.closed_within(Duration::from_millis(300)))
        .filter(|closed| !closed)
        .count();
    assert_eq!(open, 1, "exactly one connection survives");
}

#[tokio::test]
async fn persistent_session_keeps_subscriptions_and_queues_offline_messages() {
    let broker = Broker::start(2);
    let sub_id = client_id_on_shard("persist", 1, 2);
    let mut sub_options = options(&broker, &sub_id);
    sub_options.set_clean_session(false);
    let (sub, mut sub_events, present) = connect(sub_options.clone()).await;
    assert!(!present);
    sub.subscribe("persist/t", QoS::AtLeastOnce).await.unwrap();
    wait_suback(&mut sub_events).await;
    sub.disconnect().await.unwrap();
    let _ =
        timeout(Duration::from_secs(2), async { while sub_events.poll().await.is_ok() {} }).await;

    let (publisher, pub_events, _) =
        connect(options(&broker, &client_id_on_shard("p", 0, 2))).await;
    let _driver = drive(pub_events);
    for i in 0..5u8 {
        publisher.publish("persist/t", QoS::AtLeastOnce, false, vec![i]).await.unwrap();
    }
    // QoS 0 is not queued for an offline client.
    publisher.publish("persist/t", QoS::AtMostOnce, false, vec![99]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;

    // [MQTT-3.2.2-2] session present; the queued messages follow, in order.
    let (_sub, mut sub_events, present) = connect(sub_options).await;
    assert!(present);
    for i in 0..5u8 {
        assert_eq!(&next_publish(&mut sub_events).await.payload[..], &[i][..]);
    }
    assert!(publishes_within(&mut sub_events, Duration::from_millis(500)).await.is_empty());
}

#[tokio::test]
async fn a_persistent_session_expires_after_max_session_expiry() {
    // A 3.1.1 session with Clean Session 0 lasts `max_session_expiry_s`
    // after its client leaves: then its subscription is gone too.
    let broker = Broker::start_with_config(2, "[limits]\nmax_session_expiry_s = 1\n");
    let sub_id = client_id_on_shard("expiring", 1, 2);
    let mut sub_options = options(&broker, &sub_id);
    sub_options.set_clean_session(false);
    let (sub, mut sub_events, _) = connect(sub_options.clone()).await;
    sub.subscribe("expiring/t", QoS::AtLeastOnce).await.unwrap();
    wait_suback(&mut sub_events).await;
    sub.disconnect().await.unwrap();
    let _ =
        timeout(Duration::from_secs(2), async { while sub_events.poll().await.is_ok() {} }).await;
    // The expiry, plus a sweep (every 250 ms) and slack.
    tokio::time::sleep(Duration::from_millis(1800)).await;
    let (publisher, pub_events, _) =
        connect(options(&broker, &client_id_on_shard("p", 0, 2))).await;
    let _driver = drive(pub_events);
    publisher.publish("expiring/t", QoS::AtLeastOnce, false, vec![1]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_sub, mut sub_events, present) = connect(sub_options).await;
    assert!(!present, "the session outlived max_session_expiry_s");
    assert!(publishes_within(&mut sub_events, Duration::from_millis(500)).await.is_empty());
    assert!(broker.stop().success());
}

#[tokio::test]
async fn clean_session_discards_state() {
    let broker = Broker::start(2);
    let mut persistent = options(&broker, "cleaner");
    persistent.set_clean_session(false);
    let (client, mut events, _) = connect(persistent.clone()).await;
    client.subscribe("clean/t", QoS::AtLeastOnce).await.unwrap();
    wait_suback(&mut events).await;
    client.disconnect().await.unwrap();
    let _ = timeout(Duration::from_secs(2), async { while events.poll().await.is_ok() {} }).await;
    // [MQTT-3.2.2-1] Clean Session 1: session present is 0, state gone.
    let mut clean = persistent;
    clean.set_clean_session(true);
    let (_client, _events, present) = connect(clean.clone()).await;
    assert!(!present);
}

#[tokio::test]
async fn one_thousand_concurrent_clients() {
    let broker = Broker::start(2);
    let (sub, mut sub_events, _) = connect(options(&broker, "thousand-sub")).await;
    sub.subscribe("k/+", QoS::AtLeastOnce).await.unwrap();
    wait_suback(&mut sub_events).await;
    let mut handles = Vec::new();
    for i in 0..1000 {
        let port = broker.port();
        handles.push(tokio::spawn(async move {
            let mut options = MqttOptions::new(format!("k{i}"), "127.0.0.1", port);
            options.set_keep_alive(Duration::from_secs(60));
            let (client, mut events, _) = connect(options).await;
            client.publish(format!("k/{i}"), QoS::AtLeastOnce, false, "x").await.unwrap();
            // Until the PUBACK.
            loop {
                if let Event::Incoming(Packet::PubAck(_)) = events.poll().await.unwrap() {
                    break;
                }
            }
            (client, events)
        }));
    }
    let mut clients = Vec::new();
    for handle in handles {
        clients.push(timeout(Duration::from_secs(60), handle).await.unwrap().unwrap());
    }
    let mut seen = std::collections::HashSet::new();
    while seen.len() < 1000 {
        seen.insert(next_publish(&mut sub_events).await.topic);
    }
    drop(clients);
    assert!(broker.stop().success());
}

#[tokio::test]
async fn dollar_topics_do_not_match_leading_wildcards() {
    // [MQTT-4.7.2-1]
    let broker = Broker::start(2);
    let (sub, mut events, _) = connect(options(&broker, "dollar")).await;
    sub.subscribe("#", QoS::AtMostOnce).await.unwrap();
    wait_suback(&mut events).await;
    let (publisher, pub_events, _) = connect(options(&broker, "dollar-pub")).await;
    let _driver = drive(pub_events);
    publisher.publish("$internal/x", QoS::AtMostOnce, false, "hidden").await.unwrap();
    publisher.publish("visible", QoS::AtMostOnce, false, "shown").await.unwrap();
    let got = publishes_within(&mut events, Duration::from_millis(800)).await;
    let topics: Vec<_> = got.iter().map(|p| p.topic.as_str()).collect();
    assert_eq!(topics, ["visible"]);
}

#[tokio::test]
async fn overlapping_subscriptions_deliver_once_at_the_highest_qos() {
    // [MQTT-3.3.5-1]
    let broker = Broker::start(2);
    let (sub, mut events, _) = connect(options(&broker, "overlap")).await;
    sub.subscribe("ov/+", QoS::AtMostOnce).await.unwrap();
    wait_suback(&mut events).await;
    sub.subscribe("ov/#", QoS::AtLeastOnce).await.unwrap();
    wait_suback(&mut events).await;
    let (publisher, pub_events, _) = connect(options(&broker, "overlap-pub")).await;
    let _driver = drive(pub_events);
    publisher.publish("ov/a", QoS::AtLeastOnce, false, "once").await.unwrap();
    let got = publishes_within(&mut events, Duration::from_millis(800)).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].qos, QoS::AtLeastOnce);
}

#[tokio::test]
async fn unsubscribe_stops_delivery() {
    let broker = Broker::start(2);
    let (sub, mut events, _) = connect(options(&broker, "unsub")).await;
    sub.subscribe("un/t", QoS::AtMostOnce).await.unwrap();
    wait_suback(&mut events).await;
    sub.unsubscribe("un/t").await.unwrap();
    loop {
        if let Event::Incoming(Packet::UnsubAck(_)) = events.poll().await.unwrap() {
            break;
        }
    }
    let (publisher, pub_events, _) = connect(options(&broker, "unsub-pub")).await;
    let _driver = drive(pub_events);
    publisher.publish("un/t", QoS::AtMostOnce, false, "x").await.unwrap();
    assert!(publishes_within(&mut events, Duration::from_millis(600)).await.is_empty());
}
