//! The cluster transport: other ringmq nodes reached through NATS
//! (issue 17; design.md, "Beyond one VM").
//!
//! A remote node is one more destination beside the local shards. A
//! publish accepted on a shard is matched locally as always, and handed
//! once to the NATS bridge (unless its topic is `local_only`); NATS
//! delivers it to every node that subscribed to a matching subject, once
//! per node. The receiving node's bridge gives it to one of its shards,
//! which delivers it to its own subscribers and forwards it to its other
//! interested shards, exactly as a local publish (but never back to NATS).
//!
//! Interest: each shard's first local subscriber to a filter, and its last
//! one leaving, already make an interest delta for the other shards; the
//! same delta goes to the bridge, which counts, per NATS subject, how many
//! (shard, filter) pairs want it: one NATS subscription per distinct
//! subject per node, made when the count leaves 0, removed when it comes
//! back to 0. The bridge acknowledges each delta once the NATS server has
//! its subscription (a round trip; at once while disconnected:
//! the client re-subscribes on reconnect), and the SUBACK waits for that
//! acknowledgement as it waits for the other shards' ([MQTT-3.8.4-1]: a
//! message published after the SUBACK, anywhere in the cluster, reaches
//! the new subscriber).
//!
//! * [`subject`]: MQTT topics and filters as NATS subjects.
//! * `frame`: a message as published on NATS, and the receiver's dedup.
//! * `lane`: the lock-free queues between the shards and the bridge.
//! * `doorbell`: one wake-up of the other side per batch, not per message:
//!   a shard wakes the bridge at most once per `cluster.batch_delay_us`
//!   (at once when it was quiet), the bridge wakes each shard once per
//!   turn; NATS publishes and deliveries are batched with them.
//! * `bridge`: the bridge thread (async-nats on a current-thread tokio
//!   runtime): connection, reconnection with backoff, subscriptions.
//! * `retained`: retained messages cluster-wide, through a JetStream
//!   key-value bucket every node watches.
//! * `sessions`: a client id unique in the cluster: a directory bucket
//!   claimed with compare-and-set, and the session handed over by the node
//!   that held it.
//! * `moves`: what the node a session left sends on to the node it moved
//!   to, for a while after the move.
//!
//! QoS 1/2 across nodes (`directory`, `ack`, `bridge::reliable`): every
//! node announces the filters it holds, plain and shared (deltas, a
//! heartbeat, a full list on request), so each bridge knows which nodes
//! want a topic. A QoS 1/2 message is published with a reply subject and
//! waits until every interested node acknowledged it (a node acknowledges
//! once its shard routed the message, with `durability = "always"` once
//! what that logged is durable: [`FromBridge::AckedPublish`]); the shard
//! holds the PUBACK/PUBREC until then ([`FromBridge::Accepted`]). A node
//! that did not acknowledge within `ack_timeout` is sent the message again
//! on its own subject (its dedup drops repeats); one not heard from for
//! `node_timeout` while this node is connected to NATS is taken for dead
//! and waited for no longer.
//!
//! Shared subscriptions (`$share/{group}/{filter}`, MQTT 5.0 sections 4.8
//! and 4.8.2 [MQTT-4.8.2]: "a publication that matches its Topic Filter is
//! only sent to one of its subscribing Sessions"; the sentence has no
//! statement number of its own) are served by the publishing node's bridge, at every QoS: for each group
//! matching a message, it picks one node among those with members, itself
//! included, the nodes taking turns per group (`Directory::pick_groups`),
//! and sends the message to that node's own subject with the group
//! (`node.{origin}.grp`), or hands it to its own shard. That node gives it
//! to one local member ([`FromBridge::GroupPublish`]). A bridged message is
//! therefore never given to a local group by the shard directly. At QoS 1/2
//! the copy is a *leg* of the message (see `ack`): the PUBACK/PUBREC waits
//! for its acknowledgement too, and a leg refused (no member left there),
//! not acknowledged within `ack_timeout` (QoS 1; QoS 2 is sent again to the
//! same node, so that a slow node cannot make a duplicate), or whose node
//! is taken for dead, goes to another node with members: at least once,
//! and once in the normal case. QoS 0 takes the same path without
//! acknowledgements (at most once) rather than NATS queue groups: one
//! mechanism and one set of turns for every QoS, no second NATS connection
//! (a queue group must get its own node's messages, that is echo), and a
//! node's own members are served without a NATS round trip; the cost is a
//! lookup in the groups' trie per message (skipped while no node has a
//! shared subscription) and one NATS message per group from the publishing
//! node, where a queue group has the server make it.

mod ack;
mod bridge;
mod directory;
mod doorbell;
mod frame;
mod kv;
mod lane;
mod moves;
mod retained;
mod sessions;
mod spill;
pub mod subject;

pub use bridge::{Bridge, BridgeError};
pub use moves::Forwarded;
pub use sessions::{Claimed, Takeover, REVISION_UNKNOWN};

use super::interest::InterestDelta;
use super::ShardId;
use crate::message::Message;
use crate::protocol::{QoS, TopicFilter};
use lane::Lane;
use std::cell::Cell;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// A shard's interest change, as the bridge gets it.
#[derive(Debug)]
struct Interest {
    shard: ShardId,
    filter: TopicFilter,
    added: bool,
    revision: u64,
}

/// A message a shard hands the bridge; a QoS 1/2 one with the ticket the
/// shard waits on (see [`FromBridge::Accepted`]).
#[derive(Debug)]
struct Outgoing {
    message: Arc<Message>,
    ticket: Option<Ticket>,
}

/// Names a QoS 1/2 message of one shard waiting for the other nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Ticket {
    shard: ShardId,
    number: u64,
}

/// What the bridge tells a shard, besides messages.
#[derive(Debug)]
enum ToShard {
    /// Interest changes applied up to this revision.
    InterestAck(u64),
    /// Every interested node accepted the message of this ticket.
    Accepted(u64),
}

/// Another node's QoS 1/2 message (or a shared group's copy of one, a
/// leg, possibly of this node's own message), to acknowledge once this
/// node accepted it (routed; durable with `durability = "always"`), or to
/// refuse (a leg whose group has no member here any more). Opaque to the
/// shard, which hands it back ([`ClusterLink::accept_remote`],
/// [`ClusterLink::refuse_remote`]).
#[derive(Clone, Debug)]
pub struct RemoteAck {
    /// Its QoS 1/2 sequence number on the publishing node (a leg's own).
    sequence: u64,
    /// The publishing node.
    origin: u64,
    /// Where it waits for the acknowledgement; `None` for a leg this node
    /// picked itself (answered inside the bridge).
    reply: Option<async_nats::Subject>,
    /// Refused rather than accepted.
    refused: bool,
}

/// A message from NATS for a shard: for its plain subscribers (and its
/// peers'), or for one member of a shared group.
#[derive(Debug)]
struct Delivery {
    message: Arc<Message>,
    /// A QoS 1/2 message the publishing node waits for.
    ack: Option<RemoteAck>,
    /// The shared subscription (`$share/{group}/{filter}`) whose publishing
    /// node picked this node; `None` for plain subscriptions.
    group: Option<TopicFilter>,
}

/// What the bridge hands a shard.
#[derive(Debug)]
pub enum FromBridge {
    /// A message published on another node, for this shard's subscribers
    /// and its peers'.
    Publish(Arc<Message>),
    /// A QoS 1/2 message published on another node, which waits for this
    /// node to accept it: routed as [`Self::Publish`], then `ack` is
    /// handed back ([`ClusterLink::accept_remote`]).
    AckedPublish {
        /// The message.
        message: Arc<Message>,
        /// Its acknowledgement.
        ack: RemoteAck,
    },
    /// A message for one member, on this node, of the shared subscription
    /// `filter` (`$share/{group}/{filter}`): its publishing node chose this
    /// node among the nodes with members.
    GroupPublish {
        /// The shared subscription.
        filter: TopicFilter,
        /// The message.
        message: Arc<Message>,
        /// QoS 1/2: accepted once given to a member, refused when none is
        /// left here.
        ack: Option<RemoteAck>,
    },
    /// The bridge applied this shard's interest changes up to `revision`.
    InterestAck(u64),
    /// Every other node interested in the QoS 1/2 message of this ticket
    /// (see [`ClusterLink::take_ticket`]) accepted it, or was taken for
    /// dead: its PUBACK/PUBREC may go.
    Accepted(u64),
    /// The cluster's retained message of a topic this shard owns changed
    /// (an empty payload: deleted); see `retained`.
    Retained(Arc<Message>),
    /// Another node took the session of a client id homed on this shard
    /// over: the shard closes its connection, and answers with the session
    /// ([`ClusterLink::handover`]); see `sessions`.
    Takeover(Takeover),
    /// Another node sends on messages for a session that moved from it to
    /// this node, homed on this shard; answered once queued
    /// ([`ClusterLink::answer_forwarded`]); see `moves`.
    Forwarded(Forwarded),
}

/// The bridge's counters: atomics, since the bridge thread and every shard
/// count into them; shards only on the rare paths (a drop).
#[derive(Debug, Default)]
pub struct BridgeCounters {
    /// Messages published to NATS.
    pub published: AtomicU64,
    /// Of those, QoS 1/2 ones.
    pub published_qos12: AtomicU64,
    /// Messages NATS refused or that could not be encoded (larger than
    /// the server's max_payload, connection closed).
    pub publish_failed: AtomicU64,
    /// Topics or filters whose subject is longer than
    /// [`subject::MAX_SUBJECT_LEN`]: kept on this node.
    pub subject_too_long: AtomicU64,
    /// QoS 0 messages dropped because the lane to the bridge was full.
    pub outbound_dropped_qos0: AtomicU64,
    /// QoS 1/2 messages that found the lane to the bridge full and waited
    /// in their shard (see `spill`).
    pub outbound_spilled_qos12: AtomicU64,
    /// Messages received from other nodes and handed to a shard.
    pub received: AtomicU64,
    /// Messages received twice (two subscriptions of this node matched).
    pub duplicates: AtomicU64,
    /// Messages received too late to be told from duplicates: QoS 0 ones
    /// dropped, QoS 1/2 ones delivered (at least once).
    pub stale: AtomicU64,
    /// Frames that were not ringmq messages.
    pub malformed: AtomicU64,
    /// Messages received while the lane to their shard was full: dropped.
    pub inbound_dropped: AtomicU64,
    /// Messages the NATS client dropped: the bridge read too slowly.
    pub slow_consumer: AtomicU64,
    /// Retained messages (and deletes) written to the cluster's bucket.
    pub retained_written: AtomicU64,
    /// Retained messages the bucket refused or never acknowledged (no
    /// JetStream, too large): they stay on this node.
    pub retained_failed: AtomicU64,
    /// Changes of the bucket handed to the shards.
    pub retained_applied: AtomicU64,
    /// Client ids claimed in the cluster's session directory.
    pub session_claims: AtomicU64,
    /// Claims that could not be made (no directory, NATS down, timeouts):
    /// the client was accepted on this node alone.
    pub session_claims_failed: AtomicU64,
    /// Sessions taken over from another node (a live connection closed
    /// there, and the session moved here unless Clean Start).
    pub session_takeovers: AtomicU64,
    /// Messages sent on to the node a session moved to, and acknowledged
    /// by it (see `moves`).
    pub session_forwarded: AtomicU64,
    /// Messages for a session that moved away that its new node never
    /// acknowledged (gone, or unreachable): lost.
    pub session_forward_failed: AtomicU64,
    /// Copies of a message that reached a session twice around its move
    /// (straight and sent on by its old node, or handed over and sent
    /// again): the second one dropped (shards count these).
    pub session_move_duplicates: AtomicU64,
    /// Sessions that moved here and stopped holding back at their hold's
    /// deadline, their old node's word not come: what it sends on after
    /// may arrive after later messages (see `shard::state::session_moves`).
    pub session_hold_expired: AtomicU64,
    /// Messages sent on to a session's new node again, its answer not
    /// come in time: what the new node did not have yet may arrive after
    /// later messages (see `moves`).
    pub session_forward_resent: AtomicU64,
    /// Directory entries removed because the session they named ended on
    /// this node (see `sessions`).
    pub session_released: AtomicU64,
    /// Directory entries of ended sessions that could not be removed (NATS
    /// or the bucket unreachable): they stay, naming this node.
    pub session_release_failed: AtomicU64,
    /// When a slow consumer was last logged, in seconds since the Unix
    /// epoch (logged at most once per 10 s).
    pub slow_consumer_logged: AtomicU64,
    /// Connections (first connection and reconnections) to NATS.
    pub connects: AtomicU64,
    /// Connections to NATS lost.
    pub disconnects: AtomicU64,
    /// QoS 1/2 messages acknowledged by every interested node.
    pub remote_acked: AtomicU64,
    /// QoS 1/2 messages sent again to a node that had not acknowledged.
    pub resent: AtomicU64,
    /// Nodes taken for dead (silent for `node_timeout`).
    pub nodes_expired: AtomicU64,
    /// Shared group copies (QoS 1/2) sent to another node than first
    /// chosen: refused, not acknowledged in time, or their node dead.
    pub group_moved: AtomicU64,
}

impl BridgeCounters {
    fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// The figures now.
    pub fn snapshot(&self) -> crate::metrics::ClusterCounters {
        let n = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        crate::metrics::ClusterCounters {
            published: n(&self.published),
            published_qos12: n(&self.published_qos12),
            publish_failed: n(&self.publish_failed),
            subject_too_long: n(&self.subject_too_long),
            outbound_dropped_qos0: n(&self.outbound_dropped_qos0),
            outbound_spilled_qos12: n(&self.outbound_spilled_qos12),
            received: n(&self.received),
            duplicates: n(&self.duplicates),
            stale: n(&self.stale),
            malformed: n(&self.malformed),
            inbound_dropped: n(&self.inbound_dropped),
            slow_consumer: n(&self.slow_consumer),
            connects: n(&self.connects),
            disconnects: n(&self.disconnects),
            remote_acked: n(&self.remote_acked),
            resent: n(&self.resent),
            nodes_expired: n(&self.nodes_expired),
            group_moved: n(&self.group_moved),
            retained_written: n(&self.retained_written),
            retained_failed: n(&self.retained_failed),
            retained_applied: n(&self.retained_applied),
            session_claims: n(&self.session_claims),
            session_claims_failed: n(&self.session_claims_failed),
            session_takeovers: n(&self.session_takeovers),
            session_forwarded: n(&self.session_forwarded),
            session_forward_failed: n(&self.session_forward_failed),
            session_move_duplicates: n(&self.session_move_duplicates),
            session_hold_expired: n(&self.session_hold_expired),
            session_forward_resent: n(&self.session_forward_resent),
            session_released: n(&self.session_released),
            session_release_failed: n(&self.session_release_failed),
        }
    }
}

/// What the shards and the bridge share.
#[derive(Debug)]
struct Shared {
    /// Shards to bridge: messages to publish, interest changes.
    outbound: Lane<Outgoing, Interest>,
    /// Bridge to each shard: messages received, interest acknowledgements,
    /// accepted tickets.
    inbound: Vec<Lane<Delivery, ToShard>>,
    /// Shards to bridge: other nodes' messages accepted here.
    remote_acks: Lane<(), RemoteAck>,
    counters: BridgeCounters,
    /// Topics that never leave the node.
    local_only: Vec<TopicFilter>,
    /// QoS 1/2 messages each shard may have waiting for other nodes
    /// before it holds its publishers (`max_pending_acks` shared out).
    max_pending: usize,
    /// Bridge to each shard: changes of the cluster's retained messages of
    /// its topics, takeovers of its sessions. Never bounded (none may be
    /// lost; they are as few as retained publishes and connects); only the
    /// control side of each lane is used.
    events: Vec<Lane<(), FromBridge>>,
    /// Shards to bridge: session claims and handovers (see `sessions`),
    /// retained messages for the bucket (see `retained`).
    sessions: Lane<(), sessions::ToBridge>,
    /// `cluster.sessions = "cluster"`: client ids are claimed.
    sessions_cluster: bool,
    /// `cluster.retained = "cluster"`: retained messages go to the bucket.
    retained_cluster: bool,
    /// `cluster.batch_delay_us`: a shard wakes the bridge at most once per
    /// this long (see `doorbell`).
    batch_delay: std::time::Duration,
    /// `cluster.node_timeout_ms`: how long a node sends on what matches a
    /// session that moved away (see `moves`).
    move_window: std::time::Duration,
}

/// The shards' side of the bridge, before the shards start: `Send`,
/// cloned into every shard's executor.
#[derive(Clone, Debug)]
pub struct ClusterSetup(Arc<Shared>);

impl ClusterSetup {
    /// Shard `shard`'s link to the bridge.
    pub fn link(&self, shard: ShardId) -> ClusterLink {
        ClusterLink {
            shared: Arc::clone(&self.0),
            shard,
            tickets: Cell::new(0),
            last: Cell::new(None),
            spill: spill::Spill::default(),
            bell: doorbell::ShardBell::default(),
        }
    }
}

/// One shard's link to the bridge. The shard holds it as
/// `Option<Rc<ClusterLink>>`: a single node pays a `None` check.
#[derive(Debug)]
pub struct ClusterLink {
    shared: Arc<Shared>,
    shard: ShardId,
    /// The last ticket given.
    tickets: Cell<u64>,
    /// The ticket of the last message [`Self::publish`] took, if QoS 1/2.
    last: Cell<Option<u64>>,
    /// QoS 1/2 messages that found the lane full, in order.
    spill: spill::Spill,
    /// Wakes the bridge for the messages and acknowledgements this shard
    /// queued, once per batch.
    bell: doorbell::ShardBell,
}

impl ClusterLink {
    /// Hands a message accepted on this node to the bridge, unless its
    /// topic is local-only. A QoS 1/2 one gets a ticket
    /// ([`Self::take_ticket`]) that the bridge answers once the other
    /// nodes accepted it. A full lane drops a QoS 0 message, counted; a
    /// QoS 1/2 one waits in the shard (see `spill`). Returns whether
    /// the bridge took it: then the shared groups of the whole cluster,
    /// this node's included, are served by the bridge (see the module).
    pub fn publish(self: &Rc<Self>, message: &Arc<Message>) -> bool {
        self.last.set(None);
        let topic = &message.topic;
        if self.shared.local_only.iter().any(|filter| filter.matches(topic)) {
            return false;
        }
        let ticket = (message.qos != QoS::AtMostOnce).then(|| {
            let number = self.tickets.get() + 1;
            self.tickets.set(number);
            Ticket { shard: self.shard, number }
        });
        let outgoing = Outgoing { message: Arc::clone(message), ticket };
        // Behind spilled messages, a QoS 1/2 one waits its turn (order).
        let refused = match self.spill.is_empty() {
            true => self.shared.outbound.push_message(outgoing).err(),
            false => Some(outgoing),
        };
        self.bell.ring();
        if let Some(outgoing) = refused {
            let counters = &self.shared.counters;
            if outgoing.ticket.is_none() {
                BridgeCounters::add(&counters.outbound_dropped_qos0);
                return false;
            }
            BridgeCounters::add(&counters.outbound_spilled_qos12);
            self.spill_push(outgoing);
        }
        self.last.set(ticket.map(|ticket| ticket.number));
        true
    }

    /// The ticket of the QoS 1/2 message the last [`Self::publish`] handed
    /// the bridge, if it did: the bridge answers it with
    /// [`FromBridge::Accepted`].
    pub fn take_ticket(&self) -> Option<u64> {
        self.last.take()
    }

    /// This shard's first local subscriber to a filter arrived or its last
    /// one left: the bridge subscribes or unsubscribes, then acknowledges
    /// `delta.revision` ([`FromBridge::InterestAck`]).
    pub fn handle_interest(&self, delta: &InterestDelta) {
        self.shared.outbound.push_control(Interest {
            shard: self.shard,
            filter: delta.filter.clone(),
            added: delta.added,
            revision: delta.revision,
        });
    }

    /// QoS 1/2 messages this shard may have waiting for other nodes
    /// before it holds its publishers.
    pub fn max_pending(&self) -> usize {
        self.shared.max_pending
    }

    /// Another node's QoS 1/2 message was accepted here: the bridge
    /// acknowledges it to that node.
    pub fn accept_remote(&self, ack: RemoteAck) {
        self.shared.remote_acks.push_control_later(ack);
        self.bell.ring();
    }

    /// A shared group's QoS 1/2 copy found no member of its group here:
    /// the bridge refuses it, and its publishing node sends it elsewhere.
    pub fn refuse_remote(&self, ack: RemoteAck) {
        self.shared.remote_acks.push_control(RemoteAck { refused: true, ..ack });
    }

    /// The bridge's counters now (node-wide).
    pub fn counters(&self) -> crate::metrics::ClusterCounters {
        self.shared.counters.snapshot()
    }

    /// Starts the task that hands what the bridge sends this shard to
    /// `dispatch`, and the one that wakes the bridge for what the shard
    /// queued (see `doorbell`).
    pub fn start(self: &Rc<Self>, dispatch: impl Fn(FromBridge) + 'static) -> ClusterTask {
        let link = Rc::clone(self);
        let bell = glommio::spawn_local(async move {
            let shared = &link.shared;
            link.bell
                .run(shared.batch_delay, || {
                    shared.outbound.wake();
                    shared.remote_acks.wake();
                })
                .await
        });
        let link = Rc::clone(self);
        let task = glommio::spawn_local(async move {
            let lane = &link.shared.inbound[link.shard.index()];
            let events = &link.shared.events[link.shard.index()];
            let mut changed = None;
            // Acknowledgements first: a SUBACK waits for them.
            loop {
                let next = std::future::poll_fn(|cx| match lane.poll_control(cx) {
                    std::task::Poll::Ready(Some(ToShard::InterestAck(revision))) => {
                        std::task::Poll::Ready(Some(FromBridge::InterestAck(revision)))
                    }
                    std::task::Poll::Ready(Some(ToShard::Accepted(ticket))) => {
                        std::task::Poll::Ready(Some(FromBridge::Accepted(ticket)))
                    }
                    _ if event_ready(events, cx, &mut changed) => {
                        std::task::Poll::Ready(changed.take())
                    }
                    _ => lane.poll_message(cx).map(|delivery| {
                        delivery.map(|Delivery { message, ack, group }| match (group, ack) {
                            (Some(filter), ack) => {
                                FromBridge::GroupPublish { filter, message, ack }
                            }
                            (None, Some(ack)) => FromBridge::AckedPublish { message, ack },
                            (None, None) => FromBridge::Publish(message),
                        })
                    }),
                })
                .await;
                match next {
                    Some(event) => dispatch(event),
                    None => break,
                }
                // Let the shard's other tasks run when its time is up.
                glommio::yield_if_needed().await;
            }
        });
        ClusterTask { link: Rc::clone(self), task, bell }
    }
}

/// Whether an event of `Shared::events` is ready (then in `changed`).
fn event_ready(
    lane: &Lane<(), FromBridge>,
    cx: &mut std::task::Context<'_>,
    changed: &mut Option<FromBridge>,
) -> bool {
    match lane.poll_control(cx) {
        std::task::Poll::Ready(Some(message)) => {
            *changed = Some(message);
            true
        }
        _ => false,
    }
}

/// A shard's running task of its cluster link.
#[derive(Debug)]
pub struct ClusterTask {
    link: Rc<ClusterLink>,
    task: glommio::Task<()>,
    /// The link's doorbell task (see `doorbell`).
    bell: glommio::Task<()>,
}

impl ClusterTask {
    /// Stops taking messages from the bridge (what is queued is still
    /// handed over) and waits for the task.
    pub async fn shutdown(self) {
        self.link.shared.inbound[self.link.shard.index()].close();
        self.link.shared.events[self.link.shard.index()].close();
        self.task.await;
        // What is still queued for the bridge is taken when its lane
        // closes (`Bridge::stop`), which wakes it.
        drop(self.bell);
    }
}

#[cfg(test)]
impl RemoteAck {
    /// The acknowledgement of sequence `sequence`.
    pub(crate) fn for_tests(sequence: u64) -> Self {
        let reply = Some(async_nats::Subject::from_static("reply"));
        Self { sequence, origin: 1, reply, refused: false }
    }
}

#[cfg(test)]
impl ClusterSetup {
    /// A setup without a bridge thread: the test takes what the shards
    /// hand the bridge.
    pub(crate) fn for_tests(nr_shards: usize, local_only: &[&str]) -> Self {
        Self(Arc::new(Shared {
            outbound: Lane::new(16),
            inbound: (0..nr_shards).map(|_| Lane::new(16)).collect(),
            remote_acks: Lane::new(1),
            counters: BridgeCounters::default(),
            local_only: local_only.iter().map(|f| TopicFilter::new(*f).unwrap()).collect(),
            max_pending: 4,
            events: (0..nr_shards).map(|_| Lane::new(1)).collect(),
            sessions: Lane::new(1),
            sessions_cluster: true,
            retained_cluster: true,
            batch_delay: std::time::Duration::ZERO,
            move_window: std::time::Duration::from_secs(5),
        }))
    }

    /// The topics of the messages handed to the bridge since the last call.
    pub(crate) fn take_published(&self) -> Vec<String> {
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        std::iter::from_fn(|| match self.0.outbound.poll_message(&mut cx) {
            std::task::Poll::Ready(Some(outgoing)) => {
                Some(outgoing.message.topic.as_str().to_owned())
            }
            _ => None,
        })
        .collect()
    }

    /// The sequences of the other nodes' messages the shards accepted
    /// since the last call; those they refused with [`ack::REFUSED`] set.
    pub(crate) fn take_remote_acks(&self) -> Vec<u64> {
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        std::iter::from_fn(|| match self.0.remote_acks.poll_control(&mut cx) {
            std::task::Poll::Ready(Some(ack)) => {
                Some(ack.sequence | if ack.refused { ack::REFUSED } else { 0 })
            }
            _ => None,
        })
        .collect()
    }

    /// The interest changes handed to the bridge since the last call:
    /// (shard, filter, added, revision).
    pub(crate) fn take_interest(&self) -> Vec<(usize, String, bool, u64)> {
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        std::iter::from_fn(|| match self.0.outbound.poll_control(&mut cx) {
            std::task::Poll::Ready(Some(i)) => {
                Some((i.shard.index(), i.filter.as_str().to_owned(), i.added, i.revision))
            }
            _ => None,
        })
        .collect()
    }
}
