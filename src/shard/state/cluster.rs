//! The shard's side of a cluster: what it hands the NATS bridge (through
//! the hooks in [`Shard::route`] and the interest announcements) and what
//! it takes from it.

use super::Shard;
use crate::message::Message;
use crate::protocol::TopicFilter;
use crate::router::cluster::{ClusterLink, FromBridge};
use crate::router::ShardMessage;
use crate::shard::drops::DropCause;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

impl Shard {
    /// Links the shard to the other nodes of a cluster: from now on its
    /// accepted publishes and its interest changes go to the bridge too,
    /// and a SUBACK also waits for the bridge's subscription. Called
    /// before the shard takes any subscription.
    pub fn set_cluster(&mut self, link: Rc<ClusterLink>) {
        self.interest.set_cluster(Rc::clone(&link));
        self.cluster = Some(link);
    }

    /// The node's bridge counters, for this shard's snapshot: shard 0
    /// reports them, the others report zeros (so that a sum over the
    /// shards is the node's figure).
    pub(super) fn cluster_counters(&self) -> crate::metrics::ClusterCounters {
        match &self.cluster {
            Some(link) if self.id.index() == 0 => link.counters(),
            _ => Default::default(),
        }
    }

    /// Handles what the bridge sends.
    pub fn handle_cluster(&mut self, event: FromBridge, now: Instant) {
        match event {
            FromBridge::Publish(message) => self.route_remote(&message, now),
            FromBridge::AckedPublish { message, ack } => {
                self.durable_route_start();
                self.route_remote(&message, now);
                self.remote_routed(ack);
            }
            FromBridge::GroupPublish { filter, message, ack } => {
                self.durable_route_start();
                let given = self.route_group(&filter, message, now);
                match ack {
                    // Accepted once routed (durable), as a plain message.
                    Some(ack) if given => self.remote_routed(ack),
                    // No member here: its node sends it to another.
                    Some(ack) => self.refuse_remote(ack),
                    None if given => {}
                    None => {
                        self.counters.shard.deliveries_dropped += 1;
                        self.count_drops(DropCause::NoGroupMember, 1, now);
                    }
                }
            }
            FromBridge::Accepted(ticket) => self.bridge_accepted(ticket),
            FromBridge::InterestAck(revision) => {
                let mut released = std::mem::take(&mut self.released);
                self.interest.handle_bridge_ack(revision, |key, ack| released.push((key, ack)));
                for &(key, ack) in &released {
                    self.release_acks(key, ack);
                }
                released.clear();
                self.released = released;
                self.ask_acknowledged_retained(now);
            }
            FromBridge::Retained(message) => self.retain_from_cluster(message, now),
            FromBridge::Takeover(takeover) => self.handle_cluster_takeover(takeover, now),
            FromBridge::Forwarded(forwarded) => self.handle_forwarded(forwarded, now),
        }
    }

    /// A message for one member, on this node, of the shared subscription
    /// `filter` [MQTT-4.8.2]: the shards with members take turns. In a
    /// cluster every message bridged to NATS reaches the shared groups
    /// this way, also those of its own node (the publishing node's bridge
    /// picks one node among those with members), so that each message
    /// reaches one member in the whole cluster. Returns whether it was
    /// given to a member (here or on a peer shard): not when the group has
    /// no member here any more.
    fn route_group(&mut self, filter: &TopicFilter, message: Arc<Message>, now: Instant) -> bool {
        match self.interest.replica().next_group_member(filter) {
            Some((shard, group)) if shard == self.id => {
                self.deliver_to_group(group, &message, None, now);
                true
            }
            Some((shard, group)) => {
                // Counted like a local publish's: the peer reports it
                // durable with the rest (see `state/persist.rs`).
                self.durable_sent(shard, &message);
                self.outbox.push(shard, ShardMessage::GroupPublish { group, message });
                true
            }
            None => false,
        }
    }

    /// A message published on another node: delivered to this shard's
    /// subscribers and forwarded to its peers with interest, as a local
    /// publish, but never back to the bridge. Shared groups get it through
    /// the publishing node's bridge ([`Self::route_group`]); its
    /// RETAIN flag is not stored here: the cluster's retained messages come
    /// from their bucket ([`FromBridge::Retained`]), or stay per node.
    fn route_remote(&mut self, message: &Arc<Message>, now: Instant) {
        self.deliver_local(message, None, now);
        let shards = self.interest.replica().matching_shards(&message.topic);
        let me = self.id;
        for shard in shards.iter().filter(|&shard| shard != me) {
            if !self.outbox.push_publish(shard, message, &mut self.counters.router) {
                self.count_drops(DropCause::PeerOverloaded, 1, now);
            } else {
                // The peer counts every QoS 1/2 message it gets from this
                // shard in its durability reports: so must this side, or
                // a report would cover messages of this shard's own
                // clients that the peer has not logged yet.
                self.durable_sent(shard, message);
            }
        }
    }
}

/// Shared with the other cluster tests of `state` (retained messages,
/// sessions).
#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::protocol::{
        Connect, Packet, PacketId, ProtocolVersion, Publish, QoS, Subscribe, Subscription,
        SubscriptionOptions, TopicFilter, TopicName,
    };
    use crate::router::cluster::ClusterSetup;
    use crate::router::{home_shard, Outbox, ShardId};
    use crate::session::SessionLimits;
    use crate::shard::{ConnectOutcome, ConnectionId, SessionKey};
    use bytes::BytesMut;

    /// One shard of `n` (shard 0) linked to a bridge the test plays.
    pub(in crate::shard::state) fn shard(n: usize, local_only: &[&str]) -> (Shard, ClusterSetup) {
        let id = ShardId::from_index(0).unwrap();
        let mut shard = Shard::new(id, n, SessionLimits::default(), Rc::new(Outbox::new(n)), 1);
        let setup = ClusterSetup::for_tests(n, local_only);
        shard.set_cluster(Rc::new(setup.link(id)));
        (shard, setup)
    }

    /// Connects a client homed on shard 0 of `n`.
    pub(in crate::shard::state) fn connect(
        shard: &mut Shard,
        n: usize,
        prefix: &str,
        now: Instant,
    ) -> (SessionKey, ConnectionId) {
        let client_id = (0..)
            .map(|i| format!("{prefix}{i}"))
            .find(|id| home_shard(id.as_bytes(), n).index() == 0)
            .unwrap();
        let connect = Connect {
            version: ProtocolVersion::V3_1_1,
            clean_start: true,
            keep_alive: 0,
            client_id: client_id.as_str().into(),
            will: None,
            username: None,
            password: None,
            properties: Default::default(),
        };
        let id = shard.new_connection_id();
        let ConnectOutcome::Accepted(key) =
            shard.handle_connect(now, &connect, client_id.into(), id)
        else {
            panic!("refused")
        };
        assert!(matches!(output(shard, key, id, now)[..], [Packet::ConnAck(_)]));
        (key, id)
    }

    pub(in crate::shard::state) fn output(
        shard: &mut Shard,
        key: SessionKey,
        id: ConnectionId,
        now: Instant,
    ) -> Vec<Packet> {
        let mut out = BytesMut::new();
        shard.poll_transmit(key, id, now, &mut out).unwrap();
        let mut decoder = crate::protocol::Decoder::new(ProtocolVersion::V3_1_1, 1 << 20);
        std::iter::from_fn(|| decoder.decode(&mut out).unwrap()).collect()
    }

    fn subscribe(filter: &str) -> Packet {
        subscribe_at(filter, QoS::AtMostOnce)
    }

    /// A subscription to `filter` with maximum QoS `qos`.
    pub(in crate::shard::state) fn subscribe_at(filter: &str, qos: QoS) -> Packet {
        Packet::Subscribe(Subscribe {
            refused: Vec::new(),
            packet_id: PacketId::new(1).unwrap(),
            properties: Default::default(),
            subscriptions: [Subscription {
                filter: TopicFilter::new(filter).unwrap(),
                options: SubscriptionOptions { qos, ..Default::default() },
            }]
            .into_iter()
            .collect(),
        })
    }

    fn publish(topic: &str) -> Packet {
        Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: false,
            topic: TopicName::new(topic).unwrap(),
            packet_id: None,
            properties: Default::default(),
            payload: bytes::Bytes::from_static(b"x"),
        })
    }

    #[test]
    fn a_suback_waits_for_the_bridge_subscription() {
        // [MQTT-3.8.4-1]: once the SUBACK is sent, what any node publishes
        // to the filter reaches the subscriber; so it waits until the
        // bridge has subscribed on NATS, even on a node of one shard.
        let now = Instant::now();
        let (mut shard, bridge) = shard(1, &[]);
        let (key, id) = connect(&mut shard, 1, "s", now);
        assert!(shard.handle_packet(key, id, now, subscribe("a/+")).unwrap());
        assert!(output(&mut shard, key, id, now).is_empty(), "held for the bridge");
        let interest = bridge.take_interest();
        assert_eq!(interest, [(0, "a/+".to_owned(), true, 1)]);
        shard.handle_cluster(FromBridge::InterestAck(1), now);
        assert!(matches!(output(&mut shard, key, id, now)[..], [Packet::SubAck(_)]));
        // The last subscriber leaving withdraws the interest.
        shard.handle_connection_closed(key, id, now);
        assert_eq!(bridge.take_interest(), [(0, "a/+".to_owned(), false, 2)]);
    }

    #[test]
    fn accepted_publishes_go_to_the_bridge_once_remote_ones_never() {
        let now = Instant::now();
        let (mut shard, bridge) = shard(2, &["private/#"]);
        let (sub, sub_id) = connect(&mut shard, 2, "s", now);
        assert!(shard.handle_packet(sub, sub_id, now, subscribe("#")).unwrap());
        let revision = bridge.take_interest()[0].3;
        shard.handle_cluster(FromBridge::InterestAck(revision), now);
        let (key, id) = connect(&mut shard, 2, "p", now);
        for topic in ["a/b", "private/x", "c"] {
            assert!(shard.handle_packet(key, id, now, publish(topic)).unwrap());
        }
        assert_eq!(bridge.take_published(), ["a/b", "c"], "local_only stays on the node");
        // A message from another node reaches the local subscriber and is
        // not handed back to the bridge.
        let remote = Arc::new(Message {
            topic: TopicName::new("remote/t").unwrap(),
            payload: bytes::Bytes::from_static(b"r"),
            qos: QoS::AtMostOnce,
            retain: false,
            properties: Default::default(),
            publisher: Some("elsewhere".into()),
            expires_at: None,
            id: 0,
        });
        shard.handle_cluster(FromBridge::Publish(remote), now);
        assert!(bridge.take_published().is_empty());
        let topics: Vec<String> = output(&mut shard, sub, sub_id, now)
            .into_iter()
            .filter_map(|p| match p {
                Packet::Publish(p) => Some(p.topic.as_str().to_owned()),
                _ => None,
            })
            .collect();
        assert_eq!(topics, ["a/b", "private/x", "c", "remote/t"]);
    }

    #[test]
    fn shared_groups_are_served_through_the_bridge_when_a_message_is_bridged() {
        // Each message reaches one member of a group in the whole cluster
        // [MQTT-4.8.2]: the publishing node's bridge picks the node (this
        // one included), so a bridged message is not also given to a local
        // member directly.
        let now = Instant::now();
        let (mut shard, bridge) = shard(1, &["private/#"]);
        let (sub, sub_id) = connect(&mut shard, 1, "s", now);
        assert!(shard.handle_packet(sub, sub_id, now, subscribe("$share/g/s/+")).unwrap());
        assert_eq!(bridge.take_interest(), [(0, "$share/g/s/+".to_owned(), true, 1)]);
        shard.handle_cluster(FromBridge::InterestAck(1), now);
        assert!(matches!(output(&mut shard, sub, sub_id, now)[..], [Packet::SubAck(_)]));
        let (key, id) = connect(&mut shard, 1, "p", now);
        assert!(shard.handle_packet(key, id, now, publish("s/1")).unwrap());
        assert_eq!(bridge.take_published(), ["s/1"]);
        assert!(output(&mut shard, sub, sub_id, now).is_empty(), "not directly");
        let message = Arc::new(Message {
            topic: TopicName::new("s/1").unwrap(),
            payload: bytes::Bytes::from_static(b"x"),
            qos: QoS::AtMostOnce,
            retain: false,
            properties: Default::default(),
            publisher: None,
            expires_at: None,
            id: 0,
        });
        let filter = TopicFilter::new("$share/g/s/+").unwrap();
        shard.handle_cluster(FromBridge::GroupPublish { filter, message, ack: None }, now);
        assert!(matches!(output(&mut shard, sub, sub_id, now)[..], [Packet::Publish(_)]));
        // A local-only topic is not bridged: its groups are served here.
        let (private, private_id) = connect(&mut shard, 1, "q", now);
        let packet = subscribe("$share/g/private/+");
        assert!(shard.handle_packet(private, private_id, now, packet).unwrap());
        let revision = bridge.take_interest()[0].3;
        shard.handle_cluster(FromBridge::InterestAck(revision), now);
        let _ = output(&mut shard, private, private_id, now);
        assert!(shard.handle_packet(key, id, now, publish("private/x")).unwrap());
        assert!(bridge.take_published().is_empty());
        assert!(matches!(output(&mut shard, private, private_id, now)[..], [Packet::Publish(_)]));
    }

    #[test]
    fn past_its_share_of_max_pending_acks_a_shard_holds_its_publishers() {
        // Issue 17 item 8: bounded; publishers are held, nothing dropped.
        let now = Instant::now();
        let id = ShardId::from_index(0).unwrap();
        let outbox = Rc::new(Outbox::new(1));
        let mut shard = Shard::new(id, 1, SessionLimits::default(), Rc::clone(&outbox), 1);
        let bridge = ClusterSetup::for_tests(1, &[]);
        shard.set_cluster(Rc::new(bridge.link(id)));
        let (key, conn) = connect(&mut shard, 1, "p", now);
        for n in 1..=4u16 {
            outbox.take_held_by();
            assert!(shard.handle_packet(key, conn, now, qos1("t", n)).unwrap());
        }
        // for_tests: 4 per shard.
        let hold = outbox.take_held_by().expect("held at the fourth");
        assert!(outbox.is_congested(hold));
        shard.handle_cluster(FromBridge::Accepted(1), now);
        assert!(outbox.is_congested(hold), "3 still wait: more than half");
        shard.handle_cluster(FromBridge::Accepted(2), now);
        assert!(!outbox.is_congested(hold), "released at half");
        let acks = output(&mut shard, key, conn, now);
        assert!(matches!(acks[..], [Packet::PubAck(_), Packet::PubAck(_)]), "{acks:?}");
    }

    #[test]
    fn a_qos_1_group_copy_is_accepted_by_a_member_and_refused_without_one() {
        // Issue 17 item 5/8: the node picked for a shared group acknowledges
        // the message once a member has it [MQTT-4.8.2], and refuses it when
        // its last member left meanwhile, so that the publishing node sends
        // it to another node with members (at least once) instead of
        // losing it here.
        use crate::router::cluster::RemoteAck;
        let now = Instant::now();
        let (mut shard, bridge) = shard(1, &[]);
        let (sub, sub_id) = connect(&mut shard, 1, "s", now);
        assert!(shard.handle_packet(sub, sub_id, now, subscribe("$share/g/s/+")).unwrap());
        let revision = bridge.take_interest()[0].3;
        shard.handle_cluster(FromBridge::InterestAck(revision), now);
        let _ = output(&mut shard, sub, sub_id, now);
        let message = Arc::new(Message {
            topic: TopicName::new("s/1").unwrap(),
            payload: bytes::Bytes::from_static(b"x"),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: Default::default(),
            publisher: None,
            expires_at: None,
            id: 0,
        });
        let filter = TopicFilter::new("$share/g/s/+").unwrap();
        let copy = |sequence| FromBridge::GroupPublish {
            filter: filter.clone(),
            message: Arc::clone(&message),
            ack: Some(RemoteAck::for_tests(sequence)),
        };
        shard.handle_cluster(copy(7), now);
        assert_eq!(bridge.take_remote_acks(), [7]);
        assert!(matches!(output(&mut shard, sub, sub_id, now)[..], [Packet::Publish(_)]));
        // The member leaves: the next copy is refused, not delivered.
        shard.handle_connection_closed(sub, sub_id, now);
        shard.handle_cluster(copy(8), now);
        assert_eq!(bridge.take_remote_acks(), [8 | (1u64 << 63)], "refused");
    }

    fn qos1(topic: &str, id: u16) -> Packet {
        Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: TopicName::new(topic).unwrap(),
            packet_id: PacketId::new(id),
            properties: Default::default(),
            payload: bytes::Bytes::from_static(b"x"),
        })
    }

    #[test]
    fn a_qos_1_puback_waits_for_the_other_nodes_mqtt_4_3_2_2() {
        // Issue 17 item 8: the PUBACK [MQTT-4.3.2-2] of a bridged QoS 1
        // message waits until the bridge answers its ticket (every
        // interested node accepted it); a local-only one is not held.
        let now = Instant::now();
        let (mut shard, bridge) = shard(1, &["private/#"]);
        let (key, id) = connect(&mut shard, 1, "p", now);
        assert!(shard.handle_packet(key, id, now, qos1("a/b", 1)).unwrap());
        assert_eq!(bridge.take_published(), ["a/b"]);
        assert!(output(&mut shard, key, id, now).is_empty(), "held for the other nodes");
        shard.handle_cluster(FromBridge::Accepted(1), now);
        assert!(matches!(output(&mut shard, key, id, now)[..], [Packet::PubAck(_)]));
        assert!(shard.handle_packet(key, id, now, qos1("private/x", 2)).unwrap());
        assert!(bridge.take_published().is_empty());
        assert!(matches!(output(&mut shard, key, id, now)[..], [Packet::PubAck(_)]));
    }
}
