//! The value grammars of the config: durations (`500ms`, `30s`, `2m`, `1h`, seconds), mounts
//! (`/blog`), host patterns (`example.com`, `*.example.com`), dotted identifiers. Pure.

use std::fmt;
use std::time::Duration;

use super::{HostPattern, MAX_DURATION};

/// A mount path prefix: `/`, or `/a/b` with no trailing slash, no empty or dot segments.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Mount(String);

impl Mount {
    pub fn root() -> Self {
        Mount("/".into())
    }

    pub fn parse(s: &str) -> Result<Self, String> {
        if !s.starts_with('/') {
            return Err(format!("mount {s:?} must start with '/'"));
        }
        if s.contains(['?', '#', '%']) || s.chars().any(|c| c.is_control() || c == ' ') {
            return Err(format!(
                "mount {s:?} must be a plain path (no '?', '#', '%', spaces or control characters)"
            ));
        }
        let trimmed = s.trim_end_matches('/');
        if trimmed.is_empty() {
            return Ok(Mount::root());
        }
        if trimmed[1..]
            .split('/')
            .any(|seg| seg.is_empty() || seg == "." || seg == "..")
        {
            return Err(format!("mount {s:?} has an empty, '.' or '..' segment"));
        }
        Ok(Mount(trimmed.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn is_root(&self) -> bool {
        self.0 == "/"
    }

    /// Whether a decoded request path lies under this mount, on a segment boundary.
    pub fn matches(&self, path: &[u8]) -> bool {
        self.is_root() || is_under(self.0.as_bytes(), path)
    }
}

/// Whether `path` is `prefix` or below it on a segment boundary (`/a` holds `/a/b`, not `/ab`).
pub fn is_under(prefix: &[u8], path: &[u8]) -> bool {
    path.starts_with(prefix) && (path.len() == prefix.len() || path[prefix.len()] == b'/')
}

impl fmt::Display for Mount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Parses a duration as people write them: a plain number of seconds (`90`, `1.5`), or units
/// as `humantime` reads them (`250ms`, `30s`, `5min`, `2m`, `1h 30m`, `1.5s`); at most 24 h.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let not_a_duration = || {
        format!(
            "{text:?} is not a duration (e.g. \"250ms\", \"30s\", \"5min\", \"1h 30m\", or seconds as a number)"
        )
    };
    let plain = !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit() || b == b'.');
    let parsed = if plain {
        let n: Option<f64> = t.parse().ok();
        n.and_then(|n| Duration::try_from_secs_f64(n).ok())
    } else {
        humantime::parse_duration(t).ok().or_else(|| fractional(t))
    };
    let d = parsed.ok_or_else(not_a_duration)?;
    (d <= MAX_DURATION)
        .then_some(d)
        .ok_or_else(|| format!("{text:?} is longer than {}h", MAX_DURATION.as_secs() / 3600))
}

/// One number with a fraction and one unit (`1.5s`, `0.7s`, `2.5m`), which humantime, built
/// on whole numbers, does not read: the number of the unit's milliseconds.
fn fractional(t: &str) -> Option<Duration> {
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
    let (number, unit) = (&t[..split], t[split..].trim());
    let n: f64 = number.parse().ok().filter(|n: &f64| n.is_finite())?;
    let unit = humantime::parse_duration(&format!("1{unit}")).ok()?;
    Duration::try_from_secs_f64(n * unit.as_secs_f64()).ok()
}

pub(super) fn seconds(n: f64) -> Option<Duration> {
    let d = Duration::try_from_secs_f64(n).ok()?;
    (d <= MAX_DURATION).then_some(d)
}

pub(super) fn is_dotted_identifier(s: &str) -> bool {
    !s.is_empty()
        && s.split('.').all(|part| {
            let mut chars = part.chars();
            matches!(chars.next(), Some(c) if c == '_' || c.is_alphabetic())
                && chars.all(|c| c == '_' || c.is_alphanumeric())
        })
}

/// Parses a `hosts:` entry: a host name or `*.suffix`, without scheme, port or path.
pub fn parse_host_pattern(raw: &str) -> Result<HostPattern, String> {
    let h = raw.trim().to_ascii_lowercase();
    let h = h.strip_suffix('.').unwrap_or(&h);
    let (wild, name) = match h.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, h),
    };
    let valid_label = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    let ipv6 = !wild && name.starts_with('[') && name.ends_with(']');
    if name.is_empty() || (!ipv6 && !name.split('.').all(valid_label)) {
        return Err(format!(
            "{raw:?} is not a host name or \"*.domain\" pattern (no scheme, port or path)"
        ));
    }
    Ok(if wild {
        HostPattern::Wildcard(format!(".{name}"))
    } else {
        HostPattern::Exact(name.to_string())
    })
}
