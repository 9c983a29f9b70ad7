//! One pooled HTTP/1.1 connection to a child, with a switch that cuts it: a child answering a
//! request with informational (1xx) responses and no final one is stopped after
//! [`MAX_INFORMATIONAL`], so its flood costs the front thread a few heads' parsing, not its
//! `request_timeout` at full speed. hyper reads 1xx heads in its own loop; the only way to end
//! that loop early is for the connection's reads to fail, which the switch makes them do.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper::client::conn::http1::SendRequest;
use hyper::{Request, Response};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::ProxyBody;

/// Informational responses one request may get before its final one (103 Early Hints
/// included; none is forwarded).
pub const MAX_INFORMATIONAL: u32 = 16;

type TrySendError = hyper::client::conn::TrySendError<Request<ProxyBody>>;

/// A connection's sender and the switch that cuts its socket.
pub(super) struct Conn {
    pub(super) sender: SendRequest<ProxyBody>,
    cut: Arc<AtomicBool>,
}

impl Conn {
    pub(super) fn new(sender: SendRequest<ProxyBody>, cut: Arc<AtomicBool>) -> Self {
        Conn { sender, cut }
    }

    pub(super) fn is_closed(&self) -> bool {
        self.sender.is_closed()
    }

    pub(super) async fn ready(&mut self) -> hyper::Result<()> {
        self.sender.ready().await
    }

    /// Sends `req`, counting its 1xx responses: past [`MAX_INFORMATIONAL`], the connection is
    /// cut ([`Conn::was_cut`]).
    pub(super) fn try_send_request(
        &mut self,
        mut req: Request<ProxyBody>,
    ) -> impl std::future::Future<Output = Result<Response<hyper::body::Incoming>, TrySendError>>
    {
        let cut = self.cut.clone();
        let seen = AtomicU32::new(0);
        hyper::ext::on_informational(&mut req, move |_| {
            if seen.fetch_add(1, Ordering::Relaxed) + 1 > MAX_INFORMATIONAL {
                cut.store(true, Ordering::Relaxed);
            }
        });
        self.sender.try_send_request(req)
    }

    /// Whether a flood of informational responses made it cut itself.
    pub(super) fn was_cut(&self) -> bool {
        self.cut.load(Ordering::Relaxed)
    }
}

/// The child's stream, whose reads fail once its connection is cut.
pub(super) struct Cuttable<S> {
    inner: S,
    cut: Arc<AtomicBool>,
}

impl<S> Cuttable<S> {
    pub(super) fn new(inner: S) -> (Self, Arc<AtomicBool>) {
        let cut = Arc::new(AtomicBool::new(false));
        (
            Cuttable {
                inner,
                cut: cut.clone(),
            },
            cut,
        )
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Cuttable<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if this.cut.load(Ordering::Relaxed) {
            return Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionAborted,
                "too many informational responses",
            )));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Cuttable<S> {
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
