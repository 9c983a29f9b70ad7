//! `wsgimux run app.wsgi`: one app, no config file. Like `mod_wsgi-express start-server`, it
//! writes a config for the options given into its own folder and runs the same engine on it,
//! then prints a banner with the URL, the interpreter, the worker, the capacity and where the
//! logs go. What it writes is an ordinary config: `wsgimux status`/`reload` take it too.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ExpressError {
    #[error("{} does not exist", .0.display())]
    NoScript(PathBuf),
    #[error("--static {0:?} must look like /url=folder")]
    BadStatic(String),
    #[error("--mount {0:?} must start with /")]
    BadMount(String),
    #[error("--runtime-dir {} is too long for the app's sockets ({len} bytes at the most, the limit is {}); give a shorter folder, or leave --runtime-dir out", path.display(), crate::runtime_dir::MAX_SOCKET_PATH)]
    RuntimeDirTooLong { path: PathBuf, len: usize },
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The options of `wsgimux run` (its command line).
#[derive(Debug, Clone, clap::Args)]
pub struct Express {
    /// The app: a script file (app.wsgi, app.py) or a module ("pkg.mod:callable").
    #[arg(value_name = "APP")]
    pub target: String,
    /// The interpreter or virtualenv.
    #[arg(long, default_value = "python3")]
    pub python: String,
    /// The callable's name in a script.
    #[arg(long, default_value = "application")]
    pub callable: String,
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    #[arg(long, default_value_t = 8000)]
    pub port: u16,
    #[arg(long, default_value_t = 1)]
    pub processes: u32,
    #[arg(long, default_value_t = 5)]
    pub threads: u32,
    /// Serve the app under this path prefix.
    #[arg(long, default_value = "/")]
    pub mount: String,
    /// Restart the app (zero-downtime) when its code changes.
    #[arg(long)]
    pub reload_on_changes: bool,
    /// Serve a folder's files at a URL: /static=./static (repeatable).
    #[arg(long = "static", value_name = "URL=FOLDER")]
    pub statics: Vec<String>,
    /// Access log: stdout, off or a file (default: with wsgimux's log on stderr).
    #[arg(long)]
    pub access_log: Option<String>,
    /// Started as root (for a port below 1024): bind, then run wsgimux and the app as this
    /// account.
    #[arg(long, value_name = "NAME")]
    pub user: Option<String>,
    /// The group for --user (default: the account's own).
    #[arg(long, value_name = "NAME", requires = "user")]
    pub group: Option<String>,
    /// Where the app's sockets go (default: a short per-user folder, `$XDG_RUNTIME_DIR/wsgimux`
    /// or `/tmp/wsgimux-UID`, removed when wsgimux stops).
    #[arg(long, value_name = "DIR")]
    pub runtime_dir: Option<PathBuf>,
}

/// YAML for a string (JSON strings are valid YAML flow scalars).
fn quoted(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

impl Express {
    /// The config file's text, with paths made absolute against `cwd`.
    pub fn config_text(&self, cwd: &Path) -> Result<String, ExpressError> {
        let abs = |p: &str| {
            let p = Path::new(p);
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                cwd.join(p)
            }
        };
        let is_file = Path::new(&self.target).exists()
            || self.target.ends_with(".wsgi")
            || self.target.ends_with(".py");
        if !self.mount.starts_with('/') {
            return Err(ExpressError::BadMount(self.mount.clone()));
        }
        let mut y = String::from("# Written by `wsgimux run`; edits are lost at its next start.\n");
        y += &self.top_level(cwd)?;
        if let Some(a) = &self.access_log {
            y += &format!("access_log: {}\n", quoted(a));
        }
        y += "apps:\n  app:\n";
        let python = if self.python.contains('/') {
            abs(&self.python).display().to_string()
        } else {
            self.python.clone()
        };
        y += &format!("    python: {}\n", quoted(&python));
        if is_file {
            let script = abs(&self.target);
            if !script.is_file() {
                return Err(ExpressError::NoScript(script));
            }
            y += &format!("    script: {}\n", quoted(&script.display().to_string()));
            y += &format!("    callable: {}\n", quoted(&self.callable));
        } else {
            y += &format!("    module: {}\n", quoted(&self.target));
            y += &format!("    working_dir: {}\n", quoted(&cwd.display().to_string()));
        }
        y += &format!(
            "    mount: {}\n    processes: {}\n    threads: {}\n    reload_on_changes: {}\n",
            quoted(&self.mount),
            self.processes,
            self.threads,
            self.reload_on_changes
        );
        if !self.statics.is_empty() {
            y += "    static:\n";
            for s in &self.statics {
                let (url, dir) = s
                    .split_once('=')
                    .filter(|(u, d)| u.starts_with('/') && !d.is_empty())
                    .ok_or_else(|| ExpressError::BadStatic(s.clone()))?;
                // Given as full URLs, like mod_wsgi-express's --url-alias; the app's static
                // keys are under its mount.
                let url = match url.strip_prefix(self.mount.trim_end_matches('/')) {
                    Some(rest) if self.mount != "/" && rest.starts_with('/') => rest,
                    _ => url,
                };
                y += &format!(
                    "      {}: {}\n",
                    quoted(url),
                    quoted(&abs(dir).display().to_string())
                );
            }
        }
        Ok(y)
    }

    /// The keys for wsgimux itself: listen, runtime_dir (checked to leave room for the
    /// sockets), user, group.
    fn top_level(&self, cwd: &Path) -> Result<String, ExpressError> {
        let mut y = format!(
            "listen: {}\n",
            quoted(&format!("{}:{}", self.host, self.port))
        );
        if let Some(dir) = &self.runtime_dir {
            let dir = cwd.join(dir);
            let room = crate::runtime_dir::SocketRoom {
                own_folders: false,
                processes: self.processes,
            };
            let len = crate::runtime_dir::longest_socket_path(&dir, room);
            if len > crate::runtime_dir::MAX_SOCKET_PATH {
                return Err(ExpressError::RuntimeDirTooLong { path: dir, len });
            }
            y += &format!("runtime_dir: {}\n", quoted(&dir.display().to_string()));
        }
        for (key, value) in [("user", &self.user), ("group", &self.group)] {
            if let Some(v) = value {
                y += &format!("{key}: {}\n", quoted(v));
            }
        }
        Ok(y)
    }

    /// What the folders of runs of this port and target are named by (as mod_wsgi-express's
    /// `/tmp/mod_wsgi-localhost:8000:0`), before the pid.
    fn root_prefix(&self, cwd: &Path) -> String {
        let key = format!(
            "{}:{}:{}:{}",
            self.host,
            self.port,
            cwd.display(),
            self.target
        );
        let hash = crate::runtime_dir::fnv1a(key.as_bytes()) & 0xffff_ffff;
        // SAFETY: getuid cannot fail.
        let uid = unsafe { libc::getuid() };
        format!("wsgimux-run-{uid}-{}-{hash:08x}-", self.port)
    }

    /// The folder that holds this run's generated config and runtime files, under the temp
    /// folder: one per run (the pid ends its name), so a second `run` on a busy port — refused
    /// when it cannot bind — never rewrites the config the first one serves and watches.
    pub fn server_root(&self, cwd: &Path) -> PathBuf {
        let prefix = self.root_prefix(cwd);
        std::env::temp_dir().join(format!("{prefix}{}", std::process::id()))
    }

    /// Folders of earlier runs of this port and target whose wsgimux is gone (killed, so it
    /// could not remove its own): their leftover children are stopped, the folders removed.
    pub fn clear_stale_roots(&self, cwd: &Path) {
        let prefix = self.root_prefix(cwd);
        let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(pid) = name
                .strip_prefix(&prefix)
                .and_then(|p| p.parse::<i32>().ok())
            else {
                continue;
            };
            // SAFETY: kill with signal 0 only asks whether the process exists.
            let alive = unsafe { libc::kill(pid, 0) } == 0
                || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
            if pid as u32 == std::process::id() || alive {
                continue;
            }
            let runtime = crate::runtime_dir::of_file(&e.path().join("wsgimux.yaml"));
            crate::leftover::stop_leftovers(&runtime);
            if runtime.starts_with(crate::runtime_dir::area()) {
                let _ = std::fs::remove_dir_all(&runtime);
            }
            let _ = std::fs::remove_dir_all(e.path());
        }
    }

    /// Writes the config; returns its path.
    pub fn write(&self, cwd: &Path) -> Result<PathBuf, ExpressError> {
        self.clear_stale_roots(cwd);
        let root = self.server_root(cwd);
        let err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| ExpressError::Write { path, source }
        };
        std::fs::create_dir_all(&root).map_err(err(&root))?;
        let config = root.join("wsgimux.yaml");
        let text = self.config_text(cwd)?;
        std::fs::write(&config, text).map_err(err(&config))?;
        Ok(config)
    }
}

/// The banner, mod_wsgi-express style.
pub fn banner(
    opts: &Express,
    config: &Path,
    python: &str,
    worker: &str,
    urls: &[String],
) -> String {
    let mount = if opts.mount == "/" {
        "/".to_string()
    } else {
        format!("{}/", opts.mount.trim_end_matches('/'))
    };
    let mut out = String::new();
    let mut line = |k: &str, v: String| out.push_str(&format!("{k:<17}: {v}\n"));
    for u in urls {
        line("Server URL", format!("{u}{mount}"));
    }
    line("Application", opts.target.clone());
    line("Python", python.to_string());
    line("Worker", worker.to_string());
    line(
        "Request Capacity",
        format!(
            "{} ({} process{} * {} thread{})",
            opts.processes * opts.threads,
            opts.processes,
            if opts.processes == 1 { "" } else { "es" },
            opts.threads,
            if opts.threads == 1 { "" } else { "s" }
        ),
    );
    for s in &opts.statics {
        line("URL Alias", s.replace('=', " -> "));
    }
    if opts.reload_on_changes {
        line("Reload on changes", "yes".into());
    }
    line("Server Conf", config.display().to_string());
    line(
        "Logs",
        match &opts.access_log {
            Some(a) => format!("stderr (access log: {a})"),
            None => "stderr (with the access log)".into(),
        },
    );
    out
}
