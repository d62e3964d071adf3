//! The comparison as an SVG: CPU per call and p99 setup latency against
//! offered load, one line per proxy (plotters, SVG backend only).

use std::path::Path;

use anyhow::{Context, Result};
use plotters::prelude::*;

use crate::compare::{Proxy, Results, Row};

fn color(p: Proxy) -> RGBColor {
    match p {
        Proxy::Sipvane => RGBColor(0x1f, 0x77, 0xb4),
        Proxy::SipvaneHep => RGBColor(0x2c, 0xa0, 0x2c),
        Proxy::SipvaneAcc => RGBColor(0x94, 0x67, 0xbd),
        Proxy::Kamailio => RGBColor(0xd6, 0x27, 0x28),
    }
}

fn series(rows: &[Row], p: Proxy, y: impl Fn(&Row) -> Option<f64>) -> Vec<(f64, f64)> {
    rows.iter()
        .filter(|r| r.proxy == p)
        .filter_map(|r| Some((r.offered_cps, y(r)?)))
        .collect()
}

/// One chart: a line per proxy of `y` against offered load. `log_y`: a
/// logarithmic y axis (latency spans microseconds to seconds across an
/// overload).
fn panel(
    area: &DrawingArea<SVGBackend, plotters::coord::Shift>,
    res: &Results,
    title: &str,
    y_desc: &str,
    log_y: bool,
    y: impl Fn(&Row) -> Option<f64> + Copy,
) -> Result<()> {
    let x_max = res.rows.iter().map(|r| r.offered_cps).fold(1.0, f64::max) * 1.05;
    let y_max = res.rows.iter().filter_map(y).fold(1.0, f64::max);
    let mut builder = ChartBuilder::on(area);
    builder
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70);
    let err = |e: &dyn std::fmt::Display| anyhow::anyhow!("plot: {e}");
    macro_rules! draw {
        ($chart:expr) => {{
            let mut chart = $chart;
            chart
                .configure_mesh()
                .x_desc("offered load (calls/s)")
                .y_desc(y_desc)
                .x_label_formatter(&|x| format!("{x:.0}"))
                .y_label_formatter(&|y| format!("{y:.0}"))
                .draw()
                .map_err(|e| err(&e))?;
            for p in [
                Proxy::Sipvane,
                Proxy::SipvaneHep,
                Proxy::SipvaneAcc,
                Proxy::Kamailio,
            ] {
                let pts = series(&res.rows, p, y);
                if pts.is_empty() {
                    continue;
                }
                let c = color(p);
                chart
                    .draw_series(LineSeries::new(pts.clone(), c.stroke_width(2)))
                    .map_err(|e| err(&e))?
                    .label(p.to_string())
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(2))
                    });
                chart
                    .draw_series(
                        pts.into_iter()
                            .map(|(x, y)| Circle::new((x, y), 3, c.filled())),
                    )
                    .map_err(|e| err(&e))?;
            }
            chart
                .configure_series_labels()
                .border_style(BLACK)
                .background_style(WHITE.mix(0.8))
                .draw()
                .map_err(|e| err(&e))?;
        }};
    }
    if log_y {
        draw!(builder
            .build_cartesian_2d(0.0..x_max, (1.0..y_max * 2.0).log_scale())
            .map_err(|e| err(&e))?);
    } else {
        draw!(builder
            .build_cartesian_2d(0.0..x_max, 0.0..y_max * 1.15)
            .map_err(|e| err(&e))?);
    }
    Ok(())
}

pub fn write_svg(res: &Results, path: &Path) -> Result<()> {
    {
        let root = SVGBackend::new(path, (900, 700)).into_drawing_area();
        root.fill(&WHITE)
            .map_err(|e| anyhow::anyhow!("plot: {e}"))?;
        let (top, bottom) = root.split_vertically(350);
        panel(
            &top,
            res,
            "Proxy CPU per completed call",
            "CPU µs per call",
            false,
            |r: &Row| r.cpu_us_per_call,
        )?;
        panel(
            &bottom,
            res,
            "Call setup latency, p99 (INVITE → 200), log scale",
            "p99 setup µs",
            true,
            |r: &Row| (r.completed > 0).then_some(r.p99_us as f64),
        )?;
        root.present()
            .with_context(|| format!("write {}", path.display()))?;
    }
    Ok(())
}
