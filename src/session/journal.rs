//! What a persistent session tells its shard to log, and how it is saved
//! and rebuilt from the durable log (`store::sessions`), sans-IO.
//!
//! The session only notes changes ([`SessionChange`]) at the points where
//! its persistent state changes; the shard takes them after every call
//! ([`Session::take_changes`]), numbers them and appends the records. A
//! session notes nothing unless its shard has a log
//! ([`Session::enable_journal`]) and it is not clean: a clean session
//! (3.1.1 Clean Session 1, 5.0 Session Expiry Interval 0) ends with its
//! connection [MQTT-3.1.2-6], [MQTT-3.1.2-23], and QoS 0 messages are
//! never logged.

use super::outbound::Queued;
use super::{DelayedWill, Session, SessionLimits, Subscribed};
use crate::message::Message;
use crate::protocol::{
    BoxedPublishProperties, PacketId, PublishProperties, QoS, SubscriptionIds, TopicFilter, Will,
    WillProperties,
};
use crate::store::{StoredEntry, StoredFlow, StoredSession, StoredSubscription, StoredWill};
use bytestring::ByteString;
use hashbrown::HashMap;
use smallvec::SmallVec;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A change to a persistent session's state, to log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SessionChange {
    /// Its expiry or will changed (at CONNECT, when a connection closes,
    /// when a delayed will is published).
    State {
        /// See [`Session::expiry`].
        expiry: Option<Duration>,
        /// The user name of its ACL rules (with an `acl_file`).
        username: Option<ByteString>,
        /// The will still to be published, if any.
        will: Option<Box<StoredWill>>,
    },
    /// A subscription made or replaced.
    Subscribed(TopicFilter, Subscribed),
    /// A subscription removed.
    Unsubscribed(TopicFilter),
    /// A QoS 1/2 message queued; `mid` is the shard's number given with
    /// the [`Delivery`](super::Delivery).
    Queued(StoredEntry),
    /// The first queued entry of `mid` was sent with `packet_id`.
    Sent {
        /// The message.
        mid: u64,
        /// Its packet id.
        packet_id: PacketId,
    },
    /// PUBREC received: a PUBREL awaits PUBCOMP.
    Released(PacketId),
    /// The outgoing flow of this id is over.
    Completed(PacketId),
    /// The newest queued entry of message `mid` was dropped (the queue cut
    /// back to its limits).
    Dropped(u64),
    /// The oldest queued entry of message `mid` was dropped at the head of
    /// the queue: it expired [MQTT-3.3.2-5].
    Expired(u64),
    /// An inbound QoS 2 PUBLISH answered with PUBREC.
    Qos2In(PacketId),
    /// The PUBREL of an inbound QoS 2 flow arrived.
    Qos2Done(PacketId),
}

/// The session's list of changes not taken yet.
#[derive(Debug, Default)]
pub(super) struct Journal {
    enabled: bool,
    changes: Vec<SessionChange>,
}

impl Journal {
    /// Whether the shard logs this session's changes (when not clean).
    pub(super) fn is_enabled(&self) -> bool {
        self.enabled
    }

    /// Notes `change` if the session is logged: enabled, and not clean
    /// (`expiry`, see [`Session::expiry`]).
    pub(super) fn note(
        &mut self,
        expiry: Option<Duration>,
        change: impl FnOnce() -> SessionChange,
    ) {
        if self.enabled && expiry != Some(Duration::ZERO) {
            self.changes.push(change());
        }
    }
}

impl Session {
    /// The shard logs this session's changes from now on (when it is not
    /// clean).
    pub fn enable_journal(&mut self) {
        self.journal.enabled = true;
    }

    /// Whether the session outlives its connection (its state is logged).
    pub fn is_persistent(&self) -> bool {
        self.expiry != Some(Duration::ZERO)
    }

    /// Moves the changes noted since the last call into `into` (emptied
    /// first), oldest first.
    pub fn take_changes(&mut self, into: &mut Vec<SessionChange>) {
        into.clear();
        std::mem::swap(into, &mut self.journal.changes);
    }

    /// Notes the session's expiry and the will it holds now: `will`
    /// (from CONNECT) or the one waiting for its delay.
    pub(super) fn note_state(&mut self, will: Option<&Will>) {
        if !(self.journal.enabled && self.is_persistent()) {
            return;
        }
        let will = will
            .or(self.delayed_will.as_ref().map(|d| &d.will))
            .map(|w| Box::new(stored_will(w, &self.client_id)));
        let expiry = self.expiry;
        let username = self.acl_user();
        self.journal.note(expiry, || SessionChange::State { expiry, username, will });
    }

    /// The user name of the session's ACL rules, if it has an ACL.
    fn acl_user(&self) -> Option<ByteString> {
        self.acl.as_ref()?.user().map(ByteString::from)
    }

    /// The session as the log keeps it; `mid`s are those given with the
    /// deliveries. The will is the connection's, or the one waiting for
    /// its delay.
    /// The messages its entries reference are added to `messages`.
    pub fn stored(&self, messages: &mut HashMap<u64, Arc<Message>>) -> StoredSession {
        let will = self
            .connection
            .as_ref()
            .filter(|c| c.open)
            .and_then(|c| c.will.as_deref())
            .or(self.delayed_will.as_ref().map(|d| &d.will))
            .map(|will| Box::new(stored_will(will, &self.client_id)));
        let subscriptions = self
            .subscriptions
            .iter()
            .map(|(filter, s)| {
                let stored = StoredSubscription { options: s.options, identifier: s.identifier };
                (filter.clone(), stored)
            })
            .collect();
        let (queue, inflight) = self.outbound.logged();
        let queue: Vec<&Queued> = queue.collect();
        for queued in queue.iter().chain(inflight.iter().filter_map(|(_, q)| q.as_ref())) {
            messages.entry(queued.log_id).or_insert_with(|| Arc::clone(&queued.message));
        }
        StoredSession {
            client_id: self.client_id.clone(),
            expiry: self.expiry,
            username: self.acl_user(),
            will,
            subscriptions,
            queue: queue.into_iter().map(stored_entry).collect(),
            inflight: inflight
                .into_iter()
                .map(|(id, queued)| match queued {
                    Some(queued) => (id, StoredFlow::Sent(stored_entry(queued))),
                    None => (id, StoredFlow::Released),
                })
                .collect(),
            qos2_in: self.inbound_qos2.iter().collect(),
        }
    }

    /// The session as another cluster node takes it over (see
    /// `store::handover`): as [`Self::stored`], with every queued and
    /// in-flight message (logged or not), numbered from 1 in `messages`.
    pub fn handover(&self, messages: &mut HashMap<u64, Arc<Message>>) -> StoredSession {
        let mut stored = self.stored(&mut HashMap::new());
        let (queue, inflight) = self.outbound.entries(false);
        let mut number = |queued: &Queued| {
            let mid = messages.len() as u64 + 1;
            messages.insert(mid, Arc::clone(&queued.message));
            StoredEntry { mid, ..stored_entry(queued) }
        };
        stored.queue = queue.map(&mut number).collect();
        stored.inflight = inflight
            .into_iter()
            .map(|(id, queued)| match queued {
                Some(queued) => (id, StoredFlow::Sent(number(queued))),
                None => (id, StoredFlow::Released),
            })
            .collect();
        stored
    }

    /// A session rebuilt from the log at start, offline: its will (if any)
    /// is due after its delay counted from `now`, as if the connection had
    /// ended at the restart [MQTT-3.1.3-9]; its in-flight messages are
    /// re-sent, with their packet ids, when the client reconnects
    /// [MQTT-4.4.0-1]. Entries whose message is not in `messages` are left
    /// out.
    pub fn restore(
        stored: StoredSession,
        messages: &HashMap<u64, Arc<Message>>,
        limits: impl Into<Rc<SessionLimits>>,
        now: Instant,
    ) -> Self {
        // The user name goes to the shard, which has the ACL file.
        let StoredSession {
            client_id,
            expiry,
            username: _,
            will,
            subscriptions,
            queue,
            inflight,
            qos2_in,
        } = stored;
        let mut session = Session::new(client_id, limits);
        session.expiry = expiry;
        session.delayed_will = will.map(|will| {
            Box::new(DelayedWill {
                due: now + Duration::from_secs(u64::from(will.delay)),
                will: will_of(will.message, will.delay),
            })
        });
        session.subscriptions = subscriptions
            .into_iter()
            .map(|(filter, s)| {
                (filter, Subscribed { options: s.options, identifier: s.identifier })
            })
            .collect();
        let queued = |entry: StoredEntry| {
            let message = Arc::clone(messages.get(&entry.mid)?);
            Some(Queued {
                message,
                qos: entry.qos,
                retain: entry.retain,
                subscription_ids: entry.subscription_ids,
                from_retained: entry.from_retained,
                log_id: entry.mid,
            })
        };
        let inflight = inflight
            .into_iter()
            .filter_map(|(id, flow)| match flow {
                StoredFlow::Sent(entry) => Some((id, Some(queued(entry)?))),
                StoredFlow::Released => Some((id, None)),
            })
            .collect();
        session.outbound.restore(queue.into_iter().filter_map(queued), inflight);
        session.inbound_qos2 = qos2_in.into_iter().collect();
        session.journal.enabled = true;
        session
    }
}

fn stored_entry(queued: &Queued) -> StoredEntry {
    StoredEntry {
        mid: queued.log_id,
        qos: queued.qos,
        retain: queued.retain,
        from_retained: queued.from_retained,
        subscription_ids: queued.subscription_ids.clone(),
    }
}

/// A will as the log keeps it: the message it becomes, without an expiry
/// instant (its Message Expiry Interval counts from its publication).
pub(super) fn stored_will(will: &Will, client_id: &ByteString) -> StoredWill {
    let properties = &will.properties;
    let message = Message {
        topic: will.topic.clone(),
        payload: will.payload.clone(),
        qos: will.qos,
        retain: will.retain,
        properties: BoxedPublishProperties::from(PublishProperties {
            payload_format_indicator: properties.payload_format_indicator,
            message_expiry_interval: properties.message_expiry_interval,
            topic_alias: None,
            response_topic: properties.response_topic.clone(),
            correlation_data: properties.correlation_data.clone(),
            user_properties: properties.user_properties.clone(),
            subscription_identifiers: SmallVec::new(),
            content_type: properties.content_type.clone(),
        }),
        publisher: Some(client_id.clone()),
        expires_at: None,
        id: 0,
    };
    StoredWill { delay: properties.will_delay_interval.unwrap_or(0), message }
}

/// The will a [`StoredWill`] was made from.
fn will_of(message: Message, delay: u32) -> Will {
    let properties: PublishProperties = (*message.properties).clone();
    Will {
        topic: message.topic,
        payload: message.payload,
        qos: message.qos,
        retain: message.retain,
        properties: WillProperties {
            will_delay_interval: (delay > 0).then_some(delay),
            payload_format_indicator: properties.payload_format_indicator,
            message_expiry_interval: properties.message_expiry_interval,
            content_type: properties.content_type,
            response_topic: properties.response_topic,
            correlation_data: properties.correlation_data,
            user_properties: properties.user_properties,
        },
    }
}

/// The entry noted for a queued message.
pub(super) fn entry_of(
    mid: u64,
    qos: QoS,
    retain: bool,
    from_retained: bool,
    subscription_ids: &SubscriptionIds,
) -> StoredEntry {
    StoredEntry { mid, qos, retain, from_retained, subscription_ids: subscription_ids.clone() }
}

#[cfg(test)]
mod tests {
    //! Property test: whatever a persistent session goes through
    //! (deliveries, sends, acknowledgements of every kind, inbound QoS 2
    //! flows, subscribes, reconnections), the changes it notes, applied
    //! as the log's recovery applies them, rebuild exactly its state; and
    //! a session restored from that state holds it again.

    use super::*;
    use crate::metrics::SessionCounters;
    use crate::protocol::{
        Connect, ConnectProperties, Packet, ProtocolVersion, PubResponse, Publish, Subscribe,
        Subscription, SubscriptionOptions, TopicName, Unsubscribe,
    };
    use crate::session::Delivery;
    use crate::store::{Record, SessionState};
    use bytes::Bytes;
    use proptest::prelude::*;

    #[derive(Clone, Debug)]
    enum Op {
        Deliver(u8, u8),
        Transmit,
        /// The right acknowledgement for the `pick`-th flow in flight.
        Ack(usize),
        /// A QoS 2 PUBLISH from the client, then maybe its PUBREL.
        Inbound(u16, bool),
        Subscribe(u8),
        Unsubscribe(u8),
        Reconnect,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0..3u8, 0..3u8).prop_map(|(q, s)| Op::Deliver(q, s)),
            3 => Just(Op::Transmit),
            3 => any::<usize>().prop_map(Op::Ack),
            2 => (1..5u16, any::<bool>()).prop_map(|(id, rel)| Op::Inbound(id, rel)),
            1 => (0..3u8).prop_map(Op::Subscribe),
            1 => (0..3u8).prop_map(Op::Unsubscribe),
            1 => Just(Op::Reconnect),
        ]
    }

    fn connect() -> Connect {
        Connect {
            version: ProtocolVersion::V3_1_1,
            clean_start: false,
            keep_alive: 0,
            client_id: ByteString::from_static("c"),
            will: None,
            username: None,
            password: None,
            properties: ConnectProperties::default(),
        }
    }

    /// The records the shard appends for `change` (session 1).
    fn record(change: SessionChange, messages: &HashMap<u64, Arc<Message>>) -> Vec<Record> {
        let sid = 1;
        match change {
            SessionChange::State { expiry, username, will } => {
                vec![Record::SessionOpen { sid, client_id: "c".into(), expiry, username, will }]
            }
            SessionChange::Subscribed(filter, s) => vec![Record::Subscribe {
                sid,
                filter,
                subscription: StoredSubscription { options: s.options, identifier: s.identifier },
            }],
            SessionChange::Unsubscribed(filter) => vec![Record::Unsubscribe { sid, filter }],
            SessionChange::Queued(entry) => vec![
                Record::Message { mid: entry.mid, message: Arc::clone(&messages[&entry.mid]) },
                Record::Enqueue { sid, entry },
            ],
            SessionChange::Sent { mid, packet_id } => vec![Record::Sent { sid, mid, packet_id }],
            SessionChange::Released(packet_id) => vec![Record::Released { sid, packet_id }],
            SessionChange::Completed(packet_id) => vec![Record::Completed { sid, packet_id }],
            SessionChange::Dropped(mid) => vec![Record::Dropped { sid, mid }],
            SessionChange::Expired(mid) => vec![Record::Expired { sid, mid }],
            SessionChange::Qos2In(packet_id) => vec![Record::Qos2In { sid, packet_id }],
            SessionChange::Qos2Done(packet_id) => vec![Record::Qos2Done { sid, packet_id }],
        }
    }

    fn normalized(mut stored: StoredSession) -> StoredSession {
        stored.qos2_in.sort_unstable();
        stored
    }

    proptest! {
        #[test]
        fn the_noted_changes_rebuild_the_session(ops in prop::collection::vec(op(), 1..120)) {
            let now = Instant::now();
            // Small queues: a reconnection cuts them, and the cut is
            // logged too.
            let limits = SessionLimits { max_queued_messages: 3, ..SessionLimits::default() };
            let mut counters = SessionCounters::default();
            let mut session = Session::new(ByteString::from_static("c"), limits);
            session.enable_journal();
            session.handle_connect(now, &connect(), false, &mut counters);
            let mut connected = true;
            let mut messages: HashMap<u64, Arc<Message>> = HashMap::new();
            let mut logged = SessionState::default();
            let mut changes = Vec::new();
            // Flows in flight as the client sees them: id -> awaiting PUBREC.
            let mut flows: Vec<(PacketId, bool)> = Vec::new();
            for op in ops {
                match op {
                    Op::Deliver(q, s) => {
                        let mid = messages.len() as u64 + 1;
                        let message = Arc::new(Message {
                            topic: TopicName::new("t").unwrap(),
                            payload: Bytes::from(mid.to_le_bytes().to_vec()),
                            qos: QoS::from_u8(q).unwrap(),
                            retain: false,
                            properties: BoxedPublishProperties::none(),
                            publisher: None,
                            expires_at: None,
                            id: 0,
                        });
                        messages.insert(mid, Arc::clone(&message));
                        let options = SubscriptionOptions { qos: QoS::from_u8(s).unwrap(), ..Default::default() };
                        let delivery = Delivery {
                            message,
                            options,
                            subscription_ids: SubscriptionIds::new(),
                            from_retained: false,
                            log_id: mid,
                        };
                        session.handle_delivery(now, delivery, &mut counters);
                    }
                    Op::Transmit => {
                        while let Some(packet) = session.poll_packet(now, &mut counters) {
                            if let Packet::Publish(Publish { packet_id: Some(id), qos, dup: false, .. }) = packet {
                                flows.push((id, qos == QoS::ExactlyOnce));
                            }
                        }
                    }
                    Op::Ack(pick) if connected && !flows.is_empty() => {
                        let at = pick % flows.len();
                        let (id, awaiting_pubrec) = flows[at];
                        let response = PubResponse::new(id);
                        let packet = match (awaiting_pubrec, session.outbound.is_awaiting_pubcomp(id)) {
                            (_, true) => Packet::PubComp(response),
                            (true, false) => Packet::PubRec(response),
                            (false, false) => Packet::PubAck(response),
                        };
                        let completes = !matches!(packet, Packet::PubRec(_));
                        prop_assert_eq!(session.handle_packet(now, packet, &mut counters), Ok(()));
                        if completes {
                            flows.remove(at);
                        }
                    }
                    Op::Ack(_) => {}
                    Op::Inbound(id, release) if connected => {
                        let id = PacketId::new(id).unwrap();
                        let publish = Publish {
                            dup: false,
                            qos: QoS::ExactlyOnce,
                            retain: false,
                            topic: TopicName::new("in").unwrap(),
                            packet_id: Some(id),
                            properties: Default::default(),
                            payload: Bytes::new(),
                        };
                        prop_assert_eq!(session.handle_packet(now, Packet::Publish(publish), &mut counters), Ok(()));
                        if release {
                            let rel = Packet::PubRel(PubResponse::new(id));
                            prop_assert_eq!(session.handle_packet(now, rel, &mut counters), Ok(()));
                        }
                    }
                    Op::Subscribe(f) if connected => {
                        let subscribe = Subscribe {
                            packet_id: PacketId::new(1).unwrap(),
                            properties: Default::default(),
                            subscriptions: [Subscription {
                                filter: TopicFilter::new(format!("f/{f}")).unwrap(),
                                options: SubscriptionOptions { qos: QoS::from_u8(f % 3).unwrap(), ..Default::default() },
                            }].into_iter().collect(),
                            refused: Vec::new(),
                        };
                        prop_assert_eq!(session.handle_packet(now, Packet::Subscribe(subscribe), &mut counters), Ok(()));
                    }
                    Op::Unsubscribe(f) if connected => {
                        let unsubscribe = Unsubscribe {
                            packet_id: PacketId::new(2).unwrap(),
                            properties: Default::default(),
                            filters: [TopicFilter::new(format!("f/{f}")).unwrap()].into_iter().collect(),
                            refused: Vec::new(),
                        };
                        prop_assert_eq!(session.handle_packet(now, Packet::Unsubscribe(unsubscribe), &mut counters), Ok(()));
                    }
                    Op::Inbound(..) | Op::Subscribe(_) | Op::Unsubscribe(_) => {}
                    Op::Reconnect => {
                        if connected {
                            session.handle_connection_lost(now, &mut counters);
                        }
                        session.handle_connect(now, &connect(), true, &mut counters);
                        connected = true;
                        // The client re-sends nothing; the server re-sends
                        // its flows, which the client's view keeps.
                        while session.poll_packet(now, &mut counters).is_some() {}
                    }
                }
                while session.poll_event().is_some() {}
                session.take_changes(&mut changes);
                for change in changes.drain(..) {
                    for r in record(change, &messages) {
                        logged.apply(r);
                    }
                }
                let mut rebuilt = logged.clone();
                rebuilt.finish(now);
                let mut referenced = HashMap::new();
                let live = normalized(session.stored(&mut referenced));
                prop_assert_eq!(&normalized(rebuilt.sessions[&1].clone()), &live);
                prop_assert_eq!(&rebuilt.messages, &referenced);
                let restored = Session::restore(live.clone(), &referenced, limits, now);
                prop_assert_eq!(normalized(restored.stored(&mut HashMap::new())), live);
            }
        }
    }
}
