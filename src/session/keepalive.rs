//! The keep alive timer of one connection: the server closes a connection
//! when nothing was received for one and a half times the keep alive
//! (3.1.1 [MQTT-3.1.2-24], 5.0 [MQTT-3.1.2-22]).
//!
//! The timer does not run while the server itself is not reading the
//! connection (backpressure, see [`KeepAlive::handle_held`]): a client
//! whose packets wait unread in the socket has not failed to send them.

use std::time::{Duration, Instant};

/// Tracks when the last packet arrived; time is always passed in.
#[derive(Clone, Copy, Debug)]
pub(super) struct KeepAlive {
    /// The keep alive in seconds; 0: disabled. (Two bytes where the
    /// timeout as a `Duration` took sixteen: it is in every connection.)
    keep_alive: u16,
    /// When the last packet (any packet) was received, or the server
    /// resumed reading; `None` while the server does not read.
    last_received: Option<Instant>,
}

impl KeepAlive {
    /// A timer for `keep_alive` seconds, started at `now` (the CONNECT).
    pub(super) fn new(keep_alive: u16, now: Instant) -> Self {
        Self { keep_alive, last_received: Some(now) }
    }

    /// 1.5 x the keep alive; `None` when the keep alive is 0 (disabled).
    fn timeout(&self) -> Option<Duration> {
        let keep_alive = u64::from(self.keep_alive);
        (keep_alive > 0).then(|| Duration::from_millis(keep_alive * 1500))
    }

    /// Any packet received resets the timer.
    pub(super) fn handle_received(&mut self, now: Instant) {
        self.last_received = Some(now);
    }

    /// The server stopped (`held`) or resumed reading the connection. While
    /// held the timer is stopped; on resuming it restarts as if a packet
    /// had arrived, so whatever the client sent meanwhile (a PINGREQ) is
    /// read before the connection can expire, and a client that did fail
    /// is still closed one and a half keep alives later.
    pub(super) fn handle_held(&mut self, held: bool, now: Instant) {
        self.last_received = (!held).then_some(now);
    }

    /// When the connection is to be closed if nothing arrives before.
    pub(super) fn deadline(&self) -> Option<Instant> {
        self.last_received?.checked_add(self.timeout()?)
    }

    /// Whether the deadline has passed at `now`.
    pub(super) fn is_expired(&self, now: Instant) -> bool {
        self.deadline().is_some_and(|deadline| now >= deadline)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_connection_does_not_expire_and_restarts_when_released() {
        let start = Instant::now();
        let mut timer = KeepAlive::new(2, start);
        assert_eq!(timer.deadline(), Some(start + Duration::from_secs(3)));
        let held_at = start + Duration::from_secs(1);
        timer.handle_held(true, held_at);
        assert_eq!(timer.deadline(), None);
        assert!(!timer.is_expired(start + Duration::from_secs(60)));
        let released_at = start + Duration::from_secs(60);
        timer.handle_held(false, released_at);
        assert_eq!(timer.deadline(), Some(released_at + Duration::from_secs(3)));
        assert!(timer.is_expired(released_at + Duration::from_secs(3)));
    }

    #[test]
    fn a_disabled_keep_alive_stays_disabled_through_backpressure() {
        let now = Instant::now();
        let mut timer = KeepAlive::new(0, now);
        timer.handle_held(true, now);
        timer.handle_held(false, now);
        assert_eq!(timer.deadline(), None);
    }
}
