//! `wsgimux trust` / `wsgimux untrust`: the `tls: internal` CA's root added to, or removed
//! from, this machine's trust store — the macOS System keychain (`security`), Debian and
//! Ubuntu (`update-ca-certificates`), Fedora and RHEL (`update-ca-trust`). Makes the root when
//! there is none yet; needs root only for the trust store itself.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::preflight::LoadError;

#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("{0}")]
    Store(#[from] crate::acme::store::StoreError),
    #[error("{0}")]
    Root(String),
    #[error("changing this machine's trust store needs root: run `sudo wsgimux {command} --config {}`", config.display())]
    NotRoot {
        command: &'static str,
        config: PathBuf,
    },
    #[error("this machine has no trust store wsgimux knows (neither security, update-ca-certificates nor update-ca-trust); add {} to it by hand", root.display())]
    NoStore { root: PathBuf },
    #[error("{program} failed ({status}): {output}")]
    Tool {
        program: String,
        status: String,
        output: String,
    },
}

/// Adds the root to the trust store: what was done, in lines.
pub fn trust(config: &Path) -> Result<String, TrustError> {
    let (root, facts) = root_of(config, true)?;
    let mut said = format!(
        "local CA: {} ({}, serial {})\n",
        root.display(),
        facts.issuer,
        facts.serial
    );
    if !crate::account::is_root() {
        return Err(TrustError::NotRoot {
            command: "trust",
            config: config.to_path_buf(),
        });
    }
    match store(&root)? {
        Store::Keychain => {
            run(
                "security",
                &["add-trusted-cert", "-d", "-r", "trustRoot", "-k", KEYCHAIN],
                &root,
            )?;
            said.push_str(&format!(
                "added it to {KEYCHAIN} as a trusted root (security add-trusted-cert)\n"
            ));
        }
        Store::Anchors { dir, update } => {
            let file = dir.join(anchor_name(&facts.serial, update));
            std::fs::copy(&root, &file).map_err(|e| {
                TrustError::Root(format!("cannot copy it to {}: {e}", file.display()))
            })?;
            run_update(update, false)?;
            said.push_str(&format!(
                "copied it to {} and ran {update}\n",
                file.display()
            ));
        }
    }
    said.push_str("browsers that keep their own store (Firefox) need it added there too\n");
    Ok(said)
}

/// Removes the root from the trust store: what was done, in lines.
pub fn untrust(config: &Path) -> Result<String, TrustError> {
    let (root, facts) = root_of(config, false)?;
    if !crate::account::is_root() {
        return Err(TrustError::NotRoot {
            command: "untrust",
            config: config.to_path_buf(),
        });
    }
    let mut said = String::new();
    match store(&root)? {
        Store::Keychain => {
            run("security", &["remove-trusted-cert", "-d"], &root)?;
            said.push_str(&format!(
                "removed {} from the trusted roots (security remove-trusted-cert)\n",
                root.display()
            ));
        }
        Store::Anchors { dir, update } => {
            let file = dir.join(anchor_name(&facts.serial, update));
            match std::fs::remove_file(&file) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    said.push_str(&format!("{} was not there\n", file.display()));
                }
                Err(e) => {
                    return Err(TrustError::Root(format!(
                        "cannot remove {}: {e}",
                        file.display()
                    )))
                }
            }
            run_update(update, true)?;
            said.push_str(&format!("removed {} and ran {update}\n", file.display()));
        }
    }
    Ok(said)
}

const KEYCHAIN: &str = "/Library/Keychains/System.keychain";

enum Store {
    Keychain,
    /// A folder of anchors and the program that rebuilds the bundle from it.
    Anchors {
        dir: PathBuf,
        update: &'static str,
    },
}

fn store(root: &Path) -> Result<Store, TrustError> {
    if cfg!(target_os = "macos") {
        return Ok(Store::Keychain);
    }
    let candidates = [
        ("/usr/local/share/ca-certificates", "update-ca-certificates"),
        ("/etc/pki/ca-trust/source/anchors", "update-ca-trust"),
    ];
    for (dir, update) in candidates {
        if Path::new(dir).is_dir() && on_path(update) {
            return Ok(Store::Anchors {
                dir: dir.into(),
                update,
            });
        }
    }
    Err(TrustError::NoStore {
        root: root.to_path_buf(),
    })
}

/// Debian's tool reads only `*.crt` files.
fn anchor_name(serial: &str, update: &str) -> String {
    let short: String = serial.chars().take(16).collect();
    let ext = if update == "update-ca-certificates" {
        "crt"
    } else {
        "pem"
    };
    format!("wsgimux-local-ca-{short}.{ext}")
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
        || ["/usr/sbin", "/sbin"]
            .iter()
            .any(|d| Path::new(d).join(program).is_file())
}

fn run_update(update: &str, removing: bool) -> Result<(), TrustError> {
    let args: &[&str] = match (update, removing) {
        ("update-ca-certificates", true) => &["--fresh"],
        ("update-ca-certificates", false) => &[],
        _ => &["extract"],
    };
    tool(update, args.iter().map(std::ffi::OsStr::new))
}

fn run(program: &str, args: &[&str], root: &Path) -> Result<(), TrustError> {
    let args = args.iter().map(std::ffi::OsStr::new);
    tool(program, args.chain([root.as_os_str()]))
}

/// Runs a trust-store program; its output is the error when it fails.
fn tool<'a>(
    program: &str,
    args: impl Iterator<Item = &'a std::ffi::OsStr>,
) -> Result<(), TrustError> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| TrustError::Tool {
            program: program.into(),
            status: "did not start".into(),
            output: e.to_string(),
        })?;
    checked(program, out)
}

fn checked(program: &str, out: std::process::Output) -> Result<(), TrustError> {
    if out.status.success() {
        return Ok(());
    }
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Err(TrustError::Tool {
        program: program.into(),
        status: out.status.to_string(),
        output: text.trim().to_string(),
    })
}

/// The config's local CA root (made when `make` and there is none) and its facts.
fn root_of(
    config: &Path,
    make: bool,
) -> Result<(PathBuf, crate::acme::certificate::Facts), TrustError> {
    let file = crate::preflight::config_path(config);
    let text = std::fs::read_to_string(&file).map_err(|source| LoadError::Read {
        path: file.clone(),
        source,
    })?;
    let parsed = crate::config::from_yaml(&text, &file).map_err(LoadError::Config)?;
    let storage = parsed.acme.storage;
    let root = crate::acme::root_file(&storage);
    let pem = if make {
        let had = root.exists();
        let pem = crate::acme::load_or_create_root(&storage)?.0;
        if !had {
            give_to_config_owner(&file, &storage);
        }
        pem
    } else {
        std::fs::read_to_string(&root)
            .map_err(|e| TrustError::Root(format!("no local CA at {}: {e}", root.display())))?
    };
    let facts = crate::acme::certificate::Facts::of_pem(&pem)
        .map_err(|e| TrustError::Root(format!("{}: {e}", root.display())))?;
    Ok((root, facts))
}

/// Made by root (under sudo) in someone's storage: the files go to the config's owner, who
/// runs `serve`.
fn give_to_config_owner(config: &Path, storage: &Path) {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::metadata(config) else {
        return;
    };
    if meta.uid() == 0 {
        return;
    }
    let internal = storage.join("internal");
    for path in [
        storage.to_path_buf(),
        internal.clone(),
        internal.join("root.pem"),
        internal.join("root.key"),
    ] {
        if let Err(e) = std::os::unix::fs::chown(&path, Some(meta.uid()), Some(meta.gid())) {
            tracing::warn!("cannot give {} to uid {}: {e}", path.display(), meta.uid());
        }
    }
}
