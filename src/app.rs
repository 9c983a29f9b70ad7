//! The commands' bodies: loading a config, starting the long-lived parts of `serve` in order
//! (listeners, children, routes, server), reporting readiness, and shutting down in reverse.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::{mpsc, watch};

use crate::config::Config;
use crate::control;
use crate::metrics::Registry;
use crate::preflight::{self, LoadError, ReadyApp};
use crate::proxy::{Front, FrontError};
use crate::reload::{Reloader, RunningApp};
use crate::routes::RouteTable;
use crate::runtime_dir::{self, RuntimeDirError};
use crate::server::{self, BindError};
use crate::status::Overview;
use crate::supervisor::{Generation, StartFailure, Supervisor};
use crate::trigger::Trigger;
use crate::watch::{self as filewatch, ConfigWatcher};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error(transparent)]
    RuntimeDir(#[from] RuntimeDirError),
    #[error("runtime_dir {}: {source}", path.display())]
    RuntimeDirAccess {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Bind(#[from] BindError),
    #[error(transparent)]
    Front(#[from] FrontError),
    #[error(transparent)]
    Account(#[from] crate::account::AccountError),
    #[error("another wsgimux already serves this config (its control socket in {} answers); stop it first, or use `wsgimux reload`", dir.display())]
    AlreadyRunning { dir: PathBuf },
    #[error("the service manager passed sockets that no listen entry names: {passed} (listen: {listen}); add them to `listen`, or remove them from the socket unit")]
    UnclaimedSockets { passed: String, listen: String },
    #[error("cannot set up signal handling: {0}")]
    Signals(#[source] std::io::Error),
}

/// `wsgimux check`: the report printed for a valid config.
pub fn describe_routes(config: &Config, apps: &[ReadyApp]) -> String {
    let mut out = format!("{}: ok\n", config.file.display());
    for a in &config.listen {
        let scheme = if config.tls.contains_key(a) {
            "https"
        } else {
            "http"
        };
        out.push_str(&format!("listen {scheme}://{a}\n"));
    }
    if let Some(a) = config.admin {
        out.push_str(&format!(
            "admin  http://{a}/ (status page, /status.json, /metrics; no authentication)\n"
        ));
    }
    let table = RouteTable::for_apps(apps.iter().enumerate().map(|(i, a)| (&a.spec, i)));
    let rows: Vec<[String; 5]> = table
        .entries()
        .into_iter()
        .map(|(host, route)| {
            let app = &apps[route.target];
            [
                host.map_or("*".to_string(), |h| h.to_string()),
                route.mount.to_string(),
                app.spec.name.clone(),
                app.describe_python(),
                app.worker.to_string(),
            ]
        })
        .collect();
    let header = ["HOST", "MOUNT", "APP", "PYTHON", "WORKER"].map(String::from);
    let widths: Vec<usize> = (0..5)
        .map(|c| {
            rows.iter()
                .chain([&header])
                .map(|r| r[c].len())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for row in [&header].into_iter().chain(rows.iter()) {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// Started as root with `user:` set: hand the runtime dir to that user and become it (keeping
/// only the capabilities to start apps as their own accounts). Listeners are bound already.
fn become_configured_user(config: &Config, dir: &Path) -> Result<(), StartError> {
    let Some(user) = &config.user else {
        return Ok(());
    };
    if !crate::account::is_root() {
        tracing::warn!(
            "user {user:?} is set but wsgimux was not started as root: running as the current user"
        );
        return Ok(());
    }
    let front = crate::account::resolve(user, config.group.as_deref())?;
    let err = |source| StartError::RuntimeDirAccess {
        path: dir.to_path_buf(),
        source,
    };
    // (`runtime_dir::prepare` let the accounts pass through to it.)
    std::os::unix::fs::chown(dir, Some(front.uid), Some(front.gid)).map_err(err)?;
    crate::account::drop_privileges(&front)?;
    tracing::info!("running as {front}");
    Ok(())
}

/// The signals `serve` acts on, registered before anything starts so that none of them can
/// take the default action (termination) once children run.
struct Signals {
    term: Signal,
    int: Signal,
    hup: Signal,
    usr1: Signal,
}

impl Signals {
    fn register() -> Result<Self, StartError> {
        let s = |kind| signal(kind).map_err(StartError::Signals);
        Ok(Signals {
            term: s(SignalKind::terminate())?,
            int: s(SignalKind::interrupt())?,
            hup: s(SignalKind::hangup())?,
            usr1: s(SignalKind::user_defined1())?,
        })
    }
}

/// `wsgimux serve`: runs until SIGTERM or SIGINT; reloads on config changes, SIGHUP and
/// `wsgimux reload`.
pub async fn serve(path: &Path) -> Result<(), StartError> {
    serve_with(path, None).await
}

/// `serve`, printing `banner` (given the listeners' URLs) once everything is ready: express
/// mode's start-up summary.
pub async fn serve_with(path: &Path, banner: Option<Banner>) -> Result<(), StartError> {
    let activated = crate::activation::init();
    if activated > 0 {
        tracing::info!("{activated} listening socket(s) passed by the service manager");
    }
    let file = preflight::config_path(path);
    let signals = Signals::register()?;
    // Taken before reading, so an edit made while starting is not missed.
    let baseline = filewatch::fingerprint(&file);
    let (config, apps) = preflight::load(&file).await?;
    warn_inherited_python_vars();
    for w in preflight::exposures(&config, &apps, crate::account::is_root()) {
        tracing::warn!("{w}");
    }
    let dir = runtime_dir::of_config(&config);
    if control::is_served(&dir) {
        return Err(StartError::AlreadyRunning { dir });
    }
    // No wsgimux serves this runtime dir: whatever its records name is a killed one's.
    crate::leftover::stop_leftovers(&dir);
    // Everything that can refuse the config is done before anything is written or bound.
    // (preflight already refused a runtime dir too long for the sockets, at its position.)
    let front = Front::build(&config, None)?;
    let (listeners, admin_listener) = bind_all(&config).await?;
    let runtime = runtime_dir::prepare(&dir, &config)?;
    become_configured_user(&config, &dir)?;

    let metrics = Arc::new(Registry::default());
    let (supervisor, running) = start_apps(&dir, &runtime, &config, &apps, &metrics);
    let first: Vec<(Arc<ReadyApp>, Generation)> = running
        .iter()
        .map(|r| (r.app.clone(), r.generation.clone()))
        .collect();
    let admin_addr = admin_listener
        .as_ref()
        .and_then(|l| l.local_addr().ok())
        .map(|a| a.to_string());
    let (triggers_tx, triggers) = mpsc::channel(64);
    let (overview_tx, overview_rx) =
        watch::channel(Arc::new(Overview::empty(file.clone(), admin_addr.clone())));
    let reloader = Reloader::new(
        file.clone(),
        config,
        running,
        supervisor,
        front,
        listeners,
        triggers_tx.clone(),
        metrics,
        overview_tx,
    );
    tracing::info!(
        "runtime dir {}; control socket {} (for `wsgimux status --control PATH`)",
        dir.display(),
        control::socket_path(&dir).display()
    );
    let mut doors = Doors::open(
        &dir,
        file,
        baseline,
        &triggers_tx,
        overview_rx,
        admin_listener,
    )?;
    let reporter = tokio::spawn(report_readiness(first, reloader.listener_urls(), banner));
    let watchdog = crate::sdnotify::start_watchdog();
    let reloader = run(reloader, triggers, triggers_tx, signals, &mut doors).await;
    crate::sdnotify::stopping();
    reporter.abort();
    if let Some(w) = watchdog {
        w.abort();
    }
    drop(doors);
    reloader.shutdown().await;
    // Every child is reaped: what this server made in the runtime area goes with it.
    runtime.close();
    tracing::info!("stopped");
    Ok(())
}

/// Says which of wsgimux's own Python variables its apps will not see (they would be wrong for
/// apps of another Python), so nobody wonders where their `PYTHONPATH` went.
fn warn_inherited_python_vars() {
    for var in crate::supervisor::INHERITED_PYTHON_VARS {
        if let Some(value) = std::env::var_os(var) {
            tracing::warn!(
                "{var}={} is set in wsgimux's environment; apps do not inherit it (set it in an app's `env:` for the apps that need it)",
                value.to_string_lossy()
            );
        }
    }
}

/// The listeners and the admin listener, bound; and no passed socket left over.
async fn bind_all(
    config: &Config,
) -> Result<(Vec<(SocketAddr, TcpListener)>, Option<TcpListener>), StartError> {
    let listeners = server::bind(&config.listen).await?;
    let admin_listener = match config.admin {
        Some(addr) => server::bind(&[addr]).await?.pop().map(|(_, l)| l),
        None => None,
    };
    refuse_unclaimed_sockets(config)?;
    Ok((listeners, admin_listener))
}

/// Every app's first generation, started at once.
fn start_apps(
    dir: &Path,
    runtime: &runtime_dir::RuntimeDir,
    config: &Config,
    apps: &[ReadyApp],
    metrics: &Arc<Registry>,
) -> (Supervisor, Vec<RunningApp<Generation>>) {
    let mut supervisor = Supervisor::new(
        dir.to_path_buf(),
        runtime.files.clone(),
        config.log_dir.clone(),
        metrics.clone(),
    );
    let running = apps
        .iter()
        .map(|a| RunningApp {
            app: Arc::new(a.clone()),
            generation: supervisor.start(a),
        })
        .collect();
    (supervisor, running)
}

/// A socket the service manager passed that no `listen` entry takes would accept connections
/// that nobody answers: a start error naming both sides.
fn refuse_unclaimed_sockets(config: &Config) -> Result<(), StartError> {
    let unclaimed = crate::activation::unclaimed();
    if unclaimed.is_empty() {
        return Ok(());
    }
    let listen: Vec<String> = config.listen.iter().map(ToString::to_string).collect();
    Err(StartError::UnclaimedSockets {
        passed: unclaimed.join(", "),
        listen: listen.join(", "),
    })
}

/// The ways in besides the listeners: the control socket, the admin listener, the config
/// watcher. Dropped (closed) at shutdown before the reloader stops.
struct Doors {
    control: control::ControlSocket,
    /// The config file, as given (made absolute), and the runtime dir: what the control
    /// socket's links are made from.
    file: PathBuf,
    dir: PathBuf,
    admin: Option<tokio::task::JoinHandle<()>>,
    /// The per-second history's one writer (`status::history`), a reader of the overview too.
    history: tokio::task::JoinHandle<()>,
    _config_watch: Option<ConfigWatcher>,
}

impl Doors {
    fn open(
        dir: &Path,
        file: PathBuf,
        baseline: filewatch::Fingerprint,
        triggers: &mpsc::Sender<Trigger>,
        overview: watch::Receiver<Arc<Overview>>,
        admin_listener: Option<TcpListener>,
    ) -> Result<Self, StartError> {
        let control =
            control::serve(dir, triggers.clone(), overview.clone()).map_err(|source| {
                StartError::RuntimeDirAccess {
                    path: dir.join(control::SOCKET_NAME),
                    source,
                }
            })?;
        let history = tokio::spawn(crate::status::history::sample_every_second(
            overview.clone(),
        ));
        let admin = admin_listener.map(|l| {
            if let Ok(a) = l.local_addr() {
                tracing::info!("status page on http://{a}/ (metrics at /metrics)");
            }
            crate::admin::serve(l, overview)
        });
        let config_watch = match ConfigWatcher::start(file.clone(), baseline, triggers.clone()) {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!("{e}; config changes need SIGHUP or `wsgimux reload`");
                None
            }
        };
        let mut doors = Doors {
            control,
            file,
            dir: dir.to_path_buf(),
            admin,
            history,
            _config_watch: config_watch,
        };
        doors.relink();
        Ok(doors)
    }

    /// Makes the default places for the config file (as given, and by its real path now: a
    /// swapped link changes it) lead to the control socket, so that `wsgimux reload` and
    /// `status` find this server from any spelling of the file.
    fn relink(&mut self) {
        let dirs = runtime_dir::link_dirs(&self.file, &self.dir);
        for (dir, e) in self.control.link_from(&dirs) {
            tracing::warn!(
                "`wsgimux reload` and `status` with --config may need --control: cannot link the control socket from {}: {e}",
                dir.display()
            );
        }
    }
}

impl Drop for Doors {
    fn drop(&mut self) {
        self.history.abort();
        if let Some(a) = &self.admin {
            a.abort();
        }
    }
}

/// Reloads on triggers until SIGTERM or SIGINT (which also cut a reload in progress short:
/// whatever it started is stopped with the rest).
async fn run(
    mut reloader: Reloader,
    mut triggers: mpsc::Receiver<Trigger>,
    again: mpsc::Sender<Trigger>,
    mut signals: Signals,
    doors: &mut Doors,
) -> Reloader {
    loop {
        let mut batch = tokio::select! {
            _ = signals.term.recv() => break,
            _ = signals.int.recv() => break,
            _ = signals.hup.recv() => vec![Trigger::Hangup],
            _ = signals.usr1.recv() => {
                reopen_logs();
                continue;
            }
            t = triggers.recv() => match t {
                Some(t) => vec![t],
                None => break,
            },
        };
        while let Ok(t) = triggers.try_recv() {
            batch.push(t);
        }
        let announced = crate::sdnotify::reloading();
        let stop = {
            let reload = reloader.handle(batch);
            tokio::pin!(reload);
            // The reload runs to its end; only SIGTERM/SIGINT cut it short. Other signals are
            // answered meanwhile.
            loop {
                tokio::select! {
                    _ = &mut reload => break false,
                    _ = signals.term.recv() => break true,
                    _ = signals.int.recv() => break true,
                    // A SIGHUP during a reload asks for another one after it.
                    _ = signals.hup.recv() => {
                        let _ = again.try_send(Trigger::Hangup);
                    }
                    _ = signals.usr1.recv() => reopen_logs(),
                }
            }
        };
        if stop {
            break;
        }
        // A reload is how a swapped link is noticed: the file's real path may be new.
        doors.relink();
        if announced {
            let status = match reloader.last_report() {
                Some(r) => format!("serving; {}", r.summary),
                None => "serving".to_string(),
            };
            crate::sdnotify::reloaded(&status);
        }
    }
    reloader
}

/// SIGUSR1: reopen the access log and the apps' log files (after logrotate/newsyslog moved
/// them).
fn reopen_logs() {
    let (count, failed) = crate::logfile::reopen_all();
    if failed.is_empty() {
        tracing::info!("SIGUSR1: reopened {count} log file(s)");
    } else {
        tracing::error!("SIGUSR1: cannot reopen {}", failed.join("; "));
    }
}

/// Prints one line per app once all its processes answer (or its first start failed), then
/// `ready: http://ADDR` (or https) per listener.
/// Express mode's start-up summary, made from the listeners' URLs once they are known.
pub type Banner = Box<dyn FnOnce(&[ReadyApp], &[String]) -> String + Send>;

async fn report_readiness(
    apps: Vec<(Arc<ReadyApp>, Generation)>,
    addrs: Vec<(&'static str, SocketAddr)>,
    banner: Option<Banner>,
) {
    let mut pending: futures_util::stream::FuturesUnordered<_> = apps
        .iter()
        .map(|(a, g)| async move {
            // The processes time out by themselves (startup_timeout) and say why.
            let limit = a.spec.lifecycle.startup_timeout + Duration::from_secs(2);
            (a, g, g.wait_ready(limit).await)
        })
        .collect();
    let mut failed = Vec::new();
    while let Some((a, g, result)) = pending.next().await {
        let pids = result.as_ref().map_or_else(|_| Vec::new(), Vec::clone);
        if result.is_err() {
            failed.push(a.spec.name.clone());
        }
        let fields =
            serde_json::json!({ "app": a.spec.name, "pids": pids, "ready": result.is_ok() });
        announce(&readiness_line(a, g, result), fields);
    }
    let status = if failed.is_empty() {
        format!("serving {} app(s)", apps.len())
    } else {
        format!(
            "serving {} of {} app(s); failed to start (retrying): {}",
            apps.len() - failed.len(),
            apps.len(),
            failed.join(", ")
        )
    };
    // One line that says it all, before the listeners' `ready:` lines.
    announce(
        &status,
        serde_json::json!({ "apps": apps.len(), "failed": failed }),
    );
    crate::sdnotify::ready(&status);
    if let Some(banner) = banner {
        let urls: Vec<String> = addrs.iter().map(|(s, a)| format!("{s}://{a}")).collect();
        let ready: Vec<ReadyApp> = apps.iter().map(|(a, _)| (**a).clone()).collect();
        print!("{}", banner(&ready, &urls));
    }
    for (scheme, a) in &addrs {
        let url = format!("{scheme}://{a}");
        announce(&format!("ready: {url}"), serde_json::json!({ "url": url }));
    }
    let _ = std::io::stdout().flush();
}

/// A start-up line on stdout: as it reads, or with `log_format: json` a record of the JSON
/// log's shape with its fields (`app`, `pids`, `url`), so every line wsgimux writes parses.
fn announce(line: &str, fields: serde_json::Value) {
    if crate::logfile::json_log() {
        println!("{}", crate::logfile::json_record("INFO", line, fields));
    } else {
        println!("{line}");
    }
}

/// One app's start-up line: ready (with pids), on demand, answering (upstream), or failed.
fn readiness_line(a: &ReadyApp, g: &Generation, result: Result<Vec<u32>, StartFailure>) -> String {
    let name = &a.spec.name;
    match result {
        Ok(pids) if pids.is_empty() && g.dormant() => format!(
            "app {name}: on demand, {}, {} worker, starts with its first request, route {}",
            a.describe_python(),
            a.worker,
            route_text(&a.spec),
        ),
        Ok(_) if a.worker == preflight::WorkerKind::Upstream => format!(
            "app {name}: ready, {} answers, route {}",
            a.describe_python()
                .trim_start_matches("- (")
                .trim_end_matches(')'),
            route_text(&a.spec),
        ),
        Ok(pids) => format!(
            "app {name}: ready, {}, {} worker, pid {}, route {}",
            a.describe_python(),
            a.worker,
            pids.iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(","),
            route_text(&a.spec),
        ),
        Err(f) => format!("app {name}: failed to start: {} (retrying)", f.reason),
    }
}

fn route_text(spec: &crate::config::AppSpec) -> String {
    spec.routes().join(" ")
}
