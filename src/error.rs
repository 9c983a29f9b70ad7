//! The one place where wsgimux chooses an HTTP status: for the requests it refuses or cannot
//! serve (`ProxyError`, with a short plain-text page) and for the answers it gives itself
//! without an app (`Reply`: redirects, `OPTIONS *`, static files, admin pages). Apps choose
//! their own; the workers answer their own 400/500/503 for what only they can see.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{
    HeaderValue, ALLOW, CACHE_CONTROL, CONNECTION, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE,
    RETRY_AFTER,
};
use hyper::{Response, StatusCode};

use crate::http1::Rejection;
use crate::upstream::{ProxyBody, UpstreamError};

/// Seconds a client is told to wait before retrying an app that is (re)starting.
pub const RETRY_AFTER_SECS: u32 = 2;
/// Request paths longer than this are cut in error pages and logs.
const MAX_SHOWN_PATH: usize = 200;

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("request refused: {}", describe(.0))]
    Rejected(Rejection),
    #[error("invalid Host header {0:?}")]
    BadHost(String),
    #[error("no app serves host {host:?} and path {path:?}")]
    NoRoute { host: String, path: String },
    #[error("app {app} is starting or restarting")]
    AppUnavailable { app: String },
    #[error("app {app} failed to start (its log and `wsgimux status` say why)")]
    AppFailed { app: String },
    #[error("app {app} is unreachable: {source}")]
    Upstream {
        app: String,
        #[source]
        source: UpstreamError,
    },
    #[error("app {app} sent an invalid response to {request}: {what}")]
    BadResponse {
        app: String,
        /// The request's method and path.
        request: String,
        what: String,
    },
    #[error("request body for app {app} is larger than its max_body_size ({limit} bytes)")]
    BodyTooLarge { app: String, limit: u64 },
    #[error("app {app} has {in_flight} requests in flight, its limit (processes × threads + queue_limit), and none ended within its overflow_wait")]
    Overloaded { app: String, in_flight: usize },
    #[error("app {app} did not answer within {}s", after.as_secs())]
    Timeout { app: String, after: Duration },
    #[error("static file: {0}")]
    Static(StaticError),
    #[error("request for app {app}: writing its body to a temporary file in {dir}: {source}")]
    Spool {
        app: String,
        dir: String,
        #[source]
        source: std::io::Error,
    },
}

/// The answers wsgimux gives itself that are not failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    /// `OPTIONS *`: what the server allows.
    ServerOptions,
    /// `redirect_https`: the same URL over https, method and body kept.
    HttpsRedirect,
    /// A static folder asked for without its trailing slash.
    AddSlash,
    /// A static file, whole.
    File,
    /// One range of a static file.
    FileRange,
    /// A static file the client's copy of is current.
    NotModified,
    /// An admin page.
    AdminPage,
    /// An admin path with no page.
    AdminNotFound,
    /// An admin request with a method other than GET or HEAD.
    AdminMethod,
    /// An ACME CA's HTTP-01 validation request, answered.
    AcmeChallenge,
    /// An HTTP-01 validation request for a token no order here or in storage has.
    AcmeUnknownToken,
}

impl Reply {
    pub fn status(self) -> StatusCode {
        match self {
            Reply::ServerOptions | Reply::File | Reply::AdminPage | Reply::AcmeChallenge => {
                StatusCode::OK
            }
            Reply::AcmeUnknownToken => StatusCode::NOT_FOUND,
            Reply::HttpsRedirect => StatusCode::PERMANENT_REDIRECT,
            Reply::AddSlash => StatusCode::MOVED_PERMANENTLY,
            Reply::FileRange => StatusCode::PARTIAL_CONTENT,
            Reply::NotModified => StatusCode::NOT_MODIFIED,
            Reply::AdminNotFound => StatusCode::NOT_FOUND,
            Reply::AdminMethod => StatusCode::METHOD_NOT_ALLOWED,
        }
    }

    /// A response with this reply's status and `body`.
    pub fn response<B>(self, body: B) -> Response<B> {
        let mut resp = Response::new(body);
        *resp.status_mut() = self.status();
        resp
    }
}

/// `OPTIONS *` asks about the server, not a resource: answered here, never by an app.
pub fn server_options() -> Response<ProxyBody> {
    let mut resp = Reply::ServerOptions.response(ProxyBody::default());
    resp.headers_mut().insert(
        ALLOW,
        HeaderValue::from_static("GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"),
    );
    resp.headers_mut()
        .insert(CONTENT_LENGTH, HeaderValue::from_static("0"));
    resp
}

/// Why a `static:` folder did not give a file.
#[derive(Debug, thiserror::Error)]
pub enum StaticError {
    #[error("no file for {path:?}")]
    NotFound { path: String },
    #[error("method {method} is not allowed on static files")]
    MethodNotAllowed { method: String },
    #[error("the range is outside the file ({size} bytes)")]
    RangeNotSatisfiable { size: u64 },
    #[error("a precondition (If-Match / If-Unmodified-Since) failed")]
    PreconditionFailed,
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::Rejected(r) => match r {
                Rejection::Malformed(_) => StatusCode::BAD_REQUEST,
                Rejection::UriTooLong => StatusCode::URI_TOO_LONG,
                Rejection::HeaderTooLarge | Rejection::TooManyHeaders => {
                    StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
                }
                Rejection::CodingNotImplemented => StatusCode::NOT_IMPLEMENTED,
            },
            ProxyError::BadHost(_) => StatusCode::BAD_REQUEST,
            ProxyError::NoRoute { .. } => StatusCode::NOT_FOUND,
            ProxyError::AppUnavailable { .. } | ProxyError::AppFailed { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ProxyError::Upstream { .. } | ProxyError::BadResponse { .. } => StatusCode::BAD_GATEWAY,
            ProxyError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::Overloaded { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::Spool { .. } => StatusCode::INTERNAL_SERVER_ERROR,
            ProxyError::Static(s) => match s {
                StaticError::NotFound { .. } => StatusCode::NOT_FOUND,
                StaticError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
                StaticError::RangeNotSatisfiable { .. } => StatusCode::RANGE_NOT_SATISFIABLE,
                StaticError::PreconditionFailed => StatusCode::PRECONDITION_FAILED,
            },
        }
    }

    /// The page shown to the client: the status line and one sentence, no internals.
    fn page(&self) -> String {
        let status = self.status();
        let reason = status.canonical_reason().unwrap_or("");
        let detail = match self {
            ProxyError::Rejected(r) => format!("The request was refused: {}.", describe(r)),
            ProxyError::BadHost(h) => format!("The Host header {:?} is not valid.", shorten(h)),
            ProxyError::NoRoute { host, path } => {
                format!(
                    "No app is configured for http://{}{}",
                    shorten(host),
                    shorten(path)
                )
            }
            ProxyError::AppUnavailable { app } => {
                format!("The app {app} is starting; try again in a moment.")
            }
            // The traceback stays in the log and `wsgimux status`: never shown to clients.
            ProxyError::AppFailed { app } => {
                format!("The app {app} failed to start; it is being retried.")
            }
            ProxyError::Upstream { app, .. } => format!("The app {app} could not be reached."),
            ProxyError::BadResponse { app, .. } => {
                format!("The app {app} sent a bad response.")
            }
            ProxyError::BodyTooLarge { app, limit } => {
                format!("The app {app} accepts request bodies of at most {limit} bytes.")
            }
            ProxyError::Overloaded { app, .. } => {
                format!("The app {app} is busy; try again in a moment.")
            }
            ProxyError::Timeout { app, after } => {
                format!("The app {app} did not answer within {}s.", after.as_secs())
            }
            ProxyError::Static(StaticError::NotFound { path }) => {
                format!("There is no file at {}.", shorten(path))
            }
            ProxyError::Static(e) => format!("{}.", capitalize(&e.to_string())),
            ProxyError::Spool { .. } => "The request body could not be buffered.".to_string(),
        };
        format!("{} {reason}\n\n{detail}\n", status.as_u16())
    }

    pub fn into_response(self) -> Response<ProxyBody> {
        let page = Bytes::from(self.page());
        let mut resp = Response::new(Full::new(page).map_err(|e| match e {}).boxed());
        *resp.status_mut() = self.status();
        let h = resp.headers_mut();
        h.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        match self {
            ProxyError::AppUnavailable { .. }
            | ProxyError::AppFailed { .. }
            | ProxyError::Overloaded { .. } => {
                h.insert(RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
            }
            // The connection's framing can no longer be trusted, or its body was not read.
            ProxyError::Rejected(_) | ProxyError::BodyTooLarge { .. } => {
                h.insert(CONNECTION, HeaderValue::from_static("close"));
            }
            ProxyError::Static(StaticError::MethodNotAllowed { .. }) => {
                h.insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
            }
            ProxyError::Static(StaticError::RangeNotSatisfiable { size }) => {
                if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
                    h.insert(CONTENT_RANGE, v);
                }
            }
            _ => {}
        }
        resp
    }
}

fn describe(r: &Rejection) -> &'static str {
    match r {
        Rejection::Malformed(why) => why,
        Rejection::UriTooLong => "the request target is too long",
        Rejection::HeaderTooLarge => "the request headers are too large",
        Rejection::TooManyHeaders => "the request has too many headers",
        Rejection::CodingNotImplemented => "only the chunked transfer coding is supported",
    }
}

fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_uppercase().chain(c).collect())
        .unwrap_or_default()
}

/// Cuts a client-supplied string for display, on a character boundary.
pub fn shorten(s: &str) -> &str {
    match s.char_indices().nth(MAX_SHOWN_PATH) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses() {
        let unavailable = ProxyError::AppUnavailable { app: "api".into() };
        assert_eq!(unavailable.status(), 503);
        let resp = unavailable.into_response();
        assert_eq!(resp.headers()[RETRY_AFTER], "2");
        let nf = ProxyError::NoRoute {
            host: "example.com".into(),
            path: "/x".into(),
        };
        assert_eq!(nf.status(), 404);
        assert!(nf.page().contains("http://example.com/x"));
        let t = ProxyError::Timeout {
            app: "a".into(),
            after: Duration::from_secs(60),
        };
        assert_eq!(t.status(), 504);
    }
}
