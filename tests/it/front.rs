//! The front door's own rules seen from outside: forwarded headers believed only from
//! `trusted_proxies`, listeners taken from systemd socket activation, and the front's threads
//! each accepting and serving connections.

use std::io::{BufRead, BufReader};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use crate::harness::*;

#[test]
fn forwarded_headers_are_believed_only_from_trusted_proxies() {
    let Some(py) = require_python("3.12") else {
        return;
    };
    let site = Site::new();
    site.probe("app");
    site.config(&format!(
        "trusted_proxies: [\"127.0.0.2/32\"]\napps:\n  a:\n    python: {}\n    script: app/probe.py\n    mount: /in\n",
        py.display()
    ));
    let server = site.serve();
    let claims = [
        "X-Forwarded-For: 10.1.2.3",
        "X-Forwarded-Proto: https",
        "SCRIPT_NAME: /outer",
        "Host: a.test",
    ];
    let env = |source| {
        let mut c = Command::new("curl");
        c.args(["-sS", "--max-time", "10", "--interface", source]);
        for h in claims {
            c.args(["-H", h]);
        }
        let out = c
            .arg(format!("http://{}/in/env", server.addr))
            .output()
            .expect("curl");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let untrusted = env("127.0.0.1");
    assert!(
        untrusted.contains("HTTP_X_FORWARDED_FOR=127.0.0.1 "),
        "{untrusted}"
    );
    assert!(untrusted.contains("wsgi.url_scheme=http "), "{untrusted}");
    assert!(untrusted.contains("SCRIPT_NAME=/in "), "{untrusted}");
    let trusted = env("127.0.0.2");
    assert!(
        trusted.contains("HTTP_X_FORWARDED_FOR=10.1.2.3, 127.0.0.2 "),
        "{trusted}"
    );
    assert!(trusted.contains("wsgi.url_scheme=https "), "{trusted}");
    assert!(trusted.contains("SCRIPT_NAME=/outer/in "), "{trusted}");
    // Disagreeing scheme headers from a trusted proxy are refused, as gunicorn does.
    let out = Command::new("curl")
        .args([
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--interface",
            "127.0.0.2",
        ])
        .args([
            "-H",
            "X-Forwarded-Proto: https",
            "-H",
            "X-Forwarded-Ssl: off",
        ])
        .arg(format!("http://{}/in/env", server.addr))
        .output()
        .expect("curl");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "400");
}

/// Starts `serve --config config` with `listener` passed as systemd passes sockets
/// (`LISTEN_FDS=1`, fd 3, named by its address). Does not wait for anything.
fn serve_activated(
    config: &std::path::Path,
    listener: &std::net::TcpListener,
    log: &std::path::Path,
) -> std::process::Child {
    let fd = listener.as_raw_fd();
    let addr = listener.local_addr().unwrap();
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg("LISTEN_PID=$$ LISTEN_FDS=1 LISTEN_FDNAMES=\"$2\" exec \"$0\" serve --config \"$1\"")
        .arg(BIN)
        .arg(config)
        .arg(addr.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(log).unwrap());
    // SAFETY: dup2 and fcntl only, between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(fd, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            libc::fcntl(3, libc::F_SETFD, 0);
            Ok(())
        });
    }
    cmd.spawn().expect("start wsgimux")
}

#[test]
fn listeners_come_from_systemd_socket_activation() {
    let Some(py) = require_python("3.12") else {
        return;
    };
    let site = Site::new();
    site.probe("app");
    // Bound here and kept open: wsgimux binding the address itself would fail (in use).
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let config = site.write(
        "wsgimux.yaml",
        &format!(
            "runtime_dir: {}\nlisten: [\"{addr}\"]\napps:\n  a:\n    python: {}\n    script: app/probe.py\n",
            site.path().join("run").display(),
            py.display()
        ),
    );
    let mut child = serve_activated(&config, &listener, &site.path().join("log"));
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let ready = stdout
        .lines()
        .map_while(Result::ok)
        .find(|l| l.starts_with("ready: "));
    let log = std::fs::read_to_string(site.path().join("log")).unwrap_or_default();
    assert_eq!(
        ready.as_deref(),
        Some(format!("ready: http://{addr}").as_str()),
        "{log}"
    );
    assert!(
        log.contains("1 listening socket(s) passed by the service manager"),
        "{log}"
    );
    let r = request(addr, b"GET /pid HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    assert_eq!(r.status, 200);
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let _ = child.wait();
    drop(listener);
}

/// The request that made systemd start the service (queued on the passed socket before
/// wsgimux ran) waits for its app's first start and is answered 200 by it, not 503.
#[test]
fn the_first_request_of_an_activated_service_waits_for_its_starting_app() {
    let Some(py) = require_python("3.12") else {
        return;
    };
    let site = Site::new();
    site.write(
        "slow/app.py",
        "import time\ntime.sleep(2)\ndef application(environ, start_response):\n    start_response('200 OK', [('Content-Type', 'text/plain')])\n    return [b'imported']\n",
    );
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let config = site.write(
        "wsgimux.yaml",
        &format!(
            "runtime_dir: {}\nlisten: [\"{addr}\"]\napps:\n  slow:\n    python: {}\n    script: slow/app.py\n    startup_timeout: 20s\n",
            site.path().join("run").display(),
            py.display()
        ),
    );
    let mut child = serve_activated(&config, &listener, &site.path().join("log"));
    // Sent at once: the kernel queues the connection on the passed socket.
    let started = std::time::Instant::now();
    let r = request(addr, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    let log = std::fs::read_to_string(site.path().join("log")).unwrap_or_default();
    let r = r.unwrap_or_else(|e| panic!("request: {e}\n{log}"));
    assert_eq!(r.status, 200, "{}\n{log}", r.text());
    assert_eq!(r.text(), "imported");
    assert!(started.elapsed() >= std::time::Duration::from_millis(1900));
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let _ = child.wait();
    drop(listener);
}

/// A socket the service manager passed that no `listen` entry names is a start error naming
/// both, not a port that accepts connections nobody answers.
#[test]
fn a_passed_socket_no_listen_entry_names_is_a_start_error() {
    let Some(py) = require_python("3.12") else {
        return;
    };
    let site = Site::new();
    site.probe("app");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let passed = listener.local_addr().unwrap();
    let config = site.write(
        "wsgimux.yaml",
        &format!(
            "runtime_dir: {}\nlisten: [\"127.0.0.1:0\"]\napps:\n  a:\n    python: {}\n    script: app/probe.py\n",
            site.path().join("run").display(),
            py.display()
        ),
    );
    let log = site.path().join("log");
    let mut child = serve_activated(&config, &listener, &log);
    let status = child.wait().expect("wsgimux exits");
    let said = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(!status.success(), "{said}");
    assert!(
        said.contains("no listen entry names") && said.contains(&passed.to_string()),
        "{said}"
    );
    assert!(said.contains("listen: 127.0.0.1:0"), "{said}");
}

/// Each front thread's CPU ticks (utime + stime), by its name (`front-N`).
fn front_thread_ticks(pid: u32) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for t in tasks.flatten() {
        let name = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        let stat = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
        let fields: Vec<&str> = stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .split_whitespace()
            .collect();
        let ticks = |i: usize| {
            fields
                .get(i)
                .and_then(|f| f.parse::<u64>().ok())
                .unwrap_or(0)
        };
        if name.trim().starts_with("front-") {
            out.push((name.trim().to_string(), ticks(11) + ticks(12)));
        }
    }
    out.sort();
    out
}

#[test]
fn every_front_thread_accepts_and_serves() {
    let Some(py) = require_python("3.12") else {
        return;
    };
    if !std::path::Path::new("/proc/self/task").exists() {
        return skip("no /proc: cannot see the front's threads");
    }
    let site = Site::new();
    site.probe("app");
    site.config(&format!(
        "apps:\n  probe:\n    python: {py}\n    script: app/probe.py\n    worker: native\n    threads: 4\n",
        py = py.display()
    ));
    let server = Server::start_with(
        std::path::Path::new(BIN),
        site.path().join("wsgimux.yaml"),
        site.path().join("wsgimux.log"),
        &[("WSGIMUX_FRONT_THREADS", "3")],
    );
    let names: Vec<String> = front_thread_ticks(server.pid())
        .into_iter()
        .map(|t| t.0)
        .collect();
    assert_eq!(names, ["front-0", "front-1", "front-2"]);

    // Waves of clients connecting at once, each with keep-alive requests: all answered, and
    // the connections spread over more than one thread (whichever is free takes the next).
    let addr = server.addr;
    for _ in 0..6 {
        let clients: Vec<_> = (0..12)
            .map(|_| {
                std::thread::spawn(move || {
                    let mut c = Client::connect(addr).ok()?;
                    c.reader_timeout(std::time::Duration::from_secs(10));
                    (0..200)
                        .all(|_| c.get("x", "/pid").is_ok_and(|r| r.status == 200))
                        .then_some(())
                })
            })
            .collect();
        for c in clients {
            assert!(c.join().unwrap().is_some(), "{}", server.log_text());
        }
    }
    let busy = front_thread_ticks(server.pid())
        .iter()
        .filter(|t| t.1 > 0)
        .count();
    assert!(busy >= 2, "{:?}", front_thread_ticks(server.pid()));
}

/// HTTP/1.0 keep-alive is kept only when the response says its length: a streamed body (the
/// connection's close is its end) is answered `Connection: close`, never `keep-alive` and
/// then a close; a framed one keeps the connection for the next request.
#[test]
fn http10_keep_alive_is_kept_only_for_responses_with_a_length() {
    let Some(py) = require_python("3.12") else {
        return;
    };
    let site = Site::new();
    site.one_app("a", &py, &[]);
    let server = site.serve();
    let keep = "Connection: keep-alive\r\n\r\n";
    let mut c = Client::connect(server.addr).expect("connect");
    c.send(format!("GET /ver HTTP/1.0\r\nHost: x\r\n{keep}").as_bytes())
        .expect("send");
    let framed = c.read_response(false).expect("framed response");
    assert_eq!(framed.header("connection"), Some("keep-alive"));
    c.send(format!("GET /download?n=100000 HTTP/1.0\r\nHost: x\r\n{keep}").as_bytes())
        .expect("send on the kept connection");
    // Read to the close: the body is all there, and the head said the close was coming.
    let streamed = c.read_response(false).expect("streamed response");
    assert_eq!(streamed.status, 200);
    assert_eq!(
        streamed.header("connection"),
        Some("close"),
        "{:?}",
        streamed.headers
    );
    assert_eq!(streamed.body.len(), 100_000);
}
