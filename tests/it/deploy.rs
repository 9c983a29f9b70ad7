//! The files in deploy/, checked by the tools that read them: Ruby for the Homebrew formula,
//! Python's plistlib (and plutil where present) for the launchd plist, systemd-analyze for
//! the units. Each is then read for what wsgimux needs of it.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::harness::{self, Site};

fn deploy(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(rel)
}

fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd.output().expect("run the checker");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn homebrew_formula() {
    if !harness::have_tool("ruby", "ruby") {
        return;
    }
    let formula = deploy("homebrew/wsgimux.rb");
    let (ok, out) = run(Command::new("ruby").arg("-c").arg(&formula));
    assert!(ok && out.contains("Syntax OK"), "ruby -c: {out}");
    let probe = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/deploy/formula_probe.rb");
    let (ok, out) = run(Command::new("ruby").arg(&probe).arg(&formula));
    assert!(ok, "loading the formula: {out}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).expect("probe output is JSON");
    assert_eq!(v["decl"]["depends_on"][0], "{\"rust\"=>:build}", "{v}");
    for key in ["desc", "homepage", "url", "sha256", "license", "livecheck"] {
        assert!(v["decl"].get(key).is_some(), "formula lacks {key}: {v}");
    }
    let service = &v["service"];
    let run_args = service["run"].to_string();
    assert!(
        run_args.contains("/prefix/opt/bin/wsgimux")
            && run_args.contains("serve")
            && run_args.contains("/prefix/etc/wsgimux/wsgimux.yaml"),
        "service run: {run_args}"
    );
    assert_eq!(service["keep_alive"][0], "true", "{service}");
    assert_eq!(service["require_root"][0], "true", "{service}");
    for key in ["log_path", "error_log_path"] {
        let path = service[key][0].as_str().unwrap_or_default();
        assert!(path.starts_with("/prefix/var/log/"), "{key}: {path}");
    }
    assert!(service.get("working_dir").is_some(), "{service}");
    assert_eq!(v["test"], true, "no test do block: {v}");
    let methods = v["methods"].to_string();
    assert!(methods.contains("install"), "no install method: {methods}");
    // The test block checks the installed example with `wsgimux check`.
    let text = std::fs::read_to_string(&formula).expect("read the formula");
    let test_block = text.split("test do").nth(1).expect("test do block");
    assert!(test_block.contains("wsgimux check"), "{test_block}");
    // The config is installed into etc once (Homebrew keeps an edited one), and the example
    // beside the example apps; nothing is installed twice.
    assert!(
        text.contains("(etc/\"wsgimux\").install \"wsgimux.yaml\""),
        "{text}"
    );
    assert!(
        text.contains("pkgshare.install \"config.example.yaml\""),
        "{text}"
    );
    assert_eq!(
        text.matches(".install \"config.example.yaml\"").count(),
        1,
        "{text}"
    );
}

#[test]
fn launchd_plist() {
    let Some(python) = harness::require_python("3") else {
        return;
    };
    let plist = deploy("launchd/org.wsgimux.wsgimux.plist");
    let script = r#"
import json, plistlib, sys
with open(sys.argv[1], "rb") as f:
    print(json.dumps(plistlib.load(f)))
"#;
    let (ok, out) = run(Command::new(&python).args(["-c", script]).arg(&plist));
    assert!(ok, "plistlib: {out}");
    if harness::tool_exists("plutil") {
        let (ok, lint) = run(Command::new("plutil").arg("-lint").arg(&plist));
        assert!(ok, "plutil -lint: {lint}");
    }
    let v: serde_json::Value = serde_json::from_str(out.trim()).expect("plist as JSON");
    let args = &v["ProgramArguments"];
    assert_eq!(args[1], "serve", "{args}");
    assert_eq!(args[2], "--config", "{args}");
    // Socket activation: launchd binds port 80 under the name wsgimux asks for.
    let listeners = &v["Sockets"]["Listeners"];
    assert_eq!(listeners["SockServiceName"], "80", "{listeners}");
    // Nothing but launchd runs as root.
    let user = v["UserName"].as_str().unwrap_or("root");
    assert_ne!(user, "root", "the daemon must not run as root");
    assert_eq!(v["KeepAlive"], true);
    assert!(v["StandardErrorPath"].as_str().is_some());
}

#[test]
fn systemd_units() {
    if !harness::have_tool("systemd-analyze", "systemd") {
        return;
    }
    // verify checks that the commands exist: point them at the binary under test.
    let site = Site::new();
    for unit in ["wsgimux.service", "wsgimux.socket"] {
        let text = std::fs::read_to_string(deploy(&format!("systemd/{unit}"))).expect("read unit");
        site.write(unit, &text.replace("/usr/local/bin/wsgimux", harness::BIN));
    }
    let service = site.path().join("wsgimux.service");
    let socket = site.path().join("wsgimux.socket");
    let (ok, out) = run(Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&service)
        .arg(&socket));
    assert!(ok, "systemd-analyze verify: {out}");
    assert!(
        !out.contains("wsgimux.service:") && !out.contains("wsgimux.socket:"),
        "systemd-analyze warned about the units: {out}"
    );
    let text = std::fs::read_to_string(&service).expect("read the service");
    let line = |key: &str| {
        text.lines()
            .find(|l| l.starts_with(&format!("{key}=")))
            .unwrap_or_else(|| panic!("no {key}= in wsgimux.service"))
            .to_string()
    };
    assert!(line("ExecStartPre").contains(" check --config "));
    assert!(line("ExecStart").contains(" serve --config "));
    assert!(line("ExecReload").contains(" reload --config "));
    for hardening in [
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "PrivateTmp=yes",
    ] {
        assert!(text.contains(hardening), "missing {hardening}");
    }
    // Hardening does not get worse: systemd's own exposure score (0 best, 10 worst) stays at
    // most what the unit had when its hardening was written.
    let (ok, out) = run(Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(&service));
    let exposure: Option<f64> = out
        .split("Overall exposure level for wsgimux.service:")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok());
    assert!(
        ok && exposure.is_some_and(|e| e <= 3.3),
        "exposure {exposure:?}: {out}"
    );
    // The config the service reads must list the socket's address: wsgimux takes the passed
    // socket by the address it is bound to.
    let socket_text = std::fs::read_to_string(&socket).expect("read the socket unit");
    assert!(socket_text.contains("ListenStream=0.0.0.0:80"));
}

/// The shipped unit's `ExecStartPre` and `ExecReload` lines, run as systemd would run them
/// (only the binary's and the config's paths replaced by this test's), against a running
/// server: both exit 0, and the reload is applied. (`systemctl reload` failed for as long as
/// wsgimux did not read the unit's `--timeout 5min`.)
#[test]
fn systemd_exec_lines_run_against_a_running_server() {
    let Some(py) = harness::require_python("3.12") else {
        return;
    };
    let site = Site::new();
    let config = site.one_app("web", &py, &[]);
    let _server = site.serve();
    let unit = std::fs::read_to_string(deploy("systemd/wsgimux.service")).expect("read unit");
    let exec = |key: &str| -> Vec<String> {
        let line = unit
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .unwrap_or_else(|| panic!("no {key}= in wsgimux.service"));
        assert!(
            !line.contains(['"', '\'', '$', '%']),
            "{key} needs systemd's quoting or specifiers, which this test does not expand: {line}"
        );
        line.split_whitespace()
            .map(|w| {
                w.replace("/usr/local/bin/wsgimux", harness::BIN)
                    .replace("/etc/wsgimux/wsgimux.yaml", &config.display().to_string())
            })
            .collect()
    };
    for key in ["ExecStartPre", "ExecReload"] {
        let argv = exec(key);
        let (ok, out) = run(Command::new(&argv[0]).args(&argv[1..]));
        assert!(ok, "{key} {argv:?} failed:\n{out}");
        if key == "ExecReload" {
            assert!(out.contains("reload #1 (wsgimux reload)"), "{out}");
        }
    }
}

/// The `Type=notify` protocol, with a datagram socket standing in for systemd: READY=1 (with a
/// status naming the failed app) only after every app that starts at once is ready or failed,
/// RELOADING=1 with MONOTONIC_USEC then READY=1 around a reload, WATCHDOG=1 pings, STOPPING=1
/// at shutdown.
#[test]
fn systemd_notify_protocol() {
    let Some(py) = harness::require_python("3.12") else {
        return;
    };
    let site = Site::new();
    site.probe("app");
    site.write(
        "broken/app.py",
        "raise ImportError('no module named missing')\n",
    );
    // The good app takes a while to import, so READY must wait for it.
    site.write(
        "slow/app.py",
        "import time\ntime.sleep(1.5)\ndef application(environ, start_response):\n    start_response('200 OK', [])\n    return [b'ok']\n",
    );
    let config = site.config(&format!(
        "apps:\n  slow:\n    python: {py}\n    script: slow/app.py\n  broken:\n    python: {py}\n    script: broken/app.py\n    mount: /b\n    startup_timeout: 5s\n",
        py = py.display()
    ));
    let socket_path = site.path().join("notify.sock");
    let socket = std::os::unix::net::UnixDatagram::bind(&socket_path).expect("notify socket");
    socket
        .set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .expect("timeout");
    let started = std::time::Instant::now();
    let notify = socket_path.display().to_string();
    let mut server = harness::Server::start_with(
        std::path::Path::new(harness::BIN),
        config,
        site.path().join("wsgimux.log"),
        &[("NOTIFY_SOCKET", &notify), ("WATCHDOG_USEC", "400000")],
    );
    let mut messages: Vec<String> = Vec::new();
    let mut next = |what: &str| -> String {
        let mut buf = [0u8; 4096];
        loop {
            let n = socket
                .recv(&mut buf)
                .unwrap_or_else(|e| panic!("waiting for {what}: {e}; so far {messages:?}"));
            let m = String::from_utf8_lossy(&buf[..n]).into_owned();
            messages.push(m.clone());
            if m.contains(what) {
                return m;
            }
        }
    };
    let ready = next("READY=1");
    assert!(
        started.elapsed() >= std::time::Duration::from_millis(1400),
        "READY came before the slow app was imported ({:?})",
        started.elapsed()
    );
    assert!(
        ready.contains("STATUS=serving 1 of 2 app(s); failed to start (retrying): broken"),
        "{ready}"
    );
    assert_eq!(server.get("example.com", "/").status, 200);
    next("WATCHDOG=1");
    let (status, _, stderr) = site.reload();
    assert!(status.code().is_some(), "{stderr}");
    let reloading = next("RELOADING=1");
    assert!(reloading.contains("MONOTONIC_USEC="), "{reloading}");
    let again = next("READY=1");
    assert!(again.contains("STATUS=serving; reload #1"), "{again}");
    server.signal(libc::SIGTERM);
    next("STOPPING=1");
    server.wait_exit(std::time::Duration::from_secs(30));
}

/// The CI workflow for the platforms this machine lacks (Linux, macOS Intel, macOS Apple
/// silicon) cannot run here; it must at least parse and run the README's test command on each.
#[test]
fn github_workflow_parses_and_covers_linux_and_both_macs() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(".github/workflows/test.yml");
    let text = std::fs::read_to_string(&path).expect("read the workflow");
    let doc: serde_yaml::Value = serde_yaml::from_str(&text).expect("the workflow is YAML");
    let job = &doc["jobs"]["test"];
    let oses: Vec<&str> = job["strategy"]["matrix"]["include"]
        .as_sequence()
        .expect("a matrix")
        .iter()
        .filter_map(|e| e["os"].as_str())
        .collect();
    assert!(oses.iter().any(|o| o.starts_with("ubuntu")), "{oses:?}");
    assert!(
        oses.contains(&"macos-13") && oses.contains(&"macos-14"),
        "{oses:?}"
    );
    let runs: Vec<&str> = job["steps"]
        .as_sequence()
        .expect("steps")
        .iter()
        .filter_map(|s| s["run"].as_str())
        .collect();
    assert!(runs.iter().any(|r| r.trim() == "cargo test"), "{runs:?}");
}

/// `deploy/homebrew/release` against this repo: in a clone with a release tag, it makes the
/// `git archive` tarball and writes that tarball's sha256 and download url into the formula,
/// which still loads; a version with no tag is refused.
#[test]
fn homebrew_release_script_fills_url_and_sha256() {
    if !harness::have_tool("git", "git") || !harness::have_tool("ruby", "ruby") {
        return;
    }
    let tmp = tempfile::tempdir().expect("temp dir");
    let clone = tmp.path().join("wsgimux");
    let root = env!("CARGO_MANIFEST_DIR");
    let (ok, out) = run(Command::new("git").args(["clone", "-q", root]).arg(&clone));
    assert!(ok, "git clone: {out}");
    let git = |args: &[&str]| run(Command::new("git").arg("-C").arg(&clone).args(args));
    let (ok, out) = git(&["-c", "user.name=t", "-c", "user.email=t@t", "tag", "v9.8.7"]);
    assert!(ok, "git tag: {out}");
    let script = clone.join("deploy/homebrew/release");
    let (refused, out) = run(Command::new(&script).arg("1.2.3").current_dir(&clone));
    assert!(!refused && out.contains("no tag v1.2.3"), "{out}");
    let dist = tmp.path().join("dist");
    let (ok, out) = run(Command::new(&script)
        .arg("9.8.7")
        .arg(&dist)
        .current_dir(&clone));
    assert!(ok, "release: {out}");
    let tarball = dist.join("wsgimux-9.8.7.tar.gz");
    let sum = Command::new("sha256sum")
        .arg(&tarball)
        .output()
        .expect("sha256sum");
    let sha = String::from_utf8_lossy(&sum.stdout)
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_string();
    assert_eq!(sha.len(), 64, "{sha}");
    let formula =
        std::fs::read_to_string(clone.join("deploy/homebrew/wsgimux.rb")).expect("formula");
    assert!(
        formula.contains(&format!("  sha256 \"{sha}\"\n")),
        "{formula}"
    );
    assert!(
        formula.contains("  url \"https://github.com/wsgimux/wsgimux/releases/download/v9.8.7/wsgimux-9.8.7.tar.gz\"\n"),
        "{formula}"
    );
    let listing = Command::new("tar")
        .arg("tzf")
        .arg(&tarball)
        .output()
        .expect("tar");
    let listing = String::from_utf8_lossy(&listing.stdout);
    assert!(listing.contains("wsgimux-9.8.7/Cargo.toml"), "{listing}");
    let (ok, out) = run(Command::new("ruby")
        .arg("-c")
        .arg(clone.join("deploy/homebrew/wsgimux.rb")));
    assert!(ok, "the filled-in formula: {out}");
}

/// The formula's `install` (all of it but the cargo build) and then its `test do` block, run
/// by a stand-in for Homebrew: the test serves an app with "Homebrew's" Python 3.13 and checks
/// the answer, and checks the installed example config. `install` must not move a file twice.
#[test]
fn homebrew_formula_installs_and_its_test_passes() {
    if !harness::have_tool("ruby", "ruby") || !harness::have_tool("curl", "curl") {
        return;
    }
    let Some(python) = harness::require_python("3.13") else {
        return;
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let build = tempfile::tempdir().expect("build dir");
    let (ok, out) = run(Command::new("cp")
        .arg("-r")
        .arg(root.join("examples"))
        .arg(root.join("config.example.yaml"))
        .arg(build.path()));
    assert!(ok, "{out}");
    let version = env!("CARGO_PKG_VERSION");
    let bin_dir = Path::new(harness::BIN).parent().expect("bin dir");
    let python_dir = python.parent().expect("python's bin dir");
    let (ok, out) = run(Command::new("ruby")
        .arg(root.join("tests/deploy/formula_run.rb"))
        .arg(deploy("homebrew/wsgimux.rb"))
        .arg(build.path())
        .arg(bin_dir)
        .arg(python_dir)
        .arg(version));
    assert!(ok && out.contains("installed and tested"), "{out}");
}

/// `cargo install wsgimux` works: the crate `cargo package` makes holds everything its build
/// needs (the native worker's sources and manifest among them), and a copy installed from the
/// unpacked `.crate` with `cargo install --path --offline` serves an app with both workers.
#[test]
fn the_packaged_crate_installs_offline_and_serves() {
    let Some(py) = harness::require_python("3.13") else {
        return;
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    // Outside the checkout, as cargo unpacks a downloaded crate (inside it the crate would be
    // taken for a member of this workspace), and at the same path each run so that the next
    // build is incremental; the build's target dir under target/.
    let hash = root
        .as_os_str()
        .as_encoded_bytes()
        .iter()
        .fold(0u32, |h, &b| h.wrapping_mul(31).wrapping_add(u32::from(b)));
    // SAFETY: getuid cannot fail.
    let uid = unsafe { libc::getuid() };
    let work = std::env::temp_dir().join(format!("wsgimux-package-test-{uid}-{hash:08x}"));
    std::fs::create_dir_all(&work).expect("the unpacking folder");
    let target_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("package");
    let (ok, out) = run(Command::new(&cargo)
        .current_dir(root)
        .args([
            "package",
            "--offline",
            "--allow-dirty",
            "--no-verify",
            "--target-dir",
        ])
        .arg(&target_dir));
    assert!(ok, "cargo package: {out}");
    let version = env!("CARGO_PKG_VERSION");
    let crate_file = target_dir.join(format!("package/wsgimux-{version}.crate"));
    let unpacked = work.join(format!("wsgimux-{version}"));
    let _ = std::fs::remove_dir_all(&unpacked);
    let (ok, out) = run(Command::new("tar")
        .arg("-xzf")
        .arg(&crate_file)
        .arg("-C")
        .arg(&work));
    assert!(ok, "unpacking {}: {out}", crate_file.display());
    for needed in [
        "worker/worker.toml",
        "worker/src/lib.rs",
        "worker/build.rs",
        "Cargo.lock",
    ] {
        assert!(unpacked.join(needed).is_file(), "the crate has no {needed}");
    }
    let install_root = target_dir.join("root");
    // One job: the rest of the suite runs meanwhile.
    let (ok, out) = run(Command::new(&cargo)
        .args([
            "install",
            "--offline",
            "--debug",
            "--jobs",
            "1",
            "--force",
            "--path",
        ])
        .arg(&unpacked)
        .arg("--root")
        .arg(&install_root)
        .arg("--target-dir")
        .arg(target_dir.join("install"))
        .env_remove("CARGO_TARGET_DIR"));
    assert!(ok, "cargo install --path the unpacked crate: {out}");
    let installed = install_root.join("bin/wsgimux");
    let site = Site::new();
    site.probe("app");
    site.config(&format!(
        "apps:\n  native:\n    python: {py}\n    script: app/probe.py\n    worker: native\n    mount: /n\n  portable:\n    python: {py}\n    script: app/probe.py\n    worker: portable\n    mount: /p\n",
        py = py.display()
    ));
    let server = harness::Server::start_binary(
        &installed,
        site.path().join("wsgimux.yaml"),
        site.path().join("wsgimux.log"),
    );
    for (mount, worker) in [("/n", "native"), ("/p", "portable")] {
        let r = server.get("x", &format!("{mount}/env"));
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(
            r.text()
                .contains(&format!("SERVER_SOFTWARE=wsgimux-{worker}")),
            "{}",
            r.text()
        );
    }
}

/// `wsgimux manpage` is one real page: every command `--help` lists, with its options, and the
/// sections a man page owes (FILES, SIGNALS, ENVIRONMENT, EXIT STATUS, EXAMPLES); it names no
/// page that does not exist, and `man` renders it without a warning.
#[test]
fn the_man_page_has_every_command_and_renders_without_warnings() {
    if !harness::have_tool("man", "man-db") {
        return;
    }
    let help = Command::new(harness::BIN)
        .arg("--help")
        .output()
        .expect("help");
    let help = String::from_utf8_lossy(&help.stdout).into_owned();
    let commands: Vec<&str> = help
        .split("Commands:")
        .nth(1)
        .expect("a Commands section")
        .lines()
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .collect();
    assert!(commands.len() >= 9, "{commands:?}");
    let page = tempfile::NamedTempFile::new().expect("temp file");
    let out = Command::new(harness::BIN)
        .arg("manpage")
        .output()
        .expect("manpage");
    assert!(out.status.success());
    std::fs::write(page.path(), &out.stdout).expect("write the page");
    let roff = String::from_utf8_lossy(&out.stdout);
    assert!(
        !roff.contains("wsgimux\\-serve(1)") && !roff.contains("(1)\n"),
        "{roff}"
    );
    let rendered = Command::new("man")
        .args(["--warnings", "-l"])
        .arg(page.path())
        .env("MANWIDTH", "100")
        .env("MAN_KEEP_FORMATTING", "0")
        .output()
        .expect("man -l");
    let warnings = String::from_utf8_lossy(&rendered.stderr);
    assert!(
        rendered.status.success() && warnings.trim().is_empty(),
        "{warnings}"
    );
    // Without the overstrike that marks bold on a terminal.
    let text =
        without_overstrike(&String::from_utf8_lossy(&rendered.stdout).replace('\u{2010}', "-"));
    for section in [
        "NAME",
        "SYNOPSIS",
        "COMMANDS",
        "FILES",
        "SIGNALS",
        "ENVIRONMENT",
        "EXIT STATUS",
        "EXAMPLES",
    ] {
        assert!(
            text.lines().any(|l| l == section),
            "no {section} section:\n{text}"
        );
    }
    for c in &commands {
        assert!(
            text.contains(&format!("wsgimux {c}")),
            "{c} is missing:\n{text}"
        );
    }
    for needle in [
        "--config",
        "--control",
        "--no-import",
        "--runtime-dir",
        "SIGHUP",
        "SIGUSR1",
        "WSGIMUX_CONTROL",
    ] {
        assert!(text.contains(needle), "{needle} is missing:\n{text}");
    }
    assert!(text.matches("--config").count() >= 6, "{text}");
}

/// `man`'s output on a pipe may still carry backspace overstrikes (bold, underline): removed.
fn without_overstrike(s: &str) -> String {
    let mut out: Vec<char> = Vec::new();
    for c in s.chars() {
        if c == '\u{8}' {
            out.pop();
        } else {
            out.push(c);
        }
    }
    out.into_iter().collect()
}
