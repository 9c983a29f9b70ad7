//! How a response's body leaves for hyper: whole, or streamed from the app's thread through a
//! bounded channel; and a cut (the app raised, or sent less than its Content-Length) that waits
//! until the connection has flushed what came before it.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::sync::mpsc;

/// A response cut short after its head went out: hyper aborts the connection, so the client
/// cannot mistake the partial body for a whole one.
#[derive(Debug)]
pub struct Aborted;

impl std::fmt::Display for Aborted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the application failed while streaming its response")
    }
}

impl std::error::Error for Aborted {}

/// One piece of a streamed body, or the cut that ends it.
pub type Chunk = Result<Bytes, Aborted>;

/// A response body: whole, or streamed from the app's thread. A streamed body that is cut
/// short (the app raised, or sent less than its Content-Length) ends in an error, which makes
/// hyper close the connection — the only honest signal. hyper drops what it has buffered but
/// not yet written when it does, so the error waits until the connection has flushed once
/// after the body's last bytes (`flushes`, counted by [`FlushCounted`]): what the app produced
/// always reaches the front.
pub struct ResponseBody {
    kind: Kind,
    pub(crate) flushes: Option<Arc<AtomicU64>>,
    /// The flush count when the cut was seen; the body fails once a flush came after it.
    cut_at: Option<u64>,
}

enum Kind {
    Full(Option<Bytes>),
    Stream(mpsc::Receiver<Chunk>),
}

impl ResponseBody {
    pub(crate) fn full(b: Option<Bytes>) -> Self {
        ResponseBody {
            kind: Kind::Full(b),
            flushes: None,
            cut_at: None,
        }
    }

    pub(crate) fn stream(rx: mpsc::Receiver<Chunk>) -> Self {
        ResponseBody {
            kind: Kind::Stream(rx),
            flushes: None,
            cut_at: None,
        }
    }

    fn flushed(&self) -> u64 {
        self.flushes
            .as_ref()
            .map_or(u64::MAX, |f| f.load(Ordering::Acquire))
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = Aborted;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Aborted>>> {
        let this = self.get_mut();
        if let Some(mark) = this.cut_at {
            // hyper flushes after this Pending and polls again once the flush is done.
            return if this.flushed() > mark {
                Poll::Ready(Some(Err(Aborted)))
            } else {
                Poll::Pending
            };
        }
        match &mut this.kind {
            Kind::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Kind::Stream(rx) => match rx.poll_recv(cx) {
                Poll::Ready(Some(Err(Aborted))) if this.flushes.is_some() => {
                    this.cut_at = Some(this.flushed());
                    cx.waker().wake_by_ref();
                    Poll::Pending
                }
                other => other.map(|c| c.map(|c| c.map(Frame::data))),
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.kind, Kind::Full(None))
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            Kind::Full(None) => SizeHint::with_exact(0),
            Kind::Stream(_) => SizeHint::default(),
        }
    }
}

/// A connection's socket, counting the flushes hyper completes. hyper flushes the socket only
/// once its own write buffer is empty, so a count that moved means everything buffered before
/// has been written.
pub struct FlushCounted<S> {
    inner: S,
    flushes: Arc<AtomicU64>,
}

impl<S> FlushCounted<S> {
    pub fn new(inner: S) -> (Self, Arc<AtomicU64>) {
        let flushes = Arc::new(AtomicU64::new(0));
        (
            FlushCounted {
                inner,
                flushes: flushes.clone(),
            },
            flushes,
        )
    }
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for FlushCounted<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for FlushCounted<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
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

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let done = Pin::new(&mut this.inner).poll_flush(cx);
        if done.is_ready() {
            this.flushes.fetch_add(1, Ordering::Release);
        }
        done
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
