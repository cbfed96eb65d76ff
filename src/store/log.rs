//! The shard's side of its log: a queue that the shard appends records to
//! (no IO, never blocks, nothing allocated per record beyond the queue's
//! slot) and that the writer task drains; and futures that resolve once a
//! record is durable.
//!
//! Sequence numbers ([`Lsn`]) are given in append order; the writer
//! reports the first one it has not made durable yet, so "durable" is a
//! single watermark and a waiter needs no per-record state.

use super::record::{FlowOp, Record, MAX_FLOW_OPS};
use crate::metrics::StoreCounters;
use std::cell::{Cell, RefCell};
use std::future::Future;
use std::task::{Context, Poll, Waker};

/// The place of a record in its shard's log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lsn(u64);

/// What the shard hands the writer.
#[derive(Debug)]
pub enum Entry {
    /// A record to append.
    Record(Record),
    /// Compaction starts: the writer syncs the current segment and opens a
    /// compaction segment for what follows: the shard's slices of its live
    /// state, between the records of normal traffic.
    CompactionStart,
    /// Every slice is queued before this: the writer ends the snapshot
    /// ([`Record::SnapshotEnd`]), syncs it, then deletes every segment
    /// before the compaction segment.
    CompactionEnd,
}

/// A shard's log, shared (`Rc`) by the shard and its writer task.
#[derive(Debug, Default)]
pub struct Log {
    inner: RefCell<Inner>,
    /// Set by the writer when the log has grown past its compaction
    /// threshold; cleared when the shard starts compacting.
    wants_compaction: Cell<bool>,
    /// The task that compacts, parked until the writer asks.
    compactor: RefCell<Option<Waker>>,
    /// Set by the writer while its writes or syncs fail (disk full, EIO),
    /// cleared once one succeeds again.
    failing: Cell<bool>,
    counters: RefCell<StoreCounters>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Entries not yet taken by the writer, the first with Lsn
    /// `next - queue.len()`.
    queue: Vec<Entry>,
    /// The Lsn of the next entry.
    next: u64,
    /// Every entry below this Lsn is durable.
    durable: u64,
    /// Tasks waiting for an Lsn to become durable.
    waiters: Vec<(u64, Waker)>,
    /// The writer, parked until there is something to write.
    writer: Option<Waker>,
    /// A task waiting for the durable watermark to move or the writer to
    /// start or stop failing ([`Log::changed`]).
    watcher: Option<Waker>,
    /// No more entries: the writer writes what is queued and ends.
    closed: bool,
}

impl Log {
    /// An empty log.
    pub fn new() -> Self {
        Self::default()
    }

    /// Queues `record`; it is written within a tick and is durable once
    /// [`Log::durable`] resolves.
    pub fn append(&self, record: Record) -> Lsn {
        self.push(Entry::Record(record))
    }

    /// Queues `op` on session `sid`'s outgoing flows: added to the last
    /// queued record when that is a [`Record::Flows`] of the same session
    /// with room left (so a run of PUBACKs or of sends is framed, checked
    /// and written as one record), else queued as a new one.
    pub fn append_flow(&self, sid: u64, op: FlowOp) -> Lsn {
        let mut inner = self.inner.borrow_mut();
        if let Some(Entry::Record(Record::Flows { sid: last, ops })) = inner.queue.last_mut() {
            if *last == sid && ops.len() < MAX_FLOW_OPS {
                ops.push(op);
                return Lsn(inner.next - 1);
            }
        }
        drop(inner);
        self.push(Entry::Record(Record::Flows { sid, ops: vec![op] }))
    }

    /// Whether the writer asked for a compaction (see
    /// [`Log::begin_compaction`]).
    pub fn wants_compaction(&self) -> bool {
        self.wants_compaction.get()
    }

    /// Resolves once the writer asks for a compaction.
    pub fn compaction_wanted(&self) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(move |cx| {
            if self.wants_compaction.get() {
                return Poll::Ready(());
            }
            *self.compactor.borrow_mut() = Some(cx.waker().clone());
            Poll::Pending
        })
    }

    /// Compaction starts at this point of the log: what the shard appends
    /// from now on goes to a compaction segment, its slices of the live
    /// state (see `shard::compaction`) among the rest.
    pub fn begin_compaction(&self) -> Lsn {
        self.wants_compaction.set(false);
        self.push(Entry::CompactionStart)
    }

    /// Every slice of the live state is appended: the snapshot is complete
    /// once this is durable, and the segments before it are deleted.
    pub fn end_compaction(&self) -> Lsn {
        self.push(Entry::CompactionEnd)
    }

    fn push(&self, entry: Entry) -> Lsn {
        let mut inner = self.inner.borrow_mut();
        let lsn = Lsn(inner.next);
        inner.next += 1;
        inner.queue.push(entry);
        if let Some(writer) = inner.writer.take() {
            writer.wake();
        }
        lsn
    }

    /// The last record appended, if any.
    pub fn last(&self) -> Option<Lsn> {
        self.inner.borrow().next.checked_sub(1).map(Lsn)
    }

    /// Resolves once records past the first `seen` are durable, or the
    /// writer's [`Log::is_failing`] is no longer `failing`; returns both
    /// as they are then. One task of the shard waits on it to release what
    /// waits for durability and to refuse what cannot be made durable.
    pub fn changed(&self, seen: u64, failing: bool) -> impl Future<Output = (u64, bool)> + '_ {
        std::future::poll_fn(move |cx| {
            let mut inner = self.inner.borrow_mut();
            if inner.durable > seen || self.failing.get() != failing {
                return Poll::Ready((inner.durable, self.failing.get()));
            }
            inner.watcher = Some(cx.waker().clone());
            Poll::Pending
        })
    }

    /// Whether the writer cannot write or sync the log now (disk full,
    /// EIO): records wait in memory and it retries every second.
    pub fn is_failing(&self) -> bool {
        self.failing.get()
    }

    /// For the writer (and tests): its writes started or stopped failing.
    pub(crate) fn set_failing(&self, failing: bool) {
        if self.failing.replace(failing) != failing {
            if let Some(watcher) = self.inner.borrow_mut().watcher.take() {
                watcher.wake();
            }
        }
    }

    /// Whether the record `lsn` is durable.
    pub fn is_durable(&self, lsn: Lsn) -> bool {
        self.inner.borrow().durable > lsn.0
    }

    /// Resolves once the record `lsn` is durable (as `durability` defines
    /// it).
    pub fn durable(&self, lsn: Lsn) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(move |cx| {
            let mut inner = self.inner.borrow_mut();
            if inner.durable > lsn.0 {
                return Poll::Ready(());
            }
            inner.waiters.push((lsn.0, cx.waker().clone()));
            Poll::Pending
        })
    }

    /// Stops taking entries: the writer writes what is queued, syncs and
    /// ends.
    pub fn close(&self) {
        let mut inner = self.inner.borrow_mut();
        inner.closed = true;
        if let Some(writer) = inner.writer.take() {
            writer.wake();
        }
    }

    /// The counters of the log (the shard copies them into its snapshot).
    pub fn counters(&self) -> StoreCounters {
        self.counters.borrow().clone()
    }

    /// For the writer: counts into the counters.
    pub(super) fn count(&self, f: impl FnOnce(&mut StoreCounters)) {
        f(&mut self.counters.borrow_mut());
    }

    /// Asks the shard for a compaction now (the writer does once the log
    /// grew past its threshold; tools and tests may at any time).
    pub fn request_compaction(&self) {
        self.wants_compaction.set(true);
        if let Some(compactor) = self.compactor.borrow_mut().take() {
            compactor.wake();
        }
    }

    /// Whether [`Log::close`] was called: the broker is stopping.
    pub fn is_closed(&self) -> bool {
        self.inner.borrow().closed
    }

    /// Entries appended and not durable (yet): a flows record counts once.
    pub fn not_durable(&self) -> u64 {
        let inner = self.inner.borrow();
        inner.next - inner.durable
    }

    /// For the writer, when it gives up at shutdown: drops every entry
    /// still queued.
    pub(super) fn discard_queued(&self) {
        self.inner.borrow_mut().queue.clear();
    }

    /// For the writer: moves every queued entry into `out` and returns the
    /// Lsn after the last; `Pending` while there is none, `Ready(None)`
    /// once closed and empty.
    pub(super) fn poll_take(
        &self,
        cx: &mut Context<'_>,
        out: &mut Vec<Entry>,
    ) -> Poll<Option<u64>> {
        let mut inner = self.inner.borrow_mut();
        if inner.queue.is_empty() {
            if inner.closed {
                return Poll::Ready(None);
            }
            inner.writer = Some(cx.waker().clone());
            return Poll::Pending;
        }
        out.append(&mut inner.queue);
        Poll::Ready(Some(inner.next))
    }

    /// For the writer (and tests): whatever is queued now, without
    /// waiting; returns the Lsn after the last entry.
    pub(crate) fn take_now(&self, out: &mut Vec<Entry>) -> u64 {
        let mut inner = self.inner.borrow_mut();
        out.append(&mut inner.queue);
        inner.next
    }

    /// For tests: takes every queued entry and counts it durable, as the
    /// writer does after its fdatasync.
    #[cfg(test)]
    pub(crate) fn sync_now(&self) -> Vec<Entry> {
        let mut entries = Vec::new();
        let end = self.take_now(&mut entries);
        self.handle_durable(end);
        entries
    }

    /// For the writer: every entry below `end` is durable.
    pub(super) fn handle_durable(&self, end: u64) {
        let mut inner = self.inner.borrow_mut();
        inner.durable = inner.durable.max(end);
        let durable = inner.durable;
        if let Some(watcher) = inner.watcher.take() {
            watcher.wake();
        }
        let mut i = 0;
        while i < inner.waiters.len() {
            if inner.waiters[i].0 < durable {
                inner.waiters.swap_remove(i).1.wake();
            } else {
                i += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::PacketId;

    fn completed(id: u16) -> FlowOp {
        FlowOp::Completed(PacketId::new(id).unwrap())
    }

    fn flows(entries: &[Entry]) -> Vec<(u64, usize)> {
        entries
            .iter()
            .map(|entry| match entry {
                Entry::Record(Record::Flows { sid, ops }) => (*sid, ops.len()),
                other => panic!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn flow_changes_of_one_session_in_a_row_share_a_record_until_taken_or_full() {
        let log = Log::new();
        let first = log.append_flow(1, completed(1));
        assert_eq!(log.append_flow(1, completed(2)), first, "merged: the same record");
        let other = log.append_flow(2, completed(1));
        assert!(other > first);
        // Session 1 again after another session's record: a new record,
        // so the order between sessions is kept.
        let again = log.append_flow(1, completed(3));
        assert!(again > other);
        assert_eq!(flows(&log.sync_now()), vec![(1, 2), (2, 1), (1, 1)]);
        // Taken by the writer: never added to afterwards.
        let after = log.append_flow(1, completed(4));
        assert!(after > again);
        for id in 0..MAX_FLOW_OPS as u16 {
            log.append_flow(1, completed(id % 100 + 1));
        }
        assert_eq!(flows(&log.sync_now()), vec![(1, MAX_FLOW_OPS), (1, 1)]);
    }
}
