//! Hot reload: the running state (the effective config, each app's current generation, the
//! listeners) and the only writer of the route table.
//!
//! A reload validates the file exactly as `serve` does, diffs it against what runs
//! (`diff`), then applies only the difference: new generations start beside the old ones, the
//! route table is swapped once they answer, and what was replaced drains in the background.
//! A generation that does not become ready leaves its app as it was (rollback). Does not parse
//! YAML, watch files or speak HTTP: triggers come from `watch`, `control` and signals.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};

use crate::config::diff::{self, AppChange};
use crate::config::{AppSpec, Config, Problem};
use crate::metrics::Registry;
use crate::preflight::ReadyApp;
use crate::proxy::{AppRoute, Front, Live, Proxy, Table};
use crate::routes::RouteTable;
use crate::server::{self, Server};
use crate::status::{AppOverview, Overview};
use crate::supervisor::{Generation, StartFailure, Supervisor};
use crate::trigger::{Cause, Outcome, Report, Trigger};
use crate::watch::{self as filewatch, CodeWatcher, Fingerprint};

/// Beyond an app's `startup_timeout`, how long a reload waits for its new generation (the
/// processes time out by themselves first and say why).
const READY_MARGIN: Duration = Duration::from_secs(2);
/// Lines of a failed child's stderr repeated in the log.
const LOGGED_STDERR_LINES: usize = 10;

/// One app as it runs: its spec, its interpreter and its current generation.
pub struct RunningApp {
    pub app: ReadyApp,
    pub generation: Generation,
}

/// Everything a reload reads and changes.
pub struct Reloader {
    /// The config file as given to `serve` (absolute, symlinks not resolved).
    path: PathBuf,
    /// What runs: the last config applied, with the previous spec of apps whose new
    /// generation failed.
    config: Config,
    apps: BTreeMap<String, RunningApp>,
    supervisor: Supervisor,
    server: Server,
    /// What every connection and request reads; written only here, the first value included.
    live: watch::Sender<Arc<Live>>,
    code_watchers: HashMap<String, CodeWatcher>,
    triggers: mpsc::Sender<Trigger>,
    count: u64,
    last: Option<Report>,
    last_at: Option<std::time::SystemTime>,
    /// The version of the file the last config reload read.
    loaded: Option<Fingerprint>,
    /// Each app's counters, kept across reloads.
    metrics: Arc<Registry>,
    /// What `status` shows: replaced whenever what runs changes.
    overview: watch::Sender<Arc<Overview>>,
    started: std::time::SystemTime,
}

impl Reloader {
    /// Takes over what `serve` started (the apps' first generations, the bound listeners) and
    /// starts serving: the first live snapshot, the proxy and the server.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        path: PathBuf,
        config: Config,
        apps: Vec<RunningApp>,
        supervisor: Supervisor,
        front: Front,
        listeners: Vec<(SocketAddr, tokio::net::TcpListener)>,
        triggers: mpsc::Sender<Trigger>,
        metrics: Arc<Registry>,
        overview: watch::Sender<Arc<Overview>>,
    ) -> Self {
        let apps: BTreeMap<String, RunningApp> = apps
            .into_iter()
            .map(|a| (a.app.spec.name.clone(), a))
            .collect();
        let routes = Reloader::table(
            &config.apps,
            |name| apps.get(name).map(|a| &a.generation),
            &metrics,
        );
        let (live, live_rx) = watch::channel(Arc::new(Live {
            routes: Arc::new(routes),
            front: Arc::new(front),
        }));
        let mut server = Server::new(Arc::new(Proxy::new(live_rx)));
        for (addr, listener) in listeners {
            server.add(addr, listener);
        }
        let mut r = Reloader {
            path,
            config,
            apps,
            supervisor,
            server,
            live,
            code_watchers: HashMap::new(),
            triggers,
            count: 0,
            last: None,
            last_at: None,
            loaded: None,
            metrics,
            overview,
            started: std::time::SystemTime::now(),
        };
        r.update_code_watchers();
        r.publish_overview();
        r
    }

    /// `(scheme, address)` of every listener, as bound.
    pub fn listener_urls(&self) -> Vec<(&'static str, SocketAddr)> {
        let front = self.live.borrow().front.clone();
        self.server
            .local_addrs()
            .into_iter()
            .map(|(configured, local)| {
                let scheme = if front.is_tls(&configured) {
                    "https"
                } else {
                    "http"
                };
                (scheme, local)
            })
            .collect()
    }

    /// Replaces what `status` shows with what runs now.
    fn publish_overview(&self) {
        let listeners = self
            .listener_urls()
            .into_iter()
            .map(|(scheme, local)| format!("{scheme}://{local}"))
            .collect();
        let apps = self
            .config
            .apps
            .iter()
            .filter_map(|spec| {
                let r = self.apps.get(&spec.name)?;
                Some(AppOverview {
                    app: r.app.clone(),
                    generation: r.generation.clone(),
                    stats: self.metrics.app(&spec.name),
                })
            })
            .collect();
        let previous = self.overview.borrow().clone();
        self.overview.send_replace(Arc::new(Overview {
            started: self.started,
            config: self.path.clone(),
            listeners,
            admin: previous.admin.clone(),
            apps,
            reloads: self.count,
            last_reload: self
                .last
                .clone()
                .map(|r| (self.last_at.unwrap_or(self.started), r)),
        }));
    }

    /// The route table for a set of running apps, in config order.
    pub fn table<'a>(
        order: &[AppSpec],
        apps: impl Fn(&str) -> Option<&'a Generation>,
        metrics: &Registry,
    ) -> Table {
        RouteTable::for_apps(order.iter().filter_map(|spec| {
            let g = apps(&spec.name)?;
            let route = AppRoute::new(
                spec,
                g.endpoints.clone(),
                metrics.app(&spec.name),
                g.demand.clone(),
            );
            Some((spec, Arc::new(route)))
        }))
    }

    /// The last reload's report, if any happened.
    pub fn last_report(&self) -> Option<&Report> {
        self.last.as_ref()
    }

    /// Handles a batch of triggers that arrived together: one config reload for all the
    /// config triggers (each `wsgimux reload` gets its report), then one restart per app whose
    /// code changed and that the config reload did not already restart.
    pub async fn handle(&mut self, batch: Vec<Trigger>) {
        let (mut file, mut hangup) = (false, false);
        let mut waiting = Vec::new();
        let mut code: BTreeMap<String, PathBuf> = BTreeMap::new();
        for t in batch {
            match t {
                Trigger::ConfigFile => file = true,
                Trigger::Hangup => hangup = true,
                Trigger::Command(reply) => waiting.push(reply),
                Trigger::Code { app, file } => {
                    code.entry(app).or_insert(file);
                }
            }
        }
        // Named after the most explicit request; a file event alone for the version a reload
        // already read (a `wsgimux reload` right after the edit) needs no second reload.
        let cause = if !waiting.is_empty() {
            Some(Cause::Command)
        } else if hangup {
            Some(Cause::Hangup)
        } else if file {
            Some(Cause::ConfigFile)
        } else {
            None
        };
        // Taken before the file is read, so an edit made during the reload is seen later.
        let version = cause.as_ref().map(|_| filewatch::fingerprint(&self.path));
        let cause =
            cause.filter(|c| *c != Cause::ConfigFile || self.loaded.as_ref() != version.as_ref());
        let mut restarted = BTreeSet::new();
        if let (Some(cause), Some(version)) = (cause, version) {
            self.loaded = Some(version);
            let (report, r) = self.reload_config(&cause).await;
            restarted = r;
            for w in waiting {
                let _ = w.send(report.clone());
            }
        }
        for (app, file) in code {
            if !restarted.contains(&app) {
                self.reload_code(&app, &file).await;
            }
        }
    }

    fn begin(&mut self) -> u64 {
        self.count += 1;
        self.count
    }

    fn finish(&mut self, report: Report) -> Report {
        match report.outcome {
            Outcome::Applied | Outcome::Unchanged => tracing::info!("{}", report.summary),
            Outcome::PartlyApplied | Outcome::Rejected => tracing::error!("{}", report.summary),
        }
        self.last = Some(report.clone());
        self.last_at = Some(std::time::SystemTime::now());
        self.publish_overview();
        report
    }

    /// Reloads the config file; returns the report and the apps that got new processes.
    async fn reload_config(&mut self, cause: &Cause) -> (Report, BTreeSet<String>) {
        let number = self.begin();
        let started = Instant::now();
        let head = format!("reload #{number} ({cause})");
        let rejected = |errors: Vec<String>| {
            let first = errors.first().cloned().unwrap_or_default();
            let more = match errors.len() {
                0 | 1 => String::new(),
                n => format!(" (and {} more)", n - 1),
            };
            Report {
                number,
                cause: cause.to_string(),
                outcome: Outcome::Rejected,
                summary: format!(
                    "{head}: rejected, still serving the previous config: {first}{more}"
                ),
                errors,
            }
        };
        let (new, ready) = match crate::preflight::load(&self.path).await {
            Ok(x) => x,
            Err(e) => {
                let errors = e.to_string().lines().map(str::to_string).collect();
                return (self.finish(rejected(errors)), BTreeSet::new());
            }
        };
        if new.runtime_dir != self.config.runtime_dir {
            let problem = runtime_dir_problem(&new);
            return (
                self.finish(rejected(vec![problem.to_string()])),
                BTreeSet::new(),
            );
        }
        let mut d = diff::diff(&self.config, &new);
        let ready: HashMap<String, ReadyApp> = ready
            .into_iter()
            .map(|a| (a.spec.name.clone(), a))
            .collect();
        // The same `python:` may now be another interpreter (a venv rebuilt, a pyenv upgrade).
        for change in &mut d.apps {
            let (spec, mut keys) = match change {
                AppChange::Update { spec, keys, .. } => (spec.clone(), keys.clone()),
                AppChange::Unchanged(spec) => (spec.clone(), Vec::new()),
                _ => continue,
            };
            let now = ready.get(&spec.name).map(|a| &a.interpreter);
            let before = self.apps.get(&spec.name).map(|a| &a.app.interpreter);
            if now.is_some() && now != before {
                keys.insert(0, "python");
                *change = AppChange::Restart { spec, keys };
            }
        }
        // Certificates are loaded and new listeners bound before anything else changes: a
        // failure rejects the reload with nothing started.
        let front = if d.front_changed {
            let current = self.live.borrow().front.clone();
            match Front::build(&new, Some(&current)) {
                Ok(f) => Some(f),
                Err(e) => return (self.finish(rejected(vec![e.to_string()])), BTreeSet::new()),
            }
        } else {
            None
        };
        if !d.restart_only.is_empty() {
            tracing::warn!(
                "changed top-level {} applies when wsgimux is restarted",
                d.restart_only.join(", ")
            );
        }
        let bound = match server::bind(&d.listen_added).await {
            Ok(b) => b,
            Err(e) => return (self.finish(rejected(vec![e.to_string()])), BTreeSet::new()),
        };
        if d.is_empty() {
            let report = Report {
                number,
                cause: cause.to_string(),
                outcome: Outcome::Unchanged,
                summary: format!("{head}: nothing to change ({})", elapsed(started)),
                errors: Vec::new(),
            };
            self.config = new;
            self.refresh_specs();
            return (self.finish(report), BTreeSet::new());
        }

        // Start every new generation at once, then wait for each.
        let mut starting: Vec<(String, Generation, Duration)> = Vec::new();
        for change in &d.apps {
            if let AppChange::Added(spec) | AppChange::Restart { spec, .. } = change {
                if let Some(app) = ready.get(&spec.name) {
                    let g = self.supervisor.start(app);
                    self.wake_if_running(&spec.name, &g);
                    starting.push((spec.name.clone(), g, spec.startup_timeout));
                }
            }
        }
        let waits = starting
            .iter()
            .map(|(_, g, limit)| g.wait_ready(*limit + READY_MARGIN));
        let results = futures_util::future::join_all(waits).await;
        let mut new_generations: HashMap<String, Generation> = HashMap::new();
        let mut failed: BTreeMap<String, StartFailure> = BTreeMap::new();
        for ((name, g, _), result) in starting.into_iter().zip(results) {
            match result {
                Ok(_) => {
                    new_generations.insert(name, g);
                }
                Err(f) => {
                    self.supervisor.stop(g.id);
                    log_failure(&name, &f);
                    failed.insert(name, f);
                }
            }
        }

        // The effective config: the new one, except where a new generation failed.
        let mut effective = new.clone();
        effective.apps = d
            .apps
            .iter()
            .filter_map(|c| {
                let name = c.name();
                match (failed.contains_key(name), c) {
                    (_, AppChange::Removed(_)) => None,
                    (true, AppChange::Added(_)) => None,
                    (true, _) => self.apps.get(name).map(|a| a.app.spec.clone()),
                    (false, _) => c.spec().cloned(),
                }
            })
            .collect();

        // Swap: new and re-routed apps in, removed ones out, in one step.
        let mut retire: Vec<(Generation, Duration)> = Vec::new();
        for change in &d.apps {
            let name = change.name();
            if failed.contains_key(name) {
                continue;
            }
            match change {
                AppChange::Removed(_) => {
                    if let Some(old) = self.apps.remove(name) {
                        retire.push((old.generation, old.app.spec.drain_timeout));
                    }
                }
                AppChange::Added(_) | AppChange::Restart { .. } => {
                    let (Some(g), Some(app)) = (new_generations.remove(name), ready.get(name))
                    else {
                        continue;
                    };
                    let running = RunningApp {
                        app: app.clone(),
                        generation: g,
                    };
                    if let Some(old) = self.apps.insert(name.to_string(), running) {
                        retire.push((old.generation, app.spec.drain_timeout));
                    }
                }
                AppChange::Update { .. } | AppChange::Unchanged(_) => {}
            }
        }
        self.config = effective;
        self.refresh_specs();
        self.publish(front);
        for (addr, listener) in bound {
            self.server.add(addr, listener);
        }
        for addr in &d.listen_removed {
            self.server.remove(addr).await;
        }
        for (g, drain) in retire {
            self.supervisor.retire(g.id, drain);
        }
        self.update_code_watchers();

        let restarted: BTreeSet<String> = d
            .apps
            .iter()
            .filter(|c| matches!(c, AppChange::Restart { .. }) && !failed.contains_key(c.name()))
            .map(|c| c.name().to_string())
            .collect();
        let summary = self.summarize(&d, &failed);
        let outcome = if failed.is_empty() {
            Outcome::Applied
        } else {
            Outcome::PartlyApplied
        };
        let verb = match outcome {
            Outcome::Applied => "applied",
            _ => "partly applied",
        };
        let errors = failed.iter().map(|(app, f)| failure_text(app, f)).collect();
        let report = Report {
            number,
            cause: cause.to_string(),
            outcome,
            summary: format!("{head}: {verb} in {}: {summary}", elapsed(started)),
            errors,
        };
        (self.finish(report), restarted)
    }

    /// A zero-downtime restart of one app with its current spec (its code changed).
    async fn reload_code(&mut self, name: &str, file: &Path) {
        let Some(app) = self.apps.get(name).map(|a| a.app.clone()) else {
            return;
        };
        let number = self.begin();
        let started = Instant::now();
        let cause = Cause::Code {
            file: file.to_path_buf(),
        }
        .to_string();
        let g = self.supervisor.start(&app);
        self.wake_if_running(name, &g);
        let report = match g.wait_ready(app.spec.startup_timeout + READY_MARGIN).await {
            Ok(pids) => {
                let old = self.apps.insert(
                    name.to_string(),
                    RunningApp {
                        app: app.clone(),
                        generation: g,
                    },
                );
                self.publish(None);
                if let Some(old) = old {
                    self.supervisor
                        .retire(old.generation.id, app.spec.drain_timeout);
                }
                Report {
                    number,
                    cause: cause.clone(),
                    outcome: Outcome::Applied,
                    summary: format!(
                        "reload #{number} ({cause}): applied in {}: restarted {name} (code, pid {})",
                        elapsed(started),
                        join_pids(&pids)
                    ),
                    errors: Vec::new(),
                }
            }
            Err(f) => {
                self.supervisor.stop(g.id);
                log_failure(name, &f);
                Report {
                    number,
                    cause: cause.clone(),
                    outcome: Outcome::PartlyApplied,
                    summary: format!(
                        "reload #{number} ({cause}): not applied after {}: {}",
                        elapsed(started),
                        failure_text(name, &f)
                    ),
                    errors: vec![failure_text(name, &f)],
                }
            }
        };
        self.finish(report);
    }

    /// Gives apps whose processes stayed their new spec (routes and settings may differ; a
    /// process setting cannot, or the app would have a new generation).
    fn refresh_specs(&mut self) {
        for spec in &self.config.apps {
            if let Some(running) = self.apps.get_mut(&spec.name) {
                running.app.spec = spec.clone();
            }
        }
    }

    /// A new generation of an on-demand app starts at once when the one it replaces has
    /// processes running (so the switch is as seamless as for any app); else it waits for a
    /// request.
    fn wake_if_running(&self, name: &str, new: &Generation) {
        let running = self
            .apps
            .get(name)
            .is_some_and(|r| !r.generation.pids().is_empty());
        if let (true, Some(d)) = (running, &new.demand) {
            d.wake();
        }
    }

    /// Replaces the live snapshot in one step: a table that leads to the current generations,
    /// with the new front settings if given (else the current ones).
    fn publish(&mut self, front: Option<Front>) {
        let table = Reloader::table(
            &self.config.apps,
            |name| self.apps.get(name).map(|a| &a.generation),
            &self.metrics,
        );
        let front = match front {
            Some(f) => {
                self.server.set_max_connections(f.limits.max_connections);
                Arc::new(f)
            }
            None => self.live.borrow().front.clone(),
        };
        self.live.send_replace(Arc::new(Live {
            routes: Arc::new(table),
            front,
        }));
        self.publish_overview();
    }

    /// Starts a code watcher for each app with `reload_on_changes`, stops the others'.
    fn update_code_watchers(&mut self) {
        let wanted: HashMap<&str, Vec<PathBuf>> = self
            .config
            .apps
            .iter()
            .filter(|a| a.reload_on_changes)
            .map(|a| (a.name.as_str(), crate::watch::code_roots(a)))
            .collect();
        self.code_watchers
            .retain(|name, w| wanted.get(name.as_str()) == Some(&w.roots));
        for (name, roots) in wanted {
            if self.code_watchers.contains_key(name) {
                continue;
            }
            match CodeWatcher::start(name, roots, self.triggers.clone()) {
                Ok(w) => {
                    self.code_watchers.insert(name.to_string(), w);
                }
                Err(e) => tracing::error!("[{name}] reload_on_changes: {e}"),
            }
        }
    }

    fn summarize(&self, d: &diff::ConfigDiff, failed: &BTreeMap<String, StartFailure>) -> String {
        let pids = |name: &str| {
            self.apps
                .get(name)
                .map(|a| join_pids(&a.generation.pids()))
                .unwrap_or_default()
        };
        let (mut added, mut removed, mut restarted) = (Vec::new(), Vec::new(), Vec::new());
        let (mut rerouted, mut updated, mut unchanged) = (Vec::new(), Vec::new(), Vec::new());
        for c in &d.apps {
            let name = c.name();
            if failed.contains_key(name) {
                continue;
            }
            match c {
                AppChange::Added(_) => added.push(format!("{name} (pid {})", pids(name))),
                AppChange::Removed(_) => removed.push(name.to_string()),
                AppChange::Restart { keys, .. } => {
                    restarted.push(format!("{name} ({}; pid {})", keys.join(", "), pids(name)))
                }
                AppChange::Update { keys, reroute, .. } => {
                    let list = if *reroute {
                        &mut rerouted
                    } else {
                        &mut updated
                    };
                    list.push(format!("{name} ({})", keys.join(", ")));
                }
                AppChange::Unchanged(_) => unchanged.push(name.to_string()),
            }
        }
        let failed: Vec<String> = failed
            .iter()
            .map(|(app, f)| format!("{app} (kept its previous processes: {})", f.reason))
            .collect();
        let listening: Vec<String> = d.listen_added.iter().map(SocketAddr::to_string).collect();
        let closed: Vec<String> = d.listen_removed.iter().map(SocketAddr::to_string).collect();
        [
            ("added", added),
            ("removed", removed),
            ("restarted", restarted),
            ("re-routed", rerouted),
            ("updated", updated),
            ("failed", failed),
            ("unchanged", unchanged),
            ("listening on", listening),
            ("closed", closed),
        ]
        .into_iter()
        .filter(|(_, items)| !items.is_empty())
        .map(|(label, items)| format!("{label} {}", items.join(", ")))
        .collect::<Vec<_>>()
        .join("; ")
    }

    /// Stops everything: no new connections, requests in flight finish, then every child stops.
    pub async fn shutdown(self) {
        drop(self.code_watchers);
        tracing::info!("stopping: no new connections; finishing requests in flight");
        self.server.shutdown().await;
        tracing::info!("stopping children");
        self.supervisor.shutdown().await;
    }
}

fn runtime_dir_problem(new: &Config) -> Problem {
    let text = std::fs::read_to_string(&new.file).unwrap_or_default();
    let location = crate::config::Locator::new(&text).key("runtime_dir");
    Problem {
        file: new.file.clone(),
        location,
        app: None,
        key: Some("runtime_dir".into()),
        message:
            "cannot change while wsgimux runs (its sockets live there); restart wsgimux to move it"
                .into(),
    }
}

fn failure_text(app: &str, f: &StartFailure) -> String {
    format!(
        "app {app}: new processes did not start, the previous ones keep serving: {}",
        f.reason
    )
}

fn log_failure(app: &str, f: &StartFailure) {
    let skip = f.stderr.len().saturating_sub(LOGGED_STDERR_LINES);
    let tail: Vec<&str> = f.stderr[skip..].iter().map(String::as_str).collect();
    if tail.is_empty() {
        tracing::error!("[{app}] new generation failed: {}", f.reason);
    } else {
        tracing::error!(
            "[{app}] new generation failed: {}; its last stderr lines:\n{}",
            f.reason,
            tail.join("\n")
        );
    }
}

fn join_pids(pids: &[u32]) -> String {
    pids.iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

fn elapsed(since: Instant) -> String {
    format!("{:.2}s", since.elapsed().as_secs_f64())
}
