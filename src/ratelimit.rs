//! A budget of log lines per interval, with a count of what was held back:
//! so a flood (of dropped messages, of connections) is visible when it
//! happens without a line per event, and the lines held back are told in
//! one summary line per interval.
//!
//! Pure bookkeeping with the time passed in: the owner (a shard, a shard's
//! network layer) records events and logs what [`RateLimit::record`] and
//! [`RateLimit::poll_due`] return.

use std::time::{Duration, Instant};

/// At most `budget` lines per `interval`; the events past it are counted
/// and told in one summary line once the interval has passed.
#[derive(Clone, Copy, Debug)]
pub struct RateLimit {
    budget: u32,
    interval: Duration,
    /// When the current interval began; `None` before the first line.
    window_start: Option<Instant>,
    /// Lines logged in the current interval (a summary counts).
    told: u32,
    /// Events held back since the last line that told them.
    untold: u64,
}

impl RateLimit {
    /// At most `budget` (at least 1) lines per `interval`.
    pub const fn new(budget: u32, interval: Duration) -> Self {
        let budget = if budget == 0 { 1 } else { budget };
        Self { budget, interval, window_start: None, told: 0, untold: 0 }
    }

    /// Records `count` events at `now`. Returns the count to log now
    /// (with any held back and not yet told) when the interval's budget
    /// has room; else they are held back for [`Self::poll_due`].
    pub fn record(&mut self, count: u64, now: Instant) -> Option<u64> {
        if self.window_start.is_none_or(|start| now >= start + self.interval) {
            self.window_start = Some(now);
            self.told = 0;
        }
        if self.told < self.budget {
            self.told += 1;
            Some(count + std::mem::take(&mut self.untold))
        } else {
            self.untold += count;
            None
        }
    }

    /// The count of events held back, once the interval in which they
    /// were held back has passed: the summary line to log now, which
    /// counts against the next interval's budget.
    pub fn poll_due(&mut self, now: Instant) -> Option<u64> {
        let due =
            self.untold > 0 && self.window_start.is_none_or(|start| now >= start + self.interval);
        due.then(|| {
            self.window_start = Some(now);
            self.told = 1;
            std::mem::take(&mut self.untold)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_budget_per_interval_then_one_summary() {
        let t0 = Instant::now();
        let second = Duration::from_secs(1);
        let mut limit = RateLimit::new(3, second);
        let ms = |n| t0 + Duration::from_millis(n);
        assert_eq!(limit.record(1, ms(0)), Some(1));
        assert_eq!(limit.record(1, ms(1)), Some(1));
        assert_eq!(limit.record(1, ms(2)), Some(1));
        for i in 3..100 {
            assert_eq!(limit.record(1, ms(i)), None, "past the budget");
        }
        assert_eq!(limit.poll_due(ms(999)), None, "within the interval");
        assert_eq!(limit.poll_due(ms(1000)), Some(97));
        assert_eq!(limit.poll_due(ms(1000)), None, "told once");
        // The summary took one line of the new interval.
        assert_eq!(limit.record(1, ms(1001)), Some(1));
        assert_eq!(limit.record(1, ms(1002)), Some(1));
        assert_eq!(limit.record(1, ms(1003)), None);
        // A new interval with room tells what was held back with its line.
        assert_eq!(limit.record(1, ms(2001)), Some(2));
    }
}
