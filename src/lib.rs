//! ringmq: a thread-per-core MQTT broker on io_uring (glommio).
//!
//! One shard per core. A shard owns, alone and without locks, the sessions
//! whose client id hashes to it, its subscription index, its share of the
//! retained messages and a replica of which shards are interested in which
//! filters. A publish is matched on the shard that received it and crosses
//! to each interested shard once, over bounded shared-nothing channels.
//!
//! Module rules (see `design.md`):
//! * [`protocol`] and [`session`] are sans-IO: no sockets, no clock (time is
//!   passed in), no logging on the hot path; tested without sockets.
//! * [`shard`] never touches sockets or channel endpoints: what must cross
//!   to another shard goes into the router's [`router::Outbox`] (a plain
//!   queue that the router's flusher tasks drain into the channels), and a
//!   connection task learns of new output through the `Waker` it
//!   registered, then asks the shard for the bytes. (design.md's wording,
//!   "it returns actions", is this: the outbox and the wakers are those
//!   actions, queued rather than returned.)
//! * [`index`] is a leaf: the subscription trie that `shard` and `router`
//!   both build on, importing neither.
//! * No import cycles. Each module imports only those before it:
//!   `config`, `auth`, `protocol`, `shrink`, `ratelimit`, `metrics`; `index`,
//!   `message`; `store`;
//!   `session`, `router`; `shard`; `net`; `runtime`.
//! * Counters live in [`metrics`], owned by the shard: sessions,
//!   connections and the outbox count into them through a reference and
//!   keep none of their own.
//! * Only [`router`] imports `glommio::channels`; only [`net`] touches
//!   sockets (but for the NATS connections of a cluster, which the
//!   async-nats client of `router::cluster` holds on the bridge's own
//!   thread, the only place tokio runs); [`runtime`] starts and stops it
//!   all.
//! * [`auth`] checks credentials; password checks cost milliseconds, so
//!   they run on its own small thread pool, never on a shard. SCRAM's
//!   server side (enhanced authentication) costs a few HMACs and runs
//!   inline, driven by `session::AuthExchange`. Its ACL rules
//!   ([`auth::acl`]) are checked by the session on every publish,
//!   subscription and delivery, without allocating (compiled once per
//!   file).
//! * [`store`] is a shard's durable log: the shard appends records to an
//!   in-memory queue, and a writer task of the shard's own (started by
//!   [`runtime`]) writes them with glommio's DMA file I/O.
//! * Data from a peer never panics the broker: malformed input becomes a
//!   reason code, a closed socket and a counter.

pub mod auth;
pub mod config;
pub mod index;
pub mod message;
pub mod metrics;
pub mod net;
pub mod protocol;
mod ratelimit;
pub mod router;
pub mod runtime;
pub mod session;
pub mod shard;
mod shrink;
pub mod store;
