//! TLS for the listeners that have `tls:`: certificates loaded from PEM files, chosen by SNI,
//! reloaded when their files change, or obtained at run time ([`obtained`]: ACME and the
//! internal CA); the rustls server config (ALPN h2 + http/1.1, and `acme-tls/1` on `tls: acme`
//! listeners); and the client config `https://` upstreams are verified with.
//!
//! Owns reading certificate and key files (preflight calls [`CertStore::load`] to report bad
//! files as config errors) and which certificate a handshake gets. Does not accept
//! connections (`server` does, with the acceptor built here) and does not obtain
//! certificates (`acme` does, and is the only writer of [`obtained`]).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;

use crate::config::{CertSource, CertSpec, TlsSpec};

/// The ALPN protocol of the TLS-ALPN-01 challenge (RFC 8737).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";
/// How often a handshake for a name with no certificate yet is logged, per name.
const NO_CERTIFICATE_LOG_EVERY: Duration = Duration::from_secs(60);

/// How often certificate files are checked for changes.
pub const CERT_CHECK_INTERVAL: Duration = Duration::from_secs(2);
/// Longest a client may take to complete the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {}: {source}", file.display())]
    Read {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {message}", file.display())]
    Invalid { file: PathBuf, message: String },
}

impl TlsError {
    /// The file at fault.
    pub fn file(&self) -> &Path {
        match self {
            TlsError::Read { file, .. } | TlsError::Invalid { file, .. } => file,
        }
    }
}

/// One loaded certificate: its chain and key, and the host names it is chosen for.
#[derive(Debug)]
struct Loaded {
    key: Arc<CertifiedKey>,
    /// Names from the config; empty: the names in the certificate.
    hosts: Vec<String>,
}

/// One TLS listener's certificates and the acceptor made from them (cheap to clone: both are
/// shared).
#[derive(Clone)]
pub struct TlsListener {
    pub store: Arc<CertStore>,
    pub acceptor: tokio_rustls::TlsAcceptor,
}

impl TlsListener {
    pub fn load(spec: &TlsSpec) -> Result<Self, TlsError> {
        let store = Arc::new(CertStore::load(spec)?);
        let acceptor = tokio_rustls::TlsAcceptor::from(store.server_config());
        Ok(TlsListener { store, acceptor })
    }
}

impl std::fmt::Debug for TlsListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsListener")
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

/// The certificates of one TLS listener, swapped whole when their files change.
#[derive(Debug)]
pub struct CertStore {
    spec: TlsSpec,
    current: RwLock<Arc<Vec<Loaded>>>,
    stamps: Mutex<Vec<Option<FileStamp>>>,
}

/// What tells that a file changed: replaced (inode), rewritten (mtime, size).
#[derive(Debug, Clone, PartialEq, Eq)]
struct FileStamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

fn stamp(path: &Path) -> Option<FileStamp> {
    use std::os::unix::fs::MetadataExt;
    // Follows symlinks: certbot-style `live/` links change their target.
    let m = std::fs::metadata(path).ok()?;
    Some(FileStamp {
        modified: m.modified().ok(),
        len: m.len(),
        inode: m.ino(),
    })
}

impl CertStore {
    /// Reads every certificate and key; the first bad file is the error.
    pub fn load(spec: &TlsSpec) -> Result<Self, TlsError> {
        let stamps = stamps_of(spec);
        let loaded = load_all(spec)?;
        Ok(CertStore {
            spec: spec.clone(),
            current: RwLock::new(Arc::new(loaded)),
            stamps: Mutex::new(stamps),
        })
    }

    pub fn spec(&self) -> &TlsSpec {
        &self.spec
    }

    /// Reloads the certificates if any of their files changed. A change that does not load
    /// (a key written before its certificate, say) keeps the old certificates and is
    /// retried at the next check.
    pub fn reload_if_changed(&self) -> Option<Result<(), TlsError>> {
        let now = stamps_of(&self.spec);
        let mut stamps = self.stamps.lock().unwrap_or_else(|e| e.into_inner());
        if *stamps == now {
            return None;
        }
        match load_all(&self.spec) {
            Ok(loaded) => {
                *stamps = now;
                *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(loaded);
                Some(Ok(()))
            }
            Err(e) => Some(Err(e)),
        }
    }

    fn snapshot(&self) -> Arc<Vec<Loaded>> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The certificate for a host name: for files, configured names first (exact, then `*.`
    /// wildcard), then the names certificates carry, in config order; else what was obtained.
    fn find(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        match self.spec.source {
            CertSource::Files => {}
            CertSource::Acme => return obtained().acme(&name),
            CertSource::Internal => return obtained().internal(&name),
        }
        let all = self.snapshot();
        let configured = |wild: bool| {
            all.iter().find(|l| {
                l.hosts.iter().any(|h| match h.strip_prefix("*.") {
                    Some(suffix) if wild => name
                        .strip_suffix(suffix)
                        .is_some_and(|head| head.ends_with('.') && head.len() > 1),
                    Some(_) => false,
                    None => !wild && *h == name,
                })
            })
        };
        if let Some(l) = configured(false).or_else(|| configured(true)) {
            return Some(l.key.clone());
        }
        let server_name = ServerName::try_from(name.as_str()).ok()?;
        all.iter()
            .filter(|l| l.hosts.is_empty())
            .find(|l| names_match(&l.key, &server_name))
            .map(|l| l.key.clone())
    }

    /// The leaf certificates loaded from files (DER), in config order.
    pub fn leaves(&self) -> Vec<Vec<u8>> {
        self.snapshot()
            .iter()
            .filter_map(|l| l.key.cert.first().map(|c| c.as_ref().to_vec()))
            .collect()
    }

    /// True when a certificate is configured for, carries, or was obtained for `host` (the
    /// internal CA covers every name it may issue for).
    pub fn covers(&self, host: &str) -> bool {
        match self.spec.source {
            CertSource::Internal => obtained().may_issue(host),
            _ => self.find(host).is_some(),
        }
    }

    /// The rustls config for a listener: this store picks certificates; h2 and http/1.1, and
    /// http/1.0 for a client offering only that (served by the HTTP/1.1 server, which answers
    /// a 1.0 request as nginx does, rather than a `no_application_protocol` alert).
    pub fn server_config(self: &Arc<Self>) -> Arc<ServerConfig> {
        let mut config = ServerConfig::builder()
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(Resolver(self.clone())));
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec(), b"http/1.0".to_vec()];
        if self.spec.source == CertSource::Acme {
            // Chosen only by a CA's validation request, which offers nothing else.
            config.alpn_protocols.push(ACME_TLS_ALPN.to_vec());
        }
        Arc::new(config)
    }
}

fn names_match(key: &CertifiedKey, name: &ServerName<'_>) -> bool {
    let Some(end_entity) = key.cert.first() else {
        return false;
    };
    webpki::EndEntityCert::try_from(end_entity)
        .and_then(|c| c.verify_is_valid_for_subject_name(name))
        .is_ok()
}

fn stamps_of(spec: &TlsSpec) -> Vec<Option<FileStamp>> {
    spec.certificates
        .iter()
        .flat_map(|c| [stamp(&c.cert), stamp(&c.key)])
        .collect()
}

fn load_all(spec: &TlsSpec) -> Result<Vec<Loaded>, TlsError> {
    spec.certificates.iter().map(load_one).collect()
}

fn load_one(spec: &CertSpec) -> Result<Loaded, TlsError> {
    let invalid = |file: &Path, message: String| TlsError::Invalid {
        file: file.to_path_buf(),
        message,
    };
    let read = |file: &Path| {
        std::fs::read(file).map_err(|source| TlsError::Read {
            file: file.to_path_buf(),
            source,
        })
    };
    let cert_pem = read(&spec.cert)?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| invalid(&spec.cert, format!("not a PEM certificate file ({e})")))?;
    if chain.is_empty() {
        return Err(invalid(&spec.cert, "holds no PEM certificate".into()));
    }
    webpki::EndEntityCert::try_from(&chain[0]).map_err(|e| {
        invalid(
            &spec.cert,
            format!("the first certificate is not valid ({e})"),
        )
    })?;
    let key_pem = read(&spec.key)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
        invalid(
            &spec.key,
            format!("holds no PKCS#8, RSA or EC private key in PEM ({e})"),
        )
    })?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| invalid(&spec.key, format!("unsupported private key ({e})")))?;
    let certified = CertifiedKey::new(chain, signing);
    match certified.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(_) => {
            return Err(invalid(
                &spec.key,
                format!("does not match the certificate in {}", spec.cert.display()),
            ))
        }
    }
    Ok(Loaded {
        key: Arc::new(certified),
        hosts: spec.hosts.clone(),
    })
}

/// SNI → certificate. Files: without SNI, or for a name no certificate has, the first
/// certificate (as nginx's default server does). Obtained certificates: none for a name that
/// has none yet — the handshake fails at once, and is logged — never another name's.
#[derive(Debug)]
struct Resolver(Arc<CertStore>);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let source = self.0.spec.source;
        if source == CertSource::Files {
            return hello
                .server_name()
                .and_then(|n| self.0.find(n))
                .or_else(|| self.0.snapshot().first().map(|l| l.key.clone()));
        }
        let name = hello.server_name().map(|n| n.to_ascii_lowercase());
        let validating = hello
            .alpn()
            .is_some_and(|mut offered| offered.any(|p| p == ACME_TLS_ALPN));
        match (name, validating) {
            (Some(name), true) if source == CertSource::Acme => obtained().alpn_challenge(&name),
            (Some(name), _) => {
                let found = self.0.find(&name);
                if found.is_none() {
                    obtained().log_missing(&name, source);
                }
                found
            }
            (None, _) => {
                tracing::debug!("TLS handshake without a server name on a tls: {} listener: no certificate to choose", source.as_str());
                None
            }
        }
    }
}

/// Issues certificates at the first handshake for a name (the internal CA).
pub trait IssueOnDemand: Send + Sync + std::fmt::Debug {
    /// Whether `name` is one it issues for.
    fn may_issue(&self, name: &str) -> bool;
    /// A certificate for `name`, made now or kept from before; none if it may not.
    fn issue(&self, name: &str) -> Option<Arc<CertifiedKey>>;
}

/// Certificates obtained at run time, read by handshakes. `acme`'s manager is the only writer.
#[derive(Debug, Default)]
pub struct Obtained {
    by_name: RwLock<std::collections::HashMap<String, Arc<CertifiedKey>>>,
    /// TLS-ALPN-01 validation certificates, by name, while their challenge is open.
    challenges: RwLock<std::collections::HashMap<String, Arc<CertifiedKey>>>,
    internal: RwLock<Option<Arc<dyn IssueOnDemand>>>,
    /// Why a name has no certificate yet (`pending`, `failed: …`), for the handshake's log line.
    why: RwLock<std::collections::HashMap<String, String>>,
    logged: Mutex<std::collections::HashMap<String, std::time::Instant>>,
}

/// The process's obtained certificates.
pub fn obtained() -> &'static Obtained {
    static OBTAINED: std::sync::OnceLock<Obtained> = std::sync::OnceLock::new();
    OBTAINED.get_or_init(Obtained::default)
}

impl Obtained {
    fn acme(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        read(&self.by_name).get(name).cloned()
    }

    fn alpn_challenge(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        read(&self.challenges).get(name).cloned()
    }

    fn internal(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        let issuer = read(&self.internal).clone()?;
        issuer.issue(name)
    }

    fn may_issue(&self, name: &str) -> bool {
        read(&self.internal)
            .as_ref()
            .is_some_and(|i| i.may_issue(&name.to_ascii_lowercase()))
    }

    /// Serves `key` for `name` to new handshakes from now on (open connections keep theirs).
    pub fn publish(&self, name: &str, key: Arc<CertifiedKey>) {
        write(&self.by_name).insert(name.to_string(), key);
    }

    /// Stops serving a name no longer routed.
    pub fn withdraw(&self, name: &str) {
        write(&self.by_name).remove(name);
        write(&self.why).remove(name);
    }

    /// Says why `name` has no certificate (none: it is not being obtained).
    pub fn explain(&self, name: &str, why: Option<&str>) {
        let mut all = write(&self.why);
        match why {
            Some(w) => all.insert(name.to_string(), w.to_string()),
            None => all.remove(name),
        };
    }

    /// Whether a certificate is served for `name`.
    pub fn serves(&self, name: &str) -> bool {
        read(&self.by_name).contains_key(name)
    }

    /// Answers TLS-ALPN-01 validation for `name` with `key` (none: the challenge is over).
    pub fn set_alpn_challenge(&self, name: &str, key: Option<Arc<CertifiedKey>>) {
        let mut all = write(&self.challenges);
        match key {
            Some(k) => all.insert(name.to_string(), k),
            None => all.remove(name),
        };
    }

    /// Who issues `tls: internal` certificates.
    pub fn set_internal(&self, issuer: Option<Arc<dyn IssueOnDemand>>) {
        *write(&self.internal) = issuer;
    }

    fn log_missing(&self, name: &str, source: CertSource) {
        let now = std::time::Instant::now();
        let mut logged = self.logged.lock().unwrap_or_else(|e| e.into_inner());
        let due = logged
            .get(name)
            .is_none_or(|t| now.duration_since(*t) >= NO_CERTIFICATE_LOG_EVERY);
        if due && logged.len() < 10_000 {
            logged.insert(name.to_string(), now);
            let state = read(&self.why).get(name).cloned();
            let why = match (source, state) {
                (CertSource::Acme, Some(state)) => format!("it is not obtained yet ({state})"),
                (CertSource::Acme, None) => {
                    "no app is routed on it exactly, so none is ordered".to_string()
                }
                _ => "the internal CA does not issue for it (it is not routed here)".to_string(),
            };
            tracing::warn!("TLS handshake for {name:?} refused: no certificate: {why}");
        }
    }
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|e| e.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|e| e.into_inner())
}

/// A chain and key in PEM (as an ACME CA or the internal CA gives them) made ready to serve.
pub fn certified_key(chain_pem: &[u8], key_pem: &[u8]) -> Result<CertifiedKey, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("not a PEM certificate chain ({e})"))?;
    if chain.is_empty() {
        return Err("holds no PEM certificate".into());
    }
    let key =
        PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| format!("no private key ({e})"))?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| format!("unsupported private key ({e})"))?;
    Ok(CertifiedKey::new(chain, signing))
}

/// The rustls client config for `https://` upstreams: the system's root certificates, or only
/// the CA certificates in `ca_file`. Built once per file version (loading the system's roots
/// reads many files) and shared.
pub fn client_config(ca_file: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    type Key = (Option<PathBuf>, Option<SystemTime>);
    static BUILT: Mutex<Vec<(Key, Arc<rustls::ClientConfig>)>> = Mutex::new(Vec::new());
    let key: Key = (
        ca_file.map(Path::to_path_buf),
        ca_file.and_then(|f| f.metadata().and_then(|m| m.modified()).ok()),
    );
    if let Some(found) = BUILT
        .lock()
        .ok()
        .and_then(|b| b.iter().find(|(k, _)| *k == key).map(|(_, c)| c.clone()))
    {
        return Ok(found);
    }
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(file) => {
            let pem = std::fs::read(file).map_err(|source| TlsError::Read {
                file: file.to_path_buf(),
                source,
            })?;
            let invalid = |message: String| TlsError::Invalid {
                file: file.to_path_buf(),
                message,
            };
            for cert in CertificateDer::pem_slice_iter(&pem) {
                let cert =
                    cert.map_err(|e| invalid(format!("not a PEM certificate file ({e})")))?;
                roots
                    .add(cert)
                    .map_err(|e| invalid(format!("not a CA certificate ({e})")))?;
            }
            if roots.is_empty() {
                return Err(invalid("holds no PEM certificate".into()));
            }
        }
        None => {
            // Unreadable entries in the system store are skipped; none at all is an error.
            let found = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(found.certs);
            if roots.is_empty() {
                return Err(TlsError::Invalid {
                    file: PathBuf::from("(the system's certificate store)"),
                    message: "holds no root certificates; give the upstream's CA in upstream_ca"
                        .into(),
                });
            }
        }
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| TlsError::Invalid {
        file: PathBuf::new(),
        message: e.to_string(),
    })?
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let config = Arc::new(config);
    if let Ok(mut built) = BUILT.lock() {
        built.retain(|(k, _)| k.0 != key.0);
        built.push((key, config.clone()));
    }
    Ok(config)
}
