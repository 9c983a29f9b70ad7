//! The OS side of one child: the command line and environment, spawning it (as its own
//! account through `account::privileged` when it has one) in its own process group, its
//! output copied line by line to the log, and stopping it: TERM to the group, a grace period,
//! KILL.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::task::JoinSet;

use crate::config::{Address, PORT_PLACEHOLDER, SOCKET_PLACEHOLDER};
use crate::leftover::ChildRecord;
use crate::logfile::LogFile;

use super::plan::{AppPlan, Launch};
use super::traceback::{Fed, Gathering};

/// After SIGTERM, how long a child may take to finish its requests before SIGKILL.
pub(super) const STOP_GRACE: Duration = Duration::from_secs(10);
/// When a slot ends, how long its children's last output may take to reach the log (a
/// grandchild that keeps the pipe open would hold it forever).
pub(super) const OUTPUT_FLUSH: Duration = Duration::from_secs(2);
/// Lines of a child's stderr kept to explain a failed start.
const STDERR_TAIL_LINES: usize = 20;
/// Longest child output line logged as one line; longer ones are split.
const MAX_LOG_LINE: usize = 16 * 1024;

pub(super) fn remove_socket(address: &Address) {
    if let Address::Unix(socket) = address {
        let _ = std::fs::remove_file(socket);
    }
}

/// A number in 0..n (n > 0), different per call: for max_requests_jitter, where the spread
/// matters, not the quality.
pub(super) fn random_below(n: u64) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish() % n
}

/// A loopback port nothing listens on now (the command binds it a moment later).
pub(super) fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind(("127.0.0.1", 0))?
        .local_addr()?
        .port())
}

/// `argv[0]` looked up in `bin_dir` first, then on PATH, as the child's shell would.
fn find_program(program: &str, bin_dir: Option<&Path>) -> PathBuf {
    locate_program(program, bin_dir).unwrap_or_else(|| PathBuf::from(program))
}

/// A `command:`'s program as it will be run: a path as given, else the first executable of
/// that name in the app's `bin/` (venv or interpreter folder) or on PATH.
pub(super) fn locate_program(program: &str, bin_dir: Option<&Path>) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    if program.contains('/') {
        return Some(PathBuf::from(program));
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
}

/// A starting process's output, held back until it answers (then logged as usual) or fails
/// to start (then the slot logs it once, and again only when it says something new): an app
/// that cannot start does not repeat its traceback in the log on every retry.
#[derive(Debug, Default)]
pub(super) struct HeldOutput {
    holding: bool,
    lines: VecDeque<String>,
}

/// Lines of output held for one start, at most (the newest are kept).
const HELD_LINES: usize = 200;

impl HeldOutput {
    pub(super) fn holding() -> Arc<Mutex<HeldOutput>> {
        Arc::new(Mutex::new(HeldOutput {
            holding: true,
            lines: VecDeque::new(),
        }))
    }

    /// Stops holding; what was held, in order.
    pub(super) fn take(held: &Mutex<HeldOutput>) -> Vec<String> {
        match held.lock() {
            Ok(mut h) => {
                h.holding = false;
                h.lines.drain(..).collect()
            }
            Err(_) => Vec::new(),
        }
    }
}

/// Spawns one process of the plan listening at `address`; its stdout and stderr are copied
/// to the log (the last stderr lines also into `tail`), held back while `held` holds.
pub(super) async fn spawn_child(
    plan: &AppPlan,
    address: &Address,
    tail: &Arc<Mutex<VecDeque<String>>>,
    held: &Arc<Mutex<HeldOutput>>,
    pumps: &mut JoinSet<()>,
) -> std::io::Result<(Child, ChildRecord)> {
    let mut cmd = command(plan, address)?;
    set_environment(&mut cmd, plan);
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
        crate::account::privileged(move || crate::spawn::retry_while_busy_here(|| cmd.spawn()))?
    } else {
        crate::spawn::retry_while_busy(|| cmd.spawn()).await?
    };
    let pid = child.id().unwrap_or(0);
    let record = ChildRecord::write(&plan.runtime_dir, pid);
    let out = Output {
        app: plan.name.clone(),
        pid,
        tail: None,
        held: held.clone(),
        file: plan.log.clone(),
    };
    if let Some(stdout) = child.stdout.take() {
        pumps.spawn(pump(stdout, out.clone()));
    }
    if let Some(stderr) = child.stderr.take() {
        let out = Output {
            tail: Some(tail.clone()),
            ..out
        };
        pumps.spawn(pump(stderr, out));
    }
    Ok((child, record))
}

/// The program and arguments: the worker launcher, or the app's command with `{socket}` /
/// `{port}` filled in.
pub(super) fn command(plan: &AppPlan, address: &Address) -> std::io::Result<Command> {
    let cmd = match (&plan.launch, address) {
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
                Address::Tcp { port, .. } | Address::Tls { port, .. } => {
                    (String::new(), port.to_string())
                }
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
    Ok(cmd)
}

/// Variables in wsgimux's own environment that choose a Python's home, path or virtualenv.
/// Apps of several Pythons run side by side, so one inherited from the shell or service that
/// started wsgimux (a 3.13 `PYTHONPATH`, an activated venv, macOS's framework-launcher variable)
/// would be wrong for the others: an app gets them only from its own config (`env:`, `python:`).
pub const INHERITED_PYTHON_VARS: [&str; 5] = [
    "PYTHONHOME",
    "PYTHONPATH",
    "PYTHONEXECUTABLE",
    "__PYVENV_LAUNCHER__",
    "VIRTUAL_ENV",
];

/// Working folder, pipes, PATH and virtualenv as `activate` sets them, the account's identity,
/// the app's `env:`.
pub(super) fn set_environment(cmd: &mut Command, plan: &AppPlan) {
    for var in INHERITED_PYTHON_VARS {
        cmd.env_remove(var);
    }
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
        cmd.env("VIRTUAL_ENV", venv);
    }
    if let Some(acct) = &plan.account {
        cmd.uid(acct.uid)
            .gid(acct.gid)
            .env("HOME", &acct.home)
            .env("USER", &acct.user)
            .env("LOGNAME", &acct.user);
    }
    cmd.envs(&plan.env);
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
pub(super) async fn stop_child(child: &mut Child, pid: u32) {
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

pub(super) fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        _ => status.to_string(),
    }
}

/// Whether `line` belongs to a worker's report of an app error: its first line (both workers
/// write `APP: error in METHOD /path: …`, `invalid response to`, `app raised after the
/// response started`, `internal error`), the traceback under it, and the exception's line
/// that ends it. `in_report` carries the state from line to line.
fn app_error_line(line: &str, in_report: &mut bool) -> bool {
    const STARTS: [&str; 4] = [
        ": error in ",
        ": invalid response to ",
        ": app raised after the response started",
        ": internal error",
    ];
    if STARTS.iter().any(|s| line.contains(s)) {
        *in_report = true;
        return true;
    }
    if !*in_report {
        return false;
    }
    if !(line.starts_with("Traceback") || line.starts_with(' ') || line.is_empty()) {
        // The exception's own line ends the report.
        *in_report = false;
    }
    true
}

pub(super) fn tail_lines(tail: &Mutex<VecDeque<String>>) -> Vec<String> {
    tail.lock()
        .map(|t| t.iter().cloned().collect())
        .unwrap_or_default()
}

pub(super) fn last_line(tail: &Mutex<VecDeque<String>>) -> String {
    let tail = match tail.lock() {
        Ok(t) => t,
        Err(_) => return String::new(),
    };
    match tail.iter().rev().find(|l| !l.trim().is_empty()) {
        Some(l) => format!(": {}", l.trim()),
        None => String::new(),
    }
}

/// How long a traceback waits for its next line before it is logged as it stands.
const TRACEBACK_SETTLE: std::time::Duration = std::time::Duration::from_millis(100);

/// Where one stream of a child's output goes.
#[derive(Clone)]
struct Output {
    app: Arc<str>,
    pid: u32,
    /// The last stderr lines, for a failed start's report.
    tail: Option<Arc<Mutex<VecDeque<String>>>>,
    held: Arc<Mutex<HeldOutput>>,
    file: Option<Arc<LogFile>>,
}

/// Copies a child's output to the log (or the app's own file under `log_dir`), one line per
/// record, prefixed with the app name and pid. A worker's report of an app error (`APP: error
/// in GET /x: …` and its traceback) is logged at ERROR; the rest at INFO. With the JSON log,
/// records carry `app` and `pid`, and a Python traceback is one record (`exception`: its whole
/// text), complete at the line after it or when no line came for [`TRACEBACK_SETTLE`].
async fn pump(stream: impl AsyncRead + Unpin, out: Output) {
    let json = crate::logfile::json_log() && out.file.is_none();
    let mut reader = BufReader::new(stream);
    let mut buf = Vec::new();
    let mut in_report = false;
    let mut gathering: Option<Gathering> = None;
    // A read cut short by the settle timeout keeps its bytes in `buf` for the next one.
    let mut partial = false;
    loop {
        if !partial {
            buf.clear();
        }
        partial = false;
        let mut limited = (&mut reader).take(MAX_LOG_LINE as u64);
        let read = limited.read_until(b'\n', &mut buf);
        let got = match &gathering {
            Some(_) => match tokio::time::timeout(TRACEBACK_SETTLE, read).await {
                Ok(got) => got,
                Err(_) => {
                    if let Some(g) = gathering.take() {
                        log_traceback(&out, &g.text());
                    }
                    partial = true;
                    continue;
                }
            },
            None => read.await,
        };
        if matches!(got, Ok(0) | Err(_)) {
            if let Some(g) = gathering.take() {
                log_traceback(&out, &g.text());
            }
            return;
        }
        let line = String::from_utf8_lossy(&buf);
        let line = line.trim_end_matches(['\n', '\r']);
        let error = app_error_line(line, &mut in_report);
        remember(&out, line);
        if held_back(&out, line) {
            continue;
        }
        if json {
            if let Some(g) = &mut gathering {
                match g.feed(line) {
                    Fed::Taken => continue,
                    Fed::Done(text) => {
                        log_traceback(&out, &text);
                        gathering = None;
                    }
                }
            }
            if Gathering::starts(line) {
                gathering = Some(Gathering::new(line));
                continue;
            }
        }
        log_line(&out, line, error, json);
    }
}

/// While a starting process's output is held (`HeldOutput`): keeps the line there.
fn held_back(out: &Output, line: &str) -> bool {
    match out.held.lock() {
        Ok(mut h) if h.holding => {
            if h.lines.len() == HELD_LINES {
                h.lines.pop_front();
            }
            h.lines
                .push_back(format!("[{}:{}] {line}", out.app, out.pid));
            true
        }
        _ => false,
    }
}

/// The last stderr lines, for a failed start's report.
fn remember(out: &Output, line: &str) {
    if let Some(tail) = &out.tail {
        if let Ok(mut t) = tail.lock() {
            if t.len() == STDERR_TAIL_LINES {
                t.pop_front();
            }
            t.push_back(line.to_string());
        }
    }
}

fn log_line(out: &Output, line: &str, error: bool, json: bool) {
    let (app, pid) = (&*out.app, out.pid);
    match &out.file {
        Some(f) => f.write_line(&format!(
            "{} [{app}:{pid}] {line}",
            crate::dates::iso_time(SystemTime::now())
        )),
        None if json && error => {
            tracing::error!(target: "wsgimux::app", app, pid, "[{app}:{pid}] {line}")
        }
        None if json => tracing::info!(target: "wsgimux::app", app, pid, "[{app}:{pid}] {line}"),
        None if error => tracing::error!(target: "wsgimux::app", "[{app}:{pid}] {line}"),
        None => tracing::info!(target: "wsgimux::app", "[{app}:{pid}] {line}"),
    }
}

/// One record for a whole traceback: the exception's line as the message, the text whole.
fn log_traceback(out: &Output, text: &str) {
    let (app, pid) = (&*out.app, out.pid);
    let summary = Gathering::summary(text);
    tracing::error!(
        target: "wsgimux::app",
        app,
        pid,
        exception = text,
        "[{app}:{pid}] {summary}"
    );
}
