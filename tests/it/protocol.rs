//! Protocol hygiene towards every kind of child: an HTTP/1.0 request without Host gets one,
//! the client's protocol reaches `SERVER_PROTOCOL`, HTTP/2 cookie fields arrive joined, request
//! paths are normalised (or refused) before routing, and `Upgrade` tunnels reach servers that
//! speak them. The children: both workers, gunicorn as a `command:`, uvicorn (h11, which
//! refuses an HTTP/1.1 request without Host) as an `upstream:`.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::harness::*;
use crate::tls::{certificate, curl, free_port, tools_present};

const ASGI_APP: &str = include_str!("../apps/asgi_app.py");

/// Python 3.13's virtualenv with the servers these tests run (uvicorn on h11, websockets,
/// gunicorn), made once and kept.
fn servers_venv(py: &Path) -> Option<std::path::PathBuf> {
    pip_venv(
        py,
        "asgi-3.13",
        &["uvicorn", "h11", "websockets", "gunicorn"],
    )
}

/// uvicorn on h11 serving the ASGI app at 127.0.0.1:`port`, killed when dropped.
struct Uvicorn(Child);

impl Uvicorn {
    fn start(venv: &Path, app_dir: &Path, port: u16) -> Self {
        Self::start_with(venv, app_dir, port, &[])
    }

    fn start_with(venv: &Path, app_dir: &Path, port: u16, extra: &[&str]) -> Self {
        let child = Command::new(venv.join("bin/uvicorn"))
            .args(extra)
            .args([
                "--http",
                "h11",
                "--host",
                "127.0.0.1",
                "--port",
                &port.to_string(),
            ])
            .args(["--log-level", "warning", "--app-dir"])
            .arg(app_dir)
            .arg("asgi_app:app")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("start uvicorn");
        let up = eventually(Duration::from_secs(20), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).ok()
        });
        assert!(up.is_some(), "uvicorn did not start");
        Uvicorn(child)
    }
}

impl Drop for Uvicorn {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A site with the probe on both workers (/p portable, /n native), gunicorn as a command (/g)
/// and uvicorn as an upstream (/u), plus a TLS listener on `tls_port`.
fn mixed_site(site: &Site, py: &Path, gunicorn: &Path, uvicorn_port: u16, tls_port: u16) {
    site.probe("app");
    site.write("app/asgi_app.py", ASGI_APP);
    let (cert, key) = certificate(site.path(), "site", &["site.test"]);
    site.write(
        "wsgimux.yaml",
        &format!(
            r#"runtime_dir: {run}
listen:
  - "127.0.0.1:0"
  - address: "127.0.0.1:{tls_port}"
    tls:
      certificates:
        - {{cert: {cert}, key: {key}}}
apps:
  por:
    python: {py}
    script: app/probe.py
    worker: portable
    mount: /p
  nat:
    python: {py}
    script: app/probe.py
    worker: native
    mount: /n
  gun:
    python: {gunicorn}
    command: ["gunicorn", "--bind", "unix:{{socket}}", "probe:app"]
    working_dir: app
    mount: /g
  uvi:
    upstream: "http://127.0.0.1:{uvicorn_port}"
    mount: /u
"#,
            run = site.path().join("run").display(),
            cert = cert.display(),
            key = key.display(),
            py = py.display(),
            gunicorn = gunicorn.display(),
        ),
    );
}

fn json(r: &Response) -> Value {
    serde_json::from_slice(&r.body).unwrap_or_else(|e| panic!("{e}: {}", r.text()))
}

/// The value of header `name` as uvicorn saw it.
fn seen_header(v: &Value, name: &str) -> Option<String> {
    v["headers"].as_array()?.iter().find_map(|h| {
        (h[0].as_str()? == name).then(|| h[1].as_str().unwrap_or_default().to_string())
    })
}

fn env_of(r: &Response, key: &str) -> String {
    String::from_utf8_lossy(&r.env(key).unwrap_or_default()).into_owned()
}

fn get(addr: SocketAddr, raw: &str) -> Response {
    request(addr, raw.as_bytes()).unwrap_or_else(|e| panic!("{raw:?}: {e}"))
}

#[test]
fn every_child_gets_a_host_the_clients_protocol_and_joined_cookies() {
    let Some(py) = require_python("3.13") else {
        return;
    };
    if !tools_present() {
        return;
    }
    let Some(venv) = servers_venv(&py) else {
        return;
    };
    let site = Site::new();
    let uvicorn_port = free_port();
    let tls_port = free_port();
    mixed_site(&site, &py, &venv, uvicorn_port, tls_port);
    let _uvicorn = Uvicorn::start(&venv, &site.path().join("app"), uvicorn_port);
    let server = site.serve();
    let addr = server.addr;
    let port = addr.port().to_string();

    // HTTP/1.0 without Host: the listener's address, as nginx gives it — strict h11 answers.
    let r = get(addr, "GET /u/info HTTP/1.0\r\n\r\n");
    assert_eq!(r.status, 200, "{}\n{}", r.text(), server.log_text());
    let v = json(&r);
    assert_eq!(
        seen_header(&v, "host"),
        Some(format!("127.0.0.1:{port}")),
        "{v}"
    );
    for mount in ["/p", "/n", "/g"] {
        let r = get(addr, &format!("GET {mount}/env HTTP/1.0\r\n\r\n"));
        assert_eq!(r.status, 200, "{mount}: {}", r.text());
        assert_eq!(env_of(&r, "SERVER_NAME"), "127.0.0.1", "{mount}");
        assert_eq!(env_of(&r, "SERVER_PORT"), port, "{mount}");
        if mount != "/g" {
            assert_eq!(env_of(&r, "SERVER_PROTOCOL"), "HTTP/1.0", "{mount}");
        }
    }
    for mount in ["/p", "/n"] {
        let r = get(
            addr,
            &format!("GET {mount}/env HTTP/1.1\r\nHost: x\r\n\r\n"),
        );
        assert_eq!(env_of(&r, "SERVER_PROTOCOL"), "HTTP/1.1", "{mount}");
        // A client's own copy of the front's protocol header never counts.
        let r = get(
            addr,
            &format!("GET {mount}/env HTTP/1.1\r\nHost: x\r\nServer-Protocol: HTTP/2.0\r\nserver_protocol: HTTP/2.0\r\n\r\n"),
        );
        assert_eq!(env_of(&r, "SERVER_PROTOCOL"), "HTTP/1.1", "{mount}");
    }

    // HTTP/2: the workers report it; split cookie fields arrive as one, joined with "; ".
    let ca = site.path().join("site.pem");
    let cookies = ["-H", "Cookie: a=1", "-H", "Cookie: b=2"];
    for mount in ["/p", "/n", "/g"] {
        let (version, status, body) = curl(
            "site.test",
            tls_port,
            &format!("{mount}/env"),
            &ca,
            &cookies,
        )
        .expect("curl over h2");
        assert_eq!((version.as_str(), status), ("2", 200), "{mount}: {body}");
        let r = Response {
            status,
            headers: vec![],
            body: body.into_bytes(),
        };
        assert_eq!(env_of(&r, "HTTP_COOKIE"), "a=1; b=2", "{mount}");
        if mount != "/g" {
            assert_eq!(env_of(&r, "SERVER_PROTOCOL"), "HTTP/2.0", "{mount}");
        }
    }
    let (_, _, body) =
        curl("site.test", tls_port, "/u/info", &ca, &cookies).expect("h2 to uvicorn");
    let v: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(
        seen_header(&v, "cookie").as_deref(),
        Some("a=1; b=2"),
        "{v}"
    );
}

#[test]
fn paths_are_normalised_before_routing_and_climbing_or_nul_is_refused() {
    let Some(py) = require_python("3.13") else {
        return;
    };
    let Some(venv) = servers_venv(&py) else {
        return;
    };
    let site = Site::new();
    let uvicorn_port = free_port();
    mixed_site(&site, &py, &venv, uvicorn_port, free_port());
    let _uvicorn = Uvicorn::start(&venv, &site.path().join("app"), uvicorn_port);
    let server = site.serve();
    let addr = server.addr;

    // Routed by the resolved path, and the child gets the resolved path.
    for (path, mount, path_info) in [
        ("/u/../p/env", "/p", "/env"),
        ("/u/%2e%2e/n/env", "/n", "/env"),
        ("/p/./x/../env", "/p", "/env"),
        ("/g/a/%2E./env", "/g", "/env"),
    ] {
        let r = get(addr, &format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n"));
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        assert_eq!(env_of(&r, "SCRIPT_NAME"), mount, "{path}");
        assert_eq!(env_of(&r, "PATH_INFO"), path_info, "{path}");
    }
    let r = get(addr, "GET /p/../u/info?x=1 HTTP/1.1\r\nHost: x\r\n\r\n");
    let v = json(&r);
    assert_eq!(v["raw_path"], "/u/info", "{v}");
    // An escaped slash stays inside its segment; one that hides a dot-segment is refused.
    let r = get(addr, "GET /u/a%2Fb.c HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(json(&r)["raw_path"], "/u/a%2Fb.c");
    for bad in [
        "/u/a%2F..%2Fb",
        "/..%2f..%2fetc/passwd",
        "/u/%2e%2e%2f%2e%2e%2fx",
        "/..",
        "/u/../../etc/passwd",
        "/%2e%2e/u/info",
        "/p/m%00x",
        "/n/%00",
    ] {
        let r = get(addr, &format!("GET {bad} HTTP/1.1\r\nHost: x\r\n\r\n"));
        assert_eq!(r.status, 400, "{bad}: {}", r.text());
    }
}

/// A `websockets` client (tests/apps/ws_client.py) talking through `url`, stopped at "open"
/// until [`WsClient::finish`].
struct WsClient {
    child: Child,
    lines: std::io::Lines<std::io::BufReader<std::process::ChildStdout>>,
}

impl Drop for WsClient {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl WsClient {
    fn open(venv: &Path, script: &Path, url: &str) -> (Self, String) {
        use std::io::BufRead;
        let mut child = Command::new(venv.join("bin/python"))
            .arg(script)
            .arg(url)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the WebSocket client");
        let stdout = child.stdout.take().expect("stdout");
        let mut c = WsClient {
            child,
            lines: std::io::BufReader::new(stdout).lines(),
        };
        let pid = c.expect_line("pid ");
        c.expect_line("open");
        (c, pid)
    }

    /// The next line, which must start with `prefix`; the rest of it.
    fn expect_line(&mut self, prefix: &str) -> String {
        match self.lines.next() {
            Some(Ok(l)) if l.starts_with(prefix) => l[prefix.len()..].trim().to_string(),
            other => {
                let _ = self.child.kill();
                panic!("WebSocket client: wanted {prefix:?}, got {other:?}")
            }
        }
    }

    /// One more echo over the open socket, then the close handshake: (pid, close code).
    fn finish(mut self) -> (String, String) {
        use std::io::Write;
        let mut stdin = self.child.stdin.take().expect("stdin");
        stdin.write_all(b"go\n").expect("tell the client");
        let pid = self.expect_line("pid ");
        let code = self.expect_line("closed ");
        (pid, code)
    }
}

#[test]
fn websockets_reach_command_and_upstream_servers_and_outlive_a_reload() {
    let Some(py) = require_python("3.13") else {
        return;
    };
    let Some(venv) = servers_venv(&py) else {
        return;
    };
    let site = Site::new();
    site.probe("app");
    site.write("app/asgi_app.py", ASGI_APP);
    let client_script = site.write("ws_client.py", include_str!("../apps/ws_client.py"));
    let uvicorn_port = free_port();
    let _uvicorn = Uvicorn::start(&venv, &site.path().join("app"), uvicorn_port);
    let config = |generation: u32| {
        format!(
            "apps:\n  cmd:\n    python: {venv}\n    command: [\"uvicorn\", \"--uds\", \"{{socket}}\", \"asgi_app:app\"]\n    working_dir: app\n    mount: /c\n    env: {{GENERATION: \"{generation}\"}}\n  up:\n    upstream: \"http://127.0.0.1:{uvicorn_port}\"\n    mount: /u\n  wsgi:\n    python: {py}\n    script: app/probe.py\n    mount: /w\n",
            venv = venv.display(),
            py = py.display(),
        )
    };
    site.config(&config(1));
    let server = site.serve();
    let url = |mount: &str| format!("ws://{}{mount}/ws", server.addr);

    let (through_command, old_pid) = WsClient::open(&venv, &client_script, &url("/c"));
    let (through_upstream, _) = WsClient::open(&venv, &client_script, &url("/u"));
    // Counted as open, not as requests in flight.
    let status = crate::operating::status_json(&site.path().join("wsgimux.yaml"));
    for name in ["cmd", "up"] {
        let load = crate::operating::app(&status, name);
        assert_eq!(
            (load["tunnels"].as_u64(), load["in_flight"].as_u64()),
            (Some(1), Some(0)),
            "{name}: {load}"
        );
    }

    // A reload that replaces the command app's process: new requests go to the new one, the
    // open socket stays with the old one until it closes.
    site.config(&config(2));
    let (status, _, err) = site.reload();
    assert!(status.success(), "{err}");
    let new_pid = eventually(Duration::from_secs(20), || {
        let v = json(&server.get("x", "/c/info"));
        let pid = v["pid"].to_string();
        (pid != old_pid).then_some(pid)
    })
    .expect("the new process serves new requests");
    assert!(
        pid_alive(old_pid.parse().expect("pid")),
        "the old process left early"
    );
    let (pid, code) = through_command.finish();
    assert_eq!((pid.as_str(), code.as_str()), (old_pid.as_str(), "1000"));
    assert!(
        eventually(Duration::from_secs(15), || (!pid_alive(
            old_pid.parse().expect("pid")
        ))
        .then_some(()))
        .is_some(),
        "the old process outlived its last socket"
    );
    let (_, code) = through_upstream.finish();
    assert_eq!(code, "1000");
    let (_, new_socket_pid) = WsClient::open(&venv, &client_script, &url("/c"));
    assert_eq!(new_socket_pid, new_pid);

    // One access-log line per socket, when it closed: the 101, its time, the bytes each way.
    let line = eventually(Duration::from_secs(5), || {
        let log = server.log_text();
        let found = log
            .lines()
            .find(|l| l.contains("\"GET /c/ws HTTP/1.1\" 101"));
        found.map(str::to_string)
    })
    .unwrap_or_else(|| panic!("{}", server.log_text()));
    assert!(
        line.contains("app=cmd") && line.contains("upgraded in="),
        "{line}"
    );
    let bytes_in: u64 = line
        .split("upgraded in=")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .expect("bytes in");
    assert!(bytes_in > 1 << 20, "{line}");

    // A WSGI app cannot upgrade: it gets a plain request, and the client a plain answer.
    let r = get(
        server.addr,
        "GET /w/env HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(!r.text().contains("UPGRADE"), "{}", r.text());
}

/// A CA made for the test and a certificate it signed for `localhost` and 127.0.0.1: the CA's
/// PEM, the leaf's certificate and key files.
fn test_ca(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let ca_key = rcgen::KeyPair::generate().expect("CA key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "wsgimux test CA");
    let ca = ca_params.self_signed(&ca_key).expect("CA certificate");
    let issuer = rcgen::Issuer::from_params(&ca_params, &ca_key);
    let leaf_key = rcgen::KeyPair::generate().expect("leaf key");
    let leaf =
        rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .expect("leaf params")
            .signed_by(&leaf_key, &issuer)
            .expect("leaf certificate");
    let write = |name: &str, text: String| {
        let p = dir.join(name);
        std::fs::write(&p, text).expect("write PEM");
        p
    };
    (
        write("ca.pem", ca.pem()),
        write("leaf.pem", leaf.pem()),
        write("leaf.key", leaf_key.serialize_pem()),
    )
}

#[test]
fn https_upstreams_verify_against_a_private_ca_and_refuse_what_does_not_verify() {
    let Some(py) = require_python("3.13") else {
        return;
    };
    let Some(venv) = servers_venv(&py) else {
        return;
    };
    let site = Site::new();
    site.write("app/asgi_app.py", ASGI_APP);
    let (ca, leaf, key) = test_ca(site.path());
    let port = free_port();
    let (leaf, key) = (leaf.display().to_string(), key.display().to_string());
    let _uvicorn = Uvicorn::start_with(
        &venv,
        &site.path().join("app"),
        port,
        &["--ssl-certfile", &leaf, "--ssl-keyfile", &key],
    );
    site.config(&format!(
        "apps:\n  trusted:\n    upstream: \"https://localhost:{port}\"\n    upstream_ca: {ca}\n    mount: /t\n  untrusted:\n    upstream: \"https://127.0.0.1:{port}\"\n    mount: /x\n",
        ca = ca.display()
    ));
    let (status, out, err) = site.check();
    assert!(status.success(), "{out}{err}");
    let server = site.serve();

    // Verified against the private CA, SNI from the URL, one pooled connection for both.
    let mut c = Client::connect(server.addr).expect("connect");
    let first = json(&c.get("x", "/t/info").expect("first"));
    let second = json(&c.get("x", "/t/info").expect("second"));
    assert_eq!(first["path"], "/t/info", "{first}");
    assert_eq!(
        first["client"], second["client"],
        "not one kept-alive connection"
    );

    // The system's roots do not know the test CA: 502, and the log says why.
    let r = server.get("x", "/x/info");
    assert_eq!(r.status, 502, "{}", r.text());
    let line = server
        .wait_log(
            "TLS with upstream https://127.0.0.1",
            Duration::from_secs(10),
        )
        .unwrap_or_else(|| panic!("{}", server.log_text()));
    assert!(
        line.contains("untrusted") && line.contains("certificate"),
        "{line}"
    );
    assert!(
        server.log_text().contains("UnknownIssuer"),
        "{}",
        server.log_text()
    );
}

#[test]
fn upstream_ca_mistakes_are_config_errors_at_their_line() {
    let site = Site::new();
    site.write("app.py", "");
    // (The site's config starts with two lines of its own: `apps:` is line 3.)
    site.config(
        "apps:\n  b:\n    python: python3\n    script: app.py\n    upstream_ca: ca.pem\n  c:\n    upstream: \"http://localhost:8080\"\n    upstream_ca: ca.pem\n",
    );
    let (status, out, err) = site.check();
    let text = format!("{out}{err}");
    assert!(!status.success(), "{text}");
    for line in [
        "wsgimux.yaml:7:5: app \"b\", key \"upstream_ca\"",
        "wsgimux.yaml:10:5: app \"c\", key \"upstream_ca\"",
    ] {
        assert!(text.contains(line), "{line}: {text}");
    }
    site.config(
        "apps:\n  a:\n    upstream: \"https://localhost:8443\"\n    upstream_ca: missing-ca.pem\n",
    );
    let (status, out, err) = site.check();
    let text = format!("{out}{err}");
    assert!(!status.success(), "{text}");
    assert!(
        text.contains("wsgimux.yaml:6:5: app \"a\", key \"upstream_ca\"")
            && text.contains("missing-ca.pem"),
        "{text}"
    );
}
