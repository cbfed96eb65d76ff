//! The only cross-core code, in two parts.
//!
//! The routing decisions, pure data and no IO:
//! * [`destination`]: where a message goes: a local shard today, a remote
//!   node later. The outbox queues per destination.
//! * [`interest`]: which shards have subscribers to which filters, and the
//!   deltas that keep every shard's replica in step.
//! * [`placement`]: the home shard of a client id.
//! * [`messages`]: what shards send each other.
//! * [`Outbox`]: what waits to cross, per destination, batched, bounded;
//!   with [`gates`], which publishers to hold back for whom.
//!
//! The transport that carries batches to destinations, wired by `runtime`:
//! * [`mesh`]: glommio's shared-nothing channels between the shards of this
//!   process, the only code that imports `glommio::channels`.
//! * [`cluster`]: the bridge to the other nodes of a cluster, over NATS,
//!   a second transport beside it (the only code that uses tokio).

pub mod cluster;
pub mod destination;
pub mod gates;
pub mod interest;
pub mod mesh;
pub mod messages;
mod outbox;
pub mod placement;

pub use destination::Destination;
pub use gates::GateId;
pub use interest::ShardId;
pub use mesh::{Mesh, MeshError, MeshSetup, MeshTasks, CHANNEL_CAPACITY};
pub use messages::{HandOff, MovedTransport, RetainedReplyTo, RouterMessage, ShardMessage};
pub use outbox::{Hold, HoldOn, Outbox};
pub use placement::{home_shard, stable_hash, ClientIdAssigner};
