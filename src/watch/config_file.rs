//! The config file's watcher: its folder (and its symlink target's) watched, bursts of events
//! settled, a trigger sent only when the file's fingerprint (its metadata) changed.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::event::{AccessKind, AccessMode, CreateKind, ModifyKind};
use notify::{Event, EventKind, RecursiveMode};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::trigger::Trigger;

use super::{event_channel, fingerprint, AnyWatcher, Fingerprint, WatchError, BURST_MAX};

/// A burst of events is over after this much quiet.
const QUIET: Duration = Duration::from_millis(100);
/// The quiet wait while a writer still has the file open (or the platform cannot tell).
const WRITING_QUIET: Duration = Duration::from_millis(300);

/// Watches the config file; dropping it stops the watch.
pub struct ConfigWatcher {
    task: JoinHandle<()>,
}

impl Drop for ConfigWatcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ConfigWatcher {
    /// Watches `path` (absolute); `baseline` is the version already loaded.
    pub fn start(
        path: PathBuf,
        baseline: Fingerprint,
        triggers: mpsc::Sender<Trigger>,
    ) -> Result<Self, WatchError> {
        let (watcher, events) = event_channel();
        let mut watcher = watcher.map_err(|source| WatchError {
            path: path.clone(),
            source,
        })?;
        let mut dirs = BTreeSet::new();
        watch_dirs(&mut watcher, &mut dirs, &path)?;
        let task = tokio::spawn(watch_config(
            path, baseline, watcher, dirs, events, triggers,
        ));
        Ok(ConfigWatcher { task })
    }
}

/// The folders whose entries decide what `path` reads: its own, and its symlink target's.
fn config_dirs(path: &Path) -> BTreeSet<PathBuf> {
    let mut dirs = BTreeSet::new();
    if let Some(d) = path.parent() {
        dirs.insert(d.to_path_buf());
    }
    if let Some(d) = std::fs::canonicalize(path)
        .ok()
        .and_then(|t| t.parent().map(Path::to_path_buf))
    {
        dirs.insert(d);
    }
    dirs
}

/// Brings the watched folders in line with where `path` leads now.
fn watch_dirs(
    watcher: &mut AnyWatcher,
    dirs: &mut BTreeSet<PathBuf>,
    path: &Path,
) -> Result<(), WatchError> {
    let wanted = config_dirs(path);
    for d in dirs.difference(&wanted) {
        let _ = watcher.unwatch(d);
    }
    for d in wanted.difference(dirs) {
        watcher
            .watch(d, RecursiveMode::NonRecursive)
            .map_err(|source| WatchError {
                path: d.clone(),
                source,
            })?;
    }
    *dirs = wanted;
    Ok(())
}

/// The names whose changes can change what the config path reads: its own, its symlink
/// target's, and the first folder of a relative link (`config.yaml -> ..data/config.yaml`, where
/// `..data` is the symlink that deployments swap).
fn config_names(path: &Path) -> Vec<std::ffi::OsString> {
    let mut names: Vec<_> = path.file_name().into_iter().map(|n| n.to_owned()).collect();
    if let Some(n) = std::fs::canonicalize(path)
        .ok()
        .and_then(|t| t.file_name().map(|n| n.to_owned()))
    {
        names.push(n);
    }
    if let Ok(link) = std::fs::read_link(path) {
        if let Some(std::path::Component::Normal(first)) = link.components().next() {
            if link.components().count() > 1 {
                names.push(first.to_owned());
            }
        }
    }
    names
}

/// Whether an event is about the config (the folder holds other files: logs, editors' swap
/// files, runtime dirs).
fn concerns(ev: &Event, names: &[std::ffi::OsString]) -> bool {
    // Reads (ours included: every check reads the file) change nothing.
    let changes = match ev.kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    };
    changes
        && ev
            .paths
            .iter()
            .any(|p| p.file_name().is_some_and(|n| names.iter().any(|m| m == n)))
}

/// Whether an event says a writer has the config file open (true) or closed it (false).
fn writing_state(ev: &Event) -> Option<bool> {
    match ev.kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => Some(false),
        EventKind::Modify(ModifyKind::Data(_))
        | EventKind::Modify(ModifyKind::Any)
        | EventKind::Create(CreateKind::File)
        | EventKind::Create(CreateKind::Any) => Some(true),
        _ => None,
    }
}

async fn watch_config(
    path: PathBuf,
    last: Fingerprint,
    mut watcher: AnyWatcher,
    mut dirs: BTreeSet<PathBuf>,
    events: mpsc::UnboundedReceiver<Event>,
    triggers: mpsc::Sender<Trigger>,
) {
    let names = config_names(&path);
    let mut w = ConfigEvents {
        path,
        last,
        names,
        events,
    };
    loop {
        let Some(first) = w.next_concerning().await else {
            return;
        };
        match w.settle(first).await {
            None => return,
            Some(true) => {
                if triggers.send(Trigger::ConfigFile).await.is_err() {
                    return;
                }
            }
            Some(false) => {}
        }
        // A symlink swap may have moved the target to another folder or name.
        w.names = config_names(&w.path);
        if let Err(e) = watch_dirs(&mut watcher, &mut dirs, &w.path) {
            tracing::warn!("{e}");
        }
    }
}

/// The config watcher's state between events.
struct ConfigEvents {
    path: PathBuf,
    /// The version last reported (or loaded at start).
    last: Fingerprint,
    /// The names that lead to the file (itself, its symlink target).
    names: Vec<std::ffi::OsString>,
    events: mpsc::UnboundedReceiver<Event>,
}

impl ConfigEvents {
    /// The next event about the config file; None once the watcher is gone.
    async fn next_concerning(&mut self) -> Option<Event> {
        loop {
            let ev = self.events.recv().await?;
            if concerns(&ev, &self.names) {
                tracing::debug!("config watch: {:?} {:?}", ev.kind, ev.paths);
                return Some(ev);
            }
        }
    }

    /// Waits for a burst that began with `first` to go quiet (or to last too long), then
    /// looks at the file: Some(true) when it changed and looks complete, Some(false) when it
    /// did not change, None once the watcher is gone.
    async fn settle(&mut self, first: Event) -> Option<bool> {
        let mut writing = writing_state(&first).unwrap_or(false);
        let burst_end = tokio::time::Instant::now() + BURST_MAX;
        let mut last_event = tokio::time::Instant::now();
        let mut quiet = if writing { WRITING_QUIET } else { QUIET };
        loop {
            // Unrelated events (a log file beside the config) do not restart the quiet wait.
            let until = (last_event + quiet).min(burst_end);
            if let Ok(ev) = tokio::time::timeout_at(until, self.events.recv()).await {
                let ev = ev?;
                if concerns(&ev, &self.names) {
                    tracing::debug!("config watch: {:?} {:?}", ev.kind, ev.paths);
                    last_event = tokio::time::Instant::now();
                    writing = writing_state(&ev).unwrap_or(writing);
                    quiet = if writing { WRITING_QUIET } else { QUIET };
                }
                if tokio::time::Instant::now() < burst_end {
                    continue;
                }
            }
            // Quiet (or the burst has gone on too long): look at the file's metadata (its
            // contents are the reloader's to read; one still half-written is its to wait for).
            let now = fingerprint(&self.path);
            if now == self.last {
                return Some(false);
            }
            self.last = now;
            return Some(true);
        }
    }
}
