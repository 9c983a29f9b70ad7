//! Pooled HTTP/1.1 connections to one child process's Unix socket (or, for `command:` apps on
//! `{port}` and `upstream:` apps, a TCP address).
//!
//! An [`Endpoint`] is one ready child (or upstream server). A connection goes back to its endpoint's idle pool only
//! when the response body has been read to its end; a body dropped early takes its connection
//! with it (HTTP/1.1 has no other way to abandon a response). Knows nothing of routes or WSGI.

use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body type of every request and response wsgimux relays.
pub type ProxyBody = BoxBody<Bytes, BoxError>;

/// How long a connect to a child's socket may take (it is local: long means stuck).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Idle connections kept per child; more are closed when returned.
const MAX_IDLE: usize = 256;
/// Idle connections to wsgimux's own workers older than this are closed rather than reused
/// (the workers keep them 300 s).
pub const WORKER_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// The same for servers wsgimux did not write (`command:`, `upstream:`), whose keep-alive
/// timeout it does not know: under gunicorn's 2 s default, the shortest common one (uvicorn's
/// is 5 s, waitress's 120 s), so a connection is dropped here before the server drops it.
pub const SERVER_IDLE_TIMEOUT: Duration = Duration::from_millis(1500);
/// A reused connection idle this long may have met its child's keep-alive timeout (gunicorn's
/// is 2 s): a bodiless idempotent request sent on it is kept to be sent again.
const RESEND_AFTER_IDLE: Duration = Duration::from_millis(500);

pub use crate::config::Address;

/// Requests past their deadline held per process at most (see [`Endpoint::hold`]).
const MAX_HELD: usize = 4096;
/// How long one is held at most.
const HOLD_LIMIT: Duration = Duration::from_secs(600);

/// The processes of an app that answer on their sockets: published by `supervisor` (its only
/// writer), read by `proxy`.
#[derive(Debug, Clone, Default)]
pub struct Endpoints {
    pub ready: Arc<[Arc<Endpoint>]>,
    /// The generation's first start is under way: no process of it has answered yet and none
    /// has failed to start. A request may wait for it (the app has not failed, it is coming).
    pub starting: bool,
    /// No process answers and the last start failed: requests learn the app failed to start.
    pub failing: bool,
}

/// The request side's handle on dormant processes (`start: on_demand`, or stopped by
/// `idle_timeout`): [`Demand::wake`] asks `supervisor` to start them. A count of wakes, so a
/// slot can tell a wake that came after it went dormant from one it already answered.
#[derive(Debug, Clone)]
pub struct Demand(Arc<tokio::sync::watch::Sender<u64>>);

impl Default for Demand {
    fn default() -> Self {
        Demand(Arc::new(tokio::sync::watch::channel(0).0))
    }
}

impl Demand {
    pub fn wake(&self) {
        self.0.send_modify(|n| *n += 1);
    }

    /// Wakes so far.
    pub fn count(&self) -> u64 {
        *self.0.borrow()
    }

    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.0.subscribe()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("cannot connect to {address}: {source}")]
    Connect {
        address: Address,
        #[source]
        source: std::io::Error,
    },
    #[error("connecting to {address} took over {}s", CONNECT_TIMEOUT.as_secs())]
    ConnectTimeout { address: Address },
    #[error("TLS with {address} failed: {reason}")]
    Tls { address: Address, reason: String },
    #[error("request to {address} failed: {source}")]
    Request {
        address: Address,
        #[source]
        source: hyper::Error,
    },
    #[error("{address} sent more than {MAX_INFORMATIONAL} informational (1xx) responses and no final one")]
    Informational { address: Address },
    /// No answer by the request's deadline; the request is held (see [`Endpoint::stuck`]).
    #[error("{address} did not answer in time")]
    TimedOut { address: Address },
}

impl UpstreamError {
    /// What was wrong with the response, when the child answered with one hyper could not
    /// read (as opposed to not answering at all); `head_limit` is the response head limit it
    /// was read under.
    pub fn invalid_response(&self, head_limit: usize) -> Option<String> {
        match self {
            UpstreamError::Request { source, .. } if source.is_parse_too_large() => Some(format!(
                "a response head over limits.max_response_header_size ({head_limit} bytes)"
            )),
            UpstreamError::Request { source, .. }
                if source.is_parse() || source.is_parse_status() =>
            {
                Some(source.to_string())
            }
            UpstreamError::Informational { .. } => Some(format!(
                "more than {MAX_INFORMATIONAL} informational (1xx) responses and no final one"
            )),
            _ => None,
        }
    }
}

/// A failed send; `unsent` holds the request when none of it reached the child (the connect
/// failed), so it can safely go to another process.
pub struct SendError {
    pub error: UpstreamError,
    pub unsent: Option<Request<ProxyBody>>,
}

struct Idle {
    sender: Conn,
    since: Instant,
}

/// One ready child process (or upstream server): where to reach it and its idle connections.
pub struct Endpoint {
    address: Address,
    /// The child's pid; 0 for an upstream server wsgimux did not start.
    pid: u32,
    /// Idle connections, one pool per front thread (and one for the rest, the last): a
    /// connection's hyper task runs on the thread that opened it, so a request taking it
    /// from another thread would cross threads twice.
    idle: Box<[Mutex<Vec<Idle>>]>,
    /// Idle connections older than this are closed rather than reused.
    idle_timeout: Duration,
    in_flight: AtomicUsize,
    /// Requests past their deadline that the process still works on (each holds one of its
    /// threads): counted in `in_flight` too, until their answers come or the process ends.
    stuck: AtomicUsize,
    /// Told once per request that ends: wakes one request waiting for a place in the app
    /// (`overflow_wait`).
    freed: tokio::sync::Notify,
    /// Upgraded connections (WebSockets) open to this process: its drain waits for them too,
    /// but they are not requests (admission does not count them).
    tunnels: AtomicUsize,
    /// Requests this process answered (counted when their responses end).
    pub stats: crate::metrics::Counters,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("address", &self.address)
            .field("pid", &self.pid)
            .finish()
    }
}

impl Endpoint {
    /// A wsgimux worker's endpoint (idle connections kept [`WORKER_IDLE_TIMEOUT`]).
    pub fn new(address: Address, pid: u32) -> Arc<Self> {
        Self::keeping_idle(address, pid, WORKER_IDLE_TIMEOUT)
    }

    /// An endpoint whose idle connections are kept `idle_timeout`.
    pub fn keeping_idle(address: Address, pid: u32, idle_timeout: Duration) -> Arc<Self> {
        Arc::new(Endpoint {
            address,
            pid,
            idle: (0..=crate::front_thread::count())
                .map(|_| Mutex::new(Vec::new()))
                .collect(),
            idle_timeout,
            in_flight: AtomicUsize::new(0),
            stuck: AtomicUsize::new(0),
            freed: tokio::sync::Notify::new(),
            tunnels: AtomicUsize::new(0),
            stats: Default::default(),
        })
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Where the process (or server) is reached.
    pub fn address(&self) -> &Address {
        &self.address
    }

    /// Requests sent and not yet finished (response body not fully relayed).
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Requests that passed their deadline and that the process still works on.
    pub fn stuck(&self) -> usize {
        self.stuck.load(Ordering::Relaxed)
    }

    /// Resolves once a request on this process ends after the call (or one ended unclaimed
    /// before it). One ending wakes one waiter; a waiter that gives up passes its wake on.
    pub fn freed(&self) -> tokio::sync::futures::Notified<'_> {
        self.freed.notified()
    }

    /// Upgraded connections open to this process.
    pub fn tunnels(&self) -> usize {
        self.tunnels.load(Ordering::Relaxed)
    }

    /// Counts an upgraded connection as open until the guard is dropped.
    pub fn open_tunnel(self: &Arc<Self>) -> TunnelGuard {
        self.tunnels.fetch_add(1, Ordering::Relaxed);
        TunnelGuard(self.clone())
    }

    /// Closes the idle connections (the child is going away).
    pub fn close_idle(&self) {
        for pool in self.idle.iter() {
            if let Ok(mut idle) = pool.lock() {
                idle.clear();
            }
        }
    }

    /// Sends one request; the response body returns the connection to the pool when read, and
    /// fails when the child sends nothing of it for `idle` (where set). A response head (each
    /// 1xx head too) over `head_limit` bytes fails the request. A request sent and not
    /// answered by `deadline` fails as [`UpstreamError::TimedOut`] and is held: counted as
    /// stuck (and in flight) until the process answers it, whose answer is then read and
    /// dropped, or the process ends.
    pub async fn send(
        self: &Arc<Self>,
        mut req: Request<ProxyBody>,
        idle: Option<Duration>,
        head_limit: usize,
        deadline: tokio::time::Instant,
    ) -> Result<Response<PooledBody>, SendError> {
        let guard = InFlight::new(self.clone());
        while let Some((mut sender, idle_for)) = self.take_idle(head_limit) {
            // What to send again if this connection closes before any byte of the answer (the
            // child timed it out as the request went): bodiless idempotent requests, on
            // connections idle long enough for a child's keep-alive timer to have run (a copy
            // per request would cost every request of a busy pool).
            let mut resend = (idle_for >= RESEND_AFTER_IDLE)
                .then(|| resendable(&req))
                .flatten();
            // A pooled connection the child has closed hands the request back unsent.
            if sender.ready().await.is_err() {
                continue;
            }
            let answer = match self.answer_by(&mut sender, req, deadline).await {
                Ok(answer) => answer,
                Err(late) => return Err(self.hold(late, sender, guard)),
            };
            match answer {
                Ok(resp) => return Ok(PooledBody::wrap(resp, sender, guard, idle)),
                Err(_) if sender.was_cut() => return Err(self.flooded()),
                Err(mut e) => match e.take_message() {
                    Some(unsent) => req = unsent,
                    None => {
                        let error = e.into_error();
                        match resend.take().filter(|_| error.is_incomplete_message()) {
                            Some(again) => {
                                tracing::debug!(pid = self.pid, "a reused connection closed before the answer; sending again on a new one");
                                req = again;
                                // Its neighbours in the pool may be as old: a new connection.
                                break;
                            }
                            None => return Err(self.request_error(error)),
                        }
                    }
                },
            }
        }
        // Boxed: a new connection is the rare case, and its state would otherwise make every
        // request's future larger (moved, not just polled).
        let mut sender = match Box::pin(self.connect(head_limit)).await {
            Ok(s) => s,
            Err(error) => {
                return Err(SendError {
                    error,
                    unsent: Some(req),
                })
            }
        };
        let answer = match self.answer_by(&mut sender, req, deadline).await {
            Ok(answer) => answer,
            Err(late) => return Err(self.hold(late, sender, guard)),
        };
        match answer {
            Ok(resp) => Ok(PooledBody::wrap(resp, sender, guard, idle)),
            Err(_) if sender.was_cut() => Err(self.flooded()),
            Err(mut e) => {
                let unsent = e.take_message();
                Err(SendError {
                    error: self.request_error_inner(e.into_error()),
                    unsent,
                })
            }
        }
    }

    /// Sends `req` on `sender` and waits for the answer until `deadline`; past it, the answer
    /// still to come.
    async fn answer_by(
        &self,
        sender: &mut Conn,
        req: Request<ProxyBody>,
        deadline: tokio::time::Instant,
    ) -> Result<AnswerResult, Answer> {
        // Boxed so that it can be handed to a task of its own when late.
        let mut answer: Answer = Box::pin(sender.try_send_request(req));
        tokio::select! {
            biased;
            a = &mut answer => Ok(a),
            _ = tokio::time::sleep_until(deadline) => Err(answer),
        }
    }

    /// A request past its deadline: the process has it and a thread of it works on it, so it
    /// stays in flight and counts as stuck until its answer comes (read to its end and
    /// dropped, the connection pooled) or the connection ends with the process.
    /// Bounded: a server wsgimux cannot replace (`upstream:`) that never answers would
    /// otherwise gather held connections; past [`MAX_HELD`] or after [`HOLD_LIMIT`] a late
    /// request is let go (its connection closed), as before there was holding.
    fn hold(self: &Arc<Self>, late: Answer, sender: Conn, guard: InFlight) -> SendError {
        if self.stuck.fetch_add(1, Ordering::Relaxed) < MAX_HELD {
            let endpoint = self.clone();
            tokio::spawn(async move {
                let answered = async move {
                    if let Ok(resp) = late.await {
                        let mut body = PooledBody::wrap(resp, sender, guard, None).into_body();
                        while let Some(Ok(_)) = http_body_util::BodyExt::frame(&mut body).await {}
                    }
                };
                let _ = tokio::time::timeout(HOLD_LIMIT, answered).await;
                endpoint.stuck.fetch_sub(1, Ordering::Relaxed);
            });
        } else {
            self.stuck.fetch_sub(1, Ordering::Relaxed);
        }
        SendError {
            error: UpstreamError::TimedOut {
                address: self.address.clone(),
            },
            unsent: None,
        }
    }

    fn flooded(&self) -> SendError {
        SendError {
            error: UpstreamError::Informational {
                address: self.address.clone(),
            },
            unsent: None,
        }
    }

    fn request_error(&self, source: hyper::Error) -> SendError {
        SendError {
            error: self.request_error_inner(source),
            unsent: None,
        }
    }

    fn request_error_inner(&self, source: hyper::Error) -> UpstreamError {
        UpstreamError::Request {
            address: self.address.clone(),
            source,
        }
    }

    fn pool(&self) -> &Mutex<Vec<Idle>> {
        &self.idle[crate::front_thread::slot().min(self.idle.len() - 1)]
    }

    /// A pooled connection made with `head_limit` and how long it has been idle (one made
    /// under another limit, before a reload changed it, is closed).
    fn take_idle(&self, head_limit: usize) -> Option<(Conn, Duration)> {
        let mut idle = self.pool().lock().ok()?;
        while let Some(c) = idle.pop() {
            let idle_for = c.since.elapsed();
            let usable = c.sender.head_limit == head_limit && !c.sender.is_closed();
            if usable && idle_for < self.idle_timeout {
                return Some((c.sender, idle_for));
            }
        }
        None
    }

    fn put_idle(&self, sender: Conn) {
        if sender.is_closed() {
            return;
        }
        if let Ok(mut idle) = self.pool().lock() {
            if idle.len() < MAX_IDLE {
                idle.push(Idle {
                    sender,
                    since: Instant::now(),
                });
            }
        }
    }

    async fn connect(&self, head_limit: usize) -> Result<Conn, UpstreamError> {
        let stream = match tokio::time::timeout(CONNECT_TIMEOUT, self.address.connect()).await {
            Err(_) => {
                return Err(UpstreamError::ConnectTimeout {
                    address: self.address.clone(),
                })
            }
            Ok(Err(ConnectError::Io(source))) => {
                return Err(UpstreamError::Connect {
                    address: self.address.clone(),
                    source,
                })
            }
            Ok(Err(ConnectError::Tls(reason))) => {
                return Err(UpstreamError::Tls {
                    address: self.address.clone(),
                    reason,
                })
            }
            Ok(Ok(s)) => s,
        };
        let (stream, switch) = conn::Cuttable::new(stream);
        let (sender, conn) = conn::builder(head_limit)
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| self.request_error_inner(e))?;
        let pid = self.pid;
        // With upgrades: a 101 hands the connection over (`hyper::upgrade::on`) for a tunnel.
        let conn = conn.with_upgrades();
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(pid, "child connection ended: {e}");
            }
        });
        Ok(Conn::new(sender, switch, head_limit))
    }
}

/// Counts an upgraded connection on its endpoint until dropped.
pub struct TunnelGuard(Arc<Endpoint>);

impl Drop for TunnelGuard {
    fn drop(&mut self) {
        self.0.tunnels.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Counts a request as in flight on its endpoint until dropped.
struct InFlight(Arc<Endpoint>);

impl InFlight {
    fn new(ep: Arc<Endpoint>) -> Self {
        ep.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(ep)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.0.freed.notify_one();
    }
}

mod conn;
mod informational;
mod pooled;
mod stream;
use conn::Conn;
use stream::ConnectError;
pub use stream::Health;
/// A child's answer to one request, as hyper gives it.
type AnswerResult = Result<Response<hyper::body::Incoming>, conn::TrySendError>;
/// The answer still to come.
type Answer = Pin<Box<dyn std::future::Future<Output = AnswerResult> + Send>>;
pub use conn::MAX_INFORMATIONAL;
pub use pooled::PooledBody;

#[cfg(test)]
mod tests;

/// A copy of `req` to send again when the connection it went on closes before answering: for
/// methods RFC 9110 §9.2.2 calls idempotent, with no body (nginx's `proxy_next_upstream`
/// default does the same; a body already sent cannot be sent twice).
fn resendable(req: &Request<ProxyBody>) -> Option<Request<ProxyBody>> {
    use hyper::Method;
    let idempotent = matches!(
        *req.method(),
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    );
    if !idempotent || !http_body::Body::is_end_stream(req.body()) {
        return None;
    }
    let mut copy = Request::new(ProxyBody::default());
    *copy.method_mut() = req.method().clone();
    *copy.uri_mut() = req.uri().clone();
    *copy.version_mut() = req.version();
    *copy.headers_mut() = req.headers().clone();
    Some(copy)
}
