//! `wsgimux status --stacks APP`: the Python stack of every thread in each of an app's
//! processes, for a live diagnosis without a restart. Asked of each worker's watchdog thread
//! (which runs even when every app thread is stuck) through a file beside the process's
//! socket: the front makes `SOCKET.stacks-wanted`, the worker answers in `SOCKET.stacks`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::Address;
use crate::preflight::WorkerKind;

use super::Overview;

/// How long a worker's watchdog may take to answer (it looks twice a second).
const ANSWER_WITHIN: Duration = Duration::from_secs(3);
const POLL: Duration = Duration::from_millis(50);

/// One process's threads, or why they could not be read.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProcessStacks {
    pub slot: usize,
    pub pid: u32,
    /// Each thread's stack, most recent call last; or what went wrong.
    pub stacks: Result<String, String>,
}

/// The stacks of `app`'s processes now; an error naming what is wrong with the question.
pub async fn collect(overview: &Overview, app: &str) -> Result<Vec<ProcessStacks>, String> {
    let found = overview
        .apps
        .iter()
        .find(|a| &*a.app.spec.name == app)
        .ok_or_else(|| format!("no app is named {app:?}"))?;
    if !matches!(found.app.worker, WorkerKind::Native | WorkerKind::Portable) {
        return Err(format!(
            "{app} runs its own server (command: or upstream:): only wsgimux's workers report their stacks"
        ));
    }
    let asked: Vec<_> = found
        .generation
        .views()
        .iter()
        .filter_map(|v| {
            let endpoint = v.endpoint.as_ref()?;
            match endpoint.address() {
                Address::Unix(socket) => Some((v.slot, endpoint.pid(), socket.clone())),
                _ => None,
            }
        })
        .collect();
    if asked.is_empty() {
        return Err(format!("{app} has no process running"));
    }
    let answers = asked.into_iter().map(|(slot, pid, socket)| async move {
        ProcessStacks {
            slot,
            pid,
            stacks: ask(&socket).await,
        }
    });
    Ok(futures_util::future::join_all(answers).await)
}

/// Asks the worker on `socket` for its threads' stacks.
async fn ask(socket: &Path) -> Result<String, String> {
    let with = |suffix: &str| {
        let mut name = socket.as_os_str().to_owned();
        name.push(suffix);
        PathBuf::from(name)
    };
    let (wanted, answer) = (with(".stacks-wanted"), with(".stacks"));
    let _ = tokio::fs::remove_file(&answer).await;
    tokio::fs::write(&wanted, b"")
        .await
        .map_err(|e| format!("cannot ask at {}: {e}", wanted.display()))?;
    let deadline = tokio::time::Instant::now() + ANSWER_WITHIN;
    while tokio::time::Instant::now() < deadline {
        tokio::time::sleep(POLL).await;
        if let Ok(text) = tokio::fs::read_to_string(&answer).await {
            let _ = tokio::fs::remove_file(&answer).await;
            return Ok(text);
        }
    }
    let _ = tokio::fs::remove_file(&wanted).await;
    Err(format!(
        "no answer within {}s (a process started before this wsgimux version, or one that cannot write beside its socket)",
        ANSWER_WITHIN.as_secs()
    ))
}

/// The stacks as `status --stacks` prints them.
pub fn render_text(app: &str, processes: &[ProcessStacks]) -> String {
    let mut out = String::new();
    for p in processes {
        out.push_str(&format!("{app} process {} (pid {}):\n", p.slot, p.pid));
        match &p.stacks {
            Ok(text) => out.push_str(text),
            Err(why) => out.push_str(&format!("  {why}\n")),
        }
        out.push('\n');
    }
    out
}
