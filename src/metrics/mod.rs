//! The counters of one shard, in one place: plain integers that the shard
//! owns alone (no atomics, no locks), grouped by the layer that sees the
//! event, and a [`Snapshot`] of them taken on request.
//!
//! Whoever sees an event counts it through a reference, never in a copy of
//! its own:
//! * the shard, into [`ShardCounters`];
//! * its sessions, into [`SessionCounters`]: the shard passes `&mut` into
//!   every `Session::handle_*` / `poll_*` call that can count, so a session
//!   keeps no counters (and no bytes for them) and stays sans-IO;
//! * its connections, into [`NetCounters`], through the shard they share;
//! * the router's outbox, into [`RouterCounters`], passed in by the shard
//!   with each publish it queues.
//!
//! A whole-process view is one [`Snapshot`] per shard, each taken on its own
//! core (`Shard::snapshot`): every shard publishes its snapshot once per
//! tick (250 ms) where the admin listener's `/metrics` reads it, so a
//! scrape never waits on a shard nor costs one anything per message (the
//! figures are at most a tick old); every shard also logs its snapshot in
//! its "shard stopped" line.
//!
//! * [`prometheus`]: snapshots in the Prometheus text format.
//! * [`sys`]: snapshots as the `$SYS/broker/...` topics.
//!
//! Counters only ever grow. Nothing here is per client: a per-client series
//! would be its own, configured, option.

pub mod prometheus;
pub mod sys;

/// Every counter of one shard.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Connections: accepted, refused, handed off, closed early.
    pub net: NetCounters,
    /// Routing and the life of sessions.
    pub shard: ShardCounters,
    /// The traffic of the shard's sessions, summed over them.
    pub session: SessionCounters,
    /// The queues towards other shards.
    pub router: RouterCounters,
    /// The shard's durable log (all zero without a `data_dir`).
    pub store: StoreCounters,
    /// The node's NATS bridge (`[cluster]`): node-wide figures, reported
    /// by shard 0 only (all zero elsewhere and on a single node).
    pub cluster: ClusterCounters,
}

/// What the NATS bridge of a cluster node did (see `router::cluster`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterCounters {
    /// Messages published to NATS.
    pub published: u64,
    /// Of those, QoS 1/2 ones (acknowledged to their publisher once every
    /// interested node accepted them).
    pub published_qos12: u64,
    /// Messages NATS refused or that could not be encoded (past the
    /// server's max_payload, connection closed).
    pub publish_failed: u64,
    /// Topics and filters whose NATS subject would be too long: kept on
    /// the node.
    pub subject_too_long: u64,
    /// QoS 0 messages dropped: the queue to the bridge was full.
    pub outbound_dropped_qos0: u64,
    /// QoS 1/2 messages that found the queue to the bridge full and
    /// waited in their shard (none is dropped).
    pub outbound_spilled_qos12: u64,
    /// Messages received from other nodes and handed to a shard.
    pub received: u64,
    /// Messages received twice (two of the node's subscriptions matched).
    pub duplicates: u64,
    /// Messages received too late to be told from duplicates: QoS 0 ones
    /// dropped, QoS 1/2 ones delivered (at least once).
    pub stale: u64,
    /// Frames that were not ringmq messages.
    pub malformed: u64,
    /// Messages received while the queue to their shard was full: dropped.
    pub inbound_dropped: u64,
    /// Messages the NATS client dropped because the bridge read a
    /// subscription too slowly ("slow consumer"; a lower bound: the client
    /// reports them on a bounded channel).
    pub slow_consumer: u64,
    /// Connections to NATS made (the first and every reconnection).
    pub connects: u64,
    /// Connections to NATS lost.
    pub disconnects: u64,
    /// QoS 1/2 messages acknowledged by every interested node.
    pub remote_acked: u64,
    /// QoS 1/2 messages sent again to a node that had not acknowledged.
    pub resent: u64,
    /// Nodes taken for dead: silent for `cluster.node_timeout_ms`.
    pub nodes_expired: u64,
    /// Shared group copies of QoS 1/2 messages sent to another node than
    /// first chosen (refused there, not acknowledged in time, or the node
    /// taken for dead).
    pub group_moved: u64,
    /// Retained messages (and deletes) written to the cluster's JetStream
    /// bucket.
    pub retained_written: u64,
    /// Retained messages the bucket refused or never acknowledged: they
    /// stay on their node.
    pub retained_failed: u64,
    /// Changes of the cluster's retained messages applied from the bucket.
    pub retained_applied: u64,
    /// Client ids claimed in the cluster's session directory.
    pub session_claims: u64,
    /// Claims that could not be made: the client was accepted on its node
    /// alone.
    pub session_claims_failed: u64,
    /// Sessions taken over from another node.
    pub session_takeovers: u64,
    /// Messages sent on to the node a session moved to, acknowledged.
    pub session_forwarded: u64,
    /// Messages for a session that moved away its new node never
    /// acknowledged: lost.
    pub session_forward_failed: u64,
    /// Second copies of a message around a session's move, dropped.
    pub session_move_duplicates: u64,
    /// Sessions that moved here and stopped holding back at the hold's
    /// deadline (order not guaranteed).
    pub session_hold_expired: u64,
    /// Messages sent on to a session's new node again (order not
    /// guaranteed).
    pub session_forward_resent: u64,
    /// Directory entries of sessions that ended here, removed.
    pub session_released: u64,
    /// Directory entries of sessions that ended here that could not be
    /// removed.
    pub session_release_failed: u64,
}

/// What the durable log of one shard did. Its writer task counts into the
/// log, and the shard copies the figures into each snapshot.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StoreCounters {
    /// Records read back at start.
    pub records_recovered: u64,
    /// Segments found at start with a torn or damaged tail, which was cut
    /// off (a crash while writing, or damage).
    pub torn_tails: u64,
    /// Bytes cut off those tails.
    pub torn_bytes: u64,
    /// Records appended.
    pub records_written: u64,
    /// Bytes written to segment files (padding and rewrites of a partial
    /// last block included).
    pub bytes_written: u64,
    /// fdatasync calls: one per group commit.
    pub syncs: u64,
    /// How long those fdatasync calls took.
    pub sync_latency: SyncLatency,
    /// Snapshots written by compaction.
    pub compactions: u64,
    /// Writes or syncs that failed (each retried until it succeeds).
    pub write_errors: u64,
}

/// Upper bounds, in microseconds, of the buckets of [`SyncLatency`] (the
/// last bucket, above them, is unbounded).
pub const SYNC_LATENCY_BOUNDS_US: [u64; 12] =
    [50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 1_000_000];

/// A histogram of fdatasync durations with the fixed buckets of
/// [`SYNC_LATENCY_BOUNDS_US`]: an array and a sum, no allocation, counted
/// by the shard that syncs (exported as a Prometheus histogram).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyncLatency {
    /// Syncs per bucket (not cumulative); the last one is above every
    /// bound.
    pub buckets: [u64; SYNC_LATENCY_BOUNDS_US.len() + 1],
    /// The sum of every duration, in microseconds.
    pub sum_us: u64,
}

impl SyncLatency {
    /// Counts one sync that took `took`.
    pub fn record(&mut self, took: std::time::Duration) {
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        let bucket = SYNC_LATENCY_BOUNDS_US.iter().position(|&bound| us <= bound);
        self.buckets[bucket.unwrap_or(SYNC_LATENCY_BOUNDS_US.len())] += 1;
        self.sum_us = self.sum_us.saturating_add(us);
    }

    /// Syncs counted.
    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }
}

/// What the network layer of one shard did with connections.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NetCounters {
    /// Connections accepted.
    pub accepted: u64,
    /// Connections refused because `limits.max_connections` or their
    /// listener's `max_connections` was reached.
    pub refused_limit: u64,
    /// Connections refused over their listener's `max_connection_rate`.
    pub refused_rate: u64,
    /// Connections moved to their home shard.
    pub handed_off: u64,
    /// Connections closed for a malformed packet.
    pub malformed: u64,
    /// Connections closed because no complete CONNECT arrived within
    /// `connect_timeout_ms`.
    pub connect_timeouts: u64,
    /// Connections closed for a CONNECT larger than `max_connect_size`.
    pub connect_too_large: u64,
    /// Connections closed because their incomplete CONNECT (or TLS
    /// handshake) needed more than `max_pending_connect_bytes` left on the
    /// shard.
    pub connect_budget_exceeded: u64,
    /// Connections closed on a `proxy_protocol` listener because they did
    /// not open with a valid PROXY protocol header.
    pub proxy_header_invalid: u64,
    /// CONNECTs refused for their credentials: unknown user, wrong
    /// password, or no user name where anonymous clients are not allowed.
    pub auth_failed: u64,
    /// CONNECTs refused as busy: too many password checks waiting, or the
    /// check not done within the connect timeout.
    pub auth_busy: u64,
    /// CONNECTs answered with a redirection (`[redirect]`: 0x9C / 0x9D).
    pub redirected: u64,
    /// Bytes read from clients (MQTT packets; inside TLS, the decrypted
    /// bytes).
    pub bytes_received: u64,
    /// Bytes written to clients (MQTT packets).
    pub bytes_sent: u64,
    /// TLS handshakes completed.
    pub tls_handshakes: u64,
    /// TLS handshakes failed for a certificate: the client's (unknown
    /// issuer, expired, missing where required) or ours, refused by the
    /// client.
    pub tls_failed_certificate: u64,
    /// TLS handshakes failed for want of a common protocol version, cipher
    /// suite or ALPN protocol.
    pub tls_failed_protocol: u64,
    /// TLS handshakes not done within `connect_timeout_ms`.
    pub tls_failed_timeout: u64,
    /// TLS handshakes failed otherwise (not TLS, the client went away).
    pub tls_failed_other: u64,
    /// Times a connection stopped being read because a QoS 1/2 publish of
    /// it went to a congested core or to a topic whose subscriber was past
    /// its queue limits (backpressure instead of a drop).
    pub publishers_held: u64,
    /// WebSocket upgrades accepted (`protocol = "ws"` listeners).
    pub ws_upgrades: u64,
    /// WebSocket upgrade requests refused (wrong path, not an upgrade, no
    /// `mqtt` subprotocol, too large, not within `connect_timeout_ms`).
    pub ws_upgrade_failed: u64,
}

/// What the shard routed, and how its sessions ended.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ShardCounters {
    /// PUBLISH packets accepted from this shard's clients, by QoS (a
    /// re-sent QoS 2 PUBLISH still awaiting PUBREL is not counted again:
    /// see [`SessionCounters::duplicate_qos2_received`]).
    pub messages_received: [u64; 3],
    /// Deliveries queued to local sessions.
    pub deliveries: u64,
    /// Deliveries not queued: a session refused them (its queue was full,
    /// QoS 0 to an offline client, expired, No Local, the retained limit;
    /// the `dropped_*` counters of [`SessionCounters`] tell most of these
    /// apart), or a shared group had no member left on this shard.
    pub deliveries_dropped: u64,
    /// Connections taken over by a newer one with the same client id.
    pub takeovers: u64,
    /// Sessions ended because their client stayed away too long.
    pub sessions_expired: u64,
    /// Retained messages dropped from the store because their v5 Message
    /// Expiry Interval ran out [MQTT-3.3.2-5].
    pub retained_expired: u64,
    /// New retained topics not stored because the shard held its share of
    /// `max_retained_messages` or `max_retained_bytes` (the PUBLISH was
    /// still delivered).
    pub retained_limit_exceeded: u64,
    /// Connections a session closed because its client broke the protocol
    /// after CONNECT (a `SessionError`).
    pub protocol_violations: u64,
    /// QoS 1/2 deliveries queued past a connected subscriber's queue
    /// limits instead of dropped (its publishers were then slowed).
    pub deliveries_over_limit: u64,
    /// Times a connected session went past its queue limits (the topics
    /// it was sent then hold their publishers back until it drains).
    pub overloads: u64,
    /// Clients disconnected for staying past their queue limits longer
    /// than `slow_consumer_timeout_ms` (v5: DISCONNECT 0x97).
    pub slow_consumers_disconnected: u64,
}

/// What the sessions of one shard dropped, sent and re-sent, summed over
/// them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SessionCounters {
    /// Re-sent QoS 2 PUBLISH packets answered with PUBREC but not routed
    /// again [MQTT-4.3.3-2].
    pub duplicate_qos2_received: u64,
    /// PUBLISH packets sent to clients for the first time, by QoS as sent.
    pub publishes_sent: [u64; 3],
    /// PUBLISH packets re-sent with DUP=1 on a resumed session
    /// [MQTT-4.4.0-1].
    pub publishes_resent: u64,
    /// QoS 0 messages dropped because their client was not connected
    /// (offline sessions keep QoS 1/2 messages only).
    pub dropped_offline_qos0: u64,
    /// New messages dropped because a session's queue was full, indexed by
    /// their QoS as sent (`[QoS 0, QoS 1, QoS 2]`): QoS 0 messages, and
    /// messages for a client that is not connected (also those queued past
    /// the limits while it was, cut when it went away). A QoS 1/2 message
    /// for a connected client is never dropped for a full queue: its
    /// publishers are slowed instead.
    pub dropped_queue_full: [u64; 3],
    /// Messages dropped when a client stayed past its queue limits for
    /// longer than `slow_consumer_timeout_ms` and was disconnected: its
    /// queue was cut back to the limits, the newest first.
    pub dropped_slow_consumer: u64,
    /// Retained messages not sent to a new subscription because
    /// `max_queued_retained` of them were already waiting.
    pub dropped_retained_limit: u64,
    /// Messages whose v5 Message Expiry Interval ran out before they could
    /// be sent [MQTT-3.3.2-5].
    pub dropped_expired: u64,
    /// Packets that could not be sent: larger than the client's v5 Maximum
    /// Packet Size [MQTT-3.1.2-25] or than MQTT can encode.
    pub dropped_too_large: u64,
    /// PUBACK, PUBREC or PUBCOMP packets for a packet identifier not in
    /// flight; ignored (one of the wrong kind for an id in flight is a
    /// protocol violation instead).
    pub unexpected_acks: u64,
    /// v5 PUBLISH packets (and wills) whose Payload Format Indicator says
    /// UTF-8 and whose payload is not: refused with 0x99 (PUBACK, PUBREC,
    /// DISCONNECT or CONNACK) and not routed [MQTT-3.3.2-4].
    pub payload_format_invalid: u64,
    /// v5 SUBSCRIBE / UNSUBSCRIBE filters that are not valid topic filters,
    /// answered with 0x8F for that filter [MQTT-3.8.4-5].
    pub topic_filters_invalid: u64,
    /// New subscriptions refused because the session held
    /// `max_subscriptions_per_client` (0x97, 3.1.1: 0x80).
    pub subscriptions_quota_exceeded: u64,
    /// 5.0 re-authentications (AUTH 0x19) that failed, with wrong
    /// credentials or not finished within `connect_timeout_ms`: the
    /// connection is closed [MQTT-4.12.1-2].
    pub reauth_failed: u64,
    /// PUBLISH topics, wills and SUBSCRIBE / UNSUBSCRIBE filters refused
    /// past `max_topic_length` or `max_topic_levels` (PUBACK/PUBREC/
    /// DISCONNECT/CONNACK 0x90, filters 0x8F; 3.1.1: closed, 0x80).
    pub topic_limit_exceeded: u64,
    /// CONNECTs refused for a client id past `max_client_id_length`
    /// (CONNACK 0x85, 3.1.1: return code 2).
    pub client_id_too_long: u64,
    /// Times a connection was paced (its socket left unread) for passing
    /// `max_publish_rate` or `max_publish_bytes_rate`.
    pub publish_rate_limited: u64,
    /// PUBLISH packets (and wills) the ACL file does not let their client
    /// publish: dropped, acknowledged as the protocol requires.
    pub acl_denied_publish: u64,
    /// QoS 1/2 PUBLISH packets refused while the durable log could not be
    /// written (disk full, EIO): 5.0 PUBACK/PUBREC 0x97, 3.1.1 connection
    /// closed.
    pub refused_store_unavailable: u64,
    /// SUBSCRIBE filters refused by the ACL file.
    pub acl_denied_subscribe: u64,
    /// Messages not sent to a subscriber that may not read their topic.
    pub acl_denied_delivery: u64,
}

/// What happened on the way to other shards.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RouterCounters {
    /// QoS 0 publishes dropped because the queue towards a peer shard was
    /// full (QoS 1/2 apply backpressure instead).
    pub cross_core_qos0_dropped: u64,
    /// Times a queue towards a peer shard passed its high-water mark (the
    /// connections publishing QoS 1/2 to it were held back).
    pub congestion_events: u64,
    /// Client messages that matched no subscription on any shard, counted
    /// by the shard that received them (a retained one is still stored).
    pub dropped_no_subscribers: u64,
}

/// The counters of one shard at one moment, with the gauges worth reading
/// beside them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// The shard's number.
    pub shard: usize,
    /// Sessions on the shard, connected or not.
    pub sessions: usize,
    /// Those with a connection attached.
    pub sessions_online: usize,
    /// Subscriptions of the shard's sessions (each shared group member
    /// counts).
    pub subscriptions: usize,
    /// Retained messages stored on the shard (each topic's lives on one
    /// shard).
    pub retained: usize,
    /// Payload bytes of those retained messages.
    pub retained_bytes: usize,
    /// Publishes waiting in the queues towards the other shards.
    pub cross_core_queued: usize,
    /// Messages queued for the shard's sessions, online and offline (not
    /// yet sent; retained messages for new subscriptions included).
    pub queued_messages: usize,
    /// Topic and payload bytes of those queued messages that count against
    /// `max_queued_bytes`.
    pub queued_bytes: usize,
    /// QoS 1/2 messages sent to the shard's sessions and not yet
    /// acknowledged (PUBREL awaiting PUBCOMP included).
    pub inflight_messages: usize,
    /// Shared subscription groups with a member on the shard.
    pub shared_groups: usize,
    /// Topics whose publishers are held back (or whose peers are still to
    /// be told they are not): a subscriber is past its queue limits.
    pub topic_gates: usize,
    /// Every counter.
    pub counters: Counters,
}
