//! The durable log of a shard: append-only segment files under
//! `data_dir/shard-K/`, one writer task per shard on glommio's DMA file
//! I/O, no locks and no shared writer.
//!
//! In the module order of `lib.rs` it comes after [`crate::message`] (its
//! records carry messages in their `message::wire` form) and before
//! [`crate::shard`], which appends to it; [`crate::runtime`] opens it at
//! start and runs its writer.
//!
//! * [`record`] (sans-IO): the segment header and the framed records
//!   (length, CRC32C, body).
//! * [`recovery`] (sans-IO): segments in, live state out; torn tails found
//!   by their CRC, cut off and counted.
//! * [`log`]: the shard's handle: append, durability futures, compaction
//!   requests, start and end; no IO.
//! * [`writer`]: the files: recovery at start, group commit, rotation,
//!   compaction segments (their slices come from `shard`).
//! * [`data_dir`]: the checks made once, before any shard starts: the
//!   directory is writable and no other process uses it; and, when the
//!   shard count changed since the log was written, `reshard` moves each
//!   retained message to its new home shard.
//! * [`handover`] (sans-IO): a persistent session as one cluster node
//!   hands it to another, in the records of a snapshot.
//!
//! What is logged: the retained messages (set and delete), by the shard
//! that owns their topic; and the persistent sessions with their
//! subscriptions, queued and in-flight QoS 1/2 messages and inbound QoS 2
//! state, by their home shard (see [`sessions`]).

pub mod data_dir;
pub mod handover;
pub mod log;
pub mod record;
pub mod recovery;
mod reshard;
pub mod sessions;
pub mod writer;

pub use log::{Entry, Log, Lsn};
pub use record::Record;
pub use recovery::{LiveState, RecoveryStats};
pub use sessions::{
    SessionState, StoredEntry, StoredFlow, StoredSession, StoredSubscription, StoredWill,
};
pub use writer::{open, Opened, StoreError, StoreOptions, Writer};

/// The directory of shard `shard`'s log under `data_dir`.
pub fn shard_dir(data_dir: &std::path::Path, shard: usize) -> std::path::PathBuf {
    data_dir.join(format!("shard-{shard}"))
}
