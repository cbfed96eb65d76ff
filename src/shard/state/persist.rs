//! The shard's side of logging persistent sessions (see
//! `store::sessions`): it numbers sessions and messages, turns what a
//! session noted ([`SessionChange`]) into records, writes a message fanned
//! out to many sessions once, rebuilds the sessions at start and hands
//! them over for compaction. Hooks only: the session queues work the same
//! with or without a log.

use super::Shard;
use crate::message::Message;
use crate::session::{Session, SessionChange};
use crate::shard::slots::{SessionKey, Slot};
use crate::shard::state::LocalSubscription;
use crate::store::{Record, SessionState, StoredSubscription};
use std::sync::Arc;
use std::time::Instant;

/// What the shard keeps to log sessions.
#[derive(Debug, Default)]
pub(super) struct SessionLog {
    /// The next session number.
    next_sid: u64,
    /// The next message number.
    next_mid: u64,
    /// The message being fanned out, its number, and whether its record is
    /// written: a message queued to many sessions of the shard is written
    /// once. (An `Arc`, not a pointer: a freed message's address may come
    /// back.)
    current: Option<(Arc<Message>, u64, bool)>,
    /// Reused between sessions: the changes taken from one.
    changes: Vec<SessionChange>,
}

impl Shard {
    /// Rebuilds the persistent sessions the log held: offline, their
    /// expiry counted from `now` (the restart), their subscriptions in the
    /// index and announced to the other shards, their queues as they were.
    pub(super) fn restore_sessions(&mut self, state: SessionState, now: Instant) {
        let SessionState { sessions, messages, next_sid, next_mid } = state;
        self.session_log.next_sid = next_sid.max(1);
        self.session_log.next_mid = next_mid.max(1);
        for (sid, stored) in sessions {
            // A client id already here (a bug in an older log): the later
            // number wins.
            if let Some(key) = self.slots.find(&stored.client_id) {
                self.remove_session(key);
            }
            let expiry = stored.expiry;
            let session = Session::restore(stored, &messages, self.limits, now);
            let mut slot = Slot::new(session);
            slot.log_id = sid;
            slot.expires_at = expiry.map(|expiry| now + expiry);
            let key = self.slots.insert(slot);
            let filters: Vec<_> = self
                .slot(key)
                .session
                .subscriptions()
                .map(|(filter, s)| (filter.clone(), *s))
                .collect();
            for (filter, subscribed) in filters {
                let subscription = LocalSubscription {
                    options: subscribed.options,
                    subscription_id: subscribed.identifier,
                };
                if self.subscriptions.insert(&filter, key, subscription).is_none() {
                    let group = self.subscriptions.group_id(&filter);
                    self.interest.handle_subscribe(&filter, group, &self.outbox);
                }
            }
            self.schedule(key);
        }
    }

    /// The number to give `message` in a delivery to the session of
    /// `key`: 0 when it is not logged (no log, or a clean session).
    pub(super) fn log_id_for(&mut self, key: SessionKey, message: &Arc<Message>) -> u64 {
        if self.log.is_none() || !self.slot(key).session.is_persistent() {
            return 0;
        }
        let log = &mut self.session_log;
        match &log.current {
            Some((current, mid, _)) if Arc::ptr_eq(current, message) => *mid,
            _ => {
                let mid = log.next_mid;
                log.next_mid += 1;
                log.current = Some((Arc::clone(message), mid, false));
                mid
            }
        }
    }

    /// Appends the records of what the session of `key` noted. A session
    /// that stopped being persistent (a v5 CONNECT or DISCONNECT with
    /// Session Expiry Interval 0) ends in the log.
    pub(super) fn log_changes(&mut self, key: SessionKey) {
        let Some(log) = self.log.clone() else { return };
        let Some(slot) = self.slots.get_mut(key) else { return };
        let mut changes = std::mem::take(&mut self.session_log.changes);
        slot.session.take_changes(&mut changes);
        if !slot.session.is_persistent() {
            if slot.log_id != 0 {
                log.append(Record::SessionEnd { sid: slot.log_id });
                slot.log_id = 0;
            }
            changes.clear();
        }
        if changes.is_empty() {
            self.session_log.changes = changes;
            return;
        }
        if slot.log_id == 0 {
            slot.log_id = self.session_log.next_sid;
            self.session_log.next_sid += 1;
            if !matches!(changes.first(), Some(SessionChange::State { .. })) {
                log.append(Record::SessionOpen {
                    sid: slot.log_id,
                    client_id: slot.session.client_id().clone(),
                    expiry: slot.session.expiry(),
                    will: None,
                });
            }
        }
        let sid = slot.log_id;
        for change in changes.drain(..) {
            let record = match change {
                SessionChange::State { expiry, will } => Record::SessionOpen {
                    sid,
                    client_id: slot.session.client_id().clone(),
                    expiry,
                    will,
                },
                SessionChange::Subscribed(filter, subscribed) => Record::Subscribe {
                    sid,
                    filter,
                    subscription: StoredSubscription {
                        options: subscribed.options,
                        identifier: subscribed.identifier,
                    },
                },
                SessionChange::Unsubscribed(filter) => Record::Unsubscribe { sid, filter },
                SessionChange::Queued(entry) => {
                    if let Some((message, mid, written)) = &mut self.session_log.current {
                        if *mid == entry.mid && !*written {
                            *written = true;
                            let message = Arc::clone(message);
                            log.append(Record::Message { mid: *mid, message });
                        }
                    }
                    Record::Enqueue { sid, entry }
                }
                SessionChange::Sent { mid, packet_id } => Record::Sent { sid, mid, packet_id },
                SessionChange::Released(packet_id) => Record::Released { sid, packet_id },
                SessionChange::Completed(packet_id) => Record::Completed { sid, packet_id },
                SessionChange::Qos2In(packet_id) => Record::Qos2In { sid, packet_id },
                SessionChange::Qos2Done(packet_id) => Record::Qos2Done { sid, packet_id },
            };
            log.append(record);
        }
        self.session_log.changes = changes;
    }

    /// A session leaves the shard: its end is logged.
    pub(super) fn log_session_end(&mut self, slot: &Slot) {
        if let (Some(log), true) = (&self.log, slot.log_id != 0) {
            log.append(Record::SessionEnd { sid: slot.log_id });
        }
    }

    /// The persistent sessions now, for a snapshot. The message being
    /// fanned out is forgotten: its record may be older than the snapshot.
    pub(super) fn live_sessions(&mut self) -> SessionState {
        self.session_log.current = None;
        let mut state = SessionState {
            next_sid: self.session_log.next_sid,
            next_mid: self.session_log.next_mid,
            ..SessionState::default()
        };
        for slot in self.slots.iter() {
            if slot.log_id != 0 && slot.session.is_persistent() {
                let stored = slot.session.stored(&mut state.messages);
                state.sessions.insert(slot.log_id, stored);
            }
        }
        state
    }
}
