//! What a connection's gate and its service share: the queue of verdicts (one per head the
//! gate handed on, popped in hyper's order), whether a response is under way (the idle
//! timeout runs only when none is), and how many times the socket was flushed (a response
//! cut short is cut only after what came before it has been written).

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::Verdict;

/// A client connection handed to a tunnel once its 101 has been written.
pub trait ClientStream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> ClientStream for T {}

/// The client's end of an upgraded connection, sent by the server when hyper is done with it.
pub type ClientEnd = Box<dyn ClientStream>;

/// Shared by a connection's gate and its service.
pub struct ConnState {
    verdicts: Mutex<VecDeque<Verdict>>,
    /// Requests whose responses are not finished, when the last one finished and the flush
    /// count then (none before the first response).
    busy: Mutex<(usize, Instant, Option<u64>)>,
    /// Flushes of the socket that hyper completed; counted where a gate wraps the socket.
    flushes: AtomicU64,
    counts_flushes: AtomicBool,
    /// The connection was upgraded (a 101 went out): from now on its bytes are a tunnel's.
    tunnel: AtomicBool,
    /// Where the connection goes if its request is upgraded.
    upgrade: Mutex<Option<oneshot::Sender<ClientEnd>>>,
}

impl ConnState {
    pub fn new() -> Arc<Self> {
        Arc::new(ConnState {
            verdicts: Mutex::new(VecDeque::new()),
            busy: Mutex::new((0, Instant::now(), None)),
            flushes: AtomicU64::new(0),
            counts_flushes: AtomicBool::new(false),
            tunnel: AtomicBool::new(false),
            upgrade: Mutex::new(None),
        })
    }

    /// For a request asking for an upgrade: the client's connection arrives here if the
    /// response switches protocols ([`ConnState::become_tunnel`]).
    pub fn on_upgrade(&self) -> oneshot::Receiver<ClientEnd> {
        let (tx, rx) = oneshot::channel();
        *lock(&self.upgrade) = Some(tx);
        rx
    }

    /// hyper is done with an upgraded connection: hands it to the tunnel waiting for it
    /// (gone if the tunnel gave up, and then the connection closes).
    pub fn hand_over(&self, end: ClientEnd) {
        if let Some(tx) = lock(&self.upgrade).take() {
            let _ = tx.send(end);
        }
    }

    /// The response to the last request switched protocols: the gate passes what follows
    /// through unread (it is no longer HTTP).
    pub fn become_tunnel(&self) {
        self.tunnel.store(true, Ordering::Release);
    }

    pub fn is_tunnel(&self) -> bool {
        self.tunnel.load(Ordering::Acquire)
    }

    /// hyper flushes the socket only once its own write buffer is empty: a count that moved
    /// means everything it buffered before has been written.
    pub(super) fn flushed(&self) {
        self.flushes.fetch_add(1, Ordering::Release);
    }

    pub(super) fn count_flushes(&self) {
        self.counts_flushes.store(true, Ordering::Relaxed);
    }

    /// The flush count, or None where nobody counts (HTTP/2 has no gate).
    fn flush_count(&self) -> Option<u64> {
        self.counts_flushes
            .load(Ordering::Relaxed)
            .then(|| self.flushes.load(Ordering::Acquire))
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

    pub(super) fn push(&self, v: Verdict) {
        lock(&self.verdicts).push_back(v);
    }

    /// Replaces the verdict of the last head (not yet handed on) with a rejection.
    pub(super) fn replace_last(&self, v: Verdict) {
        let mut q = lock(&self.verdicts);
        q.pop_back();
        q.push_back(v);
    }

    /// How long the connection has been idle, or `None` while a response is under way.
    pub fn idle_for(&self) -> Option<Duration> {
        self.idle_since().map(|since| since.elapsed())
    }

    /// Whether the socket was flushed since the last response ended: everything of it written.
    pub(super) fn flushed_since_idle(&self) -> bool {
        let mark = lock(&self.busy).2;
        mark.is_none_or(|m| self.flushes.load(Ordering::Acquire) > m)
    }

    /// When the connection became idle, or `None` while a response is under way.
    pub(super) fn idle_since(&self) -> Option<Instant> {
        let b = lock(&self.busy);
        (b.0 == 0).then_some(b.1)
    }
}

impl std::fmt::Debug for ConnState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnState")
            .field("idle_since", &self.idle_since())
            .field("tunnel", &self.is_tunnel())
            .finish_non_exhaustive()
    }
}

pub struct BusyGuard(Arc<ConnState>);

impl Drop for BusyGuard {
    fn drop(&mut self) {
        let mut b = lock(&self.0.busy);
        b.0 = b.0.saturating_sub(1);
        b.1 = Instant::now();
        b.2 = Some(self.0.flushes.load(Ordering::Acquire));
    }
}

/// A response body that keeps its request marked busy until it ends. A body that fails (the
/// app's response was cut short) fails towards hyper only after the socket was flushed once
/// more: hyper closes the connection on the error and drops what it had buffered, so without
/// the wait a client could lose the head and the bytes the app did send.
pub struct BusyBody<B: http_body::Body> {
    inner: B,
    busy: BusyGuard,
    /// The error, and the flush count when it came.
    failed: Option<(B::Error, u64)>,
}

impl<B: http_body::Body> BusyBody<B> {
    pub fn new(inner: B, busy: BusyGuard) -> Self {
        BusyBody {
            inner,
            busy,
            failed: None,
        }
    }
}

impl<B: http_body::Body + Unpin> http_body::Body for BusyBody<B>
where
    B::Error: Unpin,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<B::Data>, B::Error>>> {
        let this = &mut *self;
        if let Some((_, mark)) = &this.failed {
            // hyper flushes after this Pending and polls again once the flush is done.
            if this.busy.0.flush_count().is_some_and(|n| n <= *mark) {
                return Poll::Pending;
            }
            return Poll::Ready(this.failed.take().map(|(e, _)| Err(e)));
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Err(e))) => match this.busy.0.flush_count() {
                Some(mark) => {
                    this.failed = Some((e, mark));
                    cx.waker().wake_by_ref();
                    Poll::Pending
                }
                None => Poll::Ready(Some(Err(e))),
            },
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.failed.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The data is plain counters and a queue; a panic elsewhere leaves them usable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}
