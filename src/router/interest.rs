//! The interest replica: which shards have at least one local subscriber to
//! each filter, so that a PUBLISH is forwarded once per interested shard
//! rather than once per subscriber.
//!
//! Every shard keeps a full [`InterestTable`], built on the same
//! [`SubscriptionTrie`] as the local subscription index, with shard ids as
//! subscribers and the revision of the last applied delta as the value.
//! Shared subscriptions are kept per `(group, filter)`, so the router can
//! pick one shard per group.
//!
//! Shared groups by id. A message for a shared group crosses to the member
//! shard chosen for it as `(GroupId, message)`, where the id is the one the
//! *receiving* shard's own index gave its local part of the group
//! ([`GroupId`]): the receiver finds its members with one hash lookup, and
//! neither side formats, parses or compares the group's name per message.
//! Each shard announces that id in the delta that adds its interest in the
//! group ([`InterestDelta::group`]), and every replica keeps it beside the
//! member shard. Why ids local to each shard rather than one id per group
//! that all shards agree on: nothing has to be agreed. A shard creates and
//! removes its part of a group on its own (no round trip, no owner), the
//! ids cannot collide (a stable hash of the name would need a collision
//! check, that is a string comparison, on the receiving side), and an id is
//! never reused, so a stale one is recognized. The replica already carries
//! the per-shard entry the id travels with, and orders it like any delta.
//!
//! Groups that change while messages are in flight: a shard whose last
//! local member left removes its group, and its id with it; a message that
//! was routed to that id before the removal reached the sender finds
//! nothing and is dropped and counted (as when the group was looked up by
//! name). If members join again meanwhile, the re-created group has a new
//! id, and messages sent with the old one are dropped the same way; the
//! window is one delta's trip between two cores.
//!
//! A shard's [`LocalInterest`] counts its local subscribers per filter and
//! emits an [`InterestDelta`] only when the first one arrives or the last
//! one leaves. Each origin numbers its deltas; a replica applies a delta only
//! if it is newer than the last one it applied from that origin for that
//! filter, so a stale or replayed delta cannot undo a newer one.
//!
//! Pure data: no channels and no IO here; the router carries the deltas.

pub use crate::index::GroupId;

use crate::index::{Match, SubscriptionTrie};
use crate::protocol::{TopicFilter, TopicName};
use bytestring::ByteString;
use hashbrown::HashMap;
use std::fmt;
use std::ops::{BitOr, BitOrAssign};

/// Shards a [`ShardSet`] can hold; shard ids are `0..MAX_SHARDS`.
pub const MAX_SHARDS: usize = 256;

/// The number of a shard (one per core), `0..MAX_SHARDS`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ShardId(u8);

impl ShardId {
    /// Shard number `id`.
    pub const fn new(id: u8) -> Self {
        Self(id)
    }

    /// `None` unless `index < MAX_SHARDS`.
    pub fn from_index(index: usize) -> Option<Self> {
        u8::try_from(index).ok().map(Self)
    }

    /// The shard number, to index per-shard arrays.
    pub const fn index(self) -> usize {
        self.0 as usize
    }
}

impl fmt::Display for ShardId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "shard {}", self.0)
    }
}

const WORDS: usize = MAX_SHARDS / 64;

/// A set of shards: a 256-bit bitset, `Copy`, with word-wise union.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct ShardSet([u64; WORDS]);

impl ShardSet {
    /// The empty set.
    pub const EMPTY: Self = Self([0; WORDS]);

    /// Adds `shard`; returns whether it was absent.
    pub fn insert(&mut self, shard: ShardId) -> bool {
        let (word, bit) = Self::position(shard);
        let absent = self.0[word] & bit == 0;
        self.0[word] |= bit;
        absent
    }

    /// Removes `shard`; returns whether it was present.
    pub fn remove(&mut self, shard: ShardId) -> bool {
        let (word, bit) = Self::position(shard);
        let present = self.0[word] & bit != 0;
        self.0[word] &= !bit;
        present
    }

    /// Whether `shard` is in the set.
    pub fn contains(&self, shard: ShardId) -> bool {
        let (word, bit) = Self::position(shard);
        self.0[word] & bit != 0
    }

    /// Shards in the set.
    pub fn len(&self) -> usize {
        self.0.iter().map(|word| word.count_ones() as usize).sum()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.0.iter().all(|word| *word == 0)
    }

    /// The shards in either set.
    pub fn union(self, other: Self) -> Self {
        let mut out = self;
        out |= other;
        out
    }

    /// The shards in ascending order.
    pub fn iter(&self) -> ShardSetIter {
        ShardSetIter { words: self.0, word: 0 }
    }

    fn position(shard: ShardId) -> (usize, u64) {
        (shard.index() / 64, 1 << (shard.index() % 64))
    }
}

impl BitOrAssign for ShardSet {
    fn bitor_assign(&mut self, other: Self) {
        for (mine, theirs) in self.0.iter_mut().zip(other.0) {
            *mine |= theirs;
        }
    }
}

impl BitOr for ShardSet {
    type Output = Self;

    fn bitor(self, other: Self) -> Self {
        self.union(other)
    }
}

impl FromIterator<ShardId> for ShardSet {
    fn from_iter<I: IntoIterator<Item = ShardId>>(shards: I) -> Self {
        let mut set = Self::EMPTY;
        for shard in shards {
            set.insert(shard);
        }
        set
    }
}

impl IntoIterator for ShardSet {
    type Item = ShardId;
    type IntoIter = ShardSetIter;

    fn into_iter(self) -> ShardSetIter {
        self.iter()
    }
}

impl fmt::Debug for ShardSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.iter().map(ShardId::index)).finish()
    }
}

/// The shards of a [`ShardSet`] in ascending order.
#[derive(Clone, Debug)]
pub struct ShardSetIter {
    /// The bits not yet returned.
    words: [u64; WORDS],
    /// The first word that may still have bits.
    word: usize,
}

impl Iterator for ShardSetIter {
    type Item = ShardId;

    fn next(&mut self) -> Option<ShardId> {
        while let Some(bits) = self.words.get_mut(self.word) {
            if *bits == 0 {
                self.word += 1;
                continue;
            }
            let bit = bits.trailing_zeros() as usize;
            // Clear the lowest set bit.
            *bits &= *bits - 1;
            return ShardId::from_index(self.word * 64 + bit);
        }
        None
    }
}

/// A change of one shard's interest in one filter, broadcast to every
/// replica.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InterestDelta {
    /// The shard whose local subscribers changed.
    pub origin_shard: ShardId,
    /// The filter, `$share/{group}/` prefix included for a shared group.
    pub filter: TopicFilter,
    /// `true`: the origin's first local subscriber arrived; `false`: its
    /// last one left.
    pub added: bool,
    /// The origin's sequence number for its deltas, from 1 and increasing.
    pub revision: u64,
    /// For a shared filter being added: the id the origin's subscription
    /// index gave its local group, which messages routed to that group on
    /// the origin carry. `None` for a plain filter and for a removal.
    pub group: Option<GroupId>,
}

/// What a replica holds per `(filter, shard)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Announced {
    /// The revision of the delta that added it.
    revision: u64,
    /// The shard's id for its part of a shared group ([`InterestDelta::group`]).
    group: Option<GroupId>,
}

/// The replica of `filter -> shards with at least one local subscriber`.
#[derive(Debug, Default)]
pub struct InterestTable {
    /// Filters to interested shards, each with the revision of the delta
    /// that added it (and, for a shared group, the shard's group id).
    trie: SubscriptionTrie<ShardId, Announced>,
    /// What each origin's removals left behind, to recognize stale deltas.
    origins: HashMap<ShardId, OriginState>,
}

/// Staleness bookkeeping for one origin shard.
#[derive(Debug, Default)]
struct OriginState {
    /// Deltas numbered at or below this are stale (see
    /// [`InterestTable::forget_through`]).
    floor: u64,
    /// Revision of the removal last applied per filter not currently in the
    /// trie, so that an older "added" arriving late is dropped.
    removed: HashMap<ByteString, u64>,
}

impl InterestTable {
    /// An empty replica: no shard is interested in anything.
    pub fn new() -> Self {
        Self::default()
    }

    /// `(filter, shard)` pairs in the table.
    pub fn len(&self) -> usize {
        self.trie.len()
    }

    /// Whether no shard is interested in anything.
    pub fn is_empty(&self) -> bool {
        self.trie.is_empty()
    }

    /// Distinct filters (a shared group counting as its own) with at least
    /// one interested shard.
    pub fn filter_count(&self) -> usize {
        self.trie.filter_count()
    }

    /// Applies `delta` unless it is stale: its revision is not newer than
    /// the last one applied from its origin for its filter. Returns whether
    /// it was applied.
    pub fn apply(&mut self, delta: &InterestDelta) -> bool {
        let origin = self.origins.entry(delta.origin_shard).or_default();
        if delta.revision <= origin.floor {
            return false;
        }
        let text = delta.filter.as_str();
        let last = match self.trie.get(&delta.filter, delta.origin_shard) {
            Some(announced) => Some(announced.revision),
            None => origin.removed.get(text).copied(),
        };
        if last.is_some_and(|last| delta.revision <= last) {
            return false;
        }
        if delta.added {
            if origin.removed.remove(text).is_some() {
                crate::shrink::after_remove(&mut origin.removed);
            }
            let announced = Announced { revision: delta.revision, group: delta.group };
            self.trie.insert(&delta.filter, delta.origin_shard, announced);
        } else {
            self.trie.remove(&delta.filter, delta.origin_shard);
            *origin.removed.entry_ref(text).or_default() = delta.revision;
        }
        true
    }

    /// Declares that no delta from `origin` numbered `revision` or lower is
    /// still on its way: later ones at or below it are stale, and the
    /// removal records they would have been checked against are dropped.
    /// A router whose transport delivers each origin's deltas in order calls
    /// this after every applied delta, which keeps no records at all.
    pub fn forget_through(&mut self, origin: ShardId, revision: u64) {
        let state = self.origins.entry(origin).or_default();
        state.floor = state.floor.max(revision);
        let floor = state.floor;
        state.removed.retain(|_, removed| *removed > floor);
        crate::shrink::after_remove(&mut state.removed);
    }

    /// Removal records kept to recognize stale deltas.
    pub fn removal_records(&self) -> usize {
        self.origins.values().map(|origin| origin.removed.len()).sum()
    }

    /// The shards with a plain (non-shared) subscription matching `topic`.
    pub fn matching_shards(&self, topic: &TopicName) -> ShardSet {
        let mut shards = ShardSet::EMPTY;
        self.trie.for_each_match_grouped(topic, |found| {
            if let Match::Subscriber { key, .. } = found {
                shards.insert(key);
            }
        });
        shards
    }

    /// The shard that is next to receive a message for the shared
    /// subscription `filter` (`$share/{group}/{filter}`), and that shard's
    /// id for the group; `None` when no shard has a member. The shards
    /// take turns, as in [`Self::route`].
    pub fn next_group_member(&self, filter: &TopicFilter) -> Option<(ShardId, GroupId)> {
        let group = self.trie.group(self.trie.group_id(filter)?)?;
        match group.next_member()? {
            (shard, Announced { group: Some(id), .. }) => Some((shard, *id)),
            _ => None,
        }
    }

    /// Routes `topic`: returns the shards with a matching plain
    /// subscription, and calls `f` once per matching shared group with the
    /// shard chosen to receive the message (MQTT 5.0 section 4.8.2) and
    /// that shard's id for the group. The shards with members take turns,
    /// per group: each group of the replica keeps its own round-robin
    /// cursor. Allocates nothing.
    pub fn route(&self, topic: &TopicName, mut f: impl FnMut(ShardId, GroupId)) -> ShardSet {
        let mut shards = ShardSet::EMPTY;
        self.trie.for_each_match_grouped(topic, |found| match found {
            Match::Subscriber { key, .. } => {
                shards.insert(key);
            }
            Match::Group(group) => {
                // Every delta adding a shared filter names the origin's
                // group (`LocalInterest::handle_subscribe`).
                if let Some((shard, Announced { group: Some(id), .. })) = group.next_member() {
                    f(shard, *id);
                }
            }
        });
        shards
    }
}

/// The local subscriber count per filter of one shard, and the source of
/// its deltas: it tells when the first subscriber to a filter arrives and
/// when the last one leaves.
#[derive(Debug)]
pub struct LocalInterest {
    /// The shard this is, the origin of its deltas.
    shard: ShardId,
    /// Revision of the last delta emitted; 0 before the first.
    revision: u64,
    /// Local subscriptions per filter (never zero: a filter goes with its
    /// last subscriber).
    subscribers: HashMap<TopicFilter, usize>,
}

impl LocalInterest {
    /// No local subscriber yet.
    pub fn new(shard: ShardId) -> Self {
        Self { shard, revision: 0, subscribers: HashMap::new() }
    }

    /// The shard the deltas come from.
    pub fn shard(&self) -> ShardId {
        self.shard
    }

    /// Revision of the last delta emitted (0: none yet).
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// Local subscriptions to `filter`.
    pub fn subscribers(&self, filter: &TopicFilter) -> usize {
        self.subscribers.get(filter).copied().unwrap_or(0)
    }

    /// Filters with at least one local subscriber.
    pub fn filter_count(&self) -> usize {
        self.subscribers.len()
    }

    /// A local subscription to `filter` was added (not when a re-subscribe
    /// replaced one). Returns the delta to broadcast when it is the first.
    /// `group`: for a shared filter, the id the shard's subscription index
    /// gave the group ([`InterestDelta::group`]); `None` for a plain one.
    pub fn handle_subscribe(
        &mut self,
        filter: &TopicFilter,
        group: Option<GroupId>,
    ) -> Option<InterestDelta> {
        debug_assert_eq!(filter.is_shared(), group.is_some(), "{filter:?}");
        if let Some(count) = self.subscribers.get_mut(filter) {
            *count += 1;
            return None;
        }
        let filter = filter.detached();
        self.subscribers.insert(filter.clone(), 1);
        Some(InterestDelta { group, ..self.delta(filter, true) })
    }

    /// A local subscription to `filter` was removed. Returns the delta to
    /// broadcast when it was the last; `None` too for a filter this shard
    /// has no subscriber to.
    pub fn handle_unsubscribe(&mut self, filter: &TopicFilter) -> Option<InterestDelta> {
        let count = self.subscribers.get_mut(filter)?;
        *count -= 1;
        if *count > 0 {
            return None;
        }
        let (filter, _) = self.subscribers.remove_entry(filter)?;
        crate::shrink::after_remove(&mut self.subscribers);
        Some(self.delta(filter, false))
    }

    fn delta(&mut self, filter: TopicFilter, added: bool) -> InterestDelta {
        self.revision += 1;
        InterestDelta {
            origin_shard: self.shard,
            filter,
            added,
            revision: self.revision,
            group: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(text: &str) -> TopicFilter {
        TopicFilter::new(text.to_owned()).unwrap()
    }

    fn topic(text: &str) -> TopicName {
        TopicName::new(text.to_owned()).unwrap()
    }

    fn shard(id: u8) -> ShardId {
        ShardId::new(id)
    }

    fn set(ids: &[u8]) -> ShardSet {
        ids.iter().map(|id| shard(*id)).collect()
    }

    fn delta(origin: u8, text: &str, added: bool, revision: u64) -> InterestDelta {
        InterestDelta {
            origin_shard: shard(origin),
            filter: filter(text),
            added,
            revision,
            group: None,
        }
    }

    /// `origin` joins the shared filter `text` with its group `id`.
    fn join(origin: u8, text: &str, id: u64, revision: u64) -> InterestDelta {
        InterestDelta { group: Some(GroupId::for_test(id)), ..delta(origin, text, true, revision) }
    }

    /// The `(shard, group id)` chosen for each matching group, `rounds`
    /// times, sorted; and the plain shards of the last route.
    fn routes(table: &InterestTable, name: &str, rounds: usize) -> (Vec<(u8, GroupId)>, ShardSet) {
        let mut chosen = Vec::new();
        let mut plain = ShardSet::EMPTY;
        for _ in 0..rounds {
            plain = table.route(&topic(name), |shard, id| chosen.push((shard.0, id)));
        }
        chosen.sort_unstable();
        (chosen, plain)
    }

    /// `(shard, group id)` pairs, as [`routes`] returns them.
    fn picks(pairs: &[(u8, u64)]) -> Vec<(u8, GroupId)> {
        pairs.iter().map(|&(shard, id)| (shard, GroupId::for_test(id))).collect()
    }

    #[test]
    fn shard_set_operations() {
        let mut a = ShardSet::EMPTY;
        assert!(a.is_empty());
        assert!(a.insert(shard(0)));
        assert!(!a.insert(shard(0)));
        assert!(a.insert(shard(63)));
        assert!(a.insert(shard(64)));
        assert!(a.insert(shard(255)));
        assert_eq!(a.len(), 4);
        assert!(a.contains(shard(255)));
        assert!(!a.contains(shard(1)));
        let ids: Vec<usize> = a.iter().map(ShardId::index).collect();
        assert_eq!(ids, vec![0, 63, 64, 255]);
        let b = set(&[1, 64, 200]);
        assert_eq!((a | b).len(), 6);
        assert_eq!(a.union(b), b | a);
        let mut c = a;
        c |= b;
        assert_eq!(c, a | b);
        assert!(c.remove(shard(64)));
        assert!(!c.remove(shard(64)));
        assert_eq!(c.len(), 5);
        assert_eq!(format!("{:?}", set(&[3, 1])), "{1, 3}");
        assert_eq!(ShardId::from_index(255), Some(shard(255)));
        assert_eq!(ShardId::from_index(MAX_SHARDS), None);
    }

    #[test]
    fn matching_shards_unions_plain_filters() {
        let mut table = InterestTable::new();
        assert!(table.apply(&delta(0, "dev/+/telemetry", true, 1)));
        assert!(table.apply(&delta(1, "dev/#", true, 1)));
        assert!(table.apply(&delta(2, "dev/7/telemetry", true, 1)));
        assert!(table.apply(&delta(2, "dev/7/+", true, 2)));
        assert!(table.apply(&delta(3, "#", true, 1)));
        assert!(table.apply(&delta(4, "$SYS/#", true, 1)));
        assert!(table.apply(&delta(5, "$share/g/dev/+/telemetry", true, 1)));
        assert_eq!(table.len(), 7);
        assert_eq!(table.matching_shards(&topic("dev/7/telemetry")), set(&[0, 1, 2, 3]));
        assert_eq!(table.matching_shards(&topic("dev/8/telemetry")), set(&[0, 1, 3]));
        assert_eq!(table.matching_shards(&topic("other")), set(&[3]));
        // [MQTT-4.7.2-1] `#` does not match `$SYS` topics.
        assert_eq!(table.matching_shards(&topic("$SYS/uptime")), set(&[4]));
    }

    #[test]
    fn a_shared_group_routes_to_one_member_shard_with_that_shards_id() {
        let mut table = InterestTable::new();
        // Shards 0 and 3 each have members of g, under their own ids (which
        // may coincide: an id means something only to its shard).
        table.apply(&join(0, "$share/g/jobs/+", 7, 1));
        table.apply(&join(3, "$share/g/jobs/+", 7, 1));
        table.apply(&join(1, "$share/h/jobs/#", 9, 1));
        table.apply(&delta(2, "jobs/+", true, 1));
        // Each message: one member shard per group, the shards in turn.
        let (chosen, plain) = routes(&table, "jobs/1", 4);
        assert_eq!(plain, set(&[2]));
        assert_eq!(
            chosen,
            picks(&[(0, 7), (0, 7), (1, 9), (1, 9), (1, 9), (1, 9), (3, 7), (3, 7)])
        );
        assert_eq!(table.matching_shards(&topic("jobs/1")), set(&[2]));
        assert_eq!(routes(&table, "other", 3), (vec![], ShardSet::EMPTY));
    }

    #[test]
    fn group_ids_follow_groups_made_and_unmade_on_several_shards() {
        let mut table = InterestTable::new();
        let g = "$share/g/a/#";
        table.apply(&join(0, g, 1, 1));
        table.apply(&join(1, g, 1, 1));
        assert_eq!(routes(&table, "a/b", 2).0, picks(&[(0, 1), (1, 1)]));
        // Shard 1's last member leaves: only shard 0 is chosen.
        assert!(table.apply(&delta(1, g, false, 2)));
        assert_eq!(routes(&table, "a/b", 2).0, picks(&[(0, 1), (0, 1)]));
        // Shard 1 makes the group again: a new id, which replaces the old
        // one in every route from now on.
        assert!(table.apply(&join(1, g, 2, 3)));
        assert_eq!(routes(&table, "a/b", 2).0, picks(&[(0, 1), (1, 2)]));
        // Shard 0 leaves and comes back at once (two deltas in order).
        assert!(table.apply(&delta(0, g, false, 2)));
        assert!(table.apply(&join(0, g, 5, 3)));
        assert_eq!(routes(&table, "a/b", 2).0, picks(&[(0, 5), (1, 2)]));
        // A late, older join with the old id changes nothing.
        assert!(!table.apply(&join(1, g, 1, 1)));
        assert!(!table.apply(&join(0, g, 1, 2)));
        assert_eq!(routes(&table, "a/b", 2).0, picks(&[(0, 5), (1, 2)]));
        // Everyone gone: nothing is chosen.
        assert!(table.apply(&delta(0, g, false, 4)));
        assert!(table.apply(&delta(1, g, false, 4)));
        assert_eq!(routes(&table, "a/b", 2).0, picks(&[]));
        assert!(table.is_empty());
    }

    #[test]
    fn each_group_keeps_its_own_turns() {
        // Two groups on the same topic, both with members on shards 0 and
        // 1: each alternates on its own (one cursor for all groups would
        // send every message of one group to the same shard).
        let mut table = InterestTable::new();
        for (origin, revision) in [(0, 1), (1, 1)] {
            table.apply(&join(origin, "$share/g/t", 1, revision));
            table.apply(&join(origin, "$share/h/t", 2, revision + 1));
        }
        let (chosen, _) = routes(&table, "t", 4);
        assert_eq!(
            chosen,
            picks(&[(0, 1), (0, 1), (0, 2), (0, 2), (1, 1), (1, 1), (1, 2), (1, 2)]),
            "each group's messages split evenly over the shards"
        );
    }

    #[test]
    fn stale_deltas_are_dropped() {
        let mut table = InterestTable::new();
        assert!(table.apply(&delta(1, "a/+", true, 5)));
        // A replay and an older delta change nothing.
        assert!(!table.apply(&delta(1, "a/+", true, 5)));
        assert!(!table.apply(&delta(1, "a/+", false, 4)));
        assert_eq!(table.matching_shards(&topic("a/x")), set(&[1]));
        // Revisions are per origin: shard 2 has its own numbering.
        assert!(table.apply(&delta(2, "a/+", true, 1)));
        assert!(table.apply(&delta(1, "a/+", false, 6)));
        assert_eq!(table.matching_shards(&topic("a/x")), set(&[2]));
        // An "added" older than the removal arrives late: dropped.
        assert!(!table.apply(&delta(1, "a/+", true, 3)));
        assert_eq!(table.matching_shards(&topic("a/x")), set(&[2]));
        // Per filter: an older revision on another filter still applies.
        assert!(table.apply(&delta(1, "b", true, 2)));
        assert_eq!(table.matching_shards(&topic("b")), set(&[1]));
        // A removal arriving before its addition wins over it.
        assert!(table.apply(&delta(3, "c", false, 9)));
        assert!(!table.apply(&delta(3, "c", true, 8)));
        assert!(table.matching_shards(&topic("c")).is_empty());
        assert!(table.apply(&delta(3, "c", true, 10)));
        assert_eq!(table.matching_shards(&topic("c")), set(&[3]));
    }

    #[test]
    fn forgetting_drops_removal_records() {
        let mut table = InterestTable::new();
        table.apply(&delta(1, "a", true, 1));
        table.apply(&delta(1, "a", false, 2));
        table.apply(&delta(1, "b", false, 3));
        table.apply(&delta(2, "a", false, 1));
        assert_eq!(table.removal_records(), 3);
        table.forget_through(shard(1), 2);
        assert_eq!(table.removal_records(), 2);
        // Below the floor everything from that origin is stale.
        assert!(!table.apply(&delta(1, "z", true, 2)));
        assert!(!table.apply(&delta(1, "b", true, 3)));
        assert!(table.apply(&delta(1, "b", true, 4)));
        table.forget_through(shard(1), 1);
        assert!(!table.apply(&delta(1, "y", true, 2)), "the floor never goes down");
        table.forget_through(shard(2), 1);
        assert_eq!(table.removal_records(), 0);
        assert_eq!(table.len(), 1);
        assert_eq!(table.matching_shards(&topic("b")), set(&[1]));
    }

    #[test]
    fn local_interest_emits_on_first_and_last() {
        let mut local = LocalInterest::new(shard(4));
        let f = filter("dev/+/telemetry");
        let first = local.handle_subscribe(&f, None).unwrap();
        assert_eq!(first, delta(4, "dev/+/telemetry", true, 1));
        assert_eq!(local.handle_subscribe(&f, None), None);
        assert_eq!(local.subscribers(&f), 2);
        let group = filter("$share/g/dev/+/telemetry");
        let shared = local.handle_subscribe(&group, Some(GroupId::for_test(3))).unwrap();
        assert_eq!(shared, join(4, "$share/g/dev/+/telemetry", 3, 2));
        assert_eq!(local.filter_count(), 2);
        assert_eq!(local.handle_unsubscribe(&f), None);
        let last = local.handle_unsubscribe(&f).unwrap();
        assert_eq!(last, delta(4, "dev/+/telemetry", false, 3));
        assert_eq!(local.handle_unsubscribe(&f), None);
        assert_eq!(local.handle_unsubscribe(&filter("never")), None);
        assert_eq!(local.subscribers(&f), 0);
        assert_eq!(local.revision(), 3);
        assert_eq!(local.shard(), shard(4));

        // Its deltas drive a replica.
        let mut table = InterestTable::new();
        assert!(table.apply(&first));
        assert!(table.apply(&shared));
        assert!(table.apply(&last));
        assert!(table.matching_shards(&topic("dev/1/telemetry")).is_empty());
        assert_eq!(table.filter_count(), 1);
        assert_eq!(routes(&table, "dev/1/telemetry", 1).0, picks(&[(4, 3)]));
        // The last member of the group leaves: the removal names no group.
        let gone = local.handle_unsubscribe(&group).unwrap();
        assert_eq!(gone, delta(4, "$share/g/dev/+/telemetry", false, 4));
        assert!(table.apply(&gone));
        assert!(table.is_empty());
    }
}
