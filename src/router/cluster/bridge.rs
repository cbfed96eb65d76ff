//! The NATS bridge: one thread per node, running async-nats on a
//! current-thread tokio runtime (tokio never runs on a shard). Three kinds
//! of task share the thread: the publisher (the shards' messages to NATS,
//! and to one node per matching shared group, see `reliable`), the
//! interest task (subscriptions, counted per subject; shared subscriptions
//! are only announced to the other nodes), and one reader per NATS
//! subscription (messages to the shards).
//!
//! Batches: a shard wakes the publisher once for what it queued since its
//! last wake, and the reader tasks wake each shard once per turn (see
//! `doorbell`); the publisher hands the batch to the client in one run,
//! so the client writes it to the server in one write, and the
//! server delivers it to the other nodes in one write each. Frames and
//! their subjects are encoded into shared chunks of [`ENCODE_CHUNK`]
//! bytes, not an allocation each.
//!
//! The connection: async-nats connects to any of the seeds in the
//! background, reconnects forever with exponential backoff (capped at
//! [`MAX_BACKOFF`]), and re-subscribes every subscription after a
//! reconnect. While it is down, publishes wait in the client's bounded
//! buffer, then in the lane; past that they are dropped and counted. The
//! node's own messages do not come back to it: the connection asks the
//! server for no echo, and the origin in every frame is checked too.

mod reliable;

use super::doorbell::BridgeBell;
use super::frame::{self, Dedup, Seen};
use super::moves::Forwarder;
use super::retained::RetainedSync;
use super::sessions::SessionSync;
use super::subject::{filter_subjects, topic_subject};
use super::{
    BridgeCounters, ClusterSetup, Delivery, Interest, Lane, Outgoing, RemoteAck, Shared, ToShard,
};
use crate::config::{ClusterConfig, NatsCredentials, RetainedScope, SessionScope};
use crate::message::wire::Clocks;
use crate::router::home_shard;
use async_nats::connection::State;
use bytes::BytesMut;
use futures_lite::StreamExt;
use hashbrown::HashMap;
use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// The longest wait between two reconnection attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// How long an interest acknowledgement waits for the NATS server to
/// confirm a subscription (a round trip) before it is sent anyway.
const SUBSCRIBE_SYNC_TIMEOUT: Duration = Duration::from_secs(1);

/// Interest changes applied together at most (see `interest_task`).
const INTEREST_BATCH: usize = 1024;

/// The frames and subjects of published messages are written into chunks
/// of this size (a chunk is freed once all its frames are sent and
/// acknowledged), not into an allocation each.
const ENCODE_CHUNK: usize = 64 * 1024;

/// How long a stopping bridge waits to flush what it published.
const STOP_FLUSH_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a stopping node waits for its bridge to publish what the
/// shards queued.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// The bridge could not start.
#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    /// `cluster.tls_ca` cannot be read.
    #[error("cluster.tls_ca {path}: {error}")]
    TlsCa {
        /// The file.
        path: String,
        /// Why.
        error: std::io::Error,
    },
    /// The thread or its runtime could not be created.
    #[error("cannot start the NATS bridge thread: {0}")]
    Thread(std::io::Error),
}

/// The running bridge.
#[derive(Debug)]
pub struct Bridge {
    shared: Arc<Shared>,
    /// Told when the bridge thread ends.
    done: std::sync::mpsc::Receiver<()>,
}

impl Bridge {
    /// Starts the bridge thread for `nr_shards` shards; it connects in the
    /// background. Returns the shards' side of it.
    pub fn start(
        config: &ClusterConfig,
        nr_shards: usize,
    ) -> Result<(Self, ClusterSetup), BridgeError> {
        if let Some(path) = &config.tls_ca {
            if let Err(error) = std::fs::File::open(path) {
                return Err(BridgeError::TlsCa { path: path.display().to_string(), error });
            }
        }
        let shared = Arc::new(Shared {
            outbound: Lane::new(config.queue_capacity.saturating_mul(nr_shards)),
            inbound: (0..nr_shards).map(|_| Lane::new(config.queue_capacity)).collect(),
            remote_acks: Lane::new(1),
            counters: BridgeCounters::default(),
            local_only: config.local_only.clone(),
            max_pending: (config.max_pending_acks / nr_shards.max(1)).max(1),
            events: (0..nr_shards).map(|_| Lane::new(1)).collect(),
            sessions: Lane::new(1),
            sessions_cluster: config.sessions == SessionScope::Cluster,
            retained_cluster: config.retained == RetainedScope::Cluster,
            batch_delay: config.batch_delay,
            move_window: config.node_timeout,
        });
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(BridgeError::Thread)?;
        let (config, for_thread) = (config.clone(), Arc::clone(&shared));
        let (finished, done) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("ringmq-nats".into())
            .spawn(move || {
                run(runtime, config, for_thread);
                let _ = finished.send(());
            })
            .map_err(BridgeError::Thread)?;
        Ok((Self { shared: Arc::clone(&shared), done }, ClusterSetup(shared)))
    }

    /// Publishes what the shards queued, flushes, and ends the thread.
    /// Call once the shards have stopped. With NATS unreachable the
    /// publishes can wait forever: after [`STOP_TIMEOUT`] the rest is
    /// dropped (the thread ends with the process).
    pub fn stop(self) {
        self.shared.outbound.close();
        match self.done.recv_timeout(STOP_TIMEOUT) {
            Ok(()) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => tracing::warn!(
                "the NATS bridge could not publish everything within {} s (is NATS \
                 reachable?): the rest is dropped",
                STOP_TIMEOUT.as_secs()
            ),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                tracing::error!("the NATS bridge thread panicked")
            }
        }
        let crate::metrics::ClusterCounters {
            published,
            published_qos12,
            publish_failed,
            subject_too_long,
            outbound_dropped_qos0,
            outbound_spilled_qos12,
            received,
            duplicates,
            stale,
            malformed,
            inbound_dropped,
            slow_consumer,
            connects,
            disconnects,
            remote_acked,
            resent,
            nodes_expired,
            group_moved,
            retained_written,
            retained_failed,
            retained_applied,
            session_claims,
            session_claims_failed,
            session_takeovers,
            session_forwarded,
            session_forward_failed,
            session_move_duplicates,
            session_hold_expired,
            session_forward_resent,
            session_released,
            session_release_failed,
        } = self.shared.counters.snapshot();
        tracing::info!(
            published,
            published_qos12,
            publish_failed,
            subject_too_long,
            outbound_dropped_qos0,
            outbound_spilled_qos12,
            received,
            duplicates,
            stale,
            malformed,
            inbound_dropped,
            slow_consumer,
            connects,
            disconnects,
            remote_acked,
            resent,
            nodes_expired,
            group_moved,
            retained_written,
            retained_failed,
            retained_applied,
            session_claims,
            session_claims_failed,
            session_takeovers,
            session_forwarded,
            session_forward_failed,
            session_move_duplicates,
            session_hold_expired,
            session_forward_resent,
            session_released,
            session_release_failed,
            "NATS bridge stopped"
        );
    }
}

/// The connection options of `config` (no echo: the node's own messages
/// do not come back to it).
fn options(config: &ClusterConfig, shared: &Arc<Shared>) -> async_nats::ConnectOptions {
    let mut options = async_nats::ConnectOptions::new()
        .name(format!("ringmq {}", config.node_id))
        // Every subject the node uses is under the prefix (one NATS
        // permission covers them): the inbox of its round trips too.
        .custom_inbox_prefix(format!("{}._INBOX.{}", config.subject_prefix, config.node_id))
        .no_echo()
        .retry_on_initial_connect()
        .max_reconnects(None)
        .reconnect_delay_callback(backoff)
        .subscription_capacity(config.queue_capacity)
        .client_capacity(config.queue_capacity);
    options = match &config.credentials {
        NatsCredentials::None => options,
        NatsCredentials::UserPassword { user, password } => {
            options.user_and_password(user.clone(), password.clone())
        }
        NatsCredentials::Token(token) => options.token(token.clone()),
    };
    if let Some(path) = &config.tls_ca {
        options = options.require_tls(true).add_root_certificates(path.clone());
    }
    let (shared, node) = (Arc::clone(shared), config.node_id.clone());
    options.event_callback(move |event| {
        let counters = &shared.counters;
        match &event {
            async_nats::Event::Connected => {
                BridgeCounters::add(&counters.connects);
                tracing::info!(node = %node, "connected to NATS");
            }
            async_nats::Event::Disconnected => {
                BridgeCounters::add(&counters.disconnects);
                tracing::warn!(node = %node, "disconnected from NATS; reconnecting");
            }
            // Every failed reconnection attempt (at most one per
            // MAX_BACKOFF once backed off): the disconnect said it already.
            async_nats::Event::SlowConsumer(_) => {
                BridgeCounters::add(&counters.slow_consumer);
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |since| since.as_secs());
                let last = counters.slow_consumer_logged.load(Ordering::Relaxed);
                if now >= last + 10 {
                    counters.slow_consumer_logged.store(now, Ordering::Relaxed);
                    tracing::warn!(
                        node = %node,
                        dropped = counters.slow_consumer.load(Ordering::Relaxed),
                        "messages from NATS dropped: the bridge reads too slowly \
                         (cluster_slow_consumer; at most one line every 10 s)"
                    );
                }
            }
            async_nats::Event::ClientError(error) => {
                tracing::debug!(node = %node, %error, "NATS client error")
            }
            event => tracing::warn!(node = %node, %event, "NATS"),
        }
        async {}
    })
}

/// The delay before reconnection attempt `attempts`: none for the first,
/// then 10 ms doubling up to [`MAX_BACKOFF`].
fn backoff(attempts: usize) -> Duration {
    match attempts {
        0 | 1 => Duration::ZERO,
        n => Duration::from_millis(10u64 << (n - 2).min(16)).min(MAX_BACKOFF),
    }
}

/// The bridge thread.
fn run(runtime: tokio::runtime::Runtime, config: ClusterConfig, shared: Arc<Shared>) {
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async {
        let client = match options(&config, &shared).connect(config.nats.clone()).await {
            Ok(client) => client,
            // With retry_on_initial_connect only a bad address fails here,
            // and the configuration checked them.
            Err(error) => {
                tracing::error!(%error, "cannot start the NATS client: the node stays alone");
                // SUBACKs and PUBACKs must not wait forever: every
                // interest change and message is acknowledged (nothing is
                // subscribed, nothing published). Nor CONNACKs: claims are
                // dropped (the client gets a session here).
                let sessions = tokio::task::spawn_local({
                    let shared = Arc::clone(&shared);
                    async move {
                        while std::future::poll_fn(|cx| shared.sessions.poll_control(cx))
                            .await
                            .is_some()
                        {}
                    }
                });
                let messages = async {
                    while let Some(Outgoing { ticket, .. }) =
                        std::future::poll_fn(|cx| shared.outbound.poll_message(cx)).await
                    {
                        if let Some(ticket) = ticket {
                            let accepted = ToShard::Accepted(ticket.number);
                            shared.inbound[ticket.shard.index()].push_control(accepted);
                        }
                    }
                };
                let interest = async {
                    while let Some(Interest { shard, revision, .. }) =
                        std::future::poll_fn(|cx| shared.outbound.poll_control(cx)).await
                    {
                        shared.inbound[shard.index()].push_control(ToShard::InterestAck(revision));
                    }
                };
                futures_lite::future::zip(messages, interest).await;
                sessions.abort();
                return;
            }
        };
        let retained = (config.retained == RetainedScope::Cluster).then(|| {
            let (prefix, replicas) = (&config.subject_prefix, config.kv_replicas);
            Rc::new(RetainedSync::new(client.clone(), prefix, replicas, Arc::clone(&shared)))
        });
        let watch = retained.clone().map(|sync| tokio::task::spawn_local(sync.run()));
        // Sessions: the shards' claims are served in any case (answered at
        // once while the directory is not open); so are their retained
        // messages for the bucket.
        let origin = origin();
        let forwarder = Rc::new(Forwarder::new(
            client.clone(),
            &config.subject_prefix,
            &config.node_id,
            origin,
            Arc::clone(&shared),
        ));
        let sessions = Rc::new(SessionSync::new(
            client.clone(),
            &config.node_id,
            &config.subject_prefix,
            config.kv_replicas,
            Arc::clone(&shared),
            Rc::clone(&forwarder),
        ));
        let claims = tokio::task::spawn_local(Rc::clone(&sessions).serve_shards(retained));
        let directory = (config.sessions == SessionScope::Cluster)
            .then(|| tokio::task::spawn_local(Rc::clone(&sessions).run()));
        let forwards = (config.sessions == SessionScope::Cluster)
            .then(|| tokio::task::spawn_local(Rc::clone(&forwarder).serve()));
        let bridge = Rc::new(BridgeState {
            client,
            prefix: config.subject_prefix.clone(),
            origin,
            shared: Arc::clone(&shared),
            subscriptions: RefCell::new(HashMap::new()),
            dedup: RefCell::new(Dedup::default()),
            reliable: reliable::Reliable::new(&config, origin),
            bell: BridgeBell::new(shared.inbound.len()),
        });
        let bell = tokio::task::spawn_local({
            let bridge = Rc::clone(&bridge);
            async move { bridge.bell.run(&bridge.shared.inbound).await }
        });
        let reliable = bridge.start_reliable().await;
        let interest = tokio::task::spawn_local(Rc::clone(&bridge).interest_task());
        Rc::clone(&bridge).publish_task().await;
        let _ = interest.await;
        for task in reliable.into_iter().chain([bell]) {
            task.abort();
        }
        for task in [watch, directory, forwards].into_iter().flatten() {
            task.abort();
        }
        claims.abort();
        // Stop the readers (each unsubscribes), then flush.
        let readers: Vec<_> = bridge.subscriptions.borrow_mut().drain().map(|(_, s)| s).collect();
        for reader in readers {
            let _ = reader.stop.send(());
            let _ = reader.task.await;
        }
        let _ = tokio::time::timeout(STOP_FLUSH_TIMEOUT, bridge.client.flush()).await;
    });
    // Whatever is left is dropped inside the runtime's context (async-nats
    // spawns on drop).
    let _context = runtime.enter();
    drop(local);
}

/// This node's origin id for this run: random, so that a restarted node
/// starts a new sequence without colliding with its previous run.
fn origin() -> u64 {
    let mut bytes = [0u8; 8];
    if getrandom::getrandom(&mut bytes).is_err() {
        // No random source: the clock still tells runs apart.
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
        return now.map_or(1, |d| d.as_nanos() as u64);
    }
    u64::from_ne_bytes(bytes)
}

/// One NATS subscription and how many (shard, filter) pairs want it.
struct Subscription {
    count: usize,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

/// The bridge thread's state, shared by its tasks.
struct BridgeState {
    /// The connection to NATS (no echo).
    client: async_nats::Client,
    prefix: String,
    origin: u64,
    shared: Arc<Shared>,
    /// The NATS subscriptions, by subject.
    subscriptions: RefCell<HashMap<String, Subscription>>,
    dedup: RefCell<Dedup>,
    /// QoS 1/2 across nodes.
    reliable: reliable::Reliable,
    /// Wakes the shards for what the bridge queued for them, once per turn.
    bell: BridgeBell,
}

impl BridgeState {
    /// Publishes every message the shards queue, until the lane closes.
    async fn publish_task(self: Rc<Self>) {
        let counters = &self.shared.counters;
        let (mut subject, mut sequence) = (String::new(), 0u64);
        let mut buffer = BytesMut::with_capacity(ENCODE_CHUNK);
        while let Some(Outgoing { message, ticket }) =
            std::future::poll_fn(|cx| self.shared.outbound.poll_message(cx)).await
        {
            // A topic whose subject is too long reaches no other node's
            // plain subscriptions; its shared groups are still served (on
            // node subjects). A frame past max_payload (which
            // `limits.max_packet_size` prevents) stays on this node: its
            // publisher is answered.
            let plain = topic_subject(&self.prefix, message.topic.as_str(), &mut subject);
            if !plain {
                BridgeCounters::add(&counters.subject_too_long);
            }
            let number = match ticket {
                Some(_) => self.reliable.next_sequence(),
                None => {
                    sequence += 1;
                    sequence
                }
            };
            if frame::encode(self.origin, number, &message, Clocks::read(), &mut buffer).is_err()
                || !self.reliable.fits(buffer.len())
            {
                BridgeCounters::add(&counters.publish_failed);
                buffer.clear();
                if let Some(ticket) = ticket {
                    self.accepted(ticket);
                }
                continue;
            }
            let payload = buffer.split().freeze();
            // The subject shares the chunk too (it is ASCII: see `subject`);
            // `None` when it is too long for the other nodes' plain
            // subscriptions.
            let subject = match plain {
                true => {
                    buffer.extend_from_slice(subject.as_bytes());
                    match async_nats::Subject::from_utf8(buffer.split().freeze()) {
                        Ok(subject) => Some(subject),
                        Err(_) => {
                            BridgeCounters::add(&counters.publish_failed);
                            if let Some(ticket) = ticket {
                                self.accepted(ticket);
                            }
                            continue;
                        }
                    }
                }
                false => None,
            };
            let published = match ticket {
                None => {
                    self.send_groups_at_most_once(&message, &payload).await;
                    match subject {
                        Some(subject) => self.client.publish(subject, payload).await,
                        None => Ok(()),
                    }
                }
                Some(ticket) => {
                    self.publish_acked(ticket, number, &message, subject, payload).await
                }
            };
            match published {
                Ok(()) => {
                    BridgeCounters::add(&counters.published);
                    if message.qos != crate::protocol::QoS::AtMostOnce {
                        BridgeCounters::add(&counters.published_qos12);
                    }
                }
                Err(error) => {
                    BridgeCounters::add(&counters.publish_failed);
                    tracing::debug!(%error, topic = %message.topic.as_str(), "NATS publish failed");
                }
            }
        }
    }

    /// Applies the shards' interest changes, until the lane closes.
    /// The changes queued together (up to [`INTEREST_BATCH`]) share one
    /// round trip per connection and one wait for the other nodes (see
    /// `announce`): a storm of subscribes costs a few round trips, not one
    /// per filter.
    async fn interest_task(self: Rc<Self>) {
        let mut acks: Vec<(super::ShardId, u64)> = Vec::new();
        while let Some(first) =
            std::future::poll_fn(|cx| self.shared.outbound.poll_control(cx)).await
        {
            // Whether there are new NATS subscriptions, whether the other
            // nodes were told of a new filter.
            let (mut subscribed, mut announced) = (false, false);
            let mut next = Some(first);
            while let Some(Interest { shard, filter, added, revision }) = next.take() {
                announced |= self.announce(&filter, added).await;
                // A shared subscription is only announced: the publishing
                // node sends a group's messages to the node it picks.
                let subjects = match filter.is_shared() {
                    true => Some(smallvec::SmallVec::new()),
                    false => filter_subjects(&self.prefix, filter.filter()),
                };
                match subjects {
                    None if added => BridgeCounters::add(&self.shared.counters.subject_too_long),
                    None => {}
                    Some(subjects) if added => {
                        for subject in subjects {
                            subscribed |= self.subscribe(subject).await;
                        }
                    }
                    Some(subjects) => {
                        for subject in subjects {
                            self.unsubscribe(&subject).await;
                        }
                    }
                }
                acks.push((shard, revision));
                if acks.len() < INTEREST_BATCH {
                    next = std::future::poll_fn(|cx| {
                        std::task::Poll::Ready(match self.shared.outbound.poll_control(cx) {
                            std::task::Poll::Ready(change) => change,
                            std::task::Poll::Pending => None,
                        })
                    })
                    .await;
                }
            }
            if subscribed && self.client.connection_state() == State::Connected {
                self.round_trip(&self.client).await;
            }
            if announced {
                self.wait_synced().await;
            }
            for (shard, revision) in acks.drain(..) {
                self.shared.inbound[shard.index()].push_control(ToShard::InterestAck(revision));
            }
        }
    }

    /// Waits until the NATS server has processed everything `client` sent
    /// before (a server handles a connection's operations in order): a
    /// request to a subject nobody answers, which the server itself
    /// answers "no responders". Once it is back, the server has the new
    /// subscriptions, so a publish it gets from now on reaches this node
    /// [MQTT-3.8.4-1] (in a NATS cluster the other servers learn of them a
    /// moment later: NATS propagates interest asynchronously). Bounded by
    /// [`SUBSCRIBE_SYNC_TIMEOUT`]. (`Client::flush` only writes the socket.)
    async fn round_trip(&self, client: &async_nats::Client) {
        let subject = format!("{}.sync", self.prefix);
        let request = client.request(subject, bytes::Bytes::new());
        let _ = tokio::time::timeout(SUBSCRIBE_SYNC_TIMEOUT, request).await;
    }

    /// Counts one more want of `subject`; subscribes on the first. Returns
    /// whether it subscribed.
    async fn subscribe(self: &Rc<Self>, subject: String) -> bool {
        if let Some(subscription) = self.subscriptions.borrow_mut().get_mut(&subject) {
            subscription.count += 1;
            return false;
        }
        let subscriber = match self.client.subscribe(subject.clone()).await {
            Ok(subscriber) => subscriber,
            Err(error) => {
                // Only when the client is closed (the bridge is stopping).
                tracing::warn!(%error, %subject, "NATS subscribe failed");
                return false;
            }
        };
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let task = tokio::task::spawn_local(Rc::clone(self).read(subscriber, stopped));
        self.subscriptions.borrow_mut().insert(subject, Subscription { count: 1, stop, task });
        true
    }

    /// Counts one want of `key` less; unsubscribes after the last.
    async fn unsubscribe(&self, key: &str) {
        let reader = {
            let mut subscriptions = self.subscriptions.borrow_mut();
            let Some(subscription) = subscriptions.get_mut(key) else { return };
            subscription.count -= 1;
            if subscription.count > 0 {
                return;
            }
            subscriptions.remove(key)
        };
        if let Some(reader) = reader {
            let _ = reader.stop.send(());
            let _ = reader.task.await;
        }
    }

    /// Hands what `subscriber` receives to the shards, until `stop`.
    async fn read(
        self: Rc<Self>,
        mut subscriber: async_nats::Subscriber,
        mut stop: tokio::sync::oneshot::Receiver<()>,
    ) {
        enum Next {
            Message(Option<async_nats::Message>),
            Stop,
        }
        loop {
            let next =
                futures_lite::future::or(async { Next::Message(subscriber.next().await) }, async {
                    let _ = (&mut stop).await;
                    Next::Stop
                })
                .await;
            match next {
                Next::Message(Some(message)) => self.handle_received(message),
                Next::Message(None) => return,
                Next::Stop => break,
            }
        }
        let _ = subscriber.unsubscribe().await;
    }

    /// A message from NATS: decoded, deduplicated (two subscriptions of
    /// this node may match one message), and handed to a shard: the one
    /// its topic hashes to (one shard per topic keeps a topic's order).
    fn handle_received(&self, message: async_nats::Message) {
        let counters = &self.shared.counters;
        // A QoS 1/2 message waiting for this node's acknowledgement.
        let reply = message.reply;
        let (origin, sequence, message) = match frame::decode(message.payload, Clocks::read()) {
            Ok(decoded) => decoded,
            Err(error) => {
                BridgeCounters::add(&counters.malformed);
                tracing::debug!(%error, subject = %message.subject, "not a ringmq frame");
                return;
            }
        };
        if origin == self.origin {
            // no_echo should make this impossible.
            BridgeCounters::add(&counters.duplicates);
            return;
        }
        if let Some(reply) = &reply {
            if !self.see_acked(origin, sequence, reply) {
                return;
            }
        } else {
            match self.dedup.borrow_mut().see(origin, sequence) {
                Seen::New => {}
                Seen::Duplicate => return BridgeCounters::add(&counters.duplicates),
                Seen::Stale => return BridgeCounters::add(&counters.stale),
            }
        }
        let shard = home_shard(message.topic.as_str().as_bytes(), self.shared.inbound.len());
        let ack = reply.clone().map(|reply| RemoteAck {
            sequence,
            origin,
            reply: Some(reply),
            refused: false,
        });
        let delivery = Delivery { message: Arc::new(message), ack, group: None };
        let delivered = match self.shared.inbound[shard.index()].push_message(delivery) {
            Ok(()) => {
                BridgeCounters::add(&counters.received);
                self.bell.ring(shard, &self.shared.inbound[shard.index()]);
                true
            }
            Err(_) => {
                BridgeCounters::add(&counters.inbound_dropped);
                false
            }
        };
        // The shard acknowledges what it took, once routed (durable).
        if reply.is_some() && !delivered {
            self.not_handed(origin, sequence);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_its_cap() {
        assert_eq!(backoff(1), Duration::ZERO);
        assert_eq!(backoff(2), Duration::from_millis(10));
        assert_eq!(backoff(3), Duration::from_millis(20));
        assert_eq!(backoff(100), MAX_BACKOFF);
    }
}
