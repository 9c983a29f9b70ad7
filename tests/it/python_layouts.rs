//! Pythons as other machines lay them out: reached through chains of symlinks (Homebrew's
//! `bin/python3` → `opt/python@3.x` → `Cellar/…/Frameworks/Python.framework/…`), virtualenvs
//! whose `home` is such a link, and a shell environment that belongs to another Python.

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use crate::harness::*;

/// Homebrew's layout under `prefix`, with the real interpreter at the end of the chain; returns
/// `prefix/bin/python3`.
fn homebrew_like(prefix: &Path, real: &Path) -> PathBuf {
    let keg = prefix.join("Cellar/python@3.13/3.13.1");
    let framework_bin = keg.join("Frameworks/Python.framework/Versions/3.13/bin");
    std::fs::create_dir_all(&framework_bin).expect("mkdir");
    std::fs::create_dir_all(keg.join("bin")).expect("mkdir");
    std::fs::create_dir_all(prefix.join("opt")).expect("mkdir");
    std::fs::create_dir_all(prefix.join("bin")).expect("mkdir");
    symlink(real, framework_bin.join("python3.13")).expect("symlink");
    symlink(
        "../Frameworks/Python.framework/Versions/3.13/bin/python3.13",
        keg.join("bin/python3"),
    )
    .expect("symlink");
    symlink(
        "../Cellar/python@3.13/3.13.1",
        prefix.join("opt/python@3.13"),
    )
    .expect("symlink");
    symlink("../opt/python@3.13/bin/python3", prefix.join("bin/python3")).expect("symlink");
    prefix.join("bin/python3")
}

#[test]
fn symlinked_interpreters_and_their_venvs_serve_on_both_workers() {
    let Some(real) = require_python("3.13") else {
        return;
    };
    let site = Site::new();
    let brew = homebrew_like(&site.path().join("homebrew"), &real);
    // A venv made the way a Mac user makes one: from the linked `opt/` path.
    let venv = make_venv(
        &site.path().join("homebrew/opt/python@3.13/bin/python3"),
        &site.path().join("venv"),
    );
    site.probe("app");
    let mut yaml = String::from("apps:\n");
    let apps = [
        ("brewnative", brew.display().to_string(), "native"),
        ("brewportable", brew.display().to_string(), "portable"),
        ("venvnative", venv.display().to_string(), "native"),
        ("venvportable", venv.display().to_string(), "portable"),
    ];
    for (name, python, worker) in &apps {
        yaml.push_str(&format!(
            "  {name}:\n    python: {python}\n    script: app/probe.py\n    worker: {worker}\n    hosts: [{name}]\n"
        ));
    }
    site.config(&yaml);
    let server = site.serve();
    for (name, _, worker) in &apps {
        let env = server.get(name, "/env").text();
        let software = format!("SERVER_SOFTWARE=wsgimux-{worker}");
        assert!(env.contains(&software), "{name}: {env}");
        let prefix = server.get(name, "/prefix").text();
        if name.starts_with("venv") {
            // The venv's own site-packages, not the base interpreter's.
            assert_eq!(prefix.trim(), venv.display().to_string(), "{name}");
        } else {
            assert!(!prefix.contains("/venv"), "{name}: {prefix}");
        }
    }
}

#[test]
fn apps_do_not_inherit_another_pythons_home_path_or_venv() {
    let (Some(py27), Some(py313)) = (require_python("2.7"), require_python("3.13")) else {
        return;
    };
    let site = Site::new();
    site.probe("app");
    let elsewhere = site.path().join("elsewhere");
    std::fs::create_dir_all(&elsewhere).expect("mkdir");
    site.config(&format!(
        "apps:\n  old:\n    python: {}\n    script: app/probe.py\n    hosts: [old]\n  new:\n    python: {}\n    script: app/probe.py\n    worker: native\n    hosts: [new]\n    env:\n      PYTHONPATH: {}\n",
        py27.display(),
        py313.display(),
        elsewhere.display()
    ));
    let bogus = site.path().join("no-such-home");
    let bogus = bogus.display().to_string();
    // What a shell with a 3.x venv activated, or macOS's framework launcher, leaves behind: a
    // PYTHONHOME that no Python here can start from.
    let server = Server::start_with(
        Path::new(env!("CARGO_BIN_EXE_wsgimux")),
        site.path().join("wsgimux.yaml"),
        site.path().join("wsgimux.log"),
        &[
            ("PYTHONHOME", &bogus),
            ("PYTHONPATH", "/shell/path"),
            ("VIRTUAL_ENV", "/shell/venv"),
            ("__PYVENV_LAUNCHER__", "/shell/venv/bin/python"),
        ],
    );
    for host in ["old", "new"] {
        assert!(
            server.get(host, "/ver").text().starts_with("CPython"),
            "{host}: {}",
            server.log_text()
        );
        for var in ["PYTHONHOME", "VIRTUAL_ENV", "__PYVENV_LAUNCHER__"] {
            let got = server.get(host, &format!("/getenv?name={var}")).text();
            assert_eq!(got.trim(), "<unset>", "{host} {var}");
        }
    }
    // An app's own `env:` still sets them.
    assert_eq!(
        server.get("old", "/getenv?name=PYTHONPATH").text().trim(),
        "<unset>"
    );
    assert_eq!(
        server.get("new", "/getenv?name=PYTHONPATH").text().trim(),
        elsewhere.display().to_string()
    );
    let log = server.log_text();
    assert!(
        log.contains("PYTHONHOME=") && log.contains("apps do not inherit it"),
        "{log}"
    );
}
