//! Loss, duplicate and out-of-order accounting of one publisher stream as
//! one subscriber sees it.
//!
//! A stream is the sequence numbers 0, 1, 2, ... of one publisher. The
//! tracker counts distinct arrivals and remembers the highest number seen and which of the
//! [`WINDOW`] numbers below it arrived, so a late message is told apart
//! from a duplicate without keeping every number.

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
    /// Distinct messages received.
    received: u64,
}

impl StreamTracker {
    /// Records the arrival of `seq`.
    pub fn handle_arrival(&mut self, seq: u64) -> Arrival {
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
            self.received += 1;
            return Arrival::InOrder;
        }
        if self.end - seq > WINDOW {
            self.received += 1;
            return Arrival::TooLate;
        }
        if self.is_set(seq) {
            return Arrival::Duplicate;
        }
        self.set(seq);
        self.received += 1;
        Arrival::OutOfOrder
    }

    /// Distinct messages received.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Numbers below the highest seen that never arrived: loss the
    /// subscriber can prove without knowing how many were sent.
    pub fn gaps(&self) -> u64 {
        self.end.saturating_sub(self.received)
    }

    /// Messages lost out of `sent` (the publisher's count, when known).
    pub fn lost(&self, sent: u64) -> u64 {
        sent.saturating_sub(self.received)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_stream_has_no_loss() {
        let mut t = StreamTracker::default();
        for seq in 0..5000 {
            assert_eq!(t.handle_arrival(seq), Arrival::InOrder);
        }
        assert_eq!((t.received(), t.gaps(), t.lost(5000)), (5000, 0, 0));
        assert_eq!(t.lost(5003), 3, "tail loss is only visible against the sent count");
    }

    #[test]
    fn gaps_late_arrivals_and_duplicates() {
        let mut t = StreamTracker::default();
        for seq in [0, 1, 4, 5] {
            t.handle_arrival(seq);
        }
        assert_eq!(t.gaps(), 2);
        assert_eq!(t.handle_arrival(2), Arrival::OutOfOrder);
        assert_eq!(t.handle_arrival(2), Arrival::Duplicate);
        assert_eq!(t.handle_arrival(5), Arrival::Duplicate);
        assert_eq!(t.gaps(), 1);
        assert_eq!(t.received(), 5);
    }

    #[test]
    fn window_slides_and_forgets() {
        let mut t = StreamTracker::default();
        t.handle_arrival(0);
        // A jump beyond the window clears it: slot 0 is reused by WINDOW.
        assert_eq!(t.handle_arrival(WINDOW), Arrival::InOrder);
        assert_eq!(t.handle_arrival(1), Arrival::OutOfOrder);
        assert_eq!(t.handle_arrival(WINDOW * 3), Arrival::InOrder);
        assert_eq!(t.handle_arrival(5), Arrival::TooLate);
        // A slot reused after a small step starts clear.
        assert_eq!(t.handle_arrival(WINDOW * 3 + 10), Arrival::InOrder);
        assert_eq!(t.handle_arrival(WINDOW * 2 + 11), Arrival::OutOfOrder);
        assert_eq!(t.handle_arrival(WINDOW * 3 + 5), Arrival::OutOfOrder);
        assert_eq!(t.handle_arrival(WINDOW * 3 + 5), Arrival::Duplicate);
    }
}
