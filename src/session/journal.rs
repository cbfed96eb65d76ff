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
            .or(self.delayed_will.as_ref().map(|d| &*d.will))
            .map(|w| Box::new(stored_will(w, &self.client_id)));
        let expiry = self.expiry;
        self.journal.note(expiry, || SessionChange::State { expiry, will });
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
            .or(self.delayed_will.as_ref().map(|d| &*d.will))
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
            qos2_in: self.inbound_qos2.iter().copied().collect(),
        }
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
        limits: SessionLimits,
        now: Instant,
    ) -> Self {
        let StoredSession { client_id, expiry, will, subscriptions, queue, inflight, qos2_in } =
            stored;
        let mut session = Session::new(client_id, limits);
        session.expiry = expiry;
        session.delayed_will = will.map(|will| DelayedWill {
            due: now + Duration::from_secs(u64::from(will.delay)),
            will: Box::new(will_of(will.message, will.delay)),
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
