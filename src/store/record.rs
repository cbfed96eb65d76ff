//! The bytes of the durable log, sans-IO: the header that opens every
//! segment file and the framed records after it.
//!
//! Layout (format version 3), integers little-endian:
//!
//! ```text
//! segment header, 32 bytes:
//!   [0..8)   magic "RINGMQLG"
//!   [8..10)  u16 format version (3; versions 1 and 2 are read too)
//!   [10..12) u16 kind: 0 appends, 1 snapshot, 2 compaction (version 3)
//!   [12..14) u16 shard index
//!   [14..16) u16 shard count when written
//!   [16..24) u64 sequence number (the file's order in the shard's log)
//!   [24..28) u32 reserved, 0
//!   [28..32) u32 CRC32C of bytes [0..28)
//! record, repeated:
//!   u32 body length (1..=MAX_BODY)
//!   u32 CRC32C of the length's 4 bytes followed by the body
//!   body: u8 kind, then
//!     1 retained set:    the message as `message::wire` writes it
//!     2 retained delete: the topic, UTF-8, to the end of the body
//!     3 snapshot end:    nothing (closes a complete snapshot segment)
//!     4 session open:    u64 sid, u16 length + client id, u64 expiry in
//!                        seconds (u64::MAX: never), u8 1 if a user name
//!                        follows: u16 length + user name, u8 1 if a will
//!                        follows: u32 will delay, the will as a message
//!     5 session end:     u64 sid
//!     6 subscribe:       u64 sid, u8 options (as in a 5.0 SUBSCRIBE),
//!                        u32 subscription identifier (0: none), the
//!                        filter to the end of the body
//!     7 unsubscribe:     u64 sid, the filter to the end of the body
//!     8 message:         u64 mid, the message as `message::wire` writes it
//!     9 enqueue:         u64 sid, u64 mid, u8 flags (bits 0-1 QoS, 2
//!                        RETAIN, 3 from the retained store), u8 count,
//!                        count x u32 subscription identifiers
//!    10 sent:            u64 sid, u64 mid, u16 packet id
//!    11 released:        u64 sid, u16 packet id (PUBREC in, PUBREL out)
//!    12 completed:       u64 sid, u16 packet id (PUBACK, PUBCOMP)
//!    13 QoS 2 in:        u64 sid, u16 packet id (PUBREC sent)
//!    14 QoS 2 done:      u64 sid, u16 packet id (PUBREL received)
//!    15 flows:           u64 sid, then to the end of the body, in the
//!                        order they happened, any number of:
//!                          u8 10 + u64 mid + u16 packet id (sent),
//!                          u8 11 + u16 packet id (released),
//!                          u8 12 + u16 packet id (completed),
//!                          u8 16 + u64 mid (dropped)
//!                        (version 2: the changes of kinds 10-12 and 16
//!                        of one session that follow each other in the
//!                        log, framed once)
//!    16 dropped:         u64 sid, u64 mid (version 2: the newest queued
//!                        entry of the message was cut, past the limits)
//!    17 expired:         u64 sid, u64 mid (version 3: the oldest queued
//!                        entry of the message was dropped at the head of
//!                        the queue, its Message Expiry Interval over);
//!                        also a change of a flows record (u8 17 + u64 mid)
//! ```
//!
//! Segment kinds: an appends segment holds records in the order they
//! happened; a snapshot segment (written whole by `reshard`, and by the
//! compaction of versions 1 and 2) holds the live state and counts only
//! once it ends with a snapshot end; a compaction segment (version 3)
//! holds the live state written in slices between the records of normal
//! traffic, then a snapshot end, then more appends (see `recovery` for how
//! each is replayed).
//!
//! Version 2 adds kinds 15 and 16 and nothing else, so a version 1 segment is a
//! valid version 2 one; a build that reads version 1 only refuses a
//! version 2 segment by its header instead of cutting it off at the
//! first new kind as a damaged tail. Version 3 adds record kind 17 and
//! the compaction segment, whose records an older build would wrongly
//! ignore while it is incomplete: so an older build refuses it by its
//! header.
//!
//! A body is never empty, so a length of zero is padding (the writer pads
//! the last block of a file with zeros), never a record.

use super::sessions::{StoredEntry, StoredSubscription, StoredWill};
use crate::message::wire::{self, Clocks, WireError};
use crate::message::Message;
use crate::protocol::{PacketId, QoS, RetainHandling, SubscriptionOptions, TopicFilter, TopicName};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use bytestring::ByteString;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

/// The magic at the start of every segment file.
const MAGIC: &[u8; 8] = b"RINGMQLG";

/// The segment format this build writes.
pub const FORMAT_VERSION: u16 = 3;

/// The oldest segment format this build reads.
pub const OLDEST_VERSION: u16 = 1;

/// Most changes a [`Record::Flows`] holds: a longer run goes on in the
/// next record.
pub const MAX_FLOW_OPS: usize = 4096;

/// Bytes of a segment header.
pub const HEADER_LEN: usize = 32;

/// Bytes of a record's frame before its body: length and CRC.
pub const FRAME_LEN: usize = 8;

/// The largest body accepted: an MQTT packet at its largest plus room for
/// the wire header. A larger length is corruption.
pub const MAX_BODY: usize = 268_435_460 + 1024;

const KIND_RETAIN_SET: u8 = 1;
const KIND_RETAIN_DELETE: u8 = 2;
const KIND_SNAPSHOT_END: u8 = 3;
const KIND_SESSION_OPEN: u8 = 4;
const KIND_SESSION_END: u8 = 5;
const KIND_SUBSCRIBE: u8 = 6;
const KIND_UNSUBSCRIBE: u8 = 7;
const KIND_MESSAGE: u8 = 8;
const KIND_ENQUEUE: u8 = 9;
const KIND_SENT: u8 = 10;
const KIND_RELEASED: u8 = 11;
const KIND_COMPLETED: u8 = 12;
const KIND_QOS2_IN: u8 = 13;
const KIND_QOS2_DONE: u8 = 14;
const KIND_FLOWS: u8 = 15;
const KIND_DROPPED: u8 = 16;
const KIND_EXPIRED: u8 = 17;

/// What a segment file holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SegmentKind {
    /// Records in the order they happened.
    Appends,
    /// The live state at one moment, closed by [`Record::SnapshotEnd`]
    /// once complete.
    Snapshot,
    /// Compaction without a stall: the live state written in slices (a
    /// retained message, or a whole session after a [`Record::SessionEnd`]
    /// of it), with the records of normal traffic between them, then
    /// [`Record::SnapshotEnd`] once every slice is written, then appends.
    /// Complete, it alone rebuilds the state; incomplete, its records
    /// apply as appends (they are: a slice rewrites what is live).
    Compaction,
}

/// The header of a segment file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentHeader {
    /// What the file holds.
    pub kind: SegmentKind,
    /// The shard whose log it is part of.
    pub shard: u16,
    /// How many shards the broker ran when it was written.
    pub shards: u16,
    /// Its place in the shard's log: replay goes in increasing order.
    pub sequence: u64,
}

/// Why the first bytes of a file are not a segment header this build
/// reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// Fewer than [`HEADER_LEN`] bytes, or the CRC does not match: a file
    /// whose creation was cut short.
    #[error("the segment header is incomplete or damaged")]
    Torn,
    /// Not a ringmq log file.
    #[error("not a ringmq log segment (bad magic)")]
    Magic,
    /// A segment kind this build does not know.
    #[error("unknown segment kind {0}")]
    Kind(u16),
    /// Written by a format version this build does not read.
    #[error(
        "segment format version {0}, this build reads versions {OLDEST_VERSION} to \
         {FORMAT_VERSION} (written by a newer ringmq?)"
    )]
    Version(u16),
}

impl SegmentHeader {
    /// The 32 header bytes.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[..8].copy_from_slice(MAGIC);
        out[8..10].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        let kind: u16 = match self.kind {
            SegmentKind::Appends => 0,
            SegmentKind::Snapshot => 1,
            SegmentKind::Compaction => 2,
        };
        out[10..12].copy_from_slice(&kind.to_le_bytes());
        out[12..14].copy_from_slice(&self.shard.to_le_bytes());
        out[14..16].copy_from_slice(&self.shards.to_le_bytes());
        out[16..24].copy_from_slice(&self.sequence.to_le_bytes());
        let crc = crc32c::crc32c(&out[..28]);
        out[28..32].copy_from_slice(&crc.to_le_bytes());
        out
    }

    /// Reads the header at the start of `bytes`.
    pub fn decode(bytes: &[u8]) -> Result<Self, HeaderError> {
        let Some(header) = bytes.get(..HEADER_LEN) else {
            return Err(HeaderError::Torn);
        };
        if crc32c::crc32c(&header[..28]) != u32::from_le_bytes(le4(&header[28..32])) {
            // A torn header is all zeros or a prefix of one; anything else
            // with a bad CRC that does not even start with the magic is
            // some other file.
            return Err(if header.starts_with(MAGIC) || header.iter().all(|&b| b == 0) {
                HeaderError::Torn
            } else {
                HeaderError::Magic
            });
        }
        if &header[..8] != MAGIC {
            return Err(HeaderError::Magic);
        }
        let u16_at = |at: usize| u16::from_le_bytes([header[at], header[at + 1]]);
        let version = u16_at(8);
        if !(OLDEST_VERSION..=FORMAT_VERSION).contains(&version) {
            return Err(HeaderError::Version(version));
        }
        let kind = match (u16_at(10), version) {
            (0, _) => SegmentKind::Appends,
            // Versions 1 and 2 wrote 1 only, and read any other as 1.
            (1, _) | (_, 1..=2) => SegmentKind::Snapshot,
            (2, _) => SegmentKind::Compaction,
            (other, _) => return Err(HeaderError::Kind(other)),
        };
        let mut sequence = [0u8; 8];
        sequence.copy_from_slice(&header[16..24]);
        Ok(Self {
            kind,
            shard: u16_at(12),
            shards: u16_at(14),
            sequence: u64::from_le_bytes(sequence),
        })
    }
}

/// One entry of the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    /// [MQTT-3.3.1-5] The retained message of its topic is now this one.
    RetainSet(Arc<Message>),
    /// [MQTT-3.3.1-10] The topic has no retained message any more.
    RetainDelete(TopicName),
    /// The snapshot segment it ends is complete.
    SnapshotEnd,
    /// A persistent session starts, or its expiry or will changed (see
    /// [`super::sessions`]).
    SessionOpen {
        /// The shard's number of the session.
        sid: u64,
        /// Its client id.
        client_id: ByteString,
        /// How long it outlives its connection; `None`: never expires.
        expiry: Option<Duration>,
        /// The user name its ACL rules are for (with an `acl_file`).
        username: Option<ByteString>,
        /// The will still to be published, if any.
        will: Option<Box<StoredWill>>,
    },
    /// The session ended (expired, or replaced by a clean start).
    SessionEnd {
        /// The session.
        sid: u64,
    },
    /// A subscription made or replaced [MQTT-3.8.4-3].
    Subscribe {
        /// The session.
        sid: u64,
        /// Its filter.
        filter: TopicFilter,
        /// Its options and identifier.
        subscription: StoredSubscription,
    },
    /// A subscription removed [MQTT-3.10.4-1].
    Unsubscribe {
        /// The session.
        sid: u64,
        /// Its filter.
        filter: TopicFilter,
    },
    /// A message queued to one or more sessions of the shard, written once.
    Message {
        /// The shard's number of the message.
        mid: u64,
        /// The message.
        message: Arc<Message>,
    },
    /// A QoS 1/2 message queued to a session.
    Enqueue {
        /// The session.
        sid: u64,
        /// The message and how it is sent.
        entry: StoredEntry,
    },
    /// The first queued entry of message `mid` was sent with `packet_id`.
    Sent {
        /// The session.
        sid: u64,
        /// The message.
        mid: u64,
        /// Its packet id until acknowledged [MQTT-2.3.1-3].
        packet_id: PacketId,
    },
    /// PUBREC received for `packet_id`: a PUBREL awaits PUBCOMP.
    Released {
        /// The session.
        sid: u64,
        /// The flow.
        packet_id: PacketId,
    },
    /// The flow of `packet_id` is complete (PUBACK, PUBCOMP, refused).
    Completed {
        /// The session.
        sid: u64,
        /// The flow.
        packet_id: PacketId,
    },
    /// An inbound QoS 2 PUBLISH was answered with PUBREC [MQTT-4.3.3-2].
    Qos2In {
        /// The session.
        sid: u64,
        /// Its packet id.
        packet_id: PacketId,
    },
    /// The PUBREL of an inbound QoS 2 flow arrived: its id is free.
    Qos2Done {
        /// The session.
        sid: u64,
        /// Its packet id.
        packet_id: PacketId,
    },
    /// The newest queued entry of message `mid` was dropped: the queue was
    /// cut back to its limits (an offline session, a slow consumer).
    Dropped {
        /// The session.
        sid: u64,
        /// The message.
        mid: u64,
    },
    /// The oldest queued entry of message `mid` was dropped at the head of
    /// the queue: its Message Expiry Interval was over [MQTT-3.3.2-5].
    Expired {
        /// The session.
        sid: u64,
        /// The message.
        mid: u64,
    },
    /// Changes to the outgoing flows and queue of one session, in order:
    /// what [`Record::Sent`], [`Record::Released`], [`Record::Completed`],
    /// [`Record::Dropped`] and [`Record::Expired`] say one by one, framed once (a subscriber's
    /// PUBACKs read together, the messages sent by one write, a queue cut).
    Flows {
        /// The session.
        sid: u64,
        /// The changes, oldest first (1..=[`MAX_FLOW_OPS`]).
        ops: Vec<FlowOp>,
    },
}

/// One change in a [`Record::Flows`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlowOp {
    /// As [`Record::Sent`].
    Sent {
        /// The message.
        mid: u64,
        /// Its packet id.
        packet_id: PacketId,
    },
    /// As [`Record::Released`].
    Released(PacketId),
    /// As [`Record::Completed`].
    Completed(PacketId),
    /// As [`Record::Dropped`].
    Dropped {
        /// The message.
        mid: u64,
    },
    /// As [`Record::Expired`].
    Expired {
        /// The message.
        mid: u64,
    },
}

impl FlowOp {
    /// The single record that says the same for session `sid`.
    pub fn record(self, sid: u64) -> Record {
        match self {
            Self::Sent { mid, packet_id } => Record::Sent { sid, mid, packet_id },
            Self::Released(packet_id) => Record::Released { sid, packet_id },
            Self::Completed(packet_id) => Record::Completed { sid, packet_id },
            Self::Dropped { mid } => Record::Dropped { sid, mid },
            Self::Expired { mid } => Record::Expired { sid, mid },
        }
    }
}

/// Why a record's body (whose CRC matched) cannot be read: written by a
/// newer build, or a bug; recovery stops at it as at a torn record.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// An unknown kind byte.
    #[error("unknown record kind {0}")]
    Kind(u8),
    /// A retained message that does not decode.
    #[error("retained message: {0}")]
    Message(#[from] WireError),
    /// A topic that is not a valid topic name.
    #[error("invalid topic in a retained delete")]
    Topic,
    /// A session record that ends early or holds an invalid field.
    #[error("invalid session record")]
    Session,
}

/// Appends `record`, framed, to `out`. `clocks` turns a message's expiry
/// into wall-clock time (see `message::wire`). On error nothing is
/// appended.
pub fn encode(record: &Record, clocks: Clocks, out: &mut BytesMut) -> Result<(), WireError> {
    let start = out.len();
    out.put_bytes(0, FRAME_LEN);
    match record {
        Record::RetainSet(message) => {
            out.put_u8(KIND_RETAIN_SET);
            if let Err(error) = wire::encode(message, clocks, out) {
                out.truncate(start);
                return Err(error);
            }
        }
        Record::RetainDelete(topic) => {
            out.put_u8(KIND_RETAIN_DELETE);
            out.put_slice(topic.as_str().as_bytes());
        }
        Record::SnapshotEnd => out.put_u8(KIND_SNAPSHOT_END),
        Record::SessionOpen { sid, client_id, expiry, username, will } => {
            out.put_u8(KIND_SESSION_OPEN);
            out.put_u64_le(*sid);
            // Client ids and user names are MQTT strings: at most 65,535
            // bytes.
            out.put_u16_le(client_id.len() as u16);
            out.put_slice(client_id.as_bytes());
            out.put_u64_le(expiry.map_or(u64::MAX, |e| e.as_secs().min(u64::MAX - 1)));
            match username {
                None => out.put_u8(0),
                Some(name) => {
                    out.put_u8(1);
                    out.put_u16_le(name.len() as u16);
                    out.put_slice(name.as_bytes());
                }
            }
            match will {
                None => out.put_u8(0),
                Some(will) => {
                    out.put_u8(1);
                    out.put_u32_le(will.delay);
                    if let Err(error) = wire::encode(&will.message, clocks, out) {
                        out.truncate(start);
                        return Err(error);
                    }
                }
            }
        }
        Record::SessionEnd { sid } => {
            out.put_u8(KIND_SESSION_END);
            out.put_u64_le(*sid);
        }
        Record::Subscribe { sid, filter, subscription } => {
            out.put_u8(KIND_SUBSCRIBE);
            out.put_u64_le(*sid);
            out.put_u8(options_byte(subscription.options));
            out.put_u32_le(subscription.identifier.map_or(0, NonZeroU32::get));
            out.put_slice(filter.as_str().as_bytes());
        }
        Record::Unsubscribe { sid, filter } => {
            out.put_u8(KIND_UNSUBSCRIBE);
            out.put_u64_le(*sid);
            out.put_slice(filter.as_str().as_bytes());
        }
        Record::Message { mid, message } => {
            out.put_u8(KIND_MESSAGE);
            out.put_u64_le(*mid);
            if let Err(error) = wire::encode(message, clocks, out) {
                out.truncate(start);
                return Err(error);
            }
        }
        Record::Enqueue { sid, entry } => {
            out.put_u8(KIND_ENQUEUE);
            out.put_u64_le(*sid);
            out.put_u64_le(entry.mid);
            let flags =
                entry.qos as u8 | u8::from(entry.retain) << 2 | u8::from(entry.from_retained) << 3;
            out.put_u8(flags);
            // A delivery carries one identifier per matching subscription
            // of the session; more than 255 are not kept.
            let ids = &entry.subscription_ids[..entry.subscription_ids.len().min(255)];
            out.put_u8(ids.len() as u8);
            for id in ids {
                out.put_u32_le(id.get());
            }
        }
        Record::Sent { sid, mid, packet_id } => {
            out.put_u8(KIND_SENT);
            out.put_u64_le(*sid);
            out.put_u64_le(*mid);
            out.put_u16_le(packet_id.get());
        }
        Record::Flows { sid, ops } => {
            out.put_u8(KIND_FLOWS);
            out.put_u64_le(*sid);
            for op in ops {
                match *op {
                    FlowOp::Sent { mid, packet_id } => {
                        out.put_u8(KIND_SENT);
                        out.put_u64_le(mid);
                        out.put_u16_le(packet_id.get());
                    }
                    FlowOp::Released(packet_id) => {
                        out.put_u8(KIND_RELEASED);
                        out.put_u16_le(packet_id.get());
                    }
                    FlowOp::Completed(packet_id) => {
                        out.put_u8(KIND_COMPLETED);
                        out.put_u16_le(packet_id.get());
                    }
                    FlowOp::Dropped { mid } => {
                        out.put_u8(KIND_DROPPED);
                        out.put_u64_le(mid);
                    }
                    FlowOp::Expired { mid } => {
                        out.put_u8(KIND_EXPIRED);
                        out.put_u64_le(mid);
                    }
                }
            }
        }
        Record::Dropped { sid, mid } | Record::Expired { sid, mid } => {
            out.put_u8(if matches!(record, Record::Dropped { .. }) {
                KIND_DROPPED
            } else {
                KIND_EXPIRED
            });
            out.put_u64_le(*sid);
            out.put_u64_le(*mid);
        }
        Record::Released { sid, packet_id }
        | Record::Completed { sid, packet_id }
        | Record::Qos2In { sid, packet_id }
        | Record::Qos2Done { sid, packet_id } => {
            out.put_u8(match record {
                Record::Released { .. } => KIND_RELEASED,
                Record::Completed { .. } => KIND_COMPLETED,
                Record::Qos2In { .. } => KIND_QOS2_IN,
                _ => KIND_QOS2_DONE,
            });
            out.put_u64_le(*sid);
            out.put_u16_le(packet_id.get());
        }
    }
    let len = (out.len() - start - FRAME_LEN) as u32;
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    let crc = crc32c::crc32c_append(crc32c::crc32c(&len.to_le_bytes()), &out[start + FRAME_LEN..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    Ok(())
}

/// Reads a record body (its frame already checked). A message's payload
/// is copied out of `body`, so it does not pin the buffer it was read
/// into.
pub fn decode(body: &[u8], clocks: Clocks) -> Result<Record, RecordError> {
    let (&kind, rest) = body.split_first().ok_or(RecordError::Kind(0))?;
    match kind {
        KIND_RETAIN_SET => {
            let message = wire::decode(Bytes::copy_from_slice(rest), clocks)?;
            Ok(Record::RetainSet(Arc::new(message)))
        }
        KIND_RETAIN_DELETE => {
            let text = std::str::from_utf8(rest).map_err(|_| RecordError::Topic)?;
            TopicName::new(text.to_owned())
                .map(Record::RetainDelete)
                .map_err(|_| RecordError::Topic)
        }
        KIND_SNAPSHOT_END => Ok(Record::SnapshotEnd),
        KIND_SESSION_OPEN..=KIND_EXPIRED => {
            decode_session(kind, rest, clocks).ok_or(RecordError::Session)
        }
        other => Err(RecordError::Kind(other)),
    }
}

/// The subscription options byte of a 5.0 SUBSCRIBE (§3.8.3.1).
fn options_byte(options: SubscriptionOptions) -> u8 {
    options.qos as u8
        | u8::from(options.no_local) << 2
        | u8::from(options.retain_as_published) << 3
        | (options.retain_handling as u8) << 4
}

fn options_from(byte: u8) -> Option<SubscriptionOptions> {
    let retain_handling = match (byte >> 4) & 0b11 {
        0 => RetainHandling::SendAtSubscribe,
        1 => RetainHandling::SendIfNew,
        2 => RetainHandling::DoNotSend,
        _ => return None,
    };
    Some(SubscriptionOptions {
        qos: QoS::from_u8(byte & 0b11)?,
        no_local: byte & 0b100 != 0,
        retain_as_published: byte & 0b1000 != 0,
        retain_handling,
    })
}

/// Reads a session record's body after its kind byte; `None` when it ends
/// early or a field is invalid.
fn decode_session(kind: u8, mut rest: &[u8], clocks: Clocks) -> Option<Record> {
    fn u64_of(rest: &mut &[u8]) -> Option<u64> {
        (rest.len() >= 8).then(|| rest.get_u64_le())
    }
    fn u16_of(rest: &mut &[u8]) -> Option<u16> {
        (rest.len() >= 2).then(|| rest.get_u16_le())
    }
    fn u32_of(rest: &mut &[u8]) -> Option<u32> {
        (rest.len() >= 4).then(|| rest.get_u32_le())
    }
    fn u8_of(rest: &mut &[u8]) -> Option<u8> {
        (!rest.is_empty()).then(|| rest.get_u8())
    }
    fn filter_of(rest: &[u8]) -> Option<TopicFilter> {
        TopicFilter::new(std::str::from_utf8(rest).ok()?.to_owned()).ok()
    }
    fn string_of(rest: &mut &[u8]) -> Option<ByteString> {
        let len = usize::from(u16_of(rest)?);
        let text = std::str::from_utf8(rest.get(..len)?).ok()?.to_owned();
        *rest = &rest[len..];
        Some(ByteString::from(text))
    }
    let sid = u64_of(&mut rest)?;
    let record = match kind {
        KIND_SESSION_OPEN => {
            let client_id = string_of(&mut rest)?;
            let expiry = match u64_of(&mut rest)? {
                u64::MAX => None,
                secs => Some(Duration::from_secs(secs)),
            };
            let username = match u8_of(&mut rest)? {
                0 => None,
                1 => Some(string_of(&mut rest)?),
                _ => return None,
            };
            let will = match u8_of(&mut rest)? {
                0 if rest.is_empty() => None,
                1 => {
                    let delay = u32_of(&mut rest)?;
                    let message = wire::decode(Bytes::copy_from_slice(rest), clocks).ok()?;
                    rest = &[];
                    Some(Box::new(StoredWill { delay, message }))
                }
                _ => return None,
            };
            let open = Record::SessionOpen { sid, client_id, expiry, username, will };
            return rest.is_empty().then_some(open);
        }
        KIND_SESSION_END => Record::SessionEnd { sid },
        KIND_SUBSCRIBE => {
            let options = options_from(u8_of(&mut rest)?)?;
            let identifier = NonZeroU32::new(u32_of(&mut rest)?);
            let filter = filter_of(rest)?;
            let subscription = StoredSubscription { options, identifier };
            return Some(Record::Subscribe { sid, filter, subscription });
        }
        KIND_UNSUBSCRIBE => return Some(Record::Unsubscribe { sid, filter: filter_of(rest)? }),
        KIND_MESSAGE => {
            // `sid` holds the mid: the same leading u64.
            let message = wire::decode(Bytes::copy_from_slice(rest), clocks).ok()?;
            return Some(Record::Message { mid: sid, message: Arc::new(message) });
        }
        KIND_ENQUEUE => {
            let mid = u64_of(&mut rest)?;
            let flags = u8_of(&mut rest)?;
            let count = u8_of(&mut rest)?;
            let mut subscription_ids = crate::protocol::SubscriptionIds::new();
            for _ in 0..count {
                subscription_ids.push(NonZeroU32::new(u32_of(&mut rest)?)?);
            }
            let qos = QoS::from_u8(flags & 0b11).filter(|&qos| qos != QoS::AtMostOnce)?;
            let retain = flags & 0b100 != 0;
            let from_retained = flags & 0b1000 != 0;
            let entry = StoredEntry { mid, qos, retain, from_retained, subscription_ids };
            Record::Enqueue { sid, entry }
        }
        KIND_SENT => {
            let mid = u64_of(&mut rest)?;
            Record::Sent { sid, mid, packet_id: PacketId::new(u16_of(&mut rest)?)? }
        }
        KIND_FLOWS => {
            let mut ops = Vec::new();
            while let Some(op) = u8_of(&mut rest) {
                ops.push(match op {
                    KIND_SENT => {
                        let mid = u64_of(&mut rest)?;
                        FlowOp::Sent { mid, packet_id: PacketId::new(u16_of(&mut rest)?)? }
                    }
                    KIND_RELEASED => FlowOp::Released(PacketId::new(u16_of(&mut rest)?)?),
                    KIND_COMPLETED => FlowOp::Completed(PacketId::new(u16_of(&mut rest)?)?),
                    KIND_DROPPED => FlowOp::Dropped { mid: u64_of(&mut rest)? },
                    KIND_EXPIRED => FlowOp::Expired { mid: u64_of(&mut rest)? },
                    _ => return None,
                });
            }
            if ops.is_empty() || ops.len() > MAX_FLOW_OPS {
                return None;
            }
            Record::Flows { sid, ops }
        }
        KIND_DROPPED => Record::Dropped { sid, mid: u64_of(&mut rest)? },
        KIND_EXPIRED => Record::Expired { sid, mid: u64_of(&mut rest)? },
        _ => {
            let packet_id = PacketId::new(u16_of(&mut rest)?)?;
            match kind {
                KIND_RELEASED => Record::Released { sid, packet_id },
                KIND_COMPLETED => Record::Completed { sid, packet_id },
                KIND_QOS2_IN => Record::Qos2In { sid, packet_id },
                _ => Record::Qos2Done { sid, packet_id },
            }
        }
    };
    rest.is_empty().then_some(record)
}

/// What is at `at` in a segment's bytes.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    /// A whole record whose CRC matches: its body, and the offset of what
    /// follows it.
    Record(&'a [u8], usize),
    /// Nothing but zeros from here to the end (the writer's padding), or
    /// no bytes at all: the clean end of the segment.
    End,
    /// A record cut short or damaged, or garbage: the segment's valid part
    /// ends here.
    Torn,
}

/// Reads the frame at offset `at` of `bytes` (a whole segment).
pub fn frame_at(bytes: &[u8], at: usize) -> Frame<'_> {
    let rest = bytes.get(at..).unwrap_or_default();
    // Zeros where a length starts: padding if nothing but zeros follows.
    // (Checked only here, so a scan stays linear.)
    if rest.len() < FRAME_LEN || rest[..4] == [0; 4] {
        return if rest.iter().all(|&b| b == 0) { Frame::End } else { Frame::Torn };
    }
    let len = u32::from_le_bytes(le4(&rest[..4])) as usize;
    let crc = u32::from_le_bytes(le4(&rest[4..8]));
    if len > MAX_BODY || rest.len() - FRAME_LEN < len {
        return Frame::Torn;
    }
    let body = &rest[FRAME_LEN..FRAME_LEN + len];
    if crc32c::crc32c_append(crc32c::crc32c(&rest[..4]), body) != crc {
        return Frame::Torn;
    }
    Frame::Record(body, at + FRAME_LEN + len)
}

fn le4(bytes: &[u8]) -> [u8; 4] {
    [bytes[0], bytes[1], bytes[2], bytes[3]]
}
