//! Children a killed wsgimux left behind. Each child wsgimux starts is recorded in the runtime
//! dir (`children/<pid>`: its pid and the time the OS says it started) until it is reaped; a
//! `kill -9` of wsgimux leaves the records, and the next start on the same runtime dir stops
//! every recorded process that is still the same process (same pid *and* start time, so a
//! reused pid is never signalled): TERM to its process group, a short grace, KILL.
//!
//! On Linux a parent-death signal already reaches direct children, so this catches the rest:
//! children that ignore SIGTERM, `command:` servers that fork away. On macOS, which has no
//! parent-death signal, it is the way children of a killed instance are found. Starts nothing.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long a leftover process group may take to go after SIGTERM before SIGKILL.
const LEFTOVER_GRACE: Duration = Duration::from_secs(2);
const RECORDS: &str = "children";

/// One child's record; removed (the child reaped) when dropped.
#[derive(Debug)]
pub struct ChildRecord {
    path: Option<PathBuf>,
}

impl ChildRecord {
    /// Records `pid`, a child just started, under `runtime_dir`. Never fails the start: a child
    /// that cannot be recorded is only logged.
    pub fn write(runtime_dir: &Path, pid: u32) -> Self {
        let Some(started) = start_time(pid) else {
            return ChildRecord { path: None };
        };
        let dir = runtime_dir.join(RECORDS);
        let path = dir.join(pid.to_string());
        let written = std::fs::create_dir_all(&dir)
            .and_then(|()| std::fs::write(&path, format!("{pid} {started}\n")));
        match written {
            Ok(()) => ChildRecord { path: Some(path) },
            Err(e) => {
                tracing::debug!("cannot record child {pid} in {}: {e}", dir.display());
                ChildRecord { path: None }
            }
        }
    }
}

impl Drop for ChildRecord {
    fn drop(&mut self) {
        if let Some(p) = &self.path {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Whether a record under `runtime_dir` names a process that still runs as the same process
/// (a killed wsgimux's child): that folder's records are still needed.
pub fn any_alive(runtime_dir: &Path) -> bool {
    let Ok(entries) = std::fs::read_dir(runtime_dir.join(RECORDS)) else {
        return false;
    };
    entries.flatten().any(|e| {
        let text = std::fs::read_to_string(e.path()).unwrap_or_default();
        let mut words = text.split_whitespace().map(str::parse::<u64>);
        match (words.next(), words.next()) {
            (Some(Ok(pid)), Some(Ok(started))) => u32::try_from(pid)
                .is_ok_and(|pid| start_time(pid) == Some(started) && !is_zombie(pid)),
            _ => false,
        }
    })
}

/// Stops every recorded process of a previous wsgimux on `runtime_dir` that still runs as
/// the same process, and removes the records; returns the pids it stopped. Call only once no
/// other wsgimux serves this runtime dir.
pub fn stop_leftovers(runtime_dir: &Path) -> Vec<u32> {
    let dir = runtime_dir.join(RECORDS);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut stopped = Vec::new();
    for e in entries.flatten() {
        let text = std::fs::read_to_string(e.path()).unwrap_or_default();
        let _ = std::fs::remove_file(e.path());
        let mut words = text.split_whitespace().map(str::parse::<u64>);
        let (Some(Ok(pid)), Some(Ok(started))) = (words.next(), words.next()) else {
            continue;
        };
        let Ok(pid) = u32::try_from(pid) else {
            continue;
        };
        if start_time(pid) == Some(started) {
            tracing::warn!("stopping pid {pid}, left running by a wsgimux that was killed");
            stop_group(pid);
            stopped.push(pid);
        }
    }
    stopped
}

/// TERM to the process group `pid` leads (or to `pid` alone), up to [`LEFTOVER_GRACE`] for it
/// to go, then KILL.
fn stop_group(pid: u32) {
    let signal = |sig| {
        // SAFETY: kill(2) has no memory effects; a negative pid addresses the process group.
        unsafe {
            if libc::kill(-(pid as libc::pid_t), sig) != 0 {
                libc::kill(pid as libc::pid_t, sig);
            }
        }
    };
    signal(libc::SIGTERM);
    let deadline = Instant::now() + LEFTOVER_GRACE;
    while Instant::now() < deadline && start_time(pid).is_some() && !is_zombie(pid) {
        std::thread::sleep(Duration::from_millis(20));
    }
    signal(libc::SIGKILL);
}

/// When the OS says process `pid` started, in its own units (clock ticks since boot on Linux,
/// microseconds since the epoch on macOS); None when there is no such process (or this OS
/// cannot say, and then nothing is ever signalled).
#[cfg(target_os = "linux")]
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: fields count from its end.
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(19)?.parse().ok()
}

#[cfg(target_vendor = "apple")]
fn start_time(pid: u32) -> Option<u64> {
    // SAFETY: proc_pidinfo fills at most `size` bytes of `info`, a plain C struct.
    let mut info: libc::proc_bsdinfo = unsafe { std::mem::zeroed() };
    let size = std::mem::size_of::<libc::proc_bsdinfo>() as libc::c_int;
    let n = unsafe {
        libc::proc_pidinfo(
            pid as libc::c_int,
            libc::PROC_PIDTBSDINFO,
            0,
            (&mut info as *mut libc::proc_bsdinfo).cast(),
            size,
        )
    };
    (n == size).then(|| info.pbi_start_tvsec * 1_000_000 + info.pbi_start_tvusec)
}

#[cfg(not(any(target_os = "linux", target_vendor = "apple")))]
fn start_time(_pid: u32) -> Option<u64> {
    None
}

/// A process that exited but was not reaped (its parent is gone or slow) still has a start
/// time; it needs no more signals.
fn is_zombie(pid: u32) -> bool {
    if !cfg!(target_os = "linux") {
        return false;
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let state = stat
        .rfind(')')
        .and_then(|i| stat[i + 1..].split_whitespace().next());
    state == Some("Z")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_names_a_live_process_until_dropped_and_never_a_reused_pid() {
        let dir = tempfile::tempdir().unwrap();
        let me = std::process::id();
        assert!(start_time(me).is_some());
        let record = ChildRecord::write(dir.path(), me);
        let file = dir.path().join(RECORDS).join(me.to_string());
        assert!(file.is_file());
        drop(record);
        assert!(!file.exists(), "dropping the record removes it");
        // A record whose start time does not match (the pid was reused) is removed, and the
        // process is left alone: this test process is still here to assert it.
        std::fs::create_dir_all(dir.path().join(RECORDS)).unwrap();
        std::fs::write(&file, format!("{me} 1\n")).unwrap();
        assert_eq!(stop_leftovers(dir.path()), Vec::<u32>::new());
        assert!(!file.exists());
    }
}
