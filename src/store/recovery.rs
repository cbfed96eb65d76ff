//! Recovery, sans-IO: the segments of a shard's log, fed in sequence
//! order, rebuild the live state; a torn or damaged tail is found by its
//! CRC, cut off and counted, never a panic.
//!
//! Rules:
//! * In each segment, the records before the first frame that is not a
//!   whole record with a matching CRC are kept; from that frame on the
//!   segment is cut ([`SegmentOutcome::valid_len`]). Zeros to the end of
//!   the file are the writer's padding, not damage.
//! * A segment whose header is incomplete (a crash while creating it) is
//!   empty and torn. A header of another format version is an error: the
//!   log is not this build's to change.
//! * A snapshot segment counts only when complete (it ends with
//!   [`Record::SnapshotEnd`]); then it replaces the state built so far, so
//!   every earlier segment is superseded. An incomplete one is ignored: the
//!   segments it was to replace are still there.
//! * A compaction segment (the live state written in slices between the
//!   records of normal traffic, see `writer`) is read as appends: each
//!   slice rewrites what was live when it was written (a session after a
//!   [`Record::SessionEnd`] of it, a retained message), so its records are
//!   right on top of the state before it. Once it holds its
//!   [`Record::SnapshotEnd`], the state is what its records alone rebuild
//!   (every earlier segment is superseded, and deleted), and its later
//!   records apply to that: so a replay with the superseded segments still
//!   there (a crash before they were deleted) gives what one without them
//!   gives.

use super::record::{self, Frame, HeaderError, Record, SegmentHeader, SegmentKind, HEADER_LEN};
use super::sessions::SessionState;
use crate::message::wire::Clocks;
use crate::message::Message;
use crate::protocol::TopicName;
use std::collections::HashMap;
use std::sync::Arc;

/// What the log holds: the retained messages and the persistent sessions.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LiveState {
    /// The retained message of each topic.
    pub retained: HashMap<TopicName, Arc<Message>>,
    /// The persistent sessions and the messages they reference.
    pub sessions: SessionState,
}

impl LiveState {
    /// Whether it holds nothing (the numbers seen aside).
    fn is_empty(&self) -> bool {
        self.retained.is_empty()
            && self.sessions.sessions.is_empty()
            && self.sessions.messages.is_empty()
    }

    /// Goes on from `fresh`, which a snapshot rebuilt: numbers only grow,
    /// so those seen before it still count.
    fn replace_with(&mut self, mut fresh: LiveState) {
        let (sessions, before) = (&mut fresh.sessions, &self.sessions);
        sessions.next_sid = sessions.next_sid.max(before.next_sid);
        sessions.next_mid = sessions.next_mid.max(before.next_mid);
        *self = fresh;
    }

    /// Applies one record.
    pub fn apply(&mut self, record: Record) {
        if let record @ (Record::RetainSet(_) | Record::RetainDelete(_) | Record::SnapshotEnd) =
            record
        {
            self.apply_retained(record);
        } else {
            self.sessions.apply(record);
        }
    }

    fn apply_retained(&mut self, record: Record) {
        match record {
            Record::RetainSet(message) => {
                self.retained.insert(message.topic.clone(), message);
            }
            Record::RetainDelete(topic) => {
                self.retained.remove(&topic);
            }
            _ => {}
        }
    }
}

/// What recovery found in one segment, and what to do with its file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentOutcome {
    /// Its header; `None` when torn (the file holds nothing).
    pub header: Option<SegmentHeader>,
    /// Records read from it.
    pub records: u64,
    /// The length of its valid part: the file is cut to this.
    pub valid_len: usize,
    /// Bytes after the valid part that are not padding: a torn or damaged
    /// tail (0 when the segment ended cleanly).
    pub torn_bytes: usize,
    /// Whether it is a snapshot that ended with its end record.
    pub complete_snapshot: bool,
}

/// Totals over a shard's recovery.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RecoveryStats {
    /// Segments read.
    pub segments: u64,
    /// Records read (all kinds, superseded ones included).
    pub records: u64,
    /// Segments with a torn or damaged tail (or header).
    pub torn_tails: u64,
    /// Bytes cut off those tails.
    pub torn_bytes: u64,
    /// Retained messages whose expiry had passed, not loaded.
    pub expired: u64,
    /// Messages queued to sessions whose expiry had passed, not loaded.
    pub queued_expired: u64,
}

/// Rebuilds a shard's live state from its segments.
#[derive(Debug)]
pub struct Recovery {
    clocks: Clocks,
    state: LiveState,
    stats: RecoveryStats,
}

impl Recovery {
    /// A recovery that turns wall-clock expiries into instants of `clocks`.
    pub fn new(clocks: Clocks) -> Self {
        Self { clocks, state: LiveState::default(), stats: RecoveryStats::default() }
    }

    /// Reads the next segment (the whole file). Segments must come in the
    /// order of their header's sequence number.
    pub fn handle_segment(&mut self, bytes: &[u8]) -> Result<SegmentOutcome, HeaderError> {
        self.stats.segments += 1;
        let header = match SegmentHeader::decode(bytes) {
            Ok(header) => header,
            Err(HeaderError::Torn) => {
                let torn = bytes.len();
                if bytes.iter().any(|&b| b != 0) {
                    self.stats.torn_tails += 1;
                    self.stats.torn_bytes += torn as u64;
                }
                return Ok(SegmentOutcome {
                    header: None,
                    records: 0,
                    valid_len: 0,
                    torn_bytes: if bytes.iter().any(|&b| b != 0) { torn } else { 0 },
                    complete_snapshot: false,
                });
            }
            Err(other) => return Err(other),
        };
        let mut snapshot = (header.kind == SegmentKind::Snapshot).then(LiveState::default);
        // A compaction segment after other state: what its records alone
        // rebuild, kept beside it until its end shows whether it counts.
        // (After nothing, the two are the same.)
        let mut fresh = (header.kind == SegmentKind::Compaction && !self.state.is_empty())
            .then(LiveState::default);
        let compaction = header.kind == SegmentKind::Compaction;
        let mut complete_snapshot = false;
        let mut records = 0;
        let mut at = HEADER_LEN;
        let torn_bytes = loop {
            match record::frame_at(bytes, at) {
                Frame::End => break 0,
                Frame::Torn => break bytes.len() - at,
                Frame::Record(body, next) => {
                    // A CRC-valid body that does not decode is treated as
                    // damage too: nothing after it is trusted.
                    let Ok(record) = record::decode(body, self.clocks) else {
                        break bytes.len() - at;
                    };
                    records += 1;
                    at = next;
                    match (&mut snapshot, record) {
                        (Some(_), Record::SnapshotEnd) => complete_snapshot = true,
                        (Some(snapshot), record) => snapshot.apply(record),
                        (None, Record::SnapshotEnd) if compaction => {
                            complete_snapshot = true;
                            if let Some(fresh) = fresh.take() {
                                self.state.replace_with(fresh);
                            }
                        }
                        (None, record) => {
                            if let Some(fresh) = fresh.as_mut() {
                                fresh.apply(record.clone());
                            }
                            self.state.apply(record);
                        }
                    }
                }
            }
        };
        if let (Some(snapshot), true) = (snapshot, complete_snapshot) {
            self.state.replace_with(snapshot);
        }
        self.stats.records += records;
        if torn_bytes > 0 {
            self.stats.torn_tails += 1;
            self.stats.torn_bytes += torn_bytes as u64;
        }
        Ok(SegmentOutcome {
            header: Some(header),
            records,
            valid_len: at,
            torn_bytes,
            complete_snapshot,
        })
    }

    /// The live state rebuilt, without the retained messages that expired
    /// meanwhile, and the totals.
    pub fn finish(mut self) -> (LiveState, RecoveryStats) {
        let now = self.clocks.now;
        let before = self.state.retained.len();
        self.state.retained.retain(|_, message| message.expires_at.is_none_or(|at| at > now));
        self.stats.expired = (before - self.state.retained.len()) as u64;
        self.stats.queued_expired = self.state.sessions.finish(now);
        (self.state, self.stats)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{BoxedPublishProperties, QoS};
    use bytes::{Bytes, BytesMut};
    use proptest::prelude::*;
    use std::time::Duration;

    fn message(topic: &str, payload: &[u8]) -> Arc<Message> {
        Arc::new(Message {
            topic: TopicName::new(topic.to_owned()).unwrap(),
            payload: Bytes::copy_from_slice(payload),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: BoxedPublishProperties::none(),
            publisher: Some("dev".into()),
            expires_at: None,
            id: 0,
        })
    }

    fn header(kind: SegmentKind, sequence: u64) -> SegmentHeader {
        SegmentHeader { kind, shard: 0, shards: 1, sequence }
    }

    /// A segment of `records`, and the offset where each record starts.
    fn segment(kind: SegmentKind, records: &[Record], clocks: Clocks) -> (Vec<u8>, Vec<usize>) {
        let mut out = BytesMut::new();
        out.extend_from_slice(&header(kind, 1).encode());
        let mut starts = Vec::new();
        for r in records {
            starts.push(out.len());
            record::encode(r, clocks, &mut out).unwrap();
        }
        (out.to_vec(), starts)
    }

    fn three_records() -> Vec<Record> {
        vec![
            Record::RetainSet(message("a/1", b"one")),
            Record::RetainSet(message("a/2", b"two")),
            Record::RetainDelete(TopicName::new("a/1").unwrap()),
        ]
    }

    fn recover(segments: &[&[u8]], clocks: Clocks) -> (LiveState, RecoveryStats) {
        let mut recovery = Recovery::new(clocks);
        for segment in segments {
            recovery.handle_segment(segment).unwrap();
        }
        recovery.finish()
    }

    fn topics(state: &LiveState) -> Vec<String> {
        let mut topics: Vec<String> = state.retained.keys().map(|t| t.to_string()).collect();
        topics.sort();
        topics
    }

    #[test]
    fn a_clean_segment_replays_every_record() {
        let clocks = Clocks::read();
        let (bytes, _) = segment(SegmentKind::Appends, &three_records(), clocks);
        let mut recovery = Recovery::new(clocks);
        let outcome = recovery.handle_segment(&bytes).unwrap();
        assert_eq!((outcome.records, outcome.valid_len, outcome.torn_bytes), (3, bytes.len(), 0));
        let (state, stats) = recovery.finish();
        assert_eq!(topics(&state), vec!["a/2"]);
        assert_eq!(state.retained[&TopicName::new("a/2").unwrap()].payload, "two");
        assert_eq!((stats.torn_tails, stats.torn_bytes), (0, 0));
    }

    #[test]
    fn zero_padding_is_a_clean_end() {
        let clocks = Clocks::read();
        let (mut bytes, _) = segment(SegmentKind::Appends, &three_records(), clocks);
        let valid = bytes.len();
        bytes.resize(4096, 0);
        let mut recovery = Recovery::new(clocks);
        let outcome = recovery.handle_segment(&bytes).unwrap();
        assert_eq!((outcome.records, outcome.valid_len, outcome.torn_bytes), (3, valid, 0));
        assert_eq!(recovery.finish().1.torn_tails, 0);
    }

    #[test]
    fn a_last_record_cut_at_every_byte_keeps_the_records_before_it() {
        let clocks = Clocks::read();
        let (bytes, starts) = segment(SegmentKind::Appends, &three_records(), clocks);
        let last = starts[2];
        for cut in last..bytes.len() {
            let mut recovery = Recovery::new(clocks);
            let outcome = recovery.handle_segment(&bytes[..cut]).unwrap();
            assert_eq!(outcome.records, 2, "cut at {cut}");
            assert_eq!(outcome.valid_len, last, "cut at {cut}");
            assert_eq!(outcome.torn_bytes, cut - last, "cut at {cut}");
            let (state, stats) = recovery.finish();
            // The delete of a/1 was cut off: both sets stand.
            assert_eq!(topics(&state), vec!["a/1", "a/2"], "cut at {cut}");
            assert_eq!(stats.torn_tails, u64::from(cut > last), "cut at {cut}");
            // Cut, then padded with zeros as the writer's last block is.
            let mut padded = bytes[..cut].to_vec();
            padded.resize(bytes.len() + 512, 0);
            let outcome = Recovery::new(clocks).handle_segment(&padded).unwrap();
            assert_eq!((outcome.records, outcome.valid_len), (2, last), "padded cut at {cut}");
        }
    }

    #[test]
    fn a_last_record_damaged_at_every_byte_keeps_the_records_before_it() {
        let clocks = Clocks::read();
        let (bytes, starts) = segment(SegmentKind::Appends, &three_records(), clocks);
        let last = starts[2];
        for at in last..bytes.len() {
            for flip in [0x01u8, 0x80, 0xFF] {
                let mut damaged = bytes.clone();
                damaged[at] ^= flip;
                let mut recovery = Recovery::new(clocks);
                let outcome = recovery.handle_segment(&damaged).unwrap();
                assert_eq!(outcome.records, 2, "byte {at} ^ {flip:#x}");
                assert_eq!(outcome.valid_len, last, "byte {at} ^ {flip:#x}");
                assert_eq!(outcome.torn_bytes, bytes.len() - last, "byte {at} ^ {flip:#x}");
                assert_eq!(recovery.finish().1.torn_tails, 1);
            }
        }
    }

    #[test]
    fn garbage_after_the_records_is_a_torn_tail() {
        let clocks = Clocks::read();
        let (mut bytes, _) = segment(SegmentKind::Appends, &three_records(), clocks);
        let valid = bytes.len();
        bytes.extend_from_slice(b"garbage appended by a test");
        let (state, stats) = recover(&[&bytes], clocks);
        assert_eq!(topics(&state), vec!["a/2"]);
        assert_eq!((stats.torn_tails, stats.torn_bytes), (1, (bytes.len() - valid) as u64));
    }

    #[test]
    fn a_torn_header_is_an_empty_segment_and_another_version_an_error() {
        let clocks = Clocks::read();
        let (bytes, _) = segment(SegmentKind::Appends, &three_records(), clocks);
        for cut in 0..HEADER_LEN {
            let outcome = Recovery::new(clocks).handle_segment(&bytes[..cut]).unwrap();
            assert_eq!((outcome.header, outcome.valid_len, outcome.torn_bytes), (None, 0, cut));
        }
        let with_version = |version: u8| {
            let mut other = bytes.clone();
            other[8] = version;
            let crc = crc32c::crc32c(&other[..28]);
            other[28..32].copy_from_slice(&crc.to_le_bytes());
            other
        };
        assert_eq!(
            Recovery::new(clocks).handle_segment(&with_version(4)),
            Err(HeaderError::Version(4))
        );
        assert_eq!(
            Recovery::new(clocks).handle_segment(&with_version(0)),
            Err(HeaderError::Version(0))
        );
        // The segment kinds: compaction from version 3 on; versions 1
        // and 2 read any kind but 0 as a snapshot.
        let with_kind = |version: u16, kind: u16| {
            let mut other = bytes.clone();
            other[8..10].copy_from_slice(&version.to_le_bytes());
            other[10..12].copy_from_slice(&kind.to_le_bytes());
            let crc = crc32c::crc32c(&other[..28]);
            other[28..32].copy_from_slice(&crc.to_le_bytes());
            other
        };
        let kind = |version, kind| SegmentHeader::decode(&with_kind(version, kind)).map(|h| h.kind);
        assert_eq!(kind(3, 2), Ok(SegmentKind::Compaction));
        assert_eq!(kind(2, 2), Ok(SegmentKind::Snapshot));
        assert_eq!(kind(3, 7), Err(HeaderError::Kind(7)));
        // Version 1 (no kind 15 yet) is read as it is.
        let (state, _) = recover(&[&with_version(1)], clocks);
        assert_eq!(topics(&state), vec!["a/2"]);
        assert_eq!(
            Recovery::new(clocks).handle_segment(b"#!/bin/sh\necho this is not a log segment"),
            Err(HeaderError::Magic)
        );
    }

    #[test]
    fn a_complete_snapshot_replaces_what_came_before_and_an_incomplete_one_is_ignored() {
        let clocks = Clocks::read();
        let (old, _) = segment(SegmentKind::Appends, &three_records(), clocks);
        let snapshot_records = vec![
            Record::RetainSet(message("s/1", b"x")),
            Record::RetainSet(message("a/2", b"two")),
            Record::SnapshotEnd,
        ];
        let (snapshot, starts) = segment(SegmentKind::Snapshot, &snapshot_records, clocks);
        let after = vec![Record::RetainDelete(TopicName::new("s/1").unwrap())];
        let (newer, _) = segment(SegmentKind::Appends, &after, clocks);
        let (state, _) = recover(&[&old, &snapshot, &newer], clocks);
        assert_eq!(topics(&state), vec!["a/2"]);
        // Without its end record the snapshot does not count.
        let incomplete = &snapshot[..starts[2]];
        let mut recovery = Recovery::new(clocks);
        recovery.handle_segment(&old).unwrap();
        assert!(!recovery.handle_segment(incomplete).unwrap().complete_snapshot);
        let (state, _) = recovery.finish();
        assert_eq!(topics(&state), vec!["a/2"]);
    }

    #[test]
    fn a_compaction_segment_is_appends_until_its_end_and_alone_the_state_after_it() {
        let clocks = Clocks::read();
        let old_records = [
            Record::RetainSet(message("a/1", b"one")),
            Record::RetainSet(message("a/2", b"two")),
            Record::RetainSet(message("gone", b"x")),
        ];
        let (old, _) = segment(SegmentKind::Appends, &old_records, clocks);
        // A slice (a/2), traffic between slices (a delete, a set), the
        // last slice (a/1 as it is now), the end, then appends.
        let compaction_records = [
            Record::RetainSet(message("a/2", b"two")),
            Record::RetainDelete(TopicName::new("gone").unwrap()),
            Record::RetainSet(message("a/1", b"new")),
            Record::RetainSet(message("a/1", b"new")),
            Record::SnapshotEnd,
            Record::RetainSet(message("a/3", b"three")),
        ];
        let (compaction, starts) = segment(SegmentKind::Compaction, &compaction_records, clocks);
        let all = ["a/1", "a/2", "a/3"];
        assert_eq!(topics(&recover(&[&old, &compaction], clocks).0), all);
        // Once its end is written the segments before it are deleted.
        let (alone, _) = recover(&[&compaction], clocks);
        assert_eq!(topics(&alone), all);
        assert_eq!(alone.retained[&TopicName::new("a/1").unwrap()].payload, "new");
        // Cut before its end (a crash during the compaction): its records
        // count as appends after the old segments.
        let mut recovery = Recovery::new(clocks);
        recovery.handle_segment(&old).unwrap();
        let outcome = recovery.handle_segment(&compaction[..starts[4]]).unwrap();
        assert!(!outcome.complete_snapshot);
        assert_eq!(topics(&recovery.finish().0), ["a/1", "a/2"]);
        // Complete, it alone is the state: what the old segments held and
        // no slice rewrote is gone (as it is once they are deleted).
        let (stale, _) =
            segment(SegmentKind::Appends, &[Record::RetainSet(message("stale", b"s"))], clocks);
        let mut recovery = Recovery::new(clocks);
        recovery.handle_segment(&stale).unwrap();
        assert!(recovery.handle_segment(&compaction).unwrap().complete_snapshot);
        assert_eq!(topics(&recovery.finish().0), all);
    }

    #[test]
    fn expired_messages_are_not_loaded() {
        let clocks = Clocks::read();
        let mut soon = Message::clone(&message("e/1", b"x"));
        soon.expires_at = Some(clocks.now + Duration::from_secs(5));
        let records = [Record::RetainSet(Arc::new(soon)), Record::RetainSet(message("e/2", b"y"))];
        let (bytes, _) = segment(SegmentKind::Appends, &records, clocks);
        let later = Clocks { now: clocks.now, wall: clocks.wall + Duration::from_secs(6) };
        let (state, stats) = recover(&[&bytes], later);
        assert_eq!((topics(&state), stats.expired), (vec!["e/2".to_owned()], 1));
        let (state, _) = recover(&[&bytes], clocks);
        assert_eq!(state.retained.len(), 2);
    }

    /// A change to the retained messages.
    #[derive(Clone, Debug)]
    enum Op {
        Set(u8, Vec<u8>),
        Delete(u8),
        /// Start a new segment here.
        Rotate,
        /// Write a snapshot of the state so far here, whole.
        Compact,
        /// Start a compaction in slices: a compaction segment.
        CompactStart,
        /// Write the slices of the next retained messages of those there
        /// when it started (each only if still its topic's).
        CompactSlice(u8),
        /// Write the last slices and the snapshot end.
        CompactEnd,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => (0u8..8, prop::collection::vec(any::<u8>(), 1..40)).prop_map(|(t, p)| Op::Set(t, p)),
            2 => (0u8..8).prop_map(Op::Delete),
            1 => Just(Op::Rotate),
            1 => Just(Op::Compact),
            1 => Just(Op::CompactStart),
            2 => (1u8..4).prop_map(Op::CompactSlice),
            1 => Just(Op::CompactEnd),
        ]
    }

    proptest! {
        /// replay(write(ops)) == state, across segment rotations and
        /// snapshots, and with the last segment torn at a random point
        /// (which loses the records after the cut, no more).
        #[test]
        fn replay_of_the_written_log_is_the_state(
            ops in prop::collection::vec(op(), 0..60),
            cut in any::<prop::sample::Index>(),
        ) {
            let clocks = Clocks::read();
            let topic = |t: u8| TopicName::new(format!("t/{t}")).unwrap();
            let mut model = LiveState::default();
            let mut segments: Vec<BytesMut> = vec![BytesMut::new()];
            segments[0].extend_from_slice(&header(SegmentKind::Appends, 0).encode());
            // The model state after each record of the last segment.
            let mut states_in_last: Vec<(usize, LiveState)> = vec![(HEADER_LEN, model.clone())];
            // A compaction in slices under way: the retained messages when
            // it started, not written yet.
            let mut slicing: Option<Vec<Arc<Message>>> = None;
            let mut first_live = 0;
            for op in ops {
                let records = match op {
                    Op::Set(t, payload) => vec![Record::RetainSet(message(topic(t).as_str(), &payload))],
                    Op::Delete(t) => vec![Record::RetainDelete(topic(t))],
                    // One at a time, and no rotation during one.
                    Op::CompactStart | Op::Rotate | Op::Compact if slicing.is_some() => continue,
                    Op::CompactStart => {
                        slicing = Some(model.retained.values().cloned().collect());
                        let mut next = BytesMut::new();
                        next.extend_from_slice(&header(SegmentKind::Compaction, segments.len() as u64).encode());
                        segments.push(next);
                        states_in_last = vec![(HEADER_LEN, model.clone())];
                        continue;
                    }
                    Op::CompactSlice(_) | Op::CompactEnd => {
                        let Some(left) = slicing.as_mut() else { continue };
                        let n = match op {
                            Op::CompactSlice(n) => usize::from(n).min(left.len()),
                            _ => left.len(),
                        };
                        let mut records: Vec<Record> = left
                            .drain(..n)
                            .filter(|m| model.retained.get(&m.topic).is_some_and(|now| Arc::ptr_eq(now, m)))
                            .map(Record::RetainSet)
                            .collect();
                        if matches!(op, Op::CompactEnd) {
                            records.push(Record::SnapshotEnd);
                            slicing = None;
                            first_live = segments.len() - 1;
                        }
                        records
                    }
                    Op::Rotate | Op::Compact => {
                        let mut next = BytesMut::new();
                        let kind = if matches!(op, Op::Compact) { SegmentKind::Snapshot } else { SegmentKind::Appends };
                        next.extend_from_slice(&header(kind, segments.len() as u64).encode());
                        if kind == SegmentKind::Snapshot {
                            for message in model.retained.values() {
                                record::encode(&Record::RetainSet(Arc::clone(message)), clocks, &mut next).unwrap();
                            }
                            record::encode(&Record::SnapshotEnd, clocks, &mut next).unwrap();
                            first_live = segments.len();
                        }
                        segments.push(next);
                        // An incomplete snapshot is ignored, which leaves
                        // the same state as a complete one.
                        states_in_last = vec![(HEADER_LEN, model.clone())];
                        continue;
                    }
                };
                for record in records {
                    let last = segments.last_mut().unwrap();
                    record::encode(&record, clocks, last).unwrap();
                    model.apply(record);
                    states_in_last.push((last.len(), model.clone()));
                }
            }
            let all: Vec<&[u8]> = segments.iter().map(|s| &s[..]).collect();
            let (state, stats) = recover(&all, clocks);
            prop_assert_eq!(&state, &model);
            prop_assert_eq!(stats.torn_tails, 0);
            // What the last complete snapshot superseded, deleted.
            let (state, _) = recover(&all[first_live..], clocks);
            prop_assert_eq!(&state.retained, &model.retained);
            // Tear the last segment anywhere after its header: the state is
            // the one after the last whole record before the cut.
            let last = segments.last().unwrap();
            let at = HEADER_LEN + cut.index(last.len() - HEADER_LEN + 1);
            let expected = &states_in_last.iter().rev().find(|(end, _)| *end <= at).unwrap().1;
            let mut torn: Vec<&[u8]> = all.clone();
            *torn.last_mut().unwrap() = &last[..at];
            let (state, _) = recover(&torn, clocks);
            prop_assert_eq!(&state, expected);
        }
    }
}
