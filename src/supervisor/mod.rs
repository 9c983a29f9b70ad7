//! Every child process, grouped in generations: the plan for an app's processes, one slot
//! task per process (start, readiness, publish, restart with backoff, the process policy),
//! `upstream:` health checks, retiring a generation (drain, then stop) and stopping everything
//! at shutdown.
//!
//! The supervisor is the only writer of a generation's endpoint list (`upstream::Endpoints`);
//! `proxy` only reads it, and wakes dormant processes through `upstream::Demand`. Each slot
//! keeps its control state to itself and reports what it does in the generation's
//! `ProcessView` list, which only `status` reads. Every task it spawns is tracked: a stop
//! reaches every child it started (TERM, grace, KILL of the child's process group). Knows
//! nothing of routes, nor of HTTP beyond "the socket accepts a connection".
//!
//! Rooms: `generation` (the handle `reload` holds, and the view), `plan` (what to run),
//! `slot` (a process slot's loop), `policy` (its backoff, failing, idle, recycling and
//! on-demand rules, on tokio's clock), `start` (starting and stopping one process), `outlet`
//! (what a slot shows: endpoint, view, first failure), `health` (`upstream:` checks),
//! `child` (the OS process, its output).

mod child;
mod generation;
mod health;
mod imports;
mod memory;
mod outlet;
mod plan;
mod policy;
mod slot;
mod start;
mod traceback;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::config::StartMode;
use crate::metrics::Registry;
use crate::preflight::ReadyApp;
use crate::runtime_dir::WorkerFiles;
use crate::upstream::{Demand, Endpoints};

pub use child::INHERITED_PYTHON_VARS;
pub use generation::{Generation, ProcessState, ProcessView, StartFailure};
pub use imports::{check_imports, ImportFailure};
use slot::Slot;

/// A retired generation is left alone this long before its in-flight count is trusted: a
/// request that read the old route table just before the switch picks its process within it.
const RETIRE_SETTLE: Duration = Duration::from_millis(250);
const DRAIN_POLL: Duration = Duration::from_millis(20);

pub(crate) fn secs(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

struct LiveGeneration {
    app: Arc<str>,
    stop: watch::Sender<bool>,
    slots: JoinSet<()>,
    endpoints: watch::Receiver<Endpoints>,
}

pub struct Supervisor {
    runtime_dir: PathBuf,
    files: WorkerFiles,
    log_dir: Option<PathBuf>,
    /// Each app's counters (restarts are counted there, across generations).
    metrics: Arc<Registry>,
    next_generation: u64,
    /// Each app's generations so far (by name; kept when an app is removed and added again).
    numbers: HashMap<Arc<str>, u64>,
    live: HashMap<u64, LiveGeneration>,
    /// Generations being drained and stopped in the background.
    retiring: JoinSet<()>,
    /// Set at shutdown: drains stop waiting for requests (the front has finished them).
    shutting_down: watch::Sender<bool>,
}

impl Supervisor {
    pub fn new(
        runtime_dir: PathBuf,
        files: WorkerFiles,
        log_dir: Option<PathBuf>,
        metrics: Arc<Registry>,
    ) -> Self {
        Supervisor {
            runtime_dir,
            files,
            log_dir,
            metrics,
            next_generation: 1,
            numbers: HashMap::new(),
            live: HashMap::new(),
            retiring: JoinSet::new(),
            shutting_down: watch::channel(false).0,
        }
    }

    /// Starts a new generation of an app's processes. They restart with backoff when they exit,
    /// until the generation is retired or stopped.
    pub fn start(&mut self, app: &ReadyApp) -> Generation {
        while self.retiring.try_join_next().is_some() {}
        let id = self.next_generation;
        self.next_generation += 1;
        let plan = Arc::new(self.plan(app, id));
        let (endpoints_tx, endpoints_rx) = watch::channel(Endpoints {
            ready: Arc::new([]),
            // A dormant app is woken by demand, not waited for as starting.
            starting: app.spec.process.policy.start != StartMode::OnDemand,
            failing: false,
        });
        let endpoints_tx = Arc::new(endpoints_tx);
        let (failure_tx, failure_rx) = watch::channel(None);
        let failure_tx = Arc::new(failure_tx);
        let (stop_tx, stop_rx) = watch::channel(false);
        let processes = app.spec.process.processes as usize;
        let on_demand = app.spec.process.policy.start == StartMode::OnDemand;
        let initial = if on_demand {
            ProcessState::Idle
        } else {
            ProcessState::Starting
        };
        let views = Arc::new(Mutex::new(
            (0..processes)
                .map(|slot| ProcessView::new(slot, initial))
                .collect::<Vec<_>>(),
        ));
        let demand =
            (on_demand || app.spec.process.policy.idle_timeout.is_some()).then(Demand::default);
        let mut slots = JoinSet::new();
        for slot in 0..processes {
            let slot_task = Slot::new(
                plan.clone(),
                slot,
                endpoints_tx.clone(),
                failure_tx.clone(),
                stop_rx.clone(),
                views.clone(),
                demand.as_ref().map(Demand::subscribe),
            );
            slots.spawn(slot_task.run());
        }
        self.live.insert(
            id,
            LiveGeneration {
                app: plan.name.clone(),
                stop: stop_tx,
                slots,
                endpoints: endpoints_rx.clone(),
            },
        );
        let number = {
            let n = self.numbers.entry(plan.name.clone()).or_insert(0);
            *n += 1;
            *n
        };
        Generation {
            id,
            number,
            app: plan.name.clone(),
            processes,
            endpoints: endpoints_rx,
            failure: failure_rx,
            views,
            demand,
            on_demand,
        }
    }

    /// Stops a generation that nothing routes to and that never served (a failed start), at
    /// once and in the background.
    pub fn stop(&mut self, generation: u64) {
        if let Some(g) = self.live.remove(&generation) {
            self.retiring.spawn(stop_generation(g));
        }
    }

    /// Retires a generation that routes no longer lead to: waits (in the background, for at most
    /// `drain`) until its requests in flight are done, then stops its processes.
    pub fn retire(&mut self, generation: u64, drain: Duration) {
        let Some(g) = self.live.remove(&generation) else {
            return;
        };
        let mut shutting_down = self.shutting_down.subscribe();
        self.retiring.spawn(async move {
            let waited = tokio::select! {
                r = drain_requests(&g, drain) => r,
                _ = stopped(&mut shutting_down) => Ok(()),
            };
            if let Err(busy) = waited {
                tracing::warn!(
                    "[{}] generation {generation}: {busy} request(s) still running after drain_timeout {}; stopping anyway",
                    g.app,
                    secs(drain)
                );
            }
            stop_generation(g).await;
            tracing::debug!("generation {generation} stopped");
        });
    }

    /// Stops every generation: each child gets SIGTERM, then SIGKILL after [`STOP_GRACE`].
    pub async fn shutdown(mut self) {
        let _ = self.shutting_down.send(true);
        for (_, g) in self.live.drain() {
            self.retiring.spawn(stop_generation(g));
        }
        while self.retiring.join_next().await.is_some() {}
    }
}

/// Waits until no request is in flight on the generation's processes; Err(count) at `limit`.
async fn drain_requests(g: &LiveGeneration, limit: Duration) -> Result<(), usize> {
    let deadline = tokio::time::Instant::now() + limit;
    tokio::time::sleep(RETIRE_SETTLE.min(limit)).await;
    loop {
        let busy: usize = g
            .endpoints
            .borrow()
            .ready
            .iter()
            // Open WebSockets too: they close when their process stops.
            .map(|e| e.in_flight() + e.tunnels())
            .sum();
        if busy == 0 {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(busy);
        }
        tokio::time::sleep(DRAIN_POLL).await;
    }
}

async fn stop_generation(mut g: LiveGeneration) {
    let _ = g.stop.send(true);
    while g.slots.join_next().await.is_some() {}
}

/// Resolves when the stop flag is set or its sender is gone.
async fn stopped(rx: &mut watch::Receiver<bool>) {
    while !*rx.borrow_and_update() {
        if rx.changed().await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests;
