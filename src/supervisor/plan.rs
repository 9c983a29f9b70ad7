//! What running one app's processes takes, worked out once per generation: the program and
//! its arguments (worker launcher, `command:` or nothing for `upstream:`), PATH and virtualenv,
//! the socket folder, the account, the policy, the log file.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::account::Account;
use crate::config::{Address, Entry, ProcessPolicy};
use crate::logfile::LogFile;
use crate::metrics::AppCounters;
use crate::preflight::{ReadyApp, WorkerKind};
use crate::runtime_dir::app_socket_dir;

use super::Supervisor;

/// The child's own limit for finishing in-flight requests after SIGTERM (below STOP_GRACE).
const CHILD_DRAIN_SECS: u32 = 8;

/// Everything needed to start one app's processes.
#[derive(Debug)]
pub(super) struct AppPlan {
    pub(super) name: Arc<str>,
    pub(super) generation: u64,
    pub(super) launch: Launch,
    /// Put first on the child's PATH (the virtualenv's `bin/`, or the interpreter's folder).
    pub(super) bin_dir: Option<PathBuf>,
    pub(super) venv: Option<PathBuf>,
    /// Where the app's sockets go: the runtime dir, or for an app with its own account a
    /// folder it may write in and wsgimux's group may connect in.
    pub(super) socket_dir: PathBuf,
    /// The runtime dir, where each child is recorded until it is reaped.
    pub(super) runtime_dir: PathBuf,
    /// The app's own account, when it has one.
    pub(super) account: Option<Account>,
    pub(super) working_dir: PathBuf,
    pub(super) env: BTreeMap<String, String>,
    pub(super) startup_timeout: Duration,
    pub(super) drain_timeout: Duration,
    pub(super) policy: ProcessPolicy,
    /// Requests one process serves at once (`threads`).
    pub(super) threads: u32,
    /// `<log_dir>/<app>.log`, when set: the children's output goes there.
    pub(super) log: Option<Arc<LogFile>>,
    /// The app's counters, kept by name for the server's life: restarts are counted there.
    pub(super) counters: Arc<AppCounters>,
}

#[derive(Debug)]
pub(super) enum Launch {
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
    pub(super) fn program(&self) -> String {
        match self {
            Launch::Worker { python, .. } => python.display().to_string(),
            Launch::Command { argv } => argv.first().cloned().unwrap_or_default(),
            Launch::Upstream { address } => address.to_string(),
        }
    }
}

impl Supervisor {
    pub(super) fn plan(&self, app: &ReadyApp, generation: u64) -> AppPlan {
        let spec = &app.spec;
        let launch = match &spec.process.entry {
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
            counters: self.metrics.app(&spec.name),
            name: spec.name.as_str().into(),
            generation,
            launch,
            bin_dir,
            venv,
            socket_dir,
            runtime_dir: self.runtime_dir.clone(),
            account: app.account.clone(),
            working_dir: spec.process.working_dir.clone(),
            env: spec.process.env.clone(),
            startup_timeout: spec.lifecycle.startup_timeout,
            drain_timeout: spec.lifecycle.drain_timeout,
            policy: spec.process.policy.clone(),
            threads: spec.process.threads,
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
            spec.process.threads.to_string().into(),
            "--processes".into(),
            spec.process.processes.to_string().into(),
            "--graceful-timeout".into(),
            CHILD_DRAIN_SECS.to_string().into(),
            "--parent-pid".into(),
            std::process::id().to_string().into(),
            // The worker logs the stack of a request running past it (the front's 504).
            "--request-timeout".into(),
            spec.route.request_timeout.as_secs_f64().to_string().into(),
        ];
        match &spec.process.entry {
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
        for p in &spec.process.python_path {
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
