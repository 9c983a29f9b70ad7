//! Apps served by servers wsgimux does not write: a `command:` (gunicorn, on a socket or a
//! port wsgimux picks) and an `upstream:` wsgimux only routes to and health-checks. The mount
//! prefix reaches them in the `SCRIPT_NAME` header, which gunicorn turns into SCRIPT_NAME.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::harness::*;

/// A gunicorn wsgimux does not start, serving the probe app at `bind`.
fn outside_gunicorn(venv: &std::path::Path, app_dir: &std::path::Path, bind: &str) -> Child {
    Command::new(venv.join("bin/gunicorn"))
        .args(["--workers", "1", "--bind", bind, "--chdir"])
        .arg(app_dir)
        .arg("probe:app")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start gunicorn")
}

fn env_of(server: &Server, path: &str) -> String {
    server.get("x", path).text()
}

#[test]
fn gunicorn_commands_and_upstreams_are_mounted_and_supervised() {
    let Some(py) = require_python("3.13") else {
        return;
    };
    let Some(venv) = pip_venv(&py, "gunicorn-3.13", &["gunicorn"]) else {
        return;
    };
    let site = Site::new();
    site.probe("app");
    let app_dir = site.path().join("app");
    let outside_sock = site.path().join("outside.sock");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let mut by_socket =
        outside_gunicorn(&venv, &app_dir, &format!("unix:{}", outside_sock.display()));
    let mut by_port = outside_gunicorn(&venv, &app_dir, &format!("127.0.0.1:{port}"));
    site.config(&format!(
        r#"apps:
  gsock:
    python: {venv}
    command: ["gunicorn", "--workers", "2", "--bind", "unix:{{socket}}", "probe:app"]
    working_dir: app
    processes: 2
    mount: /gsock
  gport:
    python: {venv}
    command: ["gunicorn", "--bind", "127.0.0.1:{{port}}", "probe:app"]
    working_dir: app
    mount: /gport
  usock:
    upstream: "unix:{sock}"
    mount: /usock
  uport:
    upstream: "http://127.0.0.1:{port}"
    mount: /uport
"#,
        venv = venv.display(),
        sock = outside_sock.display(),
    ));
    let (status, out, err) = site.check();
    assert!(status.success(), "{err}");
    assert!(out.contains("command") && out.contains("upstream"), "{out}");
    let server = site.serve();

    for mount in ["/gsock", "/gport", "/usock", "/uport"] {
        let env = env_of(&server, &format!("{mount}/env/x?q=1"));
        assert!(
            env.contains("SERVER_SOFTWARE=gunicorn/"),
            "{mount}: {env}\n{}",
            server.log_text()
        );
        assert!(
            env.contains(&format!("SCRIPT_NAME={mount} str")),
            "{mount}: {env}"
        );
        assert!(env.contains("PATH_INFO=/env/x str"), "{mount}: {env}");
        assert!(env.contains("QUERY_STRING=q=1 str"), "{mount}: {env}");
    }
    // The command's processes get the venv first on PATH and their own app name in the log.
    let pids = server.app_pids("gsock");
    assert_eq!(pids.len(), 2, "{:?}", server.ready_lines);

    // A command's process that dies is restarted, like any child.
    unsafe { libc::kill(pids[0] as i32, libc::SIGKILL) };
    let restarted = eventually(Duration::from_secs(15), || {
        server
            .wait_log("[gsock] restarting process", Duration::from_millis(100))
            .and_then(|_| {
                let env = env_of(&server, "/gsock/env/");
                env.contains("SERVER_SOFTWARE=gunicorn/").then_some(())
            })
    });
    assert!(restarted.is_some(), "{}", server.log_text());

    // An upstream that stops answering is taken out of the routes (a quick 5xx, not a hang)…
    let _ = by_port.kill();
    let _ = by_port.wait();
    let down = eventually(Duration::from_secs(10), || {
        server
            .wait_log("does not accept connections", Duration::from_millis(200))
            .map(|_| ())
    });
    assert!(down.is_some(), "{}", server.log_text());
    let r = server.get("x", "/uport/env/");
    assert!(r.status >= 500, "{}", r.status);
    // …and routed to again once it answers.
    let mut again = outside_gunicorn(&venv, &app_dir, &format!("127.0.0.1:{port}"));
    let back = eventually(Duration::from_secs(10), || {
        env_of(&server, "/uport/env/")
            .contains("SERVER_SOFTWARE=gunicorn/")
            .then_some(())
    });
    assert!(back.is_some(), "{}", server.log_text());
    // Never spawned: stopping wsgimux leaves the outside servers running.
    drop(server);
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        pid_alive(by_socket.id()),
        "wsgimux stopped a server it did not start"
    );
    for c in [&mut by_socket, &mut again] {
        let _ = c.kill();
        let _ = c.wait();
    }
}
