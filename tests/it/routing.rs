//! Several interpreters behind one port, routed by host and mount; SCRIPT_NAME/PATH_INFO.

use crate::harness::*;

#[test]
fn python_27_36_313_and_a_venv_behind_one_port() {
    let (Some(py27), Some(py36), Some(py313)) = (
        require_python("2.7"),
        require_python("3.6"),
        require_python("3.13"),
    ) else {
        return;
    };
    let site = Site::new();
    let venv = make_venv(&py313, &site.path().join("venv"));
    site.probe("app27");
    site.probe("app36");
    site.probe("app313");
    site.probe("appvenv");
    site.config(&format!(
        r#"apps:
  legacy:
    python: {py27}
    script: app27/probe.py
    hosts: ["old.example.com"]
  py36:
    python: {py36}
    module: probe
    working_dir: app36
    mount: /py36
  modern:
    python: {py313}
    module: "probe:app"
    working_dir: app313
    hosts: ["example.com", "*.example.com"]
    mount: /api
  fallback:
    python: ./venv
    module: probe
    working_dir: appvenv
"#,
        py27 = py27.display(),
        py36 = py36.display(),
        py313 = py313.display(),
    ));
    let (status, out, err) = site.check();
    assert!(status.success(), "check failed: {err}");
    for want in [
        "2.7.18",
        "3.6.",
        "3.13.",
        "old.example.com",
        "*.example.com",
        "/api",
        "/py36",
    ] {
        assert!(out.contains(want), "check output lacks {want}:\n{out}");
    }

    let server = site.serve();
    let ver = |host: &str, path: &str| {
        let r = server.get(host, path);
        assert_eq!(r.status, 200, "{host}{path}: {}", r.text());
        r.text()
    };
    assert!(ver("old.example.com", "/ver").starts_with("CPython 2.7."));
    assert!(ver("OLD.example.com:8080", "/ver").starts_with("CPython 2.7."));
    assert!(ver("anything.test", "/py36/ver").starts_with("CPython 3.6."));
    assert!(ver("example.com", "/api/ver").starts_with("CPython 3.13."));
    assert!(ver("a.b.example.com", "/api/ver").starts_with("CPython 3.13."));
    // The virtualenv answers everything else, and runs inside the venv.
    assert!(ver("example.com", "/apix").starts_with("probe"));
    let prefix = ver("other.org", "/prefix");
    assert_eq!(
        std::fs::canonicalize(prefix.trim()).unwrap(),
        std::fs::canonicalize(&venv).unwrap()
    );
    // Every start-up line names its interpreter and version.
    let lines = server.ready_lines.join("\n");
    assert!(
        lines.contains("app legacy: ready, CPython 2.7.18"),
        "{lines}"
    );
    assert!(lines.contains("app modern: ready, CPython 3.13"), "{lines}");
}

#[test]
fn no_route_is_a_404_naming_host_and_path() {
    let Some(py) = require_python("3.13") else {
        return;
    };
    let site = Site::new();
    site.one_app("only", &py, &["hosts: [example.com]", "mount: /api"]);
    let server = site.serve();
    let r = server.get("example.com", "/apix");
    assert_eq!(r.status, 404);
    assert!(r.text().contains("example.com/apix"), "{}", r.text());
    assert_eq!(server.get("other.com", "/api").status, 404);
    assert_eq!(server.get("example.com", "/api/x").status, 200);
}

/// A request path, then the SCRIPT_NAME, PATH_INFO and QUERY_STRING the app must see.
type Case = (&'static str, &'static [u8], &'static [u8], &'static [u8]);

/// SCRIPT_NAME and PATH_INFO as each worker interpreter sees them.
#[test]
fn script_name_and_path_info() {
    for version in ["2.7", "3.13"] {
        let Some(py) = require_python(version) else {
            continue;
        };
        let site = Site::new();
        site.probe("app");
        site.config(&format!(
            r#"apps:
  mounted:
    python: {py}
    script: app/probe.py
    mount: /api
  unicode:
    python: {py}
    script: app/probe.py
    mount: "/café"
  root:
    python: {py}
    script: app/probe.py
"#,
            py = py.display()
        ));
        let server = site.serve();
        // (request path, SCRIPT_NAME, PATH_INFO, QUERY_STRING), PATH_INFO ends in "/env…".
        let cases: &[Case] = &[
            ("/api/env", b"/api", b"/env", b""),
            ("/api/env/", b"/api", b"/env/", b""),
            ("/api/env/x/y?a=1&b=%20", b"/api", b"/env/x/y", b"a=1&b=%20"),
            ("/apix/env", b"", b"/apix/env", b""),
            ("/env", b"", b"/env", b""),
            // An encoded slash is decoded (as nginx and gunicorn do) before routing.
            ("/api%2Fenv", b"/api", b"/env", b""),
            ("/api/env%2Fa%2fb", b"/api", b"/env/a/b", b""),
            ("/api/env/caf%C3%A9", b"/api", "/env/café".as_bytes(), b""),
            ("/api/env/a%20b", b"/api", b"/env/a b", b""),
            ("/caf%C3%A9/env", "/café".as_bytes(), b"/env", b""),
            ("/caf%C3%A9x/env", b"", "/caféx/env".as_bytes(), b""),
        ];
        for (path, script_name, path_info, query) in cases {
            let r = server.get("localhost", path);
            assert_eq!(r.status, 200, "{version} {path}: {}", r.text());
            let sn = r.env("SCRIPT_NAME").unwrap_or_default();
            let pi = r.env("PATH_INFO").unwrap_or_default();
            let qs = r.env("QUERY_STRING").unwrap_or_default();
            assert_eq!(
                (sn.as_slice(), pi.as_slice(), qs.as_slice()),
                (*script_name, *path_info, *query),
                "Python {version}, {path}: {}",
                r.text()
            );
        }
        // The mount itself, with and without a slash: PATH_INFO "" and "/".
        for (path, want) in [
            ("/api", "probe PATH_INFO= SCRIPT_NAME=/api\n"),
            ("/api/", "probe PATH_INFO=/ SCRIPT_NAME=/api\n"),
            ("/", "probe PATH_INFO=/ SCRIPT_NAME=\n"),
        ] {
            assert_eq!(
                server.get("localhost", path).text(),
                want,
                "Python {version} {path}"
            );
        }
    }
}
