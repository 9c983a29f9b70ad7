//! The request body on its way to a child: its first 64 KiB read before an app is involved
//! (so a slow client holds a front connection, not an app thread), `max_body_size` enforced as
//! it streams, a read deadline where no gate keeps one (HTTP/2), and why it stopped short.
//! Nothing here holds a body whole.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::body::Incoming;

use crate::error::ProxyError;
use crate::http1::Rejection;
use crate::upstream::BoxError;

use super::route::AppRoute;

/// How much of a request body is read before the request goes to an app.
const PREBUFFER: usize = 64 * 1024;

/// Reads the body's first frames, up to [`PREBUFFER`] bytes or its end (each read bounded by
/// the gate's body timeout). Returns them, and whether the body ended.
pub(super) async fn prebuffer<B: ClientBody>(
    body: &mut LimitedBody<B>,
) -> (VecDeque<http_body::Frame<bytes::Bytes>>, bool) {
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

/// What a client's request body is to `LimitedBody`: hyper's `Incoming` when serving, any
/// body of bytes in the tests.
pub(super) trait ClientBody:
    http_body::Body<Data = bytes::Bytes, Error: Into<BoxError>> + Unpin
{
}

impl<B: http_body::Body<Data = bytes::Bytes, Error: Into<BoxError>> + Unpin> ClientBody for B {}

/// A body whose first frames were read already.
pub(super) struct PrefixedBody<B = Incoming> {
    pub(super) prefix: VecDeque<http_body::Frame<bytes::Bytes>>,
    pub(super) rest: Option<LimitedBody<B>>,
}

impl<B: ClientBody> http_body::Body for PrefixedBody<B> {
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
pub(super) struct BodyFault {
    /// More than the app's `max_body_size`.
    over: AtomicBool,
    /// The client's stream broke off or turned out invalid (the gate ends it with an error).
    failed: AtomicBool,
}

impl BodyFault {
    /// The answer a body that stopped short calls for; None while it has not.
    pub(super) fn error(&self, route: &AppRoute) -> Option<ProxyError> {
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
pub(super) struct LimitedBody<B = Incoming> {
    inner: B,
    left: Option<u64>,
    fault: Arc<BodyFault>,
    /// The limit, its timer, and whether the timer runs (only while waiting for the client).
    stall: Option<(Duration, Pin<Box<tokio::time::Sleep>>, bool)>,
}

impl<B> LimitedBody<B> {
    pub(super) fn new(
        inner: B,
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

impl<B: ClientBody> http_body::Body for LimitedBody<B> {
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
mod tests;
