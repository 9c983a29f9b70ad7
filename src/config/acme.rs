//! The `acme:` block (where certificates come from for `tls: acme` listeners, and where
//! `tls: internal`'s local CA is kept) and the names a config asks certificates for. Text-only
//! rules; `acme` (the crate's module) talks to the CA.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{CertSource, Config, HostPattern, RawDuration, TlsSpec, Validator};

/// Let's Encrypt's production directory: the default CA.
pub const DEFAULT_DIRECTORY: &str = "https://acme-v02.api.letsencrypt.org/directory";

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAcme {
    directory: Option<String>,
    directory_ca: Option<String>,
    email: Option<String>,
    storage: Option<String>,
    challenge: Option<String>,
    renew_before: Option<RawDuration>,
}

/// How the CA checks that this server answers for a name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Challenge {
    /// A token under `/.well-known/acme-challenge/` on a plain listener (port 80).
    Http01,
    /// A self-signed certificate for the `acme-tls/1` protocol on the TLS listener (port 443).
    TlsAlpn01,
}

impl Challenge {
    pub fn as_str(self) -> &'static str {
        match self {
            Challenge::Http01 => "http-01",
            Challenge::TlsAlpn01 => "tls-alpn-01",
        }
    }
}

/// The validated `acme:` block (its defaults when the file has none). Compared without its
/// positions: moving it in the file changes nothing.
#[derive(Debug, Clone, Eq)]
pub struct AcmeSpec {
    /// The CA's RFC 8555 directory URL.
    pub directory: String,
    /// The only CA trusted for the directory's own HTTPS (a test CA such as Pebble's).
    pub directory_ca: Option<PathBuf>,
    pub email: Option<String>,
    /// Account key, certificates, challenge tokens, locks, the internal CA.
    pub storage: PathBuf,
    pub challenge: Challenge,
    /// Renew when less than this is left; none: a third of the certificate's lifetime.
    pub renew_before: Option<Duration>,
    /// Where `directory_ca` is in the file, for errors found when reading it.
    pub directory_ca_at: Option<super::Location>,
}

impl PartialEq for AcmeSpec {
    fn eq(&self, o: &Self) -> bool {
        (
            &self.directory,
            &self.directory_ca,
            &self.email,
            &self.storage,
            self.challenge,
            self.renew_before,
        ) == (
            &o.directory,
            &o.directory_ca,
            &o.email,
            &o.storage,
            o.challenge,
            o.renew_before,
        )
    }
}

/// Why a routed host gets no ACME certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedName {
    pub host: String,
    pub reason: &'static str,
}

/// The names `tls: acme` listeners need certificates for: every exact host an app is routed
/// on, each once, in the file's order; and those that cannot get one, with why.
pub fn acme_names(config: &Config) -> (Vec<String>, Vec<SkippedName>) {
    let mut wanted: Vec<String> = Vec::new();
    let mut skipped: Vec<SkippedName> = Vec::new();
    for host in config.apps.iter().flat_map(|a| &a.route.hosts) {
        let (name, reason) = match host {
            HostPattern::Wildcard(_) => (
                host.to_string(),
                Some("a wildcard needs the DNS-01 challenge, which wsgimux does not do"),
            ),
            HostPattern::Exact(h) if h.parse::<std::net::IpAddr>().is_ok() => {
                (h.clone(), Some("an IP address, not a DNS name"))
            }
            HostPattern::Exact(h) if !h.contains('.') => (
                h.clone(),
                Some("not a public DNS name (use tls: internal for it)"),
            ),
            HostPattern::Exact(h) => (h.clone(), None),
        };
        match reason {
            Some(reason) if !skipped.iter().any(|s| s.host == name) => {
                skipped.push(SkippedName { host: name, reason })
            }
            None if !wanted.contains(&name) => wanted.push(name),
            _ => {}
        }
    }
    (wanted, skipped)
}

impl Validator<'_> {
    /// An HTTP-01 CA must reach a plain listener: `tls: acme` with it needs one.
    pub(super) fn acme_needs(
        &mut self,
        listen: &[std::net::SocketAddr],
        tls: &std::collections::BTreeMap<std::net::SocketAddr, TlsSpec>,
        challenge: Challenge,
    ) {
        let acme = tls.values().any(|t| t.source == CertSource::Acme);
        let plain = listen.iter().any(|a| !tls.contains_key(a));
        if acme && challenge == Challenge::Http01 && !plain {
            let loc = self.locator.key("listen");
            let msg = "tls: acme with the http-01 challenge needs a listener without tls (the CA connects to port 80); add one, or set acme.challenge: tls-alpn-01".to_string();
            self.problem(loc, None, "listen", msg);
        }
    }

    /// `acme:`; `default_storage` is the folder `acme` beside the config.
    pub(super) fn acme(&mut self, raw: Option<RawAcme>) -> AcmeSpec {
        let raw = raw.unwrap_or_default();
        let directory = match raw.directory.map(|d| d.trim().to_string()) {
            None => DEFAULT_DIRECTORY.to_string(),
            Some(d) if d.starts_with("https://") && d.len() > "https://".len() => d,
            Some(d) => {
                let loc = self.locator.key("acme.directory");
                let msg = format!("{d:?} is not an https:// URL of an ACME directory");
                self.problem(loc, None, "acme.directory", msg);
                DEFAULT_DIRECTORY.to_string()
            }
        };
        let email = raw.email.map(|e| e.trim().to_string());
        if let Some(e) = &email {
            let parts: Vec<&str> = e.split('@').collect();
            let valid = parts.len() == 2
                && !parts[0].is_empty()
                && parts[1].contains('.')
                && !e.contains(char::is_whitespace)
                && !e.starts_with("mailto:");
            if !valid {
                let loc = self.locator.key("acme.email");
                let msg = format!("{e:?} is not an email address (e.g. ops@example.com)");
                self.problem(loc, None, "acme.email", msg);
            }
        }
        let challenge = match raw.challenge.as_deref().map(str::trim) {
            None | Some("http-01") => Challenge::Http01,
            Some("tls-alpn-01") => Challenge::TlsAlpn01,
            Some(other) => {
                let loc = self.locator.key("acme.challenge");
                let msg = format!("{other:?} is not a challenge wsgimux answers: use http-01 or tls-alpn-01 (dns-01 is not supported)");
                self.problem(loc, None, "acme.challenge", msg);
                Challenge::Http01
            }
        };
        let renew_before = raw.renew_before.and_then(|d| {
            let loc = self.locator.key("acme.renew_before");
            match renew_before(&d) {
                Ok(d) => Some(d),
                Err(msg) => {
                    self.problem(loc, None, "acme.renew_before", msg);
                    None
                }
            }
        });
        let path = |s: &Option<String>, key: &str, this: &mut Self| match s.as_deref() {
            Some(p) if p.trim().is_empty() => {
                let loc = this.locator.key(key);
                this.problem(loc, None, key, "must not be empty".into());
                None
            }
            p => p.map(|p| this.resolve(p.trim())),
        };
        let directory_ca = path(&raw.directory_ca, "acme.directory_ca", self);
        let storage =
            path(&raw.storage, "acme.storage", self).unwrap_or_else(|| self.resolve("acme"));
        AcmeSpec {
            directory,
            directory_ca,
            email,
            storage,
            challenge,
            renew_before,
            directory_ca_at: self.locator.value("acme.directory_ca"),
        }
    }
}

/// `renew_before`: like other durations, but in days too (`30d`) and up to a year.
fn renew_before(raw: &RawDuration) -> Result<Duration, String> {
    const YEAR: Duration = Duration::from_secs(365 * 24 * 3600);
    let d = match raw {
        RawDuration::Seconds(n) if n.is_finite() && *n > 0.0 => {
            Duration::try_from_secs_f64(*n).map_err(|_| format!("{n} is not a duration"))?
        }
        RawDuration::Seconds(n) => return Err(format!("{n} must be more than 0")),
        RawDuration::Text(t) => humantime::parse_duration(t.trim())
            .map_err(|_| format!("{t:?} is not a duration (e.g. \"30d\", \"720h\", \"10m\")"))?,
    };
    if d.is_zero() {
        return Err("must be more than 0".into());
    }
    if d > YEAR {
        return Err(format!(
            "{} is longer than a year",
            humantime::format_duration(d)
        ));
    }
    Ok(d)
}

#[cfg(test)]
mod tests;
