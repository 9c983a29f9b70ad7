//! PEP 3333 behaviour of the portable worker on every interpreter, under wsgiref's validator.

use crate::harness::*;

const INTERPRETERS: &[&str] = &["2.7", "3.6", "3.13", "pypy3"];

#[test]
fn validated_apps_on_every_interpreter() {
    for version in INTERPRETERS {
        let Some(py) = require_python(version) else {
            continue;
        };
        let site = Site::new();
        site.one_app(
            "checked",
            &py,
            &["callable: validated", "mount: /v", "threads: 4"],
        );
        let server = site.serve();
        let addr = server.addr;
        let ctx = |what: &str| format!("Python {version}: {what}\n{}", server.log_text());

        // The environ, as the app sees it.
        let raw = b"GET /v/env/x?q=1 HTTP/1.1\r\nHost: Example.test:8080\r\nCookie: a=1\r\nCookie: b=2\r\nX-Custom: caf\xc3\xa9\r\nX-Forwarded-For: 10.9.8.7\r\n\r\n";
        let r = request(addr, raw).unwrap();
        assert_eq!(r.status, 200, "{}", ctx(&r.text()));
        let env = |k: &str| String::from_utf8_lossy(&r.env(k).unwrap_or_default()).into_owned();
        assert_eq!(env("REQUEST_METHOD"), "GET");
        assert_eq!(env("SCRIPT_NAME"), "/v");
        assert_eq!(env("PATH_INFO"), "/env/x");
        assert_eq!(env("QUERY_STRING"), "q=1");
        assert_eq!(env("SERVER_NAME"), "Example.test");
        assert_eq!(env("SERVER_PORT"), "8080");
        assert_eq!(env("SERVER_PROTOCOL"), "HTTP/1.1");
        assert_eq!(env("REMOTE_ADDR"), "127.0.0.1");
        assert_eq!(env("HTTP_COOKIE"), "a=1; b=2");
        assert_eq!(env("HTTP_X_FORWARDED_FOR"), "10.9.8.7, 127.0.0.1");
        assert_eq!(env("wsgi.url_scheme"), "http");
        assert_eq!(
            r.env("HTTP_X_CUSTOM").unwrap(),
            "café".as_bytes(),
            "latin-1 round trip"
        );
        assert!(r.text().contains("wsgi.input_terminated=True"));
        // Native strings on every version (PEP 3333): `str` on 2.7 and 3.x alike.
        assert!(r.text().contains("PATH_INFO=/env/x str"), "{}", r.text());

        // Bodies: Content-Length, chunked, readline iteration, an empty POST.
        let r = request(addr, b"POST /v/upload HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: 11\r\n\r\nhello world").unwrap();
        assert_eq!(
            r.text(),
            "count=11 md5=5eb63bbbe01eeed093cb22bb8f5acdc3\n",
            "{}",
            ctx("upload")
        );
        let r = request(addr, b"POST /v/upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n").unwrap();
        assert_eq!(
            r.text(),
            "count=11 md5=5eb63bbbe01eeed093cb22bb8f5acdc3\n",
            "{}",
            ctx("chunked")
        );
        let r = request(addr, b"POST /v/lines HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n4\r\na\nb\n\r\n3\r\nc\nd\r\n0\r\n\r\n").unwrap();
        assert_eq!(r.text(), "lines=4\n", "{}", ctx("lines"));
        let r = request(
            addr,
            b"POST /v/upload HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
        )
        .unwrap();
        assert_eq!(r.text(), "count=0 md5=d41d8cd98f00b204e9800998ecf8427e\n");

        // Streaming, write(), HEAD, keep-alive across all of them.
        let mut c = Client::connect(addr).unwrap();
        let r = c.get("x", "/v/download?n=200000").unwrap();
        assert_eq!(
            (r.status, r.body.len()),
            (200, 200000),
            "{}",
            ctx("download")
        );
        let r = c.get("x", "/v/write").unwrap();
        assert_eq!(r.text(), "written-then-returned\n", "{}", ctx("write"));
        c.send(b"HEAD /v/ver HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let r = c.read_head_response().unwrap();
        assert_eq!(r.status, 200);
        assert!(
            r.header("content-length").is_some(),
            "HEAD lost its Content-Length"
        );
        let r = c.get("x", "/v/ver").unwrap();
        assert_eq!(r.status, 200, "keep-alive after HEAD");

        // wsgi.file_wrapper, exc_info before the headers went out, close() on the result.
        let r = c.get("x", "/v/filewrapper").unwrap();
        assert_eq!(r.text(), "wrapped file body\n", "{}", ctx("file_wrapper"));
        let r = c.get("x", "/v/excinfo").unwrap();
        assert_eq!(
            (r.status, r.text().as_str()),
            (503, "replaced\n"),
            "{}",
            ctx("exc_info")
        );
        for _ in 0..3 {
            assert_eq!(c.get("x", "/v/closing").unwrap().text(), "ab\n");
        }
        let closed = c.get("x", "/v/closed").unwrap().text();
        assert_eq!(closed, "closed=3\n", "close() not called once per response");

        // threading.local belongs to a thread across requests.
        let mut seen = std::collections::HashMap::new();
        for _ in 0..20 {
            let t = c.get("x", "/v/threadlocal").unwrap().text();
            let (name, n) = t.trim().split_once(' ').unwrap();
            let n: u32 = n.parse().unwrap();
            let prev = seen.insert(name.to_string(), n).unwrap_or(0);
            assert_eq!(n, prev + 1, "threading.local reset on {name}");
        }

        let log = server.log_text();
        assert!(
            !log.contains("AssertionError") && !log.contains("WSGIWarning"),
            "{}",
            ctx("validator complained")
        );
    }
}
