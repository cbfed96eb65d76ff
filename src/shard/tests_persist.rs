//! Persistent sessions across a restart, sans-IO: shards with logs attached
//! run a scenario; what their logs hold is written as segments, recovered
//! as a restart does, and loaded into fresh shards.

use super::*;
use crate::message::wire::Clocks;
use crate::protocol::{PubResponse, ReasonCode};
use crate::store::record::{self, SegmentHeader, SegmentKind};
use crate::store::recovery::Recovery;
use crate::store::{Entry, LiveState, Log, Record};
use std::sync::Arc;

/// Attaches a fresh log to every shard of `cluster`.
fn with_logs(cluster: &mut Cluster) -> Vec<Rc<Log>> {
    let now = cluster.now;
    let logs: Vec<_> = cluster.shards.iter().map(|_| Rc::new(Log::new())).collect();
    for (shard, log) in cluster.shards.iter_mut().zip(&logs) {
        shard.attach_log(Rc::clone(log), LiveState::default(), now);
    }
    logs
}

/// The segments the writer would write from what `log` holds: a
/// compaction opens a compaction segment, and the index of the last whose
/// compaction completed (0: none).
fn segments_of(log: &Log) -> (Vec<BytesMut>, usize) {
    let clocks = Clocks::read();
    let mut entries = Vec::new();
    log.take_now(&mut entries);
    let header = |kind, sequence| SegmentHeader { kind, shard: 0, shards: 1, sequence }.encode();
    let mut segments = vec![BytesMut::from(&header(SegmentKind::Appends, 1)[..])];
    let mut first_live = 0;
    for entry in entries {
        match entry {
            Entry::Record(r) => record::encode(&r, clocks, segments.last_mut().unwrap()).unwrap(),
            Entry::CompactionStart => {
                let n = segments.len() as u64 + 1;
                segments.push(BytesMut::from(&header(SegmentKind::Compaction, n)[..]));
            }
            Entry::CompactionEnd => {
                let last = segments.last_mut().unwrap();
                record::encode(&Record::SnapshotEnd, clocks, last).unwrap();
                first_live = segments.len() - 1;
            }
        }
    }
    (segments, first_live)
}

fn recover(segments: &[BytesMut]) -> LiveState {
    let mut recovery = Recovery::new(Clocks::read());
    for segment in segments {
        recovery.handle_segment(segment).unwrap();
    }
    recovery.finish().0
}

/// What a restart finds in `log`: every entry written as the writer
/// writes it, then recovered.
pub(in crate::shard) fn recovered(log: &Log) -> LiveState {
    recover(&segments_of(log).0)
}

/// A kill -9: fresh shards loaded with what the logs of `cluster` hold.
fn restart(cluster: &Cluster, logs: &[Rc<Log>]) -> (Cluster, Vec<Rc<Log>>) {
    let mut fresh = Cluster::new(cluster.shards.len());
    let now = fresh.now;
    let new_logs: Vec<_> = logs.iter().map(|_| Rc::new(Log::new())).collect();
    for ((shard, log), old) in fresh.shards.iter_mut().zip(&new_logs).zip(logs) {
        shard.attach_log(Rc::clone(log), recovered(old), now);
    }
    fresh.settle();
    (fresh, new_logs)
}

fn publish_qos(topic: &str, payload: &[u8], qos: QoS, id: u16, dup: bool) -> Packet {
    Packet::Publish(Publish {
        dup,
        qos,
        retain: false,
        topic: TopicName::new(topic).unwrap(),
        packet_id: PacketId::new(id),
        properties: Default::default(),
        payload: bytes::Bytes::copy_from_slice(payload),
    })
}

fn publishes(packets: &[Packet]) -> Vec<(Vec<u8>, Option<u16>, bool)> {
    packets
        .iter()
        .filter_map(|p| match p {
            Packet::Publish(p) => Some((p.payload.to_vec(), p.packet_id.map(|id| id.get()), p.dup)),
            _ => None,
        })
        .collect()
}

#[test]
fn queued_qos1_messages_and_subscriptions_of_an_offline_session_survive_a_restart() {
    let mut cluster = Cluster::new(2);
    let logs = with_logs(&mut cluster);
    let sub_id = id_on("sub", 0, 2);
    let (sub, _) = cluster.connect_with(&sub_id, false);
    cluster.subscribe(&sub, "t/#");
    cluster.settle();
    assert!(matches!(cluster.output(&sub)[..], [Packet::SubAck(_)]));
    cluster.close(&sub);
    let publisher = cluster.connect(&id_on("pub", 1, 2));
    for i in 0..5u8 {
        cluster
            .send(&publisher, publish_qos("t/1", &[i], QoS::AtLeastOnce, u16::from(i) + 1, false));
    }
    // QoS 0 to an offline session is not kept [MQTT-3.1.2-5 (3.1.1)].
    cluster.send(&publisher, publish("t/1", b"qos0", false));
    cluster.settle();
    let (mut cluster, _) = restart(&cluster, &logs);
    // The restored queue is in the shard's gauges ("t/1" and one byte).
    let snapshot = cluster.shards[0].snapshot();
    assert_eq!((snapshot.queued_messages, snapshot.queued_bytes), (5, 5 * 4));
    // [MQTT-3.1.2-4] the session resumes with its state: the five QoS 1
    // messages queued while it was offline [MQTT-3.1.2-5], in order.
    let (sub, output) = cluster.connect_with(&sub_id, false);
    let Packet::ConnAck(connack) = &output[0] else { panic!("{output:?}") };
    assert!(connack.session_present, "[MQTT-3.2.2-2]");
    let got: Vec<Vec<u8>> = publishes(&output).into_iter().map(|(p, ..)| p).collect();
    assert_eq!(got, (0..5u8).map(|i| vec![i]).collect::<Vec<_>>());
    // The subscription is in the index of its shard and in the interest
    // replica of the other: a message published there reaches it.
    let publisher = cluster.connect(&id_on("pub", 1, 2));
    cluster.send(&publisher, publish_qos("t/2", b"after", QoS::AtLeastOnce, 1, false));
    cluster.settle();
    assert_eq!(payloads(&cluster.output(&sub)), vec![b"after".as_slice()]);
}

#[test]
fn in_flight_messages_are_resent_with_their_packet_ids_after_a_restart() {
    let mut cluster = Cluster::new(1);
    let logs = with_logs(&mut cluster);
    let (sub, _) = cluster.connect_with("sub", false);
    cluster.subscribe(&sub, "t");
    assert!(matches!(cluster.output(&sub)[..], [Packet::SubAck(_)]));
    let publisher = cluster.connect("pub");
    for i in 0..3u8 {
        cluster.send(&publisher, publish_qos("t", &[i], QoS::AtLeastOnce, u16::from(i) + 1, false));
    }
    let sent = publishes(&cluster.output(&sub));
    assert_eq!(sent.len(), 3);
    // The first is acknowledged; the other two are in flight at the crash.
    let first = PacketId::new(sent[0].1.unwrap()).unwrap();
    cluster.send(&sub, Packet::PubAck(PubResponse::new(first)));
    let (mut cluster, _) = restart(&cluster, &logs);
    let (_, output) = cluster.connect_with("sub", false);
    // [MQTT-4.4.0-1] re-sent with DUP=1 [MQTT-3.3.1-1] and their original
    // packet ids [MQTT-2.3.1-3], in order [MQTT-4.6.0-1].
    let resent = publishes(&output);
    let expected: Vec<_> = sent[1..].iter().map(|(p, id, _)| (p.clone(), *id, true)).collect();
    assert_eq!(resent, expected);
}

#[test]
fn the_inbound_qos2_state_survives_a_restart_so_nothing_is_delivered_twice() {
    let mut cluster = Cluster::new(1);
    let logs = with_logs(&mut cluster);
    let (sub, _) = cluster.connect_with("sub", false);
    cluster.subscribe(&sub, "t");
    assert!(matches!(cluster.output(&sub)[..], [Packet::SubAck(_)]));
    let (publisher, _) = cluster.connect_with("pub", false);
    cluster.send(&publisher, publish_qos("t", b"once", QoS::ExactlyOnce, 7, false));
    let acks = cluster.output(&publisher);
    assert!(matches!(&acks[..], [Packet::PubRec(r)] if r.packet_id.get() == 7), "{acks:?}");
    assert_eq!(payloads(&cluster.output(&sub)), vec![b"once".as_slice()]);
    cluster.send(&sub, Packet::PubAck(PubResponse::new(PacketId::new(1).unwrap())));
    let (mut cluster, _) = restart(&cluster, &logs);
    let (sub, _) = cluster.connect_with("sub", false);
    // Subscribed again, so that only the QoS 2 state can keep the message
    // from it.
    cluster.subscribe(&sub, "t");
    assert!(matches!(cluster.output(&sub)[..], [Packet::SubAck(_)]));
    let (publisher, _) = cluster.connect_with("pub", false);
    // [MQTT-4.3.3-2] until PUBREL, a PUBLISH with the same packet id is
    // acknowledged again and not delivered again, across the restart.
    cluster.send(&publisher, publish_qos("t", b"once", QoS::ExactlyOnce, 7, true));
    let acks = cluster.output(&publisher);
    assert!(matches!(&acks[..], [Packet::PubRec(r)] if r.packet_id.get() == 7), "{acks:?}");
    assert!(payloads(&cluster.output(&sub)).is_empty());
    cluster.send(&publisher, Packet::PubRel(PubResponse::new(PacketId::new(7).unwrap())));
    let acks = cluster.output(&publisher);
    assert!(
        matches!(&acks[..], [Packet::PubComp(r)] if r.reason == ReasonCode::Success),
        "{acks:?}"
    );
}

#[test]
fn clean_sessions_and_qos0_are_never_logged_and_a_message_is_written_once_per_shard() {
    let mut cluster = Cluster::new(1);
    let logs = with_logs(&mut cluster);
    let clean = cluster.connect("clean");
    cluster.subscribe(&clean, "t");
    let mut persistent = Vec::new();
    for i in 0..3 {
        let (sub, _) = cluster.connect_with(&format!("p{i}"), false);
        cluster.subscribe(&sub, "t");
        cluster.output(&sub);
        cluster.close(&sub);
        persistent.push(sub);
    }
    let mut entries = Vec::new();
    logs[0].take_now(&mut entries);
    let publisher = cluster.connect("pub");
    cluster.send(&publisher, publish("t", b"qos0", false));
    cluster.send(&publisher, publish_qos("t", b"qos1", QoS::AtLeastOnce, 1, false));
    entries.clear();
    logs[0].take_now(&mut entries);
    let kinds: Vec<&str> = entries
        .iter()
        .map(|e| match e {
            Entry::Record(Record::Message { .. }) => "message",
            Entry::Record(Record::Enqueue { .. }) => "enqueue",
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(kinds, ["message", "enqueue", "enqueue", "enqueue"]);
}

#[test]
fn compaction_keeps_the_live_sessions() {
    let mut cluster = Cluster::new(1);
    let logs = with_logs(&mut cluster);
    let (sub, _) = cluster.connect_with("sub", false);
    cluster.subscribe(&sub, "t");
    cluster.output(&sub);
    cluster.close(&sub);
    let (gone, _) = cluster.connect_with("gone", false);
    cluster.subscribe(&gone, "t");
    cluster.output(&gone);
    let publisher = cluster.connect("pub");
    for i in 0..4u8 {
        cluster.send(&publisher, publish_qos("t", &[i], QoS::AtLeastOnce, 1, false));
    }
    // `gone` reads and acknowledges everything, then ends (clean start).
    for (_, id, _) in publishes(&cluster.output(&gone)) {
        cluster.send(&gone, Packet::PubAck(PubResponse::new(PacketId::new(id.unwrap()).unwrap())));
    }
    cluster.connect("gone");
    logs[0].request_compaction();
    let now = cluster.now;
    assert!(cluster.shards[0].begin_compaction());
    while !cluster.shards[0].compaction_step(now, crate::shard::SLICE_RECORDS).unwrap().done {}
    cluster.send(&publisher, publish_qos("t", b"late", QoS::AtLeastOnce, 1, false));
    let (mut cluster, _) = restart(&cluster, &logs);
    let (_, output) = cluster.connect_with("sub", false);
    let got: Vec<Vec<u8>> = publishes(&output).into_iter().map(|(p, ..)| p).collect();
    assert_eq!(got, vec![vec![0], vec![1], vec![2], vec![3], b"late".to_vec()]);
    let (_, output) = cluster.connect_with("gone", false);
    let Packet::ConnAck(connack) = &output[0] else { panic!() };
    assert!(!connack.session_present);
}

#[test]
fn a_compaction_in_slices_between_traffic_replays_to_the_live_sessions() {
    let mut cluster = Cluster::new(1);
    let logs = with_logs(&mut cluster);
    // Persistent subscribers, every other one offline.
    let mut subs = Vec::new();
    for i in 0..12 {
        let (sub, _) = cluster.connect_with(&format!("s{i}"), false);
        cluster.subscribe(&sub, "t/#");
        cluster.output(&sub);
        if i % 2 == 0 {
            cluster.close(&sub);
        }
        subs.push(sub);
    }
    let publisher = cluster.connect("pub");
    for i in 0..3u8 {
        cluster.send(&publisher, publish_qos("t/a", &[i], QoS::AtLeastOnce, 1, false));
    }
    logs[0].request_compaction();
    assert!(cluster.shards[0].begin_compaction());
    let mut steps = 0u8;
    loop {
        // Between two slices: a message to everyone, an online subscriber
        // acknowledges what it was sent, a session ends, another starts,
        // a retained message changes.
        let payload = [100 + steps];
        cluster.send(&publisher, publish_qos("t/b", &payload, QoS::AtLeastOnce, 1, false));
        let online = &subs[usize::from(steps) * 2 % 12 + 1];
        for (_, id, _) in publishes(&cluster.output(online)) {
            let id = PacketId::new(id.unwrap()).unwrap();
            cluster.send(online, Packet::PubAck(PubResponse::new(id)));
        }
        if steps == 2 {
            cluster.connect("s4");
        }
        if steps == 3 {
            let (late, _) = cluster.connect_with("late", false);
            cluster.subscribe(&late, "t/#");
            cluster.close(&late);
        }
        let retained =
            publish_qos(&format!("r/{}", steps % 3), &payload, QoS::AtMostOnce, 0, false);
        let Packet::Publish(mut retained) = retained else { unreachable!() };
        retained.retain = true;
        cluster.send(&publisher, Packet::Publish(retained));
        let now = cluster.now;
        steps += 1;
        if cluster.shards[0].compaction_step(now, 10).unwrap().done {
            break;
        }
    }
    assert!(steps > 5, "in slices: {steps}");
    cluster.send(&publisher, publish_qos("t/c", b"after", QoS::AtLeastOnce, 1, false));
    let expected = cluster.shards[0].stored_sessions();
    assert_eq!(expected.sessions.len(), 12, "11 of the 12 and the late one");
    let (segments, first_live) = segments_of(&logs[0]);
    assert!(first_live > 0);
    // With the segments before the compaction (a crash before they were
    // deleted), and without them.
    for from in [0, first_live] {
        let state = recover(&segments[from..]);
        assert_eq!(state.sessions.sessions, expected.sessions, "from segment {from}");
        assert_eq!(state.sessions.messages, expected.messages, "from segment {from}");
        let mut retained: Vec<String> = state.retained.keys().map(|t| t.to_string()).collect();
        retained.sort();
        assert_eq!(retained, ["r/0", "r/1", "r/2"], "from segment {from}");
    }
}

/// The message being fanned out when a compaction starts is written again
/// for the sessions it is queued to afterwards: a session that took a
/// position the sweep had passed is never sliced, and the record from
/// before the start is deleted with the old segments.
#[test]
fn a_message_queued_again_after_a_compaction_started_is_written_again() {
    let mut cluster = Cluster::new(1);
    let logs = with_logs(&mut cluster);
    // Position 0 of the session table, freed later.
    let (first, _) = cluster.connect_with("first", true);
    let publisher = cluster.connect("pub");
    let Packet::Publish(mut retained) = publish_qos("r/1", b"r", QoS::AtLeastOnce, 1, false) else {
        unreachable!()
    };
    retained.retain = true;
    cluster.send(&publisher, Packet::Publish(retained));
    // The stored retained message, sent to a persistent session that
    // acknowledges it: no queue holds it when the compaction starts.
    let (early, _) = cluster.connect_with("early", false);
    cluster.subscribe(&early, "r/#");
    for (_, id, _) in publishes(&cluster.output(&early)) {
        let id = PacketId::new(id.unwrap()).unwrap();
        cluster.send(&early, Packet::PubAck(PubResponse::new(id)));
    }
    logs[0].request_compaction();
    let now = cluster.now;
    assert!(cluster.shards[0].begin_compaction());
    // The retained message, then position 0.
    let step = cluster.shards[0].compaction_step(now, 2).unwrap();
    assert!(!step.done, "the sweep passed position 0 only");
    cluster.close(&first);
    let (late, _) = cluster.connect_with("late", false);
    cluster.subscribe(&late, "r/#");
    while !cluster.shards[0].compaction_step(now, 1).unwrap().done {}
    let expected = cluster.shards[0].stored_sessions();
    let queued: usize = expected.sessions.values().map(|s| s.queue.len() + s.inflight.len()).sum();
    assert_eq!(queued, 1, "{expected:?}");
    let (segments, first_live) = segments_of(&logs[0]);
    let state = recover(&segments[first_live..]);
    assert_eq!(state.sessions.sessions, expected.sessions);
    assert_eq!(state.sessions.messages, expected.messages);
}

/// [MQTT-3.3.2-5] A message whose expiry passed while it waited in an
/// offline session's queue is not sent; its removal is logged, so the log
/// holds what the session holds (a restart before its expiry by the wall
/// clock would otherwise bring it back).
#[test]
fn an_expired_message_dropped_at_the_head_of_a_queue_is_logged_as_removed() {
    let mut cluster = Cluster::new(1);
    let logs = with_logs(&mut cluster);
    let (sub, _) = cluster.connect_with("sub", false);
    cluster.subscribe(&sub, "t");
    cluster.output(&sub);
    cluster.close(&sub);
    let (publisher, _) = cluster.connect_packet(&connect_v5("pub", 0));
    let Packet::Publish(mut short) = publish_qos("t", b"short", QoS::AtLeastOnce, 1, false) else {
        unreachable!()
    };
    short.properties = crate::protocol::PublishProperties {
        message_expiry_interval: Some(3600),
        ..Default::default()
    }
    .into();
    cluster.send(&publisher, Packet::Publish(short));
    cluster.send(&publisher, publish_qos("t", b"kept", QoS::AtLeastOnce, 2, false));
    // Back after the first one expired (by the shard's clock; by the wall
    // clock of the restart below it has not).
    cluster.now += Duration::from_secs(3601);
    let (_, output) = cluster.connect_with("sub", false);
    let got: Vec<Vec<u8>> = publishes(&output).into_iter().map(|(p, ..)| p).collect();
    assert_eq!(got, vec![b"kept".to_vec()]);
    let held = cluster.shards[0].stored_sessions();
    assert_eq!(held.sessions.len(), 1);
    let logged = recovered(&logs[0]).sessions;
    assert_eq!(logged.sessions, held.sessions);
    assert_eq!(logged.messages, held.messages);
}

fn pubacks(packets: &[Packet]) -> Vec<u16> {
    packets
        .iter()
        .filter_map(|p| match p {
            Packet::PubAck(ack) => Some(ack.packet_id.get()),
            _ => None,
        })
        .collect()
}

#[test]
fn with_durability_always_a_puback_waits_for_every_shard_that_logged_the_message() {
    let mut cluster = Cluster::new(2);
    let logs = with_logs(&mut cluster);
    cluster.shards.iter_mut().for_each(|shard| shard.set_durable_acks());
    let sub_id = id_on("sub", 0, 2);
    let (sub, _) = cluster.connect_with(&sub_id, false);
    cluster.subscribe(&sub, "t");
    cluster.settle();
    // The SUBACK of a persistent session waits for its records too.
    assert!(cluster.output(&sub).is_empty());
    logs[0].sync_now();
    cluster.shards[0].handle_durable();
    assert!(matches!(cluster.output(&sub)[..], [Packet::SubAck(_)]));
    cluster.close(&sub);
    logs.iter().for_each(|log| _ = log.sync_now());
    let publisher = cluster.connect(&id_on("pub", 1, 2));
    cluster.send(&publisher, publish_qos("t", b"m", QoS::AtLeastOnce, 5, false));
    cluster.send(&publisher, Packet::PingReq);
    cluster.settle();
    // Shard 0 queued it to the offline session and logged it; its log has
    // not synced: no PUBACK yet [MQTT-4.3.2-2], and what is owed after it
    // (the PINGRESP) waits behind it, in order [MQTT-4.6.0-2].
    assert!(pubacks(&cluster.output(&publisher)).is_empty());
    // Shard 1's own log syncing changes nothing: shard 0 holds the record.
    logs[1].sync_now();
    cluster.shards[1].handle_durable();
    cluster.settle();
    assert!(cluster.output(&publisher).is_empty());
    let written = logs[0].sync_now();
    assert!(written.iter().any(|e| matches!(e, Entry::Record(Record::Enqueue { .. }))));
    cluster.shards[0].handle_durable();
    cluster.settle();
    let output = cluster.output(&publisher);
    assert_eq!(pubacks(&output), vec![5]);
    assert!(matches!(output.last(), Some(Packet::PingResp)), "{output:?}");
}

/// A shard counts the QoS 1/2 messages it sends each peer, and the peer
/// reports how many of those it logged durably: messages from another
/// node, which a shard forwards to its peers, must be counted on both
/// sides too, or a report would cover a local client's message that the
/// peer has not synced yet.
#[test]
fn with_durability_always_messages_from_other_nodes_do_not_release_a_puback_early() {
    let mut cluster = Cluster::new(2);
    let logs = with_logs(&mut cluster);
    cluster.shards.iter_mut().for_each(|shard| shard.set_durable_acks());
    let setup = crate::router::cluster::ClusterSetup::for_tests(2, &[]);
    cluster.shards[1].set_cluster(Rc::new(setup.link(ShardId::from_index(1).unwrap())));
    let sub_id = id_on("sub", 0, 2);
    let (sub, _) = cluster.connect_with(&sub_id, false);
    cluster.subscribe(&sub, "t");
    cluster.settle();
    logs[0].sync_now();
    cluster.shards[0].handle_durable();
    cluster.output(&sub);
    cluster.close(&sub);
    logs.iter().for_each(|log| _ = log.sync_now());
    // A QoS 1 message from another node reaches shard 1, which forwards it
    // to shard 0; shard 0 logs it, syncs, and reports it to shard 1.
    let remote = Arc::new(crate::message::Message {
        topic: TopicName::new("t").unwrap(),
        payload: bytes::Bytes::from_static(b"remote"),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: Default::default(),
        publisher: Some("elsewhere".into()),
        expires_at: None,
        id: 0,
    });
    let now = cluster.now;
    cluster.shards[1].handle_cluster(crate::router::cluster::FromBridge::Publish(remote), now);
    for message in cluster.queued(1, 0) {
        cluster.shards[0].handle_shard_message(ShardId::from_index(1).unwrap(), message, now);
    }
    logs[0].sync_now();
    cluster.shards[0].handle_durable();
    // A client of shard 1 publishes to the same subscriber: logged on
    // shard 0, not synced. The report of the first message arrives.
    let publisher = cluster.connect(&id_on("pub", 1, 2));
    cluster.send(&publisher, publish_qos("t", b"local", QoS::AtLeastOnce, 7, false));
    cluster.settle();
    assert!(pubacks(&cluster.output(&publisher)).is_empty(), "acknowledged before shard 0 synced");
    logs[0].sync_now();
    cluster.shards[0].handle_durable();
    cluster.settle();
    // In a cluster the PUBACK also waits for the other nodes (the bridge
    // answers its ticket).
    let accepted = crate::router::cluster::FromBridge::Accepted(1);
    cluster.shards[1].handle_cluster(accepted, cluster.now);
    assert_eq!(pubacks(&cluster.output(&publisher)), vec![7]);
}

/// Issue 17 item 8: with `durability = "always"`, a QoS 1 message from
/// another node is acknowledged to that node (whose publisher's PUBACK
/// waits for it) only once every shard that logged it synced.
#[test]
fn with_durability_always_another_nodes_message_is_acknowledged_to_it_once_synced() {
    use crate::router::cluster::{ClusterSetup, FromBridge, RemoteAck};
    let mut cluster = Cluster::new(2);
    let logs = with_logs(&mut cluster);
    cluster.shards.iter_mut().for_each(|shard| shard.set_durable_acks());
    let setup = ClusterSetup::for_tests(2, &[]);
    cluster.shards[1].set_cluster(Rc::new(setup.link(ShardId::from_index(1).unwrap())));
    let (sub, _) = cluster.connect_with(&id_on("sub", 0, 2), false);
    cluster.subscribe(&sub, "t");
    cluster.settle();
    logs[0].sync_now();
    cluster.shards[0].handle_durable();
    cluster.output(&sub);
    cluster.close(&sub);
    logs.iter().for_each(|log| _ = log.sync_now());
    let remote = Arc::new(crate::message::Message {
        topic: TopicName::new("t").unwrap(),
        payload: bytes::Bytes::from_static(b"remote"),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: Default::default(),
        publisher: Some("elsewhere".into()),
        expires_at: None,
        id: 0,
    });
    let now = cluster.now;
    let acked = FromBridge::AckedPublish { message: remote, ack: RemoteAck::for_tests(42) };
    cluster.shards[1].handle_cluster(acked, now);
    cluster.settle();
    assert!(setup.take_remote_acks().is_empty(), "shard 0 logged it and has not synced");
    logs[0].sync_now();
    cluster.shards[0].handle_durable();
    cluster.settle();
    assert_eq!(setup.take_remote_acks(), [42]);
    // Without durability the acknowledgement goes once it is routed.
    cluster.shards[1] = Shard::new(
        ShardId::from_index(1).unwrap(),
        2,
        crate::session::SessionLimits::default(),
        Rc::clone(&cluster.outboxes[1]),
        1,
    );
    cluster.shards[1].set_cluster(Rc::new(setup.link(ShardId::from_index(1).unwrap())));
    let message = Arc::new(crate::message::Message {
        topic: TopicName::new("u").unwrap(),
        payload: bytes::Bytes::from_static(b"x"),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: Default::default(),
        publisher: None,
        expires_at: None,
        id: 0,
    });
    let acked = FromBridge::AckedPublish { message, ack: RemoteAck::for_tests(43) };
    cluster.shards[1].handle_cluster(acked, now);
    assert_eq!(setup.take_remote_acks(), [43]);
}

#[test]
fn with_durability_always_a_retained_message_is_acknowledged_once_synced() {
    let mut cluster = Cluster::new(1);
    let logs = with_logs(&mut cluster);
    cluster.shards[0].set_durable_acks();
    let publisher = cluster.connect("pub");
    let mut retained = publish_qos("r", b"kept", QoS::AtLeastOnce, 3, false);
    if let Packet::Publish(p) = &mut retained {
        p.retain = true;
    }
    cluster.send(&publisher, retained);
    assert!(pubacks(&cluster.output(&publisher)).is_empty());
    let written = logs[0].sync_now();
    assert!(written.iter().any(|e| matches!(e, Entry::Record(Record::RetainSet(_)))));
    cluster.shards[0].handle_durable();
    assert_eq!(pubacks(&cluster.output(&publisher)), vec![3]);
    // Nothing logged by a publish: acknowledged at once (the log holds no
    // record that is not durable).
    cluster.send(&publisher, publish_qos("nobody", b"x", QoS::AtLeastOnce, 4, false));
    assert_eq!(pubacks(&cluster.output(&publisher)), vec![4]);
}

#[test]
fn a_kept_will_is_published_after_its_delay_counted_from_the_restart() {
    let mut cluster = Cluster::new(2);
    let logs = with_logs(&mut cluster);
    let (watcher, _) = cluster.connect_with("watcher", false);
    cluster.subscribe(&watcher, "wills/#");
    cluster.settle();
    cluster.output(&watcher);
    cluster.close(&watcher);
    let mut connect = connect_v5("mortal", 600);
    connect.will = Some(crate::protocol::Will {
        topic: TopicName::new("wills/mortal").unwrap(),
        payload: bytes::Bytes::from_static(b"gone"),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: crate::protocol::WillProperties {
            will_delay_interval: Some(5),
            content_type: Some("text/plain".into()),
            ..Default::default()
        },
    });
    // Connected with its will when the broker dies.
    cluster.connect_packet(&connect);
    let (mut cluster, _) = restart(&cluster, &logs);
    // The connection ended at the restart: the will waits for its delay
    // [MQTT-3.1.3-9], then goes to the (offline, persistent) watcher.
    let (watcher, _) = cluster.connect_with("watcher", false);
    cluster.now += Duration::from_secs(4);
    cluster.sweep();
    assert!(payloads(&cluster.output(&watcher)).is_empty());
    cluster.now += Duration::from_secs(2);
    cluster.sweep();
    assert_eq!(payloads(&cluster.output(&watcher)), vec![b"gone".as_slice()]);
}

#[test]
fn with_an_acl_file_a_restored_session_keeps_the_rules_of_its_user() {
    use crate::auth::acl::AclFile;
    let file = Arc::new(AclFile::parse("user alice\ntopic read ok/#\ntopic write #\n").unwrap());
    let mut cluster = Cluster::new(1);
    cluster.shards[0].set_acl(Some(Arc::clone(&file)));
    let logs = with_logs(&mut cluster);
    let mut connect = connect_v5("sub", 600);
    connect.username = Some("alice".into());
    let (sub, _) = cluster.connect_packet(&connect);
    cluster.subscribe(&sub, "#");
    cluster.output(&sub);
    cluster.close(&sub);
    let mut fresh = Cluster::new(1);
    fresh.shards[0].set_acl(Some(file));
    let now = fresh.now;
    fresh.shards[0].attach_log(Rc::new(Log::new()), recovered(&logs[0]), now);
    let mut cluster = fresh;
    let mut publisher = connect_v5("pub", 0);
    publisher.username = Some("alice".into());
    let (publisher, _) = cluster.connect_packet(&publisher);
    // Queued to the offline session after the restart: checked against
    // alice's rules, as before it.
    cluster.send(&publisher, publish_qos("secret/x", b"no", QoS::AtLeastOnce, 1, false));
    cluster.send(&publisher, publish_qos("ok/x", b"yes", QoS::AtLeastOnce, 2, false));
    let (_, output) = cluster.connect_packet(&connect);
    assert_eq!(payloads(&output), vec![b"yes".as_slice()]);
}

#[test]
fn while_one_shards_log_fails_every_shard_refuses_qos1_and_2_and_serves_qos0() {
    let mut cluster = Cluster::new(2);
    let _logs = with_logs(&mut cluster);
    let sub = cluster.connect(&id_on("sub", 0, 2));
    cluster.subscribe(&sub, "t");
    cluster.settle();
    assert!(matches!(cluster.output(&sub)[..], [Packet::SubAck(_)]));
    let connect = Connect {
        version: ProtocolVersion::V5,
        clean_start: true,
        keep_alive: 0,
        client_id: id_on("pub5", 1, 2).into(),
        will: None,
        username: None,
        password: None,
        properties: Default::default(),
    };
    let (v5, _) = cluster.connect_packet(&connect);
    let v311 = cluster.connect(&id_on("pub3", 1, 2));
    // Shard 0's writer cannot write (disk full): it tells shard 1, whose
    // publishers' messages could be logged on shard 0.
    cluster.shards[0].handle_store_failing(true);
    cluster.settle();
    cluster.send(&v5, publish_qos("t", b"q1", QoS::AtLeastOnce, 1, false));
    cluster.send(&v5, publish_qos("t", b"q2", QoS::ExactlyOnce, 2, false));
    cluster.send(&v5, publish_qos("t", b"q0", QoS::AtMostOnce, 0, false));
    cluster.settle();
    let reasons: Vec<_> = cluster
        .output(&v5)
        .into_iter()
        .map(|packet| match packet {
            Packet::PubAck(ack) | Packet::PubRec(ack) => (ack.packet_id.get(), ack.reason),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(reasons, [(1, ReasonCode::QuotaExceeded), (2, ReasonCode::QuotaExceeded)]);
    // 3.1.1: closed [MQTT-3.3.5-2], not counted as a protocol violation.
    let now = cluster.now;
    let open = cluster.shards[1]
        .handle_packet(v311.key, v311.id, now, publish_qos("t", b"x", QoS::AtLeastOnce, 1, false))
        .unwrap();
    assert!(!open, "closed");
    assert_eq!(cluster.shards[1].counters().shard.protocol_violations, 0);
    assert_eq!(cluster.shards[1].counters().session.refused_store_unavailable, 3);
    cluster.settle();
    assert_eq!(publishes(&cluster.output(&sub)), vec![(b"q0".to_vec(), None, false)]);
    // Written again: accepted again.
    cluster.shards[0].handle_store_failing(false);
    cluster.settle();
    cluster.send(&v5, publish_qos("t", b"q1", QoS::AtLeastOnce, 3, false));
    cluster.settle();
    let output = cluster.output(&v5);
    assert!(
        matches!(&output[..], [Packet::PubAck(ack)] if ack.reason == ReasonCode::Success),
        "{output:?}"
    );
    assert_eq!(publishes(&cluster.output(&sub)).len(), 1);
}

#[test]
fn messages_cut_from_a_persistent_queue_do_not_come_back_after_a_restart() {
    let two = SessionLimits { max_queued_messages: 2, ..SessionLimits::default() };
    let mut cluster = Cluster::with_limits(2, two);
    let logs = with_logs(&mut cluster);
    let sub_id = id_on("sub", 0, 2);
    let (sub, _) = cluster.connect_with(&sub_id, false);
    cluster.subscribe(&sub, "t");
    cluster.settle();
    assert!(matches!(cluster.output(&sub)[..], [Packet::SubAck(_)]));
    // The subscriber reads nothing: five QoS 1 messages queue, past its
    // limit of two (queued all the same while it is connected).
    let publisher = cluster.connect(&id_on("pub", 0, 2));
    for i in 0..5u8 {
        let packet = publish_qos("t", &[i], QoS::AtLeastOnce, u16::from(i) + 1, false);
        let now = cluster.now;
        cluster.shards[publisher.shard]
            .handle_packet(publisher.key, publisher.id, now, packet)
            .unwrap();
    }
    cluster.settle();
    // It leaves: its queue is cut to its limit, the newest go.
    cluster.close(&sub);
    assert_eq!(cluster.shards[0].counters().session.dropped_queue_full, [0, 3, 0]);
    let (mut cluster, _) = restart(&cluster, &logs);
    let (_, output) = cluster.connect_with(&sub_id, false);
    let got: Vec<Vec<u8>> = publishes(&output).into_iter().map(|(p, ..)| p).collect();
    assert_eq!(got, vec![vec![0], vec![1]], "what was cut stays cut");
}
