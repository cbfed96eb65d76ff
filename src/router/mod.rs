//! The only cross-core code: the messages shards exchange, the mesh of
//! glommio shared-nothing channels that carries them, the per-peer
//! outboxes, the interest replica, session placement and socket hand-off.
//! Only this module imports `glommio::channels`. A remote node (later: a
//! NATS bridge) can become one more destination beside the local peers.
//!
//! * [`interest`]: which shards have subscribers to which filters, and the
//!   deltas that keep every shard's replica in step.
//! * [`placement`]: the home shard of a client id.

pub mod interest;
mod outbox;
pub mod placement;

pub use interest::ShardId;
pub use outbox::Outbox;
pub use placement::{home_shard, stable_hash, ClientIdAssigner};

use crate::message::Message;
use crate::protocol::{Connect, SubscriptionOptions, TopicFilter};
use bytes::BytesMut;
use futures_lite::future::poll_fn;
use glommio::channels::channel_mesh::{Full, MeshBuilder, Senders};
use glommio::channels::shared_channel::ConnectedReceiver;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::rc::Rc;
use std::sync::Arc;

/// Slots of each shard-to-shard channel. Each slot carries a batch.
pub const CHANNEL_CAPACITY: usize = 1024;

/// The transport of a connection moving to its home shard: its socket,
/// and whatever transport state must travel with it (a TLS session will).
/// The fd is owned: dropping the message anywhere closes it, so no path
/// leaks it.
#[derive(Debug)]
pub enum MovedTransport {
    /// Plain TCP: the socket alone.
    Tcp(OwnedFd),
}

/// A connection moving to its home shard: its transport, its CONNECT as
/// the accepting shard decoded it, and the bytes read after the CONNECT
/// (a client may send packets before the CONNACK), so the home shard
/// neither copies nor decodes them again.
#[derive(Debug)]
pub struct HandOff {
    /// The connected socket and its transport state.
    pub transport: MovedTransport,
    /// The CONNECT.
    pub connect: Box<Connect>,
    /// Bytes read after the CONNECT, not yet decoded.
    pub rest: Option<BytesMut>,
    /// The client's address, for logs.
    pub peer: SocketAddr,
    /// Index of the listener that accepted it.
    pub listener: usize,
}

/// Where the answer to a retained-message query goes: a session on the
/// asking shard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetainedReplyTo {
    /// The asking shard.
    pub shard: ShardId,
    /// The subscriber's client id (its session is homed on `shard`).
    pub client_id: bytestring::ByteString,
    /// The options of the subscription that asked.
    pub options: SubscriptionOptions,
    /// The v5 Subscription Identifier of that subscription.
    pub subscription_id: Option<std::num::NonZeroU32>,
}

/// What shards send each other.
#[derive(Debug)]
pub enum RouterMessage {
    /// A connection for a client homed on the receiving shard (taken by
    /// the network layer).
    HandOff(HandOff),
    /// Work for the receiving shard's state.
    Shard(ShardMessage),
}

/// What one shard's state asks of another's.
#[derive(Debug)]
pub enum ShardMessage {
    /// Publishes matched on the sender's interest replica, to be matched
    /// against the receiver's local subscriptions.
    Publish(Vec<Arc<Message>>),
    /// The sender's first local subscriber to a filter arrived, or its last
    /// one left.
    Interest(interest::InterestDelta),
    /// Deliver to one local member of the shared group `group` (chosen for
    /// this shard by the sender) [MQTT-4.8.2].
    GroupPublish {
        /// The receiver's id for the group, as its interest delta announced
        /// it ([`interest::InterestDelta::group`]).
        group: interest::GroupId,
        /// The message.
        message: Arc<Message>,
    },
    /// The receiver applied the sender's interest change `revision`.
    InterestAck {
        /// The revision applied.
        revision: u64,
    },
    /// Store (or, with an empty payload, delete) a retained message on the
    /// shard that owns its topic.
    Retain(Arc<Message>),
    /// Send the retained messages matching `filter` to `reply_to`.
    RetainedQuery {
        /// The subscription's filter.
        filter: TopicFilter,
        /// The subscriber.
        reply_to: RetainedReplyTo,
    },
    /// Retained messages for a subscriber homed on the receiving shard.
    Retained {
        /// The subscriber.
        reply_to: RetainedReplyTo,
        /// The matching retained messages.
        messages: Vec<Arc<Message>>,
    },
}

/// The mesh before the shards join it: created once, cloned into every
/// shard's executor.
#[derive(Clone, Debug)]
pub struct MeshSetup(MeshBuilder<RouterMessage, Full>);

impl MeshSetup {
    /// A full mesh of bounded channels between `nr_shards` shards.
    pub fn new(nr_shards: usize) -> Self {
        Self(MeshBuilder::full(nr_shards, CHANNEL_CAPACITY))
    }
}

/// A shard's end of the mesh.
#[derive(Debug)]
pub struct Mesh {
    senders: Senders<RouterMessage>,
    receivers: Vec<(usize, ConnectedReceiver<RouterMessage>)>,
}

impl Mesh {
    /// Joins the mesh. Every shard must call this (after anything that
    /// could fail), or the others wait forever.
    pub async fn join(setup: &MeshSetup) -> Result<Self, MeshError> {
        let (senders, mut receivers) = setup.0.clone().join().await.map_err(|_| MeshError)?;
        Ok(Self { senders, receivers: receivers.streams() })
    }

    /// This shard's number.
    pub fn shard(&self) -> ShardId {
        // The configuration allows at most MAX_SHARDS shards.
        ShardId::from_index(self.senders.peer_id()).expect("shard count checked by the config")
    }

    /// Starts one task per peer that sends what `outbox` queues for it,
    /// and one per peer that hands every message received to `dispatch`.
    pub fn start(
        self,
        outbox: Rc<Outbox>,
        dispatch: impl Fn(ShardId, RouterMessage) + Clone + 'static,
    ) -> MeshTasks {
        let senders = Rc::new(self.senders);
        let me = senders.peer_id();
        let flushers = (0..senders.nr_consumers())
            .filter(|&peer| peer != me)
            .map(|peer| {
                let (outbox, senders) = (Rc::clone(&outbox), Rc::clone(&senders));
                glommio::spawn_local(async move {
                    while let Some(message) = poll_fn(|cx| outbox.poll_pop(peer, cx)).await {
                        // A failed send gives the message back; dropping it
                        // closes any socket it carries.
                        if senders.send_to(peer, message).await.is_err() {
                            break;
                        }
                    }
                })
            })
            .collect();
        let receivers = self
            .receivers
            .into_iter()
            .map(|(peer, receiver)| {
                let dispatch = dispatch.clone();
                let from = ShardId::from_index(peer).expect("shard count checked by the config");
                glommio::spawn_local(async move {
                    while let Some(message) = receiver.recv().await {
                        dispatch(from, message);
                    }
                })
            })
            .collect();
        MeshTasks { outbox, senders, flushers, receivers }
    }
}

/// The running tasks of a shard's mesh end.
#[derive(Debug)]
pub struct MeshTasks {
    outbox: Rc<Outbox>,
    senders: Rc<Senders<RouterMessage>>,
    flushers: Vec<glommio::Task<()>>,
    receivers: Vec<glommio::Task<()>>,
}

impl MeshTasks {
    /// Sends what is still queued, closes this shard's channels, and waits
    /// until every peer closed its channels to this shard too.
    pub async fn shutdown(self) {
        self.outbox.close();
        for flusher in self.flushers {
            flusher.await;
        }
        self.senders.close();
        for receiver in self.receivers {
            receiver.await;
        }
    }
}

/// A shard could not join the mesh.
#[derive(Debug, thiserror::Error)]
#[error("cannot join the shard mesh")]
pub struct MeshError;

impl From<ShardMessage> for RouterMessage {
    fn from(message: ShardMessage) -> Self {
        Self::Shard(message)
    }
}
