//! What one core owns, alone and without locks: its sessions, its local
//! subscription index, its share of the retained messages, its offline
//! queues. Nothing here touches a socket or a channel endpoint; the shard
//! returns actions that `router` and `net` carry out.
//!
//! * [`retained`]: the retained messages by topic.
//! * [`drops`]: rate-limited warnings for dropped messages.
//! * backpressure: a held-back connection's keep alive
//!   ([`Shard::handle_held`]).
//! * [`Placement`]: where a new connection goes ([`Shard::place`]).
//! * [`Shard`]: the state that ties sessions, index and retained store
//!   together and routes messages.

mod backpressure;
pub mod drops;
mod placement;
pub mod retained;
mod state;
#[cfg(test)]
mod tests;

pub use placement::Placement;
pub use state::{
    ConnectOutcome, ConnectionError, ConnectionId, SessionKey, Shard, ShardCounters,
    INDEX_WORK_PER_TURN,
};
