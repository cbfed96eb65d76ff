//! Rate-limited warnings for dropped messages: one log line per cause per
//! interval, with the count, so a flood of drops is visible when it happens
//! without a line per message. The counters say how many in total; these
//! lines say when.
//!
//! Pure bookkeeping, one `ratelimit::RateLimit` of one line per interval per cause:
//! the shard records drops with the time it was given and logs what
//! [`DropWarnings::record`] and [`DropWarnings::poll_due`] return.

use crate::ratelimit::RateLimit;
use std::fmt;
use std::time::{Duration, Instant};

/// How often a cause may be logged at most.
pub const WARNING_INTERVAL: Duration = Duration::from_secs(10);

/// Why messages were dropped, as the warning names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropCause {
    /// A subscriber's queue was at `max_queued_messages` or
    /// `max_queued_bytes`.
    QueueFull,
    /// A new subscription's retained messages passed
    /// `max_queued_retained`.
    RetainedLimit,
    /// Larger than the subscriber's v5 Maximum Packet Size [MQTT-3.1.2-25].
    TooLargeForClient,
    /// QoS 0 to another core whose queue was full.
    PeerOverloaded,
    /// A shared group's chosen member had left.
    NoGroupMember,
    /// Cut from the queue of a client disconnected after
    /// `slow_consumer_timeout_ms`.
    SlowConsumer,
}

impl DropCause {
    const ALL: [Self; 6] = [
        Self::QueueFull,
        Self::RetainedLimit,
        Self::TooLargeForClient,
        Self::PeerOverloaded,
        Self::NoGroupMember,
        Self::SlowConsumer,
    ];

    /// The limit or condition to look at, for the log line.
    pub fn hint(self) -> &'static str {
        match self {
            Self::QueueFull => {
                "a subscriber's queue is full (limits.max_queued_messages, limits.max_queued_bytes)"
            }
            Self::RetainedLimit => {
                "retained messages for a new subscription passed limits.max_queued_retained"
            }
            Self::TooLargeForClient => "larger than the subscriber's Maximum Packet Size",
            Self::PeerOverloaded => "QoS 0 to an overloaded core",
            Self::NoGroupMember => "the shared group's member left",
            Self::SlowConsumer => {
                "a client stayed past its queue limits for limits.slow_consumer_timeout_ms and \
                 was disconnected"
            }
        }
    }
}

impl fmt::Display for DropCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::QueueFull => "queue_full",
            Self::RetainedLimit => "retained_limit",
            Self::TooLargeForClient => "too_large_for_client",
            Self::PeerOverloaded => "peer_overloaded",
            Self::NoGroupMember => "no_group_member",
            Self::SlowConsumer => "slow_consumer",
        })
    }
}

/// The warning state of one shard: one line per cause per
/// [`WARNING_INTERVAL`].
#[derive(Debug)]
pub struct DropWarnings {
    causes: [RateLimit; DropCause::ALL.len()],
}

impl Default for DropWarnings {
    fn default() -> Self {
        Self { causes: [RateLimit::new(1, WARNING_INTERVAL); DropCause::ALL.len()] }
    }
}

impl DropWarnings {
    /// Records `count` drops for `cause` at `now`. Returns the count to log
    /// now when the cause was not logged in the last interval (the first
    /// drop of a flood is told at once); else it is kept for
    /// [`Self::poll_due`].
    pub fn record(&mut self, cause: DropCause, count: u64, now: Instant) -> Option<u64> {
        self.causes[cause as usize].record(count, now)
    }

    /// A cause whose drops were kept and whose interval has passed, with
    /// the count to log; call until `None`.
    pub fn poll_due(&mut self, now: Instant) -> Option<(DropCause, u64)> {
        DropCause::ALL
            .into_iter()
            .find_map(|cause| self.causes[cause as usize].poll_due(now).map(|n| (cause, n)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_drop_is_told_at_once_then_one_line_per_interval() {
        let t0 = Instant::now();
        let mut warnings = DropWarnings::default();
        assert_eq!(warnings.record(DropCause::QueueFull, 1, t0), Some(1));
        for i in 1..1000 {
            let at = t0 + Duration::from_millis(i);
            assert_eq!(warnings.record(DropCause::QueueFull, 1, at), None);
        }
        assert_eq!(warnings.poll_due(t0 + Duration::from_secs(5)), None, "within the interval");
        let due = t0 + WARNING_INTERVAL;
        assert_eq!(warnings.poll_due(due), Some((DropCause::QueueFull, 999)));
        assert_eq!(warnings.poll_due(due), None, "told once");
        // A drop right after a summary waits for the next interval.
        assert_eq!(warnings.record(DropCause::QueueFull, 3, due + Duration::from_secs(1)), None);
        assert_eq!(warnings.poll_due(due + WARNING_INTERVAL), Some((DropCause::QueueFull, 3)));
    }

    #[test]
    fn causes_are_counted_apart() {
        let t0 = Instant::now();
        let mut warnings = DropWarnings::default();
        assert_eq!(warnings.record(DropCause::QueueFull, 1, t0), Some(1));
        assert_eq!(warnings.record(DropCause::PeerOverloaded, 2, t0), Some(2));
        warnings.record(DropCause::QueueFull, 5, t0);
        warnings.record(DropCause::PeerOverloaded, 7, t0);
        let later = t0 + WARNING_INTERVAL;
        let mut due: Vec<_> = std::iter::from_fn(|| warnings.poll_due(later)).collect();
        due.sort_by_key(|(cause, _)| *cause as usize);
        assert_eq!(due, [(DropCause::QueueFull, 5), (DropCause::PeerOverloaded, 7)]);
    }

    #[test]
    fn a_quiet_cause_is_told_at_once_again() {
        let t0 = Instant::now();
        let mut warnings = DropWarnings::default();
        warnings.record(DropCause::RetainedLimit, 1, t0);
        let much_later = t0 + WARNING_INTERVAL * 3;
        assert_eq!(warnings.poll_due(much_later), None);
        assert_eq!(warnings.record(DropCause::RetainedLimit, 1, much_later), Some(1));
    }
}
