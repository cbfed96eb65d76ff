//! The persistent sessions of a shard as its log holds them, sans-IO: the
//! plain data that recovery rebuilds from the session records and that a
//! snapshot writes back, and the rules that apply one record to it.
//!
//! What is logged of a session that is not clean (3.1.1 Clean Session 0;
//! 5.0 Session Expiry Interval > 0) [MQTT-3.1.2-4], [MQTT-3.1.2-23]: its
//! client id, expiry and will (with its delay), its subscriptions with
//! their options and identifiers, its queued and in-flight QoS 1/2
//! messages (a PUBREL awaiting PUBCOMP included) and the packet ids of the
//! QoS 2 messages it received and has not seen released [MQTT-4.3.3-2].
//! A message fanned out to many sessions of one shard is written once
//! ([`Record::Message`](super::Record::Message), numbered by the shard) and
//! referenced by each session's [`Record::Enqueue`](super::Record::Enqueue).
//! Clean sessions and QoS 0 messages are never logged.
//!
//! Sessions are numbered by the shard (`sid`), messages too (`mid`); both
//! numbers only grow within a shard's log (a restart goes on after the
//! largest one recovery saw), so a record never meets a number reused
//! before it in the log.

use super::record::Record;
use crate::message::Message;
use crate::protocol::{PacketId, QoS, SubscriptionIds, SubscriptionOptions, TopicFilter};
use bytestring::ByteString;
use hashbrown::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

/// A will kept with its session: the message it becomes (publisher set,
/// no expiry instant: its Message Expiry Interval counts from when it is
/// published) and its Will Delay Interval in seconds (5.0 §3.1.3.2.2).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredWill {
    /// Seconds between the end of the connection and the publication.
    pub delay: u32,
    /// The will as a message.
    pub message: Message,
}

/// A QoS 1/2 message waiting in, or sent from, a session's queue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredEntry {
    /// The shard's number of the message ([`Record::Message`]).
    pub mid: u64,
    /// The QoS it is sent with (1 or 2).
    pub qos: QoS,
    /// The RETAIN flag it is sent with.
    pub retain: bool,
    /// Whether it came from the retained store for a new subscription.
    pub from_retained: bool,
    /// The subscription identifiers it is sent with.
    pub subscription_ids: SubscriptionIds,
}

/// An unacknowledged outgoing flow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoredFlow {
    /// PUBLISH sent, awaiting PUBACK (QoS 1) or PUBREC (QoS 2).
    Sent(StoredEntry),
    /// PUBREL sent, awaiting PUBCOMP [MQTT-4.3.3-1].
    Released,
}

/// A subscription of a stored session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoredSubscription {
    /// Its options.
    pub options: SubscriptionOptions,
    /// Its v5 Subscription Identifier.
    pub identifier: Option<NonZeroU32>,
}

/// A persistent session as the log holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredSession {
    /// The client id.
    pub client_id: ByteString,
    /// How long it outlives its connection; `None`: never expires.
    pub expiry: Option<Duration>,
    /// The user name its ACL rules are for, kept with an `acl_file` so that
    /// messages queued to it after a restart are checked as before.
    pub username: Option<ByteString>,
    /// Its will, if one is still to be published.
    pub will: Option<Box<StoredWill>>,
    /// Subscriptions by filter.
    pub subscriptions: HashMap<TopicFilter, StoredSubscription>,
    /// Messages not sent yet, oldest first.
    pub queue: Vec<StoredEntry>,
    /// Unacknowledged flows, in the order they are re-sent
    /// [MQTT-4.6.0-1].
    pub inflight: Vec<(PacketId, StoredFlow)>,
    /// QoS 2 packet ids received and answered with PUBREC, not released.
    pub qos2_in: Vec<PacketId>,
}

impl StoredSession {
    /// A session with no state but its header.
    pub fn new(client_id: ByteString, expiry: Option<Duration>) -> Self {
        Self {
            client_id,
            expiry,
            username: None,
            will: None,
            subscriptions: HashMap::new(),
            queue: Vec::new(),
            inflight: Vec::new(),
            qos2_in: Vec::new(),
        }
    }

    /// The queued and in-flight messages.
    fn entries(&self) -> impl Iterator<Item = &StoredEntry> {
        let sent = self.inflight.iter().filter_map(|(_, flow)| match flow {
            StoredFlow::Sent(entry) => Some(entry),
            StoredFlow::Released => None,
        });
        self.queue.iter().chain(sent)
    }
}

/// The sessions of a shard's log and the messages they reference.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SessionState {
    /// Sessions by number.
    pub sessions: HashMap<u64, StoredSession>,
    /// Messages by number.
    pub messages: HashMap<u64, Arc<Message>>,
    /// One more than the largest session number seen.
    pub next_sid: u64,
    /// One more than the largest message number seen.
    pub next_mid: u64,
}

impl SessionState {
    /// Applies a session record; returns false for any other record.
    pub fn apply(&mut self, record: Record) -> bool {
        match record {
            Record::SessionOpen { sid, client_id, expiry, username, will } => {
                self.saw_sid(sid);
                let session = self
                    .sessions
                    .entry(sid)
                    .or_insert_with(|| StoredSession::new(client_id.clone(), expiry));
                session.client_id = client_id;
                session.expiry = expiry;
                session.username = username;
                session.will = will;
            }
            Record::SessionEnd { sid } => {
                self.saw_sid(sid);
                self.sessions.remove(&sid);
            }
            Record::Subscribe { sid, filter, subscription } => {
                if let Some(session) = self.sessions.get_mut(&sid) {
                    session.subscriptions.insert(filter, subscription);
                }
            }
            Record::Unsubscribe { sid, filter } => {
                if let Some(session) = self.sessions.get_mut(&sid) {
                    session.subscriptions.remove(&filter);
                }
            }
            Record::Message { mid, message } => {
                self.next_mid = self.next_mid.max(mid + 1);
                self.messages.insert(mid, message);
            }
            Record::Enqueue { sid, entry } => {
                if let Some(session) = self.sessions.get_mut(&sid) {
                    session.queue.push(entry);
                }
            }
            Record::Sent { sid, mid, packet_id } => {
                let Some(session) = self.sessions.get_mut(&sid) else { return true };
                if let Some(at) = session.queue.iter().position(|e| e.mid == mid) {
                    let entry = session.queue.remove(at);
                    session.inflight.retain(|(id, _)| *id != packet_id);
                    session.inflight.push((packet_id, StoredFlow::Sent(entry)));
                }
            }
            Record::Released { sid, packet_id } => {
                let Some(session) = self.sessions.get_mut(&sid) else { return true };
                // The PUBREL takes its place in the order of re-sending
                // when the PUBREC arrives [MQTT-4.6.0-4].
                session.inflight.retain(|(id, _)| *id != packet_id);
                session.inflight.push((packet_id, StoredFlow::Released));
            }
            Record::Completed { sid, packet_id } => {
                if let Some(session) = self.sessions.get_mut(&sid) {
                    session.inflight.retain(|(id, _)| *id != packet_id);
                }
            }
            Record::Dropped { sid, mid } => {
                // The queue is cut from its end (see `trim_to_limits`).
                let Some(session) = self.sessions.get_mut(&sid) else { return true };
                if let Some(at) = session.queue.iter().rposition(|e| e.mid == mid) {
                    session.queue.remove(at);
                }
            }
            Record::Expired { sid, mid } => {
                // Dropped at the head of the queue: the oldest entry.
                let Some(session) = self.sessions.get_mut(&sid) else { return true };
                if let Some(at) = session.queue.iter().position(|e| e.mid == mid) {
                    session.queue.remove(at);
                }
            }
            Record::Qos2In { sid, packet_id } => {
                if let Some(session) = self.sessions.get_mut(&sid) {
                    if !session.qos2_in.contains(&packet_id) {
                        session.qos2_in.push(packet_id);
                    }
                }
            }
            Record::Qos2Done { sid, packet_id } => {
                if let Some(session) = self.sessions.get_mut(&sid) {
                    session.qos2_in.retain(|id| *id != packet_id);
                }
            }
            Record::Flows { sid, ops } => {
                for op in ops {
                    self.apply(op.record(sid));
                }
            }
            Record::RetainSet(_) | Record::RetainDelete(_) | Record::SnapshotEnd => return false,
        }
        true
    }

    fn saw_sid(&mut self, sid: u64) {
        self.next_sid = self.next_sid.max(sid + 1);
    }

    /// At the end of recovery: queued messages whose expiry passed
    /// ([MQTT-3.3.2-5]) or whose message is missing are dropped, and so
    /// are the messages no session references any more. Returns how many
    /// queued messages expired.
    pub fn finish(&mut self, now: std::time::Instant) -> u64 {
        let mut expired = 0;
        let messages = &self.messages;
        for session in self.sessions.values_mut() {
            session.queue.retain(|entry| match messages.get(&entry.mid) {
                Some(message) if message.expires_at.is_some_and(|at| at <= now) => {
                    expired += 1;
                    false
                }
                Some(_) => true,
                None => false,
            });
            session.inflight.retain(|(_, flow)| match flow {
                StoredFlow::Sent(entry) => messages.contains_key(&entry.mid),
                StoredFlow::Released => true,
            });
        }
        let mut referenced = hashbrown::HashSet::new();
        for session in self.sessions.values() {
            referenced.extend(session.entries().map(|entry| entry.mid));
        }
        self.messages.retain(|mid, _| referenced.contains(mid));
        expired
    }

    /// The records that rebuild this state from nothing, for a snapshot:
    /// each message once (those of [`SessionState::finish`] or of a shard's
    /// live sessions are all referenced), then each session
    /// ([`SessionState::session_records`]).
    pub fn snapshot_records(&self, mut each: impl FnMut(Record)) {
        for (&mid, message) in &self.messages {
            each(Record::Message { mid, message: Arc::clone(message) });
        }
        for (&sid, session) in &self.sessions {
            Self::session_records(sid, session, &mut each);
        }
    }

    /// The records of one session for a snapshot, after the messages it
    /// references: header, subscriptions, in-flight flows in their order,
    /// queue, QoS 2 ids.
    pub fn session_records(sid: u64, session: &StoredSession, mut each: impl FnMut(Record)) {
        {
            each(Record::SessionOpen {
                sid,
                client_id: session.client_id.clone(),
                expiry: session.expiry,
                username: session.username.clone(),
                will: session.will.clone(),
            });
            for (filter, subscription) in &session.subscriptions {
                each(Record::Subscribe {
                    sid,
                    filter: filter.clone(),
                    subscription: *subscription,
                });
            }
            for (packet_id, flow) in &session.inflight {
                match flow {
                    StoredFlow::Sent(entry) => {
                        each(Record::Enqueue { sid, entry: entry.clone() });
                        each(Record::Sent { sid, mid: entry.mid, packet_id: *packet_id });
                    }
                    StoredFlow::Released => each(Record::Released { sid, packet_id: *packet_id }),
                }
            }
            for entry in &session.queue {
                each(Record::Enqueue { sid, entry: entry.clone() });
            }
            for &packet_id in &session.qos2_in {
                each(Record::Qos2In { sid, packet_id });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::wire::Clocks;
    use crate::protocol::{BoxedPublishProperties, RetainHandling, TopicName};
    use crate::store::record::{self, FlowOp, Frame, SegmentHeader, SegmentKind, HEADER_LEN};
    use crate::store::recovery::Recovery;
    use bytes::{Bytes, BytesMut};
    use proptest::prelude::*;

    fn message(topic: &str, payload: &[u8]) -> Arc<Message> {
        Arc::new(Message {
            topic: TopicName::new(topic.to_owned()).unwrap(),
            payload: Bytes::copy_from_slice(payload),
            qos: QoS::ExactlyOnce,
            retain: false,
            properties: BoxedPublishProperties::none(),
            publisher: Some("pub".into()),
            expires_at: None,
            id: 0,
        })
    }

    fn pid(id: u16) -> PacketId {
        PacketId::new(id).unwrap()
    }

    fn entry(mid: u64, qos: QoS) -> StoredEntry {
        StoredEntry {
            mid,
            qos,
            retain: mid % 2 == 0,
            from_retained: mid % 3 == 0,
            subscription_ids: (mid % 4 != 0)
                .then(|| NonZeroU32::new(mid as u32 + 1).unwrap())
                .into_iter()
                .collect(),
        }
    }

    /// One record of every session kind.
    fn every_kind() -> Vec<Record> {
        let will = StoredWill { delay: 30, message: Message::clone(&message("will/t", b"gone")) };
        let options = SubscriptionOptions {
            qos: QoS::ExactlyOnce,
            no_local: true,
            retain_as_published: true,
            retain_handling: RetainHandling::DoNotSend,
        };
        vec![
            Record::SessionOpen {
                sid: 7,
                client_id: "dev-1".into(),
                expiry: Some(Duration::from_secs(3600)),
                username: Some("alice".into()),
                will: Some(Box::new(will)),
            },
            Record::SessionOpen {
                sid: 8,
                client_id: "dev-2".into(),
                expiry: None,
                username: None,
                will: None,
            },
            Record::Subscribe {
                sid: 7,
                filter: TopicFilter::new("$share/g/a/+").unwrap(),
                subscription: StoredSubscription { options, identifier: NonZeroU32::new(42) },
            },
            Record::Subscribe {
                sid: 8,
                filter: TopicFilter::new("a/#").unwrap(),
                subscription: StoredSubscription {
                    options: SubscriptionOptions::default(),
                    identifier: None,
                },
            },
            Record::Unsubscribe { sid: 8, filter: TopicFilter::new("a/#").unwrap() },
            Record::Message { mid: 1, message: message("a/b", b"payload") },
            Record::Enqueue { sid: 7, entry: entry(1, QoS::AtLeastOnce) },
            Record::Enqueue { sid: 7, entry: entry(1, QoS::ExactlyOnce) },
            Record::Sent { sid: 7, mid: 1, packet_id: pid(9) },
            Record::Released { sid: 7, packet_id: pid(9) },
            Record::Completed { sid: 7, packet_id: pid(9) },
            Record::Enqueue { sid: 7, entry: entry(1, QoS::AtLeastOnce) },
            Record::Flows {
                sid: 7,
                ops: vec![
                    // Nothing of message 99 is queued: changes nothing.
                    FlowOp::Dropped { mid: 99 },
                    FlowOp::Expired { mid: 99 },
                    FlowOp::Sent { mid: 1, packet_id: pid(10) },
                    FlowOp::Released(pid(10)),
                    FlowOp::Completed(pid(10)),
                    FlowOp::Sent { mid: 1, packet_id: pid(11) },
                ],
            },
            Record::Enqueue { sid: 7, entry: entry(1, QoS::ExactlyOnce) },
            Record::Dropped { sid: 7, mid: 1 },
            Record::Expired { sid: 7, mid: 99 },
            Record::Qos2In { sid: 7, packet_id: pid(65535) },
            Record::Qos2Done { sid: 7, packet_id: pid(65535) },
            Record::SessionEnd { sid: 8 },
        ]
    }

    fn encoded(records: &[Record], clocks: Clocks) -> (Vec<u8>, Vec<usize>) {
        let header = SegmentHeader { kind: SegmentKind::Appends, shard: 0, shards: 1, sequence: 1 };
        let mut out = BytesMut::from(&header.encode()[..]);
        let mut starts = Vec::new();
        for r in records {
            starts.push(out.len());
            record::encode(r, clocks, &mut out).unwrap();
        }
        (out.to_vec(), starts)
    }

    #[test]
    fn every_session_record_round_trips() {
        let clocks = Clocks::read();
        for original in every_kind() {
            let mut out = BytesMut::new();
            record::encode(&original, clocks, &mut out).unwrap();
            let Frame::Record(body, end) = record::frame_at(&out, 0) else {
                panic!("{original:?}")
            };
            assert_eq!(end, out.len());
            assert_eq!(record::decode(body, clocks).unwrap(), original);
        }
    }

    #[test]
    fn the_bytes_of_a_sent_and_an_enqueue_record() {
        let clocks = Clocks::read();
        let mut out = BytesMut::new();
        let sent = Record::Sent { sid: 0x0102, mid: 0x0A0B, packet_id: pid(0x1234) };
        record::encode(&sent, clocks, &mut out).unwrap();
        let body: &[u8] = &[
            10, // kind
            0x02, 0x01, 0, 0, 0, 0, 0, 0, // sid
            0x0B, 0x0A, 0, 0, 0, 0, 0, 0, // mid
            0x34, 0x12, // packet id
        ];
        assert_eq!(&out[..4], &(body.len() as u32).to_le_bytes());
        assert_eq!(&out[8..], body);
        let crc = crc32c::crc32c_append(crc32c::crc32c(&out[..4]), body);
        assert_eq!(&out[4..8], &crc.to_le_bytes());
        let mut out = BytesMut::new();
        let enqueue = Record::Enqueue {
            sid: 1,
            entry: StoredEntry {
                mid: 2,
                qos: QoS::ExactlyOnce,
                retain: true,
                from_retained: false,
                subscription_ids: [NonZeroU32::new(5).unwrap()].into_iter().collect(),
            },
        };
        record::encode(&enqueue, clocks, &mut out).unwrap();
        let body: &[u8] =
            &[9, 1, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0b110, 1, 5, 0, 0, 0];
        assert_eq!(&out[8..], body);
        let mut out = BytesMut::new();
        let flows = Record::Flows {
            sid: 3,
            ops: vec![
                FlowOp::Sent { mid: 0x0A0B, packet_id: pid(0x1234) },
                FlowOp::Released(pid(2)),
                FlowOp::Completed(pid(0x0102)),
                FlowOp::Dropped { mid: 0x0C0D },
                FlowOp::Expired { mid: 0x0E0F },
            ],
        };
        record::encode(&flows, clocks, &mut out).unwrap();
        let body: &[u8] = &[
            15, // kind
            3, 0, 0, 0, 0, 0, 0, 0, // sid
            10, 0x0B, 0x0A, 0, 0, 0, 0, 0, 0, 0x34, 0x12, // sent: mid, packet id
            11, 2, 0, // released
            12, 0x02, 0x01, // completed
            16, 0x0D, 0x0C, 0, 0, 0, 0, 0, 0, // dropped: mid
            17, 0x0F, 0x0E, 0, 0, 0, 0, 0, 0, // expired: mid
        ];
        assert_eq!(&out[8..], body);
    }

    #[test]
    fn an_expired_entry_is_the_oldest_of_its_message_and_a_dropped_one_the_newest() {
        let mut state = SessionState::default();
        state.apply(Record::SessionOpen {
            sid: 1,
            client_id: "c".into(),
            expiry: None,
            username: None,
            will: None,
        });
        // The same message queued twice (two matching subscriptions), and
        // another between.
        for (mid, qos) in [(1, QoS::AtLeastOnce), (2, QoS::AtLeastOnce), (1, QoS::ExactlyOnce)] {
            state.apply(Record::Enqueue { sid: 1, entry: entry(mid, qos) });
        }
        let mut expired = state.clone();
        expired.apply(Record::Flows { sid: 1, ops: vec![FlowOp::Expired { mid: 1 }] });
        let queue = |s: &SessionState| s.sessions[&1].queue.clone();
        assert_eq!(queue(&expired), [entry(2, QoS::AtLeastOnce), entry(1, QoS::ExactlyOnce)]);
        state.apply(Record::Dropped { sid: 1, mid: 1 });
        assert_eq!(queue(&state), [entry(1, QoS::AtLeastOnce), entry(2, QoS::AtLeastOnce)]);
    }

    #[test]
    fn invalid_session_bodies_are_refused() {
        let clocks = Clocks::read();
        // Enqueue of QoS 0 (never logged), a zero packet id, a bad filter,
        // a body that goes on after its fields; flows: none, an unknown
        // change, one cut short, a zero packet id.
        let bodies: [&[u8]; 10] = [
            &[9, 1, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            &[12, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            &[7, 1, 0, 0, 0, 0, 0, 0, 0, b'a', b'#'],
            &[5, 1, 0, 0, 0, 0, 0, 0, 0, 0],
            &[15, 1, 0, 0, 0, 0, 0, 0, 0],
            &[15, 1, 0, 0, 0, 0, 0, 0, 0, 13, 1, 0],
            &[15, 1, 0, 0, 0, 0, 0, 0, 0, 12, 1, 0, 10, 1, 0],
            &[15, 1, 0, 0, 0, 0, 0, 0, 0, 12, 0, 0],
            &[15, 1, 0, 0, 0, 0, 0, 0, 0, 16, 1, 0, 0, 0, 0, 0, 0],
            &[16, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0],
        ];
        for body in bodies {
            assert_eq!(record::decode(body, clocks), Err(record::RecordError::Session), "{body:?}");
        }
    }

    fn recover(segments: &[&[u8]], clocks: Clocks) -> SessionState {
        let mut recovery = Recovery::new(clocks);
        for segment in segments {
            recovery.handle_segment(segment).unwrap();
        }
        recovery.finish().0.sessions
    }

    #[test]
    fn a_torn_session_record_loses_only_itself() {
        let clocks = Clocks::read();
        let records = every_kind();
        let (bytes, starts) = encoded(&records, clocks);
        for (i, &start) in starts.iter().enumerate() {
            let end = starts.get(i + 1).copied().unwrap_or(bytes.len());
            let mut expected = SessionState::default();
            records[..i].iter().cloned().for_each(|r| _ = expected.apply(r));
            expected.finish(clocks.now);
            for cut in start..end {
                assert_eq!(recover(&[&bytes[..cut]], clocks), expected, "record {i}, cut {cut}");
                let mut damaged = bytes[..end].to_vec();
                damaged[cut] ^= 0x40;
                assert_eq!(recover(&[&damaged], clocks), expected, "record {i}, byte {cut}");
            }
        }
    }

    #[test]
    fn a_session_is_rebuilt_with_its_queue_flows_and_qos2_ids() {
        let clocks = Clocks::read();
        let (bytes, _) = encoded(&every_kind(), clocks);
        let state = recover(&[&bytes], clocks);
        assert_eq!(state.sessions.len(), 1, "dev-2 ended");
        let session = &state.sessions[&7];
        assert_eq!(session.client_id, "dev-1");
        assert_eq!(session.will.as_ref().unwrap().delay, 30);
        assert_eq!(session.subscriptions.len(), 1);
        // Enqueued four times: the first sent, released and completed;
        // the second too (in one flows record); the third sent and not
        // acknowledged; the fourth dropped.
        assert!(session.queue.is_empty());
        assert_eq!(session.inflight, vec![(pid(11), StoredFlow::Sent(entry(1, QoS::AtLeastOnce)))]);
        assert!(session.qos2_in.is_empty());
        assert_eq!(state.messages.len(), 1);
        assert_eq!((state.next_sid, state.next_mid), (9, 2));
    }

    #[test]
    fn messages_no_entry_references_and_expired_ones_are_dropped() {
        let clocks = Clocks::read();
        let mut soon = Message::clone(&message("e/1", b"x"));
        soon.expires_at = Some(clocks.now + Duration::from_secs(5));
        let records = vec![
            Record::SessionOpen {
                sid: 1,
                client_id: "c".into(),
                expiry: None,
                username: None,
                will: None,
            },
            Record::Message { mid: 1, message: Arc::new(soon) },
            Record::Message { mid: 2, message: message("e/2", b"y") },
            Record::Message { mid: 3, message: message("e/3", b"z") },
            Record::Enqueue { sid: 1, entry: entry(1, QoS::AtLeastOnce) },
            Record::Enqueue { sid: 1, entry: entry(2, QoS::AtLeastOnce) },
        ];
        let (bytes, _) = encoded(&records, clocks);
        let later = Clocks { now: clocks.now, wall: clocks.wall + Duration::from_secs(6) };
        let mut recovery = Recovery::new(later);
        recovery.handle_segment(&bytes).unwrap();
        let (state, stats) = recovery.finish();
        assert_eq!(stats.queued_expired, 1);
        assert_eq!(state.sessions.sessions[&1].queue, vec![entry(2, QoS::AtLeastOnce)]);
        assert_eq!(state.sessions.messages.keys().copied().collect::<Vec<_>>(), vec![2]);
    }

    /// A change to the sessions of a shard.
    #[derive(Clone, Debug)]
    enum Op {
        Open(u8, bool),
        End(u8),
        Subscribe(u8, u8),
        Unsubscribe(u8, u8),
        /// A message queued to some sessions (a bit set).
        Fanout(u8, u8),
        /// The oldest queued message of a session is sent.
        Send(u8),
        Release(u8),
        Complete(u8),
        /// The newest queued entry of a session is dropped.
        Drop(u8),
        /// Sends (0), releases (1), completions (2) and drops (3) of one
        /// session in one flows record.
        Flows(u8, Vec<u8>),
        Qos2(u8, u16, bool),
        Rotate,
        /// A snapshot written whole (as `reshard` writes one).
        Compact,
        /// Compaction in slices: a compaction segment starts.
        CompactStart,
        /// The slices of the next sessions (by number), as the shard
        /// writes them between other records.
        CompactSlice(u8),
        /// The last slices and the snapshot end.
        CompactEnd,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            2 => (0u8..4, any::<bool>()).prop_map(|(s, w)| Op::Open(s, w)),
            1 => (0u8..4).prop_map(Op::End),
            2 => (0u8..4, 0u8..4).prop_map(|(s, f)| Op::Subscribe(s, f)),
            1 => (0u8..4, 0u8..4).prop_map(|(s, f)| Op::Unsubscribe(s, f)),
            4 => (any::<u8>(), 1u8..3).prop_map(|(set, q)| Op::Fanout(set, q)),
            3 => (0u8..4).prop_map(Op::Send),
            1 => (0u8..4).prop_map(Op::Release),
            2 => (0u8..4).prop_map(Op::Complete),
            1 => (0u8..4).prop_map(Op::Drop),
            3 => (0u8..4, prop::collection::vec(0u8..4, 1..8)).prop_map(|(s, k)| Op::Flows(s, k)),
            2 => (0u8..4, 1u16..4, any::<bool>()).prop_map(|(s, p, d)| Op::Qos2(s, p, d)),
            1 => Just(Op::Rotate),
            1 => Just(Op::Compact),
            1 => Just(Op::CompactStart),
            2 => (1u8..3).prop_map(Op::CompactSlice),
            1 => Just(Op::CompactEnd),
        ]
    }

    /// The records an op appends, given the state so far (a session's
    /// next packet id is its number of Sent records, mod 4, plus 1).
    fn records_of(op: &Op, model: &SessionState, next_mid: &mut u64) -> Vec<Record> {
        let sid = |s: &u8| u64::from(*s) + 1;
        let live = |s: &u8| model.sessions.contains_key(&sid(s));
        let filter = |f: &u8| TopicFilter::new(format!("f/{f}")).unwrap();
        match op {
            Op::Open(s, with_will) => {
                let will = with_will.then(|| {
                    Box::new(StoredWill { delay: 5, message: Message::clone(&message("w", b"w")) })
                });
                let expiry = Some(Duration::from_secs(u64::from(*s) * 100));
                // A user name on odd sessions.
                let username = (s % 2 == 1).then(|| format!("user{s}").into());
                vec![Record::SessionOpen {
                    sid: sid(s),
                    client_id: format!("c{s}").into(),
                    expiry,
                    username,
                    will,
                }]
            }
            Op::End(s) if live(s) => vec![Record::SessionEnd { sid: sid(s) }],
            Op::Subscribe(s, f) if live(s) => vec![Record::Subscribe {
                sid: sid(s),
                filter: filter(f),
                subscription: StoredSubscription {
                    options: SubscriptionOptions { qos: QoS::AtLeastOnce, ..Default::default() },
                    identifier: NonZeroU32::new(u32::from(*f)),
                },
            }],
            Op::Unsubscribe(s, f) if live(s) => {
                vec![Record::Unsubscribe { sid: sid(s), filter: filter(f) }]
            }
            Op::Fanout(set, q) => {
                let targets: Vec<u64> =
                    (0..4u8).filter(|s| set & (1 << s) != 0 && live(s)).map(|s| sid(&s)).collect();
                if targets.is_empty() {
                    return Vec::new();
                }
                let mid = *next_mid;
                *next_mid += 1;
                let mut out =
                    vec![Record::Message { mid, message: message("m", &mid.to_le_bytes()) }];
                let qos = QoS::from_u8(*q).unwrap();
                out.extend(
                    targets.into_iter().map(|sid| Record::Enqueue { sid, entry: entry(mid, qos) }),
                );
                out
            }
            Op::Send(s) if live(s) => {
                let session = &model.sessions[&sid(s)];
                let Some(first) = session.queue.first() else { return Vec::new() };
                let used: Vec<PacketId> = session.inflight.iter().map(|(id, _)| *id).collect();
                let Some(packet_id) = (1..=u16::MAX).map(pid).find(|id| !used.contains(id)) else {
                    return Vec::new();
                };
                vec![Record::Sent { sid: sid(s), mid: first.mid, packet_id }]
            }
            Op::Release(s) | Op::Complete(s) if live(s) => {
                let session = &model.sessions[&sid(s)];
                let Some((packet_id, _)) = session.inflight.first() else { return Vec::new() };
                let packet_id = *packet_id;
                vec![match op {
                    Op::Release(_) => Record::Released { sid: sid(s), packet_id },
                    _ => Record::Completed { sid: sid(s), packet_id },
                }]
            }
            Op::Flows(s, kinds) if live(s) => {
                // Each change as its own op would write it, applied in
                // turn to a copy of the state.
                let mut state = model.clone();
                let mut ops = Vec::new();
                for kind in kinds {
                    let single = match kind {
                        0 => Op::Send(*s),
                        1 => Op::Release(*s),
                        2 => Op::Complete(*s),
                        _ => Op::Drop(*s),
                    };
                    for record in records_of(&single, &state, next_mid) {
                        ops.push(match &record {
                            Record::Sent { mid, packet_id, .. } => {
                                FlowOp::Sent { mid: *mid, packet_id: *packet_id }
                            }
                            Record::Released { packet_id, .. } => FlowOp::Released(*packet_id),
                            Record::Completed { packet_id, .. } => FlowOp::Completed(*packet_id),
                            Record::Dropped { mid, .. } => FlowOp::Dropped { mid: *mid },
                            other => unreachable!("{other:?}"),
                        });
                        state.apply(record);
                    }
                }
                if ops.is_empty() {
                    return Vec::new();
                }
                vec![Record::Flows { sid: sid(s), ops }]
            }
            Op::Drop(s) if live(s) => {
                let session = &model.sessions[&sid(s)];
                let Some(last) = session.queue.last() else { return Vec::new() };
                vec![Record::Dropped { sid: sid(s), mid: last.mid }]
            }
            Op::Qos2(s, p, done) if live(s) => vec![match done {
                true => Record::Qos2Done { sid: sid(s), packet_id: pid(*p) },
                false => Record::Qos2In { sid: sid(s), packet_id: pid(*p) },
            }],
            _ => Vec::new(),
        }
    }

    /// A compaction in slices under way in the proptest: the next session
    /// number to slice, and the messages its slices wrote.
    #[derive(Debug, Default)]
    struct Slicing {
        next: u64,
        written: hashbrown::HashSet<u64>,
    }

    /// The slices of the sessions numbered below `until` not sliced yet:
    /// each live one's messages (once per compaction), its end, then its
    /// records, as `shard::compaction` writes them.
    fn slices(model: &SessionState, slicing: &mut Slicing, until: u64) -> Vec<Record> {
        let mut out = Vec::new();
        while slicing.next < until {
            let sid = slicing.next;
            slicing.next += 1;
            let Some(session) = model.sessions.get(&sid) else { continue };
            for entry in session.entries() {
                if slicing.written.insert(entry.mid) {
                    let message = Arc::clone(&model.messages[&entry.mid]);
                    out.push(Record::Message { mid: entry.mid, message });
                }
            }
            out.push(Record::SessionEnd { sid });
            SessionState::session_records(sid, session, |r| out.push(r));
        }
        out
    }

    proptest! {
        /// replay(write(ops)) == state for sessions, across rotations,
        /// snapshots and compactions in slices started, advanced and ended
        /// anywhere among the other records; with the segments a complete
        /// compaction supersedes deleted or not; and with the last segment
        /// torn anywhere (which loses the records after the cut, no more).
        #[test]
        fn replay_of_the_written_session_log_is_the_state(
            ops in prop::collection::vec(op(), 0..80),
            cut in any::<prop::sample::Index>(),
        ) {
            let clocks = Clocks::read();
            let header = |kind, sequence| SegmentHeader { kind, shard: 0, shards: 1, sequence }.encode();
            let mut model = SessionState::default();
            let mut next_mid = 1;
            let mut segments: Vec<BytesMut> = vec![BytesMut::from(&header(SegmentKind::Appends, 0)[..])];
            let finished = |model: &SessionState| {
                let mut done = model.clone();
                done.finish(clocks.now);
                done
            };
            let mut states_in_last = vec![(HEADER_LEN, finished(&model))];
            let mut slicing: Option<Slicing> = None;
            // The first segment a complete compaction or snapshot left.
            let mut first_live = 0;
            for op in &ops {
                let records = match op {
                    // One compaction at a time, and the writer does not
                    // rotate during one.
                    Op::Rotate | Op::Compact | Op::CompactStart if slicing.is_some() => Vec::new(),
                    Op::Rotate | Op::Compact => {
                        let kind = if matches!(op, Op::Compact) { SegmentKind::Snapshot } else { SegmentKind::Appends };
                        let mut next = BytesMut::from(&header(kind, segments.len() as u64)[..]);
                        if kind == SegmentKind::Snapshot {
                            // What compaction writes: the live state.
                            let mut live = finished(&model);
                            live.snapshot_records(|r| record::encode(&r, clocks, &mut next).unwrap());
                            record::encode(&Record::SnapshotEnd, clocks, &mut next).unwrap();
                            // Unreferenced messages are gone from the snapshot.
                            live.next_sid = model.next_sid;
                            live.next_mid = model.next_mid;
                            model = live;
                            first_live = segments.len();
                        }
                        segments.push(next);
                        states_in_last = vec![(HEADER_LEN, finished(&model))];
                        continue;
                    }
                    Op::CompactStart => {
                        slicing = Some(Slicing { next: 1, ..Slicing::default() });
                        segments.push(BytesMut::from(&header(SegmentKind::Compaction, segments.len() as u64)[..]));
                        states_in_last = vec![(HEADER_LEN, finished(&model))];
                        continue;
                    }
                    Op::CompactSlice(n) => match slicing.as_mut() {
                        Some(slicing) => {
                            let until = slicing.next + u64::from(*n);
                            slices(&model, slicing, until)
                        }
                        None => Vec::new(),
                    },
                    Op::CompactEnd => match slicing.take() {
                        Some(mut slicing) => {
                            let mut records = slices(&model, &mut slicing, 5);
                            records.push(Record::SnapshotEnd);
                            first_live = segments.len() - 1;
                            records
                        }
                        None => Vec::new(),
                    },
                    op => records_of(op, &model, &mut next_mid),
                };
                for record in records {
                    let last = segments.last_mut().unwrap();
                    record::encode(&record, clocks, last).unwrap();
                    // Every record but the snapshot end is a session's.
                    let end = matches!(record, Record::SnapshotEnd);
                    prop_assert_eq!(model.apply(record), !end);
                    states_in_last.push((last.len(), finished(&model)));
                }
            }
            let all: Vec<&[u8]> = segments.iter().map(|s| &s[..]).collect();
            let state = recover(&all, clocks);
            prop_assert_eq!(&state, &finished(&model));
            // The segments before the last complete snapshot deleted, as
            // the writer does once it is durable.
            let state = recover(&all[first_live..], clocks);
            prop_assert_eq!(&state.sessions, &finished(&model).sessions);
            prop_assert_eq!(&state.messages, &finished(&model).messages);
            let last = segments.last().unwrap();
            let at = HEADER_LEN + cut.index(last.len() - HEADER_LEN + 1);
            let expected = &states_in_last.iter().rev().find(|(end, _)| *end <= at).unwrap().1;
            let mut torn = all.clone();
            *torn.last_mut().unwrap() = &last[..at];
            let state = recover(&torn, clocks);
            // Numbers seen before the cut only.
            prop_assert_eq!(&state.sessions, &expected.sessions);
            prop_assert_eq!(&state.messages, &expected.messages);
        }
    }
}
