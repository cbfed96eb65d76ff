//! Compaction of the shard's log without a stall: the live state is
//! appended in bounded slices, between the records of normal traffic,
//! into the compaction segment the writer opened at the start (see
//! `store::writer` and `store::recovery`).
//!
//! Why the result replays to the live state: the log keeps the order of
//! appends, so every change made to a session or a retained topic after
//! its slice comes after the slice; changes made before it are rewritten
//! by it. A session's slice is [`Record::SessionEnd`] then the session as
//! it is now (its pending changes appended first), so it replaces what
//! the records before it built, whatever that was. A retained message is
//! written only if it is still its topic's: a set or delete after the
//! start is logged after the start anyway. Every session whose number was
//! given before the start sits at a position of the session table it
//! keeps until it ends, so the sweep over the positions meets it (one that
//! ends first has its end logged); one numbered after the start has all
//! its records in the compaction segment. Messages: a message queued
//! after the start has its record written again after the start
//! (`SessionLog::current` is forgotten), and each slice writes the
//! messages its session references, once per compaction.
//!
//! The budget of a slice bounds the work of one step (records built,
//! payload bytes copied by the writer, positions looked at);
//! [`compact_when_asked`] waits for each slice to be durable before the
//! next, so the shard serves its connections in between and holds at most
//! one slice in memory.

use super::Shard;
use crate::message::Message;
use crate::store::{Log, Lsn, Record, SessionState};
use hashbrown::{HashMap, HashSet};
use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

/// Records (and session-table positions looked at) per slice.
pub const SLICE_RECORDS: usize = 4096;

/// Payload bytes per slice, past which it ends early.
const SLICE_BYTES: usize = 1 << 20;

/// A compaction in progress.
#[derive(Debug, Default)]
pub(super) struct Compaction {
    /// The retained messages when it started, not looked at yet.
    retained: Vec<Arc<Message>>,
    /// The position of the session table to look at next.
    next_slot: usize,
    /// Messages whose record a slice of this compaction wrote.
    written: HashSet<u64>,
    /// Reused: the messages one session references.
    messages: HashMap<u64, Arc<Message>>,
}

/// What a step of a compaction did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CompactionStep {
    /// The last record it appended.
    pub last: Lsn,
    /// Whether the compaction is over (its end appended).
    pub done: bool,
}

impl Shard {
    /// Starts a compaction of the log (see the module documentation):
    /// from here on the writer puts what the shard appends into a
    /// compaction segment. Returns false when there is no log or one is
    /// running already.
    pub fn begin_compaction(&mut self) -> bool {
        let Some(log) = self.log.clone() else { return false };
        if self.session_log.compaction.is_some() {
            return false;
        }
        log.begin_compaction();
        // The next message queued gets a record after the start.
        self.session_log.current = None;
        let mut retained = self.retained.all();
        // The broker's own ($SYS) are not logged (see `retain_here`).
        retained.retain(|message| message.publisher.is_some());
        // Room for every message queued or in flight now: the set does not
        // grow (rehashing it whole) in the middle of a slice.
        let written = HashSet::with_capacity(self.usage.queued + self.usage.inflight);
        self.session_log.compaction =
            Some(Box::new(Compaction { retained, written, ..Default::default() }));
        true
    }

    /// Appends the next slice of the live state, at most about `budget`
    /// records; once nothing is left, the end of the compaction. `None`
    /// when no compaction runs.
    pub fn compaction_step(&mut self, now: Instant, budget: usize) -> Option<CompactionStep> {
        let log = self.log.clone()?;
        let mut compaction = self.session_log.compaction.take()?;
        let (mut records, mut bytes) = (0, 0);
        while records < budget && bytes < SLICE_BYTES {
            let Some(message) = compaction.retained.pop() else { break };
            records += 1;
            let current = self.retained.get(&message.topic, now);
            if current.is_some_and(|current| Arc::ptr_eq(current, &message)) {
                bytes += message.payload.len();
                log.append(Record::RetainSet(message));
            }
        }
        let mut sessions_left = true;
        while records < budget && bytes < SLICE_BYTES {
            let (key, next) = match self.slots.next_from(compaction.next_slot, budget - records) {
                Ok(Some(found)) => found,
                Ok(None) => {
                    sessions_left = false;
                    break;
                }
                Err(reached) => {
                    compaction.next_slot = reached;
                    break;
                }
            };
            compaction.next_slot = next;
            records += 1;
            // Its changes not appended yet go before its slice.
            self.log_changes(key);
            let slot = self.slot(key);
            if slot.log_id == 0 || !slot.session.is_persistent() {
                continue;
            }
            let sid = slot.log_id;
            compaction.messages.clear();
            let stored = slot.session.stored(&mut compaction.messages);
            for (&mid, message) in &compaction.messages {
                if compaction.written.insert(mid) {
                    records += 1;
                    bytes += message.payload.len();
                    log.append(Record::Message { mid, message: Arc::clone(message) });
                }
            }
            log.append(Record::SessionEnd { sid });
            SessionState::session_records(sid, &stored, |record| {
                records += 1;
                log.append(record);
            });
        }
        let done = compaction.retained.is_empty() && !sessions_left;
        if done {
            log.end_compaction();
        } else {
            self.session_log.compaction = Some(compaction);
        }
        // A slice that wrote nothing still has a place in the log.
        let last = log.last()?;
        Some(CompactionStep { last, done })
    }
}

#[cfg(test)]
impl Shard {
    /// The persistent sessions as the shard holds them, as the log should
    /// replay them (for tests).
    pub(crate) fn stored_sessions(&self) -> SessionState {
        let mut state = SessionState::default();
        for slot in self.slots.iter() {
            if slot.log_id != 0 && slot.session.is_persistent() {
                let stored = slot.session.stored(&mut state.messages);
                state.sessions.insert(slot.log_id, stored);
            }
        }
        state
    }
}

/// Compacts the log of `shard` each time its writer asks, a slice at a
/// time, each slice durable before the next is built: the shard's
/// connections run between slices. Runs until the executor ends.
pub async fn compact_when_asked(shard: Rc<RefCell<Shard>>, log: Rc<Log>) {
    loop {
        log.compaction_wanted().await;
        if !shard.borrow_mut().begin_compaction() {
            return;
        }
        loop {
            let step = shard.borrow_mut().compaction_step(Instant::now(), SLICE_RECORDS);
            let Some(CompactionStep { last, done }) = step else { break };
            log.durable(last).await;
            if done {
                break;
            }
        }
    }
}
