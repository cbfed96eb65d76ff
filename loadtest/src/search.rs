//! `--find-max-rate`: the highest total publishing rate a broker sustains,
//! found in a closed loop, each run's result choosing the next run's rate:
//! a ladder of doubling rates (or of halving ones, when the first rate is
//! not sustained), then a bisection between the highest sustained rate and
//! the lowest that was not.

use crate::report::Report;
use serde::{Deserialize, Serialize};

/// How close the bisection gets: it stops when the lowest unsustained rate
/// is within this factor of the highest sustained one.
const PRECISION: f64 = 1.05;
/// Share of the asked rate a sustained run must publish.
const KEPT_UP: f64 = 0.95;

/// The highest rate from `floor` up to `limit` for which `sustained`
/// answers true, to within [`PRECISION`]; `None` when not even `floor` is.
/// `sustained` is asked about `start`, then about doubling rates while they
/// are sustained (up to `limit`) or halving ones while they are not (down
/// to `floor`), then about rates between the highest sustained and the
/// lowest unsustained one.
pub fn find_max(
    start: f64,
    limit: f64,
    floor: f64,
    mut sustained: impl FnMut(f64) -> anyhow::Result<bool>,
) -> anyhow::Result<Option<f64>> {
    let mut rate = start.min(limit);
    let (mut best, mut failed) = (None, None);
    // The ladder: until it has a sustained rate below an unsustained one,
    // or reaches `limit` or `floor`.
    loop {
        if sustained(rate)? {
            best = Some(rate);
            if failed.is_some() || rate >= limit {
                break;
            }
            rate = (rate * 2.0).min(limit);
        } else {
            failed = Some(rate);
            if best.is_some() || rate <= floor {
                break;
            }
            rate = (rate / 2.0).max(floor);
        }
    }
    let (Some(mut low), Some(mut high)) = (best, failed) else { return Ok(best) };
    while high / low > PRECISION {
        let middle = (low + high) / 2.0;
        if sustained(middle)? {
            low = middle;
        } else {
            high = middle;
        }
    }
    Ok(Some(low))
}

/// One run of the search, as the report's `search.steps` keep it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Step {
    /// Total rate asked for, messages per second.
    pub rate: f64,
    /// Whether it was sustained.
    pub sustained: bool,
    /// Why not (empty when it was).
    pub why: String,
    /// Messages published per second.
    pub sent_per_s: f64,
    /// Messages received per second.
    pub received_per_s: f64,
    /// Messages lost.
    pub lost: u64,
    /// p99 end-to-end latency, microseconds.
    pub p99_us: u64,
}

/// The search's result in the report.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// The highest sustained total rate (the report's run), if any.
    pub max_sustained_rate: Option<f64>,
    /// Every run, in the order they were made.
    pub steps: Vec<Step>,
}

/// The run at total `rate` as a search step: sustained when it passed,
/// published at least [`KEPT_UP`] of the rate and kept its p99 latency
/// within `max_p99_us`; otherwise `why` says which of these failed.
pub fn step(report: &Report, rate: f64, max_p99_us: u64) -> Step {
    let m = &report.messages;
    let mut why = Vec::new();
    if !report.passed {
        why.push(report.violations.join("; "));
    }
    if m.sent_per_s < KEPT_UP * rate {
        why.push(format!(
            "published {:.0}/s, less than {:.0}% of it",
            m.sent_per_s,
            KEPT_UP * 100.0
        ));
    }
    if m.latency_us.p99 > max_p99_us {
        why.push(format!("p99 {} us above --max-p99 {} us", m.latency_us.p99, max_p99_us));
    }
    Step {
        rate,
        sustained: why.is_empty(),
        why: why.join("; "),
        sent_per_s: m.sent_per_s,
        received_per_s: m.received_per_s,
        lost: m.lost,
        p99_us: m.latency_us.p99,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The rates asked about, and the result, against a broker that
    /// sustains up to `max`.
    fn search(start: f64, limit: f64, floor: f64, max: f64) -> (Vec<f64>, Option<f64>) {
        let mut asked = Vec::new();
        let found = find_max(start, limit, floor, |rate| {
            asked.push(rate);
            Ok(rate <= max)
        })
        .unwrap();
        (asked, found)
    }

    #[test]
    fn ladder_up_then_bisection() {
        let (asked, found) = search(1000.0, 1e9, 1.0, 3000.0);
        assert_eq!(found, Some(3000.0));
        assert_eq!(asked, [1000.0, 2000.0, 4000.0, 3000.0, 3500.0, 3250.0, 3125.0]);
    }

    #[test]
    fn ladder_down_then_bisection() {
        // The first rate is too high: halving until one is sustained, then
        // bisection between it and the lowest that was not.
        let (asked, found) = search(8000.0, 1e9, 125.0, 1500.0);
        assert_eq!(asked, [8000.0, 4000.0, 2000.0, 1000.0, 1500.0, 1750.0, 1625.0, 1562.5]);
        assert_eq!(found, Some(1500.0));
    }

    #[test]
    fn limit_floor_and_errors() {
        assert_eq!(
            search(1000.0, 3000.0, 1.0, f64::INFINITY),
            (vec![1000.0, 2000.0, 3000.0], Some(3000.0))
        );
        // Nothing sustained: halving down to the floor, then giving up.
        assert_eq!(search(1000.0, 1e9, 200.0, 0.0), (vec![1000.0, 500.0, 250.0, 200.0], None));
        assert!(find_max(1000.0, 1e9, 1.0, |_| anyhow::bail!("broker gone")).is_err());
    }
}
