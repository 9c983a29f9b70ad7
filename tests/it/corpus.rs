//! gunicorn's HTTP request corpus, fetched from PyPI at test time and replayed through the real
//! binary to an app that records what reaches it (`tests/corpus/replay.py` holds the rules).

use std::process::Command;

use crate::harness::*;

/// Pinned so that the corpus, and so the test, only changes when this line does.
const GUNICORN: &str = "27.0.1";
const REPLAY: &str = include_str!("../corpus/replay.py");
const ECHO_APP: &str = include_str!("../apps/echo.py");

#[test]
fn gunicorn_request_corpus() {
    let Some(py) = require_python("3.11") else {
        return;
    };
    // gunicorn's corpus loader imports gunicorn (from the sdist) and its one dependency.
    let Some(venv) = pip_venv(&py, "corpus-3.11", &["packaging"]) else {
        return;
    };
    let Some(sdist) = pypi_sdist(&venv.join("bin/python"), "gunicorn", GUNICORN) else {
        return;
    };
    let site = Site::new();
    site.write("app/echo.py", ECHO_APP);
    let log = site.path().join("echo.jsonl");
    let replay = site.write("replay.py", REPLAY);
    site.config(&format!(
        "trusted_proxies: [\"127.0.0.2/32\"]\napps:\n  echo:\n    python: {}\n    script: app/echo.py\n    env: {{ECHO_LOG: {}}}\n",
        py.display(),
        log.display()
    ));
    let server = site.serve();
    let out = Command::new(venv.join("bin/python"))
        .arg(&replay)
        .arg(&sdist)
        .arg(server.addr.to_string())
        .arg(&log)
        .arg("127.0.0.2")
        .output()
        .expect("run replay.py");
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "corpus replay failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
