//! Listeners: binding, accepting under a connection limit, serving HTTP/1.1 with hyper, adding
//! and closing listeners as reloads ask, and the graceful drain at shutdown. Each request is
//! handed to `proxy`.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;

use crate::gate::{BusyBody, ConnState, Gate, Timeouts, Verdict};
use crate::http1::{HeadLimits, Rejection};
use crate::proxy::{Client, Proxy};

/// Client connections served at once; further clients wait in the listen queue.
pub const MAX_CONNECTIONS: usize = 10_000;
const HEAD_LIMITS: HeadLimits = HeadLimits {
    max_uri_length: 8 * 1024,
    max_header_size: 32 * 1024,
    max_header_field_size: 8 * 1024,
    max_headers: 100,
};
const TIMEOUTS: Timeouts = Timeouts {
    header: Duration::from_secs(60),
    body: Duration::from_secs(60),
    keepalive: Duration::from_secs(75),
};
/// At shutdown, how long requests in flight may take to finish.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("cannot listen on {addr}: permission denied (ports below 1024 need root or the CAP_NET_BIND_SERVICE capability; use a port of 1024 or more)")]
    Privileged { addr: SocketAddr },
    #[error("cannot listen on {addr}: {source}")]
    Other {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Binds every address; the first failure is returned and the sockets bound so far are closed.
pub async fn bind(addrs: &[SocketAddr]) -> Result<Vec<(SocketAddr, TcpListener)>, BindError> {
    let mut out = Vec::new();
    for &addr in addrs {
        match TcpListener::bind(addr).await {
            Ok(l) => out.push((addr, l)),
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied && addr.port() < 1024 => {
                return Err(BindError::Privileged { addr })
            }
            Err(source) => return Err(BindError::Other { addr, source }),
        }
    }
    Ok(out)
}

/// The listeners being served, keyed by their configured address. Listeners come and go with
/// reloads; connections accepted on a listener that goes away are served to their end.
pub struct Server {
    proxy: Arc<Proxy>,
    limit: Arc<Semaphore>,
    graceful: Arc<GracefulShutdown>,
    listening: HashMap<SocketAddr, Listening>,
}

struct Listening {
    local: SocketAddr,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Server {
    pub fn new(proxy: Arc<Proxy>) -> Self {
        Server {
            proxy,
            limit: Arc::new(Semaphore::new(MAX_CONNECTIONS)),
            graceful: Arc::new(GracefulShutdown::new()),
            listening: HashMap::new(),
        }
    }

    /// Starts accepting on a bound listener.
    pub fn add(&mut self, configured: SocketAddr, listener: TcpListener) {
        let local = listener.local_addr().unwrap_or(configured);
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(accept_loop(
            listener,
            self.proxy.clone(),
            self.limit.clone(),
            self.graceful.clone(),
            stop_rx,
        ));
        self.listening
            .insert(configured, Listening { local, stop, task });
    }

    /// Stops accepting on a listener and closes its socket; its open connections carry on.
    pub async fn remove(&mut self, configured: &SocketAddr) {
        if let Some(l) = self.listening.remove(configured) {
            let _ = l.stop.send(true);
            let _ = l.task.await;
        }
    }

    /// The addresses actually listened on (a configured port 0 becomes the port chosen).
    pub fn local_addrs(&self) -> Vec<(SocketAddr, SocketAddr)> {
        let mut v: Vec<_> = self.listening.iter().map(|(c, l)| (*c, l.local)).collect();
        v.sort();
        v
    }

    /// Stops accepting everywhere, then lets requests in flight finish for at most
    /// [`DRAIN_TIMEOUT`].
    pub async fn shutdown(mut self) {
        for (_, l) in self.listening.drain() {
            let _ = l.stop.send(true);
            let _ = l.task.await;
        }
        // The accept loops held the other references; they have all returned.
        let Ok(graceful) = Arc::try_unwrap(self.graceful) else {
            return;
        };
        let open = graceful.count();
        if open > 0 {
            tracing::info!(
                "waiting up to {}s for {open} connection(s) to finish",
                DRAIN_TIMEOUT.as_secs()
            );
        }
        if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
            .await
            .is_err()
        {
            tracing::warn!(
                "connections still open after {}s; closing them",
                DRAIN_TIMEOUT.as_secs()
            );
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    proxy: Arc<Proxy>,
    limit: Arc<Semaphore>,
    graceful: Arc<GracefulShutdown>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut builder = http1::Builder::new();
    // The gate enforces the head limits and client timeouts; hyper's own are set wider so
    // they never decide first.
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(None)
        .max_headers(HEAD_LIMITS.max_headers + 1)
        .max_buf_size((HEAD_LIMITS.max_header_size * 2).max(64 * 1024))
        .keep_alive(true);
    loop {
        // Take a connection slot before accepting: at the limit, clients wait in the backlog.
        let permit = tokio::select! {
            p = limit.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
            _ = stopping(&mut shutdown) => return,
        };
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off rather than spin.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = stopping(&mut shutdown) => return,
        };
        let _ = stream.set_nodelay(true);
        let client = Client {
            peer,
            scheme: "http",
        };
        let proxy = proxy.clone();
        let state = ConnState::new();
        let gate = Gate::new(stream, state.clone(), HEAD_LIMITS, TIMEOUTS);
        let service = service_fn(move |req| {
            let proxy = proxy.clone();
            let state = state.clone();
            async move {
                let busy = state.busy();
                // hyper hands over requests in the order the gate passed their heads.
                let verdict =
                    state
                        .next_verdict()
                        .unwrap_or(Verdict::Reject(Rejection::Malformed(
                            "request out of order",
                        )));
                let resp = proxy.handle(req, client, verdict).await;
                Ok::<_, Infallible>(resp.map(|b| BusyBody::new(b, busy)))
            }
        });
        let conn = graceful.watch(builder.serve_connection(TokioIo::new(gate), service));
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!("connection from {peer}: {e}");
            }
            drop(permit);
        });
    }
}

/// Resolves once shutdown has begun (or its sender is gone).
async fn stopping(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}
