//! The application message as it travels from a publisher's session through
//! the shards to subscribers' sessions.
//!
//! A message is built once when a PUBLISH is accepted and then shared as
//! `Arc<Message>`: fanning it out to many subscribers (and across cores)
//! clones a pointer, never the payload or the properties.
//!
//! * [`wire`]: the form in which a message leaves the process and comes
//!   back (a cluster peer, the durable log), expiry included.

pub mod wire;

use crate::protocol::{BoxedPublishProperties, QoS, TopicName};
use bytes::Bytes;
use bytestring::ByteString;
use std::fmt;
use std::time::Instant;

/// An accepted application message.
#[derive(Clone, PartialEq, Eq)]
pub struct Message {
    /// The topic it was published to (aliases already resolved).
    pub topic: TopicName,
    /// The payload, shared with the read buffer it arrived in.
    pub payload: Bytes,
    /// The QoS it was published with; each subscriber gets at most its
    /// subscription's maximum QoS [MQTT-3.8.4-8].
    pub qos: QoS,
    /// The RETAIN flag it was published with.
    pub retain: bool,
    /// v5 properties forwarded to subscribers unaltered [MQTT-3.3.2-17],
    /// except Topic Alias and Subscription Identifier, which are per
    /// subscriber and never stored here.
    pub properties: BoxedPublishProperties,
    /// Client id of the publisher, for No Local [MQTT-3.8.3-3]; `None` for
    /// messages the broker itself publishes.
    pub publisher: Option<ByteString>,
    /// When the v5 Message Expiry Interval runs out [MQTT-3.3.2-5].
    pub expires_at: Option<Instant>,
    /// In a cluster, the message's id, the same in every copy of it on
    /// every node (set by the shard that accepted the PUBLISH, carried in
    /// cluster frames and handed-over sessions): a session that moved
    /// between nodes recognises a message that reaches it twice (see
    /// `shard::state::session_moves`). 0: none (a single node, the
    /// broker's own messages, messages read back from the durable log).
    pub id: u64,
}

impl fmt::Debug for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Payloads are redacted: they may hold user data.
        f.debug_struct("Message")
            .field("topic", &self.topic)
            .field("payload_len", &self.payload.len())
            .field("qos", &self.qos)
            .field("retain", &self.retain)
            .field("publisher", &self.publisher)
            .finish_non_exhaustive()
    }
}
