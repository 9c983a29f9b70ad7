//! The vocabulary of reloads shared by those who ask for one and the one who carries it out:
//! why a reload happens ([`Trigger`], [`Cause`]) and how it went ([`Report`], [`Outcome`]).
//!
//! Lives one floor below `reload` so that `watch`, `control` and `status` can speak it without
//! importing `reload`. Owns no state and does no IO.

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

/// A request for a reload, as sent to the reload loop.
#[derive(Debug)]
pub enum Trigger {
    /// The config file changed on disk.
    ConfigFile,
    /// SIGHUP.
    Hangup,
    /// `wsgimux reload`: the report goes back to it.
    Command(oneshot::Sender<Report>),
    /// A `reload_on_changes` app's code changed, or its `restart_file` was touched.
    Code { app: String, file: PathBuf },
    /// `wsgimux restart APP…`: those apps' processes replaced; the report goes back.
    Restart {
        apps: Vec<String>,
        reply: oneshot::Sender<Report>,
    },
}

/// Why one reload ran: the most explicit of the triggers it answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cause {
    /// `wsgimux reload` (or the control socket's `reload`).
    Command,
    Hangup,
    ConfigFile,
    /// An app's code changed (`reload_on_changes`), or its `restart_file` was touched.
    Code {
        file: PathBuf,
    },
    /// `wsgimux restart APP…`.
    Restart {
        apps: Vec<String>,
    },
}

/// What one run of the reload loop is: a config reload, or a restart of some apps' processes
/// with their specs unchanged (their code changed, `wsgimux restart`). Each has its own
/// numbering, log lines, counters and last outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Reload,
    Restart,
}

impl Kind {
    /// As the log lines name it: `reload #3 (…)`, `restart #1 (…)`.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Reload => "reload",
            Kind::Restart => "restart",
        }
    }
}

impl Cause {
    pub fn kind(&self) -> Kind {
        match self {
            Cause::Code { .. } | Cause::Restart { .. } => Kind::Restart,
            Cause::Command | Cause::Hangup | Cause::ConfigFile => Kind::Reload,
        }
    }
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cause::Command => f.write_str("wsgimux reload"),
            Cause::Hangup => f.write_str("SIGHUP"),
            Cause::ConfigFile => f.write_str("config file changed"),
            Cause::Code { file } => write!(f, "{} changed", file.display()),
            Cause::Restart { apps } => write!(f, "wsgimux restart {}", apps.join(" ")),
        }
    }
}

/// The outcome of one reload, as logged and as `wsgimux reload` prints it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// A config reload or a restart; `number` counts each kind apart.
    pub kind: Kind,
    pub number: u64,
    /// The [`Cause`] as text: this crosses the control socket.
    pub cause: String,
    pub outcome: Outcome,
    /// The one summary line.
    pub summary: String,
    /// Why it was rejected, or why apps kept their previous processes.
    pub errors: Vec<String>,
    /// Changed keys that only a restart of wsgimux applies (`admin.listen`, `log_dir`, …):
    /// they keep their running values until then.
    #[serde(default)]
    pub pending: Vec<String>,
}

/// The words every report and `status` use for keys that wait for a restart of wsgimux.
pub fn pending_words(pending: &[impl AsRef<str>]) -> String {
    let keys: Vec<&str> = pending.iter().map(AsRef::as_ref).collect();
    format!("needs a restart to take effect: {}", keys.join(", "))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Applied,
    Unchanged,
    /// Applied, except for apps whose new processes did not start (they keep their old ones).
    PartlyApplied,
    /// A restart none of whose apps' new processes started.
    NotApplied,
    /// Nothing changed: the file is invalid, or a listener could not be bound.
    Rejected,
}

impl Outcome {
    /// As it is written in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Applied => "applied",
            Outcome::Unchanged => "unchanged",
            Outcome::PartlyApplied => "partly_applied",
            Outcome::NotApplied => "not_applied",
            Outcome::Rejected => "rejected",
        }
    }

    /// As the summary line says it (and `status` shows it).
    pub fn words(self) -> &'static str {
        match self {
            Outcome::Applied => "applied",
            Outcome::Unchanged => "nothing to change",
            Outcome::PartlyApplied => "partly applied",
            Outcome::NotApplied => "not applied",
            Outcome::Rejected => "rejected",
        }
    }

    pub fn succeeded(self) -> bool {
        matches!(self, Outcome::Applied | Outcome::Unchanged)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn causes_read_as_the_log_writes_them() {
        assert_eq!(Cause::Command.to_string(), "wsgimux reload");
        assert_eq!(Cause::Hangup.to_string(), "SIGHUP");
        assert_eq!(Cause::ConfigFile.to_string(), "config file changed");
        let code = Cause::Code {
            file: PathBuf::from("/srv/app.wsgi"),
        };
        assert_eq!(code.to_string(), "/srv/app.wsgi changed");
    }
}
