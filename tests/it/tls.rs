//! TLS listeners: certificates made in the test (rcgen), two hosts on one port chosen by SNI,
//! h2 and http/1.1 by ALPN (curl, h2load), certificate files replaced while serving,
//! redirect_https, and a bad certificate file reported as a config error.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::harness::*;

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// A self-signed certificate for `names`, written as `<stem>.pem` and `<stem>.key`.
pub fn certificate(dir: &Path, stem: &str, names: &[&str]) -> (PathBuf, PathBuf) {
    let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    let made = rcgen::generate_simple_self_signed(names).expect("generate certificate");
    let cert = dir.join(format!("{stem}.pem"));
    let key = dir.join(format!("{stem}.key"));
    std::fs::write(&cert, made.cert.pem()).expect("write cert");
    std::fs::write(&key, made.signing_key.serialize_pem()).expect("write key");
    (cert, key)
}

/// `curl` to `https://{host}:{port}{path}` trusting only `ca`: (HTTP version, status, body).
pub fn curl(
    host: &str,
    port: u16,
    path: &str,
    ca: &Path,
    extra: &[&str],
) -> Option<(String, u16, String)> {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "--cacert"])
        .arg(ca)
        .arg("--resolve")
        .arg(format!("{host}:{port}:127.0.0.1"))
        .args(extra)
        .args(["-w", "\n%{http_version} %{http_code}"])
        .arg(format!("https://{host}:{port}{path}"))
        .output()
        .expect("run curl");
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, tail) = text.rsplit_once('\n')?;
    let (version, status) = tail.split_once(' ')?;
    Some((version.to_string(), status.parse().ok()?, body.to_string()))
}

pub fn tools_present() -> bool {
    let have = |t: &str| Command::new(t).arg("--version").output().is_ok();
    match (have("curl"), have("h2load")) {
        (true, true) => true,
        _ => {
            skip("curl or h2load is not installed (apt-get install curl nghttp2-client)");
            false
        }
    }
}

/// A site with the probe app on 3.12, a plain listener and a TLS one on a free port whose
/// `certificates:` entries are `certs` (YAML flow maps), plus `extra` top-level YAML. None
/// (after saying why) when 3.12, curl or h2load is missing.
fn tls_site(certs: &[&str], extra: &str) -> Option<(Site, u16)> {
    let py = require_python("3.12")?;
    if !tools_present() {
        return None;
    }
    let site = Site::new();
    site.probe("app");
    let port = free_port();
    let certs: String = certs.iter().map(|c| format!("        - {c}\n")).collect();
    site.write(
        "wsgimux.yaml",
        &format!(
            "runtime_dir: {run}\nlisten:\n  - \"127.0.0.1:0\"\n  - address: \"127.0.0.1:{port}\"\n    tls:\n      certificates:\n{certs}{extra}apps:\n  probe:\n    python: {py}\n    script: app/probe.py\n",
            run = site.path().join("run").display(),
            py = py.display()
        ),
    );
    Some((site, port))
}

#[test]
fn sni_alpn_h2_certificate_reload_and_redirect() {
    let Some((site, tls_port)) = tls_site(
        &[
            "{cert: a.pem, key: a.key}",
            "{cert: b.pem, key: b.key, hosts: [\"b.test\"]}",
        ],
        "redirect_https: true\n",
    ) else {
        return;
    };
    let (a_cert, a_key) = certificate(site.path(), "a", &["a.test"]);
    let (b_cert, b_key) = certificate(site.path(), "b", &["b.test", "www.b.test"]);
    let server = site.serve();

    // SNI picks each certificate; curl verifies it against only that one.
    let (version, status, body) =
        curl("a.test", tls_port, "/env", &a_cert, &[]).expect("a.test over TLS");
    assert_eq!(
        (version.as_str(), status),
        ("2", 200),
        "h2 negotiated by ALPN"
    );
    assert!(body.contains("wsgi.url_scheme=https"), "{body}");
    assert!(body.contains("HTTP_X_FORWARDED_PROTO=https"), "{body}");
    let (version, status, _) =
        curl("b.test", tls_port, "/", &b_cert, &["--http1.1"]).expect("b.test over TLS");
    assert_eq!((version.as_str(), status), ("1.1", 200));
    assert!(
        curl("b.test", tls_port, "/", &a_cert, &[]).is_none(),
        "b.test must not get a's certificate"
    );

    // h2load: many streams over a few connections, all answered.
    let out = Command::new("h2load")
        .args(["-n", "400", "-c", "4", "-m", "10"])
        .arg(format!("--connect-to=127.0.0.1:{tls_port}"))
        .arg(format!("https://a.test:{tls_port}/"))
        .output()
        .expect("run h2load");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(report.contains("Application protocol: h2"), "{report}");
    assert!(report.contains("400 succeeded, 0 failed"), "{report}");

    // Plain HTTP for a host with a certificate is redirected; other hosts are served.
    let r = server.get("a.test", "/x?y=1");
    assert_eq!(r.status, 308);
    assert_eq!(
        r.header("location"),
        Some(format!("https://a.test:{tls_port}/x?y=1").as_str())
    );
    assert_eq!(server.get("c.test", "/").status, 200);

    // Replace a's certificate and key (as certbot does, by rename): served without a restart.
    let fresh = site.path().join("fresh");
    std::fs::create_dir_all(&fresh).unwrap();
    let (new_cert, new_key) = certificate(&fresh, "a", &["a.test"]);
    std::fs::rename(&new_key, &a_key).unwrap();
    std::fs::rename(&new_cert, &a_cert).unwrap();
    let served = eventually(Duration::from_secs(15), || {
        curl("a.test", tls_port, "/", &a_cert, &[]).filter(|(_, s, _)| *s == 200)
    });
    assert!(
        served.is_some(),
        "the replaced certificate is served:\n{}",
        server.log_text()
    );
    assert!(server.log_text().contains("certificates reloaded"));
    let _ = b_key;
}

#[test]
fn bad_certificate_files_are_config_errors() {
    let site = Site::new();
    site.probe("app");
    let (cert, _) = certificate(site.path(), "good", &["a.test"]);
    site.write(
        "broken.key",
        "-----BEGIN PRIVATE KEY-----\nnot base64\n-----END PRIVATE KEY-----\n",
    );
    site.write(
        "wsgimux.yaml",
        &format!(
            "listen:\n  - address: \"127.0.0.1:0\"\n    tls:\n      certificates:\n        - {{cert: {}, key: broken.key}}\napps:\n  a:\n    upstream: \"http://127.0.0.1:9\"\n",
            cert.display()
        ),
    );
    let (status, _, stderr) = site.check();
    assert!(!status.success());
    assert!(stderr.contains("broken.key"), "{stderr}");
    assert!(stderr.contains(":5:"), "names the line: {stderr}");
    assert!(stderr.contains("key \"key\""), "{stderr}");
    // A certificate file that is not PEM at all.
    site.write("junk.pem", "hello");
    site.write(
        "wsgimux.yaml",
        "listen:\n  - address: \"127.0.0.1:0\"\n    tls:\n      certificates:\n        - {cert: junk.pem, key: good.key}\napps:\n  a:\n    upstream: \"http://127.0.0.1:9\"\n",
    );
    let (status, _, stderr) = site.check();
    assert!(!status.success());
    assert!(
        stderr.contains("junk.pem") && stderr.contains("no PEM certificate"),
        "{stderr}"
    );
}

/// HTTP/2 request bodies get `limits.body_timeout` as HTTP/1.1 ones do: a stream whose body
/// never comes is answered and closed, not held (a client could otherwise park 128 streams per
/// connection forever). A body that does come is unaffected.
#[test]
fn stalled_http2_request_bodies_time_out() {
    let Some((site, port)) = tls_site(
        &["{cert: a.pem, key: a.key}"],
        "limits:\n  body_timeout: 1s\n",
    ) else {
        return;
    };
    let (cert, _) = certificate(site.path(), "a", &["a.test"]);
    let server = site.serve();
    let (version, status, body) = curl("a.test", port, "/upload", &cert, &["-d", "hello"])
        .expect("a POST with a body over h2");
    assert_eq!((version.as_str(), status), ("2", 200));
    assert!(body.contains("count=5"), "{body}");

    // curl uploads from a stdin that stays open and sends nothing: headers, then silence.
    // curl itself ends only when its stdin closes (here after 6 s), so the answer's time is
    // curl's time to the first response byte.
    let mut stalled = Command::new("curl")
        .args([
            "-sS",
            "--http2",
            "--max-time",
            "20",
            "-X",
            "POST",
            "-T",
            "-",
        ])
        .arg("--cacert")
        .arg(&cert)
        .arg("--resolve")
        .arg(format!("a.test:{port}:127.0.0.1"))
        .args([
            "-o",
            "/dev/null",
            "-w",
            "%{http_version} %{http_code} %{time_starttransfer}",
        ])
        .arg(format!("https://a.test:{port}/upload"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run curl");
    let held_stdin = stalled.stdin.take();
    std::thread::sleep(Duration::from_secs(6));
    drop(held_stdin);
    let out = stalled.wait_with_output().expect("curl ends");
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut words = said.split_whitespace();
    let (version, status) = (words.next(), words.next());
    let answered_after: f64 = words
        .next()
        .and_then(|t| t.parse().ok())
        .unwrap_or(f64::MAX);
    assert_eq!(
        (version, status),
        (Some("2"), Some("400")),
        "the stalled stream is answered 400; curl said {said:?} {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        server.log_text()
    );
    assert!(
        answered_after < 4.0,
        "answered {answered_after}s after the request, body_timeout is 1s"
    );
    // The server is still fine for others.
    let (_, status, _) = curl("a.test", port, "/", &cert, &[]).expect("served after");
    assert_eq!(status, 200);
}

/// A client offering only ALPN `http/1.0` is served over HTTP/1 (nginx does the same), not
/// refused with a `no_application_protocol` alert.
#[test]
fn a_client_offering_only_http_1_0_by_alpn_is_served() {
    let Some((site, port)) = tls_site(&["{cert: a.pem, key: a.key}"], "") else {
        return;
    };
    if !have_tool("openssl", "openssl") {
        return;
    }
    certificate(site.path(), "a", &["a.test"]);
    let _server = site.serve();
    let mut s_client = Command::new("openssl")
        .args(["s_client", "-quiet", "-no_ign_eof", "-alpn", "http/1.0"])
        .args(["-servername", "a.test", "-connect"])
        .arg(format!("127.0.0.1:{port}"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run openssl s_client");
    if let Some(mut stdin) = s_client.stdin.take() {
        use std::io::Write;
        let _ = stdin.write_all(b"GET /env HTTP/1.0\r\nHost: a.test\r\n\r\n");
        // Held open until the server closes: a closed stdin would end s_client first.
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs(10));
            drop(stdin);
        });
    }
    let out = s_client.wait_with_output().expect("s_client ends");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.starts_with("HTTP/1.") && said.contains(" 200 OK"),
        "{said}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(said.contains("SERVER_PROTOCOL=HTTP/1.0"), "{said}");
}
