//! The remote-interest directory: which other nodes want which topics, so
//! that a QoS 1/2 message waits for the acknowledgements of exactly those
//! nodes (see `ack`). Sans-IO: the bridge sends what it returns.
//!
//! Each node announces the distinct plain filters its sessions hold (the
//! bridge counts them across shards; shared subscriptions are not
//! announced: a NATS queue group's member is not known in advance). The
//! protocol, on NATS subjects under the prefix:
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
//! every topic: a message then waits for its acknowledgement, which it
//! sends for what it does not want too (it gets it on its own subject).
//!
//! Encoding (integers big-endian): `u8 kind`, `u64 origin`, then for BEAT
//! `u64 version, str node_id`; DELTA `u64 version, u8 added, str filter`;
//! WANT `str node_id`; FULL `u64 version, u8 last, u32 n, n × str filter`;
//! SYNCED `u64 version`; a
//! `str` is a `u16` length and UTF-8 bytes.

use crate::index::SubscriptionTrie;
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
    /// Every synced node's filters, keyed by origin.
    index: SubscriptionTrie<u64, ()>,
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
            unsynced: 0,
            held_by: HashMap::new(),
        }
    }

    /// A shard's first subscriber to a plain filter arrived (`added`) or
    /// its last one left: the `DELTA` to broadcast when the node's list
    /// changed.
    pub(super) fn own_change(&mut self, filter: &TopicFilter, added: bool) -> Option<Bytes> {
        if added {
            let count = self.own.entry(filter.detached()).or_insert(0);
            *count += 1;
            if *count > 1 {
                return None;
            }
        } else {
            let count = self.own.get_mut(filter)?;
            *count -= 1;
            if *count > 0 {
                return None;
            }
            self.own.remove(filter);
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
                        if added {
                            if remote.filters.insert(filter.clone()) {
                                self.index.insert(&filter, origin, ());
                            }
                        } else if remote.filters.remove(&filter) {
                            self.index.remove(&filter, origin);
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
                    self.index.remove(&filter, origin);
                }
                for filter in building {
                    self.index.insert(&filter, origin, ());
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
            self.index.remove(filter, origin);
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
