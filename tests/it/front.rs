//! The front door's own rules seen from outside: forwarded headers believed only from
//! `trusted_proxies`, and listeners taken from systemd socket activation.

use std::io::{BufRead, BufReader};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use crate::harness::*;

#[test]
fn forwarded_headers_are_believed_only_from_trusted_proxies() {
    let Some(py) = require_python("3.12") else {
        return;
    };
    let site = Site::new();
    site.probe("app");
    site.config(&format!(
        "trusted_proxies: [\"127.0.0.2/32\"]\napps:\n  a:\n    python: {}\n    script: app/probe.py\n    mount: /in\n",
        py.display()
    ));
    let server = site.serve();
    let claims = [
        "X-Forwarded-For: 10.1.2.3",
        "X-Forwarded-Proto: https",
        "SCRIPT_NAME: /outer",
        "Host: a.test",
    ];
    let env = |source| {
        let mut c = Command::new("curl");
        c.args(["-sS", "--max-time", "10", "--interface", source]);
        for h in claims {
            c.args(["-H", h]);
        }
        let out = c
            .arg(format!("http://{}/in/env", server.addr))
            .output()
            .expect("curl");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let untrusted = env("127.0.0.1");
    assert!(
        untrusted.contains("HTTP_X_FORWARDED_FOR=127.0.0.1 "),
        "{untrusted}"
    );
    assert!(untrusted.contains("wsgi.url_scheme=http "), "{untrusted}");
    assert!(untrusted.contains("SCRIPT_NAME=/in "), "{untrusted}");
    let trusted = env("127.0.0.2");
    assert!(
        trusted.contains("HTTP_X_FORWARDED_FOR=10.1.2.3, 127.0.0.2 "),
        "{trusted}"
    );
    assert!(trusted.contains("wsgi.url_scheme=https "), "{trusted}");
    assert!(trusted.contains("SCRIPT_NAME=/outer/in "), "{trusted}");
    // Disagreeing scheme headers from a trusted proxy are refused, as gunicorn does.
    let out = Command::new("curl")
        .args([
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--interface",
            "127.0.0.2",
        ])
        .args([
            "-H",
            "X-Forwarded-Proto: https",
            "-H",
            "X-Forwarded-Ssl: off",
        ])
        .arg(format!("http://{}/in/env", server.addr))
        .output()
        .expect("curl");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "400");
}

#[test]
fn listeners_come_from_systemd_socket_activation() {
    let Some(py) = require_python("3.12") else {
        return;
    };
    let site = Site::new();
    site.probe("app");
    // Bound here and kept open: wsgimux binding the address itself would fail (in use).
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let config = site.write(
        "wsgimux.yaml",
        &format!(
            "runtime_dir: {}\nlisten: [\"{addr}\"]\napps:\n  a:\n    python: {}\n    script: app/probe.py\n",
            site.path().join("run").display(),
            py.display()
        ),
    );
    let fd = listener.as_raw_fd();
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg("LISTEN_PID=$$ LISTEN_FDS=1 LISTEN_FDNAMES=\"$2\" exec \"$0\" serve --config \"$1\"")
        .arg(BIN)
        .arg(&config)
        .arg(addr.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(site.path().join("log")).unwrap());
    // SAFETY: dup2 and fcntl only, between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(fd, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            libc::fcntl(3, libc::F_SETFD, 0);
            Ok(())
        });
    }
    let mut child = cmd.spawn().expect("start wsgimux");
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let ready = stdout
        .lines()
        .map_while(Result::ok)
        .find(|l| l.starts_with("ready: "));
    let log = std::fs::read_to_string(site.path().join("log")).unwrap_or_default();
    assert_eq!(
        ready.as_deref(),
        Some(format!("ready: http://{addr}").as_str()),
        "{log}"
    );
    assert!(
        log.contains("1 listening socket(s) passed by the service manager"),
        "{log}"
    );
    let r = request(addr, b"GET /pid HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    assert_eq!(r.status, 200);
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let _ = child.wait();
    drop(listener);
}
