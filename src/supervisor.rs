//! Every child process: spawn, readiness, restart with backoff, stop, reap.
//!
//! Each process of an app is one "slot" task that loops: start the child, wait until it answers
//! on its Unix socket, publish it as a ready endpoint, wait for it to exit (or for the stop
//! signal), unpublish it, back off, start again. The supervisor is the only writer of the apps'
//! endpoint lists; `proxy` only reads them. A failing app only ever affects its own slots.
//!
//! Does not know about routes or HTTP beyond "the socket accepts a connection".

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::account::Account;
use crate::config::{Address, Entry, PORT_PLACEHOLDER, SOCKET_PLACEHOLDER};
use crate::preflight::{ReadyApp, WorkerKind};
use crate::proxy::Endpoints;
use crate::upstream::Endpoint;

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
/// Unix socket paths must fit in sockaddr_un (104 bytes on macOS, 108 on Linux).
pub const MAX_SOCKET_PATH: usize = 100;

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

    /// Waits until every process answers (→ their pids) or one fails to start, for at most
    /// `limit`.
    pub async fn wait_ready(&self, limit: Duration) -> Result<Vec<u32>, StartFailure> {
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

/// The files wsgimux writes for its children: the launcher (which is also the portable worker)
/// and the folder holding the native worker's extension module.
#[derive(Debug, Clone)]
pub struct WorkerFiles {
    pub launcher: PathBuf,
    pub native_dir: PathBuf,
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
    next_generation: u64,
    live: HashMap<u64, LiveGeneration>,
    /// Generations being drained and stopped in the background.
    retiring: JoinSet<()>,
    /// Set at shutdown: drains stop waiting for requests (the front has finished them).
    shutting_down: watch::Sender<bool>,
}

impl Supervisor {
    pub fn new(runtime_dir: PathBuf, files: WorkerFiles) -> Self {
        Supervisor {
            runtime_dir,
            files,
            next_generation: 1,
            live: HashMap::new(),
            retiring: JoinSet::new(),
            shutting_down: watch::channel(false).0,
        }
    }

    /// The longest socket path an app will use; must stay under [`MAX_SOCKET_PATH`].
    pub fn socket_path_len(runtime_dir: &Path, app: &str) -> usize {
        socket_path(
            &app_socket_dir(runtime_dir, app),
            app,
            u64::from(u32::MAX),
            999,
            u64::from(u32::MAX),
        )
        .as_os_str()
        .len()
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
        let mut slots = JoinSet::new();
        for slot in 0..app.spec.processes as usize {
            let slot_task = Slot {
                plan: plan.clone(),
                slot,
                endpoints: endpoints_tx.clone(),
                failure: failure_tx.clone(),
                stop: stop_rx.clone(),
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
            processes: app.spec.processes as usize,
            endpoints: endpoints_rx,
            failure: failure_rx,
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

/// The socket folder of an app that runs as its own account.
fn app_socket_dir(runtime_dir: &Path, app: &str) -> PathBuf {
    runtime_dir.join(format!("{app}.d"))
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

fn socket_path(
    runtime_dir: &Path,
    app: &str,
    generation: u64,
    slot: usize,
    attempt: u64,
) -> PathBuf {
    runtime_dir.join(format!("{app}.{generation}.{slot}.{attempt}.sock"))
}

struct Slot {
    plan: Arc<AppPlan>,
    slot: usize,
    endpoints: Arc<watch::Sender<Endpoints>>,
    /// The generation's first start failure, shared by its slots.
    failure: Arc<watch::Sender<Option<StartFailure>>>,
    stop: watch::Receiver<bool>,
}

enum Startup {
    Ready,
    Exited(ExitStatus),
    TimedOut,
    Stopping,
}

impl Slot {
    async fn run(mut self) {
        if let Launch::Upstream { address } = &self.plan.launch {
            let address = address.clone();
            return self.watch_upstream(address).await;
        }
        let mut backoff = INITIAL_BACKOFF;
        let mut attempt = 0u64;
        loop {
            attempt += 1;
            let address = self.listen_address(attempt);
            let started = Instant::now();
            let stop_now = self.run_once(&address).await;
            if let Address::Unix(socket) = &address {
                let _ = std::fs::remove_file(socket);
            }
            if stop_now || *self.stop.borrow() {
                return;
            }
            if started.elapsed() >= STABLE_AFTER {
                backoff = INITIAL_BACKOFF;
            }
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
                    self.publish(Some(Endpoint::new(address.clone(), 0)), 0);
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

    /// Starts one child and serves with it until it exits; true when the slot must stop.
    async fn run_once(&mut self, address: &Address) -> bool {
        let plan = self.plan.clone();
        let tail = Arc::new(Mutex::new(VecDeque::new()));
        let mut child = match spawn_child(&plan, address, &tail) {
            Ok(c) => c,
            Err(e) => {
                let reason = format!("cannot start {}: {e}", plan.launch.program());
                self.start_failed(reason, tail_lines(&tail));
                return false;
            }
        };
        let pid = child.id().unwrap_or(0);
        match self.wait_ready(&mut child, address).await {
            Startup::Ready => {}
            Startup::Stopping => {
                stop_child(&mut child, pid).await;
                return true;
            }
            Startup::Exited(status) => {
                // Let the log pumps deliver the last lines before they are quoted.
                tokio::time::sleep(Duration::from_millis(50)).await;
                let reason = format!(
                    "exited during start-up ({}){}",
                    describe(status),
                    last_line(&tail)
                );
                self.start_failed(reason, tail_lines(&tail));
                return false;
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
                return false;
            }
        }

        let endpoint = Endpoint::new(address.clone(), pid);
        tracing::debug!(
            "[{}] generation {} process {} ready (pid {pid})",
            plan.name,
            plan.generation,
            self.slot
        );
        self.publish(Some(endpoint.clone()), pid);
        let outcome = tokio::select! {
            status = child.wait() => Some(status),
            _ = stopped(&mut self.stop) => None,
        };
        self.publish(None, pid);
        endpoint.close_idle();
        match outcome {
            None => {
                stop_child(&mut child, pid).await;
                true
            }
            Some(status) => {
                let status = match status {
                    Ok(s) => describe(s),
                    Err(e) => format!("wait failed: {e}"),
                };
                tracing::warn!(
                    "[{}] process {} (pid {pid}) exited: {status}",
                    plan.name,
                    self.slot
                );
                false
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
        tokio::spawn(pump(out, plan.name.clone(), pid, None));
    }
    if let Some(err) = child.stderr.take() {
        tokio::spawn(pump(err, plan.name.clone(), pid, Some(tail.clone())));
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

/// Copies a child's output to the log, one line per record, prefixed with the app name.
async fn pump(
    stream: impl AsyncRead + Unpin,
    app: Arc<str>,
    pid: u32,
    tail: Option<Arc<Mutex<VecDeque<String>>>>,
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
        tracing::info!(target: "wsgimux::app", "[{app}:{pid}] {line}");
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
