//! The commands' bodies: loading a config, starting the long-lived parts of `serve` in order
//! (listeners, children, routes, server), reporting readiness, and shutting down in reverse.

use std::collections::HashMap;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::{mpsc, watch};

use crate::config::{self, Config, ConfigError};
use crate::preflight::{self, ReadyApp};
use crate::proxy::{AppRoute, Proxy, Table};
use crate::routes::RouteTable;
use crate::server::{self, BindError};
use crate::supervisor::{self, Event, Supervisor};

/// The portable worker, carried inside the binary and written to the runtime dir at start.
const PORTABLE_WORKER: &str = include_str!("portable_worker.py");

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot read config {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error("runtime_dir {}: {source}", path.display())]
    RuntimeDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("runtime_dir {} is too long for the socket of app {app:?} ({len} bytes, limit {}); set runtime_dir to a shorter path", path.display(), supervisor::MAX_SOCKET_PATH)]
    RuntimeDirTooLong {
        path: PathBuf,
        app: String,
        len: usize,
    },
    #[error(transparent)]
    Bind(#[from] BindError),
}

/// Reads, validates and preflights a config file.
pub async fn load(path: &Path) -> Result<(Config, Vec<ReadyApp>), StartError> {
    let file = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let text = std::fs::read_to_string(&file).map_err(|source| StartError::Read {
        path: file.clone(),
        source,
    })?;
    let config = config::from_yaml(&text, &file)?;
    let apps = preflight::check(&config).await?;
    Ok((config, apps))
}

/// `wsgimux check`: the report printed for a valid config.
pub fn describe_routes(config: &Config, apps: &[ReadyApp]) -> String {
    let mut out = format!("{}: ok\n", config.file.display());
    for a in &config.listen {
        out.push_str(&format!("listen http://{a}\n"));
    }
    let table = route_table(apps, |i, _| i);
    let rows: Vec<[String; 5]> = table
        .entries()
        .into_iter()
        .map(|(host, route)| {
            let app = &apps[route.target];
            [
                host.map_or("*".to_string(), |h| h.to_string()),
                route.mount.to_string(),
                app.spec.name.clone(),
                format!(
                    "{} ({})",
                    app.interpreter,
                    app.interpreter.executable.display()
                ),
                preflight::worker_kind(&app.interpreter).to_string(),
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

fn route_table<T: Clone>(
    apps: &[ReadyApp],
    target: impl Fn(usize, &ReadyApp) -> T,
) -> RouteTable<T> {
    RouteTable::new(apps.iter().enumerate().flat_map(|(i, app)| {
        let t = target(i, app);
        let hosts: Vec<_> = if app.spec.hosts.is_empty() {
            vec![None]
        } else {
            app.spec.hosts.iter().cloned().map(Some).collect()
        };
        hosts
            .into_iter()
            .map(move |h| (h, app.spec.mount.clone(), t.clone()))
    }))
}

/// The runtime dir: the configured one, else a per-user, per-config default.
pub fn runtime_dir(config: &Config) -> PathBuf {
    if let Some(d) = &config.runtime_dir {
        return d.clone();
    }
    // FNV-1a of the config path: stable across runs, distinct per config.
    let hash = config
        .file
        .as_os_str()
        .as_encoded_bytes()
        .iter()
        .fold(0xcbf29ce484222325u64, |h, &b| {
            (h ^ u64::from(b)).wrapping_mul(0x100000001b3)
        });
    let name = format!("wsgimux-{:012x}", hash & 0xffff_ffff_ffff);
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(d) if Path::new(&d).is_dir() => Path::new(&d).join(name),
        _ => {
            // SAFETY: getuid cannot fail.
            let uid = unsafe { libc::getuid() };
            std::env::temp_dir()
                .join(format!("wsgimux-{uid}"))
                .join(name)
        }
    }
}

fn prepare_runtime_dir(dir: &Path, apps: &[ReadyApp]) -> Result<PathBuf, StartError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let err = |source| StartError::RuntimeDir {
        path: dir.to_path_buf(),
        source,
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(err)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(err)?;
    for app in apps {
        let len = Supervisor::socket_path_len(dir, &app.spec.name);
        if len > supervisor::MAX_SOCKET_PATH {
            return Err(StartError::RuntimeDirTooLong {
                path: dir.to_path_buf(),
                app: app.spec.name.clone(),
                len,
            });
        }
    }
    // Sockets left by a previous run that was killed.
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "sock" || x == "tmp") {
                let _ = std::fs::remove_file(&p);
            }
        }
    }
    // Written under a temporary name and renamed: a concurrent start never reads half a file.
    let worker = dir.join("wsgimux_worker.py");
    if std::fs::read_to_string(&worker).ok().as_deref() != Some(PORTABLE_WORKER) {
        let tmp = dir.join(format!(".wsgimux_worker.{}.tmp", std::process::id()));
        std::fs::write(&tmp, PORTABLE_WORKER).map_err(err)?;
        std::fs::rename(&tmp, &worker).map_err(err)?;
    }
    Ok(worker)
}

/// `wsgimux serve`: runs until SIGTERM or SIGINT.
pub async fn serve(config: Config, apps: Vec<ReadyApp>) -> Result<(), StartError> {
    let dir = runtime_dir(&config);
    let worker = prepare_runtime_dir(&dir, &apps)?;
    let listeners = server::bind(&config.listen).await?;
    let addrs: Vec<SocketAddr> = listeners
        .iter()
        .filter_map(|l| l.local_addr().ok())
        .collect();

    let (events_tx, events_rx) = mpsc::channel(1024);
    let mut supervisor = Supervisor::new(dir.clone(), worker, events_tx);
    let mut endpoints = HashMap::new();
    for app in &apps {
        endpoints.insert(app.spec.name.clone(), supervisor.start(app));
    }
    let table: Table = route_table(&apps, |_, app| {
        Arc::new(AppRoute::new(
            &app.spec.name,
            &app.spec.mount,
            endpoints[&app.spec.name].clone(),
        ))
    });
    // The sender stays here: hot reload (its only writer) will own it.
    let (_routes_tx, routes_rx) = watch::channel(Arc::new(table));
    let proxy = Arc::new(Proxy::new(routes_rx));
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let server = tokio::spawn(server::run(listeners, proxy, shutdown_rx));
    tracing::info!("runtime dir {}", dir.display());
    let reporter = tokio::spawn(report_readiness(apps, addrs, events_rx));

    wait_for_stop_signal().await;
    tracing::info!("stopping: no new connections; finishing requests in flight");
    let _ = shutdown_tx.send(true);
    let _ = server.await;
    tracing::info!("stopping children");
    supervisor.shutdown().await;
    reporter.abort();
    tracing::info!("stopped");
    Ok(())
}

async fn wait_for_stop_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    match (term, int) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            // Without signal handlers there is no graceful way to stop: wait for Ctrl-C.
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Prints one line per app once all its processes answer (or its first start failed), then
/// `ready: http://ADDR` per listener; afterwards keeps draining the supervisor's events.
async fn report_readiness(
    apps: Vec<ReadyApp>,
    addrs: Vec<SocketAddr>,
    mut events: mpsc::Receiver<Event>,
) {
    // Apps not yet reported, with the pids of their processes ready so far.
    let mut pending: HashMap<&str, (&ReadyApp, Vec<u32>)> = apps
        .iter()
        .map(|a| (a.spec.name.as_str(), (a, Vec::new())))
        .collect();
    while !pending.is_empty() {
        let Some(event) = events.recv().await else {
            return;
        };
        let line = match &event {
            Event::Ready { app, pid, .. } => match pending.get_mut(&**app) {
                Some((a, pids)) => {
                    pids.push(*pid);
                    (pids.len() == a.spec.processes as usize).then(|| {
                        let pids: Vec<String> = pids.iter().map(u32::to_string).collect();
                        format!(
                            "app {app}: ready, {} ({}), {} worker, pid {}, route {}",
                            a.interpreter,
                            a.interpreter.executable.display(),
                            preflight::worker_kind(&a.interpreter),
                            pids.join(","),
                            route_text(&a.spec),
                        )
                    })
                }
                None => None,
            },
            Event::StartFailed { app, reason, .. } => pending
                .contains_key(&**app)
                .then(|| format!("app {app}: failed to start: {reason} (retrying)")),
        };
        if let Some(line) = line {
            pending.remove(&**event.app());
            println!("{line}");
        }
    }
    for a in &addrs {
        println!("ready: http://{a}");
    }
    let _ = std::io::stdout().flush();
    while events.recv().await.is_some() {}
}

fn route_text(spec: &crate::config::AppSpec) -> String {
    if spec.hosts.is_empty() {
        format!("*{}", spec.mount)
    } else {
        spec.hosts
            .iter()
            .map(|h| format!("{h}{}", spec.mount))
            .collect::<Vec<_>>()
            .join(" ")
    }
}
