//! How much memory a process and its children hold now (their resident sets added up), read
//! from the OS: `/proc` on Linux, `proc_pidinfo` on macOS. Blocking reads of a few small
//! files: called on the blocking pool.

/// Processes looked at under one root at most (a fork bomb is not walked whole).
const MAX_PROCESSES: usize = 1024;

/// The resident bytes of `pid` and its descendants; None when `pid` itself is gone.
pub(super) fn resident(pid: u32) -> Option<u64> {
    let mut total = own_resident(pid)?;
    let mut pending = children(pid);
    let mut seen = 1;
    while let Some(child) = pending.pop() {
        seen += 1;
        if seen > MAX_PROCESSES {
            break;
        }
        // A child may have ended since it was listed.
        total += own_resident(child).unwrap_or(0);
        pending.extend(children(child));
    }
    Some(total)
}

#[cfg(target_os = "linux")]
fn own_resident(pid: u32) -> Option<u64> {
    // statm's second field: resident pages (VmRSS), without parsing `status`.
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page).unwrap_or(4096))
}

#[cfg(target_os = "linux")]
fn children(pid: u32) -> Vec<u32> {
    // Each thread's children (a process's children are those of its threads).
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|list| {
            list.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}

#[cfg(target_os = "macos")]
fn own_resident(pid: u32) -> Option<u64> {
    let mut info = std::mem::MaybeUninit::<libc::proc_taskinfo>::zeroed();
    let size = std::mem::size_of::<libc::proc_taskinfo>() as libc::c_int;
    // SAFETY: the buffer is a proc_taskinfo of `size` bytes, which PROC_PIDTASKINFO fills.
    let got = unsafe {
        libc::proc_pidinfo(
            i32::try_from(pid).ok()?,
            libc::PROC_PIDTASKINFO,
            0,
            info.as_mut_ptr().cast(),
            size,
        )
    };
    // SAFETY: filled whole when the call returns its size.
    (got == size).then(|| unsafe { info.assume_init() }.pti_resident_size)
}

#[cfg(target_os = "macos")]
fn children(pid: u32) -> Vec<u32> {
    let mut pids = vec![0 as libc::pid_t; 256];
    let bytes = (pids.len() * std::mem::size_of::<libc::pid_t>()) as libc::c_int;
    let Ok(pid) = i32::try_from(pid) else {
        return Vec::new();
    };
    // SAFETY: the buffer holds `bytes` bytes of pid_t.
    let n = unsafe { libc::proc_listchildpids(pid, pids.as_mut_ptr().cast(), bytes) };
    let n = usize::try_from(n).unwrap_or(0).min(pids.len());
    pids[..n]
        .iter()
        .filter_map(|&p| u32::try_from(p).ok())
        .filter(|&p| p > 0)
        .collect()
}

#[cfg(test)]
mod tests {
    /// Its own and its descendants' resident bytes, once `pid` has a child.
    fn with_a_child(pid: u32) -> Option<u64> {
        let own = super::own_resident(pid)?;
        let all = super::resident(pid)?;
        (all > own && !super::children(pid).is_empty()).then_some(all)
    }

    #[test]
    fn a_process_and_its_children_are_added_up() {
        let mut shell = std::process::Command::new("sh")
            .args(["-c", "sleep 5 & sleep 5"])
            .spawn()
            .expect("sh");
        let pid = shell.id();
        // The shell has forked its background sleep once it runs the second.
        let counted = (0..100).find_map(|_| {
            let found = with_a_child(pid);
            if found.is_none() {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            found
        });
        let _ = shell.kill();
        let _ = shell.wait();
        assert!(counted.is_some(), "the children were not counted");
        assert_eq!(super::resident(u32::MAX - 1), None, "no such process");
    }
}
