//! The retained messages of a shard: the last retained message per topic
//! [MQTT-3.3.1-5], kept in a trie of topic levels so that a wildcard
//! subscription walks only the topics its filter can match.
//!
//! Messages are shared as `Arc<Message>`: storing one and handing it to new
//! subscribers clones a pointer. Expired messages (v5 Message Expiry
//! Interval [MQTT-3.3.2-5]) are never handed out and are dropped lazily,
//! when a lookup meets them. Like the subscription trie, every walk and the
//! drop are iterative, so a topic of 32,768 levels cannot overflow the stack.

use crate::index::trie::{split_level, LevelIter, LevelMap};
use crate::message::Message;
use crate::protocol::{TopicFilter, TopicName};
use smallvec::SmallVec;
use std::fmt;
use std::sync::Arc;
use std::time::Instant;

/// The retained messages by topic.
pub struct RetainedStore {
    /// The node of the empty prefix: never holds a message (a topic has at
    /// least one level) and is never pruned.
    root: TopicNode,
    /// Stored messages, expired ones not yet dropped included.
    len: usize,
    /// Nodes below the root, to show that removal returns memory.
    nodes: usize,
    /// Payload bytes of the stored messages.
    payload_bytes: usize,
}

struct TopicNode {
    children: LevelMap<TopicNode>,
    /// The retained message of the topic this node stands for.
    message: Option<Arc<Message>>,
}

impl Default for TopicNode {
    fn default() -> Self {
        Self { children: LevelMap::new(), message: None }
    }
}

impl Default for RetainedStore {
    fn default() -> Self {
        Self::new()
    }
}

impl RetainedStore {
    /// An empty store.
    pub fn new() -> Self {
        Self { root: TopicNode::default(), len: 0, nodes: 0, payload_bytes: 0 }
    }

    /// Stored messages (expired ones are counted until a lookup drops them).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Payload bytes of the stored messages.
    pub fn payload_bytes(&self) -> usize {
        self.payload_bytes
    }

    /// Whether no message is stored.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Trie nodes below the root; zero once every message is removed.
    pub fn node_count(&self) -> usize {
        self.nodes
    }

    /// Handles a PUBLISH with the RETAIN flag: stores `message` as the
    /// retained message of its topic, replacing the previous one
    /// [MQTT-3.3.1-5]. An empty payload removes the retained message and is
    /// not stored itself ([MQTT-3.3.1-10], [MQTT-3.3.1-11] in 3.1.1;
    /// [MQTT-3.3.1-6], [MQTT-3.3.1-7] in 5.0). Returns the message that was
    /// replaced or removed.
    pub fn set(&mut self, message: Arc<Message>) -> Option<Arc<Message>> {
        if message.payload.is_empty() {
            return self.remove(&message.topic);
        }
        let mut node = &mut self.root;
        for level in message.topic.as_str().split('/') {
            let (child, created) = node.children.get_or_insert_with(level, TopicNode::default);
            self.nodes += usize::from(created);
            node = child;
        }
        self.payload_bytes += message.payload.len();
        let previous = node.message.replace(message);
        match &previous {
            Some(previous) => self.payload_bytes -= previous.payload.len(),
            None => self.len += 1,
        }
        previous
    }

    /// Every stored message, expired ones not yet dropped included, `$`
    /// topics included, in no particular order (for a snapshot of the
    /// durable log). Iterative, like every walk here.
    pub fn all(&self) -> Vec<Arc<Message>> {
        let mut out = Vec::with_capacity(self.len);
        let mut stack: Vec<LevelIter<'_, TopicNode>> = vec![self.root.children.iter()];
        while let Some(children) = stack.last_mut() {
            match children.next() {
                Some((_, child)) => {
                    out.extend(child.message.iter().cloned());
                    if !child.children.is_empty() {
                        stack.push(child.children.iter());
                    }
                }
                None => {
                    stack.pop();
                }
            }
        }
        out
    }

    /// [`Self::set`] within limits: a message for a topic that holds no
    /// retained message yet is refused (given back) when the store already
    /// holds `max_messages` messages or the payload would take it past
    /// `max_bytes` (0: no limit). Replacing or removing the message of a
    /// topic that has one is always done, so a client can always update
    /// or clear what it retained.
    pub fn set_within(
        &mut self,
        message: Arc<Message>,
        max_messages: usize,
        max_bytes: usize,
    ) -> Result<Option<Arc<Message>>, Arc<Message>> {
        let limited = max_messages > 0 || max_bytes > 0;
        if limited && !message.payload.is_empty() && !self.holds(&message.topic) {
            let full = max_messages > 0 && self.len >= max_messages;
            let too_many_bytes =
                max_bytes > 0 && self.payload_bytes + message.payload.len() > max_bytes;
            if full || too_many_bytes {
                return Err(message);
            }
        }
        Ok(self.set(message))
    }

    /// Whether `topic` has a message stored (expired or not).
    fn holds(&self, topic: &TopicName) -> bool {
        let mut node = &self.root;
        for level in topic.as_str().split('/') {
            match node.children.get(level) {
                Some(child) => node = child,
                None => return false,
            }
        }
        node.message.is_some()
    }

    /// Removes the retained message of `topic`, pruning nodes left empty.
    pub fn remove(&mut self, topic: &TopicName) -> Option<Arc<Message>> {
        self.remove_where(topic.as_str(), |_| true)
    }

    /// The retained message of `topic`, unless it has expired.
    pub fn get(&self, topic: &TopicName, now: Instant) -> Option<&Arc<Message>> {
        let mut node = &self.root;
        for level in topic.as_str().split('/') {
            node = node.children.get(level)?;
        }
        node.message.as_ref().filter(|message| !is_expired(message, now))
    }

    /// Calls `f` with every retained message whose topic matches `filter`
    /// (its share prefix ignored), skipping expired messages and dropping
    /// them from the store. Only the branches the filter can match are
    /// walked: `+` visits the children of one node, `#` the subtree below
    /// it. A filter starting with a wildcard does not match topics starting
    /// with `$` [MQTT-4.7.2-1]. Returns how many expired messages were
    /// dropped [MQTT-3.3.2-5].
    pub fn for_each_match(
        &mut self,
        filter: &TopicFilter,
        now: Instant,
        mut f: impl FnMut(&Arc<Message>),
    ) -> usize {
        // Expired messages met on the way, to drop after the walk; the
        // vector only allocates if there are any.
        let mut expired: Vec<Arc<Message>> = Vec::new();
        let mut visit = |message: &Arc<Message>| {
            if is_expired(message, now) {
                expired.push(Arc::clone(message));
            } else {
                f(message);
            }
        };
        let root = &self.root;
        let mut stack: SmallVec<[Frame<'_>; 16]> = SmallVec::new();
        stack.push(Frame::Match(root, Some(filter.filter())));
        while let Some(top) = stack.last_mut() {
            let next = match top {
                Frame::Match(node, rest) => {
                    let (node, rest) = (*node, *rest);
                    stack.pop();
                    let Some(rest) = rest else {
                        if let Some(message) = &node.message {
                            visit(message);
                        }
                        continue;
                    };
                    // [MQTT-4.7.2-1] only wildcards in the first level skip
                    // `$` topics.
                    let skip_system = std::ptr::eq(node, root);
                    match split_level(rest) {
                        ("#", _) => {
                            // `#` also matches the parent level (MQTT 3.1.1 section
                            // 4.7.1.2, non-normative).
                            if let Some(message) = &node.message {
                                visit(message);
                            }
                            Frame::Subtree(node.children.iter(), skip_system)
                        }
                        ("+", rest) => Frame::EachChild(node.children.iter(), rest, skip_system),
                        (level, rest) => match node.children.get(level) {
                            Some(child) => Frame::Match(child, rest),
                            None => continue,
                        },
                    }
                }
                Frame::EachChild(children, rest, skip_system) => {
                    match next_child(children, *skip_system) {
                        Some(child) => Frame::Match(child, *rest),
                        None => {
                            stack.pop();
                            continue;
                        }
                    }
                }
                Frame::Subtree(children, skip_system) => match next_child(children, *skip_system) {
                    Some(child) => {
                        if let Some(message) = &child.message {
                            visit(message);
                        }
                        if child.children.is_empty() {
                            continue;
                        }
                        Frame::Subtree(child.children.iter(), false)
                    }
                    None => {
                        stack.pop();
                        continue;
                    }
                },
            };
            stack.push(next);
        }
        drop(stack);
        let dropped = expired.len();
        for message in expired {
            self.remove_where(message.topic.as_str(), |stored| Arc::ptr_eq(stored, &message));
        }
        dropped
    }

    /// Removes the message of `topic` if `condition` holds for it, then
    /// cuts off the chain of nodes left empty.
    fn remove_where(
        &mut self,
        topic: &str,
        condition: impl FnOnce(&Arc<Message>) -> bool,
    ) -> Option<Arc<Message>> {
        let mut node = &mut self.root;
        let mut depth = 0;
        for level in topic.split('/') {
            node = node.children.get_mut(level)?;
            depth += 1;
        }
        if !condition(node.message.as_ref()?) {
            return None;
        }
        let removed = node.message.take()?;
        self.len -= 1;
        self.payload_bytes -= removed.payload.len();
        if !node.children.is_empty() {
            return Some(removed);
        }
        // The deepest node on the path that holds something besides the
        // next node of the path stays; everything below it goes.
        let mut keep = 0;
        let mut node = &self.root;
        for (at, level) in topic.split('/').enumerate() {
            if at > 0 && (node.message.is_some() || node.children.len() > 1) {
                keep = at;
            }
            match node.children.get(level) {
                Some(child) => node = child,
                None => return Some(removed),
            }
        }
        let mut node = &mut self.root;
        for (at, level) in topic.split('/').enumerate() {
            if at == keep {
                if node.children.remove(level).is_some() {
                    self.nodes -= depth - keep;
                }
                break;
            }
            match node.children.get_mut(level) {
                Some(child) => node = child,
                None => break,
            }
        }
        Some(removed)
    }
}

impl fmt::Debug for RetainedStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetainedStore")
            .field("len", &self.len)
            .field("nodes", &self.nodes)
            .finish_non_exhaustive()
    }
}

/// A message whose expiry time has come has no lifetime left to forward
/// [MQTT-3.3.2-5].
fn is_expired(message: &Message, now: Instant) -> bool {
    message.expires_at.is_some_and(|at| at <= now)
}

/// A step of the match walk.
enum Frame<'a> {
    /// Match the rest of the filter (`None`: all of it consumed) at a node.
    Match(&'a TopicNode, Option<&'a str>),
    /// `+`: match the rest of the filter at each remaining child; `true`
    /// skips `$` levels.
    EachChild(LevelIter<'a, TopicNode>, Option<&'a str>, bool),
    /// `#`: every message in the subtrees of the remaining children; `true`
    /// skips `$` levels.
    Subtree(LevelIter<'a, TopicNode>, bool),
}

fn next_child<'a>(
    children: &mut LevelIter<'a, TopicNode>,
    skip_system: bool,
) -> Option<&'a TopicNode> {
    children.find(|(level, _)| !(skip_system && level.starts_with('$'))).map(|(_, child)| child)
}

impl Drop for TopicNode {
    /// Iterative: dropping a chain of 32,768 nodes recursively would
    /// overflow the stack.
    fn drop(&mut self) {
        if self.children.is_empty() {
            return;
        }
        let mut pending = Vec::new();
        self.children.drain_into(&mut pending);
        while let Some(mut node) = pending.pop() {
            node.children.drain_into(&mut pending);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::strategies::{plain_filter_text, topic_text};
    use crate::protocol::{topic_matches, BoxedPublishProperties, QoS};
    use bytes::Bytes;
    use proptest::prelude::*;
    use std::collections::BTreeSet;
    use std::time::Duration;

    fn message(topic: &str, payload: &'static str) -> Arc<Message> {
        message_expiring(topic, payload, None)
    }

    fn message_expiring(
        topic: &str,
        payload: &'static str,
        expires_at: Option<Instant>,
    ) -> Arc<Message> {
        Arc::new(Message {
            topic: TopicName::new(topic.to_owned()).unwrap(),
            payload: Bytes::from_static(payload.as_bytes()),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: BoxedPublishProperties::none(),
            publisher: None,
            expires_at,
            id: 0,
        })
    }

    fn filter(text: &str) -> TopicFilter {
        TopicFilter::new(text.to_owned()).unwrap()
    }

    fn topics(store: &mut RetainedStore, text: &str, now: Instant) -> Vec<String> {
        let mut out = Vec::new();
        store.for_each_match(&filter(text), now, |m| out.push(m.topic.to_string()));
        out.sort_unstable();
        out
    }

    fn store_of(names: &[&str]) -> RetainedStore {
        let mut store = RetainedStore::new();
        for name in names {
            store.set(message(name, "x"));
        }
        store
    }

    #[test]
    fn set_replaces_and_empty_payload_deletes() {
        let now = Instant::now();
        let mut store = RetainedStore::new();
        assert!(store.set(message("a/b", "1")).is_none());
        let previous = store.set(message("a/b", "2")).unwrap();
        assert_eq!(previous.payload, "1");
        assert_eq!(store.len(), 1);
        assert_eq!(store.get(&TopicName::new("a/b").unwrap(), now).unwrap().payload, "2");
        // [MQTT-3.3.1-10] A zero-byte retained message removes the retained
        // message of its topic; [MQTT-3.3.1-11] and is not stored itself.
        let removed = store.set(message("a/b", "")).unwrap();
        assert_eq!(removed.payload, "2");
        assert!(store.is_empty());
        assert_eq!(store.node_count(), 0);
        assert!(store.set(message("a/b", "")).is_none());
        assert!(store.is_empty());
        assert!(topics(&mut store, "#", now).is_empty());
    }

    #[test]
    fn wildcards_walk_only_matching_topics() {
        let now = Instant::now();
        let mut store = store_of(&[
            "sport",
            "sport/tennis/player1",
            "sport/tennis/player1/ranking",
            "sport/tennis/player2",
            "sport/golf",
            "/finance",
            "news",
        ]);
        // MQTT 3.1.1 section 4.7.1: "sport/#" matches "sport" too.
        assert_eq!(
            topics(&mut store, "sport/#", now),
            vec![
                "sport",
                "sport/golf",
                "sport/tennis/player1",
                "sport/tennis/player1/ranking",
                "sport/tennis/player2"
            ]
        );
        assert_eq!(
            topics(&mut store, "sport/tennis/player1/#", now),
            vec!["sport/tennis/player1", "sport/tennis/player1/ranking"]
        );
        assert_eq!(
            topics(&mut store, "sport/tennis/+", now),
            vec!["sport/tennis/player1", "sport/tennis/player2"]
        );
        assert!(topics(&mut store, "sport/+/player1/ranking/+", now).is_empty());
        assert_eq!(topics(&mut store, "+/+", now), vec!["/finance", "sport/golf"]);
        assert_eq!(topics(&mut store, "/+", now), vec!["/finance"]);
        assert_eq!(topics(&mut store, "+", now), vec!["news", "sport"]);
        assert_eq!(topics(&mut store, "news", now), vec!["news"]);
        assert!(topics(&mut store, "new", now).is_empty());
        assert_eq!(topics(&mut store, "#", now).len(), 7);
        // The share prefix is not part of the filter.
        assert_eq!(topics(&mut store, "$share/g/news", now), vec!["news"]);
    }

    #[test]
    fn dollar_topics_do_not_match_leading_wildcards() {
        // [MQTT-4.7.2-1]
        let now = Instant::now();
        let mut store = store_of(&["$SYS/uptime", "$SYS/monitor/Clients", "a/$b", "a"]);
        assert_eq!(topics(&mut store, "#", now), vec!["a", "a/$b"]);
        assert!(topics(&mut store, "+/monitor/Clients", now).is_empty());
        assert!(topics(&mut store, "+/uptime", now).is_empty());
        assert_eq!(topics(&mut store, "$SYS/#", now), vec!["$SYS/monitor/Clients", "$SYS/uptime"]);
        assert_eq!(topics(&mut store, "$SYS/monitor/+", now), vec!["$SYS/monitor/Clients"]);
        assert_eq!(topics(&mut store, "a/+", now), vec!["a/$b"]);
    }

    #[test]
    fn expired_messages_are_skipped_and_dropped() {
        // [MQTT-3.3.2-5] An expired message is not delivered.
        let now = Instant::now();
        let later = now + Duration::from_secs(10);
        let mut store = RetainedStore::new();
        store.set(message_expiring("a/old", "1", Some(now + Duration::from_secs(5))));
        store.set(message_expiring("a/new", "2", Some(now + Duration::from_secs(60))));
        store.set(message("a/forever", "3"));
        store.set(message_expiring("deep/x/y/z", "4", Some(now + Duration::from_secs(1))));
        assert_eq!(store.len(), 4);
        assert_eq!(topics(&mut store, "#", now).len(), 4);
        let old = TopicName::new("a/old").unwrap();
        assert!(store.get(&old, now).is_some());
        assert!(store.get(&old, later).is_none());
        let mut seen = 0;
        let dropped = store.for_each_match(&filter("a/+"), later, |_| seen += 1);
        assert_eq!((seen, dropped), (2, 1), "two delivered, one dropped and counted");
        assert_eq!(store.len(), 3, "the expired message met on the walk is dropped");
        assert_eq!(topics(&mut store, "#", later), vec!["a/forever", "a/new"]);
        assert_eq!(store.len(), 2);
        // a, a/new, a/forever: the expired deep chain is pruned.
        assert_eq!(store.node_count(), 3);
    }

    #[test]
    fn remove_prunes_every_node() {
        let names = ["a/b/c", "a/b", "a", "/", "x/y/z/w", "a/b/d", "$SYS/x"];
        let mut store = store_of(&names);
        assert!(store.node_count() > 0);
        assert!(store.remove(&TopicName::new("a/q").unwrap()).is_none());
        for name in names {
            let topic = TopicName::new(name).unwrap();
            assert!(store.remove(&topic).is_some(), "{name}");
            assert!(store.remove(&topic).is_none(), "{name}");
        }
        assert!(store.is_empty());
        assert_eq!(store.node_count(), 0);
    }

    #[test]
    fn a_hundred_thousand_topics_under_a_hash() {
        let now = Instant::now();
        let mut store = RetainedStore::new();
        for i in 0..100_000 {
            store.set(message(&format!("dev/{}/t{}", i % 1000, i / 1000), "x"));
        }
        store.set(message("$SYS/load", "x"));
        let mut count = 0;
        store.for_each_match(&filter("#"), now, |_| count += 1);
        assert_eq!(count, 100_000);
        let mut count = 0;
        store.for_each_match(&filter("dev/7/+"), now, |_| count += 1);
        assert_eq!(count, 100);
        assert_eq!(store.all().len(), 100_001, "all: `$` topics too");
    }

    #[test]
    fn very_deep_topics_do_not_overflow_the_stack() {
        let now = Instant::now();
        let mut store = RetainedStore::new();
        let deep = "/".repeat(32_766);
        store.set(message(&deep, "x"));
        assert_eq!(topics(&mut store, "#", now).len(), 1);
        let all_plus = vec!["+"; 32_767].join("/");
        assert_eq!(topics(&mut store, &all_plus, now).len(), 1);
        assert!(store.remove(&TopicName::new(deep.clone()).unwrap()).is_some());
        assert_eq!(store.node_count(), 0);
        store.set(message(&deep, "x"));
        drop(store);
    }

    proptest! {
        #[test]
        fn matching_agrees_with_topic_matches(
            names in prop::collection::btree_set(topic_text(), 0..30),
            filters in prop::collection::vec(plain_filter_text(), 1..10),
        ) {
            let now = Instant::now();
            let mut store = RetainedStore::new();
            for name in &names {
                store.set(message(name, "x"));
            }
            prop_assert_eq!(store.len(), names.len());
            for text in &filters {
                let expected: BTreeSet<String> =
                    names.iter().filter(|name| topic_matches(text, name)).cloned().collect();
                let mut got = Vec::new();
                store.for_each_match(&filter(text), now, |m| got.push(m.topic.to_string()));
                prop_assert_eq!(got.len(), expected.len(), "each message once");
                prop_assert_eq!(got.into_iter().collect::<BTreeSet<_>>(), expected);
            }
            for name in &names {
                prop_assert!(store.remove(&TopicName::new(name.clone()).unwrap()).is_some());
            }
            prop_assert_eq!(store.node_count(), 0);
        }
    }
}
