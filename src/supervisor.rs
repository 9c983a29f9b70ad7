//! Every child process: spawn, readiness, restart with backoff, stop, reap.
//!
//! Each process of an app is one "slot" task that loops: start the child, wait until it answers
//! on its Unix socket, publish it as a ready endpoint, wait for it to exit (or for the stop
//! signal), unpublish it, back off, start again. The supervisor is the only writer of the apps'
//! endpoint lists; `proxy` only reads them. A failing app only ever affects its own slots.
//! A slot also carries out its app's process policy: wait for the first request (`start:
//! on_demand`), stop when idle (`idle_timeout`), and replace its process after `max_requests`
//! (the new one is published before the old one is drained). Each slot reports its process's
//! state, pid, start time and restarts in the generation's `ProcessView` list (for `status`).
//!
//! Does not know about routes or HTTP beyond "the socket accepts a connection".

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::account::Account;
use crate::config::{
    Address, Entry, ProcessPolicy, StartMode, PORT_PLACEHOLDER, SOCKET_PLACEHOLDER,
};
use crate::logfile::LogFile;
use crate::preflight::{ReadyApp, WorkerKind};
use crate::runtime_dir::{app_socket_dir, socket_path, WorkerFiles};
use crate::upstream::{Demand, Endpoint, Endpoints};

/// How often an `upstream:` server is checked, and how long a check may take.
const HEALTH_INTERVAL: Duration = Duration::from_secs(2);
const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);
/// Failed checks in a row before an upstream is taken out of the routes.
const HEALTH_FAILURES: u32 = 2;

/// After SIGTERM, how long a child may take to finish its requests before SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(10);
/// The child's own limit for finishing in-flight requests after SIGTERM (below STOP_GRACE).
const CHILD_DRAIN_SECS: u32 = 8;
const INITIAL_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// A child that ran this long before exiting resets the backoff.
const STABLE_AFTER: Duration = Duration::from_secs(10);
const READY_POLL: Duration = Duration::from_millis(20);
/// A retired generation is left alone this long before its in-flight count is trusted: a
/// request that read the old route table just before the switch picks its process within it.
const RETIRE_SETTLE: Duration = Duration::from_millis(250);
const DRAIN_POLL: Duration = Duration::from_millis(20);
/// Lines of a child's stderr kept to explain a failed start.
const STDERR_TAIL_LINES: usize = 20;
/// Longest child output line logged as one line; longer ones are split.
const MAX_LOG_LINE: usize = 16 * 1024;

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
    pub id: u64,
    pub app: Arc<str>,
    pub processes: usize,
    pub endpoints: watch::Receiver<Endpoints>,
    failure: watch::Receiver<Option<StartFailure>>,
    /// Each process slot's state, for `status`.
    pub views: Arc<Mutex<Vec<ProcessView>>>,
    /// Wakes the processes of an app that starts on demand or stops when idle.
    pub demand: Option<Demand>,
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
    Stopping,
    /// An `upstream:` server that does not accept connections.
    Down,
}

impl ProcessState {
    pub const ALL: [ProcessState; 7] = [
        ProcessState::Starting,
        ProcessState::Ready,
        ProcessState::Restarting,
        ProcessState::Idle,
        ProcessState::Recycling,
        ProcessState::Stopping,
        ProcessState::Down,
    ];

    /// As it is written in JSON and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            ProcessState::Starting => "starting",
            ProcessState::Ready => "ready",
            ProcessState::Restarting => "restarting",
            ProcessState::Idle => "idle",
            ProcessState::Recycling => "recycling",
            ProcessState::Stopping => "stopping",
            ProcessState::Down => "down",
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
    /// The ready process (its in-flight count and counters).
    pub endpoint: Option<Arc<Endpoint>>,
    /// How the last process ended, when it did by itself.
    pub last_exit: Option<String>,
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

    /// The first start failure of any of its processes, if one happened.
    pub fn failure(&self) -> Option<StartFailure> {
        self.failure.borrow().clone()
    }

    /// True while the processes wait for a first request (`start: on_demand`).
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
    /// `limit`. A dormant on-demand generation is ready as it is (→ no pids).
    pub async fn wait_ready(&self, limit: Duration) -> Result<Vec<u32>, StartFailure> {
        if self.dormant() {
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

fn secs(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

/// Everything needed to start one app's processes.
#[derive(Debug)]
struct AppPlan {
    name: Arc<str>,
    generation: u64,
    launch: Launch,
    /// Put first on the child's PATH (the virtualenv's `bin/`, or the interpreter's folder).
    bin_dir: Option<PathBuf>,
    venv: Option<PathBuf>,
    /// Where the app's sockets go: the runtime dir, or for an app with its own account a
    /// folder it may write in and wsgimux's group may connect in.
    socket_dir: PathBuf,
    /// The app's own account, when it has one.
    account: Option<Account>,
    working_dir: PathBuf,
    env: BTreeMap<String, String>,
    startup_timeout: Duration,
    drain_timeout: Duration,
    policy: ProcessPolicy,
    /// `<log_dir>/<app>.log`, when set: the children's output goes there.
    log: Option<Arc<LogFile>>,
}

#[derive(Debug)]
enum Launch {
    /// A wsgimux worker: `python -u <launcher> <args> --socket PATH`.
    Worker {
        python: PathBuf,
        launcher: PathBuf,
        args: Vec<OsString>,
    },
    /// The app's own server, `{socket}`/`{port}` substituted per start.
    Command { argv: Vec<String> },
    /// Nothing to start: checked and published.
    Upstream { address: Address },
}

impl Launch {
    fn program(&self) -> String {
        match self {
            Launch::Worker { python, .. } => python.display().to_string(),
            Launch::Command { argv } => argv.first().cloned().unwrap_or_default(),
            Launch::Upstream { address } => address.to_string(),
        }
    }
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
    next_generation: u64,
    live: HashMap<u64, LiveGeneration>,
    /// Generations being drained and stopped in the background.
    retiring: JoinSet<()>,
    /// Set at shutdown: drains stop waiting for requests (the front has finished them).
    shutting_down: watch::Sender<bool>,
}

impl Supervisor {
    pub fn new(runtime_dir: PathBuf, files: WorkerFiles, log_dir: Option<PathBuf>) -> Self {
        Supervisor {
            runtime_dir,
            files,
            log_dir,
            next_generation: 1,
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
        let (endpoints_tx, endpoints_rx) = watch::channel(Endpoints::default());
        let endpoints_tx = Arc::new(endpoints_tx);
        let (failure_tx, failure_rx) = watch::channel(None);
        let failure_tx = Arc::new(failure_tx);
        let (stop_tx, stop_rx) = watch::channel(false);
        let processes = app.spec.processes as usize;
        let on_demand = app.spec.policy.start == StartMode::OnDemand;
        let initial = if on_demand {
            ProcessState::Idle
        } else {
            ProcessState::Starting
        };
        let views = Arc::new(Mutex::new(
            (0..processes)
                .map(|slot| ProcessView {
                    slot,
                    pid: None,
                    state: initial,
                    started: None,
                    restarts: 0,
                    recycles: 0,
                    endpoint: None,
                    last_exit: None,
                })
                .collect::<Vec<_>>(),
        ));
        let demand = (on_demand || app.spec.policy.idle_timeout.is_some()).then(Demand::default);
        let mut slots = JoinSet::new();
        for slot in 0..processes {
            let slot_task = Slot {
                plan: plan.clone(),
                slot,
                endpoints: endpoints_tx.clone(),
                failure: failure_tx.clone(),
                stop: stop_rx.clone(),
                views: views.clone(),
                demand: demand.as_ref().map(Demand::subscribe),
                seen_demand: 0,
            };
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
        Generation {
            id,
            app: plan.name.clone(),
            processes,
            endpoints: endpoints_rx,
            failure: failure_rx,
            views,
            demand,
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

    fn plan(&self, app: &ReadyApp, generation: u64) -> AppPlan {
        let spec = &app.spec;
        let launch = match &spec.entry {
            Entry::Command { argv } => Launch::Command { argv: argv.clone() },
            Entry::Upstream { address } => Launch::Upstream {
                address: address.clone(),
            },
            Entry::Script { .. } | Entry::Module { .. } => {
                let python = app
                    .interpreter
                    .as_ref()
                    .map(|i| i.executable.clone())
                    .unwrap_or_else(|| PathBuf::from("python3"));
                Launch::Worker {
                    python,
                    launcher: self.files.launcher.clone(),
                    args: self.worker_args(app),
                }
            }
        };
        let venv = app.interpreter.as_ref().and_then(|i| i.venv.clone());
        let bin_dir = match (&venv, &app.interpreter) {
            (Some(v), _) => Some(v.join("bin")),
            (None, Some(i)) => i.executable.parent().map(Path::to_path_buf),
            (None, None) => None,
        };
        let socket_dir = match &app.account {
            Some(acct) => {
                let dir = app_socket_dir(&self.runtime_dir, &spec.name);
                if let Err(e) = prepare_socket_dir(&dir, acct) {
                    tracing::warn!("app {}: cannot prepare {}: {e}", spec.name, dir.display());
                }
                dir
            }
            None => self.runtime_dir.clone(),
        };
        AppPlan {
            name: spec.name.as_str().into(),
            generation,
            launch,
            bin_dir,
            venv,
            socket_dir,
            account: app.account.clone(),
            working_dir: spec.working_dir.clone(),
            env: spec.env.clone(),
            startup_timeout: spec.startup_timeout,
            drain_timeout: spec.drain_timeout,
            policy: spec.policy.clone(),
            log: self.log_dir.as_ref().and_then(|d| {
                let path = d.join(format!("{}.log", spec.name));
                LogFile::open(&path)
                    .map_err(|e| {
                        tracing::warn!(
                            "app {}: cannot open {}: {e}; its output goes to this log",
                            spec.name,
                            path.display()
                        )
                    })
                    .ok()
            }),
        }
    }

    fn worker_args(&self, app: &ReadyApp) -> Vec<OsString> {
        let spec = &app.spec;
        let mut args: Vec<OsString> = vec![
            "--app-name".into(),
            spec.name.clone().into(),
            "--threads".into(),
            spec.threads.to_string().into(),
            "--processes".into(),
            spec.processes.to_string().into(),
            "--graceful-timeout".into(),
            CHILD_DRAIN_SECS.to_string().into(),
            "--parent-pid".into(),
            std::process::id().to_string().into(),
        ];
        match &spec.entry {
            Entry::Script { path, callable } => {
                args.extend(["--script".into(), path.clone().into_os_string()]);
                args.extend(["--callable".into(), callable.into()]);
            }
            Entry::Module { module, callable } => {
                args.extend(["--module".into(), module.into()]);
                args.extend(["--callable".into(), callable.into()]);
            }
            Entry::Command { .. } | Entry::Upstream { .. } => {}
        }
        for p in &spec.python_path {
            args.extend(["--python-path".into(), p.clone().into_os_string()]);
        }
        if app.worker == WorkerKind::Native {
            // The launcher imports the module from there (sys.path, not PYTHONPATH: the app's
            // own subprocesses must not inherit it).
            args.extend([
                "--native".into(),
                self.files.native_dir.clone().into_os_string(),
            ]);
        }
        args
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
            .map(|e| e.in_flight())
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

/// Owned by the app's account, group wsgimux's, mode 2770: the app binds its sockets there,
/// and the setgid bit gives them wsgimux's group, so wsgimux (a group member) can connect.
fn prepare_socket_dir(dir: &Path, acct: &Account) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::create_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    std::os::unix::fs::chown(dir, Some(acct.uid), Some(nix::unistd::getegid().as_raw()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o2770))
}

struct Slot {
    plan: Arc<AppPlan>,
    slot: usize,
    endpoints: Arc<watch::Sender<Endpoints>>,
    /// The generation's first start failure, shared by its slots.
    failure: Arc<watch::Sender<Option<StartFailure>>>,
    stop: watch::Receiver<bool>,
    views: Arc<Mutex<Vec<ProcessView>>>,
    /// Requests for a dormant app (on demand, or stopped when idle): a count of wakes.
    demand: Option<watch::Receiver<u64>>,
    /// The wake count when the slot went dormant; a higher one starts it.
    seen_demand: u64,
}

enum Startup {
    Ready,
    Exited(ExitStatus),
    TimedOut,
    Stopping,
}

/// How a served process ended.
enum Ended {
    /// The slot must stop (the generation is stopped or retired).
    Stop,
    /// The process exited by itself or failed to start: start again after a backoff.
    Crashed,
    /// Stopped for `idle_timeout`: start again with the next request.
    Idle,
}

/// A process that answers on its socket.
struct Running {
    child: Child,
    pid: u32,
    address: Address,
    endpoint: Arc<Endpoint>,
    /// Recycle after this many requests (max_requests + this process's jitter).
    recycle_at: Option<u64>,
}

/// How often a running process is checked for idleness and for max_requests.
const POLICY_POLL: Duration = Duration::from_millis(100);

impl Slot {
    async fn run(mut self) {
        if let Launch::Upstream { address } = &self.plan.launch {
            let address = address.clone();
            return self.watch_upstream(address).await;
        }
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
            let ended = self.serve(&mut attempt).await;
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
            self.view(|v| {
                v.state = ProcessState::Restarting;
                v.pid = None;
                v.restarts += 1;
            });
            tracing::info!(
                "[{}] restarting process {} in {:.1}s",
                self.plan.name,
                self.slot,
                backoff.as_secs_f64()
            );
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = stopped(&mut self.stop) => return,
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// Updates this slot's entry in the generation's views.
    fn view(&self, f: impl FnOnce(&mut ProcessView)) {
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
            if served != last_count || current.endpoint.in_flight() > 0 {
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
        self.view(|v| v.state = ProcessState::Recycling);
        let next = tokio::select! {
            r = self.start_process(attempt) => r,
            // The old process died meanwhile: the new one, if it comes up, takes over.
            _ = old.child.wait() => {
                self.unpublish(&old);
                return self.start_process(attempt).await;
            }
        };
        match next {
            Ok(new) => {
                self.view(|v| v.recycles += 1);
                // Unpublished first, so no new request picks it; then its requests finish.
                self.publish(None, old.pid);
                let drain = self.plan.drain_timeout;
                let name = self.plan.name.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(RETIRE_SETTLE).await;
                    let deadline = Instant::now() + drain;
                    while old.endpoint.in_flight() > 0 && Instant::now() < deadline {
                        tokio::time::sleep(DRAIN_POLL).await;
                    }
                    old.endpoint.close_idle();
                    stop_child(&mut old.child, old.pid).await;
                    remove_socket(&old.address);
                    tracing::debug!("[{name}] recycled pid {} stopped", old.pid);
                });
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

    /// Starts one process and waits until it answers; publishes it. Err: why there is none.
    async fn start_process(&mut self, attempt: &mut u64) -> Result<Running, Ended> {
        *attempt += 1;
        let address = self.listen_address(*attempt);
        let plan = self.plan.clone();
        let tail = Arc::new(Mutex::new(VecDeque::new()));
        let mut child = match spawn_child(&plan, &address, &tail) {
            Ok(c) => c,
            Err(e) => {
                let reason = format!("cannot start {}: {e}", plan.launch.program());
                self.start_failed(reason, tail_lines(&tail));
                return Err(Ended::Crashed);
            }
        };
        let pid = child.id().unwrap_or(0);
        let recycling = self
            .views
            .lock()
            .ok()
            .and_then(|v| v.get(self.slot).map(|v| v.state == ProcessState::Recycling))
            .unwrap_or(false);
        if !recycling {
            self.view(|v| {
                v.state = ProcessState::Starting;
                v.pid = Some(pid);
                v.started = Some(SystemTime::now());
            });
        }
        match self.wait_ready(&mut child, &address).await {
            Startup::Ready => {}
            Startup::Stopping => {
                stop_child(&mut child, pid).await;
                remove_socket(&address);
                return Err(Ended::Stop);
            }
            Startup::Exited(status) => {
                // Let the log pumps deliver the last lines before they are quoted.
                tokio::time::sleep(Duration::from_millis(50)).await;
                let reason = format!(
                    "exited during start-up ({}){}",
                    describe(status),
                    last_line(&tail)
                );
                self.view(|v| v.last_exit = Some(describe(status)));
                self.start_failed(reason, tail_lines(&tail));
                remove_socket(&address);
                return Err(Ended::Crashed);
            }
            Startup::TimedOut => {
                // Reported before the stop, which may take STOP_GRACE: a reload waits for it.
                let reason = format!(
                    "did not answer on {address} within startup_timeout {}{}",
                    secs(plan.startup_timeout),
                    last_line(&tail)
                );
                self.start_failed(reason, tail_lines(&tail));
                stop_child(&mut child, pid).await;
                remove_socket(&address);
                return Err(Ended::Crashed);
            }
        }
        let endpoint = Endpoint::new(address.clone(), pid);
        tracing::debug!(
            "[{}] generation {} process {} ready (pid {pid})",
            plan.name,
            plan.generation,
            self.slot
        );
        self.publish(Some(endpoint.clone()), 0);
        self.view(|v| {
            v.state = ProcessState::Ready;
            v.pid = Some(pid);
            v.started = Some(SystemTime::now());
            v.endpoint = Some(endpoint.clone());
        });
        let recycle_at = plan.policy.max_requests.map(|n| {
            let jitter = plan.policy.max_requests_jitter;
            n + if jitter > 0 {
                random_below(jitter + 1)
            } else {
                0
            }
        });
        Ok(Running {
            child,
            pid,
            address,
            endpoint,
            recycle_at,
        })
    }

    /// Unpublishes a running process and stops it (TERM, grace, KILL).
    async fn stop_process(&self, r: &mut Running) {
        self.view(|v| v.state = ProcessState::Stopping);
        self.unpublish(r);
        stop_child(&mut r.child, r.pid).await;
    }

    /// Takes a process out of the ready list and closes its pooled connections.
    fn unpublish(&self, r: &Running) {
        self.publish(None, r.pid);
        r.endpoint.close_idle();
        self.view(|v| {
            if v.pid == Some(r.pid) {
                v.endpoint = None;
            }
        });
        remove_socket(&r.address);
    }

    /// Where this start of the slot's process is to listen: a fresh socket path per attempt, or
    /// a free loopback port for a `command:` that asks for `{port}`.
    fn listen_address(&self, attempt: u64) -> Address {
        if let Launch::Command { argv } = &self.plan.launch {
            if argv.iter().any(|a| a.contains(PORT_PLACEHOLDER)) {
                return Address::Tcp {
                    host: "127.0.0.1".into(),
                    port: free_port().unwrap_or(0),
                };
            }
        }
        Address::Unix(socket_path(
            &self.plan.socket_dir,
            &self.plan.name,
            self.plan.generation,
            self.slot,
            attempt,
        ))
    }

    /// An `upstream:` app: nothing to start; checked every [`HEALTH_INTERVAL`], routed to while
    /// it accepts connections. Not answering within startup_timeout counts as a failed start
    /// (a reload keeps the old config), but checking goes on.
    async fn watch_upstream(mut self, address: Address) {
        let name = self.plan.name.clone();
        let deadline = Instant::now() + self.plan.startup_timeout;
        let mut up = false;
        let mut failures = 0u32;
        let mut reported = false;
        loop {
            if address.answers(HEALTH_TIMEOUT).await {
                failures = 0;
                if !up {
                    up = true;
                    if reported {
                        tracing::info!("[{name}] upstream {address} answers again");
                    }
                    let endpoint = Endpoint::new(address.clone(), 0);
                    self.publish(Some(endpoint.clone()), 0);
                    self.view(|v| {
                        v.state = ProcessState::Ready;
                        v.started = Some(SystemTime::now());
                        v.endpoint = Some(endpoint);
                    });
                }
            } else {
                failures += 1;
                if up && failures >= HEALTH_FAILURES {
                    up = false;
                    reported = true;
                    tracing::warn!(
                        "[{name}] upstream {address} does not accept connections; not routing to it"
                    );
                    self.publish(None, 0);
                    self.view(|v| {
                        v.state = ProcessState::Down;
                        v.endpoint = None;
                    });
                }
                if !up && !reported && Instant::now() >= deadline {
                    reported = true;
                    let reason = format!(
                        "upstream {address} did not accept a connection within startup_timeout {}",
                        secs(self.plan.startup_timeout)
                    );
                    self.start_failed(reason, Vec::new());
                }
            }
            let pause = if up { HEALTH_INTERVAL } else { READY_POLL * 10 };
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = stopped(&mut self.stop) => {
                    self.publish(None, 0);
                    return;
                }
            }
        }
    }

    async fn wait_ready(&mut self, child: &mut Child, address: &Address) -> Startup {
        let deadline = tokio::time::Instant::now() + self.plan.startup_timeout;
        loop {
            // wsgimux's workers rename their socket into place once they listen: a connect
            // that succeeds means the app is imported and requests will be served. (A command's
            // server may still be loading the app; it queues what arrives meanwhile.)
            if address.answers(READY_POLL * 10).await {
                return Startup::Ready;
            }
            tokio::select! {
                status = child.wait() => {
                    return match status {
                        Ok(s) => Startup::Exited(s),
                        Err(_) => Startup::TimedOut,
                    };
                }
                _ = stopped(&mut self.stop) => return Startup::Stopping,
                _ = tokio::time::sleep_until(deadline) => return Startup::TimedOut,
                _ = tokio::time::sleep(READY_POLL) => {}
            }
        }
    }

    /// Adds (Some) or removes (None) this slot's endpoint in the app's ready list.
    fn publish(&self, endpoint: Option<Arc<Endpoint>>, pid: u32) {
        self.endpoints.send_modify(|eps| {
            let mut list: Vec<Arc<Endpoint>> = eps
                .ready
                .iter()
                .filter(|e| e.pid() != pid)
                .cloned()
                .collect();
            list.extend(endpoint);
            eps.ready = list.into();
        });
    }

    /// Reports the slot's failed start; `stderr`: the child's last lines, if it ran.
    fn start_failed(&self, reason: String, stderr: Vec<String>) {
        let slot = self.slot;
        tracing::error!(
            "[{}] process {slot} failed to start: {reason}",
            self.plan.name
        );
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
}

fn remove_socket(address: &Address) {
    if let Address::Unix(socket) = address {
        let _ = std::fs::remove_file(socket);
    }
}

/// A number in 0..n (n > 0), different per call: for max_requests_jitter, where the spread
/// matters, not the quality.
fn random_below(n: u64) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish() % n
}

/// Resolves when the stop flag is set or its sender is gone.
async fn stopped(rx: &mut watch::Receiver<bool>) {
    while !*rx.borrow_and_update() {
        if rx.changed().await.is_err() {
            return;
        }
    }
}

/// A loopback port nothing listens on now (the command binds it a moment later).
fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind(("127.0.0.1", 0))?
        .local_addr()?
        .port())
}

/// `argv[0]` looked up in `bin_dir` first, then on PATH, as the child's shell would.
fn find_program(program: &str, bin_dir: Option<&Path>) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    if program.contains('/') {
        return PathBuf::from(program);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    bin_dir
        .map(Path::to_path_buf)
        .into_iter()
        .chain(std::env::split_paths(&path))
        .map(|d| d.join(program))
        .find(|p| {
            p.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
        .unwrap_or_else(|| PathBuf::from(program))
}

fn spawn_child(
    plan: &AppPlan,
    address: &Address,
    tail: &Arc<Mutex<VecDeque<String>>>,
) -> std::io::Result<Child> {
    let mut cmd = match (&plan.launch, address) {
        (
            Launch::Worker {
                python,
                launcher,
                args,
            },
            Address::Unix(socket),
        ) => {
            let mut cmd = Command::new(python);
            cmd.arg("-u")
                .arg(launcher)
                .args(args)
                .arg("--socket")
                .arg(socket);
            cmd
        }
        (Launch::Command { argv }, _) => {
            let (socket, port) = match address {
                Address::Unix(p) => (p.display().to_string(), String::new()),
                Address::Tcp { port, .. } => (String::new(), port.to_string()),
            };
            let argv: Vec<String> = argv
                .iter()
                .map(|a| {
                    a.replace(SOCKET_PLACEHOLDER, &socket)
                        .replace(PORT_PLACEHOLDER, &port)
                })
                .collect();
            let program = argv.first().map(String::as_str).unwrap_or_default();
            let mut cmd = Command::new(find_program(program, plan.bin_dir.as_deref()));
            cmd.args(&argv[1..]);
            cmd
        }
        _ => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("nothing to start for {address}"),
            ))
        }
    };
    cmd.current_dir(&plan.working_dir)
        .env("PYTHONUNBUFFERED", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(bin) = &plan.bin_dir {
        // What `activate` does, so the app's own subprocesses find the venv's tools.
        let mut path = OsString::from(bin);
        if let Some(old) = std::env::var_os("PATH") {
            path.push(":");
            path.push(old);
        }
        cmd.env("PATH", path);
    }
    if let Some(venv) = &plan.venv {
        cmd.env("VIRTUAL_ENV", venv).env_remove("PYTHONHOME");
    }
    if let Some(acct) = &plan.account {
        cmd.uid(acct.uid)
            .gid(acct.gid)
            .env("HOME", &acct.home)
            .env("USER", &acct.user)
            .env("LOGNAME", &acct.user);
    }
    cmd.envs(&plan.env);
    let parent = std::process::id();
    // Sockets an app with its own account creates must be connectable by wsgimux's group.
    let umask = plan.account.as_ref().map(|_| 0o007);
    // SAFETY: only async-signal-safe calls (setpgid, prctl, signal, sigprocmask, getppid,
    // umask).
    unsafe {
        cmd.pre_exec(move || prepare_child(parent, umask));
    }
    // Starting a process as another account needs the capabilities only one thread holds.
    let mut child = if plan.account.is_some() {
        crate::account::privileged(move || cmd.spawn())?
    } else {
        cmd.spawn()?
    };
    let pid = child.id().unwrap_or(0);
    if let Some(out) = child.stdout.take() {
        tokio::spawn(pump(out, plan.name.clone(), pid, None, plan.log.clone()));
    }
    if let Some(err) = child.stderr.take() {
        tokio::spawn(pump(
            err,
            plan.name.clone(),
            pid,
            Some(tail.clone()),
            plan.log.clone(),
        ));
    }
    Ok(child)
}

/// Runs in the forked child before exec.
fn prepare_child(parent: u32, umask: Option<libc::mode_t>) -> std::io::Result<()> {
    // Its own process group: a terminal's Ctrl-C reaches wsgimux, which then stops the
    // children in order, rather than every process at once.
    // SAFETY: plain syscalls on the current process.
    unsafe {
        libc::setpgid(0, 0);
        #[cfg(target_os = "linux")]
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
        // Rust ignores SIGPIPE and a background shell may ignore SIGINT; ignored signals stay
        // ignored across exec, and the app's own subprocesses would inherit that.
        for sig in [
            libc::SIGPIPE,
            libc::SIGINT,
            libc::SIGTERM,
            libc::SIGHUP,
            libc::SIGQUIT,
        ] {
            libc::signal(sig, libc::SIG_DFL);
        }
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
        if let Some(m) = umask {
            libc::umask(m);
        }
        // wsgimux may have died between fork and prctl: then nobody would stop this child.
        if libc::getppid() as u32 != parent {
            libc::_exit(1);
        }
    }
    Ok(())
}

/// SIGTERM to the child's process group, SIGKILL after [`STOP_GRACE`]; reaps it.
async fn stop_child(child: &mut Child, pid: u32) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    signal_group(pid, libc::SIGTERM);
    if tokio::time::timeout(STOP_GRACE, child.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            "pid {pid} did not stop within {}s; killing it",
            STOP_GRACE.as_secs()
        );
        signal_group(pid, libc::SIGKILL);
        let _ = child.wait().await;
    }
}

fn signal_group(pid: u32, sig: libc::c_int) {
    if pid == 0 {
        return;
    }
    // Children of other accounts can only be signalled with CAP_KILL, held by one thread.
    crate::account::privileged(move || {
        // SAFETY: kill(2) has no memory effects; a negative pid addresses the process group.
        unsafe {
            if libc::kill(-(pid as libc::pid_t), sig) != 0 {
                libc::kill(pid as libc::pid_t, sig);
            }
        }
    });
}

fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        _ => status.to_string(),
    }
}

fn tail_lines(tail: &Mutex<VecDeque<String>>) -> Vec<String> {
    tail.lock()
        .map(|t| t.iter().cloned().collect())
        .unwrap_or_default()
}

fn last_line(tail: &Mutex<VecDeque<String>>) -> String {
    let tail = match tail.lock() {
        Ok(t) => t,
        Err(_) => return String::new(),
    };
    match tail.iter().rev().find(|l| !l.trim().is_empty()) {
        Some(l) => format!(": {}", l.trim()),
        None => String::new(),
    }
}

/// Copies a child's output to the log (or the app's own file under `log_dir`), one line per
/// record, prefixed with the app name and pid.
async fn pump(
    stream: impl AsyncRead + Unpin,
    app: Arc<str>,
    pid: u32,
    tail: Option<Arc<Mutex<VecDeque<String>>>>,
    file: Option<Arc<LogFile>>,
) {
    let mut reader = BufReader::new(stream);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match (&mut reader)
            .take(MAX_LOG_LINE as u64)
            .read_until(b'\n', &mut buf)
            .await
        {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let line = String::from_utf8_lossy(&buf);
        let line = line.trim_end_matches(['\n', '\r']);
        match &file {
            Some(f) => f.write_line(&format!(
                "{} [{app}:{pid}] {line}",
                crate::dates::iso_time(SystemTime::now())
            )),
            None => tracing::info!(target: "wsgimux::app", "[{app}:{pid}] {line}"),
        }
        if let Some(tail) = &tail {
            if let Ok(mut t) = tail.lock() {
                if t.len() == STDERR_TAIL_LINES {
                    t.pop_front();
                }
                t.push_back(line.to_string());
            }
        }
    }
}
