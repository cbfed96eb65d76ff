//! What one core owns, alone and without locks: its sessions, its local
//! subscription index, its share of the retained messages, its offline
//! queues. Nothing here touches a socket or a channel endpoint; the shard
//! returns actions that `router` and `net` carry out.
//!
//! * [`retained`]: the retained messages by topic.
//! * [`drops`]: rate-limited warnings for dropped messages.
//! * `slots`: the session table and the links to connection tasks;
//!   `deadlines`: when to look at which session; `interest_sync`: this
//!   shard's side of the interest replica; `index_work`: subscribes too
//!   large for one turn; `backpressure`: a held-back connection's keep
//!   alive ([`Shard::handle_held`]).
//! * [`Placement`]: where a new connection goes ([`Shard::place`]).
//! * [`Shard`]: the state that ties sessions, index and retained store
//!   together and routes messages.

mod backpressure;
mod deadlines;
pub mod drops;
mod index_work;
mod interest_sync;
pub mod limit_log;
mod placement;
pub mod retained;
mod slots;
mod state;
#[cfg(test)]
mod tests;

pub use index_work::INDEX_WORK_PER_TURN;
pub use placement::Placement;
pub use slots::{ConnectionId, SessionKey};
pub use state::{
    compact_when_asked, CompactionStep, ConnectOutcome, ConnectionError, Shard, SLICE_RECORDS,
};
