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
use tokio::net::UnixStream;
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use crate::config::Entry;
use crate::interpreter::Interpreter;
use crate::preflight::ReadyApp;
use crate::proxy::Endpoints;
use crate::upstream::Endpoint;

/// How long a new child may take to answer on its socket.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// After SIGTERM, how long a child may take to finish its requests before SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(10);
/// The child's own limit for finishing in-flight requests after SIGTERM (below STOP_GRACE).
const CHILD_DRAIN_SECS: u32 = 8;
const INITIAL_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// A child that ran this long before exiting resets the backoff.
const STABLE_AFTER: Duration = Duration::from_secs(10);
const READY_POLL: Duration = Duration::from_millis(20);
/// Lines of a child's stderr kept to explain a failed start.
const STDERR_TAIL_LINES: usize = 20;
/// Longest child output line logged as one line; longer ones are split.
const MAX_LOG_LINE: usize = 16 * 1024;
/// Unix socket paths must fit in sockaddr_un (104 bytes on macOS, 108 on Linux).
pub const MAX_SOCKET_PATH: usize = 100;

/// What the supervisor reports as children come and go.
#[derive(Debug, Clone)]
pub enum Event {
    Ready {
        app: Arc<str>,
        slot: usize,
        pid: u32,
    },
    StartFailed {
        app: Arc<str>,
        slot: usize,
        reason: String,
    },
}

impl Event {
    pub fn app(&self) -> &Arc<str> {
        match self {
            Event::Ready { app, .. } | Event::StartFailed { app, .. } => app,
        }
    }
}

/// Everything needed to start one app's processes.
#[derive(Debug)]
struct AppPlan {
    name: Arc<str>,
    interpreter: Interpreter,
    worker_script: PathBuf,
    runtime_dir: PathBuf,
    args: Vec<OsString>,
    working_dir: PathBuf,
    env: BTreeMap<String, String>,
}

struct RunningApp {
    stop: watch::Sender<bool>,
    slots: JoinSet<()>,
}

pub struct Supervisor {
    runtime_dir: PathBuf,
    worker_script: PathBuf,
    events: mpsc::Sender<Event>,
    apps: HashMap<String, RunningApp>,
}

impl Supervisor {
    pub fn new(runtime_dir: PathBuf, worker_script: PathBuf, events: mpsc::Sender<Event>) -> Self {
        Supervisor {
            runtime_dir,
            worker_script,
            events,
            apps: HashMap::new(),
        }
    }

    /// The longest socket path an app will use; must stay under [`MAX_SOCKET_PATH`].
    pub fn socket_path_len(runtime_dir: &Path, app: &str) -> usize {
        socket_path(runtime_dir, app, 999, u64::from(u32::MAX))
            .as_os_str()
            .len()
    }

    /// Starts an app's processes; returns the list of its ready endpoints as it changes.
    pub fn start(&mut self, app: &ReadyApp) -> watch::Receiver<Endpoints> {
        let plan = Arc::new(self.plan(app));
        let (endpoints_tx, endpoints_rx) = watch::channel(Endpoints::default());
        let endpoints_tx = Arc::new(endpoints_tx);
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut slots = JoinSet::new();
        for slot in 0..app.spec.processes as usize {
            let slot_task = Slot {
                plan: plan.clone(),
                slot,
                endpoints: endpoints_tx.clone(),
                events: self.events.clone(),
                stop: stop_rx.clone(),
            };
            slots.spawn(slot_task.run());
        }
        self.apps.insert(
            app.spec.name.clone(),
            RunningApp {
                stop: stop_tx,
                slots,
            },
        );
        endpoints_rx
    }

    fn plan(&self, app: &ReadyApp) -> AppPlan {
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
        }
        for p in &spec.python_path {
            args.extend(["--python-path".into(), p.clone().into_os_string()]);
        }
        AppPlan {
            name: spec.name.as_str().into(),
            interpreter: app.interpreter.clone(),
            worker_script: self.worker_script.clone(),
            runtime_dir: self.runtime_dir.clone(),
            args,
            working_dir: spec.working_dir.clone(),
            env: spec.env.clone(),
        }
    }

    /// Stops every app: each child gets SIGTERM, then SIGKILL after [`STOP_GRACE`].
    pub async fn shutdown(self) {
        let mut all = Vec::new();
        for (_, app) in self.apps {
            let _ = app.stop.send(true);
            all.push(app.slots);
        }
        for mut slots in all {
            while slots.join_next().await.is_some() {}
        }
    }
}

fn socket_path(runtime_dir: &Path, app: &str, slot: usize, attempt: u64) -> PathBuf {
    runtime_dir.join(format!("{app}.{slot}.{attempt}.sock"))
}

struct Slot {
    plan: Arc<AppPlan>,
    slot: usize,
    endpoints: Arc<watch::Sender<Endpoints>>,
    events: mpsc::Sender<Event>,
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
        let mut backoff = INITIAL_BACKOFF;
        let mut attempt = 0u64;
        loop {
            attempt += 1;
            let socket = socket_path(&self.plan.runtime_dir, &self.plan.name, self.slot, attempt);
            let started = Instant::now();
            let stop_now = self.run_once(&socket).await;
            let _ = std::fs::remove_file(&socket);
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

    /// Starts one child and serves with it until it exits; true when the slot must stop.
    async fn run_once(&mut self, socket: &Path) -> bool {
        let plan = self.plan.clone();
        let tail = Arc::new(Mutex::new(VecDeque::new()));
        let mut child = match spawn_child(&plan, socket, &tail) {
            Ok(c) => c,
            Err(e) => {
                let reason = format!(
                    "cannot start {}: {e}",
                    plan.interpreter.executable.display()
                );
                self.start_failed(reason).await;
                return false;
            }
        };
        let pid = child.id().unwrap_or(0);
        match self.wait_ready(&mut child, socket).await {
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
                self.start_failed(reason).await;
                return false;
            }
            Startup::TimedOut => {
                stop_child(&mut child, pid).await;
                let reason = format!(
                    "did not answer on {} within {}s{}",
                    socket.display(),
                    STARTUP_TIMEOUT.as_secs(),
                    last_line(&tail)
                );
                self.start_failed(reason).await;
                return false;
            }
        }

        let endpoint = Endpoint::new(socket.to_path_buf(), pid);
        self.publish(Some(endpoint.clone()), pid);
        self.report(Event::Ready {
            app: plan.name.clone(),
            slot: self.slot,
            pid,
        })
        .await;
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

    async fn wait_ready(&mut self, child: &mut Child, socket: &Path) -> Startup {
        let deadline = tokio::time::Instant::now() + STARTUP_TIMEOUT;
        loop {
            // The worker renames its socket into place once it listens: a connect that
            // succeeds means the app is imported and requests will be served.
            if UnixStream::connect(socket).await.is_ok() {
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

    async fn report(&self, event: Event) {
        let _ = self.events.send(event).await;
    }

    async fn start_failed(&self, reason: String) {
        let (app, slot) = (self.plan.name.clone(), self.slot);
        tracing::error!("[{app}] process {slot} failed to start: {reason}");
        self.report(Event::StartFailed { app, slot, reason }).await;
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

fn spawn_child(
    plan: &AppPlan,
    socket: &Path,
    tail: &Arc<Mutex<VecDeque<String>>>,
) -> std::io::Result<Child> {
    let interp = &plan.interpreter;
    let mut cmd = Command::new(&interp.executable);
    cmd.arg("-u")
        .arg(&plan.worker_script)
        .args(&plan.args)
        .arg("--socket")
        .arg(socket)
        .current_dir(&plan.working_dir)
        .env("PYTHONUNBUFFERED", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(venv) = &interp.venv {
        // What `activate` does, so the app's own subprocesses find the venv's tools.
        let mut path = OsString::from(venv.join("bin"));
        if let Some(old) = std::env::var_os("PATH") {
            path.push(":");
            path.push(old);
        }
        cmd.env("VIRTUAL_ENV", venv)
            .env("PATH", path)
            .env_remove("PYTHONHOME");
    }
    cmd.envs(&plan.env);
    let parent = std::process::id();
    // SAFETY: only async-signal-safe calls (setpgid, prctl, signal, sigprocmask, getppid).
    unsafe {
        cmd.pre_exec(move || prepare_child(parent));
    }
    let mut child = cmd.spawn()?;
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
fn prepare_child(parent: u32) -> std::io::Result<()> {
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
    // SAFETY: kill(2) has no memory effects; a negative pid addresses the process group.
    unsafe {
        if libc::kill(-(pid as libc::pid_t), sig) != 0 {
            libc::kill(pid as libc::pid_t, sig);
        }
    }
}

fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        _ => status.to_string(),
    }
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
