//! The config contract as data tables: every key, its defaults, and what each mistake says
//! and where.

use super::*;

pub(super) fn parse(text: &str) -> Result<Config, ConfigError> {
    from_yaml(text, Path::new("/srv/site/wsgimux.yaml"))
}

pub(super) fn first_problem(text: &str) -> Problem {
    match parse(text) {
        Ok(c) => panic!("expected an error, got {c:#?}"),
        Err(e) => e.problems[0].clone(),
    }
}

#[test]
fn full_example_validates() {
    let c = parse(
        r#"
listen: ["127.0.0.1:8080", "[::1]:0"]
runtime_dir: ./run
apps:
  legacy:
    python: /opt/py27/bin/python
    script: legacy/app.wsgi
    hosts: ["Old.Example.com"]
    mount: /
  api:
    python: ./venvs/api
    module: "api.wsgi:app"
    hosts: ["example.com", "*.example.com"]
    mount: /api/
    working_dir: ./api
    python_path: ["./api/src"]
    env: {API_MODE: production, WORKERS: 4, DEBUG: false}
    processes: 2
    threads: 16
"#,
    )
    .unwrap();
    assert_eq!(c.listen.len(), 2);
    assert_eq!(c.runtime_dir.as_deref(), Some(Path::new("/srv/site/./run")));
    assert_eq!(c.apps[0].name, "legacy", "file order is kept");
    let legacy = &c.apps[0];
    assert_eq!(
        legacy.process.python,
        Some(PythonSpec::Path("/opt/py27/bin/python".into()))
    );
    assert_eq!(
        legacy.process.entry,
        Entry::Script {
            path: "/srv/site/legacy/app.wsgi".into(),
            callable: "application".into()
        }
    );
    assert_eq!(legacy.process.working_dir, Path::new("/srv/site/legacy"));
    assert_eq!(
        legacy.route.hosts,
        vec![HostPattern::Exact("old.example.com".into())]
    );
    let api = &c.apps[1];
    assert_eq!(
        api.process.python,
        Some(PythonSpec::Path("/srv/site/./venvs/api".into()))
    );
    assert_eq!(
        api.process.entry,
        Entry::Module {
            module: "api.wsgi".into(),
            callable: "app".into()
        }
    );
    assert_eq!(api.route.mount.as_str(), "/api");
    assert_eq!(
        api.route.hosts[1],
        HostPattern::Wildcard(".example.com".into())
    );
    assert_eq!(api.process.env["WORKERS"], "4");
    assert_eq!(api.process.env["DEBUG"], "false");
    assert_eq!((api.process.processes, api.process.threads), (2, 16));
    assert_eq!(
        api.process.python_path,
        vec![PathBuf::from("/srv/site/./api/src")]
    );
    assert_eq!(api.locations.python.map(|l| l.line), Some(11));
}

#[test]
fn defaults() {
    let c = parse("apps:\n  web:\n    python: python3\n    module: web\n").unwrap();
    assert_eq!(c.listen, vec![DEFAULT_LISTEN.parse().unwrap()]);
    let web = &c.apps[0];
    assert_eq!(
        web.process.python,
        Some(PythonSpec::Command("python3".into()))
    );
    assert_eq!(web.route.mount, Mount::root());
    assert!(web.route.hosts.is_empty());
    assert_eq!(web.process.working_dir, Path::new("/srv/site"));
    assert_eq!(
        (web.process.processes, web.process.threads),
        (DEFAULT_PROCESSES, DEFAULT_THREADS)
    );
}

/// A bad config: the text, then the line, app, key and words in the message of its first
/// problem.
type BadCase = (
    &'static str,
    usize,
    Option<&'static str>,
    &'static str,
    &'static str,
);

fn check_first_problems(cases: &[BadCase]) {
    for (text, line, app, key, words) in cases {
        let p = first_problem(text);
        let shown = p.to_string();
        assert!(shown.starts_with("/srv/site/wsgimux.yaml:"), "{shown}");
        assert_eq!(
            p.location.map(|l| l.line),
            Some(*line),
            "{shown}\n--\n{text}"
        );
        assert_eq!(p.app.as_deref(), *app, "{shown}");
        if !key.is_empty() {
            assert_eq!(p.key.as_deref(), Some(*key), "{shown}");
        }
        assert!(shown.contains(words), "{shown:?} lacks {words:?}");
    }
}

#[test]
fn file_shape_errors_name_file_line_app_and_key() {
    check_first_problems(&[
        (
            "apps:\n  web:\n    python: python3\n    module: web\n    colour: red\n",
            5,
            Some("web"),
            "colour",
            "`colour` is not a key wsgimux knows",
        ),
        (
            "apps:\n  web:\n    python: python3\n    module: web\n    threads: many\n",
            5,
            Some("web"),
            "threads",
            "must be a whole number, not the text \"many\"",
        ),
        (
            "lisen: [\"x\"]\napps: {}\n",
            1,
            None,
            "lisen",
            "did you mean `listen`?",
        ),
        (
            "apps:\n  web:\n    python: python3\n",
            2,
            Some("web"),
            "script",
            "needs a script",
        ),
        (
            "apps:\n  web:\n    python: python3\n    script: a.wsgi\n    module: a\n",
            5,
            Some("web"),
            "module",
            "not both",
        ),
    ]);
}

#[test]
fn app_rule_errors_name_file_line_app_and_key() {
    check_first_problems(&[
        (
            "apps:\n  Web:\n    python: python3\n    module: a\n",
            2, Some("Web"), "apps", "may only use",
        ),
        (
            "apps:\n  web:\n    module: a\n",
            2, Some("web"), "python", "is required",
        ),
        (
            "apps:\n  a:\n    python: python3\n    module: a\n    hosts: [x.com]\n    mount: /api\n  b:\n    python: python3\n    module: b\n    hosts: [y.com, X.com]\n    mount: /api/\n",
            10, Some("b"), "hosts", "host x.com at mount /api is already served by app \"a\"",
        ),
        (
            "apps:\n  a:\n    python: python3\n    module: a\n  b:\n    python: python3\n    module: b\n",
            5, Some("b"), "mount", "any host at mount / is already served by app \"a\"",
        ),
        (
            "apps:\n  web:\n    python: python3\n    module: a\n    mount: api\n",
            5, Some("web"), "mount", "must start with '/'",
        ),
        (
            "apps:\n  web:\n    python: python3\n    module: a\n    mount: /a/../b\n",
            5, Some("web"), "mount", "'..' segment",
        ),
        (
            "apps:\n  web:\n    python: python3\n    module: a\n    hosts:\n      - ok.com\n      - http://bad.com/\n",
            7, Some("web"), "hosts", "not a host name",
        ),
        (
            "apps:\n  web:\n    python: python3\n    module: \"a b:c\"\n",
            4, Some("web"), "module", "not a module path",
        ),
        (
            "apps:\n  web:\n    python: python3\n    module: a:app\n    callable: other\n",
            5, Some("web"), "callable", "drop one",
        ),
        (
            "apps:\n  web:\n    python: python3\n    module: a\n    processes: 0\n",
            5, Some("web"), "processes", "out of range",
        ),
        (
            "listen: [\"127.0.0.1:80\", \"localhost:80\"]\napps:\n  web:\n    python: python3\n    module: a\n",
            1, None, "listen", "not an IP address and port",
        ),
        ("apps:\n  web:\n    python: \"unterminated\n", 4, None, "", "found unexpected end of stream"),
        ("apps: {}\n", 1, None, "apps", "no apps"),
    ]);
}

#[test]
fn all_problems_are_reported_at_once() {
    let e = parse("apps:\n  a:\n    python: python3\n  b:\n    module: b\n").unwrap_err();
    assert_eq!(e.problems.len(), 2, "{e}");
    assert_eq!(e.to_string().lines().count(), 2);
}

#[test]
fn empty_file_is_an_error() {
    let p = first_problem("");
    assert!(p.to_string().starts_with("/srv/site/wsgimux.yaml"), "{p}");
}

#[test]
fn mount_rules() {
    for (raw, want) in [
        ("/", "/"),
        ("/api/", "/api"),
        ("//", "/"),
        ("/a/b", "/a/b"),
        ("/café", "/café"),
    ] {
        assert_eq!(Mount::parse(raw).unwrap().as_str(), want);
    }
    for bad in ["", "api", "/a//b", "/a/./b", "/a?x", "/a%2f", "/a b"] {
        assert!(Mount::parse(bad).is_err(), "{bad:?}");
    }
    let m = Mount::parse("/api").unwrap();
    assert!(m.matches(b"/api") && m.matches(b"/api/") && m.matches(b"/api/x"));
    assert!(!m.matches(b"/apix") && !m.matches(b"/ap") && !m.matches(b"/"));
    assert!(Mount::root().matches(b"/anything"));
}

#[test]
fn durations() {
    for (text, ms) in [
        ("500ms", 500),
        ("30s", 30_000),
        ("2m", 120_000),
        ("1h", 3_600_000),
        ("45", 45_000),
        ("1.5", 1_500),
        (" 2m ", 120_000),
        ("5min", 300_000),
        ("1h 30m", 5_400_000),
        ("250 ms", 250),
        ("0.7s", 700),
        ("1.5m", 90_000),
    ] {
        assert_eq!(
            parse_duration(text),
            Ok(Duration::from_millis(ms)),
            "{text}"
        );
    }
    for bad in [
        "",
        "ms",
        "-1s",
        "-5",
        "5 days",
        "1e3",
        "2d",
        "25h",
        "3 weeks",
        "5 parsecs",
    ] {
        assert!(parse_duration(bad).is_err(), "{bad:?} should be rejected");
    }
}

#[test]
fn duration_keys_take_numbers_and_units() {
    let c = parse(
        "apps:\n  a:\n    python: python3\n    script: a.wsgi\n    startup_timeout: 5\n    drain_timeout: 250ms\n    reload_on_changes: true\n",
    )
    .unwrap();
    assert_eq!(c.apps[0].lifecycle.startup_timeout, Duration::from_secs(5));
    assert_eq!(
        c.apps[0].lifecycle.drain_timeout,
        Duration::from_millis(250)
    );
    assert!(c.apps[0].lifecycle.reload_on_changes);
    let d = parse("apps:\n  a:\n    python: python3\n    script: a.wsgi\n").unwrap();
    assert_eq!(d.apps[0].lifecycle.startup_timeout, DEFAULT_STARTUP_TIMEOUT);
    assert_eq!(d.apps[0].lifecycle.drain_timeout, DEFAULT_DRAIN_TIMEOUT);
    assert!(!d.apps[0].lifecycle.reload_on_changes);
}

#[test]
fn bad_durations_are_located() {
    let p = first_problem(
        "apps:\n  a:\n    python: python3\n    script: a.wsgi\n    startup_timeout: soon\n",
    );
    assert_eq!(p.key.as_deref(), Some("startup_timeout"));
    assert_eq!(p.location.map(|l| l.line), Some(5));
    assert!(
        p.message.contains("\"soon\" is not a duration"),
        "{}",
        p.message
    );
    let p = first_problem(
        "apps:\n  a:\n    python: python3\n    script: a.wsgi\n    startup_timeout: 0\n",
    );
    assert!(p.message.contains("more than 0"), "{}", p.message);
}

#[test]
fn command_and_upstream_apps() {
    let c = parse(
        r#"
apps:
  gun:
    python: ./venv
    command: ["gunicorn", "--bind", "unix:{socket}", "app:application"]
    processes: 2
    mount: /gun
  byport:
    command: ["./serve", "--port", "{port}"]
    mount: /byport
  remote:
    upstream: "http://10.0.0.5:8000/"
    mount: /remote
  v6:
    upstream: "http://[::1]:9000"
    mount: /v6
  local:
    upstream: "unix:run/other.sock"
    mount: /local
  secure:
    upstream: "https://app.internal"
    upstream_ca: certs/ca.pem
    mount: /secure
"#,
    )
    .expect("valid");
    let by_name = |n: &str| c.apps.iter().find(|a| a.name == n).expect(n);
    assert_eq!(
        by_name("gun").process.entry,
        Entry::Command {
            argv: vec![
                "gunicorn".into(),
                "--bind".into(),
                "unix:{socket}".into(),
                "app:application".into()
            ]
        }
    );
    assert_eq!(by_name("byport").process.python, None);
    let tcp = |host: &str, port| Entry::Upstream {
        address: Address::Tcp {
            host: host.into(),
            port,
        },
    };
    assert_eq!(by_name("remote").process.entry, tcp("10.0.0.5", 8000));
    assert_eq!(by_name("v6").process.entry, tcp("::1", 9000));
    let secure = Entry::Upstream {
        address: Address::Tls {
            host: "app.internal".into(),
            port: 443,
            ca_file: Some("/srv/site/certs/ca.pem".into()),
        },
    };
    assert_eq!(by_name("secure").process.entry, secure);
    assert_eq!(
        by_name("local").process.entry,
        Entry::Upstream {
            address: Address::Unix("/srv/site/run/other.sock".into())
        }
    );
    assert_eq!(
        Address::Tcp {
            host: "::1".into(),
            port: 9000
        }
        .to_string(),
        "http://[::1]:9000"
    );
}

#[test]
fn command_and_upstream_mistakes_are_located() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "apps:\n  a:\n    command: [\"gunicorn\", \"app:application\"]\n",
            "command",
            "{socket}",
        ),
        (
            "apps:\n  a:\n    command: [\"x\", \"{socket}\", \"{port}\"]\n",
            "command",
            "both",
        ),
        (
            "apps:\n  a:\n    command: [\"x\", \"{port}\"]\n    worker: native\n",
            "worker",
            "does not apply to a command app",
        ),
        (
            "apps:\n  a:\n    upstream: \"ftp://example.com\"\n",
            "upstream",
            "https://host:port",
        ),
        (
            "apps:\n  a:\n    upstream: \"http://example.com\"\n    upstream_ca: ca.pem\n",
            "upstream_ca",
            "only to an \"https://\" upstream",
        ),
        (
            "apps:\n  a:\n    upstream: \"http://example.com:8000/app\"\n",
            "upstream",
            "mount",
        ),
        (
            "apps:\n  a:\n    upstream: \"http://example.com:0\"\n",
            "upstream",
            "no valid host and port",
        ),
        (
            "apps:\n  a:\n    upstream: \"http://h:1\"\n    python: python3\n",
            "python",
            "does not apply to an upstream app",
        ),
        (
            "apps:\n  a:\n    upstream: \"http://h:1\"\n    script: x.py\n",
            "upstream",
            "only one of script, module, command and upstream",
        ),
    ];
    for (text, key, words) in cases {
        let p = first_problem(text);
        assert_eq!(p.key.as_deref(), Some(*key), "{text}: {p}");
        assert!(p.message.contains(words), "{text}: {p}");
        assert!(p.location.is_some(), "{text}: {p}");
    }
}

#[test]
fn front_door_keys() {
    let c = parse(
        r#"
listen:
  - "127.0.0.1:80"
  - address: "127.0.0.1:443"
    tls:
      certificates:
        - {cert: certs/a.pem, key: certs/a.key}
        - {cert: /etc/b.pem, key: /etc/b.key, hosts: ["Old.Example.com.", "*.b.example"]}
redirect_https: true
trusted_proxies: ["10.0.0.0/8", "::1"]
user: www-data
limits: {max_uri_length: 2k, max_headers: 50, header_timeout: 5s, max_connections: 100, max_response_header_size: 64k}
apps:
  a:
    python: python3
    script: a.py
    user: app
    max_body_size: 10m
    request_timeout: 2m
    queue_limit: 0
    overflow_wait: 250ms
    request_buffering: on
    response_idle_timeout: 10min
  b:
    python: python3
    script: b.py
    mount: /b
    max_body_size: 0
    response_idle_timeout: 0
"#,
    )
    .unwrap();
    let tls = &c.tls[&"127.0.0.1:443".parse().unwrap()];
    assert_eq!(tls.certificates[0].cert, Path::new("/srv/site/certs/a.pem"));
    assert_eq!(
        tls.certificates[1].hosts,
        vec!["old.example.com", "*.b.example"]
    );
    assert!(c.redirect_https);
    assert!(c.trusted_proxies[0].contains("10.9.8.7".parse().unwrap()));
    assert!(!c.trusted_proxies[0].contains("11.0.0.1".parse().unwrap()));
    assert!(c.trusted_proxies[1].contains("::1".parse().unwrap()));
    assert_eq!(c.user.as_deref(), Some("www-data"));
    assert_eq!(c.limits.max_uri_length, 2048);
    assert_eq!(c.limits.max_headers, 50);
    assert_eq!(c.limits.header_timeout, Duration::from_secs(5));
    assert_eq!(c.limits.max_response_header_size, 64 << 10);
    assert_eq!(
        c.limits.max_header_field_size, 8190,
        "defaults for the rest"
    );
    let (a, b) = (&c.apps[0], &c.apps[1]);
    assert_eq!(a.route.max_body_size, Some(10 << 20));
    assert_eq!(a.route.request_timeout, Duration::from_secs(120));
    assert_eq!(a.route.queue_limit, 0);
    assert_eq!(a.route.overflow_wait, Duration::from_millis(250));
    assert_eq!(b.route.overflow_wait, DEFAULT_OVERFLOW_WAIT);
    assert_eq!(
        a.admission_cap(),
        a.process.processes as usize * a.process.threads as usize
    );
    assert_eq!(a.process.user.as_deref(), Some("app"));
    assert_eq!(b.route.max_body_size, None, "0 turns the check off");
    assert_eq!(b.route.request_timeout, DEFAULT_REQUEST_TIMEOUT);
    assert_eq!(a.route.request_buffering, RequestBuffering::On);
    assert_eq!(b.route.request_buffering, RequestBuffering::Auto);
    assert_eq!(
        a.route.response_idle_timeout,
        Some(Duration::from_secs(600))
    );
    assert_eq!(b.route.response_idle_timeout, None, "0: never cut");
    let p = first_problem(
        "apps:\n  a:\n    python: python3\n    script: a.py\n    request_buffering: maybe\n",
    );
    assert_eq!(p.key.as_deref(), Some("request_buffering"));
    assert_eq!(p.location.map(|l| (l.line, l.column)), Some((5, 5)));
    assert!(p.message.contains("auto, on or off"), "{p}");
}

#[test]
fn front_door_mistakes_are_located() {
    let app = "apps:\n  a:\n    python: python3\n    script: a.py\n";
    let p = first_problem(&format!("trusted_proxies: [\"10.0.0.0/33\"]\n{app}"));
    assert_eq!(p.key.as_deref(), Some("trusted_proxies"));
    assert_eq!(p.location.map(|l| l.line), Some(1));
    let p = first_problem(&format!("redirect_https: true\n{app}"));
    assert!(p.message.contains("tls"), "{p}");
    let p = first_problem(&format!("limits:\n  max_header_size: lots\n{app}"));
    assert_eq!(
        (p.key.as_deref(), p.location.map(|l| l.line)),
        (Some("max_header_size"), Some(2))
    );
    let p = first_problem(&format!("limits:\n  max_headers: 0\n{app}"));
    assert!(p.message.contains("more than 0"), "{p}");
    let p = first_problem(&format!(
        "listen:\n  - address: \"127.0.0.1:443\"\n    tls: {{certificates: []}}\n{app}"
    ));
    assert!(p.message.contains("at least one certificate"), "{p}");
    let p = first_problem(&format!("{app}    max_body_size: 5 parsecs\n"));
    assert_eq!(
        (p.app.as_deref(), p.key.as_deref()),
        (Some("a"), Some("max_body_size"))
    );
    assert_eq!(p.location.map(|l| l.line), Some(5));
    assert_eq!(parse_size("8k"), Ok(8192));
    assert_eq!(parse_size("1MiB"), Ok(1 << 20));
    assert!(parse_size("-1").is_err());
}

#[test]
fn the_admission_cap_knows_the_app_kind() {
    let c = from_yaml(
        "apps:\n  w:\n    python: python3\n    script: a.py\n    processes: 2\n    threads: 4\n    queue_limit: 10\n  u:\n    upstream: \"http://127.0.0.1:9\"\n    mount: /u\n    queue_limit: 10\n",
        Path::new("/srv/site/wsgimux.yaml"),
    )
    .unwrap();
    assert_eq!(c.apps[0].admission_cap(), 2 * 4 + 10);
    // No thread count anyone can set: the upstream's own server decides.
    assert_eq!(c.apps[1].admission_cap(), 10);
}
