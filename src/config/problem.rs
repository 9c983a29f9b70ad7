//! What a config mistake says: the file, line and column, app and key, and the message —
//! collected into one [`ConfigError`] so every problem is reported at once. Also turns
//! serde_yaml's own errors into problems.

use std::fmt;
use std::path::{Path, PathBuf};

use super::Location;

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

pub(super) fn syntax_problem(file: &Path, e: &serde_yaml::Error) -> Problem {
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
