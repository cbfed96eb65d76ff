//! What crosses the boundary between a session and its shard: deliveries in,
//! events out, and the per-subscription state the session keeps.

use super::{AckToken, SessionError};
use crate::message::Message;
use crate::protocol::{DecodeError, ReasonCode, SubscriptionIds, SubscriptionOptions, TopicFilter};
use smallvec::SmallVec;
use std::num::NonZeroU32;
use std::sync::Arc;

/// A subscription as the session stores it (part of the persistent session
/// state).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Subscribed {
    /// The options granted; `qos` is the maximum QoS delivered
    /// [MQTT-3.8.4-6].
    pub options: SubscriptionOptions,
    /// The v5 Subscription Identifier given with the SUBSCRIBE, returned in
    /// every PUBLISH this subscription matches [MQTT-3.3.4-3].
    pub identifier: Option<NonZeroU32>,
}

/// One filter of an accepted SUBSCRIBE, as the shard needs it to update its
/// subscription index and to send retained messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubscriptionGrant {
    /// The filter (replacing any previous subscription to the same filter
    /// [MQTT-3.8.4-3]).
    pub filter: TopicFilter,
    /// The granted options and identifier.
    pub subscribed: Subscribed,
    /// Whether no subscription to this filter existed before; v5 Retain
    /// Handling 1 sends retained messages only then (5.0 §3.8.3.1).
    pub is_new: bool,
}

/// Why a connection ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// The client sent DISCONNECT, with this reason code (Normal
    /// disconnection on MQTT 3.1 / 3.1.1).
    ClientDisconnect(ReasonCode),
    /// The client broke the protocol.
    ProtocolViolation(SessionError),
    /// Nothing was received for one and a half times the keep alive
    /// [MQTT-3.1.2-24].
    KeepAliveTimeout,
    /// The network connection ended without DISCONNECT.
    ConnectionLost,
    /// Another connection with the same client id took the session over
    /// [MQTT-3.1.4-2].
    TakenOver,
    /// The client sent bytes that are not a valid packet (or a packet
    /// larger than the server's Maximum Packet Size, 5.0 §3.2.2.3.6).
    Malformed(Box<DecodeError>),
    /// The broker is shutting down.
    ServerShuttingDown,
    /// The CONNACK does not fit the client's v5 Maximum Packet Size even
    /// without every property it may leave out [MQTT-3.1.2-24]: the
    /// connection cannot be acknowledged, so it is closed (no DISCONNECT
    /// may come before a CONNACK [MQTT-3.14.0-1]).
    ConnAckTooLarge,
    /// A re-authentication failed (wrong credentials) [MQTT-4.12.1-2].
    ReauthenticationFailed,
    /// A re-authentication was not finished within `connect_timeout_ms`.
    ReauthenticationTimeout,
    /// The client's queue stayed past its limits (its publishers held
    /// back) for longer than `slow_consumer_timeout`.
    SlowConsumer,
    /// A reloaded `password_file` removed the client's user or changed its
    /// password.
    CredentialsRevoked,
}

impl CloseReason {
    /// Whether the will message is published: always, except after a
    /// DISCONNECT with reason Success [MQTT-3.14.4-3] (v5 reason 0x04
    /// "Disconnect with Will Message" publishes it).
    pub fn publishes_will(&self) -> bool {
        !matches!(self, Self::ClientDisconnect(ReasonCode::Success))
    }

    /// The reason code of the DISCONNECT a v5 client is sent before the
    /// server closes the connection; `None` when the client closed it (or
    /// the network did) and nothing can be sent.
    pub fn server_disconnect_reason(&self) -> Option<ReasonCode> {
        match self {
            Self::ProtocolViolation(error) => Some(error.reason_code()),
            Self::KeepAliveTimeout => Some(ReasonCode::KeepAliveTimeout),
            Self::TakenOver => Some(ReasonCode::SessionTakenOver),
            Self::Malformed(error) => Some(error.reason_code()),
            Self::ServerShuttingDown => Some(ReasonCode::ServerShuttingDown),
            Self::ClientDisconnect(_) | Self::ConnectionLost | Self::ConnAckTooLarge => None,
            Self::ReauthenticationFailed
            | Self::ReauthenticationTimeout
            | Self::CredentialsRevoked => Some(ReasonCode::NotAuthorized),
            // 5.0 §3.14.2.1, DISCONNECT 0x97 Quota exceeded: "An
            // implementation or administrative imposed limit has been
            // exceeded" - the queue limits and `slow_consumer_timeout`
            // are such a limit. 0x89 Server busy would tell the client to
            // come back later for a state of the server, when it is the
            // client that did not read.
            Self::SlowConsumer => Some(ReasonCode::QuotaExceeded),
        }
    }

    /// The Reason String of that DISCONNECT: what went wrong, for a human
    /// (5.0 §3.14.2.2.3).
    pub fn reason_string(&self) -> String {
        match self {
            Self::ProtocolViolation(error) => error.to_string(),
            Self::Malformed(error) => error.to_string(),
            Self::KeepAliveTimeout => "keep alive timeout".to_owned(),
            Self::TakenOver => "session taken over by another connection".to_owned(),
            Self::ServerShuttingDown => "server shutting down".to_owned(),
            Self::ConnAckTooLarge => {
                "CONNACK larger than the client's Maximum Packet Size".to_owned()
            }
            Self::ReauthenticationFailed => "re-authentication failed".to_owned(),
            Self::ReauthenticationTimeout => "re-authentication not finished in time".to_owned(),
            Self::SlowConsumer => {
                "slow consumer: queue past its limits for longer than slow_consumer_timeout"
                    .to_owned()
            }
            Self::CredentialsRevoked => {
                "user removed from password_file, or its password changed".to_owned()
            }
            Self::ClientDisconnect(_) | Self::ConnectionLost => String::new(),
        }
    }
}

impl std::fmt::Display for CloseReason {
    /// Why the connection ended, for a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::ClientDisconnect(ReasonCode::Success) => f.write_str("client sent DISCONNECT"),
            Self::ClientDisconnect(code) => write!(f, "client sent DISCONNECT with {code:?}"),
            Self::ConnectionLost => f.write_str("connection lost"),
            other => f.write_str(&other.reason_string()),
        }
    }
}

/// What the shard must act on, in the order it happened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SessionEvent {
    /// An accepted PUBLISH, to route to subscribers (and to the retained
    /// store when `retain` is set). Built once; fan-out clones the `Arc`.
    Publish(Arc<Message>),
    /// Accepted subscriptions, in the order of the SUBSCRIBE packet. The
    /// SUBACK waits until the shard releases `ack`
    /// ([`Session::release_acks`](super::Session::release_acks)): once the
    /// filters are in its index and, for new interest, every other shard
    /// knows of it, so that no message published after the SUBACK misses
    /// the new subscription.
    Subscribe {
        /// The filters, granted options and identifiers.
        grants: SmallVec<[SubscriptionGrant; 1]>,
        /// Releases the SUBACK.
        ack: AckToken,
    },
    /// Filters whose subscription was removed by an UNSUBSCRIBE
    /// [MQTT-3.10.4-1]; filters without a subscription are left out. The
    /// UNSUBACK waits until the shard releases `ack`, once they are out of
    /// its index.
    Unsubscribe {
        /// The filters removed.
        filters: SmallVec<[TopicFilter; 1]>,
        /// Releases the UNSUBACK.
        ack: AckToken,
    },
    /// The acknowledgement of the PUBLISH just before (PUBACK or PUBREC)
    /// waits until what routing it logged is durable, here and on every
    /// shard it went to (`durability = "always"`, see
    /// [`Session::set_durable_acks`](super::Session::set_durable_acks));
    /// the shard releases `ack` then.
    Durable(AckToken),
    /// The acknowledgement of the PUBLISH just before (PUBACK or PUBREC)
    /// waits until every other node of the cluster interested in it
    /// accepted it (see
    /// [`Session::set_bridge_acks`](super::Session::set_bridge_acks)); the
    /// shard releases `ack` then.
    Bridged(AckToken),
    /// The will message to publish [MQTT-3.1.2-8], with the QoS and RETAIN
    /// of CONNECT [MQTT-3.1.2-16], [MQTT-3.1.2-17].
    Will(Arc<Message>),
    /// The connection is closed. The network layer writes what
    /// [`Session::poll_transmit`](super::Session::poll_transmit) still
    /// produces (a v5 DISCONNECT), closes the socket and calls
    /// [`Session::handle_connection_lost`](super::Session::handle_connection_lost).
    Closed(CloseReason),
}

/// A message routed to this session: it matched one of its subscriptions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery {
    /// The message, shared with every other subscriber.
    pub message: Arc<Message>,
    /// The options of the matching subscription (the highest QoS of all
    /// matching ones when the shard merges overlapping subscriptions
    /// [MQTT-3.3.5-1]).
    pub options: SubscriptionOptions,
    /// v5 identifiers of the matching subscriptions [MQTT-3.3.4-3].
    pub subscription_ids: SubscriptionIds,
    /// Whether the message comes from the retained store because a
    /// subscription was just made: it is then sent with RETAIN=1
    /// [MQTT-3.3.1-8].
    pub from_retained: bool,
    /// The shard's number for the message in its durable log, noted with
    /// the queued entry of a logged session; 0 without a log.
    pub log_id: u64,
}

/// What became of a [`Delivery`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeliveryOutcome {
    /// Queued; [`Session::poll_transmit`](super::Session::poll_transmit)
    /// sends it.
    Queued,
    /// A QoS 1/2 message for a connected client, queued past
    /// `max_queued_messages` or `max_queued_bytes` rather than dropped
    /// (it may have been acknowledged to its publisher already): the shard
    /// must slow the publishers of its topic until the queue drains
    /// ([`Session::is_drained`](super::Session::is_drained)), or close the
    /// client after `slow_consumer_timeout`.
    OverLimit,
    /// Not queued.
    Dropped(DropReason),
}

/// Why a delivery was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// A QoS 0 message for a client that is not connected.
    Offline,
    /// The queue is at one of its limits (see
    /// [`SessionLimits`](super::SessionLimits)).
    QueueFull,
    /// A retained message for a new subscription, with
    /// `max_queued_retained` of them already waiting (see
    /// [`SessionLimits`](super::SessionLimits)).
    RetainedLimit,
    /// The v5 Message Expiry Interval has run out [MQTT-3.3.2-5].
    Expired,
    /// The client published it itself and subscribed with v5 No Local
    /// [MQTT-3.8.3-3].
    NoLocal,
    /// The client may not read the message's topic (the ACL file).
    NotAuthorized,
}
