//! `tls: internal`: wsgimux's own local CA, for development (`*.test`, `localhost`). The root
//! is made once under `storage/internal/` and kept for years; leaf certificates are made at
//! the first handshake for a routed name, kept in memory, and made again when a third of
//! their short life is left.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use rustls::sign::CertifiedKey;

use crate::config::HostPattern;

use super::store::{private_dir, write_private, StoreError};

/// How long a leaf is valid.
const LEAF_LIFETIME: Duration = Duration::from_secs(7 * 24 * 3600);
/// How long the root is valid.
const ROOT_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Leaves kept at most (names asked for by handshakes; an app without hosts allows any).
const MOST_LEAVES: usize = 10_000;

/// Where the root's certificate is, under `storage`.
pub fn root_file(storage: &Path) -> PathBuf {
    storage.join("internal").join("root.pem")
}

fn root_key_file(storage: &Path) -> PathBuf {
    storage.join("internal").join("root.key")
}

/// The root (certificate PEM, key PEM): read, or made and stored.
pub fn load_or_create_root(storage: &Path) -> Result<(String, String), StoreError> {
    let (cert_path, key_path) = (root_file(storage), root_key_file(storage));
    let invalid = |path: &Path, message: String| StoreError::Invalid {
        path: path.to_path_buf(),
        message,
    };
    if let (Ok(cert), Ok(key)) = (
        std::fs::read_to_string(&cert_path),
        std::fs::read_to_string(&key_path),
    ) {
        return Ok((cert, key));
    }
    private_dir(&storage.join("internal"))?;
    let key = rcgen::KeyPair::generate().map_err(|e| invalid(&key_path, e.to_string()))?;
    let cert = root_params()
        .self_signed(&key)
        .map_err(|e| invalid(&cert_path, e.to_string()))?;
    write_private(&key_path, key.serialize_pem().as_bytes())?;
    write_private(&cert_path, cert.pem().as_bytes())?;
    tracing::info!(
        "tls: internal: made a local CA at {} (wsgimux trust adds it to this machine's trust store)",
        cert_path.display()
    );
    Ok((cert.pem(), key.serialize_pem()))
}

fn root_params() -> rcgen::CertificateParams {
    let mut params = rcgen::CertificateParams::default();
    let host = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_default();
    params.distinguished_name.push(
        rcgen::DnType::CommonName,
        format!("wsgimux local CA {host}").trim(),
    );
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "wsgimux development CA");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let now = SystemTime::now();
    params.not_before = (now - Duration::from_secs(3600)).into();
    params.not_after = (now + ROOT_LIFETIME).into();
    params
}

/// Issues leaves for the names routed on the config's hosts.
pub struct InternalIssuer {
    root_pem: String,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    /// The hosts apps are routed on; `any`: an app takes every host.
    hosts: Vec<HostPattern>,
    any: bool,
    leaves: Mutex<HashMap<String, (Arc<CertifiedKey>, SystemTime)>>,
}

impl std::fmt::Debug for InternalIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InternalIssuer")
            .field("hosts", &self.hosts)
            .field("any", &self.any)
            .finish_non_exhaustive()
    }
}

impl InternalIssuer {
    pub fn new(root: (String, String), hosts: Vec<HostPattern>, any: bool) -> Result<Self, String> {
        let key = rcgen::KeyPair::from_pem(&root.1).map_err(|e| format!("the root's key: {e}"))?;
        let issuer = rcgen::Issuer::from_ca_cert_pem(&root.0, key)
            .map_err(|e| format!("the root's certificate: {e}"))?;
        Ok(InternalIssuer {
            root_pem: root.0,
            issuer,
            hosts,
            any,
            leaves: Mutex::new(HashMap::new()),
        })
    }

    fn leaf(&self, name: &str) -> Result<(Arc<CertifiedKey>, SystemTime), String> {
        let mut params =
            rcgen::CertificateParams::new(vec![name.to_string()]).map_err(|e| e.to_string())?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let now = SystemTime::now();
        let not_after = now + LEAF_LIFETIME;
        params.not_before = (now - Duration::from_secs(300)).into();
        params.not_after = not_after.into();
        params.use_authority_key_identifier_extension = true;
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(|e| e.to_string())?;
        let chain = format!("{}{}", cert.pem(), self.root_pem);
        let certified =
            crate::tls::certified_key(chain.as_bytes(), key.serialize_pem().as_bytes())?;
        Ok((Arc::new(certified), not_after))
    }
}

impl crate::tls::IssueOnDemand for InternalIssuer {
    fn may_issue(&self, name: &str) -> bool {
        let name = name.trim_end_matches('.');
        let valid = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
        valid && (self.any || self.hosts.iter().any(|h| h.matches(name)))
    }

    fn issue(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        if !self.may_issue(name) {
            return None;
        }
        let now = SystemTime::now();
        let mut leaves = self.leaves.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((key, not_after)) = leaves.get(name) {
            // Made again when a third of its life is left.
            if not_after.duration_since(now).unwrap_or_default() > LEAF_LIFETIME / 3 {
                return Some(key.clone());
            }
        }
        if leaves.len() >= MOST_LEAVES {
            leaves.retain(|_, (_, not_after)| *not_after > now + LEAF_LIFETIME / 3);
        }
        match self.leaf(name) {
            Ok((key, not_after)) => {
                if leaves.len() < MOST_LEAVES {
                    leaves.insert(name.to_string(), (key.clone(), not_after));
                }
                Some(key)
            }
            Err(e) => {
                tracing::error!("tls: internal: cannot issue a certificate for {name}: {e}");
                None
            }
        }
    }
}
