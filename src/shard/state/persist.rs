//! The shard's side of logging persistent sessions (see
//! `store::sessions`): it numbers sessions and messages, turns what a
//! session noted ([`SessionChange`]) into records, writes a message fanned
//! out to many sessions once, and rebuilds the sessions at start (their
//! compaction is in `compaction`). Hooks only: the session queues work the same
//! with or without a log.

use super::Shard;
use crate::message::Message;
use crate::protocol::QoS;
use crate::router::{ShardId, ShardMessage};
use crate::session::{AckToken, Session, SessionChange};
use crate::shard::slots::{SessionKey, Slot};
use crate::store::record::FlowOp;
use crate::store::{Lsn, Record, SessionState, StoredFlow, StoredSession, StoredSubscription};
use smallvec::SmallVec;
use std::rc::Rc;
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
    pub(super) current: Option<(Arc<Message>, u64, bool)>,
    /// Reused between sessions: the changes taken from one.
    changes: Vec<SessionChange>,
    /// With `durability = "always"`: what waits for durability.
    durable: Option<Box<DurableAcks>>,
    /// Per shard (this one included): whether its log cannot be written
    /// now (disk full, EIO). Empty until one fails.
    failing: Vec<bool>,
    /// How many of `failing` are true.
    failing_count: usize,
    /// The compaction in progress, if any (see `compaction`).
    pub(super) compaction: Option<Box<super::compaction::Compaction>>,
}

/// `durability = "always"`: a QoS 1/2 PUBLISH is acknowledged once what
/// its routing logged is durable on this shard (its log's watermark) and on
/// every shard it was sent to. Each peer counts the messages that may log
/// (QoS 1/2 publishes, group publishes, retained messages) it receives
/// from this shard, and reports the count once what they logged there is durable
/// ([`ShardMessage::Durable`]); the queues between two shards keep their
/// order, so a count covers every message sent before it.
#[derive(Debug, Default)]
pub(super) struct DurableAcks {
    /// Per peer: messages that may log sent to it.
    sent: Vec<u64>,
    /// Per peer: how many of those it reported durable.
    acked: Vec<u64>,
    /// Per peer: such messages received from it.
    received: Vec<u64>,
    /// Reports owed to peers once the log is durable up to the record:
    /// (peer, count, last record when the count was reached).
    replies: Vec<(ShardId, u64, Option<Lsn>)>,
    /// The peers the message being routed went to, with their counts.
    touched: SmallVec<[(ShardId, u64); 4]>,
    /// Acknowledgements waiting.
    waits: Vec<DurableWait>,
}

/// An acknowledgement waiting for durability.
#[derive(Debug)]
struct DurableWait {
    /// This shard's last record when the PUBLISH was routed.
    lsn: Option<Lsn>,
    /// The peers it went to and the count each must report.
    peers: SmallVec<[(ShardId, u64); 4]>,
    waiter: Waiter,
}

/// What a durable acknowledgement releases.
#[derive(Clone, Debug)]
enum Waiter {
    /// A session's barrier.
    Session(SessionKey, AckToken),
    /// Another node's QoS 1/2 message, acknowledged to it (see
    /// `state/bridge_acks.rs`).
    Remote(crate::router::cluster::RemoteAck),
}

impl DurableWait {
    /// Whether this shard's records up to `lsn` are durable and every peer
    /// reported its count (`acked`, per peer).
    fn is_ready(&self, log: &crate::store::Log, acked: &[u64]) -> bool {
        self.lsn.is_none_or(|lsn| log.is_durable(lsn))
            && self.peers.iter().all(|(peer, count)| acked[peer.index()] >= *count)
    }
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
            // With an ACL file, the rules of the user it connected as: the
            // messages queued to it from now on are checked as before.
            let acl = self.acl.as_ref().map(|file| {
                crate::auth::acl::ClientAcl::new(Arc::clone(file), stored.username.as_deref())
            });
            let mut session = Session::restore(stored, &messages, Rc::clone(&self.limits), now);
            session.set_acl(acl);
            let mut slot = Slot::new(session);
            slot.log_id = sid;
            slot.expires_at = expiry.map(|expiry| now + expiry);
            // Its claim in the session directory came before the restart.
            slot.directory_revision =
                self.cluster.as_ref().map_or(0, |link| link.restored_revision());
            let key = self.slots.insert(slot);
            self.index_session(key);
            self.schedule(key);
            // Its queue and in-flight messages, in the shard's gauges.
            self.account(key);
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
                let stored = slot.session.stored(&mut Default::default());
                log.append(Record::SessionOpen {
                    sid: slot.log_id,
                    client_id: stored.client_id,
                    expiry: stored.expiry,
                    username: stored.username,
                    will: None,
                });
            }
        }
        let sid = slot.log_id;
        for change in changes.drain(..) {
            let record = match change {
                SessionChange::State { expiry, username, will } => Record::SessionOpen {
                    sid,
                    client_id: slot.session.client_id().clone(),
                    expiry,
                    username,
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
                // The changes to its flows go into one record while they
                // follow each other in the log (see `Log::append_flow`).
                SessionChange::Sent { mid, packet_id } => {
                    log.append_flow(sid, FlowOp::Sent { mid, packet_id });
                    continue;
                }
                SessionChange::Released(packet_id) => {
                    log.append_flow(sid, FlowOp::Released(packet_id));
                    continue;
                }
                SessionChange::Completed(packet_id) => {
                    log.append_flow(sid, FlowOp::Completed(packet_id));
                    continue;
                }
                SessionChange::Dropped(mid) => {
                    log.append_flow(sid, FlowOp::Dropped { mid });
                    continue;
                }
                SessionChange::Expired(mid) => {
                    log.append_flow(sid, FlowOp::Expired { mid });
                    continue;
                }
                SessionChange::Qos2In(packet_id) => Record::Qos2In { sid, packet_id },
                SessionChange::Qos2Done(packet_id) => Record::Qos2Done { sid, packet_id },
            };
            log.append(record);
        }
        self.session_log.changes = changes;
    }

    /// Writes a persistent session another cluster node handed over to
    /// the log at once, as a snapshot writes one (its messages, then its
    /// records), under new numbers of this shard (see
    /// `state/cluster_sessions.rs`). Returns its session number (0: no log)
    /// and the state renumbered, for `Session::restore`.
    pub(super) fn log_handed_over(
        &mut self,
        mut stored: StoredSession,
        messages: hashbrown::HashMap<u64, Arc<Message>>,
    ) -> (u64, StoredSession, hashbrown::HashMap<u64, Arc<Message>>) {
        let Some(log) = self.log.clone() else { return (0, stored, messages) };
        let log_state = &mut self.session_log;
        log_state.current = None;
        let mut renumbered = hashbrown::HashMap::with_capacity(messages.len());
        let mut new_mid = hashbrown::HashMap::with_capacity(messages.len());
        for (mid, message) in messages {
            let fresh = log_state.next_mid;
            log_state.next_mid += 1;
            new_mid.insert(mid, fresh);
            log.append(Record::Message { mid: fresh, message: Arc::clone(&message) });
            renumbered.insert(fresh, message);
        }
        let sent = stored.inflight.iter_mut().filter_map(|(_, flow)| match flow {
            StoredFlow::Sent(entry) => Some(entry),
            StoredFlow::Released => None,
        });
        for entry in stored.queue.iter_mut().chain(sent) {
            // Every entry's message is there (`store::handover::decode`).
            entry.mid = new_mid.get(&entry.mid).copied().unwrap_or(0);
        }
        let sid = log_state.next_sid;
        log_state.next_sid += 1;
        SessionState::session_records(sid, &stored, |record| {
            log.append(record);
        });
        (sid, stored, renumbered)
    }

    /// A session leaves the shard: its end is logged.
    pub(super) fn log_session_end(&mut self, slot: &Slot) {
        if let (Some(log), true) = (&self.log, slot.log_id != 0) {
            log.append(Record::SessionEnd { sid: slot.log_id });
        }
    }

    /// This shard's log started (`true`) or stopped failing: the change is
    /// told to every other shard ([`ShardMessage::StoreFailing`]).
    pub fn handle_store_failing(&mut self, failing: bool) {
        let me = self.id;
        if self.set_store_failing(me, failing) {
            for peer in
                (0..self.nr_shards).filter_map(ShardId::from_index).filter(|&peer| peer != me)
            {
                self.outbox.push(peer, ShardMessage::StoreFailing { failing });
            }
        }
    }

    /// Notes that the log of `shard` fails or works; returns whether that
    /// changed anything.
    pub(super) fn set_store_failing(&mut self, shard: ShardId, failing: bool) -> bool {
        let log = &mut self.session_log;
        if log.failing.is_empty() {
            log.failing = vec![false; self.nr_shards];
        }
        let Some(slot) = log.failing.get_mut(shard.index()) else { return false };
        if std::mem::replace(slot, failing) == failing {
            return false;
        }
        if failing {
            log.failing_count += 1;
        } else {
            log.failing_count -= 1;
        }
        true
    }

    /// Whether a QoS 1/2 PUBLISH is refused now: the log of this shard or
    /// of another cannot be written (they share `data_dir`'s disk, and a
    /// message may be logged on any shard it is routed to), so it could not
    /// be made durable. QoS 0 is never logged and still flows.
    pub(super) fn store_unavailable(&self) -> bool {
        self.session_log.failing_count > 0
    }

    /// `durability = "always"`: from now on a QoS 1/2 PUBLISH is
    /// acknowledged only once its records are durable here and on every
    /// shard it went to (see [`DurableAcks`]). Called at start, with the
    /// log attached.
    pub fn set_durable_acks(&mut self) {
        let n = self.nr_shards;
        self.session_log.durable = Some(Box::new(DurableAcks {
            sent: vec![0; n],
            acked: vec![0; n],
            received: vec![0; n],
            ..DurableAcks::default()
        }));
    }

    /// Whether acknowledgements wait for durability.
    pub(super) fn durable_acks(&self) -> bool {
        self.session_log.durable.is_some()
    }

    /// A message starts being routed.
    pub(super) fn durable_route_start(&mut self) {
        if let Some(durable) = self.session_log.durable.as_mut() {
            durable.touched.clear();
        }
    }

    /// `message` was queued to `to`; a QoS 1/2 one may log there (QoS 0
    /// never does, and is not counted).
    pub(super) fn durable_sent(&mut self, to: ShardId, message: &Message) {
        let Some(durable) = self.session_log.durable.as_mut() else { return };
        if message.qos == QoS::AtMostOnce {
            return;
        }
        durable.sent[to.index()] += 1;
        let count = durable.sent[to.index()];
        match durable.touched.iter_mut().find(|(peer, _)| *peer == to) {
            Some(entry) => entry.1 = count,
            None => durable.touched.push((to, count)),
        }
    }

    /// The acknowledgement held by `token` waits for what routing the
    /// PUBLISH before it logged, here and on the shards it went to.
    pub(super) fn durable_wait(&mut self, key: SessionKey, token: AckToken) {
        // The session's own records (its inbound QoS 2 state) first.
        self.log_changes(key);
        let lsn = self.log.as_ref().and_then(|log| log.last());
        let Some(durable) = self.session_log.durable.as_mut() else { return };
        let peers = std::mem::take(&mut durable.touched);
        self.wait_durable(DurableWait { lsn, peers, waiter: Waiter::Session(key, token) });
    }

    /// Releases `wait` at once if what it waits for is durable already,
    /// else keeps it for [`Shard::release_durable`]. Only the new wait is
    /// looked at: the others cannot have become ready since the last
    /// event that moved the log's watermark or a peer's count.
    fn wait_durable(&mut self, wait: DurableWait) {
        let Some(durable) = self.session_log.durable.as_mut() else { return };
        if self.log.as_ref().is_some_and(|log| wait.is_ready(log, &durable.acked)) {
            self.release_waiter(wait.waiter);
        } else {
            durable.waits.push(wait);
        }
    }

    /// Releases what a durable wait held.
    fn release_waiter(&mut self, waiter: Waiter) {
        match waiter {
            Waiter::Session(key, token) => self.release_acks(key, token),
            Waiter::Remote(ack) => self.accept_remote(ack),
        }
    }

    /// With `durability = "always"`, another node's QoS 1/2 message just
    /// routed is acknowledged to it once what routing it logged is durable,
    /// here and on the shards it went to; at once otherwise. Returns it
    /// when it is to be acknowledged at once.
    pub(super) fn durable_wait_remote(
        &mut self,
        ack: crate::router::cluster::RemoteAck,
    ) -> Option<crate::router::cluster::RemoteAck> {
        let lsn = self.log.as_ref().and_then(|log| log.last());
        let Some(durable) = self.session_log.durable.as_mut() else { return Some(ack) };
        let peers = std::mem::take(&mut durable.touched);
        self.wait_durable(DurableWait { lsn, peers, waiter: Waiter::Remote(ack) });
        None
    }

    /// Releases the SUBACK or UNSUBACK barrier `token` of a persistent
    /// session once its subscription records are durable (with
    /// `durability = "always"`; at once otherwise): a subscription the
    /// client was told about survives a crash.
    pub(super) fn release_acks_durable(&mut self, key: SessionKey, token: AckToken) {
        let persistent = self.slots.get(key).is_some_and(|slot| slot.log_id != 0);
        let lsn = self.log.as_ref().and_then(|log| log.last());
        match self.session_log.durable.as_mut() {
            Some(_) if persistent => {
                let waiter = Waiter::Session(key, token);
                self.wait_durable(DurableWait { lsn, peers: SmallVec::new(), waiter });
            }
            _ => self.release_acks(key, token),
        }
    }

    /// `messages` were received from `from` and handled: the count of the
    /// QoS 1/2 ones is reported back once what they logged is durable.
    pub(super) fn durable_received(&mut self, from: ShardId, messages: &[Arc<Message>]) {
        let lsn = self.log.as_ref().and_then(|log| log.last());
        let Some(durable) = self.session_log.durable.as_mut() else { return };
        let count = messages.iter().filter(|m| m.qos != QoS::AtMostOnce).count() as u64;
        if count == 0 {
            return;
        }
        durable.received[from.index()] += count;
        let total = durable.received[from.index()];
        durable.replies.push((from, total, lsn));
        // Nothing this shard waits for moved: only the reports are due.
        self.send_durable_reports();
    }

    /// A peer reported `count` of this shard's messages durable.
    pub(super) fn durable_acked(&mut self, from: ShardId, count: u64) {
        let Some(durable) = self.session_log.durable.as_mut() else { return };
        let acked = &mut durable.acked[from.index()];
        *acked = (*acked).max(count);
        self.release_durable();
    }

    /// The log's durable watermark moved: reports owed to peers are sent
    /// and the acknowledgements whose records are all durable released.
    pub fn handle_durable(&mut self) {
        self.send_durable_reports();
        self.release_durable();
    }

    /// Sends the reports owed to peers whose records are durable.
    fn send_durable_reports(&mut self) {
        let Some(log) = self.log.clone() else { return };
        let Some(durable) = self.session_log.durable.as_mut() else { return };
        // Records are durable in order: the replies due are a prefix.
        let due = durable
            .replies
            .iter()
            .position(|(.., lsn)| lsn.is_some_and(|lsn| !log.is_durable(lsn)))
            .unwrap_or(durable.replies.len());
        let mut latest: SmallVec<[(ShardId, u64); 4]> = SmallVec::new();
        for (peer, count, _) in durable.replies.drain(..due) {
            match latest.iter_mut().find(|(p, _)| *p == peer) {
                Some(entry) => entry.1 = entry.1.max(count),
                None => latest.push((peer, count)),
            }
        }
        for (peer, count) in latest {
            self.outbox.push(peer, ShardMessage::Durable { count });
        }
    }

    /// Releases every waiting acknowledgement whose records are durable:
    /// a scan of the waits, once per move of the log's watermark or of a
    /// peer's count (about once per group commit), not once per PUBLISH.
    fn release_durable(&mut self) {
        let Some(log) = self.log.clone() else { return };
        let Some(durable) = self.session_log.durable.as_mut() else { return };
        let mut released: SmallVec<[Waiter; 8]> = SmallVec::new();
        let acked = &durable.acked;
        durable.waits.retain(|wait| {
            let ready = wait.is_ready(&log, acked);
            if ready {
                released.push(wait.waiter.clone());
            }
            !ready
        });
        for waiter in released {
            self.release_waiter(waiter);
        }
    }
}
