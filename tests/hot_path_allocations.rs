//! The hot path allocates per message, never per subscriber (issue 18 item
//! 5; design.md: "no allocation per subscriber (share `Bytes`)"): a QoS 0
//! publish to 1,000 subscribers and the writes of its 1,000 deliveries,
//! and fan-in of 100 publishers to one subscriber at QoS 0 and at QoS 1
//! (PUBACKs both ways), and the ACL checks of a publish and a delivery,
//! counted with a global allocator that counts the allocations this thread
//! makes while the work runs.
//!
//! The shard runs through its public API on the test's own thread, as a
//! connection task drives it: `handle_packet` for what a client sent,
//! `poll_transmit` for what its connection writes, into a buffer reused as
//! a connection reuses its own. A warm-up round first sizes what keeps its
//! capacity (queues, the write buffer, the in-flight table). Counts, not
//! times: they are the same on any machine.

use bytes::{Bytes, BytesMut};
use ringmq::auth::acl::{AclFile, ClientAcl};
use ringmq::protocol::{
    Connect, Decoder, Packet, PacketId, ProtocolVersion, PubResponse, Publish, QoS, Subscribe,
    Subscription, SubscriptionOptions, TopicFilter, TopicName,
};
use ringmq::router::{Outbox, ShardId};
use ringmq::session::SessionLimits;
use ringmq::shard::{ConnectOutcome, ConnectionId, SessionKey, Shard};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::num::NonZeroU16;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

/// The system allocator, counting this thread's allocations while
/// [`allocations_of`] measures.
struct Counting;

thread_local! {
    /// Whether this thread's allocations are counted now. Const-initialized
    /// and without a destructor, so the allocator may touch it at any time.
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

fn count() {
    if COUNTING.try_with(Cell::get).unwrap_or(false) {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
    }
}

// SAFETY: every call forwards to `System` with the caller's arguments, so
// `System`'s guarantees hold; the counting has no effect on the memory.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System` with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: forwarded with the caller's arguments.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// The allocations `work` makes on this thread.
fn allocations_of<T>(work: impl FnOnce() -> T) -> (u64, T) {
    let before = ALLOCATIONS.with(Cell::get);
    COUNTING.with(|on| on.set(true));
    let out = work();
    COUNTING.with(|on| on.set(false));
    (ALLOCATIONS.with(Cell::get) - before, out)
}

/// One shard and its connected clients, driven as connection tasks would.
struct Broker {
    shard: Shard,
    now: Instant,
    /// A connection's write buffer, reused for every client's output.
    out: BytesMut,
}

#[derive(Clone, Copy)]
struct Client {
    key: SessionKey,
    id: ConnectionId,
}

impl Broker {
    fn new() -> Self {
        let id = ShardId::from_index(0).unwrap();
        // Room for every delivery of a round: in flight, or queued.
        let limits = SessionLimits {
            max_inflight: NonZeroU16::new(1_000).unwrap(),
            max_queued_messages: 1_000_000,
            max_queued_bytes: 1 << 30,
            ..SessionLimits::default()
        };
        let shard = Shard::new(id, 1, limits, Rc::new(Outbox::new(1)), 1);
        Self { shard, now: Instant::now(), out: BytesMut::with_capacity(64 * 1024) }
    }

    fn connect(&mut self, client_id: &str) -> Client {
        let connect = Connect {
            version: ProtocolVersion::V3_1_1,
            clean_start: true,
            keep_alive: 0,
            client_id: client_id.into(),
            will: None,
            username: None,
            password: None,
            properties: Default::default(),
        };
        let id = self.shard.new_connection_id();
        let outcome = self.shard.handle_connect(self.now, &connect, client_id.into(), id);
        let ConnectOutcome::Accepted(key) = outcome else { panic!("refused: {outcome:?}") };
        let client = Client { key, id };
        self.take_output(client);
        client
    }

    fn subscribe(&mut self, client: Client, filter: &str, qos: QoS) {
        let subscribe = Subscribe {
            refused: Vec::new(),
            packet_id: PacketId::new(1).unwrap(),
            properties: Default::default(),
            subscriptions: vec![Subscription {
                filter: TopicFilter::new(filter).unwrap(),
                options: SubscriptionOptions { qos, ..Default::default() },
            }]
            .into(),
        };
        self.send(client, Packet::Subscribe(subscribe));
        self.take_output(client);
    }

    fn send(&mut self, client: Client, packet: Packet) {
        assert!(self.shard.handle_packet(client.key, client.id, self.now, packet).unwrap());
    }

    /// What the client's connection would write now; the buffer is emptied
    /// as a completed `send` empties it.
    fn take_output(&mut self, client: Client) -> usize {
        self.out.clear();
        self.shard.poll_transmit(client.key, client.id, self.now, &mut self.out).unwrap();
        self.out.len()
    }
}

fn publish(topic: &TopicName, payload: &Bytes, qos: QoS, packet_id: u16) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos,
        retain: false,
        topic: topic.clone(),
        packet_id: (qos != QoS::AtMostOnce).then(|| PacketId::new(packet_id).unwrap()),
        properties: Default::default(),
        payload: payload.clone(),
    })
}

/// The packet ids of the QoS 1 PUBLISH packets in `bytes` (a subscriber's
/// output), decoded as its client would.
fn publish_ids(bytes: &[u8]) -> Vec<PacketId> {
    let mut decoder = Decoder::new(ProtocolVersion::V3_1_1, 1 << 20);
    let mut buf = BytesMut::from(bytes);
    let mut ids = Vec::new();
    while let Some(packet) = decoder.decode(&mut buf).unwrap() {
        if let Packet::Publish(publish) = packet {
            ids.push(publish.packet_id.expect("QoS 1"));
        }
    }
    ids
}

/// Allocations allowed per message: the message itself (its
/// `Arc<Message>`, shared by every delivery and in-flight entry). Exactly
/// one, so that one more per delivery fails the fan-in tests too (one
/// subscriber: a delivery per message).
const PER_MESSAGE: u64 = 1;

/// [Design: no allocation per subscriber] One QoS 0 publish reaches 1,000
/// subscribers and their connections write it: the allocations are those
/// of the message, shared by every delivery, not one per subscriber.
#[test]
fn a_fan_out_publish_allocates_per_message_not_per_subscriber() {
    let mut broker = Broker::new();
    let subscribers: Vec<_> =
        (0..1_000).map(|i| broker.connect(&format!("fan-out-sub-{i}"))).collect();
    for &subscriber in &subscribers {
        broker.subscribe(subscriber, "fan/out", QoS::AtMostOnce);
    }
    let publisher = broker.connect("fan-out-pub");
    let (topic, payload) = (TopicName::new("fan/out").unwrap(), Bytes::from_static(&[7; 16]));
    let round = |broker: &mut Broker| {
        broker.send(publisher, publish(&topic, &payload, QoS::AtMostOnce, 0));
        subscribers.iter().map(|&subscriber| broker.take_output(subscriber)).sum::<usize>()
    };
    round(&mut broker);
    let publishes = 50;
    let (allocations, written) =
        allocations_of(|| (0..publishes).map(|_| round(&mut broker)).sum::<usize>());
    // A PUBLISH of `fan/out` with 16 bytes: 27 bytes on the wire.
    assert_eq!(written, publishes * subscribers.len() * 27, "every delivery written");
    assert!(
        allocations <= publishes as u64 * PER_MESSAGE,
        "{allocations} allocations for {publishes} publishes x {} deliveries",
        subscribers.len()
    );
}

/// 100 publishers, each on a topic of its own, and one subscriber to all
/// of them.
struct FanIn {
    broker: Broker,
    subscriber: Client,
    publishers: Vec<Client>,
    topics: Vec<TopicName>,
}

impl FanIn {
    fn new(qos: QoS) -> Self {
        let mut broker = Broker::new();
        let subscriber = broker.connect("fan-in-sub");
        broker.subscribe(subscriber, "fan/in/+", qos);
        let publishers = (0..100).map(|i| broker.connect(&format!("fan-in-pub-{i}"))).collect();
        let topics = (0..100).map(|i| TopicName::new(format!("fan/in/{i}")).unwrap()).collect();
        Self { broker, subscriber, publishers, topics }
    }
}

/// 100 publishers, one subscriber, QoS 0: a message costs its own
/// allocations, and its delivery and write none.
#[test]
fn qos0_fan_in_allocates_per_message_only() {
    let FanIn { mut broker, subscriber, publishers, topics } = FanIn::new(QoS::AtMostOnce);
    let payload = Bytes::from_static(&[7; 16]);
    let round = |broker: &mut Broker| {
        for (publisher, topic) in publishers.iter().zip(&topics) {
            broker.send(*publisher, publish(topic, &payload, QoS::AtMostOnce, 0));
        }
        broker.take_output(subscriber)
    };
    round(&mut broker);
    let rounds = 20;
    let (allocations, written) =
        allocations_of(|| (0..rounds).map(|_| round(&mut broker)).sum::<usize>());
    let messages = rounds * publishers.len();
    assert!(written >= messages * 25, "every delivery written ({written} bytes)");
    assert!(
        allocations <= messages as u64 * PER_MESSAGE,
        "{allocations} allocations for {messages} messages"
    );
}

/// 100 publishers, one subscriber, QoS 1 both ways: the PUBLISH, its
/// PUBACK to the publisher, the delivery held in flight and the
/// subscriber's PUBACK that releases it cost the message's allocations
/// only (the in-flight entry shares the message).
#[test]
fn qos1_fan_in_allocates_per_message_only() {
    let FanIn { mut broker, subscriber, publishers, topics } = FanIn::new(QoS::AtLeastOnce);
    let payload = Bytes::from_static(&[7; 16]);
    let mut next_id = 0u16;
    // One round: every publisher sends one PUBLISH and reads its PUBACK;
    // the subscriber's connection writes the deliveries (left in
    // `broker.out`). The subscriber's PUBACKs go back in the next round
    // (decoding them is the test's work, not counted).
    let mut round = |broker: &mut Broker, acks: &[PacketId]| {
        next_id = next_id % 60_000 + 1;
        for (publisher, topic) in publishers.iter().zip(&topics) {
            broker.send(*publisher, publish(topic, &payload, QoS::AtLeastOnce, next_id));
            assert_eq!(broker.take_output(*publisher), 4, "one PUBACK");
        }
        for &id in acks {
            broker.send(subscriber, Packet::PubAck(PubResponse::new(id)));
        }
        broker.take_output(subscriber);
    };
    round(&mut broker, &[]);
    let mut acks = publish_ids(&broker.out);
    assert_eq!(acks.len(), publishers.len());
    // The warm-up: the in-flight table reaches its working size.
    for _ in 0..3 {
        round(&mut broker, &acks);
        acks = publish_ids(&broker.out);
    }
    let rounds = 20;
    let mut broker_allocations = 0;
    for _ in 0..rounds {
        broker_allocations += allocations_of(|| round(&mut broker, &acks)).0;
        acks = publish_ids(&broker.out);
        assert_eq!(acks.len(), publishers.len(), "every delivery written");
    }
    let messages = rounds * publishers.len();
    assert!(
        broker_allocations <= messages as u64 * PER_MESSAGE,
        "{broker_allocations} allocations for {messages} messages"
    );
}

const ACL: &str = "\
topic read $SYS/#
topic public/#
user alice
topic readwrite alice/#
topic read shared/+/news
topic deny alice/secret
pattern readwrite devices/%c/#
pattern read inbox/%u
pattern deny devices/%c/locked
";

/// The ACL checks of a publish (`write`) and a delivery (`read`) allocate
/// nothing, over users, patterns with `%u`/`%c`, deny rules and `$SYS`
/// topics.
#[test]
fn acl_topic_checks_allocate_nothing() {
    let file = Arc::new(AclFile::parse(ACL).unwrap());
    let clients = [ClientAcl::new(Arc::clone(&file), Some("alice")), ClientAcl::new(file, None)];
    let topics = [
        "alice/a/b/c",
        "alice/secret",
        "shared/x/news",
        "shared/x/y/news",
        "devices/dev1/state",
        "devices/dev1/locked",
        "devices/dev2/state",
        "inbox/alice",
        "public/a",
        "$SYS/broker/uptime",
        "a/very/deep/topic/with/many/levels/that/matches/nothing/at/all",
    ];
    let (allocations, allowed) = allocations_of(|| {
        let mut allowed = 0;
        for _ in 0..100 {
            for client in &clients {
                for topic in topics {
                    allowed += usize::from(client.may_publish(topic, "dev1"));
                    allowed += usize::from(client.may_receive(topic, "dev1"));
                }
            }
        }
        allowed
    });
    assert_eq!(allocations, 0, "{allocations} allocations in 4,400 checks");
    // The checks did answer: alice may write and read alice/a/b/c and her
    // device's state, read shared/x/news and her inbox (6 of 22);
    // anonymous may write and read public/a and the device's state, read
    // $SYS/broker/uptime (5 of 22).
    assert_eq!(allowed, 100 * (6 + 5), "checks allowed {allowed}");
}
