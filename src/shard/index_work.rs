//! Subscribes and unsubscribes too large to index at once: the filters of
//! one SUBSCRIBE or UNSUBSCRIBE not yet in the shard's index, taken
//! [`INDEX_WORK_PER_TURN`] at a time.

use crate::protocol::TopicFilter;
use crate::session::SubscriptionGrant;

/// Filters of one session added to or removed from the index per turn: a
/// SUBSCRIBE of 100,000 filters is indexed over many turns, the connection
/// task yielding between them, so the shard's other connections are served
/// meanwhile (about a millisecond per turn).
pub const INDEX_WORK_PER_TURN: usize = 256;

/// Index changes a session asked for that are not done yet.
#[derive(Debug)]
pub(super) enum IndexWork {
    Subscribe(smallvec::IntoIter<[SubscriptionGrant; 1]>),
    Unsubscribe(smallvec::IntoIter<[TopicFilter; 1]>),
}

impl IndexWork {
    /// Filters left.
    pub(super) fn len(&self) -> usize {
        match self {
            Self::Subscribe(grants) => grants.len(),
            Self::Unsubscribe(filters) => filters.len(),
        }
    }
}
