//! Finding and probing a Python: a path, a command on PATH, or a virtualenv folder → the
//! executable to run, and what it is (implementation, version, free-threaded or not).
//!
//! Owns the probe cache (`probe`): each interpreter file is run once per identity (path,
//! inode, size, mtime) for the process's life, bounded by a timeout and a limit on probes at
//! once.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::PythonSpec;

mod probe;

/// How long an interpreter may take to answer the probe (a cold start on a busy machine).
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(15);

/// A Python that runs, and what it said about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interpreter {
    /// The executable wsgimux runs.
    pub executable: PathBuf,
    /// The virtualenv folder, when `python:` named one (or an executable inside one).
    pub venv: Option<PathBuf>,
    /// `CPython`, `PyPy`, …
    pub implementation: String,
    pub version: (u32, u32, u32),
    pub free_threaded: bool,
}

impl Interpreter {
    pub fn version_string(&self) -> String {
        let (a, b, c) = self.version;
        format!("{a}.{b}.{c}")
    }
}

impl fmt::Display for Interpreter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.implementation, self.version_string())?;
        if self.free_threaded {
            f.write_str(" (free-threaded)")?;
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum InterpreterError {
    #[error("{0} does not exist")]
    Missing(PathBuf),
    #[error("{dir} is a folder with no Python in it (no bin/python, bin/python3 or bin/python3.X, as a virtualenv or an installation's folder has)")]
    NotAVenv { dir: PathBuf },
    #[error("{0:?} was not found on PATH")]
    NotOnPath(String),
    #[error("{path} could not be started: {source}")]
    Spawn {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} did not answer within {}s", PROBE_TIMEOUT.as_secs())]
    Timeout { path: PathBuf },
    #[error("{} is Apple's python3, which needs the Command Line Tools (`xcode-select --install`), or point `python:` at Homebrew's `python@3.x` (e.g. /opt/homebrew/opt/python@3.13/bin/python3.13)", path.display())]
    AppleStub { path: PathBuf },
    #[error("{path} is a pyenv shim that runs no Python: {advice}")]
    Pyenv { path: PathBuf, advice: String },
    #[error("{path} does not run: {detail}")]
    Failed { path: PathBuf, detail: String },
    /// The same failure, shared by the probes of one interpreter that waited for it.
    #[error(transparent)]
    Shared(std::sync::Arc<InterpreterError>),
}

/// Resolves `python:` to an executable (and its virtualenv, if any). Touches the file system.
pub fn resolve(spec: &PythonSpec) -> Result<(PathBuf, Option<PathBuf>), InterpreterError> {
    match spec {
        PythonSpec::Path(p) => {
            if p.is_dir() {
                let exe =
                    in_folder(p).ok_or_else(|| InterpreterError::NotAVenv { dir: p.clone() })?;
                // A virtualenv, or an installation's own folder (a Homebrew keg, a framework's
                // `Versions/3.x`, a pyenv version): only the first sets VIRTUAL_ENV.
                let venv = p.join("pyvenv.cfg").is_file().then(|| p.clone());
                Ok((exe, venv))
            } else if p.exists() {
                Ok((p.clone(), venv_of(p)))
            } else {
                Err(InterpreterError::Missing(p.clone()))
            }
        }
        PythonSpec::Command(name) => {
            let path = std::env::var_os("PATH").unwrap_or_default();
            std::env::split_paths(&path)
                .map(|d| d.join(name))
                .find(|c| is_executable(c))
                .map(|exe| {
                    let venv = venv_of(&exe);
                    (exe, venv)
                })
                .ok_or_else(|| InterpreterError::NotOnPath(name.clone()))
        }
    }
}

/// The interpreter in a folder given as `python:`: a virtualenv's `bin/python`, an
/// installation's `bin/python3` (Homebrew's kegs and python.org's framework versions have no
/// `bin/python`), or its one `bin/python3.X`.
fn in_folder(dir: &Path) -> Option<PathBuf> {
    let named = ["bin/python", "bin/python3"]
        .iter()
        .map(|c| dir.join(c))
        .find(|c| is_executable(c));
    named.or_else(|| {
        let mut versioned: Vec<PathBuf> = std::fs::read_dir(dir.join("bin"))
            .ok()?
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                let name = p.file_name().map(|n| n.to_string_lossy().into_owned());
                name.is_some_and(|n| {
                    n.strip_prefix("python3.")
                        .is_some_and(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                })
            })
            .filter(|p| is_executable(p))
            .collect();
        versioned.sort();
        versioned.pop()
    })
}

/// Apple's `/usr/bin/python3` (or a virtualenv made from it): a stub that runs the Command Line
/// Tools' Python, and without them opens a dialog to install them and fails — under launchd,
/// a bare probe failure. `venv_home`: the `home` of the virtualenv the executable is in.
pub fn is_apple_stub(executable: &Path, venv_home: Option<&Path>) -> bool {
    let stub = Path::new("/usr/bin/python3");
    let real = std::fs::canonicalize(executable).unwrap_or_else(|_| executable.to_path_buf());
    executable == stub || real == stub || venv_home == Some(Path::new("/usr/bin"))
}

/// The `home` a virtualenv's `pyvenv.cfg` names.
fn venv_home(venv: &Path) -> Option<PathBuf> {
    let cfg = std::fs::read_to_string(venv.join("pyvenv.cfg")).ok()?;
    cfg.lines().find_map(|l| {
        let (k, v) = l.split_once('=')?;
        (k.trim() == "home").then(|| PathBuf::from(v.trim()))
    })
}

/// Whether Apple's Command Line Tools are installed (`xcode-select -p` succeeds): what
/// `/usr/bin/python3` needs to be a Python.
async fn command_line_tools() -> bool {
    let run = tokio::process::Command::new("xcode-select")
        .arg("-p")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .status();
    matches!(
        tokio::time::timeout(PROBE_TIMEOUT, run).await,
        Ok(Ok(status)) if status.success()
    )
}

/// `<venv>/bin/python` → `<venv>`, recognised by its `pyvenv.cfg`.
fn venv_of(exe: &Path) -> Option<PathBuf> {
    let dir = exe.parent()?.parent()?;
    dir.join("pyvenv.cfg").is_file().then(|| dir.to_path_buf())
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Resolves the interpreter and learns what it is: from the probe cache when the same file
/// was probed before (`probe::run`), else by running it once.
pub async fn probe(spec: &PythonSpec) -> Result<Interpreter, InterpreterError> {
    let (executable, venv) = resolve(spec)?;
    // Recognised before it is run: run, it would ask for the tools with a dialog, and fail.
    let home = venv.as_deref().and_then(venv_home);
    if cfg!(target_os = "macos")
        && is_apple_stub(&executable, home.as_deref())
        && !command_line_tools().await
    {
        return Err(InterpreterError::AppleStub { path: executable });
    }
    let probed = probe::run(&executable).await?;
    // A command found on PATH may be a wrapper (pyenv's shims): run what it runs.
    let executable = match (spec, &probed.real) {
        (PythonSpec::Command(_), Some(real)) if real.is_absolute() && real.is_file() => {
            real.clone()
        }
        _ => executable,
    };
    Ok(Interpreter {
        executable,
        venv,
        implementation: probed.implementation,
        version: probed.version,
        free_threaded: probed.free_threaded,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An executable file at `dir/rel` (a stand-in: only its place is read).
    fn exe(dir: &Path, rel: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let p = dir.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    /// The Pythons a Mac has, laid out as each installs itself (no Mac needed: this reads the
    /// trees): `python:` as each one's executable, as its folder, and as a virtualenv of it.
    #[test]
    fn mac_python_layouts_resolve_to_their_interpreter() {
        use std::os::unix::fs::symlink;
        let t = tempfile::tempdir().unwrap();
        let t = t.path();
        let path = |p: &Path| resolve(&PythonSpec::Path(p.to_path_buf())).unwrap();
        // Homebrew: opt/python@3.13 → Cellar/python@3.13/3.13.1, whose bin/python3.13 links
        // into its framework; no bin/python.
        let keg = t.join("opt/homebrew/Cellar/python@3.13/3.13.1");
        let real = exe(
            &keg,
            "Frameworks/Python.framework/Versions/3.13/bin/python3.13",
        );
        std::fs::create_dir_all(keg.join("bin")).unwrap();
        symlink(&real, keg.join("bin/python3.13")).unwrap();
        std::fs::create_dir_all(t.join("opt/homebrew/opt")).unwrap();
        symlink(&keg, t.join("opt/homebrew/opt/python@3.13")).unwrap();
        let opt = t.join("opt/homebrew/opt/python@3.13");
        let given = opt.join("bin/python3.13");
        assert_eq!(
            path(&given),
            (given.clone(), None),
            "run as given, not resolved"
        );
        assert_eq!(
            path(&opt),
            (opt.join("bin/python3.13"), None),
            "a keg is no venv"
        );
        // python.org's framework build: Versions/3.12/bin/python3 (and python3.12).
        let version = t.join("Library/Frameworks/Python.framework/Versions/3.12");
        exe(&version, "bin/python3.12");
        let python3 = exe(&version, "bin/python3");
        assert_eq!(path(&version), (python3.clone(), None));
        assert_eq!(path(&python3), (python3, None));
        // pyenv: versions/X/bin/python.
        let pyenv = t.join(".pyenv/versions/3.11.7");
        let py = exe(&pyenv, "bin/python");
        assert_eq!(path(&pyenv), (py, None));
        // A virtualenv of Homebrew's Python: pyvenv.cfg's home is the keg's bin.
        let venv = t.join("venvs/shop");
        std::fs::create_dir_all(venv.join("bin")).unwrap();
        symlink(&given, venv.join("bin/python")).unwrap();
        std::fs::write(
            venv.join("pyvenv.cfg"),
            format!("home = {}\n", opt.join("bin").display()),
        )
        .unwrap();
        let in_venv = venv.join("bin/python");
        assert_eq!(path(&venv), (in_venv.clone(), Some(venv.clone())));
        assert_eq!(path(&in_venv), (in_venv.clone(), Some(venv.clone())));
        assert_eq!(venv_home(&venv), Some(opt.join("bin")));
        assert!(!is_apple_stub(&in_venv, venv_home(&venv).as_deref()));
        // Apple's stub, and a venv made from it.
        assert!(is_apple_stub(Path::new("/usr/bin/python3"), None));
        let apple_venv = t.join("venvs/apple");
        std::fs::create_dir_all(&apple_venv).unwrap();
        std::fs::write(apple_venv.join("pyvenv.cfg"), "home = /usr/bin\n").unwrap();
        assert!(is_apple_stub(
            &exe(&apple_venv, "bin/python"),
            venv_home(&apple_venv).as_deref()
        ));
        let err = InterpreterError::AppleStub {
            path: "/usr/bin/python3".into(),
        }
        .to_string();
        assert!(
            err.contains("xcode-select --install") && err.contains("python@3."),
            "{err}"
        );
        // A folder with no Python in it says what it looked for.
        let empty = t.join("empty");
        std::fs::create_dir_all(&empty).unwrap();
        let err = resolve(&PythonSpec::Path(empty)).unwrap_err().to_string();
        assert!(
            err.contains("no bin/python, bin/python3 or bin/python3.X"),
            "{err}"
        );
    }

    #[test]
    fn missing_paths_are_named() {
        let e = resolve(&PythonSpec::Path("/nonexistent/python".into())).unwrap_err();
        assert_eq!(e.to_string(), "/nonexistent/python does not exist");
        let e = resolve(&PythonSpec::Command("no-such-python-xyz".into())).unwrap_err();
        assert!(e.to_string().contains("not found on PATH"), "{e}");
    }
}
