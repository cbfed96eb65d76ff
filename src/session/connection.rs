//! The part of a session that lives as long as one network connection: the
//! protocol version, keep alive, will, inbound topic aliases and the
//! control packets (acknowledgements and responses) waiting to be sent.

use super::keepalive::KeepAlive;
use super::SessionError;
use crate::protocol::{
    AckProperties, ConnAck, Disconnect, DisconnectProperties, Packet, PacketId, ProtocolVersion,
    PubResponse, ReasonCode, SubAck, TopicName, UnsubAck, Will,
};
use bytestring::ByteString;
use smallvec::SmallVec;
use std::collections::VecDeque;
use std::num::{NonZeroU16, NonZeroU32};

/// A control packet the session owes the client, kept small (no packet
/// bodies) and in the order the requests arrived [MQTT-4.6.0-2],
/// [MQTT-4.6.0-3].
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Control {
    PubAck(PacketId),
    PubRec(PacketId),
    PubComp(PacketId, ReasonCode),
    PubRel(PacketId),
    SubAck(PacketId, SmallVec<[ReasonCode; 1]>),
    UnsubAck(PacketId, SmallVec<[ReasonCode; 1]>),
    PingResp,
    /// A server DISCONNECT, with its Reason String when the client did not
    /// turn problem information off.
    Disconnect(ReasonCode, Option<ByteString>),
}

impl Control {
    pub(super) fn into_packet(self) -> Packet {
        let response = |packet_id, reason| PubResponse {
            packet_id,
            reason,
            properties: AckProperties::default(),
        };
        match self {
            Self::PubAck(id) => Packet::PubAck(response(id, ReasonCode::Success)),
            Self::PubRec(id) => Packet::PubRec(response(id, ReasonCode::Success)),
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
    pub(super) unacknowledged_in: usize,
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
    /// v5 Request Problem Information (absent: 1). At 0 no Reason String
    /// is sent [MQTT-3.1.2-29]: ringmq sends one only on DISCONNECT, and
    /// not even there then.
    pub(super) problem_information: bool,
    /// The CONNECT's Session Expiry Interval was 0 (or absent): a
    /// DISCONNECT may not set a non-zero one [MQTT-3.14.2-2].
    pub(super) expiry_zero_at_connect: bool,
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
