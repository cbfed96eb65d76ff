//! A persistent session moving between the nodes of a cluster, the
//! shard's side (issue 17 item 6: "no message lost or duplicated beyond
//! what its QoS allows"; the transport is `router::cluster::moves`).
//!
//! * **The old node keeps forwarding.** When this shard hands a session
//!   over to another node (`give_up_session`), it leaves a *forwarder* in
//!   its place for `cluster.node_timeout_ms`: a slot with the session's
//!   subscriptions and nothing else, under a name no client can have (a
//!   client id never holds U+0000 [MQTT-1.5.4-2]). The subscriptions stay
//!   in the index, so the node's interest (on NATS, in the other nodes'
//!   directories, in the peer shards' replicas) does not change at the
//!   move; whatever matches them from then on (a message already on its
//!   way here, one published by a node that has not heard of the new
//!   node's interest yet, one of this node's own clients) is sent on to
//!   the new node instead of being queued. A message from another node is
//!   acknowledged to it once handed to the bridge for sending on.
//! * **The new node recognises copies.** A message can then reach the
//!   session twice: handed over in its queue and sent straight to the new
//!   node, or straight and forwarded. Each copy of a message carries the
//!   same id (`Message::id`, stamped by the shard that accepted the
//!   PUBLISH, see [`Shard::stamp`]), and for a while after it arrived
//!   ([`ARRIVED_WINDOW`] beyond the forwarding time) the session keeps the
//!   ids of what it was given: a second copy is dropped, counted in
//!   `cluster_session_move_duplicates` (QoS 2 exactly once, QoS 0 at most
//!   once [MQTT-4.3.1], [MQTT-4.3.3]).
//! * **Forwarded messages** go to the session like any message, with the
//!   options of its own subscriptions that match the topic (the new node
//!   applies its maximum QoS, No Local, Subscription Identifiers); while
//!   the session is still being claimed here they wait for the claim's
//!   end. A session that moved on again forwards them further; a session
//!   that no longer exists (it ended with a Clean Start) is sent nothing.

use super::{LocalSubscription, Shard};
use crate::message::Message;
use crate::protocol::SubscriptionOptions;
use crate::router::cluster::Forwarded;
use crate::session::Session;
use crate::shard::slots::{SessionKey, Slot};
use crate::store::StoredSession;
use bytestring::ByteString;
use hashbrown::{HashMap, HashSet};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long past the forwarding time (`cluster.node_timeout_ms`) a
/// session that arrived keeps the ids of what it was given: the old node's
/// last forwards may be sent three times, 2 s apart
/// (`router::cluster::moves`).
pub(super) const ARRIVED_WINDOW: Duration = Duration::from_secs(10);

/// The ids a session that arrived keeps at most; past it a copy may be
/// delivered twice (logged once per session: a session given this many
/// messages in its first seconds here is far beyond what a device sends).
const MAX_IDS: usize = 1 << 16;

/// What the shard keeps for sessions that move.
#[derive(Debug, Default)]
pub(super) struct SessionMoves {
    /// The forwarders of sessions that moved away, by key.
    forwarders: HashMap<SessionKey, Forwarder>,
    /// Sessions that arrived from another node, by key.
    arrived: HashMap<SessionKey, Arrived>,
    /// The last message id given; starts at a random value per shard.
    last_id: u64,
}

/// A session that moved to another node.
#[derive(Debug)]
struct Forwarder {
    /// Its client id.
    client_id: ByteString,
    /// The node it moved to.
    node: ByteString,
}

/// A session that arrived from another node.
#[derive(Debug)]
struct Arrived {
    /// The ids of the messages it was given (or handed over with).
    ids: HashSet<u64>,
    /// When it stops keeping them.
    until: Instant,
    /// Whether it was logged that [`MAX_IDS`] were reached.
    full: bool,
}

impl SessionMoves {
    /// With ids from a random start (two shards of the cluster then give
    /// the same id only by a 64-bit coincidence).
    pub(super) fn new() -> Self {
        let mut seed = [0; 8];
        // Without randomness (never on Linux) ids only collide more often:
        // the shard's own count still tells its messages apart.
        let _ = getrandom::getrandom(&mut seed);
        Self { last_id: u64::from_le_bytes(seed), ..Self::default() }
    }

    /// Nothing is moving: the only check on the delivery path.
    pub(super) fn is_quiet(&self) -> bool {
        self.forwarders.is_empty() && self.arrived.is_empty()
    }

    /// Whether `key` is a forwarder.
    pub(super) fn is_forwarder(&self, key: SessionKey) -> bool {
        self.forwarders.contains_key(&key)
    }

    /// Forwarders on this shard.
    pub(super) fn forwarders(&self) -> usize {
        self.forwarders.len()
    }

    /// The session of `key` is gone.
    pub(super) fn forget(&mut self, key: SessionKey) {
        self.forwarders.remove(&key);
        self.arrived.remove(&key);
    }
}

/// The slot name of the forwarder of `client_id`.
fn forwarder_name(client_id: &str) -> ByteString {
    format!("\u{0}moved\u{0}{client_id}").into()
}

impl Shard {
    /// Gives an accepted message its id, in a cluster (see the module):
    /// `message` is the one the session just built (no other reference).
    pub(super) fn stamp(&mut self, message: &mut Arc<Message>) {
        if self.cluster.is_none() {
            return;
        }
        if let Some(message) = Arc::get_mut(message) {
            let moves = &mut self.moves;
            moves.last_id = moves.last_id.wrapping_add(1).max(1);
            message.id = moves.last_id;
        }
    }

    /// The session `key` (of `client_id`) is being handed over to `node`
    /// (`stored`, as `give_up_session` encoded it): leaves its forwarder,
    /// which holds its subscriptions in the index for
    /// `cluster.node_timeout_ms`. Called before the session is removed, so
    /// that no filter's interest drops to zero in between.
    pub(super) fn leave_forwarder(
        &mut self,
        client_id: &ByteString,
        node: &ByteString,
        stored: &StoredSession,
        now: Instant,
    ) {
        let Some(window) = self.cluster.as_ref().map(|link| link.move_window()) else { return };
        if stored.subscriptions.is_empty() {
            return;
        }
        // A forwarder left by an earlier move of the same client goes.
        if let Some(old) = self.slots.find(&forwarder_name(client_id)) {
            self.remove_session(old);
        }
        let mut shell = StoredSession::new(forwarder_name(client_id), Some(window));
        shell.subscriptions = stored.subscriptions.clone();
        let session = Session::restore(shell, &HashMap::new(), Rc::clone(&self.limits), now);
        let mut slot = Slot::new(session);
        slot.expires_at = Some(now + window);
        let key = self.slots.insert(slot);
        // The session's own subscriptions still count: nothing announced.
        self.index_session(key);
        let forwarder = Forwarder { client_id: client_id.clone(), node: node.clone() };
        self.moves.forwarders.insert(key, forwarder);
        self.schedule(key);
    }

    /// The session of `key` arrived from another node with these messages
    /// (queued or in flight): from now on it recognises their other copies
    /// and those of what it is given (see the module).
    pub(super) fn arrived(
        &mut self,
        key: SessionKey,
        ids: impl Iterator<Item = u64>,
        now: Instant,
    ) {
        let Some(window) = self.cluster.as_ref().map(|link| link.move_window()) else { return };
        let ids = ids.filter(|&id| id != 0).take(MAX_IDS).collect();
        let until = now + window + ARRIVED_WINDOW;
        self.moves.arrived.insert(key, Arrived { ids, until, full: false });
    }

    /// A delivery to `key` while sessions move: `true` when it is done
    /// here, sent on (a forwarder) or dropped (a second copy for a session
    /// that arrived).
    pub(super) fn moved_delivery(&mut self, key: SessionKey, message: &Arc<Message>) -> bool {
        if let Some(forwarder) = self.moves.forwarders.get(&key) {
            if let Some(link) = &self.cluster {
                link.forward(&forwarder.node, &forwarder.client_id, message);
            }
            return true;
        }
        let Some(arrived) = self.moves.arrived.get_mut(&key) else { return false };
        if message.id == 0 {
            return false;
        }
        if arrived.ids.len() >= MAX_IDS {
            if !std::mem::replace(&mut arrived.full, true) {
                let client_id = self.slots.get(key).map(|slot| slot.session.client_id().clone());
                tracing::warn!(
                    client_id = client_id.as_deref().unwrap_or(""),
                    ids = MAX_IDS,
                    "a session that moved here was given more messages than its duplicate check \
                     keeps: a second copy sent on by its old node may now reach it"
                );
            }
            return false;
        }
        if arrived.ids.insert(message.id) {
            return false;
        }
        if let Some(link) = &self.cluster {
            link.count_move_duplicate();
        }
        true
    }

    /// The ids of the messages the session of `key` was given since it
    /// arrived from another node, while it still keeps them: they go with
    /// it when it moves on (a copy forwarded after it moved must not reach
    /// it twice at its next node either).
    pub(super) fn seen_since_arrival(&self, key: SessionKey) -> Vec<u64> {
        let arrived = self.moves.arrived.get(&key);
        arrived.map(|arrived| arrived.ids.iter().copied().collect()).unwrap_or_default()
    }

    /// Stops keeping ids for the sessions whose window passed.
    pub(super) fn expire_arrivals(&mut self, now: Instant) {
        if !self.moves.arrived.is_empty() {
            self.moves.arrived.retain(|_, arrived| arrived.until > now);
        }
    }

    /// Messages another node sends on for a session that moved here (see
    /// the module); answered once they are queued.
    pub(super) fn handle_forwarded(&mut self, mut forwarded: Forwarded, now: Instant) {
        let messages = std::mem::take(&mut forwarded.messages);
        let client_id = forwarded.client_id.clone();
        if let Some(link) = &self.cluster {
            link.answer_forwarded(forwarded);
        }
        if let Some(claiming) = self.cluster_claims.get_mut(&client_id) {
            claiming.forwarded.extend(messages);
            return;
        }
        self.deliver_forwarded(&client_id, &messages, now);
    }

    /// Delivers `messages` forwarded for `client_id` to its session here,
    /// or sends them on after it when it moved on again.
    pub(super) fn deliver_forwarded(
        &mut self,
        client_id: &ByteString,
        messages: &[Arc<Message>],
        now: Instant,
    ) {
        if let Some(key) = self.slots.find(client_id) {
            for message in messages {
                self.deliver_matching(key, message, now);
            }
        } else if let Some(key) = self.slots.find(&forwarder_name(client_id)) {
            for message in messages {
                self.moved_delivery(key, message);
            }
        } else {
            tracing::debug!(
                client_id = &**client_id,
                messages = messages.len(),
                "messages sent on for a session that no longer exists here"
            );
        }
    }

    /// Delivers `message` to the session of `key` as its subscriptions
    /// matching the topic would (maximum QoS, Retain As Published,
    /// Subscription Identifiers merged as in `deliver_local`; No Local
    /// [MQTT-3.8.3-3]).
    fn deliver_matching(&mut self, key: SessionKey, message: &Arc<Message>, now: Instant) {
        let session = &self.slot(key).session;
        let own = message.publisher.as_ref() == Some(session.client_id());
        let mut merged: Option<SubscriptionOptions> = None;
        let mut ids = crate::protocol::SubscriptionIds::new();
        for (filter, subscribed) in session.subscriptions() {
            if !filter.matches(&message.topic) || (subscribed.options.no_local && own) {
                continue;
            }
            super::merge_subscription(&mut merged, &mut ids, LocalSubscription::from(subscribed));
        }
        if let Some(options) = merged {
            self.deliver(key, message, options, ids, false, None, now);
        }
    }

    /// The claim of `client_id` here ended with its session here: the
    /// messages forwarded meanwhile are delivered, and the forwarder an
    /// earlier move away left for it is not needed any more.
    pub(super) fn settle_move(
        &mut self,
        client_id: &ByteString,
        forwarded: Vec<Arc<Message>>,
        now: Instant,
    ) {
        if !forwarded.is_empty() {
            self.deliver_forwarded(client_id, &forwarded, now);
        }
        if self.moves.forwarders.is_empty() || self.slots.find(client_id).is_none() {
            return;
        }
        if let Some(key) = self.slots.find(&forwarder_name(client_id)) {
            self.remove_session(key);
        }
    }
}
