//! One certificate order at an ACME CA, for one name: the account (stored, or made and
//! stored), the challenge answered, the certificate fetched. Every step is bounded.

use std::sync::Arc;
use std::time::Duration;

use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount,
    NewOrder, OrderStatus, RetryPolicy,
};

use crate::config::{AcmeSpec, Challenge};

use super::store::Store;

/// The longest one order may take, from new-order to the certificate.
pub const ORDER_TIMEOUT: Duration = Duration::from_secs(180);
/// The longest registering or restoring the account may take (the directory, a nonce, the
/// account: each request bounded by the client too).
const ACCOUNT_TIMEOUT: Duration = Duration::from_secs(60);

/// Why an order failed, in the words the log line and status show.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct OrderError {
    pub message: String,
    /// The CA said "rate limited": wait longer.
    pub rate_limited: bool,
    /// The CA's `Retry-After`: not before then.
    pub retry_after: Option<std::time::SystemTime>,
}

/// The account, and when its CA last asked not to be asked again before.
pub type Registered = (Account, super::client::RetryAfter);

impl OrderError {
    fn from_acme(e: instant_acme::Error) -> Self {
        let rate_limited = matches!(&e, instant_acme::Error::Api(p) if p.r#type.as_deref() == Some("urn:ietf:params:acme:error:rateLimited"));
        let message = match &e {
            instant_acme::Error::Api(p) => problem_words(p),
            other => other.to_string(),
        };
        OrderError {
            message,
            rate_limited,
            retry_after: None,
        }
    }

    pub fn other(message: impl Into<String>) -> Self {
        OrderError {
            message: message.into(),
            rate_limited: false,
            retry_after: None,
        }
    }
}

/// A problem document as one phrase: its type, its detail, its subproblems.
fn problem_words(p: &instant_acme::Problem) -> String {
    let mut out = format!(
        "{}: {}",
        p.r#type.as_deref().unwrap_or("(no problem type)"),
        p.detail.as_deref().unwrap_or("(no detail)")
    );
    for sub in &p.subproblems {
        out.push_str(&format!("; {sub}"));
    }
    out
}

/// `f` (storage's file calls) on a blocking thread.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, super::store::StoreError> + Send + 'static,
) -> Result<T, OrderError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| OrderError::other(e.to_string()))?
        .map_err(|e| OrderError::other(e.to_string()))
}

/// `step` with the CA, within [`ACCOUNT_TIMEOUT`].
async fn within<T>(
    spec: &AcmeSpec,
    step: impl std::future::Future<Output = Result<T, instant_acme::Error>>,
) -> Result<T, OrderError> {
    tokio::time::timeout(ACCOUNT_TIMEOUT, step)
        .await
        .map_err(|_| {
            OrderError::other(format!(
                "{} did not answer in {}s",
                spec.directory,
                ACCOUNT_TIMEOUT.as_secs()
            ))
        })?
        .map_err(OrderError::from_acme)
}

/// The account at the CA: loaded from storage, or registered and stored.
pub async fn account(spec: &AcmeSpec, store: &Store) -> Result<Registered, OrderError> {
    let (http, retry_after) = super::client::AcmeHttp::new(spec.directory_ca.as_deref())
        .map_err(|e| OrderError::other(format!("cannot set up the HTTPS client: {e}")))?;
    let builder = Account::builder_with_http(Box::new(http));
    let stored = {
        let store = store.clone();
        blocking(move || store.account()).await?
    };
    if let Some(json) = stored {
        let credentials: AccountCredentials = serde_json::from_slice(&json).map_err(|e| {
            OrderError::other(format!(
                "the stored account does not read ({e}); move it away to register a new one"
            ))
        })?;
        let restored = within(spec, builder.from_credentials(credentials)).await?;
        return Ok((restored, retry_after));
    }
    let contact = spec.email.as_ref().map(|e| format!("mailto:{e}"));
    let contacts: Vec<&str> = contact.iter().map(String::as_str).collect();
    let new = NewAccount {
        contact: &contacts,
        terms_of_service_agreed: true,
        only_return_existing: false,
    };
    let created = builder.create(&new, spec.directory.clone(), None);
    let (account, credentials) = within(spec, created).await?;
    let json =
        serde_json::to_vec_pretty(&credentials).map_err(|e| OrderError::other(e.to_string()))?;
    let store = store.clone();
    blocking(move || store.save_account(&json)).await?;
    tracing::info!("acme: registered an account at {}", spec.directory);
    Ok((account, retry_after))
}

/// Orders a certificate for `name`: (chain PEM, key PEM). Within [`ORDER_TIMEOUT`].
pub async fn order(
    account: &Account,
    spec: &AcmeSpec,
    store: &Store,
    name: &str,
) -> Result<(String, String), OrderError> {
    let mut answered = Answered::default();
    let outcome = tokio::time::timeout(
        ORDER_TIMEOUT,
        order_steps(account, spec, store, name, &mut answered),
    )
    .await;
    answered.withdraw(store, name).await;
    match outcome {
        Ok(r) => r,
        Err(_) => Err(OrderError::other(format!(
            "the order took longer than {}s",
            ORDER_TIMEOUT.as_secs()
        ))),
    }
}

/// Challenge answers set up for one order, taken down when it ends.
#[derive(Default)]
struct Answered {
    tokens: Vec<String>,
    alpn: bool,
}

impl Answered {
    async fn withdraw(self, store: &Store, name: &str) {
        for token in &self.tokens {
            super::forget_token(token);
        }
        if !self.tokens.is_empty() {
            let store = store.clone();
            let tokens = self.tokens;
            let _ = tokio::task::spawn_blocking(move || {
                for t in &tokens {
                    store.remove_token(t);
                }
            })
            .await;
        }
        if self.alpn {
            crate::tls::obtained().set_alpn_challenge(name, None);
        }
    }
}

async fn order_steps(
    account: &Account,
    spec: &AcmeSpec,
    store: &Store,
    name: &str,
    answered: &mut Answered,
) -> Result<(String, String), OrderError> {
    let identifiers = [Identifier::Dns(name.to_string())];
    let mut order = account
        .new_order(&NewOrder::new(&identifiers))
        .await
        .map_err(OrderError::from_acme)?;
    let kind = match spec.challenge {
        Challenge::Http01 => ChallengeType::Http01,
        Challenge::TlsAlpn01 => ChallengeType::TlsAlpn01,
    };
    let mut authorizations = order.authorizations();
    while let Some(next) = authorizations.next().await {
        let mut authorization = next.map_err(OrderError::from_acme)?;
        match authorization.status {
            AuthorizationStatus::Valid => continue,
            AuthorizationStatus::Pending => {}
            other => {
                return Err(OrderError::other(format!(
                    "the CA's authorization for {name} is {other:?}"
                )))
            }
        }
        let mut challenge = authorization.challenge(kind.clone()).ok_or_else(|| {
            OrderError::other(format!(
                "the CA offers no {} challenge for {name}",
                spec.challenge.as_str()
            ))
        })?;
        let key_authorization = challenge.key_authorization();
        match spec.challenge {
            Challenge::Http01 => {
                let token = challenge.token.clone();
                super::remember_token(&token, key_authorization.as_str());
                answered.tokens.push(token.clone());
                let store = store.clone();
                let text = key_authorization.as_str().to_string();
                blocking(move || store.put_token(&token, &text)).await?;
            }
            Challenge::TlsAlpn01 => {
                let cert = alpn_certificate(name, key_authorization.digest().as_ref())?;
                crate::tls::obtained().set_alpn_challenge(name, Some(Arc::new(cert)));
                answered.alpn = true;
            }
        }
        challenge.set_ready().await.map_err(OrderError::from_acme)?;
    }
    let polling = RetryPolicy::new()
        .initial_delay(Duration::from_millis(250))
        .timeout(Duration::from_secs(90));
    let status = order
        .poll_ready(&polling)
        .await
        .map_err(OrderError::from_acme)?;
    if status != OrderStatus::Ready {
        return Err(why_invalid(&mut order, name).await);
    }
    let key = order.finalize().await.map_err(OrderError::from_acme)?;
    let chain = order
        .poll_certificate(&polling)
        .await
        .map_err(OrderError::from_acme)?;
    Ok((chain, key))
}

/// The CA's reason a challenge failed, from the authorizations (fetched again).
async fn why_invalid(order: &mut instant_acme::Order, name: &str) -> OrderError {
    let mut authorizations = order.authorizations();
    while let Some(Ok(mut a)) = authorizations.next().await {
        if let Ok(state) = a.refresh().await {
            if let Some(p) = state.challenges.iter().find_map(|c| c.error.as_ref()) {
                return OrderError::other(problem_words(p));
            }
        }
    }
    OrderError::other(format!(
        "the CA found the order for {name} invalid and gave no reason"
    ))
}

/// The self-signed certificate a TLS-ALPN-01 validation is answered with (RFC 8737): the
/// name, and the key authorization's digest in the critical acmeIdentifier extension.
fn alpn_certificate(name: &str, digest: &[u8]) -> Result<rustls::sign::CertifiedKey, OrderError> {
    let failed = |e: rcgen::Error| {
        OrderError::other(format!("cannot make the tls-alpn-01 certificate: {e}"))
    };
    let mut params = rcgen::CertificateParams::new(vec![name.to_string()]).map_err(failed)?;
    params
        .custom_extensions
        .push(rcgen::CustomExtension::new_acme_identifier(digest));
    let key = rcgen::KeyPair::generate().map_err(failed)?;
    let cert = params.self_signed(&key).map_err(failed)?;
    crate::tls::certified_key(cert.pem().as_bytes(), key.serialize_pem().as_bytes())
        .map_err(OrderError::other)
}
