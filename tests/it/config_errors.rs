//! Every kind of bad config is refused by `check` and `serve`, naming file, line, app and key;
//! nothing is started.

use std::os::unix::fs::PermissionsExt;

use crate::harness::*;

/// (apps section, line of the error in the written file, words the message must contain).
/// Line numbers count the two lines `Site::config` puts first.
fn cases(py: &str, py27: &str) -> Vec<(String, usize, Vec<&'static str>)> {
    vec![
        (
            format!("apps:\n  web:\n    python: {py}\n    script: app/probe.py\n    worker: turbo\n"),
            7,
            vec!["\"web\"", "\"worker\"", "\"turbo\" is not a worker"],
        ),
        (
            format!("apps:\n  old:\n    python: {py27}\n    script: app/probe.py\n    worker: native\n"),
            7,
            vec!["\"old\"", "\"worker\"", "native needs CPython 3.9", "CPython 2.7"],
        ),
        (
            format!("apps:\n  web:\n    python: {py}\n    script: app/probe.py\n    procesess: 2\n"),
            7,
            vec!["\"web\"", "did you mean `processes`?"],
        ),
        (
            format!("apps:\n  web:\n    python: {py}\n    script: app/probe.py\n    threads: lots\n"),
            7,
            vec!["\"web\"", "threads", "must be a whole number"],
        ),
        (
            format!("apps:\n  web:\n    python: {py}\n"),
            4,
            vec!["\"web\"", "\"script\"", "needs a script"],
        ),
        (
            format!("apps:\n  web:\n    python: {py}\n    script: app/probe.py\n    module: probe\n"),
            7,
            vec!["\"web\"", "\"module\"", "not both"],
        ),
        (
            "apps:\n  web:\n    python: /nonexistent/bin/python\n    script: app/probe.py\n".into(),
            5,
            vec!["\"web\"", "\"python\"", "/nonexistent/bin/python does not exist"],
        ),
        (
            "apps:\n  web:\n    python: ./fake-python\n    script: app/probe.py\n".into(),
            5,
            vec!["\"web\"", "\"python\"", "does not run", "exit status: 3"],
        ),
        (
            "apps:\n  web:\n    python: no-such-python-9.9\n    script: app/probe.py\n".into(),
            5,
            vec!["\"web\"", "\"python\"", "not found on PATH"],
        ),
        (
            format!("apps:\n  web:\n    python: {py}\n    script: app/missing.wsgi\n"),
            6,
            vec!["\"web\"", "\"script\"", "missing.wsgi does not exist"],
        ),
        (
            format!("apps:\n  one:\n    python: {py}\n    script: app/probe.py\n    hosts: [a.test]\n    mount: /x\n  two:\n    python: {py}\n    script: app/probe.py\n    hosts: [A.test]\n    mount: /x/\n"),
            12,
            vec!["\"two\"", "\"hosts\"", "host a.test at mount /x is already served by app \"one\""],
        ),
        (
            format!("apps:\n  Bad.Name:\n    python: {py}\n    script: app/probe.py\n"),
            4,
            vec!["\"Bad.Name\"", "may only use a-z"],
        ),
    ]
}

#[test]
fn check_and_serve_refuse_bad_configs_with_file_line_app_and_key() {
    let (Some(py), Some(py27)) = (require_python("3.13"), require_python("2.7")) else {
        return;
    };
    let (py, py27) = (py.display().to_string(), py27.display().to_string());
    for (apps, line, words) in cases(&py, &py27) {
        let site = Site::new();
        site.probe("app");
        let fake = site.write("fake-python", "#!/bin/sh\necho broken >&2\nexit 3\n");
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
        let config = site.config(&apps);
        let (status, _out, err) = site.check();
        assert_eq!(status.code(), Some(1), "check accepted:\n{apps}");
        let at = format!("{}:{line}:", config.display());
        assert!(err.contains(&at), "{err:?} lacks {at:?} for:\n{apps}");
        for w in &words {
            assert!(err.contains(w), "{err:?} lacks {w:?}");
        }
        // serve refuses the same config the same way and starts nothing.
        let out = std::process::Command::new(BIN)
            .args(["serve", "--config"])
            .arg(&config)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1));
        let serr = String::from_utf8_lossy(&out.stderr);
        assert!(serr.contains(&at), "{serr}");
        assert!(
            out.stdout.is_empty(),
            "serve printed {:?}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert!(
            !site.path().join("run").exists(),
            "serve prepared a runtime dir"
        );
    }
}

#[test]
fn missing_config_file_is_named() {
    let out = std::process::Command::new(BIN)
        .args(["check", "--config", "/nonexistent/wsgimux.yaml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot read config /nonexistent/wsgimux.yaml"),
        "{err}"
    );
}

#[test]
fn the_example_config_checks() {
    if require_python("3.13").is_none() {
        return;
    }
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/config.example.yaml");
    let out = std::process::Command::new(BIN)
        .args(["check", "--config", example])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("/api") && text.contains("hello"), "{text}");
}

/// `reload` finds the server however the file reads (a YAML syntax error included — the site's
/// config names its own `runtime_dir`, which a broken file no longer says), prints the error
/// and exits 1; the server serves on.
#[test]
fn reload_of_a_broken_file_reports_its_error_and_changes_nothing() {
    let Some(py) = require_python("3.13") else {
        return;
    };
    let site = Site::new();
    let config = site.one_app("keep", &py, &[]);
    let server = site.serve();
    let good = std::fs::read_to_string(&config).expect("config");
    std::fs::write(&config, format!("{good}  broken: [unclosed\n")).expect("break it");
    let (status, out, err) = site.reload();
    assert_eq!(status.code(), Some(1), "{out}{err}");
    assert!(err.contains("wsgimux.yaml:"), "{err}");
    assert!(!err.contains("no wsgimux is serving"), "{err}");
    assert_eq!(server.get("x", "/ver").status, 200);
    // With the runtime_dir line itself gone, the server is still found.
    std::fs::write(&config, "listen: [oops\n").expect("break it more");
    let (status, _, err) = site.reload();
    assert_eq!(status.code(), Some(1), "{err}");
    assert_eq!(server.get("x", "/ver").status, 200);
}

/// `check` imports every app as its processes will, and reports one that does not load at its
/// `script`/`module` key with Python's error and the place in the app's own code — on 2.7 and
/// 3.x alike; `--no-import` leaves the import out.
#[test]
fn check_imports_apps_and_names_the_apps_own_file_and_line() {
    let (Some(py27), Some(py313)) = (require_python("2.7"), require_python("3.13")) else {
        return;
    };
    let site = Site::new();
    site.write(
        "apps/missing.wsgi",
        "import os\nimport no_such_module_here\n",
    );
    site.write("apps/broken.wsgi", "import os\n\nx = (\n");
    site.write("apps/legacysite/__init__.py", "");
    site.write(
        "apps/legacysite/wsgi.py",
        "def application(environ, start_response):\n    start_response('200 OK', [])\n    return [b'ok']\n",
    );
    let mut yaml = String::from("apps:\n");
    for (tag, py) in [("old", &py27), ("new", &py313)] {
        let py = py.display();
        yaml.push_str(&format!(
            "  {tag}-missing:\n    python: {py}\n    script: apps/missing.wsgi\n    mount: /{tag}/m\n\
             \x20 {tag}-broken:\n    python: {py}\n    script: apps/broken.wsgi\n    mount: /{tag}/b\n\
             \x20 {tag}-typo:\n    python: {py}\n    module: legacysite.wsgy\n    working_dir: apps\n    mount: /{tag}/t\n\
             \x20 {tag}-fine:\n    python: {py}\n    module: legacysite.wsgi\n    working_dir: apps\n    mount: /{tag}/f\n",
        ));
    }
    yaml.push_str("  gone:\n    command: [\"no-such-server-here\", \"--bind\", \"unix:{socket}\"]\n    mount: /gone\n");
    site.config(&yaml);
    let (status, out, err) = site.check();
    let text = format!("{out}{err}");
    assert_eq!(status.code(), Some(1), "{text}");
    assert!(
        text.contains("app \"gone\", key \"command\": \"no-such-server-here\" is not found"),
        "{text}"
    );
    for tag in ["old", "new"] {
        let line_of = |app: &str| {
            text.lines()
                .find(|l| l.contains(&format!("app \"{tag}-{app}\"")))
                .unwrap_or_else(|| panic!("no line for {tag}-{app}:\n{text}"))
                .to_string()
        };
        let missing = line_of("missing");
        assert!(
            missing.contains("key \"script\"")
                && missing.contains("no_such_module_here")
                && missing.ends_with("(apps/missing.wsgi:2)"),
            "{missing}"
        );
        let broken = line_of("broken");
        assert!(
            broken.contains("SyntaxError") && broken.contains("(apps/broken.wsgi:3)"),
            "{broken}"
        );
        let typo = line_of("typo");
        assert!(
            typo.contains("key \"module\"")
                && typo.contains("No module named")
                && typo.contains("wsgy"),
            "{typo}"
        );
        assert!(!text.contains(&format!("app \"{tag}-fine\"")), "{text}");
    }
    assert!(
        !text.contains("wsgimux_worker.py"),
        "the launcher's frames: {text}"
    );
    // Each at its own key's line and column.
    assert!(
        text.contains("wsgimux.yaml:6:5: app \"old-missing\", key \"script\""),
        "{text}"
    );
    assert!(
        text.contains("wsgimux.yaml:14:5: app \"old-typo\", key \"module\""),
        "{text}"
    );

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_wsgimux"))
        .args(["check", "--no-import", "--config"])
        .arg(site.path().join("wsgimux.yaml"))
        .output()
        .expect("check --no-import");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Five mistakes of five kinds — an unknown top-level key, a near-miss app key, a wrong type, a
/// list given as one word, a bad value — all reported in one run, each at its line and column,
/// in plain words, with "did you mean" for the near misses; `serve` refuses the same way.
#[test]
fn five_mistakes_are_reported_in_one_run() {
    let Some(py) = require_python("3.13") else {
        return;
    };
    let site = Site::new();
    site.probe("app");
    site.config(&format!(
        "lisen_to: [\"127.0.0.1:0\"]\napps:\n  web:\n    python: {}\n    script: app/probe.py\n    workdir: app\n    processes: two\n    hosts: example.com\n    worker: turbo\n",
        py.display()
    ));
    let (status, out, err) = site.check();
    let text = format!("{out}{err}");
    assert_eq!(status.code(), Some(1), "{text}");
    for want in [
        "wsgimux.yaml:3:1: key \"lisen_to\": `lisen_to` is not a key wsgimux knows; did you mean `listen`?",
        "wsgimux.yaml:8:5: app \"web\", key \"workdir\": `workdir` is not a key wsgimux knows; did you mean `working_dir`?",
        "wsgimux.yaml:9:16: app \"web\", key \"processes\": must be a whole number, not the text \"two\"",
        "wsgimux.yaml:10:12: app \"web\", key \"hosts\": must be a list of host names, not the text \"example.com\"",
        "wsgimux.yaml:11:5: app \"web\", key \"worker\": \"turbo\" is not a worker",
    ] {
        assert!(text.contains(want), "{want}\nnot in:\n{text}");
    }
    assert!(
        !text.contains("expected u32") && !text.contains("unknown field"),
        "{text}"
    );
}

/// Mistakes of the file and of the machine together, all in one `check`: an odd `listen` entry
/// and a near-miss key (the file), then for the apps whose own entries are sound a missing
/// interpreter, a missing script and an import that fails (the machine) — five problems, five
/// lines, no Rust or serde words.
#[test]
fn mistakes_of_the_file_and_of_the_machine_are_reported_in_one_run() {
    let Some(py) = require_python("3.13") else {
        return;
    };
    let site = Site::new();
    site.probe("app");
    site.write(
        "lib/shop.py",
        "import no_such_module_here\napplication = None\n",
    );
    let path = site.write(
        "wsgimux.yaml",
        &format!(
            "listen: {{port: 80}}\napps:\n  web:\n    python: {py}\n    script: app/probe.py\n    workdir: app\n  old:\n    python: /nonexistent/bin/python3\n    script: app/probe.py\n    mount: /old\n  gone:\n    python: {py}\n    script: app/missing.py\n    mount: /gone\n  shop:\n    python: {py}\n    module: shop\n    working_dir: lib\n    mount: /shop\n",
            py = py.display()
        ),
    );
    let out = std::process::Command::new(BIN)
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .expect("check");
    let text = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{text}");
    for want in [
        "wsgimux.yaml:1:9: key \"listen\": must be an address (\"127.0.0.1:8080\"), a list of addresses, or a list of entries like {address:",
        "wsgimux.yaml:6:5: app \"web\", key \"workdir\": `workdir` is not a key wsgimux knows; did you mean `working_dir`?",
        "wsgimux.yaml:8:5: app \"old\", key \"python\": /nonexistent/bin/python3 does not exist",
        "wsgimux.yaml:13:5: app \"gone\", key \"script\":",
        "wsgimux.yaml:17:5: app \"shop\", key \"module\":",
    ] {
        assert!(text.contains(want), "{want}\nnot in:\n{text}");
    }
    assert!(text.contains("no_such_module_here"), "{text}");
    assert_eq!(
        text.lines().filter(|l| l.contains("wsgimux.yaml:")).count(),
        5,
        "{text}"
    );
    for rust in ["untagged", "Raw", "enum", "struct", "u32"] {
        assert!(!text.contains(rust), "{rust}: {text}");
    }
}
