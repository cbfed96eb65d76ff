//! `--plot FILE.svg`: under a title naming the scenario, the broker
//! (`--broker-name`, else its address), the QoS and the payload, latency
//! per second (p50, p99, max) beside throughput and loss per second (sent
//! and received on the left axis, lost, by the second the lost messages
//! were sent in, on its own right axis), above the latency percentile
//! distribution. SVG only: text is written as SVG `<text>` and laid out
//! with plotters' built-in metrics, so no font or system library is needed.
//!
//! Each series stops at its last second with data (the seconds of the
//! drain have received messages but none sent) and the axis at the last
//! second any series has; seconds are labelled `Ns` and counts and
//! microseconds as integers (no `.0`).

use crate::report::Report;
use crate::stats::Second;
use plotters::prelude::*;
use std::path::Path;

/// Draws the report's charts into `path`.
pub fn draw(report: &Report, path: &Path) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, (1200, 800)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_error)?;
    let root = root.titled(&title(report), ("sans-serif", 22)).map_err(plot_error)?;
    let (top, bottom) = root.split_vertically(400);
    let (left, right) = top.split_horizontally(600);
    latency_over_time(report, &left)?;
    throughput_and_loss(report, &right)?;
    distribution(report, &bottom)?;
    root.present().map_err(plot_error)?;
    Ok(())
}

/// "fan-out | ringmq | MQTT 3.1.1 | QoS 1 | 64 B payload", with the
/// addresses when the broker has no name.
fn title(report: &Report) -> String {
    let m = &report.messages;
    let broker = report.broker.clone().unwrap_or_else(|| report.targets.join(", "));
    format!(
        "ringmq-bench {} | {} | MQTT {} | QoS {} | {} B payload",
        report.scenario, broker, report.mqtt_version, m.qos, m.payload
    )
}

fn plot_error(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("plot: {e}")
}

type Area<'a> = DrawingArea<SVGBackend<'a>, plotters::coord::Shift>;

/// `(second, value)` of the seconds up to the last one where `has_data`
/// holds: trailing seconds without data are not drawn.
fn until_last(
    report: &Report,
    has_data: impl Fn(&Second) -> bool,
    value: impl Fn(&Second) -> u64,
) -> Vec<(u64, u64)> {
    let timeline = &report.timeline;
    let end = timeline.iter().rposition(&has_data).map_or(0, |last| last + 1);
    timeline[..end].iter().map(|s| (s.second, value(s))).collect()
}

/// The x range of the per-second charts: second 0 to the last second that
/// has sent, received, lost or measured anything (at least 1, for a valid
/// axis).
fn seconds_axis(report: &Report) -> std::ops::Range<u64> {
    let last = report
        .timeline
        .iter()
        .filter(|s| s.sent + s.received + s.lost + s.latency_us.count > 0)
        .map(|s| s.second)
        .max()
        .unwrap_or(0);
    0..last.max(1)
}

/// A y range from 0 to a tenth above `max`.
fn counts_axis(max: u64) -> std::ops::Range<u64> {
    0..(max.max(1) + max.max(1) / 10).max(2)
}

/// One line per series: `(name, colour, points)`.
type Series = (&'static str, RGBColor, Vec<(u64, u64)>);

/// Draws per-second lines with `y` in `unit`.
fn per_second_chart(
    area: &Area<'_>,
    caption: &str,
    unit: &str,
    x: std::ops::Range<u64>,
    series: Vec<Series>,
) -> anyhow::Result<()> {
    let max_y = series.iter().flat_map(|s| s.2.iter().map(|p| p.1)).max().unwrap_or(0);
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 18))
        .margin(10)
        .margin_right(30)
        .x_label_area_size(30)
        .y_label_area_size(70)
        .build_cartesian_2d(x, counts_axis(max_y))
        .map_err(plot_error)?;
    chart
        .configure_mesh()
        .x_desc("second")
        .x_label_formatter(&|x| format!("{x}s"))
        .y_desc(unit)
        .draw()
        .map_err(plot_error)?;
    for (name, color, points) in series {
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))
            .map_err(plot_error)?
            .label(name)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color));
    }
    chart.configure_series_labels().background_style(WHITE).draw().map_err(plot_error)?;
    Ok(())
}

fn latency_over_time(report: &Report, area: &Area<'_>) -> anyhow::Result<()> {
    let line = |f: fn(&crate::stats::Percentiles) -> u64| {
        report
            .timeline
            .iter()
            .filter(|s| s.latency_us.count > 0)
            .map(|s| (s.second, f(&s.latency_us)))
            .collect::<Vec<_>>()
    };
    let series = vec![
        ("p50", BLUE, line(|p| p.p50)),
        ("p99", GREEN, line(|p| p.p99)),
        ("max", RED, line(|p| p.max)),
    ];
    per_second_chart(area, "end-to-end latency per second", "us", seconds_axis(report), series)
}

/// Sent and received per second on the left axis; lost per second of
/// sending on the right one, so that a loss far smaller than the
/// throughput still shows.
fn throughput_and_loss(report: &Report, area: &Area<'_>) -> anyhow::Result<()> {
    let m = &report.messages;
    let caption = match m.expected {
        Some(expected) if expected > 0 => format!(
            "throughput and loss per second: {} lost ({:.2}%)",
            m.lost,
            m.lost as f64 * 100.0 / expected as f64
        ),
        _ => format!("throughput and loss per second: {} lost", m.lost),
    };
    let sent = until_last(report, |s| s.sent > 0, |s| s.sent);
    let received = until_last(report, |s| s.received > 0, |s| s.received);
    let lost = until_last(report, |s| s.sent > 0 || s.lost > 0, |s| s.lost);
    let max = |points: &[(u64, u64)]| points.iter().map(|p| p.1).max().unwrap_or(0);
    let x = seconds_axis(report);
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(70)
        .right_y_label_area_size(60)
        .build_cartesian_2d(x.clone(), counts_axis(max(&sent).max(max(&received))))
        .map_err(plot_error)?
        .set_secondary_coord(x, counts_axis(max(&lost)));
    chart
        .configure_mesh()
        .x_desc("second")
        .x_label_formatter(&|x| format!("{x}s"))
        .y_desc("msg/s")
        .draw()
        .map_err(plot_error)?;
    chart.configure_secondary_axes().y_desc("lost").draw().map_err(plot_error)?;
    for (name, color, points) in [("sent", BLUE, sent), ("received", GREEN, received)] {
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))
            .map_err(plot_error)?
            .label(name)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color));
    }
    chart
        .draw_secondary_series(LineSeries::new(lost, RED.stroke_width(2)))
        .map_err(plot_error)?
        .label("lost (right axis)")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], RED));
    chart.configure_series_labels().background_style(WHITE).draw().map_err(plot_error)?;
    Ok(())
}

/// Percentile on a "nines" axis: x = -log10(1 - p/100), so 90 -> 1,
/// 99 -> 2, 99.9 -> 3.
fn distribution(report: &Report, area: &Area<'_>) -> anyhow::Result<()> {
    let points: Vec<(f64, u64)> = report
        .distribution
        .iter()
        .filter(|(p, _)| *p < 100.0)
        .map(|&(p, v)| (-(1.0 - p / 100.0).log10(), v))
        .collect();
    let max_x = points.iter().map(|p| p.0).fold(1.0f64, f64::max).ceil().min(7.0);
    let max_y = points.iter().map(|p| p.1).max().unwrap_or(0);
    let mut chart = ChartBuilder::on(area)
        .caption("latency by percentile", ("sans-serif", 18))
        .margin(10)
        .margin_right(40)
        .x_label_area_size(30)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..max_x, counts_axis(max_y))
        .map_err(plot_error)?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .x_label_formatter(&|x| percentile_label(*x))
        .y_desc("us")
        .draw()
        .map_err(plot_error)?;
    chart
        .draw_series(LineSeries::new(points.iter().copied(), BLUE.stroke_width(2)))
        .map_err(plot_error)?;
    Ok(())
}

/// The percentile at `x` nines, with as many decimals as nines past the
/// second (0 -> "0", 1 -> "90", 2 -> "99", 3 -> "99.9").
fn percentile_label(x: f64) -> String {
    let p = 100.0 * (1.0 - 10f64.powf(-x));
    format!("{p:.*}", (x.round() as usize).saturating_sub(2))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::Cli;
    use crate::plan::Plan;
    use crate::stats::{latency_histogram, ExecResult, Percentiles, RunResult, Second};
    use clap::Parser as _;
    use std::time::Duration;

    /// A fan-out report (`extra` flags added) of three seconds of sending
    /// (0, 1, 2) with some loss, a second of drain (3) in which the last
    /// messages arrive, and an empty second (4).
    fn report(extra: &[&str]) -> Report {
        let mut argv = vec![
            "ringmq-bench",
            "fan-out",
            "--host",
            "10.0.0.1:1883",
            "--publishers",
            "1",
            "--subscribers",
            "1",
            "--qos",
            "1",
            "--payload",
            "64",
            "--count",
            "3000",
            "--cores",
            "1",
        ];
        argv.extend_from_slice(extra);
        let plan = Plan::from_command(Cli::try_parse_from(argv).unwrap().command).unwrap();
        let mut exec = ExecResult::new();
        let timeline = (0..5)
            .map(|second| {
                let mut h = latency_histogram();
                let (sent, received, lost) = match second {
                    0..=2 => (1000, 980, 10),
                    3 => (0, 30, 0),
                    _ => (0, 0, 0),
                };
                for v in 1..=received {
                    h.record(v * (second + 1)).unwrap();
                }
                exec.latency.add(&h).unwrap();
                Second { second, sent, received, lost, latency_us: Percentiles::of(&h) }
            })
            .collect();
        let run = RunResult {
            executors: vec![exec],
            timeline,
            elapsed: Duration::from_secs(3),
            connect_elapsed: Duration::from_millis(10),
        };
        let mut report = Report::new(&plan, &run);
        (report.messages.expected, report.messages.lost) = (Some(3000), 30);
        report
    }

    /// The text of every `<text>` element of the plot of `report`.
    fn plot_texts(report: &Report, name: &str) -> Vec<String> {
        let path = std::env::temp_dir()
            .join(format!("ringmq-bench-plot-{name}-{}.svg", std::process::id()));
        draw(report, &path).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        svg.split("<text")
            .skip(1)
            .filter_map(|t| Some(t.split_once('>')?.1.split_once('<')?.0.trim().to_owned()))
            .collect()
    }

    #[test]
    fn plot_has_a_title_a_throughput_and_loss_panel_integer_ticks_and_ends_with_the_data() {
        let texts = plot_texts(&report(&["--broker-name", "ringmq 0.1"]), "named");
        let has = |text: &str| texts.iter().any(|t| t == text);
        assert!(
            has("ringmq-bench fan-out | ringmq 0.1 | MQTT 3.1.1 | QoS 1 | 64 B payload"),
            "{texts:?}"
        );
        for caption in [
            "end-to-end latency per second",
            "throughput and loss per second: 30 lost (1.00%)",
            "lost (right axis)",
            "latency by percentile",
        ] {
            assert!(has(caption), "{caption}: {texts:?}");
        }
        let ends_in_point_zero = |t: &&String| {
            t.strip_suffix(".0")
                .is_some_and(|n| n.chars().last().is_some_and(|c| c.is_ascii_digit()))
        };
        assert!(!texts.iter().any(|t| ends_in_point_zero(&t)), "{texts:?}");
        let seconds: Vec<u64> =
            texts.iter().filter_map(|t| t.strip_suffix('s')?.parse().ok()).collect();
        assert!(seconds.contains(&0), "{texts:?}");
        // Second 3 has deliveries of the drain; second 4 nothing.
        assert_eq!(
            seconds.iter().max(),
            Some(&3),
            "the last tick is the last second with data: {texts:?}"
        );
    }

    #[test]
    fn each_series_ends_at_its_last_second_with_data() {
        let report = report(&[]);
        assert_eq!(seconds_axis(&report), 0..3);
        let last = |points: Vec<(u64, u64)>| points.last().copied();
        assert_eq!(last(until_last(&report, |s| s.sent > 0, |s| s.sent)), Some((2, 1000)));
        assert_eq!(last(until_last(&report, |s| s.received > 0, |s| s.received)), Some((3, 30)));
        assert_eq!(
            last(until_last(&report, |s| s.sent > 0 || s.lost > 0, |s| s.lost)),
            Some((2, 10))
        );
        // Without --broker-name, the title names the address.
        let texts = plot_texts(&report, "unnamed");
        assert!(
            texts
                .iter()
                .any(|t| t
                    == "ringmq-bench fan-out | 10.0.0.1:1883 | MQTT 3.1.1 | QoS 1 | 64 B payload"),
            "{texts:?}"
        );
    }
}
