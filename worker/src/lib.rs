//! wsgimux's native worker: a Python extension module (`wsgimux_native`, abi3, CPython ≥ 3.9)
//! whose `serve()` runs one WSGI app behind hyper's HTTP/1.1 server on a Unix socket.
//!
//! The launcher (wsgimux's worker script) loads the app exactly as the portable worker does,
//! then calls `serve()`, which never returns while serving: the calling (main) thread runs the
//! tokio runtime's accept loop with the GIL released, waking every 100 ms to run Python's signal
//! handlers; [`threads`] run the app. SIGTERM (or wsgimux going away) stops accepting, lets the
//! requests in flight finish (bounded), and returns.
//!
//! Knows nothing of routes or mounts beyond the headers the front sends (see [`environ`]).

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::StatusCode;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use pyo3::exceptions::{PyKeyboardInterrupt, PyRuntimeError};
use pyo3::prelude::*;
use tokio::net::UnixListener;
use tokio::sync::oneshot;

mod body;
mod environ;
mod input;
mod response;
mod threads;

use body::{FlushCounted, ResponseBody};
use response::Reply;
use threads::{Job, Shared};

/// How often Python's signal handlers get a chance to run, and wsgimux's presence is checked.
const TICK: Duration = Duration::from_millis(100);
/// How long app threads may take to notice the end, once requests are done.
const THREAD_EXIT_WAIT: Duration = Duration::from_secs(2);

#[pyfunction]
#[pyo3(signature = (app, socket, *, threads=8, processes=1, graceful_timeout=8.0, parent_pid=0,
                    app_name=String::from("app"), read_timeout=60.0))]
#[allow(clippy::too_many_arguments)]
fn serve(
    py: Python<'_>,
    app: Py<PyAny>,
    socket: PathBuf,
    threads: usize,
    processes: u32,
    graceful_timeout: f64,
    parent_pid: u32,
    app_name: String,
    read_timeout: f64,
) -> PyResult<()> {
    install_fork_hook();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("wsgimux-io")
        .enable_all()
        .build()?;
    let threads = threads.max(1);
    let shared = Arc::new(Shared {
        app,
        app_name,
        handle: runtime.handle().clone(),
        multithread: threads > 1,
        multiprocess: processes > 1,
        read_timeout: Duration::from_secs_f64(read_timeout.max(0.001)),
        thread_died: AtomicBool::new(false),
        alive: AtomicUsize::new(0),
    });
    let (jobs_tx, jobs_rx) = crossbeam_channel::unbounded::<Job>();
    threads::spawn(&shared, &jobs_rx, threads)?;
    drop(jobs_rx);
    let grace = Duration::from_secs_f64(graceful_timeout.max(0.0));
    let stopping = Stopping {
        grace,
        parent_pid,
        shared: shared.clone(),
    };
    let outcome = py.detach(|| runtime.block_on(run(socket, jobs_tx, stopping)));
    py.detach(|| {
        // Ends the connections still open (after the grace period) and with them the last job
        // senders: idle app threads then return.
        runtime.shutdown_timeout(Duration::from_millis(500));
        let deadline = Instant::now() + THREAD_EXIT_WAIT;
        while shared.alive.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    });
    outcome
}

struct Stopping {
    grace: Duration,
    parent_pid: u32,
    shared: Arc<Shared>,
}

/// Serves until SIGTERM, a Python signal handler raising, wsgimux going away or an app thread
/// dying; then drains.
async fn run(
    socket: PathBuf,
    jobs: crossbeam_channel::Sender<Job>,
    stop: Stopping,
) -> PyResult<()> {
    let listener = listen(&socket).await?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let graceful = GracefulShutdown::new();
    let mut tick = tokio::time::interval(TICK);
    let name = stop.shared.app_name.clone();
    let outcome: PyResult<()> = loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(Conn::Unix(stream)) => serve_connection(stream, &jobs, &graceful),
                Ok(Conn::Tcp(stream)) => serve_connection(stream, &jobs, &graceful),
                Err(e) => {
                    // Out of file descriptors, usually: back off instead of spinning.
                    eprintln!("{name}: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            _ = term.recv() => break Ok(()),
            _ = tick.tick() => {
                // A KeyboardInterrupt is a request to stop; any other exception a handler
                // raised ends serve() with it.
                let raised = Python::attach(|py| {
                    py.check_signals()
                        .err()
                        .map(|e| (e.is_instance_of::<PyKeyboardInterrupt>(py), e))
                });
                if let Some((interrupted, e)) = raised {
                    break if interrupted { Ok(()) } else { Err(e) };
                }
                if stop.parent_pid != 0 && std::os::unix::process::parent_id() != stop.parent_pid {
                    eprintln!("{name}: wsgimux (pid {}) is gone; stopping", stop.parent_pid);
                    break Ok(());
                }
                if stop.shared.thread_died.load(Ordering::SeqCst) {
                    break Err(PyRuntimeError::new_err("an app thread died; the worker exits so that it is restarted"));
                }
            }
        }
    };
    if let Listener::Unix(_) = listener {
        let _ = std::fs::remove_file(&socket);
    }
    drop(listener);
    drop(jobs);
    if tokio::time::timeout(stop.grace, graceful.shutdown())
        .await
        .is_err()
    {
        eprintln!(
            "{name}: requests still running after {:.0}s; exiting anyway",
            stop.grace.as_secs_f64()
        );
    }
    outcome
}

/// A Unix listener (what wsgimux uses) or, for benchmarks and direct use, a TCP one.
enum Listener {
    Unix(UnixListener),
    Tcp(tokio::net::TcpListener),
}

enum Conn {
    Unix(tokio::net::UnixStream),
    Tcp(tokio::net::TcpStream),
}

impl Listener {
    async fn accept(&self) -> std::io::Result<Conn> {
        match self {
            Listener::Unix(l) => l.accept().await.map(|(s, _)| Conn::Unix(s)),
            Listener::Tcp(l) => {
                let (s, _) = l.accept().await?;
                s.set_nodelay(true)?;
                Ok(Conn::Tcp(s))
            }
        }
    }
}

/// `socket` is a path, or `tcp:HOST:PORT` to serve TCP directly (no front).
async fn listen(socket: &Path) -> std::io::Result<Listener> {
    match socket.to_str().and_then(|s| s.strip_prefix("tcp:")) {
        Some(addr) => Ok(Listener::Tcp(tokio::net::TcpListener::bind(addr).await?)),
        None => listen_unix(socket).map(Listener::Unix),
    }
}

/// Binds under a temporary name and renames, so the path exists only once it accepts: wsgimux
/// takes a successful connect as "ready".
fn listen_unix(path: &Path) -> std::io::Result<UnixListener> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".{}.tmp", std::process::id()));
    let tmp = PathBuf::from(tmp);
    for p in [&tmp, &path.to_path_buf()] {
        let _ = std::fs::remove_file(p);
    }
    let listener = UnixListener::bind(&tmp)?;
    std::fs::rename(&tmp, path)?;
    Ok(listener)
}

fn serve_connection<S>(
    stream: S,
    jobs: &crossbeam_channel::Sender<Job>,
    graceful: &GracefulShutdown,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let jobs = jobs.clone();
    let (stream, flushes) = FlushCounted::new(stream);
    let service = hyper::service::service_fn(move |req| handle(req, jobs.clone(), flushes.clone()));
    let conn =
        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service);
    let conn = graceful.watch(conn);
    tokio::spawn(async move {
        let _ = conn.await;
    });
}

async fn handle(
    req: hyper::Request<Incoming>,
    jobs: crossbeam_channel::Sender<Job>,
    flushes: Arc<AtomicU64>,
) -> Result<hyper::Response<ResponseBody>, Infallible> {
    let (parts, body) = req.into_parts();
    let (reply, answer) = oneshot::channel();
    if jobs.send(Job { parts, body, reply }).is_err() {
        return Ok(Reply::plain(StatusCode::SERVICE_UNAVAILABLE).into_response(None));
    }
    // A dropped sender means the request's thread could not run it (already logged).
    let reply = answer
        .await
        .unwrap_or_else(|_| Reply::plain(StatusCode::INTERNAL_SERVER_ERROR));
    Ok(reply.into_response(Some(flushes)))
}

/// tokio's SIGTERM handler would be inherited by `os.fork()` children (multiprocessing), which
/// would then ignore SIGTERM: give them the default back.
fn install_fork_hook() {
    extern "C" fn reset_in_child() {
        // SAFETY: signal(2) is async-signal-safe; the child is single-threaded here.
        unsafe {
            libc::signal(libc::SIGTERM, libc::SIG_DFL);
        }
    }
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: registers a plain function with no captured state.
        unsafe {
            libc::pthread_atfork(None, None, Some(reset_in_child));
        }
    });
}

#[pymodule]
fn wsgimux_native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(serve, m)?)?;
    m.add_class::<input::Input>()?;
    m.add_class::<input::FileWrapper>()?;
    m.add_class::<response::StartResponse>()?;
    m.add(
        "InvalidResponse",
        m.py().get_type::<response::InvalidResponse>(),
    )?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
