//! The reload model: what runs (the effective config and each app's current generation) and
//! the one function from (what runs, a diff carried out as far as it could be) to what runs
//! next, with the check every reload and restart ends with. Reloads, restarts and the
//! unchanged case all go through it.
//!
//! Pure: a generation is a type parameter (the supervisor's `Generation` in production, a
//! number in the replay test), so the tests replay the function production runs.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use crate::config::diff::{AppChange, ConfigDiff};
use crate::config::Config;
use crate::preflight::ReadyApp;

/// What the model needs of a generation: its identity.
pub trait Identified {
    /// Unique among all apps' generations.
    fn id(&self) -> u64;
}

impl Identified for crate::supervisor::Generation {
    fn id(&self) -> u64 {
        self.id
    }
}

/// One app as it runs: its spec and interpreter, and its current generation.
pub struct RunningApp<G> {
    pub app: Arc<ReadyApp>,
    pub generation: G,
}

/// What runs.
pub struct Running<G> {
    /// The config in force: the last one applied, restart-only keys at their running values,
    /// apps whose new generation failed at their previous spec.
    pub config: Arc<Config>,
    pub apps: BTreeMap<String, RunningApp<G>>,
}

/// What became of the generations a change started.
pub struct Started<G> {
    /// What each app runs from now on: the new generations that answer, and those of apps
    /// added by this change that did not start (kept: their routes answer 503 while their
    /// processes are retried).
    pub generations: HashMap<String, G>,
    /// Apps that keep what they run: their new processes did not start (and were stopped).
    pub failed: BTreeSet<String>,
}

impl<G> Default for Started<G> {
    fn default() -> Self {
        Started {
            generations: HashMap::new(),
            failed: BTreeSet::new(),
        }
    }
}

/// What a change did besides changing what runs.
pub struct Changed<G> {
    /// The generations it replaced or removed, each with its app's drain_timeout: to retire.
    pub retired: Vec<(G, Duration)>,
    /// The diff as carried out (without the failed apps' changes).
    pub done: ConfigDiff,
}

impl<G: Identified> Running<G> {
    /// What runs once `diff` (from `self.config` to `file`) is carried out as `started` says:
    /// the effective config from `ConfigDiff` alone, added and restarted apps at their new
    /// generations (`ready` has their interpreters), updated apps at their new spec with the
    /// same processes, removed ones out.
    pub fn next(
        &mut self,
        file: &Config,
        diff: &ConfigDiff,
        ready: &HashMap<String, ReadyApp>,
        mut started: Started<G>,
    ) -> Changed<G> {
        let done = diff.without(&started.failed, &self.config.apps);
        self.config = Arc::new(done.effective(&self.config, file));
        let apps = &mut self.apps;
        let mut retired = Vec::new();
        for change in &done.apps {
            let name = change.name();
            match change {
                AppChange::Removed(_) => {
                    if let Some(old) = apps.remove(name) {
                        retired.push((old.generation, old.app.spec.lifecycle.drain_timeout));
                    }
                }
                AppChange::Added(spec) | AppChange::Restart { spec, .. } => {
                    let (Some(generation), Some(app)) =
                        (started.generations.remove(name), ready.get(name))
                    else {
                        continue;
                    };
                    let app = Arc::new(ReadyApp {
                        spec: spec.clone(),
                        ..app.clone()
                    });
                    let drain = spec.lifecycle.drain_timeout;
                    let new = RunningApp { app, generation };
                    if let Some(old) = apps.insert(name.to_string(), new) {
                        retired.push((old.generation, drain));
                    }
                }
                // Same processes; the spec (routes, lifecycle, positions) as the file says.
                AppChange::Update { spec, .. } | AppChange::Unchanged(spec) => {
                    if let Some(running) = apps.get_mut(name) {
                        if running.app.spec != *spec {
                            running.app = Arc::new(ReadyApp {
                                spec: spec.clone(),
                                ..(*running.app).clone()
                            });
                        }
                    }
                }
            }
        }
        Changed { retired, done }
    }

    /// What every change leaves true, as the broken rules (none when all hold): the effective
    /// config's apps are exactly the running apps, each running with the effective config's
    /// spec, and no two apps share a generation.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let configured: BTreeSet<&str> = self.config.apps.iter().map(|a| a.name.as_str()).collect();
        let running: BTreeSet<&str> = self.apps.keys().map(String::as_str).collect();
        if configured != running {
            problems.push(format!(
                "the config's apps {configured:?} are not the running apps {running:?}"
            ));
        }
        for spec in &self.config.apps {
            if let Some(r) = self.apps.get(&spec.name) {
                if r.app.spec != *spec {
                    problems.push(format!(
                        "app {} runs with another spec than the config's",
                        spec.name
                    ));
                }
            }
        }
        let ids: BTreeSet<u64> = self.apps.values().map(|a| a.generation.id()).collect();
        if ids.len() != self.apps.len() {
            problems.push("two apps share a generation".to_string());
        }
        problems
    }
}

#[cfg(test)]
mod tests;
