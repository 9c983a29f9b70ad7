//! The front's limits, each with its status: 414, 431, 413 (before the body is read), 504,
//! 503 + Retry-After; slow clients (slowhttptest) do not stop others from being served; 10k
//! idle connections are held with flat memory; the connection limit makes clients wait.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::harness::*;

fn status_of(addr: std::net::SocketAddr, raw: &[u8]) -> u16 {
    request(addr, raw).map(|r| r.status).unwrap_or(0)
}

#[test]
fn each_limit_answers_its_status() {
    let Some(py) = require_python("3.12") else {
        return;
    };
    let site = Site::new();
    site.probe("app");
    site.config(&format!(
        r#"limits:
  max_uri_length: 100
  max_headers: 10
  max_header_size: 2k
  max_header_field_size: 1k
apps:
  small:
    python: {py}
    script: app/probe.py
    mount: /small
    max_body_size: 1k
    request_timeout: 1s
  one:
    python: {py}
    script: app/probe.py
    mount: /one
    threads: 1
    queue_limit: 0
"#,
        py = py.display()
    ));
    let server = site.serve();
    let addr = server.addr;

    let long_uri = format!("GET /small/{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(120));
    assert_eq!(status_of(addr, long_uri.as_bytes()), 414);
    let many = format!(
        "GET /small/ HTTP/1.1\r\nHost: x\r\n{}\r\n",
        "X-A: 1\r\n".repeat(11)
    );
    assert_eq!(status_of(addr, many.as_bytes()), 431);
    // Exactly the limit passes (the gate's count and hyper's are the same).
    let at_limit = format!(
        "GET /small/ HTTP/1.1\r\nHost: x\r\n{}\r\n",
        "X-A: 1\r\n".repeat(9)
    );
    assert_eq!(status_of(addr, at_limit.as_bytes()), 200);
    let big_field = format!(
        "GET /small/ HTTP/1.1\r\nHost: x\r\nX-A: {}\r\n\r\n",
        "a".repeat(1100)
    );
    assert_eq!(status_of(addr, big_field.as_bytes()), 431);
    let big_head = format!(
        "GET /small/ HTTP/1.1\r\nHost: x\r\n{}\r\n",
        format!("X-A: {}\r\n", "a".repeat(500)).repeat(5)
    );
    assert_eq!(status_of(addr, big_head.as_bytes()), 431);

    // 413 as soon as the head declares too much: the body is never sent.
    let mut c = Client::connect(addr).unwrap();
    c.reader_timeout(Duration::from_secs(5));
    c.send(b"POST /small/upload HTTP/1.1\r\nHost: x\r\nContent-Length: 2000\r\n\r\n")
        .unwrap();
    let r = c.read_response(false).expect("413 before the body");
    assert_eq!(r.status, 413);
    assert_eq!(r.header("connection"), Some("close"));
    // A chunked body that grows past the limit.
    let chunked = format!(
        "POST /small/upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n800\r\n{}\r\n0\r\n\r\n",
        "b".repeat(0x800)
    );
    assert_eq!(status_of(addr, chunked.as_bytes()), 413);
    // Within the limit.
    let ok = format!(
        "POST /small/upload HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{}",
        "c".repeat(1000)
    );
    assert_eq!(status_of(addr, ok.as_bytes()), 200);

    // 504 after request_timeout.
    let started = Instant::now();
    assert_eq!(
        status_of(addr, b"GET /small/slow?s=3 HTTP/1.1\r\nHost: x\r\n\r\n"),
        504
    );
    assert!(started.elapsed() < Duration::from_millis(2500));

    // 503 + Retry-After once the one thread is busy and no queue is allowed.
    let busy = std::thread::spawn(move || {
        status_of(addr, b"GET /one/slow?s=2 HTTP/1.1\r\nHost: x\r\n\r\n")
    });
    server.wait_in_flight("one", 1);
    let asked = Instant::now();
    let refused = eventually(Duration::from_secs(5), || {
        let r = request(addr, b"GET /one/pid HTTP/1.1\r\nHost: x\r\n\r\n").ok()?;
        (r.status == 503).then_some(r)
    })
    .unwrap_or_else(|| panic!("a 503 while the app is busy\n{}", server.log_text()));
    assert_eq!(refused.header("retry-after"), Some("2"));
    // After the default overflow_wait (1 s) for a place that did not come.
    assert!(
        asked.elapsed() >= Duration::from_millis(900),
        "{:?}",
        asked.elapsed()
    );
    assert_eq!(busy.join().unwrap(), 200);
    assert_eq!(
        status_of(addr, b"GET /one/pid HTTP/1.1\r\nHost: x\r\n\r\n"),
        200
    );
}

#[test]
fn a_full_app_holds_a_request_for_its_overflow_wait() {
    let Some(py) = require_python("3.12") else {
        return;
    };
    let site = Site::new();
    site.probe("app");
    site.config(&format!(
        "apps:\n  patient:\n    python: {py}\n    script: app/probe.py\n    mount: /patient\n    threads: 1\n    queue_limit: 0\n    overflow_wait: 5s\n\
         \x20 hasty:\n    python: {py}\n    script: app/probe.py\n    mount: /hasty\n    threads: 1\n    queue_limit: 0\n    overflow_wait: 0\n",
        py = py.display()
    ));
    let server = site.serve();
    let addr = server.addr;
    for app in ["patient", "hasty"] {
        let pid = format!("GET /{app}/pid HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(
            status_of(addr, pid.as_bytes()),
            200,
            "{}",
            server.log_text()
        );
    }

    // The one thread is busy for 1.5 s: the next request waits for it, then is served.
    let busy = std::thread::spawn(move || {
        status_of(addr, b"GET /patient/slow?s=1.5 HTTP/1.1\r\nHost: x\r\n\r\n")
    });
    server.wait_in_flight("patient", 1);
    let asked = Instant::now();
    assert_eq!(
        status_of(addr, b"GET /patient/pid HTTP/1.1\r\nHost: x\r\n\r\n"),
        200,
        "{}",
        server.log_text()
    );
    let waited = asked.elapsed();
    assert!(
        waited >= Duration::from_millis(600),
        "served after {waited:?}, while busy"
    );
    assert_eq!(busy.join().unwrap(), 200);

    // overflow_wait: 0 answers 503 at once.
    let busy = std::thread::spawn(move || {
        status_of(addr, b"GET /hasty/slow?s=2 HTTP/1.1\r\nHost: x\r\n\r\n")
    });
    server.wait_in_flight("hasty", 1);
    let asked = Instant::now();
    assert_eq!(
        status_of(addr, b"GET /hasty/pid HTTP/1.1\r\nHost: x\r\n\r\n"),
        503
    );
    assert!(
        asked.elapsed() < Duration::from_millis(500),
        "{:?}",
        asked.elapsed()
    );
    assert_eq!(busy.join().unwrap(), 200);
    server
        .wait_log(
            "none ended within its overflow_wait",
            Duration::from_secs(5),
        )
        .expect("the 503 logged with its reason");
}

fn raise_fd_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit on this process with a valid struct.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        lim.rlim_cur = lim.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
    }
    lim.rlim_cur
}

#[test]
fn ten_thousand_idle_connections_with_flat_memory() {
    let Some(py) = require_python("3.12") else {
        return;
    };
    let want = 10_000usize;
    if raise_fd_limit() < (want + 200) as u64 {
        skip(&format!("the open-file limit is below {}", want + 200));
        return;
    }
    let site = Site::new();
    site.probe("app");
    // Room for the idle ones and the client that checks others are still served.
    site.config(&format!(
        "limits: {{max_connections: {}}}\napps:\n  a:\n    python: {}\n    script: app/probe.py\n",
        want + 100,
        py.display()
    ));
    let server = site.serve();
    let before = proc_kib(server.pid(), "VmRSS");
    let mut idle = Vec::with_capacity(want);
    for _ in 0..want {
        idle.push(TcpStream::connect(server.addr).expect("connect"));
    }
    // Half of them sent a request and now sit in keep-alive; the rest never sent a byte.
    for s in idle.iter_mut().step_by(2) {
        s.write_all(b"GET /pid HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut buf = [0u8; 512];
        let n = s.read(&mut buf).expect("a response");
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    }
    // Past the park delay (250 ms): hyper's connections are gone, the sockets stay.
    std::thread::sleep(Duration::from_millis(2500));
    let held = proc_kib(server.pid(), "VmRSS");
    // A new client is still served at once.
    assert_eq!(server.get("x", "/pid").status, 200);
    let per_conn = (held.saturating_sub(before)) * 1024 / want as u64;
    println!("RSS {before} KiB → {held} KiB with {want} idle connections ({per_conn} bytes each)");
    // A parked connection holds its socket, the gate (no buffer) and a small task; hyper's
    // buffers (16 KiB) were freed. Measured here: 4-5 KiB (it was 19-30 KiB while hyper kept
    // every idle connection).
    assert!(per_conn <= 8 * 1024, "{per_conn} bytes per idle connection");
    // Parked connections serve again, those that had a request and those that never sent one.
    for s in idle.iter_mut().step_by(997).take(10) {
        s.write_all(b"GET /pid HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut buf = [0u8; 512];
        let n = s.read(&mut buf).expect("a response");
        assert!(
            buf[..n].starts_with(b"HTTP/1.1 200"),
            "{:?}",
            String::from_utf8_lossy(&buf[..n])
        );
    }
    drop(idle);
}

#[test]
fn slow_clients_do_not_stop_others() {
    let Some(py) = require_python("3.12") else {
        return;
    };
    if Command::new("slowhttptest").arg("-h").output().is_err() {
        skip("slowhttptest is not installed (apt-get install slowhttptest)");
        return;
    }
    raise_fd_limit();
    let site = Site::new();
    site.probe("app");
    site.config(&format!(
        "limits:\n  header_timeout: 3s\n  body_timeout: 3s\napps:\n  a:\n    python: {}\n    script: app/probe.py\n",
        py.display()
    ));
    let server = site.serve();
    let url = format!("http://{}/pid", server.addr);
    // Slowloris (headers) and slow POST bodies: 1000 connections each, trickling for 12 s.
    let mut attacks = Vec::new();
    for mode in ["-H", "-B"] {
        attacks.push(
            Command::new("slowhttptest")
                .args([
                    mode, "-c", "1000", "-r", "500", "-i", "2", "-l", "12", "-x", "24", "-p", "3",
                    "-u",
                ])
                .arg(&url)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("start slowhttptest"),
        );
    }
    std::thread::sleep(Duration::from_secs(3));
    let started = Instant::now();
    let mut served = 0;
    while started.elapsed() < Duration::from_secs(8) {
        let t = Instant::now();
        let r = server.get("x", "/pid");
        assert_eq!(r.status, 200);
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "a normal request took {:?}",
            t.elapsed()
        );
        served += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    for mut a in attacks {
        let _ = a.wait();
    }
    assert!(served > 20);
}

#[test]
fn clients_over_the_connection_limit_wait_and_are_then_served() {
    let Some(py) = require_python("3.12") else {
        return;
    };
    let site = Site::new();
    site.probe("app");
    site.config(&format!(
        "limits:\n  max_connections: 20\napps:\n  a:\n    python: {}\n    script: app/probe.py\n",
        py.display()
    ));
    let server = site.serve();
    let held: Vec<TcpStream> = (0..20)
        .map(|_| {
            let mut s = TcpStream::connect(server.addr).unwrap();
            s.write_all(b"GET /pid HTTP/1.1\r\nHost: x\r\n\r\n")
                .unwrap();
            let mut buf = [0u8; 256];
            let n = s.read(&mut buf).unwrap();
            assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
            s
        })
        .collect();
    // The 21st connects (the kernel's backlog) but is not served while all slots are taken.
    let mut waiting = TcpStream::connect(server.addr).unwrap();
    waiting
        .set_read_timeout(Some(Duration::from_millis(700)))
        .unwrap();
    waiting
        .write_all(b"GET /pid HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut buf = [0u8; 256];
    assert!(waiting.read(&mut buf).is_err(), "served over the limit");
    drop(held);
    waiting
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let n = waiting.read(&mut buf).expect("served once slots free up");
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    assert!(crate::harness::pid_alive(server.pid()));
}

/// Everything the server sends on one request until it closes the connection (or `limit`).
fn read_all(addr: std::net::SocketAddr, raw: &[u8], limit: Duration) -> (String, Duration) {
    let started = Instant::now();
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(limit)).expect("timeout");
    s.write_all(raw).expect("send");
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    (
        String::from_utf8_lossy(&out).into_owned(),
        started.elapsed(),
    )
}

#[test]
fn response_idle_timeout_cuts_silent_streams_and_spares_the_ones_within_it() {
    let Some(py) = require_python("3.13") else {
        return;
    };
    let site = Site::new();
    site.probe("app");
    site.config(&format!(
        "apps:\n  hasty:\n    python: {py}\n    script: app/probe.py\n    hosts: [hasty]\n    response_idle_timeout: 1s\n\
         \x20 patient:\n    python: {py}\n    script: app/probe.py\n    hosts: [patient]\n    worker: native\n    response_idle_timeout: 4s\n\
         \x20 forever:\n    python: {py}\n    script: app/probe.py\n    hosts: [forever]\n    response_idle_timeout: 0\n",
        py = py.display()
    ));
    let server = site.serve();
    let sse = |host: &str| {
        format!("GET /sse?gap=2&n=2 HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n")
    };
    // Two seconds of silence: longer than 1 s, so the stream is cut after the first event
    // (no last chunk: the client can tell), and the log names the app and the setting.
    let (got, took) = read_all(
        server.addr,
        sse("hasty").as_bytes(),
        Duration::from_secs(10),
    );
    assert!(got.contains("data: event 0"), "{got}");
    assert!(
        !got.contains("event 1") && !got.ends_with("0\r\n\r\n"),
        "{got}"
    );
    assert!(took < Duration::from_secs(2), "cut after {took:?}");
    let line = server
        .wait_log("response_idle_timeout", Duration::from_secs(5))
        .unwrap_or_else(|| panic!("no log line: {}", server.log_text()));
    assert!(line.contains("hasty") && line.contains("1s"), "{line}");
    // Within 4 s, and with no limit: both events and the end of the stream.
    for host in ["patient", "forever"] {
        let (got, _) = read_all(server.addr, sse(host).as_bytes(), Duration::from_secs(10));
        assert!(
            got.contains("data: event 1") && got.ends_with("0\r\n\r\n"),
            "{host}: {got}"
        );
    }
}

#[test]
fn parked_keepalive_connections_serve_again_close_on_time_and_at_shutdown() {
    let Some(py) = require_python("3.12") else {
        return;
    };
    let site = Site::new();
    site.probe("app");
    site.config(&format!(
        "limits:\n  keepalive_timeout: 3s\napps:\n  a:\n    python: {}\n    script: app/probe.py\n",
        py.display()
    ));
    let mut server = site.serve();
    // Idle past the park delay (250 ms) and back, twice: the same connection serves each time,
    // also a request sent in two pieces right after waking and two pipelined ones.
    let mut c = Client::connect(server.addr).expect("connect");
    c.reader_timeout(Duration::from_secs(10));
    assert_eq!(c.get("x", "/pid").expect("first").status, 200);
    std::thread::sleep(Duration::from_millis(1800));
    c.send(b"GET /pid HTTP/1.1\r\nHo").unwrap();
    std::thread::sleep(Duration::from_millis(200));
    c.send(b"st: x\r\n\r\n").unwrap();
    assert_eq!(c.read_response(false).expect("after a park").status, 200);
    std::thread::sleep(Duration::from_millis(1800));
    c.send(b"GET /pid HTTP/1.1\r\nHost: x\r\n\r\nGET /pid HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    assert_eq!(c.read_response(false).expect("pipelined 1").status, 200);
    assert_eq!(c.read_response(false).expect("pipelined 2").status, 200);
    // keepalive_timeout still counts from the last response, parked or not.
    let idle_from = Instant::now();
    let mut buf = [0u8; 64];
    let n = c.stream().read(&mut buf).expect("closed, not timed out");
    let waited = idle_from.elapsed();
    assert_eq!(n, 0, "closed without a byte");
    assert!(
        waited > Duration::from_millis(2500) && waited < Duration::from_millis(4500),
        "closed after {waited:?}, keepalive_timeout is 3s"
    );
    // At shutdown a parked connection closes at once; the server does not wait for it.
    let mut parked = Client::connect(server.addr).expect("connect");
    parked.reader_timeout(Duration::from_secs(10));
    assert_eq!(parked.get("x", "/pid").expect("served").status, 200);
    std::thread::sleep(Duration::from_millis(1500));
    let stopping = Instant::now();
    server.signal(libc::SIGTERM);
    assert!(server.wait_exit(Duration::from_secs(10)).is_some());
    assert!(
        stopping.elapsed() < Duration::from_secs(5),
        "stop took {:?}",
        stopping.elapsed()
    );
    assert_eq!(parked.stream().read(&mut buf).unwrap_or(0), 0);
}
