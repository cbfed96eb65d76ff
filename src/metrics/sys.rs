//! The `$SYS/broker/...` topics, with Mosquitto's names, computed from the
//! shards' [`Snapshot`]s: what shard 0 publishes, retained, every
//! `sys_interval_s`.
//!
//! Pure: [`SysTree::update`] is given the snapshots, the open connections
//! and the time, and returns `(topic, payload)` pairs; the runtime turns
//! them into messages. A wildcard filter starting with `#` or `+` does not
//! match these topics [MQTT-4.7.2-1]: a client reads them by subscribing to
//! `$SYS/#`.
//!
//! What the figures count: `clients/connected` is the open client
//! connections (also those whose CONNECT is not read yet), `clients/total`
//! the sessions, connected or not (as Mosquitto's, persistent sessions of
//! absent clients included); `messages/received` the PUBLISH packets
//! accepted from clients, `messages/sent` the PUBLISH packets sent to them
//! (re-sent ones included); `subscriptions/count` the subscriptions (each
//! shared group member counts); `retained messages/count` the retained
//! messages, these topics' own included. Every figure is at most one shard
//! tick (250 ms) old.
//!
//! The load averages are Mosquitto's: per-minute rates smoothed with an
//! exponential moving average over 1, 5 and 15 minutes.

use super::Snapshot;
use std::time::Instant;

/// The averaging windows of the load topics, with their topic suffixes.
const LOAD_WINDOWS: [(&str, f64); 3] = [("1min", 60.0), ("5min", 300.0), ("15min", 900.0)];

/// The totals the load averages are computed from, as of one update.
#[derive(Clone, Copy, Debug)]
struct Totals {
    at: Instant,
    received: u64,
    sent: u64,
}

/// What the `$SYS` tree remembers between two publications: when the
/// broker started, and the load averages.
#[derive(Debug)]
pub struct SysTree {
    started: Instant,
    /// The totals of the previous update; `None` before the first.
    last: Option<Totals>,
    /// Messages received per minute, per window of [`LOAD_WINDOWS`].
    load_received: [f64; 3],
    /// Messages sent per minute, per window of [`LOAD_WINDOWS`].
    load_sent: [f64; 3],
}

impl SysTree {
    /// The tree of a broker started at `started`.
    pub fn new(started: Instant) -> Self {
        Self { started, last: None, load_received: [0.0; 3], load_sent: [0.0; 3] }
    }

    /// Every topic and its payload at `now`, from one snapshot per shard
    /// and the process's open client connections.
    pub fn update(
        &mut self,
        snapshots: &[Snapshot],
        connections: usize,
        now: Instant,
    ) -> Vec<(String, String)> {
        let sum = |field: fn(&Snapshot) -> u64| snapshots.iter().map(field).sum::<u64>();
        let received = sum(|s| s.counters.shard.messages_received);
        let sent = sum(|s| s.counters.session.publishes_sent + s.counters.session.publishes_resent);
        if let Some(last) = self.last {
            let elapsed = now.saturating_duration_since(last.at).as_secs_f64();
            if elapsed > 0.0 {
                let per_minute = |delta: u64| delta as f64 * 60.0 / elapsed;
                let new_received = per_minute(received.saturating_sub(last.received));
                let new_sent = per_minute(sent.saturating_sub(last.sent));
                for (i, (_, window)) in LOAD_WINDOWS.into_iter().enumerate() {
                    let keep = (-elapsed / window).exp();
                    self.load_received[i] =
                        keep * self.load_received[i] + (1.0 - keep) * new_received;
                    self.load_sent[i] = keep * self.load_sent[i] + (1.0 - keep) * new_sent;
                }
            }
        }
        self.last = Some(Totals { at: now, received, sent });
        let uptime = now.saturating_duration_since(self.started);
        let totals = [
            ("version", format!("ringmq version {}", env!("CARGO_PKG_VERSION"))),
            ("uptime", format!("{} seconds", uptime.as_secs())),
            ("clients/connected", connections.to_string()),
            ("clients/total", sum(|s| s.sessions as u64).to_string()),
            ("messages/received", received.to_string()),
            ("messages/sent", sent.to_string()),
            ("subscriptions/count", sum(|s| s.subscriptions as u64).to_string()),
            ("retained messages/count", sum(|s| s.retained as u64).to_string()),
        ];
        let loads = LOAD_WINDOWS.into_iter().enumerate().flat_map(|(i, (window, _))| {
            [
                (
                    format!("load/messages/received/{window}"),
                    format!("{:.2}", self.load_received[i]),
                ),
                (format!("load/messages/sent/{window}"), format!("{:.2}", self.load_sent[i])),
            ]
        });
        totals
            .into_iter()
            .map(|(name, payload)| (name.to_string(), payload))
            .chain(loads)
            .map(|(name, payload)| (format!("$SYS/broker/{name}"), payload))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn snapshot(shard: usize, received: u64, sent: u64) -> Snapshot {
        let mut snapshot =
            Snapshot { shard, sessions: 2, subscriptions: 3, retained: 1, ..Snapshot::default() };
        snapshot.counters.shard.messages_received = received;
        snapshot.counters.session.publishes_sent = sent;
        snapshot
    }

    fn payload<'a>(topics: &'a [(String, String)], name: &str) -> &'a str {
        let topic = format!("$SYS/broker/{name}");
        &topics.iter().find(|(t, _)| *t == topic).unwrap_or_else(|| panic!("no {topic}")).1
    }

    #[test]
    fn totals_are_summed_over_shards_with_mosquittos_names() {
        let t0 = Instant::now();
        let mut tree = SysTree::new(t0);
        let snapshots = [snapshot(0, 10, 4), snapshot(1, 5, 6)];
        let topics = tree.update(&snapshots, 3, t0 + Duration::from_secs(61));
        assert_eq!(
            payload(&topics, "version"),
            concat!("ringmq version ", env!("CARGO_PKG_VERSION"))
        );
        assert_eq!(payload(&topics, "uptime"), "61 seconds");
        assert_eq!(payload(&topics, "clients/connected"), "3");
        assert_eq!(payload(&topics, "clients/total"), "4");
        assert_eq!(payload(&topics, "messages/received"), "15");
        assert_eq!(payload(&topics, "messages/sent"), "10");
        assert_eq!(payload(&topics, "subscriptions/count"), "6");
        assert_eq!(payload(&topics, "retained messages/count"), "2");
        assert_eq!(payload(&topics, "load/messages/received/1min"), "0.00", "no rate yet");
        assert!(topics.iter().all(|(topic, _)| topic.starts_with("$SYS/broker/")));
        assert_eq!(topics.len(), 8 + 6);
    }

    #[test]
    fn load_is_an_exponential_average_of_the_rate_per_minute() {
        let t0 = Instant::now();
        let mut tree = SysTree::new(t0);
        tree.update(&[snapshot(0, 0, 0)], 0, t0);
        // 600 messages in 60 s: 600 per minute, of which the 1 minute
        // average takes 1 - e^-1 and the 15 minute one 1 - e^-(1/15).
        let topics = tree.update(&[snapshot(0, 600, 60)], 0, t0 + Duration::from_secs(60));
        let expect =
            |window: f64, rate: f64| format!("{:.2}", rate * (1.0 - (-60.0 / window).exp()));
        assert_eq!(payload(&topics, "load/messages/received/1min"), expect(60.0, 600.0));
        assert_eq!(payload(&topics, "load/messages/received/1min"), "379.27");
        assert_eq!(payload(&topics, "load/messages/received/15min"), expect(900.0, 600.0));
        assert_eq!(payload(&topics, "load/messages/sent/5min"), expect(300.0, 60.0));
        // Quiet afterwards: the averages decay.
        let topics = tree.update(&[snapshot(0, 600, 60)], 0, t0 + Duration::from_secs(120));
        let decayed = 600.0 * (1.0 - (-1.0f64).exp()) * (-1.0f64).exp();
        assert_eq!(payload(&topics, "load/messages/received/1min"), format!("{decayed:.2}"));
    }
}
