//! Per-session limits: configuration, immutable.

use crate::protocol::TopicFilter;
use std::num::{NonZeroU16, NonZeroU32};
use std::time::Duration;

/// The limits one session enforces, taken from the `[limits]` section of the
/// configuration.
///
/// # Queue overflow policy
///
/// Messages waiting to be sent (beyond the in-flight window, or while the
/// client is offline) are held in one FIFO queue bounded by
/// [`max_queued_messages`](Self::max_queued_messages) and
/// [`max_queued_bytes`](Self::max_queued_bytes). When a new message would
/// exceed either limit, **the new message is dropped** and counted in
/// `dropped_queue_full` (per QoS) of the shard's
/// [`SessionCounters`](crate::metrics::SessionCounters); an older message is
/// never evicted, so what a client finally receives is always a prefix of
/// what was routed to it. An empty queue always admits one message, so a
/// message larger than `max_queued_bytes` can still be delivered to a client
/// that keeps up.
///
/// That drop applies to QoS 0 messages, and to every message for a client
/// that is not connected. A QoS 1/2 message for a connected client is
/// never dropped for a full queue (its publisher may hold a PUBACK for
/// it already): it is queued past the limits and the publishers of its
/// topic are slowed (their sockets are not read) until the queue is back
/// to half its limits. A client that stays past its limits for longer
/// than [`slow_consumer_timeout`](Self::slow_consumer_timeout) is
/// disconnected and its queue cut back to the limits (the newest messages
/// past them are dropped and counted in `dropped_slow_consumer`); on any
/// other disconnect the same cut is counted in `dropped_queue_full`. A
/// subscriber that stops reading therefore holds at most `max_inflight`
/// in-flight messages plus these limits plus the messages its publishers
/// sent before they were held back (about one per publisher, and what was
/// on its way from other cores).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionLimits {
    /// Unacknowledged outgoing QoS 1/2 PUBLISH packets at most (the send
    /// window); a v5 client's Receive Maximum can lower it [MQTT-3.3.4-9].
    pub max_inflight: NonZeroU16,
    /// Messages waiting in the queue at most.
    pub max_queued_messages: usize,
    /// Topic plus payload bytes waiting in the queue at most.
    pub max_queued_bytes: usize,
    /// Retained messages sent for new subscriptions [MQTT-3.3.1-6] waiting
    /// in the queue at most. They do not count against the two limits
    /// above: a new subscriber to `sensors/#` over 100,000 retained topics
    /// receives all of them, as fast as it reads. Each waiting one costs a
    /// queue entry (the message itself is shared with the retained store).
    pub max_queued_retained: usize,
    /// The largest keep alive, in seconds, a v5 client may use: a client
    /// asking for more (or for 0, no keep alive) is told this value as
    /// Server Keep Alive (5.0 §3.2.2.3.14). MQTT 3.1 / 3.1.1 have no way to
    /// tell the client, so their keep alive is honoured as requested. 0: no
    /// maximum.
    pub max_keepalive: u16,
    /// v5: incoming QoS 1/2 PUBLISH packets the client may have unacknowledged
    /// at once; advertised in CONNACK and enforced with 0x93
    /// [MQTT-3.3.4-7].
    pub receive_maximum: NonZeroU16,
    /// v5: topic aliases the client may use towards the server, advertised in
    /// CONNACK [MQTT-3.3.2-12]. 0: none.
    pub topic_alias_maximum: u16,
    /// v5: topic aliases the server uses towards a client at most, lowered
    /// to the client's Topic Alias Maximum [MQTT-3.3.2-10]; the most
    /// recently used topics keep one. 0: none.
    pub server_topic_alias_maximum: u16,
    /// How long a session outlives its connection at most (the longest
    /// Session Expiry Interval granted). A 3.1/3.1.1 session with Clean
    /// Session 0 asks for no expiry at all, so it is kept this long after
    /// its client goes away. `None`: sessions never expire. A v5 client
    /// asking for longer is told the cap in CONNACK (5.0 §3.2.2.3.2).
    pub max_session_expiry: Option<Duration>,
    /// The largest packet the network layer accepts from a client
    /// (`max_packet_size`), advertised to v5 clients as Maximum Packet Size
    /// (5.0 §3.2.2.3.6). `None`: the protocol's own limit.
    pub max_packet_size: Option<NonZeroU32>,
    /// Subscriptions one session may hold at most (`max_subscriptions_per_client`);
    /// a SUBSCRIBE for a new filter beyond it is refused for that filter
    /// (5.0: 0x97 Quota exceeded; 3.1.1: 0x80). 0: no limit.
    pub max_subscriptions: usize,
    /// Whether retained messages are served (`retain_available`). When
    /// not, a v5 CONNACK says Retain Available 0 and a PUBLISH with RETAIN
    /// 1 closes the connection (5.0: DISCONNECT 0x9A [MQTT-3.2.2-14]).
    pub retain_available: bool,
    /// How long a client has to finish a re-authentication (5.0 section
    /// 4.12.1) once it started one: `connect_timeout_ms`, which bounds the
    /// exchange at CONNECT too.
    pub auth_timeout: Duration,
    /// The longest topic name or filter, in bytes (`max_topic_length`).
    pub max_topic_length: usize,
    /// The most levels of a topic name or filter (`max_topic_levels`; a
    /// shared subscription's `$share/NAME/` counts against the length
    /// only).
    pub max_topic_levels: usize,
    /// The longest client id, in bytes (`max_client_id_length`): checked
    /// by the shard at CONNECT.
    pub max_client_id_length: usize,
    /// PUBLISH packets per second a connection may send (`max_publish_rate`);
    /// past it the connection is paced (see [`Session::paced_until`]).
    /// 0: no limit.
    ///
    /// [`Session::paced_until`]: super::Session::paced_until
    pub max_publish_rate: u32,
    /// Payload bytes per second a connection may publish
    /// (`max_publish_bytes_rate`), paced the same way. 0: no limit.
    pub max_publish_bytes_rate: u64,
    /// Retained messages the broker stores at most
    /// (`max_retained_messages`); each shard enforces its share (see
    /// `Shard::retained_share`). 0: no limit.
    pub max_retained_messages: usize,
    /// Retained payload bytes the broker stores at most
    /// (`max_retained_bytes`), shared out the same way. 0: no limit.
    pub max_retained_bytes: usize,
    /// How long a connected client may stay past its queue limits (its
    /// publishers held back) before it is disconnected
    /// (`slow_consumer_timeout_ms`). `None`: never; its publishers then
    /// wait for as long as it does not read.
    pub slow_consumer_timeout: Option<Duration>,
}

impl SessionLimits {
    /// Whether `topic` (a topic name, or a filter without its `$share/NAME/`
    /// prefix) passes `max_topic_length` and `max_topic_levels`. Counts
    /// the separators only as long as needed: no allocation, at most
    /// `max_topic_levels` steps.
    pub fn topic_within(&self, topic: &str) -> bool {
        topic.len() <= self.max_topic_length && self.levels_within(topic)
    }

    /// [`Self::topic_within`] for a filter: its whole text (a shared
    /// subscription's share name included) against `max_topic_length`,
    /// the filter matched against topic names against `max_topic_levels`.
    pub fn filter_within(&self, filter: &TopicFilter) -> bool {
        filter.as_str().len() <= self.max_topic_length && self.levels_within(filter.filter())
    }

    fn levels_within(&self, topic: &str) -> bool {
        // Levels are separators plus one: within the limit unless there
        // is a separator number `max_topic_levels`.
        let separators = self.max_topic_levels.saturating_sub(1);
        topic.bytes().filter(|&b| b == b'/').nth(separators).is_none()
    }
}

impl Default for SessionLimits {
    /// The defaults of the configuration file.
    fn default() -> Self {
        Self {
            max_inflight: NonZeroU16::new(32).expect("32 is not zero"),
            max_queued_messages: 1000,
            max_queued_bytes: 1 << 20,
            max_queued_retained: 1_000_000,
            max_keepalive: 240,
            receive_maximum: NonZeroU16::new(32).expect("32 is not zero"),
            topic_alias_maximum: 16,
            server_topic_alias_maximum: 16,
            max_session_expiry: Some(Duration::from_secs(604_800)),
            max_packet_size: NonZeroU32::new(1 << 20),
            max_subscriptions: 0,
            retain_available: true,
            auth_timeout: Duration::from_secs(10),
            max_topic_length: 65_535,
            max_topic_levels: 128,
            max_client_id_length: 256,
            max_publish_rate: 0,
            max_publish_bytes_rate: 0,
            max_retained_messages: 0,
            max_retained_bytes: 0,
            slow_consumer_timeout: Some(Duration::from_secs(30)),
        }
    }
}
