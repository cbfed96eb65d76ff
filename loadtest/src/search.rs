//! `--find-max-rate`: the highest total publishing rate a broker sustains,
//! found with a ladder of doubling rates and then a bisection between the
//! last sustained rate and the first that was not.

use crate::report::Report;

/// How close the bisection gets: it stops when the first unsustained rate
/// is within this factor of the last sustained one.
const PRECISION: f64 = 1.05;
/// Share of the asked rate a sustained run must publish.
const KEPT_UP: f64 = 0.95;

/// The highest rate from `start` up to `limit` for which `sustained`
/// answers true, to within [`PRECISION`]; `None` when `start` is not
/// sustained. `sustained` is asked about increasing rates on the ladder,
/// then about rates between the highest sustained and the lowest
/// unsustained one.
pub fn find_max(
    start: f64,
    limit: f64,
    mut sustained: impl FnMut(f64) -> anyhow::Result<bool>,
) -> anyhow::Result<Option<f64>> {
    let mut rate = start.min(limit);
    let mut best = None;
    let mut failed = None;
    while failed.is_none() {
        if sustained(rate)? {
            best = Some(rate);
            if rate >= limit {
                break;
            }
            rate = (rate * 2.0).min(limit);
        } else {
            failed = Some(rate);
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

/// Whether a run at total `rate` was sustained: it passed, published at
/// least [`KEPT_UP`] of the rate and kept its p99 latency within
/// `max_p99_us`.
pub fn sustained(report: &Report, rate: f64, max_p99_us: u64) -> bool {
    let m = &report.messages;
    report.passed && m.sent_per_s >= KEPT_UP * rate && m.latency_us.p99 <= max_p99_us
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ladder_then_bisection() {
        let mut asked = Vec::new();
        let found = find_max(1000.0, 1e9, |rate| {
            asked.push(rate);
            Ok(rate <= 3000.0)
        })
        .unwrap();
        assert_eq!(found, Some(3000.0));
        assert_eq!(asked, [1000.0, 2000.0, 4000.0, 3000.0, 3500.0, 3250.0, 3125.0]);
    }

    #[test]
    fn limit_and_nothing_sustained() {
        assert_eq!(find_max(1000.0, 3000.0, |_| Ok(true)).unwrap(), Some(3000.0));
        assert_eq!(find_max(1000.0, 1e9, |_| Ok(false)).unwrap(), None);
        assert!(find_max(1000.0, 1e9, |_| anyhow::bail!("broker gone")).is_err());
    }
}
