//! What every benchmark payload carries, and the clock it is stamped with.
//!
//! A payload starts with a 16-byte header, big-endian:
//!
//! | bytes  | field                                                        |
//! |--------|--------------------------------------------------------------|
//! | 0..8   | intended send time, nanoseconds of [`Clock`]                 |
//! | 8..16  | publisher id (high 24 bits) and sequence number (low 40 bits) |
//!
//! and is padded with zeros to the requested size. The time is the one the
//! constant-rate schedule meant the message to leave at, not the one it did:
//! a stalled publisher or broker then shows up as latency instead of being
//! hidden by sending later (coordinated omission).

use bytes::{BufMut, Bytes, BytesMut};
use std::time::Instant;

/// Size of the header, and so the smallest payload.
pub const HEADER_LEN: usize = 16;
/// The largest publisher id the header can carry.
pub const MAX_PUBLISHER_ID: u32 = (1 << 24) - 1;
/// Sequence numbers wrap at 2^40 (a million messages a second for 12 days).
const SEQ_MASK: u64 = (1 << 40) - 1;

/// Which system clock the timestamps come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ClockSource {
    /// CLOCK_MONOTONIC: shared by every process of one host and immune to
    /// wall-clock steps; publishers and subscribers must run on one host.
    Monotonic,
    /// CLOCK_REALTIME read once at start, advanced monotonically: for
    /// publishers and subscribers on hosts whose clocks are synchronised.
    Realtime,
}

/// A nanosecond clock common to every thread (and, for
/// [`ClockSource::Monotonic`], every process) of the host. It is `Copy`: the
/// base is taken once and every executor converts its own `Instant`s.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    /// The instant that `base_ns` names.
    base: Instant,
    /// Nanoseconds of the chosen system clock at `base`.
    base_ns: u64,
}

impl Clock {
    /// Reads the chosen system clock once.
    pub fn new(source: ClockSource) -> Self {
        let id = match source {
            ClockSource::Monotonic => libc::CLOCK_MONOTONIC,
            ClockSource::Realtime => libc::CLOCK_REALTIME,
        };
        let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        let base = Instant::now();
        // SAFETY: `ts` is a valid, writable timespec; clock_gettime only
        // writes it, and both clock ids exist on every Linux.
        let rc = unsafe { libc::clock_gettime(id, &mut ts) };
        assert_eq!(rc, 0, "clock_gettime failed");
        let base_ns = ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64;
        Self { base, base_ns }
    }

    /// `instant` in nanoseconds of this clock.
    pub fn ns(&self, instant: Instant) -> u64 {
        match instant.checked_duration_since(self.base) {
            Some(after) => self.base_ns + after.as_nanos() as u64,
            None => {
                self.base_ns.saturating_sub(self.base.duration_since(instant).as_nanos() as u64)
            }
        }
    }
}

/// The header of one received payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Intended send time, nanoseconds of [`Clock`].
    pub sent_ns: u64,
    /// Which publisher stream the message belongs to.
    pub publisher: u32,
    /// Position in that stream, from 0.
    pub seq: u64,
}

impl Header {
    /// Reads the header of `payload`; `None` when it is too short to be a
    /// benchmark payload.
    pub fn parse(payload: &[u8]) -> Option<Self> {
        let head: &[u8; HEADER_LEN] = payload.get(..HEADER_LEN)?.try_into().ok()?;
        let sent_ns = u64::from_be_bytes(head[..8].try_into().ok()?);
        let word = u64::from_be_bytes(head[8..].try_into().ok()?);
        Some(Self { sent_ns, publisher: (word >> 40) as u32, seq: word & SEQ_MASK })
    }
}

impl Header {
    /// Whether the timestamp can be one of this run's, read at `now_ns`:
    /// at most a minute ahead (clock skew between hosts) and an hour
    /// behind. Anything else is a payload from some other source.
    pub fn is_plausible(&self, now_ns: u64) -> bool {
        const AHEAD_NS: u64 = 60 * 1_000_000_000;
        const BEHIND_NS: u64 = 3600 * 1_000_000_000;
        self.sent_ns <= now_ns.saturating_add(AHEAD_NS)
            && now_ns.saturating_sub(self.sent_ns) <= BEHIND_NS
    }
}

/// Builds the payloads of one publisher without allocating per message: the
/// buffer's storage is reused once the previous message's `Bytes` is dropped.
#[derive(Debug)]
pub struct PayloadWriter {
    /// Publisher id written into every header.
    publisher: u32,
    /// Total payload size.
    size: usize,
    /// Scratch storage the payloads are split off.
    buf: BytesMut,
}

impl PayloadWriter {
    /// Payloads of `size` bytes (at least [`HEADER_LEN`]) for `publisher`
    /// (at most [`MAX_PUBLISHER_ID`]).
    pub fn new(publisher: u32, size: usize) -> Self {
        debug_assert!(publisher <= MAX_PUBLISHER_ID);
        Self { publisher, size: size.max(HEADER_LEN), buf: BytesMut::new() }
    }

    /// The payload of message `seq`, meant to be sent at `sent_ns`.
    pub fn payload(&mut self, sent_ns: u64, seq: u64) -> Bytes {
        self.buf.reserve(self.size);
        self.buf.put_u64(sent_ns);
        self.buf.put_u64((u64::from(self.publisher) << 40) | (seq & SEQ_MASK));
        self.buf.put_bytes(0, self.size - HEADER_LEN);
        self.buf.split().freeze()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn header_round_trip_and_padding() {
        let mut writer = PayloadWriter::new(MAX_PUBLISHER_ID, 100);
        let payload = writer.payload(123_456_789, 42);
        assert_eq!(payload.len(), 100);
        assert!(payload[HEADER_LEN..].iter().all(|&b| b == 0));
        let header = Header::parse(&payload).unwrap();
        assert_eq!(header, Header { sent_ns: 123_456_789, publisher: MAX_PUBLISHER_ID, seq: 42 });
    }

    #[test]
    fn foreign_payloads_are_not_plausible() {
        let now = 5_000_000_000_000;
        let ours = Header { sent_ns: now - 1_000, publisher: 0, seq: 0 };
        assert!(ours.is_plausible(now));
        let text = Header::parse(b"hello-world-payload").unwrap();
        assert!(!text.is_plausible(now));
        assert!(!Header { sent_ns: 0, ..ours }.is_plausible(now));
    }

    #[test]
    fn smallest_payload_is_the_header() {
        let mut writer = PayloadWriter::new(7, 1);
        let payload = writer.payload(1, SEQ_MASK + 3);
        assert_eq!(payload.len(), HEADER_LEN);
        assert_eq!(Header::parse(&payload).unwrap().seq, 2, "sequence wraps at 2^40");
        assert_eq!(Header::parse(&payload[..HEADER_LEN - 1]), None);
    }

    #[test]
    fn writer_reuses_its_storage() {
        let mut writer = PayloadWriter::new(1, 64);
        let first = writer.payload(1, 1);
        let ptr = first.as_ptr();
        drop(first);
        let second = writer.payload(2, 2);
        assert_eq!(second.as_ptr(), ptr);
    }

    #[test]
    fn clock_is_shared_and_monotonic() {
        let clock = Clock::new(ClockSource::Monotonic);
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_millis(5);
        assert_eq!(clock.ns(t1) - clock.ns(t0), 5_000_000);
        // A second clock of the same source agrees to within a millisecond.
        let other = Clock::new(ClockSource::Monotonic);
        assert!(clock.ns(t0).abs_diff(other.ns(t0)) < 1_000_000);
        let wall = Clock::new(ClockSource::Realtime);
        assert!(wall.ns(t0) > 1_600_000_000 * 1_000_000_000);
    }
}
