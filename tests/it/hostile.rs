//! App servers that send broken or hostile responses, scripted byte for byte by a raw-socket
//! server behind an `upstream:` app: what the client gets and what the log says.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use crate::harness::*;

/// A listener on a free port; each connection handled by `handle` on its own thread.
fn serve_each(handle: impl Fn(TcpStream) + Send + Sync + 'static) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let handle = std::sync::Arc::new(handle);
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let handle = handle.clone();
            std::thread::spawn(move || handle(stream));
        }
    });
    port
}

/// The next request head on `stream`; None when it ends first.
fn read_head(stream: &mut TcpStream) -> Option<String> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return None,
        }
    }
    Some(String::from_utf8_lossy(&head).into_owned())
}

/// A server answering each request path with the raw bytes `script` gives, on a connection
/// kept open until wsgimux closes it (a server that closed it unannounced would race the
/// next request sent on it from the pool — the keep-alive race, tested on its own below).
fn scripted(script: fn(&str) -> Vec<u8>) -> u16 {
    serve_each(move |mut stream| {
        let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
        while let Some(head) = read_head(&mut stream) {
            let path = head.split(' ').nth(1).unwrap_or("/").to_string();
            if stream.write_all(&script(&path)).is_err() {
                return;
            }
            let _ = stream.flush();
        }
    })
}

fn responses(path: &str) -> Vec<u8> {
    let body20 = "abcdefghijklmnopqrst";
    match path {
        "/te-and-cl" => format!(
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n14\r\n{body20}\r\n0\r\n\r\n"
        )
        .into_bytes(),
        "/space-in-name" => b"HTTP/1.1 200 OK\r\nBad Name: x\r\nContent-Length: 2\r\n\r\nok".to_vec(),
        "/cl-repeated" => b"HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\nhello".to_vec(),
        "/cl-differ" => b"HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\nhello!".to_vec(),
        "/gzip" => b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n\x1f\x8b\x08\x00coded".to_vec(),
        "/unasked-101" => {
            b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: evil\r\n\r\n".to_vec()
        }
        "/fields-150" => {
            let fields: String = (0..150).map(|i| format!("X-Field-{i}: {i}\r\n")).collect();
            format!("HTTP/1.1 200 OK\r\n{fields}Content-Length: 2\r\n\r\nok").into_bytes()
        }
        "/head-40k" => {
            let value = "v".repeat(40 * 1024);
            format!("HTTP/1.1 200 OK\r\nX-Big: {value}\r\nContent-Length: 2\r\n\r\nok").into_bytes()
        }
        "/trailer" => b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Checksum\r\n\r\n5\r\nhello\r\n0\r\nX-Checksum: abc\r\n\r\n".to_vec(),
        _ => b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec(),
    }
}

fn site_for(port: u16) -> (Site, Server) {
    let site = Site::new();
    site.config(&format!(
        "apps:\n  evil:\n    upstream: \"http://127.0.0.1:{port}\"\n    request_timeout: 10s\n"
    ));
    let server = site.serve();
    (site, server)
}

#[test]
fn response_framing_follows_the_rfc_and_what_cannot_be_relayed_is_a_502_that_says_why() {
    let port = scripted(responses);
    let (_site, server) = site_for(port);
    // Transfer-Encoding wins and Content-Length goes: the whole chunked body arrives.
    let r = server.get("x", "/te-and-cl");
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "abcdefghijklmnopqrst");
    assert_ne!(r.header("content-length"), Some("5"));
    // A repeated Content-Length is one value.
    let r = server.get("x", "/cl-repeated");
    assert_eq!((r.status, r.text().as_str()), (200, "hello"));
    let raw = raw_head(server.addr, "/cl-repeated");
    assert!(
        raw.to_ascii_lowercase().contains("content-length: 5\r\n"),
        "{raw}"
    );
    // Differing lengths, unknown codings and an unasked 101: a 502 and one line naming the app.
    for (path, words) in [
        (
            "/space-in-name",
            "sent an invalid response to GET /space-in-name: invalid HTTP header parsed",
        ),
        ("/cl-differ", ""),
        (
            "/gzip",
            "sent an invalid response to GET /gzip: Transfer-Encoding \"gzip\"",
        ),
        (
            "/unasked-101",
            "sent an invalid response to GET /unasked-101: 101 Switching Protocols",
        ),
    ] {
        let r = server.get("x", path);
        assert_eq!(r.status, 502, "{path}: {}", r.text());
        if !words.is_empty() {
            assert!(
                r.text().contains("The app evil sent a bad response"),
                "{}",
                r.text()
            );
            let line = server.wait_log(words, Duration::from_secs(5));
            assert!(
                line.is_some_and(|l| l.contains("app evil")),
                "{path}: {}",
                server.log_text()
            );
        }
    }
    // The server is fine for the next request.
    assert_eq!(server.get("x", "/").text(), "ok");
}

/// nginx and Go's proxies limit a response head by its size, not by how many fields it has:
/// 150 short fields pass, one 40 KiB field is over the 32 KiB default and a 502 that says so,
/// and `limits.max_response_header_size` raised by a reload lets it through.
#[test]
fn response_heads_are_limited_by_size_not_by_field_count() {
    let port = scripted(responses);
    let (site, server) = site_for(port);
    let r = server.get("x", "/fields-150");
    assert_eq!(r.status, 200, "{}", server.log_text());
    assert_eq!(r.header("x-field-149"), Some("149"));
    let r = server.get("x", "/head-40k");
    assert_eq!(r.status, 502);
    let line = server.wait_log(
        "sent an invalid response to GET /head-40k: a response head over limits.max_response_header_size (32768 bytes)",
        Duration::from_secs(5),
    );
    assert!(line.is_some(), "{}", server.log_text());
    site.config(&format!(
        "limits:\n  max_response_header_size: 64k\napps:\n  evil:\n    upstream: \"http://127.0.0.1:{port}\"\n    request_timeout: 10s\n"
    ));
    let (ok, out, err) = site.reload();
    assert!(ok.success(), "{out}{err}");
    let r = server.get("x", "/head-40k");
    assert_eq!(r.status, 200, "{}", server.log_text());
    assert_eq!(r.header("x-big").map(str::len), Some(40 * 1024));
}

/// The response head exactly as the front wrote it.
fn raw_head(addr: std::net::SocketAddr, path: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    text.split("\r\n\r\n").next().unwrap_or("").to_string() + "\r\n"
}

#[test]
fn a_legal_trailer_is_a_whole_response_not_an_error() {
    let port = scripted(responses);
    let (site, server) = site_for(port);
    for _ in 0..3 {
        let r = server.get("x", "/trailer");
        assert_eq!((r.status, r.text().as_str()), (200, "hello"));
    }
    let status = crate::operating::status_json(&site.path().join("wsgimux.yaml"));
    let app = crate::operating::app(&status, "evil");
    assert_eq!(app["requests"], 3, "{app}");
    assert_eq!(
        app["errors"], 0,
        "a trailer is not a broken response: {app}"
    );
    // Forwarded to an HTTP/1.1 client that asked for trailers, dropped for one that did not.
    let raw = |te: &str| {
        let mut s = TcpStream::connect(server.addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        write!(
            s,
            "GET /trailer HTTP/1.1\r\nHost: x\r\n{te}Connection: close\r\n\r\n"
        )
        .expect("send");
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        String::from_utf8_lossy(&out).to_ascii_lowercase()
    };
    let asked = raw("TE: trailers\r\n");
    assert!(
        asked.ends_with("\r\n0\r\nx-checksum: abc\r\n\r\n"),
        "{asked}"
    );
    let unasked = raw("");
    assert!(unasked.ends_with("\r\nhello\r\n0\r\n\r\n"), "{unasked}");
}

/// HTTP/2 clients get a response's trailers.
#[test]
fn an_http2_client_gets_the_trailers() {
    if !crate::tls::tools_present() {
        return;
    }
    let (_site, _server, tls_port, cert) = tls_site_for(scripted(responses));
    let out = std::process::Command::new("curl")
        .args(["-sS", "--http2", "-v", "--max-time", "10", "--cacert"])
        .arg(&cert)
        .arg("--resolve")
        .arg(format!("a.test:{tls_port}:127.0.0.1"))
        .arg(format!("https://a.test:{tls_port}/trailer"))
        .output()
        .expect("run curl");
    let (body, said) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(body, "hello");
    assert!(said.contains("< HTTP/2 200"), "{said}");
    assert!(said.contains("< x-checksum: abc"), "{said}");
}

/// A keep-alive server that answers the first request of each connection and closes the
/// connection when the next one comes, without a byte of answer (a keep-alive timer firing as
/// the request arrives, as gunicorn's 2 s one does).
fn closes_reused_connections() -> u16 {
    serve_each(|mut stream| {
        if read_head(&mut stream).is_some() {
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
            // The next request ends the connection, unanswered.
            let _ = read_head(&mut stream);
        }
    })
}

#[test]
fn a_get_on_a_pooled_connection_the_child_closed_is_sent_again_and_a_post_is_not() {
    let port = closes_reused_connections();
    let (_site, server) = site_for(port);
    for i in 0..3 {
        let r = server.get("x", "/");
        assert_eq!((r.status, r.text().as_str()), (200, "ok"), "GET {i}");
        std::thread::sleep(Duration::from_millis(600));
    }
    // A request with a body is not sent twice: its 502 says so.
    let post = |body: &str| {
        request(
            server.addr,
            format!(
                "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        )
        .expect("post")
    };
    // On the pooled connection (which closes): not sent again.
    assert_eq!(
        post("a=1").status,
        502,
        "a body already sent is not sent again"
    );
    // The next one goes on a new connection.
    assert_eq!(post("a=2").status, 200);
}

/// After a 101, sends 128 KiB every 50 ms for as long as the connection lasts.
fn upgrades_and_floods() -> u16 {
    serve_each(|mut stream| {
        let Some(head) = read_head(&mut stream) else {
            return;
        };
        if !head.to_ascii_lowercase().contains("upgrade: websocket") {
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
            return;
        }
        let _ = stream.write_all(
            b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
        );
        let chunk = vec![b'x'; 128 * 1024];
        while stream.write_all(&chunk).is_ok() {
            std::thread::sleep(Duration::from_millis(50));
        }
    })
}

#[test]
fn a_tunnel_draining_into_a_slow_reader_is_not_idle() {
    let port = upgrades_and_floods();
    let site = Site::new();
    site.config(&format!(
        "apps:\n  evil:\n    upstream: \"http://127.0.0.1:{port}\"\n    response_idle_timeout: 3s\n"
    ));
    let server = site.serve();
    let mut s = std::net::TcpStream::connect(server.addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    s.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
        .expect("send");
    // Read about 320 KB/s (16 KiB every 50 ms) for 7 s: slower than the app writes.
    let started = std::time::Instant::now();
    let mut total = 0usize;
    let mut buf = vec![0u8; 16 * 1024];
    while started.elapsed() < Duration::from_secs(7) {
        match s.read(&mut buf) {
            Ok(0) => panic!(
                "closed after {:?} and {total} bytes: {}",
                started.elapsed(),
                server.log_text()
            ),
            Ok(n) => total += n,
            Err(e) => panic!("read failed after {:?}: {e}", started.elapsed()),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(total > 1_000_000, "{total} bytes in 7 s");
    assert!(
        !server.log_text().contains("was idle for"),
        "{}",
        server.log_text()
    );
}

/// Answers every request with `100 Continue` heads, as fast as it can, never a final response.
fn floods_informational() -> u16 {
    serve_each(|mut stream| {
        if read_head(&mut stream).is_some() {
            let heads = b"HTTP/1.1 100 Continue\r\n\r\n".repeat(256);
            while stream.write_all(&heads).is_ok() {}
        }
    })
}

#[test]
fn a_flood_of_informational_responses_is_a_quick_502_and_other_apps_keep_their_latency() {
    let (flood, good) = (floods_informational(), scripted(responses));
    let site = Site::new();
    site.config(&format!(
        "apps:\n  evil:\n    upstream: \"http://127.0.0.1:{flood}\"\n    hosts: [evil]\n  good:\n    upstream: \"http://127.0.0.1:{good}\"\n    hosts: [good]\n"
    ));
    let server = site.serve();
    let started = std::time::Instant::now();
    let r = server.get("evil", "/");
    assert_eq!(r.status, 502, "{}", r.text());
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    let line = server.wait_log(
        "more than 16 informational (1xx) responses",
        Duration::from_secs(5),
    );
    assert!(
        line.is_some_and(|l| l.contains("app evil") && l.contains("GET /")),
        "{}",
        server.log_text()
    );
    // Five clients flooding at once; another app's requests meanwhile.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let addr = server.addr;
    let flooders: Vec<_> = (0..5)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let _ = request(
                        addr,
                        b"GET / HTTP/1.1\r\nHost: evil\r\nConnection: close\r\n\r\n",
                    );
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let mut times: Vec<Duration> = (0..60)
        .map(|_| {
            let t = std::time::Instant::now();
            let r = server.get("good", "/");
            assert_eq!(r.status, 200);
            t.elapsed()
        })
        .collect();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for f in flooders {
        let _ = f.join();
    }
    times.sort();
    let p50 = times[times.len() / 2];
    eprintln!("another app's p50 during five floods: {p50:?}");
    assert!(
        p50 < Duration::from_millis(20),
        "another app's p50 during the flood: {p50:?}"
    );
}

/// A keep-alive server answering `ok` to every request; counts the connections a request came
/// on (a health check's connect-and-close is not counted).
fn counts_connections() -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let used = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = used.clone();
    let port = serve_each(move |mut stream| {
        let mut first = true;
        while read_head(&mut stream).is_some() {
            if first {
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                first = false;
            }
            let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
            if stream.write_all(ok).is_err() {
                return;
            }
        }
    });
    (port, used)
}

#[test]
fn idle_connections_to_a_server_wsgimux_did_not_write_are_dropped_before_its_keep_alive_ends() {
    let (port, accepted) = counts_connections();
    let (_site, server) = site_for(port);
    let count = || accepted.load(std::sync::atomic::Ordering::SeqCst);
    // Settle: the health checks' and the first request's connections.
    assert_eq!(server.get("x", "/").text(), "ok");
    std::thread::sleep(Duration::from_millis(200));
    let before = count();
    // Within the idle time: the pooled connection is reused.
    assert_eq!(server.get("x", "/").text(), "ok");
    assert_eq!(count(), before, "reused within 1.5 s");
    // Past it (gunicorn would have closed it at 2 s): a new connection.
    std::thread::sleep(Duration::from_millis(1700));
    assert_eq!(server.get("x", "/").text(), "ok");
    assert!(count() > before, "a fresh connection after 1.7 s idle");
}

/// A server that reads each request's body to its declared length and answers how much came;
/// what it saw of a body that stopped short (`reset` or `end after N bytes`) goes to `seen`.
fn counts_body_bytes(seen: std::sync::mpsc::Sender<String>) -> u16 {
    serve_each(move |mut stream| {
        let _ = stream.set_read_timeout(Some(Duration::from_secs(20)));
        let Some(head) = read_head(&mut stream) else {
            return;
        };
        let declared: usize = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .map(|v| v.trim().to_string())
            })
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let (mut got, mut buf) = (0, [0u8; 16384]);
        while got < declared {
            match stream.read(&mut buf) {
                Ok(0) => return drop(seen.send(format!("end after {got} bytes"))),
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                    return drop(seen.send("reset".into()))
                }
                Err(e) => return drop(seen.send(format!("error {e}"))),
            }
        }
        let body = format!("got {got}");
        let _ = write!(
            stream,
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
    })
}

/// A site whose app `evil` is the server on `port`, with a TLS listener (HTTP/2 by ALPN) for
/// `a.test`: the site, its server, the TLS port and the certificate to trust.
fn tls_site_for(port: u16) -> (Site, Server, u16, std::path::PathBuf) {
    let site = Site::new();
    let tls_port = crate::tls::free_port();
    let (cert, _) = crate::tls::certificate(site.path(), "a", &["a.test"]);
    site.write("wsgimux.yaml", &format!(
        "runtime_dir: {run}\nlisten:\n  - \"127.0.0.1:0\"\n  - address: \"127.0.0.1:{tls_port}\"\n    tls: {{certificates: [{{cert: a.pem, key: a.key}}]}}\napps:\n  evil:\n    upstream: \"http://127.0.0.1:{port}\"\n    max_body_size: 10m\n",
        run = site.path().join("run").display()
    ));
    let server = site.serve();
    (site, server, tls_port, cert)
}

/// An HTTP/2 request body shorter than its `content-length` is a broken stream (the client
/// gets RST_STREAM); the app server, which already has the head and 64 KiB, must see its
/// connection reset, not a clean end it could take for a whole (short) body — gunicorn counts
/// nothing and would hand the app the short body.
#[test]
fn an_http2_body_shorter_than_its_length_reaches_the_app_server_as_a_reset() {
    if !crate::tls::tools_present() {
        return;
    }
    let (tx, seen) = std::sync::mpsc::channel();
    let port = counts_body_bytes(tx);
    let (site, _server, tls_port, cert) = tls_site_for(port);
    let body = site.write("body.bin", &"x".repeat(1_000_000));
    let data = format!("@{}", body.display());
    // A whole body: all of it arrives.
    let (version, status, text) =
        crate::tls::curl("a.test", tls_port, "/", &cert, &["--data-binary", &data])
            .expect("a whole h2 POST");
    assert_eq!(
        (version.as_str(), status, text.as_str()),
        ("2", 200, "got 1000000")
    );
    // A declared length of 2,000,000 and 1,000,000 bytes sent, slowly enough that the request
    // goes to the app server before the stream ends (one that ends within the first 64 KiB,
    // read before any app is involved, is a 400 that no app sees).
    let _ = crate::tls::curl(
        "a.test",
        tls_port,
        "/",
        &cert,
        &[
            "--data-binary",
            &data,
            "-H",
            "content-length: 2000000",
            "--limit-rate",
            "500k",
        ],
    );
    let what = seen
        .recv_timeout(Duration::from_secs(15))
        .expect("the app server saw the short body end");
    assert_eq!(what, "reset");
}
