//! What `wsgimux status`, the admin page and `/metrics` show: collected on request from what
//! `reload` last published (the apps, their generations, the last reload) and the live
//! counters, then rendered as text, JSON, HTML or Prometheus text. Collecting reads atomics and
//! short-held view locks only; rendering (`render`) is pure.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::metrics::{AppCounters, Snapshot};
use crate::preflight::ReadyApp;
use crate::supervisor::{Generation, ProcessState, ProcessView};
use crate::trigger::Report;

mod certificates;
pub mod charts;
pub mod history;
mod render;
pub mod stacks;
pub mod top;
mod words;

pub use render::{render_html, render_prometheus, render_text};

/// What runs, as `reload` last published it.
pub struct Overview {
    pub started: SystemTime,
    pub config: PathBuf,
    /// `http://127.0.0.1:8080`, …
    pub listeners: Vec<String>,
    pub admin: Option<String>,
    pub apps: Vec<AppOverview>,
    /// The config in force (for `explain` asked of the running server).
    pub effective: Option<Arc<crate::config::Config>>,
    /// Keys the file changed that only a restart of wsgimux applies (`admin.listen`, …).
    pub pending_restart: Vec<String>,
    /// Config reloads, and restarts of apps' processes, apart.
    pub reloads: Tally,
    pub restarts: Tally,
    /// Requests no app was chosen for (refused, no route, host-wide static files, redirects).
    pub unrouted: Option<Arc<crate::metrics::Counters>>,
    /// The certificates of `tls: {certificates: …}` listeners, as loaded.
    pub file_certificates: Vec<Arc<crate::tls::CertStore>>,
}

/// How many reloads (or restarts) there were, and the last one's report.
#[derive(Debug, Clone, Default)]
pub struct Tally {
    pub count: u64,
    pub last: Option<(SystemTime, Report)>,
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
            effective: None,
            pending_restart: Vec::new(),
            reloads: Tally::default(),
            restarts: Tally::default(),
            unrouted: None,
            file_certificates: Vec::new(),
        }
    }
}

pub struct AppOverview {
    pub app: Arc<ReadyApp>,
    pub generation: Generation,
    pub stats: Arc<AppCounters>,
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
    /// Config reloads since start, and the last one.
    pub reloads: u64,
    pub last_reload: Option<ReloadStatus>,
    /// Restarts of apps' processes (`wsgimux restart`, code changes) since start, and the
    /// last one.
    pub restarts: u64,
    pub last_restart: Option<ReloadStatus>,
    /// Requests no app was chosen for, by status class (1xx … 5xx).
    pub unrouted: [u64; 5],
    /// Keys the file changed that only a restart of wsgimux applies: what runs keeps their
    /// previous values.
    #[serde(default)]
    pub pending_restart: Vec<String>,
    /// Log lines dropped because their reader did not keep up (`logfile`).
    #[serde(default)]
    pub log_lines_dropped: u64,
    /// Every certificate served: from files, obtained by ACME, the internal CA.
    #[serde(default)]
    pub certificates: Vec<crate::acme::CertStatus>,
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
    /// Restarts of the listed processes (this generation).
    pub restarts: u32,
    /// Restarts of any of the app's processes since wsgimux started (a counter that only
    /// grows: `wsgimux restart`, recycling and reloads keep it).
    pub restarts_total: u64,
    /// The app's counters since wsgimux started (for Prometheus).
    pub totals: Snapshot,
    /// Requests answered by processes no longer listed (gone, or draining after a restart or
    /// reload): with the listed processes' and `front`, they add up to the app's requests.
    #[serde(default)]
    pub retired: Count,
    /// Requests the front answered for the app without a process (it was starting or
    /// failing, the body was too large, …).
    #[serde(default)]
    pub front: Count,
    /// Rates over the last minute, from the per-second history; absent before a request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recent: Option<history::Recent>,
    /// Its last five minutes, for the page's charts (`charts::attach`; never in JSON).
    #[serde(skip)]
    pub chart: Vec<history::Second>,
}

/// Requests and errors, for the parts of an app's totals that are not a listed process.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Count {
    pub requests: u64,
    pub errors: u64,
}

impl Count {
    fn of(s: &Snapshot) -> Self {
        Count {
            requests: s.requests(),
            errors: s.errors(),
        }
    }
}

/// The numbers shown for an app and for each of its processes.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Load {
    pub requests: u64,
    pub in_flight: usize,
    /// Upgraded connections (WebSockets) open through the front.
    pub tunnels: usize,
    /// 5xx responses and responses that broke off.
    pub errors: u64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

impl Load {
    fn new(counted: &Snapshot, in_flight: usize, tunnels: usize) -> Self {
        let ms = |q| counted.quantile(q).map(|s| (s * 1e5).round() / 100.0);
        Load {
            requests: counted.requests(),
            in_flight,
            tunnels,
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
    /// Requests past their `request_timeout` that the process still works on (in
    /// `in_flight` too).
    #[serde(default)]
    pub stuck: usize,
    /// Replacements because its requests were stuck.
    #[serde(default)]
    pub stuck_replacements: u32,
    /// Replacements because it passed `max_memory`.
    #[serde(default)]
    pub memory_replacements: u32,
    /// Its resident memory, its children's included, sampled every few seconds.
    #[serde(default)]
    pub resident_bytes: Option<u64>,
    #[serde(flatten)]
    pub load: Load,
    pub last_exit: Option<String>,
    /// Unix seconds since when its starts fail (state `failing`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failing_since: Option<u64>,
    /// The last failed start's error, while it fails.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// The last reload's report and when it ended.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReloadStatus {
    /// Unix seconds.
    pub at: u64,
    #[serde(flatten)]
    pub report: Report,
}

pub(super) fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The status now.
pub fn collect(o: &Overview) -> StatusReport {
    let now = SystemTime::now();
    let apps = o.apps.iter().map(|a| app_status(a, now)).collect();
    StatusReport {
        version: env!("CARGO_PKG_VERSION").to_string(),
        pid: std::process::id(),
        started: unix(o.started),
        uptime_seconds: now.duration_since(o.started).map_or(0, |d| d.as_secs()),
        config: o.config.display().to_string(),
        listeners: o.listeners.clone(),
        admin: o.admin.clone(),
        apps,
        reloads: o.reloads.count,
        last_reload: last_of(&o.reloads),
        restarts: o.restarts.count,
        last_restart: last_of(&o.restarts),
        unrouted: o
            .unrouted
            .as_ref()
            .map(|c| c.snapshot().by_class)
            .unwrap_or_default(),
        pending_restart: o.pending_restart.clone(),
        log_lines_dropped: crate::logfile::dropped_lines(),
        certificates: certificates(o),
    }
}

/// File certificates as loaded (parsed here, no file read), then what `acme` keeps.
fn certificates(o: &Overview) -> Vec<crate::acme::CertStatus> {
    let mut out = Vec::new();
    for store in &o.file_certificates {
        for der in store.leaves() {
            let Ok(f) = crate::acme::certificate::Facts::of(&der) else {
                continue;
            };
            out.push(crate::acme::CertStatus {
                names: f.names,
                source: "file".into(),
                issuer: Some(f.issuer),
                serial: Some(f.serial),
                not_after: Some(unix(f.not_after)),
                state: if f.not_after > SystemTime::now() {
                    "valid"
                } else {
                    "expired"
                }
                .into(),
                since: unix(o.started),
                next_renewal: None,
                orders_succeeded: 0,
                orders_failed: 0,
            });
        }
    }
    out.extend(crate::acme::status());
    out
}

fn last_of(t: &Tally) -> Option<ReloadStatus> {
    t.last.as_ref().map(|(at, r)| ReloadStatus {
        at: unix(*at),
        report: r.clone(),
    })
}

/// One process slot as `status` shows it.
fn process_status(v: &ProcessView, now: SystemTime) -> ProcessStatus {
    let counted = v
        .endpoint
        .as_ref()
        .map(|e| e.stats.snapshot())
        .unwrap_or_default();
    let in_flight = v.endpoint.as_ref().map_or(0, |e| e.in_flight());
    let tunnels = v.endpoint.as_ref().map_or(0, |e| e.tunnels());
    ProcessStatus {
        slot: v.slot,
        pid: v.pid.filter(|&p| p != 0),
        state: v.state,
        uptime_seconds: v
            .started
            .map(|s| now.duration_since(s).map_or(0, |d| d.as_secs())),
        restarts: v.restarts,
        recycles: v.recycles,
        stuck: v.endpoint.as_ref().map_or(0, |e| e.stuck()),
        stuck_replacements: v.stuck_replacements,
        memory_replacements: v.memory_replacements,
        resident_bytes: v.resident_bytes,
        load: Load::new(&counted, in_flight, tunnels),
        last_exit: v.last_exit.clone(),
        failing_since: v.failing_since.map(unix),
        last_error: v.last_error.clone(),
    }
}

/// One app as `status` shows it; its requests add up (see [`AppStatus::retired`]).
fn app_status(a: &AppOverview, now: SystemTime) -> AppStatus {
    let spec = &a.app.spec;
    let processes: Vec<ProcessStatus> = a
        .generation
        .views()
        .iter()
        .map(|v| process_status(v, now))
        .collect();
    let totals = a.stats.total.snapshot();
    let front = a.stats.front.snapshot();
    // What the listed processes and the front do not account for was answered by processes
    // no longer listed: gone (crashed, recycled) or draining after a restart or reload. So
    // the parts always add up to the app's totals.
    let listed = |f: fn(&Load) -> u64| processes.iter().map(|p| f(&p.load)).sum::<u64>();
    let retired = Count {
        requests: totals
            .requests()
            .saturating_sub(front.requests() + listed(|l| l.requests)),
        errors: totals
            .errors()
            .saturating_sub(front.errors() + listed(|l| l.errors)),
    };
    let interpreter = a.app.interpreter.as_ref();
    AppStatus {
        recent: history::global().recent(&spec.name),
        chart: Vec::new(),
        name: spec.name.clone(),
        routes: spec.routes(),
        interpreter: interpreter.map(|i| i.to_string()),
        python_version: interpreter.map(|i| i.version_string()),
        executable: interpreter.map(|i| i.executable.display().to_string()),
        worker: a.app.worker.to_string(),
        generation: a.generation.number,
        start: match spec.process.policy.start {
            crate::config::StartMode::Always => "always".into(),
            crate::config::StartMode::OnDemand => "on_demand".into(),
        },
        load: Load::new(
            &totals,
            processes.iter().map(|p| p.load.in_flight).sum(),
            processes.iter().map(|p| p.load.tunnels).sum(),
        ),
        restarts: processes.iter().map(|p| p.restarts).sum(),
        restarts_total: a.stats.restarts.load(std::sync::atomic::Ordering::Relaxed),
        processes,
        totals,
        retired,
        front: Count::of(&front),
    }
}
