//! Many apps on one host, and what a reload costs: a route-only edit to one of 300 on-demand
//! apps is applied without starting any process; keys only a restart applies are reported as
//! waiting for one, and what runs keeps their old values.

use std::time::Duration;

use crate::harness::*;
use crate::operating::status_json;

/// A config of `n` on-demand apps sharing one interpreter, each on its own host; `extra` is
/// one more host for app 7.
fn many_apps(site: &Site, py: &std::path::Path, n: usize, extra: bool) {
    let mut yaml = String::from("access_log: off\napps:\n");
    for i in 0..n {
        let alias = if extra && i == 7 { ", alias.test" } else { "" };
        yaml.push_str(&format!(
            "  site{i}:\n    python: {}\n    script: app/probe.py\n    hosts: [site{i}.test{alias}]\n    start: on_demand\n",
            py.display()
        ));
    }
    site.config(&yaml);
}

#[test]
fn a_route_only_reload_of_300_on_demand_apps_starts_no_process() {
    let Some(py) = require_python("3.13") else {
        return;
    };
    let site = Site::new();
    site.probe("app");
    many_apps(&site, &py, 300, false);
    let server = site.serve();
    assert!(
        child_pids(server.pid()).is_empty(),
        "on demand: nothing runs yet"
    );
    assert_eq!(server.get("alias.test", "/").status, 404);

    many_apps(&site, &py, 300, true);
    let (status, out, err) = site.reload();
    assert!(status.success(), "{out}{err}");
    // The first reload applied the edit, whether the watcher or the command asked first.
    let out = server.reload_line(1);
    assert!(out.contains("applied"), "{out}");
    assert!(out.contains("re-routed site7 (hosts)"), "{out}");
    assert!(!out.contains("restarted"), "{out}");
    assert!(
        child_pids(server.pid()).is_empty(),
        "a route-only reload started a process: {out}"
    );
    let s = status_json(&site.path().join("wsgimux.yaml"));
    let apps = s["apps"].as_array().expect("apps");
    assert_eq!(apps.len(), 300);
    for a in apps {
        assert_eq!(a["generation"], 1, "{}: a new generation", a["name"]);
    }
    // Applied: the new host leads to site7 (whose process now starts, on demand).
    let r = server.get("alias.test", "/env");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(child_pids(server.pid()).len(), 1, "only site7 started");
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

#[test]
fn keys_only_a_restart_applies_wait_for_one_and_say_so() {
    let Some(py) = require_python("3.13") else {
        return;
    };
    let site = Site::new();
    let before = free_port();
    site.one_app("web", &py, &[]);
    let config = site.path().join("wsgimux.yaml");
    let text = std::fs::read_to_string(&config).expect("config");
    let with_admin =
        |port: u16, logs: &str| format!("admin: {{listen: \"127.0.0.1:{port}\"}}\n{logs}{text}");
    std::fs::write(&config, with_admin(before, "")).expect("config");
    let server = site.serve();
    let admin_answers = |port: u16| {
        std::net::TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(2))
            .is_ok()
    };
    assert!(admin_answers(before));

    let after = free_port();
    let logs = site.path().join("logs");
    std::fs::create_dir_all(&logs).expect("logs");
    std::fs::write(
        &config,
        with_admin(after, &format!("log_dir: {}\n", logs.display())),
    )
    .expect("config");
    let (status, out, err) = site.reload();
    assert!(status.success(), "{out}{err}");
    assert!(
        out.contains("nothing to change")
            && out.contains("needs a restart to take effect: admin.listen, log_dir"),
        "{out}"
    );
    // What runs keeps the running values, and status says what waits.
    assert!(
        admin_answers(before),
        "the running admin listener keeps answering"
    );
    assert!(
        !admin_answers(after),
        "the new admin address is not in force"
    );
    let s = status_json(&config);
    assert_eq!(s["admin"], format!("127.0.0.1:{before}"), "{s}");
    assert_eq!(
        s["pending_restart"],
        serde_json::json!(["admin.listen", "log_dir"])
    );
    let (ok, text_status, _) = {
        let out = std::process::Command::new(BIN)
            .args(["status", "--config"])
            .arg(&config)
            .output()
            .expect("status");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            (),
        )
    };
    assert!(ok);
    assert!(
        text_status.contains("needs a restart to take effect: admin.listen, log_dir"),
        "{text_status}"
    );
    // A later edit that changes an app still says so; undoing the edit clears it.
    assert_eq!(server.get("x.test", "/pid").status, 200);
    std::fs::write(&config, with_admin(before, "")).expect("config");
    let (status, out, err) = site.reload();
    assert!(status.success(), "{out}{err}");
    assert!(!out.contains("needs a restart"), "{out}");
    assert_eq!(
        status_json(&config)["pending_restart"],
        serde_json::json!([])
    );
}
