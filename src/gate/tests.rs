//! The gate against a duplex stream: verdicts, the placeholder, and its timeouts with
//! paused time.

use super::*;
use hyper::Request;

#[test]
fn h2_admission() {
    let req = |method: &str, uri: &str, host: Option<&str>| {
        let mut b = Request::builder().method(method).uri(uri);
        if let Some(h) = host {
            b = b.header("host", h);
        }
        b.body(()).unwrap()
    };
    assert!(matches!(
        admit_h2(&req("GET", "https://a.example/x", None)),
        Verdict::Forward {
            asterisk: false,
            ..
        }
    ));
    assert!(matches!(
        admit_h2(&req("GET", "https://a.example/x", Some("b.example"))),
        Verdict::Reject(_)
    ));
    assert!(matches!(
        admit_h2(&req("CONNECT", "a.example:443", None)),
        Verdict::Reject(_)
    ));
    // Only http and https URIs, and no userinfo.
    assert!(matches!(
        admit_h2(&req("GET", "evil://a.example/x", None)),
        Verdict::Reject(Rejection::Malformed(m)) if m.contains(":scheme")
    ));
    assert!(matches!(
        admit_h2(&req("GET", "https://u@a.example/x", None)),
        Verdict::Reject(Rejection::Malformed(m)) if m.contains("userinfo")
    ));
    assert!(matches!(
        admit_h2(&req("GET", "http://a.example/x", None)),
        Verdict::Forward { .. }
    ));
}

use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

const TIMEOUTS: Timeouts = Timeouts {
    header: Duration::from_secs(10),
    body: Duration::from_secs(20),
    keepalive: Duration::from_secs(75),
};

fn limits() -> HeadLimits {
    HeadLimits {
        max_uri_length: 4096,
        max_header_size: 32 * 1024,
        max_header_field_size: 8190,
        max_headers: 100,
    }
}

/// A client end and a gate over the server end.
fn gate() -> (DuplexStream, Gate<DuplexStream>, Arc<ConnState>) {
    let (client, server) = tokio::io::duplex(64 * 1024);
    let conn = ConnState::new();
    (
        client,
        Gate::new(server, conn.clone(), limits(), TIMEOUTS),
        conn,
    )
}

/// What one read of the gate gives within `within` (None: still waiting).
async fn read(gate: &mut Gate<DuplexStream>, within: Duration) -> Option<io::Result<Vec<u8>>> {
    let mut buf = vec![0; 64 * 1024];
    let n = tokio::time::timeout(within, gate.read(&mut buf))
        .await
        .ok()?;
    Some(n.map(|n| buf[..n].to_vec()))
}

#[tokio::test(start_paused = true)]
async fn an_idle_connection_closes_after_keepalive_timeout_but_not_during_a_response() {
    let (_client, mut gate, conn) = gate();
    // A response under way: the idle clock does not run.
    let busy = conn.busy();
    assert!(read(&mut gate, Duration::from_secs(200)).await.is_none());
    drop(busy);
    assert!(read(&mut gate, Duration::from_secs(74)).await.is_none());
    let end = read(&mut gate, Duration::from_secs(2)).await;
    assert_eq!(end.expect("closed").expect("quietly").len(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_head_that_never_ends_is_closed_after_header_timeout_and_never_handed_on() {
    let (mut client, mut gate, conn) = gate();
    client
        .write_all(b"GET / HTTP/1.1\r\nHost: a\r\nX-Slow: ")
        .await
        .unwrap();
    assert!(read(&mut gate, Duration::from_secs(9)).await.is_none());
    let end = read(&mut gate, Duration::from_secs(2)).await;
    assert_eq!(
        end.expect("closed").expect("quietly").len(),
        0,
        "nothing handed on"
    );
    assert_eq!(conn.next_verdict(), None, "no request reached the service");
}

#[tokio::test(start_paused = true)]
async fn a_body_that_stalls_fails_after_body_timeout() {
    let (mut client, mut gate, conn) = gate();
    client
        .write_all(b"POST /u HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nabc")
        .await
        .unwrap();
    let mut handed = Vec::new();
    while !handed.ends_with(b"abc") {
        let more = read(&mut gate, Duration::from_secs(1))
            .await
            .unwrap()
            .unwrap();
        assert!(
            !more.is_empty(),
            "the head and what came of the body are handed on"
        );
        handed.extend(more);
    }
    assert!(handed.starts_with(b"POST /u HTTP/1.1\r\n"));
    assert_eq!(
        conn.next_verdict(),
        Some(Verdict::Forward { asterisk: false })
    );
    assert!(read(&mut gate, Duration::from_secs(19)).await.is_none());
    let failed = read(&mut gate, Duration::from_secs(2))
        .await
        .expect("failed");
    assert_eq!(failed.unwrap_err().kind(), io::ErrorKind::TimedOut);
}

#[tokio::test(start_paused = true)]
async fn a_slow_body_that_keeps_coming_never_times_out() {
    let (mut client, mut gate, _conn) = gate();
    client
        .write_all(b"POST /u HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n\r\n")
        .await
        .unwrap();
    let head = read(&mut gate, Duration::from_secs(1))
        .await
        .unwrap()
        .unwrap();
    assert!(head.starts_with(b"POST /u HTTP/1.1\r\n"));
    // Each byte comes 15 s after the last: past the 20 s body timeout in all, never between
    // two reads, so the deadline moves with every read.
    let mut body = Vec::new();
    for b in b"wxyz" {
        assert!(read(&mut gate, Duration::from_secs(15)).await.is_none());
        client.write_all(&[*b]).await.unwrap();
        body.extend(
            read(&mut gate, Duration::from_secs(1))
                .await
                .unwrap()
                .unwrap(),
        );
    }
    assert_eq!(body, b"wxyz");
}

#[tokio::test]
async fn an_invalid_request_is_replaced_by_the_placeholder_and_rejected() {
    let (mut client, mut gate, conn) = gate();
    let smuggle = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
    client.write_all(smuggle).await.unwrap();
    let handed = read(&mut gate, Duration::from_secs(1))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(handed, PLACEHOLDER_HEAD, "none of it reaches hyper");
    assert!(matches!(conn.next_verdict(), Some(Verdict::Reject(_))));
    let end = read(&mut gate, Duration::from_secs(1))
        .await
        .unwrap()
        .unwrap();
    assert!(end.is_empty(), "then the stream ends");
}

#[tokio::test]
async fn pipelined_requests_get_one_verdict_each_in_order() {
    let (mut client, mut gate, conn) = gate();
    let two = b"GET /a HTTP/1.1\r\nHost: a\r\n\r\nOPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n";
    client.write_all(two).await.unwrap();
    let mut handed = Vec::new();
    while handed.len() < two.len() {
        handed.extend(
            read(&mut gate, Duration::from_secs(1))
                .await
                .unwrap()
                .unwrap(),
        );
    }
    assert_eq!(handed, two);
    assert_eq!(
        conn.next_verdict(),
        Some(Verdict::Forward { asterisk: false })
    );
    assert_eq!(
        conn.next_verdict(),
        Some(Verdict::Forward { asterisk: true })
    );
    assert_eq!(conn.next_verdict(), None);
}
