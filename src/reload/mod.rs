//! Hot reload: the running state (the effective config, each app's current generation, the
//! listeners) and the only writer of the live snapshot (`proxy::Live`), its first value
//! included.
//!
//! A reload validates the file exactly as `serve` does, diffs it against what runs
//! (`config::diff`), then applies only the difference in named steps (`apply`): plan → prepare
//! the front → start generations → switch → report. A generation that does not become ready
//! leaves its app as it was (rollback). Does not parse YAML, watch files or speak HTTP:
//! triggers come from `watch`, `control` and signals.
//!
//! Rooms: `model` (what runs, and the one function that changes it, pure), `apply` (the
//! steps), `report` (the summary line and failures, pure).

mod apply;
mod model;
mod report;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::{mpsc, watch};

use crate::accesslog::AccessSink;
use crate::config::{AppSpec, Config};
use crate::metrics::Registry;
use crate::proxy::{AppRoute, Front, Live, Proxy, Table};
use crate::routes::RouteTable;
use crate::server::Server;
use crate::status::{AppOverview, Overview, Tally};
use crate::supervisor::{Generation, Supervisor};
use crate::trigger::{Cause, Report, Trigger};
use crate::watch::{self as filewatch, CodeWatcher, Fingerprint, RestartFileWatcher};
pub use model::{Running, RunningApp};

/// How long a config file that does not load is given to be written whole, when only the
/// watcher asked; and at most how many such waits in a row (a file that keeps changing and
/// never loads is reported after them).
const INCOMPLETE_WAIT: std::time::Duration = std::time::Duration::from_millis(500);
const INCOMPLETE_LOOKS: u32 = 4;

/// Everything a reload reads and changes.
pub struct Reloader {
    /// The config file as given to `serve` (absolute, symlinks not resolved).
    path: PathBuf,
    /// What runs (the effective config, each app's generation): changed only through
    /// `Running::next`.
    running: Running<Generation>,
    /// The restart-only keys the file changed (they wait for a restart of wsgimux), as of the
    /// last reload that read it.
    pending: Vec<&'static str>,
    supervisor: Supervisor,
    server: Server,
    /// What every connection and request reads; written only here, the first value included.
    live: watch::Sender<Arc<Live>>,
    code_watchers: HashMap<String, CodeWatcher>,
    /// The apps' `restart_file` pollers.
    restart_files: HashMap<String, RestartFileWatcher>,
    triggers: mpsc::Sender<Trigger>,
    /// Config reloads and restarts so far, each with its last report.
    reloads: Tally,
    restarts: Tally,
    /// The last report of either kind (what the service manager's status line shows).
    last: Option<Report>,
    /// The version of the file the last config reload read.
    loaded: Option<Fingerprint>,
    /// A version that did not load when only the watcher asked (looked at again once), and
    /// how many such looks in a row.
    unsettled: Option<Fingerprint>,
    deferrals: u32,
    /// Each app's counters, kept across reloads.
    metrics: Arc<Registry>,
    /// What `status` shows: replaced whenever what runs changes.
    overview: watch::Sender<Arc<Overview>>,
    started: std::time::SystemTime,
    /// Keeps the certificates the config in force needs (told at every publish).
    certificates: crate::acme::Manager,
}

impl Reloader {
    /// Takes over what `serve` started (the apps' first generations, the bound listeners) and
    /// starts serving: the first live snapshot, the proxy and the server.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        path: PathBuf,
        config: Config,
        apps: Vec<RunningApp<Generation>>,
        supervisor: Supervisor,
        front: Front,
        listeners: Vec<(SocketAddr, tokio::net::TcpListener)>,
        triggers: mpsc::Sender<Trigger>,
        metrics: Arc<Registry>,
        overview: watch::Sender<Arc<Overview>>,
    ) -> Self {
        let apps: BTreeMap<String, RunningApp<Generation>> = apps
            .into_iter()
            .map(|a| (a.app.spec.name.clone(), a))
            .collect();
        let routes = table(&config, &apps, &metrics);
        let running = Running {
            config: Arc::new(config),
            apps,
        };
        let (live, live_rx) = watch::channel(Arc::new(Live {
            routes: Arc::new(routes),
            front: Arc::new(front),
        }));
        let certificates = crate::acme::Manager::start();
        certificates.apply(&running.config);
        let mut server = Server::new(Arc::new(Proxy::new(live_rx)));
        for (addr, listener) in listeners {
            server.add(addr, listener);
        }
        let mut r = Reloader {
            path,
            running,
            pending: Vec::new(),
            supervisor,
            server,
            live,
            code_watchers: HashMap::new(),
            restart_files: HashMap::new(),
            triggers,
            reloads: Tally::default(),
            restarts: Tally::default(),
            certificates,
            last: None,
            loaded: None,
            unsettled: None,
            deferrals: 0,
            metrics,
            overview,
            started: std::time::SystemTime::now(),
        };
        r.update_code_watchers();
        r.publish_overview();
        r.check_invariants();
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
        let mut restarts = Vec::new();
        for t in batch {
            match t {
                Trigger::ConfigFile => file = true,
                Trigger::Hangup => hangup = true,
                Trigger::Command(reply) => waiting.push(reply),
                Trigger::Code { app, file } => {
                    code.entry(app).or_insert(file);
                }
                Trigger::Restart { apps, reply } => restarts.push((apps, reply)),
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
            // Only the watcher asked, and not for a version already looked at twice: a file
            // that does not load may still be being written.
            let may_defer = cause == Cause::ConfigFile
                && self.unsettled.as_ref() != Some(&version)
                && self.deferrals < INCOMPLETE_LOOKS;
            match self.reload_config(&cause, may_defer).await {
                None => self.look_again(version),
                Some((report, r)) => {
                    (self.loaded, self.unsettled, self.deferrals) = (Some(version), None, 0);
                    restarted = r;
                    for w in waiting {
                        let _ = w.send(report.clone());
                    }
                }
            }
        }
        for (app, file) in code {
            if !restarted.contains(&app) {
                let cause = Cause::Code { file };
                self.restart_apps(&[app], &cause).await;
            }
        }
        for (apps, reply) in restarts {
            let cause = Cause::Restart { apps: apps.clone() };
            let report = self.restart_apps(&apps, &cause).await;
            let _ = reply.send(report);
        }
    }

    /// A file read from the watcher's trigger did not load: looked at again in a moment, as
    /// a new trigger (the rest of a write usually brings its own first). Unchanged by then,
    /// it is reported.
    fn look_again(&mut self, version: Fingerprint) {
        tracing::debug!("the config file does not load yet; looking again in a moment");
        self.unsettled = Some(version);
        self.deferrals += 1;
        let triggers = self.triggers.clone();
        tokio::spawn(async move {
            tokio::time::sleep(INCOMPLETE_WAIT).await;
            let _ = triggers.send(Trigger::ConfigFile).await;
        });
    }

    /// Replaces the live snapshot in one step: a table that leads to the current generations,
    /// with the new front settings if given (else the current ones). What `status` shows
    /// follows at the change's one exit (`finish`).
    fn publish(&mut self, front: Option<Front>) {
        let routes = table(&self.running.config, &self.running.apps, &self.metrics);
        let front = match front {
            Some(f) => {
                self.server.set_max_connections(f.limits.max_connections);
                Arc::new(f)
            }
            None => self.live.borrow().front.clone(),
        };
        self.live.send_replace(Arc::new(Live {
            routes: Arc::new(routes),
            front,
        }));
        self.certificates.apply(&self.running.config);
    }

    /// Replaces what `status` shows with what runs now.
    fn publish_overview(&self) {
        let listeners = self
            .listener_urls()
            .into_iter()
            .map(|(scheme, local)| format!("{scheme}://{local}"))
            .collect();
        let apps = self
            .running
            .config
            .apps
            .iter()
            .filter_map(|spec| {
                let r = self.running.apps.get(&spec.name)?;
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
            effective: Some(self.running.config.clone()),
            pending_restart: self.pending.iter().map(|k| k.to_string()).collect(),
            reloads: self.reloads.clone(),
            restarts: self.restarts.clone(),
            unrouted: Some(self.live.borrow().front.access.unrouted.clone()),
            file_certificates: self
                .live
                .borrow()
                .front
                .tls
                .values()
                .filter(|t| t.store.spec().source == crate::config::CertSource::Files)
                .map(|t| t.store.clone())
                .collect(),
        }));
    }

    /// What every reload and restart leaves true, checked at their one exit (`finish`) in
    /// debug builds, so every test checks it: the model's own rules (`Running::problems`), and
    /// the live table leads to exactly the running apps, each to its current generation.
    fn check_invariants(&self) {
        if !cfg!(debug_assertions) {
            return;
        }
        let problems = self.running.problems();
        assert!(
            problems.is_empty(),
            "the reload model is broken: {problems:?}"
        );
        let live = self.live.borrow().clone();
        let mut routed = BTreeSet::new();
        for (_, route) in live.routes.entries() {
            let name = &*route.target.name;
            let current = self.running.apps.get(name).map(|a| a.generation.id);
            assert_eq!(
                current,
                Some(route.target.generation),
                "the table leads app {name} to its current generation"
            );
            routed.insert(name.to_string());
        }
        let running: BTreeSet<String> = self.running.apps.keys().cloned().collect();
        assert_eq!(
            routed, running,
            "the table leads to exactly the running apps"
        );
    }

    /// Starts a code watcher for each app with `reload_on_changes`, stops the others'.
    fn update_code_watchers(&mut self) {
        let config = self.running.config.clone();
        let wanted: HashMap<&str, Vec<PathBuf>> = config
            .apps
            .iter()
            .filter(|a| a.lifecycle.reload_on_changes)
            .map(|a| (a.name.as_str(), filewatch::code_roots(a)))
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
        let wanted: HashMap<&str, &PathBuf> = config
            .apps
            .iter()
            .filter_map(|a| Some((a.name.as_str(), a.lifecycle.restart_file.as_ref()?)))
            .collect();
        self.restart_files
            .retain(|name, w| wanted.get(name.as_str()) == Some(&&w.file));
        for (name, file) in wanted {
            if !self.restart_files.contains_key(name) {
                let w = RestartFileWatcher::start(name, file.clone(), self.triggers.clone());
                self.restart_files.insert(name.to_string(), w);
            }
        }
    }

    /// Stops everything: no new connections, requests in flight finish, then every child stops.
    pub async fn shutdown(self) {
        drop(self.code_watchers);
        drop(self.restart_files);
        tracing::info!("stopping: no new connections; finishing requests in flight");
        self.server.shutdown().await;
        tracing::info!("stopping children");
        self.supervisor.shutdown().await;
        // The log queues' last lines are written by `main`, as the process ends.
    }
}

/// The route table for the running apps, in config order.
fn table(
    config: &Config,
    apps: &BTreeMap<String, RunningApp<Generation>>,
    metrics: &Registry,
) -> Table {
    RouteTable::for_apps(config.apps.iter().filter_map(|spec| {
        let g = &apps.get(&spec.name)?.generation;
        let mut route = AppRoute::new(
            spec,
            g.id,
            g.endpoints.clone(),
            metrics.app(&spec.name),
            g.demand.clone(),
        );
        route.access = app_access_log(spec, config.log_format);
        Some((spec, Arc::new(route)))
    }))
}

/// The app's own access log, opened (a file already open for another app or an earlier
/// snapshot is shared); one that cannot be opened sends the app's lines to the top-level log,
/// and says so.
fn app_access_log(spec: &AppSpec, format: crate::config::LogFormat) -> Option<Arc<AccessSink>> {
    let wanted = spec.route.access_log.as_ref()?;
    match AccessSink::open(wanted, format, Arc::default()) {
        Ok(sink) => Some(Arc::new(sink)),
        Err(e) => {
            tracing::error!(
                "[{}] cannot open its access_log: {e}; its requests are logged with the others",
                spec.name
            );
            None
        }
    }
}

#[cfg(test)]
mod tests;
