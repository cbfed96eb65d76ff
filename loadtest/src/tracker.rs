//! Loss, duplicate and out-of-order accounting of one publisher stream as
//! one subscriber sees it.
//!
//! A stream is the sequence numbers 0, 1, 2, ... of one publisher. The
//! tracker counts distinct arrivals (by second) and remembers the highest number seen and which of the
//! [`WINDOW`] numbers below it arrived, so a late message is told apart
//! from a duplicate without keeping every number.
//!
//! Every arrival also names the second (since publishing started) it was
//! sent in, so that loss can be told per second of sending as well as in
//! total: [`StreamTracker::received_by_second`] against the publisher's
//! per-second counts, or [`StreamTracker::gaps_by_second`] when those are
//! unknown.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// The streams of one subscriber, by publisher id.
pub type StreamMap = HashMap<u32, StreamTracker, BuildHasherDefault<PublisherHasher>>;

/// Hashes a publisher id with one multiplication (Fibonacci hashing): ids
/// are small and chosen by this program, so SipHash's protection against
/// chosen keys buys nothing on a lookup made for every message. A foreign
/// publisher id only costs a slower lookup, never a wrong one.
#[derive(Clone, Copy, Debug, Default)]
pub struct PublisherHasher(u64);

impl Hasher for PublisherHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = (self.0 ^ u64::from(byte)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u32(&mut self, id: u32) {
        self.0 = u64::from(id).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// How far below the highest sequence number arrivals are remembered.
pub const WINDOW: u64 = 1024;
const WORDS: usize = (WINDOW / 64) as usize;

/// What one arrival was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arrival {
    /// The next number, or a later one (a gap opened before it).
    InOrder,
    /// Below the highest number and not seen before.
    OutOfOrder,
    /// Seen before.
    Duplicate,
    /// Too far below the highest number to tell; counted as out of order.
    TooLate,
}

/// The state of one publisher stream at one subscriber.
#[derive(Clone, Debug, Default)]
pub struct StreamTracker {
    /// Highest sequence number seen plus one; 0 before any arrival.
    end: u64,
    /// Bit `seq % WINDOW` is set when `seq` (within the window) arrived.
    seen: [u64; WORDS],
    /// Distinct messages received, by the second they were sent in.
    received_by_second: Vec<u64>,
    /// Gaps opened (numbers skipped by an in-order arrival, counted at that
    /// arrival's second) minus gaps filled (late arrivals, counted at their
    /// own second), by second.
    gap_balance: Vec<i64>,
}

impl StreamTracker {
    /// Records the arrival of `seq`, sent in second `second` of the run.
    pub fn handle_arrival(&mut self, seq: u64, second: u64) -> Arrival {
        let opened = seq.saturating_sub(self.end);
        let arrival = self.classify(seq);
        let second = second as usize;
        match arrival {
            Arrival::InOrder => {
                add_at(&mut self.received_by_second, second, 1);
                if opened > 0 {
                    add_at(&mut self.gap_balance, second, opened as i64);
                }
            }
            Arrival::OutOfOrder | Arrival::TooLate => {
                add_at(&mut self.received_by_second, second, 1);
                add_at(&mut self.gap_balance, second, -1);
            }
            Arrival::Duplicate => {}
        }
        arrival
    }

    /// Records `seq` in the window and counts it.
    fn classify(&mut self, seq: u64) -> Arrival {
        if seq >= self.end {
            // Forget the slots that leave the window.
            if seq - self.end >= WINDOW {
                self.seen = [0; WORDS];
            } else {
                for old in self.end..seq {
                    self.clear(old);
                }
            }
            self.set(seq);
            self.end = seq + 1;
            return Arrival::InOrder;
        }
        if self.end - seq > WINDOW {
            return Arrival::TooLate;
        }
        if self.is_set(seq) {
            return Arrival::Duplicate;
        }
        self.set(seq);
        Arrival::OutOfOrder
    }

    /// Distinct messages received, by the second they were sent in.
    pub fn received_by_second(&self) -> &[u64] {
        &self.received_by_second
    }

    /// [`Self::gaps`] by second. A gap is counted at the second of the
    /// arrival that revealed it, a late arrival that fills one at its own
    /// second; the late message was sent no later than the arrival that
    /// revealed its gap, so a second where fills outnumber openings owes
    /// them to the seconds after it, and the balance is carried forward.
    /// The seconds add up to the numbers below the highest seen that never
    /// arrived: loss the subscriber can prove without knowing how many
    /// were sent.
    pub fn gaps_by_second(&self) -> Vec<u64> {
        let mut debt = 0i64;
        self.gap_balance
            .iter()
            .map(|&balance| {
                let net = balance - debt;
                debt = (-net).max(0);
                net.max(0) as u64
            })
            .collect()
    }

    fn set(&mut self, seq: u64) {
        let bit = seq % WINDOW;
        self.seen[(bit / 64) as usize] |= 1 << (bit % 64);
    }

    fn clear(&mut self, seq: u64) {
        let bit = seq % WINDOW;
        self.seen[(bit / 64) as usize] &= !(1 << (bit % 64));
    }

    fn is_set(&self, seq: u64) -> bool {
        let bit = seq % WINDOW;
        self.seen[(bit / 64) as usize] & (1 << (bit % 64)) != 0
    }
}

/// Adds `value` to `counts[index]`, growing `counts` with zeros.
pub fn add_at<T: Copy + Default + std::ops::AddAssign>(
    counts: &mut Vec<T>,
    index: usize,
    value: T,
) {
    if counts.len() <= index {
        counts.resize(index + 1, T::default());
    }
    counts[index] += value;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gaps(t: &StreamTracker) -> u64 {
        t.gaps_by_second().iter().sum()
    }

    fn received(t: &StreamTracker) -> u64 {
        t.received_by_second().iter().sum()
    }

    #[test]
    fn in_order_stream_has_no_loss() {
        let mut t = StreamTracker::default();
        for seq in 0..5000 {
            assert_eq!(t.handle_arrival(seq, 0), Arrival::InOrder);
        }
        assert_eq!((received(&t), gaps(&t)), (5000, 0));
        assert_eq!(t.received_by_second(), [5000]);
    }

    #[test]
    fn gaps_late_arrivals_and_duplicates() {
        let mut t = StreamTracker::default();
        for seq in [0, 1, 4, 5] {
            t.handle_arrival(seq, 0);
        }
        assert_eq!(gaps(&t), 2);
        assert_eq!(t.handle_arrival(2, 0), Arrival::OutOfOrder);
        assert_eq!(t.handle_arrival(2, 0), Arrival::Duplicate);
        assert_eq!(t.handle_arrival(5, 0), Arrival::Duplicate);
        assert_eq!(gaps(&t), 1);
        assert_eq!(received(&t), 5);
    }

    #[test]
    fn window_slides_and_forgets() {
        let mut t = StreamTracker::default();
        t.handle_arrival(0, 0);
        // A jump beyond the window clears it: slot 0 is reused by WINDOW.
        assert_eq!(t.handle_arrival(WINDOW, 0), Arrival::InOrder);
        assert_eq!(t.handle_arrival(1, 0), Arrival::OutOfOrder);
        assert_eq!(t.handle_arrival(WINDOW * 3, 0), Arrival::InOrder);
        assert_eq!(t.handle_arrival(5, 0), Arrival::TooLate);
        // A slot reused after a small step starts clear.
        assert_eq!(t.handle_arrival(WINDOW * 3 + 10, 0), Arrival::InOrder);
        assert_eq!(t.handle_arrival(WINDOW * 2 + 11, 0), Arrival::OutOfOrder);
        assert_eq!(t.handle_arrival(WINDOW * 3 + 5, 0), Arrival::OutOfOrder);
        assert_eq!(t.handle_arrival(WINDOW * 3 + 5, 0), Arrival::Duplicate);
    }

    #[test]
    fn arrivals_and_gaps_by_second() {
        let mut t = StreamTracker::default();
        // Second 0 sends 0..4, second 1 sends 4..8, second 2 sends 8..10.
        for (seq, second) in [(0, 0), (2, 0), (3, 0), (6, 1), (7, 1), (9, 2)] {
            t.handle_arrival(seq, second);
        }
        assert_eq!(t.received_by_second(), [3, 2, 1]);
        // 1 opened at 0; 4, 5 opened at 1; 8 at 2.
        assert_eq!(t.gaps_by_second(), [1, 2, 1]);
        // 5 arrives late: fills a gap of second 1.
        assert_eq!(t.handle_arrival(5, 1), Arrival::OutOfOrder);
        assert_eq!(t.gaps_by_second(), [1, 1, 1]);
        // 1 arrives late too, then 4 twice (the copy counts for nothing).
        t.handle_arrival(1, 0);
        t.handle_arrival(4, 1);
        t.handle_arrival(4, 1);
        assert_eq!(t.gaps_by_second(), [0, 0, 1]);
        assert_eq!(t.received_by_second(), [4, 4, 1]);
        assert_eq!(gaps(&t), 10 - received(&t));
    }

    #[test]
    fn a_fill_before_its_gap_is_carried_forward() {
        let mut t = StreamTracker::default();
        // 0 at second 0; 1 is late and sent in second 0, but its gap (1
        // and 2) is only revealed by 3, sent in second 1.
        t.handle_arrival(0, 0);
        t.handle_arrival(3, 1);
        t.handle_arrival(1, 0);
        assert_eq!(gaps(&t), 1);
        assert_eq!(t.gaps_by_second(), [0, 1]);
    }
}
