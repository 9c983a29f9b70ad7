//! Strict HTTP/1.1 request framing: the request head and the chunked body, read the one way
//! RFC 9112 allows, so that wsgimux and whatever stands behind it can never disagree about where
//! a request ends (request smuggling).
//!
//! Pure and IO-free: `gate` feeds it bytes and acts on the answers. Anything ambiguous is a
//! [`Rejection`]; `error` turns rejections into statuses. Deliberately narrower than what hyper
//! accepts, so every head handed on to hyper reads the same to both.

/// Size limits on a request head (statuses 414 and 431).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadLimits {
    /// The request target, in bytes.
    pub max_uri_length: usize,
    /// The whole head: request line, header lines and the empty line.
    pub max_header_size: usize,
    /// One header line, with its CRLF.
    pub max_header_field_size: usize,
    /// Header lines.
    pub max_headers: usize,
}

/// Why a request was refused before any of it reached an app.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// Broken or ambiguous syntax; the text says which rule.
    Malformed(&'static str),
    UriTooLong,
    HeaderTooLarge,
    TooManyHeaders,
    /// A transfer coding other than `chunked` (and the no-op `identity`).
    CodingNotImplemented,
}

/// How the body of an accepted request is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    None,
    Length(u64),
    Chunked,
}

/// An accepted request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// Bytes before the request line that are dropped (one empty line, RFC 9112 §2.2).
    pub skip: usize,
    /// Bytes of the head after `skip`, up to and including the empty line.
    pub len: usize,
    pub framing: Framing,
    /// `OPTIONS *`: about the server, answered by wsgimux itself.
    pub asterisk: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// Not all of the head has arrived yet (and the part that has is within the limits).
    Incomplete,
    Head(Head),
    Rejected(Rejection),
}

mod chunked;
mod path;

pub use chunked::Chunked;
pub use path::normalize_path;
use Rejection::Malformed;

/// Reads a request head from the start of `buf`.
pub fn parse_head(buf: &[u8], limits: &HeadLimits) -> Parsed {
    match parse(buf, limits) {
        Ok(Some(h)) => Parsed::Head(h),
        Ok(None) => Parsed::Incomplete,
        Err(r) => Parsed::Rejected(r),
    }
}

fn parse(buf: &[u8], limits: &HeadLimits) -> Result<Option<Head>, Rejection> {
    // One empty line before the request line is tolerated (old clients send CRLF after a POST
    // body); more is not.
    let skip = match buf {
        [] | [b'\r'] => return Ok(None),
        [b'\r', b'\n', ..] => 2,
        [b'\n', ..] => return Err(Malformed("bare LF")),
        _ => 0,
    };
    let buf = &buf[skip..];
    // The request line: method SP target SP version, exactly.
    let Some(line_end) = find_lf(buf, 0) else {
        // The method and version need 20 bytes at most; the rest is the target.
        if buf.len() > limits.max_uri_length + 32 {
            return Err(Rejection::UriTooLong);
        }
        reject_early_garbage(buf)?;
        return Ok(None);
    };
    let line = strip_cr(&buf[..line_end])?;
    let (method, target, version) = request_line(line, limits)?;

    let Some((fields, end)) = header_fields(buf, line_end + 1, limits)? else {
        return Ok(None);
    };
    let http11 = match version {
        b"HTTP/1.1" => true,
        b"HTTP/1.0" => false,
        _ => unreachable!("request_line accepts only these"),
    };
    let asterisk = target_rules(method, target, &fields, http11)?;
    let (content_length, te) = (fields.content_length, fields.te);
    let framing = if te.is_empty() {
        match content_length {
            None | Some(0) => Framing::None,
            Some(n) => Framing::Length(n),
        }
    } else {
        if !http11 {
            return Err(Malformed("Transfer-Encoding in an HTTP/1.0 request"));
        }
        if content_length.is_some() {
            return Err(Malformed("both Content-Length and Transfer-Encoding"));
        }
        transfer_codings(&te)?;
        Framing::Chunked
    };
    Ok(Some(Head {
        skip,
        len: end,
        framing,
        asterisk,
    }))
}

/// What the head's fields say about where the request goes and how long its body is.
struct Fields<'a> {
    host: Option<&'a [u8]>,
    hosts: usize,
    content_types: usize,
    content_length: Option<u64>,
    te: Vec<&'a [u8]>,
}

/// Reads the header fields from `pos` to the empty line (→ the fields and the head's end),
/// within the limits; None while the head is incomplete.
fn header_fields<'a>(
    buf: &'a [u8],
    mut pos: usize,
    limits: &HeadLimits,
) -> Result<Option<(Fields<'a>, usize)>, Rejection> {
    let mut f = Fields {
        host: None,
        hosts: 0,
        content_types: 0,
        content_length: None,
        te: Vec::new(),
    };
    let mut count = 0;
    loop {
        let Some(lf) = find_lf(buf, pos) else {
            if buf.len() - pos > limits.max_header_field_size || buf.len() > limits.max_header_size
            {
                return Err(Rejection::HeaderTooLarge);
            }
            return Ok(None);
        };
        let field = strip_cr(&buf[pos..lf])?;
        pos = lf + 1;
        if field.is_empty() {
            return Ok(Some((f, pos)));
        }
        if field.len() + 2 > limits.max_header_field_size || pos > limits.max_header_size {
            return Err(Rejection::HeaderTooLarge);
        }
        count += 1;
        if count > limits.max_headers {
            return Err(Rejection::TooManyHeaders);
        }
        let (name, value) = field_line(field)?;
        if name.eq_ignore_ascii_case(b"host") {
            f.hosts += 1;
            f.host = Some(value);
        } else if name.eq_ignore_ascii_case(b"content-length") {
            if f.content_length.is_some() {
                return Err(Malformed("more than one Content-Length"));
            }
            f.content_length = Some(decimal(value).ok_or(Malformed("invalid Content-Length"))?);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            f.te.push(value);
        } else if name.eq_ignore_ascii_case(b"content-type") {
            f.content_types += 1;
        }
    }
}

/// The rules on Host, the method and the target form; Ok(true) for `OPTIONS *`.
fn target_rules(method: &[u8], target: &[u8], f: &Fields, http11: bool) -> Result<bool, Rejection> {
    // Fields that admit one value only (RFC 9110 §5.3): a repeat cannot be merged, and two
    // readers could each pick a different one.
    if f.hosts > 1 {
        return Err(Malformed("more than one Host"));
    }
    if f.content_types > 1 {
        return Err(Malformed("more than one Content-Type"));
    }
    if let Some(h) = f.host {
        if !(h.is_empty() || valid_authority(h)) {
            return Err(Malformed("invalid Host"));
        }
    }
    if http11 && f.host.is_none() {
        return Err(Malformed("HTTP/1.1 request without Host"));
    }
    if method == b"CONNECT" {
        return Err(Malformed("CONNECT is not supported"));
    }
    let asterisk = target == b"*";
    if asterisk && method != b"OPTIONS" {
        return Err(Malformed("asterisk-form target without OPTIONS"));
    }
    if let Some(authority) = absolute_authority(target)? {
        let agrees = f.host.is_some_and(|h| same_authority(authority, h, target));
        if !agrees {
            return Err(Malformed("absolute-form target disagrees with Host"));
        }
    }
    Ok(asterisk)
}

/// A request line that is clearly not HTTP (a TLS hello on a plain port, binary junk) is
/// refused before its end arrives.
fn reject_early_garbage(buf: &[u8]) -> Result<(), Rejection> {
    let method_end = buf.iter().position(|&b| b == b' ').unwrap_or(buf.len());
    if !buf[..method_end].iter().all(|&b| is_tchar(b)) {
        return Err(Malformed("invalid method"));
    }
    Ok(())
}

/// Method, target and version of a request line.
type RequestLine<'a> = (&'a [u8], &'a [u8], &'a [u8]);

fn request_line<'a>(line: &'a [u8], limits: &HeadLimits) -> Result<RequestLine<'a>, Rejection> {
    let mut parts = line.split(|&b| b == b' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Malformed("request line is not method, target and version"));
    };
    if method.is_empty() || !method.iter().all(|&b| is_tchar(b)) {
        return Err(Malformed("invalid method"));
    }
    if target.len() > limits.max_uri_length {
        return Err(Rejection::UriTooLong);
    }
    if target.is_empty() || !target.iter().all(|&b| (0x21..=0x7e).contains(&b)) {
        return Err(Malformed("invalid request target"));
    }
    if target[0] != b'/' && target != b"*" && absolute_authority(target)?.is_none() {
        return Err(Malformed(
            "request target is neither origin-form nor absolute-form",
        ));
    }
    match version {
        b"HTTP/1.1" | b"HTTP/1.0" => Ok((method, target, version)),
        // HTTP/2 and later never arrive as a request line (they start with a preface), and no
        // HTTP/1 client sends 1.2 or 0.9 with headers: refused like any other bad version.
        _ => Err(Malformed("invalid or unsupported HTTP version")),
    }
}

/// The authority of an absolute-form target (`http://host:port/…`; userinfo refused); `None`
/// for other forms.
fn absolute_authority(target: &[u8]) -> Result<Option<&[u8]>, Rejection> {
    let rest = if starts_with_ignore_case(target, b"http://") {
        &target[7..]
    } else if starts_with_ignore_case(target, b"https://") {
        &target[8..]
    } else {
        return Ok(None);
    };
    let end = rest
        .iter()
        .position(|&b| b == b'/' || b == b'?' || b == b'#')
        .unwrap_or(rest.len());
    let authority = &rest[..end];
    // RFC 9110 §4.2.4: userinfo in an http(s) URI is an error (a way to hide the real host).
    if authority.contains(&b'@') {
        return Err(Malformed("userinfo in the target's authority"));
    }
    if authority.is_empty() || !valid_authority(authority) {
        return Err(Malformed("invalid authority in absolute-form target"));
    }
    Ok(Some(authority))
}

/// Host and port equal, case-insensitively, a scheme's default port equal to none.
fn same_authority(a: &[u8], b: &[u8], target: &[u8]) -> bool {
    let default = if starts_with_ignore_case(target, b"https://") {
        &b":443"[..]
    } else {
        &b":80"[..]
    };
    let trim = |x: &'_ [u8]| -> Vec<u8> {
        let x = x.to_ascii_lowercase();
        match x.strip_suffix(default) {
            Some(s) => s.to_vec(),
            None => x,
        }
    };
    trim(a) == trim(b)
}

/// `uri-host [":" port]` (RFC 3986): a registered name or IPv4 address, or an IP literal in
/// brackets; the port all digits.
fn valid_authority(a: &[u8]) -> bool {
    let (host, port) = if a.first() == Some(&b'[') {
        let Some(close) = a.iter().position(|&b| b == b']') else {
            return false;
        };
        let inner = &a[1..close];
        if inner.is_empty()
            || !inner
                .iter()
                .all(|&b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
        {
            return false;
        }
        (&a[..=close], &a[close + 1..])
    } else {
        match a.iter().position(|&b| b == b':') {
            Some(c) => (&a[..c], &a[c..]),
            None => (a, &a[a.len()..]),
        }
    };
    let reg_name = |b: u8| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=%".contains(&b);
    let host_ok =
        host.first() == Some(&b'[') || (!host.is_empty() && host.iter().all(|&b| reg_name(b)));
    let port_ok = match port {
        [] => true,
        [b':', digits @ ..] => {
            digits.len() <= 5
                && digits.iter().all(u8::is_ascii_digit)
                && decimal(digits).is_none_or(|p| p <= 65_535)
        }
        _ => false,
    };
    host_ok && port_ok
}

/// `name ":" OWS value OWS`, with the value's surrounding whitespace removed.
fn field_line(field: &[u8]) -> Result<(&[u8], &[u8]), Rejection> {
    if matches!(field[0], b' ' | b'\t') {
        return Err(Malformed("obsolete line folding"));
    }
    let colon = field
        .iter()
        .position(|&b| b == b':')
        .ok_or(Malformed("header line without a colon"))?;
    let name = &field[..colon];
    if name.is_empty() || !name.iter().all(|&b| is_tchar(b)) {
        return Err(Malformed("invalid header name"));
    }
    let value = trim_ows(&field[colon + 1..]);
    if !value.iter().all(|&b| is_field_byte(b)) {
        return Err(Malformed("invalid character in a header value"));
    }
    Ok((name, value))
}

/// `1*DIGIT`, nothing else (no sign, no list, no spaces), that fits in a u64.
fn decimal(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

/// Transfer codings, across all the header's lines: `chunked` exactly once and last; before it
/// only the no-op `identity`.
fn transfer_codings(lines: &[&[u8]]) -> Result<(), Rejection> {
    let codings: Vec<Vec<u8>> = lines
        .iter()
        .flat_map(|l| l.split(|&b| b == b','))
        .map(|c| trim_ows(c).to_ascii_lowercase())
        .filter(|c| !c.is_empty())
        .collect();
    match codings.split_last() {
        Some((last, rest)) if last == b"chunked" => {
            if rest.iter().any(|c| c == b"chunked") {
                return Err(Malformed("chunked applied more than once"));
            }
            if rest.iter().any(|c| c != b"identity") {
                return Err(Rejection::CodingNotImplemented);
            }
            Ok(())
        }
        _ => Err(Malformed("Transfer-Encoding does not end in chunked")),
    }
}

fn find_lf(buf: &[u8], from: usize) -> Option<usize> {
    buf[from..]
        .iter()
        .position(|&b| b == b'\n')
        .map(|i| from + i)
}

/// A line must end in CRLF; a CR anywhere else is refused.
fn strip_cr(line: &[u8]) -> Result<&[u8], Rejection> {
    match line.split_last() {
        Some((b'\r', rest)) if !rest.contains(&b'\r') => Ok(rest),
        Some((b'\r', _)) => Err(Malformed("bare CR")),
        _ => Err(Malformed("bare LF")),
    }
}

fn trim_ows(v: &[u8]) -> &[u8] {
    let start = v
        .iter()
        .position(|&b| b != b' ' && b != b'\t')
        .unwrap_or(v.len());
    let end = v
        .iter()
        .rposition(|&b| b != b' ' && b != b'\t')
        .map_or(start, |e| e + 1);
    &v[start..end]
}

fn starts_with_ignore_case(s: &[u8], prefix: &[u8]) -> bool {
    s.len() >= prefix.len() && s[..prefix.len()].eq_ignore_ascii_case(prefix)
}

/// RFC 9110 §5.6.2 token characters.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// A header value byte: visible ASCII, space, tab or obs-text. No controls (NUL, CR, BEL, DEL).
fn is_field_byte(b: u8) -> bool {
    matches!(b, b'\t' | b' '..=b'~' | 0x80..=0xff)
}

#[cfg(test)]
mod tests;
