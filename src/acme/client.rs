//! The HTTPS client ACME requests go through: the CA's certificate checked against
//! `directory_ca` or the system's roots (as `https://` upstreams are), every request bounded,
//! and the CA's `Retry-After` on a refusal kept for the backoff (instant-acme reads it only
//! while polling an order, not when a new order is refused as rate limited).

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use instant_acme::{BodyWrapper, BytesResponse, HttpClient};

/// The longest one request to the CA may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

type Inner = Client<hyper_rustls::HttpsConnector<HttpConnector>, BodyWrapper<Bytes>>;

/// When the CA last asked to be left alone until (its `Retry-After` on an error response).
pub type RetryAfter = Arc<Mutex<Option<SystemTime>>>;

pub struct AcmeHttp {
    inner: Inner,
    retry_after: RetryAfter,
}

impl AcmeHttp {
    /// A client trusting only `ca` when given, else the system's roots.
    pub fn new(ca: Option<&Path>) -> Result<(AcmeHttp, RetryAfter), String> {
        let mut tls = (*crate::tls::client_config(ca).map_err(|e| e.to_string())?).clone();
        // The connector offers the protocols it enables itself.
        tls.alpn_protocols.clear();
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_only()
            .enable_http1()
            .build();
        let retry_after = RetryAfter::default();
        let http = AcmeHttp {
            inner: Client::builder(TokioExecutor::new()).build(connector),
            retry_after: retry_after.clone(),
        };
        Ok((http, retry_after))
    }
}

impl HttpClient for AcmeHttp {
    fn request(
        &self,
        req: Request,
    ) -> Pin<Box<dyn Future<Output = Result<BytesResponse, instant_acme::Error>> + Send>> {
        let sent = HttpClient::request(&self.inner, req);
        let retry_after = self.retry_after.clone();
        Box::pin(async move {
            let rsp = tokio::time::timeout(REQUEST_TIMEOUT, sent)
                .await
                .map_err(|_| instant_acme::Error::Str("the CA did not answer within 30 s"))??;
            if !rsp.parts.status.is_success() {
                if let Some(until) = rsp
                    .parts
                    .headers
                    .get(http::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(retry_after_time)
                {
                    if let Ok(mut slot) = retry_after.lock() {
                        *slot = Some(until);
                    }
                }
            }
            Ok(rsp)
        })
    }
}

type Request = http::Request<BodyWrapper<Bytes>>;

/// `Retry-After` as seconds or an HTTP date (RFC 9110 §10.2.3).
fn retry_after_time(text: &str) -> Option<SystemTime> {
    let text = text.trim();
    if let Ok(secs) = text.parse::<u64>() {
        return Some(SystemTime::now() + Duration::from_secs(secs.min(7 * 86_400)));
    }
    crate::dates::parse_http_date(text).map(|s| SystemTime::UNIX_EPOCH + Duration::from_secs(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_is_read_as_seconds_or_a_date() {
        let soon = retry_after_time("120").expect("seconds");
        let left = soon.duration_since(SystemTime::now()).expect("later");
        assert!(left > Duration::from_secs(110) && left <= Duration::from_secs(120));
        let date = retry_after_time("Sun, 06 Nov 1994 08:49:37 GMT").expect("date");
        assert_eq!(
            date,
            SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777)
        );
        assert_eq!(retry_after_time("soon"), None);
    }
}
