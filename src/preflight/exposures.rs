//! What a valid config leaves open that its author may not mean to: said as warnings by
//! `check` and `serve`, never refused. Pure.

use crate::config::Config;

use super::{ReadyApp, WorkerKind};

/// What a valid config leaves open that its author may not mean to, one line each (warnings,
/// not errors): an app that would run as root, an admin listener that is not on loopback (it
/// has no authentication). `root`: whether wsgimux runs as root.
pub fn exposures(config: &Config, apps: &[ReadyApp], root: bool) -> Vec<String> {
    let mut out = Vec::new();
    let top_is_root = config.user.as_deref().map(|u| u == "root" || u == "0");
    for app in apps.iter().filter(|a| a.worker != WorkerKind::Upstream) {
        let name = &app.spec.name;
        let why = match (&app.account, top_is_root) {
            (Some(a), _) if a.uid == 0 => Some(format!("its user: is {}", a.user)),
            (Some(_), _) => None,
            (None, Some(true)) => Some("the top-level user: is root".to_string()),
            (None, Some(false)) => None,
            (None, None) if root => Some(format!(
                "wsgimux runs as root and neither user: nor apps.{name}.user is set"
            )),
            (None, None) => None,
        };
        if let Some(why) = why {
            out.push(format!(
                "app {name} would run as root ({why}): set user: (or `wsgimux run --user`) to an unprivileged account"
            ));
        }
    }
    if let Some(admin) = config.admin.filter(|a| !a.ip().is_loopback()) {
        out.push(format!(
            "admin.listen {admin} is not loopback: the status page and /metrics have no authentication, and anyone who reaches {admin} sees every app's routes, processes and errors; keep it on 127.0.0.1 or [::1] (or behind a proxy that authenticates)"
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::account::Account;
    use crate::config::Entry;

    #[test]
    fn exposures_name_root_apps_and_an_admin_listener_off_loopback() {
        let yaml = |top: &str| {
            format!("{top}apps:\n  web:\n    python: python3\n    script: a.py\n  up:\n    upstream: \"http://127.0.0.1:9\"\n    mount: /up\n")
        };
        let ready = |config: &Config, account: Option<u32>| -> Vec<ReadyApp> {
            config
                .apps
                .iter()
                .map(|spec| ReadyApp {
                    spec: spec.clone(),
                    interpreter: None,
                    worker: match spec.process.entry {
                        Entry::Upstream { .. } => WorkerKind::Upstream,
                        _ => WorkerKind::Native,
                    },
                    account: account.map(|uid| Account {
                        user: if uid == 0 {
                            "root".into()
                        } else {
                            "www".into()
                        },
                        uid,
                        gid: uid,
                        groups: vec![uid],
                        home: "/".into(),
                    }),
                })
                .collect()
        };
        let file = Path::new("/srv/wsgimux.yaml");
        let plain = crate::config::from_yaml(&yaml(""), file).unwrap();
        // As root with no account: the app (not the upstream, which runs nothing) is named.
        let said = exposures(&plain, &ready(&plain, None), true);
        assert_eq!(said.len(), 1, "{said:?}");
        assert!(
            said[0].starts_with("app web would run as root (wsgimux runs as root"),
            "{said:?}"
        );
        assert!(exposures(&plain, &ready(&plain, None), false).is_empty());
        assert!(exposures(&plain, &ready(&plain, Some(33)), true).is_empty());
        assert!(exposures(&plain, &ready(&plain, Some(0)), false)[0].contains("its user: is root"));
        let top = crate::config::from_yaml(&yaml("user: www-data\n"), file).unwrap();
        assert!(exposures(&top, &ready(&top, None), true).is_empty());
        let top_root = crate::config::from_yaml(&yaml("user: root\n"), file).unwrap();
        assert!(exposures(&top_root, &ready(&top_root, None), true)[0]
            .contains("top-level user: is root"));
        for (admin, warned) in [
            ("0.0.0.0:9180", true),
            ("127.0.0.1:9180", false),
            ("[::1]:9180", false),
            ("[::]:9180", true),
        ] {
            let c =
                crate::config::from_yaml(&yaml(&format!("admin: {{listen: \"{admin}\"}}\n")), file)
                    .unwrap();
            let said = exposures(&c, &ready(&c, Some(33)), true);
            assert_eq!(
                said.iter().any(|w| w.contains("is not loopback")),
                warned,
                "{admin}: {said:?}"
            );
        }
    }
}
