//! Decode errors: each names the rule broken and maps to the reason code the
//! broker answers with (in CONNACK before a session exists, in DISCONNECT
//! after; MQTT 3.1 / 3.1.1 peers just have their connection closed).

use super::packet::PacketType;
use super::properties::PropertyId;
use super::{ReasonCode, TopicError};

/// Why bytes from the network are not a valid MQTT packet.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Packet type 0 is reserved, and 15 (AUTH) exists only in 5.0
    /// [MQTT-2.1.2].
    #[error("reserved or unknown packet type {0}")]
    InvalidPacketType(u8),
    /// The fixed-header flags of this packet type are fixed [MQTT-2.1.3-1].
    #[error("invalid fixed header flags {flags:#06b} for {packet:?}")]
    InvalidFixedHeaderFlags {
        /// The packet type.
        packet: PacketType,
        /// The low nibble received.
        flags: u8,
    },
    /// A PUBLISH with both QoS bits set [MQTT-3.3.1-4].
    #[error("QoS 3 is reserved")]
    InvalidQoS,
    /// DUP set on a QoS 0 PUBLISH [MQTT-3.3.1-2].
    #[error("DUP flag set on a QoS 0 PUBLISH")]
    DupWithQoS0,
    /// A Variable Byte Integer longer than four bytes, or not in its
    /// shortest form [MQTT-1.5.5-1].
    #[error("malformed variable byte integer")]
    MalformedVarInt,
    /// The packet is larger than the receiver's maximum [MQTT-3.2.2-15].
    #[error("packet of {size} bytes exceeds the maximum of {max}")]
    PacketTooLarge {
        /// Whole packet size, fixed header included.
        size: usize,
        /// The configured maximum.
        max: u32,
    },
    /// A field runs past the end of the packet.
    #[error("packet ends inside a field")]
    Truncated,
    /// Bytes are left after the last field of a packet.
    #[error("{0} unexpected bytes at the end of the packet")]
    TrailingBytes(usize),
    /// A UTF-8 Encoded String is not valid UTF-8 (surrogates included)
    /// [MQTT-1.5.4-1].
    #[error("string is not valid UTF-8")]
    InvalidUtf8,
    /// A UTF-8 Encoded String contains U+0000 [MQTT-1.5.4-2].
    #[error("string contains U+0000")]
    NullCharacter,
    /// The protocol name is neither `MQTT` nor `MQIsdp` [MQTT-3.1.2-1].
    #[error("unknown protocol name")]
    InvalidProtocolName,
    /// The protocol level is not 3, 4 or 5, or does not fit the name
    /// [MQTT-3.1.2-2].
    #[error("unsupported protocol level {0}")]
    UnsupportedProtocolVersion(u8),
    /// The reserved bit of the CONNECT flags is set [MQTT-3.1.2-3] (3.1.1
    /// and 5.0; MQTT 3.1 leaves it unchecked).
    #[error("reserved CONNECT flag is set")]
    ReservedConnectFlag,
    /// Will QoS or Will Retain without the Will Flag [MQTT-3.1.2-11],
    /// [MQTT-3.1.2-13], [MQTT-3.1.2-15], or Will QoS 3 [MQTT-3.1.2-14].
    #[error("invalid will flags")]
    InvalidWillFlags,
    /// Password Flag without User Name Flag before 5.0 [MQTT-3.1.2-22].
    #[error("password without user name")]
    PasswordWithoutUsername,
    /// A packet identifier of 0 [MQTT-2.3.1-1].
    #[error("packet identifier is 0")]
    ZeroPacketId,
    /// A SUBSCRIBE or UNSUBSCRIBE without any topic filter
    /// [MQTT-3.8.3-3], [MQTT-3.10.3-2].
    #[error("no topic filter in {0:?}")]
    NoTopicFilters(PacketType),
    /// Reserved bits of the Subscription Options set [MQTT-3.8.3-5], or
    /// Retain Handling 3, or QoS 3.
    #[error("invalid subscription options {0:#04x}")]
    InvalidSubscriptionOptions(u8),
    /// Retain Handling 3 or Maximum QoS 3 in a 5.0 SUBSCRIBE: a protocol
    /// error (MQTT 5.0 section 3.8.3.1), where 3.1.1 calls any bad option
    /// bits malformed.
    #[error("invalid subscription option value {0:#04x}")]
    InvalidSubscriptionOptionValue(u8),
    /// No Local on a shared subscription [MQTT-3.8.3-4].
    #[error("No Local set on a shared subscription")]
    NoLocalOnSharedSubscription,
    /// An invalid topic name [MQTT-3.3.2-2], [MQTT-4.7.3-1].
    #[error("invalid topic name: {0}")]
    InvalidTopicName(TopicError),
    /// An invalid topic filter [MQTT-4.7.1-2], [MQTT-4.7.1-3], [MQTT-4.8.2-1].
    #[error("invalid topic filter: {0}")]
    InvalidTopicFilter(TopicError),
    /// An undefined property identifier [MQTT-2.2.2.2].
    #[error("unknown property identifier {0:#04x}")]
    UnknownProperty(u8),
    /// A property the packet type does not allow [MQTT-2.2.2.2].
    #[error("property {property:?} is not allowed in {packet:?}")]
    PropertyNotAllowed {
        /// The property.
        property: PropertyId,
        /// The packet (Connect for will properties).
        packet: PacketType,
    },
    /// A property other than User Property or Subscription Identifier
    /// given twice [MQTT-2.2.2.2].
    #[error("property {0:?} appears more than once")]
    DuplicateProperty(PropertyId),
    /// A property value outside its allowed range, e.g. Receive Maximum 0
    /// [MQTT-3.1.2.11.3] or Topic Alias 0 [MQTT-3.3.2-8].
    #[error("invalid value for property {0:?}")]
    InvalidPropertyValue(PropertyId),
    /// Authentication Data without Authentication Method [MQTT-3.1.2.11.10].
    #[error("authentication data without authentication method")]
    AuthDataWithoutMethod,
    /// A v5 PUBLISH with an empty topic and no Topic Alias (MQTT 5.0
    /// section 3.3.2.3.4).
    #[error("empty topic name without a topic alias")]
    EmptyTopicWithoutAlias,
    /// A reason code the packet type does not allow [MQTT-2.4].
    #[error("reason code {code:#04x} is not valid in {packet:?}")]
    InvalidReasonCode {
        /// The packet type.
        packet: PacketType,
        /// The byte received.
        code: u8,
    },
    /// A CONNACK with reserved acknowledge flags set [MQTT-3.2.2-1], or
    /// Session Present with a refusal [MQTT-3.2.2-4].
    #[error("reserved CONNACK flags set")]
    InvalidConnAckFlags,
}

impl DecodeError {
    /// The reason code to answer this error with (in CONNACK or
    /// DISCONNECT).
    pub fn reason_code(&self) -> ReasonCode {
        use DecodeError::*;
        match self {
            PacketTooLarge { .. } => ReasonCode::PacketTooLarge,
            UnsupportedProtocolVersion(_) | InvalidProtocolName => {
                ReasonCode::UnsupportedProtocolVersion
            }
            InvalidTopicName(_) => ReasonCode::TopicNameInvalid,
            InvalidTopicFilter(_) => ReasonCode::TopicFilterInvalid,
            // MQTT 5.0 section 3.3.2.3.4: Topic Alias 0 is answered with 0x94.
            InvalidPropertyValue(PropertyId::TopicAlias) => ReasonCode::TopicAliasInvalid,
            NoTopicFilters(_)
            | InvalidSubscriptionOptionValue(_)
            | NoLocalOnSharedSubscription
            | DuplicateProperty(_)
            | InvalidPropertyValue(_)
            | AuthDataWithoutMethod
            | EmptyTopicWithoutAlias => ReasonCode::ProtocolError,
            InvalidPacketType(_)
            | InvalidFixedHeaderFlags { .. }
            | InvalidQoS
            | DupWithQoS0
            | MalformedVarInt
            | Truncated
            | TrailingBytes(_)
            | InvalidUtf8
            | NullCharacter
            | ReservedConnectFlag
            | InvalidWillFlags
            | PasswordWithoutUsername
            | ZeroPacketId
            | InvalidSubscriptionOptions(_)
            | UnknownProperty(_)
            | PropertyNotAllowed { .. }
            | InvalidReasonCode { .. }
            | InvalidConnAckFlags => ReasonCode::MalformedPacket,
        }
    }
}
