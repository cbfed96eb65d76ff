//! The outgoing half of a session: the queue of messages waiting to be sent,
//! the in-flight window of unacknowledged QoS 1/2 publishes, and packet
//! identifier allocation.
//!
//! Messages leave the queue in FIFO order, so the order in which they were
//! routed to this session is the order the client sees, per topic and
//! overall [MQTT-4.6.0-6]. A QoS 1/2 message at the head of the queue waits
//! while the window is full; a QoS 0 message takes no window slot
//! [MQTT-3.3.4-9].

use super::SessionLimits;
use crate::message::Message;
use crate::metrics::SessionCounters;
use crate::protocol::{
    BoxedPublishProperties, Packet, PacketId, PacketType, ProtocolVersion, PubResponse, Publish,
    QoS, ReasonCode, SubscriptionIds,
};
use hashbrown::hash_map::Entry;
use hashbrown::HashMap;
use std::collections::VecDeque;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;
use std::time::Instant;

/// A message for this client, with what its subscription decided: the QoS
/// and RETAIN flag it is sent with and the v5 subscription identifiers.
#[derive(Clone, Debug)]
pub(super) struct Queued {
    /// The shared message.
    pub(super) message: Arc<Message>,
    /// min(message QoS, subscription QoS) [MQTT-3.8.4-6].
    pub(super) qos: QoS,
    /// The RETAIN flag to send [MQTT-3.3.1-8], [MQTT-3.3.1-9].
    pub(super) retain: bool,
    /// Identifiers of the matching subscriptions [MQTT-3.3.4-3].
    pub(super) subscription_ids: SubscriptionIds,
    /// Sent from the retained store for a new subscription: counted against
    /// `max_queued_retained`, not the queue's other limits.
    pub(super) from_retained: bool,
    /// The shard's number of the message in its durable log; 0 when it is
    /// not logged (see `journal`).
    pub(super) log_id: u64,
}

impl Queued {
    /// What the message weighs against `max_queued_bytes`.
    fn size(&self) -> usize {
        self.message.topic.as_str().len() + self.message.payload.len()
    }

    fn is_expired(&self, now: Instant) -> bool {
        self.message.expires_at.is_some_and(|at| at <= now)
    }

    /// The PUBLISH packet for this message. Topic and payload are shared,
    /// not copied; on MQTT 3.1 / 3.1.1 nothing is allocated.
    fn to_publish(
        &self,
        packet_id: Option<PacketId>,
        dup: bool,
        version: ProtocolVersion,
        now: Instant,
    ) -> Publish {
        let message = &*self.message;
        let properties = if version.is_v5() {
            // Allocates nothing when the message has no properties and this
            // delivery adds none (the common case). A message with
            // properties has them copied per delivery, as the subscription
            // ids and the remaining expiry differ per subscriber.
            let mut properties = message.properties.clone();
            // Topic aliases are per connection and per direction; the
            // message never carries one [MQTT-3.3.2-7].
            debug_assert!(properties.topic_alias.is_none(), "messages never store a topic alias");
            if !self.subscription_ids.is_empty() {
                properties.make_mut().subscription_identifiers = self.subscription_ids.clone();
            }
            // The interval sent is what is left of it [MQTT-3.3.2-6],
            // rounded up so that an unexpired message never says 0.
            if let Some(at) = message.expires_at {
                let left = at.saturating_duration_since(now);
                let secs = left.as_secs() + u64::from(left.subsec_nanos() > 0);
                properties.make_mut().message_expiry_interval =
                    Some(u32::try_from(secs).unwrap_or(u32::MAX));
            }
            properties
        } else {
            BoxedPublishProperties::none()
        };
        Publish {
            dup,
            qos: self.qos,
            retain: self.retain,
            topic: message.topic.clone(),
            packet_id,
            properties,
            payload: message.payload.clone(),
        }
    }
}

/// The hash of a packet id in the in-flight table: the id itself in the
/// low bits, which pick the bucket, and its low 7 bits again in the top 7,
/// which the table keeps per bucket to tell keys apart. Ids are allocated
/// one after the other, so the messages in flight sit in consecutive
/// buckets without collisions, and the PUBACKs of a window that arrive in
/// order walk the table in memory order: with tens of thousands in flight
/// (a subscriber with a large window) a scattering hash cost a cache miss
/// per message sent and per acknowledgement. The server chooses every id
/// in the table, so a client cannot crowd one bucket; an acknowledgement
/// for any other id is one probe like any other.
#[derive(Clone, Copy, Debug, Default)]
struct PacketIdHasher(u64);

impl Hasher for PacketIdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write_u16(&mut self, id: u16) {
        let id = u64::from(id);
        self.0 = id | (id << 57);
    }

    /// Only `write_u16` is used (a `PacketId` hashes its `u16`); any other
    /// input is folded in whole, so the hasher stays correct.
    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(byte);
        }
    }
}

/// What [`Outbound::push`] did with a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Push {
    /// Queued within the limits.
    Queued,
    /// Queued past the limits (allowed for QoS 1/2 to a connected client).
    OverLimit,
    /// Not queued: a limit was reached.
    Full,
}

/// Where an unacknowledged outgoing QoS 1/2 message stands.
#[derive(Debug)]
enum Flow {
    /// QoS 1 PUBLISH sent, awaiting PUBACK [MQTT-4.3.2-1].
    Qos1Sent(Queued),
    /// QoS 2 PUBLISH sent, awaiting PUBREC [MQTT-4.3.3-1].
    Qos2Sent(Queued),
    /// PUBREL sent, awaiting PUBCOMP. The PUBLISH is never re-sent from
    /// here [MQTT-4.3.3-1], so the message itself is released.
    Released,
}

impl Flow {
    /// The acknowledgement this flow waits for.
    fn awaits(&self) -> PacketType {
        match self {
            Self::Qos1Sent(_) => PacketType::PubAck,
            Self::Qos2Sent(_) => PacketType::PubRec,
            Self::Released => PacketType::PubComp,
        }
    }
}

#[derive(Debug)]
struct Inflight {
    /// Position in the order of re-sending: when the PUBLISH was first sent,
    /// or for a PUBREL when the PUBREC arrived [MQTT-4.6.0-1], [MQTT-4.6.0-4].
    order: u64,
    flow: Flow,
}

/// What an acknowledgement (PUBACK, PUBREC or PUBCOMP) of an outgoing
/// message did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum AckOutcome {
    /// PUBACK of a QoS 1 PUBLISH [MQTT-4.3.2-1] or PUBCOMP of a PUBREL
    /// [MQTT-4.3.3-1]: the flow is complete and the id is free.
    Completed,
    /// PUBREC: send PUBREL with this packet id [MQTT-4.3.3-1].
    Release,
    /// A v5 PUBREC with a failure reason ends the flow: no PUBREL, the id is
    /// free again [MQTT-4.3.3-4].
    Refused,
    /// No message is in flight with this id: nothing to acknowledge.
    NotInFlight,
    /// The id is in flight, but its flow awaits `expected`, not this packet.
    Mismatch {
        /// The acknowledgement the flow awaits.
        expected: PacketType,
    },
}

/// The outgoing state of a session. It survives disconnections of a
/// persistent session.
#[derive(Debug)]
pub(super) struct Outbound {
    /// Messages not sent yet, oldest first.
    queue: VecDeque<Queued>,
    /// Sum of [`Queued::size`] over the entries of `queue` that are not
    /// `from_retained`.
    queued_bytes: usize,
    /// Entries of `queue` that are `from_retained`.
    queued_retained: usize,
    /// Unacknowledged QoS 1/2 messages by packet id, in a table whose
    /// buckets follow the ids (see [`PacketIdHasher`]).
    inflight: HashMap<PacketId, Inflight, BuildHasherDefault<PacketIdHasher>>,
    /// Where the search for a free packet id starts.
    next_packet_id: PacketId,
    /// The next [`Inflight::order`].
    next_order: u64,
    /// In-flight packet ids still to re-send on this connection, in order;
    /// boxed, and only while there are some (after a resumed CONNECT), as
    /// it is in every session.
    #[allow(clippy::box_collection)] // 8 bytes instead of 32 in every session.
    resend: Option<Box<VecDeque<PacketId>>>,
}

impl Outbound {
    pub(super) fn new() -> Self {
        Self {
            queue: VecDeque::new(),
            queued_bytes: 0,
            queued_retained: 0,
            inflight: HashMap::default(),
            next_packet_id: PacketId::new(1).expect("1 is not zero"),
            next_order: 0,
            resend: None,
        }
    }

    pub(super) fn queued_len(&self) -> usize {
        self.queue.len()
    }

    pub(super) fn queued_bytes(&self) -> usize {
        self.queued_bytes
    }

    pub(super) fn inflight_len(&self) -> usize {
        self.inflight.len()
    }

    /// Appends a message to the queue unless that would exceed a limit: the
    /// new message is the one dropped, never an older one (see
    /// [`SessionLimits`]). With `overflow` (a QoS 1/2 message for a
    /// connected client) a message past the limits is queued all the same
    /// and [`Push::OverLimit`] tells the shard to slow its publishers: an
    /// acknowledged message is never dropped for an online subscriber.
    ///
    /// Retained messages sent for a new subscription [MQTT-3.3.1-6] count
    /// against `max_queued_retained` only: a subscriber that reads gets
    /// every one of them, paced by its window and its socket, however many
    /// there are beside its other messages.
    pub(super) fn push(&mut self, queued: Queued, limits: &SessionLimits, overflow: bool) -> Push {
        if queued.from_retained {
            if self.queued_retained >= limits.max_queued_retained {
                return Push::Full;
            }
            self.queued_retained += 1;
            self.queue.push_back(queued);
            return Push::Queued;
        }
        let size = queued.size();
        let others = self.queue.len() - self.queued_retained;
        let full = others > 0
            && (others >= limits.max_queued_messages
                || self.queued_bytes + size > limits.max_queued_bytes);
        if full && !overflow {
            return Push::Full;
        }
        self.queued_bytes += size;
        self.queue.push_back(queued);
        if full {
            Push::OverLimit
        } else {
            Push::Queued
        }
    }

    /// Whether the queue (retained messages for new subscriptions left
    /// out) holds no more than half of `max_queued_messages` and of
    /// `max_queued_bytes`: where a subscriber that went past its limits
    /// stops slowing its publishers (the gap keeps them from being held
    /// and released at every message).
    pub(super) fn is_drained(&self, limits: &SessionLimits) -> bool {
        let others = self.queue.len() - self.queued_retained;
        others <= limits.max_queued_messages / 2 && self.queued_bytes <= limits.max_queued_bytes / 2
    }

    /// Cuts the queue back to its limits, dropping the newest messages
    /// past them (retained messages for new subscriptions, which have
    /// their own limit, stay); returns how many were dropped, by QoS, and
    /// calls `dropped_one` with each, oldest first. What is left is what
    /// [`Self::push`] would have admitted, oldest first, so the client
    /// still receives a prefix of what was routed to it.
    pub(super) fn trim_to_limits(
        &mut self,
        limits: &SessionLimits,
        mut dropped_one: impl FnMut(&Queued),
    ) -> [u64; 3] {
        let mut dropped = [0; 3];
        let others = self.queue.len() - self.queued_retained;
        if others <= limits.max_queued_messages && self.queued_bytes <= limits.max_queued_bytes {
            return dropped;
        }
        // Keep the oldest non-retained entries while they fit (the first
        // always does, as in `push`).
        let (mut kept, mut bytes, mut cut) = (0, 0, false);
        self.queue.retain(|queued| {
            if queued.from_retained {
                return true;
            }
            let size = queued.size();
            // Once one is dropped every later one is too: a prefix stays.
            cut = cut
                || (kept > 0
                    && (kept >= limits.max_queued_messages
                        || bytes + size > limits.max_queued_bytes));
            if cut {
                dropped[queued.qos as usize] += 1;
                dropped_one(queued);
                return false;
            }
            kept += 1;
            bytes += size;
            true
        });
        self.queued_bytes = bytes;
        dropped
    }

    /// Takes the oldest message off the queue, and off its limits.
    fn pop(&mut self) -> Option<Queued> {
        let queued = self.queue.pop_front()?;
        if queued.from_retained {
            self.queued_retained -= 1;
        } else {
            self.queued_bytes -= queued.size();
        }
        Some(queued)
    }

    /// Removes the queued QoS 0 messages (an offline session keeps QoS 1/2
    /// only); returns how many were removed.
    pub(super) fn drop_qos0(&mut self) -> u64 {
        let before = self.queue.len();
        let (mut bytes, mut retained) = (0, 0);
        self.queue.retain(|queued| {
            let keep = queued.qos != QoS::AtMostOnce;
            match keep {
                true if queued.from_retained => retained += 1,
                true => bytes += queued.size(),
                false => {}
            }
            keep
        });
        self.queued_bytes = bytes;
        self.queued_retained = retained;
        (before - self.queue.len()) as u64
    }

    /// On a resumed session, schedules every unacknowledged PUBLISH and
    /// PUBREL to be re-sent, in their original order [MQTT-4.4.0-1],
    /// [MQTT-4.6.0-1].
    pub(super) fn start_resend(&mut self) {
        let mut pending: Vec<(u64, PacketId)> =
            self.inflight.iter().map(|(&id, inflight)| (inflight.order, id)).collect();
        pending.sort_unstable();
        self.resend = (!pending.is_empty())
            .then(|| Box::new(pending.into_iter().map(|(_, id)| id).collect()));
    }

    /// Forgets what was left to re-send (the connection is gone).
    pub(super) fn clear_resend(&mut self) {
        self.resend = None;
    }

    /// The next re-sent packet: a PUBLISH with DUP=1 [MQTT-3.3.1-1] or a
    /// PUBREL, with its original packet id [MQTT-2.3.1-3].
    pub(super) fn poll_resend(&mut self, version: ProtocolVersion, now: Instant) -> Option<Packet> {
        while let Some(id) = self.resend.as_mut().and_then(|ids| ids.pop_front()) {
            // Acknowledged since it was scheduled: nothing to re-send.
            let Some(inflight) = self.inflight.get(&id) else { continue };
            return Some(match &inflight.flow {
                Flow::Qos1Sent(queued) | Flow::Qos2Sent(queued) => {
                    Packet::Publish(queued.to_publish(Some(id), true, version, now))
                }
                Flow::Released => Packet::PubRel(PubResponse::new(id)),
            });
        }
        self.resend = None;
        None
    }

    /// Takes the next message off the queue if it may be sent now: a QoS 0
    /// message always, a QoS 1/2 message while fewer than `window` are in
    /// flight. Expired messages are dropped on the way [MQTT-3.3.2-5], each
    /// handed to `expired` (to log its removal). Returned with the
    /// message's number in the durable log (0: not logged), which the
    /// in-flight entry keeps.
    ///
    /// A QoS 1/2 message costs one lookup in the in-flight table: its
    /// packet id is found free and the entry filled in the same probe.
    pub(super) fn poll_new(
        &mut self,
        window: u16,
        version: ProtocolVersion,
        now: Instant,
        counters: &mut SessionCounters,
        mut expired: impl FnMut(&Queued),
    ) -> Option<(Publish, u64)> {
        loop {
            let head = self.queue.front()?;
            let is_expired = head.is_expired(now);
            if !is_expired
                && head.qos != QoS::AtMostOnce
                && self.inflight.len() >= usize::from(window)
            {
                return None;
            }
            let queued = self.pop()?;
            if is_expired {
                counters.dropped_expired += 1;
                expired(&queued);
                continue;
            }
            if queued.qos == QoS::AtMostOnce {
                return Some((queued.to_publish(None, false, version, now), 0));
            }
            // A non-zero packet id not used by any unacknowledged outgoing
            // PUBLISH or PUBREL (3.1.1 [MQTT-2.3.1-2], 5.0 [MQTT-2.2.1-3]).
            // Fewer than 65,535 ids are in flight here (the window is a
            // `u16`), so a free one exists.
            let (id, slot) = loop {
                let id = self.next_packet_id;
                self.next_packet_id = id.next();
                if let Entry::Vacant(slot) = self.inflight.entry(id) {
                    break (id, slot);
                }
            };
            // DUP=0 on the first send [MQTT-4.3.2-1], [MQTT-4.3.3-1].
            let publish = queued.to_publish(Some(id), false, version, now);
            let log_id = queued.log_id;
            // The entry keeps the queued message itself (its topic and
            // payload shared with the PUBLISH just built, not copied) for a
            // re-send [MQTT-4.4.0-1].
            let flow = match queued.qos {
                QoS::AtLeastOnce => Flow::Qos1Sent(queued),
                _ => Flow::Qos2Sent(queued),
            };
            let order = self.next_order;
            self.next_order += 1;
            slot.insert(Inflight { order, flow });
            return Some((publish, log_id));
        }
    }

    fn take_order(&mut self) -> u64 {
        let order = self.next_order;
        self.next_order += 1;
        order
    }

    /// An acknowledgement `packet` (PUBACK, PUBREC or PUBCOMP) for `id`,
    /// with its v5 `reason`, checked against the flow of `id`.
    ///
    /// A QoS 1 PUBLISH is acknowledged by PUBACK only [MQTT-4.3.2-1]; a
    /// QoS 2 PUBLISH by PUBREC, and the PUBREL that follows by PUBCOMP
    /// [MQTT-4.3.3-1]. Anything else for an id in flight is a
    /// [`AckOutcome::Mismatch`] and changes nothing. A repeated PUBREC gets
    /// its PUBREL again.
    pub(super) fn handle_ack(
        &mut self,
        packet: PacketType,
        id: PacketId,
        reason: ReasonCode,
    ) -> AckOutcome {
        // One lookup: the entry found is the one removed or replaced.
        let Entry::Occupied(mut entry) = self.inflight.entry(id) else {
            return AckOutcome::NotInFlight;
        };
        match (packet, &entry.get().flow) {
            (PacketType::PubAck, Flow::Qos1Sent(_)) | (PacketType::PubComp, Flow::Released) => {
                entry.remove();
                AckOutcome::Completed
            }
            (PacketType::PubRec, Flow::Qos2Sent(_)) if reason.as_u8() >= 0x80 => {
                entry.remove();
                AckOutcome::Refused
            }
            (PacketType::PubRec, Flow::Qos2Sent(_)) => {
                // The PUBREL takes its place in the order of re-sending when
                // the PUBREC arrives [MQTT-4.6.0-4].
                let order = self.next_order;
                self.next_order += 1;
                entry.insert(Inflight { order, flow: Flow::Released });
                AckOutcome::Release
            }
            (PacketType::PubRec, Flow::Released) => AckOutcome::Release,
            (_, flow) => AckOutcome::Mismatch { expected: flow.awaits() },
        }
    }

    /// Whether a PUBREL for `id` is unacknowledged.
    pub(super) fn is_awaiting_pubcomp(&self, id: PacketId) -> bool {
        self.inflight.get(&id).is_some_and(|inflight| matches!(inflight.flow, Flow::Released))
    }

    /// Behaves as if the flow of `id` had completed: its packet could not be
    /// sent [MQTT-3.1.2-25].
    pub(super) fn abandon(&mut self, id: PacketId) {
        self.inflight.remove(&id);
    }
}

/// For the durable log (see `journal`): what a snapshot keeps, and the
/// state rebuilt from it. Nothing here changes how the queue works.
impl Outbound {
    /// The logged queued messages, oldest first, and every in-flight flow
    /// in the order of re-sending (`None`: a PUBREL awaiting PUBCOMP); a
    /// flow whose message is not logged is left out.
    pub(super) fn logged(
        &self,
    ) -> (impl Iterator<Item = &Queued>, Vec<(PacketId, Option<&Queued>)>) {
        self.entries(true)
    }

    /// The queue and the in-flight flows as [`Self::logged`] gives them,
    /// of every message (`logged_only`: of logged ones only).
    pub(super) fn entries(
        &self,
        logged_only: bool,
    ) -> (impl Iterator<Item = &Queued>, Vec<(PacketId, Option<&Queued>)>) {
        let queue = self.queue.iter().filter(move |q| !logged_only || q.log_id != 0);
        let mut inflight: Vec<(u64, PacketId, Option<&Queued>)> = self
            .inflight
            .iter()
            .filter_map(|(&id, inflight)| match &inflight.flow {
                Flow::Qos1Sent(q) | Flow::Qos2Sent(q) if !logged_only || q.log_id != 0 => {
                    Some((inflight.order, id, Some(q)))
                }
                Flow::Qos1Sent(_) | Flow::Qos2Sent(_) => None,
                Flow::Released => Some((inflight.order, id, None)),
            })
            .collect();
        inflight.sort_unstable_by_key(|(order, ..)| *order);
        (queue, inflight.into_iter().map(|(_, id, q)| (id, q)).collect())
    }

    /// Loads a session's queue and in-flight flows from the log (an empty
    /// outbound only): `inflight` in the order of re-sending.
    pub(super) fn restore(
        &mut self,
        queue: impl Iterator<Item = Queued>,
        inflight: Vec<(PacketId, Option<Queued>)>,
    ) {
        // Kept whole even over limits lowered since, as a reload keeps what
        // is queued.
        for queued in queue {
            if queued.from_retained {
                self.queued_retained += 1;
            } else {
                self.queued_bytes += queued.size();
            }
            self.queue.push_back(queued);
        }
        for (id, queued) in inflight {
            let flow = match queued {
                Some(q) if q.qos == QoS::AtLeastOnce => Flow::Qos1Sent(q),
                Some(q) => Flow::Qos2Sent(q),
                None => Flow::Released,
            };
            let order = self.take_order();
            self.inflight.insert(id, Inflight { order, flow });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::BuildHasher;

    /// Consecutive packet ids land in consecutive buckets (low bits: the
    /// id) with distinct tags (top 7 bits: the id's low 7 bits), so the
    /// messages of a window never collide.
    #[test]
    fn consecutive_packet_ids_take_consecutive_buckets_with_distinct_tags() {
        let build = BuildHasherDefault::<PacketIdHasher>::default();
        let hashes: Vec<u64> =
            (1..=300u16).map(|id| build.hash_one(PacketId::new(id).unwrap())).collect();
        for (id, hash) in (1..=300u64).zip(&hashes) {
            assert_eq!(hash & 0xffff, id, "the bucket follows the id");
            assert_eq!(hash >> 57, id & 0x7f, "the tag is the id's low 7 bits");
        }
        let tags: std::collections::HashSet<u64> = hashes[..128].iter().map(|h| h >> 57).collect();
        assert_eq!(tags.len(), 128);
    }
}
