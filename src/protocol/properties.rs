//! MQTT 5.0 properties [MQTT-2.2.2]: one struct per packet type holding only
//! the properties that packet may carry, so a property in the wrong packet
//! cannot even be represented.
//!
//! Every property may appear at most once, except User Property and
//! Subscription Identifier [MQTT-2.2.2.2]. All structs are empty (and cost
//! nothing to encode) on MQTT 3.1 / 3.1.1 connections.

use super::redact::Redacted;
use super::{QoS, TopicName};
use bytes::Bytes;
use bytestring::ByteString;
use smallvec::SmallVec;
use std::fmt;
use std::num::{NonZeroU16, NonZeroU32};

/// Property identifiers and their data types [MQTT-2.2.2.2].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum PropertyId {
    /// Byte; PUBLISH, Will.
    PayloadFormatIndicator = 0x01,
    /// Four Byte Integer; PUBLISH, Will.
    MessageExpiryInterval = 0x02,
    /// UTF-8 String; PUBLISH, Will.
    ContentType = 0x03,
    /// UTF-8 String (a topic name); PUBLISH, Will.
    ResponseTopic = 0x08,
    /// Binary Data; PUBLISH, Will.
    CorrelationData = 0x09,
    /// Variable Byte Integer; PUBLISH (repeatable), SUBSCRIBE.
    SubscriptionIdentifier = 0x0B,
    /// Four Byte Integer; CONNECT, CONNACK, DISCONNECT.
    SessionExpiryInterval = 0x11,
    /// UTF-8 String; CONNACK.
    AssignedClientIdentifier = 0x12,
    /// Two Byte Integer; CONNACK.
    ServerKeepAlive = 0x13,
    /// UTF-8 String; CONNECT, CONNACK, AUTH.
    AuthenticationMethod = 0x15,
    /// Binary Data; CONNECT, CONNACK, AUTH.
    AuthenticationData = 0x16,
    /// Byte; CONNECT.
    RequestProblemInformation = 0x17,
    /// Four Byte Integer; Will.
    WillDelayInterval = 0x18,
    /// Byte; CONNECT.
    RequestResponseInformation = 0x19,
    /// UTF-8 String; CONNACK.
    ResponseInformation = 0x1A,
    /// UTF-8 String; CONNACK, DISCONNECT.
    ServerReference = 0x1C,
    /// UTF-8 String; CONNACK, PUBACK, PUBREC, PUBREL, PUBCOMP, SUBACK,
    /// UNSUBACK, DISCONNECT, AUTH.
    ReasonString = 0x1F,
    /// Two Byte Integer; CONNECT, CONNACK.
    ReceiveMaximum = 0x21,
    /// Two Byte Integer; CONNECT, CONNACK.
    TopicAliasMaximum = 0x22,
    /// Two Byte Integer; PUBLISH.
    TopicAlias = 0x23,
    /// Byte; CONNACK.
    MaximumQoS = 0x24,
    /// Byte; CONNACK.
    RetainAvailable = 0x25,
    /// UTF-8 String Pair; every packet with properties (repeatable).
    UserProperty = 0x26,
    /// Four Byte Integer; CONNECT, CONNACK.
    MaximumPacketSize = 0x27,
    /// Byte; CONNACK.
    WildcardSubscriptionAvailable = 0x28,
    /// Byte; CONNACK.
    SubscriptionIdentifierAvailable = 0x29,
    /// Byte; CONNACK.
    SharedSubscriptionAvailable = 0x2A,
}

impl PropertyId {
    /// Parses an identifier byte; `None` for an undefined identifier.
    pub const fn from_u8(value: u8) -> Option<Self> {
        use PropertyId::*;
        Some(match value {
            0x01 => PayloadFormatIndicator,
            0x02 => MessageExpiryInterval,
            0x03 => ContentType,
            0x08 => ResponseTopic,
            0x09 => CorrelationData,
            0x0B => SubscriptionIdentifier,
            0x11 => SessionExpiryInterval,
            0x12 => AssignedClientIdentifier,
            0x13 => ServerKeepAlive,
            0x15 => AuthenticationMethod,
            0x16 => AuthenticationData,
            0x17 => RequestProblemInformation,
            0x18 => WillDelayInterval,
            0x19 => RequestResponseInformation,
            0x1A => ResponseInformation,
            0x1C => ServerReference,
            0x1F => ReasonString,
            0x21 => ReceiveMaximum,
            0x22 => TopicAliasMaximum,
            0x23 => TopicAlias,
            0x24 => MaximumQoS,
            0x25 => RetainAvailable,
            0x26 => UserProperty,
            0x27 => MaximumPacketSize,
            0x28 => WildcardSubscriptionAvailable,
            0x29 => SubscriptionIdentifierAvailable,
            0x2A => SharedSubscriptionAvailable,
            _ => return None,
        })
    }
}

/// User Properties: name/value pairs, repeatable, order preserved
/// [MQTT-3.3.2-18]. An empty list does not allocate.
pub type UserProperties = Vec<(ByteString, ByteString)>;

/// Subscription Identifiers of a PUBLISH sent to a subscriber: one per
/// matching subscription that had one [MQTT-3.3.4-3]; usually zero or one.
pub type SubscriptionIds = SmallVec<[NonZeroU32; 1]>;

/// The largest Subscription Identifier, a Variable Byte Integer
/// [MQTT-2.2.2.2].
pub const MAX_SUBSCRIPTION_ID: u32 = 268_435_455;

/// Properties of CONNECT [MQTT-3.1.2.11]. Their `Debug` shows the
/// Authentication Data's length only.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ConnectProperties {
    /// Seconds the session outlives the connection; absent means 0.
    pub session_expiry_interval: Option<u32>,
    /// QoS 1/2 publishes the client will process at once; never 0.
    pub receive_maximum: Option<NonZeroU16>,
    /// The largest packet the client accepts; never 0.
    pub maximum_packet_size: Option<NonZeroU32>,
    /// Topic aliases the client accepts from the server.
    pub topic_alias_maximum: Option<u16>,
    /// Whether the client wants Response Information in CONNACK.
    pub request_response_information: Option<bool>,
    /// Whether the server may send Reason Strings and User Properties on
    /// packets other than PUBLISH, CONNACK and DISCONNECT.
    pub request_problem_information: Option<bool>,
    /// User Properties.
    pub user_properties: UserProperties,
    /// Extended authentication method.
    pub authentication_method: Option<ByteString>,
    /// Extended authentication data; only with a method.
    pub authentication_data: Option<Bytes>,
}

impl fmt::Debug for ConnectProperties {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Destructured, so that a new field cannot be left out unnoticed.
        let Self {
            session_expiry_interval,
            receive_maximum,
            maximum_packet_size,
            topic_alias_maximum,
            request_response_information,
            request_problem_information,
            user_properties,
            authentication_method,
            authentication_data,
        } = self;
        f.debug_struct("ConnectProperties")
            .field("session_expiry_interval", session_expiry_interval)
            .field("receive_maximum", receive_maximum)
            .field("maximum_packet_size", maximum_packet_size)
            .field("topic_alias_maximum", topic_alias_maximum)
            .field("request_response_information", request_response_information)
            .field("request_problem_information", request_problem_information)
            .field("user_properties", user_properties)
            .field("authentication_method", authentication_method)
            .field("authentication_data", &Redacted(authentication_data))
            .finish()
    }
}

/// Properties of the Will Message inside CONNECT [MQTT-3.1.3.2].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WillProperties {
    /// Seconds to wait before publishing the will.
    pub will_delay_interval: Option<u32>,
    /// `true`: the payload is UTF-8.
    pub payload_format_indicator: Option<bool>,
    /// Lifetime of the will message in seconds.
    pub message_expiry_interval: Option<u32>,
    /// MIME type of the payload.
    pub content_type: Option<ByteString>,
    /// Topic for a response.
    pub response_topic: Option<TopicName>,
    /// Correlation data for a response.
    pub correlation_data: Option<Bytes>,
    /// User Properties.
    pub user_properties: UserProperties,
}

/// Properties of CONNACK [MQTT-3.2.2.3]. Their `Debug` shows the
/// Authentication Data's length only.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ConnAckProperties {
    /// Session expiry the server will use, when it differs from the request.
    pub session_expiry_interval: Option<u32>,
    /// QoS 1/2 publishes the server will process at once; never 0.
    pub receive_maximum: Option<NonZeroU16>,
    /// Highest QoS the server supports (absent: 2).
    pub maximum_qos: Option<QoS>,
    /// Whether retained messages are supported (absent: yes).
    pub retain_available: Option<bool>,
    /// The largest packet the server accepts; never 0.
    pub maximum_packet_size: Option<NonZeroU32>,
    /// The client id the server assigned to an empty one.
    pub assigned_client_identifier: Option<ByteString>,
    /// Topic aliases the server accepts from the client.
    pub topic_alias_maximum: Option<u16>,
    /// Human-readable diagnostic.
    pub reason_string: Option<ByteString>,
    /// User Properties.
    pub user_properties: UserProperties,
    /// Whether wildcard subscriptions are supported (absent: yes).
    pub wildcard_subscription_available: Option<bool>,
    /// Whether subscription identifiers are supported (absent: yes).
    pub subscription_identifiers_available: Option<bool>,
    /// Whether shared subscriptions are supported (absent: yes).
    pub shared_subscription_available: Option<bool>,
    /// Keep alive the server imposes instead of the requested one.
    pub server_keep_alive: Option<u16>,
    /// Basis for response topics.
    pub response_information: Option<ByteString>,
    /// Another server to use.
    pub server_reference: Option<ByteString>,
    /// Extended authentication method.
    pub authentication_method: Option<ByteString>,
    /// Extended authentication data.
    pub authentication_data: Option<Bytes>,
}

impl fmt::Debug for ConnAckProperties {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Destructured, so that a new field cannot be left out unnoticed.
        let Self {
            session_expiry_interval,
            receive_maximum,
            maximum_qos,
            retain_available,
            maximum_packet_size,
            assigned_client_identifier,
            topic_alias_maximum,
            reason_string,
            user_properties,
            wildcard_subscription_available,
            subscription_identifiers_available,
            shared_subscription_available,
            server_keep_alive,
            response_information,
            server_reference,
            authentication_method,
            authentication_data,
        } = self;
        f.debug_struct("ConnAckProperties")
            .field("session_expiry_interval", session_expiry_interval)
            .field("receive_maximum", receive_maximum)
            .field("maximum_qos", maximum_qos)
            .field("retain_available", retain_available)
            .field("maximum_packet_size", maximum_packet_size)
            .field("assigned_client_identifier", assigned_client_identifier)
            .field("topic_alias_maximum", topic_alias_maximum)
            .field("reason_string", reason_string)
            .field("user_properties", user_properties)
            .field("wildcard_subscription_available", wildcard_subscription_available)
            .field("subscription_identifiers_available", subscription_identifiers_available)
            .field("shared_subscription_available", shared_subscription_available)
            .field("server_keep_alive", server_keep_alive)
            .field("response_information", response_information)
            .field("server_reference", server_reference)
            .field("authentication_method", authentication_method)
            .field("authentication_data", &Redacted(authentication_data))
            .finish()
    }
}

/// Properties of PUBLISH [MQTT-3.3.2.3].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PublishProperties {
    /// `true`: the payload is UTF-8.
    pub payload_format_indicator: Option<bool>,
    /// Lifetime of the message in seconds.
    pub message_expiry_interval: Option<u32>,
    /// Topic alias; never 0 [MQTT-3.3.2-8].
    pub topic_alias: Option<NonZeroU16>,
    /// Topic for a response.
    pub response_topic: Option<TopicName>,
    /// Correlation data for a response.
    pub correlation_data: Option<Bytes>,
    /// User Properties.
    pub user_properties: UserProperties,
    /// Identifiers of the matching subscriptions (server to client only).
    pub subscription_identifiers: SubscriptionIds,
    /// MIME type of the payload.
    pub content_type: Option<ByteString>,
}

impl PublishProperties {
    /// The empty block: what every MQTT 3.1 / 3.1.1 PUBLISH carries.
    pub const EMPTY: Self = Self {
        payload_format_indicator: None,
        message_expiry_interval: None,
        topic_alias: None,
        response_topic: None,
        correlation_data: None,
        user_properties: Vec::new(),
        subscription_identifiers: SmallVec::new_const(),
        content_type: None,
    };

    /// `true` when no property is set.
    pub fn is_empty(&self) -> bool {
        *self == Self::EMPTY
    }
}

/// The properties of a PUBLISH (or of a message), kept out of line.
///
/// Most PUBLISH packets carry no properties (all of 3.1 / 3.1.1, most of
/// 5.0). Inline, the 160-byte block made every `Publish` 232 bytes and every
/// `Packet` 256, and copying those out of the decoder was most of the time
/// it took to decode a small PUBLISH (measured with perf on
/// `benches/codec.rs`). Here an empty block is a null pointer: it reads as
/// [`PublishProperties::EMPTY`] through `Deref`, and only
/// [`BoxedPublishProperties::make_mut`] allocates it. Equality compares the
/// properties, so an allocated empty block equals an absent one.
#[derive(Clone, Default)]
pub struct BoxedPublishProperties(Option<Box<PublishProperties>>);

/// What an absent block reads as.
static EMPTY_PUBLISH_PROPERTIES: PublishProperties = PublishProperties::EMPTY;

impl BoxedPublishProperties {
    /// No properties; allocates nothing.
    pub const fn none() -> Self {
        Self(None)
    }

    /// `true` when no property is set.
    pub fn is_empty(&self) -> bool {
        self.0.as_deref().is_none_or(PublishProperties::is_empty)
    }

    /// The block to change, allocated first if absent. Hot paths that only
    /// may change something use [`Self::get_mut`] instead.
    pub fn make_mut(&mut self) -> &mut PublishProperties {
        self.0.get_or_insert_with(Box::default)
    }

    /// The block to change, if one is allocated; never allocates.
    pub fn get_mut(&mut self) -> Option<&mut PublishProperties> {
        self.0.as_deref_mut()
    }
}

impl From<PublishProperties> for BoxedPublishProperties {
    /// Boxes `properties` unless the block is empty.
    fn from(properties: PublishProperties) -> Self {
        if properties.is_empty() {
            Self(None)
        } else {
            Self(Some(Box::new(properties)))
        }
    }
}

impl std::ops::Deref for BoxedPublishProperties {
    type Target = PublishProperties;

    fn deref(&self) -> &PublishProperties {
        self.0.as_deref().unwrap_or(&EMPTY_PUBLISH_PROPERTIES)
    }
}

impl PartialEq for BoxedPublishProperties {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl Eq for BoxedPublishProperties {}

impl fmt::Debug for BoxedPublishProperties {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        (**self).fmt(f)
    }
}

/// Properties of PUBACK, PUBREC, PUBREL, PUBCOMP, SUBACK and UNSUBACK:
/// a reason string and user properties.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AckProperties {
    /// Human-readable diagnostic.
    pub reason_string: Option<ByteString>,
    /// User Properties.
    pub user_properties: UserProperties,
}

/// Properties of SUBSCRIBE [MQTT-3.8.2.1].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SubscribeProperties {
    /// Identifier given back in matching publishes; 1..=268,435,455.
    pub subscription_identifier: Option<NonZeroU32>,
    /// User Properties.
    pub user_properties: UserProperties,
}

/// Properties of UNSUBSCRIBE [MQTT-3.10.2.1].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UnsubscribeProperties {
    /// User Properties.
    pub user_properties: UserProperties,
}

/// Properties of DISCONNECT [MQTT-3.14.2.2].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DisconnectProperties {
    /// New session expiry, client to server only.
    pub session_expiry_interval: Option<u32>,
    /// Human-readable diagnostic.
    pub reason_string: Option<ByteString>,
    /// User Properties.
    pub user_properties: UserProperties,
    /// Another server to use.
    pub server_reference: Option<ByteString>,
}

/// Properties of AUTH [MQTT-3.15.2.2]. Their `Debug` shows the
/// Authentication Data's length only.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct AuthProperties {
    /// Extended authentication method.
    pub authentication_method: Option<ByteString>,
    /// Extended authentication data.
    pub authentication_data: Option<Bytes>,
    /// Human-readable diagnostic.
    pub reason_string: Option<ByteString>,
    /// User Properties.
    pub user_properties: UserProperties,
}

impl fmt::Debug for AuthProperties {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Destructured, so that a new field cannot be left out unnoticed.
        let Self { authentication_method, authentication_data, reason_string, user_properties } =
            self;
        f.debug_struct("AuthProperties")
            .field("authentication_method", authentication_method)
            .field("authentication_data", &Redacted(authentication_data))
            .field("reason_string", reason_string)
            .field("user_properties", user_properties)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_block_is_not_allocated() {
        let boxed = BoxedPublishProperties::from(PublishProperties::default());
        assert!(boxed.0.is_none());
        assert!(boxed.is_empty());
        assert_eq!(*boxed, PublishProperties::EMPTY);
    }

    #[test]
    fn an_allocated_empty_block_equals_an_absent_one() {
        let mut allocated = BoxedPublishProperties::none();
        allocated.make_mut().topic_alias = None;
        assert!(allocated.0.is_some());
        assert!(allocated.is_empty());
        assert_eq!(allocated, BoxedPublishProperties::none());
    }

    #[test]
    fn get_mut_never_allocates() {
        let mut absent = BoxedPublishProperties::none();
        assert!(absent.get_mut().is_none());
        assert!(absent.0.is_none());
        let mut present = BoxedPublishProperties::from(PublishProperties {
            content_type: Some(ByteString::from_static("text/plain")),
            ..PublishProperties::default()
        });
        present.get_mut().expect("allocated").content_type = None;
        assert!(present.is_empty());
    }

    #[test]
    fn reads_see_the_properties() {
        let boxed = BoxedPublishProperties::from(PublishProperties {
            message_expiry_interval: Some(9),
            ..PublishProperties::default()
        });
        assert_eq!(boxed.message_expiry_interval, Some(9));
        assert!(!boxed.is_empty());
        assert_ne!(boxed, BoxedPublishProperties::none());
    }

    #[test]
    fn decoding_a_publish_without_properties_allocates_no_block() {
        use crate::protocol::{decode_packet, Packet, ProtocolVersion};
        // PUBLISH QoS 0, topic "a", Property Length 0, payload "x".
        let bytes = bytes::Bytes::from_static(&[0x30, 0x05, 0x00, 0x01, b'a', 0x00, b'x']);
        let Ok(Packet::Publish(publish)) = decode_packet(bytes, ProtocolVersion::V5) else {
            panic!("a valid PUBLISH");
        };
        assert!(publish.properties.0.is_none());
    }
}
