//! Telling systemd (or any service manager speaking the `sd_notify`
//! protocol) how the broker is doing, from the main thread while the shards
//! serve: `READY=1` once every shard accepts connections, `STATUS=` with the
//! connection count, `WATCHDOG=1` while every shard's tick keeps running
//! (only when the unit sets `WatchdogSec=`), and `STOPPING=1` at the first
//! stop signal. Without `NOTIFY_SOCKET` in the environment all of it does
//! nothing.

use crate::net::admin::Health;
use sd_notify::NotifyState;
use std::time::{Duration, Instant};

/// How often `STATUS=` is refreshed.
const STATUS_INTERVAL: Duration = Duration::from_secs(5);

/// The main thread's side: call [`Notifier::poll`] every 100 ms or so.
#[derive(Debug)]
pub(super) struct Notifier {
    ready_sent: bool,
    last_status: Option<Instant>,
    /// Half the watchdog interval, when the unit has one.
    watchdog_every: Option<Duration>,
    last_watchdog: Instant,
    /// Each shard's tick count at the last watchdog ping.
    ticks_at_watchdog: Vec<u64>,
}

impl Notifier {
    pub(super) fn new(shards: usize) -> Self {
        Self {
            ready_sent: false,
            last_status: None,
            watchdog_every: sd_notify::watchdog_enabled().map(|interval| interval / 2),
            last_watchdog: Instant::now(),
            ticks_at_watchdog: vec![0; shards],
        }
    }

    /// Sends what is due: `READY=1` once every shard serves, the status,
    /// and a watchdog ping when every shard ticked since the last one (a
    /// stuck shard stops the pings, and systemd restarts the broker).
    pub(super) fn poll(&mut self, health: &Health, connections: usize) {
        let now = Instant::now();
        if health.is_ready() && !self.ready_sent {
            self.ready_sent = true;
            send(&[NotifyState::Ready]);
        }
        if self.ready_sent && self.last_status.is_none_or(|at| now >= at + STATUS_INTERVAL) {
            self.last_status = Some(now);
            send(&[NotifyState::Status(&format!("{connections} connections"))]);
        }
        if let Some(every) = self.watchdog_every {
            let ticks = health.last_tick_marks();
            let all_ticked =
                ticks.iter().zip(&self.ticks_at_watchdog).all(|(now, then)| now > then);
            if now >= self.last_watchdog + every && all_ticked {
                self.last_watchdog = now;
                self.ticks_at_watchdog = ticks;
                send(&[NotifyState::Watchdog]);
            }
        }
    }
}

/// The broker stops: sent from the signal thread at the first signal.
pub(super) fn stopping() {
    send(&[NotifyState::Stopping]);
}

fn send(states: &[NotifyState<'_>]) {
    if let Err(error) = sd_notify::notify(states) {
        tracing::warn!(%error, "cannot notify the service manager");
    }
}
