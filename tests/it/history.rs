//! The per-second history: `status --json` carries each app's rates over the last minute,
//! from the seconds the server recorded.

use std::time::Duration;

use crate::harness::*;

#[test]
fn status_carries_the_last_minutes_rates() {
    let Some(py) = require_python("3.12") else {
        return;
    };
    let site = Site::new();
    site.one_app("probe", &py, &[]);
    let server = site.serve();
    let config = site.path().join("wsgimux.yaml");
    let status = crate::operating::status_json(&config);
    assert!(
        crate::operating::app(&status, "probe")
            .get("recent")
            .is_none(),
        "no rates before a request"
    );
    for _ in 0..30 {
        assert_eq!(server.get("x", "/").status, 200);
    }
    assert_eq!(server.get("x", "/boom").status, 500);
    let recent = eventually(Duration::from_secs(5), || {
        let status = crate::operating::status_json(&config);
        let recent = crate::operating::app(&status, "probe")["recent"].clone();
        (recent["seconds"].as_u64() >= Some(2)).then_some(recent)
    })
    .expect("rates after two seconds");
    let per_second = recent["requests_per_second"].as_f64().unwrap_or(0.0);
    let seconds = recent["seconds"].as_f64().unwrap_or(1.0);
    assert!(
        (per_second * seconds - 31.0).abs() < 0.5,
        "31 requests over the window: {recent}"
    );
    assert!(
        recent["server_errors_per_second"].as_f64() > Some(0.0),
        "{recent}"
    );
    assert!(recent["p99_ms"].as_u64().is_some(), "{recent}");
}

/// `wsgimux top --once`: one view of the apps, the busiest first.
#[test]
fn top_lists_the_busiest_app_first() {
    let Some(py) = require_python("3.12") else {
        return;
    };
    let site = Site::new();
    site.probe("app");
    site.config(&format!(
        "apps:\n  aaa_quiet:\n    python: {py}\n    script: app/probe.py\n    mount: /quiet\n  zzz_busy:\n    python: {py}\n    script: app/probe.py\n",
        py = py.display()
    ));
    let server = site.serve();
    assert_eq!(server.get("x", "/quiet/ver").status, 200);
    for _ in 0..20 {
        assert_eq!(server.get("x", "/ver").status, 200);
    }
    let top = || {
        let out = std::process::Command::new(BIN)
            .args(["top", "--once", "--config"])
            .arg(site.path().join("wsgimux.yaml"))
            .output()
            .expect("run wsgimux top");
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // Once the history has its first second: a rate for the busy app.
    let frame = eventually(Duration::from_secs(5), || {
        let f = top();
        let busy = f.lines().find(|l| l.starts_with("zzz_busy"))?.to_string();
        (busy.split_whitespace().nth(1) != Some("0.0")).then_some(f)
    })
    .unwrap_or_else(top);
    let lines: Vec<&str> = frame.lines().collect();
    assert!(
        lines[1].starts_with("APP") && lines[1].contains("REQ/S"),
        "{frame}"
    );
    assert!(
        lines[2].starts_with("zzz_busy"),
        "the busiest first: {frame}"
    );
    assert!(lines[3].starts_with("aaa_quiet"), "{frame}");
    let requests: Vec<&str> = lines[2].split_whitespace().collect();
    assert_eq!(requests.last(), Some(&"20"), "{frame}");
}

/// A screenshot of the status page by headless Chromium.
fn screenshot(
    admin: std::net::SocketAddr,
    profile: &std::path::Path,
    to: &std::path::Path,
) -> Vec<u8> {
    let out = std::process::Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--hide-scrollbars",
            "--window-size=1000,900",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("--screenshot={}", to.display()))
        .arg(format!("http://{admin}/"))
        .output()
        .expect("run chromium");
    std::fs::read(to).unwrap_or_else(|e| {
        panic!(
            "no screenshot ({e}): {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// The status page draws each busy app's charts (plain SVG, no external script) and they
/// move with the traffic: screenshots in a real browser before and after a burst differ, the
/// page's SVG has points, and it stays small.
#[test]
fn the_status_page_charts_move_under_load() {
    let Some(py) = require_python("3.12") else {
        return;
    };
    if !have_tool("chromium", "chromium") {
        return;
    }
    let site = Site::new();
    site.probe("app");
    site.config(&format!(
        "admin: {{listen: \"127.0.0.1:0\"}}\napps:\n  web:\n    python: {py}\n    script: app/probe.py\n",
        py = py.display()
    ));
    let server = site.serve();
    let status = crate::operating::status_json(&site.path().join("wsgimux.yaml"));
    let admin: std::net::SocketAddr = status["admin"]
        .as_str()
        .and_then(|a| a.parse().ok())
        .expect("admin address");
    assert_eq!(server.get("x", "/").status, 200);
    std::thread::sleep(Duration::from_millis(2500));
    let profile = site.path().join("chromium-profile");
    let page = || {
        let raw = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
        request(admin, raw).expect("the page")
    };
    // The req/s chart's highest point in the window.
    let peak = |html: &str| -> f64 {
        let caption = html.split("req/s <b>").nth(1).unwrap_or("");
        let max = caption.split("max ").nth(1).unwrap_or("");
        max.split('<')
            .next()
            .unwrap_or("")
            .trim()
            .parse()
            .unwrap_or(0.0)
    };
    let quiet_peak = peak(&page().text());
    let before = screenshot(admin, &profile, &site.path().join("before.png"));
    for _ in 0..300 {
        assert_eq!(server.get("x", "/ver").status, 200);
    }
    std::thread::sleep(Duration::from_millis(2500));
    let after = screenshot(admin, &profile, &site.path().join("after.png"));
    assert!(before.starts_with(b"\x89PNG") && after.starts_with(b"\x89PNG"));
    assert_ne!(before, after, "the page did not change");
    // What the browser built: the charts' SVG, whose requests line rose with the burst.
    let dom = std::process::Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg("--dump-dom")
        .arg(format!("http://{admin}/"))
        .output()
        .expect("run chromium");
    let dom = String::from_utf8_lossy(&dom.stdout).into_owned();
    assert_eq!(dom.matches("<svg").count(), 4, "{dom}");
    assert!(
        peak(&dom) > quiet_peak + 10.0,
        "the req/s chart rose with the burst (from {quiet_peak}): {dom}"
    );
    let page = page();
    let html = page.text();
    assert!(page.body.len() < 200 * 1024, "{} bytes", page.body.len());
    assert_eq!(
        html.matches("<svg").count(),
        4,
        "four charts for the one app"
    );
    assert!(
        html.contains("req/s <b>") && html.contains("<polyline"),
        "{html}"
    );
    assert!(!html.contains("src=\"http"), "nothing from elsewhere");
}
