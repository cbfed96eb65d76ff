//! The shard's side of the cluster's retained messages (issue 17 item 7;
//! `router::cluster::retained`): every change of the cluster's bucket for
//! a topic this shard owns is stored here as a client's retained publish
//! would be (within the limits, written to the durable log).

use super::Shard;
use crate::message::Message;
use std::sync::Arc;
use std::time::Instant;

impl Shard {
    /// Stores a retained message published on this node, on the shard
    /// that owns its topic; in a cluster it is then handed to the bridge
    /// for the cluster's bucket. From this shard, after the local store:
    /// the shard applies the bucket's changes of its topics too, so the
    /// bucket's revision of this write comes after every change the shard
    /// applied before it, and the last change any node applies is the
    /// bucket's last.
    pub(super) fn retain_published(&mut self, message: Arc<Message>, now: Instant) {
        self.retain_here(Arc::clone(&message), now);
        if let Some(cluster) = &self.cluster {
            cluster.put_retained(&message);
        }
    }

    /// Stores the cluster's retained message of a topic this shard owns
    /// (an empty payload deletes it [MQTT-3.3.1-10]), unless the store
    /// holds that message already: the bucket sends a node its own writes
    /// back, and sends every key again when its watch starts over. Changes
    /// arrive in the bucket's revision order, so the last one applied is
    /// the cluster's last writer.
    pub(super) fn retain_from_cluster(&mut self, message: Arc<Message>, now: Instant) {
        let held = self.retained.get(&message.topic, now);
        let same = match held {
            // An expiry comes back from the wall clock a little moved.
            Some(held) => {
                held.payload == message.payload
                    && held.qos == message.qos
                    && held.properties == message.properties
                    && held.publisher == message.publisher
                    && held.expires_at.is_some() == message.expires_at.is_some()
            }
            None => message.payload.is_empty(),
        };
        if !same {
            self.retain_here(message, now);
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::message::Message;
    use crate::protocol::{BoxedPublishProperties, QoS, TopicFilter, TopicName};
    use crate::router::cluster::{ClusterSetup, FromBridge};
    use crate::router::{Outbox, ShardId};
    use crate::session::SessionLimits;
    use crate::shard::Shard;
    use bytes::Bytes;
    use std::rc::Rc;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    fn retained(topic: &str, payload: &'static [u8], expires_at: Option<Instant>) -> Arc<Message> {
        Arc::new(Message {
            topic: TopicName::new(topic).unwrap(),
            payload: Bytes::from_static(payload),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: BoxedPublishProperties::none(),
            publisher: Some("elsewhere".into()),
            expires_at,
            id: 0,
        })
    }

    fn payloads(shard: &mut Shard, filter: &str, now: Instant) -> Vec<Bytes> {
        let filter = TopicFilter::new(filter).unwrap();
        shard.retained_matching(&filter, now).iter().map(|m| m.payload.clone()).collect()
    }

    #[test]
    fn the_buckets_changes_set_replace_and_delete_in_order() {
        let now = Instant::now();
        let id = ShardId::from_index(0).unwrap();
        let mut shard = Shard::new(id, 1, SessionLimits::default(), Rc::new(Outbox::new(1)), 1);
        let setup = ClusterSetup::for_tests(1, &[]);
        shard.set_cluster(Rc::new(setup.link(id)));
        shard.handle_cluster(FromBridge::Retained(retained("a/b", b"1", None)), now);
        assert_eq!(payloads(&mut shard, "a/#", now), ["1"]);
        // [MQTT-3.3.1-5] the later revision replaces it; an echo changes
        // nothing.
        shard.handle_cluster(FromBridge::Retained(retained("a/b", b"2", None)), now);
        shard.handle_cluster(FromBridge::Retained(retained("a/b", b"2", None)), now);
        assert_eq!(payloads(&mut shard, "a/#", now), ["2"]);
        // [MQTT-3.3.1-10] a delete from the bucket removes it.
        shard.handle_cluster(FromBridge::Retained(retained("a/b", b"", None)), now);
        assert!(payloads(&mut shard, "a/#", now).is_empty());
        // [MQTT-3.3.2-5] a message whose expiry passed is not sent.
        let soon = Some(now + Duration::from_secs(1));
        shard.handle_cluster(FromBridge::Retained(retained("a/c", b"3", soon)), now);
        assert_eq!(payloads(&mut shard, "a/#", now), ["3"]);
        assert!(payloads(&mut shard, "a/#", now + Duration::from_secs(2)).is_empty());
        // Nothing goes back to the bridge.
        assert!(setup.take_published().is_empty());
        assert!(setup.take_sessions().2.is_empty());
    }

    #[test]
    fn a_retained_publish_goes_to_the_bucket_from_the_shard_that_stored_it() {
        use crate::protocol::{Packet, Publish};
        use crate::shard::state::cluster::tests::{connect, shard};
        let now = Instant::now();
        let n = 2;
        let shards: Vec<ShardId> = (0..n).filter_map(ShardId::from_index).collect();
        let (mut shard, setup) = shard(n, &["local/#"]);
        let (key, id) = connect(&mut shard, n, "p", now);
        // One topic of each shard, and a local-only one.
        let topic_on = |shard: ShardId| {
            (0..)
                .map(|i| format!("t/{i}"))
                .find(|t| crate::router::home_shard(t.as_bytes(), n) == shard)
                .unwrap()
        };
        let (here, there) = (topic_on(shards[0]), topic_on(shards[1]));
        for topic in [here.as_str(), there.as_str(), "local/x"] {
            let publish = Packet::Publish(Publish {
                dup: false,
                qos: QoS::AtMostOnce,
                retain: true,
                topic: TopicName::new(topic).unwrap(),
                packet_id: None,
                properties: Default::default(),
                payload: Bytes::from_static(b"v"),
            });
            assert!(shard.handle_packet(key, id, now, publish).unwrap());
        }
        // Only the topic this shard owns, once stored here; the other
        // shard hands its own over when it stores it.
        assert_eq!(setup.take_sessions().2, [here]);
    }
}
