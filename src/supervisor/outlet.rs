//! What one process slot shows the world, and the only way it does: its endpoint in the
//! generation's ready list (read by `proxy`), its entry in the generation's views (read by
//! `status`), and the generation's first start failure (read by `reload`) — with the slot's
//! count of failed starts in a row, which decides when it shows as `failing`.

use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use tokio::sync::watch;

use crate::upstream::{Endpoint, Endpoints};

use super::generation::{ProcessState, ProcessView, StartFailure};
use super::plan::AppPlan;
use super::policy::Failures;

pub(super) struct Outlet {
    pub(super) plan: Arc<AppPlan>,
    pub(super) slot: usize,
    endpoints: Arc<watch::Sender<Endpoints>>,
    /// The generation's first start failure, shared by its slots.
    failure: Arc<watch::Sender<Option<StartFailure>>>,
    views: Arc<Mutex<Vec<ProcessView>>>,
    pub(super) failures: Failures,
    /// What the last failed start said (reason and output), so the same is not logged twice.
    last_failure: Option<String>,
}

impl Outlet {
    pub(super) fn new(
        plan: Arc<AppPlan>,
        slot: usize,
        endpoints: Arc<watch::Sender<Endpoints>>,
        failure: Arc<watch::Sender<Option<StartFailure>>>,
        views: Arc<Mutex<Vec<ProcessView>>>,
    ) -> Self {
        Outlet {
            plan,
            slot,
            endpoints,
            failure,
            views,
            failures: Failures::default(),
            last_failure: None,
        }
    }

    /// Updates this slot's entry in the generation's views.
    pub(super) fn view(&self, f: impl FnOnce(&mut ProcessView)) {
        if let Ok(mut views) = self.views.lock() {
            if let Some(v) = views.get_mut(self.slot) {
                f(v);
            }
        }
    }

    /// Adds (Some) or removes (None) this slot's endpoint in the app's ready list (`pid` names
    /// the one to remove).
    pub(super) fn publish(&self, endpoint: Option<Arc<Endpoint>>, pid: u32) {
        self.endpoints.send_modify(|eps| {
            let mut list: Vec<Arc<Endpoint>> = eps
                .ready
                .iter()
                .filter(|e| e.pid() != pid)
                .cloned()
                .collect();
            if endpoint.is_some() {
                eps.starting = false;
                eps.failing = false;
            }
            list.extend(endpoint);
            eps.ready = list.into();
        });
    }

    /// A start that answered after failed ones: says it recovered, and stops showing failing.
    pub(super) fn recovered(&mut self) {
        if self.failures.failing() {
            tracing::info!(
                "[{}] process {} started, after {} failed starts",
                self.plan.name,
                self.slot,
                self.failures.in_a_row()
            );
        }
        self.failures.reset();
        self.last_failure = None;
        self.view(|v| {
            v.failing_since = None;
            v.last_error = None;
        });
    }

    /// Reports the slot's failed start; `stderr`: the child's last lines, if it ran; `output`:
    /// what it printed, logged with the failure at ERROR when it differs from the last
    /// failure's (the same traceback on every retry is logged once). After
    /// `Failures::FAILING_AFTER` failures in a row the slot is `failing`.
    pub(super) fn start_failed(
        &mut self,
        reason: String,
        stderr: Vec<String>,
        output: Vec<String>,
    ) {
        let slot = self.slot;
        // Requests waiting for the first start get their 503 now, saying it failed.
        self.endpoints.send_if_modified(|eps| {
            let failing = eps.ready.is_empty();
            let changed = eps.starting || eps.failing != failing;
            eps.starting = false;
            eps.failing = failing;
            changed
        });
        self.log_failure(&reason, &output);
        self.failures.failed();
        if self.failures.failing() {
            let last_error = reason.rsplit(": ").next().map(str::to_string);
            self.view(|v| {
                v.state = ProcessState::Failing;
                v.failing_since.get_or_insert_with(SystemTime::now);
                v.last_error = last_error.or(Some(reason.clone()));
            });
        }
        self.failure.send_if_modified(|f| {
            let first = f.is_none();
            if first {
                *f = Some(StartFailure {
                    slot,
                    reason,
                    stderr,
                });
            }
            first
        });
    }

    /// The failure's log record, unless it is the last one's again.
    fn log_failure(&mut self, reason: &str, output: &[String]) {
        let slot = self.slot;
        // Compared without the `[app:pid]` prefixes: every retry has a new pid.
        let unprefixed: Vec<&str> = output
            .iter()
            .map(|l| l.split_once("] ").map_or(l.as_str(), |(_, rest)| rest))
            .collect();
        let said = format!("{reason}\n{}", unprefixed.join("\n"));
        let name = &self.plan.name;
        if self.last_failure.as_deref() == Some(said.as_str()) {
            tracing::debug!("[{name}] process {slot} failed to start again, the same way");
            return;
        }
        if output.is_empty() {
            tracing::error!("[{name}] process {slot} failed to start: {reason}");
        } else if crate::logfile::json_log() {
            // One record; the output (a traceback, mostly) as its `exception`.
            let app = &**name;
            tracing::error!(
                app,
                exception = unprefixed.join("\n"),
                "[{name}] process {slot} failed to start: {reason}"
            );
        } else {
            tracing::error!(
                "[{name}] process {slot} failed to start: {reason}\n{}",
                output.join("\n")
            );
        }
        self.last_failure = Some(said);
    }
}
