//! Side-by-side charts of runs on the cut-over time line (`switch` and
//! `seed`; the three proxies of `upgrade`): throughput and p99 per 100 ms,
//! cut-over moments as vertical lines, failures as red dots. All columns
//! share their y axes so the eye compares like with like.

use crate::scenarios::cutover::CutoverReport;
use anyhow::{anyhow, Result};
use plotters::prelude::*;
use std::path::Path;

pub const FILE: &str = "switch-vs-seed.svg";

/// One column: its caption and its run, whose events are drawn as
/// vertical lines named `event` in the legend.
pub struct Panel<'a> {
    pub caption: String,
    pub run: &'a CutoverReport,
    pub event: &'static str,
}

/// The `switch` and `seed` columns.
pub fn switch_vs_seed<'a>(reports: &[&'a CutoverReport]) -> Vec<Panel<'a>> {
    reports
        .iter()
        .map(|r| {
            let label = match r.scenario.as_str() {
                "switch" => "handoff-proxy: switch over the control socket, stop old after drain",
                "seed" => "nginx: envsubst + nginx -s reload, stop old at once",
                other => other,
            };
            Panel {
                caption: format!(
                    "{label}: {} failed, {} long cut",
                    r.failed_total, r.cut_long
                ),
                run: r,
                event: "cut-over",
            }
        })
        .collect()
}

pub fn draw(path: &Path, heading: &str, panels: &[Panel<'_>]) -> Result<()> {
    let reports: Vec<&CutoverReport> = panels.iter().map(|p| p.run).collect();
    let width = 700 * reports.len().max(2) as u32;
    let root = SVGBackend::new(path, (width, 820)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let (title, body) = root.split_vertically(36);
    title
        .draw_text(
            heading,
            &("sans-serif", 20).into_font().color(&BLACK),
            (20, 10),
        )
        .map_err(err)?;
    let x_max = reports
        .iter()
        .map(|r| r.timeline.end_ms as f64 / 1000.0)
        .fold(1.0, f64::max);
    let rps_max = reports
        .iter()
        .flat_map(|r| r.series.iter().map(|b| b.rps))
        .fold(1.0, f64::max)
        * 1.5; // headroom for the legend above the data
    let fail_max = reports
        .iter()
        .flat_map(|r| r.series.iter().map(|b| b.failed as f64 * 10.0))
        .fold(0.0, f64::max);
    let y_top = rps_max.max(fail_max * 1.4);
    let p99_max = reports
        .iter()
        .flat_map(|r| r.series.iter().map(|b| b.p99_ms))
        .fold(1.0, f64::max)
        * 1.5;
    // Only the time load was offered; later buckets hold stragglers only.
    let shown = |r: &&CutoverReport| {
        let end = r.timeline.end_ms;
        r.series
            .iter()
            .filter(move |b| b.t_ms < end)
            .cloned()
            .collect::<Vec<_>>()
    };
    let areas = body.split_evenly((2, reports.len().max(1)));
    for (col, (r, panel)) in reports.iter().zip(panels).enumerate() {
        let caption = panel.caption.clone();
        let series = shown(r);
        let switch_x: Vec<f64> = r.events.iter().map(|e| e.t_ms / 1000.0).collect();

        let mut top = ChartBuilder::on(&areas[col])
            .caption(caption, ("sans-serif", 15))
            .margin(8)
            .x_label_area_size(28)
            .y_label_area_size(64)
            .build_cartesian_2d(0f64..x_max, 0f64..y_top)
            .map_err(err)?;
        top.configure_mesh()
            .x_desc("s")
            .y_desc("req/s")
            .light_line_style(WHITE)
            .disable_x_mesh()
            .draw()
            .map_err(err)?;
        draw_switches(&mut top, &switch_x, y_top, panel.event)?;
        top.draw_series(LineSeries::new(
            series.iter().map(|b| (b.t_ms as f64 / 1000.0, b.rps)),
            &BLUE,
        ))
        .map_err(err)?
        .label("ok req/s (per 100 ms)")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], BLUE));
        top.draw_series(r.series.iter().filter(|b| b.failed > 0).map(|b| {
            Circle::new(
                (b.t_ms as f64 / 1000.0, b.failed as f64 * 10.0),
                3,
                RED.filled(),
            )
        }))
        .map_err(err)?
        .label("failed/s")
        .legend(|(x, y)| Circle::new((x + 9, y), 3, RED.filled()));
        top.configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(err)?;

        let mut bottom = ChartBuilder::on(&areas[reports.len() + col])
            .margin(8)
            .x_label_area_size(28)
            .y_label_area_size(64)
            .build_cartesian_2d(0f64..x_max, 0f64..p99_max)
            .map_err(err)?;
        bottom
            .configure_mesh()
            .x_desc("s")
            .y_desc("p99 ms")
            .light_line_style(WHITE)
            .disable_x_mesh()
            .draw()
            .map_err(err)?;
        draw_switches(&mut bottom, &switch_x, p99_max, panel.event)?;
        bottom
            .draw_series(LineSeries::new(
                r.series
                    .iter()
                    .filter(|b| b.ok > 0)
                    .map(|b| (b.t_ms as f64 / 1000.0, b.p99_ms)),
                &MAGENTA,
            ))
            .map_err(err)?
            .label("p99 of short requests (per 100 ms)")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], MAGENTA));
        bottom
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(err)?;
    }
    root.present().map_err(err)?;
    Ok(())
}

type Chart<'a, 'b> = ChartContext<
    'a,
    SVGBackend<'b>,
    Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
>;

fn draw_switches(
    chart: &mut Chart<'_, '_>,
    xs: &[f64],
    y_max: f64,
    label: &'static str,
) -> Result<()> {
    let style = RGBColor(255, 140, 0).mix(0.7);
    chart
        .draw_series(
            xs.iter()
                .map(|&x| PathElement::new(vec![(x, 0.0), (x, y_max)], style)),
        )
        .map_err(err)?
        .label(label)
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], style));
    Ok(())
}

fn err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("drawing the chart: {e:?}")
}
