//! The connection under a pooled HTTP/1.1 connection: a Unix socket, TCP or TLS over TCP, one
//! type for hyper whichever it is; how a connect fails, and what a health check finds.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::net::{TcpStream, UnixStream};

use super::{conn, Address};

/// A connected stream to an endpoint: one type for hyper whichever the transport.
pub(super) enum Stream {
    Unix(UnixStream),
    Tcp(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

/// Why a connect failed: nothing accepted it, or TLS with what did failed (a certificate that
/// does not verify, most often) — a server that is up but not to be trusted.
#[derive(Debug)]
pub(super) enum ConnectError {
    Io(std::io::Error),
    Tls(String),
}

/// What a health check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    Up,
    /// Nothing accepts connections there; why.
    Down(String),
    /// It accepts connections, but TLS with it fails; why.
    Untrusted(String),
}

impl Address {
    pub(super) async fn connect(&self) -> Result<Stream, ConnectError> {
        let tcp = |host: &str, port: u16| {
            let host = host.to_string();
            async move {
                let s = TcpStream::connect((host.as_str(), port)).await?;
                // Small requests and responses must not wait for Nagle.
                s.set_nodelay(true)?;
                Ok::<_, std::io::Error>(s)
            }
        };
        match self {
            Address::Unix(p) => UnixStream::connect(p)
                .await
                .map(Stream::Unix)
                .map_err(ConnectError::Io),
            Address::Tcp { host, port } => tcp(host, *port)
                .await
                .map(Stream::Tcp)
                .map_err(ConnectError::Io),
            Address::Tls {
                host,
                port,
                ca_file,
            } => {
                let config = crate::tls::client_config(ca_file.as_deref())
                    .map_err(|e| ConnectError::Tls(e.to_string()))?;
                let name = rustls_pki_types::ServerName::try_from(host.clone())
                    .map_err(|_| ConnectError::Tls(format!("{host:?} is not a TLS server name")))?;
                let s = tcp(host, *port).await.map_err(ConnectError::Io)?;
                tokio_rustls::TlsConnector::from(config)
                    .connect(name, s)
                    .await
                    .map(|t| Stream::Tls(Box::new(t)))
                    .map_err(|e| ConnectError::Tls(e.to_string()))
            }
        }
    }

    /// Whether something accepts connections there now (bounded by `limit`).
    pub async fn answers(&self, limit: Duration) -> bool {
        self.health(limit).await == Health::Up
    }

    /// Whether something accepts connections there now, and TLS with it works where it is
    /// `https://` (bounded by `limit`).
    pub async fn health(&self, limit: Duration) -> Health {
        match tokio::time::timeout(limit, self.connect()).await {
            Ok(Ok(_)) => Health::Up,
            Ok(Err(ConnectError::Io(e))) => Health::Down(e.to_string()),
            Ok(Err(ConnectError::Tls(why))) => Health::Untrusted(why),
            Err(_) => Health::Down(format!("no answer within {}s", limit.as_secs_f32())),
        }
    }
}

impl tokio::io::AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Unix(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl tokio::io::AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Unix(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Unix(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Unix(s) => Pin::new(s).poll_flush(cx),
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Unix(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

impl conn::Resettable for Stream {
    fn reset_on_close(&self) {
        // A Unix socket has no reset: its peer sees an end (wsgimux's own workers fail a read
        // of a body that ends before its Content-Length, both of them).
        let tcp = match self {
            Stream::Unix(_) => return,
            Stream::Tcp(s) => s,
            Stream::Tls(s) => s.get_ref().0,
        };
        if let Err(e) = tcp.set_zero_linger() {
            tracing::debug!("cannot make a child connection's close a reset: {e}");
        }
    }
}
