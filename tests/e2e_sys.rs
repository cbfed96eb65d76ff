//! The `$SYS/broker/...` topics as a monitoring client reads them: retained,
//! under `$SYS/#`, with plausible values; and never matched by `#` or a
//! filter starting with `+` [MQTT-4.7.2-1].

mod common;

use common::{connect_packet, Broker, RawClient};
use ringmq::protocol::{
    Packet, PacketId, Publish, QoS, Subscribe, Subscription, SubscriptionOptions, TopicFilter,
    TopicName,
};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// What a client was sent, by topic: the last payload and RETAIN flag.
type Seen = HashMap<String, (String, bool)>;

/// Subscribes; returns what was published to the client before the SUBACK
/// (retained messages may overtake it).
fn subscribe(client: &mut RawClient, filters: &[&str]) -> Seen {
    client.send(&Packet::Subscribe(Subscribe {
        refused: Vec::new(),
        packet_id: PacketId::new(1).unwrap(),
        properties: Default::default(),
        subscriptions: filters
            .iter()
            .map(|filter| Subscription {
                filter: TopicFilter::new(*filter).unwrap(),
                options: SubscriptionOptions { qos: QoS::AtMostOnce, ..Default::default() },
            })
            .collect(),
    }));
    let mut seen = Seen::new();
    loop {
        match client.recv() {
            Some(Packet::SubAck(_)) => return seen,
            Some(Packet::Publish(publish)) => note(&mut seen, &publish),
            other => panic!("expected SUBACK, got {other:?}"),
        }
    }
}

fn note(seen: &mut Seen, publish: &Publish) {
    let payload = String::from_utf8_lossy(&publish.payload).into_owned();
    seen.insert(publish.topic.as_str().to_owned(), (payload, publish.retain));
}

/// `seen` and the PUBLISH packets received until `done` says enough, or
/// `within` passed.
fn received(
    client: &mut RawClient,
    mut seen: Seen,
    within: Duration,
    done: impl Fn(&Seen) -> bool,
) -> Seen {
    let deadline = Instant::now() + within;
    client.stream.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    while Instant::now() < deadline && !done(&seen) {
        // A read timeout surfaces as a panic in `recv`; catch it as "nothing yet".
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| client.recv())) {
            Ok(Some(Packet::Publish(publish))) => note(&mut seen, &publish),
            Ok(Some(_)) | Err(_) => {}
            Ok(None) => panic!("the broker closed the connection"),
        }
    }
    seen
}

#[test]
fn sys_topics_arrive_retained_under_sys_and_not_under_wildcards() {
    let broker = Broker::start_with_config(2, "sys_interval_s = 1\n");
    let mut everything = RawClient::connect(broker.addr);
    everything.send(&connect_packet("everything", true, 0));
    assert!(matches!(everything.recv(), Some(Packet::ConnAck(_))));
    let early = subscribe(&mut everything, &["#", "+/broker/#"]);
    assert!(early.is_empty(), "{early:?}");

    // Wait past the first publication (at shard 0's first tick), so what
    // the monitor gets is the retained copy.
    std::thread::sleep(Duration::from_millis(1500));
    let mut monitor = RawClient::connect(broker.addr);
    monitor.send(&connect_packet("monitor", true, 0));
    assert!(matches!(monitor.recv(), Some(Packet::ConnAck(_))));
    let early = subscribe(&mut monitor, &["$SYS/#"]);
    let names = [
        "version",
        "uptime",
        "clients/connected",
        "clients/total",
        "messages/received",
        "messages/sent",
        "subscriptions/count",
        "retained messages/count",
        "load/messages/received/1min",
        "load/messages/sent/15min",
    ];
    let topic = |name: &str| format!("$SYS/broker/{name}");
    let sys = received(&mut monitor, early, Duration::from_secs(10), |seen| {
        names.iter().all(|name| seen.contains_key(&topic(name)))
    });
    for name in names {
        assert!(sys.contains_key(&topic(name)), "no {name} in {sys:?}");
    }
    assert!(sys.values().any(|(_, retain)| *retain), "the retained copies: {sys:?}");
    assert!(sys[&topic("version")].0.starts_with("ringmq version "), "{sys:?}");
    assert!(sys[&topic("uptime")].0.ends_with(" seconds"), "{sys:?}");
    // At least the subscriber to `#`; the monitor once the next
    // publication counts it.
    let number = |name: &str| sys[&topic(name)].0.parse::<u64>().unwrap();
    assert!(number("clients/connected") >= 1, "{sys:?}");
    assert!(number("clients/total") >= 1, "{sys:?}");
    assert!(number("subscriptions/count") >= 2, "{sys:?}");
    // Every $SYS topic is retained, on whichever shard owns it.
    assert!(number("retained messages/count") >= names.len() as u64, "{sys:?}");

    // A message published by a client now, and the next publication, in
    // which the monitor counts itself.
    let mut publisher = RawClient::connect(broker.addr);
    publisher.send(&connect_packet("publisher", true, 0));
    assert!(matches!(publisher.recv(), Some(Packet::ConnAck(_))));
    publisher.send(&Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: false,
        topic: TopicName::new("plain/topic").unwrap(),
        packet_id: None,
        properties: Default::default(),
        payload: bytes::Bytes::from_static(b"x"),
    }));
    let later = received(&mut monitor, Seen::new(), Duration::from_secs(5), |seen| {
        seen.get(&topic("messages/received")).is_some_and(|(n, _)| n == "1")
            && seen.get(&topic("clients/connected")).is_some_and(|(n, _)| n == "3")
    });
    assert_eq!(later.get(&topic("messages/received")).map(|(n, _)| n.as_str()), Some("1"));
    assert_eq!(later.get(&topic("clients/connected")).map(|(n, _)| n.as_str()), Some("3"));

    // The subscriber to `#` got the client's message and no $SYS topic.
    let plain = received(&mut everything, Seen::new(), Duration::from_secs(2), |_| false);
    assert_eq!(plain.keys().collect::<Vec<_>>(), ["plain/topic"], "{plain:?}");
    broker.stop();
}
