//! `wsgimux check` imports every `script:`/`module:` app the way its processes will: the same
//! launcher, interpreter, virtualenv, environment, working folder and account, with `--check`
//! (load the app, then exit). All at once, each bounded by the app's `startup_timeout`. A
//! failure comes back as the error and the innermost place in the app's own code — the
//! launcher's frames are never shown.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use crate::config::{Address, Entry};
use crate::preflight::ReadyApp;
use crate::runtime_dir::WorkerFiles;

use super::child::{command, set_environment};
use super::Supervisor;

/// What the launcher prints last when the app does not load (see `report_load_error`).
const CHECK_MARK: &str = "wsgimux-check-failed";

/// Why an app did not import.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportFailure {
    /// `ImportError: No module named foo`, as Python says it.
    pub error: String,
    /// The innermost file and line of the app's own code, when there is one.
    pub at: Option<(PathBuf, u32)>,
}

/// Imports each `script:`/`module:` app in `apps` (other kinds are skipped); the failures, by
/// app name. `scratch`: an empty folder for the launcher.
pub async fn check_imports(
    apps: &[ReadyApp],
    scratch: &Path,
) -> std::io::Result<Vec<(String, ImportFailure)>> {
    use std::os::unix::fs::PermissionsExt;
    // Readable by the apps' own accounts too.
    std::fs::set_permissions(scratch, std::fs::Permissions::from_mode(0o755))?;
    let launcher = crate::runtime_dir::write_launcher(scratch)?;
    let files = WorkerFiles {
        launcher,
        native_dir: scratch.to_path_buf(),
    };
    let supervisor = Supervisor::new(scratch.to_path_buf(), files, None, Default::default());
    let mut missing = Vec::new();
    for a in apps {
        if let Some(why) = command_missing(&supervisor.plan(a, 0)) {
            let failure = ImportFailure {
                error: why,
                at: None,
            };
            missing.push((a.spec.name.clone(), failure));
        }
    }
    let checks = apps
        .iter()
        .filter(|a| {
            matches!(
                a.spec.process.entry,
                Entry::Script { .. } | Entry::Module { .. }
            )
        })
        .map(|a| {
            let plan = supervisor.plan(a, 0);
            let name = a.spec.name.clone();
            let socket = Address::Unix(scratch.join(format!("{name}.sock")));
            async move { (name, import_one(&plan, &socket).await) }
        });
    let results = futures_util::future::join_all(checks).await;
    missing.extend(
        results
            .into_iter()
            .filter_map(|(name, r)| r.err().map(|f| (name, f))),
    );
    Ok(missing)
}

/// A `command:` app whose program cannot be found (in its `bin/` or on PATH, or at the path
/// given, relative to its `working_dir`) cannot start: why, for `check`.
pub(super) fn command_missing(plan: &super::plan::AppPlan) -> Option<String> {
    let super::plan::Launch::Command { argv } = &plan.launch else {
        return None;
    };
    let program = argv.first()?;
    match super::child::locate_program(program, plan.bin_dir.as_deref()) {
        None => Some(format!(
            "{program:?} is not found in the app's bin/ folder or on PATH"
        )),
        Some(p) if !plan.working_dir.join(&p).is_file() => Some(format!(
            "{} does not exist",
            plan.working_dir.join(&p).display()
        )),
        Some(_) => None,
    }
}

async fn import_one(plan: &super::plan::AppPlan, socket: &Address) -> Result<(), ImportFailure> {
    let failed = |error: String| ImportFailure { error, at: None };
    let mut cmd = command(plan, socket).map_err(|e| failed(e.to_string()))?;
    set_environment(&mut cmd, plan);
    cmd.arg("--check").stdout(Stdio::null());
    let child = crate::spawn::retry_while_busy(|| cmd.spawn())
        .await
        .map_err(|e| failed(format!("cannot start {}: {e}", plan.launch.program())))?;
    let out = match tokio::time::timeout(plan.startup_timeout, child.wait_with_output()).await {
        Err(_) => {
            return Err(failed(format!(
                "importing it took longer than its startup_timeout ({})",
                humantime::format_duration(plan.startup_timeout)
            )))
        }
        Ok(Err(e)) => return Err(failed(e.to_string())),
        Ok(Ok(out)) => out,
    };
    if out.status.success() {
        return Ok(());
    }
    Err(parse_failure(&String::from_utf8_lossy(&out.stderr)))
}

/// The launcher's last line (mark, file, line, error), or the last thing it said.
fn parse_failure(stderr: &str) -> ImportFailure {
    let marked = stderr
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix(CHECK_MARK)?.strip_prefix('\t'));
    if let Some(rest) = marked {
        let mut parts = rest.splitn(3, '\t');
        let (file, line, error) = (parts.next(), parts.next(), parts.next());
        let at = match (file, line.and_then(|l| l.trim().parse().ok())) {
            (Some(f), Some(n)) if !f.is_empty() => Some((PathBuf::from(f), n)),
            _ => None,
        };
        return ImportFailure {
            error: error.unwrap_or_default().trim().to_string(),
            at,
        };
    }
    let last = stderr
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("it exited without saying why");
    ImportFailure {
        error: last.trim().to_string(),
        at: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_launchers_last_line_says_what_and_where() {
        let f = parse_failure("Traceback…\n  File \"/srv/a.wsgi\", line 3\nwsgimux-check-failed\t/srv/a.wsgi\t3\tImportError: No module named x\n");
        assert_eq!(f.error, "ImportError: No module named x");
        assert_eq!(f.at, Some((PathBuf::from("/srv/a.wsgi"), 3)));
        let f = parse_failure(
            "wsgimux-check-failed\t\t\tModuleNotFoundError: No module named 'legacysite'\n",
        );
        assert_eq!(f.at, None);
        let f = parse_failure("app: a.wsgi has no callable 'application'\n");
        assert_eq!(f.error, "app: a.wsgi has no callable 'application'");
    }
}
