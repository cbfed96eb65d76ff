//! Whether a just-accepted connection may stay: the process-wide
//! `limits.max_connections`, each listener's own `max_connections` and its
//! `max_connection_rate`. A refused connection is closed before anything
//! is read from it, counted by cause, and told in a warning line at most
//! once per [`REFUSAL_LOG_INTERVAL`] per cause (with how many were refused
//! since), so a flood of connections does not flood the log.
//!
//! The open-connection counts are process-wide atomics (a connection
//! handed off to another shard stays counted once); the rate is a token
//! bucket per shard and listener holding that shard's share of the rate
//! (the kernel spreads new connections evenly over the shards' sockets
//! with SO_REUSEPORT).

use crate::config::ListenerConfig;
use crate::metrics::NetCounters;
use crate::ratelimit::RateLimit;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// How often, at most, a shard logs a refusal line per cause.
pub const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Why a connection was refused at accept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// `limits.max_connections` connections are open.
    ProcessLimit,
    /// The listener's `max_connections` connections are open.
    ListenerLimit,
    /// The listener's `max_connection_rate` was used up this second.
    Rate,
}

impl Refusal {
    fn index(self) -> usize {
        self as usize
    }

    fn hint(self) -> &'static str {
        match self {
            Self::ProcessLimit => {
                "limits.max_connections are open; raise it if the host can take more"
            }
            Self::ListenerLimit => "the listener's max_connections are open",
            Self::Rate => "over the listener's max_connection_rate (new connections per second)",
        }
    }
}

/// One listener's limits and open connections, shared by every shard.
#[derive(Debug)]
pub struct ListenerAdmission {
    max_connections: Option<usize>,
    max_connection_rate: Option<u32>,
    open: AtomicUsize,
    /// `proxy_protocol`: a connection stays only once it has sent a valid
    /// PROXY header (read by [`super::serve_proxied`]).
    proxy_protocol: bool,
}

impl ListenerAdmission {
    /// The admission of `listener`.
    pub fn new(listener: &ListenerConfig) -> Self {
        Self {
            max_connections: listener.max_connections().map(|n| n.get() as usize),
            max_connection_rate: listener.max_connection_rate().map(|n| n.get()),
            open: AtomicUsize::new(0),
            proxy_protocol: listener.proxy_protocol(),
        }
    }

    /// Whether every connection must open with a PROXY protocol header.
    pub fn proxy_protocol(&self) -> bool {
        self.proxy_protocol
    }
}

/// Tokens refilled continuously at `rate` per second, at most `burst`.
#[derive(Clone, Copy, Debug)]
struct TokenBucket {
    tokens: f64,
    rate: f64,
    burst: f64,
    last: Instant,
}

impl TokenBucket {
    fn new(rate: f64, now: Instant) -> Self {
        // A second's worth of the rate may arrive at once.
        let burst = rate.max(1.0);
        Self { tokens: burst, rate, burst, last: now }
    }

    fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// One shard's admission state: its token buckets and refusal log lines.
#[derive(Debug)]
pub struct Admission {
    /// Per listener, the shard's share of its rate; `None`: no rate limit.
    buckets: Vec<Option<TokenBucket>>,
    logs: [RateLimit; 3],
}

impl Admission {
    /// The state of one of `nr_shards` shards for `listeners`.
    pub fn new(listeners: &[ListenerAdmission], nr_shards: usize, now: Instant) -> Self {
        let share = |rate: u32| f64::from(rate) / nr_shards.max(1) as f64;
        Self {
            buckets: listeners
                .iter()
                .map(|l| l.max_connection_rate.map(|rate| TokenBucket::new(share(rate), now)))
                .collect(),
            logs: [RateLimit::new(1, REFUSAL_LOG_INTERVAL); 3],
        }
    }

    /// Takes a connection slot for a connection accepted on `listener` at
    /// `now`: in the process (`open` against `max_connections`) and in the
    /// listener, and a token of its rate. On refusal nothing is taken; the
    /// refusal is counted in `counters` and logged (rate-limited).
    pub fn admit(
        &mut self,
        listener: usize,
        listeners: &[ListenerAdmission],
        open: &AtomicUsize,
        max_connections: usize,
        now: Instant,
        counters: &mut NetCounters,
    ) -> Result<(), Refusal> {
        let refusal = self.check(listener, listeners, open, max_connections, now);
        if let Err(refusal) = refusal {
            match refusal {
                Refusal::ProcessLimit | Refusal::ListenerLimit => counters.refused_limit += 1,
                Refusal::Rate => counters.refused_rate += 1,
            }
            if let Some(refused) = self.logs[refusal.index()].record(1, now) {
                tracing::warn!(listener, refused, "connections refused: {}", refusal.hint());
            }
        }
        refusal
    }

    fn check(
        &mut self,
        listener: usize,
        listeners: &[ListenerAdmission],
        open: &AtomicUsize,
        max_connections: usize,
        now: Instant,
    ) -> Result<(), Refusal> {
        if let Some(Some(bucket)) = self.buckets.get_mut(listener) {
            if !bucket.take(now) {
                return Err(Refusal::Rate);
            }
        }
        if open.fetch_add(1, Ordering::Relaxed) >= max_connections {
            open.fetch_sub(1, Ordering::Relaxed);
            return Err(Refusal::ProcessLimit);
        }
        if let Some(admission) = listeners.get(listener) {
            let before = admission.open.fetch_add(1, Ordering::Relaxed);
            if admission.max_connections.is_some_and(|max| before >= max) {
                admission.open.fetch_sub(1, Ordering::Relaxed);
                open.fetch_sub(1, Ordering::Relaxed);
                return Err(Refusal::ListenerLimit);
            }
        }
        Ok(())
    }

    /// Gives back the slots of a connection of `listener` that closed.
    pub fn release(listener: usize, listeners: &[ListenerAdmission], open: &AtomicUsize) {
        open.fetch_sub(1, Ordering::Relaxed);
        if let Some(admission) = listeners.get(listener) {
            admission.open.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Logs the refusals held back, once their interval has passed; the
    /// shard's tick calls it.
    pub fn poll_log_summary(&mut self, now: Instant) {
        for (logs, refusal) in
            self.logs.iter_mut().zip([Refusal::ProcessLimit, Refusal::ListenerLimit, Refusal::Rate])
        {
            if let Some(refused) = logs.poll_due(now) {
                tracing::warn!(refused, "connections refused: {}", refusal.hint());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listener(max_connections: Option<usize>, rate: Option<u32>) -> ListenerAdmission {
        ListenerAdmission {
            max_connections,
            max_connection_rate: rate,
            open: AtomicUsize::new(0),
            proxy_protocol: false,
        }
    }

    #[test]
    fn the_process_and_the_listener_limits_each_refuse_and_are_given_back() {
        let listeners = [listener(Some(2), None), listener(None, None)];
        let open = AtomicUsize::new(0);
        let now = Instant::now();
        let mut admission = Admission::new(&listeners, 1, now);
        let mut counters = NetCounters::default();
        let mut admit = |l: usize, counters: &mut NetCounters| {
            admission.admit(l, &listeners, &open, 3, now, counters)
        };
        assert_eq!(admit(0, &mut counters), Ok(()));
        assert_eq!(admit(0, &mut counters), Ok(()));
        assert_eq!(admit(0, &mut counters), Err(Refusal::ListenerLimit));
        assert_eq!(admit(1, &mut counters), Ok(()));
        assert_eq!(admit(1, &mut counters), Err(Refusal::ProcessLimit));
        assert_eq!(counters.refused_limit, 2);
        Admission::release(0, &listeners, &open);
        assert_eq!(admit(0, &mut counters), Ok(()), "a closed connection gives its slot back");
        assert_eq!(open.load(Ordering::Relaxed), 3);
        assert_eq!(listeners[0].open.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn the_rate_is_a_token_bucket_sharing_the_rate_between_shards() {
        let listeners = [listener(None, Some(20))];
        let open = AtomicUsize::new(0);
        let t0 = Instant::now();
        // Two shards: 10 per second each, a burst of 10.
        let mut admission = Admission::new(&listeners, 2, t0);
        let mut counters = NetCounters::default();
        let mut admitted = |at: Instant, counters: &mut NetCounters| {
            (0..100)
                .filter(|_| admission.admit(0, &listeners, &open, 1000, at, counters).is_ok())
                .count()
        };
        assert_eq!(admitted(t0, &mut counters), 10);
        assert_eq!(admitted(t0 + Duration::from_millis(500), &mut counters), 5);
        assert_eq!(admitted(t0 + Duration::from_secs(10), &mut counters), 10, "burst capped");
        assert_eq!(counters.refused_rate, 275);
        assert_eq!(counters.refused_limit, 0);
    }
}
