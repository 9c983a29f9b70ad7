//! One reload, in named steps: plan (load and check the file, diff it against what runs) →
//! prepare the front (certificates, access log, new listeners bound) → start the new
//! generations, all at once → switch (one snapshot swap, listeners added and closed, replaced
//! generations retired) → report. Anything refused before the switch rejects the reload with
//! nothing changed, through one path; an app whose new processes fail keeps its old ones.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::config::diff::{self, AppChange, ConfigDiff};
use crate::config::Config;
use crate::preflight::ReadyApp;
use crate::proxy::Front;
use crate::server;
use crate::status::Tally;
use crate::supervisor::{Generation, StartFailure};
use crate::trigger::{Cause, Kind, Outcome, Report};

use super::model;
use super::report;
use super::Reloader;

/// Beyond an app's `startup_timeout`, how long a reload waits for its new generation (the
/// processes time out by themselves first and say why).
const READY_MARGIN: Duration = Duration::from_secs(2);

/// What a reload is to do, worked out before anything changes.
pub(super) struct Plan {
    pub(super) new: Config,
    pub(super) ready: HashMap<String, ReadyApp>,
    pub(super) diff: ConfigDiff,
}

/// Why a plan was refused: the file does not load (it may be half-written), or it asks for
/// what a running wsgimux cannot take.
pub(super) enum Refusal {
    Load(Vec<String>),
    Reload(Vec<String>),
}

/// The front a reload brings: its new settings if they changed, its new listeners bound.
pub(super) struct PreparedFront {
    pub(super) front: Option<Front>,
    pub(super) bound: Vec<(SocketAddr, tokio::net::TcpListener)>,
}

/// The new generations: those that answer, why the others did not start, and the apps added
/// by this reload that did not start — kept (their routes answer 503 "failed to start" and
/// their processes are retried) rather than dropped, which would hand their URLs to another
/// app.
pub(super) struct Started {
    pub(super) ready: HashMap<String, Generation>,
    pub(super) failed: BTreeMap<String, StartFailure>,
    pub(super) added_failing: BTreeMap<String, (Generation, StartFailure)>,
}

impl Reloader {
    /// Reloads the config file; returns the report and the apps that got new processes. None
    /// when `may_defer` and the file does not load (read by the watcher's trigger while an
    /// editor or tool was still writing it, most often): nothing happened, and it is to be
    /// looked at again.
    pub(super) async fn reload_config(
        &mut self,
        cause: &Cause,
        may_defer: bool,
    ) -> Option<(Report, BTreeSet<String>)> {
        let clock = Instant::now();
        let planned = self.plan().await;
        if may_defer && matches!(planned, Err(Refusal::Load(_))) {
            return None;
        }
        let number = self.begin(cause);
        let prepared = match planned {
            Ok(plan) => self.prepare_front(&plan).await.map(|front| (plan, front)),
            Err(Refusal::Load(errors) | Refusal::Reload(errors)) => Err(errors),
        };
        let (plan, front) = match prepared {
            Ok(x) => x,
            Err(errors) => {
                let report = report::rejected(number, cause, errors);
                return Some((self.finish(report), BTreeSet::new()));
            }
        };
        self.pending = plan.diff.restart_only.clone();
        if plan.diff.is_empty() {
            // Through the model all the same: positions and comments follow the file.
            let started = model::Started::default();
            self.running
                .next(&plan.new, &plan.diff, &plan.ready, started);
            let report = report::unchanged(number, cause, clock, &self.pending);
            return Some((self.finish(report), BTreeSet::new()));
        }
        let started = self.start_generations(&plan).await;
        let restarted = self.switch(plan, front, &started).await;
        let failing = started
            .added_failing
            .iter()
            .map(|(name, (_, f))| (name.clone(), f.clone()))
            .collect();
        let report = report::applied(number, cause, clock, restarted.1, &started.failed, &failing)
            .with_pending(&self.pending);
        Some((self.finish(report), restarted.0))
    }

    /// Step 1: load and check the file as `serve` does, and diff it against what runs. The
    /// same `python:` may now be another interpreter (a venv rebuilt, a pyenv upgrade): then
    /// the app restarts.
    pub(super) async fn plan(&self) -> Result<Plan, Refusal> {
        // The one read of the file for this reload: read, parsed and validated once.
        let (new, ready) = crate::preflight::load(&self.path).await.map_err(|e| {
            Refusal::Load(
                e.to_string()
                    .lines()
                    .map(str::to_string)
                    .collect::<Vec<_>>(),
            )
        })?;
        let refused = diff::reload_problems(&self.running.config, &new);
        if !refused.is_empty() {
            return Err(Refusal::Reload(
                refused.iter().map(ToString::to_string).collect(),
            ));
        }
        let mut d = diff::diff(&self.running.config, &new);
        let ready: HashMap<String, ReadyApp> = ready
            .into_iter()
            .map(|a| (a.spec.name.clone(), a))
            .collect();
        for change in &mut d.apps {
            let (spec, mut keys) = match change {
                AppChange::Update { spec, keys, .. } => (spec.clone(), keys.clone()),
                AppChange::Unchanged(spec) => (spec.clone(), Vec::new()),
                _ => continue,
            };
            let now = ready.get(&spec.name).map(|a| &a.interpreter);
            let before = self
                .running
                .apps
                .get(&spec.name)
                .map(|a| &a.app.interpreter);
            if now.is_some() && now != before {
                keys.insert(0, "python");
                *change = AppChange::Restart { spec, keys };
            }
        }
        Ok(Plan {
            new,
            ready,
            diff: d,
        })
    }

    /// Step 2: certificates and the access log loaded, new listeners bound — before anything
    /// else changes, so a failure rejects the reload with nothing started.
    pub(super) async fn prepare_front(&self, plan: &Plan) -> Result<PreparedFront, Vec<String>> {
        let front = if plan.diff.front_changed {
            let current = self.live.borrow().front.clone();
            let built = Front::build(&plan.new, Some(&current)).map_err(|e| vec![e.to_string()]);
            Some(built?)
        } else {
            None
        };
        let bound = server::bind(&plan.diff.listen_added)
            .await
            .map_err(|e| vec![e.to_string()])?;
        Ok(PreparedFront { front, bound })
    }

    /// Step 3: a new generation for every added or restarted app, all started at once, each
    /// waited for up to its startup_timeout; one that fails is stopped.
    pub(super) async fn start_generations(&mut self, plan: &Plan) -> Started {
        let mut starting: Vec<(String, Generation, Duration, bool)> = Vec::new();
        for change in &plan.diff.apps {
            if let AppChange::Added(spec) | AppChange::Restart { spec, .. } = change {
                if let Some(app) = plan.ready.get(&spec.name) {
                    let g = self.supervisor.start(app);
                    self.wake_if_running(&spec.name, &g);
                    let added = matches!(change, AppChange::Added(_));
                    let limit = spec.lifecycle.startup_timeout;
                    starting.push((spec.name.clone(), g, limit, added));
                }
            }
        }
        let waits = starting
            .iter()
            .map(|(_, g, limit, _)| g.wait_ready(*limit + READY_MARGIN));
        let results = futures_util::future::join_all(waits).await;
        let mut started = Started {
            ready: HashMap::new(),
            failed: BTreeMap::new(),
            added_failing: BTreeMap::new(),
        };
        for ((name, g, _, added), result) in starting.into_iter().zip(results) {
            match result {
                Ok(_) => {
                    started.ready.insert(name, g);
                }
                Err(f) if added => {
                    started.added_failing.insert(name, (g, f));
                }
                Err(f) => {
                    self.supervisor.stop(g.id);
                    report::log_failure(&name, &f);
                    started.failed.insert(name, f);
                }
            }
        }
        started
    }

    /// Step 4: what runs next, from the model (`Running::next`: the diff as far as it could
    /// be carried out); new and re-routed apps in, removed ones out, in one snapshot swap; then
    /// listeners and retirements. Returns the apps that got new processes, and the summary of
    /// what changed.
    pub(super) async fn switch(
        &mut self,
        plan: Plan,
        front: PreparedFront,
        started: &Started,
    ) -> (BTreeSet<String>, String) {
        let mut generations = started.ready.clone();
        for (name, (g, _)) in &started.added_failing {
            generations.insert(name.clone(), g.clone());
        }
        let outcome = model::Started {
            generations,
            failed: started.failed.keys().cloned().collect(),
        };
        let changed = self
            .running
            .next(&plan.new, &plan.diff, &plan.ready, outcome);
        self.publish(front.front);
        for (addr, listener) in front.bound {
            self.server.add(addr, listener);
        }
        for addr in &changed.done.listen_removed {
            self.server.remove(addr).await;
        }
        for (g, drain) in changed.retired {
            self.supervisor.retire(g.id, drain);
        }
        self.update_code_watchers();
        let restarted = changed
            .done
            .apps
            .iter()
            .filter(|c| matches!(c, AppChange::Restart { .. }))
            .map(|c| c.name().to_string())
            .collect();
        let pids = |name: &str| self.running.apps.get(name).map(|a| a.generation.pids());
        let added_failing = started.added_failing.keys().cloned().collect();
        (
            restarted,
            report::summarize(&plan.diff, &started.failed, &added_failing, pids),
        )
    }

    /// A zero-downtime restart of `names` with their current specs (their code changed, or
    /// `wsgimux restart`): new processes for each, all at once; each app whose new processes
    /// answer is switched to them and its old ones drain; one whose new processes do not start
    /// keeps its old ones. Unknown names reject the whole request.
    pub(super) async fn restart_apps(&mut self, names: &[String], cause: &Cause) -> Report {
        let number = self.begin(cause);
        let clock = Instant::now();
        let unknown: Vec<&String> = names
            .iter()
            .filter(|n| !self.running.apps.contains_key(*n))
            .collect();
        if !unknown.is_empty() || names.is_empty() {
            let known: Vec<&str> = self.running.apps.keys().map(String::as_str).collect();
            let errors = match unknown.is_empty() {
                true => vec!["name the apps to restart".to_string()],
                false => unknown
                    .iter()
                    .map(|n| format!("no app is named {n:?} (apps: {})", known.join(", ")))
                    .collect(),
            };
            return self.finish(report::rejected(number, cause, errors));
        }
        let mut starting = Vec::new();
        for name in names {
            if let Some(running) = self.running.apps.get(name) {
                let app = (*running.app).clone();
                let serving = !running.generation.pids().is_empty();
                let g = self.supervisor.start(&app);
                self.wake_if_running(name, &g);
                starting.push((app, g, serving));
            }
        }
        let waits = starting
            .iter()
            .map(|(app, g, _)| g.wait_ready(app.spec.lifecycle.startup_timeout + READY_MARGIN));
        let results = futures_util::future::join_all(waits).await;
        let mut outcomes = Vec::new();
        let mut outcome = model::Started::default();
        let mut ready = HashMap::new();
        for ((app, g, serving), result) in starting.into_iter().zip(results) {
            let name = app.spec.name.clone();
            match result {
                Ok(pids) => {
                    outcome.generations.insert(name.clone(), g);
                    outcomes.push((name.clone(), report::Restarted::Done(pids)));
                }
                Err(f) => {
                    self.supervisor.stop(g.id);
                    report::log_failure(&name, &f);
                    outcome.failed.insert(name.clone());
                    let r = match serving {
                        true => report::Restarted::Kept(f),
                        false => report::Restarted::NeverStarted(f),
                    };
                    outcomes.push((name.clone(), r));
                }
            }
            ready.insert(name, app);
        }
        // A restart is the diff that restarts these apps with the specs they run.
        let config = self.running.config.clone();
        let restart = ConfigDiff::restart(&config, &outcome.generations.keys().cloned().collect());
        let changed = self.running.next(&config, &restart, &ready, outcome);
        for (g, drain) in changed.retired {
            self.supervisor.retire(g.id, drain);
        }
        self.publish(None);
        let report = report::restarted(number, cause, clock, &outcomes);
        self.finish(report)
    }

    /// A new generation of an on-demand app starts at once when the one it replaces has
    /// processes running (so the switch is as seamless as for any app); else it waits for a
    /// request.
    fn wake_if_running(&self, name: &str, new: &Generation) {
        let running = self
            .running
            .apps
            .get(name)
            .is_some_and(|r| !r.generation.pids().is_empty());
        if let (true, Some(d)) = (running, &new.demand) {
            d.wake();
        }
    }

    /// The number of this reload or restart (each kind counts its own).
    fn begin(&mut self, cause: &Cause) -> u64 {
        let tally = self.tally(cause.kind());
        tally.count += 1;
        tally.count
    }

    fn tally(&mut self, kind: Kind) -> &mut Tally {
        match kind {
            Kind::Reload => &mut self.reloads,
            Kind::Restart => &mut self.restarts,
        }
    }

    /// Logs the report, keeps it as the last one of its kind, and shows it in `status`.
    fn finish(&mut self, report: Report) -> Report {
        match report.outcome {
            Outcome::Applied | Outcome::Unchanged => tracing::info!("{}", report.summary),
            _ => tracing::error!("{}", report.summary),
        }
        self.tally(report.kind).last = Some((std::time::SystemTime::now(), report.clone()));
        self.last = Some(report.clone());
        self.publish_overview();
        // The one exit of every reload and restart, whatever it did.
        self.check_invariants();
        report
    }
}
