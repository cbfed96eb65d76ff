//! When the shard must next look at which session: keep alive deadlines of
//! connected sessions, expiries of the others. A binary heap, earliest
//! first, so a sweep costs the entries that came due, not a visit per
//! session.

use super::slots::{SessionKey, Slot, Slots};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Instant;

/// The deadline heap of one shard.
///
/// A keep alive deadline only moves later as packets arrive, so entries are
/// not updated: one that comes due early is checked and pushed again for
/// the slot's current deadline. An entry whose time is not its slot's
/// `scheduled` is stale and skipped (also after the slot is reused); stale
/// entries leave when their time comes, so under connection churn the heap
/// holds at most the connects of the last 1.5 keep alives.
#[derive(Debug, Default)]
pub(super) struct Deadlines {
    heap: BinaryHeap<Reverse<(Instant, SessionKey)>>,
}

impl Deadlines {
    /// Makes sure `key` comes due by `slot`'s next deadline.
    pub(super) fn schedule(&mut self, key: SessionKey, slot: &mut Slot) {
        let Some(deadline) = slot.next_deadline() else { return };
        // A later entry already queued would come too late; an earlier one
        // will reschedule when it comes due.
        if slot.scheduled.is_none_or(|scheduled| deadline < scheduled) {
            slot.scheduled = Some(deadline);
            self.heap.push(Reverse((deadline, key)));
        }
    }

    /// The next session whose entry came due by `now`, stale entries
    /// skipped; its slot is no longer scheduled (the caller schedules it
    /// again if it lives on).
    pub(super) fn next_due(&mut self, now: Instant, slots: &mut Slots) -> Option<SessionKey> {
        while let Some(&Reverse((due, key))) = self.heap.peek() {
            if due > now {
                return None;
            }
            self.heap.pop();
            let Some(slot) = slots.get_mut(key) else { continue };
            if slot.scheduled == Some(due) {
                slot.scheduled = None;
                return Some(key);
            }
        }
        None
    }
}
