//! Certificates wsgimux obtains itself: from an ACME CA for `tls: acme` listeners (one order
//! per routed exact host, kept and renewed in the background), and from its local CA for
//! `tls: internal`. Answers HTTP-01 challenges (`http01_answer`, asked by the proxy before
//! routing); TLS-ALPN-01 answers are handed to `tls`.
//!
//! The manager task is the only writer of `tls::obtained()`; each name's task writes only its
//! own entry of the certificate status. A reload hands the manager the new config
//! ([`Manager::apply`]): added names are ordered, removed ones stop being renewed and served,
//! the others are untouched.

pub mod certificate;
mod client;
mod internal;
mod order;
pub mod renew;
pub mod store;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::mpsc;

use crate::config::{acme_names, AcmeSpec, CertSource, Config, HostPattern};

use certificate::Held;
use store::Store;

pub use internal::{load_or_create_root, root_file};

/// How often a name waits to look again while another host holds its order lock.
const LOCKED_RECHECK: Duration = Duration::from_secs(3);

/// What status shows of one certificate.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CertStatus {
    pub names: Vec<String>,
    /// `acme`, `internal`, `file`.
    pub source: String,
    pub issuer: Option<String>,
    pub serial: Option<String>,
    /// Seconds since the epoch.
    pub not_after: Option<u64>,
    /// `valid`, `pending`, `renewing`, or `failed: why`.
    pub state: String,
    /// Since when it is in this state (seconds since the epoch).
    pub since: u64,
    pub next_renewal: Option<u64>,
    pub orders_succeeded: u64,
    pub orders_failed: u64,
}

pub fn epoch(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

static STATUS: Mutex<BTreeMap<String, CertStatus>> = Mutex::new(BTreeMap::new());

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Every certificate wsgimux obtains, by first name.
pub fn status() -> Vec<CertStatus> {
    lock(&STATUS).values().cloned().collect()
}

fn set_status(name: &str, change: impl FnOnce(&mut CertStatus)) {
    let mut all = lock(&STATUS);
    let entry = all.entry(name.to_string()).or_insert_with(|| CertStatus {
        names: vec![name.to_string()],
        source: "acme".into(),
        issuer: None,
        serial: None,
        not_after: None,
        state: "pending".into(),
        since: epoch(SystemTime::now()),
        next_renewal: None,
        orders_succeeded: 0,
        orders_failed: 0,
    });
    let before = entry.state.clone();
    change(entry);
    if entry.state != before {
        entry.since = epoch(SystemTime::now());
        let unserved = (entry.state != "valid").then_some(entry.state.as_str());
        crate::tls::obtained().explain(name, unserved);
    }
}

/// HTTP-01 key authorizations of this host's open orders, by token.
static TOKENS: Mutex<Option<HashMap<String, String>>> = Mutex::new(None);

fn remember_token(token: &str, key_authorization: &str) {
    lock(&TOKENS)
        .get_or_insert_with(HashMap::new)
        .insert(token.to_string(), key_authorization.to_string());
}

fn forget_token(token: &str) {
    if let Some(t) = lock(&TOKENS).as_mut() {
        t.remove(token);
    }
}

/// The answer to an HTTP-01 request for `token`: this host's own orders first, then what
/// another host sharing `storage` wrote there.
pub async fn http01_answer(storage: &Path, token: &str) -> Option<String> {
    let valid = !token.is_empty()
        && token.len() <= 256
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !valid {
        return None;
    }
    if let Some(k) = lock(&TOKENS).as_ref().and_then(|t| t.get(token).cloned()) {
        return Some(k);
    }
    let file = store::token_file(storage, token);
    tokio::fs::read_to_string(file)
        .await
        .ok()
        .map(|t| t.trim().to_string())
}

/// The certificate manager's door: reloads hand it configs.
#[derive(Debug, Clone)]
pub struct Manager {
    tx: mpsc::UnboundedSender<Arc<Config>>,
}

impl Manager {
    /// Starts the manager on the current runtime.
    pub fn start() -> Manager {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(rx));
        Manager { tx }
    }

    /// From now on, keeps the certificates `config` needs.
    pub fn apply(&self, config: &Arc<Config>) {
        let _ = self.tx.send(config.clone());
    }
}

/// The account at a CA, shared by its names' tasks: registered once.
type AccountCell = Arc<tokio::sync::Mutex<Option<order::Registered>>>;

async fn run(mut rx: mpsc::UnboundedReceiver<Arc<Config>>) {
    let mut tasks: HashMap<String, tokio::task::JoinHandle<()>> = HashMap::new();
    let mut spec: Option<AcmeSpec> = None;
    let mut account: AccountCell = Arc::default();
    let mut skipped_seen: HashSet<String> = HashSet::new();
    let mut last: Option<Arc<Config>> = None;
    while let Some(config) = rx.recv().await {
        if last
            .as_ref()
            .is_some_and(|l| Arc::ptr_eq(l, &config) || **l == *config)
        {
            continue;
        }
        last = Some(config.clone());
        keep_internal(&config).await;
        let uses_acme = config.tls.values().any(|t| t.source == CertSource::Acme);
        let (wanted, skipped) = if uses_acme {
            acme_names(&config)
        } else {
            Default::default()
        };
        for s in skipped {
            if skipped_seen.insert(s.host.clone()) {
                tracing::warn!(
                    "acme: no certificate is requested for {}: {}",
                    s.host,
                    s.reason
                );
            }
        }
        if spec.as_ref() != Some(&config.acme) {
            // Another CA, storage or challenge: every name starts over with it.
            for (_, t) in tasks.drain() {
                t.abort();
            }
            account = Arc::default();
            spec = Some(config.acme.clone());
        }
        let Some(spec) = spec.clone() else { continue };
        let wanted_set: HashSet<&String> = wanted.iter().collect();
        tasks.retain(|name, task| {
            let keep = wanted_set.contains(name);
            if !keep {
                task.abort();
                crate::tls::obtained().withdraw(name);
                lock(&STATUS).remove(name);
                tracing::info!("acme: {name} is no longer routed: its certificate is not renewed");
            }
            keep
        });
        for name in wanted {
            if let std::collections::hash_map::Entry::Vacant(slot) = tasks.entry(name) {
                let name = slot.key().clone();
                slot.insert(tokio::spawn(keep_name(name, spec.clone(), account.clone())));
            }
        }
    }
}

/// Loads or makes the local CA when a listener says `tls: internal`; hands it the names.
async fn keep_internal(config: &Config) {
    let obtained = crate::tls::obtained();
    if !config
        .tls
        .values()
        .any(|t| t.source == CertSource::Internal)
    {
        obtained.set_internal(None);
        lock(&STATUS).remove("(internal CA)");
        return;
    }
    let storage = config.acme.storage.clone();
    let root = tokio::task::spawn_blocking(move || internal::load_or_create_root(&storage)).await;
    let root = match root {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            tracing::error!("tls: internal: {e}; tls: internal listeners refuse handshakes");
            return;
        }
        Err(e) => {
            tracing::error!("tls: internal: {e}");
            return;
        }
    };
    let hosts: Vec<HostPattern> = config
        .apps
        .iter()
        .flat_map(|a| a.route.hosts.iter().cloned())
        .collect();
    let any = config.apps.iter().any(|a| a.route.hosts.is_empty());
    let root_pem = root.0.clone();
    match internal::InternalIssuer::new(root, hosts, any) {
        Ok(issuer) => obtained.set_internal(Some(Arc::new(issuer))),
        Err(e) => {
            tracing::error!("tls: internal: {e}");
            return;
        }
    }
    let facts = certificate::Facts::of_pem(&root_pem).ok();
    set_status("(internal CA)", |s| {
        s.source = "internal".into();
        s.names = vec![format!(
            "local CA: {}",
            root_file(&config.acme.storage).display()
        )];
        s.state = "valid".into();
        if let Some(f) = facts {
            s.issuer = Some(f.issuer);
            s.serial = Some(f.serial);
            s.not_after = Some(epoch(f.not_after));
        }
    });
}

/// Reads what storage holds for `name` (a certificate another host, or an earlier run, got).
async fn stored(store: &Store, name: &str) -> Option<Held> {
    let (s, n) = (store.clone(), name.to_string());
    let pem = tokio::task::spawn_blocking(move || s.certificate(&n))
        .await
        .ok()?;
    match pem {
        Ok(Some(pem)) => match Held::parse(&pem, name) {
            Ok(h) => Some(h),
            Err(e) => {
                let file = store.certificate_file(name);
                tracing::warn!("acme: {} {e}; ordering a new one", file.display());
                None
            }
        },
        Ok(None) => None,
        Err(e) => {
            tracing::warn!("acme: {e}");
            None
        }
    }
}

/// Serves `held` for `name` if it is not what is served already.
fn publish(name: &str, held: &Held, next_renewal: SystemTime) {
    let obtained = crate::tls::obtained();
    let serial = lock(&STATUS).get(name).and_then(|s| s.serial.clone());
    if serial.as_deref() != Some(held.serial.as_str()) || !obtained.serves(name) {
        obtained.publish(name, held.key.clone());
    }
    set_status(name, |s| {
        s.names = held.names.clone();
        s.issuer = Some(held.issuer.clone());
        s.serial = Some(held.serial.clone());
        s.not_after = Some(epoch(held.not_after));
        s.next_renewal = Some(epoch(next_renewal));
    });
}

/// One name's life: serve what storage holds, order when there is nothing or it is due,
/// back off after failures. Runs until the name is no longer routed.
async fn keep_name(name: String, spec: AcmeSpec, account: AccountCell) {
    let store = Store::new(&spec.storage, &spec.directory);
    let jitter = renew::jitter();
    let mut failures: u32 = 0;
    loop {
        let held = stored(&store, &name).await;
        let now = SystemTime::now();
        if let Some(h) = held.as_ref().filter(|h| h.not_after > now) {
            let window = ari_window(&spec, &store, &account, h).await;
            let due = renew::renew_at(h.not_before, h.not_after, spec.renew_before, window, jitter);
            publish(&name, h, due);
            if due > now {
                // Valid and not due — ours, or another host's since our last failure.
                failures = 0;
                set_status(&name, |s| s.state = "valid".into());
                let wait = due
                    .duration_since(now)
                    .unwrap_or_default()
                    .min(renew::RECHECK);
                tokio::time::sleep(wait).await;
                continue;
            }
        }
        match store.clone().try_lock_async(&name).await {
            Ok(true) => {}
            Ok(false) => {
                set_status(&name, |s| s.state = "pending".into());
                tokio::time::sleep(LOCKED_RECHECK).await;
                continue;
            }
            Err(e) => {
                tracing::error!("acme: {name}: {e}");
                tokio::time::sleep(renew::backoff(failures.max(1), false, jitter)).await;
                continue;
            }
        }
        let renewing = held.is_some();
        set_status(&name, |s| {
            s.state = if renewing { "renewing" } else { "pending" }.into()
        });
        // A bug in an order must not leave the name pending forever with nobody saying so.
        let outcome = futures_util::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(
            obtain(&spec, &store, &account, &name),
        ))
        .await
        .unwrap_or_else(|_| {
            Err(order::OrderError::other(
                "the order stopped on an internal error (a bug in wsgimux; its panic is logged above)",
            ))
        });
        store.clone().unlock_async(&name).await;
        match outcome {
            Ok(h) => {
                failures = 0;
                tracing::info!(
                    "acme: obtained a certificate for {name} from {} (issuer {:?}, serial {}, valid until {})",
                    spec.directory,
                    h.issuer,
                    h.serial,
                    humantime::format_rfc3339_seconds(h.not_after)
                );
                set_status(&name, |s| s.orders_succeeded += 1);
            }
            Err(e) => {
                failures += 1;
                tokio::time::sleep(order_failed(&name, &spec, &e, failures, jitter)).await;
            }
        }
    }
}

/// Logs and shows a failed order: how long to wait before the next (backoff, or the CA's
/// Retry-After when longer).
fn order_failed(
    name: &str,
    spec: &AcmeSpec,
    e: &order::OrderError,
    failures: u32,
    jitter: f64,
) -> Duration {
    let asked = e
        .retry_after
        .and_then(|t| t.duration_since(SystemTime::now()).ok())
        .unwrap_or_default();
    let wait = renew::backoff(failures, e.rate_limited, jitter).max(asked);
    tracing::error!(
        "acme: ordering a certificate for {name} from {} failed (attempt {failures}): {e}; next try in {}",
        spec.directory,
        humantime::format_duration(Duration::from_secs(wait.as_secs()))
    );
    set_status(name, |s| {
        s.state = format!("failed: {e}");
        s.orders_failed += 1;
        s.next_renewal = Some(epoch(SystemTime::now() + wait));
    });
    wait
}

/// One order and storing its outcome.
async fn obtain(
    spec: &AcmeSpec,
    store: &Store,
    account: &AccountCell,
    name: &str,
) -> Result<Held, order::OrderError> {
    let (acct, retry_after) = {
        let mut cell = account.lock().await;
        match cell.as_ref() {
            Some(a) => a.clone(),
            None => {
                let a = order::account(spec, store).await?;
                *cell = Some(a.clone());
                a
            }
        }
    };
    let ordered = order::order(&acct, spec, store, name).await;
    let (chain, key) = ordered.map_err(|mut e| {
        e.retry_after = retry_after.lock().ok().and_then(|mut t| t.take());
        e
    })?;
    let held = Held::parse(format!("{chain}\n{key}").as_bytes(), name)
        .map_err(|e| order::OrderError::other(format!("the CA's certificate {e}")))?;
    let (s, n) = (store.clone(), name.to_string());
    order::blocking(move || s.save_certificate(&n, &chain, &key)).await?;
    Ok(held)
}

/// The CA's suggested renewal window (RFC 9773), when it offers one and answers.
async fn ari_window(
    spec: &AcmeSpec,
    store: &Store,
    account: &AccountCell,
    held: &Held,
) -> Option<(SystemTime, SystemTime)> {
    let acct = account.lock().await.clone();
    let acct = match acct {
        Some(a) => a,
        // No account yet this run: only ask if one is stored (no registration for this).
        None => {
            let s = store.clone();
            let has = tokio::task::spawn_blocking(move || s.account())
                .await
                .ok()?
                .ok()??;
            drop(has);
            let a = tokio::time::timeout(Duration::from_secs(30), order::account(spec, store))
                .await
                .ok()?
                .ok()?;
            *account.lock().await = Some(a.clone());
            a
        }
    };
    let leaf = held.key.cert.first()?;
    let id = instant_acme::CertificateIdentifier::try_from(leaf).ok()?;
    let (info, _) = tokio::time::timeout(Duration::from_secs(30), acct.0.renewal_info(&id))
        .await
        .ok()?
        .ok()?;
    let at =
        |secs: i64| SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).unwrap_or(0));
    Some((
        at(info.suggested_window.start.unix_timestamp()),
        at(info.suggested_window.end.unix_timestamp()),
    ))
}

/// The folder HTTP-01 answers are read from when `config` orders with HTTP-01.
pub fn http01_storage(config: &Config) -> Option<PathBuf> {
    let acme = config.tls.values().any(|t| t.source == CertSource::Acme);
    (acme && config.acme.challenge == crate::config::Challenge::Http01)
        .then(|| config.acme.storage.clone())
}
