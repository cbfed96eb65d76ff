//! The part of a session that lives as long as one network connection: the
//! protocol version, keep alive, will, topic aliases in both directions and
//! the control packets (acknowledgements and responses) waiting to be sent.

use super::auth::AuthExchange;
use super::keepalive::KeepAlive;
use super::SessionError;
use crate::auth::enhanced::Authenticator;
use crate::protocol::{
    AckProperties, Auth, BoxedPublishProperties, ConnAck, Disconnect, DisconnectProperties, Packet,
    PacketId, ProtocolVersion, PubResponse, Publish, ReasonCode, SubAck, TopicName, UnsubAck, Will,
};
use bytestring::ByteString;
use smallvec::SmallVec;
use std::collections::VecDeque;
use std::num::{NonZeroU16, NonZeroU32};
use std::sync::Arc;

/// A control packet the session owes the client, kept small (no packet
/// bodies) and in the order the requests arrived [MQTT-4.6.0-2],
/// [MQTT-4.6.0-3].
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Control {
    /// With Success, or a failure that refuses the message (0x99).
    PubAck(PacketId, ReasonCode),
    /// With Success, or a failure that refuses the message and ends the
    /// flow [MQTT-4.3.3-4].
    PubRec(PacketId, ReasonCode),
    PubComp(PacketId, ReasonCode),
    PubRel(PacketId),
    SubAck(PacketId, SmallVec<[ReasonCode; 1]>),
    UnsubAck(PacketId, SmallVec<[ReasonCode; 1]>),
    PingResp,
    /// A server DISCONNECT, with its Reason String when the client did not
    /// turn problem information off.
    Disconnect(ReasonCode, Option<ByteString>),
    /// A step of a re-authentication (5.0 section 4.12.1): AUTH 0x18 or the
    /// closing 0x00.
    Auth(Box<Auth>),
}

impl Control {
    pub(super) fn into_packet(self) -> Packet {
        let response = |packet_id, reason| PubResponse {
            packet_id,
            reason,
            properties: AckProperties::default(),
        };
        match self {
            Self::PubAck(id, reason) => Packet::PubAck(response(id, reason)),
            Self::PubRec(id, reason) => Packet::PubRec(response(id, reason)),
            Self::PubComp(id, reason) => Packet::PubComp(response(id, reason)),
            Self::PubRel(id) => Packet::PubRel(response(id, ReasonCode::Success)),
            Self::SubAck(packet_id, reasons) => {
                Packet::SubAck(SubAck { packet_id, properties: AckProperties::default(), reasons })
            }
            Self::UnsubAck(packet_id, reasons) => Packet::UnsubAck(UnsubAck {
                packet_id,
                properties: AckProperties::default(),
                reasons,
            }),
            Self::PingResp => Packet::PingResp,
            Self::Disconnect(reason, reason_string) => Packet::Disconnect(Disconnect {
                reason,
                properties: DisconnectProperties { reason_string, ..Default::default() },
            }),
            Self::Auth(auth) => Packet::Auth(auth),
        }
    }
}

/// Names a barrier in a connection's acknowledgements: the control packets
/// owed after it wait until the shard releases it
/// ([`Session::release_acks`](super::Session::release_acks)). Unique within
/// its session.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AckToken(pub(super) u64);

/// What a connection owes the client, in order: control packets, and
/// barriers that hold the ones after them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Owed {
    Control(Control),
    Barrier(AckToken),
}

/// Client-to-server v5 topic aliases of one connection [MQTT-3.3.2-7].
#[derive(Debug, Default)]
pub(super) struct TopicAliases {
    /// Alias `n` is at index `n - 1`; allocated on first use, at most the
    /// Topic Alias Maximum long.
    names: Vec<Option<TopicName>>,
}

impl TopicAliases {
    /// The topic of an incoming PUBLISH: a non-empty topic with an alias
    /// sets the mapping, an empty one uses it (5.0 §3.3.2.3.4).
    pub(super) fn resolve(
        &mut self,
        topic: TopicName,
        alias: Option<NonZeroU16>,
        maximum: u16,
    ) -> Result<TopicName, SessionError> {
        let Some(alias) = alias else {
            // Only an aliased v5 topic may be empty [MQTT-4.7.3-1]; the
            // decoder already refuses it, this keeps the invariant local.
            return if topic.is_empty() { Err(SessionError::EmptyTopic) } else { Ok(topic) };
        };
        let alias = alias.get();
        // [MQTT-3.3.2-9] no alias above the maximum of CONNACK;
        // [MQTT-3.3.2-12] every alias up to it is accepted.
        if alias > maximum {
            return Err(SessionError::TopicAliasInvalid(alias));
        }
        let slot = usize::from(alias - 1);
        if topic.is_empty() {
            return self
                .names
                .get(slot)
                .and_then(Option::as_ref)
                .cloned()
                .ok_or(SessionError::UnknownTopicAlias(alias));
        }
        if self.names.len() <= slot {
            self.names.resize(slot + 1, None);
        }
        self.names[slot] = Some(topic.clone());
        Ok(topic)
    }
}

/// Server-to-client v5 topic aliases of one connection (5.0 §3.3.2.3.4):
/// the most recently used topics keep an alias, so a repeated topic is sent
/// as an empty topic name and two bytes of alias.
///
/// Aliases are per connection [MQTT-3.3.2-7] (a new connection starts with
/// none) and never above the client's Topic Alias Maximum
/// [MQTT-3.3.2-10]. A delivery allocates nothing: the slots are reserved
/// once, on the first aliased PUBLISH, and a PUBLISH without properties
/// borrows one spare properties block to carry its alias. A slot keeps its
/// topic (for a long one, the buffer it shares) until it is reused.
#[derive(Debug, Default)]
pub(super) struct OutboundAliases {
    /// Alias `n` is at index `n - 1`, with when it was last sent.
    slots: Vec<AliasSlot>,
    /// Aliases used at most: min(client's Topic Alias Maximum, the
    /// server's `server_topic_alias_maximum`), never 0. The lookup is a
    /// scan, which the configured cap (at most 255) keeps short.
    maximum: u16,
    /// Advances at every aliased PUBLISH sent: the slot with the smallest
    /// [`AliasSlot::used`] is the least recently used.
    clock: u64,
    /// The properties block lent to a PUBLISH that has none.
    spare: BoxedPublishProperties,
}

#[derive(Debug)]
struct AliasSlot {
    topic: TopicName,
    used: u64,
}

/// The alias [`OutboundAliases::apply`] gave a PUBLISH, to settle with
/// [`OutboundAliases::finish`] once it is written or not.
#[derive(Clone, Copy, Debug)]
pub(super) struct Applied {
    /// The slot index (the alias less one).
    slot: usize,
    /// The topic already had this alias: the topic name was left out.
    known: bool,
    /// The PUBLISH carries [`OutboundAliases::spare`].
    lent: bool,
}

impl Applied {
    /// Whether the alias is new: the topic name is still in the PUBLISH,
    /// so it can be sent without the alias.
    pub(super) fn is_new(&self) -> bool {
        !self.known
    }
}

impl OutboundAliases {
    /// Aliases for a connection whose client accepts `client_maximum`, the
    /// server using at most `server_maximum`; `None` when that is 0.
    pub(super) fn new(client_maximum: u16, server_maximum: u16) -> Option<Box<Self>> {
        let maximum = client_maximum.min(server_maximum);
        (maximum > 0).then(|| Box::new(Self { maximum, ..Self::default() }))
    }

    /// Gives `publish` a Topic Alias: the one its topic already has, with
    /// an empty topic name, or a new one (the next unused alias, else the
    /// least recently used one's) beside the topic name, which sets the
    /// mapping in the client (5.0 §3.3.2.3.4).
    pub(super) fn apply(&mut self, publish: &mut Publish) -> Option<Applied> {
        let known = self.slots.iter().position(|slot| slot.topic == publish.topic);
        let slot = match known {
            Some(slot) => slot,
            None if self.slots.len() < usize::from(self.maximum) => self.slots.len(),
            None => self.slots.iter().enumerate().min_by_key(|(_, slot)| slot.used)?.0,
        };
        let alias = u16::try_from(slot + 1).ok().and_then(NonZeroU16::new)?;
        let lent = publish.properties.get_mut().is_none();
        if lent {
            std::mem::swap(&mut publish.properties, &mut self.spare);
        }
        publish.properties.make_mut().topic_alias = Some(alias);
        if known.is_some() {
            publish.topic = TopicName::inline("");
        }
        Some(Applied { slot, known: known.is_some(), lent })
    }

    /// Settles the alias `applied` gave `publish`: if the PUBLISH was
    /// written (`sent`), the slot is marked used, a new alias remembered
    /// (only once the client has seen it set); if not, the alias is taken
    /// off again. The spare block comes back either way.
    pub(super) fn finish(&mut self, publish: &mut Publish, applied: Applied, sent: bool) {
        if sent {
            self.clock += 1;
            let used = self.clock;
            match self.slots.get_mut(applied.slot) {
                Some(slot) if applied.known => slot.used = used,
                Some(slot) => *slot = AliasSlot { topic: publish.topic.clone(), used },
                None => {
                    if self.slots.capacity() == 0 {
                        self.slots.reserve_exact(usize::from(self.maximum));
                    }
                    self.slots.push(AliasSlot { topic: publish.topic.clone(), used });
                }
            }
        }
        if let Some(properties) = publish.properties.get_mut() {
            properties.topic_alias = None;
        }
        if applied.lent {
            std::mem::swap(&mut publish.properties, &mut self.spare);
        }
    }
}

/// One network connection attached to a session.
#[derive(Debug)]
pub(super) struct Connection {
    /// The version every packet of the connection is read and written in.
    pub(super) version: ProtocolVersion,
    /// False once the connection is closing: nothing more is read, and only
    /// queued control packets (a v5 DISCONNECT last) are still written.
    pub(super) open: bool,
    pub(super) keep_alive: KeepAlive,
    /// The will of CONNECT, until it is published or discarded
    /// [MQTT-3.1.2-10].
    pub(super) will: Option<Box<Will>>,
    /// The CONNACK, always the first packet written.
    pub(super) connack: Option<Box<ConnAck>>,
    /// Acknowledgements and responses owed, in order, with the barriers
    /// that hold some of them.
    pub(super) control: VecDeque<Owed>,
    /// QoS 1/2 publishes received on this connection and not yet answered
    /// with PUBACK or PUBCOMP, counted against the v5 Receive Maximum
    /// [MQTT-3.3.4-7]. It mirrors the client's send quota (5.0 §4.9), which
    /// starts full on every connection and grows with every PUBACK or
    /// PUBCOMP it receives, so QoS 2 flows inherited from an earlier
    /// connection do not count.
    pub(super) unacknowledged_in: u16,
    /// Outgoing QoS 1/2 publishes in flight at most: the session's
    /// `max_inflight`, lowered to a v5 client's Receive Maximum
    /// [MQTT-3.3.4-9].
    pub(super) send_window: u16,
    /// A v5 client's Maximum Packet Size [MQTT-3.1.2-24 (5.0)].
    pub(super) max_packet_size: Option<NonZeroU32>,
    /// The Receive Maximum advertised in this connection's CONNACK: a
    /// limits reload changes it only for the next connection.
    pub(super) receive_maximum: NonZeroU16,
    /// The Topic Alias Maximum advertised in this connection's CONNACK:
    /// a limits reload changes it only for the next connection.
    pub(super) topic_alias_maximum: u16,
    pub(super) aliases: TopicAliases,
    /// Server-to-client topic aliases; `None` when off (3.1/3.1.1, a
    /// client that accepts none, or a server cap of 0), so that a
    /// connection without them carries one pointer, not the LRU.
    pub(super) aliases_out: Option<Box<OutboundAliases>>,
    /// v5 Request Problem Information (absent: 1). At 0 no Reason String
    /// is sent [MQTT-3.1.2-29]: ringmq sends one only on DISCONNECT, and
    /// not even there then.
    pub(super) problem_information: bool,
    /// The CONNECT's Session Expiry Interval was 0 (or absent): a
    /// DISCONNECT may not set a non-zero one [MQTT-3.14.2-2].
    pub(super) expiry_zero_at_connect: bool,
    /// The enhanced authentication method the connection authenticated
    /// with, for re-authentication; `None` without one (then AUTH is a
    /// Protocol Error [MQTT-4.12.0-7]). Boxed: most connections have none.
    pub(super) auth: Option<Box<ConnectionAuth>>,
    /// The publish budgets of `max_publish_rate` / `max_publish_bytes_rate`;
    /// `None` while neither is set, so an unlimited connection carries one
    /// pointer.
    pub(super) pace: Option<Box<super::pace::PublishPace>>,
    /// The CONNECT's User Name, if any: a reloaded `password_file` that
    /// removes the user or changes its password closes the connection
    /// ([`Session::handle_credentials_revoked`](super::Session::handle_credentials_revoked)).
    pub(super) user: Option<Box<str>>,
}

/// The method of a connection authenticated by enhanced authentication,
/// and its re-authentication in progress.
#[derive(Debug)]
pub(super) struct ConnectionAuth {
    pub(super) authenticator: Arc<dyn Authenticator>,
    /// The method's name, as CONNECT gave it.
    pub(super) method: ByteString,
    /// A re-authentication waiting for the client's next AUTH.
    pub(super) exchange: Option<AuthExchange>,
}

impl Connection {
    /// Queues a control packet, after everything owed before it.
    pub(super) fn owe(&mut self, control: Control) {
        self.control.push_back(Owed::Control(control));
    }

    /// Holds every control packet owed from now on (and the CONNACK, when
    /// it is not written yet: nothing may precede it [MQTT-3.2.0-1]) until
    /// `token` is released.
    pub(super) fn hold(&mut self, token: AckToken) {
        self.control.push_back(Owed::Barrier(token));
    }

    /// Releases the barrier `token`, if this connection has it.
    pub(super) fn release(&mut self, token: AckToken) {
        if let Some(at) = self.control.iter().position(|owed| *owed == Owed::Barrier(token)) {
            self.control.remove(at);
        }
    }

    /// Whether the next thing owed waits for a barrier.
    pub(super) fn is_held(&self) -> bool {
        matches!(self.control.front(), Some(Owed::Barrier(_)))
    }

    /// Removes every barrier: a closing connection writes what it owes.
    pub(super) fn release_all(&mut self) {
        self.control.retain(|owed| matches!(owed, Owed::Control(_)));
    }
}
