//! The shard's side of sessions across the nodes of a cluster (issue 17
//! item 6; `router::cluster::sessions`): the claim of a client id before
//! its CONNECT is accepted, the session another node hands over, and the
//! takeover of a session of this node by another.

use super::Shard;
use crate::protocol::Connect;
use crate::router::cluster::{Claimed, Takeover, REVISION_UNKNOWN};
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
    /// Messages the node the session left sent on meanwhile (see
    /// `state/session_moves.rs`): delivered once the claim ends.
    pub(super) forwarded: Vec<Arc<crate::message::Message>>,
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
    ) -> Option<impl Future<Output = Claimed>> {
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
    /// moves the session there. Returns the claim to run, whose revision
    /// goes to [`Self::note_claim`]; the CONNACK does not wait for it: the
    /// id is new (no node holds it, nothing is handed over). A session
    /// that ends with its connection is not claimed: nobody can come back
    /// to it, and it would cost two writes to the directory.
    pub fn claim_assigned(
        &self,
        key: crate::shard::SessionKey,
    ) -> Option<impl Future<Output = Claimed>> {
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
    /// progress, the takeovers that waited are served. `entry_revision`
    /// is what the claim wrote into the directory (see
    /// [`Self::note_claim`]).
    pub fn end_cluster_claim(&mut self, client_id: &ByteString, entry_revision: u64, now: Instant) {
        self.note_claim(client_id, entry_revision);
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
        let Claiming { waiting, forwarded, .. } =
            self.cluster_claims.remove(client_id).unwrap_or_default();
        self.settle_move(client_id, forwarded, now);
        for takeover in waiting {
            self.handle_cluster_takeover(takeover, now);
        }
    }

    /// A claim of `client_id` wrote `revision` into the session directory:
    /// the session's end here releases the entry up to it (see
    /// `router::cluster::sessions`). Without a session here (its CONNECT
    /// was refused, or it ended before the claim did) the entry goes now.
    /// A session restored from the log learns its revision here.
    pub fn note_claim(&mut self, client_id: &ByteString, revision: u64) {
        match self.slots.find(client_id) {
            Some(key) => {
                let slot = self.slots.slot_mut(key);
                slot.directory_revision = match slot.directory_revision {
                    REVISION_UNKNOWN if revision > 0 => revision,
                    known => known.max(revision),
                };
            }
            None => {
                if let Some(link) = &self.cluster {
                    link.release(client_id, revision);
                }
            }
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
    pub fn restore_handover(
        &mut self,
        client_id: &ByteString,
        state: &[u8],
        from: &ByteString,
        now: Instant,
    ) {
        if state.is_empty() {
            return;
        }
        let (SessionState { mut sessions, messages, .. }, seen) = match handover::decode(state, now)
        {
            Ok(decoded) => decoded,
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
        self.arrived(key, messages.values().map(|message| message.id).chain(seen), from, now);
        let revision = self.index_session(key);
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
        let state =
            self.give_up_session(&takeover.client_id, takeover.clean_start, &takeover.node, now);
        if let Some(link) = &self.cluster {
            link.handover(takeover, state);
        }
    }

    /// Closes the live connection of `client_id`'s session, if any, as a
    /// local takeover does ([MQTT-3.1.4-3]: 0x8E to a 5.0 client), then
    /// ends the session (the taking CONNECT has Clean Start
    /// [MQTT-3.1.2-4]), or removes it and returns it, to move (a will it
    /// still holds for its delay goes with it: the client reconnects
    /// there, and [MQTT-3.1.3-9] has a will not published then). A
    /// session that moves to `node` leaves a forwarder (see
    /// `state/session_moves.rs`).
    fn give_up_session(
        &mut self,
        client_id: &ByteString,
        clean_start: bool,
        node: &ByteString,
        now: Instant,
    ) -> Bytes {
        let Some(key) = self.slots.find(client_id) else { return Bytes::new() };
        // The directory names `node` now: the session's end here releases
        // nothing.
        self.slots.slot_mut(key).directory_revision = 0;
        self.take_over_connection(key, now);
        // A clean 3.1.1 session ended with its connection.
        let Some(key) = self.slots.find(client_id) else { return Bytes::new() };
        if clean_start {
            self.end_session(key, now);
            return Bytes::new();
        }
        // What it held back for order goes with it, in its queue.
        self.stop_holding(key, now);
        let mut messages = hashbrown::HashMap::new();
        let stored = self.slot(key).session.handover(&mut messages);
        let state = handover::encode(&stored, &messages, &self.seen_since_arrival(key));
        self.leave_forwarder(client_id, node, &stored, now);
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
    use crate::router::cluster::{ClusterSetup, Forwarded, FromBridge};
    use crate::shard::{ConnectOutcome, ConnectionId, SessionKey};
    use std::rc::Rc;
    use std::time::Duration;

    /// The revision the test's bridge gives every claim.
    const REVISION: u64 = 7;

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
    /// what was handed over (by node a), accept, end the claim.
    fn connect(
        shard: &mut Shard,
        connect: &Connect,
        handed: &[u8],
        now: Instant,
    ) -> (SessionKey, ConnectionId, Vec<Packet>) {
        connect_from(shard, connect, handed, "a", now)
    }

    /// [`connect`] with a session handed over by node `from`.
    fn connect_from(
        shard: &mut Shard,
        connect: &Connect,
        handed: &[u8],
        from: &str,
        now: Instant,
    ) -> (SessionKey, ConnectionId, Vec<Packet>) {
        assert!(shard.begin_cluster_claim(connect).is_some(), "claimed");
        shard.restore_handover(&connect.client_id, handed, &from.into(), now);
        let id = shard.new_connection_id();
        let ConnectOutcome::Accepted(key) =
            shard.handle_connect(now, connect, connect.client_id.clone(), id)
        else {
            panic!("refused")
        };
        shard.end_cluster_claim(&connect.client_id, REVISION, now);
        let out = output(shard, key, id, now);
        (key, id, out)
    }

    /// A 5.0 session of `client_id` that outlives its connection by
    /// `expiry` seconds: claimed (revision [`REVISION`]), then offline.
    fn visit_v5(shard: &mut Shard, client_id: &str, clean_start: bool, expiry: u32, now: Instant) {
        let mut v5 = connect_packet(client_id, clean_start);
        v5.version = ProtocolVersion::V5;
        v5.properties.session_expiry_interval = Some(expiry);
        assert!(shard.begin_cluster_claim(&v5).is_some(), "claimed");
        let id = shard.new_connection_id();
        let ConnectOutcome::Accepted(key) =
            shard.handle_connect(now, &v5, v5.client_id.clone(), id)
        else {
            panic!("refused")
        };
        shard.end_cluster_claim(&v5.client_id, REVISION, now);
        shard.handle_connection_closed(key, id, now);
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

    /// The directory entry of a session goes when the session ends on the
    /// node it names: a clean session with its connection, a persistent
    /// one at its expiry [MQTT-3.1.2-23], one whose claim ended after it
    /// did at once. Not while it lives, and not when it moves (the entry
    /// names the new node).
    #[test]
    fn a_session_that_ends_here_releases_its_directory_entry_and_one_that_moves_does_not() {
        let now = Instant::now();
        let (mut a, bridge) = node();
        let (key, id, _) = connect(&mut a, &connect_packet("clean", true), &[], now);
        assert!(bridge.take_releases().is_empty(), "connected");
        a.handle_connection_closed(key, id, now);
        assert_eq!(bridge.take_releases(), [("clean".to_owned(), REVISION)]);
        // A 5.0 session that outlives its connection by 1 s.
        visit_v5(&mut a, "lasting", true, 1, now);
        a.sweep(now + Duration::from_millis(500));
        assert!(bridge.take_releases().is_empty(), "offline, not expired");
        // A later claim of the same id on this node: its higher revision
        // is the one released.
        a.note_claim(&"lasting".into(), REVISION + 5);
        a.sweep(now + Duration::from_secs(2));
        assert!(a.slots.find("lasting").is_none(), "expired");
        assert_eq!(bridge.take_releases(), [("lasting".to_owned(), REVISION + 5)]);
        // A claim that ends with no session here (its CONNECT refused).
        a.note_claim(&"refused".into(), 9);
        assert_eq!(bridge.take_releases(), [("refused".to_owned(), 9)]);
        // A persistent session that moves to node b: no release here.
        let (key, id, _) = connect(&mut a, &connect_packet("mover", false), &[], now);
        a.handle_connection_closed(key, id, now);
        a.handle_cluster(FromBridge::Takeover(Takeover::for_tests("mover", false)), now);
        assert!(a.slots.find("mover").is_none(), "gone from node a");
        // Nor for a live clean session that b takes over with Clean Start.
        let (_, _, _) = connect(&mut a, &connect_packet("twin", true), &[], now);
        a.handle_cluster(FromBridge::Takeover(Takeover::for_tests("twin", true)), now);
        assert!(a.slots.find("twin").is_none(), "ended on node a");
        assert!(bridge.take_releases().is_empty());
    }

    /// A session rebuilt from the durable log after a restart does not
    /// know the revision its claim wrote: its expiry [MQTT-3.1.2-23]
    /// releases [`REVISION_UNKNOWN`] (the bridge reads the entry), unless
    /// its client claimed it again here first (that claim's revision).
    #[test]
    fn a_session_restored_from_the_log_releases_its_entry_when_it_ends() {
        let now = Instant::now();
        let (mut a, _) = node();
        let log = Rc::new(crate::store::Log::new());
        a.attach_log(Rc::clone(&log), crate::store::LiveState::default(), now);
        visit_v5(&mut a, "away", false, 10, now);
        visit_v5(&mut a, "back", false, 10, now);
        // The node restarts: both sessions come back from its log.
        let (mut restarted, bridge) = node();
        let recovered = crate::shard::tests::persist::recovered(&log);
        restarted.attach_log(Rc::new(crate::store::Log::new()), recovered, now);
        assert!(restarted.slots.find("away").is_some() && restarted.slots.find("back").is_some());
        // "back" connects again here first; a claim that wrote nothing
        // (the directory unreachable) leaves "away" unknown.
        visit_v5(&mut restarted, "back", false, 10, now);
        restarted.note_claim(&"away".into(), 0);
        restarted.sweep(now + Duration::from_secs(11));
        assert!(restarted.slots.find("away").is_none(), "expired");
        let mut releases = bridge.take_releases();
        releases.sort();
        assert_eq!(
            releases,
            [("away".to_owned(), REVISION_UNKNOWN), ("back".to_owned(), REVISION)]
        );
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
        let (_a, _bridge_a, state, _) = moved(now);
        let (mut b, _bridge_b) = node();
        let log = Rc::new(crate::store::Log::new());
        b.attach_log(Rc::clone(&log), crate::store::LiveState::default(), now);
        assert!(b.begin_cluster_claim(&connect_packet("mover", false)).is_some());
        b.restore_handover(&"mover".into(), &state, &"a".into(), now);
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

    /// A QoS 1 message from another node, with cluster id `id`.
    fn remote(topic: &str, id: u64) -> Arc<crate::message::Message> {
        Arc::new(crate::message::Message {
            topic: TopicName::new(topic).unwrap(),
            payload: Bytes::from_static(b"r"),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: Default::default(),
            publisher: Some("elsewhere".into()),
            expires_at: None,
            id,
        })
    }

    /// The topics of the PUBLISH packets in `out`.
    fn topics(out: &[Packet]) -> Vec<String> {
        out.iter()
            .filter_map(|p| match p {
                Packet::Publish(p) => Some(p.topic.as_str().to_owned()),
                _ => None,
            })
            .collect()
    }

    /// "mover" subscribed to `q/#` at QoS 1 on a node, then offline with
    /// one message queued (`q/1`), handed over to node b: the node, its
    /// bridge, the handed-over state and the queued message's id.
    fn moved(now: Instant) -> (Shard, ClusterSetup, Bytes, u64) {
        let (mut a, bridge_a) = node();
        let (key, id, _) = connect(&mut a, &connect_packet("mover", false), &[], now);
        assert!(a.handle_packet(key, id, now, subscribe("q/#")).unwrap());
        a.handle_cluster(FromBridge::InterestAck(1), now);
        a.handle_connection_closed(key, id, now);
        let (p, p_id, _) = connect(&mut a, &connect_packet("pub", true), &[], now);
        assert!(a.handle_packet(p, p_id, now, publish("q/1", 1)).unwrap());
        bridge_a.take_interest();
        bridge_a.take_sessions();
        a.handle_cluster(FromBridge::Takeover(Takeover::for_tests("mover", false)), now);
        let state = bridge_a.take_sessions().0.remove(0);
        let (handed, _) = handover::decode(&state, now).unwrap();
        let [queued] = &handed.messages.values().collect::<Vec<_>>()[..] else { panic!() };
        assert_ne!(queued.id, 0, "a message accepted in a cluster has an id");
        let queued = queued.id;
        (a, bridge_a, state, queued)
    }

    /// Node b, where the session of [`moved`] (`state`) arrived from node
    /// a, with its subscription on NATS: the node, its bridge, the
    /// session's key and connection, and what the connection was sent.
    fn arrive(
        state: &[u8],
        now: Instant,
    ) -> (Shard, ClusterSetup, SessionKey, ConnectionId, Vec<Packet>) {
        let (mut b, bridge_b) = node();
        let (key, id, out) = connect(&mut b, &connect_packet("mover", false), state, now);
        b.handle_cluster(FromBridge::InterestAck(bridge_b.take_interest()[0].3), now);
        (b, bridge_b, key, id, out)
    }

    #[test]
    fn a_session_that_moved_away_leaves_a_forwarder_for_what_still_comes() {
        // Issue 17 item 6, "no message lost": after the handover, node a
        // keeps the session's interest and sends what matches it on to
        // node b (the node the takeover request named), for node_timeout.
        let now = Instant::now();
        let (mut a, bridge_a, _, queued) = moved(now);
        assert!(a.slots.find("mover").is_none(), "the session left node a");
        assert!(bridge_a.take_interest().is_empty(), "q/# is still wanted here: no change");
        assert_eq!(a.session_count(), 1, "the publisher; a forwarder is no session");
        // A publish on node a and one from another node, after the move.
        let p = a.slots.find("pub").unwrap();
        let p_id = a.slot(p).connection.as_ref().unwrap().id;
        assert!(a.handle_packet(p, p_id, now, publish("q/2", 2)).unwrap());
        a.handle_cluster(FromBridge::Publish(remote("q/3", 77)), now);
        a.handle_cluster(FromBridge::Publish(remote("elsewhere", 78)), now);
        let forwards = bridge_a.take_forwards();
        let sent: Vec<_> =
            forwards.iter().map(|(n, c, m)| (n.as_str(), c.as_str(), m.topic.as_str())).collect();
        assert_eq!(sent, [("b", "mover", "q/2"), ("b", "mover", "q/3")]);
        assert!(forwards[0].2.id != 0 && forwards[0].2.id != queued, "ids tell messages apart");
        assert_eq!(forwards[1].2.id, 77, "a remote message keeps its id");
        // After node_timeout (5 s here) the forwarder goes, and the
        // interest with it; nothing is sent on any more.
        let later = now + Duration::from_secs(6);
        a.sweep(later);
        let interest: Vec<_> = bridge_a.take_interest().into_iter().map(|i| (i.1, i.2)).collect();
        assert_eq!(interest, [("q/#".to_owned(), false)]);
        // Node b is told, after what was sent on before.
        assert_eq!(bridge_a.take_forwarders_gone(), [("b".to_owned(), "mover".to_owned())]);
        a.handle_cluster(FromBridge::Publish(remote("q/4", 79)), later);
        assert!(bridge_a.take_forwards().is_empty());
        assert_eq!(a.snapshot().counters.shard.sessions_expired, 0, "no session expired");
    }

    #[test]
    fn a_session_that_arrived_is_given_each_message_once() {
        // [MQTT-4.3.3] (QoS 2: exactly once), [MQTT-4.3.1] (QoS 0: at most
        // once): the queued message that also comes straight from its
        // node, and a message both sent straight and forwarded (twice, as
        // a forward sent again), reach the session once each.
        let now = Instant::now();
        let (_a, _bridge_a, state, queued) = moved(now);
        let (mut b, bridge_b) = node();
        let (key, id, out) = connect(&mut b, &connect_packet("mover", false), &state, now);
        let revision = bridge_b.take_interest()[0].3;
        b.handle_cluster(FromBridge::InterestAck(revision), now);
        b.handle_cluster(FromBridge::Publish(remote("q/1", queued)), now);
        let forwarded = vec![remote("q/2", 500), remote("q/2", 500)];
        b.handle_cluster(FromBridge::Forwarded(Forwarded::for_tests("mover", forwarded)), now);
        b.handle_cluster(FromBridge::Publish(remote("q/2", 500)), now);
        b.handle_cluster(FromBridge::Publish(remote("q/3", 501)), now);
        // q/3 came straight only: held back until node a's forwarder goes.
        b.handle_cluster(FromBridge::Forwarded(Forwarded::closed_for_tests("mover", "a")), now);
        let out = [out, output(&mut b, key, id, now)].concat();
        assert_eq!(topics(&out), ["q/1", "q/2", "q/3"]);
        assert_eq!(b.snapshot().counters.cluster.session_move_duplicates, 3);
        // It moves on to node c, which knows what it was given here: a
        // copy node a forwards late, sent on by node b, is not given again.
        let (mut c, bridge_c) = node();
        let (_b2, onward) = {
            let (mut b2, bridge_b2) = node();
            let (k, i, _) = connect(&mut b2, &connect_packet("mover", false), &state, now);
            let revision = bridge_b2.take_interest()[0].3;
            b2.handle_cluster(FromBridge::InterestAck(revision), now);
            b2.handle_cluster(FromBridge::Publish(remote("q/2", 500)), now);
            let closed = Forwarded::closed_for_tests("mover", "a");
            b2.handle_cluster(FromBridge::Forwarded(closed), now);
            assert_eq!(topics(&output(&mut b2, k, i, now)), ["q/1", "q/2"]);
            for packet_id in [1, 2] {
                let ack = crate::protocol::PubResponse::new(PacketId::new(packet_id).unwrap());
                assert!(b2.handle_packet(k, i, now, Packet::PubAck(ack)).unwrap());
            }
            b2.handle_cluster(FromBridge::Takeover(Takeover::for_tests("mover", false)), now);
            (b2, bridge_b2.take_sessions().0.remove(0))
        };
        let (key_c, id_c, out_c) = connect(&mut c, &connect_packet("mover", false), &onward, now);
        let revision = bridge_c.take_interest()[0].3;
        c.handle_cluster(FromBridge::InterestAck(revision), now);
        let late = vec![remote("q/2", 500), remote("q/1", queued)];
        c.handle_cluster(FromBridge::Forwarded(Forwarded::for_tests("mover", late)), now);
        let out_c = [out_c, output(&mut c, key_c, id_c, now)].concat();
        assert!(topics(&out_c).is_empty(), "nothing twice: {out_c:?}");
        // Past the window, ids are no longer kept.
        let later = now + Duration::from_secs(16);
        b.sweep(later);
        b.handle_cluster(FromBridge::Publish(remote("q/3", 501)), later);
        assert_eq!(topics(&output(&mut b, key, id, later)), ["q/3"]);
    }

    /// [MQTT-4.6.0-6] around a move: a publisher's messages reach the
    /// session in order, though the earlier ones take the longer way (sent
    /// on by node a). What comes straight and matches the subscriptions
    /// the session arrived with is held back until its copy sent on comes
    /// (delivered instead), or node a's forwarder goes; what matches only
    /// a subscription made here is not held.
    #[test]
    fn a_session_that_arrived_gets_a_publishers_messages_in_order() {
        let now = Instant::now();
        let (_a, _bridge_a, state, _) = moved(now);
        let (mut b, bridge_b, key, id, out) = arrive(&state, now);
        assert!(b.handle_packet(key, id, now, subscribe("new/#")).unwrap());
        b.handle_cluster(FromBridge::InterestAck(bridge_b.take_interest()[0].3), now);
        // A publisher elsewhere sent 1st then 2nd: the 2nd comes straight
        // before node a sends both on.
        b.handle_cluster(FromBridge::Publish(remote("q/2nd", 601)), now);
        b.handle_cluster(FromBridge::Publish(remote("new/x", 700)), now);
        let out = [out, output(&mut b, key, id, now)].concat();
        assert_eq!(topics(&out), ["q/1", "new/x"], "q/2nd held back");
        let sent_on = vec![remote("q/1st", 600), remote("q/2nd", 601)];
        b.handle_cluster(FromBridge::Forwarded(Forwarded::for_tests("mover", sent_on)), now);
        assert_eq!(topics(&output(&mut b, key, id, now)), ["q/1st", "q/2nd"]);
        assert_eq!(b.snapshot().counters.cluster.session_move_duplicates, 1, "the held copy");
        // One that node a never got (published after it unsubscribed):
        // held until a says its forwarder went; another node's word does
        // not count.
        b.handle_cluster(FromBridge::Publish(remote("q/3rd", 602)), now);
        b.handle_cluster(FromBridge::Forwarded(Forwarded::closed_for_tests("mover", "c")), now);
        assert!(topics(&output(&mut b, key, id, now)).is_empty());
        b.handle_cluster(FromBridge::Forwarded(Forwarded::closed_for_tests("mover", "a")), now);
        assert_eq!(topics(&output(&mut b, key, id, now)), ["q/3rd"]);
        // From then on, straight at once.
        b.handle_cluster(FromBridge::Publish(remote("q/4th", 603)), now);
        assert_eq!(topics(&output(&mut b, key, id, now)), ["q/4th"]);
        // Released by node a's word, not by the deadline.
        assert_eq!(b.snapshot().counters.cluster.session_hold_expired, 0);
    }

    /// Without word from node a (dead, or the word lost), the session
    /// stops holding back past node_timeout and a margin; and a session
    /// that moves on while holding takes what it held in its queue.
    #[test]
    fn what_a_session_holds_back_is_delivered_at_its_deadline_or_moves_with_it() {
        let now = Instant::now();
        let (_a, _bridge_a, state, _) = moved(now);
        let (mut b, _bridge_b, key, id, _) = arrive(&state, now);
        b.handle_cluster(FromBridge::Publish(remote("q/held", 601)), now);
        assert!(topics(&output(&mut b, key, id, now)).iter().all(|t| t != "q/held"));
        let deadline = now + Duration::from_secs(5) + super::super::session_moves::HOLD_MARGIN;
        b.sweep(deadline - Duration::from_millis(1));
        assert!(topics(&output(&mut b, key, id, now)).is_empty());
        b.sweep(deadline);
        assert_eq!(topics(&output(&mut b, key, id, deadline)), ["q/held"]);
        // Delivered at the deadline: counted, order no longer guaranteed.
        assert_eq!(b.snapshot().counters.cluster.session_hold_expired, 1);
        // Another copy of the session, holding, moves on to node c.
        let (mut b2, bridge_b2, k, i, _) = arrive(&state, now);
        b2.handle_cluster(FromBridge::Publish(remote("q/held", 601)), now);
        assert_eq!(topics(&output(&mut b2, k, i, now)), ["q/1"]);
        b2.handle_cluster(FromBridge::Takeover(Takeover::for_tests("mover", false)), now);
        let onward = bridge_b2.take_sessions().0.remove(0);
        let (mut c, bridge_c) = node();
        let (key_c, id_c, out) =
            connect_from(&mut c, &connect_packet("mover", false), &onward, "b", now);
        c.handle_cluster(FromBridge::InterestAck(bridge_c.take_interest()[0].3), now);
        let out = [out, output(&mut c, key_c, id_c, now)].concat();
        assert_eq!(topics(&out), ["q/1", "q/held"], "its queue, and what it held");
    }

    /// A retained message is sent for a new subscription [MQTT-3.3.1-6]
    /// even when the session, just arrived, was given the same message
    /// live: the second-copy check is for live copies only.
    #[test]
    fn a_session_that_arrived_gets_retained_messages_it_was_given_live() {
        let now = Instant::now();
        let (_a, _bridge_a, state, queued) = moved(now);
        let (mut b, bridge_b, key, id, _) = arrive(&state, now);
        // q/1 (handed over in the queue) was also retained.
        let mut retained = (*remote("q/1", queued)).clone();
        retained.retain = true;
        b.handle_cluster(FromBridge::Retained(Arc::new(retained)), now);
        assert!(b.handle_packet(key, id, now, subscribe("q/1")).unwrap());
        b.handle_cluster(FromBridge::InterestAck(bridge_b.take_interest()[0].3), now);
        let out = output(&mut b, key, id, now);
        let retained: Vec<_> = out
            .iter()
            .filter_map(|p| match p {
                Packet::Publish(p) if p.retain => Some(p.topic.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(retained, ["q/1"], "{out:?}");
    }

    #[test]
    fn messages_forwarded_during_the_claim_wait_for_the_session() {
        // The old node's forwards can overtake its answer to the takeover:
        // they wait for the claim in progress, then reach the session.
        let now = Instant::now();
        let (_a, _bridge_a, state, _) = moved(now);
        let (mut b, bridge_b) = node();
        let connect = connect_packet("mover", false);
        assert!(b.begin_cluster_claim(&connect).is_some());
        let early = vec![remote("q/early", 900), remote("not/matching", 901)];
        b.handle_cluster(FromBridge::Forwarded(Forwarded::for_tests("mover", early)), now);
        b.restore_handover(&connect.client_id, &state, &"a".into(), now);
        let id = b.new_connection_id();
        let ConnectOutcome::Accepted(key) = b.handle_connect(now, &connect, "mover".into(), id)
        else {
            panic!("refused")
        };
        b.end_cluster_claim(&connect.client_id, REVISION, now);
        let revision = bridge_b.take_interest()[0].3;
        b.handle_cluster(FromBridge::InterestAck(revision), now);
        let out = output(&mut b, key, id, now);
        assert!(matches!(out[0], Packet::ConnAck(ref ack) if ack.session_present));
        assert_eq!(topics(&out), ["q/1", "q/early"], "queued first, then what was forwarded");
    }

    #[test]
    fn a_session_coming_back_replaces_its_forwarder() {
        // The client returns to node a before the forwarder expired: node
        // b hands the session back, and node a delivers what matches it
        // instead of sending it on; its interest never changed.
        let now = Instant::now();
        let (mut a, bridge_a, state, _) = moved(now);
        let (mut b, bridge_b) = node();
        let _ = connect(&mut b, &connect_packet("mover", false), &state, now);
        let revision = bridge_b.take_interest()[0].3;
        b.handle_cluster(FromBridge::InterestAck(revision), now);
        b.handle_cluster(FromBridge::Takeover(Takeover::for_tests("mover", false)), now);
        let back = bridge_b.take_sessions().0.remove(0);
        let (key, id, out) = connect_from(&mut a, &connect_packet("mover", false), &back, "b", now);
        assert_eq!(a.moves.forwarders(), 0, "the forwarder went once the session was back");
        assert_eq!(bridge_a.take_forwarders_gone(), [("b".to_owned(), "mover".to_owned())]);
        assert!(bridge_a.take_interest().is_empty(), "q/#: the interest never changed");
        a.handle_cluster(FromBridge::Publish(remote("q/5", 5)), now);
        assert!(bridge_a.take_forwards().is_empty(), "delivered here, not sent on");
        // Held back while node b forwards: given once b's forwarder went.
        a.handle_cluster(FromBridge::Forwarded(Forwarded::closed_for_tests("mover", "b")), now);
        let out = [out, output(&mut a, key, id, now)].concat();
        assert_eq!(topics(&out), ["q/1", "q/5"]);
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
        a.end_cluster_claim(&connect_a.client_id, REVISION, now);
        assert_eq!(bridge.take_sessions().0, [Bytes::new()], "answered: no session to move");
        assert!(a.session_mut(key, id).is_none(), "the connection was taken over");
    }
}
