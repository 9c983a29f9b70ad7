//! The strict request framing as data tables: heads and chunked bodies accepted and refused.

use super::*;

const LIMITS: HeadLimits = HeadLimits {
    max_uri_length: 64,
    max_header_size: 512,
    max_header_field_size: 128,
    max_headers: 8,
};

fn head(text: &str) -> Parsed {
    parse_head(text.as_bytes(), &LIMITS)
}

fn rejected(text: &str) -> Rejection {
    match head(text) {
        Parsed::Rejected(r) => r,
        other => panic!("{text:?} was not rejected: {other:?}"),
    }
}

fn accepted(text: &str) -> Head {
    match head(text) {
        Parsed::Head(h) => h,
        other => panic!("{text:?} was not accepted: {other:?}"),
    }
}

#[test]
fn accepts_plain_requests() {
    let h = accepted("GET /a?b HTTP/1.1\r\nHost: x\r\n\r\nrest");
    assert_eq!((h.skip, h.len, h.framing), (0, 30, Framing::None));
    let h = accepted("\r\nPOST / HTTP/1.1\r\nHost: x:80\r\nContent-Length: 5\r\n\r\n");
    assert_eq!((h.skip, h.framing), (2, Framing::Length(5)));
    let h = accepted("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: identity, Chunked\r\n\r\n");
    assert_eq!(h.framing, Framing::Chunked);
    assert!(accepted("OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n").asterisk);
    // HTTP/1.0 needs no Host; an empty Host is allowed; obs-text and tabs in values.
    accepted("GET / HTTP/1.0\r\n\r\n");
    accepted("GET / HTTP/1.1\r\nHost:\r\n\r\n");
    accepted("GET / HTTP/1.1\r\nHost: [::1]:8080\r\nX: caf\u{e9}\t v\r\n\r\n");
    accepted("GET http://Example.com:80/p HTTP/1.1\r\nHost: example.com\r\n\r\n");
}

#[test]
fn waits_for_the_rest_of_the_head() {
    for partial in [
        "",
        "\r",
        "GET / HTT",
        "GET / HTTP/1.1\r\nHost: x\r\n",
        "GET / HTTP/1.1\r\nHo",
    ] {
        assert_eq!(head(partial), Parsed::Incomplete, "{partial:?}");
    }
}

#[test]
fn rejects_ambiguous_heads() {
    let cases = [
        ("GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n", "both"),
        ("GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n", "more than one Content-Length"),
        ("GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1, 1\r\n\r\n", "invalid Content-Length"),
        ("GET / HTTP/1.1\r\nHost: x\r\nContent-Length: +1\r\n\r\n", "invalid Content-Length"),
        ("GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n", "does not end"),
        ("GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", "more than once"),
        ("GET / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", "HTTP/1.0"),
        ("GET / HTTP/1.1\r\nHost: x\r\nX: a\r\n b\r\n\r\n", "folding"),
        ("GET / HTTP/1.1\r\nHost : x\r\n\r\n", "header name"),
        ("GET / HTTP/1.1\r\nHost: x\r\nX: a\rb\r\n\r\n", "bare CR"),
        ("GET / HTTP/1.1\nHost: x\r\n\r\n", "bare LF"),
        ("GET / HTTP/1.1\r\nHost: x\r\nX: a\0b\r\n\r\n", "value"),
        ("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", "more than one Host"),
        ("GET / HTTP/1.1\r\nHost: a b\r\n\r\n", "invalid Host"),
        ("GET / HTTP/1.1\r\n\r\n", "without Host"),
        ("GET http://a/ HTTP/1.1\r\nHost: b\r\n\r\n", "disagrees"),
        ("GET / HTTP/1.1\r\nHost: a:99999\r\n\r\n", "invalid Host"),
        ("GET / HTTP/1.1\r\nHost: a:65536\r\n\r\n", "invalid Host"),
        ("GET http://u@a/ HTTP/1.1\r\nHost: a\r\n\r\n", "userinfo"),
        ("GET http://u:p@a:80/ HTTP/1.1\r\nHost: a\r\n\r\n", "userinfo"),
        ("CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n", "target"),
        ("CONNECT /x HTTP/1.1\r\nHost: a\r\n\r\n", "CONNECT"),
        ("GET * HTTP/1.1\r\nHost: a\r\n\r\n", "asterisk"),
        ("GET a/b HTTP/1.1\r\nHost: a\r\n\r\n", "target"),
        ("GET  / HTTP/1.1\r\nHost: a\r\n\r\n", "request line"),
        ("GET /\u{e9} HTTP/1.1\r\nHost: a\r\n\r\n", "target"),
        ("GE:T / HTTP/1.1\r\nHost: a\r\n\r\n", "method"),
        ("GET / HTTP/1.1x\r\nHost: a\r\n\r\n", "version"),
        ("\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n", "request line"),
    ];
    for (text, why) in cases {
        match rejected(text) {
            Rejection::Malformed(m) => assert!(m.contains(why), "{text:?}: {m:?} lacks {why:?}"),
            other => panic!("{text:?}: {other:?}"),
        }
    }
    assert_eq!(
        rejected("GET / HTTP/2.0\r\n\r\n"),
        Rejection::Malformed("invalid or unsupported HTTP version")
    );
    assert_eq!(
        rejected("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"),
        Rejection::CodingNotImplemented
    );
}

#[test]
fn limits() {
    let long_uri = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(64));
    assert_eq!(rejected(&long_uri), Rejection::UriTooLong);
    // Known to be too long before the line ends.
    assert_eq!(
        rejected(&format!("GET /{}", "a".repeat(200))),
        Rejection::UriTooLong
    );
    let long_field = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX: {}\r\n\r\n",
        "a".repeat(130)
    );
    assert_eq!(rejected(&long_field), Rejection::HeaderTooLarge);
    let many = format!("GET / HTTP/1.1\r\nHost: x\r\n{}\r\n", "X: 1\r\n".repeat(8));
    assert_eq!(rejected(&many), Rejection::TooManyHeaders);
    let big = format!(
        "GET / HTTP/1.1\r\nHost: x\r\n{}\r\n",
        format!("X: {}\r\n", "a".repeat(100)).repeat(6)
    );
    assert_eq!(rejected(&big), Rejection::HeaderTooLarge);
    // An endless unterminated field is refused once it passes the limit.
    let endless = format!("GET / HTTP/1.1\r\nHost: x\r\nX: {}", "a".repeat(200));
    assert_eq!(rejected(&endless), Rejection::HeaderTooLarge);
}

fn chunked(body: &[u8]) -> Result<(usize, bool), Rejection> {
    let mut c = Chunked::new(256);
    let n = c.feed(body)?;
    Ok((n, c.is_done()))
}

#[test]
fn chunked_bodies() {
    let body = b"5\r\nhello\r\n0000C;a=b ; c=\"q\\\"x\"\r\n hello world\r\n0\r\nX-T: 1\r\n\r\nNEXT";
    assert_eq!(chunked(body), Ok((body.len() - 4, true)));
    // Byte by byte gives the same answer.
    let mut c = Chunked::new(256);
    let mut total = 0;
    for b in body.iter() {
        total += c.feed(std::slice::from_ref(b)).unwrap();
    }
    assert_eq!((total, c.is_done()), (body.len() - 4, true));
    assert_eq!(chunked(b"5\r\nhel"), Ok((6, false)));

    for bad in [
        &b"6_0\r\n"[..],
        b"-5\r\n",
        b"+5\r\n",
        b"5 \r\n",
        b" 5\r\n",
        b"\r\n",
        b" ;a=b\r\n",
        b"5\n",
        b"5;a=b\rc\r\n",
        b"5;\r\n",
        b"5\r\nhelloX\r\n",
        b"0\r\nContent-Length: 5\r\n\r\n",
        b"0\r\nHost: x\r\n\r\n",
        b"0\r\n x\r\n\r\n",
        b"11111111111111111\r\n",
    ] {
        assert!(chunked(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
    }
}
