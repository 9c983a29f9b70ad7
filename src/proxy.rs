//! The life of one request: pick the route from a snapshot of the route table, pick a ready
//! process of the app, relay the request and stream the response back.
//!
//! Reads the route table and the apps' endpoint lists through `watch` receivers, cloning the
//! current `Arc` and releasing the lock at once: nothing is held across an `.await`. Does not
//! start or stop anything; statuses for failures come from `error`.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Request, Response, Uri, Version};
use percent_encoding::{percent_decode, utf8_percent_encode, AsciiSet, CONTROLS};
use tokio::sync::watch;

use crate::accesslog::{AccessLog, AccessSink, LoggedBody, Served};
use crate::config::{AppSpec, StaticAlias};
use crate::error::ProxyError;
use crate::gate::Verdict;
use crate::http1::Rejection;
use crate::metrics::Counters;
use crate::routes::{normalize_host, RouteTable};
use crate::upstream::{BoxError, Demand, Endpoint, Endpoints, ProxyBody};

/// The header that carries the mount prefix to a child, which sets `SCRIPT_NAME` from it.
/// gunicorn honours the same header, so any such server can stand in for a child.
pub const MOUNT_HEADER: &str = "script_name";

/// Headers that describe one hop, never forwarded (RFC 9110 §7.6.1), plus `Expect`, which the
/// front answers itself.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "http2-settings",
];

/// Characters of a mount escaped in the mount header (it must stay visible ASCII).
const MOUNT_ESCAPES: &AsciiSet = &CONTROLS.add(b' ').add(b'%').add(b'"').add(b'\\');

/// What the route table leads to: an app, its mount, its limits and its ready processes.
#[derive(Debug)]
pub struct AppRoute {
    pub name: Arc<str>,
    mount: String,
    mount_header: Option<HeaderValue>,
    endpoints: watch::Receiver<Endpoints>,
    next: AtomicUsize,
    max_body_size: Option<u64>,
    request_timeout: Duration,
    /// Requests in flight at which new ones get 503: processes × threads + queue_limit.
    max_in_flight: usize,
    /// The app's counters (kept across its generations).
    stats: Arc<Counters>,
    /// The app's `static:` folders, prefixes including the mount; longest first.
    statics: Vec<StaticAlias>,
    /// Wakes the processes of an app that starts on demand (or stopped when idle).
    demand: Option<Demand>,
    startup_timeout: Duration,
}

impl AppRoute {
    pub fn new(
        spec: &AppSpec,
        endpoints: watch::Receiver<Endpoints>,
        stats: Arc<Counters>,
        demand: Option<Demand>,
    ) -> Self {
        let mount = &spec.mount;
        let mount_header = (!mount.is_root()).then(|| encode_mount(mount.as_str()));
        AppRoute {
            name: spec.name.as_str().into(),
            mount: if mount.is_root() {
                String::new()
            } else {
                mount.as_str().to_string()
            },
            mount_header,
            endpoints,
            next: AtomicUsize::new(0),
            max_body_size: spec.max_body_size,
            request_timeout: spec.request_timeout,
            max_in_flight: (spec.processes as usize * spec.threads as usize)
                .saturating_add(spec.queue_limit as usize),
            stats,
            statics: spec
                .statics
                .iter()
                .map(|a| StaticAlias {
                    prefix: if mount.is_root() {
                        a.prefix.clone()
                    } else {
                        format!("{}{}", mount.as_str(), a.prefix)
                    },
                    ..a.clone()
                })
                .collect(),
            demand,
            startup_timeout: spec.startup_timeout,
        }
    }

    /// A ready process; for an app whose processes are not running (on demand, or stopped
    /// when idle), wakes them and waits up to its startup_timeout.
    async fn ready_process(&self, avoid: Option<u32>) -> Option<Arc<Endpoint>> {
        if let Some(e) = self.pick(avoid) {
            return Some(e);
        }
        let demand = self.demand.as_ref()?;
        demand.wake();
        let mut endpoints = self.endpoints.clone();
        let wait = async {
            loop {
                if let Some(e) = self.pick(avoid) {
                    return Some(e);
                }
                if endpoints.changed().await.is_err() {
                    return None;
                }
            }
        };
        tokio::time::timeout(self.startup_timeout, wait)
            .await
            .ok()
            .flatten()
    }

    /// Requests in flight over all the app's ready processes.
    fn in_flight(&self) -> usize {
        self.endpoints
            .borrow()
            .ready
            .iter()
            .map(|e| e.in_flight())
            .sum()
    }

    /// The ready process with the fewest requests in flight, starting the scan at a rotating
    /// position so equal loads spread out; `avoid` (a process that just failed) only when it is
    /// the only one.
    fn pick(&self, avoid: Option<u32>) -> Option<Arc<Endpoint>> {
        let eps = self.endpoints.borrow().ready.clone();
        if eps.is_empty() {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..eps.len())
            .map(|i| &eps[(start + i) % eps.len()])
            .min_by_key(|e| (Some(e.pid()) == avoid, e.in_flight()))
            .cloned()
    }
}

pub type Table = RouteTable<Arc<AppRoute>>;

/// Where a request came from, and how the listener it came in on treats it.
#[derive(Debug, Clone)]
pub struct Client {
    pub peer: SocketAddr,
    pub scheme: &'static str,
    /// The peer is in `trusted_proxies`: its forwarded headers are believed.
    pub trusted: bool,
    /// A plain listener with `redirect_https`: where hosts with a certificate are sent.
    pub redirect: Option<Arc<HttpsRedirect>>,
    /// The longest wait between two reads of a request body, where no gate enforces it
    /// (HTTP/2: the gate only sees HTTP/1.1 bytes).
    pub body_timeout: Option<Duration>,
}

/// `redirect_https`: plain-HTTP requests for hosts that have a certificate go to https.
#[derive(Debug)]
pub struct HttpsRedirect {
    /// The port of the TLS listener (left out of the URL when it is 443).
    pub port: u16,
    pub certificates: Arc<crate::tls::CertStore>,
}

pub struct Proxy {
    routes: watch::Receiver<Arc<Table>>,
    settings: std::sync::RwLock<Arc<ProxySettings>>,
}

/// What the proxy reads per request beside the route table; a reload replaces it whole.
#[derive(Debug, Default)]
pub struct ProxySettings {
    pub access: Arc<AccessSink>,
    /// Host-wide `static:` folders, longest prefix first.
    pub statics: Vec<StaticAlias>,
}

impl ProxySettings {
    /// Opens the access log; Err names the file that could not be opened.
    pub fn build(config: &crate::config::Config) -> Result<Self, String> {
        let access =
            AccessSink::open(&config.access_log).map_err(|e| match &config.access_log.to {
                crate::config::AccessLogTo::File(p) => {
                    format!("access_log {}: cannot open it: {e}", p.display())
                }
                _ => format!("access_log: {e}"),
            })?;
        Ok(ProxySettings {
            access: Arc::new(access),
            statics: config.statics.clone(),
        })
    }
}

impl Proxy {
    pub fn new(routes: watch::Receiver<Arc<Table>>, settings: ProxySettings) -> Self {
        Proxy {
            routes,
            settings: std::sync::RwLock::new(Arc::new(settings)),
        }
    }

    pub fn set_settings(&self, settings: ProxySettings) {
        *self.settings.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(settings);
    }

    fn settings(&self) -> Arc<ProxySettings> {
        self.settings
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Answers one request; `verdict` is the gate's word on it.
    pub async fn handle(
        &self,
        req: Request<Incoming>,
        client: Client,
        verdict: Verdict,
    ) -> Response<LoggedBody> {
        let mut app = None;
        let settings = self.settings();
        let (log, result) = match verdict {
            Verdict::Reject(r) => (
                AccessLog::refused(client.peer),
                Err(ProxyError::Rejected(r)),
            ),
            Verdict::Forward { asterisk: true, .. } => {
                (AccessLog::begin(&req, client.peer), Ok(server_options()))
            }
            Verdict::Forward { .. } => {
                let log = AccessLog::begin(&req, client.peer);
                (log, self.forward(req, client, &settings, &mut app).await)
            }
        };
        let resp = match result {
            Ok(resp) => resp,
            Err(e) => {
                if e.status().is_server_error() {
                    tracing::warn!("{e}");
                }
                e.into_response()
            }
        };
        log.finish(resp, app, settings.access.clone())
    }

    /// The route for a host and a path (`decoded`: `path` percent-decoded), from the current
    /// table.
    fn route(&self, host: &str, path: &str, decoded: &[u8]) -> Result<Arc<AppRoute>, ProxyError> {
        let table = self.routes.borrow().clone();
        table
            .lookup(host, decoded)
            .map(|r| r.target.clone())
            .ok_or_else(|| ProxyError::NoRoute {
                host: host.to_string(),
                path: path.to_string(),
            })
    }

    async fn forward(
        &self,
        req: Request<Incoming>,
        client: Client,
        settings: &ProxySettings,
        app: &mut Option<Served>,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let (mut parts, body) = req.into_parts();
        // The gate made sure an absolute-form target agrees with Host; HTTP/2 has only the
        // authority (without userinfo, which never reaches an app).
        let host_raw: Option<String> = match parts.headers.get(header::HOST) {
            Some(h) => Some(String::from_utf8_lossy(h.as_bytes()).into_owned()),
            None => parts.uri.authority().map(|a| match a.port() {
                Some(p) => format!("{}:{}", a.host(), p),
                None => a.host().to_string(),
            }),
        };
        let host = match &host_raw {
            None => String::new(),
            Some(h) => normalize_host(h).ok_or_else(|| ProxyError::BadHost(h.clone()))?,
        };
        if let Some(r) = &client.redirect {
            if let Some(resp) = r.response(&host, &parts.uri) {
                return Ok(resp);
            }
        }
        // Kept for a resend's fresh lookup; cloning a parsed `Uri` shares its bytes.
        let target = parts.uri.clone();
        let path = target.path();
        // Borrowed unless the path has escapes: no allocation for the common case.
        let decoded: Cow<[u8]> = percent_decode(path.as_bytes()).into();
        if let Some(resp) = crate::statics::answer(&settings.statics, &decoded, &parts).await {
            return resp;
        }
        let route = self.route(&host, path, &decoded)?;
        *app = Some(Served {
            app: route.name.clone(),
            stats: route.stats.clone(),
            process: None,
        });
        if let Some(resp) = crate::statics::answer(&route.statics, &decoded, &parts).await {
            return resp;
        }
        let in_flight = route.in_flight();
        if in_flight >= route.max_in_flight {
            return Err(ProxyError::Overloaded {
                app: route.name.to_string(),
                in_flight,
            });
        }
        let mut endpoint =
            route
                .ready_process(None)
                .await
                .ok_or_else(|| ProxyError::AppUnavailable {
                    app: route.name.to_string(),
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

        let outer_mount = forwarded_headers(&mut parts.headers, &client)?;
        // Origin form towards the child; `PathAndQuery` is shared bytes, so no re-parsing.
        // Behind a trusted proxy that mounted wsgimux under a prefix, the child sees the full
        // path, so the prefix becomes part of its SCRIPT_NAME.
        let uri = match (parts.uri.path_and_query(), &outer_mount) {
            (Some(pq), Some(outer)) => {
                Uri::try_from(format!("{}{}", outer.trim_end_matches('/'), pq.as_str())).map_err(
                    |_| ProxyError::Rejected(Rejection::Malformed("invalid forwarded prefix")),
                )?
            }
            (Some(pq), None) if !pq.as_str().is_empty() => Uri::from(pq.clone()),
            _ => Uri::from_static("/"),
        };
        if parts.headers.get(header::HOST).is_none() {
            if let Some(h) = host_raw
                .as_deref()
                .and_then(|h| HeaderValue::from_str(h).ok())
            {
                parts.headers.insert(header::HOST, h);
            }
        }
        add_forwarded(&mut parts.headers, &client, host_raw.as_deref());
        parts.uri = uri;
        parts.version = Version::HTTP_11;
        let mut route_now = route;
        set_mount(&mut parts.headers, &route_now, outer_mount.as_deref());
        let fault = Arc::new(BodyFault::default());
        let mut body = LimitedBody::new(
            body,
            route_now.max_body_size,
            client.body_timeout,
            fault.clone(),
        );
        // The start of the body is read here before the app is involved: a client trickling a
        // small body (slow POST) holds a connection of the front, not a thread of the app.
        let (prefix, ended) = prebuffer(&mut body).await;
        if let Some(e) = fault.error(&route_now) {
            return Err(e);
        }
        let body = PrefixedBody {
            prefix,
            rest: (!ended).then_some(body),
        };
        let mut upstream_req = Request::from_parts(parts, body.boxed());

        let timeout = route_now.request_timeout;
        let deadline = tokio::time::Instant::now() + timeout;
        let mut attempts = 0;
        let resp = loop {
            attempts += 1;
            let sent = tokio::time::timeout_at(deadline, endpoint.send(upstream_req)).await;
            let failure = match sent {
                Err(_) => {
                    return Err(ProxyError::Timeout {
                        app: route_now.name.to_string(),
                        after: timeout,
                    })
                }
                Ok(Ok(resp)) => break resp,
                Ok(Err(f)) => f,
            };
            // Nothing reached the child (its socket is gone: it exited, or a reload retired
            // it a moment ago): look the route up again in the current table and resend.
            // The request's own body stopped it (too large, or the client's stream broke),
            // not the app.
            if let Some(e) = fault.error(&route_now) {
                return Err(e);
            }
            let failed_pid = endpoint.pid();
            match failure.unsent {
                Some(mut unsent) if attempts < MAX_ATTEMPTS => {
                    tracing::debug!("retrying on another process: {}", failure.error);
                    let route = self.route(&host, path, &decoded)?;
                    endpoint = route.ready_process(Some(failed_pid)).await.ok_or_else(|| {
                        ProxyError::AppUnavailable {
                            app: route.name.to_string(),
                        }
                    })?;
                    unsent.headers_mut().remove(MOUNT_HEADER);
                    set_mount(unsent.headers_mut(), &route, outer_mount.as_deref());
                    *app = Some(Served {
                        app: route.name.clone(),
                        stats: route.stats.clone(),
                        process: None,
                    });
                    route_now = route;
                    upstream_req = unsent;
                }
                _ => {
                    return Err(ProxyError::Upstream {
                        app: route_now.name.to_string(),
                        source: failure.error,
                    })
                }
            }
        };
        if let Some(served) = app.as_mut() {
            served.process = Some(endpoint.clone());
        }
        let (mut parts, body) = resp.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        Ok(Response::from_parts(parts, body.boxed()))
    }
}

/// The gate's rules for an HTTP/2 request (h2 itself already refuses malformed framing and
/// connection-specific headers): no CONNECT, and a Host header that agrees with the authority.
pub fn admit_h2<B>(req: &Request<B>) -> Verdict {
    if req.method() == hyper::Method::CONNECT {
        return Verdict::Reject(Rejection::Malformed("CONNECT is not supported"));
    }
    let hosts = req.headers().get_all(header::HOST).iter().count();
    if hosts > 1 {
        return Verdict::Reject(Rejection::Malformed("more than one Host"));
    }
    if let (Some(a), Some(h)) = (req.uri().authority(), req.headers().get(header::HOST)) {
        let host = a.as_str().rsplit('@').next().unwrap_or("");
        if !h.as_bytes().eq_ignore_ascii_case(host.as_bytes()) {
            return Verdict::Reject(Rejection::Malformed("Host disagrees with :authority"));
        }
    }
    let asterisk = req.uri() == "*";
    if asterisk && req.method() != hyper::Method::OPTIONS {
        return Verdict::Reject(Rejection::Malformed("asterisk-form target without OPTIONS"));
    }
    Verdict::Forward { asterisk }
}

/// `OPTIONS *` asks about the server, not a resource: answered here, never by an app.
fn server_options() -> Response<ProxyBody> {
    let mut resp = Response::new(ProxyBody::default());
    resp.headers_mut().insert(
        header::ALLOW,
        HeaderValue::from_static("GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"),
    );
    resp.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
    resp
}

/// A request none of which reached a process is sent once more, to another process.
const MAX_ATTEMPTS: u32 = 2;

fn encode_mount(mount: &str) -> HeaderValue {
    let encoded = utf8_percent_encode(mount, MOUNT_ESCAPES).to_string();
    HeaderValue::from_str(&encoded).expect("percent-encoded mount is a valid header")
}

/// The mount header: the app's mount, after the prefix a trusted proxy in front already
/// mounted wsgimux under.
fn set_mount(headers: &mut HeaderMap, route: &AppRoute, outer: Option<&str>) {
    match outer {
        Some(outer) => {
            let outer = percent_decode(outer.as_bytes()).decode_utf8_lossy();
            let full = format!("{}{}", outer.trim_end_matches('/'), route.mount);
            if !full.is_empty() {
                headers.insert(HeaderName::from_static(MOUNT_HEADER), encode_mount(&full));
            }
        }
        None => {
            if let Some(m) = &route.mount_header {
                headers.insert(HeaderName::from_static(MOUNT_HEADER), m.clone());
            }
        }
    }
}

/// Removes hop-by-hop headers, including those the Connection header names.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(*name);
    }
}

/// Headers a client could use to claim another address, scheme, host or mount.
const FORWARDED: &[&str] = &[
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-protocol",
    "x-forwarded-ssl",
    "x-forwarded-host",
    "x-forwarded-port",
    "x-forwarded-prefix",
    "x-real-ip",
    "x-scheme",
    MOUNT_HEADER,
];

/// gunicorn's `secure_scheme_headers`: each names the scheme as https with one value.
const SCHEME_HEADERS: &[(&str, &str)] = &[
    ("x-forwarded-proto", "https"),
    ("x-forwarded-protocol", "ssl"),
    ("x-forwarded-ssl", "on"),
];

/// Cleans the request's headers for the child: hop-by-hop headers, `Expect` (answered here),
/// header names with underscores (which a CGI-style environ cannot tell from dashes), and,
/// unless the peer is a trusted proxy, every forwarded header. Returns the mount prefix a
/// trusted proxy sent. A trusted proxy's scheme headers that disagree are refused, as gunicorn
/// refuses them.
fn forwarded_headers(
    headers: &mut HeaderMap,
    client: &Client,
) -> Result<Option<String>, ProxyError> {
    clean_request_headers(headers);
    if !client.trusted {
        for name in FORWARDED {
            headers.remove(*name);
        }
        return Ok(None);
    }
    let mut secure = None;
    for (name, https_value) in SCHEME_HEADERS {
        if let Some(v) = headers.get(*name).and_then(|v| v.to_str().ok()) {
            let says = v.trim().eq_ignore_ascii_case(https_value);
            if secure.is_some_and(|s| s != says) {
                return Err(ProxyError::Rejected(Rejection::Malformed(
                    "forwarded scheme headers disagree",
                )));
            }
            secure = Some(says);
        }
    }
    if let Some(s) = secure {
        let scheme = if s { "https" } else { "http" };
        headers.insert("x-forwarded-proto", HeaderValue::from_static(scheme));
    }
    // Kept as sent (a path prefix, percent-encoded): it goes in front of the request path.
    let outer = headers
        .remove(MOUNT_HEADER)
        .and_then(|v| v.to_str().ok().map(str::to_string))
        .filter(|v| {
            v.starts_with('/') && v.len() > 1 && !v.bytes().any(|b| matches!(b, b'?' | b'#' | b' '))
        });
    Ok(outer)
}

fn clean_request_headers(headers: &mut HeaderMap) {
    strip_hop_by_hop(headers);
    headers.remove(header::EXPECT);
    let underscored: Vec<HeaderName> = headers
        .keys()
        .filter(|k| k.as_str().contains('_') && k.as_str() != MOUNT_HEADER)
        .cloned()
        .collect();
    for name in underscored {
        headers.remove(name);
    }
}

/// X-Forwarded-For gains the peer; the scheme and host are the front's own unless a trusted
/// proxy already said them.
fn add_forwarded(headers: &mut HeaderMap, client: &Client, host: Option<&str>) {
    let ip = client.peer.ip().to_string();
    let xff = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(prev) if !prev.trim().is_empty() => format!("{prev}, {ip}"),
        _ => ip,
    };
    if let Ok(v) = HeaderValue::from_str(&xff) {
        headers.insert("x-forwarded-for", v);
    }
    if !headers.contains_key("x-forwarded-proto") {
        headers.insert("x-forwarded-proto", HeaderValue::from_static(client.scheme));
    }
    if !headers.contains_key("x-forwarded-host") {
        if let Some(h) = host.and_then(|h| HeaderValue::from_str(h).ok()) {
            headers.insert("x-forwarded-host", h);
        }
    }
}

impl HttpsRedirect {
    /// A 308 to the https URL when `name` (a normalized host, no port) has a certificate.
    fn response(&self, name: &str, uri: &Uri) -> Option<Response<ProxyBody>> {
        if !self.certificates.covers(name) {
            return None;
        }
        let port = if self.port == 443 {
            String::new()
        } else {
            format!(":{}", self.port)
        };
        let pq = uri.path_and_query().map_or("/", |pq| pq.as_str());
        let location = HeaderValue::from_str(&format!("https://{name}{port}{pq}")).ok()?;
        let mut resp = Response::new(ProxyBody::default());
        *resp.status_mut() = hyper::StatusCode::PERMANENT_REDIRECT;
        resp.headers_mut().insert(header::LOCATION, location);
        resp.headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
        Some(resp)
    }
}

/// How much of a request body is read before the request goes to an app.
const PREBUFFER: usize = 64 * 1024;

/// Reads the body's first frames, up to [`PREBUFFER`] bytes or its end (each read bounded by
/// the gate's body timeout). Returns them, and whether the body ended.
async fn prebuffer(body: &mut LimitedBody) -> (VecDeque<http_body::Frame<bytes::Bytes>>, bool) {
    let mut frames = VecDeque::new();
    let mut size = 0;
    if http_body::Body::is_end_stream(&body.inner) {
        return (frames, true);
    }
    while size < PREBUFFER {
        match body.frame().await {
            Some(Ok(f)) => {
                size += f.data_ref().map_or(0, |d| d.len());
                frames.push_back(f);
            }
            // Flagged in the body (too large, or the client's stream broke).
            Some(Err(_)) => return (frames, true),
            None => return (frames, true),
        }
    }
    (frames, false)
}

/// A body whose first frames were read already.
struct PrefixedBody {
    prefix: VecDeque<http_body::Frame<bytes::Bytes>>,
    rest: Option<LimitedBody>,
}

impl http_body::Body for PrefixedBody {
    type Data = bytes::Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, BoxError>>> {
        if let Some(f) = self.prefix.pop_front() {
            return std::task::Poll::Ready(Some(Ok(f)));
        }
        match &mut self.rest {
            Some(rest) => std::pin::Pin::new(rest).poll_frame(cx),
            None => std::task::Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.prefix.is_empty() && self.rest.as_ref().is_none_or(|r| r.is_end_stream())
    }

    fn size_hint(&self) -> http_body::SizeHint {
        let buffered: u64 = self
            .prefix
            .iter()
            .map(|f| f.data_ref().map_or(0, |d| d.len() as u64))
            .sum();
        match &self.rest {
            None => http_body::SizeHint::with_exact(buffered),
            Some(r) => {
                let h = r.size_hint();
                let mut out = http_body::SizeHint::new();
                out.set_lower(h.lower() + buffered);
                if let Some(u) = h.upper() {
                    out.set_upper(u + buffered);
                }
                out
            }
        }
    }
}

/// Why a request body stopped short, as `LimitedBody` saw it.
#[derive(Debug, Default)]
struct BodyFault {
    /// More than the app's `max_body_size`.
    over: AtomicBool,
    /// The client's stream broke off or turned out invalid (the gate ends it with an error).
    failed: AtomicBool,
}

impl BodyFault {
    /// The answer a body that stopped short calls for; None while it has not.
    fn error(&self, route: &AppRoute) -> Option<ProxyError> {
        if self.failed.load(Ordering::Relaxed) {
            Some(ProxyError::Rejected(Rejection::Malformed(
                "incomplete or invalid request body",
            )))
        } else if self.over.load(Ordering::Relaxed) {
            Some(ProxyError::BodyTooLarge {
                app: route.name.to_string(),
                limit: route.max_body_size.unwrap_or(0),
            })
        } else {
            None
        }
    }
}

/// The client's request body on its way to the child. Fails once more than `left` bytes
/// passed (bodies without a declared length, or longer than declared), or when the client
/// sends nothing for `stall` (where set), noting why in `fault`.
struct LimitedBody {
    inner: Incoming,
    left: Option<u64>,
    fault: Arc<BodyFault>,
    /// The limit, its timer, and whether the timer runs (only while waiting for the client).
    stall: Option<(Duration, Pin<Box<tokio::time::Sleep>>, bool)>,
}

impl LimitedBody {
    fn new(
        inner: Incoming,
        left: Option<u64>,
        stall: Option<Duration>,
        fault: Arc<BodyFault>,
    ) -> Self {
        let stall = stall.map(|d| (d, Box::pin(tokio::time::sleep(d)), false));
        LimitedBody {
            inner,
            left,
            fault,
            stall,
        }
    }
}

impl http_body::Body for LimitedBody {
    type Data = bytes::Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, BoxError>>> {
        let this = &mut *self;
        let frame = match std::pin::Pin::new(&mut this.inner).poll_frame(cx) {
            std::task::Poll::Ready(f) => f,
            std::task::Poll::Pending => {
                if let Some((limit, sleep, waiting)) = &mut this.stall {
                    // The clock starts when the front begins to wait, not at the last frame:
                    // an app that reads slowly is not the client's stall.
                    if !*waiting {
                        *waiting = true;
                        sleep.as_mut().reset(tokio::time::Instant::now() + *limit);
                    }
                    if sleep.as_mut().poll(cx).is_ready() {
                        this.fault.failed.store(true, Ordering::Relaxed);
                        return std::task::Poll::Ready(Some(Err(
                            "client sent no request body data in time".into(),
                        )));
                    }
                }
                return std::task::Poll::Pending;
            }
        };
        if let Some((_, _, waiting)) = &mut this.stall {
            *waiting = false;
        }
        let frame = match frame {
            Some(Ok(f)) => f,
            Some(Err(e)) => {
                self.fault.failed.store(true, Ordering::Relaxed);
                return std::task::Poll::Ready(Some(Err(e.into())));
            }
            None => return std::task::Poll::Ready(None),
        };
        if let (Some(left), Some(data)) = (self.left, frame.data_ref()) {
            let n = data.len() as u64;
            if n > left {
                self.fault.over.store(true, Ordering::Relaxed);
                return std::task::Poll::Ready(Some(Err(
                    "request body larger than max_body_size".into()
                )));
            }
            self.left = Some(left - n);
        }
        std::task::Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(trusted: bool) -> Client {
        Client {
            peer: "127.0.0.1:5555".parse().unwrap(),
            scheme: "http",
            trusted,
            redirect: None,
            body_timeout: None,
        }
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn hop_by_hop_connection_named_and_underscored_headers_are_removed() {
        let mut h = headers(&[
            ("connection", "close, x-secret"),
            ("x-secret", "1"),
            ("transfer-encoding", "chunked"),
            ("keep-alive", "timeout=5"),
            ("upgrade", "h2c"),
            ("http2-settings", "AAMAAABkAAQAAP__"),
            ("x-kept", "yes"),
            ("content_length", "5"),
            ("expect", "100-continue"),
        ]);
        clean_request_headers(&mut h);
        let left: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, vec!["x-kept"]);
    }

    #[test]
    fn forwarded_headers_from_untrusted_peers_are_replaced() {
        let mut h = headers(&[
            ("x-forwarded-for", "10.0.0.1"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "evil.example"),
            ("forwarded", "for=10.0.0.1;proto=https"),
            (MOUNT_HEADER, "/spoofed"),
        ]);
        assert_eq!(forwarded_headers(&mut h, &client(false)).unwrap(), None);
        add_forwarded(&mut h, &client(false), Some("Example.com:8080"));
        assert_eq!(h["x-forwarded-for"], "127.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "Example.com:8080");
        assert!(h.get("forwarded").is_none() && h.get(MOUNT_HEADER).is_none());
    }

    #[test]
    fn forwarded_headers_from_trusted_proxies_are_honoured() {
        let mut h = headers(&[
            ("x-forwarded-for", "10.0.0.1"),
            ("x-forwarded-ssl", "on"),
            ("forwarded", "for=10.0.0.1;proto=https"),
            (MOUNT_HEADER, "/outer"),
        ]);
        let outer = forwarded_headers(&mut h, &client(true)).unwrap();
        assert_eq!(outer.as_deref(), Some("/outer"));
        add_forwarded(&mut h, &client(true), Some("example.com"));
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, 127.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["forwarded"], "for=10.0.0.1;proto=https");
        // Scheme headers that disagree are refused, as gunicorn refuses them.
        let mut h = headers(&[("x-forwarded-proto", "https"), ("x-forwarded-ssl", "off")]);
        assert!(matches!(
            forwarded_headers(&mut h, &client(true)),
            Err(ProxyError::Rejected(_))
        ));
    }

    fn spec(mount: &str) -> AppSpec {
        let yaml =
            format!("apps:\n  a:\n    python: python3\n    script: a.py\n    mount: {mount}\n");
        let config = crate::config::from_yaml(&yaml, std::path::Path::new("/x/w.yaml")).unwrap();
        config.apps[0].clone()
    }

    #[test]
    fn mount_header_is_percent_encoded_and_follows_a_trusted_prefix() {
        let (_tx, rx) = watch::channel(Endpoints::default());
        let r = AppRoute::new(&spec("/café"), rx.clone(), Default::default(), None);
        assert_eq!(r.mount_header.clone().unwrap(), "/caf%C3%A9");
        let mut h = HeaderMap::new();
        set_mount(&mut h, &r, Some("/outer/"));
        assert_eq!(h[MOUNT_HEADER], "/outer/caf%C3%A9");
        let root = AppRoute::new(&spec("/"), rx, Default::default(), None);
        assert!(root.mount_header.is_none());
        let mut h = HeaderMap::new();
        set_mount(&mut h, &root, Some("/outer"));
        assert_eq!(h[MOUNT_HEADER], "/outer");
    }

    #[test]
    fn h2_admission() {
        let req = |method: &str, uri: &str, host: Option<&str>| {
            let mut b = Request::builder().method(method).uri(uri);
            if let Some(h) = host {
                b = b.header("host", h);
            }
            b.body(()).unwrap()
        };
        assert!(matches!(
            admit_h2(&req("GET", "https://a.example/x", None)),
            Verdict::Forward {
                asterisk: false,
                ..
            }
        ));
        assert!(matches!(
            admit_h2(&req("GET", "https://a.example/x", Some("b.example"))),
            Verdict::Reject(_)
        ));
        assert!(matches!(
            admit_h2(&req("CONNECT", "a.example:443", None)),
            Verdict::Reject(_)
        ));
    }
}
