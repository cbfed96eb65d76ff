//! The `[cluster]` table: this node's part in a ringmq cluster whose nodes
//! exchange matched publishes over NATS (issue 17, design.md "Beyond one
//! VM"). Absent: a single node, and the shards pay nothing for it beyond a
//! `None` check.
//!
//! ```toml
//! [cluster]
//! node_id = "node-a"                     # required: unique in the cluster
//! nats = ["nats://10.0.0.5:4222"]        # required: seed servers
//! user = "ringmq"                        # with password; or token
//! password = "secret"
//! tls_ca = "/etc/ringmq/nats-ca.pem"     # TLS to NATS, trusting this CA
//! subject_prefix = "ringmq"
//! local_only = ["$SYS/#"]
//! queue_capacity = 8192
//! batch_delay_us = 200                   # a shard wakes the bridge at most this often
//! node_timeout_ms = 5000                 # QoS 1/2: a silent node stops holding acks
//! ack_timeout_ms = 500                   # QoS 1/2: re-sent to a node that did not ack
//! max_pending_acks = 16384               # QoS 1/2 waiting for remote acks, per node
//! max_payload = 1048576                  # the NATS servers' max_payload
//! retained = "cluster"                   # or "node"
//! sessions = "cluster"                   # or "node"
//! kv_replicas = 1                        # of the two JetStream buckets
//! ```

use super::{ConfigError, Setting};
use crate::protocol::TopicFilter;
use serde::Deserialize;
use std::path::PathBuf;

/// The default `subject_prefix`.
pub const DEFAULT_SUBJECT_PREFIX: &str = "ringmq";

/// The default `queue_capacity`.
pub const DEFAULT_QUEUE_CAPACITY: usize = 8192;

/// The range of `queue_capacity`.
const QUEUE_CAPACITY_RANGE: (i64, i64) = (16, 1 << 20);

/// The default `batch_delay_us`: at 20,000 messages a second a batch
/// holds about four, and a message waits at most 0.2 ms for its batch.
pub const DEFAULT_BATCH_DELAY_US: u64 = 200;

/// The default `node_timeout_ms`.
pub const DEFAULT_NODE_TIMEOUT_MS: u64 = 5000;

/// The default `ack_timeout_ms`.
pub const DEFAULT_ACK_TIMEOUT_MS: u64 = 500;

/// The default `max_pending_acks`.
pub const DEFAULT_MAX_PENDING_ACKS: usize = 16384;

/// The default `max_payload`: the NATS server's own default.
pub const DEFAULT_MAX_PAYLOAD: u32 = 1 << 20;

/// What a cluster frame adds to an MQTT packet at most, beyond its topic,
/// properties and payload: the frame header and the publisher's client id
/// (see `router::cluster::frame`). `max_packet_size` is lowered to
/// `max_payload` minus this, so that any accepted PUBLISH fits a NATS
/// message.
pub const FRAME_RESERVE: u32 = 4096;

/// The longest `node_id`.
const MAX_NODE_ID_LEN: usize = 64;

/// The longest `subject_prefix`: it starts every subject, and NATS caps
/// the control line (`PUB subject size`) at 4 KiB by default.
const MAX_PREFIX_LEN: usize = 128;

/// The `[cluster]` table as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCluster {
    pub(super) node_id: Option<String>,
    pub(super) nats: Option<Vec<String>>,
    pub(super) user: Option<String>,
    pub(super) password: Option<String>,
    pub(super) token: Option<String>,
    pub(super) tls_ca: Option<String>,
    pub(super) subject_prefix: Option<String>,
    pub(super) local_only: Option<Vec<String>>,
    pub(super) queue_capacity: Option<i64>,
    pub(super) batch_delay_us: Option<i64>,
    pub(super) node_timeout_ms: Option<i64>,
    pub(super) ack_timeout_ms: Option<i64>,
    pub(super) max_pending_acks: Option<i64>,
    pub(super) max_payload: Option<i64>,
    pub(super) retained: Option<String>,
    pub(super) sessions: Option<String>,
    pub(super) kv_replicas: Option<i64>,
}

/// How the node authenticates to NATS.
#[derive(Clone, PartialEq, Eq)]
pub enum NatsCredentials {
    /// None: the NATS server lets anonymous clients in.
    None,
    /// `user` and `password`.
    UserPassword {
        /// `user`.
        user: String,
        /// `password`.
        password: String,
    },
    /// `token`.
    Token(String),
}

impl std::fmt::Debug for NatsCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Secrets are redacted.
        match self {
            Self::None => f.write_str("None"),
            Self::UserPassword { user, .. } => write!(f, "UserPassword({user:?}, <redacted>)"),
            Self::Token(_) => f.write_str("Token(<redacted>)"),
        }
    }
}

/// `retained`: where the retained messages live.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RetainedScope {
    /// `"cluster"` (the default): in a JetStream key-value bucket every
    /// node watches (the NATS servers need JetStream, `-js`); a subscriber
    /// on any node gets what was retained on any node.
    Cluster,
    /// `"node"`: each node keeps its own (no JetStream needed).
    Node,
}

/// `sessions`: where a client id is unique.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionScope {
    /// `"cluster"` (the default): a client id is claimed in a JetStream
    /// key-value bucket before its CONNACK; connecting on another node
    /// takes the session over and moves it there.
    Cluster,
    /// `"node"`: each node keeps its own sessions.
    Node,
}

/// A validated `[cluster]` table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterConfig {
    /// `node_id`: this node's name in the cluster (logs, the NATS
    /// connection's name).
    pub node_id: String,
    /// `nats`: the seed servers, `nats://host:port` or `tls://host:port`;
    /// never empty.
    pub nats: Vec<String>,
    /// `user`/`password` or `token`.
    pub credentials: NatsCredentials,
    /// `tls_ca`: the CA that signs the NATS servers' certificates; TLS is
    /// required when set.
    pub tls_ca: Option<PathBuf>,
    /// `subject_prefix`: the first NATS tokens of every subject the node
    /// uses; nodes of one cluster share it.
    pub subject_prefix: String,
    /// `local_only`: filters whose matching topics never leave the node.
    pub local_only: Vec<TopicFilter>,
    /// `queue_capacity`: messages each queue between a shard and the NATS
    /// bridge holds, each way.
    pub queue_capacity: usize,
    /// `batch_delay_us`: a shard wakes the NATS bridge for the messages it
    /// queued at most once per this long (at once after a quiet spell),
    /// so that they cross in one batch; 0: once per turn of the shard.
    pub batch_delay: std::time::Duration,
    /// `retained`: cluster-wide retained messages, or per node.
    pub retained: RetainedScope,
    /// `sessions`: sessions unique in the cluster, or per node.
    pub sessions: SessionScope,
    /// `kv_replicas`: the replicas of the JetStream buckets of retained
    /// messages and sessions when the node creates them (1 to 5).
    pub kv_replicas: usize,
    /// `node_timeout_ms`: a node not heard from for this long (while this
    /// node is connected to NATS) is taken for dead: QoS 1/2 messages stop
    /// waiting for its acknowledgement.
    pub node_timeout: std::time::Duration,
    /// `ack_timeout_ms`: a QoS 1/2 message not acknowledged by an
    /// interested node within this is sent to that node again.
    pub ack_timeout: std::time::Duration,
    /// `max_pending_acks`: QoS 1/2 messages of this node waiting for other
    /// nodes' acknowledgements at most; past it publishers are held.
    pub max_pending_acks: usize,
    /// `max_payload`: the largest NATS message the servers take (their
    /// `max_payload`); `limits.max_packet_size` is lowered to fit.
    pub max_payload: u32,
}

impl ClusterConfig {
    /// The largest MQTT packet that still fits one NATS message.
    pub fn max_packet_size(&self) -> std::num::NonZeroU32 {
        std::num::NonZeroU32::new(self.max_payload - FRAME_RESERVE)
            .unwrap_or(std::num::NonZeroU32::MIN)
    }
}

/// Validates the `[cluster]` table: `None` when absent.
pub(super) fn cluster(raw: Option<RawCluster>) -> Result<Option<ClusterConfig>, ConfigError> {
    let Some(raw) = raw else { return Ok(None) };
    let node_id =
        match raw.node_id {
            None => return Err(ConfigError::invalid(
                "cluster.node_id: missing; set a name unique in the cluster (e.g. \"node-a\"), \
                 or remove [cluster] to run a single node",
            )),
            Some(id) if id.is_empty() || id.len() > MAX_NODE_ID_LEN || !id.chars().all(is_name) => {
                return Err(ConfigError::invalid(format!(
                    "{}: must be 1 to {MAX_NODE_ID_LEN} characters of A-Z, a-z, 0-9, '-' and '_'",
                    Setting::key("cluster.node_id", &id)
                )))
            }
            Some(id) => id,
        };
    let nats = match raw.nats {
        None => {
            return Err(ConfigError::invalid(
                "cluster.nats: missing; list the NATS servers to connect to (e.g. \
                 [\"nats://127.0.0.1:4222\"])",
            ))
        }
        Some(seeds) if seeds.is_empty() => {
            return Err(ConfigError::invalid(
                "cluster.nats = []: list at least one NATS server (e.g. \
                 [\"nats://127.0.0.1:4222\"])",
            ))
        }
        Some(seeds) => seeds,
    };
    for (i, seed) in nats.iter().enumerate() {
        if let Err(why) = check_seed(seed) {
            return Err(ConfigError::invalid(format!(
                "{}: {why}; write nats://HOST:PORT or tls://HOST:PORT",
                Setting::key(format!("cluster.nats[{i}]"), seed)
            )));
        }
    }
    let credentials =
        match (raw.user, raw.password, raw.token) {
            (None, None, None) => NatsCredentials::None,
            (Some(_), _, Some(_)) | (_, Some(_), Some(_)) => {
                return Err(ConfigError::invalid(
                    "cluster.token: set either token or user and password, not both",
                ))
            }
            (None, None, Some(token)) if token.is_empty() => return Err(ConfigError::invalid(
                "cluster.token = \"\": must not be empty; remove the key to connect without one",
            )),
            (None, None, Some(token)) => NatsCredentials::Token(token),
            (Some(user), Some(password), None) if !user.is_empty() => {
                NatsCredentials::UserPassword { user, password }
            }
            (Some(_), Some(_), None) => {
                return Err(ConfigError::invalid(
                    "cluster.user = \"\": must not be empty; set the NATS user name",
                ))
            }
            (Some(_), None, None) => {
                return Err(ConfigError::invalid(
                    "cluster.user: needs cluster.password too; set both or neither",
                ))
            }
            (None, Some(_), None) => {
                return Err(ConfigError::invalid(
                    "cluster.password: needs cluster.user too; set both or neither",
                ))
            }
        };
    let tls_ca =
        match raw.tls_ca {
            Some(path) if path.is_empty() => return Err(ConfigError::invalid(
                "cluster.tls_ca = \"\": must be a path; remove the key for plain NATS connections",
            )),
            path => path.map(PathBuf::from),
        };
    let subject_prefix = match raw.subject_prefix {
        None => DEFAULT_SUBJECT_PREFIX.to_owned(),
        Some(prefix)
            if prefix.len() <= MAX_PREFIX_LEN
                && prefix.split('.').all(|t| !t.is_empty() && t.chars().all(is_name)) =>
        {
            prefix
        }
        Some(prefix) => {
            return Err(ConfigError::invalid(format!(
                "{}: must be NATS tokens of A-Z, a-z, 0-9, '-' and '_' joined by '.', at most \
                 {MAX_PREFIX_LEN} bytes (e.g. \"ringmq\" or \"prod.mqtt\")",
                Setting::key("cluster.subject_prefix", &prefix)
            )))
        }
    };
    let local_only = match raw.local_only {
        None => vec![TopicFilter::new("$SYS/#").expect("a valid filter")],
        Some(filters) => {
            let mut parsed = Vec::with_capacity(filters.len());
            for (i, text) in filters.into_iter().enumerate() {
                let setting = Setting::key(format!("cluster.local_only[{i}]"), &text);
                match TopicFilter::new(text) {
                    Ok(filter) if !filter.is_shared() => parsed.push(filter.detached()),
                    Ok(_) => {
                        return Err(ConfigError::invalid(format!(
                            "{setting}: must be a plain topic filter, not a shared subscription"
                        )))
                    }
                    Err(error) => {
                        return Err(ConfigError::invalid(format!(
                            "{setting}: not a valid MQTT topic filter ({error})"
                        )))
                    }
                }
            }
            parsed
        }
    };
    let queue_capacity = match raw.queue_capacity {
        None => DEFAULT_QUEUE_CAPACITY,
        Some(n) => {
            let (min, max) = QUEUE_CAPACITY_RANGE;
            super::ranged(Setting::key("cluster.queue_capacity", n), n, min, max, |n| {
                usize::try_from(n).ok()
            })?
        }
    };
    let millis = |key: &str, raw: Option<i64>, default: u64, min: i64, max: i64| match raw {
        None => Ok(std::time::Duration::from_millis(default)),
        Some(n) => super::ranged(Setting::key(format!("cluster.{key}"), n), n, min, max, |n| {
            u64::try_from(n).ok().map(std::time::Duration::from_millis)
        }),
    };
    let batch_delay = match raw.batch_delay_us {
        None => std::time::Duration::from_micros(DEFAULT_BATCH_DELAY_US),
        Some(n) => super::ranged(Setting::key("cluster.batch_delay_us", n), n, 0, 100_000, |n| {
            u64::try_from(n).ok().map(std::time::Duration::from_micros)
        })?,
    };
    let node_timeout =
        millis("node_timeout_ms", raw.node_timeout_ms, DEFAULT_NODE_TIMEOUT_MS, 200, 600_000)?;
    let ack_timeout =
        millis("ack_timeout_ms", raw.ack_timeout_ms, DEFAULT_ACK_TIMEOUT_MS, 10, 60_000)?;
    let max_pending_acks = match raw.max_pending_acks {
        None => DEFAULT_MAX_PENDING_ACKS,
        Some(n) => {
            super::ranged(Setting::key("cluster.max_pending_acks", n), n, 16, 1 << 20, |n| {
                usize::try_from(n).ok()
            })?
        }
    };
    let max_payload = match raw.max_payload {
        None => DEFAULT_MAX_PAYLOAD,
        Some(n) => super::ranged(
            Setting::key("cluster.max_payload", n),
            n,
            i64::from(2 * FRAME_RESERVE),
            64 << 20,
            |n| u32::try_from(n).ok(),
        )?,
    };
    let retained = match raw.retained.as_deref() {
        None | Some("cluster") => RetainedScope::Cluster,
        Some("node") => RetainedScope::Node,
        Some(other) => {
            return Err(ConfigError::invalid(format!(
                "{}: must be \"cluster\" (a JetStream bucket shared by the nodes) or \"node\" \
                 (each node its own)",
                Setting::key("cluster.retained", other)
            )))
        }
    };
    let sessions = match raw.sessions.as_deref() {
        None | Some("cluster") => SessionScope::Cluster,
        Some("node") => SessionScope::Node,
        Some(other) => {
            return Err(ConfigError::invalid(format!(
                "{}: must be \"cluster\" (a client id is unique in the cluster; its session \
                 follows it) or \"node\" (each node its own)",
                Setting::key("cluster.sessions", other)
            )))
        }
    };
    let kv_replicas = match raw.kv_replicas {
        None => 1,
        Some(n) => super::ranged(Setting::key("cluster.kv_replicas", n), n, 1, 5, |n| {
            usize::try_from(n).ok()
        })?,
    };
    Ok(Some(ClusterConfig {
        node_id,
        nats,
        credentials,
        tls_ca,
        subject_prefix,
        local_only,
        queue_capacity,
        batch_delay,
        node_timeout,
        ack_timeout,
        max_pending_acks,
        max_payload,
        retained,
        sessions,
        kv_replicas,
    }))
}

/// A character of a node id or of a subject prefix's token.
fn is_name(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '-' || c == '_'
}

/// Checks a seed: `nats://` or `tls://` (or no scheme), an optional
/// `user:pass@`, a host and a port.
fn check_seed(seed: &str) -> Result<(), &'static str> {
    let rest = match seed.split_once("://") {
        Some(("nats" | "tls", rest)) => rest,
        Some(_) => return Err("the scheme must be nats:// or tls://"),
        None => seed,
    };
    let host_port = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
    let (host, port) = host_port.rsplit_once(':').ok_or("missing :PORT")?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || host.contains(['/', ' ']) {
        return Err("missing or malformed host");
    }
    match port.parse::<u16>() {
        Ok(port) if port > 0 => Ok(()),
        _ => Err("the port must be a number from 1 to 65535"),
    }
}

#[cfg(test)]
mod tests {
    use super::super::{locate, Config, Overrides};
    use super::*;

    const MINIMAL: &str = "[cluster]\nnode_id = \"a\"\nnats = [\"nats://127.0.0.1:4222\"]\n";

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml(text, "test.toml", &Overrides::default())
    }

    /// The one-line error of `text`, placed as `Config::from_file` does.
    fn error(text: &str) -> String {
        let error = parse(text).expect_err("refused");
        let message = locate::locate(error, text, "test.toml").to_string();
        assert!(!message.contains('\n'), "{message}");
        message
    }

    #[test]
    fn absent_is_a_single_node() {
        assert_eq!(parse("").unwrap().cluster(), None);
    }

    #[test]
    fn defaults_of_a_minimal_table() {
        let config = parse(MINIMAL).unwrap();
        let cluster = config.cluster().unwrap();
        assert_eq!(cluster.node_id, "a");
        assert_eq!(cluster.nats, ["nats://127.0.0.1:4222"]);
        assert_eq!(cluster.credentials, NatsCredentials::None);
        assert_eq!(cluster.tls_ca, None);
        assert_eq!(cluster.subject_prefix, DEFAULT_SUBJECT_PREFIX);
        assert_eq!(cluster.local_only, [TopicFilter::new("$SYS/#").unwrap()]);
        assert_eq!(cluster.queue_capacity, DEFAULT_QUEUE_CAPACITY);
        assert_eq!(cluster.batch_delay.as_micros(), u128::from(DEFAULT_BATCH_DELAY_US));
        assert_eq!(cluster.node_timeout.as_millis(), u128::from(DEFAULT_NODE_TIMEOUT_MS));
        assert_eq!(cluster.ack_timeout.as_millis(), u128::from(DEFAULT_ACK_TIMEOUT_MS));
        assert_eq!(cluster.max_pending_acks, DEFAULT_MAX_PENDING_ACKS);
        assert_eq!(cluster.max_payload, DEFAULT_MAX_PAYLOAD);
        assert_eq!(cluster.max_packet_size().get(), DEFAULT_MAX_PAYLOAD - FRAME_RESERVE);
        assert_eq!(cluster.retained, RetainedScope::Cluster);
        assert_eq!(cluster.sessions, SessionScope::Cluster);
        assert_eq!(cluster.kv_replicas, 1);
    }

    #[test]
    fn every_key_is_read() {
        let text = "[cluster]\nnode_id = \"node-b_2\"\nnats = [\"tls://n1:4222\", \"n2:4223\"]\n\
                    user = \"u\"\npassword = \"p\"\ntls_ca = \"/ca.pem\"\n\
                    subject_prefix = \"prod.mqtt\"\nlocal_only = [\"local/#\", \"+/x\"]\n\
                    queue_capacity = 100\nbatch_delay_us = 0\nnode_timeout_ms = 900\nack_timeout_ms = 50\n\
                    max_pending_acks = 64\nmax_payload = 65536\nretained = \"node\"\nsessions = \"node\"\n\
                    kv_replicas = 3\n";
        let config = parse(text).unwrap();
        let cluster = config.cluster().unwrap();
        assert_eq!(cluster.nats.len(), 2);
        let user = NatsCredentials::UserPassword { user: "u".into(), password: "p".into() };
        assert_eq!(cluster.credentials, user);
        assert!(!format!("{cluster:?}").contains("\"p\""), "the password is redacted");
        assert_eq!(cluster.tls_ca.as_deref(), Some(std::path::Path::new("/ca.pem")));
        assert_eq!(cluster.subject_prefix, "prod.mqtt");
        assert_eq!(cluster.local_only.len(), 2);
        assert_eq!(cluster.queue_capacity, 100);
        assert_eq!(cluster.batch_delay, std::time::Duration::ZERO);
        assert_eq!(cluster.node_timeout.as_millis(), 900);
        assert_eq!(cluster.ack_timeout.as_millis(), 50);
        assert_eq!(cluster.max_pending_acks, 64);
        assert_eq!(cluster.max_payload, 65536);
        assert_eq!(cluster.retained, RetainedScope::Node);
        assert_eq!(cluster.sessions, SessionScope::Node);
        assert_eq!(cluster.kv_replicas, 3);
        let token = parse(&format!("{MINIMAL}token = \"t\"")).unwrap();
        assert_eq!(token.cluster().unwrap().credentials, NatsCredentials::Token("t".into()));
    }

    #[test]
    fn refusals_name_the_key_and_its_position() {
        let cases = [
            ("[cluster]\nnats = [\"nats://h:1\"]", "config error: cluster.node_id: missing"),
            ("[cluster]\nnode_id = \"a\"", "config error: cluster.nats: missing"),
            ("[cluster]\nnode_id = \"a b\"\nnats = [\"h:1\"]", "test.toml:2:11: cluster.node_id"),
            ("[cluster]\nnode_id = \"a\"\nnats = []", "test.toml:3:8: cluster.nats = []"),
            (
                "[cluster]\nnode_id = \"a\"\nnats = [\"h:1\", \"http://h:2\"]",
                "test.toml:3:16: cluster.nats[1] = \"http://h:2\": the scheme",
            ),
            (
                "[cluster]\nnode_id = \"a\"\nnats = [\"h\"]",
                "cluster.nats[0] = \"h\": missing :PORT",
            ),
            ("[cluster]\nnode_id = \"a\"\nnats = [\"h:0\"]", "cluster.nats[0] = \"h:0\": the port"),
            (&format!("{MINIMAL}user = \"u\""), "test.toml:4:8: cluster.user: needs"),
            (&format!("{MINIMAL}password = \"p\""), "cluster.password: needs cluster.user"),
            (&format!("{MINIMAL}token = \"t\"\nuser = \"u\""), "cluster.token: set either"),
            (&format!("{MINIMAL}token = \"\""), "cluster.token = \"\": must not be empty"),
            (&format!("{MINIMAL}tls_ca = \"\""), "cluster.tls_ca = \"\": must be a path"),
            (&format!("{MINIMAL}subject_prefix = \"a..b\""), "test.toml:4:18: cluster.subject"),
            (&format!("{MINIMAL}subject_prefix = \"a>\""), "cluster.subject_prefix = \"a>\""),
            (&format!("{MINIMAL}local_only = [\"a/#/b\"]"), "cluster.local_only[0] = \"a/#/b\""),
            (&format!("{MINIMAL}local_only = [\"$share/g/a\"]"), "not a shared subscription"),
            (&format!("{MINIMAL}queue_capacity = 1"), "test.toml:4:18: cluster.queue_capacity"),
            (&format!("{MINIMAL}batch_delay_us = -1"), "cluster.batch_delay_us = -1: must be"),
            (&format!("{MINIMAL}node_timeout_ms = 5"), "cluster.node_timeout_ms = 5: must be"),
            (&format!("{MINIMAL}ack_timeout_ms = 0"), "cluster.ack_timeout_ms = 0: must be"),
            (&format!("{MINIMAL}max_pending_acks = 1"), "cluster.max_pending_acks = 1: must"),
            (&format!("{MINIMAL}max_payload = 100"), "cluster.max_payload = 100: must be"),
            (&format!("{MINIMAL}nodes = 3"), "unknown key `cluster.nodes`"),
            (&format!("{MINIMAL}retained = \"all\""), "test.toml:4:12: cluster.retained = \"all\""),
            (&format!("{MINIMAL}sessions = \"x\""), "test.toml:4:12: cluster.sessions = \"x\""),
            (&format!("{MINIMAL}kv_replicas = 6"), "test.toml:4:15: cluster.kv_replicas = 6"),
        ];
        for (text, expected) in cases {
            let message = error(text);
            assert!(message.contains(expected), "{text:?}: {message}");
        }
    }

    #[test]
    fn a_changed_cluster_needs_a_restart() {
        let (old, new) = (parse(MINIMAL).unwrap(), parse("").unwrap());
        assert_eq!(old.changes(&new).needs_restart, ["cluster"]);
    }
}
