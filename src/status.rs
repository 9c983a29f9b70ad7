//! What `wsgimux status`, the admin page and `/metrics` show: collected on request from what
//! `reload` last published (the apps, their generations, the last reload) and the live
//! counters, then rendered as text, JSON, HTML or Prometheus text. Collecting reads atomics and
//! short-held view locks only; rendering is pure.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::metrics::{Counters, Snapshot, BUCKETS};
use crate::preflight::ReadyApp;
use crate::supervisor::{Generation, ProcessState};
use crate::trigger::Report;

/// What runs, as `reload` last published it.
pub struct Overview {
    pub started: SystemTime,
    pub config: PathBuf,
    /// `http://127.0.0.1:8080`, …
    pub listeners: Vec<String>,
    pub admin: Option<String>,
    pub apps: Vec<AppOverview>,
    pub reloads: u64,
    pub last_reload: Option<(SystemTime, Report)>,
}

impl Overview {
    /// Before the first app is published.
    pub fn empty(config: PathBuf, admin: Option<String>) -> Self {
        Overview {
            started: SystemTime::now(),
            config,
            listeners: Vec::new(),
            admin,
            apps: Vec::new(),
            reloads: 0,
            last_reload: None,
        }
    }
}

pub struct AppOverview {
    pub app: ReadyApp,
    pub generation: Generation,
    pub stats: Arc<Counters>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusReport {
    pub version: String,
    pub pid: u32,
    /// Unix seconds.
    pub started: u64,
    pub uptime_seconds: u64,
    pub config: String,
    pub listeners: Vec<String>,
    pub admin: Option<String>,
    pub apps: Vec<AppStatus>,
    pub reloads: u64,
    pub last_reload: Option<ReloadStatus>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AppStatus {
    pub name: String,
    /// `host/mount` per route (`*` for any host).
    pub routes: Vec<String>,
    pub interpreter: Option<String>,
    pub python_version: Option<String>,
    pub executable: Option<String>,
    pub worker: String,
    pub generation: u64,
    pub start: String,
    pub processes: Vec<ProcessStatus>,
    /// Requests since wsgimux started; in flight over the current processes.
    #[serde(flatten)]
    pub load: Load,
    pub restarts: u32,
    /// The app's counters since wsgimux started (for Prometheus).
    pub totals: Snapshot,
}

/// The numbers shown for an app and for each of its processes.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Load {
    pub requests: u64,
    pub in_flight: usize,
    /// 5xx responses and responses that broke off.
    pub errors: u64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

impl Load {
    fn new(counted: &Snapshot, in_flight: usize) -> Self {
        let ms = |q| counted.quantile(q).map(|s| (s * 1e5).round() / 100.0);
        Load {
            requests: counted.requests(),
            in_flight,
            errors: counted.errors(),
            p50_ms: ms(0.5),
            p99_ms: ms(0.99),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProcessStatus {
    pub slot: usize,
    pub pid: Option<u32>,
    pub state: ProcessState,
    pub uptime_seconds: Option<u64>,
    pub restarts: u32,
    pub recycles: u32,
    #[serde(flatten)]
    pub load: Load,
    pub last_exit: Option<String>,
}

/// The last reload's report and when it ended.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReloadStatus {
    /// Unix seconds.
    pub at: u64,
    #[serde(flatten)]
    pub report: Report,
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The status now.
pub fn collect(o: &Overview) -> StatusReport {
    let now = SystemTime::now();
    let apps = o
        .apps
        .iter()
        .map(|a| {
            let spec = &a.app.spec;
            let views = a.generation.views();
            let processes: Vec<ProcessStatus> = views
                .iter()
                .map(|v| {
                    let counted = v
                        .endpoint
                        .as_ref()
                        .map(|e| e.stats.snapshot())
                        .unwrap_or_default();
                    let in_flight = v.endpoint.as_ref().map_or(0, |e| e.in_flight());
                    ProcessStatus {
                        slot: v.slot,
                        pid: v.pid.filter(|&p| p != 0),
                        state: v.state,
                        uptime_seconds: v
                            .started
                            .map(|s| now.duration_since(s).map_or(0, |d| d.as_secs())),
                        restarts: v.restarts,
                        recycles: v.recycles,
                        load: Load::new(&counted, in_flight),
                        last_exit: v.last_exit.clone(),
                    }
                })
                .collect();
            let totals = a.stats.snapshot();
            AppStatus {
                name: spec.name.clone(),
                routes: spec.routes(),
                interpreter: a.app.interpreter.as_ref().map(|i| i.to_string()),
                python_version: a.app.interpreter.as_ref().map(|i| i.version_string()),
                executable: a
                    .app
                    .interpreter
                    .as_ref()
                    .map(|i| i.executable.display().to_string()),
                worker: a.app.worker.to_string(),
                generation: a.generation.id,
                start: match spec.policy.start {
                    crate::config::StartMode::Always => "always".into(),
                    crate::config::StartMode::OnDemand => "on_demand".into(),
                },
                load: Load::new(&totals, processes.iter().map(|p| p.load.in_flight).sum()),
                restarts: processes.iter().map(|p| p.restarts).sum(),
                processes,
                totals,
            }
        })
        .collect();
    StatusReport {
        version: env!("CARGO_PKG_VERSION").to_string(),
        pid: std::process::id(),
        started: unix(o.started),
        uptime_seconds: now.duration_since(o.started).map_or(0, |d| d.as_secs()),
        config: o.config.display().to_string(),
        listeners: o.listeners.clone(),
        admin: o.admin.clone(),
        apps,
        reloads: o.reloads,
        last_reload: o.last_reload.as_ref().map(|(at, r)| ReloadStatus {
            at: unix(*at),
            report: r.clone(),
        }),
    }
}

fn duration_text(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m{:02}s", s / 60, s % 60),
        s if s < 86_400 => format!("{}h{:02}m", s / 3600, s / 60 % 60),
        s => format!("{}d{:02}h", s / 86_400, s / 3600 % 24),
    }
}

fn ms_text(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.1}ms"))
}

fn reload_text(r: &ReloadStatus, now: u64) -> String {
    format!(
        "#{} {} ago ({}): {}",
        r.report.number,
        duration_text(now.saturating_sub(r.at)),
        r.report.cause,
        r.report.outcome.as_str()
    )
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
    match &s.last_reload {
        Some(r) => {
            let _ = writeln!(out, "last reload: {}", reload_text(r, now));
            let _ = writeln!(out, "  {}", r.report.summary);
            for e in &r.report.errors {
                let _ = writeln!(out, "  {e}");
            }
        }
        None => {
            let _ = writeln!(out, "last reload: none since start");
        }
    }
    for a in &s.apps {
        let _ = writeln!(out);
        let python = match (&a.interpreter, &a.executable) {
            (Some(i), Some(e)) => format!("{i} ({e})"),
            _ => "-".into(),
        };
        let _ = writeln!(
            out,
            "app {}  routes {}  {python}  {} worker  generation {}{}",
            a.name,
            a.routes.join(" "),
            a.worker,
            a.generation,
            if a.start == "on_demand" {
                "  on demand"
            } else {
                ""
            }
        );
        let _ = writeln!(
            out,
            "  requests {}  in flight {}  errors {}  p50 {}  p99 {}  restarts {}",
            a.load.requests,
            a.load.in_flight,
            a.load.errors,
            ms_text(a.load.p50_ms),
            ms_text(a.load.p99_ms),
            a.restarts
        );
        let _ = writeln!(
            out,
            "  {:<4} {:<8} {:<10} {:>8} {:>8} {:>9} {:>9} {:>7} {:>9} {:>9}",
            "#",
            "PID",
            "STATE",
            "UPTIME",
            "RESTARTS",
            "REQUESTS",
            "IN FLIGHT",
            "ERRORS",
            "P50",
            "P99"
        );
        for p in &a.processes {
            let _ = writeln!(
                out,
                "  {:<4} {:<8} {:<10} {:>8} {:>8} {:>9} {:>9} {:>7} {:>9} {:>9}",
                p.slot,
                p.pid.map_or("-".into(), |p| p.to_string()),
                p.state.as_str(),
                p.uptime_seconds.map_or("-".into(), duration_text),
                p.restarts,
                p.load.requests,
                p.load.in_flight,
                p.load.errors,
                ms_text(p.load.p50_ms),
                ms_text(p.load.p99_ms),
            );
        }
    }
    out
}

fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The admin page: one self-contained HTML document (no external assets), refreshed every
/// 5 s, laid out for a phone as well as a desktop.
pub fn render_html(s: &StatusReport) -> String {
    let e = html_escape;
    let now = unix(SystemTime::now());
    let mut out = String::new();
    let _ = write!(
        out,
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="refresh" content="5">
<title>wsgimux status</title>
<style>
body{{font:15px/1.4 system-ui,-apple-system,sans-serif;margin:0;padding:12px;background:#f6f7f9;color:#1d2125}}
h1{{font-size:20px;margin:0 0 4px}} h2{{font-size:17px;margin:0}}
.meta{{color:#555;margin-bottom:12px}} .card{{background:#fff;border-radius:8px;padding:12px;margin:0 0 12px;box-shadow:0 1px 2px #0002}}
.kv{{display:flex;flex-wrap:wrap;gap:4px 16px;margin:6px 0}} .kv span b{{font-weight:600}}
.wrap{{overflow-x:auto}} table{{border-collapse:collapse;width:100%;font-variant-numeric:tabular-nums}}
th,td{{text-align:right;padding:4px 8px;border-bottom:1px solid #eee;white-space:nowrap}} th:first-child,td:first-child,td.s,th.s{{text-align:left}}
.ready{{color:#137333}} .starting,.recycling,.idle{{color:#8a6100}} .restarting,.down,.stopping{{color:#b3261e}}
.bad{{color:#b3261e}} .ok{{color:#137333}} code{{font-size:13px}}
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
    match &s.last_reload {
        Some(r) => {
            let class = if r.report.outcome.succeeded() {
                "ok"
            } else {
                "bad"
            };
            let _ = write!(
                out,
                r#"<div class="kv"><span><b>Last reload</b> <span id="last-reload" class="{class}">{}</span></span></div><div>{}</div>"#,
                e(&reload_text(r, now)),
                e(&r.report.summary)
            );
            for err in &r.report.errors {
                let _ = write!(out, r#"<div class="bad">{}</div>"#, e(err));
            }
        }
        None => {
            let _ = write!(
                out,
                r#"<div class="kv"><span><b>Last reload</b> <span id="last-reload">none since start</span></span></div>"#
            );
        }
    }
    out.push_str("</div>\n");
    for a in &s.apps {
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
                p.load.in_flight,
                p.load.errors,
                ms_text(p.load.p50_ms),
                ms_text(p.load.p99_ms),
            );
        }
        out.push_str("</tbody></table></div></section>\n");
    }
    out.push_str("<div class=\"meta\">Refreshes every 5 s · <a href=\"/metrics\">/metrics</a> · <a href=\"/status.json\">/status.json</a></div>\n</body></html>\n");
    out
}

/// Label values escaped for the Prometheus text format.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
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
    family(
        t,
        "wsgimux_reloads_total",
        "counter",
        "Config reloads since start.",
    );
    let _ = writeln!(t, "wsgimux_reloads_total {}", s.reloads);
    family(
        t,
        "wsgimux_last_reload_success",
        "gauge",
        "1 when the last reload was applied (or there was none), else 0.",
    );
    let ok = s
        .last_reload
        .as_ref()
        .is_none_or(|r| r.report.outcome.succeeded());
    let _ = writeln!(t, "wsgimux_last_reload_success {}", u8::from(ok));
    let apps: Vec<(String, &AppStatus)> = s.apps.iter().map(|a| (label(&a.name), a)).collect();
    let t = &mut text;

    family(
        t,
        "wsgimux_requests_total",
        "counter",
        "Finished requests by status class.",
    );
    for (app, a) in &apps {
        for (i, n) in a.totals.by_class.iter().enumerate() {
            let class = i + 1;
            let _ = writeln!(
                t,
                "wsgimux_requests_total{{app=\"{app}\",code=\"{class}xx\"}} {n}"
            );
        }
    }
    family(
        t,
        "wsgimux_request_errors_total",
        "counter",
        "5xx responses and responses that broke off.",
    );
    for (app, a) in &apps {
        let n = a.totals.errors();
        let _ = writeln!(t, "wsgimux_request_errors_total{{app=\"{app}\"}} {n}");
    }
    family(
        t,
        "wsgimux_requests_in_flight",
        "gauge",
        "Requests sent to the app and not finished.",
    );
    for (app, a) in &apps {
        let n = a.load.in_flight;
        let _ = writeln!(t, "wsgimux_requests_in_flight{{app=\"{app}\"}} {n}");
    }
    family(
        t,
        "wsgimux_processes",
        "gauge",
        "The app's processes by state.",
    );
    for (app, a) in &apps {
        for state in ProcessState::ALL {
            let n = a.processes.iter().filter(|p| p.state == state).count();
            let state = state.as_str();
            let _ = writeln!(
                t,
                "wsgimux_processes{{app=\"{app}\",state=\"{state}\"}} {n}"
            );
        }
    }
    family(
        t,
        "wsgimux_process_restarts_total",
        "counter",
        "Process exits and failed starts followed by a restart (current generation).",
    );
    for (app, a) in &apps {
        let n = a.restarts;
        let _ = writeln!(t, "wsgimux_process_restarts_total{{app=\"{app}\"}} {n}");
    }
    let name = "wsgimux_request_duration_seconds";
    family(
        t,
        name,
        "histogram",
        "Time from the request's head to the end of its response.",
    );
    for (app, a) in &apps {
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
    text
}
