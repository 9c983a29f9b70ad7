//! The one live snapshot: everything a new connection and a request read — the route table,
//! and the front's settings (limits, trusted proxies, TLS acceptors, the https redirect,
//! host-wide static folders, the access log) — in one value behind one `watch` channel.
//!
//! `reload` creates the channel and is its only writer (the first value included); it
//! replaces the whole snapshot with one `send_replace`, so a request that read it never mixes
//! two reloads. Building a [`Front`] opens files (certificates, the access log) but starts
//! nothing.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use hyper::header::{self, HeaderValue};
use hyper::{Response, Uri};

use crate::accesslog::AccessSink;
use crate::config::{AccessLogTo, Cidr, Config, Limits, StaticAlias};
use crate::error::Reply;
use crate::gate::Timeouts;
use crate::http1::HeadLimits;
use crate::tls::{CertStore, TlsError, TlsListener};
use crate::upstream::ProxyBody;

use super::Table;

/// What the front reads, as one value.
#[derive(Debug)]
pub struct Live {
    pub routes: Arc<Table>,
    pub front: Arc<Front>,
}

/// The front's settings; a reload that leaves them alone shares them with the next snapshot.
#[derive(Debug)]
pub struct Front {
    pub limits: Limits,
    pub trusted: Vec<Cidr>,
    /// TLS listeners by configured address: their certificates and rustls config.
    pub tls: HashMap<SocketAddr, TlsListener>,
    /// Set when `redirect_https` is on.
    pub redirect: Option<Arc<HttpsRedirect>>,
    /// Host-wide `static:` folders, longest prefix first.
    pub statics: Vec<StaticAlias>,
    pub access: Arc<AccessSink>,
    /// Where request bodies are spooled (the runtime dir, which a reload cannot change).
    pub spool_dir: std::path::PathBuf,
    /// `acme.storage`, when HTTP-01 challenges are answered on plain listeners.
    pub acme_http01: Option<std::path::PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum FrontError {
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("access_log {}: cannot open it: {source}", path.display())]
    AccessLogFile {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("access_log: {0}")]
    AccessLog(#[source] std::io::Error),
}

impl Front {
    /// Loads the certificates `config` names and opens its access log. `previous` listeners
    /// are kept when their spec did not change, so a reload does not re-read unchanged files.
    pub fn build(config: &Config, previous: Option<&Front>) -> Result<Self, FrontError> {
        let mut tls = HashMap::new();
        for (addr, spec) in &config.tls {
            let kept = previous
                .and_then(|p| p.tls.get(addr))
                .filter(|t| t.store.spec() == spec)
                .cloned();
            let listener = match kept {
                Some(t) => t,
                None => TlsListener::load(spec)?,
            };
            tls.insert(*addr, listener);
        }
        // Redirects go to the first TLS listener in the file's order.
        let redirect = config
            .redirect_https
            .then(|| {
                config.listen.iter().find_map(|a| {
                    tls.get(a).map(|t| {
                        Arc::new(HttpsRedirect {
                            port: a.port(),
                            certificates: t.store.clone(),
                        })
                    })
                })
            })
            .flatten();
        // Counted for the server's life: a reload's new sink counts on where the last stopped.
        let unrouted = previous
            .map(|p| p.access.unrouted.clone())
            .unwrap_or_default();
        let access = AccessSink::open(&config.access_log, config.log_format, unrouted).map_err(
            |source| match &config.access_log.to {
                AccessLogTo::File(p) => FrontError::AccessLogFile {
                    path: p.clone(),
                    source,
                },
                _ => FrontError::AccessLog(source),
            },
        )?;
        Ok(Front {
            limits: config.limits,
            trusted: config.trusted_proxies.clone(),
            tls,
            redirect,
            statics: config.statics.clone(),
            access: Arc::new(access),
            spool_dir: crate::runtime_dir::of_config(config),
            acme_http01: crate::acme::http01_storage(config),
        })
    }

    /// Whether the listener configured at `addr` speaks TLS.
    pub fn is_tls(&self, addr: &SocketAddr) -> bool {
        self.tls.contains_key(addr)
    }

    pub fn head_limits(&self) -> HeadLimits {
        HeadLimits {
            max_uri_length: self.limits.max_uri_length,
            max_header_size: self.limits.max_header_size,
            max_header_field_size: self.limits.max_header_field_size,
            max_headers: self.limits.max_headers,
        }
    }

    pub fn timeouts(&self) -> Timeouts {
        Timeouts {
            header: self.limits.header_timeout,
            body: self.limits.body_timeout,
            keepalive: self.limits.keepalive_timeout,
        }
    }
}

/// `redirect_https`: plain-HTTP requests for hosts that have a certificate go to https.
#[derive(Debug)]
pub struct HttpsRedirect {
    /// The port of the TLS listener (left out of the URL when it is 443).
    pub port: u16,
    pub certificates: Arc<CertStore>,
}

impl HttpsRedirect {
    /// A 308 to the https URL when `name` (a normalized host, no port) has a certificate.
    pub(super) fn response(&self, name: &str, uri: &Uri) -> Option<Response<ProxyBody>> {
        if !self.certificates.covers(name) {
            return None;
        }
        let port = if self.port == 443 {
            String::new()
        } else {
            format!(":{}", self.port)
        };
        let pq = uri.path_and_query().map_or("/", |pq| pq.as_str());
        let location = HeaderValue::from_str(&format!("https://{name}{port}{pq}")).ok()?;
        let mut resp = Reply::HttpsRedirect.response(ProxyBody::default());
        resp.headers_mut().insert(header::LOCATION, location);
        resp.headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
        Some(resp)
    }
}
