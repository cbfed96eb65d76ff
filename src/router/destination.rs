//! Where a message goes. Routing decides destinations; a transport carries
//! batches to them. Today every destination is a shard of this process,
//! reached over the glommio mesh; a remote node (reached through a bridge
//! to the other nodes of a cluster) is the next kind, and the decisions
//! written against [`Destination`] (the outbox's queues, its congestion
//! and its limits) need not change for it.

use super::ShardId;
use std::fmt;

/// The queue number of [`Destination::Bridge`]: past every shard's.
pub(super) const BRIDGE_QUEUE: usize = super::interest::MAX_SHARDS;

/// A place messages are queued for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Destination {
    /// A shard of this process.
    Shard(ShardId),
    /// The other nodes of a cluster, through the NATS bridge: a publisher
    /// held for it waits until fewer of its shard's QoS 1/2 messages wait
    /// for the other nodes' acknowledgements.
    Bridge,
}

impl Destination {
    /// The outbox's queue for this destination: a shard's number, or
    /// [`BRIDGE_QUEUE`] (which has no queue: see `Outbox::hold_bridge`).
    pub(super) fn queue(self) -> usize {
        match self {
            Self::Shard(shard) => shard.index(),
            Self::Bridge => BRIDGE_QUEUE,
        }
    }
}

impl From<ShardId> for Destination {
    fn from(shard: ShardId) -> Self {
        Self::Shard(shard)
    }
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Shard(shard) => shard.fmt(f),
            Self::Bridge => f.write_str("bridge"),
        }
    }
}
