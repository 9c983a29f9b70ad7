//! The `acme:` block and `tls: acme|internal`: defaults, each mistake at its line and key in
//! plain words, and the names a config orders.

use std::path::Path;
use std::time::Duration;

use crate::config::{acme_names, from_yaml, CertSource, Challenge, Config, DEFAULT_DIRECTORY};

const FILE: &str = "/srv/site/wsgimux.yaml";
const APP: &str = "apps:\n  web:\n    python: python3\n    module: a\n    hosts: [\"shop.example.com\", \"*.example.com\", \"localhost\", \"10.0.0.1\", \"blog.example.com\"]\n";

fn parse(text: &str) -> Result<Config, crate::config::ConfigError> {
    from_yaml(text, Path::new(FILE))
}

#[test]
fn the_block_is_optional_and_its_defaults_are_lets_encrypt_beside_the_config() {
    let c = parse(&format!(
        "listen:\n  - \"0.0.0.0:80\"\n  - address: \"0.0.0.0:443\"\n    tls: acme\n  - address: \"127.0.0.1:8443\"\n    tls: internal\n{APP}"
    ))
    .expect("valid");
    assert_eq!(c.acme.directory, DEFAULT_DIRECTORY);
    assert_eq!(c.acme.storage, Path::new("/srv/site/acme"));
    assert_eq!(c.acme.challenge, Challenge::Http01);
    assert_eq!(c.acme.renew_before, None);
    let sources: Vec<CertSource> = c.tls.values().map(|t| t.source).collect();
    assert!(sources.contains(&CertSource::Acme) && sources.contains(&CertSource::Internal));
    let (wanted, skipped) = acme_names(&c);
    assert_eq!(wanted, ["shop.example.com", "blog.example.com"]);
    let skipped: Vec<&str> = skipped.iter().map(|s| s.host.as_str()).collect();
    assert_eq!(skipped, ["*.example.com", "localhost", "10.0.0.1"]);
}

#[test]
fn every_key_is_read() {
    let c = parse(&format!(
        "listen:\n  - address: \"0.0.0.0:443\"\n    tls: acme\nacme:\n  directory: https://127.0.0.1:14000/dir\n  directory_ca: certs/pebble.pem\n  email: ops@example.com\n  storage: /var/lib/wsgimux/acme\n  challenge: tls-alpn-01\n  renew_before: 30d\n{APP}"
    ))
    .expect("valid");
    assert_eq!(c.acme.directory, "https://127.0.0.1:14000/dir");
    assert_eq!(
        c.acme.directory_ca.as_deref(),
        Some(Path::new("/srv/site/certs/pebble.pem"))
    );
    assert_eq!(c.acme.email.as_deref(), Some("ops@example.com"));
    assert_eq!(c.acme.storage, Path::new("/var/lib/wsgimux/acme"));
    assert_eq!(c.acme.challenge, Challenge::TlsAlpn01);
    assert_eq!(c.acme.renew_before, Some(Duration::from_secs(30 * 86_400)));
}

#[test]
fn mistakes_name_line_and_key_in_plain_words() {
    let listen = "listen:\n  - \"0.0.0.0:80\"\n  - address: \"0.0.0.0:443\"\n    tls: acme\n";
    let cases: &[(String, usize, &str, &str)] = &[
        (
            format!("{listen}acme:\n  directory: http://ca.example/dir\n{APP}"),
            6,
            "acme.directory",
            "not an https:// URL",
        ),
        (
            format!("{listen}acme:\n  email: ops at example\n{APP}"),
            6,
            "acme.email",
            "not an email address",
        ),
        (
            format!("{listen}acme:\n  challenge: dns-01\n{APP}"),
            6,
            "acme.challenge",
            "use http-01 or tls-alpn-01",
        ),
        (
            format!("{listen}acme:\n  renew_before: soon\n{APP}"),
            6,
            "acme.renew_before",
            "not a duration",
        ),
        (
            format!("{listen}acme:\n  renew_before: 400d\n{APP}"),
            6,
            "acme.renew_before",
            "longer than a year",
        ),
        (
            format!("{listen}acme:\n  storage: \"\"\n{APP}"),
            6,
            "acme.storage",
            "must not be empty",
        ),
        (
            format!("{listen}acme:\n  directroy: https://x/dir\n{APP}"),
            5,
            "acme",
            "did you mean `directory`?",
        ),
        (
            format!("listen:\n  - address: \"0.0.0.0:443\"\n    tls: acmee\n{APP}"),
            3,
            "tls",
            "not a certificate source",
        ),
        (
            format!("listen:\n  - address: \"0.0.0.0:443\"\n    tls: acme\n{APP}"),
            1,
            "listen",
            "needs a listener without tls",
        ),
    ];
    for (text, line, key, words) in cases {
        let e = parse(text).expect_err(text);
        let p = &e.problems[0];
        let shown = p.to_string();
        assert!(shown.starts_with("/srv/site/wsgimux.yaml:"), "{shown}");
        assert_eq!(
            p.location.map(|l| l.line),
            Some(*line),
            "{shown}\n--\n{text}"
        );
        if !key.is_empty() {
            assert_eq!(p.key.as_deref(), Some(*key), "{shown}");
        }
        assert!(shown.contains(words), "{shown:?} lacks {words:?}");
        assert!(
            !shown.contains("Raw") && !shown.contains("::"),
            "a Rust name in {shown:?}"
        );
    }
}
