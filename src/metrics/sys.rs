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
//! messages, these topics' own included; `bytes/received` and `bytes/sent`
//! the bytes of MQTT packets read from and written to clients;
//! `messages/inflight` the QoS 1/2 messages sent and not yet acknowledged;
//! `store/messages/count` the messages held for clients (queued, online or
//! offline, and in flight: one per client) plus the retained ones, and
//! `store/messages/bytes` their topic and payload bytes (in flight ones
//! left out). Every figure is at most one shard tick (250 ms) old.
//!
//! The load averages are Mosquitto's: per-minute rates smoothed with an
//! exponential moving average over 1, 5 and 15 minutes.

use super::Snapshot;
use std::time::Instant;

/// The averaging windows of the load topics, with their topic suffixes.
const LOAD_WINDOWS: [(&str, f64); 3] = [("1min", 60.0), ("5min", 300.0), ("15min", 900.0)];

/// The totals that have load averages, in the order of their topic names.
const LOADS: [&str; 4] =
    ["load/messages/received", "load/messages/sent", "load/bytes/received", "load/bytes/sent"];

/// The totals the load averages are computed from, as of one update.
#[derive(Clone, Copy, Debug)]
struct Totals {
    at: Instant,
    /// In the order of [`LOADS`].
    counts: [u64; 4],
}

/// What the `$SYS` tree remembers between two publications: when the
/// broker started, and the load averages.
#[derive(Debug)]
pub struct SysTree {
    started: Instant,
    /// The totals of the previous update; `None` before the first.
    last: Option<Totals>,
    /// Per minute, per total of [`LOADS`] and window of [`LOAD_WINDOWS`].
    loads: [[f64; 3]; 4],
}

impl SysTree {
    /// The tree of a broker started at `started`.
    pub fn new(started: Instant) -> Self {
        Self { started, last: None, loads: [[0.0; 3]; 4] }
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
        let received = sum(|s| s.counters.shard.messages_received.iter().sum());
        let sent = sum(|s| {
            s.counters.session.publishes_sent.iter().sum::<u64>()
                + s.counters.session.publishes_resent
        });
        let bytes_received = sum(|s| s.counters.net.bytes_received);
        let bytes_sent = sum(|s| s.counters.net.bytes_sent);
        let counts = [received, sent, bytes_received, bytes_sent];
        if let Some(last) = self.last {
            let elapsed = now.saturating_duration_since(last.at).as_secs_f64();
            if elapsed > 0.0 {
                for ((load, count), last) in self.loads.iter_mut().zip(counts).zip(last.counts) {
                    let per_minute = count.saturating_sub(last) as f64 * 60.0 / elapsed;
                    for (average, (_, window)) in load.iter_mut().zip(LOAD_WINDOWS) {
                        let keep = (-elapsed / window).exp();
                        *average = keep * *average + (1.0 - keep) * per_minute;
                    }
                }
            }
        }
        self.last = Some(Totals { at: now, counts });
        let uptime = now.saturating_duration_since(self.started);
        let totals = [
            ("version", format!("ringmq version {}", env!("CARGO_PKG_VERSION"))),
            ("uptime", format!("{} seconds", uptime.as_secs())),
            ("clients/connected", connections.to_string()),
            ("clients/total", sum(|s| s.sessions as u64).to_string()),
            ("messages/received", received.to_string()),
            ("messages/sent", sent.to_string()),
            ("bytes/received", bytes_received.to_string()),
            ("bytes/sent", bytes_sent.to_string()),
            ("subscriptions/count", sum(|s| s.subscriptions as u64).to_string()),
            ("retained messages/count", sum(|s| s.retained as u64).to_string()),
            // Mosquitto 1.x's name: QoS 1/2 messages awaiting their
            // acknowledgement.
            ("messages/inflight", sum(|s| s.inflight_messages as u64).to_string()),
            // Mosquitto 2's store: the messages held for clients (queued
            // for them, online or not, and in flight) and the retained
            // ones. ringmq counts a message queued for two clients twice.
            (
                "store/messages/count",
                sum(|s| (s.queued_messages + s.inflight_messages + s.retained) as u64).to_string(),
            ),
            (
                "store/messages/bytes",
                sum(|s| (s.queued_bytes + s.retained_bytes) as u64).to_string(),
            ),
        ];
        let loads = LOADS.into_iter().zip(self.loads).flat_map(|(name, averages)| {
            LOAD_WINDOWS.into_iter().zip(averages).map(move |((window, _), average)| {
                (format!("{name}/{window}"), format!("{average:.2}"))
            })
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
        snapshot.counters.shard.messages_received = [received, 0, 0];
        snapshot.counters.session.publishes_sent = [0, sent, 0];
        snapshot.counters.net.bytes_received = 20 * received;
        snapshot.queued_messages = 5;
        snapshot.queued_bytes = 100;
        snapshot.inflight_messages = 2;
        snapshot.retained_bytes = 7;
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
        assert_eq!(payload(&topics, "bytes/received"), "300");
        assert_eq!(payload(&topics, "bytes/sent"), "0");
        assert_eq!(payload(&topics, "messages/inflight"), "4");
        assert_eq!(payload(&topics, "store/messages/count"), "16");
        assert_eq!(payload(&topics, "store/messages/bytes"), "214");
        assert_eq!(topics.len(), 13 + 12);
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
        assert_eq!(payload(&topics, "load/bytes/received/1min"), expect(60.0, 12_000.0));
        // Quiet afterwards: the averages decay.
        let topics = tree.update(&[snapshot(0, 600, 60)], 0, t0 + Duration::from_secs(120));
        let decayed = 600.0 * (1.0 - (-1.0f64).exp()) * (-1.0f64).exp();
        assert_eq!(payload(&topics, "load/messages/received/1min"), format!("{decayed:.2}"));
    }
}
