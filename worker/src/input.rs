//! `wsgi.input`: the request body, pulled from hyper one frame at a time when the app reads —
//! never buffered whole — and `wsgi.file_wrapper`.
//!
//! A read blocks the app's thread (with the GIL released) on the tokio runtime through its
//! handle, bounded by the read timeout; the connection task keeps running meanwhile.

use std::time::Duration;

use bytes::{Buf, Bytes};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use pyo3::exceptions::{PyOSError, PyTypeError};
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use tokio::runtime::Handle;

/// Unread body the worker reads and discards after a response, so the connection stays usable;
/// past this the connection is closed instead.
const DRAIN_LIMIT: u64 = 4 << 20;
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

#[pyclass(module = "wsgimux_native")]
pub struct Input {
    body: Option<Incoming>,
    buf: Bytes,
    handle: Handle,
    timeout: Duration,
}

impl Input {
    pub fn new(body: Incoming, handle: Handle, timeout: Duration) -> Self {
        use hyper::body::Body;
        let body = (!body.is_end_stream()).then_some(body);
        Input {
            body,
            buf: Bytes::new(),
            handle,
            timeout,
        }
    }

    /// Whatever the app did not read is drained in the background (bounded), so hyper can keep
    /// the connection alive.
    pub fn drain_rest(&mut self) {
        let Some(mut body) = self.body.take() else {
            return;
        };
        self.handle.spawn(async move {
            let mut left = DRAIN_LIMIT;
            let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
                while let Some(frame) = body.frame().await {
                    let Ok(frame) = frame else { return };
                    if let Some(data) = frame.data_ref() {
                        if data.len() as u64 > left {
                            return;
                        }
                        left -= data.len() as u64;
                    }
                }
            });
            // Dropping an unfinished body makes hyper close the connection: the right outcome
            // for a body too large or too slow to discard.
            let _ = drained.await;
        });
    }

    /// Pulls the next data frame into `buf`; false at the end of the body.
    fn fill(&mut self, py: Python<'_>) -> PyResult<bool> {
        loop {
            let Some(body) = self.body.as_mut() else {
                return Ok(false);
            };
            let (handle, timeout) = (&self.handle, self.timeout);
            let next = py.detach(|| {
                handle.block_on(async { tokio::time::timeout(timeout, body.frame()).await })
            });
            match next {
                Err(_) => {
                    self.body = None;
                    return Err(PyOSError::new_err(format!(
                        "reading the request body timed out after {}s",
                        timeout.as_secs()
                    )));
                }
                Ok(None) => {
                    self.body = None;
                    return Ok(false);
                }
                Ok(Some(Err(e))) => {
                    self.body = None;
                    return Err(PyOSError::new_err(format!("reading the request body: {e}")));
                }
                Ok(Some(Ok(frame))) => {
                    // Trailers carry no body bytes: read on.
                    if let Ok(data) = frame.into_data() {
                        if !data.is_empty() {
                            self.buf = data;
                            return Ok(true);
                        }
                    }
                }
            }
        }
    }

    fn read_bytes(&mut self, py: Python<'_>, want: Option<usize>) -> PyResult<Vec<u8>> {
        let want = want.unwrap_or(usize::MAX);
        let mut out = Vec::new();
        while out.len() < want {
            if self.buf.is_empty() && !self.fill(py)? {
                break;
            }
            let n = (want - out.len()).min(self.buf.len());
            out.extend_from_slice(&self.buf[..n]);
            self.buf.advance(n);
        }
        Ok(out)
    }

    fn read_line(&mut self, py: Python<'_>, limit: Option<usize>) -> PyResult<Vec<u8>> {
        let limit = limit.unwrap_or(usize::MAX);
        let mut out = Vec::new();
        while out.len() < limit {
            if self.buf.is_empty() && !self.fill(py)? {
                break;
            }
            let room = (limit - out.len()).min(self.buf.len());
            let (n, done) = match self.buf[..room].iter().position(|&b| b == b'\n') {
                Some(i) => (i + 1, true),
                None => (room, false),
            };
            out.extend_from_slice(&self.buf[..n]);
            self.buf.advance(n);
            if done {
                break;
            }
        }
        Ok(out)
    }
}

/// `size` as file objects take it: None or negative means "all".
fn size_arg(size: Option<&Bound<'_, PyAny>>) -> PyResult<Option<usize>> {
    let Some(size) = size.filter(|s| !s.is_none()) else {
        return Ok(None);
    };
    let n: i64 = size
        .extract()
        .map_err(|_| PyTypeError::new_err("size must be an integer or None"))?;
    Ok(usize::try_from(n).ok())
}

#[pymethods]
impl Input {
    #[pyo3(signature = (size=None))]
    fn read<'py>(
        &mut self,
        py: Python<'py>,
        size: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let want = size_arg(size)?;
        // The common case: one frame holds what was asked for.
        if let Some(n) = want {
            if self.buf.is_empty() && n > 0 && !self.fill(py)? {
                return Ok(PyBytes::new(py, b""));
            }
            if self.buf.len() >= n {
                let out = PyBytes::new(py, &self.buf[..n]);
                self.buf.advance(n);
                return Ok(out);
            }
        }
        let out = self.read_bytes(py, want)?;
        Ok(PyBytes::new(py, &out))
    }

    #[pyo3(signature = (size=None))]
    fn readline<'py>(
        &mut self,
        py: Python<'py>,
        size: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let limit = size_arg(size)?;
        let out = self.read_line(py, limit)?;
        Ok(PyBytes::new(py, &out))
    }

    #[pyo3(signature = (hint=None))]
    fn readlines<'py>(
        &mut self,
        py: Python<'py>,
        hint: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Vec<Bound<'py, PyBytes>>> {
        let hint = size_arg(hint)?.filter(|&h| h > 0).unwrap_or(usize::MAX);
        let mut lines = Vec::new();
        let mut total = 0usize;
        loop {
            let line = self.read_line(py, None)?;
            if line.is_empty() {
                break;
            }
            total += line.len();
            lines.push(PyBytes::new(py, &line));
            if total >= hint {
                break;
            }
        }
        Ok(lines)
    }

    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__<'py>(&mut self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyBytes>>> {
        let line = self.read_line(py, None)?;
        Ok((!line.is_empty()).then(|| PyBytes::new(py, &line)))
    }
}

/// `wsgi.file_wrapper`: iterates a file-like object in blocks and closes it with the response.
#[pyclass(module = "wsgimux_native")]
pub struct FileWrapper {
    filelike: Py<PyAny>,
    blksize: usize,
}

#[pymethods]
impl FileWrapper {
    #[new]
    #[pyo3(signature = (filelike, blksize=8192))]
    fn new(filelike: Py<PyAny>, blksize: usize) -> Self {
        FileWrapper {
            filelike,
            blksize: blksize.max(1),
        }
    }

    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        let block = self
            .filelike
            .bind(py)
            .call_method1(pyo3::intern!(py, "read"), (self.blksize,))?;
        Ok((block.len()? > 0).then_some(block))
    }

    fn close(&self, py: Python<'_>) -> PyResult<()> {
        let f = self.filelike.bind(py);
        if f.hasattr(pyo3::intern!(py, "close"))? {
            f.call_method0(pyo3::intern!(py, "close"))?;
        }
        Ok(())
    }
}
