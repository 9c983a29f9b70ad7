//! The front door's keys: `listen` (with `tls`), `redirect_https`, `trusted_proxies`,
//! `limits`, `user`/`group`; and the per-app limits (`max_body_size`, `request_timeout`,
//! `queue_limit`). Text-only rules; certificate files are read by `preflight`.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{parse_duration, Location, RawDuration, Validator, DEFAULT_LISTEN};

/// One `listen` entry as written: an address, or an address with `tls`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum RawListener {
    Address(String),
    Full(RawFullListener),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFullListener {
    address: String,
    tls: Option<RawListenerTls>,
}

/// A listener's `tls`: certificate files, or `acme` / `internal`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum RawListenerTls {
    Source(String),
    Files(RawTls),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTls {
    certificates: Vec<RawCertificate>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCertificate {
    cert: String,
    key: String,
    hosts: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum RawListen {
    // A list first: serde would read a two-item list as a `{address, tls}` entry.
    Many(Vec<RawListener>),
    One(RawListener),
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLimits {
    max_uri_length: Option<RawSize>,
    max_header_size: Option<RawSize>,
    max_header_field_size: Option<RawSize>,
    max_headers: Option<u32>,
    header_timeout: Option<RawDuration>,
    body_timeout: Option<RawDuration>,
    keepalive_timeout: Option<RawDuration>,
    max_connections: Option<u32>,
    max_response_header_size: Option<RawSize>,
}

/// A size as written: bytes as a number, or `512`, `8k`, `1m`, `2g` (also `KiB`/`MiB`/`GiB`).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum RawSize {
    Bytes(u64),
    Text(String),
}

/// A TLS listener's certificates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSpec {
    pub source: CertSource,
    /// The files, for [`CertSource::Files`]; empty otherwise.
    pub certificates: Vec<CertSpec>,
}

/// Where a TLS listener's certificates come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertSource {
    /// `tls: {certificates: …}`: PEM files.
    Files,
    /// `tls: acme`: one per routed exact host, from the `acme:` CA.
    Acme,
    /// `tls: internal`: issued at the first handshake by wsgimux's local CA.
    Internal,
}

impl CertSource {
    pub fn as_str(self) -> &'static str {
        match self {
            CertSource::Files => "file",
            CertSource::Acme => "acme",
            CertSource::Internal => "internal",
        }
    }
}

/// One certificate chain and its key; `hosts` empty: the names the certificate carries.
/// Compared without its positions (below): moving it in the file changes nothing.
#[derive(Debug, Clone, Eq)]
pub struct CertSpec {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub hosts: Vec<String>,
    /// Where `cert` and `key` are in the file, for errors found when reading them.
    pub cert_at: Option<Location>,
    pub key_at: Option<Location>,
}

impl PartialEq for CertSpec {
    fn eq(&self, other: &Self) -> bool {
        (&self.cert, &self.key, &self.hosts) == (&other.cert, &other.key, &other.hosts)
    }
}

/// A network in CIDR notation (`10.0.0.0/8`, `::1/128`; a bare address is a /32 or /128).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn parse(text: &str) -> Result<Self, String> {
        let bad =
            || format!("{text:?} is not an address or network (e.g. \"10.0.0.0/8\", \"::1\")");
        let (addr, prefix) = match text.trim().split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text.trim(), None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => match p.parse::<u8>() {
                Ok(p) if p <= max => p,
                _ => return Err(bad()),
            },
        };
        Ok(Cidr { addr, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        // An IPv4 peer on a dual-stack socket arrives as ::ffff:a.b.c.d.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// Front-door limits. Timeouts and counts follow nginx's defaults; the sizes follow
/// gunicorn's and Apache's (a 4 KiB target, 8190-byte header lines), which are stricter than
/// nginx's 8k buffers, so a request no Python server behind would take is refused up front.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// 414 above this, for the request target.
    pub max_uri_length: usize,
    /// 431 above this, for the whole head.
    pub max_header_size: usize,
    /// 431 above this, for one header line with its CRLF (Apache: LimitRequestFieldSize).
    pub max_header_field_size: usize,
    /// 431 above this many header lines.
    pub max_headers: usize,
    /// From a head's first byte to its end (nginx: client_header_timeout 60s).
    pub header_timeout: Duration,
    /// Between two reads of a request body (nginx: client_body_timeout 60s).
    pub body_timeout: Duration,
    /// Idle time between requests on a connection (nginx: keepalive_timeout 75s).
    pub keepalive_timeout: Duration,
    /// Client connections served at once; more wait in the listen queue.
    pub max_connections: usize,
    /// An app server's response head (status line and headers, each 1xx head too) above this
    /// is a 502, by size and not by a count of fields (nginx: proxy_buffer_size; Go's proxies:
    /// MaxResponseHeaderBytes). Also the limit of a response's trailers.
    pub max_response_header_size: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_uri_length: 4 * 1024,
            max_header_size: 32 * 1024,
            max_header_field_size: 8190,
            max_headers: 100,
            header_timeout: Duration::from_secs(60),
            body_timeout: Duration::from_secs(60),
            keepalive_timeout: Duration::from_secs(75),
            max_connections: 10_000,
            max_response_header_size: 32 * 1024,
        }
    }
}

/// Default `max_body_size` of an app (nginx: client_max_body_size 1m).
pub const DEFAULT_MAX_BODY_SIZE: u64 = 1024 * 1024;
/// Default `request_timeout` of an app (nginx: proxy_read_timeout 60s).
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Default `response_idle_timeout` of an app: a response body silent this long is cut.
pub const DEFAULT_RESPONSE_IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// Default `queue_limit` of an app: requests waiting beyond what its processes run at once.
pub const DEFAULT_QUEUE_LIMIT: u32 = 100;
/// Default `overflow_wait` of an app: how long a request beyond its queue waits for a place.
pub const DEFAULT_OVERFLOW_WAIT: Duration = Duration::from_secs(1);

/// Parses `512`, `8k`, `8KiB`, `1m`, `1MB`, `2g`; units are powers of 1024.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = (&t[..split], t[split..].trim().to_ascii_lowercase());
    let scale: u64 = match unit.as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => {
            return Err(format!(
                "{text:?} is not a size (e.g. 8192, \"8k\", \"1m\", \"2g\")"
            ))
        }
    };
    number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(scale))
        .ok_or_else(|| format!("{text:?} is not a size (e.g. 8192, \"8k\", \"1m\", \"2g\")"))
}

impl Validator<'_> {
    /// `listen`: the addresses, and the TLS settings of those that have them.
    pub(super) fn listeners(
        &mut self,
        raw: Option<RawListen>,
    ) -> (Vec<SocketAddr>, BTreeMap<SocketAddr, TlsSpec>) {
        let list = match raw {
            None => vec![RawListener::Address(DEFAULT_LISTEN.to_string())],
            Some(RawListen::One(l)) => vec![l],
            Some(RawListen::Many(v)) => v,
        };
        if list.is_empty() {
            let loc = self.locator.key("listen");
            self.problem(loc, None, "listen", "needs at least one address".into());
        }
        let mut addrs = Vec::new();
        let mut tls = BTreeMap::new();
        for (i, l) in list.into_iter().enumerate() {
            let (text, spec, at) = match l {
                RawListener::Address(s) => (s, None, format!("listen.{i}")),
                RawListener::Full(f) => (f.address, f.tls, format!("listen.{i}.address")),
            };
            let loc = self
                .locator
                .value(&at)
                .or_else(|| self.locator.value("listen"));
            let addr = match text.trim().parse::<SocketAddr>() {
                Ok(a) if addrs.contains(&a) => {
                    self.problem(loc, None, "listen", format!("{text:?} is listed twice"));
                    continue;
                }
                Ok(a) => a,
                Err(_) => {
                    self.problem(
                        loc,
                        None,
                        "listen",
                        format!(
                            "{text:?} is not an IP address and port (e.g. \"127.0.0.1:8080\", \"[::]:80\")"
                        ),
                    );
                    continue;
                }
            };
            addrs.push(addr);
            if let Some(spec) = spec {
                if let Some(t) = self.tls(i, spec) {
                    tls.insert(addr, t);
                }
            }
        }
        (addrs, tls)
    }

    fn tls(&mut self, i: usize, raw: RawListenerTls) -> Option<TlsSpec> {
        let raw = match raw {
            RawListenerTls::Files(files) => files,
            RawListenerTls::Source(s) => {
                let source = match s.trim() {
                    "acme" => CertSource::Acme,
                    "internal" => CertSource::Internal,
                    other => {
                        let loc = self.locator.value(&format!("listen.{i}.tls"));
                        let msg = format!("{other:?} is not a certificate source: use acme, internal, or {{certificates: [{{cert: FILE, key: FILE}}]}}");
                        self.problem(loc, None, "tls", msg);
                        return None;
                    }
                };
                return Some(TlsSpec {
                    source,
                    certificates: Vec::new(),
                });
            }
        };
        if raw.certificates.is_empty() {
            let loc = self.locator.key(&format!("listen.{i}.tls.certificates"));
            self.problem(loc, None, "tls", "needs at least one certificate".into());
            return None;
        }
        let mut certificates = Vec::new();
        for (j, c) in raw.certificates.into_iter().enumerate() {
            let mut hosts = Vec::new();
            for (k, h) in c.hosts.unwrap_or_default().into_iter().enumerate() {
                let name = h.trim().trim_end_matches('.').to_ascii_lowercase();
                let valid = !name.is_empty()
                    && name
                        .trim_start_matches("*.")
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
                if valid {
                    hosts.push(name);
                } else {
                    let loc = self
                        .locator
                        .value(&format!("listen.{i}.tls.certificates.{j}.hosts.{k}"));
                    self.problem(loc, None, "hosts", format!("{h:?} is not a host name"));
                }
            }
            let at = |k: &str| {
                self.locator
                    .value(&format!("listen.{i}.tls.certificates.{j}.{k}"))
            };
            certificates.push(CertSpec {
                cert: self.resolve(c.cert.trim()),
                key: self.resolve(c.key.trim()),
                hosts,
                cert_at: at("cert"),
                key_at: at("key"),
            });
        }
        Some(TlsSpec {
            source: CertSource::Files,
            certificates,
        })
    }

    pub(super) fn trusted_proxies(&mut self, raw: Option<Vec<String>>) -> Vec<Cidr> {
        let mut out = Vec::new();
        for (i, text) in raw.unwrap_or_default().iter().enumerate() {
            match Cidr::parse(text) {
                Ok(c) => out.push(c),
                Err(msg) => {
                    let loc = self.locator.value(&format!("trusted_proxies.{i}"));
                    self.problem(loc, None, "trusted_proxies", msg);
                }
            }
        }
        out
    }

    pub(super) fn limits(&mut self, raw: Option<RawLimits>) -> Limits {
        let raw = raw.unwrap_or_default();
        let d = Limits::default();
        let size = |v: &mut Self, key: &str, raw: Option<RawSize>, default: usize| -> usize {
            match v.size_value(&format!("limits.{key}"), key, raw) {
                Some(0) => {
                    let loc = v.locator.key(&format!("limits.{key}"));
                    v.problem(loc, None, key, "must be more than 0".into());
                    default
                }
                Some(n) => usize::try_from(n).unwrap_or(usize::MAX),
                None => default,
            }
        };
        let count = |v: &mut Self, key: &str, raw: Option<u32>, default: usize| -> usize {
            match raw {
                None => default,
                Some(0) => {
                    let loc = v.locator.key(&format!("limits.{key}"));
                    v.problem(loc, None, key, "must be more than 0".into());
                    default
                }
                Some(n) => n as usize,
            }
        };
        let time = |v: &mut Self, key: &str, raw: Option<RawDuration>, default: Duration| {
            v.duration_value(&format!("limits.{key}"), None, key, raw, default, false)
        };
        Limits {
            max_uri_length: size(self, "max_uri_length", raw.max_uri_length, d.max_uri_length),
            max_header_size: size(
                self,
                "max_header_size",
                raw.max_header_size,
                d.max_header_size,
            ),
            max_header_field_size: size(
                self,
                "max_header_field_size",
                raw.max_header_field_size,
                d.max_header_field_size,
            ),
            max_headers: count(self, "max_headers", raw.max_headers, d.max_headers),
            header_timeout: time(self, "header_timeout", raw.header_timeout, d.header_timeout),
            body_timeout: time(self, "body_timeout", raw.body_timeout, d.body_timeout),
            keepalive_timeout: time(
                self,
                "keepalive_timeout",
                raw.keepalive_timeout,
                d.keepalive_timeout,
            ),
            max_connections: count(
                self,
                "max_connections",
                raw.max_connections,
                d.max_connections,
            ),
            max_response_header_size: size(
                self,
                "max_response_header_size",
                raw.max_response_header_size,
                d.max_response_header_size,
            ),
        }
    }

    /// A size at `path` (dotted), reported under `key`; None when absent or invalid.
    pub(super) fn size_value(
        &mut self,
        path: &str,
        key: &str,
        raw: Option<RawSize>,
    ) -> Option<u64> {
        match raw? {
            RawSize::Bytes(n) => Some(n),
            RawSize::Text(t) => match parse_size(&t) {
                Ok(n) => Some(n),
                Err(msg) => {
                    let loc = self.locator.key(path);
                    let app = path.strip_prefix("apps.").and_then(|p| p.split('.').next());
                    self.problem(loc, app, key, msg);
                    None
                }
            },
        }
    }

    /// A duration at `path` (dotted) for `app`'s or a top-level `key`.
    pub(super) fn duration_value(
        &mut self,
        path: &str,
        app: Option<&str>,
        key: &str,
        raw: Option<RawDuration>,
        default: Duration,
        zero_ok: bool,
    ) -> Duration {
        let parsed = match raw {
            None => return default,
            Some(RawDuration::Seconds(n)) if n.is_finite() && n >= 0.0 => super::seconds(n)
                .ok_or_else(|| {
                    format!(
                        "{n} is longer than {}h",
                        super::MAX_DURATION.as_secs() / 3600
                    )
                }),
            Some(RawDuration::Seconds(n)) => Err(format!("{n} is not a duration")),
            Some(RawDuration::Text(t)) => parse_duration(&t),
        };
        let loc = self.locator.key(path);
        match parsed {
            Ok(d) if d.is_zero() && !zero_ok => {
                self.problem(loc, app, key, "must be more than 0".into());
                default
            }
            Ok(d) => d,
            Err(msg) => {
                self.problem(loc, app, key, msg);
                default
            }
        }
    }

    /// `user:`/`group:` at `path`: a name or a numeric id.
    pub(super) fn account(
        &mut self,
        path: &str,
        app: Option<&str>,
        key: &str,
        raw: Option<String>,
    ) -> Option<String> {
        let v = raw?.trim().to_string();
        let valid = !v.is_empty()
            && v.len() <= 32
            && v.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_-.$".contains(&b));
        if !valid {
            let loc = self.locator.key(path);
            self.problem(loc, app, key, format!("{v:?} is not a user or group name"));
            return None;
        }
        Some(v)
    }
}
