//! Retained messages cluster-wide (issue 17, item 7): a JetStream
//! key-value bucket holds the retained message of every topic, and every
//! node watches it and applies each change to its own retained store.
//!
//! * **Writing.** A retained message a node accepts is stored on the node
//!   at once, as on a single node, by the shard that owns its topic, which
//!   then hands it to the bridge; the bridge puts it into the bucket under
//!   the topic's key (an empty payload [MQTT-3.3.1-10] deletes the key
//!   instead), in the order the shards handed them over, without waiting
//!   for the acknowledgement before the next (a failure is counted and
//!   logged).
//! * **Reading.** Each node watches the whole bucket from the latest value
//!   of every key (at start: the current content, deletes included), and
//!   hands each change to the shard that owns the topic, which stores it
//!   (and writes it to its durable log) unless it holds that very message
//!   already (the echo of its own put).
//! * **Races.** Two nodes that set one topic at about the same time each
//!   store their own message at once; the bucket orders the two puts (its
//!   revision), and every node applies every change in revision order, so
//!   every node ends with the message of the higher revision: the last
//!   writer by bucket revision wins everywhere. (The owner shard both
//!   stores its node's writes and applies the bucket's changes, one after
//!   the other, so a write it stored reaches the bucket after every change
//!   it had applied, and the bucket's last change is applied last on every
//!   node.) In between, a subscriber
//!   may be sent either message (each was the topic's retained message at
//!   some point).
//! * **Keys.** A topic's key is its NATS subject under [`KEY_PREFIX`]
//!   (see [`super::subject`]): its characters are all valid in keys
//!   (`A-Za-z0-9-_.`) and the encoding is injective, so a delete, which
//!   carries only the key, is decoded back to its topic.
//! * **Values.** The message in `crate::message::wire` form, which keeps a
//!   Message Expiry Interval as an absolute wall-clock time [MQTT-3.3.2-5]:
//!   a node that applies a message later gets what is left of it, and an
//!   expired one is never sent (the store checks the expiry on reads). The
//!   bucket keeps the expired message until the topic is set or deleted
//!   again.
//! * **Without JetStream** (a NATS server started without `-js`), or
//!   until the bucket can be opened, retained messages stay on their node:
//!   the bridge logs one error naming `cluster.retained` and the fix, and
//!   keeps trying every [`RETRY`]. `cluster.retained = "node"` keeps them
//!   per node on purpose (no JetStream needed).
//! * What a node held in its durable log stays its own copy; at start the
//!   bucket's content replaces it topic by topic, and a topic the bucket
//!   does not know is kept on that node only.

use super::kv::open_bucket;
use super::sessions::ToBridge;
use super::subject::{decode_topic, topic_subject};
use super::{BridgeCounters, ClusterLink, FromBridge, Shared};
use crate::message::wire::{self, Clocks};
use crate::message::Message;
use crate::protocol::{BoxedPublishProperties, QoS, TopicName};
use crate::router::home_shard;
use async_nats::jetstream::{self, kv};
use bytes::{Bytes, BytesMut};
use futures_lite::StreamExt;
use std::sync::Arc;
use std::time::Duration;

/// The first token of every key: a topic's key is its NATS subject under
/// it (`r.t.a.b` for `a/b`).
pub(super) const KEY_PREFIX: &str = "r";

/// How long the bridge waits before it tries again to open the bucket or
/// to watch it.
const RETRY: Duration = Duration::from_secs(2);

/// The name of the bucket of a cluster with `subject_prefix`: its tokens
/// joined by `_`, then `_retained` (`ringmq_retained`). Bucket names allow
/// `A-Za-z0-9-_` only.
pub fn bucket_name(subject_prefix: &str) -> String {
    format!("{}_retained", subject_prefix.replace('.', "_"))
}

impl ClusterLink {
    /// Hands a retained message (or delete) published on this node to the
    /// bridge, for the cluster's bucket, from the shard that stored it
    /// (see `Shard::retain_published`); not when retained messages are per
    /// node, nor for a local-only topic or the broker's own messages.
    pub fn put_retained(&self, message: &Arc<Message>) {
        let shared = &self.shared;
        if !shared.retained_cluster
            || message.publisher.is_none()
            || shared.local_only.iter().any(|filter| filter.matches(&message.topic))
        {
            return;
        }
        shared.sessions.push_control(ToBridge::Retain(Arc::clone(message)));
    }
}

/// The bridge's side: writes into the bucket, and the watch task.
pub(super) struct RetainedSync {
    context: jetstream::Context,
    bucket: String,
    /// `$KV.{bucket}.`: the subject prefix of the bucket's keys.
    subjects: String,
    /// `cluster.kv_replicas`, for a bucket this node creates.
    replicas: usize,
    shared: Arc<Shared>,
}

impl RetainedSync {
    /// The sync of the bucket of `subject_prefix`, through `client`.
    pub(super) fn new(
        client: async_nats::Client,
        subject_prefix: &str,
        replicas: usize,
        shared: Arc<Shared>,
    ) -> Self {
        let bucket = bucket_name(subject_prefix);
        let subjects = format!("$KV.{bucket}.");
        Self { context: jetstream::new(client), subjects, replicas, bucket, shared }
    }

    /// Writes the retained message `message` (accepted on this node) into
    /// the bucket: a put, or a delete for an empty payload. Returns once it
    /// is sent; the acknowledgement is awaited by a task of its own. The
    /// broker's own messages (no publisher: `$SYS`) are every node's own
    /// and are not written.
    pub(super) async fn publish(&self, message: &Message, buffer: &mut BytesMut) {
        if message.publisher.is_none() {
            return;
        }
        let counters = &self.shared.counters;
        let mut subject = String::new();
        if !topic_subject(KEY_PREFIX, message.topic.as_str(), &mut subject) {
            return BridgeCounters::add(&counters.subject_too_long);
        }
        subject.insert_str(0, &self.subjects);
        let sent = if message.payload.is_empty() {
            // A delete marker, as `kv::Store::delete` writes it (ADR-8).
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("KV-Operation", "DEL");
            self.context.publish_with_headers(subject, headers, Bytes::new()).await
        } else {
            buffer.clear();
            if wire::encode(message, Clocks::read(), buffer).is_err() {
                return BridgeCounters::add(&counters.retained_failed);
            }
            self.context.publish(subject, buffer.split().freeze()).await
        };
        let ack = match sent {
            Ok(ack) => ack,
            Err(error) => return self.failed(message, &error),
        };
        let shared = Arc::clone(&self.shared);
        let topic = message.topic.clone();
        tokio::task::spawn_local(async move {
            match ack.await {
                Ok(_) => BridgeCounters::add(&shared.counters.retained_written),
                Err(error) => {
                    BridgeCounters::add(&shared.counters.retained_failed);
                    tracing::warn!(
                        %error,
                        topic = %topic.as_str(),
                        "retained message not written to the cluster's bucket: it stays on \
                         this node (does NATS run with JetStream, -js?)"
                    );
                }
            }
        });
    }

    fn failed(&self, message: &Message, error: &dyn std::fmt::Display) {
        BridgeCounters::add(&self.shared.counters.retained_failed);
        tracing::warn!(
            %error,
            topic = %message.topic.as_str(),
            "retained message not written to the cluster's bucket: it stays on this node"
        );
    }

    /// Opens (or creates) the bucket, watches it and hands every change to
    /// the shards, forever: after an error it starts again (a new watch
    /// delivers the latest value of every key again, which the shards
    /// ignore when they hold it already). Ends when the bridge stops.
    pub(super) async fn run(self: std::rc::Rc<Self>) {
        let mut warned = false;
        loop {
            let store = match self.open().await {
                Ok(store) => store,
                Err(error) => {
                    if !warned {
                        tracing::error!(
                            %error,
                            bucket = %self.bucket,
                            "cluster.retained = \"cluster\": cannot open the JetStream bucket; \
                             start nats-server with -js (and --store_dir), or set \
                             cluster.retained = \"node\". Retained messages stay on this node \
                             until then (trying again every 2 s)"
                        );
                        warned = true;
                    }
                    tokio::time::sleep(RETRY).await;
                    continue;
                }
            };
            warned = false;
            match store.watch_with_history(">").await {
                Ok(mut watch) => {
                    tracing::info!(
                        bucket = %self.bucket,
                        "cluster-wide retained messages: bucket open"
                    );
                    while let Some(entry) = watch.next().await {
                        match entry {
                            Ok(entry) => self.apply(entry),
                            Err(error) => {
                                tracing::warn!(%error, "watching the retained bucket failed");
                                break;
                            }
                        }
                    }
                }
                Err(error) => tracing::warn!(%error, "cannot watch the retained bucket"),
            }
            tokio::time::sleep(RETRY).await;
        }
    }

    /// The bucket (see [`open_bucket`]).
    async fn open(&self) -> Result<kv::Store, async_nats::Error> {
        open_bucket(&self.context, &self.bucket, self.replicas).await
    }

    /// Hands one change of the bucket to the shard of its topic.
    fn apply(&self, entry: kv::Entry) {
        let counters = &self.shared.counters;
        let Some(message) = entry_message(&entry.key, entry.value, entry.operation, Clocks::read())
        else {
            tracing::debug!(key = %entry.key, "not a retained message of ringmq's");
            return BridgeCounters::add(&counters.malformed);
        };
        let topic = message.topic.as_str();
        if self.shared.local_only.iter().any(|filter| filter.matches(&message.topic)) {
            return;
        }
        let shard = home_shard(topic.as_bytes(), self.shared.events.len());
        self.shared.events[shard.index()].push_control(FromBridge::Retained(Arc::new(message)));
        BridgeCounters::add(&counters.retained_applied);
    }
}

/// The retained message a bucket entry stands for: the stored message of
/// a put, or for a delete a message of its topic with an empty payload
/// (what deletes a retained message [MQTT-3.3.1-10]). `None` when the key
/// or the value is not one this module writes.
fn entry_message(
    key: &str,
    value: Bytes,
    operation: kv::Operation,
    clocks: Clocks,
) -> Option<Message> {
    let topic = decode_topic(KEY_PREFIX, key)?;
    match operation {
        kv::Operation::Put => {
            let message = wire::decode(value, clocks).ok()?;
            (message.topic.as_str() == topic && message.publisher.is_some()).then_some(message)
        }
        kv::Operation::Delete | kv::Operation::Purge => Some(Message {
            topic: TopicName::new(topic).ok()?,
            payload: Bytes::new(),
            qos: QoS::AtMostOnce,
            retain: true,
            properties: BoxedPublishProperties::none(),
            // Every message but the broker's own has a publisher: this one
            // stands for a client's delete.
            publisher: Some("".into()),
            expires_at: None,
            id: 0,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(topic: &str) -> String {
        let mut key = String::new();
        assert!(topic_subject(KEY_PREFIX, topic, &mut key));
        key
    }

    #[test]
    fn keys_are_valid_bucket_keys_and_decode_back_to_their_topic() {
        for topic in ["a/b", "$SYS/x", "/", "a b/c.d/é/+x", "_/__"] {
            let key = key(topic);
            assert!(
                key.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_./=".contains(&b)),
                "{key}"
            );
            assert!(!key.starts_with('.') && !key.ends_with('.'), "{key}");
            assert_eq!(decode_topic(KEY_PREFIX, &key).as_deref(), Some(topic));
        }
        assert_eq!(bucket_name("prod.mqtt"), "prod_mqtt_retained");
    }

    #[test]
    fn a_put_carries_the_message_and_its_expiry_a_delete_empties_the_topic() {
        let clocks = Clocks::read();
        let message = Message {
            topic: TopicName::new("a/b").unwrap(),
            payload: Bytes::from_static(b"v"),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: BoxedPublishProperties::none(),
            publisher: Some("c".into()),
            expires_at: Some(clocks.now + Duration::from_secs(30)),
            id: 0,
        };
        let mut value = BytesMut::new();
        wire::encode(&message, clocks, &mut value).unwrap();
        let back = entry_message(&key("a/b"), value.freeze(), kv::Operation::Put, clocks).unwrap();
        assert_eq!(Message { expires_at: message.expires_at, ..back.clone() }, message);
        let left = back.expires_at.unwrap().saturating_duration_since(clocks.now);
        assert!(left > Duration::from_secs(29), "[MQTT-3.3.2-5] the expiry travels: {left:?}");
        for operation in [kv::Operation::Delete, kv::Operation::Purge] {
            let delete = entry_message(&key("a/b"), Bytes::new(), operation, clocks).unwrap();
            assert_eq!(delete.topic.as_str(), "a/b");
            assert!(delete.payload.is_empty() && delete.retain);
        }
        // A value whose topic is not its key's, or not a message: ignored.
        let mut other = BytesMut::new();
        wire::encode(&message, clocks, &mut other).unwrap();
        let wrong = entry_message(&key("a/c"), other.freeze(), kv::Operation::Put, clocks);
        assert!(wrong.is_none());
        let junk = Bytes::from_static(b"junk");
        assert!(entry_message(&key("a/b"), junk, kv::Operation::Put, clocks).is_none());
        assert!(entry_message("x", Bytes::new(), kv::Operation::Delete, clocks).is_none());
    }
}
