//! The status page's charts: per app, requests per second, p99 latency, 5xx per second and
//! memory over the last five minutes, as plain SVG drawn here (no script or stylesheet from
//! anywhere else); the numbers beside them are the page without any chart at all.

use std::fmt::Write as _;

use super::history::Second;
use super::StatusReport;

/// Seconds a chart shows.
pub const WINDOW: usize = 300;
/// Points a chart draws (each the mean, or the worst for latency, of its seconds).
const POINTS: usize = 100;
/// Apps charted at most (the busiest); the others show their numbers only.
const MAX_CHARTED: usize = 12;
const WIDTH: f64 = 240.0;
const HEIGHT: f64 = 44.0;

/// Gives the busiest apps their last five minutes, for [`html`].
pub fn attach(report: &mut StatusReport) {
    let mut busiest: Vec<(f64, usize)> = (report.apps.iter().enumerate())
        .filter_map(|(i, a)| Some((a.recent.as_ref()?.requests_per_second, i)))
        .collect();
    busiest.sort_by(|a, b| b.0.total_cmp(&a.0));
    for (_, i) in busiest.into_iter().take(MAX_CHARTED) {
        let app = &mut report.apps[i];
        app.chart = super::history::global().last(&app.name, WINDOW);
    }
}

/// How a chart's point is made from its seconds.
type PointOf = fn(&[Second]) -> f64;

/// One chart's series: `value` of each point, over `seconds` grouped into [`POINTS`].
fn series(seconds: &[Second], value: PointOf) -> Vec<f64> {
    let per = seconds.len().div_ceil(POINTS).max(1);
    seconds.chunks(per).map(value).collect()
}

fn mean(seconds: &[Second], f: fn(&Second) -> u64) -> f64 {
    let n = seconds.len().max(1) as f64;
    seconds.iter().map(f).sum::<u64>() as f64 / n
}

/// The charts of one app (nothing before it has a history).
pub fn html(out: &mut String, seconds: &[Second]) {
    if seconds.is_empty() {
        return;
    }
    out.push_str(r#"<div class="charts">"#);
    let charts: [(&str, &str, PointOf); 4] = [
        ("req/s", "", |s| mean(s, |x| u64::from(x.requests))),
        ("p99", " ms", |s| {
            f64::from(s.iter().map(|x| x.p99_ms).max().unwrap_or(0))
        }),
        ("5xx/s", "", |s| mean(s, |x| u64::from(x.server_errors))),
        ("memory", " MiB", |s| mean(s, |x| u64::from(x.resident_mib))),
    ];
    for (name, unit, value) in charts {
        chart(out, name, unit, &series(seconds, value));
    }
    out.push_str("</div>\n");
}

fn chart(out: &mut String, name: &str, unit: &str, points: &[f64]) {
    let top = points.iter().copied().fold(0.0_f64, f64::max);
    let scale = if top > 0.0 { (HEIGHT - 4.0) / top } else { 0.0 };
    let step = WIDTH / (POINTS.max(2) - 1) as f64;
    // Right-aligned: the newest point at the right edge whatever the history's length.
    let start = WIDTH - step * (points.len().saturating_sub(1)) as f64;
    let mut line = String::new();
    for (i, v) in points.iter().enumerate() {
        let (x, y) = (start + step * i as f64, HEIGHT - 2.0 - v * scale);
        let _ = write!(line, "{x:.1},{y:.1} ");
    }
    let now = points.last().copied().unwrap_or(0.0);
    let _ = write!(
        out,
        r##"<figure class="chart"><figcaption>{name} <b>{now:.1}{unit}</b> <small>max {top:.1}</small></figcaption><svg width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{name} over the last 5 minutes"><rect width="{WIDTH}" height="{HEIGHT}" fill="#f3f5f8"/><polyline fill="none" stroke="#1a73e8" stroke-width="1.5" points="{}"/></svg></figure>"##,
        line.trim_end()
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chart_scales_its_points_and_ends_at_the_right_edge() {
        let seconds: Vec<Second> = (0..WINDOW as u32)
            .map(|i| Second {
                requests: i,
                ..Default::default()
            })
            .collect();
        let mut out = String::new();
        html(&mut out, &seconds);
        assert_eq!(out.matches("<svg").count(), 4);
        assert!(out.contains("req/s <b>"), "{out}");
        let points = out.split("points=\"").nth(1).unwrap_or("");
        let first = points.split(' ').next().unwrap_or("");
        assert!(first.starts_with("0.0,"), "{first}");
        assert!(
            points.contains("240.0,2.0"),
            "the peak at the top right: {points}"
        );
        let mut empty = String::new();
        html(&mut empty, &[]);
        assert!(empty.is_empty());
    }
}
