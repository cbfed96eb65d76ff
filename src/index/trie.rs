//! The subscription index: topic filters, level by level, to the
//! subscriptions that name them (MQTT 3.1.1 and 5.0 section 4.7).
//!
//! [`SubscriptionTrie`] owns the mapping `filter -> subscriber -> value` of
//! one shard (and, with shard ids as subscribers, the interest replica of
//! [`crate::router::interest`]). It is a plain synchronous data structure: no
//! IO, no clock, no locks.
//!
//! Layout. A node stands for a filter prefix. Its literal next levels live in
//! a `LevelMap` (a short vector, a hash map when wide); the `+` level is a
//! separate child, so matching never hashes a wildcard; subscriptions whose
//! filter ends at the node and those whose filter is the node's prefix
//! followed by `/#` sit in two separate slots. A shared subscription
//! `$share/{group}/{filter}` (MQTT 5.0 section 4.8.2) is stored in the slot
//! of `{filter}` under its group, and matches as one group.
//!
//! Matching walks the levels of the topic with an explicit stack that lives
//! on the call stack (at most one pending branch per level: it spills to the
//! heap only for topics deeper than [`INLINE_DEPTH`] levels), so a match
//! allocates nothing. Every walk, the pruning on removal and dropping are
//! iterative: a filter may have 32,768 levels, and recursion that deep would
//! overflow the executor's stack.
//!
//! Round robin. A shared group delivers each message to one member (MQTT 5.0
//! section 4.8.2); the group keeps its cursor in a [`Cell`], so matching
//! takes `&self`. The trie is therefore `Send` but not `Sync`, which is what
//! a structure owned by one shard needs.
//!
//! Group ids. Each shared group gets a [`GroupId`] when its first member
//! subscribes, and keeps it until its last member leaves. The groups live
//! in a map by id beside the nodes (a node names its groups by id), so a
//! group can be found again in O(1) from its id alone: a shard tells its
//! peers the ids of its groups, and a message routed to one of them comes
//! back with the id instead of the group's name (see
//! [`crate::router::interest`]).

use crate::protocol::{TopicFilter, TopicName};
use bytestring::ByteString;
use hashbrown::hash_map::{self, EntryRef, HashMap};
use smallvec::SmallVec;
use std::cell::Cell;
use std::fmt;
use std::hash::Hash;
use std::mem;

/// Frames the match walk keeps on the call stack before spilling to the
/// heap. The walk holds at most one pending frame per topic level, so
/// ordinary topics never spill.
pub const INLINE_DEPTH: usize = 32;

/// A subscription index from topic filters to subscribers.
///
/// `K` identifies a subscriber (a session slot, a shard id): at most one
/// subscription per `(filter, K)`, and subscribing again replaces the value
/// [MQTT-3.8.4-3]. `V` is what the subscription carries (options,
/// subscription identifier).
pub struct SubscriptionTrie<K, V> {
    /// The node of the empty prefix; never pruned.
    root: Node<K, V>,
    /// Subscriptions, shared group members included.
    len: usize,
    /// Distinct filters with at least one subscription; a shared group
    /// `$share/{group}/{filter}` counts apart from the plain `{filter}`.
    filters: usize,
    /// Nodes below the root, to show that removal returns memory.
    nodes: usize,
    /// Every shared group, by the id its node names it with.
    groups: HashMap<GroupId, SharedGroup<K, V>>,
    /// The last group id given out: ids are never reused.
    last_group: u64,
}

/// Names a shared group of one [`SubscriptionTrie`] for as long as the
/// group has members: given out when its first member subscribes, from a
/// 64-bit counter of the trie, so never reused. An id that outlived its
/// group finds nothing (not some later group), and the same group
/// re-created after its last member left has a new id.
///
/// Ids of different tries are unrelated: an id means something only to the
/// trie that gave it out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GroupId(u64);

impl GroupId {
    /// An id made up by a test, as if a trie had given it out.
    #[cfg(test)]
    pub(crate) const fn for_test(raw: u64) -> Self {
        Self(raw)
    }
}

/// What [`SubscriptionTrie::for_each_match_grouped`] reports for a topic.
#[derive(Debug)]
pub enum Match<'a, K, V> {
    /// A plain (non-shared) subscription that matches.
    Subscriber {
        /// Who subscribed.
        key: K,
        /// What the subscription carries.
        value: &'a V,
    },
    /// A shared subscription group whose filter matches: deliver to one of
    /// its members (MQTT 5.0 section 4.8.2).
    Group(&'a SharedGroup<K, V>),
}

/// The members of one shared subscription `$share/{share_name}/{filter}`.
pub struct SharedGroup<K, V> {
    /// Its id in the trie.
    id: GroupId,
    /// `$share/{share_name}/{filter}`, copied so that the trie never keeps
    /// a packet's read buffer alive.
    text: ByteString,
    /// Byte offset of `{filter}` in `text`.
    filter_start: usize,
    /// Never empty: a group is removed with its last member.
    members: Entries<K, V>,
    /// Index of the member the next message goes to (modulo the length,
    /// which may have shrunk since).
    cursor: Cell<usize>,
}

impl<K: Copy + Eq + Hash, V> Default for SubscriptionTrie<K, V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K: Copy + Eq + Hash, V> SubscriptionTrie<K, V> {
    /// An empty index.
    pub fn new() -> Self {
        Self {
            root: Node::default(),
            len: 0,
            filters: 0,
            nodes: 0,
            groups: HashMap::new(),
            last_group: 0,
        }
    }

    /// Subscriptions in the index (each shared group member counts).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the index holds no subscription.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Shared groups with at least one member.
    pub fn group_count(&self) -> usize {
        self.groups.len()
    }

    /// Distinct filters with at least one subscription. A shared group
    /// `$share/{group}/{filter}` counts as a filter of its own.
    pub fn filter_count(&self) -> usize {
        self.filters
    }

    /// Trie nodes below the root; zero once every subscription is removed.
    pub fn node_count(&self) -> usize {
        self.nodes
    }

    /// Subscribes `key` to `filter`. Returns the value it replaces when
    /// `key` was already subscribed to the same filter: a re-subscribe
    /// replaces the subscription [MQTT-3.8.4-3].
    pub fn insert(&mut self, filter: &TopicFilter, key: K, value: V) -> Option<V> {
        let (path, slot) = split_filter(filter.filter());
        let mut node = &mut self.root;
        for level in levels(path) {
            let (child, created) = node.child_or_insert(level);
            self.nodes += usize::from(created);
            node = child;
        }
        let subscribers = node.slot_mut(slot).get_or_insert_with(Box::default);
        let previous = match filter.share_name() {
            None => {
                if subscribers.plain.is_empty() {
                    self.filters += 1;
                }
                subscribers.plain.insert(key, value)
            }
            Some(name) => {
                let last_group = &mut self.last_group;
                let (id, created) = subscribers.groups.get_or_insert_with(name, || {
                    *last_group += 1;
                    GroupId(*last_group)
                });
                let id = *id;
                self.filters += usize::from(created);
                let group = self.groups.entry(id).or_insert_with(|| SharedGroup::new(filter, id));
                group.members.insert(key, value)
            }
        };
        if previous.is_none() {
            self.len += 1;
        }
        previous
    }

    /// Unsubscribes `key` from `filter`, returning the value of the removed
    /// subscription. Nodes left empty are pruned.
    pub fn remove(&mut self, filter: &TopicFilter, key: K) -> Option<V> {
        let (path, slot) = split_filter(filter.filter());
        let mut node = &mut self.root;
        let mut depth = 0;
        for level in levels(path) {
            node = node.child_mut(level)?;
            depth += 1;
        }
        let slot = node.slot_mut(slot);
        let subscribers = slot.as_deref_mut()?;
        let removed = match filter.share_name() {
            None => {
                let value = subscribers.plain.remove(key)?;
                if subscribers.plain.is_empty() {
                    self.filters -= 1;
                }
                value
            }
            Some(name) => {
                let id = *subscribers.groups.get(name)?;
                let group = self.groups.get_mut(&id)?;
                let value = group.members.remove(key)?;
                if group.members.is_empty() {
                    subscribers.groups.remove(name);
                    self.groups.remove(&id);
                    if self.groups.is_empty() {
                        // `after_remove` leaves a few buckets to a small
                        // map; a trie without groups holds none.
                        self.groups = HashMap::new();
                    } else {
                        crate::shrink::after_remove(&mut self.groups);
                    }
                    self.filters -= 1;
                }
                value
            }
        };
        self.len -= 1;
        if subscribers.is_empty() {
            *slot = None;
        }
        if depth > 0 && node.is_empty() {
            self.prune(path.unwrap_or_default(), depth);
        }
        Some(removed)
    }

    /// The value of `key`'s subscription to `filter`.
    pub fn get(&self, filter: &TopicFilter, key: K) -> Option<&V> {
        let subscribers = self.subscribers(filter)?;
        match filter.share_name() {
            None => subscribers.plain.get(key),
            Some(name) => self.groups.get(subscribers.groups.get(name)?)?.members.get(key),
        }
    }

    /// The id of the shared group `filter` (`$share/{name}/{filter}`);
    /// `None` for a plain filter or a group without members.
    pub fn group_id(&self, filter: &TopicFilter) -> Option<GroupId> {
        let name = filter.share_name()?;
        self.subscribers(filter)?.groups.get(name).copied()
    }

    /// The shared group `id`, while it has members: a hash lookup, no walk.
    pub fn group(&self, id: GroupId) -> Option<&SharedGroup<K, V>> {
        self.groups.get(&id)
    }

    /// The subscriptions of the slot `filter` names, if it has any.
    fn subscribers(&self, filter: &TopicFilter) -> Option<&Subscribers<K, V>> {
        let (path, slot) = split_filter(filter.filter());
        let mut node = &self.root;
        for level in levels(path) {
            node = node.child(level)?;
        }
        node.slot(slot).as_deref()
    }

    /// Calls `f` once for every plain subscription whose filter matches
    /// `topic`, and once per matching shared group with one member chosen
    /// round robin (MQTT 5.0 section 4.8.2). A client with several matching
    /// subscriptions is visited once per subscription (v5 delivers one copy
    /// per subscription, with its own options and identifier).
    pub fn for_each_match(&self, topic: &TopicName, mut f: impl FnMut(K, &V)) {
        self.walk(topic.as_str(), |subscribers| {
            for (key, value) in subscribers.plain.iter() {
                f(*key, value);
            }
            for group in subscribers.groups.values().filter_map(|id| self.groups.get(id)) {
                if let Some((key, value)) = group.next_member() {
                    f(key, value);
                }
            }
        });
    }

    /// Like [`Self::for_each_match`], but hands over each matching shared
    /// group whole instead of choosing a member, and does not move any
    /// round-robin cursor.
    pub fn for_each_match_grouped(&self, topic: &TopicName, mut f: impl FnMut(Match<'_, K, V>)) {
        self.walk(topic.as_str(), |subscribers| {
            for (key, value) in subscribers.plain.iter() {
                f(Match::Subscriber { key: *key, value });
            }
            for group in subscribers.groups.values().filter_map(|id| self.groups.get(id)) {
                f(Match::Group(group));
            }
        });
    }

    /// Visits every slot whose filter matches `topic`, without allocating.
    fn walk<'t>(&'t self, topic: &'t str, mut visit: impl FnMut(&'t Subscribers<K, V>)) {
        // [MQTT-4.7.2-1] A filter starting with a wildcard does not match a
        // topic starting with `$`: skip the root's `#` and `+`.
        let system = topic.starts_with('$');
        let root = &self.root;
        if !system {
            if let Some(all) = &root.multi {
                visit(all);
            }
        }
        let mut stack: WalkStack<'_, K, V> = SmallVec::new();
        let (level, rest) = split_level(topic);
        if let Some(child) = root.children.get(level) {
            stack.push((child, rest));
        }
        if !system {
            if let Some(plus) = &root.plus {
                stack.push((plus, rest));
            }
        }
        while let Some((node, rest)) = stack.pop() {
            // `{prefix}/#` matches `{prefix}` itself and everything below
            // (MQTT 3.1.1 section 4.7.1.2, non-normative: "sport/#" also
            // matches "sport").
            if let Some(below) = &node.multi {
                visit(below);
            }
            match rest {
                None => {
                    if let Some(here) = &node.exact {
                        visit(here);
                    }
                }
                Some(rest) => {
                    let (level, rest) = split_level(rest);
                    if let Some(child) = node.children.get(level) {
                        stack.push((child, rest));
                    }
                    // `+` matches exactly one level (MQTT 3.1.1 section 4.7.1.3).
                    if let Some(plus) = &node.plus {
                        stack.push((plus, rest));
                    }
                }
            }
        }
    }

    /// Cuts off the chain of nodes on `path` (of `depth` levels) that a
    /// removal left empty: everything below the deepest node that still
    /// holds something besides the next node of the path.
    fn prune(&mut self, path: &str, depth: usize) {
        let mut keep = 0;
        let mut node = &self.root;
        for (at, level) in path.split('/').enumerate() {
            if at > 0 && node.has_more_than(1) {
                keep = at;
            }
            match node.child(level) {
                Some(child) => node = child,
                None => return,
            }
        }
        let mut node = &mut self.root;
        for (at, level) in path.split('/').enumerate() {
            if at == keep {
                if node.take_child(level).is_some() {
                    self.nodes -= depth - keep;
                }
                return;
            }
            match node.child_mut(level) {
                Some(child) => node = child,
                None => return,
            }
        }
    }
}

impl<K, V> fmt::Debug for SubscriptionTrie<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SubscriptionTrie")
            .field("len", &self.len)
            .field("filters", &self.filters)
            .field("nodes", &self.nodes)
            .field("groups", &self.groups.len())
            .finish_non_exhaustive()
    }
}

impl<K: Copy + Eq + Hash, V> SharedGroup<K, V> {
    fn new(filter: &TopicFilter, id: GroupId) -> Self {
        let text = ByteString::from(filter.as_str());
        let filter_start = text.len() - filter.filter().len();
        Self { id, text, filter_start, members: Entries::new(), cursor: Cell::new(0) }
    }

    /// Its id in the trie, for [`SubscriptionTrie::group`].
    pub fn id(&self) -> GroupId {
        self.id
    }

    /// The share name: `{share_name}` of `$share/{share_name}/{filter}`.
    pub fn share_name(&self) -> &str {
        // "$share/" is 7 bytes; the name ends before the '/' at filter_start - 1.
        &self.text["$share/".len()..self.filter_start - 1]
    }

    /// The whole shared subscription, `$share/{share_name}/{filter}`.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The filter topics are matched against (without the share prefix).
    pub fn filter(&self) -> &str {
        &self.text[self.filter_start..]
    }

    /// Members of the group.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Always false while the group is in the trie.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Every member with its subscription value.
    pub fn members(&self) -> impl Iterator<Item = (K, &V)> + '_ {
        self.members.iter().map(|(key, value)| (*key, value))
    }

    /// The member the next message goes to, moving the round-robin cursor.
    pub fn next_member(&self) -> Option<(K, &V)> {
        let len = self.members.len();
        if len == 0 {
            return None;
        }
        let at = self.cursor.get() % len;
        self.cursor.set(at + 1);
        self.members.items.get(at).map(|(key, value)| (*key, value))
    }
}

impl<K, V> fmt::Debug for SharedGroup<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedGroup")
            .field("id", &self.id)
            .field("filter", &&*self.text)
            .field("members", &self.members.items.len())
            .finish_non_exhaustive()
    }
}

/// The pending steps of a match walk: a node and the topic levels left to
/// match below it (`None`: the whole topic is consumed at that node).
type WalkStack<'t, K, V> = SmallVec<[(&'t Node<K, V>, Option<&'t str>); INLINE_DEPTH]>;

/// Which slot of its node a filter names.
#[derive(Clone, Copy)]
enum Slot {
    /// The filter ends at the node.
    Exact,
    /// The filter is the node's prefix followed by `/#` (or is `#`).
    Multi,
}

/// The node path of a filter (`None` for the root) and its slot there.
fn split_filter(filter: &str) -> (Option<&str>, Slot) {
    if filter == "#" {
        (None, Slot::Multi)
    } else if let Some(prefix) = filter.strip_suffix("/#") {
        (Some(prefix), Slot::Multi)
    } else {
        (Some(filter), Slot::Exact)
    }
}

/// The levels of a node path.
fn levels(path: Option<&str>) -> impl Iterator<Item = &str> {
    path.into_iter().flat_map(|path| path.split('/'))
}

/// Splits the first level off `topic`: `("a", Some("b/c"))` for `a/b/c`,
/// `("c", None)` for `c`.
pub(crate) fn split_level(topic: &str) -> (&str, Option<&str>) {
    match topic.split_once('/') {
        Some((level, rest)) => (level, Some(rest)),
        None => (topic, None),
    }
}

struct Node<K, V> {
    /// Children by literal level.
    children: LevelMap<Node<K, V>>,
    /// The child for a `+` level.
    plus: Option<Box<Node<K, V>>>,
    /// Subscriptions whose filter ends here; `None` rather than empty.
    exact: Option<Box<Subscribers<K, V>>>,
    /// Subscriptions whose filter is this prefix plus `/#`; `None` rather
    /// than empty.
    multi: Option<Box<Subscribers<K, V>>>,
}

impl<K, V> Default for Node<K, V> {
    fn default() -> Self {
        Self { children: LevelMap::new(), plus: None, exact: None, multi: None }
    }
}

impl<K, V> Node<K, V> {
    fn child(&self, level: &str) -> Option<&Self> {
        if level == "+" {
            self.plus.as_deref()
        } else {
            self.children.get(level)
        }
    }

    fn child_mut(&mut self, level: &str) -> Option<&mut Self> {
        if level == "+" {
            self.plus.as_deref_mut()
        } else {
            self.children.get_mut(level)
        }
    }

    /// The child for `level` and whether it had to be created.
    fn child_or_insert(&mut self, level: &str) -> (&mut Self, bool) {
        if level == "+" {
            let created = self.plus.is_none();
            (self.plus.get_or_insert_with(Box::default), created)
        } else {
            self.children.get_or_insert_with(level, Self::default)
        }
    }

    fn take_child(&mut self, level: &str) -> Option<Self> {
        if level == "+" {
            self.plus.take().map(|plus| *plus)
        } else {
            self.children.remove(level)
        }
    }

    fn slot(&self, slot: Slot) -> &Option<Box<Subscribers<K, V>>> {
        match slot {
            Slot::Exact => &self.exact,
            Slot::Multi => &self.multi,
        }
    }

    fn slot_mut(&mut self, slot: Slot) -> &mut Option<Box<Subscribers<K, V>>> {
        match slot {
            Slot::Exact => &mut self.exact,
            Slot::Multi => &mut self.multi,
        }
    }

    /// Whether the node holds more than `n` things (children or slots).
    fn has_more_than(&self, n: usize) -> bool {
        let parts = self.children.len()
            + usize::from(self.plus.is_some())
            + usize::from(self.exact.is_some())
            + usize::from(self.multi.is_some());
        parts > n
    }

    fn is_empty(&self) -> bool {
        !self.has_more_than(0)
    }

    fn detach_children(&mut self, out: &mut Vec<Self>) {
        self.children.drain_into(out);
        if let Some(plus) = self.plus.take() {
            out.push(*plus);
        }
    }
}

impl<K, V> Drop for Node<K, V> {
    /// Iterative: dropping a chain of 32,768 nodes recursively would
    /// overflow the stack.
    fn drop(&mut self) {
        if self.children.is_empty() && self.plus.is_none() {
            return;
        }
        let mut pending = Vec::new();
        self.detach_children(&mut pending);
        while let Some(mut node) = pending.pop() {
            node.detach_children(&mut pending);
        }
    }
}

/// The subscriptions of one slot: plain ones and shared groups by name.
struct Subscribers<K, V> {
    /// Non-shared subscriptions, one per subscriber.
    plain: Entries<K, V>,
    /// The ids of the shared groups (in [`SubscriptionTrie::groups`]) by
    /// share name; a group is removed with its last member.
    groups: LevelMap<GroupId>,
}

impl<K, V> Default for Subscribers<K, V> {
    fn default() -> Self {
        Self { plain: Entries::new(), groups: LevelMap::new() }
    }
}

impl<K, V> Subscribers<K, V> {
    fn is_empty(&self) -> bool {
        self.plain.items.is_empty() && self.groups.is_empty()
    }
}

/// Build a key index once a slot has more subscribers than this.
const INDEX_ABOVE: usize = 16;
/// Drop the key index once a slot is down to this many subscribers.
const UNINDEX_AT: usize = 8;

/// Subscriptions keyed by subscriber. A vector, so that matching walks
/// contiguous memory and the common single subscriber needs no allocation;
/// plus a key index once it is long, so that subscribing and unsubscribing
/// on a filter with many subscribers stay O(1).
struct Entries<K, V> {
    /// The subscriptions, in no particular order (removal swaps the last
    /// one into the gap).
    items: SmallVec<[(K, V); 1]>,
    /// Position of each key in `items`, while `items` is long.
    index: Option<Box<HashMap<K, usize>>>,
}

impl<K, V> Entries<K, V> {
    fn new() -> Self {
        Self { items: SmallVec::new(), index: None }
    }

    fn len(&self) -> usize {
        self.items.len()
    }

    fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    fn iter(&self) -> std::slice::Iter<'_, (K, V)> {
        self.items.iter()
    }
}

impl<K: Copy + Eq + Hash, V> Entries<K, V> {
    fn position(&self, key: K) -> Option<usize> {
        match &self.index {
            Some(index) => index.get(&key).copied(),
            None => self.items.iter().position(|(k, _)| *k == key),
        }
    }

    fn get(&self, key: K) -> Option<&V> {
        self.position(key).and_then(|at| self.items.get(at)).map(|(_, value)| value)
    }

    fn insert(&mut self, key: K, value: V) -> Option<V> {
        if let Some(entry) = self.position(key).and_then(|at| self.items.get_mut(at)) {
            return Some(mem::replace(&mut entry.1, value));
        }
        self.items.push((key, value));
        match &mut self.index {
            Some(index) => {
                index.insert(key, self.items.len() - 1);
            }
            None if self.items.len() > INDEX_ABOVE => {
                let index = self.items.iter().enumerate().map(|(at, (k, _))| (*k, at)).collect();
                self.index = Some(Box::new(index));
            }
            None => {}
        }
        None
    }

    fn remove(&mut self, key: K) -> Option<V> {
        let at = self.position(key)?;
        let (_, value) = self.items.swap_remove(at);
        if let Some(index) = &mut self.index {
            index.remove(&key);
            if let Some((moved, _)) = self.items.get(at) {
                index.insert(*moved, at);
            }
            if self.items.len() <= UNINDEX_AT {
                self.index = None;
            } else {
                crate::shrink::after_remove(index);
            }
        }
        // Give memory back once the vector is mostly empty.
        if self.items.spilled() && self.items.len() * 4 <= self.items.capacity() {
            self.items.shrink_to_fit();
        }
        Some(value)
    }
}

/// Children kept in a vector up to this many, in a hash map beyond.
const SMALL_MAX: usize = 8;
/// A hash map of children goes back to a vector at this many.
const LARGE_MIN: usize = 4;

/// Values by topic level. Most nodes of a topic tree have one or two
/// children, so a short vector (searched linearly, allocated to size) until
/// [`SMALL_MAX`], then a hash map. Keys are copied into their own
/// [`ByteString`]s: slicing them out of a filter would keep the packet's
/// whole read buffer alive for as long as the node lives.
pub(crate) struct LevelMap<N> {
    /// Small or large, switching with some hysteresis ([`SMALL_MAX`],
    /// [`LARGE_MIN`]) so that a node at the threshold does not flip.
    repr: LevelRepr<N>,
}

enum LevelRepr<N> {
    Small(Vec<(ByteString, N)>),
    Large(HashMap<ByteString, N>),
}

/// Iterator over the `(level, value)` pairs of a [`LevelMap`].
pub(crate) enum LevelIter<'a, N> {
    Small(std::slice::Iter<'a, (ByteString, N)>),
    Large(hash_map::Iter<'a, ByteString, N>),
}

impl<'a, N> Iterator for LevelIter<'a, N> {
    type Item = (&'a str, &'a N);

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            Self::Small(iter) => iter.next().map(|(level, value)| (&**level, value)),
            Self::Large(iter) => iter.next().map(|(level, value)| (&**level, value)),
        }
    }
}

impl<N> LevelMap<N> {
    pub(crate) const fn new() -> Self {
        Self { repr: LevelRepr::Small(Vec::new()) }
    }

    pub(crate) fn len(&self) -> usize {
        match &self.repr {
            LevelRepr::Small(entries) => entries.len(),
            LevelRepr::Large(map) => map.len(),
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub(crate) fn get(&self, level: &str) -> Option<&N> {
        match &self.repr {
            LevelRepr::Small(entries) => {
                entries.iter().find(|(key, _)| **key == *level).map(|(_, value)| value)
            }
            LevelRepr::Large(map) => map.get(level),
        }
    }

    pub(crate) fn get_mut(&mut self, level: &str) -> Option<&mut N> {
        match &mut self.repr {
            LevelRepr::Small(entries) => {
                entries.iter_mut().find(|(key, _)| **key == *level).map(|(_, value)| value)
            }
            LevelRepr::Large(map) => map.get_mut(level),
        }
    }

    /// The value for `level`, made by `make` if absent, and whether it was.
    pub(crate) fn get_or_insert_with(
        &mut self,
        level: &str,
        make: impl FnOnce() -> N,
    ) -> (&mut N, bool) {
        if let LevelRepr::Small(entries) = &mut self.repr {
            if entries.len() >= SMALL_MAX && !entries.iter().any(|(key, _)| **key == *level) {
                let map = entries.drain(..).collect();
                self.repr = LevelRepr::Large(map);
            }
        }
        match &mut self.repr {
            LevelRepr::Small(entries) => {
                match entries.iter().position(|(key, _)| **key == *level) {
                    Some(at) => (&mut entries[at].1, false),
                    None => {
                        // Exact growth: small vectors stay allocated to size.
                        entries.reserve_exact(1);
                        entries.push((ByteString::from(level), make()));
                        let at = entries.len() - 1;
                        (&mut entries[at].1, true)
                    }
                }
            }
            LevelRepr::Large(map) => match map.entry_ref(level) {
                EntryRef::Occupied(entry) => (entry.into_mut(), false),
                EntryRef::Vacant(entry) => (entry.insert(make()), true),
            },
        }
    }

    /// Removes the value for `level`. The room of removed entries is given
    /// back: a vector at most half full shrinks to fit, a hash map follows
    /// [`crate::shrink::after_remove`] until it turns back into a vector.
    pub(crate) fn remove(&mut self, level: &str) -> Option<N> {
        let removed = match &mut self.repr {
            LevelRepr::Small(entries) => {
                let at = entries.iter().position(|(key, _)| **key == *level)?;
                let (_, value) = entries.swap_remove(at);
                if entries.len() * 2 <= entries.capacity() {
                    entries.shrink_to_fit();
                }
                value
            }
            LevelRepr::Large(map) => map.remove(level)?,
        };
        if let LevelRepr::Large(map) = &mut self.repr {
            if map.len() <= LARGE_MIN {
                let entries = map.drain().collect();
                self.repr = LevelRepr::Small(entries);
            } else {
                crate::shrink::after_remove(map);
            }
        }
        Some(removed)
    }

    pub(crate) fn iter(&self) -> LevelIter<'_, N> {
        match &self.repr {
            LevelRepr::Small(entries) => LevelIter::Small(entries.iter()),
            LevelRepr::Large(map) => LevelIter::Large(map.iter()),
        }
    }

    pub(crate) fn values(&self) -> impl Iterator<Item = &N> {
        self.iter().map(|(_, value)| value)
    }

    /// Moves every value into `out`, leaving the map empty.
    pub(crate) fn drain_into(&mut self, out: &mut Vec<N>) {
        match mem::replace(&mut self.repr, LevelRepr::Small(Vec::new())) {
            LevelRepr::Small(entries) => out.extend(entries.into_iter().map(|(_, value)| value)),
            LevelRepr::Large(map) => out.extend(map.into_values()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::strategies::{filter_text, topic_text};
    use crate::protocol::topic_matches;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn filter(text: &str) -> TopicFilter {
        TopicFilter::new(text.to_owned()).unwrap()
    }

    fn topic(text: &str) -> TopicName {
        TopicName::new(text.to_owned()).unwrap()
    }

    /// Every (key, value) visited for `name`, sorted.
    fn matches(trie: &SubscriptionTrie<u32, &'static str>, name: &str) -> Vec<(u32, &'static str)> {
        let mut out = Vec::new();
        trie.for_each_match(&topic(name), |key, value| out.push((key, *value)));
        out.sort_unstable();
        out
    }

    fn trie_of(filters: &[&'static str]) -> SubscriptionTrie<u32, &'static str> {
        let mut trie = SubscriptionTrie::new();
        for (key, text) in filters.iter().enumerate() {
            trie.insert(&filter(text), key as u32, *text);
        }
        trie
    }

    fn matched_filters(
        trie: &SubscriptionTrie<u32, &'static str>,
        name: &str,
    ) -> Vec<&'static str> {
        matches(trie, name).into_iter().map(|(_, value)| value).collect()
    }

    #[test]
    fn spec_examples_of_multi_level_wildcard() {
        // MQTT 3.1.1 section 4.7.1.2: "sport/tennis/player1/#" matches
        // "sport/tennis/player1", ".../ranking" and ".../score/wimbledon";
        // "sport/#" also matches "sport" (non-normative comment).
        let trie = trie_of(&["sport/tennis/player1/#", "sport/#", "#"]);
        for name in [
            "sport/tennis/player1",
            "sport/tennis/player1/ranking",
            "sport/tennis/player1/score/wimbledon",
        ] {
            assert_eq!(matches(&trie, name).len(), 3, "{name}");
        }
        let mut expected = vec!["#", "sport/#"];
        expected.sort_unstable();
        let mut got = matched_filters(&trie, "sport");
        got.sort_unstable();
        assert_eq!(got, expected);
        assert_eq!(matched_filters(&trie, "other"), vec!["#"]);
    }

    #[test]
    fn spec_examples_of_single_level_wildcard() {
        // MQTT 3.1.1 section 4.7.1.3.
        let trie = trie_of(&["sport/tennis/+"]);
        assert_eq!(matches(&trie, "sport/tennis/player1").len(), 1);
        assert_eq!(matches(&trie, "sport/tennis/player2").len(), 1);
        assert!(matches(&trie, "sport/tennis/player1/ranking").is_empty());

        let trie = trie_of(&["sport/+"]);
        assert!(matches(&trie, "sport").is_empty());
        assert_eq!(matches(&trie, "sport/").len(), 1);

        let trie = trie_of(&["+/+", "/+", "+"]);
        let mut got = matched_filters(&trie, "/finance");
        got.sort_unstable();
        assert_eq!(got, vec!["+/+", "/+"]);
        assert_eq!(matched_filters(&trie, "finance"), vec!["+"]);

        let trie = trie_of(&["+/tennis/#"]);
        assert_eq!(matches(&trie, "sport/tennis").len(), 1);
        assert_eq!(matches(&trie, "sport/tennis/x/y").len(), 1);
        assert!(matches(&trie, "sport/golf").is_empty());
    }

    #[test]
    fn dollar_topics_do_not_match_leading_wildcards() {
        // [MQTT-4.7.2-1] and the examples of MQTT 3.1.1 section 4.7.2.
        let trie = trie_of(&["#", "+/monitor/Clients", "$SYS/#", "$SYS/monitor/+", "+"]);
        let mut got = matched_filters(&trie, "$SYS/monitor/Clients");
        got.sort_unstable();
        assert_eq!(got, vec!["$SYS/#", "$SYS/monitor/+"]);
        assert!(matches(&trie, "$SYS").iter().all(|(_, f)| *f == "$SYS/#"));
        assert_eq!(matches(&trie, "$SYS").len(), 1);
        let mut got = matched_filters(&trie, "x/monitor/Clients");
        got.sort_unstable();
        assert_eq!(got, vec!["#", "+/monitor/Clients"]);
        // Only the first level counts: "a/$b" is an ordinary topic.
        let trie = trie_of(&["a/+", "a/#"]);
        assert_eq!(matches(&trie, "a/$b").len(), 2);
    }

    #[test]
    fn overlapping_subscriptions_are_visited_once_each() {
        let mut trie = SubscriptionTrie::new();
        for text in ["a/b", "a/+", "a/#", "#", "+/b"] {
            trie.insert(&filter(text), 7, text);
        }
        trie.insert(&filter("a/b"), 8, "a/b");
        assert_eq!(trie.len(), 6);
        assert_eq!(trie.filter_count(), 5);
        let got = matches(&trie, "a/b");
        assert_eq!(got, vec![(7, "#"), (7, "+/b"), (7, "a/#"), (7, "a/+"), (7, "a/b"), (8, "a/b")]);
    }

    #[test]
    fn resubscribe_replaces_the_value() {
        // [MQTT-3.8.4-3] A subscription to an existing filter replaces it.
        let mut trie = SubscriptionTrie::new();
        assert_eq!(trie.insert(&filter("a/+"), 1, "old"), None);
        assert_eq!(trie.insert(&filter("a/+"), 1, "new"), Some("old"));
        assert_eq!(trie.len(), 1);
        assert_eq!(trie.get(&filter("a/+"), 1), Some(&"new"));
        assert_eq!(matches(&trie, "a/x"), vec![(1, "new")]);
    }

    #[test]
    fn remove_prunes_every_node() {
        let filters =
            ["a/b/c", "a/b/#", "a/+/c", "+/+/+", "#", "a", "/", "//#", "$SYS/x", "a/b/c/d/e"];
        let mut trie = trie_of(&filters);
        assert!(trie.node_count() > 0);
        assert_eq!(trie.remove(&filter("a/b/c"), 99), None);
        assert_eq!(trie.remove(&filter("x/y"), 0), None);
        for (key, text) in filters.iter().enumerate().rev() {
            assert_eq!(trie.remove(&filter(text), key as u32), Some(*text), "{text}");
            assert_eq!(trie.remove(&filter(text), key as u32), None, "{text}");
        }
        assert_eq!(trie.len(), 0);
        assert_eq!(trie.filter_count(), 0);
        assert_eq!(trie.node_count(), 0);
        assert!(trie.root.is_empty());
    }

    #[test]
    fn remove_keeps_nodes_still_in_use() {
        let mut trie = trie_of(&["a/b/c/d", "a/b", "a/x/#"]);
        let nodes = trie.node_count();
        assert_eq!(nodes, 5); // a, a/b, a/b/c, a/b/c/d, a/x
        trie.remove(&filter("a/b/c/d"), 0);
        assert_eq!(trie.node_count(), 3);
        assert_eq!(matches(&trie, "a/b"), vec![(1, "a/b")]);
        trie.remove(&filter("a/b"), 1);
        assert_eq!(trie.node_count(), 2);
        assert_eq!(matches(&trie, "a/x/y"), vec![(2, "a/x/#")]);
        trie.remove(&filter("a/x/#"), 2);
        assert_eq!(trie.node_count(), 0);
    }

    #[test]
    fn shared_groups_deliver_to_one_member_round_robin() {
        // MQTT 5.0 section 4.8.2: a message matching a shared subscription
        // goes to one member of the group.
        let mut trie = SubscriptionTrie::new();
        let group = filter("$share/workers/jobs/+");
        for key in 1..=3 {
            trie.insert(&group, key, "workers");
        }
        trie.insert(&filter("$share/audit/jobs/#"), 10, "audit");
        trie.insert(&filter("jobs/+"), 20, "plain");
        assert_eq!(trie.filter_count(), 3);
        assert_eq!(trie.len(), 5);

        let mut workers = Vec::new();
        for _ in 0..6 {
            let got = matches(&trie, "jobs/1");
            assert_eq!(got.len(), 3, "one per group plus the plain subscription");
            assert!(got.contains(&(10, "audit")));
            assert!(got.contains(&(20, "plain")));
            workers.extend(got.iter().filter(|(_, v)| *v == "workers").map(|(k, _)| *k));
        }
        workers.sort_unstable();
        assert_eq!(workers, vec![1, 1, 2, 2, 3, 3]);

        // The grouped walk hands the group over whole.
        let mut groups = Vec::new();
        trie.for_each_match_grouped(&topic("jobs/1"), |m| {
            if let Match::Group(g) = m {
                let mut members: Vec<u32> = g.members().map(|(k, _)| k).collect();
                members.sort_unstable();
                groups.push((g.share_name().to_owned(), g.filter().to_owned(), members));
            }
        });
        groups.sort();
        assert_eq!(
            groups,
            vec![
                ("audit".to_owned(), "jobs/#".to_owned(), vec![10]),
                ("workers".to_owned(), "jobs/+".to_owned(), vec![1, 2, 3]),
            ]
        );

        // A member leaving does not disturb the others; the last one takes
        // the group with it.
        assert_eq!(trie.remove(&group, 2), Some("workers"));
        let mut seen: Vec<u32> = (0..4)
            .flat_map(|_| matches(&trie, "jobs/9"))
            .filter(|(_, v)| *v == "workers")
            .map(|(k, _)| k)
            .collect();
        seen.sort_unstable();
        assert_eq!(seen, vec![1, 1, 3, 3]);
        trie.remove(&group, 1);
        trie.remove(&group, 3);
        assert_eq!(trie.filter_count(), 2);
        trie.remove(&filter("$share/audit/jobs/#"), 10);
        trie.remove(&filter("jobs/+"), 20);
        assert_eq!(trie.node_count(), 0);
    }

    #[test]
    fn group_ids_find_their_group_and_are_never_reused() {
        let mut trie = SubscriptionTrie::new();
        let (g, h) = (filter("$share/g/jobs/+"), filter("$share/h/jobs/+"));
        assert_eq!(trie.group_id(&g), None);
        trie.insert(&g, 1, "g1");
        trie.insert(&g, 2, "g2");
        trie.insert(&h, 1, "h1");
        trie.insert(&filter("jobs/+"), 3, "plain");
        let (g_id, h_id) = (trie.group_id(&g).unwrap(), trie.group_id(&h).unwrap());
        assert_ne!(g_id, h_id);
        assert_eq!(trie.group_id(&filter("jobs/+")), None, "a plain filter has no group");
        assert_eq!(trie.group_id(&filter("$share/x/jobs/+")), None);
        // Found by id, members in turn, without a walk.
        let group = trie.group(g_id).unwrap();
        assert_eq!((group.id(), group.share_name(), group.filter()), (g_id, "g", "jobs/+"));
        let mut turns: Vec<u32> = (0..4).map(|_| group.next_member().unwrap().0).collect();
        turns.sort_unstable();
        assert_eq!(turns, vec![1, 1, 2, 2]);
        // The walk hands over the same group.
        let mut seen = Vec::new();
        trie.for_each_match_grouped(&topic("jobs/7"), |m| {
            if let Match::Group(group) = m {
                seen.push(group.id());
            }
        });
        seen.sort_unstable();
        assert_eq!(seen, vec![g_id, h_id]);
        // A member leaving keeps the id; the last one takes it along, and
        // the group made again gets a new one.
        trie.remove(&g, 1);
        assert_eq!(trie.group_id(&g), Some(g_id));
        trie.remove(&g, 2);
        assert_eq!(trie.group_id(&g), None);
        assert!(trie.group(g_id).is_none(), "a stale id finds nothing");
        trie.insert(&g, 4, "g4");
        let again = trie.group_id(&g).unwrap();
        assert!(again != g_id && again != h_id);
        assert!(trie.group(g_id).is_none());
        assert_eq!(trie.group(again).unwrap().next_member(), Some((4, &"g4")));
        assert_eq!(trie.get(&g, 4), Some(&"g4"));
        trie.remove(&g, 4);
        trie.remove(&h, 1);
        trie.remove(&filter("jobs/+"), 3);
        assert!(trie.is_empty());
        assert_eq!(trie.node_count(), 0);
    }

    #[test]
    fn a_shared_filter_and_a_plain_one_are_distinct() {
        let mut trie = SubscriptionTrie::new();
        trie.insert(&filter("$share/g/a"), 1, "shared");
        trie.insert(&filter("a"), 1, "plain");
        assert_eq!(trie.get(&filter("a"), 1), Some(&"plain"));
        assert_eq!(trie.get(&filter("$share/g/a"), 1), Some(&"shared"));
        assert_eq!(trie.get(&filter("$share/h/a"), 1), None);
        assert_eq!(trie.remove(&filter("$share/h/a"), 1), None);
        assert_eq!(trie.remove(&filter("$share/g/a"), 1), Some("shared"));
        assert_eq!(matches(&trie, "a"), vec![(1, "plain")]);
    }

    #[test]
    fn many_subscribers_on_one_filter_use_the_index() {
        let mut trie = SubscriptionTrie::new();
        let all = filter("broadcast");
        for key in 0..1000u32 {
            trie.insert(&all, key, "b");
        }
        assert_eq!(matches(&trie, "broadcast").len(), 1000);
        for key in (0..1000u32).step_by(2) {
            assert_eq!(trie.remove(&all, key), Some("b"));
        }
        let got: Vec<u32> = matches(&trie, "broadcast").into_iter().map(|(k, _)| k).collect();
        assert_eq!(got, (1..1000).step_by(2).collect::<Vec<_>>());
        for key in (1..1000u32).step_by(2) {
            assert_eq!(trie.get(&all, key), Some(&"b"));
            assert_eq!(trie.remove(&all, key), Some("b"));
        }
        assert!(trie.is_empty());
        assert_eq!(trie.node_count(), 0);
    }

    #[test]
    fn wide_nodes_switch_to_a_hash_map_and_back() {
        let mut trie = SubscriptionTrie::new();
        let filters: Vec<TopicFilter> = (0..100).map(|i| filter(&format!("dev/{i}"))).collect();
        for (i, f) in filters.iter().enumerate() {
            trie.insert(f, i as u32, "d");
        }
        for i in 0..100 {
            assert_eq!(matches(&trie, &format!("dev/{i}")), vec![(i, "d")]);
        }
        for (i, f) in filters.iter().enumerate().skip(1) {
            trie.remove(f, i as u32);
        }
        assert_eq!(matches(&trie, "dev/0"), vec![(0, "d")]);
        assert_eq!(trie.node_count(), 2);
    }

    #[test]
    fn very_deep_filters_do_not_overflow_the_stack() {
        // 32,767 levels: the longest filter a packet can carry. Insert,
        // match, remove and drop are all iterative.
        let deep = vec!["+"; 32_767].join("/");
        let name = "/".repeat(32_766);
        let mut trie = SubscriptionTrie::new();
        trie.insert(&filter(&deep), 1u32, ());
        trie.insert(&filter(&format!("{}/#", vec!["x"; 1000].join("/"))), 2u32, ());
        let mut hits = 0;
        trie.for_each_match(&topic(&name), |_, _| hits += 1);
        assert_eq!(hits, 1);
        assert_eq!(trie.remove(&filter(&deep), 1), Some(()));
        assert_eq!(trie.node_count(), 1000);
        drop(trie);
    }

    proptest! {
        #[test]
        fn matching_agrees_with_topic_matches(
            subs in prop::collection::vec((filter_text(), 0u32..4), 0..40),
            names in prop::collection::vec(topic_text(), 1..10),
        ) {
            let mut trie = SubscriptionTrie::new();
            // The reference: the latest value per (filter, key).
            let mut reference = BTreeMap::new();
            for (i, (text, key)) in subs.iter().enumerate() {
                let f = filter(text);
                let previous = reference.insert((text.clone(), *key), i);
                prop_assert_eq!(trie.insert(&f, *key, i), previous);
            }
            prop_assert_eq!(trie.len(), reference.len());
            for name in &names {
                let t = topic(name);
                let mut plain: Vec<(u32, usize)> = Vec::new();
                // Matching groups by (share name, inner filter) -> members.
                let mut groups: BTreeMap<String, Vec<(u32, usize)>> = BTreeMap::new();
                for ((text, key), value) in &reference {
                    let f = filter(text);
                    if topic_matches(f.filter(), name) {
                        if f.is_shared() {
                            groups.entry(text.clone()).or_default().push((*key, *value));
                        } else {
                            plain.push((*key, *value));
                        }
                    }
                }
                let mut got = Vec::new();
                trie.for_each_match(&t, |key, value| got.push((key, *value)));
                prop_assert_eq!(got.len(), plain.len() + groups.len());
                for visit in &plain {
                    prop_assert!(got.contains(visit));
                }
                for members in groups.values() {
                    prop_assert!(members.iter().any(|m| got.contains(m)));
                }
                let mut grouped = 0;
                trie.for_each_match_grouped(&t, |m| {
                    if let Match::Group(g) = m {
                        let text = format!("$share/{}/{}", g.share_name(), g.filter());
                        let mut members: Vec<(u32, usize)> = g.members().map(|(k, v)| (k, *v)).collect();
                        members.sort_unstable();
                        assert_eq!(Some(&members), groups.get(&text));
                        grouped += 1;
                    }
                });
                prop_assert_eq!(grouped, groups.len());
            }
            for ((text, key), value) in &reference {
                prop_assert_eq!(trie.remove(&filter(text), *key), Some(*value));
            }
            prop_assert_eq!(trie.len(), 0);
            prop_assert_eq!(trie.filter_count(), 0);
            prop_assert_eq!(trie.node_count(), 0);
        }
    }
}
