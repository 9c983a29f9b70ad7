//! One pooled HTTP/1.1 connection to a child, with a switch that cuts it: a child answering a
//! request with informational (1xx) responses and no final one is stopped after
//! [`MAX_INFORMATIONAL`], so its flood costs the front thread a few heads' parsing, not its
//! `request_timeout` at full speed. hyper reads 1xx heads in its own loop; the only way to end
//! that loop early is for the connection's reads to fail, which the switch makes them do.
//!
//! The same switch makes a connection whose request body broke off close with a reset: hyper
//! just drops the connection, and a TCP close would look to the app like a clean end, so an
//! app server that does not count the bytes it reads (gunicorn) would take a short body.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use hyper::client::conn::http1::SendRequest;
use hyper::{Request, Response};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::informational::Scan;
use super::{BoxError, ProxyBody};

/// Informational responses one request may get before its final one (103 Early Hints
/// included; none is forwarded).
pub const MAX_INFORMATIONAL: u32 = 16;

pub(super) type TrySendError = hyper::client::conn::TrySendError<Request<ProxyBody>>;

/// What a connection's request side tells its socket.
#[derive(Debug, Default)]
pub(super) struct Switch {
    /// Reads fail from now on (a flood of informational responses).
    cut: AtomicBool,
    /// A request body broke off: the socket closes with a reset.
    reset: AtomicBool,
    /// A request went out: its response's informational heads are counted from here.
    sent: AtomicBool,
}

/// A connection's sender, the switch on its socket, and the response head limit it was made
/// with.
pub(super) struct Conn {
    pub(super) sender: SendRequest<ProxyBody>,
    switch: Arc<Switch>,
    pub(super) head_limit: usize,
}

impl Conn {
    pub(super) fn new(
        sender: SendRequest<ProxyBody>,
        switch: Arc<Switch>,
        head_limit: usize,
    ) -> Self {
        Conn {
            sender,
            switch,
            head_limit,
        }
    }

    pub(super) fn is_closed(&self) -> bool {
        self.sender.is_closed()
    }

    pub(super) async fn ready(&mut self) -> hyper::Result<()> {
        self.sender.ready().await
    }

    /// Sends `req`, counting its 1xx responses: past [`MAX_INFORMATIONAL`], the connection is
    /// cut ([`Conn::was_cut`]). A body that fails on its way resets the connection.
    pub(super) fn try_send_request(
        &mut self,
        mut req: Request<ProxyBody>,
    ) -> impl std::future::Future<Output = Result<Response<hyper::body::Incoming>, TrySendError>>
    {
        self.switch.sent.store(true, Ordering::Relaxed);
        let switch = self.switch.clone();
        let seen = AtomicU32::new(0);
        hyper::ext::on_informational(&mut req, move |_| {
            if seen.fetch_add(1, Ordering::Relaxed) + 1 > MAX_INFORMATIONAL {
                switch.cut.store(true, Ordering::Relaxed);
            }
        });
        // A bodiless request (most) needs no watch on its body.
        if !req.body().is_end_stream() {
            let switch = self.switch.clone();
            req = req.map(|body| http_body_util::BodyExt::boxed(ResetOnError { body, switch }));
        }
        self.sender.try_send_request(req)
    }

    /// Whether a flood of informational responses made it cut itself.
    pub(super) fn was_cut(&self) -> bool {
        self.switch.cut.load(Ordering::Relaxed)
    }
}

/// A request body whose failure (the client's stream broke, a limit) marks its connection to
/// be reset rather than closed.
struct ResetOnError {
    body: ProxyBody,
    switch: Arc<Switch>,
}

impl Body for ResetOnError {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        if let Poll::Ready(Some(Err(_))) = &polled {
            self.switch.reset.store(true, Ordering::Relaxed);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A stream that can be closed with a reset (TCP's RST) instead of an orderly end.
pub(super) trait Resettable {
    /// Makes the coming close a reset, where the transport has one.
    fn reset_on_close(&self);
}

/// The child's stream, whose reads fail once its connection is cut, and which closes with a
/// reset once a request body on it broke off.
pub(super) struct Cuttable<S: Resettable> {
    inner: S,
    switch: Arc<Switch>,
    informational: Scan,
}

impl<S: Resettable> Cuttable<S> {
    pub(super) fn new(inner: S) -> (Self, Arc<Switch>) {
        let switch = Arc::new(Switch::default());
        (
            Cuttable {
                inner,
                switch: switch.clone(),
                informational: Scan::new(MAX_INFORMATIONAL),
            },
            switch,
        )
    }
}

impl<S: Resettable> Drop for Cuttable<S> {
    fn drop(&mut self) {
        if self.switch.reset.load(Ordering::Relaxed) {
            self.inner.reset_on_close();
        }
    }
}

impl<S: AsyncRead + Unpin + Resettable> AsyncRead for Cuttable<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if this.switch.cut.load(Ordering::Relaxed) {
            return Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionAborted,
                "too many informational responses",
            )));
        }
        if this.switch.sent.swap(false, Ordering::Relaxed) {
            this.informational.expect_response();
        }
        let before = buf.filled().len();
        let read = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Some(kept) = this.informational.scan(&buf.filled()[before..]) {
            // The rest is more of the flood; hyper's count of this head cuts the connection.
            buf.set_filled(before + kept);
        }
        read
    }
}

impl<S: AsyncWrite + Unpin + Resettable> AsyncWrite for Cuttable<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// hyper's field count when none is set: parsed in arrays on the stack.
const STACK_FIELDS: usize = 100;
/// hyper's read buffer limit when none is set (about 400 KB).
const DEFAULT_BUF: usize = 8192 + 4096 * 100;

/// The field size the count of fields allowed in a head is reckoned by: a head of that many
/// fields of this size is at the size limit. hyper parses a head into arrays of this count,
/// made for every parse attempt (each read of a partial head), so the count is kept to what a
/// real head could carry rather than every 4-byte `a:` line that would fit.
const RECKONED_FIELD: usize = 32;

/// hyper's builder for a connection whose response heads may take `head_limit` bytes: the
/// limit is by size, with room for `head_limit / 32` fields (1,024 at the default 32 KiB).
pub(super) fn builder(head_limit: usize) -> hyper::client::conn::http1::Builder {
    let mut builder = hyper::client::conn::http1::Builder::new();
    builder.max_header_size(head_limit);
    let fields = head_limit / RECKONED_FIELD;
    if fields > STACK_FIELDS {
        builder.max_headers(fields);
    }
    if head_limit > DEFAULT_BUF / 2 {
        builder.max_buf_size(head_limit.saturating_mul(2));
    }
    builder
}
