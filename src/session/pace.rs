//! Per-connection publish pacing (`max_publish_rate`,
//! `max_publish_bytes_rate`): a token bucket kept as the generic cell rate
//! algorithm (GCRA), two instants per rate and no counters to refill.
//!
//! Every PUBLISH read is charged; nothing is ever dropped or refused for
//! its rate. When a charge takes a budget more than [`BURST`] into the
//! future, the session asks the network layer (through
//! [`Session::paced_until`](super::Session::paced_until)) not to read the
//! connection again until the budget has come back: the publishes wait in
//! the client's socket and TCP flow control slows the client down, so what
//! the broker acknowledged is always delivered.

use std::time::{Duration, Instant};

/// How far ahead of time a connection may publish: a second's worth of its
/// rates, so a client below them on average may still send bursts.
pub(super) const BURST: Duration = Duration::from_secs(1);

/// When paced, reading resumes once the budget is this much below
/// [`BURST`]: a saturated connection is woken about ten times a second,
/// not once per message.
const RESUME_MARGIN: Duration = Duration::from_millis(100);

/// The budgets of one connection: for each rate, the time at which
/// everything charged so far would have been sent at exactly that rate.
#[derive(Debug)]
pub(super) struct PublishPace {
    messages_due: Instant,
    bytes_due: Instant,
}

impl PublishPace {
    /// A connection with full budgets at `now`.
    pub(super) fn new(now: Instant) -> Self {
        Self { messages_due: now, bytes_due: now }
    }

    /// Charges one PUBLISH of `payload` bytes at `now` against `rate`
    /// messages/s and `bytes_rate` bytes/s (0: not limited). Returns
    /// whether the connection is to be paced now.
    pub(super) fn charge(
        &mut self,
        now: Instant,
        payload: usize,
        rate: u32,
        bytes_rate: u64,
    ) -> bool {
        if rate > 0 {
            self.messages_due = self.messages_due.max(now) + BURST / rate;
        }
        if bytes_rate > 0 {
            let nanos = payload as u128 * BURST.as_nanos() / u128::from(bytes_rate);
            let cost = Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX));
            self.bytes_due = self.bytes_due.max(now).checked_add(cost).unwrap_or(self.bytes_due);
        }
        self.until(now).is_some()
    }

    /// Until when the connection is not to be read; `None` when it may be
    /// read at `now`.
    pub(super) fn until(&self, now: Instant) -> Option<Instant> {
        let due = self.messages_due.max(self.bytes_due);
        (due > now + BURST).then(|| due - BURST + RESUME_MARGIN)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_of_one_second_then_paced_at_the_rate() {
        let t0 = Instant::now();
        let mut pace = PublishPace::new(t0);
        // 10/s: ten messages at once are within the burst...
        for _ in 0..10 {
            assert!(!pace.charge(t0, 1, 10, 0));
        }
        // ...the eleventh is paced until the budget has 100 ms back.
        assert!(pace.charge(t0, 1, 10, 0));
        let until = pace.until(t0).unwrap();
        assert_eq!(until, t0 + Duration::from_millis(200));
        assert_eq!(pace.until(until), None, "readable again");
        // Over a long run, no more than the rate (plus the burst) passes.
        let mut now = until;
        let mut sent = 11u32;
        while now < t0 + Duration::from_secs(10) {
            pace.charge(now, 1, 10, 0);
            sent += 1;
            if let Some(until) = pace.until(now) {
                now = until;
            }
        }
        assert!(sent <= 10 * 10 + 10 + 1, "{sent} messages in 10 s at 10/s");
        assert!(sent >= 10 * 10, "{sent} messages in 10 s at 10/s");
    }

    #[test]
    fn bytes_are_paced_by_payload_size() {
        let t0 = Instant::now();
        let mut pace = PublishPace::new(t0);
        assert!(!pace.charge(t0, 1000, 0, 1000), "a second's worth");
        assert!(pace.charge(t0, 500, 0, 1000));
        assert_eq!(pace.until(t0), Some(t0 + Duration::from_millis(600)));
        // One payload larger than a second's worth pauses for longer, but
        // is never refused.
        let mut pace = PublishPace::new(t0);
        assert!(pace.charge(t0, 5000, 0, 1000));
        assert_eq!(pace.until(t0), Some(t0 + Duration::from_millis(4100)));
    }
}
