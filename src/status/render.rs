//! The status rendered for people and machines: text for `wsgimux status`, one HTML page for
//! the admin listener, Prometheus text for `/metrics`. Pure: a `StatusReport` in, text out.

use std::fmt::Write as _;
use std::time::SystemTime;

use crate::metrics::BUCKETS;
use crate::supervisor::ProcessState;
use crate::trigger::Outcome;

use super::words::{duration_text, family, html_escape, label};
use super::{unix, AppStatus, ProcessStatus, ReloadStatus, StatusReport};

fn ms_text(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.1}ms"))
}

fn reload_text(r: &ReloadStatus, now: u64) -> String {
    format!(
        "#{} {} ago ({}): {}",
        r.report.number,
        duration_text(now.saturating_sub(r.at)),
        r.report.cause,
        r.report.outcome.words()
    )
}

/// The `last reload:` / `last restart:` lines of the text report.
fn text_last(out: &mut String, what: &str, last: Option<&ReloadStatus>, now: u64) {
    match last {
        Some(r) => {
            let _ = writeln!(out, "last {what}: {}", reload_text(r, now));
            let _ = writeln!(out, "  {}", r.report.summary);
            // The summary names the first error already.
            let shown = usize::from(r.report.outcome == Outcome::Rejected);
            for e in r.report.errors.iter().skip(shown) {
                let _ = writeln!(out, "  {e}");
            }
        }
        None => {
            let _ = writeln!(out, "last {what}: none since start");
        }
    }
}

/// `wsgimux status`: a passenger-status-like report.
pub fn render_text(s: &StatusReport) -> String {
    let mut out = String::new();
    let now = unix(SystemTime::now());
    let _ = writeln!(
        out,
        "wsgimux {} (pid {}), up {}, config {}",
        s.version,
        s.pid,
        duration_text(s.uptime_seconds),
        s.config
    );
    let _ = writeln!(out, "listening: {}", s.listeners.join(", "));
    if let Some(a) = &s.admin {
        let _ = writeln!(out, "admin:     http://{a}/");
    }
    if !s.pending_restart.is_empty() {
        let _ = writeln!(out, "{}", crate::trigger::pending_words(&s.pending_restart));
    }
    text_last(&mut out, "reload", s.last_reload.as_ref(), now);
    if s.last_restart.is_some() {
        text_last(&mut out, "restart", s.last_restart.as_ref(), now);
    }
    super::certificates::text(&mut out, &s.certificates, now);
    for a in &s.apps {
        let _ = writeln!(out);
        text_app(&mut out, a);
    }
    out
}

/// One app: its line, its totals, a table of its processes.
fn text_app(out: &mut String, a: &AppStatus) {
    let python = match (&a.interpreter, &a.executable) {
        (Some(i), Some(e)) => format!("{i} ({e})"),
        _ => "-".into(),
    };
    let on_demand = if a.start == "on_demand" {
        "  on demand"
    } else {
        ""
    };
    let _ = writeln!(
        out,
        "app {}  routes {}  {python}  {} worker  generation {}{on_demand}",
        a.name,
        a.routes.join(" "),
        a.worker,
        a.generation,
    );
    let _ = writeln!(
        out,
        "  requests {}  in flight {}  websockets {}  errors {}  p50 {}  p99 {}  restarts {}",
        a.load.requests,
        a.load.in_flight,
        a.load.tunnels,
        a.load.errors,
        ms_text(a.load.p50_ms),
        ms_text(a.load.p99_ms),
        a.restarts
    );
    let header = [
        "#",
        "PID",
        "STATE",
        "UPTIME",
        "RESTARTS",
        "REQUESTS",
        "IN FLIGHT",
        "ERRORS",
        "P50",
        "P99",
    ]
    .map(String::from);
    text_row(out, &header);
    for p in &a.processes {
        let row = [
            p.slot.to_string(),
            p.pid.map_or("-".into(), |p| p.to_string()),
            p.state.as_str().to_string(),
            p.uptime_seconds.map_or("-".into(), duration_text),
            p.restarts.to_string(),
            p.load.requests.to_string(),
            in_flight_text(p),
            p.load.errors.to_string(),
            ms_text(p.load.p50_ms),
            ms_text(p.load.p99_ms),
        ];
        text_row(out, &row);
        if let Some(failing) = failing_text(p) {
            let _ = writeln!(out, "       {failing}");
        }
    }
    if a.retired.requests + a.front.requests > 0 {
        let _ = writeln!(
            out,
            "  also counted: processes that are gone {} ({} errors), answered by the front {} ({} errors)",
            a.retired.requests, a.retired.errors, a.front.requests, a.front.errors
        );
    }
}

/// For a failing process: since when, and the error's last line.
fn failing_text(p: &super::ProcessStatus) -> Option<String> {
    let since = p.failing_since?;
    let ago = unix(SystemTime::now()).saturating_sub(since);
    Some(format!(
        "failing for {}: {}",
        duration_text(ago),
        p.last_error.as_deref().unwrap_or("-")
    ))
}

fn text_row(out: &mut String, c: &[String; 10]) {
    let _ = writeln!(
        out,
        "  {:<4} {:<8} {:<10} {:>8} {:>8} {:>9} {:>9} {:>7} {:>9} {:>9}",
        c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7], c[8], c[9]
    );
}

/// The admin page: one self-contained HTML document (no external assets), updated every 2 s
/// by its own script (every 5 s without one), laid out for a phone as well as a desktop;
/// the charts where `charts::attach` gave an app its history.
pub fn render_html(s: &StatusReport) -> String {
    let e = html_escape;
    let now = unix(SystemTime::now());
    let mut out = String::new();
    let _ = write!(
        out,
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<noscript><meta http-equiv="refresh" content="5"></noscript>
<title>wsgimux status</title>
<style>
body{{font:15px/1.4 system-ui,-apple-system,sans-serif;margin:0;padding:12px;background:#f6f7f9;color:#1d2125}}
h1{{font-size:20px;margin:0 0 4px}} h2{{font-size:17px;margin:0}}
.meta{{color:#555;margin-bottom:12px}} .card{{background:#fff;border-radius:8px;padding:12px;margin:0 0 12px;box-shadow:0 1px 2px #0002}}
.kv{{display:flex;flex-wrap:wrap;gap:4px 16px;margin:6px 0}} .kv span b{{font-weight:600}}
.wrap{{overflow-x:auto}} table{{border-collapse:collapse;width:100%;font-variant-numeric:tabular-nums}}
th,td{{text-align:right;padding:4px 8px;border-bottom:1px solid #eee;white-space:nowrap}} th:first-child,td:first-child,td.s,th.s{{text-align:left}}
.ready{{color:#137333}} .starting,.recycling,.idle{{color:#8a6100}} .restarting,.down,.stopping,.failing{{color:#b3261e}}
.bad{{color:#b3261e}} .ok{{color:#137333}} code{{font-size:13px}}
.charts{{display:flex;flex-wrap:wrap;gap:8px 16px;margin-top:8px}} .chart{{margin:0}} .chart figcaption{{font-size:13px;color:#555}}
</style></head><body>
<h1>wsgimux</h1>
<div class="meta">version {} · pid {} · up {} · <code>{}</code></div>
"#,
        e(&s.version),
        s.pid,
        duration_text(s.uptime_seconds),
        e(&s.config)
    );
    let _ = write!(
        out,
        r#"<div class="card"><div class="kv"><span><b>Listening</b> {}</span></div>"#,
        e(&s.listeners.join(", "))
    );
    html_last(&mut out, "reload", s.last_reload.as_ref(), now);
    if s.last_restart.is_some() {
        html_last(&mut out, "restart", s.last_restart.as_ref(), now);
    }
    out.push_str("</div>\n");
    super::certificates::html(&mut out, &s.certificates, now);
    for a in &s.apps {
        html_app(&mut out, a);
    }
    out.push_str("<div class=\"meta\">Updates every 2 s (every 5 s without JavaScript) · <a href=\"/metrics\">/metrics</a> · <a href=\"/status.json\">/status.json</a></div>\n");
    // Live without a page reload: the page fetches itself and swaps its body in.
    out.push_str("<script>setInterval(()=>fetch(location.href).then(r=>r.text()).then(t=>{const d=new DOMParser().parseFromString(t,'text/html');document.body.innerHTML=d.body.innerHTML}).catch(()=>{}),2000)</script>\n</body></html>\n");
    out
}

/// The page's "Last reload" / "Last restart" line, its summary and errors.
fn html_last(out: &mut String, what: &str, last: Option<&ReloadStatus>, now: u64) {
    let e = html_escape;
    let Some(r) = last else {
        let _ = write!(
            out,
            r#"<div class="kv"><span><b>Last {what}</b> <span id="last-{what}">none since start</span></span></div>"#
        );
        return;
    };
    let class = if r.report.outcome.succeeded() {
        "ok"
    } else {
        "bad"
    };
    let _ = write!(
        out,
        r#"<div class="kv"><span><b>Last {what}</b> <span id="last-{what}" class="{class}">{}</span></span></div><div>{}</div>"#,
        e(&reload_text(r, now)),
        e(&r.report.summary)
    );
    let shown = usize::from(r.report.outcome == Outcome::Rejected);
    for err in r.report.errors.iter().skip(shown) {
        let _ = write!(out, r#"<div class="bad">{}</div>"#, e(err));
    }
}

/// One app's card: its keys, its totals, a table of its processes.
fn html_app(out: &mut String, a: &AppStatus) {
    let e = html_escape;
    let python = a.interpreter.clone().unwrap_or_else(|| "-".into());
    let _ = write!(
        out,
        r#"<section class="card app" id="app-{name}" data-app="{name}"><h2>{name}</h2>
<div class="kv"><span><b>Routes</b> {routes}</span><span><b>Python</b> {python}</span><span><b>Worker</b> {worker}</span><span><b>Generation</b> {gen}</span><span><b>Start</b> {start}</span></div>
<div class="kv"><span><b>Requests</b> <span class="requests">{req}</span></span><span><b>In flight</b> {inf}</span><span><b>Errors</b> {err}</span><span><b>p50</b> {p50}</span><span><b>p99</b> {p99}</span><span><b>Restarts</b> {rs}</span></div>
<div class="wrap"><table><thead><tr><th>#</th><th>PID</th><th class="s">State</th><th>Uptime</th><th>Restarts</th><th>Requests</th><th>In flight</th><th>Errors</th><th>p50</th><th>p99</th></tr></thead><tbody>
"#,
        name = e(&a.name),
        routes = e(&a.routes.join(" ")),
        python = e(&python),
        worker = e(&a.worker),
        gen = a.generation,
        start = e(&a.start),
        req = a.load.requests,
        inf = a.load.in_flight,
        err = a.load.errors,
        p50 = ms_text(a.load.p50_ms),
        p99 = ms_text(a.load.p99_ms),
        rs = a.restarts,
    );
    for p in &a.processes {
        let state = p.state.as_str();
        let _ = writeln!(
            out,
            r#"<tr class="process"><td>{}</td><td class="pid">{}</td><td class="s {state}">{state}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>"#,
            p.slot,
            p.pid.map_or("-".into(), |p| p.to_string()),
            p.uptime_seconds.map_or("-".into(), duration_text),
            p.restarts,
            p.load.requests,
            in_flight_text(p),
            p.load.errors,
            ms_text(p.load.p50_ms),
            ms_text(p.load.p99_ms),
        );
        if let Some(failing) = failing_text(p) {
            let _ = writeln!(
                out,
                r#"<tr class="failing"><td></td><td colspan="9" class="s bad">{}</td></tr>"#,
                e(&failing)
            );
        }
    }
    out.push_str("</tbody></table></div>");
    super::charts::html(out, &a.chart);
    out.push_str("</section>\n");
}

/// A family with one sample per app, labelled by app only.
fn per_app(
    t: &mut String,
    apps: &Apps,
    (name, kind, help): (&str, &str, &str),
    value: impl Fn(&AppStatus) -> u64,
) {
    family(t, name, kind, help);
    for (app, a) in apps {
        let _ = writeln!(t, "{name}{{app=\"{app}\"}} {}", value(a));
    }
}

/// Prometheus text exposition format 0.0.4.
pub fn render_prometheus(s: &StatusReport) -> String {
    let mut text = String::new();
    let t = &mut text;
    family(
        t,
        "wsgimux_start_time_seconds",
        "gauge",
        "When wsgimux started (unix time).",
    );
    let _ = writeln!(t, "wsgimux_start_time_seconds {}", s.started);
    let tallies = [
        ("reload", "Config reloads", s.reloads, &s.last_reload),
        (
            "restart",
            "Restarts of apps' processes (wsgimux restart, restart_file, code changes)",
            s.restarts,
            &s.last_restart,
        ),
    ];
    for (what, help, count, last) in tallies {
        let total = format!("wsgimux_{what}s_total");
        family(t, &total, "counter", &format!("{help} since start."));
        let _ = writeln!(t, "{total} {count}");
        let success = format!("wsgimux_last_{what}_success");
        family(
            t,
            &success,
            "gauge",
            &format!("1 when the last {what} was applied (or there was none), else 0."),
        );
        let ok = last.as_ref().is_none_or(|r| r.report.outcome.succeeded());
        let _ = writeln!(t, "{success} {}", u8::from(ok));
    }
    family(
        t,
        "wsgimux_unrouted_requests_total",
        "counter",
        "Finished requests no app was chosen for (refused, no route, host-wide static files, redirects), by status class.",
    );
    for (i, n) in s.unrouted.iter().enumerate() {
        let class = i + 1;
        let _ = writeln!(
            t,
            "wsgimux_unrouted_requests_total{{code=\"{class}xx\"}} {n}"
        );
    }
    family(
        t,
        "wsgimux_log_lines_dropped_total",
        "counter",
        "Log and access-log lines dropped because their reader did not keep up (the queue in front of it was full).",
    );
    let _ = writeln!(t, "wsgimux_log_lines_dropped_total {}", s.log_lines_dropped);
    let apps: Vec<(String, &AppStatus)> = s.apps.iter().map(|a| (label(&a.name), a)).collect();
    let t = &mut text;

    prometheus_requests(t, &apps);
    prometheus_processes(t, &apps);
    prometheus_durations(t, &apps);
    super::certificates::prometheus(t, &s.certificates);
    text
}

/// Labelled app by app: `(label value, app)`.
type Apps<'a> = [(String, &'a AppStatus)];

fn prometheus_requests(t: &mut String, apps: &Apps) {
    family(
        t,
        "wsgimux_requests_total",
        "counter",
        "Finished requests by status class.",
    );
    for (app, a) in apps {
        for (i, n) in a.totals.by_class.iter().enumerate() {
            let class = i + 1;
            let _ = writeln!(
                t,
                "wsgimux_requests_total{{app=\"{app}\",code=\"{class}xx\"}} {n}"
            );
        }
    }
    per_app(
        t,
        apps,
        (
            "wsgimux_request_errors_total",
            "counter",
            "5xx responses and responses that broke off.",
        ),
        |a| a.totals.errors(),
    );
    per_app(
        t,
        apps,
        (
            "wsgimux_requests_in_flight",
            "gauge",
            "Requests sent to the app and not finished.",
        ),
        |a| a.load.in_flight as u64,
    );
    per_app(
        t,
        apps,
        (
            "wsgimux_upgraded_connections",
            "gauge",
            "Upgraded connections (WebSockets) open to the app.",
        ),
        |a| a.load.tunnels as u64,
    );
}

fn prometheus_processes(t: &mut String, apps: &Apps) {
    family(
        t,
        "wsgimux_processes",
        "gauge",
        "The app's processes by state.",
    );
    for (app, a) in apps {
        for state in ProcessState::ALL {
            let n = a.processes.iter().filter(|p| p.state == state).count();
            let state = state.as_str();
            let _ = writeln!(
                t,
                "wsgimux_processes{{app=\"{app}\",state=\"{state}\"}} {n}"
            );
        }
    }
    per_app(
        t,
        apps,
        (
            "wsgimux_process_restarts_total",
            "counter",
            "Process exits and failed starts followed by a restart, in any generation.",
        ),
        |a| a.restarts_total,
    );
    family(
        t,
        "wsgimux_process_resident_bytes",
        "gauge",
        "A process's resident memory, its children's included, sampled every few seconds.",
    );
    for (app, a) in apps {
        for p in &a.processes {
            if let Some(bytes) = p.resident_bytes {
                let slot = p.slot;
                let _ = writeln!(
                    t,
                    "wsgimux_process_resident_bytes{{app=\"{app}\",slot=\"{slot}\"}} {bytes}"
                );
            }
        }
    }
}

fn prometheus_durations(t: &mut String, apps: &Apps) {
    let name = "wsgimux_request_duration_seconds";
    family(
        t,
        name,
        "histogram",
        "Time from the request's head to the end of its response.",
    );
    for (app, a) in apps {
        let mut cumulative = 0u64;
        for (i, bound) in BUCKETS.iter().enumerate() {
            cumulative += a.totals.buckets.get(i).copied().unwrap_or(0);
            let _ = writeln!(
                t,
                "{name}_bucket{{app=\"{app}\",le=\"{bound}\"}} {cumulative}"
            );
        }
        let count: u64 = a.totals.buckets.iter().sum();
        let _ = writeln!(t, "{name}_bucket{{app=\"{app}\",le=\"+Inf\"}} {count}");
        let _ = writeln!(t, "{name}_sum{{app=\"{app}\"}} {}", a.totals.sum_seconds);
        let _ = writeln!(t, "{name}_count{{app=\"{app}\"}} {count}");
    }
}

/// A process's requests in flight, and how many of them are stuck (past their
/// `request_timeout`, still held by the process).
fn in_flight_text(p: &ProcessStatus) -> String {
    match p.stuck {
        0 => p.load.in_flight.to_string(),
        n => format!("{} (stuck {n})", p.load.in_flight),
    }
}
