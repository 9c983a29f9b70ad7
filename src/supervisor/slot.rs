//! One process slot's task: start its process, serve with it, restart it with backoff when it
//! exits, and carry out the app's process policy — wait for a first request (`start:
//! on_demand`), stop when idle (`idle_timeout`), replace after `max_requests` or once its
//! threads are held by requests past their `request_timeout` (`stuck_limit`) — the new process
//! is published before the old one is drained. Starting and stopping one process is in
//! `start`; what `status` sees goes through `view`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::config::StartMode;
use crate::upstream::Endpoints;

use super::child::{describe, remove_socket, stop_child, OUTPUT_FLUSH};
use super::generation::{ProcessState, ProcessView, StartFailure};
use super::health::watch_upstream;
use super::outlet::Outlet;
use super::plan::{AppPlan, Launch};
use super::policy::{self, Activity, Backoff};
use super::start::{Ended, Running, Starter};
use super::{secs, stopped, DRAIN_POLL, RETIRE_SETTLE};

pub(super) struct Slot {
    /// Starts and stops its processes, and shows them.
    starter: Starter,
    stop: watch::Receiver<bool>,
    /// Requests for a dormant app (on demand, or stopped when idle): a count of wakes.
    demand: Option<watch::Receiver<u64>>,
    /// The wake count when the slot went dormant; a higher one starts it.
    seen_demand: u64,
    /// A replacement is starting after max_requests while the current process serves.
    recycling: bool,
    /// Recycled processes being drained and stopped; a slot that stops cuts their drains
    /// short and waits until each is stopped.
    draining: JoinSet<()>,
}

/// How often a running process is checked for idleness, max_requests and stuck requests.
const POLICY_POLL: Duration = Duration::from_millis(100);
/// After a replacement failed to start, how long until the next try.
const REPLACE_RETRY: Duration = Duration::from_secs(5);

/// What a running process is watched for besides its exit and idleness: stuck requests,
/// its memory, its request count.
struct Watch {
    stuck_limit: usize,
    max_memory: Option<u64>,
    /// The process's resident bytes (its children's included) at the last sample.
    resident: Option<u64>,
    /// When its memory is next sampled.
    next_sample: tokio::time::Instant,
    /// No replacement is tried before this (the last one did not start).
    not_before: tokio::time::Instant,
}

impl Watch {
    fn new(plan: &AppPlan) -> Self {
        let stuck_limit = plan.policy.stuck_limit.unwrap_or(plan.threads);
        let now = tokio::time::Instant::now();
        Watch {
            stuck_limit: (stuck_limit as usize).max(1),
            max_memory: plan.policy.max_memory,
            resident: None,
            next_sample: now,
            not_before: now,
        }
    }

    /// A replacement ended: a new process to watch, or (`failed`) the old one kept, tried
    /// again after a while.
    fn replaced(&mut self, failed: bool) {
        let now = tokio::time::Instant::now();
        if failed {
            self.not_before = now + REPLACE_RETRY;
        } else {
            self.resident = None;
            self.next_sample = now;
        }
    }
}

/// Resident memory is sampled this often for an app with `max_memory`...
const MEMORY_POLL: Duration = Duration::from_secs(2);
/// ...and this often for the others (for `status`).
const RESIDENT_POLL: Duration = Duration::from_secs(5);

/// Why a process is replaced while it still runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Replace {
    /// It served `max_requests`.
    Requests,
    /// `stuck_limit` of its requests passed their `request_timeout` and hold its threads.
    Stuck,
    /// Its resident memory (bytes) passed `max_memory`.
    Memory(u64),
}

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
            starter: Starter {
                outlet: Outlet::new(plan, slot, endpoints, failure, views),
                output: JoinSet::new(),
            },
            stop,
            demand,
            seen_demand: 0,
            recycling: false,
            draining: JoinSet::new(),
        }
    }

    fn plan(&self) -> &AppPlan {
        &self.starter.outlet.plan
    }

    fn view(&self, f: impl FnOnce(&mut ProcessView)) {
        self.starter.outlet.view(f);
    }

    async fn start_process(&mut self, attempt: &mut u64) -> Result<Running, Ended> {
        let replacing = self.recycling;
        self.starter
            .start_process(attempt, &mut self.stop, replacing)
            .await
    }

    /// The slot's task: runs its process (or checks its upstream) until stopped, then waits
    /// for every process it still drains.
    pub(super) async fn run(mut self) {
        if let Launch::Upstream { address } = &self.plan().launch {
            let address = address.clone();
            watch_upstream(&mut self.starter.outlet, address, &mut self.stop).await;
        } else {
            self.run_processes().await;
        }
        while self.draining.join_next().await.is_some() {}
        // Every child has exited: their last lines reach the log, boundedly; then the copies
        // end (dropping the set aborts what is left).
        let output = &mut self.starter.output;
        let flushed = async { while output.join_next().await.is_some() {} };
        let _ = tokio::time::timeout(OUTPUT_FLUSH, flushed).await;
    }

    /// Start, serve, restart with backoff; dormant while the policy says so.
    async fn run_processes(&mut self) {
        let mut backoff = Backoff::default();
        let mut attempt = 0u64;
        let mut dormant = self.plan().policy.start == StartMode::OnDemand;
        loop {
            if dormant {
                self.view(|v| {
                    v.state = ProcessState::Idle;
                    v.pid = None;
                    v.started = None;
                });
                let demand = self.demand.as_mut();
                if !policy::wait_for_demand(demand, self.seen_demand, &mut self.stop).await {
                    return;
                }
                dormant = false;
            }
            backoff.starting();
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
                    backoff.reset();
                    continue;
                }
                Ended::Crashed => {}
            }
            let pause = backoff.after_exit();
            if !self.restart_after(pause).await {
                return;
            }
        }
    }

    /// A process exited or did not start: counted and shown, then `pause`; false when the
    /// slot is stopped meanwhile.
    async fn restart_after(&mut self, pause: Duration) -> bool {
        let failing = self.starter.outlet.failures.failing();
        self.view(|v| {
            if !failing {
                v.state = ProcessState::Restarting;
            }
            v.pid = None;
            v.restarts += 1;
        });
        let plan = self.plan();
        plan.counters
            .restarts
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (name, slot, secs) = (&plan.name, self.starter.outlet.slot, pause.as_secs_f64());
        if failing {
            tracing::debug!("[{name}] failing: trying process {slot} again in {secs:.1}s");
        } else {
            tracing::info!("[{name}] restarting process {slot} in {secs:.1}s");
        }
        tokio::select! {
            _ = tokio::time::sleep(pause) => true,
            _ = stopped(&mut self.stop) => false,
        }
    }

    /// Starts a process and serves with it (and with its replacements after max_requests)
    /// until it exits, goes idle, or the slot stops.
    async fn serve(&mut self, attempt: &mut u64) -> Ended {
        let mut current = match self.start_process(attempt).await {
            Ok(r) => r,
            Err(ended) => return ended,
        };
        let idle_timeout = self.plan().policy.idle_timeout;
        let mut watch = Watch::new(self.plan());
        let mut activity = Activity::new(idle_timeout);
        let mut poll = tokio::time::interval(POLICY_POLL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                status = current.child.wait() => {
                    self.starter.unpublish(&current);
                    let status = match status {
                        Ok(s) => describe(s),
                        Err(e) => format!("wait failed: {e}"),
                    };
                    tracing::warn!(
                        "[{}] process {} (pid {}) exited: {status}",
                        self.plan().name,
                        self.starter.outlet.slot,
                        current.pid
                    );
                    self.view(|v| v.last_exit = Some(status));
                    return Ended::Crashed;
                }
                _ = stopped(&mut self.stop) => {
                    self.starter.stop_process(&mut current).await;
                    return Ended::Stop;
                }
                // Stuck requests are looked for in every process.
                _ = poll.tick() => {}
            }
            let served = current.endpoint.stats.requests();
            let busy = current.endpoint.in_flight() + current.endpoint.tunnels() > 0;
            activity.observe(served, busy);
            if let Some(idle) = idle_timeout {
                if activity.idle() {
                    // A request from now on wakes the slot again, even one that arrives
                    // while this process stops.
                    self.seen_demand = self.demand.as_ref().map_or(0, |d| *d.borrow());
                    tracing::info!(
                        "[{}] process {} (pid {}) idle for {}; stopping it until the next request",
                        self.plan().name,
                        self.starter.outlet.slot,
                        current.pid,
                        secs(idle)
                    );
                    self.starter.stop_process(&mut current).await;
                    return Ended::Idle;
                }
            }
            let Some(why) = self.replacement_due(&mut watch, &current, served).await else {
                continue;
            };
            let pid = current.pid;
            match self.replace(current, attempt, why).await {
                Ok(next) => {
                    watch.replaced(next.pid == pid);
                    current = next;
                    activity.restart();
                }
                Err(ended) => return ended,
            }
        }
    }

    /// Why `current`, which has served `served`, is to be replaced now, if it is: stuck
    /// requests first, then memory (sampled when due), then max_requests.
    async fn replacement_due(
        &mut self,
        watch: &mut Watch,
        current: &Running,
        served: u64,
    ) -> Option<Replace> {
        let now = tokio::time::Instant::now();
        if now >= watch.next_sample {
            let every = watch.max_memory.map_or(RESIDENT_POLL, |_| MEMORY_POLL);
            watch.next_sample = now + every;
            let pid = current.pid;
            let sampled = tokio::task::spawn_blocking(move || super::memory::resident(pid));
            watch.resident = sampled.await.ok().flatten();
            let resident = watch.resident;
            self.view(|v| v.resident_bytes = resident);
        }
        if now < watch.not_before {
            return None;
        }
        if current.endpoint.stuck() >= watch.stuck_limit {
            return Some(Replace::Stuck);
        }
        if let (Some(cap), Some(resident)) = (watch.max_memory, watch.resident) {
            if resident > cap {
                return Some(Replace::Memory(resident));
            }
        }
        current
            .recycle_at
            .is_some_and(|n| served >= n)
            .then_some(Replace::Requests)
    }

    /// Zero-downtime replacement: the new process starts and is published while the old one
    /// serves (what it can); then the old one is unpublished, drained and stopped. If the new
    /// one does not start, the old one goes on serving (and is tried again later).
    async fn replace(
        &mut self,
        mut old: Running,
        attempt: &mut u64,
        why: Replace,
    ) -> Result<Running, Ended> {
        let (name, slot) = (self.plan().name.clone(), self.starter.outlet.slot);
        match why {
            Replace::Requests => tracing::info!(
                "[{name}] process {slot} (pid {}) served {} requests (max_requests); replacing it",
                old.pid,
                old.endpoint.stats.requests()
            ),
            Replace::Stuck => tracing::warn!(
                "[{name}] process {slot} (pid {}) is stuck: {} of its requests passed their request_timeout and still hold its threads; replacing it",
                old.pid,
                old.endpoint.stuck()
            ),
            Replace::Memory(resident) => tracing::warn!(
                "[{name}] process {slot} (pid {}) uses {}, over its max_memory ({}); replacing it",
                old.pid,
                mebibytes(resident),
                mebibytes(self.plan().policy.max_memory.unwrap_or(0))
            ),
        }
        self.recycling = true;
        self.view(|v| {
            v.state = match why {
                Replace::Stuck => ProcessState::Stuck,
                Replace::Requests | Replace::Memory(_) => ProcessState::Recycling,
            };
        });
        let next = tokio::select! {
            r = self.start_process(attempt) => r,
            // The old process died meanwhile: the new one, if it comes up, takes over.
            _ = old.child.wait() => {
                self.starter.unpublish(&old);
                self.recycling = false;
                return self.start_process(attempt).await;
            }
        };
        self.recycling = false;
        match next {
            Ok(new) => {
                self.view(|v| match why {
                    Replace::Requests => v.recycles += 1,
                    Replace::Stuck => v.stuck_replacements += 1,
                    Replace::Memory(_) => v.memory_replacements += 1,
                });
                // Unpublished first, so no new request picks it; then its requests finish.
                self.starter.outlet.publish(None, old.pid);
                self.drain_in_background(old);
                Ok(new)
            }
            Err(Ended::Stop) => {
                self.starter.stop_process(&mut old).await;
                Err(Ended::Stop)
            }
            Err(_) => {
                tracing::warn!(
                    "[{}] the replacement for pid {} did not start; it keeps serving",
                    self.plan().name,
                    old.pid
                );
                self.view(|v| {
                    v.state = ProcessState::Ready;
                    v.pid = Some(old.pid);
                    v.endpoint = Some(old.endpoint.clone());
                });
                if why == Replace::Requests {
                    old.recycle_at = old
                        .recycle_at
                        .map(|n| n + self.plan().policy.max_requests.unwrap_or(1));
                }
                Ok(old)
            }
        }
    }

    /// A recycled process: its requests finish (up to drain_timeout, or until the slot stops),
    /// then it is stopped. Tracked, so a slot never ends before its drains do.
    fn drain_in_background(&mut self, mut old: Running) {
        let drain = self.plan().drain_timeout;
        let name = self.plan().name.clone();
        let mut stop = self.stop.clone();
        self.draining.spawn(async move {
            let drained = async {
                tokio::time::sleep(RETIRE_SETTLE).await;
                let deadline = tokio::time::Instant::now() + drain;
                while old.endpoint.in_flight() + old.endpoint.tunnels() > 0
                    && tokio::time::Instant::now() < deadline
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

/// Bytes as the log says them: `123.4 MiB`.
fn mebibytes(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / f64::from(1 << 20))
}
