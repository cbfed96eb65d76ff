//! Starting and stopping the broker: preflight checks, one pinned glommio
//! executor per shard, the listeners, the mesh between shards, the
//! graceful shutdown on SIGINT/SIGTERM and the reload on SIGHUP.

mod drain;
mod preflight;
mod reload;
mod signals;
mod systemd;

pub use reload::Reload;

use crate::auth::acl::AclFile;
use crate::auth::enhanced::Authenticators;
use crate::auth::pool::Verifier;
use crate::auth::scram::{ScramFile, ScramSha256};
use crate::auth::PasswordFile;
use crate::config::{Config, RedirectMode, ShardCount};
use crate::message::Message;
use crate::metrics::sys::SysTree;
use crate::metrics::{
    Counters, NetCounters, RouterCounters, SessionCounters, ShardCounters, Snapshot, StoreCounters,
};
use crate::net::admin::{self, Health};
use crate::net::admission::ListenerAdmission;
use crate::net::listener::{self, bind_reuseport, ListenerStop};
use crate::net::{self, NetAuth, NetContext, NetShared};
use crate::protocol::{QoS, ReasonCode, TopicName};
use crate::router::cluster::Bridge;
use crate::router::{Mesh, MeshSetup, Outbox, RouterMessage};
use crate::shard::Shard;
use crate::store::data_dir::DataDirError;
use crate::store::{self, Log, StoreOptions};
use bytes::Bytes;
use drain::Drain;
use glommio::{CpuSet, Latency, LocalExecutorPoolBuilder, PoolPlacement, Shares};
use preflight::PreflightError;
use reload::{AuthState, Reloader, SharedAcl, SharedIntervals, SharedLimits, SharedTls};
use socket2::Socket;
use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// How often a shard checks for shutdown and sweeps keep alive deadlines
/// and expired sessions.
const TICK: Duration = Duration::from_millis(250);

/// Entries of each io_uring ring of a shard (glommio's default is 128).
/// The kernel sizes its table of pending polls from the completion queue,
/// twice this deep: 2^(log2(entries) - 5) buckets, at most 256, which
/// 4096 reaches. Every socket waiting for input has a poll in that table,
/// and glommio cancels one each time the shard wakes from sleep: with 128
/// entries (8 buckets) each cancellation walked an eighth of all the
/// connections.
const RING_DEPTH: usize = 4096;

/// The latency the durable log's tasks ask of the executor: how long a
/// completed write or sync may wait before the writer and the task that
/// releases acknowledgements run. With the default task queue they waited
/// for every queued connection task (QoS 1 fan-in, 100 publishers, 2
/// shards, `always`: 153k -> 185k msg/s, medians of 4; see CHANGELOG).
const LOG_LATENCY: Duration = Duration::from_micros(200);

/// How long connections get to close during a shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Why the broker could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The machine cannot run the broker.
    #[error(transparent)]
    Preflight(#[from] PreflightError),
    /// The password-checking threads could not be started.
    #[error("cannot start the password-checking threads: {0}")]
    AuthThreads(#[source] std::io::Error),
    /// The SCRAM authenticator could not be set up (no random bytes).
    #[error("cannot set up SCRAM authentication: {0}")]
    Scram(String),
    /// A listener could not be opened.
    #[error(transparent)]
    Listen(#[from] net::listener::ListenError),
    /// The executors could not start.
    #[error("cannot start the shard executors: {0}")]
    Executors(String),
    /// A shard failed (could not join the others, or panicked), or its
    /// thread ended early.
    #[error("a shard stopped abnormally: {0}; see the log above")]
    ShardFailed(&'static str),
    /// The signal watcher could not start.
    #[error("cannot watch for signals: {0}")]
    Signals(std::io::Error),
    /// `data_dir` cannot be used.
    #[error(transparent)]
    DataDir(#[from] DataDirError),
    /// The NATS bridge of `[cluster]` could not start.
    #[error(transparent)]
    Cluster(#[from] crate::router::cluster::BridgeError),
}

/// What every shard needs to start.
struct Startup {
    nr_shards: usize,
    /// One set of listening sockets per shard, taken by whichever shard
    /// starts first (they are interchangeable).
    sockets: Mutex<Vec<Vec<Socket>>>,
    /// The `[limits]` in force, replaced by a reload (SIGHUP).
    limits: Arc<SharedLimits>,
    open_connections: Arc<AtomicUsize>,
    shutdown: Arc<AtomicBool>,
    boot: u64,
    /// How often shard 0 publishes the `$SYS` topics and how long a
    /// shutdown drains, replaced by a reload (SIGHUP).
    intervals: Arc<SharedIntervals>,
    finished: Finished,
    /// What the shards say of themselves, for probes and the service
    /// manager.
    health: Arc<Health>,
    /// How connections authenticate.
    auth: NetAuth,
    /// The TLS listeners' configurations, replaced by a reload.
    tls: Arc<SharedTls>,
    /// Each listener's connection limits and open connections.
    listeners: Arc<[ListenerAdmission]>,
    /// `[redirect]`, for the network layer.
    redirect: Option<net::Redirect>,
    /// Each listener's WebSocket path, for the network layer.
    websocket: Arc<[Option<Arc<str>>]>,
    /// `response_information_prefix`, for the shards.
    response_information_prefix: Option<String>,
    /// The ACL file in force, if one is configured; replaced by a reload.
    acl: Option<Arc<SharedAcl>>,
    /// The data directory (checked and locked) and how the logs in it are
    /// written; `None`: memory only.
    store: Option<(std::path::PathBuf, StoreOptions)>,
    /// The shards' side of the NATS bridge (`[cluster]`); `None` for a
    /// single node.
    cluster: Option<crate::router::cluster::ClusterSetup>,
}

/// Why a shard could not serve.
#[derive(Debug)]
enum ShardFailure {
    /// It could not join the other shards.
    Mesh,
    /// Its durable log could not be opened.
    Store,
}

/// The password and ACL files the configuration names, as read before the
/// start (a bad one is a configuration error, reported before anything
/// starts).
#[derive(Debug, Default)]
pub struct AuthFiles {
    /// The `password_file`.
    pub passwords: Option<PasswordFile>,
    /// The `acl_file`.
    pub acl: Option<AclFile>,
    /// The `scram_file`.
    pub scram: Option<ScramFile>,
}

/// How many shards have finished their graceful shutdown.
///
/// A finished shard never returns to glommio: its thread parks, and the
/// main thread ends the process once every shard has finished. glommio 0.9
/// frees an executor's tasks and in-flight io_uring sources when the
/// executor is dropped, while the other shards may still hold wakers of
/// those tasks (through the mesh's channels) and the kernel may still
/// complete the executor's pending eventfd read: either writes into freed
/// memory. That was seen as glibc aborting a shard thread at exit
/// (`tcache_thread_shutdown(): unaligned tcache chunk detected`) in about
/// one test run in ten. Ending the process instead frees nothing early.
#[derive(Debug, Default)]
struct Finished {
    state: Mutex<FinishedState>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct FinishedState {
    shards: usize,
    failed: bool,
}

/// What the main thread saw while waiting for the shards.
#[derive(Debug, PartialEq, Eq)]
enum ShardsOutcome {
    /// Every shard finished: all cleanly, or some failed (could not join
    /// the mesh, or panicked).
    Finished { failed: bool },
    /// A shard thread ended before every shard finished: it could not
    /// start its executor, or it panicked while the others still serve.
    ThreadEnded,
}

impl Finished {
    /// Counts one shard as finished: failed when `failed` or when it is
    /// unwinding a panic.
    fn shard_finished(&self, failed: bool) {
        let mut state = self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        state.shards += 1;
        state.failed |= failed || std::thread::panicking();
        self.changed.notify_all();
    }

    /// Blocks until `shards` shards have finished, or `thread_ended` says
    /// a shard thread is gone (checked every 100 ms, when `every_100ms`
    /// runs too).
    fn wait(
        &self,
        shards: usize,
        thread_ended: impl Fn() -> bool,
        mut every_100ms: impl FnMut(),
    ) -> ShardsOutcome {
        let mut state = self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        loop {
            if state.shards >= shards {
                return ShardsOutcome::Finished { failed: state.failed };
            }
            if thread_ended() {
                return ShardsOutcome::ThreadEnded;
            }
            every_100ms();
            state = self
                .changed
                .wait_timeout(state, Duration::from_millis(100))
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
    }
}

/// Counts its shard as finished when dropped, also when the shard panics.
struct FinishedGuard {
    startup: Arc<Startup>,
    /// Whether the shard failed; true until it says otherwise.
    failed: bool,
}

impl Drop for FinishedGuard {
    fn drop(&mut self) {
        self.startup.finished.shard_finished(self.failed);
    }
}

/// Runs the broker until SIGINT or SIGTERM, then shuts it down gracefully.
/// On SIGHUP it re-reads the configuration through `reload` (`None`: there
/// is no file, and a SIGHUP only says so) and applies what can change
/// without a restart (see [`Reload`]).
///
/// `files` are the configured password, ACL and SCRAM files, already read.
/// `tls` the TLS listeners' certificates ([`net::tls::load_listeners`]),
/// also read before the start.
pub fn run(
    config: Config,
    files: AuthFiles,
    tls: net::tls::ListenerTls,
    reload: Option<Reload>,
) -> Result<(), RuntimeError> {
    preflight::check_io_uring()?;
    let cpus = preflight::allowed_cpus()?;
    let nr_shards = match config.shards() {
        ShardCount::Auto => cpus.len(),
        ShardCount::Fixed(n) => usize::from(n.get()),
    };
    preflight::ensure_memlock(nr_shards)?;
    // Checked and locked before any socket is bound; held until the
    // process ends.
    let data_dir = match config.data_dir() {
        Some(path) => Some(store::data_dir::prepare(path, nr_shards)?),
        None => None,
    };
    let max_connections = u64::from(config.limits().max_connections().get());
    preflight::raise_open_files(max_connections);
    for line in preflight::warnings(nr_shards, cpus.len(), max_connections) {
        tracing::warn!("{line}");
    }
    // Before the first socket is bound: from the moment a client can
    // connect, SIGTERM must mean a graceful stop, not the default exit. The
    // first signal stops every listener at once; the shards notice the
    // flag each within a tick, and wind down.
    let listeners = Arc::new(ListenerStop::default());
    let health = Arc::new(Health::new(nr_shards, Arc::new(AtomicUsize::new(0))));
    let limits = Arc::new(SharedLimits::new(&config));
    let AuthFiles { passwords, acl, scram } = files;
    let acl = acl.map(|file| {
        tracing::info!(users = file.users(), rules = file.rules(), "acl file read");
        if config.password_file().is_none() {
            tracing::warn!(
                "acl_file without password_file: user names are not verified, so a client \
                 gets the rules of whichever user it names"
            );
        }
        Arc::new(SharedAcl::new(Some(Arc::new(file))))
    });
    let auth_state = Arc::new(Mutex::new(AuthState::default()));
    let intervals = Arc::new(SharedIntervals::new(&config));
    let tls = Arc::new(SharedTls::new(tls));
    let mut reloader = Reloader::new(
        config.clone(),
        reload,
        Arc::clone(&limits),
        Arc::clone(&intervals),
        Arc::clone(&auth_state),
        Arc::clone(&tls),
    );
    let shutdown = signals::watch_signals(
        {
            let (listeners, health) = (Arc::clone(&listeners), Arc::clone(&health));
            move || {
                // Probes fail first, so a load balancer stops sending.
                health.set_draining();
                systemd::stopping();
                listeners.stop();
            }
        },
        move || reloader.reload(),
    )
    .map_err(RuntimeError::Signals)?;
    // After the watcher: the verification threads inherit the blocked
    // signals (a SIGTERM delivered to one of them would kill the process).
    let auth = net_auth(&config, passwords.clone(), scram)?;
    *auth_state.lock().unwrap_or_else(std::sync::PoisonError::into_inner) =
        AuthState { passwords: passwords.zip(auth.verifier.clone()), acl: acl.clone() };
    let store = data_dir.as_ref().map(|dir| {
        tracing::info!(
            data_dir = %dir.path().display(),
            durability = %config.durability(),
            "durable log: retained messages are persisted"
        );
        (dir.path().to_owned(), StoreOptions::new(config.durability()))
    });
    let running = Running {
        listeners: &listeners,
        health: &health,
        limits,
        intervals,
        auth,
        acl,
        tls,
        shutdown,
        store,
    };
    let outcome = serve(&config, nr_shards, &cpus, running);
    // Also when a shard failed: no socket may outlive the process listening
    // (see `ListenerStop`).
    listeners.stop();
    outcome
}

/// What `run` sets up before `serve`: shared with the signal thread.
struct Running<'a> {
    listeners: &'a ListenerStop,
    health: &'a Arc<Health>,
    limits: Arc<SharedLimits>,
    intervals: Arc<SharedIntervals>,
    /// How connections authenticate.
    auth: NetAuth,
    /// The ACL file, if any.
    acl: Option<Arc<SharedAcl>>,
    tls: Arc<SharedTls>,
    shutdown: Arc<AtomicBool>,
    store: Option<(std::path::PathBuf, StoreOptions)>,
}

/// Binds the listeners, runs the shards, and waits until they finish.
fn serve(
    config: &Config,
    nr_shards: usize,
    cpus: &[usize],
    running: Running<'_>,
) -> Result<(), RuntimeError> {
    let Running { listeners, health, limits, intervals, auth, acl, tls, shutdown, store } = running;
    if let Some(addr) = config.admin() {
        let bound = admin::start(addr, Arc::clone(health))?;
        if !bound.ip().to_canonical().is_loopback() {
            tracing::warn!(%bound, "the admin listener has no authentication: keep it off the internet");
        }
        tracing::info!(addr = %bound, "listening (admin http: /healthz, /readyz)");
    }
    let mut sockets: Vec<Vec<Socket>> = (0..nr_shards).map(|_| Vec::new()).collect();
    for listener in config.listeners() {
        let bound =
            bind_reuseport(listener.bind(), u32::from(listener.listen_backlog().get()), nr_shards)?;
        for socket in &bound {
            listeners
                .register(socket)
                .map_err(|source| net::listener::ListenError { addr: listener.bind(), source })?;
        }
        let addr =
            bound[0].local_addr().ok().and_then(|a| a.as_socket()).unwrap_or(listener.bind());
        let protocol = match (listener.tls().is_some(), listener.websocket_path()) {
            (false, None) => "mqtt".to_owned(),
            (true, None) => "mqtt over tls".to_owned(),
            (false, Some(path)) => format!("mqtt over ws, path {path}"),
            (true, Some(path)) => format!("mqtt over wss, path {path}"),
        };
        tracing::info!(%addr, "listening ({protocol})");
        for (shard, socket) in bound.into_iter().enumerate() {
            sockets[shard].push(socket);
        }
    }
    // The bridge connects in the background: a node starts (and serves its
    // own clients) while NATS is unreachable.
    let bridge = match config.cluster() {
        Some(cluster) => {
            let (bridge, setup) = Bridge::start(cluster, nr_shards)?;
            tracing::info!(
                node_id = %cluster.node_id,
                nats = ?cluster.nats,
                subject_prefix = %cluster.subject_prefix,
                "cluster: NATS bridge started"
            );
            Some((bridge, setup))
        }
        None => None,
    };
    let startup = Arc::new(Startup {
        cluster: bridge.as_ref().map(|(_, setup)| setup.clone()),
        nr_shards,
        sockets: Mutex::new(sockets),
        limits,
        open_connections: health.connection_count(),
        shutdown,
        // In a cluster the node id is mixed in: ids assigned to clients
        // that send none are claimed cluster-wide when their sessions
        // persist, and two nodes must not assign the same one.
        boot: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
            ^ config.cluster().map_or(0, |c| crate::router::stable_hash(c.node_id.as_bytes())),
        intervals,
        finished: Finished::default(),
        health: Arc::clone(health),
        auth,
        acl,
        tls,
        store,
        listeners: config.listeners().iter().map(ListenerAdmission::new).collect(),
        websocket: config.listeners().iter().map(|l| l.websocket_path().map(Arc::from)).collect(),
        redirect: config.redirect().map(|redirect| net::Redirect {
            reason: match redirect.mode {
                RedirectMode::UseAnother => ReasonCode::UseAnotherServer,
                RedirectMode::Moved => ReasonCode::ServerMoved,
            },
            server_reference: redirect.server_reference.as_str().into(),
        }),
        response_information_prefix: config.response_information_prefix().map(str::to_owned),
    });
    if let Some(redirect) = config.redirect() {
        tracing::warn!(
            server_reference = %redirect.server_reference,
            mode = ?redirect.mode,
            "[redirect] is set: every client is sent to another server, none is served"
        );
    }
    let placement = placement(nr_shards, cpus);
    tracing::info!(shards = nr_shards, cpus = ?cpus, "starting");
    let handles = LocalExecutorPoolBuilder::new(placement)
        .name("ringmq-shard")
        .io_memory(preflight::IO_MEMORY_PER_SHARD)
        .ring_depth(RING_DEPTH)
        .on_all_shards({
            let (startup, mesh) = (Arc::clone(&startup), MeshSetup::new(nr_shards));
            move || shard_main(startup, mesh)
        })
        .map_err(|error| RuntimeError::Executors(error.to_string()))?;
    // The shard threads are not joined: a finished shard parks for good
    // (see `Finished`), and returning from `main` ends the process.
    let mut notifier = systemd::Notifier::new(nr_shards);
    let outcome = startup.finished.wait(
        nr_shards,
        || handles.handles().iter().any(std::thread::JoinHandle::is_finished),
        || notifier.poll(&startup.health, startup.open_connections.load(Ordering::Relaxed)),
    );
    if let Some((bridge, _)) = bridge {
        bridge.stop();
    }
    match outcome {
        ShardsOutcome::Finished { failed: false } => {
            tracing::info!("stopped");
            Ok(())
        }
        ShardsOutcome::Finished { failed: true } => {
            Err(RuntimeError::ShardFailed("it could not join the other shards, or it panicked"))
        }
        ShardsOutcome::ThreadEnded => Err(RuntimeError::ShardFailed(
            "its thread ended early (it could not start, or it panicked)",
        )),
    }
}

/// Threads checking passwords: each check takes milliseconds of one core.
const AUTH_THREADS: usize = 2;

/// Password checks that may wait for a thread; past it a CONNECT is
/// refused as busy (the client retries later).
const AUTH_QUEUE: usize = 1024;

/// The authentication of each listener, and the password-checking threads
/// when there is a password file.
fn net_auth(
    config: &Config,
    passwords: Option<PasswordFile>,
    scram: Option<ScramFile>,
) -> Result<NetAuth, RuntimeError> {
    let verifier = match passwords {
        Some(file) => {
            tracing::info!(users = file.len(), "password file read");
            if file.is_empty() {
                tracing::warn!("the password file has no user: only anonymous clients can connect");
            }
            let verifier = Verifier::start(file, AUTH_THREADS, AUTH_QUEUE)
                .map_err(RuntimeError::AuthThreads)?;
            Some(Arc::new(verifier))
        }
        None => None,
    };
    let mut methods = Authenticators::default();
    if let Some(file) = scram {
        tracing::info!(users = file.len(), "SCRAM credentials file read");
        let scram = ScramSha256::new(file).map_err(RuntimeError::Scram)?;
        methods.add(Arc::new(scram));
    }
    let anonymous = config.listeners().iter().map(|l| config.allow_anonymous_on(l)).collect();
    let identity_as_username =
        config.listeners().iter().map(|l| l.use_identity_as_username()).collect();
    Ok(NetAuth { verifier, anonymous, methods: Arc::new(methods), identity_as_username })
}

/// One executor per allowed CPU, pinned; more shards than CPUs share them.
fn placement(nr_shards: usize, cpus: &[usize]) -> PoolPlacement {
    let allowed = CpuSet::online().map(|set| set.filter(|location| cpus.contains(&location.cpu)));
    match allowed {
        Ok(set) if !set.is_empty() && nr_shards <= set.len() => {
            PoolPlacement::MaxSpread(nr_shards, Some(set))
        }
        Ok(set) if !set.is_empty() => PoolPlacement::Fenced(nr_shards, set),
        _ => PoolPlacement::Unbound(nr_shards),
    }
}

/// The life of one shard, then a parked thread (see [`Finished`]).
async fn shard_main(startup: Arc<Startup>, mesh: MeshSetup) {
    {
        let mut finished = FinishedGuard { startup: Arc::clone(&startup), failed: true };
        finished.failed = serve_shard(startup, mesh).await.is_err();
    }
    loop {
        std::thread::park();
    }
}

/// Serves one shard from its start to the end of its graceful shutdown.
async fn serve_shard(startup: Arc<Startup>, mesh: MeshSetup) -> Result<(), ShardFailure> {
    tracing::debug!("shard starting");
    let sockets =
        startup.sockets.lock().map(|mut sets| sets.pop()).ok().flatten().unwrap_or_default();
    let listeners: Vec<_> = sockets.into_iter().map(listener::serve_on_this_shard).collect();
    let mesh = match Mesh::join(&mesh).await {
        Ok(mesh) => mesh,
        Err(error) => {
            tracing::error!(%error);
            return Err(ShardFailure::Mesh);
        }
    };
    let id = mesh.shard();
    tracing::debug!(%id, "shard joined the mesh");
    let outbox = Rc::new(Outbox::new(startup.nr_shards));
    let (mut limits_seen, session_limits, net_limits) = startup.limits.current();
    let (mut tls_seen, tls) = startup.tls.current();
    let shard = Rc::new(RefCell::new(Shard::new(
        id,
        startup.nr_shards,
        session_limits,
        Rc::clone(&outbox),
        startup.boot,
    )));
    shard
        .borrow_mut()
        .set_response_information_prefix(startup.response_information_prefix.as_deref());
    shard.borrow_mut().set_authenticators(Arc::clone(&startup.auth.methods));
    shard.borrow_mut().set_verifier(startup.auth.verifier.clone());
    // Before the log replay and any client: every subscription is seen by
    // the bridge.
    let cluster = startup.cluster.as_ref().map(|setup| {
        let link = Rc::new(setup.link(id));
        shard.borrow_mut().set_cluster(Rc::clone(&link));
        link
    });
    let mut acl_seen = startup.acl.as_ref().map(|acl| {
        let (seen, file) = acl.current();
        shard.borrow_mut().set_acl(file);
        seen
    });
    // The log is replayed before the shard takes any message from a peer
    // or a client, and before it counts as serving (`/readyz`, READY=1).
    let writer = match &startup.store {
        Some((data_dir, options)) => match open_log(&shard, data_dir, *options).await {
            Ok(writer) => Some(writer),
            Err(()) => {
                // The other shards wind down as on SIGTERM; the run fails.
                startup.shutdown.store(true, Ordering::Relaxed);
                return Err(ShardFailure::Store);
            }
        },
        None => None,
    };
    let net = Rc::new(NetContext::new(
        id,
        Rc::clone(&shard),
        Rc::clone(&outbox),
        net_limits,
        NetShared {
            open_connections: Arc::clone(&startup.open_connections),
            auth: startup.auth.clone(),
            listeners: Arc::clone(&startup.listeners),
            nr_shards: startup.nr_shards,
            redirect: startup.redirect.clone(),
            websocket: Arc::clone(&startup.websocket),
        },
        tls,
    ));
    let mesh_tasks = mesh.start(Rc::clone(&outbox), {
        let (shard, net) = (Rc::clone(&shard), Rc::clone(&net));
        move |from, message| match message {
            RouterMessage::HandOff(handoff) if !shard.borrow().is_shutting_down() => {
                net.adopt(handoff)
            }
            // Dropping a hand-off closes its socket.
            RouterMessage::HandOff(_) => {}
            RouterMessage::Shard(message) => {
                shard.borrow_mut().handle_shard_message(from, message, Instant::now())
            }
        }
    });
    let cluster_task = cluster.map(|link| {
        let shard = Rc::clone(&shard);
        link.start(move |event| shard.borrow_mut().handle_cluster(event, Instant::now()))
    });
    let accepts: Vec<_> = listeners
        .into_iter()
        .enumerate()
        .map(|(index, listener)| {
            glommio::spawn_local(net::accept_loop(Rc::clone(&net), listener, index))
        })
        .collect();

    startup.health.shard_serving();
    // Shard 0 publishes the $SYS topics, the first time at its first tick.
    let mut sys = (id.index() == 0).then(|| (SysTree::new(Instant::now()), Instant::now()));
    // Tick: keep alive sweep, reloaded limits, $SYS; from the shutdown
    // signal on, the drain closes connections step by step while the
    // others are still served.
    let mut drain: Option<Drain> = None;
    let mut revoked_seen = 0;
    loop {
        glommio::timer::sleep(TICK).await;
        if drain.is_none() && startup.shutdown.load(Ordering::Relaxed) {
            net.stop_accepting();
            let connected = net.close_connections(0);
            drain = Some(Drain::new(Instant::now(), startup.intervals.drain_timeout(), connected));
        }
        if let Some(drain) = drain.as_mut() {
            let staying = net.close_connections(drain.due(Instant::now()));
            if staying == 0 || drain.is_over(Instant::now()) {
                break;
            }
        }
        if let Some((seen, session_limits, net_limits)) = startup.limits.changed_since(limits_seen)
        {
            limits_seen = seen;
            shard.borrow_mut().set_limits(session_limits);
            net.set_limits(net_limits);
        }
        if let (Some(shared), Some(seen)) = (&startup.acl, acl_seen.as_mut()) {
            if let Some((now_seen, file)) = shared.changed_since(*seen) {
                *seen = now_seen;
                shard.borrow_mut().set_acl(file);
            }
        }
        if let Some(verifier) = &startup.auth.verifier {
            if let Some((seen, users)) = verifier.revoked_since(revoked_seen) {
                revoked_seen = seen;
                let closed = shard.borrow_mut().close_revoked(&users, Instant::now());
                if closed > 0 {
                    tracing::info!(
                        shard = id.index(),
                        closed,
                        "reload: closed the connections of users removed from password_file \
                         or whose password changed"
                    );
                }
            }
        }
        if let Some((seen, tls)) = startup.tls.changed_since(tls_seen) {
            tls_seen = seen;
            net.set_tls(tls);
        }
        let now = Instant::now();
        shard.borrow_mut().sweep(now);
        startup.health.tick(id.index());
        startup.health.publish(shard.borrow().snapshot());
        net.poll_connection_log_summary(now);
        net.poll_refusal_log_summary(now);
        if let (Some((tree, due)), Some(interval)) =
            (sys.as_mut(), startup.intervals.sys_interval())
        {
            if now >= *due {
                *due = now + interval;
                publish_sys(&mut shard.borrow_mut(), tree, &startup.health, now);
            } else {
                // A reload to a shorter interval applies from now.
                *due = (*due).min(now + interval);
            }
        }
    }
    for accept in accepts {
        accept.await;
    }
    let deadline = Instant::now() + SHUTDOWN_GRACE;
    while net.live_connections() > 0 && Instant::now() < deadline {
        glommio::timer::sleep(Duration::from_millis(20)).await;
    }
    mesh_tasks.shutdown().await;
    if let Some(task) = cluster_task {
        task.shutdown().await;
    }
    if let Some((log, writer)) = writer {
        // Written and synced before the shard reports it stopped.
        log.close();
        writer.await;
    }
    log_stopped(&shard.borrow().snapshot());
    Ok(())
}

/// Replays the shard's log into `shard` and starts its writer; logs one
/// line either way.
async fn open_log(
    shard: &Rc<RefCell<Shard>>,
    data_dir: &std::path::Path,
    options: StoreOptions,
) -> Result<(Rc<Log>, glommio::Task<()>), ()> {
    let (id, nr_shards) = {
        let shard = shard.borrow();
        (shard.id().index(), shard.nr_shards())
    };
    let started = Instant::now();
    let log = Rc::new(Log::new());
    // The configuration allows at most 256 shards.
    let (index, count) = (id as u16, nr_shards as u16);
    match store::open(&store::shard_dir(data_dir, id), index, count, options, &log).await {
        Ok(opened) => {
            let (retained, stats) = (opened.state.retained.len(), opened.stats);
            let sessions = opened.state.sessions.sessions.len();
            let queued: usize =
                opened.state.sessions.sessions.values().map(|s| s.queue.len()).sum();
            shard.borrow_mut().attach_log(Rc::clone(&log), opened.state, Instant::now());
            if options.durability == crate::config::Durability::Always {
                shard.borrow_mut().set_durable_acks();
            }
            // Releases the acknowledgements that wait for the log each
            // time its durable watermark moves (`always`), and tells the
            // shard when the log starts or stops failing (disk full, EIO:
            // QoS 1/2 publishes are refused meanwhile); ends with the
            // executor.
            // Both this task and the writer run in a latency-sensitive
            // task queue: a completed write or sync then preempts the
            // connection tasks (between two of them) instead of waiting
            // for a turn behind all of them, and the PUBACKs it releases
            // go out one executor turn sooner.
            let queue = glommio::executor().create_task_queue(
                Shares::default(),
                Latency::Matters(LOG_LATENCY),
                "durable-log",
            );
            let (watched, watcher) = (Rc::clone(&log), Rc::clone(shard));
            glommio::spawn_local_into(
                async move {
                    let (mut seen, mut failing) = (0, false);
                    loop {
                        let (durable, now_failing) = watched.changed(seen, failing).await;
                        let mut shard = watcher.borrow_mut();
                        if durable > seen {
                            seen = durable;
                            shard.handle_durable();
                        }
                        if now_failing != failing {
                            failing = now_failing;
                            shard.handle_store_failing(failing);
                        }
                    }
                },
                queue,
            )
            .expect("the task queue was just created")
            .detach();
            // Compaction, in slices between the shard's other work, each
            // time the writer asks; ends with the executor.
            glommio::spawn_local(crate::shard::compact_when_asked(
                Rc::clone(shard),
                Rc::clone(&log),
            ))
            .detach();
            tracing::info!(
                shard = id,
                retained,
                sessions,
                queued,
                records = stats.records,
                segments = stats.segments,
                torn_tails = stats.torn_tails,
                expired = stats.expired,
                ms = started.elapsed().as_millis() as u64,
                "durable log replayed"
            );
            let writer = glommio::spawn_local_into(opened.writer.run(Rc::clone(&log)), queue)
                .expect("the task queue was just created");
            Ok((log, writer))
        }
        Err(error) => {
            tracing::error!(shard = id, %error, "cannot open the durable log");
            Err(())
        }
    }
}

/// Publishes the `$SYS/broker/...` topics, retained and at QoS 0, through
/// `shard` as if a client had: from every shard's last snapshot.
fn publish_sys(shard: &mut Shard, tree: &mut SysTree, health: &Health, now: Instant) {
    for (topic, payload) in tree.update(&health.snapshots(), health.connections(), now) {
        let topic = match TopicName::new(topic) {
            Ok(topic) => topic,
            Err(error) => {
                tracing::error!(%error, "a $SYS topic the broker built is invalid");
                continue;
            }
        };
        let message = Message {
            topic,
            payload: Bytes::from(payload),
            qos: QoS::AtMostOnce,
            // Not stored where retained messages are off
            // (`retain_available = false`): sent as they are published.
            retain: shard.limits().retain_available,
            properties: Default::default(),
            publisher: None,
            expires_at: None,
            id: 0,
        };
        shard.route(Arc::new(message), now);
    }
}

/// Logs the "shard stopped" line: every counter of the shard.
fn log_stopped(snapshot: &Snapshot) {
    // Bound without `..`: a counter added to `metrics` and left out of
    // this line fails to build, or warns as unused.
    let Snapshot {
        shard: id,
        sessions,
        sessions_online,
        subscriptions,
        retained,
        retained_bytes,
        cross_core_queued,
        queued_messages,
        queued_bytes,
        inflight_messages,
        shared_groups,
        topic_gates,
        counters,
    } = snapshot;
    // The NATS bridge logs its own figures when it stops.
    let Counters { net, shard, session, router, store, cluster: _ } = counters;
    let NetCounters {
        accepted,
        refused_limit,
        refused_rate,
        handed_off,
        malformed,
        connect_timeouts,
        connect_too_large,
        connect_budget_exceeded,
        proxy_header_invalid,
        auth_failed,
        auth_busy,
        tls_handshakes,
        tls_failed_certificate,
        tls_failed_protocol,
        tls_failed_timeout,
        tls_failed_other,
        ws_upgrades,
        ws_upgrade_failed,
        redirected,
        bytes_received,
        bytes_sent,
        publishers_held,
    } = net;
    let ShardCounters {
        messages_received: [messages_received_qos0, messages_received_qos1, messages_received_qos2],
        deliveries,
        deliveries_dropped,
        takeovers,
        sessions_expired,
        retained_expired,
        retained_limit_exceeded,
        protocol_violations,
        deliveries_over_limit,
        overloads,
        slow_consumers_disconnected,
    } = shard;
    let SessionCounters {
        duplicate_qos2_received,
        publishes_sent: [publishes_sent_qos0, publishes_sent_qos1, publishes_sent_qos2],
        publishes_resent,
        dropped_offline_qos0,
        dropped_queue_full:
            [dropped_queue_full_qos0, dropped_queue_full_qos1, dropped_queue_full_qos2],
        dropped_retained_limit,
        dropped_expired,
        dropped_too_large,
        unexpected_acks,
        payload_format_invalid,
        topic_filters_invalid,
        subscriptions_quota_exceeded,
        reauth_failed,
        topic_limit_exceeded,
        client_id_too_long,
        publish_rate_limited,
        acl_denied_publish,
        refused_store_unavailable,
        acl_denied_subscribe,
        acl_denied_delivery,
        dropped_slow_consumer,
    } = session;
    let RouterCounters { cross_core_qos0_dropped, congestion_events, dropped_no_subscribers } =
        router;
    let StoreCounters {
        records_recovered: store_records_recovered,
        torn_tails: store_torn_tails,
        torn_bytes: store_torn_bytes,
        records_written: store_records_written,
        bytes_written: store_bytes_written,
        syncs: store_syncs,
        sync_latency,
        compactions: store_compactions,
        write_errors: store_write_errors,
    } = store;
    let store_sync_us_total = sync_latency.sum_us;
    tracing::info!(
        id,
        sessions,
        sessions_online,
        subscriptions,
        retained,
        retained_bytes,
        cross_core_queued,
        queued_messages,
        queued_bytes,
        inflight_messages,
        shared_groups,
        topic_gates,
        accepted,
        refused_at_limit = refused_limit,
        refused_rate,
        handed_off,
        malformed,
        connect_timeouts,
        connect_too_large,
        connect_budget_exceeded,
        proxy_header_invalid,
        auth_failed,
        auth_busy,
        tls_handshakes,
        tls_failed_certificate,
        tls_failed_protocol,
        tls_failed_timeout,
        tls_failed_other,
        ws_upgrades,
        ws_upgrade_failed,
        redirected,
        bytes_received,
        bytes_sent,
        messages_received_qos0,
        messages_received_qos1,
        messages_received_qos2,
        deliveries,
        deliveries_dropped,
        deliveries_over_limit,
        overloads,
        slow_consumers_disconnected,
        dropped_slow_consumer,
        publishers_held,
        cross_core_qos0_dropped,
        congestion_events,
        dropped_no_subscribers,
        takeovers,
        sessions_expired,
        retained_expired,
        protocol_violations,
        duplicate_qos2_received,
        publishes_sent_qos0,
        publishes_sent_qos1,
        publishes_sent_qos2,
        publishes_resent,
        dropped_offline_qos0,
        dropped_queue_full_qos0,
        dropped_queue_full_qos1,
        dropped_queue_full_qos2,
        dropped_retained_limit,
        dropped_expired,
        dropped_too_large,
        unexpected_acks,
        payload_format_invalid,
        topic_filters_invalid,
        subscriptions_quota_exceeded,
        reauth_failed,
        topic_limit_exceeded,
        client_id_too_long,
        publish_rate_limited,
        retained_limit_exceeded,
        acl_denied_publish,
        acl_denied_subscribe,
        acl_denied_delivery,
        refused_store_unavailable,
        store_records_recovered,
        store_torn_tails,
        store_torn_bytes,
        store_records_written,
        store_bytes_written,
        store_syncs,
        store_sync_us_total,
        store_compactions,
        store_write_errors,
        "shard stopped"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_for_every_shard_to_finish() {
        let finished = Arc::new(Finished::default());
        let shards: Vec<_> = (0..3)
            .map(|_| {
                let finished = Arc::clone(&finished);
                std::thread::spawn(move || finished.shard_finished(false))
            })
            .collect();
        assert_eq!(finished.wait(3, || false, || {}), ShardsOutcome::Finished { failed: false });
        shards.into_iter().for_each(|shard| shard.join().unwrap());
    }

    #[test]
    fn a_shard_that_panics_is_counted_as_failed() {
        struct Guard(Arc<Finished>);
        impl Drop for Guard {
            fn drop(&mut self) {
                self.0.shard_finished(false);
            }
        }
        let finished = Arc::new(Finished::default());
        let shard = std::thread::spawn({
            let finished = Arc::clone(&finished);
            move || {
                let _guard = Guard(finished);
                panic!("shard failure (expected by this test)");
            }
        });
        finished.shard_finished(false);
        assert_eq!(finished.wait(2, || false, || {}), ShardsOutcome::Finished { failed: true });
        assert!(shard.join().is_err());
    }

    #[test]
    fn a_shard_that_fails_makes_the_run_fail() {
        let finished = Finished::default();
        finished.shard_finished(false);
        finished.shard_finished(true);
        assert_eq!(finished.wait(2, || false, || {}), ShardsOutcome::Finished { failed: true });
    }

    #[test]
    fn a_thread_that_ends_early_stops_the_wait() {
        let finished = Finished::default();
        finished.shard_finished(false);
        assert_eq!(finished.wait(2, || true, || {}), ShardsOutcome::ThreadEnded);
    }
}
