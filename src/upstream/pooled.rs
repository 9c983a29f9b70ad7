//! A child's response body: the connection goes back to its endpoint's pool when the body
//! ends, and the body fails when the child goes silent for longer than allowed.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::Response;

use super::{BoxError, Conn, InFlight};

/// A child's response body. At its end the connection goes back to the pool.
pub struct PooledBody {
    body: Incoming,
    conn: Option<Conn>,
    in_flight: Option<InFlight>,
    /// The app's `response_idle_timeout`: bounds how long a stalled child can hold the client.
    stall: Option<Stall>,
}

/// A body's silence limit. A frame only notes its time; the timer, made when the body first
/// has to wait, is moved on only when it fires before the limit after the last frame — not
/// reset per frame, and never made for a body that is there at once.
struct Stall {
    limit: Duration,
    last: tokio::time::Instant,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Stall {
    /// Ready once the body has been silent for the limit.
    fn poll_silence(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let due = self.last + self.limit;
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(due)));
        loop {
            if timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            let due = self.last + self.limit;
            if tokio::time::Instant::now() >= due {
                return Poll::Ready(());
            }
            timer.as_mut().reset(due);
        }
    }
}

impl PooledBody {
    pub(super) fn wrap(
        resp: Response<Incoming>,
        sender: Conn,
        guard: InFlight,
        idle: Option<Duration>,
    ) -> Response<Self> {
        resp.map(|body| {
            let mut pooled = PooledBody {
                body,
                conn: Some(sender),
                in_flight: Some(guard),
                stall: idle.map(|limit| Stall {
                    limit,
                    last: tokio::time::Instant::now(),
                    timer: None,
                }),
            };
            if pooled.body.is_end_stream() {
                pooled.release();
            }
            pooled
        })
    }

    fn release(&mut self) {
        if let (Some(sender), Some(guard)) = (self.conn.take(), self.in_flight.take()) {
            guard.0.put_idle(sender);
        }
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.body).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if this.body.is_end_stream() {
                    this.release();
                } else if let Some(stall) = &mut this.stall {
                    stall.last = tokio::time::Instant::now();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(None) => {
                this.release();
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                this.conn = None;
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Pending => {
                let Some(stall) = &mut this.stall else {
                    return Poll::Pending;
                };
                if stall.poll_silence(cx).is_pending() {
                    return Poll::Pending;
                }
                let limit = humantime::format_duration(stall.limit);
                this.conn = None;
                Poll::Ready(Some(Err(format!(
                    "the app sent nothing for {limit} (its response_idle_timeout)"
                )
                .into())))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
