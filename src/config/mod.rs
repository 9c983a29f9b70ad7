//! The config file: YAML text → raw serde types → validated [`Config`].
//!
//! Owns the contract of the config keys and every rule that can be checked from the text alone.
//! Does no IO and is not async: reading the file is the caller's job, and checks that need the
//! file system or a running interpreter (does the script exist, does the Python run) live in
//! `preflight`, which reports them at the positions this module records.
//! This is the only module that calls serde_yaml.
//!
//! Rooms: `raw` (the file's shape, for serde), `validate` (the top-level rules and the
//! problems' collection), `apps` (an app's rules), `front` and `operating` (their keys),
//! `values` (the value grammars: durations, mounts, host patterns), `problem` (what a mistake
//! says and where), `locate` (positions of keys), `diff` (what a reload changes).

mod acme;
mod apps;
pub mod diff;
mod front;
mod locate;
mod operating;
mod problem;
mod raw;
mod shape;
mod upstream;
mod validate;
mod values;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use acme::{acme_names, AcmeSpec, Challenge, SkippedName, DEFAULT_DIRECTORY};
pub use front::{
    parse_size, CertSource, CertSpec, Cidr, Limits, TlsSpec, DEFAULT_MAX_BODY_SIZE,
    DEFAULT_OVERFLOW_WAIT, DEFAULT_QUEUE_LIMIT, DEFAULT_REQUEST_TIMEOUT,
    DEFAULT_RESPONSE_IDLE_TIMEOUT,
};
pub use locate::{Location, Locator};
pub use operating::{
    AccessLogFormat, AccessLogSpec, AccessLogTo, ProcessPolicy, StartMode, StaticAlias,
};
pub use problem::{ConfigError, Problem};
pub use values::{is_under, parse_duration, parse_host_pattern, Mount};

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

// What the rooms share among themselves (private to `config`).
use problem::syntax_problem;
use raw::{RawConfig, RawDuration};
use validate::Validator;
use values::seconds;

/// A validated config. Paths are absolute (resolved against the config file's folder).
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The config file, as given.
    pub file: PathBuf,
    pub listen: Vec<SocketAddr>,
    /// The listeners that speak TLS, by address.
    pub tls: BTreeMap<SocketAddr, TlsSpec>,
    /// Where `tls: acme` certificates come from and `tls: internal`'s CA is kept.
    pub acme: AcmeSpec,
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
    /// wsgimux's own log: text lines, or one JSON object per line (read at start).
    pub log_format: LogFormat,
    /// The admin listener: status page and `/metrics`.
    pub admin: Option<SocketAddr>,
    /// Host-wide static folders, longest prefix first.
    pub statics: Vec<StaticAlias>,
    /// In the order the file lists them.
    pub apps: Vec<AppSpec>,
    /// Where `runtime_dir` is in the file, for the reload-time rule that it cannot change.
    pub runtime_dir_location: Option<Location>,
}

/// One app: what to run and where it is routed.
#[derive(Debug, Clone, PartialEq)]
pub struct AppSpec {
    pub name: String,
    /// How its processes run: a change starts a new generation.
    pub process: ProcessSpec,
    /// How requests reach it and what the front enforces: a change takes a new route, the
    /// processes stay.
    pub route: RouteSpec,
    /// When its processes start, retire and reload: a change applies from then on, the
    /// processes stay.
    pub lifecycle: LifecycleSpec,
    /// Where the app's keys are in the file, for errors found later (preflight).
    pub locations: AppLocations,
}

/// The keys that decide how an app's processes run (`supervisor` reads them).
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessSpec {
    /// Required for script/module apps; for a command app, the virtualenv whose `bin/` goes
    /// first on PATH; none for an upstream.
    pub python: Option<PythonSpec>,
    pub entry: Entry,
    pub working_dir: PathBuf,
    pub python_path: Vec<PathBuf>,
    pub env: BTreeMap<String, String>,
    pub processes: u32,
    pub threads: u32,
    /// Which worker serves a script/module app.
    pub worker: WorkerChoice,
    /// Who the app's processes run as (default: whoever wsgimux runs as).
    pub user: Option<String>,
    pub group: Option<String>,
    /// `start`, `idle_timeout`, `max_requests`, `max_requests_jitter`, `stuck_limit`.
    pub policy: ProcessPolicy,
}

/// The keys that decide how requests reach an app (`proxy` reads them from its route).
#[derive(Debug, Clone, PartialEq)]
pub struct RouteSpec {
    /// Empty: any host.
    pub hosts: Vec<HostPattern>,
    pub mount: Mount,
    /// Larger request bodies get 413; None: no limit.
    pub max_body_size: Option<u64>,
    /// Longest wait for the app's response headers before 504.
    pub request_timeout: Duration,
    /// Requests that may wait for a free thread beyond processes × threads before 503.
    pub queue_limit: u32,
    /// How long a request beyond the queue waits for a place before 503 (zero: 503 at once).
    pub overflow_wait: Duration,
    pub request_buffering: RequestBuffering,
    /// Longest silence within a response body before the front gives up on it; None: none.
    pub response_idle_timeout: Option<Duration>,
    /// Static folders under the app's mount, longest prefix first.
    pub statics: Vec<StaticAlias>,
    /// The app's own pages for the errors the front answers for it (`error_pages`), by status.
    pub error_pages: BTreeMap<u16, PathBuf>,
    /// The app's own access log, instead of the top-level one for its requests; None: that.
    pub access_log: Option<AccessLogSpec>,
}

/// The keys read when processes start, retire or reload (`reload`, `supervisor`'s waits).
#[derive(Debug, Clone, PartialEq)]
pub struct LifecycleSpec {
    pub startup_timeout: Duration,
    pub drain_timeout: Duration,
    /// Restart the app (zero-downtime) when its `.py`/`.wsgi` files change.
    pub reload_on_changes: bool,
    /// Restart the app (zero-downtime) when this file is touched (Passenger's
    /// `tmp/restart.txt`, mod_wsgi's touched script).
    pub restart_file: Option<PathBuf>,
}

impl AppSpec {
    /// Requests in flight at which new ones get 503. A wsgimux worker runs processes × threads
    /// at once and lets `queue_limit` more wait; a `command:` or `upstream:` server decides its
    /// own concurrency, which wsgimux does not know, so `queue_limit` alone bounds it.
    pub fn admission_cap(&self) -> usize {
        let queue = self.route.queue_limit as usize;
        let p = &self.process;
        match p.entry {
            Entry::Script { .. } | Entry::Module { .. } => {
                (p.processes as usize * p.threads as usize).saturating_add(queue)
            }
            Entry::Command { .. } | Entry::Upstream { .. } => queue,
        }
    }

    /// `host/mount` per route the app is reached by (`*/mount` for any host).
    pub fn routes(&self) -> Vec<String> {
        let r = &self.route;
        if r.hosts.is_empty() {
            vec![format!("*{}", r.mount)]
        } else {
            r.hosts.iter().map(|h| format!("{h}{}", r.mount)).collect()
        }
    }
}

/// Positions of the keys whose values preflight checks against the machine.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AppLocations {
    pub python: Option<Location>,
    pub upstream_ca: Option<Location>,
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

/// The `log_format:` value: how wsgimux's own log is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// `log_format` as the file says, read leniently (the rest of the file may be invalid): the
/// log is set up before the config is checked, so that the check's own messages use it.
pub fn log_format_hint(text: &str) -> LogFormat {
    let value: Option<serde_yaml::Value> = serde_yaml::from_str(text).ok();
    match value.as_ref().and_then(|v| v.get("log_format")?.as_str()) {
        Some(f) if f.trim() == "json" => LogFormat::Json,
        _ => LogFormat::Text,
    }
}

/// The `request_buffering:` value: which request bodies the front reads whole (into a
/// temporary file past the first 64 KiB) before the app sees the request, nginx-style.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RequestBuffering {
    /// Bodies of unknown length (chunked, HTTP/2 without content-length): most WSGI apps read
    /// `CONTENT_LENGTH` bytes and would see none of them.
    #[default]
    Auto,
    /// Every body: a slow upload holds a front connection, never an app thread.
    On,
    /// None: bodies of unknown length stream (apps that honour `wsgi.input_terminated`).
    Off,
}

impl fmt::Display for RequestBuffering {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RequestBuffering::Auto => "auto",
            RequestBuffering::On => "on",
            RequestBuffering::Off => "off",
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
    /// `https://`: TCP, then TLS with the host as SNI, verified against the system's roots or,
    /// when given, only the CA certificates in `ca_file` (`upstream_ca`).
    Tls {
        host: String,
        port: u16,
        ca_file: Option<PathBuf>,
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
            Address::Tls { host, port, .. } if host.contains(':') => {
                write!(f, "https://[{host}]:{port}")
            }
            Address::Tls { host, port, .. } => write!(f, "https://{host}:{port}"),
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

impl HostPattern {
    /// Whether a normalized host (no port) is this pattern's.
    pub fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Exact(e) => e == host,
            HostPattern::Wildcard(suffix) => under_suffix(host, suffix),
        }
    }
}

/// Whether `host` is a name under a wildcard's `suffix` (`.example.com`), not the suffix itself.
pub fn under_suffix(host: &str, suffix: &str) -> bool {
    host.len() > suffix.len() && host.ends_with(suffix)
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostPattern::Exact(h) => f.write_str(h),
            HostPattern::Wildcard(s) => write!(f, "*{s}"),
        }
    }
}

/// Parses and validates config text read from `file`. Relative paths resolve against `file`'s
/// folder, which should be absolute for the result to be.
pub fn from_yaml(text: &str, file: &Path) -> Result<Config, ConfigError> {
    match from_yaml_partial(text, file)? {
        (config, problems) if problems.is_empty() => Ok(config),
        (_, problems) => Err(ConfigError { problems }),
    }
}

/// Every problem of config text, with the config of what is sound in it: the file's other
/// keys, and every app without a problem of its own — so that the checks that need the
/// machine (interpreters, folders, imports) still run for those apps and a file's mistakes are
/// all found in one run. Err only when there is nothing to read: a YAML syntax error, which is
/// then the one problem there is to report.
pub fn from_yaml_partial(text: &str, file: &Path) -> Result<(Config, Vec<Problem>), ConfigError> {
    let value: serde_yaml::Value =
        serde_yaml::from_str(text).map_err(|e| syntax_problem(file, &e))?;
    let locator = Locator::new(text);
    let (raw, mut problems) = shape::read(value, file, &locator);
    let base = file.parent().unwrap_or(Path::new("")).to_path_buf();
    let (mut config, rules) = Validator {
        file,
        base: &base,
        locator: &locator,
        problems: Vec::new(),
    }
    .validate(raw);
    // A key left out for its shape would also be reported as missing: once is enough.
    let reported: Vec<(Option<String>, Option<String>)> = problems
        .iter()
        .map(|p| (p.app.clone(), p.key.clone()))
        .collect();
    problems.extend(
        rules
            .into_iter()
            .filter(|p| !reported.contains(&(p.app.clone(), p.key.clone()))),
    );
    problems.sort_by_key(|p| p.location.map(|l| (l.line, l.column)));
    config.apps.retain(|a| {
        !problems
            .iter()
            .any(|p| p.app.as_deref() == Some(a.name.as_str()))
    });
    Ok((config, problems))
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

#[cfg(test)]
mod policy_tests;
#[cfg(test)]
mod tests;
