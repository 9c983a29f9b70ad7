//! Operating wsgimux: `explain`, `status`, the admin page and metrics, logs, express mode,
//! static files, on-demand apps and recycling — each against the real binary.

use std::process::Command;
use std::time::Duration;

use crate::harness::{self, Site};

/// `wsgimux explain` names the route and app, and the SCRIPT_NAME/PATH_INFO it predicts are
/// the ones the app then sees for the same URL.
#[test]
fn explain_matches_what_the_app_sees() {
    let Some(python) = harness::require_python("3.12") else {
        return;
    };
    let site = Site::new();
    site.probe("app");
    let config = site.config(&format!(
        "apps:\n  blog:\n    python: {py}\n    script: app/probe.py\n    hosts: [\"example.com\", \"*.example.org\"]\n    mount: /blog\n  root:\n    python: {py}\n    script: app/probe.py\n",
        py = python.display()
    ));
    let server = site.serve();
    let port = server.addr.port();
    for (host, path, app, script_name, path_info) in [
        // The probe shows its environ for paths that start with /env.
        (
            "www.example.org",
            "/blog/env/a%20b/c?x=1",
            "blog",
            "/blog",
            "/env/a b/c",
        ),
        ("example.com", "/blog/env", "blog", "/blog", "/env"),
        ("example.com", "/env/blog", "root", "", "/env/blog"),
        ("other.test", "/env/x", "root", "", "/env/x"),
    ] {
        let url = format!("http://{host}:{port}{path}");
        let out = Command::new(harness::BIN)
            .args(["explain", "--config"])
            .arg(&config)
            .arg(&url)
            .output()
            .expect("run explain");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{url}: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            text.contains(&format!("  app          : {app} (")),
            "{url}: {text}"
        );
        assert!(
            text.contains(&format!("SCRIPT_NAME  : {script_name:?}")),
            "{url}: {text}"
        );
        assert!(
            text.contains(&format!("PATH_INFO    : {path_info:?}")),
            "{url}: {text}"
        );
        // The real request: the same values reach the app.
        let resp = server.get(host, path);
        assert_eq!(resp.status, 200, "{url}");
        assert_eq!(
            resp.env("SCRIPT_NAME").as_deref(),
            Some(script_name.as_bytes()),
            "{url}"
        );
        assert_eq!(
            resp.env("PATH_INFO").as_deref(),
            Some(path_info.as_bytes()),
            "{url}"
        );
    }
    // The listen port 0 in the test config matches no URL: explain says the request would
    // not reach wsgimux, and why.
    let out = Command::new(harness::BIN)
        .args(["explain", "--config"])
        .arg(&config)
        .arg("http://example.com/blog/x")
        .output()
        .expect("run explain");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("listener     : none: no plain listener on port 80"),
        "{text}"
    );
    // Not a URL: a clear error and a failing exit.
    let out = Command::new(harness::BIN)
        .args(["explain", "--config"])
        .arg(&config)
        .arg("example.com/x")
        .output()
        .expect("run explain");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("\"example.com/x\" is not an http"));
}
