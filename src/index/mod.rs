//! The subscription index, a leaf of the crate: topic filters, level by
//! level, to whatever subscribes to them. `shard` keeps its sessions'
//! subscriptions and its retained messages in it, `router` its replica of
//! which shards are interested in what; neither depends on the other
//! through it.
//!
//! * [`trie`]: the [`SubscriptionTrie`] and its level map, which the
//!   retained store also walks.

#[cfg(test)]
pub(crate) mod strategies;
pub mod trie;

pub use trie::{GroupId, Match, SubscriptionTrie};
