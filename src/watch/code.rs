//! The code watchers of `reload_on_changes` apps: the app's folders (virtualenvs, caches and
//! VCS folders skipped), `.py`/`.wsgi` changes settled into one trigger per burst.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::event::{AccessKind, AccessMode, ModifyKind};
use notify::{Event, EventKind, RecursiveMode};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::config::{AppSpec, Entry};
use crate::trigger::Trigger;

use super::{event_channel, AnyWatcher, WatchError, BURST_MAX};

/// Code changes come in bursts (an editor's save, a `git checkout`): wait for the quiet.
const CODE_QUIET: Duration = Duration::from_millis(300);
/// Folders watched per app at most; large trees are usually a virtualenv or data.
const MAX_CODE_DIRS: usize = 4096;

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
    let mut roots = vec![match &spec.process.entry {
        Entry::Script { path, .. } => path
            .parent()
            .map_or_else(|| spec.process.working_dir.clone(), Path::to_path_buf),
        Entry::Module { .. } | Entry::Command { .. } => spec.process.working_dir.clone(),
        // Nothing of it runs here.
        Entry::Upstream { .. } => return Vec::new(),
    }];
    roots.extend(spec.process.python_path.iter().cloned());
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
    watcher: &mut AnyWatcher,
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
    mut watcher: AnyWatcher,
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
}
