//! The bridge's side of QoS 1/2 across nodes (see `super::super::ack` and
//! `super::super::directory`): the node's announcements and heartbeat,
//! the directory of the other nodes, the acknowledgements it sends and
//! waits for, and the messages it sends again.
//!
//! Subjects, under the prefix: `ctl` (broadcast announcements),
//! `node.{origin}.ctl` (a node's list requests and answers),
//! `node.{origin}.msg` (messages sent again to one node),
//! `node.{origin}.grp` (messages for one of its shared groups, in a group
//! envelope, see `frame`), and `ack.{origin}` (acknowledgements for the
//! node's messages). `{origin}` is the node's origin for this run, in 16
//! hex digits.
//!
//! Shared groups (see `super::super` and `ack`): the publishing bridge
//! picks one node per matching group (`Directory::pick_groups`) and sends
//! the message there, or hands it to its own shard (a leg acknowledged
//! inside the bridge). A QoS 1/2 leg is moved to another node when it is
//! refused, when its node is taken for dead, and at QoS 1 when it is not
//! acknowledged within `ack_timeout` (`Directory::choose`).
//!
//! What happens when something dies:
//! * An interested node dies: its heartbeat stops; after `node_timeout`
//!   (counted only while this node is connected to NATS) it is forgotten
//!   and the messages waiting for it are acknowledged to their publishers.
//!   Its subscribers lose what it had not delivered (a node keeps its
//!   queues in memory, or in its own log with `durability`). The shared
//!   group copies it had not acknowledged go to other nodes with members
//!   (QoS 1 already after `ack_timeout`): a group loses only what the dead
//!   node had accepted and not yet delivered to its member.
//! * The NATS server of this node dies: the client reconnects to another
//!   seed; what it had buffered may be lost, and is sent again to each
//!   node that did not acknowledge it once the connection is back. Nodes
//!   are not forgotten while this node is cut off.
//! * The NATS server of another node dies: that node reconnects elsewhere
//!   and its heartbeat resumes; what it missed meanwhile is sent again on
//!   its own subject. A cut longer than `node_timeout` counts as its death.

use super::super::ack::{self, Acked, Leg, Pending, Waiting, ACKED_WINDOW, REFUSED};
use super::super::directory::{Directory, Send};
use super::super::frame::{self, Dedup, Seen};
use super::super::{BridgeCounters, Delivery, RemoteAck, Ticket, ToShard};
use super::BridgeState;
use crate::config::ClusterConfig;
use crate::message::wire::Clocks;
use crate::message::Message;
use crate::protocol::{QoS, TopicFilter, TopicName};
use crate::router::home_shard;
use async_nats::connection::State;
use bytes::{Bytes, BytesMut};
use futures_lite::StreamExt;
use hashbrown::HashMap;
use smallvec::SmallVec;
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A message's shared groups and the node picked for each.
type Picks = SmallVec<[(TopicFilter, u64); 2]>;

/// A QoS 1/2 message published before the directory was complete.
struct Young {
    sequence: u64,
    topic: TopicName,
    /// QoS 2.
    stay: bool,
    /// The nodes whose list named it then.
    named: SmallVec<[u64; 4]>,
}

/// Why a shared group's copy moves (see [`BridgeState::move_leg`]).
#[derive(Clone, Copy, Debug)]
enum Move {
    /// This node refused it (no member there, or a full lane here).
    Refused(u64),
    /// Not acknowledged within `ack_timeout`.
    Timeout,
    /// Its node was taken for dead.
    Gone,
}

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
    /// Messages published before that: the nodes they wait for, and
    /// their shared groups' nodes, are named once it is complete.
    young: RefCell<Vec<Young>>,
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

    /// Publishes the QoS 1/2 frame `payload` of `message` (sequence
    /// `sequence`) with a reply subject on `subject` (`None`: too long, no
    /// plain subscription gets it), and waits for the nodes the directory
    /// says are interested, and for one node per matching shared group
    /// (none of either: the ticket is answered at once). Before the
    /// directory is complete (a node just started, see `complete_at`) the
    /// message waits until it is, then for the nodes it names then.
    pub(super) async fn publish_acked(
        &self,
        ticket: Ticket,
        sequence: u64,
        message: &Arc<Message>,
        subject: Option<async_nats::Subject>,
        payload: Bytes,
    ) -> Result<(), async_nats::PublishError> {
        let reliable = &self.reliable;
        let (topic, stay) = (&message.topic, message.qos == QoS::ExactlyOnce);
        let mut nodes = SmallVec::new();
        if subject.is_some() {
            reliable.directory.borrow().interested(topic, &mut nodes);
        }
        // Nodes counted only because their list has not arrived: see
        // `Waiting::unsure`.
        let unsure = reliable.directory.borrow().unsynced_of(&nodes);
        let young = reliable.complete_at.get().is_none_or(|at| Instant::now() < at);
        let mut picks = Picks::new();
        if young {
            let mut named = nodes.clone();
            named.retain(|node| !unsure.contains(node));
            let young = Young { sequence, topic: topic.clone(), stay, named };
            reliable.young.borrow_mut().push(young);
        } else {
            self.pick_groups(topic, &mut picks);
        }
        if nodes.is_empty() && picks.is_empty() && !young {
            self.accepted(ticket);
        } else {
            let due = Instant::now() + reliable.ack_timeout;
            let mut waiting = Waiting::new(ticket, nodes, payload.clone());
            waiting.unsure = unsure;
            reliable.pending.borrow_mut().insert(sequence, waiting, due);
            // Every leg is counted before any is sent: an early answer
            // cannot end the message while others are still to go.
            let legs = self.add_legs(sequence, picks, stay);
            for leg in legs {
                self.send_leg(leg, Some(message)).await;
            }
        }
        match subject {
            Some(subject) => {
                let reply = reliable.ack_subject.clone();
                self.client.publish_with_reply(subject, reply, payload).await
            }
            None => Ok(()),
        }
    }

    /// The shared groups matching `topic`, each with the node picked for
    /// it (this one's included), into `picks`.
    fn pick_groups(&self, topic: &TopicName, picks: &mut Picks) {
        let directory = self.reliable.directory.borrow();
        if !directory.has_groups() {
            return;
        }
        directory.pick_groups(topic, |group, node| {
            if let Ok(group) = TopicFilter::new(group) {
                picks.push((group, node));
            }
        });
    }

    /// A QoS 0 message (frame `frame`) for the shared groups matching it:
    /// sent to the node picked for each, without acknowledgement (at most
    /// once), or handed to this node's shard.
    pub(super) async fn send_groups_at_most_once(&self, message: &Arc<Message>, frame: &Bytes) {
        let mut picks = Picks::new();
        self.pick_groups(&message.topic, &mut picks);
        for (group, node) in picks {
            if node == self.origin {
                self.hand_to_group(group, Arc::clone(message), None);
            } else {
                let envelope = frame::encode_group(0, group.as_str(), frame);
                let subject = self.reliable.node_subject(node, "grp");
                let _ = self.client.publish(subject, envelope).await;
            }
        }
    }

    /// Adds a leg to message `parent` for each of `picks`; returns their
    /// sequences, to send.
    fn add_legs(&self, parent: u64, picks: Picks, stay: bool) -> SmallVec<[u64; 2]> {
        let reliable = &self.reliable;
        let due = Instant::now() + reliable.ack_timeout;
        let mut legs = SmallVec::new();
        for (group, node) in picks {
            let leg = reliable.next_sequence();
            let refused = SmallVec::new();
            let entry = Leg { parent, group, node, refused, stay };
            reliable.pending.borrow_mut().add_leg(leg, entry, due);
            legs.push(leg);
        }
        legs
    }

    /// Sends leg `leg` to its node: on the node's own subject with a reply
    /// subject, or to this node's shard (`message`: the message, else it
    /// is decoded from the frame). A full lane to this node's shard counts
    /// as a refusal: the leg moves on.
    async fn send_leg(&self, leg: u64, mut message: Option<&Arc<Message>>) {
        let reliable = &self.reliable;
        loop {
            let (node, group, frame) = {
                let mut pending = reliable.pending.borrow_mut();
                let Some(frame) = pending.leg_frame(leg) else { return };
                let Some(entry) = pending.leg_mut(leg) else { return };
                (entry.node, entry.group.clone(), frame)
            };
            if node != self.origin {
                let envelope = frame::encode_group(leg, group.as_str(), &frame);
                let (subject, reply) = (reliable.node_subject(node, "grp"), &reliable.ack_subject);
                let _ = self.client.publish_with_reply(subject, reply.clone(), envelope).await;
                return;
            }
            let message = match message.take() {
                Some(message) => Arc::clone(message),
                None => match frame::decode(frame, Clocks::read()) {
                    Ok((_, _, message)) => Arc::new(message),
                    // It was encoded here.
                    Err(_) => return,
                },
            };
            let ack = RemoteAck { sequence: leg, origin: self.origin, reply: None, refused: false };
            if self.hand_to_group(group, message, Some(ack))
                || !self.move_leg(leg, Move::Refused(node))
            {
                return;
            }
        }
    }

    /// Hands a message for one member of `group` on this node to the shard
    /// the group's name hashes to; `false` when its lane is full (counted).
    fn hand_to_group(
        &self,
        group: TopicFilter,
        message: Arc<Message>,
        ack: Option<RemoteAck>,
    ) -> bool {
        let shard = home_shard(group.as_str().as_bytes(), self.shared.inbound.len());
        let delivery = Delivery { message, ack, group: Some(group) };
        let lane = &self.shared.inbound[shard.index()];
        match lane.push_message(delivery) {
            Ok(()) => {
                // Pushed without a wake: the shard's bell rings once per turn.
                self.bell.ring(shard, lane);
                true
            }
            Err(_) => {
                BridgeCounters::add(&self.shared.counters.inbound_dropped);
                false
            }
        }
    }

    /// Chooses where leg `leg` goes next (see `Directory::choose`); returns
    /// whether it is to be sent there. With no node left with members of
    /// its group, the leg is done (nothing to deliver to).
    fn move_leg(&self, leg: u64, cause: Move) -> bool {
        let reliable = &self.reliable;
        let mut pending = reliable.pending.borrow_mut();
        let Some(entry) = pending.leg_mut(leg) else { return false };
        if let Move::Refused(node) = cause {
            if !entry.refused.contains(&node) {
                entry.refused.push(node);
            }
        }
        let stay = matches!(cause, Move::Timeout) && entry.stay;
        let current = entry.node;
        let next =
            reliable.directory.borrow().choose(&entry.group, Some(current), &entry.refused, stay);
        let counters = &self.shared.counters;
        match next {
            Some(node) => {
                entry.node = node;
                BridgeCounters::add(match node == current {
                    true => &counters.resent,
                    false => &counters.group_moved,
                });
                true
            }
            None => {
                let done = pending.leg_done(leg);
                drop(pending);
                if let Some(ticket) = done {
                    self.accepted(ticket);
                }
                false
            }
        }
    }

    /// A message for one of this node's shared groups, from the node that
    /// picked it (`node.{origin}.grp`): deduplicated (QoS 1/2, by the leg's
    /// sequence) and handed to the group's shard, which accepts or refuses
    /// it (QoS 1/2).
    pub(super) fn handle_group(&self, message: async_nats::Message) {
        let counters = &self.shared.counters;
        let Some((leg, group, frame)) = frame::decode_group(message.payload) else {
            return BridgeCounters::add(&counters.malformed);
        };
        let (origin, _, decoded) = match frame::decode(frame, Clocks::read()) {
            Ok(decoded) => decoded,
            Err(error) => {
                BridgeCounters::add(&counters.malformed);
                return tracing::debug!(%error, "not a ringmq frame in a group envelope");
            }
        };
        let ack = match message.reply {
            Some(reply) => {
                if !self.see_acked(origin, leg, &reply) {
                    return;
                }
                Some(RemoteAck { sequence: leg, origin, reply: Some(reply), refused: false })
            }
            None => None,
        };
        let acked = ack.is_some();
        if self.hand_to_group(group, Arc::new(decoded), ack) {
            BridgeCounters::add(&counters.received);
        } else if acked {
            // Not acknowledged: sent again, or elsewhere.
            self.not_handed(origin, leg);
        }
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

    /// What a shard did with another node's message (or this node's own
    /// leg): acknowledged, or refused, to the node waiting for it.
    async fn answer(&self, ack: RemoteAck) {
        let sequence = ack.sequence | if ack.refused { REFUSED } else { 0 };
        match &ack.reply {
            None => self.handle_acks(self.origin, [sequence].into_iter()).await,
            Some(reply) => {
                if ack.refused {
                    // Not delivered here: a copy sent again is new.
                    self.not_handed(ack.origin, ack.sequence);
                }
                self.queue_ack(reply, sequence);
            }
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
            (reliable.node_subject(self.origin, "grp"), Inbox::Group),
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
                                Inbox::Message => me.handle_received(message),
                                Inbox::Group => me.handle_group(message),
                                // A status, not an acknowledgement: NATS
                                // answers a QoS 1/2 message that no node
                                // subscribed to with 503 No Responders. The
                                // directory, not NATS, says whom to wait for.
                                Inbox::Ack if message.status.is_some() => {}
                                Inbox::Ack => me.handle_ack(message.payload).await,
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
            while let Some(ack) =
                std::future::poll_fn(|cx| me.shared.remote_acks.poll_control(cx)).await
            {
                me.answer(ack).await;
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
            self.node_gone(origin).await;
        }
        reliable.synced.notify_waiters();
        for Send::To(origin, bytes) in effects.send {
            let _ = self.client.publish(reliable.node_subject(origin, "ctl"), bytes).await;
        }
    }

    async fn handle_ack(&self, payload: Bytes) {
        let Some((origin, sequences)) = ack::decode_ack(payload.clone()) else {
            tracing::debug!(?payload, "not an acknowledgement of ringmq's");
            return BridgeCounters::add(&self.shared.counters.malformed);
        };
        self.handle_acks(origin, sequences).await;
    }

    /// `node` acknowledged (or refused) `sequences`.
    async fn handle_acks(&self, node: u64, sequences: impl Iterator<Item = u64>) {
        let mut refused = SmallVec::<[u64; 4]>::new();
        {
            let mut pending = self.reliable.pending.borrow_mut();
            for sequence in sequences {
                match pending.acked(node, sequence) {
                    Acked::Done(ticket) => {
                        BridgeCounters::add(&self.shared.counters.remote_acked);
                        self.accepted(ticket);
                    }
                    Acked::Refused(leg) => refused.push(leg),
                    Acked::Nothing => {}
                }
            }
        }
        for leg in refused {
            if self.move_leg(leg, Move::Refused(node)) {
                self.send_leg(leg, None).await;
            }
        }
    }

    /// `origin` is gone: nothing waits for it any more, and the shared
    /// group copies sent to it go to other nodes.
    async fn node_gone(&self, origin: u64) {
        BridgeCounters::add(&self.shared.counters.nodes_expired);
        self.reliable.pending.borrow_mut().gone(origin, |ticket| self.accepted(ticket));
        let legs = self.reliable.pending.borrow().legs_of(origin);
        for leg in legs {
            if self.move_leg(leg, Move::Gone) {
                self.send_leg(leg, None).await;
            }
        }
    }

    /// The directory is complete: the messages published before wait for
    /// the nodes it names (sent to them at once), and for one node per
    /// matching shared group. Of the nodes interested now, only those
    /// known to be interested when the message was published (their list
    /// had arrived and named it): another did not get it on NATS unless it
    /// was subscribed then, and must not be sent it now (a session that
    /// moved there since got it where it was; see
    /// `shard::state::session_moves`). A node whose list had not arrived,
    /// or that was not known yet, is not waited for: NATS gave it the
    /// message if it was subscribed.
    async fn name_young_waits(&self, now: Instant) {
        let reliable = &self.reliable;
        let young = std::mem::take(&mut *reliable.young.borrow_mut());
        if young.is_empty() {
            return;
        }
        for Young { sequence, topic, stay, named } in young {
            let nodes = {
                let directory = reliable.directory.borrow();
                let mut nodes = SmallVec::new();
                directory.interested(&topic, &mut nodes);
                nodes.retain(|node| named.contains(node));
                nodes
            };
            let mut picks = Picks::new();
            self.pick_groups(&topic, &mut picks);
            let legs = self.add_legs(sequence, picks, stay);
            if let Some(ticket) = reliable.pending.borrow_mut().wait_for(sequence, nodes) {
                self.accepted(ticket);
            }
            for leg in legs {
                self.send_leg(leg, None).await;
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
                self.name_young_waits(now).await;
            }
            if now >= next_beat {
                next_beat = now + reliable.heartbeat;
                let beat = reliable.directory.borrow().beat();
                let _ = self.client.publish(reliable.ctl_subject.clone(), beat).await;
            }
            let gone = reliable.directory.borrow_mut().expire(now - reliable.node_timeout);
            for origin in gone {
                self.node_gone(origin).await;
            }
            let mut resend: Vec<(u64, Bytes)> = Vec::new();
            let done =
                reliable.pending.borrow_mut().due(now, now + reliable.ack_timeout, |_, waiting| {
                    for &node in &waiting.nodes {
                        resend.push((node, waiting.frame.clone()));
                    }
                });
            for ticket in done {
                self.accepted(ticket);
            }
            for (node, frame) in resend {
                BridgeCounters::add(&self.shared.counters.resent);
                let subject = reliable.node_subject(node, "msg");
                let reply = reliable.ack_subject.clone();
                let _ = self.client.publish_with_reply(subject, reply, frame).await;
            }
            let legs = reliable.pending.borrow_mut().due_legs(now, now + reliable.ack_timeout);
            for leg in legs {
                if self.move_leg(leg, Move::Timeout) {
                    self.send_leg(leg, None).await;
                }
            }
        }
    }
}

/// What a subscription of [`BridgeState::start_reliable`] receives.
#[derive(Clone, Copy)]
enum Inbox {
    Control,
    Message,
    Group,
    Ack,
}
