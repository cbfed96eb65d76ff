//! The results of a run: merged over executors, checked against what the
//! QoS allows, and written as a table, JSON and CSV.

use crate::plan::{Expect, Plan};
use crate::stats::{latency_histogram, Percentiles, RunResult, Second};
use crate::tracker::add_at;
use hdrhistogram::Histogram;
use ringmq::protocol::QoS;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::Path;

/// Connection results.
#[derive(Debug, Serialize, Deserialize)]
pub struct Connections {
    /// Clients in the plan.
    pub clients: usize,
    /// CONNACKs received (reconnections included).
    pub connected: u64,
    /// Clients that never became ready, by reason.
    pub failures: BTreeMap<String, u64>,
    /// Connections lost after they were ready, by reason.
    pub errors: BTreeMap<String, u64>,
    /// Connections per second while opening them.
    pub rate_per_s: f64,
    /// TCP connect to CONNACK of the first connections.
    pub latency_us: Percentiles,
    /// TCP connect to CONNACK of reconnections (`storm`).
    pub reconnect_latency_us: Percentiles,
}

/// Counts of one QoS.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct QosCounts {
    /// The QoS.
    pub qos: u8,
    /// Messages received at it.
    pub received: u64,
    /// Extra copies.
    pub duplicates: u64,
    /// Arrivals after a higher sequence number.
    pub out_of_order: u64,
}

/// Message results.
#[derive(Debug, Serialize, Deserialize)]
pub struct Messages {
    /// Publishers.
    pub publishers: usize,
    /// Subscribers.
    pub subscribers: usize,
    /// QoS of publishes and subscriptions.
    pub qos: u8,
    /// Payload bytes.
    pub payload: usize,
    /// Messages published.
    pub sent: u64,
    /// QoS 1/2 publishes acknowledged.
    pub acked: u64,
    /// Publishes refused by the broker (5.0 reason codes).
    pub refused: BTreeMap<String, u64>,
    /// Deliveries the subscribers should have had; `null` for `sub`, which
    /// cannot know.
    pub expected: Option<u64>,
    /// Messages received (copies included).
    pub received: u64,
    /// Expected deliveries that never arrived (for `sub`: sequence gaps).
    pub lost: u64,
    /// Extra copies received.
    pub duplicates: u64,
    /// Arrivals after a higher sequence number.
    pub out_of_order: u64,
    /// Messages without a benchmark header.
    pub foreign: u64,
    /// Per received QoS.
    pub by_qos: Vec<QosCounts>,
    /// Publishing rate.
    pub sent_per_s: f64,
    /// Receiving rate.
    pub received_per_s: f64,
    /// End-to-end latency from the intended send time.
    pub latency_us: Percentiles,
}

/// The whole report.
#[derive(Debug, Serialize, Deserialize)]
pub struct Report {
    /// Subcommand.
    pub scenario: String,
    /// The broker's name (`--broker-name`), if given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broker: Option<String>,
    /// Broker addresses.
    pub targets: Vec<String>,
    /// MQTT version.
    pub mqtt_version: String,
    /// Executors.
    pub cores: usize,
    /// Seconds of publishing (or holding).
    pub elapsed_s: f64,
    /// Connections.
    pub connections: Connections,
    /// Messages.
    pub messages: Messages,
    /// Per second.
    pub timeline: Vec<Second>,
    /// Whether the run met what its QoS promises.
    pub passed: bool,
    /// Why not.
    pub violations: Vec<String>,
    /// `--find-max-rate`: every run of the search.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub search: Option<crate::search::Summary>,
    /// Latency distribution for plotting: (percentile, microseconds).
    #[serde(skip)]
    pub distribution: Vec<(f64, u64)>,
}

impl Report {
    /// Merges the executors' results and checks them.
    pub fn new(plan: &Plan, run: &RunResult) -> Self {
        let mut latency = latency_histogram();
        let mut connect = latency_histogram();
        let mut reconnect = latency_histogram();
        let mut failures = BTreeMap::new();
        let mut errors = BTreeMap::new();
        let mut refused = BTreeMap::new();
        let mut sent_by = HashMap::new();
        let (mut connected, mut sent, mut acked, mut foreign) = (0, 0, 0, 0);
        let mut by_qos: Vec<QosCounts> =
            (0..3).map(|q| QosCounts { qos: q, ..QosCounts::default() }).collect();
        let mut span: Option<(std::time::Instant, std::time::Instant)> = None;
        for exec in &run.executors {
            latency.add(&exec.latency).expect("same bounds");
            connect.add(&exec.connect).expect("same bounds");
            reconnect.add(&exec.reconnect).expect("same bounds");
            merge_counts(&mut failures, &exec.connect_failures);
            merge_counts(&mut errors, &exec.errors);
            merge_counts(&mut refused, &exec.refused);
            connected += exec.connected;
            sent += exec.sent;
            acked += exec.acked;
            foreign += exec.foreign;
            for (q, counts) in by_qos.iter_mut().enumerate() {
                counts.received += exec.received[q];
                counts.duplicates += exec.duplicates[q];
                counts.out_of_order += exec.out_of_order[q];
            }
            sent_by.extend(exec.sent_by_publisher.iter().map(|(k, v)| (*k, v.clone())));
            if let Some((first, last)) = exec.publish_span {
                let s = span.get_or_insert((first, last));
                *s = (s.0.min(first), s.1.max(last));
            }
        }
        let received: u64 = by_qos.iter().map(|q| q.received).sum();
        let duplicates: u64 = by_qos.iter().map(|q| q.duplicates).sum();
        let out_of_order: u64 = by_qos.iter().map(|q| q.out_of_order).sum();
        let (expected, lost_by_second) = loss(run, &sent_by);
        let lost: u64 = lost_by_second.iter().sum();
        let elapsed_s = run.elapsed.as_secs_f64().max(1e-9);
        let publish_s = span.map_or(elapsed_s, |(a, b)| (b - a).as_secs_f64().max(1e-3));
        let qos = plan.qos as u8;

        let mut violations = Vec::new();
        let subscribers = plan.subscribers();
        if lost > 0 {
            match plan.qos {
                QoS::AtMostOnce => {
                    let base = expected.unwrap_or(received + lost).max(1);
                    let pct = lost as f64 * 100.0 / base as f64;
                    if pct > plan.output.max_loss {
                        violations.push(format!(
                            "QoS 0: {lost} messages lost ({pct:.3}%), more than --max-loss {}%",
                            plan.output.max_loss
                        ));
                    }
                }
                _ => violations.push(format!("QoS {qos}: {lost} messages lost")),
            }
        }
        if plan.qos == QoS::ExactlyOnce && by_qos[2].duplicates > 0 {
            violations.push(format!("QoS 2: {} duplicates", by_qos[2].duplicates));
        }
        if !failures.is_empty() {
            let total: u64 = failures.values().sum();
            violations.push(format!("{total} clients never became ready"));
        }
        if !errors.is_empty() {
            let total: u64 = errors.values().sum();
            violations.push(format!("{total} connections lost during the run"));
        }
        let unconfirmed = if plan.qos == QoS::AtMostOnce { 0 } else { sent - acked };
        if unconfirmed > 0 {
            violations.push(format!("QoS {qos}: {unconfirmed} publishes not acknowledged"));
        }

        let mut timeline = run.timeline.clone();
        for (second, &n) in lost_by_second.iter().enumerate() {
            match timeline.get_mut(second) {
                Some(s) => s.lost = n,
                None => timeline.push(Second {
                    second: second as u64,
                    sent: 0,
                    received: 0,
                    lost: n,
                    latency_us: Percentiles::default(),
                }),
            }
        }
        let distribution = distribution(&latency);
        let clients = plan.clients.len();
        Report {
            scenario: plan.scenario.into(),
            broker: plan.output.broker_name.clone(),
            targets: {
                let mut t: Vec<String> =
                    plan.clients.iter().map(|c| c.target.to_string()).collect();
                t.sort();
                t.dedup();
                t
            },
            mqtt_version: if plan.version.is_v5() { "5".into() } else { "3.1.1".into() },
            cores: plan.cores,
            elapsed_s: round3(elapsed_s),
            connections: Connections {
                clients,
                connected,
                failures,
                errors,
                rate_per_s: round3(
                    connect.len() as f64 / run.connect_elapsed.as_secs_f64().max(1e-3),
                ),
                latency_us: Percentiles::of(&connect),
                reconnect_latency_us: Percentiles::of(&reconnect),
            },
            messages: Messages {
                publishers: plan.publishers(),
                subscribers,
                qos,
                payload: plan.payload,
                sent,
                acked,
                refused,
                expected,
                received,
                lost,
                duplicates,
                out_of_order,
                foreign,
                by_qos,
                sent_per_s: round3(sent as f64 / publish_s),
                received_per_s: round3(received as f64 / publish_s),
                latency_us: Percentiles::of(&latency),
            },
            timeline,
            passed: violations.is_empty(),
            violations,
            search: None,
            distribution,
        }
    }

    /// The summary table.
    pub fn table(&self) -> String {
        let c = &self.connections;
        let m = &self.messages;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "ringmq-bench {} | MQTT {} | {} core(s) | {:.2}s | {}targets {}",
            self.scenario,
            self.mqtt_version,
            self.cores,
            self.elapsed_s,
            self.broker.as_ref().map_or(String::new(), |name| format!("{name} | ")),
            self.targets.join(",")
        );
        let _ = writeln!(
            out,
            "connections  {} clients, {} connected, {:.0}/s",
            c.clients, c.connected, c.rate_per_s
        );
        let row = |out: &mut String, name: &str, p: &Percentiles| {
            let _ = writeln!(
                out,
                "  {name:<18} n={:<9} p50={:<8} p90={:<8} p99={:<8} p99.9={:<8} max={} (us)",
                p.count, p.p50, p.p90, p.p99, p.p999, p.max
            );
        };
        row(&mut out, "connect latency", &c.latency_us);
        if c.reconnect_latency_us.count > 0 {
            row(&mut out, "reconnect latency", &c.reconnect_latency_us);
        }
        for (reason, n) in &c.failures {
            let _ = writeln!(out, "  failed: {reason}: {n}");
        }
        for (reason, n) in &c.errors {
            let _ = writeln!(out, "  lost: {reason}: {n}");
        }
        if m.publishers + m.subscribers > 0 {
            let _ = writeln!(
                out,
                "messages     QoS {} | {} B | {} pub -> {} sub",
                m.qos, m.payload, m.publishers, m.subscribers
            );
            let _ = writeln!(
                out,
                "  sent {} ({:.0}/s), acked {}, received {} ({:.0}/s), expected {}",
                m.sent,
                m.sent_per_s,
                m.acked,
                m.received,
                m.received_per_s,
                m.expected.map_or("?".into(), |e| e.to_string())
            );
            let _ = writeln!(
                out,
                "  lost {}, duplicates {}, out of order {}, foreign {}",
                m.lost, m.duplicates, m.out_of_order, m.foreign
            );
            row(&mut out, "e2e latency", &m.latency_us);
        }
        if self.passed {
            let _ = writeln!(out, "result       OK");
        } else {
            for v in &self.violations {
                let _ = writeln!(out, "result       FAILED: {v}");
            }
        }
        out
    }

    /// Writes the report as JSON.
    pub fn write_json(&self, path: &Path) -> anyhow::Result<()> {
        let text = serde_json::to_string_pretty(self)?;
        std::fs::write(path, text + "\n")?;
        Ok(())
    }

    /// Writes one row per second and a `total` row.
    pub fn write_csv(&self, path: &Path) -> anyhow::Result<()> {
        let mut out = String::from(
            "second,sent,received,latency_count,latency_p50_us,latency_p90_us,latency_p99_us,\
             latency_p999_us,latency_max_us,lost,duplicates,out_of_order\n",
        );
        let line = |out: &mut String,
                    label: &str,
                    sent: u64,
                    recv: u64,
                    p: &Percentiles,
                    loss: (u64, u64, u64)| {
            let _ = writeln!(
                out,
                "{label},{sent},{recv},{},{},{},{},{},{},{},{},{}",
                p.count, p.p50, p.p90, p.p99, p.p999, p.max, loss.0, loss.1, loss.2
            );
        };
        for s in &self.timeline {
            line(
                &mut out,
                &s.second.to_string(),
                s.sent,
                s.received,
                &s.latency_us,
                (s.lost, 0, 0),
            );
        }
        let m = &self.messages;
        line(
            &mut out,
            "total",
            m.sent,
            m.received,
            &m.latency_us,
            (m.lost, m.duplicates, m.out_of_order),
        );
        std::fs::write(path, out)?;
        Ok(())
    }
}

/// (percentile, microseconds) of `latency`, for the plot.
pub fn distribution(latency: &Histogram<u64>) -> Vec<(f64, u64)> {
    if latency.is_empty() {
        return Vec::new();
    }
    latency
        .iter_quantiles(1)
        .map(|v| (v.quantile_iterated_to() * 100.0, v.value_iterated_to()))
        .collect()
}

pub(crate) fn round3(value: f64) -> f64 {
    (value * 1000.0).round() / 1000.0
}

pub(crate) fn merge_counts(into: &mut BTreeMap<String, u64>, from: &BTreeMap<String, u64>) {
    for (k, v) in from {
        *into.entry(k.clone()).or_default() += v;
    }
}

/// Expected deliveries, and loss by the second the lost messages were
/// sent in, over every subscriber. `sent_by` is each publisher's count by
/// second. A subscriber that expects a publisher's messages loses, in each
/// second, those sent then that it did not receive; `sub` (which cannot know
/// what was sent) loses its sequence gaps, by
/// [`StreamTracker::gaps_by_second`](crate::tracker::StreamTracker::gaps_by_second).
/// The total loss is the sum of the seconds.
fn loss(run: &RunResult, sent_by: &HashMap<u32, Vec<u64>>) -> (Option<u64>, Vec<u64>) {
    let mut total_sent_by_second = Vec::new();
    for counts in sent_by.values() {
        for (second, &n) in counts.iter().enumerate() {
            add_at(&mut total_sent_by_second, second, n);
        }
    }
    let total_sent: u64 = total_sent_by_second.iter().sum();
    let (mut expected, mut lost, mut known) = (0u64, Vec::new(), true);
    let mut shared_received = Vec::new();
    let mut shared_groups = false;
    let none: &[u64] = &[];
    for sub in run.executors.iter().flat_map(|e| &e.subscribers) {
        let received =
            |publisher: &u32| sub.streams.get(publisher).map_or(none, |s| s.received_by_second());
        match sub.expect {
            Expect::All => {
                expected += total_sent;
                for (publisher, sent) in sent_by {
                    add_shortfall(&mut lost, sent, received(publisher));
                }
            }
            Expect::One(publisher) => {
                let sent = sent_by.get(&publisher).map_or(none, Vec::as_slice);
                expected += sent.iter().sum::<u64>();
                add_shortfall(&mut lost, sent, received(&publisher));
            }
            Expect::Shared => {
                shared_groups = true;
                for stream in sub.streams.values() {
                    for (second, &n) in stream.received_by_second().iter().enumerate() {
                        add_at(&mut shared_received, second, n);
                    }
                }
            }
            Expect::Gaps => {
                known = false;
                for stream in sub.streams.values() {
                    for (second, n) in stream.gaps_by_second().into_iter().enumerate() {
                        add_at(&mut lost, second, n);
                    }
                }
            }
        }
    }
    if shared_groups {
        // One group: every message reaches exactly one of its members.
        expected += total_sent;
        add_shortfall(&mut lost, &total_sent_by_second, &shared_received);
    }
    (known.then_some(expected), lost)
}

/// Adds to `lost`, second by second, what `received` falls short of `sent`.
fn add_shortfall(lost: &mut Vec<u64>, sent: &[u64], received: &[u64]) {
    for (second, &n) in sent.iter().enumerate() {
        let got = received.get(second).copied().unwrap_or(0);
        add_at(lost, second, n.saturating_sub(got));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::{ExecResult, SubscriberResult};
    use crate::tracker::StreamTracker;
    use std::time::Duration;

    fn tracker(seqs: impl IntoIterator<Item = u64>) -> StreamTracker {
        let mut t = StreamTracker::default();
        for s in seqs {
            t.handle_arrival(s, s / 5);
        }
        t
    }

    fn run_with(subscribers: Vec<SubscriberResult>) -> RunResult {
        let mut exec = ExecResult::new();
        exec.subscribers = subscribers;
        RunResult {
            executors: vec![exec],
            timeline: Vec::new(),
            elapsed: Duration::from_secs(1),
            connect_elapsed: Duration::from_secs(1),
        }
    }

    #[test]
    fn loss_per_expectation() {
        // Five messages a second for two seconds.
        let sent: HashMap<u32, Vec<u64>> = [(0, vec![5, 5]), (1, vec![5, 5])].into_iter().collect();
        let all = SubscriberResult {
            expect: Expect::All,
            streams: [(0, tracker(0..10)), (1, tracker(0..7))].into_iter().collect(),
        };
        let one = SubscriberResult { expect: Expect::One(1), streams: Default::default() };
        assert_eq!(loss(&run_with(vec![all, one]), &sent), (Some(30), vec![5, 3 + 5]));
        let shared = |seqs: Vec<u64>| SubscriberResult {
            expect: Expect::Shared,
            streams: [(0, tracker(seqs))].into_iter().collect(),
        };
        let run = run_with(vec![shared((0..10).step_by(2).collect()), shared(vec![1, 3, 5])]);
        assert_eq!(loss(&run, &sent), (Some(20), vec![5, 7]));
        let gaps = SubscriberResult {
            expect: Expect::Gaps,
            streams: [(0, tracker([0, 5]))].into_iter().collect(),
        };
        assert_eq!(loss(&run_with(vec![gaps]), &sent), (None, vec![0, 4]));
    }
}
