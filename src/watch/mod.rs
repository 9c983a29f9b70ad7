//! File watching for reloads: the config file (however it is saved) and, for apps with
//! `reload_on_changes`, their Python code. Turns bursts of file-system events into single
//! [`Trigger`]s for `reload`; decides nothing else.
//!
//! The config file's folder is watched rather than the file, because editors and deployment
//! tools replace files by rename and swap symlinks, which a watch on the file itself would
//! lose. Events only start a check: a trigger is sent when the file's fingerprint (target,
//! inode, mtime, size — its metadata; the watcher never reads the file) differs from the last
//! one, so unrelated files in the folder do nothing. The reloader reads, parses and validates
//! the file, once per edit.
//!
//! Rooms: `config_file` (the config watcher), `code` (the code watchers), `restart_file`
//! (apps' `restart_file`s).

mod code;
mod config_file;
mod restart_file;

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use notify::{Event, Watcher};
use tokio::sync::mpsc;

pub use code::{code_roots, CodeWatcher};
pub use config_file::ConfigWatcher;
pub use restart_file::RestartFileWatcher;

/// However busy a folder, a check happens at least this often during a burst of events.
const BURST_MAX: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
#[error("cannot watch {}: {source}", path.display())]
pub struct WatchError {
    pub(super) path: PathBuf,
    #[source]
    pub(super) source: notify::Error,
}

/// What identifies a version of the config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fingerprint {
    target: Option<PathBuf>,
    inode: u64,
    modified: Option<SystemTime>,
    len: u64,
}

/// The fingerprint of the file `path` leads to now (symlinks followed).
pub fn fingerprint(path: &Path) -> Fingerprint {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).ok();
    Fingerprint {
        target: std::fs::canonicalize(path).ok(),
        inode: meta.as_ref().map_or(0, |m| m.ino()),
        modified: meta.as_ref().and_then(|m| m.modified().ok()),
        len: meta.map_or(0, |m| m.len()),
    }
}

/// A file watcher of whichever backend is in use.
pub(super) type AnyWatcher = Box<dyn Watcher + Send>;

/// How often the poll backend looks at the watched folders.
const POLL_INTERVAL: Duration = Duration::from_millis(250);

/// Events from notify's thread into the async world. The backend is the system's own
/// (inotify, FSEvents, kqueue), or with `WSGIMUX_WATCHER=poll` notify's poll backend, for file
/// systems that send no events (NFS, some container volumes).
pub(super) fn event_channel() -> (notify::Result<AnyWatcher>, mpsc::UnboundedReceiver<Event>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let handler = move |res: notify::Result<Event>| match res {
        Ok(ev) => {
            let _ = tx.send(ev);
        }
        Err(e) => tracing::warn!("file watcher: {e}"),
    };
    let watcher: notify::Result<AnyWatcher> = if polling() {
        let config = notify::Config::default()
            .with_poll_interval(POLL_INTERVAL)
            .with_compare_contents(true);
        notify::PollWatcher::new(handler, config).map(|w| Box::new(w) as AnyWatcher)
    } else {
        notify::recommended_watcher(handler).map(|w| Box::new(w) as AnyWatcher)
    };
    (watcher, rx)
}

fn polling() -> bool {
    std::env::var("WSGIMUX_WATCHER").is_ok_and(|v| v.eq_ignore_ascii_case("poll"))
}

#[cfg(test)]
mod tests {
    use super::*;

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
