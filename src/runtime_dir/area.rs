//! The per-user runtime area, where default runtime dirs live: `$XDG_RUNTIME_DIR/wsgimux`
//! where that is set and short enough, else `/tmp/wsgimux-UID` — never under `$TMPDIR`, whose
//! length (a Mac's `/var/folders/…/T/`) would leave no room for the apps' socket paths.
//!
//! Owns the area's folder (made mode 0700, refused when it is a link or someone else's), the
//! locks that say a folder in it is in use, and the sweep that removes what servers that are
//! gone left there. Every folder a server makes in the area holds a `lock` file it keeps
//! locked (`flock`) for its life, so a folder whose lock can be taken belongs to nobody; the
//! shared worker files are held by a shared lock in the same way.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

pub const LOCK_FILE: &str = "lock";
/// How long a start may try for a folder's lock that another process holds for a moment (a
/// sweep removing the folder, a server starting on it).
const LOCK_WAIT: Duration = Duration::from_secs(1);
/// A folder without a lock file (made by an older wsgimux) is left alone while it is this
/// young: its server may be starting.
const UNLOCKED_GRACE: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum AreaError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} is not this user's own folder ({why}); remove it or set runtime_dir", path.display())]
    NotOurs { path: PathBuf, why: String },
    #[error("{} is in use by another wsgimux that is starting or running", path.display())]
    Busy { path: PathBuf },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> AreaError + '_ {
    move |source| AreaError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The area for this user, given `XDG_RUNTIME_DIR` (when set) and the uid; `fits` says whether
/// a folder is short enough for the socket paths below it.
pub fn path_for(xdg: Option<&Path>, uid: u32, fits: impl Fn(&Path) -> bool) -> PathBuf {
    if let Some(x) = xdg.filter(|x| x.is_absolute() && x.is_dir()) {
        let area = x.join("wsgimux");
        if fits(&area) {
            return area;
        }
    }
    PathBuf::from(format!("/tmp/wsgimux-{uid}"))
}

/// Makes the area (mode 0700) or checks the one there: a folder, not a link, owned by this
/// user, writable by nobody else.
pub fn ensure(area: &Path) -> Result<(), AreaError> {
    match std::fs::DirBuilder::new().mode(0o700).create(area) {
        Ok(()) => return Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // $XDG_RUNTIME_DIR/wsgimux's parent exists (path_for checked); /tmp always does.
            return Err(io(area)(e));
        }
        Err(e) => return Err(io(area)(e)),
    }
    let meta = std::fs::symlink_metadata(area).map_err(io(area))?;
    // SAFETY: getuid cannot fail.
    let uid = unsafe { libc::getuid() };
    let why = if meta.file_type().is_symlink() {
        Some("it is a symbolic link".to_string())
    } else if !meta.is_dir() {
        Some("it is not a folder".to_string())
    } else if meta.uid() != uid {
        Some(format!("it belongs to uid {}", meta.uid()))
    } else if meta.mode() & 0o022 != 0 {
        Some(format!(
            "others may write to it (mode {:o})",
            meta.mode() & 0o777
        ))
    } else {
        None
    };
    match why {
        Some(why) => Err(AreaError::NotOurs {
            path: area.to_path_buf(),
            why,
        }),
        None => Ok(()),
    }
}

/// Lets other accounts pass through the area (mode 0711: in, not list) to a folder they were
/// given: a server that becomes `user:`, apps that run as their own accounts.
pub fn allow_passage(area: &Path) -> std::io::Result<()> {
    std::fs::set_permissions(area, std::fs::Permissions::from_mode(0o711))
}

/// A folder's lock, held while the value lives (closing the file releases it).
#[derive(Debug)]
pub struct DirLock {
    _file: File,
}

/// Takes `dir`'s lock, making the folder (mode 0700) and its lock file when they are missing:
/// exclusive for a server's own folders, shared for the worker files several servers use.
/// Waits a moment for a holder that is about to let go (a sweep removing the folder: the lock
/// is then taken again on the folder made anew).
pub fn lock(dir: &Path, exclusive: bool) -> Result<DirLock, AreaError> {
    let path = dir.join(LOCK_FILE);
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    loop {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io(dir))?;
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io(&path))?;
        if try_flock(&file, exclusive) && same_file(&file, &path) {
            return Ok(DirLock { _file: file });
        }
        if std::time::Instant::now() >= deadline {
            return Err(AreaError::Busy {
                path: dir.to_path_buf(),
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn try_flock(file: &File, exclusive: bool) -> bool {
    let op = if exclusive {
        libc::LOCK_EX
    } else {
        libc::LOCK_SH
    };
    // SAFETY: flock on a file descriptor this function's caller owns.
    unsafe { libc::flock(file.as_raw_fd(), op | libc::LOCK_NB) == 0 }
}

/// Whether the locked file is still the one at `path` (a sweep may have removed the folder
/// between the open and the lock).
fn same_file(file: &File, path: &Path) -> bool {
    match (file.metadata(), std::fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.ino() == b.ino() && a.dev() == b.dev(),
        _ => false,
    }
}

/// What a folder in the area is, by its name.
#[derive(Debug, PartialEq, Eq)]
pub enum Entry {
    /// A server's runtime dir, or a folder of links to one: removed when nobody holds it.
    Server,
    /// One build's worker files, shared by the servers of that build.
    Workers,
    /// Not wsgimux's (or not to be touched).
    Other,
}

pub const WORKERS_PREFIX: &str = "workers-";

pub fn classify(name: &str) -> Entry {
    let hex = |s: &str| s.len() == 12 && s.bytes().all(|b| b.is_ascii_hexdigit());
    if hex(name) || name.strip_prefix("wsgimux-").is_some_and(hex) {
        Entry::Server
    } else if name.starts_with(WORKERS_PREFIX) {
        Entry::Workers
    } else {
        Entry::Other
    }
}

/// Removes what servers that are gone left in the area: their folders (sockets, dangling
/// links, records) and worker files no running server uses. A folder whose records name
/// children still running is kept for its own config's next start, which stops them
/// (`leftover`); `keep` is the caller's own folder. Returns the names removed.
pub fn sweep(area: &Path, keep: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(area) else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for e in entries.flatten() {
        let path = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        if path == keep || !e.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let kind = classify(&name);
        if kind == Entry::Other {
            continue;
        }
        // Held until the folder is gone: a server that wants it waits (`lock`), then makes
        // it anew.
        let held = match take_unused(&path) {
            Some(held) => Some(held),
            None if kind == Entry::Server && abandoned(&path) => None,
            None => continue,
        };
        if kind == Entry::Server && crate::leftover::any_alive(&path) {
            continue;
        }
        if std::fs::remove_dir_all(&path).is_ok() {
            removed.push(name);
        }
        drop(held);
    }
    removed
}

/// The lock of a folder that has a lock file nobody holds, taken.
fn take_unused(dir: &Path) -> Option<File> {
    let file = File::options().write(true).open(dir.join(LOCK_FILE)).ok()?;
    try_flock(&file, true).then_some(file)
}

/// A folder an older wsgimux made (no lock file) whose control socket no longer answers and
/// that is not new.
fn abandoned(dir: &Path) -> bool {
    if dir.join(LOCK_FILE).exists() {
        return false;
    }
    let old = std::fs::metadata(dir)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| SystemTime::now().duration_since(t).ok())
        .is_some_and(|age| age > UNLOCKED_GRACE);
    old && std::os::unix::net::UnixStream::connect(dir.join("control.sock")).is_err()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_area_is_xdg_runtime_dir_when_it_fits_else_tmp() {
        let xdg = tempfile::tempdir().unwrap();
        let fits = |_: &Path| true;
        assert_eq!(
            path_for(Some(xdg.path()), 501, fits),
            xdg.path().join("wsgimux")
        );
        assert_eq!(path_for(None, 501, fits), Path::new("/tmp/wsgimux-501"));
        // Too long, relative or missing: /tmp, never the long folder.
        assert_eq!(
            path_for(Some(xdg.path()), 501, |_| false),
            Path::new("/tmp/wsgimux-501")
        );
        assert_eq!(
            path_for(Some(Path::new("run/user")), 7, fits),
            Path::new("/tmp/wsgimux-7")
        );
        let gone = xdg.path().join("gone");
        assert_eq!(path_for(Some(&gone), 7, fits), Path::new("/tmp/wsgimux-7"));
    }

    #[test]
    fn an_area_that_is_a_link_or_open_to_others_is_refused() {
        let base = tempfile::tempdir().unwrap();
        let area = base.path().join("wsgimux-1");
        ensure(&area).unwrap();
        let mode = std::fs::metadata(&area).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o700);
        ensure(&area).unwrap();
        std::fs::set_permissions(&area, std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = ensure(&area).unwrap_err().to_string();
        assert!(err.contains("others may write to it (mode 777)"), "{err}");
        let link = base.path().join("wsgimux-2");
        std::os::unix::fs::symlink(&area, &link).unwrap();
        let err = ensure(&link).unwrap_err().to_string();
        assert!(err.contains("is a symbolic link"), "{err}");
    }

    #[test]
    fn a_locked_folder_is_busy_and_the_sweep_removes_only_what_nobody_holds() {
        let area = tempfile::tempdir().unwrap();
        let area = area.path();
        let mine = area.join("0123456789ab");
        let held = lock(&mine, true).unwrap();
        assert!(matches!(lock(&mine, true), Err(AreaError::Busy { .. })));
        let gone = area.join("aaaaaaaaaaaa");
        drop(lock(&gone, true).unwrap());
        std::fs::write(gone.join("3.0.1.sock"), "").unwrap();
        // A killed server's folder whose record names a child still running (this process).
        let orphans = area.join("bbbbbbbbbbbb");
        drop(lock(&orphans, true).unwrap());
        let me = std::process::id();
        std::fs::create_dir_all(orphans.join("children")).unwrap();
        let started = std::fs::read_to_string(format!("/proc/{me}/stat"))
            .ok()
            .and_then(|s| {
                s.rsplit(')')
                    .next()?
                    .split_whitespace()
                    .nth(19)
                    .map(String::from)
            });
        if let Some(started) = &started {
            std::fs::write(
                orphans.join("children").join(me.to_string()),
                format!("{me} {started}\n"),
            )
            .unwrap();
        }
        let used = area.join("workers-1");
        let shared = lock(&used, false).unwrap();
        let second = lock(&used, false).unwrap();
        let unused_workers = area.join("workers-2");
        drop(lock(&unused_workers, false).unwrap());
        let other = area.join("notes");
        std::fs::create_dir(&other).unwrap();
        let mut removed = sweep(area, Path::new("/nowhere"));
        removed.sort();
        let mut want = vec!["aaaaaaaaaaaa".to_string(), "workers-2".to_string()];
        if started.is_none() {
            want.insert(1, "bbbbbbbbbbbb".into());
        }
        assert_eq!(removed, want);
        assert!(mine.is_dir() && used.is_dir() && other.is_dir());
        // Once let go, the rest goes too (but the folder that is not wsgimux's).
        drop((held, shared, second));
        let _ = std::fs::remove_dir_all(orphans.join("children"));
        let mut removed = sweep(area, Path::new("/nowhere"));
        removed.sort();
        assert!(removed.contains(&"0123456789ab".to_string()), "{removed:?}");
        assert!(removed.contains(&"workers-1".to_string()), "{removed:?}");
        assert!(other.is_dir());
    }
}
