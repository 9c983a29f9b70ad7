//! A certificate as stored or just issued: ready to serve, and what status shows of it.

use std::ops::Deref;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::sign::CertifiedKey;

/// What renewal and status need to know of a certificate.
#[derive(Debug, Clone)]
pub struct Facts {
    /// The names it is valid for (its subjectAltName DNS entries).
    pub names: Vec<String>,
    /// The issuer's common name (or its whole name when it has none).
    pub issuer: String,
    pub serial: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl Facts {
    pub fn of(der: &[u8]) -> Result<Facts, String> {
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| format!("not an X.509 certificate ({e})"))?;
        let names: Vec<String> = cert
            .subject_alternative_name()
            .ok()
            .flatten()
            .map(|san| {
                san.value
                    .general_names
                    .iter()
                    .filter_map(|n| match n {
                        x509_parser::extensions::GeneralName::DNSName(d) => {
                            Some(d.to_ascii_lowercase())
                        }
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        let issuer = cert
            .issuer()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_string)
            .unwrap_or_else(|| cert.issuer().to_string());
        let time = |t: x509_parser::time::ASN1Time| {
            SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(t.timestamp()).unwrap_or(0))
        };
        Ok(Facts {
            names,
            issuer,
            serial: cert.raw_serial_as_string().replace(':', ""),
            not_before: time(cert.validity().not_before),
            not_after: time(cert.validity().not_after),
        })
    }

    /// The facts of the first certificate in a PEM text.
    pub fn of_pem(pem: &str) -> Result<Facts, String> {
        let der = CertificateDer::from_pem_slice(pem.as_bytes())
            .map_err(|e| format!("not a PEM certificate ({e})"))?;
        Facts::of(der.as_ref())
    }
}

/// A chain with its key, ready to serve, and its leaf's facts.
#[derive(Debug, Clone)]
pub struct Held {
    pub key: Arc<CertifiedKey>,
    pub facts: Facts,
}

impl Deref for Held {
    type Target = Facts;
    fn deref(&self) -> &Facts {
        &self.facts
    }
}

impl Held {
    /// Reads a chain followed by its key (PEM); checks that it is for `name`.
    pub fn parse(pem: &[u8], name: &str) -> Result<Held, String> {
        let key = crate::tls::certified_key(pem, pem)?;
        let leaf = key.cert.first().ok_or("holds no certificate")?;
        let facts = Facts::of(leaf.as_ref())?;
        if !facts.names.iter().any(|n| n == name) {
            return Err(format!("is for {:?}, not {name}", facts.names));
        }
        Ok(Held {
            key: Arc::new(key),
            facts,
        })
    }
}
