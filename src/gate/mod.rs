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
//!
//! A connection idle for [`PARK_AFTER`] is *parked*: the gate tells hyper the stream ended, so
//! the server can drop hyper's connection (its read and write buffers, ~16 KiB) and keep only
//! the socket and the gate until the client sends again ([`Gate::wait_for_request`]); then a
//! new hyper connection takes over. Parking never happens with a response unwritten.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use crate::http1::{self, Chunked, Framing, HeadLimits, Parsed, Rejection};

mod conn;

pub use conn::{BusyBody, BusyGuard, ClientEnd, ConnState};

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
    // RFC 9113 §8.3.1: this server is for http and https URIs only.
    if let Some(scheme) = req.uri().scheme_str() {
        if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
            return Verdict::Reject(Rejection::Malformed(":scheme is neither http nor https"));
        }
    }
    if req
        .uri()
        .authority()
        .is_some_and(|a| a.as_str().contains('@'))
    {
        return Verdict::Reject(Rejection::Malformed("userinfo in :authority"));
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

/// Handed to hyper in place of a rejected head; its verdict decides the answer.
const PLACEHOLDER_HEAD: &[u8] = b"GET / HTTP/1.1\r\nhost: rejected.invalid\r\n\r\n";
/// Bytes read from the client at a time.
const READ_CHUNK: usize = 16 * 1024;
/// Bytes read at a time into the stack while the buffer is empty (most requests fit).
const IDLE_READ: usize = 8 * 1024;
/// How long a connection waits for its next request inside hyper before it is parked. Long
/// enough that busy keep-alive clients never pay for a new hyper connection per request (a
/// new one costs ~2 µs); short enough that few hyper connections are alive at once when
/// thousands of clients each make a request and then idle (their freed buffers would
/// otherwise leave the heap fragmented).
pub const PARK_AFTER: Duration = Duration::from_millis(250);

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
    /// Idle, and long enough to hand the connection back from hyper.
    Park,
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
    /// Made at the first wait and kept for the connection's life: a new wait resets it (a
    /// later deadline costs tokio one compare-and-swap, no timer-wheel work, no allocation).
    timer: Option<(Wait, Pin<Box<Sleep>>)>,
    /// The timer's deadline is the current wait's; false after progress or once it fired.
    timer_set: bool,
    eof: bool,
    /// Idle and handed back: hyper is told the stream ended (see the module docs).
    parked: bool,
    /// A park that found a response not yet flushed tries again at this time.
    park_retry: Option<Instant>,
}

impl<S> Gate<S> {
    pub fn new(inner: S, conn: Arc<ConnState>, limits: HeadLimits, timeouts: Timeouts) -> Self {
        conn.count_flushes();
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
            timer_set: false,
            eof: false,
            parked: false,
            park_retry: None,
        }
    }

    /// Parks a connection that has not sent anything yet: it costs no hyper connection until
    /// its first bytes come ([`Gate::wait_for_request`]), as nginx allocates a connection's
    /// buffers only then.
    pub fn park_new(&mut self) {
        debug_assert!(self.buf.is_empty() && matches!(self.state, State::Head));
        self.parked = true;
    }

    /// Whether the stream ended for hyper only because the connection was idle: the socket is
    /// still open and [`Gate::wait_for_request`] waits for the client's next request.
    pub fn is_parked(&self) -> bool {
        self.parked
    }

    /// Puts back bytes hyper had read from the gate but not used when its connection ended
    /// (their verdicts are still queued): the next hyper connection reads them first.
    pub fn unread(&mut self, bytes: Bytes) {
        if bytes.is_empty() {
            return;
        }
        let mut buf = BytesMut::with_capacity(bytes.len() + self.buf.len());
        buf.extend_from_slice(&bytes);
        buf.extend_from_slice(&self.buf);
        self.buf = buf;
        self.ready += bytes.len();
        self.head_at = None;
        self.parked = false;
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
                Some(since) => {
                    let close = since + self.timeouts.keepalive;
                    let park = self.park_retry.unwrap_or(since + PARK_AFTER);
                    if self.parked || park >= close {
                        (Wait::Idle, close)
                    } else {
                        (Wait::Park, park)
                    }
                }
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
        if this.conn.is_tunnel() {
            return this.poll_tunnel(cx, out);
        }
        loop {
            if this.parked {
                return Poll::Ready(Ok(()));
            }
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
            if let State::Length(left) = this.state {
                if this.buf.is_empty() {
                    return this.read_body_direct(cx, out, left);
                }
            }
            let n = ready!(this.fill(cx))?;
            if n == 0 {
                this.eof |= !this.parked;
                continue;
            }
            this.started_reading();
        }
    }
}

impl<S> Gate<S> {
    fn started_reading(&mut self) {
        if matches!(self.state, State::Head) && self.head_started.is_none() {
            self.head_started = Some(Instant::now());
        }
        self.park_retry = None;
        self.timer_set = false;
    }
}

impl<S: AsyncRead + Unpin> Gate<S> {
    /// An upgraded connection: whatever is buffered, then the client's bytes as they come, with
    /// no parsing and no deadline of the gate's (the tunnel keeps its own).
    fn poll_tunnel(&mut self, cx: &mut Context<'_>, out: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if !self.buf.is_empty() {
            let n = self.buf.len().min(out.remaining());
            out.put_slice(&self.buf[..n]);
            self.buf.advance(n);
            self.ready = self.ready.saturating_sub(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, out)
    }

    /// A fixed-length body with nothing buffered goes straight into hyper's buffer (at most
    /// `left` bytes: nothing past the body is read without validation).
    fn read_body_direct(
        &mut self,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
        left: u64,
    ) -> Poll<io::Result<()>> {
        let room = out
            .remaining()
            .min(usize::try_from(left).unwrap_or(usize::MAX));
        let mut limited = ReadBuf::new(out.initialize_unfilled_to(room));
        match Pin::new(&mut self.inner).poll_read(cx, &mut limited) {
            Poll::Ready(Ok(())) => {
                let n = limited.filled().len();
                if n == 0 {
                    self.eof = true;
                    return Poll::Ready(Ok(()));
                }
                out.advance(n);
                self.state = if n as u64 == left {
                    State::Head
                } else {
                    State::Length(left - n as u64)
                };
                self.timer_set = false;
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => self.poll_timer(cx),
        }
    }

    /// A parked connection: waits for the client's next bytes (→ true: serve them with a new
    /// hyper connection), or its end or the keep-alive timeout (→ false: close).
    pub async fn wait_for_request(&mut self) -> io::Result<bool> {
        std::future::poll_fn(|cx| self.fill(cx)).await.map(|n| {
            if n > 0 {
                self.parked = false;
                self.started_reading();
            }
            n > 0
        })
    }

    /// Reads what the client sent into the gate's buffer (→ bytes read, 0 at its end); while
    /// waiting, the current deadline runs. Waiting for a new request holds no buffer: the read
    /// goes to the stack and only what came is kept.
    fn fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let read = if self.buf.is_empty() {
            let mut stack = [std::mem::MaybeUninit::<u8>::uninit(); IDLE_READ];
            let mut rb = ReadBuf::uninit(&mut stack);
            let polled = Pin::new(&mut self.inner).poll_read(cx, &mut rb);
            if let Poll::Ready(Ok(())) = polled {
                self.buf.extend_from_slice(rb.filled());
            }
            polled.map_ok(|()| rb.filled().len())
        } else {
            self.buf.reserve(READ_CHUNK);
            let spare = self.buf.spare_capacity_mut();
            let mut rb = ReadBuf::uninit(spare);
            let polled = Pin::new(&mut self.inner).poll_read(cx, &mut rb);
            let n = rb.filled().len();
            if let Poll::Ready(Ok(())) = polled {
                // SAFETY: `poll_read` initialized and filled `n` bytes of the spare capacity.
                unsafe { self.buf.set_len(self.buf.len() + n) };
            }
            polled.map_ok(|()| n)
        };
        match read {
            // A deadline that passes quietly (idle, or a head never finished) ends the stream.
            Poll::Pending => self.poll_timer(cx).map_ok(|()| 0),
            ready => ready,
        }
    }
}

impl<S> Gate<S> {
    /// Nothing to read yet: wait, but not past the current deadline.
    fn poll_timer(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            let (kind, at) = self.deadline();
            match &mut self.timer {
                Some((k, sleep)) => {
                    // A head's and a body's deadline stay as set until progress; an idle
                    // connection's follows the end of its last response.
                    let moved = matches!(kind, Wait::Idle | Wait::Park)
                        && sleep.deadline() != at
                        && self.conn.idle_since().is_some();
                    if !self.timer_set || *k != kind || moved {
                        *k = kind;
                        sleep.as_mut().reset(at);
                    }
                }
                None => self.timer = Some((kind, Box::pin(tokio::time::sleep_until(at)))),
            }
            self.timer_set = true;
            let Some((kind, sleep)) = &mut self.timer else {
                unreachable!("set above")
            };
            ready!(sleep.as_mut().poll(cx));
            let kind = *kind;
            self.timer_set = false;
            match kind {
                // A response was under way when the timer was set: check again.
                Wait::Idle if self.conn.idle_since().is_none() => continue,
                Wait::Idle if self.deadline().1 > Instant::now() => continue,
                Wait::Park if self.conn.idle_since().is_none() => continue,
                Wait::Park => {
                    if !self.conn.flushed_since_idle() {
                        // The last response is still being written: look again later.
                        self.park_retry = Some(Instant::now() + PARK_AFTER);
                        continue;
                    }
                    self.parked = true;
                    self.park_retry = None;
                    return Poll::Ready(Ok(()));
                }
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
        let done = Pin::new(&mut self.inner).poll_flush(cx);
        if done.is_ready() {
            self.conn.flushed();
        }
        done
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests;
