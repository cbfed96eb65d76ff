//! One direction between shard threads and the NATS bridge thread: a
//! bounded queue of messages and an unbounded queue of control items, each
//! with its own waker.
//!
//! Why not glommio's `shared_channel`: both of its ends must live on a
//! glommio executor, and the bridge runs tokio (async-nats needs it). Why
//! not tokio's `mpsc`: receiving returns a permit to its semaphore, which
//! takes a mutex on every message. Here both ends are lock-free: pushing
//! and popping are a CAS on a crossbeam queue, waking is an
//! [`AtomicWaker`] (glommio and tokio wakers both accept a wake from a
//! foreign thread: glommio queues it to the executor and rings its
//! eventfd). A wake of a parked consumer costs a syscall on each side and
//! a context switch, so messages are pushed without one: the producer
//! rings the consumer once for a batch ([`Lane::wake`], see `doorbell`).
//!
//! Messages are bounded: a full lane refuses the push and the caller
//! counts the drop. Control items (interest changes and their
//! acknowledgements: one per filter a shard starts or stops holding) must
//! never be lost, and are few, so their queue has no bound.

use atomic_waker::AtomicWaker;
use crossbeam_queue::{ArrayQueue, SegQueue};
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

/// A lane between threads; shared as `Arc`.
#[derive(Debug)]
pub(super) struct Lane<M, C> {
    messages: ArrayQueue<M>,
    control: SegQueue<C>,
    /// The task popping messages.
    message_waker: AtomicWaker,
    /// The task popping control items (may be the same task).
    control_waker: AtomicWaker,
    closed: AtomicBool,
}

impl<M, C> Lane<M, C> {
    /// A lane holding at most `capacity` messages.
    pub(super) fn new(capacity: usize) -> Self {
        Self {
            messages: ArrayQueue::new(capacity),
            control: SegQueue::new(),
            message_waker: AtomicWaker::new(),
            control_waker: AtomicWaker::new(),
            closed: AtomicBool::new(false),
        }
    }

    /// Queues a message without waking the consumer (the producer calls
    /// [`Self::wake`] once for a batch); gives it back when the lane is
    /// full or closed.
    pub(super) fn push_message(&self, message: M) -> Result<(), M> {
        if self.closed.load(Ordering::Relaxed) {
            return Err(message);
        }
        self.messages.push(message)
    }

    /// Queues a control item (dropped once the lane is closed).
    pub(super) fn push_control(&self, item: C) {
        if self.closed.load(Ordering::Relaxed) {
            return;
        }
        self.control.push(item);
        self.control_waker.wake();
    }

    /// Queues a control item without waking the consumer, as
    /// [`Self::push_message`] does: for items as frequent as messages.
    pub(super) fn push_control_later(&self, item: C) {
        if self.closed.load(Ordering::Relaxed) {
            return;
        }
        self.control.push(item);
    }

    /// Wakes the consumers of what was pushed without a wake (a consumer
    /// that is not parked is not disturbed: nothing is registered).
    pub(super) fn wake(&self) {
        self.message_waker.wake();
        self.control_waker.wake();
    }

    /// The next message; `Ready(None)` once the lane is closed and empty.
    pub(super) fn poll_message(&self, cx: &mut Context<'_>) -> Poll<Option<M>> {
        poll(|| self.messages.pop(), &self.message_waker, &self.closed, cx)
    }

    /// The next control item; `Ready(None)` once the lane is closed and
    /// empty.
    pub(super) fn poll_control(&self, cx: &mut Context<'_>) -> Poll<Option<C>> {
        poll(|| self.control.pop(), &self.control_waker, &self.closed, cx)
    }

    /// Whether [`Self::close`] was called.
    pub(super) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Ends the lane: pushes are refused, and the consumers see the end
    /// once they have taken what is queued.
    pub(super) fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.message_waker.wake();
        self.control_waker.wake();
    }
}

/// Pops, or registers the waker and pops again, so that a push between
/// the first pop and the registration is not missed.
fn poll<T>(
    mut pop: impl FnMut() -> Option<T>,
    waker: &AtomicWaker,
    closed: &AtomicBool,
    cx: &mut Context<'_>,
) -> Poll<Option<T>> {
    if let Some(item) = pop() {
        return Poll::Ready(Some(item));
    }
    waker.register(cx.waker());
    match pop() {
        Some(item) => Poll::Ready(Some(item)),
        // Closed is set before the wake: an empty, closed lane stays empty.
        None if closed.load(Ordering::Acquire) => Poll::Ready(pop()),
        None => Poll::Pending,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Message;
    use crate::protocol::{QoS, TopicName};
    use std::sync::Arc;
    use std::task::Waker;

    fn message() -> Arc<Message> {
        Arc::new(Message {
            topic: TopicName::new("t").unwrap(),
            payload: bytes::Bytes::from_static(b"x"),
            qos: QoS::AtMostOnce,
            retain: false,
            properties: Default::default(),
            publisher: None,
            expires_at: None,
            id: 0,
        })
    }

    #[test]
    fn messages_are_bounded_control_is_not_and_close_ends_both() {
        let lane = Lane::<Arc<Message>, u64>::new(2);
        assert!(lane.push_message(message()).is_ok());
        assert!(lane.push_message(message()).is_ok());
        assert!(lane.push_message(message()).is_err(), "full");
        for revision in 0..100 {
            lane.push_control(revision);
        }
        let mut cx = Context::from_waker(Waker::noop());
        assert!(matches!(lane.poll_control(&mut cx), Poll::Ready(Some(0))));
        lane.close();
        assert!(lane.push_message(message()).is_err(), "closed");
        assert!(matches!(lane.poll_message(&mut cx), Poll::Ready(Some(_))));
        assert!(matches!(lane.poll_message(&mut cx), Poll::Ready(Some(_))));
        assert!(matches!(lane.poll_message(&mut cx), Poll::Ready(None)));
        let mut left = 0;
        while let Poll::Ready(Some(_)) = lane.poll_control(&mut cx) {
            left += 1;
        }
        assert_eq!(left, 99, "what was queued is still taken after the close");
    }

    #[test]
    fn a_push_from_another_thread_wakes_the_consumer() {
        let lane = Arc::new(Lane::<Arc<Message>, u64>::new(4));
        let consumer = Arc::clone(&lane);
        let thread = std::thread::spawn(move || {
            futures_lite::future::block_on(std::future::poll_fn(|cx| consumer.poll_message(cx)))
        });
        std::thread::sleep(std::time::Duration::from_millis(20));
        lane.push_message(message()).unwrap();
        lane.wake();
        assert!(thread.join().unwrap().is_some());
    }
}
