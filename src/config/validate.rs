//! The top-level rules of a config and the collection of its problems: `Validator` walks the
//! raw file once, keeps every problem it finds (so all are reported at once) and builds the
//! validated `Config`. An app's own rules are in `apps`, the front's in `front`, the service
//! keys' in `operating`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::{AppSpec, Config, HostPattern, Location, Locator, Mount, Problem, RawConfig};

pub(super) struct Validator<'a> {
    pub(super) file: &'a Path,
    pub(super) base: &'a Path,
    pub(super) locator: &'a Locator,
    pub(super) problems: Vec<Problem>,
}

impl Validator<'_> {
    pub(super) fn problem(
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

    pub(super) fn app_problem(&mut self, app: &str, key: &str, message: String) {
        let loc = self.locator.key(&format!("apps.{app}.{key}"));
        self.problem(loc, Some(app), key, message);
    }

    pub(super) fn resolve(&self, p: &str) -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base.join(p)
        }
    }

    /// The config of everything that validated (an app with a problem of its own left out),
    /// and every problem found.
    pub(super) fn validate(mut self, raw: RawConfig) -> (Config, Vec<Problem>) {
        let (listen, tls) = self.listeners(raw.listen);
        let acme = self.acme(raw.acme);
        self.acme_needs(&listen, &tls, acme.challenge);
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
        let access_log = self.access_log(None, raw.access_log, raw.access_log_format);
        let log_dir = self.log_dir(raw.log_dir);
        let log_format = match raw.log_format.as_deref().map(str::trim) {
            None | Some("text") => super::LogFormat::Text,
            Some("json") => super::LogFormat::Json,
            Some(other) => {
                let loc = self.locator.key("log_format");
                let msg = format!("{other:?} is not a log format: use text or json");
                self.problem(loc, None, "log_format", msg);
                super::LogFormat::Text
            }
        };
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
        let config = Config {
            file: self.file.to_path_buf(),
            listen,
            tls,
            acme,
            redirect_https,
            trusted_proxies,
            limits,
            user,
            group,
            runtime_dir,
            runtime_dir_location: self.locator.key("runtime_dir"),
            access_log,
            log_dir,
            log_format,
            admin,
            statics,
            apps,
        };
        (config, self.problems)
    }

    /// Two apps may not claim the same host (or "any host") at the same mount.
    fn claims(&mut self, apps: &[AppSpec]) {
        let mut seen: HashMap<(Option<&HostPattern>, &Mount), &str> = HashMap::new();
        for app in apps {
            let hosts: Vec<Option<&HostPattern>> = if app.route.hosts.is_empty() {
                vec![None]
            } else {
                app.route.hosts.iter().map(Some).collect()
            };
            for h in hosts {
                if let Some(other) = seen.insert((h, &app.route.mount), &app.name) {
                    let host = h.map_or("any host".to_string(), |h| format!("host {h}"));
                    let key = if app.route.hosts.is_empty() {
                        "mount"
                    } else {
                        "hosts"
                    };
                    self.app_problem(
                        &app.name,
                        key,
                        format!(
                            "{host} at mount {} is already served by app {other:?}",
                            app.route.mount
                        ),
                    );
                }
            }
        }
    }
}
