//! `ringmq-bench merge A.json B.json ...`: one report out of the JSON
//! reports of several ringmq-bench processes that ran the same scenario at
//! the same time (the load generators of a test rig, each with its own
//! clients and topics).
//!
//! Counts and rates are summed, latency histograms are merged from the
//! encoded histograms the reports carry (`hdr`), so that the merged
//! percentiles are those of every sample, not averages of percentiles. The
//! timeline is merged second by second (seconds since each process started
//! publishing). A merged run passes only if every run passed.

use crate::report::{distribution, merge_counts, round3, Connections, Messages, QosCounts, Report};
use crate::stats::{Percentiles, Second};
use anyhow::{bail, Context as _};
use std::path::PathBuf;

/// Reads and merges the reports.
pub fn merge_files(files: &[PathBuf]) -> anyhow::Result<Report> {
    let mut reports = Vec::with_capacity(files.len());
    for path in files {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let report: Report = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a ringmq-bench JSON report", path.display()))?;
        reports.push((path.display().to_string(), report));
    }
    merge(reports)
}

/// Merges `(name, report)` pairs; the names prefix the violations.
pub fn merge(reports: Vec<(String, Report)>) -> anyhow::Result<Report> {
    let Some((first_name, first)) = reports.first() else { bail!("nothing to merge") };
    for (name, r) in &reports[1..] {
        let (a, b) = (&first.messages, &r.messages);
        if (&r.scenario, &r.mqtt_version, b.qos, b.payload)
            != (&first.scenario, &first.mqtt_version, a.qos, a.payload)
        {
            bail!(
                "{name} ran {} (MQTT {}, QoS {}, {} B) but {first_name} ran {} (MQTT {}, QoS {}, \
                 {} B): only runs of the same scenario merge",
                r.scenario,
                r.mqtt_version,
                b.qos,
                b.payload,
                first.scenario,
                first.mqtt_version,
                a.qos,
                a.payload
            );
        }
    }
    let all = || reports.iter().map(|(_, r)| r);
    let percentiles = |pick: &dyn Fn(&Report) -> &Percentiles| -> anyhow::Result<Percentiles> {
        let mut merged = crate::stats::latency_histogram();
        for (name, r) in &reports {
            let h = pick(r).histogram().map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
            merged.add(&h).map_err(|e| anyhow::anyhow!("{name}: {e:?}"))?;
        }
        Ok(Percentiles::of(&merged))
    };

    let mut targets: Vec<String> = all().flat_map(|r| r.targets.iter().cloned()).collect();
    targets.sort();
    targets.dedup();
    let sum = |f: &dyn Fn(&Report) -> u64| all().map(f).sum::<u64>();
    let sum_f = |f: &dyn Fn(&Report) -> f64| round3(all().map(f).sum::<f64>());

    let mut failures = Default::default();
    let mut errors = Default::default();
    let mut refused = Default::default();
    for r in all() {
        merge_counts(&mut failures, &r.connections.failures);
        merge_counts(&mut errors, &r.connections.errors);
        merge_counts(&mut refused, &r.messages.refused);
    }
    let connections = Connections {
        clients: all().map(|r| r.connections.clients).sum(),
        connected: sum(&|r| r.connections.connected),
        failures,
        errors,
        rate_per_s: sum_f(&|r| r.connections.rate_per_s),
        latency_us: percentiles(&|r| &r.connections.latency_us)?,
        reconnect_latency_us: percentiles(&|r| &r.connections.reconnect_latency_us)?,
    };

    let by_qos = (0..3u8)
        .map(|q| {
            let pick = |r| qos_counts(r, q);
            QosCounts {
                qos: q,
                received: all().filter_map(pick).map(|c| c.received).sum(),
                duplicates: all().filter_map(pick).map(|c| c.duplicates).sum(),
                out_of_order: all().filter_map(pick).map(|c| c.out_of_order).sum(),
            }
        })
        .collect();
    let latency = percentiles(&|r| &r.messages.latency_us)?;
    let messages = Messages {
        publishers: all().map(|r| r.messages.publishers).sum(),
        subscribers: all().map(|r| r.messages.subscribers).sum(),
        qos: first.messages.qos,
        payload: first.messages.payload,
        sent: sum(&|r| r.messages.sent),
        acked: sum(&|r| r.messages.acked),
        refused,
        expected: all().map(|r| r.messages.expected).sum(),
        received: sum(&|r| r.messages.received),
        lost: sum(&|r| r.messages.lost),
        duplicates: sum(&|r| r.messages.duplicates),
        out_of_order: sum(&|r| r.messages.out_of_order),
        foreign: sum(&|r| r.messages.foreign),
        by_qos,
        sent_per_s: sum_f(&|r| r.messages.sent_per_s),
        received_per_s: sum_f(&|r| r.messages.received_per_s),
        latency_us: latency.clone(),
    };

    let seconds = all().map(|r| r.timeline.len()).max().unwrap_or(0);
    let mut timeline = Vec::with_capacity(seconds);
    for i in 0..seconds {
        let at = |r: &Report| r.timeline.get(i).cloned();
        let mut merged = crate::stats::latency_histogram();
        for (name, r) in &reports {
            if let Some(s) = at(r) {
                let h = s.latency_us.histogram().map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
                merged.add(&h).map_err(|e| anyhow::anyhow!("{name}: {e:?}"))?;
            }
        }
        timeline.push(Second {
            second: i as u64,
            sent: all().filter_map(at).map(|s| s.sent).sum(),
            received: all().filter_map(at).map(|s| s.received).sum(),
            lost: all().filter_map(at).map(|s| s.lost).sum(),
            latency_us: Percentiles::of(&merged),
        });
    }

    let violations: Vec<String> = reports
        .iter()
        .flat_map(|(name, r)| r.violations.iter().map(move |v| format!("{name}: {v}")))
        .collect();
    Ok(Report {
        scenario: first.scenario.clone(),
        broker: first.broker.clone(),
        targets,
        mqtt_version: first.mqtt_version.clone(),
        cores: all().map(|r| r.cores).sum(),
        elapsed_s: all().map(|r| r.elapsed_s).fold(0.0, f64::max),
        connections,
        messages,
        timeline,
        passed: all().all(|r| r.passed),
        violations,
        search: None,
        distribution: distribution(&latency.histogram().map_err(anyhow::Error::msg)?),
    })
}

fn qos_counts(report: &Report, qos: u8) -> Option<&QosCounts> {
    report.messages.by_qos.iter().find(|c| c.qos == qos)
}
