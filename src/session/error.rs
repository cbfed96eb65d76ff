//! Why a session closes a connection on its own: the client broke a rule of
//! the protocol. Each error carries the reason code to close with.

use crate::protocol::{PacketType, ReasonCode};

/// A protocol violation by the client. The session has already closed the
/// connection when it returns one (a v5 client gets a DISCONNECT with
/// [`SessionError::reason_code`]; MQTT 3.1 / 3.1.1 clients just have their
/// connection closed [MQTT-4.8.0-1]).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    /// A second CONNECT on the same network connection [MQTT-3.1.0-2].
    #[error("second CONNECT on a connection")]
    SecondConnect,
    /// A packet only a server sends (CONNACK, SUBACK, UNSUBACK, PINGRESP), or
    /// AUTH without an authentication method in CONNECT [MQTT-4.12.0-7].
    #[error("{0:?} is not accepted from a client")]
    UnexpectedPacket(PacketType),
    /// A packet after the connection was closed (for example after
    /// DISCONNECT [MQTT-3.14.4-1]), or before any CONNECT was accepted.
    #[error("no open connection")]
    NotConnected,
    /// A QoS 1/2 PUBLISH without a packet identifier [MQTT-2.3.1-1].
    #[error("QoS > 0 PUBLISH without a packet identifier")]
    MissingPacketId,
    /// A PUBLISH with an empty topic and no Topic Alias [MQTT-4.7.3-1].
    #[error("PUBLISH with an empty topic name")]
    EmptyTopic,
    /// A PUBLISH with a Subscription Identifier [MQTT-3.3.4-6].
    #[error("Subscription Identifier in a PUBLISH from a client")]
    SubscriptionIdentifierFromClient,
    /// A Topic Alias above the Topic Alias Maximum of CONNACK
    /// [MQTT-3.3.2-9].
    #[error("topic alias {0} exceeds the maximum")]
    TopicAliasInvalid(u16),
    /// An empty topic with a Topic Alias that has no mapping on this
    /// connection (5.0 §3.3.2.3.4).
    #[error("topic alias {0} has no mapping")]
    UnknownTopicAlias(u16),
    /// More unacknowledged QoS 1/2 PUBLISH packets than the Receive Maximum
    /// of CONNACK [MQTT-3.3.4-7].
    #[error("receive maximum exceeded")]
    ReceiveMaximumExceeded,
    /// A QoS 0 PUBLISH whose Payload Format Indicator says UTF-8 and whose
    /// payload is not (5.0 §3.3.2.3.2, [MQTT-3.3.2-4]); QoS 1/2 ones are
    /// refused in their PUBACK / PUBREC instead.
    #[error("payload is not UTF-8 but its Payload Format Indicator says it is")]
    PayloadFormatInvalid,
    /// A PUBLISH with RETAIN 1 while `retain_available = false`: 5.0 told
    /// the client Retain Available 0 in CONNACK [MQTT-3.2.2-14] ("If the
    /// Server receives such a packet, this is a Protocol Error. The Server
    /// SHOULD send a DISCONNECT with Reason Code of 0x9A"); 3.1.1 has no way
    /// to tell, and its connection is closed as Mosquitto does.
    #[error("RETAIN set while retained messages are not available")]
    RetainNotSupported,
    /// A PUBLISH whose topic passes `max_topic_length` or
    /// `max_topic_levels` that cannot be refused in an acknowledgement: a
    /// v5 QoS 0 one (DISCONNECT 0x90 Topic Name invalid, "The Topic Name
    /// is correctly formed, but is not accepted by this Client or Server",
    /// table 3-10) or any 3.1/3.1.1 one (no acknowledgement can refuse a
    /// PUBLISH there: the connection is closed).
    #[error("topic name past limits.max_topic_length or limits.max_topic_levels")]
    TopicLimitExceeded,
    /// Not the client's fault: a 3.1/3.1.1 QoS 1/2 PUBLISH while the
    /// durable log cannot be written (disk full, EIO). 3.1.1 cannot refuse
    /// a PUBLISH in its acknowledgement, and a positive one would claim a
    /// durability the broker cannot give; §3.3.5 leaves a server that does
    /// not perform a PUBLISH two choices: "It MUST either make a positive
    /// acknowledgement, according to the normal QoS rules, or close the
    /// Network Connection" [MQTT-3.3.5-2]. The connection is closed; the
    /// client re-sends the message when it reconnects [MQTT-4.4.0-1]. (A
    /// 5.0 client is answered with 0x97 Quota exceeded instead.)
    #[error("the durable log cannot be written (disk full or I/O error)")]
    StoreUnavailable,
    /// A DISCONNECT setting a non-zero Session Expiry Interval after a
    /// CONNECT whose interval was 0 [MQTT-3.14.2-2].
    #[error("session expiry interval set at DISCONNECT after 0 in CONNECT")]
    SessionExpiryFromZero,
    /// An AUTH whose method is not the CONNECT's [MQTT-4.12.1-1],
    /// [MQTT-4.12.0-5].
    #[error("AUTH with another authentication method than CONNECT's")]
    AuthMethodChanged,
    /// An AUTH with a reason code that does not fit the exchange: Success
    /// from a client, Re-authenticate during a re-authentication, Continue
    /// outside one.
    #[error("AUTH with reason code {0:?} out of turn")]
    UnexpectedAuth(ReasonCode),
    /// An acknowledgement of the wrong kind for a packet id in flight: a
    /// QoS 1 PUBLISH is acknowledged by PUBACK only [MQTT-4.3.2-1], a QoS 2
    /// PUBLISH by PUBREC and its PUBREL by PUBCOMP [MQTT-4.3.3-1].
    #[error("{packet:?} for packet id {packet_id}, which awaits {expected:?}")]
    WrongAcknowledgement {
        /// What the client sent.
        packet: PacketType,
        /// The packet identifier it acknowledged.
        packet_id: u16,
        /// What the flow of that packet identifier awaits.
        expected: PacketType,
    },
}

impl SessionError {
    /// The reason code to close the connection with (sent in a v5
    /// DISCONNECT).
    pub fn reason_code(&self) -> ReasonCode {
        match self {
            Self::SecondConnect
            | Self::UnexpectedPacket(_)
            | Self::NotConnected
            | Self::SubscriptionIdentifierFromClient
            | Self::EmptyTopic
            | Self::UnknownTopicAlias(_)
            | Self::SessionExpiryFromZero
            | Self::AuthMethodChanged
            | Self::UnexpectedAuth(_)
            | Self::WrongAcknowledgement { .. } => ReasonCode::ProtocolError,
            Self::MissingPacketId => ReasonCode::MalformedPacket,
            Self::TopicAliasInvalid(_) => ReasonCode::TopicAliasInvalid,
            Self::ReceiveMaximumExceeded => ReasonCode::ReceiveMaximumExceeded,
            Self::PayloadFormatInvalid => ReasonCode::PayloadFormatInvalid,
            Self::RetainNotSupported => ReasonCode::RetainNotSupported,
            Self::TopicLimitExceeded => ReasonCode::TopicNameInvalid,
            Self::StoreUnavailable => ReasonCode::QuotaExceeded,
        }
    }
}
