//! One access-log line per request, written when its response body has been relayed (or
//! abandoned): Apache/nginx "combined" format plus the app name and the request time, or one
//! JSON object; to wsgimux's log, stdout or a file (`access_log`). The same moment counts the
//! request in the app's and the process's metrics.

use std::fmt::Write as _;
use std::io::Write as _;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::header::{HeaderValue, HOST, REFERER, USER_AGENT};
use hyper::{Method, Request, Response, StatusCode, Uri};

use crate::config::{AccessLogFormat, AccessLogSpec, AccessLogTo, LogFormat};
use crate::logfile::LogFile;
use crate::metrics::{AppCounters, Counters};
use crate::upstream::{BoxError, Endpoint, ProxyBody};

/// Where access-log lines go and how they look, and where the requests no app was chosen
/// for are counted; replaced as a whole by a reload (the count carried over).
#[derive(Debug)]
pub struct AccessSink {
    to: Destination,
    format: AccessLogFormat,
    /// Requests that reached no app: refused heads, no route, host statics, redirects, `OPTIONS *`.
    pub unrouted: Arc<Counters>,
}

#[derive(Debug)]
enum Destination {
    /// wsgimux's own log stream (stderr): each line as it is, with nothing before it, so the
    /// stream parses as combined (or JSON) — or, when wsgimux's log is JSON, as one of its
    /// JSON records.
    MainLog {
        json_log: bool,
    },
    Stdout,
    File(Arc<LogFile>),
    Off,
}

impl AccessSink {
    pub fn open(
        spec: &AccessLogSpec,
        log_format: LogFormat,
        unrouted: Arc<Counters>,
    ) -> std::io::Result<Self> {
        let to = match &spec.to {
            AccessLogTo::MainLog => Destination::MainLog {
                json_log: log_format == LogFormat::Json,
            },
            AccessLogTo::Stdout => Destination::Stdout,
            AccessLogTo::Off => Destination::Off,
            AccessLogTo::File(p) => Destination::File(LogFile::open_queued(p)?),
        };
        Ok(AccessSink {
            to,
            format: spec.format,
            unrouted,
        })
    }

    /// Writes one line (given without its newline, which is added in place: the line is
    /// copied once, into its queue). Through the streams' queues: a reader that does not keep
    /// up costs lines (counted), never a front thread's time (`logfile`).
    fn write(&self, mut line: String) {
        line.push('\n');
        let _ = match &self.to {
            Destination::MainLog { json_log: true } => {
                tracing::info!(target: "wsgimux::access", "{}", line.trim_end());
                Ok(())
            }
            Destination::MainLog { .. } => crate::logfile::stderr().write_all(line.as_bytes()),
            Destination::Stdout => crate::logfile::stdout().write_all(line.as_bytes()),
            Destination::File(f) => f.write_terminated(line.as_bytes()),
            Destination::Off => Ok(()),
        };
    }
}

impl Default for AccessSink {
    fn default() -> Self {
        AccessSink {
            to: Destination::MainLog { json_log: false },
            format: AccessLogFormat::Combined,
            unrouted: Arc::default(),
        }
    }
}

/// Which app (and which of its processes) served a request: where it is counted and logged
/// (its own `access_log`, else the top-level one); its own `error_pages`, by status.
#[derive(Debug, Clone)]
pub struct Served {
    pub app: Arc<str>,
    pub stats: Arc<AppCounters>,
    pub process: Option<Arc<Endpoint>>,
    pub error_pages: Arc<std::collections::BTreeMap<u16, std::path::PathBuf>>,
    pub access: Option<Arc<AccessSink>>,
}

/// What is known of a request when it arrives.
pub struct AccessLog {
    started: Instant,
    time: SystemTime,
    /// The client's IP address as text (made once per connection).
    peer: HeaderValue,
    /// None: a request the gate refused before it was parsed.
    head: Option<Head>,
}

/// The request's fields the line shows, as they came (cheap clones of the parsed head):
/// escaped only when a line is written, so a request costs nothing here with the log off.
struct Head {
    method: Method,
    uri: Uri,
    version: hyper::Version,
    referer: Option<HeaderValue>,
    user_agent: Option<HeaderValue>,
    /// The Host (or HTTP/2 authority) the request named, for the `vhost` field.
    host: Option<HeaderValue>,
}

/// The request's fields, escaped for a line.
struct Fields {
    method: String,
    target: String,
    version: &'static str,
    referer: String,
    user_agent: String,
    host: String,
    /// The port the Host named, if any (the vhost is the name alone).
    port: Option<u16>,
}

impl Fields {
    /// Each field as the combined line writes it (`target_into`, `text_into`).
    fn of(head: Option<&Head>) -> Self {
        let text = |v: Option<&HeaderValue>| {
            let mut out = String::new();
            text_into(&mut out, v);
            out
        };
        match head {
            None => Fields {
                method: "-".to_string(),
                target: String::new(),
                version: "",
                referer: "-".to_string(),
                user_agent: "-".to_string(),
                host: "-".to_string(),
                port: None,
            },
            Some(h) => Fields {
                method: escape(h.method.as_str().as_bytes()),
                target: {
                    let mut out = String::new();
                    target_into(&mut out, &h.uri);
                    out
                },
                version: version_text(h.version),
                referer: text(h.referer.as_ref()),
                user_agent: text(h.user_agent.as_ref()),
                host: {
                    let mut out = String::new();
                    host_into(&mut out, h.host.as_ref());
                    out
                },
                port: h.host.as_ref().and_then(host_port),
            },
        }
    }
}

impl AccessLog {
    /// `peer`: the client's IP address as text.
    pub fn begin<B>(req: &Request<B>, peer: HeaderValue) -> Self {
        let headers = req.headers();
        let host = match headers.get(HOST) {
            Some(h) => Some(h.clone()),
            None => (req.uri().authority()).and_then(|a| HeaderValue::from_str(a.as_str()).ok()),
        };
        AccessLog {
            started: Instant::now(),
            time: SystemTime::now(),
            peer,
            head: Some(Head {
                method: req.method().clone(),
                uri: req.uri().clone(),
                version: req.version(),
                referer: headers.get(REFERER).cloned(),
                user_agent: headers.get(USER_AGENT).cloned(),
                host,
            }),
        }
    }

    /// A request the gate refused: its head was never parsed into a request.
    pub fn refused(peer: HeaderValue) -> Self {
        AccessLog {
            started: Instant::now(),
            time: SystemTime::now(),
            peer,
            head: None,
        }
    }

    /// Wraps the response body; the line is logged (and counted) when it is done or dropped.
    pub fn finish(
        self,
        resp: Response<ProxyBody>,
        served: Option<Served>,
        sink: Arc<AccessSink>,
    ) -> Response<LoggedBody> {
        let status = resp.status();
        resp.map(|inner| LoggedBody {
            inner,
            bytes: 0,
            complete: false,
            entry: Some(Entry {
                log: self,
                status,
                served,
                sink,
                tunnel_in: None,
            }),
        })
    }

    /// For a 101: the line is written when the tunnel closes, with its time and bytes each way.
    pub fn finish_tunnel(
        self,
        resp: Response<ProxyBody>,
        served: Option<Served>,
        sink: Arc<AccessSink>,
    ) -> (Response<LoggedBody>, TunnelLog) {
        let entry = Entry {
            log: self,
            status: resp.status(),
            served,
            sink,
            tunnel_in: None,
        };
        let resp = resp.map(|inner| LoggedBody {
            inner,
            bytes: 0,
            complete: true,
            entry: None,
        });
        (resp, TunnelLog(entry))
    }
}

/// The access-log line of an upgraded connection (a WebSocket), written when it closes.
pub struct TunnelLog(Entry);

impl TunnelLog {
    /// `from_client` and `to_client`: the tunnel's bytes each way; `complete`: it closed
    /// cleanly (either side ended it) rather than by an error or the idle timeout.
    pub fn done(mut self, from_client: u64, to_client: u64, complete: bool) {
        self.0.tunnel_in = Some(from_client);
        self.0.write(to_client, complete);
    }
}

fn version_text(v: hyper::Version) -> &'static str {
    match v {
        hyper::Version::HTTP_09 => "HTTP/0.9",
        hyper::Version::HTTP_10 => "HTTP/1.0",
        hyper::Version::HTTP_2 => "HTTP/2.0",
        hyper::Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP/1.1",
    }
}

struct Entry {
    log: AccessLog,
    status: StatusCode,
    served: Option<Served>,
    sink: Arc<AccessSink>,
    /// For a tunnel: the bytes the client sent through it.
    tunnel_in: Option<u64>,
}

impl Entry {
    fn write(self, bytes: u64, complete: bool) {
        let l = &self.log;
        let elapsed = l.started.elapsed();
        let status = self.status.as_u16();
        match &self.served {
            Some(s) => {
                s.stats.total.record(status, complete, elapsed);
                match &s.process {
                    Some(p) => p.stats.record(status, complete, elapsed),
                    None => s.stats.front.record(status, complete, elapsed),
                }
            }
            None => self.sink.unrouted.record(status, complete, elapsed),
        }
        let sink = (self.served.as_ref()).and_then(|s| s.access.as_deref());
        let sink = sink.unwrap_or(&self.sink);
        if matches!(sink.to, Destination::Off) {
            return;
        }
        let app = self.served.as_ref().map_or("-", |s| &s.app);
        let line = match sink.format {
            AccessLogFormat::Combined => self.combined(bytes, complete, elapsed, app),
            AccessLogFormat::Json => {
                let f = Fields::of(l.head.as_ref());
                let dash = |s: &str| (s != "-").then(|| s.to_string());
                let mut v = serde_json::json!({
                    "time": crate::dates::iso_time(l.time),
                    "remote_addr": String::from_utf8_lossy(l.peer.as_bytes()),
                    "method": dash(&f.method),
                    "host": dash(&f.host),
                    "port": f.port,
                    "uri": (!f.target.is_empty()).then_some(&f.target),
                    "protocol": (!f.version.is_empty()).then_some(f.version),
                    "status": status,
                    "bytes": bytes,
                    "referer": dash(&f.referer),
                    "user_agent": dash(&f.user_agent),
                    "app": dash(app),
                    "pid": self.served.as_ref().and_then(|s| s.process.as_ref()).map(|p| p.pid()),
                    "request_time": (elapsed.as_secs_f64() * 1e6).round() / 1e6,
                    "complete": complete,
                });
                if let Some(n) = self.tunnel_in {
                    v["upgraded_bytes_in"] = n.into();
                }
                v.to_string()
            }
        };
        sink.write(line);
    }

    /// Combined, then wsgimux's fields: the app, the Host (Apache's vhost_combined puts it
    /// first, which combined parsers do not read), the request time. Written into one buffer,
    /// the fields escaped straight into it and the time's text made once a second: formatting
    /// the line through `format!` cost a fifth of a proxied request.
    fn combined(&self, bytes: u64, complete: bool, elapsed: Duration, app: &str) -> String {
        let l = &self.log;
        let mut line = String::with_capacity(256);
        escape_into(&mut line, l.peer.as_bytes());
        line.push_str(" - - [");
        clf_time_into(&mut line, l.time);
        line.push_str("] \"");
        match &l.head {
            None => line.push('-'),
            Some(h) => {
                escape_into(&mut line, h.method.as_str().as_bytes());
                line.push(' ');
                target_into(&mut line, &h.uri);
                line.push(' ');
                line.push_str(version_text(h.version));
            }
        }
        let _ = write!(line, "\" {} ", self.status.as_u16());
        match bytes {
            0 => line.push('-'),
            n => {
                let _ = write!(line, "{n}");
            }
        }
        let head = l.head.as_ref();
        line.push_str(" \"");
        text_into(&mut line, head.and_then(|h| h.referer.as_ref()));
        line.push_str("\" \"");
        text_into(&mut line, head.and_then(|h| h.user_agent.as_ref()));
        line.push_str("\" app=");
        line.push_str(app);
        line.push_str(" vhost=");
        host_into(&mut line, head.and_then(|h| h.host.as_ref()));
        let _ = write!(line, " rt={:.3}", elapsed.as_secs_f64());
        if let Some(n) = self.tunnel_in {
            let _ = write!(line, " upgraded in={n} out={bytes}");
        }
        if !complete {
            line.push_str(" aborted");
        }
        line
    }
}

thread_local! {
    /// The last second's time as the combined format writes it (nginx caches it the same way).
    static CLF_TIME: std::cell::RefCell<(u64, String)> = const {
        std::cell::RefCell::new((0, String::new()))
    };
}

fn clf_time_into(line: &mut String, t: SystemTime) {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    CLF_TIME.with(|cached| {
        let mut cached = cached.borrow_mut();
        if cached.0 != secs || cached.1.is_empty() {
            *cached = (secs, crate::dates::clf_time(t));
        }
        line.push_str(&cached.1);
    });
}

/// The request target as it came: origin form without making a string of the whole URI.
fn target_into(line: &mut String, uri: &Uri) {
    if uri.scheme().is_some() || uri.authority().is_some() {
        return escape_into(line, uri.to_string().as_bytes());
    }
    escape_into(line, uri.path().as_bytes());
    if let Some(q) = uri.query() {
        line.push('?');
        escape_into(line, q.as_bytes());
    }
}

/// A header's value escaped, or `-` when the request had none.
fn text_into(line: &mut String, v: Option<&HeaderValue>) {
    match v {
        Some(v) => escape_into(line, v.as_bytes()),
        None => line.push('-'),
    }
}

/// The vhost: the Host's name as routing reads it (lowercase, no port, no trailing dot), so
/// that per-site reports (goaccess, nginx's `$host`) count one site once; a Host routing could
/// not read is written as it came.
fn host_into(line: &mut String, v: Option<&HeaderValue>) {
    let Some(v) = v else {
        return line.push('-');
    };
    match v.to_str().ok().and_then(crate::routes::normalize_host) {
        Some(name) => escape_into(line, name.as_bytes()),
        None => escape_into(line, v.as_bytes()),
    }
}

/// The port a Host value names (`example.com:8080`, `[::1]:8443`), for the JSON `port` field.
fn host_port(v: &HeaderValue) -> Option<u16> {
    let text = v.to_str().ok()?;
    let (name, port) = text.rsplit_once(':')?;
    if name.contains(':') && !name.ends_with(']') {
        return None; // a bare IPv6 address, not a port
    }
    port.parse().ok()
}

/// A response body that counts what it relays and logs the request at its end.
pub struct LoggedBody {
    inner: ProxyBody,
    bytes: u64,
    complete: bool,
    entry: Option<Entry>,
}

impl Body for LoggedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    this.bytes += d.len() as u64;
                }
                // Trailers are a body's last frame: after them it is whole, whatever the
                // writer does next.
                if frame.is_trailers() || this.inner.is_end_stream() {
                    this.complete = true;
                }
            }
            Poll::Ready(None) => this.complete = true,
            Poll::Ready(Some(Err(e))) => {
                tracing::warn!(
                    "response body from app {} failed: {e}",
                    this.entry
                        .as_ref()
                        .and_then(|e| e.served.as_ref())
                        .map_or("-", |s| &s.app)
                );
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for LoggedBody {
    fn drop(&mut self) {
        if let Some(entry) = self.entry.take() {
            let complete = self.complete || self.inner.is_end_stream();
            entry.write(self.bytes, complete);
        }
    }
}

/// Escapes a value for a quoted log field: `"` and `\` and anything not printable ASCII.
fn escape(raw: &[u8]) -> String {
    let mut out = String::with_capacity(raw.len());
    escape_into(&mut out, raw);
    out
}

fn escape_into(out: &mut String, raw: &[u8]) {
    for &b in raw {
        match b {
            b'"' | b'\\' => {
                out.push('\\');
                out.push(b as char);
            }
            0x20..=0x7e => out.push(b as char),
            _ => {
                let _ = write!(out, "\\x{b:02X}");
            }
        }
    }
}

#[cfg(test)]
mod tests;
