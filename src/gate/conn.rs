//! What a connection's gate and its service share: the queue of verdicts (one per head the
//! gate handed on, popped in hyper's order) and whether a response is under way (the idle
//! timeout runs only when none is).

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Instant;

use super::Verdict;

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

    /// When the connection became idle, or `None` while a response is under way.
    pub(super) fn idle_since(&self) -> Option<Instant> {
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
