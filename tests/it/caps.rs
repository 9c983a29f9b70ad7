//! Per-app caps on a process: `max_memory` (its resident memory, children included, sampled
//! every 2 s) replaces a leaking process without a failed request.

use std::time::Duration;

use crate::harness::*;

/// An app that keeps 10 MB of every request: with `max_memory: 100m` its process is replaced
/// again and again while two clients load it, and every request is answered.
#[test]
fn a_leaking_process_is_replaced_past_max_memory_without_a_failed_request() {
    let Some(py) = require_python("3.12") else {
        return;
    };
    let site = Site::new();
    site.write(
        "leak.py",
        "import os\nkept = []\n\ndef application(environ, start_response):\n    kept.append(b'x' * (10 << 20))\n    start_response('200 OK', [('Content-Type', 'text/plain')])\n    return [str(os.getpid()).encode()]\n",
    );
    site.config(&format!(
        "apps:\n  leak:\n    python: {py}\n    script: leak.py\n    threads: 2\n    max_memory: 100m\n    drain_timeout: 2s\n",
        py = py.display()
    ));
    let server = site.serve();
    let addr = server.addr;
    let clients: Vec<_> = (0..2)
        .map(|_| {
            std::thread::spawn(move || {
                let mut answers = Vec::new();
                for _ in 0..40 {
                    let r = Client::connect(addr).and_then(|mut c| c.get("x", "/"));
                    answers.push(r.map(|r| (r.status, r.text())).map_err(|e| e.to_string()));
                    std::thread::sleep(Duration::from_millis(200));
                }
                answers
            })
        })
        .collect();
    let answers: Vec<_> = clients
        .into_iter()
        .flat_map(|c| c.join().unwrap_or_default())
        .collect();
    assert_eq!(answers.len(), 80);
    let failed: Vec<_> = answers
        .iter()
        .filter(|a| !matches!(a, Ok((200, _))))
        .collect();
    assert!(failed.is_empty(), "{failed:?}\n{}", server.log_text());
    let pids: std::collections::BTreeSet<_> = answers.iter().flatten().map(|(_, p)| p).collect();
    assert!(
        pids.len() >= 2,
        "never replaced: {pids:?}\n{}",
        server.log_text()
    );
    assert!(
        server
            .log_text()
            .contains("over its max_memory (100.0 MiB); replacing it"),
        "{}",
        server.log_text()
    );
    let status = crate::operating::status_json(&site.path().join("wsgimux.yaml"));
    let process = &crate::operating::app(&status, "leak")["processes"][0];
    assert!(
        process["memory_replacements"].as_u64() >= Some(1),
        "{process}"
    );
    assert!(
        process["resident_bytes"].as_u64() > Some(1 << 20),
        "{process}"
    );
}
