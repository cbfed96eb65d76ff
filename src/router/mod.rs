//! The only cross-core code: mesh wiring, the interest replica, session
//! placement and socket hand-off. Only this module imports
//! `glommio::channels`.
//!
//! * [`interest`]: which shards have subscribers to which filters, and the
//!   deltas that keep every shard's replica in step.

pub mod interest;
