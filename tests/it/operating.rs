//! Operating wsgimux: `explain`, `status`, the admin page and metrics, logs, express mode,
//! static files, on-demand apps and recycling — each against the real binary.

use std::process::Command;
use std::time::Duration;

use crate::harness::{self, Server, Site};

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
    // Routed all the same (the app would answer on the right port): exit 0.
    assert!(out.status.success(), "{text}");
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

fn wsgimux(args: &[&str], config: &std::path::Path) -> (bool, String, String) {
    let out = Command::new(harness::BIN)
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .expect("run wsgimux");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

pub fn status_json(config: &std::path::Path) -> serde_json::Value {
    let (ok, out, err) = wsgimux(&["status", "--json"], config);
    assert!(ok, "wsgimux status --json: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("status JSON: {e}: {out}"))
}

pub fn app<'a>(status: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    status["apps"]
        .as_array()
        .and_then(|a| a.iter().find(|a| a["name"] == name))
        .unwrap_or_else(|| panic!("no app {name} in {status}"))
}

fn get_raw(addr: std::net::SocketAddr, raw: &str) -> harness::Response {
    harness::request(addr, raw.as_bytes()).expect("request")
}

/// `GET path` for host a.test with `extra` header lines, on a connection closed after it.
fn get_on_close(addr: std::net::SocketAddr, path: &str, extra: &str) -> harness::Response {
    get_raw(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: a.test\r\n{extra}Connection: close\r\n\r\n"),
    )
}

/// `wsgimux status` (text and JSON) shows each app's processes with the numbers the test
/// caused; the admin listener serves the same as a page a headless Chromium renders, and as
/// Prometheus text.
#[test]
fn status_cli_admin_page_and_metrics() {
    let (Some(py3), Some(py2)) = (
        harness::require_python("3.12"),
        harness::require_python("2.7"),
    ) else {
        return;
    };
    let site = Site::new();
    site.probe("app");
    let config = site.config(&format!(
        "admin: {{listen: \"127.0.0.1:0\"}}\napps:\n  modern:\n    python: {}\n    script: app/probe.py\n    processes: 2\n    mount: /m\n  legacy:\n    python: {}\n    script: app/probe.py\n",
        py3.display(),
        py2.display()
    ));
    let server = site.serve();
    for _ in 0..20 {
        assert_eq!(server.get("a.test", "/m/pid").status, 200);
    }
    assert_eq!(server.get("a.test", "/m/boom").status, 500);
    for _ in 0..5 {
        assert_eq!(server.get("a.test", "/pid").status, 200);
    }
    let s = status_json(&config);
    assert!(s["last_reload"].is_null(), "{s}");
    let modern = app(&s, "modern");
    assert_eq!(modern["routes"][0], "*/m");
    assert_eq!(modern["worker"], "native");
    assert!(modern["python_version"]
        .as_str()
        .unwrap_or("")
        .starts_with("3.12"));
    assert_eq!(modern["generation"], 1);
    assert_eq!(modern["requests"], 21, "{modern}");
    assert_eq!(modern["errors"], 1, "{modern}");
    assert!(modern["p50_ms"].as_f64().is_some() && modern["p99_ms"].as_f64().is_some());
    let procs = modern["processes"].as_array().expect("processes");
    assert_eq!(procs.len(), 2);
    let mut pids: Vec<u64> = procs.iter().filter_map(|p| p["pid"].as_u64()).collect();
    pids.sort();
    let mut expected: Vec<u64> = server
        .app_pids("modern")
        .iter()
        .map(|&p| p.into())
        .collect();
    expected.sort();
    assert_eq!(pids, expected);
    for p in procs {
        assert_eq!(p["state"], "ready", "{p}");
        assert_eq!(p["restarts"], 0);
        assert!(p["uptime_seconds"].as_u64().is_some());
    }
    let per_process: u64 = procs.iter().filter_map(|p| p["requests"].as_u64()).sum();
    assert_eq!(per_process, 21);
    let legacy = app(&s, "legacy");
    assert_eq!(legacy["worker"], "portable");
    assert!(legacy["python_version"]
        .as_str()
        .unwrap_or("")
        .starts_with("2.7"));
    assert_eq!(legacy["requests"], 5);

    // A killed process is restarted and counted.
    let victim = expected[0] as i32;
    // SAFETY: kill(2) on a child of the server under test.
    unsafe { libc::kill(victim, libc::SIGKILL) };
    let restarted = harness::eventually(Duration::from_secs(20), || {
        let s = status_json(&config);
        let m = app(&s, "modern");
        let ready = m["processes"]
            .as_array()?
            .iter()
            .filter(|p| p["state"] == "ready")
            .count();
        (m["restarts"] == 1 && ready == 2).then_some(())
    });
    assert!(
        restarted.is_some(),
        "no restart shown: {}",
        status_json(&config)
    );

    // A reload shows up as the last reload.
    let (ok, _, err) = wsgimux(&["reload"], &config);
    assert!(ok, "{err}");
    let s = status_json(&config);
    assert_eq!(s["last_reload"]["outcome"], "unchanged", "{s}");
    let (ok, text, _) = wsgimux(&["status"], &config);
    assert!(ok);
    for needle in [
        "app modern",
        "app legacy",
        "PID",
        "ready",
        "last reload: #1",
    ] {
        assert!(text.contains(needle), "{needle:?} not in:\n{text}");
    }

    // The admin listener: Prometheus text.
    let admin: std::net::SocketAddr = s["admin"]
        .as_str()
        .and_then(|a| a.parse().ok())
        .expect("admin address");
    let metrics = get_raw(
        admin,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(metrics.status, 200);
    assert!(metrics
        .header("content-type")
        .unwrap_or("")
        .starts_with("text/plain; version=0.0.4"));
    let text = metrics.text();
    for needle in [
        "wsgimux_requests_total{app=\"modern\",code=\"2xx\"} 20",
        "wsgimux_requests_total{app=\"modern\",code=\"5xx\"} 1",
        "wsgimux_request_duration_seconds_count{app=\"legacy\"} 5",
        "wsgimux_processes{app=\"modern\",state=\"ready\"} 2",
        "# TYPE wsgimux_request_duration_seconds histogram",
    ] {
        assert!(text.contains(needle), "{needle:?} not in /metrics:\n{text}");
    }

    // The page in a real browser.
    if !harness::have_tool("chromium", "chromium") {
        return;
    }
    let profile = site.path().join("chromium-profile");
    let out = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--window-size=390,844",
            "--virtual-time-budget=2000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg("--dump-dom")
        .arg(format!("http://{admin}/"))
        .output()
        .expect("run chromium");
    let dom = String::from_utf8_lossy(&out.stdout);
    assert!(
        dom.contains("<title>wsgimux status</title>"),
        "chromium showed:\n{dom}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for needle in [
        "id=\"app-modern\"",
        "id=\"app-legacy\"",
        "CPython 3.12",
        "CPython 2.7",
        "class=\"s ready\">ready",
        "http-equiv=\"refresh\"",
        "name=\"viewport\"",
    ] {
        assert!(
            dom.contains(needle),
            "{needle:?} not in the rendered page:\n{dom}"
        );
    }
    let now: Vec<String> = status_json(&config)["apps"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|a| a["processes"].as_array().cloned().unwrap_or_default())
        .filter_map(|p| p["pid"].as_u64().map(|p| p.to_string()))
        .collect();
    for pid in &now {
        assert!(
            dom.contains(&format!("class=\"pid\">{pid}<")),
            "pid {pid} not shown:\n{dom}"
        );
    }
    // Self-contained: nothing is loaded from elsewhere.
    assert!(
        !dom.contains("src=\"http") && !dom.contains("<link"),
        "{dom}"
    );
}

/// `access_log:` to a file in JSON, each app's output under `log_dir`, and SIGUSR1 reopening
/// both after they were moved away (what logrotate/newsyslog do).
#[test]
fn access_log_json_log_dir_and_reopen() {
    let Some(python) = harness::require_python("3.12") else {
        return;
    };
    let site = Site::new();
    site.write(
        "app/talk.py",
        "import sys\ndef application(environ, start_response):\n    print('hello from ' + environ['PATH_INFO'])\n    sys.stderr.write('err line\\n')\n    start_response('200 OK', [('Content-Type', 'text/plain')])\n    return [b'ok\\n']\n",
    );
    site.config(&format!(
        "access_log: {{path: logs/access.log, format: json}}\nlog_dir: logs/apps\napps:\n  talk:\n    python: {}\n    script: app/talk.py\n",
        python.display()
    ));
    let server = site.serve();
    let logs = site.path().join("logs");
    let r = server.get("a.test", "/first?x=1");
    assert_eq!(r.status, 200);
    let read = |p: &std::path::Path| std::fs::read_to_string(p).unwrap_or_default();
    let access = logs.join("access.log");
    let line = harness::eventually(Duration::from_secs(5), || {
        read(&access).lines().next().map(str::to_string)
    })
    .expect("an access-log line");
    let v: serde_json::Value = serde_json::from_str(&line).expect("JSON access line");
    assert_eq!(v["method"], "GET");
    assert_eq!(v["uri"], "/first?x=1");
    assert_eq!(v["status"], 200);
    assert_eq!(v["app"], "talk");
    assert_eq!(v["bytes"], 3);
    assert_eq!(v["complete"], true);
    assert_eq!(v["remote_addr"], "127.0.0.1");
    assert!(v["pid"].as_u64().is_some() && v["request_time"].as_f64().is_some());
    let app_log = logs.join("apps/talk.log");
    assert!(
        harness::eventually(Duration::from_secs(5), || read(&app_log)
            .contains("[talk:")
            .then_some(()))
        .is_some(),
        "no app output in {}",
        app_log.display()
    );
    let text = read(&app_log);
    assert!(
        text.contains("hello from /first") && text.contains("err line"),
        "{text}"
    );
    // Not in wsgimux's own log.
    assert!(!server.log_text().contains("hello from /first"));

    // Rotate: move both away, SIGUSR1, new files appear with the next lines.
    std::fs::rename(&access, logs.join("access.log.1")).expect("rotate");
    std::fs::rename(&app_log, logs.join("apps/talk.log.1")).expect("rotate");
    server.signal(libc::SIGUSR1);
    server
        .wait_log("SIGUSR1: reopened 2 log file(s)", Duration::from_secs(5))
        .unwrap_or_else(|| panic!("no reopen line:\n{}", server.log_text()));
    assert_eq!(server.get("a.test", "/second").status, 200);
    let rotated = harness::eventually(Duration::from_secs(5), || {
        (read(&access).contains("/second") && read(&app_log).contains("hello from /second"))
            .then_some(())
    });
    assert!(rotated.is_some(), "new files after SIGUSR1");
    assert!(!read(&logs.join("access.log.1")).contains("/second"));
}

/// A `static:` entry may name one file (`"/robots.txt": static/robots.txt`, as the example
/// config shows), host-wide or in an app: its URL serves it with the folder's headers and
/// conditional answers, nothing below it does, and `explain` names the file as it is.
#[test]
fn static_single_files() {
    let Some(python) = harness::require_python("3.12") else {
        return;
    };
    let site = Site::new();
    site.probe("app");
    site.write("static/robots.txt", "User-agent: *\nDisallow:\n");
    site.write("public/favicon.ico", "icon");
    let config = site.config(&format!(
        "static: {{\"/robots.txt\": static/robots.txt}}\napps:\n  web:\n    python: {}\n    script: app/probe.py\n    mount: /web\n    static: {{\"/favicon.ico\": public/favicon.ico}}\n",
        python.display()
    ));
    let (status, out, err) = site.check();
    assert!(status.success(), "{out}{err}");
    let server = site.serve();
    let get = |path: &str, extra: &str| get_on_close(server.addr, path, extra);
    let robots = get("/robots.txt", "");
    assert_eq!(robots.status, 200);
    assert_eq!(robots.text(), "User-agent: *\nDisallow:\n");
    assert_eq!(
        robots.header("content-type"),
        Some("text/plain; charset=utf-8")
    );
    let etag = robots.header("etag").expect("ETag").to_string();
    assert_eq!(
        get("/robots.txt", &format!("If-None-Match: {etag}\r\n")).status,
        304
    );
    let icon = get("/web/favicon.ico", "");
    assert_eq!((icon.status, icon.text().as_str()), (200, "icon"));
    let mut c = harness::Client::connect(server.addr).expect("connect");
    c.send(b"HEAD /robots.txt HTTP/1.1\r\nHost: a.test\r\n\r\n")
        .expect("send");
    let head = c.read_head_response().expect("HEAD response");
    assert_eq!(
        (head.status, head.header("content-length")),
        (200, Some("24"))
    );
    // Nothing below a file: the app gets no such URL either (the alias owns its prefix).
    assert_eq!(get("/robots.txt/", "").status, 404);
    assert_eq!(get("/robots.txt/x", "").status, 404);
    assert_eq!(get("/web/favicon.ico/x", "").status, 404);
    for (url, file) in [
        (
            "http://a.test/robots.txt",
            site.path().join("static/robots.txt"),
        ),
        (
            "http://a.test/web/favicon.ico",
            site.path().join("public/favicon.ico"),
        ),
    ] {
        let out = Command::new(harness::BIN)
            .args(["explain", "--config"])
            .arg(&config)
            .arg(url)
            .output()
            .expect("explain");
        let text = String::from_utf8_lossy(&out.stdout);
        let want = format!("(the front serves {}, no app involved)", file.display());
        assert!(text.contains(&want), "{url}: {text}");
        assert!(out.status.success(), "{url}: {text}");
    }
    // Nothing routes it: a 404, and exit 1.
    let out = Command::new(harness::BIN)
        .args(["explain", "--config"])
        .arg(&config)
        .arg("http://a.test/elsewhere")
        .output()
        .expect("explain");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("route        : none: 404"), "{text}");
    assert_eq!(out.status.code(), Some(1), "{text}");
}

/// `static:` folders: served by the front (the app's processes see none of it), with the
/// headers and conditional/range answers browsers and caches rely on, and no way out of the
/// folder.
#[test]
fn static_files() {
    let Some(python) = harness::require_python("3.12") else {
        return;
    };
    let site = Site::new();
    site.probe("app");
    let body: String = (0..4000).map(|i| format!("line {i}\n")).collect();
    site.write("public/site.css", "body { color: red }\n");
    site.write("public/big.txt", &body);
    site.write("public/docs/index.html", "<h1>docs</h1>\n");
    site.write("shared/logo.svg", "<svg/>\n");
    site.write("secret.txt", "do not serve\n");
    std::os::unix::fs::symlink(
        site.path().join("secret.txt"),
        site.path().join("public/leak.txt"),
    )
    .expect("symlink");
    site.config(&format!(
        "static: {{\"/shared\": shared}}\napps:\n  web:\n    python: {}\n    script: app/probe.py\n    mount: /web\n    static: {{\"/static\": public}}\n",
        python.display()
    ));
    let server = site.serve();
    let get = |path: &str, extra: &str| get_on_close(server.addr, path, extra);
    let css = get("/web/static/site.css", "");
    assert_eq!(css.status, 200);
    assert_eq!(css.text(), "body { color: red }\n");
    assert_eq!(css.header("content-type"), Some("text/css; charset=utf-8"));
    assert_eq!(css.header("accept-ranges"), Some("bytes"));
    let etag = css.header("etag").expect("ETag").to_string();
    let modified = css
        .header("last-modified")
        .expect("Last-Modified")
        .to_string();
    assert_eq!(
        get("/shared/logo.svg", "").header("content-type"),
        Some("image/svg+xml")
    );

    // Conditional requests.
    assert_eq!(
        get(
            "/web/static/site.css",
            &format!("If-None-Match: {etag}\r\n")
        )
        .status,
        304
    );
    assert_eq!(
        get(
            "/web/static/site.css",
            &format!("If-None-Match: W/{etag}\r\n")
        )
        .status,
        304
    );
    assert_eq!(
        get("/web/static/site.css", "If-None-Match: \"other\"\r\n").status,
        200
    );
    assert_eq!(
        get(
            "/web/static/site.css",
            &format!("If-Modified-Since: {modified}\r\n")
        )
        .status,
        304
    );
    assert_eq!(
        get(
            "/web/static/site.css",
            "If-Modified-Since: Sat, 01 Jan 2000 00:00:00 GMT\r\n"
        )
        .status,
        200
    );
    assert_eq!(
        get("/web/static/site.css", "If-Match: \"other\"\r\n").status,
        412
    );

    // Ranges.
    let part = get("/web/static/big.txt", "Range: bytes=7-12\r\n");
    assert_eq!(part.status, 206);
    assert_eq!(part.text(), &body[7..=12]);
    assert_eq!(
        part.header("content-range").map(str::to_string),
        Some(format!("bytes 7-12/{}", body.len()))
    );
    let tail = get("/web/static/big.txt", "Range: bytes=-10\r\n");
    assert_eq!(tail.text(), &body[body.len() - 10..]);
    let beyond = get("/web/static/big.txt", "Range: bytes=999999-\r\n");
    assert_eq!(beyond.status, 416);
    assert_eq!(
        beyond.header("content-range").map(str::to_string),
        Some(format!("bytes */{}", body.len()))
    );
    let stale = get(
        "/web/static/big.txt",
        "Range: bytes=0-1\r\nIf-Range: \"stale\"\r\n",
    );
    assert_eq!((stale.status, stale.body.len()), (200, body.len()));
    let whole = get("/web/static/big.txt", "");
    assert_eq!(whole.text(), body);

    // HEAD: the headers of GET, no body.
    let mut c = harness::Client::connect(server.addr).expect("connect");
    c.send(b"HEAD /web/static/big.txt HTTP/1.1\r\nHost: a.test\r\n\r\n")
        .expect("send");
    let head = c.read_head_response().expect("HEAD response");
    assert_eq!(head.status, 200);
    assert_eq!(
        head.header("content-length").map(str::to_string),
        Some(body.len().to_string())
    );
    // The connection is still in step: the next response is the right one.
    assert_eq!(
        c.get("a.test", "/web/static/site.css")
            .expect("after HEAD")
            .status,
        200
    );

    // Folders: redirect to the slash, then the index.
    let dir = get("/web/static/docs", "");
    assert_eq!(
        (dir.status, dir.header("location")),
        (301, Some("/web/static/docs/"))
    );
    assert_eq!(get("/web/static/docs/", "").text(), "<h1>docs</h1>\n");

    // No way out: dot segments (plain and encoded), a symlink out of the folder, NUL.
    for path in [
        "/web/static/../../secret.txt",
        "/web/static/%2e%2e/secret.txt",
        "/web/static/%2E%2E%2Fsecret.txt",
        "/web/static/docs/..%2f..%2fsecret.txt",
        "/web/static/leak.txt",
        "/web/static/site.css%00.txt",
        "/shared/../secret.txt",
    ] {
        let r = get(path, "");
        assert!(
            !r.text().contains("do not serve"),
            "{path} leaked the file outside the folder"
        );
        // A path with dot-segments is resolved before routing: what it names outside the
        // folder is some app's URL, not the folder's file.
        let resolved = path.contains("/../") || path.contains("%2e%2e/");
        assert!(
            r.status == 404 || r.status == 400 || resolved,
            "{path}: {}",
            r.status
        );
    }
    assert_eq!(get("/web/static/missing.css", "").status, 404);
    let post = get_raw(
        server.addr,
        "POST /web/static/site.css HTTP/1.1\r\nHost: a.test\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(
        (post.status, post.header("allow")),
        (405, Some("GET, HEAD"))
    );

    // None of it reached the app but the one path that resolves to the app's own URL
    // (`/web/static/%2e%2e/secret.txt` is `/web/secret.txt`): its processes served one.
    let s = status_json(&site.path().join("wsgimux.yaml"));
    let served: u64 = app(&s, "web")["processes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["requests"].as_u64())
        .sum();
    assert_eq!(served, 1, "{s}");
    assert_eq!(server.get("a.test", "/web/env").status, 200);

    // A folder that does not exist is a config error at its line.
    let other = Site::new();
    other.probe("app");
    other.config(&format!(
        "apps:\n  web:\n    python: {}\n    script: app/probe.py\n    static: {{\"/s\": missing}}\n",
        python.display()
    ));
    let (status, _, err) = other.check();
    assert!(!status.success());
    assert!(
        err.contains(":7:20:")
            && err.contains("key \"static\"")
            && err.contains("missing does not exist"),
        "{err}"
    );
}

/// `start: on_demand` starts nothing until the first request, which waits for the app;
/// `idle_timeout` stops idle processes (the next request starts them again); `max_requests`
/// replaces processes under load without a failed request.
#[test]
fn on_demand_idle_timeout_and_max_requests() {
    let Some(python) = harness::require_python("3.12") else {
        return;
    };
    let site = Site::new();
    site.probe("app");
    let config = site.config(&format!(
        "apps:\n  lazy:\n    python: {py}\n    script: app/probe.py\n    mount: /lazy\n    start: on_demand\n    idle_timeout: 1s\n  busy:\n    python: {py}\n    script: app/probe.py\n    processes: 2\n    threads: 4\n    max_requests: 20\n    max_requests_jitter: 5\n",
        py = python.display()
    ));
    let server = site.serve();
    let line = server
        .ready_lines
        .iter()
        .find(|l| l.starts_with("app lazy:"))
        .expect("a line for lazy");
    assert!(line.contains("on demand"), "{line}");
    let s = status_json(&config);
    assert_eq!(app(&s, "lazy")["processes"][0]["state"], "idle", "{s}");
    assert!(app(&s, "lazy")["processes"][0]["pid"].is_null());

    // The first request starts it and waits.
    let first = server.get("a.test", "/lazy/pid");
    assert_eq!(first.status, 200, "{}", first.text());
    let pid: u32 = first.text().trim().parse().expect("pid");
    assert!(harness::pid_alive(pid));
    // Idle for 1 s: stopped.
    let stopped = harness::eventually(Duration::from_secs(10), || {
        let s = status_json(&config);
        (app(&s, "lazy")["processes"][0]["state"] == "idle" && !harness::pid_alive(pid))
            .then_some(())
    });
    assert!(
        stopped.is_some(),
        "not stopped when idle: {}",
        status_json(&config)
    );
    // And started again by the next request.
    let again = server.get("a.test", "/lazy/pid");
    assert_eq!(again.status, 200);
    assert_ne!(again.text().trim(), pid.to_string());

    // max_requests: 4 clients send requests until the processes have been replaced several
    // times; every request succeeds meanwhile.
    let addr = server.addr;
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let done = done.clone();
            std::thread::spawn(move || {
                let mut pids = std::collections::BTreeSet::new();
                let mut failures = Vec::new();
                let mut c = harness::Client::connect(addr).expect("connect");
                let mut sent = 0;
                while !done.load(std::sync::atomic::Ordering::Relaxed) && sent < 20_000 {
                    sent += 1;
                    let r = match c.get("a.test", "/pid") {
                        Ok(r) => r,
                        Err(_) => {
                            // A keep-alive connection the front closed: a new one.
                            c = harness::Client::connect(addr).expect("reconnect");
                            c.get("a.test", "/pid").expect("request")
                        }
                    };
                    if r.status == 200 {
                        pids.insert(r.text().trim().to_string());
                    } else {
                        failures.push(r.status);
                    }
                }
                (pids, failures)
            })
        })
        .collect();
    let recycled = harness::eventually(Duration::from_secs(30), || {
        let s = status_json(&config);
        let n: u64 = app(&s, "busy")["processes"]
            .as_array()?
            .iter()
            .filter_map(|p| p["recycles"].as_u64())
            .sum();
        std::thread::sleep(Duration::from_millis(100));
        (n >= 6).then_some(())
    });
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut pids = std::collections::BTreeSet::new();
    for w in workers {
        let (p, failures) = w.join().expect("client thread");
        assert!(
            failures.is_empty(),
            "failed requests while recycling: {failures:?}"
        );
        pids.extend(p);
    }
    assert!(
        recycled.is_some(),
        "fewer than 6 recycles: {}",
        status_json(&config)
    );
    assert!(pids.len() >= 6, "only {} pids served: {pids:?}", pids.len());
    let s = status_json(&config);
    let busy = app(&s, "busy");
    let recycles: u64 = busy["processes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["recycles"].as_u64())
        .sum();
    assert!(recycles >= 6, "{busy}");
    assert_eq!(busy["restarts"], 0, "recycling is not restarting: {busy}");
    assert_eq!(busy["errors"], 0, "{busy}");
}

/// `wsgimux run`: one app from the command line, with a banner, the same engine (mount,
/// static folder, processes × threads).
#[test]
fn express_run() {
    let Some(python) = harness::require_python("3.12") else {
        return;
    };
    let site = Site::new();
    site.probe("app");
    site.write("app/static/hello.txt", "static hello\n");
    let mut child = Command::new(harness::BIN)
        .current_dir(site.path().join("app"))
        .args([
            "run",
            "probe.py",
            "--port",
            "0",
            "--processes",
            "2",
            "--threads",
            "3",
        ])
        .args([
            "--mount",
            "/x",
            "--static",
            "/x/static=./static",
            "--python",
        ])
        .arg(&python)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start wsgimux run");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = Vec::new();
    let mut addr = None;
    for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)) {
        let Ok(line) = line else { break };
        if let Some(a) = line.strip_prefix("ready: http://") {
            addr = a.parse::<std::net::SocketAddr>().ok();
            break;
        }
        lines.push(line);
    }
    let banner = lines.join("\n");
    let Some(addr) = addr else {
        let _ = child.kill();
        panic!("no ready line; stdout:\n{banner}");
    };
    for needle in [
        format!("Server URL       : http://{addr}/x/"),
        "Python           : CPython 3.12".to_string(),
        "Worker           : native".to_string(),
        "Request Capacity : 6 (2 processes * 3 threads)".to_string(),
        "URL Alias        : /x/static -> ./static".to_string(),
        "Server Conf      : ".to_string(),
    ] {
        assert!(
            banner.contains(&needle),
            "{needle:?} not in the banner:\n{banner}"
        );
    }
    let env = get_raw(
        addr,
        "GET /x/env/a HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(env.status, 200);
    assert_eq!(env.env("SCRIPT_NAME").as_deref(), Some(&b"/x"[..]));
    assert_eq!(env.env("PATH_INFO").as_deref(), Some(&b"/env/a"[..]));
    let file = get_raw(
        addr,
        "GET /x/static/hello.txt HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(file.text(), "static hello\n");
    // SAFETY: kill(2) on the child this test started.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().expect("wait");
    assert!(status.success(), "wsgimux run exited with {status}");
}

/// `status` finds the server from any spelling of its config file (relative, through a
/// symlink in another folder) with the default runtime dir, and through `--control` and
/// `WSGIMUX_CONTROL`; when nothing answers, the error names the socket it tried.
#[test]
fn status_finds_the_server_by_any_path_to_its_config_and_by_control() {
    let Some(py) = harness::require_python("3.12") else {
        return;
    };
    let site = Site::new();
    site.probe("app");
    // No runtime_dir: the default one, named after the config file.
    let config = site.write(
        "real/wsgimux.yaml",
        &format!(
            "listen: [\"127.0.0.1:0\"]\napps:\n  web:\n    python: {}\n    script: ../app/probe.py\n",
            py.display()
        ),
    );
    let server = Server::start(config.clone(), site.path().join("wsgimux.log"));
    let elsewhere = site.path().join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    let link = elsewhere.join("site.yaml");
    std::os::unix::fs::symlink(&config, &link).unwrap();
    for spelling in [
        config.clone(),
        link.clone(),
        site.path().join("real/../real/wsgimux.yaml"),
    ] {
        let (ok, out, err) = wsgimux(&["status"], &spelling);
        assert!(ok, "status through {}: {err}", spelling.display());
        assert!(out.contains("app web"), "{out}");
    }
    let log = server.log_text();
    let socket = log
        .split("control socket ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("serve logs its control socket:\n{log}"))
        .to_string();
    let by_flag = Command::new(harness::BIN)
        .args([
            "status",
            "--config",
            "/nonexistent/wsgimux.yaml",
            "--control",
            &socket,
        ])
        .output()
        .expect("run wsgimux");
    assert!(
        by_flag.status.success(),
        "{}",
        String::from_utf8_lossy(&by_flag.stderr)
    );
    let by_env = Command::new(harness::BIN)
        .args(["reload", "--config", "/nonexistent/wsgimux.yaml"])
        .env("WSGIMUX_CONTROL", &socket)
        .output()
        .expect("run wsgimux");
    assert!(
        by_env.status.success(),
        "{}",
        String::from_utf8_lossy(&by_env.stderr)
    );
    let nobody = Command::new(harness::BIN)
        .args(["status", "--control", "/nonexistent/control.sock"])
        .output()
        .expect("run wsgimux");
    assert_eq!(nobody.status.code(), Some(2));
    let said = String::from_utf8_lossy(&nobody.stderr);
    assert!(
        said.contains("/nonexistent/control.sock") && said.contains("--control"),
        "{said}"
    );
}

/// Socket names do not grow with app names: a 40-character app is served with the default
/// runtime dir; a configured runtime_dir too long for the sockets is a `check` error at its
/// line and column, before anything starts.
#[test]
fn long_app_names_serve_and_long_runtime_dirs_are_located() {
    let Some(py) = harness::require_python("3.12") else {
        return;
    };
    let site = Site::new();
    site.probe("app");
    let name = "billing-and-invoicing-legacy-site-python";
    assert_eq!(name.len(), 40);
    let config = site.write(
        "wsgimux.yaml",
        &format!(
            "listen: [\"127.0.0.1:0\"]\napps:\n  {name}:\n    python: {}\n    script: app/probe.py\n",
            py.display()
        ),
    );
    let server = Server::start(config, site.path().join("wsgimux.log"));
    let r = server.get("example.com", "/pid");
    assert_eq!(r.status, 200, "{}", server.log_text());
    drop(server);

    let long = format!("/tmp/{}", "deep/".repeat(16));
    site.write(
        "wsgimux.yaml",
        &format!(
            "listen: [\"127.0.0.1:0\"]\nruntime_dir: {long}\napps:\n  web:\n    python: {}\n    script: app/probe.py\n",
            py.display()
        ),
    );
    let (status, _, stderr) = site.check();
    assert!(!status.success());
    assert!(
        stderr.contains("wsgimux.yaml:2:"),
        "names the line: {stderr}"
    );
    assert!(
        stderr.contains("runtime_dir") && stderr.contains("too long"),
        "{stderr}"
    );
}

/// A second `wsgimux run` of the same app on a busy port is refused and changes nothing of the
/// first: its config file, its processes (no hot reload to the second one's counts).
#[test]
fn a_refused_run_leaves_the_running_one_alone() {
    let Some(python) = harness::require_python("3.12") else {
        return;
    };
    let site = Site::new();
    site.probe("app");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
        .to_string();
    let run = |processes: &str| {
        Command::new(harness::BIN)
            .current_dir(site.path().join("app"))
            .args([
                "run",
                "probe.py",
                "--port",
                &port,
                "--processes",
                processes,
                "--python",
            ])
            .arg(&python)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start wsgimux run")
    };
    let mut first = run("1");
    let stdout = first.stdout.take().expect("stdout");
    let mut conf = None;
    let mut ready = false;
    for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)) {
        let Ok(line) = line else { break };
        if let Some(c) = line.split("Server Conf      : ").nth(1) {
            conf = Some(std::path::PathBuf::from(c.trim()));
        }
        if line.starts_with("ready: ") {
            ready = true;
            break;
        }
    }
    assert!(ready, "the first run did not get ready");
    let conf = conf.expect("the banner names the config");
    let text = std::fs::read_to_string(&conf).expect("first config");
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let pid_of = || {
        get_raw(
            addr,
            "GET /pid HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .text()
    };
    let before = pid_of();

    let second = run("3").wait_with_output().expect("second run");
    assert!(!second.status.success(), "the second run was not refused");
    let said = String::from_utf8_lossy(&second.stderr);
    assert!(said.contains(&port), "the refusal names the port: {said}");

    std::thread::sleep(std::time::Duration::from_secs(2));
    assert_eq!(std::fs::read_to_string(&conf).expect("first config"), text);
    assert_eq!(pid_of(), before, "the first run's process changed");
    let children = harness::child_pids(first.id());
    assert_eq!(children.len(), 1, "processes: {children:?}");
    // SAFETY: kill(2) on the child this test started.
    unsafe { libc::kill(first.id() as i32, libc::SIGTERM) };
    let status = first.wait().expect("wait");
    assert!(status.success(), "wsgimux run exited with {status}");
    assert!(!conf.exists(), "the run's own folder is left behind");
}

/// A combined log line's fields: client, time, request line, status, bytes, referer, user
/// agent, and the rest of the line.
type Combined<'a> = (
    &'a str,
    &'a str,
    &'a str,
    &'a str,
    &'a str,
    &'a str,
    &'a str,
    &'a str,
);

/// A combined log line, parsed the way log tools read the format (anchored at the start of
/// the line).
fn parse_combined(line: &str) -> Option<Combined<'_>> {
    let (client, rest) = line.split_once(" - - [")?;
    let (time, rest) = rest.split_once("] \"")?;
    let (request, rest) = rest.split_once("\" ")?;
    let (status, rest) = rest.split_once(' ')?;
    let (bytes, rest) = rest.split_once(" \"")?;
    let (referer, rest) = rest.split_once("\" \"")?;
    let (agent, rest) = rest.split_once('"')?;
    let ok = !client.contains(' ')
        && status.len() == 3
        && status.bytes().all(|b| b.is_ascii_digit())
        && (bytes == "-" || bytes.bytes().all(|b| b.is_ascii_digit()));
    ok.then_some((client, time, request, status, bytes, referer, agent, rest))
}

/// The access log in wsgimux's log stream is exactly combined from the first byte of each
/// line, with the Host's name (no port: one site is one vhost) in a `vhost=` field; with `log_format: json` every line of the log is
/// one JSON object, the access records among them, and the JSON access format carries `host`.
#[test]
fn access_lines_parse_as_combined_with_the_vhost_and_the_json_log_is_json() {
    let Some(py) = harness::require_python("3.13") else {
        return;
    };
    let site = Site::new();
    site.one_app("web", &py, &[]);
    let server = site.serve();
    let r = get_raw(
        server.addr,
        "GET /ver?x=1 HTTP/1.1\r\nHost: Shop.Example:8080\r\nUser-Agent: probe/1\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(r.status, 200);
    let line = harness::eventually(Duration::from_secs(5), || {
        server
            .log_text()
            .lines()
            .find(|l| l.contains("GET /ver?x=1"))
            .map(str::to_string)
    })
    .expect("an access line");
    let (client, _, request, status, _, _, agent, rest) =
        parse_combined(&line).unwrap_or_else(|| panic!("not combined: {line:?}"));
    assert_eq!(
        (client, request, status, agent),
        ("127.0.0.1", "GET /ver?x=1 HTTP/1.1", "200", "probe/1")
    );
    assert!(rest.contains(" app=web vhost=shop.example rt="), "{rest}");
    drop(server);

    let site = Site::new();
    let config = site.one_app("web", &py, &["mount: /w"]);
    let text = std::fs::read_to_string(&config).expect("config");
    std::fs::write(
        &config,
        format!("log_format: json\naccess_log: {{format: json}}\n{text}"),
    )
    .expect("config");
    let server = site.serve();
    let r = get_raw(
        server.addr,
        "GET /w/ver HTTP/1.1\r\nHost: Shop.Example:8080\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(r.status, 200);
    let log = harness::eventually(Duration::from_secs(5), || {
        let log = server.log_text();
        log.contains("/w/ver").then_some(log)
    })
    .expect("the access record");
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
        assert!(v["level"].is_string(), "{v}");
    }
    let access = log.lines().find(|l| l.contains("/w/ver")).expect("access");
    let v: serde_json::Value = serde_json::from_str(access).expect("json");
    let record: serde_json::Value =
        serde_json::from_str(v["fields"]["message"].as_str().expect("message")).expect("json");
    assert_eq!(record["host"], "shop.example", "{record}");
    assert_eq!(record["port"], 8080, "{record}");
}

/// `status` adds up: an app's requests are its listed processes' plus `retired` (processes no
/// longer listed: killed, restarted) plus `front` (answered by the front itself, counted where
/// it happens); and generations are counted per app (a restarted app is at 2, the other one
/// still at 1).
#[test]
fn status_totals_add_up_and_generations_are_per_app() {
    let Some(py) = harness::require_python("3.13") else {
        return;
    };
    let site = Site::new();
    site.probe("app");
    let config = site.config(&format!(
        "apps:\n  busy:\n    python: {py}\n    script: app/probe.py\n    processes: 2\n    max_body_size: 1k\n    mount: /b\n  quiet:\n    python: {py}\n    script: app/probe.py\n    mount: /q\n",
        py = py.display()
    ));
    let server = site.serve();
    let mut c = harness::Client::connect(server.addr).expect("connect");
    for _ in 0..20 {
        assert_eq!(c.get("x", "/b/ver").expect("get").status, 200);
    }
    // Answered by the front: a body over max_body_size.
    let big = get_raw(
        server.addr,
        "POST /b/upload HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(big.status, 413);
    // Processes that are gone: a killed one, then a restart of all.
    let victim = server.app_pids("busy")[0];
    // SAFETY: kill(2) on a child of the server this test started.
    unsafe { libc::kill(victim as i32, libc::SIGKILL) };
    harness::eventually(Duration::from_secs(10), || {
        let s = status_json(&config);
        let pids: Vec<u64> = app(&s, "busy")["processes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| p["state"] == "ready")
            .filter_map(|p| p["pid"].as_u64())
            .collect();
        (pids.len() == 2 && !pids.contains(&u64::from(victim))).then_some(())
    })
    .expect("restarted");
    for _ in 0..10 {
        let _ = harness::Client::connect(server.addr)
            .expect("connect")
            .get("x", "/b/ver");
    }
    let (ok, _, err) = wsgimux(&["restart", "busy"], &config);
    assert!(ok, "{err}");
    for _ in 0..5 {
        let _ = harness::Client::connect(server.addr)
            .expect("connect")
            .get("x", "/b/ver");
    }
    let s = status_json(&config);
    let busy = app(&s, "busy");
    let listed: u64 = busy["processes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["requests"].as_u64())
        .sum();
    let (retired, front) = (
        busy["retired"]["requests"].as_u64().unwrap_or(0),
        busy["front"]["requests"].as_u64().unwrap_or(0),
    );
    assert!(retired >= 20 && front == 1, "{busy}");
    assert_eq!(
        busy["requests"].as_u64(),
        Some(listed + retired + front),
        "{busy}"
    );
    assert_eq!(busy["generation"], 2, "{busy}");
    assert_eq!(app(&s, "quiet")["generation"], 1);
}

/// `explain` asks the running server when one answers — what it serves now, even while the
/// file on disk is broken — and names the static folder (and file) that serves a URL.
#[test]
fn explain_asks_the_running_server_and_names_static_folders() {
    let Some(py) = harness::require_python("3.13") else {
        return;
    };
    let site = Site::new();
    site.probe("app");
    site.write("app/static/site.css", "body{}\n");
    let config = site.config(&format!(
        "apps:\n  web:\n    python: {}\n    script: app/probe.py\n    mount: /web\n    static:\n      /static: app/static\n",
        py.display()
    ));
    let (ok, out, err) = wsgimux(&["explain", "http://x/web/static/site.css"], &config);
    assert!(ok, "{err}");
    assert!(
        out.contains("static       : /web/static ->") && out.contains("site.css"),
        "{out}"
    );
    let server = site.serve();
    std::fs::write(&config, "apps: [broken\n").expect("break the file");
    let (ok, out, err) = wsgimux(&["explain", "http://x/web/page"], &config);
    assert!(ok, "{err}");
    assert!(
        out.contains("app          : web (") && out.contains("PATH_INFO    : \"/page\""),
        "{out}"
    );
    assert!(out.contains("source       : the running server"), "{out}");
    drop(server);
}

/// The access log to a file is buffered (nginx's `buffer=64k flush=1s`) and loses nothing:
/// lines reach the file within a second or two, and the last ones at a clean stop.
#[test]
fn the_buffered_access_log_reaches_the_file_in_time_and_at_stop() {
    let Some(py) = harness::require_python("3.13") else {
        return;
    };
    let site = Site::new();
    let config = site.one_app("web", &py, &[]);
    let text = std::fs::read_to_string(&config).expect("config");
    std::fs::write(&config, format!("access_log: logs/access.log\n{text}")).expect("config");
    let mut server = site.serve();
    let access = site.path().join("logs/access.log");
    let lines = || {
        std::fs::read_to_string(&access)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("GET /ver"))
            .count()
    };
    let mut c = harness::Client::connect(server.addr).expect("connect");
    for _ in 0..50 {
        assert_eq!(c.get("x", "/ver").expect("get").status, 200);
    }
    assert!(
        harness::eventually(Duration::from_secs(3), || (lines() == 50).then_some(())).is_some(),
        "{} of 50 lines after 3 s",
        lines()
    );
    for _ in 0..5 {
        assert_eq!(c.get("x", "/ver").expect("get").status, 200);
    }
    drop(c);
    server.signal(libc::SIGTERM);
    assert!(server.wait_exit(Duration::from_secs(30)).is_some());
    assert_eq!(lines(), 55, "lines lost at stop");
}

/// Prometheus series (name and labels) → value, from `/metrics` text.
fn scrape(admin: std::net::SocketAddr) -> std::collections::BTreeMap<String, f64> {
    let r = get_raw(
        admin,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(r.status, 200);
    r.text()
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_string(), value.parse().ok()?))
        })
        .collect()
}

/// Prometheus's rule for counters: a `_total` (and a histogram's `_count`, `_sum`, buckets)
/// never goes down for the same labels while the server runs — not after a crash, nor a
/// `wsgimux restart`, nor a reload; restarts have their own outcome, apart from config
/// reloads; requests no app was chosen for are counted.
#[test]
fn prometheus_counters_never_go_down_and_restarts_are_not_reloads() {
    let Some(py) = harness::require_python("3.12") else {
        return;
    };
    let site = Site::new();
    site.probe("app");
    let config = site.config(&format!(
        "admin: {{listen: \"127.0.0.1:0\"}}\napps:\n  web:\n    python: {}\n    script: app/probe.py\n    processes: 2\n    mount: /w\n",
        py.display()
    ));
    let server = site.serve();
    let admin: std::net::SocketAddr = status_json(&config)["admin"]
        .as_str()
        .and_then(|a| a.parse().ok())
        .expect("admin address");
    for _ in 0..10 {
        assert_eq!(server.get("a.test", "/w/pid").status, 200);
    }
    assert_eq!(server.get("a.test", "/nowhere").status, 404);
    let counters = |m: &std::collections::BTreeMap<String, f64>| {
        m.iter()
            .filter(|(k, _)| {
                let name = k.split('{').next().unwrap_or("");
                name.ends_with("_total")
                    || name.ends_with("_count")
                    || name.ends_with("_sum")
                    || name.ends_with("_bucket")
            })
            .map(|(k, v)| (k.clone(), *v))
            .collect::<std::collections::BTreeMap<_, _>>()
    };
    let mut before = counters(&scrape(admin));
    assert_eq!(
        before["wsgimux_unrouted_requests_total{code=\"4xx\"}"], 1.0,
        "{before:?}"
    );

    // A crash: counted as a restart.
    let victim = server.app_pids("web")[0];
    // SAFETY: kill(2) on a child of the server under test.
    unsafe { libc::kill(victim as i32, libc::SIGKILL) };
    let seen = harness::eventually(Duration::from_secs(20), || {
        let m = scrape(admin);
        (m.get("wsgimux_process_restarts_total{app=\"web\"}") == Some(&1.0)
            && m.get("wsgimux_processes{app=\"web\",state=\"ready\"}") == Some(&2.0))
        .then_some(m)
    });
    let mut checks = vec![("a crash", seen.expect("the crash is counted"))];
    // A restart of the app (a new generation): its restarts total stays.
    let (ok, _, err) = wsgimux(&["restart", "web"], &config);
    assert!(ok, "{err}");
    checks.push(("wsgimux restart", scrape(admin)));
    // A reload that changes nothing but a comment.
    let text = std::fs::read_to_string(&config).expect("config");
    std::fs::write(&config, format!("# deployed again\n{text}")).expect("config");
    let (ok, out, err) = wsgimux(&["reload"], &config);
    assert!(ok, "{err}");
    assert!(out.contains("nothing to change"), "{out}");
    checks.push(("a reload", scrape(admin)));
    for (after_what, now) in checks {
        let now = counters(&now);
        for (series, was) in &before {
            let is = now.get(series).copied().unwrap_or(0.0);
            assert!(
                is >= *was,
                "{series} went down after {after_what}: {was} → {is}"
            );
        }
        before = now;
    }
    let m = scrape(admin);
    assert_eq!(m["wsgimux_process_restarts_total{app=\"web\"}"], 1.0);
    assert_eq!(m["wsgimux_restarts_total"], 1.0);
    assert_eq!(m["wsgimux_reloads_total"], 1.0);
    assert_eq!(m["wsgimux_last_restart_success"], 1.0);
    // A failed restart (an unknown app) is a restart's failure, not a config reload's.
    let (ok, _, _) = wsgimux(&["restart", "nope"], &config);
    assert!(!ok);
    let m = scrape(admin);
    assert_eq!(m["wsgimux_last_restart_success"], 0.0);
    assert_eq!(m["wsgimux_last_reload_success"], 1.0);
    assert_eq!(m["wsgimux_reloads_total"], 1.0);
    let s = status_json(&config);
    assert_eq!(s["last_restart"]["outcome"], "rejected", "{s}");
    assert_eq!(s["last_reload"]["outcome"], "unchanged", "{s}");
}

/// With `log_format: json` every line wsgimux writes parses as JSON, on stdout (the start-up
/// lines, with `app`, `pids`, `url`) and on stderr (its log, the apps' output, access records);
/// a traceback, from either worker, is one record whose `exception` holds all of it and none
/// of the worker's own frames.
#[test]
fn every_line_of_a_json_log_parses_and_a_traceback_is_one_record() {
    let (Some(py3), Some(py2)) = (
        harness::require_python("3.12"),
        harness::require_python("2.7"),
    ) else {
        return;
    };
    let site = Site::new();
    site.probe("app");
    site.write(
        "app/broken.py",
        "import os\nraise ImportError('no module named shop')\n",
    );
    site.config(&format!(
        "log_format: json\napps:\n  native:\n    python: {}\n    script: app/probe.py\n    mount: /n\n  portable:\n    python: {}\n    script: app/probe.py\n    mount: /p\n  broken:\n    python: {}\n    script: app/broken.py\n    mount: /b\n",
        py3.display(),
        py2.display(),
        py3.display()
    ));
    let server = site.serve();
    for line in &server.stdout {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("stdout {e}: {line:?}"));
        assert!(v["fields"]["message"].is_string(), "{v}");
    }
    let record = |needle: &str| {
        server
            .stdout
            .iter()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|v| {
                v["fields"]["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with(needle))
            })
            .unwrap_or_else(|| panic!("no {needle:?} on stdout: {:?}", server.stdout))
    };
    assert_eq!(record("app native: ready")["fields"]["app"], "native");
    assert!(record("app native: ready")["fields"]["pids"][0].is_u64());
    assert_eq!(record("app broken: failed")["fields"]["ready"], false);
    let url = format!("http://{}", server.addr);
    assert_eq!(record("ready: ")["fields"]["url"], url);
    for mount in ["/n", "/p"] {
        assert_eq!(server.get("x", &format!("{mount}/boom")).status, 500);
    }
    let tracebacks = harness::eventually(Duration::from_secs(10), || {
        let records: Vec<serde_json::Value> = server
            .log_text()
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("stderr {e}: {l:?}")))
            .collect();
        let tb: Vec<serde_json::Value> = records
            .into_iter()
            .filter(|v| v["fields"]["exception"].is_string())
            .collect();
        // Both /boom tracebacks, and the broken app's import error (each start of it).
        let boom = tb
            .iter()
            .filter(|v| {
                v["fields"]["message"]
                    .as_str()
                    .unwrap_or("")
                    .contains("RuntimeError: boom")
            })
            .count();
        (boom == 2).then_some(tb)
    })
    .unwrap_or_else(|| panic!("two traceback records:\n{}", server.log_text()));
    for v in &tracebacks {
        let text = v["fields"]["exception"].as_str().unwrap_or("");
        assert!(
            text.starts_with("Traceback (most recent call last):"),
            "{v}"
        );
        assert!(
            !text.contains("wsgimux_worker.py"),
            "a worker frame: {text}"
        );
        assert!(v["fields"]["app"].is_string(), "{v}");
        if v["target"] == "wsgimux::app" {
            assert!(
                v["fields"]["pid"].is_u64(),
                "the app's output names its pid: {v}"
            );
        }
    }
    let boom = tracebacks
        .iter()
        .find(|v| v["fields"]["app"] == "portable")
        .expect("the portable worker's traceback");
    let text = boom["fields"]["exception"].as_str().unwrap_or("");
    assert!(
        text.contains("probe.py") && text.contains("raise RuntimeError"),
        "{text}"
    );
    // No line of a traceback is a record of its own.
    let frame_alone = server.log_text().lines().any(|l| {
        let v: serde_json::Value = serde_json::from_str(l).unwrap_or_default();
        let message = v["fields"]["message"].as_str().unwrap_or("");
        v["fields"]["exception"].is_null() && message.contains("]   File \"")
    });
    assert!(!frame_alone, "{}", server.log_text());
}

/// What a config leaves exposed is said, one warning line each, by `check` (which still passes
/// and lists the admin listener) and by `serve`: an app that would run as root, an admin
/// listener that is not on loopback.
#[test]
fn check_and_serve_warn_of_root_apps_and_an_admin_listener_off_loopback() {
    let Some(py) = harness::require_python("3.12") else {
        return;
    };
    // SAFETY: geteuid cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    let site = Site::new();
    site.probe("app");
    site.config(&format!(
        "admin: {{listen: \"0.0.0.0:0\"}}\napps:\n  web:\n    python: {}\n    script: app/probe.py\n",
        py.display()
    ));
    let (status, out, err) = site.check();
    assert!(status.success(), "{out}{err}");
    assert!(out.contains("admin  http://0.0.0.0:0/"), "{out}");
    let warnings: Vec<&str> = err.lines().filter(|l| l.starts_with("warning: ")).collect();
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("admin.listen 0.0.0.0:0 is not loopback")),
        "{err}"
    );
    let as_root = warnings
        .iter()
        .any(|w| w.contains("app web would run as root"));
    assert_eq!(as_root, root, "{err}");
    let server = site.serve();
    let said = server
        .wait_log("is not loopback", Duration::from_secs(5))
        .expect("serve warns too");
    assert!(said.contains("WARN"), "{said}");
    drop(server);

    // On loopback: nothing to say of it (an app's account is `exposures`' unit test).
    site.config(&format!(
        "admin: {{listen: \"127.0.0.1:0\"}}\napps:\n  web:\n    python: {}\n    script: app/probe.py\n",
        py.display()
    ));
    let (status, out, err) = site.check();
    assert!(status.success(), "{out}{err}");
    assert!(!err.contains("not loopback"), "{err}");
}

/// A log's reader that does not keep up costs lines, not requests: with stderr a pipe nobody
/// reads (wsgimux's log and the access log both go there), thousands of requests are answered
/// at once each, and the lines dropped are counted.
#[test]
fn requests_are_answered_while_nobody_reads_stderr() {
    let Some(py) = harness::require_python("3.13") else {
        return;
    };
    let site = harness::Site::new();
    let config = site.one_app("web", &py, &[]);
    let mut child = Command::new(harness::BIN)
        .args(["serve", "--config"])
        .arg(&config)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start wsgimux");
    // Held open and never read: once the pipe's 64 KiB are full, a write to it would block.
    let _unread = child.stderr.take();
    let stdout = std::io::BufReader::new(child.stdout.take().expect("stdout"));
    let addr: std::net::SocketAddr = std::io::BufRead::lines(stdout)
        .map_while(Result::ok)
        .find_map(|l| l.strip_prefix("ready: http://").map(str::to_string))
        .expect("a ready line")
        .parse()
        .expect("address");
    // Each access line is over 100 bytes: a few hundred fill the pipe; 20,000 are more than
    // the queue in front of it holds (16,384 lines), so lines are dropped, and counted.
    let clients: Vec<_> = (0..4)
        .map(|t| {
            std::thread::spawn(move || {
                let mut c = harness::Client::connect(addr).expect("connect");
                c.reader_timeout(Duration::from_secs(5));
                for n in 0..5000 {
                    let r = c
                        .get("x.test", "/pid")
                        .unwrap_or_else(|e| panic!("client {t}, request {n}: {e}"));
                    assert_eq!(r.status, 200, "client {t}, request {n}");
                }
            })
        })
        .collect();
    for c in clients {
        c.join().expect("a client failed");
    }
    let s = status_json(&config);
    assert!(s["log_lines_dropped"].as_u64().unwrap_or(0) > 0, "{s}");
    let _ = child.kill();
    let _ = child.wait();
}
