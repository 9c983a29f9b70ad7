//! What a reload says: the one summary line per reload (what was added, removed, restarted,
//! re-routed, updated, what failed), the reports `wsgimux reload` prints, and the log of a
//! failed generation's last stderr lines. Pure but for that log line.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use crate::config::diff::{AppChange, ConfigDiff};
use crate::supervisor::StartFailure;
use crate::trigger::{pending_words, Cause, Kind, Outcome, Report};

/// Lines of a failed child's stderr repeated in the log.
const LOGGED_STDERR_LINES: usize = 10;

/// `reload #3 (config file changed)`, `restart #1 (wsgimux restart web)`.
fn head(number: u64, cause: &Cause) -> String {
    format!("{} #{number} ({cause})", cause.kind().as_str())
}

/// Nothing changed: the file is invalid, a listener could not be bound, or a key cannot
/// change while wsgimux runs.
pub(super) fn rejected(number: u64, cause: &Cause, errors: Vec<String>) -> Report {
    let first = errors.first().cloned().unwrap_or_default();
    let more = match errors.len() {
        0 | 1 => String::new(),
        n => format!(" (and {} more)", n - 1),
    };
    Report {
        kind: cause.kind(),
        number,
        cause: cause.to_string(),
        outcome: Outcome::Rejected,
        summary: format!(
            "{}: rejected, {}: {first}{more}",
            head(number, cause),
            match cause.kind() {
                Kind::Reload => "still serving the previous config",
                Kind::Restart => "nothing restarted",
            }
        ),
        errors,
        pending: Vec::new(),
    }
}

/// Nothing that runs or routes changed; `pending` are the changed keys only a restart of
/// wsgimux applies.
pub(super) fn unchanged(
    number: u64,
    cause: &Cause,
    clock: Instant,
    pending: &[&'static str],
) -> Report {
    Report {
        kind: cause.kind(),
        number,
        cause: cause.to_string(),
        outcome: Outcome::Unchanged,
        summary: format!(
            "{}: nothing to change ({})",
            head(number, cause),
            elapsed(clock)
        ),
        errors: Vec::new(),
        pending: Vec::new(),
    }
    .with_pending(pending)
}

impl Report {
    /// The report, saying which changed keys wait for a restart of wsgimux (if any).
    pub(super) fn with_pending(mut self, pending: &[&'static str]) -> Report {
        if !pending.is_empty() {
            self.summary
                .push_str(&format!("; {}", pending_words(pending)));
            self.pending = pending.iter().map(|k| k.to_string()).collect();
        }
        self
    }
}

pub(super) fn applied(
    number: u64,
    cause: &Cause,
    clock: Instant,
    summary: String,
    failed: &BTreeMap<String, StartFailure>,
    added_failing: &BTreeMap<String, StartFailure>,
) -> Report {
    let (outcome, verb) = if failed.is_empty() && added_failing.is_empty() {
        (Outcome::Applied, "applied")
    } else {
        (Outcome::PartlyApplied, "partly applied")
    };
    Report {
        kind: cause.kind(),
        number,
        cause: cause.to_string(),
        outcome,
        summary: format!(
            "{}: {verb} in {}: {summary}",
            head(number, cause),
            elapsed(clock)
        ),
        errors: failed
            .iter()
            .map(|(app, f)| failure_text(app, f))
            .chain(
                added_failing
                    .iter()
                    .map(|(app, f)| added_failing_text(app, f)),
            )
            .collect(),
        pending: Vec::new(),
    }
}

/// How one app's restart went.
pub(super) enum Restarted {
    /// Its new processes answer (their pids); the old ones drain.
    Done(Vec<u32>),
    /// Its new processes did not start; the old ones keep serving.
    Kept(StartFailure),
    /// Its new processes did not start, and it had none serving before either.
    NeverStarted(StartFailure),
}

/// A restart of some apps (their code changed, or `wsgimux restart`).
pub(super) fn restarted(
    number: u64,
    cause: &Cause,
    clock: Instant,
    outcomes: &[(String, Restarted)],
) -> Report {
    let why = match cause {
        Cause::Code { .. } => "code, ",
        _ => "",
    };
    let mut done = Vec::new();
    let mut kept = Vec::new();
    let mut never = Vec::new();
    let mut errors = Vec::new();
    for (app, r) in outcomes {
        match r {
            Restarted::Done(pids) => done.push(format!("{app} ({why}pid {})", join_pids(pids))),
            Restarted::Kept(f) => {
                kept.push(format!("{app} ({})", f.reason));
                errors.push(failure_text(app, f));
            }
            Restarted::NeverStarted(f) => {
                never.push(format!("{app} ({})", f.reason));
                errors.push(never_started_text(app, f));
            }
        }
    }
    let outcome = match (done.is_empty(), errors.is_empty()) {
        (_, true) => Outcome::Applied,
        (true, false) => Outcome::NotApplied,
        (false, false) => Outcome::PartlyApplied,
    };
    let mut parts = Vec::new();
    if !done.is_empty() {
        parts.push(format!("restarted {}", done.join(", ")));
    }
    if !kept.is_empty() {
        parts.push(format!(
            "kept the previous processes of {}",
            kept.join(", ")
        ));
    }
    if !never.is_empty() {
        parts.push(format!("failed to start {}", never.join(", ")));
    }
    Report {
        kind: cause.kind(),
        number,
        cause: cause.to_string(),
        outcome,
        summary: format!(
            "{}: {} in {}: {}",
            head(number, cause),
            outcome.words(),
            elapsed(clock),
            parts.join("; ")
        ),
        errors,
        pending: Vec::new(),
    }
}

/// "added a (pid 1); restarted b (env; pid 2,3); …": what a reload did, app by app, in the
/// diff's order; `pids` gives an app's processes now.
pub(super) fn summarize(
    d: &ConfigDiff,
    failed: &BTreeMap<String, StartFailure>,
    added_failing: &BTreeSet<String>,
    pids: impl Fn(&str) -> Option<Vec<u32>>,
) -> String {
    let pids = |name: &str| pids(name).map(|p| join_pids(&p)).unwrap_or_default();
    let mut groups: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for c in d.apps.iter().filter(|c| !failed.contains_key(c.name())) {
        let name = c.name();
        let (label, item) = match c {
            AppChange::Added(_) if added_failing.contains(name) => (
                "added",
                format!("{name} (failed to start; its routes answer 503 while it is retried)"),
            ),
            AppChange::Added(_) => ("added", format!("{name} (pid {})", pids(name))),
            AppChange::Removed(_) => ("removed", name.to_string()),
            AppChange::Restart { keys, .. } => (
                "restarted",
                format!("{name} ({}; pid {})", keys.join(", "), pids(name)),
            ),
            AppChange::Update { keys, reroute, .. } => (
                if *reroute { "re-routed" } else { "updated" },
                format!("{name} ({})", keys.join(", ")),
            ),
            AppChange::Unchanged(_) => ("unchanged", name.to_string()),
        };
        groups.entry(label).or_default().push(item);
    }
    let failed = failed
        .iter()
        .map(|(app, f)| format!("{app} (kept its previous processes: {})", f.reason))
        .collect();
    let addrs = |list: &[std::net::SocketAddr]| list.iter().map(ToString::to_string).collect();
    groups.insert("failed", failed);
    groups.insert("listening on", addrs(&d.listen_added));
    groups.insert("closed", addrs(&d.listen_removed));
    let order = [
        "added",
        "removed",
        "restarted",
        "re-routed",
        "updated",
        "failed",
        "unchanged",
        "listening on",
        "closed",
    ];
    order
        .iter()
        .filter_map(|label| {
            let items = groups.get(label).filter(|i| !i.is_empty())?;
            Some(format!("{label} {}", items.join(", ")))
        })
        .collect::<Vec<_>>()
        .join("; ")
}

pub(super) fn failure_text(app: &str, f: &StartFailure) -> String {
    format!(
        "app {app}: new processes did not start, the previous ones keep serving: {}",
        f.reason
    )
}

/// An app with no process serving whose new processes did not start either.
pub(super) fn never_started_text(app: &str, f: &StartFailure) -> String {
    format!(
        "app {app}: failed to start: {}; its routes answer 503 \"failed to start\" while wsgimux retries it",
        f.reason
    )
}

/// A new app that did not start: it keeps its routes (they answer 503) and is retried.
pub(super) fn added_failing_text(app: &str, f: &StartFailure) -> String {
    format!(
        "app {app}: added, but it failed to start: {}; its routes answer 503 \"failed to start\" while wsgimux retries it",
        f.reason
    )
}

pub(super) fn log_failure(app: &str, f: &StartFailure) {
    let skip = f.stderr.len().saturating_sub(LOGGED_STDERR_LINES);
    let tail: Vec<&str> = f.stderr[skip..].iter().map(String::as_str).collect();
    if tail.is_empty() {
        tracing::error!("[{app}] new generation failed: {}", f.reason);
    } else {
        tracing::error!(
            "[{app}] new generation failed: {}; its last stderr lines:\n{}",
            f.reason,
            tail.join("\n")
        );
    }
}

fn join_pids(pids: &[u32]) -> String {
    pids.iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

fn elapsed(since: Instant) -> String {
    format!("{:.2}s", since.elapsed().as_secs_f64())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::{diff, from_yaml, Config};

    fn config(apps: &str, listen: &str) -> Config {
        let yaml = format!("listen: [{listen}]\napps:\n{apps}");
        from_yaml(&yaml, Path::new("/srv/site/wsgimux.yaml")).expect("valid test config")
    }

    const A: &str = "  a:\n    python: python3\n    script: a.wsgi\n";
    const B: &str = "  b:\n    python: python3\n    script: b.wsgi\n    mount: /b\n";
    const B_ENV: &str =
        "  b:\n    python: python3\n    script: b.wsgi\n    mount: /b\n    env: {X: \"1\"}\n";
    const C: &str = "  c:\n    python: python3\n    script: c.wsgi\n    mount: /c\n";

    #[test]
    fn a_summary_names_every_change_and_every_failure() {
        let old = config(&format!("{A}{B}"), "\"127.0.0.1:8080\"");
        let new = config(&format!("{B_ENV}{C}"), "\"127.0.0.1:8081\"");
        let d = diff::diff(&old, &new);
        let pids = |name: &str| Some(if name == "c" { vec![7] } else { vec![5, 6] });
        let line = summarize(&d, &BTreeMap::new(), &BTreeSet::new(), pids);
        assert_eq!(
            line,
            "added c (pid 7); removed a; restarted b (env; pid 5,6); \
             listening on 127.0.0.1:8081; closed 127.0.0.1:8080"
        );
        let failure = StartFailure {
            slot: 0,
            reason: "exited during start-up (exit code 1)".into(),
            stderr: vec!["ImportError: no module".into()],
        };
        let failed = BTreeMap::from([("c".to_string(), failure)]);
        let line = summarize(&d, &failed, &BTreeSet::new(), pids);
        assert!(line.starts_with("removed a; restarted b"), "{line}");
        assert!(
            line.contains("failed c (kept its previous processes: exited during start-up"),
            "{line}"
        );
        let report = applied(
            3,
            &Cause::Hangup,
            Instant::now(),
            line,
            &failed,
            &BTreeMap::new(),
        );
        assert_eq!(report.outcome, Outcome::PartlyApplied);
        assert!(report
            .summary
            .starts_with("reload #3 (SIGHUP): partly applied in "));
        assert_eq!(report.errors.len(), 1);
    }

    #[test]
    fn the_effective_config_keeps_what_failed_as_it_was() {
        let old = config(&format!("{A}{B}"), "\"127.0.0.1:8080\"");
        let new = config(&format!("{B_ENV}{C}"), "\"127.0.0.1:8080\"");
        let d = diff::diff(&old, &new);
        // Everything started: the new file's apps.
        assert_eq!(d.apply(&old.apps), new.apps);
        // b's and c's new processes failed: b keeps its old spec, c (added) stays with its
        // routes, a still goes.
        let failed = ["b".to_string(), "c".to_string()].into();
        let effective = d.without(&failed, &old.apps).apply(&old.apps);
        let names: Vec<&str> = effective.iter().map(|a| a.name.as_str()).collect();
        assert_eq!(names, ["b", "c"]);
        assert_eq!(effective[0], old.apps[1], "b as it ran before");
        assert_eq!(effective[1], new.apps[1], "c as the file says");
    }

    #[test]
    fn rejections_name_the_first_problem_and_count_the_rest() {
        let r = rejected(
            1,
            &Cause::Command,
            vec!["x:1:1: bad".into(), "x:2:1: worse".into()],
        );
        assert_eq!(r.outcome, Outcome::Rejected);
        assert_eq!(
            r.summary,
            "reload #1 (wsgimux reload): rejected, still serving the previous config: x:1:1: bad (and 1 more)"
        );
    }
}
