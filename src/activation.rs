//! Socket activation: listening sockets handed over by systemd (`LISTEN_FDS`,
//! `LISTEN_FDNAMES`) or launchd (`launch_activate_socket`), so that wsgimux can serve port 80
//! without ever running as root.
//!
//! [`init`] takes the sockets once, at start-up, before any other file is opened; `server::bind`
//! then asks for each configured address with [`take`], which matches a socket by the address
//! it is bound to (or by a name that spells the address, where a service manager allows one:
//! systemd's `FileDescriptorName=` does not allow `:`).

use std::net::{SocketAddr, TcpListener as StdListener};
use std::os::fd::{FromRawFd, RawFd};
use std::sync::Mutex;

/// Sockets received and not yet claimed by a `listen` entry.
static INHERITED: Mutex<Vec<Inherited>> = Mutex::new(Vec::new());

struct Inherited {
    name: Option<String>,
    listener: StdListener,
}

/// The first fd systemd passes (`SD_LISTEN_FDS_START`).
const SD_LISTEN_FDS_START: RawFd = 3;

/// Takes the sockets the service manager passed, if any, and returns how many.
pub fn init() -> usize {
    let mut found = systemd_sockets();
    found.extend(launchd_sockets());
    let n = found.len();
    INHERITED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .extend(found);
    n
}

/// The inherited listener for `addr`, if the service manager passed one.
pub fn take(addr: SocketAddr) -> Option<tokio::net::TcpListener> {
    let mut all = INHERITED.lock().unwrap_or_else(|e| e.into_inner());
    let by_name = all
        .iter()
        .position(|s| s.name.as_deref() == Some(addr.to_string().as_str()));
    let by_addr = || {
        all.iter()
            .position(|s| s.listener.local_addr().ok() == Some(addr))
    };
    let i = by_name.or_else(by_addr)?;
    let s = all.remove(i);
    s.listener.set_nonblocking(true).ok()?;
    tokio::net::TcpListener::from_std(s.listener).ok()
}

/// Inherited sockets no `listen` entry claimed: their names (as the unit gives them) and
/// bound addresses. A start refuses them: the port would accept connections nobody answers.
pub fn unclaimed() -> Vec<String> {
    INHERITED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .map(|s| match (&s.name, s.listener.local_addr()) {
            (Some(n), Ok(a)) if *n != a.to_string() => format!("{n} (bound to {a})"),
            (_, Ok(a)) => a.to_string(),
            (Some(n), Err(_)) => n.clone(),
            (None, Err(_)) => "?".into(),
        })
        .collect()
}

fn systemd_sockets() -> Vec<Inherited> {
    let pid_matches = std::env::var("LISTEN_PID")
        .ok()
        .and_then(|p| p.parse::<u32>().ok())
        == Some(std::process::id());
    let count = std::env::var("LISTEN_FDS")
        .ok()
        .and_then(|n| n.parse::<i32>().ok())
        .unwrap_or(0);
    let names: Vec<String> = std::env::var("LISTEN_FDNAMES")
        .map(|n| n.split(':').map(str::to_string).collect())
        .unwrap_or_default();
    // Not for our children, whatever happens next.
    std::env::remove_var("LISTEN_PID");
    std::env::remove_var("LISTEN_FDS");
    std::env::remove_var("LISTEN_FDNAMES");
    if !pid_matches || count <= 0 {
        return Vec::new();
    }
    (0..count)
        .map(|i| {
            let fd = SD_LISTEN_FDS_START + i;
            // SAFETY: systemd passed these fds to this process for it to own (LISTEN_PID
            // matched); nothing else in the process has touched them yet.
            unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
            let listener = unsafe { StdListener::from_raw_fd(fd) };
            let name = names
                .get(i as usize)
                .filter(|n| !n.is_empty() && *n != "unknown")
                .cloned();
            Inherited { name, listener }
        })
        .collect()
}

#[cfg(target_os = "macos")]
fn launchd_sockets() -> Vec<Inherited> {
    extern "C" {
        fn launch_activate_socket(
            name: *const libc::c_char,
            fds: *mut *mut libc::c_int,
            cnt: *mut libc::size_t,
        ) -> libc::c_int;
    }
    // The plist's Sockets entry is named "Listeners" (deploy/launchd).
    let name = c"Listeners";
    let mut fds: *mut libc::c_int = std::ptr::null_mut();
    let mut cnt: libc::size_t = 0;
    // SAFETY: launchd allocates `fds` (freed below) and sets `cnt`; an error leaves both unset.
    let rc = unsafe { launch_activate_socket(name.as_ptr(), &mut fds, &mut cnt) };
    if rc != 0 || fds.is_null() {
        return Vec::new();
    }
    let out = (0..cnt)
        .map(|i| {
            // SAFETY: launchd handed these fds to us; `fds` has `cnt` entries.
            let fd = unsafe { *fds.add(i) };
            Inherited {
                name: None,
                listener: unsafe { StdListener::from_raw_fd(fd) },
            }
        })
        .collect();
    // SAFETY: allocated by launchd with malloc.
    unsafe { libc::free(fds.cast()) };
    out
}

#[cfg(not(target_os = "macos"))]
fn launchd_sockets() -> Vec<Inherited> {
    Vec::new()
}
