//! One wake-up per batch between the shards and the bridge thread
//! (issue 17: the bridge spent 13.9 us per message, mostly waking the
//! other thread once per message).
//!
//! A wake of a parked thread costs a syscall on the waking side (the
//! eventfd of glommio's or tokio's reactor), the parked thread's return
//! from its wait, and a context switch; at 20,000 messages a second spaced
//! apart, every message paid it, twice per node. So the lanes' pushes do
//! not wake (see `lane`); the producer rings a doorbell instead, which
//! wakes the consumer once for everything queued since:
//!
//! * [`ShardBell`], a shard's messages (and acknowledgements of other
//!   nodes' messages) for the bridge: the first ring wakes the bridge at
//!   the end of the shard's turn (what its other tasks queue meanwhile
//!   joins it), and then at most once per `cluster.batch_delay_us`. A
//!   message waits at most that long; a quiet shard's first message does
//!   not wait. The bridge then publishes the batch to NATS in one write,
//!   and the NATS server delivers it to the other nodes in one write too.
//! * [`BridgeBell`], the bridge's messages and acknowledgements for the
//!   shards: every shard that got something is woken once, after the
//!   bridge's tasks that were ready (what the NATS connection read at
//!   once), or at once every [`EARLY_WAKE`] items so that a long turn
//!   does not leave a shard asleep while its lane fills.
//!
//! A consumer that is busy (it has not parked since its last wake) is not
//! disturbed by a ring: it takes what is queued as it goes.

use super::lane::Lane;
use super::ShardId;
use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

/// Items the bridge queues for one shard in one turn before it wakes the
/// shard without waiting for the end of the turn.
pub(super) const EARLY_WAKE: u32 = 256;

/// A shard's doorbell to the bridge (glommio side).
#[derive(Debug, Default)]
pub(super) struct ShardBell {
    /// Something was queued since the last wake.
    rung: Cell<bool>,
    /// The task of [`Self::run`], parked until a ring.
    ringer: RefCell<Option<Waker>>,
}

impl ShardBell {
    /// Something was queued for the bridge: it is woken soon (see
    /// [`Self::run`]).
    pub(super) fn ring(&self) {
        if !self.rung.replace(true) {
            let ringer = self.ringer.borrow_mut().take();
            if let Some(waker) = ringer {
                waker.wake();
            }
        }
    }

    /// Wakes the bridge (`wake`) for what is rung: after the rest of the
    /// executor's turn, and at least `delay` after the previous wake.
    /// Runs until its task is dropped.
    pub(super) async fn run(&self, delay: Duration, wake: impl Fn()) {
        let mut last: Option<Instant> = None;
        loop {
            poll_fn(|cx| match self.rung.get() {
                true => Poll::Ready(()),
                false => {
                    *self.ringer.borrow_mut() = Some(cx.waker().clone());
                    Poll::Pending
                }
            })
            .await;
            match last.map(|at| at.elapsed()) {
                Some(since) if since < delay => glommio::timer::sleep(delay - since).await,
                // The shard's other ready tasks queue theirs first.
                _ => futures_lite::future::yield_now().await,
            }
            // Cleared before the wake: a push after it rings again.
            self.rung.set(false);
            wake();
            last = Some(Instant::now());
        }
    }
}

/// The bridge's doorbell to the shards (tokio side, on the bridge thread).
#[derive(Debug)]
pub(super) struct BridgeBell {
    /// Per shard: items queued for it since its last wake.
    queued: RefCell<Vec<u32>>,
    /// The shards marked, in order.
    to_wake: RefCell<Vec<ShardId>>,
    /// The task of [`Self::run`], parked until a ring.
    ringer: RefCell<Option<Waker>>,
}

impl BridgeBell {
    /// A doorbell to `nr_shards` shards.
    pub(super) fn new(nr_shards: usize) -> Self {
        Self {
            queued: RefCell::new(vec![0; nr_shards]),
            to_wake: RefCell::new(Vec::with_capacity(nr_shards)),
            ringer: RefCell::new(None),
        }
    }

    /// Something was queued for `shard` in `lane`: it is woken once the
    /// bridge's ready tasks ran, or now when [`EARLY_WAKE`] items are
    /// waiting.
    pub(super) fn ring<M, C>(&self, shard: ShardId, lane: &Lane<M, C>) {
        let mut queued = self.queued.borrow_mut();
        let count = &mut queued[shard.index()];
        *count += 1;
        if *count > 1 {
            if *count % EARLY_WAKE == 0 {
                lane.wake();
            }
            return;
        }
        self.to_wake.borrow_mut().push(shard);
        let ringer = self.ringer.borrow_mut().take();
        if let Some(waker) = ringer {
            waker.wake();
        }
    }

    /// Wakes the shards rung (their lanes in `lanes`), once per turn of
    /// the bridge thread. Runs until its task is aborted.
    pub(super) async fn run<M, C>(&self, lanes: &[Lane<M, C>]) {
        let mut woken = Vec::new();
        loop {
            poll_fn(|cx| match self.to_wake.borrow().is_empty() {
                false => Poll::Ready(()),
                true => {
                    *self.ringer.borrow_mut() = Some(cx.waker().clone());
                    Poll::Pending
                }
            })
            .await;
            // This task was woken by the first ring: it runs after the
            // tasks that were ready then (the readers of what the NATS
            // connection read at once), whose items join the batch.
            std::mem::swap(&mut woken, &mut *self.to_wake.borrow_mut());
            let mut queued = self.queued.borrow_mut();
            for shard in woken.drain(..) {
                queued[shard.index()] = 0;
                lanes[shard.index()].wake();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// A lane consumer on another thread that counts its wake-ups.
    struct Counted {
        lane: Arc<Lane<u32, ()>>,
        wakes: Arc<std::sync::atomic::AtomicUsize>,
    }

    impl std::task::Wake for Counted {
        fn wake(self: Arc<Self>) {
            self.wakes.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    /// Registers the consumer's waker with `lane` (as a parked consumer
    /// does) and returns what it pops.
    fn park(lane: &Lane<u32, ()>, waker: &Waker) -> Vec<u32> {
        let mut cx = std::task::Context::from_waker(waker);
        std::iter::from_fn(|| match lane.poll_message(&mut cx) {
            Poll::Ready(Some(n)) => Some(n),
            _ => None,
        })
        .collect()
    }

    #[test]
    fn a_shard_wakes_the_bridge_once_per_batch_and_at_most_once_per_delay() {
        let lane = Arc::new(Lane::<u32, ()>::new(1024));
        let wakes = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = Arc::new(Counted { lane: Arc::clone(&lane), wakes: Arc::clone(&wakes) });
        let waker = Waker::from(Arc::clone(&counted));
        assert!(park(&lane, &waker).is_empty());
        // Long beside ten yields, so that a first wake seen after them was
        // not the delayed one (no wall-clock bound on the fast path).
        let delay = Duration::from_millis(500);
        glommio::LocalExecutorBuilder::default()
            .spawn(move || async move {
                let bell = std::rc::Rc::new(ShardBell::default());
                let ringer = glommio::spawn_local({
                    let (bell, lane) = (std::rc::Rc::clone(&bell), Arc::clone(&counted.lane));
                    async move { bell.run(delay, || lane.wake()).await }
                });
                // A quiet shard: its batch goes at the end of its turn.
                let start = Instant::now();
                for n in 0..100 {
                    counted.lane.push_message(n).unwrap();
                    bell.ring();
                }
                assert_eq!(counted.wakes.load(std::sync::atomic::Ordering::SeqCst), 0);
                for _ in 0..10 {
                    futures_lite::future::yield_now().await;
                }
                assert_eq!(
                    counted.wakes.load(std::sync::atomic::Ordering::SeqCst),
                    1,
                    "not delayed"
                );
                assert_eq!(park(&counted.lane, &waker), (0..100).collect::<Vec<_>>());
                // A busy one: the next batch waits for the delay (counted
                // from the first wake, which came after `start`).
                counted.lane.push_message(100).unwrap();
                bell.ring();
                while counted.wakes.load(std::sync::atomic::Ordering::SeqCst) < 2 {
                    glommio::timer::sleep(Duration::from_millis(1)).await;
                }
                assert!(start.elapsed() >= delay, "at most one wake per delay");
                assert_eq!(park(&counted.lane, &waker), [100]);
                drop(ringer);
            })
            .unwrap()
            .join()
            .unwrap();
        assert_eq!(wakes.load(std::sync::atomic::Ordering::SeqCst), 2);
    }

    #[test]
    fn the_bridge_wakes_each_shard_rung_once_per_turn_or_early_in_a_long_one() {
        let lanes: Arc<Vec<Lane<u32, ()>>> = Arc::new((0..3).map(|_| Lane::new(512)).collect());
        let wakes: Vec<_> =
            (0..3).map(|_| Arc::new(std::sync::atomic::AtomicUsize::new(0))).collect();
        let wakers: Vec<Waker> = (0..3)
            .map(|i| {
                let counted =
                    Counted { lane: Arc::new(Lane::new(1)), wakes: Arc::clone(&wakes[i]) };
                Waker::from(Arc::new(counted))
            })
            .collect();
        for (lane, waker) in lanes.iter().zip(&wakers) {
            assert!(park(lane, waker).is_empty());
        }
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let local = tokio::task::LocalSet::new();
        local.block_on(&runtime, async {
            let bell = std::rc::Rc::new(BridgeBell::new(3));
            let ringer = tokio::task::spawn_local({
                let (bell, lanes) = (std::rc::Rc::clone(&bell), Arc::clone(&lanes));
                async move { bell.run(&lanes).await }
            });
            let shard = |i| ShardId::from_index(i).unwrap();
            for n in 0..10 {
                lanes[0].push_message(n).unwrap();
                bell.ring(shard(0), &lanes[0]);
            }
            lanes[2].push_message(7).unwrap();
            bell.ring(shard(2), &lanes[2]);
            // A long turn: shard 1 is woken without waiting for its end.
            for n in 0..EARLY_WAKE {
                lanes[1].push_message(n).unwrap();
                bell.ring(shard(1), &lanes[1]);
            }
            assert_eq!(wakes[1].load(std::sync::atomic::Ordering::SeqCst), 1, "woken early");
            assert_eq!(wakes[0].load(std::sync::atomic::Ordering::SeqCst), 0, "not yet");
            for _ in 0..4 {
                tokio::task::yield_now().await;
            }
            ringer.abort();
        });
        let counts: Vec<usize> =
            wakes.iter().map(|w| w.load(std::sync::atomic::Ordering::SeqCst)).collect();
        assert_eq!(counts, [1, 1, 1], "one wake per shard rung");
    }
}
