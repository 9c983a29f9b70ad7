//! The life of one request: pick the route from a snapshot of the route table, pick a ready
//! process of the app, relay the request and stream the response back.
//!
//! Reads the route table and the apps' endpoint lists through `watch` receivers, cloning the
//! current `Arc` and releasing the lock at once: nothing is held across an `.await`. Does not
//! start or stop anything; statuses for failures come from `error`.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Request, Response, Uri, Version};
use percent_encoding::{percent_decode, utf8_percent_encode, AsciiSet, CONTROLS};
use tokio::sync::watch;

use crate::accesslog::{AccessLog, LoggedBody};
use crate::config::Mount;
use crate::error::ProxyError;
use crate::gate::Verdict;
use crate::routes::{normalize_host, RouteTable};
use crate::upstream::{Endpoint, ProxyBody};

/// Longest wait for a child's response headers before answering 504.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);

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
];

/// Characters of a mount escaped in the mount header (it must stay visible ASCII).
const MOUNT_ESCAPES: &AsciiSet = &CONTROLS.add(b' ').add(b'%').add(b'"').add(b'\\');

/// What the route table leads to: an app, its mount, and its ready processes.
#[derive(Debug)]
pub struct AppRoute {
    pub name: Arc<str>,
    mount_header: Option<HeaderValue>,
    endpoints: watch::Receiver<Endpoints>,
    next: AtomicUsize,
}

impl AppRoute {
    pub fn new(name: &str, mount: &Mount, endpoints: watch::Receiver<Endpoints>) -> Self {
        let mount_header = (!mount.is_root()).then(|| {
            let encoded = utf8_percent_encode(mount.as_str(), MOUNT_ESCAPES).to_string();
            HeaderValue::from_str(&encoded).expect("percent-encoded mount is a valid header")
        });
        AppRoute {
            name: name.into(),
            mount_header,
            endpoints,
            next: AtomicUsize::new(0),
        }
    }

    /// The same app reached through a new route (a reload changed only its routes): the
    /// processes and their connections are shared.
    pub fn rerouted(&self, mount: &Mount) -> Self {
        AppRoute::new(&self.name, mount, self.endpoints.clone())
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

/// The processes of an app that answer on their sockets, as published by the supervisor.
#[derive(Debug, Clone, Default)]
pub struct Endpoints {
    pub ready: Arc<[Arc<Endpoint>]>,
}

pub type Table = RouteTable<Arc<AppRoute>>;

/// Where a request came from.
#[derive(Debug, Clone, Copy)]
pub struct Client {
    pub peer: SocketAddr,
    pub scheme: &'static str,
}

pub struct Proxy {
    routes: watch::Receiver<Arc<Table>>,
}

impl Proxy {
    pub fn new(routes: watch::Receiver<Arc<Table>>) -> Self {
        Proxy { routes }
    }

    /// Answers one request; `verdict` is the gate's word on it.
    pub async fn handle(
        &self,
        req: Request<Incoming>,
        client: Client,
        verdict: Verdict,
    ) -> Response<LoggedBody> {
        let mut app = None;
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
                (log, self.forward(req, client, &mut app).await)
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
        log.finish(resp, app)
    }

    /// The route for a host and a raw path, from the current table.
    fn route(&self, host: &str, path: &str) -> Result<Arc<AppRoute>, ProxyError> {
        // Borrowed unless the path has escapes: no allocation for the common case.
        let decoded: Cow<[u8]> = percent_decode(path.as_bytes()).into();
        let table = self.routes.borrow().clone();
        table
            .lookup(host, &decoded)
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
        app: &mut Option<Arc<str>>,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let (mut parts, body) = req.into_parts();
        let (host_raw, absolute) = match parts.uri.authority() {
            Some(a) if parts.uri.scheme().is_some() => (Some(a.as_str().to_string()), true),
            _ => (
                parts
                    .headers
                    .get(header::HOST)
                    .map(|h| String::from_utf8_lossy(h.as_bytes()).into_owned()),
                false,
            ),
        };
        let host = match &host_raw {
            None => String::new(),
            Some(h) => normalize_host(h).ok_or_else(|| ProxyError::BadHost(h.clone()))?,
        };
        // Kept for a resend's fresh lookup; cloning a parsed `Uri` shares its bytes.
        let target = parts.uri.clone();
        let path = target.path();
        let route = self.route(&host, path)?;
        *app = Some(route.name.clone());
        let mut endpoint = route.pick(None).ok_or_else(|| ProxyError::AppUnavailable {
            app: route.name.to_string(),
        })?;

        // Origin form towards the child; `PathAndQuery` is shared bytes, so no re-parsing.
        let uri = match parts.uri.path_and_query() {
            Some(pq) if !pq.as_str().is_empty() => Uri::from(pq.clone()),
            _ => Uri::from_static("/"),
        };
        clean_request_headers(&mut parts.headers);
        if absolute {
            if let Some(h) = host_raw
                .as_deref()
                .and_then(|h| HeaderValue::from_str(h).ok())
            {
                parts.headers.insert(header::HOST, h);
            }
        }
        add_forwarded(&mut parts.headers, client, host_raw.as_deref());
        parts.uri = uri;
        parts.version = Version::HTTP_11;
        let mut route_now = route;
        set_mount(&mut parts.headers, &route_now);
        let mut upstream_req = Request::from_parts(parts, body.map_err(Into::into).boxed());

        let deadline = tokio::time::Instant::now() + RESPONSE_TIMEOUT;
        let mut attempts = 0;
        let resp = loop {
            attempts += 1;
            let sent = tokio::time::timeout_at(deadline, endpoint.send(upstream_req)).await;
            let failure = match sent {
                Err(_) => {
                    return Err(ProxyError::Timeout {
                        app: route_now.name.to_string(),
                        after: RESPONSE_TIMEOUT,
                    })
                }
                Ok(Ok(resp)) => break resp,
                Ok(Err(f)) => f,
            };
            // Nothing reached the child (its socket is gone: it exited, or a reload retired
            // it a moment ago): look the route up again in the current table and resend.
            let failed_pid = endpoint.pid();
            match failure.unsent {
                Some(mut unsent) if attempts < MAX_ATTEMPTS => {
                    tracing::debug!("retrying on another process: {}", failure.error);
                    let route = self.route(&host, path)?;
                    endpoint =
                        route
                            .pick(Some(failed_pid))
                            .ok_or_else(|| ProxyError::AppUnavailable {
                                app: route.name.to_string(),
                            })?;
                    unsent.headers_mut().remove(MOUNT_HEADER);
                    set_mount(unsent.headers_mut(), &route);
                    *app = Some(route.name.clone());
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
        let (mut parts, body) = resp.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        Ok(Response::from_parts(parts, body.boxed()))
    }
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

/// Sends to a process that cannot be reached are tried this many times in all.
const MAX_ATTEMPTS: u32 = 3;

fn set_mount(headers: &mut HeaderMap, route: &AppRoute) {
    if let Some(m) = &route.mount_header {
        headers.insert(HeaderName::from_static(MOUNT_HEADER), m.clone());
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

fn clean_request_headers(headers: &mut HeaderMap) {
    strip_hop_by_hop(headers);
    headers.remove(header::EXPECT);
    // Only the front decides the mount prefix and the forwarded scheme and host.
    headers.remove(MOUNT_HEADER);
    headers.remove("x-forwarded-proto");
    headers.remove("x-forwarded-host");
}

fn add_forwarded(headers: &mut HeaderMap, client: Client, host: Option<&str>) {
    let ip = client.peer.ip().to_string();
    let xff = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(prev) if !prev.trim().is_empty() => format!("{prev}, {ip}"),
        _ => ip,
    };
    if let Ok(v) = HeaderValue::from_str(&xff) {
        headers.insert("x-forwarded-for", v);
    }
    headers.insert("x-forwarded-proto", HeaderValue::from_static(client.scheme));
    if let Some(h) = host.and_then(|h| HeaderValue::from_str(h).ok()) {
        headers.insert("x-forwarded-host", h);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_and_connection_named_headers_are_removed() {
        let mut h = HeaderMap::new();
        h.insert("connection", HeaderValue::from_static("close, x-secret"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-kept", HeaderValue::from_static("yes"));
        h.insert(MOUNT_HEADER, HeaderValue::from_static("/spoofed"));
        h.insert("expect", HeaderValue::from_static("100-continue"));
        clean_request_headers(&mut h);
        let left: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, vec!["x-kept"]);
    }

    #[test]
    fn forwarded_headers() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
        let client = Client {
            peer: "127.0.0.1:5555".parse().unwrap(),
            scheme: "http",
        };
        add_forwarded(&mut h, client, Some("Example.com:8080"));
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, 127.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "Example.com:8080");
    }

    #[test]
    fn mount_header_is_percent_encoded() {
        let (_tx, rx) = watch::channel(Endpoints::default());
        let r = AppRoute::new("a", &Mount::parse("/café").unwrap(), rx.clone());
        assert_eq!(r.mount_header.unwrap(), "/caf%C3%A9");
        assert!(AppRoute::new("a", &Mount::root(), rx)
            .mount_header
            .is_none());
    }
}
