//! The gate between a client's HTTP/1.1 byte stream and hyper: hyper only ever sees request
//! heads and bodies that `http1` has accepted, so hyper, wsgimux and the child all read the same
//! request boundaries.
//!
//! The gate reads from the client into its own buffer, validates heads and chunked bodies there,
//! and hands hyper only validated bytes. Every head it hands on gets a [`Verdict`] in the
//! connection's queue, which the service pops in the same order hyper calls it. A rejected head
//! is replaced by a placeholder head (its verdict makes the service answer the rejection and
//! close), after which hyper sees the end of the stream. A body that turns out to be invalid
//! after part of it was handed on ends the connection with an error. Whatever of a request is
//! already buffered is validated before any of it is handed on, so a request that arrives whole
//! reaches no app unless all of it is valid.
//!
//! Also owns the client-side timeouts: the idle keep-alive wait, the head read and the body
//! read. Writes pass straight through.

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use crate::http1::{self, Chunked, Framing, HeadLimits, Parsed, Rejection};

/// What the service is to do with the next request hyper hands it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Forward {
        /// `OPTIONS *`: answered by wsgimux.
        asterisk: bool,
    },
    Reject(Rejection),
}

/// The gate's rules for an HTTP/2 request (h2 itself already refuses malformed framing and
/// connection-specific headers): no CONNECT, and a Host header that agrees with the authority.
pub fn admit_h2<B>(req: &hyper::Request<B>) -> Verdict {
    if req.method() == hyper::Method::CONNECT {
        return Verdict::Reject(Rejection::Malformed("CONNECT is not supported"));
    }
    let hosts = req.headers().get_all(hyper::header::HOST).iter().count();
    if hosts > 1 {
        return Verdict::Reject(Rejection::Malformed("more than one Host"));
    }
    if let (Some(a), Some(h)) = (
        req.uri().authority(),
        req.headers().get(hyper::header::HOST),
    ) {
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

/// Client-side waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// From the first byte of a head to its end.
    pub header: Duration,
    /// Between two reads of a request body.
    pub body: Duration,
    /// Between the end of a response and the first byte of the next request.
    pub keepalive: Duration,
}

/// Shared by a connection's gate and its service.
#[derive(Debug)]
pub struct ConnState {
    verdicts: Mutex<VecDeque<Verdict>>,
    /// Requests whose responses are not finished, and when the last one finished.
    busy: Mutex<(usize, Instant)>,
}

impl ConnState {
    pub fn new() -> Arc<Self> {
        Arc::new(ConnState {
            verdicts: Mutex::new(VecDeque::new()),
            busy: Mutex::new((0, Instant::now())),
        })
    }

    /// The verdict for the request hyper is handing over now. Hyper calls the service once per
    /// head it parsed, in order, and every head it parsed came with a verdict.
    pub fn next_verdict(&self) -> Option<Verdict> {
        lock(&self.verdicts).pop_front()
    }

    /// Marks a request busy until the returned guard is dropped (when its response ends), so
    /// the idle timeout never runs during a response.
    pub fn busy(self: &Arc<Self>) -> BusyGuard {
        lock(&self.busy).0 += 1;
        BusyGuard(self.clone())
    }

    fn push(&self, v: Verdict) {
        lock(&self.verdicts).push_back(v);
    }

    /// Replaces the verdict of the last head (not yet handed on) with a rejection.
    fn replace_last(&self, v: Verdict) {
        let mut q = lock(&self.verdicts);
        q.pop_back();
        q.push_back(v);
    }

    /// How long the connection has been idle, or `None` while a response is under way.
    pub fn idle_for(&self) -> Option<Duration> {
        self.idle_since().map(|since| since.elapsed())
    }

    /// When the connection became idle, or `None` while a response is under way.
    fn idle_since(&self) -> Option<Instant> {
        let b = lock(&self.busy);
        (b.0 == 0).then_some(b.1)
    }
}

pub struct BusyGuard(Arc<ConnState>);

impl Drop for BusyGuard {
    fn drop(&mut self) {
        let mut b = lock(&self.0.busy);
        b.0 = b.0.saturating_sub(1);
        b.1 = Instant::now();
    }
}

/// A response body that keeps its request marked busy until it ends.
pub struct BusyBody<B> {
    inner: B,
    _busy: BusyGuard,
}

impl<B> BusyBody<B> {
    pub fn new(inner: B, busy: BusyGuard) -> Self {
        BusyBody { inner, _busy: busy }
    }
}

impl<B: http_body::Body + Unpin> http_body::Body for BusyBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The data is plain counters and a queue; a panic elsewhere leaves them usable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Handed to hyper in place of a rejected head; its verdict decides the answer.
const PLACEHOLDER_HEAD: &[u8] = b"GET / HTTP/1.1\r\nhost: rejected.invalid\r\n\r\n";
/// Bytes read from the client at a time.
const READ_CHUNK: usize = 16 * 1024;
/// Bytes read at a time into the stack while the buffer is empty (most requests fit).
const IDLE_READ: usize = 8 * 1024;

enum State {
    Head,
    Length(u64),
    Chunked(Chunked),
    /// A rejection was queued: after the buffered bytes, the end of the stream.
    Closed,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Wait {
    Idle,
    Head,
    Body,
}

pub struct Gate<S> {
    inner: S,
    buf: BytesMut,
    /// Bytes at the front of `buf` that are validated and may be handed to hyper.
    ready: usize,
    /// Where in `buf` the head of the request being validated starts, while none of it has
    /// been handed on (a body error can still turn into a clean rejection).
    head_at: Option<usize>,
    state: State,
    conn: Arc<ConnState>,
    limits: HeadLimits,
    timeouts: Timeouts,
    head_started: Option<Instant>,
    timer: Option<(Wait, Pin<Box<Sleep>>)>,
    eof: bool,
}

impl<S> Gate<S> {
    pub fn new(inner: S, conn: Arc<ConnState>, limits: HeadLimits, timeouts: Timeouts) -> Self {
        Gate {
            inner,
            buf: BytesMut::new(),
            ready: 0,
            head_at: None,
            state: State::Head,
            conn,
            limits,
            timeouts,
            head_started: None,
            timer: None,
            eof: false,
        }
    }

    /// Validates as much of the buffered, not yet validated bytes as possible.
    fn advance(&mut self) -> io::Result<()> {
        loop {
            let pending = &self.buf[self.ready..];
            match &mut self.state {
                State::Closed => return Ok(()),
                State::Head => {
                    if pending.is_empty() {
                        return Ok(());
                    }
                    match http1::parse_head(pending, &self.limits) {
                        Parsed::Incomplete => return Ok(()),
                        Parsed::Rejected(r) => {
                            self.conn.push(Verdict::Reject(r));
                            self.close_with_placeholder(self.ready);
                            return Ok(());
                        }
                        Parsed::Head(h) => {
                            if h.skip > 0 {
                                // Drop the tolerated empty line before the request line.
                                let mut tail = self.buf.split_off(self.ready);
                                tail.advance(h.skip);
                                self.buf.unsplit(tail);
                            }
                            self.conn.push(Verdict::Forward {
                                asterisk: h.asterisk,
                            });
                            self.head_at = Some(self.ready);
                            self.ready += h.len;
                            self.head_started = None;
                            self.state = match h.framing {
                                Framing::None => State::Head,
                                Framing::Length(n) => State::Length(n),
                                Framing::Chunked => {
                                    State::Chunked(Chunked::new(self.limits.max_header_size))
                                }
                            };
                        }
                    }
                }
                State::Length(left) => {
                    let n = (*left).min(pending.len() as u64);
                    self.ready += n as usize;
                    *left -= n;
                    if *left > 0 {
                        return Ok(());
                    }
                    self.state = State::Head;
                }
                State::Chunked(c) => match c.feed(pending) {
                    Ok(n) => {
                        self.ready += n;
                        if !c.is_done() {
                            return Ok(());
                        }
                        self.state = State::Head;
                    }
                    Err(r) => {
                        if let Some(at) = self.head_at {
                            // None of this request reached hyper: refuse it whole.
                            self.conn.replace_last(Verdict::Reject(r));
                            self.close_with_placeholder(at);
                            return Ok(());
                        }
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!("invalid chunked request body: {r:?}"),
                        ));
                    }
                },
            }
        }
    }

    /// Drops everything from `at` on and puts the placeholder head there.
    fn close_with_placeholder(&mut self, at: usize) {
        self.buf.truncate(at);
        self.buf.extend_from_slice(PLACEHOLDER_HEAD);
        self.ready = self.buf.len();
        self.head_at = None;
        self.state = State::Closed;
    }

    fn release(&mut self, out: &mut ReadBuf<'_>) {
        let n = self.ready.min(out.remaining());
        out.put_slice(&self.buf[..n]);
        self.buf.advance(n);
        self.ready -= n;
        self.head_at = match self.head_at {
            Some(at) if at >= n => Some(at - n),
            _ => None,
        };
        if self.buf.is_empty() {
            // Idle connections hold no buffer.
            self.buf = BytesMut::new();
        }
    }

    /// What the gate is waiting for, and until when.
    fn deadline(&self) -> (Wait, Instant) {
        let now = Instant::now();
        match self.state {
            State::Length(_) | State::Chunked(_) => (Wait::Body, now + self.timeouts.body),
            _ if !self.buf.is_empty() => {
                let start = self.head_started.unwrap_or(now);
                (Wait::Head, start + self.timeouts.header)
            }
            _ => match self.conn.idle_since() {
                Some(since) => (Wait::Idle, since + self.timeouts.keepalive),
                // A response is under way; look again a keep-alive period later.
                None => (Wait::Idle, now + self.timeouts.keepalive),
            },
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Gate<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if this.ready > 0 {
                this.release(out);
                return Poll::Ready(Ok(()));
            }
            this.advance()?;
            if this.ready > 0 {
                continue;
            }
            if matches!(this.state, State::Closed) || this.eof {
                return Poll::Ready(Ok(()));
            }
            // A fixed-length body with nothing buffered goes straight into hyper's buffer.
            if let State::Length(left) = this.state {
                if this.buf.is_empty() {
                    let room = out
                        .remaining()
                        .min(usize::try_from(left).unwrap_or(usize::MAX));
                    let mut limited = ReadBuf::new(out.initialize_unfilled_to(room));
                    match Pin::new(&mut this.inner).poll_read(cx, &mut limited) {
                        Poll::Ready(Ok(())) => {
                            let n = limited.filled().len();
                            if n == 0 {
                                this.eof = true;
                                return Poll::Ready(Ok(()));
                            }
                            out.advance(n);
                            this.state = if n as u64 == left {
                                State::Head
                            } else {
                                State::Length(left - n as u64)
                            };
                            this.timer = None;
                            return Poll::Ready(Ok(()));
                        }
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                        Poll::Pending => return this.poll_timer(cx),
                    }
                }
            }
            // Waiting for a new request holds no buffer: read into the stack, keep what came.
            let n = if this.buf.is_empty() {
                let mut stack = [std::mem::MaybeUninit::<u8>::uninit(); IDLE_READ];
                let mut rb = ReadBuf::uninit(&mut stack);
                match Pin::new(&mut this.inner).poll_read(cx, &mut rb) {
                    Poll::Ready(Ok(())) => {
                        this.buf.extend_from_slice(rb.filled());
                        rb.filled().len()
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => return this.poll_timer(cx),
                }
            } else {
                this.buf.reserve(READ_CHUNK);
                let spare = this.buf.spare_capacity_mut();
                let mut rb = ReadBuf::uninit(spare);
                let n = match Pin::new(&mut this.inner).poll_read(cx, &mut rb) {
                    Poll::Ready(Ok(())) => rb.filled().len(),
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => return this.poll_timer(cx),
                };
                // SAFETY: `poll_read` initialized and filled `n` bytes of the spare capacity.
                unsafe { this.buf.set_len(this.buf.len() + n) };
                n
            };
            if n == 0 {
                this.eof = true;
                continue;
            }
            if matches!(this.state, State::Head) && this.head_started.is_none() {
                this.head_started = Some(Instant::now());
            }
            this.timer = None;
        }
    }
}

impl<S> Gate<S> {
    /// Nothing to read yet: wait, but not past the current deadline.
    fn poll_timer(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            let (kind, at) = self.deadline();
            match &mut self.timer {
                Some((k, sleep)) if *k == kind => {
                    if kind == Wait::Idle
                        && sleep.deadline() != at
                        && self.conn.idle_since().is_some()
                    {
                        sleep.as_mut().reset(at);
                    }
                }
                _ => self.timer = Some((kind, Box::pin(tokio::time::sleep_until(at)))),
            }
            let Some((kind, sleep)) = &mut self.timer else {
                unreachable!("set above")
            };
            ready!(sleep.as_mut().poll(cx));
            let kind = *kind;
            self.timer = None;
            match kind {
                // A response was under way when the timer was set: check again.
                Wait::Idle if self.conn.idle_since().is_none() => continue,
                Wait::Idle if self.deadline().1 > Instant::now() => continue,
                // Idle or a head that never finished: close quietly, as nginx does.
                Wait::Idle | Wait::Head => {
                    self.eof = true;
                    self.buf.clear();
                    return Poll::Ready(Ok(()));
                }
                Wait::Body => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "client sent no request body data in time",
                    )))
                }
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Gate<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::Request;

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
