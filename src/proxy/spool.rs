//! Request buffering, nginx-style: the rest of a body (past the 64 KiB read before any app is
//! involved) written to an unnamed temporary file in the runtime dir, then sent to the child
//! from that file with its length known. Most WSGI apps read `CONTENT_LENGTH` bytes and would
//! see nothing of a body of unknown length (chunked, or HTTP/2 without content-length).
//!
//! The file has no name (Linux: `O_TMPFILE`; elsewhere it is unlinked as soon as it is
//! created), so it is gone when the request ends, however it ends — a client that disconnects
//! mid-upload or a killed wsgimux leaves nothing behind. Memory holds one 64 KiB buffer per
//! request at most.

use std::collections::VecDeque;
use std::path::Path;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body::Frame;
use http_body_util::BodyExt;
use tokio::io::{AsyncRead, AsyncSeekExt, AsyncWriteExt, ReadBuf};

use crate::upstream::BoxError;

use super::body::{ClientBody, LimitedBody};

/// Writes go to the file in pieces of this size (a chunked body may come one byte a chunk);
/// reads come back in pieces of this size.
const PIECE: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// The client's body stopped short or was too large: `LimitedBody`'s fault says which.
    #[error("the request body stopped short")]
    Body,
    #[error("writing the request body to a temporary file in {dir}: {source}")]
    File {
        dir: String,
        #[source]
        source: std::io::Error,
    },
}

/// Reads `rest` to its end into a temporary file in `dir`; returns the file, rewound, and how
/// many bytes it holds.
pub(super) async fn spool<B: ClientBody>(
    mut rest: LimitedBody<B>,
    dir: &Path,
) -> Result<(tokio::fs::File, u64), SpoolError> {
    let file_error = |source| SpoolError::File {
        dir: dir.display().to_string(),
        source,
    };
    // Creating a file is a blocking call: made off the front's thread, as tokio's file IO is.
    let owned = dir.to_path_buf();
    let std_file = tokio::task::spawn_blocking(move || tempfile::tempfile_in(owned))
        .await
        .map_err(|e| file_error(std::io::Error::other(e)))?
        .map_err(file_error)?;
    let mut file = tokio::fs::File::from_std(std_file);
    let mut pending = BytesMut::with_capacity(PIECE);
    let mut total = 0u64;
    while let Some(frame) = rest.frame().await {
        let frame = frame.map_err(|_| SpoolError::Body)?;
        // Trailers have no place in a body sent with Content-Length (nor in WSGI).
        let Ok(data) = frame.into_data() else {
            continue;
        };
        total += data.len() as u64;
        pending.extend_from_slice(&data);
        if pending.len() >= PIECE {
            file.write_all(&pending).await.map_err(file_error)?;
            pending.clear();
        }
    }
    file.write_all(&pending).await.map_err(file_error)?;
    file.flush().await.map_err(file_error)?;
    file.seek(std::io::SeekFrom::Start(0))
        .await
        .map_err(file_error)?;
    Ok((file, total))
}

/// A body read whole already: its first frames in memory, the rest in a temporary file.
pub(super) struct SpooledBody {
    prefix: VecDeque<Frame<Bytes>>,
    file: tokio::fs::File,
    /// Bytes of the file not yet sent.
    left: u64,
    /// Bytes still to send, prefix included (the exact length the child is told).
    remaining: u64,
}

impl SpooledBody {
    pub(super) fn new(prefix: VecDeque<Frame<Bytes>>, file: tokio::fs::File, len: u64) -> Self {
        let in_memory: u64 = prefix
            .iter()
            .map(|f| f.data_ref().map_or(0, |d| d.len() as u64))
            .sum();
        SpooledBody {
            prefix,
            file,
            left: len,
            remaining: in_memory + len,
        }
    }
}

impl http_body::Body for SpooledBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if let Some(f) = this.prefix.pop_front() {
            let n = f.data_ref().map_or(0, |d| d.len() as u64);
            this.remaining -= n;
            return Poll::Ready(Some(Ok(f)));
        }
        if this.left == 0 {
            return Poll::Ready(None);
        }
        let want = this.left.min(PIECE as u64) as usize;
        let mut buf = BytesMut::zeroed(want);
        let mut read = ReadBuf::new(&mut buf);
        match Pin::new(&mut this.file).poll_read(cx, &mut read) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Err(e)) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(Ok(())) => {
                let n = read.filled().len();
                if n == 0 {
                    return Poll::Ready(Some(Err("the spooled request body ended early".into())));
                }
                buf.truncate(n);
                this.left -= n as u64;
                this.remaining -= n as u64;
                Poll::Ready(Some(Ok(Frame::data(buf.freeze()))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.remaining)
    }
}

#[cfg(test)]
mod tests;
