//! The configuration file as written: the serde schema of `ringmq.toml`.
//!
//! Every key is optional and nothing here is checked beyond its TOML type;
//! `super` turns a [`RawConfig`] into a validated [`super::Config`]. Unknown
//! keys are refused by `deny_unknown_fields`. Integers are read as `i64` (the
//! TOML integer) so that an out-of-range value gets a message naming its
//! key and its allowed range rather than serde's generic one. Keys of
//! features this release does not have are [`IgnoredAny`]: whatever their
//! value, their mere presence is refused with a precise message.

use serde::Deserialize;

/// The top level of the file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub(super) shards: Option<i64>,
    pub(super) allow_anonymous: Option<bool>,
    pub(super) password_file: Option<String>,
    pub(super) scram_file: Option<String>,
    pub(super) acl_file: Option<String>,
    pub(super) data_dir: Option<String>,
    pub(super) durability: Option<String>,
    pub(super) fsync_interval_ms: Option<i64>,
    pub(super) sys_interval_s: Option<i64>,
    pub(super) retain_available: Option<bool>,
    pub(super) response_information_prefix: Option<String>,
    pub(super) redirect: Option<RawRedirect>,
    pub(super) drain_timeout_s: Option<i64>,
    pub(super) listener: Option<Vec<RawListener>>,
    #[serde(default)]
    pub(super) limits: RawLimits,
    pub(super) admin: Option<RawAdmin>,
    #[serde(default)]
    pub(super) log: RawLog,
    pub(super) cluster: Option<super::cluster::RawCluster>,
}

/// One `[[listener]]` table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawListener {
    pub(super) bind: Option<String>,
    pub(super) protocol: Option<String>,
    pub(super) path: Option<String>,
    pub(super) proxy_protocol: Option<bool>,
    pub(super) tls: Option<RawTls>,
    pub(super) use_identity_as_username: Option<bool>,
    pub(super) listen_backlog: Option<i64>,
    pub(super) allow_anonymous: Option<bool>,
    pub(super) max_connections: Option<i64>,
    pub(super) max_connection_rate: Option<i64>,
}

/// A listener's `tls = { cert = "...", key = "...", client_ca = "..." }`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTls {
    pub(super) cert: Option<String>,
    pub(super) key: Option<String>,
    pub(super) client_ca: Option<String>,
}

/// The `[limits]` table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLimits {
    pub(super) max_connections: Option<i64>,
    pub(super) max_packet_size: Option<i64>,
    pub(super) connect_timeout_ms: Option<i64>,
    pub(super) max_inflight: Option<i64>,
    pub(super) max_queued_messages: Option<i64>,
    pub(super) max_queued_bytes: Option<i64>,
    pub(super) max_queued_retained: Option<i64>,
    pub(super) max_connect_size: Option<i64>,
    pub(super) max_pending_connect_bytes: Option<i64>,
    pub(super) max_keepalive: Option<i64>,
    pub(super) receive_maximum: Option<i64>,
    pub(super) topic_alias_maximum: Option<i64>,
    pub(super) server_topic_alias_maximum: Option<i64>,
    pub(super) max_session_expiry_s: Option<i64>,
    pub(super) max_subscriptions_per_client: Option<i64>,
    pub(super) max_topic_length: Option<i64>,
    pub(super) max_topic_levels: Option<i64>,
    pub(super) max_client_id_length: Option<i64>,
    pub(super) max_publish_rate: Option<i64>,
    pub(super) max_publish_bytes_rate: Option<i64>,
    pub(super) max_retained_messages: Option<i64>,
    pub(super) max_retained_bytes: Option<i64>,
    pub(super) slow_consumer_timeout_ms: Option<i64>,
}

/// The `[redirect]` table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRedirect {
    pub(super) server_reference: Option<String>,
    pub(super) mode: Option<String>,
}

/// The `[admin]` table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAdmin {
    pub(super) listen: Option<String>,
}

/// The `[log]` table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLog {
    pub(super) level: Option<String>,
    pub(super) format: Option<String>,
}
