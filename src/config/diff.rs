//! The config diff: what a reload must do to turn the running config into a new one, app by
//! app — start, stop, restart with a new generation, or only re-route.
//!
//! Pure and IO-free, like `config` and `routes`: `reload` carries the result out. Every key of
//! an app is classified here, in one place, as a process setting (a restart), a route, or a
//! setting wsgimux applies itself; the classification is exhaustive by construction, so a new
//! key cannot be forgotten.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;

use super::{AppSpec, Config, LifecycleSpec, Problem, ProcessPolicy, ProcessSpec, RouteSpec};

/// What a reload changes.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigDiff {
    pub listen_added: Vec<SocketAddr>,
    pub listen_removed: Vec<SocketAddr>,
    pub runtime_dir_changed: bool,
    /// TLS certificates, redirect, trusted proxies, limits, host-wide static folders or the
    /// access log changed: the front takes the new settings for new connections and requests.
    pub front_changed: bool,
    /// Top-level keys that changed and that only a restart of wsgimux applies (its own
    /// `user`/`group`, `admin.listen`, `log_dir`, `log_format`): the effective config keeps
    /// their running values, and every reload says they wait for a restart.
    pub restart_only: Vec<&'static str>,
    /// The new config's apps in file order, then the removed ones.
    pub apps: Vec<AppChange>,
}

/// What happens to one app.
#[derive(Debug, Clone, PartialEq)]
pub enum AppChange {
    /// New: start it, route it once ready.
    Added(AppSpec),
    /// Gone: unroute it, drain it, stop it.
    Removed(String),
    /// A process setting changed (`keys`): start a new generation, switch to it, drain the old.
    Restart {
        spec: AppSpec,
        keys: Vec<&'static str>,
    },
    /// Only routes or settings wsgimux applies itself changed (`keys`): the processes stay.
    Update {
        spec: AppSpec,
        keys: Vec<&'static str>,
        reroute: bool,
    },
    Unchanged(AppSpec),
}

impl AppChange {
    pub fn name(&self) -> &str {
        match self {
            AppChange::Added(s)
            | AppChange::Restart { spec: s, .. }
            | AppChange::Update { spec: s, .. }
            | AppChange::Unchanged(s) => &s.name,
            AppChange::Removed(name) => name,
        }
    }

    /// The app's spec after the change; None when it is removed.
    pub fn spec(&self) -> Option<&AppSpec> {
        match self {
            AppChange::Added(s)
            | AppChange::Restart { spec: s, .. }
            | AppChange::Update { spec: s, .. }
            | AppChange::Unchanged(s) => Some(s),
            AppChange::Removed(_) => None,
        }
    }
}

impl ConfigDiff {
    /// True when applying it would change nothing that runs or routes (restart-only keys
    /// change nothing until wsgimux restarts).
    pub fn is_empty(&self) -> bool {
        self.listen_added.is_empty()
            && self.listen_removed.is_empty()
            && !self.runtime_dir_changed
            && !self.front_changed
            && self
                .apps
                .iter()
                .all(|c| matches!(c, AppChange::Unchanged(_)))
    }

    /// The apps after applying the diff to `old`: the model `reload` carries out with processes.
    /// Apps `old` lacks that the diff expects are left out, so a diff applied to the wrong state
    /// shows up as a mismatch rather than a panic.
    pub fn apply(&self, old: &[AppSpec]) -> Vec<AppSpec> {
        let old: HashMap<&str, &AppSpec> = old.iter().map(|a| (a.name.as_str(), a)).collect();
        self.apps
            .iter()
            .filter_map(|c| match c {
                AppChange::Added(spec) => Some(spec.clone()),
                AppChange::Removed(_) => None,
                AppChange::Restart { spec, .. }
                | AppChange::Update { spec, .. }
                | AppChange::Unchanged(spec) => {
                    old.contains_key(spec.name.as_str()).then(|| spec.clone())
                }
            })
            .collect()
    }

    /// What a reload of this diff would do, in the reload summary's words ("would restart b
    /// (env); re-route a (hosts)"), then what would wait for a restart of wsgimux; "nothing to
    /// change" when nothing would.
    pub fn preview(&self) -> String {
        const VERBS: [&str; 5] = ["add", "remove", "restart", "re-route", "update"];
        let mut by_verb: [Vec<String>; 5] = Default::default();
        for c in &self.apps {
            let with_keys = |keys: &[&str]| format!("{} ({})", c.name(), keys.join(", "));
            let (verb, item) = match c {
                AppChange::Added(_) => (0, c.name().to_string()),
                AppChange::Removed(_) => (1, c.name().to_string()),
                AppChange::Restart { keys, .. } => (2, with_keys(keys)),
                AppChange::Update { keys, reroute, .. } => {
                    (if *reroute { 3 } else { 4 }, with_keys(keys))
                }
                AppChange::Unchanged(_) => continue,
            };
            by_verb[verb].push(item);
        }
        let addrs = |list: &[SocketAddr]| list.iter().map(ToString::to_string).collect::<Vec<_>>();
        let listeners = [
            ("listen on", addrs(&self.listen_added)),
            ("close", addrs(&self.listen_removed)),
        ];
        let mut parts: Vec<String> = VERBS
            .into_iter()
            .zip(by_verb)
            .chain(listeners)
            .filter(|(_, items)| !items.is_empty())
            .map(|(verb, items)| format!("{verb} {}", items.join(", ")))
            .collect();
        if self.front_changed {
            parts.push("take the new front settings (tls, limits, static, access log)".into());
        }
        let mut out = match parts.is_empty() {
            true => "nothing to change".to_string(),
            false => format!("would {}", parts.join("; ")),
        };
        if !self.restart_only.is_empty() {
            out.push_str(&format!(
                "; needs a restart to take effect: {}",
                self.restart_only.join(", ")
            ));
        }
        out
    }

    /// The diff of a restart: `names` get new processes with the specs they run, nothing
    /// else changes.
    pub fn restart(config: &Config, names: &BTreeSet<String>) -> ConfigDiff {
        let apps = config
            .apps
            .iter()
            .map(|spec| match names.contains(&spec.name) {
                true => AppChange::Restart {
                    spec: spec.clone(),
                    keys: Vec::new(),
                },
                false => AppChange::Unchanged(spec.clone()),
            })
            .collect();
        ConfigDiff {
            listen_added: Vec::new(),
            listen_removed: Vec::new(),
            runtime_dir_changed: false,
            front_changed: false,
            restart_only: Vec::new(),
            apps,
        }
    }

    /// The config in force once the diff is applied to `running`: the file's, except for the
    /// keys only a restart applies (and `runtime_dir`, which a reload refuses to change), which
    /// keep their running values, and the apps as `apply` leaves them.
    pub fn effective(&self, running: &Config, file: &Config) -> Config {
        Config {
            user: running.user.clone(),
            group: running.group.clone(),
            admin: running.admin,
            log_dir: running.log_dir.clone(),
            log_format: running.log_format,
            runtime_dir: running.runtime_dir.clone(),
            runtime_dir_location: running.runtime_dir_location,
            apps: self.apply(&running.apps),
            ..file.clone()
        }
    }

    /// The diff as far as it could be carried out: the changes of the apps in `failed` (whose
    /// new processes did not start) are dropped and they keep their spec in `old`. An added
    /// app has no previous spec to keep: it stays (its routes answer 503 while its processes
    /// are retried), so an added app's URLs are never handed to another app.
    pub fn without(&self, failed: &BTreeSet<String>, old: &[AppSpec]) -> ConfigDiff {
        let old: HashMap<&str, &AppSpec> = old.iter().map(|a| (a.name.as_str(), a)).collect();
        let apps = self
            .apps
            .iter()
            .filter_map(|c| {
                if !failed.contains(c.name()) {
                    return Some(c.clone());
                }
                match old.get(c.name()) {
                    Some(spec) => Some(AppChange::Unchanged((*spec).clone())),
                    None => matches!(c, AppChange::Added(_)).then(|| c.clone()),
                }
            })
            .collect();
        ConfigDiff {
            apps,
            ..self.clone()
        }
    }
}

/// What a running wsgimux cannot take from a reload, as problems at their keys (the file
/// stays invalid for reloading until they are undone).
pub fn reload_problems(old: &Config, new: &Config) -> Vec<Problem> {
    let mut problems = Vec::new();
    if old.runtime_dir != new.runtime_dir {
        problems.push(Problem {
            file: new.file.clone(),
            location: new.runtime_dir_location,
            app: None,
            key: Some("runtime_dir".into()),
            message: "cannot change while wsgimux runs (its sockets live there); restart wsgimux to move it".into(),
        });
    }
    problems
}

/// Compares two configs app by app (by name).
pub fn diff(old: &Config, new: &Config) -> ConfigDiff {
    // Destructured so that a new top-level key does not compile until it is classified here.
    let Config {
        file: _,
        listen,
        tls,
        acme,
        redirect_https,
        trusted_proxies,
        limits,
        user,
        group,
        runtime_dir,
        access_log,
        log_dir,
        log_format,
        admin,
        statics,
        apps: _,
        runtime_dir_location: _,
    } = new;
    let old_listen: BTreeSet<_> = old.listen.iter().collect();
    let new_listen: BTreeSet<_> = listen.iter().collect();
    ConfigDiff {
        listen_added: listen
            .iter()
            .filter(|a| !old_listen.contains(a))
            .copied()
            .collect(),
        listen_removed: old
            .listen
            .iter()
            .filter(|a| !new_listen.contains(a))
            .copied()
            .collect(),
        runtime_dir_changed: old.runtime_dir != *runtime_dir,
        // Read by the front from the live snapshot: new settings, same processes.
        front_changed: old.tls != *tls
            || old.acme != *acme
            || old.redirect_https != *redirect_https
            || old.trusted_proxies != *trusted_proxies
            || old.limits != *limits
            || old.statics != *statics
            || old.access_log != *access_log,
        // wsgimux's own account and the doors it opens at start.
        restart_only: changed(&[
            (old.user != *user, "user"),
            (old.group != *group, "group"),
            (old.admin != *admin, "admin.listen"),
            (old.log_dir != *log_dir, "log_dir"),
            (old.log_format != *log_format, "log_format"),
        ]),
        apps: app_changes(old, new),
    }
}

/// The new config's apps in file order, then the removed ones.
fn app_changes(old: &Config, new: &Config) -> Vec<AppChange> {
    let by_name: HashMap<&str, &AppSpec> = old.apps.iter().map(|a| (a.name.as_str(), a)).collect();
    let mut apps: Vec<AppChange> = new
        .apps
        .iter()
        .map(|spec| match by_name.get(spec.name.as_str()) {
            None => AppChange::Added(spec.clone()),
            Some(before) => app_change(before, spec),
        })
        .collect();
    let kept: BTreeSet<&str> = new.apps.iter().map(|a| a.name.as_str()).collect();
    apps.extend(
        old.apps
            .iter()
            .filter(|a| !kept.contains(a.name.as_str()))
            .map(|a| AppChange::Removed(a.name.clone())),
    );
    apps
}

/// How one app that exists in both configs changed: by part — its process keys (a new
/// generation), its route (a new route, same processes) or its lifecycle (applies from now
/// on) — with the keys that changed, for the reload's summary.
pub fn app_change(old: &AppSpec, new: &AppSpec) -> AppChange {
    // Destructured so that a new part does not compile until it is classified here.
    let AppSpec {
        name: _,
        process,
        route,
        lifecycle,
        locations: _,
    } = new;
    let process_keys = process_keys(&old.process, process);
    let route_keys = route_keys(&old.route, route);
    let mut keys = process_keys.clone();
    keys.extend(route_keys);
    keys.extend(lifecycle_keys(&old.lifecycle, lifecycle));
    if old.process != *process {
        AppChange::Restart {
            spec: new.clone(),
            keys,
        }
    } else if old.route != *route || old.lifecycle != *lifecycle {
        AppChange::Update {
            spec: new.clone(),
            keys,
            reroute: old.route != *route,
        }
    } else {
        AppChange::Unchanged(new.clone())
    }
}

/// The process keys that changed; destructured, so none is forgotten.
fn process_keys(old: &ProcessSpec, new: &ProcessSpec) -> Vec<&'static str> {
    let ProcessSpec {
        python,
        entry,
        working_dir,
        python_path,
        env,
        processes,
        threads,
        worker,
        user,
        group,
        policy,
    } = new;
    let mut keys = changed(&[
        (old.python != *python, "python"),
        (old.entry != *entry, entry.key()),
        (old.working_dir != *working_dir, "working_dir"),
        (old.python_path != *python_path, "python_path"),
        (old.env != *env, "env"),
        // The worker tells the app (wsgi.multiprocess) and sizes itself by both counts.
        (old.processes != *processes, "processes"),
        (old.threads != *threads, "threads"),
        (old.worker != *worker, "worker"),
        (old.user != *user, "user"),
        (old.group != *group, "group"),
    ]);
    // The supervisor runs a generation's processes by this policy.
    keys.extend(policy_keys(&old.policy, policy));
    keys
}

/// The route keys that changed (read by the proxy from the route).
fn route_keys(old: &RouteSpec, new: &RouteSpec) -> Vec<&'static str> {
    let RouteSpec {
        hosts,
        mount,
        max_body_size,
        request_timeout,
        queue_limit,
        overflow_wait,
        request_buffering,
        response_idle_timeout,
        statics,
        error_pages,
        access_log,
    } = new;
    changed(&[
        (old.hosts != *hosts, "hosts"),
        (old.mount != *mount, "mount"),
        (old.max_body_size != *max_body_size, "max_body_size"),
        (old.request_timeout != *request_timeout, "request_timeout"),
        (old.queue_limit != *queue_limit, "queue_limit"),
        (old.overflow_wait != *overflow_wait, "overflow_wait"),
        (
            old.request_buffering != *request_buffering,
            "request_buffering",
        ),
        (
            old.response_idle_timeout != *response_idle_timeout,
            "response_idle_timeout",
        ),
        (old.statics != *statics, "static"),
        (old.error_pages != *error_pages, "error_pages"),
        (old.access_log != *access_log, "access_log"),
    ])
}

/// The lifecycle keys that changed.
fn lifecycle_keys(old: &LifecycleSpec, new: &LifecycleSpec) -> Vec<&'static str> {
    let LifecycleSpec {
        startup_timeout,
        drain_timeout,
        reload_on_changes,
        restart_file,
    } = new;
    changed(&[
        (old.restart_file != *restart_file, "restart_file"),
        (old.startup_timeout != *startup_timeout, "startup_timeout"),
        (old.drain_timeout != *drain_timeout, "drain_timeout"),
        (
            old.reload_on_changes != *reload_on_changes,
            "reload_on_changes",
        ),
    ])
}

/// The process policy's keys that changed; destructured like `AppSpec` so none is forgotten.
fn policy_keys(old: &ProcessPolicy, new: &ProcessPolicy) -> Vec<&'static str> {
    let ProcessPolicy {
        start,
        idle_timeout,
        max_requests,
        max_requests_jitter,
        stuck_limit,
        max_memory,
    } = new;
    changed(&[
        (old.start != *start, "start"),
        (old.idle_timeout != *idle_timeout, "idle_timeout"),
        (old.max_requests != *max_requests, "max_requests"),
        (
            old.max_requests_jitter != *max_requests_jitter,
            "max_requests_jitter",
        ),
        (old.stuck_limit != *stuck_limit, "stuck_limit"),
        (old.max_memory != *max_memory, "max_memory"),
    ])
}

/// The keys whose flag is set, in order.
fn changed(flags: &[(bool, &'static str)]) -> Vec<&'static str> {
    flags
        .iter()
        .filter_map(|&(changed, key)| changed.then_some(key))
        .collect()
}

#[cfg(test)]
mod tests;
