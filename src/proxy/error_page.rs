//! An app's own page for an error the front answers for it (`error_pages`): the file read
//! when the error happens (bounded), served with the error's status and headers.

use std::path::Path;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::Response;
use tokio::io::AsyncReadExt;

use crate::accesslog::Served;
use crate::error::ProxyError;
use crate::upstream::ProxyBody;

/// The largest error page served; a longer file is the front's own page and a log line.
const MAX_PAGE: u64 = 1 << 20;

/// The answer to a request that failed with `e`: the front's page, or the app's own for the
/// status where it has one.
pub(super) async fn answer(e: ProxyError, app: Option<&Served>) -> Response<ProxyBody> {
    // A failing app's reason is logged by its supervisor, not once per request.
    if e.status().is_server_error() && !matches!(e, ProxyError::AppFailed { .. }) {
        tracing::warn!("{e}");
    }
    let status = e.status().as_u16();
    let page = app.and_then(|a| Some((a.app.clone(), a.error_pages.get(&status)?.clone())));
    let resp = e.into_response();
    match page {
        Some((app, path)) => with_page(resp, &app, &path).await,
        None => resp,
    }
}

/// `resp` (the front's answer for an error) with the body of `page` instead, where it can be
/// read; otherwise `resp` as it is, and one line naming the app and the file.
pub(super) async fn with_page(
    mut resp: Response<ProxyBody>,
    app: &str,
    page: &Path,
) -> Response<ProxyBody> {
    let read = async {
        let file = tokio::fs::File::open(page).await?;
        let mut body = Vec::new();
        file.take(MAX_PAGE + 1).read_to_end(&mut body).await?;
        Ok::<_, std::io::Error>(body)
    };
    let body = match read.await {
        Ok(b) if b.len() as u64 <= MAX_PAGE => b,
        Ok(_) => {
            tracing::warn!(
                "[{app}] error page {} is over 1 MiB; the default page was served",
                page.display()
            );
            return resp;
        }
        Err(e) => {
            tracing::warn!(
                "[{app}] cannot read error page {}: {e}; the default page was served",
                page.display()
            );
            return resp;
        }
    };
    let kind = crate::statics::content_type(page);
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(kind));
    *resp.body_mut() = Full::new(Bytes::from(body)).map_err(|e| match e {}).boxed();
    resp
}
