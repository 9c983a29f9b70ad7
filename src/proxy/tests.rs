//! The request's phases before any byte goes to a child: the target normalized, the host read
//! (Host or HTTP/2's authority), the route looked up, a process selected — each refusal the
//! one its phase owns.

use std::path::Path;

use super::*;
use crate::config::AppSpec;
use crate::metrics::AppCounters;
use crate::upstream::Endpoints;

fn parts(uri: &str, host: Option<&str>) -> Parts {
    let mut b = Request::get(uri);
    if let Some(h) = host {
        b = b.header(header::HOST, h);
    }
    b.body(()).expect("request").into_parts().0
}

fn spec(yaml_app: &str) -> AppSpec {
    let yaml = format!("apps:\n  shop:\n    python: python3\n    script: a.wsgi\n{yaml_app}");
    crate::config::from_yaml(&yaml, Path::new("/srv/wsgimux.yaml"))
        .unwrap_or_else(|e| panic!("{e}"))
        .apps
        .remove(0)
}

/// A route for `spec` whose processes are `ready` (none here) and `failing` or not.
fn route(spec: &AppSpec, failing: bool) -> (Arc<AppRoute>, watch::Sender<Endpoints>) {
    let (tx, rx) = watch::channel(Endpoints {
        ready: Arc::new([]),
        starting: false,
        failing,
    });
    let stats = Arc::new(AppCounters::default());
    (Arc::new(AppRoute::new(spec, 1, rx, stats, None)), tx)
}

#[test]
fn the_target_is_normalized_and_a_path_above_the_root_refused() {
    let u = |s: &str| normalized(&s.parse().expect("uri")).map(|u| u.to_string());
    assert_eq!(u("/a/./b/../c?x=../y").ok().as_deref(), Some("/a/c?x=../y"));
    assert_eq!(u("/plain").ok().as_deref(), Some("/plain"));
    assert!(matches!(u("/../etc/passwd"), Err(ProxyError::Rejected(_))));
}

#[test]
fn the_host_comes_from_host_or_the_authority_normalized() {
    let t = target(&parts("/", Some("Shop.Example:8080"))).expect("target");
    assert_eq!(t.host, "shop.example");
    assert_eq!(
        t.host_raw.as_ref().map(|h| h.as_bytes()),
        Some(&b"Shop.Example:8080"[..])
    );
    // HTTP/2: only the authority.
    let t = target(&parts("https://API.example/x", None)).expect("target");
    assert_eq!(t.host, "api.example");
    // None at all (HTTP/1.0): empty, routed by host-less routes.
    assert_eq!(target(&parts("/", None)).expect("target").host, "");
    assert!(matches!(
        target(&parts("/", Some("bad host"))),
        Err(ProxyError::BadHost(_))
    ));
}

#[test]
fn lookup_names_the_host_and_path_nothing_routes() {
    let shop = spec("    hosts: [shop.test]\n    mount: /app\n");
    let (r, _keep) = route(&shop, false);
    let table = RouteTable::for_apps([(&shop, r)]);
    let t = target(&parts("/app/cart", Some("shop.test"))).expect("target");
    assert_eq!(
        &*lookup(&table, &t, b"/app/cart").expect("routed").name,
        "shop"
    );
    let t = target(&parts("/other", Some("shop.test"))).expect("target");
    match lookup(&table, &t, b"/other") {
        Err(ProxyError::NoRoute { host, path }) => {
            assert_eq!((host.as_str(), path.as_str()), ("shop.test", "/other"))
        }
        other => panic!("{:?}", other.map(|r| r.name.clone())),
    }
}

#[tokio::test]
async fn select_answers_at_once_for_an_app_with_no_process_coming() {
    let shop = spec("    max_body_size: 10\n");
    // Nothing starting, nothing ready: unavailable (or failed to start) at once, no wait.
    let (r, _keep) = route(&shop, false);
    let p = parts("/", Some("x"));
    let quick = tokio::time::timeout(std::time::Duration::from_secs(1), select(r, &p));
    assert!(matches!(
        quick.await.expect("at once"),
        Err(ProxyError::AppUnavailable { .. })
    ));
    let (r, _keep) = route(&shop, true);
    assert!(matches!(
        select(r, &p).await,
        Err(ProxyError::AppFailed { .. })
    ));
}

#[tokio::test]
async fn select_refuses_a_declared_body_over_the_limit_before_the_app_sees_it() {
    let shop = spec("    max_body_size: 10\n");
    let (r, tx) = route(&shop, false);
    let endpoint = Endpoint::new(crate::config::Address::Unix("/nonexistent".into()), 7);
    tx.send_modify(|e| e.ready = Arc::new([endpoint]));
    let mut p = parts("/", Some("x"));
    p.headers
        .insert(header::CONTENT_LENGTH, HeaderValue::from_static("11"));
    assert!(matches!(
        select(r.clone(), &p).await,
        Err(ProxyError::BodyTooLarge { limit: 10, .. })
    ));
    p.headers
        .insert(header::CONTENT_LENGTH, HeaderValue::from_static("10"));
    let chosen = select(r, &p).await.map(|s| s.endpoint.pid());
    assert_eq!(chosen.ok(), Some(7));
}
