//! Running an interpreter to learn what it is, once per file: the result is kept for the
//! process's life, keyed by the executable's path and its file's identity (device, inode,
//! size, mtime — a venv rebuilt on another Python, a pyenv upgrade, a reinstall change it), so
//! a reload probes only interpreters it has not seen or whose file changed, and two thousand
//! apps sharing one interpreter probe it once. Probes of one interpreter under way at once
//! wait for the first; at most [`PROBES_AT_ONCE`] run at a time. A failure is shared with
//! those waiting and kept for [`FAILURE_KEPT`] only (a later reload tries again); a wrapper
//! (a pyenv shim, whose Python depends on settings outside its file) is never kept.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::{InterpreterError, PROBE_TIMEOUT};

/// Interpreters started at once to be probed: enough to use the cores, few enough that each
/// answers well within its timeout on a busy machine.
const PROBES_AT_ONCE: usize = 4;
/// How long a failed probe's outcome is reused (by probes that started while it ran, and right
/// after).
const FAILURE_KEPT: Duration = Duration::from_secs(2);

/// Runs on every Python from 2.7 on; one line: implementation, version, free-threaded flag;
/// then `sys.executable`.
const PROBE: &str = "import sys, platform, sysconfig\n\
v = sys.version_info\n\
ft = sysconfig.get_config_var('Py_GIL_DISABLED') or 0\n\
sys.stdout.write('%s %d.%d.%d %d\\n%s\\n' % (platform.python_implementation(), v[0], v[1], v[2], int(ft), sys.executable))\n";

/// What an interpreter said about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Probed {
    pub(super) implementation: String,
    pub(super) version: (u32, u32, u32),
    pub(super) free_threaded: bool,
    /// Its `sys.executable`, when it names an absolute path.
    pub(super) real: Option<PathBuf>,
}

/// An executable as the cache knows it: its path and its file's identity.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Identity {
    path: PathBuf,
    dev: u64,
    ino: u64,
    len: u64,
    mtime_ns: i128,
}

impl Identity {
    fn of(path: &Path) -> Option<Self> {
        let m = std::fs::metadata(path).ok()?;
        Some(Identity {
            path: path.to_path_buf(),
            dev: m.dev(),
            ino: m.ino(),
            len: m.len(),
            mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
        })
    }
}

type Outcome = Result<Probed, Arc<InterpreterError>>;

/// One interpreter's entry: filled by the first probe, which the others wait for.
type Slot = Arc<tokio::sync::Mutex<Option<(Outcome, Instant)>>>;

/// The cache: one slot per identity.
static SLOTS: Mutex<Option<HashMap<Identity, Slot>>> = Mutex::new(None);
static AT_ONCE: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(PROBES_AT_ONCE);

/// What `executable` is: as probed before (the same file), or probed now.
pub(super) async fn run(executable: &Path) -> Result<Probed, InterpreterError> {
    let Some(id) = Identity::of(executable) else {
        // Missing or unreadable: the probe says why.
        return probe_once(executable).await;
    };
    let slot = {
        let mut slots = SLOTS.lock().unwrap_or_else(|e| e.into_inner());
        slots
            .get_or_insert_with(HashMap::new)
            .entry(id)
            .or_default()
            .clone()
    };
    let mut entry = slot.lock().await;
    if let Some((outcome, at)) = &*entry {
        match outcome {
            Ok(p) => return Ok(p.clone()),
            Err(e) if at.elapsed() < FAILURE_KEPT => {
                return Err(InterpreterError::Shared(e.clone()))
            }
            Err(_) => {}
        }
    }
    let outcome = probe_once(executable).await;
    let wrapper =
        matches!(&outcome, Ok(p) if p.real.as_deref().is_some_and(|r| !same_file(r, executable)));
    let kept: Outcome = match outcome {
        Ok(p) => Ok(p),
        Err(InterpreterError::Shared(e)) => Err(e),
        Err(e) => Err(Arc::new(e)),
    };
    let result = kept.clone().map_err(InterpreterError::Shared);
    *entry = (!wrapper).then(|| (kept, Instant::now()));
    result
}

/// Whether two paths are one file (a venv's `bin/python` and the interpreter it links to are;
/// a shim and the Python it runs are not).
fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => a == b,
    }
}

/// Runs the interpreter once, within [`PROBE_TIMEOUT`], when a probe slot is free.
async fn probe_once(executable: &Path) -> Result<Probed, InterpreterError> {
    let _permit = AT_ONCE.acquire().await;
    let mut command = tokio::process::Command::new(executable);
    command
        .args(["-E", "-s", "-c", PROBE])
        // `-E` ignores PYTHON*; a framework build's launcher variable would name another venv.
        .env_remove("__PYVENV_LAUNCHER__")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let path = || executable.to_path_buf();
    let spawn_error = |source| InterpreterError::Spawn {
        path: path(),
        source,
    };
    let child = crate::spawn::retry_while_busy(|| command.spawn())
        .await
        .map_err(spawn_error)?;
    let out = match tokio::time::timeout(PROBE_TIMEOUT, child.wait_with_output()).await {
        Err(_) => return Err(InterpreterError::Timeout { path: path() }),
        Ok(Err(source)) => return Err(spawn_error(source)),
        Ok(Ok(out)) => out,
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    if let Some((implementation, version, free_threaded)) =
        out.status.success().then(|| parse_probe(&stdout)).flatten()
    {
        let real = stdout
            .lines()
            .nth(1)
            .map(str::trim)
            .map(PathBuf::from)
            .filter(|p| p.is_absolute());
        return Ok(Probed {
            implementation,
            version,
            free_threaded,
            real,
        });
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    if let Some(advice) = pyenv_advice(&stderr) {
        return Err(InterpreterError::Pyenv {
            path: path(),
            advice,
        });
    }
    let last = stderr
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("no output");
    Err(InterpreterError::Failed {
        path: path(),
        detail: format!("{} ({})", out.status, last.trim()),
    })
}

/// What a pyenv shim that runs no Python said, made into what to do: the version it wants is
/// not installed (`pyenv: version `3.10.4' is not installed (set by …)`), or the command is not
/// in the version in use (`pyenv: python3.8: command not found`, then the versions that have
/// it). None for any other failure.
fn pyenv_advice(stderr: &str) -> Option<String> {
    let first = stderr.lines().find(|l| l.starts_with("pyenv: "))?;
    let rest = first.strip_prefix("pyenv: ")?;
    if let Some(v) = rest.strip_prefix("version `") {
        let (version, after) = v.split_once('\'')?;
        let set_by = after
            .split_once("(set by ")
            .and_then(|(_, s)| s.strip_suffix(')'))
            .map(|s| format!(" (set by {s})"))
            .unwrap_or_default();
        return Some(format!(
            "pyenv's version {version}{set_by} is not installed: run `pyenv install {version}`, or give python: the path of an installed one ($(pyenv root)/versions/VERSION/bin/python)"
        ));
    }
    let command = rest.strip_suffix(": command not found")?;
    let versions: Vec<&str> = stderr
        .lines()
        .skip_while(|l| !l.contains("exists in these Python versions"))
        .skip(1)
        .map(str::trim)
        .take_while(|l| !l.is_empty())
        .collect();
    Some(match versions.first() {
        Some(v) => format!(
            "{command} is not in the pyenv version in use, but pyenv has it in {}: give python: its path ($(pyenv root)/versions/{v}/bin/{command}), or run `pyenv global {v}`",
            versions.join(", ")
        ),
        None => format!(
            "no installed pyenv version has {command}: run `pyenv install` for it (`pyenv install --list`), or give python: the path of another interpreter"
        ),
    })
}

fn parse_probe(out: &str) -> Option<(String, (u32, u32, u32), bool)> {
    let mut it = out.lines().next()?.split_whitespace();
    let implementation = it.next()?.to_string();
    let mut v = it.next()?.split('.').map(|n| n.parse::<u32>());
    let version = (v.next()?.ok()?, v.next()?.ok()?, v.next()?.ok()?);
    let free_threaded = it.next()? == "1";
    Some((implementation, version, free_threaded))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_output() {
        assert_eq!(
            parse_probe("CPython 3.13.0 0\n"),
            Some(("CPython".into(), (3, 13, 0), false))
        );
        assert_eq!(
            parse_probe("PyPy 3.9.16 0"),
            Some(("PyPy".into(), (3, 9, 16), false))
        );
        assert_eq!(parse_probe("garbage"), None);
    }

    #[test]
    fn a_pyenv_shim_that_runs_nothing_says_what_to_install() {
        let missing =
            "pyenv: version `3.10.99' is not installed (set by /srv/app/.python-version)\n";
        let advice = pyenv_advice(missing).unwrap();
        assert!(advice.starts_with("pyenv's version 3.10.99 (set by /srv/app/.python-version) is not installed: run `pyenv install 3.10.99`"), "{advice}");
        let elsewhere = "pyenv: python3.8: command not found\n\nThe `python3.8' command exists in these Python versions:\n  3.8.18\n\nNote: See 'pyenv help global' for tips on allowing multiple\n      Python versions to be found at the same time.\n";
        let advice = pyenv_advice(elsewhere).unwrap();
        assert!(
            advice.contains("pyenv has it in 3.8.18")
                && advice.contains("versions/3.8.18/bin/python3.8")
                && advice.contains("pyenv global 3.8.18"),
            "{advice}"
        );
        let nowhere = "pyenv: python3.4: command not found\n";
        assert!(pyenv_advice(nowhere)
            .unwrap()
            .contains("no installed pyenv version has python3.4"));
        assert_eq!(
            pyenv_advice("Traceback (most recent call last):\nImportError: x\n"),
            None
        );
    }

    /// A stand-in interpreter that answers the probe and counts how often it was run.
    fn counting_python(dir: &Path) -> (PathBuf, PathBuf) {
        use std::os::unix::fs::PermissionsExt;
        let count = dir.join("runs");
        let exe = dir.join("python3");
        std::fs::write(
            &exe,
            format!(
                "#!/bin/sh\necho run >> {}\nprintf 'CPython 3.12.4 0\\n%s\\n' \"$0\"\n",
                count.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
        (exe, count)
    }

    fn runs(count: &Path) -> usize {
        std::fs::read_to_string(count).map_or(0, |t| t.lines().count())
    }

    #[tokio::test]
    async fn an_interpreter_is_probed_once_until_its_file_changes() {
        let dir = tempfile::tempdir().unwrap();
        let (exe, count) = counting_python(dir.path());
        // Two hundred apps sharing it, all at once: one run.
        let probes = (0..200).map(|_| run(&exe));
        let results = futures_util::future::join_all(probes).await;
        assert!(results
            .iter()
            .all(|r| r.as_ref().is_ok_and(|p| p.version == (3, 12, 4))));
        assert_eq!(runs(&count), 1);
        // A reload later: still the same file, no run.
        run(&exe).await.unwrap();
        assert_eq!(runs(&count), 1);
        // The file changes (a reinstall): probed again, once.
        let text = std::fs::read_to_string(&exe).unwrap();
        std::fs::write(&exe, format!("{text}# reinstalled\n")).unwrap();
        run(&exe).await.unwrap();
        run(&exe).await.unwrap();
        assert_eq!(runs(&count), 2);
    }

    #[tokio::test]
    async fn a_wrapper_is_probed_every_time_and_a_failure_is_kept_only_briefly() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let (real, count) = counting_python(dir.path());
        // A shim: says it is another file (as pyenv's do).
        let shim = dir.path().join("shim");
        std::fs::write(&shim, format!("#!/bin/sh\nexec {}\n", real.display())).unwrap();
        std::fs::set_permissions(&shim, std::fs::Permissions::from_mode(0o755)).unwrap();
        let probed = run(&shim).await.unwrap();
        assert_eq!(probed.real.as_deref(), Some(real.as_path()));
        run(&shim).await.unwrap();
        assert_eq!(
            runs(&count),
            2,
            "a wrapper's Python may change without its file"
        );
        // A failure: shared by the probes right after it, then tried again.
        let tries = dir.path().join("tries");
        let broken = dir.path().join("broken");
        let script = format!(
            "#!/bin/sh\necho x >> {}\necho 'no Python here' >&2\nexit 3\n",
            tries.display()
        );
        std::fs::write(&broken, script).unwrap();
        std::fs::set_permissions(&broken, std::fs::Permissions::from_mode(0o755)).unwrap();
        let e = run(&broken).await.unwrap_err().to_string();
        assert!(e.contains("no Python here"), "{e}");
        assert!(run(&broken).await.is_err());
        assert_eq!(runs(&tries), 1);
        tokio::time::sleep(FAILURE_KEPT + Duration::from_millis(100)).await;
        assert!(run(&broken).await.is_err());
        assert_eq!(runs(&tries), 2);
    }
}
