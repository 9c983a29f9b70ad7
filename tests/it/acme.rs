//! Automatic HTTPS against a real ACME CA: Pebble (Debian's `pebble`) with
//! `pebble-challtestsrv` as its DNS (every name → 127.0.0.1). HTTP-01 and TLS-ALPN-01 orders
//! for two hosts, checked with curl trusting only Pebble's root; a restart that orders
//! nothing; a reload that adds a host; a refused name failing alone; an unreachable CA; two
//! instances sharing storage; `tls: internal`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::*;
use crate::operating::status_json;
use crate::tls::{curl, free_port};

/// A Pebble CA and its DNS, stopped on drop.
struct Pebble {
    _dir: tempfile::TempDir,
    children: Vec<Child>,
    pub directory: String,
    /// The CA of Pebble's own HTTPS (what `directory_ca` names).
    pub https_ca: PathBuf,
    /// The root the issued chains lead to (fetched after start: new at every start).
    pub root: PathBuf,
    /// challtestsrv's management address (to point a name elsewhere).
    pub dns_management: u16,
}

impl Drop for Pebble {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Pebble {
    /// Makes the CA's DNS answer `name` with `address` (where nothing of ours listens).
    fn resolve(&self, name: &str, address: &str) {
        let body = serde_json::json!({"host": format!("{name}."), "addresses": [address]});
        let out = Command::new("curl")
            .args(["-sSf", "--max-time", "5", "-d"])
            .arg(body.to_string())
            .arg(format!("http://127.0.0.1:{}/add-a", self.dns_management))
            .output()
            .expect("curl");
        assert!(
            out.status.success(),
            "add-a: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Pebble validating HTTP-01 at `http_port` and TLS-ALPN-01 at `tls_port` on 127.0.0.1,
    /// refusing the names in `blocked`. None when it is not installed (after saying why).
    fn start(http_port: u16, tls_port: u16, blocked: &[&str]) -> Option<Pebble> {
        Self::start_issuing(http_port, tls_port, blocked, 90 * 24 * 3600)
    }

    /// As [`Pebble::start`], issuing certificates valid for `validity_secs`.
    fn start_issuing(
        http_port: u16,
        tls_port: u16,
        blocked: &[&str],
        validity_secs: u64,
    ) -> Option<Pebble> {
        if !have_tool("pebble", "pebble") || !have_tool("pebble-challtestsrv", "pebble") {
            return None;
        }
        let dir = tempfile::tempdir().expect("temp dir");
        let made = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
            .expect("pebble's certificate");
        let https_ca = dir.path().join("pebble-cert.pem");
        std::fs::write(&https_ca, made.cert.pem()).expect("write");
        std::fs::write(
            dir.path().join("pebble-key.pem"),
            made.signing_key.serialize_pem(),
        )
        .expect("write");
        let (listen, management, dns, dns_management) =
            (free_port(), free_port(), free_port(), free_port());
        let config = serde_json::json!({"pebble": {
            "listenAddress": format!("127.0.0.1:{listen}"),
            "managementListenAddress": format!("127.0.0.1:{management}"),
            "certificate": https_ca,
            "privateKey": dir.path().join("pebble-key.pem"),
            "httpPort": http_port, "tlsPort": tls_port,
            "ocspResponderURL": "", "externalAccountBindingRequired": false,
            "domainBlocklist": blocked,
            "certificateValidityPeriod": validity_secs,
        }});
        std::fs::write(dir.path().join("pebble.json"), config.to_string()).expect("write");
        let log = |name: &str| std::fs::File::create(dir.path().join(name)).expect("log");
        let dns_server = Command::new("pebble-challtestsrv")
            .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
            .args(["-dns01", &format!("127.0.0.1:{dns}")])
            .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
            .args(["-management", &format!("127.0.0.1:{dns_management}")])
            .stdout(log("challtestsrv.log"))
            .stderr(Stdio::null())
            .spawn()
            .expect("start pebble-challtestsrv");
        let ca = Command::new("pebble")
            .arg("-config")
            .arg(dir.path().join("pebble.json"))
            .args(["-dnsserver", &format!("127.0.0.1:{dns}")])
            .env("PEBBLE_VA_NOSLEEP", "1")
            .stdout(log("pebble.log"))
            .stderr(Stdio::null())
            .spawn()
            .expect("start pebble");
        let mut pebble = Pebble {
            dns_management,
            directory: format!("https://127.0.0.1:{listen}/dir"),
            root: dir.path().join("root.pem"),
            https_ca,
            children: vec![dns_server, ca],
            _dir: dir,
        };
        let root = eventually(Duration::from_secs(20), || {
            let out = Command::new("curl")
                .args(["-sSf", "--max-time", "5", "--cacert"])
                .arg(&pebble.https_ca)
                .arg(format!("https://127.0.0.1:{management}/roots/0"))
                .output()
                .ok()?;
            out.status.success().then_some(out.stdout)
        })
        .expect("pebble answers");
        std::fs::write(&pebble.root, root).expect("write root");
        pebble.children.shrink_to_fit();
        Some(pebble)
    }
}

/// A site with two apps on `hosts` (one app each), a plain listener and a `tls: acme` one.
fn acme_site(
    pebble: &Pebble,
    plain: u16,
    tls: u16,
    challenge: &str,
    hosts: &[&str],
    storage: &Path,
) -> Site {
    let py = require_python("3.12").expect("python 3.12");
    let site = Site::new();
    site.probe("app");
    write_acme_config(
        &site, &py, pebble, plain, tls, challenge, hosts, storage, "",
    );
    site
}

#[allow(clippy::too_many_arguments)]
fn write_acme_config(
    site: &Site,
    py: &Path,
    pebble: &Pebble,
    plain: u16,
    tls: u16,
    challenge: &str,
    hosts: &[&str],
    storage: &Path,
    extra: &str,
) {
    let apps: String = hosts
        .iter()
        .enumerate()
        .map(|(i, h)| {
            format!(
                "  app{i}:\n    python: {}\n    script: app/probe.py\n    hosts: [\"{h}\"]\n",
                py.display()
            )
        })
        .collect();
    site.write(
        "wsgimux.yaml",
        &format!(
            "runtime_dir: {run}\nlisten:\n  - \"127.0.0.1:{plain}\"\n  - address: \"127.0.0.1:{tls}\"\n    tls: acme\n\
             acme:\n  directory: \"{dir}\"\n  directory_ca: {ca}\n  email: ops@example.com\n  storage: {storage}\n  challenge: {challenge}\n{extra}\
             apps:\n{apps}",
            run = site.path().join("run").display(),
            dir = pebble.directory,
            ca = pebble.https_ca.display(),
            storage = storage.display(),
        ),
    );
}

/// The status entry of the certificate for `host`.
fn certificate(config: &Path, host: &str) -> Option<serde_json::Value> {
    let status = status_json(config);
    status["certificates"]
        .as_array()?
        .iter()
        .find(|c| {
            c["names"]
                .as_array()
                .is_some_and(|n| n.iter().any(|n| n == host))
        })
        .cloned()
}

/// Waits until `host`'s certificate is valid: its serial.
fn wait_valid(config: &Path, host: &str, limit: Duration) -> String {
    let mut last = None;
    let found = eventually(limit, || {
        last = certificate(config, host);
        let c = last.as_ref()?;
        (c["state"] == "valid").then(|| c["serial"].as_str().map(str::to_string))?
    });
    found.unwrap_or_else(|| panic!("no valid certificate for {host}: {last:?}"))
}

/// Waits until `host`'s certificate is shown as failed: its state.
fn wait_failed(config: &Path, host: &str, limit: Duration) -> String {
    let failed = eventually(limit, || {
        let c = certificate(config, host)?;
        c["state"]
            .as_str()
            .filter(|s| s.starts_with("failed"))
            .map(str::to_string)
    });
    failed.unwrap_or_else(|| {
        panic!(
            "{host} is not shown as failed: {:?}",
            certificate(config, host)
        )
    })
}

fn orders_in(log: &str, host: &str) -> usize {
    log.matches(&format!("obtained a certificate for {host} "))
        .count()
}

#[test]
fn http01_certificates_for_two_hosts_survive_a_restart_and_a_reload_adds_a_third() {
    let (plain, tls) = (free_port(), free_port());
    let Some(pebble) = Pebble::start(plain, tls, &[]) else {
        return;
    };
    let storage = tempfile::tempdir().expect("storage");
    let site = Site::new();
    site.probe("app");
    let py = require_python("3.12").expect("python");
    let admin = free_port();
    let admin_yaml = format!("admin:\n  listen: \"127.0.0.1:{admin}\"\n");
    write_acme_config(
        &site,
        &py,
        &pebble,
        plain,
        tls,
        "http-01",
        &["shop.test", "blog.test"],
        storage.path(),
        &admin_yaml,
    );
    let config = site.path().join("wsgimux.yaml");
    let (status, out, err) = site.check();
    assert!(status.success(), "{err}");
    assert!(
        out.contains("will request: shop.test") && out.contains("will request: blog.test"),
        "{out}"
    );
    let mut server = site.serve();
    let shop = wait_valid(&config, "shop.test", Duration::from_secs(60));
    let blog = wait_valid(&config, "blog.test", Duration::from_secs(60));
    for host in ["shop.test", "blog.test"] {
        let (_, status, _) = curl(host, tls, "/", &pebble.root, &[])
            .unwrap_or_else(|| panic!("https://{host} verified against Pebble's root"));
        assert_eq!(status, 200);
    }
    // Key files are private.
    let pem = storage.path().join("certificates");
    let files: Vec<PathBuf> = walk(&pem);
    assert!(files.len() >= 2, "{files:?}");
    for f in &files {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(f).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", f.display());
    }
    // A restart orders nothing and serves the same certificates.
    server.signal(libc::SIGTERM);
    server.wait_exit(Duration::from_secs(30));
    let server = site.serve();
    assert_eq!(
        wait_valid(&config, "shop.test", Duration::from_secs(30)),
        shop
    );
    assert_eq!(
        wait_valid(&config, "blog.test", Duration::from_secs(30)),
        blog
    );
    assert!(curl("shop.test", tls, "/", &pebble.root, &[]).is_some());
    let log = server.log_text();
    assert_eq!(orders_in(&log, "shop.test"), 0, "{log}");
    // A reload that adds a host orders it alone; the others keep their certificates.
    write_acme_config(
        &site,
        &py,
        &pebble,
        plain,
        tls,
        "http-01",
        &["shop.test", "blog.test", "news.test"],
        storage.path(),
        &admin_yaml,
    );
    let (ok, out, err) = site.reload();
    assert!(ok.success(), "{out}{err}");
    wait_valid(&config, "news.test", Duration::from_secs(60));
    assert!(curl("news.test", tls, "/", &pebble.root, &[]).is_some());
    assert_eq!(
        wait_valid(&config, "shop.test", Duration::from_secs(5)),
        shop
    );
    let log = server.log_text();
    assert_eq!(orders_in(&log, "news.test"), 1, "{log}");
    assert_eq!(orders_in(&log, "shop.test"), 0, "{log}");
    // The CA's validation requests never reached an app: plain HTTP of a routed host does.
    assert_eq!(get_via(plain, "shop.test", "/").status, 200);
    assert_eq!(
        get_via(
            plain,
            "shop.test",
            "/.well-known/acme-challenge/nothing-here"
        )
        .status,
        404
    );
    // Metrics carry each host's expiry.
    let metrics = metrics(admin);
    assert!(
        metrics.contains("wsgimux_certificate_expiry_timestamp_seconds{host=\"news.test\""),
        "{metrics}"
    );
    assert!(
        metrics
            .contains("wsgimux_certificate_orders_total{host=\"news.test\",outcome=\"success\"} 1"),
        "{metrics}"
    );
    // The admin page lists them.
    let page = get_via(admin, "127.0.0.1", "/").text();
    assert!(
        page.contains("Certificates") && page.contains("news.test"),
        "{page}"
    );
    // A reload that removes a host: its certificate is no longer served nor kept.
    let two = ["shop.test", "news.test"];
    write_acme_config(
        &site,
        &py,
        &pebble,
        plain,
        tls,
        "http-01",
        &two,
        storage.path(),
        &admin_yaml,
    );
    let (ok, out, err) = site.reload();
    assert!(ok.success(), "{out}{err}");
    assert!(certificate(&config, "blog.test").is_none());
    assert!(curl("blog.test", tls, "/", &pebble.root, &["-k"]).is_none());
    assert!(curl("shop.test", tls, "/", &pebble.root, &[]).is_some());
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

fn get_via(port: u16, host: &str, path: &str) -> Response {
    let addr = format!("127.0.0.1:{port}").parse().expect("addr");
    request(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .expect("request")
}

/// `/metrics` of the admin listener at `port`.
fn metrics(port: u16) -> String {
    get_via(port, "127.0.0.1", "/metrics").text()
}

#[test]
fn tls_alpn01_certificates_for_two_hosts() {
    let (plain, tls) = (free_port(), free_port());
    let Some(pebble) = Pebble::start(plain, tls, &[]) else {
        return;
    };
    let storage = tempfile::tempdir().expect("storage");
    let site = acme_site(
        &pebble,
        plain,
        tls,
        "tls-alpn-01",
        &["shop.test", "blog.test"],
        storage.path(),
    );
    let config = site.path().join("wsgimux.yaml");
    let server = site.serve();
    for host in ["shop.test", "blog.test"] {
        wait_valid(&config, host, Duration::from_secs(60));
        let (_, status, _) = curl(host, tls, "/", &pebble.root, &[]).expect("verified");
        assert_eq!(status, 200);
    }
    assert!(server
        .log_text()
        .contains("answered a TLS-ALPN-01 validation"));
}

#[test]
fn a_name_the_ca_refuses_fails_alone_and_an_unreachable_ca_leaves_plain_http_serving() {
    let (plain, tls) = (free_port(), free_port());
    let Some(pebble) = Pebble::start(plain, tls, &["blocked.test"]) else {
        return;
    };
    let storage = tempfile::tempdir().expect("storage");
    let site = Site::new();
    site.probe("app");
    let py = require_python("3.12").expect("python");
    // ghost.test resolves where nothing answers: its validation fails.
    pebble.resolve("ghost.test", "127.0.0.9");
    let hosts = ["good.test", "blocked.test", "ghost.test"];
    let redirect = "redirect_https: true\n";
    write_acme_config(
        &site,
        &py,
        &pebble,
        plain,
        tls,
        "http-01",
        &hosts,
        storage.path(),
        redirect,
    );
    let config = site.path().join("wsgimux.yaml");
    let server = site.serve();
    wait_valid(&config, "good.test", Duration::from_secs(60));
    let failed = wait_failed(&config, "blocked.test", Duration::from_secs(30));
    assert!(
        failed.contains("urn:ietf:params:acme:error:rejectedIdentifier"),
        "{failed}"
    );
    let ghost = wait_failed(&config, "ghost.test", Duration::from_secs(40));
    assert!(
        ghost.contains("urn:ietf:params:acme:error:connection"),
        "{ghost}"
    );
    let line = server
        .wait_log(
            "ordering a certificate for blocked.test",
            Duration::from_secs(5),
        )
        .expect("an error line");
    assert!(
        line.contains(&pebble.directory) && line.contains("rejectedIdentifier"),
        "{line}"
    );
    // A handshake for the failed name is refused, never answered with another's certificate.
    assert!(curl("blocked.test", tls, "/", &pebble.root, &["-k"]).is_none());
    let refused = "TLS handshake for \"blocked.test\" refused: no certificate";
    let line = server
        .wait_log(refused, Duration::from_secs(5))
        .expect("logged");
    assert!(
        line.contains("not obtained yet (failed: urn:ietf:params:acme:error:rejectedIdentifier"),
        "{line}"
    );
    assert!(curl("good.test", tls, "/", &pebble.root, &[]).is_some());
    // redirect_https sends a name to https only once it has a certificate.
    let good = get_via(plain, "good.test", "/x");
    assert_eq!(good.status, 308);
    let location = format!("https://good.test:{tls}/x");
    assert_eq!(good.header("location"), Some(location.as_str()));
    assert_eq!(get_via(plain, "blocked.test", "/x").status, 200);
    drop(server);

    // A CA nobody answers at: plain HTTP serves; the error is logged and shown.
    let dead = Site::new();
    dead.probe("app");
    let py = require_python("3.12").expect("python");
    let mut unreachable = pebble_stub(&pebble);
    unreachable.directory = format!("https://127.0.0.1:{}/dir", free_port());
    let (plain2, tls2) = (free_port(), free_port());
    let dead_storage = tempfile::tempdir().expect("storage");
    write_acme_config(
        &dead,
        &py,
        &unreachable,
        plain2,
        tls2,
        "http-01",
        &["shop.test"],
        dead_storage.path(),
        "",
    );
    let dead_config = dead.path().join("wsgimux.yaml");
    let server = dead.serve();
    assert_eq!(get_via(plain2, "shop.test", "/").status, 200);
    let state = wait_failed(&dead_config, "shop.test", Duration::from_secs(40));
    assert!(!state.is_empty());
    assert!(server
        .wait_log(
            "acme: ordering a certificate for shop.test",
            Duration::from_secs(5)
        )
        .is_some());
    assert_eq!(get_via(plain2, "shop.test", "/").status, 200);
}

/// A Pebble value that starts nothing (for a directory URL nobody answers at).
fn pebble_stub(p: &Pebble) -> Pebble {
    Pebble {
        _dir: tempfile::tempdir().expect("dir"),
        children: Vec::new(),
        directory: p.directory.clone(),
        https_ca: p.https_ca.clone(),
        root: p.root.clone(),
        dns_management: p.dns_management,
    }
}

#[test]
fn two_instances_sharing_storage_order_each_name_once() {
    // The CA reaches `a`'s listeners. `a` first routes only other.test; `b` orders shop.test
    // and blog.test, and `a` answers their HTTP-01 challenges from the shared storage. Then
    // `a` routes them too and serves b's certificates without ordering.
    let (a_plain, a_tls) = (free_port(), free_port());
    let Some(pebble) = Pebble::start(a_plain, a_tls, &[]) else {
        return;
    };
    let storage = tempfile::tempdir().expect("storage");
    let hosts = ["shop.test", "blog.test"];
    let a = acme_site(
        &pebble,
        a_plain,
        a_tls,
        "http-01",
        &["other.test"],
        storage.path(),
    );
    let a_config = a.path().join("wsgimux.yaml");
    let a_server = a.serve();
    wait_valid(&a_config, "other.test", Duration::from_secs(60));
    let b = acme_site(
        &pebble,
        free_port(),
        free_port(),
        "http-01",
        &hosts,
        storage.path(),
    );
    let b_config = b.path().join("wsgimux.yaml");
    let b_server = b.serve();
    let mut serials = Vec::new();
    for host in hosts {
        serials.push(wait_valid(&b_config, host, Duration::from_secs(60)));
    }
    let py = require_python("3.12").expect("python");
    let all = ["other.test", "shop.test", "blog.test"];
    write_acme_config(
        &a,
        &py,
        &pebble,
        a_plain,
        a_tls,
        "http-01",
        &all,
        storage.path(),
        "",
    );
    let (status, out, err) = a.reload();
    assert!(status.success(), "{out}{err}");
    for (host, serial) in hosts.iter().zip(&serials) {
        assert_eq!(
            &wait_valid(&a_config, host, Duration::from_secs(30)),
            serial,
            "{host}: one certificate"
        );
        assert!(curl(host, a_tls, "/", &pebble.root, &[]).is_some());
        assert_eq!(
            orders_in(&b_server.log_text(), host),
            1,
            "{host}: b ordered it"
        );
        assert_eq!(
            orders_in(&a_server.log_text(), host),
            0,
            "{host}: a did not"
        );
    }
}

#[test]
fn tls_internal_serves_names_a_client_trusting_the_local_root_verifies() {
    let Some(py) = require_python("3.12") else {
        return;
    };
    let site = Site::new();
    site.probe("app");
    let (tls, files) = (free_port(), free_port());
    let (cert, key) = crate::tls::certificate(site.path(), "files", &["files.test"]);
    let storage = site.path().join("acme");
    site.write(
        "wsgimux.yaml",
        &format!(
            "runtime_dir: {}\nlisten:\n  - \"127.0.0.1:0\"\n  - address: \"127.0.0.1:{tls}\"\n    tls: internal\n\
             \x20 - address: \"127.0.0.1:{files}\"\n    tls:\n      certificates:\n        - {{cert: {cert}, key: {key}}}\n\
             apps:\n  shop:\n    python: {py}\n    script: app/probe.py\n    hosts: [\"shop.test\", \"localhost\", \"files.test\"]\n",
            site.path().join("run").display(),
            py = py.display(),
            cert = cert.display(),
            key = key.display(),
        ),
    );
    let _server = site.serve();
    // Certificate files keep working on a listener beside it.
    let (_, status, _) = curl("files.test", files, "/", &cert, &[]).expect("the file certificate");
    assert_eq!(status, 200);
    let listed = status_json(&site.path().join("wsgimux.yaml"));
    let sources: Vec<&str> = listed["certificates"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["source"].as_str())
        .collect();
    assert!(
        sources.contains(&"file") && sources.contains(&"internal"),
        "{listed}"
    );
    let root = storage.join("internal").join("root.pem");
    let started = Instant::now();
    while !root.exists() && started.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(50));
    }
    for host in ["shop.test", "localhost"] {
        let (_, status, _) =
            curl(host, tls, "/", &root, &[]).unwrap_or_else(|| panic!("{host} verified"));
        assert_eq!(status, 200);
    }
    // A name not routed here gets no certificate.
    assert!(curl("other.test", tls, "/", &root, &["-k"]).is_none());
}

/// The serial of the certificate a new handshake for `host` gets (openssl, SNI).
fn served_serial(host: &str, port: u16) -> Option<String> {
    let script = format!(
        "openssl s_client -connect 127.0.0.1:{port} -servername {host} </dev/null 2>/dev/null | openssl x509 -noout -serial"
    );
    let out = Command::new("sh").args(["-c", &script]).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.trim()
        .strip_prefix("serial=")
        .map(|s| s.to_ascii_lowercase())
}

#[test]
fn a_renewal_swaps_the_served_certificate_with_no_failed_request_under_keep_alive_load() {
    if !have_tool("openssl", "openssl") {
        return;
    }
    let (plain, tls) = (free_port(), free_port());
    // Certificates live 30 s; renew_before 20 s is held to half of that: renewal at 15 s.
    let Some(pebble) = Pebble::start_issuing(plain, tls, &[], 30) else {
        return;
    };
    let storage = tempfile::tempdir().expect("storage");
    let site = Site::new();
    site.probe("app");
    let py = require_python("3.12").expect("python");
    write_acme_config(
        &site,
        &py,
        &pebble,
        plain,
        tls,
        "http-01",
        &["shop.test"],
        storage.path(),
        "  renew_before: 20s\n",
    );
    let config = site.path().join("wsgimux.yaml");
    let server = site.serve();
    let first = wait_valid(&config, "shop.test", Duration::from_secs(60));
    assert_eq!(
        served_serial("shop.test", tls).as_deref(),
        Some(first.as_str())
    );
    // Keep-alive clients: each curl sends 20 requests on one connection, again and again.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let root = pebble.root.clone();
    let clients: Vec<_> = (0..2)
        .map(|_| {
            let (stop, root) = (stop.clone(), root.clone());
            std::thread::spawn(move || {
                let (mut ok, mut failed) = (0u32, Vec::new());
                let url = format!("https://shop.test:{tls}/");
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let out = Command::new("curl")
                        .args(["-s", "--max-time", "20", "--cacert"])
                        .arg(&root)
                        .arg("--resolve")
                        .arg(format!("shop.test:{tls}:127.0.0.1"))
                        .args(["-w", "%{http_code}\n"])
                        .args((0..20).flat_map(|_| ["-o", "/dev/null", url.as_str()]))
                        .output()
                        .expect("curl");
                    let codes = String::from_utf8_lossy(&out.stdout).into_owned();
                    for code in codes.lines() {
                        if code == "200" {
                            ok += 1
                        } else {
                            failed.push(code.to_string())
                        }
                    }
                    if !out.status.success() || codes.lines().count() != 20 {
                        failed.push(format!(
                            "curl exited {:?} after {} answers",
                            out.status.code(),
                            codes.lines().count()
                        ));
                    }
                }
                (ok, failed)
            })
        })
        .collect();
    let renewed = eventually(Duration::from_secs(60), || {
        served_serial("shop.test", tls).filter(|s| *s != first)
    })
    .expect("a new handshake gets the renewed certificate");
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for c in clients {
        let (ok, failed) = c.join().expect("client");
        assert!(ok > 20, "the load ran ({ok} answers)");
        let some: Vec<&String> = failed.iter().take(5).collect();
        assert!(
            failed.is_empty(),
            "{} failed during the renewal: {some:?}",
            failed.len()
        );
    }
    let entry = certificate(&config, "shop.test").expect("status entry");
    assert!(entry["orders_succeeded"].as_u64() >= Some(2), "{entry}");
    assert_ne!(renewed, first);
    assert!(server
        .log_text()
        .contains("obtained a certificate for shop.test"));
}

#[test]
fn trust_and_untrust_change_the_system_store_that_clients_verify_against() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        skip("trust changes the system trust store: it needs root");
        return;
    }
    if !have_tool("update-ca-certificates", "ca-certificates") {
        return;
    }
    let Some(py) = require_python("3.12") else {
        return;
    };
    let site = Site::new();
    site.probe("app");
    let tls = free_port();
    site.write(
        "wsgimux.yaml",
        &format!(
            "runtime_dir: {}\nlisten:\n  - \"127.0.0.1:0\"\n  - address: \"127.0.0.1:{tls}\"\n    tls: internal\n\
             apps:\n  shop:\n    python: {py}\n    script: app/probe.py\n    hosts: [\"shop.test\"]\n",
            site.path().join("run").display(),
            py = py.display()
        ),
    );
    let config = site.path().join("wsgimux.yaml");
    let wsgimux = |command: &str| {
        let out = Command::new(BIN)
            .args([command, "--config"])
            .arg(&config)
            .output()
            .expect("run");
        assert!(
            out.status.success(),
            "{command}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // The CA is made by `trust` when serve has not made it yet.
    let said = wsgimux("trust");
    assert!(said.contains("update-ca-certificates"), "{said}");
    let root = std::fs::read_to_string(site.path().join("acme/internal/root.pem")).expect("root");
    let body: String = root.lines().filter(|l| !l.starts_with("-----")).collect();
    let bundle = || {
        std::fs::read_to_string("/etc/ssl/certs/ca-certificates.crt")
            .unwrap_or_default()
            .replace('\n', "")
    };
    assert!(bundle().contains(&body), "the root is in the system bundle");
    let _server = site.serve();
    // curl with the system's roots only.
    let system = |host: &str| {
        Command::new("curl")
            .args([
                "-sS",
                "-o",
                "/dev/null",
                "--max-time",
                "10",
                "-w",
                "%{http_code}",
                "--resolve",
            ])
            .arg(format!("{host}:{tls}:127.0.0.1"))
            .arg(format!("https://{host}:{tls}/"))
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    };
    assert_eq!(system("shop.test"), "200");
    let said = wsgimux("untrust");
    assert!(said.contains("removed"), "{said}");
    assert!(!bundle().contains(&body), "the root left the system bundle");
    assert_ne!(system("shop.test"), "200");
}

#[test]
fn check_names_the_requested_names_and_a_missing_directory_ca_at_its_line() {
    let Some(py) = require_python("3.12") else {
        return;
    };
    let site = Site::new();
    site.probe("app");
    let write = |ca: &str| {
        site.write(
            "wsgimux.yaml",
            &format!(
                "listen:\n  - \"127.0.0.1:0\"\n  - address: \"127.0.0.1:{tls}\"\n    tls: acme\nacme:\n  directory: https://127.0.0.1:9/dir\n  directory_ca: {ca}\n\
                 apps:\n  shop:\n    python: {py}\n    script: app/probe.py\n    hosts: [\"shop.example.com\", \"*.example.com\", \"10.1.2.3\"]\n",
                py = py.display(),
                tls = free_port()
            ),
        )
    };
    write("missing-ca.pem");
    let (status, out, err) = site.check();
    assert!(!status.success(), "{out}");
    let line = err
        .lines()
        .find(|l| l.contains("acme.directory_ca"))
        .unwrap_or_else(|| panic!("{err}"));
    assert!(
        line.contains("wsgimux.yaml:7:") && line.contains("missing-ca.pem"),
        "{line}"
    );
    let (ca, _) = crate::tls::certificate(site.path(), "ca", &["localhost"]);
    write(&ca.display().to_string());
    let (status, out, err) = site.check();
    assert!(status.success(), "{err}");
    assert!(out.contains("will request: shop.example.com"), "{out}");
    assert!(
        out.contains("skipped: *.example.com (a wildcard needs the DNS-01 challenge"),
        "{out}"
    );
    assert!(out.contains("skipped: 10.1.2.3 (an IP address"), "{out}");
}
