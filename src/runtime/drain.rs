//! The pace of a graceful shutdown (`drain_timeout_s`): a shard closes its
//! connections in steps spread evenly over the drain timeout rather than
//! all at once, so a fleet that reconnects to other brokers arrives there
//! as a stream, not a storm. Pure arithmetic over a clock the caller
//! gives, so it is tested without waiting.

use std::time::{Duration, Instant};

/// How far one shard's drain has gone.
#[derive(Debug)]
pub(super) struct Drain {
    start: Instant,
    timeout: Duration,
    /// Connections open when the drain started.
    total: usize,
    /// Closures asked for so far.
    closed: usize,
}

impl Drain {
    /// A drain of the `connected` connections open at `now`, over
    /// `timeout` (zero: all at once).
    pub(super) fn new(now: Instant, timeout: Duration, connected: usize) -> Self {
        Self { start: now, timeout, total: connected, closed: 0 }
    }

    /// How many more connections to close at `now`: by then the closed
    /// share of the connections matches the elapsed share of the timeout
    /// (rounded up, so a drain never lags); every one once it is over.
    pub(super) fn due(&mut self, now: Instant) -> usize {
        let target = if self.is_over(now) {
            self.total
        } else {
            let elapsed = now.saturating_duration_since(self.start).as_nanos();
            let share = (self.total as u128 * elapsed).div_ceil(self.timeout.as_nanos());
            usize::try_from(share).unwrap_or(self.total).min(self.total)
        };
        let due = target.saturating_sub(self.closed);
        self.closed += due;
        due
    }

    /// Whether the drain timeout has passed.
    pub(super) fn is_over(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.start) >= self.timeout
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_close_in_proportion_to_the_time_elapsed() {
        let start = Instant::now();
        let mut drain = Drain::new(start, Duration::from_secs(10), 100);
        assert_eq!(drain.due(start), 0);
        assert_eq!(drain.due(start + Duration::from_millis(250)), 3, "2.5 rounded up");
        assert_eq!(drain.due(start + Duration::from_secs(5)), 47);
        assert_eq!(drain.due(start + Duration::from_secs(5)), 0, "nothing twice");
        assert!(!drain.is_over(start + Duration::from_secs(9)));
        assert_eq!(drain.due(start + Duration::from_secs(10)), 50);
        assert!(drain.is_over(start + Duration::from_secs(10)));
        assert_eq!(drain.due(start + Duration::from_secs(11)), 0);
    }

    #[test]
    fn a_zero_timeout_closes_everything_at_once() {
        let start = Instant::now();
        let mut drain = Drain::new(start, Duration::ZERO, 7);
        assert!(drain.is_over(start));
        assert_eq!(drain.due(start), 7);
    }

    #[test]
    fn a_few_connections_over_a_long_drain_leave_one_by_one() {
        let start = Instant::now();
        let mut drain = Drain::new(start, Duration::from_secs(60), 3);
        let closed: Vec<usize> =
            [1, 19, 21, 39, 41, 60].map(|s| drain.due(start + Duration::from_secs(s))).into();
        assert_eq!(closed, [1, 0, 1, 0, 1, 0]);
    }
}
