//! Per-peer outgoing queues of one shard: what is waiting to cross to each
//! other core, batched, bounded, and drained by one flusher task per peer.
//!
//! Publishes queued to the same peer in the same tick travel as one batch
//! (one channel slot, one wake-up of the peer). When a peer's queue passes
//! its high-water mark the shard counts as congested: connections stop
//! reading their sockets (backpressure on QoS 1/2 publishers) until the
//! queues drain below the low-water mark; QoS 0 publishes to a full queue
//! are dropped and counted instead.

use super::{RouterMessage, ShardMessage};
use crate::message::Message;
use crate::metrics::RouterCounters;
use crate::protocol::QoS;
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

/// Messages queued for one peer above which the shard is congested.
pub const HIGH_WATER: usize = 16 * 1024;
/// Messages queued for one peer at or below which congestion ends.
pub const LOW_WATER: usize = HIGH_WATER / 2;
/// Messages queued for one peer above which QoS 0 publishes are dropped.
pub const QOS0_DROP_LIMIT: usize = 2 * HIGH_WATER;

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
}

/// All outgoing queues of one shard. Shared (`Rc`) between the shard's
/// tasks; every borrow ends before an await.
#[derive(Debug)]
pub struct Outbox {
    peers: RefCell<Vec<PeerQueue>>,
    /// Connection tasks waiting for congestion to end.
    congestion_waiters: RefCell<Vec<Waker>>,
    congested: Cell<bool>,
    closed: Cell<bool>,
}

impl Outbox {
    /// Queues for `nr_shards` peers (the own shard's entry stays unused).
    pub fn new(nr_shards: usize) -> Self {
        Self {
            peers: RefCell::new((0..nr_shards).map(|_| PeerQueue::default()).collect()),
            congestion_waiters: RefCell::new(Vec::new()),
            congested: Cell::new(false),
            closed: Cell::new(false),
        }
    }

    /// Queues a publish for `peer`. Returns false when it was dropped (QoS
    /// 0 to a queue past `outbox::QOS0_DROP_LIMIT`, counted in `counters`;
    /// or the outbox is closed).
    pub fn push_publish(
        &self,
        peer: usize,
        message: &Arc<Message>,
        counters: &mut RouterCounters,
    ) -> bool {
        if self.closed.get() {
            return false;
        }
        let mut peers = self.peers.borrow_mut();
        let queue = &mut peers[peer];
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
        if queue.queued_publishes > HIGH_WATER {
            self.congested.set(true);
        }
        if let Some(waker) = queue.flusher.take() {
            waker.wake();
        }
        true
    }

    /// Queues a message for `peer`, after everything queued before.
    pub fn push(&self, peer: usize, message: impl Into<RouterMessage>) {
        if self.closed.get() {
            return;
        }
        let message = message.into();
        let mut peers = self.peers.borrow_mut();
        let queue = &mut peers[peer];
        queue.items.push_back(message);
        if let Some(waker) = queue.flusher.take() {
            waker.wake();
        }
    }

    /// The next message for `peer`; `Ready(None)` once the outbox is
    /// closed and the queue empty.
    pub fn poll_pop(&self, peer: usize, cx: &mut Context<'_>) -> Poll<Option<RouterMessage>> {
        let mut peers = self.peers.borrow_mut();
        let queue = &mut peers[peer];
        match queue.items.pop_front() {
            Some(message) => {
                if let RouterMessage::Shard(ShardMessage::Publish(batch)) = &message {
                    queue.queued_publishes -= batch.len();
                }
                drop(peers);
                self.update_congestion();
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

    /// Whether connections should stop reading (a peer queue is past its
    /// high-water mark and has not yet drained to the low-water mark).
    pub fn is_congested(&self) -> bool {
        self.congested.get()
    }

    /// Registers `waker` to be woken when congestion ends.
    pub fn wait_uncongested(&self, waker: &Waker) {
        let mut waiters = self.congestion_waiters.borrow_mut();
        if !waiters.iter().any(|w| w.will_wake(waker)) {
            waiters.push(waker.clone());
        }
    }

    fn update_congestion(&self) {
        if !self.congested.get() {
            return;
        }
        let drained = self.peers.borrow().iter().all(|q| q.queued_publishes <= LOW_WATER);
        if drained {
            self.congested.set(false);
            for waker in self.congestion_waiters.borrow_mut().drain(..) {
                waker.wake();
            }
        }
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
            assert!(outbox.push_publish(1, &message(QoS::AtMostOnce), &mut counters));
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

    #[test]
    fn a_full_queue_congests_qos1_and_drops_qos0() {
        let (outbox, mut counters) = (Outbox::new(2), RouterCounters::default());
        let waiter = Arc::new(Flag(AtomicBool::new(false)));
        for _ in 0..=HIGH_WATER {
            outbox.push_publish(1, &message(QoS::AtLeastOnce), &mut counters);
        }
        // Past the high-water mark, connections stop reading (backpressure).
        assert!(outbox.is_congested());
        outbox.wait_uncongested(&Waker::from(Arc::clone(&waiter)));
        // QoS 1 is never dropped; QoS 0 is, once past its limit, and counted.
        while outbox.push_publish(1, &message(QoS::AtMostOnce), &mut counters) {}
        assert!(outbox.push_publish(1, &message(QoS::AtLeastOnce), &mut counters));
        assert_eq!(counters.cross_core_qos0_dropped, 1);
        // Draining below the low-water mark ends congestion and wakes waiters.
        let mut cx = Context::from_waker(Waker::noop());
        while let Poll::Ready(Some(_)) = outbox.poll_pop(1, &mut cx) {}
        assert!(!outbox.is_congested());
        assert!(waiter.0.load(Ordering::SeqCst));
    }

    #[test]
    fn a_closed_outbox_ends_its_flushers_and_takes_nothing_more() {
        let (outbox, mut counters) = (Outbox::new(2), RouterCounters::default());
        outbox.close();
        let mut cx = Context::from_waker(Waker::noop());
        assert!(matches!(outbox.poll_pop(1, &mut cx), Poll::Ready(None)));
        assert!(!outbox.push_publish(1, &message(QoS::AtLeastOnce), &mut counters));
    }
}
