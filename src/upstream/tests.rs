//! The pool against a real server on a Unix socket: a connection goes back to the pool only
//! when its response body was read to the end, never after a body dropped or broken midway,
//! and every request is counted in flight until its body is done.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use http_body_util::{BodyExt, Empty, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

use super::*;
use crate::config::Address;

/// A server answering `/big` with 1 MiB, `/cut` with no response (it closes the connection),
/// anything else with "ok"; counts the connections it accepted.
async fn server(dir: &std::path::Path) -> (Address, Arc<AtomicUsize>) {
    let path = dir.join("app.sock");
    let listener = tokio::net::UnixListener::bind(&path).expect("bind");
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let service = service_fn(|req: Request<hyper::body::Incoming>| async move {
                    let body = match req.uri().path() {
                        "/big" => Bytes::from(vec![b'x'; 1 << 20]),
                        _ => Bytes::from_static(b"ok"),
                    };
                    if req.uri().path() == "/cut" {
                        return Err::<Response<Full<Bytes>>, _>("cut");
                    }
                    Ok(Response::new(Full::new(body)))
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (Address::Unix(path), accepted)
}

/// `send`, its error as text.
async fn send(ep: &Arc<Endpoint>, path: &str) -> Result<Response<PooledBody>, String> {
    ep.send(
        get(path),
        None,
        32 * 1024,
        tokio::time::Instant::now() + Duration::from_secs(30),
    )
    .await
    .map_err(|e| e.error.to_string())
}

/// A plain request read to its end; how many connections the server has accepted by then.
async fn connections_after_one_more(ep: &Arc<Endpoint>, accepted: &AtomicUsize) -> usize {
    let resp = send(ep, "/").await.expect("response");
    let _ = resp.into_body().collect().await.expect("body");
    accepted.load(Ordering::SeqCst)
}

fn get(path: &str) -> Request<ProxyBody> {
    Request::get(path)
        .header("host", "x")
        .body(Empty::new().map_err(|e| match e {}).boxed())
        .expect("request")
}

#[tokio::test]
async fn a_connection_returns_to_the_pool_only_when_its_body_was_read_to_the_end() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (address, accepted) = server(dir.path()).await;
    let ep = Endpoint::new(address, 0);

    // Read to the end: the connection is reused.
    for _ in 0..3 {
        let resp = send(&ep, "/").await.expect("response");
        assert_eq!(ep.in_flight(), 1, "counted until its body is done");
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        assert_eq!(&body[..], b"ok");
        assert_eq!(ep.in_flight(), 0);
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "one connection for three requests"
    );

    // A body dropped halfway: that connection is not reused (the rest of the body is still in
    // it), and the request is no longer in flight.
    let resp = send(&ep, "/big").await.expect("response");
    let mut body = resp.into_body();
    let first = body.frame().await.expect("a frame").expect("data");
    assert!(first.is_data());
    drop(body);
    assert_eq!(ep.in_flight(), 0);
    assert_eq!(
        connections_after_one_more(&ep, &accepted).await,
        2,
        "a new connection after a dropped body"
    );

    // A failed response leaves nothing pooled either.
    assert!(send(&ep, "/cut").await.is_err());
    assert_eq!(ep.in_flight(), 0);
    assert_eq!(
        connections_after_one_more(&ep, &accepted).await,
        3,
        "a new connection after a failure"
    );

    // close_idle empties the pool (a process being stopped).
    ep.close_idle();
    assert_eq!(connections_after_one_more(&ep, &accepted).await, 4);
}
