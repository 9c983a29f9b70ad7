//! The config file: YAML text → raw serde types → validated [`Config`].
//!
//! Owns the contract of the config keys and every rule that can be checked from the text alone.
//! Does no IO and is not async: reading the file is the caller's job, and checks that need the
//! file system or a running interpreter (does the script exist, does the Python run) live in
//! `preflight`, which reports them at the positions this module records.
//! This is the only module that calls serde_yaml.

mod front;
mod locate;
mod operating;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

pub use front::{
    parse_size, CertSpec, Cidr, Limits, TlsSpec, DEFAULT_MAX_BODY_SIZE, DEFAULT_QUEUE_LIMIT,
    DEFAULT_REQUEST_TIMEOUT,
};
pub use locate::{Location, Locator};
pub use operating::{
    AccessLogFormat, AccessLogSpec, AccessLogTo, ProcessPolicy, StartMode, StaticAlias,
};

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
pub const DEFAULT_THREADS: u32 = 8;
pub const DEFAULT_PROCESSES: u32 = 1;
pub const DEFAULT_CALLABLE: &str = "application";
/// How long a new process may take to answer on its socket before its start counts as failed.
pub const DEFAULT_STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a retired generation may take to finish its requests in flight.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
const MAX_DURATION: Duration = Duration::from_secs(24 * 3600);
const MAX_PROCESSES: u32 = 256;
const MAX_THREADS: u32 = 1024;

/// A validated config. Paths are absolute (resolved against the config file's folder).
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The config file, as given.
    pub file: PathBuf,
    pub listen: Vec<SocketAddr>,
    /// The listeners that speak TLS, by address.
    pub tls: BTreeMap<SocketAddr, TlsSpec>,
    /// Plain-HTTP requests for a host that has a certificate get a 308 to https.
    pub redirect_https: bool,
    /// Peers whose `X-Forwarded-*`, `Forwarded` and mount headers are believed.
    pub trusted_proxies: Vec<Cidr>,
    pub limits: Limits,
    /// Who wsgimux runs as after binding its listeners, when started as root.
    pub user: Option<String>,
    pub group: Option<String>,
    pub runtime_dir: Option<PathBuf>,
    pub access_log: AccessLogSpec,
    /// Each app's output goes to `<log_dir>/<app>.log` instead of wsgimux's own log.
    pub log_dir: Option<PathBuf>,
    /// The admin listener: status page and `/metrics`.
    pub admin: Option<SocketAddr>,
    /// Host-wide static folders, longest prefix first.
    pub statics: Vec<StaticAlias>,
    /// In the order the file lists them.
    pub apps: Vec<AppSpec>,
}

/// One app: what to run and where it is routed.
#[derive(Debug, Clone, PartialEq)]
pub struct AppSpec {
    pub name: String,
    /// Required for script/module apps; for a command app, the virtualenv whose `bin/` goes
    /// first on PATH; none for an upstream.
    pub python: Option<PythonSpec>,
    pub entry: Entry,
    /// Empty: any host.
    pub hosts: Vec<HostPattern>,
    pub mount: Mount,
    pub working_dir: PathBuf,
    pub python_path: Vec<PathBuf>,
    pub env: BTreeMap<String, String>,
    pub processes: u32,
    pub threads: u32,
    pub startup_timeout: Duration,
    pub drain_timeout: Duration,
    /// Restart the app (zero-downtime) when its `.py`/`.wsgi` files change.
    pub reload_on_changes: bool,
    /// Which worker serves a script/module app.
    pub worker: WorkerChoice,
    /// Who the app's processes run as (default: whoever wsgimux runs as).
    pub user: Option<String>,
    pub group: Option<String>,
    /// Larger request bodies get 413; None: no limit.
    pub max_body_size: Option<u64>,
    /// Longest wait for the app's response headers before 504.
    pub request_timeout: Duration,
    /// Requests that may wait for a free thread beyond processes × threads before 503.
    pub queue_limit: u32,
    /// Static folders under the app's mount, longest prefix first.
    pub statics: Vec<StaticAlias>,
    /// `start`, `idle_timeout`, `max_requests`, `max_requests_jitter`.
    pub policy: ProcessPolicy,
    /// Where the app's keys are in the file, for errors found later (preflight).
    pub locations: AppLocations,
}

impl AppSpec {
    /// Requests in flight at which new ones get 503. A wsgimux worker runs processes × threads
    /// at once and lets `queue_limit` more wait; a `command:` or `upstream:` server decides its
    /// own concurrency, which wsgimux does not know, so `queue_limit` alone bounds it.
    pub fn admission_cap(&self) -> usize {
        let queue = self.queue_limit as usize;
        match self.entry {
            Entry::Script { .. } | Entry::Module { .. } => {
                (self.processes as usize * self.threads as usize).saturating_add(queue)
            }
            Entry::Command { .. } | Entry::Upstream { .. } => queue,
        }
    }

    /// `host/mount` per route the app is reached by (`*/mount` for any host).
    pub fn routes(&self) -> Vec<String> {
        if self.hosts.is_empty() {
            vec![format!("*{}", self.mount)]
        } else {
            self.hosts
                .iter()
                .map(|h| format!("{h}{}", self.mount))
                .collect()
        }
    }
}

/// Positions of the keys whose values preflight checks against the machine.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AppLocations {
    pub python: Option<Location>,
    pub user: Option<Location>,
    pub worker: Option<Location>,
    pub entry: Option<Location>,
    pub working_dir: Option<Location>,
    pub python_path: Vec<Option<Location>>,
}

/// The `worker:` value. `Auto` picks the native worker where the interpreter can load it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WorkerChoice {
    #[default]
    Auto,
    Native,
    Portable,
}

impl fmt::Display for WorkerChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            WorkerChoice::Auto => "auto",
            WorkerChoice::Native => "native",
            WorkerChoice::Portable => "portable",
        })
    }
}

/// The `python:` value: a path (file or virtualenv folder) or a command looked up on PATH.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PythonSpec {
    Path(PathBuf),
    Command(String),
}

impl fmt::Display for PythonSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PythonSpec::Path(p) => write!(f, "{}", p.display()),
            PythonSpec::Command(c) => f.write_str(c),
        }
    }
}

/// What serves the app: a mod_wsgi-style script file or an importable module (loaded by a
/// wsgimux worker), the app's own server command, or a server wsgimux does not start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    Script {
        path: PathBuf,
        callable: String,
    },
    Module {
        module: String,
        callable: String,
    },
    /// Run as is, with `{socket}` or `{port}` replaced by where wsgimux expects it to listen.
    Command {
        argv: Vec<String>,
    },
    Upstream {
        address: Address,
    },
}

impl Entry {
    /// The config key that holds it.
    pub fn key(&self) -> &'static str {
        match self {
            Entry::Script { .. } => "script",
            Entry::Module { .. } => "module",
            Entry::Command { .. } => "command",
            Entry::Upstream { .. } => "upstream",
        }
    }
}

/// Where a server listens: a Unix socket or a TCP host and port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    Unix(PathBuf),
    /// A host name or IP (IPv6 without brackets) and a port; names resolve at each connect.
    Tcp {
        host: String,
        port: u16,
    },
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Unix(p) => write!(f, "unix:{}", p.display()),
            Address::Tcp { host, port } if host.contains(':') => {
                write!(f, "http://[{host}]:{port}")
            }
            Address::Tcp { host, port } => write!(f, "http://{host}:{port}"),
        }
    }
}

/// The placeholders a `command:` may use.
pub const SOCKET_PLACEHOLDER: &str = "{socket}";
pub const PORT_PLACEHOLDER: &str = "{port}";

/// A `hosts:` entry, lower-cased: an exact name or `*.suffix`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HostPattern {
    Exact(String),
    /// Holds the suffix with its leading dot: `*.example.com` → `.example.com`.
    Wildcard(String),
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostPattern::Exact(h) => f.write_str(h),
            HostPattern::Wildcard(s) => write!(f, "*{s}"),
        }
    }
}

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

/// One problem in a config file, with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub file: PathBuf,
    pub location: Option<Location>,
    pub app: Option<String>,
    pub key: Option<String>,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(l) = self.location {
            write!(f, ":{}:{}", l.line, l.column)?;
        }
        f.write_str(": ")?;
        match (&self.app, &self.key) {
            (Some(app), Some(key)) => write!(f, "app {app:?}, key {key:?}: ")?,
            (Some(app), None) => write!(f, "app {app:?}: ")?,
            (None, Some(key)) => write!(f, "key {key:?}: ")?,
            (None, None) => {}
        }
        f.write_str(&self.message)
    }
}

/// Everything wrong with a config file; never empty.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

impl From<Problem> for ConfigError {
    fn from(p: Problem) -> Self {
        ConfigError { problems: vec![p] }
    }
}

// ---- raw serde types: exactly the file's shape ----

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    listen: Option<front::RawListen>,
    redirect_https: Option<bool>,
    trusted_proxies: Option<Vec<String>>,
    limits: Option<front::RawLimits>,
    user: Option<String>,
    group: Option<String>,
    #[serde(default)]
    runtime_dir: Option<String>,
    access_log: Option<operating::RawAccessLog>,
    access_log_format: Option<String>,
    log_dir: Option<String>,
    admin: Option<operating::RawAdmin>,
    #[serde(rename = "static")]
    statics: Option<BTreeMap<String, String>>,
    #[serde(default)]
    apps: BTreeMap<String, RawApp>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApp {
    python: Option<String>,
    script: Option<String>,
    module: Option<String>,
    callable: Option<String>,
    hosts: Option<Vec<String>>,
    mount: Option<String>,
    working_dir: Option<String>,
    python_path: Option<Vec<String>>,
    env: Option<BTreeMap<String, EnvValue>>,
    processes: Option<u32>,
    threads: Option<u32>,
    startup_timeout: Option<RawDuration>,
    drain_timeout: Option<RawDuration>,
    reload_on_changes: Option<bool>,
    worker: Option<String>,
    command: Option<Vec<String>>,
    upstream: Option<String>,
    user: Option<String>,
    group: Option<String>,
    max_body_size: Option<front::RawSize>,
    request_timeout: Option<RawDuration>,
    queue_limit: Option<u32>,
    #[serde(rename = "static")]
    statics: Option<BTreeMap<String, String>>,
    start: Option<String>,
    idle_timeout: Option<RawDuration>,
    max_requests: Option<u64>,
    max_requests_jitter: Option<u64>,
}

/// A duration as written: `500ms`, `30s`, `2m`, `1h`, or a plain number of seconds.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawDuration {
    Seconds(f64),
    Text(String),
}

/// Parses a duration written `500ms`, `30s`, `2m`, `1h` or as a plain number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = (&t[..split], t[split..].trim());
    let scale = match unit {
        "ms" => 0.001,
        "" | "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        _ => {
            return Err(format!(
            "{text:?} is not a duration (e.g. \"500ms\", \"30s\", \"2m\", or seconds as a number)"
        ))
        }
    };
    match number.parse::<f64>() {
        Ok(n) if n.is_finite() && n >= 0.0 => seconds(n * scale)
            .ok_or_else(|| format!("{text:?} is longer than {}h", MAX_DURATION.as_secs() / 3600)),
        _ => Err(format!(
            "{text:?} is not a duration (e.g. \"500ms\", \"30s\", \"2m\", or seconds as a number)"
        )),
    }
}

fn seconds(n: f64) -> Option<Duration> {
    let d = Duration::try_from_secs_f64(n).ok()?;
    (d <= MAX_DURATION).then_some(d)
}

/// Environment values may be written as YAML numbers or booleans; they are passed as text.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum EnvValue {
    Text(String),
    Int(i64),
    Float(f64),
    Bool(bool),
}

impl EnvValue {
    fn into_string(self) -> String {
        match self {
            EnvValue::Text(s) => s,
            EnvValue::Int(i) => i.to_string(),
            EnvValue::Float(f) => f.to_string(),
            EnvValue::Bool(b) => b.to_string(),
        }
    }
}

/// Parses and validates config text read from `file`. Relative paths resolve against `file`'s
/// folder, which should be absolute for the result to be.
pub fn from_yaml(text: &str, file: &Path) -> Result<Config, ConfigError> {
    let raw: RawConfig = serde_yaml::from_str(text).map_err(|e| syntax_problem(file, &e))?;
    let locator = Locator::new(text);
    let base = file.parent().unwrap_or(Path::new("")).to_path_buf();
    Validator {
        file,
        base: &base,
        locator: &locator,
        problems: Vec::new(),
    }
    .validate(raw)
}

/// The `runtime_dir` a file names, read leniently (the rest of the file may be invalid):
/// `wsgimux reload` must find the server even when the file it reports on is broken.
pub fn runtime_dir_hint(text: &str, file: &Path) -> Option<PathBuf> {
    let value: serde_yaml::Value = serde_yaml::from_str(text).ok()?;
    let dir = value.get("runtime_dir")?.as_str()?.trim();
    if dir.is_empty() {
        return None;
    }
    Some(file.parent().unwrap_or(Path::new("")).join(dir))
}

fn syntax_problem(file: &Path, e: &serde_yaml::Error) -> Problem {
    let mut message = e.to_string();
    // serde_yaml appends " at line L column C"; the location is reported in front instead.
    if let Some(i) = message.rfind(" at line ") {
        message.truncate(i);
    }
    // serde_yaml prefixes the path of the offending node ("apps.web: unknown field …").
    let (app, key, message) = split_serde_path(&message);
    let message = if message.is_empty() && e.location().is_none() {
        "the file is empty or not a YAML mapping".to_string()
    } else {
        message
    };
    Problem {
        file: file.to_path_buf(),
        location: e.location().map(|l| Location {
            line: l.line(),
            column: l.column(),
        }),
        app,
        key,
        message,
    }
}

/// Splits serde_yaml's "apps.web.threads: invalid type…" into app, key and message.
fn split_serde_path(message: &str) -> (Option<String>, Option<String>, String) {
    let Some((path, rest)) = message.split_once(": ") else {
        return (None, None, message.to_string());
    };
    if path.contains(' ') {
        return (None, None, message.to_string());
    }
    let mut parts = path.splitn(3, '.');
    match (parts.next(), parts.next(), parts.next()) {
        (Some("apps"), Some(app), key) => (
            Some(app.to_string()),
            key.map(str::to_string),
            rest.to_string(),
        ),
        (Some(top), None, None) => (None, Some(top.to_string()), rest.to_string()),
        _ => (None, Some(path.to_string()), rest.to_string()),
    }
}

struct Validator<'a> {
    file: &'a Path,
    base: &'a Path,
    locator: &'a Locator,
    problems: Vec<Problem>,
}

impl Validator<'_> {
    fn problem(
        &mut self,
        location: Option<Location>,
        app: Option<&str>,
        key: &str,
        message: String,
    ) {
        self.problems.push(Problem {
            file: self.file.to_path_buf(),
            location,
            app: app.map(str::to_string),
            key: Some(key.to_string()),
            message,
        });
    }

    fn app_problem(&mut self, app: &str, key: &str, message: String) {
        let loc = self.locator.key(&format!("apps.{app}.{key}"));
        self.problem(loc, Some(app), key, message);
    }

    fn resolve(&self, p: &str) -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base.join(p)
        }
    }

    fn validate(mut self, raw: RawConfig) -> Result<Config, ConfigError> {
        let (listen, tls) = self.listeners(raw.listen);
        let trusted_proxies = self.trusted_proxies(raw.trusted_proxies);
        let limits = self.limits(raw.limits);
        let user = self.account("user", None, "user", raw.user);
        let group = self.account("group", None, "group", raw.group);
        let redirect_https = raw.redirect_https.unwrap_or(false);
        if redirect_https && tls.is_empty() {
            let loc = self.locator.key("redirect_https");
            self.problem(
                loc,
                None,
                "redirect_https",
                "needs a listener with tls to redirect to".into(),
            );
        }
        let runtime_dir = match raw.runtime_dir {
            Some(d) if d.trim().is_empty() => {
                let loc = self.locator.key("runtime_dir");
                self.problem(loc, None, "runtime_dir", "must not be empty".into());
                None
            }
            d => d.map(|d| self.resolve(&d)),
        };
        let access_log = self.access_log(raw.access_log, raw.access_log_format);
        let log_dir = self.log_dir(raw.log_dir);
        let admin = self.admin(raw.admin);
        let statics = self.statics("static", None, raw.statics);
        if raw.apps.is_empty() {
            let loc = self.locator.key("apps");
            self.problem(loc, None, "apps", "no apps are configured".into());
        }
        let mut apps: Vec<AppSpec> = raw
            .apps
            .into_iter()
            .filter_map(|(name, app)| self.app(name, app))
            .collect();
        // serde's map lost the file order; the locator still knows it.
        apps.sort_by_key(|a| {
            self.locator
                .key(&format!("apps.{}", a.name))
                .map(|l| (l.line, l.column))
        });
        self.claims(&apps);
        if self.problems.is_empty() {
            Ok(Config {
                file: self.file.to_path_buf(),
                listen,
                tls,
                redirect_https,
                trusted_proxies,
                limits,
                user,
                group,
                runtime_dir,
                access_log,
                log_dir,
                admin,
                statics,
                apps,
            })
        } else {
            Err(ConfigError {
                problems: self.problems,
            })
        }
    }

    fn app(&mut self, name: String, raw: RawApp) -> Option<AppSpec> {
        let before = self.problems.len();
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
        {
            let loc = self.locator.key(&format!("apps.{name}"));
            self.problem(
                loc,
                Some(&name),
                "apps",
                format!("app name {name:?} may only use a-z, 0-9, '_' and '-'"),
            );
        }
        let entry = self.entry(&name, &raw);
        if let Some(entry) = &entry {
            self.not_applicable(&name, entry, &raw);
        }
        let needs_python = matches!(entry, Some(Entry::Script { .. } | Entry::Module { .. }));
        let python = match raw.python.as_deref().map(str::trim) {
            None | Some("") if needs_python => {
                self.app_problem(&name, "python", "is required: an interpreter path, a command on PATH (\"python3.12\") or a virtualenv folder".into());
                None
            }
            None | Some("") => Some(None),
            Some(p) if p.contains('/') => Some(Some(PythonSpec::Path(self.resolve(p)))),
            Some(p) => Some(Some(PythonSpec::Command(p.to_string()))),
        };
        let hosts = self.hosts(&name, raw.hosts);
        let mount = match raw.mount.as_deref().map(Mount::parse) {
            None => Some(Mount::root()),
            Some(Ok(m)) => Some(m),
            Some(Err(msg)) => {
                self.app_problem(&name, "mount", msg);
                None
            }
        };
        let working_dir = match (&raw.working_dir, &entry) {
            (Some(d), _) if d.trim().is_empty() => {
                self.app_problem(&name, "working_dir", "must not be empty".into());
                None
            }
            (Some(d), _) => Some(self.resolve(d.trim())),
            (None, Some(Entry::Script { path, .. })) => {
                Some(path.parent().unwrap_or(self.base).to_path_buf())
            }
            (None, _) => Some(self.base.to_path_buf()),
        };
        let python_path: Vec<PathBuf> = raw
            .python_path
            .unwrap_or_default()
            .iter()
            .map(|p| self.resolve(p.trim()))
            .collect();
        let mut env = BTreeMap::new();
        for (k, v) in raw.env.unwrap_or_default() {
            if k.is_empty() || k.contains(['=', '\0']) {
                self.app_problem(
                    &name,
                    "env",
                    format!("{k:?} is not a valid environment variable name"),
                );
                continue;
            }
            let v = v.into_string();
            if v.contains('\0') {
                self.app_problem(
                    &name,
                    "env",
                    format!("the value of {k} contains a NUL byte"),
                );
                continue;
            }
            env.insert(k, v);
        }
        let processes = self.count(
            &name,
            "processes",
            raw.processes,
            DEFAULT_PROCESSES,
            MAX_PROCESSES,
        );
        let threads = self.count(&name, "threads", raw.threads, DEFAULT_THREADS, MAX_THREADS);
        let startup_timeout = self.duration(
            &name,
            "startup_timeout",
            raw.startup_timeout,
            DEFAULT_STARTUP_TIMEOUT,
            false,
        );
        let drain_timeout = self.duration(
            &name,
            "drain_timeout",
            raw.drain_timeout,
            DEFAULT_DRAIN_TIMEOUT,
            true,
        );
        let worker = match raw.worker.as_deref().map(str::trim) {
            None | Some("auto") => WorkerChoice::Auto,
            Some("native") => WorkerChoice::Native,
            Some("portable") => WorkerChoice::Portable,
            Some(other) => {
                self.app_problem(
                    &name,
                    "worker",
                    format!("{other:?} is not a worker: use auto, native or portable"),
                );
                WorkerChoice::Auto
            }
        };
        let user = self.account(
            &format!("apps.{name}.user"),
            Some(&name),
            "user",
            raw.user.clone(),
        );
        let group = self.account(
            &format!("apps.{name}.group"),
            Some(&name),
            "group",
            raw.group.clone(),
        );
        let max_body_size = match self.size_value(
            &format!("apps.{name}.max_body_size"),
            "max_body_size",
            raw.max_body_size,
        ) {
            None => Some(DEFAULT_MAX_BODY_SIZE),
            // nginx's convention: 0 turns the check off.
            Some(0) => None,
            Some(n) => Some(n),
        };
        let request_timeout = self.duration(
            &name,
            "request_timeout",
            raw.request_timeout,
            DEFAULT_REQUEST_TIMEOUT,
            false,
        );
        let queue_limit = raw.queue_limit.unwrap_or(DEFAULT_QUEUE_LIMIT);
        let statics = self.statics(&format!("apps.{name}.static"), Some(&name), raw.statics);
        let policy = self.process_policy(
            &name,
            raw.start,
            raw.idle_timeout,
            raw.max_requests,
            raw.max_requests_jitter,
        );
        if self.problems.len() > before {
            return None;
        }
        let at = |key: &str| self.locator.key(&format!("apps.{name}.{key}"));
        let locations = AppLocations {
            python: at("python"),
            user: at("user").or_else(|| at("group")),
            worker: at("worker"),
            entry: at("script")
                .or_else(|| at("module"))
                .or_else(|| at("command"))
                .or_else(|| at("upstream")),
            working_dir: at("working_dir"),
            python_path: (0..python_path.len())
                .map(|i| self.locator.value(&format!("apps.{name}.python_path.{i}")))
                .collect(),
        };
        Some(AppSpec {
            name,
            python: python?,
            entry: entry?,
            hosts,
            mount: mount?,
            working_dir: working_dir?,
            python_path,
            env,
            processes,
            threads,
            startup_timeout,
            drain_timeout,
            reload_on_changes: raw.reload_on_changes.unwrap_or(false),
            worker,
            user,
            group,
            max_body_size,
            request_timeout,
            queue_limit,
            statics,
            policy,
            locations,
        })
    }

    /// The one of script, module, command and upstream the app gives.
    fn entry(&mut self, name: &str, raw: &RawApp) -> Option<Entry> {
        let given: Vec<&str> = [
            ("script", raw.script.is_some()),
            ("module", raw.module.is_some()),
            ("command", raw.command.is_some()),
            ("upstream", raw.upstream.is_some()),
        ]
        .iter()
        .filter_map(|&(k, set)| set.then_some(k))
        .collect();
        match given.as_slice() {
            [] => {
                let loc = self.locator.key(&format!("apps.{name}"));
                self.problem(
                    loc,
                    Some(name),
                    "script",
                    "needs a script (a .wsgi/.py file defining `application`), a module (\"pkg.mod:callable\"), a command (its own server) or an upstream (a server's address)".into(),
                );
                None
            }
            [first, second, ..] => {
                self.app_problem(
                    name,
                    second,
                    format!("give only one of script, module, command and upstream, not both {first} and {second}"),
                );
                None
            }
            ["script"] => {
                let s = raw.script.as_deref().unwrap_or_default().trim();
                if s.is_empty() {
                    self.app_problem(name, "script", "must not be empty".into());
                    return None;
                }
                let callable = self.callable(name, raw.callable.as_deref(), None)?;
                Some(Entry::Script {
                    path: self.resolve(s),
                    callable,
                })
            }
            ["module"] => {
                let m = raw.module.clone().unwrap_or_default();
                self.module(name, &m, raw.callable.as_deref())
            }
            ["command"] => self.command(name, raw.command.as_deref().unwrap_or_default()),
            _ => self.upstream(name, raw.upstream.as_deref().unwrap_or_default()),
        }
    }

    fn command(&mut self, name: &str, argv: &[String]) -> Option<Entry> {
        if argv.first().is_none_or(|p| p.trim().is_empty()) {
            self.app_problem(
                name,
                "command",
                "must be a list starting with the program, e.g. [\"gunicorn\", \"--bind\", \"unix:{socket}\", \"app:application\"]".into(),
            );
            return None;
        }
        let uses = |p: &str| argv.iter().any(|a| a.contains(p));
        match (uses(SOCKET_PLACEHOLDER), uses(PORT_PLACEHOLDER)) {
            (true, true) => {
                self.app_problem(
                    name,
                    "command",
                    "uses both {socket} and {port}; give one, where the server listens".into(),
                );
                None
            }
            (false, false) => {
                self.app_problem(
                    name,
                    "command",
                    "must say where the server listens with {socket} (a Unix socket path wsgimux chooses) or {port} (a free loopback port)".into(),
                );
                None
            }
            _ => Some(Entry::Command {
                argv: argv.to_vec(),
            }),
        }
    }

    fn upstream(&mut self, name: &str, text: &str) -> Option<Entry> {
        let text = text.trim();
        let bad = |why: &str| {
            format!("{text:?} {why}: use \"http://host:port\" or \"unix:/path/to.sock\"")
        };
        if let Some(path) = text.strip_prefix("unix:") {
            let path = path.trim_start_matches("//");
            if path.is_empty() {
                self.app_problem(name, "upstream", bad("has no socket path"));
                return None;
            }
            return Some(Entry::Upstream {
                address: Address::Unix(self.resolve(path)),
            });
        }
        let Some(rest) = text.strip_prefix("http://") else {
            let why = if text.starts_with("https://") {
                "is https, which wsgimux does not speak to upstreams yet"
            } else {
                "is not an upstream address"
            };
            self.app_problem(name, "upstream", bad(why));
            return None;
        };
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if authority.contains('/') {
            self.app_problem(
                name,
                "upstream",
                bad("has a path; the app is mounted with `mount:`, not in the address"),
            );
            return None;
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            match v6.split_once(']') {
                Some((h, p)) => (h, p.strip_prefix(':')),
                None => ("", None),
            }
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        let port = match port {
            None => Some(80),
            Some(p) => p.parse::<u16>().ok().filter(|&p| p != 0),
        };
        match port {
            Some(port) if !host.is_empty() => Some(Entry::Upstream {
                address: Address::Tcp {
                    host: host.to_string(),
                    port,
                },
            }),
            _ => {
                self.app_problem(name, "upstream", bad("has no valid host and port"));
                None
            }
        }
    }

    /// Keys that mean nothing for a command or upstream app are errors, not silently ignored.
    fn not_applicable(&mut self, name: &str, entry: &Entry, raw: &RawApp) {
        let (what, keys): (&str, Vec<(&str, bool)>) = match entry {
            Entry::Script { .. } | Entry::Module { .. } => return,
            Entry::Command { .. } => (
                "a command app (its own server decides)",
                vec![
                    ("callable", raw.callable.is_some()),
                    ("worker", raw.worker.is_some()),
                    ("threads", raw.threads.is_some()),
                    ("python_path", raw.python_path.is_some()),
                ],
            ),
            Entry::Upstream { .. } => (
                "an upstream app (wsgimux does not start it)",
                vec![
                    ("python", raw.python.is_some()),
                    ("callable", raw.callable.is_some()),
                    ("worker", raw.worker.is_some()),
                    ("processes", raw.processes.is_some()),
                    ("threads", raw.threads.is_some()),
                    ("working_dir", raw.working_dir.is_some()),
                    ("python_path", raw.python_path.is_some()),
                    ("env", raw.env.is_some()),
                    ("reload_on_changes", raw.reload_on_changes.is_some()),
                ],
            ),
        };
        for (key, given) in keys {
            if given {
                self.app_problem(name, key, format!("does not apply to {what}"));
            }
        }
    }

    fn callable(
        &mut self,
        app: &str,
        given: Option<&str>,
        from_module: Option<&str>,
    ) -> Option<String> {
        let c = match (given, from_module) {
            (Some(_), Some(_)) => {
                self.app_problem(
                    app,
                    "callable",
                    "the module already names its callable after ':'; drop one of them".into(),
                );
                return None;
            }
            (Some(c), None) | (None, Some(c)) => c.trim(),
            (None, None) => DEFAULT_CALLABLE,
        };
        if !is_dotted_identifier(c) {
            self.app_problem(app, "callable", format!("{c:?} is not a Python name"));
            return None;
        }
        Some(c.to_string())
    }

    fn module(&mut self, app: &str, spec: &str, callable: Option<&str>) -> Option<Entry> {
        let (module, attr) = match spec.trim().split_once(':') {
            Some((m, a)) => (m.trim(), Some(a.trim())),
            None => (spec.trim(), None),
        };
        if !is_dotted_identifier(module) {
            self.app_problem(
                app,
                "module",
                format!("{spec:?} is not a module path like \"pkg.mod\" or \"pkg.mod:callable\""),
            );
            return None;
        }
        let callable = self.callable(app, callable, attr)?;
        Some(Entry::Module {
            module: module.to_string(),
            callable,
        })
    }

    fn hosts(&mut self, app: &str, raw: Option<Vec<String>>) -> Vec<HostPattern> {
        let Some(list) = raw else { return Vec::new() };
        if list.is_empty() {
            self.app_problem(
                app,
                "hosts",
                "is empty; leave the key out to match any host".into(),
            );
        }
        let mut out = Vec::new();
        for (i, h) in list.iter().enumerate() {
            match parse_host_pattern(h) {
                Ok(p) if out.contains(&p) => {
                    let loc = self.locator.value(&format!("apps.{app}.hosts.{i}"));
                    self.problem(loc, Some(app), "hosts", format!("{h:?} is listed twice"));
                }
                Ok(p) => out.push(p),
                Err(msg) => {
                    let loc = self.locator.value(&format!("apps.{app}.hosts.{i}"));
                    self.problem(loc, Some(app), "hosts", msg);
                }
            }
        }
        out
    }

    fn count(&mut self, app: &str, key: &str, raw: Option<u32>, default: u32, max: u32) -> u32 {
        match raw {
            None => default,
            Some(n) if (1..=max).contains(&n) => n,
            Some(n) => {
                self.app_problem(app, key, format!("{n} is out of range 1..={max}"));
                default
            }
        }
    }

    fn duration(
        &mut self,
        app: &str,
        key: &str,
        raw: Option<RawDuration>,
        default: Duration,
        zero_ok: bool,
    ) -> Duration {
        let path = format!("apps.{app}.{key}");
        self.duration_value(&path, Some(app), key, raw, default, zero_ok)
    }

    /// Two apps may not claim the same host (or "any host") at the same mount.
    fn claims(&mut self, apps: &[AppSpec]) {
        let mut seen: HashMap<(Option<&HostPattern>, &Mount), &str> = HashMap::new();
        for app in apps {
            let hosts: Vec<Option<&HostPattern>> = if app.hosts.is_empty() {
                vec![None]
            } else {
                app.hosts.iter().map(Some).collect()
            };
            for h in hosts {
                if let Some(other) = seen.insert((h, &app.mount), &app.name) {
                    let host = h.map_or("any host".to_string(), |h| format!("host {h}"));
                    let key = if app.hosts.is_empty() {
                        "mount"
                    } else {
                        "hosts"
                    };
                    self.app_problem(
                        &app.name,
                        key,
                        format!(
                            "{host} at mount {} is already served by app {other:?}",
                            app.mount
                        ),
                    );
                }
            }
        }
    }
}

fn is_dotted_identifier(s: &str) -> bool {
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

#[cfg(test)]
mod tests;
