//! The headers a request and a response carry past the front: hop-by-hop headers and `Expect`
//! removed, forwarded headers believed only from `trusted_proxies` (else replaced by the
//! front's own), and the mount header that tells a child its `SCRIPT_NAME`.

use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::error::ProxyError;
use crate::http1::Rejection;

use super::Client;

/// The header that carries the mount prefix to a child, which sets `SCRIPT_NAME` from it.
/// gunicorn honours the same header, so any such server can stand in for a child.
pub const MOUNT_HEADER: &str = "script_name";
/// The header that tells a child the client's HTTP version (the front speaks HTTP/1.1 to every
/// child), which the workers report as `SERVER_PROTOCOL`. Like the mount header, its name has
/// an underscore, so no client's copy ever reaches a child.
pub const PROTOCOL_HEADER: &str = "server_protocol";

// Names made once: a `&str` name is parsed and classified again at every use.
const PROTOCOL: HeaderName = HeaderName::from_static(PROTOCOL_HEADER);
pub(super) const MOUNT: HeaderName = HeaderName::from_static(MOUNT_HEADER);
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// The client's protocol, as the child learns it.
pub(super) fn set_protocol(headers: &mut HeaderMap, version: hyper::Version) {
    let v = match version {
        hyper::Version::HTTP_10 => "HTTP/1.0",
        hyper::Version::HTTP_2 => "HTTP/2.0",
        _ => "HTTP/1.1",
    };
    headers.insert(PROTOCOL, HeaderValue::from_static(v));
}

/// An HTTP/1.0 response without a length ends when its connection closes, so the connection
/// cannot be kept whatever the client asked: it says `Connection: close` and is marked HTTP/1.0
/// (for a 1.1 head hyper would add `keep-alive` to a keep-alive request's answer, then close).
/// A body of known length goes as Content-Length and keeps the connection; so does a response
/// that ends with its head (to HEAD, 1xx, 204, 304).
pub(super) fn close_unframed_http10<B: http_body::Body>(resp: &mut hyper::Response<B>, head: bool) {
    let status = resp.status();
    let bodiless = head || status.is_informational() || status == 204 || status == 304;
    if bodiless
        || resp.body().size_hint().exact().is_some()
        || resp.headers().contains_key(header::CONTENT_LENGTH)
    {
        return;
    }
    *resp.version_mut() = hyper::Version::HTTP_10;
    resp.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
}

/// HTTP/2 may split `cookie` into several fields; an HTTP/1.1 hop gets them as one, joined
/// with `; ` (RFC 9113 §8.2.3) — a comma would make Python's cookie parser lose the rest.
pub(super) fn join_cookies(headers: &mut HeaderMap) {
    if headers.get_all(header::COOKIE).iter().count() < 2 {
        return;
    }
    let mut joined = Vec::new();
    for (i, v) in headers.get_all(header::COOKIE).iter().enumerate() {
        if i > 0 {
            joined.extend_from_slice(b"; ");
        }
        joined.extend_from_slice(v.as_bytes());
    }
    if let Ok(v) = HeaderValue::from_bytes(&joined) {
        headers.insert(header::COOKIE, v);
    }
}

/// Headers that describe one hop, never forwarded (RFC 9110 §7.6.1). Names, not strings: a
/// standard header compares to another by its index, and to a custom one not at all.
static HOP_BY_HOP: [HeaderName; 10] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    HeaderName::from_static("http2-settings"),
];

/// Removes a response's hop-by-hop headers, including those the Connection header names, but
/// `Trailer`: it names the trailer fields, which hyper sends on to an HTTP/1.1 client that
/// asked for them (`TE: trailers`) only when they are declared there (HTTP/2 clients get
/// them regardless; other clients get none).
pub(super) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    remove_where(headers, |k| HOP_BY_HOP.contains(k) && k != header::TRAILER);
}

/// Removes the headers the Connection header names and those `remove` picks, in one pass over
/// the few headers a message carries (a hashed lookup per listed name showed in the profile).
fn remove_where(headers: &mut HeaderMap, remove: impl Fn(&HeaderName) -> bool) {
    let mut names: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    names.extend(headers.keys().filter(|k| remove(k)).cloned());
    for name in names {
        headers.remove(name);
    }
}

/// Headers a client could use to claim another address, scheme, host, URL or mount: believed
/// only from `trusted_proxies`. The list is what frameworks and proxies in front of Python apps
/// read as such: RFC 7239 and the X-Forwarded family (Django's `SECURE_PROXY_SSL_HEADER`,
/// werkzeug's `ProxyFix`, gunicorn's `secure_scheme_headers`), nginx's `X-Real-IP` and
/// `X-Scheme`, CDNs' client-address headers (Akamai `True-Client-IP`, Cloudflare
/// `CF-Connecting-IP`, Fastly `Fastly-Client-IP`), `X-Client-IP`/`X-Cluster-Client-IP`/
/// `Client-IP` (Rails' `RemoteIp`, libraries such as django-ipware), Microsoft's
/// `Front-End-Https`, and the URL overrides of IIS URL Rewrite (`X-Original-URL`,
/// `X-Rewrite-URL`) that some frameworks honour over the request line. Also the mount and
/// address names WSGI middlewares read (`X-Script-Name`, `Script-Name`: werkzeug and Flask
/// recipes; `Remote-Addr`, `Https`: CGI names a client can send as headers), the host
/// overrides `X-Host` and `X-HTTP-Host-Override` (Symfony, Rack), `X-Forwarded-Uri` (Traefik),
/// Envoy's `X-Envoy-External-Address` and `X-ProxyUser-Ip` (Google's front ends).
static FORWARDED: [HeaderName; 39] = [
    HeaderName::from_static("forwarded"),
    HeaderName::from_static("x-forwarded-for"),
    HeaderName::from_static("x-forwarded-proto"),
    HeaderName::from_static("x-forwarded-protocol"),
    HeaderName::from_static("x-forwarded-scheme"),
    HeaderName::from_static("x-forwarded-ssl"),
    HeaderName::from_static("x-forwarded-host"),
    HeaderName::from_static("x-forwarded-server"),
    HeaderName::from_static("x-forwarded-port"),
    HeaderName::from_static("x-forwarded-prefix"),
    HeaderName::from_static("x-forwarded-by"),
    HeaderName::from_static("x-forwarded"),
    HeaderName::from_static("forwarded-for"),
    HeaderName::from_static("x-real-ip"),
    HeaderName::from_static("x-scheme"),
    HeaderName::from_static("x-url-scheme"),
    HeaderName::from_static("front-end-https"),
    HeaderName::from_static("x-client-ip"),
    HeaderName::from_static("x-cluster-client-ip"),
    HeaderName::from_static("client-ip"),
    HeaderName::from_static("true-client-ip"),
    HeaderName::from_static("cf-connecting-ip"),
    HeaderName::from_static("fastly-client-ip"),
    HeaderName::from_static("x-originating-ip"),
    HeaderName::from_static("x-remote-ip"),
    HeaderName::from_static("x-remote-addr"),
    HeaderName::from_static("x-original-url"),
    HeaderName::from_static("x-rewrite-url"),
    HeaderName::from_static("x-original-host"),
    HeaderName::from_static("x-script-name"),
    HeaderName::from_static("script-name"),
    HeaderName::from_static("remote-addr"),
    HeaderName::from_static("https"),
    HeaderName::from_static("x-host"),
    HeaderName::from_static("x-http-host-override"),
    HeaderName::from_static("x-forwarded-uri"),
    HeaderName::from_static("x-envoy-external-address"),
    HeaderName::from_static("x-proxyuser-ip"),
    MOUNT,
];

/// gunicorn's `secure_scheme_headers`: each names the scheme as https with one value.
const SCHEME_HEADERS: &[(&str, &str)] = &[
    ("x-forwarded-proto", "https"),
    ("x-forwarded-protocol", "ssl"),
    ("x-forwarded-ssl", "on"),
];

/// Cleans the request's headers for the child: hop-by-hop headers, `Expect` (answered here),
/// header names with underscores (which a CGI-style environ cannot tell from dashes), and,
/// unless the peer is a trusted proxy, every forwarded header. Returns the mount prefix a
/// trusted proxy sent. A trusted proxy's scheme headers that disagree are refused, as gunicorn
/// refuses them.
pub(super) fn forwarded_headers(
    headers: &mut HeaderMap,
    client: &Client,
) -> Result<Option<String>, ProxyError> {
    clean_request_headers(headers, client.trusted);
    if !client.trusted {
        return Ok(None);
    }
    let mut secure = None;
    for (name, https_value) in SCHEME_HEADERS {
        if let Some(v) = headers.get(*name).and_then(|v| v.to_str().ok()) {
            let says = v.trim().eq_ignore_ascii_case(https_value);
            if secure.is_some_and(|s| s != says) {
                return Err(ProxyError::Rejected(Rejection::Malformed(
                    "forwarded scheme headers disagree",
                )));
            }
            secure = Some(says);
        }
    }
    if let Some(s) = secure {
        let scheme = if s { "https" } else { "http" };
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(scheme));
    }
    // Kept as sent (a path prefix, percent-encoded): it goes in front of the request path.
    let outer = headers
        .remove(MOUNT)
        .and_then(|v| v.to_str().ok().map(str::to_string))
        .filter(|v| {
            v.starts_with('/') && v.len() > 1 && !v.bytes().any(|b| matches!(b, b'?' | b'#' | b' '))
        });
    Ok(outer)
}

/// Removes what no child gets: hop-by-hop headers, `Expect` (answered here), names with
/// underscores but the mount header, and unless `trusted`, every forwarded header.
fn clean_request_headers(headers: &mut HeaderMap, trusted: bool) {
    remove_where(headers, |k| {
        HOP_BY_HOP.contains(k)
            || k == header::EXPECT
            || (k.as_str().contains('_') && k != MOUNT)
            || (!trusted && FORWARDED.contains(k))
    });
}

/// X-Forwarded-For gains the peer; the scheme and host are the front's own unless a trusted
/// proxy already said them.
pub(super) fn add_forwarded(headers: &mut HeaderMap, client: &Client, host: Option<&HeaderValue>) {
    let xff = match headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(prev) if !prev.trim().is_empty() => {
            let ip = client.peer_ip.to_str().unwrap_or_default();
            HeaderValue::from_str(&format!("{prev}, {ip}")).ok()
        }
        // Made once per connection (`Client::peer_ip`); a clone shares its bytes.
        _ => Some(client.peer_ip.clone()),
    };
    if let Some(v) = xff {
        headers.insert(X_FORWARDED_FOR, v);
    }
    if !headers.contains_key(&X_FORWARDED_PROTO) {
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(client.scheme));
    }
    if !headers.contains_key(&X_FORWARDED_HOST) {
        if let Some(h) = host {
            headers.insert(X_FORWARDED_HOST, h.clone());
        }
    }
}

/// A child's response framing, checked as RFC 9112 §6 asks of a proxy before relaying it: a
/// 101 here answers a request that did not ask to upgrade; `Transfer-Encoding` must be
/// exactly `chunked` (hyper has decoded it; the front frames the body afresh), and then any
/// `Content-Length` beside it goes; a `Content-Length` list of one repeated value becomes that
/// value, differing values are refused. Err: what the child sent, in words.
pub fn checked_response<B>(mut resp: hyper::Response<B>) -> Result<hyper::Response<B>, String> {
    if resp.status().as_u16() == 101 {
        return Err(
            "101 Switching Protocols to a request that did not ask to upgrade (or on a route that does not upgrade)"
                .into(),
        );
    }
    let h = resp.headers_mut();
    let text = |v: &HeaderValue| String::from_utf8_lossy(v.as_bytes()).into_owned();
    let codings: Vec<String> = h
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .map(text)
        .collect();
    if !codings.is_empty() {
        let list: Vec<String> = codings
            .iter()
            .flat_map(|v| v.split(','))
            .map(|c| c.trim().to_ascii_lowercase())
            .collect();
        if list != ["chunked"] {
            return Err(format!(
                "Transfer-Encoding {:?}: only chunked can be relayed",
                codings.join(", ")
            ));
        }
        h.remove(header::CONTENT_LENGTH);
        return Ok(resp);
    }
    // The common case, one plain value, is checked without allocating (every response).
    let mut all = h.get_all(header::CONTENT_LENGTH).iter();
    if let (Some(one), None) = (all.next(), all.next()) {
        if !one.as_bytes().contains(&b',') {
            return Ok(resp);
        }
    }
    let lengths: Vec<String> = h
        .get_all(header::CONTENT_LENGTH)
        .iter()
        .map(text)
        .flat_map(|v| {
            v.split(',')
                .map(|p| p.trim().to_string())
                .collect::<Vec<_>>()
        })
        .collect();
    if lengths.len() > 1 {
        let first = &lengths[0];
        if !lengths.iter().all(|l| l == first) || first.parse::<u64>().is_err() {
            return Err(format!(
                "Content-Length {:?}: the values differ",
                lengths.join(", ")
            ));
        }
        if let Ok(one) = HeaderValue::from_str(first) {
            h.insert(header::CONTENT_LENGTH, one);
        }
    }
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(trusted: bool) -> Client {
        let peer: std::net::SocketAddr = "127.0.0.1:5555".parse().unwrap();
        Client {
            peer,
            peer_ip: Client::ip_text(peer),
            local: "127.0.0.1:8080".parse().unwrap(),
            scheme: "http",
            trusted,
            body_timeout: None,
            gate: None,
        }
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn http10_responses_without_a_length_close() {
        use http_body_util::{BodyExt, Full, StreamBody};
        type Boxed = http_body_util::combinators::BoxBody<bytes::Bytes, std::convert::Infallible>;
        let framed = || Full::new(bytes::Bytes::from_static(b"hello")).boxed();
        let streamed = || {
            let chunks = futures_util::stream::iter(Vec::<
                Result<http_body::Frame<bytes::Bytes>, std::convert::Infallible>,
            >::new());
            StreamBody::new(chunks).boxed()
        };
        let cases: [(&str, Boxed, u16, bool, bool); 5] = [
            ("streamed", streamed(), 200, false, true),
            ("framed", framed(), 200, false, false),
            ("to HEAD", streamed(), 200, true, false),
            ("304", streamed(), 304, false, false),
            ("streamed 500", streamed(), 500, false, true),
        ];
        for (what, body, status, head, closes) in cases {
            let mut resp = hyper::Response::builder()
                .status(status)
                .body(body)
                .unwrap();
            close_unframed_http10(&mut resp, head);
            let closed = resp
                .headers()
                .get("connection")
                .is_some_and(|v| v == "close");
            assert_eq!(closed, closes, "{what}");
            assert_eq!(resp.version() == hyper::Version::HTTP_10, closes, "{what}");
        }
    }

    #[test]
    fn hop_by_hop_connection_named_and_underscored_headers_are_removed() {
        let mut h = headers(&[
            ("connection", "close, x-secret"),
            ("x-secret", "1"),
            ("transfer-encoding", "chunked"),
            ("keep-alive", "timeout=5"),
            ("upgrade", "h2c"),
            ("http2-settings", "AAMAAABkAAQAAP__"),
            ("x-kept", "yes"),
            ("content_length", "5"),
            ("expect", "100-continue"),
        ]);
        clean_request_headers(&mut h, true);
        let left: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, vec!["x-kept"]);
    }

    #[test]
    fn forwarded_headers_from_untrusted_peers_are_replaced() {
        let mut h = headers(&[
            ("x-forwarded-for", "10.0.0.1"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "evil.example"),
            ("forwarded", "for=10.0.0.1;proto=https"),
            (MOUNT_HEADER, "/spoofed"),
            ("x-forwarded-scheme", "https"),
            ("x-forwarded-server", "evil"),
            ("front-end-https", "on"),
            ("x-client-ip", "10.0.0.2"),
            ("true-client-ip", "10.0.0.3"),
            ("x-original-url", "/admin"),
            ("x-rewrite-url", "/admin"),
            ("x-script-name", "/evil"),
            ("script-name", "/evil"),
            ("remote-addr", "10.0.0.4"),
            ("https", "on"),
            ("x-host", "evil.example"),
            ("x-http-host-override", "evil.example"),
            ("x-forwarded-uri", "/admin"),
            ("x-envoy-external-address", "10.0.0.5"),
            ("x-proxyuser-ip", "10.0.0.6"),
            ("server_protocol", "HTTP/9"),
            ("x-kept", "yes"),
        ]);
        assert_eq!(forwarded_headers(&mut h, &client(false)).unwrap(), None);
        let left: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(
            left,
            vec!["x-kept"],
            "identity headers from an untrusted client"
        );
        add_forwarded(
            &mut h,
            &client(false),
            Some(&HeaderValue::from_static("Example.com:8080")),
        );
        assert_eq!(h["x-forwarded-for"], "127.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "Example.com:8080");
        assert!(h.get("forwarded").is_none() && h.get(MOUNT_HEADER).is_none());
    }

    #[test]
    fn forwarded_headers_from_trusted_proxies_are_honoured() {
        let mut h = headers(&[
            ("x-forwarded-for", "10.0.0.1"),
            ("x-forwarded-ssl", "on"),
            ("forwarded", "for=10.0.0.1;proto=https"),
            (MOUNT_HEADER, "/outer"),
        ]);
        let outer = forwarded_headers(&mut h, &client(true)).unwrap();
        assert_eq!(outer.as_deref(), Some("/outer"));
        add_forwarded(
            &mut h,
            &client(true),
            Some(&HeaderValue::from_static("example.com")),
        );
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, 127.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["forwarded"], "for=10.0.0.1;proto=https");
        // Scheme headers that disagree are refused, as gunicorn refuses them.
        let mut h = headers(&[("x-forwarded-proto", "https"), ("x-forwarded-ssl", "off")]);
        assert!(matches!(
            forwarded_headers(&mut h, &client(true)),
            Err(ProxyError::Rejected(_))
        ));
    }
}
