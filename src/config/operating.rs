//! The keys for running wsgimux as a service: `access_log`, `log_dir`, `admin`, `static`
//! (top level and per app), and the per-app process policy `start`, `idle_timeout`,
//! `max_requests`, `max_requests_jitter`. Text-only rules; static folders are checked by
//! `preflight`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{Location, RawDuration, Validator};

/// `access_log:` as written: `stdout`, `off`, a file path, or `{path, format}`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum RawAccessLog {
    To(String),
    Full(RawAccessLogFull),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAccessLogFull {
    path: Option<String>,
    format: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAdmin {
    listen: String,
}

/// Where access-log lines go.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum AccessLogTo {
    /// wsgimux's own log (stderr), as `access` lines. The default.
    #[default]
    MainLog,
    Stdout,
    File(PathBuf),
    Off,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AccessLogFormat {
    /// Apache/nginx "combined", plus `app=` and `rt=` (seconds).
    #[default]
    Combined,
    /// One JSON object per line.
    Json,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AccessLogSpec {
    pub to: AccessLogTo,
    pub format: AccessLogFormat,
}

/// One `static:` entry: requests under `prefix` are files under `dir`. Compared without its
/// position: a comment or a key moved above it changes nothing that is served.
#[derive(Debug, Clone, Eq)]
pub struct StaticAlias {
    /// Starts with `/`, no trailing `/`; for an app, relative to its mount.
    pub prefix: String,
    pub dir: PathBuf,
    /// Where the entry is in the file, for preflight's "folder does not exist".
    pub at: Option<Location>,
}

impl PartialEq for StaticAlias {
    fn eq(&self, other: &Self) -> bool {
        (&self.prefix, &self.dir) == (&other.prefix, &other.dir)
    }
}

/// `start:`: when an app's processes start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StartMode {
    /// With wsgimux (and again after a crash).
    #[default]
    Always,
    /// With the first request for the app, which waits up to `startup_timeout`.
    OnDemand,
}

/// A status code as a mapping key: `502:` or `"502":`.
#[derive(Debug, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(untagged)]
pub(super) enum RawStatus {
    Number(u64),
    Text(String),
}

/// An app's process policy keys as written.
pub(super) struct PolicyKeys {
    pub(super) start: Option<String>,
    pub(super) idle_timeout: Option<RawDuration>,
    pub(super) max_requests: Option<u64>,
    pub(super) max_requests_jitter: Option<u64>,
    pub(super) stuck_limit: Option<u32>,
    pub(super) max_memory: Option<super::front::RawSize>,
}

/// The smallest `max_memory` taken: a Python interpreter alone is several MiB.
const MIN_MAX_MEMORY: u64 = 16 << 20;

/// The per-app process policy keys, validated.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ProcessPolicy {
    pub start: StartMode,
    /// Stop the app's processes after this long without a request (they start again with the
    /// next one).
    pub idle_timeout: Option<Duration>,
    /// Replace a process (new one first, then the old one drains) after this many requests...
    pub max_requests: Option<u64>,
    /// ...plus a random 0..=jitter per process, so they do not all recycle at once.
    pub max_requests_jitter: u64,
    /// Replace a process (new one first) once this many of its requests passed their
    /// `request_timeout` and still hold a thread; None: all of its threads.
    pub stuck_limit: Option<u32>,
    /// Replace a process (new one first) whose resident memory, its children's included,
    /// passes this many bytes.
    pub max_memory: Option<u64>,
}

impl Validator<'_> {
    /// `access_log:` at the top level (`app` None) or of `app`.
    pub(super) fn access_log(
        &mut self,
        app: Option<&str>,
        raw: Option<RawAccessLog>,
        format: Option<String>,
    ) -> AccessLogSpec {
        let at = |key: &str| match app {
            Some(a) => format!("apps.{a}.{key}"),
            None => key.to_string(),
        };
        let (to, inner_format) = match raw {
            None => (None, None),
            Some(RawAccessLog::To(t)) => (Some(t), None),
            Some(RawAccessLog::Full(f)) => (f.path, f.format),
        };
        let to = match to.as_deref().map(str::trim) {
            None | Some("log") | Some("stderr") => AccessLogTo::MainLog,
            Some("stdout") | Some("-") => AccessLogTo::Stdout,
            Some("off") => AccessLogTo::Off,
            Some("") => {
                let loc = self.locator.key(&at("access_log"));
                self.problem(
                    loc,
                    app,
                    "access_log",
                    "must not be empty: use stdout, off or a file path".into(),
                );
                AccessLogTo::MainLog
            }
            Some(p) => AccessLogTo::File(self.resolve(p)),
        };
        let (format_key, format) = match (inner_format, format) {
            (Some(f), _) => ("access_log.format", Some(f)),
            (None, f) => ("access_log_format", f),
        };
        let format = match format.as_deref().map(str::trim) {
            None | Some("combined") => AccessLogFormat::Combined,
            Some("json") => AccessLogFormat::Json,
            Some(other) => {
                let loc = self.locator.key(&at(format_key));
                self.problem(
                    loc,
                    app,
                    format_key,
                    format!("{other:?} is not a log format: use combined or json"),
                );
                AccessLogFormat::Combined
            }
        };
        AccessLogSpec { to, format }
    }

    pub(super) fn log_dir(&mut self, raw: Option<String>) -> Option<PathBuf> {
        match raw.as_deref().map(str::trim) {
            None => None,
            Some("") => {
                let loc = self.locator.key("log_dir");
                self.problem(loc, None, "log_dir", "must not be empty".into());
                None
            }
            Some(d) => Some(self.resolve(d)),
        }
    }

    pub(super) fn admin(&mut self, raw: Option<RawAdmin>) -> Option<SocketAddr> {
        let raw = raw?;
        match raw.listen.trim().parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                let loc = self.locator.key("admin.listen");
                self.problem(
                    loc,
                    None,
                    "admin.listen",
                    format!(
                        "{:?} is not an address: use IP:port, e.g. \"127.0.0.1:9180\"",
                        raw.listen
                    ),
                );
                None
            }
        }
    }

    /// `static:` at `path` ("static" or "apps.NAME.static").
    /// `error_pages`: a page per status the front answers for the app (4xx and 5xx), each a
    /// file (read when the error happens, so an edited page needs no reload).
    pub(super) fn error_pages(
        &mut self,
        app: &str,
        raw: Option<BTreeMap<RawStatus, String>>,
    ) -> BTreeMap<u16, PathBuf> {
        let mut out = BTreeMap::new();
        for (status, file) in raw.unwrap_or_default() {
            let status = match status {
                RawStatus::Number(n) => n.to_string(),
                RawStatus::Text(t) => t,
            };
            match status.trim().parse::<u16>() {
                Ok(code) if (400..=599).contains(&code) => {
                    out.insert(code, self.resolve(file.trim()));
                }
                _ => {
                    let loc = self
                        .locator
                        .key(&format!("apps.{app}.error_pages.{status}"));
                    let msg = format!("{status:?} is not an error status (400 to 599, e.g. 502)");
                    self.problem(loc, Some(app), "error_pages", msg);
                }
            }
        }
        out
    }

    pub(super) fn statics(
        &mut self,
        path: &str,
        app: Option<&str>,
        raw: Option<BTreeMap<String, String>>,
    ) -> Vec<StaticAlias> {
        let mut out = Vec::new();
        for (prefix, dir) in raw.unwrap_or_default() {
            let at = self.locator.key(&format!("{path}.{prefix}"));
            let trimmed = prefix.trim_end_matches('/');
            let bad = if !prefix.starts_with('/') {
                Some("must start with /")
            } else if trimmed.is_empty() {
                Some("must not be / (it would hide the app); use a prefix like /static")
            } else if trimmed
                .split('/')
                .skip(1)
                .any(|s| s.is_empty() || s == "." || s == "..")
            {
                Some("must not contain empty, . or .. segments")
            } else if prefix.contains(['%', '?', '#', '\0']) {
                Some("must be a plain path (no %, ?, #)")
            } else {
                None
            };
            if let Some(why) = bad {
                self.problem(at, app, "static", format!("{prefix:?} {why}"));
                continue;
            }
            if dir.trim().is_empty() {
                self.problem(
                    at,
                    app,
                    "static",
                    format!("the folder for {prefix:?} is empty"),
                );
                continue;
            }
            out.push(StaticAlias {
                prefix: trimmed.to_string(),
                dir: self.resolve(dir.trim()),
                at: self.locator.value(&format!("{path}.{prefix}")).or(at),
            });
        }
        // Longest prefix first: the most specific alias wins.
        out.sort_by_key(|a| std::cmp::Reverse(a.prefix.len()));
        out
    }

    pub(super) fn process_policy(&mut self, app: &str, raw: PolicyKeys) -> ProcessPolicy {
        let PolicyKeys {
            start,
            idle_timeout,
            max_requests,
            max_requests_jitter,
            stuck_limit,
            max_memory,
        } = raw;
        let start = match start.as_deref().map(str::trim) {
            None | Some("always") => StartMode::Always,
            Some("on_demand") => StartMode::OnDemand,
            Some(other) => {
                self.app_problem(
                    app,
                    "start",
                    format!("{other:?} is not a start mode: use always or on_demand"),
                );
                StartMode::Always
            }
        };
        let idle = self.duration_value(
            &format!("apps.{app}.idle_timeout"),
            Some(app),
            "idle_timeout",
            idle_timeout,
            Duration::ZERO,
            true,
        );
        let max_requests = match max_requests {
            Some(0) | None => None,
            Some(n) => Some(n),
        };
        let jitter = max_requests_jitter.unwrap_or(0);
        if jitter > 0 && max_requests.is_none() {
            self.app_problem(
                app,
                "max_requests_jitter",
                "needs max_requests (the jitter is added to it)".into(),
            );
        }
        if stuck_limit == Some(0) {
            self.app_problem(
                app,
                "stuck_limit",
                "must be more than 0 (leave it out for all of a process's threads)".into(),
            );
        }
        let path = format!("apps.{app}.max_memory");
        let max_memory = match self.size_value(&path, "max_memory", max_memory) {
            Some(n) if n < MIN_MAX_MEMORY => {
                let loc = self.locator.key(&path);
                let msg = format!(
                    "{n} bytes is below the least a Python process needs; give at least 16m"
                );
                self.problem(loc, Some(app), "max_memory", msg);
                None
            }
            n => n,
        };
        ProcessPolicy {
            start,
            idle_timeout: (!idle.is_zero()).then_some(idle),
            max_requests,
            max_requests_jitter: jitter,
            stuck_limit: stuck_limit.filter(|&n| n > 0),
            max_memory,
        }
    }
}
