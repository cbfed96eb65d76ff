//! The bytes of the durable log, sans-IO: the header that opens every
//! segment file and the framed records after it.
//!
//! Layout (format version 1), integers little-endian:
//!
//! ```text
//! segment header, 32 bytes:
//!   [0..8)   magic "RINGMQLG"
//!   [8..10)  u16 format version (1)
//!   [10..12) u16 kind: 0 appends, 1 snapshot
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
//! ```
//!
//! A body is never empty, so a length of zero is padding (the writer pads
//! the last block of a file with zeros), never a record.

use crate::message::wire::{self, Clocks, WireError};
use crate::message::Message;
use crate::protocol::TopicName;
use bytes::{BufMut, Bytes, BytesMut};
use std::sync::Arc;

/// The magic at the start of every segment file.
const MAGIC: &[u8; 8] = b"RINGMQLG";

/// The segment format this build writes and reads.
pub const FORMAT_VERSION: u16 = 1;

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

/// What a segment file holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SegmentKind {
    /// Records in the order they happened.
    Appends,
    /// The live state at one moment, closed by [`Record::SnapshotEnd`]
    /// once complete.
    Snapshot,
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
    /// Written by another format version.
    #[error("segment format version {0}, this build reads version {FORMAT_VERSION}")]
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
        if version != FORMAT_VERSION {
            return Err(HeaderError::Version(version));
        }
        let kind = match u16_at(10) {
            0 => SegmentKind::Appends,
            _ => SegmentKind::Snapshot,
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
        other => Err(RecordError::Kind(other)),
    }
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
