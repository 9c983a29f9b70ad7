//! Requests an app never answers: past `request_timeout` the client gets 504, the request
//! still counts against its process (it holds a thread), and a process whose threads are all
//! held is replaced — a new one first — so the app serves again without anyone restarting it.

use std::time::{Duration, Instant};

use crate::harness::*;

/// An app with two threads whose handler sleeps for an hour: two such requests are 504s, the
/// process is shown stuck and replaced, and the next request is answered by a new process.
fn a_process_whose_threads_are_all_stuck_is_replaced(python: &str, worker: &str) {
    let Some(py) = require_python(python) else {
        return;
    };
    let site = Site::new();
    site.probe("app");
    site.config(&format!(
        "apps:\n  s:\n    python: {py}\n    script: app/probe.py\n    worker: {worker}\n    threads: 2\n    request_timeout: 2s\n    drain_timeout: 1s\n",
        py = py.display()
    ));
    let server = site.serve();
    let before = server.get("x", "/pid").text();
    let addr = server.addr;
    let started = Instant::now();
    let blocked: Vec<_> = (0..2)
        .map(|_| {
            std::thread::spawn(move || {
                let mut c = Client::connect(addr).expect("connect");
                c.get("x", "/slow?s=3600").map(|r| r.status).ok()
            })
        })
        .collect();
    let statuses: Vec<_> = blocked
        .into_iter()
        .map(|t| t.join().ok().flatten())
        .collect();
    assert_eq!(statuses, [Some(504), Some(504)], "{}", server.log_text());
    let line = server.wait_log("is stuck: 2 of its requests", Duration::from_secs(5));
    assert!(line.is_some(), "{}", server.log_text());
    // Each blocked request's stack is logged once by its worker, naming the blocking line.
    let count = || {
        let log = server.log_text();
        (log.matches("request GET /slow?s=3600 has run").count() == 2).then_some(log)
    };
    let log = eventually(Duration::from_secs(5), count).unwrap_or_else(|| server.log_text());
    assert_eq!(
        log.matches("request GET /slow?s=3600 has run").count(),
        2,
        "{log}"
    );
    assert!(
        log.contains("past its request_timeout (2s)")
            && log.contains("time.sleep(float(q.get('s', '1')))"),
        "{log}"
    );
    // Answered by a new process, within the timeout and a start.
    let after = eventually(Duration::from_secs(15), || {
        let r = server.get("x", "/pid");
        (r.status == 200 && r.text() != before).then(|| r.text())
    });
    assert!(
        after.is_some(),
        "not replaced after {:?}: {}",
        started.elapsed(),
        server.log_text()
    );
    let status = crate::operating::status_json(&site.path().join("wsgimux.yaml"));
    let app = crate::operating::app(&status, "s");
    assert_eq!(app["processes"][0]["stuck_replacements"], 1, "{app}");
    // The stuck process is stopped after its drain_timeout.
    let old: u32 = before.trim().parse().expect("a pid");
    assert!(
        eventually(Duration::from_secs(15), || (!pid_alive(old)).then_some(())).is_some(),
        "the stuck process {old} still runs"
    );
}

#[test]
fn a_stuck_native_worker_is_replaced() {
    a_process_whose_threads_are_all_stuck_is_replaced("3.12", "native");
}

#[test]
fn a_stuck_portable_worker_on_python_2_7_is_replaced() {
    a_process_whose_threads_are_all_stuck_is_replaced("2.7", "portable");
}

/// `status --stacks APP` shows what every thread of the app's processes is doing now: a
/// request sleeping in the app names its line and the request.
fn stacks_show_a_sleeping_thread(python: &str, worker: &str) {
    let Some(py) = require_python(python) else {
        return;
    };
    let site = Site::new();
    site.probe("app");
    site.config(&format!(
        "apps:\n  s:\n    python: {py}\n    script: app/probe.py\n    worker: {worker}\n    threads: 2\n",
        py = py.display()
    ));
    let server = site.serve();
    let addr = server.addr;
    let sleeper = std::thread::spawn(move || {
        let mut c = Client::connect(addr).expect("connect");
        c.get("x", "/slow?s=4").map(|r| r.status).ok()
    });
    server.wait_in_flight("s", 1);
    let out = std::process::Command::new(BIN)
        .args(["status", "--stacks", "s", "--config"])
        .arg(site.path().join("wsgimux.yaml"))
        .output()
        .expect("run wsgimux status --stacks");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.starts_with("s process 0 (pid "), "{text}");
    assert!(text.contains("serving GET /slow?s=4 for "), "{text}");
    assert!(
        text.contains("time.sleep(float(q.get('s', '1')))"),
        "{text}"
    );
    assert!(text.contains(", idle, "), "the other thread: {text}");
    assert_eq!(sleeper.join().ok().flatten(), Some(200));
}

#[test]
fn stacks_of_a_native_worker() {
    stacks_show_a_sleeping_thread("3.12", "native");
}

#[test]
fn stacks_of_a_portable_worker_on_python_2_7() {
    stacks_show_a_sleeping_thread("2.7", "portable");
}
