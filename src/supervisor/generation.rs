//! The handle on one generation of an app's processes that `reload`, `app` and `status` hold:
//! its endpoint list, its first start failure, and each slot's `ProcessView`. Watching only:
//! the supervisor owns the processes.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::watch;

use crate::upstream::{Demand, Endpoint, Endpoints};

use super::secs;

/// Why a process of a generation did not start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartFailure {
    pub slot: usize,
    pub reason: String,
    /// The child's last lines on stderr (a traceback, usually).
    pub stderr: Vec<String>,
}

/// One start of an app's processes under one spec. A reload that changes how an app runs starts
/// a new generation beside the old one, switches routes to it once it is ready, then retires the
/// old one; the supervisor owns the processes, the holder of this handle only watches them.
#[derive(Debug, Clone)]
pub struct Generation {
    /// Unique among all apps' generations (the supervisor's key for it; in socket names).
    pub id: u64,
    /// The app's own count: 1 for its first processes, 2 after its first restart or reload…
    pub number: u64,
    pub app: Arc<str>,
    pub processes: usize,
    pub endpoints: watch::Receiver<Endpoints>,
    pub(super) failure: watch::Receiver<Option<StartFailure>>,
    /// Each process slot's state, for `status`.
    pub views: Arc<Mutex<Vec<ProcessView>>>,
    /// Wakes the processes of an app that starts on demand or stops when idle.
    pub demand: Option<Demand>,
    /// Its processes start with the first request (`start: on_demand`).
    pub(super) on_demand: bool,
}

/// What a process slot is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProcessState {
    /// Started, not answering yet.
    Starting,
    Ready,
    /// Exited or failed to start; started again after a backoff.
    Restarting,
    /// Not running until a request comes (`start: on_demand`, or stopped by `idle_timeout`).
    Idle,
    /// A replacement is starting after `max_requests`; this one still serves.
    Recycling,
    /// Its threads are held by requests past their `request_timeout`: a replacement is
    /// starting.
    Stuck,
    Stopping,
    /// An `upstream:` server that does not accept connections.
    Down,
    /// Failed to start several times in a row: still retried, with a longer backoff.
    Failing,
}

impl ProcessState {
    pub const ALL: [ProcessState; 9] = [
        ProcessState::Starting,
        ProcessState::Ready,
        ProcessState::Restarting,
        ProcessState::Idle,
        ProcessState::Recycling,
        ProcessState::Stuck,
        ProcessState::Stopping,
        ProcessState::Down,
        ProcessState::Failing,
    ];

    /// As it is written in JSON and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            ProcessState::Starting => "starting",
            ProcessState::Ready => "ready",
            ProcessState::Restarting => "restarting",
            ProcessState::Idle => "idle",
            ProcessState::Recycling => "recycling",
            ProcessState::Stuck => "stuck",
            ProcessState::Stopping => "stopping",
            ProcessState::Down => "down",
            ProcessState::Failing => "failing",
        }
    }
}

/// One process slot as `status` shows it.
#[derive(Debug, Clone)]
pub struct ProcessView {
    pub slot: usize,
    pub pid: Option<u32>,
    pub state: ProcessState,
    /// When the current process started.
    pub started: Option<SystemTime>,
    /// Times the slot's process exited or failed to start and was started again.
    pub restarts: u32,
    /// Replacements after max_requests.
    pub recycles: u32,
    /// Replacements because its requests were stuck.
    pub stuck_replacements: u32,
    /// Replacements because it passed `max_memory`.
    pub memory_replacements: u32,
    /// The process's resident memory, its children's included, at the last sample.
    pub resident_bytes: Option<u64>,
    /// The ready process (its in-flight count and counters).
    pub endpoint: Option<Arc<Endpoint>>,
    /// How the last process ended, when it did by itself.
    pub last_exit: Option<String>,
    /// Since when the slot's starts fail (set once it is `failing`).
    pub failing_since: Option<SystemTime>,
    /// Why the last start failed (the error's last line), while it fails.
    pub last_error: Option<String>,
}

impl ProcessView {
    /// A slot before its first process: nothing counted yet.
    pub(super) fn new(slot: usize, state: ProcessState) -> Self {
        ProcessView {
            slot,
            pid: None,
            state,
            started: None,
            restarts: 0,
            recycles: 0,
            stuck_replacements: 0,
            memory_replacements: 0,
            resident_bytes: None,
            endpoint: None,
            last_exit: None,
            failing_since: None,
            last_error: None,
        }
    }
}

impl Generation {
    /// The pids of the processes answering now.
    pub fn pids(&self) -> Vec<u32> {
        let mut pids: Vec<u32> = self
            .endpoints
            .borrow()
            .ready
            .iter()
            .map(|e| e.pid())
            .collect();
        pids.sort_unstable();
        pids
    }

    /// True while the processes wait for a first request (`start: on_demand`), as `status`
    /// and the start-up lines show it.
    pub fn dormant(&self) -> bool {
        self.demand
            .as_ref()
            .is_some_and(|d| d.count() == 0 && self.pids().is_empty())
            && self.views().iter().all(|v| v.state == ProcessState::Idle)
    }

    pub fn views(&self) -> Vec<ProcessView> {
        self.views.lock().map(|v| v.clone()).unwrap_or_default()
    }

    /// Waits until every process answers (→ their pids) or one fails to start, for at most
    /// `limit`. An on-demand generation no request has woken yet is ready as it is (→ no
    /// pids): decided from the supervisor's own state (the start mode and the wakes), never
    /// from the views `status` reads.
    pub async fn wait_ready(&self, limit: Duration) -> Result<Vec<u32>, StartFailure> {
        let unwoken = self.demand.as_ref().is_some_and(|d| d.count() == 0);
        if self.on_demand && unwoken {
            return Ok(Vec::new());
        }
        let mut endpoints = self.endpoints.clone();
        let mut failure = self.failure.clone();
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Some(f) = failure.borrow_and_update().clone() {
                return Err(f);
            }
            if endpoints.borrow_and_update().ready.len() >= self.processes {
                return Ok(self.pids());
            }
            let gone = tokio::select! {
                r = endpoints.changed() => r.is_err(),
                r = failure.changed() => r.is_err(),
                _ = tokio::time::sleep_until(deadline) => {
                    return Err(StartFailure {
                        slot: 0,
                        reason: format!("not all processes answered within {}", secs(limit)),
                        stderr: Vec::new(),
                    });
                }
            };
            if gone {
                return Err(StartFailure {
                    slot: 0,
                    reason: "stopped before it was ready".into(),
                    stderr: Vec::new(),
                });
            }
        }
    }
}
