//! `start_response`, `write()` and the way a response leaves a Python thread: one [`Reply`] (the
//! head, and either the whole body or the receiving end of a bounded chunk channel) handed to
//! the hyper task that waits for it.
//!
//! Owns the framing decisions a WSGI server makes for the app: hop-by-hop headers are dropped,
//! a declared Content-Length is never exceeded, a whole body gets its length. Does not write to
//! sockets; hyper does.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, CONNECTION, CONTENT_LENGTH};
use http::{HeaderMap, StatusCode};
use hyper::ext::ReasonPhrase;
use pyo3::create_exception;
use pyo3::exceptions::{PyAssertionError, PyOSError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyString, PyTuple};
use tokio::sync::{mpsc, oneshot};

use crate::body::{Aborted, Chunk, ResponseBody};

/// Chunks a streamed response may have queued before the app's thread waits for the client.
const STREAM_DEPTH: usize = 4;

/// Hop-by-hop headers (RFC 9110 §7.6.1): framing and connection handling are the server's.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "trailers",
    "transfer-encoding",
    "upgrade",
];

create_exception!(
    wsgimux_native,
    InvalidResponse,
    PyValueError,
    "The app's status or headers break HTTP's rules (the response becomes a 500)."
);

/// What a Python thread hands back to the hyper task serving the request.
pub struct Reply {
    pub status: StatusCode,
    pub reason: Option<ReasonPhrase>,
    pub headers: HeaderMap,
    pub body: ResponseBody,
}

impl Reply {
    /// A response the worker itself makes (the app never answered).
    pub fn plain(status: StatusCode) -> Reply {
        let text = status.canonical_reason().unwrap_or("Error");
        let body = Bytes::from(format!("{text}\n"));
        let mut headers = HeaderMap::new();
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain"),
        );
        headers.insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
        headers.insert(CONNECTION, HeaderValue::from_static("close"));
        Reply {
            status,
            reason: None,
            headers,
            body: ResponseBody::full(Some(body)),
        }
    }

    /// The response for hyper; `flushes` is the connection's flush count (see [`ResponseBody`]).
    pub fn into_response(self, flushes: Option<Arc<AtomicU64>>) -> hyper::Response<ResponseBody> {
        let mut body = self.body;
        body.flushes = flushes;
        let mut resp = hyper::Response::new(body);
        *resp.status_mut() = self.status;
        *resp.headers_mut() = self.headers;
        if let Some(reason) = self.reason {
            resp.extensions_mut().insert(reason);
        }
        resp
    }
}

/// Why data could not be sent.
pub enum SendError {
    /// The client (the front) went away: stop producing, nothing to report.
    Gone,
    /// The app broke a rule (write before start_response, non-bytes, …).
    App(PyErr),
}

impl From<PyErr> for SendError {
    fn from(e: PyErr) -> Self {
        SendError::App(e)
    }
}

struct Head {
    status: StatusCode,
    reason: Option<ReasonPhrase>,
    headers: HeaderMap,
}

struct State {
    /// Set by start_response; taken when the head is handed over.
    head: Option<Head>,
    /// The app's Content-Length, if it gave one: never exceeded.
    length: Option<u64>,
    /// Present until the head has been handed over.
    reply: Option<oneshot::Sender<Reply>>,
    stream: Option<mpsc::Sender<Chunk>>,
    written: u64,
    overrun_logged: bool,
}

impl State {
    /// Hands over the head with the whole body, never more than a declared Content-Length,
    /// and with a Content-Length when the app gave none.
    fn reply_full(&mut self, body: Bytes, app: &str) -> Result<(), SendError> {
        let Some(mut head) = self.head.take() else {
            return Err(PyAssertionError::new_err(
                "the app returned without calling start_response()",
            )
            .into());
        };
        let len = body.len() as u64;
        let body = match self.length {
            Some(l) if len > l => {
                log_overrun(app);
                body.slice(..l as usize)
            }
            Some(l) if len < l => {
                log_short(app, len, l);
                // Sent as a stream that ends cut: the head keeps the app's length, and the
                // front learns the body is incomplete when the connection closes.
                let (tx, rx) = mpsc::channel(2);
                if !body.is_empty() {
                    let _ = tx.try_send(Ok(body));
                }
                let _ = tx.try_send(Err(Aborted));
                if let Some(reply) = self.reply.take() {
                    let _ = reply.send(Reply {
                        status: head.status,
                        reason: head.reason,
                        headers: head.headers,
                        body: ResponseBody::stream(rx),
                    });
                }
                return Ok(());
            }
            Some(_) => body,
            None => {
                if !bodiless(head.status) {
                    head.headers.insert(CONTENT_LENGTH, HeaderValue::from(len));
                }
                body
            }
        };
        if let Some(reply) = self.reply.take() {
            let _ = reply.send(Reply {
                status: head.status,
                reason: head.reason,
                headers: head.headers,
                body: ResponseBody::full((!body.is_empty()).then_some(body)),
            });
        }
        Ok(())
    }
}

fn log_overrun(app: &str) {
    eprintln!("{app}: the app sent more than its Content-Length; the rest is dropped");
}

/// hyper closes the connection after a body shorter than its Content-Length.
fn log_short(app: &str, sent: u64, declared: u64) {
    eprintln!(
        "{app}: the app sent {sent} of its {declared}-byte Content-Length; closing the connection"
    );
}

/// The `start_response` callable of one request.
#[pyclass(frozen, module = "wsgimux_native")]
pub struct StartResponse {
    state: Mutex<State>,
}

impl StartResponse {
    pub fn new(reply: oneshot::Sender<Reply>) -> Self {
        StartResponse {
            state: Mutex::new(State {
                head: None,
                length: None,
                reply: Some(reply),
                stream: None,
                written: 0,
                overrun_logged: false,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave State half-updated in a way that matters:
        // every field is valid on its own.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether start_response has been called (or the head already went out).
    fn started(&self) -> bool {
        let s = self.lock();
        s.head.is_some() || s.reply.is_none()
    }

    /// Whether the head has gone to the client (an error can then only abort the connection).
    pub fn head_sent(&self) -> bool {
        self.lock().reply.is_none()
    }

    /// Streams one chunk, starting the streamed response if it has not started. Waits, with
    /// the GIL released, while the channel is full.
    pub fn send_chunk(&self, py: Python<'_>, data: Bytes, app: &str) -> Result<(), SendError> {
        let (tx, chunk) = {
            let mut s = self.lock();
            if s.head.is_none() && s.reply.is_some() {
                return Err(PyAssertionError::new_err("write() before start_response()").into());
            }
            let room = s.length.map(|l| l.saturating_sub(s.written));
            let data = match room {
                Some(room) if (data.len() as u64) > room => {
                    if !s.overrun_logged {
                        s.overrun_logged = true;
                        log_overrun(app);
                    }
                    data.slice(..room as usize)
                }
                _ => data,
            };
            if data.is_empty() {
                return Ok(());
            }
            s.written += data.len() as u64;
            if let (Some(reply), Some(head)) = (s.reply.take(), s.head.take()) {
                let (tx, rx) = mpsc::channel(STREAM_DEPTH);
                let _ = reply.send(Reply {
                    status: head.status,
                    reason: head.reason,
                    headers: head.headers,
                    body: ResponseBody::stream(rx),
                });
                s.stream = Some(tx);
            }
            match &s.stream {
                Some(tx) => (tx.clone(), data),
                None => return Err(SendError::Gone),
            }
        };
        // The lock is not held here: another thread of the app could call write() meanwhile.
        py.detach(|| tx.blocking_send(Ok(chunk)))
            .map_err(|_| SendError::Gone)
    }

    /// Sends a whole body at once (the app returned a list, or a one-item iterable), with its
    /// length — or streams it, when write() already started a streamed response.
    pub fn send_whole(&self, py: Python<'_>, body: Bytes, app: &str) -> Result<(), SendError> {
        if !self.head_sent() {
            return self.lock().reply_full(body, app);
        }
        self.send_chunk(py, body, app)?;
        self.finish(py, app)
    }

    /// Ends the response: sends the head (with an empty body) if nothing was sent yet, closes
    /// the stream otherwise — cut, when it is shorter than the app's Content-Length.
    pub fn finish(&self, py: Python<'_>, app: &str) -> Result<(), SendError> {
        let (tx, short) = {
            let mut s = self.lock();
            if s.reply.is_some() {
                return s.reply_full(Bytes::new(), app);
            }
            let short = s.length.filter(|&l| s.written < l);
            if let Some(l) = short {
                log_short(app, s.written, l);
            }
            (s.stream.take(), short.is_some())
        };
        if let (Some(tx), true) = (tx, short) {
            let _ = py.detach(|| tx.blocking_send(Err(Aborted)));
        }
        Ok(())
    }

    /// The app failed: a 500 if nothing was sent, else the stream is cut (after what was
    /// already queued: the cut waits for room, so it is never lost to a full channel).
    pub fn fail(&self, py: Python<'_>) {
        let tx = {
            let mut s = self.lock();
            if let Some(reply) = s.reply.take() {
                let _ = reply.send(Reply::plain(StatusCode::INTERNAL_SERVER_ERROR));
                return;
            }
            s.stream.take()
        };
        if let Some(tx) = tx {
            let _ = py.detach(|| tx.blocking_send(Err(Aborted)));
        }
    }
}

fn bodiless(status: StatusCode) -> bool {
    status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
}

#[pymethods]
impl StartResponse {
    #[pyo3(signature = (status, headers, exc_info=None))]
    fn __call__<'py>(
        slf: &Bound<'py, Self>,
        status: &Bound<'py, PyAny>,
        headers: &Bound<'py, PyAny>,
        exc_info: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let this = slf.get();
        let exc_info = exc_info.filter(|e| !e.is_none());
        if let Some(exc_info) = exc_info {
            if this.head_sent() {
                // PEP 3333: the headers are out, so the error can only propagate.
                let value = exc_info.get_item(1)?;
                return Err(PyErr::from_value(value));
            }
        } else if this.started() {
            return Err(PyAssertionError::new_err(
                "start_response() called again without exc_info",
            ));
        }
        let (head, length) = parse_head(status, headers)?;
        let mut s = this.lock();
        s.head = Some(head);
        s.length = length;
        drop(s);
        slf.getattr(pyo3::intern!(slf.py(), "write"))
    }

    fn write(&self, py: Python<'_>, data: &Bound<'_, PyAny>) -> PyResult<()> {
        let data = data.cast::<PyBytes>().map_err(|_| {
            PyTypeError::new_err(format!("write() takes bytes, not {}", type_name(data)))
        })?;
        match self.send_chunk(py, body_bytes(data), "app") {
            Ok(()) => Ok(()),
            Err(SendError::Gone) => Err(PyOSError::new_err("the client closed the connection")),
            Err(SendError::App(e)) => Err(e),
        }
    }
}

/// Bodies from this size on are sent from the app's own bytes object, kept alive until written
/// (its reference dropped after, without the GIL, goes through pyo3's deferred decref); smaller
/// ones are copied, which costs less than the bookkeeping.
const BORROW_FROM: usize = 4096;

/// A chunk of the app's body as hyper sends it: large ones without a copy.
pub fn body_bytes(data: &Bound<'_, PyBytes>) -> Bytes {
    if data.as_bytes().len() < BORROW_FROM {
        return Bytes::copy_from_slice(data.as_bytes());
    }
    Bytes::from_owner(pyo3::pybacked::PyBackedBytes::from(data.clone()))
}

pub fn type_name(obj: &Bound<'_, PyAny>) -> String {
    obj.get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "?".into())
}

fn parse_head(
    status: &Bound<'_, PyAny>,
    headers: &Bound<'_, PyAny>,
) -> PyResult<(Head, Option<u64>)> {
    let (code, reason) = parse_status(status)?;
    let (map, length) = parse_headers(headers)?;
    Ok((
        Head {
            status: code,
            reason,
            headers: map,
        },
        length,
    ))
}

/// `"200 OK"`: three digits from 100, a space, a reason (kept only when it is not the usual
/// one) of tabs, spaces, visible ASCII and latin-1 — never a line break, NUL or other control
/// character. The portable worker applies the same rules with the same words.
fn parse_status(status: &Bound<'_, PyAny>) -> PyResult<(StatusCode, Option<ReasonPhrase>)> {
    let status = status.cast::<PyString>().map_err(|_| {
        InvalidResponse::new_err(format!(
            "status must be a str like \"200 OK\", not {}",
            type_name(status)
        ))
    })?;
    let status = status.to_cow()?;
    let bytes = status.as_bytes();
    let not_like = || InvalidResponse::new_err(format!("status {status:?} is not like \"200 OK\""));
    if bytes.len() < 4 || !bytes[..3].iter().all(u8::is_ascii_digit) || bytes[3] != b' ' {
        return Err(not_like());
    }
    let code = StatusCode::from_bytes(&bytes[..3]).map_err(|_| not_like())?;
    let reason_text = &status[4..];
    let bad_reason = || {
        InvalidResponse::new_err(format!(
            "status {status:?} has a character a reason phrase cannot hold"
        ))
    };
    let reason = if code.canonical_reason() == Some(reason_text) {
        None
    } else {
        let bytes = latin1_bytes(reason_text).ok_or_else(bad_reason)?;
        Some(ReasonPhrase::try_from(bytes).map_err(|_| bad_reason())?)
    };
    Ok((code, reason))
}

/// A list of `(str, str)`: names and latin-1 values checked, hop-by-hop headers dropped (a
/// `Connection: close` kept as the app's wish), Content-Length read.
fn parse_headers(headers: &Bound<'_, PyAny>) -> PyResult<(HeaderMap, Option<u64>)> {
    let mut map = HeaderMap::new();
    let mut length = None;
    for item in headers.try_iter()? {
        let item = item?;
        let pair = item.cast::<PyTuple>().ok().filter(|t| t.len() == 2);
        let Some(pair) = pair else {
            return Err(InvalidResponse::new_err(format!(
                "each header must be a (str, str) tuple, not {}",
                item.repr()?
            )));
        };
        let (name, value) = (pair.get_item(0)?, pair.get_item(1)?);
        let (Ok(name), Ok(value)) = (name.cast::<PyString>(), value.cast::<PyString>()) else {
            return Err(InvalidResponse::new_err(format!(
                "each header must be a (str, str) tuple, not {}",
                pair.repr()?
            )));
        };
        let name = name.to_cow()?;
        let value = value.to_cow()?;
        let header = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
            InvalidResponse::new_err(format!("header name {name:?} is not a token"))
        })?;
        // Tabs, spaces, visible ASCII and latin-1; no line break, NUL or other control.
        let value = latin1_bytes(&value)
            .and_then(|v| HeaderValue::from_bytes(&v).ok())
            .ok_or_else(|| {
                InvalidResponse::new_err(format!(
                    "header {name:?} has a character a header value cannot hold"
                ))
            })?;
        if HOP_BY_HOP.contains(&header.as_str()) {
            if header == CONNECTION
                && value
                    .to_str()
                    .map(|v| v.to_ascii_lowercase().contains("close"))
                    .unwrap_or(false)
            {
                map.insert(CONNECTION, HeaderValue::from_static("close"));
            }
            continue;
        }
        if header == CONTENT_LENGTH {
            let parsed = value
                .to_str()
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .ok_or_else(|| {
                    InvalidResponse::new_err(format!(
                        "header \"Content-Length\" is not a number: {value:?}"
                    ))
                })?;
            length = Some(parsed);
        }
        map.append(header, value);
    }
    Ok((map, length))
}

/// A native string's bytes (PEP 3333: statuses and header values are latin-1); None when it
/// has characters outside latin-1.
fn latin1_bytes(s: &str) -> Option<Vec<u8>> {
    if s.is_ascii() {
        return Some(s.as_bytes().to_vec());
    }
    s.chars().map(|c| u8::try_from(u32::from(c)).ok()).collect()
}
