//! The WSGI environ of one request, built from hyper's request head exactly as the portable
//! worker builds it (the front's `SCRIPT_NAME` header is the mount, `X-Forwarded-For`'s last
//! entry the client, `X-Forwarded-Proto` the scheme).
//!
//! Owns the per-thread caches that keep this cheap: a base environ copied per request and the
//! `HTTP_*` key strings of header names seen before.

use std::collections::HashMap;

use http::header::{HeaderName, HOST};
use http::request::Parts;
use http::{Method, Version};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString, PyTuple};

use crate::input::FileWrapper;

/// The header through which the front passes the mount prefix (gunicorn's name for it too).
const MOUNT_HEADER: &str = "script_name";
/// The client's HTTP version as the front saw it (it speaks HTTP/1.1 to the worker).
const PROTOCOL_HEADER: &str = "server_protocol";
const COOKIE: &str = "cookie";
/// Header keys kept per thread; names beyond this are built per request.
const KEY_CACHE_LIMIT: usize = 512;

/// Per Python thread: objects reused by every request it serves.
pub struct EnvironCache<'py> {
    base: Bound<'py, PyDict>,
    keys: HashMap<HeaderName, Bound<'py, PyString>>,
}

impl<'py> EnvironCache<'py> {
    pub fn new(py: Python<'py>, multithread: bool, multiprocess: bool) -> PyResult<Self> {
        let base = PyDict::new(py);
        base.set_item("wsgi.version", PyTuple::new(py, [1, 0])?)?;
        base.set_item("wsgi.errors", py.import("sys")?.getattr("stderr")?)?;
        base.set_item("wsgi.multithread", multithread)?;
        base.set_item("wsgi.multiprocess", multiprocess)?;
        base.set_item("wsgi.run_once", false)?;
        base.set_item("wsgi.input_terminated", true)?;
        base.set_item("wsgi.file_wrapper", py.get_type::<FileWrapper>())?;
        base.set_item("SERVER_SOFTWARE", "wsgimux-native")?;
        // CGI's name for the interface; mod_wsgi and every CGI-derived server set it.
        base.set_item("GATEWAY_INTERFACE", "CGI/1.1")?;
        Ok(EnvironCache {
            base,
            keys: HashMap::new(),
        })
    }

    fn key(&mut self, py: Python<'py>, name: &HeaderName) -> Bound<'py, PyString> {
        if let Some(k) = self.keys.get(name) {
            return k.clone();
        }
        let mut key = String::with_capacity(5 + name.as_str().len());
        key.push_str("HTTP_");
        key.extend(name.as_str().chars().map(|c| match c {
            '-' => '_',
            c => c.to_ascii_uppercase(),
        }));
        let key = PyString::intern(py, &key);
        if self.keys.len() < KEY_CACHE_LIMIT {
            self.keys.insert(name.clone(), key.clone());
        }
        key
    }
}

/// A byte string as a native str: ASCII as is, anything else latin-1 (PEP 3333).
fn native<'py>(py: Python<'py>, bytes: &[u8]) -> Bound<'py, PyString> {
    match std::str::from_utf8(bytes) {
        Ok(s) if s.is_ascii() => PyString::new(py, s),
        _ => {
            let s: String = bytes.iter().map(|&b| char::from(b)).collect();
            PyString::new(py, &s)
        }
    }
}

fn method_str<'py>(py: Python<'py>, method: &Method) -> Bound<'py, PyString> {
    match *method {
        Method::GET => pyo3::intern!(py, "GET").clone(),
        Method::POST => pyo3::intern!(py, "POST").clone(),
        Method::HEAD => pyo3::intern!(py, "HEAD").clone(),
        _ => PyString::new(py, method.as_str()),
    }
}

/// Host header → (SERVER_NAME, SERVER_PORT).
fn split_host(host: &str, https: bool) -> (&str, &str) {
    let default = if https { "443" } else { "80" };
    if host.starts_with('[') {
        if let Some(end) = host.find(']') {
            let port = host[end + 1..].strip_prefix(':').filter(|p| !p.is_empty());
            return (&host[..=end], port.unwrap_or(default));
        }
    }
    match host.rsplit_once(':') {
        Some((name, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => {
            (name, port)
        }
        _ => (host, default),
    }
}

fn last_entry(value: &[u8]) -> &[u8] {
    let last = value.rsplit(|&b| b == b',').next().unwrap_or(value);
    last.trim_ascii()
}

/// The environ of one request: the headers as CGI variables, then the request line, the
/// mount split, the server and the client.
pub fn build<'py>(
    py: Python<'py>,
    cache: &mut EnvironCache<'py>,
    parts: &Parts,
    input: Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyDict>> {
    let env = cache.base.copy()?;
    let seen = headers(py, cache, &env, parts)?;
    let target = parts
        .uri
        .path_and_query()
        .map(|pq| pq.as_str())
        .unwrap_or("/");
    let path = parts.uri.path();
    let decoded: Vec<u8> = if path.contains('%') {
        percent_encoding::percent_decode_str(path).collect()
    } else {
        path.as_bytes().to_vec()
    };
    let (script_name, path_info): (&[u8], &[u8]) = match &seen.mount {
        Some(m)
            if decoded.starts_with(m) && (decoded.len() == m.len() || decoded[m.len()] == b'/') =>
        {
            (m, &decoded[m.len()..])
        }
        _ => (b"", &decoded),
    };
    env.set_item(
        pyo3::intern!(py, "REQUEST_METHOD"),
        method_str(py, &parts.method),
    )?;
    env.set_item(pyo3::intern!(py, "SCRIPT_NAME"), native(py, script_name))?;
    env.set_item(pyo3::intern!(py, "PATH_INFO"), native(py, path_info))?;
    env.set_item(
        pyo3::intern!(py, "QUERY_STRING"),
        parts.uri.query().unwrap_or(""),
    )?;
    let uri = PyString::new(py, target);
    env.set_item(pyo3::intern!(py, "REQUEST_URI"), &uri)?;
    env.set_item(pyo3::intern!(py, "RAW_URI"), uri)?;
    server_and_client(py, &env, parts, &seen)?;
    env.set_item(pyo3::intern!(py, "wsgi.input"), input)?;
    Ok(env)
}

/// What the headers said beyond their CGI variables.
struct Seen<'a> {
    /// The mount prefix from the front (percent-decoded).
    mount: Option<Vec<u8>>,
    /// The nearest proxy said https.
    https: bool,
    /// The client's address as the nearest proxy gave it.
    remote: &'a [u8],
    /// The client's protocol, from the front.
    protocol: Option<&'static str>,
}

/// Every header as `HTTP_*` (CONTENT_TYPE and CONTENT_LENGTH without the prefix; repeats
/// joined, cookies with `; `), names with `_` left out; the mount and forwarded headers noted.
fn headers<'a, 'py>(
    py: Python<'py>,
    cache: &mut EnvironCache<'py>,
    env: &Bound<'py, PyDict>,
    parts: &'a Parts,
) -> PyResult<Seen<'a>> {
    let mut seen = Seen {
        mount: None,
        https: false,
        remote: b"",
        protocol: None,
    };
    for name in parts.headers.keys() {
        let name_str = name.as_str();
        let mut values = parts.headers.get_all(name).iter();
        let Some(first) = values.next() else { continue };
        let last_value = || {
            let all = parts.headers.get_all(name);
            all.iter().next_back().unwrap_or(first).as_bytes()
        };
        match name_str {
            // CGI names, without the HTTP_ prefix.
            "content-type" => {
                env.set_item(
                    pyo3::intern!(py, "CONTENT_TYPE"),
                    native(py, first.as_bytes()),
                )?;
                continue;
            }
            "content-length" => {
                let key = pyo3::intern!(py, "CONTENT_LENGTH");
                env.set_item(key, native(py, first.as_bytes()))?;
                continue;
            }
            MOUNT_HEADER => {
                let decoded = percent_encoding::percent_decode(first.as_bytes()).collect();
                seen.mount = Some(decoded);
                continue;
            }
            PROTOCOL_HEADER => {
                seen.protocol = match first.as_bytes() {
                    b"HTTP/1.0" => Some("HTTP/1.0"),
                    b"HTTP/1.1" => Some("HTTP/1.1"),
                    b"HTTP/2.0" => Some("HTTP/2.0"),
                    _ => None,
                };
                continue;
            }
            // The last entry of the last such header: what the nearest proxy set.
            "x-forwarded-proto" => {
                seen.https = last_entry(last_value()).eq_ignore_ascii_case(b"https");
            }
            "x-forwarded-for" => seen.remote = last_entry(last_value()),
            _ => {}
        }
        // A name with `_` would be indistinguishable from one with `-` in CGI names: never
        // trusted (nginx and gunicorn drop them too).
        if name_str.contains('_') {
            continue;
        }
        let key = cache.key(py, name);
        let mut rest = values.peekable();
        if rest.peek().is_none() {
            env.set_item(key, native(py, first.as_bytes()))?;
        } else {
            let sep: &[u8] = if name_str == COOKIE { b"; " } else { b", " };
            let mut joined = first.as_bytes().to_vec();
            for v in rest {
                joined.extend_from_slice(sep);
                joined.extend_from_slice(v.as_bytes());
            }
            env.set_item(key, native(py, &joined))?;
        }
    }
    Ok(seen)
}

/// SERVER_PROTOCOL, SERVER_NAME/PORT (from Host), REMOTE_ADDR, wsgi.url_scheme.
fn server_and_client(
    py: Python<'_>,
    env: &Bound<'_, PyDict>,
    parts: &Parts,
    seen: &Seen,
) -> PyResult<()> {
    let host = parts
        .headers
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost");
    let (server_name, server_port) = split_host(host, seen.https);
    // PEP 3333: the client's protocol; the front says which (this hop is always HTTP/1.1).
    let protocol = match (seen.protocol, parts.version) {
        (Some("HTTP/2.0"), _) => pyo3::intern!(py, "HTTP/2.0"),
        (Some("HTTP/1.0"), _) | (None, Version::HTTP_10) => pyo3::intern!(py, "HTTP/1.0"),
        _ => pyo3::intern!(py, "HTTP/1.1"),
    };
    env.set_item(pyo3::intern!(py, "SERVER_PROTOCOL"), protocol)?;
    env.set_item(pyo3::intern!(py, "SERVER_NAME"), server_name)?;
    env.set_item(pyo3::intern!(py, "SERVER_PORT"), server_port)?;
    env.set_item(pyo3::intern!(py, "REMOTE_ADDR"), native(py, seen.remote))?;
    let scheme = if seen.https {
        pyo3::intern!(py, "https")
    } else {
        pyo3::intern!(py, "http")
    };
    env.set_item(pyo3::intern!(py, "wsgi.url_scheme"), scheme)?;
    Ok(())
}
