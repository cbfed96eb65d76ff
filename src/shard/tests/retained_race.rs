//! A retained message published while a client subscribes, with three
//! shards: the subscriber's, the publisher's and the topic's owner, and
//! the messages between them carried in every order the mesh allows (each
//! channel in order, the channels in any interleaving). The subscriber must
//! get the message exactly once, live or as a retained message
//! [MQTT-3.3.1-6]: "When a new subscription is established, the last
//! retained message, if any, on each matching topic name MUST be sent to
//! the subscriber".

use super::*;
use proptest::prelude::*;

impl Cluster {
    /// Carries the first message queued from `from` to `to`, if any.
    fn deliver_one(&mut self, from: usize, to: usize) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        match self.outboxes[from].poll_pop(to, &mut cx) {
            Poll::Ready(Some(RouterMessage::Shard(message))) => {
                let origin = ShardId::from_index(from).unwrap();
                self.shards[to].handle_shard_message(origin, message, self.now);
                true
            }
            _ => false,
        }
    }
}

/// A topic of three levels whose owner (home shard) is `owner`.
fn topic_owned_by(owner: usize) -> String {
    (0..)
        .map(|i| format!("race/{i}/x"))
        .find(|t| home_shard(t.as_bytes(), 3).index() == owner)
        .unwrap()
}

/// The six directed channels between three shards.
const CHANNELS: [(usize, usize); 6] = [(0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1)];

/// Subscribes on shard 0 and publishes retained on shard 1 at step
/// `publish_at`, carrying one message per step on the channel `schedule`
/// picks (the next non-empty one after it), then everything else.
fn race(owner: usize, wildcard: bool, publish_at: usize, schedule: &[usize]) -> Vec<Vec<u8>> {
    let mut cluster = Cluster::new(3);
    let topic = topic_owned_by(owner);
    let sub = cluster.connect(&id_on("s", 0, 3));
    let publisher = cluster.connect(&id_on("p", 1, 3));
    cluster.subscribe(&sub, if wildcard { "race/+/x" } else { &topic });
    let mut published = false;
    for (step, &pick) in schedule.iter().enumerate() {
        if step == publish_at {
            cluster.send(&publisher, publish(&topic, b"v1", true));
            published = true;
        }
        (0..CHANNELS.len())
            .map(|k| CHANNELS[(pick + k) % CHANNELS.len()])
            .find(|&(from, to)| cluster.deliver_one(from, to));
    }
    if !published {
        cluster.send(&publisher, publish(&topic, b"v1", true));
    }
    cluster.settle();
    payloads(&cluster.output(&sub)).into_iter().map(<[u8]>::to_vec).collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn with_three_shards_a_retained_message_racing_a_subscription_arrives_exactly_once(
        owner in 0usize..3,
        wildcard in any::<bool>(),
        publish_at in 0usize..16,
        schedule in proptest::collection::vec(0usize..6, 0..40),
    ) {
        let received = race(owner, wildcard, publish_at, &schedule);
        prop_assert!(received.iter().all(|payload| payload == b"v1"), "{:?}", received);
        prop_assert_eq!(received.len(), 1, "owner {} wildcard {}", owner, wildcard);
    }
}
