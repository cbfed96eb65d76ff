//! Overload without loss: a connected subscriber past its queue limits
//! slows the publishers of its topics (on every shard) instead of losing
//! acknowledged QoS 1/2 messages, until it drains or `slow_consumer_timeout`
//! disconnects it. Driven by hand with the virtual clock.

use super::*;
use crate::protocol::{PubResponse, ReasonCode};
use crate::router::{Hold, HoldOn};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::Wake;

/// Four messages queued at most, two in flight; 10 s to drain.
fn limits() -> SessionLimits {
    SessionLimits {
        max_queued_messages: 4,
        max_inflight: std::num::NonZeroU16::new(2).unwrap(),
        slow_consumer_timeout: Some(Duration::from_secs(10)),
        ..SessionLimits::default()
    }
}

struct Flag(AtomicBool);

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// Sends a QoS 1 PUBLISH; returns what the publisher must wait for.
fn publish_qos1(cluster: &mut Cluster, client: &Client, topic: &str, id: u16) -> Option<Hold> {
    let outbox = Rc::clone(&cluster.outboxes[client.shard]);
    outbox.take_held_by();
    cluster.send(client, publish_acked(topic, QoS::AtLeastOnce, id, false));
    outbox.take_held_by()
}

/// Reads what `client` is sent and acknowledges each QoS 1 PUBLISH, until
/// nothing more comes; returns how many PUBLISH packets it read.
fn read_all(cluster: &mut Cluster, client: &Client) -> usize {
    let mut read = 0;
    loop {
        let packets = cluster.output(client);
        let publishes: Vec<_> = packets
            .iter()
            .filter_map(|p| match p {
                Packet::Publish(p) => Some(p.packet_id),
                _ => None,
            })
            .collect();
        if publishes.is_empty() {
            return read;
        }
        read += publishes.len();
        for id in publishes.into_iter().flatten() {
            cluster.send(client, Packet::PubAck(PubResponse::new(id)));
        }
        cluster.settle();
    }
}

/// Acknowledges the QoS 1 PUBLISH packets of `packets`; returns how many.
fn ack_all(cluster: &mut Cluster, client: &Client, packets: &[Packet]) -> usize {
    let mut acked = 0;
    for packet in packets {
        if let Packet::Publish(Publish { packet_id: Some(id), .. }) = packet {
            cluster.send(client, Packet::PubAck(PubResponse::new(*id)));
            acked += 1;
        }
    }
    acked
}

#[test]
fn a_full_subscriber_slows_its_topics_publishers_on_every_shard_and_loses_nothing() {
    let mut cluster = Cluster::with_limits(2, limits());
    let slow = cluster.connect(&id_on("slow", 1, 2));
    let fast = cluster.connect(&id_on("fast", 1, 2));
    cluster.subscribe(&slow, "slow/+");
    cluster.subscribe(&fast, "fast");
    cluster.settle();
    cluster.output(&slow);
    cluster.output(&fast);
    let remote = cluster.connect(&id_on("remote", 0, 2));
    let local = cluster.connect(&id_on("local", 1, 2));

    // Shard 0's publisher fills the subscriber's queue past its limit
    // (nothing is read: two in flight are taken by the first output only).
    let mut sent = 0;
    for id in 1..=6 {
        assert_eq!(publish_qos1(&mut cluster, &remote, "slow/a", id), None);
        sent += 1;
    }
    assert!(cluster.queued(0, 0).is_empty());
    cluster.settle();
    let counters = &cluster.shards[1].counters().clone();
    assert_eq!(counters.session.dropped_queue_full, [0, 0, 0], "nothing acknowledged is dropped");
    assert_eq!(counters.shard.deliveries_over_limit, 2);
    assert_eq!(counters.shard.overloads, 1);

    // Shard 1 told shard 0: its publisher of the topic is now held back,
    // one of another topic is not. So is the local publisher.
    let hold = publish_qos1(&mut cluster, &remote, "slow/a", 7).expect("remote publisher held");
    sent += 1;
    assert!(matches!(hold.on(), HoldOn::Topic(_)));
    assert_eq!(publish_qos1(&mut cluster, &remote, "fast", 8), None, "another topic flows");
    assert!(publish_qos1(&mut cluster, &local, "slow/a", 1).is_some(), "local publisher held");
    sent += 1;
    assert_eq!(publish_qos1(&mut cluster, &local, "fast", 2), None);
    // QoS 0 is never held: dropped past the limit, as before.
    cluster.outboxes[1].take_held_by();
    cluster.send(&local, publish("slow/a", b"q0", false));
    assert_eq!(cluster.outboxes[1].take_held_by(), None);
    cluster.settle();
    // The healthy subscriber on the same shard got its messages at once.
    assert_eq!(read_all(&mut cluster, &fast), 2);

    let flag = Arc::new(Flag(AtomicBool::new(false)));
    cluster.outboxes[0].wait_drained(hold, &Waker::from(Arc::clone(&flag)));
    assert!(cluster.outboxes[0].is_congested(hold));
    // The subscriber reads: every acknowledged message arrives, and once
    // its queue is back to half its limit the publishers resume.
    assert_eq!(read_all(&mut cluster, &slow), sent);
    assert!(flag.0.load(Ordering::SeqCst), "the held publisher is woken");
    assert!(!cluster.outboxes[0].is_congested(hold));
    assert_eq!((cluster.outboxes[0].gates(), cluster.outboxes[1].gates()), (0, 0));
    assert_eq!(publish_qos1(&mut cluster, &remote, "slow/a", 9), None);
    let counters = cluster.shards[1].counters();
    assert_eq!(counters.session.dropped_queue_full, [1, 0, 0], "the QoS 0 message only");
    assert_eq!(counters.shard.slow_consumers_disconnected, 0);
}

#[test]
fn a_stalled_subscriber_is_disconnected_after_slow_consumer_timeout_with_0x97() {
    let mut cluster = Cluster::with_limits(2, limits());
    let (slow, _) = cluster.connect_packet(&connect_v5(&id_on("stalled", 1, 2), 600));
    cluster.send(&slow, subscribe_v5(1, "t", QoS::AtLeastOnce, false, None));
    cluster.settle();
    cluster.output(&slow);
    let publisher = cluster.connect(&id_on("p", 0, 2));
    // Two in flight (read once, never acknowledged), four queued, three
    // past the limit.
    for id in 1..=2 {
        publish_qos1(&mut cluster, &publisher, "t", id);
    }
    cluster.settle();
    assert_eq!(cluster.output(&slow).len(), 2);
    for id in 3..=9 {
        publish_qos1(&mut cluster, &publisher, "t", id);
    }
    cluster.settle();
    assert!(publish_qos1(&mut cluster, &publisher, "t", 10).is_some(), "held");
    cluster.settle();

    // Just before the timeout nothing happens; at it, the client is told
    // 0x97 Quota exceeded and closed.
    cluster.now += Duration::from_millis(9_999);
    cluster.sweep();
    assert!(!closed(&mut cluster, &slow));
    cluster.now += Duration::from_millis(1);
    cluster.sweep();
    let mut out = BytesMut::new();
    let now = cluster.now;
    let result = cluster.shards[1].poll_transmit(slow.key, slow.id, now, &mut out);
    assert!(matches!(result, Err(ConnectionError::Closed(_))), "{result:?}");
    let last = decode_all(ProtocolVersion::V5, out);
    assert_eq!(disconnect_reason(&last), Some(ReasonCode::QuotaExceeded));
    // The publishers are released everywhere; the queue is cut back to its
    // limit (the newest past it dropped), counted by reason.
    assert_eq!((cluster.outboxes[0].gates(), cluster.outboxes[1].gates()), (0, 0));
    assert_eq!(publish_qos1(&mut cluster, &publisher, "t", 11), None);
    cluster.settle();
    let counters = cluster.shards[1].counters();
    assert_eq!(counters.shard.slow_consumers_disconnected, 1);
    assert_eq!(counters.session.dropped_slow_consumer, 4, "ids 7 to 10");
    // Offline now: the next one is dropped at the limit, as for any
    // offline session.
    assert_eq!(counters.session.dropped_queue_full, [0, 1, 0]);
    cluster.close(&slow);
    // The persistent session kept the two in flight and four queued.
    let (back, output) = cluster.connect_packet(&connect_v5(&id_on("stalled", 1, 2), 600));
    let resent = output.iter().filter(|p| matches!(p, Packet::Publish(p) if p.dup)).count();
    assert_eq!(resent, 2);
    assert_eq!(ack_all(&mut cluster, &back, &output), 2);
    assert_eq!(read_all(&mut cluster, &back), 4);
}

#[test]
fn the_gauges_follow_queues_in_flight_messages_and_shared_groups() {
    let mut cluster = Cluster::with_limits(1, limits());
    let (sub, _) = cluster.connect_packet(&connect_v5("offline", 600));
    cluster.subscribe(&sub, "q");
    cluster.subscribe(&sub, "$share/g/w");
    cluster.output(&sub);
    let publisher = cluster.connect("p");
    for id in 1..=3 {
        publish_qos1(&mut cluster, &publisher, "q", id);
    }
    let snapshot = cluster.shards[0].snapshot();
    assert_eq!(snapshot.queued_messages, 3);
    assert_eq!(snapshot.queued_bytes, 3 * "qm".len());
    assert_eq!(snapshot.shared_groups, 1);
    // Two go in flight (the window), one waits; acknowledged, none left.
    assert_eq!(cluster.output(&sub).len(), 2);
    let snapshot = cluster.shards[0].snapshot();
    assert_eq!((snapshot.queued_messages, snapshot.inflight_messages), (1, 2));
    cluster.close(&sub);
    for id in 4..=5 {
        publish_qos1(&mut cluster, &publisher, "q", id);
    }
    let snapshot = cluster.shards[0].snapshot();
    assert_eq!((snapshot.queued_messages, snapshot.inflight_messages), (3, 2));
    let (back, output) = cluster.connect_packet(&connect_v5("offline", 600));
    assert_eq!(ack_all(&mut cluster, &back, &output), 2, "the two in flight, re-sent");
    assert_eq!(read_all(&mut cluster, &back), 3);
    let snapshot = cluster.shards[0].snapshot();
    assert_eq!((snapshot.queued_messages, snapshot.queued_bytes), (0, 0));
    assert_eq!(snapshot.inflight_messages, 0);
    // A session that ends takes its share of the gauges along.
    let (gone, _) = cluster.connect_packet(&connect_v5("gone", 0));
    cluster.subscribe(&gone, "q");
    cluster.output(&gone);
    publish_qos1(&mut cluster, &publisher, "q", 6);
    assert_eq!(cluster.shards[0].snapshot().queued_messages, 2);
    cluster.close(&gone);
    let snapshot = cluster.shards[0].snapshot();
    assert_eq!((snapshot.queued_messages, snapshot.shared_groups), (1, 1));
}
