//! `--plot FILE.svg`: latency over time (p50, p99, max per second) above
//! the latency percentile distribution. SVG only: text is written as SVG
//! `<text>` and laid out with plotters' built-in metrics, so no font or
//! system library is needed.

use crate::report::Report;
use plotters::prelude::*;
use std::path::Path;

/// Draws the report's latency charts into `path`.
pub fn draw(report: &Report, path: &Path) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, (1000, 800)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_error)?;
    let (top, bottom) = root.split_vertically(400);
    over_time(report, &top)?;
    distribution(report, &bottom)?;
    root.present().map_err(plot_error)?;
    Ok(())
}

fn plot_error(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("plot: {e}")
}

type Area<'a> = DrawingArea<SVGBackend<'a>, plotters::coord::Shift>;

fn over_time(report: &Report, area: &Area<'_>) -> anyhow::Result<()> {
    let points: Vec<(u64, u64, u64, u64)> = report
        .timeline
        .iter()
        .filter(|s| s.latency_us.count > 0)
        .map(|s| (s.second, s.latency_us.p50, s.latency_us.p99, s.latency_us.max))
        .collect();
    let max_x = points.iter().map(|p| p.0 + 1).max().unwrap_or(1);
    let max_y = points.iter().map(|p| p.3).max().unwrap_or(1).max(1) as f64 * 1.1;
    let mut chart = ChartBuilder::on(area)
        .caption("end-to-end latency per second (us)", ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .build_cartesian_2d(0u64..max_x, 0f64..max_y)
        .map_err(plot_error)?;
    chart.configure_mesh().x_desc("second").y_desc("us").draw().map_err(plot_error)?;
    let series = [("p50", BLUE, 1usize), ("p99", GREEN, 2), ("max", RED, 3)];
    for (name, color, field) in series {
        let line = points.iter().map(|p| {
            let y = match field {
                1 => p.1,
                2 => p.2,
                _ => p.3,
            };
            (p.0, y as f64)
        });
        chart
            .draw_series(LineSeries::new(line, color.stroke_width(2)))
            .map_err(plot_error)?
            .label(name)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color));
    }
    chart.configure_series_labels().background_style(WHITE).draw().map_err(plot_error)?;
    Ok(())
}

/// Percentile on a "nines" axis: x = -log10(1 - p/100), so 90 -> 1,
/// 99 -> 2, 99.9 -> 3.
fn distribution(report: &Report, area: &Area<'_>) -> anyhow::Result<()> {
    let points: Vec<(f64, f64)> = report
        .distribution
        .iter()
        .filter(|(p, _)| *p < 100.0)
        .map(|&(p, v)| (-(1.0 - p / 100.0).log10(), v as f64))
        .collect();
    let max_x = points.iter().map(|p| p.0).fold(1.0f64, f64::max).ceil().min(7.0);
    let max_y = points.iter().map(|p| p.1).fold(1.0, f64::max) * 1.1;
    let mut chart = ChartBuilder::on(area)
        .caption("latency by percentile (us)", ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..max_x, 0f64..max_y)
        .map_err(plot_error)?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .x_label_formatter(&|x| {
            let p = 100.0 * (1.0 - 10f64.powf(-x));
            format!("{p:.*}", (x.round() as usize).saturating_sub(2))
        })
        .y_desc("us")
        .draw()
        .map_err(plot_error)?;
    chart
        .draw_series(LineSeries::new(points.iter().copied(), BLUE.stroke_width(2)))
        .map_err(plot_error)?;
    Ok(())
}
