//! The request path as every child gets it: RFC 3986 §5.2.4 dot-segment removal, so that a
//! route's prefix means what it says (`/up/../m/x` is `/m/x`, routed and forwarded as such) and
//! no origin resolves a path outside the prefix it was routed by. nginx does the same.
//!
//! Segments are compared percent-decoded (`%2e%2e` is `..`, as nginx reads it) but kept as sent
//! otherwise: an escaped slash stays inside its segment and nothing else is re-encoded.

use std::borrow::Cow;

use percent_encoding::percent_decode_str;

use super::Rejection;

/// The path without dot-segments (borrowed when it had none). A path that would climb above
/// `/`, that hides a dot-segment behind an escaped slash, or that holds a NUL once decoded, is
/// refused.
pub fn normalize_path(path: &str) -> Result<Cow<'_, str>, Rejection> {
    let suspicious = |p: &str| {
        p.contains('.')
            || p.contains("%2e")
            || p.contains("%2E")
            || p.contains("%00")
            || p.contains('\0')
    };
    if !suspicious(path) {
        return Ok(Cow::Borrowed(path));
    }
    if percent_decode_str(path).any(|b| b == 0) {
        return Err(Rejection::Malformed("NUL in the request path"));
    }
    let Some(rest) = path.strip_prefix('/') else {
        // Not origin form (`*`): nothing to resolve.
        return Ok(Cow::Borrowed(path));
    };
    let mut kept: Vec<&str> = Vec::new();
    let mut ends_in_dir = false;
    let mut changed = false;
    for segment in rest.split('/') {
        match dot_segment(segment) {
            Some(Dot::Current) => {
                changed = true;
                ends_in_dir = true;
            }
            Some(Dot::Parent) => {
                changed = true;
                ends_in_dir = true;
                if kept.pop().is_none() {
                    return Err(Rejection::Malformed("request path climbs above /"));
                }
            }
            None if hides_a_dot_segment(segment) => {
                return Err(Rejection::Malformed(
                    "a dot-segment written with an escaped slash (%2F) in the request path",
                ));
            }
            None => {
                ends_in_dir = false;
                kept.push(segment);
            }
        }
    }
    if !changed {
        return Ok(Cow::Borrowed(path));
    }
    let mut out = String::with_capacity(path.len());
    for segment in &kept {
        out.push('/');
        out.push_str(segment);
    }
    if ends_in_dir || out.is_empty() {
        out.push('/');
    }
    Ok(Cow::Owned(out))
}

/// A segment with an escaped slash whose decoded parts include `.` or `..` (`..%2f..%2fetc`):
/// an origin that decodes `%2F` would climb where the route's prefix says it cannot, so it is
/// refused, as nginx refuses it. Escaped slashes between ordinary names stay as sent.
fn hides_a_dot_segment(segment: &str) -> bool {
    if !(segment.contains("%2f") || segment.contains("%2F")) {
        return false;
    }
    let decoded: Vec<u8> = percent_decode_str(segment).collect();
    decoded
        .split(|&b| b == b'/')
        .any(|part| part == b"." || part == b"..")
}

enum Dot {
    Current,
    Parent,
}

fn dot_segment(segment: &str) -> Option<Dot> {
    if segment.len() > 6 {
        return None;
    }
    let decoded: Vec<u8> = percent_decode_str(segment).collect();
    match decoded.as_slice() {
        b"." => Some(Dot::Current),
        b".." => Some(Dot::Parent),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(p: &str) -> Result<String, Rejection> {
        normalize_path(p).map(Cow::into_owned)
    }

    #[test]
    fn dot_segments_are_resolved_and_the_rest_kept_as_sent() {
        for (given, want) in [
            ("/", "/"),
            ("/a/b", "/a/b"),
            ("/file.txt", "/file.txt"),
            ("/up/../m/x", "/m/x"),
            ("/up/%2e%2e/m/x", "/m/x"),
            ("/up/%2E./m/x", "/m/x"),
            ("/a/./b", "/a/b"),
            ("/a/b/..", "/a/"),
            ("/a/b/.", "/a/b/"),
            ("/a/..", "/"),
            ("/pkg/a%2Fb.tar", "/pkg/a%2Fb.tar"),
            ("/a/b%2F...c", "/a/b%2F...c"),
            ("/a/...", "/a/..."),
            ("/a//../b", "/a/b"),
            ("/caf%C3%A9/./x", "/caf%C3%A9/x"),
            ("*", "*"),
        ] {
            assert_eq!(norm(given).as_deref(), Ok(want), "{given}");
        }
        assert!(matches!(normalize_path("/a/b"), Ok(Cow::Borrowed(_))));
    }

    #[test]
    fn climbing_above_the_root_hidden_dot_segments_and_nul_are_refused() {
        for bad in [
            "/..",
            "/../etc/passwd",
            "/a/../..",
            "/%2e%2e/x",
            "/m%00x",
            "/a/%00",
            "/..%2f..%2fetc/passwd",
            "/m/%2e%2e%2f%2e%2e%2fx",
            "/a/%2F../b",
            "/a/x%2F.%2Fy",
        ] {
            assert!(norm(bad).is_err(), "{bad}");
        }
    }
}
