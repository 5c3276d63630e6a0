//! The rate–quality plot of `aic bench` (SVG, so no font or image libraries are needed).

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Result, anyhow};
use plotters::prelude::*;

use crate::bench::Report;

const COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

type Series = BTreeMap<String, Vec<(f64, f64)>>;

fn series(rep: &Report, y: impl Fn(&crate::bench::Row) -> Option<f64>) -> Series {
    let mut s: Series = BTreeMap::new();
    for r in &rep.rows {
        if let Some(v) = y(r).filter(|v| v.is_finite()) {
            s.entry(r.codec.clone())
                .or_default()
                .push((r.bitrate_kbps, v));
        }
    }
    for v in s.values_mut() {
        v.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    s
}

fn panel(
    area: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    title: &str,
    s: &Series,
) -> Result<()> {
    let pts = s.values().flatten();
    let (mut x1, mut y0, mut y1) = (1.0f64, f64::INFINITY, f64::NEG_INFINITY);
    for &(x, y) in pts {
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if !y0.is_finite() {
        return Ok(());
    }
    let pad = ((y1 - y0) * 0.1).max(0.01);
    let e = |e: &dyn std::fmt::Display| anyhow!("plot: {e}");
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(48)
        .build_cartesian_2d(0.0..x1 * 1.08, (y0 - pad)..(y1 + pad))
        .map_err(|x| e(&x))?;
    chart
        .configure_mesh()
        .x_desc("bitrate (kbps)")
        .draw()
        .map_err(|x| e(&x))?;
    for (i, (name, v)) in s.iter().enumerate() {
        let c = COLORS[i % COLORS.len()];
        chart
            .draw_series(LineSeries::new(v.iter().copied(), c.stroke_width(2)))
            .map_err(|x| e(&x))?
            .label(name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], c.stroke_width(2)));
        chart
            .draw_series(v.iter().map(|&p| Circle::new(p, 4, c.filled())))
            .map_err(|x| e(&x))?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::LowerRight)
        .draw()
        .map_err(|x| e(&x))?;
    Ok(())
}

/// Two panels: STOI vs bitrate, and PESQ-WB (when measured) or log-mel distance vs bitrate.
pub fn write_svg(rep: &Report, path: &Path) -> Result<()> {
    let root = SVGBackend::new(path, (1100, 460)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("plot: {e}"))?;
    let (a, b) = root.split_horizontally(550);
    panel(&a, "STOI (higher is better)", &series(rep, |r| r.stoi))?;
    let pesq = series(rep, |r| r.pesq_wb);
    if pesq.is_empty() {
        panel(
            &b,
            "log-mel distance (lower is better)",
            &series(rep, |r| r.log_mel_distance),
        )?;
    } else {
        panel(&b, "PESQ-WB (higher is better)", &pesq)?;
    }
    root.present().map_err(|e| anyhow!("plot: {e}"))?;
    Ok(())
}
