//! One access-log line per request, written when its response body has been relayed (or
//! abandoned): Apache/nginx "combined" format plus the app name and the request time.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::header::{REFERER, USER_AGENT};
use hyper::{Request, Response, StatusCode};

use crate::upstream::{BoxError, ProxyBody};

/// What is known of a request when it arrives.
pub struct AccessLog {
    started: Instant,
    time: SystemTime,
    peer: SocketAddr,
    request_line: String,
    referer: String,
    user_agent: String,
}

impl AccessLog {
    pub fn begin<B>(req: &Request<B>, peer: SocketAddr) -> Self {
        let header = |name| {
            req.headers()
                .get(name)
                .map(|v| escape(v.as_bytes()))
                .unwrap_or_else(|| "-".to_string())
        };
        AccessLog {
            started: Instant::now(),
            time: SystemTime::now(),
            peer,
            request_line: escape(
                format!("{} {} {:?}", req.method(), req.uri(), req.version()).as_bytes(),
            ),
            referer: header(REFERER),
            user_agent: header(USER_AGENT),
        }
    }

    /// A request the gate refused: its head was never parsed into a request.
    pub fn refused(peer: SocketAddr) -> Self {
        AccessLog {
            started: Instant::now(),
            time: SystemTime::now(),
            peer,
            request_line: "-".to_string(),
            referer: "-".to_string(),
            user_agent: "-".to_string(),
        }
    }

    /// Wraps the response body; the line is logged when the body is done or dropped.
    pub fn finish(self, resp: Response<ProxyBody>, app: Option<Arc<str>>) -> Response<LoggedBody> {
        let status = resp.status();
        resp.map(|inner| LoggedBody {
            inner,
            bytes: 0,
            complete: false,
            entry: Some(Entry {
                log: self,
                status,
                app,
            }),
        })
    }
}

struct Entry {
    log: AccessLog,
    status: StatusCode,
    app: Option<Arc<str>>,
}

impl Entry {
    fn write(self, bytes: u64, complete: bool) {
        let l = &self.log;
        let size = if bytes == 0 {
            "-".to_string()
        } else {
            bytes.to_string()
        };
        let mut line = format!(
            "{} - - [{}] \"{}\" {} {} \"{}\" \"{}\" app={} rt={:.3}",
            l.peer.ip(),
            clf_time(l.time),
            l.request_line,
            self.status.as_u16(),
            size,
            l.referer,
            l.user_agent,
            self.app.as_deref().unwrap_or("-"),
            l.started.elapsed().as_secs_f64(),
        );
        if !complete {
            line.push_str(" aborted");
        }
        tracing::info!(target: "wsgimux::access", "{line}");
    }
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
                if this.inner.is_end_stream() {
                    this.complete = true;
                }
            }
            Poll::Ready(None) => this.complete = true,
            Poll::Ready(Some(Err(e))) => {
                tracing::warn!(
                    "response body from app {} failed: {e}",
                    this.entry
                        .as_ref()
                        .and_then(|e| e.app.as_deref())
                        .unwrap_or("-")
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
    out
}

/// `10/Oct/2000:13:55:36 +0000` (always UTC).
fn clf_time(t: SystemTime) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{day:02}/{}/{year}:{:02}:{:02}:{:02} +0000",
        MONTHS[(month - 1) as usize],
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn clf_dates() {
        assert_eq!(clf_time(UNIX_EPOCH), "01/Jan/1970:00:00:00 +0000");
        let t = UNIX_EPOCH + Duration::from_secs(971_185_336);
        assert_eq!(clf_time(t), "10/Oct/2000:13:42:16 +0000");
        let leap = UNIX_EPOCH + Duration::from_secs(1_709_210_096);
        assert_eq!(clf_time(leap), "29/Feb/2024:12:34:56 +0000");
    }

    #[test]
    fn escapes() {
        assert_eq!(escape(b"a\"b\\c\x01\xff"), "a\\\"b\\\\c\\x01\\xFF");
    }
}
