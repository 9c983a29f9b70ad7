//! Static files (`static:` folders): served by the front without touching Python, with
//! `Content-Type`, `ETag`, `Last-Modified`, conditional requests (RFC 9110 §13), one byte
//! `Range`, and HEAD. A path is resolved segment by segment, `.`/`..` refused, and the real
//! path (symlinks followed) must stay inside the folder's real path. Files are streamed in
//! 64 KiB reads, never held whole.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::UNIX_EPOCH;

use bytes::Bytes;
use http::request::Parts;
use http_body_util::{BodyExt, Empty};
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Response};
use tokio::io::AsyncSeekExt;

use crate::config::{is_under, StaticAlias};
use crate::dates::{http_date, parse_http_date};
use crate::error::{ProxyError, Reply, StaticError};
use crate::upstream::{BoxError, ProxyBody};

const CHUNK: usize = 64 * 1024;

/// A static answer under way.
pub type Answer<'a> =
    Pin<Box<dyn Future<Output = Result<Response<ProxyBody>, ProxyError>> + Send + 'a>>;

/// The answer when the request's path (`decoded`: percent-decoded) lies under one of
/// `aliases`; None otherwise (the request goes on to the app). Boxed, so that a request
/// that is not for a static folder carries none of its state.
pub fn answer<'a>(
    aliases: &'a [StaticAlias],
    decoded: &'a [u8],
    parts: &'a Parts,
) -> Option<Answer<'a>> {
    let alias = aliases
        .iter()
        .find(|a| is_under(a.prefix.as_bytes(), decoded))?;
    let rest = &decoded[alias.prefix.len()..];
    Some(Box::pin(async move {
        serve(alias, rest, parts.uri.path(), parts)
            .await
            .map_err(ProxyError::Static)
    }))
}

async fn serve(
    alias: &StaticAlias,
    rest: &[u8],
    raw_path: &str,
    parts: &Parts,
) -> Result<Response<ProxyBody>, StaticError> {
    let not_found = || StaticError::NotFound {
        path: raw_path.to_string(),
    };
    if parts.method != Method::GET && parts.method != Method::HEAD {
        return Err(StaticError::MethodNotAllowed {
            method: parts.method.to_string(),
        });
    }
    let relative = safe_relative(rest).ok_or_else(not_found)?;
    let root = alias.dir.clone();
    let trailing_slash = rest.ends_with(b"/");
    let found = tokio::task::spawn_blocking(move || locate(&root, &relative))
        .await
        .ok()
        .flatten()
        .ok_or_else(not_found)?;
    let path = match found {
        // A file asked for as a folder (`/robots.txt/`) is not there, as on a file system.
        Found::File(_) if trailing_slash => return Err(not_found()),
        Found::File(p) => p,
        Found::Dir(p) if trailing_slash => p.join("index.html"),
        Found::Dir(_) => return Ok(add_slash(raw_path, parts)),
    };
    let mut file = tokio::fs::File::open(&path)
        .await
        .map_err(|_| not_found())?;
    let meta = file.metadata().await.map_err(|_| not_found())?;
    if !meta.is_file() {
        return Err(not_found());
    }
    let v = Validators::of(&meta);
    let mut headers = v.headers(&path);
    match precondition(&parts.headers, &v.etag, v.mtime_secs) {
        Precondition::Failed => return Err(StaticError::PreconditionFailed),
        Precondition::NotModified => {
            headers.remove(header::CONTENT_TYPE);
            let mut resp = Reply::NotModified.response(empty());
            *resp.headers_mut() = headers;
            return Ok(resp);
        }
        Precondition::Proceed => {}
    }
    let (reply, start, count) = chosen_range(parts, &v, &mut headers)?;
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(count));
    let body = if parts.method == Method::HEAD || count == 0 {
        empty()
    } else {
        if start > 0 {
            file.seek(std::io::SeekFrom::Start(start))
                .await
                .map_err(|_| not_found())?;
        }
        stream_file(file, count)
    };
    let mut resp = reply.response(body);
    *resp.headers_mut() = headers;
    Ok(resp)
}

/// A folder asked for without its slash: relative links in an index page need it (as nginx
/// and Apache redirect).
fn add_slash(raw_path: &str, parts: &Parts) -> Response<ProxyBody> {
    let mut location = format!("{raw_path}/");
    if let Some(q) = parts.uri.query() {
        location.push('?');
        location.push_str(q);
    }
    let mut resp = Reply::AddSlash.response(empty());
    if let Ok(v) = HeaderValue::from_str(&location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}

/// What identifies a version of a file for caches: `"mtime-size"` and Last-Modified.
struct Validators {
    len: u64,
    mtime_secs: u64,
    etag: String,
}

impl Validators {
    fn of(meta: &std::fs::Metadata) -> Self {
        let len = meta.len();
        let mtime = meta.modified().unwrap_or(UNIX_EPOCH);
        let mtime_secs = mtime.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        Validators {
            len,
            mtime_secs,
            etag: format!("\"{mtime_secs:x}-{len:x}\""),
        }
    }

    /// ETag, Last-Modified, Content-Type, Accept-Ranges.
    fn headers(&self, path: &Path) -> HeaderMap {
        let mut headers = HeaderMap::new();
        put(&mut headers, header::ETAG, &self.etag);
        put(
            &mut headers,
            header::LAST_MODIFIED,
            &http_date(self.mtime_secs),
        );
        put(&mut headers, header::CONTENT_TYPE, content_type(path));
        headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
        headers
    }
}

fn put(h: &mut HeaderMap, name: header::HeaderName, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        h.insert(name, v);
    }
}

/// The whole file or the one range asked for (If-Range permitting): the reply, its first
/// byte and its length; Content-Range set for a range.
fn chosen_range(
    parts: &Parts,
    v: &Validators,
    headers: &mut HeaderMap,
) -> Result<(Reply, u64, u64), StaticError> {
    let len = v.len;
    let asked =
        parts.method == Method::GET && if_range_holds(&parts.headers, &v.etag, v.mtime_secs);
    let range = asked
        .then(|| parts.headers.get(header::RANGE))
        .flatten()
        .and_then(|r| r.to_str().ok())
        .map(|r| parse_range(r, len));
    match range {
        None | Some(RangeAnswer::Whole) => Ok((Reply::File, 0, len)),
        Some(RangeAnswer::Unsatisfiable) => Err(StaticError::RangeNotSatisfiable { size: len }),
        Some(RangeAnswer::Part { start, end }) => {
            put(
                headers,
                header::CONTENT_RANGE,
                &format!("bytes {start}-{end}/{len}"),
            );
            Ok((Reply::FileRange, start, end - start + 1))
        }
    }
}

fn empty() -> ProxyBody {
    Empty::<Bytes>::new().map_err(|e| match e {}).boxed()
}

/// `count` bytes of `file` from its current position, in reads of at most [`CHUNK`].
fn stream_file(file: tokio::fs::File, count: u64) -> ProxyBody {
    BodyExt::boxed(FileBody {
        file,
        left: count,
        buf: Vec::new(),
    })
}

/// A file's bytes as a body that knows its length (so the end is seen without another poll).
struct FileBody {
    file: tokio::fs::File,
    left: u64,
    buf: Vec<u8>,
}

impl http_body::Body for FileBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        use std::task::Poll;
        let this = &mut *self;
        if this.left == 0 {
            return Poll::Ready(None);
        }
        let want = usize::try_from(this.left).map_or(CHUNK, |l| l.min(CHUNK));
        this.buf.resize(want, 0);
        let mut read = tokio::io::ReadBuf::new(&mut this.buf);
        match tokio::io::AsyncRead::poll_read(std::pin::Pin::new(&mut this.file), cx, &mut read) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Err(e)) => {
                this.left = 0;
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Ready(Ok(())) => {
                let n = read.filled().len();
                if n == 0 {
                    // The file shrank while being sent: the response ends short and the
                    // connection closes.
                    this.left = 0;
                    return Poll::Ready(Some(Err("the file shrank while it was sent".into())));
                }
                this.left -= n as u64;
                Poll::Ready(Some(Ok(http_body::Frame::data(Bytes::copy_from_slice(
                    read.filled(),
                )))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.left == 0
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.left)
    }
}

/// The request path below the alias as folder names, or None when it could leave the folder
/// (`.`/`..` segments, NUL, backslashes) or is not UTF-8 on a system that needs it.
fn safe_relative(rest: &[u8]) -> Option<PathBuf> {
    use std::os::unix::ffi::OsStrExt;
    let mut out = PathBuf::new();
    for seg in rest.split(|&b| b == b'/') {
        match seg {
            b"" => continue,
            b"." | b".." => return None,
            s if s.contains(&0) || s.contains(&b'\\') => return None,
            s => out.push(std::ffi::OsStr::from_bytes(s)),
        }
    }
    Some(out)
}

enum Found {
    File(PathBuf),
    Dir(PathBuf),
}

/// Resolves `relative` in `root` with symlinks followed, and only if the result is still
/// inside `root`'s own real path.
fn locate(root: &Path, relative: &Path) -> Option<Found> {
    let real_root = std::fs::canonicalize(root).ok()?;
    if real_root.is_file() {
        // A single-file alias (`"/robots.txt": static/robots.txt`): its own URL only, never a
        // path below it.
        return relative
            .as_os_str()
            .is_empty()
            .then_some(Found::File(real_root));
    }
    let real = std::fs::canonicalize(root.join(relative)).ok()?;
    if !real.starts_with(&real_root) {
        return None;
    }
    let meta = std::fs::metadata(&real).ok()?;
    if meta.is_dir() {
        let index = real.join("index.html");
        // The index itself must not lead out either.
        let real_index = std::fs::canonicalize(&index).ok()?;
        real_index
            .starts_with(&real_root)
            .then_some(Found::Dir(real))
    } else if meta.is_file() {
        Some(Found::File(real))
    } else {
        None
    }
}

enum Precondition {
    Proceed,
    NotModified,
    Failed,
}

/// RFC 9110 §13.2.2, in its order.
fn precondition(h: &HeaderMap, etag: &str, mtime: u64) -> Precondition {
    let text = |name| h.get(name).and_then(|v: &HeaderValue| v.to_str().ok());
    if let Some(im) = text(header::IF_MATCH) {
        if !etag_listed(im, etag, false) {
            return Precondition::Failed;
        }
    } else if let Some(ius) = text(header::IF_UNMODIFIED_SINCE).and_then(parse_http_date) {
        if mtime > ius {
            return Precondition::Failed;
        }
    }
    if let Some(inm) = text(header::IF_NONE_MATCH) {
        if etag_listed(inm, etag, true) {
            return Precondition::NotModified;
        }
    } else if let Some(ims) = text(header::IF_MODIFIED_SINCE).and_then(parse_http_date) {
        if mtime <= ims {
            return Precondition::NotModified;
        }
    }
    Precondition::Proceed
}

/// Whether `list` (an If-Match/If-None-Match value) names `etag`; weak comparison ignores
/// `W/`, strong comparison never matches a weak tag.
fn etag_listed(list: &str, etag: &str, weak: bool) -> bool {
    list.split(',')
        .map(str::trim)
        .any(|t| t == "*" || t == etag || (weak && t.strip_prefix("W/").is_some_and(|t| t == etag)))
}

/// If-Range: the range applies only when the validator still matches (strongly).
fn if_range_holds(h: &HeaderMap, etag: &str, mtime: u64) -> bool {
    let Some(v) = h.get(header::IF_RANGE).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    let v = v.trim();
    if v.starts_with('"') {
        v == etag
    } else {
        parse_http_date(v) == Some(mtime)
    }
}

#[derive(Debug, PartialEq, Eq)]
enum RangeAnswer {
    /// No usable range (several ranges, or not bytes): the whole file, 200.
    Whole,
    Part {
        start: u64,
        end: u64,
    },
    Unsatisfiable,
}

/// One `bytes=` range against a file of `len` bytes (RFC 9110 §14.1.2).
fn parse_range(value: &str, len: u64) -> RangeAnswer {
    let Some(spec) = value.trim().strip_prefix("bytes=") else {
        return RangeAnswer::Whole;
    };
    if spec.contains(',') {
        return RangeAnswer::Whole;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return RangeAnswer::Whole;
    };
    let num = |s: &str| -> Option<u64> {
        let s = s.trim();
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    match (first.trim().is_empty(), num(first), num(last)) {
        // bytes=-N: the last N bytes.
        (true, _, Some(n)) => {
            if n == 0 || len == 0 {
                RangeAnswer::Unsatisfiable
            } else {
                RangeAnswer::Part {
                    start: len.saturating_sub(n),
                    end: len - 1,
                }
            }
        }
        (false, Some(start), end) if last.trim().is_empty() || end.is_some() => {
            if end.is_some_and(|e| e < start) {
                return RangeAnswer::Whole;
            }
            if start >= len {
                return RangeAnswer::Unsatisfiable;
            }
            RangeAnswer::Part {
                start,
                end: end.map_or(len - 1, |e| e.min(len - 1)),
            }
        }
        _ => RangeAnswer::Whole,
    }
}

/// The media type for a file name's extension (nginx's common `mime.types` entries).
pub(crate) fn content_type(path: &Path) -> &'static str {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .unwrap_or_default();
    match ext.as_str() {
        "html" | "htm" => "text/html; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "json" | "map" => "application/json",
        "txt" | "text" => "text/plain; charset=utf-8",
        "csv" => "text/csv; charset=utf-8",
        "md" => "text/markdown; charset=utf-8",
        "xml" => "application/xml",
        "svg" | "svgz" => "image/svg+xml",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "avif" => "image/avif",
        "ico" => "image/x-icon",
        "bmp" => "image/bmp",
        "woff" => "font/woff",
        "woff2" => "font/woff2",
        "ttf" => "font/ttf",
        "otf" => "font/otf",
        "eot" => "application/vnd.ms-fontobject",
        "pdf" => "application/pdf",
        "zip" => "application/zip",
        "gz" | "tgz" => "application/gzip",
        "tar" => "application/x-tar",
        "wasm" => "application/wasm",
        "mp4" => "video/mp4",
        "webm" => "video/webm",
        "mp3" => "audio/mpeg",
        "ogg" => "audio/ogg",
        "wav" => "audio/wav",
        "webmanifest" => "application/manifest+json",
        "rss" => "application/rss+xml",
        "atom" => "application/atom+xml",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        use RangeAnswer::*;
        assert_eq!(parse_range("bytes=0-9", 100), Part { start: 0, end: 9 });
        assert_eq!(parse_range("bytes=90-", 100), Part { start: 90, end: 99 });
        assert_eq!(parse_range("bytes=-10", 100), Part { start: 90, end: 99 });
        assert_eq!(parse_range("bytes=-500", 100), Part { start: 0, end: 99 });
        assert_eq!(
            parse_range("bytes=50-500", 100),
            Part { start: 50, end: 99 }
        );
        assert_eq!(parse_range("bytes=100-", 100), Unsatisfiable);
        assert_eq!(parse_range("bytes=-0", 100), Unsatisfiable);
        assert_eq!(parse_range("bytes=0-1,5-6", 100), Whole);
        assert_eq!(parse_range("bytes=9-3", 100), Whole);
        assert_eq!(parse_range("items=0-1", 100), Whole);
        assert_eq!(parse_range("bytes=a-b", 100), Whole);
        assert_eq!(parse_range("bytes=+1-2", 100), Whole);
    }

    #[test]
    fn paths_cannot_leave_the_folder() {
        assert_eq!(safe_relative(b"/a/b.css"), Some(PathBuf::from("a/b.css")));
        assert_eq!(safe_relative(b"//a//b"), Some(PathBuf::from("a/b")));
        for bad in [&b"/../x"[..], b"/a/../../x", b"/./x", b"/a\\..\\x", b"/a\0"] {
            assert_eq!(safe_relative(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn etags() {
        assert!(etag_listed("\"a\", \"b\"", "\"b\"", false));
        assert!(etag_listed("W/\"b\"", "\"b\"", true));
        assert!(!etag_listed("W/\"b\"", "\"b\"", false));
        assert!(etag_listed("*", "\"b\"", false));
    }
}
