//! Per-peer outgoing queues of one shard: what is waiting to cross to each
//! other core, batched, bounded, and drained by one flusher task per peer.
//!
//! Publishes queued to the same peer in the same tick travel as one batch
//! (one channel slot, one wake-up of the peer). Congestion is per peer:
//! when a peer's queue passes its high-water mark, that peer is congested
//! until its queue drains to the low-water mark. Backpressure applies only
//! to the connections that pushed a QoS 1/2 publish to a congested peer
//! (they stop reading their sockets until that peer drains, see
//! [`Outbox::take_held_by`]); the shard's other connections, subscribers
//! and publishers to other peers, keep reading. QoS 0 publishes to a full
//! queue are dropped and counted instead.
//!
//! The same hold applies to a connection that publishes QoS 1/2 to a topic
//! whose gate is closed: a subscriber of it, here or on another core, is
//! past its queue limits (see [`super::gates`]).

use super::destination::BRIDGE_QUEUE;
use super::gates::{GateId, Gates};
use super::{Destination, RouterMessage, ShardId, ShardMessage};
use crate::message::Message;
use crate::metrics::RouterCounters;
use crate::protocol::{QoS, TopicName};
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

/// Messages queued for one peer above which the peer is congested.
pub const HIGH_WATER: usize = 16 * 1024;
/// Messages queued for one peer at or below which congestion ends.
pub const LOW_WATER: usize = HIGH_WATER / 2;
/// Messages queued for one peer above which QoS 0 publishes are dropped.
pub const QOS0_DROP_LIMIT: usize = 2 * HIGH_WATER;

/// What a held connection waits for, in 4 bytes (every connection task
/// keeps one): see [`Hold::on`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hold(NonZeroU32);

/// What a [`Hold`] waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HoldOn {
    /// The queue towards a peer to drain to its low-water mark.
    Peer(Destination),
    /// A topic gate to open: its subscribers drained (see
    /// [`super::gates`]).
    Topic(GateId),
}

/// The bit of a [`Hold`] that names a topic gate (else a peer).
const TOPIC_BIT: u32 = 1 << 31;

impl Hold {
    /// Waits for the queue towards `to`.
    pub fn peer(to: Destination) -> Self {
        // A queue number is at most BRIDGE_QUEUE (256): 1..=257, not zero.
        Self(NonZeroU32::MIN.saturating_add(to.queue() as u32))
    }

    /// Waits for the gate `gate`.
    pub fn topic(gate: GateId) -> Self {
        // The top bit is set: never zero.
        Self(NonZeroU32::new(TOPIC_BIT | gate.bits()).unwrap_or(NonZeroU32::MAX))
    }

    /// What it waits for.
    pub fn on(self) -> HoldOn {
        let bits = self.0.get();
        if bits & TOPIC_BIT != 0 {
            HoldOn::Topic(GateId::from_bits(bits))
        } else {
            // From `peer`: 1..=257.
            match (bits - 1) as usize {
                BRIDGE_QUEUE => HoldOn::Peer(Destination::Bridge),
                queue => HoldOn::Peer(Destination::Shard(ShardId::new(queue as u8))),
            }
        }
    }
}

/// The queue towards one peer shard.
#[derive(Debug, Default)]
struct PeerQueue {
    /// Ordered control messages and publish batches; the last entry, when
    /// it is a publish batch, is appended to.
    items: VecDeque<RouterMessage>,
    /// Publishes queued in `items`.
    queued_publishes: usize,
    /// The flusher task of this peer, parked while the queue is empty.
    flusher: Option<Waker>,
    /// Past [`HIGH_WATER`], and not yet drained to [`LOW_WATER`].
    congested: bool,
    /// Connections held back until this queue drains.
    held: Vec<Waker>,
}

/// All outgoing queues of one shard. Shared (`Rc`) between the shard's
/// tasks; every borrow ends before an await.
#[derive(Debug)]
pub struct Outbox {
    peers: RefCell<Vec<PeerQueue>>,
    /// A congested peer that a QoS 1/2 publish was pushed to, or the
    /// closed gate of a QoS 1/2 publish's topic, since the last
    /// [`Outbox::take_held_by`].
    held_by: Cell<Option<Hold>>,
    /// The topic gates of this shard.
    gates: RefCell<Gates>,
    /// Too many of this shard's QoS 1/2 messages wait for other nodes
    /// (see [`Self::hold_bridge`]), and the connections held for it.
    bridge: RefCell<(bool, Vec<Waker>)>,
    closed: Cell<bool>,
    /// Congestions that [`Outbox::push`] started, not yet counted in
    /// `congestion_events` (it has no counters at hand).
    congestions: Cell<u64>,
}

/// The publishes `message` carries (see [`Outbox::push`]).
fn publishes_in(message: &RouterMessage) -> usize {
    match message {
        RouterMessage::Shard(ShardMessage::Publish(batch)) => batch.len(),
        RouterMessage::Shard(ShardMessage::GroupPublish { .. } | ShardMessage::Retain(_)) => 1,
        RouterMessage::Shard(ShardMessage::Retained { messages, .. }) => messages.len(),
        _ => 0,
    }
}

impl Outbox {
    /// Queues for `nr_shards` peers (the own shard's entry stays unused).
    pub fn new(nr_shards: usize) -> Self {
        Self {
            peers: RefCell::new((0..nr_shards).map(|_| PeerQueue::default()).collect()),
            held_by: Cell::new(None),
            gates: RefCell::new(Gates::default()),
            bridge: RefCell::new((false, Vec::new())),
            closed: Cell::new(false),
            congestions: Cell::new(0),
        }
    }

    /// Queues a publish for `to`. Returns false when it was dropped (QoS
    /// 0 to a queue past `outbox::QOS0_DROP_LIMIT`, counted in `counters`;
    /// or the outbox is closed).
    pub fn push_publish(
        &self,
        to: impl Into<Destination>,
        message: &Arc<Message>,
        counters: &mut RouterCounters,
    ) -> bool {
        if self.closed.get() {
            return false;
        }
        let to = to.into();
        let mut peers = self.peers.borrow_mut();
        let queue = &mut peers[to.queue()];
        if message.qos == QoS::AtMostOnce && queue.queued_publishes >= QOS0_DROP_LIMIT {
            counters.cross_core_qos0_dropped += 1;
            return false;
        }
        match queue.items.back_mut() {
            Some(RouterMessage::Shard(ShardMessage::Publish(batch))) => {
                batch.push(Arc::clone(message))
            }
            _ => queue
                .items
                .push_back(RouterMessage::Shard(ShardMessage::Publish(vec![Arc::clone(message)]))),
        }
        queue.queued_publishes += 1;
        if !queue.congested && queue.queued_publishes > HIGH_WATER {
            queue.congested = true;
            counters.congestion_events += 1;
        }
        if queue.congested && message.qos != QoS::AtMostOnce {
            self.held_by.set(Some(Hold::peer(to)));
        }
        counters.congestion_events += self.congestions.take();
        if let Some(waker) = queue.flusher.take() {
            waker.wake();
        }
        true
    }

    /// Publishes waiting in the queues towards every peer.
    pub fn queued_publishes(&self) -> usize {
        self.peers.borrow().iter().map(|queue| queue.queued_publishes).sum()
    }

    /// Queues a message for `to`, after everything queued before. The
    /// messages it carries count as publishes (towards the high-water mark
    /// and the `cross_core_queued` gauge): a shared-group delivery, a
    /// retained message sent to the shard that stores it, and the retained
    /// messages sent back for a new subscription. A QoS 1/2 group delivery
    /// or retained message pushed to a congested peer holds its publisher
    /// back as [`Self::push_publish`] does (a reply has no publisher).
    pub fn push(&self, to: impl Into<Destination>, message: impl Into<RouterMessage>) {
        if self.closed.get() {
            return;
        }
        let (to, message) = (to.into(), message.into());
        let mut peers = self.peers.borrow_mut();
        let queue = &mut peers[to.queue()];
        let publishes = publishes_in(&message);
        if publishes > 0 {
            queue.queued_publishes += publishes;
            if !queue.congested && queue.queued_publishes > HIGH_WATER {
                queue.congested = true;
                // Counted in `congestion_events` by the next `push_publish`.
                self.congestions.set(self.congestions.get() + 1);
            }
            if let RouterMessage::Shard(
                ShardMessage::GroupPublish { message, .. } | ShardMessage::Retain(message),
            ) = &message
            {
                if queue.congested && message.qos != QoS::AtMostOnce {
                    self.held_by.set(Some(Hold::peer(to)));
                }
            }
        }
        queue.items.push_back(message);
        if let Some(waker) = queue.flusher.take() {
            waker.wake();
        }
    }

    /// The next message for the queue of shard `peer` (the transport's
    /// side); `Ready(None)` once the outbox is closed and the queue empty.
    pub fn poll_pop(&self, peer: usize, cx: &mut Context<'_>) -> Poll<Option<RouterMessage>> {
        let mut peers = self.peers.borrow_mut();
        let queue = &mut peers[peer];
        match queue.items.pop_front() {
            Some(message) => {
                queue.queued_publishes -= publishes_in(&message);
                if queue.congested && queue.queued_publishes <= LOW_WATER {
                    queue.congested = false;
                    let held = std::mem::take(&mut queue.held);
                    drop(peers);
                    held.into_iter().for_each(Waker::wake);
                }
                Poll::Ready(Some(message))
            }
            None if self.closed.get() => Poll::Ready(None),
            None => {
                queue.flusher = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }

    /// Stops the flushers once their queues are empty; later pushes are
    /// dropped (their hand-off sockets closed).
    pub fn close(&self) {
        self.closed.set(true);
        for queue in self.peers.borrow_mut().iter_mut() {
            if let Some(waker) = queue.flusher.take() {
                waker.wake();
            }
        }
    }

    /// What a QoS 1/2 publish pushed since the last call must wait for (a
    /// congested peer, a closed topic gate), if anything, and forgets it.
    /// A connection task calls it before it handles the packets it read
    /// (forgetting what others pushed) and after: when it returns a hold,
    /// the connection stops reading until it is released
    /// ([`Self::is_congested`], [`Self::wait_drained`]). Per message it
    /// costs a `Cell` read and write: no allocation.
    pub fn take_held_by(&self) -> Option<Hold> {
        self.held_by.take()
    }

    /// Whether a hold was set since the last [`Self::take_held_by`],
    /// without taking it: the connection stops handling the packets it
    /// read after the publish that set it.
    pub fn is_holding(&self) -> bool {
        let held = self.held_by.take();
        self.held_by.set(held);
        held.is_some()
    }

    /// Whether `hold` still holds: the peer's queue is past its high-water
    /// mark and has not yet drained to the low-water mark, or the gate is
    /// still closed.
    pub fn is_congested(&self, hold: Hold) -> bool {
        match hold.on() {
            HoldOn::Peer(Destination::Bridge) => self.bridge.borrow().0,
            HoldOn::Peer(to) => {
                self.peers.borrow().get(to.queue()).is_some_and(|queue| queue.congested)
            }
            HoldOn::Topic(gate) => self.gates.borrow().is_closed(gate),
        }
    }

    /// Registers `waker` to be woken when `hold` is released.
    pub fn wait_drained(&self, hold: Hold, waker: &Waker) {
        match hold.on() {
            HoldOn::Peer(Destination::Bridge) => {
                let mut bridge = self.bridge.borrow_mut();
                if !bridge.1.iter().any(|w| w.will_wake(waker)) {
                    bridge.1.push(waker.clone());
                }
            }
            HoldOn::Peer(to) => {
                let mut peers = self.peers.borrow_mut();
                let Some(queue) = peers.get_mut(to.queue()) else { return };
                if !queue.held.iter().any(|w| w.will_wake(waker)) {
                    queue.held.push(waker.clone());
                }
            }
            HoldOn::Topic(gate) => self.gates.borrow_mut().wait(gate, waker),
        }
    }

    /// Too many of this shard's QoS 1/2 messages wait for other nodes'
    /// acknowledgements: the connection that published the last one is
    /// held (see [`Self::take_held_by`]) until [`Self::release_bridge`].
    pub fn hold_bridge(&self) {
        self.bridge.borrow_mut().0 = true;
        self.held_by.set(Some(Hold::peer(Destination::Bridge)));
    }

    /// Enough acknowledgements came back: the connections held by
    /// [`Self::hold_bridge`] resume.
    pub fn release_bridge(&self) {
        let held = {
            let mut bridge = self.bridge.borrow_mut();
            if !bridge.0 {
                return;
            }
            bridge.0 = false;
            std::mem::take(&mut bridge.1)
        };
        held.into_iter().for_each(Waker::wake);
    }

    /// A QoS 1/2 publish to `topic` was routed: when its gate is closed
    /// the publisher is held back (see [`Self::take_held_by`]). Returns
    /// whether it is. One emptiness test while no gate is closed.
    pub fn hold_if_closed(&self, topic: &TopicName) -> bool {
        let gates = self.gates.borrow();
        if gates.is_empty() {
            return false;
        }
        let Some(gate) = gates.closed(topic) else { return false };
        self.held_by.set(Some(Hold::topic(gate)));
        true
    }

    /// A local session went past its queue limits with a message of
    /// `topic` (once per session and topic): the topic's gate closes.
    /// `from` is the peer the message came from, told to hold its own
    /// publishers of `topic` (once per topic).
    pub fn close_gate(&self, topic: &TopicName, from: Option<ShardId>, newly: bool) {
        let mut gates = self.gates.borrow_mut();
        if newly {
            gates.close_local(topic);
        }
        let tell = from.filter(|&peer| gates.tell(topic, peer));
        drop(gates);
        if let Some(peer) = tell {
            self.push(peer, ShardMessage::Block { topic: topic.clone() });
        }
    }

    /// A local session that closed `topic`'s gate drained or left; once
    /// none holds it, the gate opens here and at every peer told.
    pub fn open_gate(&self, topic: &TopicName) {
        let told = self.gates.borrow_mut().open_local(topic);
        for peer in told.iter() {
            self.push(peer, ShardMessage::Unblock { topic: topic.clone() });
        }
    }

    /// Peer `from` closed (`Block`) or opened (`Unblock`) `topic`.
    pub fn handle_remote_gate(&self, from: ShardId, topic: &TopicName, closed: bool) {
        self.gates.borrow_mut().handle_remote(from, topic, closed);
    }

    /// Topic gates that exist (closed, or open with peers still to tell).
    pub fn gates(&self) -> usize {
        self.gates.borrow().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::TopicName;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::task::Wake;

    fn message(qos: QoS) -> Arc<Message> {
        Arc::new(Message {
            topic: TopicName::new("t").unwrap(),
            payload: bytes::Bytes::from_static(b"x"),
            qos,
            retain: false,
            properties: Default::default(),
            publisher: None,
            expires_at: None,
            id: 0,
        })
    }

    struct Flag(AtomicBool);

    impl Wake for Flag {
        fn wake(self: Arc<Self>) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    #[test]
    fn publishes_to_one_peer_travel_as_one_batch() {
        let (outbox, mut counters) = (Outbox::new(2), RouterCounters::default());
        for _ in 0..10 {
            assert!(outbox.push_publish(shard(1), &message(QoS::AtMostOnce), &mut counters));
        }
        let mut cx = Context::from_waker(Waker::noop());
        match outbox.poll_pop(1, &mut cx) {
            Poll::Ready(Some(RouterMessage::Shard(ShardMessage::Publish(batch)))) => {
                assert_eq!(batch.len(), 10)
            }
            other => panic!("expected one batch, got {other:?}"),
        }
        assert!(outbox.poll_pop(1, &mut cx).is_pending());
    }

    fn flag() -> (Arc<Flag>, Waker) {
        let flag = Arc::new(Flag(AtomicBool::new(false)));
        let waker = Waker::from(Arc::clone(&flag));
        (flag, waker)
    }

    fn shard(index: usize) -> crate::router::ShardId {
        crate::router::ShardId::from_index(index).unwrap()
    }

    fn peer(index: usize) -> Hold {
        Hold::peer(shard(index).into())
    }

    #[test]
    fn a_full_queue_congests_its_peer_only_and_drops_qos0() {
        let (outbox, mut counters) = (Outbox::new(3), RouterCounters::default());
        for _ in 0..HIGH_WATER {
            outbox.push_publish(shard(1), &message(QoS::AtLeastOnce), &mut counters);
        }
        assert!(!outbox.is_congested(peer(1)));
        assert_eq!(outbox.take_held_by(), None, "nothing held below the high-water mark");
        outbox.push_publish(shard(1), &message(QoS::AtLeastOnce), &mut counters);
        // Past the high-water mark, the publisher that pushed there is held
        // back; the other peer is not congested.
        assert!(outbox.is_congested(peer(1)));
        assert!(!outbox.is_congested(peer(2)));
        assert_eq!(outbox.take_held_by(), Some(Hold::peer(shard(1).into())));
        assert_eq!(outbox.take_held_by(), None, "taken once");
        outbox.push_publish(shard(2), &message(QoS::AtLeastOnce), &mut counters);
        assert_eq!(outbox.take_held_by(), None, "a publish to another peer is not held");
        // QoS 0 is not held back: it is dropped once past its limit, and
        // counted; QoS 1 is never dropped.
        while outbox.push_publish(shard(1), &message(QoS::AtMostOnce), &mut counters) {}
        assert_eq!(outbox.take_held_by(), None, "QoS 0 is dropped, not held back");
        assert!(outbox.push_publish(shard(1), &message(QoS::AtLeastOnce), &mut counters));
        assert_eq!(counters.cross_core_qos0_dropped, 1);
        assert_eq!(outbox.take_held_by(), Some(Hold::peer(shard(1).into())));
        let (held, waker) = flag();
        outbox.wait_drained(peer(1), &waker);
        let (other, waker) = flag();
        outbox.wait_drained(peer(2), &waker);
        // Draining to the low-water mark ends that peer's congestion and
        // wakes the connections it held back, only those.
        let mut cx = Context::from_waker(Waker::noop());
        while let Poll::Ready(Some(_)) = outbox.poll_pop(1, &mut cx) {}
        assert!(!outbox.is_congested(peer(1)));
        assert!(held.0.load(Ordering::SeqCst));
        assert!(!other.0.load(Ordering::SeqCst));
    }

    #[test]
    fn retained_traffic_counts_towards_the_high_water_mark_and_holds_its_publisher() {
        let (outbox, mut counters) = (Outbox::new(2), RouterCounters::default());
        let reply_to = crate::router::RetainedReplyTo {
            shard: shard(1),
            client_id: "sub".into(),
            options: Default::default(),
            subscription_id: None,
            request: 0,
        };
        let messages = vec![message(QoS::AtLeastOnce); HIGH_WATER];
        outbox.push(shard(1), ShardMessage::Retained { reply_to, messages });
        assert_eq!(outbox.queued_publishes(), HIGH_WATER);
        assert_eq!(outbox.take_held_by(), None, "at the mark, not past it; a reply holds no one");
        // A retained QoS 1 message for the shard that stores it, past the
        // mark: the peer is congested and its publisher held.
        outbox.push(shard(1), ShardMessage::Retain(message(QoS::AtLeastOnce)));
        assert_eq!(outbox.queued_publishes(), HIGH_WATER + 1);
        assert!(outbox.is_congested(peer(1)));
        assert_eq!(outbox.take_held_by(), Some(peer(1)));
        // The congestion is counted with the next publish.
        outbox.push_publish(shard(1), &message(QoS::AtMostOnce), &mut counters);
        assert_eq!(counters.congestion_events, 1);
        let mut cx = Context::from_waker(Waker::noop());
        while let Poll::Ready(Some(_)) = outbox.poll_pop(1, &mut cx) {}
        assert_eq!(outbox.queued_publishes(), 0);
        assert!(!outbox.is_congested(peer(1)));
    }

    #[test]
    fn a_closed_outbox_ends_its_flushers_and_takes_nothing_more() {
        let (outbox, mut counters) = (Outbox::new(2), RouterCounters::default());
        outbox.close();
        let mut cx = Context::from_waker(Waker::noop());
        assert!(matches!(outbox.poll_pop(1, &mut cx), Poll::Ready(None)));
        assert!(!outbox.push_publish(shard(1), &message(QoS::AtLeastOnce), &mut counters));
    }
}
