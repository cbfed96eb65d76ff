//! Sessions across nodes (issue 17, item 6): a client id is unique in the
//! cluster, and a session follows its client to whichever node it connects.
//!
//! * **The directory.** A JetStream key-value bucket,
//!   `{subject_prefix}_sessions`, maps each client id (its key: the id
//!   encoded as a topic's subject under [`KEY_PREFIX`], see
//!   [`super::subject`]) to the node that holds its session.
//! * **A claim.** Before a node accepts a CONNECT (on the client id's home
//!   shard, before the CONNACK), its bridge writes itself into the
//!   directory with compare-and-set on the entry's revision: `create` when
//!   there is none, `update(revision)` otherwise, read again and retried
//!   when another node wrote in between. The revision written is the
//!   claim's epoch.
//! * **A takeover.** When the entry named another node, the claimer asks
//!   it, with a NATS request to `{subject_prefix}.session.{node_id}`, to
//!   give the session up. That node's home shard of the client id closes a
//!   live connection as a local takeover does (a 5.0 client gets
//!   DISCONNECT 0x8E Session taken over first [MQTT-3.1.4-3]), then either
//!   ends the session (the new CONNECT has Clean Start [MQTT-3.1.2-4]) or
//!   removes it and replies with it (`store::handover`: subscriptions,
//!   queued and in-flight messages, QoS 2 state, will). The claimer
//!   rebuilds it before its CONNACK, which then says Session Present
//!   [MQTT-3.2.2-2]. The request names the claiming node: for
//!   `cluster.node_timeout_ms` the old node sends on to it what still
//!   matches the session's subscriptions there (see `moves`).
//! * **Races.** Two nodes that claim one client id at once both succeed in
//!   turn (compare-and-set orders them): the later one takes the session
//!   over from the earlier, which closes its client as soon as that
//!   client's CONNECT is through (a request that arrives while its own
//!   claim is in progress waits for it, see `Shard::end_cluster_claim`).
//!   The later connect wins, as [MQTT-3.1.4-3] has it on one server.
//! * **Release.** When a session ends on the node its entry names (a
//!   clean session's connection closes, a session expires [MQTT-3.1.2-23],
//!   a Clean Start replaces it [MQTT-3.1.2-4]), the node removes the entry,
//!   so that the bucket holds the sessions that exist rather than every
//!   client id ever seen. It purges the key's messages up to the revision
//!   of its own last claim (a JetStream stream purge by subject and
//!   sequence): an entry another node (or this one) wrote since has a
//!   higher revision and stays. A claim racing with the purge either wrote
//!   after it (kept), or finds its compare-and-set refused, reads again,
//!   and creates the entry anew. No marker is left behind, unlike a key-
//!   value delete. A session rebuilt from the durable log after a restart
//!   does not know its claim's revision (the log does not keep it): its
//!   end releases [`REVISION_UNKNOWN`], and the bridge reads the entry and
//!   purges it if it names this node and was written before the directory
//!   opened in this process (its revision at most the bucket's last
//!   sequence then, the *horizon*): every claim of this process came
//!   later and is never taken for it. A client that connects again first
//!   claims anew, and that revision is the one released.
//! * **Failures.** The claim and the request are bounded ([`CLAIM_TIMEOUT`],
//!   [`HANDOVER_TIMEOUT`]). A node that does not answer (dead, or
//!   partitioned away) keeps whatever it held and the client gets a new
//!   session; with NATS or the bucket unreachable the node accepts the
//!   client as a single node would (availability first, counted, logged).

use super::kv::open_bucket;
use super::moves::Forwarder;
use super::subject::topic_subject;
use super::{BridgeCounters, ClusterLink, FromBridge, Shared};
use crate::message::Message;
use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use bytestring::ByteString;
use futures_lite::StreamExt;
use std::cell::RefCell;
use std::future::Future;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

/// The first token of every key of the directory.
const KEY_PREFIX: &str = "c";

/// How long a claim may take in the directory.
pub const CLAIM_TIMEOUT: Duration = Duration::from_secs(3);

/// How long a claimer waits for the previous owner's answer.
pub const HANDOVER_TIMEOUT: Duration = Duration::from_secs(3);

/// Compare-and-set attempts before a claim gives up (each lost one means
/// another node wrote the entry in between).
const MAX_ATTEMPTS: usize = 16;

/// How long the bridge waits before it tries again to open the bucket.
const RETRY: Duration = Duration::from_secs(2);

/// The revision a session rebuilt from the durable log releases: its
/// claim came before the restart and is not in the log (see the module's
/// Release).
pub const REVISION_UNKNOWN: u64 = u64::MAX;

/// A request byte: the CONNECT that takes the session over has Clean Start.
/// A takeover request: `u8` flags, `u8` length and the claiming node's id,
/// then the client id.
const CLEAN_START: u8 = 1;

/// The name of the directory's bucket of a cluster with `subject_prefix`.
pub fn bucket_name(subject_prefix: &str) -> String {
    format!("{}_sessions", subject_prefix.replace('.', "_"))
}

/// What the shards send the bridge about sessions.
#[derive(Debug)]
pub(super) enum ToBridge {
    /// Claim `client_id` for this node; `done` gets the session the
    /// previous owner handed over, if any.
    Claim { client_id: ByteString, clean_start: bool, done: tokio::sync::oneshot::Sender<Claimed> },
    /// The session of `client_id` ended on this node: remove its entry,
    /// if no claim newer than `revision` (this node's last) wrote it.
    Release { client_id: ByteString, revision: u64 },
    /// A shard's answer to a [`Takeover`] (the session, empty for none) or
    /// to a [`super::moves::Forwarded`] (empty).
    Reply { reply: async_nats::Subject, payload: Bytes },
    /// A message for a session that moved to another node (see `moves`).
    Forward(super::moves::Forward),
    /// The forwarder for `client_id`, which sent to `node`, went (see
    /// `moves`).
    ForwarderGone { node: ByteString, client_id: ByteString },
    /// A retained message (or delete) published on this node, for the
    /// cluster's bucket (see `retained`), from the shard that stored it.
    Retain(Arc<crate::message::Message>),
}

/// What a claim of a client id gave.
#[derive(Debug, Default)]
pub struct Claimed {
    /// The session the previous owner handed over (empty: none).
    pub state: Bytes,
    /// The revision of the directory entry the claim wrote (0: none was
    /// written); what the session's end releases ([`ClusterLink::release`]).
    pub revision: u64,
    /// The node that handed the session over (empty: none).
    pub from: ByteString,
}

/// Another node asks this one to give up the session of `client_id`.
#[derive(Debug)]
pub struct Takeover {
    /// The client id.
    pub client_id: ByteString,
    /// Whether the taking CONNECT has Clean Start: the session ends
    /// instead of moving [MQTT-3.1.2-4].
    pub clean_start: bool,
    /// The node taking it (its `node_id`): a session that moves there is
    /// followed by what still matches it here (see `moves`).
    pub node: ByteString,
    /// Where the answer goes.
    reply: async_nats::Subject,
}

impl ClusterLink {
    /// Claims `client_id` for this node before its CONNECT is accepted
    /// (see the module's doc). `None` when sessions stay per node
    /// (`cluster.sessions = "node"`, or an empty client id, which the node
    /// assigns); otherwise the future gives the session the previous
    /// owner handed over (empty: none) and the entry's revision.
    pub fn claim(
        &self,
        client_id: &ByteString,
        clean_start: bool,
    ) -> Option<impl Future<Output = Claimed> + 'static> {
        if !self.shared.sessions_cluster || client_id.is_empty() {
            return None;
        }
        let (done, handed) = tokio::sync::oneshot::channel();
        let client_id = client_id.clone();
        self.shared.sessions.push_control(ToBridge::Claim { client_id, clean_start, done });
        // The bridge gone (stopping): no session.
        Some(async move { handed.await.unwrap_or_default() })
    }

    /// What a session rebuilt from the durable log releases when it ends
    /// (see [`Self::release`]): [`REVISION_UNKNOWN`] when client ids are
    /// claimed cluster-wide, 0 (nothing) when they stay per node.
    pub fn restored_revision(&self) -> u64 {
        if self.shared.sessions_cluster {
            REVISION_UNKNOWN
        } else {
            0
        }
    }

    /// The session of `client_id`, whose last claim on this node wrote
    /// `revision` into the directory ([`REVISION_UNKNOWN`]: before a
    /// restart), ended here: its entry goes, unless a later claim wrote it
    /// (see the module).
    pub fn release(&self, client_id: &ByteString, revision: u64) {
        if revision > 0 {
            let client_id = client_id.clone();
            self.shared.sessions.push_control(ToBridge::Release { client_id, revision });
        }
    }

    /// Counts a handed-over session that did not read.
    pub fn count_malformed(&self) {
        BridgeCounters::add(&self.shared.counters.malformed);
    }

    /// Counts a second copy of a message dropped for a session that
    /// arrived (see `shard::state::session_moves`).
    pub fn count_move_duplicate(&self) {
        BridgeCounters::add(&self.shared.counters.session_move_duplicates);
    }

    /// Counts `sessions` that arrived and stopped holding back at their
    /// hold's deadline (see `shard::state::session_moves`).
    pub fn count_hold_expired(&self, sessions: usize) {
        let counter = &self.shared.counters.session_hold_expired;
        counter.fetch_add(sessions as u64, std::sync::atomic::Ordering::Relaxed);
    }

    /// Answers `takeover` with the session given up (`state`, empty for
    /// none).
    pub fn handover(&self, takeover: Takeover, state: Bytes) {
        let reply = takeover.reply;
        self.shared.sessions.push_control(ToBridge::Reply { reply, payload: state });
    }

    /// Sends `message` on to `node`, where the session of `client_id`
    /// moved (see `moves`).
    pub fn forward(&self, node: &ByteString, client_id: &ByteString, message: &Arc<Message>) {
        let forward = super::moves::Forward {
            node: node.clone(),
            client_id: client_id.clone(),
            message: Arc::clone(message),
        };
        self.shared.sessions.push_control(ToBridge::Forward(forward));
    }

    /// The forwarder for `client_id` that sent to `node` went: `node` is
    /// told after what was sent on before (see `moves`).
    pub fn forwarder_gone(&self, node: &ByteString, client_id: &ByteString) {
        let (node, client_id) = (node.clone(), client_id.clone());
        self.shared.sessions.push_control(ToBridge::ForwarderGone { node, client_id });
    }

    /// Answers another node's forward once its messages are queued here.
    pub fn answer_forwarded(&self, forwarded: super::moves::Forwarded) {
        if let Some(reply) = forwarded.reply {
            self.shared.sessions.push_control(ToBridge::Reply { reply, payload: Bytes::new() });
        }
    }

    /// How long a node sends on what matches a session that moved away,
    /// and (with margin) how long the new node recognises copies of what
    /// reached it twice: see `shard::state::session_moves`.
    pub fn move_window(&self) -> std::time::Duration {
        self.shared.move_window
    }
}

/// The bridge's side: the directory, claims and the takeover requests of
/// other nodes.
pub(super) struct SessionSync {
    client: async_nats::Client,
    context: jetstream::Context,
    bucket: String,
    /// Sends on what the shards forward for sessions that moved away.
    forwarder: Rc<Forwarder>,
    /// The directory, once open.
    store: RefCell<Option<kv::Store>>,
    /// The bucket's last sequence when the directory opened: every entry
    /// this process's claims wrote has a higher revision (see the module's
    /// Release). 0 until then, or when it could not be read.
    horizon: std::cell::Cell<u64>,
    /// This node's id, as written into the directory.
    node: String,
    /// `cluster.kv_replicas`, for a bucket this node creates.
    replicas: usize,
    prefix: String,
    shared: Arc<Shared>,
}

impl SessionSync {
    pub(super) fn new(
        client: async_nats::Client,
        node: &str,
        subject_prefix: &str,
        replicas: usize,
        shared: Arc<Shared>,
        forwarder: Rc<Forwarder>,
    ) -> Self {
        Self {
            forwarder,
            replicas,
            context: jetstream::new(client.clone()),
            client,
            bucket: bucket_name(subject_prefix),
            store: RefCell::new(None),
            horizon: std::cell::Cell::new(0),
            node: node.to_owned(),
            prefix: subject_prefix.to_owned(),
            shared,
        }
    }

    /// The subject other nodes send takeover requests for `node` to.
    fn request_subject(&self, node: &str) -> String {
        format!("{}.session.{node}", self.prefix)
    }

    /// Serves the shards' claims, handovers and retained messages (to
    /// `retained`, the bucket's writer; dropped without one), in the order
    /// the shards sent them, until the bridge stops.
    pub(super) async fn serve_shards(
        self: Rc<Self>,
        retained: Option<Rc<super::retained::RetainedSync>>,
    ) {
        let mut buffer = bytes::BytesMut::new();
        while let Some(item) =
            std::future::poll_fn(|cx| self.shared.sessions.poll_control(cx)).await
        {
            match item {
                ToBridge::Claim { client_id, clean_start, done } => {
                    let sync = Rc::clone(&self);
                    tokio::task::spawn_local(async move {
                        let claimed = sync.claim(&client_id, clean_start).await;
                        let _ = done.send(claimed);
                    });
                }
                ToBridge::Release { client_id, revision } => {
                    let sync = Rc::clone(&self);
                    tokio::task::spawn_local(async move {
                        sync.release(&client_id, revision).await;
                    });
                }
                ToBridge::Reply { reply, payload } => {
                    if let Err(error) = self.client.publish(reply, payload).await {
                        tracing::warn!(%error, "cannot answer another node about a session");
                    }
                }
                ToBridge::Forward(forward) => self.forwarder.push(forward),
                ToBridge::ForwarderGone { node, client_id } => {
                    self.forwarder.close(node, client_id);
                }
                ToBridge::Retain(message) => {
                    if let Some(retained) = &retained {
                        retained.publish(&message, &mut buffer).await;
                    }
                }
            }
        }
    }

    /// Opens the directory (retrying until it can) and serves the takeover
    /// requests of other nodes, until the bridge stops.
    pub(super) async fn run(self: Rc<Self>) {
        let requests = match self.client.subscribe(self.request_subject(&self.node)).await {
            Ok(requests) => requests,
            Err(error) => return tracing::warn!(%error, "cannot serve session takeovers"),
        };
        let serve = tokio::task::spawn_local(Rc::clone(&self).serve_requests(requests));
        let mut warned = false;
        let store = loop {
            match self.open().await {
                Ok(store) => break store,
                Err(error) if !warned => {
                    tracing::error!(
                        %error,
                        bucket = %self.bucket,
                        "cluster.sessions = \"cluster\": cannot open the JetStream bucket; start \
                         nats-server with -js (and --store_dir), or set cluster.sessions = \
                         \"node\". Client ids are unique per node only until then (trying again \
                         every 2 s)"
                    );
                    warned = true;
                }
                Err(_) => {}
            }
            tokio::time::sleep(RETRY).await;
        };
        // Before any claim can write (they wait for the store).
        match store.stream.get_info().await {
            Ok(info) => self.horizon.set(info.state.last_sequence),
            Err(error) => tracing::warn!(
                %error,
                bucket = %self.bucket,
                "cannot read the session directory's last sequence: the entries of sessions \
                 restored from data_dir stay when they expire"
            ),
        }
        *self.store.borrow_mut() = Some(store);
        tracing::info!(bucket = %self.bucket, "cluster-wide sessions: directory open");
        let _ = serve.await;
    }

    /// The directory (see [`open_bucket`]).
    async fn open(&self) -> Result<kv::Store, async_nats::Error> {
        open_bucket(&self.context, &self.bucket, self.replicas).await
    }

    /// Hands each takeover request to the home shard of its client id.
    async fn serve_requests(self: Rc<Self>, mut requests: async_nats::Subscriber) {
        while let Some(request) = requests.next().await {
            let Some(reply) = request.reply else { continue };
            let Some((flags, node, client_id)) = decode_request(request.payload) else {
                BridgeCounters::add(&self.shared.counters.malformed);
                tracing::debug!(subject = %request.subject, "not a takeover request of ringmq's");
                continue;
            };
            let shard = crate::router::home_shard(client_id.as_bytes(), self.shared.events.len());
            let clean_start = flags & CLEAN_START != 0;
            let takeover = Takeover { client_id, clean_start, node, reply };
            self.shared.events[shard.index()].push_control(FromBridge::Takeover(takeover));
        }
    }

    /// Claims `client_id`; returns the session its previous owner handed
    /// over (empty: none, or the claim could not be made) and the revision
    /// written.
    async fn claim(&self, client_id: &ByteString, clean_start: bool) -> Claimed {
        let counters = &self.shared.counters;
        // Not while disconnected: the client would wait for its
        // reconnection, holding the CONNACK for the whole timeout.
        let connected = self.client.connection_state() == async_nats::connection::State::Connected;
        let Some(store) = self.store.borrow().clone().filter(|_| connected) else {
            BridgeCounters::add(&counters.session_claims_failed);
            return Claimed::default();
        };
        let Some(key) = directory_key(client_id) else {
            BridgeCounters::add(&counters.subject_too_long);
            return Claimed::default();
        };
        let (previous, revision) =
            match tokio::time::timeout(CLAIM_TIMEOUT, self.set(&store, &key)).await {
                Ok(Some(written)) => written,
                Ok(None) | Err(_) => {
                    BridgeCounters::add(&counters.session_claims_failed);
                    tracing::warn!(
                        client_id = &**client_id,
                        "cannot claim the client id in the session directory: accepted on this \
                         node alone"
                    );
                    return Claimed::default();
                }
            };
        BridgeCounters::add(&counters.session_claims);
        let from = ByteString::from(previous.as_str());
        let claimed = |state| Claimed { state, revision, from };
        if previous.is_empty() || previous == self.node {
            return claimed(Bytes::new());
        }
        let flags = if clean_start { CLEAN_START } else { 0 };
        let payload = encode_request(flags, &self.node, client_id);
        let request = self.client.request(self.request_subject(&previous), payload);
        match tokio::time::timeout(HANDOVER_TIMEOUT, request).await {
            Ok(Ok(reply)) => {
                BridgeCounters::add(&counters.session_takeovers);
                claimed(reply.payload)
            }
            Ok(Err(error)) => {
                // "No responders": the node is gone; what it held is lost.
                tracing::info!(
                    client_id = &**client_id,
                    node = %previous,
                    %error,
                    "the node that held the session did not answer: a new session"
                );
                claimed(Bytes::new())
            }
            Err(_) => {
                BridgeCounters::add(&counters.session_claims_failed);
                tracing::warn!(
                    client_id = &**client_id,
                    node = %previous,
                    "the node that held the session did not answer in time: a new session"
                );
                claimed(Bytes::new())
            }
        }
    }

    /// Writes this node into `key` by compare-and-set; returns the node
    /// that held it before ("" for none) and the revision written, or
    /// `None` past [`MAX_ATTEMPTS`] or on an error.
    async fn set(&self, store: &kv::Store, key: &str) -> Option<(String, u64)> {
        let value = Bytes::from(self.node.clone().into_bytes());
        for _ in 0..MAX_ATTEMPTS {
            let written = match store.entry(key).await.ok()? {
                None => store.create(key, value.clone()).await.map(|rev| (String::new(), rev)).ok(),
                Some(entry) => {
                    let previous = match entry.operation {
                        kv::Operation::Put => String::from_utf8_lossy(&entry.value).into_owned(),
                        kv::Operation::Delete | kv::Operation::Purge => String::new(),
                    };
                    let updated = store.update(key, value.clone(), entry.revision).await;
                    updated.map(|revision| (previous, revision)).ok()
                }
            };
            if let Some(previous) = written {
                return Some(previous);
            }
        }
        None
    }

    /// Removes the entry of `client_id` up to `revision` (see the
    /// module's Release): one purge of the key's subject in the bucket's
    /// stream, bounded by [`CLAIM_TIMEOUT`].
    async fn release(&self, client_id: &ByteString, revision: u64) {
        let counters = &self.shared.counters;
        let Some(store) = self.store.borrow().clone() else {
            return BridgeCounters::add(&counters.session_release_failed);
        };
        // None: never claimed either (see `claim`).
        let Some(key) = directory_key(client_id) else { return };
        let purged = async {
            let revision = match revision {
                REVISION_UNKNOWN => {
                    let entry = store.entry(&key).await?;
                    match entry.and_then(|entry| self.restored_entry(&entry)) {
                        Some(revision) => revision,
                        None => return Ok(0),
                    }
                }
                revision => revision,
            };
            let subject = format!("{}{key}", store.prefix);
            let purge = store.stream.purge().filter(subject).sequence(revision + 1);
            Ok::<_, async_nats::Error>(purge.await?.purged)
        };
        match tokio::time::timeout(CLAIM_TIMEOUT, purged).await {
            Ok(Ok(purged)) if purged > 0 => BridgeCounters::add(&counters.session_released),
            // A later claim rewrote the entry first (its revision is
            // higher), or another node's claim removed the older ones; a
            // restored session's entry names another node, or is new.
            Ok(Ok(_)) => {}
            Ok(Err(error)) => {
                BridgeCounters::add(&counters.session_release_failed);
                tracing::debug!(client_id = &**client_id, %error, "session entry not removed");
            }
            Err(_) => {
                BridgeCounters::add(&counters.session_release_failed);
                tracing::debug!(client_id = &**client_id, "session entry not removed in time");
            }
        }
    }

    /// The revision up to which the entry of a session rebuilt from the
    /// durable log goes: its own, when it names this node and was written
    /// before the directory opened here (see the module's Release).
    fn restored_entry(&self, entry: &kv::Entry) -> Option<u64> {
        let names_node = entry.operation == kv::Operation::Put && entry.value == self.node;
        restored_release(names_node, entry.revision, self.horizon.get())
    }
}

/// See [`SessionSync::restored_entry`]: an entry of `revision` that names
/// this node (or not) goes when the directory opened at `horizon`.
fn restored_release(names_node: bool, revision: u64, horizon: u64) -> Option<u64> {
    (names_node && revision <= horizon).then_some(revision)
}

/// The directory's key of `client_id`; `None` when too long for a NATS
/// subject.
fn directory_key(client_id: &str) -> Option<String> {
    let mut key = String::new();
    topic_subject(KEY_PREFIX, client_id, &mut key).then_some(key)
}

/// A takeover request (see [`CLEAN_START`]); a node id is at most 64
/// bytes (`config::cluster` checks it).
fn encode_request(flags: u8, node: &str, client_id: &str) -> Bytes {
    let mut payload = Vec::with_capacity(2 + node.len() + client_id.len());
    payload.push(flags);
    payload.push(node.len() as u8);
    payload.extend_from_slice(node.as_bytes());
    payload.extend_from_slice(client_id.as_bytes());
    payload.into()
}

/// The flags, claiming node and client id of a takeover request; `None`
/// when malformed.
fn decode_request(payload: Bytes) -> Option<(u8, ByteString, ByteString)> {
    let (&flags, rest) = payload.split_first()?;
    let (&len, rest) = rest.split_first()?;
    let len = usize::from(len);
    if rest.len() < len {
        return None;
    }
    let node = ByteString::try_from(payload.slice(2..2 + len)).ok()?;
    let client_id = ByteString::try_from(payload.slice(2 + len..)).ok()?;
    Some((flags, node, client_id))
}

#[cfg(test)]
impl Takeover {
    /// A takeover request as the bridge makes it, from node `b`.
    pub(crate) fn for_tests(client_id: &str, clean_start: bool) -> Self {
        Self { client_id: client_id.into(), clean_start, node: "b".into(), reply: "reply".into() }
    }
}

#[cfg(test)]
impl super::ClusterSetup {
    /// The shards' answers to takeovers (and to forwards), the client ids
    /// claimed, and the topics of the retained messages for the bucket,
    /// since the last call; forwards are left out (see
    /// [`Self::take_forwards`]).
    pub(crate) fn take_sessions(&self) -> (Vec<Bytes>, Vec<String>, Vec<String>) {
        let (mut handovers, mut claims, mut retained) = (Vec::new(), Vec::new(), Vec::new());
        for item in self.take_to_bridge() {
            match item {
                ToBridge::Reply { payload, .. } => handovers.push(payload),
                ToBridge::Forward(_) | ToBridge::ForwarderGone { .. } => {}
                ToBridge::Claim { client_id, .. } => claims.push(client_id.to_string()),
                ToBridge::Release { .. } => {}
                ToBridge::Retain(message) => retained.push(message.topic.as_str().to_owned()),
            }
        }
        (handovers, claims, retained)
    }

    /// The messages the shards sent on for sessions that moved away, as
    /// (node, client id, message), since the last call; the rest is left
    /// out.
    pub(crate) fn take_forwards(&self) -> Vec<(String, String, Arc<Message>)> {
        let forwards = self.take_to_bridge().into_iter().filter_map(|item| match item {
            ToBridge::Forward(f) => Some((f.node.to_string(), f.client_id.to_string(), f.message)),
            _ => None,
        });
        forwards.collect()
    }

    /// The forwarders that went, as (node, client id), since the last
    /// call; the rest is left out.
    pub(crate) fn take_forwarders_gone(&self) -> Vec<(String, String)> {
        let gone = self.take_to_bridge().into_iter().filter_map(|item| match item {
            ToBridge::ForwarderGone { node, client_id } => {
                Some((node.to_string(), client_id.to_string()))
            }
            _ => None,
        });
        gone.collect()
    }

    /// The releases of directory entries the shards asked for, as (client
    /// id, revision), since the last call; the rest is left out.
    pub(crate) fn take_releases(&self) -> Vec<(String, u64)> {
        let releases = self.take_to_bridge().into_iter().filter_map(|item| match item {
            ToBridge::Release { client_id, revision } => Some((client_id.to_string(), revision)),
            _ => None,
        });
        releases.collect()
    }

    fn take_to_bridge(&self) -> Vec<ToBridge> {
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        std::iter::from_fn(|| match self.0.sessions.poll_control(&mut cx) {
            std::task::Poll::Ready(item) => item,
            std::task::Poll::Pending => None,
        })
        .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_valid_bucket_keys() {
        for id in ["client-1", "a/b", "with space", "é", "a.b", "_", "/"] {
            let key = directory_key(id).unwrap();
            assert!(key.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_./=".contains(&b)));
            assert_eq!(super::super::subject::decode_topic(KEY_PREFIX, &key).as_deref(), Some(id));
        }
        assert_eq!(bucket_name("prod.mqtt"), "prod_mqtt_sessions");
    }

    #[test]
    fn a_takeover_request_names_the_claiming_node() {
        let request = encode_request(CLEAN_START, "node-b", "a/é");
        let (flags, node, client_id) = decode_request(request.clone()).unwrap();
        assert_eq!((flags, &*node, &*client_id), (CLEAN_START, "node-b", "a/é"));
        assert!(decode_request(request.slice(..5)).is_none(), "cut in the node id");
        assert!(decode_request(Bytes::from_static(&[0])).is_none());
        assert_eq!(decode_request(encode_request(0, "b", "")).unwrap().2, "");
    }

    /// A restored session's end removes its entry only when the entry
    /// names this node and predates the directory's opening here: a claim
    /// of this process (after the horizon) or of another node stays.
    #[test]
    fn a_restored_session_releases_only_an_entry_of_this_node_from_before_the_restart() {
        assert_eq!(restored_release(true, 40, 41), Some(40));
        assert_eq!(restored_release(true, 41, 41), Some(41));
        assert_eq!(restored_release(true, 42, 41), None, "claimed since the restart");
        assert_eq!(restored_release(false, 40, 41), None, "names another node");
        assert_eq!(restored_release(true, 1, 0), None, "the horizon was not read");
    }
}
