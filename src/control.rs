//! The control socket: how `wsgimux reload` and `wsgimux status` talk to a running server.
//!
//! A Unix socket in the runtime dir (mode 0700, so only the server's user reaches it). One
//! request per connection: a JSON line `{"command": "reload"}`, answered by one JSON line once
//! the outcome is known. Owns the wire format and both ends; what a command does is `reload`'s.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::status::{self, Overview, StatusReport};
use crate::trigger::{Report, Trigger};

pub const SOCKET_NAME: &str = "control.sock";
/// How long a client may take to send its request line.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_REQUEST: u64 = 4096;

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "command")]
pub enum Request {
    Reload,
    Status,
    /// A zero-downtime restart of these apps' processes (`{"command": "restart", "apps": […]}`).
    Restart {
        apps: Vec<String>,
    },
    /// What serves this URL now, by the config in force (`{"command": "explain", "url": …}`).
    Explain {
        url: String,
    },
    /// What a reload of the file would change in what runs (`wsgimux check`), as far as the
    /// file says (an interpreter upgraded in place is seen by the reload itself).
    Preview,
    /// Every thread's Python stack in each of the app's processes (`status --stacks APP`).
    Stacks {
        app: String,
    },
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Response {
    Reload(Report),
    Status(Box<StatusReport>),
    Explain(crate::explain::Explanation),
    Preview(String),
    Stacks(Vec<crate::status::stacks::ProcessStacks>),
    Error(String),
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("no wsgimux is serving this config (nothing answers on {}: {source}); if it runs, name its control socket with --control or WSGIMUX_CONTROL (`wsgimux serve` logs it at start)", path.display())]
    NotRunning {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("wsgimux did not answer on {} within {}s", path.display(), after.as_secs())]
    Timeout { path: PathBuf, after: Duration },
    #[error("talking to wsgimux on {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("wsgimux sent an answer this version does not understand: {0}")]
    Protocol(String),
    #[error("wsgimux refused the request: {0}")]
    Refused(String),
}

/// Whether a server answers on the control socket in `runtime_dir`.
pub fn is_served(runtime_dir: &Path) -> bool {
    std::os::unix::net::UnixStream::connect(runtime_dir.join(SOCKET_NAME)).is_ok()
}

/// Serves the control socket, handing commands to `reload` as triggers.
pub fn serve(
    runtime_dir: &Path,
    triggers: mpsc::Sender<Trigger>,
    overview: watch::Receiver<Arc<Overview>>,
) -> std::io::Result<ControlSocket> {
    let path = runtime_dir.join(SOCKET_NAME);
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path)?;
    let task = tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    tokio::spawn(answer(stream, triggers.clone(), overview.clone()));
                }
                Err(e) => {
                    tracing::warn!("control socket: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    });
    Ok(ControlSocket {
        path,
        task,
        links: Vec::new(),
    })
}

/// The served socket; dropping it stops serving and removes the file and its links.
pub struct ControlSocket {
    path: PathBuf,
    task: JoinHandle<()>,
    links: Vec<Link>,
}

/// A folder in the runtime area that leads to the control socket (see [`socket_for_config`]),
/// locked while it is this server's.
struct Link {
    dir: PathBuf,
    _lock: crate::runtime_dir::area::DirLock,
}

impl ControlSocket {
    /// Makes exactly `dirs` lead here: each a folder holding a `control.sock` link to this
    /// socket (made, or kept), and removes the links it made before that are not in `dirs`.
    /// Returns what could not be linked.
    pub fn link_from(&mut self, dirs: &[PathBuf]) -> Vec<(PathBuf, String)> {
        let mut failed = Vec::new();
        let (keep, drop): (Vec<Link>, Vec<Link>) = std::mem::take(&mut self.links)
            .into_iter()
            .partition(|l| dirs.contains(&l.dir));
        for old in drop {
            let _ = std::fs::remove_dir_all(&old.dir);
        }
        self.links = keep;
        for dir in dirs {
            if self.links.iter().any(|l| &l.dir == dir) {
                continue;
            }
            let made = crate::runtime_dir::area::lock(dir, true)
                .map_err(|e| e.to_string())
                .and_then(|lock| {
                    let link = socket_path(dir);
                    let _ = std::fs::remove_file(&link);
                    std::os::unix::fs::symlink(&self.path, &link)
                        .map(|()| lock)
                        .map_err(|e| e.to_string())
                });
            match made {
                Ok(lock) => self.links.push(Link {
                    dir: dir.clone(),
                    _lock: lock,
                }),
                Err(e) => failed.push((dir.clone(), e)),
            }
        }
        failed
    }
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.path);
        for l in &self.links {
            let _ = std::fs::remove_dir_all(&l.dir);
        }
    }
}

async fn answer(
    stream: UnixStream,
    triggers: mpsc::Sender<Trigger>,
    overview: watch::Receiver<Arc<Overview>>,
) {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(tokio::io::AsyncReadExt::take(read, MAX_REQUEST));
    let response = match tokio::time::timeout(REQUEST_TIMEOUT, reader.read_line(&mut line)).await {
        Err(_) => Response::Error("no request within 5s".into()),
        Ok(Err(e)) => Response::Error(format!("reading the request: {e}")),
        Ok(Ok(_)) => match serde_json::from_str::<Request>(&line) {
            Err(e) => Response::Error(format!("unknown request {:?}: {e}", line.trim())),
            Ok(Request::Status) => {
                let snapshot = overview.borrow().clone();
                Response::Status(Box::new(status::collect(&snapshot)))
            }
            Ok(Request::Reload) => {
                let (tx, rx) = oneshot::channel();
                ask(&triggers, Trigger::Command(tx), rx).await
            }
            Ok(Request::Explain { url }) => explain_now(&overview.borrow().clone(), &url),
            Ok(Request::Preview) => {
                let snapshot = overview.borrow().clone();
                preview_now(&snapshot).await
            }
            Ok(Request::Stacks { app }) => {
                let snapshot = overview.borrow().clone();
                match status::stacks::collect(&snapshot, &app).await {
                    Ok(found) => Response::Stacks(found),
                    Err(e) => Response::Error(e),
                }
            }
            Ok(Request::Restart { apps }) => {
                let (tx, rx) = oneshot::channel();
                ask(&triggers, Trigger::Restart { apps, reply: tx }, rx).await
            }
        },
    };
    let mut out = serde_json::to_string(&response).unwrap_or_else(|e| {
        serde_json::json!({ "error": format!("cannot encode the answer: {e}") }).to_string()
    });
    out.push('\n');
    let _ = write.write_all(out.as_bytes()).await;
}

/// The file diffed against the config in force, in words (`ConfigDiff::preview`).
async fn preview_now(overview: &Overview) -> Response {
    let Some(running) = &overview.effective else {
        return Response::Error("wsgimux is still starting".into());
    };
    let text = match tokio::fs::read_to_string(&overview.config).await {
        Ok(t) => t,
        Err(e) => {
            return Response::Error(format!("cannot read {}: {e}", overview.config.display()))
        }
    };
    match crate::config::from_yaml(&text, &overview.config) {
        Ok(file) => Response::Preview(crate::config::diff::diff(running, &file).preview()),
        Err(e) => Response::Error(e.to_string()),
    }
}

/// What a reload of the file would change, asked of the server on `socket`.
pub async fn preview(socket: &Path, limit: Duration) -> Result<String, ControlError> {
    match request(socket, &Request::Preview, limit).await? {
        Response::Preview(text) => Ok(text),
        Response::Error(e) => Err(ControlError::Protocol(e)),
        other => Err(ControlError::Protocol(format!(
            "a preview request was answered with {other:?}"
        ))),
    }
}

/// `explain` by the config and apps in force, with their certificates read now.
fn explain_now(overview: &Overview, url: &str) -> Response {
    let Some(config) = &overview.effective else {
        return Response::Error("wsgimux is still starting".into());
    };
    let apps: Vec<_> = overview.apps.iter().map(|a| (*a.app).clone()).collect();
    let stores: Vec<crate::tls::CertStore> = config
        .tls
        .values()
        .filter_map(|spec| crate::tls::CertStore::load(spec).ok())
        .collect();
    let certified = |host: &str| stores.iter().any(|s| s.covers(host));
    match crate::explain::explain(config, &apps, url, certified) {
        Ok(e) => Response::Explain(e),
        Err(e) => Response::Error(e.to_string()),
    }
}

/// `wsgimux explain`, asked of the running server: what serves `url` now.
pub async fn explain(
    socket: &Path,
    url: String,
    limit: Duration,
) -> Result<crate::explain::Explanation, ControlError> {
    match request(socket, &Request::Explain { url }, limit).await? {
        Response::Explain(text) => Ok(text),
        other => Err(ControlError::Protocol(format!(
            "an explain request was answered with {other:?}"
        ))),
    }
}

/// Hands `trigger` to the reload loop and waits for its report.
async fn ask(
    triggers: &mpsc::Sender<Trigger>,
    trigger: Trigger,
    report: oneshot::Receiver<Report>,
) -> Response {
    if triggers.send(trigger).await.is_err() {
        return Response::Error("wsgimux is stopping".into());
    }
    match report.await {
        Ok(report) => Response::Reload(report),
        Err(_) => Response::Error("wsgimux stopped before it was done".into()),
    }
}

/// The control socket of the server whose runtime dir is `runtime_dir`.
pub fn socket_path(runtime_dir: &Path) -> PathBuf {
    runtime_dir.join(SOCKET_NAME)
}

/// The control socket `reload` and `status` ask for config `file` (any spelling): found
/// without parsing the file, since a file with a mistake must still reach its server to be
/// reported. First the default runtime dir for the file as given (made absolute, not resolved
/// through links: what names a server however its links are swapped later), then the one for
/// its real path (a server links both, and a configured `runtime_dir`'s socket, from there:
/// [`ControlSocket::link_from`]), then the `runtime_dir` the file names.
pub fn socket_for_config(file: &Path) -> PathBuf {
    let real = std::fs::canonicalize(file).ok();
    for f in std::iter::once(file.to_path_buf()).chain(real) {
        let by_default = socket_path(&crate::runtime_dir::default_for(&f));
        if by_default.exists() {
            return by_default;
        }
    }
    socket_path(&crate::runtime_dir::of_file(file))
}

/// `wsgimux restart`: the server's report on the restart it ran.
pub async fn restart(
    socket: &Path,
    apps: Vec<String>,
    limit: Duration,
) -> Result<Report, ControlError> {
    match request(socket, &Request::Restart { apps }, limit).await? {
        Response::Reload(report) => Ok(report),
        other => Err(ControlError::Protocol(format!(
            "a restart was answered with {other:?}"
        ))),
    }
}

/// `wsgimux reload`: the server's report on the reload it ran.
pub async fn reload(socket: &Path, limit: Duration) -> Result<Report, ControlError> {
    match request(socket, &Request::Reload, limit).await? {
        Response::Reload(report) => Ok(report),
        other => Err(ControlError::Protocol(format!(
            "a reload was answered with {other:?}"
        ))),
    }
}

/// `wsgimux status`: the server's status now.
pub async fn status(socket: &Path, limit: Duration) -> Result<StatusReport, ControlError> {
    match request(socket, &Request::Status, limit).await? {
        Response::Status(report) => Ok(*report),
        other => Err(ControlError::Protocol(format!(
            "a status request was answered with {other:?}"
        ))),
    }
}

/// `wsgimux status --stacks APP`: the Python stacks of the app's processes now.
pub async fn stacks(
    socket: &Path,
    app: String,
    limit: Duration,
) -> Result<Vec<crate::status::stacks::ProcessStacks>, ControlError> {
    match request(socket, &Request::Stacks { app }, limit).await? {
        Response::Stacks(found) => Ok(found),
        Response::Error(e) => Err(ControlError::Protocol(e)),
        other => Err(ControlError::Protocol(format!(
            "a stacks request was answered with {other:?}"
        ))),
    }
}

/// Sends one request to the server on the control socket `socket` and waits (at most
/// `limit`) for the answer.
pub async fn request(
    socket: &Path,
    req: &Request,
    limit: Duration,
) -> Result<Response, ControlError> {
    let path = socket.to_path_buf();
    let io = |source| ControlError::Io {
        path: path.clone(),
        source,
    };
    let stream = match tokio::time::timeout(CONNECT_TIMEOUT, UnixStream::connect(&path)).await {
        Err(_) => {
            return Err(ControlError::Timeout {
                path,
                after: CONNECT_TIMEOUT,
            })
        }
        Ok(Err(source)) => return Err(ControlError::NotRunning { path, source }),
        Ok(Ok(s)) => s,
    };
    let (read, mut write) = stream.into_split();
    let mut line = serde_json::to_string(req).map_err(|e| ControlError::Protocol(e.to_string()))?;
    line.push('\n');
    write.write_all(line.as_bytes()).await.map_err(io)?;
    let mut answer = String::new();
    let mut reader = BufReader::new(read);
    match tokio::time::timeout(limit, reader.read_line(&mut answer)).await {
        Err(_) => return Err(ControlError::Timeout { path, after: limit }),
        Ok(Err(e)) => return Err(io(e)),
        Ok(Ok(0)) => {
            return Err(ControlError::Protocol(
                "the connection closed without an answer".into(),
            ))
        }
        Ok(Ok(_)) => {}
    }
    match serde_json::from_str::<Response>(&answer) {
        Ok(Response::Error(e)) => Err(ControlError::Refused(e)),
        Ok(r) => Ok(r),
        Err(e) => Err(ControlError::Protocol(format!("{e}: {}", answer.trim()))),
    }
}
