//! Accounts processes run as: resolving `user:`/`group:`, checking that an account can reach
//! the files it needs (the pyenv-under-a-private-home trap), and dropping wsgimux's own
//! privileges after its listeners are bound.
//!
//! Owns every uid/gid decision. Does not spawn anything: the supervisor applies the ids this
//! module resolved.

use std::ffi::CString;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::unistd::{Gid, Group, Uid, User};

/// A resolved account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub user: String,
    pub uid: u32,
    pub gid: u32,
    /// The groups the account is in (primary and supplementary), for permission checks.
    pub groups: Vec<u32>,
    pub home: PathBuf,
}

impl std::fmt::Display for Account {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (uid {}, gid {})", self.user, self.uid, self.gid)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    #[error("no user {0:?} on this machine")]
    NoUser(String),
    #[error("no group {0:?} on this machine")]
    NoGroup(String),
    #[error("cannot switch to {account}: {source}")]
    Switch {
        account: String,
        #[source]
        source: std::io::Error,
    },
}

/// `user:` (a name or uid) and `group:` (a name or gid; default: the user's primary group).
pub fn resolve(user: &str, group: Option<&str>) -> Result<Account, AccountError> {
    let found = match user.parse::<u32>() {
        Ok(uid) => User::from_uid(Uid::from_raw(uid)),
        Err(_) => User::from_name(user),
    };
    let u = found
        .ok()
        .flatten()
        .ok_or_else(|| AccountError::NoUser(user.to_string()))?;
    let gid = match group {
        None => u.gid.as_raw(),
        Some(g) => {
            let found = match g.parse::<u32>() {
                Ok(gid) => Group::from_gid(Gid::from_raw(gid)),
                Err(_) => Group::from_name(g),
            };
            found
                .ok()
                .flatten()
                .ok_or_else(|| AccountError::NoGroup(g.to_string()))?
                .gid
                .as_raw()
        }
    };
    let mut groups = vec![gid];
    if let Ok(name) = CString::new(u.name.clone()) {
        groups.extend(group_list(&name, gid));
    }
    groups.sort_unstable();
    groups.dedup();
    Ok(Account {
        user: u.name,
        uid: u.uid.as_raw(),
        gid,
        groups,
        home: u.dir,
    })
}

/// The groups `name` is in, `gid` included.
#[cfg(target_os = "linux")]
fn group_list(name: &CString, gid: u32) -> Vec<u32> {
    nix::unistd::getgrouplist(name, Gid::from_raw(gid))
        .map(|list| list.into_iter().map(Gid::as_raw).collect())
        .unwrap_or_default()
}

/// The groups `name` is in, `gid` included. macOS's getgrouplist takes and fills `int`s, and
/// nix offers it only on Linux.
#[cfg(not(target_os = "linux"))]
fn group_list(name: &CString, gid: u32) -> Vec<u32> {
    let mut len: libc::c_int = 64;
    loop {
        let mut list: Vec<libc::c_int> = vec![0; len as usize];
        // SAFETY: `list` has room for `len` entries; getgrouplist writes at most that many and
        // sets `len` to the number found (or needed).
        let rc = unsafe {
            libc::getgrouplist(
                name.as_ptr(),
                gid as libc::c_int,
                list.as_mut_ptr(),
                &mut len,
            )
        };
        if rc >= 0 {
            list.truncate(len.max(0) as usize);
            return list.into_iter().map(|g| g as u32).collect();
        }
        if len as usize <= list.len() {
            len = list.len() as libc::c_int * 2;
        }
        if len > 65_536 {
            return Vec::new();
        }
    }
}

/// Whether wsgimux, once it gave up root for `user:`, can still start children as other
/// accounts: only on Linux, where the thread that drops root keeps a few capabilities.
/// Elsewhere apps with their own accounts need wsgimux to keep root (no top-level `user:`),
/// as Apache's parent process does.
pub const KEEPS_SWITCHING_AFTER_DROP: bool = cfg!(target_os = "linux");

/// Set once wsgimux gave up root but kept the capabilities to start children as others.
static KEPT_SWITCHING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// True when this process runs as root.
pub fn is_root() -> bool {
    Uid::effective().is_root()
}

/// True when this process may start children as other accounts: it is root, or it was and
/// kept the capabilities for it.
pub fn can_start_as_others() -> bool {
    is_root() || KEPT_SWITCHING.load(std::sync::atomic::Ordering::Relaxed)
}

/// What an account needs of a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    Read,
    Execute,
    /// A folder it works in: enter and list.
    Folder,
}

/// Checks, from the permission bits, that `account` can reach `path` (search permission on
/// every folder on the way, as given and with symlinks resolved) and use it as `need` says.
/// The error names the first place that stops it.
pub fn can_reach(account: &Account, path: &Path, need: Need) -> Result<(), String> {
    if account.uid == 0 {
        return Ok(());
    }
    let real = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    for p in [path.to_path_buf(), real.clone()] {
        let mut dir = PathBuf::new();
        let parents: Vec<PathBuf> = p
            .parent()
            .map(|parent| {
                parent
                    .components()
                    .map(|c| {
                        dir.push(c);
                        dir.clone()
                    })
                    .collect()
            })
            .unwrap_or_default();
        for d in parents {
            check(account, &d, 0o1)?;
        }
    }
    let bits = match need {
        Need::Read => 0o4,
        Need::Execute => 0o5,
        Need::Folder => 0o5,
    };
    check(account, &real, bits)
}

/// `bits` (r=4, w=2, x=1) for `account` on one path, following symlinks.
fn check(account: &Account, path: &Path, bits: u32) -> Result<(), String> {
    let Ok(m) = std::fs::metadata(path) else {
        // Missing files are reported by the checks that look for them.
        return Ok(());
    };
    let mode = m.mode();
    let granted = if m.uid() == account.uid {
        (mode >> 6) & 0o7
    } else if account.groups.contains(&m.gid()) {
        (mode >> 3) & 0o7
    } else {
        mode & 0o7
    };
    if granted & bits == bits {
        return Ok(());
    }
    let owner = User::from_uid(Uid::from_raw(m.uid()))
        .ok()
        .flatten()
        .map_or(m.uid().to_string(), |u| u.name);
    let what = if m.is_dir() { "folder" } else { "file" };
    Err(format!(
        "{} cannot reach it: the {what} {} is mode {:04o}, owned by {owner}",
        account.user,
        path.display(),
        mode & 0o7777
    ))
}

type Job = Box<dyn FnOnce() + Send>;

/// After a drop with kept capabilities: the one thread that holds them. Capabilities belong to
/// threads on Linux, and only the thread that dropped root kept them, so everything that needs
/// them (starting a child as another account, signalling it) runs there.
static PRIVILEGED: std::sync::OnceLock<std::sync::Mutex<std::sync::mpsc::Sender<Job>>> =
    std::sync::OnceLock::new();

/// Runs `f` on the thread that kept the capabilities, if wsgimux dropped root; else here.
pub fn privileged<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> R {
    let Some(tx) = PRIVILEGED.get() else {
        return f();
    };
    let (reply_tx, reply_rx) = std::sync::mpsc::channel();
    let job: Job = Box::new(move || {
        let _ = reply_tx.send(f());
    });
    let sent = tx.lock().unwrap_or_else(|e| e.into_inner()).send(job);
    if let Err(std::sync::mpsc::SendError(job)) = sent {
        // The thread is gone (it never ends on its own): run here, without the capabilities;
        // what needed them fails with EPERM and reports it.
        job();
    }
    match reply_rx.recv() {
        Ok(r) => r,
        Err(_) => panic!("a privileged call panicked"),
    }
}

/// Starts the privileged thread from the thread that holds the capabilities (a new thread
/// inherits its creator's).
#[cfg(target_os = "linux")]
fn start_privileged_thread() -> std::io::Result<()> {
    let (tx, rx) = std::sync::mpsc::channel::<Job>();
    let runtime = tokio::runtime::Handle::try_current().ok();
    std::thread::Builder::new()
        .name("wsgimux-privileged".into())
        .spawn(move || {
            // Child processes started here are reaped by the main runtime.
            let _guard = runtime.as_ref().map(|h| h.enter());
            for job in rx {
                job();
            }
        })?;
    let _ = PRIVILEGED.set(std::sync::Mutex::new(tx));
    Ok(())
}

/// Linux capabilities wsgimux keeps after giving up root: start children as their apps'
/// accounts, signal them, bind low ports on reload, hand runtime files to app accounts.
#[cfg(target_os = "linux")]
const KEPT_CAPABILITIES: &[u32] = &[
    0,  // CAP_CHOWN
    3,  // CAP_FOWNER
    5,  // CAP_KILL
    6,  // CAP_SETGID
    7,  // CAP_SETUID
    10, // CAP_NET_BIND_SERVICE
];

/// Makes this process run as `account` from now on (real, effective and saved ids, and its
/// groups). On Linux it keeps the few capabilities in `KEPT_CAPABILITIES`, and nothing else
/// of root. Call once, after binding the listeners and before starting any child.
pub fn drop_privileges(account: &Account) -> Result<(), AccountError> {
    let err = |source: std::io::Error| AccountError::Switch {
        account: account.to_string(),
        source,
    };
    switch_ids(account).map_err(err)
}

#[cfg(target_os = "linux")]
fn switch_ids(account: &Account) -> std::io::Result<()> {
    let groups: Vec<Gid> = account.groups.iter().map(|g| Gid::from_raw(*g)).collect();
    // SAFETY: plain prctl on the current process.
    if unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    nix::unistd::setgroups(&groups)?;
    let gid = Gid::from_raw(account.gid);
    let uid = Uid::from_raw(account.uid);
    nix::unistd::setresgid(gid, gid, gid)?;
    nix::unistd::setresuid(uid, uid, uid)?;
    set_capabilities(KEPT_CAPABILITIES)?;
    start_privileged_thread()?;
    KEPT_SWITCHING.store(true, std::sync::atomic::Ordering::Relaxed);
    Ok(())
}

/// macOS and other BSDs: the account's groups (initgroups, as login does), then gid and uid;
/// as root, setgid/setuid set the real, effective and saved ids alike, so nothing of root is
/// kept.
#[cfg(not(target_os = "linux"))]
fn switch_ids(account: &Account) -> std::io::Result<()> {
    let name = CString::new(account.user.clone())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    // SAFETY: a NUL-terminated name and a gid; initgroups reads the group database.
    if unsafe { libc::initgroups(name.as_ptr(), account.gid as _) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    nix::unistd::setgid(Gid::from_raw(account.gid))?;
    nix::unistd::setuid(Uid::from_raw(account.uid))?;
    Ok(())
}

#[cfg(target_os = "linux")]
fn set_capabilities(caps: &[u32]) -> std::io::Result<()> {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const VERSION_3: u32 = 0x2008_0522;
    let mut data = [Data::default(); 2];
    for &c in caps {
        let (word, bit) = ((c / 32) as usize, 1u32 << (c % 32));
        data[word].effective |= bit;
        data[word].permitted |= bit;
    }
    let mut header = Header {
        version: VERSION_3,
        pid: 0,
    };
    // SAFETY: capset with a version-3 header and two data words, as the kernel expects.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: plain prctl; children must not inherit the kept capabilities through exec.
    unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 0, 0, 0, 0) };
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permission_bits_decide() {
        let dir = tempfile::tempdir().unwrap();
        use std::os::unix::fs::PermissionsExt;
        let private = dir.path().join("private");
        std::fs::create_dir(&private).unwrap();
        let file = private.join("app.py");
        std::fs::write(&file, "x").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let stranger = Account {
            user: "stranger".into(),
            uid: 4_000_000,
            gid: 4_000_000,
            groups: vec![4_000_000],
            home: "/nonexistent".into(),
        };
        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).unwrap();
        let e = can_reach(&stranger, &file, Need::Read).unwrap_err();
        assert!(e.contains("private") && e.contains("0700"), "{e}");
        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o711)).unwrap();
        assert_eq!(can_reach(&stranger, &file, Need::Read), Ok(()));
        assert!(can_reach(&stranger, &file, Need::Execute).is_err());
    }
}
