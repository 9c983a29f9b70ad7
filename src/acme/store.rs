//! The `acme.storage` folder, the one place certificates, the account and challenge tokens
//! live — so several wsgimux hosts sharing it (NFS, EFS) share them:
//!
//! ```text
//! accounts/<ca>.json           the account at that CA (its key): 0600
//! certificates/<ca>/<name>.pem the chain, then its key, in one file (replaced whole): 0600
//! locks/<ca>/<name>.lock       held while one host orders the name; stale after LOCK_EXPIRY
//! http-01/<token>              key authorizations, answered by whichever host the CA reaches
//! internal/root.pem, root.key  the local CA of `tls: internal`
//! ```
//!
//! Every folder is 0700. Files are written to a temporary name and renamed into place, so a
//! reader (another host included) sees the old file or the new one, never half of one.
//! Blocking file calls: run on a blocking thread.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// A lock older than this is a dead host's: taken over. Longer than an order may take.
pub const LOCK_EXPIRY: Duration = Duration::from_secs(10 * 60);

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("acme storage {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("acme storage {}: {message}", path.display())]
    Invalid { path: PathBuf, message: String },
}

/// The storage folder, seen for one CA.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
    /// The CA's directory URL as a file name.
    ca: String,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A directory URL as a file name: `https://127.0.0.1:14000/dir` → `127.0.0.1-14000-dir`.
pub fn ca_slug(directory: &str) -> String {
    let rest = directory
        .trim_start_matches("https://")
        .trim_end_matches('/');
    rest.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' {
                c
            } else {
                '-'
            }
        })
        .collect()
}

/// Makes `dir` and its parents, each 0700 when made here; refuses one others may write to.
pub fn private_dir(dir: &Path) -> Result<(), StoreError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io(dir))?;
    let meta = std::fs::metadata(dir).map_err(io(dir))?;
    if meta.mode() & 0o022 != 0 {
        return Err(StoreError::Invalid {
            path: dir.to_path_buf(),
            message: format!(
                "others may write to it (mode {:o}); it holds private keys: chmod 700 it",
                meta.mode() & 0o777
            ),
        });
    }
    Ok(())
}

/// Writes `bytes` to `path` as a 0600 file, whole or not at all.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    private_dir(dir)?;
    let temp = dir.join(format!(
        ".{}.{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
        std::process::id()
    ));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temp)
        .map_err(io(&temp))?;
    f.write_all(bytes).map_err(io(&temp))?;
    f.sync_all().map_err(io(&temp))?;
    std::fs::set_permissions(&temp, std::fs::Permissions::from_mode(0o600)).map_err(io(&temp))?;
    std::fs::rename(&temp, path).map_err(io(path))
}

fn read_if_there(path: &Path) -> Result<Option<Vec<u8>>, StoreError> {
    match std::fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io(path)(e)),
    }
}

impl Store {
    pub fn new(root: &Path, directory: &str) -> Self {
        Store {
            root: root.to_path_buf(),
            ca: ca_slug(directory),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn account_file(&self) -> PathBuf {
        self.root.join("accounts").join(format!("{}.json", self.ca))
    }

    pub fn certificate_file(&self, name: &str) -> PathBuf {
        self.root
            .join("certificates")
            .join(&self.ca)
            .join(format!("{name}.pem"))
    }

    fn lock_file(&self, name: &str) -> PathBuf {
        self.root
            .join("locks")
            .join(&self.ca)
            .join(format!("{name}.lock"))
    }

    /// The stored account (JSON credentials), if there is one.
    pub fn account(&self) -> Result<Option<Vec<u8>>, StoreError> {
        read_if_there(&self.account_file())
    }

    pub fn save_account(&self, json: &[u8]) -> Result<(), StoreError> {
        private_dir(&self.root)?;
        write_private(&self.account_file(), json)
    }

    /// The stored chain and key of `name`, as one PEM text.
    pub fn certificate(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        read_if_there(&self.certificate_file(name))
    }

    pub fn save_certificate(&self, name: &str, chain: &str, key: &str) -> Result<(), StoreError> {
        let mut both = chain.trim_end().to_string();
        both.push('\n');
        both.push_str(key.trim_end());
        both.push('\n');
        private_dir(&self.root)?;
        write_private(&self.certificate_file(name), both.as_bytes())
    }

    /// Takes the lock on ordering `name`: false while another host holds it (and it is not
    /// stale).
    pub fn try_lock(&self, name: &str) -> Result<bool, StoreError> {
        let path = self.lock_file(name);
        private_dir(path.parent().unwrap_or(Path::new(".")))?;
        for _ in 0..2 {
            let made = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path);
            match made {
                Ok(mut f) => {
                    let who = format!("{} {}\n", hostname(), std::process::id());
                    f.write_all(who.as_bytes()).map_err(io(&path))?;
                    return Ok(true);
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let age = std::fs::metadata(&path)
                        .and_then(|m| m.modified())
                        .ok()
                        .and_then(|t| SystemTime::now().duration_since(t).ok());
                    match age {
                        Some(a) if a >= LOCK_EXPIRY => {
                            tracing::warn!(
                                "acme: the lock on ordering {name} is {}s old, its host is gone: taking it over",
                                a.as_secs()
                            );
                            let _ = std::fs::remove_file(&path);
                        }
                        _ => return Ok(false),
                    }
                }
                Err(e) => return Err(io(&path)(e)),
            }
        }
        Ok(false)
    }

    pub fn unlock(&self, name: &str) {
        let _ = std::fs::remove_file(self.lock_file(name));
    }

    /// Publishes an HTTP-01 key authorization for every host sharing the storage.
    pub fn put_token(&self, token: &str, key_authorization: &str) -> Result<(), StoreError> {
        write_private(&token_file(&self.root, token), key_authorization.as_bytes())
    }

    pub fn remove_token(&self, token: &str) {
        let _ = std::fs::remove_file(token_file(&self.root, token));
    }
}

/// Where the key authorization of an HTTP-01 `token` is (tokens are base64url: no `/`).
pub fn token_file(root: &Path, token: &str) -> PathBuf {
    root.join("http-01").join(token)
}

fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "unknown-host".into())
}

impl Store {
    /// [`Store::try_lock`] on a blocking thread.
    pub async fn try_lock_async(self, name: &str) -> Result<bool, StoreError> {
        let n = name.to_string();
        let root = self.root.clone();
        tokio::task::spawn_blocking(move || self.try_lock(&n))
            .await
            .unwrap_or_else(|e| {
                Err(StoreError::Invalid {
                    path: root,
                    message: e.to_string(),
                })
            })
    }

    /// [`Store::unlock`] on a blocking thread.
    pub async fn unlock_async(self, name: &str) {
        let n = name.to_string();
        let _ = tokio::task::spawn_blocking(move || self.unlock(&n)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lock_is_held_until_released_or_stale() {
        let dir = tempfile::tempdir().expect("dir");
        let store = Store::new(dir.path(), "https://127.0.0.1:14000/dir");
        assert!(store.try_lock("shop.test").expect("lock"));
        assert!(
            !store.try_lock("shop.test").expect("lock"),
            "held by the first"
        );
        assert!(
            store.try_lock("blog.test").expect("lock"),
            "one lock per name"
        );
        store.unlock("shop.test");
        assert!(store.try_lock("shop.test").expect("lock"));
        // A dead host's lock: older than the expiry, taken over.
        let file = store.lock_file("shop.test");
        let old = SystemTime::now() - LOCK_EXPIRY - Duration::from_secs(1);
        std::fs::File::options()
            .write(true)
            .open(&file)
            .and_then(|f| f.set_modified(old))
            .expect("age the lock");
        assert!(store.try_lock("shop.test").expect("lock"));
    }

    #[test]
    fn files_are_private_and_written_whole() {
        let dir = tempfile::tempdir().expect("dir");
        let root = dir.path().join("acme");
        let store = Store::new(&root, "https://acme-v02.api.letsencrypt.org/directory");
        store
            .save_certificate("shop.test", "CHAIN", "KEY")
            .expect("save");
        let file = store.certificate_file("shop.test");
        assert!(file.starts_with(root.join("certificates/acme-v02.api.letsencrypt.org-directory")));
        let mode = |p: &Path| std::fs::metadata(p).expect("meta").mode() & 0o777;
        assert_eq!(mode(&file), 0o600);
        assert_eq!(mode(&root), 0o700);
        assert_eq!(mode(file.parent().expect("dir")), 0o700);
        assert_eq!(
            store.certificate("shop.test").expect("read").as_deref(),
            Some(&b"CHAIN\nKEY\n"[..])
        );
        // A folder others may write to is refused: it holds keys.
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o777)).expect("chmod");
        assert!(store.save_account(b"{}").is_err());
    }
}
