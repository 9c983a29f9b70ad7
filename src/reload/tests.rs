//! The reload's steps one by one, on a real `Reloader` serving `command:` apps (a tiny stdlib
//! HTTP server, so no interpreter is probed): plan, prepare the front, start the generations,
//! switch, report — each step's promise checked where it is kept.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use super::apply::Refusal;
use super::*;
use crate::config::diff::AppChange;
use crate::proxy::Front;
use crate::runtime_dir::WorkerFiles;
use crate::trigger::Outcome;

const TINY_SERVER: &str = include_str!("../../tests/apps/unix_server.py");

/// An app running the tiny server; `extra` adds keys ("env: {V: 1}").
fn app(name: &str, extra: &str) -> String {
    format!(
        "  {name}:\n    command: [python3, -c, {TINY_SERVER:?}, \"{{socket}}\"]\n    hosts: [{name}.test]\n    startup_timeout: 10s\n    drain_timeout: 1s\n{extra}"
    )
}

/// A failing one: exits at once.
fn broken(name: &str) -> String {
    format!("  {name}:\n    command: [python3, -c, \"import sys; sys.exit(3)\", \"{{socket}}\"]\n    hosts: [{name}.test]\n    startup_timeout: 5s\n")
}

fn write(dir: &Path, listen: &str, apps: &str) -> PathBuf {
    let path = dir.join("wsgimux.yaml");
    let text = format!(
        "listen: [{listen}]\nruntime_dir: {}\napps:\n{apps}",
        dir.join("run").display()
    );
    std::fs::write(&path, text).expect("config");
    path
}

/// A reloader serving the config at `path`, as `serve` starts one.
async fn reloader(path: &Path) -> Reloader {
    let (config, apps) = crate::preflight::load(path)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let dir = path.parent().expect("dir").join("run");
    std::fs::create_dir_all(&dir).expect("run dir");
    let files = WorkerFiles {
        launcher: dir.join("unused.py"),
        native_dir: dir.join("unused"),
    };
    let metrics = Arc::new(Registry::default());
    let mut supervisor = Supervisor::new(dir, files, None, metrics.clone());
    let mut running = Vec::new();
    for a in &apps {
        let generation = supervisor.start(a);
        generation
            .wait_ready(std::time::Duration::from_secs(10))
            .await
            .expect("first start");
        running.push(RunningApp {
            app: Arc::new(a.clone()),
            generation,
        });
    }
    let front = Front::build(&config, None).expect("front");
    let listeners = crate::server::bind(&config.listen).await.expect("bind");
    let (triggers, _) = mpsc::channel(8);
    let overview = watch::channel(Arc::new(Overview::empty(path.to_path_buf(), None))).0;
    Reloader::new(
        path.to_path_buf(),
        config,
        running,
        supervisor,
        front,
        listeners,
        triggers,
        metrics,
        overview,
    )
}

fn generation_of(r: &Reloader, app: &str) -> u64 {
    r.running.apps[app].generation.id
}

#[tokio::test]
async fn plan_reads_the_file_and_diffs_it_against_what_runs_or_refuses_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = write(
        dir.path(),
        "\"127.0.0.1:0\"",
        &format!("{}{}", app("a", ""), app("b", "")),
    );
    let r = reloader(&path).await;
    write(
        dir.path(),
        "\"127.0.0.1:0\"",
        &format!("{}{}", app("a", "    env: {V: \"2\"}\n"), app("c", "")),
    );
    let Ok(plan) = r.plan().await else {
        panic!("a valid file plans")
    };
    let kinds: Vec<(&str, &str)> = plan
        .diff
        .apps
        .iter()
        .map(|c| {
            let kind = match c {
                AppChange::Restart { .. } => "restart",
                AppChange::Added(_) => "added",
                AppChange::Removed(_) => "removed",
                _ => "other",
            };
            (c.name(), kind)
        })
        .collect();
    assert_eq!(kinds, [("a", "restart"), ("c", "added"), ("b", "removed")]);
    assert!(
        plan.ready.contains_key("c"),
        "what the new apps need to start"
    );
    // Nothing ran: the plan changes nothing.
    assert_eq!(r.running.apps.len(), 2);
    // A broken file is a load refusal (the kind a watcher's read may wait out).
    std::fs::write(&path, "apps: [").expect("config");
    assert!(matches!(r.plan().await, Err(Refusal::Load(_))));
    r.shutdown().await;
}

#[tokio::test]
async fn prepare_front_binds_new_listeners_or_refuses_before_anything_starts() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = write(dir.path(), "\"127.0.0.1:0\"", &app("a", ""));
    let r = reloader(&path).await;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken_addr: SocketAddr = taken.local_addr().expect("addr");
    write(
        dir.path(),
        &format!("\"127.0.0.1:0\", \"{taken_addr}\""),
        &app("a", ""),
    );
    let Ok(plan) = r.plan().await else {
        panic!("plans")
    };
    let refused = r
        .prepare_front(&plan)
        .await
        .err()
        .expect("a taken address is refused");
    assert!(refused[0].contains(&taken_addr.to_string()), "{refused:?}");
    drop(taken);
    let prepared = r.prepare_front(&plan).await.expect("free now");
    assert_eq!(prepared.bound.len(), 1);
    assert!(prepared.front.is_none(), "no front setting changed");
    r.shutdown().await;
}

#[tokio::test]
async fn start_then_switch_moves_what_started_and_keeps_what_failed() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = write(
        dir.path(),
        "\"127.0.0.1:0\"",
        &format!("{}{}", app("a", ""), app("b", "")),
    );
    let mut r = reloader(&path).await;
    let (a_before, b_before) = (generation_of(&r, "a"), generation_of(&r, "b"));
    // a restarts fine; b's new command fails (it keeps its old processes); c is added broken
    // (kept, its routes answer 503 while it is retried).
    let b_broken = broken("b").replace("  b:\n", "  b:\n    env: {V: \"2\"}\n");
    write(
        dir.path(),
        "\"127.0.0.1:0\"",
        &format!(
            "{}{}{}",
            app("a", "    env: {V: \"2\"}\n"),
            b_broken,
            broken("c")
        ),
    );
    let plan = match r.plan().await {
        Ok(p) => p,
        Err(Refusal::Load(e) | Refusal::Reload(e)) => panic!("{e:?}"),
    };
    let front = r.prepare_front(&plan).await.expect("front");
    let started = r.start_generations(&plan).await;
    assert!(started.ready.contains_key("a"));
    assert!(
        started.failed.contains_key("b"),
        "{:?}",
        started.failed.keys()
    );
    assert!(started.added_failing.contains_key("c"));
    // Until the switch, what runs is as it was.
    assert_eq!(generation_of(&r, "a"), a_before);
    let (restarted, summary) = r.switch(plan, front, &started).await;
    assert_eq!(restarted, ["a".to_string()].into());
    assert!(summary.contains("restarted a"), "{summary}");
    assert!(
        summary.contains("b (kept its previous processes"),
        "{summary}"
    );
    assert_ne!(generation_of(&r, "a"), a_before);
    assert_eq!(generation_of(&r, "b"), b_before, "b keeps its processes");
    assert!(r.running.apps.contains_key("c"));
    // The live table leads each app to its generation now; the model holds.
    let live = r.live.borrow().clone();
    for (_, route) in live.routes.entries() {
        assert_eq!(
            route.target.generation,
            generation_of(&r, &route.target.name)
        );
    }
    assert_eq!(r.running.problems(), Vec::<String>::new());
    r.shutdown().await;
}

#[tokio::test]
async fn report_one_line_per_reload_through_the_one_exit() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = write(dir.path(), "\"127.0.0.1:0\"", &app("a", ""));
    let mut r = reloader(&path).await;
    let (report, _) = r
        .reload_config(&Cause::Command, false)
        .await
        .expect("a report");
    assert_eq!(report.outcome, Outcome::Unchanged);
    assert_eq!(report.number, 1);
    std::fs::write(&path, "apps: [").expect("config");
    // Only the watcher asked: a file that does not load is looked at again, not reported.
    assert!(r.reload_config(&Cause::ConfigFile, true).await.is_none());
    let (report, _) = r
        .reload_config(&Cause::ConfigFile, false)
        .await
        .expect("a report");
    assert_eq!(report.outcome, Outcome::Rejected);
    assert_eq!(report.number, 2, "the deferred look was not counted");
    assert_eq!(r.last_report().map(|l| l.number), Some(2));
    r.shutdown().await;
}
