//! Started as root: wsgimux binds a port below 1024, then runs as `user:`; an app with its own
//! `user:` runs as that. Uses Debian's /usr/bin/python3 (pyenv lives under root's 0700 home,
//! which is exactly what `check` must catch).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::harness::*;

/// (real, effective) uid of a process.
fn uids(pid: u32) -> (u32, u32) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let line = status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .expect("Uid line");
    let ids: Vec<u32> = line
        .split_whitespace()
        .skip(1)
        .map(|n| n.parse().expect("uid"))
        .collect();
    (ids[0], ids[1])
}

fn root_and_system_python() -> Option<&'static Path> {
    let python = Path::new("/usr/bin/python3");
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let why = match (root, python.is_file()) {
        (true, true) => return Some(python),
        (false, _) => "the privilege tests need root",
        (true, false) => "the privilege tests need /usr/bin/python3",
    };
    skip(why);
    None
}

fn free_low_port() -> u16 {
    (900..1024)
        .rev()
        .find(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok())
        .expect("a free port below 1024")
}

#[test]
fn root_binds_a_low_port_then_runs_as_the_configured_users() {
    let Some(python) = root_and_system_python() else {
        return;
    };
    let site = Site::new();
    std::fs::set_permissions(site.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    site.probe("app");
    let port = free_low_port();
    site.write(
        "wsgimux.yaml",
        &format!(
            r#"runtime_dir: {run}
listen: ["127.0.0.1:{port}"]
user: nobody
apps:
  shared:
    python: {py}
    script: app/probe.py
    mount: /a
  own:
    python: {py}
    script: app/probe.py
    mount: /b
    user: daemon
"#,
            run = site.path().join("run").display(),
            py = python.display()
        ),
    );
    let server = site.serve();
    assert_eq!(server.addr.port(), port);
    let nobody = 65534;
    let daemon = 1;
    assert_eq!(
        uids(server.pid()),
        (nobody, nobody),
        "wsgimux itself gave up root"
    );
    let pid_of = |path: &str| -> u32 {
        let r = server.get("x", path);
        assert_eq!(r.status, 200, "{}\n{}", r.text(), server.log_text());
        r.text().trim().parse().expect("pid")
    };
    assert_eq!(uids(pid_of("/a/pid")), (nobody, nobody));
    assert_eq!(uids(pid_of("/b/pid")), (daemon, daemon));
    // Still able to stop and restart a child of another account.
    let own = pid_of("/b/pid");
    // SAFETY: signalling a test child by pid.
    unsafe { libc::kill(own as i32, libc::SIGKILL) };
    let back = eventually(std::time::Duration::from_secs(15), || {
        let r = server.get("x", "/b/pid");
        let pid: u32 = r.text().trim().parse().ok()?;
        (r.status == 200 && pid != own).then_some(pid)
    })
    .expect("the app restarts");
    assert_eq!(uids(back), (daemon, daemon));
}

#[test]
fn check_says_when_the_app_user_cannot_reach_the_interpreter() {
    let Some(python) = root_and_system_python() else {
        return;
    };
    let site = Site::new();
    std::fs::set_permissions(site.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    site.probe("app");
    // Like pyenv under root's home: an interpreter behind a 0700 folder.
    let private = site.path().join("home");
    std::fs::create_dir(&private).unwrap();
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::os::unix::fs::symlink(python, private.join("python3")).unwrap();
    site.write(
        "wsgimux.yaml",
        "listen: [\"127.0.0.1:0\"]\napps:\n  a:\n    python: home/python3\n    script: app/probe.py\n    user: nobody\n",
    );
    let (status, _, stderr) = site.check();
    assert!(!status.success(), "{stderr}");
    assert!(stderr.contains("app \"a\", key \"python\""), "{stderr}");
    assert!(
        stderr.contains("nobody") && stderr.contains("home") && stderr.contains("0700"),
        "{stderr}"
    );
}
