//! The runtime dir: where it is (configured, or a per-config default in the per-user area,
//! `area`), creating it, the files wsgimux writes there for its children (the portable worker
//! and the native worker's library), the names of the apps' sockets in it, with their length
//! check, and removing a default one at a clean stop.
//!
//! Does not decide who owns the folder after start-up (`app` hands it to `user:`) and starts
//! nothing; the control socket's name is `control`'s.

pub mod area;

use std::path::{Path, PathBuf};

use crate::config::Config;
use crate::native;

/// The portable worker, carried inside the binary and written to the runtime dir at start.
const PORTABLE_WORKER: &str = include_str!("../portable_worker.py");
/// Unix socket paths must fit in sockaddr_un: 104 bytes on macOS, 108 on Linux, with the NUL.
pub const MAX_SOCKET_PATH: usize = 103;
/// The digits a generation or start number reaches in a server's life: ten million, more
/// than a reload a minute for nineteen years.
const COUNTER_DIGITS: usize = 7;
/// A default runtime dir's name: 12 hex digits of a hash of the config's path.
const DEFAULT_NAME_LEN: usize = 12;

#[derive(Debug, thiserror::Error)]
pub enum RuntimeDirError {
    #[error("runtime_dir {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("runtime_dir {} is too long for the apps' sockets ({len} bytes at the most, the limit is {MAX_SOCKET_PATH}); set runtime_dir to a shorter path", path.display())]
    TooLong { path: PathBuf, len: usize },
    #[error("{0}")]
    Area(#[from] area::AreaError),
}

/// Writes the launcher (the portable worker) into `dir`, readable by every account (for
/// `check`, which imports apps under their own accounts from a scratch folder).
pub fn write_launcher(dir: &Path) -> std::io::Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("wsgimux_worker.py");
    std::fs::write(&path, PORTABLE_WORKER)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))?;
    Ok(path)
}

/// The files wsgimux writes for its children: the launcher (which is also the portable worker)
/// and the folder holding the native worker's extension module.
#[derive(Debug, Clone)]
pub struct WorkerFiles {
    pub launcher: PathBuf,
    pub native_dir: PathBuf,
}

/// The runtime dir of a validated config: the configured one, else the default for its file.
pub fn of_config(config: &Config) -> PathBuf {
    match &config.runtime_dir {
        Some(d) => d.clone(),
        None => default_for(&config.file),
    }
}

/// The runtime dir of the server started with the config file `file` (absolute), for
/// `wsgimux reload` and `status`: read from the file when it says, even when the file is
/// otherwise invalid (that is when a reload must report it).
pub fn of_file(file: &Path) -> PathBuf {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    match crate::config::runtime_dir_hint(&text, file) {
        Some(d) => d,
        None => default_for(file),
    }
}

/// The per-user area default runtime dirs go in (see [`area`]).
pub fn area() -> PathBuf {
    // SAFETY: getuid cannot fail.
    let uid = unsafe { libc::getuid() };
    let xdg = std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from);
    area::path_for(xdg.as_deref(), uid, |a| {
        let dir = a.join("0".repeat(DEFAULT_NAME_LEN));
        longest_socket_path(&dir, SocketRoom::TYPICAL) <= MAX_SOCKET_PATH
    })
}

/// The default runtime dir for the config file `file`, as given and made absolute (not
/// resolved through links: a deploy that swaps a `current` link keeps its server's name, and
/// `wsgimux restart --config current/wsgimux.yaml` still finds it after the swap).
pub fn default_for(file: &Path) -> PathBuf {
    let hash = fnv1a(file.as_os_str().as_encoded_bytes());
    area().join(format!("{:012x}", hash & 0xffff_ffff_ffff))
}

/// The folders in the area that lead to the server of `file` whose runtime dir is `dir`,
/// besides `dir` itself: the default one for the file as given (when `runtime_dir` is set)
/// and the one for its real path now (so the file's real name finds the server too).
pub fn link_dirs(file: &Path, dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let real = std::fs::canonicalize(file).ok();
    for f in std::iter::once(file.to_path_buf()).chain(real) {
        let d = default_for(&f);
        if d != dir && !out.contains(&d) {
            out.push(d);
        }
    }
    out
}

/// A stable 64-bit FNV-1a hash: names folders after a path, fingerprints file contents. Not
/// for anything an attacker chooses to collide.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf29ce484222325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100000001b3)
    })
}

/// A runtime dir in use: made, locked for this server's life, with the worker files written.
#[derive(Debug)]
pub struct RuntimeDir {
    pub path: PathBuf,
    pub files: WorkerFiles,
    /// A default one, in the area: removed at a clean stop.
    in_area: bool,
    _lock: area::DirLock,
    /// The shared worker files' lock (default dirs only).
    _workers: Option<area::DirLock>,
}

impl RuntimeDir {
    /// After a clean stop (every child reaped): a default runtime dir is removed whole; a
    /// configured one, the user's folder, is left.
    pub fn close(self) {
        if self.in_area {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// Checks that the sockets fit under `dir`, creates it (mode 0700) and takes its lock, removes
/// sockets a killed run left, and writes the workers: for a default runtime dir, once per
/// build in the area (shared by that build's servers), after sweeping away what servers that
/// are gone left there.
pub fn prepare(dir: &Path, config: &Config) -> Result<RuntimeDir, RuntimeDirError> {
    use std::os::unix::fs::PermissionsExt;
    check_socket_paths(dir, config)?;
    let err = |source| RuntimeDirError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let in_area = config.runtime_dir.is_none();
    // Other accounts pass through to the folder: the one wsgimux becomes (`user:`), apps that
    // run as their own (to their socket folders and the worker files).
    let own_folders = SocketRoom::of(config).own_folders;
    let others_pass = config.user.is_some() || own_folders;
    let mut workers = None;
    let home = match dir.parent().filter(|_| in_area) {
        Some(area_dir) => {
            area::ensure(area_dir)?;
            if others_pass {
                area::allow_passage(area_dir).map_err(err)?;
            }
            let removed = area::sweep(area_dir, dir);
            if !removed.is_empty() {
                tracing::debug!(
                    "removed {} left by servers that are gone",
                    removed.join(", ")
                );
            }
            let home = area_dir.join(format!("{}{:016x}", area::WORKERS_PREFIX, build_hash()));
            workers = Some(area::lock(&home, false)?);
            // Read by apps that run as their own accounts.
            std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o755)).map_err(err)?;
            home
        }
        None => dir.to_path_buf(),
    };
    let lock = area::lock(dir, true)?;
    let mode = if own_folders { 0o711 } else { 0o700 };
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode)).map_err(err)?;
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "sock" || x == "tmp") {
                let _ = std::fs::remove_file(&p);
            }
        }
    }
    let files = write_workers(&home).map_err(|source| RuntimeDirError::Io {
        path: home.clone(),
        source,
    })?;
    Ok(RuntimeDir {
        path: dir.to_path_buf(),
        files,
        in_area,
        _lock: lock,
        _workers: workers,
    })
}

/// This binary's worker files, as one number: what names their shared folder in the area.
fn build_hash() -> u64 {
    fnv1a(PORTABLE_WORKER.as_bytes()) ^ native::hash()
}

/// The launcher and the native worker, written into `home` unless already there.
fn write_workers(home: &Path) -> std::io::Result<WorkerFiles> {
    // Written under a temporary name and renamed: a concurrent start never reads half a file.
    let worker = home.join("wsgimux_worker.py");
    if std::fs::read_to_string(&worker).ok().as_deref() != Some(PORTABLE_WORKER) {
        let tmp = home.join(format!(".wsgimux_worker.{}.tmp", std::process::id()));
        std::fs::write(&tmp, PORTABLE_WORKER)?;
        std::fs::rename(&tmp, &worker)?;
    }
    let native_dir = native::install(home)?;
    Ok(WorkerFiles {
        launcher: worker,
        native_dir,
    })
}

/// What decides the longest socket path under a runtime dir.
#[derive(Debug, Clone, Copy)]
pub struct SocketRoom {
    /// Some app runs as its own account, in a socket folder of its own.
    pub own_folders: bool,
    /// The most processes one app runs.
    pub processes: u32,
}

impl SocketRoom {
    /// For choosing the area, before any config is known.
    const TYPICAL: SocketRoom = SocketRoom {
        own_folders: true,
        processes: 999,
    };

    pub fn of(config: &Config) -> Self {
        SocketRoom {
            own_folders: config
                .apps
                .iter()
                .any(|a| a.process.user.is_some() || a.process.group.is_some()),
            processes: config
                .apps
                .iter()
                .map(|a| a.process.processes)
                .max()
                .unwrap_or(1),
        }
    }
}

/// Err when the longest socket path the config's apps will use under `dir` would not fit in
/// [`MAX_SOCKET_PATH`].
pub fn check_socket_paths(dir: &Path, config: &Config) -> Result<(), RuntimeDirError> {
    let len = longest_socket_path(dir, SocketRoom::of(config));
    if len > MAX_SOCKET_PATH {
        return Err(RuntimeDirError::TooLong {
            path: dir.to_path_buf(),
            len,
        });
    }
    Ok(())
}

/// The longest socket path an app will use under `dir`, counted as the workers make it: in an
/// app's own socket folder if there are any, with generation and start numbers of
/// [`COUNTER_DIGITS`] and the highest slot, while the worker binds it under a temporary name
/// (`.<pid>.tmp`, with the digits this system's pids reach).
pub fn longest_socket_path(dir: &Path, room: SocketRoom) -> usize {
    let counter = 10u64.pow(COUNTER_DIGITS as u32) - 1;
    let base = if room.own_folders {
        app_socket_dir(dir, "any")
    } else {
        dir.to_path_buf()
    };
    let slot = room.processes.saturating_sub(1) as usize;
    let socket = socket_path(&base, counter, slot, counter);
    socket.as_os_str().len() + ".".len() + pid_digits() + ".tmp".len()
}

/// The digits of the largest pid (Linux: `kernel.pid_max`; macOS: 99998).
fn pid_digits() -> usize {
    std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .ok()
        .and_then(|t| t.trim().parse::<u64>().ok())
        .map_or(7, |max| max.to_string().len())
}

/// The socket folder of an app that runs as its own account: named by a short id of the app,
/// so that its length does not depend on the app's name.
pub fn app_socket_dir(dir: &Path, app: &str) -> PathBuf {
    dir.join(format!("{:08x}.d", fnv1a(app.as_bytes()) as u32))
}

/// A socket for one start of one process. Generation numbers are unique among all apps of one
/// wsgimux, and the attempt is fresh per start, so a dying process's socket is never mistaken
/// for its successor's; the app is not in the name, which therefore stays short.
pub fn socket_path(dir: &Path, generation: u64, slot: usize, attempt: u64) -> PathBuf {
    dir.join(format!("{generation}.{slot}.{attempt}.sock"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(yaml: &str, dir: &Path) -> Config {
        let file = dir.join("wsgimux.yaml");
        crate::config::from_yaml(yaml, &file).unwrap()
    }

    const ONE_APP: &str = "apps:\n  a:\n    python: python3\n    script: a.py\n";

    #[test]
    fn socket_paths_do_not_grow_with_app_names_and_long_dirs_are_refused_before_writing() {
        let long = "a".repeat(200);
        assert_eq!(
            app_socket_dir(Path::new("/r"), &long).as_os_str().len(),
            app_socket_dir(Path::new("/r"), "a").as_os_str().len()
        );
        assert_ne!(
            app_socket_dir(Path::new("/r"), "a"),
            app_socket_dir(Path::new("/r"), "b")
        );
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("x".repeat(80));
        let yaml = format!("runtime_dir: {}\n{ONE_APP}", run.display());
        let err = prepare(&run, &config(&yaml, dir.path())).unwrap_err();
        assert!(matches!(err, RuntimeDirError::TooLong { len, .. } if len > MAX_SOCKET_PATH));
        assert!(!run.exists());
        let run = dir.path().join("run");
        let yaml = format!("runtime_dir: {}\n{ONE_APP}", run.display());
        let prepared = prepare(&run, &config(&yaml, dir.path())).unwrap();
        assert!(prepared.files.launcher.is_file() && prepared.files.native_dir.is_dir());
        // A configured runtime dir is the user's: a clean stop leaves it.
        prepared.close();
        assert!(run.is_dir());
    }

    #[test]
    fn the_length_check_counts_the_sockets_the_config_uses() {
        // The area's default dirs: /tmp/wsgimux-UID/HASH, with the largest uid, fit with room
        // to spare whatever the config.
        let default = Path::new("/tmp/wsgimux-4294967295/0123456789ab");
        assert!(longest_socket_path(default, SocketRoom::TYPICAL) < MAX_SOCKET_PATH - 20);
        // 60 bytes of folder: too long for apps with their own socket folders and 999
        // processes, long enough for one process of an app that runs as wsgimux does.
        let dir = Path::new("/").join("d".repeat(59));
        let small = SocketRoom {
            own_folders: false,
            processes: 1,
        };
        assert!(longest_socket_path(&dir, small) <= MAX_SOCKET_PATH);
        let len = longest_socket_path(&dir, small);
        // What a worker really binds there, while it binds (".<pid>.tmp").
        let used = socket_path(&dir, 9_999_999, 0, 9_999_999).as_os_str().len()
            + format!(".{}.tmp", "9".repeat(pid_digits())).len();
        assert_eq!(len, used);
        let big = Path::new("/").join("d".repeat(75));
        assert!(longest_socket_path(&big, SocketRoom::TYPICAL) > MAX_SOCKET_PATH);
    }

    #[test]
    fn stale_sockets_go_and_the_default_dir_is_named_by_the_path_as_given() {
        let dir = tempfile::tempdir().unwrap();
        let stale = dir.path().join("a.1.0.1.sock");
        std::fs::write(&stale, "").unwrap();
        let yaml = format!("runtime_dir: {}\n{ONE_APP}", dir.path().display());
        let _prepared = prepare(dir.path(), &config(&yaml, dir.path())).unwrap();
        assert!(!stale.exists());
        let a = default_for(Path::new("/srv/a/current/wsgimux.yaml"));
        assert_eq!(a, default_for(Path::new("/srv/a/current/wsgimux.yaml")));
        assert_ne!(a, default_for(Path::new("/srv/b/current/wsgimux.yaml")));
        // Not resolved through links: swapping `current` keeps the name.
        let releases = dir.path().join("releases");
        std::fs::create_dir_all(releases.join("1")).unwrap();
        std::fs::create_dir_all(releases.join("2")).unwrap();
        let current = dir.path().join("current");
        std::os::unix::fs::symlink(releases.join("1"), &current).unwrap();
        let file = current.join("wsgimux.yaml");
        std::fs::write(releases.join("1/wsgimux.yaml"), "").unwrap();
        std::fs::write(releases.join("2/wsgimux.yaml"), "").unwrap();
        let before = default_for(&file);
        let links = link_dirs(&file, &before);
        assert_eq!(links, vec![default_for(&releases.join("1/wsgimux.yaml"))]);
        std::fs::remove_file(&current).unwrap();
        std::os::unix::fs::symlink(releases.join("2"), &current).unwrap();
        assert_eq!(default_for(&file), before);
    }
}
