//! Bodies stream through the front in both directions: 100 MB up and down while wsgimux's
//! resident memory stays within 20 MB of where it started.

use std::io::Write;

use crate::harness::*;

const MB: u64 = 1024 * 1024;

#[test]
fn hundred_megabytes_up_and_down_with_flat_memory() {
    let Some(py) = require_python("3.13") else {
        return;
    };
    let site = Site::new();
    site.one_app("files", &py, &["max_body_size: 0"]);
    let server = site.serve();
    let pid = server.pid();
    // Warm up: connection pools and buffers exist before the baseline is taken.
    let mut c = Client::connect(server.addr).unwrap();
    for _ in 0..3 {
        assert_eq!(
            c.get("localhost", "/download?n=1000000").unwrap().status,
            200
        );
    }
    let baseline = proc_kib(pid, "VmRSS");

    // Upload with Content-Length, 64 KiB at a time.
    let total = 100 * MB;
    c.send(
        format!("POST /upload HTTP/1.1\r\nHost: localhost\r\nContent-Length: {total}\r\n\r\n")
            .as_bytes(),
    )
    .unwrap();
    let block = vec![b'u'; 64 * 1024];
    let mut digest_input = 0u64;
    while digest_input < total {
        c.stream().write_all(&block).unwrap();
        digest_input += block.len() as u64;
    }
    let r = c.read_response(false).unwrap();
    assert_eq!(r.status, 200);
    assert!(
        r.text().starts_with(&format!("count={total} ")),
        "{}",
        r.text()
    );

    // Chunked upload (no Content-Length), 10 MB.
    c.send(b"POST /upload HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n")
        .unwrap();
    for _ in 0..160 {
        c.stream()
            .write_all(format!("{:x}\r\n", block.len()).as_bytes())
            .unwrap();
        c.stream().write_all(&block).unwrap();
        c.stream().write_all(b"\r\n").unwrap();
    }
    c.stream().write_all(b"0\r\n\r\n").unwrap();
    let r = c.read_response(false).unwrap();
    assert!(
        r.text().starts_with(&format!("count={} ", 160 * 64 * 1024)),
        "{}",
        r.text()
    );

    // Download: 100 MB streamed by a generator, counted but not kept.
    c.send(&get_bytes("localhost", &format!("/download?n={total}")))
        .unwrap();
    let (r, got) = c.read_response_counted(true).unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(got, total);

    let peak = proc_kib(pid, "VmHWM");
    let now = proc_kib(pid, "VmRSS");
    eprintln!("wsgimux RSS: baseline {baseline} KiB, after {now} KiB, peak {peak} KiB");
    assert!(
        peak.saturating_sub(baseline) < 20 * 1024,
        "wsgimux grew by {} KiB while relaying 210 MB",
        peak - baseline
    );
    // The same connection is still usable.
    assert_eq!(c.get("localhost", "/ver").unwrap().status, 200);
}
