//! Listeners: binding (or taking them from systemd/launchd socket activation), accepting under
//! a connection limit, TLS handshakes, serving HTTP/1.1 (through the `gate`) and HTTP/2 with
//! hyper, adding and closing listeners as reloads ask, and the graceful drain at shutdown.
//! Each request is handed to `proxy`.
//!
//! A connection reads the front's settings (limits, trusted proxies, certificates) from the
//! live snapshot once, when accepted; its requests read the snapshot each time (`proxy`).
//! Never writes the snapshot: `reload` does.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::server::conn::http2;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;

use crate::accesslog::LoggedBody;
use crate::gate::{self, BusyBody, ConnState, Verdict};
use crate::proxy::{Client, Front, Proxy};
use crate::tls::{TlsListener, CERT_CHECK_INTERVAL, HANDSHAKE_TIMEOUT};

mod h1;
mod threads;

use threads::FrontThreads;

/// At shutdown, how long requests in flight may take to finish.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(20);
/// HTTP/2 streams a client may have open at once (nginx: http2_max_concurrent_streams 128).
const H2_MAX_STREAMS: u32 = 128;

#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("cannot listen on {addr}: permission denied. Ports below 1024 need one of: start wsgimux as root with `user:` set in the config (it binds, then runs as that user); give the binary the capability (`sudo setcap cap_net_bind_service=+ep $(which wsgimux)`); or let systemd (wsgimux.socket) or launchd hand it the socket. Or use a port of 1024 or more")]
    Privileged { addr: SocketAddr },
    #[error("cannot listen on {addr}: {source}")]
    Other {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Binds every address, or takes it from the sockets the service manager passed
/// ([`crate::activation`]); the first failure is returned and the sockets bound so far are closed.
pub async fn bind(addrs: &[SocketAddr]) -> Result<Vec<(SocketAddr, TcpListener)>, BindError> {
    let mut out = Vec::new();
    for &addr in addrs {
        if let Some(l) = crate::activation::take(addr) {
            out.push((addr, l));
            continue;
        }
        match listen(addr) {
            Ok(l) => out.push((addr, l)),
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied && addr.port() < 1024 => {
                return Err(BindError::Privileged { addr })
            }
            Err(source) => return Err(BindError::Other { addr, source }),
        }
    }
    Ok(out)
}

/// Pending connections the kernel queues for `accept` (nginx's `backlog`; the kernel caps it
/// at `net.core.somaxconn`). tokio's default, SOMAXCONN (128), drops SYNs under a burst of new
/// clients, and each dropped SYN costs that client a 1 s retransmit.
const LISTEN_BACKLOG: u32 = 4096;

fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// The listeners being served, keyed by their configured address. Listeners come and go with
/// reloads; connections accepted on a listener that goes away are served to their end.
pub struct Server {
    proxy: Arc<Proxy>,
    limit: Arc<Semaphore>,
    max_connections: usize,
    /// Set at shutdown; every connection holds a receiver, so its count is the connections
    /// open and `closed()` resolves when the last one ended.
    drain: watch::Sender<bool>,
    listening: HashMap<SocketAddr, Listening>,
    cert_watch: JoinHandle<()>,
    threads: FrontThreads,
}

struct Listening {
    local: SocketAddr,
    stop: watch::Sender<bool>,
    /// One accept loop per front thread, each on its own handle on the socket.
    tasks: Vec<JoinHandle<()>>,
}

impl Server {
    /// Serves what `proxy`'s live snapshot says; listeners come with [`Server::add`].
    pub fn new(proxy: Arc<Proxy>) -> Self {
        let max_connections = proxy.live().front.limits.max_connections;
        Server {
            limit: Arc::new(Semaphore::new(max_connections)),
            max_connections,
            drain: watch::channel(false).0,
            listening: HashMap::new(),
            cert_watch: tokio::spawn(watch_certificates(proxy.clone())),
            threads: FrontThreads::start(),
            proxy,
        }
    }

    /// Applies a new `max_connections` to the connection limit at once.
    pub fn set_max_connections(&mut self, max: usize) {
        if max > self.max_connections {
            self.limit.add_permits(max - self.max_connections);
        } else if max < self.max_connections {
            // Permits held by open connections are forgotten as they come back.
            let gone = self.limit.forget_permits(self.max_connections - max);
            let rest = self.max_connections - max - gone;
            if rest > 0 {
                let limit = self.limit.clone();
                tokio::spawn(async move {
                    if let Ok(p) = limit.acquire_many_owned(rest as u32).await {
                        p.forget();
                    }
                });
            }
        }
        self.max_connections = max;
    }

    /// Starts accepting on a bound listener, on every front thread: each waits on its own
    /// duplicate of the socket, and whichever is free first takes a new connection.
    pub fn add(&mut self, configured: SocketAddr, listener: TcpListener) {
        let local = listener.local_addr().unwrap_or(configured);
        let (stop, stop_rx) = watch::channel(false);
        let mut sockets = Vec::new();
        match listener.into_std() {
            Ok(socket) => {
                for _ in 1..self.threads.handles().len() {
                    match socket.try_clone() {
                        Ok(s) => sockets.push(s),
                        Err(e) => tracing::warn!(
                            "listener {configured}: accepting on fewer front threads: {e}"
                        ),
                    }
                }
                sockets.push(socket);
            }
            Err(e) => tracing::error!("listener {configured}: cannot accept on it: {e}"),
        }
        let tasks = sockets
            .into_iter()
            .zip(self.threads.handles())
            .map(|(socket, thread)| {
                let (proxy, limit) = (self.proxy.clone(), self.limit.clone());
                let (drain, stop_rx) = (self.drain.subscribe(), stop_rx.clone());
                thread.spawn(async move {
                    // Registered with the front thread's own reactor.
                    match TcpListener::from_std(socket) {
                        Ok(l) => accept_loop(configured, l, proxy, limit, drain, stop_rx).await,
                        Err(e) => tracing::error!("listener {configured}: {e}"),
                    }
                })
            })
            .collect();
        self.listening
            .insert(configured, Listening { local, stop, tasks });
    }

    /// Stops accepting on a listener and closes its socket; its open connections carry on.
    pub async fn remove(&mut self, configured: &SocketAddr) {
        if let Some(l) = self.listening.remove(configured) {
            let _ = l.stop.send(true);
            for task in l.tasks {
                let _ = task.await;
            }
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
        self.cert_watch.abort();
        for (_, l) in self.listening.drain() {
            let _ = l.stop.send(true);
            for task in l.tasks {
                let _ = task.await;
            }
        }
        // The accept loops held receivers too; they have all returned.
        let open = self.drain.receiver_count();
        if open > 0 {
            tracing::info!(
                "waiting up to {}s for {open} connection(s) to finish",
                DRAIN_TIMEOUT.as_secs()
            );
        }
        self.drain.send_replace(true);
        if tokio::time::timeout(DRAIN_TIMEOUT, self.drain.closed())
            .await
            .is_err()
        {
            tracing::warn!(
                "connections still open after {}s; closing them",
                DRAIN_TIMEOUT.as_secs()
            );
        }
        self.threads.stop().await;
    }
}

/// Reloads certificate files that changed, every [`CERT_CHECK_INTERVAL`]; open connections
/// keep the certificate they were made with.
async fn watch_certificates(proxy: Arc<Proxy>) {
    let mut tick = tokio::time::interval(CERT_CHECK_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let current = proxy.live().front.clone();
        for (addr, t) in &current.tls {
            let store = t.store.clone();
            // File reads off the async threads.
            let outcome = tokio::task::spawn_blocking(move || store.reload_if_changed()).await;
            match outcome {
                Ok(Some(Ok(()))) => tracing::info!("listener {addr}: certificates reloaded"),
                Ok(Some(Err(e))) => tracing::warn!(
                    "listener {addr}: certificate files changed but do not load, still serving the previous ones: {e}"
                ),
                _ => {}
            }
        }
    }
}

async fn accept_loop(
    configured: SocketAddr,
    listener: TcpListener,
    proxy: Arc<Proxy>,
    limit: Arc<Semaphore>,
    drain: watch::Receiver<bool>,
    mut shutdown: watch::Receiver<bool>,
) {
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
        let current = proxy.live().front.clone();
        let proxy = proxy.clone();
        let drain = drain.clone();
        tokio::spawn(async move {
            serve_connection(configured, stream, peer, current, proxy, drain).await;
            drop(permit);
        });
    }
}

async fn serve_connection(
    configured: SocketAddr,
    stream: TcpStream,
    peer: SocketAddr,
    settings: Arc<Front>,
    proxy: Arc<Proxy>,
    drain: watch::Receiver<bool>,
) {
    let local = stream.local_addr().unwrap_or(configured);
    let client = Client {
        peer,
        peer_ip: Client::ip_text(peer),
        local,
        scheme: "http",
        // Decided per request by the proxy, from the request's snapshot (`Client::under`).
        trusted: false,
        // The gate times HTTP/1.1 bodies.
        body_timeout: None,
        gate: None,
    };
    match settings.tls.get(&configured) {
        None => h1::serve(stream, client, &settings, proxy, drain).await,
        // Boxed: a TLS session's state is large, and a plain connection's task (alive as long
        // as the connection, idle or not) should be only as large as the plain path needs.
        Some(tls) => Box::pin(serve_tls(stream, client, tls, &settings, proxy, drain)).await,
    }
}

async fn serve_tls(
    stream: TcpStream,
    client: Client,
    tls: &TlsListener,
    settings: &Front,
    proxy: Arc<Proxy>,
    drain: watch::Receiver<bool>,
) {
    let peer = client.peer;
    let tls_stream =
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.acceptor.accept(stream)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                tracing::debug!("TLS handshake with {peer} failed: {e}");
                return;
            }
            Err(_) => {
                tracing::debug!("TLS handshake with {peer} timed out");
                return;
            }
        };
    let alpn = tls_stream.get_ref().1.alpn_protocol();
    if alpn == Some(crate::tls::ACME_TLS_ALPN) {
        // A CA's TLS-ALPN-01 validation: the handshake was the answer; nothing is served.
        tracing::info!("answered a TLS-ALPN-01 validation from {peer}");
        return;
    }
    let h2 = alpn == Some(b"h2");
    let client = Client {
        scheme: "https",
        body_timeout: h2.then_some(settings.limits.body_timeout),
        ..client
    };
    if h2 {
        serve_h2(tls_stream, client, settings, proxy, drain).await
    } else {
        h1::serve(tls_stream, client, settings, proxy, drain).await
    }
}

async fn serve_h2<S>(
    stream: S,
    client: Client,
    settings: &Front,
    proxy: Arc<Proxy>,
    mut drain: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let state = ConnState::new();
    let peer = client.peer;
    let service_state = state.clone();
    let service = service_fn(move |req: Request<Incoming>| {
        let verdict = gate::admit_h2(&req);
        answer(
            proxy.clone(),
            service_state.clone(),
            client.clone(),
            req,
            verdict,
        )
    });
    let limits = settings.limits;
    let mut builder = http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .max_concurrent_streams(H2_MAX_STREAMS)
        .max_header_list_size(u32::try_from(limits.max_header_size).unwrap_or(u32::MAX))
        .keep_alive_interval(Some(limits.keepalive_timeout))
        .keep_alive_timeout(Duration::from_secs(20));
    let mut conn = pin!(builder.serve_connection(TokioIo::new(stream), service));
    let mut draining = false;
    // HTTP/2 has no per-request head wait to hang an idle timeout on: close connections that
    // had no stream for keepalive_timeout.
    let mut check = tokio::time::interval(limits.keepalive_timeout.min(Duration::from_secs(5)));
    loop {
        tokio::select! {
            r = &mut conn => {
                if let Err(e) = r {
                    tracing::debug!("HTTP/2 connection from {peer}: {e}");
                }
                return;
            }
            _ = stopping(&mut drain), if !draining => {
                // GOAWAY: streams open finish, no new ones start.
                conn.as_mut().graceful_shutdown();
                draining = true;
            }
            _ = check.tick() => {
                if state.idle_for().is_some_and(|d| d >= limits.keepalive_timeout) {
                    tracing::debug!("HTTP/2 connection from {peer}: idle, closing");
                    return;
                }
            }
        }
    }
}

/// One request of a connection: marked busy until its response body ends (the idle timeouts
/// never run during a response), answered by the proxy under the gate's `verdict`.
pub(crate) async fn answer(
    proxy: Arc<Proxy>,
    state: Arc<ConnState>,
    client: Client,
    req: Request<Incoming>,
    verdict: Verdict,
) -> Result<Response<BusyBody<LoggedBody>>, Infallible> {
    let busy = state.busy();
    let resp = proxy.handle(req, client, verdict).await;
    Ok(resp.map(|b| BusyBody::new(b, busy)))
}

/// Resolves once shutdown has begun (or its sender is gone).
async fn stopping(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}
