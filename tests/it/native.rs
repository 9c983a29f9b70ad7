//! The native worker as a process: carried by the binary alone, Python signal handlers, forked
//! children, SIGTERM draining.

use std::time::Duration;

use crate::harness::*;

#[test]
fn a_copied_binary_serves_native_apps_with_nothing_else_present() {
    let Some(py) = require_python("3.13") else {
        return;
    };
    // The binary alone, in an empty folder, started from another one: no repo, no target dir.
    let bin_dir = tempfile::tempdir().expect("temp dir");
    let binary = bin_dir.path().join("wsgimux");
    std::fs::copy(env!("CARGO_BIN_EXE_wsgimux"), &binary).expect("copy the binary");
    let site = Site::new();
    let config = site.one_app("solo", &py, &["worker: native"]);
    let server = Server::start_binary(&binary, config, site.path().join("log"));
    let r = server.get("x", "/env");
    assert!(
        r.text().contains("SERVER_SOFTWARE=wsgimux-native"),
        "{}\n{}",
        r.text(),
        server.log_text()
    );
    assert!(server
        .ready_lines
        .iter()
        .any(|l| l.contains("native worker")));
}

#[test]
fn native_worker_runs_signal_handlers_frees_forked_children_and_drains_on_sigterm() {
    let Some(py) = require_python("3.12") else {
        return;
    };
    let site = Site::new();
    site.one_app("sig", &py, &["worker: native", "threads: 2"]);
    let server = site.serve();
    let pid = server.app_pids("sig")[0];

    // A Python signal handler installed by the app runs while the worker sits in Rust.
    assert_eq!(server.get("x", "/signals").text(), "usr1=0\n");
    unsafe { libc::kill(pid as i32, libc::SIGUSR1) };
    let ran = eventually(Duration::from_secs(3), || {
        (server.get("x", "/signals").text() == "usr1=1\n").then_some(())
    });
    assert!(
        ran.is_some(),
        "SIGUSR1 handler did not run\n{}",
        server.log_text()
    );

    // A forked child does not inherit the worker's SIGTERM handling: SIGTERM stops it.
    let forked: u32 = server.get("x", "/fork").text().trim().parse().expect("pid");
    assert!(pid_alive(forked));
    unsafe { libc::kill(forked as i32, libc::SIGTERM) };
    let gone = eventually(Duration::from_secs(3), || {
        (!pid_alive(forked)).then_some(())
    });
    assert!(gone.is_some(), "forked child {forked} ignored SIGTERM");

    // SIGTERM while a request runs: the request finishes, then the worker exits and wsgimux
    // starts another process.
    let addr = server.addr;
    let slow = std::thread::spawn(move || {
        request(addr, b"GET /slow?s=1 HTTP/1.1\r\nHost: x\r\n\r\n").map(|r| (r.status, r.text()))
    });
    server.wait_in_flight("sig", 1);
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let answered = slow.join().expect("client thread");
    assert_eq!(
        answered.ok(),
        Some((200, "slept\n".to_string())),
        "{}",
        server.log_text()
    );
    let exited = eventually(Duration::from_secs(5), || (!pid_alive(pid)).then_some(()));
    assert!(exited.is_some(), "the worker did not exit after SIGTERM");
    let back = eventually(Duration::from_secs(10), || {
        let r = request(addr, b"GET /pid HTTP/1.1\r\nHost: x\r\n\r\n").ok()?;
        (r.status == 200 && r.text().trim() != pid.to_string()).then_some(())
    });
    assert!(back.is_some(), "no new process\n{}", server.log_text());
}
