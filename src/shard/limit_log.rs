//! Rate-limited warnings for the abuse limits a client hit (a topic too
//! long, a client id too long, a publish rate passed, the retained store
//! full): one log line per cause per interval, with the count, so a
//! misbehaving fleet is visible in the log without a line per packet. The
//! counters say how many in total; these lines say when.
//!
//! Pure bookkeeping over `ratelimit::RateLimit`, as `drops` does for
//! dropped messages: the shard records hits with the time it was given and
//! logs what [`LimitWarnings::record`] and [`LimitWarnings::poll_due`]
//! return.

use crate::ratelimit::RateLimit;
use std::fmt;
use std::time::Instant;

use super::drops::WARNING_INTERVAL;

/// Which limit was hit, as the warning names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LimitCause {
    /// A topic name, will topic or filter past `max_topic_length` or
    /// `max_topic_levels`.
    TopicTooLong,
    /// A client id past `max_client_id_length`.
    ClientIdTooLong,
    /// A connection past `max_publish_rate` or `max_publish_bytes_rate`.
    PublishRate,
    /// A new retained topic past `max_retained_messages` or
    /// `max_retained_bytes`.
    RetainedFull,
}

impl LimitCause {
    const ALL: [Self; 4] =
        [Self::TopicTooLong, Self::ClientIdTooLong, Self::PublishRate, Self::RetainedFull];

    /// What happened and the keys to look at, for the log line.
    pub fn hint(self) -> &'static str {
        match self {
            Self::TopicTooLong => {
                "topics or filters refused (limits.max_topic_length, limits.max_topic_levels)"
            }
            Self::ClientIdTooLong => "CONNECTs refused (limits.max_client_id_length)",
            Self::PublishRate => {
                "connections paced (limits.max_publish_rate, limits.max_publish_bytes_rate)"
            }
            Self::RetainedFull => {
                "new retained topics not stored (limits.max_retained_messages, \
                 limits.max_retained_bytes)"
            }
        }
    }
}

impl fmt::Display for LimitCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::TopicTooLong => "topic_limit_exceeded",
            Self::ClientIdTooLong => "client_id_too_long",
            Self::PublishRate => "publish_rate_limited",
            Self::RetainedFull => "retained_limit_exceeded",
        })
    }
}

/// The warning state of one shard: one line per cause per
/// [`WARNING_INTERVAL`].
#[derive(Debug)]
pub struct LimitWarnings {
    causes: [RateLimit; LimitCause::ALL.len()],
}

impl Default for LimitWarnings {
    fn default() -> Self {
        Self { causes: [RateLimit::new(1, WARNING_INTERVAL); LimitCause::ALL.len()] }
    }
}

impl LimitWarnings {
    /// Records `count` hits of `cause` at `now`. Returns the count to log
    /// now when the cause was not logged in the last interval; else it is
    /// kept for [`Self::poll_due`].
    pub fn record(&mut self, cause: LimitCause, count: u64, now: Instant) -> Option<u64> {
        self.causes[cause as usize].record(count, now)
    }

    /// A cause whose hits were kept and whose interval has passed, with
    /// the count to log; call until `None`.
    pub fn poll_due(&mut self, now: Instant) -> Option<(LimitCause, u64)> {
        LimitCause::ALL
            .into_iter()
            .find_map(|cause| self.causes[cause as usize].poll_due(now).map(|n| (cause, n)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn one_line_per_cause_per_interval_then_a_summary() {
        let t0 = Instant::now();
        let mut warnings = LimitWarnings::default();
        assert_eq!(warnings.record(LimitCause::PublishRate, 1, t0), Some(1));
        assert_eq!(warnings.record(LimitCause::TopicTooLong, 1, t0), Some(1), "per cause");
        for i in 1..500 {
            let at = t0 + Duration::from_millis(i);
            assert_eq!(warnings.record(LimitCause::PublishRate, 1, at), None);
        }
        assert_eq!(warnings.poll_due(t0 + Duration::from_secs(1)), None);
        let due = t0 + WARNING_INTERVAL;
        assert_eq!(warnings.poll_due(due), Some((LimitCause::PublishRate, 499)));
        assert_eq!(warnings.poll_due(due), None);
    }
}
