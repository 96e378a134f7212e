//! SVG plots of the measurements, for docs/PERFORMANCE.md.

use std::path::Path;

use plotters::prelude::*;

/// One store size: done keys, then a duplicate's p50, p99 and p999 latency and a new
/// key's p99 lookup, in µs.
pub(crate) type SizePoint = (f64, f64, f64, f64, f64);

/// Lookup latency (µs) against the number of done keys, both log scale.
pub(crate) fn latency_vs_size(out: &Path, engine: &str, points: &[SizePoint]) -> anyhow::Result<()> {
    let (Some(first), Some(last)) = (points.first(), points.last()) else { return Ok(()) };
    let top = points.iter().map(|p| p.3).fold(1.0, f64::max) * 2.0;
    let bottom = points.iter().map(|p| p.4).fold(1.0, f64::min) / 2.0;
    let root = SVGBackend::new(out, (720, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(format!("Lookup latency vs store size ({engine})"), ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d((first.0 / 2.0..last.0 * 2.0).log_scale(), (bottom..top).log_scale())?;
    chart.configure_mesh().x_desc("done keys in the store").y_desc("latency (µs)").draw()?;
    let series = [("duplicate p50", BLUE), ("duplicate p99", RED), ("duplicate p999", BLACK), ("new key p99", GREEN)];
    for (i, (name, color)) in series.into_iter().enumerate() {
        let pick = |p: &SizePoint| [p.1, p.2, p.3, p.4][i];
        let line: Vec<(f64, f64)> = points.iter().map(|p| (p.0, pick(p))).collect();
        chart
            .draw_series(LineSeries::new(line.clone(), color.stroke_width(2)))?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
        chart.draw_series(line.iter().map(|&(x, y)| Circle::new((x, y), 4, color.filled())))?;
    }
    chart.configure_series_labels().border_style(BLACK).background_style(WHITE).draw()?;
    root.present()?;
    Ok(())
}

/// Throughput (records/s) against records in flight, one line per series.
pub(crate) fn throughput_vs_concurrency(
    out: &Path,
    title: &str,
    series: &[(String, Vec<(u64, f64)>)],
) -> anyhow::Result<()> {
    throughput_vs(out, title, "records in flight", series)
}

/// Throughput (records/s) against `x` (log scale), one line per series.
pub(crate) fn throughput_vs(
    out: &Path,
    title: &str,
    x: &str,
    series: &[(String, Vec<(u64, f64)>)],
) -> anyhow::Result<()> {
    let xs: Vec<u64> = series.iter().flat_map(|s| s.1.iter().map(|p| p.0)).collect();
    let (Some(&lo), Some(&hi)) = (xs.iter().min(), xs.iter().max()) else { return Ok(()) };
    let top = series.iter().flat_map(|s| s.1.iter().map(|p| p.1)).fold(1.0, f64::max) * 1.15;
    let root = SVGBackend::new(out, (720, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d((lo as f64 / 1.5..hi as f64 * 1.5).log_scale(), 0.0..top)?;
    chart.configure_mesh().x_desc(x).y_desc("records/s").draw()?;
    for (i, (name, pts)) in series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let line: Vec<(f64, f64)> = pts.iter().map(|&(x, y)| (x as f64, y)).collect();
        chart
            .draw_series(LineSeries::new(line.clone(), color.stroke_width(2)))?
            .label(name.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
        chart.draw_series(line.iter().map(|&(x, y)| Circle::new((x, y), 4, color.filled())))?;
    }
    chart.configure_series_labels().border_style(BLACK).background_style(WHITE).draw()?;
    root.present()?;
    Ok(())
}

/// Panels in a 2x2 grid (`bench dashboard`), each with its lines over the seconds of the
/// run; the `shaded` interval (the outage) in grey.
pub(crate) fn panels(
    out: &Path,
    panels: &[(String, Vec<crate::dashboard::Line>)],
    shaded: (f64, f64),
) -> anyhow::Result<()> {
    let root = SVGBackend::new(out, (1200, 760)).into_drawing_area();
    root.fill(&WHITE)?;
    let colours = [BLUE, RED, GREEN, BLACK, MAGENTA, CYAN];
    for (area, (title, lines)) in root.split_evenly((2, 2)).iter().zip(panels) {
        let end = lines.iter().flat_map(|l| l.1.iter().map(|p| p.0)).fold(1.0, f64::max);
        let top = lines.iter().flat_map(|l| l.1.iter().map(|p| p.1)).fold(0.0, f64::max).max(1e-3) * 1.15;
        let mut chart = ChartBuilder::on(area)
            .caption(title, ("sans-serif", 16))
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(50)
            .build_cartesian_2d(0.0..end, 0.0..top)?;
        chart.configure_mesh().x_desc("seconds").draw()?;
        chart.draw_series(std::iter::once(Rectangle::new(
            [(shaded.0, 0.0), (shaded.1, top)],
            RGBColor(220, 220, 220).filled(),
        )))?;
        for (i, (name, points)) in lines.iter().enumerate() {
            let colour = colours[i % colours.len()];
            chart
                .draw_series(LineSeries::new(points.clone(), colour.stroke_width(2)))?
                .label(name.clone())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2)));
        }
        chart.configure_series_labels().border_style(BLACK).background_style(WHITE).draw()?;
    }
    root.present()?;
    Ok(())
}
