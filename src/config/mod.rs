//! Configuration: `ringmq.toml` plus command-line overrides, turned into a
//! validated, immutable [`Config`].
//!
//! This module owns the configuration schema (the key names are a contract
//! with scripts, deploy files and docs: see the "Configuration" section of
//! `design.md`), its embedded defaults, and every check a value must pass.
//! It does no IO beyond reading the file it is given, and leaves anything
//! that needs the machine (how many CPUs there are, whether an address can
//! be bound) to the runtime.
//!
//! Parsing goes in two steps: serde reads the file into a schema of raw
//! optional values (`raw`), refusing unknown keys and wrong TOML types with
//! the key's full path and position; then `Config::from_raw` applies the
//! [`Overrides`] from the command line, checks every value and builds the
//! typed [`Config`]. Every refusal is one [`ConfigError`] line naming the key
//! (or flag) and the fix. Keys of features this release does not have yet
//! are part of the schema so that they are refused by name rather than
//! silently ignored.

mod cluster;
mod error;
mod locate;
mod raw;
mod reload;
#[cfg(test)]
mod tests;

pub use cluster::{ClusterConfig, NatsCredentials, RetainedScope, SessionScope};
pub use error::ConfigError;
pub use reload::{Change, Changes};

use raw::{RawAdmin, RawConfig, RawLimits, RawListener, RawLog, RawRedirect};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::num::{NonZeroU16, NonZeroU32};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The address of the listener used when none is configured: loopback
/// only, so a broker started without a configuration is not reachable (and
/// anonymous) from the network.
pub const DEFAULT_BIND: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 1883);

/// The largest `shards` value accepted (the interest table's shard sets hold 256).
pub const MAX_SHARDS: u16 = 256;

/// The size of the largest MQTT control packet: one byte of fixed header,
/// four bytes of Remaining Length and at most 268,435,455 bytes after them
/// (MQTT 5.0 §1.5.5, §2.1.4; MQTT 3.1.1 §2.2.3).
const MAX_MQTT_PACKET_SIZE: u32 = 1 + 4 + 268_435_455;

/// A validated, immutable broker configuration.
///
/// Build one with [`Config::from_file`], [`Config::from_toml`] or
/// [`Config::from_overrides`]; [`Config::default`] is the configuration of
/// an empty file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// How many shards (executors, one per core) to run.
    shards: ShardCount,
    /// `allow_anonymous` as written; `None` means "loopback listeners
    /// only, and only without a password file".
    allow_anonymous: Option<bool>,
    /// `password_file`: the users and their password hashes, read at start
    /// (by the runtime: this module reads no other file).
    password_file: Option<PathBuf>,
    /// `scram_file`: the SCRAM-SHA-256 credentials for MQTT 5.0 enhanced
    /// authentication, read at start like the password file.
    scram_file: Option<PathBuf>,
    /// `acl_file`: which topics each client may publish, subscribe to and
    /// receive, read at start and on SIGHUP (by the runtime).
    acl_file: Option<PathBuf>,
    /// Never empty; no two share an address (except port 0).
    listeners: Vec<ListenerConfig>,
    limits: Limits,
    /// The admin HTTP listener, if any.
    admin: Option<SocketAddr>,
    /// How often the `$SYS` topics are published, in seconds; 0: never.
    sys_interval_s: u32,
    /// `retain_available`: whether retained messages are served.
    retain_available: bool,
    /// `response_information_prefix`: the start of the Response
    /// Information a v5 client asking for one gets; `None`: none is sent.
    response_information_prefix: Option<String>,
    /// `[redirect]`: every CONNECT is sent elsewhere; `None`: normal service.
    redirect: Option<Redirect>,
    /// Seconds over which a graceful shutdown spreads the disconnection
    /// of clients; 0: all at once.
    drain_timeout_s: u32,
    /// `data_dir`: where each shard keeps its durable log; `None`: memory
    /// only.
    data_dir: Option<PathBuf>,
    /// `durability` (with `fsync_interval_ms`); [`Durability::None`]
    /// whenever there is no `data_dir`.
    durability: Durability,
    log: LogConfig,
    /// `[cluster]`: `None` runs a single node.
    cluster: Option<ClusterConfig>,
}

/// The default `fsync_interval_ms`.
pub const DEFAULT_FSYNC_INTERVAL_MS: u32 = 10;

/// The largest `fsync_interval_ms` accepted: a minute.
const MAX_FSYNC_INTERVAL_MS: u32 = 60_000;

/// When a record of the durable log counts as written (`durability`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Durability {
    /// `"always"` (the default with a `data_dir`): every record is on disk
    /// (fdatasync) before it counts as written; records queued in the same
    /// tick share one fdatasync (group commit).
    Always,
    /// `"interval"`: records are written at once and synced at most this
    /// often (`fsync_interval_ms`): a power loss may lose that much.
    Interval(Duration),
    /// `"none"` (the only mode without a `data_dir`): memory only; nothing
    /// is written or read back.
    None,
}

impl fmt::Display for Durability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Always => f.write_str("always"),
            Self::Interval(every) => write!(f, "interval ({} ms)", every.as_millis()),
            Self::None => f.write_str("none"),
        }
    }
}

/// The `[redirect]` table: this broker serves no client, it sends every
/// v5 client to another server with CONNACK 0x9C (Use another server) or
/// 0x9D (Server moved) and a Server Reference (MQTT 5.0 §4.11); 3.1.1 has
/// no redirection, so its clients get return code 3 (Server unavailable).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Redirect {
    /// `server_reference`: where to go, as the Server Reference property
    /// carries it (a space-separated list of `host[:port]`, 5.0 §4.11).
    pub server_reference: String,
    /// `mode`.
    pub mode: RedirectMode,
}

/// `redirect.mode`: for how long the client should go elsewhere.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RedirectMode {
    /// `"use_another"`: for now (0x9C Use another server); the default.
    UseAnother,
    /// `"moved"`: for good (0x9D Server moved).
    Moved,
}

/// The default `sys_interval_s`, as Mosquitto's `sys_interval`.
pub const DEFAULT_SYS_INTERVAL_S: u32 = 10;

/// The largest `sys_interval_s` accepted: a day.
const MAX_SYS_INTERVAL_S: u32 = 86_400;

/// The largest `drain_timeout_s` accepted: an hour.
const MAX_DRAIN_TIMEOUT_S: u32 = 3_600;

/// Where `[admin] listen` binds when the section is there without it.
pub const DEFAULT_ADMIN_LISTEN: SocketAddr =
    SocketAddr::V4(std::net::SocketAddrV4::new(std::net::Ipv4Addr::LOCALHOST, 8080));

/// How many shards to run (`shards`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ShardCount {
    /// `shards = 0`: one shard per CPU the process may use. Resolving the
    /// number (from the process's affinity mask) is the runtime's job.
    Auto,
    /// Exactly this many shards, at most [`MAX_SHARDS`].
    Fixed(NonZeroU16),
}

impl fmt::Display for ShardCount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Auto => f.write_str("auto"),
            Self::Fixed(n) => write!(f, "{n}"),
        }
    }
}

/// One `[[listener]]`: an MQTT listening address, over TCP or TLS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenerConfig {
    bind: SocketAddr,
    listen_backlog: NonZeroU16,
    /// `allow_anonymous` of this listener, overriding the global key.
    allow_anonymous: Option<bool>,
    /// Connections open at once through this listener; 0: no limit of
    /// its own.
    max_connections: u32,
    /// New connections accepted per second through this listener; 0: no
    /// limit.
    max_connection_rate: u32,
    /// `tls`: the listener speaks TLS with these files.
    tls: Option<TlsFiles>,
    /// `use_identity_as_username`: the client certificate's identity is
    /// the user name (only with `tls.client_ca`).
    use_identity_as_username: bool,
    /// `protocol = "ws"`: MQTT over WebSocket, upgraded at this path.
    websocket_path: Option<String>,
    /// `proxy_protocol`: every connection opens with a PROXY protocol
    /// header (v1 or v2) naming the client.
    proxy_protocol: bool,
}

/// The files of a TLS listener (`tls = { cert, key, client_ca }`), read by
/// the network layer at start and on every reload (SIGHUP).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// `tls.cert`: the PEM certificate chain, the server's own first.
    pub cert: PathBuf,
    /// `tls.key`: the PEM private key of the first certificate.
    pub key: PathBuf,
    /// `tls.client_ca`: PEM certificates of the authorities that sign
    /// client certificates; when set, every client must present one.
    pub client_ca: Option<PathBuf>,
}

impl ListenerConfig {
    /// The default `listen_backlog`.
    pub const DEFAULT_LISTEN_BACKLOG: NonZeroU16 = nonzero_u16(1024);

    /// The default `path` of a WebSocket listener.
    pub const DEFAULT_WEBSOCKET_PATH: &'static str = "/mqtt";

    /// The path the WebSocket upgrade is accepted at, when the listener
    /// speaks MQTT over WebSocket (`protocol = "ws"`; over `tls`: wss).
    pub fn websocket_path(&self) -> Option<&str> {
        self.websocket_path.as_deref()
    }

    /// The address to bind (`bind`). Port 0 asks the system for a free port;
    /// every shard must then share the one port the first bind got.
    pub fn bind(&self) -> SocketAddr {
        self.bind
    }

    /// The `listen(2)` backlog of each shard's socket (`listen_backlog`);
    /// the kernel caps it at `net.core.somaxconn`.
    pub fn listen_backlog(&self) -> NonZeroU16 {
        self.listen_backlog
    }

    /// Connections open at once through this listener
    /// (`max_connections`); `None`: only `limits.max_connections` applies.
    pub fn max_connections(&self) -> Option<NonZeroU32> {
        NonZeroU32::new(self.max_connections)
    }

    /// New connections accepted per second through this listener, over
    /// all shards (`max_connection_rate`); `None`: no limit.
    pub fn max_connection_rate(&self) -> Option<NonZeroU32> {
        NonZeroU32::new(self.max_connection_rate)
    }

    /// Whether the address is a loopback one (127.0.0.0/8, `::1`, or
    /// `::ffff:127.x.y.z`), reachable only from this machine.
    pub fn is_loopback(&self) -> bool {
        self.bind.ip().to_canonical().is_loopback()
    }

    /// The TLS files (`tls`), when the listener speaks TLS.
    pub fn tls(&self) -> Option<&TlsFiles> {
        self.tls.as_ref()
    }

    /// Whether the client certificate's identity (its subject's CN, else
    /// its first DNS name) is the user name (`use_identity_as_username`):
    /// the CONNECT's user name and password are then not used.
    pub fn use_identity_as_username(&self) -> bool {
        self.use_identity_as_username
    }

    /// Whether every connection opens with a PROXY protocol header whose
    /// client address replaces the socket's (`proxy_protocol`); a
    /// connection without a valid one is closed.
    pub fn proxy_protocol(&self) -> bool {
        self.proxy_protocol
    }
}

impl Default for ListenerConfig {
    fn default() -> Self {
        Self {
            bind: DEFAULT_BIND,
            listen_backlog: Self::DEFAULT_LISTEN_BACKLOG,
            allow_anonymous: None,
            max_connections: 0,
            max_connection_rate: 0,
            tls: None,
            use_identity_as_username: false,
            websocket_path: None,
            proxy_protocol: false,
        }
    }
}

/// The `[limits]` table: per-broker and per-connection resource limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    max_connections: NonZeroU32,
    max_packet_size: NonZeroU32,
    connect_timeout: Duration,
    max_inflight: NonZeroU16,
    max_queued_messages: NonZeroU32,
    max_queued_bytes: u64,
    max_queued_retained: NonZeroU32,
    max_connect_size: NonZeroU32,
    max_pending_connect_bytes: u64,
    max_keepalive: NonZeroU16,
    receive_maximum: NonZeroU16,
    topic_alias_maximum: u16,
    server_topic_alias_maximum: u16,
    max_session_expiry_s: u32,
    max_subscriptions_per_client: u32,
    max_topic_length: u16,
    max_topic_levels: u16,
    max_client_id_length: u16,
    max_publish_rate: u32,
    max_publish_bytes_rate: u64,
    max_retained_messages: u64,
    max_retained_bytes: u64,
    slow_consumer_timeout_ms: u64,
}

impl Limits {
    /// The most client connections open at once over all listeners and
    /// shards (`max_connections`).
    pub fn max_connections(&self) -> NonZeroU32 {
        self.max_connections
    }

    /// The largest packet accepted, in bytes, fixed header included
    /// (`max_packet_size`); in v5 it is also the Maximum Packet Size sent in
    /// CONNACK (MQTT 5.0 §3.2.2.3.6).
    pub fn max_packet_size(&self) -> NonZeroU32 {
        self.max_packet_size
    }

    /// How long a new connection may take to send its CONNECT
    /// (`connect_timeout_ms`).
    pub fn connect_timeout(&self) -> Duration {
        self.connect_timeout
    }

    /// The most outgoing QoS 1/2 messages awaiting acknowledgement per
    /// session (`max_inflight`); a v5 client's Receive Maximum may lower it.
    pub fn max_inflight(&self) -> NonZeroU16 {
        self.max_inflight
    }

    /// The most messages queued for a session beyond its inflight window
    /// (`max_queued_messages`).
    pub fn max_queued_messages(&self) -> NonZeroU32 {
        self.max_queued_messages
    }

    /// The most payload bytes queued for a session (`max_queued_bytes`).
    pub fn max_queued_bytes(&self) -> u64 {
        self.max_queued_bytes
    }

    /// The most retained messages waiting to be sent to one session after
    /// its subscribes (`max_queued_retained`); they do not count against
    /// `max_queued_messages` or `max_queued_bytes` [MQTT-3.3.1-6].
    pub fn max_queued_retained(&self) -> NonZeroU32 {
        self.max_queued_retained
    }

    /// The largest CONNECT accepted, in bytes (`max_connect_size`; never
    /// more than `max_packet_size`). Until its CONNECT is complete a
    /// connection is nobody's: this bounds what a stranger can make the
    /// broker hold.
    pub fn max_connect_size(&self) -> NonZeroU32 {
        self.max_connect_size.min(self.max_packet_size)
    }

    /// The most bytes one shard holds for connections whose CONNECT is not
    /// complete yet (`max_pending_connect_bytes`); past it, such a
    /// connection that needs more is closed and counted.
    pub fn max_pending_connect_bytes(&self) -> u64 {
        self.max_pending_connect_bytes
    }

    /// The longest Keep Alive granted, in seconds (`max_keepalive`). A v5
    /// client asking for more (or for 0) gets this as Server Keep Alive,
    /// which it must then use [MQTT-3.2.2-21].
    pub fn max_keepalive(&self) -> NonZeroU16 {
        self.max_keepalive
    }

    /// The Receive Maximum advertised in a v5 CONNACK: the most incoming
    /// QoS 1/2 PUBLISHes a client may have unacknowledged
    /// (`receive_maximum`). 0 is not a valid value (MQTT 5.0 §3.2.2.3.3).
    pub fn receive_maximum(&self) -> NonZeroU16 {
        self.receive_maximum
    }

    /// The Topic Alias Maximum advertised in a v5 CONNACK: the highest
    /// alias a client may send [MQTT-3.2.2-17]; 0 accepts none
    /// [MQTT-3.2.2-18] (`topic_alias_maximum`).
    pub fn topic_alias_maximum(&self) -> u16 {
        self.topic_alias_maximum
    }

    /// Server-to-client topic aliases per v5 connection at most, lowered
    /// to the client's Topic Alias Maximum [MQTT-3.3.2-10]; 0 sends none
    /// (`server_topic_alias_maximum`).
    pub fn server_topic_alias_maximum(&self) -> u16 {
        self.server_topic_alias_maximum
    }

    /// The longest Session Expiry Interval granted, in seconds
    /// (`max_session_expiry_s`); `u32::MAX` means sessions may never expire
    /// (MQTT 5.0 §3.1.2.11.2). 3.1/3.1.1 sessions with Clean Session 0 are
    /// kept this long after their client disconnects.
    pub fn max_session_expiry_s(&self) -> u32 {
        self.max_session_expiry_s
    }

    /// Subscriptions one session may hold at most
    /// (`max_subscriptions_per_client`); 0: no limit. A new filter beyond
    /// it is refused in SUBACK (5.0: 0x97 Quota exceeded; 3.1.1: 0x80).
    pub fn max_subscriptions_per_client(&self) -> u32 {
        self.max_subscriptions_per_client
    }

    /// The longest topic name or filter accepted, in bytes
    /// (`max_topic_length`); 65535, the longest MQTT can carry, sets no
    /// limit of its own. See [`Self::max_topic_levels`] for what is refused.
    pub fn max_topic_length(&self) -> u16 {
        self.max_topic_length
    }

    /// The most levels (`/`-separated parts) of a topic name or filter
    /// (`max_topic_levels`; a shared subscription's `$share/NAME/` prefix
    /// counts against the length only). A PUBLISH past it or past `max_topic_length` gets
    /// 5.0 PUBACK/PUBREC 0x90 (QoS 0: DISCONNECT 0x90; 3.1.1: the
    /// connection is closed), a filter 0x8F (3.1.1: 0x80), a will CONNACK
    /// 0x90 (3.1.1: return code 3).
    pub fn max_topic_levels(&self) -> u16 {
        self.max_topic_levels
    }

    /// The longest client id accepted, in bytes (`max_client_id_length`);
    /// a longer one is refused with CONNACK 0x85 (3.1.1: return code 2).
    pub fn max_client_id_length(&self) -> u16 {
        self.max_client_id_length
    }

    /// PUBLISH packets one connection may send per second
    /// (`max_publish_rate`); past it, its socket is not read until the
    /// rate allows. 0: no limit.
    pub fn max_publish_rate(&self) -> u32 {
        self.max_publish_rate
    }

    /// Payload bytes one connection may publish per second
    /// (`max_publish_bytes_rate`), paced as `max_publish_rate`. 0: no
    /// limit.
    pub fn max_publish_bytes_rate(&self) -> u64 {
        self.max_publish_bytes_rate
    }

    /// Retained messages the broker stores at most
    /// (`max_retained_messages`), each shard its share; a new retained
    /// topic past it is not stored (the PUBLISH is still delivered).
    /// 0: no limit.
    pub fn max_retained_messages(&self) -> u64 {
        self.max_retained_messages
    }

    /// Retained payload bytes the broker stores at most
    /// (`max_retained_bytes`), as `max_retained_messages`. 0: no limit.
    pub fn max_retained_bytes(&self) -> u64 {
        self.max_retained_bytes
    }

    /// How long a connected client may stay past its queue limits (the
    /// publishers of its topics held back) before it is disconnected
    /// (`slow_consumer_timeout_ms`); `None` (0): never.
    pub fn slow_consumer_timeout(&self) -> Option<Duration> {
        (self.slow_consumer_timeout_ms > 0)
            .then(|| Duration::from_millis(self.slow_consumer_timeout_ms))
    }
}

impl Limits {
    /// The defaults of `design.md`, checked at compile time.
    const DEFAULT: Self = Self {
        max_connections: nonzero_u32(1_000_000),
        max_packet_size: nonzero_u32(1_048_576),
        connect_timeout: Duration::from_millis(10_000),
        max_inflight: nonzero_u16(32),
        max_queued_messages: nonzero_u32(1000),
        max_queued_bytes: 1_048_576,
        max_queued_retained: nonzero_u32(1_000_000),
        max_connect_size: nonzero_u32(65_536),
        max_pending_connect_bytes: 16 * 1_048_576,
        max_keepalive: nonzero_u16(240),
        receive_maximum: nonzero_u16(32),
        topic_alias_maximum: 16,
        server_topic_alias_maximum: 16,
        max_session_expiry_s: 604_800,
        // Unlimited, as Mosquitto and EMQX: one client holding 100,000
        // filters is a served use (see the subscribe benchmarks), and the
        // per-session memory is already bounded per SUBSCRIBE by
        // max_packet_size; brokers open to untrusted clients should set it.
        max_subscriptions_per_client: 0,
        // The longest topic MQTT can carry: no limit of its own (a topic
        // is bounded by max_packet_size already); levels as EMQX's
        // `max_topic_levels` default, which no real topic tree reaches
        // and which bounds the trie walks per message.
        max_topic_length: 65_535,
        max_topic_levels: 128,
        // 3.1.1 servers MUST accept 1-23 characters and MAY accept more
        // [MQTT-3.1.3-5]; 256 holds every id scheme seen in practice
        // (UUIDs with prefixes, Azure IoT device ids of up to 128, AWS IoT
        // client ids of up to 128) while keeping what every session's key
        // costs bounded.
        max_client_id_length: 256,
        max_publish_rate: 0,
        max_publish_bytes_rate: 0,
        max_retained_messages: 0,
        max_retained_bytes: 0,
        // Long enough for a subscriber that reads, however slowly, to get
        // back to half its queue (a stall of the network, a GC pause, a
        // reconnecting link), short enough that the publishers of its
        // topics are not held for minutes by one client that stopped.
        slow_consumer_timeout_ms: 30_000,
    };
}

impl Default for Limits {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// The `[log]` table.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LogConfig {
    level: LogLevel,
    format: LogFormat,
}

impl LogConfig {
    /// The most verbose level logged (`level`, or `--log`).
    pub fn level(&self) -> LogLevel {
        self.level
    }

    /// How log lines are written (`format`).
    pub fn format(&self) -> LogFormat {
        self.format
    }
}

/// A log level, from the least to the most verbose.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LogLevel {
    /// Failures only.
    Error,
    /// Failures and anomalies the broker survived.
    Warn,
    /// Start-up, shutdown and rare events (the default).
    #[default]
    Info,
    /// Per-connection events.
    Debug,
    /// Everything.
    Trace,
}

impl LogLevel {
    const ALL: [Self; 5] = [Self::Error, Self::Warn, Self::Info, Self::Debug, Self::Trace];

    /// The name used in the file, on the command line and by `RUST_LOG`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Error => "error",
            Self::Warn => "warn",
            Self::Info => "info",
            Self::Debug => "debug",
            Self::Trace => "trace",
        }
    }

    fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|level| level.as_str().eq_ignore_ascii_case(name))
    }
}

impl fmt::Display for LogLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// Settings given on the command line, applied over the file before
/// validation. Values are kept as typed by the user so that a bad one is
/// refused with the same kind of message as a bad key.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Overrides {
    /// `--listen ADDR`, repeatable: when not empty, these replace the
    /// configured listeners (each with the default backlog).
    pub listen: Vec<String>,
    /// `--shards N`: replaces `shards`.
    pub shards: Option<u32>,
    /// `--log LEVEL`: replaces `log.level`.
    pub log: Option<String>,
}

impl Config {
    /// Reads and validates the configuration file at `path`, then applies
    /// `overrides`.
    pub fn from_file(path: &Path, overrides: &Overrides) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|error| ConfigError::Read { path: path.to_owned(), error })?;
        let source = path.display().to_string();
        Self::from_toml(&text, &source, overrides)
            .map_err(|error| locate::locate(error, &text, &source))
    }

    /// Validates the configuration `text`, then applies `overrides`.
    /// `source` names the text in error messages (usually the file name).
    pub fn from_toml(text: &str, source: &str, overrides: &Overrides) -> Result<Self, ConfigError> {
        Self::from_raw(parse(text, source)?, overrides)
    }

    /// The embedded defaults with `overrides` applied: the configuration
    /// when no file is given.
    pub fn from_overrides(overrides: &Overrides) -> Result<Self, ConfigError> {
        Self::from_raw(RawConfig::default(), overrides)
    }

    /// How many shards to run.
    pub fn shards(&self) -> ShardCount {
        self.shards
    }

    /// The listeners, never empty.
    pub fn listeners(&self) -> &[ListenerConfig] {
        &self.listeners
    }

    /// Whether a client that presents no user name may connect through
    /// `listener`: the listener's `allow_anonymous` if set, else the
    /// global one: always when `true`, never when `false`; when neither is
    /// set, only if the listener is loopback and neither `password_file`
    /// nor `scram_file` is configured (configuring authentication means
    /// every client authenticates unless told otherwise).
    ///
    /// A listener with `use_identity_as_username` has no anonymous clients:
    /// every client is named by its certificate.
    pub fn allow_anonymous_on(&self, listener: &ListenerConfig) -> bool {
        listener
            .allow_anonymous
            .or(self.allow_anonymous)
            .unwrap_or_else(|| !self.authenticates() && listener.is_loopback())
    }

    /// Whether a `password_file` or a `scram_file` is configured.
    fn authenticates(&self) -> bool {
        self.password_file.is_some() || self.scram_file.is_some()
    }

    /// The SCRAM-SHA-256 credentials file (`scram_file`), if MQTT 5.0
    /// enhanced authentication is offered.
    pub fn scram_file(&self) -> Option<&Path> {
        self.scram_file.as_deref()
    }

    /// The password file (`password_file`), if authentication is configured.
    pub fn password_file(&self) -> Option<&Path> {
        self.password_file.as_deref()
    }

    /// The ACL file (`acl_file`), if access control is configured.
    pub fn acl_file(&self) -> Option<&Path> {
        self.acl_file.as_deref()
    }

    /// The resource limits.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The admin HTTP listener's address (`[admin] listen`): `None` when
    /// the section is absent or `listen = ""`; 127.0.0.1:8080 when the
    /// section has no `listen`.
    pub fn admin(&self) -> Option<SocketAddr> {
        self.admin
    }

    /// How often the `$SYS/broker/...` topics are published
    /// (`sys_interval_s`); `None` when they are not (`sys_interval_s = 0`).
    pub fn sys_interval(&self) -> Option<Duration> {
        (self.sys_interval_s > 0).then(|| Duration::from_secs(self.sys_interval_s.into()))
    }

    /// Whether retained messages are served (`retain_available`, default
    /// true). When not: a v5 CONNACK says Retain Available 0, a PUBLISH
    /// with RETAIN 1 closes its connection (5.0: DISCONNECT 0x9A) and a
    /// will with Will Retain 1 is refused (5.0: CONNACK 0x9A).
    pub fn retain_available(&self) -> bool {
        self.retain_available
    }

    /// The start of the Response Information sent to v5 clients that set
    /// Request Response Information 1 (`response_information_prefix`);
    /// `None`: never sent.
    pub fn response_information_prefix(&self) -> Option<&str> {
        self.response_information_prefix.as_deref()
    }

    /// Where every client is sent instead of being served (`[redirect]`).
    pub fn redirect(&self) -> Option<&Redirect> {
        self.redirect.as_ref()
    }

    /// How long a graceful shutdown (SIGTERM, SIGINT) takes to disconnect
    /// the clients (`drain_timeout_s`): they are closed in steps spread
    /// evenly over it, so a fleet reconnects elsewhere without a storm.
    /// Zero: all at once.
    pub fn drain_timeout(&self) -> Duration {
        Duration::from_secs(self.drain_timeout_s.into())
    }

    /// The logging settings.
    pub fn log(&self) -> &LogConfig {
        &self.log
    }

    /// The directory of the durable log (`data_dir`), when one is
    /// configured and `durability` is not `"none"`: each shard keeps its
    /// log in `shard-K/` under it.
    pub fn data_dir(&self) -> Option<&Path> {
        match self.durability {
            Durability::None => None,
            Durability::Always | Durability::Interval(_) => self.data_dir.as_deref(),
        }
    }

    /// `[cluster]`: this node's part in a cluster over NATS; `None` for a
    /// single node.
    pub fn cluster(&self) -> Option<&ClusterConfig> {
        self.cluster.as_ref()
    }

    /// When a record of the durable log counts as written (`durability`):
    /// [`Durability::None`] when [`Config::data_dir`] is `None`.
    pub fn durability(&self) -> Durability {
        self.durability
    }

    /// Applies `overrides` to `raw` and checks everything, in the order of
    /// the schema, returning the first problem found.
    fn from_raw(raw: RawConfig, overrides: &Overrides) -> Result<Self, ConfigError> {
        let shards = match overrides.shards {
            Some(n) => shard_count(Setting::flag("--shards", n), i64::from(n))?,
            None => match raw.shards {
                Some(n) => shard_count(Setting::key("shards", n), n)?,
                None => ShardCount::Auto,
            },
        };
        let listeners = if overrides.listen.is_empty() {
            listeners_from_file(raw.listener)?
        } else {
            listeners_from_flags(&overrides.listen)?
        };
        let (data_dir, durability) = (
            data_dir(raw.data_dir.as_deref())?,
            durability(&raw.data_dir, &raw.durability, raw.fsync_interval_ms)?,
        );
        let config = Self {
            shards,
            allow_anonymous: raw.allow_anonymous,
            password_file: match raw.password_file {
                Some(path) if path.is_empty() => return Err(ConfigError::invalid(
                    "password_file = \"\": must be a path; remove the key for no authentication",
                )),
                path => path.map(PathBuf::from),
            },
            scram_file: match raw.scram_file {
                Some(path) if path.is_empty() => return Err(ConfigError::invalid(
                    "scram_file = \"\": must be a path; remove the key for no SCRAM authentication",
                )),
                path => path.map(PathBuf::from),
            },
            acl_file: match raw.acl_file {
                Some(path) if path.is_empty() => {
                    return Err(ConfigError::invalid(
                        "acl_file = \"\": must be a path; remove the key for no access control",
                    ))
                }
                path => path.map(PathBuf::from),
            },
            listeners: listeners.iter().map(|(listener, _)| listener.clone()).collect(),
            limits: limits(&raw.limits)?,
            admin: admin(raw.admin.as_ref())?,
            sys_interval_s: match raw.sys_interval_s {
                Some(n) => ranged(
                    Setting::key("sys_interval_s", n),
                    n,
                    0,
                    MAX_SYS_INTERVAL_S.into(),
                    |n| u32::try_from(n).ok(),
                )?,
                None => DEFAULT_SYS_INTERVAL_S,
            },
            retain_available: raw.retain_available.unwrap_or(true),
            response_information_prefix: response_information_prefix(
                raw.response_information_prefix,
            )?,
            redirect: redirect(raw.redirect)?,
            drain_timeout_s: match raw.drain_timeout_s {
                Some(n) => ranged(
                    Setting::key("drain_timeout_s", n),
                    n,
                    0,
                    MAX_DRAIN_TIMEOUT_S.into(),
                    |n| u32::try_from(n).ok(),
                )?,
                None => 0,
            },
            data_dir,
            durability,
            log: log(&raw.log, overrides.log.as_deref())?,
            cluster: cluster::cluster(raw.cluster)?,
        };
        config.check_anonymous(&listeners)?;
        Ok(config)
    }

    /// Refuses a configuration that would let anonymous clients in from the
    /// network without being told to, or that no client could ever pass.
    ///
    /// With a `password_file` or a `scram_file` every listener is allowed:
    /// clients authenticate (anonymous ones only where `allow_anonymous =
    /// true`).
    fn check_anonymous(&self, listeners: &[(ListenerConfig, Setting)]) -> Result<(), ConfigError> {
        if self.authenticates() {
            return Ok(());
        }
        let closed = "no authentication is configured (no password_file or scram_file), so no \
                      client could connect";
        // A `use_identity_as_username` listener authenticates by certificate.
        let by_certificate = listeners.iter().any(|(l, _)| l.use_identity_as_username);
        if self.allow_anonymous == Some(false) && !by_certificate {
            return Err(ConfigError::invalid(format!(
                "allow_anonymous = false: {closed}; set password_file, remove the key (loopback \
                 listeners then accept anonymous clients) or set it to true"
            )));
        }
        for (i, (listener, setting)) in listeners.iter().enumerate() {
            if listener.use_identity_as_username {
                continue;
            }
            if listener.allow_anonymous == Some(false) {
                return Err(ConfigError::invalid(format!(
                    "listener[{i}].allow_anonymous = false: {closed} through it; set \
                     password_file, or remove the key"
                )));
            }
            if !self.allow_anonymous_on(listener) {
                let key = match setting.from_flag {
                    true => "allow_anonymous = true".to_owned(),
                    false => format!(
                        "allow_anonymous = true (globally, or listener[{i}].allow_anonymous)"
                    ),
                };
                return Err(ConfigError::invalid(format!(
                    "{setting} is not loopback and no authentication is configured; set {key} \
                     to accept anonymous clients on it"
                )));
            }
        }
        Ok(())
    }
}

impl Default for Config {
    /// The configuration of an empty file: one loopback listener on
    /// [`DEFAULT_BIND`], one shard per core, default limits, `info` text
    /// logs.
    fn default() -> Self {
        Self {
            shards: ShardCount::Auto,
            allow_anonymous: None,
            password_file: None,
            scram_file: None,
            acl_file: None,
            listeners: vec![ListenerConfig::default()],
            limits: Limits::default(),
            admin: None,
            sys_interval_s: DEFAULT_SYS_INTERVAL_S,
            retain_available: true,
            response_information_prefix: None,
            redirect: None,
            drain_timeout_s: 0,
            data_dir: None,
            durability: Durability::None,
            log: LogConfig::default(),
            cluster: None,
        }
    }
}

/// `data_dir`: a non-empty path, or absent (memory only). A relative path
/// is taken from the directory the broker starts in, and made absolute
/// here: glommio opens the log's directories to sync them by absolute path
/// only (a relative one failed at start with EBADF). Whether it can be
/// created and written is checked at start, by the runtime.
fn data_dir(raw: Option<&str>) -> Result<Option<PathBuf>, ConfigError> {
    match raw {
        Some("") => Err(ConfigError::invalid(
            "data_dir = \"\": must be a directory; remove the key to keep everything in memory \
             only",
        )),
        Some(path) => std::path::absolute(path).map(Some).map_err(|error| {
            ConfigError::invalid(format!(
                "data_dir = {path:?}: cannot make it absolute ({error}); give an absolute path"
            ))
        }),
        None => Ok(None),
    }
}

/// `durability` and `fsync_interval_ms`. Without a `data_dir` only
/// `"none"` means anything; with one the default is `"always"`.
/// `fsync_interval_ms` is used by `"interval"` only (the others accept and
/// ignore it, so one file can switch modes with one line).
fn durability(
    data_dir: &Option<String>,
    written: &Option<String>,
    fsync_interval_ms: Option<i64>,
) -> Result<Durability, ConfigError> {
    let interval = match fsync_interval_ms {
        Some(n) => {
            ranged(Setting::key("fsync_interval_ms", n), n, 1, MAX_FSYNC_INTERVAL_MS.into(), |n| {
                u32::try_from(n).ok()
            })?
        }
        None => DEFAULT_FSYNC_INTERVAL_MS,
    };
    let durability = match written.as_deref() {
        None if data_dir.is_some() => Durability::Always,
        None | Some("none") => Durability::None,
        Some("always") => Durability::Always,
        Some("interval") => Durability::Interval(Duration::from_millis(interval.into())),
        Some(other) => {
            return Err(ConfigError::invalid(format!(
                "durability = {other:?}: must be \"always\", \"interval\" or \"none\""
            )))
        }
    };
    if durability != Durability::None && data_dir.is_none() {
        let written = written.as_deref().unwrap_or_default();
        return Err(ConfigError::invalid(format!(
            "durability = {written:?}: needs data_dir (the directory of the durable log); set \
             data_dir or remove the key"
        )));
    }
    Ok(durability)
}

/// A value as the user wrote it, for error messages: `key = value` for a key
/// of the file, `--flag value` for a command-line flag.
#[derive(Clone, Debug)]
struct Setting {
    name: String,
    value: String,
    from_flag: bool,
}

impl Setting {
    fn key(name: impl Into<String>, value: impl fmt::Debug) -> Self {
        Self { name: name.into(), value: format!("{value:?}"), from_flag: false }
    }

    fn flag(name: &str, value: impl fmt::Debug) -> Self {
        Self { name: name.to_owned(), value: format!("{value:?}"), from_flag: true }
    }
}

impl fmt::Display for Setting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.from_flag {
            write!(f, "{} {}", self.name, self.value)
        } else {
            write!(f, "{} = {}", self.name, self.value)
        }
    }
}

/// Reads `text` into the raw schema; errors carry the file position and the
/// full path of the key (e.g. `listener[1].bnd`).
fn parse(text: &str, source: &str) -> Result<RawConfig, ConfigError> {
    serde_path_to_error::deserialize(toml::Deserializer::new(text)).map_err(|error| {
        let path = error.path().to_string();
        let error = error.into_inner();
        let location = match error.span() {
            Some(span) => {
                let (line, column) = locate::line_column(text, span.start);
                format!("{source}:{line}:{column}")
            }
            None => source.to_owned(),
        };
        let mut message = describe_parse_error(&path, error.message());
        // A syntax error (no key known to serde) on a `KEY =` line: most
        // often a value missing or unquoted.
        let key = error
            .span()
            .filter(|_| path == ".")
            .and_then(|span| locate::key_on_line(text, span.start));
        if let Some(key) = key {
            message = format!(
                "{key}: the value is missing or not valid TOML ({message}); write one after `=` \
                 (ringmq.toml shows every key with its default) or remove the line"
            );
        }
        ConfigError::Parse { location, message }
    })
}

/// Rewrites a serde/TOML error message as one line that names the key and
/// speaks TOML rather than Rust.
fn describe_parse_error(path: &str, message: &str) -> String {
    let message: Vec<&str> = message.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    let message = message.join("; ");
    // serde's words for an unknown field: "unknown field `KEY`, expected
    // one of `A`, `B`" (or "expected `A`", or "there are no fields").
    if let Some(rest) = message.strip_prefix("unknown field `") {
        let known = rest.split_once("`, ").map_or("", |(_, known)| known);
        return format!("unknown key `{path}` ({known})");
    }
    let message = message
        .replace("expected i64", "expected an integer")
        .replace("expected a sequence", "expected an array of tables");
    // The raw schema's struct names mean nothing to a user: they are tables.
    let message = match message.find("expected struct Raw") {
        Some(at) => format!("{}expected a table", &message[..at]),
        None => message,
    };
    if path == "." {
        message
    } else {
        format!("{path}: {message}")
    }
}

/// The `[admin]` table: `None` when absent or `listen = ""`.
fn admin(raw: Option<&RawAdmin>) -> Result<Option<SocketAddr>, ConfigError> {
    match raw.map(|admin| admin.listen.as_deref()) {
        None | Some(Some("")) => Ok(None),
        Some(None) => Ok(Some(DEFAULT_ADMIN_LISTEN)),
        Some(Some(text)) => socket_address(Setting::key("admin.listen", text), text).map(Some),
    }
}

fn shard_count(setting: Setting, n: i64) -> Result<ShardCount, ConfigError> {
    if n == 0 {
        return Ok(ShardCount::Auto);
    }
    u16::try_from(n)
        .ok()
        .filter(|n| *n <= MAX_SHARDS)
        .and_then(NonZeroU16::new)
        .map(ShardCount::Fixed)
        .ok_or_else(|| {
            ConfigError::invalid(format!(
                "{setting}: must be between 0 and {MAX_SHARDS} (0 = one shard per core)"
            ))
        })
}

/// The listeners of the file (the default one when the key is absent), each
/// with the setting that names it in later errors.
fn listeners_from_file(
    raw: Option<Vec<RawListener>>,
) -> Result<Vec<(ListenerConfig, Setting)>, ConfigError> {
    let Some(raw) = raw else {
        let setting = Setting::key("listener[0].bind", DEFAULT_BIND.to_string());
        return Ok(vec![(ListenerConfig::default(), setting)]);
    };
    if raw.is_empty() {
        return Err(ConfigError::invalid(format!(
            "listener = []: at least one listener is required; remove the key to get the \
             default one on {DEFAULT_BIND}"
        )));
    }
    let mut listeners: Vec<(ListenerConfig, Setting)> = Vec::with_capacity(raw.len());
    for (i, raw) in raw.iter().enumerate() {
        let listener = listener_from_file(i, raw)?;
        let written = raw.bind.clone().unwrap_or_else(|| DEFAULT_BIND.to_string());
        let setting = Setting::key(format!("listener[{i}].bind"), written);
        if let Some(earlier) = listeners.iter().position(|(l, _)| same_address(l, &listener)) {
            return Err(ConfigError::invalid(format!(
                "{setting}: listener[{earlier}] already binds this address; give each \
                 listener its own"
            )));
        }
        listeners.push((listener, setting));
    }
    Ok(listeners)
}

fn listener_from_file(i: usize, raw: &RawListener) -> Result<ListenerConfig, ConfigError> {
    let key = |name: &str| format!("listener[{i}].{name}");
    let bind = match &raw.bind {
        Some(text) => socket_address(Setting::key(key("bind"), text), text)?,
        None => DEFAULT_BIND,
    };
    let websocket_path = match (raw.protocol.as_deref(), raw.path.as_deref()) {
        (None | Some("mqtt"), None) => None,
        (None | Some("mqtt"), Some(_)) => {
            return Err(ConfigError::invalid(format!(
                "{}: only a WebSocket listener has a path; set {} = \"ws\" or remove the key",
                key("path"),
                key("protocol")
            )))
        }
        (Some("ws"), path) => Some(websocket_path(&key("path"), path)?),
        (Some(other), _) => {
            return Err(ConfigError::invalid(format!(
                "{}: must be \"mqtt\" or \"ws\"",
                Setting::key(key("protocol"), other)
            )))
        }
    };
    let tls = raw.tls.as_ref().map(|tls| tls_files(i, tls)).transpose()?;
    let use_identity_as_username = raw.use_identity_as_username.unwrap_or(false);
    if use_identity_as_username && tls.as_ref().and_then(|tls| tls.client_ca.as_ref()).is_none() {
        return Err(ConfigError::invalid(format!(
            "{} = true: needs client certificates; set {} (and {}) or remove the key",
            key("use_identity_as_username"),
            key("tls.client_ca"),
            key("tls.cert/key"),
        )));
    }
    let listen_backlog = match raw.listen_backlog {
        Some(n) => ranged(Setting::key(key("listen_backlog"), n), n, 1, 65_535, |n| {
            u16::try_from(n).ok().and_then(NonZeroU16::new)
        })?,
        None => ListenerConfig::DEFAULT_LISTEN_BACKLOG,
    };
    let per_listener = |name: &str, value: Option<i64>| match value {
        Some(n) => {
            ranged(Setting::key(key(name), n), n, 0, u32::MAX.into(), |n| u32::try_from(n).ok())
        }
        None => Ok(0),
    };
    let max_connections = per_listener("max_connections", raw.max_connections)?;
    let max_connection_rate = per_listener("max_connection_rate", raw.max_connection_rate)?;
    Ok(ListenerConfig {
        bind,
        listen_backlog,
        allow_anonymous: raw.allow_anonymous,
        max_connections,
        max_connection_rate,
        tls,
        use_identity_as_username,
        websocket_path,
        proxy_protocol: raw.proxy_protocol.unwrap_or(false),
    })
}

/// The path of a WebSocket listener (`path`, default
/// [`ListenerConfig::DEFAULT_WEBSOCKET_PATH`]): an absolute path, printable
/// ASCII without a query or fragment.
fn websocket_path(key: &str, path: Option<&str>) -> Result<String, ConfigError> {
    let Some(path) = path else { return Ok(ListenerConfig::DEFAULT_WEBSOCKET_PATH.to_owned()) };
    let valid = path.starts_with('/')
        && path.len() <= 1024
        && path.bytes().all(|b| b.is_ascii_graphic() && b != b'?' && b != b'#');
    if !valid {
        return Err(ConfigError::invalid(format!(
            "{}: must be an absolute path such as \"/mqtt\" (printable ASCII, no spaces, \
             '?' or '#', at most 1024 bytes)",
            Setting::key(key.to_owned(), path)
        )));
    }
    Ok(path.to_owned())
}

/// The paths of a listener's `tls` table; the files are read by the
/// network layer (a bad file is refused there, naming the same keys).
fn tls_files(i: usize, raw: &raw::RawTls) -> Result<TlsFiles, ConfigError> {
    let path = |name: &str, value: &Option<String>| match value.as_deref() {
        Some("") => Err(ConfigError::invalid(format!(
            "listener[{i}].tls.{name} = \"\": must be the path of a PEM file"
        ))),
        Some(path) => Ok(Some(PathBuf::from(path))),
        None => Ok(None),
    };
    let required = |name: &str, value: &Option<String>| {
        path(name, value)?.ok_or_else(|| {
            ConfigError::invalid(format!(
                "listener[{i}].tls.{name}: missing; a TLS listener needs both cert and key \
                 (PEM files)"
            ))
        })
    };
    Ok(TlsFiles {
        cert: required("cert", &raw.cert)?,
        key: required("key", &raw.key)?,
        client_ca: path("client_ca", &raw.client_ca)?,
    })
}

/// The listeners of `--listen` flags, replacing those of the file.
fn listeners_from_flags(
    addresses: &[String],
) -> Result<Vec<(ListenerConfig, Setting)>, ConfigError> {
    let mut listeners: Vec<(ListenerConfig, Setting)> = Vec::with_capacity(addresses.len());
    for text in addresses {
        let setting = Setting::flag("--listen", text);
        let listener =
            ListenerConfig { bind: socket_address(setting.clone(), text)?, ..Default::default() };
        if listeners.iter().any(|(l, _)| same_address(l, &listener)) {
            return Err(ConfigError::invalid(format!("{setting}: given twice")));
        }
        listeners.push((listener, setting));
    }
    Ok(listeners)
}

/// Whether two listeners would bind the same socket. With port 0 each bind
/// gets its own port, so those never clash.
fn same_address(a: &ListenerConfig, b: &ListenerConfig) -> bool {
    a.bind == b.bind && a.bind.port() != 0
}

fn socket_address(setting: Setting, text: &str) -> Result<SocketAddr, ConfigError> {
    text.parse().map_err(|_| {
        ConfigError::invalid(format!("{setting}: not a socket address (e.g. \"0.0.0.0:1883\")"))
    })
}

fn limits(raw: &RawLimits) -> Result<Limits, ConfigError> {
    let default = Limits::default();
    let u16_nonzero = |n: i64| u16::try_from(n).ok().and_then(NonZeroU16::new);
    let u32_nonzero = |n: i64| u32::try_from(n).ok().and_then(NonZeroU32::new);
    Ok(Limits {
        max_connections: limit(
            "max_connections",
            raw.max_connections,
            default.max_connections,
            (1, u32::MAX.into()),
            u32_nonzero,
        )?,
        max_packet_size: limit(
            "max_packet_size",
            raw.max_packet_size,
            default.max_packet_size,
            // Below 64 bytes not even a typical CONNECT fits; above, no MQTT
            // packet can be that large.
            (64, MAX_MQTT_PACKET_SIZE.into()),
            u32_nonzero,
        )?,
        connect_timeout: limit(
            "connect_timeout_ms",
            raw.connect_timeout_ms,
            default.connect_timeout,
            (1, 3_600_000),
            |n| u64::try_from(n).ok().map(Duration::from_millis),
        )?,
        max_inflight: limit(
            "max_inflight",
            raw.max_inflight,
            default.max_inflight,
            // Each inflight message holds one of the 65535 packet ids
            // [MQTT-2.2.1-3].
            (1, 65_535),
            u16_nonzero,
        )?,
        max_queued_messages: limit(
            "max_queued_messages",
            raw.max_queued_messages,
            default.max_queued_messages,
            (1, u32::MAX.into()),
            u32_nonzero,
        )?,
        max_queued_bytes: limit(
            "max_queued_bytes",
            raw.max_queued_bytes,
            default.max_queued_bytes,
            (1, i64::MAX),
            |n| u64::try_from(n).ok(),
        )?,
        max_queued_retained: limit(
            "max_queued_retained",
            raw.max_queued_retained,
            default.max_queued_retained,
            (1, u32::MAX.into()),
            u32_nonzero,
        )?,
        max_connect_size: limit(
            "max_connect_size",
            raw.max_connect_size,
            default.max_connect_size,
            // As max_packet_size; the smaller of the two applies.
            (64, MAX_MQTT_PACKET_SIZE.into()),
            u32_nonzero,
        )?,
        max_pending_connect_bytes: limit(
            "max_pending_connect_bytes",
            raw.max_pending_connect_bytes,
            default.max_pending_connect_bytes,
            (1, i64::MAX),
            |n| u64::try_from(n).ok(),
        )?,
        max_keepalive: limit(
            "max_keepalive",
            raw.max_keepalive,
            default.max_keepalive,
            // Keep Alive is a Two Byte Integer of seconds (MQTT 5.0
            // §3.1.2.10); 0 would disable it.
            (1, 65_535),
            u16_nonzero,
        )?,
        receive_maximum: limit(
            "receive_maximum",
            raw.receive_maximum,
            default.receive_maximum,
            // A Receive Maximum of 0 is a Protocol Error (MQTT 5.0 §3.2.2.3.3).
            (1, 65_535),
            u16_nonzero,
        )?,
        topic_alias_maximum: limit(
            "topic_alias_maximum",
            raw.topic_alias_maximum,
            default.topic_alias_maximum,
            // 0: the client may send no Topic Alias [MQTT-3.2.2-18].
            (0, 65_535),
            |n| u16::try_from(n).ok(),
        )?,
        server_topic_alias_maximum: limit(
            "server_topic_alias_maximum",
            raw.server_topic_alias_maximum,
            default.server_topic_alias_maximum,
            // 0: the server sends no Topic Alias. The session finds a
            // topic's alias with a scan, so the cap keeps it short.
            (0, 255),
            |n| u16::try_from(n).ok(),
        )?,
        max_session_expiry_s: limit(
            "max_session_expiry_s",
            raw.max_session_expiry_s,
            default.max_session_expiry_s,
            // A Four Byte Integer; 0xFFFFFFFF means "never expires" (MQTT 5.0
            // §3.1.2.11.2).
            (0, u32::MAX.into()),
            |n| u32::try_from(n).ok(),
        )?,
        max_subscriptions_per_client: limit(
            "max_subscriptions_per_client",
            raw.max_subscriptions_per_client,
            default.max_subscriptions_per_client,
            // 0: no limit.
            (0, u32::MAX.into()),
            |n| u32::try_from(n).ok(),
        )?,
        max_topic_length: limit(
            "max_topic_length",
            raw.max_topic_length,
            default.max_topic_length,
            // A topic is a UTF-8 string of at most 65,535 bytes (1.5.4).
            (1, 65_535),
            |n| u16::try_from(n).ok(),
        )?,
        max_topic_levels: limit(
            "max_topic_levels",
            raw.max_topic_levels,
            default.max_topic_levels,
            // 65,535 bytes hold at most 32,768 levels.
            (1, 32_768),
            |n| u16::try_from(n).ok(),
        )?,
        max_client_id_length: limit(
            "max_client_id_length",
            raw.max_client_id_length,
            default.max_client_id_length,
            // [MQTT-3.1.3-5]: 23 must be accepted.
            (23, 65_535),
            |n| u16::try_from(n).ok(),
        )?,
        max_publish_rate: limit(
            "max_publish_rate",
            raw.max_publish_rate,
            default.max_publish_rate,
            // 0: no limit.
            (0, u32::MAX.into()),
            |n| u32::try_from(n).ok(),
        )?,
        max_publish_bytes_rate: limit(
            "max_publish_bytes_rate",
            raw.max_publish_bytes_rate,
            default.max_publish_bytes_rate,
            (0, i64::MAX),
            |n| u64::try_from(n).ok(),
        )?,
        max_retained_messages: limit(
            "max_retained_messages",
            raw.max_retained_messages,
            default.max_retained_messages,
            (0, i64::MAX),
            |n| u64::try_from(n).ok(),
        )?,
        max_retained_bytes: limit(
            "max_retained_bytes",
            raw.max_retained_bytes,
            default.max_retained_bytes,
            (0, i64::MAX),
            |n| u64::try_from(n).ok(),
        )?,
        slow_consumer_timeout_ms: limit(
            "slow_consumer_timeout_ms",
            raw.slow_consumer_timeout_ms,
            default.slow_consumer_timeout_ms,
            (0, 86_400_000),
            |n| u64::try_from(n).ok(),
        )?,
    })
}

/// `response_information_prefix`: a non-empty start of a topic name.
fn response_information_prefix(raw: Option<String>) -> Result<Option<String>, ConfigError> {
    match raw {
        None => Ok(None),
        Some(prefix) if prefix.is_empty() || prefix.contains(['+', '#', '\0']) => {
            Err(ConfigError::invalid(format!(
                "{}: must be a non-empty topic name start without '+', '#' or NUL (e.g. \
                 \"reply/\"); remove the key to send no Response Information",
                Setting::key("response_information_prefix", &prefix)
            )))
        }
        // Each client's Response Information adds its id to it, so the
        // whole name must stay within a UTF-8 string's 65,535 bytes.
        Some(prefix) if prefix.len() > 32_768 => Err(ConfigError::invalid(
            "response_information_prefix: longer than 32768 bytes; shorten it",
        )),
        Some(prefix) => Ok(Some(prefix)),
    }
}

/// The `[redirect]` table.
fn redirect(raw: Option<RawRedirect>) -> Result<Option<Redirect>, ConfigError> {
    let Some(raw) = raw else { return Ok(None) };
    let server_reference = match raw.server_reference {
        Some(reference) if !reference.trim().is_empty() && reference.len() <= 65_535 => reference,
        _ => {
            return Err(ConfigError::invalid(
                "redirect.server_reference: missing or empty; set where clients should go \
                 (e.g. \"mqtt2.example.com:1883\"), or remove [redirect] to serve clients",
            ))
        }
    };
    let mode = match raw.mode.as_deref() {
        None | Some("use_another") => RedirectMode::UseAnother,
        Some("moved") => RedirectMode::Moved,
        Some(other) => {
            return Err(ConfigError::invalid(format!(
                "{}: must be \"use_another\" (0x9C, for now) or \"moved\" (0x9D, for good)",
                Setting::key("redirect.mode", other)
            )))
        }
    };
    Ok(Some(Redirect { server_reference, mode }))
}

/// `limits.KEY`: `default` when absent, else `raw` checked against `range`
/// and converted to its type.
fn limit<T>(
    key: &str,
    raw: Option<i64>,
    default: T,
    (min, max): (i64, i64),
    convert: impl FnOnce(i64) -> Option<T>,
) -> Result<T, ConfigError> {
    match raw {
        Some(n) => ranged(Setting::key(format!("limits.{key}"), n), n, min, max, convert),
        None => Ok(default),
    }
}

/// `n` converted by `convert` when it lies in `min..=max`; else an error
/// naming `setting` and the range. `convert` must succeed on the range.
fn ranged<T>(
    setting: Setting,
    n: i64,
    min: i64,
    max: i64,
    convert: impl FnOnce(i64) -> Option<T>,
) -> Result<T, ConfigError> {
    (min..=max)
        .contains(&n)
        .then(|| convert(n))
        .flatten()
        .ok_or_else(|| ConfigError::invalid(format!("{setting}: must be between {min} and {max}")))
}

fn log(raw: &RawLog, level_flag: Option<&str>) -> Result<LogConfig, ConfigError> {
    let levels = || LogLevel::ALL.map(LogLevel::as_str).join(", ");
    let level = match (level_flag, &raw.level) {
        (Some(name), _) => LogLevel::parse(name).ok_or_else(|| {
            ConfigError::invalid(format!(
                "{}: must be one of {}",
                Setting::flag("--log", name),
                levels()
            ))
        })?,
        (None, Some(name)) => LogLevel::parse(name).ok_or_else(|| {
            ConfigError::invalid(format!(
                "{}: must be one of {}",
                Setting::key("log.level", name),
                levels()
            ))
        })?,
        (None, None) => LogLevel::default(),
    };
    let format = match raw.format.as_deref() {
        None | Some("text") => LogFormat::Text,
        Some("json") => LogFormat::Json,
        Some(other) => {
            return Err(ConfigError::invalid(format!(
                "{}: must be \"text\" or \"json\"",
                Setting::key("log.format", other)
            )))
        }
    };
    Ok(LogConfig { level, format })
}

/// `NonZeroU16` of a non-zero constant. Only used to build constants, so a
/// zero fails the build rather than the broker.
const fn nonzero_u16(n: u16) -> NonZeroU16 {
    match NonZeroU16::new(n) {
        Some(n) => n,
        None => panic!("a NonZeroU16 constant is zero"),
    }
}

/// `NonZeroU32` of a non-zero constant. Only used to build constants, so a
/// zero fails the build rather than the broker.
const fn nonzero_u32(n: u32) -> NonZeroU32 {
    match NonZeroU32::new(n) {
        Some(n) => n,
        None => panic!("a NonZeroU32 constant is zero"),
    }
}
