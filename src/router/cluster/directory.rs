//! The remote-interest directory: which other nodes want which topics, so
//! that a QoS 1/2 message waits for the acknowledgements of exactly those
//! nodes (see `ack`), and which nodes have members of which shared
//! subscriptions, so that the publishing node picks the one node a
//! message for a group goes to (see [`Directory::pick_groups`]). Sans-IO:
//! the bridge sends what it returns.
//!
//! Each node announces the distinct filters its sessions hold, plain
//! filters and shared subscriptions (`$share/{group}/{filter}`, written
//! whole) alike (the bridge counts them across shards). The protocol, on
//! NATS subjects under the prefix:
//!
//! * `BEAT` (broadcast on `{prefix}.ctl`, every `node_timeout / 4`): the
//!   node's origin, its interest version and its id. A node not heard from
//!   for `node_timeout` is forgotten (see [`Directory::expire`]).
//! * `DELTA` (broadcast at once): one filter added or removed, with the
//!   new version. Applied when it is the next version, else the node's
//!   list is asked for again.
//! * `WANT` (to a node's own subject): asks for its full list; sent for an
//!   unknown node or a version gap. Its receiver answers `FULL` and, when
//!   it did not know the asker, asks back: two nodes learn each other in
//!   one round trip.
//! * `FULL` (to the asker's subject): the list, in parts of at most
//!   [`PART_BYTES`], the last one flagged.
//! * `SYNCED` (to a node's subject): the version of that node's list now
//!   held, sent after each `DELTA` or complete `FULL` applied. A node's
//!   SUBACK waits (bounded) until every node it knows holds the version
//!   with the new filter: from then on their QoS 1/2 messages to it wait
//!   for its acknowledgement, and reach it on its own subject even before
//!   the NATS servers spread its subscription.
//!
//! A node known but whose list has not arrived yet counts as interested in
//! every topic: a message then waits for its acknowledgement for one
//! `ack_timeout` (it acknowledges what NATS gave it, if it was subscribed),
//! and is not sent it again on its own subject: a node not subscribed when
//! the message was published must not get it (a session that moved there
//! since got it where it was; see `ack::Pending::due`). It is no candidate
//! for shared groups until its list arrives.
//!
//! Shared groups: the groups of every node, this one's included, are kept
//! in a trie of their own whose members are node origins. A message for a
//! group goes to one node with members, the nodes taking turns per group
//! (round robin, one turn per node whatever its number of members: a
//! node's members then take turns among themselves, see
//! `InterestTable::next_group_member`). Counting this node as a candidate
//! spreads a node's own publishes over the cluster too. Member counts are
//! not announced: weighting by them would move the turns at every
//! subscribe, and the nodes of one cluster serve alike.
//!
//! Encoding (integers big-endian): `u8 kind`, `u64 origin`, then for BEAT
//! `u64 version, str node_id`; DELTA `u64 version, u8 added, str filter`;
//! WANT `str node_id`; FULL `u64 version, u8 last, u32 n, n × str filter`;
//! SYNCED `u64 version`; a
//! `str` is a `u16` length and UTF-8 bytes.

use crate::index::{Match, SubscriptionTrie};
use crate::protocol::{TopicFilter, TopicName};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use hashbrown::HashMap;
use smallvec::SmallVec;
use std::time::Instant;

const BEAT: u8 = 1;
const DELTA: u8 = 2;
const WANT: u8 = 3;
const FULL: u8 = 4;
const SYNCED: u8 = 5;

/// The largest part of a `FULL` answer, well under NATS's default
/// max_payload (1 MiB).
pub(super) const PART_BYTES: usize = 64 * 1024;

/// What the bridge must send: to one node (its own control subject).
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Send {
    /// To the node of this origin.
    To(u64, Bytes),
}

/// What handling a control message did.
#[derive(Debug, Default)]
pub(super) struct Effects {
    /// Messages to send.
    pub(super) send: Vec<Send>,
    /// Nodes forgotten: messages waiting for them stop waiting.
    pub(super) gone: Vec<u64>,
}

/// A control message that could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("malformed cluster control message")]
pub(super) struct Malformed;

/// Another node, as this one knows it.
#[derive(Debug)]
struct Remote {
    node_id: String,
    /// The version of the list held (`None`: not received yet).
    version: Option<u64>,
    filters: hashbrown::HashSet<TopicFilter>,
    /// A `FULL` answer being received: its version and the filters so far.
    building: Option<(u64, Vec<TopicFilter>)>,
    last_seen: Instant,
    /// When its list was last asked for (asked again at most once per
    /// heartbeat).
    wanted: Option<Instant>,
}

/// This node's interest and what it knows of the others'.
#[derive(Debug)]
pub(super) struct Directory {
    origin: u64,
    node_id: String,
    /// This node's plain filters, with how many (shard, filter) pairs hold
    /// each.
    own: HashMap<TopicFilter, usize>,
    version: u64,
    nodes: HashMap<u64, Remote>,
    /// Every synced node's plain filters, keyed by origin.
    index: SubscriptionTrie<u64, ()>,
    /// Every shared subscription of the synced nodes and of this one,
    /// its members being node origins.
    groups: SubscriptionTrie<u64, ()>,
    /// Nodes whose list has not arrived.
    unsynced: usize,
    /// Per node, the version of this node's list it holds (`SYNCED`).
    held_by: HashMap<u64, u64>,
}

impl Directory {
    /// The directory of node `node_id`, origin `origin`.
    pub(super) fn new(origin: u64, node_id: &str) -> Self {
        Self {
            origin,
            node_id: node_id.to_owned(),
            own: HashMap::new(),
            version: 0,
            nodes: HashMap::new(),
            index: SubscriptionTrie::new(),
            groups: SubscriptionTrie::new(),
            unsynced: 0,
            held_by: HashMap::new(),
        }
    }

    /// A shard's first subscriber to a filter (plain or shared) arrived
    /// (`added`) or its last one left: the `DELTA` to broadcast when the
    /// node's list changed.
    pub(super) fn own_change(&mut self, filter: &TopicFilter, added: bool) -> Option<Bytes> {
        if added {
            let count = self.own.entry(filter.detached()).or_insert(0);
            *count += 1;
            if *count > 1 {
                return None;
            }
            if filter.is_shared() {
                self.groups.insert(filter, self.origin, ());
            }
        } else {
            let count = self.own.get_mut(filter)?;
            *count -= 1;
            if *count > 0 {
                return None;
            }
            self.own.remove(filter);
            if filter.is_shared() {
                self.groups.remove(filter, self.origin);
            }
        }
        self.version += 1;
        let mut out = header(DELTA, self.origin);
        out.put_u64(self.version);
        out.put_u8(u8::from(added));
        put_str(&mut out, filter.as_str());
        Some(out.freeze())
    }

    /// The version of this node's list (the last `DELTA`'s).
    pub(super) fn version(&self) -> u64 {
        self.version
    }

    /// Whether every node this one knows holds version `version` of its
    /// list (or a later one).
    pub(super) fn synced(&self, version: u64) -> bool {
        self.nodes.keys().all(|origin| self.held_by.get(origin).is_some_and(|&v| v >= version))
    }

    /// The heartbeat to broadcast.
    pub(super) fn beat(&self) -> Bytes {
        let mut out = header(BEAT, self.origin);
        out.put_u64(self.version);
        put_str(&mut out, &self.node_id);
        out.freeze()
    }

    /// Handles a control message received at `now`.
    pub(super) fn handle(
        &mut self,
        mut message: Bytes,
        now: Instant,
        heartbeat: std::time::Duration,
    ) -> Result<Effects, Malformed> {
        let mut effects = Effects::default();
        if message.remaining() < 9 {
            return Err(Malformed);
        }
        let (kind, origin) = (message.get_u8(), message.get_u64());
        if origin == self.origin {
            return Ok(effects);
        }
        match kind {
            BEAT => {
                let version = get_u64(&mut message)?;
                let node_id = get_str(&mut message)?;
                // A node that restarted comes back with a new origin: its
                // previous run is gone.
                let previous: SmallVec<[u64; 1]> = self
                    .nodes
                    .iter()
                    .filter(|(&o, remote)| o != origin && remote.node_id == node_id)
                    .map(|(&o, _)| o)
                    .collect();
                for old in previous {
                    self.forget(old);
                    effects.gone.push(old);
                }
                let remote = self.remote(origin, &node_id, now);
                remote.last_seen = now;
                if remote.version != Some(version) {
                    self.want(origin, now, heartbeat, &mut effects);
                }
            }
            DELTA => {
                let version = get_u64(&mut message)?;
                let added = get_u8(&mut message)? != 0;
                let filter = get_filter(&mut message)?;
                let Some(remote) = self.nodes.get_mut(&origin) else {
                    self.want(origin, now, heartbeat, &mut effects);
                    return Ok(effects);
                };
                remote.last_seen = now;
                match remote.version {
                    Some(held) if held + 1 == version => {
                        remote.version = Some(version);
                        let trie = match filter.is_shared() {
                            true => &mut self.groups,
                            false => &mut self.index,
                        };
                        if added {
                            if remote.filters.insert(filter.clone()) {
                                trie.insert(&filter, origin, ());
                            }
                        } else if remote.filters.remove(&filter) {
                            trie.remove(&filter, origin);
                        }
                    }
                    Some(held) if held >= version => {}
                    _ => return Ok(self.want_effects(origin, now, heartbeat, effects)),
                }
                let held = remote.version.unwrap_or(0);
                effects.send.push(Send::To(origin, self.synced_message(held)));
            }
            WANT => {
                let node_id = get_str(&mut message)?;
                let remote = self.remote(origin, &node_id, now);
                remote.last_seen = now;
                if remote.version.is_none() {
                    self.want(origin, now, heartbeat, &mut effects);
                }
                for part in self.full() {
                    effects.send.push(Send::To(origin, part));
                }
            }
            FULL => {
                let version = get_u64(&mut message)?;
                let last = get_u8(&mut message)? != 0;
                let n = get_u32(&mut message)?;
                let mut filters = Vec::new();
                for _ in 0..n {
                    filters.push(get_filter(&mut message)?);
                }
                let Some(remote) = self.nodes.get_mut(&origin) else { return Ok(effects) };
                remote.last_seen = now;
                let building = match remote.building.take() {
                    Some((v, mut so_far)) if v == version => {
                        so_far.append(&mut filters);
                        so_far
                    }
                    _ => filters,
                };
                if !last {
                    remote.building = Some((version, building));
                    return Ok(effects);
                }
                if remote.version.is_none() {
                    self.unsynced -= 1;
                }
                remote.version = Some(version);
                remote.wanted = None;
                for filter in remote.filters.drain() {
                    trie_of(&mut self.index, &mut self.groups, &filter).remove(&filter, origin);
                }
                for filter in building {
                    trie_of(&mut self.index, &mut self.groups, &filter).insert(&filter, origin, ());
                    remote.filters.insert(filter);
                }
                effects.send.push(Send::To(origin, self.synced_message(version)));
            }
            SYNCED => {
                let version = get_u64(&mut message)?;
                let held = self.held_by.entry(origin).or_insert(0);
                *held = (*held).max(version);
            }
            _ => return Err(Malformed),
        }
        Ok(effects)
    }

    fn want_effects(
        &mut self,
        origin: u64,
        now: Instant,
        heartbeat: std::time::Duration,
        mut effects: Effects,
    ) -> Effects {
        self.want(origin, now, heartbeat, &mut effects);
        effects
    }

    /// `SYNCED`: this node holds version `version` of the receiver's list.
    fn synced_message(&self, version: u64) -> Bytes {
        let mut out = header(SYNCED, self.origin);
        out.put_u64(version);
        out.freeze()
    }

    /// The node `origin`, known from now on.
    fn remote(&mut self, origin: u64, node_id: &str, now: Instant) -> &mut Remote {
        let unsynced = &mut self.unsynced;
        self.nodes.entry(origin).or_insert_with(|| {
            *unsynced += 1;
            tracing::info!(node = node_id, "cluster node joined");
            Remote {
                node_id: node_id.to_owned(),
                version: None,
                filters: hashbrown::HashSet::new(),
                building: None,
                last_seen: now,
                wanted: None,
            }
        })
    }

    /// Of `nodes`, those whose list has not arrived (none, without a
    /// lookup, once every list has).
    pub(super) fn unsynced_of(&self, nodes: &[u64]) -> SmallVec<[u64; 2]> {
        if self.unsynced == 0 {
            return SmallVec::new();
        }
        let unsynced = |origin: &&u64| self.nodes.get(*origin).is_some_and(|r| r.version.is_none());
        nodes.iter().filter(unsynced).copied().collect()
    }

    /// Asks `origin` for its list, at most once per heartbeat.
    fn want(
        &mut self,
        origin: u64,
        now: Instant,
        heartbeat: std::time::Duration,
        effects: &mut Effects,
    ) {
        if let Some(remote) = self.nodes.get_mut(&origin) {
            if remote.wanted.is_some_and(|at| now < at + heartbeat) {
                return;
            }
            remote.wanted = Some(now);
        }
        let mut out = header(WANT, self.origin);
        put_str(&mut out, &self.node_id);
        effects.send.push(Send::To(origin, out.freeze()));
    }

    /// This node's list, as `FULL` parts.
    fn full(&self) -> Vec<Bytes> {
        let mut parts = Vec::new();
        let mut filters = self.own.keys().peekable();
        loop {
            let mut out = header(FULL, self.origin);
            out.put_u64(self.version);
            let flags = out.len();
            out.put_u8(0);
            out.put_u32(0);
            let mut n = 0u32;
            while let Some(filter) = filters.peek() {
                if n > 0 && out.len() + 2 + filter.as_str().len() > PART_BYTES {
                    break;
                }
                put_str(&mut out, filter.as_str());
                n += 1;
                filters.next();
            }
            let last = filters.peek().is_none();
            out[flags] = u8::from(last);
            out[flags + 1..flags + 5].copy_from_slice(&n.to_be_bytes());
            parts.push(out.freeze());
            if last {
                return parts;
            }
        }
    }

    fn forget(&mut self, origin: u64) {
        self.held_by.remove(&origin);
        let Some(remote) = self.nodes.remove(&origin) else { return };
        if remote.version.is_none() {
            self.unsynced -= 1;
        }
        for filter in &remote.filters {
            trie_of(&mut self.index, &mut self.groups, filter).remove(filter, origin);
        }
        tracing::warn!(node = %remote.node_id, "cluster node gone");
    }

    /// Forgets the nodes not heard from since `deadline`; returns them.
    /// The bridge calls it only while connected to NATS, and calls
    /// [`Self::refresh`] when it connects again: a node that cannot hear
    /// the others does not take them for dead.
    pub(super) fn expire(&mut self, deadline: Instant) -> Vec<u64> {
        let gone: Vec<u64> = self
            .nodes
            .iter()
            .filter(|(_, remote)| remote.last_seen < deadline)
            .map(|(&origin, _)| origin)
            .collect();
        for &origin in &gone {
            self.forget(origin);
        }
        gone
    }

    /// Counts every node as heard from now (this node was cut off).
    pub(super) fn refresh(&mut self, now: Instant) {
        for remote in self.nodes.values_mut() {
            remote.last_seen = now;
        }
    }

    /// Whether `origin` is a node this one knows (alive).
    #[cfg(test)]
    pub(super) fn knows(&self, origin: u64) -> bool {
        self.nodes.contains_key(&origin)
    }

    /// The other nodes interested in `topic`, into `out` (cleared first):
    /// those with a matching filter, and those whose list has not arrived.
    pub(super) fn interested(&self, topic: &TopicName, out: &mut SmallVec<[u64; 4]>) {
        out.clear();
        self.index.for_each_match(topic, |origin, ()| {
            if !out.contains(&origin) {
                out.push(origin);
            }
        });
        if self.unsynced > 0 {
            for (&origin, remote) in &self.nodes {
                if remote.version.is_none() && !out.contains(&origin) {
                    out.push(origin);
                }
            }
        }
    }

    /// Whether any node (this one included) has a shared subscription: if
    /// not, messages need no group lookup.
    pub(super) fn has_groups(&self) -> bool {
        !self.groups.is_empty()
    }

    /// Calls `f(group, node)` once per shared subscription matching
    /// `topic`, with the node (origin; this node's own included) its
    /// message goes to: the nodes with members take turns, per group
    /// [MQTT-4.8.2] ("a publication that matches its Topic Filter is only
    /// sent to one of its subscribing Sessions", here: one node, which
    /// gives it to one of its members).
    pub(super) fn pick_groups(&self, topic: &TopicName, mut f: impl FnMut(&str, u64)) {
        self.groups.for_each_match_grouped(topic, |found| {
            if let Match::Group(group) = found {
                if let Some((origin, _)) = group.next_member() {
                    f(group.as_str(), origin);
                }
            }
        });
    }

    /// Whether `node` (an origin, this node's included) has members of
    /// the shared subscription `group`.
    pub(super) fn is_member(&self, group: &TopicFilter, node: u64) -> bool {
        self.groups.get(group, node).is_some()
    }

    /// The node a message for `group` goes to next, after it was sent to
    /// `current` (`None`: not yet sent) and refused by the nodes of
    /// `refused` (they have no member any more):
    /// * `stay` (QoS 2, while `current` did not answer in time): `current`
    ///   again, while it has members: a node that is slow but alive must
    ///   not deliver a QoS 2 message a second member gets too. Its dedup
    ///   drops the repeat. Only its death (it leaves the directory) moves
    ///   the message.
    /// * otherwise (QoS 1 timeouts, refusals, deaths) another member,
    ///   taking turns, and `current` again only when it is the last one
    ///   left.
    ///
    /// `None`: no node has members any more (the message is not delivered
    /// to that group, as on a single node).
    pub(super) fn choose(
        &self,
        group: &TopicFilter,
        current: Option<u64>,
        refused: &[u64],
        stay: bool,
    ) -> Option<u64> {
        let usable = |node: u64| !refused.contains(&node) && self.is_member(group, node);
        if let Some(current) = current.filter(|&node| stay && usable(node)) {
            return Some(current);
        }
        let members = self.groups.group(self.groups.group_id(group)?)?;
        for _ in 0..members.len() {
            match members.next_member() {
                Some((node, _)) if Some(node) != current && usable(node) => return Some(node),
                _ => {}
            }
        }
        current.filter(|&node| usable(node))
    }
}

/// The trie a filter of a node's list goes to: `groups` for a shared
/// subscription, `index` for a plain filter.
fn trie_of<'t>(
    index: &'t mut SubscriptionTrie<u64, ()>,
    groups: &'t mut SubscriptionTrie<u64, ()>,
    filter: &TopicFilter,
) -> &'t mut SubscriptionTrie<u64, ()> {
    match filter.is_shared() {
        true => groups,
        false => index,
    }
}

fn header(kind: u8, origin: u64) -> BytesMut {
    let mut out = BytesMut::with_capacity(64);
    out.put_u8(kind);
    out.put_u64(origin);
    out
}

fn put_str(out: &mut BytesMut, text: &str) {
    // Filters and node ids are at most 65535 bytes (MQTT strings).
    out.put_u16(text.len() as u16);
    out.put_slice(text.as_bytes());
}

fn get_u8(input: &mut Bytes) -> Result<u8, Malformed> {
    (input.remaining() >= 1).then(|| input.get_u8()).ok_or(Malformed)
}

fn get_u32(input: &mut Bytes) -> Result<u32, Malformed> {
    (input.remaining() >= 4).then(|| input.get_u32()).ok_or(Malformed)
}

fn get_u64(input: &mut Bytes) -> Result<u64, Malformed> {
    (input.remaining() >= 8).then(|| input.get_u64()).ok_or(Malformed)
}

fn get_str(input: &mut Bytes) -> Result<String, Malformed> {
    if input.remaining() < 2 {
        return Err(Malformed);
    }
    let len = usize::from(input.get_u16());
    if input.remaining() < len {
        return Err(Malformed);
    }
    String::from_utf8(input.split_to(len).to_vec()).map_err(|_| Malformed)
}

fn get_filter(input: &mut Bytes) -> Result<TopicFilter, Malformed> {
    TopicFilter::new(get_str(input)?).map_err(|_| Malformed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const BEAT_EVERY: Duration = Duration::from_secs(1);

    fn filter(text: &str) -> TopicFilter {
        TopicFilter::new(text).unwrap()
    }

    fn interested(directory: &Directory, topic: &str) -> Vec<u64> {
        let mut out = SmallVec::new();
        directory.interested(&TopicName::new(topic).unwrap(), &mut out);
        let mut out = out.into_vec();
        out.sort();
        out
    }

    /// Delivers `first` to `b`, what `b` answers to `a`, and so on, until
    /// both are quiet.
    fn exchange(a: &mut Directory, b: &mut Directory, first: Vec<Bytes>, now: Instant) {
        let mut queue: std::collections::VecDeque<(bool, Bytes)> =
            first.into_iter().map(|bytes| (true, bytes)).collect();
        // In order, as NATS keeps one publisher's messages on a subject.
        while let Some((to_b, bytes)) = queue.pop_front() {
            let target = if to_b { &mut *b } else { &mut *a };
            let effects = target.handle(bytes, now, BEAT_EVERY).unwrap();
            for Send::To(_, bytes) in effects.send {
                queue.push_back((!to_b, bytes));
            }
        }
    }

    fn sends(effects: Effects) -> Vec<Bytes> {
        effects.send.into_iter().map(|Send::To(_, bytes)| bytes).collect()
    }

    #[test]
    fn two_nodes_learn_each_others_filters_from_one_beat() {
        let now = Instant::now();
        let (mut a, mut b) = (Directory::new(1, "a"), Directory::new(2, "b"));
        assert!(a.own_change(&filter("x/+"), true).is_some());
        assert!(a.own_change(&filter("x/+"), true).is_none(), "counted, announced once");
        b.own_change(&filter("y/#"), true);
        let beat = a.beat();
        exchange(&mut a, &mut b, vec![beat], now);
        assert_eq!(interested(&b, "x/1"), [1]);
        assert_eq!(interested(&b, "y/1"), Vec::<u64>::new(), "its own filter is not remote");
        assert_eq!(interested(&a, "y"), [2], "y/# matches y [MQTT-4.7.1-2]");
        assert_eq!(interested(&a, "x/1"), Vec::<u64>::new());
        assert!(a.synced(a.version()), "b holds a's list");
        assert!(b.synced(b.version()));
        // Deltas in order apply; the second release of x/+ withdraws it.
        assert!(a.own_change(&filter("x/+"), false).is_none());
        let delta = a.own_change(&filter("x/+"), false).unwrap();
        assert!(!a.synced(a.version()), "b has not seen the change");
        exchange(&mut a, &mut b, vec![delta], now);
        assert_eq!(interested(&b, "x/1"), Vec::<u64>::new());
        assert!(a.synced(a.version()), "b said so (SYNCED)");
    }

    #[test]
    fn an_unsynced_node_counts_as_interested_and_a_gap_asks_again() {
        let now = Instant::now();
        let (mut a, mut b) = (Directory::new(1, "a"), Directory::new(2, "b"));
        // b hears a's beat but the answer to its WANT is lost.
        let effects = b.handle(a.beat(), now, BEAT_EVERY).unwrap();
        assert!(matches!(&effects.send[..], [Send::To(1, _)]));
        assert_eq!(interested(&b, "anything"), [1], "unsynced: waited for");
        exchange(&mut b, &mut a, sends(effects), now);
        assert_eq!(interested(&b, "anything"), Vec::<u64>::new());
        // A delta lost: the next one shows a gap and b asks again.
        let _lost = a.own_change(&filter("p"), true);
        let next = a.own_change(&filter("q"), true).unwrap();
        let effects = b.handle(next, now + BEAT_EVERY, BEAT_EVERY).unwrap();
        assert!(matches!(&effects.send[..], [Send::To(1, _)]));
        exchange(&mut b, &mut a, sends(effects), now);
        assert_eq!(interested(&b, "p"), [1]);
        assert_eq!(interested(&b, "q"), [1]);
    }

    #[test]
    fn a_long_list_comes_in_parts() {
        let now = Instant::now();
        let (mut a, mut b) = (Directory::new(1, "a"), Directory::new(2, "b"));
        let long = "l".repeat(1000);
        for i in 0..200 {
            a.own_change(&filter(&format!("{long}/{i}")), true);
        }
        assert!(a.full().len() >= 3);
        let beat = a.beat();
        exchange(&mut a, &mut b, vec![beat], now);
        for i in [0, 99, 199] {
            assert_eq!(interested(&b, &format!("{long}/{i}")), [1]);
        }
    }

    /// The groups and nodes `directory` picks for `topic`, once.
    fn picks(directory: &Directory, topic: &str) -> Vec<(String, u64)> {
        let mut out = Vec::new();
        let topic = TopicName::new(topic).unwrap();
        directory.pick_groups(&topic, |group, node| out.push((group.to_owned(), node)));
        out
    }

    #[test]
    fn shared_groups_are_picked_in_turns_among_nodes_this_one_included() {
        // [MQTT-4.8.2] one member of a group per message in the whole
        // cluster: one node per group, the nodes with members in turn.
        let now = Instant::now();
        let (mut a, mut b) = (Directory::new(1, "a"), Directory::new(2, "b"));
        let g = filter("$share/g/jobs/+");
        a.own_change(&g, true);
        a.own_change(&filter("$share/h/jobs/#"), true);
        a.own_change(&filter("plain/+"), true);
        assert!(b.own_change(&g, true).is_some());
        assert!(b.own_change(&g, true).is_none(), "counted per (shard, filter)");
        assert!(b.has_groups());
        assert_eq!(picks(&b, "jobs/1"), [("$share/g/jobs/+".to_owned(), 2)], "only its own yet");
        let beat = a.beat();
        exchange(&mut a, &mut b, vec![beat], now);
        let mut g_nodes = Vec::new();
        let mut h_nodes = Vec::new();
        for _ in 0..4 {
            for (group, node) in picks(&b, "jobs/1") {
                match group.as_str() {
                    "$share/g/jobs/+" => g_nodes.push(node),
                    "$share/h/jobs/#" => h_nodes.push(node),
                    other => panic!("{other}"),
                }
            }
        }
        g_nodes.sort();
        assert_eq!(g_nodes, [1, 1, 2, 2], "the nodes take turns, b itself included");
        assert_eq!(h_nodes, [1, 1, 1, 1], "h has members on a only");
        assert!(picks(&b, "other").is_empty());
        assert_eq!(interested(&b, "jobs/1"), Vec::<u64>::new(), "a group is no plain interest");
        assert_eq!(interested(&b, "plain/x"), [1]);
        // b's last member of g leaves: a no longer picks b.
        assert!(b.own_change(&g, false).is_none());
        let delta = b.own_change(&g, false).unwrap();
        exchange(&mut b, &mut a, vec![delta], now);
        let nodes: Vec<u64> = (0..3)
            .flat_map(|_| picks(&a, "jobs/1"))
            .filter(|(g, _)| g.contains("/g/"))
            .map(|(_, n)| n)
            .collect();
        assert_eq!(nodes, [1, 1, 1]);
        // a is taken for dead: b has no group left to pick.
        assert_eq!(b.expire(now + Duration::from_secs(1)), [1]);
        assert!(picks(&b, "jobs/1").is_empty());
        assert!(!b.has_groups());
    }

    #[test]
    fn a_group_copy_moves_to_another_member_unless_qos_2_stays() {
        let now = Instant::now();
        let (mut a, mut b, mut c) =
            (Directory::new(1, "a"), Directory::new(2, "b"), Directory::new(3, "c"));
        let g = filter("$share/g/t");
        for directory in [&mut a, &mut b, &mut c] {
            directory.own_change(&g, true);
        }
        let (beat_b, beat_c) = (b.beat(), c.beat());
        exchange(&mut b, &mut a, vec![beat_b], now);
        exchange(&mut c, &mut a, vec![beat_c], now);
        assert!(a.is_member(&g, 1) && a.is_member(&g, 2) && a.is_member(&g, 3));
        // Not acknowledged in time: QoS 2 stays with its live node (no
        // duplicate from a slow one), QoS 1 goes to another member.
        assert_eq!(a.choose(&g, Some(2), &[], true), Some(2));
        for _ in 0..4 {
            let next = a.choose(&g, Some(2), &[], false).unwrap();
            assert!(next == 1 || next == 3, "moved on: {next}");
        }
        // Refused: moves even at QoS 2, and never back to a refuser.
        for _ in 0..4 {
            let next = a.choose(&g, Some(2), &[2], true).unwrap();
            assert!(next == 1 || next == 3, "moved on: {next}");
        }
        assert_eq!(a.choose(&g, Some(2), &[1, 3], false), Some(2), "the last one left");
        assert_eq!(a.choose(&g, Some(2), &[1, 2, 3], false), None, "every node refused");
        assert_eq!(a.choose(&filter("$share/x/t"), None, &[], false), None, "no such group");
        // c is taken for dead (b beat since): its copies go to a or b.
        a.handle(b.beat(), now + Duration::from_secs(2), BEAT_EVERY).unwrap();
        assert_eq!(a.expire(now + Duration::from_secs(1)), [3]);
        assert!(!a.is_member(&g, 3));
        for stay in [false, true] {
            let next = a.choose(&g, Some(3), &[], stay).unwrap();
            assert!(next == 1 || next == 2, "moved on: {next}");
        }
    }

    #[test]
    fn silent_and_restarted_nodes_are_forgotten() {
        let now = Instant::now();
        let (mut a, mut b) = (Directory::new(1, "a"), Directory::new(2, "b"));
        a.own_change(&filter("#"), true);
        let beat = a.beat();
        exchange(&mut a, &mut b, vec![beat], now);
        assert!(b.expire(now).is_empty());
        b.refresh(now + Duration::from_secs(10));
        assert!(b.expire(now + Duration::from_secs(5)).is_empty(), "refreshed");
        assert_eq!(b.expire(now + Duration::from_secs(11)), [1]);
        assert!(!b.knows(1));
        assert_eq!(interested(&b, "t"), Vec::<u64>::new());
        // a comes back as origin 3; its old run (origin 1, learned again)
        // is gone at the new run's first beat.
        let beat = a.beat();
        exchange(&mut a, &mut b, vec![beat], now);
        let mut a2 = Directory::new(3, "a");
        let effects = b.handle(a2.beat(), now, BEAT_EVERY).unwrap();
        assert_eq!(effects.gone, [1]);
        exchange(&mut b, &mut a2, sends(effects), now);
        assert_eq!(interested(&b, "t"), Vec::<u64>::new(), "a2 has no filter");
        assert!(b.handle(Bytes::from_static(&[9; 9]), now, BEAT_EVERY).is_err());
        assert!(b.handle(Bytes::from_static(&[1, 0]), now, BEAT_EVERY).is_err());
    }
}
