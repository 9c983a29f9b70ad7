//! The checks of a validated `Config` that need the machine: every interpreter runs, every
//! script and folder exists. Problems are reported like config errors, at the key's position.
//! Starts nothing but the short-lived interpreter probes.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::account::{self, Account, Need};
use crate::config::{
    Address, AppSpec, Config, ConfigError, Entry, Location, Problem, WorkerChoice,
};
use crate::interpreter::{self, Interpreter};
use crate::tls::CertStore;

mod exposures;
pub use exposures::exposures;

/// Why a config file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read config {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Config(#[from] ConfigError),
}

/// A config path made absolute (against the current folder) without resolving symlinks, so it
/// names the same file however it is swapped later.
pub fn config_path(path: &Path) -> PathBuf {
    let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    // Lexically, so `./a/../wsgimux.yaml` and `wsgimux.yaml` are one config (and one runtime dir).
    let mut out = PathBuf::new();
    for c in abs.components() {
        match c {
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// Reads, validates and preflights a config file: what `serve` and every reload do.
pub async fn load(path: &Path) -> Result<(Config, Vec<ReadyApp>), LoadError> {
    let inspected = inspect(path).await?;
    if inspected.problems.is_empty() {
        Ok((inspected.config, inspected.apps))
    } else {
        Err(LoadError::Config(ConfigError {
            problems: inspected.problems,
        }))
    }
}

/// A config file read and checked as far as it goes.
pub struct Inspected {
    /// What is sound in it (an app with a problem left out).
    pub config: Config,
    /// Its apps that passed every check.
    pub apps: Vec<ReadyApp>,
    /// Every problem: the file's, then the machine's, in the file's order.
    pub problems: Vec<Problem>,
}

/// Reads a config file and runs the machine's checks (interpreters, files, accounts) for every
/// app whose own entry is sound, even when other parts of the file are not: every problem in
/// one run. Err only when the file cannot be read or parsed at all.
pub async fn inspect(path: &Path) -> Result<Inspected, LoadError> {
    let file = config_path(path);
    let text = std::fs::read_to_string(&file).map_err(|source| LoadError::Read {
        path: file.clone(),
        source,
    })?;
    let (config, mut problems) = crate::config::from_yaml_partial(&text, &file)?;
    let apps = match check(&config).await {
        Ok(apps) => apps,
        Err((apps, e)) => {
            problems.extend(e.problems);
            apps
        }
    };
    problems.sort_by_key(|p| p.location.map(|l| (l.line, l.column)));
    Ok(Inspected {
        config,
        apps,
        problems,
    })
}

/// An app whose interpreter has been found and probed, and the worker chosen for it.
#[derive(Debug, Clone)]
pub struct ReadyApp {
    pub spec: AppSpec,
    /// None for an upstream, and for a command app without `python:`.
    pub interpreter: Option<Interpreter>,
    pub worker: WorkerKind,
    /// The app's own `user:`/`group:`; None: its processes run as wsgimux does.
    pub account: Option<Account>,
}

impl ReadyApp {
    /// "CPython 3.13.0 (/path/to/python)", or what stands in for it.
    pub fn describe_python(&self) -> String {
        match (&self.interpreter, &self.spec.process.entry) {
            (Some(i), _) => format!("{i} ({})", i.executable.display()),
            (None, Entry::Upstream { address }) => format!("- ({address})"),
            (None, _) => "-".into(),
        }
    }
}

/// What serves an app's requests inside its processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerKind {
    /// The Rust worker (hyper + pyo3), for CPython ≥ 3.9 with the GIL.
    Native,
    /// The stdlib-only Python worker, for every interpreter.
    Portable,
    /// The app's own server (`command:`).
    Command,
    /// A server wsgimux routes to but does not start (`upstream:`).
    Upstream,
}

impl fmt::Display for WorkerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            WorkerKind::Native => "native",
            WorkerKind::Portable => "portable",
            WorkerKind::Command => "command",
            WorkerKind::Upstream => "upstream",
        })
    }
}

/// Why the native worker cannot run under this interpreter, if it cannot.
pub fn native_unsupported(i: &Interpreter) -> Option<String> {
    if i.implementation != "CPython" {
        Some(format!(
            "{i} cannot load CPython's stable-ABI (abi3) extension modules"
        ))
    } else if i.version < (3, 9, 0) {
        Some(format!(
            "{i} is older than 3.9, the oldest the native worker supports"
        ))
    } else if i.free_threaded {
        Some(format!(
            "{i} cannot load stable-ABI (abi3) extension modules"
        ))
    } else {
        None
    }
}

/// `worker:` against what the interpreter can load.
pub fn choose_worker(choice: WorkerChoice, i: &Interpreter) -> Result<WorkerKind, String> {
    match (choice, native_unsupported(i)) {
        (WorkerChoice::Portable, _) | (WorkerChoice::Auto, Some(_)) => Ok(WorkerKind::Portable),
        (WorkerChoice::Auto | WorkerChoice::Native, None) => Ok(WorkerKind::Native),
        (WorkerChoice::Native, Some(why)) => Err(format!(
            "native needs CPython 3.9 or later with the GIL: {why}; use worker: portable (or auto)"
        )),
    }
}

/// Probes every app's interpreter (concurrently) and checks its files: the apps that passed,
/// or those and every problem.
pub async fn check(config: &Config) -> Result<Vec<ReadyApp>, (Vec<ReadyApp>, ConfigError)> {
    let front = front_account(config);
    let front_ref = front.as_ref().ok().and_then(Option::as_ref);
    let probes = config
        .apps
        .iter()
        .map(|app| check_app(config, app, front_ref));
    let results = futures_util::future::join_all(probes).await;
    let mut ready = Vec::new();
    let mut problems = certificates(config);
    problems.extend(static_folders(config));
    problems.extend(runtime_dir_problem(config));
    if let Err(p) = &front {
        problems.insert(0, p.clone());
    }
    for r in results {
        match r {
            Ok(app) => ready.push(app),
            Err(p) => problems.extend(p),
        }
    }
    if problems.is_empty() {
        Ok(ready)
    } else {
        Err((ready, ConfigError { problems }))
    }
}

/// One app: its files, its account, its interpreter probed and its worker chosen.
async fn check_app(
    config: &Config,
    app: &AppSpec,
    front_ref: Option<&Account>,
) -> Result<ReadyApp, Vec<Problem>> {
    let mut problems = files(config, app);
    let (account, runs_as) = match app_account(config, app, front_ref) {
        Ok(a) => a,
        Err(p) => {
            problems.push(p);
            (None, None)
        }
    };
    let fixed = match app.process.entry {
        Entry::Command { .. } => Some(WorkerKind::Command),
        Entry::Upstream { .. } => Some(WorkerKind::Upstream),
        _ => None,
    };
    let Some(python) = &app.process.python else {
        return match fixed {
            Some(worker) if problems.is_empty() => Ok(ReadyApp {
                spec: app.clone(),
                interpreter: None,
                worker,
                account,
            }),
            _ => Err(problems),
        };
    };
    match interpreter::probe(python).await {
        Ok(interpreter) => match fixed
            .map(Ok)
            .unwrap_or_else(|| choose_worker(app.process.worker, &interpreter))
        {
            Ok(worker) if problems.is_empty() => {
                problems.extend(reachable(config, app, runs_as.as_ref(), Some(&interpreter)));
                if problems.is_empty() {
                    Ok(ReadyApp {
                        spec: app.clone(),
                        interpreter: Some(interpreter),
                        worker,
                        account,
                    })
                } else {
                    Err(problems)
                }
            }
            Ok(_) => Err(problems),
            Err(why) => {
                problems.insert(0, problem(config, app, app.locations.worker, "worker", why));
                Err(problems)
            }
        },
        Err(e) => {
            problems.insert(
                0,
                problem(config, app, app.locations.python, "python", e.to_string()),
            );
            Err(problems)
        }
    }
}

/// A runtime dir too long for the sockets, at the `runtime_dir` key when the file sets it.
fn runtime_dir_problem(config: &Config) -> Option<Problem> {
    let dir = crate::runtime_dir::of_config(config);
    let e = crate::runtime_dir::check_socket_paths(&dir, config).err()?;
    Some(Problem {
        file: config.file.clone(),
        location: config.runtime_dir_location,
        app: None,
        key: Some("runtime_dir".into()),
        message: e.to_string(),
    })
}

/// Every `static:` folder (or file) must exist.
fn static_folders(config: &Config) -> Vec<Problem> {
    let top = config.statics.iter().map(|a| (None, a));
    let apps = config
        .apps
        .iter()
        .flat_map(|app| app.route.statics.iter().map(move |a| (Some(&app.name), a)));
    top.chain(apps)
        .filter(|(_, a)| !a.dir.exists())
        .map(|(app, a)| Problem {
            file: config.file.clone(),
            location: a.at,
            app: app.cloned(),
            key: Some("static".into()),
            message: format!("{}: {} does not exist", a.prefix, a.dir.display()),
        })
        .collect()
}

/// The top-level `user:`/`group:`, resolved; None when not set.
fn front_account(config: &Config) -> Result<Option<Account>, Problem> {
    let Some(user) = &config.user else {
        return Ok(None);
    };
    account::resolve(user, config.group.as_deref())
        .map(Some)
        .map_err(|e| Problem {
            file: config.file.clone(),
            location: None,
            app: None,
            key: Some(
                match e {
                    account::AccountError::NoGroup(_) => "group",
                    _ => "user",
                }
                .to_string(),
            ),
            message: e.to_string(),
        })
}

/// The app's own account (None when it has no `user:`), and the account its processes run as
/// (its own, else wsgimux's `user:`, else None: whoever runs wsgimux).
fn app_account(
    config: &Config,
    app: &AppSpec,
    front: Option<&Account>,
) -> Result<(Option<Account>, Option<Account>), Problem> {
    let user = match (&app.process.user, &app.process.group) {
        (None, None) => return Ok((None, front.cloned())),
        (Some(u), _) => u.clone(),
        // Only a group: wsgimux's own user (resolve takes a numeric uid too).
        (None, Some(_)) => front.map_or_else(
            || nix::unistd::Uid::effective().as_raw().to_string(),
            |f| f.user.clone(),
        ),
    };
    let own = account::resolve(&user, app.process.group.as_deref())
        .map_err(|e| problem(config, app, app.locations.user, "user", e.to_string()))?;
    let me = nix::unistd::Uid::effective().as_raw();
    let front = config.user.as_deref().and_then(|u| {
        let found = account::resolve(u, config.group.as_deref()).ok();
        found.map(|f| (u, f.uid))
    });
    if let Some((front, front_uid)) = front.filter(|_| !account::KEEPS_SWITCHING_AFTER_DROP) {
        if own.uid != front_uid {
            let why = format!(
                "running the app as {} while wsgimux runs as {front} needs Linux capabilities, which this system does not have: run the app as {front}, or leave out the top-level `user:` so that wsgimux keeps root and starts each app as its own account (as Apache's parent process does)",
                own.user
            );
            return Err(problem(config, app, app.locations.user, "user", why));
        }
    }
    if !account::can_start_as_others() && own.uid != me {
        return Err(problem(
            config,
            app,
            app.locations.user,
            "user",
            format!(
                "running the app as {} needs wsgimux to be started as root (it binds its listeners, then gives up root)",
                own.user
            ),
        ));
    }
    Ok((Some(own.clone()), Some(own)))
}

/// The account the app's processes run as can run the interpreter and read the app.
fn reachable(
    config: &Config,
    app: &AppSpec,
    runs_as: Option<&Account>,
    interpreter: Option<&Interpreter>,
) -> Vec<Problem> {
    let Some(acct) = runs_as else {
        return Vec::new();
    };
    let mut out = Vec::new();
    if let Some(i) = interpreter {
        if let Err(why) = account::can_reach(acct, &i.executable, Need::Execute) {
            out.push(problem(
                config,
                app,
                app.locations.python,
                "python",
                format!(
                    "the app runs as {}, who cannot run {}: {why}. An interpreter under a private home (pyenv's ~/.pyenv, mode 0700) is out of reach of other users: use one installed system-wide, or a virtualenv made from one",
                    acct.user,
                    i.executable.display()
                ),
            ));
        }
    }
    let (path, need, key, at) = match &app.process.entry {
        Entry::Script { path, .. } => (path.clone(), Need::Read, "script", app.locations.entry),
        _ => (
            app.process.working_dir.clone(),
            Need::Folder,
            "working_dir",
            app.locations.working_dir,
        ),
    };
    if let Err(why) = account::can_reach(acct, &path, need) {
        out.push(problem(
            config,
            app,
            at,
            key,
            format!(
                "the app runs as {}, who cannot read {}: {why}",
                acct.user,
                path.display()
            ),
        ));
    }
    out
}

/// Every TLS listener's certificates and keys load and match; the CA `tls: acme` trusts for
/// its directory reads.
fn certificates(config: &Config) -> Vec<Problem> {
    let mut out = Vec::new();
    let acme = config
        .tls
        .values()
        .any(|t| t.source == crate::config::CertSource::Acme);
    if let Some(ca) = config.acme.directory_ca.as_deref().filter(|_| acme) {
        if let Err(e) = crate::tls::client_config(Some(ca)) {
            out.push(Problem {
                file: config.file.clone(),
                location: config.acme.directory_ca_at,
                app: None,
                key: Some("acme.directory_ca".into()),
                message: e.to_string(),
            });
        }
    }
    for spec in config.tls.values() {
        let Err(e) = CertStore::load(spec) else {
            continue;
        };
        let (key, location) = spec
            .certificates
            .iter()
            .find_map(|c| {
                if c.key == e.file() {
                    Some(("key", c.key_at))
                } else if c.cert == e.file() {
                    Some(("cert", c.cert_at))
                } else {
                    None
                }
            })
            .unwrap_or(("tls", None));
        out.push(Problem {
            file: config.file.clone(),
            location,
            app: None,
            key: Some(key.to_string()),
            message: e.to_string(),
        });
    }
    out
}

fn files(config: &Config, app: &AppSpec) -> Vec<Problem> {
    let mut out = Vec::new();
    if let Entry::Script { path, .. } = &app.process.entry {
        if !path.is_file() {
            let msg = format!("{} does not exist or is not a file", path.display());
            out.push(problem(config, app, app.locations.entry, "script", msg));
        }
    }
    if let Entry::Upstream { address } = &app.process.entry {
        if let Address::Tls {
            ca_file: Some(ca), ..
        } = address
        {
            if let Err(e) = crate::tls::client_config(Some(ca)) {
                let at = app.locations.upstream_ca;
                out.push(problem(config, app, at, "upstream_ca", e.to_string()));
            }
        }
        return out;
    }
    if !app.process.working_dir.is_dir() {
        let msg = format!("{} is not a folder", app.process.working_dir.display());
        out.push(problem(
            config,
            app,
            app.locations.working_dir,
            "working_dir",
            msg,
        ));
    }
    for (i, p) in app.process.python_path.iter().enumerate() {
        if !Path::new(p).is_dir() {
            let loc = app.locations.python_path.get(i).copied().flatten();
            let msg = format!("{} is not a folder", p.display());
            out.push(problem(config, app, loc, "python_path", msg));
        }
    }
    out
}

fn problem(
    config: &Config,
    app: &AppSpec,
    location: Option<Location>,
    key: &str,
    message: String,
) -> Problem {
    Problem {
        file: config.file.clone(),
        location,
        app: Some(app.name.clone()),
        key: Some(key.to_string()),
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn interp(implementation: &str, version: (u32, u32, u32), free_threaded: bool) -> Interpreter {
        Interpreter {
            executable: "/usr/bin/python".into(),
            venv: None,
            implementation: implementation.into(),
            version,
            free_threaded,
        }
    }

    #[test]
    fn auto_picks_native_only_where_an_abi3_module_loads() {
        use WorkerChoice::*;
        let cpython313 = interp("CPython", (3, 13, 0), false);
        let cpython39 = interp("CPython", (3, 9, 18), false);
        let cpython38 = interp("CPython", (3, 8, 18), false);
        let threaded = interp("CPython", (3, 13, 0), true);
        let pypy = interp("PyPy", (3, 9, 16), false);
        assert_eq!(choose_worker(Auto, &cpython313), Ok(WorkerKind::Native));
        assert_eq!(choose_worker(Auto, &cpython39), Ok(WorkerKind::Native));
        for i in [&cpython38, &threaded, &pypy] {
            assert_eq!(choose_worker(Auto, i), Ok(WorkerKind::Portable));
            assert_eq!(choose_worker(Portable, i), Ok(WorkerKind::Portable));
            let why = choose_worker(Native, i).unwrap_err();
            assert!(why.contains("native needs CPython 3.9"), "{why}");
        }
        assert!(choose_worker(Native, &threaded)
            .unwrap_err()
            .contains("free-threaded"));
        assert_eq!(
            choose_worker(Portable, &cpython313),
            Ok(WorkerKind::Portable)
        );
    }
}
