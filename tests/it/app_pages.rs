//! Per-app error pages and access logs: `error_pages: {504: FILE, …}` replaces the front's own
//! page for the errors it answers for that app (same status, read when the error happens);
//! `access_log` of an app takes its requests' lines.

use std::time::Duration;

use crate::harness::*;

#[test]
fn an_apps_own_error_pages_are_served_with_the_errors_status() {
    let Some(py) = require_python("3.12") else {
        return;
    };
    let site = Site::new();
    site.probe("app");
    site.write("pages/504.html", "<h1>We are slow today</h1>\n");
    site.write("pages/413.txt", "Too big for us.\n");
    site.config(&format!(
        "apps:\n  s:\n    python: {py}\n    script: app/probe.py\n    request_timeout: 1s\n    max_body_size: 10\n    error_pages: {{504: pages/504.html, 413: pages/413.txt}}\n  plain:\n    python: {py}\n    script: app/probe.py\n    mount: /plain\n    request_timeout: 1s\n",
        py = py.display()
    ));
    let server = site.serve();
    let r = server.get("x", "/slow?s=3");
    assert_eq!(r.status, 504);
    assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
    assert_eq!(r.text(), "<h1>We are slow today</h1>\n");
    let upload = |path: &str| {
        let raw = format!("POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 20\r\nConnection: close\r\n\r\n01234567890123456789");
        request(server.addr, raw.as_bytes()).expect("a response")
    };
    let r = upload("/upload");
    assert_eq!((r.status, r.text().as_str()), (413, "Too big for us.\n"));
    assert_eq!(r.header("content-type"), Some("text/plain; charset=utf-8"));
    // Another app keeps the front's own pages.
    let r = server.get("x", "/plain/slow?s=3");
    assert_eq!(r.status, 504);
    assert!(!r.text().contains("slow today"), "{}", r.text());
    // Read when the error happens: an edited page needs no reload; a missing one is the
    // front's page and one line naming the app and the file.
    site.write("pages/504.html", "<h1>Still slow</h1>\n");
    assert_eq!(server.get("x", "/slow?s=3").text(), "<h1>Still slow</h1>\n");
    std::fs::remove_file(site.path().join("pages/413.txt")).expect("remove the page");
    let r = upload("/upload");
    assert_eq!(r.status, 413);
    assert!(!r.text().contains("Too big for us"), "{}", r.text());
    let line = server.wait_log("[s] cannot read error page", Duration::from_secs(5));
    assert!(
        line.is_some_and(|l| l.contains("413.txt")),
        "{}",
        server.log_text()
    );
}

/// `access_log` of an app: its requests' lines go to its own file (in its own format), the
/// other apps' to the top-level log, as a virtual host's own log does in nginx and Apache.
#[test]
fn an_apps_own_access_log_takes_its_lines() {
    let Some(py) = require_python("3.12") else {
        return;
    };
    let site = Site::new();
    site.probe("app");
    std::fs::create_dir_all(site.path().join("logs")).expect("logs folder");
    site.config(&format!(
        "access_log: logs/all.log\napps:\n  own:\n    python: {py}\n    script: app/probe.py\n    mount: /own\n    access_log: {{path: logs/own.json, format: json}}\n  rest:\n    python: {py}\n    script: app/probe.py\n",
        py = py.display()
    ));
    let server = site.serve();
    assert_eq!(server.get("x", "/own/ver").status, 200);
    assert_eq!(server.get("x", "/other").status, 200);
    let read = |name: &str| {
        std::fs::read_to_string(site.path().join("logs").join(name)).unwrap_or_default()
    };
    let lines = eventually(Duration::from_secs(5), || {
        let (own, all) = (read("own.json"), read("all.log"));
        (own.contains("/own/ver") && all.contains("/other")).then_some((own, all))
    });
    let (own, all) = lines.unwrap_or_else(|| (read("own.json"), read("all.log")));
    let record: serde_json::Value =
        serde_json::from_str(own.lines().next().unwrap_or("")).expect("a JSON record");
    assert_eq!(
        (record["uri"].as_str(), record["app"].as_str()),
        (Some("/own/ver"), Some("own"))
    );
    assert!(
        !all.contains("/own/ver"),
        "the app's line went to its own log only: {all}"
    );
    assert!(all.contains("app=rest"), "{all}");
}
