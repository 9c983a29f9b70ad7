//! An app's rules: what it runs (script, module, command or upstream) and under which
//! interpreter, where it is mounted, its process counts, timeouts, limits, account and policy;
//! keys that do not apply to its kind are problems.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use super::raw::{EnvValue, RawApp};
use super::values::is_dotted_identifier;
use super::{
    parse_host_pattern, AppLocations, AppSpec, Entry, HostPattern, LifecycleSpec, Mount,
    ProcessSpec, PythonSpec, RawDuration, RequestBuffering, RouteSpec, Validator, WorkerChoice,
    DEFAULT_CALLABLE, DEFAULT_DRAIN_TIMEOUT, DEFAULT_MAX_BODY_SIZE, DEFAULT_OVERFLOW_WAIT,
    DEFAULT_PROCESSES, DEFAULT_QUEUE_LIMIT, DEFAULT_REQUEST_TIMEOUT, DEFAULT_RESPONSE_IDLE_TIMEOUT,
    DEFAULT_STARTUP_TIMEOUT, DEFAULT_THREADS, MAX_PROCESSES, MAX_THREADS, PORT_PLACEHOLDER,
    SOCKET_PLACEHOLDER,
};

/// An app's process keys, validated.
struct ProcessSettings {
    processes: u32,
    threads: u32,
    startup_timeout: Duration,
    drain_timeout: Duration,
    worker: WorkerChoice,
    user: Option<String>,
    group: Option<String>,
}

/// An app's front-side limits, validated.
struct AppLimits {
    max_body_size: Option<u64>,
    request_timeout: Duration,
    queue_limit: u32,
    overflow_wait: Duration,
    request_buffering: RequestBuffering,
    response_idle_timeout: Option<Duration>,
}

impl Validator<'_> {
    pub(super) fn app(&mut self, name: String, mut raw: RawApp) -> Option<AppSpec> {
        let before = self.problems.len();
        self.app_name(&name);
        let entry = self.entry(&name, &raw);
        if let Some(entry) = &entry {
            self.not_applicable(&name, entry, &raw);
        }
        if raw.upstream_ca.is_some() && raw.upstream.is_none() {
            let msg = "applies only to an \"https://\" upstream".to_string();
            self.app_problem(&name, "upstream_ca", msg);
        }
        let python = self.python(&name, raw.python.as_deref(), entry.as_ref());
        let hosts = self.hosts(&name, raw.hosts.take());
        let mount = self.mount(&name, raw.mount.as_deref());
        let working_dir = self.working_dir(&name, raw.working_dir.as_deref(), entry.as_ref());
        let python_path: Vec<PathBuf> = (raw.python_path.take().unwrap_or_default().iter())
            .map(|p| self.resolve(p.trim()))
            .collect();
        let env = self.env(&name, raw.env.take().unwrap_or_default());
        let run = self.process_settings(&name, &mut raw);
        let limits = self.app_limits(&name, &mut raw);
        let statics = self.statics(
            &format!("apps.{name}.static"),
            Some(&name),
            raw.statics.take(),
        );
        let error_pages = self.error_pages(&name, raw.error_pages.take());
        let access_log = raw
            .access_log
            .take()
            .map(|a| self.access_log(Some(&name), Some(a), None));
        let policy = self.process_policy(&name, policy_keys(&mut raw));
        if self.problems.len() > before {
            return None;
        }
        let entry_key = match &entry {
            Some(Entry::Module { .. }) => "module",
            Some(Entry::Command { .. }) => "command",
            Some(Entry::Upstream { .. }) => "upstream",
            _ => "script",
        };
        let locations = self.app_locations(&name, entry_key, python_path.len());
        Some(AppSpec {
            process: ProcessSpec {
                python: python?,
                entry: entry?,
                working_dir: working_dir?,
                python_path,
                env,
                processes: run.processes,
                threads: run.threads,
                worker: run.worker,
                user: run.user,
                group: run.group,
                policy,
            },
            route: RouteSpec {
                hosts,
                mount: mount?,
                max_body_size: limits.max_body_size,
                request_timeout: limits.request_timeout,
                queue_limit: limits.queue_limit,
                overflow_wait: limits.overflow_wait,
                request_buffering: limits.request_buffering,
                response_idle_timeout: limits.response_idle_timeout,
                statics,
                error_pages,
                access_log,
            },
            lifecycle: LifecycleSpec {
                startup_timeout: run.startup_timeout,
                drain_timeout: run.drain_timeout,
                reload_on_changes: raw.reload_on_changes.unwrap_or(false),
                restart_file: raw.restart_file.as_deref().map(|p| self.resolve(p.trim())),
            },
            locations,
            name,
        })
    }

    /// The app's mount: `/` when none is given.
    fn mount(&mut self, name: &str, raw: Option<&str>) -> Option<Mount> {
        match raw.map(Mount::parse) {
            None => Some(Mount::root()),
            Some(Ok(m)) => Some(m),
            Some(Err(msg)) => {
                self.app_problem(name, "mount", msg);
                None
            }
        }
    }

    fn app_name(&mut self, name: &str) {
        let valid = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        if !valid {
            let loc = self.locator.key(&format!("apps.{name}"));
            self.problem(
                loc,
                Some(name),
                "apps",
                format!("app name {name:?} may only use a-z, 0-9, '_' and '-'"),
            );
        }
    }

    /// `python:`: required for script and module apps; None inside: not given (allowed).
    fn python(
        &mut self,
        name: &str,
        raw: Option<&str>,
        entry: Option<&Entry>,
    ) -> Option<Option<PythonSpec>> {
        let needs_python = matches!(entry, Some(Entry::Script { .. } | Entry::Module { .. }));
        match raw.map(str::trim) {
            None | Some("") if needs_python => {
                self.app_problem(name, "python", "is required: an interpreter path, a command on PATH (\"python3.12\") or a virtualenv folder".into());
                None
            }
            None | Some("") => Some(None),
            Some(p) if p.contains('/') => Some(Some(PythonSpec::Path(self.resolve(p)))),
            Some(p) => Some(Some(PythonSpec::Command(p.to_string()))),
        }
    }

    /// `working_dir:`, else the script's folder, else the config file's.
    fn working_dir(
        &mut self,
        name: &str,
        raw: Option<&str>,
        entry: Option<&Entry>,
    ) -> Option<PathBuf> {
        match (raw, entry) {
            (Some(d), _) if d.trim().is_empty() => {
                self.app_problem(name, "working_dir", "must not be empty".into());
                None
            }
            (Some(d), _) => Some(self.resolve(d.trim())),
            (None, Some(Entry::Script { path, .. })) => {
                Some(path.parent().unwrap_or(self.base).to_path_buf())
            }
            (None, _) => Some(self.base.to_path_buf()),
        }
    }

    /// `env:`: names without `=` or NUL, values without NUL.
    fn env(&mut self, name: &str, raw: BTreeMap<String, EnvValue>) -> BTreeMap<String, String> {
        let mut env = BTreeMap::new();
        for (k, v) in raw {
            if k.is_empty() || k.contains(['=', '\0']) {
                self.app_problem(
                    name,
                    "env",
                    format!("{k:?} is not a valid environment variable name"),
                );
                continue;
            }
            let v = v.into_string();
            if v.contains('\0') {
                self.app_problem(name, "env", format!("the value of {k} contains a NUL byte"));
                continue;
            }
            env.insert(k, v);
        }
        env
    }

    /// How the app's processes run: counts, timeouts, worker, account.
    fn process_settings(&mut self, name: &str, raw: &mut RawApp) -> ProcessSettings {
        let processes = self.count(
            name,
            "processes",
            raw.processes,
            DEFAULT_PROCESSES,
            MAX_PROCESSES,
        );
        let threads = self.count(name, "threads", raw.threads, DEFAULT_THREADS, MAX_THREADS);
        let startup_timeout = self.duration(
            name,
            "startup_timeout",
            raw.startup_timeout.take(),
            DEFAULT_STARTUP_TIMEOUT,
            false,
        );
        let drain_timeout = self.duration(
            name,
            "drain_timeout",
            raw.drain_timeout.take(),
            DEFAULT_DRAIN_TIMEOUT,
            true,
        );
        let worker = match raw.worker.as_deref().map(str::trim) {
            None | Some("auto") => WorkerChoice::Auto,
            Some("native") => WorkerChoice::Native,
            Some("portable") => WorkerChoice::Portable,
            Some(other) => {
                self.app_problem(
                    name,
                    "worker",
                    format!("{other:?} is not a worker: use auto, native or portable"),
                );
                WorkerChoice::Auto
            }
        };
        let user = self.account(
            &format!("apps.{name}.user"),
            Some(name),
            "user",
            raw.user.take(),
        );
        let group = self.account(
            &format!("apps.{name}.group"),
            Some(name),
            "group",
            raw.group.take(),
        );
        ProcessSettings {
            processes,
            threads,
            startup_timeout,
            drain_timeout,
            worker,
            user,
            group,
        }
    }

    /// What the front enforces for the app: body size, response wait, queue.
    fn app_limits(&mut self, name: &str, raw: &mut RawApp) -> AppLimits {
        let max_body_size = match self.size_value(
            &format!("apps.{name}.max_body_size"),
            "max_body_size",
            raw.max_body_size.take(),
        ) {
            None => Some(DEFAULT_MAX_BODY_SIZE),
            // nginx's convention: 0 turns the check off.
            Some(0) => None,
            Some(n) => Some(n),
        };
        let request_timeout = self.duration(
            name,
            "request_timeout",
            raw.request_timeout.take(),
            DEFAULT_REQUEST_TIMEOUT,
            false,
        );
        let overflow_wait = self.duration(
            name,
            "overflow_wait",
            raw.overflow_wait.take(),
            DEFAULT_OVERFLOW_WAIT,
            true,
        );
        let request_buffering = match raw.request_buffering.as_deref().map(str::trim) {
            None | Some("auto") => RequestBuffering::Auto,
            Some("on") => RequestBuffering::On,
            Some("off") => RequestBuffering::Off,
            Some(other) => {
                self.app_problem(
                    name,
                    "request_buffering",
                    format!("{other:?} is not a buffering mode: use auto, on or off"),
                );
                RequestBuffering::Auto
            }
        };
        // 0 turns the cut off (a stream that may stay silent for as long as it likes).
        let response_idle_timeout = Some(self.duration(
            name,
            "response_idle_timeout",
            raw.response_idle_timeout.take(),
            DEFAULT_RESPONSE_IDLE_TIMEOUT,
            true,
        ))
        .filter(|d| !d.is_zero());
        AppLimits {
            max_body_size,
            request_timeout,
            queue_limit: raw.queue_limit.unwrap_or(DEFAULT_QUEUE_LIMIT),
            overflow_wait,
            request_buffering,
            response_idle_timeout,
        }
    }

    /// Where the app's keys are, for problems preflight finds later.
    fn app_locations(&self, name: &str, entry_key: &str, python_paths: usize) -> AppLocations {
        let at = |key: &str| self.locator.key(&format!("apps.{name}.{key}"));
        AppLocations {
            python: at("python"),
            upstream_ca: at("upstream_ca"),
            user: at("user").or_else(|| at("group")),
            worker: at("worker"),
            // (`at` falls back to the app's own position: ask for the key the app has.)
            entry: at(entry_key),
            working_dir: at("working_dir"),
            python_path: (0..python_paths)
                .map(|i| self.locator.value(&format!("apps.{name}.python_path.{i}")))
                .collect(),
        }
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
            _ => self.upstream(
                name,
                raw.upstream.as_deref().unwrap_or_default(),
                raw.upstream_ca.as_deref(),
            ),
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
                    ("restart_file", raw.restart_file.is_some()),
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
}

/// An app's process policy keys, taken from what it wrote.
fn policy_keys(raw: &mut RawApp) -> super::operating::PolicyKeys {
    super::operating::PolicyKeys {
        start: raw.start.take(),
        idle_timeout: raw.idle_timeout.take(),
        max_requests: raw.max_requests,
        max_requests_jitter: raw.max_requests_jitter,
        stuck_limit: raw.stuck_limit,
        max_memory: raw.max_memory.take(),
    }
}
