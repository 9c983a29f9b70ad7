//! Per-app keys: the policy a process is replaced by (`stuck_limit`, `max_memory`), the app's
//! own error pages and access log.

use super::tests::{first_problem, parse};
use super::{AccessLogFormat, AccessLogTo};

#[test]
fn stuck_limit_and_max_memory_are_read_and_their_mistakes_located() {
    let app = "apps:\n  a:\n    python: python3\n    script: a.py\n";
    let c = parse(&format!("{app}    stuck_limit: 3\n    max_memory: 1g\n")).unwrap();
    let policy = &c.apps[0].process.policy;
    assert_eq!(
        (policy.stuck_limit, policy.max_memory),
        (Some(3), Some(1 << 30))
    );
    let c = parse(app).unwrap();
    let policy = &c.apps[0].process.policy;
    assert_eq!(
        (policy.stuck_limit, policy.max_memory),
        (None, None),
        "defaults"
    );
    let p = first_problem(&format!("{app}    stuck_limit: 0\n"));
    assert_eq!(
        (p.app.as_deref(), p.key.as_deref()),
        (Some("a"), Some("stuck_limit"))
    );
    assert!(p.message.contains("more than 0"), "{p}");
    let p = first_problem(&format!("{app}    max_memory: 8m\n"));
    assert_eq!(
        (p.key.as_deref(), p.location.map(|l| l.line)),
        (Some("max_memory"), Some(5))
    );
    assert!(p.message.contains("at least 16m"), "{p}");
    let p = first_problem(&format!("{app}    max_memory: lots\n"));
    assert!(p.message.contains("is not a size"), "{p}");
}

#[test]
fn error_pages_are_read_by_status_and_a_status_that_is_no_error_is_located() {
    let app = "apps:\n  a:\n    python: python3\n    script: a.py\n";
    let c = parse(&format!(
        "{app}    error_pages: {{502: pages/502.html, \"504\": /srv/504.html}}\n"
    ))
    .unwrap();
    let pages = &c.apps[0].route.error_pages;
    assert_eq!(pages.len(), 2, "{pages:?}");
    assert!(pages[&502].ends_with("pages/502.html") && pages[&502].is_absolute());
    assert_eq!(pages[&504], std::path::Path::new("/srv/504.html"));
    let p = first_problem(&format!("{app}    error_pages: {{200: ok.html}}\n"));
    assert_eq!(
        (p.app.as_deref(), p.key.as_deref()),
        (Some("a"), Some("error_pages"))
    );
    assert!(p.message.contains("not an error status"), "{p}");
}

#[test]
fn an_apps_access_log_is_read_and_its_mistakes_name_the_app() {
    let app = "apps:\n  a:\n    python: python3\n    script: a.py\n";
    let c = parse(&format!(
        "{app}    access_log: {{path: a.log, format: json}}\n"
    ))
    .unwrap();
    let own = c.apps[0].route.access_log.as_ref().expect("its own log");
    assert_eq!(own.format, AccessLogFormat::Json);
    assert!(matches!(&own.to, AccessLogTo::File(p) if p.ends_with("a.log")));
    assert!(parse(app).unwrap().apps[0].route.access_log.is_none());
    let p = first_problem(&format!(
        "{app}    access_log: {{path: a.log, format: fancy}}\n"
    ));
    assert_eq!(
        (
            p.app.as_deref(),
            p.key.as_deref(),
            p.location.map(|l| l.line)
        ),
        (Some("a"), Some("access_log.format"), Some(5))
    );
}
