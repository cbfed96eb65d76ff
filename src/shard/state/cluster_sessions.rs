//! The shard's side of sessions across the nodes of a cluster (issue 17
//! item 6; `router::cluster::sessions`): the claim of a client id before
//! its CONNECT is accepted, the session another node hands over, and the
//! takeover of a session of this node by another.

use super::{LocalSubscription, Shard};
use crate::protocol::Connect;
use crate::router::cluster::Takeover;
use crate::session::Session;
use crate::shard::slots::Slot;
use crate::store::{handover, SessionState};
use bytes::Bytes;
use bytestring::ByteString;
use std::future::Future;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

/// A client id being claimed on this shard.
#[derive(Debug, Default)]
pub(super) struct Claiming {
    /// Claims in progress (two connections of one id may claim at once).
    claims: usize,
    /// Takeovers by other nodes that arrived meanwhile: served once the
    /// last claim ends, so that the connection this node is accepting is
    /// the one taken over (the later claim wins).
    waiting: Vec<Takeover>,
    /// The interest revision the subscriptions of a session handed over
    /// made: its CONNACK waits until the other shards and the NATS bridge
    /// have it.
    revision: u64,
}

impl Shard {
    /// In a cluster (`cluster.sessions = "cluster"`), claims the client id
    /// of `connect` (homed here, not empty) in the cluster's session
    /// directory; the future gives the session its previous node handed
    /// over (empty: none), for [`Self::restore_handover`]. Every claim
    /// begun is ended with [`Self::end_cluster_claim`].
    pub fn begin_cluster_claim(
        &mut self,
        connect: &Connect,
    ) -> Option<impl Future<Output = Bytes>> {
        let link = self.cluster.as_ref()?;
        if self.home_of(&connect.client_id) != self.id {
            return None;
        }
        let claim = link.claim(&connect.client_id, connect.clean_start)?;
        self.cluster_claims.entry(connect.client_id.clone()).or_default().claims += 1;
        Some(claim)
    }

    /// A client that sent no client id was given one here [MQTT-3.1.3-6]
    /// and attached as `key`. When its session outlives the connection
    /// (5.0 Session Expiry Interval above 0, within `max_session_expiry`),
    /// the id is claimed in the cluster's session directory like any other:
    /// the client coming back with it on another node (Clean Start 0) then
    /// moves the session there. Returns the claim to run; the CONNACK does
    /// not wait for it: the id is new (no node holds it, nothing is handed
    /// over). A session that ends with its connection is not claimed:
    /// directory entries are never deleted, and one per anonymous
    /// connection would grow the bucket without bound.
    pub fn claim_assigned(
        &self,
        key: crate::shard::SessionKey,
    ) -> Option<impl Future<Output = Bytes>> {
        let link = self.cluster.as_ref()?;
        let slot = self.slots.get(key)?;
        if slot.session.expiry() == Some(std::time::Duration::ZERO) {
            return None;
        }
        link.claim(self.client_id(key)?, true)
    }

    /// A claim of `client_id` begun with [`Self::begin_cluster_claim`]
    /// ended (its CONNECT accepted or refused). When a session was handed
    /// over, the CONNACK waits until its subscriptions are known to the
    /// other shards and subscribed on NATS, as a SUBACK does
    /// ([MQTT-3.8.4-1]: what is published after it, anywhere in the
    /// cluster, reaches the session). Once no claim of the id is in
    /// progress, the takeovers that waited are served.
    pub fn end_cluster_claim(&mut self, client_id: &ByteString, now: Instant) {
        let Some(claiming) = self.cluster_claims.get_mut(client_id) else { return };
        claiming.claims -= 1;
        let (revision, claims) = (std::mem::take(&mut claiming.revision), claiming.claims);
        if let (true, Some(key)) = (revision > 0, self.slots.find(client_id)) {
            if let Some(token) = self.slots.slot_mut(key).session.hold_acks() {
                if revision > self.interest.acked_by_all() {
                    self.interest.wait_for(revision, key, token);
                } else {
                    self.release_acks(key, token);
                }
            }
        }
        if claims > 0 {
            return;
        }
        let waiting = self.cluster_claims.remove(client_id).map(|c| c.waiting).unwrap_or_default();
        for takeover in waiting {
            self.handle_cluster_takeover(takeover, now);
        }
    }

    /// Rebuilds here the session of `client_id` that another node handed
    /// over (`state`, see `store::handover`; empty: none), offline, before
    /// the CONNECT that claimed it is accepted: it then finds it (Session
    /// Present [MQTT-3.2.2-2]). Its subscriptions enter the index (and so
    /// the bridge's NATS interest), its queue and in-flight messages are
    /// sent as after any reconnection [MQTT-4.4.0-1]. A session this shard
    /// holds with a live connection is kept (the CONNECT takes it over);
    /// an offline one is replaced.
    pub fn restore_handover(&mut self, client_id: &ByteString, state: &[u8], now: Instant) {
        if state.is_empty() {
            return;
        }
        let SessionState { mut sessions, messages, .. } = match handover::decode(state, now) {
            Ok(state) => state,
            Err(error) => {
                self.count_malformed_handover();
                tracing::warn!(client_id = &**client_id, %error, "a handed-over session is unreadable");
                return;
            }
        };
        let Some(stored) = sessions.remove(&handover::SID).filter(|s| s.client_id == *client_id)
        else {
            self.count_malformed_handover();
            return;
        };
        if let Some(key) = self.slots.find(client_id) {
            if self.slot(key).connection.is_some() {
                return;
            }
            self.remove_session(key);
        }
        let acl = self.acl.as_ref().map(|file| {
            crate::auth::acl::ClientAcl::new(Arc::clone(file), stored.username.as_deref())
        });
        let expiry = stored.expiry;
        let (sid, stored, messages) = self.log_handed_over(stored, messages);
        let mut session = Session::restore(stored, &messages, Rc::clone(&self.limits), now);
        session.set_acl(acl);
        if self.log.is_some() {
            session.enable_journal();
        }
        let mut slot = Slot::new(session);
        slot.log_id = sid;
        slot.expires_at = expiry.map(|expiry| now + expiry);
        let key = self.slots.insert(slot);
        let filters: Vec<_> =
            self.slot(key).session.subscriptions().map(|(f, s)| (f.clone(), *s)).collect();
        let mut revision = 0;
        for (filter, subscribed) in filters {
            let subscription = LocalSubscription {
                options: subscribed.options,
                subscription_id: subscribed.identifier,
            };
            if self.subscriptions.insert(&filter, key, subscription).is_none() {
                let group = self.subscriptions.group_id(&filter);
                let made = self.interest.handle_subscribe(&filter, group, &self.outbox);
                revision = revision.max(made.unwrap_or(0));
            }
        }
        if let Some(claiming) = self.cluster_claims.get_mut(client_id) {
            claiming.revision = claiming.revision.max(revision);
        }
        self.schedule(key);
        self.account(key);
    }

    /// Another node takes the session of a client id homed here over
    /// (see `router::cluster::sessions`): answered with the session, or
    /// after the claim of the same id in progress here.
    pub(super) fn handle_cluster_takeover(&mut self, takeover: Takeover, now: Instant) {
        if let Some(claiming) = self.cluster_claims.get_mut(&takeover.client_id) {
            claiming.waiting.push(takeover);
            return;
        }
        let state = self.give_up_session(&takeover.client_id, takeover.clean_start, now);
        if let Some(link) = &self.cluster {
            link.handover(takeover, state);
        }
    }

    /// Closes the live connection of `client_id`'s session, if any, as a
    /// local takeover does ([MQTT-3.1.4-3]: 0x8E to a 5.0 client), then
    /// ends the session (the taking CONNECT has Clean Start
    /// [MQTT-3.1.2-4]), or removes it and returns it, to move (a will it
    /// still holds for its delay goes with it: the client reconnects
    /// there, and [MQTT-3.1.3-9] has a will not published then).
    fn give_up_session(
        &mut self,
        client_id: &ByteString,
        clean_start: bool,
        now: Instant,
    ) -> Bytes {
        let Some(key) = self.slots.find(client_id) else { return Bytes::new() };
        self.take_over_connection(key, now);
        // A clean 3.1.1 session ended with its connection.
        let Some(key) = self.slots.find(client_id) else { return Bytes::new() };
        if clean_start {
            self.end_session(key, now);
            return Bytes::new();
        }
        let mut messages = hashbrown::HashMap::new();
        let stored = self.slot(key).session.handover(&mut messages);
        let state = handover::encode(&stored, &messages);
        self.remove_session(key);
        state
    }

    /// A handed-over session that does not read: counted with the bridge's
    /// malformed frames.
    fn count_malformed_handover(&self) {
        if let Some(link) = &self.cluster {
            link.count_malformed();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::cluster::tests::{output, subscribe_at};
    use super::*;
    use crate::protocol::{
        Packet, PacketId, ProtocolVersion, Publish, QoS, TopicFilter, TopicName,
    };
    use crate::router::cluster::{ClusterSetup, FromBridge};
    use crate::shard::{ConnectOutcome, ConnectionId, SessionKey};
    use std::rc::Rc;

    /// A node of one shard, linked to a bridge the test plays.
    fn node() -> (Shard, ClusterSetup) {
        super::super::cluster::tests::shard(1, &[])
    }

    fn connect_packet(client_id: &str, clean_start: bool) -> Connect {
        Connect {
            version: ProtocolVersion::V3_1_1,
            clean_start,
            keep_alive: 0,
            client_id: client_id.into(),
            will: None,
            username: None,
            password: None,
            properties: Default::default(),
        }
    }

    /// Connects as the network layer does in a cluster: claim, restore
    /// what was handed over, accept, end the claim.
    fn connect(
        shard: &mut Shard,
        connect: &Connect,
        handed: &[u8],
        now: Instant,
    ) -> (SessionKey, ConnectionId, Vec<Packet>) {
        assert!(shard.begin_cluster_claim(connect).is_some(), "claimed");
        shard.restore_handover(&connect.client_id, handed, now);
        let id = shard.new_connection_id();
        let ConnectOutcome::Accepted(key) =
            shard.handle_connect(now, connect, connect.client_id.clone(), id)
        else {
            panic!("refused")
        };
        shard.end_cluster_claim(&connect.client_id, now);
        let out = output(shard, key, id, now);
        (key, id, out)
    }

    /// A QoS 1 subscription to `filter`.
    fn subscribe(filter: &str) -> Packet {
        subscribe_at(filter, QoS::AtLeastOnce)
    }

    fn publish(topic: &str, packet_id: u16) -> Packet {
        Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: TopicName::new(topic).unwrap(),
            packet_id: PacketId::new(packet_id),
            properties: Default::default(),
            payload: Bytes::from_static(b"m"),
        })
    }

    #[test]
    fn a_session_given_up_on_one_node_is_rebuilt_on_another_with_its_queue() {
        let now = Instant::now();
        let (mut a, bridge_a) = node();
        // A persistent session on node a: subscribed, then offline.
        let (key, id, out) = connect(&mut a, &connect_packet("mover", false), &[], now);
        assert!(matches!(out[..], [Packet::ConnAck(ref ack)] if !ack.session_present));
        assert!(a.handle_packet(key, id, now, subscribe("q/#")).unwrap());
        a.handle_cluster(FromBridge::InterestAck(1), now);
        a.handle_connection_closed(key, id, now);
        // Two messages queue for it.
        let (p, p_id, _) = connect(&mut a, &connect_packet("pub", true), &[], now);
        assert!(a.handle_packet(p, p_id, now, publish("q/1", 1)).unwrap());
        assert!(a.handle_packet(p, p_id, now, publish("q/2", 2)).unwrap());
        assert_eq!(bridge_a.take_sessions().1, ["mover", "pub"]);
        // Node b takes it over (not Clean Start): node a gives it up.
        a.handle_cluster(FromBridge::Takeover(Takeover::for_tests("mover", false)), now);
        let (handovers, ..) = bridge_a.take_sessions();
        let [state] = &handovers[..] else { panic!("one answer: {handovers:?}") };
        assert!(!state.is_empty());
        assert!(a.slots.find("mover").is_none(), "gone from node a");
        // Node b rebuilds it: Session Present, the queue delivered in order,
        // once its subscription is on NATS [MQTT-3.8.4-1].
        let (mut b, bridge_b) = node();
        let (key, id, out) = connect(&mut b, &connect_packet("mover", false), state, now);
        assert!(out.is_empty(), "held: {out:?}");
        let revisions: Vec<u64> = bridge_b.take_interest().iter().map(|i| i.3).collect();
        assert_eq!(revisions.len(), 1, "q/# subscribed on NATS");
        b.handle_cluster(FromBridge::InterestAck(revisions[0]), now);
        let out = [out, output(&mut b, key, id, now)].concat();
        let topics: Vec<&str> = out
            .iter()
            .filter_map(|p| match p {
                Packet::Publish(p) => Some(p.topic.as_str()),
                _ => None,
            })
            .collect();
        assert!(matches!(out[0], Packet::ConnAck(ref ack) if ack.session_present));
        assert_eq!(topics, ["q/1", "q/2"]);
        assert!(!b.subscriptions.is_empty(), "its subscription is in node b's index");
    }

    #[test]
    fn a_session_handed_over_is_in_the_new_nodes_log_at_once() {
        // With a data_dir the moved session survives a crash of its new
        // node right after the move: its subscription and queue are logged
        // when it arrives, not at the next compaction.
        let now = Instant::now();
        let (mut a, bridge_a) = node();
        let (key, id, _) = connect(&mut a, &connect_packet("mover", false), &[], now);
        assert!(a.handle_packet(key, id, now, subscribe("q/#")).unwrap());
        a.handle_cluster(FromBridge::InterestAck(1), now);
        a.handle_connection_closed(key, id, now);
        let (p, p_id, _) = connect(&mut a, &connect_packet("pub", true), &[], now);
        assert!(a.handle_packet(p, p_id, now, publish("q/1", 1)).unwrap());
        a.handle_cluster(FromBridge::Takeover(Takeover::for_tests("mover", false)), now);
        let state = bridge_a.take_sessions().0.remove(0);
        let (mut b, _bridge_b) = node();
        let log = Rc::new(crate::store::Log::new());
        b.attach_log(Rc::clone(&log), crate::store::LiveState::default(), now);
        assert!(b.begin_cluster_claim(&connect_packet("mover", false)).is_some());
        b.restore_handover(&"mover".into(), &state, now);
        let live = crate::shard::tests::persist::recovered(&log);
        let [session] = &live.sessions.sessions.values().collect::<Vec<_>>()[..] else {
            panic!("one session in the log: {:?}", live.sessions)
        };
        assert_eq!(session.client_id, "mover");
        assert!(session.subscriptions.contains_key(&TopicFilter::new("q/#").unwrap()));
        assert_eq!(session.queue.len(), 1);
        let message = &live.sessions.messages[&session.queue[0].mid];
        assert_eq!(message.topic.as_str(), "q/1");
    }

    #[test]
    fn a_takeover_during_a_claim_waits_for_its_connect_then_takes_it_over() {
        // Two nodes claim one id at once; the later claim asks the earlier
        // node before that node's CONNECT is through: the request waits,
        // then closes the new connection [MQTT-3.1.4-3].
        let now = Instant::now();
        let (mut a, bridge) = node();
        let connect_a = connect_packet("twin", true);
        assert!(a.begin_cluster_claim(&connect_a).is_some());
        a.handle_cluster(FromBridge::Takeover(Takeover::for_tests("twin", true)), now);
        assert!(bridge.take_sessions().0.is_empty(), "waits for the claim in progress");
        let id = a.new_connection_id();
        let ConnectOutcome::Accepted(key) = a.handle_connect(now, &connect_a, "twin".into(), id)
        else {
            panic!("refused")
        };
        a.end_cluster_claim(&connect_a.client_id, now);
        assert_eq!(bridge.take_sessions().0, [Bytes::new()], "answered: no session to move");
        assert!(a.session_mut(key, id).is_none(), "the connection was taken over");
    }
}
