//! The runtime dir: where it is (configured, or a per-user, per-config default), creating it,
//! the files wsgimux writes there for its children (the portable worker and the native
//! worker's library), and the names of the apps' sockets in it, with their length check.
//!
//! Does not decide who owns the folder after start-up (`app` hands it to `user:`) and starts
//! nothing; the control socket's name is `control`'s.

use std::path::{Path, PathBuf};

use crate::config::Config;
use crate::native;

/// The portable worker, carried inside the binary and written to the runtime dir at start.
const PORTABLE_WORKER: &str = include_str!("portable_worker.py");
/// Unix socket paths must fit in sockaddr_un: 104 bytes on macOS, 108 on Linux, with the NUL.
pub const MAX_SOCKET_PATH: usize = 103;
/// What the workers add while they bind under a temporary name: `.<pid>.tmp`, pids of up to
/// seven digits.
const TEMP_SUFFIX: usize = ".4194304.tmp".len();

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

pub fn default_for(file: &Path) -> PathBuf {
    // A hash of the config's canonical path: stable across runs, distinct per config, and the
    // same for every spelling of the file (relative, through a symlink) that `wsgimux status`
    // or `reload` may be given.
    let canonical = std::fs::canonicalize(file).unwrap_or_else(|_| file.to_path_buf());
    let hash = fnv1a(canonical.as_os_str().as_encoded_bytes());
    let name = format!("wsgimux-{:012x}", hash & 0xffff_ffff_ffff);
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(d) if Path::new(&d).is_dir() => Path::new(&d).join(name),
        _ => {
            // SAFETY: getuid cannot fail.
            let uid = unsafe { libc::getuid() };
            temp_base().join(format!("wsgimux-{uid}")).join(name)
        }
    }
}

/// Where per-user runtime dirs go without `XDG_RUNTIME_DIR`. macOS's `$TMPDIR`
/// (`/var/folders/xx/<28 characters>/T/`) leaves too little of a socket path's 104 bytes, so
/// there it is `/tmp` (per-user folders of mode 0700 below it).
fn temp_base() -> PathBuf {
    if cfg!(target_os = "macos") {
        PathBuf::from("/tmp")
    } else {
        std::env::temp_dir()
    }
}

/// A stable 64-bit FNV-1a hash: names folders after a path, fingerprints file contents. Not
/// for anything an attacker chooses to collide.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf29ce484222325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100000001b3)
    })
}

/// Checks that the sockets fit under `dir`, creates it (mode 0700), removes sockets a killed
/// run left, and writes the workers.
pub fn prepare(dir: &Path) -> Result<WorkerFiles, RuntimeDirError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    check_socket_paths(dir)?;
    let err = |source| RuntimeDirError::Io {
        path: dir.to_path_buf(),
        source,
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(err)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(err)?;
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "sock" || x == "tmp") {
                let _ = std::fs::remove_file(&p);
            }
        }
    }
    // Written under a temporary name and renamed: a concurrent start never reads half a file.
    let worker = dir.join("wsgimux_worker.py");
    if std::fs::read_to_string(&worker).ok().as_deref() != Some(PORTABLE_WORKER) {
        let tmp = dir.join(format!(".wsgimux_worker.{}.tmp", std::process::id()));
        std::fs::write(&tmp, PORTABLE_WORKER).map_err(err)?;
        std::fs::rename(&tmp, &worker).map_err(err)?;
    }
    let native_dir = native::install(dir).map_err(err)?;
    Ok(WorkerFiles {
        launcher: worker,
        native_dir,
    })
}

/// Err when the longest socket path under `dir` would not fit in [`MAX_SOCKET_PATH`]. Socket
/// names do not grow with app names, so this depends on the folder alone.
pub fn check_socket_paths(dir: &Path) -> Result<(), RuntimeDirError> {
    let len = longest_socket_path(dir);
    if len > MAX_SOCKET_PATH {
        return Err(RuntimeDirError::TooLong {
            path: dir.to_path_buf(),
            len,
        });
    }
    Ok(())
}

/// The longest socket path any app will use under `dir`: in an app's own socket folder, with
/// the largest generation, slot and attempt numbers, while the worker binds it.
fn longest_socket_path(dir: &Path) -> usize {
    let max = u64::from(u32::MAX);
    let socket = socket_path(&app_socket_dir(dir, "any"), max, 999, max);
    socket.as_os_str().len() + TEMP_SUFFIX
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
        // macOS's default: /tmp/wsgimux-UID/wsgimux-HASH, with room to spare.
        let mac = Path::new("/tmp/wsgimux-4294967/wsgimux-0123456789ab");
        assert!(check_socket_paths(mac).is_ok());
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("x".repeat(80));
        let err = prepare(&run).unwrap_err();
        assert!(matches!(err, RuntimeDirError::TooLong { len, .. } if len > MAX_SOCKET_PATH));
        assert!(!run.exists());
        let files = prepare(&dir.path().join("run")).unwrap();
        assert!(files.launcher.is_file() && files.native_dir.is_dir());
    }

    #[test]
    fn stale_sockets_go_and_the_default_dir_is_stable_per_file() {
        let dir = tempfile::tempdir().unwrap();
        let stale = dir.path().join("a.1.0.1.sock");
        std::fs::write(&stale, "").unwrap();
        prepare(dir.path()).unwrap();
        assert!(!stale.exists());
        let a = default_for(Path::new("/srv/a/wsgimux.yaml"));
        assert_eq!(a, default_for(Path::new("/srv/a/wsgimux.yaml")));
        assert_ne!(a, default_for(Path::new("/srv/b/wsgimux.yaml")));
    }
}
