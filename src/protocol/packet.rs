//! The control packets of MQTT 3.1, 3.1.1 and 5.0 as plain data.
//!
//! One struct serves all versions: fields that a version lacks (properties,
//! reason codes of acknowledgements) are left at their defaults and are
//! neither read nor written for it.

use super::properties::*;
use super::redact::Redacted;
use super::{PacketId, ProtocolVersion, QoS, ReasonCode, TopicError, TopicFilter, TopicName};
use bytes::Bytes;
use bytestring::ByteString;
use smallvec::SmallVec;
use std::fmt;

/// The control packet type, the high nibble of the first byte [MQTT-2.1.2].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum PacketType {
    /// Client request to connect.
    Connect = 1,
    /// Connect acknowledgement.
    ConnAck = 2,
    /// Publish message.
    Publish = 3,
    /// QoS 1 publish acknowledgement.
    PubAck = 4,
    /// QoS 2 publish received (part 1).
    PubRec = 5,
    /// QoS 2 publish release (part 2).
    PubRel = 6,
    /// QoS 2 publish complete (part 3).
    PubComp = 7,
    /// Subscribe request.
    Subscribe = 8,
    /// Subscribe acknowledgement.
    SubAck = 9,
    /// Unsubscribe request.
    Unsubscribe = 10,
    /// Unsubscribe acknowledgement.
    UnsubAck = 11,
    /// Ping request.
    PingReq = 12,
    /// Ping response.
    PingResp = 13,
    /// Disconnect notification.
    Disconnect = 14,
    /// Authentication exchange (MQTT 5.0 only).
    Auth = 15,
}

impl PacketType {
    /// Parses the high nibble of the first byte; 0 is reserved.
    pub const fn from_u8(value: u8) -> Option<Self> {
        use PacketType::*;
        Some(match value {
            1 => Connect,
            2 => ConnAck,
            3 => Publish,
            4 => PubAck,
            5 => PubRec,
            6 => PubRel,
            7 => PubComp,
            8 => Subscribe,
            9 => SubAck,
            10 => Unsubscribe,
            11 => UnsubAck,
            12 => PingReq,
            13 => PingResp,
            14 => Disconnect,
            15 => Auth,
            _ => return None,
        })
    }

    /// The fixed-header flags this type must carry; PUBLISH has variable
    /// flags and returns `None` [MQTT-2.2.2-1]. (The decoder also accepts
    /// DUP=1 on a re-sent MQTT 3.1 PUBREL, SUBSCRIBE or UNSUBSCRIBE.)
    pub const fn fixed_flags(self) -> Option<u8> {
        match self {
            Self::Publish => None,
            Self::PubRel | Self::Subscribe | Self::Unsubscribe => Some(0b0010),
            _ => Some(0),
        }
    }
}

/// An MQTT control packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Packet {
    /// CONNECT.
    Connect(Box<Connect>),
    /// CONNACK; boxed, as it is once per connection and its properties
    /// would otherwise set the size of every packet.
    ConnAck(Box<ConnAck>),
    /// PUBLISH.
    Publish(Publish),
    /// PUBACK.
    PubAck(PubResponse),
    /// PUBREC.
    PubRec(PubResponse),
    /// PUBREL.
    PubRel(PubResponse),
    /// PUBCOMP.
    PubComp(PubResponse),
    /// SUBSCRIBE.
    Subscribe(Subscribe),
    /// SUBACK.
    SubAck(SubAck),
    /// UNSUBSCRIBE.
    Unsubscribe(Unsubscribe),
    /// UNSUBACK.
    UnsubAck(UnsubAck),
    /// PINGREQ.
    PingReq,
    /// PINGRESP.
    PingResp,
    /// DISCONNECT.
    Disconnect(Disconnect),
    /// AUTH (MQTT 5.0 only); boxed for the same reason as CONNACK.
    Auth(Box<Auth>),
}

impl Packet {
    /// The control packet type.
    pub fn packet_type(&self) -> PacketType {
        match self {
            Self::Connect(_) => PacketType::Connect,
            Self::ConnAck(_) => PacketType::ConnAck,
            Self::Publish(_) => PacketType::Publish,
            Self::PubAck(_) => PacketType::PubAck,
            Self::PubRec(_) => PacketType::PubRec,
            Self::PubRel(_) => PacketType::PubRel,
            Self::PubComp(_) => PacketType::PubComp,
            Self::Subscribe(_) => PacketType::Subscribe,
            Self::SubAck(_) => PacketType::SubAck,
            Self::Unsubscribe(_) => PacketType::Unsubscribe,
            Self::UnsubAck(_) => PacketType::UnsubAck,
            Self::PingReq => PacketType::PingReq,
            Self::PingResp => PacketType::PingResp,
            Self::Disconnect(_) => PacketType::Disconnect,
            Self::Auth(_) => PacketType::Auth,
        }
    }
}

/// CONNECT [MQTT-3.1]. Its `Debug` shows the password's length only.
#[derive(Clone, PartialEq, Eq)]
pub struct Connect {
    /// Protocol name and level; every later packet of the connection is
    /// read and written in this version.
    pub version: ProtocolVersion,
    /// Clean Session (3.1.1) / Clean Start (5.0).
    pub clean_start: bool,
    /// Keep alive in seconds; 0 disables it [MQTT-3.1.2-10].
    pub keep_alive: u16,
    /// Client identifier; may be empty [MQTT-3.1.3-6].
    pub client_id: ByteString,
    /// The will message, when the Will Flag is set.
    pub will: Option<Will>,
    /// User name, when the User Name Flag is set.
    pub username: Option<ByteString>,
    /// Password, when the Password Flag is set.
    pub password: Option<Bytes>,
    /// Properties (5.0).
    pub properties: ConnectProperties,
}

impl fmt::Debug for Connect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Destructured, so that a new field cannot be left out (or let a
        // secret in) unnoticed.
        let Self {
            version,
            clean_start,
            keep_alive,
            client_id,
            will,
            username,
            password,
            properties,
        } = self;
        f.debug_struct("Connect")
            .field("version", version)
            .field("clean_start", clean_start)
            .field("keep_alive", keep_alive)
            .field("client_id", client_id)
            .field("will", will)
            .field("username", username)
            .field("password", &Redacted(password))
            .field("properties", properties)
            .finish()
    }
}

/// The Will Message of CONNECT [MQTT-3.1.2.5].
#[derive(Clone, PartialEq, Eq)]
pub struct Will {
    /// Topic the will is published to.
    pub topic: TopicName,
    /// Will payload.
    pub payload: Bytes,
    /// Will QoS.
    pub qos: QoS,
    /// Will Retain.
    pub retain: bool,
    /// Will properties (5.0).
    pub properties: WillProperties,
}

impl fmt::Debug for Will {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Will")
            .field("topic", &self.topic)
            .field("payload_len", &self.payload.len())
            .field("qos", &self.qos)
            .field("retain", &self.retain)
            .field("properties", &self.properties)
            .finish()
    }
}

/// CONNACK [MQTT-3.2].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnAck {
    /// Session Present [MQTT-3.2.2-1]; always false in MQTT 3.1.
    pub session_present: bool,
    /// Outcome. On 3.1 / 3.1.1 written as the closest return code
    /// ([`ReasonCode::to_v3_connect_return_code`]).
    pub reason: ReasonCode,
    /// Properties (5.0).
    pub properties: ConnAckProperties,
}

/// PUBLISH [MQTT-3.3].
#[derive(Clone, PartialEq, Eq)]
pub struct Publish {
    /// DUP: this may be a re-delivery; always false at QoS 0 [MQTT-3.3.1-2].
    pub dup: bool,
    /// QoS.
    pub qos: QoS,
    /// RETAIN.
    pub retain: bool,
    /// Topic name (empty only with a v5 Topic Alias).
    pub topic: TopicName,
    /// Packet identifier: present exactly when QoS > 0 [MQTT-2.3.1-5].
    pub packet_id: Option<PacketId>,
    /// Properties (5.0); out of line, as most PUBLISH packets have none.
    pub properties: BoxedPublishProperties,
    /// Application payload, shared and never copied.
    pub payload: Bytes,
}

impl fmt::Debug for Publish {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Payloads are redacted: they may hold user data.
        f.debug_struct("Publish")
            .field("dup", &self.dup)
            .field("qos", &self.qos)
            .field("retain", &self.retain)
            .field("topic", &self.topic)
            .field("packet_id", &self.packet_id)
            .field("properties", &self.properties)
            .field("payload_len", &self.payload.len())
            .finish()
    }
}

/// PUBACK, PUBREC, PUBREL and PUBCOMP: a packet id and, in 5.0, a reason
/// code and properties [MQTT-3.4 .. 3.7].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PubResponse {
    /// The packet id being acknowledged.
    pub packet_id: PacketId,
    /// Outcome (5.0; Success on older versions).
    pub reason: ReasonCode,
    /// Properties (5.0).
    pub properties: AckProperties,
}

impl PubResponse {
    /// A successful response with no properties.
    pub fn new(packet_id: PacketId) -> Self {
        Self { packet_id, reason: ReasonCode::Success, properties: AckProperties::default() }
    }
}

/// Retain Handling of a subscription [MQTT-3.8.3.1].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[repr(u8)]
pub enum RetainHandling {
    /// 0: send retained messages at the time of the subscribe.
    #[default]
    SendAtSubscribe = 0,
    /// 1: send them only if the subscription did not exist.
    SendIfNew = 1,
    /// 2: never send them.
    DoNotSend = 2,
}

/// Subscription Options [MQTT-3.8.3.1]; on 3.1 / 3.1.1 only `qos` is sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct SubscriptionOptions {
    /// Maximum QoS.
    pub qos: QoS,
    /// Do not deliver this client's own publishes (5.0).
    pub no_local: bool,
    /// Keep the RETAIN flag of forwarded publishes (5.0).
    pub retain_as_published: bool,
    /// When to send retained messages (5.0).
    pub retain_handling: RetainHandling,
}

/// One entry of a SUBSCRIBE payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subscription {
    /// The topic filter.
    pub filter: TopicFilter,
    /// Its options.
    pub options: SubscriptionOptions,
}

/// A filter of a 5.0 SUBSCRIBE or UNSUBSCRIBE that is a well-formed UTF-8
/// string but not a valid topic filter (`a/#/b`, `a+`, `$share/g`): the
/// packet parses, and the server answers that filter alone with 0x8F Topic
/// Filter invalid while serving the others, as if each filter had come in
/// a SUBSCRIBE of its own [MQTT-3.8.4-5], [MQTT-3.10.4-6]. (3.1.1 has no
/// such code: there an invalid filter is a protocol violation that closes
/// the connection [MQTT-4.8.0-1 (3.1.1)], and the decoder refuses it.)
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefusedFilter {
    /// Its place among all the filters of the packet, from 0: its reason
    /// code goes at this place in the SUBACK / UNSUBACK [MQTT-3.9.3-1],
    /// [MQTT-3.11.3-1].
    pub position: usize,
    /// The filter as sent.
    pub text: ByteString,
    /// Why it is not a topic filter.
    pub error: TopicError,
    /// Its Subscription Options (SUBSCRIBE only; default in UNSUBSCRIBE).
    pub options: SubscriptionOptions,
}

/// SUBSCRIBE [MQTT-3.8]; at least one filter [MQTT-3.8.3-2].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subscribe {
    /// Packet identifier.
    pub packet_id: PacketId,
    /// Properties (5.0).
    pub properties: SubscribeProperties,
    /// The valid subscriptions, in order. Not stored inline: beside
    /// `refused`, an inline entry would make [`Packet`] larger than its
    /// largest other variant, a size every PUBLISH pays as it moves.
    pub subscriptions: SmallVec<[Subscription; 0]>,
    /// The 5.0 filters that are not valid topic filters, by increasing
    /// position; empty in nearly every packet (and then not allocated).
    pub refused: Vec<RefusedFilter>,
}

impl Subscribe {
    /// How many filters the packet carries, valid or not.
    pub fn filter_count(&self) -> usize {
        self.subscriptions.len() + self.refused.len()
    }
}

/// SUBACK [MQTT-3.9]; one code per subscription, in order [MQTT-3.8.4-6].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubAck {
    /// Packet identifier of the SUBSCRIBE.
    pub packet_id: PacketId,
    /// Properties (5.0).
    pub properties: AckProperties,
    /// Granted QoS or failure per subscription. On 3.1 / 3.1.1 written
    /// as [`ReasonCode::to_v3_suback_return_code`].
    pub reasons: SmallVec<[ReasonCode; 1]>,
}

/// UNSUBSCRIBE [MQTT-3.10]; at least one filter [MQTT-3.10.3-2].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unsubscribe {
    /// Packet identifier.
    pub packet_id: PacketId,
    /// Properties (5.0).
    pub properties: UnsubscribeProperties,
    /// The valid filters to remove, in order (not inline, as in
    /// [`Subscribe`]).
    pub filters: SmallVec<[TopicFilter; 0]>,
    /// The 5.0 filters that are not valid topic filters, by increasing
    /// position (see [`RefusedFilter`]); usually empty.
    pub refused: Vec<RefusedFilter>,
}

/// UNSUBACK [MQTT-3.11].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnsubAck {
    /// Packet identifier of the UNSUBSCRIBE.
    pub packet_id: PacketId,
    /// Properties (5.0).
    pub properties: AckProperties,
    /// One code per filter (5.0); empty on 3.1 / 3.1.1, which have none.
    pub reasons: SmallVec<[ReasonCode; 1]>,
}

/// DISCONNECT [MQTT-3.14]; 3.1 / 3.1.1 carry neither reason nor
/// properties.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Disconnect {
    /// Why the connection ends (5.0; Normal disconnection otherwise).
    pub reason: ReasonCode,
    /// Properties (5.0).
    pub properties: DisconnectProperties,
}

/// AUTH [MQTT-3.15] (5.0 only).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Auth {
    /// Success, Continue authentication or Re-authenticate.
    pub reason: ReasonCode,
    /// Properties.
    pub properties: AuthProperties,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every PUBLISH is decoded into a `Packet` and moved into its
    /// session: the per-filter refusals of SUBSCRIBE / UNSUBSCRIBE must not
    /// make it larger than DISCONNECT, its largest variant before them.
    #[test]
    fn a_packet_is_no_larger_than_its_disconnect_variant() {
        let packet = std::mem::size_of::<Packet>();
        assert!(packet <= 104, "Packet grew to {packet} bytes");
        assert!(std::mem::size_of::<Subscribe>() <= std::mem::size_of::<Disconnect>());
        assert!(std::mem::size_of::<Unsubscribe>() <= std::mem::size_of::<Disconnect>());
    }
}
