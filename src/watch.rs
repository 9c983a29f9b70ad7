//! File watching for reloads: the config file (however it is saved) and, for apps with
//! `reload_on_changes`, their Python code. Turns bursts of file-system events into single
//! [`Trigger`]s for `reload`; decides nothing else.
//!
//! The config file's folder is watched rather than the file, because editors and deployment
//! tools replace files by rename and swap symlinks, which a watch on the file itself would
//! lose. Events only start a check: a trigger is sent when the file's fingerprint (target,
//! mtime, size, content hash) differs from the last one, so unrelated files in the folder and
//! re-saves of the same bytes by the same write do nothing.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use notify::event::{AccessKind, AccessMode, CreateKind, ModifyKind};
use notify::{Event, EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::config::{AppSpec, Entry};
use crate::runtime_dir::fnv1a;
use crate::trigger::Trigger;

/// A burst of events is over after this much quiet.
const QUIET: Duration = Duration::from_millis(100);
/// The quiet wait while a writer still has the file open (or the platform cannot tell).
const WRITING_QUIET: Duration = Duration::from_millis(300);
/// A file that does not validate yet may still be being written: wait this long for more.
const INCOMPLETE_WAIT: Duration = Duration::from_millis(500);
/// However busy the folder, a check happens at least this often during a burst.
const BURST_MAX: Duration = Duration::from_secs(2);
/// Code changes come in bursts (an editor's save, a `git checkout`): wait for the quiet.
const CODE_QUIET: Duration = Duration::from_millis(300);
/// Folders watched per app at most; large trees are usually a virtualenv or data.
const MAX_CODE_DIRS: usize = 4096;

#[derive(Debug, thiserror::Error)]
#[error("cannot watch {}: {source}", path.display())]
pub struct WatchError {
    path: PathBuf,
    #[source]
    source: notify::Error,
}

/// What identifies a version of the config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fingerprint {
    target: Option<PathBuf>,
    modified: Option<SystemTime>,
    len: u64,
    hash: u64,
}

/// The fingerprint of the file `path` leads to now (symlinks followed).
pub fn fingerprint(path: &Path) -> Fingerprint {
    let meta = std::fs::metadata(path).ok();
    let content = std::fs::read(path).unwrap_or_default();
    Fingerprint {
        target: std::fs::canonicalize(path).ok(),
        modified: meta.as_ref().and_then(|m| m.modified().ok()),
        len: meta.map_or(0, |m| m.len()),
        hash: fnv1a(&content),
    }
}

/// Events from notify's thread into the async world.
fn event_channel() -> (
    notify::Result<RecommendedWatcher>,
    mpsc::UnboundedReceiver<Event>,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    let watcher = notify::recommended_watcher(move |res: notify::Result<Event>| match res {
        Ok(ev) => {
            let _ = tx.send(ev);
        }
        Err(e) => tracing::warn!("file watcher: {e}"),
    });
    (watcher, rx)
}

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
    watcher: &mut RecommendedWatcher,
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

/// Whether the file validates (a half-written one usually does not).
fn looks_complete(path: &Path) -> bool {
    std::fs::read_to_string(path)
        .map(|text| crate::config::from_yaml(&text, path).is_ok())
        .unwrap_or(false)
}

async fn watch_config(
    path: PathBuf,
    mut last: Fingerprint,
    mut watcher: RecommendedWatcher,
    mut dirs: BTreeSet<PathBuf>,
    mut events: mpsc::UnboundedReceiver<Event>,
    triggers: mpsc::Sender<Trigger>,
) {
    let mut names = config_names(&path);
    loop {
        let first = loop {
            match events.recv().await {
                None => return,
                Some(ev) if concerns(&ev, &names) => {
                    tracing::debug!("config watch: {:?} {:?}", ev.kind, ev.paths);
                    break ev;
                }
                Some(_) => {}
            }
        };
        let mut writing = writing_state(&first).unwrap_or(false);
        let burst_end = tokio::time::Instant::now() + BURST_MAX;
        let mut last_event = tokio::time::Instant::now();
        let mut quiet = if writing { WRITING_QUIET } else { QUIET };
        loop {
            // Unrelated events (a log file beside the config) do not restart the quiet wait.
            let until = (last_event + quiet).min(burst_end);
            match tokio::time::timeout_at(until, events.recv()).await {
                Ok(None) => return,
                Ok(Some(ev)) => {
                    if concerns(&ev, &names) {
                        tracing::debug!("config watch: {:?} {:?}", ev.kind, ev.paths);
                        last_event = tokio::time::Instant::now();
                        if let Some(w) = writing_state(&ev) {
                            writing = w;
                        }
                        quiet = if writing { WRITING_QUIET } else { QUIET };
                    }
                    if tokio::time::Instant::now() < burst_end {
                        continue;
                    }
                }
                Err(_) => {}
            }
            // Quiet (or the burst has gone on too long): look at the file.
            let now = fingerprint(&path);
            if now == last {
                break;
            }
            let over = tokio::time::Instant::now() >= burst_end;
            if !over && !looks_complete(&path) {
                // Re-read until it validates or the writing is over.
                quiet = INCOMPLETE_WAIT;
                writing = true;
                let until = tokio::time::Instant::now() + INCOMPLETE_WAIT;
                let more = loop {
                    match tokio::time::timeout_at(until, events.recv()).await {
                        Ok(None) => return,
                        Ok(Some(ev)) if concerns(&ev, &names) => break true,
                        Ok(Some(_)) => {}
                        Err(_) => break false,
                    }
                };
                if more {
                    last_event = tokio::time::Instant::now();
                    continue;
                }
            }
            // Nothing about the file moved since `now` was taken (or it would have been seen).
            last = now;
            if triggers.send(Trigger::ConfigFile).await.is_err() {
                return;
            }
            break;
        }
        // A symlink swap may have moved the target to another folder or name.
        names = config_names(&path);
        if let Err(e) = watch_dirs(&mut watcher, &mut dirs, &path) {
            tracing::warn!("{e}");
        }
    }
}

/// Watches an app's code for `reload_on_changes`; dropping it stops the watch.
pub struct CodeWatcher {
    /// What it watches: a different set needs a new watcher.
    pub roots: Vec<PathBuf>,
    task: JoinHandle<()>,
}

impl Drop for CodeWatcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The folders holding an app's code: the script's folder (or the working dir a module is
/// imported from) and its `python_path`.
pub fn code_roots(spec: &AppSpec) -> Vec<PathBuf> {
    let mut roots = vec![match &spec.entry {
        Entry::Script { path, .. } => path
            .parent()
            .map_or_else(|| spec.working_dir.clone(), Path::to_path_buf),
        Entry::Module { .. } | Entry::Command { .. } => spec.working_dir.clone(),
        // Nothing of it runs here.
        Entry::Upstream { .. } => return Vec::new(),
    }];
    roots.extend(spec.python_path.iter().cloned());
    roots.sort();
    roots.dedup();
    // A root inside another is already covered.
    let all = roots.clone();
    roots.retain(|r| !all.iter().any(|o| o != r && r.starts_with(o)));
    roots
}

/// Folders never watched: hidden ones, caches, installed packages and virtualenvs.
fn ignored_dir(dir: &Path) -> bool {
    let Some(name) = dir.file_name().and_then(|n| n.to_str()) else {
        return true;
    };
    name.starts_with('.')
        || matches!(
            name,
            "__pycache__" | "node_modules" | "site-packages" | "dist-packages"
        )
        || dir.join("pyvenv.cfg").is_file()
}

fn is_code_file(path: &Path) -> bool {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let ext_ok = matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("py" | "wsgi")
    );
    ext_ok
        && !name.starts_with('.')
        && !path
            .ancestors()
            .skip(1)
            .any(|a| a.file_name().is_some_and(|n| n == "__pycache__"))
}

/// The folders under `root` to watch, breadth first, skipping ignored ones.
fn code_dirs(root: &Path, limit: usize) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut queue = std::collections::VecDeque::from([root.to_path_buf()]);
    while let Some(dir) = queue.pop_front() {
        if out.len() >= limit {
            break;
        }
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        out.push(dir);
        for e in entries.flatten() {
            let p = e.path();
            if e.file_type().is_ok_and(|t| t.is_dir()) && !ignored_dir(&p) {
                queue.push_back(p);
            }
        }
    }
    out
}

impl CodeWatcher {
    pub fn start(
        app: &str,
        roots: Vec<PathBuf>,
        triggers: mpsc::Sender<Trigger>,
    ) -> Result<Self, WatchError> {
        let (watcher, events) = event_channel();
        let mut watcher = watcher.map_err(|source| WatchError {
            path: roots.first().cloned().unwrap_or_default(),
            source,
        })?;
        let mut watched = BTreeSet::new();
        for root in &roots {
            add_code_dirs(app, &mut watcher, &mut watched, root)?;
        }
        tracing::info!(
            "[{app}] reload_on_changes: watching {} folder(s) under {}",
            watched.len(),
            roots
                .iter()
                .map(|r| r.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
        let task = tokio::spawn(watch_code(
            app.to_string(),
            watcher,
            watched,
            events,
            triggers,
        ));
        Ok(CodeWatcher { roots, task })
    }
}

fn add_code_dirs(
    app: &str,
    watcher: &mut RecommendedWatcher,
    watched: &mut BTreeSet<PathBuf>,
    root: &Path,
) -> Result<(), WatchError> {
    let room = MAX_CODE_DIRS.saturating_sub(watched.len());
    let dirs = code_dirs(root, room);
    if dirs.len() >= room {
        tracing::warn!(
            "[{app}] reload_on_changes: more than {MAX_CODE_DIRS} folders; watching the first {MAX_CODE_DIRS}"
        );
    }
    for d in dirs {
        if watched.contains(&d) {
            continue;
        }
        watcher
            .watch(&d, RecursiveMode::NonRecursive)
            .map_err(|source| WatchError {
                path: d.clone(),
                source,
            })?;
        watched.insert(d);
    }
    Ok(())
}

async fn watch_code(
    app: String,
    mut watcher: RecommendedWatcher,
    mut watched: BTreeSet<PathBuf>,
    mut events: mpsc::UnboundedReceiver<Event>,
    triggers: mpsc::Sender<Trigger>,
) {
    let mut changed: Option<PathBuf> = None;
    let mut burst_end = tokio::time::Instant::now();
    let mut last_change = tokio::time::Instant::now();
    loop {
        let ev = if changed.is_some() {
            // Unrelated events do not restart the quiet wait.
            let until = (last_change + CODE_QUIET).min(burst_end);
            match tokio::time::timeout_at(until, events.recv()).await {
                Ok(ev) => ev,
                Err(_) => {
                    if let Some(file) = changed.take() {
                        let t = Trigger::Code {
                            app: app.clone(),
                            file,
                        };
                        if triggers.send(t).await.is_err() {
                            return;
                        }
                    }
                    continue;
                }
            }
        } else {
            events.recv().await
        };
        let Some(ev) = ev else { return };
        let relevant = matches!(
            ev.kind,
            EventKind::Create(_)
                | EventKind::Remove(_)
                | EventKind::Modify(ModifyKind::Data(_))
                | EventKind::Modify(ModifyKind::Name(_))
                | EventKind::Modify(ModifyKind::Any)
                | EventKind::Access(AccessKind::Close(AccessMode::Write))
        );
        if !relevant {
            continue;
        }
        for p in &ev.paths {
            if matches!(ev.kind, EventKind::Create(_)) && p.is_dir() && !ignored_dir(p) {
                if let Err(e) = add_code_dirs(&app, &mut watcher, &mut watched, p) {
                    tracing::warn!("[{app}] reload_on_changes: {e}");
                }
            } else if is_code_file(p) {
                last_change = tokio::time::Instant::now();
                if changed.is_none() {
                    burst_end = last_change + BURST_MAX;
                }
                changed = Some(p.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_files_and_ignored_folders() {
        assert!(is_code_file(Path::new("/srv/app/views.py")));
        assert!(is_code_file(Path::new("/srv/app/app.wsgi")));
        assert!(!is_code_file(Path::new("/srv/app/.#views.py")));
        assert!(!is_code_file(Path::new("/srv/app/__pycache__/v.py")));
        assert!(!is_code_file(Path::new("/srv/app/notes.txt")));
        assert!(!is_code_file(Path::new("/srv/app/views.pyc")));
        assert!(ignored_dir(Path::new("/srv/app/.git")));
        assert!(ignored_dir(Path::new("/srv/app/__pycache__")));
        assert!(!ignored_dir(Path::new("/srv/app/templates")));
    }

    #[test]
    fn virtualenvs_in_the_tree_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("pkg/sub")).unwrap();
        std::fs::create_dir_all(root.join("venv/lib/python3.13/site-packages/x")).unwrap();
        std::fs::write(root.join("venv/pyvenv.cfg"), "home = /usr\n").unwrap();
        std::fs::create_dir_all(root.join(".git/objects")).unwrap();
        let mut dirs = code_dirs(root, 100);
        dirs.sort();
        let rel: Vec<_> = dirs
            .iter()
            .map(|d| d.strip_prefix(root).unwrap().to_path_buf())
            .collect();
        assert_eq!(
            rel,
            vec![
                PathBuf::new(),
                PathBuf::from("pkg"),
                PathBuf::from("pkg/sub")
            ]
        );
    }

    #[test]
    fn fingerprints_follow_symlinks_and_content() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.yaml");
        let b = dir.path().join("b.yaml");
        let link = dir.path().join("wsgimux.yaml");
        std::fs::write(&a, "x").unwrap();
        std::fs::write(&b, "x").unwrap();
        std::os::unix::fs::symlink(&a, &link).unwrap();
        let first = fingerprint(&link);
        assert_eq!(first, fingerprint(&link));
        std::fs::remove_file(&link).unwrap();
        std::os::unix::fs::symlink(&b, &link).unwrap();
        assert_ne!(first, fingerprint(&link), "a swapped symlink is a change");
        let second = fingerprint(&link);
        std::fs::write(&b, "y").unwrap();
        assert_ne!(second, fingerprint(&link));
    }
}
