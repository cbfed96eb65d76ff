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
//! * **In order.** A message sent on by the old node takes one more hop
//!   than one that reaches the new node straight, and could arrive after
//!   a later message of the same publisher [MQTT-4.6.0-6]. So while the
//!   old node forwards (until it says its forwarder went, or
//!   `node_timeout_ms` + [`HOLD_MARGIN`] after the arrival), the new node
//!   holds back a message that reaches the session straight and matches
//!   one of the subscriptions it arrived with: the old node has those
//!   subscriptions too, so it gets the same message and sends it on, in
//!   its order. The copy sent on is delivered, the one held back dropped
//!   as its second copy. What is still held when the forwarder goes (the
//!   old node never got it: published after it unsubscribed, or a QoS 0
//!   message NATS did not give it) is delivered then, in the order it
//!   came; so is what is held at the deadline, when the old node's word
//!   has not come (counted per session in `cluster_session_hold_expired`:
//!   what the old node sends on after it may come after later messages).
//!   A held message is never dropped unless its other copy was
//!   delivered: a lost forward delays delivery, it does not lose it. A
//!   session that moves on takes what it holds in its queue. Not with
//!   `durability = "always"`, where a message is acknowledged only once
//!   it is in a queue on disk (acknowledged before ordered).
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

/// How long past the forwarding time a session that arrived holds back
/// what reaches it straight when its old node never says its forwarder
/// went (the old node died, or the message saying so was lost).
pub(super) const HOLD_MARGIN: Duration = Duration::from_secs(1);

/// Messages a session that arrived holds back at most; past it it stops
/// holding (and delivers what it held): order around the move may then
/// not be kept.
const MAX_HELD: usize = 4096;

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
    /// How the delivery in progress came (see [`Path`]).
    path: Path,
}

/// How a delivery to a session that arrived came.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Path {
    /// Straight: matched here (a publish of this node, or from NATS).
    #[default]
    Straight,
    /// Sent on by the node the session left.
    Forwarded,
    /// Held back, now let go.
    Released,
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
    /// The node it came from, whose forwarder sends on what matches
    /// [`Self::forwarded_filters`] there.
    from: ByteString,
    /// Its subscriptions when it arrived (not shared ones: a shared group
    /// gives a message to one node), which the old node's forwarder has.
    forwarded_filters: Vec<crate::protocol::TopicFilter>,
    /// Until when it holds back what reaches it straight (see the
    /// module's "In order"); `None`: it does not.
    hold_until: Option<Instant>,
    /// What it holds back, in the order it came.
    held: std::collections::VecDeque<Arc<Message>>,
}

impl Arrived {
    /// Whether a copy of `message` that came straight is held back.
    fn holds(&self, message: &Message) -> bool {
        self.hold_until.is_some()
            && message.id != 0
            && self.forwarded_filters.iter().any(|filter| filter.matches(&message.topic))
    }

    /// Forgets the held copy of the message `id`, delivered as sent on;
    /// whether there was one.
    fn drop_held(&mut self, id: u64) -> bool {
        let at = self.held.iter().position(|held| held.id == id);
        at.and_then(|at| self.held.remove(at)).is_some()
    }
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

    /// The session of `key` is gone; the forwarder it was, if any.
    pub(super) fn forget(&mut self, key: SessionKey) -> Option<(ByteString, ByteString)> {
        self.arrived.remove(&key);
        self.forwarders.remove(&key).map(|forwarder| (forwarder.node, forwarder.client_id))
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

    /// The session of `key` arrived from node `from` with these messages
    /// (queued or in flight): from now on it recognises their other copies
    /// and those of what it is given, and holds back what reaches it
    /// straight while `from` forwards (see the module).
    pub(super) fn arrived(
        &mut self,
        key: SessionKey,
        ids: impl Iterator<Item = u64>,
        from: &ByteString,
        now: Instant,
    ) {
        let Some(window) = self.cluster.as_ref().map(|link| link.move_window()) else { return };
        let ids = ids.filter(|&id| id != 0).take(MAX_IDS).collect();
        let until = now + window + ARRIVED_WINDOW;
        let forwarded_filters: Vec<_> = self
            .slot(key)
            .session
            .subscriptions()
            .map(|(filter, _)| filter)
            .filter(|filter| !filter.is_shared())
            .cloned()
            .collect();
        // With `durability = "always"` a message is acknowledged once it
        // is in a session's queue on disk: one held back is in neither,
        // so nothing is (acknowledged before order).
        let holds = !from.is_empty() && !forwarded_filters.is_empty() && !self.durable_acks();
        let arrived = Arrived {
            ids,
            until,
            full: false,
            from: from.clone(),
            forwarded_filters,
            hold_until: holds.then(|| now + window + HOLD_MARGIN),
            held: Default::default(),
        };
        self.moves.arrived.insert(key, arrived);
    }

    /// A delivery to `key` while sessions move: `true` when it is done
    /// here, sent on (a forwarder) or dropped (a second copy for a session
    /// that arrived).
    pub(super) fn moved_delivery(
        &mut self,
        key: SessionKey,
        message: &Arc<Message>,
        now: Instant,
    ) -> bool {
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
        if self.moves.path == Path::Straight && arrived.holds(message) {
            if arrived.ids.contains(&message.id) {
                // Its copy sent on came first.
                if let Some(link) = &self.cluster {
                    link.count_move_duplicate();
                }
                return true;
            }
            arrived.held.push_back(Arc::clone(message));
            if arrived.held.len() >= MAX_HELD {
                tracing::warn!(
                    client_id = self.client_id(key).map_or("", |id| &**id),
                    held = MAX_HELD,
                    "a session that moved here was given more messages than it holds back for \
                     their order: delivered now, a later one sent on by its old node may come \
                     after them"
                );
                self.stop_holding(key, now);
            }
            return true;
        }
        if self.moves.path == Path::Forwarded && arrived.drop_held(message.id) {
            if let Some(link) = &self.cluster {
                link.count_move_duplicate();
            }
        }
        if arrived.ids.len() >= MAX_IDS {
            if !std::mem::replace(&mut arrived.full, true) {
                tracing::warn!(
                    client_id = self.client_id(key).map_or("", |id| &**id),
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

    /// Stops keeping ids for the sessions whose window passed, and stops
    /// holding back for those whose old node never said its forwarder
    /// went.
    pub(super) fn expire_arrivals(&mut self, now: Instant) {
        if self.moves.arrived.is_empty() {
            return;
        }
        // One pass: a session still holding past its deadline is kept
        // until it let go of what it held.
        let mut due = Vec::new();
        self.moves.arrived.retain(|&key, arrived| {
            if arrived.hold_until.is_some_and(|until| until <= now) {
                due.push(key);
                return true;
            }
            arrived.until > now
        });
        if let (Some(link), false) = (&self.cluster, due.is_empty()) {
            link.count_hold_expired(due.len());
        }
        for key in due {
            self.stop_holding(key, now);
        }
    }

    /// The session of `key` stops holding back what reaches it straight:
    /// what it held goes to it now, in order, but for the copies already
    /// delivered as sent on.
    pub(super) fn stop_holding(&mut self, key: SessionKey, now: Instant) {
        let Some(arrived) = self.moves.arrived.get_mut(&key) else { return };
        if arrived.hold_until.take().is_none() {
            return;
        }
        let held = std::mem::take(&mut arrived.held);
        tracing::debug!(
            client_id = &**self.slot(key).session.client_id(),
            held = held.len(),
            "a session that moved here stops holding back what comes straight"
        );
        self.moves.path = Path::Released;
        for message in &held {
            self.deliver_matching(key, message, now);
        }
        self.moves.path = Path::Straight;
    }

    /// Messages another node sends on for a session that moved here (see
    /// the module); answered once they are queued.
    pub(super) fn handle_forwarded(&mut self, mut forwarded: Forwarded, now: Instant) {
        let messages = std::mem::take(&mut forwarded.messages);
        let client_id = forwarded.client_id.clone();
        if let Some(node) = forwarded.closed_by.take() {
            return self.forwarder_closed(&client_id, &node, now);
        }
        if let Some(link) = &self.cluster {
            link.answer_forwarded(forwarded);
        }
        if let Some(claiming) = self.cluster_claims.get_mut(&client_id) {
            claiming.forwarded.extend(messages);
            return;
        }
        self.deliver_forwarded(&client_id, &messages, now);
    }

    /// `node`'s forwarder for `client_id` went: the session, if it came
    /// from there, gets what it held back (see the module's "In order").
    fn forwarder_closed(&mut self, client_id: &ByteString, node: &ByteString, now: Instant) {
        let Some(key) = self.slots.find(client_id) else { return };
        if self.moves.arrived.get(&key).is_some_and(|arrived| arrived.from == *node) {
            self.stop_holding(key, now);
        }
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
            self.moves.path = Path::Forwarded;
            for message in messages {
                self.deliver_matching(key, message, now);
            }
            self.moves.path = Path::Straight;
        } else if let Some(key) = self.slots.find(&forwarder_name(client_id)) {
            for message in messages {
                self.moved_delivery(key, message, now);
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
