//! Subscribes and unsubscribes too large to index at once: the filters of
//! one SUBSCRIBE or UNSUBSCRIBE not yet in the shard's index, taken
//! [`INDEX_WORK_PER_TURN`] at a time.

use crate::protocol::TopicFilter;
use crate::session::{AckToken, SubscriptionGrant};

/// Filters of one session added to or removed from the index per turn: a
/// SUBSCRIBE of 100,000 filters is indexed over many turns, the connection
/// task yielding between them, so the shard's other connections are served
/// meanwhile (about a millisecond per turn).
pub const INDEX_WORK_PER_TURN: usize = 256;

/// An index change a session asked for, not done yet.
#[derive(Debug)]
pub(super) struct IndexWork {
    pub(super) filters: IndexFilters,
    /// Releases the SUBACK or UNSUBACK once done.
    pub(super) ack: AckToken,
    /// The latest interest revision this change announced: the SUBACK
    /// waits until every peer has applied it (0: none).
    pub(super) revision: u64,
}

/// The filters of an [`IndexWork`] still to add or remove.
#[derive(Debug)]
pub(super) enum IndexFilters {
    Subscribe(smallvec::IntoIter<[SubscriptionGrant; 1]>),
    Unsubscribe(smallvec::IntoIter<[TopicFilter; 1]>),
}

impl IndexWork {
    /// Filters left.
    pub(super) fn len(&self) -> usize {
        match &self.filters {
            IndexFilters::Subscribe(grants) => grants.len(),
            IndexFilters::Unsubscribe(filters) => filters.len(),
        }
    }
}
