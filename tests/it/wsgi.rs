//! PEP 3333 behaviour of both workers — the same suite for each — on every interpreter that can
//! run it, under wsgiref's validator: portable on 2.7, 3.6, 3.13 and PyPy, native on 3.9–3.13.

use crate::harness::*;

/// One test per (interpreter, worker) pair, each running `$check(version, worker)`.
macro_rules! per_interpreter {
    ($check:ident; $($name:ident: $version:literal, $worker:literal;)*) => {$(
        #[test]
        fn $name() {
            $check($version, $worker);
        }
    )*};
}

per_interpreter! {
    conformance;
    portable_on_2_7: "2.7", "portable";
    portable_on_3_6: "3.6", "portable";
    portable_on_3_13: "3.13", "portable";
    portable_on_pypy3: "pypy3", "portable";
    native_on_3_9: "3.9", "native";
    native_on_3_10: "3.10", "native";
    native_on_3_11: "3.11", "native";
    native_on_3_12: "3.12", "native";
    native_on_3_13: "3.13", "native";
}

fn conformance(version: &str, worker: &str) {
    {
        let Some(py) = require_python(version) else {
            return;
        };
        let site = Site::new();
        let worker_line = format!("worker: {worker}");
        site.one_app(
            "checked",
            &py,
            &[
                "callable: validated",
                "mount: /v",
                "threads: 4",
                &worker_line,
            ],
        );
        let server = site.serve();
        let addr = server.addr;
        let ctx = |what: &str| {
            format!(
                "{worker} worker on Python {version}: {what}\n{}",
                server.log_text()
            )
        };

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
        // The client is no trusted proxy: its X-Forwarded-For is replaced, not extended.
        assert_eq!(env("HTTP_X_FORWARDED_FOR"), "127.0.0.1");
        assert_eq!(env("wsgi.url_scheme"), "http");
        assert_eq!(env("GATEWAY_INTERFACE"), "CGI/1.1");
        assert_eq!(
            r.env("HTTP_X_CUSTOM").unwrap(),
            "café".as_bytes(),
            "latin-1 round trip"
        );
        assert!(r.text().contains("wsgi.input_terminated=True"));
        // The worker asked for is the one that ran.
        assert!(
            r.text()
                .contains(&format!("SERVER_SOFTWARE=wsgimux-{worker} str")),
            "{}",
            ctx(&r.text())
        );
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
        // A large streamed response arrives whole.
        let r = c.get("x", "/v/download?n=8000000").unwrap();
        assert_eq!(r.body.len(), 8_000_000, "{}", ctx("large download"));
        // A body the app reads only part of does not break the connection for the next request.
        c.send(b"POST /v/readsome?n=5 HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n")
            .unwrap();
        c.send(&vec![b'z'; 100_000]).unwrap();
        let r = c.read_response(false).unwrap();
        assert_eq!(r.text(), "first=zzzzz\n", "{}", ctx("partial read"));
        assert_eq!(
            c.get("x", "/v/ver").unwrap().status,
            200,
            "{}",
            ctx("after partial read")
        );

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
        // exc_info after the headers went out: re-raised, so the response is cut short — the
        // client gets a broken response (or a 502, if the head had not left the worker yet),
        // never a complete 200.
        let late = request(addr, b"GET /v/excinfo_late HTTP/1.1\r\nHost: x\r\n\r\n");
        if let Ok(r) = &late {
            assert_ne!(
                r.status,
                200,
                "{}",
                ctx("exc_info after headers: a complete 200")
            );
        }
        // An exception in the app: 500, logged with its traceback, the process lives on.
        let r = c.get("x", "/v/boom").unwrap();
        assert_eq!(r.status, 500, "{}", ctx("app exception"));
        assert!(
            server
                .wait_log("boom for the test", std::time::Duration::from_secs(5))
                .is_some(),
            "{}",
            ctx("traceback not logged")
        );
        let mut c = Client::connect(addr).unwrap();
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

per_interpreter! {
    edges;
    edges_portable_on_2_7: "2.7", "portable";
    edges_portable_on_3_6: "3.6", "portable";
    edges_portable_on_3_13: "3.13", "portable";
    edges_native_on_3_13: "3.13", "native";
}

/// What the client got for one request on a fresh connection, read until the server closed it
/// (or 5 s): the raw bytes and how long the close took. `close`: the client asks for the close
/// (else the server must close by itself).
fn raw_exchange(
    addr: std::net::SocketAddr,
    target: &str,
    close: bool,
) -> (String, std::time::Duration) {
    use std::io::{Read, Write};
    let started = std::time::Instant::now();
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .expect("timeout");
    let connection = if close { "Connection: close\r\n" } else { "" };
    s.write_all(format!("GET {target} HTTP/1.1\r\nHost: x\r\n{connection}\r\n").as_bytes())
        .expect("send");
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    (
        String::from_utf8_lossy(&out).into_owned(),
        started.elapsed(),
    )
}

/// An app's bad output, the same for both workers: statuses and headers that break HTTP's rules
/// are a 500 and one log line; a body shorter than its Content-Length reaches the client and
/// the connection closes at once; a longer one is cut at the length; an exception after the
/// first chunk cuts the connection and is logged as such; SystemExit and KeyboardInterrupt are
/// 500s and the process serves on.
fn edges(version: &str, worker: &str) {
    let Some(py) = require_python(version) else {
        return;
    };
    let site = Site::new();
    let worker_line = format!("worker: {worker}");
    site.one_app("edgy", &py, &["mount: /v", &worker_line]);
    let server = site.serve();
    let addr = server.addr;
    let ctx = |what: &str| {
        format!(
            "{worker} worker on Python {version}: {what}\n{}",
            server.log_text()
        )
    };
    let pid = server.get("x", "/v/pid").text();

    for what in [
        "status-crlf",
        "status-nul",
        "status-code",
        "name-space",
        "name-crlf",
        "value-crlf",
        "value-nul",
    ] {
        let target = format!("/v/badhead?what={what}");
        let (raw, _) = raw_exchange(addr, &target, true);
        assert!(
            raw.starts_with("HTTP/1.1 500 "),
            "{}",
            ctx(&format!("{what}: {raw}"))
        );
        assert!(
            !raw.to_ascii_lowercase().contains("x-injected") && !raw.contains("should not be sent"),
            "{}",
            ctx(&format!("{what}: {raw}"))
        );
        let line = server
            .wait_log(
                &format!("invalid response to GET {target}"),
                std::time::Duration::from_secs(5),
            )
            .unwrap_or_else(|| panic!("{}", ctx(&format!("{what}: no log line"))));
        assert!(line.contains("edgy"), "{line}");
        let subject = if what.starts_with("status") {
            "status"
        } else {
            "header"
        };
        assert!(line.contains(subject), "{what}: {line}");
    }
    assert!(
        !server.log_text().contains("Traceback"),
        "{}",
        ctx("a traceback for a bad head")
    );

    // Shorter than its Content-Length, as a list, a generator and a file: the bytes the app
    // sent, then the connection closes (no hang, no 502).
    for how in ["list", "gen", "file"] {
        for (sent, declared) in [(10, 100), (0, 50), (200_000, 300_000)] {
            let target = format!("/v/badlength?as={how}&sent={sent}&declared={declared}");
            let (raw, took) = raw_exchange(addr, &target, false);
            let what = format!("{how} {sent}/{declared}");
            assert!(raw.starts_with("HTTP/1.1 200 "), "{}", ctx(&what));
            assert!(
                raw.to_ascii_lowercase()
                    .contains(&format!("content-length: {declared}\r\n")),
                "{}",
                ctx(&what)
            );
            let body = raw.split_once("\r\n\r\n").map_or("", |(_, b)| b);
            assert_eq!(body.len(), sent, "{}", ctx(&what));
            assert!(
                took < std::time::Duration::from_secs(1),
                "{what}: closed after {took:?}"
            );
        }
        // Longer: cut at the length, and the connection is still good.
        let mut c = Client::connect(addr).expect("connect");
        let r = c
            .get("x", &format!("/v/badlength?as={how}&sent=100&declared=10"))
            .expect("long body");
        assert_eq!(r.text(), "0123456789", "{}", ctx(how));
        assert_eq!(c.get("x", "/v/ver").expect("next").status, 200);
        // The same with bodies large enough to be sent from the app's own bytes (no copy).
        let r = c
            .get(
                "x",
                &format!("/v/badlength?as={how}&sent=200000&declared=150000"),
            )
            .expect("long large body");
        let want = "0123456789".repeat(15_000);
        assert!(r.text() == want, "{}: {} bytes", ctx(how), r.body.len());
        assert_eq!(c.get("x", "/v/ver").expect("next").status, 200);
    }
    assert!(
        server
            .wait_log(
                "of its 300000-byte Content-Length",
                std::time::Duration::from_secs(5)
            )
            .is_some(),
        "{}",
        ctx("short body not logged")
    );

    // An exception after the first chunk: the client sees the chunk, then the connection cut
    // (no last chunk); the log says what happened, not that the app was unreachable.
    let (raw, took) = raw_exchange(addr, "/v/raise_after", false);
    assert!(
        raw.starts_with("HTTP/1.1 200 ") && raw.contains("first chunk"),
        "{}",
        ctx(&raw)
    );
    assert!(!raw.ends_with("0\r\n\r\n"), "{}", ctx(&raw));
    assert!(
        took < std::time::Duration::from_secs(1),
        "cut after {took:?}"
    );
    let line = server
        .wait_log(
            "app raised after the response started",
            std::time::Duration::from_secs(5),
        )
        .unwrap_or_else(|| panic!("{}", ctx("no log line for raise after start")));
    assert!(
        line.contains("RuntimeError: failed after the first chunk"),
        "{line}"
    );
    assert!(
        !server.log_text().contains("unreachable"),
        "{}",
        ctx("logged as unreachable")
    );

    // SystemExit and KeyboardInterrupt: 500, the traceback logged, the same process serves on.
    for (target, name) in [
        ("/v/exit", "SystemExit"),
        ("/v/exit?how=interrupt", "KeyboardInterrupt"),
    ] {
        let (raw, _) = raw_exchange(addr, target, true);
        assert!(raw.starts_with("HTTP/1.1 500 "), "{}", ctx(&raw));
        assert!(
            server
                .wait_log(name, std::time::Duration::from_secs(5))
                .is_some(),
            "{}",
            ctx(&format!("{name} not logged"))
        );
    }
    assert_eq!(
        server.get("x", "/v/pid").text(),
        pid,
        "{}",
        ctx("the process changed")
    );
}
