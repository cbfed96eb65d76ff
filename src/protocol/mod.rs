//! The MQTT wire protocol, sans IO: every control packet of MQTT 3.1
//! (protocol name `MQIsdp`, level 3), 3.1.1 (level 4) and 5.0 (level 5).
//!
//! This module owns the byte format and nothing else. It never touches a
//! socket, reads no clock and logs nothing; the session layer decides what a
//! packet *means*.
//!
//! * [`Decoder`] is resumable: incomplete input is `Ok(None)`, the packet
//!   size is checked against a configurable maximum as soon as the fixed
//!   header is complete (before the body is buffered), and payloads come out
//!   as [`bytes::Bytes`] slices of the read buffer, never copied.
//! * [`Packet::encode`] computes the exact size first and writes once into a
//!   [`bytes::BytesMut`].
//! * Topic names and filters are [`TopicName`] and [`TopicFilter`]
//!   newtypes, validated when parsed.
//! * Every [`DecodeError`] maps to the [`ReasonCode`] the broker answers
//!   with ([`DecodeError::reason_code`]).

mod decode;
mod encode;
mod error;
mod packet;
mod properties;
mod reason;
mod redact;
mod topic;
pub mod websocket;
mod wire;

pub use decode::{decode_packet, Decoder};
pub use encode::{EncodeError, Field};
pub use error::DecodeError;
pub use packet::*;
pub use properties::*;
pub use reason::ReasonCode;
pub use topic::{topic_matches, TopicError, TopicFilter, TopicName};

/// The protocol level a connection speaks, chosen by its CONNECT packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ProtocolVersion {
    /// MQTT 3.1: protocol name `MQIsdp`, level 3.
    V3_1,
    /// MQTT 3.1.1 (OASIS standard): protocol name `MQTT`, level 4.
    V3_1_1,
    /// MQTT 5.0 (OASIS standard): protocol name `MQTT`, level 5.
    V5,
}

impl ProtocolVersion {
    /// The protocol level byte of CONNECT [MQTT-3.1.2-2].
    pub const fn level(self) -> u8 {
        match self {
            Self::V3_1 => 3,
            Self::V3_1_1 => 4,
            Self::V5 => 5,
        }
    }

    /// The protocol name of CONNECT [MQTT-3.1.2-1].
    pub const fn name(self) -> &'static str {
        match self {
            Self::V3_1 => "MQIsdp",
            Self::V3_1_1 | Self::V5 => "MQTT",
        }
    }

    /// Whether packets carry v5 properties and reason codes.
    pub const fn is_v5(self) -> bool {
        matches!(self, Self::V5)
    }
}

impl std::fmt::Display for ProtocolVersion {
    /// The version as people name it: `3.1`, `3.1.1`, `5.0`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::V3_1 => "3.1",
            Self::V3_1_1 => "3.1.1",
            Self::V5 => "5.0",
        })
    }
}

/// Quality of service of a message [MQTT-4.3].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
#[repr(u8)]
pub enum QoS {
    /// Fire and forget.
    #[default]
    AtMostOnce = 0,
    /// Acknowledged delivery, possibly duplicated.
    AtLeastOnce = 1,
    /// Assured exactly-once delivery.
    ExactlyOnce = 2,
}

impl QoS {
    /// Parses the two-bit QoS field; 3 is reserved [MQTT-3.3.1-4].
    pub const fn from_u8(value: u8) -> Option<Self> {
        match value {
            0 => Some(Self::AtMostOnce),
            1 => Some(Self::AtLeastOnce),
            2 => Some(Self::ExactlyOnce),
            _ => None,
        }
    }
}

/// A packet identifier: never zero where the packet carries one
/// [MQTT-2.3.1-1].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PacketId(std::num::NonZeroU16);

impl PacketId {
    /// `None` for 0, which is not a valid packet identifier.
    pub const fn new(value: u16) -> Option<Self> {
        match std::num::NonZeroU16::new(value) {
            Some(v) => Some(Self(v)),
            None => None,
        }
    }

    /// The identifier as sent on the wire.
    pub const fn get(self) -> u16 {
        self.0.get()
    }

    /// The next identifier after this one, wrapping from 65535 to 1.
    pub const fn next(self) -> Self {
        match self.0.checked_add(1) {
            Some(v) => Self(v),
            None => Self(std::num::NonZeroU16::MIN),
        }
    }
}
