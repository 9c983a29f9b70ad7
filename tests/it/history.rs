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
