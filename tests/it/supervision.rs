//! Children: restart after a crash without disturbing other apps, clean shutdown, no orphans.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::harness::*;

fn two_apps(site: &Site, py: &std::path::Path) {
    site.probe("app");
    site.config(&format!(
        "apps:\n  victim:\n    python: {py}\n    script: app/probe.py\n    mount: /victim\n  bystander:\n    python: {py}\n    script: app/probe.py\n    mount: /bystander\n    processes: 2\n",
        py = py.display()
    ));
}

#[test]
fn a_killed_child_is_restarted_and_other_apps_never_fail() {
    let Some(py) = require_python("3.13") else {
        return;
    };
    let site = Site::new();
    two_apps(&site, &py);
    let server = site.serve();
    let victim = server.app_pids("victim");
    assert_eq!(victim.len(), 1);
    assert_eq!(server.app_pids("bystander").len(), 2);

    // Keep-alive load on the other app for the whole test.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let load: Vec<_> = (0..4)
        .map(|_| {
            let (stop, ok, failed, addr) = (stop.clone(), ok.clone(), failed.clone(), server.addr);
            std::thread::spawn(move || {
                let mut c = Client::connect(addr).unwrap();
                while !stop.load(Ordering::Relaxed) {
                    match c.get("localhost", "/bystander/pid") {
                        Ok(r) if r.status == 200 => ok.fetch_add(1, Ordering::Relaxed),
                        _ => {
                            c = Client::connect(addr).unwrap();
                            failed.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                }
            })
        })
        .collect();

    std::thread::sleep(Duration::from_millis(300));
    // SAFETY: kill(2) on a child process of the server under test.
    unsafe { libc::kill(victim[0] as i32, libc::SIGKILL) };
    let killed_at = Instant::now();
    let mut saw_503 = false;
    let back = eventually(Duration::from_secs(5), || {
        let r = server.get("localhost", "/victim/pid");
        if r.status == 503 {
            assert!(r.header("retry-after").is_some(), "503 without Retry-After");
            saw_503 = true;
        }
        (r.status == 200).then(|| r.text().trim().parse::<u32>().unwrap())
    });
    let new_pid = back.expect("the killed app did not serve again within 5 s");
    eprintln!(
        "victim back after {:?} (saw 503: {saw_503})",
        killed_at.elapsed()
    );
    assert_ne!(new_pid, victim[0]);
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.join().unwrap();
    }
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "requests to the other app failed"
    );
    assert!(ok.load(Ordering::Relaxed) > 50);
    assert!(
        server.log_text().contains("[victim] process 0 (pid"),
        "exit not logged"
    );
}

/// Two apps served, with the pids of all their processes.
fn two_apps_served() -> Option<(Site, Server, Vec<u32>)> {
    let py = require_python("3.13")?;
    let site = Site::new();
    two_apps(&site, &py);
    let server = site.serve();
    let mut pids = server.app_pids("victim");
    pids.extend(server.app_pids("bystander"));
    Some((site, server, pids))
}

#[test]
fn sigterm_finishes_requests_in_flight_and_leaves_no_children() {
    let Some((_site, mut server, pids)) = two_apps_served() else {
        return;
    };
    let addr = server.addr;
    let slow =
        std::thread::spawn(move || request(addr, &get_bytes("localhost", "/victim/slow?s=1.5")));
    server.wait_in_flight("victim", 1);
    let sent = Instant::now();
    server.signal(libc::SIGTERM);
    let status = server
        .wait_exit(Duration::from_secs(25))
        .expect("wsgimux still running 25 s after SIGTERM");
    eprintln!("exited {:?} after SIGTERM", sent.elapsed());
    assert!(status.success(), "{status:?}");
    let r = slow.join().unwrap().expect("in-flight request failed");
    assert_eq!((r.status, r.text().as_str()), (200, "slept\n"));
    for pid in pids {
        assert!(!pid_alive(pid), "child {pid} outlived wsgimux");
    }
    assert!(
        std::net::TcpStream::connect(addr).is_err(),
        "still listening"
    );
}

#[test]
fn kill_9_of_wsgimux_takes_its_children_down() {
    let Some((_site, mut server, pids)) = two_apps_served() else {
        return;
    };
    server.signal(libc::SIGKILL);
    server
        .wait_exit(Duration::from_secs(5))
        .expect("not killed");
    let gone = eventually(Duration::from_secs(5), || {
        pids.iter().all(|&p| !pid_alive(p)).then_some(())
    });
    assert!(
        gone.is_some(),
        "children outlived a killed wsgimux: {pids:?}"
    );
}

#[test]
fn app_exceptions_are_500s_and_the_worker_keeps_serving() {
    for version in ["2.7", "3.13"] {
        let Some(py) = require_python(version) else {
            continue;
        };
        let site = Site::new();
        two_apps(&site, &py);
        let server = site.serve();
        let mut c = Client::connect(server.addr).unwrap();
        let before = c.get("localhost", "/victim/pid").unwrap().text();
        let r = request(server.addr, &get_bytes("localhost", "/victim/boom")).unwrap();
        assert_eq!(r.status, 500, "Python {version}");
        let after = c.get("localhost", "/victim/pid").unwrap().text();
        assert_eq!(before, after, "the worker process changed");
        let log = eventually(Duration::from_secs(3), || {
            let log = server.log_text();
            log.contains("RuntimeError: boom for the test")
                .then_some(log)
        })
        .expect("traceback not in the log");
        assert!(
            log.lines()
                .any(|l| l.contains("[victim:") && l.contains("RuntimeError: boom")),
            "traceback lines are not prefixed with the app name:\n{log}"
        );
    }
}

#[test]
fn an_app_that_fails_to_import_answers_503_and_others_are_served() {
    let Some(py) = require_python("3.13") else {
        return;
    };
    let site = Site::new();
    site.probe("app");
    site.config(&format!(
        "apps:\n  broken:\n    python: {py}\n    script: app/probe.py\n    mount: /broken\n    env: {{PROBE_FAIL_IMPORT: '1'}}\n  fine:\n    python: {py}\n    script: app/probe.py\n",
        py = py.display()
    ));
    let server = site.serve();
    let lines = server.ready_lines.join("\n");
    assert!(
        lines.contains("app broken: failed to start")
            && lines.contains("probe was told to fail at import"),
        "{lines}"
    );
    let r = server.get("localhost", "/broken/x");
    assert_eq!(r.status, 503);
    assert_eq!(r.header("retry-after"), Some("2"));
    assert_eq!(server.get("localhost", "/fine/ver").status, 200);
}

/// A child that outlives a `kill -9` of wsgimux (here: a `command:` server that ignores the
/// SIGTERM its parent-death signal sends; on macOS there is no such signal at all) is stopped
/// by the next start on the same runtime dir, found by its record (pid and start time).
#[test]
fn leftover_children_of_a_killed_instance_are_stopped_by_the_next_start() {
    let site = Site::new();
    site.write("stubborn.py", include_str!("../apps/unix_server.py"));
    site.config(
        "apps:\n  stubborn:\n    command: [python3, stubborn.py, \"{socket}\", --ignore-term]\n",
    );
    let mut first = site.serve();
    let pids = first.app_pids("stubborn");
    assert_eq!(pids.len(), 1);
    first.signal(libc::SIGKILL);
    first.wait_exit(Duration::from_secs(5)).expect("killed");
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        pid_alive(pids[0]),
        "the stubborn child survived wsgimux (as it may)"
    );

    let second = site.serve();
    let gone = eventually(Duration::from_secs(5), || {
        (!pid_alive(pids[0])).then_some(())
    });
    assert!(gone.is_some(), "pid {} outlived the next start", pids[0]);
    assert!(
        second.log_text().contains(&format!(
            "stopping pid {}, left running by a wsgimux that was killed",
            pids[0]
        )),
        "{}",
        second.log_text()
    );
    assert_eq!(
        second.get("example.com", "/").status,
        200,
        "the new one serves"
    );
}

/// An app that cannot start is a state, not a loop in the log: its traceback (the app's own
/// frames) is logged once at ERROR however often it is retried, `status` shows it `failing`
/// with the error, and its routes answer 503 "failed to start".
#[test]
fn a_crash_looping_app_logs_its_traceback_once_and_shows_failing() {
    let Some(py) = require_python("3.13") else {
        return;
    };
    let site = Site::new();
    site.probe("app");
    site.write("app/bad.wsgi", "import os\nimport no_such_module_here\n");
    site.config(&format!(
        "apps:\n  bad:\n    python: {py}\n    script: app/bad.wsgi\n    mount: /bad\n  fine:\n    python: {py}\n    script: app/probe.py\n",
        py = py.display()
    ));
    let server = site.serve();
    assert!(
        server
            .ready_lines
            .iter()
            .any(|l| l == "serving 1 of 2 app(s); failed to start (retrying): bad"),
        "{:?}",
        server.ready_lines
    );
    // Several retries (backoff 0.1, 0.2, 0.4, … s).
    let status = eventually(Duration::from_secs(20), || {
        let s = crate::operating::status_json(&site.path().join("wsgimux.yaml"));
        let p = crate::operating::app(&s, "bad")["processes"][0].clone();
        (p["state"] == "failing" && p["restarts"].as_u64() >= Some(4)).then_some(p)
    })
    .expect("the app shows failing");
    assert!(status["failing_since"].as_u64().is_some(), "{status}");
    let last_error = status["last_error"].as_str().unwrap_or_default();
    assert!(
        last_error.contains("No module named 'no_such_module_here'"),
        "{status}"
    );

    let log = server.log_text();
    assert_eq!(
        log.matches("Traceback (most recent call last)").count(),
        1,
        "{log}"
    );
    let error = log
        .lines()
        .find(|l| l.contains("ERROR") && l.contains("[bad] process 0 failed to start"))
        .unwrap_or_else(|| panic!("{log}"));
    assert!(error.contains("No module named"), "{error}");
    assert!(log.contains("bad.wsgi\", line 2"), "{log}");
    assert!(
        !log.contains("wsgimux_worker.py"),
        "the launcher's frames: {log}"
    );

    let r = server.get("localhost", "/bad/x");
    assert_eq!(r.status, 503);
    assert!(r.text().contains("failed to start"), "{}", r.text());
    assert!(
        !r.text().contains("no_such_module"),
        "the error reached a client"
    );
    assert_eq!(server.get("localhost", "/ver").status, 200);
}

/// A reload that adds an app that cannot start keeps the app and its routes: they answer 503
/// "failed to start" instead of falling through to the `/` app, and the reload says so.
#[test]
fn a_reload_that_adds_a_failing_app_keeps_its_routes() {
    let Some(py) = require_python("3.13") else {
        return;
    };
    let site = Site::new();
    site.probe("app");
    site.write("app/bad.wsgi", "raise RuntimeError('not today')\n");
    let base = format!(
        "apps:\n  root:\n    python: {py}\n    script: app/probe.py\n",
        py = py.display()
    );
    site.config(&base);
    let server = site.serve();
    assert_eq!(server.get("x", "/new/ver").status, 200, "the / app has it");
    site.config(&format!(
        "{base}  new:\n    python: {py}\n    script: app/bad.wsgi\n    mount: /new\n",
        py = py.display()
    ));
    let (status, out, err) = site.reload();
    assert_eq!(status.code(), Some(1), "{out}{err}");
    assert!(
        err.contains("added new (failed to start; its routes answer 503")
            && err.contains("app new: added, but it failed to start")
            && err.contains("not today"),
        "{err}"
    );
    let r = server.get("x", "/new/ver");
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(
        r.text().contains("The app new failed to start"),
        "{}",
        r.text()
    );
    assert_eq!(server.get("x", "/ver").status, 200);
    let s = crate::operating::status_json(&site.path().join("wsgimux.yaml"));
    assert_eq!(crate::operating::app(&s, "new")["name"], "new");
}
