//! Request buffering: chunked uploads reach apps that read `CONTENT_LENGTH` bytes (Django)
//! whole, through a temporary file in the runtime dir that nobody can see and nothing leaves
//! behind; the app's `max_body_size` is a 413 before the app sees anything; memory stays flat.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::harness::*;

const UPLOAD_APP: &str = include_str!("../apps/django_upload.py");
const KIB: usize = 1024;
const MIB: usize = 1024 * 1024;

/// A body of `len` bytes that is not one repeated byte (a lost or reordered piece shows).
fn payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 4099) as u8).collect()
}

/// Sends `body` chunked, in chunks of `piece` bytes.
fn send_chunked(c: &mut Client, host: &str, path: &str, body: &[u8], piece: usize) {
    c.send(
        format!("POST {path} HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\n\r\n")
            .as_bytes(),
    )
    .expect("send head");
    for part in body.chunks(piece) {
        let s = c.stream();
        s.write_all(format!("{:x}\r\n", part.len()).as_bytes())
            .and_then(|_| s.write_all(part))
            .and_then(|_| s.write_all(b"\r\n"))
            .expect("send chunk");
    }
    c.stream().write_all(b"0\r\n\r\n").expect("send last chunk");
}

#[test]
fn django_reads_chunked_uploads_whole_on_both_workers_and_the_limit_is_a_413() {
    let (Some(py27), Some(py313)) = (require_python("2.7"), require_python("3.13")) else {
        return;
    };
    let Some(venv) = pip_venv(&py313, "frameworks-3.13", &["flask", "django"]) else {
        return;
    };
    let Some(django111) = pip_target(&py27, "django-1.11-py2.7", &["django<2"]) else {
        return;
    };
    let site = Site::new();
    site.write("apps/upload.py", UPLOAD_APP);
    site.config(&format!(
        "apps:\n\
         \x20 new:\n    python: {venv}\n    script: apps/upload.py\n    worker: native\n    hosts: [new]\n    max_body_size: 20m\n\
         \x20 old:\n    python: {py27}\n    script: apps/upload.py\n    worker: portable\n    hosts: [old]\n    max_body_size: 20m\n    python_path: [{django111}]\n\
         \x20 small:\n    python: {venv}\n    script: apps/upload.py\n    hosts: [small]\n",
        venv = venv.display(),
        py27 = py27.display(),
        django111 = django111.display(),
    ));
    let server = site.serve();
    for host in ["new", "old"] {
        let mut c = Client::connect(server.addr).expect("connect");
        for (len, piece) in [
            (64 * KIB, 4 * KIB),
            (MIB, 16 * KIB),
            (10 * MIB, 100 * KIB + 3),
        ] {
            let body = payload(len);
            send_chunked(&mut c, host, "/upload", &body, piece);
            let r = c.read_response(false).expect("response");
            assert_eq!(r.status, 200, "{host} {len}: {}", r.text());
            let v: Value = serde_json::from_str(&r.text()).expect("json");
            assert_eq!(v["length"], len, "{host}: {v}");
            assert_eq!(
                v["sha256"].as_str(),
                Some(format!("{:x}", Sha256::digest(&body)).as_str()),
                "{host} {len}"
            );
            assert_eq!(v["content_length"], len.to_string(), "{host}");
        }
    }
    // 2 MB chunked to an app with the default 1 MB limit: 413, and the app never ran.
    let mut c = Client::connect(server.addr).expect("connect");
    c.reader_timeout(Duration::from_secs(30));
    send_chunked(&mut c, "small", "/upload", &payload(2 * MIB), 64 * KIB);
    let r = c.read_response(false).expect("response");
    assert_eq!(r.status, 413, "{}", r.text());
}

/// wsgimux's open files in `dir` (a spooled body shows as `dir/#NNN (deleted)`).
/// The files under `dir` that process `pid` holds open, but the runtime dir's lock (held for
/// the server's life, by design).
fn open_files_in(pid: u32, dir: &Path) -> Vec<String> {
    let dir = std::fs::canonicalize(dir).expect("runtime dir");
    let lock = dir.join("lock");
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| std::fs::read_link(e.path()).ok())
                .filter(|l| l.starts_with(&dir) && *l != lock)
                .map(|l| l.display().to_string())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn spooled_bodies_live_in_unnamed_files_that_an_aborted_upload_does_not_leave_behind() {
    let Some(py) = require_python("3.13") else {
        return;
    };
    let site = Site::new();
    site.probe("app");
    site.config(&format!(
        "apps:\n  auto:\n    python: {py}\n    script: app/probe.py\n    hosts: [auto]\n    max_body_size: 0\n\
         \x20 on:\n    python: {py}\n    script: app/probe.py\n    hosts: [on]\n    request_buffering: on\n    max_body_size: 0\n\
         \x20 off:\n    python: {py}\n    script: app/probe.py\n    hosts: [off]\n    request_buffering: \"off\"\n    max_body_size: 0\n",
        py = py.display()
    ));
    let server = site.serve();
    let run = site.path().join("run");
    let names_before: Vec<_> = std::fs::read_dir(&run)
        .expect("run dir")
        .flatten()
        .map(|e| e.file_name())
        .collect();
    let block = vec![b'x'; 64 * KIB];

    // `auto`, chunked: spooled. Half an upload, then the client goes away.
    let mut c = Client::connect(server.addr).expect("connect");
    c.send(b"POST /upload HTTP/1.1\r\nHost: auto\r\nTransfer-Encoding: chunked\r\n\r\n")
        .expect("head");
    for _ in 0..32 {
        c.stream()
            .write_all(format!("{:x}\r\n", block.len()).as_bytes())
            .and_then(|_| c.stream().write_all(&block))
            .and_then(|_| c.stream().write_all(b"\r\n"))
            .expect("chunk");
    }
    let spooling = eventually(Duration::from_secs(10), || {
        let open = open_files_in(server.pid(), &run);
        (!open.is_empty()).then_some(open)
    })
    .expect("the body is spooled to a file in the runtime dir");
    assert!(
        spooling.iter().all(|f| f.ends_with("(deleted)")),
        "{spooling:?}"
    );
    drop(c);
    assert!(
        eventually(Duration::from_secs(10), || open_files_in(
            server.pid(),
            &run
        )
        .is_empty()
        .then_some(()))
        .is_some(),
        "the spool file stays open after the client left: {:?}",
        open_files_in(server.pid(), &run)
    );
    let names_after: Vec<_> = std::fs::read_dir(&run)
        .expect("run dir")
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(
        names_before, names_after,
        "a file was left in the runtime dir"
    );

    // `on`: a body with Content-Length is spooled too; `off`: a chunked body streams, without
    // CONTENT_LENGTH.
    let mut c = Client::connect(server.addr).expect("connect");
    c.send(b"POST /upload HTTP/1.1\r\nHost: on\r\nContent-Length: 4194304\r\n\r\n")
        .expect("head");
    for _ in 0..32 {
        c.stream().write_all(&block).expect("body");
    }
    eventually(Duration::from_secs(10), || {
        (!open_files_in(server.pid(), &run).is_empty()).then_some(())
    })
    .expect("`on` spools a body with a Content-Length");
    for _ in 0..32 {
        c.stream().write_all(&block).expect("body");
    }
    let r = c.read_response(false).expect("response");
    assert!(r.text().starts_with("count=4194304 "), "{}", r.text());

    let mut c = Client::connect(server.addr).expect("connect");
    send_chunked(&mut c, "off", "/env", &payload(200 * KIB), 8 * KIB);
    let r = c.read_response(false).expect("response");
    assert!(!r.text().contains("CONTENT_LENGTH="), "{}", r.text());
    assert!(
        r.text().contains("wsgi.input_terminated=True"),
        "{}",
        r.text()
    );
    send_chunked(&mut c, "auto", "/env", &payload(200 * KIB), 8 * KIB);
    let r = c.read_response(false).expect("response");
    assert!(r.text().contains("CONTENT_LENGTH=204800"), "{}", r.text());
}

#[test]
fn a_one_gib_chunked_upload_keeps_memory_flat() {
    let Some(py) = require_python("3.13") else {
        return;
    };
    let site = Site::new();
    site.one_app("files", &py, &["max_body_size: 0", "worker: native"]);
    let server = site.serve();
    let pid = server.pid();
    let mut c = Client::connect(server.addr).expect("connect");
    c.reader_timeout(Duration::from_secs(300));
    let block = vec![b'g'; 256 * KIB];
    c.send(b"POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        .expect("head");
    let total = 1024 * MIB;
    let mut sent = 0;
    let mut baseline = 0;
    let mut highest = 0;
    while sent < total {
        c.stream()
            .write_all(format!("{:x}\r\n", block.len()).as_bytes())
            .and_then(|_| c.stream().write_all(&block))
            .and_then(|_| c.stream().write_all(b"\r\n"))
            .expect("chunk");
        sent += block.len();
        // Past the first 64 MiB every buffer exists; from then on nothing may grow.
        if sent == 64 * MIB {
            baseline = proc_kib(pid, "VmRSS");
        } else if sent > 64 * MIB && sent % (32 * MIB) == 0 {
            highest = highest.max(proc_kib(pid, "VmRSS"));
        }
    }
    c.stream().write_all(b"0\r\n\r\n").expect("last chunk");
    let r = c.read_response(false).expect("response");
    highest = highest.max(proc_kib(pid, "VmRSS"));
    assert!(
        r.text().starts_with(&format!("count={total} ")),
        "{}",
        r.text()
    );
    eprintln!("wsgimux RSS across a 1 GiB chunked upload: {baseline} KiB → at most {highest} KiB");
    assert!(
        highest.saturating_sub(baseline) <= 5 * 1024,
        "wsgimux grew by {} KiB",
        highest - baseline
    );
}
