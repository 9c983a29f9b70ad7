//! Upgraded connections (WebSockets) to servers that speak them: `command:` and `upstream:`
//! apps. The front passes `Upgrade` and `Connection: upgrade` on, relays the server's 101, then
//! copies bytes both ways until either side closes or nothing moves for the app's
//! `response_idle_timeout`. One access-log line when the tunnel closes, with its duration and
//! the bytes each way; the process counts it as open (its drain waits for it) but not as a
//! request in flight.
//!
//! WSGI cannot upgrade a connection, so `script:`/`module:` apps never see an `Upgrade` (it is
//! a hop-by-hop header, removed like the others), and neither does anyone for `h2c`, which
//! the front does not speak towards children. Over HTTP/2 there is no Upgrade; RFC 8441's
//! extended CONNECT is not offered, so browsers open WebSockets over HTTP/1.1.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Empty};
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::http::request::Parts;
use hyper::upgrade::OnUpgrade;
use hyper::{Response, Version};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::oneshot;

use crate::accesslog::TunnelLog;
use crate::gate::ClientEnd;
use crate::upstream::{Endpoint, PooledBody, ProxyBody, TunnelGuard};

/// The protocol an HTTP/1.1 request asks to switch to (`Upgrade`, with `upgrade` among its
/// `Connection` tokens), if any other than `h2c`.
pub(super) fn requested(parts: &Parts) -> Option<HeaderValue> {
    if parts.version != Version::HTTP_11 {
        return None;
    }
    let asks = parts
        .headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    let proto = parts.headers.get(header::UPGRADE)?;
    let h2c = proto
        .to_str()
        .is_ok_and(|p| p.split(',').any(|t| t.trim().eq_ignore_ascii_case("h2c")));
    (asks && !h2c).then(|| proto.clone())
}

/// Puts the upgrade request back on a request whose hop-by-hop headers were removed.
pub(super) fn restore_request_headers(headers: &mut HeaderMap, protocol: HeaderValue) {
    headers.insert(header::UPGRADE, protocol);
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
}

/// A tunnel waiting for its two ends: the client's connection (handed over by the server once
/// hyper has written the 101) and the child's.
pub struct Tunnel {
    client: oneshot::Receiver<ClientEnd>,
    child: OnUpgrade,
    _open: TunnelGuard,
    idle: Option<Duration>,
    app: Arc<str>,
}

/// Carries a [`Tunnel`] from `forward` to `handle` in the 101's extensions (which must be
/// `Clone`).
#[derive(Clone)]
pub(super) struct PendingTunnel(Arc<Mutex<Option<Tunnel>>>);

impl PendingTunnel {
    pub(super) fn take(&self) -> Option<Tunnel> {
        self.0.lock().ok()?.take()
    }
}

/// The child said 101: the response for the client (the child's headers, `Upgrade` and
/// `Connection` kept, other hop-by-hop headers removed) carrying the tunnel to start.
pub(super) fn accept(
    mut resp: Response<PooledBody>,
    client: oneshot::Receiver<ClientEnd>,
    endpoint: &Arc<Endpoint>,
    idle: Option<Duration>,
    app: Arc<str>,
) -> Response<ProxyBody> {
    let child = hyper::upgrade::on(&mut resp);
    let (mut parts, _) = resp.into_parts();
    let upgrade = parts.headers.remove(header::UPGRADE);
    super::headers::strip_hop_by_hop(&mut parts.headers);
    if let Some(u) = upgrade {
        parts.headers.insert(header::UPGRADE, u);
    }
    parts
        .headers
        .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    let tunnel = Tunnel {
        client,
        child,
        _open: endpoint.open_tunnel(),
        idle,
        app,
    };
    parts
        .extensions
        .insert(PendingTunnel(Arc::new(Mutex::new(Some(tunnel)))));
    Response::from_parts(parts, Empty::new().map_err(|e| match e {}).boxed())
}

/// Copies bytes both ways until either side closes (or fails), or nothing moves for the idle
/// timeout; then writes the access-log line.
pub async fn run(tunnel: Tunnel, log: TunnelLog) {
    let Tunnel {
        client,
        child,
        _open,
        idle,
        app,
    } = tunnel;
    let client = async {
        client
            .await
            .map_err(|_| "the client's connection ended first".to_string())
    };
    let child = async { child.await.map_err(|e| e.to_string()) };
    let (client, child) = match tokio::try_join!(client, child) {
        Ok(ends) => ends,
        Err(e) => {
            tracing::warn!("app {app}: the upgraded connection did not start: {e}");
            log.done(0, 0, false);
            return;
        }
    };
    let started = Instant::now();
    let motion = Arc::new(Motion::default());
    let mut client = Counted::new(client, started, motion.clone(), 0);
    let mut child = Counted::new(TokioIo::new(child), started, motion.clone(), 1);
    let copied = tokio::io::copy_bidirectional(&mut client, &mut child);
    let complete = match idle {
        None => copied.await.is_ok(),
        Some(limit) => tokio::select! {
            r = copied => r.is_ok(),
            () = idle_for(limit, started, &motion) => {
                tracing::info!("app {app}: an upgraded connection was idle for {}; closed", humantime::format_duration(limit));
                false
            }
        },
    };
    log.done(client.read(), child.read(), complete);
}

/// When bytes last moved through a tunnel, and since when a write to each end has been
/// waiting for its reader (0: none; else milliseconds since the start, plus one).
#[derive(Default)]
struct Motion {
    last: AtomicU64,
    write_waiting: [AtomicU64; 2],
}

/// A write may wait for a reader that takes nothing at all this long before the tunnel is
/// closed (a reader that only reads slowly frees room well within it).
const STALLED_WRITE: Duration = Duration::from_secs(120);

/// Resolves once no byte has moved either way for `limit` and no write is waiting for its
/// reader — or a write has waited [`STALLED_WRITE`].
async fn idle_for(limit: Duration, started: Instant, motion: &Motion) {
    loop {
        let now = started.elapsed();
        let waiting = motion
            .write_waiting
            .iter()
            .map(|w| w.load(Ordering::Relaxed))
            .filter(|w| *w > 0)
            .min()
            .unwrap_or(0);
        if waiting > 0 {
            let since = Duration::from_millis(waiting - 1);
            if now.saturating_sub(since) >= STALLED_WRITE.max(limit) {
                return;
            }
            tokio::time::sleep(limit.min(Duration::from_secs(1))).await;
            continue;
        }
        let moved = Duration::from_millis(motion.last.load(Ordering::Relaxed));
        let due = moved + limit;
        if now >= due {
            return;
        }
        tokio::time::sleep_until((started + due).into()).await;
    }
}

/// One end of a tunnel: counts what is read from it, and notes when bytes were last read from
/// or written to it, and whether a write waits for its reader — a write draining into a slow
/// reader is the tunnel moving.
struct Counted<T> {
    inner: T,
    read: u64,
    started: Instant,
    motion: Arc<Motion>,
    /// Which of the motion's write slots is this end's.
    end: usize,
}

impl<T> Counted<T> {
    fn new(inner: T, started: Instant, motion: Arc<Motion>, end: usize) -> Self {
        Counted {
            inner,
            read: 0,
            started,
            motion,
            end,
        }
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn read(&self) -> u64 {
        self.read
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Counted<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            this.read += n as u64;
            this.motion.last.store(this.now_ms(), Ordering::Relaxed);
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counted<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write(cx, buf);
        let now = this.now_ms();
        match &polled {
            Poll::Pending => {
                // Waiting for the reader to take bytes: the tunnel is moving, at its pace.
                let _ = this.motion.write_waiting[this.end].compare_exchange(
                    0,
                    now + 1,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                );
            }
            Poll::Ready(r) => {
                this.motion.write_waiting[this.end].store(0, Ordering::Relaxed);
                if r.as_ref().is_ok_and(|n| *n > 0) {
                    this.motion.last.store(now, Ordering::Relaxed);
                }
            }
        }
        polled
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
