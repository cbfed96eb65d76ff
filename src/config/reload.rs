//! What a re-read configuration changes ([`Config::changes`]): which keys
//! a running broker can apply (the `[limits]`, `log.level`,
//! `sys_interval_s`, `drain_timeout_s`, the paths of `password_file` and
//! `acl_file`) and which need a restart; and the configuration that runs
//! once the appliable ones are applied ([`Config::reloaded`]).

use super::{Config, Limits};
use std::fmt;

/// The differences between the running configuration and a re-read one.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// The `[limits]` keys that changed, in the order of the schema.
    pub limits: Vec<Change>,
    /// `log.level`, when it changed.
    pub log_level: Option<Change>,
    /// `password_file` or `acl_file` pointing at another file (both
    /// files are re-read on every reload anyway; adding or removing the
    /// key needs a restart).
    pub files: Vec<Change>,
    /// `sys_interval_s` and `drain_timeout_s`, those that changed.
    pub intervals: Vec<Change>,
    /// Keys that changed but take effect only at the next start (e.g.
    /// `shards`, `listener`): reported, never applied.
    pub needs_restart: Vec<&'static str>,
}

impl Changes {
    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.limits.is_empty()
            && self.log_level.is_none()
            && self.files.is_empty()
            && self.intervals.is_empty()
            && self.needs_restart.is_empty()
    }
}

/// One key's old and new value, shown as `key: old -> new`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    /// The key's full path, e.g. `limits.max_inflight`.
    pub key: &'static str,
    /// The running value, as written in the file.
    pub old: String,
    /// The re-read value.
    pub new: String,
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {} -> {}", self.key, self.old, self.new)
    }
}

impl Config {
    /// What changes from `self` (running) to `new` (re-read).
    pub fn changes(&self, new: &Config) -> Changes {
        let mut needs_restart = Vec::new();
        let mut restart_if = |changed: bool, key| {
            if changed {
                needs_restart.push(key);
            }
        };
        restart_if(self.shards != new.shards, "shards");
        restart_if(self.allow_anonymous != new.allow_anonymous, "allow_anonymous");
        restart_if(self.listeners != new.listeners, "listener");
        restart_if(self.admin != new.admin, "admin.listen");
        restart_if(self.log.format != new.log.format, "log.format");
        restart_if(self.retain_available != new.retain_available, "retain_available");
        restart_if(
            self.response_information_prefix != new.response_information_prefix,
            "response_information_prefix",
        );
        restart_if(self.redirect != new.redirect, "redirect");
        // The SCRAM file is read at start; its contents are not re-read.
        restart_if(self.scram_file != new.scram_file, "scram_file");
        // Turning authentication or access control on or off changes who
        // may connect and what existing sessions were checked against.
        restart_if(self.password_file.is_some() != new.password_file.is_some(), "password_file");
        restart_if(self.acl_file.is_some() != new.acl_file.is_some(), "acl_file");
        let files = [
            ("password_file", &self.password_file, &new.password_file),
            ("acl_file", &self.acl_file, &new.acl_file),
        ]
        .into_iter()
        .filter_map(|(key, old, new)| match (old, new) {
            (Some(old), Some(new)) if old != new => {
                Some(Change { key, old: format!("{old:?}"), new: format!("{new:?}") })
            }
            _ => None,
        })
        .collect();
        // The log is opened and replayed at start.
        restart_if(self.data_dir != new.data_dir, "data_dir");
        restart_if(self.durability != new.durability, "durability");
        // The NATS bridge connects and subscribes at start.
        restart_if(self.cluster != new.cluster, "cluster");
        let log_level = (self.log.level != new.log.level).then(|| Change {
            key: "log.level",
            old: self.log.level.to_string(),
            new: new.log.level.to_string(),
        });
        let interval = |key, old: u32, new: u32| {
            (old != new).then(|| Change { key, old: old.to_string(), new: new.to_string() })
        };
        let intervals = [
            interval("sys_interval_s", self.sys_interval_s, new.sys_interval_s),
            interval("drain_timeout_s", self.drain_timeout_s, new.drain_timeout_s),
        ];
        Changes {
            limits: limit_changes(&self.limits, &new.limits),
            log_level,
            intervals: intervals.into_iter().flatten().collect(),
            files,
            needs_restart,
        }
    }

    /// `self` with the parts of `new` that a running broker applies (the
    /// `[limits]`, `log.level`, `sys_interval_s`, `drain_timeout_s`, and the
    /// paths of the password and ACL files where both name one); the rest
    /// stays as it started.
    pub fn reloaded(&self, new: &Config) -> Config {
        let mut running = self.clone();
        running.limits = new.limits;
        running.log.level = new.log.level;
        if self.password_file.is_some() && new.password_file.is_some() {
            running.password_file.clone_from(&new.password_file);
        }
        if self.acl_file.is_some() && new.acl_file.is_some() {
            running.acl_file.clone_from(&new.acl_file);
        }
        running.sys_interval_s = new.sys_interval_s;
        running.drain_timeout_s = new.drain_timeout_s;
        running
    }
}

/// The `[limits]` keys whose value differs, with the values as written in
/// the file (`connect_timeout_ms` in milliseconds).
fn limit_changes(old: &Limits, new: &Limits) -> Vec<Change> {
    let values = |limits: &Limits| -> [(&'static str, String); 23] {
        // Destructured, so that a new limit cannot be left out unnoticed.
        let Limits {
            max_connections,
            max_packet_size,
            connect_timeout,
            max_inflight,
            max_queued_messages,
            max_queued_bytes,
            max_queued_retained,
            max_connect_size,
            max_pending_connect_bytes,
            max_keepalive,
            receive_maximum,
            topic_alias_maximum,
            server_topic_alias_maximum,
            max_session_expiry_s,
            max_subscriptions_per_client,
            max_topic_length,
            max_topic_levels,
            max_client_id_length,
            max_publish_rate,
            max_publish_bytes_rate,
            max_retained_messages,
            max_retained_bytes,
            slow_consumer_timeout_ms,
        } = limits;
        [
            ("limits.max_connections", max_connections.to_string()),
            ("limits.max_packet_size", max_packet_size.to_string()),
            ("limits.connect_timeout_ms", connect_timeout.as_millis().to_string()),
            ("limits.max_inflight", max_inflight.to_string()),
            ("limits.max_queued_messages", max_queued_messages.to_string()),
            ("limits.max_queued_bytes", max_queued_bytes.to_string()),
            ("limits.max_queued_retained", max_queued_retained.to_string()),
            ("limits.max_connect_size", max_connect_size.to_string()),
            ("limits.max_pending_connect_bytes", max_pending_connect_bytes.to_string()),
            ("limits.max_keepalive", max_keepalive.to_string()),
            ("limits.receive_maximum", receive_maximum.to_string()),
            ("limits.topic_alias_maximum", topic_alias_maximum.to_string()),
            ("limits.server_topic_alias_maximum", server_topic_alias_maximum.to_string()),
            ("limits.max_session_expiry_s", max_session_expiry_s.to_string()),
            ("limits.max_subscriptions_per_client", max_subscriptions_per_client.to_string()),
            ("limits.max_topic_length", max_topic_length.to_string()),
            ("limits.max_topic_levels", max_topic_levels.to_string()),
            ("limits.max_client_id_length", max_client_id_length.to_string()),
            ("limits.max_publish_rate", max_publish_rate.to_string()),
            ("limits.max_publish_bytes_rate", max_publish_bytes_rate.to_string()),
            ("limits.max_retained_messages", max_retained_messages.to_string()),
            ("limits.max_retained_bytes", max_retained_bytes.to_string()),
            ("limits.slow_consumer_timeout_ms", slow_consumer_timeout_ms.to_string()),
        ]
    };
    values(old)
        .into_iter()
        .zip(values(new))
        .filter(|((_, old), (_, new))| old != new)
        .map(|((key, old), (_, new))| Change { key, old, new })
        .collect()
}
