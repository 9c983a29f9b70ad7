//! The diff as data tables: which keys restart, re-route or only update an app, and the
//! round trip through `apply`.

use std::path::Path;

use super::*;
use crate::config::from_yaml;

const FILE: &str = "/srv/site/wsgimux.yaml";

fn config(apps_yaml: &str) -> Config {
    from_yaml(&format!("apps:\n{apps_yaml}"), Path::new(FILE)).expect("valid test config")
}

fn empty() -> Config {
    Config {
        file: FILE.into(),
        listen: vec!["127.0.0.1:8080".parse().unwrap()],
        tls: Default::default(),
        acme: config("  a:\n    python: python3\n    script: a.wsgi\n").acme,
        redirect_https: false,
        trusted_proxies: Vec::new(),
        limits: Default::default(),
        user: None,
        group: None,
        runtime_dir: None,
        access_log: Default::default(),
        log_dir: None,
        log_format: Default::default(),
        admin: None,
        statics: Vec::new(),
        apps: Vec::new(),
        runtime_dir_location: None,
    }
}

const A: &str = "  a:\n    python: python3\n    script: a.wsgi\n";
const B: &str = "  b:\n    python: python3\n    module: b:app\n    mount: /b\n";

/// (name, kind, keys) for each change, for compact assertions.
fn summary(d: &ConfigDiff) -> Vec<(String, &'static str, Vec<&'static str>)> {
    d.apps
        .iter()
        .map(|c| {
            let (kind, keys) = match c {
                AppChange::Added(_) => ("added", vec![]),
                AppChange::Removed(_) => ("removed", vec![]),
                AppChange::Restart { keys, .. } => ("restart", keys.clone()),
                AppChange::Update {
                    keys,
                    reroute: true,
                    ..
                } => ("reroute", keys.clone()),
                AppChange::Update { keys, .. } => ("update", keys.clone()),
                AppChange::Unchanged(_) => ("unchanged", vec![]),
            };
            (c.name().to_string(), kind, keys)
        })
        .collect()
}

/// Before, after, and the expected change of app "a": its kind and the keys named.
type Case = (
    &'static str,
    &'static str,
    (&'static str, &'static [&'static str]),
);

#[test]
fn table_of_edits() {
    let cases: &[Case] = &[
        (A, A, ("unchanged", &[])),
        (A, "  a:\n    python: python3\n    script: a.wsgi\n    hosts: [x.test]\n", ("reroute", &["hosts"])),
        (A, "  a:\n    python: python3\n    script: a.wsgi\n    mount: /v2\n", ("reroute", &["mount"])),
        (A, "  a:\n    python: python3\n    script: a.wsgi\n    env: {K: 1}\n", ("restart", &["env"])),
        (A, "  a:\n    python: python3.13\n    script: a.wsgi\n", ("restart", &["python"])),
        (A, "  a:\n    python: python3\n    script: other.wsgi\n", ("restart", &["script"])),
        (A, "  a:\n    python: python3\n    module: a:application\n", ("restart", &["module"])),
        (A, "  a:\n    python: python3\n    script: a.wsgi\n    threads: 2\n", ("restart", &["threads"])),
        (A, "  a:\n    python: python3\n    script: a.wsgi\n    processes: 3\n", ("restart", &["processes"])),
        (A, "  a:\n    python: python3\n    script: a.wsgi\n    python_path: [lib]\n", ("restart", &["python_path"])),
        (A, "  a:\n    python: python3\n    script: a.wsgi\n    working_dir: /tmp\n", ("restart", &["working_dir"])),
        (A, "  a:\n    python: python3\n    script: a.wsgi\n    drain_timeout: 5s\n", ("update", &["drain_timeout"])),
        (A, "  a:\n    python: python3\n    script: a.wsgi\n    startup_timeout: 1m\n    reload_on_changes: true\n", ("update", &["startup_timeout", "reload_on_changes"])),
        (A, "  a:\n    python: python3\n    script: a.wsgi\n    env: {K: 1}\n    mount: /x\n", ("restart", &["env", "mount"])),
        // Moving keys around or adding comments changes positions, not the app.
        (A, "  # a comment\n  a:\n    script: a.wsgi\n\n    python: python3\n", ("unchanged", &[])),
        // The same value written another way.
        (A, "  a:\n    python: python3\n    script: ./a.wsgi\n    processes: 1\n    threads: 8\n    drain_timeout: 30\n", ("unchanged", &[])),
    ];
    for (before, after, (kind, keys)) in cases {
        let d = diff(&config(before), &config(after));
        let got = summary(&d);
        assert_eq!(
            got,
            vec![("a".to_string(), *kind, keys.to_vec())],
            "before:\n{before}after:\n{after}"
        );
        assert_eq!(d.is_empty(), *kind == "unchanged");
    }
}

/// Comments and blank lines above static folders and certificates move their positions, not
/// what is served: the whole diff is empty (a comment-only edit says "nothing to change").
#[test]
fn a_comment_only_edit_changes_nothing() {
    let text = "listen:\n  - address: \"127.0.0.1:8443\"\n    tls: {certificates: [{cert: c.pem, key: c.key}]}\nstatic: {\"/robots.txt\": r.txt}\napps:\n  a:\n    python: python3\n    script: a.wsgi\n    static: {\"/s\": public}\n";
    let before = from_yaml(text, Path::new(FILE)).expect("valid");
    let commented = format!(
        "# deploy 2\n\n{}",
        text.replace("apps:", "# the apps\napps:")
    );
    let after = from_yaml(&commented, Path::new(FILE)).expect("valid");
    let d = diff(&before, &after);
    assert!(d.is_empty(), "{:?}", summary(&d));
    assert_eq!(summary(&d), vec![("a".to_string(), "unchanged", vec![])]);
}

#[test]
fn added_removed_and_untouched_apps() {
    let d = diff(&config(A), &config(B));
    assert_eq!(
        summary(&d),
        vec![
            ("b".to_string(), "added", vec![]),
            ("a".to_string(), "removed", vec![])
        ]
    );
    let both = format!("{A}{B}");
    let d = diff(&config(A), &config(&both));
    assert_eq!(
        summary(&d),
        vec![
            ("a".to_string(), "unchanged", vec![]),
            ("b".to_string(), "added", vec![])
        ]
    );
}

#[test]
fn listen_and_runtime_dir() {
    let old = config(A);
    let mut new = old.clone();
    new.listen = vec![
        "127.0.0.1:8080".parse().unwrap(),
        "[::1]:8080".parse().unwrap(),
    ];
    let d = diff(&old, &new);
    assert_eq!(d.listen_added, vec!["[::1]:8080".parse().unwrap()]);
    assert!(d.listen_removed.is_empty());
    assert!(!d.is_empty());
    let d = diff(&new, &old);
    assert_eq!(d.listen_removed, vec!["[::1]:8080".parse().unwrap()]);
    new.listen = old.listen.clone();
    new.runtime_dir = Some("/run/x".into());
    assert!(diff(&old, &new).runtime_dir_changed);
}

#[test]
fn round_trip_empty_a_b_empty_reaches_each_state() {
    let c = "  c:\n    python: python2.7\n    script: c.wsgi\n    hosts: [old.test]\n";
    let state_a = config(&format!("{A}{B}"));
    // a re-routed, b restarted, c added.
    let state_b = config(&format!(
        "{c}  a:\n    python: python3\n    script: a.wsgi\n    hosts: ['*.test']\n  b:\n    python: python3\n    module: b:app\n    mount: /b\n    env: {{V: 2}}\n"
    ));
    let states = [empty(), state_a, state_b, empty()];
    let mut running: Vec<AppSpec> = Vec::new();
    for pair in states.windows(2) {
        let d = diff(&pair[0], &pair[1]);
        running = d.apply(&running);
        assert_eq!(running, pair[1].apps, "after {:?}", summary(&d));
        // Applying the reverse diff goes back.
        let back = diff(&pair[1], &pair[0]).apply(&running);
        assert_eq!(back, pair[0].apps);
        // And a state diffed with itself is empty.
        assert!(diff(&pair[1], &pair[1]).is_empty());
    }
    let d = diff(&states[1], &states[2]);
    assert_eq!(
        summary(&d),
        vec![
            ("c".to_string(), "added", vec![]),
            ("a".to_string(), "reroute", vec!["hosts"]),
            ("b".to_string(), "restart", vec!["env"]),
        ]
    );
}

#[test]
fn a_preview_says_what_a_reload_would_do_and_what_waits_for_a_restart() {
    let old = config(&format!("{A}{B}"));
    assert_eq!(diff(&old, &old).preview(), "nothing to change");
    let b = "  b:\n    python: python3\n    module: b:app\n    mount: /b\n    hosts: [b.test]\n    threads: 9\n";
    let c = "  c:\n    python: python3\n    script: c.wsgi\n    mount: /c\n";
    let yaml = format!("admin: {{listen: \"127.0.0.1:9180\"}}\napps:\n{b}{c}");
    let new = from_yaml(&yaml, Path::new(FILE)).expect("valid");
    assert_eq!(
        diff(&old, &new).preview(),
        "would add c; remove a; restart b (threads, hosts); needs a restart to take effect: admin.listen"
    );
}
