//! The bridge's side of QoS 1/2 across nodes (see `super::super::ack` and
//! `super::super::directory`): the node's announcements and heartbeat,
//! the directory of the other nodes, the acknowledgements it sends and
//! waits for, and the messages it sends again.
//!
//! Subjects, under the prefix: `ctl` (broadcast announcements),
//! `node.{origin}.ctl` (a node's list requests and answers),
//! `node.{origin}.msg` (messages sent again to one node), and
//! `ack.{origin}` (acknowledgements for the node's messages). `{origin}`
//! is the node's origin for this run, in 16 hex digits.
//!
//! What happens when something dies:
//! * An interested node dies: its heartbeat stops; after `node_timeout`
//!   (counted only while this node is connected to NATS) it is forgotten
//!   and the messages waiting for it are acknowledged to their publishers.
//!   Its subscribers lose what it had not delivered (a node keeps its
//!   queues in memory, or in its own log with `durability`).
//! * The NATS server of this node dies: the client reconnects to another
//!   seed; what it had buffered may be lost, and is sent again to each
//!   node that did not acknowledge it once the connection is back. Nodes
//!   are not forgotten while this node is cut off.
//! * The NATS server of another node dies: that node reconnects elsewhere
//!   and its heartbeat resumes; what it missed meanwhile is sent again on
//!   its own subject. A cut longer than `node_timeout` counts as its death.

use super::super::ack::{self, Pending, Waiting, ACKED_WINDOW};
use super::super::directory::{Directory, Send};
use super::super::frame::{Dedup, Seen};
use super::super::{BridgeCounters, RemoteAck, Ticket, ToShard};
use super::BridgeState;
use crate::config::ClusterConfig;
use crate::protocol::TopicName;
use async_nats::connection::State;
use bytes::{Bytes, BytesMut};
use futures_lite::StreamExt;
use hashbrown::HashMap;
use smallvec::SmallVec;
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, Instant};

/// Acknowledgements to send, per reply subject, and whether a task will
/// send them.
#[derive(Default)]
struct AckBatch {
    acks: RefCell<HashMap<String, BytesMut>>,
    flushing: Cell<bool>,
}

/// What the bridge keeps for QoS 1/2 across nodes.
pub(super) struct Reliable {
    directory: RefCell<Directory>,
    pending: RefCell<Pending>,
    /// The last sequence of the QoS 1/2 stream.
    sequence: Cell<u64>,
    /// The QoS 1/2 stream's dedup, per origin.
    dedup: RefCell<Dedup>,
    /// Acknowledgements to send.
    acks: Rc<AckBatch>,
    /// Where other nodes acknowledge this node's messages (the reply
    /// subject of each QoS 1/2 message: shared, not copied).
    ack_subject: async_nats::Subject,
    /// Broadcast announcements.
    ctl_subject: String,
    prefix: String,
    heartbeat: Duration,
    node_timeout: Duration,
    ack_timeout: Duration,
    /// The connected server's max_payload (read once per tick).
    max_payload: Cell<usize>,
    /// When the directory is complete: a heartbeat and a half after the
    /// first connection (every node has beaten and been asked its list).
    /// `None` before the first connection.
    complete_at: Cell<Option<Instant>>,
    /// Messages published before that, with their topics: the nodes they
    /// wait for are named once it is complete.
    young: RefCell<Vec<(u64, TopicName)>>,
    /// Woken when another node says which version of this node's list it
    /// holds.
    synced: tokio::sync::Notify,
}

impl Reliable {
    pub(super) fn new(config: &ClusterConfig, origin: u64) -> Self {
        let prefix = config.subject_prefix.clone();
        Self {
            directory: RefCell::new(Directory::new(origin, &config.node_id)),
            pending: RefCell::new(Pending::default()),
            sequence: Cell::new(0),
            dedup: RefCell::new(Dedup::with_window(ACKED_WINDOW)),
            acks: Rc::default(),
            ack_subject: format!("{prefix}.ack.{origin:016x}").into(),
            ctl_subject: format!("{prefix}.ctl"),
            heartbeat: config.node_timeout / 4,
            node_timeout: config.node_timeout,
            ack_timeout: config.ack_timeout,
            max_payload: Cell::new(config.max_payload as usize),
            complete_at: Cell::new(None),
            young: RefCell::new(Vec::new()),
            synced: tokio::sync::Notify::new(),
            prefix,
        }
    }

    /// The next sequence of the QoS 1/2 stream.
    pub(super) fn next_sequence(&self) -> u64 {
        let sequence = self.sequence.get() + 1;
        self.sequence.set(sequence);
        sequence
    }

    /// Whether a frame of `len` bytes fits the server's max_payload.
    pub(super) fn fits(&self, len: usize) -> bool {
        len <= self.max_payload.get()
    }

    fn node_subject(&self, origin: u64, kind: &str) -> String {
        format!("{}.node.{origin:016x}.{kind}", self.prefix)
    }
}

impl BridgeState {
    /// The shard's ticket is answered: its PUBACK/PUBREC may go.
    pub(super) fn accepted(&self, ticket: Ticket) {
        let lane = &self.shared.inbound[ticket.shard.index()];
        lane.push_control_later(ToShard::Accepted(ticket.number));
        self.bell.ring(ticket.shard, lane);
    }

    /// Publishes the QoS 1/2 frame `payload` of `topic` (sequence
    /// `sequence`) with a reply subject, and waits for the nodes the
    /// directory says are interested (none: the ticket is answered at
    /// once). Before the directory is complete (a node just started, see
    /// `complete_at`) the message waits until it is, then for the nodes it
    /// names then.
    pub(super) async fn publish_acked(
        &self,
        ticket: Ticket,
        sequence: u64,
        topic: &TopicName,
        subject: async_nats::Subject,
        payload: Bytes,
    ) -> Result<(), async_nats::PublishError> {
        let reliable = &self.reliable;
        let mut nodes = SmallVec::new();
        reliable.directory.borrow().interested(topic, &mut nodes);
        let young = reliable.complete_at.get().is_none_or(|at| Instant::now() < at);
        if young {
            reliable.young.borrow_mut().push((sequence, topic.clone()));
        }
        if nodes.is_empty() && !young {
            self.accepted(ticket);
        } else {
            let due = Instant::now() + reliable.ack_timeout;
            let waiting = Waiting { ticket, nodes, frame: payload.clone() };
            reliable.pending.borrow_mut().insert(sequence, waiting, due);
        }
        let reply = reliable.ack_subject.clone();
        self.client.publish_with_reply(subject, reply, payload).await
    }

    /// A plain filter of this node came or went: the other nodes are told.
    /// Returns whether a new one was announced: the SUBACK then waits for
    /// [`Self::wait_synced`].
    pub(super) async fn announce(
        &self,
        filter: &crate::protocol::TopicFilter,
        added: bool,
    ) -> bool {
        let reliable = &self.reliable;
        let Some(delta) = reliable.directory.borrow_mut().own_change(filter, added) else {
            return false;
        };
        let _ = self.client.publish(reliable.ctl_subject.clone(), delta).await;
        added
    }

    /// Waits (at most `ack_timeout`: a node may be dead and not yet
    /// forgotten) until every node known holds this node's current list,
    /// so that after the SUBACK their QoS 1/2 messages wait for this node
    /// [MQTT-3.8.4-1].
    pub(super) async fn wait_synced(&self) {
        let reliable = &self.reliable;
        let version = reliable.directory.borrow().version();
        let synced = async {
            loop {
                // Created before the check: it gets a wake-up from then on.
                let changed = reliable.synced.notified();
                if reliable.directory.borrow().synced(version) {
                    return;
                }
                changed.await;
            }
        };
        if tokio::time::timeout(reliable.ack_timeout, synced).await.is_err() {
            tracing::debug!(version, "not every node confirmed this node's new filters in time");
        }
    }

    /// Decides what a QoS 1/2 frame (one with a reply subject) received
    /// from `origin` on a plain subscription is: `true` to deliver it.
    /// Repeats are acknowledged again (the first acknowledgement may have
    /// been lost); one too old to tell is delivered again (at least once).
    pub(super) fn see_acked(&self, origin: u64, sequence: u64, reply: &str) -> bool {
        let seen = self.reliable.dedup.borrow_mut().see(origin, sequence);
        match seen {
            Seen::New => true,
            Seen::Duplicate => {
                BridgeCounters::add(&self.shared.counters.duplicates);
                self.queue_ack(reply, sequence);
                false
            }
            Seen::Stale => {
                BridgeCounters::add(&self.shared.counters.stale);
                true
            }
        }
    }

    /// A QoS 1/2 frame could not be handed to its shard (its queue was
    /// full): not acknowledged, so it is sent again, and then new.
    pub(super) fn not_handed(&self, origin: u64, sequence: u64) {
        self.reliable.dedup.borrow_mut().forget(origin, sequence);
    }

    /// Acknowledges `sequence` on `reply`, batched with the others of this
    /// turn.
    fn queue_ack(&self, reply: &str, sequence: u64) {
        let batch = &self.reliable.acks;
        let mut acks = batch.acks.borrow_mut();
        let out = acks.entry_ref(reply).or_insert_with(|| {
            let mut out = BytesMut::with_capacity(256);
            ack::ack_header(self.origin, &mut out);
            out
        });
        ack::ack_sequence(sequence, out);
        if !batch.flushing.replace(true) {
            let (client, batch) = (self.client.clone(), Rc::clone(batch));
            tokio::task::spawn_local(async move {
                // Whatever else is received this turn joins the batch.
                tokio::task::yield_now().await;
                batch.flushing.set(false);
                let ready: Vec<_> = batch.acks.borrow_mut().drain().collect();
                for (subject, out) in ready {
                    let _ = client.publish(subject, out.freeze()).await;
                }
            });
        }
    }

    /// Starts the tasks of QoS 1/2 across nodes; they end when aborted.
    pub(super) async fn start_reliable(self: &Rc<Self>) -> Vec<tokio::task::JoinHandle<()>> {
        let reliable = &self.reliable;
        let mut tasks = Vec::new();
        let subjects = [
            (reliable.ctl_subject.clone(), Inbox::Control),
            (reliable.node_subject(self.origin, "ctl"), Inbox::Control),
            (reliable.node_subject(self.origin, "msg"), Inbox::Message),
            (reliable.ack_subject.as_str().to_owned(), Inbox::Ack),
        ];
        for (subject, inbox) in subjects {
            match self.client.subscribe(subject.clone()).await {
                Ok(mut subscriber) => {
                    let me = Rc::clone(self);
                    tasks.push(tokio::task::spawn_local(async move {
                        while let Some(message) = subscriber.next().await {
                            match inbox {
                                Inbox::Control => me.handle_control(message.payload).await,
                                Inbox::Message => me.handle_received(message, None),
                                Inbox::Ack => me.handle_ack(message.payload),
                            }
                        }
                    }));
                }
                Err(error) => tracing::warn!(%error, %subject, "NATS subscribe failed"),
            }
        }
        tasks.push(tokio::task::spawn_local(Rc::clone(self).tick_task()));
        // What the shards accepted of other nodes' messages.
        let me = Rc::clone(self);
        tasks.push(tokio::task::spawn_local(async move {
            while let Some(RemoteAck { sequence, reply, .. }) =
                std::future::poll_fn(|cx| me.shared.remote_acks.poll_control(cx)).await
            {
                me.queue_ack(&reply, sequence);
            }
        }));
        tasks
    }

    async fn handle_control(&self, payload: Bytes) {
        let reliable = &self.reliable;
        let handled =
            reliable.directory.borrow_mut().handle(payload, Instant::now(), reliable.heartbeat);
        let effects = match handled {
            Ok(effects) => effects,
            Err(error) => {
                BridgeCounters::add(&self.shared.counters.malformed);
                tracing::debug!(%error, "cluster control message");
                return;
            }
        };
        for origin in effects.gone {
            self.node_gone(origin);
        }
        reliable.synced.notify_waiters();
        for Send::To(origin, bytes) in effects.send {
            let _ = self.client.publish(reliable.node_subject(origin, "ctl"), bytes).await;
        }
    }

    fn handle_ack(&self, payload: Bytes) {
        let Some((origin, sequences)) = ack::decode_ack(payload) else {
            return BridgeCounters::add(&self.shared.counters.malformed);
        };
        let mut pending = self.reliable.pending.borrow_mut();
        for sequence in sequences {
            if let Some(ticket) = pending.ack(origin, sequence) {
                BridgeCounters::add(&self.shared.counters.remote_acked);
                self.accepted(ticket);
            }
        }
    }

    /// `origin` is gone: nothing waits for it any more.
    fn node_gone(&self, origin: u64) {
        BridgeCounters::add(&self.shared.counters.nodes_expired);
        self.reliable.pending.borrow_mut().gone(origin, |ticket| self.accepted(ticket));
    }

    /// The directory is complete: the messages published before wait for
    /// the nodes it names (sent to them at once).
    fn name_young_waits(&self, now: Instant) {
        let reliable = &self.reliable;
        let young = std::mem::take(&mut *reliable.young.borrow_mut());
        if young.is_empty() {
            return;
        }
        for (sequence, topic) in young {
            let mut nodes = SmallVec::new();
            reliable.directory.borrow().interested(&topic, &mut nodes);
            if let Some(ticket) = reliable.pending.borrow_mut().wait_for(sequence, nodes) {
                self.accepted(ticket);
            }
        }
        // Sent again at the next tick to the nodes just named.
        reliable.pending.borrow_mut().make_due(now);
    }

    /// Heartbeats, expiry of silent nodes, and messages sent again.
    async fn tick_task(self: Rc<Self>) {
        let reliable = &self.reliable;
        let period = reliable.heartbeat.min(reliable.ack_timeout) / 2;
        let mut interval = tokio::time::interval(period.max(Duration::from_millis(5)));
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let (mut connected, mut next_beat) = (false, Instant::now());
        loop {
            interval.tick().await;
            let now = Instant::now();
            let was = std::mem::replace(
                &mut connected,
                self.client.connection_state() == State::Connected,
            );
            if !connected {
                continue;
            }
            if !was {
                // Back from a cut: nobody is taken for dead for it.
                reliable.directory.borrow_mut().refresh(now);
                reliable.max_payload.set(self.client.server_info().max_payload);
                next_beat = now;
                if reliable.complete_at.get().is_none() {
                    reliable.complete_at.set(Some(now + reliable.heartbeat * 3 / 2));
                }
            }
            if reliable.complete_at.get().is_some_and(|at| now >= at) {
                self.name_young_waits(now);
            }
            if now >= next_beat {
                next_beat = now + reliable.heartbeat;
                let beat = reliable.directory.borrow().beat();
                let _ = self.client.publish(reliable.ctl_subject.clone(), beat).await;
            }
            let gone = reliable.directory.borrow_mut().expire(now - reliable.node_timeout);
            for origin in gone {
                self.node_gone(origin);
            }
            let mut resend: Vec<(u64, Bytes)> = Vec::new();
            reliable.pending.borrow_mut().due(now, now + reliable.ack_timeout, |_, waiting| {
                for &node in &waiting.nodes {
                    resend.push((node, waiting.frame.clone()));
                }
            });
            for (node, frame) in resend {
                BridgeCounters::add(&self.shared.counters.resent);
                let subject = reliable.node_subject(node, "msg");
                let reply = reliable.ack_subject.clone();
                let _ = self.client.publish_with_reply(subject, reply, frame).await;
            }
        }
    }
}

/// What a subscription of [`BridgeState::start_reliable`] receives.
#[derive(Clone, Copy)]
enum Inbox {
    Control,
    Message,
    Ack,
}
