//! The simulator's chart: one proxy's demand against the limits the policy kept over time —
//! CPU demand vs the `cpu.max` quota above, memory demand vs `memory.high` below, the static
//! original limits dashed — drawn with `plotters`' SVG backend into a string (no fonts or
//! rasterising needed: text becomes `<text>` elements). Writing the file is the caller's.

use plotters::prelude::*;

/// One tick's interval of the charted proxy.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SeriesPoint {
    pub start_s: f64,
    pub end_s: f64,
    /// Highest demand during the interval.
    pub cpu_demand_millis: f64,
    pub cpu_quota_millis: f64,
    pub memory_demand_bytes: f64,
    /// `memory.high` (or `memory.max` while `high` is `max`) in force.
    pub memory_limit_bytes: f64,
}

/// What the simulation recorded for the charted proxy.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub proxy: String,
    pub policy: String,
    pub cpu_original_millis: u64,
    pub memory_original_bytes: u64,
    pub points: Vec<SeriesPoint>,
}

/// Why a chart could not be drawn.
#[derive(Debug, thiserror::Error)]
#[error("draw chart of proxy {proxy}: {message}")]
pub struct ChartError {
    pub proxy: String,
    pub message: String,
}

/// At most this many demand points per line (longer runs keep each bucket's peak).
const MAX_POINTS: usize = 1200;
const WIDTH: u32 = 1100;
const HEIGHT: u32 = 720;
const MIB: f64 = (1u64 << 20) as f64;

/// A step line over the intervals: flat during each, vertical at changes, one point per change.
fn steps(points: &[SeriesPoint], value: impl Fn(&SeriesPoint) -> f64) -> Vec<(f64, f64)> {
    let mut out: Vec<(f64, f64)> = Vec::new();
    for p in points {
        let v = value(p);
        match out.last() {
            Some(&(_, last)) if last == v => {}
            Some(_) => {
                out.push((p.start_s, out.last().map_or(v, |l| l.1)));
                out.push((p.start_s, v));
            }
            None => out.push((p.start_s, v)),
        }
    }
    if let (Some(last), Some(&(_, v))) = (points.last(), out.last()) {
        out.push((last.end_s, v));
    }
    out
}

/// Demand as steps, or per-bucket peaks when there are too many intervals to draw.
fn demand(points: &[SeriesPoint], value: impl Fn(&SeriesPoint) -> f64) -> Vec<(f64, f64)> {
    if points.len() <= MAX_POINTS {
        return steps(points, value);
    }
    let bucket = points.len().div_ceil(MAX_POINTS);
    points
        .chunks(bucket)
        .map(|c| {
            let peak = c.iter().map(&value).fold(0.0, f64::max);
            (c[0].start_s, peak)
        })
        .collect()
}

/// Renders the chart as SVG text.
pub fn render_svg(series: &Series) -> Result<String, ChartError> {
    let fail = |e: &dyn std::fmt::Display| ChartError {
        proxy: series.proxy.clone(),
        message: e.to_string(),
    };
    let mut svg = String::new();
    draw(series, &mut svg).map_err(|e| fail(&e))?;
    Ok(svg)
}

type DrawResult = Result<(), Box<dyn std::error::Error>>;

/// One panel: a resource's demand, the limit the policy kept, and the original limit dashed.
struct Panel<'a> {
    caption: &'a str,
    unit: &'a str,
    demand: Vec<(f64, f64)>,
    limit: Vec<(f64, f64)>,
    limit_label: &'a str,
    original: f64,
    original_label: &'a str,
}

fn draw_panel(
    area: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    (start, end): (f64, f64),
    panel: Panel<'_>,
) -> DrawResult {
    let top = panel
        .demand
        .iter()
        .chain(&panel.limit)
        .map(|p| p.1)
        .fold(panel.original, f64::max)
        * 1.08;
    let mut chart = ChartBuilder::on(area)
        .margin(12)
        .margin_right(28)
        .x_label_area_size(32)
        .y_label_area_size(64)
        .caption(panel.caption, ("sans-serif", 16))
        .build_cartesian_2d(start..end, 0.0..top.max(1.0))?;
    chart
        .configure_mesh()
        .x_desc("time (s)")
        .y_desc(panel.unit)
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| format!("{y:.0}"))
        .light_line_style(WHITE.mix(0.0))
        .draw()?;
    let orange = RGBColor(230, 120, 20);
    let blue = RGBColor(31, 100, 180);
    let grey = RGBColor(120, 120, 120);
    let original = panel.original;
    chart
        .draw_series(LineSeries::new(panel.demand, blue.stroke_width(1)))?
        .label("demand")
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], blue));
    chart
        .draw_series(LineSeries::new(panel.limit, orange.stroke_width(2)))?
        .label(panel.limit_label)
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], orange));
    chart
        .draw_series(DashedLineSeries::new(
            vec![(start, original), (end, original)],
            8,
            6,
            grey.stroke_width(1),
        ))?
        .label(panel.original_label)
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], grey));
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}

fn draw(series: &Series, svg: &mut String) -> DrawResult {
    let pts = &series.points;
    let end = pts.last().map_or(1.0, |p| p.end_s).max(1.0);
    let start = pts.first().map_or(0.0, |p| p.start_s);
    let root = SVGBackend::with_string(svg, (WIDTH, HEIGHT)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(
        &format!("{} — policy {}", series.proxy, series.policy),
        ("sans-serif", 20),
    )?;
    let (upper, lower) = root.split_vertically(HEIGHT / 2 - 15);
    draw_panel(
        &upper,
        (start, end),
        Panel {
            caption: "CPU: demand vs cpu.max quota",
            unit: "millicores",
            demand: demand(pts, |p| p.cpu_demand_millis),
            limit: steps(pts, |p| p.cpu_quota_millis),
            limit_label: "quota in force (policy)",
            original: series.cpu_original_millis as f64,
            original_label: "original limit",
        },
    )?;
    draw_panel(
        &lower,
        (start, end),
        Panel {
            caption: "memory: demand vs memory.high",
            unit: "MiB",
            demand: demand(pts, |p| p.memory_demand_bytes / MIB),
            limit: steps(pts, |p| p.memory_limit_bytes / MIB),
            limit_label: "memory.high in force (policy)",
            original: series.memory_original_bytes as f64 / MIB,
            original_label: "original memory.max",
        },
    )?;
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(t: f64, cpu: f64, quota: f64) -> SeriesPoint {
        SeriesPoint {
            start_s: t,
            end_s: t + 1.0,
            cpu_demand_millis: cpu,
            cpu_quota_millis: quota,
            memory_demand_bytes: 100.0 * MIB,
            memory_limit_bytes: 200.0 * MIB,
        }
    }

    #[test]
    fn steps_keep_only_changes() {
        let pts = [
            point(0.0, 1.0, 10.0),
            point(1.0, 1.0, 10.0),
            point(2.0, 1.0, 20.0),
        ];
        assert_eq!(
            steps(&pts, |p| p.cpu_quota_millis),
            vec![(0.0, 10.0), (2.0, 10.0), (2.0, 20.0), (3.0, 20.0)]
        );
    }

    #[test]
    fn long_runs_keep_bucket_peaks() {
        let pts: Vec<_> = (0..5000)
            .map(|t| point(t as f64, if t == 4321 { 900.0 } else { 5.0 }, 100.0))
            .collect();
        let d = demand(&pts, |p| p.cpu_demand_millis);
        assert!(d.len() <= MAX_POINTS);
        assert!(d.iter().any(|p| p.1 == 900.0));
    }

    #[test]
    fn renders_svg_with_the_proxy_name() {
        let series = Series {
            proxy: "shop/cart".into(),
            policy: "tight.yaml".into(),
            cpu_original_millis: 2000,
            memory_original_bytes: 1 << 30,
            points: (0..300)
                .map(|t| point(t as f64, (t % 50) as f64 * 10.0, 400.0))
                .collect(),
        };
        let svg = render_svg(&series).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..100]);
        assert!(svg.contains("shop/cart"));
        assert!(svg.contains("<text"));
        assert!(svg.trim_end().ends_with("</svg>"));
    }
}
