//! `wsgimux top`: a live terminal view of the apps, busiest first (like `passenger-status`
//! or `uwsgitop`), from `status` and its per-second history. Pure: a frame from a report.

use std::fmt::Write as _;

use super::{AppStatus, StatusReport};

/// One frame: a line per app, sorted by requests per second over the last minute (then by
/// requests in flight, requests since the start, name).
pub fn render_frame(report: &StatusReport) -> String {
    let mut apps: Vec<&AppStatus> = report.apps.iter().collect();
    let rate = |a: &AppStatus| a.recent.as_ref().map_or(0.0, |r| r.requests_per_second);
    apps.sort_by(|a, b| {
        rate(b)
            .total_cmp(&rate(a))
            .then(b.load.in_flight.cmp(&a.load.in_flight))
            .then(b.load.requests.cmp(&a.load.requests))
            .then(a.name.cmp(&b.name))
    });
    let mut out = String::new();
    let _ = writeln!(
        out,
        "wsgimux {} (pid {}): {} app(s), rates over the last minute",
        report.version,
        report.pid,
        apps.len()
    );
    let _ = writeln!(
        out,
        "{:<24} {:>8} {:>7} {:>8} {:>9} {:>6} {:>9} {:>10}",
        "APP", "REQ/S", "5XX/S", "P99 MS", "IN FLIGHT", "PROCS", "RSS MIB", "REQUESTS"
    );
    for a in apps {
        let recent = a.recent.clone().unwrap_or_default();
        let ready = a.processes.iter().filter(|p| p.pid.is_some()).count();
        let resident: u64 = a.processes.iter().filter_map(|p| p.resident_bytes).sum();
        let _ = writeln!(
            out,
            "{:<24} {:>8.1} {:>7.1} {:>8} {:>9} {:>6} {:>9} {:>10}",
            truncate(&a.name, 24),
            recent.requests_per_second,
            recent.server_errors_per_second,
            recent.p99_ms,
            a.load.in_flight,
            format!("{ready}/{}", a.processes.len()),
            resident >> 20,
            a.load.requests,
        );
    }
    out
}

fn truncate(name: &str, width: usize) -> String {
    if name.chars().count() <= width {
        return name.to_string();
    }
    let kept: String = name.chars().take(width.saturating_sub(1)).collect();
    kept + "…"
}
