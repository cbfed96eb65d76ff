//! What a node publishes on NATS, and how a receiving node recognises a
//! message it has seen already. Sans-IO.
//!
//! Layout (version 2), integers big-endian:
//!
//! ```text
//! u8   frame version (2)
//! u64  origin: the publishing node's id for this run (random at start)
//! u64  sequence: per origin, from 1, one per message published
//! u64  the message's id (`Message::id`: the same in every copy, 0 for none)
//! ...  the message in `crate::message::wire` form (QoS, RETAIN, publisher,
//!      expiry, topic, v5 properties, payload)
//! ```
//!
//! A node holds one NATS subscription per distinct filter subject, so a
//! message that matches two of its filters (`a/+` and `a/#`) reaches it
//! twice, possibly in either order (each subscription is read by its own
//! task). The receiver keeps, per origin, the highest sequence seen and
//! which of the [`WINDOW`] before it were seen; a repeat is dropped. A
//! message older than the window is dropped too (QoS 0 crosses nodes at
//! most once), and counted.
//!
//! A message for one shared group, sent to the node picked for it (on
//! `node.{origin}.grp`), is a frame in a group envelope:
//!
//! ```text
//! u8   envelope version (0x47, 'G')
//! u64  the leg's own sequence (QoS 1/2; 0 at QoS 0, which is not deduplicated)
//! u16  length, then the shared subscription `$share/{group}/{filter}` (UTF-8)
//! ...  the frame
//! ```

use crate::message::{wire, Message};
use crate::protocol::TopicFilter;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use hashbrown::HashMap;

const VERSION: u8 = 2;
const HEADER: usize = 1 + 8 + 8 + 8;

/// Sequences behind the newest one of an origin that are still told apart.
pub(super) const WINDOW: u64 = 4096;

/// Origins remembered; past it the memory is cleared (each restart of a
/// node is a new origin, so this only ever fills over many restarts).
const MAX_ORIGINS: usize = 1024;

/// Appends the frame of `message` to `out`.
pub(super) fn encode(
    origin: u64,
    sequence: u64,
    message: &Message,
    clocks: wire::Clocks,
    out: &mut BytesMut,
) -> Result<(), wire::WireError> {
    out.reserve(HEADER + message.payload.len() + message.topic.as_str().len() + 16);
    out.put_u8(VERSION);
    out.put_u64(origin);
    out.put_u64(sequence);
    out.put_u64(message.id);
    wire::encode(message, clocks, out)
}

/// Why a frame was not taken.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(super) enum FrameError {
    /// Not a version this build reads, or shorter than its header.
    #[error("not a ringmq cluster frame")]
    Header,
    /// The message inside is malformed.
    #[error("malformed message: {0}")]
    Message(#[from] wire::WireError),
}

/// The origin and sequence of a frame, and the message.
pub(super) fn decode(
    mut frame: Bytes,
    clocks: wire::Clocks,
) -> Result<(u64, u64, Message), FrameError> {
    if frame.len() < HEADER || frame[0] != VERSION {
        return Err(FrameError::Header);
    }
    frame.advance(1);
    let (origin, sequence, id) = (frame.get_u64(), frame.get_u64(), frame.get_u64());
    let message = wire::decode(frame, clocks)?;
    Ok((origin, sequence, Message { id, ..message }))
}

const GROUP_VERSION: u8 = 0x47;

/// The group envelope of `frame` for leg `leg` of the shared subscription
/// `group`.
pub(super) fn encode_group(leg: u64, group: &str, frame: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(1 + 8 + 2 + group.len() + frame.len());
    out.put_u8(GROUP_VERSION);
    out.put_u64(leg);
    // A filter is at most 65535 bytes (an MQTT string).
    out.put_u16(group.len() as u16);
    out.put_slice(group.as_bytes());
    out.put_slice(frame);
    out.freeze()
}

/// The leg's sequence, the shared subscription and the frame of a group
/// envelope; `None` when malformed (or not a shared subscription).
pub(super) fn decode_group(mut envelope: Bytes) -> Option<(u64, TopicFilter, Bytes)> {
    if envelope.len() < 11 || envelope[0] != GROUP_VERSION {
        return None;
    }
    envelope.advance(1);
    let leg = envelope.get_u64();
    let len = usize::from(envelope.get_u16());
    if envelope.len() < len {
        return None;
    }
    let group = std::str::from_utf8(&envelope[..len]).ok()?;
    let group = TopicFilter::new(group).ok().filter(TopicFilter::is_shared)?;
    envelope.advance(len);
    Some((leg, group, envelope))
}

/// Whether a frame is new.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Seen {
    /// Not seen before: deliver it.
    New,
    /// Seen already (it matched two of this node's subscriptions).
    Duplicate,
    /// Older than the window: not known, dropped.
    Stale,
}

/// The recent sequences of one origin.
#[derive(Debug)]
struct Window {
    /// The highest sequence seen.
    top: u64,
    /// Bit `s % window` is set when sequence `s` (within the window below
    /// `top`, `top` included) was seen.
    bits: Box<[u64]>,
}

impl Window {
    fn len(&self) -> u64 {
        self.bits.len() as u64 * 64
    }

    fn bit(&self, sequence: u64) -> (usize, u64) {
        let at = sequence % self.len();
        ((at / 64) as usize, 1 << (at % 64))
    }

    fn see(&mut self, sequence: u64) -> Seen {
        if sequence > self.top {
            // Clear the slots of the sequences that leave the window.
            if sequence - self.top >= self.len() {
                self.bits.fill(0);
            } else {
                for gone in self.top + 1..=sequence {
                    let (word, bit) = self.bit(gone);
                    self.bits[word] &= !bit;
                }
            }
            self.top = sequence;
        } else if self.top - sequence >= self.len() {
            return Seen::Stale;
        }
        let (word, bit) = self.bit(sequence);
        if self.bits[word] & bit != 0 {
            return Seen::Duplicate;
        }
        self.bits[word] |= bit;
        Seen::New
    }

    /// Takes back a sequence seen: it was not delivered after all.
    fn forget(&mut self, sequence: u64) {
        if sequence <= self.top && self.top - sequence < self.len() {
            let (word, bit) = self.bit(sequence);
            self.bits[word] &= !bit;
        }
    }
}

/// The sequences seen per origin.
#[derive(Debug)]
pub(super) struct Dedup {
    origins: HashMap<u64, Window>,
    /// Sequences per window, a multiple of 64.
    window: u64,
}

impl Default for Dedup {
    fn default() -> Self {
        Self::with_window(WINDOW)
    }
}

impl Dedup {
    /// Tells apart the last `window` sequences of each origin (rounded up
    /// to a multiple of 64).
    pub(super) fn with_window(window: u64) -> Self {
        Self { origins: HashMap::new(), window: window.div_ceil(64) * 64 }
    }

    /// Records `(origin, sequence)` and says whether it is new.
    pub(super) fn see(&mut self, origin: u64, sequence: u64) -> Seen {
        if !self.origins.contains_key(&origin) && self.origins.len() >= MAX_ORIGINS {
            self.origins.clear();
        }
        let words = (self.window / 64) as usize;
        let window = self
            .origins
            .entry(origin)
            .or_insert_with(|| Window { top: 0, bits: vec![0; words].into_boxed_slice() });
        window.see(sequence)
    }

    /// Takes back `(origin, sequence)`, seen but not delivered (its shard's
    /// queue was full): a copy sent again is new.
    pub(super) fn forget(&mut self, origin: u64, sequence: u64) {
        if let Some(window) = self.origins.get_mut(&origin) {
            window.forget(sequence);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{QoS, TopicName};
    use proptest::prelude::*;

    #[test]
    fn a_frame_round_trips() {
        let clocks = wire::Clocks::read();
        let message = Message {
            topic: TopicName::new("a/b").unwrap(),
            payload: Bytes::from_static(b"hello"),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: Default::default(),
            publisher: Some("client".into()),
            expires_at: None,
            id: 0x0123_4567_89ab_cdef,
        };
        let mut out = BytesMut::new();
        encode(7, 42, &message, clocks, &mut out).unwrap();
        let (origin, sequence, back) = decode(out.freeze(), clocks).unwrap();
        assert_eq!((origin, sequence), (7, 42));
        assert_eq!(back, message, "the id too");
        assert_eq!(decode(Bytes::from_static(b"\x02"), clocks).unwrap_err(), FrameError::Header);
        let mut version_1 = out_of(&message, clocks);
        version_1[0] = 1;
        assert_eq!(decode(version_1.freeze(), clocks).unwrap_err(), FrameError::Header);
        let mut short = vec![2];
        short.extend_from_slice(&[0; 24]);
        short.push(9);
        let short = Bytes::from(short);
        assert!(matches!(decode(short, clocks), Err(FrameError::Message(_))));
    }

    fn out_of(message: &Message, clocks: wire::Clocks) -> BytesMut {
        let mut out = BytesMut::new();
        encode(7, 42, message, clocks, &mut out).unwrap();
        out
    }

    #[test]
    fn a_group_envelope_round_trips_and_refuses_what_is_not_one() {
        let envelope = encode_group(9, "$share/g/a/+", b"frame");
        let (leg, group, frame) = decode_group(envelope.clone()).unwrap();
        assert_eq!((leg, group.as_str(), &frame[..]), (9, "$share/g/a/+", &b"frame"[..]));
        assert!(decode_group(envelope.slice(..12)).is_none(), "cut in the group");
        assert!(decode_group(encode_group(9, "a/+", b"f")).is_none(), "not shared");
        assert!(decode_group(Bytes::from_static(&[1; 20])).is_none(), "a plain frame");
    }

    #[test]
    fn repeats_are_duplicates_and_old_ones_stale() {
        let mut dedup = Dedup::default();
        assert_eq!(dedup.see(1, 5), Seen::New);
        assert_eq!(dedup.see(1, 5), Seen::Duplicate);
        assert_eq!(dedup.see(2, 5), Seen::New, "origins are apart");
        assert_eq!(dedup.see(1, 3), Seen::New, "out of order within the window");
        assert_eq!(dedup.see(1, 3), Seen::Duplicate);
        assert_eq!(dedup.see(1, 5 + WINDOW), Seen::New);
        assert_eq!(dedup.see(1, 5), Seen::Stale);
        assert_eq!(dedup.see(1, 6), Seen::New, "its slot was cleared when the window moved");
        dedup.forget(1, 6);
        assert_eq!(dedup.see(1, 6), Seen::New, "forgotten");
        let mut small = Dedup::with_window(100);
        assert_eq!(small.see(3, 200), Seen::New);
        assert_eq!(small.see(3, 200 - 127), Seen::New, "rounded up to 128");
        assert_eq!(small.see(3, 200 - 128), Seen::Stale);
    }

    proptest! {
        /// Every sequence of a shuffled run with repeats is New exactly
        /// once, as long as the disorder stays within the window.
        #[test]
        fn each_sequence_is_new_once(
            order in Just((1..=3000u64).flat_map(|s| [s, s]).collect::<Vec<_>>()).prop_shuffle()
        ) {
            let mut dedup = Dedup::default();
            let mut new = 0;
            for sequence in order {
                match dedup.see(9, sequence) {
                    Seen::New => new += 1,
                    Seen::Duplicate => {}
                    Seen::Stale => prop_assert!(false, "3000 < WINDOW"),
                }
            }
            prop_assert_eq!(new, 3000);
        }
    }
}
