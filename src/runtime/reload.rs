//! SIGHUP: re-read the configuration and apply what can change without a
//! restart.
//!
//! The signal thread re-reads the file with the command line's overrides
//! ([`Reload::read`]). A refused file changes nothing and logs one error
//! line naming the key. An accepted one is compared with the running
//! configuration ([`Config::changes`]): keys that need a restart
//! (`shards`, `listener`, `admin.listen`, ...) are logged and not applied;
//! changed `[limits]` are logged one line each (`limits.max_inflight: 32 ->
//! 64`) and published in [`SharedLimits`], which every shard checks at its
//! tick; `sys_interval_s` and `drain_timeout_s` go to [`SharedIntervals`],
//! read when they are needed; a changed `log.level` goes to
//! [`Reload::set_log_level`].
//!
//! Every SIGHUP also re-reads `password_file` and `acl_file` (changed or
//! not in the configuration): a file that cannot be read or parsed keeps
//! the one in force and logs one error line with the file and line. A new
//! password file goes to the verification threads (new CONNECTs are
//! checked against it); the connected clients of users it removed, or
//! whose password it changed, are closed by their shards at their next
//! tick (v5: DISCONNECT 0x87 Not authorized), as Mosquitto does. A new ACL file is
//! published in [`SharedAcl`]: each shard takes it at its next tick, for
//! new connections and for every existing session from its next check, as
//! Mosquitto re-applies its ACLs to connected clients.
//!
//! Every accepted reload also re-reads the certificates and keys of the TLS
//! listeners (at the paths the broker started with: a changed path needs a
//! restart) and publishes them in [`SharedTls`]: connections accepted after
//! the shards' next tick use them. A listener whose files cannot be used
//! keeps its previous certificate, with one error line naming the key.

use super::preflight;
use crate::auth::acl::AclFile;
use crate::auth::pool::Verifier;
use crate::auth::PasswordFile;
use crate::config::{Config, ConfigError, LogLevel};
use crate::net::tls::{self, ListenerTls};
use crate::net::NetLimits;
use crate::session::SessionLimits;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// How the runtime re-reads the configuration on SIGHUP; given by the
/// command, which knows the file, the flags and the log subscriber.
pub struct Reload {
    /// Reads the configuration again: the same file, the same overrides.
    pub read: Box<dyn FnMut() -> Result<Config, ConfigError> + Send>,
    /// Applies a new `log.level`; the error says why it was not applied
    /// (e.g. `--log` or `RUST_LOG` take precedence).
    pub set_log_level: Box<dyn FnMut(LogLevel) -> Result<(), String> + Send>,
}

impl std::fmt::Debug for Reload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reload").finish_non_exhaustive()
    }
}

/// The limits in force, shared by the shards: replaced by a reload, read
/// by each shard at its tick when `generation` moved.
#[derive(Debug)]
pub(super) struct SharedLimits {
    /// Bumped after each replacement of `limits`.
    generation: AtomicU64,
    limits: Mutex<(SessionLimits, NetLimits)>,
}

impl SharedLimits {
    pub(super) fn new(config: &Config) -> Self {
        Self { generation: AtomicU64::new(0), limits: Mutex::new(limits(config)) }
    }

    /// The generation and limits in force.
    pub(super) fn current(&self) -> (u64, SessionLimits, NetLimits) {
        let limits = self.limits.lock().unwrap_or_else(PoisonError::into_inner);
        (self.generation.load(Ordering::Acquire), limits.0, limits.1)
    }

    /// The limits, when their generation is not `seen` (one atomic load
    /// when nothing changed).
    pub(super) fn changed_since(&self, seen: u64) -> Option<(u64, SessionLimits, NetLimits)> {
        (self.generation.load(Ordering::Acquire) != seen).then(|| self.current())
    }

    fn replace(&self, config: &Config) {
        *self.limits.lock().unwrap_or_else(PoisonError::into_inner) = limits(config);
        self.generation.fetch_add(1, Ordering::AcqRel);
    }
}

/// The ACL file in force, shared by the shards: replaced by a reload, read
/// by each shard at its tick when `generation` moved.
#[derive(Debug)]
pub(super) struct SharedAcl {
    /// Bumped after each replacement of `file`.
    generation: AtomicU64,
    file: Mutex<Option<Arc<AclFile>>>,
}

impl SharedAcl {
    pub(super) fn new(file: Option<Arc<AclFile>>) -> Self {
        Self { generation: AtomicU64::new(0), file: Mutex::new(file) }
    }

    /// The generation and file in force.
    pub(super) fn current(&self) -> (u64, Option<Arc<AclFile>>) {
        let file = self.file.lock().unwrap_or_else(PoisonError::into_inner);
        (self.generation.load(Ordering::Acquire), file.clone())
    }

    /// The file, when its generation is not `seen` (one atomic load when
    /// nothing changed).
    pub(super) fn changed_since(&self, seen: u64) -> Option<(u64, Option<Arc<AclFile>>)> {
        (self.generation.load(Ordering::Acquire) != seen).then(|| self.current())
    }

    fn replace(&self, file: Arc<AclFile>) {
        *self.file.lock().unwrap_or_else(PoisonError::into_inner) = Some(file);
        self.generation.fetch_add(1, Ordering::AcqRel);
    }
}

/// The TLS configurations of the listeners, shared by the shards: replaced
/// by a reload, read by each shard at its tick when `generation` moved.
#[derive(Debug)]
pub(super) struct SharedTls {
    /// Bumped after each replacement of `tls`.
    generation: AtomicU64,
    tls: Mutex<ListenerTls>,
}

impl SharedTls {
    pub(super) fn new(tls: ListenerTls) -> Self {
        Self { generation: AtomicU64::new(0), tls: Mutex::new(tls) }
    }

    /// The generation and configurations in force.
    pub(super) fn current(&self) -> (u64, ListenerTls) {
        let tls = self.tls.lock().unwrap_or_else(PoisonError::into_inner);
        (self.generation.load(Ordering::Acquire), tls.clone())
    }

    /// The configurations, when their generation is not `seen` (one atomic
    /// load when nothing changed).
    pub(super) fn changed_since(&self, seen: u64) -> Option<(u64, ListenerTls)> {
        (self.generation.load(Ordering::Acquire) != seen).then(|| self.current())
    }

    fn replace(&self, tls: ListenerTls) {
        *self.tls.lock().unwrap_or_else(PoisonError::into_inner) = tls;
        self.generation.fetch_add(1, Ordering::AcqRel);
    }
}

/// The password and ACL files in force, for re-reading them on SIGHUP.
#[derive(Debug, Default)]
pub(super) struct AuthState {
    /// The password file in force and the threads that check against it
    /// (both or neither).
    pub(super) passwords: Option<(PasswordFile, Arc<Verifier>)>,
    /// Where the shards take the ACL file from; its current file is
    /// `acl.current()`.
    pub(super) acl: Option<Arc<SharedAcl>>,
}

impl AuthState {
    /// Re-reads the files `running` names; logs what changed.
    fn reload(&mut self, running: &Config) {
        if let (Some(path), Some((old, verifier))) = (running.password_file(), &mut self.passwords)
        {
            match PasswordFile::load(path) {
                Err(error) => tracing::error!("reload: {error}; the file in force stays"),
                Ok(new) => {
                    let changes = old.changes_to(&new);
                    if changes.is_empty() {
                        tracing::info!(path = %path.display(), "reload: password_file unchanged");
                    } else {
                        tracing::info!(
                            path = %path.display(),
                            users = new.len(),
                            added = changes.added,
                            removed = changes.removed,
                            changed = changes.changed,
                            "reload: password_file applied; connections of removed users and \
                             of changed passwords are closed"
                        );
                        verifier.replace(new.clone(), changes.revoked);
                        *old = new;
                    }
                }
            }
        }
        if let (Some(path), Some(shared)) = (running.acl_file(), &self.acl) {
            match AclFile::load(path) {
                Err(error) => tracing::error!("reload: {error}; the file in force stays"),
                Ok(new) => match shared.current().1 {
                    Some(old) if *old == new => {
                        tracing::info!(path = %path.display(), "reload: acl_file unchanged");
                    }
                    old => {
                        tracing::info!(
                            path = %path.display(),
                            users = new.users(),
                            rules = new.rules(),
                            previous_users = old.as_ref().map_or(0, |old| old.users()),
                            previous_rules = old.as_ref().map_or(0, |old| old.rules()),
                            "reload: acl_file applied to new connections and, from their next \
                             check, to connected clients"
                        );
                        shared.replace(Arc::new(new));
                    }
                },
            }
        }
    }
}

/// `sys_interval_s` and `drain_timeout_s` in force, replaced by a reload:
/// shard 0 reads the first at each tick, every shard the second when a
/// shutdown starts.
#[derive(Debug)]
pub(super) struct SharedIntervals {
    /// Seconds; 0: no `$SYS` topics.
    sys_interval_s: AtomicU32,
    /// Seconds; 0: every client disconnected at once.
    drain_timeout_s: AtomicU32,
}

impl SharedIntervals {
    pub(super) fn new(config: &Config) -> Self {
        let intervals =
            Self { sys_interval_s: AtomicU32::new(0), drain_timeout_s: AtomicU32::new(0) };
        intervals.replace(config);
        intervals
    }

    /// How often the `$SYS` topics are published; `None`: never.
    pub(super) fn sys_interval(&self) -> Option<Duration> {
        let seconds = self.sys_interval_s.load(Ordering::Relaxed);
        (seconds > 0).then(|| Duration::from_secs(seconds.into()))
    }

    /// Over how long a shutdown spreads the disconnection of clients.
    pub(super) fn drain_timeout(&self) -> Duration {
        Duration::from_secs(self.drain_timeout_s.load(Ordering::Relaxed).into())
    }

    fn replace(&self, config: &Config) {
        let seconds = |d: Duration| u32::try_from(d.as_secs()).unwrap_or(u32::MAX);
        let sys = config.sys_interval().map_or(0, seconds);
        self.sys_interval_s.store(sys, Ordering::Relaxed);
        self.drain_timeout_s.store(seconds(config.drain_timeout()), Ordering::Relaxed);
    }
}

/// The session and network limits of the `[limits]` section (and
/// `retain_available`, which a reload does not change).
fn limits(config: &Config) -> (SessionLimits, NetLimits) {
    let limits = config.limits();
    // In a cluster every accepted PUBLISH must fit one NATS message: a
    // larger one is refused as any packet past the Maximum Packet Size
    // (v5: DISCONNECT 0x95, advertised in the CONNACK; 3.1.1: the
    // connection is closed), never acknowledged and then lost.
    let max_packet_size = match config.cluster() {
        Some(cluster) => limits.max_packet_size().min(cluster.max_packet_size()),
        None => limits.max_packet_size(),
    };
    let session = SessionLimits {
        max_inflight: limits.max_inflight(),
        max_queued_messages: limits.max_queued_messages().get() as usize,
        max_queued_bytes: usize::try_from(limits.max_queued_bytes()).unwrap_or(usize::MAX),
        max_queued_retained: limits.max_queued_retained().get() as usize,
        max_keepalive: limits.max_keepalive().get(),
        receive_maximum: limits.receive_maximum(),
        topic_alias_maximum: limits.topic_alias_maximum(),
        server_topic_alias_maximum: limits.server_topic_alias_maximum(),
        max_session_expiry: match limits.max_session_expiry_s() {
            u32::MAX => None,
            seconds => Some(Duration::from_secs(seconds.into())),
        },
        max_packet_size: Some(max_packet_size),
        max_subscriptions: usize::try_from(limits.max_subscriptions_per_client())
            .unwrap_or(usize::MAX),
        retain_available: config.retain_available(),
        auth_timeout: limits.connect_timeout(),
        max_topic_length: limits.max_topic_length().into(),
        max_topic_levels: limits.max_topic_levels().into(),
        max_client_id_length: limits.max_client_id_length().into(),
        max_publish_rate: limits.max_publish_rate(),
        max_publish_bytes_rate: limits.max_publish_bytes_rate(),
        max_retained_messages: usize::try_from(limits.max_retained_messages())
            .unwrap_or(usize::MAX),
        max_retained_bytes: usize::try_from(limits.max_retained_bytes()).unwrap_or(usize::MAX),
        slow_consumer_timeout: limits.slow_consumer_timeout(),
    };
    let net = NetLimits {
        max_packet_size: max_packet_size.get(),
        max_connect_size: limits.max_connect_size().get(),
        max_pending_connect_bytes: usize::try_from(limits.max_pending_connect_bytes())
            .unwrap_or(usize::MAX),
        connect_timeout: limits.connect_timeout(),
        max_connections: limits.max_connections().get() as usize,
    };
    (session, net)
}

/// What the signal thread keeps between reloads.
pub(super) struct Reloader {
    /// What runs: the start's configuration with every applied reload.
    running: Config,
    reload: Option<Reload>,
    limits: Arc<SharedLimits>,
    intervals: Arc<SharedIntervals>,
    /// Filled once the verification threads run (they start after the
    /// signal watcher, so that they inherit its blocked signals).
    auth: Arc<Mutex<AuthState>>,
    tls: Arc<SharedTls>,
}

impl Reloader {
    pub(super) fn new(
        running: Config,
        reload: Option<Reload>,
        limits: Arc<SharedLimits>,
        intervals: Arc<SharedIntervals>,
        auth: Arc<Mutex<AuthState>>,
        tls: Arc<SharedTls>,
    ) -> Self {
        Self { running, reload, limits, intervals, auth, tls }
    }
}

/// Re-reads the certificates and keys of the TLS listeners of `running`
/// into `shared`; a listener whose files cannot be used keeps the ones it
/// has.
fn reload_tls(running: &Config, shared: &SharedTls) {
    let (_, mut configs) = shared.current();
    let mut reloaded = false;
    for (i, listener) in running.listeners().iter().enumerate() {
        let (Some(files), Some(slot)) = (listener.tls(), configs.get_mut(i)) else {
            continue;
        };
        match tls::load(i, files) {
            Ok(config) => {
                *slot = Some(config);
                reloaded = true;
                tracing::info!("reload: listener[{i}].tls: certificate and key re-read");
            }
            Err(error) => tracing::error!(
                "reload: {error}; listener[{i}] keeps its previous certificate and key"
            ),
        }
    }
    if reloaded {
        shared.replace(configs);
    }
}

impl Reloader {
    /// Handles one SIGHUP.
    pub(super) fn reload(&mut self) {
        let Some(reload) = self.reload.as_mut() else {
            tracing::info!(
                "SIGHUP: no configuration file (started without --config): nothing to reload"
            );
            return;
        };
        let new = match (reload.read)() {
            Ok(new) => new,
            Err(error) => {
                tracing::error!("reload refused, the running configuration stays: {error}");
                return;
            }
        };
        reload_tls(&self.running, &self.tls);
        let changes = self.running.changes(&new);
        if changes.is_empty() {
            tracing::info!("reload: no changes in the configuration");
        }
        // The level first: the lines below are logged at the new one.
        if let Some(change) = &changes.log_level {
            match (reload.set_log_level)(new.log().level()) {
                Ok(()) => tracing::info!("reload: {change}"),
                Err(why) => tracing::warn!("reload: {change}: not applied: {why}"),
            }
        }
        for key in &changes.needs_restart {
            tracing::warn!("reload: {key} changed: needs a restart, not applied");
        }
        if !changes.limits.is_empty() {
            for change in &changes.limits {
                tracing::info!("reload: {change}");
            }
            preflight::raise_open_files(u64::from(new.limits().max_connections().get()));
        }
        for change in &changes.intervals {
            tracing::info!("reload: {change}");
        }
        for change in &changes.files {
            tracing::info!("reload: {change}");
        }
        self.running = self.running.reloaded(&new);
        if !changes.limits.is_empty() {
            self.limits.replace(&self.running);
        }
        self.intervals.replace(&self.running);
        self.auth.lock().unwrap_or_else(PoisonError::into_inner).reload(&self.running);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Overrides;
    use std::sync::atomic::AtomicUsize;

    fn config(text: &str) -> Config {
        Config::from_toml(text, "test.toml", &Overrides::default()).unwrap()
    }

    #[test]
    fn a_good_file_bumps_the_generation_a_bad_one_changes_nothing() {
        let start = config("[limits]\nmax_queued_messages = 2\n");
        let shared = Arc::new(SharedLimits::new(&start));
        let (generation, session, _) = shared.current();
        assert_eq!(session.max_queued_messages, 2);
        let texts = Arc::new(Mutex::new(vec![
            "[limits]\nmax_queued_messages = 2\n", // unchanged
            "[limits]\nmax_queued_messages = 0\n", // refused
            "[limits]\nmax_queued_messages = 7\nmax_connections = 10\n",
            "sys_interval_s = 3\ndrain_timeout_s = 20\n\
             [limits]\nmax_queued_messages = 7\nmax_connections = 10\n",
        ]));
        let levels = Arc::new(AtomicUsize::new(0));
        let reload = Reload {
            read: Box::new({
                let texts = Arc::clone(&texts);
                move || {
                    let text = texts.lock().unwrap().remove(0);
                    Config::from_toml(text, "test.toml", &Overrides::default())
                }
            }),
            set_log_level: Box::new({
                let levels = Arc::clone(&levels);
                move |_| {
                    levels.fetch_add(1, Ordering::SeqCst);
                    Ok(())
                }
            }),
        };
        let intervals = Arc::new(SharedIntervals::new(&start));
        let tls = Arc::new(SharedTls::new(vec![None]));
        let mut reloader = Reloader::new(
            start,
            Some(reload),
            Arc::clone(&shared),
            Arc::clone(&intervals),
            Arc::default(),
            tls,
        );
        reloader.reload();
        assert_eq!(shared.changed_since(generation), None);
        reloader.reload();
        assert_eq!(shared.changed_since(generation), None);
        reloader.reload();
        let (next, session, net) = shared.changed_since(generation).expect("changed");
        assert_ne!(next, generation);
        assert_eq!(session.max_queued_messages, 7);
        assert_eq!(net.max_connections, 10);
        assert_eq!(levels.load(Ordering::SeqCst), 0, "the level did not change");
        assert_eq!(intervals.sys_interval(), Some(Duration::from_secs(10)));
        assert_eq!(intervals.drain_timeout(), Duration::ZERO);
        reloader.reload();
        assert_eq!(intervals.sys_interval(), Some(Duration::from_secs(3)));
        assert_eq!(intervals.drain_timeout(), Duration::from_secs(20));
    }

    #[test]
    fn without_a_file_a_reload_does_nothing() {
        let shared = Arc::new(SharedLimits::new(&Config::default()));
        let intervals = Arc::new(SharedIntervals::new(&Config::default()));
        let tls = Arc::new(SharedTls::new(vec![None]));
        Reloader::new(Config::default(), None, Arc::clone(&shared), intervals, Arc::default(), tls)
            .reload();
        assert_eq!(shared.changed_since(0), None);
    }

    #[test]
    fn the_auth_files_are_re_read_and_a_broken_one_keeps_the_one_in_force() {
        let dir = std::env::temp_dir().join(format!("ringmq-reload-auth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (passwd, acl) = (dir.join("passwd"), dir.join("acl"));
        let mut users = PasswordFile::default();
        users.set_password("alice", b"a").unwrap();
        std::fs::write(&passwd, users.to_text()).unwrap();
        std::fs::write(&acl, "user alice\ntopic a\n").unwrap();
        let running = config(&format!("password_file = {passwd:?}\nacl_file = {acl:?}\n"));
        let first = Arc::new(AclFile::load(&acl).unwrap());
        let shared = Arc::new(SharedAcl::new(Some(Arc::clone(&first))));
        let verifier = Arc::new(Verifier::start(users.clone(), 1, 4).unwrap());
        let mut state =
            AuthState { passwords: Some((users, Arc::clone(&verifier))), acl: Some(shared) };
        let generation = |state: &AuthState| state.acl.as_ref().unwrap().current().0;
        let users = |state: &AuthState| state.passwords.as_ref().unwrap().0.len();

        // Unchanged files: nothing replaced.
        state.reload(&running);
        assert_eq!((generation(&state), users(&state)), (0, 1));
        // New files: both replaced.
        let mut more = PasswordFile::parse(&std::fs::read_to_string(&passwd).unwrap()).unwrap();
        more.set_password("bob", b"b").unwrap();
        std::fs::write(&passwd, more.to_text()).unwrap();
        std::fs::write(&acl, "user alice\ntopic b\n").unwrap();
        state.reload(&running);
        assert_eq!((generation(&state), users(&state)), (1, 2));
        let (_, file) = state.acl.as_ref().unwrap().current();
        assert_ne!(file.as_deref(), Some(&*first));
        // Broken files: the ones in force stay.
        std::fs::write(&passwd, "bob:plain\n").unwrap();
        std::fs::write(&acl, "user alice\ntopic rw b\n").unwrap();
        state.reload(&running);
        assert_eq!((generation(&state), users(&state)), (1, 2));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
