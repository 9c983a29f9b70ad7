//! The optional admin listener (`admin: {listen: ...}`): the status page (HTML, refreshed every
//! 5 s), `/status.json` and Prometheus text at `/metrics`. Read-only; everything it shows comes
//! from `status`. Keep it on a loopback or private address: it has no authentication.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use hyper::{Method, Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::error::Reply;
use crate::status::{self, Overview};

/// A client must send its request head within this.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// At most this many admin connections at once (a scraper and a few browsers).
const MAX_CONNECTIONS: usize = 64;

/// Serves the admin pages on `listener` until the handle is aborted.
pub fn serve(listener: TcpListener, overview: watch::Receiver<Arc<Overview>>) -> JoinHandle<()> {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    tokio::spawn(async move {
        loop {
            let Ok(permit) = slots.clone().acquire_owned().await else {
                return;
            };
            let (stream, _) = match listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!("admin listener: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let overview = overview.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let snapshot = overview.borrow().clone();
                    async move { Ok::<_, Infallible>(page(&req, &snapshot)) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEAD_TIMEOUT)
                    .serve_connection(TokioIo::new(stream), service);
                let _ = conn.await;
                drop(permit);
            });
        }
    })
}

fn page<B>(req: &Request<B>, overview: &Overview) -> Response<Full<Bytes>> {
    let (status, kind, body) = if req.method() != Method::GET && req.method() != Method::HEAD {
        (
            Reply::AdminMethod,
            "text/plain; charset=utf-8",
            "GET only\n".to_string(),
        )
    } else {
        match req.uri().path() {
            "/" => (
                Reply::AdminPage,
                "text/html; charset=utf-8",
                status::render_html(&{
                    let mut report = status::collect(overview);
                    status::charts::attach(&mut report);
                    report
                }),
            ),
            "/metrics" => (
                Reply::AdminPage,
                "text/plain; version=0.0.4; charset=utf-8",
                status::render_prometheus(&status::collect(overview)),
            ),
            "/status.json" => (
                Reply::AdminPage,
                "application/json",
                serde_json::to_string_pretty(&status::collect(overview)).unwrap_or_default(),
            ),
            _ => (
                Reply::AdminNotFound,
                "text/plain; charset=utf-8",
                "not found: try /, /metrics or /status.json\n".to_string(),
            ),
        }
    };
    let mut resp = status.response(Full::new(Bytes::from(body)));
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(kind));
    resp.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}
