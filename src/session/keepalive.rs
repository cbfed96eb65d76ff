//! The keep alive timer of one connection: the server closes a connection
//! when nothing was received for one and a half times the keep alive
//! (3.1.1 [MQTT-3.1.2-24], 5.0 [MQTT-3.1.2-22]).

use std::time::{Duration, Instant};

/// Tracks when the last packet arrived; time is always passed in.
#[derive(Clone, Copy, Debug)]
pub(super) struct KeepAlive {
    /// 1.5 x the keep alive; `None` when the keep alive is 0 (disabled).
    timeout: Option<Duration>,
    /// When the last packet (any packet) was received.
    last_received: Instant,
}

impl KeepAlive {
    /// A timer for `keep_alive` seconds, started at `now` (the CONNECT).
    pub(super) fn new(keep_alive: u16, now: Instant) -> Self {
        let timeout = (keep_alive > 0).then(|| Duration::from_millis(u64::from(keep_alive) * 1500));
        Self { timeout, last_received: now }
    }

    /// Any packet received resets the timer.
    pub(super) fn handle_received(&mut self, now: Instant) {
        self.last_received = now;
    }

    /// When the connection is to be closed if nothing arrives before.
    pub(super) fn deadline(&self) -> Option<Instant> {
        self.timeout.and_then(|t| self.last_received.checked_add(t))
    }

    /// Whether the deadline has passed at `now`.
    pub(super) fn is_expired(&self, now: Instant) -> bool {
        self.deadline().is_some_and(|deadline| now >= deadline)
    }
}
