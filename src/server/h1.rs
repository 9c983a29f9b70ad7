//! One HTTP/1.1 client connection: the gate in front, hyper's connection behind it while
//! requests come, and in between — a connection idle for `gate::PARK_AFTER` — only the socket
//! and the gate (hyper's buffers freed), until the client sends again. Also hands an upgraded
//! connection to its tunnel, and closes at shutdown.

use std::future::poll_fn;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::Request;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;

use super::{answer, stopping};
use crate::gate::{ConnState, Gate, Verdict};
use crate::http1::Rejection;
use crate::proxy::{Client, Front, Proxy};

/// How long the closing of a finished connection (TLS close_notify, FIN) may wait on the client.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

pub(super) async fn serve<S>(
    stream: S,
    client: Client,
    settings: &Front,
    proxy: Arc<Proxy>,
    mut drain: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let head_limits = settings.head_limits();
    let state = ConnState::new();
    // Boxed: moved in and out of hyper's connection, and small in the task's state.
    let mut gate = Box::new(Gate::new(
        stream,
        state.clone(),
        head_limits,
        settings.timeouts(),
    ));
    let peer = client.peer;
    let client = Client {
        gate: Some(state.clone()),
        ..client
    };
    let service_state = state.clone();
    let mut service = service_fn(move |req: Request<Incoming>| {
        // hyper hands over requests in the order the gate passed their heads.
        let verdict =
            service_state
                .next_verdict()
                .unwrap_or(Verdict::Reject(Rejection::Malformed(
                    "request out of order",
                )));
        // Boxed: hyper's `poll_without_shutdown` (which gives the socket back) wants an
        // `Unpin` future.
        Box::pin(answer(
            proxy.clone(),
            service_state.clone(),
            client.clone(),
            req,
            verdict,
        ))
    });
    // The gate enforces the head limits and client timeouts; hyper's own are set no narrower
    // so they never decide first. Its header count is the gate's own (a head it passes has no
    // more; the placeholder has one): up to 100 hyper parses in arrays on the stack, any more
    // costs two 3 KiB heap arrays per request.
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(None)
        .max_headers(head_limits.max_headers.max(1))
        .max_buf_size((head_limits.max_header_size * 2).max(64 * 1024))
        .half_close(true)
        .keep_alive(true);
    // No hyper connection (and none of its buffers) until the first bytes come.
    gate.park_new();
    loop {
        match wait_for_request(&mut gate, &mut drain).await {
            Some(true) => {}
            Some(false) => return close(gate).await,
            None => return,
        }
        let conn = builder.serve_connection(TokioIo::new(gate), service);
        let (parts, outcome) = run_hyper(conn, &mut drain).await;
        gate = parts.io.into_inner();
        service = parts.service;
        gate.unread(parts.read_buf);
        match outcome {
            Err(e) => return tracing::debug!("connection from {peer}: {e}"),
            Ok(()) if state.is_tunnel() => return state.hand_over(gate),
            Ok(()) if !gate.is_parked() || *drain.borrow() => return close(gate).await,
            Ok(()) => {}
        }
    }
}

/// Serves requests with hyper until the gate parks the connection, the client ends it, it is
/// upgraded or shutdown closes it; then takes the socket back from hyper.
async fn run_hyper<I, S, B>(
    conn: http1::Connection<I, S>,
    drain: &mut watch::Receiver<bool>,
) -> (http1::Parts<I, S>, hyper::Result<()>)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    S: hyper::service::HttpService<Incoming, ResBody = B> + Unpin,
    S::Future: Unpin,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: hyper::body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    // Boxed so that a parked connection's task holds none of hyper's state.
    let mut conn = Box::new(conn);
    let mut draining = *drain.borrow();
    if draining {
        Pin::new(&mut *conn).graceful_shutdown();
    }
    let outcome = loop {
        tokio::select! {
            r = poll_fn(|cx| conn.poll_without_shutdown(cx)) => break r,
            _ = stopping(drain), if !draining => {
                // The response under way ends with `Connection: close`; an idle connection
                // closes now.
                Pin::new(&mut *conn).graceful_shutdown();
                draining = true;
            }
        }
    };
    (conn.into_parts(), outcome)
}

/// A parked connection's wait for its next request: true when bytes came, false when it is to
/// be closed (its end, the keep-alive timeout, shutdown), None when the socket failed.
async fn wait_for_request<S: AsyncRead + Unpin>(
    gate: &mut Gate<S>,
    drain: &mut watch::Receiver<bool>,
) -> Option<bool> {
    tokio::select! {
        next = gate.wait_for_request() => match next {
            Ok(more) => Some(more),
            Err(e) => {
                tracing::debug!("idle connection: {e}");
                None
            }
        },
        _ = stopping(drain) => Some(false),
    }
}

/// Ends a connection hyper is done with, as hyper would have: flush and shut down the write
/// side (a TLS close_notify, then FIN).
async fn close<S: AsyncWrite + Unpin>(mut gate: Box<Gate<S>>) {
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, gate.shutdown()).await;
}
