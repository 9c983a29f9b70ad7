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
