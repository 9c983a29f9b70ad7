//! Real frameworks from PyPI behind wsgimux: Flask and Django mounted under path prefixes, so
//! URL building, redirects and request parsing depend on a correct SCRIPT_NAME/PATH_INFO split.

use serde_json::Value;

use crate::harness::*;

const FLASK_APP: &str = include_str!("../apps/flask_app.py");
const DJANGO_APP: &str = include_str!("../apps/django_app.py");

fn json(r: &Response) -> Value {
    serde_json::from_slice(&r.body).unwrap_or_else(|e| panic!("{e}: {}", r.text()))
}

fn post(c: &mut Client, path: &str, content_type: &str, body: &str) -> Response {
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: site.test\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    c.send(req.as_bytes()).expect("send");
    c.read_response(false).expect("response")
}

#[test]
fn flask_and_django_on_the_native_worker() {
    flask_and_django_under_mounts("native");
}

#[test]
fn flask_and_django_on_the_portable_worker() {
    flask_and_django_under_mounts("portable");
}

fn flask_and_django_under_mounts(worker: &str) {
    let Some(py) = require_python("3.13") else {
        return;
    };
    let Some(venv) = pip_venv(&py, "frameworks-3.13", &["flask", "django"]) else {
        return;
    };
    let site = Site::new();
    site.write("apps/flask_app.py", FLASK_APP);
    site.write("apps/django_app.py", DJANGO_APP);
    site.config(&format!(
        "apps:\n  flask:\n    python: {venv}\n    script: apps/flask_app.py\n    mount: /flask\n    worker: {worker}\n  django:\n    python: {venv}\n    script: apps/django_app.py\n    mount: /dj\n    worker: {worker}\n",
        venv = venv.display()
    ));
    let server = site.serve();
    let mut c = Client::connect(server.addr).expect("connect");

    // Flask: URL building and request.url include the mount.
    let r = c.get("site.test", "/flask/").expect("flask index");
    assert_eq!(r.status, 200, "{}", r.text());
    let v = json(&r);
    assert_eq!(v["script_root"], "/flask");
    assert_eq!(v["path"], "/");
    assert_eq!(v["item_url"], "/flask/item/caf%C3%A9");
    assert_eq!(v["url"], "http://site.test/flask/");
    assert_eq!(v["remote_addr"], "127.0.0.1");
    let r = c.get("site.test", "/flask/item/caf%C3%A9").expect("item");
    assert_eq!(r.text(), "item café");
    let r = post(
        &mut c,
        "/flask/echo?x=1",
        "application/x-www-form-urlencoded",
        "a=1&b=hello+world",
    );
    let v = json(&r);
    assert_eq!(v["form"], serde_json::json!({"a": "1", "b": "hello world"}));
    assert_eq!(v["args"], serde_json::json!({"x": "1"}));
    // A chunked JSON body (no Content-Length): werkzeug reads it through wsgi.input_terminated.
    let body = r#"{"k": [1, 2, 3]}"#;
    c.send(
        format!(
            "POST /flask/echo HTTP/1.1\r\nHost: site.test\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    )
    .expect("send chunked");
    let v = json(&c.read_response(false).expect("chunked echo"));
    assert_eq!(v["json"], serde_json::json!({"k": [1, 2, 3]}));
    assert_eq!(v["length"], body.len());
    let r = c.get("site.test", "/flask/stream").expect("stream");
    assert_eq!(r.text().lines().count(), 1000);
    assert_eq!(r.text().lines().last(), Some("line 999"));
    // Two Cookie header lines arrive as one "; "-joined header; two Set-Cookie lines come back.
    c.send(b"GET /flask/cookies HTTP/1.1\r\nHost: site.test\r\nCookie: x=1\r\nCookie: y=2\r\n\r\n")
        .expect("send");
    let r = c.read_response(false).expect("cookies");
    assert_eq!(json(&r)["seen"], serde_json::json!({"x": "1", "y": "2"}));
    let set: Vec<_> = r
        .headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("set-cookie"))
        .collect();
    assert_eq!(set.len(), 2, "{:?}", r.headers);
    let r = c.get("site.test", "/flask/nope").expect("404");
    assert_eq!(r.status, 404);
    assert!(r.text().contains("Not Found"));

    // Django: reverse() and build_absolute_uri() include the mount; PATH_INFO excludes it.
    let r = c.get("site.test", "/dj/").expect("django index");
    assert_eq!(r.status, 200, "{}", r.text());
    let v = json(&r);
    assert_eq!(v["script_name"], "/dj");
    assert_eq!(v["path"], "/dj/");
    assert_eq!(v["path_info"], "/");
    assert_eq!(v["reverse"], "/dj/item/x%20y");
    assert_eq!(v["absolute"], "http://site.test/dj/");
    let r = c.get("site.test", "/dj/item/x%20y").expect("item");
    assert_eq!(r.text(), "item x y");
    let r = post(
        &mut c,
        "/dj/echo",
        "application/x-www-form-urlencoded",
        "name=w%C3%A9b&n=2",
    );
    let v = json(&r);
    assert_eq!(v["post"], serde_json::json!({"name": "wéb", "n": "2"}));
    assert_eq!(v["length"], 17);
}
