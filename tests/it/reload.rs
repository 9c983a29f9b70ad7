//! Hot reload: edits of the config file (in place, by rename, by symlink swap; valid, invalid
//! and truncated) under continuous keep-alive load, with zero failed requests.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::harness::*;

/// The parts of the config the edits change.
#[derive(Clone, Debug)]
struct State {
    /// alpha also answers alias.test (a route-only change).
    alias: bool,
    /// beta's GEN env value (a change that restarts beta).
    generation: u32,
    /// The delta app exists (added / removed).
    delta: bool,
    /// A comment that changes nothing.
    comment: u32,
}

impl State {
    /// The config the reload tests start from.
    fn first() -> Self {
        State {
            alias: false,
            generation: 0,
            delta: false,
            comment: 0,
        }
    }

    fn yaml(&self, py: &Path, runtime: &Path) -> String {
        let py = py.display();
        let alias = if self.alias {
            r#"["alpha.test", "alias.test"]"#
        } else {
            r#"["alpha.test"]"#
        };
        let mut y = format!(
            "# edit {comment}\nruntime_dir: {runtime}\nlisten: [\"127.0.0.1:0\"]\napps:\n  alpha:\n    python: {py}\n    script: app/probe.py\n    hosts: {alias}\n    processes: 2\n    threads: 4\n  beta:\n    python: {py}\n    script: app/probe.py\n    mount: /beta\n    env: {{GEN: \"{generation}\"}}\n    drain_timeout: 5s\n  gamma:\n    python: {py}\n    script: app/probe.py\n    mount: /gamma\n",
            comment = self.comment,
            runtime = runtime.display(),
            generation = self.generation,
        );
        if self.delta {
            y.push_str(&format!(
                "  delta:\n    python: {py}\n    script: app/probe.py\n    mount: /delta\n"
            ));
        }
        y
    }
}

/// How an edit is written to disk.
#[derive(Clone, Copy, Debug)]
enum Save {
    /// Truncate and write the file (through the symlink, if it is one).
    InPlace,
    /// Write a temporary file beside it and rename it over (editors, config tools).
    Rename,
    /// Write a new file elsewhere and swap a symlink to it (Homebrew's etc/, deploy tools).
    Symlink,
}

fn save(dir: &Path, text: &str, how: Save, n: usize) {
    let config = dir.join("wsgimux.yaml");
    match how {
        Save::InPlace => std::fs::write(&config, text).expect("write"),
        Save::Rename => {
            let tmp = dir.join(format!(".wsgimux.yaml.{n}.tmp"));
            std::fs::write(&tmp, text).expect("write");
            std::fs::rename(&tmp, &config).expect("rename");
        }
        Save::Symlink => {
            let versions = dir.join("versions");
            std::fs::create_dir_all(&versions).expect("mkdir");
            let target = versions.join(format!("v{n}.yaml"));
            std::fs::write(&target, text).expect("write");
            let link = dir.join(format!(".link.{n}"));
            std::os::unix::fs::symlink(format!("versions/v{n}.yaml"), &link).expect("symlink");
            std::fs::rename(&link, &config).expect("swap symlink");
        }
    }
}

/// What a request may answer while the config changes under it.
#[derive(Clone, Copy)]
enum Expect {
    /// A route present in every config: 200 only.
    Always,
    /// A route some configs lack: 200 or 404, never anything else, never a hang.
    Sometimes,
}

const REQUESTS: &[(&str, &str, Expect)] = &[
    ("alpha.test", "/pid", Expect::Always),
    ("x.test", "/beta/getenv?name=GEN", Expect::Always),
    ("x.test", "/gamma/pid", Expect::Always),
    ("alias.test", "/pid", Expect::Sometimes),
    ("x.test", "/delta/pid", Expect::Sometimes),
];

#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    not_found: AtomicU64,
    failures: Mutex<Vec<String>>,
    alpha_pids: Mutex<BTreeSet<String>>,
    gamma_pids: Mutex<BTreeSet<String>>,
}

fn load_client(addr: std::net::SocketAddr, id: usize, stop: Arc<AtomicBool>, tally: Arc<Tally>) {
    let connect = || {
        let c = Client::connect(addr).expect("connect");
        c.reader_timeout(Duration::from_secs(15));
        c
    };
    let mut c = connect();
    let mut i = id;
    while !stop.load(Ordering::Relaxed) {
        let (host, path, expect) = REQUESTS[i % REQUESTS.len()];
        i += 1;
        match c.get(host, path) {
            Ok(r) if r.status == 200 => {
                tally.ok.fetch_add(1, Ordering::Relaxed);
                let body = r.text().trim().to_string();
                if host == "alpha.test" || host == "alias.test" {
                    tally.alpha_pids.lock().unwrap().insert(body);
                } else if path.starts_with("/gamma") {
                    tally.gamma_pids.lock().unwrap().insert(body);
                }
            }
            Ok(r) if r.status == 404 && matches!(expect, Expect::Sometimes) => {
                tally.not_found.fetch_add(1, Ordering::Relaxed);
            }
            Ok(r) => {
                tally.failures.lock().unwrap().push(format!(
                    "{host}{path}: {} {}",
                    r.status,
                    r.text().trim()
                ));
            }
            Err(e) => {
                tally
                    .failures
                    .lock()
                    .unwrap()
                    .push(format!("{host}{path}: {e}"));
                c = connect();
            }
        }
    }
}

#[test]
fn fifty_edits_under_load_fail_no_request() {
    let Some(py) = require_python("3.13") else {
        return;
    };
    let site = Site::new();
    site.probe("app");
    let runtime = site.path().join("run");
    let mut state = State::first();
    save(site.path(), &state.yaml(&py, &runtime), Save::InPlace, 0);
    let server = site.serve();
    let alpha_pids: BTreeSet<String> = server
        .app_pids("alpha")
        .iter()
        .map(u32::to_string)
        .collect();
    let gamma_pids: BTreeSet<String> = server
        .app_pids("gamma")
        .iter()
        .map(u32::to_string)
        .collect();
    assert_eq!(alpha_pids.len(), 2);

    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let clients: Vec<_> = (0..16)
        .map(|id| {
            let (stop, tally, addr) = (stop.clone(), tally.clone(), server.addr);
            std::thread::spawn(move || load_client(addr, id, stop, tally))
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));

    let mut route_latencies = Vec::new();
    let mut counts = std::collections::BTreeMap::<&str, u32>::new();
    let edits: usize = 54;
    let started = Instant::now();
    for n in 1..=edits {
        let how = [Save::InPlace, Save::Rename, Save::Symlink][(n + n / 6) % 3];
        let kind = ["route", "restart", "add-remove", "bad", "route", "comment"][n % 6];
        *counts.entry(kind).or_default() += 1;
        let before = state.clone();
        let text = match kind {
            "route" => {
                state.alias = !state.alias;
                state.yaml(&py, &runtime)
            }
            "restart" => {
                state.generation += 1;
                state.yaml(&py, &runtime)
            }
            "add-remove" => {
                state.delta = !state.delta;
                state.yaml(&py, &runtime)
            }
            "comment" => {
                state.comment += 1;
                state.yaml(&py, &runtime)
            }
            _ if n % 12 == 3 => "apps: [\n  this is: not yaml\n".to_string(),
            _ => {
                // A truncated save: the file ends in the middle of a key.
                let full = state.yaml(&py, &runtime);
                let cut = full.find("script").expect("a script key") + 3;
                full[..cut].to_string()
            }
        };
        save(site.path(), &text, how, n);
        let written = Instant::now();
        // How long until the new route answers, polled as fast as a client can.
        let route_latency = (kind == "route").then(|| {
            let want = if state.alias { 200 } else { 404 };
            let mut c = Client::connect(server.addr).expect("connect");
            eventually_fast(Duration::from_secs(5), || {
                (c.get("alias.test", "/pid").map(|r| r.status).ok() == Some(want))
                    .then(|| written.elapsed())
            })
            .unwrap_or_else(|| panic!("edit {n}: alias.test never answered {want}"))
        });
        let line = server.reload_line(n as u64);
        match kind {
            "bad" => {
                assert!(line.contains("rejected"), "edit {n}: {line}");
                state = before;
                // The previous config is still served.
                let r = server.get("x.test", "/beta/getenv?name=GEN");
                assert_eq!(r.text().trim(), state.generation.to_string());
            }
            "comment" => assert!(line.contains("nothing to change"), "edit {n}: {line}"),
            "route" => {
                assert!(line.contains("re-routed alpha (hosts)"), "edit {n}: {line}");
                assert!(line.contains("unchanged beta, gamma"), "edit {n}: {line}");
                route_latencies.push(route_latency.expect("measured"));
            }
            "restart" => {
                assert!(line.contains("restarted beta (env;"), "edit {n}: {line}");
                // The switch is visible: the new value serves at once.
                let r = server.get("x.test", "/beta/getenv?name=GEN");
                assert_eq!(r.status, 200);
                assert_eq!(r.text().trim(), state.generation.to_string(), "edit {n}");
            }
            _ => {
                let verb = if state.delta {
                    "added delta"
                } else {
                    "removed delta"
                };
                assert!(line.contains(verb), "edit {n}: {line}");
                let want = if state.delta { 200 } else { 404 };
                assert_eq!(server.get("x.test", "/delta/pid").status, want, "edit {n}");
            }
        }
    }
    let editing = started.elapsed();
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().expect("load client");
    }

    let failures = tally.failures.lock().unwrap();
    let ok = tally.ok.load(Ordering::Relaxed);
    let not_found = tally.not_found.load(Ordering::Relaxed);
    let max_route = route_latencies.iter().max().copied().unwrap_or_default();
    let mean_route = route_latencies.iter().sum::<Duration>() / route_latencies.len() as u32;
    println!(
        "{edits} edits {counts:?} in {:.1}s under 16 keep-alive clients: {ok} × 200, {not_found} × 404 (removed routes), {} failed; route-only reload took effect after {:.0} ms on average, {:.0} ms at most",
        editing.as_secs_f64(),
        failures.len(),
        mean_route.as_secs_f64() * 1000.0,
        max_route.as_secs_f64() * 1000.0,
    );
    assert!(
        failures.is_empty(),
        "{} failed requests, first ones: {:#?}",
        failures.len(),
        &failures[..failures.len().min(10)]
    );
    assert!(ok > 1000, "too little load to mean anything: {ok}");
    assert!(
        max_route < Duration::from_secs(1),
        "a route-only reload took {max_route:?}"
    );
    // Untouched apps kept their processes: every response came from the start-up pids.
    assert_eq!(*tally.alpha_pids.lock().unwrap(), alpha_pids);
    assert_eq!(*tally.gamma_pids.lock().unwrap(), gamma_pids);
    for pid in alpha_pids.iter().chain(&gamma_pids) {
        assert!(pid_alive(pid.parse().unwrap()), "pid {pid} is gone");
    }
}

/// Like `eventually`, polling every millisecond.
fn eventually_fast<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Some(v) = f() {
            return Some(v);
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    None
}

#[test]
fn a_new_generation_that_fails_to_import_is_rolled_back() {
    let Some(py) = require_python("3.13") else {
        return;
    };
    let site = Site::new();
    site.one_app("web", &py, &[]);
    let server = site.serve();
    let old_pid = server.app_pids("web")[0];

    site.one_app("web", &py, &["env: {PROBE_FAIL_IMPORT: \"1\"}"]);
    let (status, _, stderr) = site.reload();
    assert_eq!(status.code(), Some(1), "stderr: {stderr}");
    assert!(stderr.contains("app web"), "{stderr}");
    assert!(
        stderr.contains("RuntimeError: probe was told to fail at import"),
        "the traceback's last line is shown: {stderr}"
    );
    // The old generation still serves, and the log holds the child's stderr.
    let r = server.get("x.test", "/pid");
    assert_eq!(r.status, 200);
    assert_eq!(r.text().trim(), old_pid.to_string());
    let log = server.log_text();
    assert!(log.contains("Traceback (most recent call last)"), "{log}");

    // A new generation that never answers within startup_timeout is rolled back too.
    site.one_app(
        "web",
        &py,
        &[
            "env: {PROBE_SLEEP_IMPORT: \"30\"}",
            "startup_timeout: 700ms",
        ],
    );
    let t = Instant::now();
    let (status, _, stderr) = site.reload();
    assert_eq!(status.code(), Some(1), "stderr: {stderr}");
    assert!(stderr.contains("within startup_timeout 0.7s"), "{stderr}");
    assert!(t.elapsed() < Duration::from_secs(10));
    assert_eq!(
        server.get("x.test", "/pid").text().trim(),
        old_pid.to_string()
    );

    // Fixed: the reload applies and a new process serves.
    site.one_app("web", &py, &["env: {FIXED: \"1\"}"]);
    let (status, stdout, stderr) = site.reload();
    assert!(status.success(), "stdout: {stdout} stderr: {stderr}");
    assert!(stdout.contains("restarted web (env"), "{stdout}");
    let r = server.get("x.test", "/getenv?name=FIXED");
    assert_eq!(r.text().trim(), "1");
    assert!(
        eventually(Duration::from_secs(15), || (!pid_alive(old_pid))
            .then_some(()))
        .is_some(),
        "the old generation was not stopped"
    );
    // No process of the failed generations is left behind.
    let children = child_pids(server.pid());
    assert_eq!(children.len(), 1, "children: {children:?}");
}

#[test]
fn requests_in_flight_finish_on_the_generation_they_started_on() {
    let Some(py) = require_python("3.13") else {
        return;
    };
    let site = Site::new();
    site.probe("app");
    let both = |extra: &str, with_other: bool| {
        let other = if with_other {
            format!(
                "  other:\n    python: {}\n    script: app/probe.py\n    mount: /other\n",
                py.display()
            )
        } else {
            String::new()
        };
        site.config(&format!(
            "apps:\n  web:\n    python: {py}\n    script: app/probe.py\n    mount: /web\n{extra}{other}",
            py = py.display()
        ));
    };
    both("", true);
    let server = site.serve();
    let old_pid = server.app_pids("web")[0];

    // Slow requests to an app being restarted and to an app being removed.
    let addr = server.addr;
    let slow = |path: &'static str| {
        std::thread::spawn(move || {
            let t = Instant::now();
            let r = request(addr, &get_bytes("x.test", path)).expect("slow request");
            (r.status, r.text(), t.elapsed())
        })
    };
    let restarting = slow("/web/slow?s=1.5");
    let removed = slow("/other/slow?s=1.5");
    server.wait_in_flight("web", 1);
    server.wait_in_flight("other", 1);
    both("    env: {V: \"2\"}\n", false);
    let line = server.reload_line(1);
    assert!(
        line.contains("restarted web") && line.contains("removed other"),
        "{line}"
    );
    // New requests go to the new generation and the removed app is gone at once.
    assert_ne!(
        server.get("x.test", "/web/pid").text().trim(),
        old_pid.to_string()
    );
    assert_eq!(server.get("x.test", "/other/pid").status, 404);
    // The requests in flight complete on the old processes.
    for (what, h) in [("restarted", restarting), ("removed", removed)] {
        let (status, body, took) = h.join().expect("slow client");
        assert_eq!((status, body.trim()), (200, "slept"), "{what} app");
        assert!(took >= Duration::from_millis(1400), "{what}: {took:?}");
    }
    assert!(
        eventually(Duration::from_secs(10), || (!pid_alive(old_pid))
            .then_some(()))
        .is_some(),
        "the drained generation was not stopped"
    );
}

#[test]
fn sighup_reloads_and_the_reload_command_needs_a_server() {
    let Some(py) = require_python("3.13") else {
        return;
    };
    let site = Site::new();
    // No server yet: exit 2 and say so.
    site.one_app("web", &py, &[]);
    let (status, _, stderr) = site.reload();
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("no wsgimux is serving this config"),
        "{stderr}"
    );

    let server = site.serve();
    server.signal(libc::SIGHUP);
    let line = server.reload_line(1);
    assert!(line.contains("(SIGHUP): nothing to change"), "{line}");
    assert_eq!(server.get("x.test", "/pid").status, 200);

    // A second server for the same config refuses to start (and to touch the first's sockets).
    let out = std::process::Command::new(BIN)
        .args(["serve", "--config"])
        .arg(site.path().join("wsgimux.yaml"))
        .output()
        .expect("second serve");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("already serves this config"), "{err}");
    assert_eq!(server.get("x.test", "/pid").status, 200);
    let (status, stdout, _) = site.reload();
    assert!(status.success());
    assert!(
        stdout.contains("(wsgimux reload): nothing to change"),
        "{stdout}"
    );

    // An invalid file: exit 1 with the error at its line and column; still serving.
    site.one_app("web", &py, &["threads: lots"]);
    let (status, _, stderr) = site.reload();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("rejected, still serving the previous config"),
        "{stderr}"
    );
    assert!(
        stderr.contains("wsgimux.yaml:7:14: app \"web\", key \"threads\""),
        "{stderr}"
    );
    assert_eq!(server.get("x.test", "/pid").status, 200);
}

#[test]
fn listen_changes_bind_the_new_address_before_closing_the_old() {
    let Some(py) = require_python("3.13") else {
        return;
    };
    let site = Site::new();
    site.one_app("web", &py, &[]);
    let server = site.serve();
    let free_port = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
    };
    let new_addr = free_port();
    let runtime = site.path().join("run");
    let write = |listen: &str| {
        std::fs::write(
            site.path().join("wsgimux.yaml"),
            format!(
                "runtime_dir: {}\nlisten: {listen}\napps:\n  web:\n    python: {}\n    script: app/probe.py\n",
                runtime.display(),
                py.display()
            ),
        )
        .expect("write");
    };
    // A kept-alive connection on the old listener survives the listener's removal.
    let mut kept = Client::connect(server.addr).expect("connect");
    assert_eq!(kept.get("x.test", "/pid").expect("get").status, 200);

    write(&format!("[\"{new_addr}\"]"));
    let line = server.reload_line(1);
    assert!(line.contains(&format!("listening on {new_addr}")), "{line}");
    assert!(line.contains("closed 127.0.0.1:0"), "{line}");
    assert_eq!(
        request(new_addr, &get_bytes("x.test", "/pid"))
            .expect("new")
            .status,
        200
    );
    assert!(
        std::net::TcpStream::connect(server.addr).is_err(),
        "the old listener is still open"
    );
    assert_eq!(kept.get("x.test", "/pid").expect("kept").status, 200);

    // An address that cannot be bound rejects the whole reload; nothing changes.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken_addr = taken.local_addr().expect("addr");
    write(&format!("[\"{new_addr}\", \"{taken_addr}\"]"));
    let line = server.reload_line(2);
    assert!(
        line.contains("rejected") && line.contains(&taken_addr.to_string()),
        "{line}"
    );
    assert_eq!(
        request(new_addr, &get_bytes("x.test", "/pid"))
            .expect("still")
            .status,
        200
    );
}

#[test]
fn reload_on_changes_swaps_code_without_failed_requests() {
    let Some(py) = require_python("3.13") else {
        return;
    };
    let site = Site::new();
    let app = |version: &str| {
        site.write(
            "code/app.py",
            &format!(
                "VERSION = {version}\n\ndef application(environ, start_response):\n    start_response('200 OK', [('Content-Type', 'text/plain')])\n    return [('version %s' % VERSION).encode()]\n"
            ),
        )
    };
    app("1");
    site.config(&format!(
        "apps:\n  dev:\n    python: {}\n    script: code/app.py\n    reload_on_changes: true\n    processes: 2\n",
        py.display()
    ));
    let server = site.serve();
    server
        .wait_log("reload_on_changes: watching", Duration::from_secs(5))
        .expect("the code watcher started");

    let load = KeepAliveLoad::start(server.addr, 8, "x.test", "/");
    load.wait_running();
    app("2");
    let line = server.restart_line(1);
    assert!(line.contains("restarted dev (code"), "{line}");
    assert_eq!(server.get("x.test", "/").text(), "version 2");

    // A syntax error keeps the running code; fixing it applies.
    app("3 +");
    let line = server.restart_line(2);
    assert!(
        line.contains("not applied") && line.contains("SyntaxError"),
        "{line}"
    );
    assert_eq!(server.get("x.test", "/").text(), "version 2");
    app("4");
    let line = server.restart_line(3);
    assert!(line.contains("restarted dev (code"), "{line}");
    assert_eq!(server.get("x.test", "/").text(), "version 4");
    // Files that are not code change nothing.
    site.write("code/notes.txt", "hello");
    site.write("code/__pycache__/app.cpython-313.pyc", "x");
    std::thread::sleep(Duration::from_millis(800));
    assert!(!server.log_text().contains("restart #4 ("));

    let (failures, seen, _) = load.finish();
    assert!(failures.is_empty(), "failed requests: {failures:?}");
    assert!(
        seen.contains("version 1") && seen.contains("version 4"),
        "{seen:?}"
    );
}

/// The config watcher on notify's poll backend (`WSGIMUX_WATCHER=poll`), standing in for a
/// backend that is not inotify (FSEvents coalesces and reports renames its own way): edits in
/// place, by rename, by symlink swap and through the swapped symlink are each one reload, and
/// a file caught half-written is read once it is whole, not rejected.
#[test]
fn config_edits_are_seen_on_the_poll_backend() {
    let Some(py) = require_python("3.12") else {
        return;
    };
    let site = Site::new();
    site.probe("app");
    let runtime = site.path().join("run");
    let mut state = State::first();
    save(site.path(), &state.yaml(&py, &runtime), Save::InPlace, 0);
    let server = Server::start_with(
        Path::new(BIN),
        site.path().join("wsgimux.yaml"),
        site.path().join("wsgimux.log"),
        &[("WSGIMUX_WATCHER", "poll")],
    );
    let saves = [Save::InPlace, Save::Rename, Save::Symlink, Save::InPlace];
    for (i, how) in saves.into_iter().enumerate() {
        state.alias = !state.alias;
        save(site.path(), &state.yaml(&py, &runtime), how, i + 1);
        let line = server.reload_line(i as u64 + 1);
        assert!(
            line.contains("(config file changed)") && line.contains("re-routed alpha (hosts)"),
            "{how:?}: {line}"
        );
    }
    // Half a file, then the rest: one reload of the whole file.
    state.alias = !state.alias;
    let text = state.yaml(&py, &runtime);
    let config = site.path().join("wsgimux.yaml");
    std::fs::write(&config, &text[..text.len() / 2]).expect("write half");
    std::thread::sleep(Duration::from_millis(150));
    std::fs::write(&config, &text).expect("write the rest");
    let line = server.reload_line(5);
    assert!(line.contains("re-routed alpha (hosts)"), "{line}");
    let want = if state.alias { 200 } else { 404 };
    assert_eq!(server.get("alias.test", "/").status, want, "{line}");
}

/// `wsgimux restart APP` (a code deploy without a config edit) and the app's `restart_file`
/// (touched, Passenger-style) replace every process without a failed request under keep-alive
/// load; an unknown app is refused.
#[test]
fn restart_command_and_restart_file_replace_every_process_without_failed_requests() {
    let Some(py) = require_python("3.13") else {
        return;
    };
    let site = Site::new();
    site.probe("app");
    site.write("app/tmp/.keep", "");
    site.config(&format!(
        "apps:\n  web:\n    python: {}\n    script: app/probe.py\n    processes: 2\n    restart_file: app/tmp/restart.txt\n",
        py.display()
    ));
    let server = site.serve();
    let pids_now = || {
        let mut seen = BTreeSet::new();
        let mut c = Client::connect(server.addr).expect("connect");
        for _ in 0..40 {
            seen.insert(c.get("x", "/pid").expect("pid").text().trim().to_string());
        }
        seen
    };
    let load = KeepAliveLoad::start(server.addr, 6, "x", "/pid");
    load.wait_running();

    let before = pids_now();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_wsgimux"))
        .args(["restart", "web", "--config"])
        .arg(site.path().join("wsgimux.yaml"))
        .output()
        .expect("wsgimux restart");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(said.contains("restarted web (pid"), "{said}");
    let after = pids_now();
    assert_eq!(after.len(), 2, "{after:?}");
    assert!(after.is_disjoint(&before), "{before:?} → {after:?}");

    // Touching the restart file does the same.
    std::fs::write(site.path().join("app/tmp/restart.txt"), "").expect("touch");
    let line = server.restart_line(2);
    assert!(
        line.contains("restart.txt changed") && line.contains("restarted web"),
        "{line}"
    );
    let again = pids_now();
    assert!(again.is_disjoint(&after), "{after:?} → {again:?}");

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_wsgimux"))
        .args(["restart", "nope", "--config"])
        .arg(site.path().join("wsgimux.yaml"))
        .output()
        .expect("wsgimux restart");
    assert_eq!(out.status.code(), Some(1));
    let said = String::from_utf8_lossy(&out.stderr);
    // Said once, in a restart's own words: never a "config reload".
    assert_eq!(
        said.matches("no app is named \"nope\"").count(),
        1,
        "{said}"
    );
    let line = server.restart_line(3);
    assert!(
        line.contains("restart #3 (wsgimux restart nope): rejected, nothing restarted"),
        "{line}"
    );
    assert!(!line.contains("config"), "{line}");
    assert!(
        !server.log_text().contains("reload #"),
        "{}",
        server.log_text()
    );

    let (failures, _, served) = load.finish();
    assert!(failures.is_empty(), "failed requests: {failures:?}");
    assert!(served > 100);
}

/// `wsgimux restart` of an app that never started (its import fails) says so — "failed to
/// start", never that previous processes keep serving — and `status` shows the outcome in the
/// summary's words, the error once.
#[test]
fn restarting_an_app_that_never_started_says_it_failed_to_start() {
    let Some(py) = require_python("3.12") else {
        return;
    };
    let site = Site::new();
    site.write("app/broken.py", "raise RuntimeError('no database')\n");
    site.config(&format!(
        "apps:\n  broken:\n    python: {}\n    script: app/broken.py\n    startup_timeout: 5s\n",
        py.display()
    ));
    let server = site.serve();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_wsgimux"))
        .args(["restart", "broken", "--config"])
        .arg(site.path().join("wsgimux.yaml"))
        .output()
        .expect("wsgimux restart");
    assert_eq!(out.status.code(), Some(1));
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("not applied") && said.contains("failed to start broken"),
        "{said}"
    );
    assert!(
        !said.contains("keep serving") && !said.contains("kept the previous"),
        "{said}"
    );
    let line = server.restart_line(1);
    assert!(line.contains("failed to start broken"), "{line}");
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_wsgimux"))
        .args(["status", "--config"])
        .arg(site.path().join("wsgimux.yaml"))
        .output()
        .expect("wsgimux status");
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(
        text.contains("last restart: #1 ") && text.contains("): not applied"),
        "{text}"
    );
    assert!(!text.contains("partly_applied"), "{text}");
}

/// Keep-alive clients asking `host` for `path` until stopped: what failed, the distinct bodies
/// seen, how many were answered.
struct KeepAliveLoad {
    stop: Arc<AtomicBool>,
    failures: Arc<Mutex<Vec<String>>>,
    seen: Arc<Mutex<BTreeSet<String>>>,
    served: Arc<AtomicU64>,
    clients: Vec<std::thread::JoinHandle<()>>,
}

impl KeepAliveLoad {
    /// Waits (up to 10 s) until every client has been answered a few times: the load runs.
    fn wait_running(&self) {
        let want = 3 * self.clients.len() as u64;
        let ran = eventually(Duration::from_secs(10), || {
            (self.served.load(Ordering::Relaxed) >= want).then_some(())
        });
        assert!(ran.is_some(), "the load never got going");
    }

    fn start(addr: std::net::SocketAddr, n: usize, host: &'static str, path: &'static str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::new(Mutex::new(BTreeSet::new()));
        let served = Arc::new(AtomicU64::new(0));
        let clients = (0..n)
            .map(|_| {
                let (stop, failures, seen, served) =
                    (stop.clone(), failures.clone(), seen.clone(), served.clone());
                std::thread::spawn(move || {
                    let mut c = Client::connect(addr).expect("connect");
                    while !stop.load(Ordering::Relaxed) {
                        match c.get(host, path) {
                            Ok(r) if r.status == 200 => {
                                served.fetch_add(1, Ordering::Relaxed);
                                seen.lock().unwrap().insert(r.text());
                            }
                            Ok(r) => {
                                failures
                                    .lock()
                                    .unwrap()
                                    .push(format!("{} {}", r.status, r.text()))
                            }
                            Err(e) => {
                                failures.lock().unwrap().push(e.to_string());
                                c = Client::connect(addr).expect("reconnect");
                            }
                        }
                    }
                })
            })
            .collect();
        KeepAliveLoad {
            stop,
            failures,
            seen,
            served,
            clients,
        }
    }

    fn finish(self) -> (Vec<String>, BTreeSet<String>, u64) {
        self.stop.store(true, Ordering::Relaxed);
        for c in self.clients {
            c.join().expect("client");
        }
        let failures = self.failures.lock().unwrap().clone();
        let seen = self.seen.lock().unwrap().clone();
        (failures, seen, self.served.load(Ordering::Relaxed))
    }
}

/// One rule for what a request reads: everything the proxy decides for it comes from the
/// snapshot it takes on arrival, so on one kept-alive connection the request after a reload
/// gets the new `trusted_proxies` together with the new routes — never new routes with the
/// connection's old trust.
#[test]
fn a_kept_alive_connection_gets_a_reloads_trust_with_its_routes() {
    let Some(py) = require_python("3.13") else {
        return;
    };
    let site = Site::new();
    site.probe("app");
    let config = |trusted: &str, hosts: &str| {
        site.config(&format!(
            "{trusted}apps:\n  web:\n    python: {}\n    script: app/probe.py\n    hosts: [{hosts}]\n",
            py.display()
        ));
    };
    config("", "web.test");
    let server = site.serve();
    let mut c = Client::connect(server.addr).expect("connect");
    c.reader_timeout(Duration::from_secs(10));
    let mut ask = |host: &str| {
        let head =
            format!("GET /env HTTP/1.1\r\nHost: {host}\r\nX-Forwarded-For: 10.9.9.9\r\n\r\n");
        c.send(head.as_bytes()).expect("send");
        c.read_response(false).expect("response")
    };
    let before = ask("web.test");
    assert_eq!(
        before.env("HTTP_X_FORWARDED_FOR").as_deref(),
        Some(&b"127.0.0.1"[..]),
        "not trusted yet"
    );
    assert_eq!(ask("alias.test").status, 404);
    config(
        "trusted_proxies: [\"127.0.0.1/32\"]\n",
        "web.test, alias.test",
    );
    let (status, out, err) = site.reload();
    assert!(status.success(), "{out}{err}");
    // The same connection: the new route and the new trust, together.
    let after = ask("alias.test");
    assert_eq!(after.status, 200, "{}", after.text());
    assert_eq!(
        after.env("HTTP_X_FORWARDED_FOR").as_deref(),
        Some(&b"10.9.9.9, 127.0.0.1"[..]),
        "{}",
        after.text()
    );
}
