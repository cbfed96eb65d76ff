//! `--plot FILE.svg`: under a title naming the scenario, the brokers, the
//! QoS and the payload, latency over time (p50, p99, max per second) beside
//! throughput and loss over time (sent, received and lost per second), above
//! the latency percentile distribution. SVG only: text is written as SVG
//! `<text>` and laid out with plotters' built-in metrics, so no font or
//! system library is needed.
//!
//! Axes end at the last second of data, seconds are labelled `Ns` and
//! counts and microseconds as integers (no `.0`).

use crate::report::Report;
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

/// "fan-out | 127.0.0.1:1883 | MQTT 3.1.1 | QoS 1 | 64 B payload".
fn title(report: &Report) -> String {
    let m = &report.messages;
    format!(
        "ringmq-bench {} | {} | MQTT {} | QoS {} | {} B payload",
        report.scenario,
        report.targets.join(", "),
        report.mqtt_version,
        m.qos,
        m.payload
    )
}

fn plot_error(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("plot: {e}")
}

type Area<'a> = DrawingArea<SVGBackend<'a>, plotters::coord::Shift>;

/// The x range of the per-second charts: second 0 to the last second with
/// data (at least 1, for a valid axis).
fn seconds_axis(report: &Report) -> std::ops::Range<u64> {
    let last = report.timeline.iter().map(|s| s.second).max().unwrap_or(0);
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
    let measured = || report.timeline.iter().filter(|s| s.latency_us.count > 0);
    let line = |f: fn(&crate::stats::Percentiles) -> u64| {
        measured().map(|s| (s.second, f(&s.latency_us))).collect::<Vec<_>>()
    };
    let series = vec![
        ("p50", BLUE, line(|p| p.p50)),
        ("p99", GREEN, line(|p| p.p99)),
        ("max", RED, line(|p| p.max)),
    ];
    per_second_chart(area, "end-to-end latency per second", "us", seconds_axis(report), series)
}

fn throughput_and_loss(report: &Report, area: &Area<'_>) -> anyhow::Result<()> {
    let line = |f: fn(&crate::stats::Second) -> u64| {
        report.timeline.iter().map(|s| (s.second, f(s))).collect::<Vec<_>>()
    };
    let series = vec![
        ("sent", BLUE, line(|s| s.sent)),
        ("received", GREEN, line(|s| s.received)),
        ("lost (by send second)", RED, line(|s| s.lost)),
    ];
    per_second_chart(area, "messages per second", "msg/s", seconds_axis(report), series)
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

    /// A fan-out report of three seconds (0, 1, 2) with some loss.
    fn report() -> Report {
        let cli = Cli::try_parse_from([
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
        ])
        .unwrap();
        let plan = Plan::from_command(cli.command).unwrap();
        let mut exec = ExecResult::new();
        let timeline = (0..3)
            .map(|second| {
                let mut h = latency_histogram();
                for v in 1..=1000 {
                    h.record(v * (second + 1)).unwrap();
                }
                exec.latency.add(&h).unwrap();
                Second {
                    second,
                    sent: 1000,
                    received: 990,
                    lost: 10,
                    latency_us: Percentiles::of(&h),
                }
            })
            .collect();
        let run = RunResult {
            executors: vec![exec],
            timeline,
            elapsed: Duration::from_secs(3),
            connect_elapsed: Duration::from_millis(10),
        };
        Report::new(&plan, &run)
    }

    /// The text of every `<text>` element.
    fn texts(svg: &str) -> Vec<&str> {
        svg.split("<text")
            .skip(1)
            .filter_map(|t| Some(t.split_once('>')?.1.split_once('<')?.0.trim()))
            .collect()
    }

    #[test]
    fn plot_has_a_title_integer_ticks_and_ends_with_the_data() {
        let path =
            std::env::temp_dir().join(format!("ringmq-bench-plot-{}.svg", std::process::id()));
        draw(&report(), &path).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        let texts = texts(&svg);
        assert!(
            texts.contains(
                &"ringmq-bench fan-out | 10.0.0.1:1883 | MQTT 3.1.1 | QoS 1 | 64 B payload"
            ),
            "{texts:?}"
        );
        assert!(texts.contains(&"messages per second"), "{texts:?}");
        assert!(texts.contains(&"lost (by send second)"), "{texts:?}");
        let ends_in_point_zero = |t: &&str| {
            t.strip_suffix(".0")
                .is_some_and(|n| n.chars().last().is_some_and(|c| c.is_ascii_digit()))
        };
        assert!(!texts.iter().any(ends_in_point_zero), "{texts:?}");
        let seconds: Vec<u64> =
            texts.iter().filter_map(|t| t.strip_suffix('s')?.parse().ok()).collect();
        assert!(seconds.contains(&0), "{texts:?}");
        assert_eq!(seconds.iter().max(), Some(&2), "the last tick is the last second: {texts:?}");
    }
}
