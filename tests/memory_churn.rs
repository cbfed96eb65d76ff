//! Subscribing and unsubscribing gives memory back: after cycles of deep,
//! wide and shared filters, the subscription trie, the interest replica,
//! the local interest counts, the retained store and a whole shard hold the
//! same live bytes as before the cycles.
//!
//! A counting global allocator tracks, per thread, the bytes allocated minus
//! the bytes freed. Each test builds and tears down its structures on its
//! own thread, so the tests can run in parallel and the harness's own
//! allocations on other threads do not count.
//!
//! Slack allowed on purpose, and nothing else:
//! * a structure is measured against itself after a first warm-up cycle of
//!   the same shape: buffers that keep their capacity for the next burst
//!   (the outbox queues between shards, the shard's scratch vectors, a
//!   session's subscription map at its peak size) are sized by that cycle,
//!   and later cycles of new, unique filters must not add a byte;
//! * a hash map that shrank keeps up to four times its entries' room, so
//!   that shrinking stays amortized O(1) per removal
//!   ([`a_wide_node_gives_its_room_back_when_it_shrinks`]).

use ringmq::index::SubscriptionTrie;
use ringmq::message::Message;
use ringmq::protocol::{
    BoxedPublishProperties, Connect, Packet, PacketId, ProtocolVersion, QoS, Subscribe,
    Subscription, SubscriptionOptions, TopicFilter, TopicName, Unsubscribe,
};
use ringmq::router::interest::{InterestTable, LocalInterest};
use ringmq::router::{home_shard, Outbox, RouterMessage, ShardId};
use ringmq::session::SessionLimits;
use ringmq::shard::retained::RetainedStore;
use ringmq::shard::{ConnectOutcome, ConnectionId, SessionKey, Shard};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

/// The system allocator, counting the live bytes of each thread.
struct Counting;

thread_local! {
    /// Bytes this thread allocated minus bytes it freed. Const-initialized
    /// and without a destructor, so the allocator may touch it at any time.
    static LIVE: Cell<isize> = const { Cell::new(0) };
}

fn count(delta: isize) {
    let _ = LIVE.try_with(|live| live.set(live.get() + delta));
}

// SAFETY: every call forwards to `System` with the caller's arguments, so
// `System`'s guarantees hold; the counting has no effect on the memory.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's layout.
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            count(layout.size() as isize);
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's layout.
        let ptr = unsafe { System.alloc_zeroed(layout) };
        if !ptr.is_null() {
            count(layout.size() as isize);
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller allocated `ptr` with `layout` through us.
        unsafe { System.dealloc(ptr, layout) };
        count(-(layout.size() as isize));
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller's contract for `realloc`, forwarded.
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if !new.is_null() {
            count(new_size as isize - layout.size() as isize);
        }
        new
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Live bytes of the calling thread.
fn live() -> isize {
    LIVE.with(Cell::get)
}

fn filter(text: &str) -> TopicFilter {
    TopicFilter::new(text.to_owned()).unwrap()
}

/// A filter of `levels` levels, unique by `tag` at its first level.
fn deep(tag: &str, levels: usize) -> String {
    let mut text = String::with_capacity(tag.len() + 2 * levels);
    text.push_str(tag);
    for _ in 1..levels {
        text.push_str("/l");
    }
    text
}

/// Filters of every shape, unique to `round`: deep chains (unique at the
/// first level, and unique only at the last level under a shared prefix),
/// a deep `+` chain, `#` filters, shared groups, and a wide node.
fn churn_filters(round: usize) -> Vec<TopicFilter> {
    let mut texts = Vec::new();
    for i in 0..8 {
        texts.push(deep(&format!("r{round}d{i}"), 2_000));
        texts.push(format!("{}/r{round}x{i}", deep("shared-prefix", 1_500)));
        texts.push(format!("{}/#", deep(&format!("r{round}m{i}"), 500)));
        texts.push(format!("$share/r{round}g{i}/{}", deep("jobs", 300)));
    }
    texts.push(format!("r{round}/{}", vec!["+"; 5_000].join("/")));
    for i in 0..3_000 {
        texts.push(format!("wide/r{round}w{i}"));
    }
    texts.iter().map(|text| filter(text)).collect()
}

/// Runs `test` on a thread of its own, so that only its allocations count.
fn on_own_thread(test: impl FnOnce() + Send + 'static) {
    std::thread::Builder::new().stack_size(8 << 20).spawn(test).unwrap().join().unwrap();
}

#[test]
fn the_trie_returns_to_its_empty_size_after_deep_wide_and_shared_churn() {
    on_own_thread(|| {
        let mut trie: SubscriptionTrie<u32, u32> = SubscriptionTrie::new();
        let empty = live();
        for round in 0..3 {
            let filters = churn_filters(round);
            let before = live();
            for (i, f) in filters.iter().enumerate() {
                // Several subscribers per filter, and many on one, so that
                // the key index of a slot is built and dropped too.
                let subscribers = if i == 0 { 100 } else { 2 };
                for key in 0..subscribers {
                    trie.insert(f, key, key);
                }
            }
            assert!(trie.node_count() > 20_000);
            for (i, f) in filters.iter().enumerate() {
                let subscribers = if i == 0 { 100 } else { 2 };
                for key in 0..subscribers {
                    assert_eq!(trie.remove(f, key), Some(key));
                }
            }
            assert_eq!(trie.node_count(), 0);
            assert!(trie.is_empty());
            assert_eq!(live(), before, "round {round}: bytes left behind");
            drop(filters);
        }
        assert_eq!(live(), empty);
    });
}

#[test]
fn a_wide_node_gives_its_room_back_when_it_shrinks() {
    on_own_thread(|| {
        const WIDE: usize = 20_000;
        const KEPT: usize = 100;
        let filters: Vec<TopicFilter> = (0..WIDE).map(|i| filter(&format!("wide/{i}"))).collect();

        let fresh_start = live();
        let mut fresh: SubscriptionTrie<u32, u32> = SubscriptionTrie::new();
        for f in &filters[..KEPT] {
            fresh.insert(f, 1, 1);
        }
        let fresh_bytes = live() - fresh_start;

        let churned_start = live();
        let mut churned: SubscriptionTrie<u32, u32> = SubscriptionTrie::new();
        for f in &filters {
            churned.insert(f, 1, 1);
        }
        let peak = live() - churned_start;
        for f in &filters[KEPT..] {
            churned.remove(f, 1);
        }
        let churned_bytes = live() - churned_start;
        assert_eq!(churned.len(), fresh.len());
        // A shrunken map keeps at most four times the room of its entries
        // (see the module comment); without shrinking it keeps its peak.
        assert!(
            churned_bytes <= 4 * fresh_bytes,
            "{churned_bytes} bytes after shrinking to {KEPT} filters, {fresh_bytes} fresh, \
             {peak} at the peak"
        );
    });
}

#[test]
fn the_interest_replica_and_local_counts_return_memory() {
    on_own_thread(|| {
        let me = ShardId::new(0);
        let peer = ShardId::new(1);
        let mut local = LocalInterest::new(me);
        let mut mine = InterestTable::new();
        let mut theirs = InterestTable::new();
        // The shard's index, which names the shared groups in the deltas.
        let mut index: SubscriptionTrie<u32, ()> = SubscriptionTrie::new();
        // How the shards use them: every delta is applied in order, to
        // this shard's replica and to the peer's, and declared final.
        let mut cycle = |round: usize, local: &mut LocalInterest| {
            let filters = churn_filters(round);
            let before = live();
            let mut deltas = Vec::new();
            for f in &filters {
                index.insert(f, 1, ());
                deltas.extend(local.handle_subscribe(f, index.group_id(f)));
                index.insert(f, 2, ());
                assert_eq!(local.handle_subscribe(f, index.group_id(f)), None);
            }
            for f in &filters {
                index.remove(f, 2);
                assert_eq!(local.handle_unsubscribe(f), None);
                index.remove(f, 1);
                deltas.extend(local.handle_unsubscribe(f));
            }
            assert_eq!(deltas.len(), 2 * filters.len());
            for delta in deltas {
                for table in [&mut mine, &mut theirs] {
                    assert!(table.apply(&delta));
                    table.forget_through(delta.origin_shard, delta.revision);
                }
            }
            assert_eq!(local.filter_count(), 0);
            for table in [&mine, &theirs] {
                assert!(table.is_empty());
                assert_eq!(table.removal_records(), 0);
            }
            let left = live() - before;
            drop(filters);
            left
        };
        // The first cycle creates the per-origin record of the tables
        // (one per shard, kept on purpose: it holds the origin's floor).
        cycle(0, &mut local);
        for round in 1..4 {
            assert_eq!(cycle(round, &mut local), 0, "round {round}: bytes left behind");
        }

        // Deltas that may still be overtaken keep removal records; once
        // forgotten, their room goes too.
        let before = live();
        let filters = churn_filters(9);
        let mut revision = 1_000_000;
        for f in &filters {
            for added in [true, false] {
                revision += 1;
                let delta = ringmq::router::interest::InterestDelta {
                    origin_shard: peer,
                    filter: f.clone(),
                    added,
                    revision,
                    // Only the replica's memory is measured here.
                    group: None,
                };
                assert!(theirs.apply(&delta));
            }
        }
        assert_eq!(theirs.removal_records(), filters.len());
        theirs.forget_through(peer, revision);
        assert_eq!(theirs.removal_records(), 0);
        drop(filters);
        assert_eq!(live(), before, "removal records left behind");
    });
}

#[test]
fn the_retained_store_returns_to_its_empty_size() {
    on_own_thread(|| {
        let mut store = RetainedStore::new();
        let empty = live();
        for round in 0..3 {
            let mut topics: Vec<TopicName> = Vec::new();
            for i in 0..8 {
                topics.push(TopicName::new(deep(&format!("r{round}d{i}"), 2_000)).unwrap());
                let text = format!("{}/r{round}x{i}", deep("shared-prefix", 1_500));
                topics.push(TopicName::new(text).unwrap());
            }
            for i in 0..3_000 {
                topics.push(TopicName::new(format!("wide/r{round}w{i}")).unwrap());
            }
            let before = live();
            for topic in &topics {
                store.set(retained(topic, b"payload"));
            }
            assert!(store.node_count() > 20_000);
            // [MQTT-3.3.1-10] A retained message with an empty payload
            // deletes the topic's retained message.
            for topic in &topics {
                assert!(store.set(retained(topic, b"")).is_some());
            }
            assert_eq!(store.node_count(), 0);
            assert_eq!(live(), before, "round {round}: bytes left behind");
        }
        assert_eq!(live(), empty);
    });
}

fn retained(topic: &TopicName, payload: &'static [u8]) -> Arc<Message> {
    Arc::new(Message {
        topic: topic.clone(),
        payload: bytes::Bytes::from_static(payload),
        qos: QoS::AtMostOnce,
        retain: true,
        properties: BoxedPublishProperties::default(),
        publisher: None,
        expires_at: None,
        id: 0,
    })
}

/// Two shards driven through their public API, the test carrying the
/// messages between them as the mesh would.
struct Pair {
    shards: Vec<Shard>,
    outboxes: Vec<Rc<Outbox>>,
    now: Instant,
}

/// A client connected at its home shard.
struct Client {
    shard: usize,
    key: SessionKey,
    id: ConnectionId,
}

impl Pair {
    fn new() -> Self {
        let outboxes: Vec<_> = (0..2).map(|_| Rc::new(Outbox::new(2))).collect();
        let shards = (0..2)
            .map(|i| {
                let id = ShardId::from_index(i).unwrap();
                Shard::new(id, 2, SessionLimits::default(), Rc::clone(&outboxes[i]), 1)
            })
            .collect();
        Self { shards, outboxes, now: Instant::now() }
    }

    /// Carries queued messages between the shards until both are quiet.
    fn settle(&mut self) {
        let mut cx = Context::from_waker(Waker::noop());
        loop {
            let mut moved = false;
            for (from, to) in [(0, 1), (1, 0)] {
                while let Poll::Ready(Some(RouterMessage::Shard(message))) =
                    self.outboxes[from].poll_pop(to, &mut cx)
                {
                    moved = true;
                    let origin = ShardId::from_index(from).unwrap();
                    self.shards[to].handle_shard_message(origin, message, self.now);
                }
            }
            if !moved {
                return;
            }
        }
    }

    /// Connects a 3.1.1 client with a persistent session, homed on `shard`.
    fn connect(&mut self, shard: usize) -> Client {
        let client_id = (0..)
            .map(|i| format!("churn-{shard}-{i}"))
            .find(|id| home_shard(id.as_bytes(), 2).index() == shard)
            .unwrap();
        let connect = Connect {
            version: ProtocolVersion::V3_1_1,
            clean_start: false,
            keep_alive: 0,
            client_id: client_id.as_str().into(),
            will: None,
            username: None,
            password: None,
            properties: Default::default(),
        };
        let id = self.shards[shard].new_connection_id();
        let now = self.now;
        let outcome = self.shards[shard].handle_connect(now, &connect, client_id.into(), id);
        let ConnectOutcome::Accepted(key) = outcome else { panic!("refused: {outcome:?}") };
        let client = Client { shard, key, id };
        self.drain(&client);
        client
    }

    fn send(&mut self, client: &Client, packet: Packet) {
        let now = self.now;
        let shard = &mut self.shards[client.shard];
        assert!(shard.handle_packet(client.key, client.id, now, packet).unwrap());
    }

    /// Throws away what the client's connection would write.
    fn drain(&mut self, client: &Client) {
        let mut out = bytes::BytesMut::new();
        let now = self.now;
        self.shards[client.shard].poll_transmit(client.key, client.id, now, &mut out).unwrap();
    }
}

#[test]
fn a_shard_pair_returns_memory_after_subscribe_unsubscribe_cycles() {
    on_own_thread(|| {
        let mut pair = Pair::new();
        let clients = [pair.connect(0), pair.connect(1)];
        let packet_id = PacketId::new(1).unwrap();
        let cycle = |round: usize, pair: &mut Pair| {
            let before = live();
            for client in &clients {
                // Unique per client too: each filter is new to both shards.
                let filters = churn_filters(10 * round + client.shard);
                for chunk in filters.chunks(64) {
                    let subscribe = Subscribe {
                        refused: Vec::new(),
                        packet_id,
                        properties: Default::default(),
                        subscriptions: chunk
                            .iter()
                            .map(|f| Subscription {
                                filter: f.clone(),
                                options: SubscriptionOptions {
                                    qos: QoS::AtLeastOnce,
                                    ..Default::default()
                                },
                            })
                            .collect(),
                    };
                    pair.send(client, Packet::Subscribe(subscribe));
                    pair.settle();
                    pair.drain(client);
                }
                for chunk in filters.chunks(64) {
                    let unsubscribe = Unsubscribe {
                        refused: Vec::new(),
                        packet_id,
                        properties: Default::default(),
                        filters: chunk.iter().cloned().collect(),
                    };
                    pair.send(client, Packet::Unsubscribe(unsubscribe));
                    pair.settle();
                    pair.drain(client);
                }
            }
            live() - before
        };
        // Sizes the buffers that keep their capacity (see the module
        // comment): the outbox queues, the sessions' subscription maps.
        cycle(0, &mut pair);
        for round in 1..4 {
            assert_eq!(cycle(round, &mut pair), 0, "round {round}: bytes left behind");
        }
    });
}
