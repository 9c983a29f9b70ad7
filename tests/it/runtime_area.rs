//! Where a server without `runtime_dir` keeps its sockets, as deploys use it: found by the
//! config's path as given through a `current` symlink swap and a ConfigMap `..data` swap;
//! short under any `$TMPDIR`; and cleaned up, so that serve/stop cycles leave nothing behind.
//! Each test gets its own area by `XDG_RUNTIME_DIR` (as systemd gives each user one).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::harness::{self, Server, Site};

/// An app that answers with `RELEASE` (from its file) and the environment's `TAG`.
const RELEASE_APP: &str = "import os\nRELEASE = '{release}'\n\ndef application(environ, start_response):\n    start_response('200 OK', [('Content-Type', 'text/plain')])\n    return [('release %s tag %s' % (RELEASE, os.environ.get('TAG', '-'))).encode()]\n";

/// `wsgimux ARGS --config CONFIG` with `XDG_RUNTIME_DIR` set: (exit code, stdout, stderr).
fn cli(args: &[&str], config: &Path, xdg: &Path) -> (i32, String, String) {
    let out = Command::new(harness::BIN)
        .args(args)
        .arg("--config")
        .arg(config)
        .env("XDG_RUNTIME_DIR", xdg)
        .output()
        .expect("run wsgimux");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Points `link` at `target` in one step, as `ln -sfn` and deploy tools do (a new link under a
/// temporary name, renamed over the old one).
fn swap_link(link: &Path, target: &Path) {
    let name = link.file_name().expect("a link name").to_string_lossy();
    let tmp = link.with_file_name(format!(".{name}.swap"));
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp).expect("symlink");
    std::fs::rename(&tmp, link).expect("rename over the link");
}

fn xdg_of(site: &Site) -> PathBuf {
    let xdg = site.path().join("xdg");
    std::fs::create_dir_all(&xdg).expect("xdg dir");
    xdg
}

fn serve(site: &Site, config: &Path, xdg: &Path) -> Server {
    Server::start_with(
        Path::new(harness::BIN),
        config.to_path_buf(),
        site.path().join("wsgimux.log"),
        &[("XDG_RUNTIME_DIR", &xdg.display().to_string())],
    )
}

/// Capistrano's layout: `current` → `releases/N`, the server started with
/// `current/wsgimux.yaml`. After the swap the CLI still finds the server by that path,
/// `restart` runs the new release's code, and the release's own path finds it too.
#[test]
fn a_current_symlink_swap_keeps_the_server_reachable_and_restarts_into_the_new_release() {
    let Some(py) = harness::require_python("3.12") else {
        return;
    };
    let site = Site::new();
    let xdg = xdg_of(&site);
    for release in ["1", "2"] {
        site.write(
            &format!("releases/{release}/app.py"),
            &RELEASE_APP.replace("{release}", release),
        );
        site.write(
            &format!("releases/{release}/wsgimux.yaml"),
            &format!(
                "listen: \"127.0.0.1:0\"\napps:\n  hello:\n    python: {}\n    script: app.py\n",
                py.display()
            ),
        );
    }
    let current = site.path().join("current");
    swap_link(&current, Path::new("releases/1"));
    let config = current.join("wsgimux.yaml");
    let server = serve(&site, &config, &xdg);
    assert_eq!(server.get("x", "/").text(), "release 1 tag -");

    swap_link(&current, Path::new("releases/2"));
    let (code, out, err) = cli(&["status"], &config, &xdg);
    assert_eq!(code, 0, "status after the swap: {out}{err}");
    let (code, out, err) = cli(&["restart", "hello"], &config, &xdg);
    assert_eq!(code, 0, "restart after the swap: {out}{err}");
    assert_eq!(server.get("x", "/").text(), "release 2 tag -");
    let (code, out, err) = cli(&["reload"], &config, &xdg);
    assert_eq!(code, 0, "reload after the swap: {out}{err}");
    // The file's real name now leads to the server as well (its link is made anew).
    let real = site.path().join("releases/2/wsgimux.yaml");
    let found = harness::eventually(Duration::from_secs(10), || {
        (cli(&["status"], &real, &xdg).0 == 0).then_some(())
    });
    assert!(found.is_some(), "status through {}", real.display());
    // A relative spelling, from the deploy folder.
    let out = Command::new(harness::BIN)
        .current_dir(site.path())
        .args(["status", "--config", "current/wsgimux.yaml"])
        .env("XDG_RUNTIME_DIR", &xdg)
        .output()
        .expect("status");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A Kubernetes ConfigMap mount: `wsgimux.yaml` → `..data/wsgimux.yaml`, `..data` →
/// `..2026_01_01_v1`, swapped to a new timestamped folder with the new contents. The server is
/// found by the mounted path after the swap and applies the new config.
#[test]
fn a_configmap_data_swap_is_applied_and_the_server_stays_reachable() {
    let Some(py) = harness::require_python("3.12") else {
        return;
    };
    let site = Site::new();
    let xdg = xdg_of(&site);
    let app = site.write("app/app.py", &RELEASE_APP.replace("{release}", "cm"));
    let mount = site.path().join("config");
    for (version, tag) in [("..2026_01_01_v1", "one"), ("..2026_01_02_v2", "two")] {
        site.write(
            &format!("config/{version}/wsgimux.yaml"),
            &format!(
                "listen: \"127.0.0.1:0\"\napps:\n  hello:\n    python: {}\n    script: {}\n    env: {{TAG: {tag}}}\n",
                py.display(),
                app.display()
            ),
        );
    }
    swap_link(&mount.join("..data"), Path::new("..2026_01_01_v1"));
    std::os::unix::fs::symlink("..data/wsgimux.yaml", mount.join("wsgimux.yaml")).expect("link");
    let config = mount.join("wsgimux.yaml");
    let server = serve(&site, &config, &xdg);
    assert_eq!(server.get("x", "/").text(), "release cm tag one");

    swap_link(&mount.join("..data"), Path::new("..2026_01_02_v2"));
    // The watcher notices the swap; `reload` then has nothing left to do, or applies it.
    let (code, out, err) = cli(&["reload"], &config, &xdg);
    assert_eq!(code, 0, "reload after the swap: {out}{err}");
    let served = harness::eventually(Duration::from_secs(20), || {
        (server.get("x", "/").text() == "release cm tag two").then_some(())
    });
    assert!(
        served.is_some(),
        "the new ConfigMap is applied:\n{}",
        server.log_text()
    );
    let (code, out, err) = cli(&["status"], &config, &xdg);
    assert_eq!(code, 0, "status after the swap: {out}{err}");
}

/// A Mac's `$TMPDIR` is ~49 bytes; this one is 64. Neither `serve` without `runtime_dir` nor
/// `run` puts sockets under it, so both start, and `run --runtime-dir` that is too long says so
/// about the option.
#[test]
fn serve_and_run_start_under_a_64_byte_tmpdir() {
    let Some(py) = harness::require_python("3.12") else {
        return;
    };
    let site = Site::new();
    site.probe("app");
    let base = site.path().join("t");
    let pad = 64 - base.as_os_str().len() - 1;
    let tmpdir = base.join("x".repeat(pad));
    assert_eq!(tmpdir.as_os_str().len(), 64);
    std::fs::create_dir_all(&tmpdir).expect("tmpdir");
    let tmp = tmpdir.display().to_string();
    let config = site.write(
        "wsgimux.yaml",
        &format!(
            "listen: \"127.0.0.1:0\"\napps:\n  web:\n    python: {}\n    script: app/probe.py\n",
            py.display()
        ),
    );
    let server = Server::start_with(
        Path::new(harness::BIN),
        config,
        site.path().join("wsgimux.log"),
        &[("TMPDIR", &tmp), ("XDG_RUNTIME_DIR", "")],
    );
    assert_eq!(server.get("x", "/pid").status, 200);
    drop(server);

    let run = |extra: &[&str]| {
        Command::new(harness::BIN)
            .current_dir(site.path().join("app"))
            .args(["run", "probe.py", "--port", "0", "--python"])
            .arg(&py)
            .args(extra)
            .env("TMPDIR", &tmp)
            .env_remove("XDG_RUNTIME_DIR")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start wsgimux run")
    };
    let mut child = run(&[]);
    let stdout = child.stdout.take().expect("stdout");
    let ready = std::io::BufRead::lines(std::io::BufReader::new(stdout))
        .map_while(Result::ok)
        .find_map(|l| l.strip_prefix("ready: http://").map(str::to_string));
    let Some(addr) = ready.and_then(|a| a.parse().ok()) else {
        let _ = child.kill();
        let out = child.wait_with_output().expect("output");
        panic!(
            "run did not start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let r = harness::request(addr, &harness::get_bytes("x", "/pid")).expect("request");
    assert_eq!(r.status, 200);
    // SAFETY: kill(2) on the child this test started.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(child.wait().expect("wait").success());

    let long = tmpdir.join("sockets");
    let out = run(&["--runtime-dir", &long.display().to_string()])
        .wait_with_output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("--runtime-dir") && err.contains("too long"),
        "{err}"
    );
    assert!(
        !err.contains("wsgimux.yaml"),
        "names a file the user never wrote: {err}"
    );
}

/// The names in a folder, sorted.
fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|e| {
            e.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Twenty serve/stop cycles, each with another config file, leave the runtime area as the first
/// left it (the shared worker files only); a killed server's folder goes at the next start
/// once its children are gone.
#[test]
fn serve_stop_cycles_leave_the_runtime_area_as_it_was() {
    let Some(py) = harness::require_python("3.12") else {
        return;
    };
    let site = Site::new();
    let xdg = xdg_of(&site);
    site.probe("app");
    let area = xdg.join("wsgimux");
    let config = |i: usize| {
        site.write(
            &format!("c{i}/wsgimux.yaml"),
            &format!(
                "listen: \"127.0.0.1:0\"\napps:\n  web:\n    python: {}\n    script: ../app/probe.py\n",
                py.display()
            ),
        )
    };
    let cycle = |i: usize| {
        let c = config(i);
        let server = serve(&site, &c, &xdg);
        assert_eq!(server.get("x", "/pid").status, 200);
        // A link of the file's real name besides the server's own folder while it runs.
        assert!(listing(&area).len() >= 2, "{:?}", listing(&area));
        drop(server);
    };
    cycle(0);
    let after_first = listing(&area);
    assert_eq!(
        after_first.len(),
        1,
        "only the shared worker files: {after_first:?}"
    );
    assert!(after_first[0].starts_with("workers-"), "{after_first:?}");
    for i in 1..=20 {
        cycle(i);
    }
    assert_eq!(listing(&area), after_first);

    // kill -9: its folder stays until its children are gone, then the next start sweeps it.
    let mut killed = serve(&site, &config(21), &xdg);
    let pids = killed.app_pids("web");
    killed.signal(libc::SIGKILL);
    assert!(killed.wait_exit(Duration::from_secs(10)).is_some());
    let gone = harness::eventually(Duration::from_secs(20), || {
        pids.iter().all(|&p| !harness::pid_alive(p)).then_some(())
    });
    assert!(gone.is_some(), "the killed server's children outlived it");
    assert!(listing(&area).len() > 1);
    cycle(22);
    assert_eq!(listing(&area), after_first);
}
