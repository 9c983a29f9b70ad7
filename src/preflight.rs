//! The checks of a validated `Config` that need the machine: every interpreter runs, every
//! script and folder exists. Problems are reported like config errors, at the key's position.
//! Starts nothing but the short-lived interpreter probes.

use std::path::Path;

use crate::config::{AppSpec, Config, ConfigError, Entry, Location, Problem};
use crate::interpreter::{self, Interpreter};

/// An app whose interpreter has been found and probed.
#[derive(Debug, Clone)]
pub struct ReadyApp {
    pub spec: AppSpec,
    pub interpreter: Interpreter,
}

/// The worker kind that will serve an app. Only the portable worker exists so far.
pub fn worker_kind(_interpreter: &Interpreter) -> &'static str {
    "portable"
}

/// Probes every app's interpreter (concurrently) and checks its files.
pub async fn check(config: &Config) -> Result<Vec<ReadyApp>, ConfigError> {
    let probes = config.apps.iter().map(|app| async move {
        let mut problems = files(config, app);
        match interpreter::probe(&app.python).await {
            Ok(interpreter) if problems.is_empty() => Ok(ReadyApp {
                spec: app.clone(),
                interpreter,
            }),
            Ok(_) => Err(problems),
            Err(e) => {
                problems.insert(
                    0,
                    problem(config, app, app.locations.python, "python", e.to_string()),
                );
                Err(problems)
            }
        }
    });
    let results = futures_util::future::join_all(probes).await;
    let mut ready = Vec::new();
    let mut problems = Vec::new();
    for r in results {
        match r {
            Ok(app) => ready.push(app),
            Err(p) => problems.extend(p),
        }
    }
    if problems.is_empty() {
        Ok(ready)
    } else {
        Err(ConfigError { problems })
    }
}

fn files(config: &Config, app: &AppSpec) -> Vec<Problem> {
    let mut out = Vec::new();
    if let Entry::Script { path, .. } = &app.entry {
        if !path.is_file() {
            let msg = format!("{} does not exist or is not a file", path.display());
            out.push(problem(config, app, app.locations.entry, "script", msg));
        }
    }
    if !app.working_dir.is_dir() {
        let msg = format!("{} is not a folder", app.working_dir.display());
        out.push(problem(
            config,
            app,
            app.locations.working_dir,
            "working_dir",
            msg,
        ));
    }
    for (i, p) in app.python_path.iter().enumerate() {
        if !Path::new(p).is_dir() {
            let loc = app.locations.python_path.get(i).copied().flatten();
            let msg = format!("{} is not a folder", p.display());
            out.push(problem(config, app, loc, "python_path", msg));
        }
    }
    out
}

fn problem(
    config: &Config,
    app: &AppSpec,
    location: Option<Location>,
    key: &str,
    message: String,
) -> Problem {
    Problem {
        file: config.file.clone(),
        location,
        app: Some(app.name.clone()),
        key: Some(key.to_string()),
        message,
    }
}
