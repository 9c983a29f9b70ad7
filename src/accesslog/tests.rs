//! Access-log lines as written: combined and JSON.
use super::*;

#[test]
fn vhost_is_the_host_name_without_its_port() {
    let cases: &[(&str, &str, Option<u16>)] = &[
        ("Example.com:8080", "example.com", Some(8080)),
        ("shop.test", "shop.test", None),
        ("shop.test.", "shop.test", None),
        ("[::1]:8443", "[::1]", Some(8443)),
        ("[::1]", "[::1]", None),
        ("bad host:x", "bad host:x", None),
    ];
    for (raw, vhost, port) in cases {
        let v = HeaderValue::from_str(raw).unwrap();
        let mut line = String::new();
        host_into(&mut line, Some(&v));
        assert_eq!(line, *vhost, "{raw}");
        assert_eq!(host_port(&v), *port, "{raw}");
    }
}

#[test]
fn escapes() {
    assert_eq!(escape(b"a\"b\\c\x01\xff"), "a\\\"b\\\\c\\x01\\xFF");
}

fn entry(head: bool) -> Entry {
    let req = Request::get("/p%20x?q=1")
        .header(USER_AGENT, "curl \"7\"")
        .header(HOST, "Example.com:8080")
        .body(())
        .unwrap();
    let peer = HeaderValue::from_static("127.0.0.1");
    let mut log = if head {
        AccessLog::begin(&req, peer)
    } else {
        AccessLog::refused(peer)
    };
    log.time = UNIX_EPOCH + Duration::from_secs(1_000_000_000);
    Entry {
        log,
        status: if head { "200" } else { "400" }.parse().unwrap(),
        served: None,
        sink: Arc::new(AccessSink::default()),
        tunnel_in: None,
    }
}

#[test]
fn combined_lines() {
    let rt = Duration::from_micros(7_400);
    assert_eq!(
        entry(true).combined(14, true, rt, "web"),
        "127.0.0.1 - - [09/Sep/2001:01:46:40 +0000] \"GET /p%20x?q=1 HTTP/1.1\" 200 14 \"-\" \
         \"curl \\\"7\\\"\" app=web vhost=example.com rt=0.007"
    );
    // Twice in the same second: the time's cached text is the same.
    assert!(entry(true)
        .combined(0, false, rt, "web")
        .starts_with("127.0.0.1 - - [09/Sep/2001:01:46:40 +0000] \"GET"));
    assert_eq!(
        entry(false).combined(0, false, Duration::ZERO, "-"),
        "127.0.0.1 - - [09/Sep/2001:01:46:40 +0000] \"-\" 400 - \"-\" \"-\" app=- vhost=- \
         rt=0.000 aborted"
    );
}
