//! One process slot's task: start its process, serve with it, restart it with backoff when it
//! exits, and carry out the app's process policy — wait for a first request (`start:
//! on_demand`), stop when idle (`idle_timeout`), replace after `max_requests` (the new process
//! is published before the old one is drained). Starting and stopping one process is in
//! `start`; what `status` sees goes through `view`.

use std::process::ExitStatus;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::process::Child;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::config::{Address, StartMode};
use crate::leftover::ChildRecord;
use crate::upstream::{Endpoint, Endpoints};

use super::child::{describe, remove_socket, stop_child, OUTPUT_FLUSH};
use super::generation::{ProcessState, ProcessView, StartFailure};
use super::plan::{AppPlan, Launch};
use super::{secs, stopped, DRAIN_POLL, RETIRE_SETTLE};

const INITIAL_BACKOFF: Duration = Duration::from_millis(100);
/// Up to a minute between the starts of an app that keeps failing.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// A child that ran this long before exiting resets the backoff.
const STABLE_AFTER: Duration = Duration::from_secs(10);

pub(super) struct Slot {
    pub(super) plan: Arc<AppPlan>,
    pub(super) slot: usize,
    pub(super) endpoints: Arc<watch::Sender<Endpoints>>,
    /// The generation's first start failure, shared by its slots.
    pub(super) failure: Arc<watch::Sender<Option<StartFailure>>>,
    pub(super) stop: watch::Receiver<bool>,
    pub(super) views: Arc<Mutex<Vec<ProcessView>>>,
    /// Requests for a dormant app (on demand, or stopped when idle): a count of wakes.
    pub(super) demand: Option<watch::Receiver<u64>>,
    /// The wake count when the slot went dormant; a higher one starts it.
    pub(super) seen_demand: u64,
    /// A replacement is starting after max_requests while the current process serves.
    pub(super) recycling: bool,
    /// Recycled processes being drained and stopped; a slot that stops cuts their drains
    /// short and waits until each is stopped.
    pub(super) draining: JoinSet<()>,
    /// The tasks copying its children's output to the log.
    pub(super) output: JoinSet<()>,
    /// Failed starts in a row.
    pub(super) failures: u32,
    /// What the last failed start said (reason and output), so the same is not logged twice.
    pub(super) last_failure: Option<String>,
}

pub(super) enum Startup {
    Ready,
    Exited(ExitStatus),
    TimedOut,
    Stopping,
}

/// How a served process ended.
pub(super) enum Ended {
    /// The slot must stop (the generation is stopped or retired).
    Stop,
    /// The process exited by itself or failed to start: start again after a backoff.
    Crashed,
    /// Stopped for `idle_timeout`: start again with the next request.
    Idle,
}

/// A process that answers on its socket.
pub(super) struct Running {
    pub(super) child: Child,
    pub(super) pid: u32,
    pub(super) address: Address,
    pub(super) endpoint: Arc<Endpoint>,
    /// Recycle after this many requests (max_requests + this process's jitter).
    pub(super) recycle_at: Option<u64>,
    /// Its record in the runtime dir, removed when this is dropped (the child reaped).
    pub(super) _record: ChildRecord,
}

/// How often a running process is checked for idleness and for max_requests.
const POLICY_POLL: Duration = Duration::from_millis(100);

impl Slot {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        plan: Arc<AppPlan>,
        slot: usize,
        endpoints: Arc<watch::Sender<Endpoints>>,
        failure: Arc<watch::Sender<Option<StartFailure>>>,
        stop: watch::Receiver<bool>,
        views: Arc<Mutex<Vec<ProcessView>>>,
        demand: Option<watch::Receiver<u64>>,
    ) -> Self {
        Slot {
            plan,
            slot,
            endpoints,
            failure,
            stop,
            views,
            demand,
            seen_demand: 0,
            recycling: false,
            draining: JoinSet::new(),
            output: JoinSet::new(),
            failures: 0,
            last_failure: None,
        }
    }

    /// The slot's task: runs its process (or checks its upstream) until stopped, then waits
    /// for every process it still drains.
    pub(super) async fn run(mut self) {
        if let Launch::Upstream { address } = &self.plan.launch {
            let address = address.clone();
            self.watch_upstream(address).await;
        } else {
            self.run_processes().await;
        }
        while self.draining.join_next().await.is_some() {}
        // Every child has exited: their last lines reach the log, boundedly; then the copies
        // end (dropping the set aborts what is left).
        let flushed = async { while self.output.join_next().await.is_some() {} };
        let _ = tokio::time::timeout(OUTPUT_FLUSH, flushed).await;
    }

    /// Start, serve, restart with backoff; dormant while the policy says so.
    async fn run_processes(&mut self) {
        let mut backoff = INITIAL_BACKOFF;
        let mut attempt = 0u64;
        let mut dormant = self.plan.policy.start == StartMode::OnDemand;
        loop {
            if dormant {
                self.view(|v| {
                    v.state = ProcessState::Idle;
                    v.pid = None;
                    v.started = None;
                });
                if !self.wait_for_demand().await {
                    return;
                }
                dormant = false;
            }
            let started = Instant::now();
            // Boxed: a serving process's state is large, and a host of dormant apps keeps
            // thousands of these tasks waiting for demand with only the small state above.
            let ended = Box::pin(self.serve(&mut attempt)).await;
            if *self.stop.borrow() {
                return;
            }
            match ended {
                Ended::Stop => return,
                Ended::Idle => {
                    dormant = true;
                    backoff = INITIAL_BACKOFF;
                    continue;
                }
                Ended::Crashed => {}
            }
            if started.elapsed() >= STABLE_AFTER {
                backoff = INITIAL_BACKOFF;
            }
            let failing = self.failures >= super::start::FAILING_AFTER;
            self.view(|v| {
                if !failing {
                    v.state = ProcessState::Restarting;
                }
                v.pid = None;
                v.restarts += 1;
            });
            self.plan
                .counters
                .restarts
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let (name, slot, secs) = (&self.plan.name, self.slot, backoff.as_secs_f64());
            if failing {
                tracing::debug!("[{name}] failing: trying process {slot} again in {secs:.1}s");
            } else {
                tracing::info!("[{name}] restarting process {slot} in {secs:.1}s");
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = stopped(&mut self.stop) => return,
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
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

    /// Waits for a request to wake the app; false when the slot is stopped instead.
    async fn wait_for_demand(&mut self) -> bool {
        let seen = self.seen_demand;
        let Some(demand) = self.demand.as_mut() else {
            return true;
        };
        loop {
            if *demand.borrow_and_update() > seen {
                return true;
            }
            tokio::select! {
                r = demand.changed() => if r.is_err() { return false },
                _ = stopped(&mut self.stop) => return false,
            }
        }
    }

    /// Starts a process and serves with it (and with its replacements after max_requests)
    /// until it exits, goes idle, or the slot stops.
    async fn serve(&mut self, attempt: &mut u64) -> Ended {
        let mut current = match self.start_process(attempt).await {
            Ok(r) => r,
            Err(ended) => return ended,
        };
        let idle_timeout = self.plan.policy.idle_timeout;
        // Only a policy that watches the process's traffic needs the periodic look.
        let watch_traffic = idle_timeout.is_some() || current.recycle_at.is_some();
        let mut last_count = 0u64;
        let mut last_active = Instant::now();
        let mut poll = tokio::time::interval(POLICY_POLL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                status = current.child.wait() => {
                    self.unpublish(&current);
                    let status = match status {
                        Ok(s) => describe(s),
                        Err(e) => format!("wait failed: {e}"),
                    };
                    tracing::warn!(
                        "[{}] process {} (pid {}) exited: {status}",
                        self.plan.name,
                        self.slot,
                        current.pid
                    );
                    self.view(|v| v.last_exit = Some(status));
                    return Ended::Crashed;
                }
                _ = stopped(&mut self.stop) => {
                    self.stop_process(&mut current).await;
                    return Ended::Stop;
                }
                _ = poll.tick(), if watch_traffic => {}
            }
            let served = current.endpoint.stats.requests();
            if served != last_count || current.endpoint.in_flight() + current.endpoint.tunnels() > 0
            {
                last_count = served;
                last_active = Instant::now();
            }
            if let Some(idle) = idle_timeout {
                if last_active.elapsed() >= idle {
                    // A request from now on wakes the slot again, even one that arrives
                    // while this process stops.
                    self.seen_demand = self.demand.as_ref().map_or(0, |d| *d.borrow());
                    tracing::info!(
                        "[{}] process {} (pid {}) idle for {}; stopping it until the next request",
                        self.plan.name,
                        self.slot,
                        current.pid,
                        secs(idle)
                    );
                    self.stop_process(&mut current).await;
                    return Ended::Idle;
                }
            }
            if current.recycle_at.is_some_and(|n| served >= n) {
                match self.recycle(current, attempt).await {
                    Ok(next) => {
                        current = next;
                        last_count = 0;
                        last_active = Instant::now();
                    }
                    Err(ended) => return ended,
                }
            }
        }
    }

    /// Zero-downtime replacement after max_requests: the new process starts and is published
    /// while the old one serves; then the old one is unpublished, drained and stopped. If the
    /// new one does not start, the old one goes on serving (and is tried again later).
    async fn recycle(&mut self, mut old: Running, attempt: &mut u64) -> Result<Running, Ended> {
        tracing::info!(
            "[{}] process {} (pid {}) served {} requests (max_requests); replacing it",
            self.plan.name,
            self.slot,
            old.pid,
            old.endpoint.stats.requests()
        );
        self.recycling = true;
        self.view(|v| v.state = ProcessState::Recycling);
        let next = tokio::select! {
            r = self.start_process(attempt) => r,
            // The old process died meanwhile: the new one, if it comes up, takes over.
            _ = old.child.wait() => {
                self.unpublish(&old);
                self.recycling = false;
                return self.start_process(attempt).await;
            }
        };
        self.recycling = false;
        match next {
            Ok(new) => {
                self.view(|v| v.recycles += 1);
                // Unpublished first, so no new request picks it; then its requests finish.
                self.publish(None, old.pid);
                self.drain_in_background(old);
                Ok(new)
            }
            Err(Ended::Stop) => {
                self.stop_process(&mut old).await;
                Err(Ended::Stop)
            }
            Err(_) => {
                tracing::warn!(
                    "[{}] the replacement for pid {} did not start; it keeps serving",
                    self.plan.name,
                    old.pid
                );
                self.view(|v| {
                    v.state = ProcessState::Ready;
                    v.pid = Some(old.pid);
                    v.endpoint = Some(old.endpoint.clone());
                });
                old.recycle_at = old
                    .recycle_at
                    .map(|n| n + self.plan.policy.max_requests.unwrap_or(1));
                Ok(old)
            }
        }
    }

    /// A recycled process: its requests finish (up to drain_timeout, or until the slot stops),
    /// then it is stopped. Tracked, so a slot never ends before its drains do.
    fn drain_in_background(&mut self, mut old: Running) {
        let drain = self.plan.drain_timeout;
        let name = self.plan.name.clone();
        let mut stop = self.stop.clone();
        self.draining.spawn(async move {
            let drained = async {
                tokio::time::sleep(RETIRE_SETTLE).await;
                let deadline = Instant::now() + drain;
                while old.endpoint.in_flight() + old.endpoint.tunnels() > 0
                    && Instant::now() < deadline
                {
                    tokio::time::sleep(DRAIN_POLL).await;
                }
            };
            tokio::select! {
                _ = drained => {}
                _ = stopped(&mut stop) => {}
            }
            old.endpoint.close_idle();
            stop_child(&mut old.child, old.pid).await;
            remove_socket(&old.address);
            tracing::debug!("[{name}] recycled pid {} stopped", old.pid);
        });
    }
}
