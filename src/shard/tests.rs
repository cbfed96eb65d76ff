//! Sans-IO tests of the shard state: several shards driven by hand, with
//! the messages their outboxes hold carried between them by the test.

use super::*;
use crate::protocol::{
    Connect, Packet, PacketId, ProtocolVersion, Publish, QoS, Subscribe, Subscription,
    SubscriptionOptions, TopicFilter, TopicName,
};
use crate::router::{home_shard, Outbox, RouterMessage, ShardId, ShardMessage};
use crate::session::SessionLimits;
use bytes::BytesMut;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// Shards and their outboxes, with the test as the mesh.
struct Cluster {
    shards: Vec<Shard>,
    outboxes: Vec<Rc<Outbox>>,
    now: Instant,
}

/// A client attached to its home shard.
struct Client {
    shard: usize,
    key: SessionKey,
    id: ConnectionId,
    version: ProtocolVersion,
}

impl Cluster {
    fn new(n: usize) -> Self {
        Self::with_limits(n, SessionLimits::default())
    }

    fn with_limits(n: usize, limits: SessionLimits) -> Self {
        let outboxes: Vec<_> = (0..n).map(|_| Rc::new(Outbox::new(n))).collect();
        let shards = (0..n)
            .map(|i| {
                let id = ShardId::from_index(i).unwrap();
                Shard::new(id, n, limits, Rc::clone(&outboxes[i]), 1)
            })
            .collect();
        Self { shards, outboxes, now: Instant::now() }
    }

    /// Messages queued from `from` to `to`, without delivering them.
    fn queued(&self, from: usize, to: usize) -> Vec<ShardMessage> {
        let mut messages = Vec::new();
        let mut cx = Context::from_waker(Waker::noop());
        while let Poll::Ready(Some(RouterMessage::Shard(message))) =
            self.outboxes[from].poll_pop(to, &mut cx)
        {
            messages.push(message);
        }
        messages
    }

    /// Carries every queued message to its shard until all are quiet.
    fn settle(&mut self) {
        loop {
            let mut moved = false;
            for from in 0..self.shards.len() {
                for to in (0..self.shards.len()).filter(|&to| to != from) {
                    for message in self.queued(from, to) {
                        moved = true;
                        let origin = ShardId::from_index(from).unwrap();
                        self.shards[to].handle_shard_message(origin, message, self.now);
                    }
                }
            }
            if !moved {
                return;
            }
        }
    }

    /// Connects `client_id` (3.1.1, clean) at its home shard.
    fn connect(&mut self, client_id: &str) -> Client {
        let (client, output) = self.connect_with(client_id, true);
        assert!(matches!(output[..], [Packet::ConnAck(_)]));
        client
    }

    /// Connects `client_id` (3.1.1, Clean Session `clean`) at its home
    /// shard; returns the client and its first output (CONNACK first).
    fn connect_with(&mut self, client_id: &str, clean: bool) -> (Client, Vec<Packet>) {
        self.connect_keep_alive(client_id, clean, 0)
    }

    /// [`Self::connect_with`] with a keep alive, in seconds.
    fn connect_keep_alive(
        &mut self,
        client_id: &str,
        clean: bool,
        keep_alive: u16,
    ) -> (Client, Vec<Packet>) {
        let connect = Connect {
            version: ProtocolVersion::V3_1_1,
            clean_start: clean,
            keep_alive,
            client_id: client_id.into(),
            will: None,
            username: None,
            password: None,
            properties: Default::default(),
        };
        self.connect_packet(&connect)
    }

    /// Connects with `connect` at the home shard of its client id.
    fn connect_packet(&mut self, connect: &Connect) -> (Client, Vec<Packet>) {
        let client_id = connect.client_id.clone();
        let shard = home_shard(client_id.as_bytes(), self.shards.len()).index();
        let id = self.shards[shard].new_connection_id();
        let ConnectOutcome::Accepted(key) =
            self.shards[shard].handle_connect(self.now, connect, client_id, id)
        else {
            panic!("refused")
        };
        let client = Client { shard, key, id, version: connect.version };
        let output = self.output(&client);
        (client, output)
    }

    /// The client's connection ends.
    fn close(&mut self, client: &Client) {
        let now = self.now;
        self.shards[client.shard].handle_connection_closed(client.key, client.id, now);
        self.settle();
    }

    /// Every shard sweeps its timers at the current time.
    fn sweep(&mut self) {
        let now = self.now;
        self.shards.iter_mut().for_each(|shard| shard.sweep(now));
        self.settle();
    }

    fn send(&mut self, client: &Client, packet: Packet) {
        let now = self.now;
        assert!(self.shards[client.shard]
            .handle_packet(client.key, client.id, now, packet)
            .unwrap());
    }

    /// What the client's connection would write now.
    fn output(&mut self, client: &Client) -> Vec<Packet> {
        let mut out = BytesMut::new();
        let now = self.now;
        self.shards[client.shard].poll_transmit(client.key, client.id, now, &mut out).unwrap();
        decode_all(client.version, out)
    }

    fn subscribe(&mut self, client: &Client, filter: &str) {
        let subscribe = Subscribe {
            refused: Vec::new(),
            packet_id: PacketId::new(1).unwrap(),
            properties: Default::default(),
            subscriptions: [Subscription {
                filter: TopicFilter::new(filter).unwrap(),
                options: SubscriptionOptions { qos: QoS::AtLeastOnce, ..Default::default() },
            }]
            .into_iter()
            .collect(),
        };
        self.send(client, Packet::Subscribe(subscribe));
    }
}

/// Every packet in `out`, read as a client of `version` reads them.
fn decode_all(version: ProtocolVersion, mut out: BytesMut) -> Vec<Packet> {
    let mut decoder = crate::protocol::Decoder::new(version, 1 << 20);
    std::iter::from_fn(|| decoder.decode(&mut out).unwrap()).collect()
}

fn publish(topic: &str, payload: &'static [u8], retain: bool) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain,
        topic: TopicName::new(topic).unwrap(),
        packet_id: None,
        properties: Default::default(),
        payload: bytes::Bytes::from_static(payload),
    })
}

/// A client id homed on `shard` of `n`.
fn id_on(prefix: &str, shard: usize, n: usize) -> String {
    (0..)
        .map(|i| format!("{prefix}{i}"))
        .find(|id| home_shard(id.as_bytes(), n).index() == shard)
        .unwrap()
}

fn payloads(packets: &[Packet]) -> Vec<&[u8]> {
    packets
        .iter()
        .filter_map(|p| match p {
            Packet::Publish(p) => Some(&p.payload[..]),
            _ => None,
        })
        .collect()
}

#[test]
fn suback_waits_until_every_shard_knows_the_new_interest() {
    let mut cluster = Cluster::new(3);
    let sub = cluster.connect(&id_on("s", 0, 3));
    cluster.subscribe(&sub, "a/+");
    // The first subscriber to a filter on shard 0: the SUBACK is held until
    // shards 1 and 2 acknowledge the interest delta.
    assert!(cluster.output(&sub).is_empty());
    cluster.settle();
    assert!(matches!(cluster.output(&sub)[..], [Packet::SubAck(_)]));
    // A second subscriber to the same filter changes no interest.
    let other = cluster.connect(&id_on("t", 0, 3));
    cluster.subscribe(&other, "a/+");
    assert!(matches!(cluster.output(&other)[..], [Packet::SubAck(_)]));
}

#[test]
fn a_publish_crosses_once_per_interested_shard_not_per_subscriber() {
    let mut cluster = Cluster::new(3);
    let subscribers: Vec<_> =
        (0..5).map(|i| cluster.connect(&id_on(&format!("s{i}-"), 1, 3))).collect();
    for sub in &subscribers {
        cluster.subscribe(sub, "t/#");
    }
    cluster.settle();
    let publisher = cluster.connect(&id_on("p", 0, 3));
    cluster.send(&publisher, publish("t/x", b"one", false));
    cluster.send(&publisher, publish("other", b"none", false));
    // One batch to shard 1 with one message, nothing to shard 2.
    let to_1 = cluster.queued(0, 1);
    assert!(matches!(&to_1[..], [ShardMessage::Publish(batch)] if batch.len() == 1));
    assert!(cluster.queued(0, 2).is_empty());
    for message in to_1 {
        cluster.shards[1].handle_shard_message(
            ShardId::from_index(0).unwrap(),
            message,
            cluster.now,
        );
    }
    for sub in &subscribers {
        let out = cluster.output(sub);
        assert_eq!(payloads(&out), [b"one"], "every subscriber gets it once");
    }
}

#[test]
fn shared_group_members_on_different_shards_share_the_messages() {
    // [MQTT-4.8.2] each message goes to exactly one member of the group.
    let mut cluster = Cluster::new(2);
    let a = cluster.connect(&id_on("a", 0, 2));
    let b = cluster.connect(&id_on("b", 1, 2));
    cluster.subscribe(&a, "$share/g/work/+");
    cluster.subscribe(&b, "$share/g/work/+");
    cluster.settle();
    cluster.output(&a);
    cluster.output(&b);
    let publisher = cluster.connect(&id_on("p", 0, 2));
    for _ in 0..10 {
        cluster.send(&publisher, publish("work/1", b"job", false));
        cluster.settle();
    }
    let (got_a, got_b) = (payloads(&cluster.output(&a)).len(), payloads(&cluster.output(&b)).len());
    assert_eq!(got_a + got_b, 10);
    assert!(got_a > 0 && got_b > 0, "both members get work: {got_a} / {got_b}");
}

#[test]
fn each_group_takes_turns_over_shards_and_over_members_within_a_shard() {
    // Group g: one member on shard 0, two on shard 1; group h on the same
    // topic: one member on each. Each message goes to one member of each
    // group; the member shards of a group take turns, and so do the members
    // of a group within a shard.
    let mut cluster = Cluster::new(2);
    let g0 = cluster.connect(&id_on("g0-", 0, 2));
    let g1 = cluster.connect(&id_on("g1-", 1, 2));
    let g2 = cluster.connect(&id_on("g2-", 1, 2));
    let h0 = cluster.connect(&id_on("h0-", 0, 2));
    let h1 = cluster.connect(&id_on("h1-", 1, 2));
    for member in [&g0, &g1, &g2] {
        cluster.subscribe(member, "$share/g/work/+");
    }
    for member in [&h0, &h1] {
        cluster.subscribe(member, "$share/h/work/#");
    }
    cluster.settle();
    for member in [&g0, &g1, &g2, &h0, &h1] {
        cluster.output(member);
    }
    let publisher = cluster.connect(&id_on("p", 0, 2));
    for _ in 0..12 {
        cluster.send(&publisher, publish("work/1", b"job", false));
        cluster.settle();
    }
    let mut got = |client: &Client| payloads(&cluster.output(client)).len();
    assert_eq!([got(&g0), got(&g1), got(&g2)], [6, 3, 3]);
    assert_eq!([got(&h0), got(&h1)], [6, 6]);
    let dropped: u64 = cluster.shards.iter().map(|s| s.counters().shard.deliveries_dropped).sum();
    assert_eq!(dropped, 0);
}

#[test]
fn a_group_message_for_a_group_the_receiver_no_longer_has_is_dropped_and_counted() {
    // Shard 0 routes to shard 1's part of the group by shard 1's id for it.
    // Shard 1's only member leaves, and a new member makes the group again,
    // while messages routed with the old id are still on their way: those
    // find no group and are dropped and counted; later ones use the new id.
    let mut cluster = Cluster::new(2);
    let a = cluster.connect(&id_on("a", 0, 2));
    let b = cluster.connect(&id_on("b", 1, 2));
    cluster.subscribe(&a, "$share/g/work/+");
    cluster.subscribe(&b, "$share/g/work/+");
    cluster.settle();
    cluster.output(&a);
    cluster.output(&b);
    let publisher = cluster.connect(&id_on("p", 0, 2));
    for _ in 0..4 {
        cluster.send(&publisher, publish("work/1", b"old", false));
    }
    // Two of the four for shard 1, held back by the test.
    let in_flight = cluster.queued(0, 1);
    assert_eq!(in_flight.len(), 2, "{in_flight:?}");
    assert!(in_flight.iter().all(|m| matches!(m, ShardMessage::GroupPublish { .. })));
    assert_eq!(payloads(&cluster.output(&a)), [b"old", b"old"]);
    // b's clean session ends: shard 1's group goes; b2 makes it again.
    cluster.close(&b);
    let b2 = cluster.connect(&id_on("b2-", 1, 2));
    cluster.subscribe(&b2, "$share/g/work/+");
    cluster.settle();
    cluster.output(&b2);
    let from = ShardId::from_index(0).unwrap();
    for message in in_flight {
        cluster.shards[1].handle_shard_message(from, message, cluster.now);
    }
    assert!(payloads(&cluster.output(&b2)).is_empty(), "not for the new group");
    assert_eq!(cluster.shards[1].counters().shard.deliveries_dropped, 2);
    // New messages reach the group as it is now.
    for _ in 0..4 {
        cluster.send(&publisher, publish("work/1", b"new", false));
        cluster.settle();
    }
    assert_eq!(payloads(&cluster.output(&a)), [b"new", b"new"]);
    assert_eq!(payloads(&cluster.output(&b2)), [b"new", b"new"]);
    assert_eq!(cluster.shards[1].counters().shard.deliveries_dropped, 2);
}

#[test]
fn a_group_whose_members_leave_on_every_shard_takes_no_more_messages() {
    // Members join and leave on both shards; once the last has left and
    // every shard knows it, messages are no longer routed to the group.
    let mut cluster = Cluster::new(2);
    let a = cluster.connect(&id_on("a", 0, 2));
    let b = cluster.connect(&id_on("b", 1, 2));
    cluster.subscribe(&a, "$share/g/work/+");
    cluster.subscribe(&b, "$share/g/work/+");
    cluster.settle();
    cluster.close(&a);
    let publisher = cluster.connect(&id_on("p", 0, 2));
    cluster.send(&publisher, publish("work/1", b"to b", false));
    cluster.settle();
    assert_eq!(payloads(&cluster.output(&b)), [b"to b"]);
    cluster.close(&b);
    cluster.send(&publisher, publish("work/1", b"nobody", false));
    assert!(cluster.queued(0, 1).is_empty(), "no group left to route to");
    let dropped: u64 = cluster.shards.iter().map(|s| s.counters().shard.deliveries_dropped).sum();
    assert_eq!(dropped, 0);
}

#[test]
fn retained_messages_live_on_their_topic_owner_and_reach_wildcard_subscribers() {
    let mut cluster = Cluster::new(2);
    let publisher = cluster.connect(&id_on("p", 0, 2));
    for topic in ["r/1", "r/2", "r/3", "r/4", "r/5", "r/6"] {
        cluster.send(&publisher, publish(topic, b"kept", true));
    }
    cluster.settle();
    for shard in 0..2 {
        let sub = cluster.connect(&id_on(&format!("w{shard}-"), shard, 2));
        cluster.subscribe(&sub, "r/#");
        cluster.settle();
        let out = cluster.output(&sub);
        let retained: Vec<_> = out
            .iter()
            .filter_map(|p| match p {
                Packet::Publish(p) => Some((p.topic.as_str().to_owned(), p.retain)),
                _ => None,
            })
            .collect();
        // [MQTT-3.3.1-6] all six, from both shards, [MQTT-3.3.1-8] RETAIN set.
        assert_eq!(retained.len(), 6, "{retained:?}");
        assert!(retained.iter().all(|(_, retain)| *retain));
    }
}

/// What a shard's log holds, taken from it: `set TOPIC`, `delete TOPIC`,
/// `compaction` and `compacted` (a compaction's start and end).
fn logged(log: &crate::store::Log) -> Vec<String> {
    use crate::store::{Entry, Record};
    let mut entries = Vec::new();
    log.take_now(&mut entries);
    entries
        .into_iter()
        .map(|entry| match entry {
            Entry::Record(Record::RetainSet(m)) => format!("set {}", m.topic),
            Entry::Record(Record::RetainDelete(topic)) => format!("delete {topic}"),
            Entry::Record(Record::SnapshotEnd) => "end".to_owned(),
            Entry::Record(other) => format!("{other:?}"),
            Entry::CompactionStart => "compaction".to_owned(),
            Entry::CompactionEnd => "compacted".to_owned(),
        })
        .collect()
}

#[test]
fn the_owner_of_a_retained_topic_logs_its_changes() {
    let mut cluster = Cluster::new(2);
    let logs: Vec<_> = (0..2).map(|_| Rc::new(crate::store::Log::new())).collect();
    let now = cluster.now;
    for (shard, log) in cluster.shards.iter_mut().zip(&logs) {
        shard.attach_log(Rc::clone(log), Default::default(), now);
    }
    let publisher = cluster.connect(&id_on("p", 0, 2));
    let topics = ["r/1", "r/2", "r/3", "r/4", "r/5", "r/6"];
    for topic in topics {
        cluster.send(&publisher, publish(topic, b"kept", true));
    }
    // [MQTT-3.3.1-10] an empty payload deletes; deleting nothing logs nothing.
    cluster.send(&publisher, publish("r/1", b"", true));
    cluster.send(&publisher, publish("r/none", b"", true));
    // Not retained: not logged.
    cluster.send(&publisher, publish("r/2", b"live", false));
    cluster.settle();
    for (shard, log) in logs.iter().enumerate() {
        let owned: Vec<&str> =
            topics.into_iter().filter(|t| home_shard(t.as_bytes(), 2).index() == shard).collect();
        let mut expected: Vec<String> = owned.iter().map(|t| format!("set {t}")).collect();
        if owned.contains(&"r/1") {
            expected.push("delete r/1".to_owned());
        }
        assert_eq!(logged(log), expected, "shard {shard}");
        // Compaction: asked by the writer, the live messages the shard
        // owns, a slice of at most two records at a time.
        log.request_compaction();
        let shard_state = &mut cluster.shards[shard];
        assert!(shard_state.begin_compaction());
        assert!(!log.wants_compaction());
        assert!(!shard_state.begin_compaction(), "one at a time");
        let mut steps = 1;
        while !shard_state.compaction_step(cluster.now, 2).unwrap().done {
            steps += 1;
        }
        assert!(shard_state.compaction_step(cluster.now, 2).is_none(), "over");
        let mut written = logged(log);
        assert_eq!(written.first().map(String::as_str), Some("compaction"));
        assert_eq!(written.pop().as_deref(), Some("compacted"));
        written.remove(0);
        written.sort();
        let live: Vec<String> =
            owned.into_iter().filter(|t| *t != "r/1").map(|t| format!("set {t}")).collect();
        assert_eq!(written, live, "shard {shard}");
        assert!(steps > live.len() / 2, "in slices: {steps} steps");
    }
}

#[test]
fn a_retained_message_refused_by_the_limit_is_not_logged() {
    let limits = SessionLimits { max_retained_messages: 1, ..SessionLimits::default() };
    let mut cluster = Cluster::with_limits(1, limits);
    let log = Rc::new(crate::store::Log::new());
    let now = cluster.now;
    cluster.shards[0].attach_log(Rc::clone(&log), Default::default(), now);
    let publisher = cluster.connect("p");
    cluster.send(&publisher, publish("r/1", b"one", true));
    // Past the limit: not stored, so not logged.
    cluster.send(&publisher, publish("r/2", b"two", true));
    // Replacing what is there is always done, and logged.
    cluster.send(&publisher, publish("r/1", b"uno", true));
    assert_eq!(logged(&log), vec!["set r/1", "set r/1"]);
}

#[test]
fn a_taken_over_connection_is_detached() {
    // [MQTT-3.1.4-2]
    let mut cluster = Cluster::new(1);
    let first = cluster.connect("twin");
    let second = cluster.connect("twin");
    let now = cluster.now;
    let mut out = BytesMut::new();
    assert!(matches!(
        cluster.shards[0].poll_transmit(first.key, first.id, now, &mut out),
        Err(ConnectionError::Detached)
    ));
    assert!(cluster.shards[0].poll_transmit(second.key, second.id, now, &mut out).is_ok());
}

/// Whether a 3.1.1 session with Clean Session 0 is still there when its
/// client comes back `away` after disconnecting, with `max_session_expiry`.
fn session_present_after(max_session_expiry: Option<Duration>, away: Duration) -> bool {
    let mut cluster =
        Cluster::with_limits(1, SessionLimits { max_session_expiry, ..SessionLimits::default() });
    let (client, _) = cluster.connect_with("persistent", false);
    cluster.close(&client);
    cluster.now += away;
    cluster.sweep();
    let (_, output) = cluster.connect_with("persistent", false);
    match &output[..] {
        [Packet::ConnAck(ack), ..] => ack.session_present,
        other => panic!("no CONNACK: {other:?}"),
    }
}

#[test]
fn a_persistent_session_is_kept_until_the_longest_session_expiry() {
    // 3.1.1 has no Session Expiry Interval: the server's longest applies,
    // as to a 5.0 client asking for none (MQTT 5.0 section 3.1.2.11.2).
    let hour = Duration::from_secs(3600);
    assert!(session_present_after(Some(hour), hour - Duration::from_secs(1)));
    assert!(!session_present_after(Some(hour), hour));
    // 0: the session ends with the connection.
    assert!(!session_present_after(Some(Duration::ZERO), Duration::ZERO));
    // No limit: kept for good.
    assert!(session_present_after(None, Duration::from_secs(10 * 365 * 86_400)));
}

#[test]
fn an_expired_session_takes_its_queue_and_subscriptions_along() {
    let expiry = Duration::from_secs(60);
    let limits = SessionLimits { max_session_expiry: Some(expiry), ..SessionLimits::default() };
    let mut cluster = Cluster::with_limits(2, limits);
    // The subscriber lives on shard 1, the publisher on shard 0: the
    // subscription reaches shard 0's interest replica and must leave it.
    let (subscriber_id, publisher_id) = (id_on("sub", 1, 2), id_on("pub", 0, 2));
    let (subscriber, _) = cluster.connect_with(&subscriber_id, false);
    cluster.subscribe(&subscriber, "t/#");
    cluster.settle();
    assert!(matches!(cluster.output(&subscriber)[..], [Packet::SubAck(_)]));
    cluster.close(&subscriber);
    let publisher = cluster.connect(&publisher_id);
    let publish_qos1 = |payload: &'static [u8], id: u16| {
        let Packet::Publish(mut publish) = publish("t/a", payload, false) else { unreachable!() };
        publish.qos = QoS::AtLeastOnce;
        publish.packet_id = PacketId::new(id);
        Packet::Publish(publish)
    };
    // Within the expiry the offline session queues the message.
    cluster.now += expiry - Duration::from_secs(1);
    cluster.sweep();
    cluster.send(&publisher, publish_qos1(b"queued", 1));
    cluster.settle();
    let (subscriber, output) = cluster.connect_with(&subscriber_id, false);
    assert!(matches!(&output[0], Packet::ConnAck(ack) if ack.session_present));
    assert_eq!(payloads(&output), [b"queued"]);
    cluster.close(&subscriber);
    // Past it, the session, its subscription and its interest are gone.
    cluster.now += expiry;
    cluster.sweep();
    assert_eq!(cluster.shards[1].counters().shard.sessions_expired, 1);
    cluster.send(&publisher, publish_qos1(b"lost", 2));
    assert!(cluster.queued(0, 1).is_empty(), "shard 0 still forwards to the expired session");
    let (_, output) = cluster.connect_with(&subscriber_id, false);
    assert!(matches!(&output[..], [Packet::ConnAck(ack)] if !ack.session_present));
}

/// Whether the shard has closed the client's connection.
fn closed(cluster: &mut Cluster, client: &Client) -> bool {
    let now = cluster.now;
    let mut out = BytesMut::new();
    matches!(
        cluster.shards[client.shard].poll_transmit(client.key, client.id, now, &mut out),
        Err(ConnectionError::Closed(_))
    )
}

#[test]
fn the_sweep_closes_a_connection_silent_for_one_and_a_half_keep_alives() {
    // [MQTT-3.1.2-24] With a keep alive of 2 s: closed 3 s after the last
    // packet. The sweep's entry for 3 s after the CONNECT comes due after
    // the PINGREQ at 2 s moved the deadline to 5 s: it must find nothing
    // due then, and look again at 5 s.
    let mut cluster = Cluster::new(1);
    let (client, _) = cluster.connect_keep_alive("ka", true, 2);
    let start = cluster.now;
    cluster.now += Duration::from_secs(2);
    cluster.send(&client, Packet::PingReq);
    assert!(matches!(cluster.output(&client)[..], [Packet::PingResp]));
    for (at_ms, expect_closed) in [(3_000, false), (4_999, false), (5_000, true)] {
        cluster.now = start + Duration::from_millis(at_ms);
        cluster.sweep();
        assert_eq!(closed(&mut cluster, &client), expect_closed, "at {at_ms} ms");
    }
}

#[test]
fn a_session_back_before_its_expiry_is_not_expired_by_the_old_deadline() {
    // Detached at 0 with an expiry of 10 s, back at 5 s with a keep alive
    // of 60 s, traffic-free: the entry queued for 10 s finds a connected
    // session, and the keep alive is only due at 5 + 90 s.
    let limits =
        SessionLimits { max_session_expiry: Some(Duration::from_secs(10)), ..Default::default() };
    let mut cluster = Cluster::with_limits(1, limits);
    let (first, _) = cluster.connect_keep_alive("back", false, 60);
    cluster.close(&first);
    cluster.now += Duration::from_secs(5);
    let (second, output) = cluster.connect_keep_alive("back", false, 60);
    assert!(matches!(&output[0], Packet::ConnAck(ack) if ack.session_present));
    let start = cluster.now - Duration::from_secs(5);
    for (at_s, expect_closed) in [(10, false), (94, false), (95, true)] {
        cluster.now = start + Duration::from_secs(at_s);
        cluster.sweep();
        assert_eq!(closed(&mut cluster, &second), expect_closed, "at {at_s} s");
        assert_eq!(cluster.shards[0].counters().shard.sessions_expired, 0);
    }
}

/// A SUBSCRIBE of `n` filters `{prefix}/{i}`.
fn subscribe_many(prefix: &str, n: usize) -> Packet {
    Packet::Subscribe(Subscribe {
        refused: Vec::new(),
        packet_id: PacketId::new(7).unwrap(),
        properties: Default::default(),
        subscriptions: (0..n)
            .map(|i| Subscription {
                filter: TopicFilter::new(format!("{prefix}/{i}")).unwrap(),
                options: SubscriptionOptions { qos: QoS::AtMostOnce, ..Default::default() },
            })
            .collect(),
    })
}

#[test]
fn a_large_subscribe_is_indexed_in_turns_and_acknowledged_after_the_last() {
    let mut cluster = Cluster::new(1);
    let sub = cluster.connect("big");
    let n = INDEX_WORK_PER_TURN * 3 + 5;
    cluster.send(&sub, subscribe_many("t", n));
    // One turn is done while handling the packet; the SUBACK waits.
    assert!(cluster.shards[0].has_index_work(sub.key));
    assert!(cluster.output(&sub).is_empty(), "no SUBACK before every filter is indexed");
    let mut turns = 1;
    while cluster.shards[0].has_index_work(sub.key) {
        let now = cluster.now;
        cluster.shards[0].handle_index_work(sub.key, sub.id, now).unwrap();
        turns += 1;
        assert!(turns <= 5, "each turn indexes {INDEX_WORK_PER_TURN} filters");
    }
    assert_eq!(turns, 4);
    assert!(matches!(cluster.output(&sub)[..], [Packet::SubAck(_)]));
    // Every filter is in the index: the last one matches.
    let publisher = cluster.connect("pub");
    cluster.send(&publisher, publish(&format!("t/{}", n - 1), b"last", false));
    assert_eq!(payloads(&cluster.output(&sub)), [b"last"]);
}

#[test]
fn a_persistent_session_that_leaves_mid_subscribe_keeps_every_filter() {
    let mut cluster = Cluster::new(1);
    let (sub, _) = cluster.connect_with("leaver", false);
    let n = INDEX_WORK_PER_TURN * 2;
    cluster.send(&sub, subscribe_many("t", n));
    assert!(cluster.shards[0].has_index_work(sub.key));
    cluster.close(&sub);
    assert!(!cluster.shards[0].has_index_work(sub.key));
    let (sub, _) = cluster.connect_with("leaver", false);
    let publisher = cluster.connect("pub");
    let mut last = publish(&format!("t/{}", n - 1), b"last", false);
    if let Packet::Publish(publish) = &mut last {
        publish.qos = QoS::AtLeastOnce;
        publish.packet_id = PacketId::new(1);
    }
    cluster.send(&publisher, last);
    assert_eq!(payloads(&cluster.output(&sub)), [b"last"]);
}

#[test]
fn subacks_wait_for_the_acknowledgement_of_their_last_revision() {
    // 2 shards: every new filter is an interest delta to acknowledge. The
    // waiters are released in revision order, each entry looked at once
    // (the old code scanned every waiter per acknowledgement: quadratic).
    let mut cluster = Cluster::new(2);
    let sub = cluster.connect(&id_on("s", 0, 2));
    for round in 0..20 {
        cluster.send(&sub, subscribe_many(&format!("r{round}"), 200));
        while cluster.shards[0].has_index_work(sub.key) {
            let now = cluster.now;
            cluster.shards[0].handle_index_work(sub.key, sub.id, now).unwrap();
        }
    }
    assert!(cluster.output(&sub).is_empty(), "SUBACKs wait for the peer's acknowledgements");
    assert_eq!(cluster.shards[0].interest_waiters(), 20, "one barrier per SUBSCRIBE");
    cluster.settle();
    assert!(cluster.shards[0].interest_waiters() == 0);
    let acks = cluster.output(&sub);
    assert_eq!(acks.iter().filter(|p| matches!(p, Packet::SubAck(_))).count(), 20);
}

#[test]
fn protocol_violations_close_the_connection_and_are_counted_mqtt_4_8_0_1() {
    // [MQTT-4.8.0-1] a protocol violation closes the connection; the shard
    // counts it. A PUBREC for a packet id that was never sent is not one (it
    // is counted by the session as an unexpected acknowledgement).
    let mut cluster = Cluster::new(1);
    let client = cluster.connect("violator");
    let ack = crate::protocol::PubResponse::new(PacketId::new(9).unwrap());
    cluster.send(&client, Packet::PubRec(ack.clone()));
    assert_eq!(cluster.shards[0].counters().shard.protocol_violations, 0);
    let now = cluster.now;
    let open = cluster.shards[0].handle_packet(client.key, client.id, now, Packet::PingResp);
    assert!(matches!(open, Ok(false)), "the connection is closed");
    assert_eq!(cluster.shards[0].counters().shard.protocol_violations, 1);
}

/// A PUBLISH from a client at QoS 1 or 2.
fn publish_acked(topic: &str, qos: QoS, id: u16, dup: bool) -> Packet {
    Packet::Publish(Publish {
        dup,
        qos,
        retain: false,
        topic: TopicName::new(topic).unwrap(),
        packet_id: PacketId::new(id),
        properties: Default::default(),
        payload: bytes::Bytes::from_static(b"m"),
    })
}

#[test]
fn the_snapshot_counts_connects_publishes_drops_takeovers_and_violations() {
    use crate::metrics::{Counters, RouterCounters, SessionCounters, ShardCounters, Snapshot};
    let limits = SessionLimits {
        max_inflight: std::num::NonZeroU16::new(1).unwrap(),
        max_queued_messages: 2,
        max_queued_retained: 1,
        max_session_expiry: Some(Duration::from_secs(60)),
        ..SessionLimits::default()
    };
    let mut cluster = Cluster::with_limits(2, limits);
    let sub_id = id_on("sub", 0, 2);
    let (sub, _) = cluster.connect_with(&sub_id, false);
    cluster.subscribe(&sub, "t/#");
    cluster.settle();
    assert!(matches!(cluster.output(&sub)[..], [Packet::SubAck(_)]));
    let publisher = cluster.connect(&id_on("pub", 0, 2));

    // Sent: a QoS 0 message, and a QoS 2 one (as QoS 1) that stays in
    // flight; its re-sent PUBLISH is answered but not routed again.
    cluster.send(&publisher, publish("t/a", b"0", false));
    cluster.send(&publisher, publish_acked("t/b", QoS::ExactlyOnce, 7, false));
    cluster.send(&publisher, publish_acked("t/b", QoS::ExactlyOnce, 7, true));
    assert_eq!(payloads(&cluster.output(&sub)).len(), 2);
    // An acknowledgement for an id not in flight.
    cluster
        .send(&sub, Packet::PubAck(crate::protocol::PubResponse::new(PacketId::new(99).unwrap())));
    // The window is full: two wait in the queue, the third goes past its
    // limit (the subscriber is connected: QoS 1 is never dropped for it)
    // and is cut when the subscriber goes away.
    for id in 1..=3 {
        cluster.send(&publisher, publish_acked("t/c", QoS::AtLeastOnce, id, false));
    }
    // QoS 0 to a client away is dropped.
    cluster.close(&sub);
    cluster.send(&publisher, publish("t/d", b"0", false));
    // Back: the message in flight is re-sent; taken over: re-sent again.
    let (_, output) = cluster.connect_with(&sub_id, false);
    assert!(matches!(&output[..], [Packet::ConnAck(_), Packet::Publish(p)] if p.dup));
    let (sub, output) = cluster.connect_with(&sub_id, false);
    assert!(matches!(&output[..], [Packet::ConnAck(_), Packet::Publish(p)] if p.dup));
    // A protocol violation closes it; the session then expires.
    let now = cluster.now;
    let open = cluster.shards[0].handle_packet(sub.key, sub.id, now, Packet::PingResp);
    assert!(matches!(open, Ok(false)));
    cluster.close(&sub);
    cluster.now += Duration::from_secs(61);
    cluster.sweep();

    // Three retained messages for a new subscription: one may wait.
    for topic in ["r/1", "r/2", "r/3"] {
        cluster.send(&publisher, publish(topic, b"kept", true));
    }
    cluster.settle();
    let late = cluster.connect(&id_on("late", 0, 2));
    cluster.subscribe(&late, "r/+");
    cluster.settle();
    // A shared-group message for a group with no member left here.
    let group = ShardMessage::GroupPublish {
        group: crate::index::GroupId::for_test(u64::MAX),
        message: std::sync::Arc::new(crate::message::Message {
            topic: TopicName::new("t/g").unwrap(),
            payload: bytes::Bytes::from_static(b"g"),
            qos: QoS::AtMostOnce,
            retain: false,
            properties: Default::default(),
            publisher: None,
            expires_at: None,
            id: 0,
        }),
    };
    cluster.shards[0].handle_shard_message(ShardId::from_index(1).unwrap(), group, cluster.now);
    // QoS 0 past the limit of the queue towards a peer is dropped.
    let far = cluster.connect(&id_on("far", 1, 2));
    cluster.subscribe(&far, "flood");
    cluster.settle();
    let mut flood = 0;
    while cluster.shards[0].counters().router.cross_core_qos0_dropped == 0 {
        cluster.send(&publisher, publish("flood", b"f", false));
        flood += 1;
    }
    assert!(flood > 10_000, "dropped only past the limit, at {flood}");
    cluster.queued(0, 1);

    let expected = Snapshot {
        shard: 0,
        // The publisher and the late subscriber; the first one expired.
        sessions: 2,
        sessions_online: 2,
        // The late subscriber's r/+ (the others' left with them).
        subscriptions: 1,
        // Of the three retained messages, the one whose topic hashes here.
        retained: 1,
        // "kept".
        retained_bytes: 4,
        cross_core_queued: 0,
        // The late subscriber's retained message (never polled here),
        // which does not count against max_queued_bytes.
        queued_messages: 1,
        queued_bytes: 0,
        inflight_messages: 0,
        shared_groups: 0,
        topic_gates: 0,
        counters: Counters {
            net: Default::default(),
            shard: ShardCounters {
                // t/a, t/d and the three retained; three t/c; one t/b.
                messages_received: [5 + flood, 3, 1],
                // t/a, t/b, three of t/c, one retained.
                deliveries: 6,
                // t/d, two retained, the group message.
                deliveries_dropped: 4,
                takeovers: 1,
                sessions_expired: 1,
                retained_expired: 0,
                retained_limit_exceeded: 0,
                protocol_violations: 1,
                // The third t/c.
                deliveries_over_limit: 1,
                overloads: 1,
                slow_consumers_disconnected: 0,
            },
            session: SessionCounters {
                duplicate_qos2_received: 1,
                // t/a at QoS 0, t/b at the subscription's QoS 1.
                publishes_sent: [1, 1, 0],
                publishes_resent: 2,
                dropped_offline_qos0: 1,
                dropped_queue_full: [0, 1, 0],
                dropped_retained_limit: 2,
                dropped_expired: 0,
                dropped_too_large: 0,
                unexpected_acks: 1,
                payload_format_invalid: 0,
                topic_filters_invalid: 0,
                subscriptions_quota_exceeded: 0,
                reauth_failed: 0,
                topic_limit_exceeded: 0,
                client_id_too_long: 0,
                publish_rate_limited: 0,
                acl_denied_publish: 0,
                refused_store_unavailable: 0,
                acl_denied_subscribe: 0,
                acl_denied_delivery: 0,
                dropped_slow_consumer: 0,
            },
            router: RouterCounters {
                cross_core_qos0_dropped: 1,
                congestion_events: 1,
                // r/1, r/2 and r/3: retained before anyone subscribed.
                dropped_no_subscribers: 3,
            },
            store: Default::default(),
            cluster: Default::default(),
        },
    };
    assert_eq!(cluster.shards[0].snapshot(), expected);
    // Shard 1 only held retained messages and one idle subscriber.
    let other = cluster.shards[1].snapshot();
    assert_eq!((other.shard, other.sessions), (1, 1));
    assert_eq!(other.counters, Counters::default());
}

// ---- MQTT 5.0 ----------------------------------------------------------------

/// A 5.0 CONNECT with a Session Expiry Interval of `expiry` seconds.
fn connect_v5(client_id: &str, expiry: u32) -> Connect {
    Connect {
        version: ProtocolVersion::V5,
        clean_start: false,
        keep_alive: 60,
        client_id: client_id.into(),
        will: None,
        username: None,
        password: None,
        properties: crate::protocol::ConnectProperties {
            session_expiry_interval: Some(expiry),
            ..Default::default()
        },
    }
}

fn disconnect_reason(packets: &[Packet]) -> Option<crate::protocol::ReasonCode> {
    packets.iter().find_map(|packet| match packet {
        Packet::Disconnect(disconnect) => Some(disconnect.reason),
        _ => None,
    })
}

#[test]
fn a_v5_connection_taken_over_is_sent_disconnect_0x8e_before_it_closes_mqtt_3_1_4_3() {
    // [MQTT-3.1.4-3] "If the ClientID represents a Client already connected
    // to the Server, the Server sends a DISCONNECT packet to the existing
    // Client with Reason Code of 0x8E (Session taken over)".
    let mut cluster = Cluster::new(1);
    let (first, _) = cluster.connect_packet(&connect_v5("twin", 60));
    let (second, output) = cluster.connect_packet(&connect_v5("twin", 60));
    assert!(matches!(&output[..], [Packet::ConnAck(connack)] if connack.session_present));
    let now = cluster.now;
    let mut out = BytesMut::new();
    let result = cluster.shards[0].poll_transmit(first.key, first.id, now, &mut out);
    assert!(matches!(result, Err(ConnectionError::Detached)));
    let last = decode_all(ProtocolVersion::V5, out);
    assert_eq!(disconnect_reason(&last), Some(crate::protocol::ReasonCode::SessionTakenOver));
    // Taken once; the new connection is untouched.
    let mut out = BytesMut::new();
    let _ = cluster.shards[0].poll_transmit(first.key, first.id, now, &mut out);
    assert!(out.is_empty());
    assert!(cluster.shards[0].poll_transmit(second.key, second.id, now, &mut out).is_ok());
}

#[test]
fn a_v5_session_ends_after_its_session_expiry_interval() {
    let mut cluster = Cluster::new(1);
    let (client, _) = cluster.connect_packet(&connect_v5("leaver", 10));
    cluster.close(&client);
    cluster.now += Duration::from_secs(9);
    cluster.sweep();
    assert_eq!(cluster.shards[0].session_count(), 1);
    cluster.now += Duration::from_secs(1);
    cluster.sweep();
    assert_eq!(cluster.shards[0].session_count(), 0);
    assert_eq!(cluster.shards[0].counters().shard.sessions_expired, 1);
    // Session Expiry Interval 0 (absent): the session ends with the
    // connection.
    let (client, _) = cluster.connect_packet(&connect_v5("brief", 0));
    cluster.close(&client);
    assert_eq!(cluster.shards[0].session_count(), 0);
}

#[test]
fn a_delayed_will_is_published_by_the_sweep_unless_the_client_returns_mqtt_3_1_3_9() {
    let mut cluster = Cluster::new(2);
    let watcher = cluster.connect("watcher");
    cluster.subscribe(&watcher, "wills/#");
    cluster.settle();
    cluster.output(&watcher);
    let mut connect = connect_v5("mortal", 600);
    connect.will = Some(crate::protocol::Will {
        topic: TopicName::new("wills/mortal").unwrap(),
        payload: bytes::Bytes::from_static(b"gone"),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: crate::protocol::WillProperties {
            will_delay_interval: Some(5),
            ..Default::default()
        },
    });
    // Away for 3 s, back in time: no will.
    let (client, _) = cluster.connect_packet(&connect);
    cluster.close(&client);
    cluster.now += Duration::from_secs(3);
    cluster.sweep();
    let (client, _) = cluster.connect_packet(&connect);
    cluster.now += Duration::from_secs(10);
    cluster.sweep();
    assert!(payloads(&cluster.output(&watcher)).is_empty());
    // Away for good: the will after 5 s.
    cluster.close(&client);
    cluster.now += Duration::from_secs(4);
    cluster.sweep();
    assert!(payloads(&cluster.output(&watcher)).is_empty());
    cluster.now += Duration::from_secs(1);
    cluster.sweep();
    assert_eq!(payloads(&cluster.output(&watcher)), [b"gone"]);
}

#[test]
fn shutdown_sends_every_v5_client_disconnect_0x8b() {
    let mut cluster = Cluster::new(1);
    let (v5, _) = cluster.connect_packet(&connect_v5("five", 0));
    let v3 = cluster.connect("three");
    let now = cluster.now;
    cluster.shards[0].begin_shutdown(now);
    let mut out = BytesMut::new();
    let result = cluster.shards[0].poll_transmit(v5.key, v5.id, now, &mut out);
    assert!(matches!(result, Err(ConnectionError::Closed(_))));
    let last = decode_all(ProtocolVersion::V5, out);
    assert_eq!(disconnect_reason(&last), Some(crate::protocol::ReasonCode::ServerShuttingDown));
    let mut out = BytesMut::new();
    let _ = cluster.shards[0].poll_transmit(v3.key, v3.id, now, &mut out);
    assert!(out.is_empty(), "3.1.1 has no DISCONNECT from the server");
}

#[test]
fn v3_and_v5_clients_exchange_messages_across_shards() {
    // 5.0 properties reach 5.0 subscribers unaltered [MQTT-3.3.2-17]; a
    // 3.1.1 subscriber gets the same message without them.
    let mut cluster = Cluster::new(2);
    let (v5, _) = cluster.connect_packet(&connect_v5(&id_on("five", 0, 2), 0));
    let v3 = cluster.connect(&id_on("three", 1, 2));
    cluster.subscribe(&v3, "mixed/#");
    cluster.subscribe(&v5, "mixed/#");
    cluster.settle();
    cluster.output(&v3);
    cluster.output(&v5);
    let mut from_v5 = Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: false,
        topic: TopicName::new("mixed/a").unwrap(),
        packet_id: None,
        properties: Default::default(),
        payload: bytes::Bytes::from_static(b"from five"),
    };
    from_v5.properties.make_mut().content_type = Some("text/plain".into());
    cluster.send(&v5, Packet::Publish(from_v5));
    cluster.send(&v3, publish("mixed/b", b"from three", false));
    cluster.settle();
    // Read with a 3.1.1 decoder: no properties on the wire.
    let to_v3 = cluster.output(&v3);
    let mut got = payloads(&to_v3);
    got.sort_unstable();
    assert_eq!(got, [&b"from five"[..], b"from three"]);
    let to_v5 = cluster.output(&v5);
    let mut got = payloads(&to_v5);
    got.sort_unstable();
    assert_eq!(got, [&b"from five"[..], b"from three"]);
    let from_five = to_v5.iter().find_map(|packet| match packet {
        Packet::Publish(publish) if &publish.payload[..] == b"from five" => Some(publish),
        _ => None,
    });
    assert_eq!(from_five.unwrap().properties.content_type.as_deref(), Some("text/plain"));
}

/// A v5 SUBSCRIBE of one filter, with its options and identifier.
fn subscribe_v5(packet_id: u16, filter: &str, qos: QoS, no_local: bool, id: Option<u32>) -> Packet {
    Packet::Subscribe(Subscribe {
        refused: Vec::new(),
        packet_id: PacketId::new(packet_id).unwrap(),
        properties: crate::protocol::SubscribeProperties {
            subscription_identifier: id.and_then(std::num::NonZeroU32::new),
            ..Default::default()
        },
        subscriptions: [Subscription {
            filter: TopicFilter::new(filter).unwrap(),
            options: SubscriptionOptions { qos, no_local, ..Default::default() },
        }]
        .into_iter()
        .collect(),
    })
}

/// A row of the overlapping-subscriptions matrix: who publishes what, and
/// the one copy the subscriber gets (QoS and subscription identifiers).
struct Case {
    own: bool,
    topic: &'static str,
    qos: QoS,
    copy: Option<(QoS, &'static [u32])>,
}

#[test]
fn overlapping_subscriptions_matrix_one_copy_highest_qos_every_identifier_mqtt_3_3_4_3() {
    // [MQTT-3.3.4-2] one copy per message at the maximum QoS of all the
    // matching subscriptions; [MQTT-3.3.4-3] "If the Server sends a single
    // copy of the message it MUST include in the PUBLISH packet the
    // Subscription Identifiers for all matching subscriptions which have
    // a Subscription Identifiers"; [MQTT-3.8.3-3] a No Local subscription
    // takes no part for the client's own messages, the others still do.
    let mut cluster = Cluster::new(2);
    let (me, _) = cluster.connect_packet(&connect_v5(&id_on("matrix", 0, 2), 0));
    let (other, _) = cluster.connect_packet(&connect_v5(&id_on("other", 1, 2), 0));
    let subscriptions = [
        ("mx/#", QoS::AtMostOnce, false, Some(1)),
        ("mx/+/b", QoS::ExactlyOnce, false, None),
        ("mx/a/b", QoS::AtLeastOnce, true, Some(3)),
        ("mx/a/+", QoS::AtLeastOnce, false, Some(4)),
        ("nl/x", QoS::AtLeastOnce, true, Some(5)),
    ];
    for (i, (filter, qos, no_local, id)) in subscriptions.into_iter().enumerate() {
        cluster.send(&me, subscribe_v5(i as u16 + 1, filter, qos, no_local, id));
    }
    cluster.settle();
    cluster.output(&me);
    // (publisher is me, topic, published QoS) -> (QoS, identifiers) of the
    // one copy, or nothing.
    let matrix = [
        Case {
            own: false,
            topic: "mx/a/b",
            qos: QoS::ExactlyOnce,
            copy: Some((QoS::ExactlyOnce, &[1, 3, 4][..])),
        },
        Case {
            own: true,
            topic: "mx/a/b",
            qos: QoS::ExactlyOnce,
            copy: Some((QoS::ExactlyOnce, &[1, 4][..])),
        },
        Case {
            own: true,
            topic: "mx/a/b",
            qos: QoS::AtLeastOnce,
            copy: Some((QoS::AtLeastOnce, &[1, 4][..])),
        },
        Case {
            own: false,
            topic: "mx/a/c",
            qos: QoS::ExactlyOnce,
            copy: Some((QoS::AtLeastOnce, &[1, 4][..])),
        },
        Case {
            own: false,
            topic: "mx/c/b",
            qos: QoS::ExactlyOnce,
            copy: Some((QoS::ExactlyOnce, &[1][..])),
        },
        Case {
            own: false,
            topic: "mx/z",
            qos: QoS::ExactlyOnce,
            copy: Some((QoS::AtMostOnce, &[1][..])),
        },
        Case {
            own: false,
            topic: "nl/x",
            qos: QoS::ExactlyOnce,
            copy: Some((QoS::AtLeastOnce, &[5][..])),
        },
        Case { own: true, topic: "nl/x", qos: QoS::ExactlyOnce, copy: None },
    ];
    for (n, Case { own, topic, qos, copy: expected }) in matrix.into_iter().enumerate() {
        let publisher = if own { &me } else { &other };
        let packet_id = (qos != QoS::AtMostOnce).then(|| PacketId::new(100 + n as u16).unwrap());
        let publish = Publish {
            dup: false,
            qos,
            retain: false,
            topic: TopicName::new(topic).unwrap(),
            packet_id,
            properties: Default::default(),
            payload: bytes::Bytes::from_static(b"m"),
        };
        cluster.send(publisher, Packet::Publish(publish));
        cluster.settle();
        cluster.output(&other);
        let copies: Vec<(QoS, Vec<u32>)> = cluster
            .output(&me)
            .into_iter()
            .filter_map(|packet| match packet {
                Packet::Publish(publish) => {
                    let mut ids: Vec<u32> = publish
                        .properties
                        .subscription_identifiers
                        .iter()
                        .map(|id| id.get())
                        .collect();
                    ids.sort_unstable();
                    Some((publish.qos, ids))
                }
                _ => None,
            })
            .collect();
        let expected: Vec<(QoS, Vec<u32>)> =
            expected.into_iter().map(|(qos, ids)| (qos, ids.to_vec())).collect();
        assert_eq!(copies, expected, "case {n}: {topic} at {qos:?}, own: {own}");
    }
}

#[test]
fn new_limits_reach_existing_offline_sessions_and_new_ones() {
    let two = SessionLimits { max_queued_messages: 2, ..SessionLimits::default() };
    let mut cluster = Cluster::with_limits(2, two);
    let (subscriber_id, publisher_id) = (id_on("sub", 1, 2), id_on("pub", 0, 2));
    let (subscriber, _) = cluster.connect_with(&subscriber_id, false);
    cluster.subscribe(&subscriber, "t/#");
    cluster.settle();
    assert!(matches!(cluster.output(&subscriber)[..], [Packet::SubAck(_)]));
    cluster.close(&subscriber);
    let publisher = cluster.connect(&publisher_id);
    let mut next_id = 0;
    let mut publish_qos1 = |cluster: &mut Cluster, count: usize| {
        for _ in 0..count {
            next_id += 1;
            let Packet::Publish(mut publish) = publish("t/a", b"m", false) else { unreachable!() };
            publish.qos = QoS::AtLeastOnce;
            publish.packet_id = PacketId::new(next_id);
            cluster.send(&publisher, Packet::Publish(publish));
        }
        cluster.settle();
    };
    publish_qos1(&mut cluster, 3);
    let five = SessionLimits { max_queued_messages: 5, ..SessionLimits::default() };
    cluster.shards.iter_mut().for_each(|shard| shard.set_limits(five));
    assert_eq!(cluster.shards[1].limits(), &five);
    // The offline session kept its two, and now takes three more.
    publish_qos1(&mut cluster, 4);
    let (subscriber, output) = cluster.connect_with(&subscriber_id, false);
    assert_eq!(payloads(&output).len(), 5);
    cluster.close(&subscriber);
    // A session created after the change starts with the new limits.
    let late_id = id_on("late", 1, 2);
    let (late, _) = cluster.connect_with(&late_id, false);
    cluster.subscribe(&late, "t/#");
    cluster.settle();
    cluster.close(&late);
    publish_qos1(&mut cluster, 7);
    let (_, output) = cluster.connect_with(&late_id, false);
    assert_eq!(payloads(&output).len(), 5);
}

#[test]
fn response_information_is_sent_only_when_asked_and_configured_mqtt_3_1_2_28() {
    // [MQTT-3.1.2-28] "A value of 0 indicates that the Server MUST NOT
    // return Response Information. If the value is 1 the Server MAY return
    // Response Information in the CONNACK packet."
    let response_information = |prefix: Option<&str>, client_id: &str, asked: Option<bool>| {
        let mut cluster = Cluster::new(1);
        cluster.shards[0].set_response_information_prefix(prefix);
        let mut connect = connect_v5(client_id, 0);
        connect.properties.request_response_information = asked;
        let (_, output) = cluster.connect_packet(&connect);
        let [Packet::ConnAck(connack)] = &output[..] else { panic!("{output:?}") };
        connack.properties.response_information.as_deref().map(str::to_owned)
    };
    assert_eq!(response_information(Some("reply/"), "c1", Some(true)).as_deref(), Some("reply/c1"));
    assert_eq!(response_information(Some("reply/"), "c1", Some(false)), None);
    assert_eq!(response_information(Some("reply/"), "c1", None), None);
    assert_eq!(response_information(None, "c1", Some(true)), None);
    // A client id that is not one topic level gets none.
    assert_eq!(response_information(Some("reply/"), "a/b", Some(true)), None);
    assert_eq!(response_information(Some("reply/"), "a+", Some(true)), None);
}

#[test]
fn sessions_online_follow_attach_takeover_detach_and_end() {
    let mut cluster = Cluster::new(1);
    let online = |cluster: &Cluster| {
        let snapshot = cluster.shards[0].snapshot();
        (snapshot.sessions, snapshot.sessions_online)
    };
    let (kept, _) = cluster.connect_with("kept", false);
    let passing = cluster.connect("passing");
    assert_eq!(online(&cluster), (2, 2));
    // A takeover replaces the connection: still one online.
    let (again, _) = cluster.connect_with("kept", false);
    assert_eq!(online(&cluster), (2, 2));
    cluster.close(&kept);
    assert_eq!(online(&cluster), (2, 2), "the old connection was already detached");
    cluster.close(&again);
    assert_eq!(online(&cluster), (2, 1), "a persistent session stays, offline");
    cluster.close(&passing);
    assert_eq!(online(&cluster), (1, 0), "a clean session ends with its connection");
    cluster.connect_with("kept", false);
    assert_eq!(online(&cluster), (1, 1));
}

// ---- Abuse limits: retained store, client id, will topic ---------------------

use crate::protocol::ReasonCode;

#[test]
fn new_retained_topics_past_the_limit_are_delivered_not_stored_and_counted() {
    // `max_retained_messages` = 4 over two shards: 2 topics per shard.
    // Past a shard's share, a new topic is not stored, but the PUBLISH
    // reaches its subscribers; replacing or clearing a stored topic always
    // works.
    let limits = SessionLimits { max_retained_messages: 4, ..SessionLimits::default() };
    let mut cluster = Cluster::with_limits(2, limits);
    assert_eq!(cluster.shards[0].retained_share(4), 2);
    assert_eq!(cluster.shards[0].retained_share(5), 3, "rounded up");
    let publisher = cluster.connect(&id_on("p", 0, 2));
    let live = cluster.connect(&id_on("live", 0, 2));
    cluster.subscribe(&live, "r/#");
    cluster.settle();
    cluster.output(&live);
    let topics: Vec<String> = (0..40).map(|i| format!("r/{i}")).collect();
    for topic in &topics {
        cluster.send(&publisher, publish(topic, b"kept", true));
        cluster.settle();
    }
    let delivered = cluster.output(&live).len();
    assert_eq!(delivered, 40, "every PUBLISH delivered");
    let stored: usize = cluster.shards.iter().map(|s| s.snapshot().retained).sum();
    assert_eq!(stored, 4);
    let refused: u64 =
        cluster.shards.iter().map(|s| s.counters().shard.retained_limit_exceeded).sum();
    assert_eq!(refused, 36);
    // A stored topic is replaced, then cleared, past the limit.
    let owner = |topic: &str| home_shard(topic.as_bytes(), 2).index();
    let now = cluster.now;
    let stored = topics
        .iter()
        .find(|topic| cluster.shards[owner(topic)].retained_of(topic, now).is_some())
        .unwrap()
        .clone();
    let shard = owner(&stored);
    cluster.send(&publisher, publish(&stored, b"new", true));
    cluster.settle();
    assert_eq!(&cluster.shards[shard].retained_of(&stored, now).unwrap().payload[..], b"new");
    cluster.send(&publisher, publish(&stored, b"", true));
    cluster.settle();
    assert!(cluster.shards[shard].retained_of(&stored, now).is_none());
    // Room again for one new topic on that shard.
    let fresh = (40..).map(|i| format!("r/{i}")).find(|t| owner(t) == shard).unwrap();
    cluster.send(&publisher, publish(&fresh, b"kept", true));
    cluster.settle();
    assert!(cluster.shards[shard].retained_of(&fresh, now).is_some());
}

#[test]
fn retained_bytes_past_the_limit_refuse_new_topics() {
    // 10 bytes on one shard: "kept" twice fits, a third topic does not.
    let limits = SessionLimits { max_retained_bytes: 10, ..SessionLimits::default() };
    let mut cluster = Cluster::with_limits(1, limits);
    let publisher = cluster.connect("p");
    for topic in ["a", "b", "c"] {
        cluster.send(&publisher, publish(topic, b"kept", true));
    }
    let snapshot = cluster.shards[0].snapshot();
    assert_eq!((snapshot.retained, snapshot.retained_bytes), (2, 8));
    assert_eq!(snapshot.counters.shard.retained_limit_exceeded, 1);
    // The broker's own messages ($SYS, no publisher) are always stored.
    let sys = crate::message::Message {
        topic: TopicName::new("$SYS/broker/uptime").unwrap(),
        payload: bytes::Bytes::from_static(b"42 seconds"),
        qos: QoS::AtMostOnce,
        retain: true,
        properties: Default::default(),
        publisher: None,
        expires_at: None,
        id: 0,
    };
    let now = cluster.now;
    cluster.shards[0].route(std::sync::Arc::new(sys), now);
    assert!(cluster.shards[0].retained_of("$SYS/broker/uptime", now).is_some());
    assert_eq!(cluster.shards[0].snapshot().counters.shard.retained_limit_exceeded, 1);
}

/// A 5.0 CONNECT of `client_id` with a will on `will_topic`, if any.
fn connect_with_will(
    version: ProtocolVersion,
    client_id: &str,
    will_topic: Option<&str>,
) -> Connect {
    Connect {
        version,
        clean_start: true,
        keep_alive: 0,
        client_id: client_id.into(),
        will: will_topic.map(|topic| crate::protocol::Will {
            topic: TopicName::new(topic).unwrap(),
            payload: bytes::Bytes::from_static(b"gone"),
            qos: QoS::AtMostOnce,
            retain: false,
            properties: Default::default(),
        }),
        username: None,
        password: None,
        properties: Default::default(),
    }
}

#[test]
fn a_client_id_past_the_limit_gets_0x85_mqtt_3_1_3_5() {
    // [MQTT-3.1.3-5] "The Server MUST allow ClientIds which are between 1
    // and 23 UTF-8 encoded bytes in length" and MAY allow more; one it
    // does not allow is answered with 0x85 Client Identifier not valid
    // [MQTT-3.1.3-8] (3.1.1: return code 2 [MQTT-3.1.3-9]).
    let limits = SessionLimits { max_client_id_length: 23, ..SessionLimits::default() };
    let mut cluster = Cluster::with_limits(1, limits);
    let now = cluster.now;
    let shard = &mut cluster.shards[0];
    let at_limit = "a".repeat(23);
    let accepted = shard.place(now, &connect_with_will(ProtocolVersion::V5, &at_limit, None), None);
    assert!(matches!(accepted, Placement::Attached { .. }), "{accepted:?}");
    for version in [ProtocolVersion::V5, ProtocolVersion::V3_1_1] {
        let long = connect_with_will(version, &"a".repeat(24), None);
        let refused = shard.place(now, &long, None);
        assert_eq!(refused, Placement::Refused(ReasonCode::ClientIdentifierNotValid));
    }
    assert_eq!(ReasonCode::ClientIdentifierNotValid.to_v3_connect_return_code(), 2);
    assert_eq!(shard.counters().session.client_id_too_long, 2);
}

#[test]
fn a_will_topic_past_the_limits_gets_connack_0x90() {
    // 5.0 CONNACK 0x90 Topic Name invalid: "The Will Topic Name is not
    // malformed, but is not accepted by this Server" (table 3-6); 3.1.1
    // has no such return code: 3, Server unavailable.
    let limits = SessionLimits { max_topic_levels: 2, ..SessionLimits::default() };
    let mut cluster = Cluster::with_limits(1, limits);
    let now = cluster.now;
    let shard = &mut cluster.shards[0];
    let deep = connect_with_will(ProtocolVersion::V5, "w1", Some("a/b/c"));
    assert_eq!(shard.place(now, &deep, None), Placement::Refused(ReasonCode::TopicNameInvalid));
    assert!(ReasonCode::TopicNameInvalid.is_valid_for(crate::protocol::PacketType::ConnAck));
    assert_eq!(ReasonCode::TopicNameInvalid.to_v3_connect_return_code(), 3);
    let within = connect_with_will(ProtocolVersion::V5, "w2", Some("a/b"));
    assert!(matches!(shard.place(now, &within, None), Placement::Attached { .. }));
    assert_eq!(shard.counters().session.topic_limit_exceeded, 1);
}

/// Overload without loss: backpressure and slow consumers.
mod overload;
#[path = "tests_persist.rs"]
pub(in crate::shard) mod persist;
/// Retained messages racing new subscriptions across three shards.
mod retained_race;

#[test]
fn a_retained_message_published_while_a_subscription_is_being_made_reaches_it() {
    // A publisher on one shard sets a retained message while a client on
    // the topic's owner shard subscribes: the publisher's shard has not yet
    // heard of the new interest (no live delivery), and the owner looked
    // for retained messages before the message reached it. The message
    // must still reach the subscriber: either as the retained message of
    // its subscription [MQTT-3.3.1-6] or as a publish that came after it.
    let mut cluster = Cluster::new(2);
    let owner = home_shard(b"cfg/device", 2).index();
    let other = 1 - owner;
    let sub = cluster.connect(&id_on("s", owner, 2));
    let publisher = cluster.connect(&id_on("p", other, 2));
    cluster.subscribe(&sub, "cfg/device");
    cluster.send(&publisher, publish("cfg/device", b"v1", true));
    cluster.settle();
    let out = cluster.output(&sub);
    assert!(matches!(out.first(), Some(Packet::SubAck(_))), "{out:?}");
    assert_eq!(payloads(&out), [b"v1"], "{out:?}");
    // And it is stored: a later subscriber gets it too.
    let late = cluster.connect(&id_on("l", other, 2));
    cluster.subscribe(&late, "cfg/device");
    cluster.settle();
    assert_eq!(payloads(&cluster.output(&late)), [b"v1"]);
}

#[test]
fn a_retained_message_racing_a_new_subscription_arrives_exactly_once() {
    // Both shards as the topic's owner, and the subscriber's interest
    // reaching the publisher's shard before or after the publish: in each
    // case the subscriber gets the message once, live or retained, never
    // twice and never not at all [MQTT-3.3.1-6].
    let topics = ["race/a", "race/b", "race/c", "race/d"];
    let owners: std::collections::BTreeSet<usize> =
        topics.iter().map(|topic| home_shard(topic.as_bytes(), 2).index()).collect();
    assert_eq!(owners.len(), 2, "both shards own one of the topics");
    for topic in topics {
        for interest_first in [false, true] {
            let mut cluster = Cluster::new(2);
            let sub = cluster.connect(&id_on("s", 0, 2));
            let publisher = cluster.connect(&id_on("p", 1, 2));
            cluster.subscribe(&sub, topic);
            if interest_first {
                for message in cluster.queued(0, 1) {
                    let origin = ShardId::from_index(0).unwrap();
                    cluster.shards[1].handle_shard_message(origin, message, cluster.now);
                }
            }
            cluster.send(&publisher, publish(topic, b"v1", true));
            cluster.settle();
            let out = cluster.output(&sub);
            let owner = home_shard(topic.as_bytes(), 2).index();
            assert_eq!(payloads(&out), [b"v1"], "owner {owner}, interest first {interest_first}");
        }
    }
}

/// A waker that counts how often it is woken.
struct CountingWaker(std::sync::atomic::AtomicUsize);

impl std::task::Wake for CountingWaker {
    fn wake(self: std::sync::Arc<Self>) {
        self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// QoS 1 fan-in as the connection loop drives it: the publishes of one
/// read batch are handled one by one, then the publisher's output is taken
/// once. Their PUBACKs leave in that one transmit, in the order of the
/// publishes ([MQTT-4.3.2-2] "MUST respond with a PUBACK Packet"; 4.6
/// [MQTT-4.6.0-2] "MUST send PUBACK packets in the order in which the
/// corresponding PUBLISH packets were received"); the subscriber's task is
/// woken once for the whole batch, not once per message, and takes every
/// delivery in one transmit; its PUBACKs, read in one batch, empty its
/// window.
#[test]
fn one_read_batch_of_qos1_publishes_is_one_transmit_each_way_and_one_wake_up() {
    const BATCH: u16 = 20;
    let mut cluster = Cluster::new(1);
    let sub = cluster.connect("sub");
    cluster.subscribe(&sub, "t/#");
    assert!(matches!(cluster.output(&sub)[..], [Packet::SubAck(_)]));
    let publisher = cluster.connect("pub");
    let wakes = std::sync::Arc::new(CountingWaker(Default::default()));
    let waker = Waker::from(std::sync::Arc::clone(&wakes));
    // The subscriber's task is parked, waiting for output.
    assert!(!cluster.shards[0].register_waker(sub.key, sub.id, &waker));

    for id in 1..=BATCH {
        cluster.send(&publisher, publish_acked("t/x", QoS::AtLeastOnce, id, false));
    }
    let mut out = BytesMut::new();
    let now = cluster.now;
    let written =
        cluster.shards[0].poll_transmit(publisher.key, publisher.id, now, &mut out).unwrap();
    assert_eq!(written, usize::from(BATCH), "every PUBACK in one transmit");
    let acks: Vec<_> = decode_all(publisher.version, out)
        .into_iter()
        .map(|packet| match packet {
            Packet::PubAck(ack) => ack.packet_id.get(),
            other => panic!("expected a PUBACK, got {other:?}"),
        })
        .collect();
    assert_eq!(acks, (1..=BATCH).collect::<Vec<_>>());

    assert_eq!(wakes.0.load(std::sync::atomic::Ordering::Relaxed), 1, "one wake-up per batch");
    let deliveries = cluster.output(&sub);
    assert_eq!(deliveries.len(), usize::from(BATCH), "every delivery in one transmit");
    for packet in deliveries {
        let Packet::Publish(publish) = packet else { panic!("expected a PUBLISH") };
        let id = publish.packet_id.expect("QoS 1 has a packet id");
        cluster.send(&sub, Packet::PubAck(crate::protocol::PubResponse::new(id)));
    }
    assert!(cluster.output(&sub).is_empty());
    let session = cluster.shards[0].session_mut(sub.key, sub.id).unwrap();
    assert_eq!(session.inflight_len(), 0, "every PUBACK freed its window slot");
}
