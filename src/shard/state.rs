//! What one core owns, without locks: its sessions (keyed by client id),
//! its subscription index, its share of the retained messages and its
//! interest replica. It never touches a socket or a channel endpoint: what
//! must cross to other shards goes into the [`Outbox`], and connection
//! tasks are told about new output through their wakers.

use crate::auth::acl::{AclFile, ClientAcl};
use crate::auth::enhanced::Authenticators;
use crate::auth::pool::{Verified, Verifier};
use crate::index::{Match, SubscriptionTrie};
use crate::message::Message;
use crate::metrics::{Counters, NetCounters, Snapshot};
use crate::protocol::RetainHandling;
use crate::protocol::{Connect, ReasonCode, SubscriptionOptions, TopicFilter, TopicName};
use crate::router::interest::GroupId;
use crate::router::{home_shard, ClientIdAssigner, Outbox, RetainedReplyTo, ShardId, ShardMessage};
use crate::session::AckToken;
use crate::session::DropReason;
use crate::session::{
    CloseReason, Delivery, DeliveryOutcome, Session, SessionError, SessionEvent, SessionLimits,
    SubscriptionGrant,
};
use crate::shard::deadlines::Deadlines;
use crate::shard::drops::{DropCause, DropWarnings};
use crate::shard::index_work::{IndexFilters, IndexWork, INDEX_WORK_PER_TURN};
use crate::shard::interest_sync::InterestSync;
use crate::shard::limit_log::{LimitCause, LimitWarnings};
use crate::shard::retained::RetainedStore;
pub use crate::shard::slots::{ConnectionId, SessionKey};
use crate::shard::slots::{ConnectionLink, Overload, Slot, Slots, Usage};
use crate::store::{LiveState, Log, Record};
use bytes::Bytes;
use bytestring::ByteString;
use std::collections::VecDeque;
use std::num::NonZeroU32;
use std::rc::Rc;
use std::sync::Arc;
use std::task::Waker;
use std::time::{Duration, Instant};

mod compaction;
mod persist;

/// A local subscription as the index stores it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LocalSubscription {
    /// Its options.
    pub options: SubscriptionOptions,
    /// Its v5 Subscription Identifier.
    pub subscription_id: Option<NonZeroU32>,
}

impl From<&crate::session::Subscribed> for LocalSubscription {
    fn from(subscribed: &crate::session::Subscribed) -> Self {
        Self { options: subscribed.options, subscription_id: subscribed.identifier }
    }
}

/// The outcome of a CONNECT at its home shard.
#[derive(Debug)]
pub enum ConnectOutcome {
    /// The connection is attached to the session, whose output starts
    /// with the CONNACK.
    Accepted(SessionKey),
    /// The connection must be refused with a CONNACK carrying this code.
    Refused(ReasonCode),
}

/// Everything one core owns.
#[derive(Debug)]
pub struct Shard {
    id: ShardId,
    nr_shards: usize,
    /// Shared by every session of the shard (see [`Session::set_limits`]).
    limits: Rc<SessionLimits>,
    slots: Slots,
    subscriptions: SubscriptionTrie<SessionKey, LocalSubscription>,
    interest: InterestSync,
    retained: RetainedStore,
    assigner: ClientIdAssigner,
    outbox: Rc<Outbox>,
    next_connection: u64,
    shutting_down: bool,
    /// Every counter of the shard: its own, its sessions' (passed to them
    /// by `&mut`), its connections' and its outbox's.
    counters: Counters,
    /// When drops were last logged, per cause.
    drop_warnings: DropWarnings,
    /// When abuse limits were last logged, per cause.
    limit_warnings: LimitWarnings,
    /// Reused between interest acknowledgements: the barriers they release.
    released: Vec<(SessionKey, AckToken)>,
    /// Retained messages asked for new subscriptions, and queries from
    /// peers this shard answers (see `state/retained_queries.rs`).
    retained_queries: retained_queries::RetainedQueries,
    /// Reused between publishes: the local sessions a message matched.
    matches: Vec<(SessionKey, LocalSubscription)>,
    /// When to look at which session.
    deadlines: Deadlines,
    /// The last bytes of taken-over connections (a v5 DISCONNECT 0x8E),
    /// until their task takes them; rarely more than one.
    farewells: Vec<(ConnectionId, Bytes)>,
    /// The durable log, when there is a `data_dir`: every change to the
    /// retained messages this shard owns is appended to it.
    log: Option<Rc<Log>>,
    /// What the shard keeps to log its persistent sessions.
    session_log: persist::SessionLog,
    /// `response_information_prefix`: see [`Shard::set_response_information_prefix`].
    response_information_prefix: Option<Box<str>>,
    /// The enhanced authentication methods offered, for re-authentication
    /// (the network layer runs the exchange at CONNECT).
    authenticators: Arc<Authenticators>,
    /// The ACL file in force (`acl_file`), shared by every shard; `None`
    /// without one (then nothing is checked).
    acl: Option<Arc<AclFile>>,
    /// The password checks (`password_file`), shared by every shard: asked
    /// at [`Shard::place`] whether a reload revoked a user after its
    /// password was checked. `None` without a password file.
    verifier: Option<Arc<Verifier>>,
    /// The link to the other nodes of a cluster (`[cluster]`); `None` on a
    /// single node. See `state/cluster.rs`.
    cluster: Option<Rc<crate::router::cluster::ClusterLink>>,
    /// QoS 1/2 acknowledgements waiting for the other nodes (see
    /// `state/bridge_acks.rs`).
    bridge_waits: bridge_acks::BridgeWaits,
    /// Client ids whose claim in the cluster's session directory is in
    /// progress here: how many, and the takeovers from other nodes that
    /// wait for them (see `state/cluster_sessions.rs`).
    cluster_claims: hashbrown::HashMap<ByteString, cluster_sessions::Claiming>,
    /// Sessions moving between nodes: the forwarders of those that left,
    /// the ids seen by those that arrived, and the message ids (see
    /// `state/session_moves.rs`).
    moves: session_moves::SessionMoves,
    /// What every session of the shard holds (queued messages and bytes,
    /// in-flight messages): the sum of their [`Slot::usage`], moved as
    /// sessions queue and drain (see [`Shard::account`]), never summed by
    /// a walk.
    usage: Usage,
}

impl Shard {
    /// The state of shard `id` of `nr_shards`.
    pub fn new(
        id: ShardId,
        nr_shards: usize,
        limits: SessionLimits,
        outbox: Rc<Outbox>,
        boot: u64,
    ) -> Self {
        Self {
            id,
            nr_shards,
            limits: Rc::new(limits),
            slots: Slots::default(),
            subscriptions: SubscriptionTrie::new(),
            interest: InterestSync::new(id, nr_shards),
            retained: RetainedStore::new(),
            assigner: ClientIdAssigner::new(id, nr_shards, boot),
            outbox,
            next_connection: 0,
            shutting_down: false,
            counters: Counters::default(),
            drop_warnings: DropWarnings::default(),
            limit_warnings: LimitWarnings::default(),
            released: Vec::new(),
            retained_queries: Default::default(),
            matches: Vec::new(),
            deadlines: Deadlines::default(),
            farewells: Vec::new(),
            log: None,
            session_log: persist::SessionLog::default(),
            response_information_prefix: None,
            authenticators: Arc::default(),
            acl: None,
            verifier: None,
            cluster: None,
            bridge_waits: Default::default(),
            cluster_claims: hashbrown::HashMap::new(),
            moves: session_moves::SessionMoves::new(),
            usage: Usage::default(),
        }
    }

    /// Loads the state the shard's durable log held at start (retained
    /// messages, persistent sessions: see `restore_sessions`) and logs
    /// every later change to it. Called once, before the shard takes any
    /// message.
    pub fn attach_log(&mut self, log: Rc<Log>, state: LiveState, now: Instant) {
        for (_, message) in state.retained {
            self.retained.set(message);
        }
        self.log = Some(log);
        self.restore_sessions(state.sessions, now);
    }

    /// Sends v5 clients that set Request Response Information 1 the
    /// Response Information `{prefix}{client id}` in CONNACK (5.0
    /// §3.2.2.3.15, §4.10.2): a part of the topic tree for that client
    /// alone, to build its Response Topics under. Left out for a client id
    /// holding `/`, `+` or `#` (it would not name one level: `a` and `a/b`
    /// would overlap) and for clients that asked for none [MQTT-3.1.2-28].
    /// `None` (the default): never sent.
    pub fn set_response_information_prefix(&mut self, prefix: Option<&str>) {
        self.response_information_prefix = prefix.map(Box::from);
    }

    /// The enhanced authentication methods offered (none by default).
    pub fn set_authenticators(&mut self, authenticators: Arc<Authenticators>) {
        self.authenticators = authenticators;
    }

    /// Sets the password checks (at start), which [`Shard::place`] asks
    /// about the revocations after each check.
    pub fn set_verifier(&mut self, verifier: Option<Arc<Verifier>>) {
        self.verifier = verifier;
    }

    /// Whether a reload revoked `connect`'s user after its password was
    /// checked (`verified`): the connection must not join its session.
    pub(super) fn revoked_since_checked(
        &self,
        connect: &Connect,
        verified: Option<Verified>,
    ) -> bool {
        match (&self.verifier, verified, connect.username.as_deref()) {
            (Some(verifier), Some(verified), Some(user)) => verifier.revoked_after(verified, user),
            _ => false,
        }
    }

    /// Sets the ACL file (at start, or reloaded): new connections use it,
    /// and so does every existing session from its next check (as
    /// Mosquitto re-applies its ACLs to connected clients on reload).
    /// Switching between no file and a file needs a restart (the runtime
    /// refuses it): sessions without rules keep none.
    pub fn set_acl(&mut self, file: Option<Arc<AclFile>>) {
        if let Some(file) = &file {
            self.slots.sessions_mut().for_each(|session| session.rebind_acl(file));
        }
        self.acl = file;
    }

    /// The rules of the ACL file for a client with this CONNECT.
    fn client_acl(&self, connect: &Connect) -> Option<ClientAcl> {
        let file = self.acl.as_ref()?;
        Some(ClientAcl::new(Arc::clone(file), connect.username.as_deref()))
    }

    /// With an ACL file, a CONNECT whose will the client may not publish
    /// is refused with 0x87 Not authorized (3.1.1: return code 5), as
    /// Mosquitto does; the will is checked again when it is published.
    pub(super) fn will_refusal(&self, connect: &Connect, client_id: &str) -> Option<ReasonCode> {
        let will = connect.will.as_ref()?;
        let acl = self.client_acl(connect)?;
        (!acl.may_publish(will.topic.as_str(), client_id)).then_some(ReasonCode::NotAuthorized)
    }

    /// The limits new sessions start with.
    pub fn limits(&self) -> &SessionLimits {
        &self.limits
    }

    /// Applies new limits (a configuration reload): to the sessions created
    /// from now on, and to every existing one as [`Session::set_limits`]
    /// says (queue limits at once; what a connection was told at CONNECT
    /// from its next connection).
    pub fn set_limits(&mut self, limits: SessionLimits) {
        self.limits = Rc::new(limits);
        let limits = &self.limits;
        self.slots.sessions_mut().for_each(|session| session.set_limits(Rc::clone(limits)));
    }

    /// This shard's number.
    pub fn id(&self) -> ShardId {
        self.id
    }

    /// The number of shards.
    pub fn nr_shards(&self) -> usize {
        self.nr_shards
    }

    /// Counts a PUBLISH or will refused with 0x99 outside a session (a
    /// will at CONNECT).
    pub(super) fn count_payload_format_invalid(&mut self) {
        self.counters.session.payload_format_invalid += 1;
    }

    /// The shard's counters.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// The counters, to count into.
    pub(super) fn counters_mut(&mut self) -> &mut Counters {
        &mut self.counters
    }

    /// The counters the network layer counts into.
    pub fn net_counters(&mut self) -> &mut NetCounters {
        &mut self.counters.net
    }

    /// Every counter and gauge of this shard, now.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            shard: self.id.index(),
            sessions: self.session_count(),
            sessions_online: self.slots.online(),
            subscriptions: self.subscriptions.len(),
            retained: self.retained.len(),
            retained_bytes: self.retained.payload_bytes(),
            cross_core_queued: self.outbox.queued_publishes(),
            queued_messages: self.usage.queued,
            queued_bytes: self.usage.bytes,
            inflight_messages: self.usage.inflight,
            shared_groups: self.subscriptions.group_count(),
            topic_gates: self.outbox.gates(),
            counters: Counters {
                store: self.log.as_ref().map(|log| log.counters()).unwrap_or_default(),
                cluster: self.cluster_counters(),
                ..self.counters.clone()
            },
        }
    }

    /// Sessions on this shard, connected or not.
    pub fn session_count(&self) -> usize {
        self.slots.len() - self.moves.forwarders()
    }

    /// A new connection identity.
    pub fn new_connection_id(&mut self) -> ConnectionId {
        self.next_connection += 1;
        ConnectionId(self.next_connection)
    }

    /// A client id for a client that sent none, homed on this shard.
    pub fn assign_client_id(&mut self) -> ByteString {
        ByteString::from(self.assigner.assign())
    }

    /// The home shard of `client_id`.
    pub fn home_of(&self, client_id: &str) -> ShardId {
        home_shard(client_id.as_bytes(), self.nr_shards)
    }

    fn slot(&self, key: SessionKey) -> &Slot {
        self.slots.slot(key)
    }

    fn slot_mut(&mut self, key: SessionKey) -> &mut Slot {
        self.slots.slot_mut(key)
    }

    /// The client id of the session in `key`, if it is still there.
    pub fn client_id(&self, key: SessionKey) -> Option<&ByteString> {
        self.slots.get(key).map(|slot| slot.session.client_id())
    }

    /// Until when the connection of `key` is not to be read: it passed
    /// its publish rate (see `Session::paced_until`). The network layer
    /// asks after each PUBLISH and holds the connection
    /// ([`Self::handle_held`]) meanwhile.
    pub fn paced_until(&self, key: SessionKey, now: Instant) -> Option<Instant> {
        self.slots.get(key)?.session.paced_until(now)
    }

    /// The session in `key`, if `connection` is still the one attached to
    /// it (a taken-over connection gets `None`).
    pub fn session_mut(
        &mut self,
        key: SessionKey,
        connection: ConnectionId,
    ) -> Option<&mut Session> {
        let slot = self.slots.get_mut(key)?;
        slot.link_mut(connection)?;
        Some(&mut slot.session)
    }

    /// Accepts (or refuses) a CONNECT whose client id is homed here
    /// (`client_id` already assigned when the client sent none).
    pub fn handle_connect(
        &mut self,
        now: Instant,
        connect: &Connect,
        client_id: ByteString,
        connection: ConnectionId,
    ) -> ConnectOutcome {
        if let Some(reason) =
            super::placement::connect_refusal(connect, self.shutting_down, &self.limits)
        {
            return ConnectOutcome::Refused(reason);
        }
        // [MQTT-3.1.2-28] "A value of 0 indicates that the Server MUST NOT
        // return Response Information. If the value is 1 the Server MAY
        // return Response Information in the CONNACK packet."
        let response_information = self
            .response_information_prefix
            .as_ref()
            .filter(|_| {
                connect.version.is_v5()
                    && connect.properties.request_response_information == Some(true)
                    && !client_id.contains(['/', '+', '#'])
            })
            .map(|prefix| ByteString::from(format!("{prefix}{client_id}")));
        if let Some(reason) = self.will_refusal(connect, &client_id) {
            return ConnectOutcome::Refused(reason);
        }
        let existing = self.slots.find(&client_id);
        if let Some(key) = existing {
            self.take_over_connection(key, now);
            // [MQTT-3.1.2-6] Clean Session (v5 Clean Start) discards the
            // previous session.
            if connect.clean_start {
                if let Some(key) = self.slots.find(&client_id) {
                    self.end_session(key, now);
                }
            }
        }
        let (key, session_present) = match self.slots.find(&client_id) {
            Some(key) => (key, true),
            None => {
                let mut session = Session::new(client_id, Rc::clone(&self.limits));
                if self.log.is_some() {
                    session.enable_journal();
                }
                (self.slots.insert(Slot::new(session)), false)
            }
        };
        self.slots.attach(key, ConnectionLink::new(connection));
        let durable_acks = self.durable_acks();
        let slot = self.slots.slot_mut(key);
        slot.expires_at = None;
        slot.session.set_durable_acks(durable_acks);
        slot.session.set_bridge_acks(self.cluster.is_some());
        let acl = self.client_acl(connect);
        let slot = self.slots.slot_mut(key);
        slot.session.set_acl(acl);
        let connack =
            slot.session.handle_connect(now, connect, session_present, &mut self.counters.session);
        connack.properties.response_information = response_information;
        // The network layer authenticated the connection with this method
        // (5.0 section 4.12); the client may re-authenticate with it.
        let method = connect.properties.authentication_method.as_deref();
        if let Some(authenticator) = method.and_then(|method| self.authenticators.get(method)) {
            slot.session.set_authenticator(Arc::clone(authenticator));
        }
        self.drain_events(key, now);
        self.schedule(key);
        ConnectOutcome::Accepted(key)
    }

    /// [MQTT-3.1.4-3] A second connection with the same client id takes
    /// over: the first, if any, is closed (its will is published). Here, or
    /// from another node of a cluster.
    fn take_over_connection(&mut self, key: SessionKey, now: Instant) {
        if let Some(old) = self.slot(key).connection.as_ref().map(|link| link.id) {
            self.counters.shard.takeovers += 1;
            let slot = self.slots.slot_mut(key);
            slot.session.handle_takeover(now, &mut self.counters.session);
            // A v5 client is told DISCONNECT 0x8E before its connection
            // closes (5.0 §3.1.4): the old connection task takes these
            // last bytes on its way out (`poll_transmit`).
            let mut farewell = bytes::BytesMut::new();
            slot.session.poll_transmit(now, &mut farewell, &mut self.counters.session);
            if !farewell.is_empty() {
                self.farewells.push((old, farewell.freeze()));
            }
            self.detach(key, now);
        }
    }

    /// Ends a session: a will still waiting for its delay is published
    /// [MQTT-3.1.3-9], then it is removed.
    fn end_session(&mut self, key: SessionKey, now: Instant) {
        let slot = self.slots.slot_mut(key);
        slot.session.handle_session_end(now, &mut self.counters.session);
        let revision = std::mem::take(&mut slot.directory_revision);
        self.drain_events(key, now);
        if let (Some(link), Some(client_id)) = (&self.cluster, self.client_id(key)) {
            link.release(client_id, revision);
        }
        self.remove_session(key);
    }

    /// Removes a session: its subscriptions leave the index.
    fn remove_session(&mut self, key: SessionKey) {
        self.relieve(key);
        if !self.moves.is_quiet() {
            if let Some((node, client_id)) = self.moves.forget(key) {
                if let Some(link) = &self.cluster {
                    link.forwarder_gone(&node, &client_id);
                }
            }
        }
        let Some(slot) = self.slots.remove(key) else { return };
        self.log_session_end(&slot);
        self.usage.queued -= slot.usage.queued;
        self.usage.bytes -= slot.usage.bytes;
        self.usage.inflight -= slot.usage.inflight;
        for filter in
            slot.session.subscriptions().map(|(filter, _)| filter.clone()).collect::<Vec<_>>()
        {
            self.unsubscribe_index(key, &filter);
        }
    }

    /// Detaches the connection of `key` (it is told through its waker) and
    /// lets the session react: the will of an abnormal end is published,
    /// in-flight messages wait for the next connection. The session ends
    /// after its expiry ([`Session::expiry`]: 0 for a clean 3.1.1 session,
    /// the v5 Session Expiry Interval, capped by `max_session_expiry`).
    fn detach(&mut self, key: SessionKey, now: Instant) {
        if let Some(mut link) = self.slots.detach(key) {
            link.wake();
        }
        let slot = self.slots.slot_mut(key);
        slot.session.handle_connection_lost(now, &mut self.counters.session);
        let expiry = slot.session.expiry();
        slot.expires_at = expiry.map(|expiry| now + expiry);
        let ends_now = expiry == Some(Duration::ZERO);
        // A persistent session keeps what it subscribed to: the rest of a
        // large SUBSCRIBE is indexed now, there is no connection to pace.
        let backlog = slot.index_backlog.take();
        if !ends_now {
            for work in backlog.into_iter().flat_map(|backlog| *backlog) {
                self.run_index_work(key, work, usize::MAX, now);
            }
        }
        self.drain_events(key, now);
        if ends_now {
            self.end_session(key, now);
        } else {
            self.schedule(key);
        }
    }

    /// Makes sure the sweep looks at `key` by its next deadline.
    pub(super) fn schedule(&mut self, key: SessionKey) {
        if let Some(slot) = self.slots.get_mut(key) {
            self.deadlines.schedule(key, slot);
        }
    }

    /// The connection `connection` of `key` ended (socket closed, protocol
    /// error, keep alive expired or after DISCONNECT).
    pub fn handle_connection_closed(
        &mut self,
        key: SessionKey,
        connection: ConnectionId,
        now: Instant,
    ) {
        if self.slots.get_mut(key).and_then(|slot| slot.link_mut(connection)).is_some() {
            self.detach(key, now);
        }
        // A taken-over connection that ended without taking its last bytes.
        self.farewells.retain(|(id, _)| *id != connection);
    }

    /// The connection could not decode what its client sent: the session
    /// closes it (a v5 client is sent DISCONNECT with the decoder's reason
    /// code first, which `poll_transmit` still returns).
    pub fn handle_malformed(
        &mut self,
        key: SessionKey,
        connection: ConnectionId,
        now: Instant,
        error: crate::protocol::DecodeError,
    ) {
        let Some(slot) = self.slots.get_mut(key) else { return };
        if slot.link_mut(connection).is_none() {
            return;
        }
        slot.session.handle_malformed(now, error, &mut self.counters.session);
        self.drain_events(key, now);
    }

    /// Feeds one packet read from `connection` to its session. Returns
    /// false once the session has closed the connection (later packets are
    /// ignored); a protocol violation closes it that way too, after the
    /// will and a v5 DISCONNECT.
    pub fn handle_packet(
        &mut self,
        key: SessionKey,
        connection: ConnectionId,
        now: Instant,
        packet: crate::protocol::Packet,
    ) -> Result<bool, ConnectionError> {
        let store_unavailable = self.store_unavailable();
        let slot = self.slots.get_mut(key).ok_or(ConnectionError::Detached)?;
        slot.link_mut(connection).ok_or(ConnectionError::Detached)?;
        let session = &mut slot.session;
        session.set_store_unavailable(store_unavailable);
        let before = limit_hits(&self.counters.session);
        if let Err(error) = session.handle_packet(now, packet, &mut self.counters.session) {
            tracing::debug!(client_id = %session.client_id(), %error, "connection closed");
            // A packet after the close is not a new violation, and a
            // refusal for the log's sake is none.
            if !matches!(error, SessionError::NotConnected | SessionError::StoreUnavailable) {
                self.counters.shard.protocol_violations += 1;
            }
        }
        let after = limit_hits(&self.counters.session);
        if after != before {
            self.count_limit(LimitCause::TopicTooLong, after.0 - before.0, now);
            self.count_limit(LimitCause::PublishRate, after.1 - before.1, now);
        }
        self.drain_events(key, now);
        Ok(self.slot(key).connection.as_ref().is_some_and(|link| link.closed.is_none()))
    }

    /// Closes every connection whose keep alive expired [MQTT-3.1.2-24],
    /// and ends every session whose client stayed away past its expiry.
    pub fn sweep(&mut self, now: Instant) {
        self.expire_arrivals(now);
        while let Some((cause, count)) = self.drop_warnings.poll_due(now) {
            self.warn_dropped(cause, count);
        }
        while let Some((cause, count)) = self.limit_warnings.poll_due(now) {
            warn_limit(self.id, cause, count);
        }
        while let Some(key) = self.deadlines.next_due(now, &mut self.slots) {
            let slot = self.slots.slot_mut(key);
            let mut cut = 0;
            if slot.next_deadline().is_some_and(|deadline| deadline <= now) {
                if slot.connection.is_none() && slot.expires_at.is_some_and(|at| at <= now) {
                    if !self.moves.is_forwarder(key) {
                        self.counters.shard.sessions_expired += 1;
                    }
                    self.end_session(key, now);
                    continue;
                }
                if slot.slow_consumer_deadline().is_some_and(|at| at <= now) {
                    // Its publishers waited `slow_consumer_timeout`: the
                    // client is closed, its queue cut back to its limits
                    // (the `Closed` event opens its gates).
                    self.counters.shard.slow_consumers_disconnected += 1;
                    let before = self.counters.session.dropped_slow_consumer;
                    slot.session.handle_slow_consumer(now, &mut self.counters.session);
                    if let Some(overload) = slot.overload.as_mut() {
                        overload.deadline = None;
                    }
                    cut = self.counters.session.dropped_slow_consumer - before;
                }
                slot.session.handle_timeout(now, &mut self.counters.session);
                self.drain_events(key, now);
                if cut > 0 {
                    self.count_drops(DropCause::SlowConsumer, cut, now);
                }
            }
            self.schedule(key);
        }
    }

    /// Encodes the session's pending output into `out`. Returns how many
    /// packets were written; 0 also while a SUBACK waits for the interest
    /// change to reach every shard.
    pub fn poll_transmit(
        &mut self,
        key: SessionKey,
        connection: ConnectionId,
        now: Instant,
        out: &mut bytes::BytesMut,
    ) -> Result<usize, ConnectionError> {
        let link = self.slots.get_mut(key).and_then(|slot| slot.link_mut(connection));
        if link.is_none() {
            // Taken over: the DISCONNECT 0x8E (and what was owed) is the
            // last thing written.
            if let Some(at) = self.farewells.iter().position(|(id, _)| *id == connection) {
                out.extend_from_slice(&self.farewells.swap_remove(at).1);
            }
            return Err(ConnectionError::Detached);
        }
        let slot = self.slots.slot_mut(key);
        let Some(link) = slot.connection.as_mut() else { return Err(ConnectionError::Detached) };
        // Woken again when there is more: new output, or a barrier
        // released (see `Shard::release_acks`).
        link.notified = false;
        let counters = &mut self.counters.session;
        let too_large = counters.dropped_too_large;
        let written = slot.session.poll_transmit(now, out, counters);
        let too_large = counters.dropped_too_large - too_large;
        // Messages sent (now in flight with their packet ids).
        self.log_changes(key);
        let slot = self.slots.slot_mut(key);
        let Some(link) = slot.connection.as_mut() else { return Err(ConnectionError::Detached) };
        if out.len() >= crate::session::TRANSMIT_BATCH {
            // Messages may be left in the queue: the connection asks again
            // once this batch is written.
            link.notified = true;
        }
        // The session may close the connection while writing (a CONNACK
        // that cannot fit the client's Maximum Packet Size): its events
        // say so, and the connection must learn it now.
        let closed_now = link.closed.is_none() && !slot.session.is_connected();
        if slot.overload.is_some() && slot.session.is_drained() {
            self.relieve(key);
        }
        self.account(key);
        if too_large > 0 {
            self.count_drops(DropCause::TooLargeForClient, too_large, now);
        }
        if closed_now {
            self.drain_events(key, now);
        }
        let link = self.slots.get_mut(key).and_then(|slot| slot.link_mut(connection));
        match link.map(|link| link.closed.clone()) {
            None => Err(ConnectionError::Detached),
            Some(Some(reason)) => Err(ConnectionError::Closed(reason)),
            Some(None) => Ok(written),
        }
    }

    /// Logs `count` hits of an abuse limit unless it was logged in the
    /// last interval; then the sweep tells them later, summed.
    pub(super) fn count_limit(&mut self, cause: LimitCause, count: u64, now: Instant) {
        if count == 0 {
            return;
        }
        if let Some(count) = self.limit_warnings.record(cause, count, now) {
            warn_limit(self.id, cause, count);
        }
    }

    /// Logs drops of `cause` unless they were logged in the last
    /// interval; then the sweep tells them later, summed.
    fn count_drops(&mut self, cause: DropCause, count: u64, now: Instant) {
        if let Some(count) = self.drop_warnings.record(cause, count, now) {
            self.warn_dropped(cause, count);
        }
    }

    fn warn_dropped(&self, cause: DropCause, count: u64) {
        tracing::warn!(
            shard = %self.id,
            %cause,
            dropped = count,
            "messages dropped: {} (at most one line per cause every {} s)",
            cause.hint(),
            crate::shard::drops::WARNING_INTERVAL.as_secs()
        );
    }

    /// Registers the connection task's waker; returns true when output or
    /// a close arrived since the last [`Shard::poll_transmit`].
    pub fn register_waker(
        &mut self,
        key: SessionKey,
        connection: ConnectionId,
        waker: &Waker,
    ) -> bool {
        match self.slots.get_mut(key).and_then(|slot| slot.link_mut(connection)) {
            Some(link) => {
                if !link.waker.as_ref().is_some_and(|w| w.will_wake(waker)) {
                    link.waker = Some(waker.clone());
                }
                link.notified
            }
            // Detached: the task must run to notice.
            None => true,
        }
    }

    /// Whether the broker is shutting down.
    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down
    }

    /// Starts the shutdown: no new sessions, and every connection is
    /// closed (a v5 client is sent DISCONNECT 0x8B, which its task writes
    /// before it closes the socket) and its task woken.
    pub fn begin_shutdown(&mut self, now: Instant) {
        self.begin_drain();
        self.close_connections(usize::MAX, now);
    }

    /// Starts a graceful shutdown that closes the connections in steps
    /// ([`close_connections`](Self::close_connections)): from now on no
    /// session starts or moves here; the connected ones keep being served.
    pub fn begin_drain(&mut self) {
        self.shutting_down = true;
    }

    /// Closes up to `count` of the connected sessions' connections as
    /// [`begin_shutdown`](Self::begin_shutdown) does; returns how many stay
    /// connected.
    pub fn close_connections(&mut self, count: usize, now: Instant) -> usize {
        let mut connected = self.slots.connected();
        // Those already closing (an earlier step) wait for their task.
        connected.retain(|&key| self.slots.slot(key).session.is_connected());
        let staying = connected.len().saturating_sub(count);
        for key in connected.into_iter().skip(staying) {
            let slot = self.slots.slot_mut(key);
            slot.session.handle_shutdown(now, &mut self.counters.session);
            self.drain_events(key, now);
            if let Some(link) = self.slots.slot_mut(key).connection.as_mut() {
                link.wake();
            }
        }
        staying
    }

    /// Closes the connections whose CONNECT gave one of `users` (removed
    /// from a reloaded `password_file`, or their password changed): v5
    /// clients get DISCONNECT 0x87 Not authorized first. Their sessions
    /// stay, as after any lost connection. Returns how many were closed.
    pub fn close_revoked(&mut self, users: &[String], now: Instant) -> usize {
        let users: hashbrown::HashSet<&str> = users.iter().map(String::as_str).collect();
        let mut closed = 0;
        for key in self.slots.connected() {
            let session = &mut self.slots.slot_mut(key).session;
            if !session.connected_user().is_some_and(|user| users.contains(user)) {
                continue;
            }
            session.handle_credentials_revoked(now, &mut self.counters.session);
            self.drain_events(key, now);
            if let Some(link) = self.slots.slot_mut(key).connection.as_mut() {
                link.wake();
            }
            closed += 1;
        }
        closed
    }

    fn notify(&mut self, key: SessionKey) {
        if let Some(link) = self.slot_mut(key).connection.as_mut() {
            link.notify();
        }
    }

    /// Acts on everything the session of `key` asked for.
    fn drain_events(&mut self, key: SessionKey, now: Instant) {
        while let Some(event) = self.slot_mut(key).session.poll_event() {
            match event {
                SessionEvent::Publish(mut message) => {
                    self.counters.shard.messages_received[message.qos as usize] += 1;
                    self.stamp(&mut message);
                    self.route(message, now);
                }
                SessionEvent::Will(mut message) => {
                    self.stamp(&mut message);
                    self.route(message, now);
                }
                SessionEvent::Durable(ack) => self.durable_wait(key, ack),
                SessionEvent::Bridged(ack) => self.bridge_wait(key, ack),
                SessionEvent::Subscribe { grants, ack } => {
                    let filters = IndexFilters::Subscribe(grants.into_iter());
                    self.queue_index_work(key, IndexWork { filters, ack, revision: 0 }, now);
                }
                SessionEvent::Unsubscribe { filters, ack } => {
                    let filters = IndexFilters::Unsubscribe(filters.into_iter());
                    self.queue_index_work(key, IndexWork { filters, ack, revision: 0 }, now);
                }
                SessionEvent::Closed(reason) => {
                    if let Some(link) = self.slot_mut(key).connection.as_mut() {
                        link.closed = Some(reason);
                    }
                    // A closed session's queue is back within its limits
                    // (see `Session::handle_slow_consumer`).
                    self.relieve(key);
                }
            }
        }
        self.log_changes(key);
        self.account(key);
        self.notify(key);
    }

    /// Whether the session of `key` is connected and past its queue
    /// limits: its connection is not held back for the gates it closed
    /// itself, or it could never read the PUBACKs that drain it.
    pub fn is_overloaded(&self, key: SessionKey) -> bool {
        self.slots.get(key).is_some_and(|slot| slot.overload.is_some())
    }

    /// Moves the shard's gauges by what the session of `key` queued or
    /// drained since they last counted it: three reads, no walk.
    fn account(&mut self, key: SessionKey) {
        let Some(slot) = self.slots.get_mut(key) else { return };
        let (was, now) = (slot.usage, slot.current_usage());
        if was != now {
            slot.usage = now;
            self.usage.queued = self.usage.queued + now.queued - was.queued;
            self.usage.bytes = self.usage.bytes + now.bytes - was.bytes;
            self.usage.inflight = self.usage.inflight + now.inflight - was.inflight;
        }
    }

    /// The session of `key` went past its queue limits with `topic`
    /// (design.md: QoS 1/2 "applies backpressure to the publishing
    /// connection - never ack and then silently drop"): the topic's gate
    /// closes, here and at `origin`, the peer the message came from, so
    /// the publishers of `topic` are held back until the session drains
    /// or, after `slow_consumer_timeout`, is disconnected.
    fn overload(
        &mut self,
        key: SessionKey,
        topic: &TopicName,
        origin: Option<ShardId>,
        now: Instant,
    ) {
        let timeout = self.limits.slow_consumer_timeout;
        let slot = self.slots.slot_mut(key);
        let first = slot.overload.is_none();
        let overload = slot.overload.get_or_insert_with(|| {
            Box::new(Overload {
                deadline: timeout.map(|timeout| now + timeout),
                topics: hashbrown::HashSet::new(),
            })
        });
        // Allocates only for a topic new to this overload.
        let newly = !overload.topics.contains(topic);
        if newly {
            overload.topics.insert(topic.clone());
        }
        self.outbox.close_gate(topic, origin, newly);
        if first {
            self.counters.shard.overloads += 1;
            self.schedule(key);
        }
    }

    /// The session of `key` drained to half its queue limits, or was
    /// disconnected: the gates it closed open (where no other session
    /// holds them), and the publishers they held resume.
    fn relieve(&mut self, key: SessionKey) {
        let Some(overload) = self.slots.get_mut(key).and_then(|slot| slot.overload.take()) else {
            return;
        };
        for topic in &overload.topics {
            self.outbox.open_gate(topic);
        }
    }

    /// Entries waiting for interest acknowledgements.
    #[cfg(test)]
    pub(super) fn interest_waiters(&self) -> usize {
        self.interest.waiters()
    }

    /// The retained message of `topic` stored on this shard.
    #[cfg(test)]
    pub(super) fn retained_of(&self, topic: &str, now: Instant) -> Option<Arc<Message>> {
        let name = crate::protocol::TopicName::new(topic).ok()?;
        self.retained.get(&name, now).cloned()
    }

    /// Indexes a session's subscribe or unsubscribe: at once when it is
    /// small and nothing is waiting before it, else in turns driven by the
    /// connection ([`Shard::handle_index_work`]).
    fn queue_index_work(&mut self, key: SessionKey, work: IndexWork, now: Instant) {
        let slot = self.slot_mut(key);
        match &mut slot.index_backlog {
            None if work.len() <= INDEX_WORK_PER_TURN => {
                self.run_index_work(key, work, usize::MAX, now);
            }
            Some(backlog) => backlog.push_back(work),
            None => {
                slot.index_backlog = Some(Box::new(VecDeque::from([work])));
                self.handle_index_turn(key, now);
            }
        }
    }

    /// Whether `key` has subscribes or unsubscribes not fully indexed: its
    /// connection then calls [`Shard::handle_index_work`], yielding in
    /// between, before it reads further packets.
    pub fn has_index_work(&self, key: SessionKey) -> bool {
        self.slots.get(key).is_some_and(|slot| slot.index_backlog.is_some())
    }

    /// Indexes up to [`INDEX_WORK_PER_TURN`] more filters of `key`'s
    /// pending subscribes and unsubscribes; once none is left, the
    /// connection is woken for the SUBACK.
    pub fn handle_index_work(
        &mut self,
        key: SessionKey,
        connection: ConnectionId,
        now: Instant,
    ) -> Result<(), ConnectionError> {
        self.session_mut(key, connection).ok_or(ConnectionError::Detached)?;
        self.handle_index_turn(key, now);
        Ok(())
    }

    fn handle_index_turn(&mut self, key: SessionKey, now: Instant) {
        let mut budget = INDEX_WORK_PER_TURN;
        while budget > 0 {
            let slot = self.slot_mut(key);
            let Some(backlog) = slot.index_backlog.as_mut() else { return };
            let Some(work) = backlog.pop_front() else {
                slot.index_backlog = None;
                self.notify(key);
                return;
            };
            budget = self.run_index_work(key, work, budget, now);
        }
    }

    /// Indexes up to `budget` filters of `work`; what is left goes back to
    /// the front of the backlog. Returns the budget left.
    fn run_index_work(
        &mut self,
        key: SessionKey,
        mut work: IndexWork,
        mut budget: usize,
        now: Instant,
    ) -> usize {
        while budget > 0 && work.len() > 0 {
            match &mut work.filters {
                IndexFilters::Subscribe(grants) => {
                    if let Some(revision) = grants.next().and_then(|g| self.subscribe(key, g, now))
                    {
                        work.revision = revision;
                    }
                }
                IndexFilters::Unsubscribe(filters) => {
                    if let Some(filter) = filters.next() {
                        self.unsubscribe_index(key, &filter);
                    }
                }
            }
            budget -= 1;
        }
        if work.len() > 0 {
            let slot = self.slot_mut(key);
            slot.index_backlog.get_or_insert_with(Box::default).push_front(work);
            return 0;
        }
        // Every filter is in the index; new interest must also have reached
        // every other shard before the SUBACK.
        if work.revision > self.interest.acked_by_all() {
            self.interest.wait_for(work.revision, key, work.ack);
        } else {
            self.release_acks_durable(key, work.ack);
        }
        budget
    }

    /// Releases a barrier of `key`'s session and tells its connection.
    fn release_acks(&mut self, key: SessionKey, ack: AckToken) {
        if let Some(slot) = self.slots.get_mut(key) {
            slot.session.release_acks(ack);
            if let Some(link) = slot.connection.as_mut() {
                link.notify();
            }
        }
    }

    /// Routes an accepted message: the retained store, local subscribers,
    /// every other shard with interest (one batch entry per shard, not per
    /// subscriber), and one member of each matching shared group, on
    /// whichever shard it lives [MQTT-4.8.2].
    pub fn route(&mut self, message: Arc<Message>, now: Instant) {
        self.durable_route_start();
        self.route_live(&message, now);
        // With `retain_available = false` sessions refuse RETAIN 1, so only
        // the broker's own messages could ask to be stored: nothing is.
        // Stored after the live copies left: a shard that gets both on one
        // channel gets the live one first, and a new subscription there
        // that got it live is not sent it again as retained (see
        // `state/retained_queries.rs`).
        if message.retain && self.limits.retain_available {
            self.store_retained(&message, now);
        }
    }

    /// Delivers `message` to the local subscribers and sends it to the
    /// shards and nodes with interest in it.
    fn route_live(&mut self, message: &Arc<Message>, now: Instant) {
        self.deliver_local(message, None, now);
        // In a cluster the message also goes to the other nodes; shared
        // groups are then served through NATS (see `state/cluster.rs`).
        let bridged = self.cluster.as_ref().is_some_and(|cluster| cluster.publish(message));
        // Per matched group: the member shard chosen and its id for the
        // group, which is all that travels with the message.
        let mut chosen: smallvec::SmallVec<[(ShardId, GroupId); 4]> = smallvec::SmallVec::new();
        let shards = self
            .interest
            .replica()
            .route(&message.topic, |shard, group| chosen.push((shard, group)));
        // The replica holds this shard's own interest too: nothing in it
        // means no subscriber on this node; one handed to the other nodes
        // may have some there. The broker's own messages ($SYS) are not
        // counted.
        if shards.is_empty() && chosen.is_empty() && !bridged && message.publisher.is_some() {
            self.counters.router.dropped_no_subscribers += 1;
        }
        let me = self.id;
        for shard in shards.iter().filter(|&shard| shard != me) {
            if !self.outbox.push_publish(shard, message, &mut self.counters.router) {
                self.count_drops(DropCause::PeerOverloaded, 1, now);
            } else {
                self.durable_sent(shard, message);
            }
        }
        if bridged {
            return;
        }
        for (shard, group) in chosen {
            if shard == self.id {
                self.deliver_to_group(group, message, None, now);
            } else {
                let forward = ShardMessage::GroupPublish { group, message: Arc::clone(message) };
                self.outbox.push(shard, forward);
                self.durable_sent(shard, message);
            }
        }
        // A subscriber of the topic, here or elsewhere, is past its queue
        // limits: the publisher is held back (the message itself was
        // queued, past the limits where it had to be).
        if message.qos != crate::protocol::QoS::AtMostOnce {
            self.outbox.hold_if_closed(&message.topic);
        }
    }

    /// [MQTT-3.3.1-5] A retained message replaces the topic's previous one;
    /// [MQTT-3.3.1-10] an empty payload deletes it. It lives on the shard
    /// that owns its topic.
    fn store_retained(&mut self, message: &Arc<Message>, now: Instant) {
        let owner = home_shard(message.topic.as_str().as_bytes(), self.nr_shards);
        // The stored copy owns exactly its payload, so a retained message
        // does not pin the read buffer it arrived in.
        let stored = Arc::new(Message {
            payload: Bytes::copy_from_slice(&message.payload),
            ..Message::clone(message)
        });
        if owner == self.id {
            self.retain_published(stored, now);
        } else {
            self.outbox.push(owner, ShardMessage::Retain(stored));
            self.durable_sent(owner, message);
        }
    }

    /// Stores a retained message of a topic homed here, within this
    /// shard's share of `max_retained_messages` and `max_retained_bytes`
    /// (see [`Self::retained_share`]). Past it, a new topic is not stored:
    /// the PUBLISH has been delivered to the subscribers already, and its
    /// acknowledgement sent by the shard that received it, which cannot
    /// wait for this one (the store of a topic lives on its own shard).
    /// Counted and logged.
    /// The broker's own messages (`$SYS`, no publisher) are not limited:
    /// their topics are few and fixed, and must not vanish because clients
    /// filled the store. Nor are they written to the durable log: they are
    /// rebuilt at every start. Every other change that is made is logged:
    /// a set, or a delete [MQTT-3.3.1-10] of a message that was there.
    fn retain_here(&mut self, message: Arc<Message>, now: Instant) {
        if message.publisher.is_none() {
            self.retained.set(message);
            return;
        }
        let max_messages = self.retained_share(self.limits.max_retained_messages);
        let max_bytes = self.retained_share(self.limits.max_retained_bytes);
        let logged = self.log.is_some().then(|| Arc::clone(&message));
        match self.retained.set_within(message, max_messages, max_bytes) {
            Err(_) => {
                self.counters.shard.retained_limit_exceeded += 1;
                self.count_limit(LimitCause::RetainedFull, 1, now);
            }
            Ok(previous) => {
                let (Some(log), Some(message)) = (&self.log, logged) else { return };
                if !message.payload.is_empty() {
                    log.append(Record::RetainSet(message));
                } else if previous.is_some() {
                    log.append(Record::RetainDelete(message.topic.clone()));
                }
            }
        }
    }

    /// This shard's share of a broker-wide retained limit (0: none): the
    /// topics are spread over the shards by a hash of their name, so each
    /// holds about one in `nr_shards` of them; rounded up, so the shares
    /// sum to at least the limit.
    pub fn retained_share(&self, broker_wide: usize) -> usize {
        broker_wide.div_ceil(self.nr_shards)
    }

    /// Queues `message` to every local session with a matching plain
    /// subscription: once per session, at the highest QoS of its matching
    /// subscriptions [MQTT-3.3.4-2], with all their identifiers
    /// [MQTT-3.3.4-3], [MQTT-3.3.5-1]. A No Local subscription takes no
    /// part for the session's own messages [MQTT-3.8.3-3]: its QoS and
    /// identifier are left out, and the session's other matching
    /// subscriptions still deliver. Shared groups are served through
    /// [`Shard::route`].
    fn deliver_local(&mut self, message: &Arc<Message>, origin: Option<ShardId>, now: Instant) {
        let mut matches = std::mem::take(&mut self.matches);
        matches.clear();
        self.subscriptions.for_each_match_grouped(&message.topic, |found| {
            if let Match::Subscriber { key, value } = found {
                matches.push((key, *value));
            }
        });
        matches.sort_unstable_by_key(|(key, _)| *key);
        let mut i = 0;
        while i < matches.len() {
            let key = matches[i].0;
            let mut merged: Option<SubscriptionOptions> = None;
            let mut ids = crate::protocol::SubscriptionIds::new();
            while i < matches.len() && matches[i].0 == key {
                let subscription = matches[i].1;
                i += 1;
                if subscription.options.no_local && self.is_publisher(key, message) {
                    continue;
                }
                merge_subscription(&mut merged, &mut ids, subscription);
            }
            if let Some(options) = merged {
                self.deliver(key, message, options, ids, false, origin, now);
                if message.retain && self.retained_queries.is_asking() {
                    self.retained_queries.note_live(key, message);
                }
            }
        }
        self.matches = matches;
    }

    /// Whether the session of `key` published `message` (No Local,
    /// [MQTT-3.8.3-3]).
    fn is_publisher(&self, key: SessionKey, message: &Message) -> bool {
        message.publisher.as_ref() == Some(self.slot(key).session.client_id())
    }

    /// Delivers `message` to the next member of the local shared group
    /// `group` (found by id, without a walk); dropped (and counted) if the
    /// group has no member here any more.
    fn deliver_to_group(
        &mut self,
        group: GroupId,
        message: &Arc<Message>,
        origin: Option<ShardId>,
        now: Instant,
    ) {
        let member = self
            .subscriptions
            .group(group)
            .and_then(|group| group.next_member())
            .map(|(key, value)| (key, *value));
        match member {
            Some((key, subscription)) => {
                let ids = subscription.subscription_id.into_iter().collect();
                self.deliver(key, message, subscription.options, ids, false, origin, now);
            }
            None => {
                self.counters.shard.deliveries_dropped += 1;
                self.count_drops(DropCause::NoGroupMember, 1, now);
            }
        }
    }

    /// Queues `message` to the session of `key`; `origin` is the peer
    /// shard it came from (`None`: from this shard).
    #[allow(clippy::too_many_arguments)] // each is one fact of the delivery
    fn deliver(
        &mut self,
        key: SessionKey,
        message: &Arc<Message>,
        options: SubscriptionOptions,
        subscription_ids: crate::protocol::SubscriptionIds,
        retained: bool,
        origin: Option<ShardId>,
        now: Instant,
    ) {
        // In a cluster, a session that moved away forwards, one that
        // arrived drops second copies and keeps the order (see
        // `state/session_moves.rs`). Not retained messages sent for a new
        // subscription: those go to it whatever it was given before.
        if !retained && !self.moves.is_quiet() && self.moved_delivery(key, message, now) {
            return;
        }
        let log_id = self.log_id_for(key, message);
        let delivery = Delivery {
            message: Arc::clone(message),
            options,
            subscription_ids,
            from_retained: retained,
            log_id,
        };
        let session = &mut self.slots.slot_mut(key).session;
        match session.handle_delivery(now, delivery, &mut self.counters.session) {
            DeliveryOutcome::Queued => {
                self.counters.shard.deliveries += 1;
                if log_id != 0 {
                    self.log_changes(key);
                }
                self.account(key);
                self.notify(key);
            }
            DeliveryOutcome::OverLimit => {
                self.counters.shard.deliveries += 1;
                self.counters.shard.deliveries_over_limit += 1;
                if log_id != 0 {
                    self.log_changes(key);
                }
                self.overload(key, &message.topic, origin, now);
                self.account(key);
                self.notify(key);
            }
            DeliveryOutcome::Dropped(reason) => {
                self.counters.shard.deliveries_dropped += 1;
                let cause = match reason {
                    DropReason::QueueFull => DropCause::QueueFull,
                    DropReason::RetainedLimit => DropCause::RetainedLimit,
                    // What the subscriber asked for, not a limit.
                    DropReason::Offline | DropReason::Expired | DropReason::NoLocal => return,
                    // The ACL file's doing, counted by the session.
                    DropReason::NotAuthorized => return,
                };
                self.count_drops(cause, 1, now);
            }
        }
    }

    /// Adds `key`'s subscription to `filter` to the index. A pair of
    /// filter and session new to it counts in the shard's interest, which
    /// announces a filter new to the shard to the other shards (and the
    /// bridge); returns that announcement's revision.
    fn index_subscription(
        &mut self,
        key: SessionKey,
        filter: &TopicFilter,
        subscription: LocalSubscription,
    ) -> Option<u64> {
        if self.subscriptions.insert(filter, key, subscription).is_some() {
            return None;
        }
        let group = self.subscriptions.group_id(filter);
        self.interest.handle_subscribe(filter, group, &self.outbox)
    }

    /// Indexes every subscription of the session of `key` (one rebuilt
    /// from the log, handed over, or a forwarder); returns the latest
    /// revision of the interest announced (0: none).
    fn index_session(&mut self, key: SessionKey) -> u64 {
        let subscriptions: Vec<_> = self
            .slot(key)
            .session
            .subscriptions()
            .map(|(filter, subscribed)| (filter.clone(), LocalSubscription::from(subscribed)))
            .collect();
        let mut revision = 0;
        for (filter, subscription) in subscriptions {
            let made = self.index_subscription(key, &filter, subscription);
            revision = revision.max(made.unwrap_or(0));
        }
        revision
    }

    /// Adds a subscription of `key` to the index, announces new interest
    /// to the other shards, and asks for the retained messages it matches.
    /// Returns the revision of the interest it announced, if any.
    fn subscribe(
        &mut self,
        key: SessionKey,
        grant: SubscriptionGrant,
        now: Instant,
    ) -> Option<u64> {
        let SubscriptionGrant { filter, subscribed, is_new } = grant;
        let options = subscribed.options;
        let revision = self.index_subscription(key, &filter, LocalSubscription::from(&subscribed));
        // [MQTT-3.3.1-6] Retained messages matching a new subscription are
        // sent; v5 Retain Handling may say otherwise [MQTT-3.3.1-9..-11].
        let send_retained = match options.retain_handling {
            RetainHandling::SendAtSubscribe => true,
            RetainHandling::SendIfNew => is_new,
            RetainHandling::DoNotSend => false,
        };
        if !send_retained || filter.is_shared() {
            return revision;
        }
        let reply_to = RetainedReplyTo {
            shard: self.id,
            client_id: self.slot(key).session.client_id().clone(),
            options,
            subscription_id: subscribed.identifier,
            request: 0,
        };
        let owners: Vec<ShardId> = if filter.has_wildcards() {
            (0..self.nr_shards).filter_map(ShardId::from_index).collect()
        } else {
            vec![home_shard(filter.filter().as_bytes(), self.nr_shards)]
        };
        self.ask_retained(key, filter, reply_to, owners, now);
        revision
    }

    fn retained_matching(&mut self, filter: &TopicFilter, now: Instant) -> Vec<Arc<Message>> {
        let mut messages = Vec::new();
        let expired =
            self.retained.for_each_match(filter, now, |message| messages.push(Arc::clone(message)));
        self.counters.shard.retained_expired += expired as u64;
        messages
    }

    fn deliver_retained(&mut self, to: &RetainedReplyTo, messages: &[Arc<Message>], now: Instant) {
        let Some(key) = self.slots.find(&to.client_id) else { return };
        let ids = to.subscription_id.into_iter().collect::<crate::protocol::SubscriptionIds>();
        for message in messages {
            // [MQTT-3.3.1-8] Sent with RETAIN set.
            self.deliver(key, message, to.options, ids.clone(), true, None, now);
        }
    }

    /// Removes a subscription of `key` from the index; the last local
    /// subscriber of a filter withdraws the shard's interest.
    fn unsubscribe_index(&mut self, key: SessionKey, filter: &TopicFilter) {
        if self.subscriptions.remove(filter, key).is_some() {
            self.interest.handle_unsubscribe(filter, &self.outbox);
        }
    }

    /// Handles a message from shard `from` (all but hand-offs, which the
    /// network layer takes).
    pub fn handle_shard_message(&mut self, from: ShardId, message: ShardMessage, now: Instant) {
        match message {
            ShardMessage::Publish(batch) => {
                for message in &batch {
                    self.deliver_local(message, Some(from), now);
                }
                self.durable_received(from, &batch);
            }
            ShardMessage::GroupPublish { group, message } => {
                self.deliver_to_group(group, &message, Some(from), now);
                self.durable_received(from, std::slice::from_ref(&message));
            }
            ShardMessage::Durable { count } => self.durable_acked(from, count),
            ShardMessage::StoreFailing { failing } => {
                self.set_store_failing(from, failing);
            }
            ShardMessage::Block { topic } => self.outbox.handle_remote_gate(from, &topic, true),
            ShardMessage::Unblock { topic } => self.outbox.handle_remote_gate(from, &topic, false),
            ShardMessage::Interest(delta) => {
                self.interest.handle_delta(from, &delta, &self.outbox);
            }
            ShardMessage::InterestAck { revision } => {
                let mut released = std::mem::take(&mut self.released);
                self.interest.handle_ack(from, revision, |key, ack| released.push((key, ack)));
                for &(key, ack) in &released {
                    self.release_acks_durable(key, ack);
                }
                released.clear();
                self.released = released;
                self.ask_acknowledged_retained(now);
            }
            ShardMessage::Retain(message) => {
                self.retain_published(Arc::clone(&message), now);
                self.durable_received(from, std::slice::from_ref(&message));
            }
            ShardMessage::RetainedQuery { filter, reply_to } => {
                self.handle_retained_query(filter, reply_to, now);
            }
            ShardMessage::RetainedFlush { round } => {
                self.outbox.push(from, ShardMessage::RetainedFlushed { round });
            }
            ShardMessage::RetainedFlushed { round } => self.handle_retained_flushed(round, now),
            ShardMessage::Retained { reply_to, messages } => {
                self.handle_retained_answer(&reply_to, messages, now);
            }
        }
    }
}

pub use compaction::{compact_when_asked, CompactionStep, SLICE_RECORDS};

mod bridge_acks;
mod cluster;
mod cluster_retained;
mod cluster_sessions;
mod retained_queries;
mod session_moves;

/// Why a connection task must stop.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    /// Another connection took the session over, or the session ended.
    #[error("connection detached from its session")]
    Detached,
    /// The session closed the connection.
    #[error("{0}")]
    Closed(CloseReason),
}

/// The counters of the abuse limits a session's packet can hit: topics and
/// filters past their limits, publish-rate pacing.
/// Adds one of a session's subscriptions matching a message to the
/// options and Subscription Identifiers it is delivered with: the highest
/// maximum QoS, Retain As Published if any asks, every identifier (MQTT
/// 5.0 3.3.4: overlapping subscriptions, one delivery).
fn merge_subscription(
    merged: &mut Option<SubscriptionOptions>,
    ids: &mut crate::protocol::SubscriptionIds,
    subscription: LocalSubscription,
) {
    let options = merged.get_or_insert(subscription.options);
    options.qos = options.qos.max(subscription.options.qos);
    options.retain_as_published |= subscription.options.retain_as_published;
    ids.extend(subscription.subscription_id);
}

fn limit_hits(counters: &crate::metrics::SessionCounters) -> (u64, u64) {
    (counters.topic_limit_exceeded, counters.publish_rate_limited)
}

fn warn_limit(shard: ShardId, cause: LimitCause, count: u64) {
    tracing::warn!(
        %shard,
        %cause,
        count,
        "limit hit: {} (at most one line per cause every {} s)",
        cause.hint(),
        crate::shard::drops::WARNING_INTERVAL.as_secs()
    );
}
