//! Slot state transitions against real children: a tiny HTTP server (stdlib Python) as a
//! `command:` app, and a plain listener as an `upstream:`.

use std::path::Path;
use std::time::{Duration, Instant};

use super::*;
use crate::preflight::WorkerKind;

/// A tiny HTTP server on the Unix socket given as its argument.
const TINY_SERVER: &str = include_str!("../../tests/apps/unix_server.py");

fn app(yaml_app: &str, worker: WorkerKind) -> ReadyApp {
    let yaml = format!("apps:\n  tiny:\n{yaml_app}");
    let config = crate::config::from_yaml(&yaml, Path::new("/tmp/wsgimux-test.yaml"))
        .unwrap_or_else(|e| panic!("{e}"));
    ReadyApp {
        spec: config.apps[0].clone(),
        interpreter: None,
        worker,
        account: None,
    }
}

/// The tiny server as a `command:` app's keys, with `extra` keys.
fn tiny(extra: &str) -> String {
    format!(
        "    command: [python3, -c, {TINY_SERVER:?}, \"{{socket}}\"]\n    startup_timeout: 20s\n{extra}"
    )
}

fn supervisor(dir: &Path) -> Supervisor {
    let files = WorkerFiles {
        launcher: dir.join("unused.py"),
        native_dir: dir.join("unused"),
    };
    Supervisor::new(dir.to_path_buf(), files, None, Default::default())
}

/// Polls `f` every 20 ms until it gives a value or `limit` passes.
async fn eventually<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn alive(pid: u32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    unsafe { libc::kill(pid as libc::pid_t, 0) == 0 }
}

#[tokio::test]
async fn a_crashed_child_is_restarted_and_every_child_stops_at_shutdown() {
    let dir = tempfile::tempdir().expect("temp dir");
    let command = tiny("    processes: 2\n");
    let mut sup = supervisor(dir.path());
    let g = sup.start(&app(&command, WorkerKind::Command));
    let first = g
        .wait_ready(Duration::from_secs(20))
        .await
        .unwrap_or_else(|f| panic!("both processes answer: {f:?}"));
    assert_eq!(first.len(), 2);
    let views = g.views();
    assert!(views
        .iter()
        .all(|v| v.state == ProcessState::Ready && v.restarts == 0));
    assert!(views.iter().all(|v| v.endpoint.is_some()));

    // A process that dies is unpublished, restarted (Restarting → Starting → Ready) with a new
    // pid, and counted; the other keeps serving throughout.
    let victim = first[0];
    // SAFETY: kill(2) on a child this test started.
    unsafe { libc::kill(victim as libc::pid_t, libc::SIGKILL) };
    let replaced = eventually(Duration::from_secs(10), || {
        let pids = g.pids();
        (pids.len() == 2 && !pids.contains(&victim)).then_some(pids)
    })
    .await
    .unwrap_or_else(|| {
        panic!(
            "the killed process is replaced: {:?} {:?}",
            g.pids(),
            g.views()
                .iter()
                .map(|v| (v.state, v.pid, v.restarts, v.last_exit.clone()))
                .collect::<Vec<_>>()
        )
    });
    assert!(
        replaced.contains(&first[1]),
        "the other process was left alone"
    );
    let restarts: u32 = g.views().iter().map(|v| v.restarts).sum();
    assert_eq!(restarts, 1);
    assert!(g.views().iter().any(|v| v.last_exit.is_some()));

    sup.shutdown().await;
    for pid in replaced {
        assert!(!alive(pid), "pid {pid} outlived the supervisor's shutdown");
    }
    assert!(
        g.pids().is_empty(),
        "nothing stays published after shutdown"
    );
}

#[tokio::test]
async fn a_child_that_exits_during_start_up_is_a_start_failure_with_its_stderr() {
    let dir = tempfile::tempdir().expect("temp dir");
    let command = "    command: [python3, -c, \"import sys; sys.stderr.write('no such module: app\\\\n'); sys.exit(3)\", \"{socket}\"]\n";
    let mut sup = supervisor(dir.path());
    let g = sup.start(&app(command, WorkerKind::Command));
    let failure = g
        .wait_ready(Duration::from_secs(20))
        .await
        .expect_err("the child never answers");
    assert!(failure.reason.contains("exit code 3"), "{}", failure.reason);
    assert!(
        failure.reason.contains("no such module"),
        "{}",
        failure.reason
    );
    sup.stop(g.id);
    sup.shutdown().await;
}

#[tokio::test]
async fn an_upstream_is_routed_while_it_accepts_and_taken_out_when_it_stops() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listener");
    let addr = listener.local_addr().expect("address");
    let dir = tempfile::tempdir().expect("temp dir");
    let upstream = format!("    upstream: \"http://{addr}\"\n    startup_timeout: 5s\n");
    let mut sup = supervisor(dir.path());
    let g = sup.start(&app(&upstream, WorkerKind::Upstream));
    g.wait_ready(Duration::from_secs(5))
        .await
        .expect("the upstream accepts");
    assert_eq!(g.views()[0].state, ProcessState::Ready);
    drop(listener);
    let down = eventually(Duration::from_secs(10), || {
        (g.views()[0].state == ProcessState::Down).then_some(())
    })
    .await;
    assert!(down.is_some(), "two failed checks take it out");
    assert!(g.endpoints.borrow().ready.is_empty());
    sup.shutdown().await;
}

/// Readiness is decided from the supervisor's own state, not from the views people read: an
/// on-demand generation no request woke is ready as it is, whatever its views say; once woken,
/// it is ready when its process answers.
#[tokio::test]
async fn an_unwoken_on_demand_generation_is_ready_whatever_its_views_say() {
    let dir = tempfile::tempdir().expect("temp dir");
    let command = tiny("    start: on_demand\n");
    let mut sup = supervisor(dir.path());
    let g = sup.start(&app(&command, WorkerKind::Command));
    // A view that says something else (as status might, mid-update) changes nothing.
    if let Ok(mut views) = g.views.lock() {
        views[0].state = ProcessState::Starting;
    }
    let at_once = tokio::time::timeout(
        Duration::from_secs(1),
        g.wait_ready(Duration::from_secs(20)),
    );
    assert_eq!(
        at_once.await.expect("no wait").expect("ready"),
        Vec::<u32>::new()
    );
    // A request wakes it: now ready means its process answers.
    g.demand.as_ref().expect("on demand").wake();
    let pids = g
        .wait_ready(Duration::from_secs(20))
        .await
        .unwrap_or_else(|f| panic!("the woken process answers: {f:?}"));
    assert_eq!(pids.len(), 1);
    sup.shutdown().await;
}
