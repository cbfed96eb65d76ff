//! What shards send each other: publish batches, interest deltas and their
//! acknowledgements, shared-group deliveries, retained-message traffic, and
//! connections moving to their home shard. Plain data: any transport can
//! carry it (the glommio mesh today; a remote node's bridge would encode
//! the messages, see `crate::message::wire`).

use super::interest::{self, ShardId};
use crate::auth::pool::Verified;
use crate::message::Message;
use crate::protocol::{Connect, SubscriptionOptions, TopicFilter, TopicName};
use bytes::BytesMut;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::Arc;

/// The transport of a connection moving to its home shard: its socket,
/// and whatever transport state must travel with it (a TLS session does).
/// The fd is owned: dropping the message anywhere closes it, so no path
/// leaks it.
#[derive(Debug)]
pub enum MovedTransport {
    /// Plain TCP: the socket alone.
    Tcp(OwnedFd),
    /// TLS: the socket and the whole rustls state (keys, sequence
    /// numbers, buffered records and plaintext), so that the home shard
    /// continues the same TLS session.
    Tls {
        /// The socket.
        socket: OwnedFd,
        /// The TLS session.
        tls: Box<rustls::ServerConnection>,
    },
    /// WebSocket over `inner` (TCP for ws, TLS for wss): the framing state
    /// (a partial frame, its mask, frames not yet sent) travels with the
    /// inner transport's.
    WebSocket {
        /// The transport the frames run over.
        inner: Box<MovedTransport>,
        /// The framing state.
        codec: Box<crate::protocol::websocket::WsCodec>,
    },
}

/// A connection moving to its home shard: its transport, its CONNECT as
/// the accepting shard decoded it, and the bytes read after the CONNECT
/// (a client may send packets before the CONNACK), so the home shard
/// neither copies nor decodes them again.
#[derive(Debug)]
pub struct HandOff {
    /// The connected socket and its transport state.
    pub transport: MovedTransport,
    /// The CONNECT.
    pub connect: Box<Connect>,
    /// Bytes read after the CONNECT, not yet decoded.
    pub rest: Option<BytesMut>,
    /// Its password check, when it had one: the home shard refuses it if a
    /// reload revoked the user since (`Shard::place`).
    pub verified: Option<Verified>,
    /// The client's address, for logs.
    pub peer: SocketAddr,
    /// Index of the listener that accepted it.
    pub listener: usize,
}

/// Where the answer to a retained-message query goes: a session on the
/// asking shard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetainedReplyTo {
    /// The asking shard.
    pub shard: ShardId,
    /// The subscriber's client id (its session is homed on `shard`).
    pub client_id: bytestring::ByteString,
    /// The options of the subscription that asked.
    pub options: SubscriptionOptions,
    /// The v5 Subscription Identifier of that subscription.
    pub subscription_id: Option<std::num::NonZeroU32>,
    /// The asking shard's number for the request.
    pub request: u64,
}

/// What shards send each other.
#[derive(Debug)]
pub enum RouterMessage {
    /// A connection for a client homed on the receiving shard (taken by
    /// the network layer).
    HandOff(HandOff),
    /// Work for the receiving shard's state.
    Shard(ShardMessage),
}

/// What one shard's state asks of another's.
#[derive(Debug)]
pub enum ShardMessage {
    /// Publishes matched on the sender's interest replica, to be matched
    /// against the receiver's local subscriptions.
    Publish(Vec<Arc<Message>>),
    /// The sender's first local subscriber to a filter arrived, or its last
    /// one left.
    Interest(interest::InterestDelta),
    /// Deliver to one local member of the shared group `group` (chosen for
    /// this shard by the sender) [MQTT-4.8.2].
    GroupPublish {
        /// The receiver's id for the group, as its interest delta announced
        /// it ([`interest::InterestDelta::group`]).
        group: interest::GroupId,
        /// The message.
        message: Arc<Message>,
    },
    /// The receiver applied the sender's interest change `revision`.
    InterestAck {
        /// The revision applied.
        revision: u64,
    },
    /// Store (or, with an empty payload, delete) a retained message on the
    /// shard that owns its topic.
    Retain(Arc<Message>),
    /// Send the retained messages matching `filter` to `reply_to`.
    RetainedQuery {
        /// The subscription's filter.
        filter: TopicFilter,
        /// The subscriber.
        reply_to: RetainedReplyTo,
    },
    /// Send `RetainedFlushed { round }` back, behind everything sent to the
    /// sender before: the owner of a topic answers retained queries once
    /// every peer has (see `shard/state/retained_queries.rs`).
    RetainedFlush {
        /// The sender's round.
        round: u64,
    },
    /// The answer to `RetainedFlush`.
    RetainedFlushed {
        /// The round it answers.
        round: u64,
    },
    /// With `durability = "always"`: the first `count` publishes, group
    /// publishes and retained messages the receiver sent to the sender
    /// (counted in the order they were sent) are handled and whatever they
    /// logged there is durable; the acknowledgements waiting on them may go.
    Durable {
        /// How many.
        count: u64,
    },
    /// The sender's durable log started (`true`) or stopped failing (disk
    /// full, EIO): while any shard's does, every shard refuses QoS 1/2
    /// publishes.
    StoreFailing {
        /// Whether it fails now.
        failing: bool,
    },
    /// A session of the sender went past its queue limits with messages
    /// of `topic` that came from the receiver: the receiver holds back its
    /// connections that publish QoS 1/2 to `topic` until `Unblock` (see
    /// `router::gates`).
    Block {
        /// The topic.
        topic: TopicName,
    },
    /// The sender's sessions that blocked `topic` drained (or left).
    Unblock {
        /// The topic.
        topic: TopicName,
    },
    /// Retained messages for a subscriber homed on the receiving shard:
    /// one owner's whole answer to its query, sent even when empty.
    Retained {
        /// The subscriber.
        reply_to: RetainedReplyTo,
        /// The matching retained messages.
        messages: Vec<Arc<Message>>,
    },
}

impl From<ShardMessage> for RouterMessage {
    fn from(message: ShardMessage) -> Self {
        Self::Shard(message)
    }
}
