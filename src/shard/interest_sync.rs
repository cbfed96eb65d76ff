//! This shard's side of the interest replica: its local subscriber counts
//! and the deltas they emit, its copy of every shard's interest, the
//! acknowledgements of its deltas by the peers, and the sessions whose
//! SUBACK waits for them.

use super::slots::SessionKey;
use crate::protocol::TopicFilter;
use crate::router::cluster::ClusterLink;
use crate::router::interest::{GroupId, InterestDelta, InterestTable, LocalInterest};
use crate::router::{Outbox, ShardId, ShardMessage};
use crate::session::AckToken;
use std::collections::VecDeque;
use std::rc::Rc;

/// The interest state of one shard.
#[derive(Debug)]
pub(super) struct InterestSync {
    me: ShardId,
    nr_shards: usize,
    local: LocalInterest,
    replica: InterestTable,
    /// The latest of this shard's interest revisions each peer applied.
    acked: Vec<u64>,
    /// SUBACK barriers waiting for an interest acknowledgement, with the
    /// revision each waits for, nearly in increasing revision order (a
    /// subscribe whose last filters announced nothing waits for an older
    /// revision than one queued before it, and is released with it: late,
    /// never early). An acknowledgement releases a prefix: linear in the
    /// subscribes, however many filters they carry.
    waiters: VecDeque<(u64, SessionKey, AckToken)>,
    /// In a cluster: the NATS bridge, which gets every delta too, and the
    /// latest revision it applied (its subscriptions made or removed).
    cluster: Option<(Rc<ClusterLink>, u64)>,
}

impl InterestSync {
    pub(super) fn new(me: ShardId, nr_shards: usize) -> Self {
        Self {
            me,
            nr_shards,
            local: LocalInterest::new(me),
            replica: InterestTable::new(),
            acked: vec![0; nr_shards],
            waiters: VecDeque::new(),
            cluster: None,
        }
    }

    /// From now on, every delta goes to the NATS bridge too, and a SUBACK
    /// waits for its acknowledgement as well.
    pub(super) fn set_cluster(&mut self, link: Rc<ClusterLink>) {
        self.cluster = Some((link, self.local.revision()));
    }

    /// Every shard's interest, as this shard knows it.
    pub(super) fn replica(&self) -> &InterestTable {
        &self.replica
    }

    /// A local subscription to `filter` was added (`group`: the index's id
    /// for a shared filter's group). Returns the revision the peers must
    /// acknowledge before the SUBACK, when it was the first (the delta is
    /// sent).
    pub(super) fn handle_subscribe(
        &mut self,
        filter: &TopicFilter,
        group: Option<GroupId>,
        outbox: &Outbox,
    ) -> Option<u64> {
        let delta = self.local.handle_subscribe(filter, group)?;
        Some(self.announce(delta, outbox))
    }

    /// A local subscription to `filter` was removed; the last one
    /// withdraws the shard's interest.
    pub(super) fn handle_unsubscribe(&mut self, filter: &TopicFilter, outbox: &Outbox) {
        if let Some(delta) = self.local.handle_unsubscribe(filter) {
            self.announce(delta, outbox);
        }
    }

    /// Applies an interest change of this shard to its own replica and
    /// sends it to every peer; returns its revision.
    fn announce(&mut self, delta: InterestDelta, outbox: &Outbox) -> u64 {
        self.replica.apply(&delta);
        let revision = delta.revision;
        // Applied here in the order it was made: nothing older from this
        // shard can still arrive, so the replica keeps no removal record
        // of it (which would hold the filter's text for good).
        self.replica.forget_through(self.me, revision);
        let peers = (0..self.nr_shards).filter_map(ShardId::from_index);
        for peer in peers.filter(|&peer| peer != self.me) {
            outbox.push(peer, ShardMessage::Interest(delta.clone()));
        }
        if let Some((bridge, _)) = &self.cluster {
            bridge.handle_interest(&delta);
        }
        revision
    }

    /// `key`'s barrier `ack` waits until every peer acknowledged
    /// `revision`.
    pub(super) fn wait_for(&mut self, revision: u64, key: SessionKey, ack: AckToken) {
        self.waiters.push_back((revision, key, ack));
    }

    /// The latest interest revision of this shard that every peer applied.
    /// The revision of this shard's latest interest change.
    pub(super) fn revision(&self) -> u64 {
        self.local.revision()
    }

    pub(super) fn acked_by_all(&self) -> u64 {
        (0..self.nr_shards)
            .filter(|&peer| peer != self.me.index())
            .map(|peer| self.acked[peer])
            .chain(self.cluster.as_ref().map(|&(_, acked)| acked))
            .min()
            .unwrap_or(u64::MAX)
    }

    /// A peer's interest change: applied and acknowledged.
    pub(super) fn handle_delta(&mut self, from: ShardId, delta: &InterestDelta, outbox: &Outbox) {
        let revision = delta.revision;
        self.replica.apply(delta);
        // Channels deliver each origin's deltas in order, so nothing older
        // can still arrive.
        self.replica.forget_through(from, revision);
        outbox.push(from, ShardMessage::InterestAck { revision });
    }

    /// A peer applied this shard's revisions up to `revision`: calls
    /// `release` with the barriers whose revision every peer has now
    /// applied.
    pub(super) fn handle_ack(
        &mut self,
        from: ShardId,
        revision: u64,
        release: impl FnMut(SessionKey, AckToken),
    ) {
        let acked = &mut self.acked[from.index()];
        *acked = (*acked).max(revision);
        self.release(release);
    }

    /// The NATS bridge applied this shard's revisions up to `revision`:
    /// as [`Self::handle_ack`].
    pub(super) fn handle_bridge_ack(
        &mut self,
        revision: u64,
        release: impl FnMut(SessionKey, AckToken),
    ) {
        if let Some((_, acked)) = &mut self.cluster {
            *acked = (*acked).max(revision);
        }
        self.release(release);
    }

    /// Calls `release` with the barriers whose revision every peer (and
    /// the bridge) has applied.
    fn release(&mut self, mut release: impl FnMut(SessionKey, AckToken)) {
        let acked_by_all = self.acked_by_all();
        while let Some(&(revision, key, ack)) = self.waiters.front() {
            if revision > acked_by_all {
                break;
            }
            self.waiters.pop_front();
            release(key, ack);
        }
    }

    /// Entries waiting for interest acknowledgements.
    #[cfg(test)]
    pub(super) fn waiters(&self) -> usize {
        self.waiters.len()
    }
}
