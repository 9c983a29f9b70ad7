//! The life of one request, in named phases: admit (host, redirect, host-wide static
//! folders) → select (route, app static folders, queue limit, a ready process, declared body
//! size) → prepare (headers, target, mount, the body's first 64 KiB) → send, with one resend
//! of a request none of which reached a process → relay the response.
//!
//! Reads one [`Live`] snapshot per request (cloned out of a `watch` receiver; no lock is held
//! across an `.await`) and the apps' endpoint lists. Never starts or stops a process (a
//! dormant app is woken through its `Demand`), never writes the snapshot, and chooses no
//! status itself: failures are `ProxyError`s, which `error` turns into statuses.
//!
//! Rooms: `live` (the snapshot), `route` (an app's route and process choice), `headers`
//! (hop-by-hop, forwarded, mount), `body` (the request body's limits and pre-read).

mod body;
mod error_page;
mod headers;
mod live;
mod route;
mod spool;
mod tunnel;

use std::borrow::Cow;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::http::request::Parts;
use hyper::{Request, Response, Uri, Version};
use percent_encoding::percent_decode;
use tokio::sync::watch;

use crate::accesslog::{AccessLog, LoggedBody, Served};
use crate::config::RequestBuffering;
use crate::error::ProxyError;
use crate::gate::{ConnState, Verdict};
use crate::http1::Rejection;
use crate::routes::{normalize_host, RouteTable};
use crate::upstream::{Endpoint, PooledBody, ProxyBody, UpstreamError};

/// How much later than a request's deadline a send that never got the request out is given
/// up: the send decides at the deadline itself for a request it sent.
const SEND_GRACE: Duration = Duration::from_millis(100);

use body::{BodyFault, LimitedBody, PrefixedBody};
pub use headers::MOUNT_HEADER;
pub use live::{Front, FrontError, HttpsRedirect, Live};
pub use route::AppRoute;

pub type Table = RouteTable<Arc<AppRoute>>;

/// A request none of which reached a process is sent once more, to another process.
const MAX_ATTEMPTS: u32 = 2;

/// Where a request came from, and how the listener it came in on treats it.
#[derive(Debug, Clone)]
pub struct Client {
    pub peer: SocketAddr,
    /// The peer's IP address as text, made once per connection: X-Forwarded-For's value and
    /// the access log's.
    pub peer_ip: HeaderValue,
    /// The address the connection came in on (the Host of an HTTP/1.0 request that named
    /// none, as nginx gives it).
    pub local: SocketAddr,
    pub scheme: &'static str,
    /// The peer is in `trusted_proxies`: its forwarded headers are believed. Decided per
    /// request, by the request's own snapshot (`Client::under`).
    pub trusted: bool,
    /// The longest wait between two reads of a request body, where no gate enforces it
    /// (HTTP/2: the gate only sees HTTP/1.1 bytes); per request, like `trusted`.
    pub body_timeout: Option<Duration>,
    /// The HTTP/1.1 connection's gate, told when the connection becomes a tunnel.
    pub gate: Option<Arc<ConnState>>,
}

impl Client {
    /// The client as a request sees it by its snapshot's `front`: what the proxy decides for a
    /// request comes from the request's own snapshot (ARCHITECTURE.md, "one rule"), so a
    /// reload's `trusted_proxies` or `body_timeout` reaches the next request of a kept-alive
    /// connection with its routes.
    pub fn under(self, front: &Front) -> Client {
        Client {
            trusted: front.trusted.iter().any(|c| c.contains(self.peer.ip())),
            body_timeout: self.body_timeout.map(|_| front.limits.body_timeout),
            ..self
        }
    }

    /// `peer`'s address as a header value (its IP, without the port).
    pub fn ip_text(peer: SocketAddr) -> HeaderValue {
        // An IP address is always a valid header value; the fallback is never taken.
        HeaderValue::from_str(&peer.ip().to_string())
            .unwrap_or_else(|_| HeaderValue::from_static("unknown"))
    }
}

pub struct Proxy {
    live: watch::Receiver<Arc<Live>>,
}

/// The request's target as the route table reads it.
struct Target {
    /// Normalized host (no port), empty when the request named none.
    host: String,
    /// As the client sent it, for `Host` and `X-Forwarded-Host` (a Host header's value shares
    /// its bytes).
    host_raw: Option<HeaderValue>,
    /// Kept for a resend's fresh lookup; cloning a parsed `Uri` shares its bytes.
    uri: Uri,
}

/// A route and the process chosen for the request.
struct Selected {
    route: Arc<AppRoute>,
    endpoint: Arc<Endpoint>,
}

/// The request as it goes to a child, and what a resend needs to redo.
struct Prepared {
    request: Request<ProxyBody>,
    /// The mount prefix a trusted proxy sent (it joins SCRIPT_NAME).
    outer_mount: Option<String>,
    fault: Arc<BodyFault>,
}

impl Proxy {
    pub fn new(live: watch::Receiver<Arc<Live>>) -> Self {
        Proxy { live }
    }

    /// The snapshot in force now.
    pub fn live(&self) -> Arc<Live> {
        self.live.borrow().clone()
    }

    /// Answers one request; `verdict` is the gate's word on it.
    pub async fn handle(
        &self,
        req: Request<Incoming>,
        client: Client,
        verdict: Verdict,
    ) -> Response<LoggedBody> {
        let live = self.live();
        let client = client.under(&live.front);
        let mut app = None;
        let http10 =
            (req.version() == Version::HTTP_10).then(|| req.method() == hyper::Method::HEAD);
        let (log, result) = match verdict {
            Verdict::Reject(r) => (
                AccessLog::refused(client.peer_ip.clone()),
                Err(ProxyError::Rejected(r)),
            ),
            Verdict::Forward { asterisk: true, .. } => (
                AccessLog::begin(&req, client.peer_ip.clone()),
                Ok(crate::error::server_options()),
            ),
            Verdict::Forward { .. } => {
                let log = AccessLog::begin(&req, client.peer_ip.clone());
                let gate = client.gate.clone();
                let mut result = self.forward(req, client, &live, &mut app).await;
                let pending = result.as_mut().ok().and_then(|r| {
                    r.extensions_mut()
                        .remove::<tunnel::PendingTunnel>()
                        .and_then(|p| p.take())
                });
                match (pending, result) {
                    (Some(t), Ok(resp)) => {
                        if let Some(g) = gate {
                            g.become_tunnel();
                        }
                        let sink = live.front.access.clone();
                        let (resp, tlog) = log.finish_tunnel(resp, app, sink);
                        tokio::spawn(tunnel::run(t, tlog));
                        return resp;
                    }
                    (_, result) => (log, result),
                }
            }
        };
        let mut resp = match result {
            Ok(resp) => resp,
            // Boxed: the rare path's state stays out of every request's future.
            Err(e) => Box::pin(error_page::answer(e, app.as_ref())).await,
        };
        if let Some(head) = http10 {
            headers::close_unframed_http10(&mut resp, head);
        }
        log.finish(resp, app, live.front.access.clone())
    }

    async fn forward(
        &self,
        req: Request<Incoming>,
        client: Client,
        live: &Live,
        app: &mut Option<Served>,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let (mut parts, body) = req.into_parts();
        parts.uri = normalized(&parts.uri)?;
        // For the log line of a bad response: what was asked (a standard method's clone does
        // not allocate; the words are made only for a bad response).
        let method = parts.method.clone();
        let upgrade = tunnel::requested(&parts);
        let target = target(&parts)?;
        let path = target.uri.path();
        // Borrowed unless the path has escapes: no allocation for the common case.
        let decoded: Cow<[u8]> = percent_decode(path.as_bytes()).into();
        if client.scheme == "http" {
            if let Some(storage) = &live.front.acme_http01 {
                if let Some(token) = path.strip_prefix(ACME_CHALLENGE_PATH) {
                    return Ok(acme_answer(storage, token).await);
                }
            }
            if let Some(r) = &live.front.redirect {
                if let Some(resp) = r.response(&target.host, &parts.uri) {
                    return Ok(resp);
                }
            }
        }
        if let Some(served) = crate::statics::answer(&live.front.statics, &decoded, &parts) {
            return served.await;
        }
        let route = lookup(&live.routes, &target, &decoded)?;
        *app = Some(route.served());
        if let Some(served) = crate::statics::answer(&route.statics, &decoded, &parts) {
            return served.await;
        }
        let selected = select(route, &parts).await?;
        // Only servers that speak it get an upgrade; WSGI apps get a plain request.
        let upgrade = upgrade.filter(|_| selected.route.upgrades);
        let on_client = upgrade
            .as_ref()
            .and(client.gate.as_ref())
            .map(|g| g.on_upgrade());
        let mut prepared = prepare(
            parts,
            body,
            &client,
            &target,
            &selected.route,
            &live.front.spool_dir,
        )
        .await?;
        if let (Some(protocol), Some(_)) = (upgrade, &on_client) {
            tunnel::restore_request_headers(prepared.request.headers_mut(), protocol);
        }
        let idle = selected.route.response_idle_timeout;
        let head_limit = live.front.limits.max_response_header_size;
        let (resp, endpoint) = self
            .send(selected, prepared, &target, &decoded, app, head_limit)
            .await?;
        if let Some(served) = app.as_mut() {
            served.process = Some(endpoint.clone());
        }
        if resp.status() == 101 {
            if let (Some(client), Some(served)) = (on_client, app.as_ref()) {
                let name = served.app.clone();
                return Ok(tunnel::accept(resp, client, &endpoint, idle, name));
            }
        }
        let bad = |what: String| ProxyError::BadResponse {
            app: app.as_ref().map_or_else(String::new, |a| a.app.to_string()),
            request: format!("{method} {}", target.uri.path()),
            what,
        };
        Ok(relay(headers::checked_response(resp).map_err(bad)?))
    }

    /// Sends within the route's request_timeout; a request none of which reached a process
    /// (its socket is gone: it exited, or a reload retired it a moment ago) is resent once,
    /// through the route the current snapshot gives. A response head over `head_limit` bytes
    /// is a bad response.
    async fn send(
        &self,
        selected: Selected,
        prepared: Prepared,
        target: &Target,
        decoded: &[u8],
        app: &mut Option<Served>,
        head_limit: usize,
    ) -> Result<(Response<PooledBody>, Arc<Endpoint>), ProxyError> {
        let Selected {
            mut route,
            mut endpoint,
        } = selected;
        let Prepared {
            mut request,
            outer_mount,
            fault,
        } = prepared;
        let method = request.method().clone();
        let timeout = route.request_timeout;
        let deadline = tokio::time::Instant::now() + timeout;
        for attempt in 1.. {
            let sent = endpoint.send(request, route.response_idle_timeout, head_limit, deadline);
            let timed_out = || ProxyError::Timeout {
                app: route.name.to_string(),
                after: timeout,
            };
            // A request sent is timed by `send` itself, which keeps it as stuck; this outer
            // bound, a moment later, is for one never sent (a connect that hung).
            let failure = match tokio::time::timeout_at(deadline + SEND_GRACE, sent).await {
                Err(_) => return Err(timed_out()),
                Ok(Ok(resp)) => return Ok((resp, endpoint)),
                Ok(Err(f)) if matches!(f.error, UpstreamError::TimedOut { .. }) => {
                    return Err(timed_out())
                }
                Ok(Err(f)) => f,
            };
            // The request's own body stopped it (too large, or the client's stream broke),
            // not the app.
            if let Some(e) = fault.error(&route) {
                return Err(e);
            }
            let Some(mut unsent) = failure.unsent.filter(|_| attempt < MAX_ATTEMPTS) else {
                if let Some(what) = failure.error.invalid_response(head_limit) {
                    return Err(ProxyError::BadResponse {
                        app: route.name.to_string(),
                        request: format!("{} {}", method, target.uri.path()),
                        what,
                    });
                }
                return Err(ProxyError::Upstream {
                    app: route.name.to_string(),
                    source: failure.error,
                });
            };
            tracing::debug!("retrying on another process: {}", failure.error);
            let failed_pid = endpoint.pid();
            route = lookup(&self.live().routes, target, decoded)?;
            endpoint = route.ready_process(Some(failed_pid)).await.ok_or_else(|| {
                ProxyError::AppUnavailable {
                    app: route.name.to_string(),
                }
            })?;
            unsent.headers_mut().remove(headers::MOUNT);
            route::set_mount(unsent.headers_mut(), &route, outer_mount.as_deref());
            *app = Some(route.served());
            request = unsent;
        }
        unreachable!("the loop returns by its last attempt")
    }
}

/// The target with its path's dot-segments resolved: what routing sees and every child gets.
fn normalized(uri: &Uri) -> Result<Uri, ProxyError> {
    let path = uri.path();
    let Cow::Owned(path) = crate::http1::normalize_path(path).map_err(ProxyError::Rejected)? else {
        return Ok(uri.clone());
    };
    let path_and_query = match uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path,
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(
        path_and_query
            .parse()
            .map_err(|_| ProxyError::Rejected(Rejection::Malformed("invalid request path")))?,
    );
    Uri::from_parts(parts)
        .map_err(|_| ProxyError::Rejected(Rejection::Malformed("invalid request path")))
}

/// The host the request names (Host, or HTTP/2's authority) and its target.
fn target(parts: &Parts) -> Result<Target, ProxyError> {
    // The gate made sure an absolute-form target agrees with Host; HTTP/2 has only the
    // authority (without userinfo, which never reaches an app).
    let host_raw: Option<HeaderValue> = match parts.headers.get(header::HOST) {
        Some(h) => Some(h.clone()),
        None => match parts.uri.authority() {
            Some(a) => {
                let h = match a.port() {
                    Some(p) => format!("{}:{}", a.host(), p),
                    None => a.host().to_string(),
                };
                Some(HeaderValue::from_str(&h).map_err(|_| ProxyError::BadHost(h))?)
            }
            None => None,
        },
    };
    let host = match &host_raw {
        None => String::new(),
        Some(h) => {
            // Borrowed unless the bytes are not UTF-8.
            let h = String::from_utf8_lossy(h.as_bytes());
            normalize_host(&h).ok_or_else(|| ProxyError::BadHost(h.into_owned()))?
        }
    };
    Ok(Target {
        host,
        host_raw,
        uri: parts.uri.clone(),
    })
}

/// The route for the target (`decoded`: its path percent-decoded) in `table`.
fn lookup(table: &Table, target: &Target, decoded: &[u8]) -> Result<Arc<AppRoute>, ProxyError> {
    table
        .lookup(&target.host, decoded)
        .map(|r| r.target.clone())
        .ok_or_else(|| ProxyError::NoRoute {
            host: target.host.clone(),
            path: target.uri.path().to_string(),
        })
}

/// The app's limits that need no body (queue, declared size), then a ready process — waking
/// a dormant app and waiting for it up to its startup_timeout.
async fn select(route: Arc<AppRoute>, parts: &Parts) -> Result<Selected, ProxyError> {
    if !route.has_place().await {
        return Err(ProxyError::Overloaded {
            app: route.name.to_string(),
            in_flight: route.in_flight(),
        });
    }
    let endpoint = route.ready_process(None).await.ok_or_else(|| {
        let app = route.name.to_string();
        if route.failing() {
            ProxyError::AppFailed { app }
        } else {
            ProxyError::AppUnavailable { app }
        }
    })?;
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let (Some(max), Some(n)) = (route.max_body_size, declared) {
        if n > max {
            return Err(ProxyError::BodyTooLarge {
                app: route.name.to_string(),
                limit: max,
            });
        }
    }
    Ok(Selected { route, endpoint })
}

/// The request as the child gets it: cleaned and forwarded headers, origin-form target (after
/// a trusted proxy's prefix), Host, the mount header, HTTP/1.1; the body's first 64 KiB read,
/// and the rest spooled to a file in `spool_dir` where the app's `request_buffering` says.
async fn prepare(
    mut parts: Parts,
    body: Incoming,
    client: &Client,
    target: &Target,
    route: &AppRoute,
    spool_dir: &Path,
) -> Result<Prepared, ProxyError> {
    let length_known = parts.headers.contains_key(header::CONTENT_LENGTH);
    let outer_mount = headers::forwarded_headers(&mut parts.headers, client)?;
    // Room for the headers added below (X-Forwarded-*, the protocol, the mount, Host): one
    // growth of the map instead of one per insert.
    parts.headers.reserve(6);
    // Origin form towards the child; `PathAndQuery` is shared bytes, so no re-parsing.
    // Behind a trusted proxy that mounted wsgimux under a prefix, the child sees the full
    // path, so the prefix becomes part of its SCRIPT_NAME.
    parts.uri = match (parts.uri.path_and_query(), &outer_mount) {
        (Some(pq), Some(outer)) => {
            Uri::try_from(format!("{}{}", outer.trim_end_matches('/'), pq.as_str())).map_err(
                |_| ProxyError::Rejected(Rejection::Malformed("invalid forwarded prefix")),
            )?
        }
        (Some(pq), None) if !pq.as_str().is_empty() => Uri::from(pq.clone()),
        _ => Uri::from_static("/"),
    };
    if parts.headers.get(header::HOST).is_none() {
        // HTTP/2's authority; or for an HTTP/1.0 request that named no host, the address it
        // came in on (as nginx does): every child gets a Host, strict ones included.
        let host = match &target.host_raw {
            Some(h) => Some(h.clone()),
            None => HeaderValue::from_str(&client.local.to_string()).ok(),
        };
        if let Some(h) = host {
            parts.headers.insert(header::HOST, h);
        }
    }
    headers::set_protocol(&mut parts.headers, parts.version);
    if parts.version == Version::HTTP_2 {
        headers::join_cookies(&mut parts.headers);
    }
    headers::add_forwarded(&mut parts.headers, client, target.host_raw.as_ref());
    parts.version = Version::HTTP_11;
    route::set_mount(&mut parts.headers, route, outer_mount.as_deref());
    let fault = Arc::new(BodyFault::default());
    let spooled = match route.request_buffering {
        RequestBuffering::Auto => !length_known,
        RequestBuffering::On => true,
        RequestBuffering::Off => false,
    };
    let (body, len) = request_body(body, client, route, &fault, spooled, spool_dir).await?;
    if len.is_some() {
        // The length is known now: hyper sends it (from the body's exact size) instead of
        // chunked framing.
        parts.headers.remove(header::CONTENT_LENGTH);
    }
    Ok(Prepared {
        request: Request::from_parts(parts, body),
        outer_mount,
        fault,
    })
}

/// The body as the child gets it: its first 64 KiB read here before the app is involved (a
/// client trickling a small body — slow POST — holds a connection of the front, not a thread
/// of the app), and with `spooled` the rest read into a file first. Returns the spooled length.
async fn request_body(
    body: Incoming,
    client: &Client,
    route: &AppRoute,
    fault: &Arc<BodyFault>,
    spooled: bool,
    spool_dir: &Path,
) -> Result<(ProxyBody, Option<u64>), ProxyError> {
    let mut body = LimitedBody::new(
        body,
        route.max_body_size,
        client.body_timeout,
        fault.clone(),
    );
    let (prefix, ended) = body::prebuffer(&mut body).await;
    if let Some(e) = fault.error(route) {
        return Err(e);
    }
    if ended {
        return Ok((
            PrefixedBody::<Incoming> { prefix, rest: None }.boxed(),
            None,
        ));
    }
    if !spooled {
        let rest = Some(body);
        return Ok((PrefixedBody { prefix, rest }.boxed(), None));
    }
    let (file, len) =
        spool::spool(body, spool_dir)
            .await
            .map_err(|e| match (e, fault.error(route)) {
                (_, Some(fault)) => fault,
                (spool::SpoolError::File { dir, source }, None) => ProxyError::Spool {
                    app: route.name.to_string(),
                    dir,
                    source,
                },
                // A body error is always flagged in the fault; say so if it were not.
                (spool::SpoolError::Body, None) => {
                    ProxyError::Rejected(Rejection::Malformed("incomplete or invalid request body"))
                }
            })?;
    Ok((
        spool::SpooledBody::new(prefix, file, len).boxed(),
        Some(len),
    ))
}

/// The child's response as the client gets it: hop-by-hop headers removed, the body streamed.
fn relay(resp: Response<PooledBody>) -> Response<ProxyBody> {
    let (mut parts, body) = resp.into_parts();
    headers::strip_hop_by_hop(&mut parts.headers);
    Response::from_parts(parts, body.boxed())
}

#[cfg(test)]
mod tests;

/// Where an ACME CA asks for HTTP-01 answers: wsgimux's, before any route or redirect.
const ACME_CHALLENGE_PATH: &str = "/.well-known/acme-challenge/";

/// The key authorization for `token` (RFC 8555 §8.3), or a 404.
async fn acme_answer(storage: &std::path::Path, token: &str) -> Response<ProxyBody> {
    use crate::error::Reply;
    match crate::acme::http01_answer(storage, token).await {
        Some(answer) => {
            use http_body_util::BodyExt;
            let body = http_body_util::Full::new(bytes::Bytes::from(answer))
                .map_err(|e| match e {})
                .boxed();
            let mut resp = Reply::AcmeChallenge.response(body);
            resp.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("application/octet-stream"),
            );
            resp
        }
        None => {
            tracing::info!("acme: an HTTP-01 request for token {token:?}, which no order has");
            Reply::AcmeUnknownToken.response(ProxyBody::default())
        }
    }
}
